//! `bench controller`: building and publishing Maglev tables, and the time from a backend's
//! death to its removal from the data plane.

use anyhow::Result;
use k3s_xdp::{dataplane::publish_table, maglev};
use k3s_xdp_tests::{
    backend::{Backend, Kind},
    bpf::XdpHarness,
    daemon::Daemon,
    topology::{Topology, SERVERS, VIP},
};
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use super::{median, Ratio};

pub fn controller(summary: &mut Vec<Ratio>) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(out, "## Control plane\n");
    let _ = writeln!(
        out,
        "### Building and publishing a Maglev table of 65537 entries\n"
    );
    let _ = writeln!(out, "Median of 20 (min-max). Build: `maglev::build`. Publish: a fresh BPF_F_MMAPABLE inner map, one copy through the mapping, one swap in `MAGLEV`; most of it is the kernel waiting for an RCU grace period before the swap returns (`synchronize_rcu` for map-in-map updates), the guarantee that no packet still reads the old table.\n");
    let _ = writeln!(out, "| backends | build | publish | total |");
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    let mut h = XdpHarness::new()?;
    for n in [3usize, 100, 1000] {
        let identities: Vec<String> = (0..n)
            .map(|i| format!("198.51.{}.{}:6443", i / 250, i % 250 + 1))
            .collect();
        let candidates: Vec<maglev::Candidate<'_>> = identities
            .iter()
            .enumerate()
            .map(|(i, id)| maglev::Candidate {
                identity: id,
                weight: 100,
                value: i as u32 + 1,
            })
            .collect();
        let mut builds = Vec::new();
        let mut publishes = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let table = maglev::build(&candidates, 65537);
            builds.push(t.elapsed().as_micros() as u64);
            let t = Instant::now();
            publish_table(&mut h.dataplane, 0, &table)?;
            publishes.push(t.elapsed().as_micros() as u64);
        }
        let fmt = |v: &mut Vec<u64>| {
            let m = median(v);
            format!(
                "{:.2} ms ({:.2}-{:.2})",
                m as f64 / 1000.0,
                v[0] as f64 / 1000.0,
                v[v.len() - 1] as f64 / 1000.0
            )
        };
        let total: Vec<u64> = builds.iter().zip(&publishes).map(|(a, b)| a + b).collect();
        let build_ms = median(&mut builds.clone()) as f64 / 1000.0;
        summary.push(Ratio {
            what: format!("Maglev build, 65537 entries, {n} backends"),
            value: format!("{build_ms:.2} ms"),
            baseline: "Maglev paper 1.8 ms".into(),
            ratio: build_ms / 1.8,
            target: "-".into(),
        });
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} |",
            fmt(&mut builds),
            fmt(&mut publishes),
            fmt(&mut total.clone())
        );
    }
    let _ = writeln!(
        out,
        "\nThe Maglev paper reports 1.8 ms to build a table of this size.\n"
    );

    let _ = writeln!(
        out,
        "### From a backend's death to its removal from the data plane\n"
    );
    let _ = writeln!(out, "server-2's backend stops (listener and connections closed, as a crash); time until `k3s-xdp status` shows it DOWN, which happens in the same controller step that removes it from the Maglev table. tcp checks; median of 3 (min-max).\n");
    let _ = writeln!(out, "| timers | detection |");
    let _ = writeln!(out, "|---|---:|");
    let mut detections = Vec::new();
    for (label, health) in [
        ("defaults (inter 2s, fall 3)", "check = \"tcp\"\n"),
        (
            "inter = \"200ms\" (fall 3)",
            "check = \"tcp\"\ninter = \"200ms\"\n",
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(detection(health)?);
        }
        times.sort();
        detections.push(times[1].as_secs_f64());
        let _ = writeln!(
            out,
            "| {label} | {:.2} s ({:.2}-{:.2}) |",
            times[1].as_secs_f64(),
            times[0].as_secs_f64(),
            times[2].as_secs_f64()
        );
    }
    let _ = writeln!(out);
    summary.push(Ratio {
        what: "dead backend removed, inter = 200ms".into(),
        value: format!("{:.2} s", detections[1]),
        baseline: format!("default timers {:.2} s", detections[0]),
        ratio: detections[1] / detections[0],
        target: "-".into(),
    });
    Ok(out)
}

/// Starts the lab with `health` settings, kills server-2's backend, returns the time until the
/// daemon reports it down.
fn detection(health: &str) -> Result<Duration> {
    let topo = Topology::builder()
        .without("lb-2")
        .without("agent-2")
        .without("agent-3")
        .build()?;
    let mut backends = Vec::new();
    for s in SERVERS {
        backends.push(Backend::start(topo.node(s), s, 6443, Kind::Tcp, &[])?);
    }
    let config = format!(
        "interface = \"eth1\"\n[[service]]\nname = \"k3s-api\"\nvip = \"{VIP}\"\nport = 6443\nbackends = [\n{}\n]\n[service.health]\n{health}",
        SERVERS
            .iter()
            .map(|s| format!("  {{ name = \"{s}\", address = \"{}:6443\" }},", topo.addr(s)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let daemon = Daemon::start(&topo, "lb-1", &config)?;
    daemon.wait_healthy(Duration::from_secs(20))?;
    // Fully up first (health counter at rise + fall - 1), so it takes `fall` failures.
    daemon.wait_for(Duration::from_secs(60), "every backend fully up", |s| {
        s.services[0]
            .backends
            .iter()
            .all(|b| b.health_counter == b.health_max)
    })?;
    let started = Instant::now();
    backends[1].stop();
    daemon.wait_for(Duration::from_secs(60), "server-2 down", |s| {
        s.services[0]
            .backends
            .iter()
            .any(|b| b.name == "server-2" && b.health == "down")
    })?;
    Ok(started.elapsed())
}
