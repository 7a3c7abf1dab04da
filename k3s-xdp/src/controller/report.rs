//! `k3s-xdp status`: the status snapshot as a table for the operator, with what needs
//! attention (faults, short SNAT ports, full flow tables) spelled out.

use super::status::{BgpStatus, Status, VrrpStatus};
use std::fmt::Write as _;

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

/// `[bgp]`: each VIP's announcement, and the routing daemon's sessions.
/// `VIP:PORT`, an IPv6 VIP in brackets (`[2001:db8::100]:6443`).
fn listener(vip: &str, port: u16) -> String {
    if vip.contains(':') {
        format!("[{vip}]:{port}")
    } else {
        format!("{vip}:{port}")
    }
}

fn bgp_lines(out: &mut String, b: &BgpStatus) {
    let daemon = match (&b.routing_daemon_error, b.sessions.as_slice()) {
        (Some(e), _) => format!("routing daemon unknown ({e}): nothing may export these routes"),
        (None, []) => "the routing daemon has no BGP session: nothing exports these routes".into(),
        (None, sessions) => format!(
            "BGP sessions: {}",
            sessions
                .iter()
                .map(|x| {
                    let state = if x.established() {
                        "Established".to_string()
                    } else {
                        format!("{} {}", x.state, x.info).trim().to_string()
                    };
                    format!("{} {state} (since {})", x.name, x.since)
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let _ = writeln!(out, "BGP: routes in table {}; {daemon}", b.table);
    for v in &b.vips {
        let since = ago(v.since_seconds_ago);
        let _ = match (&v.reason, v.announced) {
            (_, true) => writeln!(out, "      {} announced (since {since})", v.vip),
            (Some(why), false) => writeln!(out, "      {} WITHDRAWN (since {since}): {why}", v.vip),
            (None, false) => writeln!(out, "      {} WITHDRAWN (since {since})", v.vip),
        };
    }
}

/// `[flow_sync]`: whether this node holds its peers' tables, each peer, and what was refused.
fn flow_sync_lines(out: &mut String, f: &super::status::FlowSyncStatus) {
    let state = if f.synced {
        match f.synced_after_ms {
            Some(ms) => format!("peers' tables taken ({ms} ms after start)"),
            None => "peers' tables taken".into(),
        }
    } else {
        "WAITING for the peers' tables: VRRP does not preempt until they arrive".into()
    };
    let _ = writeln!(
        out,
        "Flow sync: UDP {}; {state}; {} flows reported here, {} installed from peers, {} closed, {} conflicts, {} crowded, {} not placed",
        f.port, f.reported, f.installed, f.closed, f.conflicts, f.crowded, f.not_placed
    );
    for p in &f.peers {
        let heard = match p.heard_ms_ago {
            Some(ms) if p.up => format!("up (heard {ms} ms ago)"),
            Some(ms) => format!("DOWN (last heard {})", ago(ms / 1000)),
            None => "DOWN (never heard)".into(),
        };
        let losses = if p.lost_on_the_way > 0 {
            format!(
                "; {} of its datagrams lost on the way ({} whole tables asked for again)",
                p.lost_on_the_way, p.repairs
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "      peer {} {heard}; {}; sent {} flows ({} lost, {} queued, lag {} ms), received {}{losses}",
            p.peer, p.bulk, p.sent_entries, p.lost_entries, p.queued, p.lag_ms, p.received_entries
        );
    }
    let refused: Vec<String> = f
        .dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    if !refused.is_empty() {
        let _ = writeln!(out, "      refused datagrams: {}", refused.join(", "));
    }
    if f.events_lost > 0 {
        let _ = writeln!(
            out,
            "      {} flows not reported (the program's ring was full): the peers lack them until their next bulk sync",
            f.events_lost
        );
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
        Some(node) => {
            for v in node.routers() {
                vrrp_lines(&mut out, s, v);
            }
        }
        None if s.bgp.is_some() => {
            let _ = writeln!(out, "VRRP: not configured");
        }
        None => {
            let _ = writeln!(out, "VRRP: not configured (this node holds the VIPs alone)");
        }
    }
    if let Some(b) = &s.bgp {
        bgp_lines(&mut out, b);
    }
    if let Some(fs) = &s.flow_sync {
        flow_sync_lines(&mut out, fs);
    }
    for svc in &s.services {
        let _ = writeln!(
            out,
            "\nservice {} {}/{} {} (on_backend_down {}, check {}): {}/{} backends healthy",
            svc.name,
            listener(&svc.vip, svc.port),
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
                _ if !b.next_hop_resolved => {
                    "waiting for its next hop's MAC address (ARP, neighbour discovery)".into()
                }
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
    let g = &s.syn_flood;
    if g.guard {
        let _ = writeln!(
            out,
            "SYN flood guard: on (threshold {}/s, admit {}/s): {} SYNs from unknown sources, {} admitted while up, {} dropped; {} known-source bits of {} set",
            g.threshold, g.admit, g.unknown_syns, g.admitted, g.dropped, g.known_bits, g.known_capacity
        );
    } else {
        let _ = writeln!(out, "SYN flood guard: off");
    }
    out
}

/// The two lines of one virtual router: "VRRP: ..." (IPv4), "VRRP IPv6: ...".
fn vrrp_lines(out: &mut String, s: &Status, v: &VrrpStatus) {
    let _ = writeln!(
        out,
        "VRRP{}: {}{} (virtual_router_id {}, v{}, priority {}{}), master {}, VIPs {}",
        if v.family == "ipv6" { " IPv6" } else { "" },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_listener_is_bracketed() {
        assert_eq!(listener("192.0.2.100", 6443), "192.0.2.100:6443");
        assert_eq!(listener("2001:db8::100", 6443), "[2001:db8::100]:6443");
    }
}
