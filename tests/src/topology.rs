//! The seed topology (lb-1, lb-2, three servers, three agents on one link) in network
//! namespaces, removed on drop.
//!
//! One "switch" namespace holds a bridge `br0`; every node (lb-1, lb-2, server-1..3,
//! agent-1..3) is a namespace with an interface `eth1` (the seeds' name) whose veth peer is a
//! port of that bridge, named after the node. All addresses are documentation addresses in
//! 192.0.2.0/24; the VIP 192.0.2.100 is left to k3s-xdp. Nothing is created in the root
//! namespace, and namespace names carry a prefix unique to the process and the instance
//! (`kx<pid>x<n>-lb-1`), so topologies built by parallel tests never meet.
//!
//! XDP_TX on a veth only delivers when the peer has an XDP program, so by default
//! the project's trivial XDP_PASS program is attached to the switch-side ports of lb-1, lb-2 and
//! the servers. Dropping the [`Topology`] stops the processes it spawned, detaches the programs
//! and deletes the namespaces (which deletes the veths), also while a test unwinds from a panic.
//! [`Topology::cleanup_stale`] removes what a crashed earlier run left behind.

use crate::netns::{self, NetNs, Process};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use k3s_xdp_common::names;
use std::{
    collections::HashMap,
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
};

/// The virtual IP the load balancers share (added by k3s-xdp, not by the topology).
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const LB1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 98);
pub const LB2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
pub const SERVER1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 51);
pub const SERVER3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 52);
pub const AGENT1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
pub const AGENT2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 102);
pub const AGENT3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 103);
/// Prefix length of every address of the topology.
pub const PREFIX_LEN: u8 = 24;
/// The IPv6 VIP of dual-stack tests (added by k3s-xdp or keepalived).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// Prefix length of the nodes' IPv6 addresses ([`Topology::add_ipv6`]).
pub const PREFIX_LEN6: u8 = 64;
/// The k3s API port the servers listen on.
pub const API_PORT: u16 = 6443;
/// The node's interface name, as in the seeds.
pub const IFACE: &str = "eth1";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";

/// The seed nodes and their addresses.
pub const SEED_NODES: [(&str, Ipv4Addr); 8] = [
    ("lb-1", LB1),
    ("lb-2", LB2),
    ("server-1", SERVER1),
    ("server-2", SERVER2),
    ("server-3", SERVER3),
    ("agent-1", AGENT1),
    ("agent-2", AGENT2),
    ("agent-3", AGENT3),
];
pub const LOAD_BALANCERS: [&str; 2] = ["lb-1", "lb-2"];
pub const SERVERS: [&str; 3] = ["server-1", "server-2", "server-3"];
pub const AGENTS: [&str; 3] = ["agent-1", "agent-2", "agent-3"];

/// Nodes whose switch-side port gets the pass program unless the builder says otherwise:
/// the load balancers (XDP_TX toward the switch) and the servers (dsr XDP_TX toward them).
pub const DEFAULT_PASS_NODES: [&str; 5] = ["lb-1", "lb-2", "server-1", "server-2", "server-3"];

/// The seed address of `node`, if it is a seed node.
pub fn seed_addr(node: &str) -> Option<Ipv4Addr> {
    SEED_NODES.iter().find(|(n, _)| *n == node).map(|(_, a)| *a)
}

/// The IPv6 address of the node whose IPv4 address is `addr`, for dual-stack tests: the last
/// octet's decimal digits as the last group of 2001:db8::/64 (192.0.2.98 → 2001:db8::98).
pub fn addr6(addr: Ipv4Addr) -> Ipv6Addr {
    let last = u16::from_str_radix(&addr.octets()[3].to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

/// The `backends = [...]` entries of a k3s-xdp config for server-1..3 on `port`, one per line.
pub fn seed_backends_toml(port: u16) -> String {
    SERVERS
        .iter()
        .map(|s| {
            let addr = seed_addr(s).expect("a seed server");
            format!("  {{ name = \"{s}\", address = \"{addr}:{port}\" }},")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The MAC address the topology gives `addr`'s `eth1`: `02:00:c0:00:02:<last octet>`
/// (locally administered; the middle bytes spell 192.0.2).
pub fn mac_for(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

/// `aa:bb:…` notation.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Namespace names start with `kx<pid>x<n>-`.
const NAME_MAGIC: &str = "kx";
static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// One node: its namespace, address and the name of its bridge port in the switch namespace.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: NetNs,
    /// The veth peer of the node's `eth1`, a port of `br0` in the switch namespace.
    pub port: String,
}

/// What to build; [`Topology::builder`] starts from the full seed topology.
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    nodes: Vec<(String, Ipv4Addr)>,
    pass_nodes: Vec<String>,
    prefix: Option<String>,
}

impl TopologyBuilder {
    /// Leaves `node` out (e.g. a single load balancer without lb-2).
    pub fn without(mut self, node: &str) -> Self {
        self.nodes.retain(|(n, _)| n != node);
        self.pass_nodes.retain(|n| n != node);
        self
    }

    /// Keeps only `nodes` of those configured so far.
    pub fn only(mut self, nodes: &[&str]) -> Self {
        self.nodes.retain(|(n, _)| nodes.contains(&n.as_str()));
        self.pass_nodes.retain(|n| nodes.contains(&n.as_str()));
        self
    }

    /// Adds a node with its own address on the same /24 (e.g. an extra client). Its name is
    /// also its bridge port name, so at most 15 bytes.
    pub fn node(mut self, name: &str, addr: Ipv4Addr) -> Self {
        self.nodes.push((name.to_string(), addr));
        self
    }

    /// Attaches the pass program to the switch-side ports of exactly `nodes` (replacing the
    /// default [`DEFAULT_PASS_NODES`]); `&[]` attaches none.
    pub fn pass_programs(mut self, nodes: &[&str]) -> Self {
        self.pass_nodes = nodes.iter().map(|n| n.to_string()).collect();
        self
    }

    /// A fixed namespace prefix instead of `kx<pid>x<n>` (the lab uses `kxlab`, so that
    /// `cargo xtask lab --down` finds what `--keep` left up).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_string());
        self
    }

    pub fn build(self) -> Result<Topology> {
        Topology::build(self)
    }
}

/// The project's XDP_PASS program, loaded once per topology, and its attachments.
struct PassProgram {
    /// Owns the program and, through it, the bpf_links: dropping it detaches everything.
    bpf: Ebpf,
    links: HashMap<String, XdpLinkId>,
}

/// The seed topology (or a subset), alive until dropped.
pub struct Topology {
    prefix: String,
    /// Processes started with [`Topology::spawn`]; stopped first on drop.
    processes: Vec<Process>,
    pass: Option<PassProgram>,
    nodes: Vec<Node>,
    switch: NetNs,
}

impl Topology {
    /// The whole seed topology with the default pass programs.
    pub fn seed() -> Result<Self> {
        Self::builder().build()
    }

    /// A builder starting from the whole seed topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            nodes: SEED_NODES
                .iter()
                .map(|(n, a)| (n.to_string(), *a))
                .collect(),
            pass_nodes: DEFAULT_PASS_NODES.iter().map(|n| n.to_string()).collect(),
            prefix: None,
        }
    }

    fn build(spec: TopologyBuilder) -> Result<Self> {
        if let Err(e) = Self::cleanup_stale() {
            eprintln!("warning: removing stale namespaces: {e:#}");
        }
        for (i, (name, addr)) in spec.nodes.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) || name == BRIDGE {
                bail!(
                    "node name {name:?} must be a valid interface name (1-15 bytes, not {BRIDGE})"
                );
            }
            if spec.nodes[..i].iter().any(|(n, a)| n == name || a == addr) {
                bail!("node {name} ({addr}) is defined twice");
            }
        }
        let prefix = spec.prefix.clone().unwrap_or_else(instance_prefix);
        let switch = NetNs::create(&format!("{prefix}-sw"))?;
        switch.ip([
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        switch.ip(["link", "set", BRIDGE, "up"])?;
        // From here on, dropping `topology` removes whatever was built if a step fails.
        let mut topology = Topology {
            prefix,
            processes: Vec::new(),
            pass: None,
            nodes: Vec::new(),
            switch,
        };
        for (name, addr) in &spec.nodes {
            topology.add_node(name, *addr)?;
        }
        for node in &spec.pass_nodes {
            topology.attach_pass_program(node)?;
        }
        Ok(topology)
    }

    fn add_node(&mut self, name: &str, addr: Ipv4Addr) -> Result<()> {
        let ns = NetNs::create(&format!("{}-{name}", self.prefix))?;
        // Before `eth1` arrives, so that its link-local address (and any IPv6 address a test
        // adds) is usable at once: no duplicate address detection on the lab's link.
        for key in ["all", "default"] {
            ns.run(
                "sysctl",
                ["-q", "-w", &format!("net.ipv6.conf.{key}.accept_dad=0")],
            )
            .with_context(|| format!("turning IPv6 DAD off in {name}"))?;
        }
        let port = name.to_string();
        let mac = mac_string(mac_for(addr));
        // The veth is created in the switch namespace with its other end moved straight into
        // the node's namespace, so it never exists in the root namespace.
        self.switch.ip([
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            IFACE,
            "address",
            &mac,
            "netns",
            ns.name(),
        ])?;
        // Pushed before configuring, so the namespace is deleted if configuring fails.
        self.nodes.push(Node {
            name: name.to_string(),
            addr,
            ns,
            port: port.clone(),
        });
        self.switch.ip(["link", "set", &port, "master", BRIDGE])?;
        self.switch.ip(["link", "set", &port, "up"])?;
        let node = self.node(name);
        node.ip(["addr", "add", &format!("{addr}/{PREFIX_LEN}"), "dev", IFACE])?;
        // A veth hands checksums over unfinished (CHECKSUM_PARTIAL) when TX offload is on; a
        // real NIC always puts complete checksums on the wire, and the XDP program, which
        // updates checksums incrementally, needs them complete. Make the lab's wire real.
        node.run("ethtool", ["-K", IFACE, "tx", "off"])
            .with_context(|| format!("turning TX checksum offload off on {name}"))?;
        node.ip(["link", "set", IFACE, "up"])?;
        Ok(())
    }

    /// The prefix of every namespace name of this instance (`kx<pid>x<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The switch namespace, holding `br0` and the node ports.
    pub fn switch(&self) -> &NetNs {
        &self.switch
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn try_node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The namespace of `name`.
    ///
    /// # Panics
    /// If the topology has no such node (a mistake in the test, like a bad index).
    pub fn node(&self, name: &str) -> &NetNs {
        &self.expect_node(name).ns
    }

    /// The address of `name`'s `eth1`.
    ///
    /// # Panics
    /// If the topology has no such node.
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.expect_node(name).addr
    }

    /// The MAC address of `name`'s `eth1`.
    ///
    /// # Panics
    /// If the topology has no such node.
    pub fn mac(&self, name: &str) -> [u8; 6] {
        mac_for(self.addr(name))
    }

    /// The name, in the switch namespace, of the bridge port peered with `name`'s `eth1`.
    ///
    /// # Panics
    /// If the topology has no such node.
    pub fn port(&self, name: &str) -> &str {
        &self.expect_node(name).port
    }

    fn expect_node(&self, name: &str) -> &Node {
        match self.try_node(name) {
            Some(node) => node,
            None => panic!(
                "topology {} has no node {name:?}; it has {:?}",
                self.prefix,
                self.nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
            ),
        }
    }

    fn find_node(&self, name: &str) -> Result<&Node> {
        self.try_node(name)
            .ok_or_else(|| anyhow!("topology {} has no node {name:?}", self.prefix))
    }

    /// Pulls (`up = false`) or plugs back (`up = true`) `node`'s cable: sets its switch-side
    /// port down or up, so the node's `eth1` loses or regains its carrier.
    /// Configures `node` as a dsr backend: `vip` on its `lo`, and no ARP answers for it
    /// (`arp_ignore=1`, `arp_announce=2`), as README.md tells operators to do.
    pub fn prepare_dsr_backend(&self, node: &str, vip: Ipv4Addr) -> Result<()> {
        let ns = self.node(node);
        ns.ip(["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.eth1.arp_ignore", "1"),
            ("net.ipv4.conf.eth1.arp_announce", "2"),
        ] {
            ns.run("sysctl", ["-q", "-w", &format!("{key}={value}")])
                .with_context(|| format!("{key}={value} on {node}"))?;
        }
        Ok(())
    }

    /// Whether `node` holds `addr` (either family) on its `eth1` (a VIP, for instance).
    pub fn has_address(&self, node: &str, addr: impl Into<IpAddr>) -> bool {
        let addr = addr.into();
        self.node(node)
            .ip(["-o", "addr", "show", "dev", IFACE])
            .map(|out| String::from_utf8_lossy(&out.stdout).contains(&format!(" {addr}/")))
            .unwrap_or(false)
    }

    /// Adds `node`'s IPv6 address ([`addr6`] of its IPv4 one, /64, `nodad`) to its `eth1`;
    /// returns it.
    pub fn add_ipv6(&self, node: &str) -> Result<Ipv6Addr> {
        let addr = addr6(self.addr(node));
        self.node(node)
            .ip([
                "-6",
                "addr",
                "add",
                &format!("{addr}/{PREFIX_LEN6}"),
                "dev",
                IFACE,
                "nodad",
            ])
            .with_context(|| format!("adding {addr} to {node}"))?;
        Ok(addr)
    }

    /// The link-local address of `node`'s `eth1` (where its IPv6 VRRP adverts come from).
    pub fn link_local(&self, node: &str) -> Result<Ipv6Addr> {
        let out = self
            .node(node)
            .ip(["-6", "-o", "addr", "show", "dev", IFACE, "scope", "link"])?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse().ok())
            .ok_or_else(|| anyhow!("{node} has no link-local address on {IFACE}"))
    }

    /// The MAC address (`aa:bb:…`) `node`'s neighbour table has for `addr` on its `eth1`, if
    /// any (ARP or neighbour discovery).
    pub fn neighbour_mac(&self, node: &str, addr: impl Into<IpAddr>) -> Option<String> {
        let out = self
            .node(node)
            .ip(["neigh", "show", &addr.into().to_string(), "dev", IFACE])
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_string)
    }

    pub fn set_link(&self, node: &str, up: bool) -> Result<()> {
        let port = self.find_node(node)?.port.clone();
        self.switch
            .ip(["link", "set", &port, if up { "up" } else { "down" }])
            .with_context(|| {
                format!(
                    "setting the link of {node} {}",
                    if up { "up" } else { "down" }
                )
            })?;
        Ok(())
    }

    /// Attaches the project's XDP_PASS program (driver mode) to the switch-side port of
    /// `node`, so that XDP_TX out of `node`'s `eth1` is delivered. Idempotent.
    pub fn attach_pass_program(&mut self, node: &str) -> Result<()> {
        let port = self.find_node(node)?.port.clone();
        if self
            .pass
            .as_ref()
            .is_some_and(|p| p.links.contains_key(&port))
        {
            return Ok(());
        }
        if self.pass.is_none() {
            self.pass = Some(load_pass_program()?);
        }
        let Some(pass) = self.pass.as_mut() else {
            bail!("the pass program is not loaded");
        };
        let program: &mut Xdp = pass
            .bpf
            .program_mut(names::PASS_PROGRAM)
            .ok_or_else(|| anyhow!("the XDP object has no program `{}`", names::PASS_PROGRAM))?
            .try_into()
            .context("the pass program is not an XDP program")?;
        // Interface names resolve in the caller's namespace: attach from inside the switch.
        let link = self
            .switch
            .enter(|| program.attach(&port, XdpMode::Driver))?
            .with_context(|| {
                format!(
                    "attaching {} (driver mode) to {port} in {}",
                    names::PASS_PROGRAM,
                    self.switch.name()
                )
            })?;
        pass.links.insert(port, link);
        Ok(())
    }

    /// Detaches the pass program from `node`'s switch-side port, if attached.
    pub fn detach_pass_program(&mut self, node: &str) -> Result<()> {
        let port = self.find_node(node)?.port.clone();
        let Some(pass) = self.pass.as_mut() else {
            return Ok(());
        };
        let Some(link) = pass.links.remove(&port) else {
            return Ok(());
        };
        let program: &mut Xdp = pass
            .bpf
            .program_mut(names::PASS_PROGRAM)
            .ok_or_else(|| anyhow!("the XDP object has no program `{}`", names::PASS_PROGRAM))?
            .try_into()
            .context("the pass program is not an XDP program")?;
        program
            .detach(link)
            .with_context(|| format!("detaching {} from {port}", names::PASS_PROGRAM))?;
        Ok(())
    }

    /// Nodes whose switch-side port has the pass program attached.
    pub fn pass_program_nodes(&self) -> Vec<&str> {
        let Some(pass) = &self.pass else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .filter(|n| pass.links.contains_key(&n.port))
            .map(|n| n.name.as_str())
            .collect()
    }

    /// Starts `program args…` in `node`'s namespace; the topology stops it (by PID) before it
    /// removes the namespaces. Returns the process, which stays owned by the topology.
    pub fn spawn<S: AsRef<OsStr>>(
        &mut self,
        node: &str,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Result<&mut Process> {
        let process = self.find_node(node)?.ns.spawn(program, args)?;
        self.processes.push(process);
        let last = self.processes.len() - 1;
        Ok(&mut self.processes[last])
    }

    /// A process started with [`Topology::spawn`], by PID.
    pub fn process(&mut self, pid: u32) -> Option<&mut Process> {
        self.processes.iter_mut().find(|p| p.pid() == pid)
    }

    /// Takes a process out of the topology (dropping it stops it).
    pub fn take_process(&mut self, pid: u32) -> Option<Process> {
        let i = self.processes.iter().position(|p| p.pid() == pid)?;
        Some(self.processes.remove(i))
    }

    /// Names of the namespaces that belong to this instance (from `/run/netns`).
    pub fn namespaces(&self) -> Result<Vec<String>> {
        namespaces_with_prefix(&self.prefix)
    }

    /// Deletes the namespaces a previous run left behind: names `kx<pid>x<n>-…` whose `<pid>`
    /// is no longer a live process and in which no process runs. Returns their names.
    /// Namespaces of live processes (other tests running in parallel) and namespaces with
    /// processes inside (a lab kept running) are never touched.
    pub fn cleanup_stale() -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in netns::list()? {
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid == std::process::id() || process_alive(pid) {
                continue;
            }
            // Something still runs inside (e.g. a lab kept on purpose): not ours to end.
            let pids = netns::run_command("ip", ["netns", "pids", &name], netns::RUN_TIMEOUT)
                .with_context(|| format!("listing the processes in network namespace {name}"))?;
            if !pids.stdout.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            netns::run_command("ip", ["netns", "del", &name], netns::RUN_TIMEOUT)
                .with_context(|| format!("deleting stale network namespace {name}"))?;
            removed.push(name);
        }
        Ok(removed)
    }
}

impl Topology {
    /// Leaves the namespaces up when the topology drops (for `cargo xtask lab --keep`) and
    /// returns their names. Processes started with [`Topology::spawn`] and the pass programs
    /// still stop: what must outlive this process has to be started detached.
    pub fn keep(mut self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.nodes.drain(..).map(|n| n.ns.disown()).collect();
        let switch_name = self.switch.name().to_string();
        let owned = std::mem::replace(&mut self.switch, NetNs::existing(&switch_name)?);
        names.push(owned.disown());
        Ok(names)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first (they may hold sockets in the namespaces), then the programs, then
        // the nodes (deleting a namespace deletes its end of the veth, and so the pair), and
        // the switch last, as a field.
        self.processes.clear();
        self.pass = None;
        self.nodes.clear();
    }
}

/// Namespaces in `/run/netns` whose name starts with `prefix-`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let start = format!("{prefix}-");
    Ok(netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .collect())
}

/// A new instance's name prefix, `kx<pid>x<n>`: its namespaces are `<prefix>-<name>`, and
/// [`Topology::cleanup_stale`] deletes them once this process is gone, even if it was killed
/// before it could (the BPF tests' [`crate::bpf::FibLab`] is named so too).
pub(crate) fn instance_prefix() -> String {
    format!(
        "{NAME_MAGIC}{}x{}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The PID in a name of our scheme, `kx<pid>x<n>-…`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_MAGIC)?;
    let (prefix, _node) = rest.split_once('-')?;
    let (pid, instance) = prefix.split_once('x')?;
    if pid.is_empty() || instance.is_empty() || !instance.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Loads the embedded object with small flow tables (only the pass program is used).
fn load_pass_program() -> Result<PassProgram> {
    let mut bpf = EbpfLoader::new()
        .map_max_entries(names::FLOWS, 16)
        .map_max_entries(names::NAT_REVERSE, 16)
        .load(k3s_xdp::dataplane::BPF_OBJECT)
        .context("loading the embedded XDP object (needs root)")?;
    let program: &mut Xdp = bpf
        .program_mut(names::PASS_PROGRAM)
        .ok_or_else(|| anyhow!("the XDP object has no program `{}`", names::PASS_PROGRAM))?
        .try_into()
        .context("the pass program is not an XDP program")?;
    program
        .load()
        .with_context(|| format!("the verifier rejected `{}`", names::PASS_PROGRAM))?;
    Ok(PassProgram {
        bpf,
        links: HashMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_our_names_only() {
        assert_eq!(owner_pid("kx1234x0-lb-1"), Some(1234));
        assert_eq!(owner_pid("kx1234x17-sw"), Some(1234));
        assert_eq!(owner_pid("kx1234x3-fib"), Some(1234));
        assert_eq!(owner_pid("kxfib1234x0"), None);
        assert_eq!(owner_pid("kx1234x-sw"), None);
        assert_eq!(owner_pid("kx1234-sw"), None);
        assert_eq!(owner_pid("other"), None);
    }

    #[test]
    fn macs_spell_the_address() {
        assert_eq!(mac_string(mac_for(SERVER1)), "02:00:c0:00:02:32");
    }

    #[test]
    fn builder_subsets() {
        let b = Topology::builder().without("lb-2");
        assert!(!b.nodes.iter().any(|(n, _)| n == "lb-2"));
        assert!(!b.pass_nodes.iter().any(|n| n == "lb-2"));
        let b = Topology::builder().only(&["lb-1", "agent-1"]);
        assert_eq!(b.nodes.len(), 2);
        assert_eq!(b.pass_nodes, vec!["lb-1".to_string()]);
    }
}
