//! The maps the controller writes and the program reads. Layouts live in `k3s-xdp-common`.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use k3s_xdp_common::{
    maglev_words, reason, Backend, BenchPacket, Flow, FlowKey, Globals, NatReverse, NextHop,
    Traffic, VipInfo, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES,
    MAX_VIPS,
};

/// Flags of the inner Maglev tables, which the controller must create with the same flags:
/// `BPF_F_INNER_MAP` (tables may differ in size from this template) and `BPF_F_MMAPABLE` (the
/// controller fills a new table with one memory copy instead of one syscall per entry).
const INNER_FLAGS: usize = k3s_xdp_common::MAGLEV_INNER_FLAGS as usize;

/// VIP (network byte order) → its services.
#[btf_map]
pub static VIPS: HashMap<u32, VipInfo, { MAX_VIPS as usize }> = HashMap::new();

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

/// `BPF_F_NO_COMMON_LRU`: LRU lists per CPU (inserts need no global lock).
const NO_COMMON_LRU: usize = 1 << 1;

/// Client → VIP tuple → backend and cached next hop.
#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, Flow, { DEFAULT_FLOW_TABLE_SIZE as usize }, NO_COMMON_LRU> =
    LruHashMap::new();

/// Backend → VIP:snat_port tuple → the client it stands for (nat mode).
#[btf_map]
pub static NAT_REVERSE: LruHashMap<
    FlowKey,
    NatReverse,
    { DEFAULT_FLOW_TABLE_SIZE as usize },
    NO_COMMON_LRU,
> = LruHashMap::new();

/// Packet fates, per CPU, indexed by `k3s_xdp_common::reason`.
#[btf_map]
pub static REASONS: PerCpuArray<u64, { reason::COUNT as usize }> = PerCpuArray::new();

/// Per service slot traffic, per CPU.
#[btf_map]
pub static SERVICE_STATS: PerCpuArray<Traffic, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Per backend slot traffic, per CPU.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Traffic, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Program-wide settings, one entry.
#[btf_map]
pub static GLOBALS: Array<Globals, 1> = Array::new();

/// The packet the benchmark entry points restore before each run (see `bench.rs`).
#[btf_map]
pub static BENCH: Array<BenchPacket, 1> = Array::new();
