//! `[bgp]`'s rules: what it announces, against `[vrrp]` and the services.

use super::super::{parse::Cx, Bgp, Config};
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

/// The VIPs `[bgp]` announces, when the section and its `vips` read well.
pub(super) fn announced(config: &Config, cx: &Cx) -> HashSet<IpAddr> {
    match &config.bgp {
        Some(bgp) if !cx.is_bad("bgp.vips") => {
            bgp.announced(&config.services).into_iter().collect()
        }
        _ => HashSet::new(),
    }
}

/// `[bgp]`: listed VIPs are service VIPs, each once; a VIP is announced by BGP or moved by
/// VRRP, never both; a track that can never pass is refused.
pub(super) fn bgp_rules(config: &Config, bgp: &Bgp, cx: &mut Cx) {
    let vips: HashSet<IpAddr> = config.services.iter().map(|s| s.vip).collect();
    if let (Some(listed), false) = (&bgp.vips, cx.any_bad_under("bgp.vips")) {
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (j, &vip) in listed.iter().enumerate() {
            let path = format!("bgp.vips[{j}]");
            if let Some(&first) = seen.get(&vip) {
                let line = cx.line_of(&format!("bgp.vips[{first}]"));
                cx.error(&path, format!("{vip} is already listed (line {line})"));
            } else if !vips.contains(&vip) && !cx.any_bad_under("service") {
                cx.error(
                    &path,
                    format!("{vip} is the VIP of no [[service]]: only service VIPs are announced"),
                );
            } else {
                seen.insert(vip, j);
            }
        }
    }
    if let Some(v) = &config.vrrp {
        let announced = bgp.announced(&config.services);
        for (j, a) in v.virtual_ipaddress.iter().enumerate() {
            if !announced.contains(&a.addr) || cx.any_bad_under("bgp.vips") {
                continue;
            }
            let why = format!(
                "{} is both moved by VRRP (only the master holds it) and announced by [bgp]                  (every node that can serve it announces it): choose one",
                a.addr
            );
            match bgp.vips.as_ref().and_then(|l| l.iter().position(|x| *x == a.addr)) {
                Some(k) => cx.error(&format!("bgp.vips[{k}]"), why),
                None => cx.error(
                    &format!("vrrp.virtual_ipaddress[{j}]"),
                    format!(
                        "{why}; [bgp] announces every service VIP unless `bgp.vips` lists the                          ones it announces"
                    ),
                ),
            }
        }
    }
    let min = bgp.track.min_healthy_backends;
    if cx.is_bad("bgp.track.min_healthy_backends") || cx.any_bad_under("service") {
        return;
    }
    for vip in bgp.announced(&config.services) {
        for s in config.services.iter().filter(|s| s.vip == vip) {
            if (s.backends.len() as u64) < u64::from(min) {
                cx.error(
                    "bgp.track.min_healthy_backends",
                    format!(
                        "service {:?} has {} backend(s), so a track of {min} healthy backends in                          each service of {vip} would never announce it",
                        s.name,
                        s.backends.len()
                    ),
                );
                return;
            }
        }
    }
}
