//! Flow sync's side of the data plane: a new flow, once recorded, is reported in the
//! `FLOW_EVENTS` ring buffer (with its backend slot and translation) for the daemon to send
//! to the peers. Established packets pay nothing; a new flow pays one ring buffer write, only
//! with `[flow_sync]` on. A full ring loses the event (counted); the next bulk sync repairs.

use crate::maps::{FLOW_EVENTS, FLOW_EVENTS_LOST};
use k3s_xdp_common::{Address, Flow, FlowEvent, FlowKey, FLOW_EVENT_NEW};

#[inline(always)]
pub fn report_new<A: Address>(key: &FlowKey<A>, flow: &Flow) {
    let event = FlowEvent::<A> {
        key: *key,
        flow: *flow,
        op: FLOW_EVENT_NEW,
        family: if A::LEN == 4 { 4 } else { 6 },
        _pad: [0; 6],
    };
    if FLOW_EVENTS
        .output_untyped::<FlowEvent<A>>(&event, 0)
        .is_err()
    {
        if let Some(lost) = FLOW_EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            unsafe { *lost += 1 };
        }
    }
}
