//! `[bgp]` and its `track`.

use super::*;

pub(super) fn read_bgp(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> Bgp {
    let t = Fields::open(cx, path, table, span, "[bgp]", BGP_KEYS);
    let routing_table = t.require(
        cx,
        "table",
        "the kernel routing table the routing daemon exports, like 200",
        |cx, p, i| {
            let table = int(cx, p, i, 0u32, u32::MAX)?;
            if let Some(what) = config::reserved_table(table) {
                cx.error_at(
                    p,
                    i.span(),
                    format!(
                        "table {table} is {what}, which the kernel itself uses; choose a table \
                         of its own that only the routing daemon reads, like 200"
                    ),
                );
                return None;
            }
            Some(table)
        },
    );
    let vips = t.get(cx, "vips", |cx, p, item| {
        let elems = array(cx, p, item, "an array of VIPs like [\"192.0.2.100\"]")?;
        let vips: Vec<Option<IpAddr>> = elems.iter().map(|e| vip(cx, &e.path, &e.item())).collect();
        vips.into_iter().collect()
    });
    let track = t
        .get(cx, "track", |cx, p, item| {
            sub_table(
                cx,
                p,
                item,
                "a table like { dataplane = true, min_healthy_backends = 1 }",
                read_bgp_track,
            )
        })
        .unwrap_or_default();
    let drain_time = t
        .get(cx, "drain_time", |cx, p, i| {
            delay_at_most(cx, p, i, defaults::BGP_DRAIN_TIME_MAX, "")
        })
        .unwrap_or(defaults::BGP_DRAIN_TIME);
    let bird_socket = t
        .get(cx, "bird_socket", file_path)
        .unwrap_or_else(|| PathBuf::from(defaults::BIRD_SOCKET));
    Bgp {
        table: routing_table.unwrap_or(1),
        vips,
        track,
        drain_time,
        bird_socket,
    }
}

fn read_bgp_track(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> BgpTrack {
    let t = Fields::open(cx, path, table, span, "bgp.track", BGP_TRACK_KEYS);
    serving(cx, &t)
}
