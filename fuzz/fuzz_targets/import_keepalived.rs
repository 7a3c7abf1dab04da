//! The keepalived.conf importer: the input is keepalived.conf, read with the dual-stack
//! fixture's haproxy.cfg, so every instance the parser finds goes through the merge of
//! instances and `[vrrp]`'s construction to the TOML.

#![no_main]

use k3s_xdp_fuzz::import_and_check;
use libfuzzer_sys::fuzz_target;

const HAPROXY: &str = include_str!("../../k3s-xdp/tests/fixtures/dual-stack-haproxy.cfg");

fuzz_target!(|data: &[u8]| {
    let Ok(keepalived) = std::str::from_utf8(data) else {
        return;
    };
    import_and_check(HAPROXY, Some(keepalived), &[]);
});
