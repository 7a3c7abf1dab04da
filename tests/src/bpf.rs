//! Running the real XDP program on packets with BPF_PROG_TEST_RUN.
//!
//! [`XdpHarness`] loads the embedded object exactly as `k3s-xdp run` does (same maps, same
//! verifier), without attaching it anywhere; [`XdpHarness::run`] passes one frame through the
//! main program with `repeat = 1` and returns the verdict and the bytes the program left. The
//! kernel updates the real maps, so counters and flow tables can be checked after each run.
//!
//! Forwarding resolves next hops with `bpf_fib_lookup`, which under BPF_PROG_TEST_RUN looks at
//! the routes and neighbours of the calling thread's network namespace. [`FibLab`] builds such a
//! namespace with fixed addresses and MACs (the LB interface, static neighbours for servers and
//! agents, a router for a client prefix), and the harness runs each packet inside it, arriving
//! on the LB interface, so outputs are exact and deterministic.

pub use crate::netns::NetnsGuard;
use crate::{netns::NetNs, packet::Frame, topology::mac_string};
use anyhow::{anyhow, bail, Context, Result};
use aya::{TestRun, TestRunOptions};
use k3s_xdp::dataplane::{Dataplane, LoadOptions, Publisher, ServiceSpec, BPF_OBJECT};
use k3s_xdp_common::{names, reason};
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The name of an XDP verdict, for assertion messages.
pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// What the program did with one frame.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub action: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
}

impl Outcome {
    pub fn frame(&self) -> Result<Frame> {
        Frame::parse(&self.data).map_err(|e| anyhow::anyhow!("output does not parse: {e}"))
    }
}

/// The XDP program loaded (not attached), ready for BPF_PROG_TEST_RUN.
pub struct XdpHarness {
    pub dataplane: Dataplane,
    /// Writes services into the maps exactly as the daemon does.
    pub publisher: Publisher,
    /// Where packets "arrive", if forwarding needs next hops.
    pub lab: Option<FibLab>,
}

/// Root is needed to load BPF programs; tests say so and skip instead of failing obscurely.
pub fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl XdpHarness {
    /// Loads the object with small tables (tests create few flows).
    pub fn new() -> Result<Self> {
        Self::sized(4096)
    }

    /// Loads the object with flow tables of `flows` entries.
    pub fn sized(flows: u32) -> Result<Self> {
        Self::load(BPF_OBJECT, flows)
    }

    /// Loads `object` (the daemon's, or the benchmarks' `BENCH_OBJECT`) with flow tables of
    /// `flows` entries.
    pub fn load(object: &[u8], flows: u32) -> Result<Self> {
        let dataplane = Dataplane::load_object(
            object,
            LoadOptions {
                flow_table_size: flows,
                ipv6: true,
                flow_sync: true,
            },
        )
        .context("loading the XDP object for BPF_PROG_TEST_RUN")?;
        Ok(Self {
            dataplane,
            publisher: Publisher::new(),
            lab: None,
        })
    }

    /// Like [`XdpHarness::with_config`], with packets arriving on the LB interface of a
    /// [`FibLab`], so the forwarding paths find their next hops.
    pub fn with_config_in_lab(config_toml: &str) -> Result<Self> {
        Self::with_config_in_lab_sized(config_toml, 4096)
    }

    /// Like [`XdpHarness::with_config_in_lab`], with flow tables of `flows` entries.
    pub fn with_config_in_lab_sized(config_toml: &str, flows: u32) -> Result<Self> {
        Self::with_config_in_lab_from(BPF_OBJECT, config_toml, flows)
    }

    /// Like [`XdpHarness::with_config_in_lab_sized`], loading `object`.
    pub fn with_config_in_lab_from(object: &[u8], config_toml: &str, flows: u32) -> Result<Self> {
        let mut h = Self::with_config_from(object, config_toml, flows)?;
        h.lab = Some(FibLab::new()?);
        let config = k3s_xdp::config::parse(config_toml, "test.toml".as_ref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        h.write_lab_globals((config.snat_port_min, config.snat_port_max))?;
        Ok(h)
    }

    /// Writes the lab's settings: FIB generation 1, the config's SNAT ports, no TIME_WAIT
    /// wait, any MAC, no clock (the tests set it, as the controller ticks it).
    fn write_lab_globals(&mut self, (snat_port_min, snat_port_max): (u16, u16)) -> Result<()> {
        k3s_xdp::dataplane::write_globals(
            &mut self.dataplane,
            &k3s_xdp_common::Globals {
                fib_generation: 1,
                snat_port_min,
                snat_port_max,
                ..Default::default()
            },
        )
    }

    /// Changes the program-wide settings as `change` says, keeping the others.
    pub fn update_globals(
        &mut self,
        change: impl FnOnce(&mut k3s_xdp_common::Globals),
    ) -> Result<()> {
        let mut globals = k3s_xdp::dataplane::read_globals(&self.dataplane)?;
        change(&mut globals);
        k3s_xdp::dataplane::write_globals(&mut self.dataplane, &globals)
    }

    /// Flow sync's directory of `specs` as this harness published them (its own slots).
    pub fn directory(&self, specs: &[ServiceSpec]) -> k3s_xdp::flowsync::translate::Directory {
        k3s_xdp::flowsync::translate::Directory::new(
            specs,
            |n| self.publisher.service_slot(n),
            |n, addr| self.publisher.backend_slot(n, addr),
        )
    }

    /// Sets the data plane's clock to `clock` seconds.
    pub fn set_clock(&mut self, clock: u32) -> Result<()> {
        self.update_globals(|g| g.clock = clock)
    }

    /// Loads the object and publishes the services of `config_toml` (all backends up).
    pub fn with_config(config_toml: &str) -> Result<Self> {
        Self::with_config_from(BPF_OBJECT, config_toml, 4096)
    }

    fn with_config_from(object: &[u8], config_toml: &str, flows: u32) -> Result<Self> {
        let mut h = Self::load(object, flows)?;
        let config = k3s_xdp::config::parse(config_toml, "test.toml".as_ref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let specs: Vec<ServiceSpec> = config
            .services
            .iter()
            .map(ServiceSpec::from_config)
            .collect();
        h.apply(&specs)?;
        Ok(h)
    }

    /// `services` (built by hand: IPv6 ones, say) published with packets arriving on the LB
    /// interface of a [`FibLab`], the SNAT ports at their defaults.
    pub fn with_specs_in_lab(services: &[ServiceSpec]) -> Result<Self> {
        let mut h = Self::load(BPF_OBJECT, 4096)?;
        h.apply(services)?;
        h.lab = Some(FibLab::new()?);
        h.write_lab_globals((1024, 65535))?;
        Ok(h)
    }

    /// Publishes `services` as the daemon would.
    pub fn apply(&mut self, services: &[ServiceSpec]) -> Result<()> {
        self.publisher.apply(&mut self.dataplane, services)?;
        Ok(())
    }

    /// Runs `frame` through the main program once.
    pub fn run(&mut self, frame: &[u8]) -> Result<Outcome> {
        self.run_program(names::PROGRAM, frame)
    }

    pub fn run_frame(&mut self, frame: &Frame) -> Result<Outcome> {
        self.run(&frame.to_bytes())
    }

    /// Runs `frame` through the program `name` of the object once.
    pub fn run_program(&mut self, name: &str, frame: &[u8]) -> Result<Outcome> {
        if frame.len() < 14 {
            bail!("BPF_PROG_TEST_RUN needs at least an Ethernet header (14 bytes)");
        }
        // Room for programs that grow the frame (e.g. a RST built from a shorter packet).
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data = 0 and data_end = the frame's length.
        let ctx: Option<[u32; 6]> = self
            .lab
            .as_ref()
            .map(|lab| [0, frame.len() as u32, 0, lab.ifindex, 0, 0]);
        let ctx_bytes: Option<Vec<u8>> =
            ctx.map(|c| c.iter().flat_map(|v| v.to_ne_bytes()).collect());
        let _inside = match &self.lab {
            Some(lab) => Some(lab.enter()?),
            None => None,
        };
        let program = self.dataplane.program_mut(name)?;
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx_bytes.as_deref(),
            repeat: 1,
            ..Default::default()
        };
        let result = program
            .test_run(options)
            .context("BPF_PROG_TEST_RUN failed")?;
        out.truncate(result.data_size_out as usize);
        Ok(Outcome {
            action: result.return_value,
            data: out,
        })
    }

    /// Every reason counter, summed over CPUs, by name.
    pub fn reasons(&self) -> Result<BTreeMap<&'static str, u64>> {
        Ok(self.dataplane.reasons()?.into_iter().collect())
    }

    /// One reason counter by its index constant (`k3s_xdp_common::reason::*`).
    pub fn reason(&self, index: u32) -> Result<u64> {
        let name = reason::NAMES[index as usize];
        Ok(self.reasons()?.get(name).copied().unwrap_or(0))
    }
}

/// A handle that runs the main program from another thread while the harness publishes:
/// its own descriptor of the loaded program, and the lab to run in.
pub struct Runner<'a> {
    fd: OwnedFd,
    lab: Option<&'a FibLab>,
}

impl XdpHarness {
    /// Splits the harness into a [`Runner`] for a packet thread and the data plane and
    /// publisher for the thread that publishes.
    pub fn split(&mut self) -> Result<(Runner<'_>, &mut Dataplane, &mut Publisher)> {
        let fd = self
            .dataplane
            .program_mut(names::PROGRAM)?
            .fd()?
            .as_fd()
            .try_clone_to_owned()?;
        Ok((
            Runner {
                fd,
                lab: self.lab.as_ref(),
            },
            &mut self.dataplane,
            &mut self.publisher,
        ))
    }
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

impl Runner<'_> {
    /// Moves the calling thread into the lab (if any) until the guard drops.
    pub fn enter(&self) -> Result<Option<NetnsGuard>> {
        self.lab.map(FibLab::enter).transpose()
    }

    /// Runs `frame` through the program once (from a thread that called [`Runner::enter`]).
    pub fn run(&self, frame: &[u8]) -> Result<Outcome> {
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx: Vec<u8> = match self.lab {
            Some(lab) => [0u32, frame.len() as u32, 0, lab.ifindex, 0, 0]
                .iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect(),
            None => Vec::new(),
        };
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ctx_size_in: ctx.len() as u32,
            ctx_in: if ctx.is_empty() {
                0
            } else {
                ctx.as_ptr() as u64
            },
            ..Default::default()
        };
        // SAFETY: attr points at buffers that outlive the call, with their true sizes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if rc < 0 {
            bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
        }
        out.truncate(attr.data_size_out as usize);
        Ok(Outcome {
            action: attr.retval,
            data: out,
        })
    }
}

/// Writes a reverse NAT entry (to stage collisions in tests), last seen at `clock`.
pub fn insert_nat_reverse(
    h: &mut XdpHarness,
    key: &k3s_xdp_common::FlowKey,
    value: &k3s_xdp_common::NatReverse,
    clock: u32,
) -> Result<()> {
    h.dataplane.store_nat_reverse(key, value, clock)
}

/// Writes a flow table entry (to stage states in tests).
pub fn insert_flow(
    h: &mut XdpHarness,
    key: &k3s_xdp_common::FlowKey,
    value: &k3s_xdp_common::Flow,
) -> Result<()> {
    h.dataplane.store_flow(key, value, 0)
}

/// Removes a flow table entry (as an eviction would).
pub fn remove_flow(h: &mut XdpHarness, key: &k3s_xdp_common::FlowKey) -> Result<()> {
    h.dataplane.remove_flow(key)
}

/// MAC of the LB interface in the FIB lab.
pub const LAB_LB_MAC: [u8; 6] = crate::packet::LB_MAC;
/// MAC of the router toward [`ROUTED_CLIENTS`].
pub const LAB_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// A client prefix behind the router 192.0.2.1.
pub const ROUTED_CLIENTS: &str = "203.0.113.0/24";
/// The IPv6 twin: behind the router 2001:db8::1.
pub const ROUTED_CLIENTS6: &str = "2001:db8:ffff::/48";

/// The lab's MAC for a host of 192.0.2.0/24: `02:00:00:00:00:<last octet>`. Servers .50-.59
/// and agents .101-.109 have static neighbour entries; other addresses have none.
pub fn lab_mac(addr: Ipv4Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, addr.octets()[3]]
}

/// The lab's MAC for a host of 2001:db8::/64: `02:00:00:00:<last two bytes>`.
pub fn lab_mac6(addr: std::net::Ipv6Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0, 0, 0, o[14], o[15]]
}

/// A network namespace holding the LB interface `eth1` (192.0.2.98/24, `LAB_LB_MAC`, IPv4
/// forwarding on, as `bpf_fib_lookup` requires), static neighbours for 192.0.2.50-59 and
/// 192.0.2.101-109, and a route to 203.0.113.0/24 via 192.0.2.1; and the same in IPv6
/// (2001:db8::98/64 without duplicate address detection, neighbours 2001:db8::50-59 and
/// ::101-109, 2001:db8:ffff::/48 via 2001:db8::1). Deleted on drop.
pub struct FibLab {
    pub ns: NetNs,
    pub ifindex: u32,
}

impl FibLab {
    pub fn new() -> Result<Self> {
        let name = format!("{}-fib", crate::topology::instance_prefix());
        let lab = FibLab {
            ns: NetNs::create(&name)?,
            ifindex: 0,
        };
        lab.configure()
    }

    fn configure(mut self) -> Result<Self> {
        let ns = &self.ns;
        let lb_mac = mac_string(LAB_LB_MAC);
        ns.ip([
            "link", "add", "name", "eth1", "address", &lb_mac, "type", "veth", "peer", "name",
            "wire",
        ])?;
        ns.ip(["link", "set", "eth1", "up"])?;
        ns.ip(["link", "set", "wire", "up"])?;
        ns.ip(["addr", "add", "192.0.2.98/24", "dev", "eth1"])?;
        ns.run("sysctl", ["-q", "-w", "net.ipv4.conf.eth1.forwarding=1"])?;
        ns.run("sysctl", ["-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        ns.ip([
            "-6",
            "addr",
            "add",
            "2001:db8::98/64",
            "dev",
            "eth1",
            "nodad",
        ])?;
        let hosts = (50..60).chain(101..110).chain([1]);
        for last in hosts {
            let addr = Ipv4Addr::new(192, 0, 2, last);
            let mac = if last == 1 {
                LAB_ROUTER_MAC
            } else {
                lab_mac(addr)
            };
            self.neighbour(addr, mac, "permanent")?;
        }
        ns.ip([
            "route",
            "add",
            ROUTED_CLIENTS,
            "via",
            "192.0.2.1",
            "dev",
            "eth1",
        ])?;
        for last in (0x50..0x60u16).chain(0x101..0x110).chain([1]) {
            let addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last);
            let mac = if last == 1 {
                LAB_ROUTER_MAC
            } else {
                lab_mac6(addr)
            };
            ns.ip([
                "-6",
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &mac_string(mac),
                "nud",
                "permanent",
                "dev",
                "eth1",
            ])?;
        }
        ns.ip([
            "-6",
            "route",
            "add",
            ROUTED_CLIENTS6,
            "via",
            "2001:db8::1",
            "dev",
            "eth1",
        ])?;
        let out = ns.ip(["-o", "link", "show", "eth1"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        self.ifindex = text
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .ok_or_else(|| anyhow!("cannot read the ifindex of eth1 in {}: {text}", ns.name()))?;
        Ok(self)
    }

    /// Gives `addr` (on eth1) a neighbour entry with `mac`, as ARP would.
    pub fn add_neighbour(&self, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.neighbour(addr, mac, "reachable")
    }

    fn neighbour(&self, addr: Ipv4Addr, mac: [u8; 6], nud: &str) -> Result<()> {
        self.ns.ip([
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac_string(mac),
            "nud",
            nud,
            "dev",
            "eth1",
        ])?;
        Ok(())
    }

    /// Moves the calling thread into the lab until the guard drops (BPF_PROG_TEST_RUN's
    /// `bpf_fib_lookup` reads the namespace of the calling thread).
    pub fn enter(&self) -> Result<NetnsGuard> {
        self.ns.join_this_thread()
    }
}

/// Keeps the calling thread on CPU 0, for tests of what the program counts per CPU (the SYN
/// flood guard): BPF_PROG_TEST_RUN runs the program on the caller's CPU.
pub fn stay_on_cpu_0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it; pid 0 is the
    // calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}
