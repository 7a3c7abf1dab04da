//! `cargo xtask bench [micro | controller | failover | e2e | scaleout | sync | flood | all]`: benchmarks, never
//! assertions. Figures are reported as medians over interleaved rounds and as ratios to a
//! baseline measured in the same run, because this machine's timings are noisy.
//!
//! - `micro`: ns/packet of the real XDP program with BPF_PROG_TEST_RUN (one packet per call,
//!   so that the program never sees its own output) for a SYN of a new flow,
//!   a packet of an established flow, a backend's reply (reverse NAT) and a non-VIP packet,
//!   against the floor: a MAC-swap + XDP_TX program. Counters check that every call took the
//!   path it measures.
//! - `controller`: time to build and publish a 65537-entry Maglev table for 3, 100 and 1000
//!   backends; time from a backend's death to its removal from the data plane, with the default
//!   timers and with `inter = "200ms"`.
//! - `failover`: master lost → first connection through the VIP, k3s-xdp pair vs keepalived +
//!   HAProxy pair, and k3s-xdp at 100 ms adverts (`failover.rs`); then the established
//!   connections, server speaking first, that survive it: k3s-xdp nat with and without flow
//!   sync, dsr, and the seeds' keepalived + HAProxy (`survive.rs`).
//! - `e2e`: the same client load direct, through k3s-xdp nat/dsr, HAProxy and nginx: new
//!   connections/s, throughput, latency, CPU on the load-balancer node, plots (`e2e.rs`).
//! - `scaleout`: BGP/ECMP over three nodes: a node's death (BFD) vs the VRRP pair, and the
//!   cost per connection through one, two and three nodes (`scaleout.rs`).
//! - `sync`: flow sync between two nodes: new flows/s replicated, their lag, CPU per 1,000
//!   flows (`sync.rs`).
//! - `flood`: a SYN flood from one agent while the others connect and keep connections:
//!   k3s-xdp nat (default and small flow table) against HAProxy: legitimate connections
//!   served and their latency, long-lived ones lost, flow-table events, CPU (`flood.rs`).
//! - `all` (the default): everything, and a summary table of ratios first.

mod controller;
mod e2e;
mod e2e_report;
mod failover;
mod flood;
mod load;
mod micro;
mod plot;
mod profile;
mod scaleout;
mod survive;
mod sync;

use anyhow::{bail, Result};
use k3s_xdp_tests::bpf::have_root;
use std::{fmt::Write as _, path::PathBuf};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let result = (|| -> Result<()> {
        if !have_root() {
            bail!("benchmarks load XDP programs and create namespaces: run as root (cargo xtask bench)");
        }
        let mut report = String::new();
        let mut summary = Vec::new();
        if matches!(what, "micro" | "all") {
            report.push_str(&micro::micro(&mut summary)?);
        }
        if matches!(what, "controller" | "all") {
            report.push_str(&controller::controller(&mut summary)?);
        }
        if matches!(what, "failover" | "all") {
            report.push_str(&failover::run(&mut summary)?);
        }
        if matches!(what, "e2e" | "all") {
            report.push_str(&e2e::run_with_summary(&machine(), &mut summary)?);
        }
        if matches!(what, "scaleout" | "all") {
            report.push_str(&scaleout::run(&mut summary)?);
        }
        if matches!(what, "sync" | "all") {
            report.push_str(&sync::run(&mut summary)?);
        }
        if matches!(what, "flood" | "all") {
            report.push_str(&flood::run(&mut summary)?);
        }
        if report.is_empty() {
            bail!("unknown benchmark {what:?}: micro, controller, failover, e2e, scaleout, sync, flood or all");
        }
        if what == "all" {
            report = format!("{}\n{report}", render_summary(&summary));
        }
        save(what, &report)?;
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// One line of the summary that `cargo xtask bench` prints: a figure as a ratio to the
/// baseline measured in the same run.
pub struct Ratio {
    pub what: String,
    pub value: String,
    pub baseline: String,
    pub ratio: f64,
    /// The target and whether it is met, or "-".
    pub target: String,
}

fn render_summary(rows: &[Ratio]) -> String {
    let mut out = String::from(
        "## Summary: ratios to baselines measured in the same run\n\n| figure | value | baseline | ratio | target |\n|---|---:|---|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2}x | {} |",
            r.what, r.value, r.baseline, r.ratio, r.target
        );
    }
    out
}

fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench-results")
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    format!("{cores} cores ({model}), kernel {}", kernel.trim())
}

fn save(what: &str, report: &str) -> Result<()> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let text = format!(
        "# k3s-xdp benchmarks: {what}\n\nMachine: {}. Command: `cargo xtask bench {what}`.\n\n{report}",
        machine()
    );
    let path = dir.join(format!("{what}.md"));
    std::fs::write(&path, &text)?;
    println!("{text}\n(written to {})", path.display());
    Ok(())
}

/// Median of a slice (sorted in place).
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}
