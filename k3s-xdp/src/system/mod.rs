//! The system edge: interfaces, addresses, `[bgp]`'s routes and route/neighbour changes through
//! rtnetlink, and per-interface sysctls. Nothing here decides anything; callers (the daemon, VRRP) say what to
//! add or remove.

pub mod neighbours;
mod netlink;
pub mod raw;
mod routes;

pub use netlink::{watch_link, watch_routes_and_neighbours, InterfaceAddress, Netlink};
pub use routes::{TableRoute, ROUTE_PROTOCOL};

/// The sysctl file of the IPv4 setting `key` of `iface` (`forwarding`, `accept_local`).
pub fn ipv4_conf_path(iface: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/{key}")
}

/// Sets the IPv4 setting `key` of `iface` on or off and returns whether it was on, so it can
/// be restored.
pub fn set_ipv4_conf(iface: &str, key: &str, on: bool) -> anyhow::Result<bool> {
    use anyhow::Context;
    let path = ipv4_conf_path(iface, key);
    let before = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    std::fs::write(&path, if on { "1" } else { "0" }).with_context(|| format!("writing {path}"))?;
    Ok(before.trim() == "1")
}
