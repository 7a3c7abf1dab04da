//! The data plane: loading the XDP program, attaching it, and reading its counters.

mod object;

pub use object::BPF_OBJECT;
