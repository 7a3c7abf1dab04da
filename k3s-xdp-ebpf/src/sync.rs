//! Flow sync's side of the data plane: a new flow, once recorded, is reported in the
//! `FLOW_EVENTS` ring buffer (with its backend slot and translation) for the daemon to send
//! to the peers, and so is a nat translation when it closes (both FINs, or a RST). Established
//! packets pay nothing; a new flow and a closing one pay one ring buffer write each, only with
//! `[flow_sync]` on. A full ring loses the event (counted); the next bulk sync repairs.

use crate::maps::{FLOW_EVENTS, FLOW_EVENTS_LOST};
use k3s_xdp_common::{
    table::NatSlot, Address, Flow, FlowEvent, FlowKey, FLOW_EVENT_CLOSED, FLOW_EVENT_NEW,
};

/// `BPF_RB_NO_WAKEUP`: the daemon polls the ring every few milliseconds, so no record wakes
/// it (a wakeup is an irq_work the packet would pay for).
const NO_WAKEUP: u64 = 1;

#[inline(always)]
pub fn report_new<A: Address>(key: &FlowKey<A>, flow: &Flow) {
    report(key, flow, FLOW_EVENT_NEW);
}

/// The nat translation in `slot` closed: its reverse tuple (backend → SNAT address:port)
/// and backend slot, read from the slot (its key is the tuple the caller just matched).
#[inline(always)]
pub fn report_closed<A: Address>(slot: *const NatSlot<A>) {
    // SAFETY: a map value valid for this run; a copy of its key and backend.
    let (reverse, backend) = unsafe { ((*slot).key, (*slot).nat.backend) };
    let flow = Flow {
        backend: u32::from(backend),
        snat_port: 0,
        snat_source: 0,
    };
    report(&reverse, &flow, FLOW_EVENT_CLOSED);
}

#[inline(always)]
fn report<A: Address>(key: &FlowKey<A>, flow: &Flow, op: u8) {
    // Written in place in the ring: no copy through the stack.
    let Some(mut entry) = FLOW_EVENTS.reserve_untyped::<FlowEvent<A>>(0) else {
        if let Some(lost) = FLOW_EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            unsafe { *lost += 1 };
        }
        return;
    };
    entry.write(FlowEvent::<A> {
        key: *key,
        flow: *flow,
        op,
        family: if A::LEN == 4 { 4 } else { 6 },
        _pad: [0; 6],
    });
    entry.submit(NO_WAKEUP);
}
