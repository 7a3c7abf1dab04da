//! ICMP addressed to a VIP: echo requests are answered here; "fragmentation needed" about a
//! VIP flow goes on to that flow's backend, translated in nat mode, so the backend's TCP lowers
//! its path MTU. Other ICMP is left to the kernel, which holds the VIP.

use crate::{
    choose, counters,
    csum::{self, Delta},
    family::Family,
    forward,
    headers::{
        IcmpHdr, Ipv4Hdr, UdpHdr, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_FRAG_NEEDED,
    },
    hop, maps,
    parse::{self, frame_len, ptr_at, Ip, Valid},
    table::{self, Place},
    verdict::Verdict,
};
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use k3s_xdp_common::{
    reason, Backend, Flow, Globals, NextHop, VipInfo, VipPort, BACKEND_FREE, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, SERVICE_DSR,
};

#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    ip: &Ip<u32>,
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
fn echo_reply(ctx: &XdpContext, ip: &Ip<u32>, icmp: *mut IcmpHdr) -> Verdict {
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

/// What an ICMP error about a VIP flow (quoting a packet we sent to the client) is about: the
/// flow's service, its entry and backend, the address the backend sees, and the next hop
/// toward the backend.
pub struct Quoted<F: Family> {
    pub service: VipPort,
    pub flow: Flow,
    pub backend: Backend<F>,
    pub snat_addr: F,
    pub dsr: bool,
    /// `ifindex` 0: unresolved (nat: the kernel resolves it, see `forward::onward`).
    pub hop: NextHop<F>,
}

/// Finds the flow an ICMP error quotes: the quoted packet went `src:sport` (the VIP) →
/// `dst:dport` (the client). Not a VIP flow this node holds: the kernel's business.
#[inline(always)]
pub fn about_flow<F: Family>(
    ctx: &XdpContext,
    vip: &VipInfo,
    globals: &Globals,
    (src, dst): (F, F),
    (sport, dport): (u16, u16),
    protocol: u8,
) -> Result<Quoted<F>, Verdict> {
    let other = Verdict::pass(reason::PASS_VIP_OTHER);
    let Some(service) = choose::service(vip, sport, protocol) else {
        return Err(other);
    };
    // The client → VIP flow the quoted packet answered.
    let key = crate::parse::key(dst, src, dport, sport, protocol);
    // ICMP about a flow confirms nothing (`UNCONFIRMED` kept).
    let Some((flow, _)) = table::find_flow(
        &key,
        service.service,
        Place::of(&key, globals.flow_mask),
        globals.clock,
        k3s_xdp_common::table::UNCONFIRMED,
    ) else {
        return Err(other);
    };
    let Some(backend) = F::backend(flow.backend) else {
        return Err(other);
    };
    if backend.state == BACKEND_FREE || backend.service != service.service {
        return Err(other);
    }
    let dsr = service.flags & SERVICE_DSR != 0;
    let Some(snat_addr) = maps::snat_address(service.service, flow.snat_source, src) else {
        return Err(other);
    };
    let generation = globals.fib_generation;
    let hop = match hop::to_backend(ctx, flow.backend, &backend, src, dsr, generation) {
        Ok(hop) => hop,
        // As for the flow's packets (`forward::send`): only a nat packet can go to the kernel.
        Err(reason::DROP_NO_NEIGHBOUR) if !dsr => NextHop::default(),
        Err(why) => return Err(Verdict::drop(why)),
    };
    Ok(Quoted {
        service,
        flow,
        backend,
        snat_addr,
        dsr,
        hop,
    })
}

/// "Fragmentation needed" quoting a packet we sent to a client (VIP:port → client:port).
#[inline(always)]
fn frag_needed(
    ctx: &XdpContext,
    ip: &Ip<u32>,
    valid: &Valid,
    icmp: *mut IcmpHdr,
    vip: &VipInfo,
    globals: &Globals,
) -> Verdict {
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
    let quoted = match about_flow(
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
    let Quoted {
        service,
        flow,
        backend,
        snat_addr,
        dsr,
        hop,
    } = quoted;
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
    forward::onward(ctx, ip, &hop, reason::TX_ICMP_TO_BACKEND)
}
