//! Between this node's flow entries and the wire (pure): a new flow the XDP program reported
//! (with this node's backend slot and SNAT source index) becomes an [`Entry`] in addresses and
//! ports, and a peer's entry becomes the flow and reverse-NAT entries this node's program
//! would have made for it (with this node's slots). Slots differ between nodes; addresses do
//! not, as long as both run the same services.

use super::wire::{Entry, Op};
use crate::{
    config::{Mode, Protocol},
    dataplane::{FlowEventOf, ServiceSpec},
};
use k3s_xdp_common::{
    address::{v6_bytes, v6_words},
    table::ServiceTuple,
    Address, Flow, FlowKey, NatReverse, IPPROTO_TCP, IPPROTO_UDP, V6,
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// An address as the maps hold it, and back.
pub trait MapAddress: Address + Sized {
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn to_ip(self) -> IpAddr;
}

impl MapAddress for u32 {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(u32::from(a).to_be()),
            IpAddr::V6(_) => None,
        }
    }
    fn to_ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(u32::from_be(self)))
    }
}

impl MapAddress for V6 {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(v6_words(a.octets())),
            IpAddr::V4(_) => None,
        }
    }
    fn to_ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(v6_bytes(self)))
    }
}

/// The entries a peer's flow becomes here: the flow (client → VIP) and, in nat mode, the
/// reverse translation (backend → SNAT address:port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Install<A: Address> {
    pub key: FlowKey<A>,
    /// The service's slot here (an IPv6 flow slot keeps it in place of the VIP and port).
    pub service: u32,
    pub flow: Flow,
    pub reverse: Option<(FlowKey<A>, NatReverse<A>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOf {
    V4(Install<u32>),
    V6(Install<V6>),
}

#[derive(Debug, PartialEq, Eq)]
struct Service {
    slot: u32,
    nat: bool,
    /// The SNAT pool (empty: the VIP alone).
    pool: Vec<IpAddr>,
    /// Backend address → this node's slot.
    backends: BTreeMap<SocketAddr, u32>,
}

/// What the translation needs of the published services.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directory {
    /// (VIP:port, protocol) → service.
    services: BTreeMap<(SocketAddr, u8), Service>,
    /// Backend slot → (VIP:port, protocol, backend address).
    slots: BTreeMap<u32, ((SocketAddr, u8), SocketAddr)>,
    /// Service slot → (VIP:port, protocol).
    by_slot: BTreeMap<u32, (SocketAddr, u8)>,
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

impl Directory {
    /// The directory of `services` as published, with the slots the publisher gave them.
    pub fn new(
        services: &[ServiceSpec],
        service_slot: impl Fn(&str) -> Option<u32>,
        backend_slot: impl Fn(&str, SocketAddr) -> Option<u32>,
    ) -> Self {
        let mut d = Directory::default();
        for s in services {
            let Some(slot) = service_slot(&s.name) else {
                continue;
            };
            let id = (SocketAddr::new(s.vip, s.port), protocol_number(s.protocol));
            let mut backends = BTreeMap::new();
            for b in &s.backends {
                if let Some(bslot) = backend_slot(&s.name, b.address) {
                    backends.insert(b.address, bslot);
                    d.slots.insert(bslot, (id, b.address));
                }
            }
            d.by_slot.insert(slot, id);
            d.services.insert(
                id,
                Service {
                    slot,
                    nat: s.mode == Mode::Nat,
                    pool: s.snat_sources.clone(),
                    backends,
                },
            );
        }
        d
    }

    /// What service slot `slot` stands for, in the maps' terms, if it is published in
    /// family `A` (flow slots keep it in place of the VIP, port and protocol: see
    /// `k3s_xdp_common::table::FlowSlot6`).
    pub fn service_tuple<A: MapAddress>(&self, slot: u32) -> Option<ServiceTuple<A>> {
        let &(vip, protocol) = self.by_slot.get(&slot)?;
        Some(ServiceTuple {
            vip: A::from_ip(vip.ip())?,
            port: vip.port().to_be(),
            protocol,
        })
    }

    /// The wire entry of a new flow the program reported; `None` when its backend slot or
    /// SNAT source is not (or no longer) published.
    pub fn outgoing(&self, event: &FlowEventOf) -> Option<Entry> {
        match event {
            FlowEventOf::V4(e) => self.entry(&e.key, &e.flow),
            FlowEventOf::V6(e) => self.entry(&e.key, &e.flow),
        }
    }

    fn entry<A: MapAddress>(&self, key: &FlowKey<A>, flow: &Flow) -> Option<Entry> {
        let client = SocketAddr::new(key.src.to_ip(), u16::from_be(key.sport));
        let vip = SocketAddr::new(key.dst.to_ip(), u16::from_be(key.dport));
        let &(id, backend) = self.slots.get(&flow.backend)?;
        if id != (vip, key.protocol) {
            return None;
        }
        let service = self.services.get(&id)?;
        let snat = if !service.nat {
            client
        } else {
            let ip = match flow.snat_source {
                0 => vip.ip(),
                i => *service.pool.get(usize::from(i) - 1)?,
            };
            SocketAddr::new(ip, u16::from_be(flow.snat_port))
        };
        Some(Entry {
            op: Op::Flow,
            protocol: key.protocol,
            flags: 0,
            client,
            vip,
            backend,
            snat,
        })
    }

    /// The wire entry of a translation the program reported closed: `reverse` is its backend
    /// → SNAT address:port tuple and `nat` the translation as this node holds it; the entry's
    /// flags carry the closing bits (which FINs, or a RST). `None` when its backend slot is not
    /// (or no longer) published.
    pub fn closed<A: MapAddress>(
        &self,
        reverse: &FlowKey<A>,
        nat: &NatReverse<A>,
    ) -> Option<Entry> {
        let &((vip, protocol), backend) = self.slots.get(&u32::from(nat.backend))?;
        let entry = Entry {
            op: Op::Closed,
            protocol: reverse.protocol,
            flags: u8::try_from(nat.closing & 0xff).ok()?,
            client: SocketAddr::new(nat.client_addr.to_ip(), u16::from_be(nat.client_port)),
            vip,
            backend: SocketAddr::new(reverse.src.to_ip(), u16::from_be(reverse.sport)),
            snat: SocketAddr::new(reverse.dst.to_ip(), u16::from_be(reverse.dport)),
        };
        let same = backend == entry.backend
            && protocol == reverse.protocol
            && vip.port() == u16::from_be(nat.vip_port);
        same.then_some(entry)
    }

    /// The entries a peer's flow becomes on this node; `None` for a service or backend this
    /// node does not publish, or a SNAT address not in the service's pool.
    pub fn incoming(&self, entry: &Entry) -> Option<InstallOf> {
        if !entry.one_family() {
            return None;
        }
        if entry.client.is_ipv4() {
            self.install::<u32>(entry).map(InstallOf::V4)
        } else {
            self.install::<V6>(entry).map(InstallOf::V6)
        }
    }

    fn install<A: MapAddress>(&self, e: &Entry) -> Option<Install<A>> {
        let service = self.services.get(&(e.vip, e.protocol))?;
        let &backend = service.backends.get(&e.backend)?;
        let key = FlowKey {
            src: A::from_ip(e.client.ip())?,
            dst: A::from_ip(e.vip.ip())?,
            sport: e.client.port().to_be(),
            dport: e.vip.port().to_be(),
            protocol: e.protocol,
            _pad: [0; 3],
        };
        if !service.nat {
            let flow = Flow {
                backend,
                snat_port: 0,
                snat_source: 0,
            };
            return Some(Install {
                key,
                service: service.slot,
                flow,
                reverse: None,
            });
        }
        let snat_source = if service.pool.is_empty() && e.snat.ip() == e.vip.ip() {
            0
        } else {
            let i = service.pool.iter().position(|a| *a == e.snat.ip())?;
            u16::try_from(i + 1).ok()?
        };
        if e.snat.port() == 0 {
            return None;
        }
        let flow = Flow {
            backend,
            snat_port: e.snat.port().to_be(),
            snat_source,
        };
        let reverse_key = FlowKey {
            src: A::from_ip(e.backend.ip())?,
            dst: A::from_ip(e.snat.ip())?,
            sport: e.backend.port().to_be(),
            dport: e.snat.port().to_be(),
            protocol: e.protocol,
            _pad: [0; 3],
        };
        let nat = NatReverse {
            client_addr: key.src,
            client_port: key.sport,
            vip_port: key.dport,
            backend: u16::try_from(backend).ok()?,
            service: u16::try_from(service.slot).ok()?,
            closing: 0,
            _tail: Default::default(),
            next_hop: Default::default(),
        };
        Some(Install {
            key,
            service: service.slot,
            flow,
            reverse: Some((reverse_key, nat)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::OnBackendDown,
        dataplane::{BackendSpec, BackendState},
    };
    use k3s_xdp_common::{FlowEvent, FLOW_EVENT_NEW};

    fn spec(name: &str, vip: &str, mode: Mode, pool: &[&str], backends: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip: vip.parse().unwrap(),
            port: 6443,
            protocol: Protocol::Tcp,
            mode,
            on_backend_down: OnBackendDown::Reset,
            table_size: 65537,
            backends: backends
                .iter()
                .map(|a| BackendSpec {
                    name: a.to_string(),
                    address: a.parse().unwrap(),
                    state: BackendState::Up,
                    weight: 100,
                })
                .collect(),
            snat_sources: pool.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn specs() -> Vec<ServiceSpec> {
        vec![
            spec(
                "api",
                "192.0.2.100",
                Mode::Nat,
                &[],
                &["192.0.2.50:6443", "192.0.2.51:6443"],
            ),
            spec(
                "pool",
                "192.0.2.110",
                Mode::Nat,
                &["192.0.2.7", "192.0.2.8"],
                &["192.0.2.50:6443"],
            ),
            spec(
                "api6",
                "2001:db8::100",
                Mode::Nat,
                &[],
                &["[2001:db8::50]:6443"],
            ),
            spec("dsr", "192.0.2.120", Mode::Dsr, &[], &["192.0.2.52:6443"]),
        ]
    }

    /// Two nodes that published the same services in different slots.
    fn node(offset: u32) -> Directory {
        let all = specs();
        let names: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
        let backends: Vec<(String, SocketAddr)> = all
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.address)))
            .collect();
        Directory::new(
            &all,
            |n| names.iter().position(|x| x == n).map(|i| i as u32 + offset),
            |n, a| {
                backends
                    .iter()
                    .position(|(s, b)| s == n && *b == a)
                    .map(|i| i as u32 + 1 + offset)
            },
        )
    }

    fn v4_event(client: &str, vip: &str, backend: u32, port: u16, source: u16) -> FlowEventOf {
        let c: SocketAddr = client.parse().unwrap();
        let v: SocketAddr = vip.parse().unwrap();
        FlowEventOf::V4(FlowEvent {
            key: FlowKey {
                src: u32::from_ip(c.ip()).unwrap(),
                dst: u32::from_ip(v.ip()).unwrap(),
                sport: c.port().to_be(),
                dport: v.port().to_be(),
                protocol: IPPROTO_TCP,
                _pad: [0; 3],
            },
            flow: Flow {
                backend,
                snat_port: port.to_be(),
                snat_source: source,
            },
            op: FLOW_EVENT_NEW,
            family: 4,
            _pad: [0; 6],
        })
    }

    #[test]
    fn a_flow_crosses_to_a_node_with_other_slots() {
        let (a, b) = (node(0), node(10));
        // Node a: slot 2 is api's 192.0.2.51; SNAT port 40000 on the VIP.
        let event = v4_event("198.51.100.7:51000", "192.0.2.100:6443", 2, 40000, 0);
        let entry = a.outgoing(&event).unwrap();
        assert_eq!(entry.backend, "192.0.2.51:6443".parse().unwrap());
        assert_eq!(entry.snat, "192.0.2.100:40000".parse().unwrap());
        let Some(InstallOf::V4(i)) = b.incoming(&entry) else {
            panic!("an IPv4 install")
        };
        let FlowEventOf::V4(e) = event else {
            unreachable!()
        };
        assert_eq!(i.key, e.key, "the same client tuple");
        assert_eq!(i.flow.backend, 12, "node b's slot of the same backend");
        assert_eq!(
            (i.flow.snat_port, i.flow.snat_source),
            (40000u16.to_be(), 0)
        );
        let (rk, nat) = i.reverse.unwrap();
        assert_eq!(rk.src, u32::from_ip("192.0.2.51".parse().unwrap()).unwrap());
        assert_eq!(rk.dst, e.key.dst, "the backend answers the VIP");
        assert_eq!((rk.sport, rk.dport), (6443u16.to_be(), 40000u16.to_be()));
        assert_eq!((nat.client_addr, nat.client_port), (e.key.src, e.key.sport));
        assert_eq!(
            (nat.backend, nat.service, nat.vip_port),
            (12, 10, 6443u16.to_be())
        );
    }

    #[test]
    fn pool_addresses_dsr_and_ipv6_cross_too() {
        let (a, b) = (node(0), node(3));
        let pooled = a
            .outgoing(&v4_event(
                "198.51.100.7:51000",
                "192.0.2.110:6443",
                3,
                2000,
                2,
            ))
            .unwrap();
        assert_eq!(
            pooled.snat,
            "192.0.2.8:2000".parse().unwrap(),
            "the pool's second"
        );
        let Some(InstallOf::V4(i)) = b.incoming(&pooled) else {
            panic!()
        };
        assert_eq!(i.flow.snat_source, 2);

        let dsr = a
            .outgoing(&v4_event("198.51.100.7:51000", "192.0.2.120:6443", 5, 0, 0))
            .unwrap();
        assert_eq!(dsr.snat, dsr.client, "dsr: the backend sees the client");
        let Some(InstallOf::V4(i)) = b.incoming(&dsr) else {
            panic!()
        };
        assert_eq!((i.flow.backend, i.reverse), (8, None));

        let c: SocketAddr = "[2001:db8:1::7]:51000".parse().unwrap();
        let v: SocketAddr = "[2001:db8::100]:6443".parse().unwrap();
        let event = FlowEventOf::V6(FlowEvent {
            key: FlowKey {
                src: V6::from_ip(c.ip()).unwrap(),
                dst: V6::from_ip(v.ip()).unwrap(),
                sport: c.port().to_be(),
                dport: v.port().to_be(),
                protocol: IPPROTO_TCP,
                _pad: [0; 3],
            },
            flow: Flow {
                backend: 4,
                snat_port: 1024u16.to_be(),
                snat_source: 0,
            },
            op: FLOW_EVENT_NEW,
            family: 6,
            _pad: [0; 6],
        });
        let entry = a.outgoing(&event).unwrap();
        assert_eq!(entry.client, c);
        let Some(InstallOf::V6(i)) = b.incoming(&entry) else {
            panic!()
        };
        assert_eq!(i.flow.backend, 7);
        assert_eq!(i.reverse.unwrap().0.dst, V6::from_ip(v.ip()).unwrap());
    }

    /// What this node cannot place is refused, never installed wrong.
    /// What an IPv6 flow slot keeps of its key's VIP, port and protocol is the service's
    /// slot: each node names its own slots back.
    #[test]
    fn a_service_slot_names_its_vip_port_and_protocol() {
        for offset in [0, 7] {
            let d = node(offset);
            let api6 = specs().iter().position(|s| s.name == "api6").unwrap() as u32 + offset;
            let t = d.service_tuple::<V6>(api6).expect("published");
            assert_eq!(t.vip.to_ip(), "2001:db8::100".parse::<IpAddr>().unwrap());
            assert_eq!((u16::from_be(t.port), t.protocol), (6443, IPPROTO_TCP));
            assert_eq!(d.service_tuple::<u32>(api6), None, "not an IPv4 service");
            assert_eq!(d.service_tuple::<V6>(offset + 100), None, "no such slot");
        }
    }

    #[test]
    fn unknown_services_backends_and_addresses_are_refused() {
        let (a, b) = (node(0), node(0));
        let good = a
            .outgoing(&v4_event(
                "198.51.100.7:51000",
                "192.0.2.100:6443",
                1,
                40000,
                0,
            ))
            .unwrap();
        let mut e = good;
        e.vip = "192.0.2.99:6443".parse().unwrap();
        assert_eq!(b.incoming(&e), None, "no such service");
        let mut e = good;
        e.backend = "192.0.2.59:6443".parse().unwrap();
        assert_eq!(b.incoming(&e), None, "not its backend");
        let mut e = good;
        e.snat = "192.0.2.9:40000".parse().unwrap();
        assert_eq!(b.incoming(&e), None, "not a SNAT address of the service");
        let mut e = good;
        e.protocol = IPPROTO_UDP;
        assert_eq!(b.incoming(&e), None, "no UDP service there");
        let mut e = good;
        e.backend = "[2001:db8::50]:6443".parse().unwrap();
        assert_eq!(b.incoming(&e), None, "families mixed");
        // A slot of another service than the event's VIP, or none: nothing to send.
        assert_eq!(
            a.outgoing(&v4_event("198.51.100.7:51000", "192.0.2.100:6443", 5, 1, 0)),
            None
        );
        assert_eq!(
            a.outgoing(&v4_event(
                "198.51.100.7:51000",
                "192.0.2.100:6443",
                99,
                1,
                0
            )),
            None
        );
        assert_eq!(
            a.outgoing(&v4_event("198.51.100.7:51000", "192.0.2.110:6443", 3, 1, 3)),
            None,
            "a pool index beyond the pool"
        );
    }

    /// A translation closed on node a names the same connection on node b: b's install of
    /// it is the one made when the flow was new (so b finds and closes it).
    #[test]
    fn a_closed_translation_names_the_same_connection_on_the_peer() {
        let (a, b) = (node(0), node(10));
        let event = v4_event("198.51.100.7:51000", "192.0.2.100:6443", 2, 40000, 0);
        let new = b.incoming(&a.outgoing(&event).unwrap()).unwrap();
        let Some(InstallOf::V4(on_a)) = a.incoming(&a.outgoing(&event).unwrap()) else {
            panic!()
        };
        let (reverse, mut nat) = on_a.reverse.unwrap();
        nat.closing = k3s_xdp_common::NAT_CLIENT_FIN | k3s_xdp_common::NAT_BACKEND_FIN;
        let closed = a.closed(&reverse, &nat).unwrap();
        assert_eq!(closed.op, Op::Closed);
        assert_eq!(u32::from(closed.flags), nat.closing);
        assert_eq!(closed.client, "198.51.100.7:51000".parse().unwrap());
        assert_eq!(closed.vip, "192.0.2.100:6443".parse().unwrap());
        assert_eq!(b.incoming(&closed), Some(new), "the same entries on b");
        // A backend slot no longer published, or not this tuple's backend: nothing to say.
        let mut gone = nat;
        gone.backend = 99;
        assert_eq!(a.closed(&reverse, &gone), None);
        let mut other = nat;
        other.backend = 1;
        assert_eq!(a.closed(&reverse, &other), None);
    }
}
