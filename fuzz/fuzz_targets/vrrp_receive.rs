//! The VRRP receive path beyond the codec: what a neighbour on the link sends, as the runtime
//! takes it in, into the RFC 9568 state machine, with a simulated clock that only moves
//! forward. One virtual router (IPv4 with v3, v2 or v2 with `auth_pass`, or IPv6), its settings
//! from the input's first bytes, then a sequence of events:
//! - adverts built from the input (source, priority, interval, VRID, version, addresses, TTL or
//!   hop limit, bytes damaged with or without the checksum made right again), IPv4 with their
//!   header (`packet::ipv4_header`), IPv6 with the control messages recvmsg(2) would give
//!   (`system::raw::ancillary`, well formed, truncated or raw), then `runtime::judge` (our own
//!   adverts, unicast peers) and `Machine::handle`;
//! - raw packets through the same path;
//! - time passing (the machine's timers fire at their deadlines, or a little late), timer
//!   wake-ups before a deadline (the runtime wakes for its other timers too);
//! - startup, shutdown, tracking, link and flow-sync changes.
//!
//! What must hold, besides no panic (each rule is one the machine's documentation and unit tests
//! state): the control messages read back as written (and as far as a truncated buffer holds
//! them); a valid advert is accepted with its priority and interval; the machine reports as
//! master itself exactly when it is master, or a router it heard a priority above 0 from; it
//! holds the VIPs exactly when master (TakeVips and ReleaseVips alternate); a master advertises
//! its current priority and its next advert is due `advert_int` later; a backup always has a
//! deadline and an initial or faulty router none, never in the past, never further than
//! Master_Down_Interval; states change only on the events that may change them (only a timer
//! makes a master, only a better advert makes a master step down); a backup whose master sends
//! priority 0 is due to take over after Skew_Time, and does; a master steps down for a higher
//! priority, or an equal one from a higher address, and ignores the rest; a backup follows an
//! advert it accepts (Master_Down_Interval from the advertised interval) and, preempting with
//! its flows synced and no delay, ignores a lower one; a wake-up before a deadline does nothing.

#![no_main]

use k3s_xdp::{
    system::raw::{ancillary, Ancillary},
    vrrp::{
        machine::{Action, Event, Machine, Output, Params, State},
        packet::{
            encode, internet_checksum, ipv4_header, pseudo_header_sum, Advert, Expect, Family,
            Received, Reject, Version, IPPROTO_VRRP,
        },
        runtime::judge,
    },
};
use k3s_xdp_fuzz::Bytes;
use libfuzzer_sys::fuzz_target;
use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

/// Events per input: enough for many elections, few enough to stay fast.
const MAX_EVENTS: usize = 256;
/// Timer firings per step of time: a fast `advert_int` over a long step would spend the run
/// in adverts (the clock stops at the last firing).
const MAX_FIRINGS: usize = 64;

/// The router's own address sits between two peers', so ties go both ways.
const PRIMARY_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const OTHERS_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 50),
    Ipv4Addr::new(192, 0, 2, 200),
    Ipv4Addr::new(198, 51, 100, 1),
];
const VIPS_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(192, 0, 2, 10),
    Ipv4Addr::new(192, 0, 2, 11),
    Ipv4Addr::new(203, 0, 113, 1),
    Ipv4Addr::new(192, 0, 2, 10),
];
const PRIMARY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x100);
const OTHERS_V6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x50),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x200),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
];
const VIPS_V6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
];
const PASSWORD: &[u8] = b"k3s-pass";

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let setup = input.u8();
    if setup & 1 == 0 {
        let version = match (setup >> 1) & 3 {
            0 | 3 => Version::V3,
            1 => Version::V2 { auth_pass: None },
            _ => Version::V2 {
                auth_pass: Some(PASSWORD.to_vec()),
            },
        };
        Router::new(&mut input, setup, version, PRIMARY_V4, OTHERS_V4, &VIPS_V4).run(&mut input);
    } else {
        Router::new(
            &mut input,
            setup,
            Version::V3,
            PRIMARY_V6,
            OTHERS_V6,
            &VIPS_V6,
        )
        .run(&mut input);
    }
});

/// Takes what the IP layer hands over, and whether it arrived as sent (the advert's own
/// damage aside).
type Receiver<'r, A> = dyn FnMut(Result<Received<'_, A>, Reject>, bool) + 'r;

/// What differs between the families on the receive path: how a message reaches the codec.
trait Wire: Family {
    /// The message `message` from `src` to `dst` as the runtime receives it (IPv4: behind its
    /// header, IPv6: with its control messages), read off the input where it says how.
    fn receive(
        input: &mut Bytes,
        src: Self,
        dst: Self,
        hop_limit: u8,
        message: &[u8],
        damaged: bool,
        each: &mut Receiver<'_, Self>,
    );
}

impl Wire for Ipv4Addr {
    fn receive(
        input: &mut Bytes,
        src: Self,
        dst: Self,
        hop_limit: u8,
        message: &[u8],
        damaged: bool,
        each: &mut Receiver<'_, Self>,
    ) {
        let mut packet = vec![0x45, 0xc0, 0, 0, 0, 0, 0, 0, hop_limit, IPPROTO_VRRP, 0, 0];
        packet[2..4].copy_from_slice(&((20 + message.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&src.octets());
        packet.extend_from_slice(&dst.octets());
        packet.extend_from_slice(message);
        let mut intact = !damaged;
        if damaged {
            // The header's bytes (IHL, total length) too; or the packet cut short.
            match input.u8() % 3 {
                0 => {
                    let at = usize::from(input.u8()) % packet.len();
                    packet[at] ^= input.u8();
                }
                1 => packet.truncate(usize::from(input.u8())),
                _ => intact = true,
            }
        }
        each(ipv4_header(&packet), intact);
    }
}

impl Wire for Ipv6Addr {
    fn receive(
        input: &mut Bytes,
        src: Self,
        dst: Self,
        hop_limit: u8,
        message: &[u8],
        damaged: bool,
        each: &mut Receiver<'_, Self>,
    ) {
        // The kernel's control messages: the hop limit and the destination, in either order;
        // with the damage, others, missing ones, a hop limit that is not one, a cut buffer or
        // raw bytes.
        let layout = if damaged { input.u8() } else { 0 };
        let mut records = Vec::new();
        if layout & 1 != 0 {
            records.push(Record::other(input));
        }
        if layout & 2 == 0 {
            let value = if layout & 4 != 0 {
                input.pick(&[-1, 256, 0x1ff, i32::MIN, 0, 64])
            } else {
                i32::from(hop_limit)
            };
            records.push(Record::HopLimit(value));
        }
        if layout & 8 == 0 {
            records.push(Record::PktInfo(dst));
        }
        if layout & 16 != 0 {
            records.reverse();
        }
        if layout & 32 != 0 {
            records.push(Record::other(input));
        }
        let (control, ends) = control_messages(&records);
        let facts = if layout & 64 != 0 {
            let raw = input.bytes(128);
            ancillary(raw)
        } else {
            let cut = if layout & 128 != 0 {
                usize::from(input.u8()).min(control.len())
            } else {
                control.len()
            };
            let facts = ancillary(&control[..cut]);
            // What the walk reads: every record whose bytes the buffer holds, as written.
            let mut want = Ancillary::default();
            for (record, end) in records.iter().zip(&ends) {
                if *end <= cut {
                    record.apply(&mut want);
                }
            }
            assert_eq!(
                facts, want,
                "records {records:?} cut at {cut}: {control:02x?}"
            );
            facts
        };
        let intact = facts.hop_limit == Some(hop_limit) && facts.dst == Some(dst);
        each(Ok(facts.received(src, message)), intact);
    }
}

/// One control message (`struct cmsghdr` and its data) as the kernel writes it.
#[derive(Clone, Debug)]
enum Record {
    HopLimit(i32),
    /// `struct in6_pktinfo`: the destination and an interface index.
    PktInfo(Ipv6Addr),
    /// Another option's, or one of these at another level: skipped.
    Other {
        level: i32,
        kind: i32,
        len: u8,
    },
}

impl Record {
    fn other(input: &mut Bytes) -> Record {
        let (level, kind) = input.pick(&[
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMP),
            (libc::SOL_SOCKET, libc::IPV6_HOPLIMIT),
            (libc::IPPROTO_IP, libc::IPV6_PKTINFO),
            (libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS),
        ]);
        Record::Other {
            level,
            kind,
            len: input.u8() % 41,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let (level, kind, data) = match self {
            Record::HopLimit(v) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_HOPLIMIT,
                v.to_ne_bytes().to_vec(),
            ),
            Record::PktInfo(dst) => {
                let mut d = dst.octets().to_vec();
                d.extend_from_slice(&2u32.to_ne_bytes());
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, d)
            }
            Record::Other { level, kind, len } => (*level, *kind, vec![0xa5; usize::from(*len)]),
        };
        out.extend_from_slice(&(size_of::<libc::cmsghdr>() + data.len()).to_ne_bytes());
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&data);
    }

    fn apply(&self, facts: &mut Ancillary) {
        match self {
            Record::HopLimit(v) => facts.hop_limit = u8::try_from(*v).ok(),
            Record::PktInfo(dst) => facts.dst = Some(*dst),
            Record::Other { .. } => {}
        }
    }
}

/// The control buffer holding `records`, each padded to `size_t`, and where each one's bytes
/// end (before its padding).
fn control_messages(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
    let mut control = Vec::new();
    let mut ends = Vec::new();
    for record in records {
        record.write(&mut control);
        ends.push(control.len());
        control.resize(
            control.len().div_ceil(size_of::<usize>()) * size_of::<usize>(),
            0,
        );
    }
    // SAFETY: CMSG_SPACE only computes a size.
    let pktinfo_space = unsafe { libc::CMSG_SPACE(20) } as usize;
    if let [Record::PktInfo(_)] = records {
        assert_eq!(control.len(), pktinfo_space, "the kernel's layout");
    }
    (control, ends)
}

/// One virtual router, its machine, the simulated clock and what the machine was told.
struct Router<A: Wire> {
    machine: Machine,
    /// The simulated clock, and where it started.
    now: Instant,
    t0: Instant,
    version: Version,
    vrid: u8,
    vips: Vec<A>,
    peers: Vec<A>,
    primary: A,
    /// Its neighbours (below and above `primary`, and one further away).
    others: [A; 3],
    /// What the machine was told last.
    track_ok: bool,
    link_up: bool,
    synced: bool,
    /// Whether the VIPs are held, from TakeVips and ReleaseVips.
    holding: bool,
    /// The routers whose adverts reached the machine with a priority above 0.
    heard: Vec<IpAddr>,
    /// The longest interval any accepted advert carried.
    longest_interval: Duration,
    /// When a backup is due to take over after a priority-0 advert, until another event.
    leaving: Option<Duration>,
}

impl<A: Wire> Router<A> {
    fn new(
        input: &mut Bytes,
        setup: u8,
        version: Version,
        primary: A,
        others: [A; 3],
        vip_choices: &[A; 4],
    ) -> Self {
        let v2 = matches!(version, Version::V2 { .. });
        let priority = input.u8().clamp(1, 254);
        let advert_int = if v2 {
            Duration::from_secs(input.pick(&[1, 1, 2, 3, 255]))
        } else {
            Duration::from_millis(input.pick(&[1000, 1000, 100, 10, 2000, 250, 40950]))
        };
        let preempt_delay = Duration::from_millis(input.pick(&[0, 0, 0, 5000, 300, 60_000, 1000]));
        let track_weight = input.pick(&[-150, 0, -50, 10, -254, 254, -1, -99]);
        let flags = input.u8();
        let vips = vip_choices[..usize::from(input.u8() % 5)].to_vec();
        let vrid = input.u8();
        let peers = if setup & 32 != 0 {
            let mask = input.u8();
            (0..3)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| others[i])
                .collect()
        } else {
            Vec::new()
        };
        let params = Params {
            priority,
            advert_int,
            preempt: setup & 8 == 0,
            preempt_delay,
            start_as_master: setup & 16 != 0,
            primary: primary.into(),
            track_weight,
            version: if v2 { 2 } else { 3 },
        };
        let t0 = Instant::now();
        let mut router = Router {
            machine: Machine::new(params),
            now: t0,
            t0,
            version,
            vrid,
            vips,
            peers,
            primary,
            others,
            track_ok: true,
            link_up: true,
            synced: true,
            holding: false,
            heard: Vec::new(),
            longest_interval: advert_int,
            leaving: None,
        };
        // As the runtime starts it: what tracking, the link and flow sync say, then Startup.
        let now = router.now;
        if flags & 1 != 0 {
            router.step(Event::Track { ok: false }, now);
        }
        if flags & 2 != 0 {
            router.step(Event::Link { up: false }, now);
        }
        router.step(Event::Synced { ok: flags & 4 == 0 }, now);
        router.step(Event::Startup, now);
        router
    }

    fn params(&self) -> &Params {
        self.machine.params()
    }

    fn run(mut self, input: &mut Bytes) {
        for _ in 0..MAX_EVENTS {
            if input.rest_len() == 0 {
                break;
            }
            let now = self.now;
            match input.u8() % 16 {
                0..=5 => self.advert(input),
                6 => self.raw_packet(input),
                7..=9 => {
                    let step = Duration::from_millis(u64::from(input.u16()));
                    let late = Duration::from_millis(u64::from(input.u8()));
                    self.wait(step, late);
                }
                10 => {
                    // Just short of the deadline (or at it), or a wake-up for another timer.
                    let short = Duration::from_micros(u64::from(input.u16()));
                    if let Some(at) = self.machine.next_deadline() {
                        let at = at.checked_sub(short).unwrap_or(now).max(now);
                        self.wait(at - now, Duration::ZERO);
                    }
                    self.step(Event::Timer, self.now);
                }
                11 => self.step(Event::Startup, now),
                12 => self.step(Event::Shutdown, now),
                13 => self.step(
                    Event::Track {
                        ok: input.u8() & 1 == 0,
                    },
                    now,
                ),
                14 => self.step(
                    Event::Link {
                        up: input.u8() & 1 == 0,
                    },
                    now,
                ),
                _ => self.step(
                    Event::Synced {
                        ok: input.u8() & 1 == 0,
                    },
                    now,
                ),
            }
        }
    }

    /// Lets `step` of time pass, the machine's timers firing on the way (`late` after their
    /// deadline, within the step).
    fn wait(&mut self, step: Duration, late: Duration) {
        let until = self.now + step;
        for _ in 0..MAX_FIRINGS {
            match self.machine.next_deadline() {
                Some(at) if at <= until => {
                    let at = (at + late).min(until).max(self.now);
                    self.step(Event::Timer, at);
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }

    /// An advert built from the input, sent over the wire and received.
    fn advert(&mut self, input: &mut Bytes) {
        let which = input.u8();
        let src = match which {
            0..=2 => self.others[usize::from(which)],
            3 => self.primary,
            4..=0x7f => self.others[usize::from(which) % 2],
            _ => raw_address(input),
        };
        let priority = input.u8();
        let v2 = matches!(self.version, Version::V2 { .. });
        // What the wire can carry: centiseconds in v3, seconds in v2, never zero.
        let interval = if v2 {
            Duration::from_secs(u64::from(input.u8().max(1)))
        } else {
            Duration::from_millis(10 * u64::from((input.u16() & 0x0fff).max(1)))
        };
        let how = input.u8();
        let vrid = if how & 1 != 0 { input.u8() } else { self.vrid };
        let version = if how & 2 != 0 {
            match input.u8() % 4 {
                0 => Version::V3,
                1 => Version::V2 { auth_pass: None },
                2 => Version::V2 {
                    auth_pass: Some(PASSWORD.to_vec()),
                },
                _ => Version::V2 {
                    auth_pass: Some(b"other".to_vec()),
                },
            }
        } else {
            self.version.clone()
        };
        let mut addresses = self.vips.clone();
        if !addresses.is_empty() {
            let turn = usize::from(input.u8()) % addresses.len();
            addresses.rotate_left(turn);
        }
        if how & 4 != 0 {
            match input.u8() % 3 {
                0 => {
                    addresses.pop();
                }
                1 => addresses.push(self.others[2]),
                _ => addresses.push(raw_address(input)),
            }
        }
        let hop_limit = if how & 8 != 0 { input.u8() } else { 255 };
        let dst = if how & 16 != 0 && !self.peers.is_empty() {
            self.primary
        } else {
            A::MULTICAST_GROUP
        };
        let advert = Advert {
            vrid,
            priority,
            interval,
            addresses,
        };
        let mut message = encode(&advert, &version, src, dst);
        let damaged = how & 32 != 0;
        if damaged {
            for _ in 0..input.u8() % 3 {
                let at = usize::from(input.u8()) % message.len();
                message[at] ^= input.u8();
            }
            if how & 64 != 0 {
                fix_checksum(&mut message, src, dst);
            }
        }
        // The codec checks these against the router's expectations (the order of the
        // addresses aside; v2 ignores the interval's upper bits in v3 and its password field
        // is the configured one or nothing).
        let valid = vrid == self.vrid
            && version == self.version
            && hop_limit == 255
            && sorted(&advert.addresses) == sorted(&self.vips);
        A::receive(
            input,
            src,
            dst,
            hop_limit,
            &message,
            damaged || how & 128 != 0,
            &mut |received, intact| {
                let expected = (valid && intact && !damaged).then_some((src, priority, interval));
                self.deliver(received, expected);
            },
        );
    }

    /// Raw bytes as a message from a neighbour (the checksum made right when the input asks),
    /// or for IPv4 as a whole packet, header included.
    fn raw_packet(&mut self, input: &mut Bytes) {
        let how = input.u8();
        let mut message = input.bytes(160).to_vec();
        if A::LEN == 4 && how & 2 != 0 {
            let received = ipv4_header(&message).map(|r| Received {
                src: A::read(&r.src.octets()).expect("an IPv4 address"),
                dst: A::read(&r.dst.octets()).expect("an IPv4 address"),
                hop_limit: r.hop_limit,
                message: r.message,
            });
            self.deliver(received, None);
            return;
        }
        let src = self.others[usize::from(how >> 2) % 3];
        let dst = A::MULTICAST_GROUP;
        if how & 1 != 0 {
            fix_checksum(&mut message, src, dst);
        }
        A::receive(input, src, dst, 255, &message, false, &mut |received, _| {
            self.deliver(received, None)
        });
    }

    /// What the runtime does with a received packet: judge it, hand an accepted advert to the
    /// machine. `expected`: the advert was sent valid and arrived intact, so it must be
    /// accepted, unless it is ours or from a stranger in unicast mode.
    fn deliver(
        &mut self,
        received: Result<Received<'_, A>, Reject>,
        expected: Option<(A, u8, Duration)>,
    ) {
        let expect = Expect {
            vrid: self.vrid,
            version: &self.version,
            addresses: &self.vips,
        };
        let judged = received.and_then(|r| judge(&r, &expect, &self.peers, self.primary));
        if let Some((src, priority, interval)) = expected {
            let want = if src == self.primary {
                Ok(None)
            } else if !self.peers.is_empty() && !self.peers.contains(&src) {
                Err(Reject::NotAPeer(src.into()))
            } else {
                Ok(Some((src, priority, interval)))
            };
            let got = judged
                .clone()
                .map(|o| o.map(|(from, a)| (from, a.priority, a.interval)));
            assert_eq!(got, want, "a valid advert, received intact");
        }
        let Ok(Some((from, advert))) = judged else {
            return;
        };
        assert_ne!(from, self.primary, "our own adverts are not judged");
        assert!(self.peers.is_empty() || self.peers.contains(&from));
        assert_eq!(advert.vrid, self.vrid);
        assert!(!advert.interval.is_zero());
        self.step(
            Event::Advert {
                from: from.into(),
                priority: advert.priority,
                interval: advert.interval,
            },
            self.now,
        );
    }

    /// Runs `event` at `now` through the machine and checks what it did.
    fn step(&mut self, event: Event, now: Instant) {
        assert!(now >= self.now, "the clock only moves forward");
        self.now = now;
        if let Event::Advert {
            from,
            priority,
            interval,
        } = event
        {
            if priority > 0 {
                if !self.heard.contains(&from) {
                    self.heard.push(from);
                }
                self.longest_interval = self.longest_interval.max(interval);
            }
        }
        let before = Snapshot::of(&self.machine, self.t0);
        let out = self.machine.handle(event.clone(), now);
        let after = Snapshot::of(&self.machine, self.t0);
        let context = Context {
            event: &event,
            at: now - self.t0,
            before: &before,
            after: &after,
            out: &out,
        };
        self.always(&before, &after, &out, &context);
        self.rules(&event, &before, &after, &out, &context);
    }

    /// What holds after any event.
    fn always(&mut self, before: &Snapshot, after: &Snapshot, out: &Output, context: &Context) {
        let now = self.now - self.t0;
        let m = &self.machine;
        // The transition says what changed.
        match &out.transition {
            Some(t) => {
                assert_eq!((t.from, t.to), (before.state, after.state), "{context:?}");
                assert_ne!(t.from, t.to, "{context:?}");
                assert!(!t.reason.is_empty(), "{context:?}");
            }
            None => assert_eq!(before.state, after.state, "{context:?}"),
        }
        // Outputs: at most an advert and the VIPs' change, in that order.
        assert!(out.actions.len() <= 2, "{context:?}");
        for (i, action) in out.actions.iter().enumerate() {
            match action {
                Action::Advertise { priority: 0 } => {
                    assert_eq!(i, 0, "{context:?}");
                    assert_eq!(before.state, State::Master, "only a master says it leaves");
                    assert!(
                        matches!(after.state, State::Initialize | State::Fault),
                        "{context:?}"
                    );
                }
                Action::Advertise { priority } => {
                    assert_eq!(i, 0, "{context:?}");
                    assert_eq!(after.state, State::Master, "{context:?}");
                    assert_eq!(*priority, m.priority(), "{context:?}");
                    assert_eq!(
                        after.deadline,
                        Some(now + self.params().advert_int),
                        "the next advert is due advert_int later: {context:?}"
                    );
                }
                Action::TakeVips => {
                    assert!(!self.holding, "taken twice: {context:?}");
                    assert_eq!(before.state, State::Backup, "{context:?}");
                    self.holding = true;
                }
                Action::ReleaseVips => {
                    assert!(self.holding, "released without holding: {context:?}");
                    assert_eq!(before.state, State::Master, "{context:?}");
                    self.holding = false;
                }
            }
        }
        assert_eq!(
            self.holding,
            after.state == State::Master,
            "the VIPs are held exactly by a master: {context:?}"
        );
        // The master is this router exactly when it is master, or one it heard.
        let me: IpAddr = self.primary.into();
        assert_eq!(
            after.master == Some(me),
            after.state == State::Master,
            "{context:?}"
        );
        if let Some(master) = after.master {
            assert!(
                master == me || self.heard.contains(&master),
                "a master nobody heard: {context:?}"
            );
        }
        // Deadlines: a backup waits for one, a master advertises; never in the past, never
        // further than the longest Master_Down_Interval.
        match after.state {
            State::Master | State::Backup => {
                let at = after
                    .deadline
                    .unwrap_or_else(|| panic!("no deadline: {context:?}"));
                assert!(at >= now, "a deadline in the past: {context:?}");
                let longest = self.longest_interval.max(self.params().advert_int);
                let bound = longest * 4 + Duration::from_secs(1);
                assert!(at - now <= bound, "a deadline past {bound:?}: {context:?}");
            }
            State::Initialize | State::Fault => {
                assert_eq!(after.deadline, None, "{context:?}")
            }
        }
    }

    /// What each event may do, by the machine's rules.
    fn rules(
        &mut self,
        event: &Event,
        before: &Snapshot,
        after: &Snapshot,
        out: &Output,
        context: &Context,
    ) {
        let now = self.now - self.t0;
        let m = &self.machine;
        let mdi = m.master_down_interval();
        let unchanged = || {
            assert_eq!(before, after, "{context:?}");
            assert_eq!(out, &Output::default(), "{context:?}");
        };
        // Only a timer makes a master; only a better advert makes a master step down.
        if before.state == State::Backup && after.state == State::Master {
            assert_eq!(event, &Event::Timer, "{context:?}");
        }
        if before.state == State::Master && after.state == State::Backup {
            assert!(matches!(event, Event::Advert { .. }), "{context:?}");
        }
        if !matches!(event, Event::Timer) {
            self.leaving = None;
        }
        match *event {
            Event::Timer => {
                let due = before.deadline.is_some_and(|at| now >= at);
                if !due {
                    unchanged();
                    return;
                }
                match before.state {
                    State::Master => {
                        assert_eq!(after.state, State::Master, "{context:?}");
                        assert_eq!(
                            out.actions,
                            vec![Action::Advertise {
                                priority: m.priority()
                            }],
                            "{context:?}"
                        );
                    }
                    State::Backup => {
                        // The master left (priority 0): taken over, synced or not.
                        let leaving = self.leaving.take().is_some();
                        if self.synced || leaving {
                            assert_eq!(after.state, State::Master, "{context:?}");
                        }
                        if after.state == State::Master {
                            assert_eq!(
                                out.actions,
                                vec![
                                    Action::Advertise {
                                        priority: m.priority()
                                    },
                                    Action::TakeVips
                                ],
                                "{context:?}"
                            );
                        } else {
                            // Not synced at the end of the startup wait: one more interval.
                            assert_eq!(
                                after.deadline,
                                Some(now + self.params().advert_int),
                                "{context:?}"
                            );
                            assert!(out.actions.is_empty(), "{context:?}");
                        }
                    }
                    State::Initialize | State::Fault => unreachable!("no deadline"),
                }
            }
            Event::Advert {
                from,
                priority,
                interval,
            } => {
                let mine = before.priority;
                match before.state {
                    State::Initialize => unchanged(),
                    State::Fault => {
                        assert_eq!(after.state, State::Fault, "{context:?}");
                        assert!(out.actions.is_empty(), "{context:?}");
                    }
                    State::Backup => {
                        assert_eq!(after.state, State::Backup, "{context:?}");
                        assert!(out.actions.is_empty(), "{context:?}");
                        if priority == 0 {
                            // RFC 9568 6.4.2: Master_Down_Timer = Skew_Time.
                            let at = now + m.skew_time();
                            assert_eq!(after.deadline, Some(at), "{context:?}");
                            assert_eq!(after.master, before.master, "{context:?}");
                            self.leaving = Some(at);
                            return;
                        }
                        assert_eq!(after.master, Some(from), "{context:?}");
                        let params = self.params();
                        if !params.preempt || priority >= mine {
                            // Followed: Master_Down_Interval from its interval.
                            assert_eq!(after.deadline, Some(now + mdi), "{context:?}");
                            if params.version == 3 {
                                let skew = interval * (256 - u32::from(mine)) / 256;
                                assert_eq!(mdi, interval * 3 + skew, "{context:?}");
                            }
                        } else if self.synced && params.preempt_delay.is_zero() {
                            // A lower priority master, to be preempted: ignored.
                            assert_eq!(after.deadline, before.deadline, "{context:?}");
                        } else {
                            assert!(
                                after.deadline == before.deadline
                                    || after.deadline == Some(now + mdi),
                                "{context:?}"
                            );
                        }
                    }
                    State::Master => {
                        let me: IpAddr = self.primary.into();
                        let better = priority > mine || (priority == mine && from > me);
                        if priority == 0 {
                            // Answered at once, so the backups see a master.
                            assert_eq!(after.state, State::Master, "{context:?}");
                            assert_eq!(
                                out.actions,
                                vec![Action::Advertise { priority: mine }],
                                "{context:?}"
                            );
                        } else if better {
                            assert_eq!(after.state, State::Backup, "{context:?}");
                            assert_eq!(out.actions, vec![Action::ReleaseVips], "{context:?}");
                            assert_eq!(after.master, Some(from), "{context:?}");
                            assert_eq!(after.deadline, Some(now + mdi), "{context:?}");
                        } else {
                            unchanged();
                        }
                    }
                }
            }
            Event::Startup => {
                if before.state != State::Initialize {
                    unchanged();
                    return;
                }
                let params = self.params();
                let fault = !self.link_up || (!self.track_ok && params.track_weight == 0);
                if fault {
                    assert_eq!(after.state, State::Fault, "{context:?}");
                } else {
                    assert_eq!(after.state, State::Backup, "{context:?}");
                    let wait = if params.start_as_master && params.preempt {
                        m.skew_time()
                    } else {
                        mdi
                    };
                    assert_eq!(after.deadline, Some(now + wait), "{context:?}");
                }
                assert!(out.actions.is_empty(), "{context:?}");
            }
            Event::Shutdown => {
                assert_eq!(after.state, State::Initialize, "{context:?}");
                assert_eq!(after.master, None, "{context:?}");
                let want = if before.state == State::Master {
                    vec![Action::Advertise { priority: 0 }, Action::ReleaseVips]
                } else {
                    vec![]
                };
                assert_eq!(out.actions, want, "{context:?}");
            }
            Event::Track { ok } => {
                if ok == self.track_ok {
                    unchanged();
                    return;
                }
                self.track_ok = ok;
                let fault_mode = self.params().track_weight == 0;
                let want = match before.state {
                    State::Fault if ok && self.link_up => State::Backup,
                    State::Master | State::Backup if !ok && fault_mode => State::Fault,
                    state => state,
                };
                assert_eq!(after.state, want, "{context:?}");
                if before.state == State::Master && after.state == State::Master {
                    // The new priority, at once.
                    assert_eq!(
                        out.actions,
                        vec![Action::Advertise {
                            priority: m.priority()
                        }],
                        "{context:?}"
                    );
                } else if before.state == State::Master {
                    // Weight 0: a fault, leaving with priority 0.
                    assert_eq!(
                        out.actions,
                        vec![Action::Advertise { priority: 0 }, Action::ReleaseVips],
                        "{context:?}"
                    );
                } else {
                    assert!(out.actions.is_empty(), "{context:?}");
                }
                if before.state == State::Fault && want == State::Backup {
                    assert_eq!(after.deadline, Some(now + mdi), "{context:?}");
                }
            }
            Event::Link { up } => {
                if up == self.link_up {
                    unchanged();
                    return;
                }
                self.link_up = up;
                let fault_mode = self.params().track_weight == 0;
                let want = match before.state {
                    State::Master | State::Backup if !up => State::Fault,
                    State::Fault if up && (self.track_ok || !fault_mode) => State::Backup,
                    state => state,
                };
                assert_eq!(after.state, want, "{context:?}");
                if before.state == State::Master && !up {
                    // It cannot leave: no priority 0.
                    assert_eq!(out.actions, vec![Action::ReleaseVips], "{context:?}");
                    assert_eq!(after.master, None, "{context:?}");
                } else {
                    assert!(out.actions.is_empty(), "{context:?}");
                }
                if want == State::Backup && before.state == State::Fault {
                    assert_eq!(after.deadline, Some(now + mdi), "{context:?}");
                }
            }
            Event::Synced { ok } => {
                self.synced = ok;
                unchanged();
            }
        }
    }
}

/// What the machine shows from outside; times from the start of the run.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    state: State,
    master: Option<IpAddr>,
    deadline: Option<Duration>,
    priority: u8,
}

impl Snapshot {
    fn of(m: &Machine, t0: Instant) -> Self {
        Snapshot {
            state: m.state(),
            master: m.master(),
            deadline: m.next_deadline().map(|at| at - t0),
            priority: m.priority(),
        }
    }
}

/// One step, for the message of a failed check (formatted only then).
#[derive(Debug)]
#[allow(dead_code)] // Read by Debug.
struct Context<'a> {
    event: &'a Event,
    at: Duration,
    before: &'a Snapshot,
    after: &'a Snapshot,
    out: &'a Output,
}

/// An address of family `A` from the input's bytes.
fn raw_address<A: Family>(input: &mut Bytes) -> A {
    let mut raw = [0u8; 16];
    for b in raw.iter_mut().take(A::LEN) {
        *b = input.u8();
    }
    A::read(&raw[..A::LEN]).expect("LEN bytes")
}

fn sorted<A: Family>(addresses: &[A]) -> Vec<A> {
    let mut v = addresses.to_vec();
    v.sort();
    v
}

/// Makes a VRRP message's checksum right again (v3's covers the pseudo-header, v2's does not).
fn fix_checksum<A: Family>(message: &mut [u8], src: A, dst: A) {
    if message.len() < 8 {
        return;
    }
    message[6..8].fill(0);
    let pseudo = if message[0] >> 4 == 3 {
        pseudo_header_sum(src, dst, IPPROTO_VRRP, message.len())
    } else {
        0
    };
    let sum = internet_checksum(message, pseudo);
    message[6..8].copy_from_slice(&sum.to_be_bytes());
}
