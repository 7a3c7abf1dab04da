//! `[vrrp]` and its `track`.

use super::*;

pub(super) fn read_vrrp(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> Vrrp {
    let t = Fields::open(cx, path, table, span, "[vrrp]", VRRP_KEYS);
    let virtual_router_id = t.require(cx, "virtual_router_id", "1..=255, like 51", |cx, p, i| {
        int(cx, p, i, 1u8, u8::MAX)
    });
    let priority = t
        .get(cx, "priority", |cx, p, i| {
            integer(
                cx,
                p,
                i,
                1,
                254,
                "255 is reserved for the address owner, 0 for a master that leaves",
            )
            .and_then(|v| u8::try_from(v).ok())
        })
        .unwrap_or(defaults::PRIORITY);
    let state = t
        .get(cx, "state", |cx, p, i| {
            keyword(cx, p, i, InitialState::ALL, true)
        })
        .unwrap_or(defaults::STATE);
    let advert_int = t
        .get(cx, "advert_int", positive_duration)
        .unwrap_or(defaults::ADVERT_INT);
    let virtual_ipaddress = t
        .require(
            cx,
            "virtual_ipaddress",
            "a list like [\"192.0.2.100/24\"]",
            virtual_addresses,
        )
        .unwrap_or_default();
    let unicast_src_ip = t.get(cx, "unicast_src_ip", peer);
    let unicast_peers = t
        .get(cx, "unicast_peers", |cx, p, item| {
            let elems = array(cx, p, item, "an array of addresses like [\"192.0.2.99\"]")?;
            let peers: Vec<Option<IpAddr>> =
                elems.iter().map(|e| peer(cx, &e.path, &e.item())).collect();
            peers.into_iter().collect()
        })
        .unwrap_or_default();
    let preempt = t.get(cx, "preempt", boolean).unwrap_or(defaults::PREEMPT);
    let preempt_delay = t
        .get(cx, "preempt_delay", |cx, p, i| {
            delay_at_most(
                cx,
                p,
                i,
                defaults::PREEMPT_DELAY_MAX,
                " (keepalived's limit)",
            )
        })
        .unwrap_or(defaults::PREEMPT_DELAY);
    let version = t
        .get(cx, "version", |cx, p, i| {
            integer(
                cx,
                p,
                i,
                2,
                3,
                "3: RFC 9568; 2: for keepalived peers, with auth_pass",
            )
            .and_then(|v| u8::try_from(v).ok())
        })
        .unwrap_or(defaults::VRRP_VERSION);
    let auth_pass = t.get(cx, "auth_pass", |cx, p, i| {
        let text = string(cx, p, i)?;
        if text.is_empty() || text.len() > defaults::AUTH_PASS_MAX_BYTES {
            cx.error_at(
                p,
                i.span(),
                format!(
                    "must be 1 to {} bytes (keepalived would silently cut a longer one), found {} bytes",
                    defaults::AUTH_PASS_MAX_BYTES,
                    text.len()
                ),
            );
            return None;
        }
        Some(text.to_string())
    });
    let track = t
        .get(cx, "track", |cx, p, item| {
            sub_table(
                cx,
                p,
                item,
                "a table like { dataplane = true, min_healthy_backends = 1 }",
                read_track,
            )
        })
        .unwrap_or_default();
    let garp_master_repeat = t
        .get(cx, "garp_master_repeat", |cx, p, i| {
            int(cx, p, i, 1, defaults::GARP_MASTER_REPEAT_MAX)
        })
        .unwrap_or(defaults::GARP_MASTER_REPEAT);
    let garp_interval = t
        .get(cx, "garp_interval", delay)
        .unwrap_or(defaults::GARP_INTERVAL);
    let garp_master_refresh = t
        .get(cx, "garp_master_refresh", delay)
        .unwrap_or(defaults::GARP_MASTER_REFRESH);
    Vrrp {
        virtual_router_id: virtual_router_id.unwrap_or(1),
        priority,
        state,
        advert_int,
        virtual_ipaddress,
        unicast_src_ip,
        unicast_peers,
        preempt,
        preempt_delay,
        version,
        auth_pass,
        track,
        garp_master_repeat,
        garp_interval,
        garp_master_refresh,
    }
}

pub(super) fn virtual_addresses(
    cx: &mut Cx,
    path: &str,
    item: &Item,
) -> Option<Vec<VirtualAddress>> {
    let elems = array(
        cx,
        path,
        item,
        "an array of addresses like [\"192.0.2.100/24\"]",
    )?;
    if elems.is_empty() {
        cx.error_at(
            path,
            item.span(),
            "expected at least one address, like [\"192.0.2.100/24\"]",
        );
        return None;
    }
    let addrs: Vec<Option<VirtualAddress>> = elems
        .iter()
        .map(|e| virtual_address(cx, &e.path, &e.item()))
        .collect();
    addrs.into_iter().collect()
}

/// `"ip/prefix"` or `"ip"` (a /32, an IPv6 one a /128).
pub(super) fn virtual_address(cx: &mut Cx, path: &str, item: &Item) -> Option<VirtualAddress> {
    let text = string(cx, path, item)?;
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let Ok(addr) = ip.parse::<IpAddr>() else {
        cx.error_at(
            path,
            item.span(),
            format!(
                "expected \"IP/PREFIX\" like \"192.0.2.100/24\" or \"2001:db8::100/64\", found {text:?}"
            ),
        );
        return None;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix.map(str::parse::<u8>) {
        None if addr.is_ipv4() => defaults::VIRTUAL_ADDRESS_PREFIX,
        None => defaults::VIRTUAL_ADDRESS_PREFIX6,
        Some(Ok(p)) if p <= max => p,
        Some(_) => {
            cx.error_at(
                path,
                item.span(),
                format!("expected a prefix length of 0..={max} after the address, found {text:?}"),
            );
            return None;
        }
    };
    if let Some(what) = not_unicast(addr) {
        cx.error_at(
            path,
            item.span(),
            format!("expected the address of a host, found {what} ({addr})"),
        );
        return None;
    }
    Some(VirtualAddress { addr, prefix_len })
}

pub(super) fn read_track(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> Track {
    let t = Fields::open(cx, path, table, span, "vrrp.track", TRACK_KEYS);
    let serving = serving(cx, &t);
    Track {
        dataplane: serving.dataplane,
        min_healthy_backends: serving.min_healthy_backends,
        weight: t
            .get(cx, "weight", |cx, p, i| {
                integer(
                    cx,
                    p,
                    i,
                    -i64::from(defaults::TRACK_WEIGHT_MAX),
                    i64::from(defaults::TRACK_WEIGHT_MAX),
                    "0: FAULT while the track fails; otherwise added to the priority",
                )
                .and_then(|v| i32::try_from(v).ok())
            })
            .unwrap_or(defaults::TRACK_WEIGHT),
    }
}

/// The keys every track has (`[vrrp]`'s and `[bgp]`'s): what makes this node able to serve.
pub(super) fn serving(cx: &mut Cx, t: &Fields) -> BgpTrack {
    BgpTrack {
        dataplane: t
            .get(cx, "dataplane", boolean)
            .unwrap_or(defaults::TRACK_DATAPLANE),
        min_healthy_backends: t
            .get(cx, "min_healthy_backends", |cx, p, i| {
                int(cx, p, i, 0, k3s_xdp_common::MAX_BACKENDS)
            })
            .unwrap_or(defaults::TRACK_MIN_HEALTHY_BACKENDS),
    }
}
