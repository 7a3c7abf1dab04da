//! The data plane: the XDP program in the kernel and the maps the controller writes.
//!
//! [`Dataplane`] owns the loaded BPF object. It attaches the program to an interface (driver mode,
//! falling back to generic mode where the driver has no XDP), detaches it on drop, and exposes the
//! maps to the modules that fill them from the config and read the counters.

mod flows;
mod object;
pub mod plan;
mod publish;
mod sys;
mod vip_index;

pub use flows::{FlowEventOf, FlowEvents, FlowTables, Held, Installed, Role, SnatPorts};
#[cfg(feature = "bench")]
pub use object::BENCH_OBJECT;
pub use object::BPF_OBJECT;
pub use plan::{
    backend_entry, table, vip_entries, BackendSpec, BackendState, NodeAddresses, ServiceSpec,
};
pub use publish::{publish_table, read_globals, remove_table, write_globals, Applied, Publisher};

use crate::system::bpf_link::LinkRef;
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, ProgramArray},
    programs::{xdp::XdpLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use k3s_xdp_common::{
    guard::{known_bit, SynGuard, KNOWN_SOURCE_WORDS},
    names, reason, table, Globals, Traffic,
};
use std::fmt;

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before the kernel allocates an skb: the fast path.
    Driver,
    /// In the kernel's generic hook, after skb allocation: works everywhere, slower.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
        })
    }
}

/// Which attach modes to try, from the config's `xdp_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachPolicy {
    /// Driver mode, else generic mode with a warning.
    Auto,
    /// Driver mode only.
    Driver,
    /// Generic mode only.
    Generic,
}

/// The loaded XDP program and its maps.
pub struct Dataplane {
    bpf: Ebpf,
    attached: Option<Attached>,
    /// Buckets of the flow tables minus one (see `k3s_xdp_common::table`).
    flow_mask: u32,
    /// Whether the IPv6 flow tables were sized (`LoadOptions::ipv6`).
    ipv6: bool,
    /// CPUs with a part of flow sync's `FLOW_EVENTS` log (0 without flow sync).
    flow_log_cpus: u32,
    /// The log's reader, until flow sync takes it (`take_flow_events`).
    flow_events: Option<flows::FlowEvents>,
    flow_events_taken: bool,
    /// Events the reader found overwritten before it read them.
    flow_events_lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

struct Attached {
    iface: String,
    mode: AttachMode,
    /// Owning the link keeps the program attached; dropping it detaches. On kernels with
    /// bpf_link (5.9+) the process dying detaches it too, so a crash leaves nothing behind
    /// (once the guard, which holds the link too, has removed the VIPs).
    _link: XdpLink,
    /// The bpf_link's kernel id (None: attached through netlink, before Linux 5.9).
    link_id: Option<u32>,
}

/// Sizes the controller chooses at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub flow_table_size: u32,
    /// Whether the IPv6 flow tables (`FLOWS6`, `NAT_REVERSE6`, `NAT_HOPS6`) get `flow_table_size` entries
    /// too (the program indexes both families' tables with one mask): when the config has
    /// IPv6 services. Otherwise they hold one bucket: at the default size they would take
    /// 34 MiB for nothing.
    pub ipv6: bool,
    /// Whether flows are reported for flow sync: the `FLOW_EVENTS` log gets
    /// `FLOW_LOG_SLOTS` slots per CPU, else one slot.
    pub flow_sync: bool,
}

impl Dataplane {
    /// Loads the embedded object: creates the maps and verifies the programs.
    pub fn load(options: LoadOptions) -> Result<Self> {
        object::check()?;
        Self::load_object(BPF_OBJECT, options)
    }

    /// Loads `object`, a build of the XDP program (the benchmarks load [`BENCH_OBJECT`]).
    pub fn load_object(object: &[u8], options: LoadOptions) -> Result<Self> {
        if object.is_empty() {
            bail!("the XDP object is an empty stand-in: build with the BPF toolchain (`cargo xtask setup`)");
        }
        let buckets = table::buckets(options.flow_table_size);
        let size6 = if options.ipv6 {
            options.flow_table_size
        } else {
            0
        };
        // Flow sync's log: a part per CPU the program may run on (indexed by CPU number, so
        // up to the highest possible one: the possible CPUs need not be numbered without
        // gaps), none without flow sync.
        let flow_log_cpus = if options.flow_sync {
            let possible = std::fs::read_to_string(POSSIBLE_CPUS)
                .with_context(|| format!("reading {POSSIBLE_CPUS}"))?;
            cpu_numbers(&possible)
                .with_context(|| format!("{POSSIBLE_CPUS}: {:?}", possible.trim()))?
        } else {
            0
        };
        let mut bpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS, buckets)
            .map_max_entries(names::NAT_REVERSE, table::slots(options.flow_table_size))
            .map_max_entries(names::FLOWS6, table::buckets(size6))
            .map_max_entries(names::NAT_REVERSE6, table::slots(size6))
            .map_max_entries(names::NAT_HOPS6, table::slots(size6))
            .map_max_entries(
                names::FLOW_EVENTS,
                (flow_log_cpus * k3s_xdp_common::FLOW_LOG_SLOTS).max(1),
            )
            .map_max_entries(names::FLOW_EVENTS_HEADS, flow_log_cpus.max(1))
            .load(object)
            .context("cannot load the XDP object into the kernel (needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)")?;
        for name in [names::PROGRAM, names::PASS_PROGRAM, names::FLOOR_PROGRAM]
            .into_iter()
            .chain(names::TAIL_CALLS)
        {
            let program: &mut Xdp = bpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the XDP object has no program `{name}`"))?
                .try_into()?;
            program.load().map_err(|e| verifier_error(name, e))?;
        }
        // The programs `k3s_xdp` tail-calls (a new flow's second half, the IPv6 path) are in
        // their slots before any packet.
        let mut fds = Vec::new();
        for name in names::TAIL_CALLS {
            let program: &Xdp = bpf
                .program(name)
                .ok_or_else(|| anyhow!("the XDP object has no program `{name}`"))?
                .try_into()?;
            fds.push((name, program.fd()?.try_clone()?));
        }
        let mut jump: ProgramArray<_> = ProgramArray::try_from(
            bpf.map_mut(names::NEW_FLOW)
                .ok_or_else(|| anyhow!("the XDP object has no map `{}`", names::NEW_FLOW))?,
        )?;
        for (slot, (name, fd)) in fds.iter().enumerate() {
            jump.set(slot as u32, fd, 0)
                .with_context(|| format!("cannot install `{name}` in its tail-call slot"))?;
        }
        let mut dp = Self {
            bpf,
            attached: None,
            flow_mask: table::buckets(options.flow_table_size) - 1,
            ipv6: options.ipv6,
            flow_log_cpus,
            flow_events: None,
            flow_events_taken: false,
            flow_events_lost: Default::default(),
        };
        // The program finds flow slots with the mask: it is in place before any packet.
        publish::write_globals(&mut dp, &Globals::default())?;
        Ok(dp)
    }

    /// Buckets of the flow tables minus one, which every write of `Globals` carries.
    pub fn flow_mask(&self) -> u32 {
        self.flow_mask
    }

    /// Whether the IPv6 flow tables have their configured size: loaded for a config with an
    /// IPv6 VIP. Without them, an IPv6 service needs a restart.
    pub fn has_ipv6_tables(&self) -> bool {
        self.ipv6
    }

    /// Attaches the main program to `iface`, per `policy`; returns the mode that worked.
    pub fn attach(&mut self, iface: &str, policy: AttachPolicy) -> Result<AttachMode> {
        self.detach();
        let attempts: &[AttachMode] = match policy {
            AttachPolicy::Auto => &[AttachMode::Driver, AttachMode::Generic],
            AttachPolicy::Driver => &[AttachMode::Driver],
            AttachPolicy::Generic => &[AttachMode::Generic],
        };
        let mut failures = Vec::new();
        for &mode in attempts {
            match self.attach_mode(iface, mode) {
                Ok(link) => {
                    if !failures.is_empty() {
                        tracing::warn!(
                            interface = iface,
                            "the driver of {iface} has no native XDP ({}); attached in generic mode, which is slower",
                            failures.join("; ")
                        );
                    }
                    self.attached = Some(Attached {
                        iface: iface.to_string(),
                        mode,
                        _link: link,
                        link_id: self.find_link_id(),
                    });
                    return Ok(mode);
                }
                Err(e) => failures.push(format!("{mode} mode: {e:#}")),
            }
        }
        Err(anyhow!(
            "cannot attach the XDP program to {iface}: {}",
            failures.join("; ")
        ))
    }

    fn attach_mode(&mut self, iface: &str, mode: AttachMode) -> Result<XdpLink> {
        let program = self.program_mut(names::PROGRAM)?;
        let xdp_mode = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        let id = program.attach(iface, xdp_mode)?;
        Ok(program.take_link(id)?)
    }

    /// Detaches the program, if attached, even while another process (the guard) holds its
    /// link. Also happens on drop and when the process dies (and the guard lets go).
    pub fn detach(&mut self) -> Option<(String, AttachMode)> {
        let attached = self.attached.take()?;
        if let Some(id) = attached.link_id {
            if let Err(e) = LinkRef::open(id).and_then(|l| l.detach()) {
                tracing::warn!("detaching the XDP link {id}: {e}; it goes when the guard exits");
            }
        }
        Some((attached.iface, attached.mode))
    }

    /// The kernel's id of the main program (what `ip link` shows as `prog/xdp id N`).
    pub fn program_id(&self) -> Result<u32> {
        let program: &Xdp = self
            .bpf
            .program(names::PROGRAM)
            .ok_or_else(|| anyhow!("the XDP object has no program `{}`", names::PROGRAM))?
            .try_into()?;
        Ok(program.info()?.id())
    }

    /// The kernel id of the bpf_link that attaches the program (`bpftool link`). None when
    /// attached without a bpf_link (kernels before 5.9 attach through netlink) or not attached.
    pub fn link_id(&self) -> Option<u32> {
        self.attached.as_ref()?.link_id
    }

    /// The program's XDP link among the kernel's links, found by the program's id.
    fn find_link_id(&self) -> Option<u32> {
        let program = self.program_id().ok()?;
        aya::programs::loaded_links()
            .filter_map(Result::ok)
            .find(|l| {
                l.program_id() == program
                    && matches!(l.link_type(), Ok(aya::programs::links::LinkType::Xdp))
            })
            .map(|l| l.id())
    }

    /// The interface and mode the program is attached with.
    pub fn attachment(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|a| (a.iface.as_str(), a.mode))
    }

    /// Loads (verifies) another program of the object, e.g. a benchmark entry point.
    pub fn load_program(&mut self, name: &str) -> Result<()> {
        self.program_mut(name)?
            .load()
            .map_err(|e| verifier_error(name, e))
    }

    /// A loaded program of the object, e.g. for BPF_PROG_TEST_RUN.
    pub fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .bpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the XDP object has no program `{name}`"))?
            .try_into()?)
    }

    /// The BPF object, for the modules that fill and read its maps.
    pub fn bpf(&self) -> &Ebpf {
        &self.bpf
    }

    pub fn bpf_mut(&mut self) -> &mut Ebpf {
        &mut self.bpf
    }

    /// Packet counts by reason (`k3s_xdp_common::reason`), summed over CPUs, in reason order.
    pub fn reasons(&self) -> Result<Vec<(&'static str, u64)>> {
        self.per_cpu_sums(names::REASONS, &reason::NAMES)
    }

    /// Counts of the signs of full flow tables (`k3s_xdp_common::reason::table`), summed over
    /// CPUs, in event order.
    pub fn table_events(&self) -> Result<Vec<(&'static str, u64)>> {
        self.per_cpu_sums(names::TABLE_EVENTS, &reason::table::NAMES)
    }

    /// Flow sync events lost: overwritten in the log before they were read, or not written
    /// (summed over CPUs).
    pub fn flow_events_lost(&self) -> Result<u64> {
        let unwritten = self.per_cpu_sums(names::FLOW_EVENTS_LOST, &["lost"])?[0].1;
        Ok(unwritten
            + self
                .flow_events_lost
                .load(std::sync::atomic::Ordering::Relaxed))
    }

    fn per_cpu_sums(&self, map: &str, labels: &[&'static str]) -> Result<Vec<(&'static str, u64)>> {
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(map)?)?;
        let mut out = Vec::with_capacity(labels.len());
        for (index, name) in labels.iter().enumerate() {
            let per_cpu = counters.get(&(index as u32), 0)?;
            out.push((*name, per_cpu.iter().sum()));
        }
        Ok(out)
    }
}

/// The SYN flood guard's maps (see `k3s_xdp_common::guard`).
impl Dataplane {
    /// Writes the guard's per-CPU settings (all zero: off).
    pub fn write_syn_guard(&mut self, guard: &SynGuard) -> Result<()> {
        let mut map: aya::maps::Array<&mut MapData, SynGuard> =
            aya::maps::Array::try_from(self.map_mut(names::SYN_GUARD)?)?;
        Ok(map.set(0, *guard, 0)?)
    }

    fn known_sources_mapped(&self, writable: bool) -> Result<sys::MappedArray<u64>> {
        use std::os::fd::{AsFd, AsRawFd};
        let aya::maps::Map::Array(map) = self.map(names::KNOWN_SOURCES)? else {
            bail!("{} is not an array", names::KNOWN_SOURCES);
        };
        sys::MappedArray::map(
            map.fd().as_fd().as_raw_fd(),
            KNOWN_SOURCE_WORDS as usize,
            writable,
        )
    }

    /// Bits set in the known-source set, of `KNOWN_SOURCE_WORDS * 64`: the share a forged
    /// source passes as known by chance.
    pub fn known_sources(&self) -> Result<u64> {
        let map = self.known_sources_mapped(false)?;
        Ok((0..map.entries())
            .filter_map(|i| map.get(i))
            .map(|w| u64::from(w.count_ones()))
            .sum())
    }

    /// Records `source` as known, as the program does when one of its flows is confirmed (for
    /// benchmarks and tests that start from clients a cluster already has).
    pub fn mark_known(&mut self, source: std::net::IpAddr) -> Result<()> {
        let (word, mask) = match source {
            std::net::IpAddr::V4(a) => known_bit(&u32::from_ne_bytes(a.octets())),
            std::net::IpAddr::V6(a) => known_bit(&k3s_xdp_common::address::v6_words(a.octets())),
        };
        let mut map = self.known_sources_mapped(true)?;
        let old = map.get(word as usize).unwrap_or(0);
        map.set(word as usize, old | mask);
        Ok(())
    }
}

impl Dataplane {
    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.bpf
            .map(name)
            .ok_or_else(|| anyhow!("the XDP object has no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the XDP object has no map {name}"))
    }

    /// Traffic of service slot `slot`, summed over CPUs.
    pub fn service_traffic(&self, slot: u32) -> Result<Traffic> {
        self.traffic(names::SERVICE_STATS, slot)
    }

    /// Traffic of backend slot `slot`, summed over CPUs.
    pub fn backend_traffic(&self, slot: u32) -> Result<Traffic> {
        self.traffic(names::BACKEND_STATS, slot)
    }

    fn traffic(&self, map: &str, slot: u32) -> Result<Traffic> {
        let stats: PerCpuArray<&MapData, Traffic> = PerCpuArray::try_from(self.map(map)?)?;
        let mut sum = Traffic::default();
        for t in stats.get(&slot, 0)?.iter() {
            sum.packets += t.packets;
            sum.bytes += t.bytes;
            sum.new_flows += t.new_flows;
            sum.resets += t.resets;
        }
        Ok(sum)
    }
}

/// A verifier refusal, with the capability to grant when it is one of privilege: without
/// CAP_PERFMON the verifier forbids packet-pointer arithmetic with variable offsets (Spectre v1
/// sanitation), which parsing a VLAN tag or IP options needs.
fn verifier_error(name: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("prohibited for !root") || text.contains("Operation not permitted") {
        let log_tail: Vec<&str> = text.lines().rev().take(4).collect();
        return anyhow!(
            "the kernel's verifier refused the XDP program `{name}` for lack of privilege: run as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (CAP_PERFMON allows the packet-pointer arithmetic of variable-length headers); verifier: {}",
            log_tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    anyhow::Error::new(e).context(format!(
        "the kernel's verifier rejected the XDP program `{name}`"
    ))
}

/// The kernel's list of the CPUs that may ever run (`0-3`, `0-3,8-11`).
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// How many CPU numbers a list like `0-3,8-11` spans: its highest CPU plus one.
fn cpu_numbers(list: &str) -> Result<u32> {
    let mut highest = None;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next().unwrap_or(part);
        let cpu: u32 = last
            .trim()
            .parse()
            .with_context(|| format!("not a CPU number or range: {part:?}"))?;
        highest = highest.max(Some(cpu));
    }
    let highest = highest.ok_or_else(|| anyhow!("no CPU listed"))?;
    highest
        .checked_add(1)
        .filter(|n| *n <= 1 << 16)
        .ok_or_else(|| anyhow!("CPU {highest} is beyond any machine"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_numbers_span_gaps_in_the_possible_list() {
        assert_eq!(super::cpu_numbers("0-3\n").unwrap(), 4);
        assert_eq!(super::cpu_numbers("0").unwrap(), 1);
        assert_eq!(super::cpu_numbers("0-3,8-11").unwrap(), 12);
        assert_eq!(super::cpu_numbers("0,2,5").unwrap(), 6);
        assert!(super::cpu_numbers("").is_err());
        assert!(super::cpu_numbers("0-x").is_err());
        assert!(super::cpu_numbers("0-4294967295").is_err());
    }
}
