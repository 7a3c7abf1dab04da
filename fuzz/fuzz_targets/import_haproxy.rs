//! The haproxy.cfg importer: the input is haproxy.cfg, read with the dual-stack fixture's
//! keepalived.conf (so frontends find VIPs of both families and the import goes through to
//! the TOML), or alone; either way every outcome is an error or TOML that parses as TOML.

#![no_main]

use k3s_xdp_fuzz::import_and_check;
use libfuzzer_sys::fuzz_target;

const KEEPALIVED: &str = include_str!("../../k3s-xdp/tests/fixtures/dual-stack-keepalived-1.conf");

fuzz_target!(|data: &[u8]| {
    // `k3s-xdp import` reads files with read_to_string: UTF-8 only.
    let Ok(haproxy) = std::str::from_utf8(data) else {
        return;
    };
    // The last byte's low bit decides whether keepalived.conf is given, without shifting the
    // text the corpus holds.
    let keepalived = (data.last().copied().unwrap_or(0) & 1 == 0).then_some(KEEPALIVED);
    import_and_check(haproxy, keepalived, &[]);
});
