//! The k3s-xdp data plane. One entry point, `k3s_xdp`, reads like the path of a packet:
//! parse → is it for a VIP → (forwarding comes with the data-plane issue) → count → verdict.
//! `k3s_xdp_pass` is a trivial XDP_PASS, attached to veth peers so that XDP_TX frames are
//! delivered (see TOOLCHAIN.md) and used as the floor in benchmarks.
#![no_std]
#![no_main]

mod counters;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use counters::count;
use k3s_xdp_common::reason;
use parse::NotIpv4;

#[xdp]
pub fn k3s_xdp(ctx: XdpContext) -> u32 {
    let l3 = match parse::ipv4(&ctx) {
        Ok(l3) => l3,
        Err(NotIpv4::Pass(why)) => {
            count(why);
            return xdp_action::XDP_PASS;
        }
        Err(NotIpv4::Drop(why)) => {
            count(why);
            return xdp_action::XDP_DROP;
        }
    };
    let dst = parse::dst_addr(l3.ip);
    // SAFETY: lookups return pointers into the map, valid for this program run.
    if unsafe { maps::VIPS.get(dst) }.is_none() {
        count(reason::PASS_NOT_VIP);
        return xdp_action::XDP_PASS;
    }
    count(reason::PASS_VIP_OTHER);
    xdp_action::XDP_PASS
}

#[xdp]
pub fn k3s_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
