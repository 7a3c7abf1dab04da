//! The vocabulary: every table's keys, and what an unknown key gets (the closest accepted key,
//! the table it belongs to, or the word a HAProxy or keepalived user would have written).

use super::*;

pub(super) const ROOT_KEYS: &[&str] = &[
    "interface",
    "metrics_listen",
    "control_socket",
    "xdp_mode",
    "flow_table_size",
    "snat_port_range",
    "snat_timewait",
    "service",
    "vrrp",
    "bgp",
    "flow_sync",
    "syn_flood",
];
pub(super) const SERVICE_KEYS: &[&str] = &[
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
pub(super) const BACKEND_KEYS: &[&str] = &["name", "address", "weight"];
pub(super) const HEALTH_KEYS: &[&str] = &[
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
pub(super) const VRRP_KEYS: &[&str] = &[
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
pub(super) const TRACK_KEYS: &[&str] = &["dataplane", "min_healthy_backends", "weight"];
pub(super) const BGP_KEYS: &[&str] = &["table", "vips", "track", "drain_time", "bird_socket"];
pub(super) const BGP_TRACK_KEYS: &[&str] = &["dataplane", "min_healthy_backends"];
pub(super) const FLOW_SYNC_KEYS: &[&str] = &["peers", "port", "key_file"];
pub(super) const SYN_FLOOD_KEYS: &[&str] = &["guard", "threshold", "admit"];

/// Every table, as messages name it, with its keys: an unknown key that belongs to another
/// table is pointed there.
pub(super) const TABLES: &[(&str, &[&str])] = &[
    ("the top level", ROOT_KEYS),
    ("[[service]]", SERVICE_KEYS),
    ("a backend", BACKEND_KEYS),
    ("[service.health]", HEALTH_KEYS),
    ("[vrrp]", VRRP_KEYS),
    ("vrrp.track", TRACK_KEYS),
    ("[bgp]", BGP_KEYS),
    ("bgp.track", BGP_TRACK_KEYS),
    ("[flow_sync]", FLOW_SYNC_KEYS),
    ("[syn_flood]", SYN_FLOOD_KEYS),
];

/// Words from haproxy.cfg and keepalived.conf that have no key of the same name.
pub(super) const FOREIGN_WORDS: &[(&str, &str)] = &[
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
pub(super) struct Fields<'t> {
    pub(super) path: String,
    pub(super) table: &'t dyn TableLike,
}

impl<'t> Fields<'t> {
    /// Opens `table` at `path`: records where it and its keys are, reports unknown keys.
    pub(super) fn open(
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

    pub(super) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reads `key` with `read` if present; `None` if absent or wrong (then reported).
    pub(super) fn get<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        read: impl FnOnce(&mut Cx, &str, &'t Item) -> Option<T>,
    ) -> Option<T> {
        let item = self.table.get(key).filter(|item| !item.is_none())?;
        read(cx, &self.path(key), item)
    }

    /// Like [`Fields::get`], and reports a missing key, saying what it should hold.
    pub(super) fn require<T>(
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

pub(super) fn unknown_key(key: &str, label: &str, accepted: &[&str]) -> String {
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
pub(super) fn closest<'k>(key: &str, accepted: &[&'k str]) -> Option<&'k str> {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
