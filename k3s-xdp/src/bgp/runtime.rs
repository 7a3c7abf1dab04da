//! The announcer: a task that makes kernel table `table` hold k3s-xdp's route for every VIP the
//! controller wants announced ([`Wanted`]) and nothing else of k3s-xdp's, tells the guard what
//! to withdraw if the daemon dies, reads the routing daemon's BGP sessions, and reports both to
//! the controller for status and metrics. It checks the table again every few seconds, so a
//! route removed by hand comes back, and a restart removes the routes a previous run left.

use super::{
    announce::{Verdict, Wanted},
    bird::{self, Session},
};
use crate::{
    controller::{status::BgpStatus, status::BgpVipStatus, Event},
    guard::Guard,
    system::Netlink,
};
use anyhow::Result;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// How often the table and the routing daemon are checked when nothing changes.
const RECHECK: Duration = Duration::from_secs(3);
/// How long the routing daemon may take to answer.
const BIRD_LIMIT: Duration = Duration::from_secs(2);

/// What the announcer reports: each VIP's announcement and the routing daemon's sessions.
#[derive(Clone, Debug)]
pub struct Report {
    pub table: u32,
    pub vips: BTreeMap<IpAddr, VipState>,
    /// The routing daemon's BGP sessions, or why they are unknown.
    pub sessions: Result<Vec<Session>, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipState {
    /// Its route is in the table.
    pub announced: bool,
    /// Since when it is (or is not).
    pub since: Instant,
    /// Why it is not announced.
    pub reason: Option<String>,
}

impl Report {
    /// The status snapshot's view at `now`.
    pub fn status(&self, now: Instant) -> BgpStatus {
        let (sessions, routing_daemon_error) = match &self.sessions {
            Ok(s) => (s.clone(), None),
            Err(e) => (Vec::new(), Some(e.clone())),
        };
        BgpStatus {
            table: self.table,
            vips: self
                .vips
                .iter()
                .map(|(vip, s)| BgpVipStatus {
                    vip: vip.to_string(),
                    announced: s.announced,
                    since_seconds_ago: now.saturating_duration_since(s.since).as_secs(),
                    reason: s.reason.clone(),
                })
                .collect(),
            sessions,
            routing_daemon_error,
        }
    }
}

/// What the controller wants, with where the routing daemon's control socket is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub wanted: Wanted,
    pub bird_socket: PathBuf,
}

pub struct Announcer {
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Starts the task with its own netlink socket.
    pub fn start(
        ifindex: u32,
        requests: watch::Receiver<Request>,
        events: mpsc::Sender<Event>,
        guard: Guard,
    ) -> Result<Self> {
        let netlink = Netlink::connect()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut a = Task {
                netlink,
                ifindex,
                guard,
                events,
                ours: BTreeSet::new(),
                table: None,
                vips: BTreeMap::new(),
                sessions: Err("not read yet".into()),
                daemon_note: None,
            };
            a.run(requests, stopped).await;
        });
        Ok(Announcer {
            stop: Some(stop),
            task,
        })
    }

    /// Withdraws every route (before the program detaches, so the router drains this node
    /// first) and stops the task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let (done, wait) = oneshot::channel();
            if stop.send(done).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
            }
        }
        self.task.abort();
    }
}

struct Task {
    netlink: Netlink,
    ifindex: u32,
    guard: Guard,
    events: mpsc::Sender<Event>,
    /// The VIPs whose route k3s-xdp added to `table` and has not removed.
    ours: BTreeSet<IpAddr>,
    table: Option<u32>,
    vips: BTreeMap<IpAddr, VipState>,
    sessions: Result<Vec<Session>, String>,
    /// What was last logged about the routing daemon, so a lasting problem is logged once.
    daemon_note: Option<String>,
}

impl Task {
    async fn run(
        &mut self,
        mut requests: watch::Receiver<Request>,
        mut stopped: oneshot::Receiver<oneshot::Sender<()>>,
    ) {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let request = requests.borrow_and_update().clone();
            self.reconcile(&request.wanted).await;
            self.read_sessions(&request).await;
            let _ = self.events.try_send(Event::Bgp(Box::new(self.report())));
            tokio::select! {
                changed = requests.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = recheck.tick() => {}
                done = &mut stopped => {
                    self.withdraw_all("k3s-xdp is stopping").await;
                    let _ = self.events.try_send(Event::Bgp(Box::new(self.report())));
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    fn report(&self) -> Report {
        Report {
            table: self.table.unwrap_or_default(),
            vips: self.vips.clone(),
            sessions: self.sessions.clone(),
        }
    }

    fn set(&mut self, vip: IpAddr, announced: bool, reason: Option<String>) {
        let now = Instant::now();
        let changed = self
            .vips
            .get(&vip)
            .is_none_or(|s| s.announced != announced || s.reason != reason);
        if !changed {
            return;
        }
        let since = match self.vips.get(&vip) {
            Some(s) if s.announced == announced => s.since,
            _ => now,
        };
        match (announced, &reason) {
            (true, _) => info!(
                "BGP: {vip} announced (route in table {})",
                self.table.unwrap_or_default()
            ),
            (false, Some(why)) => warn!("BGP: {vip} withdrawn: {why}"),
            (false, None) => warn!("BGP: {vip} withdrawn"),
        }
        self.vips.insert(
            vip,
            VipState {
                announced,
                since,
                reason,
            },
        );
    }

    /// Makes the table match `wanted`.
    async fn reconcile(&mut self, wanted: &Wanted) {
        if self.table.is_some_and(|t| t != wanted.table) {
            self.withdraw_all("bgp.table changed").await;
        }
        self.table = Some(wanted.table);
        let table = wanted.table;
        let present = match self.netlink.host_routes(table).await {
            Ok(routes) => routes,
            Err(e) => {
                error!("BGP: reading table {table}: {e:#}");
                return;
            }
        };
        let ours_present: BTreeSet<IpAddr> =
            present.iter().filter(|r| r.ours).map(|r| r.dst).collect();
        let others: BTreeSet<IpAddr> = present.iter().filter(|r| !r.ours).map(|r| r.dst).collect();
        // Routes of k3s-xdp that nobody wants: a previous run's, or a VIP no longer announced.
        for &vip in ours_present.iter().filter(|v| !wanted.vips.contains_key(v)) {
            match self.netlink.del_host_route(table, vip).await {
                Ok(()) => {
                    info!("BGP: removed the route for {vip} from table {table} (no longer announced, or left by a previous run)");
                    self.guard.unroute(table, vip);
                    self.ours.remove(&vip);
                }
                Err(e) => error!("BGP: {e:#}"),
            }
        }
        self.vips.retain(|vip, _| wanted.vips.contains_key(vip));
        for (&vip, verdict) in &wanted.vips {
            match verdict {
                Verdict::Announce if others.contains(&vip) && !ours_present.contains(&vip) => {
                    self.set(
                        vip,
                        false,
                        Some(format!(
                            "table {table} already has a route for {vip} that is not k3s-xdp's: left alone"
                        )),
                    );
                }
                Verdict::Announce => {
                    if !ours_present.contains(&vip) {
                        if let Err(e) = self.netlink.add_host_route(table, vip, self.ifindex).await
                        {
                            self.set(vip, false, Some(format!("{e:#}")));
                            continue;
                        }
                    }
                    if self.ours.insert(vip) {
                        self.guard.route(table, vip);
                    }
                    self.set(vip, true, None);
                }
                Verdict::Withdraw(why) => {
                    if ours_present.contains(&vip) || self.ours.contains(&vip) {
                        if let Err(e) = self.netlink.del_host_route(table, vip).await {
                            error!("BGP: {e:#}");
                            continue;
                        }
                        self.guard.unroute(table, vip);
                        self.ours.remove(&vip);
                    }
                    self.set(vip, false, Some(why.clone()));
                }
            }
        }
    }

    /// Removes every route of k3s-xdp from the table.
    async fn withdraw_all(&mut self, why: &str) {
        let Some(table) = self.table else { return };
        let ours: Vec<IpAddr> = self.ours.iter().copied().collect();
        for vip in ours {
            match self.netlink.del_host_route(table, vip).await {
                Ok(()) => {
                    self.guard.unroute(table, vip);
                    self.ours.remove(&vip);
                }
                Err(e) => error!("BGP: {e:#}"),
            }
        }
        let vips: Vec<IpAddr> = self.vips.keys().copied().collect();
        for vip in vips {
            self.set(vip, false, Some(why.to_string()));
        }
    }

    async fn read_sessions(&mut self, request: &Request) {
        self.sessions = bird::sessions(&request.bird_socket, BIRD_LIMIT)
            .await
            .map_err(|e| format!("{e:#}"));
        let note = match &self.sessions {
            Err(e) => Some(format!(
                "the routing daemon cannot be read ({e}): if it is not running, nothing exports the routes of table {}",
                self.table.unwrap_or_default()
            )),
            Ok(s) if s.is_empty() => Some(
                "the routing daemon has no BGP session: nothing exports the routes".to_string(),
            ),
            Ok(s) if !s.iter().any(Session::established) => Some(format!(
                "no BGP session of the routing daemon is established ({})",
                s.iter()
                    .map(|s| format!("{}: {} {}", s.name, s.state, s.info))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Ok(_) => None,
        };
        if note != self.daemon_note {
            match &note {
                Some(n) => warn!("BGP: {n}"),
                None => info!("BGP: the routing daemon has an established BGP session"),
            }
            self.daemon_note = note;
        }
    }
}
