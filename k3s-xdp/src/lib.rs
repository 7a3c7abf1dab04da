//! k3s-xdp: an XDP load balancer with VRRP failover for the API servers of an HA k3s cluster.
//!
//! The binary (`main.rs`) is a thin CLI over these modules. Pure cores, unit-tested without
//! sockets or clocks: [`config`] (parsing and validation), [`maglev`], [`health::state`],
//! [`vrrp::machine`] and [`vrrp::packet`], [`bgp::announce`], [`import`], [`controller::model`].
//! I/O at the edges: [`dataplane`] (the XDP program and its maps), [`system`] (netlink, raw
//! sockets), [`health::check`] (probes), [`vrrp::runtime`], [`bgp::runtime`] (the routes the
//! routing daemon exports), [`controller`] (the daemon's event loop, control socket, metrics)
//! and [`daemon`] (`k3s-xdp run`).

pub mod bgp;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod flowsync;
pub mod guard;
pub mod health;
pub mod import;
pub mod maglev;
pub mod system;
pub mod vrrp;
