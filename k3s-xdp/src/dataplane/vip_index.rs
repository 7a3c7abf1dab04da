//! How the VIPs are laid out for the XDP program: a perfect hash over the configured VIPs, so
//! that every packet learns whether its destination is a VIP with one multiplication and one
//! array read (`k3s_xdp_common::VipHash`), and the slots of one half of `VIPS` (IPv4) or
//! `VIPS6` (IPv6, hashed over `Address::vip_fold`). Pure: the publisher writes what
//! [`layout`] returns.

use anyhow::{bail, Result};
use k3s_xdp_common::{Address, VipHash, VipInfo, VipSlot, MAX_VIPS, VIP_SLOTS};
use std::collections::BTreeMap;

/// Multipliers tried per table size before a larger one is tried.
const TRIES_PER_SIZE: u32 = 4096;

/// A multiply-shift hash that puts each of `addrs` (distinct words: IPv4 addresses in network
/// byte order, or IPv6 addresses' folds) in its own slot of `VIP_SLOTS`, using as few slots
/// as it can. Deterministic: the same VIPs always get the same hash.
pub fn perfect_hash(addrs: &[u32]) -> Option<VipHash> {
    let max_bits = VIP_SLOTS.trailing_zeros();
    let min_bits = addrs.len().next_power_of_two().trailing_zeros();
    // A fixed sequence of odd multipliers (splitmix32-like), so lb-1 and lb-2, and every run,
    // choose alike.
    let mut state: u32 = 0x9e37_79b9;
    for bits in min_bits..=max_bits {
        for _ in 0..TRIES_PER_SIZE {
            state = state.wrapping_add(0x6d2b_79f5);
            let mut z = state;
            z = (z ^ (z >> 15)).wrapping_mul(z | 1);
            z ^= z.wrapping_add((z ^ (z >> 7)).wrapping_mul(z | 61));
            let hash = VipHash {
                mult: (z ^ (z >> 14)) | 1,
                shift: 32 - bits,
            };
            if collision_free(addrs, &hash) {
                return Some(hash);
            }
        }
    }
    None
}

fn collision_free(addrs: &[u32], hash: &VipHash) -> bool {
    let mut used = [0u64; (VIP_SLOTS / 64) as usize];
    for &a in addrs {
        let slot = hash.slot(a) as usize;
        if slot >= VIP_SLOTS as usize {
            return false;
        }
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if used[word] & bit != 0 {
            return false;
        }
        used[word] |= bit;
    }
    true
}

/// One half of `VIPS` (or `VIPS6`), ready to write.
#[derive(Debug, PartialEq, Eq)]
pub struct Half<A: Address = u32> {
    pub hash: VipHash,
    /// `VIPS` index → slot.
    pub slots: BTreeMap<u32, VipSlot<A>>,
}

/// The entries of half `half` (0 or 1) for `vips` (VIP in network byte order → its services).
pub fn layout<A: Address + Ord>(vips: &BTreeMap<A, VipInfo>, half: u32) -> Result<Half<A>> {
    if vips.len() > MAX_VIPS as usize {
        bail!("{} VIPs, at most {MAX_VIPS}", vips.len());
    }
    let folds: Vec<u32> = vips.keys().map(Address::vip_fold).collect();
    let Some(hash) = perfect_hash(&folds) else {
        bail!(
            "found no collision-free hash for the {} VIPs in {VIP_SLOTS} slots",
            folds.len()
        );
    };
    let slots = vips
        .iter()
        .map(|(&addr, info)| {
            (
                half * VIP_SLOTS + hash.slot(addr.vip_fold()),
                VipSlot {
                    addr,
                    _pad: 0,
                    info: *info,
                    _tail: Default::default(),
                },
            )
        })
        .collect();
    Ok(Half { hash, slots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn be(a: Ipv4Addr) -> u32 {
        u32::from(a).to_be()
    }

    /// What the XDP program does (`maps::vip`), over the laid-out half.
    fn find(half: &Half, half_index: u32, dst: u32) -> Option<VipInfo> {
        let slot = half
            .slots
            .get(&(half_index * VIP_SLOTS + half.hash.slot(dst)))?;
        if (slot.info.count | slot.info.flags) == 0 || slot.addr != dst {
            return None;
        }
        Some(slot.info)
    }

    fn info(count: u32) -> VipInfo {
        VipInfo {
            count,
            ..Default::default()
        }
    }

    #[test]
    fn every_vip_is_found_and_nothing_else() {
        let mut vips = BTreeMap::new();
        for (i, last) in [100u8, 101, 200, 7].iter().enumerate() {
            vips.insert(be(Ipv4Addr::new(192, 0, 2, *last)), info(i as u32 + 1));
        }
        vips.insert(be(Ipv4Addr::new(203, 0, 113, 100)), info(9));
        for half_index in [0, 1] {
            let half = layout(&vips, half_index).unwrap();
            for (addr, want) in &vips {
                assert_eq!(find(&half, half_index, *addr), Some(*want));
            }
            for other in 0..=255u8 {
                let a = be(Ipv4Addr::new(198, 51, 100, other));
                assert_eq!(find(&half, half_index, a), None);
            }
            // Indices stay inside their half.
            for &i in half.slots.keys() {
                assert!((half_index * VIP_SLOTS..(half_index + 1) * VIP_SLOTS).contains(&i));
            }
        }
    }

    #[test]
    fn the_most_vips_fit_without_collision() {
        // Addresses next to each other (the usual case) and scattered ones.
        let dense: Vec<u32> = (0..MAX_VIPS)
            .map(|i| be(Ipv4Addr::new(192, 0, 2, i as u8)))
            .collect();
        let scattered: Vec<u32> = (0..MAX_VIPS)
            .map(|i| u32::from(Ipv4Addr::new(198, 51, (i * 37) as u8, (i * 101) as u8)).to_be())
            .collect();
        for addrs in [dense, scattered] {
            let hash = perfect_hash(&addrs).expect("a perfect hash for 64 VIPs");
            assert!(collision_free(&addrs, &hash));
        }
    }

    #[test]
    fn the_hash_is_deterministic_and_small_sets_use_few_slots() {
        let one = [be(Ipv4Addr::new(192, 0, 2, 100))];
        let h = perfect_hash(&one).unwrap();
        assert_eq!(h.shift, 32, "one VIP needs one slot");
        assert_eq!(perfect_hash(&one), Some(h));
        let two = [one[0], be(Ipv4Addr::new(192, 0, 2, 101))];
        assert_eq!(perfect_hash(&two), perfect_hash(&two));
        assert!(perfect_hash(&two).unwrap().shift >= 30);
        assert_eq!(perfect_hash(&[]).unwrap().shift, 32);
    }

    /// IPv6 VIPs next to each other (the usual case), as `maps::vip6` finds them.
    #[test]
    fn ipv6_vips_are_found_and_nothing_else() {
        use k3s_xdp_common::address::v6_words;
        use std::net::Ipv6Addr;
        let v6 = |last: u16| v6_words(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last).octets());
        let vips: BTreeMap<_, _> = (0..MAX_VIPS as u16)
            .map(|i| (v6(0x100 + i), info(u32::from(i) + 1)))
            .collect();
        for half_index in [0, 1] {
            let half = layout(&vips, half_index).unwrap();
            let find = |dst: &k3s_xdp_common::V6| {
                let slot = half
                    .slots
                    .get(&(half_index * VIP_SLOTS + half.hash.slot(dst.vip_fold())))?;
                (slot.addr == *dst).then_some(slot.info)
            };
            for (addr, want) in &vips {
                assert_eq!(find(addr), Some(*want));
            }
            for other in 0..=255u16 {
                assert_eq!(find(&v6(0x1000 + other)), None);
            }
        }
    }

    #[test]
    fn no_vips_lay_out_nothing() {
        let half = layout::<u32>(&BTreeMap::new(), 1).unwrap();
        assert!(half.slots.is_empty());
    }

    #[test]
    fn too_many_vips_are_refused() {
        let vips: BTreeMap<u32, VipInfo> = (0..=MAX_VIPS).map(|i| (i, info(1))).collect();
        assert!(layout(&vips, 0).is_err());
    }
}
