//! The system edge: interfaces, addresses and route/neighbour changes through rtnetlink, and
//! per-interface sysctls. Nothing here decides anything; callers (the daemon, VRRP) say what to
//! add or remove.

mod netlink;
pub mod raw;

pub use netlink::{watch_link, watch_routes_and_neighbours, InterfaceAddress, Netlink};

/// The sysctl file of IPv4 forwarding on `iface`.
pub fn ipv4_forwarding_path(iface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/forwarding")
}

/// Sets `/proc/sys/net/ipv4/conf/<iface>/forwarding` and returns the previous value, so it can
/// be restored. `bpf_fib_lookup` answers only for interfaces that forward.
pub fn set_ipv4_forwarding(iface: &str, on: bool) -> anyhow::Result<bool> {
    use anyhow::Context;
    let path = ipv4_forwarding_path(iface);
    let before = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    std::fs::write(&path, if on { "1" } else { "0" }).with_context(|| format!("writing {path}"))?;
    Ok(before.trim() == "1")
}
