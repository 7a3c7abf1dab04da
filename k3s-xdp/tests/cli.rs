//! The command line as a shell uses it.

use std::process::{Command, Stdio};

/// `k3s-xdp check ... | head -0`: the reader leaves before the output is written; the
/// command ends by SIGPIPE as other tools do, not with a panic (exit 101).
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lb-1.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_k3s-xdp"))
        .args(["check", "--config", example])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
