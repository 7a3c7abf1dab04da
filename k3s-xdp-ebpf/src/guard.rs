//! The SYN flood guard (see `k3s_xdp_common::guard`): a source becomes known when one of its
//! TCP flows is confirmed; a SYN of a new flow from an unknown source is admitted or dropped
//! by the rule of `guard::admit_unknown`, counted in this CPU's new-flow state.

use crate::{
    counters,
    family::Family,
    maps::{KNOWN_SOURCES, SYN_GUARD},
    state::Probe,
};
use k3s_xdp_common::{
    guard::{admit_unknown, known_bit},
    reason, Address,
};

/// Whether `source` is known (its bit is set; a Bloom filter's answer, see the common module).
#[inline(always)]
fn known<A: Address>(source: &A) -> bool {
    let (word, mask) = known_bit(source);
    KNOWN_SOURCES.get(word).is_some_and(|w| w & mask != 0)
}

/// Records `source` as known: its flow was just confirmed (once per flow). Written without an
/// atomic: two CPUs setting bits of one word at once may lose one, which the source's next
/// confirmed flow sets again.
#[inline(always)]
pub fn confirmed<A: Address>(source: &A) {
    let (word, mask) = known_bit(source);
    if let Some(w) = KNOWN_SOURCES.get_ptr_mut(word) {
        // SAFETY: a map value, valid for this run; see above for the race.
        unsafe {
            if *w & mask == 0 {
                *w |= mask;
            }
        }
    }
}

/// Whether the SYN of the new flow in `state` may go on: always from a known source or with the
/// guard off; otherwise as the guard's rule says, counted.
#[inline(always)]
pub fn admit<F: Family>(state: *mut Probe<F>) -> bool {
    let Some(settings) = SYN_GUARD.get(0) else {
        return true;
    };
    if settings.threshold == 0 {
        return true;
    }
    // SAFETY: this CPU's new-flow state, valid for this run.
    unsafe {
        if known(&(*state).key.src) {
            return true;
        }
        counters::table_event(reason::table::SYN_UNKNOWN_SOURCE);
        let (admitted, up) = admit_unknown(&mut (*state).guard, (*state).clock, settings);
        if admitted && up {
            counters::table_event(reason::table::SYN_GUARD_ADMITTED);
        }
        admitted
    }
}
