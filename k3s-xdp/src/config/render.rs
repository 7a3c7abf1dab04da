//! [`Config::to_toml`](super::Config::to_toml) and [`Config::to_document`](super::Config::to_document):
//! a config written back as TOML, in the layout of the examples (backends as one inline table
//! per line, `[service.health]`, `[vrrp]`).
//!
//! `k3s-xdp import` builds a [`Config`] from haproxy.cfg and keepalived.conf and prints it
//! with this. The output is faithful: [`parse`](super::parse) reads it back as an equal config.
//! Keys whose value is the default are left out to keep it short, except the ones an operator
//! looks for first (the health check kind and timings, the VRRP identity and priority).

use super::{
    defaults, duration, BackendConfig, Bgp, BgpTrack, Config, Health, Service, SnatSource,
    SynFlood, Track, Vrrp,
};
use std::{path::Path, time::Duration};
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

pub(super) fn to_document(config: &Config) -> DocumentMut {
    let mut doc = DocumentMut::new();
    let root = doc.as_table_mut();
    if let Some(interface) = &config.interface {
        root.insert("interface", value(interface.as_str()));
    }
    if config.metrics_listen != defaults::METRICS_LISTEN {
        root.insert("metrics_listen", value(config.metrics_listen.to_string()));
    }
    if config.control_socket != Path::new(defaults::CONTROL_SOCKET) {
        root.insert("control_socket", path_value(&config.control_socket));
    }
    if config.xdp_mode != defaults::XDP_MODE {
        root.insert("xdp_mode", value(config.xdp_mode.as_str()));
    }
    if config.flow_table_size != defaults::FLOW_TABLE_SIZE {
        root.insert("flow_table_size", value(i64::from(config.flow_table_size)));
    }
    if (config.snat_port_min, config.snat_port_max)
        != (defaults::SNAT_PORT_MIN, defaults::SNAT_PORT_MAX)
    {
        let range: Array = [config.snat_port_min, config.snat_port_max]
            .into_iter()
            .map(i64::from)
            .collect();
        root.insert("snat_port_range", value(range));
    }
    if config.snat_timewait != defaults::SNAT_TIMEWAIT {
        root.insert("snat_timewait", duration_value(config.snat_timewait));
    }

    let mut services = ArrayOfTables::new();
    for service in &config.services {
        services.push(service_table(service));
    }
    root.insert("service", Item::ArrayOfTables(services));

    if let Some(vrrp) = &config.vrrp {
        root.insert("vrrp", Item::Table(vrrp_table(vrrp)));
    }
    if let Some(f) = &config.flow_sync {
        let mut t = Table::new();
        let peers: Array = f.peers.iter().map(|a| a.to_string()).collect();
        t.insert("peers", value(peers));
        t.insert("port", value(i64::from(f.port)));
        t.insert("key_file", path_value(&f.key_file));
        root.insert("flow_sync", Item::Table(t));
    }
    if let Some(bgp) = &config.bgp {
        root.insert("bgp", Item::Table(bgp_table(bgp)));
    }
    if config.syn_flood != SynFlood::default() {
        let mut t = Table::new();
        let (f, d) = (config.syn_flood, SynFlood::default());
        if f.guard != d.guard {
            t.insert("guard", value(f.guard));
        }
        if f.threshold != d.threshold {
            t.insert("threshold", value(i64::from(f.threshold)));
        }
        if f.admit != d.admit {
            t.insert("admit", value(i64::from(f.admit)));
        }
        root.insert("syn_flood", Item::Table(t));
    }
    doc
}

fn bgp_table(b: &Bgp) -> Table {
    let mut t = Table::new();
    t.insert("table", value(i64::from(b.table)));
    if let Some(vips) = &b.vips {
        let list: Array = vips.iter().map(|a| a.to_string()).collect();
        t.insert("vips", value(list));
    }
    if b.track != BgpTrack::default() {
        let mut track = InlineTable::new();
        track.insert("dataplane", b.track.dataplane.into());
        track.insert(
            "min_healthy_backends",
            i64::from(b.track.min_healthy_backends).into(),
        );
        t.insert("track", value(track));
    }
    if b.drain_time != defaults::BGP_DRAIN_TIME {
        t.insert("drain_time", duration_value(b.drain_time));
    }
    if b.bird_socket != Path::new(defaults::BIRD_SOCKET) {
        t.insert("bird_socket", path_value(&b.bird_socket));
    }
    t
}

fn path_value(path: &Path) -> Item {
    value(path.to_string_lossy().as_ref())
}

fn duration_value(d: Duration) -> Item {
    value(duration::format(d))
}

fn service_table(s: &Service) -> Table {
    let mut t = Table::new();
    t.insert("name", value(s.name.as_str()));
    t.insert("vip", value(s.vip.to_string()));
    t.insert("port", value(i64::from(s.port)));
    if s.protocol != defaults::PROTOCOL {
        t.insert("protocol", value(s.protocol.as_str()));
    }
    if s.mode != defaults::MODE {
        t.insert("mode", value(s.mode.as_str()));
    }
    if s.on_backend_down != defaults::ON_BACKEND_DOWN {
        t.insert("on_backend_down", value(s.on_backend_down.as_str()));
    }
    match s.snat_source.as_slice() {
        [SnatSource::Vip] => {}
        [one] => {
            t.insert("snat_source", value(one.to_string()));
        }
        pool => {
            let list: Array = pool.iter().map(|a| Value::from(a.to_string())).collect();
            t.insert("snat_source", value(list));
        }
    }
    if s.table_size != defaults::TABLE_SIZE {
        t.insert("table_size", value(i64::from(s.table_size)));
    }
    let mut backends: Array = s.backends.iter().map(backend_value).collect();
    for b in backends.iter_mut() {
        b.decor_mut().set_prefix("\n  ");
    }
    backends.set_trailing("\n");
    backends.set_trailing_comma(true);
    t.insert("backends", value(backends));
    t.insert("health", Item::Table(health_table(&s.health)));
    t
}

fn backend_value(b: &BackendConfig) -> Value {
    let mut t = InlineTable::new();
    t.insert("name", b.name.as_str().into());
    t.insert("address", b.address.to_string().into());
    if b.weight != defaults::BACKEND_WEIGHT {
        t.insert("weight", i64::from(b.weight).into());
    }
    Value::InlineTable(t)
}

fn health_table(h: &Health) -> Table {
    let mut t = Table::new();
    t.insert("check", value(h.check.as_str()));
    if h.path != defaults::CHECK_PATH {
        t.insert("path", value(h.path.as_str()));
    }
    if h.expect != defaults::CHECK_EXPECT {
        let codes: Array = h.expect.iter().map(|&c| i64::from(c)).collect();
        t.insert("expect", value(codes));
    }
    let files = [
        ("ca_file", &h.ca_file),
        ("client_cert", &h.client_cert),
        ("client_key", &h.client_key),
        ("bearer_token_file", &h.bearer_token_file),
    ];
    for (key, file) in files {
        if let Some(file) = file {
            t.insert(key, path_value(file));
        }
    }
    if let Some(port) = h.port {
        t.insert("port", value(i64::from(port)));
    }
    t.insert("inter", duration_value(h.inter));
    if h.downinter != h.inter {
        t.insert("downinter", duration_value(h.downinter));
    }
    if h.fastinter != h.inter {
        t.insert("fastinter", duration_value(h.fastinter));
    }
    t.insert("rise", value(i64::from(h.rise)));
    t.insert("fall", value(i64::from(h.fall)));
    if h.timeout != defaults::CHECK_TIMEOUT {
        t.insert("timeout", duration_value(h.timeout));
    }
    if h.slowstart != defaults::SLOWSTART {
        t.insert("slowstart", duration_value(h.slowstart));
    }
    t
}

fn vrrp_table(v: &Vrrp) -> Table {
    let mut t = Table::new();
    t.insert("virtual_router_id", value(i64::from(v.virtual_router_id)));
    t.insert("priority", value(i64::from(v.priority)));
    t.insert("state", value(v.state.as_str()));
    t.insert("advert_int", duration_value(v.advert_int));
    let addresses: Array = v.virtual_ipaddress.iter().map(|a| a.to_string()).collect();
    t.insert("virtual_ipaddress", value(addresses));
    if let Some(src) = v.unicast_src_ip {
        t.insert("unicast_src_ip", value(src.to_string()));
    }
    if !v.unicast_peers.is_empty() {
        let peers: Array = v.unicast_peers.iter().map(|p| p.to_string()).collect();
        t.insert("unicast_peers", value(peers));
    }
    if v.preempt != defaults::PREEMPT {
        t.insert("preempt", value(v.preempt));
    }
    if v.preempt_delay != defaults::PREEMPT_DELAY {
        t.insert("preempt_delay", duration_value(v.preempt_delay));
    }
    t.insert("version", value(i64::from(v.version)));
    if let Some(pass) = &v.auth_pass {
        t.insert("auth_pass", value(pass.as_str()));
    }
    if v.track != Track::default() {
        t.insert("track", value(track_value(&v.track)));
    }
    if v.garp_master_repeat != defaults::GARP_MASTER_REPEAT {
        t.insert("garp_master_repeat", value(i64::from(v.garp_master_repeat)));
    }
    if v.garp_interval != defaults::GARP_INTERVAL {
        t.insert("garp_interval", duration_value(v.garp_interval));
    }
    if v.garp_master_refresh != defaults::GARP_MASTER_REFRESH {
        t.insert("garp_master_refresh", duration_value(v.garp_master_refresh));
    }
    t
}

/// Only the fields that differ from the default.
fn track_value(track: &Track) -> InlineTable {
    let mut t = InlineTable::new();
    if track.dataplane != defaults::TRACK_DATAPLANE {
        t.insert("dataplane", track.dataplane.into());
    }
    if track.min_healthy_backends != defaults::TRACK_MIN_HEALTHY_BACKENDS {
        t.insert(
            "min_healthy_backends",
            i64::from(track.min_healthy_backends).into(),
        );
    }
    if track.weight != defaults::TRACK_WEIGHT {
        t.insert("weight", i64::from(track.weight).into());
    }
    t
}
