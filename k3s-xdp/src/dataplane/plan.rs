//! The plan of what the data plane should hold, computed without touching it: the specs of
//! services and backends as the controller wants them, and the map entries they become
//! (`BACKENDS` entries, Maglev tables, `VIPS` and `SNAT_SOURCES` entries, packed table words).
//! [`publish`](super::publish) writes them; everything here is pure and unit-tested without BPF.

use crate::{
    config::{self, Mode, OnBackendDown, Protocol},
    maglev,
};
use anyhow::{anyhow, bail, Result};
use k3s_xdp_common::{
    maglev_word, maglev_words, Backend, SnatSources, VipInfo, VipPort, BACKEND_DOWN, BACKEND_DRAIN,
    BACKEND_UP, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_SLOTS_PER_WORD, MAX_BACKENDS, MAX_PORTS_PER_VIP,
    MAX_SERVICES, MAX_SNAT_SOURCES, SERVICE_DSR, SERVICE_RESET_ON_DOWN, VIP_SNAT_ONLY,
};
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

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
    pub address: SocketAddrV4,
    pub state: BackendState,
    /// Weight in the Maglev table now (configured weight, ramped by slowstart); 0 = no entries.
    pub weight: u32,
}

/// A service as the data plane should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub on_backend_down: OnBackendDown,
    pub table_size: u32,
    pub backends: Vec<BackendSpec>,
    /// nat mode: the SNAT pool's addresses (`snat_source`, `node` resolved); empty: the VIP.
    pub snat_sources: Vec<Ipv4Addr>,
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
            snat_sources: service.snat_addresses(None),
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

    /// The same, `node` being this node's address (`snat_source = "node"`).
    pub fn with_node(service: &config::Service, node: Option<Ipv4Addr>) -> Self {
        ServiceSpec {
            snat_sources: service.snat_addresses(node),
            ..Self::from_config(service)
        }
    }
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

/// The `BACKENDS` entry of a backend of service slot `service`.
pub fn backend_entry(b: &BackendSpec, service: u32) -> Backend {
    Backend {
        addr: u32::from(*b.address.ip()).to_be(),
        port: b.address.port().to_be(),
        _pad: 0,
        state: match b.state {
            BackendState::Up => BACKEND_UP,
            BackendState::Drain => BACKEND_DRAIN,
            BackendState::Down => BACKEND_DOWN,
        },
        service,
        _tail: (),
    }
}

/// Whether a backend entry, written as `before`, refuses new flows once `after` replaces it:
/// such an entry is written only after the tables stop naming the backend.
pub fn stops_taking_new_flows(before: Option<&Backend>, after: &Backend) -> bool {
    before.is_some_and(|b| b.state == BACKEND_UP) && after.state != BACKEND_UP
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

/// The `SNAT_SOURCES` entry of a service: its VIP and SNAT pool.
pub fn snat_sources_entry(s: &ServiceSpec) -> SnatSources {
    let mut entry = SnatSources {
        vip: u32::from(s.vip).to_be(),
        ..Default::default()
    };
    for (i, a) in s.snat_sources.iter().take(MAX_SNAT_SOURCES).enumerate() {
        entry.addrs[i] = u32::from(*a).to_be();
        entry.count = i as u32 + 1;
    }
    entry
}

/// The `VIPS` entries (keys in network order) for `services` in their slots, and the
/// addresses of their SNAT pools that are no VIP (`VIP_SNAT_ONLY`, no port).
pub fn vip_entries(
    services: &[ServiceSpec],
    slots: &BTreeMap<String, u32>,
) -> Result<BTreeMap<u32, VipInfo>> {
    let mut out: BTreeMap<u32, VipInfo> = BTreeMap::new();
    for s in services {
        let slot = *slots
            .get(&s.name)
            .ok_or_else(|| anyhow!("service {} has no slot", s.name))?;
        let info = out.entry(u32::from(s.vip).to_be()).or_default();
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
        for a in &s.snat_sources {
            out.entry(u32::from(*a).to_be()).or_insert(VipInfo {
                flags: VIP_SNAT_ONLY,
                ..Default::default()
            });
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
        let t = table(&s, |b| u32::from(b.address.ip().octets()[3]));
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
        let slot = |s: &BackendSpec| u32::from(s.address.ip().octets()[3]);
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
        let vip = entries[&u32::from(Ipv4Addr::new(192, 0, 2, 100)).to_be()];
        assert_eq!(vip.count, 2);
        assert_eq!(vip.ports[0].port, 6443u16.to_be());
        assert_eq!(vip.ports[0].service, 3);
        assert_eq!(vip.ports[0].flags, SERVICE_RESET_ON_DOWN);
        assert_eq!(vip.ports[1].port, 30080u16.to_be());
        assert_eq!(vip.ports[1].service, 4);
        assert_eq!(entries.len(), 2);
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
        let entry = |state| Backend {
            state,
            ..Default::default()
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
        let e = backend_entry(&b, 7);
        assert_eq!(e.addr.to_ne_bytes(), [192, 0, 2, 50]);
        assert_eq!(e.port.to_ne_bytes(), [0x19, 0x2b]);
        assert_eq!(e.state, BACKEND_DRAIN);
        assert_eq!(e.service, 7);
    }
}
