//! The guard: a small child process that undoes the daemon's changes to the host when the
//! daemon dies without doing it itself (`kill -9`, a panic, the OOM killer).
//!
//! A crashed daemon's VIPs stay on the interface: the kernel would then answer ARP for them and
//! reset every connection that reaches it, while the peer takes over. So `k3s-xdp run` starts
//! `k3s-xdp guard` with a pipe on its stdin and tells it, one line at a time, what to undo:
//!
//! ```text
//! hold 192.0.2.100        the daemon added this address; remove it if I die
//! hold 2001:db8::100      (either family)
//! release 192.0.2.100     the daemon removed it itself
//! route 200 192.0.2.100   the daemon announces this VIP ([bgp]: its route in table 200)
//! unroute 200 192.0.2.100 the daemon withdrew it itself
//! restore /proc/sys/net/ipv4/conf/eth1/forwarding 0
//! link 42                 the XDP program is attached by bpf_link 42: keep it attached
//! unlink                  the daemon detaches it itself
//! disarm                  clean shutdown: nothing to undo
//! ```
//!
//! The guard holds the daemon's XDP link open (`system::bpf_link`), so the program outlives the
//! daemon: a packet that reaches the node while the guard cleans up is still forwarded, never
//! met by a kernel that holds the VIP without a program in front of it (which resets it).
//!
//! When the pipe closes without `disarm`, the daemon is dead: the guard withdraws its routes
//! (first: the router stops sending while the rest is undone), removes the addresses it holds,
//! then lets the XDP link go (the program is detached), restores the sysctls and exits. It ignores SIGTERM, SIGINT and SIGHUP, so that a
//! service manager stopping the whole group does not kill it before it has cleaned up; it does
//! a few netlink calls and exits within milliseconds. The ledger is a pure core, unit-tested
//! below; the process around it is the edge.

use crate::system::{bpf_link::LinkRef, Netlink};
use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    net::IpAddr,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
};
use tracing::{error, info, warn};

/// What the guard would undo if the daemon died now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Addresses on the interface that the daemon holds.
    pub held: Vec<IpAddr>,
    /// `[bgp]` routes the daemon keeps: (table, VIP).
    pub routes: Vec<(u32, IpAddr)>,
    /// sysctl files and the value to write back.
    pub restore: BTreeMap<PathBuf, String>,
    /// The bpf_link attaching the daemon's XDP program, kept open until the VIPs are gone.
    pub link: Option<u32>,
    /// Set by a clean shutdown.
    pub disarmed: bool,
}

impl Ledger {
    /// Applies one line of the protocol; an error names what was wrong with it.
    pub fn apply(&mut self, line: &str) -> Result<()> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("hold"), Some(a), None, None) => {
                let a: IpAddr = a.parse().with_context(|| format!("bad address {a:?}"))?;
                if !self.held.contains(&a) {
                    self.held.push(a);
                }
            }
            (Some("release"), Some(a), None, None) => {
                let a: IpAddr = a.parse().with_context(|| format!("bad address {a:?}"))?;
                self.held.retain(|h| *h != a);
            }
            (Some(verb @ ("route" | "unroute")), Some(table), Some(a), None) => {
                let table: u32 = table
                    .parse()
                    .with_context(|| format!("bad table {table:?}"))?;
                let a: IpAddr = a.parse().with_context(|| format!("bad address {a:?}"))?;
                self.routes.retain(|r| *r != (table, a));
                if verb == "route" {
                    self.routes.push((table, a));
                }
            }
            (Some("restore"), Some(path), Some(value), None) => {
                if !path.starts_with("/proc/sys/") {
                    bail!("restore only writes under /proc/sys, not {path:?}");
                }
                // The first value recorded is the one from before the daemon changed it.
                self.restore
                    .entry(PathBuf::from(path))
                    .or_insert_with(|| value.to_string());
            }
            (Some("forget"), Some(path), None, None) => {
                self.restore.remove(&PathBuf::from(path));
            }
            (Some("link"), Some(id), None, None) => {
                self.link = Some(id.parse().with_context(|| format!("bad link id {id:?}"))?);
            }
            (Some("unlink"), None, None, None) => self.link = None,
            (Some("disarm"), None, None, None) => self.disarmed = true,
            _ => bail!("unknown guard instruction {line:?}"),
        }
        Ok(())
    }

    /// Whether the guard has anything to do when the pipe closes.
    pub fn pending(&self) -> bool {
        !self.disarmed
            && (!self.held.is_empty() || !self.routes.is_empty() || !self.restore.is_empty())
    }
}

/// The daemon's side: a handle to tell the guard what to undo. Cloning shares the pipe.
#[derive(Clone)]
pub struct Guard {
    pipe: Arc<Mutex<Option<ChildStdin>>>,
    child: Arc<Mutex<Option<Child>>>,
}

impl Guard {
    /// Starts `k3s-xdp guard --iface IFACE` (this same binary).
    pub fn spawn(iface: &str) -> Result<Guard> {
        let exe = std::env::current_exe().context("finding the k3s-xdp binary for the guard")?;
        let mut child = Command::new(&exe)
            .arg("guard")
            .arg("--iface")
            .arg(iface)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the guard process ({})", exe.display()))?;
        let pipe = child.stdin.take();
        Ok(Guard {
            pipe: Arc::new(Mutex::new(pipe)),
            child: Arc::new(Mutex::new(Some(child))),
        })
    }

    /// A guard that does nothing (tests of the runtime without a daemon).
    pub fn none() -> Guard {
        Guard {
            pipe: Arc::new(Mutex::new(None)),
            child: Arc::new(Mutex::new(None)),
        }
    }

    fn send(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pipe.as_mut() {
            if let Err(e) = writeln!(p, "{line}") {
                warn!("the guard process is gone ({e}); a crash would leave the VIPs behind");
                *pipe = None;
            }
        }
    }

    /// `addr` was added to the interface by the daemon.
    pub fn hold(&self, addr: impl Into<IpAddr>) {
        self.send(&format!("hold {}", addr.into()));
    }

    /// `addr` was removed by the daemon.
    pub fn release(&self, addr: impl Into<IpAddr>) {
        self.send(&format!("release {}", addr.into()));
    }

    /// The daemon added its route for `vip` to `table`.
    pub fn route(&self, table: u32, vip: IpAddr) {
        self.send(&format!("route {table} {vip}"));
    }

    /// The daemon removed its route for `vip` from `table`.
    pub fn unroute(&self, table: u32, vip: IpAddr) {
        self.send(&format!("unroute {table} {vip}"));
    }

    /// `path` was changed by the daemon and held `value` before.
    pub fn restore(&self, path: &str, value: &str) {
        self.send(&format!("restore {path} {value}"));
    }

    /// `path` was restored by the daemon.
    pub fn forget(&self, path: &str) {
        self.send(&format!("forget {path}"));
    }

    /// The daemon's XDP program is attached by bpf_link `id`: the guard keeps it attached until
    /// it has removed the VIPs of a dead daemon.
    pub fn keep_link(&self, id: u32) {
        self.send(&format!("link {id}"));
    }

    /// The daemon detaches its program itself.
    pub fn unlink(&self) {
        self.send("unlink");
    }

    /// Clean shutdown: the daemon undid everything itself. Waits for the guard to exit.
    pub fn disarm(&self) {
        self.send("disarm");
        drop(self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.wait();
        }
    }
}

/// `k3s-xdp guard`: reads instructions from stdin until it closes, then undoes what is pending.
/// Everything the cleanup needs (runtime, netlink socket, interface index) is ready before the
/// first line is read, so that the VIPs go within a millisecond or so of the daemon's death.
pub fn serve(iface: &str) -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (netlink, ifindex) = rt.block_on(async {
        let netlink = Netlink::connect()?;
        let ifindex = netlink.ifindex(iface).await?;
        anyhow::Ok((netlink, ifindex))
    })?;
    let mut ledger = Ledger::default();
    let mut link: Option<LinkRef> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Err(e) = ledger.apply(&line) {
            error!("guard: {e:#}");
        }
        if link.as_ref().map(LinkRef::id) != ledger.link {
            link = ledger.link.and_then(|id| {
                LinkRef::open(id)
                    .map_err(|e| {
                        warn!("guard: cannot hold the XDP link {id} ({e}): if the daemon is killed, its program goes before its VIPs")
                    })
                    .ok()
            });
        }
    }
    if !ledger.pending() {
        return Ok(());
    }
    let (withdrawn, removed) = rt.block_on(async {
        let mut withdrawn: Vec<Result<()>> = Vec::new();
        for (table, vip) in &ledger.routes {
            withdrawn.push(netlink.del_host_route(*table, *vip).await);
        }
        let mut removed: Vec<Result<()>> = Vec::new();
        for addr in &ledger.held {
            removed.push(netlink.del_address(ifindex, *addr).await);
        }
        (withdrawn, removed)
    });
    // The VIPs are gone: the program may go too (it would go with this process anyway).
    drop(link);
    let restored: Vec<std::io::Result<()>> = ledger
        .restore
        .iter()
        .map(|(path, value)| std::fs::write(path, value))
        .collect();
    // Logged after the work: the VIPs come first.
    warn!("k3s-xdp exited without cleaning up (killed or crashed): the guard undoes its changes on {iface}");
    let mut failed = false;
    for ((table, vip), r) in ledger.routes.iter().zip(&withdrawn) {
        match r {
            Ok(()) => info!("guard: withdrew {vip} (its route in table {table})"),
            Err(e) => {
                error!("guard: {e:#}");
                failed = true;
            }
        }
    }
    for (addr, r) in ledger.held.iter().zip(&removed) {
        match r {
            Ok(()) => info!("guard: removed {addr} from {iface}"),
            Err(e) => {
                error!("guard: {e:#}");
                failed = true;
            }
        }
    }
    for ((path, value), r) in ledger.restore.iter().zip(&restored) {
        match r {
            Ok(()) => info!("guard: restored {} to {value}", path.display()),
            Err(e) => {
                error!("guard: restoring {}: {e}", path.display());
                failed = true;
            }
        }
    }
    if failed {
        bail!("the guard could not undo everything (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(lines: &[&str]) -> Ledger {
        let mut l = Ledger::default();
        for line in lines {
            l.apply(line).unwrap();
        }
        l
    }

    #[test]
    fn holds_and_releases_addresses() {
        let l = ledger(&[
            "hold 192.0.2.100",
            "hold 192.0.2.200",
            "hold 192.0.2.100",
            "release 192.0.2.200",
        ]);
        assert_eq!(l.held, vec![IpAddr::from([192, 0, 2, 100])]);
        assert!(l.pending());
    }

    #[test]
    fn holds_ipv6_addresses_too() {
        let l = ledger(&[
            "hold 2001:db8::100",
            "hold 192.0.2.100",
            "hold 2001:db8:0::100",
            "hold 2001:db8::101",
            "release 2001:db8::101",
        ]);
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        assert_eq!(
            l.held,
            vec![v6, IpAddr::from([192, 0, 2, 100])],
            "one entry per address, however it is written"
        );
        let l = ledger(&["hold 2001:db8::100", "release 2001:db8::100"]);
        assert!(!l.pending());
    }

    #[test]
    fn restores_the_first_recorded_value() {
        let p = "/proc/sys/net/ipv4/conf/eth1/forwarding";
        let l = ledger(&[&format!("restore {p} 0"), &format!("restore {p} 1")]);
        assert_eq!(
            l.restore.get(&PathBuf::from(p)).map(String::as_str),
            Some("0")
        );
        let l = ledger(&[&format!("restore {p} 0"), &format!("forget {p}")]);
        assert!(l.restore.is_empty());
        assert!(!l.pending());
    }

    #[test]
    fn routes_are_kept_per_table_until_withdrawn() {
        let vip = IpAddr::from([192, 0, 2, 100]);
        let vip6: IpAddr = "2001:db8::100".parse().unwrap();
        let l = ledger(&[
            "route 200 192.0.2.100",
            "route 200 192.0.2.100",
            "route 7 192.0.2.100",
            "route 200 192.0.2.110",
            "unroute 200 192.0.2.110",
            "route 200 2001:db8::100",
        ]);
        assert_eq!(l.routes, vec![(200, vip), (7, vip), (200, vip6)]);
        assert!(l.pending());
        let l = ledger(&["route 200 192.0.2.100", "unroute 200 192.0.2.100"]);
        assert!(!l.pending());
    }

    #[test]
    fn keeps_the_link_until_the_daemon_detaches_it() {
        let l = ledger(&["link 42"]);
        assert_eq!(l.link, Some(42));
        assert!(
            !l.pending(),
            "a link alone needs no cleanup: it goes with the guard"
        );
        let l = ledger(&["link 42", "hold 192.0.2.100", "unlink"]);
        assert_eq!(l.link, None);
        assert!(l.pending());
        assert_eq!(ledger(&["link 42", "link 43"]).link, Some(43));
    }

    #[test]
    fn disarm_leaves_nothing_to_do() {
        let l = ledger(&["hold 192.0.2.100", "disarm"]);
        assert!(!l.pending());
    }

    #[test]
    fn refuses_bad_instructions() {
        let mut l = Ledger::default();
        for bad in [
            "hold",
            "hold 192.0.2",
            "hold 192.0.2.1 extra",
            "hold 2001:db8::1::2",
            "release 2001:db8::/64",
            "restore /etc/passwd x",
            "restore /proc/sys/x",
            "route 200",
            "route x 192.0.2.1",
            "route 200 192.0.2",
            "unroute 200 192.0.2.1 extra",
            "link",
            "link x",
            "link -1",
            "link 1 2",
            "unlink 1",
            "explode",
            "",
        ] {
            assert!(l.apply(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(l, Ledger::default());
    }
}
