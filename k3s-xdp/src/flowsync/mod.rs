//! Flow sync (`[flow_sync]`, DESIGN.md "Flow sync"): nat flows known to every load balancer of
//! the same VIPs, so a connection survives a failover whichever side speaks next.
//!
//! - `wire.rs` (pure): the messages, their authentication and the replay window;
//! - `session.rs` (pure): the sender's numbering and batching, the receiver's checks (peers,
//!   key, replays) with refusals counted by reason;
//! - `translate.rs` (pure): a reported flow (this node's slots) to a wire entry (addresses), and
//!   a peer's entry to the flow and reverse-NAT entries this node would have made.

pub mod peers;
pub mod runtime;
pub mod session;
pub mod translate;
pub mod wire;

use anyhow::{bail, Context, Result};
use std::{os::unix::fs::MetadataExt, path::Path};

/// The peers that are addresses of this host (a socket binds to them): a node listed as its
/// own peer would sync with itself, and its real peers would never hear of its flows.
pub fn peers_of_this_host(peers: &[std::net::IpAddr]) -> Vec<std::net::IpAddr> {
    peers
        .iter()
        .copied()
        .filter(|&p| std::net::UdpSocket::bind((p, 0)).is_ok())
        .collect()
}

/// The error for [`peers_of_this_host`]'s answer, if any.
pub fn own_peers_error(own: &[std::net::IpAddr]) -> Option<String> {
    (!own.is_empty()).then(|| {
        let list: Vec<String> = own.iter().map(ToString::to_string).collect();
        format!(
            "flow_sync.peers lists {}, an address of this host: list the other load \
             balancers, not this one",
            list.join(", ")
        )
    })
}

/// Reads the shared key from `path`; the second value is a warning when others than its
/// owner may read it (it should be root's alone, mode 0600 or 0400).
pub fn read_key_file(path: &Path) -> Result<(wire::Key, Option<String>)> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("flow_sync.key_file {}", path.display()))?;
    if !meta.is_file() {
        bail!("flow_sync.key_file {} is not a file", path.display());
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading flow_sync.key_file {}", path.display()))?;
    let key = wire::Key::from_file_bytes(&bytes)
        .map_err(|why| anyhow::anyhow!("flow_sync.key_file {}: {why}", path.display()))?;
    Ok((key, key_file_warning(path, meta.mode(), meta.uid())))
}

/// Why a key file's mode or owner lets others read the key, if it does.
pub fn key_file_warning(path: &Path, mode: u32, uid: u32) -> Option<String> {
    let mut problems = Vec::new();
    if mode & 0o077 != 0 {
        problems.push(format!(
            "its mode {:04o} lets group or others read it",
            mode & 0o7777
        ));
    }
    if uid != 0 {
        problems.push(format!("it belongs to uid {uid}, not root"));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "flow_sync.key_file {}: {}; anyone who reads the key can forge flows (chown root \
             and chmod 600 it)",
            path.display(),
            problems.join(" and ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_is_this_host_is_found() {
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let elsewhere: std::net::IpAddr = "192.0.2.251".parse().unwrap();
        assert_eq!(peers_of_this_host(&[elsewhere, loopback]), vec![loopback]);
        assert_eq!(own_peers_error(&[]), None);
        let e = own_peers_error(&[loopback]).unwrap();
        assert!(e.contains("127.0.0.1, an address of this host"), "{e}");
    }

    #[test]
    fn a_key_file_must_be_roots_alone() {
        let p = Path::new("/etc/k3s-xdp/flow-sync.key");
        assert_eq!(key_file_warning(p, 0o100600, 0), None);
        assert_eq!(key_file_warning(p, 0o100400, 0), None);
        let w = key_file_warning(p, 0o100644, 0).unwrap();
        assert!(w.contains("mode 0644 lets group or others read it"), "{w}");
        let w = key_file_warning(p, 0o100640, 1000).unwrap();
        assert!(
            w.contains("0640") && w.contains("uid 1000, not root"),
            "{w}"
        );
    }

    #[test]
    fn a_short_or_missing_key_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("k3s-xdp-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, b"0123456789\n").unwrap();
        let e = read_key_file(&short).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        let e = read_key_file(&dir.join("absent")).unwrap_err();
        assert!(format!("{e:#}").contains("No such file"), "{e:#}");
        let good = dir.join("good");
        std::fs::write(&good, [b'k'; 64]).unwrap();
        std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let (_, warning) = read_key_file(&good).unwrap();
        assert!(warning.is_some_and(|w| w.contains("0644")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
