//! The status snapshot as Prometheus metrics, served at `/metrics`: typed families encoded by the
//! `prometheus-client` crate, in the Prometheus text format (0.0.4) or in OpenMetrics text when
//! the scraper asks for it. Metric names and labels are a contract with dashboards: change them
//! only with a note.

use super::status::{BackendStatus, ServiceStatus, Status, VrrpStatus};
use prometheus_client::{
    collector::Collector,
    encoding::{self, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

/// The text formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text, version 0.0.4: what scrapers and `curl` get unless they ask otherwise.
    Prometheus,
    /// OpenMetrics 1.0 text: for a scraper whose `Accept` header names it.
    OpenMetrics,
}

impl Format {
    /// The format a request's `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The Prometheus text exposition (format 0.0.4) of a status snapshot.
pub fn render_metrics(s: &Status) -> String {
    render(s, Format::Prometheus)
}

/// A status snapshot in `format`.
pub fn render(s: &Status, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(s.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail, nor can the collector below.
    let _ = match format {
        Format::Prometheus => encoding::prometheus_text::encode(&mut out, &registry),
        Format::OpenMetrics => encoding::text::encode(&mut out, &registry),
    };
    out
}

/// One scrape's metrics: the families of one status snapshot.
#[derive(Debug)]
struct Snapshot(Status);

type Labels = Vec<(&'static str, String)>;

/// Writes families to the encoder. Names are the exposed ones: a counter's name ends in
/// `_total`, which the encoder adds back.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    fn counter<V: EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, V)>,
    ) -> std::fmt::Result {
        let base = name.strip_suffix("_total").unwrap_or(name);
        let samples = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
        self.family(base, help, MetricType::Counter, samples)
    }

    fn gauge<V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, V)>,
    ) -> std::fmt::Result {
        let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
        self.family(name, help, MetricType::Gauge, samples)
    }

    /// A family's HELP, TYPE and samples; a sample without labels is the family's only one.
    fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        samples: impl IntoIterator<Item = (Labels, impl EncodeMetric)>,
    ) -> std::fmt::Result {
        let mut family = self.0.encode_descriptor(name, help, None, kind)?;
        for (labels, metric) in samples {
            if labels.is_empty() {
                return metric.encode(family);
            }
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn one<V>(v: V) -> [(Labels, V); 1] {
    [(Vec::new(), v)]
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

impl Collector for Snapshot {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let mut f = Families(encoder);
        let svc = |x: &ServiceStatus| -> Labels { vec![("service", x.name.clone())] };
        let be = |x: &ServiceStatus, b: &BackendStatus| -> Labels {
            vec![
                ("service", x.name.clone()),
                ("backend", b.name.clone()),
                ("address", b.address.clone()),
            ]
        };
        let per_service = |v: fn(&ServiceStatus) -> u64| -> Vec<(Labels, u64)> {
            s.services.iter().map(|x| (svc(x), v(x))).collect()
        };
        let per_backend = |v: fn(&BackendStatus) -> i64| -> Vec<(Labels, i64)> {
            s.services
                .iter()
                .flat_map(|x| x.backends.iter().map(move |b| (be(x, b), v(b))))
                .collect()
        };
        let per_backend_total = |v: fn(&BackendStatus) -> u64| -> Vec<(Labels, u64)> {
            s.services
                .iter()
                .flat_map(|x| x.backends.iter().map(move |b| (be(x, b), v(b))))
                .collect()
        };
        let by = |label: &'static str, counts: &std::collections::BTreeMap<String, u64>| {
            counts
                .iter()
                .map(|(k, v)| (vec![(label, k.clone())], *v))
                .collect::<Vec<_>>()
        };

        f.gauge(
            "k3sxdp_info",
            "Version, interface and XDP attach mode of this k3s-xdp.",
            [(
                vec![
                    ("version", s.version.clone()),
                    ("interface", s.interface.clone()),
                    ("xdp_mode", s.xdp_mode.clone()),
                ],
                1i64,
            )],
        )?;
        f.gauge(
            "k3sxdp_uptime_seconds",
            "Seconds since k3s-xdp started.",
            one(s.uptime_seconds),
        )?;
        f.gauge(
            "k3sxdp_link_up",
            "1 while the interface is up with a carrier, 0 while its link is down.",
            one(flag(s.link_up)),
        )?;
        f.counter(
            "k3sxdp_config_reloads_total",
            "Configuration reloads (SIGHUP or `k3s-xdp reload`), by result.",
            [
                (vec![("result", "ok".to_string())], s.reloads),
                (vec![("result", "failed".to_string())], s.failed_reloads),
            ],
        )?;
        f.counter(
            "k3sxdp_metrics_connections_refused_total",
            "Connections to this metrics endpoint closed at once because 32 were open (slow or too many clients).",
            [(Vec::new(), s.metrics_connections_refused)],
        )?;
        f.counter(
            "k3sxdp_xdp_packets_total",
            "Packets seen by the XDP program, by what it did and why.",
            by("reason", &s.packets),
        )?;
        f.counter(
            "k3sxdp_flow_table_full_total",
            "New flows that found the flow tables full: a live flow's entry evicted (flow_evicted), a live connection's SNAT translation taken over (translation_taken_over), a SNAT port taken while its backend may still hold it in TIME_WAIT (translation_reused_waiting: widen snat_port_range); an unconfirmed flow's entry or translation (its client sent one packet only, as a SYN flood's do) replaced first (flow_unconfirmed_replaced, translation_unconfirmed_taken).",
            by("event", &s.flow_table),
        )?;
        let g = &s.syn_flood;
        f.gauge(
            "k3sxdp_syn_flood_guard",
            "1 while the SYN flood guard is on ([syn_flood] guard), 0 while it is off.",
            one(flag(g.guard)),
        )?;
        f.counter(
            "k3sxdp_syn_unknown_source_total",
            "SYNs of new flows from sources not known to have completed a handshake through this node (counted while the guard is on). Those dropped are k3sxdp_xdp_packets_total{reason=\"drop_syn_flood\"}.",
            one(g.unknown_syns),
        )?;
        f.counter(
            "k3sxdp_syn_guard_admitted_total",
            "SYNs from unknown sources admitted while the guard was up ([syn_flood] admit per second).",
            one(g.admitted),
        )?;
        f.gauge(
            "k3sxdp_known_source_bits",
            "Bits set in the known-source set (of k3sxdp_known_source_capacity_bits): the chance that a forged source passes as known.",
            one(i64::try_from(g.known_bits).unwrap_or(i64::MAX)),
        )?;
        f.gauge(
            "k3sxdp_known_source_capacity_bits",
            "Size of the known-source set in bits.",
            one(i64::try_from(g.known_capacity).unwrap_or(i64::MAX)),
        )?;
        f.counter(
            "k3sxdp_service_packets_total",
            "Packets forwarded for the service (both directions in nat mode).",
            per_service(|x| x.packets),
        )?;
        f.counter(
            "k3sxdp_service_bytes_total",
            "Bytes forwarded for the service.",
            per_service(|x| x.bytes),
        )?;
        f.counter(
            "k3sxdp_service_flows_total",
            "New flows of the service.",
            per_service(|x| x.new_flows),
        )?;
        f.counter(
            "k3sxdp_service_resets_total",
            "TCP RSTs sent for the service (backend down, or none healthy).",
            per_service(|x| x.resets),
        )?;
        f.gauge(
            "k3sxdp_service_healthy_backends",
            "Backends of the service that take new flows.",
            per_service(|x| x.healthy_backends as u64),
        )?;
        f.counter(
            "k3sxdp_backend_packets_total",
            "Packets forwarded through the backend.",
            per_backend_total(|b| b.packets),
        )?;
        f.counter(
            "k3sxdp_backend_bytes_total",
            "Bytes forwarded through the backend.",
            per_backend_total(|b| b.bytes),
        )?;
        f.counter(
            "k3sxdp_backend_flows_total",
            "New flows sent to the backend.",
            per_backend_total(|b| b.new_flows),
        )?;
        f.counter(
            "k3sxdp_backend_resets_total",
            "RSTs sent for flows pinned to the backend.",
            per_backend_total(|b| b.resets),
        )?;
        f.gauge(
            "k3sxdp_backend_up",
            "1 if the backend passes its health checks.",
            per_backend(|b| flag(b.health == "up")),
        )?;
        f.gauge(
            "k3sxdp_backend_weight",
            "Weight of the backend in the Maglev table now (0 unless up; ramped by slowstart).",
            per_backend(|b| i64::from(b.effective_weight)),
        )?;
        f.gauge(
            "k3sxdp_backend_next_hop_resolved",
            "1 if the MAC address of the backend's next hop is known; until then it takes no new flows.",
            per_backend(|b| flag(b.next_hop_resolved)),
        )?;
        f.gauge(
            "k3sxdp_backend_snat_ports",
            "nat mode: SNAT ports of the backend held by live connections (in_use), or closed by the backend first and kept from other clients during its TIME_WAIT (waiting).",
            s.services.iter().flat_map(|x| {
                x.backends.iter().flat_map(move |b| {
                    [
                        ("in_use", b.snat_ports_in_use),
                        ("waiting", b.snat_ports_waiting),
                    ]
                    .map(|(state, n)| {
                        (
                            vec![
                                ("service", x.name.clone()),
                                ("backend", b.name.clone()),
                                ("state", state.to_string()),
                            ],
                            n,
                        )
                    })
                })
            }),
        )?;
        f.counter(
            "k3sxdp_backend_checks_total",
            "Health checks run against the backend.",
            per_backend_total(|b| b.checks),
        )?;
        f.gauge(
            "k3sxdp_backend_check_duration_seconds",
            "Duration of the last health check.",
            s.services.iter().flat_map(|x| {
                x.backends
                    .iter()
                    .map(move |b| (be(x, b), b.last_check_duration_seconds.unwrap_or(0.0)))
            }),
        )?;
        f.counter(
            "k3sxdp_backend_transitions_total",
            "Health state changes (UP/DOWN) of the backend.",
            per_backend_total(|b| b.transitions),
        )?;
        f.gauge(
            "k3sxdp_backend_admin_state",
            "Administrative state of the backend (k3s-xdp backend enable|drain|disable): 1 for the current one.",
            s.services.iter().flat_map(|x| {
                x.backends.iter().flat_map(move |b| {
                    ["enable", "drain", "disable"].map(|a| {
                        let mut labels = be(x, b);
                        labels.push(("admin", a.to_string()));
                        (labels, flag(b.admin == a))
                    })
                })
            }),
        )?;
        if let Some(b) = &s.bgp {
            f.gauge(
                "k3sxdp_bgp_announced",
                "1 while this node announces the VIP (its route is in bgp.table for the routing daemon to export), 0 while withdrawn.",
                b.vips
                    .iter()
                    .map(|v| (vec![("vip", v.vip.clone())], flag(v.announced))),
            )?;
            f.gauge(
                "k3sxdp_bgp_routing_daemon_readable",
                "1 while the routing daemon's control socket (bgp.bird_socket) answers.",
                one(flag(b.routing_daemon_error.is_none())),
            )?;
            f.gauge(
                "k3sxdp_bgp_session_established",
                "1 while the routing daemon's BGP session is established.",
                b.sessions
                    .iter()
                    .map(|x| (vec![("session", x.name.clone())], flag(x.established()))),
            )?;
        }
        if let Some(fs) = &s.flow_sync {
            flow_sync_families(&mut f, fs)?;
        }
        let Some(node) = &s.vrrp else {
            return Ok(());
        };
        // One series per virtual router, labelled with its family (ipv4, ipv6).
        let routers: Vec<&VrrpStatus> = node.routers().collect();
        let router = |v: &VrrpStatus| -> Labels { vec![("family", v.family.clone())] };
        let with = |v: &VrrpStatus, key: &'static str, value: String| -> Labels {
            let mut l = router(v);
            l.push((key, value));
            l
        };
        let each = |value: fn(&VrrpStatus) -> u64| -> Vec<(Labels, u64)> {
            routers.iter().map(|v| (router(v), value(v))).collect()
        };
        f.gauge(
            "k3sxdp_vrrp_state",
            "VRRP state of this node's virtual router: 1 for the current one.",
            routers.iter().flat_map(|v| {
                ["MASTER", "BACKUP", "FAULT", "INIT"]
                    .map(|st| (with(v, "state", st.to_lowercase()), flag(v.state == st)))
            }),
        )?;
        f.gauge(
            "k3sxdp_vrrp_master_info",
            "The current master's primary address (this node's when master), 1 while known.",
            routers.iter().flat_map(|v| {
                v.master
                    .iter()
                    .map(|m| (with(v, "address", m.clone()), 1i64))
            }),
        )?;
        f.gauge(
            "k3sxdp_vrrp_priority",
            "VRRP priority advertised now.",
            each(|v| u64::from(v.effective_priority)),
        )?;
        f.counter(
            "k3sxdp_vrrp_adverts_sent_total",
            "VRRP advertisements sent.",
            each(|v| v.adverts_sent),
        )?;
        f.counter(
            "k3sxdp_vrrp_adverts_received_total",
            "Valid VRRP advertisements received for our virtual router.",
            each(|v| v.adverts_received),
        )?;
        f.counter(
            "k3sxdp_vrrp_adverts_other_routers_total",
            "VRRP advertisements of other virtual routers on the link (another virtual_router_id), ignored.",
            each(|v| v.adverts_other_routers),
        )?;
        f.counter(
            "k3sxdp_vrrp_adverts_rejected_total",
            "VRRP packets rejected, by reason.",
            routers.iter().flat_map(|v| {
                v.adverts_rejected
                    .iter()
                    .map(|(reason, n)| (with(v, "reason", reason.clone()), *n))
            }),
        )?;
        f.counter(
            "k3sxdp_vrrp_transitions_total",
            "VRRP state changes.",
            each(|v| v.transitions),
        )?;
        f.gauge(
            "k3sxdp_vrrp_track_ok",
            "1 while tracking (data plane, healthy backends) succeeds.",
            each(|v| u64::from(v.track_ok)),
        )
    }
}

/// `[flow_sync]`'s families: its state, per peer, and what it refused by reason.
fn flow_sync_families(
    f: &mut Families<'_>,
    fs: &super::status::FlowSyncStatus,
) -> std::fmt::Result {
    let flag = |b: bool| u64::from(b);
    let peer = |p: &super::status::FlowSyncPeerStatus| -> Labels { vec![("peer", p.peer.clone())] };
    let per_peer = |value: fn(&super::status::FlowSyncPeerStatus) -> u64| -> Vec<(Labels, u64)> {
        fs.peers.iter().map(|p| (peer(p), value(p))).collect()
    };
    f.gauge(
        "k3sxdp_flow_sync_synced",
        "1 once this node holds its peers' flow tables (or gave up waiting for absent peers); until then VRRP does not preempt a master.",
        [(Vec::new(), flag(fs.synced))],
    )?;
    f.gauge(
        "k3sxdp_flow_sync_peer_up",
        "1 while the flow sync peer is heard (its hellos arrive).",
        per_peer(|p| u64::from(p.up)),
    )?;
    f.gauge(
        "k3sxdp_flow_sync_peer_table_taken",
        "1 once the peer's whole table (bulk sync) arrived in this run.",
        per_peer(|p| u64::from(p.bulk_done)),
    )?;
    f.gauge(
        "k3sxdp_flow_sync_peer_queued_datagrams",
        "Datagrams waiting to leave for the peer.",
        per_peer(|p| p.queued),
    )?;
    f.gauge(
        "k3sxdp_flow_sync_peer_lag_seconds",
        "The longest a datagram for the peer waited before it left, over the last half second.",
        fs.peers
            .iter()
            .map(|p| (peer(p), p.lag_ms as f64 / 1000.0))
            .collect::<Vec<_>>(),
    )?;
    f.counter(
        "k3sxdp_flow_sync_sent_entries_total",
        "Flow entries sent to the peer (new, closed, refreshed, bulk).",
        per_peer(|p| p.sent_entries),
    )?;
    f.counter(
        "k3sxdp_flow_sync_lost_entries_total",
        "Flow entries that never left for the peer: its queue was full (a slow or absent peer) or the kernel refused them. The next bulk sync repairs.",
        per_peer(|p| p.lost_entries),
    )?;
    f.counter(
        "k3sxdp_flow_sync_received_entries_total",
        "Flow entries taken from the peer (authenticated, in order).",
        per_peer(|p| p.received_entries),
    )?;
    f.counter(
        "k3sxdp_flow_sync_lost_datagrams_total",
        "Datagrams from the peer lost on the way (gaps in its numbering); each loss asks for its whole table again (at most every 5 s).",
        per_peer(|p| p.lost_on_the_way),
    )?;
    f.counter(
        "k3sxdp_flow_sync_bulks_sent_total",
        "Whole tables sent to the peer (it asked: it started, or came back).",
        per_peer(|p| p.bulks_sent),
    )?;
    f.counter(
        "k3sxdp_flow_sync_flows_total",
        "Flows by what flow sync did with them: reported by the XDP program, unnamed (its backend no longer published), installed from a peer, closed on a peer's word, conflicts (a live translation of another connection kept its slot), crowded (a copy's flow entry not written: its bucket full of entries worth more), not_placed (a service, backend or SNAT address this node does not have), lost in the program (overwritten in the log before the daemon read it).",
        [
            ("reported", fs.reported),
            ("unnamed", fs.unnamed),
            ("installed", fs.installed),
            ("closed", fs.closed),
            ("conflicts", fs.conflicts),
            ("crowded", fs.crowded),
            ("not_placed", fs.not_placed),
            ("lost_in_ring", fs.events_lost),
        ]
        .map(|(what, n)| (vec![("event", what.to_string())], n)),
    )?;
    f.counter(
        "k3sxdp_flow_sync_dropped_total",
        "Flow sync datagrams refused, by reason: not_a_peer, oversized, malformed, unauthenticated, replayed, stale.",
        fs.dropped
            .iter()
            .map(|(r, n)| (vec![("reason", r.clone())], *n))
            .collect::<Vec<_>>(),
    )
}
