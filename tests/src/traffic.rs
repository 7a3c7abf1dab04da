//! Traffic that runs while a test changes things: UDP echo servers for the servers of the
//! topology, and a bounded stream of short TCP connections and UDP requests from the agents
//! through a VIP, every attempt recorded with its outcome, so a test can say that nothing was
//! refused or lost while it reloaded, drained or failed over.
//!
//! Everything here is bounded: a stream stops after its time limit or its attempt count, and
//! a server stops on drop.

use crate::{
    backend::{connect, echo_roundtrip},
    netns::NetNs,
    topology::Topology,
};
use anyhow::{bail, Context, Result};
use std::{
    net::{Shutdown, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How often a UDP server checks whether it must stop.
const UDP_POLL: Duration = Duration::from_millis(20);

/// A UDP server on `0.0.0.0:port` in a namespace that answers each datagram with its name, a
/// colon and the datagram (`server-1:ping`). Stops on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    answered: Arc<AtomicU64>,
}

impl UdpEcho {
    pub fn start(ns: &NetNs, name: &str, port: u16) -> Result<Self> {
        let socket = ns
            .enter(|| UdpSocket::bind(("0.0.0.0", port)))?
            .with_context(|| format!("binding UDP port {port} in {}", ns.name()))?;
        socket.set_read_timeout(Some(UDP_POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (flag, count, name) = (stop.clone(), answered.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let mut answer = format!("{name}:").into_bytes();
                answer.extend_from_slice(&buf[..n]);
                if socket.send_to(&answer, from).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(UdpEcho {
            stop,
            thread: Some(thread),
            answered,
        })
    }

    /// Datagrams answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server on `0.0.0.0:port` in a namespace that closes first, as an HTTP server
/// answering `Connection: close` does: it reads the request line, answers its name and a
/// newline, and closes, so it is the server that keeps the connection in TIME_WAIT. Stops on
/// drop.
pub struct ClosesFirst {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    peers: Arc<std::sync::Mutex<std::collections::BTreeSet<std::net::IpAddr>>>,
}

impl ClosesFirst {
    pub fn start(ns: &NetNs, name: &str, port: u16) -> Result<Self> {
        let listener = ns
            .enter(|| std::net::TcpListener::bind(("0.0.0.0", port)))?
            .with_context(|| format!("binding TCP port {port} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let (flag, answer, seen) = (stop.clone(), format!("{name}\n"), peers.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut conn, peer)) = listener.accept() else {
                    std::thread::sleep(UDP_POLL / 4);
                    continue;
                };
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(peer.ip());
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = [0u8; 64];
                let _ = std::io::Read::read(&mut conn, &mut line);
                let _ = std::io::Write::write_all(&mut conn, answer.as_bytes());
                // Dropped: the server's FIN goes first.
            }
        });
        Ok(ClosesFirst {
            stop,
            thread: Some(thread),
            peers,
        })
    }

    /// The addresses its clients came from (in nat mode, the SNAT sources).
    pub fn peers(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ClosesFirst {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request to a [`ClosesFirst`] server at `to` from `ns`: the server that answered, once
/// it has closed (the client reads to the end, then closes too).
pub fn request_closed_by_server(ns: &NetNs, to: SocketAddrV4, timeout: Duration) -> Result<String> {
    let mut stream = connect(ns, to, timeout)?;
    std::io::Write::write_all(&mut stream, b"GET /readyz\n")?;
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut answer).context("reading the answer")?;
    let name = String::from_utf8_lossy(&answer).trim().to_string();
    if name.is_empty() {
        bail!("the server closed without answering");
    }
    Ok(name)
}

/// One UDP request from `socket` (created in the client's namespace) to `to`: the server that
/// answered, or an error when no answer came within `timeout` (no retry: a loss is a loss).
pub fn udp_request(
    socket: &UdpSocket,
    to: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(payload, to).context("sending the request")?;
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + timeout;
    loop {
        let (n, _) = socket
            .recv_from(&mut buf)
            .with_context(|| format!("no answer from {to} within {timeout:?}"))?;
        let answer = &buf[..n];
        // A late answer to an earlier request is skipped.
        if answer.ends_with(payload) {
            let server = answer[..n - payload.len()]
                .strip_suffix(b":")
                .unwrap_or(answer);
            return Ok(String::from_utf8_lossy(server).into_owned());
        }
        if Instant::now() > deadline {
            bail!("no answer to this request from {to} within {timeout:?}");
        }
    }
}

/// What a stream attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connect, greeting and echo, close.
    Tcp,
    /// One request, one answer.
    Udp,
}

/// One attempt of a stream.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub kind: Kind,
    pub agent: String,
    pub started: Instant,
    /// For TCP: how long the connect took (a lost SYN shows as a second or more).
    pub connect: Duration,
    pub took: Duration,
    /// The server that answered, or why it failed.
    pub result: Result<String, String>,
}

/// What to send, from where, how often, for how long.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub agents: Vec<String>,
    pub tcp: Option<SocketAddrV4>,
    pub udp: Option<SocketAddrV4>,
    /// Pause between two attempts of one agent.
    pub interval: Duration,
    /// The stream stops by itself after this long.
    pub limit: Duration,
    /// A TCP connect or UDP answer slower than this fails.
    pub timeout: Duration,
}

/// A running stream: one thread per agent, alternating TCP and UDP when both are given; every
/// attempt is a new flow.
pub struct Stream {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Attempt>>>,
}

impl Stream {
    pub fn start(topo: &Topology, spec: StreamSpec) -> Result<Stream> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for agent in &spec.agents {
            let (ns, agent, spec, stop) = (
                topo.node(agent).handle(),
                agent.clone(),
                spec.clone(),
                stop.clone(),
            );
            threads.push(std::thread::spawn(move || run(&ns, &agent, &spec, &stop)));
        }
        Ok(Stream { stop, threads })
    }

    /// Stops the stream and returns every attempt, in the order each agent made them.
    pub fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

fn run(ns: &NetNs, agent: &str, spec: &StreamSpec, stop: &AtomicBool) -> Vec<Attempt> {
    let end = Instant::now() + spec.limit;
    let mut out = Vec::new();
    let mut n = 0u64;
    // At most one attempt per interval, and never more than the limit allows.
    let max = 1 + (spec.limit.as_millis() / spec.interval.as_millis().max(1)) as u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end && n < max {
        let use_udp = match (spec.tcp, spec.udp) {
            (Some(_), Some(_)) => n % 2 == 1,
            (None, Some(_)) => true,
            _ => false,
        };
        n += 1;
        let started = Instant::now();
        let (connect_took, result) = match (use_udp, spec.udp, spec.tcp) {
            (true, Some(to), _) => {
                // A socket per request: each request is a new flow, from a new port.
                let payload = format!("{agent}-{n}");
                let result = ns
                    .enter(|| UdpSocket::bind("0.0.0.0:0"))
                    .and_then(|s| s.context("a UDP client socket"))
                    .and_then(|s| udp_request(&s, to, payload.as_bytes(), spec.timeout));
                (Duration::ZERO, result)
            }
            (_, _, Some(to)) => tcp_attempt(ns, to, spec.timeout),
            _ => break,
        };
        out.push(Attempt {
            kind: if use_udp { Kind::Udp } else { Kind::Tcp },
            agent: agent.to_string(),
            started,
            connect: connect_took,
            took: started.elapsed(),
            result: result.map_err(|e| format!("{e:#}")),
        });
        std::thread::sleep(spec.interval);
    }
    out
}

/// Connect, greeting and echo, close: how long the connect took, and who answered.
fn tcp_attempt(ns: &NetNs, to: SocketAddrV4, timeout: Duration) -> (Duration, Result<String>) {
    let started = Instant::now();
    let stream = connect(ns, to, timeout);
    let connect_took = started.elapsed();
    let result = stream.and_then(|mut s| {
        let (server, echoed) = echo_roundtrip(&mut s, b"stream")?;
        let _ = s.shutdown(Shutdown::Both);
        if !echoed {
            bail!("{server} echoed something else");
        }
        Ok(server)
    });
    (connect_took, result)
}

/// The attempts that failed, as lines for an assertion message.
pub fn failures(attempts: &[Attempt]) -> Vec<String> {
    attempts
        .iter()
        .filter_map(|a| {
            a.result
                .as_ref()
                .err()
                .map(|e| format!("{:?} from {} after {:?}: {e}", a.kind, a.agent, a.took))
        })
        .collect()
}

/// The slowest TCP connect of `attempts`.
pub fn slowest_connect(attempts: &[Attempt]) -> Duration {
    attempts
        .iter()
        .filter(|a| a.kind == Kind::Tcp)
        .map(|a| a.connect)
        .max()
        .unwrap_or_default()
}

/// `nstat`'s absolute value of counter `name` (e.g. `TcpExtTCPSynRetrans`) in `ns`.
pub fn nstat(ns: &NetNs, name: &str) -> Result<u64> {
    let out = ns.run("nstat", ["-a", "-z", "-s", name])?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some(name) {
            return Ok(words.next().and_then(|v| v.parse().ok()).unwrap_or(0));
        }
    }
    Ok(0)
}
