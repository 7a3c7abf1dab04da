//! The two forwarding paths of a VIP service: a client's packet to its backend (new flows choose
//! one with Maglev; established flows keep theirs), and in nat mode a backend's reply back to the
//! client.

use crate::{
    choose, counters,
    family::Family,
    guard,
    headers::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    hop,
    maps::{self, NEW_FLOW},
    new_flow,
    parse::{self, frame_len, Ip, Valid, L4},
    reset,
    rewrite::{self, Tuple},
    state::Probe,
    table::{self, NatPlace, Place},
    verdict::Verdict,
};
use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use k3s_xdp_common::{
    reason, table::UNCONFIRMED, Backend, FlowKey, Globals, NextHop, VipInfo, VipPort, BACKEND_DOWN,
    BACKEND_FREE, IPPROTO_TCP, NAT_BACKEND_FIN, NAT_CLIENT_FIN, NAT_RESET, NAT_UNCONFIRMED,
    SERVICE_DSR, SERVICE_RESET_ON_DOWN,
};

/// A client's packet to `service` on `vip`: an established flow goes to its backend. A packet
/// that starts a flow is handed to `k3s_xdp_new_flow` (a tail call, see `new_flow.rs`), which
/// chooses and records its backend and forwards it ([`decided`]).
#[inline(always)]
pub fn to_backend<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    valid: &Valid,
    l4: L4,
    vip: &VipInfo,
    service: &VipPort,
    globals: &Globals,
) -> Verdict {
    let protocol = l4.protocol;
    let key = parse::flow_key(ip, &l4);

    let tcp_flags = if protocol == IPPROTO_TCP {
        l4.tcp_flags(ctx)
    } else {
        0
    };
    let at = Place::of(&key, globals.flow_mask);
    match lookup(&key, at, service, protocol, tcp_flags, globals) {
        // Sent from the program that looked it up (IPv6's too: no second tail call).
        Decision::Established(chosen) => {
            let dsr = service.flags & SERVICE_DSR != 0;
            send(ctx, ip, &l4, service, &chosen, dsr, globals, false)
        }
        Decision::Refuse(backend) => F::refused(ctx, ip, valid, &l4, &key, service, backend),
        Decision::Choose => {
            let Some(state) = new_flow::state::<F>() else {
                return Verdict::drop(reason::DROP_INTERNAL);
            };
            new_flow::ask(
                state, ip, &l4, &key, at.hash, vip, service, globals, tcp_flags,
            );
            // SAFETY: a tail call into the new-flow program, which the controller puts in its
            // slot before attaching; on success it does not return. The packet is as it came.
            unsafe { NEW_FLOW.tail_call(ctx, F::NEW_FLOW_SLOT) };
            Verdict::drop(reason::DROP_INTERNAL)
        }
    }
}

/// What the flow table says about a client's packet, the steps Katran and Cilium name too:
/// look up the established flow, refuse one pinned to a dead backend, or choose anew.
pub enum Decision<F: Family> {
    /// An established flow: on to its backend.
    Established(Chosen<F>),
    /// Pinned to a backend that is down, in a service that resets such flows: a RST, counted
    /// on that backend slot.
    Refuse(u32),
    /// No usable flow: the new-flow program chooses a backend.
    Choose,
}

/// The flow table's answer for `key` (at `at`) of `service`. A flow chooses again when its
/// backend slot was freed or reused by another service, when its SNAT source is gone (never
/// while the daemon runs), and, in nat mode, when a SYN comes on a translation that was taken
/// over or has closed. In nat mode a FIN or RST from the client marks its translation closing.
#[inline(always)]
pub fn lookup<F: Family>(
    key: &FlowKey<F>,
    at: Place,
    service: &VipPort,
    protocol: u8,
    tcp_flags: u8,
    globals: &Globals,
) -> Decision<F> {
    // A SYN leaves an unconfirmed flow unconfirmed; any other packet confirms it.
    let keep = if tcp_flags & TCP_SYN != 0 {
        UNCONFIRMED
    } else {
        0
    };
    let Some((flow, unconfirmed)) = table::find_flow(key, service.service, at, globals.clock, keep)
    else {
        return Decision::Choose;
    };
    let Some(backend) = F::backend(flow.backend) else {
        return Decision::Choose;
    };
    if backend.state == BACKEND_FREE || backend.service != service.service {
        return Decision::Choose;
    }
    let Some(snat_addr) = maps::snat_address(service.service, flow.snat_source, key.dst) else {
        return Decision::Choose;
    };
    let mut choose_again = false;
    // The client's second packet confirms its translation too (once per flow), and makes its
    // source known to the SYN flood guard (TCP: its handshake is done). One test on the path
    // of established packets, which are neither.
    let confirms = unconfirmed & (keep == 0);
    if confirms | (tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0) {
        if confirms && protocol == IPPROTO_TCP {
            guard::confirmed(&key.src);
        }
        if service.flags & SERVICE_DSR == 0 {
            choose_again = F::translation_event(
                key,
                &backend,
                snat_addr,
                flow.snat_port,
                tcp_flags,
                (globals.flow_mask, globals.flow_sync),
            );
        }
    }
    if backend.state == BACKEND_DOWN && service.flags & SERVICE_RESET_ON_DOWN != 0 {
        table::clear_flow(key, service.service, at);
        // A SYN on the tuple of a flow pinned to a backend now down is a new connection (the
        // client reuses its port): it chooses a healthy backend, and so does a UDP flow's
        // next datagram (no connection to reset: a request that came back on the same
        // source port, or a client that keeps its socket). The rest of TCP is refused.
        if (protocol != IPPROTO_TCP) | (tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN) {
            return Decision::Choose;
        }
        return Decision::Refuse(flow.backend);
    }
    if choose_again {
        return Decision::Choose;
    }
    Decision::Established(Chosen {
        id: flow.backend,
        backend,
        snat_port: flow.snat_port,
        snat_addr,
    })
}

/// In nat mode, what a client's SYN, FIN or RST means for its flow's translation (of
/// `backend`, from `snat_addr:snat_port`): a FIN or RST marks it closing; a SYN on a
/// translation taken over by another client, or closed, or gone, makes the flow choose again
/// (the answer). Any other packet of the client confirms an unconfirmed translation (called
/// for those only while the flow is unconfirmed).
#[inline(always)]
pub fn translation_event<F: Family>(
    key: &FlowKey<F>,
    backend: &Backend<F>,
    snat_addr: F,
    snat_port: u16,
    tcp_flags: u8,
    (mask, sync): (u32, u32),
) -> bool {
    let reverse = choose::reverse_key(key, backend, snat_addr, snat_port);
    match table::find_nat(&reverse, Place::of(&reverse, mask)) {
        Some((entry, e)) => {
            let ours = e.client_addr.diff(&key.src) == 0 && e.client_port == key.sport;
            if tcp_flags & TCP_SYN != 0 && (!ours || e.closing & !NAT_UNCONFIRMED != 0) {
                // Taken over, or closed: a new connection on this tuple.
                return true;
            }
            if ours && tcp_flags & TCP_SYN == 0 && e.closing & NAT_UNCONFIRMED != 0 {
                choose::confirm::<F>(entry);
            }
            if ours && tcp_flags & TCP_RST != 0 {
                choose::note_closing::<F>(entry, NAT_RESET, sync);
            } else if ours && tcp_flags & TCP_FIN != 0 {
                choose::note_closing::<F>(entry, NAT_CLIENT_FIN, sync);
            }
            false
        }
        None => tcp_flags & TCP_SYN != 0,
    }
}

/// The new-flow program's verdict on the packet whose flow `new_flow::decide` just handled:
/// recorded (`new_flow::record`) and sent to the backend chosen, refused with a RST when no
/// backend is healthy, or dropped. (IPv6 runs this in a program of its own,
/// `k3s_xdp_decided6`, for its new flows and for flows pinned to a backend that is down: see
/// `Family::refused`.)
/// Pointers into the packet cannot cross the tail call: the packet sent on is found again at
/// the offsets the first half parsed it with (it is the same packet, unchanged), the one
/// refused is parsed again; either is checked to be the packet the question was about.
#[inline(always)]
pub fn decided<F: Family>(ctx: &XdpContext, state: *mut Probe<F>) -> Verdict {
    new_flow::record(state);
    // SAFETY: this CPU's new-flow state, written by both halves during this run. The key is
    // compared where it is, not copied (an IPv6 one is 40 bytes).
    let (key, protocol, service, outcome) = unsafe {
        (
            core::ptr::addr_of!((*state).key),
            (*state).key.protocol,
            (*state).service,
            (*state).outcome,
        )
    };
    match outcome {
        new_flow::CHOSEN => {
            // SAFETY: as above.
            let (at, chosen) = unsafe {
                (
                    (*state).headers,
                    Chosen {
                        id: (*state).id,
                        backend: (*state).backend,
                        snat_port: (*state).snat_port,
                        snat_addr: (*state).snat_addr,
                    },
                )
            };
            let Some((ip, l4)) = parse::again::<F>(ctx, at, protocol) else {
                return Verdict::drop(reason::DROP_INTERNAL);
            };
            if !is_about(&ip, &l4, key) {
                return Verdict::drop(reason::DROP_INTERNAL);
            }
            let dsr = service.flags & SERVICE_DSR != 0;
            // SAFETY: as above.
            let first = unsafe { (*state).first } != 0;
            let Some(globals) = maps::globals_ref() else {
                return Verdict::drop(reason::DROP_INTERNAL);
            };
            send(ctx, &ip, &l4, &service, &chosen, dsr, globals, first)
        }
        // No healthy backend: refuse at once rather than let the client time out.
        reason::DROP_NO_BACKEND if protocol == IPPROTO_TCP => {
            let Ok((ip, valid)) = F::parse(ctx) else {
                return Verdict::drop(reason::DROP_INTERNAL);
            };
            let Ok(l4) = parse::transport(ctx, &valid, protocol) else {
                return Verdict::drop(reason::DROP_INTERNAL);
            };
            if !is_about(&ip, &l4, key) {
                return Verdict::drop(reason::DROP_INTERNAL);
            }
            // SAFETY: as above: the backend refused (0: none was healthy).
            let id = unsafe { (*state).id };
            reset::send(ctx, &ip, &valid, &l4, service.service, id)
        }
        why => Verdict::drop(why),
    }
}

/// Whether the packet with these headers is of the flow whose key is at `key` (this CPU's
/// new-flow state), compared in place.
#[inline(always)]
fn is_about<F: Family>(ip: &Ip<F>, l4: &L4, key: *const FlowKey<F>) -> bool {
    table::key_at(key, &parse::flow_key(ip, l4))
}

/// Where a flow goes: its backend (slot `id`), and in nat mode the source the backend sees.
#[derive(Clone, Copy)]
pub struct Chosen<F: Family> {
    pub id: u32,
    pub backend: Backend<F>,
    pub snat_port: u16,
    pub snat_addr: F,
}

/// Rewrites and sends a client's packet to the backend `id` (from `snat_addr:snat_port` in
/// nat mode). In nat mode, a backend whose neighbour is not resolved yet gets the translated
/// packet through the kernel, which resolves it (see [`toward`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn send<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    l4: &L4,
    service: &VipPort,
    chosen: &Chosen<F>,
    dsr: bool,
    globals: &Globals,
    new_flow: bool,
) -> Verdict {
    let Chosen {
        id,
        backend,
        snat_port,
        snat_addr,
    } = *chosen;
    let dst = F::dst(ip.hdr);
    let hop = match hop::to_backend(ctx, id, &backend, dst, dsr, globals.fib_generation) {
        Ok(hop) => hop,
        // Unresolved (`ifindex` 0): the kernel resolves it (see `onward`). A dsr frame keeps
        // the VIP as its destination: the kernel would deliver it to itself.
        Err(reason::DROP_NO_NEIGHBOUR) if !dsr => NextHop::default(),
        Err(why) => return Verdict::drop(why),
    };
    if !dsr {
        rewrite::tuple(
            ctx,
            ip,
            l4,
            &Tuple {
                src: snat_addr,
                dst: backend.addr,
                sport: snat_port,
                dport: backend.port,
            },
        );
    }
    counters::traffic(service.service, id, frame_len(ctx), new_flow);
    onward(ctx, ip, &hop, reason::TX_FORWARD)
}

/// A backend's packet to VIP:snat_port (or to an address of a SNAT pool, `pool`) in nat mode,
/// if it matches a translation: translated back to the client, from the service's VIP.
/// Otherwise a packet to a VIP on a port without a service, or to a pool address: the host's
/// business.
#[inline(always)]
pub fn reply<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    l4: L4,
    protocol: u8,
    globals: &Globals,
    pool: bool,
) -> Verdict {
    let generation = globals.fib_generation;
    let key = parse::flow_key(ip, &l4);
    let other = if pool {
        reason::PASS_SNAT_ADDRESS
    } else {
        reason::PASS_VIP_OTHER
    };
    let Some((entry, nat)) = table::find_nat(&key, Place::of(&key, globals.flow_mask)) else {
        return Verdict::pass(other);
    };
    let vip = if pool {
        match F::snat_sources(u32::from(nat.service)) {
            Some(sources) => sources.vip,
            None => return Verdict::pass(other),
        }
    } else {
        key.dst
    };
    table::touch_nat::<F>(entry, nat.seen, globals.clock);
    if protocol == IPPROTO_TCP {
        let flags = l4.tcp_flags(ctx);
        if flags & TCP_RST != 0 {
            choose::note_closing::<F>(entry, NAT_RESET, globals.flow_sync);
        } else if flags & TCP_FIN != 0 {
            choose::note_closing::<F>(entry, NAT_BACKEND_FIN, globals.flow_sync);
        }
    }
    // The hop toward the client comes from the FIB only, resolved on the first reply and after
    // route or neighbour changes; never from the client's frame, which another router (an old
    // VRRP master still forwarding) may have sent on. Only a resolved hop is kept.
    // The hop is outside the seal, used only for the address it names.
    let cached = F::Nat::hop(entry, nat.at);
    let hop = if hop::is_fresh(&cached, nat.client_addr, generation) {
        cached
    } else {
        match hop::resolve(ctx, vip, nat.client_addr, false, generation) {
            Ok(hop) => {
                F::Nat::set_hop(entry, nat.at, &hop);
                hop
            }
            // Unresolved (`ifindex` 0): the kernel resolves it (see `onward`).
            Err(reason::DROP_NO_NEIGHBOUR) => NextHop::default(),
            Err(why) => return Verdict::drop(why),
        }
    };
    rewrite::tuple(
        ctx,
        ip,
        &l4,
        &Tuple {
            src: vip,
            dst: nat.client_addr,
            sport: nat.vip_port,
            dport: nat.client_port,
        },
    );
    counters::traffic(
        u32::from(nat.service),
        u32::from(nat.backend),
        frame_len(ctx),
        false,
    );
    onward(ctx, ip, &hop, reason::TX_REPLY)
}

/// Sends a translated packet toward `hop`, or, when its neighbour is not resolved (`ifindex`
/// 0), hands it to the kernel (see [`depart`]). A hop, not a `Result`: a value kept across
/// the rewrites must be defined whole (the verifier refuses to copy an `Err`'s undefined
/// payload).
#[inline(always)]
pub fn onward<F: Family>(ctx: &XdpContext, ip: &Ip<F>, hop: &NextHop<F>, why: u32) -> Verdict {
    if hop.ifindex == 0 {
        return Verdict::pass(reason::PASS_NO_NEIGHBOUR);
    }
    rewrite::l2(ip, hop);
    transmit(ctx, ip, hop, why)
}

/// Sends a packet already addressed to its final IP destination toward `hop`, the next hop
/// resolved for it (see [`depart`]).
#[inline(always)]
pub fn toward<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    hop: Result<NextHop<F>, u32>,
    why: u32,
) -> Verdict {
    if let Ok(hop) = &hop {
        rewrite::l2(ip, hop);
    }
    depart(ctx, ip, hop, why)
}

/// The verdict on a packet whose Ethernet header already names `hop`: sent on; or, without a
/// resolved neighbour, handed to the kernel, which resolves the address (ARP) and forwards the
/// packet (the interface forwards, and accepts the VIP as a source: the daemon sets both), so
/// the next packet finds the neighbour in the FIB; or dropped (no route).
#[inline(always)]
pub fn depart<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    hop: Result<NextHop<F>, u32>,
    why: u32,
) -> Verdict {
    match hop {
        Ok(hop) => transmit(ctx, ip, &hop, why),
        Err(reason::DROP_NO_NEIGHBOUR) => Verdict::pass(reason::PASS_NO_NEIGHBOUR),
        Err(why) => Verdict::drop(why),
    }
}

/// Sends the rewritten frame: XDP_TX when it leaves where it came in (or stays in the VLAN it
/// came from), a redirect otherwise.
#[inline(always)]
pub fn transmit<F: Family>(ctx: &XdpContext, ip: &Ip<F>, hop: &NextHop<F>, why: u32) -> Verdict {
    if ip.tagged || hop.ifindex as usize == ctx.ingress_ifindex() {
        return Verdict::tx(why);
    }
    // SAFETY: a helper call with plain values.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    Verdict {
        action: if action == xdp_action::XDP_REDIRECT {
            action
        } else {
            xdp_action::XDP_DROP
        },
        reason: if action == xdp_action::XDP_REDIRECT {
            why
        } else {
            reason::DROP_NO_ROUTE
        },
    }
}
