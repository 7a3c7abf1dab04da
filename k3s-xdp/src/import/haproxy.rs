//! Reading haproxy.cfg: the frontends (what listens where), their backends (servers and their
//! check settings), and `default-server` lines; everything else is reported as a directive
//! without an equivalent. Pure: text in, model and warnings out.

use super::{Warnings, Where};
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

/// A frontend (or `listen` section): where it binds and which backend serves it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frontend {
    pub name: String,
    pub line: usize,
    /// Address to bind; None for `*` or an empty host.
    pub bind: Option<IpAddr>,
    pub port: u16,
    pub backend: Option<String>,
    pub http: bool,
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
                if !frontend_line(&mut out.frontends[*i], &words, &at, &mut Warnings::default()) {
                    if let Some(b) = out.backends.get_mut(name) {
                        backend_line(b, &mut section_defaults, &words, &at, warnings);
                    }
                }
            }
        }
    }
    out
}

/// A frontend directive; returns whether it was one (for `listen` sections).
fn frontend_line(f: &mut Frontend, words: &[String], at: &Where, warnings: &mut Warnings) -> bool {
    match words[0].as_str() {
        "bind" => {
            let Some(addr) = words.get(1) else {
                warnings.push(at.clone(), "`bind` without an address: skipped".into());
                return true;
            };
            match parse_bind(addr) {
                Some((host, port)) => {
                    if f.port != 0 {
                        warnings.push(
                            at.clone(),
                            format!(
                                "frontend {}: a second `bind` ({addr}): only the first is imported",
                                f.name
                            ),
                        );
                    } else {
                        f.bind = host;
                        f.port = port;
                    }
                }
                None => warnings.push(
                    at.clone(),
                    format!("`bind {addr}`: not an IPv4 address:port, skipped"),
                ),
            }
            if words.len() > 2 {
                warnings.push(
                    at.clone(),
                    format!("`bind` options `{}`: no equivalent (k3s-xdp forwards TCP/UDP, it does not terminate TLS)", words[2..].join(" ")),
                );
            }
            true
        }
        "default_backend" => {
            f.backend = words.get(1).cloned();
            true
        }
        "mode" => {
            if words.get(1).map(String::as_str) == Some("http") {
                f.http = true;
                warnings.push(
                    at.clone(),
                    "`mode http`: k3s-xdp forwards at layer 4; HTTP features do not apply".into(),
                );
            }
            true
        }
        "use_backend" => {
            warnings.push(
                at.clone(),
                format!(
                    "`{}`: content switching has no equivalent; only default_backend is imported",
                    words.join(" ")
                ),
            );
            true
        }
        "option" | "log" | "timeout" | "maxconn" | "tcp-request" | "http-request" | "acl"
        | "capture" => {
            warnings.push(at.clone(), no_equivalent(words));
            true
        }
        _ => false,
    }
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
            let Some((addr, port)) = parse_server_address(address) else {
                warnings.push(
                    at.clone(),
                    format!("server {name}: `{address}` is not an IP address[:port]; skipped"),
                );
                return;
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

/// HAProxy's `HOST:PORT` (the port after the last colon, so `2001:db8::50:6443` is an IPv6
/// host and its port), `[IPv6]:PORT`, `[IPv6]`, or a host without a colon; an `ipv4@`/`ipv6@`
/// prefix is dropped.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    let s = s
        .strip_prefix("ipv4@")
        .or_else(|| s.strip_prefix("ipv6@"))
        .unwrap_or(s);
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => (s, None),
        };
    }
    // As HAProxy reads it: the port is after the last colon, so an IPv6 host without a port
    // needs brackets (HAProxy itself fails on `2001:db8::50` alone).
    match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    }
}

/// `*:6443`, `:6443`, `192.0.2.100:6443`, `0.0.0.0:6443`, `:::6443`, `[::]:6443`,
/// `[2001:db8::100]:6443`, `ipv6@:::6443`; `None` for the host: every address (a wildcard).
fn parse_bind(s: &str) -> Option<(Option<IpAddr>, u16)> {
    let (host, port) = split_host_port(s);
    let port: u16 = port?.parse().ok().filter(|p| *p != 0)?;
    let host = match host {
        "" | "*" | "0.0.0.0" | "::" => None,
        h => Some(h.parse().ok()?),
    };
    Some((host, port))
}

fn parse_server_address(s: &str) -> Option<(IpAddr, Option<u16>)> {
    let (host, port) = split_host_port(s);
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host.parse().ok()?, port))
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

    #[test]
    fn binds() {
        assert_eq!(parse_bind("*:6443"), Some((None, 6443)));
        assert_eq!(parse_bind(":6443"), Some((None, 6443)));
        assert_eq!(
            parse_bind("10.10.10.100:6443"),
            Some((Some("10.10.10.100".parse().unwrap()), 6443))
        );
        for wildcard in ["[::]:6443", ":::6443", "ipv6@:::6443", "ipv4@*:6443"] {
            assert_eq!(parse_bind(wildcard), Some((None, 6443)), "{wildcard}");
        }
        let v6 = Some("2001:db8::100".parse().unwrap());
        assert_eq!(parse_bind("[2001:db8::100]:6443"), Some((v6, 6443)));
        assert_eq!(parse_bind("2001:db8::100:6443"), Some((v6, 6443)));
        assert_eq!(parse_bind("*:0"), None);
        assert_eq!(parse_bind("[2001:db8::100]"), None, "no port");
        assert_eq!(parse_bind("[2001:db8::100:6443"), None);
    }

    #[test]
    fn server_addresses() {
        let v6: IpAddr = "2001:db8::50".parse().unwrap();
        assert_eq!(
            parse_server_address("[2001:db8::50]:6443"),
            Some((v6, Some(6443)))
        );
        assert_eq!(
            parse_server_address("2001:db8::50:6443"),
            Some((v6, Some(6443)))
        );
        assert_eq!(
            parse_server_address("2001:db8::50"),
            None,
            "as HAProxy: host `2001:db8:`, port 50"
        );
        assert_eq!(parse_server_address("[2001:db8::50]"), Some((v6, None)));
        assert_eq!(
            parse_server_address("192.0.2.50:6443"),
            Some(("192.0.2.50".parse().unwrap(), Some(6443)))
        );
        assert_eq!(parse_server_address("k3s-server-1:6443"), None, "a name");
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
