//! Health checking: the pure state of each backend ([`state`]) and the probes that feed it
//! ([`check`]).

pub mod check;
pub mod state;
