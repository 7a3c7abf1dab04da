//! The routes of `[bgp]`: one `/32` (IPv6: `/128`) per announced VIP in a kernel table of its own, marked with
//! k3s-xdp's route protocol number so that k3s-xdp only ever lists, adds or removes its own
//! routes there (another program's routes in the same table are left alone). BIRD's kernel
//! protocol learns the table (`learn`), and its BGP export announces what it learned.

use super::Netlink;
use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    AddressFamily,
};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The route protocol number of k3s-xdp's routes (`ip route show table N proto 201`); BIRD
/// names it in its filter. Not one of iproute2's or the routing daemons' numbers.
pub const ROUTE_PROTOCOL: u8 = 201;

/// A host route in a table: where it goes, and whether it is k3s-xdp's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRoute {
    pub dst: IpAddr,
    pub ours: bool,
}

impl Netlink {
    /// The host routes of `table` (IPv4 `/32`, IPv6 `/128`).
    pub async fn host_routes(&self, table: u32) -> Result<Vec<TableRoute>> {
        let mut out = Vec::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut stream = self.handle.route().get(request).execute();
            while let Some(msg) = stream
                .try_next()
                .await
                .context("listing routes (netlink)")?
            {
                let host = match msg.header.address_family {
                    AddressFamily::Inet => 32,
                    AddressFamily::Inet6 => 128,
                    _ => continue,
                };
                if table_of(&msg) != table || msg.header.destination_prefix_length != host {
                    continue;
                }
                let dst = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                if let Some(dst) = dst {
                    out.push(TableRoute {
                        dst,
                        ours: msg.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Adds k3s-xdp's route for `vip` to `table`, through interface `ifindex`.
    pub async fn add_host_route(&self, table: u32, vip: IpAddr, ifindex: u32) -> Result<()> {
        self.handle
            .route()
            .add(route(table, vip).output_interface(ifindex).build())
            .execute()
            .await
            .with_context(|| format!("cannot add the route {vip}/{} to table {table}", host(vip)))
    }

    /// Removes k3s-xdp's route for `vip` from `table`; absent is not an error, another
    /// program's route for it is not touched.
    pub async fn del_host_route(&self, table: u32, vip: IpAddr) -> Result<()> {
        match self
            .handle
            .route()
            .del(route(table, vip).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "cannot remove the route {vip}/{} from table {table}",
                    host(vip)
                )
            }),
        }
    }
}

/// The prefix length of a host route of `vip`'s family.
fn host(vip: IpAddr) -> u8 {
    if vip.is_ipv4() {
        32
    } else {
        128
    }
}

fn route(table: u32, vip: IpAddr) -> RouteMessageBuilder<IpAddr> {
    // Scope link like `ip route add VIP/32 dev IFACE`; IPv6 routes have no scope but universe.
    let scope = if vip.is_ipv4() {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(vip, host(vip))
        .expect("a host prefix of the address's own family")
        .table_id(table)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .scope(scope)
}

/// A route's table: the attribute when present (tables above 255), else the header's.
fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}
