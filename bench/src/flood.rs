//! `cargo xtask bench flood`: a SYN flood against the load balancer while legitimate clients
//! connect and keep connections (issue 21), k3s-xdp against HAProxy.
//!
//! One topology for the whole run (lb-1, server-1..3 with the test library's echo backends on
//! 6443, agent-1..3), made closer to hosts on a switch as `bench e2e` does
//! ([`crate::e2e::prepare_lab`]). agent-1 floods VIP:6443 with SYNs from random
//! 198.51.100.0/24 sources and ports ([`k3s_xdp_tests::flood`], AF_PACKET, as fast as the
//! machine allows, bounded in count and time); the SYN-ACKs to those sources are routed to a
//! blackhole in agent-1's namespace. agent-2 and agent-3 each start a new connection every
//! [`INTERVAL`] (the client sends a line, reads the greeting and the echo, closes; each on its
//! own thread) and keep [`LONG_LIVED`] connections that echo a line every [`ECHO_EVERY`].
//!
//! Targets, interleaved round by round: k3s-xdp in nat mode with the default flow table
//! (262,144 entries) and with [`SMALL_TABLE`] entries (which the flood fills within the run),
//! each with the SYN flood guard on (the default: agent-2 and agent-3 are known sources once
//! their first connections completed, the flood's forged sources never are) and off, and
//! HAProxy with the seeds' haproxy.cfg (addresses adapted, as `bench e2e` runs it;
//! the bench puts the VIP on lb-1). Each run has a quiet phase (legitimate traffic alone: the
//! baseline) and a flood phase (the same traffic under the flood).
//!
//! CPU: the XDP program's own time from the kernel's BPF statistics (`kernel.bpf_stats_enabled`
//! while the bench runs: run_time_ns and run_cnt of the program on lb-1's eth1, tail calls
//! included); the load balancer's processes (user + system); and the whole machine's busy time
//! (`/proc/stat`, softirq apart) minus other processes', because on 2 cores the softirq work of
//! lb-1's namespace (the kernel's SYN handling for HAProxy) cannot be told from the sender's,
//! the bridge's and the backends'. `K3S_XDP_BENCH_REPS` sets the rounds (default 2).

use crate::{
    e2e::{
        clock_ticks, haproxy_config, machine_busy, other_cpu, prepare_lab, process_cpu,
        xdp_program_id,
    },
    Ratio,
};
use anyhow::{bail, Context, Result};
use k3s_xdp::controller::status::Status;
use k3s_xdp_tests::{
    backend::{Backends, Kind},
    config::SeedConfig,
    daemon::Daemon,
    flood::{
        route_flood_replies, Flood, FloodReport, FloodSpec, Legit, LegitReport, LegitSpec,
        LinkStats, NewSummary,
    },
    netns::Process,
    topology::{Topology, SERVERS, VIP},
    traffic::nstat,
};
use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

const PORT: u16 = 6443;
/// The flood phase: at most this long and this many SYNs.
pub const FLOOD_TIME: Duration = Duration::from_secs(8);
pub const FLOOD_PACKETS: u64 = 50_000_000;
/// The quiet phase before it.
pub const QUIET: Duration = Duration::from_secs(4);
/// After the flood, before the last echoes (its stragglers through).
pub const TAIL: Duration = Duration::from_secs(1);
/// Legitimate traffic, per agent (agent-2 and agent-3).
pub const INTERVAL: Duration = Duration::from_millis(10);
pub const LONG_LIVED: usize = 8;
pub const ECHO_EVERY: Duration = Duration::from_secs(2);
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// The smaller flow table.
pub const SMALL_TABLE: u32 = 16_384;
const ROUNDS: usize = 2;
const LEGIT_AGENTS: [&str; 2] = ["agent-2", "agent-3"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// The defaults: the SYN flood guard on, the default table.
    Xdp,
    XdpNoGuard,
    XdpSmall,
    XdpSmallNoGuard,
    Haproxy,
}

const TARGETS: [Target; 5] = [
    Target::Xdp,
    Target::XdpNoGuard,
    Target::XdpSmall,
    Target::XdpSmallNoGuard,
    Target::Haproxy,
];

impl Target {
    fn label(self) -> String {
        match self {
            Target::Xdp => "k3s-xdp nat, default table (262,144), SYN flood guard on".into(),
            Target::XdpNoGuard => "k3s-xdp nat, default table, guard off".into(),
            Target::XdpSmall => format!("k3s-xdp nat, flow_table_size {SMALL_TABLE}, guard on"),
            Target::XdpSmallNoGuard => {
                format!("k3s-xdp nat, flow_table_size {SMALL_TABLE}, guard off")
            }
            Target::Haproxy => "HAProxy (seed haproxy.cfg)".into(),
        }
    }

    /// The column header of the ratios.
    fn short(self) -> String {
        match self {
            Target::Xdp => "k3s-xdp (guard on)".into(),
            Target::XdpNoGuard => "k3s-xdp, guard off".into(),
            Target::XdpSmall => format!("k3s-xdp {SMALL_TABLE} (guard on)"),
            Target::XdpSmallNoGuard => format!("k3s-xdp {SMALL_TABLE}, guard off"),
            Target::Haproxy => "HAProxy".into(),
        }
    }

    fn small_table(self) -> bool {
        matches!(self, Target::XdpSmall | Target::XdpSmallNoGuard)
    }

    fn guard_off(self) -> bool {
        matches!(self, Target::XdpNoGuard | Target::XdpSmallNoGuard)
    }
}

/// The load balancer of one run; stopped (by PID) and its VIP removed on drop.
struct Lb<'a> {
    topo: &'a Topology,
    daemon: Option<Daemon>,
    haproxy: Option<Process>,
    vip_added: bool,
    xdp_prog: Option<u32>,
    _dir: Option<TempDir>,
}

impl<'a> Lb<'a> {
    fn start(topo: &'a Topology, target: Target) -> Result<Lb<'a>> {
        let mut lb = Lb {
            topo,
            daemon: None,
            haproxy: None,
            vip_added: false,
            xdp_prog: None,
            _dir: None,
        };
        let lb1 = topo.node("lb-1");
        match target {
            Target::Xdp | Target::XdpNoGuard | Target::XdpSmall | Target::XdpSmallNoGuard => {
                let mut config = SeedConfig::new().health("inter = \"2s\"");
                if target.small_table() {
                    config = config.top(format!("flow_table_size = {SMALL_TABLE}"));
                }
                if target.guard_off() {
                    config = config.top("syn_flood = { guard = false }");
                }
                let daemon = Daemon::start(topo, "lb-1", &config.render())?;
                daemon.wait_healthy(Duration::from_secs(20))?;
                lb.xdp_prog = xdp_program_id(lb1)?;
                lb.daemon = Some(daemon);
            }
            Target::Haproxy => {
                lb1.ip(["addr", "add", &format!("{VIP}/32"), "dev", "eth1"])?;
                lb.vip_added = true;
                let dir = TempDir::create(&format!("k3s-xdp-bench-flood-{}", topo.prefix()))?;
                let cfg = dir.0.join("haproxy.cfg");
                std::fs::write(&cfg, haproxy_config())?;
                lb.haproxy = Some(lb1.spawn("haproxy", ["-db", "-f", &cfg.display().to_string()])?);
                lb._dir = Some(dir);
            }
        }
        Ok(lb)
    }

    fn pid(&self) -> u32 {
        match (&self.daemon, &self.haproxy) {
            (Some(d), _) => d.pid(),
            (_, Some(p)) => p.pid(),
            _ => 0,
        }
    }

    fn status(&self) -> Option<Status> {
        self.daemon.as_ref().and_then(|d| d.status().ok())
    }

    /// CPU-seconds the XDP program ran so far, and on how many packets.
    fn xdp(&self) -> Option<(f64, u64)> {
        let id = self.xdp_prog?;
        aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == id)
            .map(|p| (p.run_time().as_secs_f64(), p.run_count()))
    }

    fn log(&self) -> String {
        match (&self.daemon, &self.haproxy) {
            (Some(d), _) => d.log(),
            (_, Some(p)) => p.output(),
            _ => String::new(),
        }
    }
}

impl Drop for Lb<'_> {
    fn drop(&mut self) {
        self.daemon = None;
        if let Some(mut p) = self.haproxy.take() {
            let _ = p.stop();
        }
        if self.vip_added {
            let _ = self
                .topo
                .node("lb-1")
                .ip(["addr", "del", &format!("{VIP}/32"), "dev", "eth1"]);
        }
    }
}

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Counters read at the start and the end of a phase.
struct Mark {
    at: Instant,
    busy: f64,
    softirq: f64,
    other: f64,
    lb_cpu: f64,
    xdp: Option<(f64, u64)>,
    status: Option<Status>,
    /// The switch's ports: agent-1's (what the flood put on the switch: its rx) and lb-1's
    /// (frames it could not hand to lb-1, its queue full: its tx drops).
    flooder_port: LinkStats,
    lb_port: LinkStats,
    /// nstat counters of lb-1 and of the servers (summed).
    lb_kernel: Vec<u64>,
    servers_kernel: Vec<u64>,
}

const NSTAT: [&str; 4] = [
    "TcpExtSyncookiesSent",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtSyncookiesFailed",
];

fn kernel(topo: &Topology, nodes: &[&str]) -> Vec<u64> {
    NSTAT
        .iter()
        .map(|c| {
            nodes
                .iter()
                .map(|n| nstat(topo.node(n), c).unwrap_or(0))
                .sum()
        })
        .collect()
}

/// Softirq CPU-seconds of the whole machine since boot.
fn softirq() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let v: f64 = line
        .split_whitespace()
        .nth(7)
        .and_then(|x| x.parse().ok())
        .context("no softirq field in /proc/stat")?;
    Ok(v / clock_ticks())
}

fn mark(topo: &Topology, lb: &Lb) -> Result<Mark> {
    Ok(Mark {
        at: Instant::now(),
        busy: machine_busy()?,
        softirq: softirq()?,
        other: other_cpu(&[lb.pid()]),
        lb_cpu: process_cpu(lb.pid()),
        xdp: lb.xdp(),
        status: lb.status(),
        flooder_port: LinkStats::read(topo.switch(), topo.port("agent-1"))?,
        lb_port: LinkStats::read(topo.switch(), topo.port("lb-1"))?,
        lb_kernel: kernel(topo, &["lb-1"]),
        servers_kernel: kernel(topo, &SERVERS),
    })
}

/// What a phase cost and what the data plane counted.
#[derive(Debug, Default, Clone)]
struct Phase {
    seconds: f64,
    /// Machine busy CPU-seconds, minus other processes' (not the bench's, not the LB's).
    machine: f64,
    softirq: f64,
    lb_cpu: f64,
    xdp_cpu: Option<f64>,
    xdp_packets: Option<u64>,
    /// Frames agent-1 put on the switch (the flood), and frames toward lb-1 the switch dropped
    /// (lb-1's receive queue full; flood or not).
    flood_frames: u64,
    dropped: u64,
    new_flows: u64,
    table: Vec<(String, u64)>,
    drops: Vec<(String, u64)>,
    lb_kernel: Vec<u64>,
    servers_kernel: Vec<u64>,
}

fn phase(a: &Mark, b: &Mark) -> Phase {
    let status_delta = |f: &dyn Fn(&Status) -> Vec<(String, u64)>| -> Vec<(String, u64)> {
        match (&a.status, &b.status) {
            (Some(x), Some(y)) => {
                let before = f(x);
                f(y).into_iter()
                    .map(|(k, v)| {
                        let old = before
                            .iter()
                            .find(|(kk, _)| *kk == k)
                            .map_or(0, |(_, v)| *v);
                        (k, v.saturating_sub(old))
                    })
                    .filter(|(_, v)| *v > 0)
                    .collect()
            }
            _ => Vec::new(),
        }
    };

    Phase {
        seconds: (b.at - a.at).as_secs_f64(),
        machine: (b.busy - a.busy) - (b.other - a.other),
        softirq: b.softirq - a.softirq,
        lb_cpu: b.lb_cpu - a.lb_cpu,
        xdp_cpu: a.xdp.zip(b.xdp).map(|(x, y)| y.0 - x.0),
        xdp_packets: a.xdp.zip(b.xdp).map(|(x, y)| y.1 - x.1),
        flood_frames: b.flooder_port.since(&a.flooder_port).rx_packets,
        dropped: b.lb_port.since(&a.lb_port).tx_dropped,
        new_flows: status_delta(&|s| {
            vec![(
                "new".into(),
                s.services.iter().map(|x| x.new_flows).sum::<u64>(),
            )]
        })
        .first()
        .map_or(0, |(_, v)| *v),
        table: status_delta(&|s| s.flow_table.clone().into_iter().collect()),
        drops: status_delta(&|s| {
            s.packets
                .iter()
                .filter(|(k, _)| k.starts_with("drop_"))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        }),
        lb_kernel: b
            .lb_kernel
            .iter()
            .zip(&a.lb_kernel)
            .map(|(y, x)| y.saturating_sub(*x))
            .collect(),
        servers_kernel: b
            .servers_kernel
            .iter()
            .zip(&a.servers_kernel)
            .map(|(y, x)| y.saturating_sub(*x))
            .collect(),
    }
}

/// One run of a target.
struct Run {
    target: Target,
    flood: FloodReport,
    quiet: Phase,
    flooded: Phase,
    quiet_new: NewSummary,
    flood_new: NewSummary,
    long_lived: usize,
    /// Long-lived connections lost, and how many of them during the quiet phase.
    lost: usize,
    lost_quiet: usize,
    first_failures: Vec<String>,
}

impl Run {
    /// Flood SYNs the load balancer took during the flood phase: k3s-xdp's new flows (each
    /// flood SYN is a new tuple; the legitimate ones are a few hundred a second), HAProxy's
    /// lb-1 kernel's SYN cookies (its SYN queue is full from the first milliseconds).
    fn taken(&self) -> u64 {
        match self.target {
            Target::Haproxy => self.flooded.lb_kernel.first().copied().unwrap_or(0),
            _ => self.flooded.new_flows,
        }
    }

    /// Millions of SYNs sent (at least a little, for divisions).
    fn sent_m(&self) -> f64 {
        self.flood.sent.max(1) as f64 / 1e6
    }
}

fn run_target(topo: &Topology, target: Target, seed: u64) -> Result<Run> {
    let lb = Lb::start(topo, target)?;
    let spec = LegitSpec {
        target: SocketAddrV4::new(VIP, PORT),
        agents: LEGIT_AGENTS.iter().map(|a| a.to_string()).collect(),
        interval: INTERVAL,
        limit: QUIET + FLOOD_TIME + TAIL + Duration::from_secs(10),
        timeout: TIMEOUT,
        long_lived: LONG_LIVED,
        echo_every: ECHO_EVERY,
    };
    // HAProxy starts without a readiness signal: retry the long-lived connections' opening.
    let deadline = Instant::now() + Duration::from_secs(20);
    let legit = loop {
        match Legit::start(topo, &spec) {
            Ok(l) => break l,
            Err(e) if Instant::now() > deadline => {
                bail!("{}: not serving: {e:#}\n{}", target.label(), lb.log())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let m0 = mark(topo, &lb)?;
    std::thread::sleep(QUIET);
    let m1 = mark(topo, &lb)?;
    let flood = Flood::start(
        topo.node("agent-1"),
        FloodSpec {
            target: SocketAddrV4::new(VIP, PORT),
            src_mac: topo.mac("agent-1"),
            dst_mac: topo.mac("lb-1"),
            max_packets: FLOOD_PACKETS,
            max_time: FLOOD_TIME,
            seed,
        },
    )?
    .finish()?;
    let m2 = mark(topo, &lb)?;
    std::thread::sleep(TAIL);
    let report: LegitReport = legit.finish();
    let quiet_new = NewSummary::of(&report.new_within(m0.at, m1.at));
    let flood_window = report.new_within(m1.at, m2.at + TAIL);
    let flood_new = NewSummary::of(&flood_window);
    let lost: Vec<_> = report.lost_long_lived();
    let lost_quiet = lost
        .iter()
        .filter(|l| l.lost.as_ref().is_some_and(|(at, _)| *at < m1.at))
        .count();
    let mut first_failures: Vec<String> = flood_window
        .iter()
        .filter_map(|c| c.result.as_ref().err().cloned())
        .take(3)
        .collect();
    first_failures.extend(lost.iter().take(2).filter_map(|l| {
        l.lost.as_ref().map(|(at, e)| {
            format!(
                "long-lived: {e} ({:.1} s after the flood began)",
                at.saturating_duration_since(m1.at).as_secs_f64()
            )
        })
    }));
    let run = Run {
        target,
        flood,
        quiet: phase(&m0, &m1),
        flooded: phase(&m1, &m2),
        quiet_new,
        flood_new,
        long_lived: report.long_lived.len(),
        lost: lost.len(),
        lost_quiet,
        first_failures,
    };
    drop(lb);
    Ok(run)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn progress(round: usize, r: &Run) {
    eprintln!(
        "flood round {round} {:<42} {:>7.0} SYN/s sent, {:>7.0}/s taken by the LB; new connections {}/{} ({}/{} quiet), p99 {} ({} quiet); long-lived lost {}/{}; machine {:.2} CPUs",
        r.target.label(),
        r.flood.rate(),
        r.taken() as f64 / r.flooded.seconds,
        r.flood_new.served,
        r.flood_new.attempts,
        r.quiet_new.served,
        r.quiet_new.attempts,
        ms(r.flood_new.p99),
        ms(r.quiet_new.p99),
        r.lost,
        r.long_lived,
        r.flooded.machine / r.flooded.seconds,
    );
}

/// Runs the benchmark; returns its markdown report and adds the ratios to `summary`.
pub fn run(summary: &mut Vec<Ratio>) -> Result<String> {
    let rounds = std::env::var("K3S_XDP_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| (1..=10).contains(r))
        .unwrap_or(ROUNDS);
    let started = Instant::now();
    // BPF run-time statistics while this fd is open (released on drop).
    let stats: Option<OwnedFd> = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let mut topo = Topology::builder().without("lb-2").build()?;
    let queues = prepare_lab(&mut topo)?;
    route_flood_replies(&topo, "agent-1", &["lb-1"], &[])?;
    let backends = Backends::seed(&topo, Kind::Tcp)?;
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..rounds {
        for k in 0..TARGETS.len() {
            let target = TARGETS[(k + round) % TARGETS.len()];
            let seed = 21_000 + (round * TARGETS.len() + k) as u64;
            let r = run_target(&topo, target, seed)
                .with_context(|| format!("flood, {}, round {}", target.label(), round + 1))?;
            progress(round + 1, &r);
            runs.push(r);
            // The backends' kernels give up on the flood's half-open connections (SYN-ACKs
            // retransmitted to nowhere) meanwhile.
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    drop(backends);
    drop(topo);
    let bpf_stats = stats.is_some();
    drop(stats);
    Ok(report(
        &runs,
        rounds,
        queues,
        bpf_stats,
        started.elapsed(),
        summary,
    ))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn list(v: &[(String, u64)]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn report(
    runs: &[Run],
    rounds: usize,
    queues: usize,
    bpf_stats: bool,
    took: Duration,
    summary: &mut Vec<Ratio>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## SYN flood (`bench flood`)\n\n\
         lb-1 alone in front of server-1..3 (echo backends), {queues} queue(s) per veth. agent-1 floods VIP:6443 with SYNs from random \
         198.51.100.0/24 sources and ports (AF_PACKET, batches of 64, as fast as it can, at most {} s and {} SYNs); agent-2 and \
         agent-3 each start a new connection every {} ms (client line, greeting, echo, close; {} s timeouts) and keep {} long-lived \
         connections echoing a line every {} s. Each run: {} s quiet (the baseline), then the flood; new connections count as \
         flooded until {} s after it. {rounds} round(s), targets interleaved; {:.0} s in all. BPF statistics: {}.\n",
        FLOOD_TIME.as_secs(),
        FLOOD_PACKETS,
        INTERVAL.as_millis(),
        TIMEOUT.as_secs(),
        LONG_LIVED,
        ECHO_EVERY.as_secs(),
        QUIET.as_secs(),
        TAIL.as_secs(),
        took.as_secs_f64(),
        if bpf_stats { "on" } else { "unavailable" },
    );
    o.push_str(
        "### Flood and legitimate traffic\n\n\
         | target | round | SYNs sent/s (frames on the switch/s) | taken by the LB/s (frames dropped at lb-1's queue/s) | new conns served (quiet) | connect p50 / p99 flooded | p50 / p99 quiet | SYN sent again | long-lived lost |\n\
         |---|---:|---:|---:|---:|---|---|---:|---:|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let f = &r.flooded;
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} ({:.0}) | {:.0} ({:.0}) | {}/{} = {:.1}% ({}/{}) | {} / {} | {} / {} | {} | {}/{}{} |",
            r.target.label(),
            i / TARGETS.len() + 1,
            r.flood.rate(),
            f.flood_frames as f64 / f.seconds,
            r.taken() as f64 / f.seconds,
            f.dropped as f64 / f.seconds,
            r.flood_new.served,
            r.flood_new.attempts,
            r.flood_new.served_share() * 100.0,
            r.quiet_new.served,
            r.quiet_new.attempts,
            ms(r.flood_new.p50),
            ms(r.flood_new.p99),
            ms(r.quiet_new.p50),
            ms(r.quiet_new.p99),
            r.flood_new.slow,
            r.lost,
            r.long_lived,
            if r.lost_quiet > 0 {
                format!(" ({} in the quiet phase)", r.lost_quiet)
            } else {
                String::new()
            },
        );
    }
    o.push_str(
        "\n### CPU during the flood (CPU-seconds per second)\n\n\
         Machine: every CPU's busy time (`/proc/stat`) minus other processes' (someone else's builds), the flooder and the \
         backends included: on 2 cores the kernel's work for lb-1 (HAProxy's SYN handling, SYN cookies) cannot be told from \
         the rest. XDP: the program's own run time on lb-1 (BPF statistics). LB process: the daemon's or HAProxy's user + \
         system time.\n\n\
         | target | round | machine (softirq) | machine per 1M SYNs sent | XDP program | XDP ns/packet | LB process | quiet: machine / LB process |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let f = &r.flooded;
        let q = &r.quiet;
        let xdp = f
            .xdp_cpu
            .map_or("-".into(), |c| format!("{:.3}", c / f.seconds));
        let per = match (f.xdp_cpu, f.xdp_packets) {
            (Some(c), Some(n)) if n > 0 => format!("{:.0}", c * 1e9 / n as f64),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {:.2} ({:.2}) | {:.2} | {xdp} | {per} | {:.3} | {:.2} / {:.3} |",
            r.target.label(),
            i / TARGETS.len() + 1,
            f.machine / f.seconds,
            f.softirq / f.seconds,
            f.machine / r.sent_m(),
            f.lb_cpu / f.seconds,
            q.machine / q.seconds,
            q.lb_cpu / q.seconds,
        );
    }
    o.push_str(
        "\n### Flow table and kernel counters during the flood\n\n\
         k3s-xdp: new flows (per service), the flow-table events (`k3s-xdp status`'s `Flow tables full`), the drop reasons. \
         Kernel (`nstat`): SYN cookies sent, listen overflows and drops, cookies that failed, on lb-1 and on the servers \
         (summed): with k3s-xdp's SYN flood guard off the flood reaches the servers, with it on it stops at lb-1 (`drop_syn_flood`); with HAProxy, lb-1's kernel answers it.\n\n\
         | target | round | new flows | table events | drops | lb-1: cookies / overflows / drops / failed | servers: cookies / overflows / drops / failed |\n\
         |---|---:|---:|---|---|---|---|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let f = &r.flooded;
        let k = |v: &[u64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let xdp = r.target != Target::Haproxy;
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.target.label(),
            i / TARGETS.len() + 1,
            if xdp {
                f.new_flows.to_string()
            } else {
                "-".into()
            },
            if xdp { list(&f.table) } else { "-".into() },
            if xdp { list(&f.drops) } else { "-".into() },
            k(&f.lb_kernel),
            k(&f.servers_kernel),
        );
    }
    let failures: Vec<String> = runs
        .iter()
        .filter(|r| !r.first_failures.is_empty())
        .map(|r| format!("- {}: {}", r.target.label(), r.first_failures.join("; ")))
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(
            o,
            "\nFirst failures seen (new connections during the flood, then long-lived ones):\n{}",
            failures.join("\n")
        );
    }

    // Ratios against baselines of the same run: each target's quiet phase, and HAProxy.
    let of = |t: Target| runs.iter().filter(move |r| r.target == t);
    let share = |t: Target| mean(of(t).map(|r| r.flood_new.served_share()));
    let quiet_share = |t: Target| mean(of(t).map(|r| r.quiet_new.served_share()));
    let p99 = |t: Target| mean(of(t).map(|r| r.flood_new.p99.as_secs_f64() * 1e3));
    let quiet_p99 = |t: Target| mean(of(t).map(|r| r.quiet_new.p99.as_secs_f64() * 1e3));
    let taken = |t: Target| mean(of(t).map(|r| r.taken() as f64 / r.flooded.seconds));
    let machine_per_m = |t: Target| mean(of(t).map(|r| r.flooded.machine / r.sent_m()));
    let lost = |t: Target| of(t).map(|r| r.lost).sum::<usize>();
    let long = |t: Target| of(t).map(|r| r.long_lived).sum::<usize>();
    let _ = writeln!(
        o,
        "\n### Ratios (means over the rounds)\n\n| figure | {} |\n|---|{}",
        TARGETS.map(Target::short).join(" | "),
        "---:|".repeat(TARGETS.len())
    );
    let row = |o: &mut String, what: &str, f: &dyn Fn(Target) -> String| {
        let _ = writeln!(o, "| {what} | {} |", TARGETS.map(f).join(" | "));
    };
    row(&mut o, "new connections served, flooded / quiet", &|t| {
        format!(
            "{:.3}x ({:.1}% / {:.1}%)",
            share(t) / quiet_share(t).max(1e-9),
            share(t) * 100.0,
            quiet_share(t) * 100.0
        )
    });
    row(&mut o, "connect p99, flooded / quiet", &|t| {
        format!(
            "{:.1}x ({:.2} / {:.2} ms)",
            p99(t) / quiet_p99(t).max(1e-9),
            p99(t),
            quiet_p99(t)
        )
    });
    row(&mut o, "long-lived connections lost", &|t| {
        format!("{}/{}", lost(t), long(t))
    });
    row(
        &mut o,
        "flood SYNs taken by the LB per second, / HAProxy's",
        &|t| {
            format!(
                "{:.2}x ({:.0}/s)",
                taken(t) / taken(Target::Haproxy).max(1e-9),
                taken(t)
            )
        },
    );
    row(&mut o, "machine CPU per 1M SYNs sent, / HAProxy's", &|t| {
        format!(
            "{:.2}x ({:.2} s)",
            machine_per_m(t) / machine_per_m(Target::Haproxy).max(1e-9),
            machine_per_m(t)
        )
    });
    let xdp_per_m =
        |t: Target| mean(of(t).filter_map(|r| r.flooded.xdp_cpu.map(|c| c / r.sent_m())));
    row(
        &mut o,
        "LB's own CPU: XDP program per 1M flood SYNs sent (the SYNs, and the servers' SYN-ACKs to those forwarded) / HAProxy process, flooded and quiet (CPU-s/s)",
        &|t| {
            if t == Target::Haproxy {
                format!(
                    "{:.3} / {:.3} (the flood stays in lb-1's kernel)",
                    mean(of(t).map(|r| r.flooded.lb_cpu / r.flooded.seconds)),
                    mean(of(t).map(|r| r.quiet.lb_cpu / r.quiet.seconds)),
                )
            } else {
                format!("{:.2} s", xdp_per_m(t))
            }
        },
    );

    for t in TARGETS {
        let met = share(t) >= 0.99 && lost(t) == 0;
        summary.push(Ratio {
            what: format!(
                "flood: {}: new connections served under flood / quiet",
                t.label()
            ),
            value: format!(
                "{:.1}%, {} of {} long-lived lost",
                share(t) * 100.0,
                lost(t),
                long(t)
            ),
            baseline: format!("{:.1}% quiet", quiet_share(t) * 100.0),
            ratio: share(t) / quiet_share(t).max(1e-9),
            target: format!(
                ">= 99% served and none lost: {}",
                if met { "met" } else { "missed" }
            ),
        });
    }
    summary.push(Ratio {
        what: "flood: machine CPU per 1M SYNs sent, k3s-xdp (defaults: guard on) / HAProxy".into(),
        value: format!("{:.2} s", machine_per_m(Target::Xdp)),
        baseline: format!("{:.2} s", machine_per_m(Target::Haproxy)),
        ratio: machine_per_m(Target::Xdp) / machine_per_m(Target::Haproxy).max(1e-9),
        target: "a fraction of HAProxy's: see the report (k3s-xdp's figure holds the servers' SYN handling too)".into(),
    });
    let _ = writeln!(o);
    for r in summary.iter().filter(|r| r.what.starts_with("flood:")) {
        let _ = writeln!(
            o,
            "- {}: {} against {} ({:.2}x); {}",
            r.what, r.value, r.baseline, r.ratio, r.target
        );
    }
    o
}
