//! `k3s-xdp run` as a real process inside a node of the topology, with its own config file and
//! control socket in a per-test directory; stopped (SIGTERM, then SIGKILL) by its PID when the
//! handle drops, and the directory removed. Its log is what the process printed.

use crate::{netns::Process, topology::Topology};
use anyhow::{anyhow, bail, Context, Result};
use k3s_xdp::controller::{
    control,
    status::{render_table, Request, Response, Status},
};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The raw HTTP response (head and body) of `GET /metrics` at `addr`, asked from inside `node`.
pub fn get_metrics(topo: &Topology, node: &str, addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    topo.node(node)
        .enter(|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })?
        .with_context(|| format!("GET /metrics from {addr} in {node}"))
}

/// The `k3s-xdp` binary: `K3S_XDP_BIN` (set by `cargo xtask test`), else in the target
/// directory of this executable (target/<profile>/, seen from a binary there or from a test
/// in target/<profile>/deps/).
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("K3S_XDP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))?;
    let candidates = [
        Some(dir.join("k3s-xdp")),
        dir.parent().map(|p| p.join("k3s-xdp")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|c| c.is_file())
        .ok_or_else(|| {
            anyhow!(
                "k3s-xdp is not built next to {}: run `cargo xtask test` (it builds the binaries), or set K3S_XDP_BIN",
                exe.display()
            )
        })
}

pub struct Daemon {
    pub node: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    dir: PathBuf,
    process: Option<Process>,
    /// What earlier runs of this daemon printed (restarts keep the history).
    earlier_logs: String,
    /// A command line the daemon runs under, e.g. `setpriv --bounding-set=...`.
    wrapper: Vec<String>,
}

impl Daemon {
    /// Writes `config` (TOML without `control_socket`, which is added) and starts the daemon in
    /// `node`; returns once it answers on its control socket.
    pub fn start(topo: &Topology, node: &str, config: &str) -> Result<Daemon> {
        Daemon::start_wrapped(topo, node, config, &[])
    }

    /// As [`Daemon::start`], the daemon running under `wrapper` (a command that ends by
    /// executing its arguments, like `setpriv ... --`).
    pub fn start_wrapped(
        topo: &Topology,
        node: &str,
        config: &str,
        wrapper: &[String],
    ) -> Result<Daemon> {
        let mut d = Daemon::prepare(topo, node, config, wrapper)?;
        d.spawn(topo)?;
        Ok(d)
    }

    /// Writes the config and starts the process without waiting for it to be ready: for a
    /// daemon expected to fail at start. See [`Daemon::exit_within`].
    pub fn launch_wrapped(
        topo: &Topology,
        node: &str,
        config: &str,
        wrapper: &[String],
    ) -> Result<Daemon> {
        let mut d = Daemon::prepare(topo, node, config, wrapper)?;
        d.process = Some(d.spawn_process(topo)?);
        Ok(d)
    }

    fn prepare(topo: &Topology, node: &str, config: &str, wrapper: &[String]) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("k3s-xdp-test-{}-{node}", topo.prefix()));
        std::fs::create_dir_all(&dir)?;
        let d = Daemon {
            node: node.to_string(),
            config: dir.join("config.toml"),
            socket: dir.join("control.sock"),
            dir,
            process: None,
            earlier_logs: String::new(),
            wrapper: wrapper.to_vec(),
        };
        d.write_config(config)?;
        Ok(d)
    }

    /// Waits up to `limit` for the process to exit; its exit status, or None if it runs on.
    pub fn exit_within(&mut self, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
        match self.process.as_mut() {
            Some(p) => p.wait_timeout(limit),
            None => bail!("k3s-xdp in {} was not started", self.node),
        }
    }

    /// Replaces the config file (then [`Daemon::reload`] or SIGHUP applies it).
    pub fn write_config(&self, config: &str) -> Result<()> {
        let text = format!(
            "control_socket = {:?}\n{config}",
            self.socket.display().to_string()
        );
        std::fs::write(&self.config, text)
            .with_context(|| format!("writing {}", self.config.display()))
    }

    fn spawn(&mut self, topo: &Topology) -> Result<()> {
        let p = self.spawn_process(topo)?;
        self.process = Some(p);
        self.wait_ready(Duration::from_secs(20))
    }

    fn spawn_process(&self, topo: &Topology) -> Result<Process> {
        let bin = binary()?.display().to_string();
        let config = self.config.display().to_string();
        let mut argv: Vec<String> = self.wrapper.clone();
        argv.extend([bin, "run".into(), "--config".into(), config]);
        topo.node(&self.node).spawn(&argv[0], &argv[1..])
    }

    /// Starts it again (after [`Daemon::crash`] or [`Daemon::stop`]).
    pub fn restart(&mut self, topo: &Topology) -> Result<()> {
        self.stop();
        self.spawn(topo)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if !self.running() {
                bail!("k3s-xdp in {} exited at start:\n{}", self.node, self.log());
            }
            if self.status().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "k3s-xdp in {} not ready after {limit:?}:\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn request(&self, request: &Request) -> Result<Response> {
        let socket = self.socket.clone();
        let request = request.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move { control::request(&socket, &request).await })
    }

    pub fn status(&self) -> Result<Status> {
        match self.request(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// `k3s-xdp reload` over the control socket: its message, or its error.
    pub fn reload(&self) -> Result<String> {
        match self.request(&Request::Reload)? {
            Response::Ok { message } => Ok(message),
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer: {other:?}"),
        }
    }

    /// Waits until `f(status)` holds, up to `limit`; returns that status.
    pub fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        f: impl Fn(&Status) -> bool,
    ) -> Result<Status> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status();
            if let Ok(s) = &status {
                if f(s) {
                    return Ok(s.clone());
                }
            }
            if Instant::now() > deadline {
                let last = status
                    .map(|s| render_table(&s))
                    .unwrap_or_else(|e| format!("no status: {e:#}"));
                bail!(
                    "timed out after {limit:?} waiting for {what}; last status:\n{last}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every backend has passed a check since the daemon started (a backend starts
    /// up, as in HAProxy, and its first failed check takes it down) and has a resolved next hop
    /// (until then it takes no new flows): traffic started earlier races the first checks.
    pub fn wait_healthy(&self, limit: Duration) -> Result<Status> {
        self.wait_for(
            limit,
            "every backend checked, up, and its next hop resolved",
            |s| {
                s.services
                    .iter()
                    .flat_map(|svc| &svc.backends)
                    .all(|b| b.checks > 0 && b.health == "up" && b.next_hop_resolved)
            },
        )
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map(Process::pid).unwrap_or(0)
    }

    pub fn signal(&mut self, signal: i32) -> Result<()> {
        self.process
            .as_mut()
            .ok_or_else(|| anyhow!("k3s-xdp in {} is not running", self.node))?
            .signal(signal)
    }

    /// SIGTERM, wait (then SIGKILL); how it ended.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut p = self.process.take()?;
        let status = p.stop().ok();
        self.earlier_logs.push_str(&p.output());
        status
    }

    /// `kill -9`, as a crash.
    pub fn crash(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.signal(libc::SIGKILL);
            let _ = p.wait_timeout(Duration::from_secs(3));
            self.earlier_logs.push_str(&p.output());
        }
    }

    pub fn running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.try_wait(), Ok(None)))
    }

    /// Waits until the log contains `pattern` (the output is collected in the background, so
    /// a line just logged may not be there yet).
    pub fn wait_log(&self, pattern: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(pattern) {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!("no {pattern:?} in the log after {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon printed, over its restarts.
    pub fn log(&self) -> String {
        let now = self
            .process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default();
        format!("{}{now}", self.earlier_logs)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- log of k3s-xdp in {} ---\n{}", self.node, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `[flow_sync]` key file: a fixed 32-byte test key, root's alone (0600 in a 0700
/// directory), removed on drop.
pub struct KeyFile {
    dir: PathBuf,
    pub path: PathBuf,
}

impl KeyFile {
    /// The key every test pair shares.
    pub const KEY: [u8; 32] = *b"flow-sync-test-key-0123456789abc";

    pub fn new(topo: &Topology) -> Result<KeyFile> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("k3s-xdp-fskey-{}", topo.prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyFile {
            path: dir.join("flow-sync.key"),
            dir,
        };
        std::fs::set_permissions(&key.dir, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(&key.path, Self::KEY)
            .with_context(|| format!("writing {}", key.path.display()))?;
        std::fs::set_permissions(&key.path, std::fs::Permissions::from_mode(0o600))?;
        Ok(key)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
