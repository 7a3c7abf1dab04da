//! Per-CPU counters: packet fates by reason, traffic per service and backend. Per-CPU slots
//! need no atomics; the controller sums the CPUs.

use crate::maps::{BACKEND_STATS, REASONS, SERVICE_STATS, TABLE_EVENTS};
use aya_ebpf::btf_maps::PerCpuArray;
use k3s_xdp_common::Traffic;

/// Counts one packet under `reason` (a `k3s_xdp_common::reason` constant).
#[inline(always)]
pub fn count(reason: u32) {
    if let Some(slot) = REASONS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts one `k3s_xdp_common::reason::table` event.
#[inline(always)]
pub fn table_event(event: u32) {
    if let Some(slot) = TABLE_EVENTS.get_ptr_mut(event) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn add<const N: usize>(map: &PerCpuArray<Traffic, N>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(t) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
            if new_flow {
                (*t).new_flows += 1;
            }
        }
    }
}

/// Counts a forwarded packet of `service` through backend slot `backend`.
#[inline(always)]
pub fn traffic(service: u32, backend: u32, bytes: u64, new_flow: bool) {
    add(&SERVICE_STATS, service, bytes, new_flow);
    add(&BACKEND_STATS, backend, bytes, new_flow);
}

/// Counts a RST sent for `service` (and the backend the flow was pinned to; 0 for none).
#[inline(always)]
pub fn reset(service: u32, backend: u32) {
    if let Some(t) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: this CPU's counters, a map value valid for this run.
        unsafe { (*t).resets += 1 };
    }
    if backend != 0 {
        if let Some(t) = BACKEND_STATS.get_ptr_mut(backend) {
            // SAFETY: as above.
            unsafe { (*t).resets += 1 };
        }
    }
}
