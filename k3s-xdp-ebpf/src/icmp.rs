//! ICMP addressed to a VIP: echo requests are answered here; "fragmentation needed" about a
//! VIP flow goes on to that flow's backend, translated in nat mode, so the backend's TCP lowers
//! its path MTU. Other ICMP is left to the kernel, which holds the VIP.

use crate::{
    choose, counters,
    csum::{self, Delta},
    forward,
    headers::{
        IcmpHdr, Ipv4Hdr, UdpHdr, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_FRAG_NEEDED,
    },
    hop,
    maps::{self, BACKENDS},
    parse::{self, frame_len, ptr_at, Ip, Valid},
    table::{self, Place},
    verdict::Verdict,
};
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use k3s_xdp_common::{
    reason, FlowKey, Globals, VipInfo, BACKEND_FREE, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    SERVICE_DSR,
};

#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    ip: &Ip,
    valid: &Valid,
    vip: &VipInfo,
    globals: &Globals,
) -> Verdict {
    let icmp = match parse::icmp(ctx, valid) {
        Ok(icmp) => icmp,
        Err(why) => return Verdict::drop(why),
    };
    // SAFETY: `parse::icmp` checked the ICMP header in bounds.
    let (icmp_type, code) = unsafe { ((*icmp).icmp_type, (*icmp).code) };
    if icmp_type == ICMP_ECHO_REQUEST && code == 0 {
        return echo_reply(ctx, ip, icmp);
    }
    if icmp_type == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED {
        return frag_needed(ctx, ip, valid, icmp, vip, globals);
    }
    Verdict::pass(reason::PASS_VIP_OTHER)
}

/// Turns the echo request into its reply, in place, sent toward the sender's next hop from the
/// FIB.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, ip: &Ip, icmp: *mut IcmpHdr) -> Verdict {
    // SAFETY: the IPv4 and ICMP headers, checked in bounds by the parser.
    let hop = unsafe {
        let hdr = ip.hdr;
        // Swapping the addresses leaves the IPv4 checksum as it is; the TTL does not.
        let (src, dst) = ((*hdr).src, (*hdr).dst);
        (*hdr).src = dst;
        (*hdr).dst = src;
        (*hdr).check = csum::replace2(
            (*hdr).check,
            u16::from_ne_bytes([(*hdr).ttl, IPPROTO_ICMP]),
            u16::from_ne_bytes([64, IPPROTO_ICMP]),
        );
        (*hdr).ttl = 64;
        let code = (*icmp).code;
        (*icmp).check = csum::replace2(
            (*icmp).check,
            u16::from_ne_bytes([ICMP_ECHO_REQUEST, code]),
            u16::from_ne_bytes([ICMP_ECHO_REPLY, code]),
        );
        (*icmp).icmp_type = ICMP_ECHO_REPLY;
        hop::resolve(ctx, dst, src, false, 0)
    };
    forward::toward(ctx, ip, hop, reason::TX_ICMP_ECHO)
}

/// "Fragmentation needed" quoting a packet we sent to a client (VIP:port → client:port).
#[inline(always)]
fn frag_needed(
    ctx: &XdpContext,
    ip: &Ip,
    valid: &Valid,
    icmp: *mut IcmpHdr,
    vip: &VipInfo,
    globals: &Globals,
) -> Verdict {
    let generation = globals.fib_generation;
    let inner_l3 = valid.l4 + size_of::<IcmpHdr>();
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, inner_l3) else {
        return Verdict::drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: `ptr_at` checked the quoted IPv4 header in bounds.
    let (vihl, protocol, inner_src, inner_dst) =
        unsafe { ((*inner).vihl, (*inner).protocol, (*inner).src, (*inner).dst) };
    // SAFETY: the outer IPv4 header, checked in bounds by the parser.
    let outer_dst = unsafe { (*ip.hdr).dst };
    if vihl >> 4 != 4
        || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
        || inner_src != outer_dst
    {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    }
    let inner_l4 = inner_l3 + ((vihl & 0x0f) as usize) * 4;
    // The first 8 bytes of the quoted transport header: both ports (and UDP's length/checksum).
    let Some(ports) = ptr_at::<UdpHdr>(ctx, inner_l4) else {
        return Verdict::drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: `ptr_at` checked the quoted ports in bounds.
    let (inner_sport, inner_dport) = unsafe { ((*ports).sport, (*ports).dport) };
    let Some(service) = choose::service(vip, inner_sport, protocol) else {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    };
    // The client → VIP flow the quoted packet answered.
    let key = FlowKey {
        src: inner_dst,
        dst: inner_src,
        sport: inner_dport,
        dport: inner_sport,
        protocol,
        _pad: [0; 3],
    };
    let Some(flow) = table::find_flow(&key, Place::of(&key, globals.flow_mask), globals.clock)
    else {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    };
    let Some(backend) = BACKENDS.get(flow.backend) else {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    };
    let backend = *backend;
    if backend.state == BACKEND_FREE || backend.service != service.service {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    }
    let dsr = service.flags & SERVICE_DSR != 0;
    let Some(snat_addr) = maps::snat_address(service.service, flow.snat_source, inner_src) else {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    };
    let hop = match hop::to_backend(ctx, flow.backend, &backend, outer_dst, dsr, generation) {
        // As for the flow's packets (`forward::send`): only a nat packet can go to the kernel.
        Err(why) if dsr || why != reason::DROP_NO_NEIGHBOUR => return Verdict::drop(why),
        hop => hop,
    };
    if !dsr {
        // The backend sent backend:port → snat_addr:snat_port; quote it as it sent it, and
        // deliver the error to the backend itself.
        // SAFETY: the outer and quoted headers and the ports, each checked in bounds above.
        unsafe {
            let hdr = ip.hdr;
            (*hdr).check = csum::replace4((*hdr).check, outer_dst, backend.addr);
            (*hdr).dst = backend.addr;

            let addresses = Delta::new()
                .word32(inner_src, backend.addr)
                .word32(inner_dst, snat_addr);
            let old_inner_check = (*inner).check;
            let new_inner_check = addresses.apply(old_inner_check);
            (*inner).src = backend.addr;
            (*inner).dst = snat_addr;
            (*inner).check = new_inner_check;
            (*ports).sport = backend.port;
            (*ports).dport = flow.snat_port;
            // The ICMP checksum covers the quoted bytes.
            (*icmp).check = addresses
                .word16(old_inner_check, new_inner_check)
                .word16(inner_sport, backend.port)
                .word16(inner_dport, flow.snat_port)
                .apply((*icmp).check);
        }
    }
    counters::traffic(service.service, flow.backend, frame_len(ctx), false);
    forward::toward(ctx, ip, hop, reason::TX_ICMP_TO_BACKEND)
}
