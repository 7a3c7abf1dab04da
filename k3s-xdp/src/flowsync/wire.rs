//! Flow-sync messages on the wire (pure): their layout, HMAC-SHA256 authentication with the
//! shared key, and the replay window that refuses what was already seen.
//!
//! A message is one UDP datagram, at most [`MAX_MESSAGE`] bytes (one Ethernet frame with its
//! IPv6 and UDP headers):
//!
//! ```text
//! magic "K3FS" | version 1 | kind | entry count (u16) | epoch (u64) | sequence (u64)
//! entries ...
//! HMAC-SHA256 of everything before it (32 bytes)
//! ```
//!
//! All integers are big-endian. The epoch is the sender's start (it only grows across
//! restarts); the sequence counts the messages of one epoch from 1. An entry is:
//!
//! ```text
//! op (1 flow, 2 closed) | family (4, 6) | protocol | flags
//! client address | client port | VIP | VIP port | backend | backend port | SNAT address | SNAT port
//! ```
//!
//! with 4- or 16-byte addresses after the family; a `closed` entry carries the same fields.
//! Backends are named by address and port, never by slot: each node numbers its own slots.

use ring::hmac;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC: [u8; 4] = *b"K3FS";
pub const VERSION: u8 = 1;
/// The largest datagram sent or accepted.
pub const MAX_MESSAGE: usize = 1400;
pub const HEADER_LEN: usize = 24;
pub const TAG_LEN: usize = 32;
/// The shortest key accepted (the file's bytes, a final newline ignored).
pub const MIN_KEY_LEN: usize = 32;

/// What a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// New, refreshed or closed flows.
    Update = 1,
    /// "Send me your whole table" (a node that starts, or sees its peer come back).
    BulkRequest = 2,
    /// A part of the whole table, answering a bulk request.
    Bulk = 3,
    /// The last part of the whole table (it may carry entries).
    BulkEnd = 4,
    /// Nothing to say; keeps the peer's view of this node alive.
    Hello = 5,
}

impl Kind {
    fn of(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Update,
            2 => Kind::BulkRequest,
            3 => Kind::Bulk,
            4 => Kind::BulkEnd,
            5 => Kind::Hello,
            _ => return None,
        })
    }
}

/// What an entry says of its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The flow exists (new, or refreshed by a bulk sync): install it.
    Flow = 1,
    /// The flow closed: remove it.
    Closed = 2,
}

/// `Entry::flags` of a flow (`Op::Flow`), in a refresh or a bulk: a flow whose packets went
/// through the sender in the last refresh period (not only announced when it began). The
/// receiver keeps such copies before announced ones when its tables are full. A `closed`
/// entry's flags are its closing bits instead.
pub const REFRESHED: u8 = 1;

/// One flow, in the words both nodes share: addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub op: Op,
    pub protocol: u8,
    pub flags: u8,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub backend: SocketAddr,
    /// The source the backend sees (nat); for dsr, the client's.
    pub snat: SocketAddr,
}

impl Entry {
    /// Bytes this entry takes in a message.
    pub fn encoded_len(&self) -> usize {
        4 + 4 * (addr_len(self.client.ip()) + 2)
    }

    /// Whether its addresses are all of one family (the only entries that encode).
    pub fn one_family(&self) -> bool {
        let v4 = self.client.is_ipv4();
        [self.vip, self.backend, self.snat]
            .iter()
            .all(|a| a.is_ipv4() == v4)
    }
}

fn addr_len(ip: IpAddr) -> usize {
    if ip.is_ipv4() {
        4
    } else {
        16
    }
}

/// A message as its sender meant it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub epoch: u64,
    pub seq: u64,
    pub entries: Vec<Entry>,
}

/// Why a datagram was refused, one counter each (`k3sxdp_flow_sync_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// From an address that is not a configured peer.
    NotAPeer,
    /// Longer than [`MAX_MESSAGE`].
    Oversized,
    /// Too short, wrong magic, version or kind, or entries that do not add up.
    Malformed,
    /// Its tag is not the shared key's.
    Unauthenticated,
    /// Already seen (same epoch and sequence).
    Replayed,
    /// From an older epoch than the peer's current one, or older than the window.
    Stale,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::NotAPeer,
        Refusal::Oversized,
        Refusal::Malformed,
        Refusal::Unauthenticated,
        Refusal::Replayed,
        Refusal::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAPeer => "not_a_peer",
            Refusal::Oversized => "oversized",
            Refusal::Malformed => "malformed",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Replayed => "replayed",
            Refusal::Stale => "stale",
        }
    }
}

/// The shared key, ready to sign and verify.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The key from the key file's bytes: at least [`MIN_KEY_LEN`] of them, one final newline
    /// (as `openssl rand -hex 32 > FILE` leaves) not counted.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Key, String> {
        let bytes = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!(
                "the key is {} bytes, at least {MIN_KEY_LEN} are needed (e.g. `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        Ok(Key(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }
}

/// Encodes `message`, signed with `key`, leaving out entries that mix families. The caller
/// keeps within one datagram: [`entries_that_fit`] says how many entries do.
pub fn encode(message: &Message, key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_MESSAGE);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(message.kind as u8);
    // An entry mixing families cannot be laid out; none is made, but none is sent either.
    let entries: Vec<&Entry> = message
        .entries
        .iter()
        .filter(|e| e.one_family())
        .take(usize::from(u16::MAX))
        .collect();
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    out.extend_from_slice(&message.epoch.to_be_bytes());
    out.extend_from_slice(&message.seq.to_be_bytes());
    for e in entries {
        out.push(e.op as u8);
        out.push(if e.client.is_ipv4() { 4 } else { 6 });
        out.push(e.protocol);
        out.push(e.flags);
        for a in [e.client, e.vip, e.backend, e.snat] {
            match a.ip() {
                IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
                IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
            }
            out.extend_from_slice(&a.port().to_be_bytes());
        }
    }
    let tag = hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// How many of `entries` (from the first) fit in one datagram.
pub fn entries_that_fit(entries: &[Entry]) -> usize {
    let mut room = MAX_MESSAGE - HEADER_LEN - TAG_LEN;
    entries
        .iter()
        .take_while(|e| {
            let fits = e.encoded_len() <= room;
            if fits {
                room -= e.encoded_len();
            }
            fits
        })
        .count()
}

/// Decodes and authenticates a datagram. The tag is checked before anything it covers is
/// believed; a message that decodes is exactly what a holder of the key sent (replays aside:
/// see [`Window`]).
pub fn decode(datagram: &[u8], key: &Key) -> Result<Message, Refusal> {
    if datagram.len() > MAX_MESSAGE {
        return Err(Refusal::Oversized);
    }
    if datagram.len() < HEADER_LEN + TAG_LEN || datagram[..4] != MAGIC {
        return Err(Refusal::Malformed);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    hmac::verify(&key.0, signed, tag).map_err(|_| Refusal::Unauthenticated)?;
    if signed[4] != VERSION {
        return Err(Refusal::Malformed);
    }
    let kind = Kind::of(signed[5]).ok_or(Refusal::Malformed)?;
    let count = u16::from_be_bytes([signed[6], signed[7]]);
    let epoch = u64::from_be_bytes(signed[8..16].try_into().map_err(|_| Refusal::Malformed)?);
    let seq = u64::from_be_bytes(signed[16..24].try_into().map_err(|_| Refusal::Malformed)?);
    let mut rest = &signed[HEADER_LEN..];
    let mut entries = Vec::with_capacity(usize::from(count).min(MAX_MESSAGE / 28));
    for _ in 0..count {
        let (entry, after) = entry(rest).ok_or(Refusal::Malformed)?;
        entries.push(entry);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(Message {
        kind,
        epoch,
        seq,
        entries,
    })
}

fn entry(bytes: &[u8]) -> Option<(Entry, &[u8])> {
    let (head, mut rest) = bytes.split_at_checked(4)?;
    let op = match head[0] {
        1 => Op::Flow,
        2 => Op::Closed,
        _ => return None,
    };
    let width = match head[1] {
        4 => 4,
        6 => 16,
        _ => return None,
    };
    let mut addrs = [SocketAddr::from(([0, 0, 0, 0], 0)); 4];
    for a in &mut addrs {
        let (field, after) = rest.split_at_checked(width + 2)?;
        let ip = if width == 4 {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&field[..4]).ok()?))
        } else {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&field[..16]).ok()?))
        };
        *a = SocketAddr::new(ip, u16::from_be_bytes([field[width], field[width + 1]]));
        rest = after;
    }
    let [client, vip, backend, snat] = addrs;
    let entry = Entry {
        op,
        protocol: head[2],
        flags: head[3],
        client,
        vip,
        backend,
        snat,
    };
    Some((entry, rest))
}

/// What a peer has sent, to refuse replays: its current epoch and a window of the last
/// [`Window::SIZE`] sequence numbers (as IPsec's anti-replay window, RFC 4303 3.4.3), so that
/// datagrams reordered on the way are still taken once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    epoch: u64,
    /// The highest sequence number taken.
    top: u64,
    /// Bit i: `top - i` was taken.
    seen: u64,
    /// Sequence numbers of this epoch that left the window untaken: datagrams lost on the
    /// way (each peer has a sequence of its own, so a gap is a loss).
    lost: u64,
    /// The first sequence number taken in this epoch (what came before is not counted).
    first: u64,
}

impl Window {
    pub const SIZE: u64 = 64;

    /// Takes (epoch, seq) if it was not seen; a newer epoch (the peer restarted) starts over.
    /// Returns whether this message starts a new epoch.
    pub fn take(&mut self, epoch: u64, seq: u64) -> Result<bool, Refusal> {
        if seq == 0 {
            return Err(Refusal::Malformed);
        }
        if epoch < self.epoch {
            return Err(Refusal::Stale);
        }
        if epoch > self.epoch {
            *self = Window {
                epoch,
                top: seq,
                seen: 1,
                // What it sent before this node heard it (before it started) does not
                // count: a node that starts asks for the whole table anyway.
                lost: 0,
                first: seq,
            };
            return Ok(true);
        }
        if seq > self.top {
            let shift = seq - self.top;
            // The numbers that leave the window (below its new lowest) untaken are lost:
            // those of the old window not marked, and those never seen at all.
            let old_low = self.top.saturating_sub(Self::SIZE - 1).max(self.first);
            let new_low = seq.saturating_sub(Self::SIZE - 1).max(self.first);
            let taken = (old_low..new_low.min(self.top + 1))
                .filter(|q| self.seen & (1 << (self.top - q)) != 0)
                .count() as u64;
            self.lost += new_low.saturating_sub(old_low) - taken;
            self.seen = if shift >= Self::SIZE {
                0
            } else {
                self.seen << shift
            } | 1;
            self.top = seq;
            return Ok(false);
        }
        let back = self.top - seq;
        if back >= Self::SIZE {
            return Err(Refusal::Stale);
        }
        if self.seen & (1 << back) != 0 {
            return Err(Refusal::Replayed);
        }
        self.seen |= 1 << back;
        Ok(false)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Datagrams of this epoch lost on the way (see the field).
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each peer numbers its datagrams to this node alone: what leaves the window untaken
    /// was lost on the way; what arrives late but within the window is not.
    #[test]
    fn the_window_counts_datagrams_lost_on_the_way() {
        let mut w = Window::default();
        assert_eq!(w.take(5, 1), Ok(true));
        for seq in 2..=100 {
            w.take(5, seq).unwrap();
        }
        assert_eq!(w.lost(), 0, "all in order");
        // 101 and 102 missing; 103..=200 arrive; 102 arrives late, within the window.
        for seq in 103..=150 {
            w.take(5, seq).unwrap();
        }
        w.take(5, 102).unwrap();
        for seq in 151..=200 {
            w.take(5, seq).unwrap();
        }
        assert_eq!(w.lost(), 1, "101 left the window untaken");
        // A jump far ahead: what is skipped counts once it leaves the window (201..=936;
        // 937..=999 may still arrive).
        w.take(5, 1000).unwrap();
        assert_eq!(w.lost(), 1 + 736);
        // A new epoch starts counting afresh, from its first datagram heard.
        w.take(6, 3).unwrap();
        assert_eq!(w.lost(), 0);
        w.take(6, 70).unwrap();
        assert_eq!(w.lost(), 3, "4, 5 and 6 left the window untaken");
    }

    fn key() -> Key {
        Key::from_file_bytes(b"0123456789abcdef0123456789abcdef\n").unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v4_entry() -> Entry {
        Entry {
            op: Op::Flow,
            protocol: 6,
            flags: 0,
            client: sa("198.51.100.7:40000"),
            vip: sa("192.0.2.100:6443"),
            backend: sa("192.0.2.50:6443"),
            snat: sa("192.0.2.100:1024"),
        }
    }

    fn v6_entry() -> Entry {
        Entry {
            op: Op::Closed,
            protocol: 17,
            flags: 3,
            client: sa("[2001:db8:1::7]:40000"),
            vip: sa("[2001:db8::100]:6443"),
            backend: sa("[2001:db8::50]:6443"),
            snat: sa("[2001:db8::100]:65535"),
        }
    }

    fn message(entries: Vec<Entry>) -> Message {
        Message {
            kind: Kind::Update,
            epoch: 1_700_000_000_123,
            seq: 42,
            entries,
        }
    }

    #[test]
    fn a_message_decodes_to_what_was_encoded() {
        let m = message(vec![v4_entry(), v6_entry(), v4_entry()]);
        let bytes = encode(&m, &key());
        assert_eq!(bytes.len(), HEADER_LEN + 28 + 76 + 28 + TAG_LEN);
        assert_eq!(&bytes[..8], b"K3FS\x01\x01\x00\x03");
        assert_eq!(decode(&bytes, &key()), Ok(m));
        let hello = Message {
            kind: Kind::Hello,
            entries: Vec::new(),
            ..message(Vec::new())
        };
        assert_eq!(decode(&encode(&hello, &key()), &key()), Ok(hello));
    }

    /// Exact bytes of one IPv4 entry, so that both ends of a mixed-version pair agree.
    #[test]
    fn an_ipv4_entry_is_laid_out_as_documented() {
        let bytes = encode(&message(vec![v4_entry()]), &key());
        assert_eq!(
            &bytes[HEADER_LEN..HEADER_LEN + 28],
            &[
                1, 4, 6, 0, // op, family, protocol, flags
                198, 51, 100, 7, 0x9c, 0x40, // client
                192, 0, 2, 100, 0x19, 0x2b, // VIP
                192, 0, 2, 50, 0x19, 0x2b, // backend
                192, 0, 2, 100, 0x04, 0x00, // SNAT
            ]
        );
    }

    #[test]
    fn another_key_or_any_flipped_bit_is_unauthenticated() {
        let bytes = encode(&message(vec![v4_entry(), v6_entry()]), &key());
        let other = Key::from_file_bytes(&[b'x'; 40]).unwrap();
        assert_eq!(decode(&bytes, &other), Err(Refusal::Unauthenticated));
        for i in 4..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                assert_eq!(
                    decode(&flipped, &key()),
                    Err(Refusal::Unauthenticated),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncated_oversized_and_foreign_datagrams_are_refused() {
        let bytes = encode(&message(vec![v6_entry()]), &key());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], &key()).is_err(), "{len} bytes");
        }
        assert_eq!(
            decode(&vec![0; MAX_MESSAGE + 1], &key()),
            Err(Refusal::Oversized)
        );
        let mut foreign = bytes.clone();
        foreign[..4].copy_from_slice(b"VRRP");
        assert_eq!(decode(&foreign, &key()), Err(Refusal::Malformed));
    }

    /// Signed but inconsistent (a buggy or newer sender): malformed, never a panic.
    #[test]
    fn signed_nonsense_is_malformed() {
        let sign = |mut body: Vec<u8>| {
            let tag = hmac::sign(&key().0, &body);
            body.extend_from_slice(tag.as_ref());
            body
        };
        let good = encode(&message(vec![v4_entry()]), &key());
        let body = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good[..good.len() - TAG_LEN].to_vec();
            f(&mut b);
            sign(b)
        };
        for (what, bytes) in [
            ("version", body(&|b| b[4] = 2)),
            ("kind", body(&|b| b[5] = 9)),
            ("more entries than bytes", body(&|b| b[7] = 2)),
            ("fewer entries than bytes", body(&|b| b[7] = 0)),
            ("op", body(&|b| b[HEADER_LEN] = 7)),
            ("family", body(&|b| b[HEADER_LEN + 1] = 5)),
            ("an entry cut short", body(&|b| b.truncate(b.len() - 1))),
        ] {
            assert_eq!(decode(&bytes, &key()), Err(Refusal::Malformed), "{what}");
        }
    }

    #[test]
    fn entries_that_fit_fill_one_datagram() {
        let many = vec![v4_entry(); 100];
        let n = entries_that_fit(&many);
        assert_eq!(n, (MAX_MESSAGE - HEADER_LEN - TAG_LEN) / 28);
        let bytes = encode(&message(many[..n].to_vec()), &key());
        assert!(bytes.len() <= MAX_MESSAGE);
        assert!(decode(&bytes, &key()).is_ok());
        let mut odd = v4_entry();
        odd.backend = sa("[2001:db8::50]:6443");
        assert!(!odd.one_family());
        let skipped = decode(&encode(&message(vec![odd, v4_entry()]), &key()), &key());
        assert_eq!(
            skipped.unwrap().entries,
            [v4_entry()],
            "a mixed entry is not sent"
        );
        let mixed = [vec![v6_entry(); 17], vec![v4_entry(); 10]].concat();
        let n = entries_that_fit(&mixed);
        let bytes = encode(&message(mixed[..n].to_vec()), &key());
        assert!(bytes.len() <= MAX_MESSAGE && bytes.len() + 28 > MAX_MESSAGE);
    }

    #[test]
    fn the_key_needs_32_bytes_and_ignores_one_final_newline() {
        assert!(Key::from_file_bytes(&[b'a'; 31]).is_err());
        assert!(Key::from_file_bytes(b"0123456789abcdef0123456789abcde\n").is_err());
        let with = encode(&message(vec![]), &key());
        let without = Key::from_file_bytes(b"0123456789abcdef0123456789abcdef").unwrap();
        assert!(decode(&with, &without).is_ok(), "the newline is not key");
    }

    #[test]
    fn the_window_takes_each_sequence_once_in_any_order() {
        let mut w = Window::default();
        assert_eq!(w.take(5, 10), Ok(true), "a first epoch");
        assert_eq!(w.take(5, 10), Err(Refusal::Replayed));
        assert_eq!(w.take(5, 12), Ok(false));
        assert_eq!(w.take(5, 11), Ok(false), "reordered, still taken");
        assert_eq!(w.take(5, 11), Err(Refusal::Replayed));
        assert_eq!(w.take(5, 200), Ok(false));
        assert_eq!(w.take(5, 137), Ok(false), "inside the window");
        assert_eq!(w.take(5, 136), Err(Refusal::Stale), "behind it");
        assert_eq!(w.take(5, 12), Err(Refusal::Stale));
        assert_eq!(w.take(4, 1000), Err(Refusal::Stale), "an older epoch");
        assert_eq!(w.take(6, 1), Ok(true), "the peer restarted");
        assert_eq!(w.take(6, 1), Err(Refusal::Replayed));
        assert_eq!(w.take(6, 0), Err(Refusal::Malformed));
        assert_eq!(w.epoch(), 6);
    }

    /// Random bytes, and random mutations of a valid message: never a panic, never accepted.
    #[test]
    fn random_datagrams_are_refused() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let good = encode(&message(vec![v4_entry(), v6_entry()]), &key());
        for _ in 0..20_000 {
            let len = (next() % (MAX_MESSAGE as u64 + 100)) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(decode(&random, &key()).is_err());
            let mut mutated = good.clone();
            let at = (next() as usize) % mutated.len();
            mutated[at] = mutated[at].wrapping_add(1 + (next() % 255) as u8);
            assert!(decode(&mutated, &key()).is_err());
        }
    }
}
