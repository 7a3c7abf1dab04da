//! The status snapshot: the model, the data plane's counters, the VRRP and BGP state at one instant,
//! which `k3s-xdp status`, `--json` and `/metrics` all render.

use super::*;

impl Controller {
    /// The status snapshot, with counters read from the maps now.
    pub fn status(&self, now: Instant) -> Status {
        let (interface, mode) = match self.dp.attachment() {
            Some((i, _)) if !self.xdp_present => (i.to_string(), "detached".to_string()),
            Some((i, m)) => (i.to_string(), m.to_string()),
            None => (self.interface.clone(), "detached".to_string()),
        };
        let labelled = |counts: Result<Vec<(&'static str, u64)>>| -> BTreeMap<String, u64> {
            counts
                .map(|r| r.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                .unwrap_or_default()
        };
        let packets = labelled(self.dp.reasons());
        let mut flow_table = labelled(self.dp.table_events());
        // The guard's events are its own section, not signs of full tables.
        let mut take = |event: &str| flow_table.remove(event).unwrap_or(0);
        let syn_flood = SynFloodStatus {
            guard: self.config.syn_flood.guard,
            threshold: self.config.syn_flood.threshold,
            admit: self.config.syn_flood.admit,
            unknown_syns: take("syn_unknown_source"),
            admitted: take("syn_guard_admitted"),
            dropped: packets.get("drop_syn_flood").copied().unwrap_or(0),
            known_bits: self.dp.known_sources().unwrap_or(0),
            known_capacity: u64::from(k3s_xdp_common::guard::KNOWN_SOURCE_WORDS) * 64,
        };
        let snat = self
            .dp
            .snat_ports(self.clock, self.config.snat_timewait_secs())
            .unwrap_or_default();
        let services = self
            .model
            .services
            .iter()
            .map(|s| {
                let slot = self.publisher.service_slot(&s.config.name);
                let traffic = slot
                    .and_then(|slot| self.dp.service_traffic(slot).ok())
                    .unwrap_or_default();
                let backends: Vec<BackendStatus> = s
                    .backends
                    .iter()
                    .map(|b| {
                        let resolved = self.model.next_hop_resolved(b);
                        let spec = model::backend_spec(b, resolved, now);
                        let slot = self
                            .publisher
                            .backend_slot(&s.config.name, b.config.address);
                        let t = slot
                            .and_then(|slot| self.dp.backend_traffic(slot).ok())
                            .unwrap_or_default();
                        let ports = slot
                            .and_then(|slot| snat.get(&slot).copied())
                            .unwrap_or_default();
                        BackendStatus {
                            name: b.config.name.clone(),
                            address: b.config.address.to_string(),
                            health: if b.health.is_up() { "up" } else { "down" }.into(),
                            health_counter: b.health.counter().0,
                            health_max: b.health.counter().1,
                            admin: match b.admin {
                                Admin::Enable => "enable",
                                Admin::Drain => "drain",
                                Admin::Disable => "disable",
                            }
                            .into(),
                            state: format!("{:?}", spec.state).to_lowercase(),
                            weight: b.config.weight,
                            effective_weight: spec.weight,
                            checks: b.checks,
                            last_check: b.last_outcome.as_ref().map(|o| match o {
                                Outcome::Passed => "passed".to_string(),
                                Outcome::Failed(why) => why.clone(),
                            }),
                            last_check_duration_seconds: b
                                .last_check_duration
                                .map(|d| d.as_secs_f64()),
                            transitions: b.transitions,
                            last_change_seconds_ago: b
                                .last_transition
                                .as_ref()
                                .map(|(at, _)| now.saturating_duration_since(*at).as_secs()),
                            last_change: b.last_transition.as_ref().map(|(_, why)| why.clone()),
                            next_hop_resolved: resolved,
                            snat_ports_in_use: ports.in_use,
                            snat_ports_waiting: ports.waiting,
                            packets: t.packets,
                            bytes: t.bytes,
                            new_flows: t.new_flows,
                            resets: t.resets,
                        }
                    })
                    .collect();
                ServiceStatus {
                    name: s.config.name.clone(),
                    vip: s.config.vip.to_string(),
                    port: s.config.port,
                    protocol: format!("{:?}", s.config.protocol).to_lowercase(),
                    mode: format!("{:?}", s.config.mode).to_lowercase(),
                    on_backend_down: format!("{:?}", s.config.on_backend_down).to_lowercase(),
                    snat_addresses: s
                        .config
                        .snat_addresses(self.model.node.of_family(s.config.vip))
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    check: format!("{:?}", s.config.health.check).to_lowercase(),
                    healthy_backends: backends.iter().filter(|b| b.state == "up").count(),
                    packets: traffic.packets,
                    bytes: traffic.bytes,
                    new_flows: traffic.new_flows,
                    resets: traffic.resets,
                    backends,
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config_path.display().to_string(),
            interface,
            xdp_mode: mode,
            uptime_seconds: now.saturating_duration_since(self.started).as_secs(),
            reloads: self.reloads,
            failed_reloads: self.failed_reloads,
            services,
            vrrp: self.vrrp.clone(),
            bgp: self.bgp_report.as_ref().map(|r| r.status(now)),
            flow_sync: self.flow_sync.clone().map(|mut f| {
                f.events_lost = self.dp.flow_events_lost().unwrap_or(0);
                f
            }),
            link_up: self.health.borrow().link_up,
            packets,
            flow_table,
            metrics_connections_refused: 0,
            syn_flood,
        }
    }
}
