//! What the daemon reports: the control protocol (requests and responses on the control socket,
//! one JSON object per line), the status snapshot (`k3s-xdp status --json` prints it as is), its
//! table rendering (`k3s-xdp status`), and the Prometheus text rendering (`/metrics`). One
//! snapshot feeds all three, so they never disagree.

use super::model::Admin;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt::Write as _};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    Backend { action: Admin, target: String },
    Reload,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Status(Box<Status>),
    Ok { message: String },
    Error { message: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: String,
    pub config: String,
    pub interface: String,
    /// "driver" or "generic".
    pub xdp_mode: String,
    pub uptime_seconds: u64,
    pub reloads: u64,
    pub failed_reloads: u64,
    pub services: Vec<ServiceStatus>,
    pub vrrp: Option<VrrpStatus>,
    /// The interface is up with a carrier (netlink's view; a dead link is a VRRP fault).
    #[serde(default = "link_up_default")]
    pub link_up: bool,
    /// XDP packet counts by reason (pass_*, tx_*, drop_*).
    pub packets: BTreeMap<String, u64>,
    /// Signs of full flow tables (`flow_evicted`, `translation_taken_over`).
    #[serde(default)]
    pub flow_table: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub on_backend_down: String,
    /// nat mode: the SNAT pool's addresses (`snat_source`, `node` resolved); empty: the VIP.
    #[serde(default)]
    pub snat_addresses: Vec<String>,
    pub check: String,
    pub healthy_backends: usize,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub resets: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    /// Health from the checks: "up" or "down".
    pub health: String,
    /// HAProxy's health counter: from 0 (fully down) to `rise + fall - 1` (fully up).
    pub health_counter: u32,
    pub health_max: u32,
    /// "enable", "drain" or "disable".
    pub admin: String,
    /// What the data plane does with it: "up", "drain" or "down".
    pub state: String,
    pub weight: u32,
    /// Weight in the Maglev table now (ramped by slowstart; 0 unless up).
    pub effective_weight: u32,
    pub checks: u64,
    /// "passed", or why the last check failed.
    pub last_check: Option<String>,
    pub last_check_duration_seconds: Option<f64>,
    pub transitions: u64,
    pub last_change_seconds_ago: Option<u64>,
    pub last_change: Option<String>,
    /// Its next hop (the backend, or its gateway) has a known MAC address; until then it takes
    /// no new flows.
    #[serde(default = "resolved_default")]
    pub next_hop_resolved: bool,
    /// nat mode: SNAT ports held by live connections to it.
    #[serde(default)]
    pub snat_ports_in_use: u64,
    /// nat mode: SNAT ports whose connection it closed first, kept from other clients while
    /// it may hold TIME_WAIT (`snat_timewait`).
    #[serde(default)]
    pub snat_ports_waiting: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub resets: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VrrpStatus {
    /// "MASTER", "BACKUP", "FAULT" or "INIT".
    pub state: String,
    pub virtual_router_id: u8,
    pub version: u8,
    pub priority: u8,
    /// Advertised now (lowered by tracking while it fails).
    pub effective_priority: u8,
    pub master: Option<String>,
    pub virtual_ipaddress: Vec<String>,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Adverts of other virtual routers on the same link (another virtual_router_id), ignored.
    #[serde(default)]
    pub adverts_other_routers: u64,
    pub adverts_rejected: BTreeMap<String, u64>,
    pub transitions: u64,
    pub last_transition: Option<String>,
    pub track_ok: bool,
}

fn link_up_default() -> bool {
    true
}

fn resolved_default() -> bool {
    true
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn ago(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m{}s ago", s / 60, s % 60),
        s => format!("{}h{}m ago", s / 3600, (s % 3600) / 60),
    }
}

/// The readable table of `k3s-xdp status`.
pub fn render_table(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "k3s-xdp {} on {}{} ({} mode), up {}, config {} (reloads: {} ok, {} failed)",
        s.version,
        s.interface,
        if s.link_up { "" } else { " (LINK DOWN)" },
        s.xdp_mode,
        ago(s.uptime_seconds).trim_end_matches(" ago"),
        s.config,
        s.reloads,
        s.failed_reloads
    );
    match &s.vrrp {
        Some(v) => {
            let _ = writeln!(
                out,
                "VRRP: {}{} (virtual_router_id {}, v{}, priority {}{}), master {}, VIPs {}",
                v.state,
                fault_cause(s, v),
                v.virtual_router_id,
                v.version,
                v.priority,
                if v.effective_priority != v.priority {
                    format!(", now {} (tracking fails)", v.effective_priority)
                } else {
                    String::new()
                },
                v.master.as_deref().unwrap_or("unknown"),
                v.virtual_ipaddress.join(", ")
            );
            let rejected: u64 = v.adverts_rejected.values().sum();
            let _ = writeln!(
                out,
                "      adverts sent {}, received {}, rejected {}{}{}; {} transitions{}",
                v.adverts_sent,
                v.adverts_received,
                rejected,
                if rejected > 0 {
                    format!(
                        " ({})",
                        v.adverts_rejected
                            .iter()
                            .filter(|(_, n)| **n > 0)
                            .map(|(k, n)| format!("{k} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                },
                if v.adverts_other_routers > 0 {
                    format!(
                        ", {} from other virtual routers ignored",
                        v.adverts_other_routers
                    )
                } else {
                    String::new()
                },
                v.transitions,
                v.last_transition
                    .as_ref()
                    .map(|t| format!(", last: {t}"))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(out, "VRRP: not configured (this node holds the VIPs alone)");
        }
    }
    for svc in &s.services {
        let _ = writeln!(
            out,
            "\nservice {} {}:{}/{} {} (on_backend_down {}, check {}): {}/{} backends healthy",
            svc.name,
            svc.vip,
            svc.port,
            svc.protocol,
            svc.mode,
            svc.on_backend_down,
            svc.check,
            svc.healthy_backends,
            svc.backends.len()
        );
        let _ = writeln!(
            out,
            "  {} packets, {}, {} new flows, {} resets",
            svc.packets,
            human_bytes(svc.bytes),
            svc.new_flows,
            svc.resets
        );
        let _ = writeln!(
            out,
            "  {:<14} {:<21} {:<9} {:<8} {:>6} {:>9} {:>10} {:>11} {:>7}  LAST CHANGE",
            "BACKEND",
            "ADDRESS",
            "HEALTH",
            "ADMIN",
            "WEIGHT",
            "NEW FLOWS",
            "PACKETS",
            "BYTES",
            "CHECK"
        );
        for b in &svc.backends {
            let weight = if b.effective_weight != b.weight && b.state == "up" {
                format!("{}/{}", b.effective_weight, b.weight)
            } else {
                b.weight.to_string()
            };
            let check = b
                .last_check_duration_seconds
                .map(|d| format!("{:.0}ms", d * 1000.0))
                .unwrap_or_else(|| "-".into());
            let change = match (&b.last_change, b.last_change_seconds_ago) {
                _ if !b.next_hop_resolved => "waiting for its next hop's MAC address (ARP)".into(),
                (Some(why), Some(s)) => format!("{why} ({})", ago(s)),
                _ => match &b.last_check {
                    Some(c) if c != "passed" => format!("last check: {c}"),
                    _ => "-".into(),
                },
            };
            let _ = writeln!(
                out,
                "  {:<14} {:<21} {:<9} {:<8} {:>6} {:>9} {:>10} {:>11} {:>7}  {}",
                b.name,
                b.address,
                format!(
                    "{} {}/{}",
                    b.health.to_uppercase(),
                    b.health_counter,
                    b.health_max
                ),
                b.admin,
                weight,
                b.new_flows,
                b.packets,
                human_bytes(b.bytes),
                check,
                change
            );
        }
        let snat: Vec<String> = svc
            .backends
            .iter()
            .filter(|b| b.snat_ports_in_use + b.snat_ports_waiting > 0)
            .map(|b| {
                format!(
                    "{} {} in use, {} waiting",
                    b.name, b.snat_ports_in_use, b.snat_ports_waiting
                )
            })
            .collect();
        if svc.mode == "nat" && !svc.snat_addresses.is_empty() {
            let _ = writeln!(
                out,
                "  SNAT pool: {} (each with the whole port range)",
                svc.snat_addresses.join(", ")
            );
        }
        if svc.mode == "nat" && !snat.is_empty() {
            let _ = writeln!(out, "  SNAT ports: {}", snat.join("; "));
        }
    }
    let interesting: Vec<String> = s
        .packets
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\nXDP packets: {}",
        if interesting.is_empty() {
            "none yet".to_string()
        } else {
            interesting.join(", ")
        }
    );
    let count = |event: &str| s.flow_table.get(event).copied().unwrap_or(0);
    let (evicted, taken) = (count("flow_evicted"), count("translation_taken_over"));
    if evicted + taken > 0 {
        let _ = writeln!(
            out,
            "Flow tables full: {evicted} live flows evicted, {taken} live translations taken over (raise flow_table_size)"
        );
    }
    let reused = count("translation_reused_waiting");
    if reused > 0 {
        let _ = writeln!(
            out,
            "SNAT ports short: {reused} new connections took a port its backend may still hold in TIME_WAIT (widen snat_port_range; see `k3s-xdp check`)"
        );
    }
    out
}

/// Why a node is in FAULT, from what the status already says: its link, then its tracking
/// (a weight of 0 makes failed tracking a fault).
fn fault_cause(s: &Status, v: &VrrpStatus) -> &'static str {
    if v.state != "FAULT" {
        ""
    } else if !s.link_up {
        ": link down"
    } else if !v.track_ok && s.xdp_mode == "detached" {
        ": tracking fails, XDP program detached"
    } else if !v.track_ok {
        ": tracking fails, too few healthy backends"
    } else {
        ""
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition (format 0.0.4) of a status snapshot.
pub fn render_metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    let svc = |s: &ServiceStatus| format!("service=\"{}\"", escape(&s.name));
    let be = |s: &ServiceStatus, b: &BackendStatus| {
        format!(
            "service=\"{}\",backend=\"{}\",address=\"{}\"",
            escape(&s.name),
            escape(&b.name),
            escape(&b.address)
        )
    };
    family(
        "k3sxdp_info",
        "gauge",
        "Version, interface and XDP attach mode of this k3s-xdp.",
        vec![(
            format!(
                "version=\"{}\",interface=\"{}\",xdp_mode=\"{}\"",
                escape(&s.version),
                escape(&s.interface),
                escape(&s.xdp_mode)
            ),
            1.0,
        )],
    );
    family(
        "k3sxdp_uptime_seconds",
        "gauge",
        "Seconds since k3s-xdp started.",
        vec![(String::new(), s.uptime_seconds as f64)],
    );
    family(
        "k3sxdp_link_up",
        "gauge",
        "1 while the interface is up with a carrier, 0 while its link is down.",
        vec![(String::new(), if s.link_up { 1.0 } else { 0.0 })],
    );
    family(
        "k3sxdp_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP or `k3s-xdp reload`), by result.",
        vec![
            ("result=\"ok\"".into(), s.reloads as f64),
            ("result=\"failed\"".into(), s.failed_reloads as f64),
        ],
    );
    family(
        "k3sxdp_xdp_packets_total",
        "counter",
        "Packets seen by the XDP program, by what it did and why.",
        s.packets
            .iter()
            .map(|(k, v)| (format!("reason=\"{}\"", escape(k)), *v as f64))
            .collect(),
    );
    family(
        "k3sxdp_flow_table_full_total",
        "counter",
        "New flows that found the flow tables full: a live flow's entry evicted (flow_evicted), a live connection's SNAT translation taken over (translation_taken_over), a SNAT port taken while its backend may still hold it in TIME_WAIT (translation_reused_waiting: widen snat_port_range).",
        s.flow_table
            .iter()
            .map(|(k, v)| (format!("event=\"{}\"", escape(k)), *v as f64))
            .collect(),
    );
    let per_service = |f: fn(&ServiceStatus) -> f64| -> Vec<(String, f64)> {
        s.services.iter().map(|x| (svc(x), f(x))).collect()
    };
    family(
        "k3sxdp_service_packets_total",
        "counter",
        "Packets forwarded for the service (both directions in nat mode).",
        per_service(|x| x.packets as f64),
    );
    family(
        "k3sxdp_service_bytes_total",
        "counter",
        "Bytes forwarded for the service.",
        per_service(|x| x.bytes as f64),
    );
    family(
        "k3sxdp_service_flows_total",
        "counter",
        "New flows of the service.",
        per_service(|x| x.new_flows as f64),
    );
    family(
        "k3sxdp_service_resets_total",
        "counter",
        "TCP RSTs sent for the service (backend down, or none healthy).",
        per_service(|x| x.resets as f64),
    );
    family(
        "k3sxdp_service_healthy_backends",
        "gauge",
        "Backends of the service that take new flows.",
        per_service(|x| x.healthy_backends as f64),
    );
    let per_backend = |f: fn(&BackendStatus) -> f64| -> Vec<(String, f64)> {
        s.services
            .iter()
            .flat_map(|x| x.backends.iter().map(move |b| (be(x, b), f(b))))
            .collect()
    };
    family(
        "k3sxdp_backend_packets_total",
        "counter",
        "Packets forwarded through the backend.",
        per_backend(|b| b.packets as f64),
    );
    family(
        "k3sxdp_backend_bytes_total",
        "counter",
        "Bytes forwarded through the backend.",
        per_backend(|b| b.bytes as f64),
    );
    family(
        "k3sxdp_backend_flows_total",
        "counter",
        "New flows sent to the backend.",
        per_backend(|b| b.new_flows as f64),
    );
    family(
        "k3sxdp_backend_resets_total",
        "counter",
        "RSTs sent for flows pinned to the backend.",
        per_backend(|b| b.resets as f64),
    );
    family(
        "k3sxdp_backend_up",
        "gauge",
        "1 if the backend passes its health checks.",
        per_backend(|b| f64::from(u8::from(b.health == "up"))),
    );
    family(
        "k3sxdp_backend_weight",
        "gauge",
        "Weight of the backend in the Maglev table now (0 unless up; ramped by slowstart).",
        per_backend(|b| f64::from(b.effective_weight)),
    );
    family(
        "k3sxdp_backend_next_hop_resolved",
        "gauge",
        "1 if the MAC address of the backend's next hop is known; until then it takes no new flows.",
        per_backend(|b| f64::from(u8::from(b.next_hop_resolved))),
    );
    let mut snat = Vec::new();
    for svc in &s.services {
        for b in &svc.backends {
            for (state, n) in [
                ("in_use", b.snat_ports_in_use),
                ("waiting", b.snat_ports_waiting),
            ] {
                snat.push((
                    format!(
                        "service=\"{}\",backend=\"{}\",state=\"{state}\"",
                        escape(&svc.name),
                        escape(&b.name)
                    ),
                    n as f64,
                ));
            }
        }
    }
    family(
        "k3sxdp_backend_snat_ports",
        "gauge",
        "nat mode: SNAT ports of the backend held by live connections (in_use), or closed by the backend first and kept from other clients during its TIME_WAIT (waiting).",
        snat,
    );
    family(
        "k3sxdp_backend_checks_total",
        "counter",
        "Health checks run against the backend.",
        per_backend(|b| b.checks as f64),
    );
    family(
        "k3sxdp_backend_check_duration_seconds",
        "gauge",
        "Duration of the last health check.",
        per_backend(|b| b.last_check_duration_seconds.unwrap_or(0.0)),
    );
    family(
        "k3sxdp_backend_transitions_total",
        "counter",
        "Health state changes (UP/DOWN) of the backend.",
        per_backend(|b| b.transitions as f64),
    );
    family(
        "k3sxdp_backend_admin_state",
        "gauge",
        "Administrative state of the backend (k3s-xdp backend enable|drain|disable): 1 for the current one.",
        s.services
            .iter()
            .flat_map(|x| {
                x.backends.iter().flat_map(move |b| {
                    ["enable", "drain", "disable"].into_iter().map(move |a| {
                        (format!("{},admin=\"{a}\"", be(x, b)), f64::from(u8::from(b.admin == a)))
                    })
                })
            })
            .collect(),
    );
    if let Some(v) = &s.vrrp {
        family(
            "k3sxdp_vrrp_state",
            "gauge",
            "VRRP state of this node: 1 for the current one.",
            ["MASTER", "BACKUP", "FAULT", "INIT"]
                .iter()
                .map(|st| {
                    (
                        format!("state=\"{}\"", st.to_lowercase()),
                        f64::from(u8::from(v.state == *st)),
                    )
                })
                .collect(),
        );
        family(
            "k3sxdp_vrrp_master_info",
            "gauge",
            "The current master's primary address (this node's when master), 1 while known.",
            v.master
                .iter()
                .map(|m| (format!("address=\"{}\"", escape(m)), 1.0))
                .collect(),
        );
        family(
            "k3sxdp_vrrp_priority",
            "gauge",
            "VRRP priority advertised now.",
            vec![(String::new(), f64::from(v.effective_priority))],
        );
        family(
            "k3sxdp_vrrp_adverts_sent_total",
            "counter",
            "VRRP advertisements sent.",
            vec![(String::new(), v.adverts_sent as f64)],
        );
        family(
            "k3sxdp_vrrp_adverts_received_total",
            "counter",
            "Valid VRRP advertisements received for our virtual router.",
            vec![(String::new(), v.adverts_received as f64)],
        );
        family(
            "k3sxdp_vrrp_adverts_other_routers_total",
            "counter",
            "VRRP advertisements of other virtual routers on the link (another virtual_router_id), ignored.",
            vec![(String::new(), v.adverts_other_routers as f64)],
        );
        family(
            "k3sxdp_vrrp_adverts_rejected_total",
            "counter",
            "VRRP packets rejected, by reason.",
            v.adverts_rejected
                .iter()
                .map(|(k, n)| (format!("reason=\"{}\"", escape(k)), *n as f64))
                .collect(),
        );
        family(
            "k3sxdp_vrrp_transitions_total",
            "counter",
            "VRRP state changes.",
            vec![(String::new(), v.transitions as f64)],
        );
        family(
            "k3sxdp_vrrp_track_ok",
            "gauge",
            "1 while tracking (data plane, healthy backends) succeeds.",
            vec![(String::new(), f64::from(u8::from(v.track_ok)))],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            link_up: true,
            interface: "eth1".into(),
            xdp_mode: "driver".into(),
            services: vec![ServiceStatus {
                name: "k3s-api".into(),
                vip: "192.0.2.100".into(),
                port: 6443,
                backends: vec![BackendStatus {
                    name: "server-\"1\"".into(),
                    address: "192.0.2.50:6443".into(),
                    health: "up".into(),
                    admin: "enable".into(),
                    state: "up".into(),
                    weight: 100,
                    effective_weight: 100,
                    next_hop_resolved: true,
                    packets: 7,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            packets: [("tx_forward".to_string(), 7u64)].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_and_responses_are_json_lines() {
        let r = Request::Backend {
            action: Admin::Drain,
            target: "k3s-api/server-2".into(),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"command":"backend","action":"drain","target":"k3s-api/server-2"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        let status = Response::Status(Box::new(sample()));
        let back: Response =
            serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn metrics_escape_labels_and_name_units() {
        let text = render_metrics(&sample());
        assert!(text.contains("k3sxdp_backend_packets_total{service=\"k3s-api\",backend=\"server-\\\"1\\\"\",address=\"192.0.2.50:6443\"} 7"));
        assert!(text.contains("k3sxdp_xdp_packets_total{reason=\"tx_forward\"} 7"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            let kind = line.split_whitespace().nth(3).unwrap();
            assert!(name.starts_with("k3sxdp_"));
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }

    #[test]
    fn the_table_names_every_backend() {
        let table = render_table(&sample());
        assert!(table.contains("service k3s-api 192.0.2.100:6443"));
        assert!(table.contains("192.0.2.50:6443"));
        assert!(table.contains("VRRP: not configured"));
        assert!(!table.contains("LINK DOWN"));
        let down = Status {
            link_up: false,
            ..sample()
        };
        assert!(render_table(&down).contains("on eth1 (LINK DOWN)"));
        assert!(render_metrics(&down).contains("\nk3sxdp_link_up 0\n"));
        assert!(render_metrics(&sample()).contains("\nk3sxdp_link_up 1\n"));
    }

    #[test]
    fn a_fault_says_why() {
        let vrrp = |state: &str, track_ok: bool| VrrpStatus {
            state: state.into(),
            virtual_router_id: 51,
            version: 3,
            priority: 100,
            effective_priority: 100,
            track_ok,
            ..Default::default()
        };
        let with = |link_up: bool, xdp_mode: &str, v: VrrpStatus| {
            render_table(&Status {
                link_up,
                xdp_mode: xdp_mode.into(),
                vrrp: Some(v),
                ..sample()
            })
        };
        assert!(with(false, "driver", vrrp("FAULT", true)).contains("VRRP: FAULT: link down ("));
        assert!(with(true, "detached", vrrp("FAULT", false))
            .contains("VRRP: FAULT: tracking fails, XDP program detached ("));
        assert!(with(true, "driver", vrrp("FAULT", false))
            .contains("VRRP: FAULT: tracking fails, too few healthy backends ("));
        // Only a FAULT gets a cause; a backup whose tracking fails just advertises less.
        assert!(with(true, "driver", vrrp("BACKUP", false)).contains("VRRP: BACKUP ("));
    }

    #[test]
    fn full_flow_tables_are_said_in_the_table_and_the_metrics() {
        assert!(!render_table(&sample()).contains("Flow tables full"));
        let full = Status {
            flow_table: [
                ("flow_evicted".to_string(), 12u64),
                ("translation_taken_over".to_string(), 3u64),
            ]
            .into_iter()
            .collect(),
            ..sample()
        };
        assert!(render_table(&full).contains(
            "Flow tables full: 12 live flows evicted, 3 live translations taken over (raise flow_table_size)"
        ));
        let metrics = render_metrics(&full);
        assert!(metrics.contains("\nk3sxdp_flow_table_full_total{event=\"flow_evicted\"} 12\n"));
        assert!(metrics
            .contains("\nk3sxdp_flow_table_full_total{event=\"translation_taken_over\"} 3\n"));
        // A status from an older daemon, without the field, still reads.
        let mut json = serde_json::to_value(sample()).unwrap();
        json.as_object_mut().unwrap().remove("flow_table");
        let old: Status = serde_json::from_value(json).unwrap();
        assert!(old.flow_table.is_empty());
    }
}
