//! The XDP object, built by `build.rs` and embedded in the binary.

/// The ELF object holding the `k3s_xdp` and `k3s_xdp_pass` programs and their maps.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/k3s-xdp.bpf.o"));
