//! The scalar readers: each reads one value (string, number, duration, address, keyword, list),
//! reports what is wrong with it at its position, and returns `None` then.

use super::*;

pub(super) fn kind(item: &Item) -> &'static str {
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

pub(super) fn wrong_type(cx: &mut Cx, path: &str, item: &Item, expected: &str) {
    cx.error_at(
        path,
        item.span(),
        format!("expected {expected}, found {}", kind(item)),
    );
}

pub(super) fn string<'t>(cx: &mut Cx, path: &str, item: &'t Item) -> Option<&'t str> {
    let text = item.as_str();
    if text.is_none() {
        wrong_type(cx, path, item, "a string");
    }
    text
}

/// A string that is not empty.
pub(super) fn text(cx: &mut Cx, path: &str, item: &Item) -> Option<String> {
    let text = string(cx, path, item)?;
    if text.is_empty() {
        cx.error_at(path, item.span(), "must not be empty");
        return None;
    }
    Some(text.to_string())
}

pub(super) fn file_path(cx: &mut Cx, path: &str, item: &Item) -> Option<PathBuf> {
    text(cx, path, item).map(PathBuf::from)
}

pub(super) fn boolean(cx: &mut Cx, path: &str, item: &Item) -> Option<bool> {
    let value = item.as_bool();
    if value.is_none() {
        wrong_type(cx, path, item, "a boolean (true or false)");
    }
    value
}

/// An integer in `min..=max`; `why` (if not empty) explains the bounds.
pub(super) fn integer(
    cx: &mut Cx,
    path: &str,
    item: &Item,
    min: i64,
    max: i64,
    why: &str,
) -> Option<i64> {
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

pub(super) fn int<T: TryFrom<i64>>(
    cx: &mut Cx,
    path: &str,
    item: &Item,
    min: T,
    max: T,
) -> Option<T>
where
    i64: From<T>,
{
    integer(cx, path, item, i64::from(min), i64::from(max), "").and_then(|v| T::try_from(v).ok())
}

pub(super) fn port(cx: &mut Cx, path: &str, item: &Item) -> Option<u16> {
    int(cx, path, item, 1u16, u16::MAX)
}

/// Which durations are accepted.
#[derive(Clone, Copy)]
pub(super) enum Least {
    /// Intervals and timeouts: zero makes no sense.
    Positive,
    /// Delays: zero turns them off.
    Zero,
}

pub(super) fn duration(cx: &mut Cx, path: &str, item: &Item, least: Least) -> Option<Duration> {
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

pub(super) fn positive_duration(cx: &mut Cx, path: &str, item: &Item) -> Option<Duration> {
    duration(cx, path, item, Least::Positive)
}

pub(super) fn delay(cx: &mut Cx, path: &str, item: &Item) -> Option<Duration> {
    duration(cx, path, item, Least::Zero)
}

/// A delay of at most `max`; `why` says whose limit it is (may be empty).
pub(super) fn delay_at_most(
    cx: &mut Cx,
    path: &str,
    item: &Item,
    max: Duration,
    why: &str,
) -> Option<Duration> {
    let d = delay(cx, path, item)?;
    if d > max {
        cx.error_at(
            path,
            item.span(),
            format!(
                "must be at most {}{why}, found {:?}",
                duration::format(max),
                duration::format(d)
            ),
        );
        return None;
    }
    Some(d)
}

/// One of `all`, by the word the file uses (`case`-insensitively or not).
pub(super) fn keyword<T: Copy + Display>(
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
pub(super) fn name(cx: &mut Cx, path: &str, item: &Item) -> Option<String> {
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

/// Why an address cannot be a VIP, backend or VRRP peer, if it cannot.
pub(super) fn not_unicast(addr: IpAddr) -> Option<&'static str> {
    match addr {
        _ if addr.is_unspecified() => Some("the unspecified address"),
        _ if addr.is_loopback() => Some("a loopback address"),
        _ if addr.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write the IPv4 address)")
        }
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            Some("a link-local address (it names no host beyond the link)")
        }
        _ => None,
    }
}

/// The address of a host, IPv4 or IPv6.
pub(super) fn host_ip(cx: &mut Cx, path: &str, item: &Item) -> Option<IpAddr> {
    let text = string(cx, path, item)?;
    match text.parse::<IpAddr>() {
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
        Err(_) => {
            cx.error_at(
                path,
                item.span(),
                format!(
                    "expected an IP address like \"192.0.2.100\" or \"2001:db8::100\", found {text:?}"
                ),
            );
            None
        }
    }
}

pub(super) fn vip(cx: &mut Cx, path: &str, item: &Item) -> Option<IpAddr> {
    host_ip(cx, path, item)
}

pub(super) fn peer(cx: &mut Cx, path: &str, item: &Item) -> Option<IpAddr> {
    host_ip(cx, path, item)
}

/// `"IP:PORT"` (`"[IPv6]:PORT"`), or `"IP"` for `service_port` (`None` when the service port
/// was wrong).
pub(super) fn backend_address(
    cx: &mut Cx,
    path: &str,
    item: &Item,
    service_port: Option<u16>,
) -> Option<SocketAddr> {
    let text = string(cx, path, item)?;
    if text.contains('%') {
        cx.error_at(
            path,
            item.span(),
            format!("expected a global address without a zone (%IFACE), found {text:?}"),
        );
        return None;
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let addr = if let Ok(addr) = text.parse::<SocketAddr>() {
        addr
    } else if let Ok(ip) = bare.parse::<IpAddr>() {
        let Some(port) = service_port else {
            cx.mark_bad(path);
            return None;
        };
        SocketAddr::new(ip, port)
    } else {
        cx.error_at(
            path,
            item.span(),
            format!(
                "expected \"IP:PORT\" like \"192.0.2.51:6443\" or \"[2001:db8::51]:6443\", found {text:?}"
            ),
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
    if let Some(what) = not_unicast(addr.ip()) {
        cx.error_at(
            path,
            item.span(),
            format!("expected the address of a backend server, found {what} ({text})"),
        );
        return None;
    }
    Some(addr)
}

pub(super) fn socket_addr(cx: &mut Cx, path: &str, item: &Item) -> Option<SocketAddr> {
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

pub(super) fn interface(cx: &mut Cx, path: &str, item: &Item) -> Option<String> {
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
pub(super) fn array<'t>(
    cx: &mut Cx,
    path: &str,
    item: &'t Item,
    expected: &str,
) -> Option<Vec<Elem<'t>>> {
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

pub(super) struct Elem<'t> {
    pub(super) path: String,
    pub(super) value: &'t Value,
}

impl Elem<'_> {
    /// The value as an item, for the scalar readers.
    pub(super) fn item(&self) -> Item {
        Item::Value(self.value.clone())
    }
}

/// The tables of `[[name]]` or of `name = [{ ... }, ...]`, each with its path. An element that
/// is not a table is reported and comes back as `None`, so indices still match the file.
#[allow(clippy::type_complexity)]
pub(super) fn table_list<'t>(
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

/// A table, read by `read`; anything else is an error saying it should be `expected`.
pub(super) fn sub_table<T>(
    cx: &mut Cx,
    path: &str,
    item: &Item,
    expected: &str,
    read: impl FnOnce(&mut Cx, &str, &dyn TableLike, Option<Range<usize>>) -> T,
) -> Option<T> {
    match item.as_table_like() {
        Some(table) => Some(read(cx, path, table, item.span())),
        None => {
            wrong_type(cx, path, item, expected);
            None
        }
    }
}
