//! The system edge: interfaces, addresses, `[bgp]`'s routes and route/neighbour changes through
//! rtnetlink, and per-interface sysctls. Nothing here decides anything; callers (the daemon, VRRP) say what to
//! add or remove.

pub mod bpf_link;
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

/// The sysctl file of the IPv6 setting `key` of `iface` (`forwarding`, `accept_ra`).
pub fn ipv6_conf_path(iface: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{iface}/{key}")
}
