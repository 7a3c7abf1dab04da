//! The systemd unit grants k3s-xdp CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_NET_RAW and
//! nothing else.
//! These tests run the daemon with exactly the unit's capability bounding set (read from
//! `packaging/k3s-xdp.service`, so the test follows the file) and check that it does its whole
//! job: XDP attached, VRRP master, VIP added, traffic forwarded, clean exit. Without
//! CAP_NET_RAW it must refuse to start with a message that names the capability, and leave
//! nothing behind.

use k3s_xdp_tests::{
    backend::{roundtrip, Backend, Kind},
    bpf::have_root,
    config::SeedConfig,
    daemon::Daemon,
    serial,
    topology::{Topology, SERVERS, VIP},
};
use std::{net::SocketAddrV4, time::Duration};

/// The unit's `CapabilityBoundingSet=`, as setpriv names (`bpf`, `net_admin`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/k3s-xdp.service"
    ))
    .expect("packaging/k3s-xdp.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// `setpriv` keeping only `caps` in the bounding set: as root, the daemon then has exactly
/// these capabilities, as under the unit.
fn setpriv(caps: &[String]) -> Vec<String> {
    let keep: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", keep.join(",")),
        "--".into(),
    ]
}

fn config() -> String {
    SeedConfig::new()
        .health("inter = \"300ms\"")
        .vrrp_master()
        .render()
}

fn has_vip(topo: &Topology) -> bool {
    topo.has_address("lb-1", VIP)
}

fn xdp_attached(topo: &Topology) -> bool {
    let out = topo
        .node("lb-1")
        .ip(["link", "show", "dev", "eth1"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn the_units_capabilities_are_enough() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "perfmon", "net_admin", "net_raw"]);
    let topo = Topology::seed().unwrap();
    let _servers: Vec<Backend> = SERVERS
        .iter()
        .map(|s| Backend::start(topo.node(s), s, 6443, Kind::Tcp, &[topo.addr(s)]).unwrap())
        .collect();
    let mut lb1 = Daemon::start_wrapped(&topo, "lb-1", &config(), &setpriv(&caps)).unwrap();
    // Its capabilities really are the three (CapEff of the process, not of setpriv).
    let status = std::fs::read_to_string(format!("/proc/{}/status", lb1.pid())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    const PERFMON: u64 = 1 << 38;
    const BPF: u64 = 1 << 39;
    assert_eq!(
        cap_eff,
        NET_ADMIN | NET_RAW | PERFMON | BPF,
        "CapEff {cap_eff:#x}"
    );

    lb1.wait_for(Duration::from_secs(10), "MASTER", |s| {
        s.vrrp.as_ref().is_some_and(|v| v.state == "MASTER")
    })
    .unwrap();
    lb1.wait_healthy(Duration::from_secs(10)).unwrap();
    assert!(has_vip(&topo));
    assert!(xdp_attached(&topo));
    let reply = roundtrip(
        topo.node("agent-1"),
        SocketAddrV4::new(VIP, 6443),
        b"hi",
        Duration::from_secs(2),
    )
    .expect("forwarded through the VIP");
    assert!(reply.starts_with("server-"), "{reply}");
    let exit = lb1.stop().expect("exit status");
    assert!(exit.success(), "clean exit: {exit:?}\n{}", lb1.log());
    assert!(!has_vip(&topo), "VIP removed on exit");
    assert!(!xdp_attached(&topo), "XDP detached on exit");
}

/// Starts lb-1 under the unit's capabilities without `cap` (as `setpriv` spells it): it must
/// exit by itself with an error naming the capability and leave no VIP and no XDP program.
/// Returns the topology (still up) and the daemon's log.
fn refused_without(cap: &str) -> (Topology, String) {
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| c != cap)
        .collect();
    let topo = Topology::seed().unwrap();
    let mut lb1 = Daemon::launch_wrapped(&topo, "lb-1", &config(), &setpriv(&caps)).unwrap();
    let exit = lb1
        .exit_within(Duration::from_secs(20))
        .unwrap()
        .expect("it exits by itself");
    assert!(!exit.success());
    let log = lb1.log();
    let name = format!("CAP_{}", cap.to_uppercase());
    assert!(log.contains(&name), "the error names {name}:\n{log}");
    assert!(!has_vip(&topo), "no VIP left behind:\n{log}");
    assert!(!xdp_attached(&topo), "no XDP program left behind:\n{log}");
    (topo, log)
}

/// Without CAP_PERFMON the verifier refuses the program (variable-offset packet pointers):
/// the unit must keep it, and the error says so.
#[test]
fn without_perfmon_the_verifier_refuses_the_program() {
    if !have_root() {
        return;
    }
    let _s = serial();
    refused_without("perfmon");
}

#[test]
fn without_net_raw_it_refuses_to_start_and_says_why() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let (topo, log) = refused_without("net_raw");
    let forwarding = topo
        .node("lb-1")
        .run("sysctl", ["-n", "net.ipv4.conf.eth1.forwarding"])
        .unwrap();
    let enabled_it = log.contains("net/ipv4/conf/eth1/forwarding to 1");
    if enabled_it {
        assert_eq!(
            String::from_utf8_lossy(&forwarding.stdout).trim(),
            "0",
            "forwarding restored"
        );
    }
}
