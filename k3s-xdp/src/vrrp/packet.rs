//! The VRRP wire format for IPv4: version 3 (RFC 9568, which obsoletes RFC 5798) and version 2
//! (RFC 3768) with simple-password authentication, for peers configured like the seeds'
//! keepalived (`auth_type PASS`).
//!
//! ```text
//!  v3: | ver=3 | type=1 | VRID | priority | count | rsvd(4) max_adver_int(12, centiseconds) |
//!      | checksum | addresses...                                    (checksum with pseudo-header)
//!  v2: | ver=2 | type=1 | VRID | priority | count | auth type | adver_int (seconds) |
//!      | checksum | addresses... | authentication data (8 bytes)   (checksum of the message only)
//! ```
//!
//! [`decode`] checks everything RFC 9568 section 7.1 asks a receiver to check (TTL 255, version,
//! type, VRID, address count, checksum, authentication, the advertised addresses) and says which
//! check failed, so each rejection is counted by reason.

use std::{fmt, net::Ipv4Addr, time::Duration};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The VRRP multicast group, 224.0.0.18.
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
const TYPE_ADVERTISEMENT: u8 = 1;
const AUTH_NONE: u8 = 0;
const AUTH_SIMPLE: u8 = 1;

/// How adverts of this instance are written and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    V3,
    /// Version 2, with `auth_pass` (at most 8 bytes) or no authentication.
    V2 {
        auth_pass: Option<Vec<u8>>,
    },
}

/// One advertisement, as sent or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    pub priority: u8,
    /// The advertisement interval (centisecond resolution in v3, seconds in v2).
    pub interval: Duration,
    pub addresses: Vec<Ipv4Addr>,
}

/// Why a received packet was rejected; each is counted under its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its fixed headers.
    Truncated,
    /// IP TTL other than 255: it crossed a router (RFC 9568 7.1).
    Ttl(u8),
    /// VRRP version other than the one configured.
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
    NotAPeer(Ipv4Addr),
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
            Reject::Ttl(t) => write!(f, "IP TTL {t}, expected 255"),
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
pub fn encode(advert: &Advert, version: &Version, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let count = advert.addresses.len().min(255) as u8;
    let mut p = Vec::with_capacity(8 + 4 * usize::from(count) + 8);
    match version {
        Version::V3 => {
            let centis = (advert.interval.as_millis() / 10).clamp(1, 0x0fff) as u16;
            p.push(0x30 | TYPE_ADVERTISEMENT);
            p.push(advert.vrid);
            p.push(advert.priority);
            p.push(count);
            p.extend_from_slice(&centis.to_be_bytes());
            p.extend_from_slice(&[0, 0]);
            for a in advert.addresses.iter().take(255) {
                p.extend_from_slice(&a.octets());
            }
            let sum = checksum(&p, Some((src, dst)));
            p[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        Version::V2 { auth_pass } => {
            let secs = advert.interval.as_secs().clamp(1, 255) as u8;
            p.push(0x20 | TYPE_ADVERTISEMENT);
            p.push(advert.vrid);
            p.push(advert.priority);
            p.push(count);
            p.push(if auth_pass.is_some() {
                AUTH_SIMPLE
            } else {
                AUTH_NONE
            });
            p.push(secs);
            p.extend_from_slice(&[0, 0]);
            for a in advert.addresses.iter().take(255) {
                p.extend_from_slice(&a.octets());
            }
            let mut auth = [0u8; 8];
            if let Some(pass) = auth_pass {
                let n = pass.len().min(8);
                auth[..n].copy_from_slice(&pass[..n]);
            }
            p.extend_from_slice(&auth);
            let sum = checksum(&p, None);
            p[6..8].copy_from_slice(&sum.to_be_bytes());
        }
    }
    p
}

/// What the receiver checks a packet against.
pub struct Expect<'a> {
    pub vrid: u8,
    pub version: &'a Version,
    /// The configured virtual addresses (order does not matter).
    pub addresses: &'a [Ipv4Addr],
}

/// Decodes a received IPv4 packet (IP header included, as a raw socket returns it).
/// Returns the sender's address and the advert.
pub fn decode(packet: &[u8], expect: &Expect<'_>) -> Result<(Ipv4Addr, Advert), Reject> {
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
    let ttl = packet[8];
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    if ttl != 255 {
        return Err(Reject::Ttl(ttl));
    }
    let vrrp = &packet[ihl..end];
    let version = vrrp[0] >> 4;
    let kind = vrrp[0] & 0x0f;
    let expected_version = match expect.version {
        Version::V3 => 3,
        Version::V2 { .. } => 2,
    };
    if version != expected_version {
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
    if vrrp.len() != 8 + 4 * count + auth_len {
        return Err(Reject::Count);
    }
    let pseudo = (version == 3).then_some((src, dst));
    if checksum(vrrp, pseudo) != 0 {
        return Err(Reject::Checksum);
    }
    let interval = if version == 3 {
        Duration::from_millis(u64::from(u16::from_be_bytes([vrrp[4], vrrp[5]]) & 0x0fff) * 10)
    } else {
        Duration::from_secs(u64::from(vrrp[5]))
    };
    if version == 2 {
        let auth_type = vrrp[4];
        let data = &vrrp[8 + 4 * count..];
        let ok = match expect.version {
            Version::V2 {
                auth_pass: Some(pass),
            } => {
                let mut wanted = [0u8; 8];
                let n = pass.len().min(8);
                wanted[..n].copy_from_slice(&pass[..n]);
                auth_type == AUTH_SIMPLE && data == wanted
            }
            _ => auth_type == AUTH_NONE,
        };
        if !ok {
            return Err(Reject::Auth);
        }
    }
    if interval.is_zero() {
        return Err(Reject::Interval);
    }
    let addresses: Vec<Ipv4Addr> = vrrp[8..8 + 4 * count]
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect();
    let mut got = addresses.clone();
    let mut wanted = expect.addresses.to_vec();
    got.sort();
    wanted.sort();
    if got != wanted {
        return Err(Reject::Addresses);
    }
    Ok((
        src,
        Advert {
            vrid,
            priority,
            interval,
            addresses,
        },
    ))
}

/// The Internet checksum of `data`, with the IPv4 pseudo-header (protocol 112) when given.
/// Over a packet whose checksum field is filled, a correct checksum yields 0.
pub fn checksum(data: &[u8], pseudo: Option<(Ipv4Addr, Ipv4Addr)>) -> u16 {
    let mut sum: u32 = 0;
    if let Some((src, dst)) = pseudo {
        for part in [src.octets(), dst.octets()] {
            sum += u32::from(u16::from_be_bytes([part[0], part[1]]));
            sum += u32::from(u16::from_be_bytes([part[2], part[3]]));
        }
        sum += u32::from(IPPROTO_VRRP);
        sum += data.len() as u32;
    }
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
        assert_eq!(checksum(&bytes, None), 0);
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
        let s = checksum(&no_pseudo, None);
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
        let s = checksum(&forged, Some((SRC, MULTICAST_GROUP)));
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
}
