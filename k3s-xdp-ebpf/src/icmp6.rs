//! ICMPv6 addressed to a VIP: echo requests are answered here; "Packet Too Big" about a VIP
//! flow goes on to that flow's backend, translated in nat mode, so the backend's TCP lowers its
//! path MTU (IPv6 routers never fragment: without it a nat flow's large packets would vanish).
//! The rest, neighbour discovery included, is left to the kernel, which holds the VIP.

use crate::{
    counters,
    csum::{self, Delta},
    family::{Family, HOP_LIMIT},
    forward,
    headers::{
        IcmpHdr, Ipv6Hdr, UdpHdr, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG,
    },
    hop,
    icmp::{about_flow, Quoted},
    parse::{self, frame_len, ptr_at, Ip, Valid},
    verdict::Verdict,
};
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use k3s_xdp_common::{reason, Globals, VipInfo, IPPROTO_TCP, IPPROTO_UDP, V6};

#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    ip: &Ip<V6>,
    valid: &Valid,
    vip: &VipInfo,
    globals: &Globals,
) -> Verdict {
    let icmp = match parse::icmp(ctx, valid) {
        Ok(icmp) => icmp,
        Err(why) => return Verdict::drop(why),
    };
    // SAFETY: `parse::icmp` checked the ICMPv6 header in bounds.
    let (icmp_type, code) = unsafe { ((*icmp).icmp_type, (*icmp).code) };
    if icmp_type == ICMPV6_ECHO_REQUEST && code == 0 {
        return echo_reply(ctx, ip, icmp);
    }
    if icmp_type == ICMPV6_PACKET_TOO_BIG && code == 0 {
        return too_big(ctx, ip, valid, icmp, vip, globals);
    }
    Verdict::pass(reason::PASS_VIP_OTHER)
}

/// Turns the echo request into its reply, in place, sent toward the sender's next hop from the
/// FIB. Swapping the addresses leaves the checksum's pseudo-header sum as it is; the type
/// changes it.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, ip: &Ip<V6>, icmp: *mut IcmpHdr) -> Verdict {
    // SAFETY: the IPv6 and ICMPv6 headers, checked in bounds by the parser.
    let hop = unsafe {
        let hdr = ip.hdr;
        let (src, dst) = ((*hdr).src, (*hdr).dst);
        (*hdr).src = dst;
        (*hdr).dst = src;
        (*hdr).hop_limit = HOP_LIMIT;
        let code = (*icmp).code;
        (*icmp).check = csum::replace2(
            (*icmp).check,
            u16::from_ne_bytes([ICMPV6_ECHO_REQUEST, code]),
            u16::from_ne_bytes([ICMPV6_ECHO_REPLY, code]),
        );
        (*icmp).icmp_type = ICMPV6_ECHO_REPLY;
        hop::resolve(ctx, dst, src, false, 0)
    };
    forward::toward(ctx, ip, hop, reason::TX_ICMP_ECHO)
}

/// "Packet Too Big" quoting a packet we sent to a client (VIP:port → client:port, a fixed
/// IPv6 header: the program never adds extension headers).
#[inline(always)]
fn too_big(
    ctx: &XdpContext,
    ip: &Ip<V6>,
    valid: &Valid,
    icmp: *mut IcmpHdr,
    vip: &VipInfo,
    globals: &Globals,
) -> Verdict {
    let inner_l3 = (valid.l4 & 0x3fff) + size_of::<IcmpHdr>();
    let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, inner_l3) else {
        return Verdict::drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: `ptr_at` checked the quoted IPv6 header in bounds.
    let (vtcfl, protocol, inner_src, inner_dst) = unsafe {
        (
            (*inner).vtcfl,
            (*inner).next_header,
            (*inner).src,
            (*inner).dst,
        )
    };
    let outer_dst = V6::dst(ip.hdr);
    if u32::from_be(vtcfl) >> 28 != 6
        || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
        || inner_src != outer_dst
    {
        return Verdict::pass(reason::PASS_VIP_OTHER);
    }
    // The first 8 bytes of the quoted transport header: both ports.
    let Some(ports) = ptr_at::<UdpHdr>(ctx, inner_l3 + size_of::<Ipv6Hdr>()) else {
        return Verdict::drop(reason::DROP_TRUNCATED);
    };
    // SAFETY: `ptr_at` checked the quoted ports in bounds.
    let (inner_sport, inner_dport) = unsafe { ((*ports).sport, (*ports).dport) };
    let Quoted {
        service,
        flow,
        backend,
        snat_addr,
        dsr,
        hop,
    } = match about_flow(
        ctx,
        vip,
        globals,
        (inner_src, inner_dst),
        (inner_sport, inner_dport),
        protocol,
    ) {
        Ok(quoted) => quoted,
        Err(verdict) => return verdict,
    };
    if !dsr {
        // The backend sent backend:port → snat_addr:snat_port; quote it as it sent it, and
        // deliver the error to the backend itself. The ICMPv6 checksum covers the outer
        // destination (pseudo-header) and the quoted bytes.
        // SAFETY: the outer and quoted headers and the ports, each checked in bounds above.
        unsafe {
            let mut delta = V6::delta(Delta::new(), outer_dst, backend.addr);
            (*ip.hdr).dst = backend.addr;
            delta = V6::delta(delta, inner_src, backend.addr);
            delta = V6::delta(delta, inner_dst, snat_addr);
            (*inner).src = backend.addr;
            (*inner).dst = snat_addr;
            (*ports).sport = backend.port;
            (*ports).dport = flow.snat_port;
            (*icmp).check = delta
                .word16(inner_sport, backend.port)
                .word16(inner_dport, flow.snat_port)
                .apply((*icmp).check);
        }
    }
    counters::traffic(service.service, flow.backend, frame_len(ctx), false);
    forward::onward(ctx, ip, &hop, reason::TX_ICMP_TO_BACKEND)
}
