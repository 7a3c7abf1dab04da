//! The data plane end to end over IPv6 (issue 19), on the seed topology made dual-stack (every
//! node's 2001:db8::/64 address beside its IPv4 one, `nodad`): `k3s-xdp run` on lb-1 serves an
//! IPv4 and an IPv6 service at once; agents connect to [2001:db8::100]:6443 through the XDP
//! program to real backends, in nat (NAT66) and dsr mode; ping6 of the VIP, the host's own
//! IPv6 traffic, status and metrics, and an IPv6 backend that dies.

use k3s_xdp_tests::{
    backend::{roundtrip, Backend, Kind},
    bpf::have_root,
    config::SeedConfig,
    daemon::{self, get_metrics, Daemon},
    serial,
    topology::{addr6, Topology, AGENTS, LB1, SERVERS, VIP, VIP6},
};
use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::Mutex,
    time::{Duration, Instant},
};

const T: Duration = Duration::from_secs(3);
const METRICS: &str = "127.0.0.1:9742";

fn vip6() -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(VIP6, 6443, 0, 0))
}

/// The seed config (IPv4 service `k3s-api`) plus the IPv6 service `k3s-api-v6` on the same
/// servers' IPv6 addresses, in `mode`.
fn config(topo: &Topology, mode: &str) -> String {
    let backends: Vec<String> = SERVERS
        .iter()
        .map(|s| {
            format!(
                "  {{ name = \"{s}\", address = \"[{}]:6443\" }},",
                addr6(topo.addr(s))
            )
        })
        .collect();
    format!(
        "{}\n[[service]]\nname = \"k3s-api-v6\"\nvip = \"{VIP6}\"\nport = 6443\nmode = \"{mode}\"\n\
         backends = [\n{}\n]\n[service.health]\ncheck = \"tcp\"\ninter = \"500ms\"\nfall = 2\n",
        SeedConfig::new()
            .top(format!("metrics_listen = \"{METRICS}\""))
            .service(format!("mode = \"{mode}\""))
            .health("inter = \"1s\"")
            .render(),
        backends.join("\n")
    )
}

struct Lab {
    backends: BTreeMap<String, Backend>,
    daemon: Daemon,
    topo: Topology,
}

/// `leftover`: lb-1 already holds the IPv6 VIP, as a crashed run leaves it (not deprecated).
fn lab(mode: &str, leftover: bool) -> Lab {
    let topo = Topology::seed().expect("topology");
    for node in ["lb-1", "lb-2"].iter().chain(&SERVERS).chain(&AGENTS) {
        topo.add_ipv6(node).unwrap();
    }
    if leftover {
        topo.node("lb-1")
            .ip([
                "-6",
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "eth1",
                "nodad",
            ])
            .unwrap();
    }
    let mut backends = BTreeMap::new();
    for name in SERVERS {
        if mode == "dsr" {
            topo.prepare_dsr_backend(name, VIP).unwrap();
            topo.node(name)
                .ip(["-6", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])
                .unwrap();
        }
        let b = Backend::start(topo.node(name), name, 6443, Kind::Tcp, &[topo.addr(name)]).unwrap();
        backends.insert(name.to_string(), b);
    }
    let daemon = Daemon::start(&topo, "lb-1", &config(&topo, mode)).expect("k3s-xdp starts");
    // Every backend passed a check: in dsr mode a check sent from the VIP would be answered
    // by the backend to itself (it holds the VIP), so this also says the VIP is no source.
    let status = daemon.wait_healthy(Duration::from_secs(15)).unwrap();
    assert_eq!(status.services.len(), 2, "both services configured");
    let shown = topo
        .node("lb-1")
        .ip(["-6", "addr", "show", "dev", "eth1"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap();
    let line = shown
        .lines()
        .find(|l| l.contains(&format!("{VIP6}/128")))
        .unwrap_or_else(|| panic!("the VIP on eth1: {shown}"));
    assert!(line.contains("deprecated"), "{shown}");
    Lab {
        backends,
        daemon,
        topo,
    }
}

/// `count` connections from each agent to `to`, each exchanging data; answers per backend,
/// and the failures.
fn burst(topo: &Topology, to: SocketAddr, count: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let results = Mutex::new((BTreeMap::new(), Vec::new()));
    std::thread::scope(|s| {
        for agent in AGENTS {
            let results = &results;
            s.spawn(move || {
                for i in 0..count {
                    let payload = format!("{agent} #{i} over {to}");
                    let r = roundtrip(topo.node(agent), to, payload.as_bytes(), T);
                    let mut guard = results.lock().unwrap();
                    match r {
                        Ok(name) => *guard.0.entry(name).or_insert(0) += 1,
                        Err(e) => guard.1.push(format!("{agent} #{i} to {to}: {e:#}")),
                    }
                    if guard.1.len() > 10 {
                        break;
                    }
                }
            });
        }
    });
    results.into_inner().unwrap()
}

fn serves_both_families(mode: &str, leftover: bool) {
    if !have_root() {
        eprintln!("skipped: needs root (run `cargo xtask test`)");
        return;
    }
    let _serial = serial();
    let lab = lab(mode, leftover);
    let v4 = SocketAddr::V4(SocketAddrV4::new(VIP, 6443));
    let started = Instant::now();
    // Both families at the same time.
    let ((per6, failures6), (per4, failures4)) = std::thread::scope(|s| {
        let six = s.spawn(|| burst(&lab.topo, vip6(), 30));
        let four = s.spawn(|| burst(&lab.topo, v4, 10));
        (six.join().unwrap(), four.join().unwrap())
    });
    assert!(failures6.is_empty(), "IPv6 ({mode}): {failures6:?}");
    assert!(
        failures4.is_empty(),
        "IPv4 beside it ({mode}): {failures4:?}"
    );
    assert_eq!(per6.values().sum::<usize>(), 90);
    assert_eq!(per4.values().sum::<usize>(), 30);
    for name in SERVERS {
        let n = per6.get(name).copied().unwrap_or(0);
        assert!(
            (10..=60).contains(&n),
            "{name} got {n}/90 IPv6 connections in {mode} mode: {per6:?}"
        );
    }
    let status = lab.daemon.status().unwrap();
    let svc = status
        .services
        .iter()
        .find(|s| s.name == "k3s-api-v6")
        .unwrap();
    assert_eq!(svc.vip, VIP6.to_string());
    assert!(
        (80..=90).contains(&svc.new_flows),
        "IPv6 new flows: {}",
        svc.new_flows
    );
    eprintln!(
        "{mode}: 90 IPv6 and 30 IPv4 connections in {:?}: {per6:?} {per4:?}",
        started.elapsed()
    );
}

#[test]
fn nat66_serves_ipv6_beside_ipv4() {
    serves_both_families("nat", false);
}

#[test]
fn dsr_serves_ipv6_beside_ipv4() {
    // With the VIP already on lb-1's interface, as a crashed run leaves it: the daemon makes it
    // deprecated, or the dsr health checks would fail.
    serves_both_families("dsr", true);
}

/// ping6 of the VIP is answered (from XDP), the load balancer's own IPv6 services and its own
/// connections over IPv6 work, status and metrics show the IPv6 service; a backend that dies
/// leaves the IPv6 rotation after its (IPv6) health checks fail.
#[test]
fn ipv6_host_traffic_status_and_a_dead_backend() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let mut lab = lab("nat", false);
    let topo = &lab.topo;

    topo.node("agent-1")
        .run(
            "ping",
            ["-6", "-c", "3", "-i", "0.2", "-W", "1", &VIP6.to_string()],
        )
        .expect("ping6 of the VIP");
    let status = lab.daemon.status().unwrap();
    assert!(
        status.packets.get("tx_icmp_echo").copied().unwrap_or(0) >= 3,
        "answered from XDP: {:?}",
        status.packets
    );

    // A service of lb-1 itself over IPv6, and lb-1's own IPv6 connection to a server.
    let lb1 = addr6(LB1);
    let _ssh = Backend::start(topo.node("lb-1"), "lb-1", 2222, Kind::Tcp, &[LB1]).unwrap();
    let own = SocketAddr::V6(SocketAddrV6::new(lb1, 2222, 0, 0));
    assert_eq!(
        roundtrip(topo.node("agent-2"), own, b"ssh6", T).unwrap(),
        "lb-1"
    );
    let direct = SocketAddr::V6(SocketAddrV6::new(addr6(topo.addr("server-1")), 6443, 0, 0));
    assert_eq!(
        roundtrip(topo.node("lb-1"), direct, b"direct6", T).unwrap(),
        "server-1"
    );
    let status = lab.daemon.status().unwrap();
    assert!(status.packets.get("pass_not_vip").copied().unwrap_or(0) > 0);

    // Status and metrics name the IPv6 service and its backends.
    let out = std::process::Command::new(daemon::binary().unwrap())
        .args([
            "status",
            "--socket",
            &lab.daemon.socket.display().to_string(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("service k3s-api-v6 [2001:db8::100]:6443/tcp nat"),
        "{table}"
    );
    assert!(table.contains("[2001:db8::50]:6443"), "{table}");
    let metrics = get_metrics(topo, "lb-1", METRICS).unwrap();
    assert!(
        metrics.contains("address=\"[2001:db8::50]:6443\""),
        "{}",
        &metrics[..metrics.len().min(3000)]
    );

    // server-1 dies: its IPv6 checks fail (fall 2 x 500 ms), new connections go elsewhere.
    lab.backends.get_mut("server-1").unwrap().stop();
    lab.daemon
        .wait_for(
            Duration::from_secs(10),
            "server-1 down in the IPv6 service",
            |s| {
                s.services
                    .iter()
                    .find(|svc| svc.name == "k3s-api-v6")
                    .is_some_and(|svc| svc.healthy_backends == 2)
            },
        )
        .unwrap();
    let (per6, failures) = burst(topo, vip6(), 10);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(!per6.contains_key("server-1"), "{per6:?}");
    assert_eq!(per6.values().sum::<usize>(), 30);
}
