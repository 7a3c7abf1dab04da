//! The k3s-xdp data plane. `k3s_xdp` reads like the path of a packet:
//! parse → addressed to a VIP? → checked → service port? forward to the backend (new flows pick
//! one with Maglev) : a backend's reply (nat) → translate back to the client; ICMP is answered or
//! sent on; everything else passes untouched to the kernel. Each packet is counted under exactly
//! one reason (`k3s_xdp_common::reason`).
//!
//! `k3s_xdp_pass` is a trivial XDP_PASS, attached to veth peers so that XDP_TX frames are
//! delivered (a veth delivers an XDP_TX frame only to a peer that runs an XDP program);
//! `k3s_xdp_floor` (MAC swap + XDP_TX) is the floor the benchmarks compare with.
//!
//! Every entry point is `#[inline(always)]`: `#[xdp]` wraps the function in the program's
//! symbol, and LLVM is otherwise free to leave the function a call of its own (a bpf-to-bpf
//! call on every packet: +25 ns in `bench micro` when the benchmark entry point grew past its
//! inlining threshold).
#![no_std]
#![no_main]

#[cfg(feature = "bench")]
mod bench;
mod choose;
mod counters;
mod csum;
mod family;
mod forward;
mod guard;
mod headers;
mod hop;
mod icmp;
mod icmp6;
mod ipv6;
mod maps;
mod new_flow;
mod parse;
mod reset;
mod rewrite;
mod state;
mod sync;
mod table;
mod verdict;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use family::Family;
use k3s_xdp_common::{
    reason, Globals, VipInfo, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, V6, VIP_SNAT_ONLY,
};
use parse::{Frame, Ip, Valid, ETH_P_IP};
use verdict::Verdict;

#[xdp]
#[inline(always)]
pub fn k3s_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// The second half of a new flow's path (see `new_flow.rs`): tail-called by `k3s_xdp`, it
/// chooses and records the flow's backend, then forwards the packet. Never attached.
#[xdp]
#[inline(always)]
pub fn k3s_xdp_new_flow(ctx: XdpContext) -> u32 {
    new_flow_of::<u32>(&ctx)
}

#[inline(always)]
pub(crate) fn new_flow_of<F: Family>(ctx: &XdpContext) -> u32 {
    let verdict = match new_flow::state::<F>() {
        Some(state) => {
            new_flow::decide(state);
            F::decided(ctx, state)
        }
        None => Verdict::drop(reason::DROP_INTERNAL),
    };
    counters::count(verdict.reason);
    verdict.action
}

#[inline(always)]
fn run(ctx: &XdpContext) -> u32 {
    let verdict = process(ctx);
    counters::count(verdict.reason);
    verdict.action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Verdict {
    let frame = match parse::frame(ctx) {
        Ok(frame) => frame,
        Err(why) => return Verdict::pass(why),
    };
    if frame.ether_type == ETH_P_IP {
        return process4(ctx, &frame);
    }
    if frame.ether_type == parse::ETH_P_IPV6 {
        // Most IPv6 traffic is the host's own (neighbour discovery among it): it passes here,
        // without the tail call.
        let ip = match parse::ip::<V6>(ctx, &frame) {
            Ok(ip) => ip,
            Err(why) => return Verdict::pass(why),
        };
        if maps::vip6(&V6::dst(ip.hdr)).is_none() {
            return Verdict::pass(reason::PASS_NOT_VIP);
        }
        // SAFETY: a tail call into `k3s_xdp6`, which the controller puts in its slot before
        // attaching; on success it does not return (it counts the packet). A program of its
        // own: the IPv4 path keeps its code, its stack frame and its verifier budget.
        unsafe { maps::NEW_FLOW.tail_call(ctx, ipv6::SLOT) };
    }
    Verdict::pass(reason::PASS_NOT_IP)
}

#[inline(always)]
fn process4(ctx: &XdpContext, frame: &Frame) -> Verdict {
    let ip = match parse::ip::<u32>(ctx, frame) {
        Ok(ip) => ip,
        Err(why) => return Verdict::pass(why),
    };
    let Some(vip) = maps::vip(u32::dst(ip.hdr)) else {
        return Verdict::pass(reason::PASS_NOT_VIP);
    };
    let globals = maps::globals();
    if !for_this_host(&ip, &globals) {
        return Verdict::pass(reason::PASS_OTHER_HOST);
    }
    if vip.flags & VIP_SNAT_ONLY != 0 {
        return snat_address(ctx, &ip, parse::validate(ctx, &ip), &globals);
    }
    let valid = match parse::validate(ctx, &ip) {
        Ok(valid) => valid,
        Err(why) => return Verdict::drop(why),
    };
    match valid.protocol {
        IPPROTO_TCP | IPPROTO_UDP => serve(ctx, &ip, &valid, vip, &globals),
        IPPROTO_ICMP => icmp::handle(ctx, &ip, &valid, vip, &globals),
        _ => Verdict::pass(reason::PASS_VIP_OTHER),
    }
}

/// A TCP or UDP packet to a VIP: to a service's backend, or (nat) a backend's reply.
#[inline(always)]
pub(crate) fn serve<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    valid: &Valid,
    vip: &VipInfo,
    globals: &Globals,
) -> Verdict {
    let protocol = valid.protocol;
    let l4 = match parse::transport(ctx, valid, protocol) {
        Ok(l4) => l4,
        Err(why) => return Verdict::drop(why),
    };
    match choose::service(vip, l4.dport, protocol) {
        Some(service) => forward::to_backend(ctx, ip, valid, l4, vip, &service, globals),
        None => forward::reply(ctx, ip, l4, protocol, globals, false),
    }
}

/// A packet to an address of a SNAT pool that is no VIP: a backend's reply to a translation
/// goes back to its client; everything else is the host's (this may be the node's own
/// address), passed untouched, malformed or fragmented packets included.
#[inline(always)]
fn snat_address<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    valid: Result<Valid, u32>,
    globals: &Globals,
) -> Verdict {
    let Ok(valid) = valid else {
        return Verdict::pass(reason::PASS_SNAT_ADDRESS);
    };
    let protocol = valid.protocol;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Verdict::pass(reason::PASS_SNAT_ADDRESS);
    }
    match parse::transport(ctx, &valid, protocol) {
        Ok(l4) => forward::reply(ctx, ip, l4, protocol, globals, true),
        Err(_) => Verdict::pass(reason::PASS_SNAT_ADDRESS),
    }
}

/// Whether the frame was sent to this interface's MAC address (when the controller set it).
#[inline(always)]
pub(crate) fn for_this_host<F: Family>(ip: &Ip<F>, g: &Globals) -> bool {
    // SAFETY: the parser checked the Ethernet header in bounds.
    let dst = unsafe { (*ip.eth).dst_addr };
    g.mac == [0; 6] || dst == g.mac
}

#[xdp]
#[inline(always)]
pub fn k3s_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The benchmarks' floor: swap the Ethernet addresses and send the frame back (the least any
/// XDP forwarder does). Never attached by k3s-xdp.
#[xdp]
#[inline(always)]
pub fn k3s_xdp_floor(ctx: XdpContext) -> u32 {
    floor(&ctx)
}

#[inline(always)]
fn floor(ctx: &XdpContext) -> u32 {
    match parse::ptr_at::<network_types::eth::EthHdr>(ctx, 0) {
        Some(eth) => {
            // SAFETY: `ptr_at` checked the Ethernet header in bounds.
            unsafe { core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr) };
            xdp_action::XDP_TX
        }
        None => xdp_action::XDP_DROP,
    }
}

// On the host (`cargo clippy --workspace` lints this crate too) std provides the handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Benchmarks only: restores the packet from `BENCH`, then runs the real path.
#[cfg(feature = "bench")]
#[xdp]
#[inline(always)]
pub fn k3s_xdp_bench(ctx: XdpContext) -> u32 {
    if !bench::restore(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    run(&ctx)
}

/// Benchmarks only: the same restore, then the floor's MAC swap.
#[cfg(feature = "bench")]
#[xdp]
#[inline(always)]
pub fn k3s_xdp_bench_floor(ctx: XdpContext) -> u32 {
    if !bench::restore(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    floor(&ctx)
}
