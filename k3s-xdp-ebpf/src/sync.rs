//! Flow sync's side of the data plane: a new flow, once recorded, is reported with its backend
//! slot and translation for the daemon to send to the peers, and so is a nat translation when
//! it closes (both FINs, or a RST). Established packets pay nothing; a new flow and a closing
//! one pay one write each, only with `[flow_sync]` on.
//!
//! The events go into `FLOW_EVENTS`, a log with a part per CPU (see
//! `k3s_xdp_common::FlowLogSlot`): this CPU's next slot, then its count of events written. No
//! lock and no atomic: only this program writes this CPU's part, one run at a time. A log the
//! daemon has not read in time is overwritten; it counts those as lost, and the next bulk sync
//! repairs.

use crate::maps::{FLOW_EVENTS, FLOW_EVENTS_HEADS, FLOW_EVENTS_LOST};
use crate::{family::Family, table::NatPlace};
use aya_ebpf::helpers::bpf_get_smp_processor_id;
use k3s_xdp_common::{
    table::Translation, Address, Flow, FlowEvent, FlowKey, FLOW_EVENT_CLOSED, FLOW_EVENT_NEW,
    FLOW_LOG_SLOTS,
};

#[inline(always)]
pub fn report_new<A: Address>(key: &FlowKey<A>, flow: &Flow) {
    let flow = *flow;
    report::<A>(FLOW_EVENT_NEW, |event| {
        // SAFETY: the event being written (see `report`).
        unsafe {
            (*event).key.src = key.src;
            (*event).key.dst = key.dst;
            (*event).key.sport = key.sport;
            (*event).key.dport = key.dport;
            (*event).key.protocol = key.protocol;
            (*event).flow = flow;
        }
    });
}

/// The nat translation in `slot` closed: its reverse tuple (backend → SNAT address:port)
/// and backend slot, read from the slot (its tuple is the one the caller just matched; an
/// IPv6 slot's source, the backend's address, from `BACKENDS6`, which the caller checked it
/// against).
#[inline(always)]
pub fn report_closed<F: Family>(slot: *const F::Nat) {
    report::<F>(FLOW_EVENT_CLOSED, |event| {
        // The tuple is written where it goes, not copied onto the stack: the caller's frame
        // has no room for it beside the IPv6 path's.
        // SAFETY: the event being written (see `report`).
        unsafe {
            let key = core::ptr::addr_of_mut!((*event).key);
            let backend = F::Nat::reverse_into(slot, key);
            if !<F::NatSlot as Translation<F>>::KEEPS_BACKEND_ADDR {
                if let Some(b) = F::backend_addr(u32::from(backend)) {
                    (*event).key.src = b;
                }
            }
            (*event).flow = Flow {
                backend: u32::from(backend),
                snat_port: 0,
                snat_source: 0,
            };
        }
    });
}

/// Writes an event `op` of family `A`: its key and flow by `fill`, into this CPU's next slot
/// of the log.
#[inline(always)]
fn report<A: Address>(op: u8, fill: impl FnOnce(*mut FlowEvent<A>)) {
    let family = if A::LEN == 4 { 4 } else { 6 };
    // SAFETY: a helper without arguments (the verifier inlines it).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(head) = FLOW_EVENTS_HEADS.get_ptr_mut(cpu) else {
        return lost();
    };
    // SAFETY: map values valid for this run. This CPU's head and slots have no other writer
    // (see above); the daemon reads them concurrently, so the count is written last, after
    // the slot, with volatile writes the compiler keeps in this order.
    unsafe {
        let written = (*head).written;
        let at = cpu * FLOW_LOG_SLOTS + (written as u32 & (FLOW_LOG_SLOTS - 1));
        let Some(slot) = FLOW_EVENTS.get_ptr_mut(at) else {
            return lost();
        };
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*slot).family), family);
        // Whole words first, then the fields: the padding is zero without a call to memset
        // (which a struct literal with byte-array padding compiles to).
        let words = core::ptr::addr_of_mut!((*slot).event).cast::<u64>();
        for i in 0..7 {
            // Volatile: a plain loop of zero stores would become the memset call again.
            core::ptr::write_volatile(words.add(i), 0);
        }
        let event = core::ptr::addr_of_mut!((*slot).event).cast::<FlowEvent<A>>();
        fill(event);
        (*event).op = op;
        (*event).family = family as u8;
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*head).written), written + 1);
    }
}

/// An event this CPU could not write (a CPU beyond the log the loader sized), counted.
#[inline(always)]
fn lost() {
    if let Some(lost) = FLOW_EVENTS_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *lost += 1 };
    }
}
