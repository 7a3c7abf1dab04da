//! A new flow, in two programs. `k3s_xdp` (the first half) handles every packet; when a packet
//! starts a flow, it writes the question (the flow, its service, the SNAT settings) into this
//! CPU's `SNAT_SEARCH` entry and tail-calls `k3s_xdp_new_flow` (the second half). That one
//! chooses the backend with Maglev, claims the SNAT port (nat mode), writes the answer next to
//! the question, records the flow, finds the packet's headers again at the offsets the first
//! half left in the question, and forwards it (`forward::decided`; IPv6 records and forwards
//! in `k3s_xdp_decided6`, see `ipv6.rs`).
//!
//! Why two programs: the choice needs the SNAT search's bpf_loop, whose callback's stack is
//! stacked on its caller's; in a program of its own, that stack starts from a small frame and
//! the 512 bytes suffice. Each half also gets its own verifier budget. The cost is one tail
//! call, paid by a flow's first packet only.
//!
//! The per-CPU entry is safe to share between the halves: XDP runs to completion on its CPU
//! with preemption disabled, and a tail call stays in the same run. The second half acts on
//! the question only for the packet it was asked about (`forward::decided` checks its tuple).

use crate::{
    choose,
    family::Family,
    guard,
    headers::{TCP_ACK, TCP_SYN},
    hop,
    parse::{Ip, Offsets, L4},
    state::Probe,
    sync,
    table::{self, NatPlace, Place},
};
use k3s_xdp_common::{
    reason, table::UNCONFIRMED, Flow, FlowKey, Globals, VipInfo, VipPort, FLOW_SYNC_ON,
    MAX_PORTS_PER_VIP, NAT_UNCONFIRMED, SERVICE_DSR,
};

/// `Probe::outcome` of a flow whose backend was chosen and recorded.
pub const CHOSEN: u32 = u32::MAX;

const SNAT_DEFAULT_MIN: u32 = 1024;
const SNAT_DEFAULT_MAX: u32 = 65535;

/// This CPU's new-flow state for family `F` (its slot in `NEW_FLOW` is `F::NEW_FLOW_SLOT`).
#[inline(always)]
pub fn state<F: Family>() -> Option<*mut Probe<F>> {
    F::probe()
}

/// The first half's question about the flow `key` (flow hash `hash`) of `service` on `vip`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn ask<F: Family>(
    state: *mut Probe<F>,
    ip: &Ip<F>,
    l4: &L4,
    key: &FlowKey<F>,
    hash: u32,
    vip: &VipInfo,
    service: &VipPort,
    globals: &Globals,
    tcp_flags: u8,
) {
    let (mut min, mut max) = (SNAT_DEFAULT_MIN, SNAT_DEFAULT_MAX);
    if globals.snat_port_min != 0 && globals.snat_port_min <= globals.snat_port_max {
        min = u32::from(globals.snat_port_min);
        max = u32::from(globals.snat_port_max);
    }
    // SAFETY: this CPU's entry, valid for this run.
    unsafe {
        (*state).key = *key;
        (*state).headers = Offsets::of(ip, l4);
        (*state).flow_hash = hash;
        (*state).service = *service;
        (*state).entry.client_addr = key.src;
        (*state).entry.client_port = key.sport;
        (*state).entry.vip_port = key.dport;
        // Unconfirmed until the client's second packet (`forward::lookup`).
        (*state).entry.closing = NAT_UNCONFIRMED;
        // The hop back to the client: none yet, the first reply resolves it with the FIB.
        // Never the mirror of the client's frame: another router may have sent it on. (An
        // IPv6 translation keeps no hop in its slot: nothing to write.)
        if F::Nat::HOP_IN_SLOT {
            hop::none(core::ptr::addr_of_mut!((*state).entry.next_hop));
        }
        (*state).min = min;
        (*state).span = max - min + 1;
        for i in 0..MAX_PORTS_PER_VIP {
            (*state).service_ports[i] = vip.ports[i].port;
        }
        (*state).service_count = vip.count.min(MAX_PORTS_PER_VIP as u32);
        (*state).clock = globals.clock;
        (*state).mask = globals.flow_mask;
        (*state).timewait = globals.snat_timewait;
        (*state).sync = globals.flow_sync;
        (*state).syn = u32::from(tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN);
    }
}

/// The second half: chooses the backend of the flow in `state` and claims its SNAT port (nat
/// mode), and leaves the answer (`CHOSEN`, or why not); [`record`] then records the flow.
#[inline(always)]
pub fn decide<F: Family>(state: *mut Probe<F>) {
    // SAFETY: this CPU's entry, valid for this run.
    unsafe {
        (*state).id = 0;
        (*state).first = 1;
        // A SYN from a source never seen completing a handshake may be a flood's.
        if (*state).syn != 0 && !guard::admit(state) {
            (*state).outcome = reason::DROP_SYN_FLOOD;
            return;
        }
        let outcome = match choose::backend::<F>(&(*state).service, (*state).flow_hash) {
            None => reason::DROP_NO_BACKEND,
            Some((id, backend)) => {
                let port = if (*state).service.flags & SERVICE_DSR != 0 {
                    Ok((0, 0, (*state).key.dst))
                } else {
                    choose::snat_port(state, id, &backend)
                };
                match port {
                    Err(why) => why,
                    Ok((port, source, addr)) => {
                        (*state).id = id;
                        (*state).backend = backend;
                        (*state).snat_port = port;
                        (*state).snat_source = source;
                        (*state).snat_addr = addr;
                        CHOSEN
                    }
                }
            }
        };
        (*state).outcome = outcome;
    }
}

/// Records the flow `decide` chose (`CHOSEN`), and reports it with flow sync on; a flow that
/// cannot be recorded is dropped (`DROP_MAP_UPDATE`). Called by `forward::decided`, in the
/// program that sends the packet: for IPv6 that is `k3s_xdp_decided6`, whose frame is not
/// under the SNAT search's (`store_flow` inline there costs no subprogram call).
#[inline(always)]
pub fn record<F: Family>(state: *mut Probe<F>) {
    // SAFETY: this CPU's entry, valid for this run.
    unsafe {
        if (*state).outcome != CHOSEN {
            return;
        }
        let flow = Flow {
            backend: (*state).id,
            snat_port: (*state).snat_port,
            snat_source: (*state).snat_source,
        };
        let at = Place {
            hash: (*state).flow_hash,
            mask: (*state).mask,
        };
        let seen = (*state).clock | UNCONFIRMED;
        if !table::store_flow(&(*state).key, (*state).service.service, at, flow, seen) {
            (*state).outcome = reason::DROP_MAP_UPDATE;
            return;
        }
        // Reported at once, not when its client confirms it: behind ECMP the backend's
        // SYN-ACK may reach another node, which needs the translation before the client can
        // confirm anything.
        if (*state).sync == FLOW_SYNC_ON {
            sync::report_new(&(*state).key, &flow);
        }
    }
}
