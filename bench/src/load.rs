//! The end-to-end benchmark's traffic: a small server on each backend and the client load,
//! both tokio on one thread per namespace, so that as much of the 2 cores as possible goes to
//! the network path under test rather than to thread creation (the test library's backends
//! spawn a thread per connection).
//!
//! Protocol: the client sends one 16-byte request, `KXB1`, a flag byte, 3 bytes of padding and
//! a little-endian `u64` length; the server answers with that many bytes (at most
//! [`MAX_REPLY`]), then waits for the client to close, or, with the flag [`CLOSES_FIRST`],
//! closes first itself (as an HTTP server answering `Connection: close` does: the server then
//! holds the connection in TIME_WAIT). A connection that closes before sending a request (a
//! health check) is fine.
//!
//! Every loop is bounded in count and in time: the clients stop at a deadline or after a
//! number of connections, whichever comes first; a server connection sends at most
//! [`MAX_REPLY`] bytes and lives at most [`SERVER_CONN_LIMIT`].

use anyhow::{bail, Context, Result};
use k3s_xdp_tests::netns::NetNs;
use socket2::{Domain, Socket, Type};
use std::{
    net::{SocketAddr, SocketAddrV4},
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::timeout,
};

const MAGIC: &[u8; 4] = b"KXB1";
const REQUEST_LEN: usize = 16;
/// The most a server sends on one connection.
pub const MAX_REPLY: u64 = 64 << 30;
/// The longest a server connection lives.
const SERVER_CONN_LIMIT: Duration = Duration::from_secs(60);
/// Connect, request and reply each time out after this.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A client task gives up after this many errors in one phase.
const MAX_ERRORS_PER_TASK: u64 = 200;

/// Request flag: the server closes the connection first, once it has answered.
const CLOSES_FIRST: u8 = 1;

fn request(len: u64, flags: u8) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[..4].copy_from_slice(MAGIC);
    r[4] = flags;
    r[8..].copy_from_slice(&len.to_le_bytes());
    r
}

/// One server per backend namespace, each on its own thread; stopped and joined on drop.
pub struct Servers {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts a server on `0.0.0.0:port` in each of `namespaces` (so it also answers on a VIP
    /// held on `lo`, as dsr needs): `threads` threads each, sharing the port with
    /// SO_REUSEPORT, so that one server alone can use every CPU.
    pub fn start(namespaces: &[&NetNs], port: u16, threads: usize) -> Result<Self> {
        let (stop, _) = watch::channel(false);
        let mut servers = Servers {
            stop,
            threads: Vec::new(),
        };
        for ns in namespaces {
            for i in 0..threads {
                let listener = ns
                    .enter(|| -> Result<std::net::TcpListener> {
                        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                        socket.set_reuse_address(true)?;
                        socket.set_reuse_port(true)?;
                        let addr: SocketAddr = SocketAddrV4::new([0, 0, 0, 0].into(), port).into();
                        socket.bind(&addr.into())?;
                        socket.listen(4096)?;
                        socket.set_nonblocking(true)?;
                        Ok(socket.into())
                    })?
                    .with_context(|| format!("listening on port {port} in {}", ns.name()))?;
                let stop = servers.stop.subscribe();
                let name = format!("bench-server-{}-{i}", ns.name());
                let thread = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || serve_listener(&name, listener, stop))
                    .context("starting a bench server thread")?;
                servers.threads.push(thread);
            }
        }
        Ok(servers)
    }
}

/// Accepts on `listener` until `stop` changes; a task per connection.
fn serve_listener(name: &str, listener: std::net::TcpListener, mut stop: watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: no runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => {
                    match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(timeout(SERVER_CONN_LIMIT, serve(stream)));
                        }
                        // EMFILE and the like: back off, keep serving.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }
    });
    // Dropping the runtime cancels the open connections' tasks.
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut req = [0u8; REQUEST_LEN];
    if stream.read_exact(&mut req).await.is_err() || &req[..4] != MAGIC {
        return Ok(()); // a health check, or not our client
    }
    let mut left = u64::from_le_bytes(req[8..].try_into().unwrap_or_default()).min(MAX_REPLY);
    static DATA: [u8; 256 * 1024] = [0x5a; 256 * 1024];
    while left > 0 {
        let n = left.min(DATA.len() as u64) as usize;
        stream.write_all(&DATA[..n]).await?;
        left -= n as u64;
    }
    if req[4] & CLOSES_FIRST != 0 {
        return Ok(()); // dropped: the server's FIN goes first
    }
    // Wait for the client to close (it closes first, as kubectl does).
    let mut buf = [0u8; 64];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// What one phase of client load does on each connection.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Connect, send the request, read a `reply`-byte answer, close; as fast as possible.
    Connections { reply: usize },
    /// As `Connections`, but the server closes first (`Connection: close`): the client reads
    /// the answer and the server's FIN, then closes.
    ServerCloses { reply: usize },
    /// As `Connections`, one at a time per task, starting one every `every`: light load
    /// for latency.
    Paced { reply: usize, every: Duration },
    /// Connect and read a long answer until the deadline (a long transfer), then close.
    Download,
}

/// The client load of one agent namespace.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub target: SocketAddrV4,
    pub work: Work,
    /// Concurrent connections (tasks) of this agent.
    pub tasks: usize,
    /// Shared by all agents of a phase.
    pub deadline: Instant,
    /// Connections per task at most.
    pub max_per_task: u64,
}

/// What one agent saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Connections that completed (request answered).
    pub connections: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Payload bytes received.
    pub bytes: u64,
    /// Time for `connect()` to return, µs, per connection.
    pub connect_us: Vec<u32>,
    /// From starting to connect until the whole reply is read, µs, per connection.
    pub reply_us: Vec<u32>,
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.connections += other.connections;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.bytes += other.bytes;
        self.connect_us.extend(other.connect_us);
        self.reply_us.extend(other.reply_us);
    }
}

/// Runs `spec` from every namespace of `agents` at once, a thread each; what they saw, merged.
pub fn run_agents(agents: &[&NetNs], spec: Spec) -> Result<Outcome> {
    let outcomes: Vec<Result<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = agents
            .iter()
            .map(|ns| s.spawn(move || run_agent(ns, spec)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let mut all = Outcome::default();
    for o in outcomes {
        all.merge(o?);
    }
    Ok(all)
}

/// Runs `spec` from inside `ns` (a runtime on a thread that joined it) until the deadline.
pub fn run_agent(ns: &NetNs, spec: Spec) -> Result<Outcome> {
    ns.enter(move || -> Result<Outcome> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a client runtime")?;
        rt.block_on(async move {
            let tasks: Vec<_> = (0..spec.tasks)
                .map(|_| tokio::spawn(client_task(spec)))
                .collect();
            let mut all = Outcome::default();
            for t in tasks {
                all.merge(t.await.context("a client task panicked")?);
            }
            Ok(all)
        })
    })?
}

async fn client_task(spec: Spec) -> Outcome {
    let mut out = Outcome::default();
    let deadline = tokio::time::Instant::from_std(spec.deadline);
    let mut started = 0u64;
    while Instant::now() < spec.deadline && started < spec.max_per_task {
        started += 1;
        let result = match spec.work {
            Work::Connections { reply } => one_request(spec.target, reply, false, &mut out).await,
            Work::ServerCloses { reply } => one_request(spec.target, reply, true, &mut out).await,
            Work::Paced { reply, every } => {
                let next = tokio::time::Instant::now() + every;
                let r = one_request(spec.target, reply, false, &mut out).await;
                tokio::time::sleep_until(next.min(deadline)).await;
                r
            }
            Work::Download => download(spec.target, deadline, &mut out).await,
        };
        if let Err(e) = result {
            out.errors += 1;
            if out.first_error.is_none() {
                out.first_error = Some(format!("{e:#}"));
            }
            if out.errors >= MAX_ERRORS_PER_TASK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    out
}

async fn connect(target: SocketAddrV4) -> Result<TcpStream> {
    let stream = timeout(IO_TIMEOUT, TcpStream::connect(target))
        .await
        .with_context(|| format!("connecting to {target}: timed out"))?
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn one_request(
    target: SocketAddrV4,
    reply: usize,
    server_closes: bool,
    out: &mut Outcome,
) -> Result<()> {
    let t0 = Instant::now();
    let mut stream = connect(target).await?;
    let connected = t0.elapsed();
    let mut buf = [0u8; 4096];
    let reply = reply.min(buf.len());
    let flags = if server_closes { CLOSES_FIRST } else { 0 };
    timeout(IO_TIMEOUT, async {
        stream.write_all(&request(reply as u64, flags)).await?;
        stream.read_exact(&mut buf[..reply]).await?;
        if server_closes && stream.read(&mut buf).await? != 0 {
            return Err(std::io::Error::other("data after the reply"));
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .context("request and reply: timed out")?
    .context("request and reply")?;
    let answered = t0.elapsed();
    drop(stream);
    out.connections += 1;
    out.bytes += reply as u64;
    out.connect_us.push(connected.as_micros() as u32);
    out.reply_us.push(answered.as_micros() as u32);
    Ok(())
}

async fn download(
    target: SocketAddrV4,
    deadline: tokio::time::Instant,
    out: &mut Outcome,
) -> Result<()> {
    let mut stream = connect(target).await?;
    stream.write_all(&request(MAX_REPLY, 0)).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break, // the deadline: the transfer ends here
            Ok(Ok(0)) => bail!("{target} closed the transfer early"),
            Ok(Ok(n)) => out.bytes += n as u64,
            Ok(Err(e)) => return Err(e).context("reading the transfer"),
        }
    }
    out.connections += 1;
    Ok(())
}

/// The `q`-quantile (0..=1) of `v`, sorted in place; 0 when empty.
pub fn quantile(v: &mut [u32], q: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}
