//! IPv6 packets for BPF_PROG_TEST_RUN tests: the IPv6 twin of [`packet`](crate::packet). An
//! [`Ipv6`] renders into the payload of a [`Frame`] (`L3::Other` with the IPv6 EtherType), with
//! its extension headers, correct lengths and checksums unless a field overrides them;
//! [`Ipv6::parse`] reads one back, and [`verify_checksums6`] recomputes the TCP/UDP/ICMPv6
//! checksum from scratch, independently of the XDP program's incremental updates.

use crate::packet::{
    ones_complement_sum, unsummed, Frame, Icmp, Tcp, Udp, CLIENT_MAC, ETH_P_IPV6, L3, L4, LB_MAC,
    TCP_SYN,
};
use std::net::{Ipv6Addr, SocketAddrV6};

pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_DEST_OPTS: u8 = 60;
pub const NEXT_ICMPV6: u8 = 58;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers in order: (type, body after the first two bytes). The renderer
    /// writes each one's next-header and length bytes; bodies are padded to 8-byte units.
    pub ext: Vec<(u8, Vec<u8>)>,
    /// `L4::Icmp` is ICMPv6 (next header 58).
    pub l4: L4,
    /// Overrides, for malformed packets.
    pub version: Option<u8>,
    pub payload_len: Option<u16>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Self {
        Ipv6 {
            src,
            dst,
            hop_limit: 64,
            ext: Vec::new(),
            l4,
            version: None,
            payload_len: None,
        }
    }

    pub fn protocol(&self) -> u8 {
        match &self.l4 {
            L4::Tcp(_) => 6,
            L4::Udp(_) => 17,
            L4::Icmp(_) => NEXT_ICMPV6,
            L4::Raw { protocol, .. } => *protocol,
        }
    }

    /// The frame from `CLIENT_MAC` to `LB_MAC`.
    pub fn frame(&self) -> Frame {
        Frame {
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            vlan: None,
            l3: L3::Other {
                ether_type: ETH_P_IPV6,
                payload: self.to_bytes(),
            },
        }
    }

    /// The IPv6 header, extension headers and transport bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let l4 = l4_bytes(self);
        let mut ext = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.protocol(), |e| e.0);
            let mut h = vec![next, 0];
            h.extend_from_slice(body);
            while h.len() < 8 || !h.len().is_multiple_of(8) {
                h.push(0);
            }
            h[1] = (h.len() / 8 - 1) as u8;
            ext.extend_from_slice(&h);
        }
        let first = self.ext.first().map_or(self.protocol(), |e| e.0);
        let payload_len = self.payload_len.unwrap_or((ext.len() + l4.len()) as u16);
        let mut out = Vec::with_capacity(40 + ext.len() + l4.len());
        out.extend_from_slice(&(u32::from(self.version.unwrap_or(6)) << 28).to_be_bytes());
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.push(first);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(&ext);
        out.extend_from_slice(&l4);
        out
    }

    /// Reads an IPv6 packet (from the payload of an `L3::Other` frame) back, walking its
    /// hop-by-hop, destination-options and routing headers.
    pub fn parse(bytes: &[u8]) -> Result<Ipv6, String> {
        if bytes.len() < 40 {
            return Err(format!("{} bytes: no IPv6 header", bytes.len()));
        }
        let version = bytes[0] >> 4;
        let payload_len = u16::from_be_bytes([bytes[4], bytes[5]]);
        let mut next = bytes[6];
        let octets = |at: usize| -> [u8; 16] { bytes[at..at + 16].try_into().unwrap() };
        let (src, dst) = (Ipv6Addr::from(octets(8)), Ipv6Addr::from(octets(24)));
        let end = 40 + usize::from(payload_len);
        if end > bytes.len() {
            return Err(format!("payload length {payload_len} beyond the packet"));
        }
        let mut at = 40;
        let mut ext = Vec::new();
        while matches!(next, NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS) {
            let len = (usize::from(*bytes.get(at + 1).ok_or("truncated extension")?) + 1) * 8;
            let body = bytes.get(at + 2..at + len).ok_or("truncated extension")?;
            ext.push((next, body.to_vec()));
            next = bytes[at];
            at += len;
        }
        let l4_bytes = bytes
            .get(at..end)
            .ok_or("extension headers beyond the payload")?;
        let l4 = parse_l4(next, l4_bytes);
        Ok(Ipv6 {
            src,
            dst,
            hop_limit: bytes[7],
            ext,
            l4,
            version: Some(version),
            payload_len: Some(payload_len),
        })
    }

    /// The packet in `frame` (an IPv6 `L3::Other`).
    pub fn of(frame: &Frame) -> Result<Ipv6, String> {
        match &frame.l3 {
            L3::Other {
                ether_type: ETH_P_IPV6,
                payload,
            } => Ipv6::parse(payload),
            other => Err(format!("not IPv6: {other:?}")),
        }
    }
}

/// The sum of the IPv6 pseudo-header (RFC 8200, 8.1).
fn pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next]);
    u32::from(ones_complement_sum(&p, 0))
}

fn checksum6(ip: &Ipv6, next: u8, segment: &[u8]) -> u16 {
    !ones_complement_sum(segment, pseudo_sum(ip.src, ip.dst, next, segment.len()))
}

fn l4_bytes(ip: &Ipv6) -> Vec<u8> {
    let (mut s, field) = unsummed(&ip.l4);
    let Some((at, given)) = field else {
        return s;
    };
    let sum = given.unwrap_or_else(|| match checksum6(ip, ip.protocol(), &s) {
        // UDP over IPv6 must carry a checksum; a computed 0 is sent as 0xffff.
        0 => 0xffff,
        c => c,
    });
    s[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    s
}

fn parse_l4(next: u8, b: &[u8]) -> L4 {
    let be16 = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    match next {
        6 if b.len() >= 20
            && usize::from(b[12] >> 4) * 4 >= 20
            && usize::from(b[12] >> 4) * 4 <= b.len() =>
        {
            let offset = b[12] >> 4;
            let doff = usize::from(offset) * 4;
            L4::Tcp(Tcp {
                sport: be16(0),
                dport: be16(2),
                seq: be32(4),
                ack: be32(8),
                flags: b[13],
                window: be16(14),
                options: b[20..doff].to_vec(),
                payload: b[doff..].to_vec(),
                data_offset: Some(offset),
                checksum: Some(be16(16)),
            })
        }
        17 if b.len() >= 8 => L4::Udp(Udp {
            sport: be16(0),
            dport: be16(2),
            length: Some(be16(4)),
            checksum: Some(be16(6)),
            payload: b[8..].to_vec(),
        }),
        NEXT_ICMPV6 if b.len() >= 8 => L4::Icmp(Icmp {
            icmp_type: b[0],
            code: b[1],
            checksum: Some(be16(2)),
            rest: [b[4], b[5], b[6], b[7]],
            payload: b[8..].to_vec(),
        }),
        protocol => L4::Raw {
            protocol,
            bytes: b.to_vec(),
        },
    }
}

/// Recomputes the TCP, UDP or ICMPv6 checksum of an IPv6 frame from scratch.
pub fn verify_checksums6(bytes: &[u8]) -> Result<(), String> {
    let frame = Frame::parse(bytes)?;
    let ip = Ipv6::of(&frame)?;
    let next = ip.protocol();
    if matches!(ip.l4, L4::Raw { .. }) {
        return Ok(());
    }
    let segment = l4_segment(&frame)?;
    if ones_complement_sum(&segment, pseudo_sum(ip.src, ip.dst, next, segment.len())) == 0xffff {
        Ok(())
    } else {
        Err(format!("bad checksum in {ip:?}"))
    }
}

/// The transport bytes of an IPv6 frame, as they are (checksum included).
fn l4_segment(frame: &Frame) -> Result<Vec<u8>, String> {
    let L3::Other { payload, .. } = &frame.l3 else {
        return Err("not IPv6".into());
    };
    let ip = Ipv6::parse(payload)?;
    let ext: usize = ip.ext.iter().map(|(_, body)| body.len() + 2).sum();
    let end = 40 + usize::from(ip.payload_len.unwrap_or(0));
    Ok(payload[40 + ext..end].to_vec())
}

/// A TCP segment from `src` to `dst` with `flags`.
pub fn tcp6(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> Ipv6 {
    Ipv6::new(
        *src.ip(),
        *dst.ip(),
        L4::Tcp(Tcp::new(src.port(), dst.port(), flags)),
    )
}

/// A TCP SYN (with an MSS option) from `src` to `dst`.
pub fn tcp6_syn(src: SocketAddrV6, dst: SocketAddrV6) -> Ipv6 {
    let mut ip = tcp6(src, dst, TCP_SYN);
    if let L4::Tcp(t) = &mut ip.l4 {
        t.options = vec![2, 4, 0x05, 0xa0];
    }
    ip
}

/// A UDP datagram from `src` to `dst`.
pub fn udp6(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Ipv6 {
    Ipv6::new(
        *src.ip(),
        *dst.ip(),
        L4::Udp(Udp {
            sport: src.port(),
            dport: dst.port(),
            payload: payload.to_vec(),
            length: None,
            checksum: None,
        }),
    )
}

/// An ICMPv6 message of `icmp_type` (echo request: 128) from `src` to `dst`.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, rest: [u8; 4], payload: &[u8]) -> Ipv6 {
    Ipv6::new(
        src,
        dst,
        L4::Icmp(Icmp {
            icmp_type,
            code: 0,
            rest,
            payload: payload.to_vec(),
            checksum: None,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_parse_back_with_valid_checksums() {
        let c: SocketAddrV6 = "[2001:db8::101]:40000".parse().unwrap();
        let v: SocketAddrV6 = "[2001:db8::100]:6443".parse().unwrap();
        let mut with_ext = tcp6_syn(c, v);
        with_ext.ext = vec![
            (NEXT_HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0]),
            (NEXT_DEST_OPTS, vec![]),
        ];
        for ip in [
            tcp6_syn(c, v),
            udp6(c, v, b"hello"),
            icmp6(*c.ip(), *v.ip(), 128, [0, 7, 0, 1], b"ping"),
            with_ext,
        ] {
            let bytes = ip.frame().to_bytes();
            verify_checksums6(&bytes).unwrap();
            let parsed = Ipv6::of(&Frame::parse(&bytes).unwrap()).unwrap();
            assert_eq!(parsed.src, ip.src);
            assert_eq!(parsed.ext.len(), ip.ext.len());
            assert_eq!(parsed.protocol(), ip.protocol());
        }
    }
}
