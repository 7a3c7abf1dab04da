//! VRRP: the wire codec ([`packet`]), the state machine ([`machine`]) and the takeover
//! announcements ([`announce`]), all pure, and the
//! task that runs them on the interface ([`runtime`]).

pub mod announce;
pub mod machine;
pub mod packet;
pub mod runtime;
