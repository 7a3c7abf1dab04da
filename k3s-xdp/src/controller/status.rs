//! What the daemon reports: the control protocol (requests and responses on the control socket,
//! one JSON object per line) and the status snapshot (`k3s-xdp status --json` prints it as is).
//! One snapshot feeds the table of `k3s-xdp status` ([`report`](super::report)) and the
//! Prometheus text of `/metrics` ([`exposition`](super::exposition)), so they never disagree.

use super::model::Admin;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use super::{exposition::render_metrics, report::render_table};

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
    /// `[bgp]`, when configured.
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
    /// `[flow_sync]`, when configured.
    #[serde(default)]
    pub flow_sync: Option<FlowSyncStatus>,
    /// The interface is up with a carrier (netlink's view; a dead link is a VRRP fault).
    #[serde(default = "link_up_default")]
    pub link_up: bool,
    /// XDP packet counts by reason (pass_*, tx_*, drop_*).
    pub packets: BTreeMap<String, u64>,
    /// Signs of full flow tables (`flow_evicted`, `translation_taken_over`).
    #[serde(default)]
    pub flow_table: BTreeMap<String, u64>,
    /// Metrics connections closed at once because the most were open (filled by the
    /// metrics server).
    #[serde(default)]
    pub metrics_connections_refused: u64,
    /// The SYN flood guard (`[syn_flood]`) and what it saw.
    #[serde(default)]
    pub syn_flood: SynFloodStatus,
}

/// The SYN flood guard's settings (per node) and counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SynFloodStatus {
    pub guard: bool,
    pub threshold: u32,
    pub admit: u32,
    /// SYNs of new flows from sources not known to have completed a handshake (counted while
    /// the guard is on), those of them admitted while it was up, and those dropped.
    pub unknown_syns: u64,
    pub admitted: u64,
    pub dropped: u64,
    /// Bits set in the known-source set, of `known_capacity`: the chance that a forged
    /// source passes as known.
    pub known_bits: u64,
    pub known_capacity: u64,
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

/// `[flow_sync]`: the peers, the bulk syncs, and what crossed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FlowSyncStatus {
    /// UDP.
    pub port: u16,
    /// This node holds its peers' tables (or gave up waiting for absent peers): until then
    /// VRRP does not preempt a master.
    pub synced: bool,
    /// How long that took after start.
    pub synced_after_ms: Option<u64>,
    pub peers: Vec<FlowSyncPeerStatus>,
    /// Records the XDP program reported (new flows, closed translations), and those that
    /// could not be named for the peers (a backend no longer published, a translation gone).
    pub reported: u64,
    pub unnamed: u64,
    /// Reports lost in the program's log: overwritten before they were read (repaired by a
    /// bulk sync).
    pub events_lost: u64,
    /// Entries taken from the peers; installed (flows written), closed (found and closed
    /// here), conflicts (a live translation of another connection kept its slot), crowded
    /// (the flow entry not written: its bucket full of entries worth more, this node's own
    /// flows or copies refreshed since; the translation is), not placed (a service, backend
    /// or SNAT address this node does not have).
    pub received_entries: u64,
    pub installed: u64,
    pub closed: u64,
    pub conflicts: u64,
    #[serde(default)]
    pub crowded: u64,
    pub not_placed: u64,
    pub socket_errors: u64,
    /// Datagrams refused, by reason (not_a_peer, oversized, malformed, unauthenticated,
    /// replayed, stale).
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FlowSyncPeerStatus {
    pub peer: String,
    /// Heard within the last few hellos.
    pub up: bool,
    pub heard_ms_ago: Option<u64>,
    /// The bulk sync of its table to this node, in words.
    pub bulk: String,
    pub bulk_done: bool,
    /// Datagrams waiting for it, and the longest one waited (the lag).
    pub queued: u64,
    pub lag_ms: u64,
    pub sent_datagrams: u64,
    pub sent_entries: u64,
    /// Entries that never left: its queue was full, or the kernel refused them.
    pub lost_entries: u64,
    /// Whole tables sent to it (it asked).
    pub bulks_sent: u64,
    pub received_datagrams: u64,
    pub received_entries: u64,
    /// Times it restarted while this node ran.
    pub restarts: u64,
    /// Its datagrams to this node lost on the way (gaps in its numbering), and the whole
    /// tables asked for again to repair them.
    #[serde(default)]
    pub lost_on_the_way: u64,
    #[serde(default)]
    pub repairs: u64,
}

/// `[bgp]`: what this node announces, and the routing daemon's sessions.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BgpStatus {
    /// The kernel routing table that holds the routes.
    pub table: u32,
    pub vips: Vec<BgpVipStatus>,
    /// The routing daemon's BGP sessions (BIRD's `show protocols`).
    pub sessions: Vec<crate::bgp::bird::Session>,
    /// Why the sessions are unknown (no routing daemon, socket refused, ...).
    pub routing_daemon_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BgpVipStatus {
    pub vip: String,
    /// Its route is in the table, for the routing daemon to export.
    pub announced: bool,
    /// Seconds since it was last announced or withdrawn.
    pub since_seconds_ago: u64,
    /// Why it is withdrawn.
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VrrpStatus {
    /// "MASTER", "BACKUP", "FAULT" or "INIT".
    pub state: String,
    /// The virtual router's address family, "ipv4" or "ipv6".
    #[serde(default = "family_default")]
    pub family: String,
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
    /// The IPv6 virtual router, when the node runs one next to the IPv4 one (described by the
    /// fields above). A node with IPv6 addresses only describes its IPv6 router above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Box<VrrpStatus>>,
}

impl VrrpStatus {
    /// The node's virtual routers: the one described at the top, then the IPv6 one.
    pub fn routers(&self) -> impl Iterator<Item = &VrrpStatus> {
        std::iter::once(self).chain(self.ipv6.as_deref())
    }
}

fn family_default() -> String {
    "ipv4".into()
}

fn link_up_default() -> bool {
    true
}

fn resolved_default() -> bool {
    true
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

    /// Prometheus 2.x and later ask for OpenMetrics first; they get it, with the same samples.
    #[test]
    fn openmetrics_when_the_scraper_asks() {
        use super::super::exposition::{render, Format};
        let accept =
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
        assert_eq!(Format::from_accept(Some(accept)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        let text = render(&sample(), Format::OpenMetrics);
        assert!(
            text.contains("# TYPE k3sxdp_xdp_packets counter\n"),
            "{text}"
        );
        assert!(text.contains("\nk3sxdp_xdp_packets_total{reason=\"tx_forward\"} 7\n"));
        assert!(text.contains("\nk3sxdp_link_up 1\n"));
        assert!(text.ends_with("\n# EOF\n"));
        let plain = render_metrics(&sample());
        assert!(
            plain.contains("# TYPE k3sxdp_xdp_packets_total counter\n"),
            "{plain}"
        );
        assert!(!plain.contains("# EOF"));
    }

    #[test]
    fn bgp_announcements_are_in_the_table_and_the_metrics() {
        use crate::bgp::bird::Session;
        let with = |sessions: Vec<Session>, error: Option<&str>| Status {
            bgp: Some(BgpStatus {
                table: 200,
                vips: vec![
                    BgpVipStatus {
                        vip: "192.0.2.100".into(),
                        announced: true,
                        since_seconds_ago: 65,
                        reason: None,
                    },
                    BgpVipStatus {
                        vip: "192.0.2.110".into(),
                        announced: false,
                        since_seconds_ago: 3,
                        reason: Some("service web has 0 healthy backend(s)".into()),
                    },
                ],
                sessions,
                routing_daemon_error: error.map(str::to_string),
            }),
            ..sample()
        };
        let up = Session {
            name: "upstream".into(),
            state: "up".into(),
            since: "08:00:03.456".into(),
            info: "Established".into(),
        };
        let s = with(vec![up.clone()], None);
        let table = render_table(&s);
        assert!(
            table.contains(
                "BGP: routes in table 200; BGP sessions: upstream Established (since 08:00:03.456)"
            ),
            "{table}"
        );
        assert!(
            table.contains("192.0.2.100 announced (since 1m5s ago)"),
            "{table}"
        );
        assert!(
            table.contains(
                "192.0.2.110 WITHDRAWN (since 3s ago): service web has 0 healthy backend(s)"
            ),
            "{table}"
        );
        let metrics = render_metrics(&s);
        assert!(
            metrics.contains("\nk3sxdp_bgp_announced{vip=\"192.0.2.100\"} 1\n"),
            "{metrics}"
        );
        assert!(metrics.contains("\nk3sxdp_bgp_announced{vip=\"192.0.2.110\"} 0\n"));
        assert!(metrics.contains("\nk3sxdp_bgp_session_established{session=\"upstream\"} 1\n"));
        assert!(metrics.contains("\nk3sxdp_bgp_routing_daemon_readable 1\n"));
        let absent = with(
            Vec::new(),
            Some("cannot connect to BIRD's control socket /run/bird/bird.ctl"),
        );
        assert!(render_table(&absent).contains("routing daemon unknown (cannot connect"));
        assert!(render_metrics(&absent).contains("\nk3sxdp_bgp_routing_daemon_readable 0\n"));
        assert!(render_table(&with(Vec::new(), None)).contains("no BGP session: nothing exports"));
        assert!(!render_metrics(&sample()).contains("k3sxdp_bgp_"));
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

    /// Dual stack: the IPv6 virtual router has its lines in the table and its series (label
    /// family="ipv6") next to the IPv4 one's; JSON without it reads as before.
    #[test]
    fn both_virtual_routers_are_in_the_table_and_the_metrics() {
        let router = |family: &str, state: &str, master: &str, vip: &str| VrrpStatus {
            state: state.into(),
            family: family.into(),
            virtual_router_id: 51,
            version: 3,
            priority: 200,
            effective_priority: 200,
            master: Some(master.into()),
            virtual_ipaddress: vec![vip.into()],
            adverts_rejected: [("ttl".to_string(), 2)].into_iter().collect(),
            track_ok: true,
            ..Default::default()
        };
        let v6 = router("ipv6", "BACKUP", "fe80::99", "2001:db8::100/64");
        let status = Status {
            vrrp: Some(VrrpStatus {
                ipv6: Some(Box::new(v6.clone())),
                ..router("ipv4", "MASTER", "192.0.2.98", "192.0.2.100/24")
            }),
            ..sample()
        };
        let table = render_table(&status);
        assert!(
            table.contains("VRRP: MASTER (virtual_router_id 51, v3, priority 200), master 192.0.2.98, VIPs 192.0.2.100/24\n"),
            "{table}"
        );
        assert!(
            table.contains("VRRP IPv6: BACKUP (virtual_router_id 51, v3, priority 200), master fe80::99, VIPs 2001:db8::100/64\n"),
            "{table}"
        );
        let text = render_metrics(&status);
        for line in [
            "k3sxdp_vrrp_state{family=\"ipv4\",state=\"master\"} 1",
            "k3sxdp_vrrp_state{family=\"ipv6\",state=\"backup\"} 1",
            "k3sxdp_vrrp_state{family=\"ipv6\",state=\"master\"} 0",
            "k3sxdp_vrrp_master_info{family=\"ipv6\",address=\"fe80::99\"} 1",
            "k3sxdp_vrrp_priority{family=\"ipv6\"} 200",
            "k3sxdp_vrrp_adverts_rejected_total{family=\"ipv6\",reason=\"ttl\"} 2",
            "k3sxdp_vrrp_adverts_rejected_total{family=\"ipv4\",reason=\"ttl\"} 2",
            "k3sxdp_vrrp_track_ok{family=\"ipv4\"} 1",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line} in\n{text}");
        }
        let json = serde_json::to_string(&status).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back.vrrp.unwrap().ipv6.as_deref(), Some(&v6));

        // An IPv6-only node describes its one router at the top.
        let only = Status {
            vrrp: Some(v6),
            ..sample()
        };
        assert!(render_table(&only).contains("VRRP IPv6: BACKUP ("));
        assert!(!render_table(&only).contains("VRRP: "));
        // A status from before dual stack (no family, no ipv6) is an IPv4 router.
        let old = r#"{"state":"MASTER","virtual_router_id":51,"version":3,"priority":200,"effective_priority":200,"master":null,"virtual_ipaddress":[],"adverts_sent":0,"adverts_received":0,"adverts_rejected":{},"transitions":0,"last_transition":null,"track_ok":true}"#;
        let v: VrrpStatus = serde_json::from_str(old).unwrap();
        assert_eq!((v.family.as_str(), v.ipv6.is_none()), ("ipv4", true));
    }

    #[test]
    fn the_syn_flood_guard_is_said_in_the_table_and_the_metrics() {
        let s = Status {
            syn_flood: SynFloodStatus {
                guard: true,
                threshold: 1000,
                admit: 100,
                unknown_syns: 5000,
                admitted: 150,
                dropped: 3850,
                known_bits: 3,
                known_capacity: 1 << 20,
            },
            ..sample()
        };
        let table = render_table(&s);
        assert!(
            table.contains("SYN flood guard: on (threshold 1000/s, admit 100/s): 5000 SYNs from unknown sources, 150 admitted while up, 3850 dropped; 3 known-source bits of 1048576 set"),
            "{table}"
        );
        let metrics = render_metrics(&s);
        assert!(
            metrics.contains("\nk3sxdp_syn_flood_guard 1\n"),
            "{metrics}"
        );
        assert!(metrics.contains("\nk3sxdp_syn_unknown_source_total 5000\n"));
        assert!(metrics.contains("\nk3sxdp_syn_guard_admitted_total 150\n"));
        assert!(metrics.contains("\nk3sxdp_known_source_bits 3\n"));
        let off = Status {
            syn_flood: SynFloodStatus::default(),
            ..sample()
        };
        assert!(render_table(&off).contains("SYN flood guard: off"));
        // A status from an older daemon, without the field, still reads.
        let mut json = serde_json::to_value(sample()).unwrap();
        json.as_object_mut().unwrap().remove("syn_flood");
        let old: Status = serde_json::from_value(json).unwrap();
        assert!(!old.syn_flood.guard);
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
