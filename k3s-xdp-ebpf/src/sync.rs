//! Flow sync's side of the data plane: a new flow, once recorded, is reported in the
//! `FLOW_EVENTS` ring buffer (with its backend slot and translation) for the daemon to send
//! to the peers. Established packets pay nothing; a new flow pays one ring buffer write, only
//! with `[flow_sync]` on. A full ring loses the event (counted); the next bulk sync repairs.

use crate::maps::{FLOW_EVENTS, FLOW_EVENTS_LOST};
use k3s_xdp_common::{Address, Flow, FlowEvent, FlowKey, FLOW_EVENT_NEW};

/// `BPF_RB_NO_WAKEUP`: the daemon polls the ring every few milliseconds, so no record wakes
/// it (a wakeup is an irq_work the packet would pay for).
const NO_WAKEUP: u64 = 1;

#[inline(always)]
pub fn report_new<A: Address>(key: &FlowKey<A>, flow: &Flow) {
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
        op: FLOW_EVENT_NEW,
        family: if A::LEN == 4 { 4 } else { 6 },
        _pad: [0; 6],
    });
    entry.submit(NO_WAKEUP);
}
