//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI'16, section 3.4), with weights.
//!
//! Each backend derives a permutation of the table's `M` entries (M prime) from two hashes of its
//! identity: `offset = h1 mod M`, `skip = h2 mod (M-1) + 1`, `permutation[j] = (offset + j*skip)
//! mod M`. Backends then take turns claiming the next entry of their permutation that is still
//! free, until the table is full. Turns are weighted: each round a backend earns its weight in
//! credit and claims one entry per `max_weight` of credit, so entries are shared in proportion to
//! the weights and the heaviest backend claims exactly one entry per round, as in the paper.
//!
//! The result depends only on the set of (identity, weight) pairs and `M`: not on the order of
//! the backends in the config, the slots they occupy, the machine or the process. lb-1 and lb-2
//! therefore build the same table from the same config and health view, and pick the same
//! backend for the same flow.

/// A backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// What the permutation derives from; the backend's address ("192.0.2.50:6443"), so a
    /// backend keeps its entries when renamed and lb-1/lb-2 agree whatever the names.
    pub identity: &'a str,
    /// Relative weight; 0 takes no entries.
    pub weight: u32,
    /// The value stored in the entries this backend owns (its slot in the data plane).
    pub value: u32,
}

/// Builds a table of `size` entries (a prime). Returns an empty table when no candidate has a
/// positive weight.
pub fn build(candidates: &[Candidate<'_>], size: u32) -> Vec<u32> {
    debug_assert!(
        is_prime(size),
        "Maglev needs a prime table size, got {size}"
    );
    let mut backends: Vec<&Candidate<'_>> = candidates.iter().filter(|c| c.weight > 0).collect();
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    // Deterministic turn order, independent of the config's order.
    backends.sort_by(|a, b| a.identity.cmp(b.identity).then(a.value.cmp(&b.value)));
    let m = u64::from(size);
    let max_weight = backends.iter().map(|c| c.weight).max().unwrap_or(1);

    struct Walker {
        offset: u64,
        skip: u64,
        next: u64,
        credit: u64,
        value: u32,
        weight: u32,
    }
    let mut walkers: Vec<Walker> = backends
        .iter()
        .map(|c| {
            let h1 = hash64(c.identity.as_bytes(), 0x6d61_676c_6576_0001);
            let h2 = hash64(c.identity.as_bytes(), 0x6d61_676c_6576_0002);
            Walker {
                offset: h1 % m,
                skip: h2 % (m - 1) + 1,
                next: 0,
                credit: 0,
                value: c.value,
                weight: c.weight,
            }
        })
        .collect();

    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut filled: u64 = 0;
    loop {
        for w in walkers.iter_mut() {
            w.credit += u64::from(w.weight);
            while w.credit >= u64::from(max_weight) {
                w.credit -= u64::from(max_weight);
                // The next free entry in this backend's permutation. `next` < M always: a
                // backend visits each entry at most once and there is a free one.
                let mut c = (w.offset + w.next * w.skip) % m;
                while table[c as usize] != EMPTY {
                    w.next += 1;
                    c = (w.offset + w.next * w.skip) % m;
                }
                table[c as usize] = w.value;
                w.next += 1;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
}

/// A 64-bit hash of `bytes` with `seed`: FNV-1a for the bytes, then the SplitMix64 finaliser
/// so that identities differing in one character ("server-1", "server-2") land far apart.
/// Fixed constants: the same on every machine and in every version.
fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `n` is prime (trial division; table sizes are at most a few hundred thousand).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: u32 = 65537;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("198.51.{}.{}:6443", i / 250, i % 250 + 1))
            .collect()
    }

    fn candidates(names: &[String], weight: impl Fn(usize) -> u32) -> Vec<Candidate<'_>> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Candidate {
                identity: n,
                weight: weight(i),
                value: i as u32 + 1,
            })
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for &v in table {
            *counts.entry(v).or_default() += 1;
        }
        counts
    }

    #[test]
    fn every_entry_is_filled_with_a_candidate() {
        let names = names(7);
        let c = candidates(&names, |_| 100);
        let table = build(&c, 251);
        assert_eq!(table.len(), 251);
        assert!(table.iter().all(|v| (1..=7).contains(v)));
    }

    /// The paper's balance property, for 3 to 1000 backends: the most loaded backend owns at most
    /// 1.1x its fair share of M = 65537 entries.
    #[test]
    fn balance_within_1_1x_of_fair_share() {
        for n in [3, 4, 5, 7, 10, 31, 100, 257, 500, 1000] {
            let names = names(n);
            let table = build(&candidates(&names, |_| 100), M);
            let counts = shares(&table);
            assert_eq!(counts.len(), n, "every backend gets entries");
            let fair = f64::from(M) / n as f64;
            let max = *counts.values().max().unwrap() as f64;
            let min = *counts.values().min().unwrap() as f64;
            assert!(
                max <= 1.1 * fair,
                "{n} backends: max {max} > 1.1 x fair {fair:.1}"
            );
            assert!(
                min >= 0.9 * fair,
                "{n} backends: min {min} < 0.9 x fair {fair:.1}"
            );
        }
    }

    /// Removing 1 of N backends moves its entries (about 1/N of the table) and, as Maglev allows,
    /// only a small number of other backends' entries; adding it back restores the table.
    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        for n in [3, 5, 10, 100, 1000] {
            let names = names(n);
            let all = candidates(&names, |_| 100);
            let before = build(&all, M);
            let removed_value = all[n / 2].value;
            let rest: Vec<_> = all
                .iter()
                .copied()
                .filter(|c| c.value != removed_value)
                .collect();
            let after = build(&rest, M);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let owned_by_removed = before.iter().filter(|&&v| v == removed_value).count();
            let others_moved = moved - owned_by_removed;
            assert!(
                after.iter().all(|&v| v != removed_value),
                "the removed backend keeps no entry"
            );
            // Every entry of the removed backend moves; of the others', at most 1% of the table
            // (measured: at most 0.63%, for 1000 backends).
            let bound = (f64::from(M) * 0.01) as usize;
            assert!(
                others_moved <= bound,
                "{n} backends: {others_moved} entries of remaining backends moved (bound {bound})"
            );
            let fraction = moved as f64 / f64::from(M);
            assert!(
                fraction <= 1.0 / n as f64 + 0.01,
                "{n} backends: {fraction:.4} of the table moved"
            );
            assert_eq!(build(&all, M), before, "adding it back restores the table");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let names = names(4);
        // server weights 100, 50, 25, 25: shares 1/2, 1/4, 1/8, 1/8.
        let weights = [100, 50, 25, 25];
        let table = build(&candidates(&names, |i| weights[i]), M);
        let counts = shares(&table);
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = f64::from(M) * f64::from(*w) / f64::from(total);
            let got = counts[&(i as u32 + 1)] as f64;
            assert!(
                (got - expected).abs() / expected < 0.01,
                "backend {i} weight {w}: {got} entries, expected {expected:.0}"
            );
        }
    }

    #[test]
    fn weight_zero_takes_no_entries_and_all_zero_gives_an_empty_table() {
        let names = names(3);
        let table = build(&candidates(&names, |i| if i == 0 { 0 } else { 100 }), 251);
        assert!(!table.contains(&1));
        assert!(build(&candidates(&names, |_| 0), 251).is_empty());
        assert!(build(&[], 251).is_empty());
    }

    /// Same set → same table, whatever the order, and pinned values so that a change to the
    /// hash (which would make lb-1 and lb-2 of different versions disagree) is deliberate.
    #[test]
    fn deterministic_whatever_the_order() {
        let names = names(5);
        let c = candidates(&names, |i| 50 + 10 * i as u32);
        let mut reversed = c.clone();
        reversed.reverse();
        let table = build(&c, M);
        assert_eq!(table, build(&reversed, M));
        let fingerprint: Vec<u32> = table.iter().take(16).copied().collect();
        assert_eq!(
            fingerprint, PINNED_PREFIX,
            "the Maglev table for a fixed input changed"
        );
    }

    const PINNED_PREFIX: [u32; 16] = [5, 2, 5, 1, 5, 5, 5, 4, 5, 2, 1, 5, 5, 4, 5, 5];

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(251) && is_prime(7) && is_prime(262_139));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(0) && !is_prime(65535));
    }
}
