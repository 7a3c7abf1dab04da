//! A real keepalived (Debian's package) as a VRRP peer in a node of the topology: the interop
//! tests and the failover benchmark run it next to k3s-xdp, or as a pair of its own.
//!
//! Its configuration is the seeds' `vrrp_instance`, with the lab's addresses: interface eth1,
//! virtual_router_id 51, the VIP /24, `advert_int`, optionally unicast peers and (VRRPv2)
//! `authentication { auth_type PASS }`; with an IPv6 VIP, a second instance `VI_6` for it (the
//! same id, priority and timers; keepalived runs one instance per address family). It runs in the foreground (`-n`), logs to the console
//! (`-l`, collected like every process of the test library), VRRP only (`-P`), with its pid
//! files in a directory of its own, and is stopped by PID when the handle drops.

use crate::{netns::Process, topology::Topology};
use anyhow::{bail, Context, Result};
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

/// The VRRP instance of a keepalived peer.
#[derive(Clone, Debug)]
pub struct Instance {
    pub priority: u8,
    /// `state MASTER` or `BACKUP`.
    pub master: bool,
    /// 2 or 3.
    pub version: u8,
    /// VRRPv2 `auth_pass`.
    pub auth_pass: Option<String>,
    /// In seconds, as keepalived takes it (VRRPv3 allows fractions such as 0.1).
    pub advert_int: f64,
    pub vip: Ipv4Addr,
    /// An IPv6 VIP (/64): a second instance, `VI_6`, moves it (multicast to ff02::12).
    pub vip6: Option<Ipv6Addr>,
    pub unicast_src_ip: Option<Ipv4Addr>,
    pub unicast_peers: Vec<Ipv4Addr>,
    pub nopreempt: bool,
}

impl Instance {
    /// keepalived.conf for this instance, shaped like the seeds' (router_id, vrrp_instance VI_1).
    pub fn config(&self, node: &str) -> String {
        let mut c = format!(
            "global_defs {{\n  router_id {node}\n  vrrp_version {}\n  script_user root\n}}\n\n",
            self.version
        );
        c.push_str(&self.instance("VI_1", &format!("{}/24", self.vip), true));
        if let Some(vip6) = self.vip6 {
            c.push_str(&self.instance("VI_6", &format!("{vip6}/64"), false));
        }
        c
    }

    /// One `vrrp_instance` moving `vip`; `ipv4` adds the IPv4-only settings (VRRPv2
    /// authentication, unicast peers).
    fn instance(&self, name: &str, vip: &str, ipv4: bool) -> String {
        let mut c = format!("vrrp_instance {name} {{\n");
        if !ipv4 {
            // VRRPv3 whatever the global vrrp_version: VRRPv2 has no IPv6.
            c.push_str("  version 3\n");
        }
        c.push_str(&format!(
            "  state {}\n",
            if self.master { "MASTER" } else { "BACKUP" }
        ));
        c.push_str("  interface eth1\n  virtual_router_id 51\n");
        c.push_str(&format!("  priority {}\n", self.priority));
        c.push_str(&format!("  advert_int {}\n", self.advert_int));
        if self.nopreempt {
            c.push_str("  nopreempt\n");
        }
        if let (Some(pass), true) = (&self.auth_pass, ipv4) {
            c.push_str(&format!(
                "  authentication {{\n    auth_type PASS\n    auth_pass {pass}\n  }}\n"
            ));
        }
        if let (Some(src), true) = (self.unicast_src_ip, ipv4) {
            c.push_str(&format!("  unicast_src_ip {src}\n"));
        }
        if ipv4 && !self.unicast_peers.is_empty() {
            c.push_str("  unicast_peer {\n");
            for p in &self.unicast_peers {
                c.push_str(&format!("    {p}\n"));
            }
            c.push_str("  }\n");
        }
        c.push_str(&format!(
            "  virtual_ipaddress {{\n    {vip} dev eth1\n  }}\n}}\n"
        ));
        c
    }
}

/// keepalived running in a node.
pub struct Keepalived {
    pub node: String,
    dir: PathBuf,
    process: Option<Process>,
    earlier_logs: String,
}

/// Where Debian installs it.
pub fn binary() -> Result<PathBuf> {
    for p in ["/usr/sbin/keepalived", "/sbin/keepalived"] {
        if std::path::Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("keepalived is not installed: run `cargo xtask setup` (it installs Debian's keepalived)")
}

impl Keepalived {
    /// Writes the config and starts keepalived in `node`.
    pub fn start(topo: &Topology, node: &str, instance: &Instance) -> Result<Keepalived> {
        let dir = std::env::temp_dir().join(format!("k3s-xdp-keepalived-{}-{node}", topo.prefix()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("keepalived.conf"), instance.config(node))?;
        let mut k = Keepalived {
            node: node.to_string(),
            dir,
            process: None,
            earlier_logs: String::new(),
        };
        k.spawn(topo)?;
        Ok(k)
    }

    fn spawn(&mut self, topo: &Topology) -> Result<()> {
        let bin = binary()?;
        let d = |f: &str| self.dir.join(f).display().to_string();
        let args = [
            "-n".to_string(),
            "-l".to_string(),
            "-D".to_string(),
            "-P".to_string(),
            "-f".to_string(),
            d("keepalived.conf"),
            "-p".to_string(),
            d("keepalived.pid"),
            "-r".to_string(),
            d("vrrp.pid"),
        ];
        let mut p = topo
            .node(&self.node)
            .spawn(&bin.display().to_string(), &args)
            .context("starting keepalived")?;
        p.set_grace(Duration::from_secs(5));
        self.process = Some(p);
        Ok(())
    }

    /// Starts it again after [`Keepalived::stop`] or [`Keepalived::crash`].
    pub fn restart(&mut self, topo: &Topology) -> Result<()> {
        self.stop();
        self.spawn(topo)
    }

    /// SIGTERM: keepalived sends priority 0 and removes the VIP.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.stop();
            self.earlier_logs.push_str(&p.output());
        }
    }

    /// A crash: the VRRP process and its parent are frozen at once (SIGSTOP, so that neither
    /// sends anything more, not even the priority 0 of a child whose parent died), then
    /// killed. As with a real crash of keepalived, the VIP stays on the interface; `crash`
    /// removes it afterwards, as the operator (or a reboot) would.
    pub fn crash(&mut self, topo: &Topology, vip: Ipv4Addr) -> Result<()> {
        self.crash_leaving(topo, &[format!("{vip}/24")])
    }

    /// [`Keepalived::crash`], then removes `addresses` ("ip/prefix") as the operator would.
    pub fn crash_leaving(&mut self, topo: &Topology, addresses: &[String]) -> Result<()> {
        let Some(mut p) = self.process.take() else {
            return Ok(());
        };
        let children = children(p.pid());
        let _ = p.signal(libc::SIGSTOP);
        for c in &children {
            // SAFETY: kill has no memory-safety preconditions; the PIDs are children of our
            // unreaped (stopped) child, so they cannot have been reused.
            unsafe { libc::kill(*c as libc::pid_t, libc::SIGSTOP) };
        }
        for c in &children {
            // SAFETY: as above.
            unsafe { libc::kill(*c as libc::pid_t, libc::SIGKILL) };
        }
        let _ = p.signal(libc::SIGKILL);
        let _ = p.wait_timeout(Duration::from_secs(3));
        self.earlier_logs.push_str(&p.output());
        for a in addresses {
            let _ = topo.node(&self.node).ip(["addr", "del", a, "dev", "eth1"]);
        }
        Ok(())
    }

    /// Everything keepalived printed, over its restarts.
    pub fn log(&self) -> String {
        let now = self
            .process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default();
        format!("{}{now}", self.earlier_logs)
    }

    /// Waits until the log contains `pattern` `times` times or more.
    pub fn wait_log(&self, pattern: &str, times: usize, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.matches(pattern).count() >= times {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!(
                    "keepalived in {}: no {times}x {pattern:?} in its log after {limit:?}:\n{log}",
                    self.node
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The state keepalived entered last ("MASTER", "BACKUP", "FAULT"), from its log lines
    /// like `(VI_1) Entering BACKUP STATE (init)`.
    pub fn state(&self) -> Option<String> {
        self.state_of("")
    }

    /// The state instance `name` (`VI_1`, `VI_6`) entered last.
    pub fn state_of(&self, name: &str) -> Option<String> {
        let log = self.log();
        let tag = format!("({name}) Entering ");
        log.lines()
            .rev()
            .filter(|l| name.is_empty() || l.contains(&tag))
            .find_map(|l| {
                l.split("Entering ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string)
            })
    }
}

/// The PIDs of `pid`'s children (keepalived's VRRP process).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- log of keepalived in {} ---\n{}", self.node, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
