//! What a new master says on the link so that hosts and switches learn that the VIPs moved to
//! its MAC address: a gratuitous ARP per IPv4 VIP, an unsolicited neighbour advertisement per
//! IPv6 VIP (RFC 4861 section 7.2.6, as RFC 9568 section 6.4.2 asks). Pure builders; the
//! sockets that send them are in `system::raw`.

use super::packet::{internet_checksum, pseudo_header_sum};
use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// IP protocol (next header) number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// All-nodes multicast, where unsolicited neighbour advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// The Override flag: receivers replace the link-layer address they have for the target.
const FLAG_OVERRIDE: u8 = 0x20;
/// Option type of the target link-layer address.
const OPTION_TARGET_LINK_LAYER_ADDRESS: u8 = 2;

/// The Ethernet frame of a gratuitous ARP request for `addr` from `mac`: a broadcast ARP
/// request for itself (RFC 5227 "ARP announcement"), which every host and switch on the segment
/// learns from.
pub fn gratuitous_arp(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&addr.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&addr.octets());
    f
}

/// The ICMPv6 message of an unsolicited neighbour advertisement for `target` at `mac`, sent
/// from `src` to all nodes (ff02::1) with hop limit 255: Override set (replace what you have),
/// Router and Solicited clear, the target link-layer address option carrying `mac`. The
/// checksum covers the IPv6 pseudo-header from `src` to ff02::1.
pub fn unsolicited_na(src: Ipv6Addr, target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&[NEIGHBOUR_ADVERTISEMENT, 0, 0, 0]); // type, code, checksum
    m.extend_from_slice(&[FLAG_OVERRIDE, 0, 0, 0]); // R=0 S=0 O=1, reserved
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[OPTION_TARGET_LINK_LAYER_ADDRESS, 1]); // length in units of 8 bytes
    m.extend_from_slice(&mac);
    let sum = internet_checksum(
        &m,
        pseudo_header_sum(src, ALL_NODES, IPPROTO_ICMPV6, m.len()),
    );
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_layout() {
        let f = gratuitous_arp([2, 0, 0, 0, 0, 0x98], Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[28..32], &[192, 0, 2, 100], "sender IP");
        assert_eq!(
            &f[38..42],
            &[192, 0, 2, 100],
            "target IP: the same (gratuitous)"
        );
    }

    /// An unsolicited NA for 2001:db8::100 at 02:00:c0:00:02:62 from fe80::98, built by hand
    /// from RFC 4861 sections 4.4 and 4.6.1.
    #[test]
    fn unsolicited_na_matches_the_rfc_layout() {
        let src = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x98);
        let vip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
        let m = unsolicited_na(src, vip, [0x02, 0x00, 0xc0, 0x00, 0x02, 0x62]);
        // Pseudo-header: fe80+0098 + ff02+0001 + 0020 (length) + 003a (ICMPv6) = 0x1fe75;
        // message: 8800+2000+2001+0db8+0100+0201+0200+c000+0262 = 0x19d1c;
        // 0x1fe75+0x19d1c = 0x39b91, folded 9b94, checksum = ~9b94 = 646b.
        assert_eq!(
            m,
            [
                136, 0, 0x64, 0x6b, // type 136, code 0, checksum
                0x20, 0, 0, 0, // Router 0, Solicited 0, Override 1
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, // target
                2, 1, 0x02, 0x00, 0xc0, 0x00, 0x02, 0x62, // target link-layer address option
            ]
        );
        assert_eq!(
            internet_checksum(&m, pseudo_header_sum(src, ALL_NODES, IPPROTO_ICMPV6, 32)),
            0
        );
    }
}
