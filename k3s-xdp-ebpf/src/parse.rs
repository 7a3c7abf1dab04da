//! Header parsing: Ethernet, one optional 802.1Q tag, IPv4, then TCP/UDP/ICMP. Every read is
//! bounds-checked right where it happens, as the verifier demands. Locating the IPv4 header is
//! all that non-VIP traffic pays for; the stricter checks run only for packets to a VIP.

use crate::headers::{IcmpHdr, Ipv4Hdr, TcpHdr, UdpHdr, IP_MF_OR_OFFSET};
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use k3s_xdp_common::{reason, FlowKey, IPPROTO_TCP};
use network_types::{eth::EthHdr, vlan::VlanHdr};

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

/// The frame's length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// A located IPv4 header.
pub struct Ip {
    pub eth: *mut EthHdr,
    pub hdr: *mut Ipv4Hdr,
    /// Offset of the IPv4 header (14, or 18 behind a VLAN tag).
    pub l3: usize,
    /// Whether the frame carries an 802.1Q tag (replies keep it; forwarding stays in the VLAN).
    pub tagged: bool,
}

/// Finds the IPv4 header behind Ethernet and at most one VLAN tag. Anything else is the host's
/// business: the error is the reason to count as the frame is passed.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Ip, u32> {
    // Too short to tell where it goes: not ours to judge.
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(reason::PASS_MALFORMED)?;
    // SAFETY: `ptr_at` checked the Ethernet header in bounds.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3 = EthHdr::LEN;
    let mut tagged = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, l3).ok_or(reason::PASS_MALFORMED)?;
        // SAFETY: `ptr_at` checked the VLAN header in bounds.
        ether_type = unsafe { (*vlan).ether_type };
        l3 += VlanHdr::LEN;
        tagged = true;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return Err(reason::PASS_STACKED_VLAN);
        }
    }
    if ether_type != ETH_P_IP {
        return Err(reason::PASS_NOT_IPV4);
    }
    let hdr: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(reason::PASS_MALFORMED)?;
    Ok(Ip {
        eth,
        hdr,
        l3,
        tagged,
    })
}

/// An IPv4 packet to a VIP that passed the header checks.
pub struct Valid {
    /// Offset of the L4 header.
    pub l4: usize,
    /// Offset just past the IP payload (frames may carry Ethernet padding after it).
    pub end: usize,
    /// Header length in bytes.
    pub ihl: usize,
}

/// Checks what the forwarding paths rely on: version 4, a sane IHL and total length, and not a
/// fragment (a fragment has no ports to balance on). Errors are drop reasons.
#[inline(always)]
pub fn validate(ctx: &XdpContext, ip: &Ip) -> Result<Valid, u32> {
    // SAFETY: `ipv4` checked the 20-byte IPv4 header in bounds.
    let (vihl, tot_len, frag) = unsafe { ((*ip.hdr).vihl, (*ip.hdr).tot_len, (*ip.hdr).frag) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Err(reason::DROP_BAD_IP_HEADER);
    }
    let tot_len = u16::from_be(tot_len) as usize;
    let available = ctx.data_end() - ctx.data() - ip.l3;
    if tot_len < ihl || tot_len > available {
        return Err(reason::DROP_BAD_IP_HEADER);
    }
    if header_sum(ctx, ip, ihl) != 0xffff {
        return Err(reason::DROP_BAD_IP_HEADER);
    }
    if frag & IP_MF_OR_OFFSET != 0 {
        return Err(reason::DROP_FRAGMENT);
    }
    Ok(Valid {
        l4: ip.l3 + ihl,
        end: ip.l3 + tot_len,
        ihl,
    })
}

/// The one's-complement sum of the IPv4 header (options included); 0xffff when its checksum is
/// right. Summing 32-bit words and folding equals summing 16-bit words.
#[inline(always)]
fn header_sum(ctx: &XdpContext, ip: &Ip, ihl: usize) -> u16 {
    let words = ip.hdr as *const u32;
    let mut sum: u64 = 0;
    for i in 0..5 {
        // SAFETY: the first five words are the fixed header `ipv4` checked in bounds.
        sum += u64::from(unsafe { *words.add(i) });
    }
    // Options: up to 40 bytes, in 4-byte words.
    for i in 0..10 {
        let offset = size_of::<Ipv4Hdr>() + 4 * i;
        if offset >= ihl {
            break;
        }
        match ptr_at::<u32>(ctx, ip.l3 + offset) {
            // SAFETY: `ptr_at` checked this option word in bounds.
            Some(word) => sum += u64::from(unsafe { *word }),
            None => return 0,
        }
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    crate::csum::fold(sum as u32)
}

/// The transport header of a TCP or UDP packet: where it is and its ports. Accessors check
/// the bounds again at each use, so the verifier never has to relate the protocol to an
/// earlier check (LLVM may merge the TCP and UDP paths).
#[derive(Clone, Copy)]
pub struct L4 {
    pub offset: usize,
    pub protocol: u8,
    /// Network order.
    pub sport: u16,
    pub dport: u16,
}

impl L4 {
    #[inline(always)]
    pub fn tcp(&self, ctx: &XdpContext) -> Option<*mut TcpHdr> {
        if self.protocol == IPPROTO_TCP {
            ptr_at(ctx, self.offset)
        } else {
            None
        }
    }

    #[inline(always)]
    pub fn udp(&self, ctx: &XdpContext) -> Option<*mut UdpHdr> {
        if self.protocol == IPPROTO_TCP {
            None
        } else {
            ptr_at(ctx, self.offset)
        }
    }

    /// TCP flags, or 0 for UDP.
    #[inline(always)]
    pub fn tcp_flags(&self, ctx: &XdpContext) -> u8 {
        match self.tcp(ctx) {
            // SAFETY: `tcp` returns a header checked in bounds.
            Some(t) => unsafe { (*t).flags },
            None => 0,
        }
    }
}

/// Locates and checks the TCP or UDP header of a valid packet.
#[inline(always)]
pub fn transport(ctx: &XdpContext, valid: &Valid, protocol: u8) -> Result<L4, u32> {
    let (sport, dport) = if protocol == IPPROTO_TCP {
        let tcp: *mut TcpHdr = ptr_at(ctx, valid.l4).ok_or(reason::DROP_TRUNCATED)?;
        // SAFETY: `ptr_at` checked the 20-byte TCP header in bounds.
        let doff = ((unsafe { (*tcp).doff } >> 4) as usize) * 4;
        if doff < size_of::<TcpHdr>() || valid.l4 + doff > valid.end {
            return Err(reason::DROP_BAD_L4_HEADER);
        }
        // SAFETY: as above.
        unsafe { ((*tcp).sport, (*tcp).dport) }
    } else {
        let udp: *mut UdpHdr = ptr_at(ctx, valid.l4).ok_or(reason::DROP_TRUNCATED)?;
        if valid.l4 + size_of::<UdpHdr>() > valid.end {
            return Err(reason::DROP_BAD_L4_HEADER);
        }
        // SAFETY: `ptr_at` checked the UDP header in bounds.
        unsafe { ((*udp).sport, (*udp).dport) }
    };
    Ok(L4 {
        offset: valid.l4,
        protocol,
        sport,
        dport,
    })
}

/// Locates the ICMP header of a valid packet.
/// The flow key of a parsed packet: its addresses and protocol from the IP header, its ports
/// from the transport header.
#[inline(always)]
pub fn flow_key(ip: &Ip, l4: &L4) -> FlowKey {
    // SAFETY: the IP header, checked in bounds by the parser.
    let (src, dst, protocol) = unsafe { ((*ip.hdr).src, (*ip.hdr).dst, (*ip.hdr).protocol) };
    FlowKey {
        src,
        dst,
        sport: l4.sport,
        dport: l4.dport,
        protocol,
        _pad: [0; 3],
    }
}

/// Where a packet's headers start, once parsed and checked: what `again` needs to find them.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Offsets {
    pub l3: u16,
    pub l4: u16,
    pub tagged: u16,
    pub _pad: u16,
}

impl Offsets {
    #[inline(always)]
    pub fn of(ip: &Ip, l4: &L4) -> Self {
        Offsets {
            l3: ip.l3 as u16,
            l4: l4.offset as u16,
            tagged: u16::from(ip.tagged),
            _pad: 0,
        }
    }
}

/// The headers of a packet this run already parsed and checked ([`ipv4`], [`validate`],
/// [`transport`]), found again at their offsets: for the new-flow program, which handles the
/// packet the first half checked, unchanged. Each header is bounds-checked again (the masks
/// keep the offsets within what a parsed packet can have: 14 or 18, and at most 18 + 60), not
/// validated again: the caller checks it is the packet it expects.
#[inline(always)]
pub fn again(ctx: &XdpContext, at: Offsets, protocol: u8) -> Option<(Ip, L4)> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let l3 = usize::from(at.l3 & 0x1f);
    let hdr: *mut Ipv4Hdr = ptr_at(ctx, l3)?;
    let offset = usize::from(at.l4 & 0x7f);
    let ports: *const [u16; 2] = ptr_at(ctx, offset)?;
    // SAFETY: checked in bounds above.
    let [sport, dport] = unsafe { *ports };
    Some((
        Ip {
            eth,
            hdr,
            l3,
            tagged: at.tagged != 0,
        },
        L4 {
            offset,
            protocol,
            sport,
            dport,
        },
    ))
}

#[inline(always)]
pub fn icmp(ctx: &XdpContext, valid: &Valid) -> Result<*mut IcmpHdr, u32> {
    let icmp: *mut IcmpHdr = ptr_at(ctx, valid.l4).ok_or(reason::DROP_TRUNCATED)?;
    if valid.l4 + size_of::<IcmpHdr>() > valid.end {
        return Err(reason::DROP_TRUNCATED);
    }
    Ok(icmp)
}
