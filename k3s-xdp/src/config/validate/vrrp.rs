//! `[vrrp]`'s rules: every VIP moved by it (unless `[bgp]` announces it), its peers, what each
//! VRRP version carries, a track that can pass.

use super::{
    super::{duration, parse::Cx, Config, InitialState, Vrrp},
    announced, family, host_prefix,
};
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

pub(super) fn vrrp_rules(config: &Config, v: &Vrrp, cx: &mut Cx) {
    if !v.preempt && v.state == InitialState::Master && !cx.is_bad("vrrp.state") {
        cx.warn(
            "vrrp.state",
            "state = \"master\" is ignored with preempt = false: a node that comes back must not take the VIP from a running master, so it starts as backup",
        );
    }

    // Every VIP must move with the VRRP instance.
    if !cx.any_bad_under("vrrp.virtual_ipaddress") {
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (j, a) in v.virtual_ipaddress.iter().enumerate() {
            if let Some(&first) = seen.get(&a.addr) {
                let line = cx.line_of(&format!("vrrp.virtual_ipaddress[{first}]"));
                cx.error(
                    &format!("vrrp.virtual_ipaddress[{j}]"),
                    format!("{} is already listed (line {line})", a.addr),
                );
            } else {
                seen.insert(a.addr, j);
            }
        }
        let announced = announced(config, cx);
        for (i, s) in config.services.iter().enumerate() {
            let vip_path = format!("service[{i}].vip");
            if cx.is_bad(&vip_path) || seen.contains_key(&s.vip) || announced.contains(&s.vip) {
                continue;
            }
            cx.error(
                &vip_path,
                format!(
                    "VIP {} of service {:?} is not in vrrp.virtual_ipaddress, so VRRP would not \
                     hold it; add \"{}/{}\" (or with the prefix of its subnet)",
                    s.vip,
                    s.name,
                    s.vip,
                    host_prefix(s.vip)
                ),
            );
        }
    }

    // Peers: other nodes, each once.
    let virtual_addrs: HashSet<IpAddr> = v.virtual_ipaddress.iter().map(|a| a.addr).collect();
    if let Some(src) = v.unicast_src_ip {
        if virtual_addrs.contains(&src) {
            cx.error(
                "vrrp.unicast_src_ip",
                format!("{src} is a virtual address; unicast_src_ip is this node's own address"),
            );
        }
    }
    let mut peers: HashMap<IpAddr, usize> = HashMap::new();
    for (j, &p) in v.unicast_peers.iter().enumerate() {
        let path = format!("vrrp.unicast_peers[{j}]");
        if Some(p) == v.unicast_src_ip {
            cx.error(
                &path,
                format!("{p} is unicast_src_ip, this node itself; list the other nodes only"),
            );
        } else if virtual_addrs.contains(&p) {
            cx.error(
                &path,
                format!("{p} is a virtual address; list the other nodes' own addresses"),
            );
        } else if let Some(&first) = peers.get(&p) {
            let line = cx.line_of(&format!("vrrp.unicast_peers[{first}]"));
            cx.error(&path, format!("{p} is already listed (line {line})"));
        } else {
            peers.insert(p, j);
        }
    }

    // Each family's virtual router sends to the peers of its family.
    let has = |v4: bool| v.virtual_ipaddress.iter().any(|a| a.addr.is_ipv4() == v4);
    if !cx.any_bad_under("vrrp.virtual_ipaddress") {
        for (j, &p) in v.unicast_peers.iter().enumerate() {
            if !has(p.is_ipv4()) {
                cx.error(
                    &format!("vrrp.unicast_peers[{j}]"),
                    format!(
                        "{p} is an {} peer, and virtual_ipaddress has no {} address, so no \
                         virtual router would send to it",
                        family(p),
                        family(p)
                    ),
                );
            }
        }
        if let Some(src) = v.unicast_src_ip.filter(|src| !has(src.is_ipv4())) {
            cx.error(
                "vrrp.unicast_src_ip",
                format!(
                    "{src} is an {} address, and virtual_ipaddress has no {} address, so no \
                     virtual router would send from it",
                    family(src),
                    family(src)
                ),
            );
        }
    }

    // What each VRRP version can carry.
    if !cx.is_bad("vrrp.version") {
        if v.version == 2 && !cx.any_bad_under("vrrp.virtual_ipaddress") {
            if let Some(j) = v.virtual_ipaddress.iter().position(|a| a.addr.is_ipv6()) {
                cx.error(
                    &format!("vrrp.virtual_ipaddress[{j}]"),
                    "VRRP version 2 carries IPv4 addresses only (RFC 3768); IPv6 addresses \
                     need version = 3 (RFC 9568), as keepalived's IPv6 instances",
                );
            }
        }
        if v.version == 3 && v.auth_pass.is_some() {
            cx.error(
                "vrrp.auth_pass",
                "auth_pass is only sent by VRRP version 2 (keepalived's auth_type PASS); set \
                 version = 2, or remove auth_pass",
            );
        }
        if !cx.is_bad("vrrp.advert_int") {
            if let Some(problem) = advert_int_problem(v.advert_int, v.version) {
                cx.error("vrrp.advert_int", problem);
            }
        }
    }

    if !v.preempt && !v.preempt_delay.is_zero() && !cx.is_bad("vrrp.preempt") {
        cx.warn(
            "vrrp.preempt_delay",
            "preempt_delay has no effect with preempt = false",
        );
    }

    // A track that can never pass keeps this node out of MASTER for good.
    let min = v.track.min_healthy_backends;
    let total: usize = config.services.iter().map(|s| s.backends.len()).sum();
    if (total as u64) < u64::from(min)
        && !cx.is_bad("vrrp.track.min_healthy_backends")
        && !cx.any_bad_under("service")
    {
        cx.error(
            "vrrp.track.min_healthy_backends",
            format!(
                "only {total} backend(s) are configured in all, so a track of {min} healthy \
                 backends would always fail"
            ),
        );
    }
}

/// Why `advert_int` cannot be sent by VRRP `version`, if it cannot: version 3 carries
/// centiseconds in 12 bits, version 2 whole seconds in 8.
fn advert_int_problem(advert_int: Duration, version: u8) -> Option<String> {
    let ms = advert_int.as_millis();
    let shown = duration::format(advert_int);
    if version == 2 {
        if !ms.is_multiple_of(1000) || !(1..=255).contains(&(ms / 1000)) {
            return Some(format!(
                "VRRP version 2 sends whole seconds from 1s to 255s, found {shown:?} \
                 (version 3 allows centiseconds)"
            ));
        }
    } else if !ms.is_multiple_of(10) || !(1..=4095).contains(&(ms / 10)) {
        return Some(format!(
            "VRRP version 3 sends whole centiseconds from 10ms to 40s950ms, found {shown:?}"
        ));
    }
    None
}
