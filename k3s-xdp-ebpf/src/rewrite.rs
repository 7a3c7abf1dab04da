//! Header rewrites with incremental checksum updates: Ethernet addresses toward a next hop, and
//! the IPv4 4-tuple (nat mode's DNAT + SNAT to the backend, and the reverse for its replies).

use crate::{
    csum::Delta,
    headers::Ipv4Hdr,
    parse::{Ip, L4},
};
use aya_ebpf::programs::XdpContext;
use k3s_xdp_common::NextHop;

/// Addresses and ports as they should leave, network order.
pub struct Tuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

/// Sends the frame to `hop`: its MACs.
#[inline(always)]
pub fn l2(ip: &Ip, hop: &NextHop) {
    // SAFETY: the Ethernet header, checked in bounds by the parser.
    unsafe {
        (*ip.eth).dst_addr = hop.dmac;
        (*ip.eth).src_addr = hop.smac;
    }
}

/// Replaces the 4-tuple, updating the IPv4 checksum and the TCP/UDP checksum (whose
/// pseudo-header covers the addresses) from one shared address delta.
#[inline(always)]
pub fn tuple(ctx: &XdpContext, hdr: *mut Ipv4Hdr, l4: &L4, to: &Tuple) {
    // SAFETY: the IPv4 header checked in bounds by the parser; the TCP or UDP header as
    // `L4::tcp`/`L4::udp` return it, checked in bounds.
    unsafe {
        let addresses = Delta::new()
            .word32((*hdr).src, to.src)
            .word32((*hdr).dst, to.dst);
        let ports = addresses
            .word16(l4.sport, to.sport)
            .word16(l4.dport, to.dport);
        (*hdr).src = to.src;
        (*hdr).dst = to.dst;
        (*hdr).check = addresses.apply((*hdr).check);
        if let Some(t) = l4.tcp(ctx) {
            (*t).sport = to.sport;
            (*t).dport = to.dport;
            (*t).check = ports.apply((*t).check);
        } else if let Some(u) = l4.udp(ctx) {
            (*u).sport = to.sport;
            (*u).dport = to.dport;
            (*u).check = ports.apply_udp((*u).check);
        }
    }
}
