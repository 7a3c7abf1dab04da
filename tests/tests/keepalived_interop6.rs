//! IPv6 VRRP against a real keepalived (Debian's 2.2.7): keepalived runs the seeds' instance
//! `VI_1` (IPv4) and a second one, `VI_6`, for the IPv6 VIP 2001:db8::100 with the same
//! virtual_router_id 51, as an operator configures dual stack with keepalived.
//!
//! The wire test drives k3s-xdp's own IPv6 edge (`system::raw::Ipv6Sockets` and the codec) in
//! lb-1 without the daemon: it reads keepalived's adverts (hop limit, destination and checksum
//! as the kernel hands them over), makes keepalived step down with adverts of a higher
//! priority, and moves an agent's neighbour entry for the VIP with an unsolicited neighbour
//! advertisement.

use k3s_xdp::{
    system::raw::{Ipv6Sockets, RouterSockets},
    vrrp::packet::{self, Advert, Expect, Version, MULTICAST_GROUP_V6},
};
use k3s_xdp_tests::{
    bpf::have_root,
    keepalived::{self, Instance, Keepalived},
    topology::{mac_string, Topology, VIP, VIP6},
    wait_until,
};
use std::{
    net::Ipv6Addr,
    sync::Mutex,
    time::{Duration, Instant},
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the tests can run here: root and keepalived installed (`cargo xtask setup`).
fn able() -> bool {
    if !have_root() {
        return false;
    }
    keepalived::binary().expect("keepalived for the interop tests");
    true
}

fn dual_stack_keepalived(priority: u8, master: bool) -> Instance {
    Instance {
        priority,
        master,
        version: 3,
        auth_pass: None,
        advert_int: 1.0,
        vip: VIP,
        vip6: Some(VIP6),
        unicast_src_ip: None,
        unicast_peers: Vec::new(),
        nopreempt: false,
    }
}

/// The topology's nodes for this test, with IPv6 on the load balancers and an agent.
fn lab() -> Topology {
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

/// The MAC address `agent`'s neighbour table has for `addr`, if any.
fn neighbour_mac(topo: &Topology, agent: &str, addr: Ipv6Addr) -> Option<String> {
    let out = topo
        .node(agent)
        .ip(["-6", "neigh", "show", &addr.to_string(), "dev", "eth1"])
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
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
    let topo = lab();
    let k = Keepalived::start(&topo, "lb-2", &dual_stack_keepalived(100, true)).unwrap();
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
        neighbour_mac(&topo, "agent-1", VIP6).as_deref(),
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
        neighbour_mac(&topo, "agent-1", VIP6).as_deref(),
        Some(lb1_mac.as_str()),
        "after the unsolicited neighbour advertisements"
    );
}
