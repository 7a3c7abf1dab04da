//! Header parsing: Ethernet, one optional 802.1Q tag, IPv4 or IPv6 (its extension headers
//! skipped), then TCP/UDP/ICMP. Every read is bounds-checked right where it happens, as the
//! verifier demands. Locating the IP header is all that non-VIP traffic pays for; the stricter
//! checks (and the IPv6 extension-header walk) run only for packets to a VIP.

use crate::{
    family::Family,
    headers::{
        IcmpHdr, Ipv4Hdr, Ipv6Ext, Ipv6Hdr, TcpHdr, UdpHdr, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
        IPPROTO_HOPOPTS, IPPROTO_ROUTING, IP_MF_OR_OFFSET,
    },
};
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use k3s_xdp_common::{
    reason, FlowKey, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_EXTENSION_HEADERS, V6,
};
use network_types::{eth::EthHdr, vlan::VlanHdr};

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
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

/// A located IP header (`Ip<u32>` IPv4, `Ip<V6>` IPv6).
pub struct Ip<F: Family> {
    pub eth: *mut EthHdr,
    pub hdr: *mut F::Hdr,
    /// Offset of the IP header (14, or 18 behind a VLAN tag).
    pub l3: usize,
    /// Whether the frame carries an 802.1Q tag (replies keep it; forwarding stays in the VLAN).
    pub tagged: bool,
}

/// Where the network header starts, and its EtherType.
pub struct Frame {
    pub eth: *mut EthHdr,
    pub ether_type: u16,
    pub l3: usize,
    pub tagged: bool,
}

/// Reads Ethernet and at most one VLAN tag. What cannot be read is the host's business: the
/// error is the reason to count as the frame is passed.
#[inline(always)]
pub fn frame(ctx: &XdpContext) -> Result<Frame, u32> {
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
    Ok(Frame {
        eth,
        ether_type,
        l3,
        tagged,
    })
}

/// The IP header of `frame` (whose EtherType the caller checked), if the frame holds it.
#[inline(always)]
pub fn ip<F: Family>(ctx: &XdpContext, frame: &Frame) -> Result<Ip<F>, u32> {
    let hdr: *mut F::Hdr = ptr_at(ctx, frame.l3).ok_or(reason::PASS_MALFORMED)?;
    Ok(Ip {
        eth: frame.eth,
        hdr,
        l3: frame.l3,
        tagged: frame.tagged,
    })
}

/// Finds the IPv4 header behind Ethernet and at most one VLAN tag.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Ip<u32>, u32> {
    let frame = frame(ctx)?;
    if frame.ether_type != ETH_P_IP {
        return Err(reason::PASS_NOT_IP);
    }
    ip(ctx, &frame)
}

/// Finds the IPv6 header behind Ethernet and at most one VLAN tag.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Result<Ip<V6>, u32> {
    let frame = frame(ctx)?;
    if frame.ether_type != ETH_P_IPV6 {
        return Err(reason::PASS_NOT_IP);
    }
    ip(ctx, &frame)
}

/// An IP packet to a VIP that passed the header checks.
pub struct Valid {
    /// Offset of the L4 header.
    pub l4: usize,
    /// Offset just past the IP payload (frames may carry Ethernet padding after it).
    pub end: usize,
    /// Header length in bytes (IPv6: with its extension headers).
    pub ihl: usize,
    /// The transport protocol (IPv6: the last next-header).
    pub protocol: u8,
}

/// Checks what the forwarding paths rely on: version 4, a sane IHL and total length, and not a
/// fragment (a fragment has no ports to balance on). Errors are drop reasons.
#[inline(always)]
pub fn validate(ctx: &XdpContext, ip: &Ip<u32>) -> Result<Valid, u32> {
    // SAFETY: `ipv4` checked the 20-byte IPv4 header in bounds.
    let (vihl, tot_len, frag, protocol) = unsafe {
        (
            (*ip.hdr).vihl,
            (*ip.hdr).tot_len,
            (*ip.hdr).frag,
            (*ip.hdr).protocol,
        )
    };
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
        protocol,
    })
}

/// Checks an IPv6 packet to a VIP: version 6, a payload length within the frame (a jumbogram's
/// 0 is refused), and an extension-header chain of at most `MAX_EXTENSION_HEADERS` hop-by-hop,
/// destination-options or routing headers (a routing header with segments left: the VIP is not
/// the final destination) ending in TCP, UDP or ICMPv6. A fragment is `DROP_FRAGMENT`; any
/// other chain `DROP_BAD_EXTENSION`.
#[inline(always)]
pub fn validate6(ctx: &XdpContext, ip: &Ip<V6>) -> Result<Valid, u32> {
    // SAFETY: `ipv6` checked the 40-byte IPv6 header in bounds.
    let (vtcfl, payload_len, mut next) = unsafe {
        (
            (*ip.hdr).vtcfl,
            (*ip.hdr).payload_len,
            (*ip.hdr).next_header,
        )
    };
    let payload_len = u16::from_be(payload_len) as usize;
    let available = ctx.data_end() - ctx.data() - ip.l3;
    if u32::from_be(vtcfl) >> 28 != 6
        || payload_len == 0
        || size_of::<Ipv6Hdr>() + payload_len > available
    {
        return Err(reason::DROP_BAD_IP_HEADER);
    }
    let end = ip.l3 + size_of::<Ipv6Hdr>() + payload_len;
    let mut l4 = ip.l3 + size_of::<Ipv6Hdr>();
    for _ in 0..MAX_EXTENSION_HEADERS {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS {
            break;
        }
        // At most 18 + 40 + 4 × 2048 bytes: the mask only tells the verifier so.
        let ext: *const Ipv6Ext = ptr_at(ctx, l4 & 0x3fff).ok_or(reason::DROP_BAD_EXTENSION)?;
        // SAFETY: `ptr_at` checked the extension header's first four bytes in bounds.
        let (following, len, segments_left) =
            unsafe { ((*ext).next_header, (*ext).len, (*ext).segments_left) };
        if next == IPPROTO_ROUTING && segments_left != 0 {
            return Err(reason::DROP_BAD_EXTENSION);
        }
        l4 = (l4 & 0x3fff) + (usize::from(len) + 1) * 8;
        if l4 > end {
            return Err(reason::DROP_BAD_EXTENSION);
        }
        next = following;
    }
    match next {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => Ok(Valid {
            l4: l4 & 0x3fff,
            end,
            ihl: (l4 & 0x3fff) - ip.l3,
            protocol: next,
        }),
        IPPROTO_FRAGMENT => Err(reason::DROP_FRAGMENT),
        _ => Err(reason::DROP_BAD_EXTENSION),
    }
}

/// The one's-complement sum of the IPv4 header (options included); 0xffff when its checksum is
/// right. Summing 32-bit words and folding equals summing 16-bit words.
#[inline(always)]
fn header_sum(ctx: &XdpContext, ip: &Ip<u32>, ihl: usize) -> u16 {
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

/// The flow key of a parsed packet: its addresses from the IP header, its ports and protocol
/// from the transport header.
#[inline(always)]
pub fn flow_key<F: Family>(ip: &Ip<F>, l4: &L4) -> FlowKey<F> {
    key(
        F::src(ip.hdr),
        F::dst(ip.hdr),
        l4.sport,
        l4.dport,
        l4.protocol,
    )
}

/// A flow key. The protocol and its 3 bytes of padding are one aligned 32-bit word (offset
/// 12 or 36), written whole: a literal's `_pad: [0; 3]` compiles to a call to `memset` (a
/// BPF-to-BPF call, and its return, on every packet that builds a key).
#[inline(always)]
pub fn key<F: Family>(src: F, dst: F, sport: u16, dport: u16, protocol: u8) -> FlowKey<F> {
    let mut key = core::mem::MaybeUninit::<FlowKey<F>>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: every field written before `assume_init` (little-endian target: the protocol
    // is the word's first byte).
    unsafe {
        core::ptr::addr_of_mut!((*k).src).write(src);
        core::ptr::addr_of_mut!((*k).dst).write(dst);
        core::ptr::addr_of_mut!((*k).sport).write(sport);
        core::ptr::addr_of_mut!((*k).dport).write(dport);
        core::ptr::addr_of_mut!((*k).protocol)
            .cast::<u32>()
            .write(u32::from(protocol));
        key.assume_init()
    }
}

// `key` writes the protocol and the padding after it as one aligned word.
const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(offset_of!(FlowKey<u32>, protocol) % 4 == 0 && align_of::<FlowKey<u32>>() >= 4);
    assert!(
        offset_of!(FlowKey<k3s_xdp_common::V6>, protocol) % 4 == 0
            && align_of::<FlowKey<k3s_xdp_common::V6>>() >= 4
    );
};

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
    pub fn of<F: Family>(ip: &Ip<F>, l4: &L4) -> Self {
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
pub fn again<F: Family>(ctx: &XdpContext, at: Offsets, protocol: u8) -> Option<(Ip<F>, L4)> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let l3 = usize::from(at.l3 & 0x1f);
    let hdr: *mut F::Hdr = ptr_at(ctx, l3)?;
    let offset = usize::from(at.l4 & F::L4_MASK);
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

/// Locates the ICMP (or ICMPv6: the same first eight bytes) header of a valid packet.
#[inline(always)]
pub fn icmp(ctx: &XdpContext, valid: &Valid) -> Result<*mut IcmpHdr, u32> {
    let icmp: *mut IcmpHdr = ptr_at(ctx, valid.l4).ok_or(reason::DROP_TRUNCATED)?;
    if valid.l4 + size_of::<IcmpHdr>() > valid.end {
        return Err(reason::DROP_TRUNCATED);
    }
    Ok(icmp)
}
