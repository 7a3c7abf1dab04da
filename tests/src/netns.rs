//! Network namespaces for tests: create one, run commands and code inside it, remove it on drop.
//!
//! A [`NetNs`] is a named namespace (`ip netns add NAME`, so it appears in `/run/netns/NAME`)
//! that is deleted when the guard drops, also while a test unwinds from a panic. Inside it,
//! [`NetNs::run`] runs a command to completion (bounded in time), [`NetNs::spawn`] starts a
//! long-running [`Process`] that is terminated and reaped when its guard drops, and
//! [`NetNs::enter`] runs a closure on a thread that has joined the namespace: sockets created
//! there stay in that namespace for their whole life, which is how tests open client and server
//! sockets in several namespaces from one test process.
//!
//! Processes are killed by their own PID only: `ip netns exec` execs the command in place, so
//! the PID of the child is the PID of the command.

use anyhow::{anyhow, bail, Context, Result};
use std::{
    ffi::OsStr,
    fs::File,
    io::Read,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// How long [`NetNs::run`] lets a command run before it kills it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a [`Process`] has between SIGTERM and SIGKILL when it is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Output kept per spawned process (the most recent bytes).
const OUTPUT_LIMIT: usize = 1 << 20;

/// Whether this process runs as root; namespace tests need it and skip otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Names of the namespaces in `/run/netns` (what `ip netns list` shows).
pub fn list() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir("/run/netns") {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.context("listing /run/netns")?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// A named network namespace, deleted on drop unless disowned or borrowed.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Whether dropping this value deletes the namespace.
    owned: bool,
}

impl NetNs {
    /// Creates the namespace `name` (`ip netns add`) and brings its `lo` up.
    pub fn create(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') {
            bail!("invalid network namespace name {name:?}");
        }
        run_command("ip", ["netns", "add", name], RUN_TIMEOUT)
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on, the guard deletes the namespace if anything below fails.
        let ns = NetNs {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle to an existing namespace that does not delete it on drop.
    pub fn existing(name: &str) -> Result<Self> {
        let ns = NetNs {
            name: name.to_string(),
            owned: false,
        };
        if !ns.path().exists() {
            bail!(
                "network namespace {name} does not exist ({} is missing)",
                ns.path().display()
            );
        }
        Ok(ns)
    }

    /// Another handle to this namespace that does not delete it on drop (for helpers, such as
    /// backends, that must re-enter the namespace later). It must not outlive the owner's use.
    pub fn handle(&self) -> NetNs {
        NetNs {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// Keeps the namespace after this guard drops (e.g. for a lab left running); returns its
    /// name. Delete it later with `ip netns del NAME`.
    pub fn disown(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file that `setns` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `program args…` inside the namespace (`ip netns exec`) to completion, within
    /// [`RUN_TIMEOUT`]. Fails, with the command, exit status and stderr, unless it exits 0.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output> {
        self.run_timeout(program, args, RUN_TIMEOUT)
    }

    /// Like [`NetNs::run`], with an explicit time limit.
    pub fn run_timeout<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = S>,
        timeout: Duration,
    ) -> Result<Output> {
        let mut full: Vec<std::ffi::OsString> = vec![
            "netns".into(),
            "exec".into(),
            self.name.clone().into(),
            program.into(),
        ];
        full.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        run_command("ip", full, timeout)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Runs `ip -n NAME args…` (configuring the namespace without entering it).
    pub fn ip<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Result<Output> {
        let mut full: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        full.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        run_command("ip", full, RUN_TIMEOUT)
            .with_context(|| format!("configuring network namespace {}", self.name))
    }

    /// Starts `program args…` inside the namespace and returns its guard; stdin is closed and
    /// stdout/stderr are collected (see [`Process::output`]).
    ///
    /// The child also gets SIGKILL if the *thread* that spawned it exits (`PR_SET_PDEATHSIG`),
    /// so a test process killed from outside leaves no children behind. Spawn from the thread
    /// that owns the guard (not from inside [`NetNs::enter`]).
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Process> {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let label = format!(
            "`{program} {}` in network namespace {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            self.name
        );
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs between fork and exec and only makes an async-signal-safe
        // system call.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, Arc::clone(&output));
        }
        if let Some(err) = child.stderr.take() {
            collect(err, Arc::clone(&output));
        }
        Ok(Process {
            child,
            label,
            output,
            grace: STOP_GRACE,
            status: None,
        })
    }

    /// Runs `f` on a new thread that has joined this namespace and returns its result. Sockets
    /// created in `f` belong to this namespace for their whole life, whatever thread uses them
    /// later. A panic in `f` resumes on the calling thread.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        let file = File::open(&path).with_context(|| {
            format!(
                "opening {} to enter network namespace {}",
                path.display(),
                self.name
            )
        })?;
        let joined = thread::scope(|scope| {
            scope
                .spawn(move || -> Result<T> {
                    // SAFETY: setns on a namespace fd changes only the calling thread, which
                    // exists for this closure alone and ends with it.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
                    }
                    drop(file);
                    Ok(f())
                })
                .join()
        });
        match joined {
            Ok(result) => {
                result.with_context(|| format!("entering network namespace {}", self.name))
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Moves the calling thread into this namespace until the guard drops (for code that must
    /// run on the caller's thread, such as BPF_PROG_TEST_RUN, whose `bpf_fib_lookup` reads the
    /// namespace of the calling thread).
    pub fn join_this_thread(&self) -> Result<NetnsGuard> {
        let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let path = self.path();
        let ns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on a namespace fd changes only the calling thread; the guard moves it
        // back.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(NetnsGuard { original })
    }

    fn delete(&self) -> Result<()> {
        run_command("ip", ["netns", "del", &self.name], RUN_TIMEOUT)
            .with_context(|| format!("deleting network namespace {}", self.name))?;
        Ok(())
    }
}

/// Returns the thread to its namespace on drop ([`NetNs::join_this_thread`]).
pub struct NetnsGuard {
    original: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: as in `join_this_thread`; back to the thread's own namespace.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = self.delete() {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// A child process started inside a namespace by [`NetNs::spawn`]. Dropping it stops it:
/// SIGTERM to its PID, SIGKILL after a grace period, then it is reaped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    label: String,
    output: Arc<Mutex<Vec<u8>>>,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process is, for messages: the command line and the namespace.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sets how long [`Process::stop`] waits between SIGTERM and SIGKILL.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to this process. Fails if it has already exited
    /// and been reaped, so a reused PID is never signalled.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.try_wait()?.is_some() {
            bail!(
                "cannot signal {}: it has exited ({:?})",
                self.label,
                self.status
            );
        }
        // SAFETY: kill has no memory-safety preconditions; the PID is our unreaped child.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending signal {signal} to {}", self.label));
        }
        Ok(())
    }

    /// The exit status if the process has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote to stdout and stderr so far (the last MiB), interleaved.
    pub fn output(&self) -> String {
        let bytes = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Stops the process: SIGTERM, then SIGKILL if it is still running after the grace period;
    /// reaps it and returns its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // It may exit between try_wait and kill; it stays a zombie (its PID reserved) until
        // reaped, so this cannot hit another process.
        let _ = self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(self.grace)? {
            return Ok(status);
        }
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.label))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.label))?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping {}: {e:#}", self.label);
        }
    }
}

/// Copies a pipe into `sink` until EOF, keeping the last [`OUTPUT_LIMIT`] bytes.
fn collect(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let Ok(mut out) = sink.lock() else { break };
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > OUTPUT_LIMIT {
                        let excess = out.len() - OUTPUT_LIMIT;
                        out.drain(..excess);
                    }
                }
            }
        }
    });
}

/// Runs a command to completion within `timeout` (killing it past that); fails unless it
/// exits 0, with the command line, status and stderr in the error.
pub fn run_command<S: AsRef<OsStr>>(
    program: &str,
    args: impl IntoIterator<Item = S>,
    timeout: Duration,
) -> Result<Output> {
    let args: Vec<std::ffi::OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let line = format!(
        "{program} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{line}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {timeout:?}; killed it");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let output = Output {
        status,
        stdout: join_reader(stdout),
        stderr: join_reader(stderr),
    };
    if !status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout.trim().to_string()
        } else {
            stderr.trim().to_string()
        };
        return Err(anyhow!("`{line}` failed ({status}): {detail}"));
    }
    Ok(output)
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> Option<thread::JoinHandle<Vec<u8>>> {
    pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    })
}

fn join_reader(handle: Option<thread::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}
