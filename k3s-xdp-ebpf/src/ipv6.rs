//! The IPv6 path: `k3s_xdp6`, tail-called by `k3s_xdp` for IPv6 frames, runs the same steps
//! as the IPv4 path over the IPv6 maps (see `family.rs`), and `k3s_xdp_new_flow6` is its
//! new-flow half. Behind the `ipv6` feature while its stack frames do not fit the verifier's
//! 512 bytes (issue 19: measured per function with `-bpf-stack-size`, the IPv6 instances of
//! the flow lookup, the SNAT search and the ICMPv6 path each take 300-420 bytes).

use crate::{
    choose, counters,
    family::{pack, unpack, Family},
    forward, icmp6, maps, new_flow_of,
    parse::{self, Ip, Valid, L4},
    verdict::Verdict,
};
use aya_ebpf::{bindings::xdp_md, macros::xdp, programs::XdpContext};
use k3s_xdp_common::{
    reason, Globals, VipInfo, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, V6, VIP_SNAT_ONLY,
};

/// The `NEW_FLOW` slot of `k3s_xdp6` (slots 0 and 1: the new-flow halves of each family).
pub const SLOT: u32 = 2;

/// The same for IPv6 flows (`NEW_FLOW` slot 1).
#[xdp]
pub fn k3s_xdp_new_flow6(ctx: XdpContext) -> u32 {
    new_flow_of::<V6>(&ctx)
}

/// The IPv6 path (tail-called by `k3s_xdp` for IPv6 frames): the same steps over the IPv6
/// maps. Never attached.
#[xdp]
pub fn k3s_xdp6(ctx: XdpContext) -> u32 {
    let verdict = serve6(&ctx);
    counters::count(verdict.reason);
    verdict.action
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
    let globals = maps::globals();
    if !crate::for_this_host(&ip, &globals) {
        return Verdict::pass(reason::PASS_OTHER_HOST);
    }
    if vip.flags & VIP_SNAT_ONLY != 0 {
        // As `snat_address`, with the reply in its subprogram.
        let Ok(valid) = parse::validate6(ctx, &ip) else {
            return Verdict::pass(reason::PASS_SNAT_ADDRESS);
        };
        if valid.protocol != IPPROTO_TCP && valid.protocol != IPPROTO_UDP {
            return Verdict::pass(reason::PASS_SNAT_ADDRESS);
        }
        return match parse::transport(ctx, &valid, valid.protocol) {
            Ok(l4) => unpack(reply6(ctx.ctx, &ip, &l4, &globals, 1)),
            Err(_) => Verdict::pass(reason::PASS_SNAT_ADDRESS),
        };
    }
    let valid = match parse::validate6(ctx, &ip) {
        Ok(valid) => valid,
        Err(why) => return Verdict::drop(why),
    };
    match valid.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            let l4 = match parse::transport(ctx, &valid, valid.protocol) {
                Ok(l4) => l4,
                Err(why) => return Verdict::drop(why),
            };
            match choose::service(vip, l4.dport, valid.protocol) {
                Some(service) => forward::to_backend(ctx, &ip, &valid, l4, vip, &service, &globals),
                None => unpack(reply6(ctx.ctx, &ip, &l4, &globals, 0)),
            }
        }
        IPPROTO_ICMPV6 => unpack(icmp6(ctx.ctx, &ip, &valid, vip, &globals)),
        _ => Verdict::pass(reason::PASS_VIP_OTHER),
    }
}

// The IPv6 reply and ICMPv6 paths are subprograms of their own (see `Family::send`).

#[inline(never)]
fn reply6(ctx: *mut xdp_md, ip: &Ip<V6>, l4: &L4, globals: &Globals, pool: u64) -> u64 {
    let ctx = XdpContext::new(ctx);
    pack(forward::reply(
        &ctx,
        ip,
        *l4,
        l4.protocol,
        globals,
        pool != 0,
    ))
}

#[inline(never)]
fn icmp6(ctx: *mut xdp_md, ip: &Ip<V6>, valid: &Valid, vip: &VipInfo, globals: &Globals) -> u64 {
    let ctx = XdpContext::new(ctx);
    pack(icmp6::handle(&ctx, ip, valid, vip, globals))
}
