//! The BGP/ECMP lab on the seed topology: a router node (192.0.2.1) runs BIRD and installs the
//! VIP's routes from every load balancer as one multipath route (hashing on ports,
//! `fib_multipath_hash_policy = 1`, no redirects); lb-1, lb-2 and lb-3 (192.0.2.97) each run
//! BIRD with the shipped configuration and k3s-xdp with `[bgp]`; the agents reach the VIP
//! through the router. The `[bgp]` tests and `cargo xtask bench scaleout` build on it.

use crate::{
    bird::{self, Bird},
    daemon::Daemon,
    topology::{Topology, AGENTS, LB1, LB2, VIP},
};
use anyhow::{bail, Result};
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const LB3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 97);
/// The kernel table k3s-xdp writes and BIRD learns.
pub const TABLE: u32 = 200;
/// The load balancers, in the order they are started.
pub const LBS: [(&str, Ipv4Addr); 3] = [("lb-1", LB1), ("lb-2", LB2), ("lb-3", LB3)];

/// The seed topology with lb-3 and the router, the pass programs XDP_TX needs on the load
/// balancers' and servers' ports, the router's forwarding settings and the agents' route to
/// the VIP through it.
pub fn topology() -> Result<Topology> {
    let topo = Topology::builder()
        .node("lb-3", LB3)
        .node("router", ROUTER)
        .pass_programs(&["lb-1", "lb-2", "lb-3", "server-1", "server-2", "server-3"])
        .build()?;
    route_through_router(&topo)?;
    Ok(topo)
}

/// The router's forwarding settings (ECMP hashing on ports, no redirects) and the agents'
/// route to the VIP through it, on a topology with a `router` node.
pub fn route_through_router(topo: &Topology) -> Result<()> {
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.eth1.send_redirects", "0"),
    ] {
        topo.node("router")
            .run("sysctl", ["-q", "-w", &format!("{key}={value}")])?;
    }
    for agent in AGENTS {
        let ns = topo.node(agent);
        ns.ip([
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &ROUTER.to_string(),
        ])?;
        ns.run(
            "sysctl",
            ["-q", "-w", "net.ipv4.conf.all.accept_redirects=0"],
        )?;
    }
    Ok(())
}

/// The addresses of the first `n` load balancers, sorted as the router lists next hops.
pub fn addresses(n: usize) -> Vec<Ipv4Addr> {
    let mut a: Vec<Ipv4Addr> = LBS[..n].iter().map(|(_, a)| *a).collect();
    a.sort();
    a
}

/// BIRD and k3s-xdp on the first `n` load balancers, BIRD on the router. Dropped before the
/// topology: the daemons first (their routes withdrawn), then the routing daemons.
pub struct Ecmp {
    pub daemons: Vec<Daemon>,
    pub birds: Vec<Bird>,
    pub router: Bird,
}

impl Ecmp {
    /// Starts everything; `config` gives a node's k3s-xdp config, its `[bgp]` naming the
    /// BIRD socket it is given. Returns once the router routes the VIP over all `n` nodes.
    pub fn start(
        topo: &Topology,
        n: usize,
        config: impl Fn(&str, &Path) -> String,
    ) -> Result<Ecmp> {
        let router = Bird::start(topo, "router", &bird::router_config(&addresses(n)))?;
        let mut birds = Vec::new();
        let mut daemons = Vec::new();
        for (node, _) in &LBS[..n] {
            let b = Bird::start(topo, node, &bird::load_balancer_config(TABLE, ROUTER)?)?;
            let text = config(node, &b.socket());
            birds.push(b);
            daemons.push(Daemon::start(topo, node, &text)?);
        }
        for d in &daemons {
            d.wait_healthy(Duration::from_secs(10))?;
        }
        router.wait_established(Duration::from_secs(20))?;
        wait_hops(topo, &addresses(n), Duration::from_secs(20))?;
        Ok(Ecmp {
            daemons,
            birds,
            router,
        })
    }
}

impl Drop for Ecmp {
    fn drop(&mut self) {
        self.daemons.clear();
        self.birds.clear();
    }
}

/// The router's next hops for the VIP now, sorted.
pub fn hops(topo: &Topology) -> Result<Vec<Ipv4Addr>> {
    bird::next_hops(topo, "router", VIP)
}

/// Waits until the router routes the VIP through exactly `want` (sorted); how long it took.
pub fn wait_hops(topo: &Topology, want: &[Ipv4Addr], limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let now = hops(topo)?;
        if now == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("the router's next hops for {VIP} are {now:?}, not {want:?}, after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
