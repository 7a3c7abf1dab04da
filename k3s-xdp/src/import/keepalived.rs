//! Reading keepalived.conf: the `vrrp_instance` (interface, state, priority, router id, advert
//! interval, authentication, unicast peers, virtual addresses, preemption, gratuitous ARP
//! settings) and the `vrrp_script` it tracks; other directives are reported. Pure.

use super::{Warnings, Where};
use std::{net::IpAddr, time::Duration};

/// keepalived's instance, in k3s-xdp's terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    pub name: String,
    /// Where directives stand, for warnings about them (0: absent).
    pub lines: Lines,
    pub interface: Option<String>,
    /// `state MASTER`.
    pub master: Option<bool>,
    pub priority: Option<u8>,
    pub virtual_router_id: Option<u8>,
    pub advert_int: Option<Duration>,
    pub auth_pass: Option<String>,
    pub unicast_src_ip: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    /// Address and prefix length.
    pub virtual_ipaddress: Vec<(IpAddr, u8)>,
    /// `version 2|3` in the instance, which overrides global_defs' `vrrp_version`.
    pub version: Option<u8>,
    pub preempt: bool,
    pub preempt_delay: Option<Duration>,
    pub garp_master_repeat: Option<u32>,
    pub garp_master_refresh: Option<Duration>,
    /// Weight of the tracked script (keepalived's sign convention), if a script is tracked.
    pub track_weight: Option<i32>,
}

/// Lines of an instance's directives that the import may warn about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    pub instance: usize,
    pub advert_int: usize,
    pub authentication: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Keepalived {
    /// The file's name, as given.
    pub file: String,
    pub instances: Vec<Instance>,
    /// `vrrp_version` from global_defs (keepalived's default is 2).
    pub version: Option<u8>,
    pub garp_interval: Option<Duration>,
}

/// A token with its line.
struct Token {
    text: String,
    line: usize,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut current = String::new();
        let mut quote: Option<char> = None;
        for c in raw.chars() {
            match quote {
                Some(q) if c == q => {
                    out.push(Token {
                        text: std::mem::take(&mut current),
                        line,
                    });
                    quote = None;
                }
                Some(_) => current.push(c),
                None => match c {
                    '#' | '!' => break,
                    '"' | '\'' => quote = Some(c),
                    '{' | '}' => {
                        if !current.is_empty() {
                            out.push(Token {
                                text: std::mem::take(&mut current),
                                line,
                            });
                        }
                        out.push(Token {
                            text: c.to_string(),
                            line,
                        });
                    }
                    c if c.is_whitespace() => {
                        if !current.is_empty() {
                            out.push(Token {
                                text: std::mem::take(&mut current),
                                line,
                            });
                        }
                    }
                    c => current.push(c),
                },
            }
        }
        if !current.is_empty() {
            out.push(Token {
                text: current,
                line,
            });
        }
    }
    out
}

/// A statement: its words on one line, and an optional `{ ... }` block of statements.
struct Statement {
    words: Vec<String>,
    line: usize,
    block: Option<Vec<Statement>>,
}

fn statements(tokens: &[Token], pos: &mut usize) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    while *pos < tokens.len() {
        let t = &tokens[*pos];
        match t.text.as_str() {
            "}" => {
                *pos += 1;
                return out;
            }
            "{" => {
                *pos += 1;
                let block = statements(tokens, pos);
                match out.last_mut() {
                    Some(last) if last.block.is_none() => last.block = Some(block),
                    _ => out.push(Statement {
                        words: Vec::new(),
                        line: t.line,
                        block: Some(block),
                    }),
                }
            }
            _ => {
                let line = t.line;
                let same_line = out
                    .last()
                    .is_some_and(|s| s.line == line && s.block.is_none());
                if same_line {
                    if let Some(last) = out.last_mut() {
                        last.words.push(t.text.clone());
                    }
                } else {
                    out.push(Statement {
                        words: vec![t.text.clone()],
                        line,
                        block: None,
                    });
                }
                *pos += 1;
            }
        }
    }
    out
}

/// Parses keepalived.conf.
pub fn parse(text: &str, file: &str, warnings: &mut Warnings) -> Keepalived {
    let tokens = tokenize(text);
    let mut pos = 0;
    let top = statements(&tokens, &mut pos);
    let mut out = Keepalived {
        file: file.to_string(),
        ..Default::default()
    };
    let mut scripts: Vec<(String, i32)> = Vec::new();
    let mut instances: Vec<(Instance, Vec<String>)> = Vec::new();
    for s in &top {
        let at = Where::new(file, s.line);
        let Some(kind) = s.words.first().map(String::as_str) else {
            continue;
        };
        let body = s.block.as_deref().unwrap_or(&[]);
        match kind {
            "global_defs" => {
                for g in body {
                    let at = Where::new(file, g.line);
                    match g.words.first().map(String::as_str) {
                        Some("vrrp_version") => {
                            out.version = g.words.get(1).and_then(|v| v.parse().ok())
                        }
                        Some("vrrp_garp_interval") => {
                            out.garp_interval = g.words.get(1).and_then(|v| seconds(v));
                        }
                        Some(other) => warnings.push(
                            at,
                            format!(
                                "global_defs `{}`: no equivalent{}",
                                join(&g.words),
                                hint(other)
                            ),
                        ),
                        None => {}
                    }
                }
            }
            "vrrp_script" => {
                let name = s.words.get(1).cloned().unwrap_or_default();
                let mut weight = 0;
                for d in body {
                    let at = Where::new(file, d.line);
                    match d.words.first().map(String::as_str) {
                        Some("weight") => weight = d.words.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
                        Some("script") => warnings.push(
                            at,
                            format!("vrrp_script {name}: `{}` is replaced by tracking the data plane and healthy backends", join(&d.words)),
                        ),
                        Some("interval") | Some("fall") | Some("rise") | Some("timeout") => {}
                        Some(_) => warnings.push(at, format!("vrrp_script {name}: `{}`: no equivalent", join(&d.words))),
                        None => {}
                    }
                }
                scripts.push((name, weight));
            }
            "vrrp_instance" => {
                let mut i = Instance {
                    name: s.words.get(1).cloned().unwrap_or_default(),
                    lines: Lines {
                        instance: s.line,
                        ..Lines::default()
                    },
                    preempt: true,
                    ..Default::default()
                };
                let mut tracked = Vec::new();
                for d in body {
                    instance_line(&mut i, &mut tracked, d, file, warnings);
                }
                instances.push((i, tracked));
            }
            other => warnings.push(at, format!("`{other}` block: no equivalent, skipped")),
        }
    }
    for (mut instance, tracked) in instances {
        if let Some(script) = tracked.first() {
            instance.track_weight = Some(
                scripts
                    .iter()
                    .find(|(n, _)| n == script)
                    .map(|(_, w)| *w)
                    .unwrap_or(0),
            );
        }
        out.instances.push(instance);
    }
    out
}

fn instance_line(
    i: &mut Instance,
    tracked: &mut Vec<String>,
    d: &Statement,
    file: &str,
    warnings: &mut Warnings,
) {
    let at = Where::new(file, d.line);
    let Some(key) = d.words.first().map(String::as_str) else {
        return;
    };
    let value = d.words.get(1).map(String::as_str);
    let block = d.block.as_deref().unwrap_or(&[]);
    let bad = |warnings: &mut Warnings, what: &str| {
        warnings.push(
            at.clone(),
            format!("`{}`: {what}; left to the default", join(&d.words)),
        )
    };
    match key {
        "interface" => i.interface = value.map(String::from),
        "state" => match value.map(str::to_ascii_uppercase).as_deref() {
            Some("MASTER") => i.master = Some(true),
            Some("BACKUP") => i.master = Some(false),
            _ => bad(warnings, "not MASTER or BACKUP (a template placeholder?)"),
        },
        "priority" => match value.and_then(|v| v.parse::<u8>().ok()) {
            Some(p) => i.priority = Some(p),
            None => bad(warnings, "not a number 1..254 (a template placeholder?)"),
        },
        "virtual_router_id" => match value.and_then(|v| v.parse::<u8>().ok()) {
            Some(v) => i.virtual_router_id = Some(v),
            None => bad(warnings, "not a number 1..255"),
        },
        "advert_int" => match value.and_then(seconds) {
            Some(v) => {
                i.advert_int = Some(v);
                i.lines.advert_int = d.line;
            }
            None => bad(warnings, "not a number of seconds"),
        },
        "authentication" => {
            for a in block {
                match a.words.first().map(String::as_str) {
                    Some("auth_pass") => {
                        i.auth_pass = a.words.get(1).cloned();
                        i.lines.authentication = a.line;
                    }
                    Some("auth_type") if a.words.get(1).map(String::as_str) != Some("PASS") => {
                        warnings.push(
                            Where::new(file, a.line),
                            format!(
                                "`{}`: only PASS is supported (AH is deprecated by RFC 3768)",
                                join(&a.words)
                            ),
                        );
                    }
                    _ => {}
                }
            }
        }
        "unicast_src_ip" => match value.and_then(|v| v.parse().ok()) {
            Some(a) => i.unicast_src_ip = Some(a),
            None => bad(warnings, "not an IP address"),
        },
        "unicast_peer" => {
            for p in block {
                match p.words.first().and_then(|v| v.parse().ok()) {
                    Some(a) => i.unicast_peers.push(a),
                    None => warnings.push(
                        Where::new(file, p.line),
                        format!(
                            "unicast_peer `{}`: not an IP address, skipped",
                            join(&p.words)
                        ),
                    ),
                }
                if p.words.len() > 1 {
                    warnings.push(
                        Where::new(file, p.line),
                        format!(
                            "unicast_peer options `{}`: no equivalent",
                            p.words[1..].join(" ")
                        ),
                    );
                }
            }
        }
        "virtual_ipaddress" => {
            for v in block {
                let Some(text) = v.words.first() else {
                    continue;
                };
                let (addr, prefix) = match text.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (text.as_str(), None),
                };
                let parsed = addr.parse::<IpAddr>().ok().and_then(|a| {
                    let host = if a.is_ipv4() { 32 } else { 128 };
                    match prefix.map(str::parse::<u8>) {
                        None => Some((a, host)),
                        Some(Ok(p)) if p <= host => Some((a, p)),
                        Some(_) => None,
                    }
                });
                match parsed {
                    Some(vip) => i.virtual_ipaddress.push(vip),
                    None => warnings.push(
                        Where::new(file, v.line),
                        format!("virtual_ipaddress `{text}`: not an IP address/prefix, skipped"),
                    ),
                }
                if v.words.len() > 1 {
                    warnings.push(
                        Where::new(file, v.line),
                        format!("virtual_ipaddress options `{}`: no equivalent (VIPs go on `interface`)", v.words[1..].join(" ")),
                    );
                }
            }
        }
        "virtual_ipaddress_excluded" => {
            let listed: Vec<&str> = block
                .iter()
                .filter_map(|v| v.words.first().map(String::as_str))
                .collect();
            warnings.push(
                at,
                format!(
                    "virtual_ipaddress_excluded ({}): not imported; k3s-xdp advertises every address it moves, each family with its own virtual router: list them in virtual_ipaddress (IPv6 ones need version = 3)",
                    listed.join(", ")
                ),
            );
        }
        "version" => match value.and_then(|v| v.parse::<u8>().ok()) {
            Some(v @ (2 | 3)) => i.version = Some(v),
            _ => bad(warnings, "not 2 or 3"),
        },
        // An IPv6 instance even before its first address: k3s-xdp runs a router per family of
        // the addresses, so there is nothing to carry over.
        "native_ipv6" => {}
        "track_script" => {
            tracked.extend(block.iter().filter_map(|t| t.words.first().cloned()));
            if tracked.len() > 1 {
                warnings.push(at, "several tracked scripts: k3s-xdp tracks its data plane and healthy backends, with the first script's weight".into());
            }
        }
        "nopreempt" => i.preempt = false,
        "preempt_delay" => i.preempt_delay = value.and_then(seconds),
        "garp_master_repeat" => i.garp_master_repeat = value.and_then(|v| v.parse().ok()),
        "garp_master_refresh" => i.garp_master_refresh = value.and_then(seconds),
        other => warnings.push(
            at,
            format!(
                "vrrp_instance `{}`: no equivalent{}",
                join(&d.words),
                hint(other)
            ),
        ),
    }
}

/// keepalived times are (possibly fractional) seconds.
fn seconds(v: &str) -> Option<Duration> {
    let s: f64 = v.parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_millis((s * 1000.0).round() as u64))
}

fn join(words: &[String]) -> String {
    words.join(" ")
}

fn hint(directive: &str) -> &'static str {
    match directive {
        "notification_email"
        | "notification_email_from"
        | "smtp_server"
        | "notify"
        | "notify_master"
        | "notify_backup"
        | "notify_fault" => " (watch `k3s-xdp status` or the k3sxdp_vrrp_* metrics)",
        "enable_script_security" | "script_user" => " (k3s-xdp runs no scripts)",
        "vrrp_skip_check_adv_addr" => " (k3s-xdp always checks the advertised addresses)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_blocks_and_comments() {
        let text = "vrrp_instance v { # comment\n  state MASTER ! also a comment\n  virtual_ipaddress {\n    192.0.2.100/24\n    192.0.2.101\n  }\n  authentication { auth_type PASS\n auth_pass secret }\n}\n";
        let mut w = Warnings::default();
        let k = parse(text, "k.conf", &mut w);
        let i = &k.instances[0];
        assert_eq!(i.master, Some(true));
        assert_eq!(
            i.virtual_ipaddress,
            vec![
                ("192.0.2.100".parse().unwrap(), 24),
                ("192.0.2.101".parse().unwrap(), 32)
            ]
        );
        assert_eq!(i.auth_pass.as_deref(), Some("secret"));
        assert!(w.is_empty(), "{w:?}");
    }

    /// keepalived's IPv6 forms: addresses with and without a prefix, IPv6 peers and source.
    #[test]
    fn ipv6_addresses_peers_and_source() {
        let text = "vrrp_instance VI_6 {\n  unicast_src_ip 2001:db8::98\n  unicast_peer {\n    2001:db8::99\n  }\n  virtual_ipaddress {\n    2001:db8::100/64 dev eth1\n    2001:db8::101\n    2001:db8::102/129\n  }\n}\n";
        let mut w = Warnings::default();
        let k = parse(text, "k.conf", &mut w);
        let i = &k.instances[0];
        assert_eq!(
            i.virtual_ipaddress,
            vec![
                ("2001:db8::100".parse().unwrap(), 64),
                ("2001:db8::101".parse().unwrap(), 128)
            ]
        );
        assert_eq!(i.unicast_src_ip, Some("2001:db8::98".parse().unwrap()));
        assert_eq!(i.unicast_peers, ["2001:db8::99".parse::<IpAddr>().unwrap()]);
        let w = format!("{w:?}");
        assert!(w.contains("2001:db8::102/129"), "{w}");
        assert!(w.contains("dev eth1"), "{w}");
    }

    /// An instance's `version` is read, `native_ipv6` needs nothing, and the addresses of
    /// `virtual_ipaddress_excluded` are named in a warning at its line.
    #[test]
    fn version_native_ipv6_and_excluded_addresses() {
        let text = "vrrp_instance VI_6 {\n  version 3\n  native_ipv6\n  virtual_ipaddress {\n    2001:db8::100/64\n  }\n  virtual_ipaddress_excluded {\n    2001:db8::101/64\n    192.0.2.101\n  }\n}\nvrrp_instance VI_7 {\n  version 4\n}\n";
        let mut w = Warnings::default();
        let k = parse(text, "k.conf", &mut w);
        assert_eq!(k.instances[0].version, Some(3));
        assert_eq!(k.instances[0].virtual_ipaddress.len(), 1);
        assert_eq!(k.instances[1].version, None);
        let w = w.to_string();
        assert!(
            w.contains("warning: k.conf:7: virtual_ipaddress_excluded (2001:db8::101/64, 192.0.2.101): not imported; k3s-xdp advertises every address it moves"),
            "{w}"
        );
        assert!(w.contains("k.conf:13: `version 4`: not 2 or 3"), "{w}");
        assert!(!w.contains("native_ipv6"), "{w}");
        assert_eq!(w.lines().count(), 2, "{w}");
    }

    #[test]
    fn fractional_advert_int() {
        let mut w = Warnings::default();
        let k = parse("vrrp_instance v {\n advert_int 0.1\n}\n", "k.conf", &mut w);
        assert_eq!(k.instances[0].advert_int, Some(Duration::from_millis(100)));
    }
}
