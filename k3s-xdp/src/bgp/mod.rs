//! `[bgp]`: active-active load balancers behind a router. k3s-xdp does not speak BGP: it keeps
//! a host route for each VIP it can serve in a kernel table of its own, and the routing daemon
//! on the host (BIRD 2, or FRR) exports that table to the router, which spreads the VIP's
//! traffic over every node that announces it (ECMP). Identical Maglev tables on every node send
//! a flow to the same backend whichever node the router picks.
//!
//! - [`announce`] (pure): which VIPs to announce now, and why the others are withdrawn;
//! - [`runtime`]: the task that keeps the table so, tells the guard, and reports;
//! - [`bird`]: the BGP sessions, read from BIRD's control socket for status.

pub mod announce;
pub mod bird;
pub mod runtime;
