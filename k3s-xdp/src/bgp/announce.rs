//! Which VIPs this node announces, and why it withdraws the others: a pure function of the
//! `[bgp]` settings, the services, their healthy backends and whether the data plane is
//! attached. The announcer ([`runtime`](super::runtime)) makes the kernel table match it.

use crate::config::{Bgp, Service};
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// What the controller wants announced: the kernel table and each announced VIP's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub table: u32,
    pub vips: BTreeMap<IpAddr, Verdict>,
}

/// Whether a VIP is announced, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Announce,
    /// Withdrawn, with the reason in the operator's words.
    Withdraw(String),
}

impl Verdict {
    pub fn announce(&self) -> bool {
        *self == Verdict::Announce
    }
}

/// The verdict on each VIP `bgp` announces: withdrawn while the data plane is detached (with
/// `track.dataplane`) or while one of the VIP's services has fewer than
/// `track.min_healthy_backends` healthy backends (`healthy`, by service name).
pub fn wanted(
    bgp: &Bgp,
    services: &[Service],
    healthy: &HashMap<String, usize>,
    attached: bool,
) -> Wanted {
    let min = bgp.track.min_healthy_backends as usize;
    let vips = bgp
        .announced(services)
        .into_iter()
        .map(|vip| {
            let verdict = if bgp.track.dataplane && !attached {
                Verdict::Withdraw("XDP program detached".into())
            } else {
                let short: Vec<String> = services
                    .iter()
                    .filter(|s| s.vip == vip)
                    .filter_map(|s| {
                        let n = healthy.get(&s.name).copied().unwrap_or(0);
                        (n < min).then(|| format!("service {} has {n} healthy backend(s)", s.name))
                    })
                    .collect();
                if short.is_empty() {
                    Verdict::Announce
                } else {
                    Verdict::Withdraw(format!(
                        "{} (track.min_healthy_backends = {min})",
                        short.join(", ")
                    ))
                }
            };
            (vip, verdict)
        })
        .collect();
    Wanted {
        table: bgp.table,
        vips,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BgpTrack, Service};

    fn services() -> Vec<Service> {
        let a: IpAddr = "192.0.2.100".parse().unwrap();
        let b: IpAddr = "192.0.2.110".parse().unwrap();
        vec![
            Service::new("api", a, 6443),
            Service::new("api-udp", a, 8472),
            Service::new("web", b, 443),
        ]
    }

    fn healthy(n: &[(&str, usize)]) -> HashMap<String, usize> {
        n.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn a_vip_is_withdrawn_when_one_of_its_services_is_short() {
        let bgp = Bgp::new(200);
        let w = wanted(
            &bgp,
            &services(),
            &healthy(&[("api", 3), ("api-udp", 0), ("web", 1)]),
            true,
        );
        assert_eq!(w.table, 200);
        let a: IpAddr = "192.0.2.100".parse().unwrap();
        let b: IpAddr = "192.0.2.110".parse().unwrap();
        assert_eq!(
            w.vips[&a],
            Verdict::Withdraw(
                "service api-udp has 0 healthy backend(s) (track.min_healthy_backends = 1)".into()
            )
        );
        assert!(w.vips[&b].announce());
        // Detached: everything withdrawn, unless the track ignores the data plane.
        let w = wanted(&bgp, &services(), &healthy(&[("api", 3)]), false);
        assert!(w
            .vips
            .values()
            .all(|v| *v == Verdict::Withdraw("XDP program detached".into())));
        let relaxed = Bgp {
            track: BgpTrack {
                dataplane: false,
                min_healthy_backends: 0,
            },
            ..Bgp::new(200)
        };
        let w = wanted(&relaxed, &services(), &healthy(&[]), false);
        assert!(w.vips.values().all(Verdict::announce));
    }

    #[test]
    fn only_the_listed_vips_are_announced() {
        let b: IpAddr = "192.0.2.110".parse().unwrap();
        let bgp = Bgp {
            vips: Some(vec![b]),
            ..Bgp::new(7)
        };
        let w = wanted(&bgp, &services(), &healthy(&[("web", 1)]), true);
        assert_eq!(w.vips.keys().copied().collect::<Vec<_>>(), vec![b]);
    }
}
