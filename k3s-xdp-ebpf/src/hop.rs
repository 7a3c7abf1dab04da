//! Next hops: where a rewritten frame goes, from `bpf_fib_lookup`. The hop toward a backend
//! depends only on the backend, so it is resolved once and cached per backend slot in
//! `BACKEND_HOPS`; the hop toward a client is cached in its `NAT_REVERSE` entry. A cached hop
//! is used while its `generation` matches `GLOBALS.fib_generation`, which the controller bumps
//! when routes or neighbours change.

use crate::maps::BACKEND_HOPS;
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_md, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use core::{ffi::c_void, mem::size_of};
use k3s_xdp_common::{reason, Backend, NextHop};

const AF_INET: u8 = 2;

/// Whether `hop` was resolved for `dst` under the current generation.
#[inline(always)]
pub fn is_fresh(hop: &NextHop, dst: u32, generation: u32) -> bool {
    hop.ifindex != 0 && hop.dst == dst && hop.generation == generation
}

/// Resolves the next hop toward `dst` (network order) for a packet from `src`. With
/// `on_link`, a route through a gateway is refused: dsr needs the backend on the same link,
/// or the router would send the VIP-addressed frame straight back.
#[inline(always)]
pub fn resolve(
    ctx: &XdpContext,
    src: u32,
    dst: u32,
    on_link: bool,
    generation: u32,
) -> Result<NextHop, u32> {
    let mut hop = NextHop {
        dst,
        generation,
        ..NextHop::default()
    };
    let addrs = (u64::from(src) << 32) | u64::from(dst);
    match lookup(ctx.ctx, addrs, on_link as u64, &mut hop) {
        0 => Ok(hop),
        why => Err(why),
    }
}

/// `resolve`'s FIB lookup, a BPF subprogram of its own: its 64-byte parameter block then lives
/// in its own stack frame, taken only while it runs, instead of in the caller's frame for the
/// whole program (the new-flow program's SNAT search needs that room). Fills `hop`'s
/// interface and MAC addresses; returns 0 or the drop reason.
#[inline(never)]
fn lookup(ctx: *mut xdp_md, addrs: u64, on_link: u64, hop: *mut NextHop) -> u32 {
    let (src, dst) = ((addrs >> 32) as u32, addrs as u32);
    // SAFETY: `bpf_fib_lookup` is plain data, valid all zero.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    // SAFETY: the program's context, valid for this run.
    params.ifindex = unsafe { (*ctx).ingress_ifindex };
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: the context of this run and a parameter block on this frame, of its true size.
    let rc = unsafe {
        fib_lookup(
            ctx as *mut c_void,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return reason::DROP_NO_NEIGHBOUR;
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return reason::DROP_NO_ROUTE;
    }
    // On success the kernel leaves the gateway (or `dst` itself when on-link) in ipv4_dst.
    // SAFETY: reading a union field the kernel wrote (an IPv4 lookup fills `ipv4_dst`).
    if on_link != 0 && unsafe { params.__bindgen_anon_4.ipv4_dst } != dst {
        return reason::DROP_NO_ROUTE;
    }
    // SAFETY: the caller's `NextHop`, on its stack.
    unsafe {
        (*hop).ifindex = params.ifindex;
        (*hop).smac = params.smac;
        (*hop).dmac = params.dmac;
    }
    0
}

/// The next hop toward backend slot `id`, from the cache (if resolved under `generation`) or
/// resolved and cached.
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    id: u32,
    backend: &Backend,
    src: u32,
    on_link: bool,
    generation: u32,
) -> Result<NextHop, u32> {
    let slot = BACKEND_HOPS.get_ptr_mut(id).ok_or(reason::DROP_NO_ROUTE)?;
    // SAFETY: array slots are preallocated; a concurrent writer can only store another hop
    // resolved for the same slot, and every field is re-validated below.
    let cached = unsafe { *slot };
    if is_fresh(&cached, backend.addr, generation) {
        return Ok(cached);
    }
    let hop = resolve(ctx, src, backend.addr, on_link, generation)?;
    // SAFETY: as above; a whole hop resolved for this slot's address.
    unsafe { *slot = hop };
    Ok(hop)
}
