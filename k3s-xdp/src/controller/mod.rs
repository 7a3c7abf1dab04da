//! The controller: one task that owns the data plane and the runtime model, and to which
//! everything else sends events: check results, control requests (status, backend admin,
//! reload), VRRP reports, FIB changes, shutdown. After each change it derives what the data
//! plane should hold from the model and publishes the difference, so there is a single place
//! where decisions are made and a single writer of the maps.

pub mod control;
pub mod exposition;
pub mod metrics;
pub mod model;
mod reload;
pub mod report;
mod snapshot;
pub mod status;

use crate::{
    config::{self, CheckKind, Config},
    dataplane::{self, Dataplane, Publisher},
    flowsync::{
        runtime::{FlowSync, Settings},
        translate::Directory,
    },
    health::{
        check::{Probe, TlsFiles},
        state::Outcome,
    },
    system::neighbours::{Keeper, Resolved},
};
use anyhow::{anyhow, Context, Result};
use model::{Admin, Model};
use status::{BackendStatus, Request, Response, ServiceStatus, Status, SynFloodStatus, VrrpStatus};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// What the controller reacts to.
pub enum Event {
    CheckDone {
        service: String,
        backend: config::BackendConfig,
        outcome: Outcome,
        took: Duration,
    },
    Control {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    /// SIGHUP.
    Reload,
    /// Prometheus scrape.
    Metrics {
        reply: oneshot::Sender<Box<Status>>,
    },
    /// VRRP's view, for status and metrics.
    Vrrp(Box<VrrpStatus>),
    /// The BGP announcer's view ([`crate::bgp::runtime`]).
    Bgp(Box<crate::bgp::runtime::Report>),
    /// Flow sync's view ([`crate::flowsync::runtime`]).
    FlowSync(Box<status::FlowSyncStatus>),
    /// Routes or neighbours changed: cached next hops must be resolved again.
    FibChanged,
    /// The interface's link went down or came up (netlink).
    Link {
        up: bool,
    },
    /// Which backends' next hops are resolved now (`system::neighbours`).
    NextHops(Resolved),
    /// Whether the kernel still has the XDP program on the interface (someone may detach it:
    /// `bpftool link detach`, a driver reset).
    XdpPresent(bool),
    Shutdown(&'static str),
}

/// What the controller publishes for others (VRRP tracking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub healthy_backends: usize,
    pub dataplane_attached: bool,
    /// The interface has a carrier and is up (from netlink; assumed until told otherwise).
    pub link_up: bool,
    /// Flow sync holds the peers' tables (or gave up waiting): VRRP may preempt. Always true
    /// without `[flow_sync]`.
    pub flows_synced: bool,
}

pub struct Controller {
    pub config_path: PathBuf,
    config: Config,
    interface: String,
    /// The interface's MAC address (the data plane forwards only frames sent to it).
    mac: [u8; 6],
    dp: Dataplane,
    publisher: Publisher,
    model: Model,
    probes: BTreeMap<String, Check>,
    started: Instant,
    /// The data plane's clock as last written (`clock_at`).
    clock: u32,
    reloads: u64,
    failed_reloads: u64,
    fib_generation: u32,
    vrrp: Option<VrrpStatus>,
    events: mpsc::Sender<Event>,
    health: watch::Sender<Health>,
    /// The running VRRP instance's settings: a reload retunes it through this.
    vrrp_settings: Option<watch::Sender<config::Vrrp>>,
    /// What the BGP announcer should keep in its table (`[bgp]`).
    bgp_wanted: Option<watch::Sender<crate::bgp::runtime::Request>>,
    /// What the BGP announcer last reported.
    bgp_report: Option<crate::bgp::runtime::Report>,
    /// False once the kernel no longer shows the program on the interface.
    xdp_present: bool,
    /// Without `[vrrp]`: the addresses this node holds (VIPs, SNAT pool addresses), followed
    /// across reloads by the daemon's address keeper.
    held: Option<watch::Sender<std::collections::BTreeSet<std::net::IpAddr>>>,
    /// Services currently without any backend for new flows (logged once per outage).
    empty: Vec<String>,
    /// Keeps the backends' next hops resolved; told the backends after each reload.
    next_hops: Option<Keeper>,
    /// Flow sync's names of the published services (`[flow_sync]`), and its last report.
    directory: Option<watch::Sender<Arc<Directory>>>,
    flow_sync: Option<status::FlowSyncStatus>,
    /// Whether this node serves the VIPs: with `[vrrp]`, while it is MASTER; without, always
    /// (`[bgp]` nodes all serve). Flow sync's installs follow it.
    serving: watch::Sender<bool>,
}

/// How a service's backends are checked.
#[derive(Clone)]
pub struct Check {
    pub probe: Probe,
    /// `timeout`.
    pub limit: Duration,
    /// `port`: checked instead of the backend's own port.
    pub port: Option<u16>,
}

impl Check {
    /// Where to check `backend`.
    pub fn target(&self, backend: std::net::SocketAddr) -> std::net::SocketAddr {
        std::net::SocketAddr::new(backend.ip(), self.port.unwrap_or(backend.port()))
    }
}

/// Builds each service's probe now, so a missing CA file or token is an error at start/reload.
pub fn probes(config: &Config) -> Result<BTreeMap<String, Check>> {
    let mut out = BTreeMap::new();
    for s in &config.services {
        let h = &s.health;
        let files = TlsFiles {
            ca_file: h.ca_file.as_deref(),
            client_cert: h.client_cert.as_deref(),
            client_key: h.client_key.as_deref(),
        };
        let probe = match h.check {
            CheckKind::Tcp => Probe::Tcp,
            CheckKind::Tls => Probe::Tls {
                tls: Probe::tls_config(&files).map_err(|e| anyhow!("service {}: {e:#}", s.name))?,
            },
            CheckKind::Https => Probe::Https {
                tls: Probe::tls_config(&files).map_err(|e| anyhow!("service {}: {e:#}", s.name))?,
                path: h.path.clone(),
                expect: h.expect.clone(),
                bearer_token: h
                    .bearer_token_file
                    .as_deref()
                    .map(Probe::read_token)
                    .transpose()
                    .map_err(|e| anyhow!("service {}: {e:#}", s.name))?,
            },
        };
        out.insert(
            s.name.clone(),
            Check {
                probe,
                limit: h.timeout,
                port: h.port,
            },
        );
    }
    Ok(out)
}

/// The data plane's globals for `config`.
fn globals(
    config: &Config,
    fib_generation: u32,
    mac: [u8; 6],
    clock: u32,
) -> k3s_xdp_common::Globals {
    k3s_xdp_common::Globals {
        fib_generation,
        snat_port_min: config.snat_port_min,
        snat_port_max: config.snat_port_max,
        mac,
        _pad: [0; 2],
        clock,
        // Filled in by `write_globals`, which knows the tables' size.
        flow_mask: 0,
        snat_timewait: config.snat_timewait_secs(),
        flow_sync: if config.flow_sync.is_some() {
            k3s_xdp_common::FLOW_SYNC_ON
        } else {
            0
        },
    }
}

/// The CPUs the XDP program may run on (online ones), among which the SYN flood guard's
/// figures are divided; read once.
fn program_cpus() -> u32 {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        aya::util::online_cpus()
            .map(|c| u32::try_from(c.len()).unwrap_or(u32::MAX))
            .unwrap_or(1)
            .max(1)
    })
}

/// The data plane's coarse clock at `now`: whole seconds since the controller started, from 1
/// (0 means "no clock" to the program).
fn clock_at(started: Instant, now: Instant) -> u32 {
    u32::try_from(now.saturating_duration_since(started).as_secs())
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1)
}

impl Controller {
    /// Publishes the config into the data plane (all backends up until checked).
    pub fn new(
        config_path: PathBuf,
        config: Config,
        interface: String,
        mac: [u8; 6],
        node: dataplane::NodeAddresses,
        mut dp: Dataplane,
        events: mpsc::Sender<Event>,
    ) -> Result<(Self, watch::Receiver<Health>)> {
        let probes = probes(&config)?;
        let now = Instant::now();
        let mut model = Model::new(&config, now);
        model.node = node;
        let fib_generation = 1;
        dataplane::write_globals(&mut dp, &globals(&config, fib_generation, mac, 1))?;
        dp.write_syn_guard(&config.syn_flood.per_cpu(program_cpus()))?;
        let attached = dp.attachment().is_some();
        let standalone = config.vrrp.is_none();
        let (health, health_rx) = watch::channel(Health {
            healthy_backends: model.healthy_backends(),
            dataplane_attached: attached,
            link_up: true,
            flows_synced: config.flow_sync.is_none(),
        });
        let mut c = Controller {
            config_path,
            config,
            interface,
            mac,
            dp,
            publisher: Publisher::new(),
            model,
            probes,
            started: now,
            clock: 1,
            reloads: 0,
            failed_reloads: 0,
            fib_generation,
            vrrp: None,
            events,
            health,
            vrrp_settings: None,
            bgp_wanted: None,
            bgp_report: None,
            xdp_present: true,
            held: None,
            empty: Vec::new(),
            next_hops: None,
            directory: None,
            flow_sync: None,
            serving: watch::Sender::new(standalone),
        };
        c.publish(now)?;
        Ok((c, health_rx))
    }

    /// Starts flow sync (`[flow_sync]`): its thread reads the program's reports and writes
    /// the peers' flows into the tables; the controller keeps it told of the published
    /// services. `None` without `[flow_sync]`.
    pub fn start_flow_sync(
        &mut self,
        socket: Option<std::net::UdpSocket>,
    ) -> Result<Option<FlowSync>> {
        let (Some(c), Some(socket)) = (self.config.flow_sync.clone(), socket) else {
            return Ok(None);
        };
        let (key, warning) = crate::flowsync::read_key_file(&c.key_file)?;
        if let Some(w) = warning {
            warn!("{w}");
        }
        let specs = self.model.specs(Instant::now());
        let directory = Directory::new(
            &specs,
            |n| self.publisher.service_slot(n),
            |n, a| self.publisher.backend_slot(n, a),
        );
        let (tx, rx) = watch::channel(Arc::new(directory));
        self.directory = Some(tx);
        let started = self.started;
        let sync = FlowSync::start(
            socket,
            Settings {
                peers: c.peers.clone(),
                port: c.port,
                key,
                clock: Box::new(move || clock_at(started, Instant::now())),
                serving: self.serving.subscribe(),
            },
            self.dp.take_flow_events()?,
            self.dp.flow_tables()?,
            rx,
            self.events.clone(),
        )?;
        Ok(Some(sync))
    }

    /// The VRRP settings for the instance to run with, and then to follow across reloads.
    pub fn vrrp_settings(&mut self) -> Option<watch::Receiver<config::Vrrp>> {
        let (tx, rx) = watch::channel(self.config.vrrp.clone()?);
        self.vrrp_settings = Some(tx);
        Some(rx)
    }

    /// What the BGP announcer should keep announced, followed across changes and reloads;
    /// `None` without `[bgp]`.
    pub fn bgp_requests(&mut self) -> Option<watch::Receiver<crate::bgp::runtime::Request>> {
        let request = self.bgp_request()?;
        let (tx, rx) = watch::channel(request);
        self.bgp_wanted = Some(tx);
        Some(rx)
    }

    /// Without `[vrrp]`, the addresses this node must hold, followed across reloads; `None`
    /// with `[vrrp]` (VRRP holds them).
    pub fn held_addresses(
        &mut self,
    ) -> Option<watch::Receiver<std::collections::BTreeSet<std::net::IpAddr>>> {
        if self.config.vrrp.is_some() {
            return None;
        }
        let (tx, rx) = watch::channel(self.config.held_addresses());
        self.held = Some(tx);
        Some(rx)
    }

    /// `bgp.drain_time` of the running configuration.
    pub fn bgp_drain_time(&self) -> Duration {
        self.config
            .bgp
            .as_ref()
            .map(|b| b.drain_time)
            .unwrap_or_default()
    }

    /// The announcements `[bgp]` asks for now.
    fn bgp_request(&self) -> Option<crate::bgp::runtime::Request> {
        let bgp = self.config.bgp.as_ref()?;
        let healthy = self.model.healthy_by_service().into_iter().collect();
        Some(crate::bgp::runtime::Request {
            wanted: crate::bgp::announce::wanted(
                bgp,
                &self.config.services,
                &healthy,
                self.attached(),
            ),
            bird_socket: bgp.bird_socket.clone(),
        })
    }

    /// The addresses of every configured backend.
    pub fn backend_addresses(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.model.addresses()
    }

    /// Hands over the keeper of the backends' next hops, told of every reload from now on.
    pub fn keep_next_hops(&mut self, keeper: Keeper) {
        self.next_hops = Some(keeper);
    }

    /// The keeper, to stop it at shutdown.
    pub fn take_next_hop_keeper(&mut self) -> Option<Keeper> {
        self.next_hops.take()
    }

    /// Whether the program is attached and the kernel still shows it on the interface.
    fn attached(&self) -> bool {
        self.dp.attachment().is_some() && self.xdp_present
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// Attaches the data plane and tells the trackers (VRRP) at once.
    pub fn attach(
        &mut self,
        iface: &str,
        policy: crate::dataplane::AttachPolicy,
    ) -> Result<crate::dataplane::AttachMode> {
        let mode = self.dp.attach(iface, policy)?;
        self.health.send_modify(|h| h.dataplane_attached = true);
        Ok(mode)
    }

    /// Runs until a shutdown event; returns its reason.
    pub async fn run(&mut self, mut rx: mpsc::Receiver<Event>) -> &'static str {
        loop {
            let now = Instant::now();
            let tick = self.started + Duration::from_secs(u64::from(self.clock));
            let wake = self
                .model
                .next_deadline(now)
                .map_or(tick, |deadline| deadline.min(tick));
            tokio::select! {
                event = rx.recv() => {
                    let Some(event) = event else { return "all event senders gone" };
                    if let Some(reason) = self.handle(event).await {
                        return reason;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            self.tick_clock(now);
            self.start_due_checks(now);
            // Slowstart steps and check results change weights: publish what changed.
            if let Err(e) = self.publish(now) {
                error!("publishing to the data plane: {e:#}");
            }
        }
    }

    fn start_due_checks(&mut self, now: Instant) {
        for (service, backend) in self.model.due(now) {
            let Some(check) = self.probes.get(&service).cloned() else {
                continue;
            };
            let events = self.events.clone();
            tokio::spawn(async move {
                let (outcome, took) = check
                    .probe
                    .run(check.target(backend.address), check.limit)
                    .await;
                let _ = events
                    .send(Event::CheckDone {
                        service,
                        backend,
                        outcome,
                        took,
                    })
                    .await;
            });
        }
    }

    async fn handle(&mut self, event: Event) -> Option<&'static str> {
        let now = Instant::now();
        match event {
            Event::CheckDone {
                service,
                backend,
                outcome,
                took,
            } => {
                if let Some(t) = self
                    .model
                    .record(&service, backend.address, outcome, took, now)
                {
                    let line = format!(
                        "{service}/{} ({}) {}",
                        backend.name, backend.address, t.reason
                    );
                    if t.up {
                        info!(service = %service, backend = %backend.name, "{line}");
                    } else {
                        warn!(service = %service, backend = %backend.name, "{line}");
                    }
                }
            }
            Event::Control { request, reply } => {
                let response = self.control(request, now);
                let _ = reply.send(response);
            }
            Event::Reload => {
                let _ = self.reload(now);
            }
            Event::Metrics { reply } => {
                let _ = reply.send(Box::new(self.status(now)));
            }
            Event::Vrrp(v) => {
                let master = v.state == "MASTER";
                self.serving
                    .send_if_modified(|s| std::mem::replace(s, master) != master);
                self.vrrp = Some(*v);
            }
            Event::Bgp(r) => self.bgp_report = Some(*r),
            Event::FlowSync(s) => {
                let synced = s.synced;
                self.flow_sync = Some(*s);
                self.health.send_if_modified(|h| {
                    let changed = h.flows_synced != synced;
                    h.flows_synced = synced;
                    changed
                });
            }
            Event::FibChanged => {
                self.fib_generation = self.fib_generation.wrapping_add(1).max(1);
                if let Err(e) = self.write_globals() {
                    error!("updating the FIB generation: {e:#}");
                }
            }
            Event::Link { up } => {
                let changed = self.health.send_if_modified(|h| {
                    let changed = h.link_up != up;
                    h.link_up = up;
                    changed
                });
                if changed && up {
                    info!(interface = %self.interface, "link of {} is up", self.interface);
                } else if changed {
                    warn!(interface = %self.interface, "link of {} is down (no carrier, or set down)", self.interface);
                }
            }
            Event::NextHops(resolved) => {
                for (name, address, now) in self.model.set_resolved(resolved) {
                    let what = if now {
                        "next hop resolved: takes new flows"
                    } else {
                        "next hop not resolved (ARP): no new flows until it is"
                    };
                    info!("{name} ({address}) {what}");
                }
            }
            Event::XdpPresent(present) if present != self.xdp_present => {
                self.xdp_present = present;
                if present {
                    info!(interface = %self.interface, "the XDP program is on {} again", self.interface);
                } else {
                    error!(interface = %self.interface, "the XDP program is no longer attached to {} (detached by someone else?): tracking fails (VRRP, BGP); restart k3s-xdp to attach it again", self.interface);
                }
            }
            Event::XdpPresent(_) => {}
            Event::Shutdown(reason) => return Some(reason),
        }
        None
    }

    fn control(&mut self, request: Request, now: Instant) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status(now))),
            Request::Backend { action, target } => match self.model.set_admin(&target, action) {
                Ok(was) => {
                    let verb = match action {
                        Admin::Enable => "enabled: takes new flows when healthy",
                        Admin::Drain => "draining: no new flows, existing flows continue",
                        Admin::Disable => "disabled: out of rotation, as if down",
                    };
                    info!("{target} {verb} (was {was:?}, by `k3s-xdp backend`)");
                    match self.publish(now) {
                        Ok(()) => Response::Ok {
                            message: format!("{target} {verb}"),
                        },
                        Err(e) => Response::Error {
                            message: format!("{e:#}"),
                        },
                    }
                }
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            },
            Request::Reload => match self.reload(now) {
                Ok(summary) => Response::Ok { message: summary },
                Err(e) => Response::Error {
                    message: format!("{e:#}"),
                },
            },
        }
    }

    /// Writes the settings of the data plane (each clock tick, so a failed write is repaired
    /// within a second): its globals and the SYN flood guard's.
    fn write_globals(&mut self) -> Result<()> {
        dataplane::write_globals(
            &mut self.dp,
            &globals(&self.config, self.fib_generation, self.mac, self.clock),
        )?;
        self.dp
            .write_syn_guard(&self.config.syn_flood.per_cpu(program_cpus()))
    }

    /// Advances the data plane's clock when a second has passed (flows record when they were
    /// last seen by it; see `k3s_xdp_common::table`).
    fn tick_clock(&mut self, now: Instant) {
        let clock = clock_at(self.started, now);
        if clock != self.clock {
            self.clock = clock;
            if let Err(e) = self.write_globals() {
                error!("advancing the data plane's clock: {e:#}");
            }
        }
    }

    /// Makes the data plane match the model; logs services that lost or regained backends.
    fn publish(&mut self, now: Instant) -> Result<()> {
        let specs = self.model.specs(now);
        let applied = self.publisher.apply(&mut self.dp, &specs)?;
        for (service, backends, took) in &applied.tables {
            info!("service {service}: Maglev table published ({backends} backends, {took:.1?})");
            if let Some(i) = self.empty.iter().position(|s| s == service) {
                self.empty.remove(i);
                info!("service {service} has healthy backends again: new connections are accepted");
            }
        }
        for service in &applied.emptied {
            if !self.empty.contains(service) {
                let udp = self
                    .config
                    .services
                    .iter()
                    .any(|s| &s.name == service && s.protocol == config::Protocol::Udp);
                let refused = if udp {
                    "new flows are dropped"
                } else {
                    "new connections are refused (TCP RST)"
                };
                error!("service {service} has no healthy backend: {refused} until one recovers");
                self.empty.push(service.clone());
            }
        }
        let health = Health {
            healthy_backends: self.model.healthy_backends(),
            dataplane_attached: self.attached(),
            link_up: self.health.borrow().link_up,
            flows_synced: self.health.borrow().flows_synced,
        };
        self.health.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
        if let Some(tx) = &self.directory {
            let directory = Directory::new(
                &specs,
                |n| self.publisher.service_slot(n),
                |n, a| self.publisher.backend_slot(n, a),
            );
            tx.send_if_modified(|d| {
                let changed = **d != directory;
                if changed {
                    *d = Arc::new(directory);
                }
                changed
            });
        }
        if let (Some(tx), Some(request)) = (&self.bgp_wanted, self.bgp_request()) {
            tx.send_if_modified(|r| {
                let changed = *r != request;
                *r = request;
                changed
            });
        }
        Ok(())
    }
}

/// Sends `request` to the controller and waits for the answer.
pub async fn ask(events: &mpsc::Sender<Event>, request: Request) -> Result<Response> {
    let (reply, answer) = oneshot::channel();
    events
        .send(Event::Control { request, reply })
        .await
        .map_err(|_| anyhow!("the controller has stopped"))?;
    answer.await.context("the controller dropped the request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_plane_clock_counts_whole_seconds_from_one() {
        let started = Instant::now();
        let at = |ms| clock_at(started, started + Duration::from_millis(ms));
        assert_eq!(at(0), 1, "0 would mean no clock to the program");
        assert_eq!(at(999), 1);
        assert_eq!(at(1000), 2);
        assert_eq!(at(301_500), 302);
        // Never before the start, never past the largest value.
        assert_eq!(clock_at(started + Duration::from_secs(5), started), 1);
        let far = started + Duration::from_secs(u64::from(u32::MAX) + 10);
        assert_eq!(clock_at(started, far), u32::MAX);
    }
}
