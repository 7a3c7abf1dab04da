//! Flow sync's view of its peers (pure: the time is given): which peers answer, which bulk
//! syncs are due either way, and whether this node holds its peers' tables yet: a node that
//! starts asks every peer for its whole table, and VRRP does not preempt a master before the
//! tables arrived (or the peers turned out to be absent).

use super::wire::Kind;
use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// A hello to every peer this often (it is how a peer knows this node is there).
pub const HELLO_EVERY: Duration = Duration::from_secs(1);
/// A peer not heard for this long is down (three hellos missed).
pub const DOWN_AFTER: Duration = Duration::from_millis(3500);
/// A bulk request not answered (or a bulk that stalls) is asked again after this.
pub const ASK_AGAIN: Duration = Duration::from_secs(1);
/// A peer that says nothing at all within this after being asked is taken for absent: this
/// node serves without its table (the VRRP startup wait, Master_Down_Interval, is about as
/// long).
pub const SILENT_PEER: Duration = Duration::from_secs(3);
/// A peer that answers but whose table is not whole within this: this node serves anyway.
pub const BULK_LIMIT: Duration = Duration::from_secs(30);
/// Datagrams from a peer lost on the way are repaired by asking for its whole table, at
/// most this often.
pub const REPAIR_EVERY: Duration = Duration::from_secs(5);

/// Where the bulk sync from a peer (its whole table to this node) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bulk {
    /// Asked at `since` (last at `asked`); nothing received yet.
    Asked { since: Instant, asked: Instant },
    /// Parts arriving (`entries` so far), the last at `last`.
    Receiving {
        since: Instant,
        asked: Instant,
        last: Instant,
        entries: u64,
    },
    /// The whole table arrived.
    Done { entries: u64, took: Duration },
    /// Given up: the peer said nothing (`silent`), or its table did not arrive whole in time.
    GaveUp { silent: bool },
}

impl Bulk {
    fn finished(&self) -> bool {
        matches!(self, Bulk::Done { .. } | Bulk::GaveUp { .. })
    }

    fn asked(now: Instant) -> Bulk {
        Bulk::Asked {
            since: now,
            asked: now,
        }
    }
}

/// What the I/O side has to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Do {
    Hello(IpAddr),
    /// Ask the peer for its whole table.
    AskBulk(IpAddr),
    /// Send the peer this node's whole table (it asked).
    SendBulk(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    heard: Option<Instant>,
    up: bool,
    bulk: Bulk,
    repaired: Option<Instant>,
    repairs: u64,
}

/// A peer as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub peer: IpAddr,
    pub up: bool,
    /// Since its last message.
    pub heard: Option<Duration>,
    pub bulk: Bulk,
    /// Whole tables asked for again because its datagrams were lost on the way.
    pub repairs: u64,
}

pub struct Peers {
    peers: BTreeMap<IpAddr, Peer>,
    last_hello: Option<Instant>,
    /// When this node first held (or gave up waiting for) every peer's table.
    first_synced: Option<Instant>,
    started: Instant,
}

impl Peers {
    /// Peers of a node that starts at `now`: every one asked for its table at the first tick.
    pub fn new(peers: &[IpAddr], now: Instant) -> Self {
        Peers {
            peers: peers
                .iter()
                .map(|&p| {
                    (
                        p,
                        Peer {
                            heard: None,
                            up: false,
                            repaired: None,
                            repairs: 0,
                            bulk: Bulk::Asked {
                                since: now,
                                // Due at once.
                                asked: now.checked_sub(ASK_AGAIN).unwrap_or(now),
                            },
                        },
                    )
                })
                .collect(),
            last_hello: None,
            first_synced: peers.is_empty().then_some(now),
            started: now,
        }
    }

    /// What is due at `now`: hellos, bulk requests (again), peers gone down, bulks given up.
    pub fn tick(&mut self, now: Instant) -> Vec<Do> {
        let mut out = Vec::new();
        let hello = self
            .last_hello
            .is_none_or(|t| now.saturating_duration_since(t) >= HELLO_EVERY);
        if hello {
            self.last_hello = Some(now);
        }
        for (&ip, p) in &mut self.peers {
            if hello {
                out.push(Do::Hello(ip));
            }
            if p.up
                && p.heard
                    .is_some_and(|t| now.saturating_duration_since(t) >= DOWN_AFTER)
            {
                p.up = false;
            }
            let heard_since = |t: Instant| p.heard.is_some_and(|h| h >= t);
            p.bulk = match p.bulk {
                Bulk::Asked { since, .. } | Bulk::Receiving { since, .. }
                    if now.saturating_duration_since(since) >= BULK_LIMIT =>
                {
                    Bulk::GaveUp { silent: false }
                }
                Bulk::Asked { since, .. }
                    if now.saturating_duration_since(since) >= SILENT_PEER
                        && !heard_since(since) =>
                {
                    Bulk::GaveUp { silent: true }
                }
                Bulk::Asked { since, asked }
                    if now.saturating_duration_since(asked) >= ASK_AGAIN =>
                {
                    out.push(Do::AskBulk(ip));
                    Bulk::Asked { since, asked: now }
                }
                Bulk::Receiving {
                    since,
                    asked,
                    last,
                    entries,
                } if now.saturating_duration_since(last) >= ASK_AGAIN
                    && now.saturating_duration_since(asked) >= ASK_AGAIN =>
                {
                    // Stalled (its end lost?): ask for the whole table again.
                    out.push(Do::AskBulk(ip));
                    Bulk::Receiving {
                        since,
                        asked: now,
                        last,
                        entries,
                    }
                }
                other => other,
            };
        }
        self.latch(now);
        out
    }

    /// A message of `kind` with `entries` taken from `peer` at `now`; `new_epoch` when the
    /// peer started a new epoch with it (it restarted, or it is its first message).
    pub fn heard(
        &mut self,
        peer: IpAddr,
        kind: Kind,
        entries: usize,
        new_epoch: bool,
        now: Instant,
    ) -> Vec<Do> {
        let mut out = Vec::new();
        let Some(p) = self.peers.get_mut(&peer) else {
            return out;
        };
        let back = !p.up || new_epoch;
        p.heard = Some(now);
        p.up = true;
        if back && p.bulk.finished() && kind != Kind::Bulk && kind != Kind::BulkEnd {
            // The peer came back (restarted, or heard again after a silence): its table may
            // hold flows this node does not have.
            p.bulk = Bulk::asked(now);
            out.push(Do::AskBulk(peer));
        }
        let entries = entries as u64;
        match kind {
            Kind::BulkRequest => out.push(Do::SendBulk(peer)),
            Kind::Bulk | Kind::BulkEnd => {
                let (since, asked, before) = match p.bulk {
                    Bulk::Asked { since, asked } => (since, asked, 0),
                    Bulk::Receiving {
                        since,
                        asked,
                        entries,
                        ..
                    } => (since, asked, entries),
                    // Parts of a bulk this node no longer waits for (asked twice): the
                    // entries are installed all the same.
                    Bulk::Done { .. } | Bulk::GaveUp { .. } => (now, now, 0),
                };
                p.bulk = if kind == Kind::BulkEnd {
                    Bulk::Done {
                        entries: before + entries,
                        took: now.saturating_duration_since(since),
                    }
                } else {
                    Bulk::Receiving {
                        since,
                        asked,
                        last: now,
                        entries: before + entries,
                    }
                };
            }
            Kind::Update | Kind::Hello => {}
        }
        self.latch(now);
        out
    }

    /// Datagrams from `peer` were lost on the way: its whole table is asked for again,
    /// unless a bulk is under way or the last repair was less than [`REPAIR_EVERY`] ago.
    pub fn lost(&mut self, peer: IpAddr, now: Instant) -> Vec<Do> {
        let Some(p) = self.peers.get_mut(&peer) else {
            return Vec::new();
        };
        let recent = p
            .repaired
            .is_some_and(|t| now.saturating_duration_since(t) < REPAIR_EVERY);
        if !p.bulk.finished() || recent {
            return Vec::new();
        }
        p.repaired = Some(now);
        p.repairs += 1;
        p.bulk = Bulk::asked(now);
        vec![Do::AskBulk(peer)]
    }

    fn latch(&mut self, now: Instant) {
        if self.first_synced.is_none() && self.synced() {
            self.first_synced = Some(now);
        }
    }

    /// Whether this node holds every peer's table (or gave up waiting for it): at start, and
    /// again after a peer came back (restarted, or heard after a silence: its table may hold
    /// flows this node does not have) or lost datagrams on the way. Until then VRRP does not
    /// preempt a master: a node that took the VIPs without a peer's flows would break their
    /// connections, and choose SNAT ports that the peer's connections hold.
    pub fn synced(&self) -> bool {
        self.peers.values().all(|p| p.bulk.finished())
    }

    /// How long the first sync took, once done.
    pub fn synced_after(&self) -> Option<Duration> {
        self.first_synced
            .map(|t| t.saturating_duration_since(self.started))
    }

    pub fn view(&self, now: Instant) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(&peer, p)| PeerView {
                peer,
                up: p.up,
                heard: p.heard.map(|t| now.saturating_duration_since(t)),
                bulk: p.bulk,
                repairs: p.repairs,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_starting_node_asks_every_peer_and_is_synced_when_all_tables_arrived() {
        let t0 = Instant::now();
        let (a, b) = (ip("192.0.2.98"), ip("192.0.2.97"));
        let mut p = Peers::new(&[a, b], t0);
        let first = p.tick(t0);
        assert!(first.contains(&Do::AskBulk(a)) && first.contains(&Do::AskBulk(b)));
        assert!(first.contains(&Do::Hello(a)));
        assert!(!p.synced());
        // Nothing due again before a second passed.
        assert_eq!(p.tick(t0 + 100 * MS), vec![]);

        p.heard(a, Kind::Bulk, 48, true, t0 + 10 * MS);
        p.heard(a, Kind::BulkEnd, 2, false, t0 + 20 * MS);
        assert!(!p.synced(), "b's table is missing");
        let again = p.tick(t0 + 1100 * MS);
        assert!(again.contains(&Do::AskBulk(b)), "{again:?}");
        assert!(!again.contains(&Do::AskBulk(a)), "a's is done");
        p.heard(b, Kind::BulkEnd, 0, true, t0 + 1200 * MS);
        assert!(p.synced());
        assert_eq!(p.synced_after(), Some(1200 * MS));
        let views = p.view(t0 + 1200 * MS);
        assert_eq!(
            views.iter().find(|v| v.peer == a).unwrap().bulk,
            Bulk::Done {
                entries: 50,
                took: 20 * MS
            }
        );
    }

    #[test]
    fn a_silent_peer_is_given_up_after_a_while_an_answering_one_later() {
        let t0 = Instant::now();
        let (silent, slow) = (ip("192.0.2.98"), ip("192.0.2.97"));
        let mut p = Peers::new(&[silent, slow], t0);
        p.tick(t0);
        // The slow peer says hello but sends no table.
        for ms in (500..=SILENT_PEER.as_millis() as u32 + 500).step_by(500) {
            p.heard(slow, Kind::Hello, 0, ms == 500, t0 + ms * MS);
            p.tick(t0 + ms * MS);
        }
        let v = p.view(t0 + SILENT_PEER + 500 * MS);
        assert_eq!(v[1].bulk, Bulk::GaveUp { silent: true }, "{v:?}");
        assert!(matches!(v[0].bulk, Bulk::Asked { .. }), "{v:?}");
        assert!(!p.synced(), "the slow one may still answer");
        p.tick(t0 + BULK_LIMIT);
        assert!(p.synced(), "not forever");
        assert_eq!(
            p.view(t0 + BULK_LIMIT)[0].bulk,
            Bulk::GaveUp { silent: false }
        );
    }

    #[test]
    fn a_lone_node_is_synced_at_once() {
        assert!(Peers::new(&[], Instant::now()).synced());
    }

    #[test]
    fn requests_are_answered_and_a_peer_that_comes_back_is_asked_again() {
        let t0 = Instant::now();
        let a = ip("192.0.2.98");
        let mut p = Peers::new(&[a], t0);
        p.tick(t0);
        assert_eq!(
            p.heard(a, Kind::BulkRequest, 0, true, t0 + MS),
            vec![Do::SendBulk(a)],
            "its first message, but this node is asking already"
        );
        p.heard(a, Kind::BulkEnd, 3, false, t0 + 2 * MS);
        assert!(p.synced());
        // Silence: down; then heard again: asked for its table again, and not synced until
        // it arrived (no preemption without the flows it served meanwhile).
        p.tick(t0 + DOWN_AFTER + 10 * MS);
        assert!(!p.view(t0 + DOWN_AFTER + 10 * MS)[0].up);
        assert!(p.synced(), "a silent peer has nothing to wait for");
        let back = p.heard(a, Kind::Hello, 0, false, t0 + DOWN_AFTER + 20 * MS);
        assert_eq!(back, vec![Do::AskBulk(a)]);
        assert!(!p.synced());
        // A restart (new epoch) while up: the same.
        p.heard(a, Kind::BulkEnd, 0, false, t0 + DOWN_AFTER + 30 * MS);
        assert!(p.synced());
        assert_eq!(
            p.synced_after(),
            Some(2 * MS),
            "the first sync's time stays"
        );
        let restarted = p.heard(a, Kind::Update, 5, true, t0 + DOWN_AFTER + 40 * MS);
        assert_eq!(restarted, vec![Do::AskBulk(a)]);
    }

    #[test]
    fn a_stalled_bulk_is_asked_again() {
        let t0 = Instant::now();
        let a = ip("192.0.2.98");
        let mut p = Peers::new(&[a], t0);
        p.tick(t0);
        p.heard(a, Kind::Bulk, 48, true, t0 + 10 * MS);
        assert!(!p.tick(t0 + 500 * MS).contains(&Do::AskBulk(a)));
        assert!(p.tick(t0 + 1100 * MS).contains(&Do::AskBulk(a)));
        p.heard(a, Kind::BulkEnd, 1, false, t0 + 1200 * MS);
        assert!(p.synced());
    }

    #[test]
    fn losses_are_repaired_by_a_bulk_at_most_every_few_seconds() {
        let t0 = Instant::now();
        let a = ip("192.0.2.98");
        let mut p = Peers::new(&[a], t0);
        p.tick(t0);
        assert_eq!(p.lost(a, t0), vec![], "its table is on its way already");
        p.heard(a, Kind::BulkEnd, 0, true, t0 + MS);
        assert_eq!(p.lost(a, t0 + 2 * MS), vec![Do::AskBulk(a)]);
        p.heard(a, Kind::BulkEnd, 0, false, t0 + 3 * MS);
        assert_eq!(p.lost(a, t0 + 4 * MS), vec![], "not again so soon");
        assert_eq!(p.lost(a, t0 + REPAIR_EVERY + 5 * MS), vec![Do::AskBulk(a)]);
        assert_eq!(p.view(t0)[0].repairs, 2);
        assert!(!p.synced(), "until the repair's table arrived");
        p.heard(a, Kind::BulkEnd, 0, false, t0 + REPAIR_EVERY + 6 * MS);
        assert!(p.synced());
    }

    #[test]
    fn strangers_change_nothing() {
        let t0 = Instant::now();
        let mut p = Peers::new(&[ip("192.0.2.98")], t0);
        assert_eq!(
            p.heard(ip("192.0.2.1"), Kind::BulkRequest, 0, true, t0),
            vec![]
        );
        assert!(!p.synced());
    }
}
