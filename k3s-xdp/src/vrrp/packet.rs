//! The VRRP wire format: version 3 (RFC 9568, which obsoletes RFC 5798) for IPv4 and IPv6, and
//! version 2 (RFC 3768, IPv4 only) with simple-password authentication, for peers configured
//! like the seeds' keepalived (`auth_type PASS`).
//!
//! ```text
//!  v3: | ver=3 | type=1 | VRID | priority | count | rsvd(4) max_adver_int(12, centiseconds) |
//!      | checksum | addresses...                                    (checksum with pseudo-header)
//!  v2: | ver=2 | type=1 | VRID | priority | count | auth type | adver_int (seconds) |
//!      | checksum | addresses... | authentication data (8 bytes)   (checksum of the message only)
//! ```
//!
//! The addresses are 4 bytes each over IPv4 and 16 over IPv6; the pseudo-header is the one of
//! the family (RFC 768 for IPv4, RFC 8200 section 8.1 for IPv6, next header 112). The codec is
//! generic over the family ([`Family`]: `Ipv4Addr` or `Ipv6Addr`).
//!
//! [`decode_message`] checks everything RFC 9568 section 7.1 asks a receiver to check (TTL or
//! hop limit 255, version, type, VRID, address count, checksum, authentication, the advertised
//! addresses) and says which check failed, so each rejection is counted by reason. An IPv4 raw
//! socket hands over the IP header ([`ipv4_header`] reads it); an IPv6 one hands over the
//! message alone, with the addresses and hop limit beside it.

use std::{
    fmt,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 VRRP multicast group, 224.0.0.18.
pub const MULTICAST_GROUP: Ipv4Addr = <Ipv4Addr as Family>::MULTICAST_GROUP;
/// The IPv6 VRRP multicast group, ff02::12.
pub const MULTICAST_GROUP_V6: Ipv6Addr = <Ipv6Addr as Family>::MULTICAST_GROUP;
const TYPE_ADVERTISEMENT: u8 = 1;
const AUTH_NONE: u8 = 0;
const AUTH_SIMPLE: u8 = 1;

/// An address family VRRP runs over: what differs between IPv4 and IPv6 on the wire.
pub trait Family:
    Copy + Ord + Hash + fmt::Debug + fmt::Display + Into<IpAddr> + Send + Sync + 'static
{
    /// "IPv4" or "IPv6", for logs.
    const NAME: &'static str;
    /// "ipv4" or "ipv6", for status and metric labels.
    const LABEL: &'static str;
    /// Bytes of one address.
    const LEN: usize;
    /// Where adverts go without unicast peers.
    const MULTICAST_GROUP: Self;
    /// Whether only VRRPv3 exists for this family (RFC 9568: VRRPv2 is IPv4 only).
    const V3_ONLY: bool;
    /// Appends the address in network order.
    fn put(&self, out: &mut Vec<u8>);
    /// Reads an address from `bytes` (exactly `LEN` of them).
    fn read(bytes: &[u8]) -> Option<Self>;
    /// This family's half of an `IpAddr`, if it is one.
    fn of(addr: IpAddr) -> Option<Self>;
}

impl Family for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    const LABEL: &'static str = "ipv4";
    const LEN: usize = 4;
    const MULTICAST_GROUP: Self = Ipv4Addr::new(224, 0, 0, 18);
    const V3_ONLY: bool = false;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.octets());
    }
    fn read(bytes: &[u8]) -> Option<Self> {
        <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
    }
    fn of(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl Family for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    const LABEL: &'static str = "ipv6";
    const LEN: usize = 16;
    const MULTICAST_GROUP: Self = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
    const V3_ONLY: bool = true;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.octets());
    }
    fn read(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(Ipv6Addr::from)
    }
    fn of(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

/// How adverts of this instance are written and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    V3,
    /// Version 2 (IPv4 only), with `auth_pass` (at most 8 bytes) or no authentication.
    V2 {
        auth_pass: Option<Vec<u8>>,
    },
}

impl Version {
    fn number(&self) -> u8 {
        match self {
            Version::V3 => 3,
            Version::V2 { .. } => 2,
        }
    }
}

/// One advertisement, as sent or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert<A = Ipv4Addr> {
    pub vrid: u8,
    pub priority: u8,
    /// The advertisement interval (centisecond resolution in v3, seconds in v2).
    pub interval: Duration,
    pub addresses: Vec<A>,
}

/// Why a received packet was rejected; each is counted under its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its fixed headers.
    Truncated,
    /// IPv4 TTL or IPv6 hop limit other than 255: it crossed a router (RFC 9568 7.1).
    Ttl(u8),
    /// VRRP version other than the one configured (or 2 over IPv6).
    Version(u8),
    /// Not an advertisement.
    Type(u8),
    /// Another virtual router: not ours to judge, dropped silently (not an error).
    OtherVrid(u8),
    /// The address count does not match the packet length (more addresses announced than
    /// carried, or bytes beyond them).
    Count,
    Checksum,
    /// Version 2: wrong authentication type or password.
    Auth,
    /// The advertised addresses are not the ones configured.
    Addresses,
    /// An advertisement interval of zero.
    Interval,
    /// Unicast mode: the sender is not a listed peer.
    NotAPeer(IpAddr),
}

impl Reject {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::Ttl(_) => "ttl",
            Reject::Version(_) => "version",
            Reject::Type(_) => "type",
            Reject::OtherVrid(_) => "other_vrid",
            Reject::Count => "address_count",
            Reject::Checksum => "checksum",
            Reject::Auth => "authentication",
            Reject::Addresses => "addresses",
            Reject::Interval => "interval",
            Reject::NotAPeer(_) => "not_a_peer",
        }
    }

    /// The reasons counted as rejections. Another virtual router's advert is not one: several
    /// VRRP instances share a link as a matter of course (counted apart, as "other routers").
    pub const LABELS: [&'static str; 10] = [
        "truncated",
        "ttl",
        "version",
        "type",
        "address_count",
        "checksum",
        "authentication",
        "addresses",
        "interval",
        "not_a_peer",
    ];
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::Truncated => write!(f, "truncated packet"),
            Reject::Ttl(t) => write!(f, "TTL (hop limit) {t}, expected 255"),
            Reject::Version(v) => write!(f, "VRRP version {v} (configured version differs)"),
            Reject::Type(t) => write!(f, "VRRP type {t}, expected 1 (advertisement)"),
            Reject::OtherVrid(v) => write!(f, "virtual_router_id {v} is not ours"),
            Reject::Count => write!(f, "address count does not match the packet length"),
            Reject::Checksum => write!(f, "bad checksum"),
            Reject::Auth => write!(f, "authentication failed (auth_pass or auth type)"),
            Reject::Addresses => write!(f, "advertised addresses differ from virtual_ipaddress"),
            Reject::Interval => write!(f, "advertisement interval of zero"),
            Reject::NotAPeer(a) => write!(f, "{a} is not in unicast_peers"),
        }
    }
}

/// Encodes `advert` (without the IP header) from `src` to `dst`.
pub fn encode<A: Family>(advert: &Advert<A>, version: &Version, src: A, dst: A) -> Vec<u8> {
    let count = advert.addresses.len().min(255) as u8;
    let mut p = Vec::with_capacity(8 + A::LEN * usize::from(count) + 8);
    p.push(version.number() << 4 | TYPE_ADVERTISEMENT);
    p.push(advert.vrid);
    p.push(advert.priority);
    p.push(count);
    match version {
        Version::V3 => {
            let centis = (advert.interval.as_millis() / 10).clamp(1, 0x0fff) as u16;
            p.extend_from_slice(&centis.to_be_bytes());
        }
        Version::V2 { auth_pass } => {
            p.push(if auth_pass.is_some() {
                AUTH_SIMPLE
            } else {
                AUTH_NONE
            });
            p.push(advert.interval.as_secs().clamp(1, 255) as u8);
        }
    }
    p.extend_from_slice(&[0, 0]);
    for a in advert.addresses.iter().take(255) {
        a.put(&mut p);
    }
    let pseudo = match version {
        Version::V3 => pseudo_header_sum(src, dst, IPPROTO_VRRP, p.len()),
        Version::V2 { auth_pass } => {
            p.extend_from_slice(&auth_data(auth_pass.as_deref().unwrap_or_default()));
            0
        }
    };
    let sum = internet_checksum(&p, pseudo);
    p[6..8].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The 8 bytes of VRRPv2 authentication data for `pass` (zero-padded, at most 8 bytes used).
fn auth_data(pass: &[u8]) -> [u8; 8] {
    let mut data = [0u8; 8];
    let n = pass.len().min(8);
    data[..n].copy_from_slice(&pass[..n]);
    data
}

/// What the receiver checks a packet against.
pub struct Expect<'a, A = Ipv4Addr> {
    pub vrid: u8,
    pub version: &'a Version,
    /// The configured virtual addresses (order does not matter).
    pub addresses: &'a [A],
}

/// A received VRRP message with what the IP layer says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received<'a, A> {
    pub src: A,
    pub dst: A,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// The VRRP message, from its first byte to the end of the IP payload.
    pub message: &'a [u8],
}

/// Reads the IPv4 header of a packet as an IPv4 raw socket returns it.
pub fn ipv4_header(packet: &[u8]) -> Result<Received<'_, Ipv4Addr>, Reject> {
    if packet.len() < 20 {
        return Err(Reject::Truncated);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if packet[0] >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 {
        return Err(Reject::Truncated);
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let end = if total >= ihl + 8 && total <= packet.len() {
        total
    } else {
        packet.len()
    };
    Ok(Received {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        hop_limit: packet[8],
        message: &packet[ihl..end],
    })
}

/// Decodes a received IPv4 packet (IP header included, as a raw socket returns it).
/// Returns the sender's address and the advert.
pub fn decode(packet: &[u8], expect: &Expect<'_>) -> Result<(Ipv4Addr, Advert), Reject> {
    let received = ipv4_header(packet)?;
    decode_message(&received, expect).map(|advert| (received.src, advert))
}

/// Checks and decodes a received VRRP message of family `A`.
pub fn decode_message<A: Family>(
    received: &Received<'_, A>,
    expect: &Expect<'_, A>,
) -> Result<Advert<A>, Reject> {
    let vrrp = received.message;
    if received.hop_limit != 255 {
        return Err(Reject::Ttl(received.hop_limit));
    }
    if vrrp.len() < 8 {
        return Err(Reject::Truncated);
    }
    let version = vrrp[0] >> 4;
    let kind = vrrp[0] & 0x0f;
    if version != expect.version.number() || (A::V3_ONLY && version != 3) {
        return Err(Reject::Version(version));
    }
    if kind != TYPE_ADVERTISEMENT {
        return Err(Reject::Type(kind));
    }
    let vrid = vrrp[1];
    if vrid != expect.vrid {
        return Err(Reject::OtherVrid(vrid));
    }
    let priority = vrrp[2];
    let count = usize::from(vrrp[3]);
    let auth_len = if version == 2 { 8 } else { 0 };
    if vrrp.len() < 8 + auth_len {
        return Err(Reject::Truncated);
    }
    // More addresses announced than the packet carries, or bytes beyond them.
    let addresses_end = 8 + A::LEN * count;
    if vrrp.len() != addresses_end + auth_len {
        return Err(Reject::Count);
    }
    let pseudo = if version == 3 {
        pseudo_header_sum(received.src, received.dst, IPPROTO_VRRP, vrrp.len())
    } else {
        0
    };
    if internet_checksum(vrrp, pseudo) != 0 {
        return Err(Reject::Checksum);
    }
    let interval = if version == 3 {
        Duration::from_millis(u64::from(u16::from_be_bytes([vrrp[4], vrrp[5]]) & 0x0fff) * 10)
    } else {
        Duration::from_secs(u64::from(vrrp[5]))
    };
    if let Version::V2 { auth_pass } = expect.version {
        let auth_type = vrrp[4];
        let ok = match auth_pass {
            Some(pass) => auth_type == AUTH_SIMPLE && vrrp[addresses_end..] == auth_data(pass),
            None => auth_type == AUTH_NONE,
        };
        if !ok {
            return Err(Reject::Auth);
        }
    }
    if interval.is_zero() {
        return Err(Reject::Interval);
    }
    let addresses: Vec<A> = vrrp[8..addresses_end]
        .chunks_exact(A::LEN)
        .filter_map(A::read)
        .collect();
    let mut got = addresses.clone();
    let mut wanted = expect.addresses.to_vec();
    got.sort();
    wanted.sort();
    if got != wanted {
        return Err(Reject::Addresses);
    }
    Ok(Advert {
        vrid,
        priority,
        interval,
        addresses,
    })
}

/// The sum of the pseudo-header of an upper-layer message of `len` bytes and protocol
/// (next header) `proto` from `src` to `dst`, to start [`internet_checksum`] with. IPv4's
/// (RFC 768) and IPv6's (RFC 8200 8.1) hold the same words, only the addresses' lengths differ.
pub fn pseudo_header_sum<A: Family>(src: A, dst: A, proto: u8, len: usize) -> u32 {
    let mut addresses = Vec::with_capacity(2 * A::LEN);
    src.put(&mut addresses);
    dst.put(&mut addresses);
    let len = len as u32;
    sum_words(&addresses) + (len >> 16) + (len & 0xffff) + u32::from(proto)
}

/// The Internet checksum (RFC 1071) of `data`, started from `sum` (a pseudo-header's, or 0).
/// Over a message whose checksum field is filled, a correct checksum yields 0.
pub fn internet_checksum(data: &[u8], sum: u32) -> u16 {
    let mut sum = u64::from(sum) + u64::from(sum_words(data));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `data` as big-endian 16-bit words added up (an odd last byte padded with zero), folded so
/// that it cannot overflow whatever the length.
fn sum_words(data: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u64::from(*b) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 98);
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

    /// An IPv4 header (TTL 255, protocol 112) in front of `vrrp`.
    fn ip(vrrp: &[u8], ttl: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0x45, 0xc0];
        p.extend_from_slice(&((20 + vrrp.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, ttl, IPPROTO_VRRP, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(vrrp);
        p
    }

    fn advert(priority: u8) -> Advert {
        Advert {
            vrid: 51,
            priority,
            interval: Duration::from_secs(1),
            addresses: vec![VIP],
        }
    }

    /// VRRPv3 advert built by hand from RFC 9568 section 5.1: VRID 51, priority 200, one
    /// address, Max Adver Int 100 centiseconds, checksum over the pseudo-header
    /// (192.0.2.98 → 224.0.0.18, protocol 112, length 12).
    #[test]
    fn v3_encoding_matches_the_rfc_layout() {
        let bytes = encode(&advert(200), &Version::V3, SRC, MULTICAST_GROUP);
        // Pseudo-header: c000+0262+e000+0012+0070+000c = 0x1a2f0;
        // message: 3133+c801+0064+0000+c000+0264 = 0x1bbfc;
        // 0x1a2f0+0x1bbfc = 0x35eec, folded 5eef, checksum = ~5eef = a110.
        assert_eq!(
            bytes,
            [0x31, 51, 200, 1, 0x00, 0x64, 0xa1, 0x10, 192, 0, 2, 100],
            "version 3, type 1, vrid, priority, count, 100 cs, checksum, address"
        );
    }

    /// VRRPv2 advert (RFC 3768 section 5.1) with auth_pass "1111", as keepalived sends for the
    /// seed 004 configuration: checksum over the VRRP message only.
    #[test]
    fn v2_encoding_with_a_simple_password() {
        let v2 = Version::V2 {
            auth_pass: Some(b"1111".to_vec()),
        };
        let bytes = encode(&advert(100), &v2, SRC, MULTICAST_GROUP);
        assert_eq!(&bytes[..6], &[0x21, 51, 100, 1, 1, 1]);
        assert_eq!(&bytes[8..12], &[192, 0, 2, 100]);
        assert_eq!(&bytes[12..], b"1111\0\0\0\0");
        assert_eq!(internet_checksum(&bytes, 0), 0);
        // 2133+6401+0101+0000+c000+0264+3131+3131+0000+0000 = 0x1aafb, folded aafc; ~ = 5503.
        assert_eq!(&bytes[6..8], &[0x55, 0x03]);
    }

    #[test]
    fn round_trips() {
        for version in [
            Version::V3,
            Version::V2 { auth_pass: None },
            Version::V2 {
                auth_pass: Some(b"secret12".to_vec()),
            },
        ] {
            let a = Advert {
                interval: Duration::from_secs(2),
                addresses: vec![VIP, Ipv4Addr::new(192, 0, 2, 101)],
                ..advert(150)
            };
            let bytes = ip(
                &encode(&a, &version, SRC, MULTICAST_GROUP),
                255,
                SRC,
                MULTICAST_GROUP,
            );
            let expect = Expect {
                vrid: 51,
                version: &version,
                addresses: &[Ipv4Addr::new(192, 0, 2, 101), VIP],
            };
            assert_eq!(decode(&bytes, &expect), Ok((SRC, a)));
        }
    }

    #[test]
    fn v3_intervals_have_centisecond_resolution() {
        let a = Advert {
            interval: Duration::from_millis(100),
            ..advert(200)
        };
        let bytes = encode(&a, &Version::V3, SRC, MULTICAST_GROUP);
        assert_eq!(&bytes[4..6], &[0, 10]);
        let expect = Expect {
            vrid: 51,
            version: &Version::V3,
            addresses: &[VIP],
        };
        let (_, back) = decode(&ip(&bytes, 255, SRC, MULTICAST_GROUP), &expect).unwrap();
        assert_eq!(back.interval, Duration::from_millis(100));
    }

    #[test]
    fn every_check_rejects_with_its_reason() {
        let v3 = Version::V3;
        let expect = Expect {
            vrid: 51,
            version: &v3,
            addresses: &[VIP],
        };
        let good = encode(&advert(200), &v3, SRC, MULTICAST_GROUP);
        let pkt = |vrrp: &[u8], ttl| ip(vrrp, ttl, SRC, MULTICAST_GROUP);
        assert!(decode(&pkt(&good, 255), &expect).is_ok());
        assert_eq!(decode(&pkt(&good, 254), &expect), Err(Reject::Ttl(254)));
        assert_eq!(
            decode(&pkt(&good[..6], 255), &expect),
            Err(Reject::Truncated)
        );
        assert_eq!(decode(&[0x45; 10], &expect), Err(Reject::Truncated));

        let mut bad = good.clone();
        bad[0] = 0x21;
        assert_eq!(decode(&pkt(&bad, 255), &expect), Err(Reject::Version(2)));
        bad[0] = 0x32;
        assert_eq!(decode(&pkt(&bad, 255), &expect), Err(Reject::Type(2)));
        let mut other = good.clone();
        other[1] = 52;
        assert_eq!(
            decode(&pkt(&other, 255), &expect),
            Err(Reject::OtherVrid(52))
        );
        let mut count = good.clone();
        count[3] = 2;
        assert_eq!(decode(&pkt(&count, 255), &expect), Err(Reject::Count));
        // Fewer than the fixed header's 8 bytes after the IP header (the IP total length
        // says so): truncated.
        let mut short = pkt(&good, 255);
        let ihl = usize::from(short[0] & 0x0f) * 4;
        short.truncate(ihl + 6);
        assert_eq!(decode(&short, &expect), Err(Reject::Truncated));
        let mut extra = good.clone();
        extra.extend_from_slice(&[0, 0, 0, 0, 1]);
        assert_eq!(decode(&pkt(&extra, 255), &expect), Err(Reject::Count));
        let mut sum = good.clone();
        sum[7] ^= 1;
        assert_eq!(decode(&pkt(&sum, 255), &expect), Err(Reject::Checksum));
        // A v3 checksum computed without the pseudo-header (an old interop bug) is rejected.
        let mut no_pseudo = good.clone();
        no_pseudo[6..8].copy_from_slice(&[0, 0]);
        let s = internet_checksum(&no_pseudo, 0);
        no_pseudo[6..8].copy_from_slice(&s.to_be_bytes());
        assert_eq!(
            decode(&pkt(&no_pseudo, 255), &expect),
            Err(Reject::Checksum)
        );

        let wrong_vip = encode(
            &Advert {
                addresses: vec![Ipv4Addr::new(192, 0, 2, 7)],
                ..advert(200)
            },
            &v3,
            SRC,
            MULTICAST_GROUP,
        );
        assert_eq!(
            decode(&pkt(&wrong_vip, 255), &expect),
            Err(Reject::Addresses)
        );
        let zero = encode(
            &Advert {
                interval: Duration::ZERO,
                ..advert(200)
            },
            &v3,
            SRC,
            MULTICAST_GROUP,
        );
        // encode clamps to 1 cs; forge a zero interval with a valid checksum.
        let mut forged = zero.clone();
        forged[4..6].copy_from_slice(&[0, 0]);
        forged[6..8].copy_from_slice(&[0, 0]);
        let s = internet_checksum(
            &forged,
            pseudo_header_sum(SRC, MULTICAST_GROUP, IPPROTO_VRRP, forged.len()),
        );
        forged[6..8].copy_from_slice(&s.to_be_bytes());
        assert_eq!(decode(&pkt(&forged, 255), &expect), Err(Reject::Interval));
    }

    #[test]
    fn v2_authentication_is_checked() {
        let with = Version::V2 {
            auth_pass: Some(b"1111".to_vec()),
        };
        let wrong = Version::V2 {
            auth_pass: Some(b"2222".to_vec()),
        };
        let none = Version::V2 { auth_pass: None };
        let bytes = ip(
            &encode(&advert(100), &wrong, SRC, MULTICAST_GROUP),
            255,
            SRC,
            MULTICAST_GROUP,
        );
        let expect = |v| Expect {
            vrid: 51,
            version: v,
            addresses: &[VIP],
        };
        assert_eq!(decode(&bytes, &expect(&with)), Err(Reject::Auth));
        assert_eq!(decode(&bytes, &expect(&none)), Err(Reject::Auth));
        let plain = ip(
            &encode(&advert(100), &none, SRC, MULTICAST_GROUP),
            255,
            SRC,
            MULTICAST_GROUP,
        );
        assert_eq!(decode(&plain, &expect(&with)), Err(Reject::Auth));
        assert!(decode(&plain, &expect(&none)).is_ok());
    }

    /// Hostile input never panics.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let v3 = Version::V3;
        let expect = Expect {
            vrid: 51,
            version: &v3,
            addresses: &[VIP],
        };
        let good = ip(
            &encode(&advert(200), &v3, SRC, MULTICAST_GROUP),
            255,
            SRC,
            MULTICAST_GROUP,
        );
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut p = good.clone();
            let len = (x as usize) % (p.len() + 8);
            p.resize(len, (x >> 8) as u8);
            if !p.is_empty() {
                let i = (x as usize >> 3) % p.len();
                p[i] = (x >> 16) as u8;
            }
            let _ = decode(&p, &expect);
        }
    }

    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x98);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

    fn advert6(priority: u8) -> Advert<Ipv6Addr> {
        Advert {
            vrid: 51,
            priority,
            interval: Duration::from_secs(1),
            addresses: vec![VIP6],
        }
    }

    /// What an IPv6 raw socket hands over for `message` sent from `src` to ff02::12.
    fn rx6(message: &[u8], hop_limit: u8, src: Ipv6Addr) -> Received<'_, Ipv6Addr> {
        Received {
            src,
            dst: MULTICAST_GROUP_V6,
            hop_limit,
            message,
        }
    }

    fn expect6(addresses: &[Ipv6Addr]) -> Expect<'_, Ipv6Addr> {
        Expect {
            vrid: 51,
            version: &Version::V3,
            addresses,
        }
    }

    /// VRRPv3 advert over IPv6 built by hand from RFC 9568 section 5.1: VRID 51, priority
    /// 200, one 16-byte address, Max Adver Int 100 centiseconds, checksum over the IPv6
    /// pseudo-header (fe80::98 → ff02::12, upper-layer length 24, next header 112).
    #[test]
    fn v3_ipv6_encoding_matches_the_rfc_layout() {
        let bytes = encode(&advert6(200), &Version::V3, SRC6, MULTICAST_GROUP_V6);
        // Pseudo-header: fe80+0098 + ff02+0012 + 0018 + 0070 = 0x1feb4;
        // message: 3133+c801+0064+0000+2001+0db8+0100 = 0x12851;
        // 0x1feb4+0x12851 = 0x32705, folded 2708, checksum = ~2708 = d8f7.
        assert_eq!(
            bytes,
            [
                0x31, 51, 200, 1, 0x00, 0x64, 0xd8, 0xf7, // fixed fields
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
                0x00, // 2001:db8::100
            ],
        );
        assert_eq!(
            internet_checksum(
                &bytes,
                pseudo_header_sum(SRC6, MULTICAST_GROUP_V6, IPPROTO_VRRP, bytes.len())
            ),
            0
        );
    }

    /// An advert of keepalived 2.2.7's IPv6 `vrrp_instance` (VRID 51, priority 100,
    /// advert_int 1, VIP 2001:db8::100), captured by the interop test from the link-local
    /// address of MAC 02:00:c0:00:02:63; our encoder writes the same bytes.
    #[test]
    fn keepalived_ipv6_advert_decodes_and_reencodes() {
        let src: Ipv6Addr = "fe80::c0ff:fe00:263".parse().unwrap();
        let captured = [
            0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0x7c, 0x2c, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0x01, 0x00,
        ];
        let advert = decode_message(&rx6(&captured, 255, src), &expect6(&[VIP6])).unwrap();
        assert_eq!(advert, advert6(100));
        assert_eq!(
            encode(&advert, &Version::V3, src, MULTICAST_GROUP_V6),
            captured
        );
    }

    /// The pseudo-header's length is a 32-bit field over IPv6: its high half counts too.
    #[test]
    fn pseudo_header_lengths_above_16_bits() {
        let a = pseudo_header_sum(SRC6, MULTICAST_GROUP_V6, 58, 0x1_0004);
        let b = pseudo_header_sum(SRC6, MULTICAST_GROUP_V6, 58, 0x0005);
        assert_eq!(a, b, "0x1_0004 sums as 0x0001 + 0x0004");
    }

    #[test]
    fn ipv6_round_trips() {
        let second = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);
        let a = Advert {
            interval: Duration::from_millis(250),
            addresses: vec![VIP6, second],
            ..advert6(150)
        };
        let bytes = encode(&a, &Version::V3, SRC6, MULTICAST_GROUP_V6);
        assert_eq!(bytes.len(), 8 + 2 * 16);
        assert_eq!(
            decode_message(&rx6(&bytes, 255, SRC6), &expect6(&[second, VIP6])),
            Ok(a)
        );
    }

    #[test]
    fn every_ipv6_check_rejects_with_its_reason() {
        let expect = expect6(&[VIP6]);
        let good = encode(&advert6(200), &Version::V3, SRC6, MULTICAST_GROUP_V6);
        let check =
            |message: &[u8], hop_limit| decode_message(&rx6(message, hop_limit, SRC6), &expect);
        assert!(check(&good, 255).is_ok());
        assert_eq!(check(&good, 254), Err(Reject::Ttl(254)));
        assert_eq!(check(&good, 0), Err(Reject::Ttl(0)), "no hop limit known");
        assert_eq!(check(&good[..7], 255), Err(Reject::Truncated));
        assert_eq!(check(&[], 255), Err(Reject::Truncated));

        // Version 2 does not exist over IPv6, whatever the configuration says.
        let v2 = Version::V2 { auth_pass: None };
        let v2_packet = encode(&advert6(200), &v2, SRC6, MULTICAST_GROUP_V6);
        assert_eq!(check(&v2_packet, 255), Err(Reject::Version(2)));
        let expect_v2 = Expect {
            version: &v2,
            ..expect6(&[VIP6])
        };
        assert_eq!(
            decode_message(&rx6(&v2_packet, 255, SRC6), &expect_v2),
            Err(Reject::Version(2))
        );

        let mut bad = good.clone();
        bad[0] = 0x32;
        assert_eq!(check(&bad, 255), Err(Reject::Type(2)));
        let mut other = good.clone();
        other[1] = 52;
        assert_eq!(check(&other, 255), Err(Reject::OtherVrid(52)));
        let mut count = good.clone();
        count[3] = 2;
        assert_eq!(check(&count, 255), Err(Reject::Count));
        // An IPv4-sized address list (4 bytes per address) is not an IPv6 one.
        let v4_sized = encode(&advert(200), &Version::V3, SRC, MULTICAST_GROUP);
        assert_eq!(check(&v4_sized, 255), Err(Reject::Count));
        let mut extra = good.clone();
        extra.extend_from_slice(&[0; 4]);
        assert_eq!(check(&extra, 255), Err(Reject::Count));
        let mut sum = good.clone();
        sum[7] ^= 1;
        assert_eq!(check(&sum, 255), Err(Reject::Checksum));
        // The pseudo-header covers both addresses: another sender or destination breaks it.
        let elsewhere = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
        assert_eq!(
            decode_message(&rx6(&good, 255, elsewhere), &expect),
            Err(Reject::Checksum)
        );
        let unicast = Received {
            dst: elsewhere,
            ..rx6(&good, 255, SRC6)
        };
        assert_eq!(decode_message(&unicast, &expect), Err(Reject::Checksum));
        // A checksum without the pseudo-header is rejected.
        let mut no_pseudo = good.clone();
        no_pseudo[6..8].copy_from_slice(&[0, 0]);
        let s = internet_checksum(&no_pseudo, 0);
        no_pseudo[6..8].copy_from_slice(&s.to_be_bytes());
        assert_eq!(check(&no_pseudo, 255), Err(Reject::Checksum));

        let wrong_vip = encode(
            &Advert {
                addresses: vec![Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)],
                ..advert6(200)
            },
            &Version::V3,
            SRC6,
            MULTICAST_GROUP_V6,
        );
        assert_eq!(check(&wrong_vip, 255), Err(Reject::Addresses));
        let mut forged = good.clone();
        forged[4..8].copy_from_slice(&[0, 0, 0, 0]);
        let s = internet_checksum(
            &forged,
            pseudo_header_sum(SRC6, MULTICAST_GROUP_V6, IPPROTO_VRRP, forged.len()),
        );
        forged[6..8].copy_from_slice(&s.to_be_bytes());
        assert_eq!(check(&forged, 255), Err(Reject::Interval));
    }

    /// Hostile IPv6 input never panics: mutated and truncated messages, any hop limit, any
    /// addresses.
    #[test]
    fn arbitrary_ipv6_bytes_never_panic() {
        let expect = expect6(&[VIP6]);
        let good = encode(&advert6(200), &Version::V3, SRC6, MULTICAST_GROUP_V6);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut accepted = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut p = good.clone();
            let len = (x as usize) % (p.len() + 20);
            p.resize(len, (x >> 8) as u8);
            if !p.is_empty() && x & 1 == 0 {
                let i = (x as usize >> 3) % p.len();
                p[i] = (x >> 16) as u8;
            }
            let src = if x & 2 == 0 {
                SRC6
            } else {
                Ipv6Addr::from(u128::from(x) << 64 | u128::from(x.rotate_left(7)))
            };
            let hop_limit = if x & 4 == 0 { 255 } else { (x >> 24) as u8 };
            if decode_message(&rx6(&p, hop_limit, src), &expect).is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted > 0, "the unmodified advert got through sometimes");
    }
}
