//! Header rewrites with incremental checksum updates: Ethernet addresses toward a next hop, and
//! the 4-tuple of either family (nat mode's DNAT + SNAT to the backend, and the reverse for its
//! replies).

use crate::{
    family::Family,
    parse::{Ip, L4},
};
use aya_ebpf::programs::XdpContext;
use k3s_xdp_common::NextHop;

/// Addresses and ports as they should leave, network order.
pub struct Tuple<F> {
    pub src: F,
    pub dst: F,
    pub sport: u16,
    pub dport: u16,
}

/// Sends the frame to `hop`: its MACs.
#[inline(always)]
pub fn l2<F: Family>(ip: &Ip<F>, hop: &NextHop<F>) {
    // SAFETY: the Ethernet header, checked in bounds by the parser.
    unsafe {
        (*ip.eth).dst_addr = hop.dmac;
        (*ip.eth).src_addr = hop.smac;
    }
}

/// Replaces the 4-tuple, updating the IPv4 header checksum (IPv6 has none) and the TCP/UDP
/// checksum (whose pseudo-header covers the addresses) from one shared address delta.
#[inline(always)]
pub fn tuple<F: Family>(ctx: &XdpContext, ip: &Ip<F>, l4: &L4, to: &Tuple<F>) {
    let addresses = F::set_addresses(ip.hdr, to.src, to.dst);
    let ports = addresses
        .word16(l4.sport, to.sport)
        .word16(l4.dport, to.dport);
    // SAFETY: the TCP or UDP header as `L4::tcp`/`L4::udp` return it, checked in bounds.
    unsafe {
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
