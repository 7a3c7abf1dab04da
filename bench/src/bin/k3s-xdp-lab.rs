//! `cargo xtask lab`: the seed topology in network namespaces (lb-1, lb-2, server-1..3,
//! agent-1..3 on 192.0.2.0/24, VIP 192.0.2.100), real backends on the servers, `k3s-xdp run`
//! on lb-1 (and lb-2 with VRRP), a bounded burst of connections from the agents through the
//! VIP, and a report of what each backend and the XDP program saw. Everything is removed at
//! the end, unless `--keep` leaves it up for exploring (`--down` removes it later).
//!
//! `--bgp`: active-active instead. A router node (192.0.2.1) runs BIRD with ECMP; lb-1, lb-2
//! and lb-3 (192.0.2.97) each run BIRD (the shipped `packaging/bird/bird.conf`) and k3s-xdp with
//! `[bgp]`; the agents reach the VIP through the router. The lab shows the router's multipath
//! route, flows spread over the three nodes, fixed client tuples reaching the same server
//! whichever node carries them, then kills one node's k3s-xdp and shows its route withdrawn and
//! the traffic going on.
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
    backend::{echo_roundtrip, roundtrip, Backend, Kind},
    bird, daemon, ecmp,
    netns::NetNs,
    topology::{addr6, Topology, AGENTS, SERVERS, VIP, VIP6},
};
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
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
        Some("bird") => serve_bird(&args[1..]),
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
        !["--keep", "--connections", "--mode", "nat", "dsr", "--bgp"].contains(&a.as_str())
            && a.parse::<usize>().is_err()
    }) {
        bail!("unknown argument {unknown}; usage: cargo xtask lab [--keep | --down] [--bgp] [--mode nat|dsr] [--connections N]");
    }
    let bgp = args.iter().any(|a| a == "--bgp");
    if Path::new(STATE_DIR).join("state.json").exists() || !namespaces()?.is_empty() {
        println!("removing the lab left up by an earlier `--keep`");
        down(false)?;
    }
    std::fs::create_dir_all(STATE_DIR)?;
    let started = Instant::now();
    // With --keep the pair is left as it is (lb-1 master) for exploring.
    let result = if bgp {
        run_bgp_lab(mode, connections, !keep)
    } else {
        run_lab(mode, connections, !keep)
    };
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
    // Dual stack: every node's 2001:db8::/64 address beside its IPv4 one; an IPv6 service
    // beside the IPv4 one, its VIP in the same VRRP instance (a second virtual router).
    for node in ["lb-1", "lb-2"].iter().chain(&SERVERS).chain(&AGENTS) {
        topo.add_ipv6(node)?;
    }
    spawn_backends(&topo, mode, &me, &mut state)?;
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
    println!(
        "VRRP: lb-1 MASTER (priority 200, holds {VIP} and {VIP6}), lb-2 BACKUP (priority 100)"
    );

    let total = connections * AGENTS.len();
    for to in [vip(), vip6()] {
        let (per_backend, failures) = burst(to, connections)?;
        println!(
            "\n{total} connections to {to} ({mode} mode) from agent-1..3, each exchanging data: {} failed",
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
    for to in [vip(), vip6()] {
        let (per_backend, failures) = burst(to, after)?;
        println!(
            "{} connections to {to} through lb-2 after the failover: {} failed",
            after * AGENTS.len(),
            failures.len()
        );
        for (backend, n) in &per_backend {
            println!("  {backend:<10} {n:>5} connections");
        }
        for f in failures.iter().take(3) {
            println!("  failed: {f}");
        }
    }
    let status2 = status(&socket2)?;
    println!("\n`k3s-xdp status` on lb-2:\n{}", render_table(&status2));
    Ok(())
}

/// The BGP lab's load balancers.
const BGP_LBS: [(&str, Ipv4Addr); 3] = [
    ("lb-1", Ipv4Addr::new(192, 0, 2, 98)),
    ("lb-2", Ipv4Addr::new(192, 0, 2, 99)),
    ("lb-3", Ipv4Addr::new(192, 0, 2, 97)),
];
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BGP_TABLE: u32 = 200;

fn run_bgp_lab(mode: &str, connections: usize, kill: bool) -> Result<()> {
    println!("building the BGP topology in network namespaces {PREFIX}-*: router, lb-1..3, servers, agents");
    let topo = Topology::builder()
        .prefix(PREFIX)
        .node("lb-3", BGP_LBS[2].1)
        .node("router", ROUTER)
        .pass_programs(&[])
        .build()?;
    let mut state = State::default();
    let me = std::env::current_exe()?.display().to_string();
    let holder = spawn_detached(
        topo.switch(),
        &me,
        &["hold-pass", "lb-1", "lb-2", "lb-3"],
        &log_path("pass-programs"),
    )?;
    state.pids.push(holder);
    ecmp::route_through_router(&topo)?;
    spawn_backends(&topo, mode, &me, &mut state)?;
    let addrs: Vec<Ipv4Addr> = BGP_LBS.iter().map(|(_, a)| *a).collect();
    let mut birds = vec![("router".to_string(), bird::router_config(&addrs))];
    for (lb, _) in BGP_LBS {
        birds.push((
            lb.to_string(),
            bird::load_balancer_config(BGP_TABLE, ROUTER)?,
        ));
    }
    for (node, config) in &birds {
        let path = Path::new(STATE_DIR).join(format!("bird-{node}.conf"));
        std::fs::write(&path, config)?;
        let socket = bird_socket(node);
        let pid = spawn_detached(
            topo.node(node),
            &me,
            &[
                "bird",
                &path.display().to_string(),
                &socket.display().to_string(),
            ],
            &log_path(&format!("bird-{node}")),
        )?;
        state.pids.push(pid);
    }
    let bin = daemon::binary()?;
    let mut pids = BTreeMap::new();
    for (lb, _) in BGP_LBS {
        let config = Path::new(STATE_DIR).join(format!("{lb}.toml"));
        std::fs::write(&config, bgp_lab_config(mode, lb))?;
        println!(
            "starting BIRD and k3s-xdp on {lb} (config {})",
            config.display()
        );
        let pid = spawn_detached(
            topo.node(lb),
            &bin.display().to_string(),
            &["run", "--config", &config.display().to_string()],
            &log_path(lb),
        )?;
        state.pids.push(pid);
        pids.insert(lb, pid);
    }
    state.namespaces = topo.keep()?;
    save(&state)?;
    for (lb, _) in BGP_LBS {
        wait_healthy(
            &Path::new(STATE_DIR).join(format!("{lb}.sock")),
            Duration::from_secs(20),
        )?;
    }
    let mut all = addrs.clone();
    all.sort();
    let took = wait_route(&all, Duration::from_secs(30))?;
    println!("BGP: the router has an ECMP route over the three nodes ({took:.1?} after the daemons were healthy):");
    print!("{}", router_route()?);

    let flows_before: Vec<u64> = BGP_LBS.iter().map(|(lb, _)| node_flows(lb)).collect();
    let total = connections * AGENTS.len();
    let (per_backend, failures) = burst(vip(), connections)?;
    let per_node: Vec<u64> = BGP_LBS
        .iter()
        .zip(&flows_before)
        .map(|((lb, _), before)| node_flows(lb) - before)
        .collect();
    println!(
        "\n{total} connections to {VIP}:{PORT} ({mode} mode) through the router: {} failed",
        failures.len()
    );
    for ((lb, _), n) in BGP_LBS.iter().zip(&per_node) {
        println!("  via {lb:<6} {n:>5} connections");
    }
    for (backend, n) in &per_backend {
        println!("  to {backend:<10} {n:>4} connections");
    }
    let tuples = fixed_tuples()?;
    println!(
        "\n{} fixed client tuples (agent, source port) each reach one server: {}",
        tuples.len(),
        summary(&tuples)
    );
    println!(
        "
`k3s-xdp status` on lb-1:\n{}",
        render_table(&status(&Path::new(STATE_DIR).join("lb-1.sock"))?)
    );
    if !kill {
        return Ok(());
    }
    let victim = pids["lb-3"];
    println!("\nkill -9 of k3s-xdp on lb-3 (PID {victim}): its guard withdraws the route");
    let killed = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; the PID is the daemon this lab started.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let two: Vec<Ipv4Addr> = all.iter().copied().filter(|a| *a != BGP_LBS[2].1).collect();
    wait_route(&two, Duration::from_secs(10))?;
    println!(
        "the router's route lost lb-3 {:.0?} after the kill:",
        killed.elapsed()
    );
    print!("{}", router_route()?);
    let (_, failures) = burst(vip(), connections / 2 + 1)?;
    println!(
        "{} connections through lb-1 and lb-2 afterwards: {} failed",
        (connections / 2 + 1) * AGENTS.len(),
        failures.len()
    );
    let again = fixed_tuples()?;
    let same = tuples
        .iter()
        .filter(|(t, server)| again.iter().any(|(u, s)| u == t && s == server))
        .count();
    println!(
        "the same {} client tuples again, now without lb-3: {same} reach the same server as before",
        tuples.len()
    );
    Ok(())
}

/// An echo backend on each server, detached (`k3s-xdp-lab backend`); in dsr mode the servers
/// hold the VIP on lo and do not answer ARP for it (README.md).
fn spawn_backends(topo: &Topology, mode: &str, me: &str, state: &mut State) -> Result<()> {
    for server in SERVERS {
        if mode == "dsr" {
            topo.prepare_dsr_backend(server, VIP)?;
            topo.node(server)
                .ip(["-6", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
        }
        let pid = spawn_detached(
            topo.node(server),
            me,
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
    Ok(())
}

fn bird_socket(node: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("bird-{node}.ctl"))
}

/// k3s-xdp's new flows on `lb` (0 if it does not answer).
fn node_flows(lb: &str) -> u64 {
    status(&Path::new(STATE_DIR).join(format!("{lb}.sock")))
        .map(|s| s.services.iter().map(|x| x.new_flows).sum())
        .unwrap_or(0)
}

/// The router's route to the VIP, as `ip route` prints it.
fn router_route() -> Result<String> {
    let ns = NetNs::existing(&format!("{PREFIX}-router"))?;
    let out = ns.ip(["route", "show", &format!("{VIP}/32")])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until the router's route to the VIP goes through exactly `hops` (sorted).
fn wait_route(hops: &[Ipv4Addr], limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let now = bird::parse_next_hops(&router_route()?);
        if now == hops {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!(
                "the router's route to {VIP} goes through {now:?}, not {hops:?}, after {limit:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ten fixed source ports from each agent: which server each tuple reached. The client closes
/// with a RST (linger 0), so the tuple can be used again at once.
fn fixed_tuples() -> Result<Vec<((String, u16), String)>> {
    let mut out = Vec::new();
    for agent in AGENTS {
        let ns = NetNs::existing(&format!("{PREFIX}-{agent}"))?;
        for port in 41001..=41010u16 {
            let server = ns.enter(|| -> Result<String> {
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.set_reuse_address(true)?;
                socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
                socket.connect_timeout(
                    &SocketAddrV4::new(VIP, PORT).into(),
                    Duration::from_secs(2),
                )?;
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                socket.set_linger(Some(Duration::ZERO))?;
                let mut stream: std::net::TcpStream = socket.into();
                let (server, echoed) = echo_roundtrip(&mut stream, b"tuple")?;
                if !echoed {
                    bail!("{server} echoed something else");
                }
                Ok(server)
            })??;
            out.push(((agent.to_string(), port), server));
        }
    }
    Ok(out)
}

fn summary(tuples: &[((String, u16), String)]) -> String {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, server) in tuples {
        *per.entry(server.as_str()).or_default() += 1;
    }
    per.iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn bgp_lab_config(mode: &str, lb: &str) -> String {
    let snat = if mode == "nat" {
        "snat_source = \"node\"\n"
    } else {
        ""
    };
    format!(
        r#"# The BGP lab's {lb}: one of three active nodes behind the router.
interface = "eth1"
control_socket = "{STATE_DIR}/{lb}.sock"
metrics_listen = "127.0.0.1:9742"
snat_port_range = [1024, 32767]

[[service]]
name = "k3s-api"
vip = "{VIP}"
port = {PORT}
mode = "{mode}"
{snat}backends = [
{}
]
[service.health]
check = "tcp"
inter = "1s"
rise = 2
fall = 2

[bgp]
table = {BGP_TABLE}
drain_time = "1s"
bird_socket = "{}"
"#,
        k3s_xdp_tests::topology::seed_backends_toml(PORT),
        bird_socket(lb).display()
    )
}

/// `k3s-xdp-lab bird CONFIG SOCKET`: BIRD in the foreground in this namespace until killed.
fn serve_bird(args: &[String]) -> Result<()> {
    let (Some(config), Some(socket)) = (args.first(), args.get(1)) else {
        bail!("usage: k3s-xdp-lab bird CONFIG SOCKET");
    };
    let bin = bird::binary()?;
    let error = Command::new(bin)
        .args(["-f", "-c", config, "-s", socket])
        .exec();
    Err(error).context("starting BIRD")
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
    // The service on `vip` over the servers' addresses of its family.
    let service = |name: &str, vip: SocketAddr| {
        let backends: Vec<String> = SERVERS
            .iter()
            .map(|s| {
                let v4 = k3s_xdp_tests::topology::seed_addr(s).expect("seed node");
                let addr = match vip {
                    SocketAddr::V4(_) => SocketAddr::new(v4.into(), PORT),
                    SocketAddr::V6(_) => SocketAddr::new(addr6(v4).into(), PORT),
                };
                format!("  {{ name = \"{s}\", address = \"{addr}\" }},")
            })
            .collect();
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{}\"\nport = {PORT}\nmode = \"{mode}\"\n\
             backends = [\n{}\n]\n[service.health]\ncheck = \"tcp\"\ninter = \"1s\"\nrise = 2\nfall = 2\n",
            vip.ip(),
            backends.join("\n")
        )
    };
    format!(
        r#"# The lab's {lb}: the seeds' haproxy.cfg and keepalived.conf, with documentation addresses.
interface = "eth1"
control_socket = "{STATE_DIR}/{lb}.sock"
metrics_listen = "127.0.0.1:9742"

{}
{}
[vrrp]
virtual_router_id = 51
priority = {priority}
state = "{state}"
advert_int = "1s"
virtual_ipaddress = ["{VIP}/24", "{VIP6}/64"]
"#,
        service("k3s-api", vip()),
        service("k3s-api-v6", vip6())
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
/// The IPv4 and IPv6 services' VIP:port.
fn vip() -> SocketAddr {
    SocketAddr::new(VIP.into(), PORT)
}

fn vip6() -> SocketAddr {
    SocketAddr::new(VIP6.into(), PORT)
}

fn burst(to: SocketAddr, count: usize) -> Result<(BTreeMap<String, usize>, Vec<String>)> {
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
        ipv6: false,
        flow_sync: false,
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
