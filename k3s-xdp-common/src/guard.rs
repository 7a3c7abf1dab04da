//! The SYN flood guard's shared parts: the set of known sources (clients that completed a
//! handshake through this node) and the guard's settings.
//!
//! A source is *known* once one of its TCP flows was confirmed (its client sent a second
//! packet, the ACK of the handshake), which a flood from forged addresses never does: their
//! SYN-ACKs go to hosts that never asked. While a CPU sees more SYNs of new flows from unknown
//! sources than `SynGuard::threshold` in a second (and the next second, if the last one was
//! over), it admits only `SynGuard::admit` of them per second and drops the rest
//! (`reason::DROP_SYN_FLOOD`); SYNs from known sources always go through. The table fills and
//! the servers answer the flood no more, and the clients a cluster has always had keep
//! connecting.
//!
//! The set is a one-hash Bloom filter: `KNOWN_SOURCE_WORDS` 64-bit words, one bit per source
//! (an IPv6 address folded to 64 bits first), set by the XDP program and read by it and by
//! userspace. A forged source whose bit another source set passes as known: the share of bits
//! set (status shows it) is the chance of that.

use crate::Address;

/// 64-bit words of the known-source set: 2^20 bits, 128 KiB.
pub const KNOWN_SOURCE_WORDS: u32 = 1 << 14;

/// The word of the known-source set that holds `source`'s bit, and the bit's mask.
#[inline(always)]
pub fn known_bit<A: Address>(source: &A) -> (u32, u64) {
    // MurmurHash3's 64-bit finaliser: every bit of the fold moves the top bits.
    let mut h = source.fold64();
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let word = (h >> (64 - 14)) as u32;
    let bit = (h >> (64 - 14 - 6)) & 63;
    (word & (KNOWN_SOURCE_WORDS - 1), 1u64 << bit)
}

/// The guard's settings, per CPU (userspace divides the config's per-node figures by the
/// CPUs that can run the program): the one entry of the `SYN_GUARD` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynGuard {
    /// SYNs of new flows from unknown sources per second above which the guard is up; 0: the
    /// guard is off (every SYN admitted, none counted).
    pub threshold: u32,
    /// SYNs from unknown sources admitted per second while the guard is up.
    pub admit: u32,
}

/// One CPU's count of the current second, kept by the program between packets (in its
/// per-CPU new-flow state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardWindow {
    /// `Globals::clock` of the second counted.
    pub second: u32,
    /// SYNs of new flows from unknown sources seen in it.
    pub unknown: u32,
    /// Of those, admitted while the guard was up.
    pub admitted: u32,
    /// 1 when the previous second was over the threshold: the guard stays up.
    pub up: u32,
}

/// What the guard says about a SYN of a new flow from an unknown source, counted in `w` at
/// `clock`: admitted or dropped, and whether the guard was up. Pure, so that userspace tests the exact rule the
/// program runs.
#[inline(always)]
pub fn admit_unknown(w: &mut GuardWindow, clock: u32, guard: &SynGuard) -> (bool, bool) {
    if guard.threshold == 0 {
        return (true, false);
    }
    if w.second != clock {
        // A new second: the guard stays up if the second before it was over the threshold.
        w.up = u32::from(w.unknown > guard.threshold && clock.wrapping_sub(w.second) == 1);
        w.second = clock;
        w.unknown = 0;
        w.admitted = 0;
    }
    w.unknown = w.unknown.saturating_add(1);
    let up = w.up != 0 || w.unknown > guard.threshold;
    if !up {
        return (true, false);
    }
    if w.admitted < guard.admit {
        w.admitted += 1;
        return (true, true);
    }
    (false, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::V6;

    const GUARD: SynGuard = SynGuard {
        threshold: 10,
        admit: 3,
    };

    fn run(w: &mut GuardWindow, clock: u32, n: u32) -> (u32, u32) {
        let (mut admitted, mut dropped) = (0, 0);
        for _ in 0..n {
            if admit_unknown(w, clock, &GUARD).0 {
                admitted += 1;
            } else {
                dropped += 1;
            }
        }
        (admitted, dropped)
    }

    #[test]
    fn below_the_threshold_everything_goes_through() {
        let mut w = GuardWindow::default();
        assert_eq!(run(&mut w, 1, 10), (10, 0));
        assert_eq!(run(&mut w, 2, 10), (10, 0));
    }

    #[test]
    fn over_the_threshold_only_the_budget_goes_through_until_a_quiet_second() {
        let mut w = GuardWindow::default();
        // 10 pass, then the guard is up: 3 more admitted, the rest dropped.
        assert_eq!(run(&mut w, 5, 100), (13, 87));
        // The next second starts up: the budget only.
        assert_eq!(run(&mut w, 6, 100), (3, 97));
        // A quiet second (under the threshold) still starts up, then ends down...
        assert_eq!(run(&mut w, 7, 2), (2, 0));
        // ...so the second after it is open again.
        assert_eq!(run(&mut w, 8, 10), (10, 0));
    }

    #[test]
    fn a_gap_of_more_than_a_second_ends_the_guard() {
        let mut w = GuardWindow::default();
        run(&mut w, 5, 100);
        assert_eq!(run(&mut w, 9, 10), (10, 0));
    }

    #[test]
    fn the_guard_off_admits_everything() {
        let mut w = GuardWindow::default();
        let off = SynGuard::default();
        let admitted = (0..1000)
            .filter(|_| admit_unknown(&mut w, 1, &off).0)
            .count();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn sources_spread_over_the_set() {
        // 4,096 IPv4 sources of one /20 and 4,096 IPv6 ones of one /64 land on nearly as many
        // distinct bits as a perfect spread would give (about 4,088 of 2^20).
        let v4: std::collections::HashSet<(u32, u64)> = (0..4096u32)
            .map(|i| known_bit(&(0xc633_6400u32 + i).to_be()))
            .collect();
        assert!(v4.len() > 4070, "{}", v4.len());
        let v6: std::collections::HashSet<(u32, u64)> = (0..4096u64)
            .map(|i| {
                let a: V6 = [0x2001_0db8_0000_0000u64.to_be(), (0x100 + i).to_be()];
                known_bit(&a)
            })
            .collect();
        assert!(v6.len() > 4070, "{}", v6.len());
    }
}
