//! Flow-sync datagrams as they arrive: the wire decoder with its authentication check, alone
//! and behind the receiver's peer check. The first byte chooses the sender (a peer, the same
//! peer as an IPv4-mapped IPv6 address, a stranger) and whether the datagram gets the right
//! tag (computed here with the fixed key, apart from the code under test), so the fuzzer also
//! reaches the decoder behind the HMAC. What decodes is exactly what encodes back.

#![no_main]

use k3s_xdp::flowsync::{
    session::Receiver,
    wire::{decode, encode, Refusal, MAX_MESSAGE, TAG_LEN},
};
use k3s_xdp_fuzz::{key, KEY_BYTES};
use libfuzzer_sys::fuzz_target;
use ring::hmac;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

fuzz_target!(|data: &[u8]| {
    let Some((&how, datagram)) = data.split_first() else {
        return;
    };
    let mut datagram = datagram.to_vec();
    if how & 1 != 0 && datagram.len() >= TAG_LEN {
        let signed = datagram.len() - TAG_LEN;
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, KEY_BYTES),
            &datagram[..signed],
        );
        datagram[signed..].copy_from_slice(tag.as_ref());
    }
    let key = key();
    let decoded = decode(&datagram, &key);
    match &decoded {
        Ok(message) => {
            assert!(datagram.len() <= MAX_MESSAGE);
            assert_eq!(encode(message, &key), datagram, "{message:?}");
        }
        Err(Refusal::Oversized) => assert!(datagram.len() > MAX_MESSAGE),
        Err(Refusal::Malformed | Refusal::Unauthenticated) => {}
        Err(other) => panic!("the decoder alone cannot say {other:?}"),
    }

    let from = match (how >> 1) & 3 {
        0 | 1 => IpAddr::V4(PEER),
        2 => IpAddr::V6(PEER.to_ipv6_mapped()),
        _ => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)),
    };
    let mut receiver = Receiver::new(key, &[IpAddr::V4(PEER), "2001:db8::11".parse().unwrap()]);
    let taken = receiver.take(SocketAddr::new(from, 3780), &datagram);
    let stranger = (how >> 1) & 3 == 3;
    match (&taken, &decoded) {
        (Err(Refusal::NotAPeer), _) => assert!(stranger),
        (Ok(t), Ok(m)) => {
            // A first message starts an epoch, unless it is epoch 0 (where a window starts).
            assert!(!stranger && t.new_epoch == (m.epoch > 0) && t.message == *m);
            let view = receiver.peer(IpAddr::V4(PEER)).expect("a peer");
            assert_eq!((view.messages, view.entries), (1, m.entries.len() as u64));
        }
        // A first message with sequence number 0 is refused by the window.
        (Err(Refusal::Malformed), Ok(m)) => assert!(!stranger && m.seq == 0),
        (Err(why), Err(decoder)) => assert_eq!(why, decoder),
        (t, d) => panic!("the receiver says {t:?}, the decoder {d:?}"),
    }
    let refused: u64 = receiver.refused().iter().map(|(_, n)| n).sum();
    assert_eq!(
        refused,
        u64::from(taken.is_err()),
        "each refusal counted once"
    );
});
