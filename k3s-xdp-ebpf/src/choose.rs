//! Choosing: the service a packet is for, the backend of a new flow (Maglev), and the SNAT port
//! the backend will see in nat mode.

use crate::maps::{BACKENDS, GLOBALS, MAGLEV, NAT_REVERSE};
use k3s_xdp_common::{
    hash::{flow_hash, reduce, snat_hash},
    reason, Backend, FlowKey, NatReverse, NextHop, VipInfo, VipPort, BACKEND_UP, MAX_PORTS_PER_VIP,
};

/// `BPF_NOEXIST`: insert only if absent, so two CPUs cannot claim the same SNAT port.
const BPF_NOEXIST: u64 = 1;
/// SNAT ports tried per new flow before giving up (collisions are rare: ~64k ports per
/// backend, address and protocol).
const SNAT_TRIES: u32 = 4;
const SNAT_DEFAULT_MIN: u32 = 1024;
const SNAT_DEFAULT_MAX: u32 = 65535;

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

/// Whether any service of `vip` listens on `port` (network order), whatever the protocol.
#[inline(always)]
fn is_service_port(vip: &VipInfo, port: u16) -> bool {
    for i in 0..MAX_PORTS_PER_VIP {
        if i as u32 >= vip.count {
            break;
        }
        if vip.ports[i].port == port {
            return true;
        }
    }
    false
}

/// The backend for a new flow: the Maglev entry its hash selects, if that backend is up.
/// `None` when the service has no table (no healthy backend) or the entry is stale.
#[inline(always)]
pub fn backend(service: &VipPort, key: &FlowKey) -> Option<(u32, Backend)> {
    let entry = reduce(flow_hash(key), service.table_size);
    let id = *MAGLEV.get_value(service.service, &entry)?;
    let backend = *BACKENDS.get(id)?;
    if backend.state == BACKEND_UP && backend.service == service.service {
        Some((id, backend))
    } else {
        None
    }
}

/// Claims the SNAT port (network order) through which `backend` will see the flow `key`, and
/// records the reverse translation. The first port tried is a hash of the flow, so lb-1 and
/// lb-2 choose the same one and a backend connection survives a failover; a port held by
/// another flow is skipped, and so is any port a service listens on at this VIP.
#[inline(always)]
pub fn snat_port(
    key: &FlowKey,
    vip: &VipInfo,
    id: u32,
    backend: &Backend,
    service: u32,
    client_hop: &NextHop,
) -> Result<u16, u32> {
    let (mut min, mut max) = (SNAT_DEFAULT_MIN, SNAT_DEFAULT_MAX);
    if let Some(g) = GLOBALS.get(0) {
        if g.snat_port_min != 0 && g.snat_port_min <= g.snat_port_max {
            min = u32::from(g.snat_port_min);
            max = u32::from(g.snat_port_max);
        }
    }
    let span = max - min + 1;
    let first = reduce(snat_hash(key), span);
    let entry = NatReverse {
        client_addr: key.src,
        client_port: key.sport,
        vip_port: key.dport,
        backend: id,
        service,
        next_hop: *client_hop,
    };
    for i in 0..SNAT_TRIES {
        let mut offset = first + i;
        if offset >= span {
            offset -= span;
        }
        let port = ((min + offset) as u16).to_be();
        if is_service_port(vip, port) {
            continue;
        }
        let reverse = FlowKey {
            src: backend.addr,
            dst: key.dst,
            sport: backend.port,
            dport: port,
            protocol: key.protocol,
            _pad: [0; 3],
        };
        if NAT_REVERSE.insert(reverse, entry, BPF_NOEXIST).is_ok() {
            return Ok(port);
        }
        // Taken: by this very flow earlier (its forward entry was evicted, or lb-2 saw it
        // first), which we reuse; or by another flow, which we step over.
        if let Some(existing) = unsafe { NAT_REVERSE.get(reverse) } {
            if existing.client_addr == key.src
                && existing.client_port == key.sport
                && existing.vip_port == key.dport
            {
                return Ok(port);
            }
        }
    }
    Err(reason::DROP_SNAT_EXHAUSTED)
}
