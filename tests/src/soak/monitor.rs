//! Watching the daemons (edge): a thread that asks both daemons for their status every
//! [`STATUS_EVERY`] and records each change as a time-stamped [`Event`] (VRRP state, a
//! backend's health and data-plane state, the flow tables' full counters), and every
//! [`SAMPLE_EVERY`] reads each daemon's process in /proc: VmRSS, CPU time, file descriptors,
//! the BPF maps among them, and its children (the guard).

use super::{
    traffic::Clock,
    verdict::{Event, Observation, Sample},
};
use k3s_xdp::controller::{
    control,
    status::{FlowSyncPeerStatus, FlowSyncStatus, Request, Response, Status},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::Duration,
};

pub const STATUS_EVERY: Duration = Duration::from_millis(100);
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A status request that takes longer is an unanswered one.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The daemons' current PIDs by node (the runner updates them on restarts).
pub type Pids = Arc<Mutex<BTreeMap<String, u32>>>;

/// What the monitor saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub events: Vec<Event>,
    /// Samples by PID.
    pub samples: BTreeMap<u32, Vec<Sample>>,
    /// Ids of every BPF map a daemon held.
    pub map_ids: BTreeSet<u32>,
    /// The daemons' children (pid, start time in ticks, command).
    pub children: BTreeSet<(u32, u64, String)>,
}

pub struct Monitor {
    clock: Clock,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<Seen>>,
}

impl Monitor {
    /// Starts watching the daemons whose control sockets are `sockets` (by node).
    pub fn start(sockets: Vec<(String, PathBuf)>, pids: Pids, clock: Clock) -> Monitor {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, c) = (stop.clone(), clock.clone());
        let thread = thread::spawn(move || watch(&sockets, &pids, &c, &flag));
        Monitor {
            clock,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns what it saw.
    pub fn finish(mut self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }

    pub fn at(&self) -> Duration {
        self.clock.at()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Last known (health, state) by (node, service, backend).
type Backends = BTreeMap<(String, String, String), (String, String)>;

fn watch(
    sockets: &[(String, PathBuf)],
    pids: &Pids,
    clock: &Clock,
    stop: &std::sync::atomic::AtomicBool,
) -> Seen {
    let mut seen = Seen::default();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return seen;
    };
    let mut vrrp: BTreeMap<String, String> = BTreeMap::new();
    let mut backends: Backends = BTreeMap::new();
    let mut full: BTreeMap<String, u64> = BTreeMap::new();
    let mut sync: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut next_sample = clock.at();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (node, socket) in sockets {
            let status = rt.block_on(async {
                tokio::time::timeout(STATUS_TIMEOUT, control::request(socket, &Request::Status))
                    .await
            });
            let at = clock.at();
            let mut push = |what| seen.events.push(Event { at, what });
            let status: Option<Status> = match status {
                Ok(Ok(Response::Status(s))) => Some(*s),
                _ => None,
            };
            let state = status
                .as_ref()
                .and_then(|s| s.vrrp.as_ref())
                .map(|v| v.state.clone())
                .unwrap_or_else(|| "gone".into());
            if vrrp.get(node) != Some(&state) {
                vrrp.insert(node.clone(), state.clone());
                push(Observation::Vrrp {
                    node: node.clone(),
                    state,
                });
            }
            let Some(s) = status else { continue };
            for svc in &s.services {
                for b in &svc.backends {
                    let key = (node.clone(), svc.name.clone(), b.name.clone());
                    let now = (b.health.clone(), b.state.clone());
                    if backends.get(&key) != Some(&now) {
                        backends.insert(key, now.clone());
                        push(Observation::Backend {
                            node: node.clone(),
                            service: svc.name.clone(),
                            backend: b.name.clone(),
                            health: now.0,
                            state: now.1,
                        });
                    }
                }
            }
            let total: u64 = ["flow_evicted", "translation_taken_over"]
                .iter()
                .filter_map(|k| s.flow_table.get(*k))
                .sum();
            let before = full.insert(node.clone(), total);
            // A restarted daemon counts from 0 again: only a rise is an event.
            if before.is_some_and(|b| total > b) {
                push(Observation::TableFull {
                    node: node.clone(),
                    total,
                });
            }
            for (counter, total) in s.flow_sync.as_ref().map(sync_trouble).unwrap_or_default() {
                let before = sync.insert((node.clone(), counter), total);
                // A restarted daemon counts from 0 again: only a rise is an event.
                if before.is_some_and(|b| total > b) || (before.is_none() && total > 0) {
                    push(Observation::FlowSync {
                        node: node.clone(),
                        counter,
                        total,
                    });
                }
            }
        }
        if clock.at() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let current: Vec<u32> = pids
                .lock()
                .map(|p| p.values().copied().collect())
                .unwrap_or_default();
            for pid in current {
                if let Some(x) = sample(pid, clock.at()) {
                    seen.samples.entry(pid).or_default().push(x);
                }
                seen.map_ids.extend(map_ids(pid));
                seen.children.extend(children(pid));
            }
        }
        thread::sleep(STATUS_EVERY);
    }
    seen
}

/// Flow sync's counters of trouble: entries this node could not take or send.
fn sync_trouble(f: &FlowSyncStatus) -> Vec<(&'static str, u64)> {
    let peers = |v: fn(&FlowSyncPeerStatus) -> u64| f.peers.iter().map(v).sum::<u64>();
    vec![
        ("conflicts", f.conflicts),
        ("crowded", f.crowded),
        ("not_placed", f.not_placed),
        ("unnamed", f.unnamed),
        ("events_lost", f.events_lost),
        ("queue_lost", peers(|p| p.lost_entries)),
        ("lost_on_the_way", peers(|p| p.lost_on_the_way)),
        ("repairs", peers(|p| p.repairs)),
    ]
}

/// One reading of process `pid`, or None if it is gone.
pub fn sample(pid: u32, at: Duration) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // A zombie (dead, not yet reaped) has no VmRSS: no sample.
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let cpu_ticks = ticks(11) + ticks(12);
    let (mut fds, mut map_fds) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map")
        {
            map_fds += 1;
        }
    }
    Some(Sample {
        at,
        rss_kb,
        fds,
        map_fds,
        cpu_ticks,
    })
}

/// Ids of the BPF maps process `pid` holds.
pub fn map_ids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map")
        })
        .filter_map(|e| {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// The start time (ticks since boot) and command of process `pid`, if it exists.
pub fn identity(pid: u32) -> Option<(u64, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // starttime is field 22: index 19 after the command.
    let start = fields.get(19)?.parse().ok()?;
    Some((start, comm))
}

/// The children of process `pid`: (pid, start time, command).
pub fn children(pid: u32) -> Vec<(u32, u64, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .filter_map(|child| identity(child).map(|(start, comm)| (child, start, comm)))
        .collect()
}
