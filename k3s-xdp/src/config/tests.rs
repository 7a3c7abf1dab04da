//! Unit tests of the config module: defaults, and one test per rule asserting the exact key and
//! line of the error it reports. Whole files (the examples) are tested in
//! `tests/check_config.rs`.

use super::*;
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

/// `text` without its first newline, so that line 1 is the line after `r#"`.
fn doc(text: &str) -> &str {
    text.strip_prefix('\n').unwrap_or(text)
}

fn errors_in(text: &str) -> Vec<ConfigError> {
    match parse(doc(text), Path::new("t.toml")) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(e) => e.0,
    }
}

fn ok(text: &str) -> Config {
    match parse(doc(text), Path::new("t.toml")) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// Asserts `text` has exactly one error, at `key` on `line`, whose message contains `words`.
#[track_caller]
fn one_error(text: &str, key: &str, line: usize, words: &str) -> ConfigError {
    let errors = errors_in(text);
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        ConfigErrors(errors.clone())
    );
    let e = errors.into_iter().next().unwrap();
    assert_eq!((e.key.as_str(), e.line), (key, line), "{e}");
    assert!(e.message.contains(words), "{e}\nshould contain: {words}");
    e
}

/// Asserts that some error of `errors` is at `key` on `line` and mentions `words`.
#[track_caller]
fn has_error(errors: &[ConfigError], key: &str, line: usize, words: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.key == key && e.line == line && e.message.contains(words)),
        "no error at {key} line {line} with {words:?} in:\n{}",
        ConfigErrors(errors.to_vec())
    );
}

const MINIMAL: &str = r#"
interface = "eth1"

[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-2", address = "192.0.2.51:6443" },
]
"#;

#[test]
fn a_minimal_file_gets_every_default() {
    let c = ok(MINIMAL);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.interface.as_deref(), Some("eth1"));
    assert_eq!(c.metrics_listen, "127.0.0.1:9742".parse().unwrap());
    assert_eq!(c.control_socket, Path::new("/run/k3s-xdp/control.sock"));
    assert_eq!(c.xdp_mode, XdpMode::Auto);
    assert_eq!(c.flow_table_size, k3s_xdp_common::DEFAULT_FLOW_TABLE_SIZE);
    assert_eq!((c.snat_port_min, c.snat_port_max), (1024, 65535));
    assert!(c.vrrp.is_none());
    let s = &c.services[0];
    assert_eq!(s.name, "k3s-api");
    assert_eq!(s.vip, IpAddr::from(Ipv4Addr::new(192, 0, 2, 100)));
    assert_eq!(s.port, 6443);
    assert_eq!(
        (s.protocol, s.mode, s.on_backend_down),
        (Protocol::Tcp, Mode::Nat, OnBackendDown::Reset)
    );
    assert_eq!(s.table_size, 65537);
    assert_eq!(s.backends.len(), 2);
    assert_eq!(s.backends[1].address, "192.0.2.51:6443".parse().unwrap());
    assert_eq!(s.backends[0].weight, 100);
    assert_eq!(s.health, Health::default());
    let h = &s.health;
    assert_eq!(h.check, CheckKind::Tls);
    assert_eq!(
        (h.path.as_str(), h.expect.as_slice()),
        ("/readyz", &[200][..])
    );
    assert_eq!(h.inter, Duration::from_secs(2));
    assert_eq!((h.downinter, h.fastinter), (h.inter, h.inter));
    assert_eq!((h.rise, h.fall), (2, 3));
    assert_eq!(
        (h.timeout, h.slowstart),
        (Duration::from_secs(1), Duration::ZERO)
    );
}

#[test]
fn vrrp_defaults_and_keepalived_spelling() {
    let c = ok(r#"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50" }]

[vrrp]
virtual_router_id = 51
state = "MASTER"
virtual_ipaddress = ["192.0.2.100/24"]
"#);
    // A bare IP means the service port.
    assert_eq!(
        c.services[0].backends[0].address,
        "192.0.2.50:6443".parse().unwrap()
    );
    let v = c.vrrp.unwrap();
    assert_eq!(v.virtual_router_id, 51);
    assert_eq!(v.priority, 100);
    assert_eq!(v.state, InitialState::Master);
    assert_eq!(v.advert_int, Duration::from_secs(1));
    assert_eq!(
        v.virtual_ipaddress,
        [VirtualAddress {
            addr: Ipv4Addr::new(192, 0, 2, 100).into(),
            prefix_len: 24
        }]
    );
    assert!(v.unicast_src_ip.is_none() && v.unicast_peers.is_empty());
    assert!(v.preempt);
    assert_eq!(v.preempt_delay, Duration::ZERO);
    assert_eq!(v.version, 3);
    assert_eq!(v.auth_pass, None);
    assert_eq!(v.track, Track::default());
    assert_eq!(v.track.weight, 0);
    assert_eq!(v.garp_master_repeat, 5);
    assert_eq!(v.garp_interval, Duration::from_millis(10));
    assert_eq!(v.garp_master_refresh, Duration::ZERO);
    // No `interface`: a warning, not an error.
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(
        (c.warnings[0].key.as_str(), c.warnings[0].line),
        ("interface", 0)
    );
    assert!(c.warnings[0].message.contains("--iface"));
}

#[test]
fn health_intervals_default_to_inter_and_durations_compound() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[service.health]
inter = "1m30s"
fastinter = "500ms"
timeout = "1s"
"#);
    let h = &c.services[0].health;
    assert_eq!(h.inter, Duration::from_secs(90));
    assert_eq!(h.downinter, Duration::from_secs(90));
    assert_eq!(h.fastinter, Duration::from_millis(500));
}

#[test]
fn syntax_errors_give_the_line() {
    let e = one_error(
        r#"
interface = "eth1"
[[service]]
port =
"#,
        "",
        3,
        "TOML syntax error",
    );
    assert!(e.column > 0);
    assert!(!e.message.contains('\n'));
    one_error(
        r#"
[vrrp]
priority = 1
priority = 2
"#,
        "",
        3,
        "duplicate key",
    );
}

#[test]
fn unknown_keys_suggest_the_closest_and_list_the_accepted() {
    let e = one_error(
        r#"
interface = "eth1"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[service.health]
inetr = "2s"
"#,
        "service[0].health.inetr",
        8,
        "unknown key `inetr` in [service.health]; did you mean `inter`?",
    );
    assert!(
        e.message.contains("accepted keys: check, path, expect"),
        "{e}"
    );
    assert_eq!(e.column, 1);

    // At every level: the top, a backend, vrrp.track; and a key that belongs elsewhere.
    let errors = errors_in(
        r#"
interfaces = "eth1"
rise = 2
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", adress = "192.0.2.50:6443" }]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100"]
unicast_peer = ["192.0.2.99"]
auth_type = "PASS"
track = { datapalne = true }
"#,
    );
    has_error(&errors, "interfaces", 1, "did you mean `interface`?");
    has_error(&errors, "rise", 2, "`rise` belongs in [service.health]");
    has_error(
        &errors,
        "service[0].backends[0].adress",
        7,
        "did you mean `address`?",
    );
    // The missing `address` of that backend is reported too.
    has_error(
        &errors,
        "service[0].backends[0].address",
        7,
        "missing `address`",
    );
    has_error(
        &errors,
        "vrrp.unicast_peer",
        11,
        "did you mean `unicast_peers`?",
    );
    has_error(
        &errors,
        "vrrp.auth_type",
        12,
        "set `auth_pass` with `version = 2`",
    );
    has_error(
        &errors,
        "vrrp.track.datapalne",
        13,
        "did you mean `dataplane`?",
    );
    assert_eq!(errors.len(), 7, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn wrong_types_say_what_is_expected() {
    let errors = errors_in(
        r#"
interface = 5
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = "6443"
backends = [{ name = "server-1", address = "192.0.2.50:6443", weight = 1.5 }]
[service.health]
inter = 10
[vrrp]
virtual_router_id = 51
virtual_ipaddress = "192.0.2.100/24"
preempt = "yes"
"#,
    );
    has_error(
        &errors,
        "interface",
        1,
        "expected a string, found an integer",
    );
    has_error(
        &errors,
        "service[0].port",
        5,
        "expected an integer, found a string (write 6443 without quotes)",
    );
    has_error(
        &errors,
        "service[0].backends[0].weight",
        6,
        "expected an integer, found a float",
    );
    has_error(
        &errors,
        "service[0].health.inter",
        8,
        "expected a duration with a unit, like \"2s\" or \"500ms\"",
    );
    has_error(&errors, "vrrp.virtual_ipaddress", 11, "expected an array");
    has_error(&errors, "vrrp.preempt", 12, "expected a boolean");
    assert_eq!(errors.len(), 6, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn keywords_list_the_accepted_values() {
    let errors = errors_in(
        r#"
xdp_mode = "driver"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
protocol = "sctp"
mode = "NAT"
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
health = { check = "http" }
"#,
    );
    has_error(
        &errors,
        "xdp_mode",
        1,
        "expected one of \"auto\", \"native\", \"generic\", found \"driver\"",
    );
    has_error(
        &errors,
        "service[0].protocol",
        6,
        "expected one of \"tcp\", \"udp\"",
    );
    // Only `state` is case-insensitive (for keepalived's MASTER/BACKUP).
    has_error(
        &errors,
        "service[0].mode",
        7,
        "expected one of \"nat\", \"dsr\"",
    );
    has_error(
        &errors,
        "service[0].health.check",
        9,
        "expected one of \"tcp\", \"tls\", \"https\", found \"http\"",
    );
    assert_eq!(errors.len(), 4);
}

#[test]
fn duplicate_vip_port_protocol_points_at_the_second_and_names_the_first() {
    one_error(
        r#"
interface = "eth1"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]

[[service]]
name = "k3s-api-again"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-2", address = "192.0.2.51:6443" }]

[[service]]
name = "dns"
vip = "192.0.2.100"
port = 6443
protocol = "udp"
backends = [{ name = "server-3", address = "192.0.2.52:6443" }]
"#,
        "service[1]",
        8,
        "192.0.2.100:6443/tcp is already served by service \"k3s-api\" (line 2)",
    );
}

#[test]
fn duplicate_service_names() {
    one_error(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[[service]]
name = "api"
vip = "192.0.2.100"
port = 30080
backends = [{ name = "server-1", address = "192.0.2.50:30080" }]
"#,
        "service[1].name",
        8,
        "service name \"api\" is already used by service[0] (line 3)",
    );
}

#[test]
fn duplicate_backend_names_and_addresses_within_a_service() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-1", address = "192.0.2.51:6443" },
  { name = "server-3", address = "192.0.2.50" },
]
"#,
    );
    has_error(
        &errors,
        "service[0].backends[1].name",
        8,
        "backend name \"server-1\" is already used in this service (line 7)",
    );
    // A bare IP is the service port: the same address as line 7's.
    has_error(
        &errors,
        "service[0].backends[2].address",
        9,
        "address 192.0.2.50:6443 is already used by backend \"server-1\" of this service (line 7)",
    );
    assert_eq!(errors.len(), 2);
}

#[test]
fn the_same_backend_in_two_services_is_fine() {
    ok(r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[[service]]
name = "api-2"
vip = "192.0.2.101"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
"#);
}

#[test]
fn backend_addresses_that_do_not_parse() {
    let e = one_error(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-2", address = "192.0.2.51:abc" },
]
"#,
        "service[0].backends[1].address",
        8,
        "expected \"IP:PORT\" like \"192.0.2.51:6443\" or \"[2001:db8::51]:6443\", found \"192.0.2.51:abc\"",
    );
    assert_eq!(
        e.to_string(),
        "t.toml:8:34: service[0].backends[1].address: expected \"IP:PORT\" like \
         \"192.0.2.51:6443\" or \"[2001:db8::51]:6443\", found \"192.0.2.51:abc\""
    );
    let errors = errors_in(
        r#"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-1", address = "[2001:db8::1]:6443" },
  { name = "server-2", address = "192.0.2.51:0" },
  { name = "server-3", address = "0.0.0.0:6443" },
  "192.0.2.53:6443",
]
"#,
    );
    has_error(
        &errors,
        "service[0].backends[0].address",
        6,
        "backend [2001:db8::1]:6443 is an IPv6 address and VIP 192.0.2.100 an IPv4 one",
    );
    has_error(
        &errors,
        "service[0].backends[1].address",
        7,
        "port must be between 1 and 65535",
    );
    has_error(
        &errors,
        "service[0].backends[2].address",
        8,
        "unspecified address",
    );
    has_error(
        &errors,
        "service[0].backends[3]",
        9,
        "expected a table like { name = ..., ... }, found a string",
    );
    assert_eq!(errors.len(), 4, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn vips_that_do_not_parse() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "v6"
vip = "2001:db8::100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[[service]]
name = "typo"
vip = "192.0.2.300"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[[service]]
name = "multicast"
vip = "224.0.0.18"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
"#,
    );
    has_error(
        &errors,
        "service[0].backends[0].address",
        6,
        "backend 192.0.2.50:6443 is an IPv4 address and VIP 2001:db8::100 an IPv6 one: a \
         service's backends are of its VIP's family (there is no NAT64)",
    );
    has_error(
        &errors,
        "service[1].vip",
        9,
        "expected an IP address like \"192.0.2.100\" or \"2001:db8::100\", found \"192.0.2.300\"",
    );
    has_error(&errors, "service[2].vip", 14, "a multicast address");
    // Bad VIPs take part in no further rule: no "duplicate VIP:port" noise.
    assert_eq!(errors.len(), 3, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn required_keys_and_at_least_one_service() {
    let e = one_error("interface = \"eth1\"\n", "service", 0, "missing `service`");
    assert_eq!(e.to_string(), format!("t.toml: service: {}", e.message));
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api"
backends = []
[vrrp]
priority = 100
"#,
    );
    has_error(&errors, "service[0].vip", 2, "missing `vip`: an IP address");
    has_error(&errors, "service[0].port", 2, "missing `port`");
    has_error(
        &errors,
        "service[0].backends",
        4,
        "at least one backend is required",
    );
    has_error(
        &errors,
        "vrrp.virtual_router_id",
        5,
        "missing `virtual_router_id`",
    );
    has_error(
        &errors,
        "vrrp.virtual_ipaddress",
        5,
        "missing `virtual_ipaddress`",
    );
    assert_eq!(errors.len(), 5, "{}", ConfigErrors(errors.clone()));
    // `[service]` instead of `[[service]]`.
    one_error(
        r#"
[service]
name = "api"
"#,
        "service",
        1,
        "expected [[service]] tables, found a table",
    );
}

#[test]
fn every_service_vip_must_be_a_virtual_ipaddress_with_vrrp() {
    one_error(
        r#"
interface = "eth1"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[[service]]
name = "ingress"
vip = "192.0.2.101"
port = 30080
backends = [{ name = "server-1", address = "192.0.2.50:30080" }]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24", "192.0.2.0/24"]
"#,
        "service[1].vip",
        9,
        "VIP 192.0.2.101 of service \"ingress\" is not in vrrp.virtual_ipaddress",
    );
}

#[test]
fn intervals_must_be_positive() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[service.health]
inter = "0s"
downinter = "-1s"
fastinter = "0ms"
timeout = "0s"
slowstart = "-5s"
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100"]
advert_int = "0s"
preempt_delay = "1001s"
"#,
    );
    has_error(
        &errors,
        "service[0].health.inter",
        8,
        "must be greater than 0, found \"0s\"",
    );
    has_error(
        &errors,
        "service[0].health.downinter",
        9,
        "must be greater than 0, found \"-1s\"",
    );
    has_error(
        &errors,
        "service[0].health.fastinter",
        10,
        "must be greater than 0",
    );
    has_error(
        &errors,
        "service[0].health.timeout",
        11,
        "must be greater than 0",
    );
    has_error(
        &errors,
        "service[0].health.slowstart",
        12,
        "must not be negative",
    );
    has_error(&errors, "vrrp.advert_int", 16, "must be greater than 0");
    has_error(&errors, "vrrp.preempt_delay", 17, "must be at most 16m40s");
    assert_eq!(errors.len(), 7, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn a_timeout_longer_than_inter_is_a_warning() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[service.health]
inter = "500ms"
timeout = "2s"
"#);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!((w.key.as_str(), w.line), ("service[0].health.timeout", 9));
    assert!(
        w.message
            .contains("timeout (2s) is longer than inter (500ms)"),
        "{w}"
    );
}

#[test]
fn a_nat_backend_that_is_a_dsr_backend_of_the_same_vip_is_a_warning() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "ingress"
vip = "192.0.2.100"
port = 30080
mode = "dsr"
backends = [{ name = "server-1", address = "192.0.2.50:30080" }]
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-2", address = "192.0.2.51:6443" },
  { name = "server-1", address = "192.0.2.50:6443" },
]
[[service]]
name = "other-vip"
vip = "192.0.2.101"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
"#);
    // Only the host shared on the same VIP: server-2 is nat-only, and on another VIP the nat
    // source is not an address server-1 holds.
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(
        (w.key.as_str(), w.line),
        ("service[1].backends[1].address", 14)
    );
    assert!(
        w.message
            .contains("dsr backend of 192.0.2.100 in service \"ingress\" (line 7)"),
        "{w}"
    );
}

#[test]
fn vrrp_ranges_priority_router_id_and_rise_fall() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[service.health]
rise = 0
fall = 0
[vrrp]
virtual_router_id = 256
priority = 255
virtual_ipaddress = ["192.0.2.100/33"]
track = { weight = 255 }
"#,
    );
    has_error(
        &errors,
        "service[0].health.rise",
        8,
        "must be between 1 and 1000, found 0",
    );
    has_error(
        &errors,
        "service[0].health.fall",
        9,
        "must be between 1 and 1000, found 0",
    );
    has_error(
        &errors,
        "vrrp.virtual_router_id",
        11,
        "must be between 1 and 255, found 256",
    );
    has_error(
        &errors,
        "vrrp.priority",
        12,
        "must be between 1 and 254 (255 is reserved for the address owner",
    );
    has_error(
        &errors,
        "vrrp.virtual_ipaddress[0]",
        13,
        "a prefix length of 0..=32",
    );
    has_error(
        &errors,
        "vrrp.track.weight",
        14,
        "must be between -254 and 254",
    );
    assert_eq!(errors.len(), 6, "{}", ConfigErrors(errors.clone()));
    let errors = errors_of_vrrp("virtual_router_id = 0\npriority = 0");
    has_error(&errors, "vrrp.virtual_router_id", 8, "found 0");
    has_error(&errors, "vrrp.priority", 9, "found 0");
}

/// A valid service followed by `[vrrp]` (line 7) and `vrrp_lines` (from line 8), plus
/// `virtual_ipaddress` at the end.
fn errors_of_vrrp(vrrp_lines: &str) -> Vec<ConfigError> {
    let text = format!(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{{ name = "server-1", address = "192.0.2.50:6443" }}]
[vrrp]
{vrrp_lines}
virtual_ipaddress = ["192.0.2.100/24"]
"#
    );
    errors_in(&text)
}

fn vrrp_ok(vrrp_lines: &str) -> Vrrp {
    let text = format!(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{{ name = "server-1", address = "192.0.2.50:6443" }}]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]
{vrrp_lines}
"#
    );
    ok(&text).vrrp.unwrap()
}

#[test]
fn dsr_cannot_change_the_port() {
    one_error(
        r#"
interface = "eth1"
[[service]]
name = "api-dsr"
vip = "192.0.2.200"
port = 6443
mode = "dsr"
backends = [
  { name = "server-1", address = "192.0.2.53:6443" },
  { name = "server-2", address = "192.0.2.54:8443" },
  { name = "server-3", address = "192.0.2.55" },
]
"#,
        "service[0].backends[1].address",
        9,
        "mode = \"dsr\" cannot rewrite ports",
    );
}

/// `count` services; service `i` is on VIP `vip(i)`, port `port(i)`, with `backends` each.
fn many_services(
    count: usize,
    vip: impl Fn(usize) -> String,
    port: impl Fn(usize) -> usize,
    backends: usize,
) -> String {
    let mut text = String::from("interface = \"eth1\"\n");
    for i in 0..count {
        text.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"{}\"\nport = {}\nbackends = [\n",
            vip(i),
            port(i)
        ));
        for j in 0..backends {
            text.push_str(&format!(
                "  {{ name = \"b{j}\", address = \"198.51.100.1:{}\" }},\n",
                1000 + j
            ));
        }
        text.push_str("]\n");
    }
    text
}

/// Line of the `[[service]]` header of service `i` in [`many_services`].
fn service_line(i: usize, backends: usize) -> usize {
    2 + i * (6 + backends)
}

#[test]
fn data_plane_limits() {
    use k3s_xdp_common::{MAX_BACKENDS, MAX_PORTS_PER_VIP, MAX_SERVICES, MAX_VIPS};
    // Ports per VIP.
    let n = MAX_PORTS_PER_VIP + 1;
    let text = many_services(n, |_| "192.0.2.100".into(), |i| 6000 + i, 1);
    let errors = errors_in(&text);
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    assert_eq!(errors[0].key, format!("service[{}].vip", n - 1));
    assert_eq!(errors[0].line, service_line(n - 1, 1) + 2);
    assert!(errors[0]
        .message
        .contains("more than 8 services on VIP 192.0.2.100"));

    // Distinct VIPs.
    let n = MAX_VIPS as usize + 1;
    let text = many_services(n, |i| format!("192.0.2.{}", i + 1), |_| 6443, 1);
    let errors = errors_in(&text);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, format!("service[{}].vip", n - 1));
    assert!(errors[0].message.contains("more than 64 distinct VIPs"));

    // Services (spread over VIPs so that no other limit is hit).
    let n = MAX_SERVICES as usize + 1;
    let text = many_services(n, |i| format!("192.0.2.{}", i / 8 + 1), |i| 6000 + i % 8, 1);
    let errors = errors_in(&text);
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    assert_eq!(errors[0].key, format!("service[{}]", n - 1));
    assert_eq!(errors[0].line, service_line(n - 1, 1));
    assert!(errors[0].message.contains("at most 256"));

    // Backends across services: slot 0 is reserved, so 4095 fit.
    let per_service = 205;
    let n = (MAX_BACKENDS as usize - 1) / per_service + 1;
    assert!(n * per_service > MAX_BACKENDS as usize - 1 && n <= 64);
    let text = many_services(n, |i| format!("192.0.2.{}", i + 1), |_| 6443, per_service);
    let errors = errors_in(&text);
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    assert_eq!(errors[0].key, format!("service[{}].backends", n - 1));
    assert_eq!(errors[0].line, service_line(n - 1, per_service) + 4);
    assert!(errors[0].message.contains("more than 4095 backends"));
}

#[test]
fn table_size_prime_and_large_enough() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "a"
vip = "192.0.2.100"
port = 1
table_size = 65536
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[[service]]
name = "b"
vip = "192.0.2.100"
port = 2
table_size = 101
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-2", address = "192.0.2.51:6443" },
]
[[service]]
name = "c"
vip = "192.0.2.100"
port = 3
table_size = 3
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
"#,
    );
    has_error(
        &errors,
        "service[0].table_size",
        6,
        "must be a prime number (Maglev needs it), found 65536; the next prime is 65537",
    );
    has_error(
        &errors,
        "service[1].table_size",
        12,
        "table_size 101 is too small for 2 backends",
    );
    has_error(
        &errors,
        "service[2].table_size",
        21,
        "must be between 7 and 262139",
    );
    assert_eq!(errors.len(), 3, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn auth_pass_is_version_2_only_and_at_most_8_bytes() {
    let errors = errors_of_vrrp("virtual_router_id = 60\nauth_pass = \"1111\"");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].key.as_str(), errors[0].line),
        ("vrrp.auth_pass", 9)
    );
    assert!(errors[0].message.contains("only sent by VRRP version 2"));

    let errors = errors_of_vrrp("virtual_router_id = 60\nversion = 2\nauth_pass = \"123456789\"");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].key.as_str(), errors[0].line),
        ("vrrp.auth_pass", 10)
    );
    assert!(errors[0].message.contains("must be 1 to 8 bytes"));

    let v = vrrp_ok("version = 2\nauth_pass = \"1111\"");
    assert_eq!(v.auth_pass.as_deref(), Some("1111"));
    let errors = errors_of_vrrp("virtual_router_id = 60\nversion = 4");
    assert_eq!(
        (errors[0].key.as_str(), errors[0].line),
        ("vrrp.version", 9)
    );
}

#[test]
fn advert_int_must_fit_the_version() {
    for (lines, words) in [
        (
            "version = 2\nadvert_int = \"1500ms\"",
            "whole seconds from 1s to 255s",
        ),
        ("version = 2\nadvert_int = \"256s\"", "whole seconds"),
        (
            "advert_int = \"5ms\"",
            "whole centiseconds from 10ms to 40s950ms",
        ),
        ("advert_int = \"41s\"", "whole centiseconds"),
        ("advert_int = \"105ms\"", "whole centiseconds"),
    ] {
        let errors = errors_of_vrrp(&format!("virtual_router_id = 1\n{lines}"));
        assert_eq!(errors.len(), 1, "{lines}: {}", ConfigErrors(errors.clone()));
        assert_eq!(errors[0].key, "vrrp.advert_int");
        let line = 8 + lines.lines().count();
        assert_eq!(errors[0].line, line, "{}", errors[0]);
        assert!(errors[0].message.contains(words), "{}", errors[0]);
    }
    assert_eq!(
        vrrp_ok("advert_int = \"150ms\"").advert_int,
        Duration::from_millis(150)
    );
    assert_eq!(
        vrrp_ok("version = 2\nadvert_int = \"3s\"").advert_int,
        Duration::from_secs(3)
    );
}

#[test]
fn https_only_keys_name_the_check_kind_they_apply_to() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[service.health]
check = "tcp"
path = "/healthz"
ca_file = "/etc/k3s-xdp/ca.crt"
[[service]]
name = "api-2"
vip = "192.0.2.100"
port = 6444
backends = [{ name = "server-1", address = "192.0.2.50:6444" }]
health = { ca_file = "/etc/k3s-xdp/ca.crt", bearer_token_file = "/etc/k3s-xdp/token" }
[[service]]
name = "api-3"
vip = "192.0.2.100"
port = 6445
backends = [{ name = "server-1", address = "192.0.2.50:6445" }]
health = { check = "https", client_cert = "/etc/k3s-xdp/client.crt", expect = [200, 401] }
"#,
    );
    has_error(
        &errors,
        "service[0].health.path",
        9,
        "`path` applies to check = \"https\" only, and this service has check = \"tcp\"",
    );
    has_error(
        &errors,
        "service[0].health.ca_file",
        10,
        "`ca_file` applies to check = \"tls\" or \"https\" only",
    );
    // ca_file is fine with the default "tls"; a bearer token is not.
    has_error(
        &errors,
        "service[1].health.bearer_token_file",
        16,
        "this service has check = \"tls\" (the default)",
    );
    has_error(
        &errors,
        "service[2].health.client_cert",
        22,
        "client_cert needs client_key too",
    );
    assert_eq!(errors.len(), 4, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn https_checks_read_their_keys() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[service.health]
check = "https"
path = "/livez"
expect = [200, 204]
ca_file = "/etc/k3s-xdp/ca.crt"
client_cert = "/etc/k3s-xdp/client.crt"
client_key = "/etc/k3s-xdp/client.key"
port = 6444
"#);
    let h = &c.services[0].health;
    assert_eq!(h.check, CheckKind::Https);
    assert_eq!(
        (h.path.as_str(), h.expect.as_slice()),
        ("/livez", &[200, 204][..])
    );
    // Not opened here: the runtime checks that the files exist.
    assert_eq!(
        h.client_key.as_deref(),
        Some(Path::new("/etc/k3s-xdp/client.key"))
    );
    assert_eq!(h.port, Some(6444));
}

#[test]
fn unicast_peers_exclude_this_node_and_duplicates() {
    let errors = errors_of_vrrp(
        "virtual_router_id = 1\nunicast_src_ip = \"192.0.2.98\"\n\
         unicast_peers = [\"192.0.2.99\", \"192.0.2.98\", \"192.0.2.99\"]",
    );
    has_error(
        &errors,
        "vrrp.unicast_peers[1]",
        10,
        "is unicast_src_ip, this node itself",
    );
    has_error(
        &errors,
        "vrrp.unicast_peers[2]",
        10,
        "is already listed (line 10)",
    );
    assert_eq!(errors.len(), 2);
    let v = vrrp_ok("unicast_src_ip = \"192.0.2.98\"\nunicast_peers = [\"192.0.2.99\"]");
    assert_eq!(
        v.unicast_peers,
        [IpAddr::from(Ipv4Addr::new(192, 0, 2, 99))]
    );
}

#[test]
fn track_as_inline_table_or_subtable() {
    let inline = vrrp_ok("track = { dataplane = false, min_healthy_backends = 0, weight = -50 }");
    let table = vrrp_ok("[vrrp.track]\ndataplane = false\nmin_healthy_backends = 0\nweight = -50");
    assert_eq!(inline.track, table.track);
    assert_eq!(
        inline.track,
        Track {
            dataplane: false,
            min_healthy_backends: 0,
            weight: -50
        }
    );
    // A track that can never pass.
    let errors = errors_of_vrrp("virtual_router_id = 1\ntrack = { min_healthy_backends = 2 }");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].key.as_str(), errors[0].line),
        ("vrrp.track.min_healthy_backends", 9)
    );
    assert!(errors[0]
        .message
        .contains("only 1 backend(s) are configured in all"));
}

#[test]
fn snat_port_range_and_top_level_values() {
    let errors = errors_in(
        r#"
snat_port_range = [2000, 1000]
flow_table_size = 100
metrics_listen = "localhost:9742"
interface = "a-very-long-interface-name"
[[service]]
name = "k3s api"
vip = "192.0.2.100"
port = 0
backends = [{ name = "server/1", address = "192.0.2.50:6443", weight = 257 }]
"#,
    );
    has_error(
        &errors,
        "snat_port_range",
        1,
        "expected 1 <= MIN <= MAX <= 65535",
    );
    has_error(
        &errors,
        "flow_table_size",
        2,
        "must be between 1024 and 16777216",
    );
    has_error(&errors, "metrics_listen", 3, "expected \"IP:PORT\"");
    has_error(&errors, "interface", 4, "expected an interface name");
    has_error(
        &errors,
        "service[0].name",
        6,
        "letters, digits, '_', '.' or '-'",
    );
    has_error(
        &errors,
        "service[0].port",
        8,
        "must be between 1 and 65535, found 0",
    );
    has_error(&errors, "service[0].backends[0].name", 9, "letters, digits");
    has_error(
        &errors,
        "service[0].backends[0].weight",
        9,
        "between 0 and 256",
    );
    // The bare port 0 makes no backend address wrong by itself; the address here has a port.
    assert_eq!(errors.len(), 8, "{}", ConfigErrors(errors.clone()));
    let c = ok(r#"
snat_port_range = [32768, 60999]
xdp_mode = "generic"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
"#);
    assert_eq!((c.snat_port_min, c.snat_port_max), (32768, 60999));
    assert_eq!(c.xdp_mode, XdpMode::Generic);
    assert_eq!(
        c.snat_timewait,
        Duration::from_secs(65),
        "60 s and a margin"
    );
}

#[test]
fn snat_timewait_takes_whole_seconds_up_to_five_minutes() {
    let service = "[[service]]\nname = \"api\"\nvip = \"192.0.2.100\"\nport = 6443\nbackends = [{ name = \"server-1\", address = \"192.0.2.50:6443\" }]\n";
    let c = ok(&format!("snat_timewait = \"2m\"\n{service}"));
    assert_eq!(c.snat_timewait, Duration::from_secs(120));
    let c = ok(&format!("snat_timewait = \"0s\"\n{service}"));
    assert_eq!(c.snat_timewait, Duration::ZERO, "0 turns the wait off");
    assert_eq!(ok(&c.to_toml()), c, "rendered and read back");
    let c = ok(&format!(
        "snat_port_range = [20000, 20099]\nsnat_timewait = \"50s\"\n{service}"
    ));
    let capacity = c.snat_capacity().unwrap();
    assert!(
        capacity.contains("100 SNAT ports per backend"),
        "{capacity}"
    );
    assert!(capacity.contains("about 2/s per backend"), "{capacity}");
    let dsr = ok(&service.replace("port = 6443", "port = 6443\nmode = \"dsr\""));
    assert_eq!(dsr.snat_capacity(), None, "dsr uses no SNAT ports");
    for bad in ["\"301s\"", "\"1500ms\"", "60"] {
        let errors = errors_in(&format!("snat_timewait = {bad}\n{service}"));
        assert!(
            errors
                .iter()
                .any(|e| e.key == "snat_timewait" && e.line == 1),
            "{bad}: {}",
            ConfigErrors(errors.clone())
        );
    }
}

#[test]
fn udp_services_warn_that_checks_use_tcp() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "dns"
vip = "192.0.2.100"
port = 53
protocol = "udp"
backends = [{ name = "server-6", address = "192.0.2.55:53", weight = 0 }]
"#);
    let keys: Vec<(&str, usize)> = c
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.line))
        .collect();
    assert_eq!(
        keys,
        [("service[0].protocol", 6), ("service[0].backends", 7)]
    );
}

#[test]
fn errors_come_in_file_order_and_all_at_once() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.300"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:abc" }]
[service.health]
inter = 10
rise = 0
[vrrp]
virtual_router_id = 0
virtual_ipaddress = ["192.0.2.100"]
"#,
    );
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [4, 6, 8, 9, 11]);
}

#[test]
fn serializes_durations_and_addresses_as_the_file_writes_them() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]
"#);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["services"][0]["health"]["inter"], "2s");
    assert_eq!(json["services"][0]["protocol"], "tcp");
    assert_eq!(
        json["services"][0]["backends"][0]["address"],
        "192.0.2.50:6443"
    );
    assert_eq!(json["vrrp"]["virtual_ipaddress"][0], "192.0.2.100/24");
    assert_eq!(json["vrrp"]["state"], "backup");
    assert!(json.get("warnings").is_none());
}

#[test]
fn equality_ignores_warnings_and_to_toml_round_trips() {
    let mut c = ok(r#"
[[service]]
name = "dns"
vip = "192.0.2.100"
port = 53
protocol = "udp"
mode = "dsr"
on_backend_down = "keep"
table_size = 251
backends = [{ name = "server-6", address = "192.0.2.55:53", weight = 7 }]
[service.health]
check = "https"
path = "/x"
expect = [204]
bearer_token_file = "/t"
port = 8080
downinter = "5s"
fastinter = "1s"
timeout = "3s"
slowstart = "1m"
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24", "192.0.2.101"]
unicast_src_ip = "192.0.2.98"
unicast_peers = ["192.0.2.99"]
preempt = false
version = 2
auth_pass = "pass\"q"
garp_master_repeat = 3
garp_interval = "0s"
garp_master_refresh = "1m"
track = { dataplane = false }
"#);
    c.metrics_listen = "[::1]:9000".parse().unwrap();
    c.control_socket = "/tmp/x.sock".into();
    c.flow_table_size = 2048;
    let text = c.to_toml();
    let back =
        parse(&text, Path::new("rendered.toml")).unwrap_or_else(|e| panic!("{e}\nin:\n{text}"));
    assert_eq!(back, c, "{text}");
    let mut other = back.clone();
    other.warnings.clear();
    assert_eq!(other, back);
    other.services[0].backends[0].weight = 8;
    assert_ne!(other, back);
}

#[test]
fn dotted_keys_and_subtables_of_the_wrong_type() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
health.inter = "5s"
"#);
    assert_eq!(c.services[0].health.inter, Duration::from_secs(5));
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
health.intre = "5s"
[[service]]
name = "api-2"
vip = "192.0.2.100"
port = 6444
backends = { name = "server-1", address = "192.0.2.50:6444" }
health = "tls"
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100"]
track = true
"#,
    );
    has_error(
        &errors,
        "service[0].health.intre",
        7,
        "did you mean `inter`?",
    );
    has_error(
        &errors,
        "service[1].backends",
        12,
        "expected an array of backends",
    );
    has_error(
        &errors,
        "service[1].health",
        13,
        "expected a [service.health] table",
    );
    has_error(
        &errors,
        "vrrp.track",
        17,
        "expected a table like { dataplane = true",
    );
    assert_eq!(errors.len(), 4, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn state_master_without_preemption_is_a_warning() {
    let c = ok(r#"
interface = "eth1"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[vrrp]
virtual_router_id = 51
priority = 200
state = "master"
preempt = false
virtual_ipaddress = ["192.0.2.100/24"]
"#);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].key, "vrrp.state");
    assert_eq!(c.warnings[0].line, 10);
    assert!(c.warnings[0].message.contains("preempt = false"));
}

fn with_vrrp(vrrp: &str) -> Vrrp {
    ok(&format!(
        r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{{ name = "server-1", address = "192.0.2.50:6443" }}]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]
{vrrp}
"#
    ))
    .vrrp
    .unwrap()
}

#[test]
fn a_reload_retunes_vrrp_live_but_keeps_the_routers_identity_for_a_restart() {
    let old = with_vrrp("priority = 200\nadvert_int = \"1s\"");
    assert_eq!(old.reload_to(&old), VrrpReload::default());

    let new = with_vrrp("priority = 150\nadvert_int = \"100ms\"\npreempt = false");
    let r = old.reload_to(&new);
    assert_eq!(
        r.live,
        [
            "priority 200 -> 150",
            "advert_int 1s -> 100ms",
            "preempt true -> false"
        ]
    );
    assert!(r.at_restart.is_empty(), "{r:?}");
    assert_eq!(old.retuned(&new), new);

    let moved = ok(r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.200"
port = 6443
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[vrrp]
virtual_router_id = 52
priority = 250
virtual_ipaddress = ["192.0.2.200/24"]
version = 2
"#)
    .vrrp
    .unwrap();
    let r = old.reload_to(&moved);
    assert_eq!(r.live, ["priority 200 -> 250"]);
    assert_eq!(
        r.at_restart,
        [
            "vrrp.virtual_router_id",
            "vrrp.virtual_ipaddress",
            "vrrp.version"
        ]
    );
    // Retuned: the new priority on the old router.
    let running = old.retuned(&moved);
    assert_eq!(running.priority, 250);
    assert_eq!(running.virtual_router_id, 51);
    assert_eq!(running.virtual_ipaddress, old.virtual_ipaddress);
    assert_eq!(running.version, 3);
}

#[test]
fn snat_source_is_the_vip_by_default_or_a_pool_of_addresses() {
    let service = |snat: &str| {
        format!(
            r#"
snat_port_range = [20000, 20099]
snat_timewait = "50s"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
{snat}
backends = [{{ name = "server-1", address = "192.0.2.50:6443" }}]
"#
        )
    };
    let c = ok(&service(""));
    assert_eq!(c.services[0].snat_source, [SnatSource::Vip]);
    assert!(
        c.services[0].snat_addresses(None).is_empty(),
        "the VIP: no pool"
    );
    let c = ok(&service(r#"snat_source = ["vip", "192.0.2.7", "node"]"#));
    let node: IpAddr = "192.0.2.9".parse().unwrap();
    assert_eq!(
        c.services[0].snat_addresses(Some(node)),
        ["192.0.2.100", "192.0.2.7", "192.0.2.9"]
            .map(|a| a.parse::<IpAddr>().unwrap())
            .to_vec()
    );
    assert_eq!(
        c.services[0].snat_held_addresses().collect::<Vec<_>>(),
        ["192.0.2.7".parse::<IpAddr>().unwrap()]
    );
    assert!(c.services[0].snat_uses_node());
    assert_eq!(ok(&c.to_toml()), c, "rendered and read back");
    let capacity = c.snat_capacity().unwrap();
    assert!(
        capacity.contains("300 SNAT ports per backend (3 SNAT addresses"),
        "{capacity}"
    );
    assert!(capacity.contains("about 6/s per backend"), "{capacity}");
    let c = ok(&service(r#"snat_source = "198.51.100.7""#));
    assert_eq!(
        c.services[0].snat_source,
        [SnatSource::Address("198.51.100.7".parse().unwrap())]
    );
    assert_eq!(
        ok(&c.to_toml()),
        c,
        "a single address rendered and read back"
    );

    one_error(
        &service(r#"snat_source = "everywhere""#),
        "service[0].snat_source",
        7,
        "expected \"vip\", \"node\" or an IP address",
    );
    one_error(
        &service(r#"snat_source = []"#),
        "service[0].snat_source",
        7,
        "empty list",
    );
    one_error(
        &service(r#"snat_source = 7"#),
        "service[0].snat_source",
        7,
        "\"vip\", \"node\"",
    );
    one_error(
        &service(r#"snat_source = ["192.0.2.7", "192.0.2.7"]"#),
        "service[0].snat_source[1]",
        7,
        "already listed (line 7)",
    );
    one_error(
        &service("mode = \"dsr\"\nsnat_source = \"node\""),
        "service[0].snat_source",
        8,
        "nat",
    );
    let many: Vec<String> = (1..=17).map(|i| format!("\"192.0.2.{i}\"")).collect();
    one_error(
        &service(&format!("snat_source = [{}]", many.join(", "))),
        "service[0].snat_source",
        7,
        "at most 16",
    );
}

#[test]
fn a_snat_address_is_no_other_services_vip_and_moves_with_vrrp() {
    let errors = errors_in(
        r#"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
snat_source = ["192.0.2.101", "192.0.2.7"]
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
[[service]]
name = "other"
vip = "192.0.2.101"
port = 80
backends = [{ name = "server-1", address = "192.0.2.50:80" }]
[vrrp]
virtual_router_id = 51
priority = 100
virtual_ipaddress = ["192.0.2.100/24", "192.0.2.101/24"]
"#,
    );
    has_error(
        &errors,
        "service[0].snat_source[0]",
        5,
        "the VIP of service \"other\"",
    );
    has_error(
        &errors,
        "service[0].snat_source[1]",
        5,
        "not in vrrp.virtual_ipaddress",
    );
    assert_eq!(errors.len(), 2, "{}", ConfigErrors(errors.clone()));
}

/// `[bgp]` with only `table`: every service VIP announced, the defaults for the rest; it
/// renders back to an equal config.
#[test]
fn bgp_table_alone_announces_every_service_vip() {
    let c = ok(&format!("{MINIMAL}[bgp]\ntable = 200\n"));
    let bgp = c.bgp.clone().expect("[bgp]");
    assert_eq!(bgp.table, 200);
    assert_eq!(bgp.vips, None);
    assert_eq!(bgp.track, BgpTrack::default());
    assert_eq!(bgp.drain_time, defaults::BGP_DRAIN_TIME);
    assert_eq!(bgp.bird_socket, Path::new(defaults::BIRD_SOCKET));
    assert_eq!(
        bgp.announced(&c.services),
        vec!["192.0.2.100".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(ok(&c.to_toml()), c, "rendered and read back");
    let full = ok(&format!(
        "{MINIMAL}[bgp]\ntable = 7\nvips = [\"192.0.2.100\"]\ntrack = {{ dataplane = false, min_healthy_backends = 2 }}\ndrain_time = \"500ms\"\nbird_socket = \"/tmp/bird.ctl\"\n"
    ));
    assert_eq!(ok(&full.to_toml()), full, "{}", full.to_toml());
}

#[test]
fn bgp_table_may_not_be_one_the_kernel_uses() {
    for (table, words) in [
        (254, "the main table (254)"),
        (255, "the local table (255)"),
        (253, "the default table (253)"),
        (0, "unspecified"),
    ] {
        one_error(
            &format!("{MINIMAL}[bgp]\ntable = {table}\n"),
            "bgp.table",
            12,
            words,
        );
    }
    one_error(
        &format!("{MINIMAL}[bgp]\ntrack = {{}}\n"),
        "bgp.table",
        11,
        "missing `table`",
    );
    one_error(
        &format!("{MINIMAL}[bgp]\ntable = 200\ntrack = {{ weight = -50 }}\n"),
        "bgp.track.weight",
        13,
        "weight",
    );
}

/// A VIP is either moved by VRRP or announced by BGP: both is an error at its line.
#[test]
fn a_vip_both_in_vrrp_and_announced_by_bgp_is_an_error() {
    let vrrp = "[vrrp]\nvirtual_router_id = 51\nvirtual_ipaddress = [\"192.0.2.100/24\"]\n";
    let e = one_error(
        &format!("{MINIMAL}{vrrp}[bgp]\ntable = 200\n"),
        "vrrp.virtual_ipaddress[0]",
        13,
        "both moved by VRRP",
    );
    assert!(e.message.contains("bgp.vips"), "{e}");
    one_error(
        &format!("{MINIMAL}{vrrp}[bgp]\ntable = 200\nvips = [\"192.0.2.100\"]\n"),
        "bgp.vips[0]",
        16,
        "both moved by VRRP",
    );
    // Two VIPs: one moved by VRRP, the other announced.
    let two = format!(
        "{MINIMAL}[[service]]\nname = \"web\"\nvip = \"192.0.2.110\"\nport = 443\nbackends = [{{ name = \"w\", address = \"192.0.2.60:443\" }}]\n{vrrp}[bgp]\ntable = 200\nvips = [\"192.0.2.110\"]\n"
    );
    let c = ok(&two);
    assert_eq!(
        c.bgp.unwrap().announced(&c.services),
        vec!["192.0.2.110".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn bgp_vips_are_service_vips_each_once() {
    one_error(
        &format!("{MINIMAL}[bgp]\ntable = 200\nvips = [\"192.0.2.100\", \"192.0.2.7\"]\n"),
        "bgp.vips[1]",
        13,
        "VIP of no [[service]]",
    );
    one_error(
        &format!("{MINIMAL}[bgp]\ntable = 200\nvips = [\"192.0.2.100\", \"192.0.2.100\"]\n"),
        "bgp.vips[1]",
        13,
        "already listed (line 13)",
    );
    one_error(
        &format!("{MINIMAL}[bgp]\ntable = 200\ntrack = {{ min_healthy_backends = 3 }}\n"),
        "bgp.track.min_healthy_backends",
        13,
        "would never announce",
    );
}

/// The dual-stack config of DESIGN.md: an IPv4 and an IPv6 service, one VRRP instance holding
/// both VIPs (two virtual routers), IPv6 peers; rendered and read back equal.
#[test]
fn a_dual_stack_config_reads_and_renders_back() {
    let c = ok(r#"
interface = "eth1"
metrics_listen = "[::1]:9742"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "s1", address = "192.0.2.50:6443" }]
[[service]]
name = "api6"
vip = "2001:db8::100"
port = 6443
snat_source = ["2001:db8::7", "vip"]
backends = [
  { name = "s1", address = "[2001:db8::50]:6443" },
  { name = "s2", address = "2001:db8::51" },
]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24", "2001:db8::100/64", "2001:db8::7"]
unicast_src_ip = "2001:db8::98"
unicast_peers = ["192.0.2.99", "2001:db8::99"]
"#);
    let v6 = &c.services[1];
    assert_eq!(v6.vip, "2001:db8::100".parse::<IpAddr>().unwrap());
    assert_eq!(
        v6.backends.iter().map(|b| b.address).collect::<Vec<_>>(),
        ["[2001:db8::50]:6443", "[2001:db8::51]:6443"].map(|a| a.parse::<SocketAddr>().unwrap())
    );
    let v = c.vrrp.as_ref().unwrap();
    assert_eq!(
        v.virtual_ipaddress[2].prefix_len, 128,
        "an IPv6 address alone is a /128"
    );
    assert_eq!(
        c.held_addresses().into_iter().collect::<Vec<_>>(),
        ["192.0.2.100", "2001:db8::7", "2001:db8::100"].map(|a| a.parse::<IpAddr>().unwrap())
    );
    let rendered = c.to_toml();
    assert!(rendered.contains("\"[2001:db8::50]:6443\""), "{rendered}");
    assert_eq!(ok(&rendered), c, "rendered and read back");
}

#[test]
fn ipv6_addresses_that_cannot_be_used() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api6"
vip = "fe80::1"
port = 6443
backends = [{ name = "s1", address = "[2001:db8::50%eth1]:6443" }]
[[service]]
name = "mapped"
vip = "::ffff:192.0.2.100"
port = 6443
backends = [{ name = "s1", address = "[ff02::1]:6443" }]
[[service]]
name = "pool"
vip = "2001:db8::100"
port = 6443
snat_source = "192.0.2.7"
backends = [{ name = "s1", address = "[2001:db8::50]:6443" }]
"#,
    );
    has_error(&errors, "service[0].vip", 4, "a link-local address");
    has_error(
        &errors,
        "service[0].backends[0].address",
        6,
        "without a zone",
    );
    has_error(&errors, "service[1].vip", 9, "an IPv4-mapped IPv6 address");
    has_error(
        &errors,
        "service[1].backends[0].address",
        11,
        "a multicast address",
    );
    has_error(
        &errors,
        "service[2].snat_source",
        16,
        "192.0.2.7 is not of the family of VIP 2001:db8::100",
    );
    assert_eq!(errors.len(), 5, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn vrrp_ipv6_needs_version_3_and_peers_of_a_held_family() {
    let errors = errors_in(
        r#"
interface = "eth1"
[[service]]
name = "api6"
vip = "2001:db8::100"
port = 6443
backends = [{ name = "s1", address = "[2001:db8::50]:6443" }]
[vrrp]
virtual_router_id = 51
version = 2
virtual_ipaddress = ["2001:db8::100/64"]
unicast_src_ip = "192.0.2.98"
unicast_peers = ["2001:db8::99", "192.0.2.99"]
"#,
    );
    has_error(
        &errors,
        "vrrp.virtual_ipaddress[0]",
        10,
        "VRRP version 2 carries IPv4 addresses only",
    );
    has_error(
        &errors,
        "vrrp.unicast_peers[1]",
        12,
        "192.0.2.99 is an IPv4 peer, and virtual_ipaddress has no IPv4 address",
    );
    has_error(
        &errors,
        "vrrp.unicast_src_ip",
        11,
        "192.0.2.98 is an IPv4 address, and virtual_ipaddress has no IPv4 address",
    );
    assert_eq!(errors.len(), 3, "{}", ConfigErrors(errors.clone()));
    let missing = one_error(
        r#"
interface = "eth1"
[[service]]
name = "api6"
vip = "2001:db8::100"
port = 6443
backends = [{ name = "s1", address = "[2001:db8::50]:6443" }]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]
"#,
        "service[0].vip",
        4,
        "add \"2001:db8::100/128\"",
    );
    assert!(missing.message.contains("not in vrrp.virtual_ipaddress"));
}

#[test]
fn flow_sync_reads_renders_back_and_checks_its_peers() {
    let base = r#"
interface = "eth1"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "s1", address = "192.0.2.50:6443" }]
[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]
unicast_src_ip = "192.0.2.98"
"#;
    let c = ok(&format!(
        "{base}[flow_sync]\npeers = [\"192.0.2.99\", \"2001:db8::99\"]\nkey_file = \"/etc/k3s-xdp/flow-sync.key\"\n"
    ));
    let f = c.flow_sync.as_ref().unwrap();
    assert_eq!(f.port, defaults::FLOW_SYNC_PORT);
    assert_eq!(f.peers.len(), 2);
    assert_eq!(ok(&c.to_toml()), c, "rendered and read back");

    let errors = errors_in(&format!(
        "{base}[flow_sync]\npeers = [\"192.0.2.99\", \"192.0.2.99\", \"192.0.2.100\", \"192.0.2.98\"]\nport = 0\nkey = \"x\"\n"
    ));
    has_error(
        &errors,
        "flow_sync.peers[1]",
        12,
        "already listed (line 12)",
    );
    has_error(
        &errors,
        "flow_sync.peers[2]",
        12,
        "a VIP or an address that moves",
    );
    has_error(&errors, "flow_sync.peers[3]", 12, "this node itself");
    has_error(&errors, "flow_sync.port", 13, "between 1 and 65535");
    has_error(&errors, "flow_sync.key", 14, "unknown key");
    has_error(&errors, "flow_sync.key_file", 11, "missing `key_file`");
    assert_eq!(errors.len(), 6, "{}", ConfigErrors(errors.clone()));
    one_error(
        &format!("{base}[flow_sync]\npeers = []\nkey_file = \"/k\"\n"),
        "flow_sync.peers",
        12,
        "at least one peer",
    );
}

#[test]
fn syn_flood_guard_is_on_by_default_reads_renders_back_and_divides_among_cpus() {
    let base = r#"
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
backends = [{ name = "s1", address = "192.0.2.50:6443" }]
"#;
    let c = ok(base);
    assert_eq!(c.syn_flood, SynFlood::default());
    assert!(c.syn_flood.guard);
    assert!(
        !c.to_toml().contains("syn_flood"),
        "defaults are not written"
    );
    let g = c.syn_flood.per_cpu(2);
    assert_eq!((g.threshold, g.admit), (500, 50));
    // Never below one per CPU, however many CPUs.
    let g = c.syn_flood.per_cpu(4096);
    assert_eq!((g.threshold, g.admit), (1, 1));

    let c = ok(&format!(
        "{base}[syn_flood]\nthreshold = 20000\nadmit = 0\n"
    ));
    assert_eq!((c.syn_flood.threshold, c.syn_flood.admit), (20000, 0));
    assert_eq!(
        c.syn_flood.per_cpu(3).admit,
        0,
        "admit 0 stays 0: none admitted"
    );
    assert_eq!(ok(&c.to_toml()), c, "rendered and read back");

    let off = ok(&format!("{base}[syn_flood]\nguard = false\n"));
    assert_eq!(
        off.syn_flood.per_cpu(2),
        Default::default(),
        "off: all zero"
    );
    assert_eq!(ok(&off.to_toml()), off);

    let errors = errors_in(&format!(
        "{base}[syn_flood]\nguard = \"yes\"\nthreshold = 0\nadmit = -1\nrate = 5\n"
    ));
    has_error(&errors, "syn_flood.guard", 7, "true or false");
    has_error(&errors, "syn_flood.threshold", 8, "between 1 and");
    has_error(&errors, "syn_flood.admit", 9, "between 0 and");
    has_error(&errors, "syn_flood.rate", 10, "unknown key");
    assert_eq!(errors.len(), 4, "{}", ConfigErrors(errors.clone()));
}
