//! Why the XDP program passed, dropped or answered a packet: one per-CPU counter each, indexed
//! by these constants in the `REASONS` array. `NAMES` gives the label used by `k3s-xdp status`
//! and the `reason` label of `k3sxdp_xdp_packets_total`.

/// Not IP (ARP, LLDP, ...): the host's business.
pub const PASS_NOT_IP: u32 = 0;
/// IPv4 or IPv6 but not addressed to a VIP: the host's own traffic (ssh, VRRP, health checks,
/// neighbour discovery).
pub const PASS_NOT_VIP: u32 = 1;
/// Addressed to a VIP but to no configured port/protocol, and not a NAT reply.
pub const PASS_VIP_OTHER: u32 = 2;
/// Forwarded to a backend (XDP_TX or redirect).
pub const TX_FORWARD: u32 = 3;
/// A backend's reply, translated back to the client (nat mode).
pub const TX_REPLY: u32 = 4;
/// ICMP echo request to a VIP, answered.
pub const TX_ICMP_ECHO: u32 = 5;
/// ICMP "fragmentation needed" about a VIP flow, sent on to that flow's backend.
pub const TX_ICMP_TO_BACKEND: u32 = 6;
/// TCP RST sent to a client whose flow's backend is down, or when no backend is healthy.
pub const TX_RESET: u32 = 7;
/// Addressed to a VIP, but too short for the headers it announces.
pub const DROP_TRUNCATED: u32 = 8;
/// IPv4 header with a bad version, IHL or total length; IPv6 header with a bad version or
/// payload length.
pub const DROP_BAD_IP_HEADER: u32 = 9;
/// IP fragment addressed to a VIP (ports unknown, cannot be balanced).
pub const DROP_FRAGMENT: u32 = 10;
/// TCP header with a data offset below 5 or beyond the packet.
pub const DROP_BAD_L4_HEADER: u32 = 11;
/// No healthy backend for a new non-TCP flow (TCP gets a RST instead).
pub const DROP_NO_BACKEND: u32 = 12;
/// dsr mode: the next hop toward the backend has no resolved neighbour. (In nat mode such a
/// packet is translated and handed to the kernel instead: `PASS_NO_NEIGHBOUR`. A dsr frame
/// still carries the VIP as its destination, which the kernel would deliver to itself.)
pub const DROP_NO_NEIGHBOUR: u32 = 13;
/// `bpf_fib_lookup` found no route, or an unusable one.
pub const DROP_NO_ROUTE: u32 = 14;
/// All candidate SNAT ports for a new nat flow were taken.
pub const DROP_SNAT_EXHAUSTED: u32 = 15;
/// A flow or NAT table update failed.
pub const DROP_MAP_UPDATE: u32 = 16;
/// More than one VLAN tag (only one 802.1Q tag is supported).
pub const PASS_STACKED_VLAN: u32 = 17;
/// Too short or malformed to tell whether it is addressed to a VIP: left to the kernel, which
/// drops what is really broken.
pub const PASS_MALFORMED: u32 = 18;
/// Addressed to a VIP but sent to another node's MAC address (unknown unicast flooded by a
/// switch, for instance to the backup): left to the kernel, which drops it.
pub const PASS_OTHER_HOST: u32 = 19;
/// The new-flow half of the program could not be reached (its tail-call slot is empty): a
/// k3s-xdp bug, never expected.
pub const DROP_INTERNAL: u32 = 20;
/// Translated (or answered) here, but the next hop toward the backend or client has no
/// resolved neighbour: handed to the kernel, which resolves it (ARP) and forwards the packet.
/// Never sent to a MAC address learnt from a frame, which may be another router's.
pub const PASS_NO_NEIGHBOUR: u32 = 21;
/// Addressed to an address of a SNAT pool (`snat_source`) but no backend's reply to a
/// translation (or not parsable as one): the host's own traffic, left to the kernel.
pub const PASS_SNAT_ADDRESS: u32 = 22;

/// IPv6 to a VIP whose extension headers the program cannot walk: an unknown or truncated
/// one, a routing header with segments left (the VIP is not its final destination), or more
/// than the walk's bound (`crate::MAX_EXTENSION_HEADERS`). A fragment counts as `DROP_FRAGMENT`.
pub const DROP_BAD_EXTENSION: u32 = 23;

/// A SYN of a new TCP flow from a source that never completed a handshake through this node,
/// dropped while the SYN flood guard is up and its admissions are spent (see
/// `crate::guard`).
pub const DROP_SYN_FLOOD: u32 = 24;

/// Number of reasons; the length of the `REASONS` map.
pub const COUNT: u32 = 25;

/// Label of each reason, indexed by its constant.
pub const NAMES: [&str; COUNT as usize] = [
    "pass_not_ip",
    "pass_not_vip",
    "pass_vip_other",
    "tx_forward",
    "tx_reply",
    "tx_icmp_echo",
    "tx_icmp_to_backend",
    "tx_reset",
    "drop_truncated",
    "drop_bad_ip_header",
    "drop_fragment",
    "drop_bad_l4_header",
    "drop_no_backend",
    "drop_no_neighbour",
    "drop_no_route",
    "drop_snat_exhausted",
    "drop_map_update",
    "pass_stacked_vlan",
    "pass_malformed",
    "pass_other_host",
    "drop_internal",
    "pass_no_neighbour",
    "pass_snat_address",
    "drop_bad_extension",
    "drop_syn_flood",
];

/// Signs that the flow tables are too small (or flooded), and what the SYN flood guard saw, counted per CPU in `TABLE_EVENTS`,
/// indexed by these constants. Not packet fates: the packet went on.
pub mod table {
    /// A new flow's entry replaced another flow's that had seen a packet in the last
    /// `table::IDLE_SECS` (its bucket was full): that flow's next packet chooses again.
    pub const FLOW_EVICTED: u32 = 0;
    /// Every SNAT port a new flow tried was held by a live translation: it took over the one
    /// seen longest ago, whose connection breaks.
    pub const TRANSLATION_TAKEN_OVER: u32 = 1;
    /// Every SNAT port a new flow tried was live or still waiting for its backend's TIME_WAIT
    /// (`snat_timewait`), and at least one was waiting: it took the one that waited longest,
    /// which the backend may still refuse once (PAWS): the port range is too small for the
    /// rate of connections that backends close first.
    pub const TRANSLATION_REUSED_WAITING: u32 = 2;
    /// A new flow's entry replaced an unconfirmed one (a flow that had sent one packet only,
    /// see `table::UNCONFIRMED`) rather than a confirmed one: what a SYN flood causes.
    pub const FLOW_UNCONFIRMED_REPLACED: u32 = 3;
    /// Every SNAT port a new flow tried was held: it took over an unconfirmed translation
    /// (whose client had sent one packet only) rather than a waiting or live one.
    pub const TRANSLATION_UNCONFIRMED_TAKEN: u32 = 4;
    /// A SYN of a new TCP flow from a source not known to have completed a handshake (see
    /// `crate::guard`), counted while the SYN flood guard is on, whatever its fate.
    pub const SYN_UNKNOWN_SOURCE: u32 = 5;
    /// Such a SYN admitted while the guard was up (within `[syn_flood] admit`); the rest are
    /// dropped (`DROP_SYN_FLOOD`).
    pub const SYN_GUARD_ADMITTED: u32 = 6;
    /// Number of events; the length of the `TABLE_EVENTS` map.
    pub const COUNT: u32 = 7;
    /// Label of each event, indexed by its constant.
    pub const NAMES: [&str; COUNT as usize] = [
        "flow_evicted",
        "translation_taken_over",
        "translation_reused_waiting",
        "flow_unconfirmed_replaced",
        "translation_unconfirmed_taken",
        "syn_unknown_source",
        "syn_guard_admitted",
    ];
}
