//! The config module's public API on whole files: the examples of the workspace (the seeds'
//! setups) load with the values the seeds give, render back to equal configs, and no input,
//! however broken, makes `parse` panic.

use k3s_xdp::config::{
    self, CheckKind, Config, ConfigErrors, InitialState, VirtualAddress, XdpMode,
};
use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn example(name: &str) -> Config {
    config::load(&example_path(name)).unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

const EXAMPLES: [&str; 5] = [
    "lb-1.toml",
    "lb-2.toml",
    "single.toml",
    "seed-004.toml",
    "bgp-node.toml",
];

#[test]
fn examples_load_without_warnings() {
    for name in EXAMPLES {
        let c = example(name);
        assert!(c.warnings.is_empty(), "{name}: {:?}", c.warnings);
        assert_eq!(c.xdp_mode, XdpMode::Auto);
    }
}

#[test]
fn lb1_and_lb2_are_the_seed_haproxy_and_keepalived_pair() {
    let lb1 = example("lb-1.toml");
    let lb2 = example("lb-2.toml");
    assert_eq!(lb1.interface.as_deref(), Some("eth1"));
    let s = &lb1.services[0];
    assert_eq!(
        (s.vip, s.port),
        (IpAddr::from(Ipv4Addr::new(10, 10, 10, 100)), 6443)
    );
    let addresses: Vec<String> = s.backends.iter().map(|b| b.address.to_string()).collect();
    assert_eq!(
        addresses,
        ["10.10.10.50:6443", "10.10.10.51:6443", "10.10.10.52:6443"]
    );
    // default-server inter 10s downinter 5s
    assert_eq!(s.health.inter, Duration::from_secs(10));
    assert_eq!(s.health.downinter, Duration::from_secs(5));
    let v1 = lb1.vrrp.as_ref().unwrap();
    let v2 = lb2.vrrp.as_ref().unwrap();
    assert_eq!(
        (v1.virtual_router_id, v1.priority, v1.state),
        (51, 200, InitialState::Master)
    );
    assert_eq!(
        (v2.virtual_router_id, v2.priority, v2.state),
        (51, 100, InitialState::Backup)
    );
    assert_eq!(
        v1.virtual_ipaddress,
        [VirtualAddress {
            addr: Ipv4Addr::new(10, 10, 10, 100).into(),
            prefix_len: 24
        }]
    );
    assert!(v1.unicast_peers.is_empty(), "the seed uses multicast");
    // The two differ only in priority and initial state.
    let mut lb2_as_lb1 = lb2.clone();
    let v = lb2_as_lb1.vrrp.as_mut().unwrap();
    v.priority = 200;
    v.state = InitialState::Master;
    assert_eq!(lb2_as_lb1, lb1);
}

#[test]
fn single_is_the_nginx_variant_without_vrrp() {
    let c = example("single.toml");
    assert!(c.vrrp.is_none());
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].vip, Ipv4Addr::new(10, 10, 10, 98));
    assert_eq!(c.services[0].backends.len(), 3);
}

#[test]
fn bgp_node_announces_its_vip_through_table_200() {
    let c = example("bgp-node.toml");
    assert!(c.vrrp.is_none());
    let b = c.bgp.clone().expect("[bgp]");
    assert_eq!(b.table, 200);
    assert_eq!(
        b.announced(&c.services),
        vec![Ipv4Addr::new(10, 10, 10, 100)]
    );
    assert_eq!(b.drain_time, Duration::from_secs(2));
    assert!(c.services[0].snat_uses_node());
}

#[test]
fn seed_004_has_two_services_and_unicast_vrrp_version_2() {
    let c = example("seed-004.toml");
    assert_eq!(c.interface.as_deref(), Some("ens192"));
    let ports: Vec<(IpAddr, u16)> = c.services.iter().map(|s| (s.vip, s.port)).collect();
    let vip = IpAddr::from(Ipv4Addr::new(10, 220, 62, 31));
    assert_eq!(ports, [(vip, 6443), (vip, 30080)]);
    // default-server inter 10s downinter 5s rise 2 fall 2 slowstart 60s weight 100
    let h = &c.services[0].health;
    assert_eq!(h.check, CheckKind::Tls);
    assert_eq!(
        (h.inter, h.downinter),
        (Duration::from_secs(10), Duration::from_secs(5))
    );
    assert_eq!((h.rise, h.fall), (2, 2));
    assert_eq!(h.slowstart, Duration::from_secs(60));
    assert!(c.services[0].backends.iter().all(|b| b.weight == 100));
    assert_eq!(c.services[1].health.check, CheckKind::Tcp);
    let v = c.vrrp.as_ref().unwrap();
    assert_eq!(
        (v.virtual_router_id, v.priority, v.state),
        (60, 100, InitialState::Backup)
    );
    assert_eq!((v.version, v.auth_pass.as_deref()), (2, Some("1111")));
    assert_eq!(v.advert_int, Duration::from_secs(1));
    assert_eq!(
        v.unicast_src_ip,
        Some(IpAddr::from(Ipv4Addr::new(10, 220, 62, 32)))
    );
    assert_eq!(v.unicast_peers, [Ipv4Addr::new(10, 220, 62, 33)]);
    assert_eq!(v.track.weight, -2);
    assert_eq!(v.garp_interval, Duration::ZERO);
}

#[test]
fn every_example_renders_back_to_an_equal_config() {
    for name in EXAMPLES {
        let c = example(name);
        let text = c.to_toml();
        let back = config::parse(&text, Path::new("rendered.toml"))
            .unwrap_or_else(|e| panic!("{name} rendered:\n{text}\n{e}"));
        assert_eq!(back, c, "{name} rendered:\n{text}");
        // Rendering is stable.
        assert_eq!(back.to_toml(), text);
    }
}

#[test]
fn rendered_toml_reads_like_the_examples() {
    let text = example("lb-1.toml").to_toml();
    for line in [
        "interface = \"eth1\"",
        "[[service]]",
        "  { name = \"server-1\", address = \"10.10.10.50:6443\" },",
        "[service.health]",
        "check = \"tls\"",
        "downinter = \"5s\"",
        "[vrrp]",
        "virtual_ipaddress = [\"10.10.10.100/24\"]",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
}

#[test]
fn load_names_a_file_it_cannot_read() {
    let missing = Path::new("/nonexistent/k3s-xdp.toml");
    let errors = config::load(missing).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let text = errors.to_string();
    assert!(
        text.starts_with("/nonexistent/k3s-xdp.toml: cannot read the config file:"),
        "{text}"
    );
}

#[test]
fn every_error_of_a_file_is_one_line_naming_file_line_and_key() {
    let text = std::fs::read_to_string(example_path("lb-1.toml"))
        .unwrap()
        .replace("10.10.10.51:6443", "10.10.10.51:abc")
        .replace("inter = \"10s\"", "inetr = \"10s\"")
        .replace("priority = 200", "priority = 255");
    let errors: ConfigErrors =
        config::parse(&text, Path::new("/etc/k3s-xdp/config.toml")).unwrap_err();
    let shown = errors.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(lines[0].starts_with(&format!(
        "/etc/k3s-xdp/config.toml:{}:34: service[0].backends[1].address: expected \"IP:PORT\" \
         like \"192.0.2.51:6443\" or \"[2001:db8::51]:6443\", found \"10.10.10.51:abc\"",
        line_of("10.10.10.51:abc")
    )));
    assert!(lines[1].starts_with(&format!(
        "/etc/k3s-xdp/config.toml:{}:1: service[0].health.inetr: unknown key `inetr`",
        line_of("inetr")
    )));
    assert!(lines[2].starts_with(&format!(
        "/etc/k3s-xdp/config.toml:{}:12: vrrp.priority: must be between 1 and 254",
        line_of("priority = 255")
    )));
    // A std::error::Error, for anyhow and `?`.
    let boxed: Box<dyn std::error::Error> = Box::new(errors);
    assert!(boxed.to_string().contains("inetr"));
}

/// xorshift64*: a deterministic stream of pseudo-random numbers, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn parse_never_panics_on_prefixes_and_mutations() {
    let origin = Path::new("fuzz.toml");
    for name in EXAMPLES {
        let text = std::fs::read_to_string(example_path(name)).unwrap();
        // Every prefix (at character boundaries).
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = config::parse(&text[..end], origin);
        }
    }

    // Byte mutations of lb-1.toml: replace, delete, duplicate, with bytes that matter to TOML
    // and to our readers; several at once.
    let original = std::fs::read(example_path("lb-1.toml")).unwrap();
    let interesting = b"\"'[]{}=,.#\n\\-+0123456789:/ aszeE_\x00\xff\xc3";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..4000 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(4) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = interesting[rng.below(interesting.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => {
                    let b = bytes[at];
                    bytes.insert(at, b);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        match config::parse(&text, origin) {
            Ok(c) => {
                accepted += 1;
                // Whatever is accepted renders back to itself.
                let back = config::parse(&c.to_toml(), origin).unwrap();
                assert_eq!(back, c);
            }
            Err(errors) => {
                assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    assert!(e.line <= text.lines().count() + 1, "{e}");
                }
            }
        }
    }
    // Some mutations only touch comments or values that stay valid.
    assert!(accepted > 0);
}
