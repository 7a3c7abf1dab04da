//! A new flow's per-CPU state, shared by the program's two halves (`new_flow.rs`) and the SNAT
//! port search (`choose.rs`, `table.rs`): the question the first half asks, the answer the
//! second half leaves, and the search's own scratch. Its own module, below the ones that use it,
//! so that the map holding it (`maps::SNAT_SEARCH`) does not import the code that fills it.

use crate::parse::Offsets;
use k3s_xdp_common::{
    guard::GuardWindow, Backend, FlowKey, NatReverse, VipPort, MAX_PORTS_PER_VIP, MAX_SNAT_SOURCES,
};

// One `Probe` per family: `SNAT_SEARCH` (IPv4) and `SNAT_SEARCH6` (`A` = `V6`).

/// A new flow's question and answer between the program's two halves, and the state of its
/// SNAT port search (shared with `snat_try`); one per CPU, in `SNAT_SEARCH` (see
/// `new_flow.rs`).
#[repr(C)]
pub struct Probe<A: k3s_xdp_common::Address = u32> {
    // The question, written by the first half.
    pub key: FlowKey<A>,
    /// Where the packet's headers are.
    pub headers: Offsets,
    pub flow_hash: u32,
    pub service: VipPort,
    /// The reverse translation to record: the client side (its hop is resolved by the first
    /// reply).
    pub entry: NatReverse<A>,
    /// SNAT ports: the first one, and how many.
    pub min: u32,
    pub span: u32,
    /// The service's SNAT pool (`pool_count` 0: the VIP), read by the second half.
    pub(crate) pool: [A; MAX_SNAT_SOURCES],
    pub(crate) pool_count: u32,
    /// (address, port) pairs the tries draw from: `span` times the pool's size.
    pub(crate) tries_span: u32,
    pub service_ports: [u16; MAX_PORTS_PER_VIP],
    pub service_count: u32,
    pub clock: u32,
    pub mask: u32,
    /// `snat_timewait`, seconds.
    pub timewait: u32,
    /// `Globals::flow_sync`: report the flow once recorded.
    pub sync: u32,
    /// 1 when the packet is a TCP SYN (without ACK): the SYN flood guard's business.
    pub syn: u32,
    /// The SYN flood guard's count of this second, kept from packet to packet (see `guard.rs`).
    pub guard: GuardWindow,
    // The answer, written by the second half.
    /// `new_flow::CHOSEN` (recorded by `new_flow::record`) or a drop reason.
    pub outcome: u32,
    /// The backend chosen, or the one that refused (0: none).
    pub id: u32,
    /// 1 when the packet starts its flow (counted as a new flow).
    pub first: u32,
    pub backend: Backend<A>,
    pub snat_port: u16,
    /// The `Flow::snat_source` of `snat_addr`.
    pub snat_source: u16,
    /// The source address the backend sees (nat mode).
    pub snat_addr: A,
    // The SNAT search's own.
    pub(crate) backend_addr: A,
    pub(crate) backend_port: u16,
    pub(crate) found: u32,
    /// The `Flow::snat_source` of the port found, and its address.
    pub(crate) found_source: u32,
    pub(crate) found_addr: A,
    /// The flow's SNAT hash, which the tries probe from.
    pub(crate) hash: u32,
    pub(crate) taken: TakenOver<A>,
    /// The try that may take over a live translation (`NO_TRY` on the first pass).
    pub(crate) force: u32,
    /// The first pass's try whose live translation was seen longest ago, and its age.
    pub(crate) oldest: u32,
    pub(crate) oldest_age: u32,
    /// The same among translations waiting for their backend's TIME_WAIT.
    pub(crate) oldest_waiting: u32,
    pub(crate) oldest_waiting_age: u32,
    /// The same among unconfirmed translations (`NAT_UNCONFIRMED`), taken over first.
    pub(crate) oldest_unconfirmed: u32,
    pub(crate) oldest_unconfirmed_age: u32,
}

/// A translation taken over by `table::claim_nat`: the flow entry of `key` through `backend` with
/// `snat_port` is to be cleared (`table::clear_flow_through`) once the claim is done. `key.dst` is
/// the address the backend answered to (the VIP, or an address of `service`'s SNAT pool).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct TakenOver<A = u32> {
    pub key: FlowKey<A>,
    pub backend: u32,
    pub service: u32,
    pub snat_port: u16,
    /// 1 when a whole translation of another client was taken over.
    pub set: u16,
    /// Set by a claim refused because the slot holds a live translation of another client,
    /// or one whose backend may still hold TIME_WAIT (`refused_waiting`), with when that
    /// translation was last seen.
    pub refused_live: u32,
    pub refused_waiting: u32,
    /// The refusing translation is unconfirmed (`NAT_UNCONFIRMED`).
    pub refused_unconfirmed: u32,
    pub refused_seen: u32,
}
