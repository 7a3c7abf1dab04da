//! Map layouts and constants shared by the XDP program and the controller.
//!
//! This crate is the one source of truth for what the kernel and userspace exchange: every map
//! key and value is `#[repr(C)]`, padded explicitly, and stored in network byte order where it
//! mirrors a packet field (addresses, ports), so the XDP program compares without swapping.
//! With the `user` feature, the types implement `aya::Pod` for the controller.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod address;
pub mod guard;
pub mod hash;
pub mod reason;
pub mod table;

pub use address::{Address, V6};

/// Names of the maps and the program in the BPF object, so userspace never spells them twice.
pub mod names {
    pub const PROGRAM: &str = "k3s_xdp";
    /// The new-flow half of `PROGRAM`, which it tail-calls through `NEW_FLOW`.
    pub const NEW_FLOW_PROGRAM: &str = "k3s_xdp_new_flow";
    pub const NEW_FLOW: &str = "NEW_FLOW";
    pub const PASS_PROGRAM: &str = "k3s_xdp_pass";
    pub const FLOOR_PROGRAM: &str = "k3s_xdp_floor";
    pub const BENCH_PROGRAM: &str = "k3s_xdp_bench";
    pub const BENCH_FLOOR_PROGRAM: &str = "k3s_xdp_bench_floor";
    pub const BENCH: &str = "BENCH";
    pub const VIPS: &str = "VIPS";
    pub const VIP_TABLE: &str = "VIP_TABLE";
    pub const GRACE: &str = "GRACE";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_HOPS: &str = "BACKEND_HOPS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FLOWS: &str = "FLOWS";
    pub const NAT_REVERSE: &str = "NAT_REVERSE";
    pub const REASONS: &str = "REASONS";
    pub const TABLE_EVENTS: &str = "TABLE_EVENTS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const GLOBALS: &str = "GLOBALS";
    /// The SYN flood guard: known sources, and the settings (see `guard`).
    pub const KNOWN_SOURCES: &str = "KNOWN_SOURCES";
    pub const SYN_GUARD: &str = "SYN_GUARD";
    pub const SNAT_SOURCES: &str = "SNAT_SOURCES";
    /// Flow sync: the per-CPU log of new and closed flows (`FlowLogSlot`), each CPU's count
    /// of the events it wrote (`FlowLogHead`), and its count of events it could not write.
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const FLOW_EVENTS_HEADS: &str = "FLOW_EVENTS_HEADS";
    pub const FLOW_EVENTS_LOST: &str = "FLOW_EVENTS_LOST";
    /// The IPv6 twins of the maps above: the same layouts over 16-byte addresses, so that the
    /// IPv4 tables keep their size (and their place in the cache).
    pub const NEW_FLOW6_PROGRAM: &str = "k3s_xdp_new_flow6";
    /// The IPv6 path, tail-called by `PROGRAM` through `NEW_FLOW`, and its later steps, each
    /// in the `NEW_FLOW` slot of its place in [`TAIL_CALLS`].
    pub const PROGRAM6: &str = "k3s_xdp6";
    pub const DECIDED6_PROGRAM: &str = "k3s_xdp_decided6";
    pub const ICMP6_PROGRAM: &str = "k3s_xdp_icmp6";
    /// The programs of `NEW_FLOW`, by slot.
    pub const TAIL_CALLS: [&str; 5] = [
        NEW_FLOW_PROGRAM,
        NEW_FLOW6_PROGRAM,
        PROGRAM6,
        DECIDED6_PROGRAM,
        ICMP6_PROGRAM,
    ];
    pub const VIPS6: &str = "VIPS6";
    pub const BACKENDS6: &str = "BACKENDS6";
    pub const BACKEND_HOPS6: &str = "BACKEND_HOPS6";
    pub const FLOWS6: &str = "FLOWS6";
    pub const NAT_REVERSE6: &str = "NAT_REVERSE6";
    pub const NAT_HOPS6: &str = "NAT_HOPS6";
    pub const SNAT_SOURCES6: &str = "SNAT_SOURCES6";
}

/// Services (VIP:port:protocol) the data plane can hold.
pub const MAX_SERVICES: u32 = 256;
/// Ports (services) per VIP; the XDP program scans them linearly after one VIP lookup.
pub const MAX_PORTS_PER_VIP: usize = 8;
/// Distinct VIPs.
pub const MAX_VIPS: u32 = 64;
/// Slots of each half of `VIPS` (a power of two): the perfect hash of the VIPs spreads at most
/// `MAX_VIPS` addresses over these without a collision.
pub const VIP_SLOTS: u32 = 1024;
/// Backend slots, across all services. Slot 0 is never used, so 0 means "no backend".
pub const MAX_BACKENDS: u32 = 4096;
/// Maglev table size when the config does not name one (the paper's M, a prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Largest Maglev table size accepted (a prime; 1 MiB-ish of u32 entries).
pub const MAX_TABLE_SIZE: u32 = 262_139;
/// Backend slots packed in each 64-bit word of a Maglev table: four 16-bit slots, so that a
/// 65537-entry table takes 128 KiB (BPF arrays store each element in at least 8 bytes) and new
/// flows find it in the cache.
pub const MAGLEV_SLOTS_PER_WORD: u32 = 4;

/// Word 0 of a Maglev table holds its number of entries: a packet takes the size from the
/// table it reads, so a table swapped in with a new size is never indexed with the old one.
/// The entries start at word 1.
pub const MAGLEV_HEADER_WORDS: u32 = 1;

/// Words of a Maglev table of `entries` entries (its size word included).
pub const fn maglev_words(entries: u32) -> u32 {
    MAGLEV_HEADER_WORDS + entries.div_ceil(MAGLEV_SLOTS_PER_WORD)
}

/// The word of a Maglev table that holds `entry`.
#[inline(always)]
pub fn maglev_word(entry: u32) -> u32 {
    MAGLEV_HEADER_WORDS + entry / MAGLEV_SLOTS_PER_WORD
}

/// The backend slot at `entry` of a packed Maglev table word.
#[inline(always)]
pub fn maglev_slot(word: u64, entry: u32) -> u32 {
    ((word >> ((entry % MAGLEV_SLOTS_PER_WORD) * 16)) & 0xffff) as u32
}

/// Map flags of every Maglev table: `BPF_F_INNER_MAP | BPF_F_MMAPABLE`.
pub const MAGLEV_INNER_FLAGS: u32 = (1 << 12) | (1 << 10);
/// Default capacity of the flow table; the reverse NAT table holds as many (see `table`).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Extension headers (hop-by-hop, destination options, routing) an IPv6 packet to a VIP may
/// carry before its TCP, UDP or ICMPv6 header; a longer chain is dropped (`DROP_BAD_EXTENSION`).
pub const MAX_EXTENSION_HEADERS: u32 = 4;

/// `VipPort::flags`: forward by rewriting the destination MAC only (backend holds the VIP).
pub const SERVICE_DSR: u16 = 1 << 0;
/// `VipPort::flags`: answer packets of flows pinned to a down backend with a TCP RST.
pub const SERVICE_RESET_ON_DOWN: u16 = 1 << 1;

/// Addresses in a service's SNAT pool (`snat_source`), each with the whole port range.
pub const MAX_SNAT_SOURCES: usize = 16;

/// `VipInfo::flags`: the address is no VIP but a SNAT source (`snat_source`) that serves no
/// port: only backends' replies to translations come to it; the rest is the host's.
pub const VIP_SNAT_ONLY: u32 = 1 << 0;

/// One service on a VIP: the port and protocol it answers, and how.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipPort {
    /// Port, network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
    /// Index into `MAGLEV`, `SERVICE_STATS`.
    pub service: u32,
    pub _reserved: u32,
    /// `SERVICE_*` flags.
    pub flags: u16,
    pub _pad2: u16,
}

/// The services of one VIP (in its `VipSlot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Valid entries in `ports`.
    pub count: u32,
    /// `VIP_*` flags.
    pub flags: u32,
    pub ports: [VipPort; MAX_PORTS_PER_VIP],
}

/// A multiply-shift hash that userspace chose so that the VIPs it publishes land in distinct
/// slots of `VIPS` (a perfect hash): the program finds whether a destination is a VIP
/// with one multiplication and one array read, for every packet, instead of a hash-map lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipHash {
    pub mult: u32,
    /// `32 - log2(slots used)`; 32 puts every address in slot 0.
    pub shift: u32,
}

impl VipHash {
    /// The `VIPS` slot (within a half) of `addr` (network byte order).
    #[inline(always)]
    pub fn slot(&self, addr: u32) -> u32 {
        (u64::from(addr.wrapping_mul(self.mult)) >> (self.shift & 63)) as u32
    }
}

/// Value of `VIPS` (index: `half * VIP_SLOTS + VipHash::slot`) and of `VIPS6` (over
/// `VipHash::slot(addr.vip_fold())`): a VIP and its services, or an empty slot
/// (`info.count == 0` and no flags; every VIP has at least one service, every SNAT-only
/// address the flag `VIP_SNAT_ONLY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot<A: Address = u32> {
    /// The VIP in this slot (network byte order); a packet's destination must equal it.
    pub addr: A,
    pub _pad: u32,
    pub info: VipInfo,
    pub _tail: A::Tail,
}

/// Single-entry `VIP_TABLE`: which half of `VIPS` is live, and each half's hash.
/// Userspace fills the other half, then flips `half` (only its lowest byte ever changes, so no
/// reader can see a torn value), then waits for every running program to finish before it
/// touches the old half again (see `GRACE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipTable {
    /// 0 or 1.
    pub half: u32,
    pub _pad: u32,
    pub hash: [VipHash; 2],
    /// The same for `VIPS6`, flipped with the same `half`.
    pub hash6: [VipHash; 2],
}

/// `Backend::state`: in the Maglev table, gets new flows.
pub const BACKEND_UP: u32 = 1;
/// `Backend::state`: out of the table; its flows continue (`drain`).
pub const BACKEND_DRAIN: u32 = 2;
/// `Backend::state`: failed its checks or `disable`d; its flows are reset or kept per service.
pub const BACKEND_DOWN: u32 = 3;
/// `Backend::state` 0: the slot is free (backend removed); flows pinned to it choose again.
pub const BACKEND_FREE: u32 = 0;

/// Value of `BACKENDS` (key: backend slot), and of `BACKENDS6` for an IPv6 backend: the
/// slots are numbered across both, and a slot is used in the map of its backend's family only
/// (free, state 0, in the other).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend<A: Address = u32> {
    /// Network byte order.
    pub addr: A,
    /// Port, network byte order.
    pub port: u16,
    pub _pad: u16,
    /// `BACKEND_*`.
    pub state: u32,
    /// Service slot this backend belongs to.
    pub service: u32,
    pub _tail: A::Tail,
}

/// Key of `FLOWS` and `NAT_REVERSE` (an IPv4 5-tuple as seen on the wire), and of `FLOWS6`
/// and `NAT_REVERSE6` (`FlowKey<V6>`; a `NatSlot6` keeps all of it but the source, the
/// backend's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey<A = u32> {
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// A next hop resolved by `bpf_fib_lookup`, cached so that established packets skip the lookup:
/// per backend in `BACKEND_HOPS`, per client in `NAT_REVERSE` (IPv6: in `NAT_HOPS6`, beside
/// `NAT_REVERSE6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop<A: Address = u32> {
    /// The address it was resolved for (network byte order); a backend slot reused for another
    /// address does not inherit it.
    pub dst: A,
    /// `Globals::fib_generation` when resolved; the controller bumps the generation when routes
    /// or neighbours change, and the program then resolves again.
    pub generation: u32,
    /// Egress interface; 0 means "not resolved".
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _tail: A::Tail,
}

/// Value of `FLOWS` (key: client → VIP tuple).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend: u32,
    /// nat mode: the source port the backend sees (network byte order); 0 in dsr mode.
    pub snat_port: u16,
    /// nat mode: the source address the backend sees: 0 the VIP, `i + 1` the address
    /// `SNAT_SOURCES[service].addrs[i]` (the service's SNAT pool).
    pub snat_source: u16,
}

/// Value of `SNAT_SOURCES` (key: service slot): the VIP of the service and its SNAT pool
/// (`snat_source`). Read by new flows, and by established ones whose `Flow::snat_source` is
/// not 0; an empty pool (`count` 0) means the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatSources<A: Address = u32> {
    /// The service's VIP (network byte order): a reply to a pool address leaves from it.
    pub vip: A,
    pub count: u32,
    pub _tail: A::Tail,
    /// Network byte order; valid below `count`.
    pub addrs: [A; MAX_SNAT_SOURCES],
}

impl<A: Address> Default for SnatSources<A> {
    fn default() -> Self {
        SnatSources {
            vip: A::default(),
            count: 0,
            _tail: A::Tail::default(),
            addrs: [A::default(); MAX_SNAT_SOURCES],
        }
    }
}

/// Value of `NAT_REVERSE` (key: backend → VIP:snat_port tuple, as the backend's reply carries it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse<A: Address = u32> {
    pub client_addr: A,
    pub client_port: u16,
    /// The service port on the VIP, restored as the reply's source port.
    pub vip_port: u16,
    /// Backend slot (below `MAX_BACKENDS`).
    pub backend: u16,
    /// Service slot (below `MAX_SERVICES`), for the counters.
    pub service: u16,
    /// `NAT_*` bits: how far the TCP connection has closed. A closed translation's SNAT port may
    /// be taken by a new flow.
    pub closing: u32,
    pub _tail: A::Tail,
    /// Toward the client, from the FIB: unresolved (`ifindex` 0) until the first reply
    /// resolves it.
    pub next_hop: NextHop<A>,
}

/// `NatReverse::closing`: the client sent a FIN.
pub const NAT_CLIENT_FIN: u32 = 1 << 0;
/// `NatReverse::closing`: the backend sent a FIN.
pub const NAT_BACKEND_FIN: u32 = 1 << 1;
/// `NatReverse::closing`: either side sent a RST.
pub const NAT_RESET: u32 = 1 << 2;
/// `NatReverse::closing`: the backend's FIN came before the client's. The backend closed
/// first, so it keeps the connection's 4-tuple (VIP:snat_port to backend:port) in TIME_WAIT
/// and would refuse another client's SYN on it (PAWS): see [`waits`].
pub const NAT_BACKEND_FIRST: u32 = 1 << 3;
/// `NatReverse::closing`: the client has sent one packet only (see
/// `table::UNCONFIRMED`); cleared by its second. When every SNAT port a new flow tries is
/// held, an unconfirmed translation is taken over before one that waits or lives.
pub const NAT_UNCONFIRMED: u32 = 1 << 4;

impl<A: Address> NatReverse<A> {
    /// Whether the connection is over (FIN both ways, or a RST): its SNAT port may be reused.
    #[inline(always)]
    pub fn closed(&self) -> bool {
        closed(self.closing)
    }
}

/// Whether a translation with these `closing` bits has closed (see [`NatReverse::closed`]).
#[inline(always)]
pub fn closed(closing: u32) -> bool {
    (closing & NAT_RESET != 0)
        | (closing & (NAT_CLIENT_FIN | NAT_BACKEND_FIN) == NAT_CLIENT_FIN | NAT_BACKEND_FIN)
}

/// The bits a backend's FIN adds to a translation's `closing` bits: the backend closed first
/// unless the client's FIN came before.
#[inline(always)]
pub fn backend_fin(closing: u32) -> u32 {
    if closing & NAT_CLIENT_FIN == 0 {
        NAT_BACKEND_FIN | NAT_BACKEND_FIRST
    } else {
        NAT_BACKEND_FIN
    }
}

/// Whether a closed translation's SNAT port must still wait before another client tuple may
/// have it: the backend closed first (it holds TIME_WAIT) without a RST after (a RST ends
/// TIME_WAIT), and fewer than `timewait` seconds passed since its last packet (`seen`, on the
/// controller's clock `clock`; "seen in the future" counts as seen now).
#[inline(always)]
pub fn waits(closing: u32, seen: u32, clock: u32, timewait: u32) -> bool {
    let age = clock.wrapping_sub(seen);
    let age = if age > u32::MAX / 2 { 0 } else { age };
    closed(closing)
        & (closing & NAT_BACKEND_FIRST != 0)
        & (closing & NAT_RESET == 0)
        & (age < timewait)
}

/// Per-CPU packet counters of a service or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets answered with a RST because their backend was down (or none was healthy).
    pub resets: u64,
}

/// Single-entry `GLOBALS` array: knobs the controller sets for the whole program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// Bumped by the controller when routes or neighbours change; invalidates cached next hops.
    pub fib_generation: u32,
    /// First and last source port used for nat mode (host byte order, inclusive).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// The MAC address of the interface the program is attached to: a VIP packet sent to
    /// another MAC (flooded by a switch, or seen in promiscuous mode) is not ours to forward.
    /// All zero: not checked.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Seconds on the controller's clock (from 1 at start; 0 = no clock): when flows were last
    /// seen, for the replacement in the flow tables (see `table`).
    pub clock: u32,
    /// Buckets of the flow tables minus one (`table::buckets(flow_table_size) - 1`), written by
    /// the loader.
    pub flow_mask: u32,
    /// `snat_timewait` in seconds: how long a translation whose backend closed first keeps
    /// its SNAT port from other client tuples (see [`waits`]).
    pub snat_timewait: u32,
    /// [`FLOW_SYNC_ON`]: new flows and closed translations are reported in `FLOW_EVENTS` for
    /// the peers.
    pub flow_sync: u32,
}

/// `Globals::flow_sync`: report new flows.
pub const FLOW_SYNC_ON: u32 = 1;

/// `FlowEvent::op`: the program made this flow (its first packet).
pub const FLOW_EVENT_NEW: u8 = 1;
/// `FlowEvent::op`: a nat translation closed (both FINs, or a RST): `key` is its reverse
/// tuple (backend → SNAT address:port) and `flow.backend` its backend slot.
pub const FLOW_EVENT_CLOSED: u8 = 2;

/// An event for flow sync: a flow the program made, with its backend slot and translation, or
/// a translation that closed; written into the `FLOW_EVENTS` log for the daemon to send to the
/// peers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent<A: Address = u32> {
    /// Client → VIP, network byte order.
    pub key: FlowKey<A>,
    pub flow: Flow,
    pub op: u8,
    pub family: u8,
    pub _pad: [u8; 6],
}

/// A slot of the `FLOW_EVENTS` log: one cache line holding a [`FlowEvent`] of either family,
/// `family` (4 or 6) saying which; the event's bytes start at `event`.
///
/// The log is per CPU, without a lock: CPU `c` owns slots `c * FLOW_LOG_SLOTS ..
/// (c + 1) * FLOW_LOG_SLOTS`, written in turn, and counts the events it wrote in its entry of
/// `FLOW_EVENTS_HEADS`. XDP runs one program at a time on a CPU, so each CPU's part has one
/// writer, which writes the slot and then its head. The daemon maps both arrays, reads each
/// CPU's new slots and then its head again: a slot the writer may have come round to
/// meanwhile is a lost event (see `dataplane::FlowEvents`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLogSlot {
    pub family: u32,
    pub _pad: u32,
    /// A `FlowEvent<u32>` (its first 32 bytes) or a `FlowEvent<V6>`.
    pub event: [u8; 56],
}

/// A CPU's count of the events it wrote into `FLOW_EVENTS`, alone on its cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowLogHead {
    pub written: u64,
    pub _pad: [u64; 7],
}

/// Slots of `FLOW_EVENTS` per CPU (a power of two): 256 KiB per CPU, about 40 ms of new flows
/// at 100,000 per second on one CPU, where the daemon reads every 2 ms.
pub const FLOW_LOG_SLOTS: u32 = 4096;

/// Bytes of a benchmark packet (`BENCH`).
pub const BENCH_MAX_LEN: usize = 160;

/// `BenchPacket::mode`: the same packet every run.
pub const BENCH_SAME: u32 = 0;
/// `BenchPacket::mode`: add the run counter to the source port (a new tuple every run).
pub const BENCH_NEW_SOURCE_PORT: u32 = 1;
/// `BenchPacket::mode`: the same packet, its flow and translation forgotten before each run
/// (every run takes a new flow's path, with the tables' lines in the cache: Katran's method):
/// the entry point clears the seals of the flow bucket `forget_bucket` and of the reverse-NAT
/// slot `forget_nat`, which the benchmark computed from the flow's first run.
pub const BENCH_FORGET_FLOW: u32 = 2;
/// `BenchPacket::mode`: the same packet (a client's ACK), its flow and translation made
/// unconfirmed again before each run (every run is the packet that confirms a flow, see
/// `table::UNCONFIRMED`): the entry point marks the flows of bucket `forget_bucket` and the
/// translation in slot `forget_nat` unconfirmed.
pub const BENCH_UNCONFIRM_FLOW: u32 = 3;

/// The packet the benchmark entry points restore before each run (BPF_PROG_TEST_RUN with
/// `repeat` would otherwise hand the program its own output), optionally with a fresh TCP/UDP
/// source port each time (a new flow per run) or with its flow forgotten.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchPacket {
    pub len: u32,
    /// `BENCH_*`; the packet is then an untagged IPv4 one without options.
    pub mode: u32,
    pub counter: u32,
    pub forget_bucket: u32,
    pub forget_nat: u32,
    pub _pad: u32,
    pub bytes: [u8; BENCH_MAX_LEN],
}

// The benchmark entry points copy `bytes` in 8-byte words (map values start 8-aligned).
const _: () = assert!(core::mem::offset_of!(BenchPacket, bytes) % 8 == 0);

impl Default for BenchPacket {
    fn default() -> Self {
        BenchPacket {
            len: 0,
            mode: BENCH_SAME,
            counter: 0,
            forget_bucket: 0,
            forget_nat: 0,
            _pad: 0,
            bytes: [0; BENCH_MAX_LEN],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] plain data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for VipPort {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for VipHash {}
    unsafe impl<A: Address> aya::Pod for VipSlot<A> {}
    unsafe impl aya::Pod for VipTable {}
    unsafe impl<A: Address> aya::Pod for Backend<A> {}
    unsafe impl<A: Address> aya::Pod for FlowKey<A> {}
    unsafe impl<A: Address> aya::Pod for NextHop<A> {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl<A: Address> aya::Pod for NatReverse<A> {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for Globals {}
    unsafe impl aya::Pod for crate::guard::SynGuard {}
    unsafe impl<A: Address> aya::Pod for SnatSources<A> {}
    unsafe impl aya::Pod for BenchPacket {}
    unsafe impl aya::Pod for FlowLogSlot {}
    unsafe impl aya::Pod for FlowLogHead {}
    unsafe impl<A: Address> aya::Pod for table::FlowSlot<A> {}
    unsafe impl<A: Address> aya::Pod for table::NatSlot<A> {}
    unsafe impl aya::Pod for table::NatSlot6 {}
    unsafe impl aya::Pod for table::FlowSlot6 {}
    unsafe impl<A: Address> aya::Pod for table::FlowBucket<A> {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// Sizes are part of the kernel/userspace contract; padding must be explicit.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VipPort>(), 16);
        assert_eq!(size_of::<VipInfo>(), 8 + 16 * MAX_PORTS_PER_VIP);
        assert_eq!(size_of::<Backend>(), 16);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<NextHop>(), 24);
        assert_eq!(size_of::<Flow>(), 8);
        assert_eq!(size_of::<NatReverse>(), 40);
        assert_eq!(size_of::<Traffic>(), 32);
        assert_eq!(size_of::<Globals>(), 32);
        assert_eq!(size_of::<FlowEvent>(), 32);
        assert_eq!(size_of::<FlowEvent<V6>>(), 56);
        assert_eq!(size_of::<FlowLogSlot>(), 64);
        assert_eq!(size_of::<FlowLogHead>(), 64);
        assert!(FLOW_LOG_SLOTS.is_power_of_two());
        assert_eq!(size_of::<SnatSources>(), 8 + 4 * MAX_SNAT_SOURCES);
        assert_eq!(size_of::<VipSlot>(), 8 + size_of::<VipInfo>());
        assert_eq!(size_of::<VipTable>(), 40);
        // The IPv6 twins.
        // The IPv6 twins: every byte a field (the `_tail`s), none implicit padding.
        assert_eq!(size_of::<FlowKey<V6>>(), 16 + 16 + 8);
        assert_eq!(size_of::<Backend<V6>>(), 16 + 12 + 4);
        assert_eq!(size_of::<NextHop<V6>>(), 16 + 20 + 4);
        assert_eq!(size_of::<NatReverse<V6>>(), 16 + 12 + 4 + 40);
        assert_eq!(
            size_of::<SnatSources<V6>>(),
            16 + 4 + 4 + 16 * MAX_SNAT_SOURCES
        );
        assert_eq!(size_of::<VipSlot<V6>>(), 16 + 4 + size_of::<VipInfo>() + 4);
    }

    #[test]
    fn a_port_waits_only_after_the_backend_closed_first_and_no_reset() {
        let backend_first = NAT_BACKEND_FIN | NAT_BACKEND_FIRST | NAT_CLIENT_FIN;
        assert_eq!(backend_fin(0), NAT_BACKEND_FIN | NAT_BACKEND_FIRST);
        assert_eq!(
            backend_fin(NAT_CLIENT_FIN),
            NAT_BACKEND_FIN,
            "the client closed first"
        );
        assert_eq!(backend_fin(0) | NAT_CLIENT_FIN, backend_first);
        // 65 s of TIME_WAIT, last packet at clock 100.
        assert!(waits(backend_first, 100, 100, 65));
        assert!(waits(backend_first, 100, 164, 65));
        assert!(!waits(backend_first, 100, 165, 65), "the wait is over");
        assert!(
            !waits(NAT_BACKEND_FIN | NAT_CLIENT_FIN, 100, 100, 65),
            "client first: the client holds TIME_WAIT"
        );
        assert!(
            !waits(backend_first | NAT_RESET, 100, 100, 65),
            "a RST ends it"
        );
        assert!(
            !waits(NAT_BACKEND_FIN | NAT_BACKEND_FIRST, 100, 100, 65),
            "not closed yet: live, not waiting"
        );
        assert!(
            waits(backend_first, 200, 100, 65),
            "seen in the future: now"
        );
        assert!(!waits(backend_first, 100, 100, 0), "no wait configured");
    }

    #[test]
    fn vip_slots_stay_within_the_bits_of_the_shift() {
        for bits in 0..=10u32 {
            let hash = VipHash {
                mult: 0x9e37_79b1,
                shift: 32 - bits,
            };
            for addr in [0u32, 1, 0xffff_ffff, 0xc000_0264, 0x6400_02c0] {
                assert!(hash.slot(addr) < 1 << bits, "bits {bits} addr {addr:#x}");
            }
        }
        assert_eq!(VipHash::default().slot(0xc000_0264), 0);
        assert!(VIP_SLOTS.is_power_of_two());
    }
}
