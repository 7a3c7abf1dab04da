//! VRRP end to end: two `k3s-xdp run` (lb-1 priority 200, lb-2 priority 100) in front of
//! server-1..3 on the seed topology. Failover on `kill -9`, preemption (and not), SIGTERM
//! handover, a link that goes down and up, unicast peers, 100 ms adverts, tracking, hostile
//! adverts, and what happens to established connections.

use k3s_xdp::controller::status::{Status, VrrpStatus};
use k3s_xdp::vrrp::packet::{self as vrrp, Advert, Version};
use k3s_xdp_tests::{
    backend::{connect, echo_roundtrip, roundtrip, Backend, Kind},
    bpf::have_root,
    daemon::Daemon,
    serial,
    topology::{mac_string, seed_backends_toml, Topology, LB1, LB2, SERVERS, VIP, VIP6},
    wait_until,
};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

const T: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Opts {
    mode: &'static str,
    advert_int: &'static str,
    preempt: bool,
    unicast: bool,
    /// lb-1 checks a port nobody listens on, so its tracking fails.
    lb1_broken_checks: bool,
    /// The health checks' `inter`.
    inter: &'static str,
    /// Dual stack: the IPv6 VIP too (a second virtual router on each node), IPv6 addresses on
    /// the load balancers and agents.
    dual_stack: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mode: "nat",
            advert_int: "1s",
            preempt: true,
            unicast: false,
            lb1_broken_checks: false,
            inter: "300ms",
            dual_stack: false,
        }
    }
}

fn config(node: &str, o: &Opts) -> String {
    let (priority, state, me, peer) = if node == "lb-1" {
        (200, "master", LB1, LB2)
    } else {
        (100, "backup", LB2, LB1)
    };
    let backends = seed_backends_toml(6443);
    let check_port = if node == "lb-1" && o.lb1_broken_checks {
        "port = 6999\n"
    } else {
        ""
    };
    let unicast = if o.unicast {
        format!("unicast_src_ip = \"{me}\"\nunicast_peers = [\"{peer}\"]\n")
    } else {
        String::new()
    };
    let track = if node == "lb-1" && o.lb1_broken_checks {
        "track = { dataplane = true, min_healthy_backends = 1, weight = -150 }"
    } else {
        "track = { dataplane = true, min_healthy_backends = 1, weight = 0 }"
    };
    format!(
        r#"interface = "eth1"

[[service]]
name = "k3s-api"
vip = "{VIP}"
port = 6443
mode = "{mode}"
backends = [
{backends}
]
[service.health]
check = "tcp"
inter = "{inter}"
rise = 1
fall = 2
timeout = "300ms"
{check_port}
[vrrp]
virtual_router_id = 51
priority = {priority}
state = "{state}"
advert_int = "{advert}"
virtual_ipaddress = ["{VIP}/24"{vip6}]
preempt = {preempt}
{unicast}{track}
"#,
        mode = o.mode,
        backends = backends,
        advert = o.advert_int,
        preempt = o.preempt,
        inter = o.inter,
        vip6 = if o.dual_stack {
            format!(", \"{VIP6}/64\"")
        } else {
            String::new()
        },
    )
}

struct Pair {
    lb2: Daemon,
    lb1: Daemon,
    _servers: Vec<Backend>,
    topo: Topology,
    opts: Opts,
}

fn pair(o: Opts) -> Pair {
    let topo = Topology::seed().unwrap();
    if o.dual_stack {
        for node in ["lb-1", "lb-2", "agent-1", "agent-2", "agent-3"] {
            topo.add_ipv6(node).unwrap();
        }
    }
    let mut servers = Vec::new();
    for s in SERVERS {
        if o.mode == "dsr" {
            topo.prepare_dsr_backend(s, VIP).unwrap();
        }
        servers.push(Backend::start(topo.node(s), s, 6443, Kind::Tcp, &[topo.addr(s)]).unwrap());
    }
    let lb1 = Daemon::start(&topo, "lb-1", &config("lb-1", &o)).unwrap();
    let lb2 = Daemon::start(&topo, "lb-2", &config("lb-2", &o)).unwrap();
    Pair {
        lb2,
        lb1,
        _servers: servers,
        topo,
        opts: o,
    }
}

fn vrrp_state(s: &Status) -> String {
    s.vrrp.as_ref().map(|v| v.state.clone()).unwrap_or_default()
}

/// The IPv6 virtual router of a dual-stack node.
fn ipv6(s: &Status) -> Option<&VrrpStatus> {
    s.vrrp.as_ref()?.ipv6.as_deref()
}

fn ipv6_state(s: &Status) -> String {
    ipv6(s).map(|v| v.state.clone()).unwrap_or_default()
}

/// Whether `node` holds the VIP on eth1.
fn has_vip(topo: &Topology, node: &str) -> bool {
    topo.has_address(node, VIP)
}

/// lb-1 MASTER with the VIP, lb-2 BACKUP without it.
fn steady(p: &Pair) {
    p.lb1
        .wait_for(Duration::from_secs(10), "lb-1 MASTER", |s| {
            vrrp_state(s) == "MASTER"
        })
        .unwrap();
    // lb-2 is backup and has heard lb-1 (its next advert is at most advert_int away).
    p.lb2
        .wait_for(Duration::from_secs(10), "lb-2 BACKUP following lb-1", |s| {
            s.vrrp.as_ref().is_some_and(|v| {
                v.state == "BACKUP"
                    && v.master.as_deref() == Some("192.0.2.98")
                    && v.adverts_received > 0
            })
        })
        .unwrap();
    wait_until(T, "the VIP on lb-1 only", || {
        has_vip(&p.topo, "lb-1") && !has_vip(&p.topo, "lb-2")
    });
    if p.opts.dual_stack {
        // The IPv6 routers likewise, lb-2's following lb-1's link-local address.
        let lb1 = p.topo.link_local("lb-1").unwrap().to_string();
        p.lb1
            .wait_for(T, "lb-1's IPv6 router MASTER", |s| {
                ipv6_state(s) == "MASTER"
            })
            .unwrap();
        p.lb2
            .wait_for(T, "lb-2's IPv6 router BACKUP following lb-1", |s| {
                ipv6(s).is_some_and(|v| {
                    v.state == "BACKUP" && v.master.as_ref() == Some(&lb1) && v.adverts_received > 0
                })
            })
            .unwrap();
        wait_until(T, "the IPv6 VIP on lb-1 only", || {
            p.topo.has_address("lb-1", VIP6) && !p.topo.has_address("lb-2", VIP6)
        });
    }
    p.lb1.wait_healthy(Duration::from_secs(10)).unwrap();
    p.lb2.wait_healthy(Duration::from_secs(10)).unwrap();
}

fn through_vip(p: &Pair, from: &str) -> anyhow::Result<String> {
    roundtrip(p.topo.node(from), SocketAddrV4::new(VIP, 6443), b"hello", T)
}

/// Steady state, `kill -9` of the master, takeover within Master_Down_Interval, traffic through
/// the VIP continues; lb-1 comes back and preempts; its crash left no VIP it keeps holding.
#[test]
fn kill_9_of_the_master_then_it_returns_and_preempts() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts::default());
    steady(&p);
    assert!(through_vip(&p, "agent-1").is_ok());
    let s1 = p.lb1.status().unwrap();
    assert_eq!(
        s1.vrrp.as_ref().unwrap().master.as_deref(),
        Some("192.0.2.98")
    );
    // The backup learns the master from its next advert (at most advert_int away).
    p.lb2
        .wait_for(T, "lb-2 knows the master", |s| {
            let v = s.vrrp.as_ref().unwrap();
            v.master.as_deref() == Some("192.0.2.98") && v.adverts_received > 0
        })
        .unwrap();

    let forwarding = || {
        let out = p
            .topo
            .node("lb-1")
            .run("sysctl", ["-n", "net.ipv4.conf.eth1.forwarding"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(forwarding(), "1", "the daemon enables forwarding");
    let enabled_it = p.lb1.log().contains("enabled IPv4 forwarding on eth1");
    p.lb1.crash();
    // The guard removes the dead daemon's VIP and restores the sysctl at once: the kernel of
    // lb-1 must not answer ARP for the VIP, nor reset connections that reach it.
    let gone = wait_until(
        Duration::from_secs(2),
        "the guard removes lb-1's VIP",
        || !has_vip(&p.topo, "lb-1"),
    );
    eprintln!("VIP gone from lb-1 {gone:?} after kill -9");
    if enabled_it {
        wait_until(T, "forwarding restored", || forwarding() == "0");
    }
    // Master_Down_Interval for lb-2 (priority 100, 1 s adverts): 3 s + 156/256 s = 3.61 s.
    let took = wait_until(Duration::from_secs(6), "lb-2 takes the VIP", || {
        has_vip(&p.topo, "lb-2")
    });
    assert!(
        took < Duration::from_millis(4200),
        "takeover after {took:?}"
    );
    p.lb2
        .wait_for(T, "lb-2 MASTER", |s| vrrp_state(s) == "MASTER")
        .unwrap();
    for agent in ["agent-1", "agent-2", "agent-3"] {
        assert!(through_vip(&p, agent).is_ok(), "{agent} through lb-2");
    }

    p.lb1.restart(&p.topo).unwrap();
    p.lb1
        .wait_for(Duration::from_secs(10), "lb-1 preempts", |s| {
            vrrp_state(s) == "MASTER"
        })
        .unwrap();
    wait_until(Duration::from_secs(3), "one VIP, on lb-1", || {
        has_vip(&p.topo, "lb-1") && !has_vip(&p.topo, "lb-2")
    });
    p.lb2
        .wait_for(T, "lb-2 back to BACKUP", |s| vrrp_state(s) == "BACKUP")
        .unwrap();
    assert!(through_vip(&p, "agent-2").is_ok());
}

/// Dual stack: each node runs an IPv4 and an IPv6 virtual router, and both fail over together.
/// A dead link on lb-1 moves both VIPs to lb-2 and lb-2's unsolicited neighbour advertisements
/// move an agent's entry for the IPv6 VIP; the link back, lb-1 preempts both; `kill -9` of
/// lb-1: its guard removes the IPv6 VIP too and lb-2 takes both; SIGTERM hands the IPv6 VIP
/// over within Skew_Time as well (priority 0 over IPv6).
#[test]
fn dual_stack_routers_fail_over_together() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts {
        dual_stack: true,
        ..Default::default()
    });
    steady(&p);
    let mac = |node| mac_string(p.topo.mac(node));
    let ping6 = |agent: &str| {
        p.topo
            .node(agent)
            .run("ping", ["-6", "-c", "1", "-W", "2", &VIP6.to_string()])
            .is_ok()
    };
    let both = |node: &str| p.topo.has_address(node, VIP) && p.topo.has_address(node, VIP6);
    let neither = |node: &str| !p.topo.has_address(node, VIP) && !p.topo.has_address(node, VIP6);
    assert!(ping6("agent-1"), "the IPv6 VIP answers from lb-1");
    assert_eq!(p.topo.neighbour_mac("agent-1", VIP6), Some(mac("lb-1")));

    // lb-1's link dies: both its routers go to FAULT, lb-2 takes both VIPs.
    p.topo.set_link("lb-1", false).unwrap();
    wait_until(Duration::from_secs(6), "lb-2 takes both VIPs", || {
        both("lb-2")
    });
    let s = p.lb1.status().unwrap();
    assert_eq!(
        (vrrp_state(&s), ipv6_state(&s)),
        ("FAULT".into(), "FAULT".into())
    );
    assert!(neither("lb-1"));
    let s = p.lb2.status().unwrap();
    assert_eq!(
        (vrrp_state(&s), ipv6_state(&s)),
        ("MASTER".into(), "MASTER".into())
    );
    // lb-2's unsolicited neighbour advertisements moved agent-1's entry (Override).
    wait_until(T, "agent-1 learns the IPv6 VIP at lb-2", || {
        p.topo.neighbour_mac("agent-1", VIP6) == Some(mac("lb-2"))
    });
    assert!(ping6("agent-1"), "the IPv6 VIP answers from lb-2");

    // The link comes back: lb-1 listens, then preempts both.
    p.topo.set_link("lb-1", true).unwrap();
    wait_until(
        Duration::from_secs(8),
        "both VIPs back on lb-1 only",
        || both("lb-1") && neither("lb-2"),
    );
    wait_until(T, "agent-1 learns the IPv6 VIP at lb-1 again", || {
        p.topo.neighbour_mac("agent-1", VIP6) == Some(mac("lb-1"))
    });

    // kill -9: the guard removes both VIPs at once; lb-2 takes both.
    p.lb1.crash();
    wait_until(
        Duration::from_secs(2),
        "the guard removes lb-1's VIPs",
        || neither("lb-1"),
    );
    let took = wait_until(Duration::from_secs(6), "lb-2 takes both VIPs", || {
        both("lb-2")
    });
    assert!(
        took < Duration::from_millis(4200),
        "takeover after {took:?}"
    );
    assert!(ping6("agent-2"));

    // lb-1 back, then SIGTERM: priority 0 from both routers, lb-2 takes both within Skew_Time.
    p.lb1.restart(&p.topo).unwrap();
    p.lb1
        .wait_for(Duration::from_secs(10), "lb-1 preempts both", |s| {
            vrrp_state(s) == "MASTER" && ipv6_state(s) == "MASTER"
        })
        .unwrap();
    wait_until(T, "both VIPs on lb-1 only", || {
        both("lb-1") && neither("lb-2")
    });
    let started = Instant::now();
    p.lb1.stop().expect("lb-1 exits");
    assert!(neither("lb-1"), "SIGTERM removes both VIPs");
    wait_until(Duration::from_secs(3), "lb-2 holds both VIPs", || {
        both("lb-2")
    });
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "handover took {took:?}");

    // No advert was rejected on either side; the IPv6 router has its own metric series.
    let s = p.lb2.status().unwrap();
    let v = s.vrrp.as_ref().unwrap();
    for r in v.routers() {
        assert_eq!(r.adverts_rejected.values().sum::<u64>(), 0, "{r:?}");
    }
    let m = metrics(&p.topo, "lb-2");
    assert_eq!(
        m.get("k3sxdp_vrrp_state{family=ipv6,state=master}"),
        Some(&1.0),
        "{m:?}"
    );
    assert!(m
        .get("k3sxdp_vrrp_adverts_received_total{family=ipv6}")
        .is_some_and(|v| *v >= 1.0));
}

/// Dual stack: failing tracking lowers the priority of both routers, so the peer takes both
/// VIPs (they share the tracking input).
#[test]
fn dual_stack_tracking_moves_both_routers() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let p = pair(Opts {
        dual_stack: true,
        lb1_broken_checks: true,
        ..Default::default()
    });
    wait_until(Duration::from_secs(15), "lb-2 holds both VIPs", || {
        p.topo.has_address("lb-2", VIP) && p.topo.has_address("lb-2", VIP6)
    });
    let s = p.lb1.status().unwrap();
    let v = s.vrrp.as_ref().unwrap();
    for r in v.routers() {
        assert_eq!(
            (r.state.as_str(), r.effective_priority, r.track_ok),
            ("BACKUP", 50, false),
            "{r:?}"
        );
    }
    assert!(!p.topo.has_address("lb-1", VIP) && !p.topo.has_address("lb-1", VIP6));
}

#[test]
fn without_preempt_a_returning_master_stays_backup() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts {
        preempt: false,
        ..Default::default()
    });
    steady(&p);
    p.lb1.crash();
    wait_until(Duration::from_secs(6), "lb-2 takes the VIP", || {
        has_vip(&p.topo, "lb-2")
    });
    p.lb1.restart(&p.topo).unwrap();
    p.lb1
        .wait_for(Duration::from_secs(10), "lb-1 BACKUP", |s| {
            vrrp_state(s) == "BACKUP"
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        vrrp_state(&p.lb1.status().unwrap()),
        "BACKUP",
        "no preemption"
    );
    assert_eq!(vrrp_state(&p.lb2.status().unwrap()), "MASTER");
    assert!(has_vip(&p.topo, "lb-2") && !has_vip(&p.topo, "lb-1"));
}

/// SIGTERM on the master: priority 0, VIP removed, the backup takes over within about
/// Skew_Time (0.61 s for priority 100).
#[test]
fn sigterm_hands_over_within_skew_time() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts::default());
    steady(&p);
    let started = Instant::now();
    let status = p.lb1.stop().expect("lb-1 exits");
    assert!(status.success(), "clean exit: {status:?}\n{}", p.lb1.log());
    assert!(!has_vip(&p.topo, "lb-1"), "SIGTERM removes the VIP");
    wait_until(Duration::from_secs(3), "lb-2 holds the VIP", || {
        has_vip(&p.topo, "lb-2")
    });
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "handover took {took:?}");
    assert!(through_vip(&p, "agent-3").is_ok());
    assert!(p.lb1.log().contains("SIGTERM"), "{}", p.lb1.log());
}

/// lb-1's link goes down (lb-1 goes to FAULT, lb-2 takes over) and up: they converge on one
/// master, lb-1, with the VIP on one node only.
#[test]
fn a_link_down_and_up_converges_to_one_master() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let p = pair(Opts::default());
    steady(&p);
    p.topo.set_link("lb-1", false).unwrap();
    wait_until(Duration::from_secs(6), "lb-2 takes over", || {
        has_vip(&p.topo, "lb-2")
    });
    assert!(
        through_vip(&p, "agent-1").is_ok(),
        "lb-2 serves while lb-1 is cut off"
    );
    p.topo.set_link("lb-1", true).unwrap();
    wait_until(Duration::from_secs(6), "one master", || {
        has_vip(&p.topo, "lb-1") && !has_vip(&p.topo, "lb-2")
    });
    p.lb2
        .wait_for(T, "lb-2 BACKUP", |s| vrrp_state(s) == "BACKUP")
        .unwrap();
    assert_eq!(vrrp_state(&p.lb1.status().unwrap()), "MASTER");
    // Let gratuitous ARP settle the agents' caches, then traffic flows through lb-1.
    assert!(through_vip(&p, "agent-2").is_ok());
}

/// A dead link is a fault at once, as in keepalived, not after the health checks fail
/// (here they run every 30 s, so they would take a minute): the link watch sees the carrier
/// go. When it comes back lb-1 listens as a backup, then preempts.
#[test]
fn a_dead_link_is_a_fault_at_once_whatever_the_health_checks() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let p = pair(Opts {
        inter: "30s",
        ..Opts::default()
    });
    steady(&p);
    p.topo.set_link("lb-1", false).unwrap();
    let s = p
        .lb1
        .wait_for(T, "lb-1 FAULT", |s| vrrp_state(s) == "FAULT")
        .unwrap();
    assert!(!has_vip(&p.topo, "lb-1"), "the VIP left with the link");
    assert!(
        p.lb1.log().contains("link of eth1 is down"),
        "{}",
        p.lb1.log()
    );
    assert!(!s.link_up, "status shows the link down");
    assert_eq!(metrics(&p.topo, "lb-1").get("k3sxdp_link_up"), Some(&0.0));
    assert!(
        s.services[0].backends.iter().all(|b| b.health == "up"),
        "the health checks have not noticed: the fault came from the link: {:?}",
        s.services[0].backends
    );
    wait_until(Duration::from_secs(6), "lb-2 takes over", || {
        has_vip(&p.topo, "lb-2")
    });
    p.topo.set_link("lb-1", true).unwrap();
    p.lb1
        .wait_for(Duration::from_secs(8), "lb-1 MASTER again", |s| {
            vrrp_state(s) == "MASTER"
        })
        .unwrap();
    wait_until(Duration::from_secs(6), "one master", || {
        has_vip(&p.topo, "lb-1") && !has_vip(&p.topo, "lb-2")
    });
    assert!(
        p.lb1.log().contains("link of eth1 is up"),
        "{}",
        p.lb1.log()
    );
}

/// Unicast peers, as in seed 004: failover works, and a non-peer's adverts are rejected.
#[test]
fn unicast_peers_fail_over_and_refuse_strangers() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts {
        unicast: true,
        ..Default::default()
    });
    steady(&p);
    // A stranger (agent-1) advertises priority 254 by unicast to lb-2: refused.
    send_advert(&p.topo, "agent-1", LB2, 254, 255, &Version::V3);
    p.lb2
        .wait_for(T, "the stranger rejected", |s| {
            s.vrrp
                .as_ref()
                .unwrap()
                .adverts_rejected
                .get("not_a_peer")
                .copied()
                .unwrap_or(0)
                >= 1
        })
        .unwrap();
    assert_eq!(vrrp_state(&p.lb2.status().unwrap()), "BACKUP");
    p.lb1.crash();
    wait_until(Duration::from_secs(6), "lb-2 takes the VIP", || {
        has_vip(&p.topo, "lb-2")
    });
    assert!(through_vip(&p, "agent-2").is_ok());
}

/// advert_int = 100 ms: Master_Down_Interval is 0.36 s for lb-2.
#[test]
fn fast_adverts_fail_over_in_under_half_a_second() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts {
        advert_int: "100ms",
        ..Default::default()
    });
    steady(&p);
    p.lb1.crash();
    let took = wait_until(Duration::from_secs(3), "lb-2 takes the VIP", || {
        has_vip(&p.topo, "lb-2")
    });
    assert!(took < Duration::from_millis(500), "takeover after {took:?}");
    assert!(through_vip(&p, "agent-1").is_ok());
}

/// Tracking: lb-1 sees no healthy backend (its checks go to a closed port), so its priority
/// drops by 150 (200 -> 50) and lb-2 (100) takes over; fixing the checks gives it back.
#[test]
fn failing_tracking_hands_the_vip_to_the_peer() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut o = Opts {
        lb1_broken_checks: true,
        ..Default::default()
    };
    let p = pair(o.clone());
    p.lb2.wait_healthy(Duration::from_secs(10)).unwrap();
    p.lb1
        .wait_for(Duration::from_secs(10), "lb-1 tracking fails", |s| {
            s.vrrp
                .as_ref()
                .is_some_and(|v| !v.track_ok && v.effective_priority == 50)
        })
        .unwrap();
    wait_until(Duration::from_secs(8), "lb-2 holds the VIP", || {
        has_vip(&p.topo, "lb-2") && !has_vip(&p.topo, "lb-1")
    });
    assert_eq!(vrrp_state(&p.lb2.status().unwrap()), "MASTER");
    o.lb1_broken_checks = false;
    p.lb1.write_config(&config("lb-1", &o)).unwrap();
    // The tracking weight itself does not reload (vrrp changes need a restart), the checks do.
    p.lb1.reload().unwrap();
    p.lb1
        .wait_for(Duration::from_secs(10), "lb-1 back to 200", |s| {
            s.vrrp
                .as_ref()
                .is_some_and(|v| v.track_ok && v.effective_priority == 200)
        })
        .unwrap();
    wait_until(Duration::from_secs(8), "lb-1 preempts", || {
        has_vip(&p.topo, "lb-1") && !has_vip(&p.topo, "lb-2")
    });
    let _ = &p.opts;
}

/// A reload retunes the running instance like keepalived's: lb-2 raised above lb-1 takes the
/// VIP, lowered again gives it back, without a restart; a new virtual_router_id waits for one
/// and says so.
#[test]
fn a_reload_changes_the_priority_live() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let p = pair(Opts::default());
    steady(&p);
    let lb2 = config("lb-2", &p.opts);
    // A backup preempts when Master_Down_Interval passes without a higher priority heard
    // (RFC 9568 6.4.2): 3.6 s at 1 s adverts.
    let preempt = Duration::from_secs(8);

    p.lb2
        .write_config(&lb2.replace("priority = 100", "priority = 250"))
        .unwrap();
    let said = p.lb2.reload().unwrap();
    assert!(said.contains("vrrp: priority 100 -> 250"), "{said}");
    assert!(!said.contains("restart"), "{said}");
    p.lb2
        .wait_for(preempt, "lb-2 MASTER at 250", |s| {
            s.vrrp
                .as_ref()
                .is_some_and(|v| v.state == "MASTER" && v.priority == 250)
        })
        .unwrap();
    p.lb1
        .wait_for(T, "lb-1 BACKUP", |s| vrrp_state(s) == "BACKUP")
        .unwrap();
    wait_until(T, "the VIP on lb-2 only", || {
        has_vip(&p.topo, "lb-2") && !has_vip(&p.topo, "lb-1")
    });
    through_vip(&p, "agent-1").unwrap();

    // Back to 100, and a new virtual_router_id in the same file: the priority applies, the
    // id waits for a restart (the VIP returns to lb-1, still on router 51).
    p.lb2
        .write_config(&lb2.replace("virtual_router_id = 51", "virtual_router_id = 52"))
        .unwrap();
    let said = p.lb2.reload().unwrap();
    assert!(said.contains("vrrp: priority 250 -> 100"), "{said}");
    assert!(
        said.contains("applied only at the next restart: vrrp.virtual_router_id"),
        "{said}"
    );
    p.lb1
        .wait_for(preempt, "lb-1 MASTER again", |s| vrrp_state(s) == "MASTER")
        .unwrap();
    let s = p
        .lb2
        .wait_for(T, "lb-2 BACKUP of router 51", |s| {
            s.vrrp.as_ref().is_some_and(|v| {
                v.state == "BACKUP" && v.virtual_router_id == 51 && v.priority == 100
            })
        })
        .unwrap();
    assert_eq!(
        s.vrrp.unwrap().adverts_rejected.values().sum::<u64>(),
        0,
        "lb-2 still speaks router 51"
    );
    wait_until(T, "the VIP on lb-1 only", || {
        has_vip(&p.topo, "lb-1") && !has_vip(&p.topo, "lb-2")
    });
}

/// Hostile adverts from an agent: TTL 64 (routed), a bad checksum, version 2 against version 3:
/// each rejected and counted by reason, and the state does not move.
#[test]
fn hostile_adverts_are_rejected_by_reason() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let p = pair(Opts::default());
    steady(&p);
    send_advert(
        &p.topo,
        "agent-3",
        vrrp::MULTICAST_GROUP,
        254,
        64,
        &Version::V3,
    );
    send_advert(
        &p.topo,
        "agent-3",
        vrrp::MULTICAST_GROUP,
        254,
        255,
        &Version::V2 { auth_pass: None },
    );
    send_raw(&p.topo, "agent-3", vrrp::MULTICAST_GROUP, 255, &{
        let mut b = vrrp::encode(
            &advert(254),
            &Version::V3,
            Ipv4Addr::new(192, 0, 2, 103),
            vrrp::MULTICAST_GROUP,
        );
        b[6] ^= 0xff;
        b
    });
    // One more address announced than the packet carries.
    send_raw(&p.topo, "agent-3", vrrp::MULTICAST_GROUP, 255, &{
        let mut b = vrrp::encode(
            &advert(254),
            &Version::V3,
            Ipv4Addr::new(192, 0, 2, 103),
            vrrp::MULTICAST_GROUP,
        );
        b[3] += 1;
        b
    });
    // Another virtual router on the same link, at a higher priority: not a rejection, not a
    // reason to move, counted apart.
    send_raw(&p.topo, "agent-3", vrrp::MULTICAST_GROUP, 255, &{
        let other = Advert {
            vrid: 52,
            ..advert(254)
        };
        vrrp::encode(
            &other,
            &Version::V3,
            Ipv4Addr::new(192, 0, 2, 103),
            vrrp::MULTICAST_GROUP,
        )
    });
    let s = p
        .lb2
        .wait_for(T, "four rejections and one other router", |s| {
            let v = s.vrrp.as_ref().unwrap();
            let r = &v.adverts_rejected;
            r.get("ttl") == Some(&1)
                && r.get("version") == Some(&1)
                && r.get("checksum") == Some(&1)
                && r.get("address_count") == Some(&1)
                && v.adverts_other_routers == 1
        })
        .unwrap();
    let rejected: u64 = s.vrrp.as_ref().unwrap().adverts_rejected.values().sum();
    assert_eq!(rejected, 4, "{:?}", s.vrrp);
    assert_eq!(vrrp_state(&s), "BACKUP");
    assert_eq!(
        vrrp_state(&p.lb1.status().unwrap()),
        "MASTER",
        "no priority 254 believed"
    );

    // The same in lb-2's metrics, parsed by a Prometheus text parser.
    let m = metrics(&p.topo, "lb-2");
    assert_eq!(
        m.get("k3sxdp_vrrp_state{family=ipv4,state=backup}"),
        Some(&1.0),
        "{m:?}"
    );
    assert_eq!(
        m.get("k3sxdp_vrrp_state{family=ipv4,state=master}"),
        Some(&0.0)
    );
    assert_eq!(
        m.get("k3sxdp_vrrp_master_info{address=192.0.2.98,family=ipv4}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("k3sxdp_vrrp_adverts_rejected_total{family=ipv4,reason=ttl}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("k3sxdp_vrrp_adverts_rejected_total{family=ipv4,reason=checksum}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("k3sxdp_vrrp_adverts_rejected_total{family=ipv4,reason=address_count}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("k3sxdp_vrrp_adverts_other_routers_total{family=ipv4}"),
        Some(&1.0)
    );
    assert!(m
        .get("k3sxdp_vrrp_adverts_received_total{family=ipv4}")
        .is_some_and(|v| *v >= 1.0));
    assert!(m
        .get("k3sxdp_vrrp_transitions_total{family=ipv4}")
        .is_some_and(|v| *v >= 1.0));
}

/// `/metrics` of the daemon in `node`, as "name{label=value,...}" -> value.
fn metrics(topo: &Topology, node: &str) -> std::collections::BTreeMap<String, f64> {
    let body = k3s_xdp_tests::daemon::get_metrics(topo, node, "127.0.0.1:9742").unwrap();
    let (_, text) = body.split_once("\r\n\r\n").unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let name = if labels.is_empty() {
                s.metric.clone()
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (name, v)
        })
        .collect()
}

fn advert(priority: u8) -> Advert {
    Advert {
        vrid: 51,
        priority,
        interval: Duration::from_secs(1),
        addresses: vec![VIP],
    }
}

fn send_advert(
    topo: &Topology,
    from: &str,
    to: Ipv4Addr,
    priority: u8,
    ttl: u8,
    version: &Version,
) {
    let src = topo.addr(from);
    send_raw(
        topo,
        from,
        to,
        ttl,
        &vrrp::encode(&advert(priority), version, src, to),
    );
}

/// Sends a VRRP payload from `from` with our own IPv4 header (TTL `ttl`).
fn send_raw(topo: &Topology, from: &str, to: Ipv4Addr, ttl: u8, payload: &[u8]) {
    let src = topo.addr(from);
    let mut p = vec![0x45, 0xc0];
    p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, ttl, vrrp::IPPROTO_VRRP, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&to.octets());
    let sum = vrrp::internet_checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    topo.node(from)
        .enter(|| -> std::io::Result<()> {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
            )?;
            s.bind_device(Some(b"eth1"))?;
            s.send_to(&p, &SocketAddrV4::new(to, 0).into())?;
            Ok(())
        })
        .unwrap()
        .unwrap();
}

/// kill -9 of the master: its XDP program stays on the interface until the guard has removed
/// the VIP, and goes after. lb-1's kernel never holds the VIP without the program in front of
/// it: a packet reaching it then would be answered with a reset (before the guard held the
/// daemon's link, that lasted the milliseconds between the daemon's death and the guard's
/// cleanup, and servers' pushes in it lost connections).
#[test]
fn a_killed_masters_program_stays_until_its_vip_is_gone() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts::default());
    steady(&p);
    let lb1 = p.topo.node("lb-1");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // (milliseconds after the kill, VIP on eth1, an XDP program on eth1), as fast as netlink
    // answers, from lb-1's namespace; bounded by time.
    let samples = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            lb1.enter(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let netlink = k3s_xdp::system::Netlink::connect().unwrap();
                    let eth1 = netlink.ifindex("eth1").await.unwrap();
                    // The program first, then the VIP: after the kill each only goes, so a
                    // VIP still there after the program was seen gone was there without it.
                    // (In the other order, the guard's removal of the VIP and its release of
                    // the program between the two reads looked like a VIP without program.)
                    let sample = || async {
                        let prog = !netlink.xdp_programs(eth1).await.unwrap().is_empty();
                        let vip = netlink
                            .addresses(eth1)
                            .await
                            .unwrap()
                            .iter()
                            .any(|a| a.addr == std::net::IpAddr::V4(VIP));
                        (vip, prog)
                    };
                    assert_eq!(sample().await, (true, true), "lb-1 MASTER with its program");
                    ready_tx.send(()).unwrap();
                    let start = Instant::now();
                    let mut samples = Vec::new();
                    while start.elapsed() < Duration::from_secs(5) {
                        let (vip, prog) = sample().await;
                        samples.push((start.elapsed().as_secs_f64() * 1e3, vip, prog));
                        if !vip && !prog && samples.len() > 20 {
                            break;
                        }
                    }
                    samples
                })
            })
            .unwrap()
        });
        ready_rx.recv().unwrap();
        p.lb1.crash();
        sampler.join().unwrap()
    });
    let bare: Vec<_> = samples
        .iter()
        .filter(|(_, vip, prog)| *vip && !prog)
        .collect();
    assert!(
        bare.is_empty(),
        "lb-1 held the VIP without its program at {bare:?} ({} samples)",
        samples.len()
    );
    let last = samples.last().unwrap();
    assert!(
        !last.1 && !last.2,
        "the guard removed the VIP and let the program go: last sample {last:?}"
    );
}

/// dsr: a connection established through lb-1 keeps working after lb-2 takes over (the same
/// Maglev table on both picks the same backend, and dsr keeps no translation).
#[test]
fn dsr_connections_survive_a_failover() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts {
        mode: "dsr",
        ..Default::default()
    });
    steady(&p);
    let mut conns = open_connections(&p, 6);
    p.lb1.crash();
    wait_until(Duration::from_secs(6), "lb-2 takes the VIP", || {
        has_vip(&p.topo, "lb-2")
    });
    for (i, c) in conns.iter_mut().enumerate() {
        echo(c, &format!("after the failover {i}"));
    }
}

/// nat: the SNAT port is a hash of the flow, so lb-2 translates a connection it never saw to
/// the same backend port as lb-1 did: an established connection survives when its client
/// speaks next (lb-2 learns the flow from that packet). New connections always succeed.
#[test]
fn nat_connections_survive_a_failover_when_the_client_speaks_next() {
    if !have_root() {
        return;
    }
    let _s = serial();
    let mut p = pair(Opts::default());
    steady(&p);
    let mut conns = open_connections(&p, 6);
    p.lb1.crash();
    wait_until(Duration::from_secs(6), "lb-2 takes the VIP", || {
        has_vip(&p.topo, "lb-2")
    });
    for (i, c) in conns.iter_mut().enumerate() {
        echo(c, &format!("after the failover {i}"));
    }
    assert!(through_vip(&p, "agent-3").is_ok());
}

fn open_connections(p: &Pair, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| {
            let agent = ["agent-1", "agent-2", "agent-3"][i % 3];
            let mut s = connect(p.topo.node(agent), SocketAddrV4::new(VIP, 6443), T).unwrap();
            assert!(echo_roundtrip(&mut s, b"before").unwrap().1);
            s
        })
        .collect()
}

fn echo(stream: &mut std::net::TcpStream, msg: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(msg.as_bytes()).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream
        .read_exact(&mut back)
        .expect("the connection survives");
    assert_eq!(back, msg.as_bytes());
}
