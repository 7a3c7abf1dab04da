//! IPv4, TCP, UDP and ICMP headers with naturally aligned fields, so that reading an address is
//! one 32-bit load rather than four byte loads (x86 permits unaligned packet access; the BPF
//! backend of LLVM only emits wide loads for aligned fields). All multi-byte fields hold network
//! byte order; the program compares them with values stored in network order, never swapping.

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset (high nibble) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub icmp_type: u8,
    pub code: u8,
    pub check: u16,
    pub rest: u32,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// `frag` bits (network order) meaning "a fragment": MF set or a non-zero offset.
pub const IP_MF_OR_OFFSET: u16 = 0x3fffu16.to_be();

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// The fixed IPv6 header; addresses as four naturally aligned words (see `k3s_xdp_common::V6`).
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class and flow label.
    pub vtcfl: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u64; 2],
    pub dst: [u64; 2],
}

/// The first two bytes every skippable IPv6 extension header starts with (RFC 8200, 4.2), and
/// the routing header's next two.
#[repr(C)]
pub struct Ipv6Ext {
    pub next_header: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    pub len: u8,
    pub routing_type: u8,
    pub segments_left: u8,
}

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
