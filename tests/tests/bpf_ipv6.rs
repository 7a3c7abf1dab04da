//! BPF_PROG_TEST_RUN tests of the IPv6 path (issue 19): nat (NAT66) and dsr forwarding, the
//! reply back to the client, the same backend and SNAT port on every node, RSTs, ICMPv6 echo
//! and Packet Too Big, extension headers walked or refused by reason, and everything not to a
//! VIP:port left untouched. Outputs are parsed and their checksums recomputed from scratch.

use k3s_xdp::{
    config::{Mode, OnBackendDown, Protocol},
    dataplane::{BackendSpec, BackendState, FlowEventOf, ServiceSpec},
};
use k3s_xdp_common::{address::v6_bytes, reason, table::Translation};
use k3s_xdp_tests::{
    bpf::{
        action_name, have_root, lab_mac6, Outcome, XdpHarness, LAB_LB_MAC, XDP_DROP, XDP_PASS,
        XDP_TX,
    },
    packet::{Frame, Icmp, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    packet6::{
        icmp6, tcp6, tcp6_syn, udp6, verify_checksums6, Ipv6, NEXT_DEST_OPTS, NEXT_FRAGMENT,
        NEXT_HOP_BY_HOP, NEXT_ROUTING,
    },
};
use std::net::{Ipv6Addr, SocketAddrV6};

fn ip6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

fn sock(addr: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(addr, port, 0, 0)
}

/// VIP 2001:db8::100: TCP 6443 (nat) to ::50-52, TCP 80 (dsr) to ::50-52, UDP 53 (nat) to
/// ::50, and TCP 7443 (nat, reset) whose only backend is down.
fn services() -> Vec<ServiceSpec> {
    let backends = |port: u16, state: BackendState| -> Vec<BackendSpec> {
        (0x50..0x53)
            .map(|last| BackendSpec {
                name: format!("server-{last:x}"),
                address: sock(ip6(last), port).into(),
                state,
                weight: 100,
            })
            .collect()
    };
    let service = |name: &str, port: u16, protocol, mode, backends| ServiceSpec {
        name: name.into(),
        vip: ip6(0x100).into(),
        port,
        protocol,
        mode,
        on_backend_down: OnBackendDown::Reset,
        table_size: 251,
        backends,
        snat_sources: Vec::new(),
    };
    vec![
        service(
            "api6",
            6443,
            Protocol::Tcp,
            Mode::Nat,
            backends(6443, BackendState::Up),
        ),
        service(
            "web6",
            80,
            Protocol::Tcp,
            Mode::Dsr,
            backends(80, BackendState::Up),
        ),
        service(
            "dns6",
            53,
            Protocol::Udp,
            Mode::Nat,
            backends(53, BackendState::Up)[..1].to_vec(),
        ),
        service(
            "down6",
            7443,
            Protocol::Tcp,
            Mode::Nat,
            backends(7443, BackendState::Down)[..1].to_vec(),
        ),
    ]
}

fn harness() -> Option<XdpHarness> {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return None;
    }
    Some(XdpHarness::with_specs_in_lab(&services()).expect("XDP object loaded, services published"))
}

fn run(h: &mut XdpHarness, frame: &Frame) -> Outcome {
    h.run_frame(frame).expect("BPF_PROG_TEST_RUN")
}

fn nonzero(h: &XdpHarness) -> Vec<(&'static str, u64)> {
    h.reasons()
        .unwrap()
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Runs `ip` (from the client side) and expects XDP_TX with valid checksums.
fn transmitted(h: &mut XdpHarness, frame: &Frame) -> (Frame, Ipv6) {
    let out = run(h, frame);
    assert_eq!(
        out.action,
        XDP_TX,
        "expected XDP_TX, got {} (reasons {:?})",
        action_name(out.action),
        nonzero(h)
    );
    verify_checksums6(&out.data).expect("valid checksums on the output");
    let frame = out.frame().unwrap();
    let ip = Ipv6::of(&frame).unwrap();
    (frame, ip)
}

/// The flow-table bucket of the TCP flow `client` → `vip`.
fn flow_bucket(h: &XdpHarness, client: SocketAddrV6, vip: SocketAddrV6) -> u32 {
    use k3s_xdp_common::{address::v6_words, hash::flow_hash, table::bucket_index, FlowKey};
    let key = FlowKey {
        src: v6_words(client.ip().octets()),
        dst: v6_words(vip.ip().octets()),
        sport: client.port().to_be(),
        dport: vip.port().to_be(),
        protocol: k3s_xdp_common::IPPROTO_TCP,
        _pad: [0; 3],
    };
    bucket_index(flow_hash(&key), h.dataplane.flow_mask())
}

fn tcp_ports(ip: &Ipv6) -> (u16, u16, u8) {
    match &ip.l4 {
        L4::Tcp(t) => (t.sport, t.dport, t.flags),
        other => panic!("not TCP: {other:?}"),
    }
}

/// Runs `frame` and expects it passed untouched, counted under `why`.
fn passed_untouched(h: &mut XdpHarness, frame: &Frame, why: u32) {
    let before = h.reason(why).unwrap();
    let bytes = frame.to_bytes();
    let out = h.run(&bytes).unwrap();
    assert_eq!(out.action, XDP_PASS, "reasons {:?}", nonzero(h));
    assert_eq!(out.data, bytes, "passed untouched");
    assert_eq!(
        h.reason(why).unwrap(),
        before + 1,
        "counted as {}",
        reason::NAMES[why as usize]
    );
}

/// Runs `frame` and expects it dropped, counted under `why`.
fn dropped(h: &mut XdpHarness, frame: &Frame, why: u32) {
    let before = h.reason(why).unwrap();
    let out = run(h, frame);
    assert_eq!(out.action, XDP_DROP, "reasons {:?}", nonzero(h));
    assert_eq!(
        h.reason(why).unwrap(),
        before + 1,
        "counted as {}",
        reason::NAMES[why as usize]
    );
}

#[test]
fn nat66_round_trip_restores_the_clients_tuple() {
    let Some(mut h) = harness() else { return };
    let client = sock(ip6(0x102), 41000);
    let vip = sock(ip6(0x100), 6443);
    let (fwd, ip) = transmitted(&mut h, &tcp6_syn(client, vip).frame());
    let (snat_port, dport, _) = tcp_ports(&ip);
    assert_eq!(ip.src, ip6(0x100), "SNAT to the VIP");
    assert!(
        (0x50..0x53).any(|b| ip.dst == ip6(b)),
        "to a backend: {}",
        ip.dst
    );
    assert_eq!(dport, 6443);
    assert!(snat_port >= 1024);
    assert_eq!(
        fwd.eth_dst,
        lab_mac6(ip.dst),
        "to the backend's MAC, from the FIB"
    );
    assert_eq!(fwd.eth_src, LAB_LB_MAC);
    assert_eq!(h.reason(reason::TX_FORWARD).unwrap(), 1);

    // The backend answers VIP:snat_port.
    let backend = ip.dst;
    let mut reply = tcp6(
        sock(backend, 6443),
        sock(ip6(0x100), snat_port),
        TCP_SYN | TCP_ACK,
    )
    .frame();
    reply.eth_src = lab_mac6(backend);
    let (back, ip) = transmitted(&mut h, &reply);
    let (sport, dport, flags) = tcp_ports(&ip);
    assert_eq!(
        (ip.src, sport),
        (ip6(0x100), 6443),
        "from VIP:6443 as the client expects"
    );
    assert_eq!((ip.dst, dport), (*client.ip(), client.port()));
    assert_eq!(flags, TCP_SYN | TCP_ACK);
    assert_eq!(back.eth_dst, lab_mac6(*client.ip()));
    assert_eq!(h.reason(reason::TX_REPLY).unwrap(), 1);

    // The client's next packet: the same backend and port, not a new flow.
    let (_, ip) = transmitted(&mut h, &tcp6(client, vip, TCP_ACK).frame());
    assert_eq!(ip.dst, backend);
    assert_eq!(tcp_ports(&ip).0, snat_port);
    let slot = h.publisher.service_slot("api6").unwrap();
    let t = h.dataplane.service_traffic(slot).unwrap();
    assert_eq!(
        (t.packets, t.new_flows),
        (3, 1),
        "SYN, reply, ACK: one flow"
    );
}

/// An IPv6 translation keeps its backend's slot, not its address: a reply is translated only
/// if its source is the address that slot holds now. The test moves the chosen backend's slot
/// to another address: its reply finds its translation's slot (the tuple's hash is the
/// same), and still passes, untranslated; moved back, it is translated again.
#[test]
fn an_ipv6_reply_is_translated_only_from_its_backends_address() {
    use aya::maps::{Array, MapData};
    use k3s_xdp_common::{address::v6_words, Backend, V6};
    let Some(mut h) = harness() else { return };
    let client = sock(ip6(0x103), 41001);
    let vip = sock(ip6(0x100), 6443);
    let (_, ip) = transmitted(&mut h, &tcp6_syn(client, vip).frame());
    let (snat_port, _, _) = tcp_ports(&ip);
    let backend = ip.dst;
    let reply = |from: Ipv6Addr, port: u16| {
        let mut f = tcp6(
            sock(from, port),
            sock(ip6(0x100), snat_port),
            TCP_SYN | TCP_ACK,
        )
        .frame();
        f.eth_src = lab_mac6(from);
        f
    };
    // Another backend, a stranger, or the backend from another port: not a reply.
    let other = (0x50..0x53).map(ip6).find(|b| *b != backend).unwrap();
    passed_untouched(&mut h, &reply(other, 6443), reason::PASS_VIP_OTHER);
    passed_untouched(&mut h, &reply(ip6(0x77), 6443), reason::PASS_VIP_OTHER);
    passed_untouched(&mut h, &reply(backend, 6444), reason::PASS_VIP_OTHER);

    let slot_of = |h: &mut XdpHarness| -> (u32, Backend<V6>) {
        let map: Array<&MapData, Backend<V6>> = Array::try_from(
            h.dataplane
                .bpf()
                .map(k3s_xdp_common::names::BACKENDS6)
                .unwrap(),
        )
        .unwrap();
        (0..map.len())
            .filter_map(|i| Some((i, map.get(&i, 0).ok()?)))
            .find(|(_, b)| b.addr == v6_words(backend.octets()))
            .expect("the chosen backend's slot")
    };
    let write = |h: &mut XdpHarness, id: u32, b: Backend<V6>| {
        let mut map: Array<&mut MapData, Backend<V6>> = Array::try_from(
            h.dataplane
                .bpf_mut()
                .map_mut(k3s_xdp_common::names::BACKENDS6)
                .unwrap(),
        )
        .unwrap();
        map.set(id, b, 0).unwrap();
    };
    let (id, was) = slot_of(&mut h);
    write(
        &mut h,
        id,
        Backend {
            addr: v6_words(ip6(0x77).octets()),
            ..was
        },
    );
    passed_untouched(&mut h, &reply(backend, 6443), reason::PASS_VIP_OTHER);
    write(&mut h, id, was);
    let (_, ip) = transmitted(&mut h, &reply(backend, 6443));
    assert_eq!((ip.dst, tcp_ports(&ip).1), (*client.ip(), client.port()));
}

#[test]
fn the_same_flow_gets_the_same_backend_and_snat_port_on_every_node() {
    let Some(mut lb1) = harness() else { return };
    let mut lb2 = harness().unwrap();
    for port in 40000..40020 {
        let syn = tcp6_syn(sock(ip6(0x103), port), sock(ip6(0x100), 6443)).frame();
        let (_, a) = transmitted(&mut lb1, &syn);
        let (_, b) = transmitted(&mut lb2, &syn);
        assert_eq!(
            (a.dst, tcp_ports(&a).0),
            (b.dst, tcp_ports(&b).0),
            "port {port}"
        );
    }
}

#[test]
fn dsr_rewrites_only_the_destination_mac() {
    let Some(mut h) = harness() else { return };
    let syn = tcp6_syn(sock(ip6(0x102), 41001), sock(ip6(0x100), 80));
    let (fwd, ip) = transmitted(&mut h, &syn.frame());
    assert_eq!(
        ip,
        Ipv6::of(&syn.frame()).unwrap(),
        "the IPv6 packet is as it came"
    );
    assert!(
        (0x50..0x53).any(|b| fwd.eth_dst == lab_mac6(ip6(b))),
        "to a backend's MAC"
    );
    assert_eq!(fwd.eth_src, LAB_LB_MAC);
}

#[test]
fn udp_is_balanced_with_its_checksum_updated() {
    let Some(mut h) = harness() else { return };
    let (_, ip) = transmitted(
        &mut h,
        &udp6(sock(ip6(0x104), 5353), sock(ip6(0x100), 53), b"query").frame(),
    );
    assert_eq!((ip.src, ip.dst), (ip6(0x100), ip6(0x50)));
    let L4::Udp(u) = &ip.l4 else {
        panic!("not UDP")
    };
    assert_eq!((u.dport, u.payload.as_slice()), (53, &b"query"[..]));
}

#[test]
fn extension_headers_are_walked_and_kept() {
    let Some(mut h) = harness() else { return };
    let mut syn = tcp6_syn(sock(ip6(0x105), 41002), sock(ip6(0x100), 6443));
    syn.ext = vec![
        (NEXT_HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0]),
        (
            NEXT_DEST_OPTS,
            vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (NEXT_ROUTING, vec![0, 0]),
    ];
    let (_, ip) = transmitted(&mut h, &syn.frame());
    assert_eq!(ip.ext.len(), 3, "the extension headers stay");
    assert_eq!(ip.src, ip6(0x100));
    assert_eq!(tcp_ports(&ip).1, 6443);
}

#[test]
fn fragments_and_chains_the_walk_cannot_finish_are_dropped_by_reason() {
    let Some(mut h) = harness() else { return };
    let vip = sock(ip6(0x100), 6443);
    let client = sock(ip6(0x106), 41003);

    let mut fragment = tcp6_syn(client, vip);
    fragment.ext = vec![(NEXT_FRAGMENT, vec![0, 1, 0, 0, 0, 1])];
    dropped(&mut h, &fragment.frame(), reason::DROP_FRAGMENT);

    let mut long = tcp6_syn(client, vip);
    long.ext = vec![(NEXT_DEST_OPTS, vec![]); 5];
    dropped(&mut h, &long.frame(), reason::DROP_BAD_EXTENSION);

    let mut routed = tcp6_syn(client, vip);
    routed.ext = vec![(NEXT_ROUTING, vec![4, 1])]; // segments left: 1
    dropped(&mut h, &routed.frame(), reason::DROP_BAD_EXTENSION);

    let unknown = Ipv6::new(
        *client.ip(),
        *vip.ip(),
        L4::Raw {
            protocol: 253,
            bytes: vec![0; 8],
        },
    );
    dropped(&mut h, &unknown.frame(), reason::DROP_BAD_EXTENSION);

    let mut truncated = tcp6_syn(client, vip);
    truncated.payload_len = Some(400);
    dropped(&mut h, &truncated.frame(), reason::DROP_BAD_IP_HEADER);

    let mut chain_past_the_end = tcp6_syn(client, vip);
    chain_past_the_end.ext = vec![(NEXT_DEST_OPTS, vec![0; 60])];
    chain_past_the_end.payload_len = Some(40);
    dropped(
        &mut h,
        &chain_past_the_end.frame(),
        reason::DROP_BAD_EXTENSION,
    );

    let mut version4 = tcp6_syn(client, vip);
    version4.version = Some(4);
    dropped(&mut h, &version4.frame(), reason::DROP_BAD_IP_HEADER);
}

#[test]
fn traffic_not_to_a_vip_port_passes_untouched() {
    let Some(mut h) = harness() else { return };
    let other = tcp6_syn(sock(ip6(0x102), 41004), sock(ip6(0x98), 22));
    passed_untouched(&mut h, &other.frame(), reason::PASS_NOT_VIP);
    // A malformed packet not to a VIP is the host's: no walk, no judgement.
    let mut fragment = tcp6_syn(sock(ip6(0x102), 41004), sock(ip6(0x98), 22));
    fragment.ext = vec![(NEXT_FRAGMENT, vec![0, 1, 0, 0, 0, 1])];
    passed_untouched(&mut h, &fragment.frame(), reason::PASS_NOT_VIP);
    // Neighbour solicitation to the VIP (unicast reachability probe): the kernel's.
    let mut target = [0u8; 16];
    target.copy_from_slice(&ip6(0x100).octets());
    let ns = icmp6(ip6(0x102), ip6(0x100), 135, [0; 4], &target);
    passed_untouched(&mut h, &ns.frame(), reason::PASS_VIP_OTHER);
    // A VIP port without a service, not a reply either.
    let closed = tcp6_syn(sock(ip6(0x102), 41005), sock(ip6(0x100), 9999));
    passed_untouched(&mut h, &closed.frame(), reason::PASS_VIP_OTHER);
}

#[test]
fn echo_requests_to_a_vip_are_answered() {
    let Some(mut h) = harness() else { return };
    let ping = icmp6(ip6(0x107), ip6(0x100), 128, [0, 9, 0, 1], b"ping6");
    let (frame, ip) = transmitted(&mut h, &ping.frame());
    assert_eq!((ip.src, ip.dst), (ip6(0x100), ip6(0x107)));
    let L4::Icmp(Icmp {
        icmp_type,
        rest,
        payload,
        ..
    }) = &ip.l4
    else {
        panic!("not ICMPv6")
    };
    assert_eq!(
        (*icmp_type, *rest, payload.as_slice()),
        (129, [0, 9, 0, 1], &b"ping6"[..])
    );
    assert_eq!(frame.eth_dst, lab_mac6(ip6(0x107)));
    assert_eq!(h.reason(reason::TX_ICMP_ECHO).unwrap(), 1);
}

#[test]
fn syns_without_a_healthy_backend_get_a_rst() {
    let Some(mut h) = harness() else { return };
    let client = sock(ip6(0x108), 41006);
    let (_, ip) = transmitted(&mut h, &tcp6_syn(client, sock(ip6(0x100), 7443)).frame());
    let (sport, dport, flags) = tcp_ports(&ip);
    assert_eq!((ip.src, sport), (ip6(0x100), 7443));
    assert_eq!((ip.dst, dport), (*client.ip(), client.port()));
    assert_eq!(flags, TCP_RST | TCP_ACK);
    assert!(ip.ext.is_empty());
    assert_eq!(h.reason(reason::TX_RESET).unwrap(), 1);
}

#[test]
fn a_flow_pinned_to_a_backend_that_went_down_gets_a_rst() {
    let Some(mut h) = harness() else { return };
    let client = sock(ip6(0x109), 41007);
    let vip = sock(ip6(0x100), 6443);
    let (_, ip) = transmitted(&mut h, &tcp6_syn(client, vip).frame());
    let backend = ip.dst;
    let mut specs = services();
    for b in &mut specs[0].backends {
        if b.address.ip() == backend {
            b.state = BackendState::Down;
        }
    }
    h.apply(&specs).unwrap();
    // With extension headers: the RST follows the fixed header.
    let mut data = tcp6(client, vip, TCP_ACK);
    data.ext = vec![(NEXT_DEST_OPTS, vec![])];
    let (_, ip) = transmitted(&mut h, &data.frame());
    let (_, _, flags) = tcp_ports(&ip);
    assert_eq!(flags, TCP_RST);
    assert!(ip.ext.is_empty(), "a bare RST");
    assert_eq!((ip.src, ip.dst), (ip6(0x100), *client.ip()));
}

#[test]
fn packet_too_big_reaches_the_flows_backend_translated() {
    let Some(mut h) = harness() else { return };
    let client = sock(ip6(0x102), 41008);
    let vip = sock(ip6(0x100), 6443);
    let (_, fwd) = transmitted(&mut h, &tcp6_syn(client, vip).frame());
    let (backend, snat_port) = (fwd.dst, tcp_ports(&fwd).0);
    // A router on the way to the client quotes what we sent it: VIP:6443 → client.
    let quoted = tcp6(vip, client, TCP_ACK).to_bytes();
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
    let ptb = icmp6(router, ip6(0x100), 2, 1280u32.to_be_bytes(), &quoted);
    let (frame, ip) = transmitted(&mut h, &ptb.frame());
    assert_eq!((ip.src, ip.dst), (router, backend), "to the flow's backend");
    assert_eq!(frame.eth_dst, lab_mac6(backend));
    let L4::Icmp(icmp) = &ip.l4 else {
        panic!("not ICMPv6")
    };
    assert_eq!((icmp.icmp_type, icmp.rest), (2, 1280u32.to_be_bytes()));
    let inner = Ipv6::parse(&icmp.payload).unwrap();
    assert_eq!(
        (inner.src, inner.dst),
        (backend, ip6(0x100)),
        "quoted as the backend sent it"
    );
    let (sport, dport, _) = tcp_ports(&inner);
    assert_eq!((sport, dport), (6443, snat_port));
    assert_eq!(h.reason(reason::TX_ICMP_TO_BACKEND).unwrap(), 1);
}

/// Flow sync (issue 20): an IPv6 flow is reported once, with its 16-byte addresses, as the
/// program recorded it.
#[test]
fn new_ipv6_flows_are_reported_for_flow_sync() {
    let Some(mut h) = harness() else { return };
    h.update_globals(|g| g.flow_sync = k3s_xdp_common::FLOW_SYNC_ON)
        .unwrap();
    let client = sock(ip6(0x102), 42000);
    let vip = sock(ip6(0x100), 6443);
    transmitted(&mut h, &tcp6_syn(client, vip).frame());
    transmitted(&mut h, &tcp6(client, vip, TCP_ACK).frame());
    let events = h.dataplane.drain_flow_events(10).unwrap();
    let [FlowEventOf::V6(e)] = events[..] else {
        panic!("one IPv6 event: {events:?}")
    };
    assert_eq!((e.op, e.family), (k3s_xdp_common::FLOW_EVENT_NEW, 6));
    assert_eq!(v6_bytes(e.key.src), client.ip().octets());
    assert_eq!(v6_bytes(e.key.dst), vip.ip().octets());
    assert_eq!(
        (u16::from_be(e.key.sport), u16::from_be(e.key.dport)),
        (42000, 6443)
    );
    assert_ne!(e.flow.snat_port, 0);

    // The client's FIN, then the backend's: its closing is reported once, with the IPv6
    // reverse tuple, whose translation names the connection for the peers.
    let (fwd, ip) = transmitted(&mut h, &tcp6(client, vip, TCP_FIN | TCP_ACK).frame());
    let _ = fwd;
    let (backend, snat_port) = (ip.dst, tcp_ports(&ip).0);
    assert!(h.dataplane.drain_flow_events(10).unwrap().is_empty());
    let mut fin = tcp6(
        sock(backend, 6443),
        sock(ip6(0x100), snat_port),
        TCP_FIN | TCP_ACK,
    )
    .frame();
    fin.eth_src = lab_mac6(backend);
    transmitted(&mut h, &fin);
    transmitted(&mut h, &fin);
    let events = h.dataplane.drain_flow_events(10).unwrap();
    let [FlowEventOf::V6(closed)] = events[..] else {
        panic!("one IPv6 event: {events:?}")
    };
    assert_eq!(closed.op, k3s_xdp_common::FLOW_EVENT_CLOSED);
    assert_eq!(v6_bytes(closed.key.src), backend.octets());
    assert_eq!(u16::from_be(closed.key.dport), snat_port);
    let slot = h
        .dataplane
        .flow_tables()
        .unwrap()
        .translation6(&closed.key)
        .expect("the translation, closed");
    assert!(slot.nat().closed());
    assert_eq!(v6_bytes(slot.nat().client_addr), client.ip().octets());
}

/// The SYN flood guard over IPv6: a source is known once its handshake completed; forged
/// sources past the threshold get the budget only.
#[test]
fn the_syn_flood_guard_admits_known_ipv6_sources_first() {
    let Some(mut h) = harness() else { return };
    k3s_xdp_tests::bpf::stay_on_cpu_0();
    h.dataplane
        .write_syn_guard(&k3s_xdp_common::guard::SynGuard {
            threshold: 3,
            admit: 1,
        })
        .unwrap();
    h.set_clock(20).unwrap();
    let vip = sock(ip6(0x100), 6443);
    let client = sock(ip6(0x107), 42000);
    transmitted(&mut h, &tcp6_syn(client, vip).frame());
    transmitted(&mut h, &tcp6(client, vip, TCP_ACK).frame());

    // Forged sources in other /64s: 2 more make the threshold, 1 admitted, the rest dropped.
    let forged = |i: u16| sock(Ipv6Addr::new(0x2001, 0xdb8, 0xf, i, 0, 0, 0, 1), 1000 + i);
    let fates: Vec<u32> = (0..8)
        .map(|i| run(&mut h, &tcp6_syn(forged(i), vip).frame()).action)
        .collect();
    assert_eq!(
        fates,
        [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP, XDP_DROP, XDP_DROP, XDP_DROP]
    );
    assert_eq!(h.reason(reason::DROP_SYN_FLOOD).unwrap(), 5);
    // The known client still connects.
    transmitted(&mut h, &tcp6_syn(sock(ip6(0x107), 42001), vip).frame());
    assert!(h.dataplane.known_sources().unwrap() >= 1);
}

/// Four IPv6 flows in one bucket of the flow table (all its ways): two of one client on
/// other ports, two of other clients on the same ports as the first. The lookup tells ways
/// apart by their ports first, then by the whole key: each flow's next packet finds its own
/// entry (its backend and SNAT port, no new flow), including those whose ports are another's.
#[test]
fn ipv6_flows_sharing_a_bucket_each_find_their_own_entry() {
    let Some(mut h) = harness() else { return };
    let vip = sock(ip6(0x100), 6443);
    let bucket = |c: SocketAddrV6| flow_bucket(&h, c, vip);
    let first = sock(ip6(0x200), 30000);
    let target = bucket(first);
    let other_port = (30001..65000)
        .map(|p| sock(ip6(0x200), p))
        .find(|&c| bucket(c) == target)
        .expect("a port of the same client in the bucket");
    let same_ports: Vec<SocketAddrV6> = (0..=u16::MAX)
        .map(|x| sock(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, x), 30000))
        .filter(|&c| bucket(c) == target)
        .take(2)
        .collect();
    assert_eq!(
        same_ports.len(),
        2,
        "two other clients on port 30000 in the bucket"
    );
    let clients = [first, other_port, same_ports[0], same_ports[1]];

    let mut chosen = Vec::new();
    for &c in &clients {
        let (_, ip) = transmitted(&mut h, &tcp6_syn(c, vip).frame());
        chosen.push((ip.dst, tcp_ports(&ip).0));
    }
    let mut ports: Vec<u16> = chosen.iter().map(|c| c.1).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4, "each flow its own SNAT port: {chosen:?}");
    let slot = h.publisher.service_slot("api6").unwrap();
    let made = h.dataplane.service_traffic(slot).unwrap().new_flows;
    // The next packets, last flow first: each finds its own entry.
    for (c, want) in clients.iter().zip(&chosen).rev() {
        let (_, ip) = transmitted(&mut h, &tcp6(*c, vip, TCP_ACK).frame());
        assert_eq!((ip.dst, tcp_ports(&ip).0), *want, "client {c}");
    }
    assert_eq!(
        h.dataplane.service_traffic(slot).unwrap().new_flows,
        made,
        "no flow chose again"
    );
}

/// One client port to two services of one VIP (nat 6443 and dsr 80), both flows in one
/// bucket: an IPv6 flow slot keeps the service's slot in place of the VIP, port and protocol,
/// and each flow's next packet finds its own entry, never the other service's.
#[test]
fn one_client_port_to_two_ipv6_services_keeps_two_flows() {
    let Some(mut h) = harness() else { return };
    let (api, web) = (sock(ip6(0x100), 6443), sock(ip6(0x100), 80));
    let bucket = |c: SocketAddrV6, vip: SocketAddrV6| flow_bucket(&h, c, vip);
    let client = (30000..65000)
        .map(|p| sock(ip6(0x300), p))
        .find(|&c| bucket(c, api) == bucket(c, web))
        .expect("a client port whose two flows share a bucket");
    let slots = [
        h.publisher.service_slot("api6").unwrap(),
        h.publisher.service_slot("web6").unwrap(),
    ];
    let (_, to_api) = transmitted(&mut h, &tcp6_syn(client, api).frame());
    let (web_frame, to_web) = transmitted(&mut h, &tcp6_syn(client, web).frame());
    let api_flow = (to_api.dst, tcp_ports(&to_api).0);
    assert_eq!(
        tcp_ports(&to_web).0,
        client.port(),
        "dsr keeps the client's port"
    );
    let made = slots.map(|s| h.dataplane.service_traffic(s).unwrap().new_flows);
    for _ in 0..2 {
        let (frame, _) = transmitted(&mut h, &tcp6(client, web, TCP_ACK).frame());
        assert_eq!(
            frame.eth_dst, web_frame.eth_dst,
            "the dsr flow keeps its backend"
        );
        let (_, ip) = transmitted(&mut h, &tcp6(client, api, TCP_ACK).frame());
        assert_eq!(
            (ip.dst, tcp_ports(&ip).0),
            api_flow,
            "the nat flow keeps its own"
        );
    }
    assert_eq!(
        slots.map(|s| h.dataplane.service_traffic(s).unwrap().new_flows),
        made,
        "no flow chose again"
    );
}

/// Flow sync's bulk and refresh read IPv6 flows back from the table, whose slots keep the
/// service's slot in place of the VIP, port and protocol: the published services name it
/// again, the key is whole, and a peer that installs the flow sends the client's next packet
/// on to the same backend from the same SNAT port, choosing nothing.
#[test]
fn live_ipv6_flows_are_named_again_for_a_peers_bulk() {
    use k3s_xdp::dataplane::Role;
    let Some(mut a) = harness() else { return };
    let mut b = harness().unwrap();
    let (dir_a, dir_b) = (a.directory(&services()), b.directory(&services()));
    a.set_clock(100).unwrap();
    let (client, vip) = (sock(ip6(0x104), 43000), sock(ip6(0x100), 6443));
    let (_, first) = transmitted(&mut a, &tcp6_syn(client, vip).frame());
    // Confirmed: a bulk carries confirmed flows only.
    transmitted(&mut a, &tcp6(client, vip, TCP_ACK).frame());
    let tables = a.dataplane.flow_tables().unwrap();
    let live = tables.live(100, 60, &|s| dir_a.service_tuple(s));
    let [FlowEventOf::V6(e)] = live[..] else {
        panic!("one IPv6 flow: {live:?}")
    };
    assert_eq!(v6_bytes(e.key.src), client.ip().octets());
    assert_eq!(v6_bytes(e.key.dst), vip.ip().octets());
    assert_eq!(
        (
            u16::from_be(e.key.sport),
            u16::from_be(e.key.dport),
            e.key.protocol
        ),
        (43000, 6443, k3s_xdp_common::IPPROTO_TCP)
    );
    assert!(
        tables.live(100, 60, &|_| None).is_empty(),
        "a flow of a service nobody names is left out"
    );
    let entry = dir_a.outgoing(&live[0]).expect("named for the peers");
    assert_eq!(entry.backend.ip(), first.dst);
    let install = dir_b.incoming(&entry).expect("placed on the peer");
    b.set_clock(100).unwrap();
    let done = b.dataplane.install(&[install], 100, Role::Serving).unwrap();
    assert_eq!((done.flows, done.conflicts), (1, 0), "{done:?}");
    let slot = b.publisher.service_slot("api6").unwrap();
    let made = b.dataplane.service_traffic(slot).unwrap().new_flows;
    let (_, ip) = transmitted(&mut b, &tcp6(client, vip, TCP_ACK).frame());
    assert_eq!(
        (ip.dst, tcp_ports(&ip).0),
        (first.dst, tcp_ports(&first).0),
        "the peer sends it on as the node that saw its SYN"
    );
    assert_eq!(b.dataplane.service_traffic(slot).unwrap().new_flows, made);
}

/// A new IPv6 flow that takes over a closed translation (the same backend and first SNAT port)
/// removes the old client's flow entry with it, found through the translation's service slot:
/// left, it would send that client's packets on with a SNAT port now another's.
#[test]
fn taking_over_an_ipv6_translation_removes_its_old_flow() {
    use k3s_xdp_common::{
        address::v6_words,
        hash::{flow_hash, probe, reduce, snat_hash},
        FlowKey, IPPROTO_TCP,
    };
    let Some(mut h) = harness() else { return };
    let dir = h.directory(&services());
    let vip = sock(ip6(0x100), 6443);
    let key = |c: SocketAddrV6| FlowKey {
        src: v6_words(c.ip().octets()),
        dst: v6_words(vip.ip().octets()),
        sport: c.port().to_be(),
        dport: vip.port().to_be(),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    // Where a new flow of `c` goes first: its Maglev entry, and the first SNAT port it tries.
    let slot = h.publisher.service_slot("api6").unwrap();
    let table = h.publisher.published_table(slot).to_vec();
    let first_try = |c: SocketAddrV6| {
        let k = key(c);
        (
            table[reduce(flow_hash(&k), table.len() as u32) as usize],
            reduce(probe(snat_hash(&k), 0), 65535 - 1024 + 1),
        )
    };
    let a = sock(ip6(0x105), 41000);
    let b = (0x106..0x120)
        .flat_map(|last| (1024..=65535).map(move |p| sock(ip6(last), p)))
        .find(|&c| first_try(c) == first_try(a))
        .expect("a client whose new flow tries a's backend and SNAT port first");
    h.set_clock(100).unwrap();
    let (_, to_a) = transmitted(&mut h, &tcp6_syn(a, vip).frame());
    transmitted(&mut h, &tcp6(a, vip, TCP_ACK).frame());
    transmitted(&mut h, &tcp6(a, vip, TCP_RST | TCP_ACK).frame());
    let live = |h: &XdpHarness| -> Vec<FlowKey<_>> {
        let tables = h.dataplane.flow_tables().unwrap();
        tables
            .live(100, 60, &|s| dir.service_tuple(s))
            .into_iter()
            .filter_map(|e| match e {
                FlowEventOf::V6(e) => Some(e.key),
                FlowEventOf::V4(_) => None,
            })
            .collect()
    };
    assert_eq!(
        live(&h),
        [key(a)],
        "a's flow, closed, stays until taken over"
    );
    let (_, to_b) = transmitted(&mut h, &tcp6_syn(b, vip).frame());
    assert_eq!(
        (to_b.dst, tcp_ports(&to_b).0),
        (to_a.dst, tcp_ports(&to_a).0),
        "b took a's translation over"
    );
    assert!(live(&h).is_empty(), "a's flow went with its translation");
}

/// A peer's word that an IPv6 translation closed (flow sync) adds its bits and keeps the rest:
/// the hop toward the client its first reply resolved stays cached. The client's neighbour
/// is deleted after that reply: the backend's next reply still leaves from XDP, through the
/// cached hop, where a fresh lookup would find no neighbour and pass it to the kernel.
#[test]
fn a_peers_close_keeps_the_cached_hop_toward_the_ipv6_client() {
    use k3s_xdp_common::{address::v6_words, FlowKey, IPPROTO_TCP, NAT_CLIENT_FIN};
    let Some(mut h) = harness() else { return };
    let dir = h.directory(&services());
    h.set_clock(100).unwrap();
    let (client, vip) = (sock(ip6(0x107), 42500), sock(ip6(0x100), 6443));
    let (_, ip) = transmitted(&mut h, &tcp6_syn(client, vip).frame());
    let (backend, snat_port) = (ip.dst, tcp_ports(&ip).0);
    transmitted(&mut h, &tcp6(client, vip, TCP_ACK).frame());
    let reply = |flags| {
        let mut f = tcp6(sock(backend, 6443), sock(ip6(0x100), snat_port), flags).frame();
        f.eth_src = lab_mac6(backend);
        f
    };
    let (back, _) = transmitted(&mut h, &reply(TCP_ACK));
    assert_eq!(back.eth_dst, lab_mac6(*client.ip()));
    h.lab
        .as_ref()
        .unwrap()
        .ns
        .ip([
            "-6",
            "neigh",
            "del",
            &client.ip().to_string(),
            "dev",
            "eth1",
        ])
        .unwrap();

    let rkey = FlowKey {
        src: v6_words(backend.octets()),
        dst: v6_words(ip6(0x100).octets()),
        sport: 6443u16.to_be(),
        dport: snat_port.to_be(),
        protocol: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let mut tables = h.dataplane.flow_tables().unwrap();
    let held = tables.translation6(&rkey).expect("the translation");
    let entry = dir.closed(&rkey, &held.nat()).expect("named for the peers");
    let install = dir.incoming(&entry).expect("placed");
    assert_eq!(tables.close(&[(install, NAT_CLIENT_FIN as u8)], 101), 1);
    let closed = tables.translation6(&rkey).expect("still held");
    assert_eq!(closed.closing & NAT_CLIENT_FIN as u8, NAT_CLIENT_FIN as u8);
    assert_eq!(closed.hop, 1, "its hop kept");

    let (back, ip) = transmitted(&mut h, &reply(TCP_FIN | TCP_ACK));
    assert_eq!(
        back.eth_dst,
        lab_mac6(*client.ip()),
        "through the cached hop"
    );
    assert_eq!((ip.dst, tcp_ports(&ip).1), (*client.ip(), client.port()));
}
