//! Packet builders and parsers for BPF_PROG_TEST_RUN tests.
//!
//! A [`Frame`] describes Ethernet (with an optional 802.1Q tag), IPv4 and TCP/UDP/ICMP in plain
//! fields. [`Frame::to_bytes`] renders it with correct lengths and checksums unless a field
//! overrides them (to build malformed packets on purpose). [`Frame::parse`] reads bytes back into
//! a `Frame`, and [`verify_checksums`] recomputes every checksum from scratch, independently of
//! the incremental updates the XDP program does.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// MAC of the "client side" peer in tests (locally administered).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC of the load balancer's interface in tests.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x98];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    pub l3: L3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L3 {
    Ipv4(Ipv4),
    /// Any other ethertype, with its payload.
    Other {
        ether_type: u16,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub ttl: u8,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
    /// Raw option bytes (padded to 4 bytes by `to_bytes` unless `ihl` overrides).
    pub options: Vec<u8>,
    pub l4: L4,
    /// Overrides, for malformed packets; `None` means "correct".
    pub version: Option<u8>,
    pub ihl: Option<u8>,
    pub total_len: Option<u16>,
    pub checksum: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    Icmp(Icmp),
    /// Another IP protocol, or bytes that do not parse as the protocol's header.
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    pub data_offset: Option<u8>,
    pub checksum: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub length: Option<u16>,
    pub checksum: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    /// The 4 bytes after the checksum (id/sequence for echo, unused/MTU for "frag needed").
    pub rest: [u8; 4],
    pub payload: Vec<u8>,
    pub checksum: Option<u16>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src,
            dst,
            tos: 0,
            id: 0x1234,
            ttl: 64,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
            l4,
            version: None,
            ihl: None,
            total_len: None,
            checksum: None,
        }
    }

    pub fn protocol(&self) -> u8 {
        match &self.l4 {
            L4::Tcp(_) => 6,
            L4::Udp(_) => 17,
            L4::Icmp(_) => 1,
            L4::Raw { protocol, .. } => *protocol,
        }
    }
}

impl Tcp {
    pub fn new(sport: u16, dport: u16, flags: u8) -> Self {
        Self {
            sport,
            dport,
            seq: 1000,
            ack: if flags & TCP_ACK != 0 { 2000 } else { 0 },
            flags,
            window: 64240,
            options: Vec::new(),
            payload: Vec::new(),
            data_offset: None,
            checksum: None,
        }
    }
}

impl Frame {
    /// An IPv4 frame from `CLIENT_MAC` to `LB_MAC`.
    pub fn ipv4(ip: Ipv4) -> Self {
        Self {
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            vlan: None,
            l3: L3::Ipv4(ip),
        }
    }

    pub fn ip(&self) -> Option<&Ipv4> {
        match &self.l3 {
            L3::Ipv4(ip) => Some(ip),
            L3::Other { .. } => None,
        }
    }

    pub fn ip_mut(&mut self) -> Option<&mut Ipv4> {
        match &mut self.l3 {
            L3::Ipv4(ip) => Some(ip),
            L3::Other { .. } => None,
        }
    }

    pub fn tcp(&self) -> Option<&Tcp> {
        match self.ip().map(|ip| &ip.l4) {
            Some(L4::Tcp(t)) => Some(t),
            _ => None,
        }
    }

    pub fn udp(&self) -> Option<&Udp> {
        match self.ip().map(|ip| &ip.l4) {
            Some(L4::Udp(u)) => Some(u),
            _ => None,
        }
    }

    pub fn icmp(&self) -> Option<&Icmp> {
        match self.ip().map(|ip| &ip.l4) {
            Some(L4::Icmp(i)) => Some(i),
            _ => None,
        }
    }

    /// Renders the frame; lengths and checksums are computed unless overridden.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.eth_dst);
        out.extend_from_slice(&self.eth_src);
        if let Some(vid) = self.vlan {
            out.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        match &self.l3 {
            L3::Other {
                ether_type,
                payload,
            } => {
                out.extend_from_slice(&ether_type.to_be_bytes());
                out.extend_from_slice(payload);
            }
            L3::Ipv4(ip) => {
                out.extend_from_slice(&ETH_P_IP.to_be_bytes());
                out.extend_from_slice(&ipv4_bytes(ip));
            }
        }
        out
    }

    /// Parses a frame rendered by `to_bytes` or by the XDP program. Fields that the builder
    /// would compute (lengths, checksums) are recorded as overrides holding the values found.
    pub fn parse(bytes: &[u8]) -> Result<Frame, String> {
        let mut r = Reader::new(bytes);
        let eth_dst = r.array::<6>()?;
        let eth_src = r.array::<6>()?;
        let mut ether_type = r.u16()?;
        let mut vlan = None;
        if ether_type == ETH_P_8021Q {
            vlan = Some(r.u16()? & 0x0fff);
            ether_type = r.u16()?;
        }
        let l3 = if ether_type == ETH_P_IP {
            L3::Ipv4(parse_ipv4(r.rest())?)
        } else {
            L3::Other {
                ether_type,
                payload: r.rest().to_vec(),
            }
        };
        Ok(Frame {
            eth_dst,
            eth_src,
            vlan,
            l3,
        })
    }
}

/// A TCP segment from `src` to `dst` with `flags`, from `CLIENT_MAC` to `LB_MAC`.
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Frame {
    Frame::ipv4(Ipv4::new(
        *src.ip(),
        *dst.ip(),
        L4::Tcp(Tcp::new(src.port(), dst.port(), flags)),
    ))
}

/// A TCP SYN from `src` to `dst`.
pub fn tcp_syn(src: SocketAddrV4, dst: SocketAddrV4) -> Frame {
    let mut frame = tcp(src, dst, TCP_SYN);
    if let Some(ip) = frame.ip_mut() {
        if let L4::Tcp(t) = &mut ip.l4 {
            // MSS 1460, as a real SYN carries.
            t.options = vec![2, 4, 0x05, 0xb4];
        }
    }
    frame
}

/// A UDP datagram from `src` to `dst`.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Frame {
    Frame::ipv4(Ipv4::new(
        *src.ip(),
        *dst.ip(),
        L4::Udp(Udp {
            sport: src.port(),
            dport: dst.port(),
            payload: payload.to_vec(),
            length: None,
            checksum: None,
        }),
    ))
}

/// An ICMP echo request from `src` to `dst`.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Frame {
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    Frame::ipv4(Ipv4::new(
        src,
        dst,
        L4::Icmp(Icmp {
            icmp_type: 8,
            code: 0,
            rest,
            payload: payload.to_vec(),
            checksum: None,
        }),
    ))
}

/// The one's-complement sum of `data` (RFC 1071), folded, not inverted.
pub fn ones_complement_sum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data, 0)
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(protocol);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    u32::from(ones_complement_sum(&p, 0))
}

/// The TCP/UDP checksum of `segment` (with its checksum field zeroed) under the pseudo-header.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    !ones_complement_sum(
        segment,
        pseudo_header_sum(src, dst, protocol, segment.len()),
    )
}

fn ipv4_bytes(ip: &Ipv4) -> Vec<u8> {
    let l4 = l4_bytes(ip);
    let mut options = ip.options.clone();
    if ip.ihl.is_none() {
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
    }
    let header_len = 20 + options.len();
    let ihl = ip.ihl.unwrap_or((header_len / 4) as u8);
    let total_len = ip
        .total_len
        .unwrap_or((header_len + l4.len()).min(0xffff) as u16);
    let mut h = Vec::with_capacity(header_len + l4.len());
    h.push((ip.version.unwrap_or(4) << 4) | (ihl & 0x0f));
    h.push(ip.tos);
    h.extend_from_slice(&total_len.to_be_bytes());
    h.extend_from_slice(&ip.id.to_be_bytes());
    let mut frag = ip.fragment_offset & 0x1fff;
    if ip.dont_fragment {
        frag |= 0x4000;
    }
    if ip.more_fragments {
        frag |= 0x2000;
    }
    h.extend_from_slice(&frag.to_be_bytes());
    h.push(ip.ttl);
    h.push(ip.protocol());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&ip.src.octets());
    h.extend_from_slice(&ip.dst.octets());
    h.extend_from_slice(&options);
    let sum = ip.checksum.unwrap_or_else(|| checksum(&h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(&l4);
    h
}

/// The transport bytes of `l4` with its checksum field zero, where that field is, and the
/// checksum to write there instead of the computed one (`Raw`: no checksum field). Shared by
/// both families, which sum different pseudo-headers.
pub fn unsummed(l4: &L4) -> (Vec<u8>, Option<(usize, Option<u16>)>) {
    match l4 {
        L4::Raw { bytes, .. } => (bytes.clone(), None),
        L4::Tcp(t) => {
            let mut options = t.options.clone();
            while !options.len().is_multiple_of(4) {
                options.push(1); // NOP
            }
            let offset = t.data_offset.unwrap_or(((20 + options.len()) / 4) as u8);
            let mut s = Vec::with_capacity(20 + options.len() + t.payload.len());
            s.extend_from_slice(&t.sport.to_be_bytes());
            s.extend_from_slice(&t.dport.to_be_bytes());
            s.extend_from_slice(&t.seq.to_be_bytes());
            s.extend_from_slice(&t.ack.to_be_bytes());
            s.push(offset << 4);
            s.push(t.flags);
            s.extend_from_slice(&t.window.to_be_bytes());
            s.extend_from_slice(&[0, 0, 0, 0]);
            s.extend_from_slice(&options);
            s.extend_from_slice(&t.payload);
            (s, Some((16, t.checksum)))
        }
        L4::Udp(u) => {
            let len = u.length.unwrap_or((8 + u.payload.len()) as u16);
            let mut s = Vec::with_capacity(8 + u.payload.len());
            s.extend_from_slice(&u.sport.to_be_bytes());
            s.extend_from_slice(&u.dport.to_be_bytes());
            s.extend_from_slice(&len.to_be_bytes());
            s.extend_from_slice(&[0, 0]);
            s.extend_from_slice(&u.payload);
            (s, Some((6, u.checksum)))
        }
        L4::Icmp(i) => {
            let mut s = Vec::with_capacity(8 + i.payload.len());
            s.push(i.icmp_type);
            s.push(i.code);
            s.extend_from_slice(&[0, 0]);
            s.extend_from_slice(&i.rest);
            s.extend_from_slice(&i.payload);
            (s, Some((2, i.checksum)))
        }
    }
}

fn l4_bytes(ip: &Ipv4) -> Vec<u8> {
    let (mut s, field) = unsummed(&ip.l4);
    let Some((at, given)) = field else {
        return s;
    };
    let sum = given.unwrap_or_else(|| match &ip.l4 {
        L4::Tcp(_) => l4_checksum(ip.src, ip.dst, 6, &s),
        // 0 means "no checksum" in UDP over IPv4; a computed 0 is sent as 0xffff.
        L4::Udp(_) => match l4_checksum(ip.src, ip.dst, 17, &s) {
            0 => 0xffff,
            c => c,
        },
        _ => checksum(&s),
    });
    s[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    s
}

fn parse_ipv4(bytes: &[u8]) -> Result<Ipv4, String> {
    let mut r = Reader::new(bytes);
    let vihl = r.u8()?;
    let version = vihl >> 4;
    let ihl = vihl & 0x0f;
    if version != 4 || ihl < 5 {
        return Err(format!(
            "not a valid IPv4 header: version {version}, ihl {ihl}"
        ));
    }
    let tos = r.u8()?;
    let total_len = r.u16()?;
    let id = r.u16()?;
    let frag = r.u16()?;
    let ttl = r.u8()?;
    let protocol = r.u8()?;
    let checksum = r.u16()?;
    let src = Ipv4Addr::from(r.array::<4>()?);
    let dst = Ipv4Addr::from(r.array::<4>()?);
    let options = r.take(usize::from(ihl) * 4 - 20)?.to_vec();
    let header_len = usize::from(ihl) * 4;
    let end = usize::from(total_len);
    if end < header_len || end > bytes.len() {
        return Err(format!(
            "IPv4 total length {total_len} does not fit the {} bytes received",
            bytes.len()
        ));
    }
    let l4_bytes = &bytes[header_len..end];
    let l4 = parse_l4(protocol, l4_bytes).unwrap_or(L4::Raw {
        protocol,
        bytes: l4_bytes.to_vec(),
    });
    Ok(Ipv4 {
        src,
        dst,
        tos,
        id,
        ttl,
        dont_fragment: frag & 0x4000 != 0,
        more_fragments: frag & 0x2000 != 0,
        fragment_offset: frag & 0x1fff,
        options,
        l4,
        version: Some(version),
        ihl: Some(ihl),
        total_len: Some(total_len),
        checksum: Some(checksum),
    })
}

fn parse_l4(protocol: u8, bytes: &[u8]) -> Result<L4, String> {
    let mut r = Reader::new(bytes);
    match protocol {
        6 => {
            let sport = r.u16()?;
            let dport = r.u16()?;
            let seq = r.u32()?;
            let ack = r.u32()?;
            let offset = r.u8()? >> 4;
            let flags = r.u8()?;
            let window = r.u16()?;
            let checksum = r.u16()?;
            let _urgent = r.u16()?;
            let options = r
                .take((usize::from(offset) * 4).saturating_sub(20))?
                .to_vec();
            Ok(L4::Tcp(Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                options,
                payload: r.rest().to_vec(),
                data_offset: Some(offset),
                checksum: Some(checksum),
            }))
        }
        17 => Ok(L4::Udp(Udp {
            sport: r.u16()?,
            dport: r.u16()?,
            length: Some(r.u16()?),
            checksum: Some(r.u16()?),
            payload: r.rest().to_vec(),
        })),
        1 => Ok(L4::Icmp(Icmp {
            icmp_type: r.u8()?,
            code: r.u8()?,
            checksum: Some(r.u16()?),
            rest: r.array::<4>()?,
            payload: r.rest().to_vec(),
        })),
        _ => Err(format!("protocol {protocol}")),
    }
}

/// Whether the IPv4 header checksum of a frame is right (recomputed from scratch).
pub fn ip_checksum_ok(bytes: &[u8]) -> bool {
    let Ok(frame) = Frame::parse(bytes) else {
        return false;
    };
    let Some(ip) = frame.ip() else { return false };
    let l3 = if frame.vlan.is_some() { 18 } else { 14 };
    let ihl = usize::from(ip.ihl.unwrap_or(5)) * 4;
    ones_complement_sum(&bytes[l3..l3 + ihl], 0) == 0xffff
}

/// Whether both the IPv4 and the TCP/UDP/ICMP checksums of a frame are right.
pub fn checksums_ok(bytes: &[u8]) -> bool {
    verify_checksums(bytes).is_ok()
}

/// Recomputes the IPv4 header checksum and the TCP/UDP/ICMP checksum of a frame from scratch.
pub fn verify_checksums(bytes: &[u8]) -> Result<(), String> {
    let frame = Frame::parse(bytes)?;
    let ip = frame.ip().ok_or("not an IPv4 frame")?;
    let l3_start = if frame.vlan.is_some() { 18 } else { 14 };
    let ihl = usize::from(ip.ihl.unwrap_or(5)) * 4;
    let header = &bytes[l3_start..l3_start + ihl];
    if ones_complement_sum(header, 0) != 0xffff {
        return Err(format!(
            "bad IPv4 header checksum {:#06x} (recomputed {:#06x})",
            u16::from_be_bytes([header[10], header[11]]),
            {
                let mut h = header.to_vec();
                h[10] = 0;
                h[11] = 0;
                checksum(&h)
            }
        ));
    }
    let total = usize::from(ip.total_len.unwrap_or(0));
    let segment = &bytes[l3_start + ihl..l3_start + total];
    let ok = match &ip.l4 {
        L4::Tcp(_) => {
            ones_complement_sum(segment, pseudo_header_sum(ip.src, ip.dst, 6, segment.len()))
                == 0xffff
        }
        L4::Udp(u) => {
            u.checksum == Some(0)
                || ones_complement_sum(
                    segment,
                    pseudo_header_sum(ip.src, ip.dst, 17, segment.len()),
                ) == 0xffff
        }
        L4::Icmp(_) => ones_complement_sum(segment, 0) == 0xffff,
        L4::Raw { .. } => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad L4 checksum in {frame:?}"))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at + n;
        if end > self.bytes.len() {
            return Err(format!(
                "truncated: need {n} bytes at offset {}, have {}",
                self.at,
                self.bytes.len() - self.at
            ));
        }
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.at..];
        self.at = self.bytes.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        let frames = [
            tcp_syn(addr("192.0.2.101:40000"), addr("192.0.2.100:6443")),
            udp(addr("192.0.2.101:5353"), addr("192.0.2.100:53"), b"hello"),
            icmp_echo(
                "192.0.2.101".parse().unwrap(),
                "192.0.2.100".parse().unwrap(),
                7,
                1,
                b"ping",
            ),
        ];
        for frame in frames {
            let bytes = frame.to_bytes();
            verify_checksums(&bytes).unwrap();
            let parsed = Frame::parse(&bytes).unwrap();
            assert_eq!(
                parsed.to_bytes(),
                bytes,
                "parse(to_bytes(f)) renders the same bytes"
            );
        }
    }

    /// The example of RFC 1071 section 3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
    #[test]
    fn ones_complement_sum_matches_rfc1071() {
        assert_eq!(
            ones_complement_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            0xddf2
        );
    }

    #[test]
    fn a_corrupted_checksum_is_detected() {
        let mut bytes = tcp_syn(addr("192.0.2.101:40000"), addr("192.0.2.100:6443")).to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // inside the TCP options
        assert!(verify_checksums(&bytes).is_err());
    }

    #[test]
    fn vlan_tag_round_trips() {
        let mut frame = tcp_syn(addr("192.0.2.101:40000"), addr("192.0.2.100:6443"));
        frame.vlan = Some(100);
        let bytes = frame.to_bytes();
        assert_eq!(&bytes[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(Frame::parse(&bytes).unwrap().vlan, Some(100));
        verify_checksums(&bytes).unwrap();
    }
}
