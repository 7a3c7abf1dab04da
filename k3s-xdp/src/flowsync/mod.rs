//! Flow sync (`[flow_sync]`, DESIGN.md "Flow sync"): nat flows known to every load balancer of
//! the same VIPs, so a connection survives a failover whichever side speaks next.
//!
//! - `wire.rs` (pure): the messages, their authentication and the replay window.

pub mod wire;
