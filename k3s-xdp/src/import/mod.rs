//! `k3s-xdp import`: from the haproxy.cfg and keepalived.conf an HA k3s cluster runs today to
//! the equivalent k3s-xdp TOML. Every directive without an equivalent is named in a warning
//! with its file and line; nothing is dropped silently.
//!
//! The mapping, in the operators' vocabulary:
//! - each `frontend` (or `listen`) with its `default_backend` becomes a `[[service]]` named after
//!   the HAProxy backend (so `k3s-xdp backend disable k3s-backend/server-2` reads like HAProxy's
//!   `set server k3s-backend/server-2 state maint`); `bind *:6443` takes the VIP from keepalived's
//!   `virtual_ipaddress` (or `--vip`);
//! - `server` lines become backends, with `weight`; `default-server`/`server` check settings
//!   (`inter`, `downinter`, `fastinter`, `rise`, `fall`, `slowstart`, `timeout check`) become
//!   `[service.health]`; `check-ssl` makes the check `tls` (`https` with `option httpchk`);
//! - the `vrrp_instance` becomes `[vrrp]`; keepalived speaks VRRPv2 unless `vrrp_version 3`,
//!   so the import keeps version 2 (and `auth_pass`) to interoperate during a migration;
//! - a tracked `vrrp_script` (the seeds' `chk_haproxy`) becomes `track`: the data plane and at
//!   least one healthy backend; keepalived's positive weight (added while the script succeeds)
//!   becomes a negative one (subtracted while tracking fails); weight 0 means fault, as in
//!   keepalived.

mod haproxy;
mod keepalived;

use anyhow::{bail, Result};
use std::{
    collections::BTreeSet,
    fmt::{self, Write as _},
    net::Ipv4Addr,
    time::Duration,
};

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

/// Converts haproxy.cfg (and keepalived.conf) to k3s-xdp TOML.
pub fn import(
    haproxy: Input<'_>,
    keepalived: Option<Input<'_>>,
    vip: Option<Ipv4Addr>,
) -> Result<Imported> {
    let mut warnings = Warnings::default();
    let h = haproxy::parse(haproxy.text, haproxy.name, &mut warnings);
    let k = keepalived.map(|k| keepalived::parse(k.text, k.name, &mut warnings));
    let instance = match &k {
        Some(k) => {
            if k.instances.len() > 1 {
                warnings.push(
                    Where::new(&k.file, k.instances[1].lines.instance),
                    format!(
                        "{} vrrp_instance blocks: only the first ({}) is imported",
                        k.instances.len(),
                        k.instances[0].name
                    ),
                );
            }
            k.instances.first()
        }
        None => None,
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# k3s-xdp configuration imported from {}{}.",
        haproxy.name,
        match &k {
            Some(k) => format!(" and {}", k.file),
            None => String::new(),
        }
    );
    let _ = writeln!(out, "# Check it with `k3s-xdp check --config FILE`.");
    if let Some(iface) = instance.and_then(|i| i.interface.as_ref()) {
        let _ = writeln!(out, "\ninterface = {}", quote(iface));
    } else {
        let _ = writeln!(
            out,
            "\n# interface = \"eth1\"   # or pass --iface to `k3s-xdp run`"
        );
    }

    let fallback_vip =
        vip.or_else(|| instance.and_then(|i| i.virtual_ipaddress.first().map(|v| v.0)));
    let mut names = BTreeSet::new();
    let mut services = 0;
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
        if f.port == 0 {
            warnings.push(at, format!("frontend {} has no `bind`: skipped", f.name));
            continue;
        }
        let Some(service_vip) = f.bind.or(fallback_vip) else {
            bail!(
                "{}:{}: frontend {} binds `*:{}`, every address: which one is the VIP? Pass --keepalived (its virtual_ipaddress) or --vip",
                haproxy.name, f.line, f.name, f.port
            );
        };
        if b.servers.is_empty() {
            warnings.push(at, format!("backend {backend_name} has no server: skipped"));
            continue;
        }
        let mut name = backend_name.clone();
        if !names.insert(name.clone()) {
            name = format!("{backend_name}-{}", f.port);
            names.insert(name.clone());
        }
        services += 1;
        let _ = writeln!(out, "\n[[service]]");
        let _ = writeln!(out, "name = {}", quote(&name));
        let _ = writeln!(out, "vip = {}", quote(&service_vip.to_string()));
        let _ = writeln!(out, "port = {}", f.port);
        let _ = writeln!(out, "backends = [");
        let mut seen = BTreeSet::new();
        for s in &b.servers {
            let port = s.port.unwrap_or(f.port);
            if !seen.insert((s.addr, port)) {
                warnings.push(
                    Where::new(haproxy.name, s.line),
                    format!(
                        "server {}: {}:{port} appears twice in backend {backend_name}: skipped",
                        s.name, s.addr
                    ),
                );
                continue;
            }
            let weight = match s.params.weight {
                Some(w) if w > 256 => {
                    warnings.push(
                        Where::new(haproxy.name, s.line),
                        format!("server {}: weight {w} above 256, using 256", s.name),
                    );
                    ", weight = 256".to_string()
                }
                Some(w) => format!(", weight = {w}"),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {{ name = {}, address = {}{weight} }},",
                quote(&s.name),
                quote(&format!("{}:{port}", s.addr))
            );
        }
        let _ = writeln!(out, "]");
        write_health(&mut out, b, haproxy.name, &mut warnings);
    }
    if services == 0 {
        bail!(
            "{}: no frontend with a default_backend and servers: nothing to import",
            haproxy.name
        );
    }

    if let Some(i) = instance {
        write_vrrp(&mut out, i, k.as_ref(), &mut warnings)?;
    }
    Ok(Imported {
        toml: out,
        warnings,
    })
}

fn write_health(out: &mut String, b: &haproxy::Backend, file: &str, warnings: &mut Warnings) {
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
        (true, Some(_)) => "https",
        (true, None) => "tls",
        (false, Some(_)) => {
            warnings.push(
                Where::new(file, b.line),
                format!("backend {}: `option httpchk` over plain HTTP is not supported; using a tcp check (add `check-ssl` for https)", b.name),
            );
            "tcp"
        }
        (false, None) => "tcp",
    };
    let _ = writeln!(out, "\n[service.health]");
    let _ = writeln!(out, "check = \"{check}\"");
    if check == "tcp" && b.servers.iter().any(|s| s.port.unwrap_or(0) == 6443) {
        let _ = writeln!(
            out,
            "# k3s: check = \"tls\" also proves the API server completes a TLS handshake"
        );
    }
    if check == "https" {
        if let Some(path) = &b.httpchk {
            let _ = writeln!(out, "path = {}", quote(path));
        }
    }
    if let Some(port) = p.port {
        let _ = writeln!(out, "port = {port}");
    }
    for (key, value) in [
        ("inter", p.inter),
        ("downinter", p.downinter),
        ("fastinter", p.fastinter),
    ] {
        if let Some(v) = value {
            let _ = writeln!(out, "{key} = \"{}\"", fmt_duration(v));
        }
    }
    if let Some(v) = p.rise {
        let _ = writeln!(out, "rise = {v}");
    }
    if let Some(v) = p.fall {
        let _ = writeln!(out, "fall = {v}");
    }
    if let Some(v) = b.check_timeout {
        let _ = writeln!(out, "timeout = \"{}\"", fmt_duration(v));
    }
    if let Some(v) = p.slowstart {
        let _ = writeln!(out, "slowstart = \"{}\"", fmt_duration(v));
    }
}

fn write_vrrp(
    out: &mut String,
    i: &keepalived::Instance,
    k: Option<&keepalived::Keepalived>,
    warnings: &mut Warnings,
) -> Result<()> {
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
    let version = k.and_then(|k| k.version).unwrap_or(2);
    let _ = writeln!(out, "\n[vrrp]");
    let _ = writeln!(out, "virtual_router_id = {vrid}");
    if let Some(p) = i.priority {
        let _ = writeln!(out, "priority = {p}");
    } else {
        let _ = writeln!(out, "# priority = 100   # e.g. 200 on lb-1, 100 on lb-2");
    }
    match i.master {
        Some(true) => {
            let _ = writeln!(out, "state = \"master\"");
        }
        Some(false) => {
            let _ = writeln!(out, "state = \"backup\"");
        }
        None => {
            let _ = writeln!(out, "# state = \"master\"   # on lb-1; \"backup\" on lb-2");
        }
    }
    if let Some(v) = i.advert_int {
        let v = if version == 2 && v.subsec_nanos() != 0 {
            let rounded = Duration::from_secs(v.as_secs().max(1));
            warnings.push(
                Where::new(file, i.lines.advert_int),
                format!("advert_int {v:?}: VRRPv2 counts whole seconds, using {rounded:?}"),
            );
            rounded
        } else {
            v
        };
        let _ = writeln!(out, "advert_int = \"{}\"", fmt_duration(v));
    }
    let addresses: Vec<String> = i
        .virtual_ipaddress
        .iter()
        .map(|(a, p)| quote(&format!("{a}/{p}")))
        .collect();
    let _ = writeln!(out, "virtual_ipaddress = [{}]", addresses.join(", "));
    if let Some(src) = i.unicast_src_ip {
        let _ = writeln!(out, "unicast_src_ip = {}", quote(&src.to_string()));
    }
    if !i.unicast_peers.is_empty() {
        let peers: Vec<String> = i
            .unicast_peers
            .iter()
            .map(|p| quote(&p.to_string()))
            .collect();
        let _ = writeln!(out, "unicast_peers = [{}]", peers.join(", "));
    }
    if !i.preempt {
        let _ = writeln!(out, "preempt = false");
    }
    if let Some(d) = i.preempt_delay {
        let _ = writeln!(out, "preempt_delay = \"{}\"", fmt_duration(d));
    }
    let _ = writeln!(
        out,
        "version = {version}   # keepalived's default; 3 once both nodes run k3s-xdp"
    );
    if let Some(pass) = &i.auth_pass {
        if version == 2 {
            let pass = if pass.len() > 8 {
                warnings.push(
                    Where::new(file, i.lines.authentication),
                    "auth_pass longer than 8 characters: keepalived uses the first 8, so does this import".into(),
                );
                pass.chars().take(8).collect()
            } else {
                pass.clone()
            };
            let _ = writeln!(out, "auth_pass = {}", quote(&pass));
        } else {
            warnings.push(
                Where::new(file, i.lines.authentication),
                "authentication with vrrp_version 3: VRRPv3 has no authentication, dropped".into(),
            );
        }
    }
    if let Some(w) = i.track_weight {
        let weight = if w > 0 { -w } else { w };
        let _ = writeln!(
            out,
            "track = {{ dataplane = true, min_healthy_backends = 1, weight = {weight} }}"
        );
    }
    if let Some(n) = i.garp_master_repeat {
        let _ = writeln!(out, "garp_master_repeat = {n}");
    }
    if let Some(v) = k.and_then(|k| k.garp_interval).filter(|v| !v.is_zero()) {
        let _ = writeln!(out, "garp_interval = \"{}\"", fmt_duration(v));
    }
    if let Some(v) = i.garp_master_refresh {
        let _ = writeln!(out, "garp_master_refresh = \"{}\"", fmt_duration(v));
    }
    Ok(())
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_string()
}

/// "10s", "500ms", "1m".
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
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
            None,
        )
        .unwrap();
        let text = imported.warnings.to_string();
        for expected in [
            "/etc/keepalived/lb-1.conf:7: auth_pass longer than 8",
            "/etc/keepalived/lb-1.conf:4: advert_int",
            "/etc/keepalived/lb-1.conf:13: 2 vrrp_instance blocks",
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
                None,
            )
            .unwrap();
            let config = check(&imported.toml);
            assert_eq!(config.interface.as_deref(), Some("eth1"));
            let s = &config.services[0];
            assert_eq!(s.name, "k3s-backend");
            assert_eq!(s.vip, Ipv4Addr::new(10, 10, 10, 100));
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
                None,
            )
            .unwrap();
            let config = check(&imported.toml);
            assert_eq!(config.interface.as_deref(), Some("ens192"));
            assert_eq!(config.services.len(), 2);
            let api = &config.services[0];
            assert_eq!((api.name.as_str(), api.port), ("kube-apiserver", 6443));
            assert_eq!(api.vip, Ipv4Addr::new(10, 220, 62, 31));
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
            assert_eq!(v.unicast_peers, vec![peer.parse::<Ipv4Addr>().unwrap()]);
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
            None,
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
            Some(Ipv4Addr::new(192, 0, 2, 100)),
        )
        .unwrap();
        assert!(check(&ok.toml).vrrp.is_none());
    }

    #[test]
    fn durations_render_in_the_largest_unit() {
        assert_eq!(fmt_duration(Duration::from_secs(60)), "1m");
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
    }
}
