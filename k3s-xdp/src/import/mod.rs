//! `k3s-xdp import`: from the haproxy.cfg and keepalived.conf an HA k3s cluster runs today to
//! the equivalent k3s-xdp TOML. Every directive without an equivalent is named in a warning
//! with its file and line; nothing is dropped silently.
//!
//! The mapping, in the operators' vocabulary:
//! - each `frontend` (or `listen`) with its `default_backend` becomes a `[[service]]` named after
//!   the HAProxy backend (so `k3s-xdp backend disable k3s-backend/server-2` reads like HAProxy's
//!   `set server k3s-backend/server-2 state maint`); `bind *:6443` (or `:::6443`) takes the VIP
//!   from keepalived's `virtual_ipaddress` (or `--vip`, once per family), of its servers' family;
//! - a service's backends are of its VIP's family (no NAT64): a backend with servers of both
//!   families becomes `NAME` and `NAME-v6`, a frontend's binds give at most one VIP per family
//!   (`v6only` says whether `::` also took IPv4 clients), clients HAProxy took in a family
//!   without servers are named in warnings, and a VIP:port that an earlier frontend serves
//!   (HAProxy's frontend per family on one backend) is imported once;
//! - `server` lines become backends, with `weight`; `default-server`/`server` check settings
//!   (`inter`, `downinter`, `fastinter`, `rise`, `fall`, `slowstart`, `timeout check`) become
//!   `[service.health]`; `check-ssl` makes the check `tls` (`https` with `option httpchk`);
//! - the `vrrp_instance` becomes `[vrrp]`; keepalived speaks VRRPv2 unless `vrrp_version 3`
//!   (or the instance's `version 3`), so the import keeps version 2 (and `auth_pass`) to
//!   interoperate during a migration; dual-stack keepalived's instance of the other family
//!   joins it as its second virtual router, and IPv6 addresses make it version 3;
//! - a tracked `vrrp_script` (the seeds' `chk_haproxy`) becomes `track`: the data plane and at
//!   least one healthy backend; keepalived's positive weight (added while the script succeeds)
//!   becomes a negative one (subtracted while tracking fails); weight 0 means fault, as in
//!   keepalived.

mod haproxy;
mod keepalived;

use crate::config::{
    defaults, BackendConfig, CheckKind, Config, Health, InitialState, Service, Track,
    VirtualAddress, Vrrp,
};
use anyhow::{bail, Result};
use keepalived::Instance;
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};
use toml_edit::{DocumentMut, Item};

/// A position in an input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Where {
    pub file: String,
    pub line: usize,
}

impl Where {
    pub fn new(file: &str, line: usize) -> Self {
        Where {
            file: file.to_string(),
            line,
        }
    }
}

/// Warnings, each naming where the directive stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Warnings(pub Vec<(Where, String)>);

impl Warnings {
    pub fn push(&mut self, at: Where, message: String) {
        self.0.push((at, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Warnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, message) in &self.0 {
            writeln!(f, "warning: {}:{}: {message}", at.file, at.line)?;
        }
        Ok(())
    }
}

/// An input file: its name (for messages) and its text.
pub struct Input<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// The result: TOML for `k3s-xdp check`/`run`, and the warnings.
pub struct Imported {
    pub toml: String,
    pub warnings: Warnings,
}

/// What the output says in comments next to the keys: guesses and hints for the operator.
#[derive(Default)]
struct Hints {
    /// Services (by index) checked with `tcp` in front of k3s API servers.
    suggest_tls: Vec<usize>,
    /// keepalived's instance gave no priority, or no state (templates such as the k3s docs').
    priority_unknown: bool,
    state_unknown: bool,
    /// IPv6 addresses made keepalived's VRRPv2 version 3: Some(true) when IPv4 routers speak
    /// it too (their keepalived peers must then as well).
    version_3_for_ipv6: Option<bool>,
}

/// "IPv4" or "IPv6", for messages.
fn family_name(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The family of `addr`, for messages.
pub(crate) fn family(addr: IpAddr) -> &'static str {
    family_name(addr.is_ipv4())
}

/// keepalived's instances as one `[vrrp]`: the first, joined by instances that hold addresses
/// of the other family only (keepalived's dual stack is two instances, `VI_1` with the IPv4
/// VIP and `VI_6` with the IPv6 one), whose addresses and peers it takes: k3s-xdp runs one
/// virtual router per family with one id, priority and timers. Other instances are left out,
/// each with a warning.
fn merge_instances(
    instances: &[Instance],
    file: &str,
    warnings: &mut Warnings,
) -> Option<Instance> {
    let families = |i: &Instance| {
        (
            i.virtual_ipaddress.iter().any(|a| a.0.is_ipv4()),
            i.virtual_ipaddress.iter().any(|a| a.0.is_ipv6()),
        )
    };
    let mut merged = instances.first()?.clone();
    for other in &instances[1..] {
        let at = Where::new(file, other.lines.instance);
        let ((m4, m6), (o4, o6)) = (families(&merged), families(other));
        if (o4 && m4) || (o6 && m6) || !(o4 || o6) {
            warnings.push(
                at,
                format!(
                    "vrrp_instance {}: only one instance per address family is imported ({} \
                     holds its family's addresses): skipped",
                    other.name, merged.name
                ),
            );
            continue;
        }
        let family = if o4 { "IPv4" } else { "IPv6" };
        let differs: Vec<&str> = [
            (
                "virtual_router_id",
                other.virtual_router_id != merged.virtual_router_id,
            ),
            ("priority", other.priority != merged.priority),
            ("state", other.master != merged.master),
            ("advert_int", other.advert_int != merged.advert_int),
            ("preempt", other.preempt != merged.preempt),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect();
        if !differs.is_empty() {
            warnings.push(
                at.clone(),
                format!(
                    "vrrp_instance {} becomes the {family} virtual router of {}, with {}'s {}: \
                     k3s-xdp runs both families' routers with one id, priority and timers",
                    other.name,
                    merged.name,
                    merged.name,
                    differs.join(", ")
                ),
            );
        }
        merged
            .virtual_ipaddress
            .extend(other.virtual_ipaddress.iter().copied());
        merged
            .unicast_peers
            .extend(other.unicast_peers.iter().copied());
        match (merged.unicast_src_ip, other.unicast_src_ip) {
            (None, Some(src)) => merged.unicast_src_ip = Some(src),
            (Some(kept), Some(src)) => warnings.push(
                at,
                format!(
                    "vrrp_instance {}: unicast_src_ip {src} left out (one is kept: {kept}); the \
                     {family} router sends from the interface's own address of its family \
                     (IPv6: its link-local address)",
                    other.name
                ),
            ),
            _ => {}
        }
    }
    Some(merged)
}

/// Converts haproxy.cfg (and keepalived.conf) to k3s-xdp TOML: builds the [`Config`] they
/// describe and prints it with the config module's renderer, with comments for what the
/// operator should look at. `vips` (`--vip`, at most one per family) are the VIPs of frontends
/// that bind every address, instead of keepalived's first virtual address of each family.
pub fn import(
    haproxy: Input<'_>,
    keepalived: Option<Input<'_>>,
    vips: &[IpAddr],
) -> Result<Imported> {
    let mut given: [Option<IpAddr>; 2] = [None, None];
    for &vip in vips {
        let slot = &mut given[usize::from(vip.is_ipv6())];
        if let Some(other) = slot {
            bail!(
                "--vip {other} and --vip {vip}: one VIP per family (a service has one VIP; \
                 frontends that bind every address take the VIP of their servers' family)"
            );
        }
        *slot = Some(vip);
    }
    let mut warnings = Warnings::default();
    let h = haproxy::parse(haproxy.text, haproxy.name, &mut warnings);
    let k = keepalived.map(|k| keepalived::parse(k.text, k.name, &mut warnings));
    let merged = k
        .as_ref()
        .and_then(|k| merge_instances(&k.instances, &k.file, &mut warnings));
    let instance = merged.as_ref();
    let k_file = k.as_ref().map_or("keepalived.conf", |k| k.file.as_str());

    // The addresses VRRP moves: every VIP must be one of them (`check` says so too). Without
    // any, `vrrp` below says what is missing.
    let moved: Vec<IpAddr> = instance
        .map(|i| i.virtual_ipaddress.iter().map(|v| v.0).collect())
        .unwrap_or_default();
    if !moved.is_empty() {
        if let Some(vip) = vips.iter().find(|v| !moved.contains(v)) {
            bail!(
                "--vip {vip} is not in the virtual_ipaddress of {k_file} ({}): VRRP would not \
                 move it; pass one of those, or add it there",
                list(&moved)
            );
        }
    }

    let mut hints = Hints::default();
    // The VIP of a frontend bound to every address: --vip, else keepalived's first virtual
    // address, of the servers' family.
    let fallback_vip = |v4: bool| {
        given[usize::from(!v4)].or_else(|| moved.iter().copied().find(|a| a.is_ipv4() == v4))
    };
    // What to do when a family has no VIP.
    let no_vip = |v4: bool| {
        let family = family_name(v4);
        if moved.is_empty() {
            format!(
                "Pass --keepalived (its virtual_ipaddress) or --vip (an {family} address, as its \
                 servers')"
            )
        } else {
            format!(
                "The virtual_ipaddress of {k_file} ({}) has no {family} address: add the {family} \
                 VIP there (keepalived: a second vrrp_instance)",
                list(&moved)
            )
        }
    };
    let mut names = BTreeSet::new();
    let mut services = Vec::new();
    for f in &h.frontends {
        let at = Where::new(haproxy.name, f.line);
        let Some(backend_name) = &f.backend else {
            warnings.push(
                at,
                format!("frontend {} has no default_backend: skipped", f.name),
            );
            continue;
        };
        let Some(b) = h.backends.get(backend_name) else {
            warnings.push(
                at,
                format!(
                    "frontend {}: backend {backend_name} is not defined: skipped",
                    f.name
                ),
            );
            continue;
        };
        if f.binds.is_empty() {
            warnings.push(at, format!("frontend {} has no `bind`: skipped", f.name));
            continue;
        }
        if b.servers.is_empty() {
            warnings.push(at, format!("backend {backend_name} has no server: skipped"));
            continue;
        }
        if !moved.is_empty() {
            for bind in &f.binds {
                if let Some(a) = bind.addr().filter(|a| !moved.contains(a)) {
                    bail!(
                        "{}:{}: frontend {} binds {a}, which is not in the virtual_ipaddress of \
                         {k_file} ({}): VRRP would not move it; add it there",
                        haproxy.name,
                        bind.line,
                        f.name,
                        list(&moved)
                    );
                }
            }
        }
        // A service's backends are of its VIP's family: servers of both families make one
        // service per family.
        let families: Vec<bool> = [true, false]
            .into_iter()
            .filter(|&v4| b.servers.iter().any(|s| s.addr.is_ipv4() == v4))
            .collect();
        let names_of = |v4: bool| {
            b.servers
                .iter()
                .filter(|s| s.addr.is_ipv4() == v4)
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Clients HAProxy took in a family the backend has no server of: it connected them to
        // the other family's servers; k3s-xdp cannot.
        for v4 in [true, false]
            .into_iter()
            .filter(|v4| !families.contains(v4))
        {
            let Some(bind) = f.binds.iter().find(|b| b.takes(v4)) else {
                continue;
            };
            if let Some(vip) = bind.addr().or_else(|| fallback_vip(v4)) {
                let family = family_name(v4);
                warnings.push(
                    Where::new(haproxy.name, bind.line),
                    format!(
                        "frontend {}: `bind {}` takes {family} clients ({vip} among them) and \
                         backend {backend_name} has no {family} server; HAProxy connected them \
                         to servers of the other family, k3s-xdp forwards within a family (no \
                         NAT64), so {} is not served",
                        f.name,
                        bind.text,
                        SocketAddr::new(vip, f.port)
                    ),
                );
            }
        }
        let mut made = 0;
        for &v4 in &families {
            let family = family_name(v4);
            let explicit = f
                .binds
                .iter()
                .find_map(|b| b.addr().filter(|a| a.is_ipv4() == v4));
            // A wildcard that takes this family's clients, else any wildcard (`*` in front of
            // IPv6 servers).
            let wildcard = f
                .binds
                .iter()
                .find(|b| b.addr().is_none() && b.takes(v4))
                .or_else(|| f.binds.iter().find(|b| b.addr().is_none()));
            let mut mismatch = None;
            let service_vip = match (explicit, wildcard) {
                (Some(vip), _) => vip,
                (None, Some(w)) => match fallback_vip(v4) {
                    Some(vip) => {
                        if !w.takes(v4) {
                            mismatch = Some((
                                Where::new(haproxy.name, w.line),
                                format!(
                                    "frontend {}: `bind {}` listens on {} only, and servers {} of \
                                     backend {backend_name} are {family}: HAProxy connected {} \
                                     clients to them; k3s-xdp forwards within a family (no \
                                     NAT64), so they are served on the {family} VIP {vip}, and \
                                     clients must connect over {family}",
                                    f.name,
                                    w.text,
                                    family_name(!v4),
                                    names_of(v4),
                                    family_name(!v4)
                                ),
                            ));
                        }
                        vip
                    }
                    None if families.len() > 1 => {
                        warnings.push(
                            Where::new(haproxy.name, w.line),
                            format!(
                                "frontend {}: no {family} VIP for the {family} servers of backend \
                                 {backend_name} (`bind {}` takes every address): skipped. {}",
                                f.name,
                                w.text,
                                no_vip(v4)
                            ),
                        );
                        continue;
                    }
                    None => bail!(
                        "{}:{}: frontend {} binds `{}`, every address, and the servers of backend \
                         {backend_name} are {family}: which {family} address is the VIP? {}",
                        haproxy.name,
                        w.line,
                        f.name,
                        w.text,
                        no_vip(v4)
                    ),
                },
                (None, None) => {
                    warnings.push(
                        at.clone(),
                        format!(
                            "frontend {}: the {family} servers of backend {backend_name} are \
                             behind a bind on {}, of the other family (no NAT64): skipped",
                            f.name, f.binds[0].text
                        ),
                    );
                    continue;
                }
            };
            // HAProxy's other dual-stack layout, a frontend per family (`*:6443` and
            // `:::6443 v6only`) on one backend: the second finds its VIP:port served already.
            if let Some(earlier) = services
                .iter()
                .find(|s: &&Service| s.vip == service_vip && s.port == f.port)
            {
                warnings.push(
                    at.clone(),
                    format!(
                        "frontend {}: {} is served already, by service {} (from an earlier \
                         frontend); the {family} servers of backend {backend_name} are not \
                         imported again for it",
                        f.name,
                        SocketAddr::new(service_vip, f.port),
                        earlier.name,
                    ),
                );
                continue;
            }
            if let Some((w, message)) = mismatch {
                warnings.push(w, message);
            }
            let mut name = backend_name.clone();
            if made > 0 {
                name = format!("{backend_name}-{}", if v4 { "v4" } else { "v6" });
            }
            let name = unique_name(&mut names, name, f.port);
            let mut service = Service::new(&name, service_vip, f.port);
            let mut seen = BTreeSet::new();
            for s in b.servers.iter().filter(|s| s.addr.is_ipv4() == v4) {
                let port = s.port.unwrap_or(f.port);
                if !seen.insert((s.addr, port)) {
                    warnings.push(
                        Where::new(haproxy.name, s.line),
                        format!(
                            "server {}: {} appears twice in backend {backend_name}: skipped",
                            s.name,
                            SocketAddr::new(s.addr, port)
                        ),
                    );
                    continue;
                }
                let max = defaults::BACKEND_WEIGHT_MAX;
                let weight = match s.params.weight {
                    Some(w) if w > max => {
                        warnings.push(
                            Where::new(haproxy.name, s.line),
                            format!("server {}: weight {w} above {max}, using {max}", s.name),
                        );
                        max
                    }
                    Some(w) => w,
                    None => defaults::BACKEND_WEIGHT,
                };
                service.backends.push(BackendConfig {
                    name: s.name.clone(),
                    address: SocketAddr::new(s.addr, port),
                    weight,
                });
            }
            service.health = health(b, haproxy.name, &mut warnings);
            if service.health.check == CheckKind::Tcp
                && service.backends.iter().any(|b| b.address.port() == 6443)
            {
                hints.suggest_tls.push(services.len());
            }
            services.push(service);
            made += 1;
        }
    }
    if services.is_empty() {
        bail!(
            "{}: no frontend with a default_backend and servers: nothing to import",
            haproxy.name
        );
    }
    let mut config = Config::with_services(services);
    config.interface = instance.and_then(|i| i.interface.clone());
    if let Some(i) = instance {
        config.vrrp = Some(vrrp(i, k.as_ref(), &mut warnings, &mut hints)?);
    }

    let mut out = format!(
        "# k3s-xdp configuration imported from {}{}.\n# Check it with `k3s-xdp check --config FILE`.\n\n",
        haproxy.name,
        match &k {
            Some(k) => format!(" and {}", k.file),
            None => String::new(),
        }
    );
    if config.interface.is_none() {
        out.push_str("# interface = \"eth1\"   # or pass --iface to `k3s-xdp run`\n\n");
    }
    out.push_str(&annotate(config.to_document(), &hints).to_string());
    Ok(Imported {
        toml: out,
        warnings,
    })
}

/// `base`, or `base-PORT` (then `base-PORT-2`, ...) if taken: service names are unique.
fn unique_name(names: &mut BTreeSet<String>, base: String, port: u16) -> String {
    if names.insert(base.clone()) {
        return base;
    }
    let mut name = format!("{base}-{port}");
    let mut n = 2;
    while !names.insert(name.clone()) {
        name = format!("{base}-{port}-{n}");
        n += 1;
    }
    name
}

/// "192.0.2.100, 2001:db8::100", or "none".
fn list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rendered config with the hints as comments after their keys.
fn annotate(mut doc: DocumentMut, hints: &Hints) -> DocumentMut {
    fn comment(item: Option<&mut Item>, text: &str) {
        if let Some(value) = item.and_then(Item::as_value_mut) {
            value.decor_mut().set_suffix(format!("   # {text}"));
        }
    }
    if let Some(services) = doc
        .get_mut("service")
        .and_then(Item::as_array_of_tables_mut)
    {
        for &i in &hints.suggest_tls {
            let check = services
                .get_mut(i)
                .and_then(|s| s.get_mut("health"))
                .and_then(Item::as_table_mut)
                .and_then(|h| h.get_mut("check"));
            comment(
                check,
                "k3s: check = \"tls\" also proves the API server completes a TLS handshake",
            );
        }
    }
    if let Some(vrrp) = doc.get_mut("vrrp").and_then(Item::as_table_mut) {
        if hints.priority_unknown {
            comment(vrrp.get_mut("priority"), "e.g. 200 on lb-1, 100 on lb-2");
        }
        if hints.state_unknown {
            comment(
                vrrp.get_mut("state"),
                "\"master\" on lb-1, \"backup\" on lb-2",
            );
        }
        match hints.version_3_for_ipv6 {
            Some(true) => comment(
                vrrp.get_mut("version"),
                "IPv6 needs 3; the IPv4 keepalived peers too (vrrp_version 3)",
            ),
            Some(false) => comment(vrrp.get_mut("version"), "IPv6 needs 3"),
            None if vrrp.get("version").and_then(Item::as_integer) == Some(2) => comment(
                vrrp.get_mut("version"),
                "keepalived's default; 3 once both nodes run k3s-xdp",
            ),
            None => {}
        }
    }
    doc
}

/// `[service.health]` from the backend's check settings (its first checked server's).
fn health(b: &haproxy::Backend, file: &str, warnings: &mut Warnings) -> Health {
    let checked: Vec<&haproxy::Server> = b.servers.iter().filter(|s| s.params.check).collect();
    if checked.is_empty() {
        warnings.push(
            Where::new(file, b.line),
            format!(
                "backend {}: no server has `check`; k3s-xdp checks every backend (tcp)",
                b.name
            ),
        );
    }
    let first = checked.first().copied().unwrap_or(&b.servers[0]);
    for s in &b.servers {
        if s.params.inter != first.params.inter
            || s.params.rise != first.params.rise
            || s.params.fall != first.params.fall
            || s.params.check_ssl != first.params.check_ssl
        {
            warnings.push(
                Where::new(file, s.line),
                format!("server {}: check settings differ from server {}; k3s-xdp has one set per service, {}'s is used", s.name, first.name, first.name),
            );
        }
    }
    let p = &first.params;
    let check = match (p.check_ssl, &b.httpchk) {
        (true, Some(_)) => CheckKind::Https,
        (true, None) => CheckKind::Tls,
        (false, Some(_)) => {
            warnings.push(
                Where::new(file, b.line),
                format!("backend {}: `option httpchk` over plain HTTP is not supported; using a tcp check (add `check-ssl` for https)", b.name),
            );
            CheckKind::Tcp
        }
        (false, None) => CheckKind::Tcp,
    };
    let mut health = Health {
        check,
        port: p.port,
        ..Health::default()
    };
    if let (CheckKind::Https, Some(path)) = (check, &b.httpchk) {
        health.path = path.clone();
    }
    health.inter = p.inter.unwrap_or(health.inter);
    // HAProxy's defaults, and k3s-xdp's: both follow `inter`.
    health.downinter = p.downinter.unwrap_or(health.inter);
    health.fastinter = p.fastinter.unwrap_or(health.inter);
    health.rise = p.rise.unwrap_or(health.rise);
    health.fall = p.fall.unwrap_or(health.fall);
    health.timeout = b.check_timeout.unwrap_or(health.timeout);
    health.slowstart = p.slowstart.unwrap_or(health.slowstart);
    health
}

/// `[vrrp]` from keepalived's `vrrp_instance`.
fn vrrp(
    i: &keepalived::Instance,
    k: Option<&keepalived::Keepalived>,
    warnings: &mut Warnings,
    hints: &mut Hints,
) -> Result<Vrrp> {
    let file = k.map_or("keepalived.conf", |k| k.file.as_str());
    let Some(vrid) = i.virtual_router_id else {
        bail!(
            "{file}:{}: vrrp_instance {} has no virtual_router_id",
            i.lines.instance,
            i.name
        );
    };
    if i.virtual_ipaddress.is_empty() {
        bail!(
            "{file}:{}: vrrp_instance {} has no virtual_ipaddress",
            i.lines.instance,
            i.name
        );
    }
    let addresses = i
        .virtual_ipaddress
        .iter()
        .map(|&(addr, prefix_len)| VirtualAddress { addr, prefix_len })
        .collect();
    let mut v = Vrrp::new(vrid, addresses);
    // keepalived speaks VRRPv2 unless told otherwise (the instance's `version`, else
    // global_defs' `vrrp_version`): keep it, to interoperate meanwhile.
    v.version = i.version.or(k.and_then(|k| k.version)).unwrap_or(2);
    if v.version == 2 && i.virtual_ipaddress.iter().any(|a| a.0.is_ipv6()) {
        v.version = 3;
        let ipv4 = i.virtual_ipaddress.iter().any(|a| a.0.is_ipv4());
        hints.version_3_for_ipv6 = Some(ipv4);
        warnings.push(
            Where::new(file, i.lines.instance),
            format!(
                "IPv6 virtual addresses need VRRP version 3 (keepalived's IPv6 instances speak it): \
                 version = 3{}",
                if ipv4 {
                    "; the IPv4 router speaks it too, so keepalived peers of the IPv4 VIPs need \
                     `vrrp_version 3` in global_defs"
                } else {
                    ""
                }
            ),
        );
    }
    match i.priority {
        Some(p) => v.priority = p,
        None => hints.priority_unknown = true,
    }
    match i.master {
        Some(true) => v.state = InitialState::Master,
        Some(false) => v.state = InitialState::Backup,
        None => hints.state_unknown = true,
    }
    if let Some(advert_int) = i.advert_int {
        v.advert_int = if v.version == 2 && advert_int.subsec_nanos() != 0 {
            let rounded = Duration::from_secs(advert_int.as_secs().max(1));
            warnings.push(
                Where::new(file, i.lines.advert_int),
                format!(
                    "advert_int {advert_int:?}: VRRPv2 counts whole seconds, using {rounded:?}"
                ),
            );
            rounded
        } else {
            advert_int
        };
    }
    v.unicast_src_ip = i.unicast_src_ip;
    v.unicast_peers = i.unicast_peers.clone();
    v.preempt = i.preempt;
    v.preempt_delay = i.preempt_delay.unwrap_or(v.preempt_delay);
    if let Some(pass) = &i.auth_pass {
        if v.version == 2 {
            let max = defaults::AUTH_PASS_MAX_BYTES;
            v.auth_pass = Some(if pass.len() > max {
                warnings.push(
                    Where::new(file, i.lines.authentication),
                    format!("auth_pass longer than {max} characters: keepalived uses the first {max}, so does this import"),
                );
                pass.chars().take(max).collect()
            } else {
                pass.clone()
            });
        } else {
            warnings.push(
                Where::new(file, i.lines.authentication),
                "authentication with vrrp_version 3: VRRPv3 has no authentication, dropped".into(),
            );
        }
    }
    if let Some(w) = i.track_weight {
        // keepalived adds a positive weight while the script succeeds; k3s-xdp subtracts
        // while tracking fails.
        v.track = Track {
            dataplane: true,
            min_healthy_backends: 1,
            weight: if w > 0 { -w } else { w },
        };
    }
    v.garp_master_repeat = i.garp_master_repeat.unwrap_or(v.garp_master_repeat);
    if let Some(g) = k.and_then(|k| k.garp_interval).filter(|g| !g.is_zero()) {
        v.garp_interval = g;
    }
    v.garp_master_refresh = i.garp_master_refresh.unwrap_or(v.garp_master_refresh);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
        std::fs::read_to_string(format!("{path}{name}")).unwrap()
    }

    fn check(toml: &str) -> crate::config::Config {
        crate::config::parse(toml, "imported.toml".as_ref())
            .unwrap_or_else(|e| panic!("imported TOML rejected:\n{e}\n---\n{toml}"))
    }

    /// keepalived's dual stack (an IPv4 and an IPv6 instance) and HAProxy's IPv6 binds and
    /// servers become one `[vrrp]` with both families' addresses and peers, and one service
    /// per family; the result passes `check`.
    #[test]
    fn a_dual_stack_pair_imports_and_checks() {
        let h = "frontend k3s\n  bind *:6443\n  bind :::6443\n  default_backend k3s\n\
                 backend k3s\n  server s1 192.0.2.50:6443 check\n  server s1-v6 [2001:db8::50]:6443 check\n\
                 server s2-v6 2001:db8::51:6443 check\n\
                 frontend v6only\n  bind [2001:db8::110]:8443\n  default_backend web\n\
                 backend web\n  server w1 [2001:db8::60]:8443 check\n";
        let k = "global_defs {\n  vrrp_version 3\n}\n\
                 vrrp_instance VI_1 {\n  state MASTER\n  interface eth1\n  virtual_router_id 51\n  priority 200\n\
                 unicast_src_ip 192.0.2.98\n  unicast_peer {\n    192.0.2.99\n  }\n\
                 virtual_ipaddress {\n    192.0.2.100/24\n  }\n}\n\
                 vrrp_instance VI_6 {\n  state MASTER\n  interface eth1\n  virtual_router_id 51\n  priority 200\n\
                 unicast_peer {\n    2001:db8::99\n  }\n\
                 virtual_ipaddress {\n    2001:db8::100/64\n    2001:db8::110/64\n  }\n}\n";
        let imported = import(
            Input {
                name: "haproxy.cfg",
                text: h,
            },
            Some(Input {
                name: "keepalived.conf",
                text: k,
            }),
            &[],
        )
        .unwrap();
        let c = check(&imported.toml);
        let names: Vec<(&str, String)> = c
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.vip.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("k3s", "192.0.2.100".to_string()),
                ("k3s-v6", "2001:db8::100".to_string()),
                ("web", "2001:db8::110".to_string())
            ]
        );
        let v6: Vec<SocketAddr> = c.services[1].backends.iter().map(|b| b.address).collect();
        assert_eq!(
            v6,
            ["[2001:db8::50]:6443", "[2001:db8::51]:6443"].map(|a| a.parse().unwrap())
        );
        let v = c.vrrp.unwrap();
        assert_eq!(v.version, 3);
        assert_eq!(v.virtual_ipaddress.len(), 3);
        assert_eq!(
            v.unicast_peers,
            ["192.0.2.99", "2001:db8::99"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let w = imported.warnings.to_string();
        // `*:6443` and `:::6443` are the frontend's IPv4 and IPv6 listeners, both imported.
        assert!(!w.contains("`bind"), "{w}");
        assert!(!w.contains("VI_6"), "VI_6 joins without a warning: {w}");
    }

    /// An IPv6 instance with keepalived's default VRRP version 2: version 3, said.
    #[test]
    fn ipv6_addresses_make_vrrp_version_3() {
        let h = "frontend k3s\n  bind *:6443\n  default_backend k3s\nbackend k3s\n  server s1 [2001:db8::50]:6443\n";
        let k = "vrrp_instance VI_1 {\n  virtual_router_id 51\n  virtual_ipaddress {\n    192.0.2.100/24\n  }\n}\n\
                 vrrp_instance VI_6 {\n  virtual_router_id 52\n  virtual_ipaddress {\n    2001:db8::100\n  }\n}\n";
        let imported = import(
            Input {
                name: "haproxy.cfg",
                text: h,
            },
            Some(Input {
                name: "k.conf",
                text: k,
            }),
            &[],
        )
        .unwrap();
        let c = check(&imported.toml);
        assert_eq!(
            c.services[0].vip,
            "2001:db8::100".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.vrrp.as_ref().unwrap().version, 3);
        let w = imported.warnings.to_string();
        assert!(w.contains("need VRRP version 3"), "{w}");
        assert!(w.contains("vrrp_version 3"), "{w}");
        assert!(
            w.contains("k.conf:7: vrrp_instance VI_6 becomes the IPv6 virtual router of VI_1, with VI_1's virtual_router_id"),
            "{w}"
        );
    }

    /// Warnings about keepalived directives name the file as given and the directive's line.
    #[test]
    fn keepalived_warnings_name_the_file_and_line() {
        let h = "frontend k3s\n  bind *:6443\n  default_backend k3s\nbackend k3s\n  server s1 192.0.2.50:6443 check\n";
        let k = "vrrp_instance a {\n  interface eth1\n  virtual_router_id 51\n  advert_int 1.5\n  authentication {\n    auth_type PASS\n    auth_pass averylongpassword\n  }\n  virtual_ipaddress {\n    192.0.2.100/24\n  }\n}\nvrrp_instance b {\n  virtual_router_id 52\n}\n";
        let imported = import(
            Input {
                name: "haproxy.cfg",
                text: h,
            },
            Some(Input {
                name: "/etc/keepalived/lb-1.conf",
                text: k,
            }),
            &[],
        )
        .unwrap();
        let text = imported.warnings.to_string();
        for expected in [
            "/etc/keepalived/lb-1.conf:7: auth_pass longer than 8",
            "/etc/keepalived/lb-1.conf:4: advert_int",
            "/etc/keepalived/lb-1.conf:13: vrrp_instance b: only one instance per address family",
        ] {
            assert!(text.contains(expected), "`{expected}` in:\n{text}");
        }
        assert!(!text.contains(":0:"), "no warning without a line:\n{text}");
        assert!(imported.toml.contains("auth_pass = \"averylon\""));
        assert!(imported.toml.starts_with(
            "# k3s-xdp configuration imported from haproxy.cfg and /etc/keepalived/lb-1.conf."
        ));
    }

    /// Seeds 000 (pt), 001 (zh), 002 (ja): the same HAProxy + keepalived setup, with the
    /// `<STATE>`/`<PRIORITY>` template placeholders of the docs.
    #[test]
    fn the_k3s_docs_seeds_import_and_check() {
        for seed in ["000", "001", "002"] {
            let h = fixture(&format!("seed-{seed}-haproxy.cfg"));
            let k = fixture(&format!("seed-{seed}-keepalived-1.conf"));
            let imported = import(
                Input {
                    name: "haproxy.cfg",
                    text: &h,
                },
                Some(Input {
                    name: "keepalived.conf",
                    text: &k,
                }),
                &[],
            )
            .unwrap();
            let config = check(&imported.toml);
            assert_eq!(config.interface.as_deref(), Some("eth1"));
            let s = &config.services[0];
            assert_eq!(s.name, "k3s-backend");
            assert_eq!(s.vip, IpAddr::from([10, 10, 10, 100]));
            assert_eq!(s.port, 6443);
            assert_eq!(s.backends.len(), 3);
            assert_eq!(s.health.inter, Duration::from_secs(10));
            assert_eq!(s.health.downinter, Duration::from_secs(5));
            let v = config.vrrp.as_ref().unwrap();
            assert_eq!(v.virtual_router_id, 51);
            assert_eq!(v.version, 2);
            assert_eq!(
                v.track.weight, 0,
                "chk_haproxy without weight: fault, as keepalived"
            );
            let text = imported.warnings.to_string();
            for named in [
                "option tcplog",
                "balance roundrobin",
                "<STATE>",
                "<PRIORITY>",
                "killall -0 haproxy",
            ] {
                assert!(
                    text.contains(named),
                    "seed {seed}: a warning names `{named}`:\n{text}"
                );
            }
        }
    }

    /// Seed 004: two frontends (6443 and 30080), a `default-server` line with rise, fall,
    /// slowstart, maxconn, maxqueue and weight, and a unicast keepalived with auth_pass.
    #[test]
    fn seed_004_imports_both_services_and_unicast_vrrp() {
        let h = fixture("seed-004-haproxy.cfg");
        for (n, src, peer) in [
            (1, "10.220.62.32", "10.220.62.33"),
            (2, "10.220.62.33", "10.220.62.32"),
        ] {
            let k = fixture(&format!("seed-004-keepalived-{n}.conf"));
            let imported = import(
                Input {
                    name: "haproxy.cfg",
                    text: &h,
                },
                Some(Input {
                    name: "keepalived.conf",
                    text: &k,
                }),
                &[],
            )
            .unwrap();
            let config = check(&imported.toml);
            assert_eq!(config.interface.as_deref(), Some("ens192"));
            assert_eq!(config.services.len(), 2);
            let api = &config.services[0];
            assert_eq!((api.name.as_str(), api.port), ("kube-apiserver", 6443));
            assert_eq!(api.vip, IpAddr::from([10, 220, 62, 31]));
            assert_eq!(api.health.rise, 2);
            assert_eq!(api.health.fall, 2);
            assert_eq!(api.health.slowstart, Duration::from_secs(60));
            assert!(api.backends.iter().all(|b| b.weight == 100));
            let ingress = &config.services[1];
            assert_eq!(
                (ingress.name.as_str(), ingress.port),
                ("ingress-nginx-30080", 30080)
            );
            assert_eq!(ingress.backends[0].address.port(), 30080);
            let v = config.vrrp.as_ref().unwrap();
            assert_eq!(v.virtual_router_id, 60);
            assert_eq!(v.version, 2);
            assert_eq!(v.auth_pass.as_deref(), Some("1111"));
            assert_eq!(v.unicast_src_ip, Some(src.parse().unwrap()));
            assert_eq!(v.unicast_peers, vec![peer.parse::<IpAddr>().unwrap()]);
            assert_eq!(
                v.track.weight, -2,
                "keepalived's +2 while alive is -2 while failing"
            );
            let text = imported.warnings.to_string();
            for named in [
                "maxconn 250",
                "maxqueue 256",
                "option httplog",
                "timeout connect",
                "router_id LVS_DEVEL",
                "stats socket",
            ] {
                assert!(text.contains(named), "a warning names `{named}`:\n{text}");
            }
        }
    }

    #[test]
    fn bind_star_without_a_vip_is_an_error_that_says_what_to_do() {
        let h = fixture("seed-000-haproxy.cfg");
        let err = import(
            Input {
                name: "haproxy.cfg",
                text: &h,
            },
            None,
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--vip"), "{err}");
        let ok = import(
            Input {
                name: "haproxy.cfg",
                text: &h,
            },
            None,
            &[IpAddr::from([192, 0, 2, 100])],
        )
        .unwrap();
        assert!(check(&ok.toml).vrrp.is_none());
    }

    /// Imports `h` (and `k`), which must succeed and pass `check`; the config and the
    /// warnings' text.
    fn imported(h: &str, k: Option<&str>, vips: &[IpAddr]) -> (crate::config::Config, String) {
        let imported = import(
            Input {
                name: "haproxy.cfg",
                text: h,
            },
            k.map(|text| Input {
                name: "keepalived.conf",
                text,
            }),
            vips,
        )
        .unwrap_or_else(|e| panic!("import failed: {e}"));
        (check(&imported.toml), imported.warnings.to_string())
    }

    fn import_error(h: &str, k: Option<&str>, vips: &[IpAddr]) -> String {
        match import(
            Input {
                name: "haproxy.cfg",
                text: h,
            },
            k.map(|text| Input {
                name: "keepalived.conf",
                text,
            }),
            vips,
        ) {
            Ok(i) => panic!("imported:\n{}", i.toml),
            Err(e) => e.to_string(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addresses(s: &crate::config::Service) -> Vec<String> {
        s.backends.iter().map(|b| b.address.to_string()).collect()
    }

    /// The dual-stack pair of fixtures: HAProxy on `*:6443` and `:::6443 v6only`, a backend
    /// with servers of both families, an IPv6 ingress on `ipv6@:30080`; keepalived with VI_1
    /// (IPv4, VRRPv2, auth_pass) and VI_6 (IPv6, `native_ipv6`) of the same id, priority and
    /// timers.
    #[test]
    fn the_dual_stack_fixtures_import_into_services_per_family_and_one_vrrp() {
        let h = fixture("dual-stack-haproxy.cfg");
        for (n, state, priority, src, peers) in [
            (
                1,
                InitialState::Master,
                200,
                "192.0.2.11",
                ["192.0.2.12", "2001:db8::12"],
            ),
            (
                2,
                InitialState::Backup,
                100,
                "192.0.2.12",
                ["192.0.2.11", "2001:db8::11"],
            ),
        ] {
            let k = fixture(&format!("dual-stack-keepalived-{n}.conf"));
            let imported = import(
                Input {
                    name: "haproxy.cfg",
                    text: &h,
                },
                Some(Input {
                    name: "keepalived.conf",
                    text: &k,
                }),
                &[],
            )
            .unwrap();
            let config = check(&imported.toml);
            assert_eq!(config.interface.as_deref(), Some("eth1"));
            let got: Vec<(&str, IpAddr, u16)> = config
                .services
                .iter()
                .map(|s| (s.name.as_str(), s.vip, s.port))
                .collect();
            assert_eq!(
                got,
                [
                    ("k3s-backend", ip("192.0.2.100"), 6443),
                    ("k3s-backend-v6", ip("2001:db8::100"), 6443),
                    ("ingress-nginx", ip("2001:db8::100"), 30080),
                ]
            );
            let [api4, api6, ingress] = &config.services[..] else {
                unreachable!()
            };
            assert_eq!(
                addresses(api4),
                ["192.0.2.50:6443", "192.0.2.51:6443", "192.0.2.52:6443"]
            );
            assert_eq!(
                addresses(api6),
                [
                    "[2001:db8::50]:6443",
                    "[2001:db8::51]:6443",
                    "[2001:db8::52]:6443"
                ]
            );
            assert_eq!(api6.backends[2].name, "server-3-v6");
            assert_eq!(
                addresses(ingress),
                [
                    "[2001:db8::50]:30080",
                    "[2001:db8::51]:30080",
                    "[2001:db8::52]:30080"
                ]
            );
            // Both halves keep the backend's check settings.
            for s in [api4, api6] {
                assert_eq!(s.health.inter, Duration::from_secs(10));
                assert_eq!((s.health.rise, s.health.fall), (2, 2));
            }

            let v = config.vrrp.as_ref().unwrap();
            assert_eq!(
                (v.virtual_router_id, v.priority, v.state),
                (51, priority, state)
            );
            let vips: Vec<String> = v.virtual_ipaddress.iter().map(|a| a.to_string()).collect();
            assert_eq!(vips, ["192.0.2.100/24", "2001:db8::100/64"]);
            assert_eq!(v.version, 3, "IPv6 needs VRRPv3");
            assert_eq!(v.auth_pass, None);
            assert_eq!(v.unicast_src_ip, Some(ip(src)));
            assert_eq!(v.unicast_peers, peers.map(ip));
            assert_eq!(v.track.weight, -20);
            assert_eq!(v.advert_int, Duration::from_secs(1));

            let text = imported.warnings.to_string();
            for expected in [
                "keepalived.conf:15: IPv6 virtual addresses need VRRP version 3",
                "keepalived peers of the IPv4 VIPs need `vrrp_version 3`",
                "keepalived.conf:23: authentication with vrrp_version 3: VRRPv3 has no authentication, dropped",
                &format!("keepalived.conf:37: vrrp_instance VI_6: unicast_src_ip 2001:db8::1{n} left out (one is kept: {src})"),
                "keepalived.conf:49: virtual_ipaddress options `dev eth1`",
            ] {
                assert!(text.contains(expected), "`{expected}` in:\n{text}");
            }
            // `v6only` and `native_ipv6` are understood; the instances agree; every client
            // family has servers.
            for absent in [
                "v6only",
                "native_ipv6",
                "becomes the IPv6 virtual router",
                "not served",
                "listens on",
                "skipped",
            ] {
                assert!(!text.contains(absent), "no `{absent}` in:\n{text}");
            }
            assert!(
                imported
                    .toml
                    .contains("version = 3   # IPv6 needs 3; the IPv4 keepalived peers too"),
                "{}",
                imported.toml
            );
        }
    }

    /// An IPv6-only pair: a listen section bound to the VIP with `option httpchk` and
    /// `timeout check` (a listen section's backend settings), servers in HAProxy's bare form
    /// (one without a port, `2001:db8::52:`, which takes the bind's), https checks;
    /// keepalived's IPv6 instance with a sub-second advert_int (VRRPv3 carries centiseconds).
    #[test]
    fn the_ipv6_only_fixtures_import_with_a_listen_section_s_checks() {
        let imported = import(
            Input {
                name: "haproxy.cfg",
                text: &fixture("ipv6-only-haproxy.cfg"),
            },
            Some(Input {
                name: "keepalived.conf",
                text: &fixture("ipv6-only-keepalived.conf"),
            }),
            &[],
        )
        .unwrap();
        let config = check(&imported.toml);
        let s = &config.services[0];
        assert_eq!(
            (s.name.as_str(), s.vip, s.port),
            ("k3s-api", ip("2001:db8::100"), 6443)
        );
        assert_eq!(
            addresses(s),
            [
                "[2001:db8::50]:6443",
                "[2001:db8::51]:6443",
                "[2001:db8::52]:6443"
            ]
        );
        assert_eq!(s.health.check, CheckKind::Https);
        assert_eq!(s.health.path, "/readyz");
        assert_eq!(s.health.timeout, Duration::from_secs(3));
        assert_eq!(s.health.inter, Duration::from_secs(5));
        let v = config.vrrp.as_ref().unwrap();
        assert_eq!((v.virtual_router_id, v.priority, v.version), (61, 150, 3));
        assert_eq!(v.advert_int, Duration::from_millis(500));
        assert_eq!(v.virtual_ipaddress[0].to_string(), "2001:db8::100/128");
        let text = imported.warnings.to_string();
        assert!(!text.contains("advert_int"), "{text}");
        assert!(!text.contains("server-3"), "{text}");
        assert!(
            imported.toml.contains("version = 3   # IPv6 needs 3\n"),
            "{}",
            imported.toml
        );
        assert!(!imported.toml.contains("# keepalived's default"));
    }

    /// An instance's `version 3` is kept for IPv4 (keepalived's peer speaks it), without the
    /// "keepalived's default" comment; global_defs' `vrrp_version` yields to it.
    #[test]
    fn an_instance_s_version_overrides_vrrp_version() {
        let h = "frontend k3s\n  bind *:6443\n  default_backend k3s\nbackend k3s\n  server s1 192.0.2.50:6443 check\n";
        let k = "global_defs {\n  vrrp_version 2\n}\nvrrp_instance VI_1 {\n  version 3\n  virtual_router_id 51\n  virtual_ipaddress {\n    192.0.2.100/24\n  }\n}\n";
        let result = import(
            Input {
                name: "haproxy.cfg",
                text: h,
            },
            Some(Input {
                name: "keepalived.conf",
                text: k,
            }),
            &[],
        )
        .unwrap();
        assert_eq!(check(&result.toml).vrrp.unwrap().version, 3);
        assert!(result.toml.contains("\nversion = 3\n"), "{}", result.toml);
        let (config, _) = imported(h, Some(&k.replace("  version 3\n", "")), &[]);
        assert_eq!(config.vrrp.unwrap().version, 2);
    }

    const DUAL_KEEPALIVED: &str = "vrrp_instance VI_1 {\n  interface eth1\n  state MASTER\n  priority 200\n  virtual_router_id 51\n  virtual_ipaddress {\n    192.0.2.100/24\n  }\n}\nvrrp_instance VI_6 {\n  interface eth1\n  state MASTER\n  priority 200\n  virtual_router_id 51\n  virtual_ipaddress {\n    2001:db8::100/64\n  }\n}\n";

    /// Which VIP a wildcard bind gets, and every family mismatch between binds and servers.
    #[test]
    fn family_mismatches_between_binds_and_servers_are_named_at_their_line() {
        // `*` listens on IPv4 only; the IPv6 servers are served on the IPv6 VIP.
        let h = "frontend k3s\n  bind *:6443\n  default_backend k3s\nbackend k3s\n  server s1 [2001:db8::50]:6443 check\n  server s2 [2001:db8::51]:6443 check\n";
        let (config, text) = imported(h, Some(DUAL_KEEPALIVED), &[]);
        assert_eq!(config.services.len(), 1);
        assert_eq!(config.services[0].name, "k3s");
        assert_eq!(config.services[0].vip, ip("2001:db8::100"));
        assert!(
            text.contains("haproxy.cfg:2: frontend k3s: `bind *:6443` listens on IPv4 only, and servers s1, s2 of backend k3s are IPv6: HAProxy connected IPv4 clients to them; k3s-xdp forwards within a family (no NAT64), so they are served on the IPv6 VIP 2001:db8::100, and clients must connect over IPv6"),
            "{text}"
        );

        // `::` also takes IPv4 clients: with an IPv4 VIP and no IPv4 server, they are lost.
        let h = "frontend k3s\n  bind [::]:6443\n  default_backend k3s\nbackend k3s\n  server s1 [2001:db8::50]:6443 check\n";
        let (config, text) = imported(h, Some(DUAL_KEEPALIVED), &[]);
        assert_eq!(config.services[0].vip, ip("2001:db8::100"));
        assert!(
            text.contains("haproxy.cfg:2: frontend k3s: `bind [::]:6443` takes IPv4 clients (192.0.2.100 among them) and backend k3s has no IPv4 server; HAProxy connected them to servers of the other family, k3s-xdp forwards within a family (no NAT64), so 192.0.2.100:6443 is not served"),
            "{text}"
        );
        // ... unless `v6only`; `v4v6` says what Linux does by default.
        let (_, text) = imported(
            &h.replace("[::]:6443", "[::]:6443 v6only"),
            Some(DUAL_KEEPALIVED),
            &[],
        );
        assert!(!text.contains("not served"), "{text}");
        let (_, text) = imported(
            &h.replace("[::]:6443", "[::]:6443 v4v6"),
            Some(DUAL_KEEPALIVED),
            &[],
        );
        assert!(text.contains("192.0.2.100:6443 is not served"), "{text}");

        // An address of one family and servers of the other: those servers are skipped, the
        // frontend too when none is left.
        let h = "frontend api\n  bind 192.0.2.100:6443\n  default_backend api\nfrontend ingress\n  bind 192.0.2.100:30080\n  default_backend ingress\nbackend api\n  server s1 192.0.2.50:6443 check\n  server s2 [2001:db8::51]:6443 check\nbackend ingress\n  server s1 [2001:db8::50]:30080 check\n";
        let (config, text) = imported(h, Some(DUAL_KEEPALIVED), &[]);
        assert_eq!(config.services.len(), 1);
        assert_eq!(addresses(&config.services[0]), ["192.0.2.50:6443"]);
        for expected in [
            "haproxy.cfg:1: frontend api: the IPv6 servers of backend api are behind a bind on 192.0.2.100:6443, of the other family (no NAT64): skipped",
            "haproxy.cfg:4: frontend ingress: the IPv6 servers of backend ingress are behind a bind on 192.0.2.100:30080",
            "haproxy.cfg:5: frontend ingress: `bind 192.0.2.100:30080` takes IPv4 clients (192.0.2.100 among them) and backend ingress has no IPv4 server",
        ] {
            assert!(text.contains(expected), "`{expected}` in:\n{text}");
        }

        // One frontend binding the VIP of each family serves both.
        let h = "frontend k3s\n  bind 192.0.2.100:6443\n  bind [2001:db8::100]:6443\n  default_backend k3s\nbackend k3s\n  server s1 192.0.2.50:6443 check\n  server s1-v6 [2001:db8::50]:6443 check\n";
        let (config, text) = imported(h, Some(DUAL_KEEPALIVED), &[]);
        let vips: Vec<(&str, IpAddr)> = config
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.vip))
            .collect();
        assert_eq!(
            vips,
            [("k3s", ip("192.0.2.100")), ("k3s-v6", ip("2001:db8::100"))]
        );
        assert!(!text.contains("skipped"), "{text}");

        // Servers of both families and a VIP of one: the others are skipped with the reason.
        let h = "frontend k3s\n  bind *:6443\n  default_backend k3s\nbackend k3s\n  server s1 192.0.2.50:6443 check\n  server s2 [2001:db8::51]:6443 check\n";
        let k = fixture("seed-004-keepalived-1.conf");
        let (config, text) = imported(h, Some(&k), &[]);
        assert_eq!(config.services.len(), 1);
        assert_eq!(addresses(&config.services[0]), ["192.0.2.50:6443"]);
        assert!(
            text.contains("haproxy.cfg:2: frontend k3s: no IPv6 VIP for the IPv6 servers of backend k3s (`bind *:6443` takes every address): skipped. The virtual_ipaddress of keepalived.conf (10.220.62.31) has no IPv6 address: add the IPv6 VIP there (keepalived: a second vrrp_instance)"),
            "{text}"
        );
        // With only IPv6 servers, that is an error.
        let err = import_error(
            "frontend k3s\n  bind :::6443\n  default_backend k3s\nbackend k3s\n  server s1 [2001:db8::50]:6443\n",
            Some(&k),
            &[],
        );
        assert_eq!(
            err,
            "haproxy.cfg:2: frontend k3s binds `:::6443`, every address, and the servers of backend k3s are IPv6: which IPv6 address is the VIP? The virtual_ipaddress of keepalived.conf (10.220.62.31) has no IPv6 address: add the IPv6 VIP there (keepalived: a second vrrp_instance)"
        );
    }

    /// `--vip` once per family; with keepalived, one of its virtual addresses (else VRRP would
    /// not move it, and `check` refuses the result), as a bound address must be.
    #[test]
    fn vip_takes_one_address_per_family_of_keepalived_s() {
        let h = fixture("dual-stack-haproxy.cfg");
        // Without keepalived, --vip gives each family's VIP.
        let (config, _) = imported(&h, None, &[ip("2001:db8::100"), ip("192.0.2.100")]);
        let vips: Vec<IpAddr> = config.services.iter().map(|s| s.vip).collect();
        assert_eq!(
            vips,
            [ip("192.0.2.100"), ip("2001:db8::100"), ip("2001:db8::100")]
        );
        assert!(config.vrrp.is_none());
        let err = import_error(&h, None, &[ip("2001:db8::100"), ip("2001:db8::101")]);
        assert!(
            err.starts_with("--vip 2001:db8::100 and --vip 2001:db8::101: one VIP per family"),
            "{err}"
        );
        // Only IPv4: the IPv6-only frontend has no VIP.
        let err = import_error(&h, None, &[ip("192.0.2.100")]);
        assert_eq!(
            err,
            "haproxy.cfg:33: frontend ingress-nginx binds `ipv6@:30080`, every address, and the servers of backend ingress-nginx are IPv6: which IPv6 address is the VIP? Pass --keepalived (its virtual_ipaddress) or --vip (an IPv6 address, as its servers')"
        );
        // With keepalived, --vip picks one of its addresses; another would not move.
        let k = fixture("dual-stack-keepalived-1.conf");
        let (config, _) = imported(&h, Some(&k), &[ip("2001:db8::100")]);
        assert_eq!(config.services.len(), 3);
        let err = import_error(&h, Some(&k), &[ip("2001:db8::200")]);
        assert_eq!(
            err,
            "--vip 2001:db8::200 is not in the virtual_ipaddress of keepalived.conf (192.0.2.100, 2001:db8::100): VRRP would not move it; pass one of those, or add it there"
        );
        let err = import_error(
            "frontend k3s\n  bind [2001:db8::200]:6443\n  default_backend k3s\nbackend k3s\n  server s1 [2001:db8::50]:6443\n",
            Some(&k),
            &[],
        );
        assert_eq!(
            err,
            "haproxy.cfg:2: frontend k3s binds 2001:db8::200, which is not in the virtual_ipaddress of keepalived.conf (192.0.2.100, 2001:db8::100): VRRP would not move it; add it there"
        );
    }

    /// Every prefix of the fixtures (a file cut anywhere) imports or is refused, never
    /// panics, and what imports passes `check`.
    #[test]
    fn cut_files_import_to_configs_that_check_or_are_refused() {
        let pairs = [
            ("dual-stack-haproxy.cfg", "dual-stack-keepalived-1.conf"),
            ("ipv6-only-haproxy.cfg", "ipv6-only-keepalived.conf"),
            ("seed-004-haproxy.cfg", "seed-004-keepalived-1.conf"),
        ];
        for (h, k) in pairs {
            let (h, k) = (fixture(h), fixture(k));
            let cuts = |t: &str| -> Vec<usize> {
                (0..=t.len()).filter(|&i| t.is_char_boundary(i)).collect()
            };
            let mut tried = 0;
            for (h_text, k_text) in cuts(&h)
                .into_iter()
                .map(|i| (&h[..i], k.as_str()))
                .chain(cuts(&k).into_iter().map(|i| (h.as_str(), &k[..i])))
            {
                let result = import(
                    Input {
                        name: "haproxy.cfg",
                        text: h_text,
                    },
                    Some(Input {
                        name: "keepalived.conf",
                        text: k_text,
                    }),
                    &[],
                );
                if let Ok(imported) = result {
                    if let Err(e) = crate::config::parse(&imported.toml, "imported.toml".as_ref()) {
                        panic!("rejected:\n{e}\n--- haproxy.cfg:\n{h_text}\n--- keepalived.conf:\n{k_text}\n--- imported:\n{}", imported.toml);
                    }
                    tried += 1;
                }
            }
            assert!(tried > 0);
        }
    }

    /// HAProxy's other dual-stack layout, a frontend per family on one backend: each VIP:port
    /// is imported once (`check` refuses a VIP:port served twice).
    #[test]
    fn a_frontend_per_family_on_one_backend_imports_each_listener_once() {
        let h = "frontend k3s-v4\n  bind *:6443\n  default_backend k3s\nfrontend k3s-v6\n  bind :::6443 v6only\n  default_backend k3s\nbackend k3s\n  server s1 192.0.2.50:6443 check\n  server s1-v6 [2001:db8::50]:6443 check\n";
        let (config, text) = imported(h, Some(DUAL_KEEPALIVED), &[]);
        let got: Vec<(&str, String)> = config
            .services
            .iter()
            .map(|s| (s.name.as_str(), SocketAddr::new(s.vip, s.port).to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("k3s", "192.0.2.100:6443".to_string()),
                ("k3s-v6", "[2001:db8::100]:6443".to_string())
            ]
        );
        for expected in [
            "haproxy.cfg:4: frontend k3s-v6: 192.0.2.100:6443 is served already, by service k3s (from an earlier frontend); the IPv4 servers of backend k3s are not imported again for it",
            "haproxy.cfg:4: frontend k3s-v6: [2001:db8::100]:6443 is served already, by service k3s-v6",
        ] {
            assert!(text.contains(expected), "`{expected}` in:\n{text}");
        }
    }

    /// Service names stay unique however many frontends share a backend and a port.
    #[test]
    fn frontends_sharing_a_backend_get_unique_service_names() {
        let h = "frontend a\n  bind 192.0.2.100:6443\n  default_backend k3s\nfrontend b\n  bind 192.0.2.101:6443\n  default_backend k3s\nfrontend c\n  bind 192.0.2.102:6443\n  default_backend k3s\nbackend k3s\n  server s1 192.0.2.50:6443 check\n";
        let k = "vrrp_instance VI_1 {\n  virtual_router_id 51\n  virtual_ipaddress {\n    192.0.2.100/24\n    192.0.2.101/24\n    192.0.2.102/24\n  }\n}\n";
        let (config, _) = imported(h, Some(k), &[]);
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["k3s", "k3s-6443", "k3s-6443-2"]);
    }
}
