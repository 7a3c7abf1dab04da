//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624). One's-complement
//! sums do not depend on byte order, so every value here is taken exactly as it sits in the
//! packet (network order loaded natively); constants are converted with `to_be` first.

/// Folds a 32-bit accumulator into 16 bits with end-around carry.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the two 16-bit halves of `v` to `sum`.
#[inline(always)]
pub fn add32(sum: u32, v: u32) -> u32 {
    sum + (v & 0xffff) + (v >> 16)
}

/// The checksum after replacing 32-bit word `old` by `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = add32(add32(u32::from(!check), !old), new);
    !fold(sum)
}

/// The checksum after replacing 16-bit word `old` by `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// A precomputed difference of several replaced words, applied to any number of checksums
/// that cover them (the IPv4 header and the TCP/UDP pseudo-header share the address change).
#[derive(Clone, Copy)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn new() -> Self {
        Delta(0)
    }

    #[inline(always)]
    pub fn word32(self, old: u32, new: u32) -> Self {
        Delta(add32(add32(self.0, !old), new))
    }

    #[inline(always)]
    pub fn word16(self, old: u16, new: u16) -> Self {
        Delta(self.0 + u32::from(!old) + u32::from(new))
    }

    /// The delta with `sum` added, a one's-complement sum of 16-bit words held in up to 33
    /// bits (e.g. 32-bit halves summed in 64 bits, folded once).
    #[inline(always)]
    pub fn folded(self, sum: u64) -> Self {
        let sum = (sum & 0xffff) + ((sum >> 16) & 0xffff) + (sum >> 32);
        Delta(self.0 + sum as u32)
    }

    /// `check` with the delta applied.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u32::from(!check) + u32::from(fold(self.0)))
    }

    /// For UDP, where 0 means "no checksum": keep 0, and never produce 0.
    #[inline(always)]
    pub fn apply_udp(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            c => c,
        }
    }
}
