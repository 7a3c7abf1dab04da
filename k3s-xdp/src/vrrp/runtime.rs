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
    pub async fn start(
        config: config::Vrrp,
        iface: String,
        ifindex: u32,
        health: watch::Receiver<controller::Health>,
        events: mpsc::Sender<controller::Event>,
    ) -> Result<Instance> {
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
        };
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(config, io, primary, health, events, stop_rx));
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
}

struct Counters {
    sent: u64,
    received: u64,
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

async fn run(
    config: config::Vrrp,
    io: Io,
    primary: Ipv4Addr,
    mut health: watch::Receiver<controller::Health>,
    events: mpsc::Sender<controller::Event>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) -> Result<()> {
    let version = match config.version {
        2 => Version::V2 {
            auth_pass: config.auth_pass.as_ref().map(|p| p.as_bytes().to_vec()),
        },
        _ => Version::V3,
    };
    let vips: Vec<Ipv4Addr> = config.virtual_ipaddress.iter().map(|v| v.addr).collect();
    let mut machine = Machine::new(params(&config, primary));
    let mut counters = Counters {
        sent: 0,
        received: 0,
        rejected: Reject::LABELS.iter().map(|l| (l.to_string(), 0)).collect(),
        transitions: 0,
        last_transition: None,
        logged: BTreeMap::new(),
    };
    let mut holding = false;
    let mut garp_refresh: Option<Instant> = None;
    let mut buf = vec![0u8; 2048];
    let now = Instant::now();
    let initial_track = track_ok(&config, &health.borrow());
    if !initial_track {
        machine.handle(Event::Track { ok: false }, now);
    }
    let out = machine.handle(Event::Startup, now);
    apply(
        &config,
        &io,
        &version,
        &vips,
        primary,
        out,
        &mut counters,
        &mut holding,
        &mut garp_refresh,
    )
    .await;
    report(
        &config,
        &machine,
        &counters,
        &events,
        track_ok(&config, &health.borrow()),
    );

    loop {
        let now = Instant::now();
        let deadline = [machine.next_deadline(), garp_refresh]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        let event = tokio::select! {
            done = &mut stop => {
                let out = machine.handle(Event::Shutdown, Instant::now());
                apply(&config, &io, &version, &vips, primary, out, &mut counters, &mut holding, &mut garp_refresh).await;
                report(&config, &machine, &counters, &events, false);
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return Ok(());
            }
            r = io.receiver.recv(&mut buf) => match r {
                Ok(n) => match receive(&buf[..n], &config, &version, &vips, primary) {
                    Ok(Some((from, advert))) => {
                        counters.received += 1;
                        Some(Event::Advert { from, priority: advert.priority, interval: advert.interval })
                    }
                    Ok(None) => None,
                    Err(reject) => {
                        *counters.rejected.entry(reject.label().to_string()).or_default() += 1;
                        let label = reject.label();
                        let quiet = counters.logged.get(label).is_some_and(|t| t.elapsed() < Duration::from_secs(10));
                        if !quiet {
                            warn!("VRRP packet rejected: {reject} (logged at most every 10 s per reason)");
                            counters.logged.insert(label, Instant::now());
                        }
                        None
                    }
                },
                Err(e) => {
                    error!("receiving VRRP: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            },
            changed = health.changed() => {
                if changed.is_err() {
                    None
                } else {
                    let ok = track_ok(&config, &health.borrow());
                    Some(Event::Track { ok })
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if garp_refresh.is_some_and(|t| Instant::now() >= t) {
                    garp_refresh = None;
                    if holding {
                        announce(&config, &io, &vips).await;
                        garp_refresh = refresh_at(&config);
                    }
                }
                Some(Event::Timer)
            }
        };
        if let Some(event) = event {
            let now = Instant::now();
            let out = machine.handle(event, now);
            let changed = out.transition.is_some();
            apply(
                &config,
                &io,
                &version,
                &vips,
                primary,
                out,
                &mut counters,
                &mut holding,
                &mut garp_refresh,
            )
            .await;
            if changed || counters.received % 16 == 1 {
                report(
                    &config,
                    &machine,
                    &counters,
                    &events,
                    track_ok(&config, &health.borrow()),
                );
            }
        }
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
                return Err(Reject::NotAPeer(from));
            }
            Ok(Some((from, advert)))
        }
        Err(Reject::OtherVrid(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    config: &config::Vrrp,
    io: &Io,
    version: &Version,
    vips: &[Ipv4Addr],
    primary: Ipv4Addr,
    out: super::machine::Output,
    counters: &mut Counters,
    holding: &mut bool,
    garp_refresh: &mut Option<Instant>,
) {
    if let Some(t) = &out.transition {
        counters.transitions += 1;
        let line = format!("VRRP {} -> {}: {}", t.from, t.to, t.reason);
        counters.last_transition = Some(line.clone());
        if t.to == State::Fault {
            warn!("{line}");
        } else {
            info!("{line}");
        }
    }
    for action in out.actions {
        match action {
            Action::Advertise { priority } => {
                let advert = Advert {
                    vrid: config.virtual_router_id,
                    priority,
                    interval: config.advert_int,
                    addresses: vips.to_vec(),
                };
                let targets: Vec<Ipv4Addr> = if config.unicast_peers.is_empty() {
                    vec![packet::MULTICAST_GROUP]
                } else {
                    config.unicast_peers.clone()
                };
                for dst in targets {
                    let bytes = packet::encode(&advert, version, primary, dst);
                    match io.sender.send(primary, dst, &bytes) {
                        Ok(()) => counters.sent += 1,
                        Err(e) => warn!("{e:#}"),
                    }
                }
            }
            Action::TakeVips => {
                for v in &config.virtual_ipaddress {
                    let address = InterfaceAddress {
                        addr: v.addr,
                        prefix_len: v.prefix_len,
                    };
                    match io.netlink.add_address(io.ifindex, address).await {
                        Ok(()) => info!("VIP {}/{} added to {}", v.addr, v.prefix_len, io.iface),
                        Err(e) if format!("{e:#}").contains("File exists") => {}
                        Err(e) => error!("{e:#}"),
                    }
                }
                *holding = true;
                announce(config, io, vips).await;
                *garp_refresh = refresh_at(config);
            }
            Action::ReleaseVips => {
                for v in vips {
                    match io.netlink.del_address(io.ifindex, *v).await {
                        Ok(()) => info!("VIP {v} removed from {}", io.iface),
                        Err(e) => error!("{e:#}"),
                    }
                }
                *holding = false;
                *garp_refresh = None;
            }
        }
    }
}

/// `garp_master_repeat` gratuitous ARPs per VIP, `garp_interval` apart.
async fn announce(config: &config::Vrrp, io: &Io, vips: &[Ipv4Addr]) {
    for round in 0..config.garp_master_repeat.max(1) {
        if round > 0 && !config.garp_interval.is_zero() {
            tokio::time::sleep(config.garp_interval).await;
        }
        for vip in vips {
            if let Err(e) = io.arp.announce(*vip) {
                warn!("{e:#}");
            }
        }
    }
}

fn refresh_at(config: &config::Vrrp) -> Option<Instant> {
    (!config.garp_master_refresh.is_zero()).then(|| Instant::now() + config.garp_master_refresh)
}

fn report(
    config: &config::Vrrp,
    machine: &Machine,
    counters: &Counters,
    events: &mpsc::Sender<controller::Event>,
    track_ok: bool,
) {
    let status = VrrpStatus {
        state: machine.state().to_string(),
        virtual_router_id: config.virtual_router_id,
        version: config.version,
        priority: config.priority,
        effective_priority: machine.priority(),
        master: machine.master().map(|m| m.to_string()),
        virtual_ipaddress: config
            .virtual_ipaddress
            .iter()
            .map(|v| format!("{}/{}", v.addr, v.prefix_len))
            .collect(),
        adverts_sent: counters.sent,
        adverts_received: counters.received,
        adverts_rejected: counters.rejected.clone(),
        transitions: counters.transitions,
        last_transition: counters.last_transition.clone(),
        track_ok,
    };
    let _ = events.try_send(controller::Event::Vrrp(Box::new(status)));
}
