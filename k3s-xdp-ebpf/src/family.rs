//! IPv4 and IPv6: what differs between the families, so that the forwarding code (flows, SNAT,
//! replies, RSTs) is written once and compiled twice. `u32` is IPv4, `V6` IPv6; each names
//! its header, its maps and its FIB lookup. The IPv4 code is the code it was before IPv6
//! existed: every method below inlines to the IPv4 operation alone.

use crate::{
    csum::{self, Delta},
    forward,
    headers::{Ipv4Hdr, Ipv6Hdr, TcpHdr},
    maps::{
        BACKENDS, BACKENDS6, BACKEND_HOPS, BACKEND_HOPS6, FLOWS, FLOWS6, NAT_REVERSE, NAT_REVERSE6,
        NEW_FLOW, SNAT_SEARCH, SNAT_SEARCH6, SNAT_SOURCES, SNAT_SOURCES6,
    },
    parse::{self, Ip, Valid, L4},
    reset,
    state::Probe,
    verdict::Verdict,
};
use aya_ebpf::{bindings::bpf_fib_lookup, programs::XdpContext};
use core::mem::size_of;
use k3s_xdp_common::{
    reason,
    table::{FlowBucket, NatSlot, NatSlot6},
    Address, Backend, FlowKey, NextHop, SnatSources, VipPort, IPPROTO_TCP, V6,
};

/// Hop limit (TTL) of the packets the program answers with (RSTs, echo replies).
pub const HOP_LIMIT: u8 = 64;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

pub trait Family: Address<FlowSlot: crate::table::FlowPlace<Self>> {
    /// The IP header.
    type Hdr;
    /// The reverse-NAT slot (`Address::NatSlot`), as the program reads and writes it.
    type Nat: crate::table::NatPlace<Self>;
    /// The new-flow program's slot in `NEW_FLOW`.
    const NEW_FLOW_SLOT: u32;
    /// Bounds the L4 offset a new flow's second half finds its packet's headers at again:
    /// IPv6 extension headers can put it far from the IP header.
    const L4_MASK: u16;

    /// Reads an address from a map value once, word by word (a volatile read of a whole IPv6
    /// address would go through the stack).
    fn load(at: *const Self) -> Self;

    /// `Address::diff` against an address read once from a map value.
    fn diff_at(at: *const Self, other: &Self) -> u32;

    /// The header's source and destination.
    fn src(hdr: *const Self::Hdr) -> Self;
    fn dst(hdr: *const Self::Hdr) -> Self;

    /// Writes the addresses into the header (and, for IPv4, its checksum); returns the
    /// difference the TCP/UDP checksum's pseudo-header sees.
    fn set_addresses(hdr: *mut Self::Hdr, src: Self, dst: Self) -> Delta;

    /// `delta` with the change of an address from `old` to `new` added.
    fn delta(delta: Delta, old: Self, new: Self) -> Delta;

    /// The one's-complement sum of the address's 16-bit words, added to `sum`.
    fn sum(self, sum: u32) -> u32;

    fn flow_bucket(index: u32) -> Option<*mut FlowBucket<Self>>;
    fn nat_slot(index: u32) -> Option<*mut Self::Nat>;
    fn backend(id: u32) -> Option<Backend<Self>>;
    /// The address of backend slot `id`.
    #[inline(always)]
    fn backend_addr(id: u32) -> Option<Self> {
        Self::backend(id).map(|b| b.addr)
    }
    fn backend_hop(id: u32) -> Option<*mut NextHop<Self>>;
    fn snat_sources(service: u32) -> Option<&'static SnatSources<Self>>;
    /// This CPU's new-flow state (see `new_flow.rs`).
    fn probe() -> Option<*mut Probe<Self>>;

    /// Locates and checks the IP header of a packet to a VIP (`parse::validate` or
    /// `validate6`).
    fn parse(ctx: &XdpContext) -> Result<(Ip<Self>, Valid), u32>;

    /// Turns the header of a TCP packet around for a bare RST of `TCP_LEN` bytes back to its
    /// sender: addresses swapped, lengths, hop limit (IPv6: extension headers dropped, the RST
    /// follows the fixed header). Returns where the RST's TCP header goes.
    fn turn_around(hdr: *mut Self::Hdr, l3: usize, valid: &Valid) -> usize;

    // The flow path's bigger steps: inline by default (IPv4); IPv6 hands the refusal and a
    // new flow's recording and sending to `k3s_xdp_decided6`, a program of its own, because
    // its addresses do not fit one 512-byte stack frame with the rest of the path.

    /// `forward::translation_event`.
    #[inline(always)]
    fn translation_event(
        key: &FlowKey<Self>,
        backend: &Backend<Self>,
        snat_addr: Self,
        snat_port: u16,
        tcp_flags: u8,
        mask_sync: (u32, u32),
    ) -> bool {
        forward::translation_event(key, backend, snat_addr, snat_port, tcp_flags, mask_sync)
    }

    /// A flow pinned to a backend that is down: a RST (`reset::send`). IPv6 hands it over to
    /// `k3s_xdp_decided6`, a program of its own (see `ipv6.rs`).
    #[inline(always)]
    fn refused(
        ctx: &XdpContext,
        ip: &Ip<Self>,
        valid: &Valid,
        l4: &L4,
        _key: &FlowKey<Self>,
        service: &VipPort,
        backend: u32,
    ) -> Verdict {
        reset::send(ctx, ip, valid, l4, service.service, backend)
    }

    /// A new flow's second half, once it decided: `forward::decided`. IPv6: as above.
    #[inline(always)]
    fn decided(ctx: &XdpContext, state: *mut Probe<Self>) -> Verdict {
        forward::decided(ctx, state)
    }

    /// Fills a FIB lookup's family and addresses.
    fn fib_params(params: &mut bpf_fib_lookup, src: Self, dst: Self);
    /// The address a successful lookup leaves as the next hop (the gateway, or `dst` on-link).
    fn fib_gateway(params: &bpf_fib_lookup) -> Self;
}

/// A bare TCP header's length.
pub const TCP_LEN: usize = size_of::<TcpHdr>();

impl Family for u32 {
    type Hdr = Ipv4Hdr;
    type Nat = NatSlot<u32>;
    const NEW_FLOW_SLOT: u32 = 0;
    const L4_MASK: u16 = 0x7f;

    #[inline(always)]
    fn parse(ctx: &XdpContext) -> Result<(Ip<u32>, Valid), u32> {
        let ip = parse::ipv4(ctx)?;
        let valid = parse::validate(ctx, &ip)?;
        Ok((ip, valid))
    }

    #[inline(always)]
    fn turn_around(hdr: *mut Ipv4Hdr, _l3: usize, valid: &Valid) -> usize {
        // SAFETY: a header the parser checked in bounds. Swapping the addresses leaves the
        // checksum as it is; the length and TTL do not.
        unsafe {
            let (src, dst) = ((*hdr).dst, (*hdr).src);
            (*hdr).src = src;
            (*hdr).dst = dst;
            let tot_len = ((valid.ihl + TCP_LEN) as u16).to_be();
            let mut check = csum::replace2((*hdr).check, (*hdr).tot_len, tot_len);
            check = csum::replace2(
                check,
                u16::from_ne_bytes([(*hdr).ttl, IPPROTO_TCP]),
                u16::from_ne_bytes([HOP_LIMIT, IPPROTO_TCP]),
            );
            (*hdr).tot_len = tot_len;
            (*hdr).ttl = HOP_LIMIT;
            (*hdr).check = check;
        }
        valid.l4
    }

    #[inline(always)]
    fn load(at: *const u32) -> u32 {
        // SAFETY: callers pass a field of a map value valid for this run.
        unsafe { core::ptr::read_volatile(at) }
    }

    #[inline(always)]
    fn diff_at(at: *const u32, other: &u32) -> u32 {
        Self::load(at) ^ other
    }

    #[inline(always)]
    fn src(hdr: *const Ipv4Hdr) -> u32 {
        // SAFETY: callers pass a header the parser checked in bounds.
        unsafe { (*hdr).src }
    }

    #[inline(always)]
    fn dst(hdr: *const Ipv4Hdr) -> u32 {
        // SAFETY: as above.
        unsafe { (*hdr).dst }
    }

    #[inline(always)]
    fn set_addresses(hdr: *mut Ipv4Hdr, src: u32, dst: u32) -> Delta {
        // SAFETY: as above.
        unsafe {
            let delta = Delta::new().word32((*hdr).src, src).word32((*hdr).dst, dst);
            (*hdr).src = src;
            (*hdr).dst = dst;
            (*hdr).check = delta.apply((*hdr).check);
            delta
        }
    }

    #[inline(always)]
    fn delta(delta: Delta, old: u32, new: u32) -> Delta {
        delta.word32(old, new)
    }

    #[inline(always)]
    fn sum(self, sum: u32) -> u32 {
        crate::csum::add32(sum, self)
    }

    #[inline(always)]
    fn flow_bucket(index: u32) -> Option<*mut FlowBucket<u32>> {
        FLOWS.get_ptr_mut(index)
    }

    #[inline(always)]
    fn nat_slot(index: u32) -> Option<*mut NatSlot<u32>> {
        NAT_REVERSE.get_ptr_mut(index)
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<Backend<u32>> {
        BACKENDS.get(id).copied()
    }

    #[inline(always)]
    fn backend_hop(id: u32) -> Option<*mut NextHop<u32>> {
        BACKEND_HOPS.get_ptr_mut(id)
    }

    #[inline(always)]
    fn snat_sources(service: u32) -> Option<&'static SnatSources<u32>> {
        SNAT_SOURCES.get(service)
    }

    #[inline(always)]
    fn probe() -> Option<*mut Probe<u32>> {
        SNAT_SEARCH.get_ptr_mut(0)
    }

    #[inline(always)]
    fn fib_params(params: &mut bpf_fib_lookup, src: u32, dst: u32) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    }

    #[inline(always)]
    fn fib_gateway(params: &bpf_fib_lookup) -> u32 {
        // SAFETY: reading a union field the kernel wrote (an IPv4 lookup fills `ipv4_dst`).
        unsafe { params.__bindgen_anon_4.ipv4_dst }
    }
}

impl Family for V6 {
    type Hdr = Ipv6Hdr;
    type Nat = NatSlot6;
    const NEW_FLOW_SLOT: u32 = 1;
    const L4_MASK: u16 = 0x3fff;

    #[inline(always)]
    fn refused(
        ctx: &XdpContext,
        ip: &Ip<V6>,
        _valid: &Valid,
        l4: &L4,
        key: &FlowKey<V6>,
        service: &VipPort,
        backend: u32,
    ) -> Verdict {
        let Some(state) = V6::probe() else {
            return Verdict::drop(reason::DROP_INTERNAL);
        };
        // SAFETY: as above.
        unsafe {
            (*state).outcome = reason::DROP_NO_BACKEND;
            (*state).id = backend;
        }
        hand_over(ctx, state, ip, l4, key, service)
    }

    #[inline(always)]
    fn decided(ctx: &XdpContext, _state: *mut Probe<V6>) -> Verdict {
        // SAFETY: a tail call into `k3s_xdp_decided6`, put in its slot before attaching.
        unsafe { NEW_FLOW.tail_call(ctx, DECIDED6_SLOT) };
        Verdict::drop(reason::DROP_INTERNAL)
    }

    #[inline(always)]
    fn parse(ctx: &XdpContext) -> Result<(Ip<V6>, Valid), u32> {
        let ip = parse::ipv6(ctx)?;
        let valid = parse::validate6(ctx, &ip)?;
        Ok((ip, valid))
    }

    #[inline(always)]
    fn turn_around(hdr: *mut Ipv6Hdr, l3: usize, _valid: &Valid) -> usize {
        // SAFETY: a header the parser checked in bounds.
        unsafe {
            let (src, dst) = ((*hdr).dst, (*hdr).src);
            (*hdr).src = src;
            (*hdr).dst = dst;
            (*hdr).payload_len = (TCP_LEN as u16).to_be();
            (*hdr).next_header = IPPROTO_TCP;
            (*hdr).hop_limit = HOP_LIMIT;
        }
        l3 + size_of::<Ipv6Hdr>()
    }

    #[inline(always)]
    fn load(at: *const V6) -> V6 {
        let w = at as *const u64;
        // SAFETY: callers pass a field of a map value valid for this run: two words.
        unsafe {
            [
                core::ptr::read_volatile(w),
                core::ptr::read_volatile(w.add(1)),
            ]
        }
    }

    /// `other` is read again at each call too: held in registers across the unrolled ways
    /// of a bucket, its words would be spilled to the stack, eight bytes a word.
    #[inline(always)]
    fn diff_at(at: *const V6, other: &V6) -> u32 {
        let (w, o) = (at as *const u64, other.as_ptr());
        // SAFETY: as above; `other` is a reference, valid to read.
        let d = unsafe {
            use core::ptr::read_volatile as rv;
            (rv(w) ^ rv(o)) | (rv(w.add(1)) ^ rv(o.add(1)))
        };
        (d | (d >> 32)) as u32
    }

    #[inline(always)]
    fn src(hdr: *const Ipv6Hdr) -> V6 {
        // SAFETY: callers pass a header the parser checked in bounds.
        unsafe { (*hdr).src }
    }

    #[inline(always)]
    fn dst(hdr: *const Ipv6Hdr) -> V6 {
        // SAFETY: as above.
        unsafe { (*hdr).dst }
    }

    #[inline(always)]
    fn set_addresses(hdr: *mut Ipv6Hdr, src: V6, dst: V6) -> Delta {
        // SAFETY: as above. IPv6 has no header checksum.
        unsafe {
            let delta = Self::delta(Self::delta(Delta::new(), (*hdr).src, src), (*hdr).dst, dst);
            (*hdr).src = src;
            (*hdr).dst = dst;
            delta
        }
    }

    /// The eight 32-bit halves summed in 64 bits (no carry is lost: eight values under
    /// 2^32), then folded once: a third of the instructions of eight `Delta::word32`.
    #[inline(always)]
    fn delta(delta: Delta, old: V6, new: V6) -> Delta {
        const LOW: u64 = 0xffff_ffff;
        let (o0, o1) = (!old[0], !old[1]);
        let sum = (o0 & LOW)
            + (o0 >> 32)
            + (o1 & LOW)
            + (o1 >> 32)
            + (new[0] & LOW)
            + (new[0] >> 32)
            + (new[1] & LOW)
            + (new[1] >> 32);
        delta.folded((sum & LOW) + (sum >> 32))
    }

    #[inline(always)]
    fn sum(self, sum: u32) -> u32 {
        use crate::csum::add32;
        let [a, b] = self;
        add32(
            add32(add32(add32(sum, a as u32), (a >> 32) as u32), b as u32),
            (b >> 32) as u32,
        )
    }

    #[inline(always)]
    fn flow_bucket(index: u32) -> Option<*mut FlowBucket<V6>> {
        FLOWS6.get_ptr_mut(index)
    }

    #[inline(always)]
    fn nat_slot(index: u32) -> Option<*mut NatSlot6> {
        NAT_REVERSE6.get_ptr_mut(index)
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<Backend<V6>> {
        BACKENDS6.get(id).copied()
    }

    #[inline(always)]
    fn backend_hop(id: u32) -> Option<*mut NextHop<V6>> {
        BACKEND_HOPS6.get_ptr_mut(id)
    }

    #[inline(always)]
    fn snat_sources(service: u32) -> Option<&'static SnatSources<V6>> {
        SNAT_SOURCES6.get(service)
    }

    #[inline(always)]
    fn probe() -> Option<*mut Probe<V6>> {
        SNAT_SEARCH6.get_ptr_mut(0)
    }

    #[inline(always)]
    fn fib_params(params: &mut bpf_fib_lookup, src: V6, dst: V6) {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    }

    #[inline(always)]
    fn fib_gateway(params: &bpf_fib_lookup) -> V6 {
        // SAFETY: reading a union field the kernel wrote (an IPv6 lookup fills `ipv6_dst`).
        let w = unsafe { params.__bindgen_anon_4.ipv6_dst };
        [
            u64::from(w[0]) | (u64::from(w[1]) << 32),
            u64::from(w[2]) | (u64::from(w[3]) << 32),
        ]
    }
}

/// The four 32-bit words of an IPv6 address, as the FIB lookup takes them.
#[inline(always)]
fn words([a, b]: V6) -> [u32; 4] {
    [a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32]
}

/// The `NEW_FLOW` slot of `k3s_xdp_decided6`.
pub const DECIDED6_SLOT: u32 = 3;

/// Hands an IPv6 packet whose flow is decided (its answer in `state`) over to
/// `k3s_xdp_decided6`: the question's fields, then the tail call.
#[inline(always)]
fn hand_over(
    ctx: &XdpContext,
    state: *mut Probe<V6>,
    ip: &Ip<V6>,
    l4: &L4,
    key: &FlowKey<V6>,
    service: &VipPort,
) -> Verdict {
    // SAFETY: this CPU's state, valid for this run; then a tail call into a program the
    // controller puts in its slot before attaching.
    unsafe {
        (*state).key = *key;
        (*state).headers = crate::parse::Offsets::of(ip, l4);
        (*state).service = *service;
        NEW_FLOW.tail_call(ctx, DECIDED6_SLOT);
    }
    Verdict::drop(reason::DROP_INTERNAL)
}
