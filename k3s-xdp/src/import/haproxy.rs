//! Reading haproxy.cfg: the frontends (what listens where), their backends (servers and their
//! check settings), and `default-server` lines; everything else is reported as a directive
//! without an equivalent. Pure: text in, model and warnings out.
//!
//! Addresses are read as HAProxy reads them (`str2sa_range`): an optional `ipv4@`/`ipv6@`
//! prefix, then the port after the last colon; an IPv6 address may stand in brackets
//! (`[2001:db8::50]:6443`) or bare, where the last colon always starts the port
//! (`2001:db8::50:6443`, and `2001:db8::50:` for no port).

use super::{family, Warnings, Where};
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

/// A frontend (or `listen` section): where it binds and which backend serves it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frontend {
    pub name: String,
    pub line: usize,
    /// The `bind` lines imported: one port, at most one address of each family.
    pub binds: Vec<Bind>,
    /// The port of the first `bind`; 0 without one.
    pub port: u16,
    pub backend: Option<String>,
    pub http: bool,
}

/// A `bind` line's address.
#[derive(Clone, Debug, PartialEq)]
pub struct Bind {
    pub line: usize,
    /// As written, for messages.
    pub text: String,
    pub host: Host,
    pub port: u16,
}

/// What a `bind` listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// `*`, `0.0.0.0`, no host, `ipv4@`: every IPv4 address.
    AnyV4,
    /// `::`, `[::]`, `ipv6@`: every IPv6 address; on Linux also IPv4 (as mapped addresses)
    /// unless `v6only`, as net.ipv6.bindv6only is 0 by default.
    AnyV6 { v4_too: bool },
    /// One address: the VIP.
    Addr(IpAddr),
}

impl Bind {
    /// Whether clients of this family (IPv4 if `v4`) reach HAProxy through this bind.
    pub fn takes(&self, v4: bool) -> bool {
        match self.host {
            Host::AnyV4 => v4,
            Host::AnyV6 { v4_too } => !v4 || v4_too,
            Host::Addr(a) => a.is_ipv4() == v4,
        }
    }

    /// The address it binds, unless a wildcard.
    pub fn addr(&self) -> Option<IpAddr> {
        match self.host {
            Host::Addr(a) => Some(a),
            _ => None,
        }
    }
}

/// Check settings, as `default-server` or `server` give them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerParams {
    pub inter: Option<Duration>,
    pub downinter: Option<Duration>,
    pub fastinter: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub slowstart: Option<Duration>,
    pub weight: Option<u32>,
    pub check: bool,
    pub check_ssl: bool,
    pub port: Option<u16>,
}

impl ServerParams {
    /// `self` with the unset values of `defaults`.
    fn or(&self, defaults: &ServerParams) -> ServerParams {
        ServerParams {
            inter: self.inter.or(defaults.inter),
            downinter: self.downinter.or(defaults.downinter),
            fastinter: self.fastinter.or(defaults.fastinter),
            rise: self.rise.or(defaults.rise),
            fall: self.fall.or(defaults.fall),
            slowstart: self.slowstart.or(defaults.slowstart),
            weight: self.weight.or(defaults.weight),
            check: self.check || defaults.check,
            check_ssl: self.check_ssl || defaults.check_ssl,
            port: self.port.or(defaults.port),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub name: String,
    pub line: usize,
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub params: ServerParams,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backend {
    pub name: String,
    pub line: usize,
    pub servers: Vec<Server>,
    /// `option httpchk [METH] PATH`: the path.
    pub httpchk: Option<String>,
    pub tcp_check: bool,
    /// `timeout check`.
    pub check_timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Haproxy {
    pub frontends: Vec<Frontend>,
    pub backends: BTreeMap<String, Backend>,
}

enum Section {
    None,
    Global,
    Defaults,
    Frontend(usize),
    Backend(String),
    /// `listen NAME`: a frontend and a backend of the same name.
    Listen(usize, String),
    Other,
}

/// Parses haproxy.cfg; directives without an equivalent go to `warnings`.
pub fn parse(text: &str, file: &str, warnings: &mut Warnings) -> Haproxy {
    let mut out = Haproxy::default();
    let mut section = Section::None;
    let mut defaults_server = ServerParams::default();
    let mut defaults_timeout_check: Option<Duration> = None;
    let mut section_defaults = ServerParams::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let at = Where::new(file, line);
        let words = split(raw);
        let Some(first) = words.first().map(String::as_str) else {
            continue;
        };
        match first {
            "global" => {
                section = Section::Global;
                continue;
            }
            "defaults" => {
                section = Section::Defaults;
                continue;
            }
            "frontend" | "listen" | "backend" => {
                let Some(name) = words.get(1).cloned() else {
                    warnings.push(at, format!("`{first}` without a name: skipped"));
                    section = Section::Other;
                    continue;
                };
                section_defaults = defaults_server.clone();
                match first {
                    "frontend" => {
                        out.frontends.push(Frontend {
                            name,
                            line,
                            ..Default::default()
                        });
                        section = Section::Frontend(out.frontends.len() - 1);
                    }
                    "backend" => {
                        out.backends.insert(
                            name.clone(),
                            Backend {
                                name: name.clone(),
                                line,
                                check_timeout: defaults_timeout_check,
                                ..Default::default()
                            },
                        );
                        section = Section::Backend(name);
                    }
                    _ => {
                        out.frontends.push(Frontend {
                            name: name.clone(),
                            line,
                            backend: Some(name.clone()),
                            ..Default::default()
                        });
                        out.backends.insert(
                            name.clone(),
                            Backend {
                                name: name.clone(),
                                line,
                                check_timeout: defaults_timeout_check,
                                ..Default::default()
                            },
                        );
                        section = Section::Listen(out.frontends.len() - 1, name);
                    }
                }
                continue;
            }
            "resolvers" | "peers" | "userlist" | "mailers" | "program" | "http-errors"
            | "cache" | "ring" => {
                warnings.push(at, format!("section `{first}`: no equivalent, skipped"));
                section = Section::Other;
                continue;
            }
            _ => {}
        }
        match &section {
            Section::None => warnings.push(at, format!("`{first}` outside any section: skipped")),
            Section::Other => {}
            Section::Global => warnings.push(
                at,
                format!(
                    "global `{}`: no equivalent (k3s-xdp logs to stderr/journald and reports through `k3s-xdp status` and metrics)",
                    words.join(" ")
                ),
            ),
            Section::Defaults => match first {
                "default-server" => {
                    defaults_server = server_params(&words[1..], &at, warnings);
                }
                "timeout" if words.get(1).map(String::as_str) == Some("check") => {
                    defaults_timeout_check = words.get(2).and_then(|v| duration(v));
                }
                "mode" => {}
                _ => warnings.push(at, no_equivalent(&words)),
            },
            Section::Frontend(i) => {
                frontend_line(&mut out.frontends[*i], &words, &at, warnings);
            }
            Section::Backend(name) => {
                if let Some(b) = out.backends.get_mut(name) {
                    backend_line(b, &mut section_defaults, &words, &at, warnings);
                }
            }
            Section::Listen(i, name) => {
                // A listen section is both; `option` and `timeout` go to the backend, which
                // reads `option httpchk`, `option tcp-check` and `timeout check`.
                let frontend_only = matches!(
                    first,
                    "bind"
                        | "default_backend"
                        | "use_backend"
                        | "mode"
                        | "log"
                        | "maxconn"
                        | "tcp-request"
                        | "http-request"
                        | "acl"
                        | "capture"
                );
                if frontend_only {
                    frontend_line(&mut out.frontends[*i], &words, &at, warnings);
                } else if let Some(b) = out.backends.get_mut(name) {
                    backend_line(b, &mut section_defaults, &words, &at, warnings);
                }
            }
        }
    }
    out
}

/// A frontend directive.
fn frontend_line(f: &mut Frontend, words: &[String], at: &Where, warnings: &mut Warnings) {
    match words[0].as_str() {
        "bind" => {
            let Some(addr) = words.get(1) else {
                warnings.push(at.clone(), "`bind` without an address: skipped".into());
                return;
            };
            let options = &words[2..];
            let mut others = Vec::new();
            let mut v4_too = true;
            for o in options {
                match o.as_str() {
                    // They say which families `::` takes, which the import needs.
                    "v6only" => v4_too = false,
                    "v4v6" => v4_too = true,
                    _ => others.push(o.as_str()),
                }
            }
            // `bind :6443,:::6443`: a list.
            for one in addr.split(',') {
                match parse_bind(one) {
                    Ok((mut host, port)) => {
                        if let Host::AnyV6 { .. } = host {
                            host = Host::AnyV6 { v4_too };
                        }
                        let bind = Bind {
                            line: at.line,
                            text: one.to_string(),
                            host,
                            port,
                        };
                        add_bind(f, bind, at, warnings);
                    }
                    Err(why) => warnings.push(at.clone(), format!("`bind {one}`: {why}; skipped")),
                }
            }
            if !others.is_empty() {
                warnings.push(
                    at.clone(),
                    format!("`bind` options `{}`: no equivalent (k3s-xdp forwards TCP/UDP, it does not terminate TLS)", others.join(" ")),
                );
            }
        }
        "default_backend" => {
            f.backend = words.get(1).cloned();
        }
        "mode" => {
            if words.get(1).map(String::as_str) == Some("http") {
                f.http = true;
                warnings.push(
                    at.clone(),
                    "`mode http`: k3s-xdp forwards at layer 4; HTTP features do not apply".into(),
                );
            }
        }
        "use_backend" => {
            warnings.push(
                at.clone(),
                format!(
                    "`{}`: content switching has no equivalent; only default_backend is imported",
                    words.join(" ")
                ),
            );
        }
        _ => warnings.push(at.clone(), no_equivalent(words)),
    }
}

/// Adds a `bind` to the frontend: k3s-xdp serves one port per service, and one VIP of each
/// family.
fn add_bind(f: &mut Frontend, bind: Bind, at: &Where, warnings: &mut Warnings) {
    if let Some(first) = f.binds.first() {
        if bind.port != first.port {
            warnings.push(
                at.clone(),
                format!(
                    "frontend {}: `bind {}` on another port than `bind {}` (line {}): only port {} is imported; make another frontend for port {}",
                    f.name, bind.text, first.text, first.line, first.port, bind.port
                ),
            );
            return;
        }
    }
    if let Some(a) = bind.addr() {
        let same = f
            .binds
            .iter()
            .find(|b| b.addr().is_some_and(|b| b.is_ipv4() == a.is_ipv4()));
        if let Some(same) = same {
            warnings.push(
                at.clone(),
                format!(
                    "frontend {}: a second {} address (`bind {}`, after `bind {}` at line {}): a service has one VIP, only the first is imported",
                    f.name,
                    family(a),
                    bind.text,
                    same.text,
                    same.line
                ),
            );
            return;
        }
    }
    f.port = bind.port;
    f.binds.push(bind);
}

fn backend_line(
    b: &mut Backend,
    defaults: &mut ServerParams,
    words: &[String],
    at: &Where,
    warnings: &mut Warnings,
) {
    match words[0].as_str() {
        "server" => {
            let (Some(name), Some(address)) = (words.get(1), words.get(2)) else {
                warnings.push(at.clone(), "`server` without a name and address: skipped".into());
                return;
            };
            let (addr, port) = match parse_server_address(address) {
                Ok(a) => a,
                Err(why) => {
                    warnings.push(at.clone(), format!("server {name}: `{address}`: {why}; skipped"));
                    return;
                }
            };
            let own = server_params(&words[3..], at, warnings);
            b.servers.push(Server {
                name: name.clone(),
                line: at.line,
                addr,
                port,
                params: own.or(defaults),
            });
        }
        "default-server" => *defaults = server_params(&words[1..], at, warnings).or(defaults),
        "option" => match words.get(1).map(String::as_str) {
            Some("tcp-check") => b.tcp_check = true,
            Some("httpchk") => {
                // `option httpchk [<method>] <uri> [<version>]`, or nothing (GET /).
                let path = match &words[2..] {
                    [] => "/".to_string(),
                    [uri] => uri.clone(),
                    [_method, uri, ..] => uri.clone(),
                };
                b.httpchk = Some(path);
            }
            _ => warnings.push(at.clone(), no_equivalent(words)),
        },
        "http-check" => {
            if words.get(1).map(String::as_str) == Some("send") {
                if let Some(i) = words.iter().position(|w| w == "uri") {
                    b.httpchk = words.get(i + 1).cloned().or(b.httpchk.take());
                }
            } else {
                warnings.push(at.clone(), no_equivalent(words));
            }
        }
        "timeout" if words.get(1).map(String::as_str) == Some("check") => {
            b.check_timeout = words.get(2).and_then(|v| duration(v));
        }
        "balance" => warnings.push(
            at.clone(),
            format!("`{}`: replaced by Maglev consistent hashing (flows keep their server; weights honoured)", words.join(" ")),
        ),
        "mode" => {
            if words.get(1).map(String::as_str) == Some("http") {
                warnings.push(at.clone(), "`mode http`: k3s-xdp forwards at layer 4".into());
            }
        }
        _ => warnings.push(at.clone(), no_equivalent(words)),
    }
}

/// Parameters of `server`/`default-server` after the address.
fn server_params(words: &[String], at: &Where, warnings: &mut Warnings) -> ServerParams {
    let mut p = ServerParams::default();
    let mut i = 0;
    while i < words.len() {
        let key = words[i].as_str();
        let value = words.get(i + 1);
        let mut takes_value = true;
        match key {
            "inter" => p.inter = value.and_then(|v| duration(v)),
            "downinter" => p.downinter = value.and_then(|v| duration(v)),
            "fastinter" => p.fastinter = value.and_then(|v| duration(v)),
            "slowstart" => p.slowstart = value.and_then(|v| duration(v)),
            "rise" => p.rise = value.and_then(|v| v.parse().ok()),
            "fall" => p.fall = value.and_then(|v| v.parse().ok()),
            "weight" => p.weight = value.and_then(|v| v.parse().ok()),
            "port" => p.port = value.and_then(|v| v.parse().ok()),
            "check" => {
                p.check = true;
                takes_value = false;
            }
            "check-ssl" => {
                p.check = true;
                p.check_ssl = true;
                takes_value = false;
            }
            "verify" => {
                if value.map(String::as_str) != Some("none") {
                    warnings.push(
                        at.clone(),
                        "`verify required`: set `ca_file` in [service.health] to verify backend certificates".into(),
                    );
                }
            }
            "maxconn" | "maxqueue" | "minconn" => warnings.push(
                at.clone(),
                format!("`{key} {}`: no equivalent (XDP forwards every packet at once; there is no queue)", value.map(String::as_str).unwrap_or("")),
            ),
            "backup" | "disabled" | "ssl" | "send-proxy" | "send-proxy-v2" | "resolve-prefer"
            | "no-check" => {
                let hint = match key {
                    "disabled" => " (use `k3s-xdp backend disable SERVICE/BACKEND`)",
                    "backup" => " (every backend takes traffic)",
                    _ => "",
                };
                warnings.push(at.clone(), format!("`{key}`: no equivalent{hint}"));
                takes_value = false;
            }
            _ => {
                warnings.push(
                    at.clone(),
                    format!("`{key}{}`: no equivalent", value.map(|v| format!(" {v}")).unwrap_or_default()),
                );
            }
        }
        i += if takes_value { 2 } else { 1 };
    }
    p
}

fn no_equivalent(words: &[String]) -> String {
    format!("`{}`: no equivalent", words.join(" "))
}

/// Splits a line into words, dropping comments (`#` outside quotes) and quotes.
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => current.push(c),
            None => match c {
                '#' => break,
                '"' | '\'' => {
                    quote = Some(c);
                    in_word = true;
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut current));
                        in_word = false;
                    }
                }
                c => {
                    current.push(c);
                    in_word = true;
                }
            },
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

/// A `bind` address: `*:6443`, `:6443`, `0.0.0.0:6443`, `192.0.2.100:6443`, `:::6443`,
/// `[::]:6443`, `[2001:db8::100]:6443`, `2001:db8::100:6443`, `ipv4@:6443`, `ipv6@:6443`.
fn parse_bind(s: &str) -> Result<(Host, u16), String> {
    let (forced, host, port) = split_address(s)?;
    let Some(port) = port else {
        return Err(format!("no port{}", bare_ipv6_hint(s)));
    };
    if port.contains('-') {
        return Err(format!(
            "port range `{port}`: a service listens on one port"
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("`{port}` is not a port 1..65535")),
    };
    let host = match (host, forced) {
        ("" | "*", Some(Family::V6)) => Host::AnyV6 { v4_too: true },
        ("" | "*", _) => Host::AnyV4,
        _ => match ip(host, forced, s)? {
            IpAddr::V4(a) if a.is_unspecified() => Host::AnyV4,
            IpAddr::V6(a) if a.is_unspecified() => Host::AnyV6 { v4_too: true },
            a => Host::Addr(a),
        },
    };
    Ok((host, port))
}

/// A `server` address, its port optional: `192.0.2.50:6443`, `192.0.2.50`,
/// `[2001:db8::50]:6443`, `[2001:db8::50]`, `2001:db8::50:6443`, `2001:db8::50:`,
/// `ipv6@2001:db8::50:6443`.
fn parse_server_address(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let (forced, host, port) = split_address(s)?;
    let port = match port {
        None => None,
        Some(p) if p.starts_with('+') || p.starts_with('-') => {
            return Err(format!(
                "port offset `{p}` (the client's port plus an offset): k3s-xdp forwards to a fixed port"
            ))
        }
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => Some(p),
            _ => return Err(format!("`{p}` is not a port 1..65535")),
        },
    };
    let addr = ip(host, forced, s)?;
    if addr.is_unspecified() {
        return Err("the wildcard address is no server".into());
    }
    Ok((addr, port))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// HAProxy's split of an address: the family prefix, the host, and the port after the last
/// colon that follows any closing bracket (None: no port; an empty port is no port).
fn split_address(s: &str) -> Result<(Option<Family>, &str, Option<&str>), String> {
    let (forced, rest) = if let Some(rest) = s.strip_prefix("ipv4@") {
        (Some(Family::V4), rest)
    } else if let Some(rest) = s.strip_prefix("ipv6@") {
        (Some(Family::V6), rest)
    } else if let Some((prefix, _)) = s.split_once('@') {
        return Err(format!(
            "`{prefix}@` addresses (UNIX sockets, file descriptors, UDP, QUIC) have no equivalent; k3s-xdp forwards IP"
        ));
    } else if s.starts_with('/') {
        return Err("a UNIX socket has no equivalent; k3s-xdp forwards IP".into());
    } else {
        (None, s)
    };
    Ok(match rest.rfind([':', ']']) {
        Some(i) if rest.as_bytes()[i] == b':' => {
            let port = &rest[i + 1..];
            (forced, &rest[..i], (!port.is_empty()).then_some(port))
        }
        _ => (forced, rest, None),
    })
}

/// The host of an address: an IP address, an IPv6 one possibly in brackets, of the prefix's
/// family if there is one.
fn ip(host: &str, forced: Option<Family>, whole: &str) -> Result<IpAddr, String> {
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let parsed = match bracketed {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).ok(),
        None => host.parse::<IpAddr>().ok(),
    };
    let Some(addr) = parsed else {
        return Err(format!(
            "`{host}` is not an IPv4 or IPv6 address{}",
            bare_ipv6_hint(whole)
        ));
    };
    match (forced, addr) {
        (Some(Family::V4), IpAddr::V6(_)) => Err(format!("`ipv4@` with the IPv6 address {addr}")),
        (Some(Family::V6), IpAddr::V4(_)) => Err(format!("`ipv6@` with the IPv4 address {addr}")),
        _ => Ok(addr),
    }
}

/// For a bare IPv6 address without a port, HAProxy's reading: the port is what follows the
/// last colon.
fn bare_ipv6_hint(s: &str) -> String {
    let s = s
        .strip_prefix("ipv6@")
        .or_else(|| s.strip_prefix("ipv4@"))
        .unwrap_or(s);
    match s.parse::<std::net::Ipv6Addr>() {
        Ok(a) => format!(
            " (HAProxy reads the port after the last colon of a bare IPv6 address; write [{a}]:PORT or {a}:PORT, or `{a}:` for none)"
        ),
        Err(_) => String::new(),
    }
}

/// HAProxy time values: a bare number is milliseconds; units us, ms, s, m, h, d.
pub fn duration(s: &str) -> Option<Duration> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_durations() {
        assert_eq!(duration("5000"), Some(Duration::from_millis(5000)));
        assert_eq!(duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(duration("x"), None);
        assert_eq!(duration("10parsecs"), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The bind forms of HAProxy's manual (`bind [<address>]:<port_range>`, `ipv4@`/`ipv6@`,
    /// "the port is always the number after the last colon").
    #[test]
    fn binds() {
        let any6 = Host::AnyV6 { v4_too: true };
        for (text, host, port) in [
            ("*:6443", Host::AnyV4, 6443),
            (":6443", Host::AnyV4, 6443),
            ("0.0.0.0:6443", Host::AnyV4, 6443),
            ("ipv4@:6443", Host::AnyV4, 6443),
            ("ipv4@*:6443", Host::AnyV4, 6443),
            ("10.10.10.100:6443", Host::Addr(ip("10.10.10.100")), 6443),
            ("ipv4@192.0.2.100:80", Host::Addr(ip("192.0.2.100")), 80),
            (":::6443", any6, 6443),
            ("[::]:6443", any6, 6443),
            ("ipv6@:6443", any6, 6443),
            ("ipv6@*:6443", any6, 6443),
            ("ipv6@:::6443", any6, 6443),
            (
                "[2001:db8::100]:6443",
                Host::Addr(ip("2001:db8::100")),
                6443,
            ),
            ("2001:db8::100:6443", Host::Addr(ip("2001:db8::100")), 6443),
            (
                "ipv6@2001:db8::100:30080",
                Host::Addr(ip("2001:db8::100")),
                30080,
            ),
        ] {
            assert_eq!(parse_bind(text), Ok((host, port)), "{text}");
        }
        for (text, why) in [
            ("*:0", "is not a port"),
            ("*:", "no port"),
            ("*:6443-6450", "port range `6443-6450`"),
            ("[2001:db8::100]", "no port"),
            // The last colon starts the port: `2001:db8:` port 100, not an address.
            ("2001:db8::100", "write [2001:db8::100]:PORT"),
            ("ipv4@[2001:db8::100]:6443", "`ipv4@` with the IPv6 address"),
            ("ipv6@192.0.2.100:6443", "`ipv6@` with the IPv4 address"),
            ("unix@/run/k3s.sock", "`unix@` addresses"),
            ("/run/k3s.sock", "UNIX socket"),
            (
                "k3s.example:6443",
                "`k3s.example` is not an IPv4 or IPv6 address",
            ),
            ("[2001:db8::100:6443", "not an IPv4 or IPv6 address"),
        ] {
            let err = parse_bind(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn server_addresses() {
        for (text, addr, port) in [
            ("192.0.2.50:6443", "192.0.2.50", Some(6443)),
            ("192.0.2.50", "192.0.2.50", None),
            ("[2001:db8::50]:6443", "2001:db8::50", Some(6443)),
            ("[2001:db8::50]", "2001:db8::50", None),
            ("2001:db8::50:6443", "2001:db8::50", Some(6443)),
            ("2001:db8::50:", "2001:db8::50", None),
            ("ipv6@2001:db8::50:6443", "2001:db8::50", Some(6443)),
            ("ipv4@192.0.2.50", "192.0.2.50", None),
        ] {
            assert_eq!(parse_server_address(text), Ok((ip(addr), port)), "{text}");
        }
        for (text, why) in [
            (
                "2001:db8::50",
                "write [2001:db8::50]:PORT or 2001:db8::50:PORT",
            ),
            ("192.0.2.50:+1000", "port offset `+1000`"),
            ("192.0.2.50:0", "is not a port"),
            ("[::]:6443", "wildcard"),
            ("ipv6@192.0.2.50:6443", "`ipv6@` with the IPv4 address"),
            (
                "k3s-server-1:6443",
                "`k3s-server-1` is not an IPv4 or IPv6 address",
            ),
        ] {
            let err = parse_server_address(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    /// Several binds: one port, one address per family; `v6only` keeps IPv4 clients out of `::`.
    #[test]
    fn frontend_binds_of_both_families() {
        let cfg = "frontend f\n  bind 192.0.2.100:6443\n  bind [2001:db8::100]:6443\n  bind 192.0.2.101:6443\n  bind :::7443\n  bind :::6443 v6only\n";
        let mut w = Warnings::default();
        let h = parse(cfg, "haproxy.cfg", &mut w);
        let f = &h.frontends[0];
        let hosts: Vec<Host> = f.binds.iter().map(|b| b.host).collect();
        assert_eq!(
            hosts,
            [
                Host::Addr(ip("192.0.2.100")),
                Host::Addr(ip("2001:db8::100")),
                Host::AnyV6 { v4_too: false }
            ]
        );
        assert!(!f.binds[2].takes(true) && f.binds[2].takes(false));
        let text = w.to_string();
        assert!(
            text.contains("haproxy.cfg:4: frontend f: a second IPv4 address (`bind 192.0.2.101:6443`, after `bind 192.0.2.100:6443` at line 2)"),
            "{text}"
        );
        assert!(
            text.contains("haproxy.cfg:5: frontend f: `bind :::7443` on another port"),
            "{text}"
        );
        assert_eq!(w.0.len(), 2, "{text}");
    }

    /// `bind` takes a comma-separated list, each element read on its own with the line's
    /// options; `v4v6` (the default on Linux) lets `::` take IPv4 clients, `v6only` not.
    #[test]
    fn bind_lists_and_v4v6() {
        let cfg = "frontend f\n  bind :6443,:::6443 v4v6\nfrontend g\n  bind 192.0.2.100:6443,[2001:db8::100]:6443,nowhere:6443 v6only ssl\n";
        let mut w = Warnings::default();
        let h = parse(cfg, "haproxy.cfg", &mut w);
        let hosts = |i: usize| -> Vec<(Host, u16, &str, usize)> {
            h.frontends[i]
                .binds
                .iter()
                .map(|b| (b.host, b.port, b.text.as_str(), b.line))
                .collect()
        };
        assert_eq!(
            hosts(0),
            [
                (Host::AnyV4, 6443, ":6443", 2),
                (Host::AnyV6 { v4_too: true }, 6443, ":::6443", 2)
            ]
        );
        assert!(h.frontends[0].binds[1].takes(true));
        assert_eq!(
            hosts(1),
            [
                (Host::Addr(ip("192.0.2.100")), 6443, "192.0.2.100:6443", 4),
                (
                    Host::Addr(ip("2001:db8::100")),
                    6443,
                    "[2001:db8::100]:6443",
                    4
                )
            ]
        );
        let text = w.to_string();
        assert!(
            text.contains("haproxy.cfg:4: `bind nowhere:6443`: `nowhere` is not an IPv4 or IPv6 address; skipped"),
            "{text}"
        );
        // `v6only` and `v4v6` are read, the others named.
        assert!(
            text.contains("haproxy.cfg:4: `bind` options `ssl`: no equivalent"),
            "{text}"
        );
        assert!(!text.contains("v4v6") && !text.contains("v6only"), "{text}");
        assert_eq!(w.0.len(), 2, "{text}");
    }

    /// A listen section's `option httpchk`, `timeout check` and bind warnings are its own.
    #[test]
    fn listen_sections_keep_backend_options_and_frontend_warnings() {
        let cfg = "listen k3s\n  bind [2001:db8::100]:6443 ssl crt /x.pem\n  option httpchk GET /readyz\n  timeout check 3s\n  option tcplog\n  server s1 [2001:db8::50]:6443 check check-ssl\n";
        let mut w = Warnings::default();
        let h = parse(cfg, "haproxy.cfg", &mut w);
        let b = &h.backends["k3s"];
        assert_eq!(b.httpchk.as_deref(), Some("/readyz"));
        assert_eq!(b.check_timeout, Some(Duration::from_secs(3)));
        assert_eq!(b.servers[0].addr, ip("2001:db8::50"));
        let text = w.to_string();
        assert!(
            text.contains("haproxy.cfg:2: `bind` options `ssl crt /x.pem`"),
            "{text}"
        );
        assert!(text.contains("haproxy.cfg:5: `option tcplog`"), "{text}");
    }

    #[test]
    fn bad_addresses_are_warnings_naming_the_line() {
        let cfg = "frontend f\n  bind 2001:db8::100\n  default_backend b\nbackend b\n  server s1 2001:db8::50 check\n";
        let mut w = Warnings::default();
        let h = parse(cfg, "haproxy.cfg", &mut w);
        assert!(h.frontends[0].binds.is_empty());
        assert!(h.backends["b"].servers.is_empty());
        let text = w.to_string();
        assert!(
            text.contains("haproxy.cfg:2: `bind 2001:db8::100`: `2001:db8:` is not an IPv4 or IPv6 address (HAProxy reads the port after the last colon"),
            "{text}"
        );
        assert!(
            text.contains("haproxy.cfg:5: server s1: `2001:db8::50`: `2001:db8:` is not an IPv4 or IPv6 address (HAProxy reads"),
            "{text}"
        );
    }

    #[test]
    fn words_and_comments() {
        assert_eq!(
            split("    server devops-master-01 10.220.62.21:6443 check # Replace the IP"),
            ["server", "devops-master-01", "10.220.62.21:6443", "check"]
        );
        assert_eq!(
            split("  script \"killall -0 haproxy\""),
            ["script", "killall -0 haproxy"]
        );
        assert!(split("   # only a comment").is_empty());
    }

    #[test]
    fn default_server_applies_to_later_servers() {
        let cfg = "backend b\n  default-server inter 10s fall 2 weight 100\n  server s1 192.0.2.50:6443 check weight 50\n  server s2 192.0.2.51:6443 check\n";
        let mut w = Warnings::default();
        let h = parse(cfg, "haproxy.cfg", &mut w);
        let b = &h.backends["b"];
        assert_eq!(b.servers[0].params.weight, Some(50));
        assert_eq!(b.servers[0].params.inter, Some(Duration::from_secs(10)));
        assert_eq!(b.servers[1].params.weight, Some(100));
        assert_eq!(b.servers[1].params.fall, Some(2));
        assert!(w.is_empty(), "{w:?}");
    }
}
