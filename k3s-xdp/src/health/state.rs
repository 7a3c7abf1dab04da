//! The health state of one backend, with HAProxy's meanings of `rise`, `fall`, `inter`,
//! `fastinter`, `downinter` and `slowstart`. Pure: time is passed in, so tests drive it with a
//! fake clock.
//!
//! As in HAProxy, a backend has a health counter from 0 to `rise + fall - 1`:
//! - a success raises it by one; reaching `rise` makes a down backend UP, and the counter jumps
//!   to its maximum;
//! - a failure lowers it while it stays above `rise`; a failure at `rise` or below makes an up
//!   backend DOWN, and the counter drops to 0.
//!
//! So a fully up backend goes down after `fall` consecutive failures, and a down one comes up
//! after `rise` consecutive successes. Checks run every `inter` while fully up, every
//! `downinter` while fully down, and every `fastinter` in between (changing state). A backend
//! starts UP with the counter at `rise` (HAProxy's start state): traffic flows at once, and the
//! first failed check takes it down.
//!
//! After coming back UP, a backend's weight ramps from a tenth to its full weight over
//! `slowstart`, in steps of a tenth, so a server restarting cold is not flooded. Backends up at
//! start are not ramped.

use std::time::{Duration, Instant};

/// The timers and counts of a service's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub rise: u32,
    pub fall: u32,
    pub inter: Duration,
    pub fastinter: Duration,
    pub downinter: Duration,
    pub slowstart: Duration,
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Why it failed, in the operator's words ("connection refused", "HTTP 500", "timeout").
    Failed(String),
}

/// A change of state, with the line to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub up: bool,
    /// E.g. "DOWN after 2/2 failures: connection refused", "UP after 2/2 successes".
    pub reason: String,
}

/// Number of slowstart steps: the weight goes 10%, 20%, ... 100%.
pub const SLOWSTART_STEPS: u32 = 10;

#[derive(Clone, Debug)]
pub struct Health {
    params: Params,
    counter: u32,
    up: bool,
    /// When the backend last came UP from DOWN (None: up since start, or down).
    ramp_from: Option<Instant>,
    /// When the state last changed.
    since: Instant,
    /// Consecutive failed checks (for messages: "2/3 failures").
    failures: u32,
    last_failure: Option<String>,
}

impl Health {
    /// A backend at start: UP, counter at `rise`.
    pub fn new(params: Params, now: Instant) -> Self {
        let rise = params.rise.max(1);
        Health {
            params: Params {
                rise,
                fall: params.fall.max(1),
                ..params
            },
            counter: rise,
            up: true,
            ramp_from: None,
            since: now,
            failures: 0,
            last_failure: None,
        }
    }

    /// New timers and counts (reload): the state is kept, the counter clamped.
    pub fn set_params(&mut self, params: Params) {
        self.params = Params {
            rise: params.rise.max(1),
            fall: params.fall.max(1),
            ..params
        };
        let max = self.max();
        if self.counter > max {
            self.counter = max;
        }
        if self.up && self.counter < self.params.rise {
            self.counter = self.params.rise;
        }
    }

    fn max(&self) -> u32 {
        self.params.rise + self.params.fall - 1
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The health counter and its maximum (`rise + fall - 1`), as HAProxy shows "UP 3/4".
    pub fn counter(&self) -> (u32, u32) {
        (self.counter, self.max())
    }

    /// When the state last changed.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The reason of the last failed check, if the last check failed.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Records a check result; returns the transition it caused, if any.
    pub fn record(&mut self, outcome: &Outcome, now: Instant) -> Option<Transition> {
        match outcome {
            Outcome::Passed => {
                self.last_failure = None;
                self.failures = 0;
                if self.counter < self.max() {
                    self.counter += 1;
                }
                if !self.up && self.counter >= self.params.rise {
                    self.up = true;
                    self.counter = self.max();
                    self.since = now;
                    self.ramp_from = Some(now);
                    return Some(Transition {
                        up: true,
                        reason: format!(
                            "UP after {rise}/{rise} successful checks",
                            rise = self.params.rise
                        ),
                    });
                }
                None
            }
            Outcome::Failed(why) => {
                self.last_failure = Some(why.clone());
                self.failures = self.failures.saturating_add(1);
                if self.up {
                    if self.counter > self.params.rise {
                        self.counter -= 1;
                        return None;
                    }
                    let failures = self.failures.min(self.params.fall);
                    self.up = false;
                    self.counter = 0;
                    self.since = now;
                    self.ramp_from = None;
                    return Some(Transition {
                        up: false,
                        reason: format!(
                            "DOWN after {failures}/{fall} failures: {why}",
                            fall = self.params.fall
                        ),
                    });
                }
                self.counter = 0;
                None
            }
        }
    }

    /// Time until the next check: `inter` fully up, `downinter` fully down, `fastinter` while
    /// changing state.
    pub fn interval(&self) -> Duration {
        if self.up && self.counter == self.max() {
            self.params.inter
        } else if !self.up && self.counter == 0 {
            self.params.downinter
        } else {
            self.params.fastinter
        }
    }

    /// The share of `weight` this backend should have now: 0 when down, ramped after coming
    /// back up (slowstart), `weight` otherwise.
    pub fn effective_weight(&self, weight: u32, now: Instant) -> u32 {
        if !self.up {
            return 0;
        }
        match self.ramp_step(now) {
            Some(step) => (weight * step).div_ceil(SLOWSTART_STEPS).max(1).min(weight),
            None => weight,
        }
    }

    /// The slowstart step (1..SLOWSTART_STEPS-1) now, None when not ramping.
    fn ramp_step(&self, now: Instant) -> Option<u32> {
        let from = self.ramp_from?;
        let slowstart = self.params.slowstart;
        if slowstart.is_zero() {
            return None;
        }
        let elapsed = now.saturating_duration_since(from);
        if elapsed >= slowstart {
            return None;
        }
        let step = (elapsed.as_nanos() * u128::from(SLOWSTART_STEPS) / slowstart.as_nanos()) as u32;
        Some((step + 1).min(SLOWSTART_STEPS))
    }

    /// When the effective weight next changes (the next slowstart step), if it is ramping.
    pub fn next_weight_change(&self, now: Instant) -> Option<Instant> {
        let step = self.ramp_step(now)?;
        let from = self.ramp_from?;
        Some(from + self.params.slowstart * step / SLOWSTART_STEPS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn params() -> Params {
        Params {
            rise: 2,
            fall: 3,
            inter: 2 * S,
            fastinter: S / 2,
            downinter: 5 * S,
            slowstart: 60 * S,
        }
    }

    fn fail(h: &mut Health, t: Instant) -> Option<Transition> {
        h.record(&Outcome::Failed("connection refused".into()), t)
    }

    fn pass(h: &mut Health, t: Instant) -> Option<Transition> {
        h.record(&Outcome::Passed, t)
    }

    #[test]
    fn starts_up_and_the_first_failure_takes_it_down() {
        let t0 = Instant::now();
        let mut h = Health::new(params(), t0);
        assert!(h.is_up());
        assert_eq!(
            h.interval(),
            S / 2,
            "at start the counter is at rise: changing state"
        );
        let t = fail(&mut h, t0 + S).expect("down");
        assert!(!t.up);
        assert_eq!(t.reason, "DOWN after 1/3 failures: connection refused");
    }

    #[test]
    fn a_fully_up_backend_goes_down_after_fall_failures() {
        let t0 = Instant::now();
        let mut h = Health::new(params(), t0);
        // From the start value (rise = 2) to fully up (rise + fall - 1 = 4): two successes.
        assert_eq!(pass(&mut h, t0), None);
        assert_eq!(h.interval(), S / 2);
        assert_eq!(pass(&mut h, t0), None);
        assert_eq!(h.interval(), 2 * S, "fully up: inter");
        assert_eq!(fail(&mut h, t0 + S), None);
        assert_eq!(h.interval(), S / 2, "going down: fastinter");
        assert_eq!(fail(&mut h, t0 + 2 * S), None);
        let t = fail(&mut h, t0 + 3 * S).expect("third failure");
        assert_eq!(t.reason, "DOWN after 3/3 failures: connection refused");
        assert!(!h.is_up());
        assert_eq!(h.interval(), 5 * S, "fully down: downinter");
        assert_eq!(h.since(), t0 + 3 * S);
    }

    #[test]
    fn a_success_in_between_restores_full_health() {
        let t0 = Instant::now();
        let mut h = Health::new(params(), t0);
        pass(&mut h, t0);
        pass(&mut h, t0); // fully up: 4
        fail(&mut h, t0); // 3
        fail(&mut h, t0); // 2 = rise, still up
        pass(&mut h, t0); // 3: back up by one, not to the max
        assert!(h.is_up());
        assert_eq!(h.interval(), S / 2);
        assert_eq!(fail(&mut h, t0), None, "3 -> 2");
        let t = fail(&mut h, t0).expect("at rise, a failure takes it down");
        assert_eq!(t.reason, "DOWN after 2/3 failures: connection refused");
    }

    #[test]
    fn a_down_backend_comes_up_after_rise_successes() {
        let t0 = Instant::now();
        let mut h = Health::new(params(), t0);
        fail(&mut h, t0);
        assert_eq!(pass(&mut h, t0 + S), None);
        assert_eq!(h.interval(), S / 2, "going up: fastinter");
        fail(&mut h, t0 + 2 * S);
        assert_eq!(h.interval(), 5 * S, "a failure resets the climb");
        assert_eq!(pass(&mut h, t0 + 3 * S), None);
        let t = pass(&mut h, t0 + 4 * S).expect("second success");
        assert!(t.up);
        assert_eq!(t.reason, "UP after 2/2 successful checks");
        assert_eq!(h.interval(), 2 * S);
    }

    #[test]
    fn rise_and_fall_of_one() {
        let t0 = Instant::now();
        let p = Params {
            rise: 1,
            fall: 1,
            ..params()
        };
        let mut h = Health::new(p, t0);
        assert_eq!(
            h.interval(),
            2 * S,
            "rise 1 fall 1: the start counter is the max"
        );
        assert!(fail(&mut h, t0).is_some());
        assert!(pass(&mut h, t0).is_some());
    }

    #[test]
    fn slowstart_ramps_the_weight_in_tenths_after_recovery() {
        let t0 = Instant::now();
        let mut h = Health::new(params(), t0);
        assert_eq!(h.effective_weight(100, t0), 100, "no ramp at start");
        fail(&mut h, t0);
        assert_eq!(h.effective_weight(100, t0), 0, "down: no weight");
        pass(&mut h, t0 + S);
        pass(&mut h, t0 + 2 * S);
        let up = t0 + 2 * S;
        assert_eq!(h.effective_weight(100, up), 10);
        assert_eq!(h.effective_weight(100, up + 6 * S), 20);
        assert_eq!(h.effective_weight(100, up + 30 * S), 60);
        assert_eq!(h.effective_weight(100, up + 59 * S), 100);
        assert_eq!(h.effective_weight(100, up + 60 * S), 100);
        assert_eq!(h.effective_weight(3, up), 1, "never 0 while up");
        assert_eq!(h.next_weight_change(up), Some(up + 6 * S));
        assert_eq!(h.next_weight_change(up + 60 * S), None);
    }

    #[test]
    fn no_slowstart_means_full_weight_at_once() {
        let t0 = Instant::now();
        let p = Params {
            slowstart: Duration::ZERO,
            ..params()
        };
        let mut h = Health::new(p, t0);
        fail(&mut h, t0);
        pass(&mut h, t0);
        pass(&mut h, t0);
        assert_eq!(h.effective_weight(100, t0), 100);
        assert_eq!(h.next_weight_change(t0), None);
    }

    #[test]
    fn new_params_keep_the_state() {
        let t0 = Instant::now();
        let mut h = Health::new(params(), t0);
        pass(&mut h, t0);
        pass(&mut h, t0);
        h.set_params(Params {
            rise: 1,
            fall: 1,
            ..params()
        });
        assert!(h.is_up());
        assert!(fail(&mut h, t0).is_some(), "fall 1 now");
    }
}
