//! `[bgp]` end to end with real BIRD 2: three load balancers (lb-1..3), each running k3s-xdp
//! and BIRD with the shipped `packaging/bird/bird.conf`, announce the VIP to a router node
//! running BIRD, which installs one ECMP route (`fib_multipath_hash_policy = 1`); the agents
//! reach the VIP through the router. Announcements follow what each node can serve: backends
//! drained, SIGTERM (routes withdrawn first, then `drain_time`, then detach), kill -9 (the
//! guard withdraws), restart; each withdrawal is timed as the router's kernel table sees it.
//! Without any routing daemon, k3s-xdp still serves and says that nothing exports its routes;
//! routes of other programs in its table are left alone, and its own leftovers removed.

use k3s_xdp::controller::{
    model::Admin,
    status::{Request, Response, Status},
};
use k3s_xdp_tests::{
    backend::{connect, echo_roundtrip, Backends, Kind},
    bird::Bird,
    bpf::have_root,
    config::SeedConfig,
    daemon::{get_metrics, Daemon},
    ecmp::{self, Ecmp, LB3, TABLE},
    serial,
    topology::{addr6, Topology, AGENTS, LB1, LB2, SERVERS, VIP, VIP6},
    traffic::{self, Stream, StreamSpec},
};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

const T: Duration = Duration::from_secs(3);

struct Lab {
    // Dropped in this order: k3s-xdp and BIRD, the backends, then the topology.
    ecmp: Ecmp,
    backends: Backends,
    topo: Topology,
}

fn daemon_config(mode: &str, extra_service: &str, bgp: &str) -> String {
    let mut c = SeedConfig::new()
        .top("snat_port_range = [20000, 29999]")
        .service(format!("mode = \"{mode}\""))
        .health("inter = \"300ms\"\nrise = 1\nfall = 2\ntimeout = \"300ms\"");
    if !extra_service.is_empty() {
        c = c.service(extra_service);
    }
    format!(
        "{}\n[bgp]\ntable = {TABLE}\ndrain_time = \"1s\"\n{bgp}",
        c.render()
    )
}

/// The ECMP lab with `lbs` load balancers in `mode`; returns once the router routes the VIP
/// over all of them.
fn lab(lbs: usize, mode: &str, extra_service: &str) -> Lab {
    let topo = ecmp::topology().expect("topology");
    if mode == "dsr" {
        for s in SERVERS {
            topo.prepare_dsr_backend(s, VIP).unwrap();
        }
    }
    let backends = Backends::seed(&topo, Kind::Tcp).unwrap();
    let ecmp = Ecmp::start(&topo, lbs, |_, socket| {
        daemon_config(
            mode,
            extra_service,
            &format!("bird_socket = {:?}\n", socket.display().to_string()),
        )
    })
    .unwrap();
    Lab {
        ecmp,
        backends,
        topo,
    }
}

/// Waits until the router's route to the VIP goes through exactly `want`; how long it took.
fn wait_hops(topo: &Topology, want: &[Ipv4Addr], limit: Duration) -> Duration {
    ecmp::wait_hops(topo, want, limit).unwrap()
}

fn new_flows(s: &Status) -> u64 {
    s.services.iter().map(|x| x.new_flows).sum()
}

fn announced(s: &Status) -> Option<bool> {
    let b = s.bgp.as_ref()?;
    b.vips
        .iter()
        .find(|v| v.vip == VIP.to_string())
        .map(|v| v.announced)
}

fn admin(daemon: &Daemon, action: Admin) {
    for s in SERVERS {
        let answer = daemon
            .request(&Request::Backend {
                action,
                target: format!("k3s-api/{s}"),
            })
            .unwrap();
        assert!(matches!(answer, Response::Ok { .. }), "{answer:?}");
    }
}

/// A long-lived connection through the VIP: the server it reached, and the stream.
fn long_lived(topo: &Topology, agent: &str, i: usize) -> (String, TcpStream) {
    let mut s = connect(topo.node(agent), SocketAddrV4::new(VIP, 6443), T).unwrap();
    let (server, echoed) = echo_roundtrip(&mut s, format!("{agent}-{i}").as_bytes()).unwrap();
    assert!(echoed);
    (server, s)
}

fn still_echoes(s: &mut TcpStream, payload: &str) -> Result<(), String> {
    s.write_all(payload.as_bytes()).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).map_err(|e| e.to_string())?;
    if back == payload.as_bytes() {
        Ok(())
    } else {
        Err(format!("echoed {:?}", String::from_utf8_lossy(&back)))
    }
}

/// Detaches the XDP program on `node`'s `eth1` behind k3s-xdp's back (`bpftool link detach`).
fn detach_xdp(topo: &Topology, node: &str) {
    let out = topo.node(node).ip(["link", "show", "eth1"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let prog: u64 = text
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no XDP program on {node}'s eth1:\n{text}"));
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["prog_id"].as_u64() == Some(prog))
        .and_then(|l| l["id"].as_u64())
        .unwrap_or_else(|| panic!("no bpf_link of program {prog}: {links}"));
    let status = std::process::Command::new("bpftool")
        .args(["link", "detach", "id", &link.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "bpftool link detach id {link}");
}

/// New connections from every agent for `limit`: every attempt.
fn connections_for(topo: &Topology, limit: Duration) -> Vec<traffic::Attempt> {
    let running = stream(topo, limit);
    std::thread::sleep(limit);
    running.finish()
}

fn stream(topo: &Topology, limit: Duration) -> Stream {
    Stream::start(
        topo,
        StreamSpec {
            agents: AGENTS.iter().map(|a| a.to_string()).collect(),
            tcp: Some(SocketAddrV4::new(VIP, 6443)),
            udp: None,
            interval: Duration::from_millis(20),
            limit,
            timeout: T,
        },
    )
    .unwrap()
}

/// dsr behind ECMP over three nodes: flows spread over all of them; a node whose backends are
/// all drained withdraws and announces again when they are back; SIGTERM withdraws before the
/// program detaches, and a stream of new connections meanwhile sees no failure; kill -9 is
/// withdrawn by the guard; a restarted node announces again. Long-lived connections opened
/// at the start, spread over the three nodes, survive two of them leaving: the router moves
/// them to the last node, whose Maglev table sends each to the same server.
#[test]
fn ecmp_over_three_nodes_follows_what_each_can_serve() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut lab = lab(3, "dsr", "");
    let topo = &lab.topo;

    // Spread: new connections from the agents reach every node.
    let before: Vec<u64> = lab
        .ecmp
        .daemons
        .iter()
        .map(|d| new_flows(&d.status().unwrap()))
        .collect();
    let mut lived = Vec::new();
    for i in 0..8 {
        for agent in AGENTS {
            lived.push(long_lived(topo, agent, i));
        }
    }
    let after: Vec<u64> = lab
        .ecmp
        .daemons
        .iter()
        .map(|d| new_flows(&d.status().unwrap()))
        .collect();
    let per_node: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("24 connections through the router: new flows per node {per_node:?}");
    assert!(
        per_node.iter().all(|n| *n > 0),
        "ECMP spreads flows over every node: {per_node:?}"
    );

    // Status and metrics say what is announced, and the routing daemon's session (read every
    // few seconds).
    let s = lab.ecmp.daemons[0]
        .wait_for(Duration::from_secs(10), "the session in status", |s| {
            s.bgp
                .as_ref()
                .is_some_and(|b| b.sessions.iter().any(|x| x.established()))
        })
        .unwrap();
    let b = s.bgp.clone().expect("bgp status");
    assert_eq!(b.table, TABLE);
    assert_eq!(announced(&s), Some(true));
    assert!(b.routing_daemon_error.is_none(), "{b:?}");
    assert!(
        b.sessions
            .iter()
            .any(|x| x.name == "upstream" && x.established()),
        "{b:?}"
    );
    let table = k3s_xdp::controller::status::render_table(&s);
    assert!(table.contains(&format!("{VIP} announced")), "{table}");
    assert!(table.contains("upstream Established"), "{table}");
    let metrics = get_metrics(topo, "lb-1", "127.0.0.1:9742").unwrap();
    assert!(
        metrics.contains(&format!("k3sxdp_bgp_announced{{vip=\"{VIP}\"}} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("k3sxdp_bgp_session_established{session=\"upstream\"} 1"),
        "{metrics}"
    );

    // lb-1 with every backend drained cannot serve: withdrawn, then announced again.
    admin(&lab.ecmp.daemons[0], Admin::Drain);
    let took = wait_hops(topo, &[LB3, LB2], Duration::from_secs(5));
    eprintln!("lb-1 drained: withdrawn from the router in {took:?}");
    let s = lab.ecmp.daemons[0].status().unwrap();
    assert_eq!(announced(&s), Some(false));
    let why = &s.bgp.as_ref().unwrap().vips[0].reason;
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("0 healthy backend")),
        "{why:?}"
    );
    admin(&lab.ecmp.daemons[0], Admin::Enable);
    let took = wait_hops(topo, &[LB3, LB1, LB2], Duration::from_secs(5));
    eprintln!("lb-1 enabled again: announced to the router in {took:?}");

    // SIGTERM of lb-3 under a stream of new connections: withdrawn first, none fails.
    let running = stream(topo, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    lab.ecmp.daemons[2].signal(libc::SIGTERM).unwrap();
    let took = wait_hops(topo, &[LB1, LB2], Duration::from_secs(5));
    eprintln!("lb-3 SIGTERM: withdrawn from the router in {took:?}");
    lab.ecmp.daemons[2].stop();
    let stopped = signalled.elapsed();
    let attempts = running.finish();
    let failed = traffic::failures(&attempts);
    eprintln!(
        "{} new connections during lb-3's SIGTERM (it exited after {stopped:?}), {} failed",
        attempts.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(
        stopped >= Duration::from_secs(1),
        "the program detaches after drain_time ({stopped:?})"
    );

    // kill -9 of lb-2's daemon: the guard withdraws.
    let killed = Instant::now();
    lab.ecmp.daemons[1].crash();
    let took = wait_hops(topo, &[LB1], Duration::from_secs(5));
    eprintln!(
        "lb-2 kill -9: withdrawn from the router {took:?} after the process was reaped ({:?} after the kill)",
        killed.elapsed()
    );

    // Every long-lived connection now goes through lb-1, to the same server as before.
    let lost: Vec<String> = lived
        .iter_mut()
        .enumerate()
        .filter_map(|(i, (server, s))| {
            still_echoes(s, &format!("still {i}"))
                .err()
                .map(|e| format!("#{i} to {server}: {e}"))
        })
        .collect();
    assert!(lost.is_empty(), "dsr connections lost: {lost:#?}");

    // lb-2 restarted: announced again.
    lab.ecmp.daemons[1].restart(topo).unwrap();
    let took = wait_hops(topo, &[LB1, LB2], Duration::from_secs(10));
    eprintln!("lb-2 restarted: announced to the router in {took:?}");

    // Every server down: nothing to serve, both nodes withdraw; back up: both announce.
    for s in SERVERS {
        lab.backends.stop(s).unwrap();
    }
    let took = wait_hops(topo, &[], Duration::from_secs(10));
    eprintln!("every server down: withdrawn by both nodes in {took:?}");
    for s in SERVERS {
        lab.backends.restart(s).unwrap();
    }
    wait_hops(topo, &[LB1, LB2], Duration::from_secs(10));

    // lb-2's host dies (its link goes down, BIRD and k3s-xdp with it): BFD (100 ms x 3) routes
    // around it long before BGP's hold time (9 s) would.
    topo.set_link("lb-2", false).unwrap();
    let took = wait_hops(topo, &[LB1], Duration::from_secs(5));
    eprintln!("lb-2's link down: the router routed around it in {took:?} (BFD)");
    topo.set_link("lb-2", true).unwrap();
}

/// nat with `snat_source = "node"` behind ECMP: each node's backends answer to that node, so
/// new connections never fail while two nodes serve, nor after one of them dies and the
/// router has withdrawn it.
#[test]
fn nat_with_snat_source_node_works_behind_ecmp() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut lab = lab(2, "nat", "snat_source = \"node\"");
    let topo = &lab.topo;
    let steady = connections_for(topo, Duration::from_secs(3));
    let failed = traffic::failures(&steady);
    eprintln!(
        "{} new connections over two nat nodes, {} failed",
        steady.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
    let flows: Vec<u64> = lab
        .ecmp
        .daemons
        .iter()
        .map(|d| new_flows(&d.status().unwrap()))
        .collect();
    assert!(
        flows.iter().all(|n| *n > 0),
        "both nodes took flows: {flows:?}"
    );

    // Someone takes lb-2's XDP program off the interface: it notices (within a second), its
    // tracking fails and it withdraws; a restart attaches the program and announces again.
    detach_xdp(topo, "lb-2");
    let took = wait_hops(topo, &[LB1], Duration::from_secs(5));
    eprintln!("lb-2's XDP program detached by someone else: withdrawn in {took:?}");
    let s = lab.ecmp.daemons[1].status().unwrap();
    assert_eq!(s.xdp_mode, "detached");
    let why = &s.bgp.as_ref().unwrap().vips[0].reason;
    assert_eq!(why.as_deref(), Some("XDP program detached"), "{s:?}");
    lab.ecmp.daemons[1]
        .wait_log("no longer attached", Duration::from_secs(5))
        .unwrap();
    lab.ecmp.daemons[1].restart(topo).unwrap();
    wait_hops(topo, &[LB1, LB2], Duration::from_secs(10));

    lab.ecmp.daemons[1].crash();
    let took = wait_hops(topo, &[LB1], Duration::from_secs(5));
    eprintln!("lb-2 kill -9: withdrawn in {took:?}");
    let after = connections_for(topo, Duration::from_secs(2));
    let failed = traffic::failures(&after);
    eprintln!(
        "{} new connections after lb-2's death, {} failed",
        after.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
}

/// nat with the default `snat_source = "vip"` behind ECMP, with `[flow_sync]` between the
/// nodes (issue 20): the router sends a client's packets to one node and the backend's
/// replies (to the VIP, whichever node answered its ARP) may reach the other; each node
/// knows the other's translations, so every connection works, new or long-lived.
#[test]
fn nat_with_snat_source_vip_works_behind_ecmp_with_flow_sync() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let topo = ecmp::topology().expect("topology");
    let key_dir = std::env::temp_dir().join(format!("k3s-xdp-fskey-{}", topo.prefix()));
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(key_dir.clone());
    std::fs::create_dir_all(&key_dir).unwrap();
    let key = key_dir.join("flow-sync.key");
    std::fs::write(&key, [b'k'; 48]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let backends = Backends::seed(&topo, Kind::Tcp).unwrap();
    let ecmp = Ecmp::start(&topo, 2, |node, socket| {
        let peer = if node == "lb-1" { LB2 } else { LB1 };
        format!(
            "{}\n[flow_sync]\npeers = [\"{peer}\"]\nkey_file = {:?}\n",
            daemon_config(
                "nat",
                "",
                &format!("bird_socket = {:?}\n", socket.display().to_string()),
            ),
            key.display().to_string()
        )
    })
    .unwrap();
    let lab = Lab {
        ecmp,
        backends,
        topo,
    };
    let topo = &lab.topo;
    for d in &lab.ecmp.daemons {
        d.wait_for(Duration::from_secs(10), "flow sync up", |s| {
            s.flow_sync
                .as_ref()
                .is_some_and(|f| f.synced && f.peers.iter().all(|p| p.up))
        })
        .unwrap();
    }
    let mut long: Vec<(String, TcpStream)> = (0..12)
        .map(|i| long_lived(topo, AGENTS[i % 3], i))
        .collect();
    let steady = connections_for(topo, Duration::from_secs(3));
    let failed = traffic::failures(&steady);
    eprintln!(
        "{} new connections over two nat nodes (snat_source vip, flow sync), {} failed",
        steady.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
    for (i, (server, s)) in long.iter_mut().enumerate() {
        still_echoes(s, &format!("still {i}")).unwrap_or_else(|e| panic!("{server}: {e}"));
    }
    let statuses: Vec<Status> = lab
        .ecmp
        .daemons
        .iter()
        .map(|d| d.status().unwrap())
        .collect();
    for s in &statuses {
        let f = s.flow_sync.as_ref().unwrap();
        assert!(
            new_flows(s) > 0 && f.installed > 0,
            "both nodes made and took flows: {f:?}"
        );
    }
}

/// No routing daemon at all: k3s-xdp serves, keeps its route, and says in status and the log
/// that nothing exports it. Its own leftover route (a previous run's) is removed at start;
/// another program's routes in the table, one of them for the VIP in the table a reload
/// moves to, are left alone.
#[test]
fn without_a_routing_daemon_it_serves_and_leaves_other_routes_alone() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let topo = Topology::seed().unwrap();
    let _backends = Backends::seed(&topo, Kind::Tcp).unwrap();
    let lb = topo.node("lb-1");
    let t = TABLE.to_string();
    lb.ip([
        "route",
        "add",
        "192.0.2.77/32",
        "dev",
        "eth1",
        "table",
        &t,
        "proto",
        "201",
    ])
    .unwrap();
    lb.ip([
        "route",
        "add",
        "198.51.100.0/24",
        "dev",
        "eth1",
        "table",
        &t,
        "proto",
        "static",
    ])
    .unwrap();
    lb.ip([
        "route",
        "add",
        &format!("{VIP}/32"),
        "dev",
        "eth1",
        "table",
        "201",
        "proto",
        "static",
    ])
    .unwrap();
    let missing = "/nonexistent/bird.ctl";
    let config = daemon_config("nat", "", &format!("bird_socket = {missing:?}\n"));
    let mut daemon = Daemon::start(&topo, "lb-1", &config).unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    let routes = |table: &str| {
        let out = lb.ip(["route", "show", "table", table]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    k3s_xdp_tests::wait_until(Duration::from_secs(5), "the VIP's route", || {
        routes(&t).contains(&format!("{VIP} dev eth1 proto 201"))
    });
    let r = routes(&t);
    assert!(
        !r.contains("192.0.2.77"),
        "the leftover route is removed:\n{r}"
    );
    assert!(
        r.contains("198.51.100.0/24"),
        "another program's route stays:\n{r}"
    );
    let s = daemon
        .wait_for(Duration::from_secs(5), "the announcer's report", |s| {
            s.bgp
                .as_ref()
                .is_some_and(|b| b.routing_daemon_error.is_some())
        })
        .unwrap();
    assert_eq!(announced(&s), Some(true));
    let table = k3s_xdp::controller::status::render_table(&s);
    assert!(table.contains("routing daemon unknown"), "{table}");
    assert!(table.contains("nothing may export these routes"), "{table}");
    daemon
        .wait_log("nothing exports the routes", Duration::from_secs(5))
        .unwrap();
    // It serves: the agents reach the VIP on the link (this node holds it).
    let answered = k3s_xdp_tests::backend::roundtrip(
        topo.node("agent-1"),
        SocketAddrV4::new(VIP, 6443),
        b"hello",
        T,
    )
    .unwrap();
    assert!(SERVERS.contains(&answered.as_str()), "{answered}");

    // A routing daemon that runs but has no BGP session configured: status and log say that
    // nothing exports the routes (the socket is changed by a reload).
    let idle_bird = Bird::start(&topo, "lb-1", "log stderr all;\nprotocol device {}\n").unwrap();
    let socket = idle_bird.socket().display().to_string();
    let with_bird = config.replace(&format!("{missing:?}"), &format!("{socket:?}"));
    daemon.write_config(&with_bird).unwrap();
    let answer = daemon.reload().unwrap();
    assert!(answer.contains("bird_socket"), "{answer}");
    let s = daemon
        .wait_for(Duration::from_secs(10), "BIRD read", |s| {
            s.bgp
                .as_ref()
                .is_some_and(|b| b.routing_daemon_error.is_none())
        })
        .unwrap();
    let table = k3s_xdp::controller::status::render_table(&s);
    assert!(
        table.contains("the routing daemon has no BGP session: nothing exports these routes"),
        "{table}"
    );
    daemon
        .wait_log(
            "the routing daemon has no BGP session",
            Duration::from_secs(5),
        )
        .unwrap();
    let config = with_bird;

    // A reload to table 201, where another program routes the VIP: withdrawn from 200, and
    // 201's route left alone.
    daemon
        .write_config(&config.replace(&format!("table = {TABLE}"), "table = 201"))
        .unwrap();
    let answer = daemon.reload().unwrap();
    assert!(answer.contains("bgp: table 200 -> 201"), "{answer}");
    let s = daemon
        .wait_for(Duration::from_secs(5), "the new table", |s| {
            s.bgp.as_ref().is_some_and(|b| b.table == 201)
        })
        .unwrap();
    let vip = &s.bgp.as_ref().unwrap().vips[0];
    assert!(!vip.announced);
    assert!(
        vip.reason
            .as_deref()
            .is_some_and(|r| r.contains("not k3s-xdp's: left alone")),
        "{vip:?}"
    );
    assert!(!routes(&t).contains(&VIP.to_string()), "{}", routes(&t));
    assert!(routes("201").contains(&format!("{VIP} dev eth1 proto static")));
    daemon.stop();
    assert!(routes("201").contains(&format!("{VIP} dev eth1 proto static")));
    assert!(routes(&t).contains("198.51.100.0/24"));
}

/// An IPv6 VIP under `[bgp]` (issue 19): k3s-xdp keeps a `/128` of protocol 201 in its table
/// while it can serve the VIP; BIRD, with the shipped `bird.conf` and `k3s-xdp-ipv6.conf`,
/// learns it into its IPv6 table for export; status lists the VIP as announced; SIGTERM
/// withdraws it from the kernel and so from BIRD.
#[test]
fn an_ipv6_vip_is_kept_as_a_128_that_bird_learns() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let topo = Topology::seed().unwrap();
    for node in ["lb-1", "server-1", "server-2"] {
        topo.add_ipv6(node).unwrap();
    }
    let _backends = Backends::seed(&topo, Kind::Tcp).unwrap();
    let lb = topo.node("lb-1");
    let bird_conf = format!(
        "{}{}",
        k3s_xdp_tests::bird::load_balancer_config(TABLE, ecmp::ROUTER).unwrap(),
        k3s_xdp_tests::bird::load_balancer_config_ipv6(addr6(ecmp::ROUTER)).unwrap()
    );
    let bird = Bird::start(&topo, "lb-1", &bird_conf).unwrap();
    let backends6: Vec<String> = ["server-1", "server-2"]
        .iter()
        .map(|s| {
            format!(
                "{{ name = \"{s}\", address = \"[{}]:6443\" }}",
                addr6(topo.addr(s))
            )
        })
        .collect();
    let v6_service = format!(
        "\n[[service]]\nname = \"api6\"\nvip = \"{VIP6}\"\nport = 6443\nbackends = [{}]\n\
         [service.health]\ncheck = \"tcp\"\ninter = \"300ms\"\n",
        backends6.join(", ")
    );
    let config = format!(
        "{}{v6_service}",
        daemon_config(
            "nat",
            "",
            &format!("bird_socket = {:?}\n", bird.socket().display().to_string())
        )
    );
    let mut daemon = Daemon::start(&topo, "lb-1", &config).unwrap();
    let kernel = || {
        let out = lb
            .ip(["-6", "route", "show", "table", &TABLE.to_string()])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    k3s_xdp_tests::wait_until(Duration::from_secs(10), "the IPv6 VIP's /128", || {
        kernel().contains(&format!("{VIP6} dev eth1 proto 201"))
    });
    k3s_xdp_tests::wait_until(Duration::from_secs(15), "BIRD learns it", || {
        bird.birdc("show route table k3sxdp_vips6")
            .is_ok_and(|r| r.contains(&format!("{VIP6}/128")))
    });
    let s = daemon
        .wait_for(Duration::from_secs(5), "both VIPs announced", |s| {
            s.bgp
                .as_ref()
                .is_some_and(|b| b.vips.len() == 2 && b.vips.iter().all(|v| v.announced))
        })
        .unwrap();
    let table = k3s_xdp::controller::status::render_table(&s);
    assert!(table.contains(&format!("{VIP6} announced")), "{table}");

    daemon.stop();
    assert!(
        !kernel().contains(&VIP6.to_string()),
        "withdrawn on SIGTERM:\n{}",
        kernel()
    );
    k3s_xdp_tests::wait_until(Duration::from_secs(15), "BIRD forgets it", || {
        bird.birdc("show route table k3sxdp_vips6")
            .is_ok_and(|r| !r.contains(&VIP6.to_string()))
    });
}
