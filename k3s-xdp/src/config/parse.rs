//! The walk over the TOML document: every key is read on its own here (type, range, format,
//! unknown keys), every problem is recorded with its position, and the walk goes on, so one
//! `k3s-xdp check` shows all the errors of a file.
//!
//! `toml_edit`'s `ImDocument` keeps the byte span of every key and value; [`Cx`] turns spans
//! into line:column, remembers where each dotted key sits (so `validate.rs` can point at the
//! keys its cross-field rules involve) and which keys were wrong (so those rules do not pile
//! follow-on errors on a value that was already reported). A wrong or missing value is replaced
//! by its default, or by a placeholder, and the config is only returned when nothing was wrong.

use super::{
    defaults, duration, duration::DurationError, error::line_column, validate, BackendConfig,
    CheckKind, Config, ConfigError, ConfigErrors, Health, InitialState, Mode, OnBackendDown,
    Protocol, Service, SnatSource, Track, VirtualAddress, Vrrp, XdpMode,
};
use std::{
    collections::{HashMap, HashSet},
    fmt::Display,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};
use toml_edit::{ImDocument, Item, TableLike, Value};

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
// Tables and their keys.

const ROOT_KEYS: &[&str] = &[
    "interface",
    "metrics_listen",
    "control_socket",
    "xdp_mode",
    "flow_table_size",
    "snat_port_range",
    "snat_timewait",
    "service",
    "vrrp",
];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "port",
    "protocol",
    "mode",
    "on_backend_down",
    "snat_source",
    "table_size",
    "backends",
    "health",
];
const BACKEND_KEYS: &[&str] = &["name", "address", "weight"];
const HEALTH_KEYS: &[&str] = &[
    "check",
    "path",
    "expect",
    "ca_file",
    "client_cert",
    "client_key",
    "bearer_token_file",
    "port",
    "inter",
    "downinter",
    "fastinter",
    "rise",
    "fall",
    "timeout",
    "slowstart",
];
const VRRP_KEYS: &[&str] = &[
    "virtual_router_id",
    "priority",
    "state",
    "advert_int",
    "virtual_ipaddress",
    "unicast_src_ip",
    "unicast_peers",
    "preempt",
    "preempt_delay",
    "version",
    "auth_pass",
    "track",
    "garp_master_repeat",
    "garp_interval",
    "garp_master_refresh",
];
const TRACK_KEYS: &[&str] = &["dataplane", "min_healthy_backends", "weight"];

/// Every table, as messages name it, with its keys: an unknown key that belongs to another
/// table is pointed there.
const TABLES: &[(&str, &[&str])] = &[
    ("the top level", ROOT_KEYS),
    ("[[service]]", SERVICE_KEYS),
    ("a backend", BACKEND_KEYS),
    ("[service.health]", HEALTH_KEYS),
    ("[vrrp]", VRRP_KEYS),
    ("vrrp.track", TRACK_KEYS),
];

/// Words from haproxy.cfg and keepalived.conf that have no key of the same name.
const FOREIGN_WORDS: &[(&str, &str)] = &[
    ("interval", "did you mean `inter`?"),
    (
        "auth_type",
        "the only authentication is keepalived's PASS: set `auth_pass` with `version = 2`",
    ),
    (
        "authentication",
        "set `auth_pass` (with `version = 2`) in [vrrp] instead",
    ),
    (
        "server",
        "list backends as `backends = [{ name = \"server-1\", address = \"IP:PORT\" }]`",
    ),
    (
        "servers",
        "list backends as `backends = [{ name = \"server-1\", address = \"IP:PORT\" }]`",
    ),
    (
        "balance",
        "backends are chosen by Maglev consistent hashing, weighted by their `weight`",
    ),
];

/// One table of the document being read: its path, and its keys.
struct Fields<'t> {
    path: String,
    table: &'t dyn TableLike,
}

impl<'t> Fields<'t> {
    /// Opens `table` at `path`: records where it and its keys are, reports unknown keys.
    fn open(
        cx: &mut Cx,
        path: &str,
        table: &'t dyn TableLike,
        span: Option<Range<usize>>,
        label: &str,
        accepted: &[&str],
    ) -> Self {
        cx.note(path, span);
        for (key, item) in table.iter() {
            let key_span = table.key(key).and_then(|k| k.span());
            let key_path = join(path, key);
            if accepted.contains(&key) {
                cx.note(&key_path, item.span().or(key_span));
            } else {
                cx.error_at(&key_path, key_span, unknown_key(key, label, accepted));
            }
        }
        Fields {
            path: path.to_string(),
            table,
        }
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reads `key` with `read` if present; `None` if absent or wrong (then reported).
    fn get<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        read: impl FnOnce(&mut Cx, &str, &'t Item) -> Option<T>,
    ) -> Option<T> {
        let item = self.table.get(key).filter(|item| !item.is_none())?;
        read(cx, &self.path(key), item)
    }

    /// Like [`Fields::get`], and reports a missing key, saying what it should hold.
    fn require<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        what: &str,
        read: impl FnOnce(&mut Cx, &str, &'t Item) -> Option<T>,
    ) -> Option<T> {
        if self.table.get(key).is_none_or(Item::is_none) {
            let path = self.path(key);
            cx.error(&path, format!("missing `{key}`: {what}"));
            return None;
        }
        self.get(cx, key, read)
    }
}

fn unknown_key(key: &str, label: &str, accepted: &[&str]) -> String {
    let mut message = format!("unknown key `{key}` in {label}");
    let hint = FOREIGN_WORDS
        .iter()
        .find(|(word, _)| *word == key)
        .map(|(_, hint)| hint.to_string())
        .or_else(|| closest(key, accepted).map(|k| format!("did you mean `{k}`?")))
        .or_else(|| {
            TABLES
                .iter()
                .find(|(other, keys)| *other != label && keys.contains(&key))
                .map(|(other, _)| format!("`{key}` belongs in {other}"))
        });
    if let Some(hint) = hint {
        message.push_str("; ");
        message.push_str(&hint);
    }
    message.push_str(&format!(" (accepted keys: {})", accepted.join(", ")));
    message
}

/// The accepted key closest to `key`, if close enough to be a typo.
fn closest<'k>(key: &str, accepted: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    let limit = if key.chars().count() >= 5 { 2 } else { 1 };
    accepted
        .iter()
        .map(|candidate| (edit_distance(&key, candidate), *candidate))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// Edits (insert, delete, substitute, swap two neighbours) between `a` and `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

// ---------------------------------------------------------------------------------------------
// Values.

fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a date-time",
        Item::Value(Value::Array(_)) => "an array",
        Item::Value(Value::InlineTable(_)) | Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn wrong_type(cx: &mut Cx, path: &str, item: &Item, expected: &str) {
    cx.error_at(
        path,
        item.span(),
        format!("expected {expected}, found {}", kind(item)),
    );
}

fn string<'t>(cx: &mut Cx, path: &str, item: &'t Item) -> Option<&'t str> {
    let text = item.as_str();
    if text.is_none() {
        wrong_type(cx, path, item, "a string");
    }
    text
}

/// A string that is not empty.
fn text(cx: &mut Cx, path: &str, item: &Item) -> Option<String> {
    let text = string(cx, path, item)?;
    if text.is_empty() {
        cx.error_at(path, item.span(), "must not be empty");
        return None;
    }
    Some(text.to_string())
}

fn file_path(cx: &mut Cx, path: &str, item: &Item) -> Option<PathBuf> {
    text(cx, path, item).map(PathBuf::from)
}

fn boolean(cx: &mut Cx, path: &str, item: &Item) -> Option<bool> {
    let value = item.as_bool();
    if value.is_none() {
        wrong_type(cx, path, item, "a boolean (true or false)");
    }
    value
}

/// An integer in `min..=max`; `why` (if not empty) explains the bounds.
fn integer(cx: &mut Cx, path: &str, item: &Item, min: i64, max: i64, why: &str) -> Option<i64> {
    let Some(value) = item.as_integer() else {
        let hint = match item.as_str().map(str::parse::<i64>) {
            Some(Ok(n)) => format!(" (write {n} without quotes)"),
            _ => String::new(),
        };
        cx.error_at(
            path,
            item.span(),
            format!("expected an integer, found {}{hint}", kind(item)),
        );
        return None;
    };
    if !(min..=max).contains(&value) {
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        cx.error_at(
            path,
            item.span(),
            format!("must be between {min} and {max}{why}, found {value}"),
        );
        return None;
    }
    Some(value)
}

fn int<T: TryFrom<i64>>(cx: &mut Cx, path: &str, item: &Item, min: T, max: T) -> Option<T>
where
    i64: From<T>,
{
    integer(cx, path, item, i64::from(min), i64::from(max), "").and_then(|v| T::try_from(v).ok())
}

fn port(cx: &mut Cx, path: &str, item: &Item) -> Option<u16> {
    int(cx, path, item, 1u16, u16::MAX)
}

/// Which durations are accepted.
#[derive(Clone, Copy)]
enum Least {
    /// Intervals and timeouts: zero makes no sense.
    Positive,
    /// Delays: zero turns them off.
    Zero,
}

fn duration(cx: &mut Cx, path: &str, item: &Item, least: Least) -> Option<Duration> {
    const EXPECTED: &str = "expected a duration with a unit, like \"2s\" or \"500ms\"";
    let Some(text) = item.as_str() else {
        cx.error_at(
            path,
            item.span(),
            format!("{EXPECTED}, found {}", kind(item)),
        );
        return None;
    };
    let problem = match (duration::parse(text), least) {
        (Ok(d), Least::Positive) if d.is_zero() => "must be greater than 0".to_string(),
        (Ok(d), _) => return Some(d),
        (Err(DurationError::Negative), Least::Positive) => "must be greater than 0".to_string(),
        (Err(DurationError::Negative), Least::Zero) => "must not be negative".to_string(),
        (Err(DurationError::Malformed), _) => {
            format!("{EXPECTED} (units: ms, s, m, h; compounds like \"1m30s\")")
        }
    };
    cx.error_at(path, item.span(), format!("{problem}, found {text:?}"));
    None
}

fn positive_duration(cx: &mut Cx, path: &str, item: &Item) -> Option<Duration> {
    duration(cx, path, item, Least::Positive)
}

fn delay(cx: &mut Cx, path: &str, item: &Item) -> Option<Duration> {
    duration(cx, path, item, Least::Zero)
}

/// One of `all`, by the word the file uses (`case`-insensitively or not).
fn keyword<T: Copy + Display>(
    cx: &mut Cx,
    path: &str,
    item: &Item,
    all: &[T],
    ignore_case: bool,
) -> Option<T> {
    let text = string(cx, path, item)?;
    let found = all.iter().copied().find(|v| {
        let name = v.to_string();
        name == text || (ignore_case && name.eq_ignore_ascii_case(text))
    });
    if found.is_none() {
        let names: Vec<String> = all.iter().map(|v| format!("\"{v}\"")).collect();
        cx.error_at(
            path,
            item.span(),
            format!("expected one of {}, found {text:?}", names.join(", ")),
        );
    }
    found
}

/// Names usable in `SERVICE/BACKEND` on the command line and as metric labels.
fn name(cx: &mut Cx, path: &str, item: &Item) -> Option<String> {
    const MAX: usize = 64;
    let text = text(cx, path, item)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !text.chars().all(allowed) || text.len() > MAX {
        cx.error_at(
            path,
            item.span(),
            format!(
                "expected a name of at most {MAX} letters, digits, '_', '.' or '-' \
                 (it is used as SERVICE/BACKEND on the command line), found {text:?}"
            ),
        );
        return None;
    }
    Some(text)
}

/// Why an IPv4 address cannot be a VIP, backend or VRRP peer, if it cannot.
fn not_unicast(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if addr.is_broadcast() {
        Some("the broadcast address")
    } else {
        None
    }
}

/// An IPv4 address of a host; `plural` names what it is in the IPv6 message ("VIPs").
fn host_ipv4(cx: &mut Cx, path: &str, item: &Item, plural: &str) -> Option<Ipv4Addr> {
    let text = string(cx, path, item)?;
    match text.parse::<Ipv4Addr>() {
        Ok(addr) => match not_unicast(addr) {
            None => Some(addr),
            Some(what) => {
                cx.error_at(
                    path,
                    item.span(),
                    format!("expected the unicast address of a host, found {what} ({addr})"),
                );
                None
            }
        },
        Err(_) if text.parse::<Ipv6Addr>().is_ok() => {
            cx.error_at(
                path,
                item.span(),
                format!("IPv6 {plural} are not supported yet, found {text:?}"),
            );
            None
        }
        Err(_) => {
            cx.error_at(
                path,
                item.span(),
                format!("expected an IPv4 address like \"192.0.2.100\", found {text:?}"),
            );
            None
        }
    }
}

fn vip(cx: &mut Cx, path: &str, item: &Item) -> Option<Ipv4Addr> {
    host_ipv4(cx, path, item, "VIPs")
}

fn peer(cx: &mut Cx, path: &str, item: &Item) -> Option<Ipv4Addr> {
    host_ipv4(cx, path, item, "VRRP peers")
}

/// `"IP:PORT"`, or `"IP"` for `service_port` (`None` when the service port was wrong).
fn backend_address(
    cx: &mut Cx,
    path: &str,
    item: &Item,
    service_port: Option<u16>,
) -> Option<SocketAddrV4> {
    let text = string(cx, path, item)?;
    let addr = if let Ok(addr) = text.parse::<SocketAddrV4>() {
        addr
    } else if let Ok(ip) = text.parse::<Ipv4Addr>() {
        let Some(port) = service_port else {
            cx.mark_bad(path);
            return None;
        };
        SocketAddrV4::new(ip, port)
    } else if text.parse::<SocketAddrV6>().is_ok() || text.parse::<Ipv6Addr>().is_ok() {
        cx.error_at(
            path,
            item.span(),
            format!("IPv6 backends are not supported yet, found {text:?}"),
        );
        return None;
    } else {
        cx.error_at(
            path,
            item.span(),
            format!("expected \"IP:PORT\" like \"192.0.2.51:6443\", found {text:?}"),
        );
        return None;
    };
    if addr.port() == 0 {
        cx.error_at(
            path,
            item.span(),
            format!("the port must be between 1 and 65535, found {text:?}"),
        );
        return None;
    }
    if let Some(what) = not_unicast(*addr.ip()) {
        cx.error_at(
            path,
            item.span(),
            format!("expected the address of a backend server, found {what} ({text})"),
        );
        return None;
    }
    Some(addr)
}

fn socket_addr(cx: &mut Cx, path: &str, item: &Item) -> Option<SocketAddr> {
    let text = string(cx, path, item)?;
    let addr = text.parse::<SocketAddr>().ok();
    if addr.is_none() {
        cx.error_at(
            path,
            item.span(),
            format!("expected \"IP:PORT\" like \"127.0.0.1:9742\", found {text:?}"),
        );
    }
    addr
}

fn interface(cx: &mut Cx, path: &str, item: &Item) -> Option<String> {
    // IFNAMSIZ is 16 with the terminating NUL.
    const MAX: usize = 15;
    let text = text(cx, path, item)?;
    if text.len() > MAX
        || text
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c == '\0')
    {
        cx.error_at(
            path,
            item.span(),
            format!(
                "expected an interface name like \"eth1\" (at most {MAX} bytes, \
                 no '/' or spaces), found {text:?}"
            ),
        );
        return None;
    }
    Some(text)
}

/// The values of an array, each with its path (`path[i]`).
fn array<'t>(cx: &mut Cx, path: &str, item: &'t Item, expected: &str) -> Option<Vec<Elem<'t>>> {
    let Some(array) = item.as_array() else {
        wrong_type(cx, path, item, expected);
        return None;
    };
    Some(
        array
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let path = format!("{path}[{i}]");
                cx.note(&path, value.span());
                Elem { path, value }
            })
            .collect(),
    )
}

struct Elem<'t> {
    path: String,
    value: &'t Value,
}

impl Elem<'_> {
    /// The value as an item, for the scalar readers.
    fn item(&self) -> Item {
        Item::Value(self.value.clone())
    }
}

/// The tables of `[[name]]` or of `name = [{ ... }, ...]`, each with its path. An element that
/// is not a table is reported and comes back as `None`, so indices still match the file.
#[allow(clippy::type_complexity)]
fn table_list<'t>(
    cx: &mut Cx,
    path: &str,
    item: &'t Item,
    expected: &str,
) -> Option<Vec<(String, Option<(&'t dyn TableLike, Option<Range<usize>>)>)>> {
    match item {
        Item::ArrayOfTables(tables) => Some(
            tables
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    (
                        format!("{path}[{i}]"),
                        Some((t as &dyn TableLike, t.span())),
                    )
                })
                .collect(),
        ),
        Item::Value(Value::Array(values)) => Some(
            values
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    let element = format!("{path}[{i}]");
                    match value {
                        Value::InlineTable(t) => (element, Some((t as &dyn TableLike, t.span()))),
                        other => {
                            cx.error_at(
                                &element,
                                other.span(),
                                format!(
                                    "expected a table like {{ name = ..., ... }}, found {}",
                                    kind(&Item::Value(other.clone()))
                                ),
                            );
                            (element, None)
                        }
                    }
                })
                .collect(),
        ),
        other => {
            wrong_type(cx, path, other, expected);
            None
        }
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

    let vrrp = t.get(cx, "vrrp", |cx, p, item| match item.as_table_like() {
        Some(table) => Some(read_vrrp(cx, p, table, item.span())),
        None => {
            wrong_type(cx, p, item, "a [vrrp] table");
            None
        }
    });

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
        warnings: Vec::new(),
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

/// Stands for a `[[service]]` element that was not a table (already reported).
fn placeholder_service() -> Service {
    Service {
        name: String::new(),
        vip: Ipv4Addr::UNSPECIFIED,
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

fn placeholder_backend() -> BackendConfig {
    BackendConfig {
        name: String::new(),
        address: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        weight: defaults::BACKEND_WEIGHT,
    }
}

fn read_service(
    cx: &mut Cx,
    path: &str,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> Service {
    let t = Fields::open(cx, path, table, span, "[[service]]", SERVICE_KEYS);
    let name = t.require(cx, "name", "a name like \"k3s-api\"", name);
    let vip = t.require(cx, "vip", "an IPv4 address like \"192.0.2.100\"", vip);
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
        vip: vip.unwrap_or(Ipv4Addr::UNSPECIFIED),
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
fn snat_source(cx: &mut Cx, path: &str, item: &Item) -> Option<Vec<SnatSource>> {
    const EXPECTED: &str =
        "\"vip\", \"node\", an IPv4 address like \"192.0.2.10\", or a list of them";
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

fn one_snat_source(cx: &mut Cx, path: &str, item: &Item) -> Option<SnatSource> {
    match string(cx, path, item)? {
        "vip" => Some(SnatSource::Vip),
        "node" => Some(SnatSource::Node),
        text if text.parse::<std::net::IpAddr>().is_err() => {
            cx.error_at(
                path,
                item.span(),
                format!(
                    "expected \"vip\", \"node\" or an IPv4 address like \"192.0.2.10\", found {text:?}"
                ),
            );
            None
        }
        _ => host_ipv4(cx, path, item, "SNAT sources").map(SnatSource::Address),
    }
}

fn table_size(cx: &mut Cx, path: &str, item: &Item) -> Option<u32> {
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
pub(super) fn next_prime(n: u32) -> Option<u32> {
    (n..=u32::MAX).find(|&c| crate::maglev::is_prime(c))
}

fn read_backend(
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
        "\"IP:PORT\" like \"192.0.2.50:6443\"",
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
        address: address.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        weight,
    }
}

fn read_health(
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

fn expect(cx: &mut Cx, path: &str, item: &Item) -> Option<Vec<u16>> {
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

fn read_vrrp(cx: &mut Cx, path: &str, table: &dyn TableLike, span: Option<Range<usize>>) -> Vrrp {
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
            let peers: Vec<Option<Ipv4Addr>> =
                elems.iter().map(|e| peer(cx, &e.path, &e.item())).collect();
            peers.into_iter().collect()
        })
        .unwrap_or_default();
    let preempt = t.get(cx, "preempt", boolean).unwrap_or(defaults::PREEMPT);
    let preempt_delay = t
        .get(cx, "preempt_delay", |cx, p, i| {
            let d = delay(cx, p, i)?;
            if d > defaults::PREEMPT_DELAY_MAX {
                cx.error_at(
                    p,
                    i.span(),
                    format!(
                        "must be at most {} (keepalived's limit), found {:?}",
                        duration::format(defaults::PREEMPT_DELAY_MAX),
                        duration::format(d)
                    ),
                );
                return None;
            }
            Some(d)
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
        .get(cx, "track", |cx, p, item| match item.as_table_like() {
            Some(table) => Some(read_track(cx, p, table, item.span())),
            None => {
                wrong_type(
                    cx,
                    p,
                    item,
                    "a table like { dataplane = true, min_healthy_backends = 1 }",
                );
                None
            }
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

fn virtual_addresses(cx: &mut Cx, path: &str, item: &Item) -> Option<Vec<VirtualAddress>> {
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

/// `"ip/prefix"` or `"ip"` (a /32).
fn virtual_address(cx: &mut Cx, path: &str, item: &Item) -> Option<VirtualAddress> {
    let text = string(cx, path, item)?;
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let prefix_len = match prefix.map(str::parse::<u8>) {
        None => Some(defaults::VIRTUAL_ADDRESS_PREFIX),
        Some(Ok(p)) if p <= 32 => Some(p),
        Some(_) => None,
    };
    match (ip.parse::<Ipv4Addr>(), prefix_len) {
        (Ok(addr), Some(prefix_len)) if not_unicast(addr).is_none() => {
            Some(VirtualAddress { addr, prefix_len })
        }
        (Ok(addr), Some(_)) => {
            let what = not_unicast(addr).unwrap_or("not a host address");
            cx.error_at(
                path,
                item.span(),
                format!("expected the address of a host, found {what} ({addr})"),
            );
            None
        }
        (Err(_), _) if ip.parse::<Ipv6Addr>().is_ok() => {
            cx.error_at(
                path,
                item.span(),
                format!("IPv6 virtual addresses are not supported yet, found {text:?}"),
            );
            None
        }
        _ => {
            cx.error_at(
                path,
                item.span(),
                format!(
                    "expected \"IP/PREFIX\" like \"192.0.2.100/24\" (prefix 0..=32, default 32), \
                     found {text:?}"
                ),
            );
            None
        }
    }
}

fn read_track(cx: &mut Cx, path: &str, table: &dyn TableLike, span: Option<Range<usize>>) -> Track {
    let t = Fields::open(cx, path, table, span, "vrrp.track", TRACK_KEYS);
    Track {
        dataplane: t
            .get(cx, "dataplane", boolean)
            .unwrap_or(defaults::TRACK_DATAPLANE),
        min_healthy_backends: t
            .get(cx, "min_healthy_backends", |cx, p, i| {
                int(cx, p, i, 0, k3s_xdp_common::MAX_BACKENDS)
            })
            .unwrap_or(defaults::TRACK_MIN_HEALTHY_BACKENDS),
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
