//! The VRRP codec, IPv4 and IPv6: a received packet checked against a virtual router's
//! expectations (version 3, version 2 with or without `auth_pass`), as the runtime's
//! receivers do (an IPv4 packet with its IP header, an IPv6 message with its addresses and hop
//! limit beside it). The fuzzer can have the checksum made right, to get past it. Whatever
//! decodes, encodes and decodes again to the same advert; and adverts built from the input
//! (`mode & 16`) encode and decode back to themselves.

#![no_main]

use k3s_xdp::vrrp::packet::{
    self, decode, decode_message, encode, internet_checksum, ipv4_header, pseudo_header_sum,
    Advert, Expect, Family, Received, Version, IPPROTO_VRRP,
};
use k3s_xdp_fuzz::Bytes;
use libfuzzer_sys::fuzz_target;
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

/// Documentation addresses: what an input picks its addresses from, besides raw bytes.
const V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(192, 0, 2, 100),
    Ipv4Addr::new(192, 0, 2, 200),
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(203, 0, 113, 9),
];
const V6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
];

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let mode = input.u8();
    let version = match (mode >> 1) & 3 {
        0 | 3 => Version::V3,
        1 => Version::V2 { auth_pass: None },
        _ => Version::V2 {
            auth_pass: Some(input.bytes(10).to_vec()),
        },
    };
    let fix_checksum = mode & 8 != 0;
    let round_trip = mode & 16 != 0;
    if mode & 1 == 0 {
        let addresses = addresses(&mut input, &V4, |b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        let expect = Expect {
            vrid: input.u8(),
            version: &version,
            addresses: &addresses,
        };
        if round_trip {
            // What `encode` writes, `decode` reads back unchanged.
            let (src, dst) = (V4[2], packet::MULTICAST_GROUP);
            let advert = built_advert(&mut input, &expect);
            let packet = ipv4_with_header(src, dst, &encode(&advert, &version, src, dst));
            assert_eq!(decode(&packet, &expect), Ok((src, advert)), "{packet:02x?}");
        } else {
            ipv4_packet(input.rest(), &expect, fix_checksum);
        }
    } else {
        let addresses = addresses(&mut input, &V6, |b| {
            Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"))
        });
        let expect = Expect {
            vrid: input.u8(),
            version: &version,
            addresses: &addresses,
        };
        let src = input.pick(&V6);
        let dst = input.pick(&[packet::MULTICAST_GROUP_V6, V6[2], V6[3]]);
        if round_trip {
            if version == Version::V3 {
                let advert = built_advert(&mut input, &expect);
                let message = encode(&advert, &version, src, dst);
                let received = Received {
                    src,
                    dst,
                    hop_limit: 255,
                    message: &message,
                };
                assert_eq!(
                    decode_message(&received, &expect),
                    Ok(advert),
                    "{message:02x?}"
                );
            }
        } else {
            let hop_limit = input.pick(&[255, 255, 255, 64, 0, 1, 254]);
            let mut message = input.rest().to_vec();
            if fix_checksum && message.len() >= 8 {
                message[6..8].fill(0);
                let pseudo = pseudo_header_sum(src, dst, IPPROTO_VRRP, message.len());
                let sum = internet_checksum(&message, pseudo);
                message[6..8].copy_from_slice(&sum.to_be_bytes());
            }
            let received = Received {
                src,
                dst,
                hop_limit,
                message: &message,
            };
            if let Ok(advert) = decode_message(&received, &expect) {
                encodes_back(&advert, &expect, src, dst);
            }
        }
    }
});

/// The configured addresses: up to 4, each one of `known` or raw bytes.
fn addresses<A: Family>(input: &mut Bytes, known: &[A; 4], read: impl Fn(&[u8]) -> A) -> Vec<A> {
    let n = input.u8() % 5;
    (0..n)
        .map(|_| {
            let i = input.u8();
            if i < 0x80 {
                known[usize::from(i) % known.len()]
            } else {
                let mut raw = [0u8; 16];
                for b in raw.iter_mut().take(A::LEN) {
                    *b = input.u8();
                }
                read(&raw[..A::LEN])
            }
        })
        .collect()
}

/// An IPv4 packet as the raw socket hands it over (IP header included).
fn ipv4_packet(packet: &[u8], expect: &Expect<'_, Ipv4Addr>, fix_checksum: bool) {
    let mut packet = packet.to_vec();
    if fix_checksum {
        if let Ok(received) = ipv4_header(&packet) {
            let at = received.message.as_ptr() as usize - packet.as_ptr() as usize;
            let (src, dst, len) = (received.src, received.dst, received.message.len());
            let message = &mut packet[at..at + len];
            message[6..8].fill(0);
            let pseudo = if message[0] >> 4 == 3 {
                pseudo_header_sum(src, dst, IPPROTO_VRRP, len)
            } else {
                0
            };
            let sum = internet_checksum(message, pseudo);
            message[6..8].copy_from_slice(&sum.to_be_bytes());
        }
    }
    if let Ok((src, advert)) = decode(&packet, expect) {
        let dst = ipv4_header(&packet).expect("it decoded").dst;
        encodes_back(&advert, expect, src, dst);
    }
}

/// An advert that decoded is one the codec can write: written again, it reads the same.
fn encodes_back<A: Family>(advert: &Advert<A>, expect: &Expect<'_, A>, src: A, dst: A) {
    let message = encode(advert, expect.version, src, dst);
    let received = Received {
        src,
        dst,
        hop_limit: 255,
        message: &message,
    };
    assert_eq!(
        decode_message(&received, expect).as_ref(),
        Ok(advert),
        "re-encoded: {message:02x?}"
    );
}

/// An advert of the configured router with the input's priority and interval, its addresses
/// in the input's order.
fn built_advert<A: Family>(input: &mut Bytes, expect: &Expect<'_, A>) -> Advert<A> {
    let priority = input.u8();
    let interval = match expect.version {
        Version::V3 => Duration::from_millis(10 * u64::from(input.u16() % 4095 + 1)),
        Version::V2 { .. } => Duration::from_secs(u64::from(input.u8().max(1))),
    };
    let mut addresses = expect.addresses.to_vec();
    if !addresses.is_empty() {
        let turn = usize::from(input.u8()) % addresses.len();
        addresses.rotate_left(turn);
    }
    Advert {
        vrid: expect.vrid,
        priority,
        interval,
        addresses,
    }
}

/// `message` behind an IPv4 header as the kernel delivers it (TTL 255, protocol 112).
fn ipv4_with_header(src: Ipv4Addr, dst: Ipv4Addr, message: &[u8]) -> Vec<u8> {
    let total = (20 + message.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 255, IPPROTO_VRRP, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(message);
    p
}
