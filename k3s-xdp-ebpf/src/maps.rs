//! The maps the controller writes and the program reads. Layouts live in `k3s-xdp-common`.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, PerCpuArray, ProgramArray},
    macros::btf_map,
};
use k3s_xdp_common::{
    maglev_words, reason,
    table::{buckets, slots, FlowBucket, NatSlot, NatSlot6},
    Address, Backend, FlowLogHead, FlowLogSlot, Globals, NextHop, SnatSources, Traffic, VipInfo,
    VipSlot, VipTable, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_TABLE_SIZE, FLOW_LOG_SLOTS, MAX_BACKENDS,
    MAX_SERVICES, MAX_SNAT_SOURCES, V6, VIP_SLOTS,
};

/// Flags of the inner Maglev tables, which the controller must create with the same flags:
/// `BPF_F_INNER_MAP` (tables may differ in size from this template) and `BPF_F_MMAPABLE` (the
/// controller fills a new table with one memory copy instead of one syscall per entry).
const INNER_FLAGS: usize = k3s_xdp_common::MAGLEV_INNER_FLAGS as usize;

/// Which half of `VIPS` is live, and the perfect hash of each half.
#[btf_map]
pub static VIP_TABLE: Array<VipTable, 1> = Array::new();

/// Two halves of `VIP_SLOTS` slots: a VIP's slot (by the half's perfect hash) → the VIP and
/// its services. An array, not a hash map: the verifier inlines array lookups, so telling VIP
/// traffic from the rest costs every packet a multiplication and a load, not a call.
#[btf_map]
pub static VIPS: Array<VipSlot, { 2 * VIP_SLOTS as usize }> = Array::new();

/// Never read by the program. Userspace updates it to wait until no program run can still be
/// reading the VIP half it has just retired: the kernel returns from an update of a
/// map-in-map only after every running program has finished (`synchronize_rcu`).
#[btf_map]
pub static GRACE: ArrayOfMaps<Array<u32, 1>, 1> = ArrayOfMaps::new();

/// Backend slot → address and state.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Backend slot → cached next hop toward it (written by the program, see `hop.rs`).
#[btf_map]
pub static BACKEND_HOPS: Array<NextHop, { MAX_BACKENDS as usize }> = Array::new();

/// Service slot → its Maglev table (entry → backend slot, four 16-bit slots per word). The controller builds a new table in
/// a fresh inner map and swaps it in with one update of this array, so a packet reads either the
/// old table or the new one, never a table being written.
#[btf_map]
pub static MAGLEV: ArrayOfMaps<
    Array<u64, { maglev_words(DEFAULT_TABLE_SIZE) as usize }, INNER_FLAGS>,
    { MAX_SERVICES as usize },
> = ArrayOfMaps::new();

/// `BPF_F_MMAPABLE`: the kernel places the entries from a page boundary, so each 64-byte
/// `NatSlot` (and `NatSlot6`) is one cache line (and userspace reads the tables through a
/// mapping).
const MMAPABLE: usize = 1 << 10;

/// Client → VIP tuple → backend and SNAT port: a set-associative table, an array of buckets
/// (see `k3s_xdp_common::table`); the loader sizes it from `flow_table_size`.
#[btf_map]
pub static FLOWS: Array<FlowBucket, { buckets(DEFAULT_FLOW_TABLE_SIZE) as usize }, MMAPABLE> =
    Array::new();

/// Backend → VIP:snat_port tuple → the client it stands for (nat mode): direct-mapped slots,
/// as many as `FLOWS` has.
#[btf_map]
pub static NAT_REVERSE: Array<NatSlot, { slots(DEFAULT_FLOW_TABLE_SIZE) as usize }, MMAPABLE> =
    Array::new();

/// The programs `k3s_xdp` tail-calls: slot 0 the second half of an IPv4 new flow's path
/// (`k3s_xdp_new_flow`, see `new_flow.rs`), 1 its IPv6 twin (`k3s_xdp_new_flow6`), 2 the IPv6
/// path (`k3s_xdp6`) and 3-4 its later steps (see `ipv6.rs`). The controller fills them
/// before attaching.
#[btf_map]
pub static NEW_FLOW: ProgramArray<5> = ProgramArray::new();

/// A new flow's question and answer between the halves, and its SNAT port search (one per CPU), see `choose::snat_port`.
#[btf_map]
pub static SNAT_SEARCH: PerCpuArray<crate::state::Probe, 1> = PerCpuArray::new();

/// Packet fates, per CPU, indexed by `k3s_xdp_common::reason`.
#[btf_map]
pub static REASONS: PerCpuArray<u64, { reason::COUNT as usize }> = PerCpuArray::new();

/// Signs of full flow tables, per CPU, indexed by `k3s_xdp_common::reason::table`.
#[btf_map]
pub static TABLE_EVENTS: PerCpuArray<u64, { reason::table::COUNT as usize }> = PerCpuArray::new();

/// Flow sync: the per-CPU log of new flows and closed translations for the peers
/// (`FlowLogSlot`, see `sync.rs`): `FLOW_LOG_SLOTS` slots per CPU. Sized by the loader, for
/// the machine's CPUs with `[flow_sync]`, one slot without. Mapped by the daemon, which reads
/// it without a system call.
#[btf_map]
pub static FLOW_EVENTS: Array<FlowLogSlot, { FLOW_LOG_SLOTS as usize }, MMAPABLE> = Array::new();

/// Flow sync: each CPU's count of the events it wrote into `FLOW_EVENTS`.
#[btf_map]
pub static FLOW_EVENTS_HEADS: Array<FlowLogHead, 1, MMAPABLE> = Array::new();

/// Flow sync: events not written (a CPU beyond the log's size), per CPU. The next bulk sync
/// repairs.
#[btf_map]
pub static FLOW_EVENTS_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Per service slot traffic, per CPU.
#[btf_map]
pub static SERVICE_STATS: PerCpuArray<Traffic, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Per backend slot traffic, per CPU.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Traffic, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Service slot → its VIP and SNAT pool (`snat_source`, nat mode).
#[btf_map]
pub static SNAT_SOURCES: Array<SnatSources, { MAX_SERVICES as usize }> = Array::new();

/// The IPv6 twins of the maps above (see `family.rs`): VIPs, backends, their hops, the flow
/// and reverse tables, SNAT pools, and the new-flow state. Backend slots are numbered across
/// `BACKENDS` and `BACKENDS6`; the counters are shared.
#[btf_map]
pub static VIPS6: Array<VipSlot<V6>, { 2 * VIP_SLOTS as usize }> = Array::new();

#[btf_map]
pub static BACKENDS6: Array<Backend<V6>, { MAX_BACKENDS as usize }> = Array::new();

#[btf_map]
pub static BACKEND_HOPS6: Array<NextHop<V6>, { MAX_BACKENDS as usize }> = Array::new();

#[btf_map]
pub static FLOWS6: Array<FlowBucket<V6>, { buckets(DEFAULT_FLOW_TABLE_SIZE) as usize }, MMAPABLE> =
    Array::new();

#[btf_map]
pub static NAT_REVERSE6: Array<NatSlot6, { slots(DEFAULT_FLOW_TABLE_SIZE) as usize }, MMAPABLE> =
    Array::new();

/// The hop toward the client of the translation at the same index of `NAT_REVERSE6`, out of
/// its slot so that the slot is one cache line (see `NatSlot6`): written by replies only.
#[btf_map]
pub static NAT_HOPS6: Array<NextHop<V6>, { slots(DEFAULT_FLOW_TABLE_SIZE) as usize }> =
    Array::new();

#[btf_map]
pub static SNAT_SOURCES6: Array<SnatSources<V6>, { MAX_SERVICES as usize }> = Array::new();

#[btf_map]
pub static SNAT_SEARCH6: PerCpuArray<crate::state::Probe<V6>, 1> = PerCpuArray::new();

/// The parameter block of `bpf_fib_lookup`, one per CPU (see `hop.rs`): off the stack.
#[btf_map]
pub static FIB_PARAMS: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup, 1> = PerCpuArray::new();

/// The SYN flood guard: the sources known to have completed a handshake (a Bloom filter, see
/// `k3s_xdp_common::guard`), shared by the CPUs and both families; and its settings.
#[btf_map]
pub static KNOWN_SOURCES: Array<
    u64,
    { k3s_xdp_common::guard::KNOWN_SOURCE_WORDS as usize },
    MMAPABLE,
> = Array::new();
#[btf_map]
pub static SYN_GUARD: Array<k3s_xdp_common::guard::SynGuard, 1> = Array::new();

/// Program-wide settings, one entry.
#[btf_map]
pub static GLOBALS: Array<Globals, 1> = Array::new();

/// The packet the benchmark entry points restore before each run (see `bench.rs`).
#[cfg(feature = "bench")]
#[btf_map]
pub static BENCH: Array<k3s_xdp_common::BenchPacket, 1> = Array::new();

/// The program-wide settings, read once per VIP packet (zero until the controller writes them).
#[inline(always)]
pub fn globals() -> Globals {
    GLOBALS.get(0).copied().unwrap_or_default()
}

/// The settings in place, read where they are (no copy on the stack: the IPv6 program's
/// frame has no room for one). `None` only if the map has no entry, which never happens.
#[inline(always)]
pub fn globals_ref() -> Option<&'static Globals> {
    GLOBALS.get(0)
}

/// The services of `dst` (network byte order) if it is a VIP or a SNAT-only address
/// (`VIP_SNAT_ONLY`): the live half's perfect hash gives its one possible slot.
#[inline(always)]
pub fn vip(dst: u32) -> Option<&'static VipInfo> {
    let table = VIP_TABLE.get(0)?;
    let half = table.half & 1;
    let hash = table.hash[half as usize];
    let slot = VIPS.get(half * VIP_SLOTS + (hash.slot(dst) & (VIP_SLOTS - 1)))?;
    if (slot.info.count | slot.info.flags) == 0 || slot.addr != dst {
        return None;
    }
    Some(&slot.info)
}

/// The same for an IPv6 destination, in `VIPS6` (hashed over `vip_fold`).
#[inline(always)]
pub fn vip6(dst: &V6) -> Option<&'static VipInfo> {
    let table = VIP_TABLE.get(0)?;
    let half = table.half & 1;
    let hash = table.hash6[half as usize];
    let slot = VIPS6.get(half * VIP_SLOTS + (hash.slot(dst.vip_fold()) & (VIP_SLOTS - 1)))?;
    if (slot.info.count | slot.info.flags) == 0 || slot.addr.diff(dst) != 0 {
        return None;
    }
    Some(&slot.info)
}

/// The source address the backend sees for a flow of service slot `service` to `vip` whose
/// `Flow::snat_source` is `source`: the VIP (0, no lookup), or an address of the service's pool.
#[inline(always)]
pub fn snat_address<F: crate::family::Family>(service: u32, source: u16, vip: F) -> Option<F> {
    if source == 0 {
        return Some(vip);
    }
    let sources = F::snat_sources(service)?;
    let i = u32::from(source) - 1;
    if i >= sources.count {
        return None;
    }
    sources
        .addrs
        .get(i as usize & (MAX_SNAT_SOURCES - 1))
        .copied()
}
