//! A real BIRD 2 (Debian's bird2) in a node of the topology: on each load balancer with the
//! configuration k3s-xdp ships (`packaging/bird/bird.conf`, its four `define`s set for the
//! lab), and on a router node that takes the VIP routes from every load balancer over BGP and
//! installs them as one ECMP route. Each runs in the foreground with its control socket and
//! config in a directory of its own, and is stopped by PID when the handle drops.

use crate::{netns::Process, topology::Topology};
use anyhow::{bail, Context, Result};
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// The lab's ASNs (documentation range, RFC 5398).
pub const ROUTER_AS: u32 = 64496;
pub const LB_AS: u32 = 64500;

/// BIRD running in a node.
pub struct Bird {
    pub node: String,
    dir: PathBuf,
    process: Option<Process>,
    earlier_logs: String,
}

/// Where Debian installs it.
pub fn binary() -> Result<PathBuf> {
    for p in ["/usr/sbin/bird", "/sbin/bird"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("BIRD is not installed: run `cargo xtask setup` (it installs Debian's bird2)")
}

/// `packaging/bird/bird.conf` with the lab's table, router and ASNs, logging to stderr.
pub fn load_balancer_config(table: u32, router: Ipv4Addr) -> Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/bird/bird.conf");
    let shipped = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut out = String::new();
    for line in shipped.lines() {
        let line = match line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
            ["define", "K3SXDP_TABLE"] => format!("define K3SXDP_TABLE = {table};"),
            ["define", "LOCAL_AS"] => format!("define LOCAL_AS = {LB_AS};"),
            ["define", "ROUTER"] => format!("define ROUTER = {router};"),
            ["define", "ROUTER_AS"] => format!("define ROUTER_AS = {ROUTER_AS};"),
            ["log", ..] => "log stderr all;".to_string(),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    // The lab starts every BIRD at once: try the first connection at once rather than after
    // BIRD's default 5 s.
    Ok(out.replace(
        "    connect retry time 5;",
        "    connect retry time 1;\n    connect delay time 1;",
    ))
}

/// `packaging/bird/k3s-xdp-ipv6.conf` (IPv6 VIPs) with the router at `router6`, to append to
/// [`load_balancer_config`].
pub fn load_balancer_config_ipv6(router6: std::net::Ipv6Addr) -> Result<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/bird/k3s-xdp-ipv6.conf"
    );
    let shipped = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(shipped
        .lines()
        .map(
            |line| match line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
                ["define", "ROUTER6"] => format!("define ROUTER6 = {router6};\n"),
                _ => format!("{line}\n"),
            },
        )
        .collect())
}

/// The router: a BGP session with each load balancer, their routes installed in the main
/// table as one multipath (ECMP) route, BFD on every session.
pub fn router_config(load_balancers: &[Ipv4Addr]) -> String {
    let mut c = String::from(
        "log stderr all;\n\
         protocol device {}\n\
         protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n\
         protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n",
    );
    c.push_str(&format!(
        "template bgp lb {{ local as {ROUTER_AS}; bfd on; hold time 9; keepalive time 3; \
         connect delay time 1; connect retry time 1; error wait time 1, 10; \
         ipv4 {{ import all; export none; }}; }}\n"
    ));
    for (i, lb) in load_balancers.iter().enumerate() {
        c.push_str(&format!(
            "protocol bgp lb{} from lb {{ neighbor {lb} as {LB_AS}; }}\n",
            i + 1
        ));
    }
    c
}

impl Bird {
    /// Writes `config` and starts BIRD in `node`.
    pub fn start(topo: &Topology, node: &str, config: &str) -> Result<Bird> {
        let dir = std::env::temp_dir().join(format!("k3s-xdp-bird-{}-{node}", topo.prefix()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bird.conf"), config)?;
        let mut b = Bird {
            node: node.to_string(),
            dir,
            process: None,
            earlier_logs: String::new(),
        };
        b.spawn(topo)?;
        Ok(b)
    }

    fn spawn(&mut self, topo: &Topology) -> Result<()> {
        let bin = binary()?;
        let d = |f: &str| self.dir.join(f).display().to_string();
        let args = [
            "-f".to_string(),
            "-c".to_string(),
            d("bird.conf"),
            "-s".to_string(),
            d("bird.ctl"),
            "-P".to_string(),
            d("bird.pid"),
        ];
        let mut p = topo
            .node(&self.node)
            .spawn(&bin.display().to_string(), &args)
            .context("starting BIRD")?;
        p.set_grace(Duration::from_secs(3));
        self.process = Some(p);
        Ok(())
    }

    /// Its control socket (`bgp.bird_socket` for the k3s-xdp next to it).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc -r` (read-only) `command`.
    pub fn birdc(&self, command: &str) -> Result<String> {
        let out = Command::new("birdc")
            .arg("-r")
            .arg("-s")
            .arg(self.socket())
            .args(command.split_whitespace())
            .output()
            .context("running birdc")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every BGP session is established.
    pub fn wait_established(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.birdc("show protocols")?;
            let bgp: Vec<&str> = text.lines().filter(|l| l.contains(" BGP ")).collect();
            if !bgp.is_empty() && bgp.iter().all(|l| l.contains("Established")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "BIRD in {}: BGP not established after {limit:?}:\n{text}\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.stop();
            self.earlier_logs.push_str(&p.output());
        }
    }

    /// Everything it printed.
    pub fn log(&self) -> String {
        let now = self
            .process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default();
        format!("{}{now}", self.earlier_logs)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- log of BIRD in {} ---\n{}", self.node, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next hops of `vip`'s route in `node`'s main table (`ip route show`), sorted: one for a
/// plain route, several for ECMP, none without a route.
pub fn next_hops(topo: &Topology, node: &str, vip: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
    let out = topo
        .node(node)
        .ip(["route", "show", &format!("{vip}/32")])?;
    Ok(parse_next_hops(&String::from_utf8_lossy(&out.stdout)))
}

/// The `via` addresses of `ip route show` output, sorted.
pub fn parse_next_hops(text: &str) -> Vec<Ipv4Addr> {
    let mut hops: Vec<Ipv4Addr> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    hops.sort();
    hops
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_hops_of_plain_and_multipath_routes() {
        let ecmp = "192.0.2.100 proto bird metric 32 \n\tnexthop via 192.0.2.99 dev eth1 weight 1 \n\tnexthop via 192.0.2.97 dev eth1 weight 1 \n";
        assert_eq!(
            super::parse_next_hops(ecmp),
            [
                "192.0.2.97".parse::<std::net::Ipv4Addr>().unwrap(),
                "192.0.2.99".parse().unwrap()
            ]
        );
        assert_eq!(
            super::parse_next_hops("192.0.2.100 via 192.0.2.98 dev eth1 proto bird metric 32"),
            ["192.0.2.98".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert!(super::parse_next_hops("").is_empty());
    }
}
