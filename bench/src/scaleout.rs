//! `cargo xtask bench scaleout`: active-active load balancers behind a router (`[bgp]`, BIRD,
//! ECMP; see `k3s_xdp_tests::ecmp`).
//!
//! - Failover: one node's host dies (its switch port goes down, as at a power failure) while
//!   the agents open new connections and keep long-lived ones: the time until the router's
//!   route drops it (BFD, 100 ms x 3), the new connections that failed meanwhile, and the time
//!   until every long-lived connection echoes again. For comparison, in the same run, the VRRP
//!   pair's time from the master's death to the first connection, at 1 s and 100 ms adverts
//!   (`failover.rs`). Rounds interleaved.
//! - Scale: the same client load (new connections, 64-byte answers, from the three agents)
//!   through one, two and three nodes (the others drain their backends, so they withdraw):
//!   connections per second and the machine's CPU per 1k connections. On 2 cores the rate
//!   cannot grow with the node count; the cost per connection must not grow either.

use crate::{
    e2e, failover,
    load::{self, Servers, Spec, Work},
    median, Ratio,
};
use anyhow::{bail, Context, Result};
use k3s_xdp::controller::{
    model::Admin,
    status::{Request, Response},
};
use k3s_xdp_tests::{
    backend::{connect, echo_roundtrip, Backend, Kind},
    config::SeedConfig,
    ecmp::{self, Ecmp, LBS, TABLE},
    netns::NetNs,
    topology::{Topology, AGENTS, SERVERS, VIP},
    traffic::{self, Stream, StreamSpec},
};
use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

const ROUNDS: usize = 5;
const SCALE_REPS: usize = 3;
const PHASE: Duration = Duration::from_secs(4);
const TASKS: usize = 24;

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

/// What one host death behind ECMP cost.
struct Death {
    /// From the port going down to the router's route dropping the node (BFD).
    route: Duration,
    /// New connections that failed meanwhile, of how many.
    failed: usize,
    attempts: usize,
    /// From the port going down to the start of the last new connection that failed.
    last_failure: Duration,
    /// Until every long-lived connection echoed again (those the router had sent to the dead
    /// node move to another one, whose Maglev table sends them to the same server).
    established: Duration,
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
            "scaleout round {round}/{ROUNDS}: BGP/BFD: route {:.0?}, {}/{} new connections failed (last {:.0?} after), established back {:.0?}",
            d.route, d.failed, d.attempts, d.last_failure, d.established
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
    let spread = |mut v: Vec<u64>| {
        let m = median(&mut v);
        format!("{m} ms ({}-{})", v[0], v[v.len() - 1])
    };
    let outage: Vec<u64> = bgp.iter().map(|d| ms(d.last_failure)).collect();
    let worst = outage.iter().copied().max().unwrap_or(0) as f64 / 1000.0;
    let bgp_outage = median(&mut outage.clone()) as f64 / 1000.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### A node dies: BGP + BFD vs the VRRP pair\n\n\
         The node's switch port goes down, as at a power failure. BGP: three nodes; the agents \
         open new connections all along (every 10 ms each, 200 ms timeout) and keep 12 \
         long-lived ones (dsr) that echo every 20 ms. VRRP: the master dies; the time to the \
         first connection through the VIP (`bench failover`). {ROUNDS} rounds, interleaved; \
         median (min-max).\n"
    );
    let _ = writeln!(
        out,
        "| setup | route change | new connections failed | last failed one starts | established connections all back |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let failed: usize = bgp.iter().map(|d| d.failed).sum();
    let attempts: usize = bgp.iter().map(|d| d.attempts).sum();
    let _ = writeln!(
        out,
        "| k3s-xdp x3, BGP + BFD 100 ms x 3 | {} | {failed} of {attempts} | {} | {} |",
        spread(bgp.iter().map(|d| ms(d.route)).collect()),
        spread(outage.clone()),
        spread(bgp.iter().map(|d| ms(d.established)).collect()),
    );
    for (setup, times) in vrrp.iter().zip(&pair) {
        let v: Vec<u64> = times.iter().map(|d| ms(*d)).collect();
        let m = median(&mut v.clone()) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "| {} | - | all, until the first connection | {} | - |",
            setup.label(),
            spread(v)
        );
        summary.push(Ratio {
            what: "scale-out: a node dies, new connections fail until (BGP + BFD)".into(),
            value: format!("{bgp_outage:.2} s (worst {worst:.2} s)"),
            baseline: format!("{} {m:.2} s", setup.label()),
            ratio: bgp_outage / m,
            target: format!(
                "< 1 s with BFD at 100 ms x 3: {}",
                if worst < 1.0 { "met" } else { "missed" }
            ),
        });
    }
    let _ = writeln!(
        out,
        "\nBehind ECMP a death interrupts only what the router sent to that node (about a third \
         of the new connections, until BFD takes its route out; the lab's router hashes each \
         new connection anew, since veth carries the client socket's flow hash); with VRRP \
         every connection waits for the backup. Established connections that were on the dead \
         node resume through another node at their next TCP retransmission after the route \
         change, to the same server.\n"
    );
    Ok(out)
}

/// One host death behind ECMP, with new and long-lived connections running.
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
    let vip = SocketAddrV4::new(VIP, 6443);
    let mut lived = Vec::new();
    for agent in AGENTS {
        for i in 0..4 {
            let mut c = connect(topo.node(agent), vip, Duration::from_secs(2))?;
            let (_, echoed) = echo_roundtrip(&mut c, format!("{agent}-{i}").as_bytes())?;
            if !echoed {
                bail!("a long-lived connection echoed something else");
            }
            c.set_nonblocking(true)?;
            lived.push(Lived {
                stream: c,
                sent: 0,
                received: 0,
                back: None,
            });
        }
    }
    let running = Stream::start(
        &topo,
        StreamSpec {
            agents: AGENTS.iter().map(|a| a.to_string()).collect(),
            tcp: Some(vip),
            udp: None,
            interval: Duration::from_millis(10),
            limit: Duration::from_secs(4),
            timeout: Duration::from_millis(200),
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));
    // The node that dies: lb-2 (each of the three carries about a third of the flows).
    let (name, addr) = LBS[1];
    let left: Vec<Ipv4Addr> = ecmp::addresses(3)
        .into_iter()
        .filter(|a| *a != addr)
        .collect();
    let cut = Instant::now();
    topo.set_link(name, false)?;
    let mut route = None;
    let limit = Duration::from_secs(10);
    while route.is_none() || lived.iter().any(|l| l.back.is_none()) {
        if cut.elapsed() > limit {
            let back = lived.iter().filter(|l| l.back.is_some()).count();
            bail!(
                "{name} died: route {route:?}, long-lived connections back: {back}/{} after {limit:?}",
                lived.len()
            );
        }
        if route.is_none() && ecmp::hops(&topo)? == left {
            route = Some(cut.elapsed());
        }
        for l in lived.iter_mut().filter(|l| l.back.is_none()) {
            l.poll(cut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let attempts = running.finish();
    let failed: Vec<&traffic::Attempt> = attempts.iter().filter(|a| a.result.is_err()).collect();
    let last_failure = failed
        .iter()
        .map(|a| a.started.saturating_duration_since(cut))
        .max()
        .unwrap_or_default();
    drop(lab);
    Ok(Death {
        route: route.unwrap_or_default(),
        failed: failed.len(),
        attempts: attempts.len(),
        last_failure,
        established: lived
            .iter()
            .filter_map(|l| l.back)
            .max()
            .unwrap_or_default(),
    })
}

/// A long-lived connection that sends a byte every poll and counts the echoes.
struct Lived {
    stream: std::net::TcpStream,
    sent: usize,
    received: usize,
    /// When, after the death, every byte sent so far had come back.
    back: Option<Duration>,
}

impl Lived {
    fn poll(&mut self, cut: Instant) {
        if self.stream.write(b"x").is_ok_and(|n| n == 1) {
            self.sent += 1;
        }
        let mut buf = [0u8; 256];
        while let Ok(n) = self.stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            self.received += n;
        }
        if self.sent > 0 && self.received == self.sent {
            self.back = Some(cut.elapsed());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scale.

struct Measured {
    rate: f64,
    cpu_ms_per_1k: f64,
    errors: u64,
}

fn scale_part(summary: &mut Vec<Ratio>) -> Result<String> {
    let mut topo = ecmp::topology()?;
    // As in `bench e2e`: clients reuse ports in TIME_WAIT, a receive queue per CPU.
    e2e::prepare_lab(&mut topo)?;
    // The load balancers keep the default ephemeral ports, below which `snat_source = "node"`
    // takes its SNAT ports (`prepare_lab` widens lb-1's for the e2e benchmark).
    topo.node("lb-1").run(
        "sysctl",
        ["-q", "-w", "net.ipv4.ip_local_port_range=32768 60999"],
    )?;
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
    let agents: Vec<&NetNs> = AGENTS.iter().map(|a| topo.node(a)).collect();
    let all = load::run_agents(&agents, spec)?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = (e2e::machine_busy()? - cpu0 - (e2e::other_cpu(lb_pids) - other0) - idle * seconds)
        .max(0.0);
    Ok(Measured {
        rate: all.connections as f64 / seconds,
        cpu_ms_per_1k: cpu * 1e6 / all.connections.max(1) as f64,
        errors: all.errors,
    })
}
