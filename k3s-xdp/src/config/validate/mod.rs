//! Rules that involve more than one key: duplicates, the limits of the data plane's maps, keys
//! that only apply to some health check kinds, SNAT pools; `[vrrp]`'s in `vrrp.rs` (VIPs it
//! must hold, version rules) and `[bgp]`'s in `bgp.rs`.
//!
//! Runs after `parse.rs` on the config it built, even when some keys were wrong: a rule skips
//! the keys [`Cx::is_bad`] marks, so each mistake is reported once, by the check closest to it.

use super::{
    defaults, duration, parse::join, parse::next_prime, parse::Cx, CheckKind, Config, Mode,
    Protocol, Service, SnatSource,
};

mod bgp;
mod vrrp;

use bgp::{announced, bgp_rules};
use k3s_xdp_common::{MAX_BACKENDS, MAX_PORTS_PER_VIP, MAX_SERVICES, MAX_SNAT_SOURCES, MAX_VIPS};
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};
use vrrp::vrrp_rules;

pub(super) fn validate(config: &Config, cx: &mut Cx) {
    if config.interface.is_none() && !cx.is_bad("interface") {
        cx.warn(
            "interface",
            "no `interface` set: `k3s-xdp run` needs --iface IFACE",
        );
    }
    service_identities(config, cx);
    data_plane_limits(config, cx);
    nat_to_dsr_hosts(config, cx);
    snat_sources(config, cx);
    for (i, service) in config.services.iter().enumerate() {
        let path = format!("service[{i}]");
        if cx.is_bad(&path) {
            continue;
        }
        backends(service, &path, cx);
        health(service, &path, cx);
    }
    if let Some(vrrp) = &config.vrrp {
        vrrp_rules(config, vrrp, cx);
    }
    if let Some(bgp) = &config.bgp {
        bgp_rules(config, bgp, cx);
    }
    if config.flow_sync.is_some() {
        flow_sync(config, cx);
    }
}

/// `[flow_sync]`: peers are other nodes' own addresses, each once; it serves nat services.
fn flow_sync(config: &Config, cx: &mut Cx) {
    let Some(f) = &config.flow_sync else {
        return;
    };
    if !cx.any_bad_under("flow_sync.peers") {
        let moving: HashSet<IpAddr> = config
            .held_addresses()
            .into_iter()
            .chain(
                config
                    .vrrp
                    .iter()
                    .flat_map(|v| v.virtual_ipaddress.iter().map(|a| a.addr)),
            )
            .collect();
        let own = config.vrrp.as_ref().and_then(|v| v.unicast_src_ip);
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (j, &p) in f.peers.iter().enumerate() {
            let path = format!("flow_sync.peers[{j}]");
            if let Some(&first) = seen.get(&p) {
                let line = cx.line_of(&format!("flow_sync.peers[{first}]"));
                cx.error(&path, format!("{p} is already listed (line {line})"));
            } else if moving.contains(&p) {
                cx.error(
                    &path,
                    format!(
                        "{p} is a VIP or an address that moves with them; a peer is another \
                         load balancer's own address"
                    ),
                );
            } else if Some(p) == own {
                cx.error(
                    &path,
                    format!("{p} is vrrp.unicast_src_ip, this node itself; list the other nodes"),
                );
            } else {
                seen.insert(p, j);
            }
        }
    }
    if !config.services.iter().any(|s| s.mode == Mode::Nat) && !cx.any_bad_under("service") {
        cx.warn(
            "flow_sync",
            "no service has mode = \"nat\": dsr flows need no sync (every node picks the same \
             backend), so [flow_sync] has nothing to share",
        );
    }
}

/// Unique names, and one service per VIP:port:protocol.
fn service_identities(config: &Config, cx: &mut Cx) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut listeners: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        let path = format!("service[{i}]");
        let name_path = join(&path, "name");
        if !cx.is_bad(&name_path) {
            if let Some(&first) = names.get(s.name.as_str()) {
                let line = cx.line_of(&format!("service[{first}].name"));
                cx.error(
                    &name_path,
                    format!(
                        "service name {:?} is already used by service[{first}] (line {line}); \
                         names must be unique",
                        s.name
                    ),
                );
            } else {
                names.insert(&s.name, i);
            }
        }
        let parts = ["vip", "port", "protocol"].map(|k| join(&path, k));
        if parts.iter().any(|p| cx.is_bad(p)) {
            continue;
        }
        let listener = (s.vip, s.port, s.protocol);
        if let Some(&first) = listeners.get(&listener) {
            let line = cx.line_of(&format!("service[{first}]"));
            let first_name = &config.services[first].name;
            cx.error(
                &path,
                format!(
                    "{}:{}/{} is already served by service {first_name:?} (line {line}); \
                     each VIP:port:protocol belongs to one service",
                    s.vip, s.port, s.protocol
                ),
            );
        } else {
            listeners.insert(listener, i);
        }
    }
}

/// A host that is a dsr backend of a VIP holds that VIP (on `lo`): nat traffic from the same VIP
/// (its SNAT source) then arrives from one of the host's own addresses, which its kernel drops.
/// A warning, not an error: a host can accept dsr traffic without holding the VIP (a DNAT rule).
fn nat_to_dsr_hosts(config: &Config, cx: &mut Cx) {
    let usable = |i: usize, cx: &Cx| {
        let path = format!("service[{i}]");
        !cx.is_bad(&path) && !cx.is_bad(&join(&path, "vip")) && !cx.is_bad(&join(&path, "mode"))
    };
    let mut dsr_hosts: HashMap<(IpAddr, IpAddr), (usize, usize)> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        if s.mode == Mode::Dsr && usable(i, cx) {
            for (j, b) in s.backends.iter().enumerate() {
                dsr_hosts.entry((s.vip, b.address.ip())).or_insert((i, j));
            }
        }
    }
    for (i, s) in config.services.iter().enumerate() {
        if s.mode != Mode::Nat || !usable(i, cx) {
            continue;
        }
        for (j, b) in s.backends.iter().enumerate() {
            let Some(&(di, dj)) = dsr_hosts.get(&(s.vip, b.address.ip())) else {
                continue;
            };
            let dsr = &config.services[di];
            let line = cx.line_of(&format!("service[{di}].backends[{dj}].address"));
            cx.warn(
                &format!("service[{i}].backends[{j}].address"),
                format!(
                    "{} is also a dsr backend of {} in service {:?} (line {line}), so it holds the \
                     VIP on lo, and its kernel will drop this nat service's packets, which come \
                     from the VIP; use one mode per VIP on a shared host, or another VIP",
                    b.address.ip(),
                    s.vip,
                    dsr.name
                ),
            );
        }
    }
}

/// What the BPF maps can hold (k3s_xdp_common's limits).
fn data_plane_limits(config: &Config, cx: &mut Cx) {
    let max_services = MAX_SERVICES as usize;
    if config.services.len() > max_services {
        cx.error(
            &format!("service[{max_services}]"),
            format!(
                "{} services: the data plane holds at most {max_services}",
                config.services.len()
            ),
        );
    }
    // Slot 0 of the backend map means "no backend".
    let max_backends = MAX_BACKENDS as usize - 1;
    let mut backends = 0usize;
    let mut per_vip: HashMap<IpAddr, usize> = HashMap::new();
    let mut vips: HashSet<IpAddr> = HashSet::new();
    for (i, s) in config.services.iter().enumerate() {
        let path = format!("service[{i}]");
        let before = backends;
        backends += s.backends.len();
        if before <= max_backends && backends > max_backends {
            cx.error(
                &join(&path, "backends"),
                format!(
                    "more than {max_backends} backends in all: the data plane holds at most \
                     {max_backends} (services up to this one have {backends})"
                ),
            );
        }
        let vip_path = join(&path, "vip");
        if cx.is_bad(&vip_path) {
            continue;
        }
        let on_vip = per_vip.entry(s.vip).or_default();
        *on_vip += 1;
        if *on_vip == MAX_PORTS_PER_VIP + 1 {
            cx.error(
                &vip_path,
                format!(
                    "more than {MAX_PORTS_PER_VIP} services on VIP {}: the data plane holds at \
                     most {MAX_PORTS_PER_VIP} ports per VIP",
                    s.vip
                ),
            );
        }
        if vips.insert(s.vip) && vips.len() == MAX_VIPS as usize + 1 {
            cx.error(
                &vip_path,
                format!(
                    "more than {MAX_VIPS} distinct VIPs: the data plane holds at most {MAX_VIPS}"
                ),
            );
        }
    }
}

/// SNAT pools: nat services only, each source once, no other service's VIP, within the data
/// plane's limits; with `[vrrp]`, every address of a pool moves with the VIPs.
fn snat_sources(config: &Config, cx: &mut Cx) {
    let vips: HashMap<IpAddr, &str> = config
        .services
        .iter()
        .map(|s| (s.vip, s.name.as_str()))
        .collect();
    let mut held: HashSet<IpAddr> = HashSet::new();
    for (i, s) in config.services.iter().enumerate() {
        let path = format!("service[{i}].snat_source");
        if cx.is_bad(&path) || s.snat_source == [SnatSource::Vip] {
            continue;
        }
        if s.mode == Mode::Dsr && !cx.is_bad(&format!("service[{i}].mode")) {
            cx.error(
                &path,
                "applies to mode = \"nat\" only: in dsr mode the backends answer the clients \
                 from the VIP themselves",
            );
            continue;
        }
        if s.snat_source.len() > MAX_SNAT_SOURCES {
            cx.error(
                &path,
                format!(
                    "{} SNAT sources: the data plane holds at most {MAX_SNAT_SOURCES} per service",
                    s.snat_source.len()
                ),
            );
        }
        let list = s.snat_source.len() > 1;
        let mut seen: HashMap<SnatSource, usize> = HashMap::new();
        for (j, source) in s.snat_source.iter().enumerate() {
            let at = if list {
                format!("{path}[{j}]")
            } else {
                path.clone()
            };
            if let Some(&first) = seen.get(source) {
                let line = cx.line_of(&format!("{path}[{first}]"));
                cx.error(&at, format!("{source} is already listed (line {line})"));
                continue;
            }
            seen.insert(*source, j);
            let SnatSource::Address(addr) = *source else {
                continue;
            };
            if addr == s.vip {
                continue;
            }
            if addr.is_ipv4() != s.vip.is_ipv4() {
                cx.error(
                    &at,
                    format!(
                        "{addr} is not of the family of VIP {}: the backends of an {} VIP see a \
                         source of that family (there is no NAT64)",
                        s.vip,
                        family(s.vip)
                    ),
                );
                continue;
            }
            if let Some(other) = vips.get(&addr) {
                cx.error(
                    &at,
                    format!(
                        "{addr} is the VIP of service {other:?}; a SNAT source is this \
                         service's VIP (\"vip\"), this node (\"node\") or an address of its own"
                    ),
                );
                continue;
            }
            held.insert(addr);
            if let Some(v) = &config.vrrp {
                if !v.virtual_ipaddress.iter().any(|a| a.addr == addr) {
                    cx.error(
                        &at,
                        format!(
                            "{addr} is not in vrrp.virtual_ipaddress, so VRRP would not move it \
                             with the VIPs and the backends' replies would reach the old master; \
                             add \"{addr}/{}\" (or with the prefix of its subnet)",
                            host_prefix(addr)
                        ),
                    );
                }
            }
        }
    }
    let addresses = vips.len() + held.len();
    if !held.is_empty() && addresses > MAX_VIPS as usize {
        cx.error(
            "service",
            format!(
                "{} VIPs and {} SNAT addresses: the data plane holds at most {MAX_VIPS} addresses",
                vips.len(),
                held.len()
            ),
        );
    }
}

fn backends(s: &Service, path: &str, cx: &mut Cx) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<_, usize> = HashMap::new();
    let dsr = s.mode == Mode::Dsr && !cx.is_bad(&join(path, "mode"));
    for (j, b) in s.backends.iter().enumerate() {
        let backend = format!("{path}.backends[{j}]");
        let name_path = join(&backend, "name");
        if !cx.is_bad(&name_path) {
            if let Some(&first) = names.get(b.name.as_str()) {
                let line = cx.line_of(&format!("{path}.backends[{first}].name"));
                cx.error(
                    &name_path,
                    format!(
                        "backend name {:?} is already used in this service (line {line}); \
                         names must be unique within a service",
                        b.name
                    ),
                );
            } else {
                names.insert(&b.name, j);
            }
        }
        let address_path = join(&backend, "address");
        if cx.is_bad(&address_path) {
            continue;
        }
        if !cx.is_bad(&join(path, "vip")) && b.address.is_ipv4() != s.vip.is_ipv4() {
            cx.error(
                &address_path,
                format!(
                    "backend {} is an {} address and VIP {} an {} one: a service's backends are \
                     of its VIP's family (there is no NAT64); make another service with a VIP of \
                     the backend's family",
                    b.address,
                    family(b.address.ip()),
                    s.vip,
                    family(s.vip)
                ),
            );
            continue;
        }
        if let Some(&first) = addresses.get(&b.address) {
            let line = cx.line_of(&format!("{path}.backends[{first}].address"));
            cx.error(
                &address_path,
                format!(
                    "address {} is already used by backend {:?} of this service (line {line})",
                    b.address, s.backends[first].name
                ),
            );
        } else {
            addresses.insert(b.address, j);
        }
        if dsr && !cx.is_bad(&join(path, "port")) && b.address.port() != s.port {
            cx.error(
                &address_path,
                format!(
                    "mode = \"dsr\" cannot rewrite ports: the backend must listen on the service \
                     port {}, found {} (use mode = \"nat\" to change ports)",
                    s.port, b.address
                ),
            );
        }
    }

    let count = s.backends.len() as u64;
    let size_path = join(path, "table_size");
    let per_backend = u64::from(defaults::TABLE_ENTRIES_PER_BACKEND);
    if count > 0 && !cx.is_bad(&size_path) && u64::from(s.table_size) <= per_backend * count {
        let needed = per_backend * count + 1;
        let hint = match u32::try_from(needed).ok().and_then(next_prime) {
            Some(p) if p <= defaults::TABLE_SIZE_MAX => {
                format!("set table_size to a prime above {}, like {p}", needed - 1)
            }
            _ => format!(
                "at most {} backends fit in the largest table ({})",
                (u64::from(defaults::TABLE_SIZE_MAX) - 1) / per_backend,
                defaults::TABLE_SIZE_MAX
            ),
        };
        cx.error(
            &size_path,
            format!(
                "table_size {} is too small for {count} backends: Maglev needs more than \
                 {per_backend} entries per backend; {hint}",
                s.table_size
            ),
        );
    }

    if !s.backends.is_empty() && s.backends.iter().all(|b| b.weight == 0) {
        cx.warn(
            &join(path, "backends"),
            "every backend has weight 0: this service takes no new flows",
        );
    }
}

/// Keys that only some check kinds use, the client certificate pair, timeout vs inter.
fn health(s: &Service, path: &str, cx: &mut Cx) {
    let health_path = join(path, "health");
    let h = &s.health;
    let check_path = join(&health_path, "check");
    if !cx.is_bad(&check_path) {
        let check = if cx.present(&check_path) {
            format!("check = \"{}\"", h.check)
        } else {
            format!("check = \"{}\" (the default)", h.check)
        };
        let https_only = [
            "path",
            "expect",
            "client_cert",
            "client_key",
            "bearer_token_file",
        ];
        for key in https_only {
            let key_path = join(&health_path, key);
            if h.check != CheckKind::Https && cx.present(&key_path) && !cx.is_bad(&key_path) {
                cx.error(
                    &key_path,
                    format!(
                        "`{key}` applies to check = \"https\" only, and this service has {check}"
                    ),
                );
            }
        }
        let ca_path = join(&health_path, "ca_file");
        if h.check == CheckKind::Tcp && cx.present(&ca_path) && !cx.is_bad(&ca_path) {
            cx.error(
                &ca_path,
                format!(
                    "`ca_file` applies to check = \"tls\" or \"https\" only, and this service has \
                     {check}"
                ),
            );
        }
        if h.check == CheckKind::Https {
            match (&h.client_cert, &h.client_key) {
                (Some(_), None) => cx.error(
                    &join(&health_path, "client_cert"),
                    "client_cert needs client_key too",
                ),
                (None, Some(_)) => cx.error(
                    &join(&health_path, "client_key"),
                    "client_key needs client_cert too",
                ),
                _ => {}
            }
        }
        if s.protocol == Protocol::Udp
            && h.port.is_none()
            && !cx.is_bad(&join(path, "protocol"))
            && !cx.is_bad(&join(&health_path, "port"))
        {
            cx.warn(
                &join(path, "protocol"),
                format!(
                    "health checks connect over TCP ({check}) to port {} of each backend; set \
                     health.port to a TCP port the backends answer on if {} is UDP only",
                    s.port, s.port
                ),
            );
        }
    }
    let timeout_path = join(&health_path, "timeout");
    let inter_path = join(&health_path, "inter");
    if !cx.is_bad(&timeout_path) && !cx.is_bad(&inter_path) && h.timeout > h.inter {
        cx.warn(
            &timeout_path,
            format!(
                "timeout ({}) is longer than inter ({}): a check may still run when the next is due",
                duration::format(h.timeout),
                duration::format(h.inter)
            ),
        );
    }
}

/// "IPv4" or "IPv6", for messages.
pub(super) fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// The prefix of a host route of `addr`'s family (32 or 128), for the hints of messages.
pub(super) fn host_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}
