//! Fuzzing the real XDP program through BPF_PROG_TEST_RUN: more than 100,000 random and mutated
//! packets (every truncation of a valid SYN, every IHL and version, IP options, zero and huge
//! lengths, VLAN tags, fragments, TCP data offsets, flag soup, byte flips, random bytes).
//!
//! Invariants, checked on every packet:
//! - the verdict is XDP_PASS, XDP_DROP or XDP_TX (never XDP_ABORTED, never a redirect here);
//! - a passed frame is untouched;
//! - a transmitted frame was produced from a well-formed, unfragmented IPv4 packet addressed to
//!   a VIP with a valid header checksum; its own IPv4 checksum is valid, and its TCP/UDP/ICMP
//!   checksum is valid exactly when the input's was (the program updates checksums
//!   incrementally: it preserves correctness, it does not verify payloads);
//! - every packet is counted under exactly one reason.
//!
//! The same for IPv6 (`ipv6_hostile_packets`): every truncation, extension-header chains of
//! every length and kind, fragments, bad versions and payload lengths, next-header soup, byte
//! flips; a transmitted frame came from a well-formed IPv6 packet to a VIP whose chain the
//! program walks (at most four hop-by-hop, destination-options or routing headers without
//! segments left, then TCP, UDP or ICMPv6).
//!
//! The seed is fixed (reproducible); set `K3S_XDP_FUZZ_SEED` to explore others.
//! `K3S_XDP_FUZZ_PACKETS` asks for more packets per family (`cargo xtask fuzz bpf` sends a
//! million each).

use k3s_xdp::{
    config::{Mode, OnBackendDown, Protocol},
    dataplane::{BackendSpec, BackendState, ServiceSpec},
};
use k3s_xdp_common::reason;
use k3s_xdp_tests::{
    bpf::{action_name, have_root, XdpHarness, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{self, checksums_ok, ip_checksum_ok, Frame, TCP_ACK, TCP_SYN},
    packet6::{self, verify_checksums6, Ipv6},
};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

const CONFIG: &str = r#"
interface = "eth1"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
snat_source = ["vip", "192.0.2.7"]
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-2", address = "192.0.2.51:6443" },
]
[[service]]
name = "dns"
vip = "192.0.2.100"
port = 53
protocol = "udp"
backends = [{ name = "server-3", address = "192.0.2.52:53" }]
[[service]]
name = "dsr"
vip = "192.0.2.200"
port = 6443
mode = "dsr"
backends = [{ name = "server-4", address = "192.0.2.53:6443" }]
"#;

const VIPS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 200)];
/// The address of k3s-api's SNAT pool that is no VIP: only replies to translations are the
/// program's; everything else to it is the host's and passes.
const POOL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn sock(a: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), port)
}

/// Valid packets of every kind the program handles, to mutate.
fn seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let client = sock([192, 0, 2, 101], 30000 + rng.below(30000) as u16);
    let mut out = vec![
        packet::tcp_syn(client, sock([192, 0, 2, 100], 6443)),
        packet::tcp(client, sock([192, 0, 2, 100], 6443), TCP_ACK),
        packet::tcp_syn(client, sock([192, 0, 2, 200], 6443)),
        packet::udp(client, sock([192, 0, 2, 100], 53), b"query"),
        packet::icmp_echo(*client.ip(), VIPS[0], 1, 2, b"ping"),
        packet::tcp(
            sock([192, 0, 2, 50], 6443),
            sock([192, 0, 2, 100], 40000),
            TCP_SYN | TCP_ACK,
        ),
        packet::tcp_syn(client, sock([192, 0, 2, 98], 22)),
        packet::tcp(
            sock([192, 0, 2, 50], 6443),
            sock(POOL.octets(), 40000),
            TCP_SYN | TCP_ACK,
        ),
        packet::tcp_syn(client, sock(POOL.octets(), 22)),
    ];
    let mut tagged = out[0].clone();
    tagged.vlan = Some(rng.below(4095) as u16);
    out.push(tagged);
    out.iter().map(Frame::to_bytes).collect()
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut p = base.to_vec();
    let ip = if p.len() > 17 && p[12] == 0x81 {
        18
    } else {
        14
    };
    match rng.below(12) {
        // Truncation anywhere (at least an Ethernet header: the kernel's minimum).
        0 => p.truncate(14 + rng.below(p.len() as u64 - 13) as usize),
        // Any version/IHL byte.
        1 => {
            if p.len() > ip {
                p[ip] = rng.byte();
            }
        }
        // Total length: zero, tiny, huge, random.
        2 => {
            if p.len() > ip + 3 {
                let v: u16 = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(20) as u16,
                    2 => 0xffff,
                    _ => rng.next() as u16,
                };
                p[ip + 2..ip + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        // Fragment flags and offsets.
        3 => {
            if p.len() > ip + 7 {
                p[ip + 6] = rng.byte() & 0x3f;
                p[ip + 7] = rng.byte();
            }
        }
        // IP options: grow IHL and insert option bytes (valid lengths or garbage).
        4 => {
            if p.len() > ip + 20 {
                let words = 1 + rng.below(10) as usize;
                let opts: Vec<u8> = (0..words * 4).map(|_| rng.byte()).collect();
                p.splice(ip + 20..ip + 20, opts);
                p[ip] = 0x40 | (5 + words as u8);
                let tot =
                    u16::from_be_bytes([p[ip + 2], p[ip + 3]]).saturating_add((words * 4) as u16);
                p[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
            }
        }
        // TCP data offset and flags.
        5 => {
            let l4 = ip + 20;
            if p.len() > l4 + 13 {
                p[l4 + 12] = rng.byte();
                p[l4 + 13] = rng.byte();
            }
        }
        // VLAN tags: add one or two.
        6 => {
            let tags = 1 + rng.below(2) as usize;
            for _ in 0..tags {
                p.splice(12..12, [0x81, 0x00, rng.byte() & 0x0f, rng.byte()]);
            }
        }
        // Protocol byte.
        7 => {
            if p.len() > ip + 9 {
                p[ip + 9] = [1, 6, 17, 0, 112, 255][rng.below(6) as usize];
            }
        }
        // Random byte flips.
        8 | 9 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(p.len() as u64) as usize;
                p[i] = rng.byte();
            }
        }
        // Random bytes after a valid Ethernet header (IPv4 ethertype).
        10 => {
            let len = rng.below(120) as usize;
            p.truncate(14);
            p[12] = 0x08;
            p[13] = 0x00;
            p.extend((0..len).map(|_| rng.byte()));
        }
        // Trailing garbage (Ethernet padding or worse).
        _ => p.extend((0..rng.below(64)).map(|_| rng.byte())),
    }
    p
}

/// Whether `bytes` is a well-formed, unfragmented IPv4 packet to a VIP (or to the SNAT pool's
/// address, where only such a packet can be a translation's reply), judged independently of
/// the program.
fn valid_vip_packet(bytes: &[u8]) -> bool {
    valid_packet_to(bytes, &[VIPS[0], VIPS[1], POOL])
}

/// Whether `bytes` is an IPv4 packet to the SNAT pool's address, valid or not.
fn to_pool(bytes: &[u8]) -> bool {
    Frame::parse(bytes)
        .ok()
        .and_then(|f| f.ip().map(|ip| ip.dst == POOL))
        .unwrap_or(false)
}

fn valid_packet_to(bytes: &[u8], to: &[Ipv4Addr]) -> bool {
    let Ok(frame) = Frame::parse(bytes) else {
        return false;
    };
    let Some(ip) = frame.ip() else { return false };
    if !ip_checksum_ok(bytes) {
        return false;
    }
    if ip.more_fragments || ip.fragment_offset != 0 || !to.contains(&ip.dst) {
        return false;
    }
    match &ip.l4 {
        packet::L4::Tcp(t) => t.data_offset.unwrap_or(0) >= 5,
        packet::L4::Udp(_) | packet::L4::Icmp(_) => true,
        packet::L4::Raw { .. } => false,
    }
}

/// What every output must satisfy, for one family.
struct Invariants {
    /// Whether an input may be transmitted: well-formed, to a VIP, walkable.
    valid: fn(&[u8]) -> bool,
    /// Whether an output's IP header is right (IPv4: its checksum; IPv6 has none).
    header_ok: fn(&[u8]) -> bool,
    /// Whether a frame's checksums are right, recomputed from scratch.
    checksums_ok: fn(&[u8]) -> bool,
    /// Frames passed changed so far (see `check`).
    handed_to_kernel: std::cell::RefCell<u64>,
}

impl Invariants {
    /// Runs `input` and checks the verdict and output; returns the verdict (`None` for frames
    /// shorter than an Ethernet header, which the kernel never hands over).
    fn check(
        &self,
        h: &mut XdpHarness,
        input: &[u8],
        runs: &mut u64,
        actions: &mut [u64; 5],
    ) -> Option<u32> {
        if input.len() < 14 {
            return None;
        }
        let out = h.run(input).expect("BPF_PROG_TEST_RUN");
        *runs += 1;
        match out.action {
            // A frame answered or translated for a next hop without a resolved neighbour goes
            // to the kernel, which resolves it (counted as pass_no_neighbour): the only pass
            // that changes a frame, and then it is held to the transmitted frames' rules.
            XDP_PASS if out.data != input => {
                *self.handed_to_kernel.borrow_mut() += 1;
                assert_eq!(
                    h.reason(reason::PASS_NO_NEIGHBOUR).unwrap(),
                    *self.handed_to_kernel.borrow(),
                    "a passed frame was changed, not as pass_no_neighbour: {input:02x?}"
                );
                self.transmitted(input, &out.data);
            }
            XDP_PASS => {}
            XDP_DROP => {}
            XDP_TX => self.transmitted(input, &out.data),
            other => panic!("unexpected verdict {} for {input:02x?}", action_name(other)),
        }
        actions[out.action as usize] += 1;
        Some(out.action)
    }

    /// The rules of a frame the program sent (or answered and handed to the kernel).
    fn transmitted(&self, input: &[u8], out: &[u8]) {
        assert!(
            (self.valid)(input),
            "transmitted something that was not a valid VIP packet: {input:02x?}"
        );
        assert!(
            (self.header_ok)(out),
            "transmitted frame with a bad IP header: in {input:02x?} out {out:02x?}"
        );
        assert_eq!(
            (self.checksums_ok)(out),
            (self.checksums_ok)(input),
            "checksum validity not preserved: in {input:02x?} out {out:02x?}"
        );
    }
}

fn fuzz_seed() -> u64 {
    std::env::var("K3S_XDP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b33_7864_6675_7a7a_u64)
}

/// Packets per family: 100,000, or more with `K3S_XDP_FUZZ_PACKETS`.
fn packets() -> u64 {
    const USUAL: u64 = 100_000;
    match std::env::var("K3S_XDP_FUZZ_PACKETS") {
        Ok(n) => n
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("K3S_XDP_FUZZ_PACKETS={n}: expected a number of packets"))
            .max(USUAL),
        Err(_) => USUAL,
    }
}

#[test]
fn a_hundred_thousand_hostile_packets() {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return;
    }
    let seed = fuzz_seed();
    let packets = packets();
    let started = std::time::Instant::now();
    let mut rng = Rng(seed | 1);
    let mut h = XdpHarness::with_config_in_lab(CONFIG).expect("harness");
    let mut runs = 0u64;
    let mut actions = [0u64; 5];
    let ipv4 = Invariants {
        valid: valid_vip_packet,
        header_ok: ip_checksum_ok,
        checksums_ok,
        handed_to_kernel: Default::default(),
    };
    let mut check = |h: &mut XdpHarness, input: &[u8], runs: &mut u64| {
        let Some(action) = ipv4.check(h, input, runs, &mut actions) else {
            return;
        };
        if to_pool(input) && !valid_vip_packet(input) {
            assert_eq!(
                action, XDP_PASS,
                "a malformed packet to the SNAT pool's address is the host's: {input:02x?}"
            );
        }
    };
    // Every truncation of a valid SYN, tagged and untagged.
    for base in seeds(&mut rng) {
        for len in 14..=base.len() {
            check(&mut h, &base[..len], &mut runs);
        }
    }
    // Every version/IHL combination on a SYN to the VIP.
    let syn = seeds(&mut rng)[0].clone();
    for vihl in 0..=255u8 {
        let mut p = syn.clone();
        p[14] = vihl;
        check(&mut h, &p, &mut runs);
    }
    // Random mutations, sometimes stacked.
    while runs < packets {
        let bases = seeds(&mut rng);
        let base = &bases[rng.below(bases.len() as u64) as usize];
        let mut p = mutate(&mut rng, base);
        for _ in 0..rng.below(3) {
            if p.len() > 14 {
                p = mutate(&mut rng, &p);
            }
        }
        check(&mut h, &p, &mut runs);
    }

    let counted: u64 = h.reasons().unwrap().values().sum();
    assert_eq!(
        counted, runs,
        "every packet counted under exactly one reason"
    );
    assert!(
        actions[XDP_TX as usize] > 1000,
        "the fuzz reached the forwarding paths: {actions:?}"
    );
    assert!(
        actions[XDP_DROP as usize] > 1000,
        "and the drop paths: {actions:?}"
    );
    eprintln!(
        "{runs} packets in {:.1?}: {actions:?} (aborted, drop, pass, tx, redirect); seed {seed:#x}",
        started.elapsed()
    );
}

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const DSR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);

/// VIP6: TCP 6443 (nat) and UDP 53 (nat); DSR6: TCP 6443 (dsr).
fn services6() -> Vec<ServiceSpec> {
    let backend = |last: u16, port: u16| BackendSpec {
        name: format!("server-{last:x}"),
        address: SocketAddrV6::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last),
            port,
            0,
            0,
        )
        .into(),
        state: BackendState::Up,
        weight: 100,
    };
    let service = |name: &str, vip: Ipv6Addr, port: u16, protocol, mode, backends| ServiceSpec {
        name: name.into(),
        vip: vip.into(),
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
            VIP6,
            6443,
            Protocol::Tcp,
            Mode::Nat,
            vec![backend(0x50, 6443), backend(0x51, 6443)],
        ),
        service(
            "dns6",
            VIP6,
            53,
            Protocol::Udp,
            Mode::Nat,
            vec![backend(0x52, 53)],
        ),
        service(
            "dsr6",
            DSR6,
            6443,
            Protocol::Tcp,
            Mode::Dsr,
            vec![backend(0x53, 6443)],
        ),
    ]
}

fn sock6(last: u16, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last),
        port,
        0,
        0,
    )
}

/// Valid IPv6 packets of every kind the program handles, with and without extension headers.
fn seeds6(rng: &mut Rng) -> Vec<Vec<u8>> {
    let client = sock6(0x101, 30000 + rng.below(30000) as u16);
    let mut with_ext = packet6::tcp6_syn(client, sock6(0x100, 6443));
    with_ext.ext = vec![
        (packet6::NEXT_HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0]),
        (packet6::NEXT_DEST_OPTS, vec![]),
    ];
    let out = [
        packet6::tcp6_syn(client, sock6(0x100, 6443)),
        packet6::tcp6(client, sock6(0x100, 6443), TCP_ACK),
        packet6::tcp6_syn(client, sock6(0x200, 6443)),
        packet6::udp6(client, sock6(0x100, 53), b"query"),
        packet6::icmp6(*client.ip(), VIP6, 128, [0, 1, 0, 2], b"ping"),
        packet6::tcp6(sock6(0x50, 6443), sock6(0x100, 40000), TCP_SYN | TCP_ACK),
        packet6::tcp6_syn(client, sock6(0x98, 22)),
        with_ext,
    ];
    out.iter().map(|ip| ip.frame().to_bytes()).collect()
}

/// Extension headers as they may come: 0 to 7 of any kind a chain can hold (hop-by-hop,
/// routing with or without segments left, destination options, fragment), of random lengths.
fn chain(rng: &mut Rng) -> Vec<(u8, Vec<u8>)> {
    (0..rng.below(8))
        .map(|_| {
            let kind = [
                packet6::NEXT_HOP_BY_HOP,
                packet6::NEXT_ROUTING,
                packet6::NEXT_DEST_OPTS,
                packet6::NEXT_FRAGMENT,
            ][rng.below(4) as usize];
            let body: Vec<u8> = (0..rng.below(30)).map(|_| rng.byte() & 0x03).collect();
            (kind, body)
        })
        .collect()
}

fn mutate6(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    const IP: usize = 14;
    let mut p = base.to_vec();
    match rng.below(10) {
        0 => p.truncate(14 + rng.below(p.len() as u64 - 13) as usize),
        // Version, traffic class.
        1 => p[IP] = rng.byte(),
        // Payload length: zero, tiny, huge, random.
        2 => {
            let v: u16 = match rng.below(4) {
                0 => 0,
                1 => rng.below(40) as u16,
                2 => 0xffff,
                _ => rng.next() as u16,
            };
            p[IP + 4..IP + 6].copy_from_slice(&v.to_be_bytes());
        }
        // Next-header soup.
        3 => p[IP + 6] = [0, 6, 17, 43, 44, 50, 51, 58, 59, 60, 135, 253][rng.below(12) as usize],
        // A new extension-header chain in front of the transport header.
        4 => {
            if let Ok(mut ip) = Ipv6::of(&Frame::parse(&p).unwrap()) {
                ip.ext = chain(rng);
                let mut frame = Frame::parse(&p).unwrap();
                frame.l3 = ip.frame().l3;
                p = frame.to_bytes();
            }
        }
        // TCP data offset and flags, wherever the transport header is.
        5 => {
            let at = IP + 40 + rng.below(40) as usize;
            if p.len() > at + 13 {
                p[at + 12] = rng.byte();
                p[at + 13] = rng.byte();
            }
        }
        // Byte flips, anywhere.
        6 | 7 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(p.len() as u64) as usize;
                p[i] = rng.byte();
            }
        }
        // Random bytes after an IPv6 Ethernet header, sometimes to a VIP.
        8 => {
            let len = rng.below(160) as usize;
            p.truncate(14);
            p.extend((0..len).map(|_| rng.byte()));
            if len >= 40 && rng.below(2) == 0 {
                p[IP] = 0x60;
                p[IP + 24..IP + 40].copy_from_slice(&VIP6.octets());
            }
        }
        _ => p.extend((0..rng.below(64)).map(|_| rng.byte())),
    }
    p
}

/// Whether `bytes` is an IPv6 packet the program may forward or answer: version 6, the
/// payload within the frame, at most four walkable extension headers, then TCP (data offset at
/// least 5), UDP or ICMPv6, to a VIP. Judged independently of the program.
fn valid_vip_packet6(bytes: &[u8]) -> bool {
    let Ok(frame) = Frame::parse(bytes) else {
        return false;
    };
    let packet::L3::Other { payload, .. } = &frame.l3 else {
        return false;
    };
    let Ok(ip) = Ipv6::parse(payload) else {
        return false;
    };
    let walkable = ip.ext.len() <= 4
        && ip
            .ext
            .iter()
            .all(|(kind, body)| *kind != packet6::NEXT_ROUTING || body.get(1) == Some(&0));
    ip.version == Some(6)
        && ip.payload_len != Some(0)
        && walkable
        && (ip.dst == VIP6 || ip.dst == DSR6)
        && match &ip.l4 {
            packet::L4::Tcp(t) => t.data_offset.unwrap_or(0) >= 5,
            packet::L4::Udp(_) | packet::L4::Icmp(_) => true,
            packet::L4::Raw { .. } => false,
        }
}

#[test]
fn ipv6_hostile_packets() {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return;
    }
    let seed = fuzz_seed();
    let packets = packets();
    let started = std::time::Instant::now();
    let mut rng = Rng(seed | 1);
    let mut h = XdpHarness::with_specs_in_lab(&services6()).expect("harness");
    let ipv6 = Invariants {
        valid: valid_vip_packet6,
        header_ok: |_| true,
        checksums_ok: |b| verify_checksums6(b).is_ok(),
        handed_to_kernel: Default::default(),
    };
    let mut runs = 0u64;
    let mut actions = [0u64; 5];
    for base in seeds6(&mut rng) {
        for len in 14..=base.len() {
            ipv6.check(&mut h, &base[..len], &mut runs, &mut actions);
        }
    }
    // Chains of every length and kind in front of a SYN to the VIP.
    for _ in 0..5_000 {
        let mut syn = packet6::tcp6_syn(sock6(0x102, 40000), sock6(0x100, 6443));
        syn.ext = chain(&mut rng);
        ipv6.check(&mut h, &syn.frame().to_bytes(), &mut runs, &mut actions);
    }
    while runs < packets {
        let bases = seeds6(&mut rng);
        let base = &bases[rng.below(bases.len() as u64) as usize];
        let mut p = mutate6(&mut rng, base);
        for _ in 0..rng.below(3) {
            if p.len() > 54 {
                p = mutate6(&mut rng, &p);
            }
        }
        ipv6.check(&mut h, &p, &mut runs, &mut actions);
    }
    let counted: u64 = h.reasons().unwrap().values().sum();
    assert_eq!(
        counted, runs,
        "every packet counted under exactly one reason"
    );
    assert!(
        actions[XDP_TX as usize] > 1000,
        "the fuzz reached the forwarding paths: {actions:?}"
    );
    assert!(
        actions[XDP_DROP as usize] > 1000,
        "and the drop paths: {actions:?}"
    );
    let reasons = h.reasons().unwrap();
    for why in ["drop_fragment", "drop_bad_extension", "drop_bad_ip_header"] {
        assert!(reasons[why] > 0, "{why} reached: {reasons:?}");
    }
    eprintln!(
        "{runs} IPv6 packets in {:.1?}: {actions:?} (aborted, drop, pass, tx, redirect); seed {seed:#x}",
        started.elapsed()
    );
}
