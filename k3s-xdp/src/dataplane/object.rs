//! The XDP object, built by `build.rs` and embedded in the binary.

/// The ELF object holding the `k3s_xdp` and `k3s_xdp_pass` programs and their maps; empty
/// when the crate was built without the BPF toolchain (see [`check`]).
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/k3s-xdp.bpf.o"));

/// The same program with the benchmark entry points (`k3s_xdp_bench`, `k3s_xdp_bench_floor`)
/// and their `BENCH` map: cargo feature `bench`, for `k3s-xdp-bench` only. The daemon always
/// runs [`BPF_OBJECT`].
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/k3s-xdp-bench.bpf.o"));

/// Whether the embedded object is the real program: a debug build without the BPF toolchain
/// (`cargo check`, an editor) embeds an empty stand-in, with which nothing can be loaded.
pub fn check() -> anyhow::Result<()> {
    if BPF_OBJECT.is_empty() {
        anyhow::bail!(
            "this k3s-xdp was built without its XDP program (no BPF toolchain at build time, or \
             K3S_XDP_BPF_STUB=1): it can check configuration files but not run the data plane; \
             run `cargo xtask setup` and build again"
        );
    }
    Ok(())
}
