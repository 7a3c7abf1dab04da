//! nat mode against servers that close first (as HTTP servers answering `Connection: close`
//! do, and so keep each connection in TIME_WAIT): with real TCP stacks on both sides, a SNAT
//! port is never handed to another client while its backend may still hold the old 4-tuple,
//! so no SYN meets a TIME_WAIT (PAWS) and none is sent twice; a port range too small for the
//! rate is counted and reported, and connections still go through; a SNAT pool (`snat_source`)
//! multiplies the ports, and `"node"` shows the servers the node's own address.

use k3s_xdp::controller::status::Status;
use k3s_xdp_tests::{
    bpf::have_root,
    config::SeedConfig,
    daemon::Daemon,
    serial,
    topology::{Topology, AGENTS, LB1, SERVERS, VIP},
    traffic::{self, request_closed_by_server, ClosesFirst},
};
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

fn config(ports: (u16, u16), snat_source: &str) -> String {
    SeedConfig::new()
        .top(format!("snat_port_range = [{}, {}]", ports.0, ports.1))
        .service(format!("snat_source = {snat_source}"))
        .health("inter = \"1s\"\nrise = 1\nfall = 3")
        .render()
}

/// lb-1 alone, with SNAT ports `ports`, in front of server-1..3 that close first.
struct Lab {
    // Dropped in this order: the daemon, the servers, then the namespaces.
    daemon: Daemon,
    servers: Vec<ClosesFirst>,
    topo: Topology,
}

impl Lab {
    fn start(ports: (u16, u16)) -> Lab {
        Self::with_source(ports, "\"vip\"")
    }

    fn with_source(ports: (u16, u16), snat_source: &str) -> Lab {
        let topo = Topology::builder().without("lb-2").build().unwrap();
        let servers = SERVERS
            .iter()
            .map(|s| ClosesFirst::start(topo.node(s), s, 6443).unwrap())
            .collect();
        let daemon = Daemon::start(&topo, "lb-1", &config(ports, snat_source)).unwrap();
        daemon.wait_healthy(Duration::from_secs(10)).unwrap();
        Lab {
            daemon,
            servers,
            topo,
        }
    }
}

/// What a churn through the VIP did: SYNs the agents sent again, segments the servers refused
/// for meeting a TIME_WAIT (PAWS), ports waiting at the end, and the status then.
struct Churned {
    retransmits: u64,
    paws: u64,
    waiting: u64,
    status: Status,
}

impl Lab {
    /// [`churn`] with the counters around it; every connection must succeed.
    fn churn(&self, per_agent: u32, pace: Duration) -> Churned {
        let topo = &self.topo;
        let (retransmits, paws) = (
            counter(topo, &AGENTS, "TcpExtTCPSynRetrans"),
            counter(topo, &SERVERS, "TcpExtPAWSTimewait"),
        );
        let (made, failed) = churn(topo, per_agent, pace);
        let status = self.daemon.status().unwrap();
        let retransmits = counter(topo, &AGENTS, "TcpExtTCPSynRetrans") - retransmits;
        let paws = counter(topo, &SERVERS, "TcpExtPAWSTimewait") - paws;
        let waiting: u64 = status.services[0]
            .backends
            .iter()
            .map(|b| b.snat_ports_waiting)
            .sum();
        eprintln!(
            "{made} connections, {} failed; {retransmits} SYNs retransmitted, {paws} rejected by PAWS; {waiting} ports waiting; flow table events {:?}",
            failed.len(),
            status.flow_table
        );
        assert!(failed.is_empty(), "{failed:?}");
        Churned {
            retransmits,
            paws,
            waiting,
            status,
        }
    }
}

/// lb-1's IPv4 addresses on eth1, as `ip -o addr` prints them.
fn addresses(topo: &Topology) -> String {
    let out = topo
        .node("lb-1")
        .ip(["-4", "-o", "addr", "show", "dev", "eth1"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The sum of `counter` (nstat) over `nodes`.
fn counter(topo: &Topology, nodes: &[&str], counter: &str) -> u64 {
    nodes
        .iter()
        .map(|n| traffic::nstat(topo.node(n), counter).unwrap())
        .sum()
}

/// `per_agent` requests from each agent through the VIP, one every `pace`: the failures.
fn churn(topo: &Topology, per_agent: u32, pace: Duration) -> (u32, Vec<String>) {
    churn_within(topo, per_agent, pace, Duration::from_secs(3))
}

/// [`churn`], each request given `timeout`.
fn churn_within(
    topo: &Topology,
    per_agent: u32,
    pace: Duration,
    timeout: Duration,
) -> (u32, Vec<String>) {
    let vip = SocketAddrV4::new(VIP, 6443);
    let results: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = AGENTS
            .iter()
            .map(|agent| {
                let ns = topo.node(agent).handle();
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for i in 0..per_agent {
                        let next = Instant::now() + pace;
                        if let Err(e) = request_closed_by_server(&ns, vip, timeout) {
                            failed.push(format!("{agent} #{i}: {e:#}"));
                        }
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (per_agent * AGENTS.len() as u32, results.concat())
}

fn table_event(s: &Status, event: &str) -> u64 {
    s.flow_table.get(event).copied().unwrap_or(0)
}

/// 150 short connections, each closed by its server first, through 100 SNAT ports per
/// backend within about two seconds: ports come round again while the servers hold their
/// previous connections in TIME_WAIT. None is given to another client meanwhile, so the
/// servers reject no SYN (`TcpExtPAWSTimewait`) and the clients retransmit none
/// (`TcpExtTCPSynRetrans`). Before the fix: 19 of each.
#[test]
fn servers_that_close_first_never_meet_a_reused_port_in_time_wait() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let lab = Lab::start((20000, 20099));
    let Churned {
        retransmits,
        paws,
        waiting,
        status,
    } = lab.churn(50, Duration::from_millis(10));
    // A SYN refused by PAWS makes its client send it again (the previous binary: 19 of each
    // in this test). A PAWS rejection of some other late segment refuses no connection; one
    // was seen once in ten runs, with no SYN retransmitted.
    assert_eq!(
        retransmits, 0,
        "a server refused a client's SYN (PAWS) and it sent it again"
    );
    assert!(
        paws <= 1,
        "{paws} segments met a 4-tuple in TIME_WAIT (PAWS)"
    );
    assert!(
        waiting > 100,
        "status shows the ports waiting for the servers' TIME_WAIT ({waiting})"
    );
    assert_eq!(table_event(&status, "translation_reused_waiting"), 0);
}

/// Ten SNAT ports per backend for 90 connections that servers close first: every port waits,
/// so new connections reuse the ports that waited longest. That is counted (status and
/// metrics), and connections still go through: a Linux client answers the server's
/// refusal with a RST (which ends that TIME_WAIT) and sends its SYN again, usually at once,
/// at worst at its SYN retransmit timer (1 s, then 2 s; CI once saw a connection need more
/// than 3 s), so each connection gets 10 s here. Past capacity, a port is reused as soon as
/// both FINs passed, while its previous client may still wait for the backend's last ACK: CI
/// once saw one connection of 90 reset at its connect in this race (not pinned down further).
/// One such reset is allowed; any other failure, or a second one, fails the test.
#[test]
fn a_port_range_too_small_for_the_rate_is_counted_and_connections_go_through() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let lab = Lab::start((20000, 20009));
    let (topo, daemon) = (&lab.topo, &lab.daemon);

    let started = Instant::now();
    let (made, failed) = churn_within(topo, 30, Duration::from_millis(20), Duration::from_secs(10));
    let took = started.elapsed();
    let status = daemon.status().unwrap();
    let reused = table_event(&status, "translation_reused_waiting");
    eprintln!(
        "{made} connections in {took:?}, {} failed; {reused} ports reused while waiting",
        failed.len()
    );
    let reset_at_connect = |f: &String| f.contains("connecting to") && f.contains("reset by peer");
    assert!(
        failed.len() <= 1 && failed.iter().all(reset_at_connect),
        "{failed:?}"
    );
    assert!(reused > 0, "the reuse of waiting ports is counted");
    assert_eq!(
        status
            .packets
            .get("drop_snat_exhausted")
            .copied()
            .unwrap_or(0),
        0,
        "no connection refused for want of a port"
    );
    let table = k3s_xdp::controller::status::render_table(&status);
    assert!(table.contains("SNAT ports short"), "{table}");
    let metrics = k3s_xdp_tests::daemon::get_metrics(topo, "lb-1", "127.0.0.1:9742").unwrap();
    assert!(
        metrics.contains("k3sxdp_flow_table_full_total{event=\"translation_reused_waiting\"}"),
        "{metrics}"
    );
}

/// Thirty ports per backend with a pool of three addresses: three times the ports, so 120
/// connections that servers close first (more than one address has for three backends) fit
/// without reusing a port in TIME_WAIT; the servers see the pool's addresses, all of them, and
/// nothing else. The search makes 16 hashed tries, so a backend's ports must not be nearly all
/// waiting: Maglev gives one backend up to about 48 of the 120, under 55% of its 90 (at 85%,
/// as in a former version of this test, 16 tries all miss about once in 14 runs). The daemon holds the addresses that are no VIP while it runs, and removes
/// them when it stops.
#[test]
fn a_snat_pool_multiplies_the_ports_and_the_servers_see_its_addresses() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let pool = ["192.0.2.110", "192.0.2.111"];
    let lab = Lab::with_source(
        (20000, 20029),
        &format!("[\"vip\", \"{}\", \"{}\"]", pool[0], pool[1]),
    );
    let topo = &lab.topo;
    let held = addresses(topo);
    for a in pool {
        assert!(held.contains(&format!("{a}/32")), "{a} added: {held}");
    }
    let Churned {
        retransmits,
        paws,
        waiting,
        status,
    } = lab.churn(40, Duration::from_millis(20));
    assert_eq!(retransmits, 0, "a SYN met a TIME_WAIT and was sent again");
    assert!(
        paws <= 1,
        "{paws} segments met a 4-tuple in TIME_WAIT (PAWS)"
    );
    assert_eq!(table_event(&status, "translation_reused_waiting"), 0);
    assert!(
        waiting > 90,
        "more ports waiting than one address has for three backends ({waiting})"
    );
    let mut expected: Vec<String> = vec![VIP.to_string()];
    expected.extend(pool.iter().map(|a| a.to_string()));
    assert_eq!(status.services[0].snat_addresses, expected);
    // lb-1's own health checks come from its address; the rest are translations.
    let seen: std::collections::BTreeSet<String> = lab
        .servers
        .iter()
        .flat_map(|s| s.peers())
        .filter(|a| *a != LB1)
        .map(|a| a.to_string())
        .collect();
    let mut wanted = expected.clone();
    wanted.sort();
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        wanted,
        "the servers saw the pool's addresses, and only those"
    );

    let Lab {
        daemon,
        servers,
        topo,
    } = lab;
    drop(daemon);
    let after = addresses(&topo);
    for a in pool {
        assert!(!after.contains(&format!("{a}/")), "{a} removed: {after}");
    }
    drop(servers);
}

/// `snat_source = "node"`: the servers see lb-1's own address (its health checks, and every
/// translated connection: had one kept the VIP, a server would have seen the VIP).
#[test]
fn with_snat_source_node_the_servers_see_the_nodes_address() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let lab = Lab::with_source((20000, 20999), "\"node\"");
    let (topo, daemon) = (&lab.topo, &lab.daemon);
    let (made, failed) = churn(topo, 10, Duration::from_millis(20));
    assert!(failed.is_empty(), "{made} connections: {failed:?}");
    let status = daemon.status().unwrap();
    assert_eq!(status.services[0].snat_addresses, [LB1.to_string()]);
    let seen: Vec<String> = lab
        .servers
        .iter()
        .flat_map(|s| s.peers())
        .map(|a| a.to_string())
        .collect();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| *a == LB1.to_string()),
        "{seen:?}"
    );
}
