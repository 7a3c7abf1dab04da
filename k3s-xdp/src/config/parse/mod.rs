//! The walk over the TOML document: every key is read on its own here (type, range, format,
//! unknown keys), every problem is recorded with its position, and the walk goes on, so one
//! `k3s-xdp check` shows all the errors of a file.
//!
//! `toml_edit`'s `ImDocument` keeps the byte span of every key and value; [`Cx`] turns spans
//! into line:column, remembers where each dotted key sits (so `validate/` can point at the
//! keys its cross-field rules involve) and which keys were wrong (so those rules do not pile
//! follow-on errors on a value that was already reported). A wrong or missing value is replaced
//! by its default, or by a placeholder, and the config is only returned when nothing was wrong.
//!
//! Here: the walk's context and the top level. [`keys`]: each table's keys and the help an
//! unknown key gets; [`values`]: the scalar readers; [`service`], [`vrrp`] and [`bgp`]: those
//! tables.
//! Rules that span keys are in `validate/`.

use super::{
    self as config, defaults, duration, duration::DurationError, error::line_column, validate,
    BackendConfig, Bgp, BgpTrack, CheckKind, Config, ConfigError, ConfigErrors, FlowSync, Health,
    InitialState, Mode, OnBackendDown, Protocol, Service, SnatSource, SynFlood, Track,
    VirtualAddress, Vrrp, XdpMode,
};
use std::{
    collections::{HashMap, HashSet},
    fmt::Display,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};
use toml_edit::{ImDocument, Item, TableLike, Value};

mod bgp;
mod keys;
mod service;
mod values;
mod vrrp;

use bgp::*;
use keys::*;
pub(super) use service::next_prime;
use service::*;
use values::*;
use vrrp::*;

pub(super) fn parse(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    let mut cx = Cx::new(text, origin);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            // The message is several lines ("invalid array\nexpected `]`"); keep one line.
            let message = e.message().trim().replace('\n', "; ");
            cx.error_at("", e.span(), format!("TOML syntax error: {message}"));
            return Err(ConfigErrors(cx.errors));
        }
    };
    let config = read_config(&mut cx, doc.as_table());
    validate::validate(&config, &mut cx);
    cx.finish(config)
}

/// Where the errors and warnings go, and what is known about each key's place in the file.
pub(super) struct Cx<'a> {
    text: &'a str,
    file: PathBuf,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Byte offset of each key present in the file, by dotted path (its value; for a table,
    /// its header).
    at: HashMap<String, usize>,
    /// Paths that had an error; rules about them, or about their children, are skipped.
    bad: HashSet<String>,
}

impl<'a> Cx<'a> {
    fn new(text: &'a str, origin: &Path) -> Self {
        Cx {
            text,
            file: origin.to_path_buf(),
            errors: Vec::new(),
            warnings: Vec::new(),
            at: HashMap::new(),
            bad: HashSet::new(),
        }
    }

    fn note(&mut self, path: &str, span: Option<Range<usize>>) {
        if let Some(span) = span {
            self.at.entry(path.to_string()).or_insert(span.start);
        }
    }

    /// Whether the key at `path` is written in the file (rather than defaulted).
    pub(super) fn present(&self, path: &str) -> bool {
        self.at.contains_key(path)
    }

    /// Line of `path`, or of its nearest ancestor written in the file; 0 if none is.
    pub(super) fn line_of(&self, path: &str) -> usize {
        self.position(path).0
    }

    fn position(&self, path: &str) -> (usize, usize) {
        ancestors(path)
            .find_map(|p| self.at.get(p))
            .map_or((0, 0), |&offset| line_column(self.text, offset))
    }

    fn report(&self, path: &str, span: Option<Range<usize>>, message: String) -> ConfigError {
        let (line, column) = match span {
            Some(span) => line_column(self.text, span.start),
            None => self.position(path),
        };
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: path.to_string(),
            message,
        }
    }

    /// An error at `span` (or, without one, where `path` is).
    pub(super) fn error_at(
        &mut self,
        path: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let error = self.report(path, span, message.into());
        self.errors.push(error);
        self.bad.insert(path.to_string());
    }

    /// An error at `path` (or its nearest ancestor written in the file).
    pub(super) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.error_at(path, None, message);
    }

    pub(super) fn warn(&mut self, path: &str, message: impl Into<String>) {
        let warning = self.report(path, None, message.into());
        self.warnings.push(warning);
    }

    /// Marks `path` wrong without a message of its own (the cause was reported elsewhere).
    fn mark_bad(&mut self, path: &str) {
        self.bad.insert(path.to_string());
    }

    /// Whether `path` or one of its ancestors had an error.
    pub(super) fn is_bad(&self, path: &str) -> bool {
        ancestors(path).any(|p| self.bad.contains(p))
    }

    /// Whether `path` or anything below it had an error.
    pub(super) fn any_bad_under(&self, path: &str) -> bool {
        self.is_bad(path)
            || self.bad.iter().any(|p| {
                p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
    }

    fn finish(mut self, config: Config) -> Result<Config, ConfigErrors> {
        let order = |e: &ConfigError| (e.line, e.column);
        if !self.errors.is_empty() {
            self.errors.sort_by_key(order);
            return Err(ConfigErrors(self.errors));
        }
        self.warnings.sort_by_key(order);
        Ok(Config {
            warnings: self.warnings,
            ..config
        })
    }
}

/// `a.b[2].c`, `a.b[2]`, `a.b`, `a`, `` (the root).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| {
        if p.is_empty() {
            None
        } else {
            Some(p.rfind(['.', '[']).map_or("", |i| &p[..i]))
        }
    })
}

/// `parent.key`, or `key` at the root.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

// ---------------------------------------------------------------------------------------------
// The document, table by table.

fn read_config(cx: &mut Cx, root: &toml_edit::Table) -> Config {
    let t = Fields::open(cx, "", root, None, "the top level", ROOT_KEYS);
    let interface = t.get(cx, "interface", interface);
    let metrics_listen = t
        .get(cx, "metrics_listen", socket_addr)
        .unwrap_or(defaults::METRICS_LISTEN);
    let control_socket = t
        .get(cx, "control_socket", file_path)
        .unwrap_or_else(|| PathBuf::from(defaults::CONTROL_SOCKET));
    let xdp_mode = t
        .get(cx, "xdp_mode", |cx, p, i| {
            keyword(cx, p, i, XdpMode::ALL, false)
        })
        .unwrap_or(defaults::XDP_MODE);
    let flow_table_size = t
        .get(cx, "flow_table_size", |cx, p, i| {
            int(
                cx,
                p,
                i,
                defaults::FLOW_TABLE_SIZE_MIN,
                defaults::FLOW_TABLE_SIZE_MAX,
            )
        })
        .unwrap_or(defaults::FLOW_TABLE_SIZE);
    let (snat_port_min, snat_port_max) = t
        .get(cx, "snat_port_range", snat_port_range)
        .unwrap_or((defaults::SNAT_PORT_MIN, defaults::SNAT_PORT_MAX));
    let snat_timewait = t
        .get(cx, "snat_timewait", |cx, p, i| {
            let d = delay(cx, p, i)?;
            if d > defaults::SNAT_TIMEWAIT_MAX || d.subsec_nanos() != 0 {
                cx.error_at(
                    p,
                    i.span(),
                    format!(
                        "expected whole seconds from \"0s\" to \"{}s\" (the backends' TIME_WAIT plus a margin: Linux keeps 60 s), found {:?}",
                        defaults::SNAT_TIMEWAIT_MAX.as_secs(),
                        i.as_str().unwrap_or_default()
                    ),
                );
                return None;
            }
            Some(d)
        })
        .unwrap_or(defaults::SNAT_TIMEWAIT);

    let services = t
        .require(
            cx,
            "service",
            "at least one [[service]] (name, vip, port, backends)",
            |cx, p, i| table_list(cx, p, i, "[[service]] tables"),
        )
        .unwrap_or_default();
    if services.is_empty() && !cx.is_bad("service") {
        cx.error("service", "at least one [[service]] is required");
    }
    let services = services
        .into_iter()
        .map(|(path, table)| match table {
            Some((table, span)) => read_service(cx, &path, table, span),
            None => placeholder_service(),
        })
        .collect();

    let vrrp = t.get(cx, "vrrp", |cx, p, item| {
        sub_table(cx, p, item, "a [vrrp] table", read_vrrp)
    });
    let bgp = t.get(cx, "bgp", |cx, p, item| {
        sub_table(cx, p, item, "a [bgp] table", read_bgp)
    });
    let flow_sync = t.get(cx, "flow_sync", |cx, p, item| {
        sub_table(cx, p, item, "a [flow_sync] table", read_flow_sync)
    });
    let syn_flood = t
        .get(cx, "syn_flood", |cx, p, item| {
            sub_table(cx, p, item, "a [syn_flood] table", read_syn_flood)
        })
        .unwrap_or_default();

    Config {
        interface,
        metrics_listen,
        control_socket,
        xdp_mode,
        flow_table_size,
        snat_port_min,
        snat_port_max,
        snat_timewait,
        services,
        vrrp,
        bgp,
        flow_sync,
        syn_flood,
        warnings: Vec::new(),
    }
}

/// `[syn_flood]`.
fn read_syn_flood(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> SynFlood {
    let t = Fields::open(cx, path, table, span, "[syn_flood]", SYN_FLOOD_KEYS);
    let guard = t.get(cx, "guard", boolean).unwrap_or(true);
    let threshold = t
        .get(cx, "threshold", |cx, p, i| {
            int(cx, p, i, 1, defaults::SYN_FLOOD_THRESHOLD_MAX)
        })
        .unwrap_or(defaults::SYN_FLOOD_THRESHOLD);
    let admit = t
        .get(cx, "admit", |cx, p, i| {
            int(cx, p, i, 0, defaults::SYN_FLOOD_THRESHOLD_MAX)
        })
        .unwrap_or(defaults::SYN_FLOOD_ADMIT);
    SynFlood {
        guard,
        threshold,
        admit,
    }
}

/// `[flow_sync]`.
fn read_flow_sync(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> FlowSync {
    let t = Fields::open(cx, path, table, span, "[flow_sync]", FLOW_SYNC_KEYS);
    let peers = t
        .require(
            cx,
            "peers",
            "the other load balancers' addresses, like [\"192.0.2.99\"]",
            |cx, p, item| {
                let elems = array(cx, p, item, "an array of addresses like [\"192.0.2.99\"]")?;
                if elems.is_empty() {
                    cx.error_at(
                        p,
                        item.span(),
                        "expected at least one peer, like [\"192.0.2.99\"]",
                    );
                    return None;
                }
                let peers: Vec<Option<IpAddr>> =
                    elems.iter().map(|e| peer(cx, &e.path, &e.item())).collect();
                peers.into_iter().collect()
            },
        )
        .unwrap_or_default();
    let port = t.get(cx, "port", port).unwrap_or(defaults::FLOW_SYNC_PORT);
    let key_file = t
        .require(
            cx,
            "key_file",
            "the shared key's file, like \"/etc/k3s-xdp/flow-sync.key\"",
            file_path,
        )
        .unwrap_or_default();
    FlowSync {
        peers,
        port,
        key_file,
    }
}

fn snat_port_range(cx: &mut Cx, path: &str, item: &Item) -> Option<(u16, u16)> {
    const EXPECTED: &str = "expected [MIN, MAX] like [1024, 65535]";
    let Some(array) = item.as_array() else {
        cx.error_at(
            path,
            item.span(),
            format!("{EXPECTED}, found {}", kind(item)),
        );
        return None;
    };
    let bounds: Vec<i64> = array.iter().filter_map(Value::as_integer).collect();
    match bounds[..] {
        [min, max] if array.len() == 2 => {
            let in_range = |v: i64| (1..=i64::from(u16::MAX)).contains(&v);
            if !in_range(min) || !in_range(max) || min > max {
                cx.error_at(
                    path,
                    item.span(),
                    format!("expected 1 <= MIN <= MAX <= 65535, found [{min}, {max}]"),
                );
                return None;
            }
            Some((u16::try_from(min).ok()?, u16::try_from(max).ok()?))
        }
        _ => {
            cx.error_at(path, item.span(), format!("{EXPECTED}: two integers"));
            None
        }
    }
}
