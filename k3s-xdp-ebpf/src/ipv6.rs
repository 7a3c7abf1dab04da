//! The IPv6 path. `k3s_xdp` tail-calls `k3s_xdp6` for IPv6 frames; it runs the IPv4 path's
//! steps over the IPv6 maps (see `family.rs`), in programs of their own chained by tail
//! calls, because an IPv6 packet's state does not fit one 512-byte stack frame with the
//! rest of the path (16-byte addresses spill; measured per function with `-bpf-stack-size`):
//! - `k3s_xdp6`: parse, VIP, checks, the flow lookup; an established flow is sent to its
//!   backend and a backend's reply to its client here (the packets that matter: no second
//!   tail call, and the settings read in place, not copied, to fit the frame); a refused flow
//!   goes on to `k3s_xdp_decided6`, a new one to `k3s_xdp_new_flow6` (which chooses its
//!   backend and SNAT port, then goes on to `k3s_xdp_decided6`, which records the flow and
//!   sends the packet), ICMPv6 to `k3s_xdp_icmp6`;
//! - the state between them is this CPU's `SNAT_SEARCH6` entry (`state::Probe`), as between
//!   the halves of the IPv4 new-flow path.

use crate::{
    choose, counters,
    family::{Family, DECIDED6_SLOT},
    forward, icmp6,
    maps::{self, NEW_FLOW},
    new_flow_of, parse,
    verdict::Verdict,
};
use aya_ebpf::{macros::xdp, programs::XdpContext};
use k3s_xdp_common::{reason, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, V6, VIP_SNAT_ONLY};

/// The `NEW_FLOW` slot of `k3s_xdp6` (slots 0 and 1: the new-flow halves of each family).
pub const SLOT: u32 = 2;
const ICMP6_SLOT: u32 = 4;

#[xdp]
#[inline(always)]
pub fn k3s_xdp6(ctx: XdpContext) -> u32 {
    finish(serve6(&ctx))
}

#[xdp]
#[inline(always)]
pub fn k3s_xdp_new_flow6(ctx: XdpContext) -> u32 {
    new_flow_of::<V6>(&ctx)
}

/// An IPv6 flow whose backend is known (`Probe::outcome`): sent there, or refused.
#[xdp]
#[inline(always)]
pub fn k3s_xdp_decided6(ctx: XdpContext) -> u32 {
    let verdict = match V6::probe() {
        Some(state) => forward::decided(&ctx, state),
        None => Verdict::drop(reason::DROP_INTERNAL),
    };
    finish(verdict)
}

/// ICMPv6 to a VIP, parsed again (echo requests and Packet Too Big: rare).
#[xdp]
#[inline(always)]
pub fn k3s_xdp_icmp6(ctx: XdpContext) -> u32 {
    finish(icmp6(&ctx))
}

#[inline(always)]
fn finish(verdict: Verdict) -> u32 {
    counters::count(verdict.reason);
    verdict.action
}

/// Tail-calls the program in `slot`; only a missing program returns.
#[inline(always)]
fn go_on(ctx: &XdpContext, slot: u32) -> Verdict {
    // SAFETY: a tail call into a program the controller puts in its slot before attaching.
    unsafe { NEW_FLOW.tail_call(ctx, slot) };
    Verdict::drop(reason::DROP_INTERNAL)
}

#[inline(always)]
fn serve6(ctx: &XdpContext) -> Verdict {
    let ip = match parse::ipv6(ctx) {
        Ok(ip) => ip,
        Err(why) => return Verdict::pass(why),
    };
    let Some(vip) = maps::vip6(&V6::dst(ip.hdr)) else {
        return Verdict::pass(reason::PASS_NOT_VIP);
    };
    let Some(globals) = maps::globals_ref() else {
        return Verdict::drop(reason::DROP_INTERNAL);
    };
    if !crate::for_this_host(&ip, globals) {
        return Verdict::pass(reason::PASS_OTHER_HOST);
    }
    let pool = vip.flags & VIP_SNAT_ONLY != 0;
    let valid = match parse::validate6(ctx, &ip) {
        Ok(valid) => valid,
        // An address of a SNAT pool may be the host's own: what is not a reply is its.
        Err(_) if pool => return Verdict::pass(reason::PASS_SNAT_ADDRESS),
        Err(why) => return Verdict::drop(why),
    };
    let protocol = valid.protocol;
    if protocol == IPPROTO_ICMPV6 {
        if pool {
            return Verdict::pass(reason::PASS_SNAT_ADDRESS);
        }
        return go_on(ctx, ICMP6_SLOT);
    }
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    }
    let l4 = match parse::transport(ctx, &valid, protocol) {
        Ok(l4) => l4,
        Err(_) if pool => return Verdict::pass(reason::PASS_SNAT_ADDRESS),
        Err(why) => return Verdict::drop(why),
    };
    let service = if pool {
        None
    } else {
        choose::service(vip, l4.dport, protocol)
    };
    match service {
        Some(service) => forward::to_backend(ctx, &ip, &valid, l4, vip, &service, globals),
        None => forward::reply(ctx, &ip, l4, protocol, globals, pool),
    }
}

#[inline(always)]
fn icmp6(ctx: &XdpContext) -> Verdict {
    let Ok((ip, valid)) = V6::parse(ctx) else {
        return Verdict::drop(reason::DROP_INTERNAL);
    };
    let Some(vip) = maps::vip6(&V6::dst(ip.hdr)) else {
        return Verdict::drop(reason::DROP_INTERNAL);
    };
    icmp6::handle(ctx, &ip, &valid, vip, &maps::globals())
}

// `DECIDED6_SLOT` is 3.
const _: () = assert!(DECIDED6_SLOT == 3);
