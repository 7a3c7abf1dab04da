//! VRRP: the wire codec ([`packet`]) and the state machine ([`machine`]), both pure, and the
//! task that runs them on the interface ([`runtime`]).

pub mod machine;
pub mod packet;
pub mod runtime;
