//! The flow hash, shared by the XDP program and userspace so both compute exactly the same
//! value: the program to pick a Maglev entry and an SNAT port, userspace to predict and test
//! them. It is a fixed function of the packet's 5-tuple (no per-boot seed), so lb-1 and lb-2
//! pick the same backend for the same flow given the same table.

use crate::{Address, FlowKey};

const SEED_FLOW: u32 = 0x6b33_7864; // "k3xd"
const SEED_SNAT: u32 = 0x736e_6174; // "snat"

#[inline(always)]
pub(crate) fn mix(h: u32, k: u32) -> u32 {
    // One round of MurmurHash3's body.
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    // MurmurHash3's finaliser: every input bit affects every output bit.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a client → VIP 5-tuple (fields as stored in [`FlowKey`], network byte order),
/// IPv4 or IPv6: every word of both addresses goes in (IPv6 folded first, see `Address::absorb`).
#[inline(always)]
pub fn flow_hash<A: Address>(key: &FlowKey<A>) -> u32 {
    tuple_hash(SEED_FLOW, key)
}

/// Hash choosing the first SNAT port tried for a client → VIP flow (nat mode).
#[inline(always)]
pub fn snat_hash<A: Address>(key: &FlowKey<A>) -> u32 {
    tuple_hash(SEED_SNAT, key)
}

#[inline(always)]
fn tuple_hash<A: Address>(seed: u32, key: &FlowKey<A>) -> u32 {
    let ports = (u32::from(key.sport) << 16) | u32::from(key.dport);
    finish(mix(
        key.dst
            .absorb(key.src.absorb(seed ^ u32::from(key.protocol))),
        ports,
    ))
}

/// The `try`-th probe of a search that starts from `hash`: `hash` itself first, then
/// independent values (random probing, which does not cluster like linear probing does).
#[inline(always)]
pub fn probe(hash: u32, try_: u32) -> u32 {
    if try_ == 0 {
        hash
    } else {
        finish(hash ^ try_.wrapping_mul(0x9e37_79b9))
    }
}

/// Maps a 32-bit hash onto `0..n` without a division (Lemire's multiply-shift reduction).
#[inline(always)]
pub fn reduce(hash: u32, n: u32) -> u32 {
    ((u64::from(hash) * u64::from(n)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        FlowKey {
            src: u32::from_ne_bytes(src),
            dst: u32::from_ne_bytes([192, 0, 2, 100]),
            sport: sport.to_be(),
            dport: 6443u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        }
    }

    /// The hash is part of the lb-1/lb-2 contract: pin its value so a change is deliberate.
    #[test]
    fn flow_hash_is_stable() {
        let k = key([192, 0, 2, 101], 40000);
        assert_eq!(flow_hash(&k), flow_hash(&k));
        assert_ne!(flow_hash(&k), snat_hash(&k));
        assert_eq!(
            flow_hash(&k),
            0x58b4_ac9a,
            "flow_hash changed: lb-1 and lb-2 of different versions would disagree"
        );
    }

    /// The same for IPv6 tuples: the value every node computes for the same flow.
    #[test]
    fn ipv6_flow_hash_is_stable_and_takes_every_word() {
        let addr = |last: u8| {
            crate::address::v6_words([
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
            ])
        };
        let k = FlowKey {
            src: addr(0x65),
            dst: addr(0x64),
            sport: 40000u16.to_be(),
            dport: 6443u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        };
        assert_eq!(
            flow_hash(&k),
            0x10de_40a1,
            "flow_hash changed for IPv6: nodes of different versions would disagree"
        );
        assert_ne!(flow_hash(&k), snat_hash(&k));
        for word in 0..4 {
            let mut other = k;
            other.src[word / 2] ^= 1 << (32 * (word % 2));
            assert_ne!(flow_hash(&k), flow_hash(&other), "source word {word}");
            let mut other = k;
            other.dst[word / 2] ^= 1 << (20 + 32 * (word % 2));
            assert_ne!(flow_hash(&k), flow_hash(&other), "destination word {word}");
        }
    }

    /// IPv6 clients as they come: many in one /64 (identifiers counting up), and one
    /// identifier in many /64s of a /48. Both spread evenly over the flow table's buckets.
    #[test]
    fn ipv6_clients_spread_evenly() {
        let client = |subnet: u16, iid: u32| {
            let mut b = [0u8; 16];
            b[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10]);
            b[6..8].copy_from_slice(&subnet.to_be_bytes());
            b[12..].copy_from_slice(&iid.to_be_bytes());
            crate::address::v6_words(b)
        };
        let vip = client(0, 0x100);
        let spread = |keys: &mut dyn Iterator<Item = crate::V6>| {
            let mut buckets = [0u32; 64];
            for src in keys {
                let k = FlowKey {
                    src,
                    dst: vip,
                    sport: 40000u16.to_be(),
                    dport: 6443u16.to_be(),
                    protocol: 6,
                    _pad: [0; 3],
                };
                buckets[(flow_hash(&k) & 63) as usize] += 1;
            }
            buckets
        };
        // 65536 flows over 64 buckets: each within 12% of 1024.
        for buckets in [
            spread(&mut (0..65536).map(|iid| client(1, iid))),
            spread(
                &mut (0..65535)
                    .chain([0])
                    .map(|subnet| client(subnet as u16, 0x42)),
            ),
        ] {
            for b in buckets {
                assert!((901..=1147).contains(&b), "uneven spread: {buckets:?}");
            }
        }
    }

    #[test]
    fn reduce_stays_in_range_and_spreads() {
        let n = 65537;
        let mut buckets = [0u32; 16];
        for port in 1024..(1024 + 16 * 4096) {
            let h = flow_hash(&key([192, 0, 2, 101], port as u16));
            let r = reduce(h, n);
            assert!(r < n);
            buckets[(r * 16 / n) as usize] += 1;
        }
        // 65536 flows over 16 ranges: each within 10% of 4096.
        for b in buckets {
            assert!((3686..=4506).contains(&b), "uneven spread: {buckets:?}");
        }
    }
}
