//! The `[bgp]` section's types: the kernel routing table through which this node announces the
//! VIPs it can serve (a routing daemon on the host, BIRD or FRR, exports that table over BGP),
//! what decides whether it can, and what a reload changes.

use super::*;

/// `[bgp]`: active-active behind a router. k3s-xdp does not speak BGP; it keeps a route for
/// each VIP it can serve in kernel table `table`, which the routing daemon exports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bgp {
    /// The kernel routing table k3s-xdp writes and the routing daemon reads (not main, local
    /// or default).
    pub table: u32,
    /// The VIPs announced; `None`: every service VIP.
    pub vips: Option<Vec<IpAddr>>,
    pub track: BgpTrack,
    /// On SIGTERM, how long the data plane keeps forwarding after the routes are withdrawn,
    /// so the router has moved the traffic before the program detaches.
    #[serde(serialize_with = "duration::serialize")]
    pub drain_time: Duration,
    /// The routing daemon's control socket, read (never written) for the BGP sessions' state
    /// in `k3s-xdp status`; BIRD's by default.
    pub bird_socket: PathBuf,
}

/// When this node can serve a VIP: the data plane attached (if `dataplane`) and at least
/// `min_healthy_backends` healthy backends in each service of that VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BgpTrack {
    pub dataplane: bool,
    /// 0 turns backend tracking off.
    pub min_healthy_backends: u32,
}

impl Default for BgpTrack {
    fn default() -> Self {
        BgpTrack {
            dataplane: defaults::TRACK_DATAPLANE,
            min_healthy_backends: defaults::TRACK_MIN_HEALTHY_BACKENDS,
        }
    }
}

impl Bgp {
    /// `[bgp]` writing to `table`, every other key at its default.
    pub fn new(table: u32) -> Self {
        Bgp {
            table,
            vips: None,
            track: BgpTrack::default(),
            drain_time: defaults::BGP_DRAIN_TIME,
            bird_socket: PathBuf::from(defaults::BIRD_SOCKET),
        }
    }

    /// The VIPs announced, each once, in the order of the file: `vips`, or every service VIP.
    pub fn announced(&self, services: &[Service]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        let all: Vec<IpAddr> = match &self.vips {
            Some(vips) => vips.clone(),
            None => services.iter().map(|s| s.vip).collect(),
        };
        for vip in all {
            if !out.contains(&vip) {
                out.push(vip);
            }
        }
        out
    }
}

/// The kernel's reserved routing tables, which `table` may not be.
pub fn reserved_table(table: u32) -> Option<&'static str> {
    match table {
        0 => Some("unspecified (0)"),
        253 => Some("the default table (253)"),
        254 => Some("the main table (254)"),
        255 => Some("the local table (255)"),
        _ => None,
    }
}
