//! The status snapshot in the Prometheus text exposition format (0.0.4), served at `/metrics`.
//! Metric names and labels are a contract with dashboards: change them only with a note.

use super::status::{BackendStatus, ServiceStatus, Status};
use std::fmt::Write as _;

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
