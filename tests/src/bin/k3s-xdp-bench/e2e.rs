//! `cargo xtask bench e2e`: k3s-xdp against HAProxy and nginx on the lab topology (issue 6).

use anyhow::{bail, Result};

/// Runs the end-to-end benchmark and returns its markdown report.
pub fn run(_machine: &str) -> Result<String> {
    bail!("the e2e benchmark is not written yet")
}
