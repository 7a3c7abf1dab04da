//! `[[service]]`, its backends and `[service.health]`.

use super::*;

/// Stands for a `[[service]]` element that was not a table (already reported).
pub(super) fn placeholder_service() -> Service {
    Service {
        name: String::new(),
        vip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: 0,
        protocol: defaults::PROTOCOL,
        mode: defaults::MODE,
        on_backend_down: defaults::ON_BACKEND_DOWN,
        snat_source: vec![SnatSource::Vip],
        table_size: defaults::TABLE_SIZE,
        backends: Vec::new(),
        health: Health::default(),
    }
}

pub(super) fn placeholder_backend() -> BackendConfig {
    BackendConfig {
        name: String::new(),
        address: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        weight: defaults::BACKEND_WEIGHT,
    }
}

pub(super) fn read_service(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> Service {
    let t = Fields::open(cx, path, table, span, "[[service]]", SERVICE_KEYS);
    let name = t.require(cx, "name", "a name like \"k3s-api\"", name);
    let vip = t.require(
        cx,
        "vip",
        "an IP address like \"192.0.2.100\" or \"2001:db8::100\"",
        vip,
    );
    let port = t.require(cx, "port", "a port like 6443", port);
    let protocol = t
        .get(cx, "protocol", |cx, p, i| {
            keyword(cx, p, i, Protocol::ALL, false)
        })
        .unwrap_or(defaults::PROTOCOL);
    let mode = t
        .get(cx, "mode", |cx, p, i| keyword(cx, p, i, Mode::ALL, false))
        .unwrap_or(defaults::MODE);
    let on_backend_down = t
        .get(cx, "on_backend_down", |cx, p, i| {
            keyword(cx, p, i, OnBackendDown::ALL, false)
        })
        .unwrap_or(defaults::ON_BACKEND_DOWN);
    let snat_source = t
        .get(cx, "snat_source", snat_source)
        .unwrap_or_else(|| vec![SnatSource::Vip]);
    let table_size = t
        .get(cx, "table_size", table_size)
        .unwrap_or(defaults::TABLE_SIZE);
    let backends = t
        .require(
            cx,
            "backends",
            "a list like [{ name = \"server-1\", address = \"192.0.2.50:6443\" }]",
            |cx, p, i| {
                table_list(
                    cx,
                    p,
                    i,
                    "an array of backends like [{ name = ..., address = ... }]",
                )
            },
        )
        .unwrap_or_default();
    let backends_path = t.path("backends");
    if backends.is_empty() && !cx.is_bad(&backends_path) {
        cx.error(&backends_path, "at least one backend is required");
    }
    let backends = backends
        .into_iter()
        .map(|(path, table)| match table {
            Some((table, span)) => read_backend(cx, &path, table, span, port),
            None => placeholder_backend(),
        })
        .collect();
    let health = t
        .get(cx, "health", |cx, p, item| match item.as_table_like() {
            Some(table) => Some(read_health(cx, p, table, item.span())),
            None => {
                wrong_type(cx, p, item, "a [service.health] table");
                None
            }
        })
        .unwrap_or_default();
    Service {
        name: name.unwrap_or_default(),
        vip: vip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        port: port.unwrap_or(0),
        protocol,
        mode,
        on_backend_down,
        snat_source,
        table_size,
        backends,
        health,
    }
}

/// `"vip"`, `"node"`, `"IP"`, or a list of them (a pool).
pub(super) fn snat_source(cx: &mut Cx, path: &str, item: &Item) -> Option<Vec<SnatSource>> {
    const EXPECTED: &str =
        "\"vip\", \"node\", an IP address like \"192.0.2.10\", or a list of them";
    if item.as_array().is_some() {
        let elems = array(cx, path, item, EXPECTED)?;
        if elems.is_empty() {
            cx.error_at(
                path,
                item.span(),
                format!("expected {EXPECTED}, found an empty list"),
            );
            return None;
        }
        let sources: Vec<Option<SnatSource>> = elems
            .iter()
            .map(|e| one_snat_source(cx, &e.path, &e.item()))
            .collect();
        return sources.into_iter().collect();
    }
    if item.as_str().is_none() {
        wrong_type(cx, path, item, EXPECTED);
        return None;
    }
    Some(vec![one_snat_source(cx, path, item)?])
}

pub(super) fn one_snat_source(cx: &mut Cx, path: &str, item: &Item) -> Option<SnatSource> {
    match string(cx, path, item)? {
        "vip" => Some(SnatSource::Vip),
        "node" => Some(SnatSource::Node),
        text if text.parse::<std::net::IpAddr>().is_err() => {
            cx.error_at(
                path,
                item.span(),
                format!(
                    "expected \"vip\", \"node\" or an IP address like \"192.0.2.10\", found {text:?}"
                ),
            );
            None
        }
        _ => host_ip(cx, path, item).map(SnatSource::Address),
    }
}

pub(super) fn table_size(cx: &mut Cx, path: &str, item: &Item) -> Option<u32> {
    let size = int(
        cx,
        path,
        item,
        defaults::TABLE_SIZE_MIN,
        defaults::TABLE_SIZE_MAX,
    )?;
    if !crate::maglev::is_prime(size) {
        let next = next_prime(size).filter(|&p| p <= defaults::TABLE_SIZE_MAX);
        let hint = next.map_or(String::new(), |p| format!("; the next prime is {p}"));
        cx.error_at(
            path,
            item.span(),
            format!("must be a prime number (Maglev needs it), found {size}{hint}"),
        );
        return None;
    }
    Some(size)
}

/// The smallest prime `>= n`, if it fits in a u32.
pub(in crate::config) fn next_prime(n: u32) -> Option<u32> {
    (n..=u32::MAX).find(|&c| crate::maglev::is_prime(c))
}

pub(super) fn read_backend(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
    service_port: Option<u16>,
) -> BackendConfig {
    let t = Fields::open(cx, path, table, span, "a backend", BACKEND_KEYS);
    let name = t.require(cx, "name", "a name like \"server-1\"", name);
    let address = t.require(
        cx,
        "address",
        "\"IP:PORT\" like \"192.0.2.50:6443\" or \"[2001:db8::50]:6443\"",
        |cx, p, i| backend_address(cx, p, i, service_port),
    );
    let weight = t
        .get(cx, "weight", |cx, p, i| {
            integer(
                cx,
                p,
                i,
                0,
                i64::from(defaults::BACKEND_WEIGHT_MAX),
                "0 takes no new flows",
            )
            .and_then(|v| u32::try_from(v).ok())
        })
        .unwrap_or(defaults::BACKEND_WEIGHT);
    BackendConfig {
        name: name.unwrap_or_default(),
        address: address.unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))),
        weight,
    }
}

pub(super) fn read_health(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> Health {
    let t = Fields::open(cx, path, table, span, "[service.health]", HEALTH_KEYS);
    let check = t
        .get(cx, "check", |cx, p, i| {
            keyword(cx, p, i, CheckKind::ALL, false)
        })
        .unwrap_or(defaults::CHECK);
    let check_path = t
        .get(cx, "path", |cx, p, i| {
            let text = string(cx, p, i)?;
            if !text.starts_with('/') {
                cx.error_at(
                    p,
                    i.span(),
                    format!("expected a path starting with '/', like \"/readyz\", found {text:?}"),
                );
                return None;
            }
            Some(text.to_string())
        })
        .unwrap_or_else(|| defaults::CHECK_PATH.to_string());
    let expect = t
        .get(cx, "expect", expect)
        .unwrap_or_else(|| defaults::CHECK_EXPECT.to_vec());
    let inter = t
        .get(cx, "inter", positive_duration)
        .unwrap_or(defaults::INTER);
    Health {
        check,
        path: check_path,
        expect,
        ca_file: t.get(cx, "ca_file", file_path),
        client_cert: t.get(cx, "client_cert", file_path),
        client_key: t.get(cx, "client_key", file_path),
        bearer_token_file: t.get(cx, "bearer_token_file", file_path),
        port: t.get(cx, "port", port),
        inter,
        downinter: t.get(cx, "downinter", positive_duration).unwrap_or(inter),
        fastinter: t.get(cx, "fastinter", positive_duration).unwrap_or(inter),
        rise: t
            .get(cx, "rise", |cx, p, i| {
                int(cx, p, i, 1, defaults::RISE_FALL_MAX)
            })
            .unwrap_or(defaults::RISE),
        fall: t
            .get(cx, "fall", |cx, p, i| {
                int(cx, p, i, 1, defaults::RISE_FALL_MAX)
            })
            .unwrap_or(defaults::FALL),
        timeout: t
            .get(cx, "timeout", positive_duration)
            .unwrap_or(defaults::CHECK_TIMEOUT),
        slowstart: t.get(cx, "slowstart", delay).unwrap_or(defaults::SLOWSTART),
    }
}

pub(super) fn expect(cx: &mut Cx, path: &str, item: &Item) -> Option<Vec<u16>> {
    let elems = array(cx, path, item, "an array of HTTP status codes like [200]")?;
    if elems.is_empty() {
        cx.error_at(
            path,
            item.span(),
            "expected at least one HTTP status code, like [200]",
        );
        return None;
    }
    let codes: Vec<Option<u16>> = elems
        .iter()
        .map(|e| int(cx, &e.path, &e.item(), 100u16, 599))
        .collect();
    codes.into_iter().collect()
}
