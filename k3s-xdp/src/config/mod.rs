//! The configuration file: its types, its defaults, and the functions that read it.
//!
//! [`load`] and [`parse`] turn a TOML file into a [`Config`] or into *every* problem found in it
//! ([`ConfigErrors`]), each with file, line, column, dotted key and what was expected. The
//! vocabulary is HAProxy's and keepalived's (`inter`, `fall`, `virtual_router_id`, ...), so an
//! operator of the seed setup recognises each key.
//!
//! How it fits together:
//! - `parse.rs` walks the document with `toml_edit` (which keeps byte spans) and checks each key
//!   on its own: type, range, format, unknown keys;
//! - `vrrp.rs` and `bgp.rs` hold the types of those sections;
//! - `validate/` checks the rules that span keys (duplicates, VIPs covered by VRRP, limits of
//!   the data plane, keys that only apply to some health check kinds);
//! - `render.rs` writes a [`Config`] back to TOML ([`Config::to_toml`]): `k3s-xdp import` builds
//!   a `Config` and prints it so;
//! - the [`defaults`] below are the one place where default values live.
//!
//! The module is pure: apart from [`load`] reading the file, it does no I/O. Files named in the
//! config (`ca_file`, ...) are opened, and so checked, by the runtime.

mod bgp;
mod duration;
mod error;
mod parse;
mod render;
mod validate;
mod vrrp;

#[cfg(test)]
mod tests;

pub use bgp::{reserved_table, Bgp, BgpTrack};
pub use duration::format as format_duration;
pub use error::{ConfigError, ConfigErrors};
pub use vrrp::{InitialState, Track, VirtualAddress, Vrrp, VrrpReload};

use serde::Serialize;
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

/// Every default value of the config, and the limits of the values the file may hold.
pub mod defaults {
    use super::{CheckKind, InitialState, Mode, OnBackendDown, Protocol, XdpMode};
    use std::{
        net::{Ipv4Addr, SocketAddr, SocketAddrV4},
        time::Duration,
    };

    pub const METRICS_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9742));
    pub const CONTROL_SOCKET: &str = "/run/k3s-xdp/control.sock";
    pub const XDP_MODE: XdpMode = XdpMode::Auto;
    pub const FLOW_TABLE_SIZE: u32 = k3s_xdp_common::DEFAULT_FLOW_TABLE_SIZE;
    pub const FLOW_TABLE_SIZE_MIN: u32 = 1024;
    pub const FLOW_TABLE_SIZE_MAX: u32 = 16_777_216;
    pub const SNAT_PORT_MIN: u16 = 1024;
    pub const SNAT_PORT_MAX: u16 = 65535;
    /// Linux keeps TIME_WAIT for 60 s (`TCP_TIMEWAIT_LEN`, not tunable); 5 s of margin for
    /// clocks and the last packets' travel.
    pub const SNAT_TIMEWAIT: Duration = Duration::from_secs(65);
    /// Longer than any TIME_WAIT (Windows keeps 240 s at most), short of the 300 s after which
    /// an idle translation is taken over anyway.
    pub const SNAT_TIMEWAIT_MAX: Duration = Duration::from_secs(300);

    /// A k3s cluster's clients are its nodes and operators: after their first connection they
    /// are known. 1,000 SYNs per second from never-seen sources is no cluster's bootstrap.
    pub const SYN_FLOOD_THRESHOLD: u32 = 1000;
    pub const SYN_FLOOD_THRESHOLD_MAX: u32 = 100_000_000;
    /// New clients (a joining node) still get in under a flood, at this rate shared with it.
    pub const SYN_FLOOD_ADMIT: u32 = 100;

    pub const PROTOCOL: Protocol = Protocol::Tcp;
    pub const MODE: Mode = Mode::Nat;
    pub const ON_BACKEND_DOWN: OnBackendDown = OnBackendDown::Reset;
    pub const TABLE_SIZE: u32 = k3s_xdp_common::DEFAULT_TABLE_SIZE;
    pub const TABLE_SIZE_MIN: u32 = 7;
    pub const TABLE_SIZE_MAX: u32 = k3s_xdp_common::MAX_TABLE_SIZE;
    /// Maglev spreads load evenly only when the table is much larger than the backend count.
    pub const TABLE_ENTRIES_PER_BACKEND: u32 = 100;

    /// 100, so that relative weights read as percentages.
    pub const BACKEND_WEIGHT: u32 = 100;
    /// HAProxy's upper bound.
    pub const BACKEND_WEIGHT_MAX: u32 = 256;

    /// TLS handshake: k3s answers `/readyz` with 401 to anonymous clients, so a handshake is the
    /// most a check without credentials can prove.
    pub const CHECK: CheckKind = CheckKind::Tls;
    pub const CHECK_PATH: &str = "/readyz";
    pub const CHECK_EXPECT: [u16; 1] = [200];
    /// HAProxy's default `inter`; `downinter` and `fastinter` default to `inter`.
    pub const INTER: Duration = Duration::from_secs(2);
    pub const RISE: u32 = 2;
    /// HAProxy's default `fall`.
    pub const FALL: u32 = 3;
    pub const RISE_FALL_MAX: u32 = 1000;
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
    pub const SLOWSTART: Duration = Duration::ZERO;

    pub const PRIORITY: u8 = 100;
    pub const STATE: InitialState = InitialState::Backup;
    pub const ADVERT_INT: Duration = Duration::from_secs(1);
    pub const VRRP_VERSION: u8 = 3;
    pub const PREEMPT: bool = true;
    pub const PREEMPT_DELAY: Duration = Duration::ZERO;
    /// keepalived's upper bound for `preempt_delay`.
    pub const PREEMPT_DELAY_MAX: Duration = Duration::from_secs(1000);
    pub const AUTH_PASS_MAX_BYTES: usize = 8;
    /// `virtual_ipaddress` without a prefix: a host route of its family.
    pub const VIRTUAL_ADDRESS_PREFIX: u8 = 32;
    pub const VIRTUAL_ADDRESS_PREFIX6: u8 = 128;
    pub const GARP_MASTER_REPEAT: u32 = 5;
    pub const GARP_MASTER_REPEAT_MAX: u32 = 100;
    pub const GARP_INTERVAL: Duration = Duration::from_millis(10);
    pub const GARP_MASTER_REFRESH: Duration = Duration::ZERO;

    pub const TRACK_DATAPLANE: bool = true;
    pub const TRACK_MIN_HEALTHY_BACKENDS: u32 = 1;
    /// keepalived's meaning: 0 puts the instance in FAULT while the track fails.
    pub const TRACK_WEIGHT: i32 = 0;
    pub const TRACK_WEIGHT_MAX: i32 = 254;

    /// Long enough for a router to take a withdrawn route out of its ECMP set.
    pub const BGP_DRAIN_TIME: Duration = Duration::from_secs(2);
    pub const BGP_DRAIN_TIME_MAX: Duration = Duration::from_secs(300);
    /// Debian's bird2 package.
    pub const BIRD_SOCKET: &str = "/run/bird/bird.ctl";

    /// `[flow_sync] port` (UDP).
    pub const FLOW_SYNC_PORT: u16 = 3780;
}

/// Reads `path` and parses it; a file that cannot be read is one error naming it.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])),
    }
}

/// Parses and validates `text`; `origin` is only used to name the file in messages.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    parse::parse(text, origin)
}

/// A whole, valid configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Interface to attach to and to hold the VIPs on; `run --iface` overrides it.
    pub interface: Option<String>,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_listen: SocketAddr,
    /// Unix socket of `k3s-xdp status` and `k3s-xdp backend`.
    pub control_socket: PathBuf,
    pub xdp_mode: XdpMode,
    /// Capacity of the flow table (and of the reverse NAT table).
    pub flow_table_size: u32,
    /// SNAT source ports, inclusive (`snat_port_range = [min, max]`).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// How long a translation whose backend closed first keeps its SNAT port from other
    /// client tuples: the backend's TIME_WAIT, with a margin.
    pub snat_timewait: Duration,
    /// `[[service]]`, in file order; at least one.
    pub services: Vec<Service>,
    /// `[vrrp]`; without it this node is the only load balancer and holds the VIPs itself.
    pub vrrp: Option<Vrrp>,
    /// `[bgp]`: the VIPs are announced through a kernel routing table (active-active).
    pub bgp: Option<Bgp>,
    /// `[flow_sync]`: nat flows shared with the other load balancers.
    pub flow_sync: Option<FlowSync>,
    /// `[syn_flood]`: the SYN flood guard (on by default).
    pub syn_flood: SynFlood,
    /// Non-fatal notes about the file (e.g. no `interface`), for `check` to print and `run` to
    /// log. Not configuration: ignored by `==` and not serialized.
    #[serde(skip)]
    pub warnings: Vec<ConfigError>,
}

/// Two configs are equal when they configure the same thing; their warnings (which carry line
/// numbers) do not count, so a reload that only moved lines or comments changes nothing.
impl PartialEq for Config {
    fn eq(&self, other: &Self) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let Config {
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
            warnings: _,
        } = self;
        *interface == other.interface
            && *metrics_listen == other.metrics_listen
            && *control_socket == other.control_socket
            && *xdp_mode == other.xdp_mode
            && *flow_table_size == other.flow_table_size
            && *snat_port_min == other.snat_port_min
            && *snat_port_max == other.snat_port_max
            && *snat_timewait == other.snat_timewait
            && *services == other.services
            && *vrrp == other.vrrp
            && *bgp == other.bgp
            && *flow_sync == other.flow_sync
            && *syn_flood == other.syn_flood
    }
}

impl Config {
    /// A config of `services` with every other key at its default (for `k3s-xdp import`,
    /// which then prints it with [`Config::to_document`]).
    pub fn with_services(services: Vec<Service>) -> Self {
        Config {
            interface: None,
            metrics_listen: defaults::METRICS_LISTEN,
            control_socket: PathBuf::from(defaults::CONTROL_SOCKET),
            xdp_mode: defaults::XDP_MODE,
            flow_table_size: defaults::FLOW_TABLE_SIZE,
            snat_port_min: defaults::SNAT_PORT_MIN,
            snat_port_max: defaults::SNAT_PORT_MAX,
            snat_timewait: defaults::SNAT_TIMEWAIT,
            services,
            vrrp: None,
            bgp: None,
            flow_sync: None,
            syn_flood: SynFlood::default(),
            warnings: Vec::new(),
        }
    }

    /// The addresses the load balancers hold for the services: every VIP and every SNAT pool
    /// address that is no VIP, each once.
    pub fn held_addresses(&self) -> std::collections::BTreeSet<IpAddr> {
        self.services
            .iter()
            .flat_map(|s| std::iter::once(s.vip).chain(s.snat_held_addresses()))
            .collect()
    }

    /// `snat_timewait` in whole seconds, as the data plane counts it.
    pub fn snat_timewait_secs(&self) -> u32 {
        u32::try_from(self.snat_timewait.as_secs()).unwrap_or(u32::MAX)
    }

    /// For `check`: what nat mode's SNAT ports allow. A backend that closes a connection first
    /// keeps its 4-tuple in TIME_WAIT, so its SNAT port waits `snat_timewait` before another
    /// client may have it: per backend (and source address), at most the port range divided by
    /// the wait of such connections a second, sustained. `None` without nat services.
    /// One line per group of nat services with the same number of SNAT addresses (a pool of
    /// n addresses gives each backend n times the port range).
    pub fn snat_capacity(&self) -> Option<String> {
        let mut by_pool: std::collections::BTreeMap<usize, Vec<&str>> = Default::default();
        for s in self.services.iter().filter(|s| s.mode == Mode::Nat) {
            by_pool
                .entry(s.snat_source.len())
                .or_default()
                .push(s.name.as_str());
        }
        if by_pool.is_empty() {
            return None;
        }
        let range = u64::from(self.snat_port_max - self.snat_port_min) + 1;
        let wait = u64::from(self.snat_timewait_secs());
        let lines: Vec<String> = by_pool
            .iter()
            .map(|(&addresses, names)| {
                let ports = range * addresses as u64;
                let rate = match wait {
                    0 => "no wait (snat_timewait = \"0s\")".to_string(),
                    w => format!(
                        "about {}/s per backend sustained (snat_timewait {w}s)",
                        ports / w
                    ),
                };
                let source = if addresses == 1 {
                    format!("snat_port_range [{}, {}]", self.snat_port_min, self.snat_port_max)
                } else {
                    format!(
                        "{addresses} SNAT addresses × snat_port_range [{}, {}]",
                        self.snat_port_min, self.snat_port_max
                    )
                };
                format!(
                    "nat ({}): {ports} SNAT ports per backend ({source}); connections that backends close first: {rate}; beyond that a new connection may reuse a port the backend still holds in TIME_WAIT (counted: translation_reused_waiting)",
                    names.join(", ")
                )
            })
            .collect();
        Some(lines.join("\n"))
    }

    /// Renders the config as TOML that [`parse`] reads back as an equal `Config`. Values equal
    /// to their default are left out, except the few an operator looks for first.
    pub fn to_toml(&self) -> String {
        render::to_document(self).to_string()
    }

    /// [`Config::to_toml`] as a document, for a caller that adds comments before printing it.
    pub fn to_document(&self) -> toml_edit::DocumentMut {
        render::to_document(self)
    }
}

/// `[flow_sync]`: every nat flow and its translation reach these peers, and theirs reach this
/// node, so a connection survives a failover whichever side speaks next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowSync {
    /// The other load balancers of the same VIPs (their own addresses).
    pub peers: Vec<IpAddr>,
    /// UDP port, the same on every node.
    pub port: u16,
    /// The shared secret: the file's bytes (at least 32; a final newline ignored).
    pub key_file: PathBuf,
}

/// `[syn_flood]`: the SYN flood guard. A client's source is *known* once one of its TCP
/// handshakes completed through this node. While SYNs of new flows from unknown sources
/// arrive faster than `threshold` per second, only `admit` of them per second go on, the
/// rest are dropped (`drop_syn_flood`); known sources always go through. Figures are for the
/// node; the program counts them per CPU (divided by the CPUs it may run on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SynFlood {
    /// false: every SYN goes on, as before the guard existed.
    pub guard: bool,
    /// SYNs of new flows from unknown sources per second above which the guard is up.
    pub threshold: u32,
    /// Such SYNs admitted per second while it is up (new clients still get in, slowly).
    pub admit: u32,
}

impl Default for SynFlood {
    fn default() -> Self {
        SynFlood {
            guard: true,
            threshold: defaults::SYN_FLOOD_THRESHOLD,
            admit: defaults::SYN_FLOOD_ADMIT,
        }
    }
}

impl SynFlood {
    /// The program's settings on a machine of `cpus` CPUs: the node's figures divided among
    /// them (at least 1 each), or all zero (off).
    pub fn per_cpu(&self, cpus: u32) -> k3s_xdp_common::guard::SynGuard {
        if !self.guard {
            return k3s_xdp_common::guard::SynGuard::default();
        }
        let cpus = cpus.max(1);
        k3s_xdp_common::guard::SynGuard {
            threshold: self.threshold.div_ceil(cpus).max(1),
            admit: if self.admit == 0 {
                0
            } else {
                self.admit.div_ceil(cpus).max(1)
            },
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) mode, falling back to generic mode with a warning.
    Auto,
    /// Driver mode only: fail if the driver cannot run XDP.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// A VIP:port:protocol and the backends behind it (HAProxy's frontend + backend pair).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// `SERVICE` in `k3s-xdp backend disable SERVICE/BACKEND`; `[A-Za-z0-9_.-]+`, unique.
    pub name: String,
    /// IPv4 or IPv6; the backends are of the same family (no NAT64).
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub on_backend_down: OnBackendDown,
    /// nat mode: the source addresses backends see (`snat_source`); several make a pool, each
    /// address with the whole `snat_port_range`. Default: the VIP.
    pub snat_source: Vec<SnatSource>,
    /// Maglev table size `M`: a prime, more than 100 × the number of backends.
    pub table_size: u32,
    pub backends: Vec<BackendConfig>,
    pub health: Health,
}

/// A source address of nat mode (`snat_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SnatSource {
    /// The service's VIP (the default): replies reach whichever node holds it.
    Vip,
    /// This node's own address on `interface`: replies come back to this node, whichever
    /// node the client's packets reach (ECMP); a node that fails loses its nat flows.
    Node,
    /// An address the load balancers hold as they hold the VIPs (in `vrrp.virtual_ipaddress`,
    /// or added by k3s-xdp without `[vrrp]`).
    Address(IpAddr),
}

impl fmt::Display for SnatSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnatSource::Vip => f.write_str("vip"),
            SnatSource::Node => f.write_str("node"),
            SnatSource::Address(a) => write!(f, "{a}"),
        }
    }
}

impl Serialize for SnatSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Service {
    /// A service without backends yet, every other key at its default.
    pub fn new(name: &str, vip: IpAddr, port: u16) -> Self {
        Service {
            name: name.to_string(),
            vip,
            port,
            protocol: defaults::PROTOCOL,
            mode: defaults::MODE,
            on_backend_down: defaults::ON_BACKEND_DOWN,
            snat_source: vec![SnatSource::Vip],
            table_size: defaults::TABLE_SIZE,
            backends: Vec::new(),
            health: Health::default(),
        }
    }

    /// The addresses of the SNAT pool, `node` being this node's address of the VIP's family
    /// (left out when unknown: the daemon refuses to start without it): empty when the
    /// backends see the VIP alone (the data plane's default, which needs no pool).
    pub fn snat_addresses(&self, node: Option<IpAddr>) -> Vec<IpAddr> {
        if self.snat_source.iter().all(|s| *s == SnatSource::Vip) {
            return Vec::new();
        }
        self.snat_source
            .iter()
            .filter_map(|s| match s {
                SnatSource::Vip => Some(self.vip),
                SnatSource::Node => node,
                SnatSource::Address(a) => Some(*a),
            })
            .collect()
    }

    /// Whether the pool names this node's address.
    pub fn snat_uses_node(&self) -> bool {
        self.snat_source.contains(&SnatSource::Node)
    }

    /// The addresses of the pool that the load balancers must hold besides the VIPs (neither
    /// the VIP nor `node`).
    pub fn snat_held_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.snat_source.iter().filter_map(|s| match s {
            SnatSource::Address(a) if *a != self.vip => Some(*a),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How packets reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Full NAT: the backend sees the load balancer as the client; backends need no change.
    Nat,
    /// Direct server return: only the destination MAC changes; the backend holds the VIP on
    /// `lo` and answers the client itself. Ports cannot be rewritten.
    Dsr,
}

/// What happens to a flow pinned to a backend that went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendDown {
    /// Answer its next packet with a TCP RST, so the client reconnects at once.
    Reset,
    /// Keep sending it to the backend (it may come back before the client gives up).
    Keep,
}

/// One backend server (HAProxy's `server NAME ADDRESS weight W`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    /// `BACKEND` in `SERVICE/BACKEND`; `[A-Za-z0-9_.-]+`, unique within the service.
    pub name: String,
    /// `"ip:port"` (`"[ipv6]:port"`); a bare `"ip"` in the file means the service port.
    pub address: SocketAddr,
    /// 0..=256 like HAProxy; relative to the other backends; 0 takes no new flows.
    pub weight: u32,
}

/// Active health checks of a service's backends, with HAProxy's meanings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub check: CheckKind,
    /// Request path of `https` checks.
    pub path: String,
    /// Status codes an `https` check accepts.
    pub expect: Vec<u16>,
    /// CA bundle to verify the backend's certificate (`tls` and `https`); without it the
    /// certificate is not verified.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key of `https` checks; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// File holding a bearer token sent by `https` checks.
    pub bearer_token_file: Option<PathBuf>,
    /// Port to check instead of the backend's (HAProxy's `port`).
    pub port: Option<u16>,
    /// Interval between checks of a backend that is up.
    #[serde(serialize_with = "duration::serialize")]
    pub inter: Duration,
    /// Interval between checks of a backend that is down.
    #[serde(serialize_with = "duration::serialize")]
    pub downinter: Duration,
    /// Interval while a backend is changing state (between its first and its `rise`/`fall`th
    /// result).
    #[serde(serialize_with = "duration::serialize")]
    pub fastinter: Duration,
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures that take a backend down.
    pub fall: u32,
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// A backend coming up ramps its weight from 0 over this long; 0 = at once.
    #[serde(serialize_with = "duration::serialize")]
    pub slowstart: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check: defaults::CHECK,
            path: defaults::CHECK_PATH.to_string(),
            expect: defaults::CHECK_EXPECT.to_vec(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            bearer_token_file: None,
            port: None,
            inter: defaults::INTER,
            downinter: defaults::INTER,
            fastinter: defaults::INTER,
            rise: defaults::RISE,
            fall: defaults::FALL,
            timeout: defaults::CHECK_TIMEOUT,
            slowstart: defaults::SLOWSTART,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// TCP connect.
    Tcp,
    /// TCP connect and TLS handshake.
    Tls,
    /// HTTPS GET of `path`, status in `expect`.
    Https,
}

/// Names as written in the config file, for messages and rendering.
macro_rules! keyword_names {
    ($($ty:ident { $($variant:ident => $name:literal),+ $(,)? })+) => {
        $(
            impl $ty {
                /// Every value, in the order messages list them.
                pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

                /// The word the config file uses.
                pub fn as_str(self) -> &'static str {
                    match self {
                        $($ty::$variant => $name),+
                    }
                }
            }

            impl fmt::Display for $ty {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(self.as_str())
                }
            }
        )+
    };
}

keyword_names! {
    XdpMode { Auto => "auto", Native => "native", Generic => "generic" }
    Protocol { Tcp => "tcp", Udp => "udp" }
    Mode { Nat => "nat", Dsr => "dsr" }
    OnBackendDown { Reset => "reset", Keep => "keep" }
    CheckKind { Tcp => "tcp", Tls => "tls", Https => "https" }
    InitialState { Master => "master", Backup => "backup" }
}
