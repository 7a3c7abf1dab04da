//! The plan of what the data plane should hold, computed without touching it: the specs of
//! services and backends as the controller wants them, and the map entries they become
//! (`BACKENDS` entries, Maglev tables, `VIPS` and `SNAT_SOURCES` entries, packed table words),
//! each in the map of its family (`BACKENDS6`, `VIPS6`, `SNAT_SOURCES6` for IPv6; backend and
//! service slots are numbered across both families).
//! [`publish`](super::publish) writes them; everything here is pure and unit-tested without BPF.

use crate::{
    config::{self, Mode, OnBackendDown, Protocol},
    maglev,
};
use anyhow::{anyhow, bail, Result};
use k3s_xdp_common::{
    address::v6_words, maglev_word, maglev_words, Address, Backend, SnatSources, VipInfo, VipPort,
    BACKEND_DOWN, BACKEND_DRAIN, BACKEND_UP, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_SLOTS_PER_WORD,
    MAX_BACKENDS, MAX_PORTS_PER_VIP, MAX_SERVICES, MAX_SNAT_SOURCES, SERVICE_DSR,
    SERVICE_RESET_ON_DOWN, V6, VIP_SNAT_ONLY,
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// An IPv4 address as the maps hold it (network byte order).
pub fn v4(a: Ipv4Addr) -> u32 {
    u32::from(a).to_be()
}

/// An IPv6 address as the maps hold it.
pub fn v6(a: Ipv6Addr) -> V6 {
    v6_words(a.octets())
}

/// Whether a backend takes new flows, keeps its flows, or has its flows reset/kept per service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Healthy and enabled: in the Maglev table (if its weight is positive).
    Up,
    /// `drain`: out of the table, existing flows continue.
    Drain,
    /// Failed its checks or `disable`d: out of the table; flows reset or kept per service.
    Down,
}

/// A backend as the data plane should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    pub address: SocketAddr,
    pub state: BackendState,
    /// Weight in the Maglev table now (configured weight, ramped by slowstart); 0 = no entries.
    pub weight: u32,
}

/// A service as the data plane should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub on_backend_down: OnBackendDown,
    pub table_size: u32,
    pub backends: Vec<BackendSpec>,
    /// nat mode: the SNAT pool's addresses (`snat_source`, `node` resolved); empty: the VIP.
    pub snat_sources: Vec<IpAddr>,
}

impl ServiceSpec {
    /// The service of the config with every backend up at its configured weight, its SNAT
    /// pool without `node` (see [`ServiceSpec::with_node`]).
    pub fn from_config(service: &config::Service) -> Self {
        ServiceSpec {
            name: service.name.clone(),
            vip: service.vip,
            port: service.port,
            protocol: service.protocol,
            mode: service.mode,
            on_backend_down: service.on_backend_down,
            table_size: service.table_size,
            snat_sources: addresses(service.snat_addresses(None)),
            backends: service
                .backends
                .iter()
                .map(|b| BackendSpec {
                    name: b.name.clone(),
                    address: b.address,
                    state: BackendState::Up,
                    weight: b.weight,
                })
                .collect(),
        }
    }

    /// The same, `node` being this node's addresses (`snat_source = "node"`).
    pub fn with_node(service: &config::Service, node: NodeAddresses) -> Self {
        ServiceSpec {
            snat_sources: addresses(service.snat_addresses(node.of_family(service.vip))),
            ..Self::from_config(service)
        }
    }
}

/// This node's own addresses on `interface`, one of each family (`snat_source = "node"`);
/// `None` where no service needs it or the interface has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl NodeAddresses {
    /// The node's address of `like`'s family.
    pub fn of_family(&self, like: IpAddr) -> Option<IpAddr> {
        match like {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

fn addresses<A: Into<IpAddr>>(list: Vec<A>) -> Vec<IpAddr> {
    list.into_iter().map(Into::into).collect()
}

/// Refuses more services or backends than the maps hold, and a table size that is not prime.
pub fn check_limits(services: &[ServiceSpec]) -> Result<()> {
    if services.len() > MAX_SERVICES as usize {
        bail!("{} services, at most {MAX_SERVICES}", services.len());
    }
    let backends: usize = services.iter().map(|s| s.backends.len()).sum();
    if backends >= MAX_BACKENDS as usize {
        bail!("{backends} backends, at most {}", MAX_BACKENDS - 1);
    }
    for s in services {
        if !maglev::is_prime(s.table_size) {
            bail!(
                "service {}: table size {} is not prime",
                s.name,
                s.table_size
            );
        }
    }
    Ok(())
}

/// A backend's entry, for the map of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendEntry {
    V4(Backend),
    V6(Backend<V6>),
}

impl BackendEntry {
    /// `BACKEND_*`.
    pub fn state(&self) -> u32 {
        match self {
            BackendEntry::V4(b) => b.state,
            BackendEntry::V6(b) => b.state,
        }
    }

    /// A free slot in the map of this entry's family.
    pub fn freed(&self) -> Self {
        match self {
            BackendEntry::V4(_) => BackendEntry::V4(Backend::default()),
            BackendEntry::V6(_) => BackendEntry::V6(Backend::default()),
        }
    }
}

/// The `BACKENDS` (or `BACKENDS6`) entry of a backend of service slot `service`.
pub fn backend_entry(b: &BackendSpec, service: u32) -> BackendEntry {
    let state = match b.state {
        BackendState::Up => BACKEND_UP,
        BackendState::Drain => BACKEND_DRAIN,
        BackendState::Down => BACKEND_DOWN,
    };
    fn entry<A: Address>(addr: A, port: u16, state: u32, service: u32) -> Backend<A> {
        Backend {
            addr,
            port: port.to_be(),
            _pad: 0,
            state,
            service,
            _tail: Default::default(),
        }
    }
    match b.address {
        SocketAddr::V4(a) => BackendEntry::V4(entry(v4(*a.ip()), a.port(), state, service)),
        SocketAddr::V6(a) => BackendEntry::V6(entry(v6(*a.ip()), a.port(), state, service)),
    }
}

/// Whether a backend entry, written as `before`, refuses new flows once `after` replaces it:
/// such an entry is written only after the tables stop naming the backend.
pub fn stops_taking_new_flows(before: Option<&BackendEntry>, after: &BackendEntry) -> bool {
    before.is_some_and(|b| b.state() == BACKEND_UP) && after.state() != BACKEND_UP
}

/// The Maglev table of a service: its up backends with a positive weight, each identified by
/// its address; entries hold backend slots. Empty when no backend can take new flows.
pub fn table(service: &ServiceSpec, slot_of: impl Fn(&BackendSpec) -> u32) -> Vec<u32> {
    let identities: Vec<String> = service
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    let candidates: Vec<maglev::Candidate<'_>> = service
        .backends
        .iter()
        .zip(&identities)
        .filter(|(b, _)| b.state == BackendState::Up && b.weight > 0)
        .map(|(b, identity)| maglev::Candidate {
            identity,
            weight: b.weight,
            value: slot_of(b),
        })
        .collect();
    maglev::build(&candidates, service.table_size)
}

/// A service's `SNAT_SOURCES` (or `SNAT_SOURCES6`) entry. One per service, kept by the
/// publisher: the size of the IPv6 variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnatEntry {
    V4(SnatSources),
    V6(SnatSources<V6>),
}

/// The `SNAT_SOURCES` entry of a service: its VIP and SNAT pool, in its VIP's family (the
/// config keeps a pool in its VIP's family; another address is left out).
pub fn snat_sources_entry(s: &ServiceSpec) -> SnatEntry {
    fn entry<A: Address>(vip: A, pool: impl Iterator<Item = A>) -> SnatSources<A> {
        let mut entry = SnatSources {
            vip,
            ..Default::default()
        };
        for (i, a) in pool.take(MAX_SNAT_SOURCES).enumerate() {
            entry.addrs[i] = a;
            entry.count = i as u32 + 1;
        }
        entry
    }
    match s.vip {
        IpAddr::V4(vip) => SnatEntry::V4(entry(
            v4(vip),
            s.snat_sources.iter().filter_map(|a| match a {
                IpAddr::V4(a) => Some(v4(*a)),
                IpAddr::V6(_) => None,
            }),
        )),
        IpAddr::V6(vip) => SnatEntry::V6(entry(
            v6(vip),
            s.snat_sources.iter().filter_map(|a| match a {
                IpAddr::V6(a) => Some(v6(*a)),
                IpAddr::V4(_) => None,
            }),
        )),
    }
}

/// The `VIPS` and `VIPS6` entries: VIP (as the maps hold it) → its services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipEntries {
    pub v4: BTreeMap<u32, VipInfo>,
    pub v6: BTreeMap<V6, VipInfo>,
}

impl VipEntries {
    fn entry(&mut self, a: IpAddr) -> &mut VipInfo {
        match a {
            IpAddr::V4(a) => self.v4.entry(v4(a)).or_default(),
            IpAddr::V6(a) => self.v6.entry(v6(a)).or_default(),
        }
    }

    /// The entry of `a`, if it has one.
    pub fn get(&self, a: IpAddr) -> Option<&VipInfo> {
        match a {
            IpAddr::V4(a) => self.v4.get(&v4(a)),
            IpAddr::V6(a) => self.v6.get(&v6(a)),
        }
    }
}

/// The `VIPS` and `VIPS6` entries for `services` in their slots, and the addresses of their
/// SNAT pools that are no VIP (`VIP_SNAT_ONLY`, no port).
pub fn vip_entries(services: &[ServiceSpec], slots: &BTreeMap<String, u32>) -> Result<VipEntries> {
    let mut out = VipEntries::default();
    for s in services {
        let slot = *slots
            .get(&s.name)
            .ok_or_else(|| anyhow!("service {} has no slot", s.name))?;
        let info = out.entry(s.vip);
        let index = info.count as usize;
        if index >= MAX_PORTS_PER_VIP {
            bail!("VIP {} has more than {MAX_PORTS_PER_VIP} services", s.vip);
        }
        let mut flags = 0;
        if s.mode == Mode::Dsr {
            flags |= SERVICE_DSR;
        }
        if s.on_backend_down == OnBackendDown::Reset {
            flags |= SERVICE_RESET_ON_DOWN;
        }
        info.ports[index] = VipPort {
            port: s.port.to_be(),
            protocol: match s.protocol {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
            },
            service: slot,
            flags,
            ..Default::default()
        };
        info.count += 1;
    }
    for s in services {
        for &a in &s.snat_sources {
            let info = out.entry(a);
            if info.count == 0 {
                info.flags = VIP_SNAT_ONLY;
            }
        }
    }
    Ok(out)
}

/// Packs backend slots four to a 64-bit word behind a word holding their number, as the XDP
/// program reads them (`k3s_xdp_common::maglev_word`, `maglev_slot`).
pub fn pack_table(entries: &[u32]) -> Result<Vec<u64>> {
    let size = u32::try_from(entries.len())?;
    let per = MAGLEV_SLOTS_PER_WORD as usize;
    let mut words = vec![0u64; maglev_words(size) as usize];
    words[0] = u64::from(size);
    for (i, &slot) in entries.iter().enumerate() {
        if slot > 0xffff {
            bail!("backend slot {slot} does not fit a Maglev table entry (16 bits)");
        }
        words[maglev_word(i as u32) as usize] |= u64::from(slot) << ((i % per) * 16);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend's slot in these tests: its address's last byte.
    fn last_octet(b: &BackendSpec) -> u32 {
        match b.address.ip() {
            IpAddr::V4(a) => u32::from(a.octets()[3]),
            IpAddr::V6(a) => u32::from(a.octets()[15]),
        }
    }

    fn spec(
        name: &str,
        vip: &str,
        port: u16,
        backends: &[(&str, BackendState, u32)],
    ) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip: vip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            mode: Mode::Nat,
            on_backend_down: OnBackendDown::Reset,
            table_size: 251,
            snat_sources: Vec::new(),
            backends: backends
                .iter()
                .map(|(addr, state, weight)| BackendSpec {
                    name: addr.to_string(),
                    address: addr.parse().unwrap(),
                    state: *state,
                    weight: *weight,
                })
                .collect(),
        }
    }

    #[test]
    fn only_up_backends_with_weight_are_in_the_table() {
        use BackendState::*;
        let s = spec(
            "api",
            "192.0.2.100",
            6443,
            &[
                ("192.0.2.50:6443", Up, 100),
                ("192.0.2.51:6443", Down, 100),
                ("192.0.2.52:6443", Drain, 100),
                ("192.0.2.53:6443", Up, 0),
            ],
        );
        let t = table(&s, last_octet);
        assert_eq!(t.len(), 251);
        assert!(t.iter().all(|&v| v == 50));
        let all_down = spec(
            "api",
            "192.0.2.100",
            6443,
            &[("192.0.2.50:6443", Down, 100)],
        );
        assert!(table(&all_down, |_| 1).is_empty());
    }

    #[test]
    fn the_table_does_not_depend_on_backend_names_or_order() {
        use BackendState::*;
        let a = spec(
            "api",
            "192.0.2.100",
            6443,
            &[("192.0.2.50:6443", Up, 100), ("192.0.2.51:6443", Up, 100)],
        );
        let mut b = a.clone();
        b.backends.reverse();
        b.backends[0].name = "renamed".into();
        let slot = last_octet;
        assert_eq!(table(&a, slot), table(&b, slot));
    }

    #[test]
    fn vip_entries_group_services_by_vip() {
        use BackendState::*;
        let services = [
            spec("api", "192.0.2.100", 6443, &[("192.0.2.50:6443", Up, 100)]),
            spec(
                "ingress",
                "192.0.2.100",
                30080,
                &[("192.0.2.50:30080", Up, 100)],
            ),
            spec(
                "other",
                "192.0.2.200",
                6443,
                &[("192.0.2.50:6443", Up, 100)],
            ),
        ];
        let slots: BTreeMap<String, u32> = [("api", 3), ("ingress", 4), ("other", 5)]
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        let entries = vip_entries(&services, &slots).unwrap();
        let vip = *entries.get(Ipv4Addr::new(192, 0, 2, 100).into()).unwrap();
        assert_eq!(vip.count, 2);
        assert_eq!(vip.ports[0].port, 6443u16.to_be());
        assert_eq!(vip.ports[0].service, 3);
        assert_eq!(vip.ports[0].flags, SERVICE_RESET_ON_DOWN);
        assert_eq!(vip.ports[1].port, 30080u16.to_be());
        assert_eq!(vip.ports[1].service, 4);
        assert_eq!(entries.v4.len(), 2);
        assert!(entries.v6.is_empty());
    }

    #[test]
    fn tables_pack_four_slots_per_word_as_the_program_reads_them() {
        let entries: Vec<u32> = (0..11).map(|i| i * 1000 + 7).collect();
        let words = pack_table(&entries).unwrap();
        assert_eq!(words.len(), 4, "the size word and three words of entries");
        assert_eq!(words[0], 11, "the table carries its size");
        for (i, &e) in entries.iter().enumerate() {
            let word = words[k3s_xdp_common::maglev_word(i as u32) as usize];
            assert_eq!(k3s_xdp_common::maglev_slot(word, i as u32), e);
        }
        assert!(pack_table(&[70_000]).is_err());
    }

    #[test]
    fn only_entries_that_leave_the_up_state_wait_for_the_tables() {
        let entry = |state| {
            BackendEntry::V4(Backend {
                state,
                ..Default::default()
            })
        };
        let (up, drain, down) = (entry(BACKEND_UP), entry(BACKEND_DRAIN), entry(BACKEND_DOWN));
        assert!(stops_taking_new_flows(Some(&up), &drain));
        assert!(stops_taking_new_flows(Some(&up), &down));
        assert!(!stops_taking_new_flows(None, &up), "a new backend");
        assert!(!stops_taking_new_flows(None, &down), "new, not in a table");
        assert!(
            !stops_taking_new_flows(Some(&drain), &up),
            "comes back first"
        );
        assert!(!stops_taking_new_flows(Some(&down), &drain));
        assert!(!stops_taking_new_flows(Some(&up), &up));
    }

    #[test]
    fn backend_entries_are_in_network_order() {
        let b = BackendSpec {
            name: "server-1".into(),
            address: "192.0.2.50:6443".parse().unwrap(),
            state: BackendState::Drain,
            weight: 100,
        };
        let BackendEntry::V4(e) = backend_entry(&b, 7) else {
            panic!("an IPv4 backend's entry is for BACKENDS");
        };
        assert_eq!(e.addr.to_ne_bytes(), [192, 0, 2, 50]);
        assert_eq!(e.port.to_ne_bytes(), [0x19, 0x2b]);
        assert_eq!(e.state, BACKEND_DRAIN);
        assert_eq!(e.service, 7);
        let b6 = BackendSpec {
            address: "[2001:db8::50]:6443".parse().unwrap(),
            ..b
        };
        let BackendEntry::V6(e) = backend_entry(&b6, 7) else {
            panic!("an IPv6 backend's entry is for BACKENDS6");
        };
        assert_eq!(
            k3s_xdp_common::address::v6_bytes(e.addr),
            "2001:db8::50".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(e.port.to_ne_bytes(), [0x19, 0x2b]);
    }

    #[test]
    fn ipv6_services_have_their_own_vip_and_snat_entries() {
        use BackendState::*;
        let mut services = vec![
            spec("api", "192.0.2.100", 6443, &[("192.0.2.50:6443", Up, 100)]),
            spec(
                "api6",
                "2001:db8::100",
                6443,
                &[("[2001:db8::50]:6443", Up, 100)],
            ),
        ];
        services[1].snat_sources = vec!["2001:db8::200".parse().unwrap()];
        let slots: BTreeMap<String, u32> = [("api", 0), ("api6", 1)]
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        let entries = vip_entries(&services, &slots).unwrap();
        assert_eq!(entries.v4.len(), 1);
        assert_eq!(
            entries.v6.len(),
            2,
            "the VIP and the SNAT-only pool address"
        );
        let vip6 = entries.get("2001:db8::100".parse().unwrap()).unwrap();
        assert_eq!((vip6.count, vip6.ports[0].service), (1, 1));
        let pool = entries.get("2001:db8::200".parse().unwrap()).unwrap();
        assert_eq!((pool.count, pool.flags), (0, VIP_SNAT_ONLY));
        let SnatEntry::V6(snat) = snat_sources_entry(&services[1]) else {
            panic!("an IPv6 service's pool is for SNAT_SOURCES6");
        };
        assert_eq!(snat.count, 1);
        assert_eq!(snat.vip, v6("2001:db8::100".parse().unwrap()));
        assert_eq!(snat.addrs[0], v6("2001:db8::200".parse().unwrap()));
    }
}
