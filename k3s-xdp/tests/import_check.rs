//! `k3s-xdp import` and `k3s-xdp check` as an operator runs them: every haproxy.cfg and
//! keepalived.conf of the fixtures (the seeds' and the dual-stack and IPv6-only ones) imports,
//! and what it prints passes `check`; input that cannot be imported is an error naming the file
//! and line, with a failing exit status.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn k3s_xdp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_k3s-xdp"))
        .args(args)
        .output()
        .expect("running k3s-xdp")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `import` with `args`, then `check` on what it printed; returns the TOML and the
/// import's warnings.
fn import_and_check(case: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    let imported = k3s_xdp(&all);
    let toml = text(&imported.stdout);
    let warnings = text(&imported.stderr);
    assert!(
        imported.status.success(),
        "{case}: import failed:\n{warnings}"
    );
    let path = std::env::temp_dir().join(format!(
        "k3s-xdp-import-check-{}-{case}.toml",
        std::process::id()
    ));
    std::fs::write(&path, &toml).unwrap();
    let checked = k3s_xdp(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        checked.status.success(),
        "{case}: check rejects the imported config:\n{}{}\n---\n{toml}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    assert!(text(&checked.stdout).contains(": ok ("), "{case}");
    (toml, warnings)
}

#[test]
fn every_fixture_pair_imports_and_checks() {
    let pairs = [
        ("seed-000-haproxy.cfg", "seed-000-keepalived-1.conf"),
        ("seed-001-haproxy.cfg", "seed-001-keepalived-1.conf"),
        ("seed-002-haproxy.cfg", "seed-002-keepalived-1.conf"),
        ("seed-004-haproxy.cfg", "seed-004-keepalived-1.conf"),
        ("seed-004-haproxy.cfg", "seed-004-keepalived-2.conf"),
        ("dual-stack-haproxy.cfg", "dual-stack-keepalived-1.conf"),
        ("dual-stack-haproxy.cfg", "dual-stack-keepalived-2.conf"),
        ("ipv6-only-haproxy.cfg", "ipv6-only-keepalived.conf"),
    ];
    for (h, k) in pairs {
        let (h_path, k_path) = (fixture(h), fixture(k));
        let case = k.trim_end_matches(".conf");
        let (toml, _) = import_and_check(
            case,
            &[
                "--haproxy",
                h_path.to_str().unwrap(),
                "--keepalived",
                k_path.to_str().unwrap(),
            ],
        );
        assert!(toml.contains("[vrrp]"), "{case}:\n{toml}");
    }
}

#[test]
fn dual_stack_output_has_a_service_per_family_and_vrrp_version_3() {
    let (h, k) = (
        fixture("dual-stack-haproxy.cfg"),
        fixture("dual-stack-keepalived-2.conf"),
    );
    let (toml, warnings) = import_and_check(
        "dual-stack-lines",
        &[
            "--haproxy",
            h.to_str().unwrap(),
            "--keepalived",
            k.to_str().unwrap(),
        ],
    );
    for line in [
        "name = \"k3s-backend-v6\"",
        "vip = \"2001:db8::100\"",
        "  { name = \"server-3-v6\", address = \"[2001:db8::52]:6443\" },",
        "virtual_ipaddress = [\"192.0.2.100/24\", \"2001:db8::100/64\"]",
        "unicast_peers = [\"192.0.2.11\", \"2001:db8::11\"]",
        "state = \"backup\"",
    ] {
        assert!(toml.lines().any(|l| l == line), "no {line:?} in:\n{toml}");
    }
    assert!(toml.contains("\nversion = 3"), "{toml}");
    let vi_1 = format!(
        "{}:15: IPv6 virtual addresses need VRRP version 3",
        k.display()
    );
    assert!(warnings.contains(&vi_1), "{warnings}");
}

/// `--vip` takes an IPv6 address, once per family; one `--vip` alone still works.
#[test]
fn vip_of_each_family_without_keepalived() {
    let h = fixture("dual-stack-haproxy.cfg");
    let h = h.to_str().unwrap();
    let (toml, _) = import_and_check(
        "vips",
        &[
            "--haproxy",
            h,
            "--vip",
            "2001:db8::100",
            "--vip",
            "192.0.2.100",
        ],
    );
    assert!(!toml.contains("[vrrp]"));
    assert_eq!(toml.matches("vip = \"2001:db8::100\"").count(), 2, "{toml}");

    let only_v4 = k3s_xdp(&["import", "--haproxy", h, "--vip", "192.0.2.100"]);
    assert!(!only_v4.status.success());
    let err = text(&only_v4.stderr);
    assert!(
        err.contains(&format!(
            "error: {h}:33: frontend ingress-nginx binds `ipv6@:30080`, every address, and the servers of backend ingress-nginx are IPv6: which IPv6 address is the VIP?"
        )),
        "{err}"
    );
    assert!(text(&only_v4.stdout).is_empty());

    // One `--vip`, as before dual stack: an IPv4 frontend needs no more.
    let seed = fixture("seed-000-haproxy.cfg");
    let seed = seed.to_str().unwrap();
    let (toml, _) = import_and_check("one-vip", &["--haproxy", seed, "--vip", "192.0.2.100"]);
    assert!(toml.contains("vip = \"192.0.2.100\""), "{toml}");

    let same_family = k3s_xdp(&[
        "import",
        "--haproxy",
        seed,
        "--vip",
        "192.0.2.100",
        "--vip",
        "192.0.2.101",
    ]);
    assert!(!same_family.status.success());
    let err = text(&same_family.stderr);
    assert!(
        err.contains("--vip 192.0.2.100 and --vip 192.0.2.101: one VIP per family"),
        "{err}"
    );
}
