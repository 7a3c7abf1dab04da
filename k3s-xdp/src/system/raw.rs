//! Raw sockets for VRRP and its takeover announcements, the system edge of `vrrp::runtime`,
//! one set per address family ([`RouterSockets`]: [`Ipv4Sockets`], [`Ipv6Sockets`]).
//!
//! IPv4:
//! - receiving: `AF_INET/SOCK_RAW/IPPROTO_VRRP` bound to the interface, joined to 224.0.0.18;
//!   the kernel hands over whole IPv4 packets, so the TTL can be checked;
//! - sending: `AF_INET/SOCK_RAW/IPPROTO_RAW` (we write the IPv4 header: TTL 255, our exact
//!   source address, protocol 112), bound to the interface;
//! - gratuitous ARP: `AF_PACKET/SOCK_RAW` on the interface.
//!
//! IPv6 (RFC 9568 section 5.1.2; the kernel writes the IPv6 header, so options set it up):
//! - receiving: `AF_INET6/SOCK_RAW/112` bound to the interface, joined to ff02::12, with the
//!   hop limit (`IPV6_RECVHOPLIMIT`) and the destination (`IPV6_RECVPKTINFO`) of every packet
//!   in control messages: the hop limit must be 255 and the destination is part of the
//!   checksum, which the kernel does not verify for a raw socket without `IPV6_CHECKSUM` (we
//!   verify it, so a bad one is counted rather than dropped unseen);
//! - sending: `AF_INET6/SOCK_RAW/112` bound to the interface and to the source address (the
//!   interface's link-local one, or `unicast_src_ip`), hop limit 255 for multicast and unicast;
//!   the codec computes the checksum;
//! - unsolicited neighbour advertisements: `AF_INET6/SOCK_RAW/IPPROTO_ICMPV6` bound likewise,
//!   hop limit 255, to ff02::1, every incoming ICMPv6 type filtered out (it only sends).

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::{
    future::Future,
    io,
    mem::{size_of, MaybeUninit},
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};
use tokio::io::unix::AsyncFd;

use crate::vrrp::{
    announce::{self, ALL_NODES, ETH_P_ARP, IPPROTO_ICMPV6},
    packet::{
        internet_checksum, ipv4_header, Family, Received, Reject, IPPROTO_VRRP, MULTICAST_GROUP,
        MULTICAST_GROUP_V6,
    },
};

/// DSCP CS6 (network control), as routing protocols and keepalived mark their packets.
const TOS_NETWORK_CONTROL: u8 = 0xc0;

/// The sockets of one address family's virtual router on one interface.
pub trait RouterSockets: Send + Sync + 'static {
    type Addr: Family;

    /// Receives the next VRRP packet into `buf`: the message with what the IP layer says about
    /// it, or why it cannot be read (counted like any other rejection).
    fn recv<'b>(
        &self,
        buf: &'b mut [u8],
    ) -> impl Future<Output = io::Result<Result<Received<'b, Self::Addr>, Reject>>> + Send;

    /// Sends a VRRP message to `dst` (multicast group or unicast peer) from the source address
    /// the sockets were opened with, hop limit (TTL) 255.
    fn send(&self, dst: Self::Addr, message: &[u8]) -> Result<()>;

    /// Tells the link that `vip` is at this interface's MAC address.
    fn announce(&self, vip: Self::Addr) -> Result<()>;
}

/// A raw socket of `domain` for `protocol`, bound to `iface`.
fn raw_socket(domain: Domain, protocol: i32, iface: &str, what: &str) -> Result<Socket> {
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(protocol)))
        .with_context(|| format!("opening a raw {what} socket (needs CAP_NET_RAW)"))?;
    s.bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding the {what} socket to {iface}"))?;
    Ok(s)
}

/// Registers a receiving socket with tokio.
fn register(s: Socket) -> Result<AsyncFd<Socket>> {
    s.set_nonblocking(true)?;
    // SAFETY: the Socket owns its descriptor and AsyncFd owns the Socket: the descriptor is
    // neither replaced nor closed while registered.
    Ok(unsafe { AsyncFd::register(s)? })
}

/// Waits until `fd` is readable and reads with `read`, again while it would block.
async fn read_with<T>(
    fd: &AsyncFd<Socket>,
    mut read: impl FnMut(&Socket) -> io::Result<T>,
) -> io::Result<T> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| read(inner.get_ref())) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

fn setsockopt_int(s: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a plain int that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// IPv4: the VRRP receiver and sender and the gratuitous ARP sender of one interface.
pub struct Ipv4Sockets {
    receiver: VrrpReceiver,
    sender: VrrpSender,
    arp: ArpSender,
    src: Ipv4Addr,
}

impl Ipv4Sockets {
    /// Opens them on `iface`, sending from `src` and announcing `mac`.
    pub fn open(iface: &str, ifindex: u32, src: Ipv4Addr, mac: [u8; 6]) -> Result<Self> {
        Ok(Ipv4Sockets {
            receiver: VrrpReceiver::open(iface, ifindex)?,
            sender: VrrpSender::open(iface)?,
            arp: ArpSender::open(ifindex, mac)?,
            src,
        })
    }
}

impl RouterSockets for Ipv4Sockets {
    type Addr = Ipv4Addr;

    async fn recv<'b>(
        &self,
        buf: &'b mut [u8],
    ) -> io::Result<Result<Received<'b, Ipv4Addr>, Reject>> {
        let n = self.receiver.recv(buf).await?;
        Ok(ipv4_header(&buf[..n]))
    }

    fn send(&self, dst: Ipv4Addr, message: &[u8]) -> Result<()> {
        self.sender.send(self.src, dst, message)
    }

    fn announce(&self, vip: Ipv4Addr) -> Result<()> {
        self.arp.announce(vip)
    }
}

/// Receives VRRP packets (with their IPv4 header) on one interface.
pub struct VrrpReceiver {
    fd: AsyncFd<Socket>,
}

impl VrrpReceiver {
    pub fn open(iface: &str, ifindex: u32) -> Result<Self> {
        let s = raw_socket(Domain::IPV4, i32::from(IPPROTO_VRRP), iface, "VRRP")?;
        s.join_multicast_v4_n(
            &MULTICAST_GROUP,
            &socket2::InterfaceIndexOrAddress::Index(ifindex),
        )
        .with_context(|| format!("joining 224.0.0.18 on {iface}"))?;
        Ok(VrrpReceiver { fd: register(s)? })
    }

    /// The next packet (IPv4 header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_with(&self.fd, |s| {
            // SAFETY: MaybeUninit<u8> has the layout of u8; recv only writes into it.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
            s.recv(uninit)
        })
        .await
    }
}

/// Sends VRRP packets with our own IPv4 header.
pub struct VrrpSender {
    socket: Socket,
}

impl VrrpSender {
    pub fn open(iface: &str) -> Result<Self> {
        let s = raw_socket(Domain::IPV4, libc::IPPROTO_RAW, iface, "IP")?;
        s.set_multicast_loop_v4(false)?;
        Ok(VrrpSender { socket: s })
    }

    /// Sends `payload` (a VRRP message) from `src` to `dst` with TTL 255.
    pub fn send(&self, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Result<()> {
        let mut p = Vec::with_capacity(20 + payload.len());
        p.extend_from_slice(&[0x45, TOS_NETWORK_CONTROL]);
        p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 255, IPPROTO_VRRP, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let sum = internet_checksum(&p[..20], 0);
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

    /// Announces `addr` at our MAC (see [`announce::gratuitous_arp`]).
    pub fn announce(&self, addr: Ipv4Addr) -> Result<()> {
        let frame = announce::gratuitous_arp(self.mac, addr);
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
                size_of::<libc::sockaddr_ll>() as u32,
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

/// IPv6: the VRRP receiver and sender and the neighbour advertisement sender of one
/// interface.
pub struct Ipv6Sockets {
    receiver: AsyncFd<Socket>,
    sender: Socket,
    na: Socket,
    ifindex: u32,
    src: Ipv6Addr,
    mac: [u8; 6],
}

/// `ICMP6_FILTER` of `<netinet/icmp6.h>` (not in the libc crate).
const ICMP6_FILTER: i32 = 1;

impl Ipv6Sockets {
    /// Opens them on `iface`, sending from `src` (the interface's link-local address, or
    /// `unicast_src_ip`) and announcing `mac`.
    pub fn open(iface: &str, ifindex: u32, src: Ipv6Addr, mac: [u8; 6]) -> Result<Self> {
        let receiver = raw_socket(Domain::IPV6, i32::from(IPPROTO_VRRP), iface, "IPv6 VRRP")?;
        receiver
            .join_multicast_v6(&MULTICAST_GROUP_V6, ifindex)
            .with_context(|| format!("joining ff02::12 on {iface}"))?;
        receiver
            .set_recv_hoplimit_v6(true)
            .context("asking for the hop limit of received VRRP packets (IPV6_RECVHOPLIMIT)")?;
        setsockopt_int(&receiver, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
            .context("asking for the destination of received VRRP packets (IPV6_RECVPKTINFO)")?;

        let sender = Self::sending(iface, ifindex, src, i32::from(IPPROTO_VRRP), "IPv6 VRRP")?;
        sender.set_tclass_v6(u32::from(TOS_NETWORK_CONTROL))?;

        let na = Self::sending(
            iface,
            ifindex,
            src,
            i32::from(IPPROTO_ICMPV6),
            "ICMPv6 (neighbour advertisement)",
        )?;
        // It only sends: block every incoming type so its queue never fills.
        let block_all = [u32::MAX; 8];
        // SAFETY: the filter is plain data that lives for the call.
        let rc = unsafe {
            libc::setsockopt(
                na.as_raw_fd(),
                libc::IPPROTO_ICMPV6,
                ICMP6_FILTER,
                block_all.as_ptr().cast(),
                size_of::<[u32; 8]>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error())
                .context("filtering ICMPv6 input (ICMP6_FILTER)");
        }
        Ok(Ipv6Sockets {
            receiver: register(receiver)?,
            sender,
            na,
            ifindex,
            src,
            mac,
        })
    }

    /// A raw IPv6 socket for `protocol` that sends from `src` on `iface` with hop limit 255.
    fn sending(
        iface: &str,
        ifindex: u32,
        src: Ipv6Addr,
        protocol: i32,
        what: &str,
    ) -> Result<Socket> {
        let s = raw_socket(Domain::IPV6, protocol, iface, what)?;
        s.bind(&SockAddr::from(SocketAddrV6::new(src, 0, 0, ifindex)))
            .with_context(|| {
                format!("binding the {what} socket to {src} on {iface} (is it on {iface}, and not tentative?)")
            })?;
        s.set_multicast_hops_v6(255)?;
        s.set_unicast_hops_v6(255)?;
        s.set_multicast_if_v6(ifindex)?;
        s.set_multicast_loop_v6(false)?;
        Ok(s)
    }

    fn to(&self, dst: Ipv6Addr) -> SockAddr {
        // The scope matters for link-local and multicast destinations, and is ignored for others.
        SockAddr::from(SocketAddrV6::new(dst, 0, 0, self.ifindex))
    }
}

impl RouterSockets for Ipv6Sockets {
    type Addr = Ipv6Addr;

    async fn recv<'b>(
        &self,
        buf: &'b mut [u8],
    ) -> io::Result<Result<Received<'b, Ipv6Addr>, Reject>> {
        let (n, src, facts) = read_with(&self.receiver, |s| recv_with_ancillary(s, buf)).await?;
        Ok(Ok(facts.received(src, &buf[..n])))
    }

    fn send(&self, dst: Ipv6Addr, message: &[u8]) -> Result<()> {
        self.sender
            .send_to(message, &self.to(dst))
            .with_context(|| format!("sending a VRRP advert to {dst}"))?;
        Ok(())
    }

    fn announce(&self, vip: Ipv6Addr) -> Result<()> {
        let message = announce::unsolicited_na(self.src, vip, self.mac);
        self.na
            .send_to(&message, &self.to(ALL_NODES))
            .with_context(|| format!("sending an unsolicited neighbour advertisement for {vip}"))?;
        Ok(())
    }
}

/// What the IPv6 layer says about a received packet, from its control messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ancillary {
    /// `IPV6_HOPLIMIT`.
    pub hop_limit: Option<u8>,
    /// `IPV6_PKTINFO`'s address: the packet's destination.
    pub dst: Option<Ipv6Addr>,
}

impl Ancillary {
    /// A message from `src` as the codec judges it, with what these facts say about it.
    pub fn received(self, src: Ipv6Addr, message: &[u8]) -> Received<'_, Ipv6Addr> {
        Received {
            src,
            // Unknown destination: the checksum cannot match, and the packet is counted so.
            dst: self.dst.unwrap_or(Ipv6Addr::UNSPECIFIED),
            // Unknown hop limit: not proven to be 255.
            hop_limit: self.hop_limit.unwrap_or(0),
            message,
        }
    }
}

/// Room for an `IPV6_HOPLIMIT` and an `IPV6_PKTINFO` control message, and some to spare.
const CONTROL_LEN: usize = 128;

/// recvmsg(2) on `s` into `buf`: the length, the sender and the ancillary facts.
fn recv_with_ancillary(s: &Socket, buf: &mut [u8]) -> io::Result<(usize, Ipv6Addr, Ancillary)> {
    // u64s: control messages are aligned like size_t.
    let mut control = [0u64; CONTROL_LEN / 8];
    // SAFETY: sockaddr_in6 and msghdr are plain data; zeroed is a valid start.
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN as _;
    // SAFETY: every pointer in msg refers to a live buffer of the stated length.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let control_len = (msg.msg_controllen as usize).min(CONTROL_LEN);
    // SAFETY: the u64 array is CONTROL_LEN bytes; u8 has no alignment requirement.
    let bytes = unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), control_len) };
    let src = Ipv6Addr::from(from.sin6_addr.s6_addr);
    Ok((n as usize, src, ancillary(bytes)))
}

/// Reads the hop limit and the destination from a control buffer as recvmsg(2) fills it
/// (`struct cmsghdr` records, each aligned like `size_t`). Malformed records end the walk.
pub fn ancillary(control: &[u8]) -> Ancillary {
    const ALIGN: usize = size_of::<usize>();
    let header = size_of::<libc::cmsghdr>();
    let aligned = |n: usize| n.div_ceil(ALIGN) * ALIGN;
    let mut facts = Ancillary::default();
    let mut at = 0;
    while let Some(record) = control.get(at..at + header) {
        let len = usize::from_ne_bytes(record[..ALIGN].try_into().unwrap_or_default());
        let level = i32::from_ne_bytes(record[ALIGN..ALIGN + 4].try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(record[ALIGN + 4..ALIGN + 8].try_into().unwrap_or_default());
        let start = at + aligned(header);
        // The record must hold its header and fit the buffer (so `len` is small from here on).
        let Some(data) = len
            .checked_sub(header)
            .and_then(|n| start.checked_add(n))
            .and_then(|end| control.get(start..end))
        else {
            break;
        };
        // A record too short for its value is malformed too: the walk ends, keeping what
        // the records before it said.
        match (level, kind) {
            (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                let Some(v) = data.get(..4) else { break };
                let v = i32::from_ne_bytes(v.try_into().unwrap_or_default());
                facts.hop_limit = u8::try_from(v).ok();
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                let Some(dst) = data.get(..16).and_then(Ipv6Addr::read) else {
                    break;
                };
                facts.dst = Some(dst);
            }
            _ => {}
        }
        at += aligned(len);
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One control message as the kernel lays it out.
    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let header = size_of::<libc::cmsghdr>();
        let mut m = Vec::new();
        m.extend_from_slice(&(header + data.len()).to_ne_bytes());
        m.extend_from_slice(&level.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(m.len().div_ceil(8) * 8, 0);
        m
    }

    fn pktinfo(dst: Ipv6Addr) -> Vec<u8> {
        let mut d = dst.octets().to_vec();
        d.extend_from_slice(&7u32.to_ne_bytes());
        cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &d)
    }

    fn hoplimit(h: i32) -> Vec<u8> {
        cmsg(libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT, &h.to_ne_bytes())
    }

    #[test]
    fn the_record_layout_is_the_kernels() {
        // SAFETY: CMSG_LEN and CMSG_SPACE only compute sizes.
        let (len, space) = unsafe { (libc::CMSG_LEN(4), libc::CMSG_SPACE(20)) };
        assert_eq!(hoplimit(255).len(), 24);
        assert_eq!(len as usize, size_of::<libc::cmsghdr>() + 4);
        assert_eq!(pktinfo(Ipv6Addr::LOCALHOST).len(), space as usize);
    }

    #[test]
    fn reads_the_hop_limit_and_the_destination_in_any_order() {
        let dst = MULTICAST_GROUP_V6;
        let mut both = hoplimit(255);
        both.extend(pktinfo(dst));
        let want = Ancillary {
            hop_limit: Some(255),
            dst: Some(dst),
        };
        assert_eq!(ancillary(&both), want);
        let mut reversed = pktinfo(dst);
        reversed.extend(cmsg(libc::SOL_SOCKET, 29, &[1, 2, 3, 4, 5, 6, 7, 8]));
        reversed.extend(hoplimit(255));
        assert_eq!(ancillary(&reversed), want);
        assert_eq!(ancillary(&hoplimit(64)).hop_limit, Some(64));
        assert_eq!(ancillary(&[]), Ancillary::default());
        assert_eq!(ancillary(&hoplimit(-1)).hop_limit, None, "not a hop limit");
    }

    #[test]
    fn a_record_too_short_for_its_value_ends_the_walk_keeping_what_came_before() {
        let dst = MULTICAST_GROUP_V6;
        let mut short_pktinfo = hoplimit(255);
        short_pktinfo.extend(pktinfo(dst));
        short_pktinfo.extend(cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &[0xff; 8]));
        short_pktinfo.extend(hoplimit(1));
        assert_eq!(
            ancillary(&short_pktinfo),
            Ancillary {
                hop_limit: Some(255),
                dst: Some(dst),
            }
        );
        let mut short_hoplimit = pktinfo(dst);
        short_hoplimit.extend(hoplimit(255));
        short_hoplimit.extend(cmsg(libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT, &[1, 0]));
        short_hoplimit.extend(pktinfo(std::net::Ipv6Addr::UNSPECIFIED));
        assert_eq!(
            ancillary(&short_hoplimit),
            Ancillary {
                hop_limit: Some(255),
                dst: Some(dst),
            }
        );
    }

    /// Without the facts, the packet cannot pass: hop limit 0, and a destination (::) that
    /// makes the checksum fail.
    #[test]
    fn a_message_without_its_facts_is_not_proven() {
        let src = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        let r = Ancillary::default().received(src, &[3, 1]);
        assert_eq!(
            (r.src, r.dst, r.hop_limit, r.message),
            (src, Ipv6Addr::UNSPECIFIED, 0, &[3u8, 1][..])
        );
        let mut facts = hoplimit(255);
        facts.extend(pktinfo(MULTICAST_GROUP_V6));
        let r = ancillary(&facts).received(src, &[]);
        assert_eq!((r.dst, r.hop_limit), (MULTICAST_GROUP_V6, 255));
    }

    /// A truncated or lying buffer ends the walk; nothing panics.
    #[test]
    fn malformed_control_messages_never_panic() {
        let mut good = hoplimit(255);
        good.extend(pktinfo(MULTICAST_GROUP_V6));
        for cut in 0..good.len() {
            let _ = ancillary(&good[..cut]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = ancillary(&bad);
            }
        }
        // A record that claims to be shorter than its header, or longer than the buffer.
        let mut short = hoplimit(255);
        short[..8].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(ancillary(&short), Ancillary::default());
        let mut long = hoplimit(255);
        long[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(ancillary(&long), Ancillary::default());
    }
}
