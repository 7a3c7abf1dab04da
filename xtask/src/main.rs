//! `cargo xtask`: the developer commands of k3s-xdp.
//!
//! - `setup`: install what building and testing need (apt packages, bpf-linker); quick no-op when
//!   everything is there.
//! - `build`: build the workspace (release), with the XDP program embedded.
//! - `run -- ARGS`: build, then `k3s-xdp run ARGS` as root.
//! - `lab [--keep | --down] [--bgp]`: the seed topology in network namespaces, with traffic
//!   through the VIP (`--bgp`: three active nodes behind a router, BGP/ECMP through BIRD).
//! - `test`: unit tests, BPF tests and integration tests (root).
//! - `soak [--minutes N] [--seed S] [--table-full]`: the VRRP pair under traffic and a seeded fault schedule for N
//!   minutes (default 10; `test` runs 2), judged; the report in `bench-results/soak.md`.
//! - `lint`: `cargo fmt --check` and `cargo clippy -- -D warnings`.
//! - `bench [micro | controller | failover | e2e | scaleout | sync | flood | all]`: benchmarks,
//!   results in `bench-results/`.
//! - `fuzz [--seconds N] [--packets N] [--no-bpf] [TARGET]`: coverage-guided fuzzing of every
//!   parser of outside input (the `fuzz/` crate: config, haproxy.cfg and keepalived.conf import,
//!   VRRP, control socket, flow sync), N seconds per target from the corpus in `fuzz/corpus/`;
//!   then the XDP program's fuzz test with a million packets per family (`bpf`, root). `test`
//!   runs each parser target for 10 s too.
//!
//! `lab`, `test` and `run` call `setup` themselves when something is missing, so a fresh machine
//! needs nothing but these commands.

mod fuzz;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer commands of k3s-xdp")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the BPF toolchain and test tools (apt packages, bpf-linker); no-op when present.
    Setup {
        /// Also install the peers that benchmarks compare against (haproxy, nginx, wrk, iperf3).
        #[arg(long)]
        bench: bool,
    },
    /// Build the workspace in release mode, with the XDP program embedded.
    Build,
    /// Build, then run `k3s-xdp run` with these arguments (as root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the seed topology in network namespaces, run k3s-xdp on lb-1, drive traffic, report.
    Lab {
        /// Leave the topology up for exploring (remove it later with `cargo xtask lab --down`).
        #[arg(long, conflicts_with = "down")]
        keep: bool,
        /// Remove a topology left up by `--keep`.
        #[arg(long)]
        down: bool,
        /// Active-active: a router with ECMP and three load balancers, each with BIRD and
        /// k3s-xdp's `[bgp]`.
        #[arg(long, conflicts_with = "down")]
        bgp: bool,
    },
    /// Run the unit tests, the BPF tests and the integration tests (needs root).
    Test {
        /// Arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The soak (root): the VRRP pair with flow sync under new connections, long-lived ones
    /// and UDP requests while a seeded schedule of faults runs; fails on any broken rule; the
    /// report is printed and saved to bench-results/soak.md.
    Soak {
        /// How long traffic and faults run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// The fault schedule's seed (printed by every run, to repeat it); default: the clock.
        #[arg(long)]
        seed: Option<u64>,
        /// Also push the flow tables to full with a burst of flows (fails today: established
        /// connections are evicted and reset; issue 21's flood target).
        #[arg(long)]
        table_full: bool,
    },
    /// Check formatting and lints (`cargo fmt --check`, `cargo clippy -- -D warnings`).
    Lint,
    /// Benchmarks (root): micro (XDP ns/packet), controller (table build, failure detection),
    /// failover (VRRP vs keepalived), e2e (vs HAProxy and nginx), scaleout (BGP/ECMP over three
    /// nodes), sync (flow sync's replication rate), flood (a SYN flood, vs HAProxy), or all of
    /// them with a summary table of ratios; results in bench-results/.
    Bench {
        #[arg(default_value = "all")]
        what: String,
    },
    /// Fuzz the parsers of outside input (cargo-fuzz; corpus in fuzz/corpus/), each target for
    /// --seconds, then the XDP program's fuzz test with --packets per family (target `bpf`,
    /// root). Fails on a crash, a hang or a runaway allocation, naming the reproducer.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Packets per family for the XDP program's fuzz test.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// The parsers only, without the XDP program's fuzz test (what `test` runs; no root).
        #[arg(long, conflicts_with = "target")]
        no_bpf: bool,
        /// One target (`cargo fuzz list`, or `bpf`); all of them by default.
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Setup { bench } => setup::run(setup::Scope { bench }),
        Command::Build => build(),
        Command::Run { args } => {
            build()?;
            util::require_root("cargo xtask run")?;
            let mut cmd = util::workspace_command("target/release/k3s-xdp");
            cmd.arg("run").args(args);
            util::exec(cmd)
        }
        Command::Lab { keep, down, bgp } => {
            build()?;
            build_bench()?;
            util::require_root("cargo xtask lab")?;
            let mut cmd = util::workspace_command("target/release/k3s-xdp-lab");
            if keep {
                cmd.arg("--keep");
            }
            if down {
                cmd.arg("--down");
            }
            if bgp {
                cmd.arg("--bgp");
            }
            util::exec(cmd)
        }
        Command::Test { args } => test(args),
        Command::Soak {
            minutes,
            seed,
            table_full,
        } => soak(minutes, seed, table_full),
        Command::Bench { what } => {
            setup::ensure(setup::Scope { bench: true })?;
            build()?;
            build_bench()?;
            util::require_root("cargo xtask bench")?;
            let mut cmd = util::workspace_command("target/release/k3s-xdp-bench");
            cmd.arg(what);
            cmd.env(
                "K3S_XDP_BIN",
                util::workspace_root().join("target/release/k3s-xdp"),
            );
            util::exec(cmd)
        }
        Command::Lint => lint(),
        Command::Fuzz {
            seconds,
            packets,
            no_bpf,
            target,
        } => fuzz::run(&fuzz::Options {
            seconds,
            target,
            packets,
            bpf: !no_bpf,
        }),
    }
}

pub(crate) fn build() -> Result<()> {
    setup::ensure(setup::Scope::default())?;
    // The default members: everything but the eBPF crate, which k3s-xdp's build.rs builds.
    util::cargo(&["build", "--release", "--locked", "--bins"])
}

/// The benchmarks and the lab (`bench/`): not a default member, because they need k3s-xdp's
/// `bench` feature, which builds the XDP program a second time with its benchmark entry points.
fn build_bench() -> Result<()> {
    util::cargo(&[
        "build",
        "--release",
        "--locked",
        "--package",
        "k3s-xdp-bench",
    ])
}

fn test(args: Vec<String>) -> Result<()> {
    util::require_root("cargo xtask test")?;
    // The integration tests run the real binary (k3s-xdp) in namespaces.
    build()?;
    std::env::set_var(
        "K3S_XDP_BIN",
        util::workspace_root().join("target/release/k3s-xdp"),
    );
    let mut cargo_args = vec!["test", "--release", "--locked"];
    if !args.is_empty() {
        cargo_args.push("--");
        cargo_args.extend(args.iter().map(String::as_str));
    }
    util::cargo(&cargo_args)?;
    if !args.is_empty() {
        // A filter asks for some tests, not for the whole suite.
        return Ok(());
    }
    // Each parser's fuzz target, briefly, from the committed corpus (the XDP program's fuzz
    // test ran above with its usual 100,000 packets per family).
    fuzz::run(&fuzz::Options {
        seconds: FUZZ_SECONDS_IN_TEST,
        target: None,
        packets: 0,
        bpf: false,
    })
}

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 10;

fn lint() -> Result<()> {
    setup::ensure(setup::Scope::default())?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&[
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// `cargo xtask soak`: the release build, then the soak test with its settings and the report
/// saved to bench-results/soak.md.
fn soak(minutes: u64, seed: Option<u64>, table_full: bool) -> Result<()> {
    util::require_root("cargo xtask soak")?;
    build()?;
    let root = util::workspace_root();
    std::fs::create_dir_all(root.join("bench-results"))?;
    std::env::set_var("K3S_XDP_BIN", root.join("target/release/k3s-xdp"));
    std::env::set_var("K3S_XDP_SOAK_MINUTES", minutes.to_string());
    std::env::set_var("K3S_XDP_SOAK_REPORT", root.join("bench-results/soak.md"));
    if let Some(seed) = seed {
        std::env::set_var("K3S_XDP_SOAK_SEED", seed.to_string());
    }
    if table_full {
        std::env::set_var("K3S_XDP_SOAK_TABLE_FULL", "1");
    }
    util::cargo(&[
        "test",
        "--release",
        "--locked",
        "--package",
        "k3s-xdp-tests",
        "--test",
        "soak",
        "--",
        "--nocapture",
    ])
}
