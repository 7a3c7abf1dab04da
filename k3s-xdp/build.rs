//! Builds the XDP program (`k3s-xdp-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR/k3s-xdp.bpf.o`, where `src/dataplane/object.rs` embeds it into the binary.
//!
//! The BPF target needs a compiler with a `core` for BPF and `bpf-linker`. In order of preference:
//! 1. `K3S_XDP_BPF_OBJECT=/path/to/k3s-xdp.bpf.o`: use a prebuilt object, build nothing.
//! 2. `K3S_XDP_BPF_TOOLCHAIN`: `debian`, `rustup:<toolchain>` (e.g. `rustup:nightly`), or the path
//!    of a `rustc` (its sibling `cargo` is used; `-Z build-std=core` if its sysroot has no BPF core).
//! 3. Debian's `rustc-web` with its prebuilt BPF core (`libstd-rust-web-dev-bpf`).
//! 4. rustup `nightly` with the `rust-src` component (`-Z build-std=core`), for other distros.
//!
//! Anything missing stops a release build with one message that names `cargo xtask setup`. A
//! debug build (`cargo check`, `cargo clippy`, rust-analyzer, `cargo build`) goes on without the
//! BPF toolchain: it embeds an empty stand-in object, says so in a warning, and the binary
//! refuses to load the data plane with a clear message (`dataplane::object`).
//! `K3S_XDP_BPF_STUB=1` asks for the stand-in whatever the profile and toolchain.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{exit, Command},
};

const OBJECT_ENV: &str = "K3S_XDP_BPF_OBJECT";
const TOOLCHAIN_ENV: &str = "K3S_XDP_BPF_TOOLCHAIN";
const STUB_ENV: &str = "K3S_XDP_BPF_STUB";
const TARGET: &str = "bpfel-unknown-none";
const EBPF_PACKAGE: &str = "k3s-xdp-ebpf";
const EBPF_BIN: &str = "k3s-xdp-ebpf";

/// How to invoke cargo for the BPF target.
struct Toolchain {
    /// Human-readable origin, for error messages.
    origin: String,
    /// The program to run and the arguments that precede `build`.
    cargo: Vec<OsString>,
    /// `RUSTC` for the inner build, when it must be named explicitly.
    rustc: Option<PathBuf>,
    /// Whether `core` must be built from source (`-Z build-std=core`).
    build_std: bool,
}

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("k3s-xdp lives in the workspace root")
        .to_path_buf();
    let object = out_dir.join("k3s-xdp.bpf.o");
    // Feature `bench`: a second object with the benchmark entry points, for `k3s-xdp-bench`.
    let bench = env::var_os("CARGO_FEATURE_BENCH").is_some();
    let bench_object = out_dir.join("k3s-xdp-bench.bpf.o");

    println!("cargo:rerun-if-env-changed={OBJECT_ENV}");
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    println!("cargo:rerun-if-env-changed={STUB_ENV}");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed=build.rs");
    for dir in ["k3s-xdp-ebpf", "k3s-xdp-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    if let Some(prebuilt) = env::var_os(OBJECT_ENV) {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        for to in [&object, &bench_object] {
            if let Err(e) = fs::copy(&prebuilt, to) {
                fail(&format!(
                    "{OBJECT_ENV}={} cannot be read: {e}",
                    prebuilt.display()
                ));
            }
        }
        return;
    }

    if env::var_os(STUB_ENV).is_some_and(|v| v == "1") {
        stand_in(&[&object, &bench_object], &format!("{STUB_ENV}=1"));
        return;
    }
    let found = find_toolchain().and_then(|toolchain| {
        find_bpf_linker()
            .map(|linker_dir| (toolchain, linker_dir))
            .ok_or_else(|| {
                "bpf-linker is not installed (looked in PATH and $CARGO_HOME/bin)".to_string()
            })
    });
    match found {
        Ok((toolchain, linker_dir)) => {
            let build = |features: &[&str], to: &Path| {
                build_ebpf(&toolchain, &linker_dir, &workspace, &out_dir, features, to)
            };
            build(&[], &object);
            if bench {
                build(&["bench"], &bench_object);
            }
        }
        // A release build is for running: it needs the real program.
        Err(why) if env::var("PROFILE").as_deref() == Ok("release") => fail(&why),
        Err(why) => stand_in(&[&object, &bench_object], &why),
    }
}

/// Writes empty stand-in objects: the crate compiles and checks, the binary cannot run.
fn stand_in(objects: &[&Path], why: &str) {
    for object in objects {
        if let Err(e) = fs::write(object, b"") {
            fail(&format!("cannot write {}: {e}", object.display()));
        }
    }
    println!(
        "cargo:warning=k3s-xdp is built without its XDP program ({why}): it checks and lints, \
         but `k3s-xdp run` will refuse to start; `cargo xtask setup` installs the BPF toolchain"
    );
}

fn build_ebpf(
    toolchain: &Toolchain,
    linker_dir: &Path,
    workspace: &Path,
    out_dir: &Path,
    features: &[&str],
    object: &Path,
) {
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new(&toolchain.cargo[0]);
    cmd.args(&toolchain.cargo[1..]);
    // The outer cargo's environment describes the host build (target dir, flags, wrappers,
    // rustc); none of it applies to the BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO") || key.starts_with("RUST") {
            cmd.env_remove(key.as_ref());
        }
    }
    if let Some(rustc) = &toolchain.rustc {
        cmd.env("RUSTC", rustc);
    }
    let mut path = OsString::from(linker_dir);
    if let Some(p) = env::var_os("PATH") {
        path.push(":");
        path.push(p);
    }
    // aya-ebpf uses `asm_experimental_arch`; a stable compiler accepts it with this.
    // `target-cpu=v3` (Linux 5.1+; the program needs 5.17+ for `bpf_loop` anyway): 32-bit
    // ALU and jumps, so 32-bit arithmetic (the hashes, checksums, ports) needs no masking
    // in 64-bit registers; 3-5 ns less per packet in `bench micro`, both families.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Ctarget-cpu=v3",
    ]
    .join("\x1f");
    cmd.current_dir(workspace)
        .env("PATH", path)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .args([
            "build",
            "--package",
            EBPF_PACKAGE,
            "--release",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    if toolchain.build_std {
        cmd.args(["-Z", "build-std=core"]);
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => fail(&format!(
            "cannot run the cargo of {}: {e}",
            toolchain.origin
        )),
    };
    if !status.success() {
        // Compiler errors in the XDP program are printed above by the inner cargo.
        eprintln!("error: building the XDP program ({EBPF_PACKAGE}) failed: {status}");
        exit(1);
    }
    let built = target_dir.join(TARGET).join("release").join(EBPF_BIN);
    if let Err(e) = fs::copy(&built, object) {
        fail(&format!(
            "the BPF build left no object at {}: {e}",
            built.display()
        ));
    }
}

fn find_toolchain() -> Result<Toolchain, String> {
    if let Some(choice) = env::var_os(TOOLCHAIN_ENV) {
        let choice = choice.to_string_lossy().into_owned();
        return toolchain_from_override(&choice);
    }
    if let Some(t) = debian_toolchain() {
        return Ok(t);
    }
    if let Some(t) = rustup_toolchain("nightly") {
        return Ok(t);
    }
    Err(
        "no compiler for the BPF target was found: neither Debian's rustc-web with its BPF core \
         (/usr/bin/rustc, /usr/lib/rustlib/bpfel-unknown-none) nor a rustup nightly with rust-src"
            .to_string(),
    )
}

fn toolchain_from_override(choice: &str) -> Result<Toolchain, String> {
    if choice == "debian" {
        return debian_toolchain().ok_or_else(|| {
            format!("{TOOLCHAIN_ENV}=debian, but /usr/bin/rustc has no BPF core in /usr/lib/rustlib/{TARGET}")
        });
    }
    if let Some(name) = choice.strip_prefix("rustup:") {
        return rustup_toolchain(name).ok_or_else(|| {
            format!("{TOOLCHAIN_ENV}={choice}, but rustup toolchain `{name}` is missing or has no rust-src component")
        });
    }
    let rustc = PathBuf::from(choice);
    let cargo = rustc.with_file_name("cargo");
    if !rustc.is_file() || !cargo.is_file() {
        return Err(format!(
            "{TOOLCHAIN_ENV}={choice}: expected `debian`, `rustup:<toolchain>`, or the path of a rustc with a cargo beside it"
        ));
    }
    let sysroot = sysroot_of(&rustc)
        .ok_or_else(|| format!("{TOOLCHAIN_ENV}={choice}: `{choice} --print sysroot` failed"))?;
    let build_std = !has_bpf_core(&sysroot);
    if build_std && !has_rust_src(&sysroot) {
        return Err(format!(
            "{TOOLCHAIN_ENV}={choice}: its sysroot {} has neither a BPF core nor rust-src",
            sysroot.display()
        ));
    }
    Ok(Toolchain {
        origin: format!("{} ({TOOLCHAIN_ENV})", rustc.display()),
        cargo: vec![cargo.into()],
        rustc: Some(rustc),
        build_std,
    })
}

/// Debian's rustc-web: `/usr/bin/rustc` with a prebuilt `core` for BPF. Named by absolute path
/// because rustup's proxies in `~/.cargo/bin` usually come first on PATH.
fn debian_toolchain() -> Option<Toolchain> {
    let rustc = Path::new("/usr/bin/rustc");
    let cargo = Path::new("/usr/bin/cargo");
    if rustc.is_file() && cargo.is_file() && has_bpf_core(Path::new("/usr")) {
        Some(Toolchain {
            origin: "Debian's rustc-web (/usr/bin/rustc, prebuilt BPF core)".into(),
            cargo: vec![cargo.into()],
            rustc: Some(rustc.into()),
            build_std: false,
        })
    } else {
        None
    }
}

/// A rustup toolchain with rust-src, building `core` for BPF from source.
fn rustup_toolchain(name: &str) -> Option<Toolchain> {
    let output = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let prebuilt = has_bpf_core(&sysroot);
    if !prebuilt && !has_rust_src(&sysroot) {
        return None;
    }
    Some(Toolchain {
        origin: format!("rustup toolchain `{name}`"),
        cargo: vec!["rustup".into(), "run".into(), name.into(), "cargo".into()],
        rustc: None,
        build_std: !prebuilt,
    })
}

fn sysroot_of(rustc: &Path) -> Option<PathBuf> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn has_bpf_core(sysroot: &Path) -> bool {
    let lib = sysroot.join("lib/rustlib").join(TARGET).join("lib");
    fs::read_dir(lib)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false)
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

/// The directory holding `bpf-linker`: PATH first, then `$CARGO_HOME/bin` (where
/// `cargo install` puts it, and which build scripts do not always have on PATH).
fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().find(|d| d.join("bpf-linker").is_file())
}

fn fail(why: &str) -> ! {
    eprintln!(
        "\nerror: cannot build the XDP program of k3s-xdp: {why}.\n\
         \n  Run `cargo xtask setup` to install the BPF toolchain (Debian's rustc-web with its BPF\n  \
         core, bpf-linker and LLVM 22), or see README.md, \"Building on other distributions\".\n"
    );
    exit(1);
}
