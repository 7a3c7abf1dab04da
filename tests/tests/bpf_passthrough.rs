//! BPF_PROG_TEST_RUN tests of the pass-through paths: whatever is not addressed to a configured
//! VIP:port:protocol leaves the program untouched with XDP_PASS, counted under its reason.

use k3s_xdp_common::reason;
use k3s_xdp_tests::{
    bpf::{action_name, have_root, XdpHarness, XDP_PASS},
    packet::{self, Frame, Ipv4, ETH_P_ARP, ETH_P_IPV6, L3, L4, LB_MAC},
};
use std::net::SocketAddrV4;

const CONFIG: &str = r#"
interface = "eth1"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-2", address = "192.0.2.51:6443" },
]
"#;

fn harness() -> Option<XdpHarness> {
    if !have_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root (run `cargo xtask test`)");
        return None;
    }
    Some(XdpHarness::with_config(CONFIG).expect("load the XDP object and publish the config"))
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// Runs `bytes` and asserts: XDP_PASS, the frame untouched, and exactly one count under `why`
/// (and no other counter moved).
fn assert_passed_untouched(h: &mut XdpHarness, bytes: &[u8], why: u32) {
    let before = h.reasons().unwrap();
    let out = h.run(bytes).unwrap();
    assert_eq!(
        out.action,
        XDP_PASS,
        "expected XDP_PASS, got {}",
        action_name(out.action)
    );
    assert_eq!(out.data, bytes, "a passed frame must be left untouched");
    let after = h.reasons().unwrap();
    for (name, count) in &after {
        let expected = before[name] + u64::from(*name == reason::NAMES[why as usize]);
        assert_eq!(*count, expected, "counter {name}");
    }
}

#[test]
fn arp_and_ipv6_are_the_hosts_business() {
    let Some(mut h) = harness() else { return };
    let arp = Frame {
        eth_dst: [0xff; 6],
        eth_src: packet::CLIENT_MAC,
        vlan: None,
        l3: L3::Other {
            ether_type: ETH_P_ARP,
            payload: vec![
                0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 101, 0, 0, 0, 0, 0, 0, 192, 0,
                2, 100,
            ],
        },
    };
    assert_passed_untouched(&mut h, &arp.to_bytes(), reason::PASS_NOT_IP);
    let ipv6 = Frame {
        eth_dst: LB_MAC,
        eth_src: packet::CLIENT_MAC,
        vlan: None,
        l3: L3::Other {
            ether_type: ETH_P_IPV6,
            payload: vec![0x60; 40],
        },
    };
    // IPv6 goes through the IPv6 path (a tail call), which finds no VIP.
    assert_passed_untouched(&mut h, &ipv6.to_bytes(), reason::PASS_NOT_VIP);
}

#[test]
fn ipv4_not_addressed_to_a_vip_passes() {
    let Some(mut h) = harness() else { return };
    // ssh to the load balancer itself, a health-check reply, a tagged frame.
    let ssh = packet::tcp_syn(addr("192.0.2.101:40000"), addr("192.0.2.98:22"));
    assert_passed_untouched(&mut h, &ssh.to_bytes(), reason::PASS_NOT_VIP);
    let reply = packet::tcp(
        addr("192.0.2.50:6443"),
        addr("192.0.2.98:50000"),
        packet::TCP_ACK,
    );
    assert_passed_untouched(&mut h, &reply.to_bytes(), reason::PASS_NOT_VIP);
    let mut tagged = packet::udp(addr("192.0.2.101:5000"), addr("192.0.2.98:53"), b"query");
    tagged.vlan = Some(42);
    assert_passed_untouched(&mut h, &tagged.to_bytes(), reason::PASS_NOT_VIP);
}

#[test]
fn vrrp_adverts_pass() {
    let Some(mut h) = harness() else { return };
    let advert = Frame {
        eth_dst: [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12],
        eth_src: [0x00, 0x00, 0x5e, 0x00, 0x01, 51],
        vlan: None,
        l3: L3::Ipv4(Ipv4 {
            ttl: 255,
            ..Ipv4::new(
                "192.0.2.98".parse().unwrap(),
                "224.0.0.18".parse().unwrap(),
                L4::Raw {
                    protocol: 112,
                    bytes: vec![0x31, 51, 200, 1, 0, 100, 0, 0, 192, 0, 2, 100],
                },
            )
        }),
    };
    assert_passed_untouched(&mut h, &advert.to_bytes(), reason::PASS_NOT_VIP);
}

#[test]
fn a_vip_port_without_a_service_passes() {
    let Some(mut h) = harness() else { return };
    let ssh_to_vip = packet::tcp_syn(addr("192.0.2.101:40000"), addr("192.0.2.100:22"));
    assert_passed_untouched(&mut h, &ssh_to_vip.to_bytes(), reason::PASS_VIP_OTHER);
    // Right port, wrong protocol.
    let udp_6443 = packet::udp(addr("192.0.2.101:40000"), addr("192.0.2.100:6443"), b"x");
    assert_passed_untouched(&mut h, &udp_6443.to_bytes(), reason::PASS_VIP_OTHER);
}

#[test]
fn frames_too_short_to_judge_pass() {
    let Some(mut h) = harness() else { return };
    // Ethernet says IPv4, but only 10 bytes of IPv4 header follow.
    let full = packet::tcp_syn(addr("192.0.2.101:40000"), addr("192.0.2.100:6443")).to_bytes();
    assert_passed_untouched(&mut h, &full[..24], reason::PASS_MALFORMED);
    // A VLAN tag announced, nothing after it.
    let mut tagged = full.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    assert_passed_untouched(&mut h, &tagged[..16], reason::PASS_MALFORMED);
}

#[test]
fn stacked_vlan_tags_pass() {
    let Some(mut h) = harness() else { return };
    let mut bytes = packet::tcp_syn(addr("192.0.2.101:40000"), addr("192.0.2.100:6443")).to_bytes();
    // Two 802.1Q tags (QinQ): only one is supported, the host decides.
    bytes.splice(12..12, [0x81, 0x00, 0x00, 0x07, 0x81, 0x00, 0x00, 0x08]);
    assert_passed_untouched(&mut h, &bytes, reason::PASS_STACKED_VLAN);
}
