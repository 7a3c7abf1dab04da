//! BPF_PROG_TEST_RUN tests of the forwarding paths: nat and dsr forwarding to the backend the
//! Maglev table selects, the NAT round trip, flow affinity across backend changes, RSTs for
//! flows of down backends and for services without backends, ICMP echo and "fragmentation
//! needed", several services, a VLAN tag, and SNAT pools. Every output is parsed and its checksums are
//! recomputed from scratch (not with the program's incremental arithmetic).

use k3s_xdp::dataplane::{BackendState, FlowEventOf, Role, ServiceSpec};
use k3s_xdp_common::{
    hash::{flow_hash, reduce},
    reason, FlowKey, IPPROTO_TCP,
};
use k3s_xdp_tests::{
    bpf::{
        action_name, have_root, lab_mac, Outcome, XdpHarness, LAB_LB_MAC, LAB_ROUTER_MAC, XDP_DROP,
        XDP_PASS, XDP_TX,
    },
    packet::{
        self, verify_checksums, Frame, Icmp, Ipv4, L4, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
};
use std::net::{Ipv4Addr, SocketAddrV4};

const CONFIG: &str = r#"
interface = "eth1"

[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-2", address = "192.0.2.51:6443" },
  { name = "server-3", address = "192.0.2.52:6443" },
]

[[service]]
name = "ingress"
vip = "192.0.2.100"
port = 30080
backends = [
  { name = "server-1", address = "192.0.2.50:30080" },
  { name = "server-2", address = "192.0.2.51:30080" },
  { name = "server-3", address = "192.0.2.52:30080" },
]

[[service]]
name = "api-dsr"
vip = "192.0.2.200"
port = 6443
mode = "dsr"
backends = [
  { name = "server-4", address = "192.0.2.53:6443" },
  { name = "server-5", address = "192.0.2.54:6443" },
]

[[service]]
name = "dns"
vip = "192.0.2.100"
port = 53
protocol = "udp"
backends = [{ name = "server-6", address = "192.0.2.55:53" }]

[[service]]
name = "syslog"
vip = "192.0.2.100"
port = 514
protocol = "udp"
backends = [
  { name = "server-9", address = "192.0.2.58:514" },
  { name = "server-10", address = "192.0.2.59:514" },
]

[[service]]
name = "kept"
vip = "192.0.2.100"
port = 8443
on_backend_down = "keep"
backends = [
  { name = "server-7", address = "192.0.2.56:8443" },
  { name = "server-8", address = "192.0.2.57:8443" },
]
"#;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const DSR_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

fn harness() -> Option<XdpHarness> {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return None;
    }
    Some(XdpHarness::with_config_in_lab(CONFIG).expect("XDP object loaded, config published"))
}

fn sock(addr: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr, port)
}

fn agent(n: u8, port: u16) -> SocketAddrV4 {
    sock(Ipv4Addr::new(192, 0, 2, 100 + n), port)
}

fn key(client: SocketAddrV4, vip: SocketAddrV4, protocol: u8) -> FlowKey {
    FlowKey {
        src: u32::from(*client.ip()).to_be(),
        dst: u32::from(*vip.ip()).to_be(),
        sport: client.port().to_be(),
        dport: vip.port().to_be(),
        protocol,
        _pad: [0; 3],
    }
}

/// The backend the published Maglev table gives a new flow, computed independently of the
/// program from the publisher's table and the shared flow hash.
fn expected_backend(
    h: &XdpHarness,
    service: &str,
    k: &FlowKey,
    candidates: &[&str],
) -> SocketAddrV4 {
    let slot = h
        .publisher
        .service_slot(service)
        .expect("service published");
    let table = h.publisher.published_table(slot);
    assert!(!table.is_empty(), "service {service} has a table");
    let backend_slot = table[reduce(flow_hash(k), table.len() as u32) as usize];
    candidates
        .iter()
        .map(|a| a.parse::<SocketAddrV4>().unwrap())
        .find(|a| h.publisher.backend_slot(service, (*a).into()) == Some(backend_slot))
        .expect("the table entry is one of the service's backends")
}

const API_BACKENDS: [&str; 3] = ["192.0.2.50:6443", "192.0.2.51:6443", "192.0.2.52:6443"];

fn run(h: &mut XdpHarness, frame: &Frame) -> Outcome {
    h.run_frame(frame).expect("BPF_PROG_TEST_RUN")
}

fn transmitted(h: &mut XdpHarness, frame: &Frame) -> Frame {
    let out = run(h, frame);
    assert_eq!(
        out.action,
        XDP_TX,
        "expected XDP_TX, got {} (reasons {:?})",
        action_name(out.action),
        nonzero(h)
    );
    verify_checksums(&out.data).expect("valid checksums on the output");
    out.frame().unwrap()
}

fn nonzero(h: &XdpHarness) -> Vec<(&'static str, u64)> {
    h.reasons()
        .unwrap()
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn with_payload(mut frame: Frame, flags: u8, payload: &[u8]) -> Frame {
    if let Some(ip) = frame.ip_mut() {
        if let L4::Tcp(t) = &mut ip.l4 {
            t.flags = flags;
            t.ack = 77_000;
            t.seq = 5_000;
            t.options.clear();
            t.payload = payload.to_vec();
        }
    }
    frame
}

#[test]
fn nat_syn_goes_to_the_maglev_backend_with_snat_to_the_vip() {
    let Some(mut h) = harness() else { return };
    let client = agent(1, 40001);
    let vip = sock(VIP, 6443);
    let k = key(client, vip, IPPROTO_TCP);
    let backend = expected_backend(&h, "k3s-api", &k, &API_BACKENDS);

    let out = transmitted(&mut h, &packet::tcp_syn(client, vip));
    let ip = out.ip().unwrap();
    let tcp = out.tcp().unwrap();
    assert_eq!(
        out.eth_dst,
        lab_mac(*backend.ip()),
        "to the backend's MAC, from the FIB"
    );
    assert_eq!(out.eth_src, LAB_LB_MAC);
    assert_eq!(ip.dst, *backend.ip());
    assert_eq!(
        ip.src, VIP,
        "SNAT to the VIP: the backend sees the load balancer"
    );
    assert_eq!(tcp.dport, 6443);
    assert!(tcp.sport >= 1024, "SNAT port in the configured range");
    assert_eq!(tcp.flags, TCP_SYN);
    assert_eq!(
        tcp.options,
        vec![2, 4, 0x05, 0xb4],
        "options and payload untouched"
    );

    let flow = h.dataplane.flow(&k).unwrap().expect("flow recorded");
    assert_eq!(flow.snat_port, tcp.sport.to_be());
    let slot = h.publisher.service_slot("k3s-api").unwrap();
    let t = h.dataplane.service_traffic(slot).unwrap();
    assert_eq!((t.packets, t.new_flows), (1, 1));
    let bslot = h.publisher.backend_slot("k3s-api", backend.into()).unwrap();
    assert_eq!(h.dataplane.backend_traffic(bslot).unwrap().new_flows, 1);
    assert_eq!(h.reason(reason::TX_FORWARD).unwrap(), 1);
}

#[test]
fn nat_round_trip_restores_the_clients_tuple() {
    let Some(mut h) = harness() else { return };
    let client = agent(2, 41000);
    let vip = sock(VIP, 6443);
    let fwd = transmitted(&mut h, &packet::tcp_syn(client, vip));
    let (backend_ip, snat_port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);

    // The backend answers VIP:snat_port from backend:6443.
    let mut reply = packet::tcp(
        sock(backend_ip, 6443),
        sock(VIP, snat_port),
        TCP_SYN | TCP_ACK,
    );
    reply.eth_src = lab_mac(backend_ip);
    reply.eth_dst = LAB_LB_MAC;
    let back = transmitted(&mut h, &reply);
    let ip = back.ip().unwrap();
    let tcp = back.tcp().unwrap();
    assert_eq!(
        (ip.src, tcp.sport),
        (VIP, 6443),
        "from VIP:6443 as the client expects"
    );
    assert_eq!((ip.dst, tcp.dport), (*client.ip(), client.port()));
    assert_eq!(
        back.eth_dst,
        lab_mac(*client.ip()),
        "to the client's MAC, from the FIB"
    );
    assert_eq!(back.eth_src, LAB_LB_MAC);
    assert_eq!(tcp.flags, TCP_SYN | TCP_ACK);
    assert_eq!(h.reason(reason::TX_REPLY).unwrap(), 1);

    // And the next client packet still goes to the same backend and port, not a new flow.
    let ack = with_payload(
        packet::tcp(client, vip, TCP_ACK),
        TCP_ACK | TCP_PSH,
        b"GET /readyz",
    );
    let fwd2 = transmitted(&mut h, &ack);
    assert_eq!(fwd2.ip().unwrap().dst, backend_ip);
    assert_eq!(fwd2.tcp().unwrap().sport, snat_port);
    assert_eq!(fwd2.tcp().unwrap().payload, b"GET /readyz");
    let slot = h.publisher.service_slot("k3s-api").unwrap();
    let t = h.dataplane.service_traffic(slot).unwrap();
    assert_eq!(
        (t.packets, t.new_flows),
        (3, 1),
        "SYN, reply, data: one flow"
    );
}

#[test]
fn a_reply_to_a_client_behind_a_router_goes_to_the_router() {
    let Some(mut h) = harness() else { return };
    let client = sock(Ipv4Addr::new(203, 0, 113, 7), 42000);
    let vip = sock(VIP, 6443);
    let mut syn = packet::tcp_syn(client, vip);
    syn.eth_src = LAB_ROUTER_MAC;
    let fwd = transmitted(&mut h, &syn);
    let (backend_ip, snat_port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
    let mut reply = packet::tcp(
        sock(backend_ip, 6443),
        sock(VIP, snat_port),
        TCP_SYN | TCP_ACK,
    );
    reply.eth_src = lab_mac(backend_ip);
    let back = transmitted(&mut h, &reply);
    assert_eq!(
        back.eth_dst, LAB_ROUTER_MAC,
        "next hop from bpf_fib_lookup: the router"
    );
    assert_eq!(back.ip().unwrap().dst, *client.ip());
}

#[test]
fn dsr_rewrites_only_the_destination_mac() {
    let Some(mut h) = harness() else { return };
    let client = agent(3, 43000);
    let vip = sock(DSR_VIP, 6443);
    let k = key(client, vip, IPPROTO_TCP);
    let backend = expected_backend(&h, "api-dsr", &k, &["192.0.2.53:6443", "192.0.2.54:6443"]);
    let syn = packet::tcp_syn(client, vip);
    let out = transmitted(&mut h, &syn);
    assert_eq!(out.eth_dst, lab_mac(*backend.ip()));
    assert_eq!(out.eth_src, LAB_LB_MAC);
    let before = syn.to_bytes();
    let after = out.to_bytes();
    assert_eq!(
        &after[12..],
        &before[12..],
        "IP and TCP untouched in dsr mode"
    );
}

#[test]
fn flows_keep_their_backend_when_backends_are_added_removed_and_reweighted() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    // Twenty flows, so that every backend holds some.
    let mut pinned = Vec::new();
    for i in 0..20u16 {
        let client = agent(1, 50000 + i);
        let out = transmitted(&mut h, &packet::tcp_syn(client, vip));
        pinned.push((client, out.ip().unwrap().dst));
    }
    let removed = Ipv4Addr::new(192, 0, 2, 52);
    // New config: server-3 removed, server-4 added, server-1 reweighted.
    let mut specs: Vec<ServiceSpec> = Vec::new();
    let config = k3s_xdp::config::parse(CONFIG, "t.toml".as_ref()).unwrap();
    for s in &config.services {
        let mut spec = ServiceSpec::from_config(s);
        if spec.name == "k3s-api" {
            spec.backends.retain(|b| b.address.ip() != removed);
            spec.backends[0].weight = 30;
            spec.backends.push(k3s_xdp::dataplane::BackendSpec {
                name: "server-4".into(),
                address: "192.0.2.53:6443".parse().unwrap(),
                state: BackendState::Up,
                weight: 100,
            });
        }
        specs.push(spec);
    }
    h.apply(&specs).unwrap();
    for (client, backend) in &pinned {
        let data = with_payload(packet::tcp(*client, vip, TCP_ACK), TCP_ACK, b"watch");
        let out = transmitted(&mut h, &data);
        if *backend == removed {
            // Its backend is gone: the flow chooses again among the remaining ones.
            assert_ne!(out.ip().unwrap().dst, removed);
        } else {
            assert_eq!(
                out.ip().unwrap().dst,
                *backend,
                "flow of {client} stays on {backend}"
            );
        }
    }
}

/// Marks `addr` of service `name` with `state` (the others up).
fn set_state(h: &mut XdpHarness, name: &str, addr: Ipv4Addr, state: BackendState) {
    set_states(h, name, &[addr], state);
}

/// Marks `addrs` of service `name` with `state` (the others up).
fn set_states(h: &mut XdpHarness, name: &str, addrs: &[Ipv4Addr], state: BackendState) {
    let config = k3s_xdp::config::parse(CONFIG, "t.toml".as_ref()).unwrap();
    let specs: Vec<ServiceSpec> = config
        .services
        .iter()
        .map(|s| {
            let mut spec = ServiceSpec::from_config(s);
            if spec.name == name {
                for b in &mut spec.backends {
                    if addrs.iter().any(|a| b.address.ip() == *a) {
                        b.state = state;
                    }
                }
            }
            spec
        })
        .collect();
    h.apply(&specs).unwrap();
}

#[test]
fn a_flow_pinned_to_a_down_backend_gets_a_rst_then_reconnects_elsewhere() {
    let Some(mut h) = harness() else { return };
    let client = agent(1, 44000);
    let vip = sock(VIP, 6443);
    let backend = transmitted(&mut h, &packet::tcp_syn(client, vip))
        .ip()
        .unwrap()
        .dst;
    set_state(&mut h, "k3s-api", backend, BackendState::Down);

    let data = with_payload(
        packet::tcp(client, vip, TCP_ACK),
        TCP_ACK | TCP_PSH,
        b"more",
    );
    let out = run(&mut h, &data);
    assert_eq!(out.action, XDP_TX, "the RST goes back to the client");
    verify_checksums(&out.data).unwrap();
    assert_eq!(
        out.data.len(),
        14 + 20 + 20,
        "a bare RST: options and payload cut"
    );
    let rst = out.frame().unwrap();
    let (ip, tcp) = (rst.ip().unwrap(), rst.tcp().unwrap());
    // The frame came from another MAC (packet::CLIENT_MAC, the lab's router): the RST goes
    // to the client's own MAC, from the FIB.
    assert_ne!(packet::CLIENT_MAC, lab_mac(*client.ip()));
    assert_eq!(
        (rst.eth_dst, rst.eth_src),
        (lab_mac(*client.ip()), packet::LB_MAC)
    );
    assert_eq!((ip.src, ip.dst), (VIP, *client.ip()));
    assert_eq!((tcp.sport, tcp.dport), (6443, client.port()));
    assert_eq!(
        tcp.flags, TCP_RST,
        "RST for a segment with ACK: seq = its ack"
    );
    assert_eq!(tcp.seq, 77_000);
    assert_eq!(h.reason(reason::TX_RESET).unwrap(), 1);
    let slot = h.publisher.service_slot("k3s-api").unwrap();
    assert_eq!(h.dataplane.service_traffic(slot).unwrap().resets, 1);
    assert!(
        h.dataplane
            .flow(&key(client, vip, IPPROTO_TCP))
            .unwrap()
            .is_none(),
        "flow forgotten"
    );

    // The client reconnects (same port, new SYN): a healthy backend.
    let again = transmitted(&mut h, &packet::tcp_syn(client, vip));
    assert_ne!(again.ip().unwrap().dst, backend);
}

/// A UDP flow pinned to a backend that went down chooses a healthy one on its next datagram:
/// there is no connection to reset, and its client may keep its socket or come back on the
/// same source port (found by the soak: a request on a reused port went to the killed server).
#[test]
fn a_udp_flow_pinned_to_a_down_backend_chooses_again() {
    let Some(mut h) = harness() else { return };
    let client = agent(1, 47000);
    let vip = sock(VIP, 514);
    let first = transmitted(&mut h, &packet::udp(client, vip, b"one"))
        .ip()
        .unwrap()
        .dst;
    let again = transmitted(&mut h, &packet::udp(client, vip, b"two"));
    assert_eq!(again.ip().unwrap().dst, first, "pinned while it is up");
    set_state(&mut h, "syslog", first, BackendState::Down);
    let out = transmitted(&mut h, &packet::udp(client, vip, b"three"));
    assert_ne!(out.ip().unwrap().dst, first, "a healthy backend");
    assert_eq!(out.udp().unwrap().payload, b"three");
    let next = transmitted(&mut h, &packet::udp(client, vip, b"four"));
    assert_eq!(
        next.ip().unwrap().dst,
        out.ip().unwrap().dst,
        "pinned there now"
    );
    let slot = h.publisher.service_slot("syslog").unwrap();
    assert_eq!(h.dataplane.service_traffic(slot).unwrap().new_flows, 2);
    assert_eq!(h.reason(reason::TX_RESET).unwrap(), 0, "nothing to reset");
}

#[test]
fn with_on_backend_down_keep_the_flow_continues() {
    let Some(mut h) = harness() else { return };
    let client = agent(2, 44500);
    let vip = sock(VIP, 8443);
    let backend = transmitted(&mut h, &packet::tcp_syn(client, vip))
        .ip()
        .unwrap()
        .dst;
    set_state(&mut h, "kept", backend, BackendState::Down);
    let data = with_payload(packet::tcp(client, vip, TCP_ACK), TCP_ACK, b"still there");
    let out = transmitted(&mut h, &data);
    assert_eq!(out.ip().unwrap().dst, backend);
}

#[test]
fn a_draining_backend_keeps_its_flows_but_gets_no_new_ones() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let client = agent(3, 45000);
    let backend = transmitted(&mut h, &packet::tcp_syn(client, vip))
        .ip()
        .unwrap()
        .dst;
    set_state(&mut h, "k3s-api", backend, BackendState::Drain);
    let data = with_payload(packet::tcp(client, vip, TCP_ACK), TCP_ACK, b"x");
    assert_eq!(transmitted(&mut h, &data).ip().unwrap().dst, backend);
    for i in 0..30 {
        let out = transmitted(&mut h, &packet::tcp_syn(agent(1, 46000 + i), vip));
        assert_ne!(
            out.ip().unwrap().dst,
            backend,
            "no new flow to a draining backend"
        );
    }
}

#[test]
fn without_healthy_backends_syns_get_a_rst_and_udp_is_dropped() {
    let Some(mut h) = harness() else { return };
    let all = [50, 51, 52].map(|last| Ipv4Addr::new(192, 0, 2, last));
    set_states(&mut h, "k3s-api", &all, BackendState::Down);
    let client = agent(1, 47000);
    let syn = packet::tcp_syn(client, sock(VIP, 6443));
    let out = run(&mut h, &syn);
    assert_eq!(out.action, XDP_TX);
    verify_checksums(&out.data).unwrap();
    let rst = out.frame().unwrap();
    let tcp = rst.tcp().unwrap();
    assert_eq!(tcp.flags, TCP_RST | TCP_ACK);
    assert_eq!((tcp.seq, tcp.ack), (0, 1000 + 1), "ack = the SYN's seq + 1");

    // A RST toward a service without backends is not answered.
    let stray = packet::tcp(client, sock(VIP, 6443), TCP_RST);
    assert_eq!(run(&mut h, &stray).action, XDP_DROP);

    set_state(
        &mut h,
        "dns",
        Ipv4Addr::new(192, 0, 2, 55),
        BackendState::Down,
    );
    let before = h.reason(reason::DROP_NO_BACKEND).unwrap();
    let query = packet::udp(client, sock(VIP, 53), b"query");
    assert_eq!(run(&mut h, &query).action, XDP_DROP);
    assert_eq!(h.reason(reason::DROP_NO_BACKEND).unwrap(), before + 1);
}

#[test]
fn udp_is_balanced_with_its_checksum_updated() {
    let Some(mut h) = harness() else { return };
    let out = transmitted(
        &mut h,
        &packet::udp(agent(1, 5353), sock(VIP, 53), b"query"),
    );
    let ip = out.ip().unwrap();
    assert_eq!((ip.src, ip.dst), (VIP, Ipv4Addr::new(192, 0, 2, 55)));
    assert_eq!(out.udp().unwrap().dport, 53);
    assert_eq!(out.udp().unwrap().payload, b"query");
}

#[test]
fn two_services_on_one_vip_use_their_own_backends() {
    let Some(mut h) = harness() else { return };
    let api = transmitted(&mut h, &packet::tcp_syn(agent(1, 48000), sock(VIP, 6443)));
    let ingress = transmitted(&mut h, &packet::tcp_syn(agent(1, 48000), sock(VIP, 30080)));
    assert_eq!(api.tcp().unwrap().dport, 6443);
    assert_eq!(ingress.tcp().unwrap().dport, 30080);
}

#[test]
fn a_vlan_tagged_packet_is_forwarded_within_its_vlan() {
    let Some(mut h) = harness() else { return };
    let mut syn = packet::tcp_syn(agent(1, 48500), sock(VIP, 6443));
    syn.vlan = Some(100);
    let out = transmitted(&mut h, &syn);
    assert_eq!(out.vlan, Some(100), "the tag is kept");
    assert_eq!(out.ip().unwrap().src, VIP);
}

/// A new flow's packet is forwarded by the new-flow program, which finds its headers again at
/// the offsets the first half parsed: a tag and IP options move them.
#[test]
fn a_new_flow_with_a_vlan_tag_and_ip_options_is_forwarded_whole() {
    let Some(mut h) = harness() else { return };
    let client = agent(2, 48600);
    let vip = sock(VIP, 6443);
    let k = key(client, vip, IPPROTO_TCP);
    let backend = expected_backend(&h, "k3s-api", &k, &API_BACKENDS);
    // Router alert and two NOPs and an end of list: 8 option bytes, IHL 7.
    let options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00];
    let mut syn = with_payload(packet::tcp_syn(client, vip), TCP_SYN, b"hello");
    syn.vlan = Some(200);
    syn.ip_mut().unwrap().options = options.clone();
    let out = transmitted(&mut h, &syn);
    let (ip, tcp) = (out.ip().unwrap(), out.tcp().unwrap());
    assert_eq!(out.vlan, Some(200));
    assert_eq!((ip.src, ip.dst), (VIP, *backend.ip()));
    assert_eq!(ip.options, options, "IP options untouched");
    assert_eq!(tcp.dport, backend.port());
    let flow = h.dataplane.flow(&k).unwrap().expect("flow recorded");
    assert_eq!(tcp.sport, u16::from_be(flow.snat_port));
    assert_eq!(tcp.payload, b"hello".to_vec());

    // dsr: only the destination MAC changes.
    let dsr_vip = sock(DSR_VIP, 6443);
    let mut syn = packet::tcp_syn(client, dsr_vip);
    syn.vlan = Some(200);
    syn.ip_mut().unwrap().options = options.clone();
    let out = transmitted(&mut h, &syn);
    assert_eq!(out.ip().unwrap().dst, DSR_VIP);
    assert_eq!(out.ip().unwrap().options, options);
    assert_eq!(out.tcp().unwrap().sport, client.port());
    let slot = h.publisher.service_slot("k3s-api").unwrap();
    assert_eq!(h.dataplane.service_traffic(slot).unwrap().new_flows, 1);
    assert_eq!(h.reason(reason::TX_FORWARD).unwrap(), 2);
    assert_eq!(h.reason(reason::DROP_INTERNAL).unwrap(), 0);
}

#[test]
fn icmp_echo_to_a_vip_is_answered() {
    let Some(mut h) = harness() else { return };
    let ping = packet::icmp_echo(*agent(1, 0).ip(), VIP, 7, 3, b"abcdefgh");
    let out = transmitted(&mut h, &ping);
    let ip = out.ip().unwrap();
    let icmp = out.icmp().unwrap();
    assert_eq!((ip.src, ip.dst), (VIP, *agent(1, 0).ip()));
    assert_eq!((icmp.icmp_type, icmp.code), (0, 0));
    assert_eq!(icmp.rest, [0, 7, 0, 3], "id and sequence echoed");
    assert_eq!(icmp.payload, b"abcdefgh");
    assert_eq!(
        (out.eth_dst, out.eth_src),
        (lab_mac(*agent(1, 0).ip()), packet::LB_MAC),
        "to the client's own MAC from the FIB, not to the frame's source (the lab's router)"
    );
    assert_eq!(ip.ttl, 64);
    assert_eq!(h.reason(reason::TX_ICMP_ECHO).unwrap(), 1);
}

/// An ICMP "fragmentation needed" from a router about our reply VIP:6443 → client.
fn frag_needed(client: SocketAddrV4, vip: SocketAddrV4) -> Frame {
    let quoted = Ipv4::new(
        *vip.ip(),
        *client.ip(),
        L4::Tcp(packet::Tcp::new(vip.port(), client.port(), TCP_ACK)),
    );
    let quoted_bytes = Frame::ipv4(quoted).to_bytes()[14..14 + 28].to_vec();
    let mut f = Frame::ipv4(Ipv4::new(
        Ipv4Addr::new(192, 0, 2, 1),
        *vip.ip(),
        L4::Icmp(Icmp {
            icmp_type: 3,
            code: 4,
            rest: [0, 0, 0x05, 0x78], // next-hop MTU 1400
            payload: quoted_bytes,
            checksum: None,
        }),
    ));
    f.eth_src = LAB_ROUTER_MAC;
    f
}

#[test]
fn fragmentation_needed_reaches_the_flows_backend_translated() {
    let Some(mut h) = harness() else { return };
    let client = agent(2, 49000);
    let vip = sock(VIP, 6443);
    let fwd = transmitted(&mut h, &packet::tcp_syn(client, vip));
    let (backend_ip, snat_port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);

    let out = transmitted(&mut h, &frag_needed(client, vip));
    let ip = out.ip().unwrap();
    assert_eq!(ip.dst, backend_ip, "delivered to the backend");
    assert_eq!(out.eth_dst, lab_mac(backend_ip));
    let icmp = out.icmp().unwrap();
    assert_eq!(
        (icmp.icmp_type, icmp.code, icmp.rest),
        (3, 4, [0, 0, 0x05, 0x78])
    );
    // The quoted packet now reads as the backend sent it: backend:6443 → VIP:snat_port.
    let quoted = &icmp.payload;
    assert_eq!(&quoted[12..16], &backend_ip.octets());
    assert_eq!(&quoted[16..20], &VIP.octets());
    assert_eq!(u16::from_be_bytes([quoted[20], quoted[21]]), 6443);
    assert_eq!(u16::from_be_bytes([quoted[22], quoted[23]]), snat_port);
    assert_eq!(
        packet::ones_complement_sum(&quoted[..20], 0),
        0xffff,
        "quoted IPv4 checksum valid"
    );
    assert_eq!(h.reason(reason::TX_ICMP_TO_BACKEND).unwrap(), 1);
}

#[test]
fn fragmentation_needed_in_dsr_mode_goes_to_the_backend_unchanged() {
    let Some(mut h) = harness() else { return };
    let client = agent(2, 49500);
    let vip = sock(DSR_VIP, 6443);
    let backend = transmitted(&mut h, &packet::tcp_syn(client, vip)).eth_dst;
    let icmp = frag_needed(client, vip);
    let out = transmitted(&mut h, &icmp);
    assert_eq!(out.eth_dst, backend);
    assert_eq!(&out.to_bytes()[12..], &icmp.to_bytes()[12..]);
}

#[test]
fn icmp_about_unknown_flows_and_other_icmp_pass() {
    let Some(mut h) = harness() else { return };
    let out = run(&mut h, &frag_needed(agent(3, 1), sock(VIP, 6443)));
    assert_eq!(out.action, XDP_PASS);
    let mut timestamp = packet::icmp_echo(*agent(1, 0).ip(), VIP, 1, 1, b"");
    if let Some(L4::Icmp(i)) = timestamp.ip_mut().map(|ip| &mut ip.l4) {
        i.icmp_type = 13;
    }
    assert_eq!(run(&mut h, &timestamp).action, XDP_PASS);
}

#[test]
fn fragments_and_malformed_packets_to_a_vip_are_dropped_by_reason() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let syn = packet::tcp_syn(agent(1, 40000), vip);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "first fragment",
            {
                let mut f = syn.clone();
                f.ip_mut().unwrap().more_fragments = true;
                f.ip_mut().unwrap().dont_fragment = false;
                f.to_bytes()
            },
            reason::DROP_FRAGMENT,
        ),
        (
            "later fragment",
            {
                let mut f = syn.clone();
                f.ip_mut().unwrap().fragment_offset = 185;
                f.ip_mut().unwrap().dont_fragment = false;
                f.to_bytes()
            },
            reason::DROP_FRAGMENT,
        ),
        (
            "IHL 4",
            {
                let mut f = syn.clone();
                f.ip_mut().unwrap().ihl = Some(4);
                f.to_bytes()
            },
            reason::DROP_BAD_IP_HEADER,
        ),
        (
            "version 6 in an IPv4 frame",
            {
                let mut f = syn.clone();
                f.ip_mut().unwrap().version = Some(6);
                f.to_bytes()
            },
            reason::DROP_BAD_IP_HEADER,
        ),
        (
            "total length beyond the frame",
            {
                let mut f = syn.clone();
                f.ip_mut().unwrap().total_len = Some(1400);
                f.to_bytes()
            },
            reason::DROP_BAD_IP_HEADER,
        ),
        (
            "TCP data offset 4",
            {
                let mut f = syn.clone();
                if let L4::Tcp(t) = &mut f.ip_mut().unwrap().l4 {
                    t.data_offset = Some(4);
                }
                f.to_bytes()
            },
            reason::DROP_BAD_L4_HEADER,
        ),
        (
            "TCP header cut short",
            {
                // The IP length agrees with the short frame: 12 bytes of a 24-byte TCP header.
                let mut f = syn.clone();
                f.ip_mut().unwrap().total_len = Some(20 + 12);
                f.to_bytes()[..14 + 20 + 12].to_vec()
            },
            reason::DROP_TRUNCATED,
        ),
    ];
    for (what, bytes, why) in cases {
        let before = h.reason(why).unwrap();
        let out = h.run(&bytes).unwrap();
        assert_eq!(
            out.action,
            XDP_DROP,
            "{what}: expected XDP_DROP, got {}",
            action_name(out.action)
        );
        assert_eq!(
            h.reason(why).unwrap(),
            before + 1,
            "{what}: counted as {}",
            reason::NAMES[why as usize]
        );
    }
}

/// A nat packet toward a backend whose MAC address the FIB does not know yet (a backend just
/// added, an entry aged out) is translated and handed to the kernel, which resolves the address
/// and forwards it, instead of being dropped; once the neighbour is known, packets go out
/// from XDP again.
#[test]
fn a_nat_packet_to_a_backend_without_a_neighbour_goes_to_the_kernel_translated() {
    if !have_root() {
        return;
    }
    // 192.0.2.60 is on the lab's link but has no neighbour entry.
    let config = CONFIG.replace("192.0.2.55:53", "192.0.2.60:53");
    let mut h = XdpHarness::with_config_in_lab(&config).unwrap();
    let client = agent(1, 5353);
    let out = run(&mut h, &packet::udp(client, sock(VIP, 53), b"q"));
    assert_eq!(
        out.action,
        XDP_PASS,
        "to the kernel (reasons {:?})",
        nonzero(&h)
    );
    verify_checksums(&out.data).expect("translated with valid checksums");
    let frame = out.frame().unwrap();
    let (ip, udp) = (frame.ip().unwrap(), frame.udp().unwrap());
    assert_eq!((ip.dst, udp.dport), (Ipv4Addr::new(192, 0, 2, 60), 53));
    assert_eq!(ip.src, VIP, "SNAT to the VIP, as when XDP sends it");
    let snat_port = udp.sport;
    assert_eq!(udp.payload, b"q");
    assert_eq!(h.reason(reason::PASS_NO_NEIGHBOUR).unwrap(), 1);
    assert_eq!(h.reason(reason::DROP_NO_NEIGHBOUR).unwrap(), 0);
    let slot = h
        .publisher
        .backend_slot("dns", "192.0.2.60:53".parse().unwrap())
        .unwrap();
    assert_eq!(h.dataplane.backend_traffic(slot).unwrap().new_flows, 1);

    // ARP answered: the flow's next packet leaves from XDP, to the backend's MAC.
    let mac = lab_mac(Ipv4Addr::new(192, 0, 2, 60));
    h.lab
        .as_ref()
        .unwrap()
        .add_neighbour(Ipv4Addr::new(192, 0, 2, 60), mac)
        .unwrap();
    let out = transmitted(&mut h, &packet::udp(client, sock(VIP, 53), b"q2"));
    assert_eq!(out.eth_dst, mac);
    assert_eq!(out.udp().unwrap().sport, snat_port, "the same translation");
}

/// A dsr frame keeps the VIP as its destination, which the kernel would deliver to itself: it
/// is dropped and counted when the backend's neighbour is unknown.
#[test]
fn a_dsr_packet_to_a_backend_without_a_neighbour_is_dropped_and_counted() {
    if !have_root() {
        return;
    }
    let config = CONFIG
        .replace("192.0.2.53:6443", "192.0.2.60:6443")
        .replace("192.0.2.54:6443", "192.0.2.61:6443");
    let mut h = XdpHarness::with_config_in_lab(&config).unwrap();
    let out = run(
        &mut h,
        &packet::tcp_syn(agent(1, 45000), sock(DSR_VIP, 6443)),
    );
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(h.reason(reason::DROP_NO_NEIGHBOUR).unwrap(), 1);
    assert_eq!(h.reason(reason::PASS_NO_NEIGHBOUR).unwrap(), 0);
}

/// After a failover, the old master may forward a client's frames to the new one: the new
/// master sees the old master's MAC as the frame's source, and has no neighbour entry for the
/// client. Replies, RSTs and echo replies never go to that MAC: they go to the kernel, which
/// resolves the client; once the FIB knows the client, they go to the client's own MAC.
#[test]
fn replies_to_a_client_without_a_neighbour_go_to_the_kernel_not_to_the_forwarding_router() {
    let Some(mut h) = harness() else { return };
    // 192.0.2.110: on the lab's link, no neighbour entry; frames come from the "old master".
    let old_master = lab_mac(Ipv4Addr::new(192, 0, 2, 98));
    let client = sock(Ipv4Addr::new(192, 0, 2, 110), 46000);
    let vip = sock(VIP, 6443);
    let mut syn = packet::tcp_syn(client, vip);
    syn.eth_src = old_master;
    let fwd = transmitted(&mut h, &syn);
    let (backend_ip, snat_port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
    let mut reply = packet::tcp(
        sock(backend_ip, 6443),
        sock(VIP, snat_port),
        TCP_SYN | TCP_ACK,
    );
    reply.eth_src = lab_mac(backend_ip);
    let out = run(&mut h, &reply);
    assert_eq!(
        out.action,
        XDP_PASS,
        "to the kernel, which resolves the client (reasons {:?})",
        nonzero(&h)
    );
    verify_checksums(&out.data).unwrap();
    let back = out.frame().unwrap();
    assert_eq!(
        (back.ip().unwrap().src, back.tcp().unwrap().sport),
        (VIP, 6443)
    );
    assert_eq!(
        (back.ip().unwrap().dst, back.tcp().unwrap().dport),
        (*client.ip(), client.port()),
        "translated back to the client"
    );
    assert_ne!(back.eth_dst, old_master);
    assert_eq!(h.reason(reason::PASS_NO_NEIGHBOUR).unwrap(), 1);

    // An echo request and a refused segment from the same client: the same.
    let mut ping = packet::icmp_echo(*client.ip(), VIP, 1, 1, b"x");
    ping.eth_src = old_master;
    assert_eq!(run(&mut h, &ping).action, XDP_PASS);
    let no_backend = CONFIG.replace("port = 8443", "port = 7777");
    let mut h2 = XdpHarness::with_config_in_lab(&no_backend).unwrap();
    let mut specs: Vec<ServiceSpec> = k3s_xdp::config::parse(&no_backend, "t.toml".as_ref())
        .unwrap()
        .services
        .iter()
        .map(ServiceSpec::from_config)
        .collect();
    for b in &mut specs
        .iter_mut()
        .find(|s| s.name == "kept")
        .unwrap()
        .backends
    {
        b.state = BackendState::Down;
    }
    h2.apply(&specs).unwrap();
    let mut syn = packet::tcp_syn(sock(*client.ip(), 46002), sock(VIP, 7777));
    syn.eth_src = old_master;
    let out = run(&mut h2, &syn);
    assert_eq!(out.action, XDP_PASS, "the RST to the kernel");
    let rst = out.frame().unwrap();
    assert_eq!(rst.tcp().unwrap().flags, TCP_RST | TCP_ACK);
    assert_eq!(rst.ip().unwrap().dst, *client.ip());
    assert_eq!(h.reason(reason::PASS_NO_NEIGHBOUR).unwrap(), 2);
    assert_eq!(h2.reason(reason::PASS_NO_NEIGHBOUR).unwrap(), 1);

    // The client answered ARP: the next reply goes to its own MAC from XDP.
    let mac = [0x02, 0, 0, 0, 0, 110];
    h.lab
        .as_ref()
        .unwrap()
        .add_neighbour(*client.ip(), mac)
        .unwrap();
    let mut ack = packet::tcp(sock(backend_ip, 6443), sock(VIP, snat_port), TCP_ACK);
    ack.eth_src = lab_mac(backend_ip);
    let back = transmitted(&mut h, &ack);
    assert_eq!(back.eth_dst, mac, "the client's own MAC, from the FIB");
    let ping = transmitted(&mut h, &packet::icmp_echo(*client.ip(), VIP, 1, 2, b"x"));
    assert_eq!(ping.eth_dst, mac);
}

/// lb-1 and lb-2 load the same config (here with backends listed in another order, so their
/// slots differ): the same flow goes to the same backend with the same SNAT port.
#[test]
fn the_same_flow_gets_the_same_backend_and_snat_port_on_lb1_and_lb2() {
    let Some(mut lb1) = harness() else { return };
    let reordered = CONFIG.replacen(
        "  { name = \"server-1\", address = \"192.0.2.50:6443\" },\n  { name = \"server-2\", address = \"192.0.2.51:6443\" },",
        "  { name = \"server-2\", address = \"192.0.2.51:6443\" },\n  { name = \"server-1\", address = \"192.0.2.50:6443\" },",
        1,
    );
    assert_ne!(reordered, CONFIG);
    let mut lb2 = XdpHarness::with_config_in_lab(&reordered).unwrap();
    for i in 0..50 {
        let syn = packet::tcp_syn(agent(1 + (i % 3) as u8, 30000 + i), sock(VIP, 6443));
        let a = transmitted(&mut lb1, &syn);
        let b = transmitted(&mut lb2, &syn);
        assert_eq!(a.ip().unwrap().dst, b.ip().unwrap().dst);
        assert_eq!(a.tcp().unwrap().sport, b.tcp().unwrap().sport);
    }
}

/// Behind ECMP (`[bgp]`) a router may move a flow to another node mid-connection: that node
/// has never seen the flow's SYN, yet sends its packets to the backend the first node chose,
/// since both hold the same Maglev table (dsr: nothing else is needed for the connection to
/// go on).
#[test]
fn a_node_that_never_saw_the_syn_sends_the_flow_to_the_same_backend() {
    let Some(mut lb1) = harness() else { return };
    let mut lb2 = XdpHarness::with_config_in_lab(CONFIG).unwrap();
    let vip = sock(DSR_VIP, 6443);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..60u16 {
        let client = agent(1 + (i % 3) as u8, 31000 + i);
        let first = transmitted(&mut lb1, &packet::tcp_syn(client, vip));
        let moved = transmitted(
            &mut lb2,
            &with_payload(packet::tcp(client, vip, TCP_ACK), TCP_ACK, b"GET /readyz"),
        );
        assert_eq!(first.eth_dst, moved.eth_dst, "flow {client}");
        assert_eq!(
            &moved.to_bytes()[12..],
            &with_payload(packet::tcp(client, vip, TCP_ACK), TCP_ACK, b"GET /readyz").to_bytes()
                [12..]
        );
        seen.insert(first.eth_dst);
    }
    assert_eq!(seen.len(), 2, "both dsr backends were chosen");
}

/// A new flow whose preferred SNAT port is held by another client's translation takes the next.
#[test]
fn snat_port_collisions_step_to_the_next_port() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let first = transmitted(&mut h, &packet::tcp_syn(agent(1, 40100), vip));
    let (backend_ip, port) = (first.ip().unwrap().dst, first.tcp().unwrap().sport);
    // Forget the forward flow (as LRU eviction would), and let another client claim the same
    // translation first by rewriting the reverse entry's owner.
    let rev_key = FlowKey {
        src: u32::from(backend_ip).to_be(),
        dst: u32::from(VIP).to_be(),
        sport: 6443u16.to_be(),
        dport: port.to_be(),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let mut other = h
        .dataplane
        .nat_reverse(&rev_key)
        .unwrap()
        .expect("translation recorded");
    other.client_port = 1u16.to_be();
    k3s_xdp_tests::bpf::insert_nat_reverse(&mut h, &rev_key, &other, 0).unwrap();
    k3s_xdp_tests::bpf::remove_flow(&mut h, &key(agent(1, 40100), vip, IPPROTO_TCP)).unwrap();
    let again = transmitted(&mut h, &packet::tcp_syn(agent(1, 40100), vip));
    assert_eq!(
        again.ip().unwrap().dst,
        backend_ip,
        "same flow, same table: same backend"
    );
    assert_ne!(again.tcp().unwrap().sport, port, "the held port is skipped");
    assert!(h
        .dataplane
        .nat_reverse(&FlowKey {
            dport: again.tcp().unwrap().sport.to_be(),
            ..rev_key
        })
        .unwrap()
        .is_some());
}

/// The SNAT port the program tries first for `client` → `vip` (the shared hash, as in
/// `choose::snat_port`, with the default port range).
fn first_snat_port(client: SocketAddrV4, vip: SocketAddrV4) -> u16 {
    let k = key(client, vip, IPPROTO_TCP);
    let span = 65535 - 1024 + 1;
    1024 + reduce(
        k3s_xdp_common::hash::probe(k3s_xdp_common::hash::snat_hash(&k), 0),
        span,
    ) as u16
}

/// Another client whose new flow would go to the same backend and try the same SNAT port.
fn colliding_client(h: &XdpHarness, with: SocketAddrV4, vip: SocketAddrV4) -> SocketAddrV4 {
    colliding_clients(h, with, vip, 1)[0]
}

/// `n` other clients whose new flows would go to the same backend and try the same SNAT port.
fn colliding_clients(
    h: &XdpHarness,
    with: SocketAddrV4,
    vip: SocketAddrV4,
    n: usize,
) -> Vec<SocketAddrV4> {
    let backend = expected_backend(h, "k3s-api", &key(with, vip, IPPROTO_TCP), &API_BACKENDS);
    let port = first_snat_port(with, vip);
    let mut found = Vec::new();
    for last in 101..110u8 {
        for p in 1024..=65535u16 {
            let c = sock(Ipv4Addr::new(192, 0, 2, last), p);
            if c != with
                && first_snat_port(c, vip) == port
                && expected_backend(h, "k3s-api", &key(c, vip, IPPROTO_TCP), &API_BACKENDS)
                    == backend
            {
                found.push(c);
                if found.len() == n {
                    return found;
                }
            }
        }
    }
    panic!("only {} colliding clients found", found.len());
}

/// Opens a connection from `client`: its backend and SNAT port.
fn open(h: &mut XdpHarness, client: SocketAddrV4, vip: SocketAddrV4) -> (Ipv4Addr, u16) {
    let fwd = transmitted(h, &packet::tcp_syn(client, vip));
    (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport)
}

/// A packet from `backend` on the translation with SNAT port `port`.
fn from_backend(backend: Ipv4Addr, port: u16, flags: u8) -> Frame {
    let mut frame = packet::tcp(sock(backend, 6443), sock(VIP, port), flags);
    frame.eth_src = lab_mac(backend);
    frame
}

/// The connection of `client` closes, the backend first (as servers answering
/// `Connection: close` do): the backend's FIN, the client's FIN, the backend's last ACK.
fn close_backend_first(
    h: &mut XdpHarness,
    client: SocketAddrV4,
    vip: SocketAddrV4,
    (backend, port): (Ipv4Addr, u16),
) {
    transmitted(h, &from_backend(backend, port, TCP_ACK | TCP_FIN));
    transmitted(
        h,
        &with_payload(
            packet::tcp(client, vip, TCP_ACK | TCP_FIN),
            TCP_ACK | TCP_FIN,
            b"",
        ),
    );
    transmitted(h, &from_backend(backend, port, TCP_ACK));
}

/// A backend that closes first holds the 4-tuple (VIP:snat_port to backend:port) in TIME_WAIT
/// and would refuse another client's SYN on it (PAWS): the port is not given to another client
/// tuple until `snat_timewait` has passed on the controller's clock, while the same client
/// tuple may reconnect on it; a RST, or a client that closed first, frees it at once.
#[test]
fn a_port_whose_backend_closed_first_waits_for_its_time_wait() {
    let Some(mut h) = harness() else { return };
    h.update_globals(|g| {
        g.snat_timewait = 65;
        g.clock = 100;
    })
    .unwrap();
    let vip = sock(VIP, 6443);
    let a = agent(1, 40500);
    let others = colliding_clients(&h, a, vip, 4);
    let (b, c, d, e) = (others[0], others[1], others[2], others[3]);
    let (backend, port) = open(&mut h, a, vip);
    assert_eq!(port, first_snat_port(a, vip));
    close_backend_first(&mut h, a, vip, (backend, port));

    // 64 s later another client tuple still gets another port.
    h.set_clock(164).unwrap();
    let (_, port_b) = open(&mut h, b, vip);
    assert_ne!(
        port_b, port,
        "the backend may still hold TIME_WAIT on {port}"
    );
    // The same client tuple reconnecting (same port, new SYN) takes it back.
    let (_, again) = open(&mut h, a, vip);
    assert_eq!(again, port, "the same tuple may reuse its translation");
    close_backend_first(&mut h, a, vip, (backend, port));
    // The wait counts from the backend's last packet; once over, the port is free.
    h.set_clock(164 + 65).unwrap();
    let (_, port_c) = open(&mut h, c, vip);
    assert_eq!(port_c, port, "TIME_WAIT has passed on the backend");

    // A RST after the backend's FIN ends TIME_WAIT at once.
    transmitted(&mut h, &from_backend(backend, port, TCP_ACK | TCP_FIN));
    transmitted(
        &mut h,
        &with_payload(
            packet::tcp(c, vip, TCP_ACK | TCP_FIN),
            TCP_ACK | TCP_FIN,
            b"",
        ),
    );
    transmitted(&mut h, &from_backend(backend, port, TCP_RST));
    let (_, port_d) = open(&mut h, d, vip);
    assert_eq!(port_d, port, "a RST ended TIME_WAIT");

    // A client that closes first keeps the TIME_WAIT itself: the port is free at once.
    transmitted(
        &mut h,
        &with_payload(
            packet::tcp(d, vip, TCP_ACK | TCP_FIN),
            TCP_ACK | TCP_FIN,
            b"",
        ),
    );
    transmitted(&mut h, &from_backend(backend, port, TCP_ACK | TCP_FIN));
    let (_, port_e) = open(&mut h, e, vip);
    assert_eq!(port_e, port, "the client closed first");
    let events = h.dataplane.table_events().unwrap();
    assert!(
        events.iter().all(|(_, n)| *n == 0),
        "no translation taken by force: {events:?}"
    );
}

/// With a port range smaller than the connections that backends close first, every port a new
/// flow tries may be waiting: the flow is not refused; it takes the port that has waited
/// longest (the least likely to be refused by the backend), and that is counted.
#[test]
fn when_every_port_waits_the_longest_waiting_one_is_reused_and_counted() {
    let Some(mut h) = harness() else { return };
    h.update_globals(|g| {
        g.snat_timewait = 65;
        g.clock = 100;
        (g.snat_port_min, g.snat_port_max) = (20000, 20001);
    })
    .unwrap();
    let vip = sock(VIP, 6443);
    // Two clients of one backend take the two ports; both close backend first, the second
    // one a second later.
    let a = agent(1, 40600);
    let backend_a = expected_backend(&h, "k3s-api", &key(a, vip, IPPROTO_TCP), &API_BACKENDS);
    let same_backend: Vec<SocketAddrV4> = (40601..41600)
        .map(|p| agent(2, p))
        .filter(|c| {
            expected_backend(&h, "k3s-api", &key(*c, vip, IPPROTO_TCP), &API_BACKENDS) == backend_a
        })
        .take(2)
        .collect();
    let (b, c) = (same_backend[0], same_backend[1]);
    let first = open(&mut h, a, vip);
    let second = open(&mut h, b, vip);
    assert_ne!(first.1, second.1, "two ports, two clients");
    close_backend_first(&mut h, a, vip, first);
    h.set_clock(101).unwrap();
    close_backend_first(&mut h, b, vip, second);
    h.set_clock(120).unwrap();

    let out = run(&mut h, &packet::tcp_syn(c, vip));
    assert_eq!(
        out.action,
        XDP_TX,
        "forwarded, not refused ({:?})",
        nonzero(&h)
    );
    let got = out.frame().unwrap().tcp().unwrap().sport;
    assert_eq!(got, first.1, "the port that has waited longest");
    let events: std::collections::BTreeMap<_, _> =
        h.dataplane.table_events().unwrap().into_iter().collect();
    assert_eq!(events["translation_reused_waiting"], 1);
    assert_eq!(events["translation_taken_over"], 0);
    assert_eq!(h.reason(reason::DROP_SNAT_EXHAUSTED).unwrap(), 0);
}

#[test]
fn a_closed_connections_snat_port_is_taken_over_and_its_flow_forgotten() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let a = agent(1, 40200);
    let b = colliding_client(&h, a, vip);
    let fwd = transmitted(&mut h, &packet::tcp_syn(a, vip));
    let (backend, port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
    assert_eq!(port, first_snat_port(a, vip));

    // While a's connection lives, b is pushed to another port.
    let live = transmitted(&mut h, &packet::tcp_syn(b, vip));
    assert_eq!(live.ip().unwrap().dst, backend);
    assert_ne!(
        live.tcp().unwrap().sport,
        port,
        "a live translation is never taken"
    );
    k3s_xdp_tests::bpf::remove_flow(&mut h, &key(b, vip, IPPROTO_TCP)).unwrap();

    // a closes: FIN from the client, FIN from the backend.
    transmitted(
        &mut h,
        &with_payload(
            packet::tcp(a, vip, TCP_ACK | TCP_FIN),
            TCP_ACK | TCP_FIN,
            b"",
        ),
    );
    let mut fin = packet::tcp(sock(backend, 6443), sock(VIP, port), TCP_ACK | TCP_FIN);
    fin.eth_src = lab_mac(backend);
    transmitted(&mut h, &fin);
    // Now the port can go to b, and a's flow entry goes with it.
    let taken = transmitted(&mut h, &packet::tcp_syn(b, vip));
    assert_eq!(
        taken.tcp().unwrap().sport,
        port,
        "the closed translation's port is reused"
    );
    assert!(
        h.dataplane
            .flow(&key(a, vip, IPPROTO_TCP))
            .unwrap()
            .is_none(),
        "a's flow forgotten"
    );
    // And b's replies reach b.
    let mut reply = packet::tcp(sock(backend, 6443), sock(VIP, port), TCP_SYN | TCP_ACK);
    reply.eth_src = lab_mac(backend);
    let back = transmitted(&mut h, &reply);
    assert_eq!(
        (back.ip().unwrap().dst, back.tcp().unwrap().dport),
        (*b.ip(), b.port())
    );
}

#[test]
fn a_rst_closes_the_translation_at_once() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let a = agent(2, 40300);
    let b = colliding_client(&h, a, vip);
    let port = transmitted(&mut h, &packet::tcp_syn(a, vip))
        .tcp()
        .unwrap()
        .sport;
    transmitted(&mut h, &packet::tcp(a, vip, TCP_RST | TCP_ACK));
    assert_eq!(
        transmitted(&mut h, &packet::tcp_syn(b, vip))
            .tcp()
            .unwrap()
            .sport,
        port
    );
}

/// A client that reconnects from the same port after its translation was taken over does not
/// borrow the new owner's translation: its SYN chooses again.
#[test]
fn a_reconnect_on_a_taken_translation_chooses_again() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let a = agent(3, 40400);
    let b = colliding_client(&h, a, vip);
    let port = transmitted(&mut h, &packet::tcp_syn(a, vip))
        .tcp()
        .unwrap()
        .sport;
    transmitted(&mut h, &packet::tcp(a, vip, TCP_RST | TCP_ACK));
    assert_eq!(
        transmitted(&mut h, &packet::tcp_syn(b, vip))
            .tcp()
            .unwrap()
            .sport,
        port
    );
    // a's flow entry was removed with the take-over; stage the worst case: it is still there.
    let backend = expected_backend(&h, "k3s-api", &key(a, vip, IPPROTO_TCP), &API_BACKENDS);
    let flow = k3s_xdp_common::Flow {
        backend: h.publisher.backend_slot("k3s-api", backend.into()).unwrap(),
        snat_port: port.to_be(),
        snat_source: 0,
    };
    k3s_xdp_tests::bpf::insert_flow(&mut h, &key(a, vip, IPPROTO_TCP), &flow).unwrap();
    let again = transmitted(&mut h, &packet::tcp_syn(a, vip));
    assert_ne!(
        again.tcp().unwrap().sport,
        port,
        "b's translation is not shared"
    );
}

/// A VIP packet sent to another node's MAC (unknown unicast flooded by the switch to the
/// backup, or seen in promiscuous mode) is not forwarded: it passes to the kernel, which drops
/// it, and is counted. The same packet sent to this interface's MAC is forwarded.
#[test]
fn vip_packets_for_another_mac_are_not_forwarded() {
    let Some(mut h) = harness() else { return };
    k3s_xdp::dataplane::write_globals(
        &mut h.dataplane,
        &k3s_xdp_common::Globals {
            fib_generation: 1,
            snat_port_min: 1024,
            snat_port_max: 65535,
            mac: LAB_LB_MAC,
            _pad: [0; 2],
            ..Default::default()
        },
    )
    .unwrap();
    let mut other = packet::tcp_syn(agent(1, 40100), sock(VIP, 6443));
    other.eth_dst = [0x02, 0, 0xc0, 0, 0x02, 0x63];
    let out = run(&mut h, &other);
    assert_eq!(out.action, XDP_PASS, "{:?}", nonzero(&h));
    assert_eq!(out.data, other.to_bytes(), "untouched");
    assert_eq!(h.reason(reason::PASS_OTHER_HOST).unwrap(), 1);
    assert_eq!(h.reason(reason::TX_FORWARD).unwrap(), 0);

    let mine = packet::tcp_syn(agent(1, 40100), sock(VIP, 6443));
    assert_eq!(mine.eth_dst, LAB_LB_MAC);
    let fwd = transmitted(&mut h, &mine);
    assert_eq!(fwd.eth_src, LAB_LB_MAC);
    assert_eq!(h.reason(reason::TX_FORWARD).unwrap(), 1);
    // Non-VIP traffic to another MAC is none of our business either way: passed as not_vip.
    let mut stranger = packet::tcp_syn(agent(1, 40101), sock(Ipv4Addr::new(192, 0, 2, 7), 22));
    stranger.eth_dst = [0x02, 0, 0xc0, 0, 0x02, 0x63];
    assert_eq!(run(&mut h, &stranger).action, XDP_PASS);
    assert_eq!(h.reason(reason::PASS_NOT_VIP).unwrap(), 1);
}

/// The two publications the next test alternates between: other backends behind the same
/// service (so other Maglev tables, of another size), a second VIP that comes and goes, and a
/// second service on the first VIP. This one: the seed's three servers, and the second VIP.
fn before_config() -> String {
    format!(
        r#"
interface = "eth1"

[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [
{}
]

[[service]]
name = "other"
vip = "192.0.2.201"
port = 6443
backends = [{{ name = "server-9", address = "192.0.2.59:6443" }}]
"#,
        k3s_xdp_tests::topology::seed_backends_toml(6443)
    )
}

const AFTER: &str = r#"
interface = "eth1"

[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
table_size = 251
backends = [
  { name = "server-4", address = "192.0.2.53:6443" },
  { name = "server-5", address = "192.0.2.54:6443" },
]

[[service]]
name = "ingress"
vip = "192.0.2.100"
port = 30080
backends = [{ name = "server-6", address = "192.0.2.55:30080" }]
"#;

fn specs(config: &str) -> Vec<ServiceSpec> {
    k3s_xdp::config::parse(config, "t.toml".as_ref())
        .unwrap()
        .services
        .iter()
        .map(ServiceSpec::from_config)
        .collect()
}

/// A complete Maglev table of `spec`, by backend address.
fn maglev_addresses(spec: &ServiceSpec) -> Vec<Ipv4Addr> {
    k3s_xdp::dataplane::table(spec, |b| {
        1 + spec.backends.iter().position(|x| x == b).unwrap() as u32
    })
    .into_iter()
    .map(|slot| match spec.backends[slot as usize - 1].address.ip() {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("an IPv4 service with IPv6 backend {a}"),
    })
    .collect()
}

/// The backend `table` (from [`maglev_addresses`]) gives the new flow `k`.
fn maglev_choice(table: &[Ipv4Addr], k: &FlowKey) -> Ipv4Addr {
    table[reduce(flow_hash(k), table.len() as u32) as usize]
}

/// Publishing is atomic for packets in flight. While the controller alternates between two
/// publications (see `before_config` and `AFTER`), a thread sends SYNs of new flows through the
/// program: each one to the VIP's 6443 (in both publications) is forwarded to the backend
/// that one whole publication's table selects, never dropped, reset or sent by a table of one
/// publication indexed with the size of the other; the VIP that comes and goes and the port
/// that comes and goes are forwarded or passed, never anything else.
#[test]
fn packets_in_flight_see_the_old_or_the_new_publication_never_a_mix() {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return;
    }
    let before_toml = before_config();
    let mut h = XdpHarness::with_config_in_lab(&before_toml).unwrap();
    let (before, after) = (specs(&before_toml), specs(AFTER));
    let (old_table, new_table) = (maglev_addresses(&before[0]), maglev_addresses(&after[0]));
    let vip = sock(VIP, 6443);
    let probe = key(agent(1, 1), vip, IPPROTO_TCP);
    assert_eq!(
        *expected_backend(&h, "k3s-api", &probe, &API_BACKENDS).ip(),
        maglev_choice(&old_table, &probe),
        "the independent table agrees with the published one"
    );
    const ROUNDS: u32 = 20;
    const MAX_PACKETS: u32 = 3_000_000;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (runner, dp, publisher) = h.split().unwrap();
    let (tally, rounds) = std::thread::scope(|s| {
        let packets = s.spawn(|| {
            let _inside = runner.enter().unwrap();
            let started = std::time::Instant::now();
            let (mut old, mut new, mut others) = (0u32, 0u32, 0u32);
            let mut wrong: Vec<String> = Vec::new();
            for i in 0..MAX_PACKETS {
                if stop.load(std::sync::atomic::Ordering::Relaxed)
                    || started.elapsed() > std::time::Duration::from_secs(60)
                {
                    break;
                }
                // A new tuple each time (clients behind the lab's router need no neighbour).
                let client = sock(
                    Ipv4Addr::new(203, 0, 113, 1 + (i / 60_000) as u8),
                    1024 + (i % 60_000) as u16,
                );
                let to = match i % 8 {
                    3 => sock(Ipv4Addr::new(192, 0, 2, 201), 6443),
                    5 => sock(VIP, 30080),
                    _ => vip,
                };
                let out = runner.run(&packet::tcp_syn(client, to).to_bytes()).unwrap();
                let dst = out.frame().ok().and_then(|f| f.ip().map(|ip| ip.dst));
                if to != vip {
                    // Forwarded to its one backend, or passed while it is not published.
                    let one = match to.port() {
                        30080 => Ipv4Addr::new(192, 0, 2, 55),
                        _ => Ipv4Addr::new(192, 0, 2, 59),
                    };
                    let fine = (out.action == XDP_TX && dst == Some(one))
                        || (out.action == XDP_PASS && dst == Some(*to.ip()));
                    if !fine {
                        wrong.push(format!("{to}: {} to {dst:?}", action_name(out.action)));
                    }
                    others += 1;
                    continue;
                }
                let k = key(client, vip, IPPROTO_TCP);
                match (out.action, dst) {
                    (XDP_TX, Some(d)) if d == maglev_choice(&old_table, &k) => old += 1,
                    (XDP_TX, Some(d)) if d == maglev_choice(&new_table, &k) => new += 1,
                    (action, d) => wrong.push(format!(
                        "{client} → {vip}: {} to {d:?}",
                        action_name(action)
                    )),
                }
            }
            (old, new, others, wrong)
        });
        let mut rounds = 0;
        while !packets.is_finished() && rounds < ROUNDS {
            publisher.apply(dp, &after).unwrap();
            publisher.apply(dp, &before).unwrap();
            rounds += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (packets.join().unwrap(), rounds)
    });
    let (old, new, others, wrong) = tally;
    eprintln!("{rounds} rounds of two publications; SYNs: {old} by the old tables, {new} by the new, {others} to the other VIP and port");
    assert!(
        wrong.is_empty(),
        "{} of {} packets saw neither publication whole, e.g. {:?}",
        wrong.len(),
        old + new + others,
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(
        rounds, ROUNDS,
        "the packets ran out before the publications did"
    );
    assert!(
        old > 0 && new > 0,
        "packets ran under both publications ({old} old, {new} new)"
    );
}

#[test]
fn a_full_reverse_nat_table_gives_new_flows_the_translations_seen_longest_ago() {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return;
    }
    // 1024 translations at most, none closing and none idle (300 s): without taking over
    // live translations, new flows would be refused once the table fills.
    let mut h = XdpHarness::with_config_in_lab_sized(CONFIG, 1024).unwrap();
    let vip = sock(VIP, 6443);
    let client = |batch: u8, i: u16| sock(Ipv4Addr::new(203, 0, 113, batch), 20000 + i);
    let open = |h: &mut XdpHarness, batch: u8, count: u16| -> Vec<(SocketAddrV4, Frame)> {
        (0..count)
            .map(|i| {
                let c = client(batch, i);
                let fwd = transmitted(h, &packet::tcp_syn(c, vip));
                // The handshake's ACK confirms the flow: these are established connections.
                transmitted(h, &packet::tcp(c, vip, TCP_ACK));
                (c, fwd)
            })
            .collect()
    };
    h.set_clock(10).unwrap();
    let old = open(&mut h, 1, 700);
    h.set_clock(200).unwrap();
    let recent = open(&mut h, 2, 300);
    h.set_clock(250).unwrap();
    let newest = open(&mut h, 3, 100);
    assert_eq!(
        h.reason(reason::DROP_SNAT_EXHAUSTED).unwrap(),
        0,
        "{:?}",
        nonzero(&h)
    );
    assert_eq!(h.reason(reason::TX_FORWARD).unwrap(), 2 * 1100);

    // Does the backend's reply to a flow's translation still reach that flow's client?
    let answers = |h: &mut XdpHarness, (c, fwd): &(SocketAddrV4, Frame)| -> bool {
        let (backend, port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
        let mut reply = packet::tcp(sock(backend, 6443), sock(VIP, port), TCP_SYN | TCP_ACK);
        reply.eth_src = lab_mac(backend);
        reply.eth_dst = LAB_LB_MAC;
        let out = run(h, &reply);
        let to = out
            .frame()
            .ok()
            .and_then(|f| Some((f.ip()?.dst, f.tcp()?.dport)));
        out.action == XDP_TX && to == Some((*c.ip(), c.port()))
    };
    let kept = |h: &mut XdpHarness, flows: &[(SocketAddrV4, Frame)]| {
        flows.iter().filter(|f| answers(h, f)).count()
    };
    let (kept_newest, kept_recent, kept_old) = (
        kept(&mut h, &newest),
        kept(&mut h, &recent),
        kept(&mut h, &old),
    );
    assert_eq!(kept_newest, 100, "every new flow got a translation");
    // Each full search takes over the oldest of the 16 translations it tried: with the old
    // batch still most of the table, one of them (a 2^-16 chance that none is old).
    assert_eq!(
        kept_recent, 300,
        "translations seen at 200 s are kept over older ones"
    );
    assert!(
        kept_old <= 700 - 100 + 1024 - 1000,
        "the new flows took old translations: {kept_old} of 700 old ones left"
    );
    assert!(
        kept_old >= 400,
        "only as many as needed: {kept_old} of 700 old ones left"
    );
    // Both tables said they were full.
    let events: std::collections::BTreeMap<_, _> =
        h.dataplane.table_events().unwrap().into_iter().collect();
    assert!(events["translation_taken_over"] >= 100 - 24, "{events:?}");
    assert!(events["flow_evicted"] > 0, "{events:?}");
}

/// A SYN flood (lone SYNs from ever new sources, newer than every established connection)
/// fills a small table: it replaces its own unconfirmed entries and translations, never an
/// established connection's, whose replies and packets keep their way. Before flows were
/// confirmed, least-recently-used replacement gave the flood every established entry.
#[test]
fn a_syn_flood_replaces_its_own_entries_not_established_connections() {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return;
    }
    let mut h = XdpHarness::with_config_in_lab_sized(CONFIG, 1024).unwrap();
    let vip = sock(VIP, 6443);
    h.set_clock(10).unwrap();
    let established: Vec<(SocketAddrV4, Frame)> = (0..300)
        .map(|i| {
            let c = sock(Ipv4Addr::new(203, 0, 113, 1), 20000 + i);
            let fwd = transmitted(&mut h, &packet::tcp_syn(c, vip));
            transmitted(&mut h, &packet::tcp(c, vip, TCP_ACK));
            (c, fwd)
        })
        .collect();
    h.set_clock(20).unwrap();
    for i in 0..4000u32 {
        let c = sock(
            Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1),
            30000 + (i / 250) as u16,
        );
        transmitted(&mut h, &packet::tcp_syn(c, vip));
    }
    let slot = h.publisher.service_slot("k3s-api").unwrap();
    let flows_before = h.dataplane.service_traffic(slot).unwrap().new_flows;
    let mut lost = Vec::new();
    for (c, fwd) in &established {
        let (backend, port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
        // The backend's packet still reaches its client...
        let mut reply = packet::tcp(sock(backend, 6443), sock(VIP, port), TCP_ACK);
        reply.eth_src = lab_mac(backend);
        reply.eth_dst = LAB_LB_MAC;
        let out = run(&mut h, &reply);
        let to = out
            .frame()
            .ok()
            .and_then(|f| Some((f.ip()?.dst, f.tcp()?.dport)));
        // ...and the client's, its backend through the same port, as an established flow.
        let next = transmitted(&mut h, &packet::tcp(*c, vip, TCP_ACK));
        let same = (next.ip().unwrap().dst, next.tcp().unwrap().sport) == (backend, port);
        if out.action != XDP_TX || to != Some((*c.ip(), c.port())) || !same {
            lost.push(*c);
        }
    }
    let events: std::collections::BTreeMap<_, _> =
        h.dataplane.table_events().unwrap().into_iter().collect();
    assert!(
        lost.is_empty(),
        "{} of 300 established connections lost to the flood: {:?} {events:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // A flood SYN evicts an established flow's entry only from a bucket whose four ways all
    // hold established flows (300 flows in 256 buckets: a few); that flow chooses again, the
    // same backend and SNAT port (its translation was kept), so its connection goes on.
    let chose_again = h.dataplane.service_traffic(slot).unwrap().new_flows - flows_before;
    assert_eq!(chose_again, events["flow_evicted"], "{events:?}");
    assert!(
        chose_again <= 15,
        "{chose_again} of 300 established flows evicted: {events:?}"
    );
    assert_eq!(events["translation_taken_over"], 0, "{events:?}");
    assert!(events["translation_unconfirmed_taken"] > 0, "{events:?}");
    assert!(events["flow_unconfirmed_replaced"] > 0, "{events:?}");
}

#[test]
fn a_translation_unseen_for_five_minutes_is_taken_over_and_its_flow_forgotten() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let a = agent(1, 40300);
    let b = colliding_client(&h, a, vip);
    h.set_clock(10).unwrap();
    let fwd = transmitted(&mut h, &packet::tcp_syn(a, vip));
    let (backend, port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
    assert_eq!(port, first_snat_port(a, vip));

    // 299 s later a's translation is still live: b goes to another port.
    h.set_clock(10 + 299).unwrap();
    let live = transmitted(&mut h, &packet::tcp_syn(b, vip));
    assert_ne!(
        live.tcp().unwrap().sport,
        port,
        "a live translation is not taken"
    );
    k3s_xdp_tests::bpf::remove_flow(&mut h, &key(b, vip, IPPROTO_TCP)).unwrap();

    // 300 s without a packet either way: a's client is gone, b takes the port.
    h.set_clock(10 + 300).unwrap();
    let taken = transmitted(&mut h, &packet::tcp_syn(b, vip));
    assert_eq!(
        taken.tcp().unwrap().sport,
        port,
        "the idle translation's port is reused"
    );
    assert_eq!(taken.ip().unwrap().dst, backend, "same backend, same port");
    assert_eq!(
        h.dataplane.table_events().unwrap(),
        [
            ("flow_evicted", 0),
            ("translation_taken_over", 0),
            ("translation_reused_waiting", 0),
            ("flow_unconfirmed_replaced", 0),
            ("translation_unconfirmed_taken", 0),
            ("syn_unknown_source", 0),
            ("syn_guard_admitted", 0)
        ],
        "an idle translation is free to take: no sign of a full table"
    );
    assert!(
        h.dataplane
            .flow(&key(a, vip, IPPROTO_TCP))
            .unwrap()
            .is_none(),
        "a's flow forgotten"
    );
}

/// Make before break: while a backend is drained, disabled or taken down and brought back
/// again and again, SYNs of new flows run through the program from another thread. Every one
/// is forwarded to a backend: none lands on the backend leaving while its entry already
/// refuses new flows (which would answer it with a RST, or drop it), since the table stops
/// naming a backend before its entry stops taking new flows, and names it again only after.
#[test]
fn a_backend_leaving_or_returning_never_refuses_a_new_flow_in_flight() {
    let Some(mut h) = harness() else { return };
    let up = specs(CONFIG);
    let with_server_2 = |state: BackendState| {
        let mut s = up.clone();
        s[0].backends[1].state = state;
        s[0].backends[1].weight = 0;
        s
    };
    let changes = [
        with_server_2(BackendState::Drain),
        with_server_2(BackendState::Down),
    ];
    let server_2 = Ipv4Addr::new(192, 0, 2, 51);
    const ROUNDS: usize = 20;
    const MAX_PACKETS: u32 = 2_000_000;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (runner, dp, publisher) = h.split().unwrap();
    let ((forwarded, to_server_2, refused), rounds) = std::thread::scope(|s| {
        let packets = s.spawn(|| {
            let _inside = runner.enter().unwrap();
            let started = std::time::Instant::now();
            let (mut forwarded, mut to_server_2) = (0u32, 0u32);
            let mut refused: Vec<String> = Vec::new();
            for i in 0..MAX_PACKETS {
                if stop.load(std::sync::atomic::Ordering::Relaxed)
                    || started.elapsed() > std::time::Duration::from_secs(60)
                {
                    break;
                }
                let client = sock(
                    Ipv4Addr::new(203, 0, 113, 1 + (i / 60_000) as u8),
                    1024 + (i % 60_000) as u16,
                );
                let out = runner
                    .run(&packet::tcp_syn(client, sock(VIP, 6443)).to_bytes())
                    .unwrap();
                let frame = out.frame().ok();
                let dst = frame.as_ref().and_then(|f| f.ip().map(|ip| ip.dst));
                let rst = frame
                    .as_ref()
                    .and_then(|f| f.tcp().map(|t| t.flags & TCP_RST != 0))
                    .unwrap_or(false);
                match dst {
                    Some(d) if out.action == XDP_TX && !rst && d.octets()[..3] == [192, 0, 2] => {
                        forwarded += 1;
                        to_server_2 += u32::from(d == server_2);
                    }
                    _ => refused.push(format!(
                        "{client}: {} to {dst:?}{}",
                        action_name(out.action),
                        if rst { " (RST)" } else { "" }
                    )),
                }
            }
            (forwarded, to_server_2, refused)
        });
        let mut rounds = 0;
        while !packets.is_finished() && rounds < ROUNDS {
            publisher.apply(dp, &changes[rounds % 2]).unwrap();
            publisher.apply(dp, &up).unwrap();
            rounds += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (packets.join().unwrap(), rounds)
    });
    eprintln!("{rounds} rounds; {forwarded} SYNs forwarded, {to_server_2} of them to server-2");
    assert!(
        refused.is_empty(),
        "{} of {} new flows refused or dropped although healthy backends could take them, e.g. {:?}",
        refused.len(),
        forwarded as usize + refused.len(),
        &refused[..refused.len().min(5)]
    );
    assert_eq!(rounds, ROUNDS, "the packets ran out before the changes did");
    assert!(to_server_2 > 0, "server-2 took flows between its changes");
}

/// A nat service whose backends see a pool of three addresses (`snat_source`), one backend so
/// that every flow meets the same backend, and a one-port range so that each address's ports
/// run out at once.
const POOL_CONFIG: &str = r#"
interface = "eth1"
snat_port_range = [20000, 20000]

[[service]]
name = "pooled"
vip = "192.0.2.100"
port = 6443
snat_source = ["192.0.2.7", "192.0.2.8", "vip"]
backends = [{ name = "server-1", address = "192.0.2.50:6443" }]
"#;

const POOL: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 7),
    Ipv4Addr::new(192, 0, 2, 8),
    VIP,
];

fn pool_harness(config: &str) -> Option<XdpHarness> {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return None;
    }
    Some(XdpHarness::with_config_in_lab(config).expect("XDP object loaded, config published"))
}

/// A backend's packet to `addr:port` (an address of the pool).
fn from_backend_to(backend: SocketAddrV4, addr: Ipv4Addr, port: u16, flags: u8) -> Frame {
    let mut frame = packet::tcp(backend, sock(addr, port), flags);
    frame.eth_src = lab_mac(*backend.ip());
    frame
}

/// Each address of a pool has the whole port range: with one port per address, three flows to
/// one backend take the three addresses (the default, the VIP alone, would have taken one
/// over); established packets keep their address and port, and the backend's replies to any
/// of them go back to their client from the VIP.
#[test]
fn a_snat_pool_gives_each_address_the_whole_port_range() {
    let Some(mut h) = pool_harness(POOL_CONFIG) else {
        return;
    };
    let vip = sock(VIP, 6443);
    let backend = sock(Ipv4Addr::new(192, 0, 2, 50), 6443);
    let clients = [agent(1, 41000), agent(2, 41001), agent(3, 41002)];
    let mut sources = Vec::new();
    for c in clients {
        let fwd = transmitted(&mut h, &packet::tcp_syn(c, vip));
        let ip = fwd.ip().unwrap();
        assert_eq!(ip.dst, *backend.ip());
        assert_eq!(fwd.tcp().unwrap().sport, 20000);
        assert!(POOL.contains(&ip.src), "{} is in the pool", ip.src);
        sources.push(ip.src);
    }
    let mut distinct = sources.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one address each: {sources:?}");
    let events = h.dataplane.table_events().unwrap();
    assert!(
        events.iter().all(|(_, n)| *n == 0),
        "no translation taken by force: {events:?}"
    );
    for (c, src) in clients.iter().zip(&sources) {
        let ack = transmitted(
            &mut h,
            &with_payload(packet::tcp(*c, vip, TCP_ACK), TCP_ACK, b"x"),
        );
        assert_eq!(
            (ack.ip().unwrap().src, ack.tcp().unwrap().sport),
            (*src, 20000),
            "an established packet keeps its source"
        );
        let back = transmitted(
            &mut h,
            &from_backend_to(backend, *src, 20000, TCP_ACK | TCP_PSH),
        );
        let ip = back.ip().unwrap();
        assert_eq!(
            (ip.src, ip.dst),
            (VIP, *c.ip()),
            "from the VIP to the client"
        );
        assert_eq!(
            (back.tcp().unwrap().sport, back.tcp().unwrap().dport),
            (6443, c.port())
        );
    }
    assert_eq!(h.reason(reason::TX_REPLY).unwrap(), 3);
}

/// The pool choice is a hash of the flow over (address, port): the same flow gets the same
/// address and port on every node, and many flows spread over the addresses.
#[test]
fn a_pool_spreads_flows_over_its_addresses_the_same_way_on_every_node() {
    let config = POOL_CONFIG.replace("[20000, 20000]", "[20000, 29999]");
    let Some(mut lb1) = pool_harness(&config) else {
        return;
    };
    let mut lb2 = XdpHarness::with_config_in_lab(&config).unwrap();
    let vip = sock(VIP, 6443);
    let mut per_address = [0u32; 3];
    for i in 0..300u16 {
        let syn = packet::tcp_syn(agent(1 + (i % 3) as u8, 42000 + i), vip);
        let a = transmitted(&mut lb1, &syn);
        let b = transmitted(&mut lb2, &syn);
        let (src, port) = (a.ip().unwrap().src, a.tcp().unwrap().sport);
        assert_eq!((src, port), (b.ip().unwrap().src, b.tcp().unwrap().sport));
        per_address[POOL.iter().position(|p| *p == src).expect("in the pool")] += 1;
    }
    // 100 expected each; a fair hash stays well within these bounds.
    assert!(
        per_address.iter().all(|n| (60..=140).contains(n)),
        "{per_address:?}"
    );
}

/// A pool address that is no VIP is the host's for everything but the backends' replies to
/// translations: unknown ports, ICMP, fragments and malformed packets pass untouched (they
/// would be dropped if it were a VIP), each counted as `pass_snat_address`.
#[test]
fn traffic_to_a_pool_address_that_is_no_reply_passes_untouched() {
    let Some(mut h) = pool_harness(POOL_CONFIG) else {
        return;
    };
    let pool = POOL[0];
    let backend = sock(Ipv4Addr::new(192, 0, 2, 50), 6443);
    let mut frames = vec![
        from_backend_to(backend, pool, 20000, TCP_ACK),
        packet::tcp_syn(agent(1, 40000), sock(pool, 22)),
        packet::udp(agent(1, 40000), sock(pool, 53), b"query"),
        Frame::ipv4(Ipv4::new(
            *agent(1, 0).ip(),
            pool,
            L4::Icmp(Icmp {
                icmp_type: 8,
                code: 0,
                rest: [0, 1, 0, 1],
                payload: b"ping".to_vec(),
                checksum: None,
            }),
        )),
    ];
    let mut fragment = packet::udp(agent(1, 40000), sock(pool, 53), b"first fragment");
    if let Some(ip) = fragment.ip_mut() {
        ip.more_fragments = true;
    }
    frames.push(fragment);
    let mut truncated = packet::tcp_syn(agent(1, 40001), sock(pool, 22)).to_bytes();
    truncated.truncate(14 + 20 + 8);
    for frame in &frames {
        let bytes = frame.to_bytes();
        let out = h.run(&bytes).unwrap();
        assert_eq!(out.action, XDP_PASS, "{frame:?}");
        assert_eq!(out.data, bytes, "passed untouched");
    }
    let out = h.run(&truncated).unwrap();
    assert_eq!((out.action, &out.data), (XDP_PASS, &truncated));
    assert_eq!(
        h.reason(reason::PASS_SNAT_ADDRESS).unwrap(),
        frames.len() as u64 + 1
    );
    assert_eq!(nonzero(&h).len(), 1, "{:?}", nonzero(&h));
}

/// When every (address, port) of the pool is live, a new flow takes over the one seen longest
/// ago, and that translation's client flow is forgotten with it: found through the pool
/// address the backend answered to.
#[test]
fn a_pool_translation_taken_over_forgets_its_clients_flow() {
    let Some(mut h) = pool_harness(POOL_CONFIG) else {
        return;
    };
    let vip = sock(VIP, 6443);
    h.set_clock(10).unwrap();
    let first = agent(1, 43000);
    let fwd = transmitted(&mut h, &packet::tcp_syn(first, vip));
    transmitted(&mut h, &packet::tcp(first, vip, TCP_ACK));
    let first_source = fwd.ip().unwrap().src;
    h.set_clock(20).unwrap();
    for c in [agent(2, 43001), agent(3, 43002)] {
        transmitted(&mut h, &packet::tcp_syn(c, vip));
        transmitted(&mut h, &packet::tcp(c, vip, TCP_ACK));
    }
    h.set_clock(30).unwrap();
    let late = agent(4, 43003);
    let taken = transmitted(&mut h, &packet::tcp_syn(late, vip));
    assert_eq!(
        taken.ip().unwrap().src,
        first_source,
        "the translation seen longest ago"
    );
    assert!(
        h.dataplane
            .flow(&key(first, vip, IPPROTO_TCP))
            .unwrap()
            .is_none(),
        "its client's flow forgotten"
    );
    let events = h.dataplane.table_events().unwrap();
    assert!(
        events
            .iter()
            .any(|(name, n)| *name == "translation_taken_over" && *n == 1),
        "{events:?}"
    );
}

/// "Fragmentation needed" about a pooled flow reaches its backend quoting the packet as the
/// backend sent it: to the pool address and port it sees.
#[test]
fn fragmentation_needed_about_a_pooled_flow_quotes_its_pool_address() {
    let Some(mut h) = pool_harness(POOL_CONFIG) else {
        return;
    };
    let vip = sock(VIP, 6443);
    let client = agent(2, 49001);
    let fwd = transmitted(&mut h, &packet::tcp_syn(client, vip));
    let (backend_ip, source) = (fwd.ip().unwrap().dst, fwd.ip().unwrap().src);
    let out = transmitted(&mut h, &frag_needed(client, vip));
    assert_eq!(out.ip().unwrap().dst, backend_ip);
    let quoted = &out.icmp().unwrap().payload;
    assert_eq!(&quoted[12..16], &backend_ip.octets());
    assert_eq!(&quoted[16..20], &source.octets(), "the pool address");
    assert_eq!(u16::from_be_bytes([quoted[22], quoted[23]]), 20000);
    assert_eq!(packet::ones_complement_sum(&quoted[..20], 0), 0xffff);
}

/// Flow sync (issue 20): with `Globals::flow_sync` on, a new flow is reported once in the
/// `FLOW_EVENTS` log with the flow entry the program recorded (backend slot, SNAT port and
/// source); its later packets and a retransmitted SYN report nothing; with it off, nothing is
/// reported at all.
#[test]
fn new_flows_are_reported_for_flow_sync_once_each() {
    let Some(mut h) = harness() else { return };
    let vip = sock(VIP, 6443);
    let off = agent(1, 42001);
    transmitted(&mut h, &packet::tcp_syn(off, vip));
    assert!(
        h.dataplane.drain_flow_events(100).unwrap().is_empty(),
        "off"
    );

    h.update_globals(|g| g.flow_sync = k3s_xdp_common::FLOW_SYNC_ON)
        .unwrap();
    let clients = [agent(1, 42002), agent(2, 42003), agent(3, 42004)];
    for c in clients {
        transmitted(&mut h, &packet::tcp_syn(c, vip));
        transmitted(&mut h, &packet::tcp_syn(c, vip));
        transmitted(&mut h, &packet::tcp(c, vip, TCP_ACK));
    }
    transmitted(&mut h, &packet::tcp(off, vip, TCP_ACK));
    let events = h.dataplane.drain_flow_events(100).unwrap();
    assert_eq!(events.len(), clients.len(), "{events:?}");
    for (event, c) in events.iter().zip(clients) {
        let k = key(c, vip, IPPROTO_TCP);
        let FlowEventOf::V4(e) = event else {
            panic!("an IPv4 event: {event:?}")
        };
        assert_eq!((e.op, e.family), (k3s_xdp_common::FLOW_EVENT_NEW, 4));
        assert_eq!(e.key, k);
        assert_eq!(Some(e.flow), h.dataplane.flow(&k).unwrap(), "as recorded");
        assert_ne!(e.flow.snat_port, 0, "nat: the SNAT port");
    }
    assert_eq!(h.dataplane.flow_events_lost().unwrap(), 0);
}

/// Flow sync under table pressure (the soak's finding: a backup's copies are never touched by
/// traffic, so a burst of new flows announced by the master crowded out the copies of its
/// long-lived ones). A bucket full of copies the peer refreshed keeps them against a copy
/// announced since (counted as crowded, its translation still installed); a refreshed copy
/// takes the way of the one refreshed longest ago; once a refresh is missed, an announced
/// copy may take it too.
#[test]
fn a_full_bucket_keeps_refreshed_copies_before_announced_ones() {
    use k3s_xdp::flowsync::{
        runtime::{copy_seen, refreshed_seen},
        translate::{Install, InstallOf},
    };
    use k3s_xdp_common::{table::bucket_index, Flow, NatReverse};
    let Some(h) = harness() else { return };
    let mut tables = h.dataplane.flow_tables().unwrap();
    let mask = h.dataplane.flow_mask();
    let vip = sock(VIP, 6443);
    let bucket = |c| bucket_index(flow_hash(&key(c, vip, IPPROTO_TCP)), mask);
    let target = bucket(agent(1, 30000));
    let same: Vec<SocketAddrV4> = (30000..65000)
        .map(|p| agent(1, p))
        .filter(|&c| bucket(c) == target)
        .take(7)
        .collect();
    assert_eq!(same.len(), 7);
    let copy = |c: SocketAddrV4, port: u16| {
        InstallOf::V4(Install {
            key: key(c, vip, IPPROTO_TCP),
            service: 0,
            flow: Flow {
                backend: 1,
                snat_port: port.to_be(),
                snat_source: 0,
            },
            reverse: Some((
                key(
                    sock(Ipv4Addr::new(192, 0, 2, 50), 6443),
                    sock(VIP, port),
                    IPPROTO_TCP,
                ),
                NatReverse {
                    client_addr: u32::from(*c.ip()).to_be(),
                    client_port: c.port().to_be(),
                    vip_port: 6443u16.to_be(),
                    backend: 1,
                    ..Default::default()
                },
            )),
        })
    };
    let held = |c: SocketAddrV4| {
        h.dataplane
            .flow(&key(c, vip, IPPROTO_TCP))
            .unwrap()
            .is_some()
    };
    let t = 1000;
    let refreshed: Vec<_> = (0..4).map(|i| copy(same[i], 20000 + i as u16)).collect();
    let done = tables
        .install(&refreshed, (t, refreshed_seen(t)), Role::Serving)
        .unwrap();
    assert_eq!((done.flows, done.crowded), (4, 0));

    // Announced 30 s after the refresh: the bucket keeps the refreshed four.
    let done = tables
        .install(
            &[copy(same[4], 20004)],
            (t + 30, copy_seen(t + 30)),
            Role::Serving,
        )
        .unwrap();
    assert_eq!((done.flows, done.crowded), (0, 1));
    assert!(same[..4].iter().all(|&c| held(c)) && !held(same[4]));
    let reverse = key(
        sock(Ipv4Addr::new(192, 0, 2, 50), 6443),
        sock(VIP, 20004),
        IPPROTO_TCP,
    );
    assert!(
        tables.translation(&reverse).is_some(),
        "its translation is installed: the server's packets are answered"
    );

    // Refreshed again 30 s later: takes a way (of one refreshed 30 s before it).
    let done = tables
        .install(
            &[copy(same[5], 20005)],
            (t + 30, refreshed_seen(t + 30)),
            Role::Serving,
        )
        .unwrap();
    assert_eq!((done.flows, done.crowded), (1, 0));
    assert!(held(same[5]));
    assert_eq!(same[..4].iter().filter(|&&c| held(c)).count(), 3);

    // Two minutes on, the first ones were not refreshed again: an announced copy outranks
    // them.
    let done = tables
        .install(
            &[copy(same[6], 20006)],
            (t + 120, copy_seen(t + 120)),
            Role::Serving,
        )
        .unwrap();
    assert_eq!((done.flows, done.crowded), (1, 0));
    assert!(
        held(same[6]) && held(same[5]),
        "the latest refreshed one stays"
    );
}

/// The flow-sync log keeps each CPU's last `FLOW_LOG_SLOTS` events: a reader that falls behind
/// counts what was overwritten as lost and reads the rest whole, in order.
#[test]
fn a_reader_behind_the_flow_sync_log_counts_what_it_lost() {
    if harness().is_none() {
        return;
    }
    let mut h =
        XdpHarness::with_config_in_lab_from(k3s_xdp::dataplane::BPF_OBJECT, CONFIG, 1 << 16)
            .unwrap();
    // One CPU, so that every event goes into one CPU's part of the log.
    // SAFETY: a CPU set for this thread, built with the libc macros' functions.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    h.update_globals(|g| g.flow_sync = k3s_xdp_common::FLOW_SYNC_ON)
        .unwrap();
    let vip = sock(VIP, 6443);
    let slots = k3s_xdp_common::FLOW_LOG_SLOTS as usize;
    let flows = slots + 100;
    let client = |i: usize| {
        sock(
            Ipv4Addr::new(203, 0, 113, 1 + (i / 20000) as u8),
            20000 + (i % 20000) as u16,
        )
    };
    for i in 0..flows {
        transmitted(&mut h, &packet::tcp_syn(client(i), vip));
        transmitted(&mut h, &packet::tcp(client(i), vip, TCP_ACK));
    }
    let events = h.dataplane.drain_flow_events(2 * flows).unwrap();
    let lost = h.dataplane.flow_events_lost().unwrap();
    assert_eq!(
        events.len() as u64 + lost,
        flows as u64,
        "each read or lost"
    );
    assert!(lost >= 100, "{lost} lost: the log holds {slots} per CPU");
    // The events read are the latest ones, whole.
    let FlowEventOf::V4(last) = events[events.len() - 1] else {
        panic!("IPv4")
    };
    assert_eq!(last.key, key(client(flows - 1), vip, IPPROTO_TCP));
    for e in &events {
        let FlowEventOf::V4(e) = e else {
            panic!("IPv4")
        };
        assert_eq!(Some(e.flow), h.dataplane.flow(&e.key).unwrap(), "whole");
    }
    assert!(
        h.dataplane.drain_flow_events(10).unwrap().is_empty(),
        "read once"
    );
}

/// Flow sync end to end through the real program on two nodes (issue 20): node A makes a nat
/// flow and reports it; the entry crosses the wire (signed, encoded, verified, decoded) to node
/// B, which published the same services in other slots and installs it; the backend's reply
/// reaching B goes back to the client from VIP:6443, and the client's next packet through B
/// reaches the same backend from the same SNAT port, with no new flow made on B.
#[test]
fn a_synced_flow_is_translated_both_ways_by_the_peer() {
    use k3s_xdp::flowsync::wire::{self, Key, Kind, Message};
    let Some(mut a) = harness() else { return };
    let config = k3s_xdp::config::parse(CONFIG, "t.toml".as_ref()).unwrap();
    let specs: Vec<ServiceSpec> = config
        .services
        .iter()
        .map(ServiceSpec::from_config)
        .collect();
    // Node B: a service published and removed first, so its slots differ from A's.
    let mut early = specs.clone();
    early.insert(0, ServiceSpec::from_config(&config.services[1]));
    early[0].name = "early".into();
    early[0].port = 1;
    let mut b = XdpHarness::with_specs_in_lab(&early).unwrap();
    b.apply(&specs).unwrap();
    let (dir_a, dir_b) = (a.directory(&specs), b.directory(&specs));
    let server = "192.0.2.50:6443".parse().unwrap();
    assert_ne!(
        a.publisher.backend_slot("k3s-api", server),
        b.publisher.backend_slot("k3s-api", server),
        "the nodes number their backends differently"
    );

    a.update_globals(|g| g.flow_sync = k3s_xdp_common::FLOW_SYNC_ON)
        .unwrap();
    let client = agent(2, 43000);
    let vip = sock(VIP, 6443);
    let fwd = transmitted(&mut a, &packet::tcp_syn(client, vip));
    let (backend_ip, snat_port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
    transmitted(&mut a, &packet::tcp(client, vip, TCP_ACK));
    let events = a.dataplane.drain_flow_events(10).unwrap();
    let entry = dir_a.outgoing(&events[0]).expect("A names its flow");

    let key = Key::from_file_bytes(&[b'k'; 32]).unwrap();
    let datagram = wire::encode(
        &Message {
            kind: Kind::Update,
            epoch: 1,
            seq: 1,
            entries: vec![entry],
        },
        &key,
    );
    let received = wire::decode(&datagram, &key).unwrap();
    let install = dir_b.incoming(&received.entries[0]).expect("B places it");
    b.set_clock(5).unwrap();
    let done = b.dataplane.install(&[install], 5, Role::Serving).unwrap();
    assert_eq!((done.flows, done.conflicts), (1, 0));

    // The backend's reply reaches B (A failed over): back to the client as the VIP.
    let mut reply = packet::tcp(
        sock(backend_ip, 6443),
        sock(VIP, snat_port),
        TCP_SYN | TCP_ACK,
    );
    reply.eth_src = lab_mac(backend_ip);
    reply.eth_dst = LAB_LB_MAC;
    let back = transmitted(&mut b, &reply);
    let (ip, tcp) = (back.ip().unwrap(), back.tcp().unwrap());
    assert_eq!((ip.src, tcp.sport), (VIP, 6443));
    assert_eq!((ip.dst, tcp.dport), (*client.ip(), client.port()));
    // The client speaks next, through B: the same backend, the same SNAT port.
    let next = transmitted(&mut b, &packet::tcp(client, vip, TCP_ACK));
    assert_eq!(next.ip().unwrap().dst, backend_ip);
    assert_eq!(next.tcp().unwrap().sport, snat_port);
    let slot = b.publisher.service_slot("k3s-api").unwrap();
    assert_eq!(b.dataplane.service_traffic(slot).unwrap().new_flows, 0);

    // A second install of the same flow refreshes it; another client's flow on B's same
    // backend and SNAT port is refused while B's own translation lives and B serves.
    assert_eq!(
        b.dataplane
            .install(&[install], 6, Role::Serving)
            .unwrap()
            .flows,
        1
    );
    let mut other = received.entries[0];
    other.client = "198.51.100.9:50000".parse().unwrap();
    let clash = dir_b.incoming(&other).unwrap();
    let done = b.dataplane.install(&[clash], 6, Role::Serving).unwrap();
    assert_eq!((done.flows, done.conflicts), (0, 1));
    let held = done
        .last_conflict
        .expect("the translation that kept its slot");
    assert!(
        held.same_tuple && held.protocol == 6 && held.age <= 1,
        "{held:?}"
    );
    let reverse = self::key(
        sock(backend_ip, 6443),
        sock(VIP, snat_port),
        k3s_xdp_common::IPPROTO_TCP,
    );
    let nat = b.dataplane.nat_reverse(&reverse).unwrap().unwrap();
    assert_eq!(nat.client_port, 43000u16.to_be(), "B's own kept it");
    // On standby (a VRRP backup) the serving peer's word wins: B's own translation is a
    // leftover of its time as master, which the peer, choosing this port, no longer holds.
    let done = b.dataplane.install(&[clash], 6, Role::Standby).unwrap();
    assert_eq!((done.flows, done.conflicts), (1, 0));
    let nat = b.dataplane.nat_reverse(&reverse).unwrap().unwrap();
    assert_eq!(nat.client_port, 50000u16.to_be(), "the peer's client's now");
    // The first client's flow entry went with its translation (as the program's SNAT search
    // clears a flow whose translation it takes over); were it left, it would be stale, and no
    // bulk or refresh of B's would carry it.
    assert!(
        b.dataplane
            .flow(&self::key(client, vip, IPPROTO_TCP))
            .unwrap()
            .is_none(),
        "the replaced translation's flow is gone"
    );
    let tables = b.dataplane.flow_tables().unwrap();
    assert!(!tables.holds_translation(&install), "stale");
    assert!(tables.holds_translation(&clash));

    // A copy that nothing went through here since it came: when the peer gives its SNAT port
    // to another client (it took the translation over), the new one replaces it here too.
    let mut first = received.entries[0];
    first.client = "198.51.100.20:50000".parse().unwrap();
    first.snat = std::net::SocketAddr::new(first.snat.ip(), 61000);
    let done = b
        .dataplane
        .install(&[dir_b.incoming(&first).unwrap()], 7, Role::Serving)
        .unwrap();
    assert_eq!((done.flows, done.conflicts), (1, 0));
    let mut second = first;
    second.client = "198.51.100.21:50001".parse().unwrap();
    let done = b
        .dataplane
        .install(&[dir_b.incoming(&second).unwrap()], 8, Role::Serving)
        .unwrap();
    assert_eq!((done.flows, done.conflicts), (1, 0), "the copy is replaced");
    let first_key = self::key("198.51.100.20:50000".parse().unwrap(), vip, IPPROTO_TCP);
    assert!(
        b.dataplane.flow(&first_key).unwrap().is_none(),
        "with its flow entry"
    );
    let reverse = self::key(
        sock(backend_ip, 6443),
        sock(VIP, 61000),
        k3s_xdp_common::IPPROTO_TCP,
    );
    let nat = b.dataplane.nat_reverse(&reverse).unwrap().unwrap();
    assert_eq!(
        nat.client_port,
        50001u16.to_be(),
        "the second client's translation"
    );
}

/// Closing flows cross too (issue 20): node A reports a translation once, when it closes
/// (the client's FIN, then the backend's), not before and not again; the entry it makes of
/// it names the same connection on node B, which removes its copy of the flow and marks its
/// translation closed (so its SNAT port follows the backend's TIME_WAIT there too).
#[test]
fn a_closed_translation_is_reported_once_and_closed_on_the_peer() {
    use k3s_xdp::flowsync::translate::InstallOf;
    let Some(mut a) = harness() else { return };
    let config = k3s_xdp::config::parse(CONFIG, "t.toml".as_ref()).unwrap();
    let specs: Vec<ServiceSpec> = config
        .services
        .iter()
        .map(ServiceSpec::from_config)
        .collect();
    let mut b = XdpHarness::with_specs_in_lab(&specs).unwrap();
    let (dir_a, dir_b) = (a.directory(&specs), b.directory(&specs));
    a.update_globals(|g| g.flow_sync = k3s_xdp_common::FLOW_SYNC_ON)
        .unwrap();
    let client = agent(3, 44000);
    let vip = sock(VIP, 6443);
    let fwd = transmitted(&mut a, &packet::tcp_syn(client, vip));
    let (backend_ip, snat_port) = (fwd.ip().unwrap().dst, fwd.tcp().unwrap().sport);
    transmitted(&mut a, &packet::tcp(client, vip, TCP_ACK));
    let new = a.dataplane.drain_flow_events(10).unwrap();
    assert_eq!(new.len(), 1);
    let install = dir_b.incoming(&dir_a.outgoing(&new[0]).unwrap()).unwrap();
    b.dataplane.install(&[install], 3, Role::Serving).unwrap();
    let k = key(client, vip, IPPROTO_TCP);
    assert!(b.dataplane.flow(&k).unwrap().is_some(), "B has the copy");

    // Data and the client's FIN: not closed yet.
    transmitted(&mut a, &packet::tcp(client, vip, TCP_ACK));
    transmitted(&mut a, &packet::tcp(client, vip, TCP_FIN | TCP_ACK));
    assert!(a.dataplane.drain_flow_events(10).unwrap().is_empty());
    // The backend's FIN closes it: reported once, with its reverse tuple.
    let mut fin = packet::tcp(
        sock(backend_ip, 6443),
        sock(VIP, snat_port),
        TCP_FIN | TCP_ACK,
    );
    fin.eth_src = lab_mac(backend_ip);
    fin.eth_dst = LAB_LB_MAC;
    transmitted(&mut a, &fin);
    transmitted(&mut a, &fin);
    let closed = a.dataplane.drain_flow_events(10).unwrap();
    assert_eq!(closed.len(), 1, "{closed:?}");
    let FlowEventOf::V4(e) = closed[0] else {
        panic!("IPv4")
    };
    assert_eq!(e.op, k3s_xdp_common::FLOW_EVENT_CLOSED);
    let reverse = key(sock(backend_ip, 6443), sock(VIP, snat_port), IPPROTO_TCP);
    assert_eq!(e.key, reverse);
    let tables = a.dataplane.flow_tables().unwrap();
    let slot = tables
        .translation(&e.key)
        .expect("A still holds it, closed");
    assert_eq!(u32::from(slot.nat.backend), e.flow.backend);
    let entry = dir_a.closed(&e.key, &slot.nat).unwrap();
    assert_eq!(entry.client, std::net::SocketAddr::V4(client));

    // B: the flow goes, the translation is marked closed.
    let Some(InstallOf::V4(on_b)) = dir_b.incoming(&entry) else {
        panic!("B places it")
    };
    let mut b_tables = b.dataplane.flow_tables().unwrap();
    assert_eq!(
        b_tables.close(&[(InstallOf::V4(on_b), entry.flags)], 4),
        1,
        "found and closed"
    );
    assert_eq!(b.dataplane.flow(&k).unwrap(), None, "the flow is gone on B");
    let nat = b_tables.translation(&reverse).unwrap().nat;
    assert!(nat.closed(), "{:#x}", nat.closing);
    assert_ne!(nat.closing & k3s_xdp_common::NAT_CLIENT_FIN, 0);

    // A RST from the client closes a live translation at once: reported too.
    let c2 = agent(3, 44001);
    transmitted(&mut a, &packet::tcp_syn(c2, vip));
    transmitted(&mut a, &packet::tcp(c2, vip, TCP_ACK));
    a.dataplane.drain_flow_events(10).unwrap();
    transmitted(&mut a, &packet::tcp(c2, vip, TCP_RST));
    let reset = a.dataplane.drain_flow_events(10).unwrap();
    assert_eq!(reset.len(), 1);
    assert!(matches!(reset[0], FlowEventOf::V4(e) if e.op == k3s_xdp_common::FLOW_EVENT_CLOSED));
}

fn event(h: &XdpHarness, name: &str) -> u64 {
    h.dataplane
        .table_events()
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v)
}

/// The SYN flood guard: SYNs of new flows from sources that never completed a handshake are
/// counted; past `threshold` in a second only `admit` more go on and the rest are dropped
/// (`drop_syn_flood`), until a second under the threshold; SYNs from a source whose flow was
/// confirmed, and packets other than SYNs, always go on.
#[test]
fn the_syn_flood_guard_admits_known_sources_and_a_budget_of_unknown_ones() {
    let Some(mut h) = harness() else { return };
    k3s_xdp_tests::bpf::stay_on_cpu_0();
    let vip = sock(VIP, 6443);
    h.dataplane
        .write_syn_guard(&k3s_xdp_common::guard::SynGuard {
            threshold: 5,
            admit: 2,
        })
        .unwrap();
    h.set_clock(10).unwrap();

    // A client completes a handshake: its source becomes known.
    let known = sock(Ipv4Addr::new(203, 0, 113, 7), 40000);
    transmitted(&mut h, &packet::tcp_syn(known, vip));
    transmitted(&mut h, &packet::tcp(known, vip, TCP_ACK));
    assert_eq!(
        event(&h, "syn_unknown_source"),
        1,
        "its SYN came from an unknown source"
    );

    // A flood from 20 forged sources: 4 more make the threshold (the client's SYN was the
    // first), 2 admitted, 14 dropped.
    let forged = |i: u16| sock(Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1), 1000 + i);
    let mut fates = Vec::new();
    for i in 0..20 {
        fates.push(run(&mut h, &packet::tcp_syn(forged(i), vip)).action);
    }
    let sent = fates.iter().filter(|a| **a == XDP_TX).count();
    assert_eq!(sent, 6, "fates {fates:?}");
    assert!(fates[..6].iter().all(|a| *a == XDP_TX), "{fates:?}");
    assert!(fates[6..].iter().all(|a| *a == XDP_DROP), "{fates:?}");
    assert_eq!(h.reason(reason::DROP_SYN_FLOOD).unwrap(), 14);
    assert_eq!(event(&h, "syn_unknown_source"), 21);
    assert_eq!(event(&h, "syn_guard_admitted"), 2);

    // The known source opens a new connection (another port) while the guard is up.
    transmitted(&mut h, &packet::tcp_syn(sock(*known.ip(), 40001), vip));
    // An unknown source's packet other than a SYN (a flow taken over after a failover) goes on.
    transmitted(&mut h, &packet::tcp(forged(900), vip, TCP_ACK));
    // A SYN retransmitted on a flow the guard admitted goes on: the flow exists.
    transmitted(&mut h, &packet::tcp_syn(forged(0), vip));

    // The next second starts up (the last one was over): the budget only.
    h.set_clock(11).unwrap();
    let fates: Vec<u32> = (100..104)
        .map(|i| run(&mut h, &packet::tcp_syn(forged(i), vip)).action)
        .collect();
    assert_eq!(fates, [XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);

    // After a second without a SYN from an unknown source, all are admitted again.
    h.set_clock(13).unwrap();
    for i in 200..205 {
        transmitted(&mut h, &packet::tcp_syn(forged(i), vip));
    }
    assert_eq!(h.reason(reason::DROP_SYN_FLOOD).unwrap(), 16);

    // Off: no count, no drop.
    h.dataplane
        .write_syn_guard(&k3s_xdp_common::guard::SynGuard::default())
        .unwrap();
    let before = event(&h, "syn_unknown_source");
    for i in 300..320 {
        transmitted(&mut h, &packet::tcp_syn(forged(i), vip));
    }
    assert_eq!(event(&h, "syn_unknown_source"), before);
    assert_eq!(h.reason(reason::DROP_SYN_FLOOD).unwrap(), 16);
}
