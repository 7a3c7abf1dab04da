//! VRRP at run time: one task that feeds the pure [`Machine`] with received adverts, timers and
//! tracking changes, and carries out its actions: adverts on the wire, VIPs added and removed
//! with netlink, gratuitous ARP on takeover (and periodically, with `garp_master_refresh`).
//!
//! At start, configured VIPs found on the interface are removed first: they are leftovers of a
//! process that died (a crash cannot send priority 0), and holding them as a backup would make
//! two nodes answer ARP for them. On shutdown a master sends priority 0 (the backup takes over
//! after Skew_Time) and removes the VIPs before the process exits.

use super::{
    machine::{Action, Event, Machine, Params, State},
    packet::{self, Advert, Expect, Reject, Version},
};
use crate::{
    config::{self, InitialState},
    controller::{self, status::VrrpStatus},
    guard::Guard,
    system::{
        raw::{ArpSender, VrrpReceiver, VrrpSender},
        InterfaceAddress, Netlink,
    },
};
use anyhow::{anyhow, Result};
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// A running VRRP instance.
pub struct Instance {
    stop: oneshot::Sender<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Instance {
    /// Starts with the settings in `settings`, and follows their changes (reloads retune the
    /// priority, timers, preemption and tracking; the router's identity stays).
    pub async fn start(
        mut settings: watch::Receiver<config::Vrrp>,
        iface: String,
        ifindex: u32,
        health: watch::Receiver<controller::Health>,
        events: mpsc::Sender<controller::Event>,
        guard: Guard,
    ) -> Result<Instance> {
        let config = settings.borrow_and_update().clone();
        let netlink = Netlink::connect()?;
        let present = netlink.addresses(ifindex).await?;
        let vips: Vec<InterfaceAddress> = config
            .virtual_ipaddress
            .iter()
            .map(|v| InterfaceAddress {
                addr: v.addr,
                prefix_len: v.prefix_len,
            })
            .collect();
        for stale in present
            .iter()
            .filter(|a| vips.iter().any(|v| v.addr == a.addr))
        {
            warn!(
                "removing VIP {} found on {iface} at start (left by a previous run)",
                stale.addr
            );
            netlink.del_address(ifindex, stale.addr).await?;
        }
        let primary = match config.unicast_src_ip {
            Some(a) => a,
            None => present
                .iter()
                .map(|a| a.addr)
                .find(|a| !vips.iter().any(|v| v.addr == *a))
                .ok_or_else(|| anyhow!("{iface} has no IPv4 address to send VRRP adverts from; add one or set unicast_src_ip"))?,
        };
        let mac = netlink.mac(ifindex).await?;
        let io = Io {
            receiver: VrrpReceiver::open(&iface, ifindex)?,
            sender: VrrpSender::open(&iface)?,
            arp: ArpSender::open(ifindex, mac)?,
            netlink,
            ifindex,
            iface,
            guard,
        };
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(settings, io, primary, health, events, stop_rx));
        Ok(Instance { stop, task })
    }

    /// Leaves: priority 0 if master, VIPs removed. Returns when done.
    pub async fn shutdown(self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        if self.stop.send(done).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow!("the VRRP task failed: {e}")),
        }
    }
}

struct Io {
    receiver: VrrpReceiver,
    sender: VrrpSender,
    arp: ArpSender,
    netlink: Netlink,
    ifindex: u32,
    iface: String,
    guard: Guard,
}

/// How long a VIP stays on the interface after the master's last refresh: a master that
/// crashes or hangs loses it by itself (the peer takes over after Master_Down_Interval).
const VIP_LEASE: Duration = Duration::from_secs(15);
/// How often a master refreshes its VIPs' lease.
const VIP_LEASE_REFRESH: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    sent: u64,
    received: u64,
    /// Adverts of other virtual routers on the link (another virtual_router_id), ignored.
    other_routers: u64,
    rejected: BTreeMap<String, u64>,
    transitions: u64,
    last_transition: Option<String>,
    /// Last time a rejection of each kind was logged (rate limit).
    logged: BTreeMap<&'static str, Instant>,
}

fn params(c: &config::Vrrp, primary: Ipv4Addr) -> Params {
    Params {
        priority: c.priority,
        advert_int: c.advert_int,
        preempt: c.preempt,
        preempt_delay: c.preempt_delay,
        start_as_master: c.state == InitialState::Master,
        primary,
        track_weight: c.track.weight,
        version: c.version,
    }
}

fn track_ok(c: &config::Vrrp, h: &controller::Health) -> bool {
    (!c.track.dataplane || h.dataplane_attached)
        && h.healthy_backends >= c.track.min_healthy_backends as usize
}

/// One VRRP instance on the wire: the machine, its I/O and what it holds.
struct Speaker {
    config: config::Vrrp,
    io: Io,
    version: Version,
    vips: Vec<Ipv4Addr>,
    primary: Ipv4Addr,
    machine: Machine,
    counters: Counters,
    events: mpsc::Sender<controller::Event>,
    track_ok: bool,
    /// Whether the VIPs are on the interface.
    holding: bool,
    /// When to send the next periodic gratuitous ARPs (`garp_master_refresh`).
    garp_at: Option<Instant>,
    /// Rounds of the takeover's gratuitous ARPs still to send, and when the next one is due
    /// (`garp_master_repeat` rounds, `garp_interval` apart, sent from the loop, not slept on).
    garp_burst: Option<(u32, Instant)>,
    /// When to refresh the VIPs' lease.
    lease_at: Option<Instant>,
}

async fn run(
    mut settings: watch::Receiver<config::Vrrp>,
    io: Io,
    primary: Ipv4Addr,
    mut health: watch::Receiver<controller::Health>,
    events: mpsc::Sender<controller::Event>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) -> Result<()> {
    let config = settings.borrow_and_update().clone();
    let version = match config.version {
        2 => Version::V2 {
            auth_pass: config.auth_pass.as_ref().map(|p| p.as_bytes().to_vec()),
        },
        _ => Version::V3,
    };
    let track = track_ok(&config, &health.borrow());
    let link_up = health.borrow().link_up;
    let mut speaker = Speaker {
        vips: config.virtual_ipaddress.iter().map(|v| v.addr).collect(),
        machine: Machine::new(params(&config, primary)),
        counters: Counters {
            rejected: Reject::LABELS.iter().map(|l| (l.to_string(), 0)).collect(),
            ..Default::default()
        },
        config,
        io,
        version,
        primary,
        events,
        track_ok: track,
        holding: false,
        garp_at: None,
        garp_burst: None,
        lease_at: None,
    };
    let now = Instant::now();
    if !track {
        speaker.machine.handle(Event::Track { ok: false }, now);
    }
    if !link_up {
        speaker.machine.handle(Event::Link { up: false }, now);
    }
    speaker.handle(Event::Startup).await;

    let mut buf = vec![0u8; 2048];
    let mut retunable = true;
    loop {
        let deadline = [
            speaker.machine.next_deadline(),
            speaker.garp_at,
            speaker.garp_burst.map(|(_, at)| at),
            speaker.lease_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            done = &mut stop => {
                speaker.track_ok = false;
                speaker.handle(Event::Shutdown).await;
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return Ok(());
            }
            r = speaker.io.receiver.recv(&mut buf) => match r {
                Ok(n) => {
                    if let Some(event) = speaker.receive(&buf[..n]) {
                        speaker.handle(event).await;
                    }
                }
                Err(e) => {
                    error!("receiving VRRP: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = settings.changed(), if retunable => match changed {
                Ok(()) => {
                    let next = settings.borrow_and_update().clone();
                    let ok = track_ok(&next, &health.borrow());
                    speaker.retune(next, ok).await;
                }
                // The controller is gone: nothing will change any more.
                Err(_) => retunable = false,
            },
            changed = health.changed() => {
                if changed.is_ok() {
                    // The machine ignores repeats of either.
                    let up = health.borrow().link_up;
                    speaker.handle(Event::Link { up }).await;
                    let ok = track_ok(&speaker.config, &health.borrow());
                    speaker.track_ok = ok;
                    speaker.handle(Event::Track { ok }).await;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                speaker.refresh().await;
                speaker.handle(Event::Timer).await;
            }
        }
    }
}

impl Speaker {
    /// New live settings from a reload (the identity fields are the running ones).
    async fn retune(&mut self, config: config::Vrrp, track_ok: bool) {
        self.machine.set_params(params(&config, self.primary));
        info!(
            "VRRP retuned: priority {}, advert_int {:?}, preempt {}",
            config.priority, config.advert_int, config.preempt
        );
        self.config = config;
        if track_ok != self.track_ok {
            self.track_ok = track_ok;
            self.handle(Event::Track { ok: track_ok }).await;
        }
        self.report();
    }

    /// A received packet as an event, or None (not ours to judge, or rejected and counted).
    fn receive(&mut self, packet: &[u8]) -> Option<Event> {
        match receive(
            packet,
            &self.config,
            &self.version,
            &self.vips,
            self.primary,
        ) {
            Ok(Some((from, advert))) => {
                self.counters.received += 1;
                Some(Event::Advert {
                    from,
                    priority: advert.priority,
                    interval: advert.interval,
                })
            }
            Ok(None) => None,
            Err(Reject::OtherVrid(_)) => {
                self.counters.other_routers += 1;
                None
            }
            Err(reject) => {
                let label = reject.label();
                *self.counters.rejected.entry(label.to_string()).or_default() += 1;
                let quiet = self
                    .counters
                    .logged
                    .get(label)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
                if !quiet {
                    warn!("VRRP packet rejected: {reject} (logged at most every 10 s per reason)");
                    self.counters.logged.insert(label, Instant::now());
                }
                self.report();
                None
            }
        }
    }

    /// Runs `event` through the machine and carries out its actions.
    async fn handle(&mut self, event: Event) {
        let out = self.machine.handle(event, Instant::now());
        if let Some(t) = &out.transition {
            self.counters.transitions += 1;
            let line = format!("VRRP {} -> {}: {}", t.from, t.to, t.reason);
            self.counters.last_transition = Some(line.clone());
            if t.to == State::Fault {
                warn!("{line}");
            } else {
                info!("{line}");
            }
            // Status shows the new state at once, before the actions take their time.
            self.report();
        }
        for action in out.actions {
            match action {
                Action::Advertise { priority } => self.advertise(priority),
                Action::TakeVips => self.take_vips().await,
                Action::ReleaseVips => self.release_vips().await,
            }
        }
        self.report();
    }

    fn advertise(&mut self, priority: u8) {
        let advert = Advert {
            vrid: self.config.virtual_router_id,
            priority,
            interval: self.config.advert_int,
            addresses: self.vips.clone(),
        };
        let targets: Vec<Ipv4Addr> = if self.config.unicast_peers.is_empty() {
            vec![packet::MULTICAST_GROUP]
        } else {
            self.config.unicast_peers.clone()
        };
        for dst in targets {
            let bytes = packet::encode(&advert, &self.version, self.primary, dst);
            match self.io.sender.send(self.primary, dst, &bytes) {
                Ok(()) => self.counters.sent += 1,
                Err(e) => warn!("{e:#}"),
            }
        }
    }

    async fn take_vips(&mut self) {
        for v in &self.config.virtual_ipaddress {
            self.io.guard.hold(v.addr);
        }
        self.lease_vips().await;
        for v in &self.config.virtual_ipaddress {
            info!("VIP {}/{} added to {}", v.addr, v.prefix_len, self.io.iface);
        }
        self.holding = true;
        self.announce();
        let rounds = self.config.garp_master_repeat.max(1) - 1;
        self.garp_burst =
            (rounds > 0).then(|| (rounds, Instant::now() + self.config.garp_interval));
        self.garp_at = (!self.config.garp_master_refresh.is_zero())
            .then(|| Instant::now() + self.config.garp_master_refresh);
    }

    /// Adds or refreshes every VIP with a lease of `VIP_LEASE`.
    async fn lease_vips(&mut self) {
        for v in &self.config.virtual_ipaddress {
            let address = InterfaceAddress {
                addr: v.addr,
                prefix_len: v.prefix_len,
            };
            if let Err(e) = self
                .io
                .netlink
                .lease_address(self.io.ifindex, address, VIP_LEASE)
                .await
            {
                error!("{e:#}");
            }
        }
        self.lease_at = Some(Instant::now() + VIP_LEASE_REFRESH);
    }

    async fn release_vips(&mut self) {
        for v in &self.vips {
            match self.io.netlink.del_address(self.io.ifindex, *v).await {
                Ok(()) => {
                    self.io.guard.release(*v);
                    info!("VIP {v} removed from {}", self.io.iface);
                }
                Err(e) => error!("{e:#}"),
            }
        }
        self.holding = false;
        self.garp_at = None;
        self.garp_burst = None;
        self.lease_at = None;
    }

    /// Periodic work of a master: the VIPs' lease, gratuitous ARP refresh.
    async fn refresh(&mut self) {
        let now = Instant::now();
        if self.holding && self.lease_at.is_some_and(|t| now >= t) {
            self.lease_vips().await;
        }
        if self.holding && self.garp_at.is_some_and(|t| now >= t) {
            self.announce();
            self.garp_at = Some(now + self.config.garp_master_refresh);
        }
        if let Some((left, at)) = self.garp_burst {
            if self.holding && now >= at {
                self.announce();
                self.garp_burst = (left > 1).then(|| (left - 1, now + self.config.garp_interval));
            }
        }
    }

    /// One gratuitous ARP per VIP.
    fn announce(&self) {
        for vip in &self.vips {
            if let Err(e) = self.io.arp.announce(*vip) {
                warn!("{e:#}");
            }
        }
    }

    fn report(&self) {
        let c = &self.config;
        let status = VrrpStatus {
            state: self.machine.state().to_string(),
            virtual_router_id: c.virtual_router_id,
            version: c.version,
            priority: c.priority,
            effective_priority: self.machine.priority(),
            master: self.machine.master().map(|m| m.to_string()),
            virtual_ipaddress: c
                .virtual_ipaddress
                .iter()
                .map(|v| format!("{}/{}", v.addr, v.prefix_len))
                .collect(),
            adverts_sent: self.counters.sent,
            adverts_received: self.counters.received,
            adverts_other_routers: self.counters.other_routers,
            adverts_rejected: self.counters.rejected.clone(),
            transitions: self.counters.transitions,
            last_transition: self.counters.last_transition.clone(),
            track_ok: self.track_ok,
        };
        let _ = self
            .events
            .try_send(controller::Event::Vrrp(Box::new(status)));
    }
}

/// Decodes a received packet; `Ok(None)` for packets that are not for us to judge (our own,
/// another virtual router).
fn receive(
    packet: &[u8],
    config: &config::Vrrp,
    version: &Version,
    vips: &[Ipv4Addr],
    primary: Ipv4Addr,
) -> Result<Option<(Ipv4Addr, Advert)>, Reject> {
    let expect = Expect {
        vrid: config.virtual_router_id,
        version,
        addresses: vips,
    };
    match packet::decode(packet, &expect) {
        Ok((from, _)) if from == primary => Ok(None),
        Ok((from, advert)) => {
            if !config.unicast_peers.is_empty() && !config.unicast_peers.contains(&from) {
                return Err(Reject::NotAPeer(from.into()));
            }
            Ok(Some((from, advert)))
        }
        Err(e) => Err(e),
    }
}
