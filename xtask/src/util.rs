//! Running commands from the workspace root, and the root check.

use anyhow::{bail, Context, Result};
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A command for a program given relative to the workspace root, run from there.
pub fn workspace_command(program: &str) -> Command {
    let root = workspace_root();
    let mut cmd = Command::new(root.join(program));
    cmd.current_dir(root);
    cmd
}

/// Runs `cargo ARGS` from the workspace root with the cargo that runs xtask.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    exec(cmd)
}

/// Runs a command with inherited stdio; fails if it cannot start or exits non-zero.
pub fn exec(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .stdin(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(what: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!(
        "{what} needs root: it loads XDP programs (BPF_PROG_TEST_RUN, attach) and creates network \
         namespaces, which need CAP_BPF/CAP_SYS_ADMIN and CAP_NET_ADMIN. Run it as root, e.g. \
         `sudo -E env PATH=\"$PATH\" {what}`."
    )
}
