//! Reloading the configuration (SIGHUP, `k3s-xdp reload`): the file is validated again and
//! only what changed is applied; keys that cannot change while running (the interface, the
//! tables' size, the sockets, the VRRP identity, a SNAT pool) wait for a restart, and the
//! answer says which.

use super::*;

impl Controller {
    /// Validates the file again; if valid, applies only what changed.
    pub(super) fn reload(&mut self, now: Instant) -> Result<String> {
        let result = (|| -> Result<String> {
            let new = config::load(&self.config_path).map_err(|e| anyhow!("{e}"))?;
            for w in &new.warnings {
                warn!("{w}");
            }
            let probes = probes(&new)?;
            if let Some(s) = new.services.iter().find(|s| s.vip.is_ipv6()) {
                if !self.dp.has_ipv6_tables() {
                    anyhow::bail!(
                        "service {} has the IPv6 VIP {}, and this daemon started without IPv6 \
                         services, so its IPv6 flow tables were not sized (they take memory only \
                         when needed); restart k3s-xdp to add the first IPv6 service",
                        s.name,
                        s.vip
                    );
                }
            }
            let mut ignored = Vec::new();
            if new.interface != self.config.interface {
                ignored.push("interface");
            }
            if new.flow_table_size != self.config.flow_table_size {
                ignored.push("flow_table_size");
            }
            if new.metrics_listen != self.config.metrics_listen {
                ignored.push("metrics_listen");
            }
            if new.control_socket != self.config.control_socket {
                ignored.push("control_socket");
            }
            if new.xdp_mode != self.config.xdp_mode {
                ignored.push("xdp_mode");
            }
            if new.flow_sync != self.config.flow_sync {
                ignored.push("flow_sync");
            }
            let mut vrrp_changes = Vec::new();
            let mut retuned = None;
            match (&self.config.vrrp, &new.vrrp) {
                (Some(running), Some(next)) => {
                    let r = running.reload_to(next);
                    ignored.extend(r.at_restart);
                    if !r.live.is_empty() {
                        vrrp_changes.push(format!("vrrp: {}", r.live.join(", ")));
                        retuned = Some(running.retuned(next));
                    }
                }
                (running, next) if running != next => ignored.push("vrrp"),
                _ => {}
            }
            // [bgp] retunes live (a new table: withdrawn from the old, announced in the new);
            // the announcer itself starts with the daemon.
            let mut bgp_changes = Vec::new();
            match (&self.config.bgp, &new.bgp) {
                (Some(running), Some(next)) if running != next => {
                    bgp_changes.push(format!("bgp: {}", describe_bgp(running, next)));
                }
                (running, next) if running.is_some() != next.is_some() => ignored.push("bgp"),
                _ => {}
            }
            for key in &ignored {
                warn!("reload: `{key}` changed; it takes effect at the next restart");
            }
            // A SNAT pool is claimed at start (its addresses held, `node` resolved) and flows
            // record their address's place in it: a changed pool waits for a restart.
            let mut new = new;
            let mut pools_kept = Vec::new();
            for s in &mut new.services {
                let running = self
                    .config
                    .services
                    .iter()
                    .find(|r| r.name == s.name)
                    .map_or_else(|| vec![config::SnatSource::Vip], |r| r.snat_source.clone());
                if s.snat_source != running {
                    pools_kept.push(format!("snat_source of service {}", s.name));
                    s.snat_source = running;
                }
            }
            for key in &pools_kept {
                warn!("reload: `{key}` changed; it takes effect at the next restart");
            }
            let mut candidate = self.model.clone();
            let mut changes = candidate.reload(&new, now);
            changes.extend(vrrp_changes);
            changes.extend(bgp_changes);
            let specs = candidate.specs(now);
            self.publisher.apply(&mut self.dp, &specs)?;
            self.model = candidate;
            self.probes = probes;
            if let Some(keeper) = &self.next_hops {
                keeper.want(self.model.addresses());
            }
            let syn_flood_changed = new.syn_flood != self.config.syn_flood;
            if syn_flood_changed {
                changes.push(format!("syn_flood: {}", describe_syn_flood(&new.syn_flood)));
            }
            let settings_changed = (new.snat_port_min, new.snat_port_max, new.snat_timewait)
                != (
                    self.config.snat_port_min,
                    self.config.snat_port_max,
                    self.config.snat_timewait,
                )
                || syn_flood_changed;
            // The running instance keeps its identity until a restart; the config says so.
            new.vrrp.clone_from(&self.config.vrrp);
            new.flow_sync.clone_from(&self.config.flow_sync);
            if new.bgp.is_some() != self.config.bgp.is_some() {
                new.bgp.clone_from(&self.config.bgp);
            }
            if let Some(v) = retuned {
                if let Some(tx) = &self.vrrp_settings {
                    tx.send_replace(v.clone());
                }
                new.vrrp = Some(v);
            }
            self.config = new;
            // Without [vrrp] this node holds the VIPs itself: the keeper adds a new service's
            // VIP and removes one no service has any more.
            if let Some(held) = &self.held {
                let wanted = self.config.held_addresses();
                held.send_if_modified(|h| {
                    let changed = *h != wanted;
                    *h = wanted;
                    changed
                });
            }
            if settings_changed {
                // The config is adopted already; the data plane keeps the old SNAT and SYN flood
                // settings until the next write succeeds (every clock tick writes them).
                if let Err(e) = self.write_globals() {
                    warn!("reload: writing the new SNAT or SYN flood settings to the data plane: {e:#}");
                }
            }
            let mut summary = if changes.is_empty() {
                "configuration reloaded: no change".to_string()
            } else {
                format!("configuration reloaded: {}", changes.join("; "))
            };
            let ignored: Vec<String> = ignored
                .iter()
                .map(|k| k.to_string())
                .chain(pools_kept)
                .collect();
            if !ignored.is_empty() {
                summary.push_str(&format!(
                    "; changed but applied only at the next restart: {}",
                    ignored.join(", ")
                ));
            }
            Ok(summary)
        })();
        match &result {
            Ok(summary) => {
                self.reloads += 1;
                info!("{summary}");
            }
            Err(e) => {
                self.failed_reloads += 1;
                // One record per problem: a config file with three mistakes logs three lines,
                // each naming its file, line and key.
                let text = format!("{e:#}");
                error!(
                    "reload of {} refused, the running configuration stays ({} problem(s)):",
                    self.config_path.display(),
                    text.lines().count()
                );
                for line in text.lines() {
                    error!("reload refused: {line}");
                }
            }
        }
        result
    }
}

/// What changed in `[bgp]`, for the reload's summary.
fn describe_bgp(old: &config::Bgp, new: &config::Bgp) -> String {
    let mut out = Vec::new();
    if old.table != new.table {
        out.push(format!("table {} -> {}", old.table, new.table));
    }
    if old.vips != new.vips {
        out.push("vips".to_string());
    }
    if old.track != new.track {
        out.push(format!(
            "track {{ dataplane = {}, min_healthy_backends = {} }}",
            new.track.dataplane, new.track.min_healthy_backends
        ));
    }
    if old.drain_time != new.drain_time {
        out.push(format!(
            "drain_time {}",
            config::format_duration(new.drain_time)
        ));
    }
    if old.bird_socket != new.bird_socket {
        out.push(format!("bird_socket {}", new.bird_socket.display()));
    }
    out.join(", ")
}

/// `[syn_flood]` in a few words, for logs and the reload's answer.
pub(crate) fn describe_syn_flood(f: &config::SynFlood) -> String {
    if f.guard {
        format!(
            "guard on (threshold {}/s, admit {}/s from unknown sources)",
            f.threshold, f.admit
        )
    } else {
        "guard off".to_string()
    }
}
