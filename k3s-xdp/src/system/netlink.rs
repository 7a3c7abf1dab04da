//! rtnetlink requests: interface lookup, IPv4 addresses.

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage, CacheInfo},
    link::LinkAttribute,
    AddressFamily,
};
use std::net::{IpAddr, Ipv4Addr};

/// An IPv4 address on an interface, with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl InterfaceAddress {
    /// Whether `other` is in this address's subnet.
    pub fn covers(&self, other: Ipv4Addr) -> bool {
        let len = u32::from(self.prefix_len.min(32));
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(other) & mask
    }
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

    /// IPv4 addresses of interface `ifindex`.
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<InterfaceAddress>> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        while let Some(msg) = stream.try_next().await? {
            if let Some(addr) = ipv4_of(&msg) {
                out.push(InterfaceAddress {
                    addr,
                    prefix_len: msg.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Adds `addr/prefix_len` to interface `ifindex`.
    pub async fn add_address(&self, ifindex: u32, address: InterfaceAddress) -> Result<()> {
        self.handle
            .address()
            .add(ifindex, IpAddr::V4(address.addr), address.prefix_len)
            .execute()
            .await
            .with_context(|| {
                format!(
                    "cannot add {}/{} to interface {ifindex}",
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
        let secs = lease.as_secs().clamp(1, u64::from(u32::MAX - 1)) as u32;
        let mut request = self
            .handle
            .address()
            .add(ifindex, IpAddr::V4(address.addr), address.prefix_len)
            .replace();
        let mut lifetime = CacheInfo::default();
        lifetime.ifa_preferred = secs;
        lifetime.ifa_valid = secs;
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::CacheInfo(lifetime));
        request.execute().await.with_context(|| {
            format!(
                "cannot add {}/{} to interface {ifindex}",
                address.addr, address.prefix_len
            )
        })
    }

    /// Removes `addr` (whatever its prefix) from interface `ifindex`; absent is not an error.
    pub async fn del_address(&self, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        while let Some(msg) = stream.try_next().await? {
            if ipv4_of(&msg) == Some(addr) {
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

fn ipv4_of(msg: &AddressMessage) -> Option<Ipv4Addr> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    msg.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
        _ => None,
    })
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
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(a("192.0.2.98", 24).covers(ip("192.0.2.100")));
        assert!(!a("192.0.2.98", 24).covers(ip("198.51.100.100")));
        assert!(a("192.0.2.98", 25).covers(ip("192.0.2.1")));
        assert!(!a("192.0.2.98", 25).covers(ip("192.0.2.200")));
        assert!(a("192.0.2.100", 32).covers(ip("192.0.2.100")));
        assert!(!a("192.0.2.98", 32).covers(ip("192.0.2.100")));
        assert!(a("192.0.2.98", 0).covers(ip("203.0.113.7")));
    }
}
