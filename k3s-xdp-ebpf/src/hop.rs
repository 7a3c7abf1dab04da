//! Next hops: where a rewritten frame goes, from `bpf_fib_lookup`. The hop toward a backend
//! depends only on the backend, so it is resolved once and cached per backend slot in
//! `BACKEND_HOPS`; the hop toward a client is cached in its `NAT_REVERSE` entry (IPv6: at the
//! same index of `NAT_HOPS6`, see `NatSlot6`). A cached hop
//! is used while its `generation` matches `GLOBALS.fib_generation`, which the controller bumps
//! when routes or neighbours change.

use crate::{family::Family, maps::FIB_PARAMS};
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_md, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use core::{ffi::c_void, mem::size_of};
use k3s_xdp_common::{reason, Backend, NextHop};

/// Whether `hop` was resolved for `dst` under the current generation.
#[inline(always)]
pub fn is_fresh<F: Family>(hop: &NextHop<F>, dst: F, generation: u32) -> bool {
    hop.ifindex != 0 && hop.dst.diff(&dst) == 0 && hop.generation == generation
}

/// Resolves the next hop toward `dst` (network order) for a packet from `src`. With
/// `on_link`, a route through a gateway is refused: dsr needs the backend on the same link,
/// or the router would send the VIP-addressed frame straight back.
#[inline(always)]
pub fn resolve<F: Family>(
    ctx: &XdpContext,
    src: F,
    dst: F,
    on_link: bool,
    generation: u32,
) -> Result<NextHop<F>, u32> {
    let mut hop = NextHop {
        dst,
        generation,
        ..NextHop::default()
    };
    match lookup(ctx.ctx, &src, on_link as u64, &mut hop) {
        0 => Ok(hop),
        why => Err(why),
    }
}

/// Writes "no hop" (all zero, `ifindex` 0: not resolved) at `at`, word by word: a
/// `NextHop::default()` compiles to a call to `memset` (the MAC addresses are byte arrays),
/// which a new flow would pay for its translation's hop back to the client.
#[inline(always)]
pub fn none<F: Family>(at: *mut NextHop<F>) {
    const {
        assert!(
            size_of::<NextHop<u32>>().is_multiple_of(4)
                && size_of::<NextHop<k3s_xdp_common::V6>>().is_multiple_of(4)
        )
    };
    let words = at.cast::<u32>();
    for i in 0..size_of::<NextHop<F>>() / 4 {
        // SAFETY: within the hop (its size is a multiple of 4, its alignment at least 4).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// `resolve`'s FIB lookup, a BPF subprogram of its own, with its 64-byte parameter block in a
/// per-CPU map rather than on a stack: every frame on the way to it counts toward the
/// verifier's 512 bytes (the new-flow program's SNAT search and the IPv6 path need that room). Looks up the way from
/// `src` to `hop.dst`; fills `hop`'s interface and MAC addresses; returns 0 or the drop reason.
#[inline(never)]
fn lookup<F: Family>(ctx: *mut xdp_md, src: *const F, on_link: u64, hop: *mut NextHop<F>) -> u32 {
    // SAFETY: the caller's address and hop, on its stack.
    let (src, dst) = unsafe { (*src, (*hop).dst) };
    let Some(params) = FIB_PARAMS.get_ptr_mut(0) else {
        return reason::DROP_NO_ROUTE;
    };
    // SAFETY: this CPU's parameter block (XDP runs to completion on its CPU), plain data,
    // valid all zero.
    let params = unsafe {
        core::ptr::write_bytes(params, 0, 1);
        &mut *params
    };
    F::fib_params(params, src, dst);
    // SAFETY: the program's context, valid for this run.
    params.ifindex = unsafe { (*ctx).ingress_ifindex };
    // SAFETY: the context of this run and a parameter block of its true size.
    let rc = unsafe {
        fib_lookup(
            ctx as *mut c_void,
            params,
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
    // On success the kernel leaves the gateway (or `dst` itself when on-link) in the
    // destination.
    if on_link != 0 && F::fib_gateway(params).diff(&dst) != 0 {
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
pub fn to_backend<F: Family>(
    ctx: &XdpContext,
    id: u32,
    backend: &Backend<F>,
    src: F,
    on_link: bool,
    generation: u32,
) -> Result<NextHop<F>, u32> {
    let slot = F::backend_hop(id).ok_or(reason::DROP_NO_ROUTE)?;
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
