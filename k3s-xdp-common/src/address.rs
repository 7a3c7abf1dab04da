//! The two address families the maps hold: an IPv4 address is one `u32`, an IPv6 address
//! ([`V6`]) four, each word as it sits in the packet (network byte order loaded natively). The
//! flow and reverse-NAT tables, the backend and SNAT maps are generic over [`Address`], so the
//! IPv4 ones keep their layouts (and the IPv4 path its cache footprint) while their IPv6 twins
//! reuse every line of the code that fills and reads them.

use crate::hash::mix;

/// An IPv6 address in a map or a packet: its four 32-bit words, network byte order.
pub type V6 = [u64; 2];

/// What the tables do with an address of either family: compare without a branch, hash, and
/// fold into one word for the VIP lookup.
pub trait Address: Copy + Default + Eq + core::fmt::Debug + 'static {
    /// Bytes of the address.
    const LEN: usize;

    /// Explicit padding that the layouts holding an address end a group of fields with, so
    /// that an 8-byte aligned IPv6 address leaves no implicit padding (`()` for IPv4: the
    /// IPv4 layouts are as they were).
    type Tail: Copy + Default + Eq + core::fmt::Debug + 'static;

    /// The family's reverse-NAT slot (`NAT_REVERSE`, `NAT_REVERSE6`): see
    /// [`crate::table::Translation`].
    type NatSlot: crate::table::Translation<Self>;

    /// The family's flow slot (`FLOWS`, `FLOWS6`): see [`crate::table::FlowWay`].
    type FlowSlot: crate::table::FlowWay<Self>;

    /// 0 when `self == other`, anything else otherwise; one branch-free expression (the
    /// verifier walks every branch of every way of a bucket).
    fn diff(&self, other: &Self) -> u32;

    /// `h` with the address mixed in: the flow hash and the seals take every word (IPv6:
    /// folded to two first).
    fn absorb(&self, h: u32) -> u32;

    /// One word for the seals (the address itself for IPv4, a hash of its words for IPv6).
    fn seal_word(&self) -> u32;

    /// The word the VIP table's perfect hash (`VipHash::slot`) takes: cheap, because every
    /// packet of the family pays it; userspace checks that the VIPs fold apart.
    fn vip_fold(&self) -> u32;

    /// The address in 64 bits (IPv6: the prefix's words against the interface identifier's,
    /// crosswise), for the known-source set (`guard::known_bit`).
    fn fold64(&self) -> u64;
}

impl Address for u32 {
    const LEN: usize = 4;
    type Tail = ();
    type NatSlot = crate::table::NatSlot<u32>;
    type FlowSlot = crate::table::FlowSlot<u32>;

    #[inline(always)]
    fn diff(&self, other: &Self) -> u32 {
        self ^ other
    }

    #[inline(always)]
    fn absorb(&self, h: u32) -> u32 {
        mix(h, *self)
    }

    #[inline(always)]
    fn seal_word(&self) -> u32 {
        *self
    }

    #[inline(always)]
    fn vip_fold(&self) -> u32 {
        *self
    }

    #[inline(always)]
    fn fold64(&self) -> u64 {
        u64::from(*self)
    }
}

impl Address for V6 {
    const LEN: usize = 16;
    type Tail = u32;
    type NatSlot = crate::table::NatSlot6;
    type FlowSlot = crate::table::FlowSlot6;

    #[inline(always)]
    fn diff(&self, other: &Self) -> u32 {
        let d = (self[0] ^ other[0]) | (self[1] ^ other[1]);
        (d | (d >> 32)) as u32
    }

    /// The address folded to one word first ([`fold32`]), then mixed in as one: the same
    /// rounds as an IPv4 address, so the IPv6 flow hash (both addresses, on every packet) is
    /// as long a chain of multiplications as the IPv4 one.
    #[inline(always)]
    fn absorb(&self, h: u32) -> u32 {
        mix(h, fold32(self))
    }

    /// The folded address: the seal's own multiplication mixes it.
    #[inline(always)]
    fn seal_word(&self) -> u32 {
        fold32(self)
    }

    /// VIPs usually differ in their last word (the interface identifier), often in its low
    /// bits: rotations keep each word's low bits apart from the others'.
    #[inline(always)]
    fn vip_fold(&self) -> u32 {
        let [a, b] = *self;
        ((b >> 32) as u32)
            ^ (b as u32).rotate_left(8)
            ^ ((a >> 32) as u32).rotate_left(16)
            ^ (a as u32).rotate_left(24)
    }

    #[inline(always)]
    fn fold64(&self) -> u64 {
        let [a, b] = *self;
        a ^ b.rotate_left(32)
    }
}

/// An IPv6 address in 32 bits: its two halves, one rotated by an odd count so that no word
/// of the prefix lines up with a word of the interface identifier, multiplied by a 64-bit odd
/// constant whose high half takes every bit of the sum. One multiplication, where mixing the
/// four words in turn takes four dependent rounds.
#[inline(always)]
fn fold32(addr: &V6) -> u32 {
    let [a, b] = *addr;
    ((a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// The [`V6`] words of a 16-byte address as it sits in the packet.
pub fn v6_words(bytes: [u8; 16]) -> V6 {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    b.copy_from_slice(&bytes[8..]);
    [u64::from_ne_bytes(a), u64::from_ne_bytes(b)]
}

/// The bytes of a [`V6`] address, as in the packet.
pub fn v6_bytes(words: V6) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&words[0].to_ne_bytes());
    out[8..].copy_from_slice(&words[1].to_ne_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(last: u16) -> V6 {
        let mut b = [0u8; 16];
        b[0] = 0x20;
        b[1] = 0x01;
        b[2] = 0x0d;
        b[3] = 0xb8;
        b[14..].copy_from_slice(&last.to_be_bytes());
        v6_words(b)
    }

    #[test]
    fn addresses_differ_in_any_word() {
        let a = v6(0x100);
        assert_eq!(a.diff(&a), 0);
        for i in 0..4 {
            let mut b = a;
            b[i / 2] ^= 1 << (31 + 32 * (i % 2));
            assert_ne!(a.diff(&b), 0, "word {i}");
            assert_ne!(a.absorb(1), b.absorb(1), "word {i}");
            assert_ne!(a.seal_word(), b.seal_word(), "word {i}");
        }
        assert_eq!(7u32.diff(&7), 0);
        assert_ne!(7u32.diff(&6), 0);
    }

    #[test]
    fn words_and_bytes_round_trip() {
        let bytes = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
        ];
        assert_eq!(v6_bytes(v6_words(bytes)), bytes);
        assert_eq!(v6_words(bytes), v6(0x100));
    }

    #[test]
    fn nearby_vips_fold_apart() {
        let mut folds: [u32; 256] = [0; 256];
        for (i, f) in folds.iter_mut().enumerate() {
            *f = v6(0x100 + i as u16).vip_fold();
        }
        folds.sort_unstable();
        assert!(folds.windows(2).all(|w| w[0] != w[1]));
    }
}
