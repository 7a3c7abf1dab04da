//! The two ends of flow sync between this node and its peers (pure: no socket, no clock): the
//! [`Sender`] numbers and signs datagrams, each as full as one datagram allows; the [`Receiver`]
//! takes a datagram only from a configured peer, authenticated and not seen before, and counts
//! what it refuses by reason.

use super::wire::{self, Entry, Key, Kind, Message, Refusal, Window};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

/// Signs and numbers what this node sends. The epoch is this run's start (it only grows across
/// restarts, so peers tell a restart from a replay); sequence numbers count from 1.
pub struct Sender {
    key: Key,
    epoch: u64,
    seq: u64,
}

impl Sender {
    pub fn new(key: Key, epoch: u64) -> Self {
        Sender { key, epoch, seq: 0 }
    }

    /// The datagrams that carry `entries` as `kind`, in order, each at most
    /// [`wire::MAX_MESSAGE`] bytes; one datagram without entries when there are none (a bulk
    /// request, a hello, the end of an empty table).
    pub fn datagrams(&mut self, kind: Kind, entries: &[Entry]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = entries;
        loop {
            let n = wire::entries_that_fit(rest);
            self.seq += 1;
            let message = Message {
                kind,
                epoch: self.epoch,
                seq: self.seq,
                entries: rest[..n].to_vec(),
            };
            out.push(wire::encode(&message, &self.key));
            rest = &rest[n..];
            if rest.is_empty() || n == 0 {
                return out;
            }
        }
    }

    pub fn sent(&self) -> u64 {
        self.seq
    }
}

/// What a peer has sent us, as seen by the receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerView {
    pub window: Window,
    /// Datagrams and entries taken from it.
    pub messages: u64,
    pub entries: u64,
    /// Times it started a new epoch (its first message, then each restart).
    pub restarts: u64,
    /// Its datagrams lost on the way (gaps in its numbering), over all its epochs.
    pub lost: u64,
}

/// Takes datagrams from the configured peers only.
pub struct Receiver {
    key: Key,
    peers: BTreeMap<IpAddr, PeerView>,
    refused: BTreeMap<Refusal, u64>,
}

/// A datagram taken: the message, and whether its sender started a new epoch with it (it
/// restarted, or this is its first message: time to send it the whole table).
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    pub message: Message,
    pub new_epoch: bool,
}

impl Receiver {
    pub fn new(key: Key, peers: &[IpAddr]) -> Self {
        Receiver {
            key,
            peers: peers.iter().map(|&p| (p, PeerView::default())).collect(),
            refused: BTreeMap::new(),
        }
    }

    /// Checks a datagram from `from`: a configured peer, within size, authenticated, well
    /// formed, and neither replayed nor older than what the peer sent since. Nothing in a
    /// refused datagram changes any state but its counter.
    pub fn take(&mut self, from: SocketAddr, datagram: &[u8]) -> Result<Taken, Refusal> {
        let result = self.check(from, datagram);
        if let Err(why) = result {
            *self.refused.entry(why).or_default() += 1;
        }
        result
    }

    fn check(&mut self, from: SocketAddr, datagram: &[u8]) -> Result<Taken, Refusal> {
        // An IPv4 peer may reach an IPv6 socket as ::ffff:a.b.c.d.
        let ip = match from.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let Some(peer) = self.peers.get_mut(&ip) else {
            return Err(Refusal::NotAPeer);
        };
        let message = wire::decode(datagram, &self.key)?;
        let mut window = peer.window;
        let new_epoch = window.take(message.epoch, message.seq)?;
        // Saturating: a peer that jumps its numbering by 2^64 in two epochs has not lost more.
        peer.lost = peer.lost.saturating_add(if new_epoch {
            window.lost()
        } else {
            window.lost() - peer.window.lost()
        });
        peer.window = window;
        peer.messages += 1;
        peer.entries += message.entries.len() as u64;
        peer.restarts += u64::from(new_epoch);
        Ok(Taken { message, new_epoch })
    }

    /// Refused datagrams by reason, every reason listed.
    pub fn refused(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (*r, self.refused.get(r).copied().unwrap_or(0)))
            .collect()
    }

    pub fn peer(&self, peer: IpAddr) -> Option<&PeerView> {
        self.peers.get(&peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowsync::wire::Op;

    fn key(byte: u8) -> Key {
        Key::from_file_bytes(&[byte; 32]).unwrap()
    }

    fn entry(port: u16) -> Entry {
        Entry {
            op: Op::Flow,
            protocol: 6,
            flags: 0,
            client: SocketAddr::new([198, 51, 100, 7].into(), port),
            vip: "192.0.2.100:6443".parse().unwrap(),
            backend: "192.0.2.50:6443".parse().unwrap(),
            snat: SocketAddr::new([192, 0, 2, 100].into(), port),
        }
    }

    const PEER: &str = "192.0.2.98:3780";

    fn receiver() -> Receiver {
        Receiver::new(key(1), &["192.0.2.98".parse().unwrap()])
    }

    #[test]
    fn a_batch_crosses_in_full_datagrams_in_order() {
        let mut sender = Sender::new(key(1), 7);
        let entries: Vec<Entry> = (0..200).map(|i| entry(20000 + i)).collect();
        let datagrams = sender.datagrams(Kind::Update, &entries);
        assert_eq!(
            datagrams.len(),
            200usize.div_ceil(wire::entries_that_fit(&entries))
        );
        assert!(datagrams.iter().all(|d| d.len() <= wire::MAX_MESSAGE));
        let mut r = receiver();
        let mut got = Vec::new();
        for (i, d) in datagrams.iter().enumerate() {
            let taken = r.take(PEER.parse().unwrap(), d).unwrap();
            assert_eq!(
                taken.new_epoch,
                i == 0,
                "the first message starts the epoch"
            );
            got.extend(taken.message.entries);
        }
        assert_eq!(got, entries);
        let view = r.peer("192.0.2.98".parse().unwrap()).unwrap();
        assert_eq!(
            (view.messages, view.entries, view.restarts),
            (datagrams.len() as u64, 200, 1)
        );
        assert_eq!(
            sender.datagrams(Kind::Hello, &[]).len(),
            1,
            "one empty datagram"
        );
    }

    /// Found by the fuzzer (flowsync_receiver): sequence numbers that jump to the top in two
    /// epochs counted more than 2^64 losses, an overflow (a panic with overflow checks).
    #[test]
    fn losses_over_epochs_saturate() {
        let mut r = receiver();
        let from = PEER.parse().unwrap();
        for epoch in [1, 2] {
            for seq in [1, u64::MAX] {
                let message = Message {
                    kind: Kind::Hello,
                    epoch,
                    seq,
                    entries: Vec::new(),
                };
                r.take(from, &wire::encode(&message, &key(1))).unwrap();
            }
        }
        let view = r.peer("192.0.2.98".parse().unwrap()).unwrap();
        assert_eq!((view.messages, view.restarts, view.lost), (4, 2, u64::MAX));
    }

    /// Hostile traffic changes nothing but the counters: a stranger, a wrong key, a replay,
    /// an older epoch, garbage; a restarted peer is taken again (a new epoch).
    #[test]
    fn hostile_datagrams_are_refused_by_reason() {
        let mut r = receiver();
        let mut sender = Sender::new(key(1), 10);
        let first = sender.datagrams(Kind::Update, &[entry(1)]).remove(0);
        let from = PEER.parse().unwrap();
        assert!(r.take(from, &first).is_ok());
        let before = *r.peer("192.0.2.98".parse().unwrap()).unwrap();

        let stranger = "192.0.2.77:3780".parse().unwrap();
        let forged = Sender::new(key(2), 11)
            .datagrams(Kind::Update, &[entry(2)])
            .remove(0);
        let old = Sender::new(key(1), 9)
            .datagrams(Kind::Update, &[entry(3)])
            .remove(0);
        for (datagram, src, why) in [
            (&first, stranger, Refusal::NotAPeer),
            (&forged, from, Refusal::Unauthenticated),
            (&first, from, Refusal::Replayed),
            (&old, from, Refusal::Stale),
            (&vec![0u8; 3], from, Refusal::Malformed),
            (&vec![0u8; wire::MAX_MESSAGE + 1], from, Refusal::Oversized),
        ] {
            assert_eq!(r.take(src, datagram), Err(why));
        }
        assert_eq!(
            r.peer("192.0.2.98".parse().unwrap()),
            Some(&before),
            "unchanged"
        );
        assert!(
            r.refused().iter().all(|(_, n)| *n == 1),
            "{:?}",
            r.refused()
        );

        // The peer restarts: a new, larger epoch is taken.
        let again = Sender::new(key(1), 20)
            .datagrams(Kind::BulkRequest, &[])
            .remove(0);
        let taken = r.take(from, &again).unwrap();
        assert!(taken.new_epoch);
        assert_eq!(taken.message.kind, Kind::BulkRequest);
    }

    #[test]
    fn an_ipv4_peer_seen_through_an_ipv6_socket_is_that_peer() {
        let mut r = receiver();
        let d = Sender::new(key(1), 1).datagrams(Kind::Hello, &[]).remove(0);
        assert!(r
            .take("[::ffff:192.0.2.98]:3780".parse().unwrap(), &d)
            .is_ok());
    }
}
