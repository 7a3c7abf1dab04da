//! Raw sockets for VRRP and gratuitous ARP, the system edge of `vrrp::runtime`:
//! - receiving: `AF_INET/SOCK_RAW/IPPROTO_VRRP` bound to the interface, joined to 224.0.0.18;
//!   the kernel hands over whole IPv4 packets, so the TTL can be checked;
//! - sending: `AF_INET/SOCK_RAW/IPPROTO_RAW` (we write the IPv4 header: TTL 255, our exact
//!   source address, protocol 112), bound to the interface;
//! - gratuitous ARP: `AF_PACKET/SOCK_RAW` on the interface.

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};
use tokio::io::unix::AsyncFd;

use crate::vrrp::packet::{IPPROTO_VRRP, MULTICAST_GROUP};

/// Receives VRRP packets (with their IPv4 header) on one interface.
pub struct VrrpReceiver {
    fd: AsyncFd<Socket>,
}

impl VrrpReceiver {
    pub fn open(iface: &str, ifindex: u32) -> Result<Self> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )
        .context("opening a raw VRRP socket (needs CAP_NET_RAW)")?;
        s.bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding the VRRP socket to {iface}"))?;
        s.join_multicast_v4_n(
            &MULTICAST_GROUP,
            &socket2::InterfaceIndexOrAddress::Index(ifindex),
        )
        .with_context(|| format!("joining 224.0.0.18 on {iface}"))?;
        s.set_nonblocking(true)?;
        // SAFETY: the Socket owns its descriptor and AsyncFd owns the Socket: the descriptor is
        // neither replaced nor closed while registered.
        let fd = unsafe { AsyncFd::register(s)? };
        Ok(VrrpReceiver { fd })
    }

    /// The next packet (IPv4 header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|inner| {
                // SAFETY: MaybeUninit<u8> has the layout of u8; recv only writes into it.
                let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
                inner.get_ref().recv(uninit)
            });
            match result {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Sends VRRP packets with our own IPv4 header.
pub struct VrrpSender {
    socket: Socket,
}

impl VrrpSender {
    pub fn open(iface: &str) -> Result<Self> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .context("opening a raw IP socket (needs CAP_NET_RAW)")?;
        s.bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding the VRRP sender to {iface}"))?;
        s.set_multicast_loop_v4(false)?;
        Ok(VrrpSender { socket: s })
    }

    /// Sends `payload` (a VRRP message) from `src` to `dst` with TTL 255.
    pub fn send(&self, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Result<()> {
        let mut p = Vec::with_capacity(20 + payload.len());
        p.extend_from_slice(&[0x45, 0xc0]); // DSCP CS6, as routing protocols use
        p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 255, IPPROTO_VRRP, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let sum = crate::vrrp::packet::internet_checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(payload);
        let to = SockAddr::from(SocketAddrV4::new(dst, 0));
        self.socket
            .send_to(&p, &to)
            .with_context(|| format!("sending a VRRP advert to {dst}"))?;
        Ok(())
    }
}

/// Sends gratuitous ARP on one interface.
pub struct ArpSender {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
}

const ETH_P_ARP: u16 = 0x0806;

impl ArpSender {
    pub fn open(ifindex: u32, mac: [u8; 6]) -> Result<Self> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            bail!(
                "opening a packet socket for gratuitous ARP: {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: fd is a fresh, valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ArpSender { fd, ifindex, mac })
    }

    /// Announces `addr` at our MAC: a broadcast ARP request for itself (RFC 5227 "ARP
    /// announcement"), which every host and switch on the segment learns from.
    pub fn announce(&self, addr: Ipv4Addr) -> Result<()> {
        let frame = gratuitous_arp(self.mac, addr);
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: buffer and address are valid for the call.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            bail!(
                "sending a gratuitous ARP for {addr}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

/// The Ethernet frame of a gratuitous ARP request for `addr` from `mac`.
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
}
