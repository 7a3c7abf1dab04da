//! rtnetlink requests: interface lookup, addresses of both families.

use crate::vrrp::packet::Family;
use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo},
    link::LinkAttribute,
    AddressFamily,
};
use std::net::IpAddr;

/// An address on an interface, with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl InterfaceAddress {
    /// Whether `other` is in this address's subnet (never for another family).
    pub fn covers(&self, other: impl Into<IpAddr>) -> bool {
        fn masked(bits: u128, width: u32, prefix_len: u8) -> u128 {
            let len = u32::from(prefix_len).min(width);
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            (bits << (128 - width)) & mask
        }
        match (self.addr, other.into()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                masked(u32::from(a).into(), 32, self.prefix_len)
                    == masked(u32::from(b).into(), 32, self.prefix_len)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                masked(a.into(), 128, self.prefix_len) == masked(b.into(), 128, self.prefix_len)
            }
            _ => false,
        }
    }

    /// The address if it is of family `A` (`Ipv4Addr`, `Ipv6Addr`).
    pub fn of_family<A: Family>(&self) -> Option<A> {
        A::of(self.addr)
    }
}

/// A lifetime the kernel reads as "forever" (`INFINITY_LIFE_TIME`).
const FOREVER: u32 = u32::MAX;

/// The request that adds `address` to `ifindex`, valid for `valid` seconds ([`FOREVER`]).
///
/// An IPv6 address goes without duplicate address detection (`nodad`): a VIP moves between
/// nodes on purpose, and a tentative address could not be used (nor announced) for a second
/// or more. And it is deprecated (`preferred_lft 0`): it takes traffic to it as any other, but
/// the host never picks it as the source of its own connections (RFC 6724, rule 3). Otherwise
/// the longest-prefix rule may prefer the VIP to the node's address: a health check from the
/// VIP is answered by a dsr backend to itself (it holds the VIP too), and in nat mode its port
/// may be one the data plane translates a client's connection from.
fn add_request(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    address: InterfaceAddress,
    valid: u32,
) -> rtnetlink::AddressAddRequest {
    let mut request = handle
        .address()
        .add(ifindex, address.addr, address.prefix_len);
    let ipv6 = address.addr.is_ipv6();
    let message = request.message_mut();
    if ipv6 {
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    if ipv6 || valid != FOREVER {
        let mut lifetime = CacheInfo::default();
        lifetime.ifa_preferred = if ipv6 { 0 } else { valid };
        lifetime.ifa_valid = valid;
        message
            .attributes
            .push(AddressAttribute::CacheInfo(lifetime));
    }
    request
}

/// A route netlink socket. Needs a tokio runtime; the connection task lives as long as it.
pub struct Netlink {
    pub(super) handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("cannot open a route netlink socket")?;
        let task = tokio::spawn(connection);
        Ok(Self { handle, task })
    }

    /// The index of interface `name`, with an error that says what to check.
    pub async fn ifindex(&self, name: &str) -> Result<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => bail!("no interface named {name}"),
            Err(e) => Err(anyhow!(e)).with_context(|| {
                format!("no interface named {name} (see `ip link`; set `interface` in the config or pass --iface)")
            }),
        }
    }

    /// The ids of the XDP programs attached to interface `ifindex` (in any mode).
    pub async fn xdp_programs(&self, ifindex: u32) -> Result<Vec<u32>> {
        use netlink_packet_route::link::LinkXdp;
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let link = links
            .try_next()
            .await?
            .ok_or_else(|| anyhow!("no interface with index {ifindex}"))?;
        let mut ids = Vec::new();
        for attr in link.attributes {
            if let LinkAttribute::Xdp(xdp) = attr {
                for x in xdp {
                    if let LinkXdp::ProgId(id)
                    | LinkXdp::DrvProgId(id)
                    | LinkXdp::SkbProgId(id)
                    | LinkXdp::HwProgId(id) = x
                    {
                        if id != 0 && !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
            }
        }
        Ok(ids)
    }

    /// The MAC address of interface `ifindex`.
    pub async fn mac(&self, ifindex: u32) -> Result<[u8; 6]> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let link = links
            .try_next()
            .await?
            .ok_or_else(|| anyhow!("no interface with index {ifindex}"))?;
        for attr in link.attributes {
            if let LinkAttribute::Address(bytes) = attr {
                if let Ok(mac) = <[u8; 6]>::try_from(bytes.as_slice()) {
                    return Ok(mac);
                }
            }
        }
        bail!("interface {ifindex} has no Ethernet address")
    }

    /// The addresses (both families) of interface `ifindex`.
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<InterfaceAddress>> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        while let Some(msg) = stream.try_next().await? {
            if let Some(addr) = address_of(&msg) {
                out.push(InterfaceAddress {
                    addr,
                    prefix_len: msg.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Adds `addr/prefix_len` to interface `ifindex` (IPv6: `nodad`, deprecated).
    pub async fn add_address(&self, ifindex: u32, address: InterfaceAddress) -> Result<()> {
        add_request(&self.handle, ifindex, address, FOREVER)
            .execute()
            .await
            .with_context(|| {
                format!(
                    "cannot add {}/{} to interface {ifindex}",
                    address.addr, address.prefix_len
                )
            })
    }

    /// Makes the IPv6 address `address`, already on `ifindex`, `nodad` and deprecated as the
    /// daemon's own are (see [`add_request`]), keeping it; an IPv4 address is left alone.
    pub async fn deprecate(&self, ifindex: u32, address: InterfaceAddress) -> Result<()> {
        if address.addr.is_ipv4() {
            return Ok(());
        }
        add_request(&self.handle, ifindex, address, FOREVER)
            .replace()
            .execute()
            .await
            .with_context(|| {
                format!(
                    "cannot mark {}/{} deprecated on interface {ifindex}",
                    address.addr, address.prefix_len
                )
            })
    }

    /// Adds or refreshes `addr/prefix_len` on interface `ifindex` with a lifetime: the kernel
    /// removes it by itself `lease` after the last refresh. A VRRP master leases its VIPs, so a
    /// master that crashes or hangs does not keep answering for them.
    pub async fn lease_address(
        &self,
        ifindex: u32,
        address: InterfaceAddress,
        lease: std::time::Duration,
    ) -> Result<()> {
        let secs = lease.as_secs().clamp(1, u64::from(FOREVER - 1)) as u32;
        let request = add_request(&self.handle, ifindex, address, secs).replace();
        request.execute().await.with_context(|| {
            format!(
                "cannot add {}/{} to interface {ifindex}",
                address.addr, address.prefix_len
            )
        })
    }

    /// Removes `addr` (whatever its prefix) from interface `ifindex`; absent is not an error.
    pub async fn del_address(&self, ifindex: u32, addr: IpAddr) -> Result<()> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        while let Some(msg) = stream.try_next().await? {
            if address_of(&msg) == Some(addr) {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("cannot remove {addr} from interface {ifindex}"))?;
            }
        }
        Ok(())
    }
}

/// The interface's own address in `msg`: IPv4's local address (IFA_LOCAL; IFA_ADDRESS is the
/// peer's on a point-to-point link), IPv6's IFA_ADDRESS (it has no IFA_LOCAL).
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    match msg.header.family {
        AddressFamily::Inet => msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Local(a @ IpAddr::V4(_)) => Some(*a),
            _ => None,
        }),
        AddressFamily::Inet6 => msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(a @ IpAddr::V6(_)) => Some(*a),
            _ => None,
        }),
        _ => None,
    }
}

/// Calls `on_change` (at most once per `quiet`) whenever IPv4 routes or neighbours change, so
/// cached next hops are resolved again. Runs until the task is dropped.
pub async fn watch_routes_and_neighbours(
    quiet: std::time::Duration,
    mut on_change: impl FnMut(),
) -> Result<()> {
    use futures::StreamExt;
    use rtnetlink::MulticastGroup;
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh, MulticastGroup::Ipv4Route])
            .context("subscribing to route and neighbour changes (netlink)")?;
    let task = tokio::spawn(connection);
    let _abort = AbortOnDrop(task);
    while messages.next().await.is_some() {
        // Coalesce a burst (a neighbour resolving, a route flap) into one notification.
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, messages.next()).await {}
        on_change();
    }
    Ok(())
}

/// Whether a link's flags say it can carry traffic: administratively up, with a carrier
/// (`IFF_LOWER_UP`; a veth whose peer is down, or an unplugged cable, has none).
pub fn link_is_up(flags: netlink_packet_route::link::LinkFlags) -> bool {
    use netlink_packet_route::link::LinkFlags;
    flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
}

/// Calls `on_change` with the state of interface `ifindex`'s link (see [`link_is_up`]): once
/// at start, then whenever it changes (a deleted interface counts as down). Runs until the task
/// is dropped.
pub async fn watch_link(ifindex: u32, mut on_change: impl FnMut(bool)) -> Result<()> {
    use futures::StreamExt;
    use rtnetlink::{
        packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage, MulticastGroup,
    };
    let (connection, handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .context("subscribing to link changes (netlink)")?;
    let task = tokio::spawn(connection);
    let _abort = AbortOnDrop(task);
    let mut links = handle.link().get().match_index(ifindex).execute();
    let mut up = match links.try_next().await? {
        Some(link) => link_is_up(link.header.flags),
        None => false,
    };
    on_change(up);
    while let Some((message, _)) = messages.next().await {
        let now = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
                if link.header.index == ifindex =>
            {
                link_is_up(link.header.flags)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link))
                if link.header.index == ifindex =>
            {
                false
            }
            _ => continue,
        };
        if now != up {
            up = now;
            on_change(up);
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_up_when_set_up_and_with_a_carrier() {
        use netlink_packet_route::link::LinkFlags;
        let up = LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp | LinkFlags::Multicast;
        assert!(link_is_up(up));
        assert!(!link_is_up(up - LinkFlags::LowerUp), "no carrier");
        assert!(!link_is_up(up - LinkFlags::Up), "set down");
        assert!(!link_is_up(LinkFlags::empty()));
    }

    #[test]
    fn an_address_covers_its_subnet_only() {
        let a = |s: &str, prefix_len| InterfaceAddress {
            addr: s.parse().unwrap(),
            prefix_len,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(a("192.0.2.98", 24).covers(ip("192.0.2.100")));
        assert!(!a("192.0.2.98", 24).covers(ip("198.51.100.100")));
        assert!(a("192.0.2.98", 25).covers(ip("192.0.2.1")));
        assert!(!a("192.0.2.98", 25).covers(ip("192.0.2.200")));
        assert!(a("192.0.2.100", 32).covers(ip("192.0.2.100")));
        assert!(!a("192.0.2.98", 32).covers(ip("192.0.2.100")));
        assert!(a("192.0.2.98", 0).covers(ip("203.0.113.7")));
        assert!(
            a("192.0.2.98", 99).covers(ip("192.0.2.98")),
            "a prefix past 32 is 32"
        );
        assert!(a("2001:db8::98", 64).covers(ip("2001:db8::100")));
        assert!(!a("2001:db8::98", 64).covers(ip("2001:db8:0:1::100")));
        assert!(a("2001:db8::98", 127).covers(ip("2001:db8::99")));
        assert!(!a("2001:db8::98", 128).covers(ip("2001:db8::99")));
        assert!(a("2001:db8::98", 0).covers(ip("fe80::1")));
        assert!(
            !a("192.0.2.98", 0).covers(ip("2001:db8::1")),
            "another family"
        );
        assert!(!a("::", 0).covers(ip("192.0.2.1")), "another family");
    }
}
