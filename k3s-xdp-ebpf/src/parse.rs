//! Header parsing: Ethernet, one optional 802.1Q tag, IPv4, and the L4 ports. Every read is
//! bounds-checked right where it happens, as the verifier demands.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use k3s_xdp_common::reason;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, vlan::VlanHdr};

const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

/// A pointer to a `T` at `offset` in the packet, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Where the IPv4 header starts, and the header itself.
pub struct L3 {
    pub ip: *mut Ipv4Hdr,
    pub offset: usize,
}

/// What to do with a frame that is not ours to parse further.
pub enum NotIpv4 {
    Pass(u32),
    Drop(u32),
}

/// Finds the IPv4 header behind Ethernet and at most one VLAN tag.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<L3, NotIpv4> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(NotIpv4::Drop(reason::DROP_TRUNCATED))?;
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, offset).ok_or(NotIpv4::Drop(reason::DROP_TRUNCATED))?;
        ether_type = unsafe { (*vlan).ether_type };
        offset += VlanHdr::LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return Err(NotIpv4::Pass(reason::PASS_STACKED_VLAN));
        }
    }
    if ether_type != ETH_P_IP {
        return Err(NotIpv4::Pass(reason::PASS_NOT_IPV4));
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, offset).ok_or(NotIpv4::Drop(reason::DROP_TRUNCATED))?;
    Ok(L3 { ip, offset })
}

/// The IPv4 destination, network byte order.
#[inline(always)]
pub fn dst_addr(ip: *const Ipv4Hdr) -> u32 {
    u32::from_ne_bytes(unsafe { (*ip).dst_addr })
}
