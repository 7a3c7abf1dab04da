//! Finding, filling and clearing slots of the flow table and the reverse NAT table. The layout,
//! the replacement rule and why a torn slot is never taken for a whole one are in
//! `k3s_xdp_common::table`. Every read copies the slot first and checks the copy, so what
//! the program acts on is what it checked. The code keeps branches few (one per way where it
//! can): the verifier walks every path through every way.

use crate::{family::Family, state::TakenOver};
use core::ptr::addr_of;
use k3s_xdp_common::{
    hash::flow_hash,
    reason,
    table::{
        bucket_index, flow_seal, idle, keep_rank, nat_index, nat_seal, same_key, FlowBucket,
        FlowSlot, FlowSlot6, NatSlot, NatSlot6, UNCONFIRMED, WAYS,
    },
    Address, Flow, FlowKey, NatReverse, NextHop, NAT_UNCONFIRMED, V6,
};

/// Reads one field of a map value, once.
macro_rules! field {
    ($e:expr) => {
        // SAFETY: a field of a map value valid for this run.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($e)) }
    };
}

/// Where a key lives: its flow hash and the tables' bucket mask.
#[derive(Clone, Copy)]
pub struct Place {
    pub hash: u32,
    pub mask: u32,
}

impl Place {
    #[inline(always)]
    pub fn of<F: Family>(key: &FlowKey<F>, mask: u32) -> Self {
        Place {
            hash: flow_hash(key),
            mask,
        }
    }

    #[inline(always)]
    fn index(&self) -> u32 {
        bucket_index(self.hash, self.mask)
    }
}

/// A slot of a bucket: the bucket and the way.
#[inline(always)]
fn flow_slot<F: Family>(bucket: *mut FlowBucket<F>, way: u32) -> *mut F::FlowSlot {
    // SAFETY: `way < WAYS` (callers pass loop indexes or checked values); in bounds of the
    // bucket, a map value valid for this run.
    unsafe {
        (*bucket)
            .slots
            .as_mut_ptr()
            .add((way & (WAYS - 1)) as usize)
    }
}

/// Whether the key at `slot` is `key`, each field of it read once, in place.
#[inline(always)]
pub fn key_at<F: Family>(slot: *const FlowKey<F>, key: &FlowKey<F>) -> bool {
    let ports = (u32::from(field!((*slot).sport)) << 16) | u32::from(field!((*slot).dport));
    // SAFETY: fields of a map value valid for this run.
    let (src, dst) = unsafe { (addr_of!((*slot).src), addr_of!((*slot).dst)) };
    (F::diff_at(src, &key.src)
        | F::diff_at(dst, &key.dst)
        | (ports ^ ((u32::from(key.sport) << 16) | u32::from(key.dport)))
        | u32::from(field!((*slot).protocol) ^ key.protocol))
        == 0
}

/// How the program reads and writes a family's flow slot in place (the layouts:
/// `k3s_xdp_common::table::{FlowSlot, FlowSlot6}`). A key is looked for with its service's
/// slot, which IPv6's slot keeps in place of the VIP, port and protocol. Every field is read
/// once, so what is checked is what is used.
pub trait FlowPlace<F: Family>: Sized {
    /// The flow in `slot` if it holds `key` of `service` (flow hash `hash`) whole. A way that
    /// holds another flow (or none) costs the reads that tell it apart, not the whole key's.
    fn flow_at(slot: *const Self, key: &FlowKey<F>, service: u32, hash: u32) -> Option<Flow>;
    /// [`Self::flow_at`], and records that a packet of it went through at `clock` (see
    /// [`find_flow`]); the flow and whether it was unconfirmed.
    #[inline(always)]
    fn find(
        slot: *mut Self,
        key: &FlowKey<F>,
        service: u32,
        hash: u32,
        (clock, keep): (u32, u32),
    ) -> Option<(Flow, bool)> {
        let flow = Self::flow_at(slot, key, service, hash)?;
        // SAFETY: a field of a map value valid for this run.
        let seen_at = Self::seen_at(slot);
        let seen = unsafe { core::ptr::read_volatile(seen_at) };
        let now = clock | (seen & keep);
        if seen != now {
            // SAFETY: as above; `seen` is outside the seal.
            unsafe { *seen_at = now };
        }
        Some((flow, seen & UNCONFIRMED != 0))
    }
    /// [`Self::find`] over the ways of `bucket`: [`find_flow`].
    #[inline(always)]
    fn find_in(
        bucket: *mut FlowBucket<F>,
        key: &FlowKey<F>,
        service: u32,
        hash: u32,
        clock_keep: (u32, u32),
    ) -> Option<(Flow, bool)> {
        // Not an `Option` carried through the ways: its payload is undefined on the paths
        // that found nothing yet, and IPv6's code spills the register holding it, which the
        // verifier refuses to read.
        let mut found = (Flow::default(), false);
        let mut hit = false;
        for way in 0..WAYS {
            if let Some(f) =
                F::FlowSlot::find(flow_slot(bucket, way), key, service, hash, clock_keep)
            {
                found = f;
                hit = true;
            }
        }
        hit.then_some(found)
    }
    /// Whether the slot's key is `key` of `service`, whatever its seal.
    fn same_at(slot: *const Self, key: &FlowKey<F>, service: u32) -> bool;
    /// Whether the slot holds `key` of `service` sealed `seal`.
    #[inline(always)]
    fn sealed_as(slot: *mut Self, key: &FlowKey<F>, service: u32, seal: u32) -> bool {
        // SAFETY: a field of a map value valid for this run, read once.
        (unsafe { core::ptr::read_volatile(Self::seal_at(slot)) } == seal)
            & Self::same_at(slot, key, service)
    }
    /// Writes `flow` for `key` of `service`, seen at `seen`, sealed `seal`: the seal last.
    fn write(slot: *mut Self, key: &FlowKey<F>, service: u32, flow: &Flow, seen: u32, seal: u32);
    /// `seen`, outside the seal.
    fn seen_at(slot: *mut Self) -> *mut u32;
    /// The seal's word; 0 clears the slot (no reader takes it any more).
    fn seal_at(slot: *mut Self) -> *mut u32;
}

/// `FlowPlace::seen_at` and `seal_at` of a layout whose fields are named `seen` and `seal`.
macro_rules! seen_and_seal {
    () => {
        #[inline(always)]
        fn seen_at(slot: *mut Self) -> *mut u32 {
            // SAFETY: a field of a map value valid for this run.
            unsafe { core::ptr::addr_of_mut!((*slot).seen) }
        }

        #[inline(always)]
        fn seal_at(slot: *mut Self) -> *mut u32 {
            // SAFETY: a field of a map value valid for this run.
            unsafe { core::ptr::addr_of_mut!((*slot).seal) }
        }
    };
}

impl FlowPlace<u32> for FlowSlot<u32> {
    /// The slot's ports first (what tells most other flows apart: two reads), then the rest
    /// of its key, then its seal, for the way whose key matches (at most one).
    #[inline(always)]
    fn flow_at(slot: *const Self, key: &FlowKey<u32>, _service: u32, hash: u32) -> Option<Flow> {
        if !((field!((*slot).key.sport) == key.sport) & (field!((*slot).key.dport) == key.dport)) {
            return None;
        }
        let flow = field!((*slot).flow);
        let seal = field!((*slot).seal);
        // SAFETY: a map value valid for this run.
        let same = key_at(unsafe { addr_of!((*slot).key) }, key);
        if same && seal == flow_seal(hash, &flow) {
            Some(flow)
        } else {
            None
        }
    }

    /// The whole slot in registers, checked, as the IPv4 path always read it.
    #[inline(always)]
    fn find(
        slot: *mut Self,
        key: &FlowKey<u32>,
        _service: u32,
        hash: u32,
        (clock, keep): (u32, u32),
    ) -> Option<(Flow, bool)> {
        // SAFETY: a map value valid for this run, read once.
        let copy = unsafe { core::ptr::read_volatile(slot) };
        if !copy.holds(key, hash) {
            return None;
        }
        let now = clock | (copy.seen & keep);
        if copy.seen != now {
            // SAFETY: a map value valid for this run; `seen` is outside the seal.
            unsafe { (*slot).seen = now };
        }
        Some((copy.flow, copy.seen & UNCONFIRMED != 0))
    }

    /// The loop IPv4's path always had: an `Option` carried through the ways, which keeps
    /// each way's seal behind its key's check (the flag [`FlowPlace::find_in`] carries
    /// instead let the compiler compute every way's seal).
    #[inline(always)]
    fn find_in(
        bucket: *mut FlowBucket<u32>,
        key: &FlowKey<u32>,
        service: u32,
        hash: u32,
        clock_keep: (u32, u32),
    ) -> Option<(Flow, bool)> {
        let mut found = None;
        for way in 0..WAYS {
            if let Some(f) = Self::find(flow_slot(bucket, way), key, service, hash, clock_keep) {
                found = Some(f);
            }
        }
        found
    }

    #[inline(always)]
    fn same_at(slot: *const Self, key: &FlowKey<u32>, _service: u32) -> bool {
        ((field!((*slot).key.sport) == key.sport) & (field!((*slot).key.dport) == key.dport))
            // SAFETY: a map value valid for this run.
            && key_at(unsafe { addr_of!((*slot).key) }, key)
    }

    #[inline(always)]
    fn sealed_as(slot: *mut Self, key: &FlowKey<u32>, _service: u32, seal: u32) -> bool {
        (field!((*slot).seal) == seal) & same_key(&field!((*slot).key), key)
    }

    #[inline(always)]
    fn write(
        slot: *mut Self,
        key: &FlowKey<u32>,
        _service: u32,
        flow: &Flow,
        seen: u32,
        seal: u32,
    ) {
        // SAFETY: a map value valid for this run.
        unsafe {
            (*slot).seal = 0;
            (*slot).key = *key;
            (*slot).flow = *flow;
            (*slot).seen = seen;
            (*slot).seal = seal;
        }
    }

    seen_and_seal!();
}

impl FlowPlace<V6> for FlowSlot6 {
    /// The client's port and the service first (two reads tell most other flows apart), then
    /// the client's address, then the seal, for the way whose client matches (at most one).
    #[inline(always)]
    fn flow_at(slot: *const Self, key: &FlowKey<V6>, service: u32, hash: u32) -> Option<Flow> {
        if !((field!((*slot).client_port) == key.sport)
            & (u32::from(field!((*slot).service)) == service))
        {
            return None;
        }
        let flow = Flow {
            backend: u32::from(field!((*slot).backend)),
            snat_port: field!((*slot).snat_port),
            snat_source: u16::from(field!((*slot).snat_source)),
        };
        let seal = field!((*slot).seal);
        // SAFETY: a field of a map value valid for this run.
        let same = V6::diff_at(unsafe { addr_of!((*slot).client_addr) }, &key.src) == 0;
        if same && seal == flow_seal(hash, &flow) {
            Some(flow)
        } else {
            None
        }
    }

    #[inline(always)]
    fn same_at(slot: *const Self, key: &FlowKey<V6>, service: u32) -> bool {
        ((field!((*slot).client_port) == key.sport)
            & (u32::from(field!((*slot).service)) == service))
            // SAFETY: a field of a map value valid for this run.
            && V6::diff_at(unsafe { addr_of!((*slot).client_addr) }, &key.src) == 0
    }

    #[inline(always)]
    fn write(slot: *mut Self, key: &FlowKey<V6>, service: u32, flow: &Flow, seen: u32, seal: u32) {
        // Narrowed as `FlowSlot6::new` does: a value that does not fit reads back as another,
        // which the seal (of the values given) refuses.
        // SAFETY: a map value valid for this run.
        unsafe {
            (*slot).seal = 0;
            (*slot).client_addr = key.src;
            (*slot).client_port = key.sport;
            (*slot).service = service as u8;
            (*slot).snat_source = flow.snat_source as u8;
            (*slot).backend = flow.backend as u16;
            (*slot).snat_port = flow.snat_port;
            (*slot).seen = seen;
            (*slot).seal = seal;
        }
    }

    seen_and_seal!();
}

/// The flow entry of `key` (of service slot `service`), checked, and whether it was
/// unconfirmed (`UNCONFIRMED`: this is its client's second packet, or a SYN again); records
/// that a packet of it went through at `clock` (written only when the second changed, so
/// established packets keep the cache line shared between CPUs), which confirms it unless
/// `keep` is `UNCONFIRMED` (a SYN, or ICMP about the flow). Returns no pointer into the
/// bucket: which way held the key must not outlive the loop, or the verifier would walk the
/// rest of the program once per way.
#[inline(always)]
pub fn find_flow<F: Family>(
    key: &FlowKey<F>,
    service: u32,
    at: Place,
    clock: u32,
    keep: u32,
) -> Option<(Flow, bool)> {
    F::FlowSlot::find_in(
        F::flow_bucket(at.index())?,
        key,
        service,
        at.hash,
        (clock, keep),
    )
}

/// Clears the flow entry of `key` (of `service`; its seal, so no reader takes it any more) if
/// it still goes through `backend` with `snat_port` of `snat_source`. Reads fields one by one
/// (registers, not stack copies): it runs after the SNAT claim, on a small stack.
#[inline(always)]
pub fn clear_flow_through<F: Family>(
    key: &FlowKey<F>,
    service: u32,
    at: Place,
    backend: u32,
    snat_port: u16,
    snat_source: u16,
) {
    let Some(bucket) = F::flow_bucket(at.index()) else {
        return;
    };
    let seal = flow_seal(
        at.hash,
        &Flow {
            backend,
            snat_port,
            snat_source,
        },
    );
    for way in 0..WAYS {
        let slot = flow_slot(bucket, way);
        if F::FlowSlot::sealed_as(slot, key, service, seal) {
            // SAFETY: a map value valid for this run.
            unsafe { *F::FlowSlot::seal_at(slot) = 0 };
        }
    }
}

/// Clears the flow entry of `key` (of `service`), whatever it holds.
#[inline(always)]
pub fn clear_flow<F: Family>(key: &FlowKey<F>, service: u32, at: Place) {
    let Some(bucket) = F::flow_bucket(at.index()) else {
        return;
    };
    for way in 0..WAYS {
        let slot = flow_slot(bucket, way);
        if F::FlowSlot::flow_at(slot, key, service, at.hash).is_some() {
            // SAFETY: a map value valid for this run.
            unsafe { *F::FlowSlot::seal_at(slot) = 0 };
        }
    }
}

/// Stores `flow` for `key` of `service`, seen at `seen` (the clock, with `UNCONFIRMED` for a
/// new flow): in the slot that holds it, a free one, or the one `keep_rank` values least in
/// its bucket (unconfirmed or idle flows first, then the least recently seen). False only if
/// the table cannot be reached (no bucket at the mask's index).
#[inline(always)]
pub fn store_flow<F: Family>(
    key: &FlowKey<F>,
    service: u32,
    at: Place,
    flow: Flow,
    seen: u32,
) -> bool {
    let Some(bucket) = F::flow_bucket(at.index()) else {
        return false;
    };
    let clock = seen & !UNCONFIRMED;
    let mut victim = 0;
    let mut lowest = u32::MAX;
    let mut victim_seen = 0;
    for way in 0..WAYS {
        let slot = flow_slot(bucket, way);
        // The slot with the key ranks below everything (whole or torn, it is this key's to
        // rewrite: no seal to check); a free one below any taken one.
        // SAFETY: fields of a map value valid for this run, read once.
        let was = unsafe { core::ptr::read_volatile(F::FlowSlot::seen_at(slot)) };
        let rank = if F::FlowSlot::same_at(slot, key, service) {
            0
        } else {
            // SAFETY: as above.
            let sealed = unsafe { core::ptr::read_volatile(F::FlowSlot::seal_at(slot)) } != 0;
            keep_rank(sealed, was, clock).max(1)
        };
        if rank < lowest {
            victim = way;
            lowest = rank;
            victim_seen = was;
        }
    }
    // The victim held another flow: unconfirmed (a flood churns through its own entries), or
    // confirmed and not idle (the table is too small for its flows).
    if lowest > 1 {
        if victim_seen & UNCONFIRMED != 0 {
            crate::counters::table_event(reason::table::FLOW_UNCONFIRMED_REPLACED);
        } else if !idle(victim_seen, clock) {
            crate::counters::table_event(reason::table::FLOW_EVICTED);
        }
    }
    let seal = flow_seal(at.hash, &flow);
    // Written in place (the seal last, though a reader checks it whatever the order), from a
    // loop over constant ways so the chosen way is dead afterwards (see `find_flow`).
    for way in 0..WAYS {
        if way == victim {
            F::FlowSlot::write(flow_slot(bucket, way), key, service, &flow, seen, seal);
        }
    }
    true
}

/// The reverse NAT slot of `key`, whose flow hash is `hash`. The reverse table is
/// direct-mapped: one slot per key, at `hash & nat_mask(mask)`; where two translations want
/// the same slot, the second one's SNAT port search moves on to its next port, which is a slot
/// elsewhere (the port search is the associativity).
#[inline(always)]
fn nat_slot<F: Family>(hash: u32, mask: u32) -> Option<*mut F::Nat> {
    F::nat_slot(nat_index(hash, mask))
}

/// What a reader of a translation uses, each field read once from its slot and checked
/// against the seal; and where the slot is. The next hop is outside the seal: read it when
/// needed ([`NatPlace::hop`]).
#[derive(Clone, Copy)]
pub struct NatView<F> {
    /// The slot's index (IPv6 keeps the hop at the same index of `NAT_HOPS6`).
    pub at: u32,
    pub client_addr: F,
    pub client_port: u16,
    pub vip_port: u16,
    pub backend: u16,
    pub service: u16,
    pub closing: u32,
    pub seen: u32,
}

/// What the SNAT claim reads of a slot that holds a translation.
#[derive(Clone, Copy)]
pub struct Held<F> {
    /// The slot holds the reverse tuple claimed (IPv6: through the same backend slot), whole.
    pub holds: bool,
    /// Its tuple (IPv6: without the source, the backend's address).
    pub key: FlowKey<F>,
    /// Its tuple's flow hash, kept by IPv6 slots (IPv4 computes it from `key` when needed:
    /// [`NatPlace::hash_of`]).
    pub hash: u32,
    pub client_addr: F,
    pub client_port: u16,
    pub vip_port: u16,
    /// `backend << 16 | service`.
    pub ids: u32,
    pub closing: u32,
    pub seen: u32,
}

/// How the program reads and writes a family's reverse-NAT slot in place (the layouts:
/// `k3s_xdp_common::table::{NatSlot, NatSlot6}`). Every field is read once, so what is checked
/// is what is used.
pub trait NatPlace<F: Family>: Sized {
    /// Whether the slot holds the hop toward the client (IPv4), written with the rest of a new
    /// translation; IPv6 keeps it apart, in `NAT_HOPS6`.
    const HOP_IN_SLOT: bool;

    /// The translation of `key` (flow hash `hash`) in `slot`, checked: its tuple and seal, and
    /// for IPv6 the backend's address in `BACKENDS6`.
    fn find(slot: *mut Self, at: u32, key: &FlowKey<F>, hash: u32) -> Option<NatView<F>>;
    /// The seal's word in the slot.
    fn seal_at(slot: *mut Self) -> *mut u32;
    #[inline(always)]
    fn seal(slot: *mut Self) -> u32 {
        // SAFETY: a field of a map value valid for this run, read once.
        unsafe { core::ptr::read_volatile(Self::seal_at(slot)) }
    }
    /// What the claim of `reverse` (flow hash `hash`) through `backend` sees in a slot sealed
    /// `seal` (not 0).
    fn held(slot: *const Self, reverse: &FlowKey<F>, backend: u16, hash: u32, seal: u32)
        -> Held<F>;
    /// The flow hash of a held translation's tuple.
    fn hash_of(held: &Held<F>) -> u32;
    /// Writes the translation `entry` of `reverse` (flow hash `hash`), seen at `seen`, sealed
    /// `seal`: the seal last.
    fn write(
        slot: *mut Self,
        reverse: &FlowKey<F>,
        hash: u32,
        entry: &NatReverse<F>,
        seen: u32,
        seal: u32,
    );
    /// Whether the slot reads back as `write` left it for the client `key`.
    fn wrote(slot: *const Self, reverse: &FlowKey<F>, key: &FlowKey<F>, seal: u32) -> bool;
    /// `seen`, outside the seal.
    fn seen(slot: *mut Self) -> *mut u32;
    /// The `NAT_*` closing bits, outside the seal.
    fn closing(slot: *const Self) -> u32;
    fn set_closing(slot: *mut Self, closing: u32);
    /// The next hop toward the client cached for the translation in `slot`, at index `at`
    /// (`ifindex` 0: none), outside the seal: used only for the address it names.
    fn hop(slot: *const Self, at: u32) -> NextHop<F>;
    fn set_hop(slot: *mut Self, at: u32, hop: &NextHop<F>);
    /// Clears the seal: no reader takes the slot any more (the benchmarks forget a flow).
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    #[inline(always)]
    fn clear(slot: *mut Self) {
        // SAFETY: a field of a map value valid for this run.
        unsafe { *Self::seal_at(slot) = 0 };
    }
    /// Writes the slot's reverse tuple into `out` (IPv6: all but its source) and returns its
    /// backend slot.
    fn reverse_into(slot: *const Self, out: *mut FlowKey<F>) -> u16;
}

impl NatPlace<u32> for NatSlot<u32> {
    const HOP_IN_SLOT: bool = true;

    #[inline(always)]
    fn find(slot: *mut Self, at: u32, key: &FlowKey<u32>, hash: u32) -> Option<NatView<u32>> {
        // The whole slot copied and checked, as the IPv4 path always read it.
        // SAFETY: a map value valid for this run, read once.
        let copy = unsafe { core::ptr::read_volatile(slot) };
        if !copy.holds(key, hash) {
            return None;
        }
        let nat = copy.nat;
        Some(NatView {
            at,
            client_addr: nat.client_addr,
            client_port: nat.client_port,
            vip_port: nat.vip_port,
            backend: nat.backend,
            service: nat.service,
            closing: nat.closing,
            seen: copy.seen,
        })
    }

    #[inline(always)]
    fn seal_at(slot: *mut Self) -> *mut u32 {
        // SAFETY: a field of a map value valid for this run.
        unsafe { core::ptr::addr_of_mut!((*slot).seal) }
    }

    #[inline(always)]
    fn held(
        slot: *const Self,
        reverse: &FlowKey<u32>,
        _backend: u16,
        hash: u32,
        seal: u32,
    ) -> Held<u32> {
        let key = field!((*slot).key);
        let client_addr = field!((*slot).nat.client_addr);
        let client_port = field!((*slot).nat.client_port);
        let vip_port = field!((*slot).nat.vip_port);
        let ids =
            (u32::from(field!((*slot).nat.backend)) << 16) | u32::from(field!((*slot).nat.service));
        let ports = (u32::from(client_port) << 16) | u32::from(vip_port);
        Held {
            holds: same_key(&key, reverse)
                & (seal == k3s_xdp_common::table::seal(hash, client_addr, ports, ids)),
            key,
            hash: 0,
            client_addr,
            client_port,
            vip_port,
            ids,
            closing: field!((*slot).nat.closing),
            seen: field!((*slot).seen),
        }
    }

    #[inline(always)]
    fn hash_of(held: &Held<u32>) -> u32 {
        flow_hash(&held.key)
    }

    #[inline(always)]
    fn write(
        slot: *mut Self,
        reverse: &FlowKey<u32>,
        _hash: u32,
        entry: &NatReverse<u32>,
        seen: u32,
        seal: u32,
    ) {
        // SAFETY: a map value valid for this run.
        unsafe {
            (*slot).seal = 0;
            (*slot).key = *reverse;
            (*slot).nat = *entry;
            (*slot).seen = seen;
            (*slot).seal = seal;
        }
    }

    #[inline(always)]
    fn wrote(slot: *const Self, reverse: &FlowKey<u32>, key: &FlowKey<u32>, seal: u32) -> bool {
        same_key(&field!((*slot).key), reverse)
            & (field!((*slot).nat.client_addr) == key.src)
            & (field!((*slot).nat.client_port) == key.sport)
            & (field!((*slot).seal) == seal)
    }

    #[inline(always)]
    fn seen(slot: *mut Self) -> *mut u32 {
        // SAFETY: a field of a map value valid for this run.
        unsafe { core::ptr::addr_of_mut!((*slot).seen) }
    }

    #[inline(always)]
    fn closing(slot: *const Self) -> u32 {
        // SAFETY: a map value valid for this run.
        unsafe { (*slot).nat.closing }
    }

    #[inline(always)]
    fn set_closing(slot: *mut Self, closing: u32) {
        // SAFETY: a map value valid for this run.
        unsafe { (*slot).nat.closing = closing };
    }

    #[inline(always)]
    fn hop(slot: *const Self, _at: u32) -> NextHop<u32> {
        field!((*slot).nat.next_hop)
    }

    #[inline(always)]
    fn set_hop(slot: *mut Self, _at: u32, hop: &NextHop<u32>) {
        // SAFETY: a map value valid for this run.
        unsafe { (*slot).nat.next_hop = *hop };
    }

    #[inline(always)]
    fn reverse_into(slot: *const Self, out: *mut FlowKey<u32>) -> u16 {
        // SAFETY: a map value valid for this run; the caller's record.
        unsafe {
            (*out).src = (*slot).key.src;
            (*out).dst = (*slot).key.dst;
            (*out).sport = (*slot).key.sport;
            (*out).dport = (*slot).key.dport;
            (*out).protocol = (*slot).key.protocol;
            (*slot).nat.backend
        }
    }
}

impl NatPlace<V6> for NatSlot6 {
    const HOP_IN_SLOT: bool = false;

    /// Read in place, field by field (a copy would go through the stack); the backend's
    /// address, which the slot does not keep, from `BACKENDS6`, for the one slot whose tuple
    /// matched.
    #[inline(always)]
    fn find(slot: *mut Self, at: u32, key: &FlowKey<V6>, hash: u32) -> Option<NatView<V6>> {
        let view = NatView {
            at,
            // SAFETY: a field of a map value valid for this run.
            client_addr: V6::load(unsafe { addr_of!((*slot).client_addr) }),
            client_port: field!((*slot).client_port),
            vip_port: field!((*slot).vip_port),
            backend: field!((*slot).backend),
            service: field!((*slot).service),
            closing: u32::from(field!((*slot).closing)),
            seen: field!((*slot).seen),
        };
        let seal = field!((*slot).seal);
        let ports = (u32::from(view.client_port) << 16) | u32::from(view.vip_port);
        let ids = (u32::from(view.backend) << 16) | u32::from(view.service);
        let tuple =
            (u32::from(field!((*slot).backend_port)) << 16) | u32::from(field!((*slot).snat_port));
        // SAFETY: a field of a map value valid for this run.
        let same = (V6::diff_at(unsafe { addr_of!((*slot).snat_addr) }, &key.dst)
            | (tuple ^ ((u32::from(key.sport) << 16) | u32::from(key.dport)))
            | u32::from(field!((*slot).protocol) ^ key.protocol)
            | (field!((*slot).hash) ^ hash))
            == 0;
        let whole =
            seal == k3s_xdp_common::table::seal(hash, view.client_addr.seal_word(), ports, ids);
        if !(same & whole) {
            return None;
        }
        let backend = crate::maps::BACKENDS6.get_ptr(u32::from(view.backend))?;
        // SAFETY: a map value valid for this run.
        if V6::diff_at(unsafe { addr_of!((*backend).addr) }, &key.src) != 0 {
            return None;
        }
        Some(view)
    }

    #[inline(always)]
    fn seal_at(slot: *mut Self) -> *mut u32 {
        // SAFETY: a field of a map value valid for this run.
        unsafe { core::ptr::addr_of_mut!((*slot).seal) }
    }

    #[inline(always)]
    fn held(
        slot: *const Self,
        reverse: &FlowKey<V6>,
        backend: u16,
        hash: u32,
        seal: u32,
    ) -> Held<V6> {
        // SAFETY: fields of a map value valid for this run.
        let (dst, client_addr) = unsafe {
            (
                V6::load(addr_of!((*slot).snat_addr)),
                V6::load(addr_of!((*slot).client_addr)),
            )
        };
        let key = FlowKey {
            src: [0; 2],
            dst,
            sport: field!((*slot).backend_port),
            dport: field!((*slot).snat_port),
            protocol: field!((*slot).protocol),
            _pad: [0; 3],
        };
        let old_hash = field!((*slot).hash);
        let client_port = field!((*slot).client_port);
        let vip_port = field!((*slot).vip_port);
        let old_backend = field!((*slot).backend);
        let ids = (u32::from(old_backend) << 16) | u32::from(field!((*slot).service));
        let ports = (u32::from(client_port) << 16) | u32::from(vip_port);
        let tuple = (dst.diff(&reverse.dst)
            | ((u32::from(key.sport) << 16 | u32::from(key.dport))
                ^ (u32::from(reverse.sport) << 16 | u32::from(reverse.dport)))
            | u32::from(key.protocol ^ reverse.protocol)
            | (old_hash ^ hash)
            | u32::from(old_backend ^ backend))
            == 0;
        Held {
            holds: tuple
                & (seal == k3s_xdp_common::table::seal(hash, client_addr.seal_word(), ports, ids)),
            key,
            hash: old_hash,
            client_addr,
            client_port,
            vip_port,
            ids,
            closing: u32::from(field!((*slot).closing)),
            seen: field!((*slot).seen),
        }
    }

    #[inline(always)]
    fn hash_of(held: &Held<V6>) -> u32 {
        held.hash
    }

    /// The hop in `NAT_HOPS6` stays as it was, marked not this translation's (`hop`).
    #[inline(always)]
    fn write(
        slot: *mut Self,
        reverse: &FlowKey<V6>,
        hash: u32,
        entry: &NatReverse<V6>,
        seen: u32,
        seal: u32,
    ) {
        // SAFETY: a map value valid for this run.
        unsafe {
            (*slot).seal = 0;
            (*slot).snat_addr = reverse.dst;
            (*slot).client_addr = entry.client_addr;
            (*slot).backend_port = reverse.sport;
            (*slot).snat_port = reverse.dport;
            (*slot).client_port = entry.client_port;
            (*slot).vip_port = entry.vip_port;
            (*slot).backend = entry.backend;
            (*slot).service = entry.service;
            (*slot).protocol = reverse.protocol;
            (*slot).closing = entry.closing as u8;
            (*slot).hop = 0;
            (*slot).hash = hash;
            (*slot).seen = seen;
            (*slot).seal = seal;
        }
    }

    #[inline(always)]
    fn wrote(slot: *const Self, reverse: &FlowKey<V6>, key: &FlowKey<V6>, seal: u32) -> bool {
        // SAFETY: fields of a map value valid for this run.
        let (dst, client) = unsafe { (addr_of!((*slot).snat_addr), addr_of!((*slot).client_addr)) };
        (V6::diff_at(dst, &reverse.dst) == 0)
            & (field!((*slot).snat_port) == reverse.dport)
            & (field!((*slot).backend_port) == reverse.sport)
            & (V6::diff_at(client, &key.src) == 0)
            & (field!((*slot).client_port) == key.sport)
            & (field!((*slot).seal) == seal)
    }

    #[inline(always)]
    fn seen(slot: *mut Self) -> *mut u32 {
        // SAFETY: a field of a map value valid for this run.
        unsafe { core::ptr::addr_of_mut!((*slot).seen) }
    }

    #[inline(always)]
    fn closing(slot: *const Self) -> u32 {
        // SAFETY: a map value valid for this run.
        u32::from(unsafe { (*slot).closing })
    }

    #[inline(always)]
    fn set_closing(slot: *mut Self, closing: u32) {
        // SAFETY: a map value valid for this run.
        unsafe { (*slot).closing = closing as u8 };
    }

    #[inline(always)]
    fn hop(slot: *const Self, at: u32) -> NextHop<V6> {
        if field!((*slot).hop) == 0 {
            return NextHop::default();
        }
        match crate::maps::NAT_HOPS6.get_ptr(at) {
            // SAFETY: a map value valid for this run.
            Some(hop) => unsafe { core::ptr::read_volatile(hop) },
            None => NextHop::default(),
        }
    }

    /// The hop first, then the mark that it is this translation's.
    #[inline(always)]
    fn set_hop(slot: *mut Self, at: u32, hop: &NextHop<V6>) {
        if let Some(cached) = crate::maps::NAT_HOPS6.get_ptr_mut(at) {
            // SAFETY: map values valid for this run.
            unsafe {
                *cached = *hop;
                (*slot).hop = 1;
            }
        }
    }

    #[inline(always)]
    fn reverse_into(slot: *const Self, out: *mut FlowKey<V6>) -> u16 {
        // SAFETY: a map value valid for this run; the caller's record.
        unsafe {
            (*out).dst = V6::load(addr_of!((*slot).snat_addr));
            (*out).sport = (*slot).backend_port;
            (*out).dport = (*slot).snat_port;
            (*out).protocol = (*slot).protocol;
            (*slot).backend
        }
    }
}

/// The reverse NAT entry of `key`: the slot and what was checked of it.
#[inline(always)]
pub fn find_nat<F: Family>(key: &FlowKey<F>, at: Place) -> Option<(*mut F::Nat, NatView<F>)> {
    let index = nat_index(at.hash, at.mask);
    let slot = F::nat_slot(index)?;
    let view = F::Nat::find(slot, index, key, at.hash)?;
    Some((slot, view))
}

/// Records that a packet of the translation in `slot` went through at `clock` (as
/// [`find_flow`] does for flows).
#[inline(always)]
pub fn touch_nat<F: Family>(slot: *mut F::Nat, seen: u32, clock: u32) {
    if seen != clock {
        // SAFETY: a map value valid for this run; `seen` is outside the seal.
        unsafe { *F::Nat::seen(slot) = clock };
    }
}

/// Takes the reverse slot of `reverse` for the client flow `key` (`entry` says who it is):
/// free, already this client tuple's, or held by a translation that closed (and whose backend
/// no longer holds TIME_WAIT, see `k3s_xdp_common::waits`) or went idle. A slot holding
/// another live or waiting translation refuses (unless `force`), saying which and when it was
/// last seen in `taken`: the caller tries another SNAT port. A
/// translation taken over is described in `taken`, so that the caller clears its client's
/// flow entry and the old client's stray packets cannot reach the new connection (done by the
/// caller, after the SNAT search: the search runs in a bpf_loop callback, on little stack).
#[inline(always)]
pub fn claim_nat<F: Family>(
    key: &FlowKey<F>,
    reverse: &FlowKey<F>,
    entry: &NatReverse<F>,
    (clock, mask, timewait): (u32, u32, u32),
    taken: *mut TakenOver<F>,
    force: bool,
) -> bool {
    let hash = flow_hash(reverse);
    let Some(slot) = nat_slot::<F>(hash, mask) else {
        return false;
    };
    // A free slot (a fresh table's are all free) has nothing to check: its seal is the one
    // read, and the slot is written.
    let old_seal = F::Nat::seal(slot);
    if old_seal != 0 {
        // Fields read once each into locals, not copied whole: the claim runs on a small stack.
        let old = F::Nat::held(slot, reverse, entry.backend, hash, old_seal);
        let ours = old.holds
            & (old.client_addr.diff(&key.src) == 0)
            & (old.client_port == key.sport)
            & (old.vip_port == key.dport);
        if ours & (old.closing & !NAT_UNCONFIRMED == 0) {
            // This client tuple's already (its flow entry was replaced, or it reconnects from the
            // same port): reuse it.
            touch_nat::<F>(slot, old.seen, clock);
            return true;
        }
        let waiting = k3s_xdp_common::waits(old.closing, old.seen, clock, timewait);
        let reusable =
            (k3s_xdp_common::closed(old.closing) & !waiting) | idle(old.seen, clock) | force;
        if !reusable & !ours {
            // SAFETY: the caller's record (per-CPU scratch), valid for this run.
            unsafe {
                (*taken).refused_live = 1;
                (*taken).refused_waiting = u32::from(waiting);
                (*taken).refused_unconfirmed = u32::from(old.closing & NAT_UNCONFIRMED != 0);
                (*taken).refused_seen = old.seen;
            }
            return false;
        }
        if !ours {
            // A whole translation of another client, taken over: its flow entry goes with it.
            let ports = (u32::from(old.client_port) << 16) | u32::from(old.vip_port);
            if old_seal
                == k3s_xdp_common::table::seal(
                    F::Nat::hash_of(&old),
                    old.client_addr.seal_word(),
                    ports,
                    old.ids,
                )
            {
                // SAFETY: the caller's record (per-CPU scratch), valid for this run. Left set
                // even if the claim then loses a race: the old translation is overwritten
                // either way.
                unsafe {
                    (*taken).key = crate::parse::key(
                        old.client_addr,
                        old.key.dst,
                        old.client_port,
                        old.vip_port,
                        old.key.protocol,
                    );
                    (*taken).backend = old.ids >> 16;
                    (*taken).service = old.ids & 0xffff;
                    (*taken).snat_port = old.key.dport;
                    (*taken).set = 1;
                }
            }
        }
    }
    let seal = nat_seal(hash, entry);
    F::Nat::write(slot, reverse, hash, entry, clock, seal);
    // Another CPU may have written the same slot at the same instant: keep the port only if
    // the slot reads back whole and ours.
    F::Nat::wrote(slot, reverse, key, seal)
}
