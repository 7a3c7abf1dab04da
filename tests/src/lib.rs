//! Test library of k3s-xdp: what integration tests, BPF tests, the lab and the benchmarks share.
//!
//! - [`netns`]: network namespaces, running code and commands inside them.
//! - [`topology`]: the seed topology (lb-1, lb-2, servers, agents) in network namespaces, removed on drop.
//! - [`backend`]: TCP and TLS backends that say which server they are, with counters.
//! - [`packet`]: packet builders and parsers for BPF_PROG_TEST_RUN tests.
//! - [`bpf`]: loading the real XDP program and running packets through it.
//! - [`config`]: the seed topology's k3s-xdp config, with what a test adds.
//! - [`daemon`]: `k3s-xdp run` as a process in a node, driven over its control socket.
//! - [`keepalived`]: a real keepalived as a VRRP peer in a node.
//! - [`bird`]: a real BIRD 2, on the load balancers and on a router, for `[bgp]`.
//! - [`ecmp`]: the BGP/ECMP lab: a router, three load balancers with BIRD and k3s-xdp.
//! - [`flood`]: a SYN flood from documentation addresses, and the legitimate traffic beside it.
//! - [`traffic`]: UDP echo servers, and bounded streams of connections and requests whose every
//!   outcome is recorded.
//! - [`soak`]: the soak: the pair under traffic and a seeded schedule of faults, judged.

pub mod backend;
pub mod bird;
pub mod bpf;
pub mod config;
pub mod daemon;
pub mod ecmp;
pub mod flood;
pub mod keepalived;
pub mod netns;
pub mod packet;
pub mod packet6;
pub mod soak;
pub mod topology;
pub mod traffic;

/// Polls `f` every 10 ms until it holds; panics (naming `what`) after `limit`. Returns how long
/// it took, for the tests that bound a takeover time.
pub fn wait_until(
    limit: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    started.elapsed()
}

/// Holds the test binary's one lock while a test that builds a topology or starts daemons runs:
/// they share the machine's 2 cores, its metrics port and its kernel, so they run one at a time
/// (each test binary has its own lock; binaries run one after the other). A test that panicked
/// while holding it leaves it usable.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
