//! Flow sync's receiving side, its pure core as the runtime drives it: structurally valid
//! messages, signed with the fixed key, built from the input (who sends, which kind, which
//! epoch and sequence number: the next, a replay, an older or a newer one; entries for the
//! published services and for others; sometimes damaged on the way), go through the
//! receiver's checks (`session::Receiver`), the peers' bookkeeping (`peers::Peers`: heard,
//! lost, tick) and the translation to this node's table entries (`translate::Directory`).
//!
//! Invariants: a message is taken at most once (per peer, epoch and sequence number), and then
//! exactly as it was sent; a damaged one never; a refused one changes nothing but its counter;
//! what a taken entry installs is the flow the entry names, in its family, with a reverse
//! translation exactly in nat mode.

#![no_main]

use k3s_xdp::{
    config::{self, Mode},
    dataplane::ServiceSpec,
    flowsync::{
        peers::Peers,
        session::Receiver,
        translate::{Directory, Install, InstallOf, MapAddress},
        wire::{encode, Entry, Key, Kind, Message, Op},
    },
};
use k3s_xdp_fuzz::{key, Bytes};
use libfuzzer_sys::fuzz_target;
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

/// What the input picks addresses from: this node's services and strangers to them.
const IPS: [&str; 10] = [
    "192.0.2.100",
    "192.0.2.50",
    "192.0.2.51",
    "192.0.2.7",
    "198.51.100.20",
    "2001:db8::100",
    "2001:db8::50",
    "2001:db8::7",
    "2001:db8:1::20",
    "192.0.2.200",
];
const PORTS: [u16; 6] = [6443, 80, 40000, 1024, 0, 65535];
const KINDS: [Kind; 5] = [
    Kind::Update,
    Kind::BulkRequest,
    Kind::Bulk,
    Kind::BulkEnd,
    Kind::Hello,
];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a valid address")
}

/// The services this node publishes: nat over IPv4 (the VIP as SNAT source), dsr over IPv4,
/// nat over IPv6 with a SNAT pool.
fn directory() -> Directory {
    let mut nat4 = config::Service::new("api", ip("192.0.2.100"), 6443);
    let mut dsr4 = config::Service::new("web", ip("192.0.2.200"), 80);
    dsr4.mode = Mode::Dsr;
    let mut nat6 = config::Service::new("api6", ip("2001:db8::100"), 6443);
    nat6.snat_source = vec![config::SnatSource::Address(ip("2001:db8::7"))];
    for (s, backends) in [
        (&mut nat4, &["192.0.2.50", "192.0.2.51"][..]),
        (&mut dsr4, &["192.0.2.50"][..]),
        (&mut nat6, &["2001:db8::50"][..]),
    ] {
        for (i, b) in backends.iter().enumerate() {
            s.backends.push(config::BackendConfig {
                name: format!("server-{i}"),
                address: SocketAddr::new(ip(b), s.port),
                weight: 100,
            });
        }
    }
    let services: Vec<ServiceSpec> = [&nat4, &dsr4, &nat6]
        .into_iter()
        .map(ServiceSpec::from_config)
        .collect();
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    Directory::new(
        &services,
        |name| names.iter().position(|n| n == name).map(|i| i as u32),
        // Slots of this node's own numbering: the service's, then the address's place.
        |name, address| {
            let s = names.iter().position(|n| n == name)?;
            let a = IPS.iter().position(|i| ip(i) == address.ip())?;
            Some((s * IPS.len() + a) as u32)
        },
    )
}

fn socket(input: &mut Bytes) -> SocketAddr {
    let i = input.u8();
    let addr = if i < 0xf0 {
        ip(IPS[usize::from(i) % IPS.len()])
    } else if i & 1 == 0 {
        IpAddr::from(std::array::from_fn::<u8, 4, _>(|_| input.u8()))
    } else {
        IpAddr::from(std::array::from_fn::<u8, 16, _>(|_| input.u8()))
    };
    let p = input.u8();
    let port = if p < 0xf0 {
        PORTS[usize::from(p) % PORTS.len()]
    } else {
        input.u16()
    };
    SocketAddr::new(addr, port)
}

fn entry(input: &mut Bytes) -> Entry {
    Entry {
        op: if input.u8() & 1 == 0 {
            Op::Flow
        } else {
            Op::Closed
        },
        protocol: input.pick(&[6, 6, 17, 1, 0]),
        flags: input.u8(),
        client: socket(input),
        vip: socket(input),
        backend: socket(input),
        snat: socket(input),
    }
}

/// What the sender of one peer has sent: its epoch and last sequence number.
#[derive(Clone, Copy, Default)]
struct Sent {
    epoch: u64,
    seq: u64,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let key = key();
    let other_key = Key::from_file_bytes(&[b'x'; 40]).expect("a long enough key");
    let peers = [ip("192.0.2.11"), ip("2001:db8::11")];
    let stranger = ip("192.0.2.99");
    let directory = directory();
    let start = Instant::now();
    let mut now = start;
    let mut receiver = Receiver::new(key.clone(), &peers);
    let mut bookkeeping = Peers::new(&peers, start);
    let mut sent = [Sent::default(); 2];
    let mut taken = BTreeSet::new();
    let mut refusals = 0u64;

    for _ in 0..64 {
        if input.rest_len() == 0 {
            break;
        }
        let who = input.u8();
        let p = usize::from(who & 1);
        let from = match who >> 1 & 3 {
            3 => stranger,
            2 => match peers[p] {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            },
            _ => peers[p],
        };
        let s = &mut sent[p];
        match input.u8() % 8 {
            0 => s.epoch = s.epoch.saturating_add(1),
            1 => s.epoch = s.epoch.saturating_sub(1),
            2 => s.epoch = input.u64(),
            _ => {}
        }
        match input.u8() % 8 {
            0 => {}
            1 => s.seq = s.seq.saturating_sub(u64::from(input.u8())),
            2 => s.seq = s.seq.saturating_add(u64::from(input.u16())),
            3 => s.seq = input.u64(),
            4 => s.seq = 0,
            _ => s.seq = s.seq.saturating_add(1),
        }
        let kind = input.pick(&KINDS);
        let entries: Vec<Entry> = (0..input.u8() % 9).map(|_| entry(&mut input)).collect();
        let message = Message {
            kind,
            epoch: s.epoch,
            seq: s.seq,
            entries,
        };
        let (epoch, seq) = (s.epoch, s.seq);
        let mut datagram = encode(&message, &key);
        let damage = input.u8();
        let damaged = match damage % 16 {
            0 => {
                let at = usize::from(input.u16()) % datagram.len();
                datagram[at] ^= input.u8().max(1);
                true
            }
            1 => {
                datagram.truncate(usize::from(input.u16()) % datagram.len());
                true
            }
            2 => {
                datagram = encode(&message, &other_key);
                true
            }
            3 => {
                datagram.push(input.u8());
                true
            }
            _ => false,
        };
        now += Duration::from_millis(u64::from(input.u16()));

        let before = peers.map(|p| receiver.peer(p).copied());
        let result = receiver.take(SocketAddr::new(from, 3780), &datagram);
        let Ok(t) = result else {
            refusals += 1;
            assert_eq!(
                peers.map(|p| receiver.peer(p).copied()),
                before,
                "a refused datagram changed a peer's state"
            );
            continue;
        };
        assert!(!damaged, "a damaged datagram was taken: {datagram:02x?}");
        assert_ne!(from, stranger, "a stranger's datagram was taken");
        assert!(
            taken.insert((p, epoch, seq)),
            "taken twice: peer {p} epoch {epoch} seq {seq}"
        );
        let sent_entries: Vec<Entry> = message
            .entries
            .iter()
            .copied()
            .filter(Entry::one_family)
            .collect();
        assert_eq!(t.message.entries, sent_entries, "taken as sent");
        assert_eq!(
            (t.message.kind, t.message.epoch, t.message.seq),
            (kind, epoch, seq)
        );

        // The runtime's part, in its order.
        let peer = peers[p];
        let _ = bookkeeping.heard(peer, kind, t.message.entries.len(), t.new_epoch, now);
        for e in &t.message.entries {
            if let Some(install) = directory.incoming(e) {
                installs_what_it_names(e, install);
            }
        }
        let lost = receiver.peer(peer).map_or(0, |v| v.lost);
        let lost_before = before[p].map_or(0, |v| v.lost);
        assert!(lost >= lost_before, "losses only grow");
        if lost > lost_before {
            let _ = bookkeeping.lost(peer, now);
        }
        let _ = bookkeeping.tick(now);
        let _ = bookkeeping.view(now);
    }
    let counted: u64 = receiver.refused().iter().map(|(_, n)| n).sum();
    assert_eq!(counted, refusals, "every refusal counted once");
    let _ = bookkeeping.synced_after();
});

fn installs_what_it_names(e: &Entry, install: InstallOf) {
    match install {
        InstallOf::V4(i) => {
            assert!(e.client.is_ipv4());
            check(e, &i);
        }
        InstallOf::V6(i) => {
            assert!(e.client.is_ipv6());
            check(e, &i);
        }
    }
}

fn check<A: MapAddress>(e: &Entry, i: &Install<A>) {
    assert_eq!(i.key.src.to_ip(), e.client.ip());
    assert_eq!(i.key.dst.to_ip(), e.vip.ip());
    assert_eq!(u16::from_be(i.key.sport), e.client.port());
    assert_eq!(u16::from_be(i.key.dport), e.vip.port());
    assert_eq!(i.key.protocol, e.protocol);
    if let Some((reverse, nat)) = &i.reverse {
        assert_eq!(reverse.src.to_ip(), e.backend.ip());
        assert_eq!(reverse.dst.to_ip(), e.snat.ip());
        assert_eq!(u16::from_be(reverse.dport), e.snat.port());
        assert_ne!(e.snat.port(), 0, "a translation to port 0");
        assert_eq!(u16::from_be(i.flow.snat_port), e.snat.port());
        assert!(nat.client_addr.to_ip() == e.client.ip());
    } else {
        assert_eq!(i.flow.snat_port, 0, "dsr has no translation");
    }
}
