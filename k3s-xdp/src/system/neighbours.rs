//! The backends' next hops, resolved before they take new flows and kept resolved while they
//! are configured. The XDP program finds a backend's MAC address in the kernel's neighbour
//! table (`bpf_fib_lookup`); a backend added by a reload may have no entry there yet, and an
//! entry nobody uses ages out. So the keeper asks the kernel to resolve each backend's next hop
//! (the backend itself, or the gateway its route names) and to keep it resolved: a "managed"
//! neighbour entry (`NTF_EXT_MANAGED`, Linux 5.16), which the kernel probes by itself, as
//! Cilium does for its XDP load balancer. It reports which backends have a resolved next hop;
//! the controller admits a backend to its Maglev table only then (`controller::model`).
//!
//! Entries it made managed carry [`PROTOCOL`] and are deleted when their backend goes and when
//! the daemon stops (the kernel resolves them again if anything else needs them); entries an
//! operator made permanent are left alone.

use super::Netlink;
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};
use tokio::sync::watch;
use tracing::{info, warn};

/// `NDA_PROTOCOL` of the neighbour entries k3s-xdp made managed ("k3", as `ip neigh` shows
/// it: `proto 107`).
pub const PROTOCOL: u8 = 107;

/// How often next hops are checked while one is unresolved, and otherwise.
const WAITING_POLL: Duration = Duration::from_millis(50);
const STEADY_POLL: Duration = Duration::from_secs(1);
/// At start, how long the first report waits for every next hop to resolve: until then the
/// controller takes them all as resolved, rather than refuse connections while ARP runs.
const FIRST_REPORT_WAIT: Duration = Duration::from_secs(1);

/// Where a packet to a backend goes next: out of `ifindex`, to `via` (the backend itself when
/// it is on the link, else the gateway of its route).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub ifindex: u32,
    pub via: IpAddr,
}

/// A neighbour entry's state, as far as forwarding cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// No entry, being resolved, or resolution failed (INCOMPLETE, FAILED, NONE).
    Unresolved,
    /// A usable MAC address (REACHABLE, STALE, DELAY, PROBE): `bpf_fib_lookup` answers.
    Resolved,
    /// Set by an operator (PERMANENT, NOARP): always usable, never touched.
    Static,
}

impl Entry {
    fn of(state: NeighbourState) -> Self {
        match state {
            NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe => Entry::Resolved,
            NeighbourState::Permanent | NeighbourState::Noarp => Entry::Static,
            _ => Entry::Unresolved,
        }
    }

    pub fn usable(self) -> bool {
        matches!(self, Entry::Resolved | Entry::Static)
    }
}

impl Netlink {
    /// The next hop toward `dst` from the main routing decision (`ip route get`); `None` when
    /// `dst` is one of this host's own addresses (nothing to resolve).
    pub async fn next_hop(&self, dst: IpAddr) -> Result<Option<NextHop>> {
        let mut message = RouteMessage::default();
        let (family, prefix_len, address) = match dst {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        message.header.address_family = family;
        message.header.destination_prefix_length = prefix_len;
        message
            .attributes
            .push(RouteAttribute::Destination(address));
        let mut answers = self.handle.route().get(message).execute();
        let route = answers
            .next()
            .await
            .ok_or_else(|| anyhow!("no answer"))?
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("no route to {dst}"))?;
        if route.header.kind == RouteType::Local {
            return Ok(None);
        }
        let mut hop = NextHop {
            ifindex: 0,
            via: dst,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => hop.ifindex = *i,
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => hop.via = IpAddr::V4(*gw),
                RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => hop.via = IpAddr::V6(*gw),
                _ => {}
            }
        }
        if hop.ifindex == 0 {
            bail!("the route to {dst} names no interface");
        }
        Ok(Some(hop))
    }

    /// The state of the neighbour entry of `hop`.
    pub async fn neighbour(&self, hop: NextHop) -> Result<Entry> {
        let mut message = neighbour_message(hop);
        message.header.state = NeighbourState::None;
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(message));
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(request)
            .map_err(|e| anyhow!("asking for the neighbour {}: {e}", hop.via))?;
        let mut entry = Entry::Unresolved;
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                    entry = Entry::of(n.header.state);
                }
                NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => {
                    return Ok(Entry::Unresolved)
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    bail!("asking for the neighbour {}: {e}", hop.via)
                }
                _ => {}
            }
        }
        Ok(entry)
    }

    /// Asks the kernel to resolve `hop` and keep it resolved (a managed entry; an entry
    /// already resolved keeps its address and state).
    pub async fn manage_neighbour(&self, hop: NextHop) -> Result<()> {
        let mut request = self
            .handle
            .neighbours()
            .add(hop.ifindex, hop.via)
            .state(NeighbourState::None)
            .replace();
        let message = request.message_mut();
        message
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        message
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::Other(PROTOCOL)));
        request.execute().await.with_context(|| {
            format!(
                "asking the kernel to resolve and keep {} (managed neighbour entry, Linux 5.16+)",
                hop.via
            )
        })
    }

    /// Deletes the neighbour entry of `hop`; absent is not an error.
    pub async fn forget_neighbour(&self, hop: NextHop) -> Result<()> {
        let mut request =
            NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(neighbour_message(hop)));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(request)
            .map_err(|e| anyhow!("deleting the neighbour {}: {e}", hop.via))?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                if e.code.is_some() && e.raw_code() != -libc::ENOENT {
                    bail!("deleting the neighbour {}: {e}", hop.via);
                }
            }
        }
        Ok(())
    }

    /// The next hops of interface `ifindex` that carry [`PROTOCOL`]: left by a daemon that
    /// did not stop cleanly.
    pub async fn managed_neighbours(&self, ifindex: u32) -> Result<Vec<NextHop>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            self.managed_neighbours_of(ifindex, family, &mut out)
                .await?;
        }
        Ok(out)
    }

    async fn managed_neighbours_of(
        &self,
        ifindex: u32,
        family: AddressFamily,
        out: &mut Vec<NextHop>,
    ) -> Result<()> {
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(n) = dump.next().await {
            let n = n.map_err(|e| anyhow!("listing neighbours: {e}"))?;
            if n.header.ifindex != ifindex {
                continue;
            }
            let ours = n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Protocol(RouteProtocol::Other(p)) if *p == PROTOCOL));
            let via = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
                _ => None,
            });
            if let (true, Some(via)) = (ours, via) {
                out.push(NextHop { ifindex, via });
            }
        }
        Ok(())
    }
}

fn neighbour_message(hop: NextHop) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    let (family, address) = match hop.via {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    message.header.family = family;
    message.header.ifindex = hop.ifindex;
    message
        .attributes
        .push(NeighbourAttribute::Destination(address));
    message
}

/// Which backends have a usable next hop; `None` while the keeper cannot tell (then every
/// backend is taken as resolved, as before the keeper existed).
pub type Resolved = Option<BTreeSet<IpAddr>>;

/// The keeper's handle: tell it the backends, stop it.
pub struct Keeper {
    wanted: watch::Sender<BTreeSet<IpAddr>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    /// Starts keeping the next hops of `backends`; `report` gets the resolved set whenever it
    /// changes. Managed entries left on `ifindex` by an earlier run are deleted first.
    pub fn spawn(
        ifindex: u32,
        backends: BTreeSet<IpAddr>,
        report: impl FnMut(Resolved) + Send + 'static,
    ) -> Self {
        let (wanted, wanted_rx) = watch::channel(backends);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(keep(ifindex, wanted_rx, stop_rx, report));
        Keeper {
            wanted,
            stop: Some(stop),
            task,
        }
    }

    /// The backends are now `backends`.
    pub fn want(&self, backends: BTreeSet<IpAddr>) {
        self.wanted.send_if_modified(|w| {
            let changed = *w != backends;
            *w = backends;
            changed
        });
    }

    /// Deletes the managed entries it made, and stops.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

async fn keep(
    ifindex: u32,
    mut wanted: watch::Receiver<BTreeSet<IpAddr>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    mut report: impl FnMut(Resolved),
) {
    let netlink = match Netlink::connect() {
        Ok(n) => n,
        Err(e) => {
            warn!("not keeping the backends' neighbours resolved ({e:#}): backends take new flows before their MAC address is known");
            report(None);
            return;
        }
    };
    if let Ok(left) = netlink.managed_neighbours(ifindex).await {
        for hop in left {
            let _ = netlink.forget_neighbour(hop).await;
        }
    }
    let mut keeper = State::default();
    let mut last: Option<Resolved> = None;
    let started = tokio::time::Instant::now();
    loop {
        let backends = wanted.borrow_and_update().clone();
        let resolved = keeper.round(&netlink, &backends).await;
        let all = resolved.as_ref().is_none_or(|r| r.len() == backends.len());
        let early = last.is_none() && !all && started.elapsed() < FIRST_REPORT_WAIT;
        if !early && last.as_ref() != Some(&resolved) {
            report(resolved.clone());
            last = Some(resolved);
        }
        let poll = if all { STEADY_POLL } else { WAITING_POLL };
        tokio::select! {
            _ = &mut stop => break,
            changed = wanted.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(poll) => {}
        }
    }
    for hop in std::mem::take(&mut keeper.managed) {
        if let Err(e) = netlink.forget_neighbour(hop).await {
            warn!("{e:#}");
        }
    }
}

/// What the keeper made managed, and what it warned about (once each).
#[derive(Default)]
struct State {
    managed: BTreeSet<NextHop>,
    warned: BTreeSet<IpAddr>,
    /// Managed entries are refused (a kernel before 5.16): the health checks' connections
    /// resolve the next hops, and nothing keeps them.
    unmanaged: bool,
}

impl State {
    /// One pass: each backend's next hop found, asked to be kept resolved, and its state read.
    async fn round(&mut self, netlink: &Netlink, backends: &BTreeSet<IpAddr>) -> Resolved {
        let mut hops: BTreeMap<IpAddr, Option<NextHop>> = BTreeMap::new();
        for &backend in backends {
            match netlink.next_hop(backend).await {
                Ok(hop) => {
                    hops.insert(backend, hop);
                }
                Err(e) => {
                    if self.warned.insert(backend) {
                        warn!(
                            "backend {backend}: {e:#}; it takes no new flows until it has a route"
                        );
                    }
                }
            }
        }
        let needed: BTreeSet<NextHop> = hops.values().flatten().copied().collect();
        for gone in self
            .managed
            .difference(&needed)
            .copied()
            .collect::<Vec<_>>()
        {
            self.managed.remove(&gone);
            if let Err(e) = netlink.forget_neighbour(gone).await {
                warn!("{e:#}");
            }
        }
        let mut usable: BTreeMap<NextHop, bool> = BTreeMap::new();
        for &hop in &needed {
            let entry = match netlink.neighbour(hop).await {
                Ok(entry) => entry,
                Err(e) => {
                    warn!("{e:#}; taking the backends' next hops as resolved");
                    return None;
                }
            };
            if entry != Entry::Static && !self.managed.contains(&hop) && !self.unmanaged {
                match netlink.manage_neighbour(hop).await {
                    Ok(()) => {
                        self.managed.insert(hop);
                    }
                    Err(e) => {
                        warn!("{e:#}; the backends' next hops are resolved by the health checks' traffic only");
                        self.unmanaged = true;
                    }
                }
            }
            usable.insert(hop, entry.usable());
        }
        let resolved: BTreeSet<IpAddr> = hops
            .iter()
            .filter(|(_, hop)| hop.is_none_or(|hop| usable.get(&hop).copied().unwrap_or(false)))
            .map(|(backend, _)| *backend)
            .collect();
        for backend in &resolved {
            if self.warned.remove(backend) {
                info!("backend {backend}: next hop resolved");
            }
        }
        Some(resolved)
    }
}
