//! The runtime model: every configured backend with its health, its administrative state
//! (`enable`/`drain`/`disable`) and its check history; from it, what the data plane should
//! hold ([`Model::specs`]). Pure: time is passed in.
//!
//! A backend is, for the data plane:
//! - Down when disabled or failing its checks (out of the table; flows reset or kept per
//!   service);
//! - Drain when drained (out of the table; flows continue);
//! - Up otherwise, at its configured weight ramped by slowstart; but out of the table (weight
//!   0) until its next hop is resolved (`system::neighbours`), so its first packets are not
//!   left to wait for ARP.
//!
//! A reload keeps the state of every backend that remains (same service name and address): its
//! health, its admin state and so its flows; new backends start UP, as at startup.

use crate::{
    config::{self, Config},
    dataplane::plan::{BackendSpec, BackendState, NodeAddresses, ServiceSpec},
    health::state::{Health, Outcome, Params, Transition},
};
use anyhow::{anyhow, bail, Result};
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

/// `k3s-xdp backend enable|drain|disable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Enable,
    Drain,
    Disable,
}

#[derive(Clone, Debug)]
pub struct BackendModel {
    pub config: config::BackendConfig,
    pub health: Health,
    pub admin: Admin,
    pub next_check: Instant,
    /// Whether a check is running now (at most one per backend).
    pub checking: bool,
    pub last_outcome: Option<Outcome>,
    pub last_check_duration: Option<Duration>,
    pub checks: u64,
    pub transitions: u64,
    /// When and why the health last changed.
    pub last_transition: Option<(Instant, String)>,
}

#[derive(Clone, Debug)]
pub struct ServiceModel {
    pub config: config::Service,
    pub backends: Vec<BackendModel>,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub services: Vec<ServiceModel>,
    /// The backends whose next hop is resolved, as the neighbour keeper last reported
    /// (`system::neighbours`); `None`: not known, every backend counts as resolved.
    pub resolved: Option<BTreeSet<IpAddr>>,
    /// This node's own addresses, for `snat_source = "node"` (known when a service uses it).
    pub node: NodeAddresses,
}

/// Health parameters of a service's checks.
pub fn params(h: &config::Health) -> Params {
    Params {
        rise: h.rise,
        fall: h.fall,
        inter: h.inter,
        fastinter: h.fastinter,
        downinter: h.downinter,
        slowstart: h.slowstart,
    }
}

/// Spreads the first checks of a service's backends over its interval, so they do not all go
/// out at once (deterministically: backend i of n starts at i/n of the interval, capped at 1 s).
fn first_check(now: Instant, index: usize, count: usize, inter: Duration) -> Instant {
    let spread = inter.min(Duration::from_secs(1));
    now + spread * index as u32 / count.max(1) as u32
}

impl Model {
    pub fn new(config: &Config, now: Instant) -> Self {
        let services = config
            .services
            .iter()
            .map(|s| ServiceModel {
                config: s.clone(),
                backends: s
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        new_backend(
                            s,
                            b,
                            now,
                            first_check(now, i, s.backends.len(), s.health.inter),
                        )
                    })
                    .collect(),
            })
            .collect();
        Model {
            services,
            resolved: None,
            node: NodeAddresses::default(),
        }
    }

    /// Adopts a new config, keeping the state of the backends that remain. Returns a summary of
    /// what changed, for the log.
    pub fn reload(&mut self, config: &Config, now: Instant) -> Vec<String> {
        let mut changes = Vec::new();
        let mut old: Vec<ServiceModel> = std::mem::take(&mut self.services);
        for s in &config.services {
            let previous = old
                .iter()
                .position(|o| o.config.name == s.name)
                .map(|i| old.remove(i));
            let mut backends = Vec::new();
            match previous {
                None => {
                    changes.push(format!("service {} added", s.name));
                    for (i, b) in s.backends.iter().enumerate() {
                        backends.push(new_backend(
                            s,
                            b,
                            now,
                            first_check(now, i, s.backends.len(), s.health.inter),
                        ));
                    }
                }
                Some(mut p) => {
                    if p.config.vip != s.vip
                        || p.config.port != s.port
                        || p.config.protocol != s.protocol
                    {
                        changes.push(format!("service {}: now {}:{}", s.name, s.vip, s.port));
                    }
                    for (i, b) in s.backends.iter().enumerate() {
                        match p
                            .backends
                            .iter()
                            .position(|o| o.config.address == b.address)
                        {
                            Some(j) => {
                                let mut kept = p.backends.remove(j);
                                if kept.config.weight != b.weight {
                                    changes.push(format!(
                                        "{}/{}: weight {} -> {}",
                                        s.name, b.name, kept.config.weight, b.weight
                                    ));
                                }
                                kept.config = b.clone();
                                kept.health.set_params(params(&s.health));
                                backends.push(kept);
                            }
                            None => {
                                changes
                                    .push(format!("{}/{} ({}) added", s.name, b.name, b.address));
                                backends.push(new_backend(
                                    s,
                                    b,
                                    now,
                                    first_check(now, i, s.backends.len(), s.health.inter),
                                ));
                            }
                        }
                    }
                    for gone in p.backends {
                        changes.push(format!(
                            "{}/{} ({}) removed",
                            s.name, gone.config.name, gone.config.address
                        ));
                    }
                }
            }
            self.services.push(ServiceModel {
                config: s.clone(),
                backends,
            });
        }
        for gone in old {
            changes.push(format!("service {} removed", gone.config.name));
        }
        changes
    }

    /// What the data plane should hold now.
    pub fn specs(&self, now: Instant) -> Vec<ServiceSpec> {
        self.services
            .iter()
            .map(|s| ServiceSpec {
                backends: s
                    .backends
                    .iter()
                    .map(|b| backend_spec(b, self.next_hop_resolved(b), now))
                    .collect(),
                ..ServiceSpec::with_node(&s.config, self.node)
            })
            .collect()
    }

    /// Whether `b`'s next hop is resolved (or not known to be unresolved).
    pub fn next_hop_resolved(&self, b: &BackendModel) -> bool {
        self.resolved
            .as_ref()
            .is_none_or(|r| r.contains(&b.config.address.ip()))
    }

    /// Adopts the neighbour keeper's report; returns the backends whose next hop changed
    /// (name, address, resolved now), for the log.
    pub fn set_resolved(
        &mut self,
        resolved: Option<BTreeSet<IpAddr>>,
    ) -> Vec<(String, SocketAddr, bool)> {
        let before: Vec<bool> = self.backends().map(|b| self.next_hop_resolved(b)).collect();
        self.resolved = resolved;
        self.backends()
            .zip(before)
            .filter(|(b, was)| self.next_hop_resolved(b) != *was)
            .map(|(b, was)| (b.config.name.clone(), b.config.address, !was))
            .collect()
    }

    fn backends(&self) -> impl Iterator<Item = &BackendModel> {
        self.services.iter().flat_map(|s| &s.backends)
    }

    /// The addresses of every configured backend, whose next hops are kept resolved.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.backends().map(|b| b.config.address.ip()).collect()
    }

    /// Backends that can take new flows, over all services.
    pub fn healthy_backends(&self) -> usize {
        self.healthy_by_service().values().sum()
    }

    /// Healthy, enabled backends of each service, by service name.
    pub fn healthy_by_service(&self) -> std::collections::BTreeMap<String, usize> {
        self.services
            .iter()
            .map(|s| {
                let healthy = s
                    .backends
                    .iter()
                    .filter(|b| b.health.is_up() && b.admin == Admin::Enable)
                    .count();
                (s.config.name.clone(), healthy)
            })
            .collect()
    }

    pub fn backend_mut(&mut self, service: &str, address: SocketAddr) -> Option<&mut BackendModel> {
        self.services
            .iter_mut()
            .find(|s| s.config.name == service)?
            .backends
            .iter_mut()
            .find(|b| b.config.address == address)
    }

    /// Records a check result; schedules the next check.
    pub fn record(
        &mut self,
        service: &str,
        address: SocketAddr,
        outcome: Outcome,
        took: Duration,
        now: Instant,
    ) -> Option<Transition> {
        let b = self.backend_mut(service, address)?;
        b.checking = false;
        b.checks += 1;
        b.last_check_duration = Some(took);
        let transition = b.health.record(&outcome, now);
        b.last_outcome = Some(outcome);
        if let Some(t) = &transition {
            b.transitions += 1;
            b.last_transition = Some((now, t.reason.clone()));
        }
        b.next_check = now + b.health.interval();
        transition
    }

    /// Backends whose check is due and not running; marks them running.
    pub fn due(&mut self, now: Instant) -> Vec<(String, config::BackendConfig)> {
        let mut out = Vec::new();
        for s in &mut self.services {
            for b in &mut s.backends {
                if !b.checking && b.next_check <= now {
                    b.checking = true;
                    out.push((s.config.name.clone(), b.config.clone()));
                }
            }
        }
        out
    }

    /// The next time something changes by itself: a check due, or a slowstart step.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.services
            .iter()
            .flat_map(|s| &s.backends)
            .flat_map(|b| {
                let check = (!b.checking).then_some(b.next_check);
                [check, b.health.next_weight_change(now)]
            })
            .flatten()
            .min()
    }

    /// `SERVICE/BACKEND` → sets its admin state; returns what it was.
    pub fn set_admin(&mut self, target: &str, admin: Admin) -> Result<Admin> {
        let (service, backend) = target.split_once('/').ok_or_else(|| {
            anyhow!("expected SERVICE/BACKEND, e.g. k3s-api/server-2, got {target:?}")
        })?;
        let Some(s) = self.services.iter_mut().find(|s| s.config.name == service) else {
            bail!(
                "no service {service:?} (services: {})",
                self.services
                    .iter()
                    .map(|s| s.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let names: Vec<String> = s.backends.iter().map(|b| b.config.name.clone()).collect();
        let Some(b) = s.backends.iter_mut().find(|b| b.config.name == backend) else {
            bail!(
                "service {service} has no backend {backend:?} (backends: {})",
                names.join(", ")
            );
        };
        let was = b.admin;
        b.admin = admin;
        Ok(was)
    }
}

fn new_backend(
    s: &config::Service,
    b: &config::BackendConfig,
    now: Instant,
    first: Instant,
) -> BackendModel {
    BackendModel {
        config: b.clone(),
        health: Health::new(params(&s.health), now),
        admin: Admin::Enable,
        next_check: first,
        checking: false,
        last_outcome: None,
        last_check_duration: None,
        checks: 0,
        transitions: 0,
        last_transition: None,
    }
}

/// The data plane's view of one backend (`resolved`: its next hop is).
pub fn backend_spec(b: &BackendModel, resolved: bool, now: Instant) -> BackendSpec {
    let state = match (b.admin, b.health.is_up()) {
        (Admin::Disable, _) | (_, false) => BackendState::Down,
        (Admin::Drain, true) => BackendState::Drain,
        (Admin::Enable, true) => BackendState::Up,
    };
    BackendSpec {
        name: b.config.name.clone(),
        address: b.config.address,
        state,
        weight: if state == BackendState::Up && resolved {
            b.health.effective_weight(b.config.weight, now)
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
backends = [
  { name = "server-1", address = "192.0.2.50:6443" },
  { name = "server-2", address = "192.0.2.51:6443", weight = 50 },
]
[service.health]
rise = 2
fall = 2
inter = "2s"
slowstart = "10s"
"#;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "t.toml".as_ref()).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn state_of(m: &Model, now: Instant, name: &str) -> (BackendState, u32) {
        let spec = m.specs(now);
        let b = spec[0].backends.iter().find(|b| b.name == name).unwrap();
        (b.state, b.weight)
    }

    #[test]
    fn backends_start_up_at_full_weight_and_checks_are_spread() {
        let t0 = Instant::now();
        let m = Model::new(&config(CONFIG), t0);
        assert_eq!(state_of(&m, t0, "server-1"), (BackendState::Up, 100));
        assert_eq!(state_of(&m, t0, "server-2"), (BackendState::Up, 50));
        let firsts: Vec<Instant> = m.services[0]
            .backends
            .iter()
            .map(|b| b.next_check)
            .collect();
        assert_eq!(firsts, vec![t0, t0 + Duration::from_millis(500)]);
    }

    #[test]
    fn health_admin_and_slowstart_shape_the_data_plane() {
        let t0 = Instant::now();
        let mut m = Model::new(&config(CONFIG), t0);
        let s2 = addr("192.0.2.51:6443");
        let fail = Outcome::Failed("connection refused".into());
        let t = m
            .record("k3s-api", s2, fail, Duration::from_millis(1), t0)
            .unwrap();
        assert_eq!(t.reason, "DOWN after 1/2 failures: connection refused");
        assert_eq!(state_of(&m, t0, "server-2"), (BackendState::Down, 0));
        assert_eq!(m.healthy_backends(), 1);
        m.record("k3s-api", s2, Outcome::Passed, Duration::ZERO, t0);
        let up = t0 + Duration::from_secs(1);
        assert!(
            m.record("k3s-api", s2, Outcome::Passed, Duration::ZERO, up)
                .unwrap()
                .up
        );
        assert_eq!(
            state_of(&m, up, "server-2"),
            (BackendState::Up, 5),
            "slowstart: a tenth of 50"
        );
        assert_eq!(
            state_of(&m, up + Duration::from_secs(10), "server-2"),
            (BackendState::Up, 50)
        );

        m.set_admin("k3s-api/server-1", Admin::Drain).unwrap();
        assert_eq!(state_of(&m, up, "server-1"), (BackendState::Drain, 0));
        m.set_admin("k3s-api/server-1", Admin::Disable).unwrap();
        assert_eq!(state_of(&m, up, "server-1"), (BackendState::Down, 0));
        assert_eq!(
            m.set_admin("k3s-api/server-1", Admin::Enable).unwrap(),
            Admin::Disable
        );
        assert_eq!(state_of(&m, up, "server-1").0, BackendState::Up);
    }

    #[test]
    fn a_backend_takes_new_flows_only_once_its_next_hop_is_resolved() {
        let t0 = Instant::now();
        let mut m = Model::new(&config(CONFIG), t0);
        assert_eq!(
            state_of(&m, t0, "server-2"),
            (BackendState::Up, 50),
            "not known: taken as resolved"
        );
        m.resolved = Some([IpAddr::from([192, 0, 2, 50])].into());
        assert_eq!(state_of(&m, t0, "server-1"), (BackendState::Up, 100));
        assert_eq!(
            state_of(&m, t0, "server-2"),
            (BackendState::Up, 0),
            "up (its flows continue), but out of the table"
        );
        assert_eq!(m.healthy_backends(), 2, "tracking counts health, not ARP");
        let changed = m.set_resolved(Some(
            [IpAddr::from([192, 0, 2, 50]), IpAddr::from([192, 0, 2, 51])].into(),
        ));
        assert_eq!(
            changed,
            [("server-2".to_string(), addr("192.0.2.51:6443"), true)]
        );
        assert_eq!(state_of(&m, t0, "server-2"), (BackendState::Up, 50));
        assert!(
            m.set_resolved(None).is_empty(),
            "unknown counts as resolved"
        );
        assert_eq!(
            m.addresses(),
            [IpAddr::from([192, 0, 2, 50]), IpAddr::from([192, 0, 2, 51])].into()
        );
    }

    #[test]
    fn admin_targets_are_checked_with_helpful_errors() {
        let mut m = Model::new(&config(CONFIG), Instant::now());
        let e = m
            .set_admin("k3s-api", Admin::Drain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SERVICE/BACKEND"), "{e}");
        let e = m
            .set_admin("nope/server-1", Admin::Drain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("services: k3s-api"), "{e}");
        let e = m
            .set_admin("k3s-api/server-9", Admin::Drain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("backends: server-1, server-2"), "{e}");
    }

    #[test]
    fn due_checks_run_one_at_a_time_per_backend() {
        let t0 = Instant::now();
        let mut m = Model::new(&config(CONFIG), t0);
        let due = m.due(t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 2);
        assert!(
            m.due(t0 + Duration::from_secs(5)).is_empty(),
            "both still running"
        );
        m.record(
            "k3s-api",
            addr("192.0.2.50:6443"),
            Outcome::Passed,
            Duration::ZERO,
            t0 + Duration::from_secs(1),
        );
        // Not fully up yet (counter rise -> rise+1 = max with fall 2): inter from now on.
        assert_eq!(
            m.services[0].backends[0].next_check,
            t0 + Duration::from_secs(3),
            "rise 2 fall 2: one success from the start value is fully up, so inter"
        );
        assert_eq!(m.next_deadline(t0), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn reload_keeps_the_state_of_remaining_backends() {
        let t0 = Instant::now();
        let mut m = Model::new(&config(CONFIG), t0);
        m.set_admin("k3s-api/server-1", Admin::Drain).unwrap();
        m.record(
            "k3s-api",
            addr("192.0.2.51:6443"),
            Outcome::Failed("x".into()),
            Duration::ZERO,
            t0,
        );
        let next = config(&CONFIG.replace(
            "  { name = \"server-2\", address = \"192.0.2.51:6443\", weight = 50 },",
            "  { name = \"server-2\", address = \"192.0.2.51:6443\", weight = 80 },\n  { name = \"server-3\", address = \"192.0.2.52:6443\" },",
        ));
        let changes = m.reload(&next, t0);
        assert!(
            changes.contains(&"k3s-api/server-2: weight 50 -> 80".to_string()),
            "{changes:?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| c.contains("server-3 (192.0.2.52:6443) added")),
            "{changes:?}"
        );
        assert_eq!(
            state_of(&m, t0, "server-1").0,
            BackendState::Drain,
            "admin state kept"
        );
        assert_eq!(
            state_of(&m, t0, "server-2").0,
            BackendState::Down,
            "health kept"
        );
        assert_eq!(state_of(&m, t0, "server-3"), (BackendState::Up, 100));
        let gone = config(&CONFIG.replace(
            "  { name = \"server-1\", address = \"192.0.2.50:6443\" },\n",
            "",
        ));
        let changes = m.reload(&gone, t0);
        assert!(
            changes
                .iter()
                .any(|c| c.contains("server-1 (192.0.2.50:6443) removed")),
            "{changes:?}"
        );
    }
}
