//! `k3s-xdp run`: the long-running daemon. It validates the config, binds its sockets (control,
//! metrics), loads and attaches the data plane, runs the controller (health checks, admin,
//! reload, status), VRRP and the BGP announcer, and on SIGINT/SIGTERM gives the VIPs up (BGP
//! routes withdrawn and `drain_time` waited, VRRP priority 0), detaches and restores what it
//! changed on the host.

use crate::{
    bgp::runtime::Announcer,
    config::{self, Config},
    controller::{control::ControlSocket, metrics::MetricsServer, Controller, Event},
    dataplane::{AttachPolicy, Dataplane, LoadOptions, NodeAddresses},
    guard::Guard,
    system::{self, InterfaceAddress, Netlink},
    vrrp,
};
use anyhow::{anyhow, bail, Context, Result};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

/// What `k3s-xdp run` was asked to do.
pub struct Options {
    pub config: PathBuf,
    pub iface: Option<String>,
}

pub async fn run(options: Options) -> Result<()> {
    let config = config::load(&options.config).map_err(|e| anyhow!("{e}"))?;
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let iface = options
        .iface
        .clone()
        .or_else(|| config.interface.clone())
        .ok_or_else(|| {
            anyhow!(
                "no interface: set `interface` in {} or pass --iface",
                options.config.display()
            )
        })?;
    let netlink = Netlink::connect()?;
    let ifindex = netlink.ifindex(&iface).await?;

    // [flow_sync]'s key and peers, before anything changes.
    if let Some(f) = &config.flow_sync {
        crate::flowsync::read_key_file(&f.key_file)?;
        if let Some(e) =
            crate::flowsync::own_peers_error(&crate::flowsync::peers_of_this_host(&f.peers))
        {
            bail!("{e}");
        }
    }
    // Sockets first: a port in use or a second instance fails before anything changes.
    let control = ControlSocket::bind(&config.control_socket)?;
    let metrics = MetricsServer::bind(config.metrics_listen).await?;
    let sync_socket = match &config.flow_sync {
        Some(f) => Some(crate::flowsync::runtime::bind(f.port)?),
        None => None,
    };

    let dp = Dataplane::load(LoadOptions {
        flow_table_size: config.flow_table_size,
        ipv6: config.services.iter().any(|s| s.vip.is_ipv6()),
        flow_sync: config.flow_sync.is_some(),
    })?;
    let (events_tx, events_rx) = mpsc::channel(4096);
    let mac = netlink.mac(ifindex).await?;
    let mut node = NodeAddresses::default();
    let node_families: Vec<bool> = config
        .services
        .iter()
        .filter(|s| s.snat_uses_node())
        .map(|s| s.vip.is_ipv4())
        .collect();
    if !node_families.is_empty() {
        let present = netlink.addresses(ifindex).await?;
        if node_families.contains(&true) {
            node.v4 = node_address::<Ipv4Addr>(&present, &config);
        }
        if node_families.contains(&false) {
            node.v6 = node_address::<Ipv6Addr>(&present, &config);
        }
        for (v4, found) in [(true, node.v4.is_some()), (false, node.v6.is_some())] {
            if node_families.contains(&v4) && !found {
                let family = if v4 { "IPv4" } else { "global IPv6" };
                bail!(
                    "snat_source = \"node\" needs this node's own {family} address on {iface}, \
                     and {iface} has none (besides VIPs and SNAT addresses)"
                );
            }
        }
        let range = std::fs::read_to_string(EPHEMERAL_PORTS)
            .with_context(|| format!("reading {EPHEMERAL_PORTS}"))?;
        if let Some(problem) = node_port_clash(&range, &config) {
            bail!("{problem}");
        }
        for a in node
            .v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(node.v6.map(IpAddr::V6))
        {
            info!("snat_source \"node\" is {a} (on {iface})");
        }
    }
    let (mut controller, health) = Controller::new(
        options.config.clone(),
        config.clone(),
        iface.clone(),
        mac,
        node,
        dp,
        events_tx.clone(),
    )?;

    // From here on the host changes; the guard undoes the changes if this process dies.
    let guard = Guard::spawn(&iface)?;
    let ipv6 = config.services.iter().any(|s| s.vip.is_ipv6());
    let mut changed = Vec::new();
    for setting in interface_settings(&iface, ipv6) {
        let Some(before) = setting
            .apply()
            .with_context(|| format!("setting {} ({})", setting.path, setting.why))?
        else {
            continue;
        };
        guard.restore(&setting.path, &before);
        info!(
            "set {} to {} (was {before}): {}; restored on exit",
            setting.path, setting.want, setting.why
        );
        changed.push((setting.path, before));
    }
    if ipv6 && !std::path::Path::new(&system::ipv6_conf_path(&iface, "force_forwarding")).exists() {
        warn!(
            "this kernel has no net.ipv6.conf.{iface}.force_forwarding (Linux 6.17+): an IPv6 \
             packet translated toward a next hop whose MAC address is not known yet is dropped \
             by the kernel unless net.ipv6.conf.all.forwarding = 1 (the daemon keeps the \
             backends' next hops resolved, so this is rare)"
        );
    }
    let mode = controller.attach(&iface, attach_policy(&config))?;
    match controller.dataplane_mut().link_id() {
        Some(id) => guard.keep_link(id),
        None => warn!("the XDP program is not attached through a bpf_link (Linux 5.9+): if this process is killed, its program goes before the guard removes its VIPs"),
    }
    info!(
        "XDP program attached to {iface} in {mode} mode; {} service(s), control socket {}, metrics on http://{}/metrics",
        config.services.len(),
        control.path().display(),
        metrics
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(control.serve(events_tx.clone())));
    tasks.push(tokio::spawn(metrics.serve(events_tx.clone())));
    tasks.push(tokio::spawn(signals(events_tx.clone())));
    // The backends' next hops, resolved and kept so (see `system::neighbours`).
    let (resolved_tx, mut resolved_rx) = tokio::sync::watch::channel(None);
    controller.keep_next_hops(system::neighbours::Keeper::spawn(
        ifindex,
        controller.backend_addresses(),
        move |resolved| {
            resolved_tx.send_replace(Some(resolved));
        },
    ));
    let resolved_events = events_tx.clone();
    tasks.push(tokio::spawn(async move {
        while resolved_rx.changed().await.is_ok() {
            let Some(resolved) = resolved_rx.borrow_and_update().clone() else {
                continue;
            };
            if resolved_events
                .send(Event::NextHops(resolved))
                .await
                .is_err()
            {
                break;
            }
        }
    }));
    let fib_events = events_tx.clone();
    tasks.push(tokio::spawn(async move {
        let r = system::watch_routes_and_neighbours(Duration::from_millis(500), || {
            let _ = fib_events.try_send(Event::FibChanged);
        })
        .await;
        if let Err(e) = r {
            warn!(
                "not watching route/neighbour changes ({e:#}); next hops refresh only on restart"
            );
        }
    }));

    // The link state goes through a watch channel, which keeps the latest value, so the
    // controller always ends up with the current state however fast the link flaps.
    let (link_tx, mut link_rx) = tokio::sync::watch::channel(true);
    tasks.push(tokio::spawn(async move {
        let r = system::watch_link(ifindex, |up| {
            link_tx.send_replace(up);
        })
        .await;
        if let Err(e) = r {
            warn!("not watching the link state ({e:#}); a dead link is noticed by the health checks only");
        }
    }));
    let link_events = events_tx.clone();
    tasks.push(tokio::spawn(async move {
        while link_rx.changed().await.is_ok() {
            let up = *link_rx.borrow_and_update();
            if link_events.send(Event::Link { up }).await.is_err() {
                break;
            }
        }
    }));

    // The program stays on the interface unless someone takes it off (`bpftool link detach`,
    // a driver reset): checked every second, so tracking (VRRP, BGP) fails if it goes.
    match controller.dataplane_mut().program_id() {
        Ok(id) => {
            let xdp_events = events_tx.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(netlink) = Netlink::connect() else { return };
                let mut present = true;
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    let Ok(ids) = netlink.xdp_programs(ifindex).await else {
                        continue;
                    };
                    if ids.contains(&id) != present {
                        present = !present;
                        if xdp_events.send(Event::XdpPresent(present)).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        Err(e) => warn!("cannot read the XDP program's id ({e:#}): a program detached by someone else goes unnoticed"),
    }

    // [flow_sync]: before VRRP, so that a node that starts asks its peers for their tables
    // while VRRP waits for a master's advertisement.
    let flow_sync = controller.start_flow_sync(sync_socket)?;

    // Without VRRP this node is the only load balancer: it holds the VIPs itself, and follows
    // reloads that add or remove them.
    let owned = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let mut vrrp_task = None;
    match &config.vrrp {
        None => {
            let claimed =
                claim_vips(&netlink, ifindex, &iface, &config.held_addresses(), &guard).await?;
            *owned.lock().await = claimed;
            if let Some(mut wanted) = controller.held_addresses() {
                let (owned, guard, iface) = (owned.clone(), guard.clone(), iface.clone());
                tasks.push(tokio::spawn(async move {
                    let Ok(netlink) = Netlink::connect() else {
                        return;
                    };
                    while wanted.changed().await.is_ok() {
                        let want = wanted.borrow_and_update().clone();
                        let mut owned = owned.lock().await;
                        follow(&netlink, ifindex, &iface, &want, &mut owned, &guard).await;
                    }
                }));
            }
        }
        Some(_) => {
            let settings = controller
                .vrrp_settings()
                .context("the controller has the [vrrp] settings")?;
            let instance = vrrp::runtime::Instance::start(
                settings,
                iface.clone(),
                ifindex,
                health,
                events_tx.clone(),
                guard.clone(),
            )
            .await?;
            vrrp_task = Some(instance);
        }
    }

    // [bgp]: the VIPs this node can serve are announced through a kernel routing table.
    let announcer = match controller.bgp_requests() {
        Some(requests) => Some(Announcer::start(
            ifindex,
            requests,
            events_tx.clone(),
            guard.clone(),
        )?),
        None => None,
    };

    let reason = controller.run(events_rx).await;
    info!("{reason}: shutting down");

    // Routes first, so the router moves the traffic to the other nodes while this one still
    // forwards what reaches it.
    if let Some(announcer) = announcer {
        announcer.shutdown().await;
        let drain = controller.bgp_drain_time();
        if !drain.is_zero() {
            info!("BGP routes withdrawn; forwarding for {drain:?} more (bgp.drain_time) while the router moves the traffic");
            tokio::time::sleep(drain).await;
        }
    }
    let mut failed = false;
    if let Some(instance) = vrrp_task {
        if let Err(e) = instance.shutdown().await {
            error!("VRRP shutdown: {e:#}");
            failed = true;
        }
    }
    let owned: Vec<IpAddr> = std::mem::take(&mut *owned.lock().await);
    for addr in owned {
        match netlink.del_address(ifindex, addr).await {
            Ok(()) => {
                info!("removed {addr} from {iface}");
                guard.release(addr);
            }
            Err(e) => {
                error!("{e:#}");
                failed = true;
            }
        }
    }
    if let Some(sync) = flow_sync {
        sync.stop();
    }
    guard.unlink();
    if let Some((iface, mode)) = controller.dataplane_mut().detach() {
        info!("XDP program detached from {iface} ({mode} mode)");
    }
    if let Some(keeper) = controller.take_next_hop_keeper() {
        keeper.stop().await;
    }
    for (path, before) in changed {
        match std::fs::write(&path, &before) {
            Ok(()) => guard.forget(&path),
            Err(e) => warn!("restoring {path} to {before}: {e}"),
        }
    }
    for t in tasks {
        t.abort();
    }
    if failed {
        // Left armed: the guard retries what failed when this process exits.
        bail!("shutdown left state behind (see errors above)");
    }
    guard.disarm();
    Ok(())
}

/// A setting of the interface (a sysctl file) that the daemon changes while it runs.
struct InterfaceSetting {
    path: String,
    want: &'static str,
    /// Changed only from this value (`None`: from any other).
    only_from: Option<&'static str>,
    why: &'static str,
}

impl InterfaceSetting {
    /// Writes the wanted value; the value before, if it changed anything.
    fn apply(&self) -> Result<Option<String>> {
        let before = std::fs::read_to_string(&self.path)?.trim().to_string();
        if before == self.want || self.only_from.is_some_and(|from| before != from) {
            return Ok(None);
        }
        std::fs::write(&self.path, self.want)?;
        Ok(Some(before))
    }
}

/// What the daemon sets on the interface while it runs, and why; IPv6's only with an IPv6
/// service.
fn interface_settings(iface: &str, ipv6: bool) -> Vec<InterfaceSetting> {
    let v4 = |key: &str| system::ipv4_conf_path(iface, key);
    let v6 = |key: &str| system::ipv6_conf_path(iface, key);
    let mut settings = vec![
        InterfaceSetting {
            path: v4("forwarding"),
            want: "1",
            only_from: None,
            why: "bpf_fib_lookup resolves next hops only for forwarding interfaces",
        },
        InterfaceSetting {
            path: v4("accept_local"),
            want: "1",
            only_from: None,
            why: "a packet translated to a backend or client whose MAC address is not known yet \
                  goes to the kernel with the VIP as its source, and the kernel forwards it",
        },
    ];
    if ipv6 {
        settings.extend([
            // Before forwarding: an interface that forwards ignores router advertisements
            // unless accept_ra is 2, and the host keeps its SLAAC addresses and default route.
            InterfaceSetting {
                path: v6("accept_ra"),
                want: "2",
                only_from: Some("1"),
                why: "an IPv6 forwarding interface takes router advertisements only with \
                      accept_ra = 2: the host keeps its addresses and default route",
            },
            InterfaceSetting {
                path: v6("forwarding"),
                want: "1",
                only_from: None,
                why: "bpf_fib_lookup resolves IPv6 next hops only for forwarding interfaces",
            },
        ]);
        if std::path::Path::new(&v6("force_forwarding")).exists() {
            settings.push(InterfaceSetting {
                path: v6("force_forwarding"),
                want: "1",
                only_from: None,
                why: "an IPv6 packet translated toward a next hop whose MAC address is not \
                      known yet goes to the kernel, which forwards it from this interface only",
            });
        }
    }
    settings
}

fn attach_policy(config: &Config) -> AttachPolicy {
    match config.xdp_mode {
        config::XdpMode::Auto => AttachPolicy::Auto,
        config::XdpMode::Native => AttachPolicy::Driver,
        config::XdpMode::Generic => AttachPolicy::Generic,
    }
}

/// The host's own ephemeral ports, which its connections (health checks among them) take
/// from the node's address.
const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// This node's own address of family `A` on the interface (`snat_source = "node"`): the
/// first one with a subnet that is neither a VIP nor a SNAT address (IPv6: nor link-local).
fn node_address<A>(present: &[InterfaceAddress], config: &Config) -> Option<A>
where
    A: crate::vrrp::packet::Family + Copy + Into<IpAddr>,
{
    let taken = config.held_addresses();
    let own: Vec<(A, u8)> = present
        .iter()
        .filter_map(|a| Some((a.of_family::<A>()?, a.prefix_len)))
        .filter(|(a, _)| {
            let ip: IpAddr = (*a).into();
            !taken.contains(&ip) && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
        .collect();
    let host = |a: &A| if (*a).into().is_ipv4() { 32 } else { 128 };
    own.iter()
        .find(|(a, prefix_len)| *prefix_len < host(a))
        .or(own.first())
        .map(|(a, _)| *a)
}

/// Why `snat_port_range` cannot share the node's address with the host's own connections:
/// their ephemeral ports (`range`, the text of `ip_local_port_range`) would meet the same
/// backend from the same address and port as a translation.
fn node_port_clash(range: &str, config: &Config) -> Option<String> {
    let mut words = range.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (words.next(), words.next()) else {
        return Some(format!(
            "cannot read the host's ephemeral ports from {range:?}"
        ));
    };
    let (min, max) = (config.snat_port_min, config.snat_port_max);
    if max < low || min > high {
        return None;
    }
    let hint = if low > 1024 {
        format!("snat_port_range = [1024, {}]", low - 1)
    } else {
        "a snat_port_range outside it".to_string()
    };
    Some(format!(
        "snat_source = \"node\": snat_port_range [{min}, {max}] overlaps the host's own \
         ephemeral ports [{low}, {high}] (net.ipv4.ip_local_port_range), so a translation and \
         one of the host's connections could meet a backend on the same address and port; set \
         {hint}, or narrow ip_local_port_range"
    ))
}

/// After a reload: adds the addresses of `wanted` that the interface lacks, and removes those
/// this daemon added that are no longer wanted. Errors are logged; the next reload tries again.
async fn follow(
    netlink: &Netlink,
    ifindex: u32,
    iface: &str,
    wanted: &std::collections::BTreeSet<IpAddr>,
    owned: &mut Vec<IpAddr>,
    guard: &Guard,
) {
    let gone: Vec<IpAddr> = owned
        .iter()
        .copied()
        .filter(|a| !wanted.contains(a))
        .collect();
    for addr in gone {
        match netlink.del_address(ifindex, addr).await {
            Ok(()) => {
                info!("removed {addr} from {iface} (no service holds it any more)");
                guard.release(addr);
                owned.retain(|a| *a != addr);
            }
            Err(e) => error!("{e:#}"),
        }
    }
    let new: std::collections::BTreeSet<IpAddr> = wanted
        .iter()
        .copied()
        .filter(|a| !owned.contains(a))
        .collect();
    match claim_vips(netlink, ifindex, iface, &new, guard).await {
        Ok(added) => owned.extend(added),
        Err(e) => error!("adding the new VIPs to {iface}: {e:#}"),
    }
}

/// Adds each of `addresses` (the service VIPs, and the SNAT addresses that are no VIP) to
/// `iface` as a /32 (IPv6: a /128, `nodad`) unless the interface has it already; returns the
/// ones it added, which it alone removes on exit.
async fn claim_vips(
    netlink: &Netlink,
    ifindex: u32,
    iface: &str,
    addresses: &std::collections::BTreeSet<IpAddr>,
    guard: &Guard,
) -> Result<Vec<IpAddr>> {
    let present = netlink.addresses(ifindex).await?;
    let mut added = Vec::new();
    for &vip in addresses {
        let host = if vip.is_ipv4() { 32 } else { 128 };
        if let Some(&there) = present.iter().find(|a| a.addr == vip) {
            if vip.is_ipv4() {
                info!("{vip} is already on {iface}; leaving it as it is");
                continue;
            }
            // Left by a crashed run, or added by hand: as a preferred address the host could
            // pick it as the source of its own connections (health checks among them).
            match netlink.deprecate(ifindex, there).await {
                Ok(()) => info!(
                    "{vip} is already on {iface}; left there, made deprecated (never the \
                     source of this host's connections)"
                ),
                Err(e) => warn!(
                    "{vip} is already on {iface} and could not be made deprecated ({e:#}): \
                     the host may pick it as the source of health checks"
                ),
            }
            continue;
        }
        if !present.iter().any(|a| a.prefix_len < host && a.covers(vip)) {
            let asking = if vip.is_ipv4() {
                "ARP"
            } else {
                "neighbour discovery"
            };
            warn!(
                "{vip} is in no subnet of {iface}: hosts on that link will not ask for it \
                 ({asking}); only traffic routed to it through this node reaches it"
            );
        }
        netlink
            .add_address(
                ifindex,
                InterfaceAddress {
                    addr: vip,
                    prefix_len: host,
                },
            )
            .await?;
        guard.hold(vip);
        info!("added {vip}/{host} to {iface} (no [vrrp]: this node is the only load balancer)");
        added.push(vip);
    }
    Ok(added)
}

/// SIGHUP reloads; SIGINT/SIGTERM shut down.
async fn signals(events: mpsc::Sender<Event>) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        let event = tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration");
                Event::Reload
            }
            _ = term.recv() => Event::Shutdown("SIGTERM"),
            _ = int.recv() => Event::Shutdown("SIGINT"),
        };
        let stop = matches!(event, Event::Shutdown(_));
        if events.send(event).await.is_err() || stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(snat: &str) -> Config {
        let text = format!(
            r#"
interface = "eth0"
snat_port_range = [1024, 32767]
[[service]]
name = "api"
vip = "192.0.2.100"
port = 6443
snat_source = {snat}
backends = [{{ name = "s1", address = "192.0.2.50:6443" }}]
"#
        );
        config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    fn addr(a: &str, prefix_len: u8) -> InterfaceAddress {
        InterfaceAddress {
            addr: a.parse().unwrap(),
            prefix_len,
        }
    }

    #[test]
    fn the_node_address_is_the_first_own_address_with_a_subnet() {
        let c = config(r#"["node", "192.0.2.7"]"#);
        let present = [
            addr("192.0.2.100", 32),
            addr("192.0.2.7", 24),
            addr("192.0.2.9", 32),
            addr("192.0.2.10", 24),
        ];
        assert_eq!(
            node_address::<Ipv4Addr>(&present, &c),
            Some("192.0.2.10".parse().unwrap())
        );
        assert_eq!(
            node_address::<Ipv4Addr>(&present[..3], &c),
            Some("192.0.2.9".parse().unwrap()),
            "a /32 when nothing else"
        );
        assert_eq!(
            node_address::<Ipv4Addr>(&present[..2], &c),
            None,
            "VIP and pool only"
        );
        assert_eq!(node_address::<Ipv6Addr>(&present, &c), None);
    }

    #[test]
    fn the_ipv6_node_address_is_global_and_not_held() {
        let c = config(r#""node""#);
        let present = [
            addr("fe80::1", 64),
            addr("2001:db8::7", 128),
            addr("2001:db8::9", 64),
            addr("192.0.2.10", 24),
        ];
        assert_eq!(
            node_address::<Ipv6Addr>(&present, &c),
            Some("2001:db8::9".parse().unwrap())
        );
        assert_eq!(
            node_address::<Ipv6Addr>(&present[..2], &c),
            Some("2001:db8::7".parse().unwrap()),
            "a /128 when nothing else, never the link-local one"
        );
        assert_eq!(node_address::<Ipv6Addr>(&present[..1], &c), None);
    }

    #[test]
    fn snat_ports_may_not_overlap_the_hosts_ephemeral_ports() {
        let c = config(r#""node""#);
        assert_eq!(node_port_clash("32768\t60999\n", &c), None);
        let clash = node_port_clash("32000 60999", &c).unwrap();
        assert!(clash.contains("[1024, 31999]"), "{clash}");
        assert!(node_port_clash("garbage", &c).is_some());
    }
}
