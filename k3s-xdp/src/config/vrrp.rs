//! The `[vrrp]` section's types: the instance, its virtual addresses and tracking, and which of
//! its keys a reload may change while running.

use super::*;

/// The VRRP instance (keepalived's `vrrp_instance`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vrrp {
    pub virtual_router_id: u8,
    /// 1..=254: 255 is reserved for the address owner, 0 for a master that leaves.
    pub priority: u8,
    pub state: InitialState,
    #[serde(serialize_with = "duration::serialize")]
    pub advert_int: Duration,
    /// The addresses VRRP moves; every service VIP is one of them.
    pub virtual_ipaddress: Vec<VirtualAddress>,
    /// Source of the adverts; by default the interface's primary address.
    pub unicast_src_ip: Option<IpAddr>,
    /// Empty: adverts go to multicast 224.0.0.18 (IPv6: ff02::12). Each family's virtual
    /// router sends to the peers of its family.
    pub unicast_peers: Vec<IpAddr>,
    pub preempt: bool,
    #[serde(serialize_with = "duration::serialize")]
    pub preempt_delay: Duration,
    /// 2 or 3; 2 speaks to keepalived peers configured with `auth_type PASS`.
    pub version: u8,
    /// Version 2 only; 1..=8 bytes.
    pub auth_pass: Option<String>,
    pub track: Track,
    /// Gratuitous ARPs sent on becoming master.
    pub garp_master_repeat: u32,
    /// Spacing between those gratuitous ARPs.
    #[serde(serialize_with = "duration::serialize")]
    pub garp_interval: Duration,
    /// Period of the gratuitous ARP refresh while master; 0 = off.
    #[serde(serialize_with = "duration::serialize")]
    pub garp_master_refresh: Duration,
}

/// What a reload changes in a running VRRP instance.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VrrpReload {
    /// Settings the running instance takes at once, as "key old -> new".
    pub live: Vec<String>,
    /// Keys that change the virtual router itself or its sockets (`vrrp.KEY`): they take effect
    /// at the next start.
    pub at_restart: Vec<&'static str>,
}

impl Vrrp {
    /// An instance moving `virtual_ipaddress`, every other key at its default.
    pub fn new(virtual_router_id: u8, virtual_ipaddress: Vec<VirtualAddress>) -> Self {
        Vrrp {
            virtual_router_id,
            priority: defaults::PRIORITY,
            state: defaults::STATE,
            advert_int: defaults::ADVERT_INT,
            virtual_ipaddress,
            unicast_src_ip: None,
            unicast_peers: Vec::new(),
            preempt: defaults::PREEMPT,
            preempt_delay: defaults::PREEMPT_DELAY,
            version: defaults::VRRP_VERSION,
            auth_pass: None,
            track: Track::default(),
            garp_master_repeat: defaults::GARP_MASTER_REPEAT,
            garp_interval: defaults::GARP_INTERVAL,
            garp_master_refresh: defaults::GARP_MASTER_REFRESH,
        }
    }

    /// What changes from `self` (running) to `new` (reloaded). The priority, timers, preemption,
    /// tracking and gratuitous ARP settings apply live; the router's identity (id, version,
    /// password, addresses, peers) and the initial state wait for a restart.
    pub fn reload_to(&self, new: &Vrrp) -> VrrpReload {
        // Destructured so that a new field cannot be forgotten here.
        let Vrrp {
            virtual_router_id,
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
        } = self;
        let mut r = VrrpReload::default();
        let mut live = |key: &str, old: String, new: String| {
            if old != new {
                r.live.push(format!("{key} {old} -> {new}"));
            }
        };
        let d = |d: &Duration| duration::format(*d);
        live("priority", priority.to_string(), new.priority.to_string());
        live("advert_int", d(advert_int), d(&new.advert_int));
        live("preempt", preempt.to_string(), new.preempt.to_string());
        live("preempt_delay", d(preempt_delay), d(&new.preempt_delay));
        let t = |t: &Track| {
            format!(
                "{{ dataplane = {}, min_healthy_backends = {}, weight = {} }}",
                t.dataplane, t.min_healthy_backends, t.weight
            )
        };
        live("track", t(track), t(&new.track));
        live(
            "garp_master_repeat",
            garp_master_repeat.to_string(),
            new.garp_master_repeat.to_string(),
        );
        live("garp_interval", d(garp_interval), d(&new.garp_interval));
        live(
            "garp_master_refresh",
            d(garp_master_refresh),
            d(&new.garp_master_refresh),
        );
        let restart = [
            (
                "vrrp.virtual_router_id",
                *virtual_router_id != new.virtual_router_id,
            ),
            ("vrrp.state", *state != new.state),
            (
                "vrrp.virtual_ipaddress",
                *virtual_ipaddress != new.virtual_ipaddress,
            ),
            ("vrrp.unicast_src_ip", *unicast_src_ip != new.unicast_src_ip),
            ("vrrp.unicast_peers", *unicast_peers != new.unicast_peers),
            ("vrrp.version", *version != new.version),
            ("vrrp.auth_pass", *auth_pass != new.auth_pass),
        ];
        r.at_restart = restart
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect();
        r
    }

    /// `new`, but with the identity of `self` (what [`Vrrp::reload_to`] leaves for a restart).
    pub fn retuned(&self, new: &Vrrp) -> Vrrp {
        Vrrp {
            virtual_router_id: self.virtual_router_id,
            state: self.state,
            virtual_ipaddress: self.virtual_ipaddress.clone(),
            unicast_src_ip: self.unicast_src_ip,
            unicast_peers: self.unicast_peers.clone(),
            version: self.version,
            auth_pass: self.auth_pass.clone(),
            ..new.clone()
        }
    }
}

/// The state a VRRP instance starts in (keepalived's `state MASTER|BACKUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    Master,
    Backup,
}

/// `"ip/prefix"` in `virtual_ipaddress`: the address, and the prefix it is added with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for VirtualAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// As `"ip/prefix"`, the way the file writes it.
impl Serialize for VirtualAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What the VRRP instance watches, keepalived's `track_script` made built-in.
///
/// The track fails while the data plane is not attached (if `dataplane`) or while fewer than
/// `min_healthy_backends` backends, counted over all services, are healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Track {
    pub dataplane: bool,
    /// 0 turns backend tracking off.
    pub min_healthy_backends: u32,
    /// keepalived's meaning: 0 = the instance goes to FAULT while the track fails; otherwise
    /// added to the priority while the track fails (-254..=254, usually negative).
    pub weight: i32,
}

impl Default for Track {
    fn default() -> Self {
        Track {
            dataplane: defaults::TRACK_DATAPLANE,
            min_healthy_backends: defaults::TRACK_MIN_HEALTHY_BACKENDS,
            weight: defaults::TRACK_WEIGHT,
        }
    }
}
