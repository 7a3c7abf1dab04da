//! The data plane end to end, on the seed topology: `k3s-xdp run` on lb-1 forwards connections
//! from agent-1..3 through the VIP to real backends on server-1..3, in nat and in dsr mode.

use k3s_xdp_tests::{
    backend::{connect, echo_roundtrip, roundtrip, Backend, Kind},
    bpf::have_root,
    config::SeedConfig,
    daemon::Daemon,
    serial,
    topology::{Topology, LB1, SERVERS, VIP},
};
use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    sync::Mutex,
    time::{Duration, Instant},
};

const T: Duration = Duration::from_secs(3);

fn config(mode: &str, servers: &[usize]) -> String {
    SeedConfig::new()
        .top("metrics_listen = \"127.0.0.1:9742\"")
        .service(format!("mode = \"{mode}\""))
        .servers(servers)
        .health("inter = \"1s\"")
        .render()
}

struct Lab {
    _backends: Vec<Backend>,
    daemon: Daemon,
    topo: Topology,
}

fn lab(mode: &str, servers: &[usize]) -> Lab {
    let topo = Topology::seed().expect("topology");
    let mut backends = Vec::new();
    for name in SERVERS {
        if mode == "dsr" {
            topo.prepare_dsr_backend(name, VIP).unwrap();
        }
        backends.push(
            Backend::start(topo.node(name), name, 6443, Kind::Tcp, &[topo.addr(name)]).unwrap(),
        );
    }
    let daemon = Daemon::start(&topo, "lb-1", &config(mode, servers)).expect("k3s-xdp starts");
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    Lab {
        _backends: backends,
        daemon,
        topo,
    }
}

/// `count` connections from each agent through the VIP, each exchanging data; per backend.
fn burst(topo: &Topology, count: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let results = Mutex::new((BTreeMap::new(), Vec::new()));
    std::thread::scope(|s| {
        for agent in ["agent-1", "agent-2", "agent-3"] {
            let (topo, results) = (&topo, &results);
            s.spawn(move || {
                for i in 0..count {
                    let payload = format!("{agent} #{i} says hello");
                    let r = roundtrip(
                        topo.node(agent),
                        SocketAddrV4::new(VIP, 6443),
                        payload.as_bytes(),
                        T,
                    );
                    let mut guard = results.lock().unwrap();
                    match r {
                        Ok(name) => *guard.0.entry(name).or_insert(0) += 1,
                        Err(e) => guard.1.push(format!("{agent} #{i}: {e:#}")),
                    }
                    if guard.1.len() > 20 {
                        break; // broken: fail fast rather than time out 300 times
                    }
                }
            });
        }
    });
    results.into_inner().unwrap()
}

fn balanced_300(mode: &str) {
    if !have_root() {
        eprintln!("skipped: needs root (run `cargo xtask test`)");
        return;
    }
    let _serial = serial();
    let lab = lab(mode, &[0, 1, 2]);
    let started = Instant::now();
    let (per_backend, failures) = burst(&lab.topo, 100);
    assert!(
        failures.is_empty(),
        "{} of 300 connections failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let total: usize = per_backend.values().sum();
    assert_eq!(total, 300);
    for name in ["server-1", "server-2", "server-3"] {
        let n = per_backend.get(name).copied().unwrap_or(0);
        let share = n as f64 / 300.0;
        assert!(
            (0.20..=0.47).contains(&share),
            "{name} got {n}/300 ({share:.2}) in {mode} mode: {per_backend:?}"
        );
    }
    let status = lab.daemon.status().unwrap();
    let svc = &status.services[0];
    // Every connection is a flow of the XDP program; a client that reuses a port toward the
    // same VIP:port finds its flow still in the table (LRU), so a few may not count as new.
    assert!(
        (285..=300).contains(&svc.new_flows),
        "new flows: {}",
        svc.new_flows
    );
    assert!(status.packets.get("tx_forward").copied().unwrap_or(0) >= 300 * 4);
    eprintln!(
        "{mode}: 300 connections in {:?}: {per_backend:?}",
        started.elapsed()
    );
}

#[test]
fn nat_balances_300_connections() {
    balanced_300("nat");
}

#[test]
fn dsr_balances_300_connections() {
    balanced_300("dsr");
}

/// A long-lived connection (a kubectl watch) keeps working while a backend is added and
/// another one removed by a reload.
#[test]
fn a_long_lived_connection_survives_backend_changes() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let lab = lab("nat", &[0, 1]);
    let mut watch = connect(lab.topo.node("agent-1"), SocketAddrV4::new(VIP, 6443), T).unwrap();
    let (pinned, echoed) = echo_roundtrip(&mut watch, b"watch start").unwrap();
    assert!(echoed);
    let pinned_index: usize = pinned
        .trim_start_matches("server-")
        .parse::<usize>()
        .unwrap()
        - 1;
    let other = if pinned_index == 0 { 1 } else { 0 };
    // server-3 joins, the other one of 1 and 2 leaves.
    lab.daemon
        .write_config(&config("nat", &[pinned_index, 2]))
        .unwrap();
    let summary = lab.daemon.reload().unwrap();
    assert!(summary.contains("server-3"), "{summary}");
    assert!(
        summary.contains(&format!("server-{}", other + 1)),
        "{summary}"
    );
    for i in 0..20 {
        let msg = format!("watch event {i}");
        watch_echo(&mut watch, msg.as_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    // New connections use the new set.
    let (per_backend, failures) = burst(&lab.topo, 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        !per_backend.contains_key(&format!("server-{}", other + 1)),
        "{per_backend:?}"
    );
    assert!(per_backend.contains_key("server-3"), "{per_backend:?}");
}

fn watch_echo(stream: &mut std::net::TcpStream, payload: &[u8]) {
    use std::io::{Read, Write};
    stream.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .expect("the long-lived connection still echoes");
    assert_eq!(back, payload);
}

/// The load balancer stays a usable host: its own services answer, it reaches the servers
/// directly, and the VIP answers ping from XDP.
#[test]
fn non_vip_traffic_and_ping_still_work() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let lab = lab("nat", &[0, 1, 2]);
    // A service of lb-1 itself (think ssh), reached from an agent.
    let own = SocketAddrV4::new(LB1, 2222);
    let _ssh = Backend::start(lab.topo.node("lb-1"), "lb-1", 2222, Kind::Tcp, &[LB1]).unwrap();
    assert_eq!(
        roundtrip(lab.topo.node("agent-2"), own, b"ssh", T).unwrap(),
        "lb-1"
    );
    // lb-1's own connection to a server, not through the VIP.
    let direct = SocketAddrV4::new(lab.topo.addr("server-1"), 6443);
    assert_eq!(
        roundtrip(lab.topo.node("lb-1"), direct, b"direct", T).unwrap(),
        "server-1"
    );
    // Ping the VIP (answered from XDP).
    lab.topo
        .node("agent-3")
        .run(
            "ping",
            ["-c", "3", "-i", "0.2", "-W", "1", &VIP.to_string()],
        )
        .expect("ping of the VIP");
    let status = lab.daemon.status().unwrap();
    assert!(
        status.packets.get("tx_icmp_echo").copied().unwrap_or(0) >= 3,
        "{:?}",
        status.packets
    );
    assert!(status.packets.get("pass_not_vip").copied().unwrap_or(0) > 0);
}
