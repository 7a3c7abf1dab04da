//! Flow sync's I/O (`[flow_sync]`): a thread of its own, so that nothing it waits for (a
//! slow or absent peer, a bulk sync of a million flows) can hold up the controller, VRRP or
//! the data plane. Every few milliseconds it reads the flows the XDP program reported (new
//! ones, closed translations) and sends them to every peer, takes what the peers send
//! (checked by [`Receiver`]) into this node's tables, answers bulk requests with the whole
//! table, and refreshes the peers' copies of the flows that are active here. Sends never
//! block: each peer has a bounded queue, and what does not fit is counted as lost (the next
//! bulk sync repairs it).

use super::{
    peers::{Bulk, Do, Peers},
    session::{Receiver, Sender},
    translate::Directory,
    wire::{self, Entry, Key, Kind, Op},
};
use crate::{
    controller::{
        status::{FlowSyncPeerStatus, FlowSyncStatus},
        Event,
    },
    dataplane::{FlowEventOf, FlowEvents, FlowTables, Held, Role},
};
use anyhow::{Context, Result};
use k3s_xdp_common::{
    table::{Translation, IDLE_SECS},
    FLOW_EVENT_CLOSED,
};
use std::{
    collections::{BTreeMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};
use tracing::info;

/// How often the log is read and the socket waited on (the lag of a new flow to the peers).
const POLL: Duration = Duration::from_millis(2);
/// Datagrams waiting per peer at most (about 5.6 MB); beyond, updates are lost (counted).
const QUEUE: usize = 4096;
/// Datagrams sent per peer per round at most (the rest waits for the next round): more
/// than a round's reports fill, so a queue drains as long as the socket takes them.
const BURST: usize = QUEUE;
/// Every this many seconds, the flows active here in that time are sent again, so the peers'
/// copies do not go idle (copies are installed as seen [`COPY_AGE`] seconds ago).
pub const REFRESH_SECS: u32 = 60;
/// How old a peer's flow is when installed here: it goes idle (replaceable) after
/// `IDLE_SECS - COPY_AGE` seconds unless refreshed, or unless its packets come through this
/// node (a failover), which makes it as fresh as any.
pub const COPY_AGE: u32 = IDLE_SECS - 2 * REFRESH_SECS;

/// The clock value a peer's flow is installed with at `clock`.
pub fn copy_seen(clock: u32) -> u32 {
    // On the 31-bit clock: the top bit of `seen` marks an unconfirmed flow, which a copy is not.
    clock.wrapping_sub(COPY_AGE) & !k3s_xdp_common::table::UNCONFIRMED
}

/// The same for a flow the peer refreshed (`wire::REFRESHED`: live there in its last refresh
/// period), a refresh period younger than an announced one: when the tables are full, a
/// burst of new flows announced since does not crowd out the copies of long-lived ones (they
/// are refreshed again before an announced copy could outrank them).
pub fn refreshed_seen(clock: u32) -> u32 {
    copy_seen(clock.wrapping_add(REFRESH_SECS))
}

/// What the thread needs from the daemon.
pub struct Settings {
    pub peers: Vec<IpAddr>,
    pub port: u16,
    pub key: Key,
    /// The data plane's clock (the controller's: whole seconds since it started).
    pub clock: Box<dyn Fn() -> u32 + Send>,
    /// Whether this node serves the VIPs (VRRP master, or without `[vrrp]`): a peer's
    /// translation takes a slot from this node's own only when it does not.
    pub serving: watch::Receiver<bool>,
}

pub struct FlowSync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FlowSync {
    /// Starts the thread on `socket` (from [`bind`]). `directory` follows the published
    /// services; reports go to the controller as [`Event::FlowSync`].
    pub fn start(
        socket: UdpSocket,
        settings: Settings,
        events: FlowEvents,
        tables: FlowTables,
        directory: watch::Receiver<Arc<Directory>>,
        report: mpsc::Sender<Event>,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let mut node = Node {
            receiver: Receiver::new(settings.key.clone(), &settings.peers),
            peers: Peers::new(&settings.peers, Instant::now()),
            out: settings
                .peers
                .iter()
                .map(|&p| (p, Outbox::new(Sender::new(settings.key.clone(), epoch))))
                .collect(),
            v6_socket: socket.local_addr()?.is_ipv6(),
            port: settings.port,
            socket,
            events,
            tables,
            directory,
            clock: settings.clock,
            serving: settings.serving,
            report,
            counters: Counters::default(),
            last_report: None,
            last_refresh: Instant::now(),
            was_synced: false,
            synced_once: false,
            conflicts_log: ConflictLog::default(),
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flow-sync".into())
            .spawn(move || node.run(&flag))
            .context("starting the flow sync thread")?;
        Ok(FlowSync {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (within one poll).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FlowSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The sync socket: UDP `port` on every address, both families when the host has IPv6.
pub fn bind(port: u16) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = || -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s)
    };
    let socket = match v6() {
        Ok(s) => s,
        // A host without IPv6: IPv4 peers only.
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)).into())
                .with_context(|| format!("flow_sync: binding UDP port {port}"))?;
            s
        }
        Err(e) => {
            return Err(e).with_context(|| format!("flow_sync: binding UDP port {port}"));
        }
    };
    // Room for bursts (a peer's bulk sync); best effort, the kernel caps it.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What waits to go to one peer, numbered for it alone (so that it tells a loss by a gap).
struct Outbox {
    sender: Sender,
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// A bulk sync being sent: the entries and how far.
    bulk: Option<(Vec<Entry>, usize)>,
    sent_datagrams: u64,
    sent_entries: u64,
    /// Entries lost: the queue was full, or the kernel refused the datagram.
    lost: u64,
    bulks_sent: u64,
    /// The longest a datagram waited before it left, since the last report.
    lag: Duration,
    /// Its datagrams to this node lost on the way, as last seen.
    lost_from: u64,
}

impl Outbox {
    fn new(sender: Sender) -> Self {
        Outbox {
            sender,
            queue: VecDeque::new(),
            bulk: None,
            sent_datagrams: 0,
            sent_entries: 0,
            lost: 0,
            bulks_sent: 0,
            lag: Duration::ZERO,
            lost_from: 0,
        }
    }
}

#[derive(Default)]
struct Counters {
    /// Events read from the log, and those that could not be named (backend slot not
    /// published, translation gone).
    reported: u64,
    unnamed: u64,
    received_entries: u64,
    installed: u64,
    closed: u64,
    conflicts: u64,
    crowded: u64,
    /// Entries this node cannot place (a service or backend it does not have).
    not_placed: u64,
    errors: u64,
}

struct Node {
    receiver: Receiver,
    peers: Peers,
    out: BTreeMap<IpAddr, Outbox>,
    socket: UdpSocket,
    v6_socket: bool,
    port: u16,
    events: FlowEvents,
    tables: FlowTables,
    directory: watch::Receiver<Arc<Directory>>,
    clock: Box<dyn Fn() -> u32 + Send>,
    serving: watch::Receiver<bool>,
    report: mpsc::Sender<Event>,
    counters: Counters,
    last_report: Option<Instant>,
    last_refresh: Instant,
    /// Synced as last reported; synced at least once.
    was_synced: bool,
    synced_once: bool,
    conflicts_log: ConflictLog,
}

/// Conflicts in the log: at most a line every [`ConflictLog::EVERY`], with the count since
/// the last line and the last one's translation.
#[derive(Default)]
struct ConflictLog {
    since: u64,
    last_line: Option<Instant>,
}

impl ConflictLog {
    const EVERY: Duration = Duration::from_secs(5);

    fn note(&mut self, conflicts: u64, held: Held, now: Instant) {
        self.since += conflicts;
        if self
            .last_line
            .is_some_and(|t| now.saturating_duration_since(t) < Self::EVERY)
        {
            return;
        }
        self.last_line = Some(now);
        let protocol = match held.protocol {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            p => format!("protocol {p}"),
        };
        info!(
            "flow sync: {} peer translations not installed: their reverse-NAT slots hold live \
             translations of this node's (the last: {protocol}, {}, seen here {} s ago, \
             closing bits {:#x})",
            self.since,
            if held.same_tuple {
                "the same backend and SNAT port for another client"
            } else {
                "another tuple in the same slot"
            },
            held.age,
            held.closing
        );
        self.since = 0;
    }
}

impl Node {
    fn run(&mut self, stop: &AtomicBool) {
        info!(
            "flow sync on UDP port {}: peers {}",
            self.port,
            self.out
                .keys()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            self.wait_readable();
            let now = Instant::now();
            self.receive(&mut buf, now);
            self.report_flows(now);
            let due = self.peers.tick(now);
            self.act(&due, now);
            if now.saturating_duration_since(self.last_refresh)
                >= Duration::from_secs(REFRESH_SECS.into())
            {
                self.last_refresh = now;
                self.refresh(now);
            }
            self.flush(now);
            self.status(now);
        }
    }

    fn wait_readable(&self) {
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, POLL.as_millis() as libc::c_int) };
    }

    fn receive(&mut self, buf: &mut [u8], now: Instant) {
        // Bounded per round, so a flood of datagrams cannot starve the log.
        for _ in 0..4096 {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; nothing to do about them.
                    if e.raw_os_error() != Some(libc::ECONNREFUSED) {
                        self.counters.errors += 1;
                    }
                    continue;
                }
            };
            // One byte more than the largest message is read: an oversized one is refused.
            let Ok(taken) = self.receiver.take(from, &buf[..n]) else {
                continue;
            };
            let peer = unmapped(from.ip());
            let message = taken.message;
            let due = self.peers.heard(
                peer,
                message.kind,
                message.entries.len(),
                taken.new_epoch,
                now,
            );
            if !message.entries.is_empty() {
                self.take_entries(&message.entries);
            }
            self.act(&due, now);
            let lost = self.receiver.peer(peer).map_or(0, |v| v.lost);
            if let Some(out) = self.out.get_mut(&peer) {
                if lost > out.lost_from {
                    out.lost_from = lost;
                    let repair = self.peers.lost(peer, now);
                    if !repair.is_empty() {
                        info!("flow sync: datagrams from {peer} were lost on the way ({lost} so far): asking for its table again");
                    }
                    self.act(&repair, now);
                }
            }
        }
    }

    fn take_entries(&mut self, entries: &[Entry]) {
        self.counters.received_entries += entries.len() as u64;
        let directory = self.directory.borrow().clone();
        let mut new = Vec::new();
        let mut refreshed = Vec::new();
        let mut closed = Vec::new();
        for e in entries {
            match (e.op, directory.incoming(e)) {
                (_, None) => self.counters.not_placed += 1,
                (Op::Flow, Some(i)) if e.flags & wire::REFRESHED != 0 => refreshed.push(i),
                (Op::Flow, Some(i)) => new.push(i),
                (Op::Closed, Some(i)) => closed.push((i, e.flags)),
            }
        }
        let clock = (self.clock)();
        let role = if *self.serving.borrow() {
            Role::Serving
        } else {
            Role::Standby
        };
        for (flows, seen) in [(new, copy_seen(clock)), (refreshed, refreshed_seen(clock))] {
            if flows.is_empty() {
                continue;
            }
            match self.tables.install(&flows, (clock, seen), role) {
                Ok(done) => {
                    self.counters.installed += done.flows;
                    self.counters.conflicts += done.conflicts;
                    self.counters.crowded += done.crowded;
                    if let Some(held) = done.last_conflict {
                        self.conflicts_log
                            .note(done.conflicts, held, Instant::now());
                    }
                }
                Err(_) => self.counters.not_placed += flows.len() as u64,
            }
        }
        if !closed.is_empty() {
            self.counters.closed += self.tables.close(&closed, clock);
        }
    }

    /// Reads the log: new flows and closed translations, to every peer.
    fn report_flows(&mut self, now: Instant) {
        let directory = self.directory.borrow().clone();
        let mut entries = Vec::new();
        // At most this much per round: a burst does not hold up the socket.
        for _ in 0..16 {
            let events = self.events.drain(4096);
            if events.is_empty() {
                break;
            }
            self.counters.reported += events.len() as u64;
            for event in &events {
                match self.name(&directory, event) {
                    Some(e) => entries.push(e),
                    None => self.counters.unnamed += 1,
                }
            }
        }
        if !entries.is_empty() {
            self.queue_for_all(Kind::Update, &entries, now);
        }
    }

    fn name(&self, directory: &Directory, event: &FlowEventOf) -> Option<Entry> {
        let closed = match event {
            FlowEventOf::V4(e) => e.op == FLOW_EVENT_CLOSED,
            FlowEventOf::V6(e) => e.op == FLOW_EVENT_CLOSED,
        };
        if !closed {
            return directory.outgoing(event);
        }
        match event {
            FlowEventOf::V4(e) => directory.closed(&e.key, &self.tables.translation(&e.key)?.nat),
            FlowEventOf::V6(e) => {
                directory.closed(&e.key, &self.tables.translation6(&e.key)?.nat())
            }
        }
    }

    fn queue_for_all(&mut self, kind: Kind, entries: &[Entry], now: Instant) {
        let needed = entries
            .len()
            .div_ceil(wire::entries_that_fit(entries).max(1));
        for out in self.out.values_mut() {
            if QUEUE.saturating_sub(out.queue.len()) < needed {
                out.lost += entries.len() as u64;
                continue;
            }
            let datagrams = out.sender.datagrams(kind, entries);
            out.queue.extend(datagrams.into_iter().map(|d| (now, d)));
        }
    }

    fn act(&mut self, due: &[Do], now: Instant) {
        for d in due {
            match *d {
                Do::Hello(peer) => self.queue_first(peer, Kind::Hello, now),
                Do::AskBulk(peer) => self.queue_first(peer, Kind::BulkRequest, now),
                Do::SendBulk(peer) => self.start_bulk(peer),
            }
        }
    }

    /// A message without entries, ahead of anything queued for that peer.
    fn queue_first(&mut self, peer: IpAddr, kind: Kind, now: Instant) {
        if let Some(out) = self.out.get_mut(&peer) {
            for d in out.sender.datagrams(kind, &[]).into_iter().rev() {
                out.queue.push_front((now, d));
            }
        }
    }

    /// The whole table for `peer` (unless one is on its way already).
    fn start_bulk(&mut self, peer: IpAddr) {
        let clock = (self.clock)();
        let Some(out) = self.out.get(&peer) else {
            return;
        };
        if out.bulk.is_some() {
            return;
        }
        let directory = self.directory.borrow().clone();
        // The flows active here in the last refresh period go flagged as refreshed: a peer
        // whose table is too small for the whole keeps them before the idler ones.
        let recent: std::collections::HashSet<_> = self
            .own_live(&directory, clock, REFRESH_SECS)
            .map(|e| (e.client, e.vip, e.protocol))
            .collect();
        let entries: Vec<Entry> = self
            .own_live(&directory, clock, IDLE_SECS - 1)
            .map(|e| Entry {
                flags: if recent.contains(&(e.client, e.vip, e.protocol)) {
                    e.flags | wire::REFRESHED
                } else {
                    e.flags
                },
                ..e
            })
            .collect();
        info!(
            "flow sync: {peer} asked for this node's table: sending {} flows",
            entries.len()
        );
        if let Some(out) = self.out.get_mut(&peer) {
            out.bulk = Some((entries, 0));
            out.bulks_sent += 1;
        }
    }

    /// The flows seen here at most `within` seconds before `clock`, named for the peers,
    /// whose translations are still theirs here (see [`FlowTables::holds_translation`]).
    fn own_live<'a>(
        &'a self,
        directory: &'a Directory,
        clock: u32,
        within: u32,
    ) -> impl Iterator<Item = Entry> + 'a {
        self.tables
            .live(clock, within, &|slot| directory.service_tuple(slot))
            .into_iter()
            .filter_map(|e| directory.outgoing(&e))
            .filter(|e| {
                directory
                    .incoming(e)
                    .is_some_and(|i| self.tables.holds_translation(&i))
            })
    }

    /// The flows active here in the last refresh period, to every peer again.
    fn refresh(&mut self, now: Instant) {
        let clock = (self.clock)();
        let directory = self.directory.borrow().clone();
        let entries: Vec<Entry> = self
            .own_live(&directory, clock, REFRESH_SECS)
            .map(|e| Entry {
                flags: e.flags | wire::REFRESHED,
                ..e
            })
            .collect();
        if !entries.is_empty() {
            self.queue_for_all(Kind::Update, &entries, now);
        }
    }

    fn flush(&mut self, now: Instant) {
        let Node {
            out,
            socket,
            v6_socket,
            port,
            ..
        } = self;
        for (&peer, out) in out.iter_mut() {
            // A bulk fills the queue as it empties: it never crowds out updates.
            if let Some((entries, at)) = &mut out.bulk {
                while out.queue.len() < QUEUE / 2 {
                    let chunk =
                        (entries.len() - *at).min(wire::entries_that_fit(&entries[*at..]) * 64);
                    if chunk == 0 {
                        for d in out.sender.datagrams(Kind::BulkEnd, &[]) {
                            out.queue.push_back((now, d));
                        }
                        out.bulk = None;
                        break;
                    }
                    for d in out.sender.datagrams(Kind::Bulk, &entries[*at..*at + chunk]) {
                        out.queue.push_back((now, d));
                    }
                    *at += chunk;
                }
            }
            let to = SocketAddr::new(
                match peer {
                    IpAddr::V4(v4) if *v6_socket => IpAddr::V6(v4.to_ipv6_mapped()),
                    other => other,
                },
                *port,
            );
            for _ in 0..BURST {
                let Some((queued, datagram)) = out.queue.front() else {
                    break;
                };
                match socket.send_to(datagram, to) {
                    Ok(_) => {
                        out.sent_datagrams += 1;
                        out.sent_entries += entry_count(datagram);
                        out.lag = out.lag.max(now.saturating_duration_since(*queued));
                        out.queue.pop_front();
                    }
                    // The socket's buffer is full: the rest waits for the next round.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // No route, the peer's port unreachable: lost, counted.
                        out.lost += entry_count(datagram);
                        out.queue.pop_front();
                    }
                }
            }
        }
    }

    fn status(&mut self, now: Instant) {
        let synced = self.peers.synced();
        let changed = synced != self.was_synced;
        if changed {
            self.was_synced = synced;
            let views = self.peers.view(now);
            let how: Vec<String> = views
                .iter()
                .map(|v| format!("{} {}", v.peer, bulk_words(&v.bulk)))
                .collect();
            if !synced {
                info!(
                    "flow sync: waiting for peers' tables again ({}): no preemption until they arrive",
                    how.join(", ")
                );
            } else if self.synced_once {
                info!("flow sync: peers' tables taken again ({})", how.join(", "));
            } else {
                self.synced_once = true;
                info!(
                    "flow sync: peers' tables taken ({}) after {:.1?}",
                    how.join(", "),
                    self.peers.synced_after().unwrap_or_default()
                );
            }
        }
        let due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(500));
        if !due && !changed {
            return;
        }
        self.last_report = Some(now);
        let views = self.peers.view(now);
        let peers = views
            .iter()
            .map(|v| {
                let out = self.out.get(&v.peer);
                let seen = self.receiver.peer(v.peer);
                let lag = out.map_or(Duration::ZERO, |o| {
                    o.queue
                        .front()
                        .map_or(o.lag, |(t, _)| o.lag.max(now.saturating_duration_since(*t)))
                });
                FlowSyncPeerStatus {
                    peer: v.peer.to_string(),
                    up: v.up,
                    heard_ms_ago: v.heard.map(|d| d.as_millis() as u64),
                    bulk: bulk_words(&v.bulk),
                    bulk_done: matches!(v.bulk, Bulk::Done { .. }),
                    queued: out.map_or(0, |o| o.queue.len() as u64),
                    lag_ms: lag.as_millis() as u64,
                    sent_datagrams: out.map_or(0, |o| o.sent_datagrams),
                    sent_entries: out.map_or(0, |o| o.sent_entries),
                    lost_entries: out.map_or(0, |o| o.lost),
                    bulks_sent: out.map_or(0, |o| o.bulks_sent),
                    received_datagrams: seen.map_or(0, |s| s.messages),
                    received_entries: seen.map_or(0, |s| s.entries),
                    restarts: seen.map_or(0, |s| s.restarts.saturating_sub(1)),
                    lost_on_the_way: seen.map_or(0, |s| s.lost),
                    repairs: v.repairs,
                }
            })
            .collect();
        for out in self.out.values_mut() {
            out.lag = Duration::ZERO;
        }
        let c = &self.counters;
        let status = FlowSyncStatus {
            port: self.port,
            synced,
            synced_after_ms: self.peers.synced_after().map(|d| d.as_millis() as u64),
            peers,
            reported: c.reported,
            unnamed: c.unnamed,
            received_entries: c.received_entries,
            installed: c.installed,
            closed: c.closed,
            conflicts: c.conflicts,
            crowded: c.crowded,
            not_placed: c.not_placed,
            socket_errors: c.errors,
            events_lost: 0,
            dropped: self
                .receiver
                .refused()
                .into_iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
        };
        // Never waits: a busy controller gets the next one.
        let _ = self.report.try_send(Event::FlowSync(Box::new(status)));
    }
}

fn entry_count(datagram: &[u8]) -> u64 {
    datagram
        .get(6..8)
        .map_or(0, |b| u64::from(u16::from_be_bytes([b[0], b[1]])))
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A bulk sync's state in words (status).
pub fn bulk_words(b: &Bulk) -> String {
    match b {
        Bulk::Asked { .. } => "asked for its table".into(),
        Bulk::Receiving { entries, .. } => format!("receiving its table ({entries} flows so far)"),
        Bulk::Done { entries, took } => format!("table taken ({entries} flows in {took:.0?})"),
        Bulk::GaveUp { silent: true } => "no answer: serving without its table".into(),
        Bulk::GaveUp { silent: false } => {
            "its table did not arrive whole in time: serving without it".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_go_idle_unless_refreshed() {
        use k3s_xdp_common::table::idle;
        let clock = 5;
        let seen = copy_seen(clock);
        assert!(!idle(seen, clock), "fresh enough at install");
        assert!(
            !idle(seen, clock + 2 * REFRESH_SECS - 1),
            "two refreshes missed at most"
        );
        assert!(idle(seen, clock + 2 * REFRESH_SECS), "then replaceable");
    }

    #[test]
    fn a_refreshed_copy_outranks_the_copies_announced_until_its_next_refresh() {
        use k3s_xdp_common::table::{idle, keep_rank};
        let t = 1000;
        let refreshed = refreshed_seen(t);
        for since in 0..REFRESH_SECS {
            let now = t + since;
            assert!(
                keep_rank(true, refreshed, now) > keep_rank(true, copy_seen(now), now),
                "a copy announced {since} s after the refresh ranks lower"
            );
        }
        assert!(
            !idle(refreshed, t + 3 * REFRESH_SECS - 1),
            "three refreshes missed"
        );
        assert!(idle(refreshed, t + 3 * REFRESH_SECS));
        assert!(
            keep_rank(true, t, t) > keep_rank(true, refreshed, t),
            "this node's own flows rank above any copy"
        );
    }

    #[test]
    fn a_datagrams_entry_count_is_read_from_its_header() {
        let key = Key::from_file_bytes(&[b'k'; 32]).unwrap();
        let mut s = Sender::new(key, 1);
        let e = Entry {
            op: Op::Flow,
            protocol: 6,
            flags: 0,
            client: "198.51.100.7:51000".parse().unwrap(),
            vip: "192.0.2.100:6443".parse().unwrap(),
            backend: "192.0.2.50:6443".parse().unwrap(),
            snat: "192.0.2.100:40000".parse().unwrap(),
        };
        let d = s.datagrams(Kind::Update, &[e; 3]);
        assert_eq!(entry_count(&d[0]), 3);
        assert_eq!(entry_count(&s.datagrams(Kind::Hello, &[])[0]), 0);
    }
}
