//! The soak's traffic (edge): threads in the agents' namespaces that keep the three kinds of
//! traffic going and record every connection with its outcome for [`super::verdict`], and the
//! burst that fills the flow tables.
//!
//! - [`new_connections`]: one thread per agent, in turn a new TCP connection to the nat
//!   service (greeting, a line echoed, closed), one to the dsr service, and a UDP request (a
//!   new socket, so a new flow, each).
//! - [`watches`]: long-lived connections like Kubernetes watches, to the [`Kind::Push`]
//!   backends: the server pushes a line every [`PUSH_EVERY`], the client sends a line every
//!   [`CLIENT_PERIOD`] and checks that the same server echoes it, in order. Each lives for a
//!   seeded 30 to 90 s, then closes and another opens; one that breaks is recorded with how and
//!   when, and replaced.
//! - [`burst`]: UDP flows and TCP connections from many source ports at once.
//!
//! Everything is bounded: each thread stops at its deadline or when told, makes at most one
//! attempt per interval, and a burst has a fixed size.
//!
//! [`Kind::Push`]: crate::backend::Kind::Push
//! [`PUSH_EVERY`]: crate::backend::PUSH_EVERY

use super::{
    schedule::Rng,
    verdict::{Attempt, AttemptKind, Ending, LongLived},
};
use crate::{netns::NetNs, traffic::udp_request};
use anyhow::{anyhow, bail, Context, Result};
use std::{
    collections::VecDeque,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// A watch's client sends a line this often.
pub const CLIENT_PERIOD: Duration = Duration::from_secs(2);
/// A watch with nothing from its server (no push, no echo) for this long is stalled. After a
/// failover TCP retransmits with backoff: a push may arrive 10 s late on a loaded machine.
pub const STALL: Duration = Duration::from_secs(20);
/// A new connection's connect, and each of its reads, gives up after this (one lost SYN is
/// retransmitted after 1 s and still makes it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A UDP request without an answer after this is lost (no retry).
pub const UDP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a watch thread looks at its socket.
const POLL: Duration = Duration::from_millis(200);

/// The run's clock and stop flag, shared by every thread.
#[derive(Clone)]
pub struct Clock {
    pub t0: Instant,
    pub stop: Arc<AtomicBool>,
    /// Nothing runs past this.
    pub deadline: Instant,
}

impl Clock {
    pub fn at(&self) -> Duration {
        self.t0.elapsed()
    }

    fn over(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Where the traffic goes.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    pub nat: SocketAddrV4,
    pub dsr: SocketAddrV4,
    pub udp: SocketAddrV4,
}

/// One thread in `ns` making, every `interval`, a nat connection, a dsr connection or a UDP
/// request in turn; returns every attempt.
pub fn new_connections(
    ns: NetNs,
    agent: String,
    to: Targets,
    interval: Duration,
    clock: Clock,
) -> JoinHandle<Vec<Attempt>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _in = match ns.join_this_thread() {
            Ok(g) => g,
            Err(e) => {
                eprintln!("soak: {agent} cannot join its namespace: {e:#}");
                return out;
            }
        };
        let max = clock
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            / interval.as_millis().max(1)
            + 1;
        let mut n = 0u64;
        while !clock.over() && (n as u128) < max {
            n += 1;
            let kind = [AttemptKind::NatTcp, AttemptKind::DsrTcp, AttemptKind::Udp][n as usize % 3];
            let started = clock.at();
            let line = format!("{agent} {n}");
            let result = match kind {
                AttemptKind::NatTcp => exchange(to.nat.into(), &line),
                AttemptKind::DsrTcp => exchange(to.dsr.into(), &line),
                _ => UdpSocket::bind("0.0.0.0:0")
                    .context("a UDP client socket")
                    .and_then(|s| udp_request(&s, to.udp, line.as_bytes(), UDP_TIMEOUT)),
            };
            out.push(Attempt {
                kind,
                agent: agent.clone(),
                started,
                ended: clock.at(),
                result: result.map_err(|e| format!("{e:#}")),
            });
            thread::sleep(interval);
        }
        out
    })
}

/// A short connection to a push backend: its greeting, `line` sent and echoed (pushes skipped),
/// closed. The server that answered.
fn exchange(to: SocketAddr, line: &str) -> Result<String> {
    let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader
        .read_line(&mut greeting)
        .context("reading the greeting")?;
    let server = greeting.trim_end().to_string();
    if server.is_empty() {
        bail!("the connection closed before the greeting");
    }
    writer
        .write_all(format!("{line}\n").as_bytes())
        .context("sending a line")?;
    let want = format!("echo {server} {line}");
    // The server pushes every 0.5 s: a few lines at most before the echo.
    for _ in 0..16 {
        let mut got = String::new();
        if reader
            .read_line(&mut got)
            .with_context(|| format!("waiting for {server}'s echo"))?
            == 0
        {
            bail!("{server} closed before echoing");
        }
        let got = got.trim_end();
        if got == want {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(server);
        }
        if !got.starts_with(&format!("push {server} ")) {
            bail!("{got:?} from {server}, expected {want:?}");
        }
    }
    bail!("no echo from {server} among its pushes")
}

/// What a watch thread returns: its openings and its connections.
pub type WatchRecords = (Vec<Attempt>, Vec<LongLived>);

/// One thread in `ns` keeping one long-lived connection to `to` (`service` names it in the
/// records) open at all times, each living for a seeded 30 to 90 s.
pub fn watches(
    ns: NetNs,
    agent: String,
    service: &'static str,
    to: SocketAddrV4,
    seed: u64,
    clock: Clock,
) -> JoinHandle<WatchRecords> {
    thread::spawn(move || {
        let (mut opens, mut conns) = (Vec::new(), Vec::new());
        let _in = match ns.join_this_thread() {
            Ok(g) => g,
            Err(e) => {
                eprintln!("soak: {agent} cannot join its namespace: {e:#}");
                return (opens, conns);
            }
        };
        let mut rng = Rng::new(seed);
        while !clock.over() {
            let started = clock.at();
            let life = rng.duration(Duration::from_secs(30), Duration::from_secs(90));
            match Watch::open(to.into()) {
                Ok(w) => {
                    opens.push(Attempt {
                        kind: super::verdict::AttemptKind::WatchOpen,
                        agent: agent.clone(),
                        started,
                        ended: clock.at(),
                        result: Ok(w.server.clone()),
                    });
                    let c = w.run(service, &agent, started, Instant::now() + life, &clock);
                    let lost = c.ending != Ending::Closed;
                    conns.push(c);
                    if lost {
                        thread::sleep(Duration::from_millis(500));
                    }
                }
                Err(e) => {
                    opens.push(Attempt {
                        kind: super::verdict::AttemptKind::WatchOpen,
                        agent: agent.clone(),
                        started,
                        ended: clock.at(),
                        result: Err(format!("{e:#}")),
                    });
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
        (opens, conns)
    })
}

/// The client side of one watch.
struct Watch {
    stream: TcpStream,
    buf: Vec<u8>,
    server: String,
    last_push: u64,
    pushes: u64,
}

impl Watch {
    /// Connects, reads the greeting and the first push.
    fn open(to: SocketAddr) -> Result<Watch> {
        let stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {to}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let mut w = Watch {
            stream,
            buf: Vec::new(),
            server: String::new(),
            last_push: 0,
            pushes: 0,
        };
        let until = Instant::now() + CONNECT_TIMEOUT;
        w.server = w.line_by(until)?.context("reading the greeting")?;
        let first = w
            .line_by(until)?
            .with_context(|| format!("waiting for {}'s first push", w.server))?;
        w.take_push(&first)?;
        Ok(w)
    }

    /// The next whole line, read until `until`; `None` if none came by then.
    fn line_by(&mut self, until: Instant) -> io::Result<Option<String>> {
        loop {
            if let Some(line) = self.next_line() {
                return Ok(Some(line));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            self.fill()?;
        }
    }

    /// A line already buffered.
    fn next_line(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    /// Reads what arrived within [`POLL`]; EOF is an `UnexpectedEof` error.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed by the server",
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn take_push(&mut self, line: &str) -> Result<()> {
        let prefix = format!("push {} ", self.server);
        let n: u64 = line
            .strip_prefix(&prefix)
            .ok_or_else(|| anyhow!("{line:?} from {}, expected a push", self.server))?
            .parse()
            .with_context(|| format!("the number of push {line:?}"))?;
        if n <= self.last_push {
            bail!("push {n} after push {}", self.last_push);
        }
        self.last_push = n;
        self.pushes += 1;
        Ok(())
    }

    /// Lives until `until` (or the run's end), sending a line every [`CLIENT_PERIOD`],
    /// checking every push and echo; how it ended.
    fn run(
        mut self,
        service: &str,
        agent: &str,
        opened: Duration,
        until: Instant,
        clock: &Clock,
    ) -> LongLived {
        let mut pending: VecDeque<String> = VecDeque::new();
        let (mut echoes, mut sent) = (0u64, 0u64);
        let mut next_send = Instant::now() + CLIENT_PERIOD;
        let mut progress = Instant::now();
        let (ending, detail) = loop {
            if clock.over() || Instant::now() >= until {
                break (Ending::Closed, String::new());
            }
            if Instant::now() >= next_send {
                sent += 1;
                let text = format!("{agent} line {sent}");
                if let Err(e) = self.stream.write_all(format!("{text}\n").as_bytes()) {
                    break classify(&e);
                }
                pending.push_back(text);
                next_send += CLIENT_PERIOD;
            }
            if let Err(e) = self.fill() {
                break classify(&e);
            }
            let mut broken = None;
            while let Some(line) = self.next_line() {
                progress = Instant::now();
                if line.starts_with("push ") {
                    if let Err(e) = self.take_push(&line) {
                        broken = Some(format!("{e:#}"));
                        break;
                    }
                    continue;
                }
                let want = pending
                    .pop_front()
                    .map(|p| format!("echo {} {p}", self.server));
                if want.as_deref() != Some(line.as_str()) {
                    broken = Some(format!("{line:?}, expected {want:?}"));
                    break;
                }
                echoes += 1;
            }
            if let Some(b) = broken {
                break (Ending::Broken, b);
            }
            if progress.elapsed() > STALL {
                break (
                    Ending::Stalled,
                    format!(
                        "nothing from {} for {STALL:?}, {} lines unanswered",
                        self.server,
                        pending.len()
                    ),
                );
            }
        };
        let _ = self.stream.shutdown(Shutdown::Both);
        LongLived {
            service: service.to_string(),
            agent: agent.to_string(),
            server: self.server,
            opened,
            ended: clock.at(),
            ending,
            detail,
            pushes: self.pushes,
            echoes,
        }
    }
}

fn classify(e: &io::Error) -> (Ending, String) {
    let ending = match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Ending::Reset,
        io::ErrorKind::UnexpectedEof => Ending::Eof,
        _ => Ending::Broken,
    };
    (ending, e.to_string())
}

/// From `ns`: `udp` UDP flows (a socket each, one datagram) to `udp_to` and `tcp` TCP
/// connections to `tcp_to`, all from different source ports, paced over about a second and
/// held open for `hold`, then closed. What was sent, for the report.
pub fn burst(
    ns: &NetNs,
    udp_to: SocketAddrV4,
    tcp_to: SocketAddrV4,
    udp: usize,
    tcp: usize,
    hold: Duration,
) -> Result<String> {
    ns.enter(|| -> Result<String> {
        let mut udp_sockets = Vec::with_capacity(udp);
        let mut tcp_sockets = Vec::with_capacity(tcp);
        let mut send_errors = 0usize;
        let addr: socket2::SockAddr = SocketAddr::from(tcp_to).into();
        for i in 0..udp.max(tcp) {
            if i < udp {
                let s = UdpSocket::bind("0.0.0.0:0").context("a burst UDP socket")?;
                if s.send_to(format!("burst {i}").as_bytes(), udp_to).is_err() {
                    send_errors += 1;
                }
                udp_sockets.push(s);
            }
            if i < tcp {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .context("a burst TCP socket")?;
                s.set_nonblocking(true)?;
                // EINPROGRESS: the SYN is on its way.
                let _ = s.connect(&addr);
                tcp_sockets.push(s);
            }
            if i % 128 == 127 {
                thread::sleep(Duration::from_millis(30));
            }
        }
        thread::sleep(hold);
        let connected = tcp_sockets
            .iter()
            .filter(|s| s.peer_addr().is_ok())
            .count();
        Ok(format!(
            "{udp} UDP flows ({send_errors} not sent), {tcp} TCP connections ({connected} established)"
        ))
    })?
}
