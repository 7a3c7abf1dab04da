//! `cargo xtask fuzz [--seconds N] [--packets N] [--no-bpf] [TARGET]`: coverage-guided fuzzing
//! of the parsers of outside input (the `fuzz/` crate, cargo-fuzz and libFuzzer), then the XDP
//! program's own fuzz test with a million packets per family (`bpf`).
//!
//! Each target runs for `--seconds` from the corpus in the repository (`fuzz/corpus/TARGET`).
//! What a run finds new goes to a scratch directory (`fuzz/target/new-corpus/TARGET`, read
//! again by the next run), never into the repository by itself: a person merges and minimizes
//! what is worth committing. A crash, a timeout (an input that takes more than
//! [`TIMEOUT_SECS`]) or an input that makes the target use more than [`RSS_LIMIT_MB`] fails
//! the run, with the reproducer's path and the command that replays it.
//!
//! The fuzz crate needs a nightly compiler (libFuzzer's instrumentation flags): rustup's
//! `nightly` when installed, else the default toolchain with `RUSTC_BOOTSTRAP=1`. It builds
//! k3s-xdp with `K3S_XDP_BPF_STUB=1` (no XDP program: the parsers do not need it), without a
//! sanitizer (the parsers are safe Rust; overflow checks and debug assertions stay on), in the
//! fuzz crate's `dev` profile, which is optimized (`opt-level = 1`): its targets run as fast as
//! cargo-fuzz's release build (`opt-level = 3`, one codegen unit) and it compiles with about
//! three quarters of the CPU time, which matters on CI's two cores.

use crate::{setup, util};
use anyhow::{bail, Context, Result};
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

/// libFuzzer's `-timeout`: one input taking longer is a hang.
pub const TIMEOUT_SECS: u64 = 10;
/// libFuzzer's `-rss_limit_mb`: more is a runaway allocation (a single allocation above 64 MiB
/// aborts the target before: `fuzz/src/lib.rs`, `ALLOCATION_LIMIT`).
pub const RSS_LIMIT_MB: u64 = 1024;
/// The pseudo-target that runs the XDP program's fuzz test (`tests/tests/bpf_fuzz.rs`).
pub const BPF: &str = "bpf";

pub struct Options {
    pub seconds: u64,
    /// One target (or [`BPF`]); all of them when `None`.
    pub target: Option<String>,
    /// Packets per family for [`BPF`].
    pub packets: u64,
    /// Whether the whole run includes [`BPF`].
    pub bpf: bool,
}

pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let bpf = match options.target.as_deref() {
        Some(BPF) => true,
        Some(_) => false,
        None => options.bpf,
    };
    let mut report = Vec::new();
    if options.target.as_deref() != Some(BPF) {
        setup::ensure_cargo_fuzz()?;
        let fuzz = FuzzCargo::detect()?;
        let all = fuzz.targets()?;
        let targets: Vec<String> = match &options.target {
            Some(t) if all.contains(t) => vec![t.clone()],
            Some(t) => bail!(
                "no fuzz target {t}: the targets are {} (and {BPF}, the XDP program's fuzz test)",
                all.join(", ")
            ),
            None => all,
        };
        let build = Instant::now();
        fuzz.build()?;
        println!(
            "fuzz: built the fuzz targets in {:.0?} ({})",
            build.elapsed(),
            fuzz.origin
        );
        for target in &targets {
            report.push(fuzz.run(target, options.seconds)?);
        }
    }
    if bpf {
        report.push(bpf_fuzz(options.packets)?);
    }
    println!("fuzz: done in {:.0?}", started.elapsed());
    for line in report {
        println!("  {line}");
    }
    Ok(())
}

/// `cargo fuzz` with the toolchain that builds it here.
struct FuzzCargo {
    /// Environment that selects the toolchain.
    env: Vec<(&'static str, &'static str)>,
    origin: &'static str,
    /// How a person runs it by hand, for the replay command.
    by_hand: &'static str,
}

impl FuzzCargo {
    fn detect() -> Result<Self> {
        // rustup's proxies pick the toolchain from RUSTUP_TOOLCHAIN (never installing one).
        let nightly = vec![
            ("RUSTUP_TOOLCHAIN", "nightly"),
            ("RUSTUP_AUTO_INSTALL", "0"),
        ];
        if works(&nightly) {
            return Ok(FuzzCargo {
                env: nightly,
                origin: "rustup nightly",
                by_hand: "cargo +nightly fuzz",
            });
        }
        let bootstrap = vec![("RUSTC_BOOTSTRAP", "1")];
        if works(&bootstrap) {
            return Ok(FuzzCargo {
                env: bootstrap,
                origin: "the default toolchain with RUSTC_BOOTSTRAP=1",
                by_hand: "RUSTC_BOOTSTRAP=1 cargo fuzz",
            });
        }
        bail!(
            "fuzzing needs a Rust compiler that takes nightly flags: neither rustup's nightly \
             (`rustup toolchain install nightly`) nor the default toolchain with \
             RUSTC_BOOTSTRAP=1 could compile with `-Z unstable-options`"
        )
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.arg("fuzz")
            .current_dir(util::workspace_root())
            .env("K3S_XDP_BPF_STUB", "1")
            .envs(self.env.iter().copied());
        // What `cargo run` told xtask about itself: ring's build script watches
        // CARGO_MANIFEST_DIR, so leaving it would rebuild the fuzz targets' dependencies
        // whenever they are built by hand in between.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || matches!(
                    &*name,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                )
            {
                cmd.env_remove(&*name);
            }
        }
        cmd
    }

    fn targets(&self) -> Result<Vec<String>> {
        let output = self
            .command()
            .arg("list")
            .output()
            .context("cannot run `cargo fuzz list`")?;
        if !output.status.success() {
            bail!(
                "`cargo fuzz list` failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    fn build(&self) -> Result<()> {
        let mut cmd = self.command();
        cmd.args(["build", "--dev", "--sanitizer", "none"]);
        util::exec(cmd)
    }

    /// Runs `target` for `seconds`; its output goes to a log, a summary to the caller.
    fn run(&self, target: &str, seconds: u64) -> Result<String> {
        let root = util::workspace_root();
        let corpus = root.join("fuzz/corpus").join(target);
        let scratch = root.join("fuzz/target/new-corpus").join(target);
        let logs = root.join("fuzz/target/logs");
        for dir in [&corpus, &scratch, &logs] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log_path = logs.join(format!("{target}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        println!("fuzz: {target} for {seconds} s (log: {})", rel(&log_path));
        let mut cmd = self.command();
        // New inputs go to the first corpus directory, the scratch one.
        cmd.args(["run", "--dev", "--sanitizer", "none", target])
            .arg(&scratch)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={TIMEOUT_SECS}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let status = cmd
            .status()
            .with_context(|| format!("cannot start `cargo fuzz run {target}`"))?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            for line in why(&text) {
                eprintln!("  | {line}");
            }
            eprintln!("  | (the whole output: {})", rel(&log_path));
            return Err(match written_unit(&text) {
                Some(unit) => anyhow::anyhow!(
                    "fuzz target {target} failed ({status}); the reproducer is {unit}: replay it \
                     with `K3S_XDP_BPF_STUB=1 {} run --dev --sanitizer none {target} {unit}`, then \
                     make it a regression test next to the parser",
                    self.by_hand
                ),
                None => anyhow::anyhow!(
                    "fuzz target {target} failed ({status}) without a reproducer; see {}",
                    rel(&log_path)
                ),
            });
        }
        let stat = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let found = fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
        Ok(format!(
            "{target}: {} runs, {} execs/s; {} ({found} inputs beyond the corpus, not committed)",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            rel(&scratch)
        ))
    }
}

/// Whether `rustc` with `env` takes nightly flags.
fn works(env: &[(&str, &str)]) -> bool {
    Command::new("rustc")
        .args(["-Z", "unstable-options", "--version"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the log says of the failure: the panic and its message, or libFuzzer's verdict (a
/// timeout, memory, a deadly signal).
fn why(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        return lines[at..]
            .iter()
            .take_while(|l| !l.starts_with("stack backtrace") && !l.starts_with("note:"))
            .take(20)
            .copied()
            .collect();
    }
    lines
        .iter()
        .filter(|l| {
            l.contains("==ERROR: libFuzzer")
                || l.contains("ALARM:")
                || l.contains("out-of-memory")
                || l.contains("deadly signal")
                || l.starts_with("fuzz: ")
        })
        .take(10)
        .copied()
        .collect()
}

/// The path of the input libFuzzer saved when the target failed.
fn written_unit(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, path)| path.trim().to_string())
    })
}

/// `path` relative to the workspace root, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(util::workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The XDP program's fuzz test (`tests/tests/bpf_fuzz.rs`, IPv4 and IPv6) with `packets`
/// packets per family instead of its usual 100,000. Needs root (BPF_PROG_TEST_RUN).
fn bpf_fuzz(packets: u64) -> Result<String> {
    util::require_root("cargo xtask fuzz bpf")?;
    crate::build()?;
    println!("fuzz: the XDP program's fuzz test with {packets} packets per family");
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "test",
        "--release",
        "--locked",
        "-p",
        "k3s-xdp-tests",
        "--test",
        "bpf_fuzz",
        "--",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .current_dir(util::workspace_root())
    .env("K3S_XDP_FUZZ_PACKETS", packets.to_string());
    util::exec(cmd)?;
    Ok(format!(
        "{BPF}: {packets} packets per family (IPv4, IPv6) in {:.0?}",
        started.elapsed()
    ))
}
