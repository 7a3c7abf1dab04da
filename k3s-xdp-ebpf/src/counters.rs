//! Per-CPU counters: no atomics needed, the controller sums the CPUs.

use crate::maps::REASONS;

/// Counts one packet under `reason` (a `k3s_xdp_common::reason` constant).
#[inline(always)]
pub fn count(reason: u32) {
    if let Some(slot) = REASONS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}
