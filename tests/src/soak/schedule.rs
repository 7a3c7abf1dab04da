//! The fault schedule (pure): from a seed, the faults the soak applies one after the other,
//! each with its target and how long it is held. The same seed gives the same schedule, so a
//! run that failed can be repeated (`--seed`).
//!
//! Every kind comes once per round, in an order shuffled by the seed; targets and hold times
//! are drawn from the same generator. The runner applies faults in order until its time is up,
//! so a short run takes a prefix of the schedule.

use std::{fmt, time::Duration};

/// The servers a backend fault can hit (every service has all three).
pub const TARGETS: [&str; 3] = ["server-1", "server-2", "server-3"];
/// The server a valid reload adds (and the reload back removes).
pub const RELOAD_ADDS: &str = "server-4";

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The backend's processes die (kill -9): listeners and connections close; restarted after
    /// the hold.
    BackendKill,
    /// The backend's cable pulled (its switch port down), plugged back after the hold.
    BackendLink,
    /// The backend accepts connections and answers nothing (its TLS endpoint, which the health
    /// check probes, too); answers again after the hold.
    BackendHang,
    /// `k3s-xdp backend drain`, then `enable` after the hold.
    Drain,
    /// `k3s-xdp backend disable`, then `enable` after the hold.
    Disable,
    /// A valid reload: the target removed, server-4 added, weights changed; the original
    /// config reloaded after the hold.
    Reload,
    /// A reload of a broken config: refused, nothing changes; the good file written back.
    BrokenReload,
    /// kill -9 of the master's daemon; restarted after the hold (it preempts back).
    MasterKill,
    /// SIGTERM of the master's daemon; restarted after the hold.
    MasterTerm,
    /// The master's cable pulled, plugged back after the hold.
    MasterLink,
    /// A burst of flows from many source ports, more than the flow tables hold.
    TableFull,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::BackendKill,
        FaultKind::BackendLink,
        FaultKind::BackendHang,
        FaultKind::Drain,
        FaultKind::Disable,
        FaultKind::Reload,
        FaultKind::BrokenReload,
        FaultKind::MasterKill,
        FaultKind::MasterTerm,
        FaultKind::MasterLink,
        FaultKind::TableFull,
    ];

    /// Whether it hits one backend (then [`Fault::target`] names it).
    pub fn has_target(self) -> bool {
        matches!(
            self,
            FaultKind::BackendKill
                | FaultKind::BackendLink
                | FaultKind::BackendHang
                | FaultKind::Drain
                | FaultKind::Disable
                | FaultKind::Reload
        )
    }

    /// A failure of the target backend that health checks must detect.
    pub fn is_backend_failure(self) -> bool {
        matches!(
            self,
            FaultKind::BackendKill | FaultKind::BackendLink | FaultKind::BackendHang
        )
    }

    /// The master goes away; the backup must take over.
    pub fn is_master_failure(self) -> bool {
        matches!(
            self,
            FaultKind::MasterKill | FaultKind::MasterTerm | FaultKind::MasterLink
        )
    }

    /// Connections pinned to the target may be ended by this fault (the backend failed, was
    /// disabled, or was removed from the config).
    pub fn ends_pinned_connections(self) -> bool {
        self.is_backend_failure() || matches!(self, FaultKind::Disable | FaultKind::Reload)
    }

    /// How long the fault is held, at least and at most.
    fn hold_range(self) -> (Duration, Duration) {
        let s = Duration::from_secs;
        match self {
            // Long enough to be detected (fall x inter plus the check timeout) and felt.
            FaultKind::BackendKill | FaultKind::BackendLink | FaultKind::BackendHang => {
                (s(5), s(8))
            }
            FaultKind::Drain | FaultKind::Disable | FaultKind::Reload => (s(3), s(6)),
            FaultKind::BrokenReload | FaultKind::TableFull => (s(1), s(2)),
            // Past Master_Down_Interval: the backup takes over before the master returns.
            FaultKind::MasterKill | FaultKind::MasterTerm | FaultKind::MasterLink => (s(5), s(8)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::BackendKill => "backend kill -9",
            FaultKind::BackendLink => "backend link down",
            FaultKind::BackendHang => "backend hangs",
            FaultKind::Drain => "backend drain",
            FaultKind::Disable => "backend disable",
            FaultKind::Reload => "reload (valid)",
            FaultKind::BrokenReload => "reload (broken)",
            FaultKind::MasterKill => "master kill -9",
            FaultKind::MasterTerm => "master SIGTERM",
            FaultKind::MasterLink => "master link down",
            FaultKind::TableFull => "flow tables full",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Its number in the schedule, from 1.
    pub id: usize,
    pub kind: FaultKind,
    /// The backend it hits, for kinds that hit one.
    pub target: Option<&'static str>,
    /// How long it is held before it is undone.
    pub hold: Duration,
    /// Pause after recovery before the next fault.
    pub gap: Duration,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.id, self.kind)?;
        if let Some(t) = self.target {
            write!(f, " {t}")?;
        }
        write!(f, " (held {:.1} s)", self.hold.as_secs_f64())
    }
}

/// SplitMix64: small, good enough to shuffle, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform between `lo` and `hi`, in 100 ms steps.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let steps = (hi.saturating_sub(lo).as_millis() / 100) as u64;
        lo + Duration::from_millis(100 * self.below(steps + 1))
    }
}

/// `rounds` rounds of every fault kind, each round in its own seeded order.
pub fn schedule(seed: u64, rounds: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..rounds {
        let mut kinds = FaultKind::ALL.to_vec();
        // Fisher-Yates.
        for i in (1..kinds.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            kinds.swap(i, j);
        }
        for kind in kinds {
            let target = kind
                .has_target()
                .then(|| TARGETS[rng.below(TARGETS.len() as u64) as usize]);
            let (lo, hi) = kind.hold_range();
            let hold = rng.duration(lo, hi);
            let gap = rng.duration(Duration::from_secs(1), Duration::from_secs(3));
            out.push(Fault {
                id: out.len() + 1,
                kind,
                target,
                hold,
                gap,
            });
        }
    }
    out
}

/// The schedule as printed at the start of a run.
pub fn render(seed: u64, faults: &[Fault]) -> String {
    let mut s = format!("fault schedule (seed {seed}; a run applies a prefix of it):\n");
    for f in faults {
        s.push_str(&format!("  {f}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(schedule(7, 3), schedule(7, 3));
        assert_ne!(schedule(7, 3), schedule(8, 3));
    }

    #[test]
    fn every_round_has_every_kind_once_with_targets_where_they_belong() {
        let s = schedule(42, 4);
        assert_eq!(s.len(), 4 * FaultKind::ALL.len());
        for round in s.chunks(FaultKind::ALL.len()) {
            let mut kinds: Vec<FaultKind> = round.iter().map(|f| f.kind).collect();
            kinds.sort();
            assert_eq!(kinds, FaultKind::ALL.to_vec());
        }
        for f in &s {
            assert_eq!(f.target.is_some(), f.kind.has_target(), "{f}");
            let (lo, hi) = f.kind.hold_range();
            assert!(f.hold >= lo && f.hold <= hi, "{f}");
        }
        let ids: Vec<usize> = s.iter().map(|f| f.id).collect();
        assert_eq!(ids, (1..=s.len()).collect::<Vec<_>>());
    }

    #[test]
    fn seeds_shuffle_the_order() {
        let firsts: std::collections::BTreeSet<FaultKind> =
            (0..40).map(|seed| schedule(seed, 1)[0].kind).collect();
        assert!(firsts.len() > 5, "{firsts:?}");
    }

    #[test]
    fn rendering_names_the_seed_and_each_fault() {
        let s = schedule(3, 1);
        let text = render(3, &s);
        assert!(text.contains("seed 3"));
        assert_eq!(text.lines().count(), 1 + s.len());
    }
}
