//! `cargo xtask bench failover`, second part (issue 20): established connections that survive
//! the loss of the master when the server speaks first, as a Kubernetes watch does.
//!
//! Each run builds the seed topology with a [`Kind::Push`] backend on server-1..3 (it greets,
//! pushes `push NAME N` every 0.5 s unasked, and echoes the client's lines as `echo NAME LINE`),
//! starts a load-balancer pair on lb-1 (priority 200, master) and lb-2 (100), waits for the
//! steady state, and opens [`WATCHES`] connections from agent-1..3 through the VIP, each with its
//! first push received. A thread per connection then reads on; after [`QUIET`] without a line
//! from any client, lb-1 is cut off the switch (its port goes down, as in the downtime part:
//! the node is lost, identically for every setup). A connection survives when, after the cut,
//! it receives two more pushes and then the echo of a line it sends, from the same server,
//! within [`WITHIN`] of lb-2 holding the VIP.
//!
//! Setups, interleaved run by run, all at 1 s adverts:
//! - k3s-xdp pair, nat, with `[flow_sync]` (lb-2 holds lb-1's translations before the cut);
//! - k3s-xdp pair, nat, without it;
//! - k3s-xdp pair, dsr (the servers hold the VIP on `lo` and answer the agents directly);
//! - keepalived + HAProxy pair with the seeds' configs (as in the downtime part), HAProxy
//!   proxying TCP to the same push servers.

use crate::failover::{self, Held};
use anyhow::{bail, Context, Result};
use k3s_xdp::controller::status::{FlowSyncStatus, Status};
use k3s_xdp_tests::{
    backend::{Backend, Kind, Watch},
    topology::{Topology, LB1, LB2, SERVERS, VIP},
};
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::SocketAddrV4,
    os::unix::fs::OpenOptionsExt,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    FlowSync,
    Nat,
    Dsr,
    KeepalivedHaproxy,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::FlowSync => "k3s-xdp nat + flow sync",
            Setup::Nat => "k3s-xdp nat, no flow sync",
            Setup::Dsr => "k3s-xdp dsr",
            Setup::KeepalivedHaproxy => "keepalived + HAProxy (seeds)",
        }
    }
}

const SETUPS: [Setup; 4] = [
    Setup::FlowSync,
    Setup::Nat,
    Setup::Dsr,
    Setup::KeepalivedHaproxy,
];

const ROUNDS: usize = 3;
/// Connections per run, spread over agent-1..3.
const WATCHES: usize = 30;
/// No client line for this long before the cut (the servers push on).
const QUIET: Duration = Duration::from_millis(300);
/// How long after the cut lb-2 may take to hold the VIP (Master_Down_Interval is 3.61 s).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(10);
/// How long after lb-2 holds the VIP a connection has for its two pushes and its echo.
const WITHIN: Duration = Duration::from_secs(10);
/// The longest single read of a follower thread, so that it sees its deadline move.
const POLL: Duration = Duration::from_secs(1);
const SYNC_PORT: u16 = 3780;

/// What one connection did after the cut.
struct Outcome {
    survived: bool,
    /// From the cut to the first push read after it.
    first_push: Option<Duration>,
    /// Why it did not survive.
    lost: Option<&'static str>,
}

/// One run of one setup.
struct Run {
    survived: usize,
    total: usize,
    first_push: Vec<Duration>,
    lost: BTreeMap<&'static str, usize>,
    /// From the cut to the VIP on lb-2.
    takeover: Duration,
}

/// Runs this part; returns its markdown section and adds its ratios to `summary`.
pub fn run(summary: &mut Vec<crate::Ratio>) -> Result<String> {
    let mut runs: Vec<Vec<Run>> = SETUPS.iter().map(|_| Vec::new()).collect();
    for round in 1..=ROUNDS {
        for (i, setup) in SETUPS.iter().enumerate() {
            let r =
                once(*setup).with_context(|| format!("failover survival, {}", setup.label()))?;
            eprintln!(
                "failover survival round {round}/{ROUNDS}: {}: {}/{} survived, VIP on lb-2 after {:.2?}, lost: {:?}",
                setup.label(),
                r.survived,
                r.total,
                r.takeover,
                r.lost
            );
            runs[i].push(r);
        }
    }
    render(&runs, summary)
}

fn render(runs: &[Vec<Run>], summary: &mut Vec<crate::Ratio>) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "## Failover: established connections that survive it, server speaking first\n\n\
         {WATCHES} connections from agent-1..3 through the VIP to servers that push a line every \
         0.5 s unasked (as a Kubernetes watch's events) and echo the client's lines. After \
         {} ms without a client line, lb-1 (master) is cut off the switch as above, the same way \
         for every setup; a connection survives when it then receives two more pushes and the \
         echo of a line it sends, from the same server, within {} s of lb-2 holding the VIP. \
         {ROUNDS} rounds, setups interleaved, adverts every 1 s.\n",
        QUIET.as_millis(),
        WITHIN.as_secs(),
    )?;
    write!(out, "| setup |")?;
    for round in 1..=ROUNDS {
        write!(out, " round {round} |")?;
    }
    writeln!(
        out,
        " survived | cut → VIP on lb-2 (median) | cut → first push read (median, max) | lost connections |"
    )?;
    write!(out, "|---|")?;
    for _ in 0..ROUNDS {
        write!(out, "---:|")?;
    }
    writeln!(out, "---:|---:|---:|---|")?;
    let totals = |r: &[Run]| {
        (
            r.iter().map(|x| x.survived).sum::<usize>(),
            r.iter().map(|x| x.total).sum::<usize>(),
        )
    };
    for (setup, r) in SETUPS.iter().zip(runs) {
        write!(out, "| {} |", setup.label())?;
        for x in r {
            write!(out, " {}/{} |", x.survived, x.total)?;
        }
        let (ok, total) = totals(r);
        let mut takeover: Vec<Duration> = r.iter().map(|x| x.takeover).collect();
        let mut first: Vec<Duration> = r.iter().flat_map(|x| x.first_push.clone()).collect();
        let first = if first.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{:.2} s, {:.2} s ({} connections)",
                median(&mut first).as_secs_f64(),
                first[first.len() - 1].as_secs_f64(),
                first.len()
            )
        };
        let mut lost: BTreeMap<&str, usize> = BTreeMap::new();
        for x in r {
            for (why, n) in &x.lost {
                *lost.entry(why).or_default() += n;
            }
        }
        let lost = if lost.is_empty() {
            "-".to_string()
        } else {
            lost.iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            " {ok}/{total} ({:.0}%) | {:.2} s | {first} | {lost} |",
            percent(ok, total),
            median(&mut takeover).as_secs_f64(),
        )?;
    }
    writeln!(
        out,
        "\nWithout flow sync, lb-2 has no reverse translation for the servers' packets to the \
         VIP, and lb-2's HAProxy never saw the connections (HAProxy is a full proxy): no push \
         reaches a client after the cut, and the client, which is not speaking, is not told. \
         With flow sync lb-2 holds lb-1's translations before the cut. In dsr mode the servers \
         send to the agents directly and the agents' packets reach the same server through \
         lb-2's Maglev table. A push sent while the path through lb-1 was gone arrives with \
         the server's TCP retransmissions, whose intervals double, hence the longest times.\n"
    )?;

    let base = SETUPS
        .iter()
        .position(|s| *s == Setup::KeepalivedHaproxy)
        .map(|i| totals(&runs[i]))
        .unwrap_or((0, 0));
    let base_lost = base.1 - base.0;
    for (setup, r) in SETUPS.iter().zip(runs) {
        if *setup == Setup::KeepalivedHaproxy {
            continue;
        }
        let (ok, total) = totals(r);
        let lost = total - ok;
        let target = match setup {
            Setup::Nat => "- (today's nat, for contrast)".to_string(),
            _ => format!(
                "100% survive: {}",
                if ok == total { "met" } else { "missed" }
            ),
        };
        summary.push(crate::Ratio {
            what: format!(
                "failover, connections lost, server speaking first: {}",
                setup.label()
            ),
            value: format!("{lost}/{total} ({:.0}% survive)", percent(ok, total)),
            baseline: format!(
                "{} {base_lost}/{} ({:.0}% survive)",
                Setup::KeepalivedHaproxy.label(),
                base.1,
                percent(base.0, base.1)
            ),
            ratio: if base_lost == 0 {
                f64::NAN
            } else {
                lost as f64 / base_lost as f64
            },
            target,
        });
    }
    Ok(out)
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Median of durations (sorted in place); zero when empty.
fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// One run of `setup`.
fn once(setup: Setup) -> Result<Run> {
    let topo = Topology::seed()?;
    let _servers: Vec<Backend> = SERVERS
        .iter()
        .map(|s| Backend::start(topo.node(s), s, 6443, Kind::Push, &[topo.addr(s)]))
        .collect::<Result<_>>()?;
    let mut held = Held::default();
    match setup {
        Setup::FlowSync | Setup::Nat | Setup::Dsr => {
            let mode = if setup == Setup::Dsr {
                for s in SERVERS {
                    topo.prepare_dsr_backend(s, VIP)?;
                }
                "dsr"
            } else {
                "nat"
            };
            let (t1, t2) = if setup == Setup::FlowSync {
                let key = key_file(&topo, &mut held.files)?;
                let tail = |peer| {
                    format!(
                        "[flow_sync]\npeers = [\"{peer}\"]\nport = {SYNC_PORT}\nkey_file = \"{}\"\n",
                        key.display()
                    )
                };
                (tail(LB2), tail(LB1))
            } else {
                (String::new(), String::new())
            };
            held.daemons = failover::start_k3s_xdp(
                &topo,
                &failover::pair_config(200, true, "1s", mode, &t1),
                &failover::pair_config(100, false, "1s", mode, &t2),
            )?;
            if setup == Setup::FlowSync {
                for d in &held.daemons {
                    d.wait_for(
                        Duration::from_secs(40),
                        "flow sync: the peer up, its table taken",
                        |s| {
                            let f = sync(s);
                            f.synced && f.peers.iter().any(|p| p.up)
                        },
                    )?;
                }
            }
        }
        Setup::KeepalivedHaproxy => failover::start_keepalived_haproxy(&topo, false, &mut held)?,
    }
    steady(&topo)?;
    let installed = match (setup, held.daemons.get(1)) {
        (Setup::FlowSync, Some(lb2)) => Some((lb2, sync(&lb2.status()?).installed)),
        _ => None,
    };
    let mut watches = open_watches(&topo)?;
    if let Some((lb2, before)) = installed {
        let want = before + WATCHES as u64;
        lb2.wait_for(
            Duration::from_secs(5),
            &format!("lb-2 installed the {WATCHES} connections ({want} flows)"),
            |s| sync(s).installed >= want,
        )?;
    }

    let shared = Shared::default();
    let (outcomes, takeover) = std::thread::scope(|scope| {
        let followers: Vec<_> = watches
            .iter_mut()
            .enumerate()
            .map(|(i, w)| {
                let shared = &shared;
                scope.spawn(move || follow(w, i, shared))
            })
            .collect();
        let takeover = cut_and_wait(&topo, &shared);
        if takeover.is_err() {
            shared.abort.store(true, Ordering::SeqCst);
        }
        let outcomes: Vec<Outcome> = followers
            .into_iter()
            .map(|f| {
                f.join().unwrap_or(Outcome {
                    survived: false,
                    first_push: None,
                    lost: Some("follower panicked"),
                })
            })
            .collect();
        (outcomes, takeover)
    });
    let takeover = takeover?;
    let mut run = Run {
        survived: 0,
        total: outcomes.len(),
        first_push: Vec::new(),
        lost: BTreeMap::new(),
        takeover,
    };
    for o in outcomes {
        if o.survived {
            run.survived += 1;
        }
        run.first_push.extend(o.first_push);
        if let Some(why) = o.lost {
            *run.lost.entry(why).or_default() += 1;
        }
    }
    drop(watches);
    drop(held);
    Ok(run)
}

fn sync(s: &Status) -> FlowSyncStatus {
    s.flow_sync.clone().unwrap_or_default()
}

/// A fresh 32-byte key (hex), root's alone (0600), in the temporary directory; its path is
/// added to `files` (removed at the end of the run).
fn key_file(topo: &Topology, files: &mut Vec<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("k3s-xdp-bench-fskey-{}", topo.prefix()));
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("reading /dev/urandom for the flow-sync key")?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .with_context(|| format!("writing the flow-sync key {}", path.display()))?;
    files.push(path.clone());
    Ok(path)
}

/// Waits (at most 15 s) until a connection through the VIP is greeted and echoes a line
/// (HAProxy's first checks may take a moment).
fn steady(topo: &Topology) -> Result<()> {
    let vip = SocketAddrV4::new(VIP, 6443);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let probe = Watch::open(topo.node("agent-1"), vip, Duration::from_millis(500))
            .and_then(|mut w| w.echo("steady"));
        match probe {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("no echo through the VIP in the steady state"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// [`WATCHES`] connections from agent-1..3 through the VIP, each with its first push read.
fn open_watches(topo: &Topology) -> Result<Vec<Watch>> {
    let vip = SocketAddrV4::new(VIP, 6443);
    let t = Duration::from_secs(2);
    let mut watches = (0..WATCHES)
        .map(|i| {
            let agent = ["agent-1", "agent-2", "agent-3"][i % 3];
            Watch::open(topo.node(agent), vip, t)
                .with_context(|| format!("connection {i} from {agent} through the VIP"))
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, w) in watches.iter_mut().enumerate() {
        w.next_push()
            .with_context(|| format!("connection {i} ({}): its first push", w.server))?;
    }
    Ok(watches)
}

/// What the follower threads and the thread that cuts lb-1 off share.
#[derive(Default)]
struct Shared {
    /// When lb-1's port went down.
    cut: OnceLock<Instant>,
    /// When the VIP was seen on lb-2.
    takeover: OnceLock<Instant>,
    /// The run failed: the followers stop at their next poll.
    abort: AtomicBool,
}

impl Shared {
    /// Until when a connection may take to survive, as known now: [`WITHIN`] after the
    /// takeover; before it, the latest the takeover may come; before the cut, a bound (the
    /// cut comes [`QUIET`] after the followers start).
    fn deadline(&self, started: Instant) -> Instant {
        if let Some(t) = self.takeover.get() {
            *t + WITHIN
        } else if let Some(c) = self.cut.get() {
            *c + TAKEOVER_LIMIT + WITHIN
        } else {
            started + Duration::from_secs(30)
        }
    }
}

/// After [`QUIET`], cuts lb-1 off the switch and waits for the VIP on lb-2: the time between.
fn cut_and_wait(topo: &Topology, shared: &Shared) -> Result<Duration> {
    std::thread::sleep(QUIET);
    topo.set_link("lb-1", false)?;
    let cut = Instant::now();
    let _ = shared.cut.set(cut);
    loop {
        if topo.has_address("lb-2", VIP) {
            let now = Instant::now();
            let _ = shared.takeover.set(now);
            return Ok(now - cut);
        }
        if cut.elapsed() > TAKEOVER_LIMIT {
            bail!("lb-2 did not take the VIP within {TAKEOVER_LIMIT:?} of losing lb-1");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads connection `i`'s pushes; after the cut, waits for two and then the echo of a line.
fn follow(w: &mut Watch, i: usize, shared: &Shared) -> Outcome {
    let started = Instant::now();
    let mut first_push = None;
    let lost = |first_push, why| Outcome {
        survived: false,
        first_push,
        lost: Some(why),
    };
    let mut after = 0;
    while after < 2 {
        let now = Instant::now();
        let deadline = shared.deadline(started);
        if shared.abort.load(Ordering::SeqCst) || now >= deadline {
            let why = if first_push.is_none() {
                "without a push after the cut"
            } else {
                "with one push after the cut"
            };
            return lost(first_push, why);
        }
        if w.set_timeout((deadline - now).min(POLL)).is_err() {
            return lost(first_push, "other error");
        }
        match w.next_push() {
            Ok(_) => {
                let read = Instant::now();
                if let Some(cut) = shared.cut.get() {
                    if read > *cut {
                        after += 1;
                        first_push.get_or_insert(read - *cut);
                    }
                }
            }
            Err(e) if timed_out(&e) => {}
            Err(e) => return lost(first_push, how(&e)),
        }
    }
    let now = Instant::now();
    let deadline = shared.deadline(started);
    if now >= deadline || w.set_timeout(deadline - now).is_err() {
        return lost(first_push, "without an echo");
    }
    match w.echo(&format!("after the cut {i}")) {
        Ok(()) if Instant::now() <= shared.deadline(started) => Outcome {
            survived: true,
            first_push,
            lost: None,
        },
        Ok(()) => lost(first_push, "late"),
        Err(e) if timed_out(&e) => lost(first_push, "without an echo"),
        Err(e) => lost(first_push, how(&e)),
    }
}

fn io_kind(e: &anyhow::Error) -> Option<io::ErrorKind> {
    e.chain()
        .find_map(|c| c.downcast_ref::<io::Error>().map(io::Error::kind))
}

fn timed_out(e: &anyhow::Error) -> bool {
    matches!(
        io_kind(e),
        Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
    )
}

/// How a connection ended, in words.
fn how(e: &anyhow::Error) -> &'static str {
    match io_kind(e) {
        Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => "reset",
        Some(_) => "other error",
        None if format!("{e:#}").contains("closed") => "closed",
        None => "other error",
    }
}
