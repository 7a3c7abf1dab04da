//! k3s-xdp: an XDP load balancer with VRRP failover for the API servers of an HA k3s cluster.
//!
//! The binary (`main.rs`) is a thin CLI over these modules. Pure logic (config validation, and
//! later Maglev, health state, VRRP) is free of I/O; the data plane and the system sit at the edges.

pub mod dataplane;
pub mod config;
