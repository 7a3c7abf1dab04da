//! Choosing: the service a packet is for, the backend of a new flow (Maglev), and the SNAT port
//! the backend will see in nat mode.

use crate::{
    counters,
    family::Family,
    maps::MAGLEV,
    state::Probe,
    table::{self, NatPlace, Place},
};
use aya_ebpf::helpers::bpf_loop;
use core::ffi::c_void;
use k3s_xdp_common::{
    hash::{probe as probe_hash, reduce, snat_hash},
    maglev_slot, maglev_word, reason, Backend, FlowKey, VipInfo, VipPort, BACKEND_UP, FLOW_SYNC_ON,
    MAX_PORTS_PER_VIP, MAX_SNAT_SOURCES, NAT_BACKEND_FIN,
};

/// SNAT ports tried per new flow before giving up. Random probing from the flow's hash: with
/// the backend's port space a fraction `a` full of live connections, a new flow fails with
/// probability about a^16 (4e-7 at 40%, 3e-4 at 60%).
const SNAT_TRIES: u32 = 16;

/// The service of `vip` on `port` (network order) and `protocol`.
#[inline(always)]
pub fn service(vip: &VipInfo, port: u16, protocol: u8) -> Option<VipPort> {
    for i in 0..MAX_PORTS_PER_VIP {
        if i as u32 >= vip.count {
            break;
        }
        let p = vip.ports[i];
        if p.port == port && p.protocol == protocol {
            return Some(p);
        }
    }
    None
}

/// The backend for a new flow: the Maglev entry its hash (`flow_hash`) selects, if that
/// backend is up. `None` when the service has no table (no healthy backend), an empty one, or
/// the entry is stale.
#[inline(always)]
pub fn backend<F: Family>(service: &VipPort, hash: u32) -> Option<(u32, Backend<F>)> {
    // One outer lookup: the size and the entry come from the same table even if the
    // controller swaps in another one meanwhile.
    let table = MAGLEV.get(service.service)?;
    let size = *table.get(0)? as u32;
    let entry = reduce(hash, size);
    let word = *table.get(maglev_word(entry))?;
    let id = maglev_slot(word, entry);
    let backend = F::backend(id)?;
    if backend.state == BACKEND_UP && backend.service == service.service {
        Some((id, backend))
    } else {
        None
    }
}

/// Claims the SNAT address and port through which `backend` (slot `id`) will see the flow in
/// `probe`, and records the reverse translation; returns the port (network order), the
/// source (`Flow::snat_source`) and its address. Without a pool the address is the VIP; with one
/// (`SNAT_SOURCES`), each of its addresses offers the whole port range and a try is a hash of
/// the flow over (address, port). The tries are hashes of the flow, so
/// lb-1 and lb-2 choose the same one and a backend connection survives a failover; a port held
/// by a live connection of another client is skipped, and so is any port a service listens on
/// at this VIP, and one whose backend closed first less than `snat_timewait` ago (it holds the
/// 4-tuple in TIME_WAIT and would refuse another client's SYN). A port whose connection has
/// closed (FIN both ways, or a RST) or gone idle is taken over: the previous owner's flow entry
/// is removed with it, so its stray packets cannot reach the new connection. When every port
/// tried is held, an unconfirmed translation is taken (its client sent one packet only: what a
/// SYN flood leaves), else the waiting one closed longest ago (the least likely to be
/// refused), else the live one seen longest ago (as an LRU table would evict it); each is
/// counted.
#[inline(always)]
pub fn snat_port<F: Family>(
    probe: *mut Probe<F>,
    id: u32,
    backend: &Backend<F>,
) -> Result<(u16, u16, F), u32> {
    // SAFETY: this CPU's new-flow state (see `new_flow.rs`), valid for this run; XDP runs with
    // preemption disabled, so nothing else on this CPU uses it meanwhile.
    unsafe {
        (*probe).pool_count = 0;
        if let Some(sources) = F::snat_sources((*probe).service.service) {
            if sources.count != 0 && sources.count <= MAX_SNAT_SOURCES as u32 {
                (*probe).pool = sources.addrs;
                (*probe).pool_count = sources.count;
            }
        }
        (*probe).tries_span = (*probe).span * (*probe).pool_count.max(1);
        (*probe).entry.backend = id as u16;
        (*probe).entry.service = (*probe).service.service as u16;
        (*probe).backend_addr = backend.addr;
        (*probe).backend_port = backend.port;
        (*probe).hash = snat_hash(&(*probe).key);
        (*probe).found = 0;
        (*probe).taken.set = 0;
        (*probe).taken.refused_live = 0;
        (*probe).force = NO_TRY;
        (*probe).oldest = NO_TRY;
        (*probe).oldest_age = 0;
        (*probe).oldest_waiting = NO_TRY;
        (*probe).oldest_waiting_age = 0;
        (*probe).oldest_unconfirmed = NO_TRY;
        (*probe).oldest_unconfirmed_age = 0;
        // bpf_loop: the kernel verifies the callback once, whatever the number of tries.
        bpf_loop(
            SNAT_TRIES,
            snat_try::<F> as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        // Every port tried is held by a live connection or waits for its backend's
        // TIME_WAIT: too many connections for the port range (or a flood). Rather than refuse
        // every new flow until translations age out, take an unconfirmed one (whose client
        // sent one packet only: what a SYN flood leaves), else the waiting one closed longest
        // ago, else (like an LRU table) the live one seen longest ago.
        if (*probe).found & FOUND == 0 {
            let (force, event) = if (*probe).oldest_unconfirmed != NO_TRY {
                (
                    (*probe).oldest_unconfirmed,
                    reason::table::TRANSLATION_UNCONFIRMED_TAKEN,
                )
            } else if (*probe).oldest_waiting != NO_TRY {
                (
                    (*probe).oldest_waiting,
                    reason::table::TRANSLATION_REUSED_WAITING,
                )
            } else {
                ((*probe).oldest, reason::table::TRANSLATION_TAKEN_OVER)
            };
            if force != NO_TRY {
                (*probe).force = force;
                bpf_loop(
                    SNAT_TRIES,
                    snat_try::<F> as *mut c_void,
                    core::ptr::null_mut(),
                    0,
                );
                if (*probe).found & FOUND != 0 {
                    counters::table_event(event);
                }
            }
        }
        let found = (*probe).found;
        if found & FOUND == 0 {
            return Err(reason::DROP_SNAT_EXHAUSTED);
        }
        if (*probe).taken.set != 0 {
            clear_taken_over::<F>();
        }
        Ok((
            found as u16,
            (*probe).found_source as u16,
            (*probe).found_addr,
        ))
    }
}

/// Marks `Probe::found` as set (the low 16 bits hold the port, network order).
const FOUND: u32 = 1 << 16;

/// No try: `Probe::force` and `Probe::oldest` unset.
const NO_TRY: u32 = u32::MAX;

/// One try of the SNAT port search: the `index`-th probe of the flow's hash.
extern "C" fn snat_try<F: Family>(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(probe) = F::probe() else {
        return 1;
    };
    // SAFETY: this CPU's search state, written by `snat_port` before bpf_loop.
    unsafe {
        let span = (*probe).span;
        let mut offset = reduce(probe_hash((*probe).hash, index as u32), (*probe).tries_span);
        let mut addr = (*probe).key.dst;
        let mut source = 0;
        if (*probe).pool_count != 0 {
            // Never a division by 0 (`span` is at least 1): no panic path for the verifier.
            let i = offset.checked_div(span).unwrap_or(0);
            offset -= i * span;
            addr = (*probe).pool[i as usize & (MAX_SNAT_SOURCES - 1)];
            source = i + 1;
        }
        let port = (((*probe).min + offset) as u16).to_be();
        for i in 0..MAX_PORTS_PER_VIP {
            if i as u32 >= (*probe).service_count {
                break;
            }
            if (*probe).service_ports[i] == port {
                return 0;
            }
        }
        let force = (*probe).force;
        if (force != NO_TRY) & (force != index as u32) {
            return 0;
        }
        let reverse = crate::parse::key(
            (*probe).backend_addr,
            addr,
            (*probe).backend_port,
            port,
            (*probe).key.protocol,
        );
        if table::claim_nat(
            &(*probe).key,
            &reverse,
            &(*probe).entry,
            ((*probe).clock, (*probe).mask, (*probe).timewait),
            core::ptr::addr_of_mut!((*probe).taken),
            force != NO_TRY,
        ) {
            (*probe).found = FOUND | u32::from(port);
            (*probe).found_source = source;
            (*probe).found_addr = addr;
            return 1;
        }
        if (*probe).taken.refused_live != 0 {
            (*probe).taken.refused_live = 0;
            let age = (*probe).clock.wrapping_sub((*probe).taken.refused_seen);
            // "Seen in the future" (the clock restarted) counts as seen now.
            let age = if age > u32::MAX / 2 { 0 } else { age };
            if (*probe).taken.refused_unconfirmed != 0 {
                if ((*probe).oldest_unconfirmed == NO_TRY) | (age > (*probe).oldest_unconfirmed_age)
                {
                    (*probe).oldest_unconfirmed = index as u32;
                    (*probe).oldest_unconfirmed_age = age;
                }
            } else if (*probe).taken.refused_waiting != 0 {
                if ((*probe).oldest_waiting == NO_TRY) | (age > (*probe).oldest_waiting_age) {
                    (*probe).oldest_waiting = index as u32;
                    (*probe).oldest_waiting_age = age;
                }
            } else if ((*probe).oldest == NO_TRY) | (age > (*probe).oldest_age) {
                (*probe).oldest = index as u32;
                (*probe).oldest_age = age;
            }
        }
    }
    0
}

/// Clears the flow entry of the translation the SNAT search took over. A BPF subprogram of
/// its own, after the search: its frame is not stacked on the search's. The old translation's
/// key names the address its backend answered to: with a pool, that is a pool address, and
/// the client's flow was to the service's VIP through that address's `snat_source`.
#[inline(never)]
fn clear_taken_over<F: Family>() {
    let Some(probe) = F::probe() else {
        return;
    };
    // SAFETY: this CPU's search state, written by the search just done.
    let (taken, mask) = unsafe { (&(*probe).taken, (*probe).mask) };
    let mut key = taken.key;
    let mut source = 0;
    if let Some(sources) = F::snat_sources(taken.service) {
        if sources.count != 0 {
            // A fixed number of steps, no early exit: the verifier sees constant offsets.
            for i in 0..MAX_SNAT_SOURCES {
                let hit = ((i as u32) < sources.count) & (sources.addrs[i].diff(&key.dst) == 0);
                if hit & (source == 0) {
                    source = i as u16 + 1;
                }
            }
            key.dst = sources.vip;
        }
    }
    table::clear_flow_through(
        &key,
        taken.service,
        Place::of(&key, mask),
        taken.backend,
        taken.snat_port,
        source,
    );
}

/// The reverse-NAT key of a flow of `key` through `backend` with `snat_port` on `snat_addr`.
#[inline(always)]
pub fn reverse_key<F: Family>(
    key: &FlowKey<F>,
    backend: &Backend<F>,
    snat_addr: F,
    snat_port: u16,
) -> FlowKey<F> {
    crate::parse::key(
        backend.addr,
        snat_addr,
        backend.port,
        snat_port,
        key.protocol,
    )
}

/// Confirms the translation in `slot`: its client sent a second packet (see
/// `NAT_UNCONFIRMED`). A plain read and write of `closing`, as in [`note_closing`].
#[inline(always)]
pub fn confirm<F: Family>(slot: *mut F::Nat) {
    // `closing` is outside the seal.
    F::Nat::set_closing(
        slot,
        F::Nat::closing(slot) & !k3s_xdp_common::NAT_UNCONFIRMED,
    );
}

/// Records in the reverse entry `slot` that a side of the TCP connection sent a FIN or a RST (`bits`; [`NAT_BACKEND_FIN`] stands for the backend's FIN, whose bits
/// depend on whether the client's came first); with flow sync on (`sync`), the translation's
/// closing is reported when these bits close it, with the reverse tuple the slot holds. Out
/// of line and given only the slot: only FIN and RST packets call it, and the established
/// path neither carries its code nor puts its tuple on the stack for it.
#[inline(never)]
pub fn note_closing<F: Family>(slot: *mut F::Nat, bits: u32, sync: u32) {
    // `closing` is outside the seal. A plain OR (the BPF target has no atomic OR in Rust): two
    // FINs on two CPUs at the same instant may lose one bit, which only delays the reuse of
    // that SNAT port until the translation goes idle; it can never mistranslate.
    let before = F::Nat::closing(slot);
    let bits = if bits == NAT_BACKEND_FIN {
        k3s_xdp_common::backend_fin(before)
    } else {
        bits
    };
    F::Nat::set_closing(slot, before | bits);
    let closes = !k3s_xdp_common::closed(before) & k3s_xdp_common::closed(before | bits);
    if (sync == FLOW_SYNC_ON) & closes {
        crate::sync::report_closed::<F>(slot);
    }
}
