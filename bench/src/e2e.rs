//! `cargo xtask bench e2e`: k3s-xdp against what the seeds install today (HAProxy, nginx
//! stream), on the lab topology, with the same client load through each (issue 6).
//!
//! One topology for the whole run: lb-1, server-1..3 with the bench server of [`crate::load`]
//! on port 6443, agent-1..3 as clients; [`prepare_lab`] makes its software network closer to
//! hosts on a switch (no iptables on the bridge, one veth queue per CPU). Targets, interleaved
//! repetition by repetition (the order rotates each repetition):
//! - direct: the agents connect to server-1 itself, no load balancer (the machine's limit);
//! - k3s-xdp in nat mode and in dsr mode on lb-1 (dsr: the servers hold the VIP on `lo` for
//!   that run only);
//! - HAProxy with seed 004's haproxy.cfg, addresses adapted, in lb-1's namespace;
//! - nginx with the seeds' `stream {}` config, in lb-1's namespace.
//!
//! For HAProxy and nginx the bench puts the VIP on lb-1's eth1 itself (k3s-xdp does it
//! without `[vrrp]`). Each target runs four phases: new connections as fast as possible
//! (connect, 16-byte request, 64-byte reply, close), the same with the server closing first
//! (as HTTP servers answering `Connection: close` do, which leaves TIME_WAIT on the servers),
//! long downloads, and paced connections for latency. The clients' retransmitted SYNs
//! (`nstat`'s `TcpExtTCPSynRetrans`) are counted in every phase. CPU is read from `/proc/stat` (the whole machine), from the load balancer's
//! own processes and from the XDP program's BPF statistics; after the repetitions, direct,
//! k3s-xdp nat and HAProxy run once more under `perf record` for a profile.
//! [`crate::e2e_report`] turns it into the report and the plots. `K3S_XDP_BENCH_REPS=1`
//! makes a quick run.

use crate::{
    e2e_report::Report,
    load::{self, quantile, Outcome, Servers, Spec, Work},
    profile,
};
use anyhow::{bail, Context, Result};
use k3s_xdp_tests::{
    daemon::Daemon,
    netns::{run_command, NetNs, Process, RUN_TIMEOUT},
    topology::{Topology, AGENTS, IFACE, SERVERS, VIP},
};
use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddrV4, TcpStream},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub const PORT: u16 = 6443;
/// Threads of each server (sharing the port), so that direct, to one server, can use every
/// CPU as the load balancers' three servers do.
pub const SERVER_THREADS: usize = 2;
/// Repetitions; `K3S_XDP_BENCH_REPS` overrides it (1 for a quick look).
pub const REPS: usize = 5;
/// Connection-rate phase: length, connections in flight per agent, reply size.
pub const CONN_PHASE: Duration = Duration::from_secs(4);
pub const CONN_TASKS: usize = 32;
pub const REPLY: usize = 64;
/// Download phase: length and transfers in flight per agent.
pub const DOWNLOAD_PHASE: Duration = Duration::from_secs(3);
pub const DOWNLOAD_TASKS: usize = 2;
/// Latency phase: one connection at a time per agent, one started every `PACE`.
pub const LATENCY_PHASE: Duration = Duration::from_secs(2);
pub const PACE: Duration = Duration::from_millis(2);
pub const WARMUP: Duration = Duration::from_millis(500);
/// How long the machine is left idle each repetition to measure its background CPU use.
const IDLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Direct,
    XdpNat,
    XdpDsr,
    Haproxy,
    Nginx,
}

pub const TARGETS: [Target; 5] = [
    Target::Direct,
    Target::XdpNat,
    Target::XdpDsr,
    Target::Haproxy,
    Target::Nginx,
];

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct to server-1",
            Target::XdpNat => "k3s-xdp nat",
            Target::XdpDsr => "k3s-xdp dsr",
            Target::Haproxy => "HAProxy",
            Target::Nginx => "nginx stream",
        }
    }

    fn addr(self) -> SocketAddrV4 {
        match self {
            Target::Direct => SocketAddrV4::new(addr("server-1"), PORT),
            _ => SocketAddrV4::new(VIP, PORT),
        }
    }

    pub fn index(self) -> usize {
        TARGETS.iter().position(|t| *t == self).unwrap_or(0)
    }
}

fn addr(node: &str) -> std::net::Ipv4Addr {
    k3s_xdp_tests::topology::seed_addr(node).unwrap_or(VIP)
}

/// Everything a target's run measured.
#[derive(Debug, Default)]
pub struct Run {
    pub conn: Phase,
    /// New connections that the server closes first.
    pub closes: Phase,
    pub download: Phase,
    pub latency: Phase,
}

/// One phase: what the clients saw and the CPU spent meanwhile.
#[derive(Debug, Default)]
pub struct Phase {
    pub outcome: Outcome,
    pub seconds: f64,
    /// CPU-seconds the whole machine was busy (user, nice, system, irq, softirq), minus
    /// other processes' ([`other_cpu`]) and the kernel's background measured idle in the same
    /// repetition.
    pub machine_cpu: f64,
    /// CPU-seconds of processes that are not the benchmark's (someone else's work).
    pub other_cpu: f64,
    /// CPU-seconds of the load balancer's processes (user + system).
    pub lb_process_cpu: f64,
    /// CPU-seconds in the XDP program and the packets it ran on (BPF run-time statistics),
    /// if known.
    pub xdp_cpu: Option<f64>,
    pub xdp_packets: Option<u64>,
    /// With a profile: the share of each of [`profile::CATEGORIES`] in the busy samples.
    pub profile: Option<(Vec<f64>, u64)>,
    /// SYNs the clients sent again (a SYN lost, or refused by a server's TIME_WAIT).
    pub syn_retransmits: u64,
    /// Segments the servers refused because they met a 4-tuple in TIME_WAIT (PAWS), which
    /// explain that many retransmitted SYNs.
    pub paws: u64,
    /// k3s-xdp runs: packets the XDP program dropped (every `drop_*` reason), each a lost SYN
    /// or segment.
    pub xdp_drops: u64,
}

/// The targets profiled with perf after the measured repetitions.
pub const PROFILED: [Target; 3] = [Target::Direct, Target::XdpNat, Target::Haproxy];

/// Runs the end-to-end benchmark; returns its markdown report and adds the issue's ratios to
/// `summary`.
pub fn run_with_summary(machine: &str, summary: &mut Vec<crate::Ratio>) -> Result<String> {
    let versions = versions()?;
    let reps = std::env::var("K3S_XDP_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| (1..=50).contains(r))
        .unwrap_or(REPS);
    let started = Instant::now();
    // BPF run-time statistics while this fd is open (released on drop, so nothing stays on).
    let stats: Option<OwnedFd> = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let mut topo = Topology::builder().without("lb-2").build()?;
    let dir = TempDir::create(&format!("k3s-xdp-bench-e2e-{}", topo.prefix()))?;
    let queues = prepare_lab(&mut topo)?;
    let server_ns: Vec<&NetNs> = SERVERS.iter().map(|s| topo.node(s)).collect();
    let servers = Servers::start(&server_ns, PORT, SERVER_THREADS)?;

    let mut runs: Vec<Vec<Run>> = TARGETS.iter().map(|_| Vec::new()).collect();
    let mut idle_rates = Vec::new();
    let mut idle = 0.0;
    let mut last_nat = None;
    for rep in 0..reps {
        idle = idle_rate()?;
        idle_rates.push(idle);
        for k in 0..TARGETS.len() {
            let target = TARGETS[(k + rep) % TARGETS.len()];
            settle_before(target, last_nat);
            let r = run_target(&topo, &dir.path, target, idle, stats.is_some(), false)
                .with_context(|| format!("e2e, {}, repetition {}", target.label(), rep + 1))?;
            if target == Target::XdpNat {
                last_nat = Some(Instant::now());
            }
            progress(&format!("{}/{reps}", rep + 1), target, &r);
            runs[target.index()].push(r);
        }
    }
    // Where the CPU goes, in a pass of its own (perf costs a little CPU itself).
    let mut profiles: Vec<Option<Run>> = TARGETS.iter().map(|_| None).collect();
    let profiling = profile::available();
    if profiling {
        for target in PROFILED {
            settle_before(target, last_nat);
            let r = run_target(&topo, &dir.path, target, idle, stats.is_some(), true)
                .with_context(|| format!("e2e, {}, profile", target.label()))?;
            if target == Target::XdpNat {
                last_nat = Some(Instant::now());
            }
            progress("profile", target, &r);
            profiles[target.index()] = Some(r);
        }
    }
    drop(servers);
    drop(topo);
    drop(stats);
    let report = Report::new(runs, profiles, profiling, idle_rates, versions, queues);
    let results = crate::results_dir();
    std::fs::create_dir_all(&results)?;
    let plots = report.plots(&results)?;
    let text = report.markdown(machine, &plots, started.elapsed(), summary);
    Ok(text)
}

/// Each k3s-xdp nat run starts a new daemon, which does not know the SNAT ports its
/// predecessor's connections left in the servers' TIME_WAIT (60 s): a nat run starts at least
/// this long after the previous one ended, as an operator restarting a daemon under such load
/// would have to wait (see the README's "Servers that close first").
const NAT_RESTART_GAP: Duration = Duration::from_secs(66);

/// Before a k3s-xdp nat run, waits until `NAT_RESTART_GAP` has passed since the last one
/// ended (`last_nat`).
fn settle_before(target: Target, last_nat: Option<Instant>) {
    if target != Target::XdpNat {
        return;
    }
    if let Some(ended) = last_nat {
        let wait = NAT_RESTART_GAP.saturating_sub(ended.elapsed());
        if !wait.is_zero() {
            eprintln!(
                "e2e: waiting {:.0} s for the servers' TIME_WAIT of the last nat run",
                wait.as_secs_f64()
            );
            std::thread::sleep(wait);
        }
    }
}

/// Receive queues per veth: one per CPU, at most this many.
const MAX_QUEUES: usize = 8;

/// Makes the lab's software network behave more like hosts on a switch (for every target
/// alike); returns the number of queues per veth.
pub(crate) fn prepare_lab(topo: &mut Topology) -> Result<usize> {
    for node in AGENTS.iter().chain(["lb-1"].iter()) {
        // Tens of thousands of short connections a second from one address to one VIP:port
        // reuse ports in TIME_WAIT; what any busy client or proxy host sets.
        let ns = topo.node(node);
        ns.run("sysctl", ["-q", "-w", "net.ipv4.tcp_tw_reuse=1"])?;
        ns.run(
            "sysctl",
            ["-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"],
        )?;
    }
    // The bridge stands for a switch: no iptables on bridged frames (br_netfilter's hooks
    // run on every frame otherwise, a cost a real switch does not have).
    for table in ["iptables", "ip6tables", "arptables"] {
        topo.switch().run(
            "sysctl",
            ["-q", "-w", &format!("net.bridge.bridge-nf-call-{table}=0")],
        )?;
    }
    // One receive queue per CPU on every veth, as a NIC has RSS queues: with one, a veth's
    // receive work (its NAPI poll, with the XDP program in it) runs on one CPU at a time,
    // and every frame to lb-1 waits for that one.
    let queues = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_QUEUES);
    if queues < 2 {
        return Ok(1);
    }
    let n = queues.to_string();
    // Channels change with no XDP program attached (the kernel refuses some changes under
    // one, and XDP_TX toward a queue added under a program fails): the pass programs come
    // off and go back on after.
    let with_pass: Vec<String> = topo
        .pass_program_nodes()
        .iter()
        .map(|n| n.to_string())
        .collect();
    for node in &with_pass {
        topo.detach_pass_program(node)?;
    }
    for node in topo.nodes() {
        topo.switch()
            .run("ethtool", ["-L", &node.port, "rx", &n, "tx", &n])
            .with_context(|| format!("{n} queues on switch port {}", node.port))?;
        node.ns
            .run("ethtool", ["-L", IFACE, "rx", &n, "tx", &n])
            .with_context(|| format!("{n} queues on {}'s eth1", node.name))?;
    }
    for node in &with_pass {
        topo.attach_pass_program(node)?;
    }
    // Frames the bridge forwards have no socket to choose a transmit queue, and would all
    // take queue 0 (so the next node's receive queue 0): spread them by CPU with XPS.
    let mut script = String::new();
    for node in topo.nodes() {
        for q in 0..queues {
            let _ = write!(
                script,
                "echo {:x} > /sys/class/net/{}/queues/tx-{q}/xps_cpus; ",
                1u32 << q,
                node.port
            );
        }
    }
    topo.switch()
        .run("sh", ["-c", &script])
        .context("XPS on the switch ports")?;
    Ok(queues)
}

/// One line on stderr per target run.
fn progress(what: &str, target: Target, r: &Run) {
    let c = &r.conn;
    eprintln!(
        "e2e {what} {:<20} {:>6.0} conn/s ({:.1} CPUs, {:.0} CPU-ms per 1k, {} SYNs retransmitted, {} PAWS, {} XDP drops), server closes first {:>6.0} conn/s ({} SYNs retransmitted, {} PAWS, {} XDP drops), {:>5.2} Gbit/s, connect p50 {} µs",
        target.label(),
        c.outcome.connections as f64 / c.seconds,
        (c.machine_cpu + c.other_cpu) / c.seconds,
        c.machine_cpu * 1e6 / c.outcome.connections.max(1) as f64,
        c.syn_retransmits,
        c.paws,
        c.xdp_drops,
        r.closes.outcome.connections as f64 / r.closes.seconds,
        r.closes.syn_retransmits,
        r.closes.paws,
        r.closes.xdp_drops,
        r.download.outcome.bytes as f64 * 8.0 / r.download.seconds / 1e9,
        quantile(&mut r.latency.outcome.connect_us.clone(), 0.5),
    );
}

/// "HAProxy 2.6.12", "nginx 1.22.1", from the installed binaries.
fn versions() -> Result<(String, String)> {
    let h = run_command("haproxy", ["-v"], RUN_TIMEOUT)
        .context("haproxy is not installed: `cargo xtask setup --bench` installs it")?;
    let h = String::from_utf8_lossy(&h.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap_or("?")
        .split('-')
        .next()
        .unwrap_or("?")
        .to_string();
    let n = run_command("nginx", ["-v"], RUN_TIMEOUT)
        .context("nginx is not installed: `cargo xtask setup --bench` installs it")?;
    let n = String::from_utf8_lossy(&n.stderr)
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or("?")
        .to_string();
    if !Path::new(NGINX_STREAM_MODULE).exists() {
        bail!("{NGINX_STREAM_MODULE} is missing: install libnginx-mod-stream (`cargo xtask setup --bench`)");
    }
    Ok((h, n))
}

/// A directory under the system's temp dir, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Starts `target`, runs the three phases (the connection and download phases under perf
/// when `profile`), stops it.
fn run_target(
    topo: &Topology,
    dir: &Path,
    target: Target,
    idle: f64,
    bpf_stats: bool,
    profile: bool,
) -> Result<Run> {
    let lb = Lb::start(topo, dir, target, bpf_stats)?;
    wait_ready(topo, target.addr(), lb.log().as_deref())?;
    let at = |d: Duration| Instant::now() + d;
    let conns = |deadline| Spec {
        target: target.addr(),
        work: Work::Connections { reply: REPLY },
        tasks: CONN_TASKS,
        deadline,
        max_per_task: 1_000_000,
    };
    let perf = dir.join("perf.data");
    let profiled = |length: Duration, spec: &dyn Fn(Instant) -> Spec| -> Result<Phase> {
        let recording = match profile {
            true => Some(profile::Recording::start(&perf)?),
            false => None,
        };
        let mut phase = load_phase(topo, &lb, idle, spec(at(length)))?;
        if let Some(r) = recording {
            phase.profile = Some(r.finish()?);
        }
        Ok(phase)
    };
    // Neighbour entries, flow tables, proxy buffers: not measured.
    load_phase(topo, &lb, idle, conns(at(WARMUP)))?;
    let conn = profiled(CONN_PHASE, &conns)?;
    let closes = load_phase(
        topo,
        &lb,
        idle,
        Spec {
            target: target.addr(),
            work: Work::ServerCloses { reply: REPLY },
            tasks: CONN_TASKS,
            deadline: at(CONN_PHASE),
            max_per_task: 1_000_000,
        },
    )?;
    let download = profiled(DOWNLOAD_PHASE, &|deadline| Spec {
        target: target.addr(),
        work: Work::Download,
        tasks: DOWNLOAD_TASKS,
        deadline,
        max_per_task: 1000,
    })?;
    let latency = load_phase(
        topo,
        &lb,
        idle,
        Spec {
            target: target.addr(),
            work: Work::Paced {
                reply: REPLY,
                every: PACE,
            },
            tasks: 1,
            deadline: at(LATENCY_PHASE),
            max_per_task: 100_000,
        },
    )?;
    for (name, p) in [
        ("connection", &conn),
        ("server-closes-first", &closes),
        ("download", &download),
    ] {
        let o = &p.outcome;
        if o.connections == 0 || o.errors * 100 > o.connections {
            bail!(
                "{name} phase: {} completed, {} errors (first: {})\n{}",
                o.connections,
                o.errors,
                o.first_error.as_deref().unwrap_or("-"),
                lb.log().unwrap_or_default()
            );
        }
    }
    drop(lb);
    Ok(Run {
        conn,
        closes,
        download,
        latency,
    })
}

/// Runs `spec` from every agent at once; the CPU spent meanwhile.
fn load_phase(topo: &Topology, lb: &Lb, idle: f64, spec: Spec) -> Result<Phase> {
    let cpu0 = machine_busy()?;
    let other0 = other_cpu(&lb.pids);
    let lb0 = lb.process_cpu();
    let xdp0 = lb.xdp_stats();
    let syn0 = syn_retransmits(topo)?;
    let paws0 = paws(topo)?;
    let drops0 = lb.xdp_drops();
    let t0 = Instant::now();
    let agents: Vec<&NetNs> = AGENTS.iter().map(|a| topo.node(a)).collect();
    let outcome = load::run_agents(&agents, spec);
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = machine_busy()? - cpu0;
    let other = other_cpu(&lb.pids) - other0;
    let xdp1 = lb.xdp_stats();
    let syn_retransmits = syn_retransmits(topo)?.saturating_sub(syn0);
    let paws = paws(topo)?.saturating_sub(paws0);
    let xdp_drops = lb.xdp_drops().saturating_sub(drops0);
    let outcome = outcome?;
    Ok(Phase {
        outcome,
        seconds,
        machine_cpu: (cpu - other - idle * seconds).max(0.0),
        other_cpu: other,
        lb_process_cpu: lb.process_cpu() - lb0,
        xdp_cpu: xdp0.zip(xdp1).map(|(a, b)| b.0 - a.0),
        xdp_packets: xdp0.zip(xdp1).map(|(a, b)| b.1 - a.1),
        profile: None,
        syn_retransmits,
        paws,
        xdp_drops,
    })
}

/// The servers' refusals of segments that met a TIME_WAIT (PAWS) so far.
fn paws(topo: &Topology) -> Result<u64> {
    SERVERS
        .iter()
        .map(|s| k3s_xdp_tests::traffic::nstat(topo.node(s), "TcpExtPAWSTimewait"))
        .sum()
}

/// The agents' retransmitted SYNs so far (`nstat`, absolute, history untouched).
fn syn_retransmits(topo: &Topology) -> Result<u64> {
    AGENTS
        .iter()
        .map(|a| k3s_xdp_tests::traffic::nstat(topo.node(a), "TcpExtTCPSynRetrans"))
        .sum()
}

/// One request through `target` from every agent, retried for up to 20 s.
fn wait_ready(topo: &Topology, target: SocketAddrV4, log: Option<&str>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for agent in AGENTS {
        loop {
            let r = topo.node(agent).enter(|| -> std::io::Result<()> {
                let t = Duration::from_millis(500);
                let mut s = TcpStream::connect_timeout(&target.into(), t)?;
                s.set_read_timeout(Some(t))?;
                let mut req = [0u8; 16];
                req[..4].copy_from_slice(b"KXB1");
                req[8] = 8;
                s.write_all(&req)?;
                s.read_exact(&mut [0u8; 8])
            })?;
            match r {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "{agent} gets no answer through {target}: {e}\n{}",
                        log.unwrap_or("")
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Ok(())
}

const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The load balancer of one run, stopped and undone on drop: its process (by PID), the VIP
/// the bench added, the dsr servers' VIP on `lo`.
struct Lb<'a> {
    topo: &'a Topology,
    daemon: Option<Daemon>,
    process: Option<Process>,
    /// The load balancer's processes (for their CPU time).
    pids: Vec<u32>,
    /// The XDP program on lb-1's eth1, if k3s-xdp.
    xdp_prog: Option<u32>,
    vip_on_lb: bool,
    vip_on_servers: bool,
}

impl<'a> Lb<'a> {
    fn start(topo: &'a Topology, dir: &Path, target: Target, bpf_stats: bool) -> Result<Self> {
        let mut lb = Lb {
            topo,
            daemon: None,
            process: None,
            pids: Vec::new(),
            xdp_prog: None,
            vip_on_lb: false,
            vip_on_servers: false,
        };
        let lb1 = topo.node("lb-1");
        match target {
            Target::Direct => {}
            Target::XdpNat | Target::XdpDsr => {
                let mode = if target == Target::XdpDsr {
                    lb.vip_on_servers = true;
                    for s in SERVERS {
                        topo.prepare_dsr_backend(s, VIP)?;
                    }
                    "dsr"
                } else {
                    "nat"
                };
                let daemon = Daemon::start(topo, "lb-1", &k3s_xdp_config(mode))?;
                daemon.wait_healthy(Duration::from_secs(20))?;
                lb.pids = netns_pids(lb1)?;
                if bpf_stats {
                    lb.xdp_prog = xdp_program_id(lb1)?;
                }
                lb.daemon = Some(daemon);
            }
            Target::Haproxy => {
                lb.add_vip()?;
                let cfg = dir.join("haproxy.cfg");
                std::fs::write(&cfg, haproxy_config())?;
                let p = lb1.spawn("haproxy", ["-db", "-f", &cfg.display().to_string()])?;
                lb.process = Some(p);
                lb.pids = settle_pids(lb1, 1)?;
            }
            Target::Nginx => {
                lb.add_vip()?;
                let cfg = dir.join("nginx.conf");
                std::fs::write(&cfg, nginx_config(dir))?;
                let prefix = format!("{}/", dir.display());
                let directives = format!("daemon off; pid {}/nginx.pid;", dir.display());
                let error_log = dir.join("error.log").display().to_string();
                let p = lb1.spawn(
                    "nginx",
                    [
                        "-p",
                        &prefix,
                        "-e",
                        &error_log,
                        "-c",
                        &cfg.display().to_string(),
                        "-g",
                        &directives,
                    ],
                )?;
                lb.process = Some(p);
                // Master and worker.
                lb.pids = settle_pids(lb1, 2)?;
            }
        }
        Ok(lb)
    }

    fn add_vip(&mut self) -> Result<()> {
        self.topo
            .node("lb-1")
            .ip(["addr", "add", &format!("{VIP}/32"), "dev", "eth1"])?;
        self.vip_on_lb = true;
        Ok(())
    }

    fn log(&self) -> Option<String> {
        if let Some(d) = &self.daemon {
            let counters = d
                .status()
                .map(|s| {
                    s.packets
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|e| format!("no status: {e:#}"));
            return Some(format!("k3s-xdp packet counters: {counters}\n{}", d.log()));
        }
        self.process.as_ref().map(Process::output)
    }

    /// CPU-seconds (user + system) of the load balancer's processes so far.
    fn process_cpu(&self) -> f64 {
        self.pids.iter().map(|p| process_cpu(*p)).sum()
    }

    /// CPU-seconds the XDP program has run so far and on how many packets (BPF statistics).
    fn xdp_stats(&self) -> Option<(f64, u64)> {
        let id = self.xdp_prog?;
        aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == id)
            .map(|p| (p.run_time().as_secs_f64(), p.run_count()))
    }

    /// Packets the XDP program has dropped so far, by any reason (0 without k3s-xdp).
    fn xdp_drops(&self) -> u64 {
        let Some(daemon) = &self.daemon else {
            return 0;
        };
        daemon.status().map_or(0, |s| {
            s.packets
                .iter()
                .filter(|(reason, _)| reason.starts_with("drop_"))
                .map(|(_, n)| n)
                .sum()
        })
    }
}

impl Drop for Lb<'_> {
    fn drop(&mut self) {
        let lb1 = self.topo.node("lb-1");
        self.daemon = None;
        if let Some(mut p) = self.process.take() {
            let _ = p.stop();
        }
        // nginx's workers are the master's children: it stops them, but make sure.
        for pid in &self.pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if stat.contains("(nginx)") || stat.contains("(haproxy)") {
                    // SAFETY: kill has no memory-safety preconditions; a process we started.
                    unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        if self.vip_on_lb {
            let _ = lb1.ip(["addr", "del", &format!("{VIP}/32"), "dev", "eth1"]);
        }
        if self.vip_on_servers {
            for s in SERVERS {
                let _ = self
                    .topo
                    .node(s)
                    .ip(["addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
            }
        }
    }
}

/// The SNAT pool of the nat runs: the VIP and three more addresses, four times the ports of
/// the VIP alone, for the rate of connections that servers close first (each waits
/// `snat_timewait` before another client may have its port; see the README's "SNAT pools").
pub const SNAT_POOL: &str = r#"["vip", "192.0.2.110", "192.0.2.111", "192.0.2.112"]"#;

fn k3s_xdp_config(mode: &str) -> String {
    let backends: Vec<String> = SERVERS
        .iter()
        .map(|s| format!("  {{ name = \"{s}\", address = \"{}:{PORT}\" }},", addr(s)))
        .collect();
    let pool = if mode == "nat" {
        format!("snat_source = {SNAT_POOL}\n")
    } else {
        String::new()
    };
    format!(
        "interface = \"eth1\"\n\n[[service]]\nname = \"k3s-api\"\nvip = \"{VIP}\"\nport = {PORT}\nmode = \"{mode}\"\n{pool}backends = [\n{}\n]\n[service.health]\ncheck = \"tcp\"\ninter = \"2s\"\n",
        backends.join("\n")
    )
}

/// Seed 004's haproxy.cfg (the Chinese HAProxy + keepalived guide), the API server part,
/// with the lab's addresses. Left out: `log`, `chroot`, `user`/`group`, `daemon`, `pidfile`
/// and `stats socket` (host installation details; logging would write to the host's syslog),
/// and the ingress frontend on 30080 (not measured).
pub(crate) fn haproxy_config() -> String {
    let mut c = String::from(
        "global\n    maxconn     4000\n\n\
         defaults\n    option  dontlognull\n    timeout connect 5000\n    timeout client 50000\n    timeout server 50000\n\n\
         frontend kube-apiserver\n    bind *:6443\n    mode tcp\n    option tcplog\n    default_backend kube-apiserver\n\n\
         backend kube-apiserver\n    mode tcp\n    option tcplog\n    option tcp-check\n    balance roundrobin\n    \
         default-server inter 10s downinter 5s rise 2 fall 2 slowstart 60s maxconn 250 maxqueue 256 weight 100\n",
    );
    for s in SERVERS {
        let _ = writeln!(c, "    server {s} {}:{PORT} check", addr(s));
    }
    c
}

/// The seeds' nginx.conf (`events {}` and the `stream {}` block), with the lab's addresses;
/// Debian builds the stream module as a dynamic module.
fn nginx_config(dir: &Path) -> String {
    let mut c = format!(
        "load_module {NGINX_STREAM_MODULE};\nerror_log {}/error.log;\n\nevents {{}}\n\nstream {{\n  upstream k3s_servers {{\n",
        dir.display()
    );
    for s in SERVERS {
        let _ = writeln!(c, "    server {}:{PORT};", addr(s));
    }
    c.push_str("  }\n\n  server {\n    listen 6443;\n    proxy_pass k3s_servers;\n  }\n}\n");
    c
}

/// PIDs in `ns` once at least `want` are there (a process may still be forking), within 5 s.
fn settle_pids(ns: &NetNs, want: usize) -> Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = netns_pids(ns)?;
        if pids.len() >= want || Instant::now() > deadline {
            return Ok(pids);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn netns_pids(ns: &NetNs) -> Result<Vec<u32>> {
    let out = run_command("ip", ["netns", "pids", ns.name()], RUN_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// The id of the XDP program attached to eth1 in `ns`.
pub(crate) fn xdp_program_id(ns: &NetNs) -> Result<Option<u32>> {
    let out = ns.ip(["-d", "link", "show", "dev", "eth1"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w.starts_with("prog/xdp") && words.next() == Some("id") {
            return Ok(words.next().and_then(|id| id.parse().ok()));
        }
    }
    Ok(None)
}

pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU-seconds all CPUs have been busy since boot: user, nice, system, irq, softirq (idle,
/// iowait and steal left out; guest time is inside user).
pub(crate) fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        bail!("unexpected /proc/stat cpu line: {line}");
    }
    // user nice system idle iowait irq softirq
    Ok((v[0] + v[1] + v[2] + v[5] + v[6]) / clock_ticks())
}

/// The numeric fields of `/proc/PID/stat` after the command name (which may hold spaces and
/// parentheses, so it ends at the last ')'), from the ppid on (field 4 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect(),
    )
}

/// User + system CPU-seconds of process `pid` (all its threads), 0 if it is gone.
pub(crate) fn process_cpu(pid: u32) -> f64 {
    // After the state: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    stat_fields(pid)
        .map(|f| (f.get(10).unwrap_or(&0) + f.get(11).unwrap_or(&0)) as f64 / clock_ticks())
        .unwrap_or(0.0)
}

/// CPU-seconds of every user-space process on the machine but this one and `ours`, with the
/// time of their reaped children (so work of short-lived processes, e.g. a compiler run by
/// someone else, is counted when its parent reaps it). Ticks that land in softirq go to the
/// task they interrupt (no IRQ time accounting on this kernel), so another process's network
/// work counts here too.
pub(crate) fn other_cpu(ours: &[u32]) -> f64 {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || ours.contains(&pid) {
            continue;
        }
        let Some(f) = stat_fields(pid) else { continue };
        const PF_KTHREAD: u64 = 0x0020_0000;
        if f.get(5).is_some_and(|flags| flags & PF_KTHREAD != 0) {
            continue; // kernel threads: part of the measured background and of our softirq work
        }
        // utime stime cutime cstime
        ticks += f.get(10..14).map(|t| t.iter().sum()).unwrap_or(0);
    }
    ticks as f64 / clock_ticks()
}

/// The kernel's busy CPU-seconds per second (the machine's, minus processes') while nothing
/// of this benchmark runs.
pub(crate) fn idle_rate() -> Result<f64> {
    let c0 = machine_busy()?;
    let o0 = other_cpu(&[]);
    let t0 = Instant::now();
    std::thread::sleep(IDLE);
    let busy = machine_busy()? - c0 - (other_cpu(&[]) - o0);
    Ok((busy / t0.elapsed().as_secs_f64()).max(0.0))
}
