//! VRRP at run time: one task per address family that feeds its pure [`Machine`] with received
//! adverts, timers and tracking changes, and carries out its actions: adverts on the wire, VIPs
//! added and removed with netlink, announcements on takeover (and periodically, with
//! `garp_master_refresh`): gratuitous ARP for IPv4, unsolicited neighbour advertisements for
//! IPv6.
//!
//! With IPv4 and IPv6 addresses in `virtual_ipaddress`, the node runs two virtual routers with
//! the same id, priority, timers, preemption and tracking, as keepalived does with two
//! `vrrp_instance`s (RFC 9568: the IPv6 one speaks VRRPv3 from the interface's link-local
//! address to ff02::12, or to the IPv6 `unicast_peers`). Both follow the same tracking and link
//! state, so they fail over together when either fails; each elects its master on its own
//! adverts. A node with addresses of one family runs that family's router only.
//!
//! At start, configured VIPs found on the interface are removed first: they are leftovers of a
//! process that died (a crash cannot send priority 0), and holding them as a backup would make
//! two nodes answer ARP (or neighbour solicitations) for them. On shutdown a master sends
//! priority 0 (the backup takes over after Skew_Time) and removes the VIPs before the process
//! exits.

use super::{
    machine::{Action, Event, Machine, Output, Params, State},
    packet::{self, Advert, Expect, Family, Received, Reject, Version},
};
use crate::{
    config::{self, InitialState},
    controller::{self, status::VrrpStatus},
    guard::Guard,
    system::{
        raw::{Ipv4Sockets, Ipv6Sockets, RouterSockets},
        InterfaceAddress, Netlink,
    },
};
use anyhow::{anyhow, Result};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// The running VRRP virtual routers of this node (one per address family in
/// `virtual_ipaddress`).
pub struct Instance {
    routers: Vec<Router>,
}

/// One virtual router's task and the way to stop it.
struct Router {
    stop: oneshot::Sender<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// What every virtual router of the node shares.
struct Shared {
    settings: watch::Receiver<config::Vrrp>,
    iface: String,
    ifindex: u32,
    health: watch::Receiver<controller::Health>,
    guard: Guard,
    reporter: Reporter,
}

impl Instance {
    /// Starts with the settings in `settings`, and follows their changes (reloads retune the
    /// priority, timers, preemption and tracking; the routers' identity stays).
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
        let vips: Vec<IpAddr> = config.virtual_ipaddress.iter().map(|v| v.addr).collect();
        for stale in present.iter().filter(|a| vips.contains(&a.addr)) {
            warn!(
                "removing VIP {} found on {iface} at start (left by a previous run)",
                stale.addr
            );
            netlink.del_address(ifindex, stale.addr).await?;
        }
        let mac = netlink.mac(ifindex).await?;
        let configured_src: Option<IpAddr> = config.unicast_src_ip;
        let v4 = !family_vips::<Ipv4Addr>(&config).is_empty();
        let v6 = !family_vips::<Ipv6Addr>(&config).is_empty();
        let shared = Shared {
            reporter: Reporter::new(events),
            settings,
            iface,
            ifindex,
            health,
            guard,
        };
        let iface = &shared.iface;
        let mut routers = Vec::new();
        if v4 {
            let src = ipv4_source(&present, &vips, configured_src).ok_or_else(|| {
                anyhow!("{iface} has no IPv4 address to send VRRP adverts from; add one or set unicast_src_ip")
            })?;
            let sockets = Ipv4Sockets::open(iface, ifindex, src, mac)?;
            routers.push(Router::spawn(sockets, src, &shared)?);
        }
        if v6 {
            let src = ipv6_source(&present, configured_src).ok_or_else(|| {
                anyhow!(
                    "{iface} has no IPv6 link-local address (fe80::/10) to send IPv6 VRRP adverts \
                     from: is IPv6 enabled on it (net.ipv6.conf.{iface}.disable_ipv6)?"
                )
            })?;
            if config.version == 2 {
                warn!("VRRPv2 has no IPv6: the IPv6 virtual router speaks VRRPv3 (as keepalived does), without auth_pass");
            }
            if family_peers::<Ipv6Addr>(&config).is_empty() && !config.unicast_peers.is_empty() {
                warn!("unicast_peers lists no IPv6 address: the IPv6 virtual router sends to ff02::12");
            }
            let sockets = Ipv6Sockets::open(iface, ifindex, src, mac)?;
            routers.push(Router::spawn(sockets, src, &shared)?);
        }
        Ok(Instance { routers })
    }

    /// Leaves: priority 0 from each master, VIPs removed. Returns when done.
    pub async fn shutdown(self) -> Result<()> {
        // Every router is told first, so that they leave at the same time.
        let mut waits = Vec::new();
        let mut tasks = Vec::new();
        for router in self.routers {
            let (done, wait) = oneshot::channel();
            if router.stop.send(done).is_ok() {
                waits.push(wait);
            }
            tasks.push(router.task);
        }
        for wait in waits {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
        let mut result = Ok(());
        for task in tasks {
            let r = task
                .await
                .unwrap_or_else(|e| Err(anyhow!("the VRRP task failed: {e}")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Router {
    fn spawn<S: RouterSockets>(sockets: S, primary: S::Addr, shared: &Shared) -> Result<Router> {
        let io = Io {
            sockets,
            netlink: Netlink::connect()?,
            ifindex: shared.ifindex,
            iface: shared.iface.clone(),
            guard: shared.guard.clone(),
        };
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(
            shared.settings.clone(),
            io,
            primary,
            shared.health.clone(),
            shared.reporter.clone(),
            stop_rx,
        ));
        Ok(Router { stop, task })
    }
}

/// The address IPv4 adverts are sent from: `unicast_src_ip` if it is an IPv4 one, else the
/// interface's first IPv4 address that is no VIP.
fn ipv4_source(
    present: &[InterfaceAddress],
    vips: &[IpAddr],
    configured: Option<IpAddr>,
) -> Option<Ipv4Addr> {
    configured.and_then(Ipv4Addr::of).or_else(|| {
        present
            .iter()
            .filter(|a| !vips.contains(&a.addr))
            .find_map(InterfaceAddress::of_family)
    })
}

/// The address IPv6 adverts are sent from: `unicast_src_ip` if it is an IPv6 one, else the
/// interface's link-local address (RFC 9568 5.1.2.1).
fn ipv6_source(present: &[InterfaceAddress], configured: Option<IpAddr>) -> Option<Ipv6Addr> {
    configured.and_then(Ipv6Addr::of).or_else(|| {
        present
            .iter()
            .filter_map(InterfaceAddress::of_family)
            .find(Ipv6Addr::is_unicast_link_local)
    })
}

/// The virtual addresses of family `A`, with their prefix lengths.
fn family_vips<A: Family>(c: &config::Vrrp) -> Vec<(A, u8)> {
    c.virtual_ipaddress
        .iter()
        .filter_map(|v| Some((A::of(v.addr)?, v.prefix_len)))
        .collect()
}

/// The unicast peers of family `A` (none: multicast).
fn family_peers<A: Family>(c: &config::Vrrp) -> Vec<A> {
    c.unicast_peers.iter().filter_map(|p| A::of(*p)).collect()
}

/// How family `A`'s router writes and checks adverts: VRRPv3 over IPv6 whatever `version`
/// says (VRRPv2 is IPv4 only), the configured version over IPv4.
fn wire_version<A: Family>(c: &config::Vrrp) -> Version {
    if c.version == 2 && !A::V3_ONLY {
        Version::V2 {
            auth_pass: c.auth_pass.as_ref().map(|p| p.as_bytes().to_vec()),
        }
    } else {
        Version::V3
    }
}

struct Io<S> {
    sockets: S,
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

fn params<A: Family>(c: &config::Vrrp, primary: A) -> Params {
    Params {
        priority: c.priority,
        advert_int: c.advert_int,
        preempt: c.preempt,
        preempt_delay: c.preempt_delay,
        start_as_master: c.state == InitialState::Master,
        primary: primary.into(),
        track_weight: c.track.weight,
        version: match wire_version::<A>(c) {
            Version::V3 => 3,
            Version::V2 { .. } => 2,
        },
    }
}

fn track_ok(c: &config::Vrrp, h: &controller::Health) -> bool {
    (!c.track.dataplane || h.dataplane_attached)
        && h.healthy_backends >= c.track.min_healthy_backends as usize
}

/// The name of family `A`'s router in logs: "VRRP" for IPv4 (as before dual stack), "VRRP
/// IPv6" for IPv6.
fn tag<A: Family>() -> &'static str {
    if A::V3_ONLY {
        "VRRP IPv6"
    } else {
        "VRRP"
    }
}

/// One virtual router on the wire: the machine, its I/O and what it holds.
struct Speaker<S: RouterSockets> {
    config: config::Vrrp,
    io: Io<S>,
    version: Version,
    /// This family's virtual addresses and prefix lengths.
    vips: Vec<(S::Addr, u8)>,
    /// This family's unicast peers (empty: multicast).
    peers: Vec<S::Addr>,
    primary: S::Addr,
    machine: Machine,
    counters: Counters,
    reporter: Reporter,
    track_ok: bool,
    /// Whether the VIPs are on the interface.
    holding: bool,
    /// When to send the next periodic announcements (`garp_master_refresh`).
    garp_at: Option<Instant>,
    /// Rounds of the takeover's announcements still to send, and when the next one is due
    /// (`garp_master_repeat` rounds, `garp_interval` apart, sent from the loop, not slept on).
    garp_burst: Option<(u32, Instant)>,
    /// When to refresh the VIPs' lease.
    lease_at: Option<Instant>,
}

async fn run<S: RouterSockets>(
    mut settings: watch::Receiver<config::Vrrp>,
    io: Io<S>,
    primary: S::Addr,
    mut health: watch::Receiver<controller::Health>,
    reporter: Reporter,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) -> Result<()> {
    let config = settings.borrow_and_update().clone();
    let track = track_ok(&config, &health.borrow());
    let link_up = health.borrow().link_up;
    let mut speaker = Speaker {
        version: wire_version::<S::Addr>(&config),
        vips: family_vips(&config),
        peers: family_peers(&config),
        machine: Machine::new(params(&config, primary)),
        counters: Counters {
            rejected: Reject::LABELS.iter().map(|l| (l.to_string(), 0)).collect(),
            ..Default::default()
        },
        config,
        io,
        primary,
        reporter,
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
    let synced = health.borrow().flows_synced;
    speaker.machine.handle(Event::Synced { ok: synced }, now);
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
            r = speaker.io.sockets.recv(&mut buf) => match r {
                Ok(received) => {
                    if let Some(event) = speaker.receive(received) {
                        speaker.handle(event).await;
                    }
                }
                Err(e) => {
                    error!("receiving {}: {e}", tag::<S::Addr>());
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
                    let (up, synced) = {
                        let h = health.borrow();
                        (h.link_up, h.flows_synced)
                    };
                    speaker.handle(Event::Synced { ok: synced }).await;
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

impl<S: RouterSockets> Speaker<S> {
    /// New live settings from a reload (the identity fields are the running ones).
    async fn retune(&mut self, config: config::Vrrp, track_ok: bool) {
        let out = self
            .machine
            .set_params(params(&config, self.primary), Instant::now());
        info!(
            "{} retuned: priority {}, advert_int {:?}, preempt {}",
            tag::<S::Addr>(),
            config.priority,
            config.advert_int,
            config.preempt
        );
        self.config = config;
        self.apply(out).await;
        if track_ok != self.track_ok {
            self.track_ok = track_ok;
            self.handle(Event::Track { ok: track_ok }).await;
        }
        self.report();
    }

    /// A received packet as an event, or None (not ours to judge, or rejected and counted).
    fn receive(&mut self, received: Result<Received<'_, S::Addr>, Reject>) -> Option<Event> {
        let expect = Expect {
            vrid: self.config.virtual_router_id,
            version: &self.version,
            addresses: &self.vips.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        };
        match received.and_then(|r| judge(&r, &expect, &self.peers, self.primary)) {
            Ok(Some((from, advert))) => {
                self.counters.received += 1;
                Some(Event::Advert {
                    from: from.into(),
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
                    warn!(
                        "{} packet rejected: {reject} (logged at most every 10 s per reason)",
                        tag::<S::Addr>()
                    );
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
        self.apply(out).await;
    }

    /// Carries out what the state machine said: its transition logged and reported, then its
    /// actions.
    async fn apply(&mut self, out: Output) {
        if let Some(t) = &out.transition {
            self.counters.transitions += 1;
            let line = format!("{} {} -> {}: {}", tag::<S::Addr>(), t.from, t.to, t.reason);
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
            addresses: self.vips.iter().map(|(a, _)| *a).collect(),
        };
        let targets = if self.peers.is_empty() {
            vec![S::Addr::MULTICAST_GROUP]
        } else {
            self.peers.clone()
        };
        for dst in targets {
            let bytes = packet::encode(&advert, &self.version, self.primary, dst);
            match self.io.sockets.send(dst, &bytes) {
                Ok(()) => self.counters.sent += 1,
                Err(e) => warn!("{e:#}"),
            }
        }
    }

    async fn take_vips(&mut self) {
        for (vip, _) in &self.vips {
            self.io.guard.hold(*vip);
        }
        self.lease_vips().await;
        for (vip, prefix_len) in &self.vips {
            info!("VIP {vip}/{prefix_len} added to {}", self.io.iface);
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
        for (vip, prefix_len) in &self.vips {
            let address = InterfaceAddress {
                addr: (*vip).into(),
                prefix_len: *prefix_len,
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
        for (vip, _) in &self.vips {
            match self
                .io
                .netlink
                .del_address(self.io.ifindex, (*vip).into())
                .await
            {
                Ok(()) => {
                    self.io.guard.release(*vip);
                    info!("VIP {vip} removed from {}", self.io.iface);
                }
                Err(e) => error!("{e:#}"),
            }
        }
        self.holding = false;
        self.garp_at = None;
        self.garp_burst = None;
        self.lease_at = None;
    }

    /// Periodic work of a master: the VIPs' lease, the announcements' refresh.
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

    /// One announcement per VIP: a gratuitous ARP, or an unsolicited neighbour advertisement.
    fn announce(&self) {
        for (vip, _) in &self.vips {
            if let Err(e) = self.io.sockets.announce(*vip) {
                warn!("{e:#}");
            }
        }
    }

    fn report(&self) {
        let c = &self.config;
        let status = VrrpStatus {
            state: self.machine.state().to_string(),
            family: S::Addr::LABEL.to_string(),
            virtual_router_id: c.virtual_router_id,
            version: self.machine.params().version,
            priority: c.priority,
            effective_priority: self.machine.priority(),
            master: self.machine.master().map(|m| m.to_string()),
            virtual_ipaddress: self
                .vips
                .iter()
                .map(|(a, prefix_len)| format!("{a}/{prefix_len}"))
                .collect(),
            adverts_sent: self.counters.sent,
            adverts_received: self.counters.received,
            adverts_other_routers: self.counters.other_routers,
            adverts_rejected: self.counters.rejected.clone(),
            transitions: self.counters.transitions,
            last_transition: self.counters.last_transition.clone(),
            track_ok: self.track_ok,
            ipv6: None,
        };
        self.reporter.report(status);
    }
}

/// Checks a received packet; `Ok(None)` for packets that are not for us to judge (our own).
/// Public for the `vrrp_receive` fuzz target, which drives the receive path into the machine.
pub fn judge<A: Family>(
    received: &Received<'_, A>,
    expect: &Expect<'_, A>,
    peers: &[A],
    primary: A,
) -> Result<Option<(A, Advert<A>)>, Reject> {
    let advert = packet::decode_message(received, expect)?;
    let from = received.src;
    if from == primary {
        return Ok(None);
    }
    if !peers.is_empty() && !peers.contains(&from) {
        return Err(Reject::NotAPeer(from.into()));
    }
    Ok(Some((from, advert)))
}

/// Sends the node's VRRP status to the controller: the routers' reports, combined.
#[derive(Clone)]
struct Reporter {
    /// The last report of the IPv4 and of the IPv6 router.
    last: Arc<Mutex<(Option<VrrpStatus>, Option<VrrpStatus>)>>,
    events: mpsc::Sender<controller::Event>,
}

impl Reporter {
    fn new(events: mpsc::Sender<controller::Event>) -> Self {
        Reporter {
            last: Arc::default(),
            events,
        }
    }

    fn report(&self, status: VrrpStatus) {
        let combined = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if status.family == <Ipv6Addr as Family>::LABEL {
                last.1 = Some(status);
            } else {
                last.0 = Some(status);
            }
            combine(last.0.clone(), last.1.clone())
        };
        if let Some(status) = combined {
            let _ = self
                .events
                .try_send(controller::Event::Vrrp(Box::new(status)));
        }
    }
}

/// The node's status from its routers' ones: the IPv4 router's with the IPv6 one inside, or
/// the only one.
fn combine(ipv4: Option<VrrpStatus>, ipv6: Option<VrrpStatus>) -> Option<VrrpStatus> {
    match (ipv4, ipv6) {
        (Some(v4), v6) => Some(VrrpStatus {
            ipv6: v6.map(Box::new),
            ..v4
        }),
        (None, v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(list: &[(&str, u8)]) -> Vec<InterfaceAddress> {
        list.iter()
            .map(|(a, prefix_len)| InterfaceAddress {
                addr: a.parse().unwrap(),
                prefix_len: *prefix_len,
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_ipv4_source_is_configured_or_the_first_own_address() {
        let p = present(&[
            ("fe80::98", 64),
            ("192.0.2.100", 24),
            ("2001:db8::98", 64),
            ("192.0.2.98", 24),
        ]);
        let vips = [ip("192.0.2.100"), ip("2001:db8::100")];
        assert_eq!(
            ipv4_source(&p, &vips, None),
            Some(Ipv4Addr::new(192, 0, 2, 98)),
            "not a VIP, not IPv6"
        );
        assert_eq!(
            ipv4_source(&p, &vips, Some(ip("192.0.2.7"))),
            Some(Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_eq!(
            ipv4_source(&p, &vips, Some(ip("2001:db8::7"))),
            Some(Ipv4Addr::new(192, 0, 2, 98)),
            "an IPv6 unicast_src_ip is the IPv6 router's"
        );
        assert_eq!(ipv4_source(&p[..1], &vips, None), None);
    }

    #[test]
    fn the_ipv6_source_is_configured_or_the_link_local_address() {
        let p = present(&[("192.0.2.98", 24), ("2001:db8::98", 64), ("fe80::98", 64)]);
        assert_eq!(ipv6_source(&p, None), Some("fe80::98".parse().unwrap()));
        assert_eq!(
            ipv6_source(&p, Some(ip("2001:db8::7"))),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(
            ipv6_source(&p, Some(ip("192.0.2.7"))),
            Some("fe80::98".parse().unwrap())
        );
        assert_eq!(ipv6_source(&p[..2], None), None, "no link-local address");
    }

    fn dual_stack() -> config::Vrrp {
        config::Vrrp::new(
            51,
            vec![config::VirtualAddress {
                addr: "192.0.2.100".parse().unwrap(),
                prefix_len: 24,
            }],
        )
    }

    #[test]
    fn each_router_takes_the_addresses_of_its_family() {
        let c = dual_stack();
        assert_eq!(
            family_vips::<Ipv4Addr>(&c),
            vec![(Ipv4Addr::new(192, 0, 2, 100), 24)]
        );
        assert!(family_vips::<Ipv6Addr>(&c).is_empty());
        assert!(family_peers::<Ipv4Addr>(&c).is_empty());
    }

    #[test]
    fn ipv6_speaks_vrrpv3_whatever_the_version() {
        let mut c = dual_stack();
        c.version = 2;
        c.auth_pass = Some("1111".into());
        assert_eq!(
            wire_version::<Ipv4Addr>(&c),
            Version::V2 {
                auth_pass: Some(b"1111".to_vec())
            }
        );
        assert_eq!(wire_version::<Ipv6Addr>(&c), Version::V3);
        assert_eq!(params(&c, Ipv6Addr::LOCALHOST).version, 3);
        assert_eq!(params(&c, Ipv4Addr::LOCALHOST).version, 2);
    }

    #[test]
    fn judging_skips_our_own_adverts_and_strangers_in_unicast_mode() {
        let me: Ipv6Addr = "fe80::98".parse().unwrap();
        let peer: Ipv6Addr = "fe80::99".parse().unwrap();
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let advert = Advert {
            vrid: 51,
            priority: 100,
            interval: Duration::from_secs(1),
            addresses: vec![vip],
        };
        let expect = Expect {
            vrid: 51,
            version: &Version::V3,
            addresses: &[vip],
        };
        let from = |src: Ipv6Addr, dst: Ipv6Addr| packet::encode(&advert, &Version::V3, src, dst);
        let group = packet::MULTICAST_GROUP_V6;
        let rx = |message: &[u8], src| {
            judge(
                &Received {
                    src,
                    dst: group,
                    hop_limit: 255,
                    message,
                },
                &expect,
                &[],
                me,
            )
        };
        assert_eq!(
            rx(&from(peer, group), peer),
            Ok(Some((peer, advert.clone())))
        );
        assert_eq!(rx(&from(me, group), me), Ok(None), "our own");
        let stranger: Ipv6Addr = "fe80::7".parse().unwrap();
        let unicast = from(stranger, me);
        let received = Received {
            src: stranger,
            dst: me,
            hop_limit: 255,
            message: &unicast,
        };
        assert_eq!(
            judge(&received, &expect, &[peer], me),
            Err(Reject::NotAPeer(stranger.into()))
        );
        assert!(judge(&received, &expect, &[], me).is_ok(), "multicast mode");
    }

    fn status(family: &str, state: &str) -> VrrpStatus {
        VrrpStatus {
            family: family.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_node_status_holds_both_routers() {
        assert_eq!(combine(None, None), None);
        let v4 = status("ipv4", "MASTER");
        let v6 = status("ipv6", "BACKUP");
        assert_eq!(combine(Some(v4.clone()), None), Some(v4.clone()));
        assert_eq!(
            combine(None, Some(v6.clone())),
            Some(v6.clone()),
            "an IPv6-only node"
        );
        let both = combine(Some(v4), Some(v6.clone())).unwrap();
        assert_eq!(
            (both.family.as_str(), both.state.as_str()),
            ("ipv4", "MASTER")
        );
        assert_eq!(both.ipv6.as_deref(), Some(&v6));
    }
}
