//! `cargo xtask bench scaleout`: active-active load balancers behind a router (`[bgp]`, BIRD,
//! ECMP; see `k3s_xdp_tests::ecmp`).
//!
//! - Failover: one node's host dies (its switch port goes down, as at a power failure). For
//!   BGP the node is the one that carries agent-1's probe tuple (a fixed source port); the
//!   figures are the time until the router's route drops it (BFD, 100 ms x 3) and until the
//!   probe tuple connects again (through another node, to the same server). For comparison, in
//!   the same run, the VRRP pair's time from the master's death to the first connection, at 1 s
//!   and 100 ms adverts (`failover.rs`). Rounds interleaved.
//! - Scale: the same client load (new connections, 64-byte answers, from the three agents)
//!   through one, two and three nodes (the others drain their backends, so they withdraw):
//!   connections per second and the machine's CPU per 1k connections. On 2 cores the rate
//!   cannot grow with the node count; the cost per connection must not grow either.

use crate::{
    e2e, failover,
    load::{self, Outcome, Servers, Spec, Work},
    median, Ratio,
};
use anyhow::{bail, Context, Result};
use k3s_xdp::controller::{
    model::Admin,
    status::{Request, Response},
};
use k3s_xdp_tests::{
    backend::{echo_roundtrip, Backend, Kind},
    config::SeedConfig,
    ecmp::{self, Ecmp, LBS, TABLE},
    netns::NetNs,
    topology::{Topology, AGENTS, SERVERS, VIP},
};
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

const ROUNDS: usize = 5;
const SCALE_REPS: usize = 3;
const PHASE: Duration = Duration::from_secs(4);
const TASKS: usize = 24;
const PROBE_PORT: u16 = 41000;

/// Runs both parts; the markdown report, and ratios added to `summary`.
pub fn run(summary: &mut Vec<Ratio>) -> Result<String> {
    let mut out = String::from("## Scale-out: BGP/ECMP over several nodes\n\n");
    out.push_str(&failover_part(summary)?);
    out.push_str(&scale_part(summary)?);
    Ok(out)
}

fn config(mode: &str, socket: &std::path::Path) -> String {
    let mut c = SeedConfig::new()
        .top("snat_port_range = [1024, 32767]")
        .service(format!("mode = \"{mode}\""))
        .health("inter = \"1s\"\ntimeout = \"500ms\"");
    if mode == "nat" {
        c = c.service("snat_source = \"node\"");
    }
    format!(
        "{}\n[bgp]\ntable = {TABLE}\nbird_socket = {:?}\n",
        c.render(),
        socket.display().to_string()
    )
}

// ---------------------------------------------------------------------------------------------
// Failover.

struct Death {
    route: Duration,
    connection: Duration,
}

fn failover_part(summary: &mut Vec<Ratio>) -> Result<String> {
    let vrrp = [
        failover::Setup::K3sXdp { fast: false },
        failover::Setup::K3sXdp { fast: true },
    ];
    let mut bgp: Vec<Death> = Vec::new();
    let mut pair: Vec<Vec<Duration>> = vec![Vec::new(); vrrp.len()];
    for round in 1..=ROUNDS {
        let d = bgp_death().context("BGP node death")?;
        eprintln!(
            "scaleout round {round}/{ROUNDS}: BGP/BFD: route {:.0?}, connection {:.0?}",
            d.route, d.connection
        );
        bgp.push(d);
        for (i, setup) in vrrp.iter().enumerate() {
            let t = failover::once(*setup, round)
                .with_context(|| format!("failover, {}", setup.label()))?;
            eprintln!(
                "scaleout round {round}/{ROUNDS}: {}: {t:.2?}",
                setup.label()
            );
            pair[i].push(t);
        }
    }
    let ms = |d: Duration| d.as_micros() as u64 / 1000;
    let mut routes: Vec<u64> = bgp.iter().map(|d| ms(d.route)).collect();
    let mut conns: Vec<u64> = bgp.iter().map(|d| ms(d.connection)).collect();
    let spread = |v: &mut Vec<u64>| {
        let m = median(v);
        format!("{m} ms ({}-{})", v[0], v[v.len() - 1])
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### A node dies: BGP + BFD vs the VRRP pair\n\n\
         The node's switch port goes down. BGP: three nodes, the dead one carries agent-1's \
         probe tuple; figures from the port going down to the router's route dropping the node, \
         and to the probe tuple connecting again (retried every 20 ms, 200 ms timeout). VRRP: \
         the master dies, time to the first connection through the VIP. {ROUNDS} rounds, \
         interleaved; median (min-max).\n"
    );
    let _ = writeln!(out, "| setup | route change | first connection |");
    let _ = writeln!(out, "|---|---:|---:|");
    let bgp_conn = median(&mut conns.clone()) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "| k3s-xdp x3, BGP + BFD 100 ms x 3 | {} | {} |",
        spread(&mut routes),
        spread(&mut conns)
    );
    for (setup, times) in vrrp.iter().zip(&mut pair) {
        let mut v: Vec<u64> = times.iter().map(|d| ms(*d)).collect();
        let m = median(&mut v.clone()) as f64 / 1000.0;
        let _ = writeln!(out, "| {} | - | {} |", setup.label(), spread(&mut v));
        summary.push(Ratio {
            what: "scale-out: a node dies, first connection (BGP + BFD)".into(),
            value: format!("{bgp_conn:.2} s"),
            baseline: format!("{} {m:.2} s", setup.label()),
            ratio: bgp_conn / m,
            target: format!(
                "< 1 s with BFD at 100 ms x 3: {}",
                if bgp_conn < 1.0 { "met" } else { "missed" }
            ),
        });
    }
    let _ = writeln!(
        out,
        "\nWith BGP a death only interrupts the flows the router hashed to that node (about a \
         third here); the others never notice. The probe is one of those.\n"
    );
    Ok(out)
}

/// One host death behind ECMP: the times to the route change and to the probe's reconnect.
fn bgp_death() -> Result<Death> {
    let topo = ecmp::topology()?;
    for s in SERVERS {
        topo.prepare_dsr_backend(s, VIP)?;
    }
    let _servers: Vec<Backend> = SERVERS
        .iter()
        .map(|s| Backend::start(topo.node(s), s, 6443, Kind::Tcp, &[]))
        .collect::<Result<_>>()?;
    let lab = Ecmp::start(&topo, 3, |_, socket| config("dsr", socket))?;
    let agent = topo.node("agent-1");
    // Which node carries the probe tuple: the one whose new flows grow by one.
    let before: Vec<u64> = lab.daemons.iter().map(flows).collect();
    probe(agent, Duration::from_secs(2)).context("the probe in the steady state")?;
    let after: Vec<u64> = lab.daemons.iter().map(flows).collect();
    let Some(victim) = (0..3).find(|&i| after[i] > before[i]) else {
        bail!("no node took the probe tuple ({before:?} -> {after:?})");
    };
    let (name, addr) = LBS[victim];
    let left: Vec<Ipv4Addr> = ecmp::addresses(3)
        .into_iter()
        .filter(|a| *a != addr)
        .collect();
    let cut = Instant::now();
    topo.set_link(name, false)?;
    let mut route = None;
    let mut connection = None;
    let limit = Duration::from_secs(15);
    while route.is_none() || connection.is_none() {
        if cut.elapsed() > limit {
            bail!("{name} died: route {route:?}, connection {connection:?} after {limit:?}");
        }
        if route.is_none() && ecmp::hops(&topo)? == left {
            route = Some(cut.elapsed());
        }
        if connection.is_none() {
            let attempt = Instant::now();
            if probe(agent, Duration::from_millis(200)).is_ok() {
                connection = Some(cut.elapsed());
            } else if attempt.elapsed() < Duration::from_millis(20) {
                std::thread::sleep(Duration::from_millis(20) - attempt.elapsed());
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(lab);
    Ok(Death {
        route: route.unwrap_or_default(),
        connection: connection.unwrap_or_default(),
    })
}

fn flows(d: &k3s_xdp_tests::daemon::Daemon) -> u64 {
    d.status()
        .map(|s| s.services.iter().map(|x| x.new_flows).sum())
        .unwrap_or(0)
}

/// One connection from the probe tuple (agent, `PROBE_PORT`), closed with a RST so the tuple
/// can connect again at once.
fn probe(agent: &NetNs, timeout: Duration) -> Result<String> {
    agent.enter(|| -> Result<String> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PROBE_PORT).into())?;
        socket.connect_timeout(&SocketAddrV4::new(VIP, 6443).into(), timeout)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.set_write_timeout(Some(timeout))?;
        socket.set_linger(Some(Duration::ZERO))?;
        let mut stream: std::net::TcpStream = socket.into();
        let (server, echoed) = echo_roundtrip(&mut stream, b"probe")?;
        if !echoed {
            bail!("{server} echoed something else");
        }
        Ok(server)
    })?
}

// ---------------------------------------------------------------------------------------------
// Scale.

struct Measured {
    rate: f64,
    cpu_ms_per_1k: f64,
    errors: u64,
}

fn scale_part(summary: &mut Vec<Ratio>) -> Result<String> {
    let topo = ecmp::topology()?;
    let servers: Vec<&NetNs> = SERVERS.iter().map(|s| topo.node(s)).collect();
    let _servers = Servers::start(&servers, 6443, e2e::SERVER_THREADS)?;
    let lab = Ecmp::start(&topo, 3, |_, socket| config("nat", socket))?;
    let pids: Vec<u32> = lab.daemons.iter().map(|d| d.pid()).collect();
    let idle = e2e::idle_rate()?;
    let mut results: Vec<Vec<Measured>> = (0..3).map(|_| Vec::new()).collect();
    for rep in 1..=SCALE_REPS {
        for n in 1..=3usize {
            serve_with(&topo, &lab, n)?;
            let m = phase(&topo, &pids, idle)?;
            eprintln!(
                "scaleout {rep}/{SCALE_REPS}: {n} node(s): {:.0} conn/s, {:.0} CPU-ms per 1k, {} errors",
                m.rate, m.cpu_ms_per_1k, m.errors
            );
            results[n - 1].push(m);
        }
    }
    serve_with(&topo, &lab, 3)?;
    let med = |v: &[Measured], f: fn(&Measured) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        (x[x.len() / 2], x[0], x[x.len() - 1])
    };
    let (base_rate, _, _) = med(&results[0], |m| m.rate);
    let (base_cpu, _, _) = med(&results[0], |m| m.cpu_ms_per_1k);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### The same load through one, two and three nodes\n\n\
         nat with `snat_source = \"node\"`; the three agents open connections ({TASKS} at a \
         time each, a 64-byte answer, the client closes) for {PHASE:?}; the nodes left out drain \
         their backends, so they withdraw. CPU: the whole machine's busy time (clients and \
         servers included, the same in every row) per 1k connections. {SCALE_REPS} repetitions, \
         interleaved; median (min-max).\n"
    );
    let _ = writeln!(
        out,
        "| nodes | conn/s | vs 1 node | CPU-ms per 1k connections | vs 1 node | errors |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    for (n, r) in results.iter().enumerate() {
        let (rate, rlo, rhi) = med(r, |m| m.rate);
        let (cpu, clo, chi) = med(r, |m| m.cpu_ms_per_1k);
        let errors: u64 = r.iter().map(|m| m.errors).sum();
        let _ = writeln!(
            out,
            "| {} | {rate:.0} ({rlo:.0}-{rhi:.0}) | {:.2}x | {cpu:.0} ({clo:.0}-{chi:.0}) | {:.2}x | {errors} |",
            n + 1,
            rate / base_rate,
            cpu / base_cpu
        );
        if n > 0 {
            summary.push(Ratio {
                what: format!("scale-out: CPU per 1k connections through {} nodes", n + 1),
                value: format!("{cpu:.0} ms"),
                baseline: format!("1 node {base_cpu:.0} ms"),
                ratio: cpu / base_cpu,
                target: format!(
                    "does not grow (5% noise margin): {}",
                    if cpu <= base_cpu * 1.05 {
                        "met"
                    } else {
                        "missed"
                    }
                ),
            });
        }
    }
    out.push('\n');
    Ok(out)
}

/// Makes exactly the first `n` nodes serve (the others drain every backend, so they
/// withdraw), and waits for the router to agree.
fn serve_with(topo: &Topology, lab: &Ecmp, n: usize) -> Result<()> {
    for (i, d) in lab.daemons.iter().enumerate() {
        let action = if i < n { Admin::Enable } else { Admin::Drain };
        for s in SERVERS {
            let answer = d.request(&Request::Backend {
                action,
                target: format!("k3s-api/{s}"),
            })?;
            if !matches!(answer, Response::Ok { .. }) {
                bail!("{}: {answer:?}", d.node);
            }
        }
    }
    ecmp::wait_hops(topo, &ecmp::addresses(n), Duration::from_secs(10))?;
    Ok(())
}

fn phase(topo: &Topology, lb_pids: &[u32], idle: f64) -> Result<Measured> {
    let spec = Spec {
        target: SocketAddrV4::new(VIP, 6443),
        work: Work::Connections { reply: 64 },
        tasks: TASKS,
        deadline: Instant::now() + PHASE,
        max_per_task: u64::MAX,
    };
    let cpu0 = e2e::machine_busy()?;
    let other0 = e2e::other_cpu(lb_pids);
    let t0 = Instant::now();
    let outcomes: Vec<Result<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = AGENTS
            .iter()
            .map(|a| {
                let ns = topo.node(a);
                s.spawn(move || load::run_agent(ns, spec))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = (e2e::machine_busy()? - cpu0 - (e2e::other_cpu(lb_pids) - other0) - idle * seconds)
        .max(0.0);
    let mut all = Outcome::default();
    for o in outcomes {
        all.merge(o?);
    }
    Ok(Measured {
        rate: all.connections as f64 / seconds,
        cpu_ms_per_1k: cpu * 1e6 / all.connections.max(1) as f64,
        errors: all.errors,
    })
}
