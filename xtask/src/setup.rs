//! `cargo xtask setup`: installs what building and testing k3s-xdp need, and nothing when it is
//! all there (one `dpkg-query`, one `bpf-linker --version` and one `cargo fuzz --version`, well
//! under a second). cargo-fuzz comes from the crate registry; the nightly compiler it needs is
//! rustup's, or the default one with `RUSTC_BOOTSTRAP=1` (`fuzz.rs`).
//!
//! On Debian 12 the BPF compiler is Debian's `rustc-web` with its prebuilt BPF `core`, and the
//! linker is `bpf-linker` 0.13 built against Debian's LLVM 22 (the LLVM that Debian's rustc-web uses). On other
//! distributions install a rustup nightly with `rust-src` and `bpf-linker` yourself; the build
//! finds them (README, "Building on other distributions").

use crate::util::{exec, is_root};
use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

/// Compiling the XDP program: Debian's rustc-web with a BPF core, LLVM 22 for bpf-linker.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "libxml2-dev",
    "libffi-dev",
];

/// Running the tests and the lab: namespaces, tools, and the real peers the tests talk to.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "procps",
    "bpftool",
    "ethtool",
    "tcpdump",
    "openssl",
    "keepalived",
    "bird2",
];

/// Benchmarks: the load balancers the seeds install today, load generators, the font of the
/// plots, and perf for the end-to-end benchmark's profile.
const BENCH_PACKAGES: &[&str] = &[
    "haproxy",
    "nginx",
    "libnginx-mod-stream",
    "wrk",
    "iperf3",
    "fonts-dejavu-core",
    "linux-perf",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo xtask fuzz` (and `test`, which fuzzes each target briefly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Clone, Copy, Default)]
pub struct Scope {
    pub bench: bool,
}

impl Scope {
    fn packages(self) -> Vec<&'static str> {
        let mut all = BUILD_PACKAGES.to_vec();
        all.extend_from_slice(TEST_PACKAGES);
        if self.bench {
            all.extend_from_slice(BENCH_PACKAGES);
        }
        all
    }
}

/// `cargo xtask setup`: install what is missing and say what was done.
pub fn run(scope: Scope) -> Result<()> {
    let started = Instant::now();
    let installed = ensure(scope)?;
    if installed {
        println!("setup: done in {:.1?}", started.elapsed());
    } else {
        println!(
            "setup: everything is installed (checked in {:.0?})",
            started.elapsed()
        );
    }
    Ok(())
}

/// Installs what is missing; returns whether anything was installed.
pub fn ensure(scope: Scope) -> Result<bool> {
    if std::env::var_os("K3S_XDP_SKIP_SETUP").is_some() {
        return Ok(false);
    }
    let fuzz_installed = ensure_cargo_fuzz()?;
    let missing = missing_packages(&scope.packages())?;
    let linker_ok = bpf_linker_ok();
    if missing.is_empty() && linker_ok {
        return Ok(fuzz_installed);
    }
    if !is_root() {
        let mut what: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
        if !linker_ok {
            what.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
        }
        bail!(
            "missing: {}. Installing them needs root: run `sudo -E env PATH=\"$PATH\" cargo xtask setup`",
            what.join(", ")
        );
    }
    if !missing.is_empty() {
        install_packages(&missing)?;
    }
    if !linker_ok {
        install_bpf_linker()?;
    }
    Ok(true)
}

/// Packages of `wanted` that dpkg does not report as installed.
fn missing_packages(wanted: &[&'static str]) -> Result<Vec<&'static str>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(wanted)
        .output()
        .context("cannot run dpkg-query: `cargo xtask setup` supports Debian 12; elsewhere see README.md, \"Building on other distributions\"")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(wanted
        .iter()
        .copied()
        .filter(|pkg| {
            !listing.lines().any(|line| {
                let mut fields = line.split_whitespace();
                fields.next() == Some(pkg) && fields.next() == Some("ii")
            })
        })
        .collect())
}

fn install_packages(packages: &[&str]) -> Result<()> {
    println!("setup: installing {}", packages.join(" "));
    let started = Instant::now();
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    exec(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    // keepalived, haproxy and nginx would start as system services in the root namespace;
    // tests and benchmarks start their own, inside namespaces.
    let _no_daemons = DenyServiceStarts::install()?;
    exec(install)?;
    println!("setup: packages installed in {:.1?}", started.elapsed());
    Ok(())
}

fn cargo_bin_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return PathBuf::from(home).join("bin");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cargo/bin")
}

/// bpf-linker of the expected version, linked against LLVM 22 (what rustc-web emits).
fn bpf_linker_ok() -> bool {
    let linker = cargo_bin_dir().join("bpf-linker");
    let from_path = Command::new("bpf-linker").arg("--version").output();
    let output = match from_path {
        Ok(o) if o.status.success() => o,
        _ => match Command::new(&linker).arg("--version").output() {
            Ok(o) if o.status.success() => o,
            _ => return false,
        },
    };
    String::from_utf8_lossy(&output.stdout).contains(BPF_LINKER_VERSION)
}

fn install_bpf_linker() -> Result<()> {
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 80 s)");
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["install", "--locked", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        // bpf-linker's build script finds LLVM through LLVM_PREFIX, else the first llvm-config
        // on PATH, which on Debian may be an older LLVM (e.g. /usr/bin/llvm-config of LLVM 14).
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    exec(cmd)?;
    println!("setup: bpf-linker installed in {:.1?}", started.elapsed());
    Ok(())
}

/// Installs cargo-fuzz from the crate registry when `cargo fuzz` is missing (no root needed);
/// returns whether it did.
pub fn ensure_cargo_fuzz() -> Result<bool> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(false);
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 90 s)");
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["install", "--locked"])
        .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"));
    exec(cmd)?;
    println!("setup: cargo-fuzz installed in {:.1?}", started.elapsed());
    Ok(true)
}

/// While alive, `/usr/sbin/policy-rc.d` tells Debian's maintainer scripts not to start services.
/// Only created (and then removed) when the machine has none of its own.
struct DenyServiceStarts(Option<PathBuf>);

impl DenyServiceStarts {
    fn install() -> Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            &path,
            "#!/bin/sh\n# written by cargo xtask setup, removed after apt-get\nexit 101\n",
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for DenyServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
