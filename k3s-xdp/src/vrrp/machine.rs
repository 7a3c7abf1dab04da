//! The VRRP state machine of RFC 9568 section 6.4, for one virtual router, as a pure function of
//! (state, event, now) → actions. No sockets, no clocks: [`Machine::handle`] takes the time, and
//! [`Machine::next_deadline`] says when to call it with [`Event::Timer`].
//!
//! States: Initialize, Backup, Master, and Fault (keepalived's state for a failed track with
//! `weight = 0`: no adverts, no VIPs). Timers, with the local priority P:
//! - Skew_Time = ((256 - P) * Master_Adver_Interval) / 256 (v3), (256 - P) / 256 s (v2);
//! - Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time, where Master_Adver_Interval
//!   is learned from the master's adverts.
//!
//! Rules: a backup takes over when no advert came for Master_Down_Interval (Skew_Time after a
//! priority-0 advert); with `preempt`, it ignores adverts of a lower priority master, and so
//! takes over (after `preempt_delay` since start or since that master appeared); a master steps
//! down for a higher priority, or an equal one from a higher primary address; a master leaving
//! sends priority 0. `state = "master"` in the config only shortens the first wait to Skew_Time.
//! Tracking lowers the advertised priority by its weight while failing (clamped to 1..=254),
//! or with a weight of 0 moves to Fault.

use std::{
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Configured priority, 1..=254.
    pub priority: u8,
    pub advert_int: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// `state = "master"`: claim after Skew_Time instead of Master_Down_Interval at start.
    pub start_as_master: bool,
    /// Our primary address on the interface (ties between equal priorities): IPv4, or IPv6
    /// (link-local) for the IPv6 virtual router. Compared with a master's address of the same
    /// family, as an unsigned integer.
    pub primary: IpAddr,
    /// Added to the priority while tracking fails; 0 means "go to Fault".
    pub track_weight: i32,
    /// 2 or 3 (the skew formula differs).
    pub version: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Startup,
    /// Leaving (SIGTERM): a master sends priority 0 so the backup takes over at once.
    Shutdown,
    /// A deadline from `next_deadline` passed.
    Timer,
    /// A valid advert of our virtual router.
    Advert {
        from: IpAddr,
        priority: u8,
        interval: Duration,
    },
    /// The tracked conditions changed (data plane attached, enough healthy backends).
    Track {
        ok: bool,
    },
    /// The interface's link went down (no carrier, or set down) or came back. Down is a
    /// fault whatever the tracking weight, as in keepalived: adverts cannot leave.
    Link {
        up: bool,
    },
    /// Whether flow sync holds the peers' flow tables (always with no `[flow_sync]`). Until
    /// it does, this router neither preempts a live master nor claims at the end of its
    /// startup wait (it waits one more advertisement interval each time): taking the VIPs
    /// from a master whose flows it does not have would break them. A master that goes
    /// silent is replaced all the same: its table is not coming.
    Synced {
        ok: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority.
    Advertise { priority: u8 },
    /// Add the virtual addresses and announce them (gratuitous ARP).
    TakeVips,
    /// Remove the virtual addresses.
    ReleaseVips,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub actions: Vec<Action>,
    pub transition: Option<Transition>,
}

/// What the master-down timer waits for.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// The first advertisement after startup (Skew_Time when `state = "master"`).
    Startup(Duration),
    /// The known master's next advertisement.
    MasterDown,
    /// Skew_Time after the master sent priority 0.
    Leaving(IpAddr),
}

#[derive(Clone, Debug)]
pub struct Machine {
    params: Params,
    state: State,
    track_ok: bool,
    link_up: bool,
    master_adver_interval: Duration,
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    /// Why the master-down timer runs, for the log line when it fires.
    waiting: Wait,
    started: Option<Instant>,
    /// When a lower priority master was first heard while we wait to preempt it.
    lower_master_since: Option<Instant>,
    /// The current master as far as we know (ourselves when master).
    master: Option<IpAddr>,
    /// See [`Event::Synced`].
    synced: bool,
}

impl Machine {
    pub fn new(params: Params) -> Self {
        Machine {
            master_adver_interval: params.advert_int,
            params,
            state: State::Initialize,
            track_ok: true,
            link_up: true,
            adver_timer: None,
            master_down_timer: None,
            waiting: Wait::MasterDown,
            started: None,
            lower_master_since: None,
            master: None,
            synced: true,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The current master's address, if known.
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// New settings (reload); the state is kept, unless tracking fails and its weight moved
    /// between 0 (fault) and a priority change: the router is then where the new weight puts
    /// a failing track, as if it had just failed.
    pub fn set_params(&mut self, params: Params, now: Instant) -> Output {
        let was_fault_mode = self.params.track_weight == 0;
        self.params = params;
        let mut out = Output::default();
        let fault_mode = self.params.track_weight == 0;
        if self.track_ok || fault_mode == was_fault_mode {
            return out;
        }
        match self.state {
            State::Backup | State::Master => {
                self.track_ok = true;
                self.track(false, now, &mut out);
            }
            State::Fault if self.link_up => {
                self.master_down_timer = Some(now + self.master_down_interval());
                self.waiting = Wait::MasterDown;
                self.go(
                    State::Backup,
                    "tracking fails, but its weight is no longer 0".into(),
                    &mut out,
                );
            }
            _ => {}
        }
        out
    }

    /// The priority advertised now: configured, lowered by tracking while it fails.
    pub fn priority(&self) -> u8 {
        let base = i32::from(self.params.priority);
        let p = if self.track_ok || self.params.track_weight == 0 {
            base
        } else {
            base + self.params.track_weight
        };
        p.clamp(1, 254) as u8
    }

    pub fn skew_time(&self) -> Duration {
        let p = u32::from(self.priority());
        if self.params.version == 2 {
            Duration::from_secs(1) * (256 - p) / 256
        } else {
            self.master_adver_interval * (256 - p) / 256
        }
    }

    pub fn master_down_interval(&self) -> Duration {
        let interval = if self.params.version == 2 {
            self.params.advert_int
        } else {
            self.master_adver_interval
        };
        interval * 3 + self.skew_time()
    }

    /// When to call `handle(Event::Timer, ..)` next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Master => self.adver_timer,
            State::Backup => self.master_down_timer,
            State::Initialize | State::Fault => None,
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Output {
        let mut out = Output::default();
        match event {
            Event::Startup => self.startup(now, &mut out),
            Event::Shutdown => self.shutdown(&mut out),
            Event::Timer => self.timer(now, &mut out),
            Event::Advert {
                from,
                priority,
                interval,
            } => self.advert(from, priority, interval, now, &mut out),
            Event::Track { ok } => self.track(ok, now, &mut out),
            Event::Link { up } => self.link(up, now, &mut out),
            Event::Synced { ok } => self.synced = ok,
        }
        out
    }

    fn go(&mut self, to: State, reason: String, out: &mut Output) {
        if matches!(to, State::Fault | State::Initialize) {
            // A lower master heard before is timed again from when it is heard next.
            self.lower_master_since = None;
        }
        if self.state != to {
            out.transition = Some(Transition {
                from: self.state,
                to,
                reason,
            });
            self.state = to;
        }
    }

    fn startup(&mut self, now: Instant, out: &mut Output) {
        if self.state != State::Initialize {
            return;
        }
        self.started = Some(now);
        self.master_adver_interval = self.params.advert_int;
        if !self.link_up {
            self.go(State::Fault, "link down at startup".into(), out);
            return;
        }
        if !self.track_ok && self.params.track_weight == 0 {
            self.go(State::Fault, "tracking fails at startup".into(), out);
            return;
        }
        // Without preemption a node that comes back never claims early: a master may be running.
        let wait = if self.params.start_as_master && self.params.preempt {
            self.skew_time()
        } else {
            self.master_down_interval()
        };
        self.master_down_timer = Some(now + wait);
        self.waiting = Wait::Startup(wait);
        self.go(
            State::Backup,
            format!("startup: waiting {wait:.1?} for a master's advertisement"),
            out,
        );
    }

    fn shutdown(&mut self, out: &mut Output) {
        if self.state == State::Master {
            out.actions.push(Action::Advertise { priority: 0 });
            out.actions.push(Action::ReleaseVips);
        }
        self.adver_timer = None;
        self.master_down_timer = None;
        self.master = None;
        self.go(State::Initialize, "shutdown".into(), out);
    }

    fn become_master(&mut self, now: Instant, reason: String, out: &mut Output) {
        out.actions.push(Action::Advertise {
            priority: self.priority(),
        });
        out.actions.push(Action::TakeVips);
        self.adver_timer = Some(now + self.params.advert_int);
        self.master_down_timer = None;
        self.lower_master_since = None;
        self.master = Some(self.params.primary);
        self.go(State::Master, reason, out);
    }

    fn become_backup(
        &mut self,
        master: Option<IpAddr>,
        now: Instant,
        reason: String,
        out: &mut Output,
    ) {
        if self.state == State::Master {
            out.actions.push(Action::ReleaseVips);
        }
        self.adver_timer = None;
        self.master = master;
        self.master_down_timer = Some(now + self.master_down_interval());
        self.waiting = Wait::MasterDown;
        self.go(State::Backup, reason, out);
    }

    fn timer(&mut self, now: Instant, out: &mut Output) {
        match self.state {
            State::Master => {
                if self.adver_timer.is_some_and(|t| now >= t) {
                    out.actions.push(Action::Advertise {
                        priority: self.priority(),
                    });
                    self.adver_timer = Some(now + self.params.advert_int);
                }
            }
            State::Backup => {
                if self.master_down_timer.is_some_and(|t| now >= t) {
                    if !self.synced && matches!(self.waiting, Wait::Startup(_)) {
                        // A master may be there, whose flows are on their way: wait.
                        self.master_down_timer = Some(now + self.params.advert_int);
                        return;
                    }
                    let reason = match self.master {
                        Some(m) if self.lower_master_since.is_some() => {
                            format!("preempting {m}, which has a lower priority")
                        }
                        _ => match self.waiting {
                            Wait::Startup(wait) => {
                                format!("no master advertised within {wait:.1?} of startup")
                            }
                            Wait::Leaving(m) => format!(
                                "{m} left (priority 0); took over after Skew_Time ({:.1?})",
                                self.skew_time()
                            ),
                            Wait::MasterDown => format!(
                                "no advertisement for Master_Down_Interval ({:.1?})",
                                self.master_down_interval()
                            ),
                        },
                    };
                    self.become_master(now, reason, out);
                }
            }
            State::Initialize | State::Fault => {}
        }
    }

    fn advert(
        &mut self,
        from: IpAddr,
        priority: u8,
        interval: Duration,
        now: Instant,
        out: &mut Output,
    ) {
        match self.state {
            State::Initialize => {}
            State::Fault => {
                if priority > 0 {
                    self.master = Some(from);
                }
            }
            State::Backup => {
                if priority == 0 {
                    // The master is leaving: take over after Skew_Time.
                    self.master_down_timer = Some(now + self.skew_time());
                    self.waiting = Wait::Leaving(from);
                    return;
                }
                let mine = self.priority();
                if !self.params.preempt || priority >= mine || !self.may_preempt(now) {
                    self.master_adver_interval = interval;
                    self.master_down_timer = Some(now + self.master_down_interval());
                    self.waiting = Wait::MasterDown;
                    self.master = Some(from);
                    if priority >= mine {
                        self.lower_master_since = None;
                    }
                }
                // Otherwise a lower priority master: ignore it and let the timer run out.
                if priority < mine && self.params.preempt {
                    self.master = Some(from);
                }
            }
            State::Master => {
                if priority == 0 {
                    out.actions.push(Action::Advertise {
                        priority: self.priority(),
                    });
                    self.adver_timer = Some(now + self.params.advert_int);
                    return;
                }
                let mine = self.priority();
                let better = priority > mine || (priority == mine && from > self.params.primary);
                if better {
                    self.master_adver_interval = interval;
                    let reason = if priority > mine {
                        format!("{from} advertises a higher priority ({priority} > {mine})")
                    } else {
                        format!("{from} has the same priority ({priority}) and a higher address")
                    };
                    self.become_backup(Some(from), now, reason, out);
                }
            }
        }
    }

    /// Whether `preempt_delay` has passed, since startup and since the lower master appeared.
    fn may_preempt(&mut self, now: Instant) -> bool {
        let since = *self.lower_master_since.get_or_insert(now);
        if !self.synced {
            return false;
        }
        let delay = self.params.preempt_delay;
        let started = self.started.unwrap_or(now);
        now >= started + delay && now >= since + delay
    }

    fn link(&mut self, up: bool, now: Instant, out: &mut Output) {
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        match (self.state, up) {
            (State::Master, false) => {
                // No priority 0 advert: it could not leave. The backup's master-down timer
                // takes over, as for a crash.
                out.actions.push(Action::ReleaseVips);
                self.adver_timer = None;
                self.master = None;
                self.go(State::Fault, "link down".into(), out);
            }
            (State::Backup, false) => {
                self.master_down_timer = None;
                self.master = None;
                self.go(State::Fault, "link down".into(), out);
            }
            (State::Fault, true) if self.track_ok || self.params.track_weight != 0 => {
                self.master_down_timer = Some(now + self.master_down_interval());
                self.waiting = Wait::MasterDown;
                self.go(State::Backup, "link up".into(), out);
            }
            _ => {}
        }
    }

    fn track(&mut self, ok: bool, now: Instant, out: &mut Output) {
        if ok == self.track_ok {
            return;
        }
        self.track_ok = ok;
        let fault_mode = self.params.track_weight == 0;
        match (self.state, ok) {
            (State::Fault, true) if self.link_up => {
                self.master_down_timer = Some(now + self.master_down_interval());
                self.waiting = Wait::MasterDown;
                self.go(State::Backup, "tracking recovered".into(), out);
            }
            (State::Master, false) if fault_mode => {
                out.actions.push(Action::Advertise { priority: 0 });
                out.actions.push(Action::ReleaseVips);
                self.adver_timer = None;
                self.master = None;
                self.go(
                    State::Fault,
                    "tracking failed (weight 0: fault)".into(),
                    out,
                );
            }
            (State::Backup, false) if fault_mode => {
                self.master_down_timer = None;
                self.go(
                    State::Fault,
                    "tracking failed (weight 0: fault)".into(),
                    out,
                );
            }
            (State::Master, _) => {
                // Advertise the new priority at once, so a better backup preempts promptly.
                out.actions.push(Action::Advertise {
                    priority: self.priority(),
                });
                self.adver_timer = Some(now + self.params.advert_int);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    use std::net::{Ipv4Addr, Ipv6Addr};

    const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 98));
    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));

    fn params(priority: u8) -> Params {
        Params {
            priority,
            advert_int: S,
            preempt: true,
            preempt_delay: Duration::ZERO,
            start_as_master: false,
            primary: ME,
            track_weight: -150,
            version: 3,
        }
    }

    fn advert(priority: u8) -> Event {
        Event::Advert {
            from: PEER,
            priority,
            interval: S,
        }
    }

    /// Runs timers up to `until`, collecting everything that happens.
    fn run_until(m: &mut Machine, until: Instant) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(d) = m.next_deadline() {
            if d > until {
                break;
            }
            outs.push(m.handle(Event::Timer, d));
        }
        outs
    }

    fn started(p: Params, t0: Instant) -> Machine {
        let mut m = Machine::new(p);
        let out = m.handle(Event::Startup, t0);
        assert_eq!(m.state(), State::Backup);
        assert!(
            out.actions.is_empty(),
            "nothing is sent before the first wait"
        );
        m
    }

    #[test]
    fn timers_follow_the_rfc() {
        let m = Machine::new(params(100));
        // Skew = (256 - 100) / 256 * 1 s = 609.375 ms; MDI = 3 s + skew.
        assert_eq!(m.skew_time(), Duration::from_nanos(609_375_000));
        assert_eq!(
            m.master_down_interval(),
            Duration::from_nanos(3_609_375_000)
        );
        let fast = Machine::new(Params {
            advert_int: S / 10,
            ..params(200)
        });
        assert_eq!(
            fast.master_down_interval(),
            Duration::from_nanos(321_875_000)
        );
        let v2 = Machine::new(Params {
            version: 2,
            advert_int: 2 * S,
            ..params(100)
        });
        assert_eq!(
            v2.master_down_interval(),
            Duration::from_nanos(6_609_375_000)
        );
    }

    #[test]
    fn a_lone_router_becomes_master_after_master_down_interval() {
        let t0 = Instant::now();
        let mut m = started(params(100), t0);
        assert_eq!(m.next_deadline(), Some(t0 + m.master_down_interval()));
        let outs = run_until(&mut m, t0 + 3 * S);
        assert!(outs.is_empty(), "still waiting");
        let out = m.handle(Event::Timer, t0 + m.master_down_interval());
        assert_eq!(m.state(), State::Master);
        assert_eq!(
            out.actions,
            vec![Action::Advertise { priority: 100 }, Action::TakeVips]
        );
        assert!(out
            .transition
            .unwrap()
            .reason
            .contains("no master advertised within 3.6s of startup"));
        // Then an advert every advert_int.
        let t1 = t0 + m.master_down_interval();
        let outs = run_until(&mut m, t1 + 3 * S);
        assert_eq!(outs.len(), 3);
        assert!(outs
            .iter()
            .all(|o| o.actions == vec![Action::Advertise { priority: 100 }]));
    }

    #[test]
    fn start_as_master_claims_after_skew_time() {
        let t0 = Instant::now();
        let mut m = started(
            Params {
                start_as_master: true,
                ..params(200)
            },
            t0,
        );
        assert_eq!(m.next_deadline(), Some(t0 + m.skew_time()));
        run_until(&mut m, t0 + S);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn without_preemption_start_as_master_waits_like_a_backup() {
        let t0 = Instant::now();
        let mut m = started(
            Params {
                start_as_master: true,
                preempt: false,
                ..params(200)
            },
            t0,
        );
        assert_eq!(m.next_deadline(), Some(t0 + m.master_down_interval()));
        // A running master (lower priority) advertises: this node stays backup.
        for i in 1..10 {
            m.handle(
                Event::Advert {
                    from: PEER,
                    priority: 100,
                    interval: S,
                },
                t0 + i * S,
            );
            m.handle(Event::Timer, t0 + i * S + S / 2);
        }
        assert_eq!(m.state(), State::Backup);
    }

    #[test]
    fn a_backup_follows_a_higher_master_and_learns_its_interval() {
        let t0 = Instant::now();
        let mut m = started(params(100), t0);
        let out = m.handle(
            Event::Advert {
                from: PEER,
                priority: 200,
                interval: 2 * S,
            },
            t0 + S,
        );
        assert!(out.actions.is_empty());
        assert_eq!(m.master(), Some(PEER));
        // Master_Adver_Interval is now 2 s: MDI = 6 s + (156/256) * 2 s.
        assert_eq!(
            m.master_down_interval(),
            Duration::from_nanos(7_218_750_000)
        );
        assert_eq!(m.next_deadline(), Some(t0 + S + m.master_down_interval()));
    }

    #[test]
    fn preemption_of_a_lower_priority_master() {
        let t0 = Instant::now();
        let mut m = started(params(200), t0);
        let mdi = m.master_down_interval();
        // The lower master keeps advertising; we ignore it and take over when the timer expires.
        for i in 0..3 {
            m.handle(advert(100), t0 + i * S);
        }
        let out = m.handle(Event::Timer, t0 + mdi);
        assert_eq!(m.state(), State::Master);
        assert!(out
            .transition
            .unwrap()
            .reason
            .contains("preempting 192.0.2.99"));
    }

    /// Flow sync: a router without its peers' tables neither preempts nor claims at the end
    /// of its startup wait; once it has them it does both; a master that goes silent is
    /// replaced whatever the sync.
    #[test]
    fn without_the_peers_flows_a_router_waits_to_preempt_or_claim() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(200));
        m.handle(Event::Synced { ok: false }, t0);
        m.handle(Event::Startup, t0);
        let mdi = m.master_down_interval();
        run_until(&mut m, t0 + 3 * mdi);
        assert_eq!(
            m.state(),
            State::Backup,
            "no claim at the end of the startup wait"
        );
        for i in 0..6 {
            m.handle(advert(100), t0 + 3 * mdi + i * S);
            run_until(&mut m, t0 + 3 * mdi + i * S + S / 2);
        }
        assert_eq!(
            m.state(),
            State::Backup,
            "no preemption of the lower master"
        );
        m.handle(Event::Synced { ok: true }, t0 + 3 * mdi + 6 * S);
        m.handle(advert(100), t0 + 3 * mdi + 6 * S);
        run_until(&mut m, t0 + 4 * mdi + 7 * S);
        assert_eq!(m.state(), State::Master, "preempts once synced");

        // Not synced, and the master goes silent: taken over after Master_Down_Interval.
        let mut m = Machine::new(params(100));
        m.handle(Event::Synced { ok: false }, t0);
        m.handle(Event::Startup, t0);
        m.handle(advert(200), t0 + S);
        let mdi = m.master_down_interval();
        let out = run_until(&mut m, t0 + S + mdi + Duration::from_millis(1));
        assert_eq!(m.state(), State::Master, "{out:?}");

        // Not synced at startup, then synced with no master around: claims at the next
        // interval.
        let mut m = Machine::new(params(100));
        m.handle(Event::Synced { ok: false }, t0);
        m.handle(Event::Startup, t0);
        run_until(&mut m, t0 + mdi + S / 2);
        assert_eq!(m.state(), State::Backup);
        m.handle(Event::Synced { ok: true }, t0 + mdi + S / 2);
        run_until(&mut m, t0 + mdi + 2 * S);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn without_preempt_a_backup_stays_behind_a_lower_master() {
        let t0 = Instant::now();
        let mut m = started(
            Params {
                preempt: false,
                ..params(200)
            },
            t0,
        );
        for i in 0..10 {
            m.handle(advert(100), t0 + i * S);
            run_until(&mut m, t0 + i * S + S / 2);
        }
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.master(), Some(PEER));
    }

    #[test]
    fn preempt_delay_postpones_preemption() {
        let t0 = Instant::now();
        let mut m = started(
            Params {
                preempt_delay: 5 * S,
                ..params(200)
            },
            t0,
        );
        for i in 0..5u32 {
            m.handle(advert(100), t0 + i * S);
            run_until(&mut m, t0 + i * S + S - Duration::from_millis(1));
            assert_eq!(m.state(), State::Backup, "at {i} s the delay still holds");
        }
        // From 5 s on, the lower master's adverts are ignored: takeover one MDI later.
        m.handle(advert(100), t0 + 5 * S);
        let mdi = m.master_down_interval();
        run_until(&mut m, t0 + 4 * S + mdi + Duration::from_millis(1));
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn a_master_steps_down_for_a_better_master() {
        let t0 = Instant::now();
        let mut m = started(params(100), t0);
        run_until(&mut m, t0 + 4 * S);
        assert_eq!(m.state(), State::Master);
        // Lower: ignored.
        assert!(m.handle(advert(50), t0 + 5 * S).transition.is_none());
        // Higher: step down, release the VIPs.
        let out = m.handle(advert(150), t0 + 5 * S);
        assert_eq!(m.state(), State::Backup);
        assert_eq!(out.actions, vec![Action::ReleaseVips]);
        assert!(out
            .transition
            .unwrap()
            .reason
            .contains("higher priority (150 > 100)"));
    }

    #[test]
    fn equal_priorities_are_decided_by_the_higher_primary_address() {
        let t0 = Instant::now();
        let mut m = started(params(100), t0);
        run_until(&mut m, t0 + 4 * S);
        let lower = Event::Advert {
            from: Ipv4Addr::new(192, 0, 2, 50).into(),
            priority: 100,
            interval: S,
        };
        assert!(
            m.handle(lower, t0 + 5 * S).transition.is_none(),
            "we have the higher address"
        );
        let out = m.handle(advert(100), t0 + 5 * S);
        assert_eq!(m.state(), State::Backup, "192.0.2.99 > 192.0.2.98");
        assert!(out.transition.unwrap().reason.contains("higher address"));
    }

    /// The IPv6 virtual router's primary address is its link-local one; ties compare the
    /// 128-bit addresses as unsigned integers (RFC 9568 6.4.3).
    #[test]
    fn ipv6_ties_compare_the_whole_link_local_address() {
        let t0 = Instant::now();
        let me: IpAddr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xffff).into();
        let mut m = started(
            Params {
                primary: me,
                ..params(100)
            },
            t0,
        );
        run_until(&mut m, t0 + 4 * S);
        assert_eq!(m.master(), Some(me));
        let lower = Event::Advert {
            from: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xfffe).into(),
            priority: 100,
            interval: S,
        };
        assert!(m.handle(lower, t0 + 5 * S).transition.is_none());
        let higher: IpAddr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 1, 0).into();
        let out = m.handle(
            Event::Advert {
                from: higher,
                priority: 100,
                interval: S,
            },
            t0 + 5 * S,
        );
        assert_eq!(m.state(), State::Backup, "fe80::1:0 > fe80::ffff");
        assert!(out.transition.unwrap().reason.contains("fe80::1:0"));
        assert_eq!(m.master(), Some(higher));
    }

    #[test]
    fn priority_zero_hands_over_within_skew_time() {
        let t0 = Instant::now();
        let mut m = started(params(100), t0);
        m.handle(advert(200), t0 + S);
        m.handle(advert(0), t0 + 2 * S);
        let skew = m.skew_time();
        assert_eq!(m.next_deadline(), Some(t0 + 2 * S + skew));
        run_until(&mut m, t0 + 2 * S + skew);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn shutdown_of_a_master_sends_priority_zero_and_releases() {
        let t0 = Instant::now();
        let mut m = started(params(100), t0);
        run_until(&mut m, t0 + 4 * S);
        let out = m.handle(Event::Shutdown, t0 + 5 * S);
        assert_eq!(
            out.actions,
            vec![Action::Advertise { priority: 0 }, Action::ReleaseVips]
        );
        assert_eq!(m.state(), State::Initialize);
        assert_eq!(m.next_deadline(), None);
        // A backup leaving sends nothing.
        let mut b = started(params(100), t0);
        assert!(b.handle(Event::Shutdown, t0).actions.is_empty());
    }

    #[test]
    fn a_master_answers_priority_zero_with_an_advert() {
        let t0 = Instant::now();
        let mut m = started(params(100), t0);
        run_until(&mut m, t0 + 4 * S);
        let out = m.handle(advert(0), t0 + 5 * S);
        assert_eq!(out.actions, vec![Action::Advertise { priority: 100 }]);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn a_link_down_is_a_fault_whatever_the_weight_and_up_waits_as_a_backup() {
        let t0 = Instant::now();
        // Weight -150: failing tracking only lowers the priority, a dead link is still a fault.
        let mut m = started(params(200), t0);
        run_until(&mut m, t0 + 4 * S);
        assert_eq!(m.state(), State::Master);
        let out = m.handle(Event::Link { up: false }, t0 + 5 * S);
        assert_eq!(m.state(), State::Fault);
        assert_eq!(out.actions, vec![Action::ReleaseVips]);
        assert_eq!(m.next_deadline(), None, "nothing to send in fault");
        // Tracking recovering does not leave the fault while the link is down.
        m.handle(Event::Track { ok: false }, t0 + 6 * S);
        m.handle(Event::Track { ok: true }, t0 + 7 * S);
        assert_eq!(m.state(), State::Fault);
        let out = m.handle(Event::Link { up: true }, t0 + 8 * S);
        assert_eq!(m.state(), State::Backup);
        assert!(out.actions.is_empty(), "{out:?}");
        assert_eq!(
            m.next_deadline(),
            Some(t0 + 8 * S + m.master_down_interval()),
            "listens for a master first"
        );
        // A backup whose link goes down is a fault too; up again while tracking fails with
        // weight 0 stays a fault.
        let mut b = started(
            Params {
                track_weight: 0,
                ..params(100)
            },
            t0,
        );
        b.handle(Event::Link { up: false }, t0 + S);
        assert_eq!(b.state(), State::Fault);
        b.handle(Event::Track { ok: false }, t0 + 2 * S);
        b.handle(Event::Link { up: true }, t0 + 3 * S);
        assert_eq!(b.state(), State::Fault, "tracking still fails");
        b.handle(Event::Track { ok: true }, t0 + 4 * S);
        assert_eq!(b.state(), State::Backup);
        // Down at startup: a fault from the start.
        let mut c = Machine::new(params(100));
        c.handle(Event::Link { up: false }, t0);
        c.handle(Event::Startup, t0);
        assert_eq!(c.state(), State::Fault);
    }

    #[test]
    fn tracking_lowers_the_priority_and_restores_it() {
        let t0 = Instant::now();
        let mut m = started(params(200), t0);
        run_until(&mut m, t0 + 4 * S);
        let out = m.handle(Event::Track { ok: false }, t0 + 5 * S);
        assert_eq!(m.priority(), 50);
        assert_eq!(
            out.actions,
            vec![Action::Advertise { priority: 50 }],
            "advertised at once"
        );
        // The peer at 100 now wins.
        m.handle(advert(100), t0 + 5 * S);
        assert_eq!(m.state(), State::Backup);
        let out = m.handle(Event::Track { ok: true }, t0 + 6 * S);
        assert_eq!(m.priority(), 200);
        assert!(out.actions.is_empty());
        // Back at 200, preempt the peer when its adverts are ignored long enough.
        m.handle(advert(100), t0 + 6 * S);
        run_until(&mut m, t0 + 11 * S);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn tracking_with_weight_zero_goes_to_fault_and_back() {
        let t0 = Instant::now();
        let mut m = started(
            Params {
                track_weight: 0,
                ..params(200)
            },
            t0,
        );
        run_until(&mut m, t0 + 4 * S);
        let out = m.handle(Event::Track { ok: false }, t0 + 5 * S);
        assert_eq!(m.state(), State::Fault);
        assert_eq!(
            out.actions,
            vec![Action::Advertise { priority: 0 }, Action::ReleaseVips]
        );
        assert_eq!(m.next_deadline(), None, "no adverts in fault");
        m.handle(Event::Track { ok: true }, t0 + 6 * S);
        assert_eq!(m.state(), State::Backup);
        run_until(&mut m, t0 + 10 * S);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn a_reload_to_weight_zero_while_tracking_fails_faults_and_back() {
        let t0 = Instant::now();
        let mut m = started(
            Params {
                track_weight: -50,
                ..params(200)
            },
            t0,
        );
        run_until(&mut m, t0 + 4 * S);
        m.handle(Event::Track { ok: false }, t0 + 5 * S);
        assert_eq!(m.state(), State::Master, "weight -50: a lower priority");
        let out = m.set_params(
            Params {
                track_weight: 0,
                ..params(200)
            },
            t0 + 6 * S,
        );
        assert_eq!(m.state(), State::Fault);
        assert_eq!(
            out.actions,
            vec![Action::Advertise { priority: 0 }, Action::ReleaseVips]
        );
        // Back to a weight: out of fault, and master again once no one else is.
        let out = m.set_params(
            Params {
                track_weight: -50,
                ..params(200)
            },
            t0 + 7 * S,
        );
        assert_eq!(m.state(), State::Backup);
        assert!(out.transition.is_some());
        assert_eq!(m.priority(), 150);
        run_until(&mut m, t0 + 11 * S);
        assert_eq!(m.state(), State::Master);
        // A reload that keeps the weight changes nothing.
        let out = m.set_params(
            Params {
                track_weight: -40,
                ..params(200)
            },
            t0 + 12 * S,
        );
        assert_eq!((m.state(), out.actions.len()), (State::Master, 0));
    }

    #[test]
    fn a_lower_master_is_timed_again_after_a_fault() {
        let t0 = Instant::now();
        let mut m = started(
            Params {
                preempt_delay: 10 * S,
                ..params(200)
            },
            t0,
        );
        // A lower master from the start: preemption waits 10 s from then.
        m.handle(
            Event::Advert {
                from: PEER,
                priority: 100,
                interval: S,
            },
            t0 + S,
        );
        m.handle(Event::Link { up: false }, t0 + 2 * S);
        m.handle(Event::Link { up: true }, t0 + 20 * S);
        assert_eq!(m.state(), State::Backup);
        // Heard again after the fault: its delay starts now, not at t0 + 1 s, so its adverts
        // hold this backup back (without it, they would be ignored and the backup would take
        // over when its master-down timer ran out, about 3 s after the link came up).
        for i in 0..6 {
            let at = t0 + 21 * S + i * S;
            run_until(&mut m, at);
            m.handle(
                Event::Advert {
                    from: PEER,
                    priority: 100,
                    interval: S,
                },
                at,
            );
            assert_eq!(m.state(), State::Backup, "{i} s after it was heard again");
        }
    }

    #[test]
    fn priority_is_clamped() {
        let m = Machine::new(Params {
            track_weight: 100,
            ..params(200)
        });
        assert_eq!(m.priority(), 200);
        let mut m = Machine::new(Params {
            track_weight: -254,
            ..params(100)
        });
        m.track_ok = false;
        assert_eq!(m.priority(), 1);
        m.params.track_weight = 254;
        assert_eq!(m.priority(), 254);
    }
}
