//! Where the CPU goes during a phase of the end-to-end benchmark: `perf record -a` (all
//! CPUs, sampling at [`FREQUENCY`] Hz, no call graphs) while the phase runs, then the samples
//! grouped by symbol into a few categories (the XDP program, veth, the bridge, TCP/IP, ...).
//!
//! Optional: without `perf` (Debian's `linux-perf`, which `cargo xtask setup --bench`
//! installs) the report says so and leaves the profile out. perf is started and stopped by
//! its PID (SIGINT, so it writes its file) and never outlives a [`Recording`].

use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Samples per second and CPU.
pub const FREQUENCY: u32 = 999;

/// Categories in the order they are tried on a symbol, and shown.
pub const CATEGORIES: [&str; 11] = [
    "XDP programs, their maps and helpers",
    "veth driver, XDP frames",
    "bridge",
    "TCP/IP stack",
    "network core (NAPI, softirq, queues)",
    "memory (skb, slab, pages, copies)",
    "scheduler, wake-ups, timers, locks",
    "system calls, epoll, files",
    "user space (clients, servers, proxy)",
    "other kernel",
    "idle",
];

/// The category of a sample in `dso` at `symbol` (`user` for user-space samples).
fn category(dso: &str, symbol: &str, user: bool) -> usize {
    let s = symbol;
    let any = |pats: &[&str]| pats.iter().any(|p| s.contains(p));
    let starts = |pats: &[&str]| pats.iter().any(|p| s.starts_with(p));
    if dso.starts_with("bpf_prog_")
        || s.starts_with("bpf_prog_")
        || any(&[
            "htab",
            "lookup_nulls_elem",
            "bpf_lru",
            "bpf_ipv4_fib_lookup",
            "bpf_xdp_",
        ])
        || starts(&["bpf_fib", "__bpf_prog", "bpf_dispatcher"])
    {
        0
    } else if user {
        8
    } else if starts(&["veth_", "__xdp", "xdp_"]) {
        1
    } else if starts(&["br_", "__br_", "nf_hook"]) {
        2
    } else if any(&["halt", "idle"]) {
        10
    } else if starts(&[
        "tcp",
        "__tcp",
        "inet",
        "__inet",
        "ip_",
        "__ip_",
        "ipv4_",
        "raw_",
        "icmp",
        "sk_",
        "__sk_",
        "sock",
        "__sock",
        "neigh",
        "dst_",
        "rt_",
        "fib_",
        "udp",
        "secure_tcp",
        "__skb_checksum",
    ]) {
        3
    } else if any(&[
        "netif", "napi", "net_rx", "dev_", "gro", "backlog", "qdisc", "softirq", "eth_type",
    ]) {
        4
    } else if any(&[
        "skb", "kmem", "kmalloc", "slab", "alloc", "free", "memcpy", "memset", "memmove", "copy_",
        "page", "memcg", "rep_movs", "clear_",
    ]) {
        5
    } else if any(&[
        "sched",
        "switch",
        "wake",
        "futex",
        "timer",
        "enqueue",
        "dequeue",
        "pick_",
        "update_",
        "ttwu",
        "select_task",
        "psi_",
        "rcu",
        "lock",
        "spin",
        "task",
    ]) {
        6
    } else if any(&[
        "epoll",
        "ep_",
        "entry_",
        "syscall",
        "sys_",
        "fput",
        "fget",
        "fd",
        "vfs",
        "file",
        "__fsnotify",
    ]) {
        7
    } else {
        9
    }
}

/// Whether `perf` runs here.
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `perf record` running; stopped (and reaped) on drop if not finished.
pub struct Recording {
    child: Option<Child>,
    path: PathBuf,
}

impl Recording {
    /// Starts sampling every CPU into `path`.
    pub fn start(path: &Path) -> Result<Recording> {
        let child = Command::new("perf")
            .args(["record", "-q", "-a", "-F", &FREQUENCY.to_string(), "-o"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        let mut r = Recording {
            child: Some(child),
            path: path.to_path_buf(),
        };
        // perf needs a moment to open its events; a failure shows as an early exit.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(c) = r.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                r.child = None;
                bail!("perf record exited at once ({status})");
            }
        }
        Ok(r)
    }

    /// Stops sampling; the share of each of [`CATEGORIES`] in the non-idle samples, and
    /// the number of samples.
    pub fn finish(mut self) -> Result<(Vec<f64>, u64)> {
        self.stop();
        let out = Command::new("perf")
            .args([
                "--no-pager",
                "report",
                "-n",
                "--sort",
                "dso,sym",
                "--stdio",
                "-i",
            ])
            .arg(&self.path)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .context("running perf report")?;
        if !out.status.success() {
            bail!("perf report failed ({})", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts = [0u64; CATEGORIES.len()];
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let words: Vec<&str> = line.split_whitespace().collect();
            // "12.34%  567  dso words…  [k]  symbol words…"
            let Some(mark) = words
                .iter()
                .position(|w| matches!(*w, "[k]" | "[.]" | "[g]"))
            else {
                continue;
            };
            if mark < 3 || !words[0].ends_with('%') {
                continue;
            }
            let Ok(n) = words[1].parse::<u64>() else {
                continue;
            };
            let dso = words[2..mark].join(" ");
            let symbol = words[mark + 1..].join(" ");
            counts[category(&dso, &symbol, words[mark] == "[.]")] += n;
        }
        let idle = CATEGORIES.len() - 1;
        let busy: u64 = counts[..idle].iter().sum();
        if busy == 0 {
            bail!("perf recorded no samples");
        }
        let shares = counts.iter().map(|c| *c as f64 / busy as f64).collect();
        Ok((shares, counts.iter().sum()))
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; the PID is our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_fall_in_their_categories() {
        assert_eq!(
            category("bpf_prog_75f2_k3s_xdp", "bpf_prog_75f2_k3s_xdp", false),
            0
        );
        assert_eq!(
            category("[kernel.kallsyms]", "lookup_nulls_elem_raw", false),
            0
        );
        assert_eq!(category("[kernel.kallsyms]", "veth_xdp_rcv", false), 1);
        assert_eq!(category("[kernel.kallsyms]", "br_handle_frame", false), 2);
        assert_eq!(category("[kernel.kallsyms]", "tcp_v4_rcv", false), 3);
        assert_eq!(
            category("[kernel.kallsyms]", "__netif_receive_skb_core", false),
            4
        );
        assert_eq!(category("[kernel.kallsyms]", "kmem_cache_free", false), 5);
        assert_eq!(
            category("[kernel.kallsyms]", "finish_task_switch.isra.0", false),
            6
        );
        assert_eq!(category("[kernel.kallsyms]", "ep_poll", false), 7);
        assert_eq!(category("haproxy", "process_stream", true), 8);
        assert_eq!(
            category("[kernel.kallsyms]", "pv_native_safe_halt", false),
            10
        );
    }
}
