//! `cargo xtask lab`: the seed topology in network namespaces (lb-1, lb-2, server-1..3,
//! agent-1..3 on 192.0.2.0/24, VIP 192.0.2.100), real backends on the servers, `k3s-xdp run`
//! on lb-1 (and lb-2 with VRRP), a bounded burst of connections from the agents through the
//! VIP, and a report of what each backend and the XDP program saw. Everything is removed at
//! the end, unless `--keep` leaves it up for exploring (`--down` removes it later).
//!
//! Everything that must outlive this process with `--keep` runs as a detached process whose PID
//! is recorded in `/run/k3s-xdp-lab/state.json`: the backends (`k3s-xdp-lab backend`), the
//! holder of the XDP_PASS programs that XDP_TX needs on the bridge ports
//! (`k3s-xdp-lab hold-pass`), and the k3s-xdp daemons. `--down` stops those PIDs and deletes the
//! `kxlab-*` namespaces.

use anyhow::{anyhow, bail, Context, Result};
use k3s_xdp::controller::{
    control,
    status::{render_table, Request, Response, Status},
};
use k3s_xdp_tests::{
    backend::{roundtrip, Backend, Kind},
    daemon,
    netns::NetNs,
    topology::{Topology, AGENTS, SERVERS, VIP},
};
use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const PREFIX: &str = "kxlab";
const STATE_DIR: &str = "/run/k3s-xdp-lab";
const PORT: u16 = 6443;

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct State {
    pids: Vec<u32>,
    namespaces: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("backend") => serve_backend(&args[1..]),
        Some("hold-pass") => hold_pass(&args[1..]),
        _ => lab(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn lab(args: &[String]) -> Result<()> {
    let keep = args.iter().any(|a| a == "--keep");
    let mode = match args.iter().position(|a| a == "--mode") {
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some("nat") => "nat",
            Some("dsr") => "dsr",
            _ => bail!("--mode takes nat or dsr"),
        },
        None => "nat",
    };
    let connections: usize = match args.iter().position(|a| a == "--connections") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| anyhow!("--connections takes a number from 1 to 1000"))?,
        None => 60,
    };
    if args.iter().any(|a| a == "--down") {
        return down(true);
    }
    if let Some(unknown) = args.iter().find(|a| {
        !["--keep", "--connections", "--mode", "nat", "dsr"].contains(&a.as_str())
            && a.parse::<usize>().is_err()
    }) {
        bail!("unknown argument {unknown}; usage: cargo xtask lab [--keep | --down] [--mode nat|dsr] [--connections N]");
    }
    if Path::new(STATE_DIR).join("state.json").exists() || !namespaces()?.is_empty() {
        println!("removing the lab left up by an earlier `--keep`");
        down(false)?;
    }
    std::fs::create_dir_all(STATE_DIR)?;
    let started = Instant::now();
    // With --keep the pair is left as it is (lb-1 master) for exploring.
    let result = run_lab(mode, connections, !keep);
    if keep && result.is_ok() {
        println!(
            "\nThe lab is up (namespaces {PREFIX}-*). For example:\n  \
             ip netns exec {PREFIX}-lb-1 k3s-xdp status --socket {STATE_DIR}/lb-1.sock\n  \
             ip netns exec {PREFIX}-agent-1 ping -c 3 {VIP}\n  \
             ip netns exec {PREFIX}-lb-1 ip addr show eth1\n  \
             less {STATE_DIR}/lb-1.log\n\
             Remove it with `cargo xtask lab --down`."
        );
        return Ok(());
    }
    let cleanup = down(false);
    println!("\nlab removed ({:.1?} in all)", started.elapsed());
    result.and(cleanup)
}

fn run_lab(mode: &str, connections: usize, failover: bool) -> Result<()> {
    println!("building the seed topology in network namespaces {PREFIX}-*");
    let topo = Topology::builder()
        .prefix(PREFIX)
        .pass_programs(&[])
        .build()?;
    let mut state = State::default();
    let me = std::env::current_exe()?;
    let me = me.display().to_string();

    // XDP_TX from the load balancers is delivered only if their veth peers run XDP.
    let holder = spawn_detached(
        topo.switch(),
        &me,
        &["hold-pass", "lb-1", "lb-2"],
        &log_path("pass-programs"),
    )?;
    state.pids.push(holder);
    for server in SERVERS {
        if mode == "dsr" {
            // dsr backends hold the VIP on lo and do not answer ARP for it (README.md).
            topo.prepare_dsr_backend(server, VIP)?;
        }
        let pid = spawn_detached(
            topo.node(server),
            &me,
            &[
                "backend",
                topo.node(server).name(),
                server,
                &PORT.to_string(),
            ],
            &log_path(server),
        )?;
        state.pids.push(pid);
    }
    let bin = daemon::binary()?;
    let mut lb1_pid = 0;
    for lb in ["lb-1", "lb-2"] {
        let config = Path::new(STATE_DIR).join(format!("{lb}.toml"));
        std::fs::write(&config, lab_config(mode, lb))?;
        println!("starting k3s-xdp on {lb} (config {})", config.display());
        let pid = spawn_detached(
            topo.node(lb),
            &bin.display().to_string(),
            &["run", "--config", &config.display().to_string()],
            &log_path(lb),
        )?;
        state.pids.push(pid);
        if lb == "lb-1" {
            lb1_pid = pid;
        }
    }
    state.namespaces = topo.keep()?;
    save(&state)?;

    let socket = Path::new(STATE_DIR).join("lb-1.sock");
    let socket2 = Path::new(STATE_DIR).join("lb-2.sock");
    wait_healthy(&socket, Duration::from_secs(20))?;
    wait_healthy(&socket2, Duration::from_secs(20))?;
    wait_vrrp(&socket, "MASTER", Duration::from_secs(10))?;
    wait_vrrp(&socket2, "BACKUP", Duration::from_secs(10))?;
    // lb-2 follows lb-1 once it has heard an advert (Master_Down_Interval runs from there).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !status(&socket2)?
        .vrrp
        .is_some_and(|v| v.adverts_received > 0 && v.master.is_some())
    {
        if Instant::now() > deadline {
            bail!("lb-2 heard no advert from lb-1 in 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("VRRP: lb-1 MASTER (priority 200, holds {VIP}), lb-2 BACKUP (priority 100)");

    let total = connections * AGENTS.len();
    let (per_backend, failures) = burst(SocketAddrV4::new(VIP, PORT), connections)?;
    println!(
        "\n{total} connections to {VIP}:{PORT} ({mode} mode) from agent-1..3, each exchanging data: {} failed",
        failures.len()
    );
    for (backend, n) in &per_backend {
        println!(
            "  {backend:<10} {n:>5} connections ({:.0}%)",
            *n as f64 * 100.0 / total as f64
        );
    }
    for f in failures.iter().take(3) {
        println!("  failed: {f}");
    }
    let status1 = status(&socket)?;
    println!("\n`k3s-xdp status` on lb-1:\n{}", render_table(&status1));

    if !failover {
        return Ok(());
    }
    // Failover: lb-1's daemon is killed (as a crash); lb-2 takes the VIP over.
    println!("\nfailover: kill -9 of k3s-xdp on lb-1 (PID {lb1_pid})");
    let killed = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; the PID is the daemon this lab started.
    unsafe { libc::kill(lb1_pid as libc::pid_t, libc::SIGKILL) };
    wait_vrrp(&socket2, "MASTER", Duration::from_secs(10))?;
    let took = killed.elapsed();
    println!("lb-2 MASTER after {took:.2?} (Master_Down_Interval 3.61 s at 1 s adverts)");
    let after = (connections / 2).max(1);
    let (per_backend, failures) = burst(SocketAddrV4::new(VIP, PORT), after)?;
    println!(
        "{} connections through lb-2 after the failover: {} failed",
        after * AGENTS.len(),
        failures.len()
    );
    for (backend, n) in &per_backend {
        println!("  {backend:<10} {n:>5} connections");
    }
    for f in failures.iter().take(3) {
        println!("  failed: {f}");
    }
    let status2 = status(&socket2)?;
    println!("\n`k3s-xdp status` on lb-2:\n{}", render_table(&status2));
    Ok(())
}

/// Waits until the daemon behind `socket` is in VRRP `state`.
fn wait_vrrp(socket: &Path, state: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = status(socket) {
            if s.vrrp.as_ref().is_some_and(|v| v.state == state) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} not {state} after {limit:?}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lab_config(mode: &str, lb: &str) -> String {
    let (priority, state) = if lb == "lb-1" {
        (200, "master")
    } else {
        (100, "backup")
    };
    let backends: Vec<String> = SERVERS
        .iter()
        .map(|s| {
            let addr = k3s_xdp_tests::topology::seed_addr(s).expect("seed node");
            format!("  {{ name = \"{s}\", address = \"{addr}:{PORT}\" }},")
        })
        .collect();
    format!(
        r#"# The lab's {lb}: the seeds' haproxy.cfg and keepalived.conf, with documentation addresses.
interface = "eth1"
control_socket = "{STATE_DIR}/{lb}.sock"
metrics_listen = "127.0.0.1:9742"

[[service]]
name = "k3s-api"
vip = "{VIP}"
port = {PORT}
mode = "{mode}"
backends = [
{}
]
[service.health]
check = "tcp"
inter = "1s"
rise = 2
fall = 2

[vrrp]
virtual_router_id = 51
priority = {priority}
state = "{state}"
advert_int = "1s"
virtual_ipaddress = ["{VIP}/24"]
"#,
        backends.join("\n")
    )
}

fn log_path(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{name}.log"))
}

fn save(state: &State) -> Result<()> {
    std::fs::write(
        Path::new(STATE_DIR).join("state.json"),
        serde_json::to_string(state)?,
    )?;
    Ok(())
}

/// Starts `program` inside `ns`, in its own session (it outlives this process), output to
/// `log`; returns its PID.
fn spawn_detached(ns: &NetNs, program: &str, args: &[&str], log: &Path) -> Result<u32> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe; it only detaches from our session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {program} in {}", ns.name()))?;
    Ok(child.id())
}

fn namespaces() -> Result<Vec<String>> {
    k3s_xdp_tests::topology::namespaces_with_prefix(PREFIX)
}

/// Stops the recorded processes (by PID) and deletes the lab's namespaces.
fn down(verbose: bool) -> Result<()> {
    let path = Path::new(STATE_DIR).join("state.json");
    let state: State = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    for pid in &state.pids {
        // SAFETY: kill(2) on PIDs this lab started and recorded.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in state.pids.iter().filter(|p| alive(**p)) {
        // SAFETY: as above.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let mut names = namespaces()?;
    names.extend(state.namespaces.iter().cloned());
    names.sort();
    names.dedup();
    for name in &names {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
    let _ = std::fs::remove_dir_all(STATE_DIR);
    if verbose {
        println!(
            "lab removed: {} process(es) stopped, {} namespace(s) deleted",
            state.pids.len(),
            names.len()
        );
    }
    let left = namespaces()?;
    if !left.is_empty() {
        bail!("namespaces left behind: {left:?}");
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    // A zombie child of ours (not reaped) has no state "Z" only if it was reaped; check /proc.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn status(socket: &Path) -> Result<Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(control::request(socket, &Request::Status))? {
        Response::Status(s) => Ok(*s),
        other => bail!("unexpected answer from k3s-xdp: {other:?}"),
    }
}

/// Waits until k3s-xdp answers and all its backends passed a check.
fn wait_healthy(socket: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = status(socket) {
            let checked = s
                .services
                .iter()
                .flat_map(|svc| &svc.backends)
                .all(|b| b.checks > 0 && b.health == "up");
            if checked {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let lb = socket.file_stem().and_then(|n| n.to_str()).unwrap_or("lb");
            let log = std::fs::read_to_string(log_path(lb)).unwrap_or_default();
            bail!("k3s-xdp on {lb} is not ready with healthy backends after {limit:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `count` connections from each agent to `to`, in parallel per agent; bounded in number and
/// time (2 s each). Returns connections per backend name, and failures.
fn burst(to: SocketAddrV4, count: usize) -> Result<(BTreeMap<String, usize>, Vec<String>)> {
    let agents: Vec<NetNs> = AGENTS
        .iter()
        .map(|a| NetNs::existing(&format!("{PREFIX}-{a}")))
        .collect::<Result<_>>()?;
    let mut per_backend = BTreeMap::new();
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = agents
            .iter()
            .map(|ns| {
                s.spawn(move || {
                    let mut ok = Vec::new();
                    let mut failed = Vec::new();
                    for i in 0..count {
                        let payload = format!("{} #{i}", ns.name());
                        match roundtrip(ns, to, payload.as_bytes(), Duration::from_secs(2)) {
                            Ok(name) => ok.push(name),
                            Err(e) => failed.push(format!("{}: {e:#}", ns.name())),
                        }
                        if failed.len() > 10 {
                            break;
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        for h in handles {
            if let Ok((ok, failed)) = h.join() {
                for name in ok {
                    *per_backend.entry(name).or_insert(0) += 1;
                }
                failures.extend(failed);
            }
        }
    });
    Ok((per_backend, failures))
}

/// `k3s-xdp-lab backend NETNS NAME PORT...`: echo backends in NETNS until killed.
fn serve_backend(args: &[String]) -> Result<()> {
    let (Some(netns), Some(name)) = (args.first(), args.get(1)) else {
        bail!("usage: k3s-xdp-lab backend NETNS NAME PORT...");
    };
    let ns = NetNs::existing(netns)?;
    let mut running = Vec::new();
    for port in &args[2..] {
        let port: u16 = port.parse().context("port")?;
        running.push(Backend::start(&ns, name, port, Kind::Tcp, &[])?);
    }
    wait_for_termination();
    drop(running);
    Ok(())
}

/// `k3s-xdp-lab hold-pass PORT...`: attaches the XDP_PASS program to these interfaces of the
/// current namespace and holds the attachments until killed.
fn hold_pass(ports: &[String]) -> Result<()> {
    let mut dp = k3s_xdp::dataplane::Dataplane::load(k3s_xdp::dataplane::LoadOptions {
        flow_table_size: 16,
    })?;
    let program = dp.program_mut(k3s_xdp_common::names::PASS_PROGRAM)?;
    for port in ports {
        program
            .attach(port, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching the pass program to {port}"))?;
    }
    wait_for_termination();
    Ok(())
}

fn wait_for_termination() {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}
