//! Interop with a real keepalived (Debian's package), configured like the seeds: k3s-xdp and
//! keepalived share virtual_router_id 51 and the VIP, in VRRPv3 and in VRRPv2 with
//! `auth_pass`. Both directions: k3s-xdp master with keepalived backup, and the reverse; each
//! side fails over to the other and takes the VIP back by preemption; and seed 004's unicast
//! setup (unicast_src_ip, unicast_peer). IPv6 (a second `vrrp_instance` in keepalived): the wire
//! between k3s-xdp's IPv6 edge (`system::raw::Ipv6Sockets`, the codec) and keepalived.

use k3s_xdp::{
    controller::status::{Status, VrrpStatus},
    system::raw::{Ipv6Sockets, RouterSockets},
    vrrp::packet::{self, Advert, Expect, Version, MULTICAST_GROUP_V6},
};
use k3s_xdp_tests::{
    backend::{roundtrip, Backend, Kind},
    bpf::have_root,
    daemon::Daemon,
    keepalived::{self, Instance, Keepalived},
    serial,
    topology::{mac_string, seed_backends_toml, Topology, LB1, LB2, SERVERS, VIP, VIP6},
    wait_until,
};
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

/// Whether the tests can run here: root and keepalived installed (`cargo xtask setup`).
fn able() -> bool {
    if !have_root() {
        return false;
    }
    keepalived::binary().expect("keepalived for the interop tests");
    true
}

#[derive(Clone, Copy)]
struct Proto {
    version: u8,
    auth_pass: Option<&'static str>,
    /// Unicast adverts between lb-1 and lb-2 (seed 004) instead of multicast.
    unicast: bool,
    /// Dual stack: the IPv6 VIP too, moved by a second virtual router on each side (k3s-xdp's
    /// IPv6 router, keepalived's `VI_6`).
    ipv6: bool,
}

const V3: Proto = Proto {
    version: 3,
    auth_pass: None,
    unicast: false,
    ipv6: false,
};
const V2_AUTH: Proto = Proto {
    version: 2,
    auth_pass: Some("1111"),
    unicast: false,
    ipv6: false,
};
/// Seed 004: VRRPv2, auth_pass, unicast_src_ip and unicast_peer.
const V2_AUTH_UNICAST: Proto = Proto {
    version: 2,
    auth_pass: Some("1111"),
    unicast: true,
    ipv6: false,
};
/// VRRPv3 with an IPv4 and an IPv6 VIP.
const V3_DUAL_STACK: Proto = Proto { ipv6: true, ..V3 };

impl Proto {
    /// The virtual routers on each side: one per family.
    fn routers(self) -> usize {
        if self.ipv6 {
            2
        } else {
            1
        }
    }
}

/// This node's address and its peer's, for the priority's node (200: lb-1, 100: lb-2).
fn me_and_peer(priority: u8) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    if priority == 200 {
        (LB1, LB2)
    } else {
        (LB2, LB1)
    }
}

fn k3s_xdp_config(priority: u8, master: bool, proto: Proto) -> String {
    let backends = seed_backends_toml(6443);
    let mut auth = proto
        .auth_pass
        .map(|p| format!("auth_pass = \"{p}\"\n"))
        .unwrap_or_default();
    if proto.unicast {
        let (me, peer) = me_and_peer(priority);
        auth.push_str(&format!(
            "unicast_src_ip = \"{me}\"\nunicast_peers = [\"{peer}\"]\n"
        ));
    }
    format!(
        r#"interface = "eth1"

[[service]]
name = "k3s-api"
vip = "{VIP}"
port = 6443
backends = [
{backends}
]
[service.health]
check = "tcp"
inter = "300ms"
rise = 1
fall = 2
timeout = "300ms"

[vrrp]
virtual_router_id = 51
priority = {priority}
state = "{state}"
advert_int = "1s"
virtual_ipaddress = ["{VIP}/24"{vip6}]
version = {version}
{auth}"#,
        backends = backends,
        vip6 = if proto.ipv6 {
            format!(", \"{VIP6}/64\"")
        } else {
            String::new()
        },
        state = if master { "master" } else { "backup" },
        version = proto.version,
    )
}

fn keepalived_instance(priority: u8, master: bool, proto: Proto) -> Instance {
    Instance {
        priority,
        master,
        version: proto.version,
        auth_pass: proto.auth_pass.map(str::to_string),
        advert_int: 1.0,
        vip: VIP,
        vip6: proto.ipv6.then_some(VIP6),
        unicast_src_ip: proto.unicast.then(|| me_and_peer(priority).0),
        unicast_peers: if proto.unicast {
            vec![me_and_peer(priority).1]
        } else {
            Vec::new()
        },
        nopreempt: false,
    }
}

struct Lab {
    topo: Topology,
    _servers: Vec<Backend>,
}

fn lab(proto: Proto) -> Lab {
    let topo = Topology::seed().unwrap();
    if proto.ipv6 {
        for node in ["lb-1", "lb-2", "agent-1"] {
            topo.add_ipv6(node).unwrap();
        }
    }
    let servers = SERVERS
        .iter()
        .map(|s| Backend::start(topo.node(s), s, 6443, Kind::Tcp, &[topo.addr(s)]).unwrap())
        .collect();
    Lab {
        topo,
        _servers: servers,
    }
}

/// Whether `node` holds every VIP of `proto`.
fn has_vips(topo: &Topology, node: &str, proto: Proto) -> bool {
    topo.has_address(node, VIP) && (!proto.ipv6 || topo.has_address(node, VIP6))
}

/// Whether `node` holds none of the VIPs.
fn has_no_vip(topo: &Topology, node: &str) -> bool {
    !topo.has_address(node, VIP) && !topo.has_address(node, VIP6)
}

fn vrrp(s: &Status) -> &VrrpStatus {
    s.vrrp.as_ref().expect("vrrp status")
}

/// The node's virtual routers, as far as they have reported.
fn routers(s: &Status) -> Vec<&VrrpStatus> {
    s.vrrp.iter().flat_map(VrrpStatus::routers).collect()
}

/// Whether every virtual router of `proto` has reported and is in state `want`.
fn all_in(s: &Status, proto: Proto, want: &str) -> bool {
    let r = routers(s);
    r.len() == proto.routers() && r.iter().all(|v| v.state == want)
}

/// Adverts rejected by all the node's routers.
fn rejected(s: &Status) -> u64 {
    routers(s)
        .iter()
        .flat_map(|v| v.adverts_rejected.values())
        .sum()
}

/// Whether every keepalived instance of `proto` entered `want` last.
fn keepalived_in(k: &Keepalived, proto: Proto, want: &str) -> bool {
    ["VI_1", "VI_6"][..proto.routers()]
        .iter()
        .all(|i| k.state_of(i).as_deref() == Some(want))
}

fn through_vip(topo: &Topology, from: &str) -> bool {
    roundtrip(
        topo.node(from),
        SocketAddrV4::new(VIP, 6443),
        b"hello",
        Duration::from_secs(2),
    )
    .is_ok()
}

/// k3s-xdp on lb-1 (200, master), keepalived on lb-2 (100, backup).
fn k3s_xdp_master_keepalived_backup(proto: Proto) {
    let l = lab(proto);
    let n = proto.routers();
    let mut lb1 = Daemon::start(&l.topo, "lb-1", &k3s_xdp_config(200, true, proto)).unwrap();
    let k = Keepalived::start(&l.topo, "lb-2", &keepalived_instance(100, false, proto)).unwrap();
    lb1.wait_for(Duration::from_secs(10), "lb-1 MASTER", |s| {
        all_in(s, proto, "MASTER")
    })
    .unwrap();
    k.wait_log("Entering BACKUP STATE", n, Duration::from_secs(10))
        .unwrap();
    // keepalived accepts our adverts: well past its Master_Down_Interval (3.6 s), it is still
    // backup and the VIPs are on lb-1 only.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        keepalived_in(&k, proto, "BACKUP"),
        "keepalived stays backup:\n{}",
        k.log()
    );
    assert!(has_vips(&l.topo, "lb-1", proto) && has_no_vip(&l.topo, "lb-2"));
    assert!(through_vip(&l.topo, "agent-1"));

    // k3s-xdp dies: keepalived takes over after its Master_Down_Interval.
    lb1.crash();
    let took = wait_until(Duration::from_secs(8), "keepalived takes the VIPs", || {
        has_vips(&l.topo, "lb-2", proto)
    });
    k.wait_log("Entering MASTER STATE", n, Duration::from_secs(2))
        .unwrap();
    eprintln!("keepalived took over {took:?} after k3s-xdp was killed");

    // k3s-xdp comes back and preempts: keepalived hears priority 200 and steps down.
    lb1.restart(&l.topo).unwrap();
    lb1.wait_for(Duration::from_secs(10), "lb-1 MASTER again", |s| {
        all_in(s, proto, "MASTER")
    })
    .unwrap();
    k.wait_log("Entering BACKUP STATE", 2 * n, Duration::from_secs(5))
        .unwrap();
    wait_until(Duration::from_secs(3), "the VIPs on lb-1 only", || {
        has_vips(&l.topo, "lb-1", proto) && has_no_vip(&l.topo, "lb-2")
    });
    // Whatever lb-1 heard from keepalived, it rejected none of it.
    let s = lb1.status().unwrap();
    assert_eq!(rejected(&s), 0, "{:?}", routers(&s));
    assert!(through_vip(&l.topo, "agent-2"));
}

/// keepalived on lb-1 (200, master), k3s-xdp on lb-2 (100, backup).
fn keepalived_master_k3s_xdp_backup(proto: Proto) {
    let l = lab(proto);
    let n = proto.routers();
    let mut k = Keepalived::start(&l.topo, "lb-1", &keepalived_instance(200, true, proto)).unwrap();
    k.wait_log("Entering MASTER STATE", n, Duration::from_secs(10))
        .unwrap();
    // Each of k3s-xdp's routers follows keepalived's instance of its family, whose adverts
    // come from lb-1's IPv4 address and its link-local IPv6 address.
    let masters = [
        "192.0.2.98".to_string(),
        l.topo.link_local("lb-1").unwrap().to_string(),
    ];
    let lb2 = Daemon::start(&l.topo, "lb-2", &k3s_xdp_config(100, false, proto)).unwrap();
    lb2.wait_for(Duration::from_secs(10), "lb-2 follows keepalived", |s| {
        let r = routers(s);
        r.len() == n
            && r.iter().zip(&masters).all(|(v, master)| {
                v.state == "BACKUP" && v.master.as_ref() == Some(master) && v.adverts_received >= 2
            })
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let s = lb2.status().unwrap();
    assert!(
        all_in(&s, proto, "BACKUP"),
        "k3s-xdp accepts keepalived's adverts: {:?}",
        routers(&s)
    );
    assert_eq!(rejected(&s), 0, "{:?}", routers(&s));
    assert!(has_vips(&l.topo, "lb-1", proto) && has_no_vip(&l.topo, "lb-2"));

    // keepalived stops cleanly (priority 0): k3s-xdp takes over after Skew_Time.
    let started = Instant::now();
    k.stop();
    wait_until(Duration::from_secs(3), "k3s-xdp takes the VIPs", || {
        has_vips(&l.topo, "lb-2", proto)
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "takeover after keepalived's priority 0 took {took:?}"
    );
    assert!(has_no_vip(&l.topo, "lb-1"), "keepalived removed its VIPs");
    assert!(
        through_vip(&l.topo, "agent-1"),
        "k3s-xdp forwards for the VIP"
    );

    // keepalived comes back as master (priority 200): k3s-xdp steps down.
    k.restart(&l.topo).unwrap();
    lb2.wait_for(Duration::from_secs(10), "lb-2 BACKUP again", |s| {
        all_in(s, proto, "BACKUP")
    })
    .unwrap();
    wait_until(Duration::from_secs(3), "the VIPs on lb-1 only", || {
        has_vips(&l.topo, "lb-1", proto) && has_no_vip(&l.topo, "lb-2")
    });

    // keepalived crashes (no priority 0): k3s-xdp takes over after Master_Down_Interval.
    let mut left = vec![format!("{VIP}/24")];
    if proto.ipv6 {
        left.push(format!("{VIP6}/64"));
    }
    k.crash_leaving(&l.topo, &left).unwrap();
    let took = wait_until(Duration::from_secs(6), "k3s-xdp takes the VIPs", || {
        has_vips(&l.topo, "lb-2", proto)
    });
    assert!(
        took < Duration::from_millis(4200),
        "takeover after {took:?}"
    );
    assert!(through_vip(&l.topo, "agent-3"));
    assert_eq!(rejected(&lb2.status().unwrap()), 0);
}

#[test]
fn v3_k3s_xdp_master_with_keepalived_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    k3s_xdp_master_keepalived_backup(V3);
}

#[test]
fn v2_auth_pass_k3s_xdp_master_with_keepalived_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    k3s_xdp_master_keepalived_backup(V2_AUTH);
}

#[test]
fn v3_keepalived_master_with_k3s_xdp_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    keepalived_master_k3s_xdp_backup(V3);
}

#[test]
fn v2_auth_pass_keepalived_master_with_k3s_xdp_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    keepalived_master_k3s_xdp_backup(V2_AUTH);
}

#[test]
fn v2_unicast_k3s_xdp_master_with_keepalived_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    k3s_xdp_master_keepalived_backup(V2_AUTH_UNICAST);
}

#[test]
fn v2_unicast_keepalived_master_with_k3s_xdp_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    keepalived_master_k3s_xdp_backup(V2_AUTH_UNICAST);
}

/// Dual stack against keepalived's two instances (`VI_1`, `VI_6`): k3s-xdp's IPv4 and IPv6
/// routers both master, keepalived's both backup; then the reverse.
#[test]
fn v3_dual_stack_k3s_xdp_master_with_keepalived_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    k3s_xdp_master_keepalived_backup(V3_DUAL_STACK);
}

#[test]
fn v3_dual_stack_keepalived_master_with_k3s_xdp_backup() {
    if !able() {
        return;
    }
    let _s = serial();
    keepalived_master_k3s_xdp_backup(V3_DUAL_STACK);
}

/// A keepalived with another auth_pass: its adverts are rejected and counted, never obeyed.
#[test]
fn v2_wrong_auth_pass_is_rejected() {
    if !able() {
        return;
    }
    let _s = serial();
    let l = lab(V2_AUTH);
    let _k = Keepalived::start(&l.topo, "lb-1", &keepalived_instance(200, true, V2_AUTH)).unwrap();
    let other = Proto {
        auth_pass: Some("2222"),
        ..V2_AUTH
    };
    let lb2 = Daemon::start(&l.topo, "lb-2", &k3s_xdp_config(100, false, other)).unwrap();
    let s = lb2
        .wait_for(
            // keepalived's first adverts can take a few seconds on a loaded machine.
            Duration::from_secs(20),
            "keepalived's adverts rejected",
            |s| {
                s.vrrp
                    .as_ref()
                    .map(|v| &v.adverts_rejected)
                    .and_then(|r| r.get("authentication"))
                    .copied()
                    .unwrap_or(0)
                    >= 2
            },
        )
        .unwrap();
    assert_eq!(vrrp(&s).adverts_received, 0);
    assert!(lb2.log().contains("authentication"), "{}", lb2.log());
}

// IPv6: keepalived runs the seeds' instance `VI_1` (IPv4) and a second one, `VI_6`, for the IPv6
// VIP 2001:db8::100 with the same virtual_router_id 51, as an operator configures dual stack
// with keepalived.

/// lb-1, lb-2 and agent-1 (no servers, no XDP), with IPv6 addresses.
fn ipv6_lab() -> Topology {
    let topo = Topology::builder()
        .only(&["lb-1", "lb-2", "agent-1"])
        .pass_programs(&[])
        .build()
        .unwrap();
    for node in ["lb-1", "lb-2", "agent-1"] {
        topo.add_ipv6(node).unwrap();
    }
    topo
}

/// keepalived's IPv6 adverts decode through k3s-xdp's sockets and codec; k3s-xdp's adverts make
/// keepalived's IPv6 instance step down (its IPv4 one, which hears nothing, stays master); an
/// unsolicited neighbour advertisement moves an agent's entry for the VIP to lb-1's MAC.
#[test]
fn the_ipv6_wire_speaks_with_keepalived() {
    if !able() {
        return;
    }
    let _s = serial();
    let topo = ipv6_lab();
    let k = Keepalived::start(
        &topo,
        "lb-2",
        &keepalived_instance(100, true, V3_DUAL_STACK),
    )
    .unwrap();
    k.wait_log("(VI_6) Entering MASTER STATE", 1, Duration::from_secs(10))
        .unwrap();
    k.wait_log("(VI_1) Entering MASTER STATE", 1, Duration::from_secs(5))
        .unwrap();
    wait_until(
        Duration::from_secs(3),
        "keepalived adds the IPv6 VIP",
        || topo.has_address("lb-2", VIP6),
    );
    // The agent learns the VIP at keepalived's MAC.
    topo.node("agent-1")
        .run("ping", ["-6", "-c", "1", "-W", "2", &VIP6.to_string()])
        .unwrap();
    let lb1_mac = mac_string(topo.mac("lb-1"));
    let lb2_mac = mac_string(topo.mac("lb-2"));
    assert_eq!(
        topo.neighbour_mac("agent-1", VIP6).as_deref(),
        Some(lb2_mac.as_str())
    );

    let lb1 = topo.link_local("lb-1").unwrap();
    let lb2 = topo.link_local("lb-2").unwrap();
    let mac = topo.mac("lb-1");
    let k_ref = &k;
    let heard = topo
        .node("lb-1")
        .enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // SAFETY: if_nametoindex reads a NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(c"eth1".as_ptr()) };
                assert_ne!(ifindex, 0);
                let sockets = Ipv6Sockets::open("eth1", ifindex, lb1, mac).unwrap();
                let expect = Expect {
                    vrid: 51,
                    version: &Version::V3,
                    addresses: &[VIP6],
                };
                // keepalived's adverts, as the kernel hands them over.
                let mut buf = vec![0u8; 2048];
                let deadline = Instant::now() + Duration::from_secs(5);
                let heard = loop {
                    assert!(Instant::now() < deadline, "no advert from keepalived");
                    let got =
                        tokio::time::timeout(Duration::from_secs(2), sockets.recv(&mut buf)).await;
                    let Ok(Ok(Ok(received))) = got else { continue };
                    if received.src != lb2 {
                        continue;
                    }
                    assert_eq!(received.dst, MULTICAST_GROUP_V6);
                    assert_eq!(received.hop_limit, 255);
                    break (
                        received.message.to_vec(),
                        packet::decode_message(&received, &expect),
                    );
                };
                // Our adverts at priority 200, every second, until keepalived steps down
                // (bounded: 10 s).
                let ours = Advert {
                    vrid: 51,
                    priority: 200,
                    interval: Duration::from_secs(1),
                    addresses: vec![VIP6],
                };
                let bytes = packet::encode(&ours, &Version::V3, lb1, MULTICAST_GROUP_V6);
                let deadline = Instant::now() + Duration::from_secs(10);
                while k_ref.state_of("VI_6").as_deref() != Some("BACKUP") {
                    assert!(Instant::now() < deadline, "keepalived never stepped down");
                    sockets.send(MULTICAST_GROUP_V6, &bytes).unwrap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Keep it backup while the rest of the test runs, and announce the VIP.
                for _ in 0..5 {
                    sockets.send(MULTICAST_GROUP_V6, &bytes).unwrap();
                    sockets.announce(VIP6).unwrap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                heard
            })
        })
        .unwrap();
    let (message, decoded) = heard;
    let advert = decoded.unwrap_or_else(|e| panic!("keepalived's advert {message:02x?}: {e}"));
    assert_eq!(
        (advert.vrid, advert.priority, advert.interval),
        (51, 100, Duration::from_secs(1)),
        "{message:02x?}"
    );
    assert_eq!(advert.addresses, vec![VIP6]);
    eprintln!("keepalived's IPv6 advert: {message:02x?}");

    // keepalived's IPv6 instance heard priority 200 and stepped down; its IPv4 one heard
    // nothing and is still master.
    assert_eq!(k.state_of("VI_6").as_deref(), Some("BACKUP"), "{}", k.log());
    assert_eq!(k.state_of("VI_1").as_deref(), Some("MASTER"), "{}", k.log());
    wait_until(
        Duration::from_secs(3),
        "keepalived drops the IPv6 VIP",
        || !topo.has_address("lb-2", VIP6),
    );
    assert!(topo.has_address("lb-2", VIP));
    // The agent's entry moved to lb-1's MAC (Override set).
    assert_eq!(
        topo.neighbour_mac("agent-1", VIP6).as_deref(),
        Some(lb1_mac.as_str()),
        "after the unsolicited neighbour advertisements"
    );
}
