//! Real backends for the servers of the topology, and the clients that talk to them.
//!
//! A [`Backend`] listens on `0.0.0.0:PORT` inside a server's namespace (so it also answers on a
//! VIP held on `lo`, as dsr needs). To every connection it first sends a line naming its server
//! (`server-1\n`), then echoes everything it receives until EOF. The [`Kind::Tls`] variant does
//! the same inside TLS (rustls, ring), with a certificate for the server's name and addresses
//! and the VIP, signed by a throwaway test CA ([`test_ca_pem`]). Counters ([`Stats`]) say how
//! many connections and bytes each backend saw. A backend can be stopped (the listener and every
//! open connection close, so new connections are refused, like a dead server) and started again;
//! it can hang ([`Backend::hang`]: it accepts and then answers nothing, like a wedged server);
//! it stops on drop.
//!
//! Plain threads: one accept loop per backend and one thread per connection, at most
//! [`MAX_CONNECTIONS`] at a time (more are closed at once and counted as rejected).
//!
//! Clients: [`connect`] opens a TCP connection from inside a namespace, [`tls_connect`] does the
//! TLS handshake on top, accepting any certificate, and [`echo_roundtrip`] checks the greeting
//! and the echo.

use crate::{
    netns::NetNs,
    topology::{Topology, API_PORT, SERVERS, VIP},
};
use anyhow::{anyhow, bail, Context, Result};
use k3s_xdp::health::check::AcceptAnyCertificate;
use rustls::{
    crypto::{ring, CryptoProvider},
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned,
};
use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// Open connections per backend; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// How often the accept loop checks whether it must stop.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest greeting line [`echo_roundtrip`] reads.
const MAX_GREETING: usize = 256;

/// What a backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Greets with its name, then echoes.
    Tcp,
    /// The same inside TLS.
    Tls,
    /// HTTPS like a k3s API server: `GET /readyz` answers the status set with
    /// [`Backend::set_status`] (200 at start; 401 is what k3s answers anonymous clients).
    Https,
    /// Accepts TCP and never answers: a hung server (a TLS check times out on it).
    Silent,
    /// Like a Kubernetes watch: greets with its name, then pushes a line
    /// `push NAME N` every [`PUSH_EVERY`] unasked (the server speaks first), and answers each
    /// line the client sends with `echo NAME LINE`. At most [`MAX_PUSHES`] pushes.
    Push,
}

/// How often a [`Kind::Push`] backend pushes a line.
pub const PUSH_EVERY: Duration = Duration::from_millis(500);
/// Pushes per connection at most (bounded traffic: 10 minutes' worth).
pub const MAX_PUSHES: u64 = 1200;

/// What a backend has seen since it was created (across restarts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted and served (for TLS: including failed handshakes).
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed on accept because [`MAX_CONNECTIONS`] were open.
    pub rejected: u64,
    /// TLS handshakes that failed (health checks that connect and close count here too).
    pub tls_errors: u64,
    /// Payload bytes received (inside TLS for [`Kind::Tls`]).
    pub bytes_in: u64,
    /// Payload bytes sent, greeting included (counted as they are handed to the socket, so
    /// a client that has read them sees them counted).
    pub bytes_out: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    rejected: AtomicU64,
    tls_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            accepted: self.accepted.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            tls_errors: self.tls_errors.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// One echo server in one namespace.
pub struct Backend {
    name: String,
    ns: NetNs,
    port: u16,
    kind: Kind,
    tls: Option<Arc<ServerConfig>>,
    counters: Arc<Counters>,
    /// The status `GET /readyz` answers ([`Kind::Https`]).
    status: Arc<AtomicU16>,
    /// Hung: connections are accepted, nothing is answered or sent.
    hung: Arc<AtomicBool>,
    running: Option<Running>,
}

/// Open connections by id: a clone of each socket (to shut it down on stop) and its thread.
type Connections = Arc<Mutex<HashMap<u64, (TcpStream, JoinHandle<()>)>>>;

/// The live part of a started backend.
struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    conns: Connections,
}

impl Backend {
    /// Starts a backend named `name` (what it greets with) on `0.0.0.0:port` in `ns`.
    /// `addrs` go into the TLS certificate besides the name and the VIP.
    pub fn start(
        ns: &NetNs,
        name: &str,
        port: u16,
        kind: Kind,
        addrs: &[Ipv4Addr],
    ) -> Result<Self> {
        let tls = match kind {
            Kind::Tcp | Kind::Silent | Kind::Push => None,
            Kind::Tls | Kind::Https => Some(server_config(name, addrs)?),
        };
        let mut backend = Backend {
            name: name.to_string(),
            ns: ns.handle(),
            port,
            kind,
            tls,
            counters: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            hung: Arc::default(),
            running: None,
        };
        backend.restart()?;
        Ok(backend)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Hangs (`true`) like a wedged server: the kernel still completes handshakes and the
    /// backend keeps accepting, but no connection gets a greeting, a TLS handshake, an echo or a
    /// push until `false`; what was held back then goes out.
    pub fn hang(&self, hung: bool) {
        self.hung.store(hung, Ordering::SeqCst);
    }

    /// The status `GET /readyz` answers from now on ([`Kind::Https`]).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// Starts listening again after [`Backend::stop`] (same name, port, certificate and
    /// counters). Does nothing if it is running.
    pub fn restart(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        // `[::]`: IPv4 and IPv6 clients alike (a namespace's bindv6only is 0).
        let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), self.port);
        // std sets SO_REUSEADDR on listeners, so a restart does not wait for TIME_WAIT.
        let listener = self
            .ns
            .enter(|| TcpListener::bind(addr))?
            .with_context(|| {
                format!(
                    "backend {}: binding {addr} in network namespace {}",
                    self.name,
                    self.ns.name()
                )
            })?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("backend {}: making the listener non-blocking", self.name))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(HashMap::new()));
        let server = Server {
            name: self.name.clone(),
            kind: self.kind,
            status: Arc::clone(&self.status),
            hung: Arc::clone(&self.hung),
            tls: self.tls.clone(),
            counters: Arc::clone(&self.counters),
            stop: Arc::clone(&stop),
            conns: Arc::clone(&conns),
        };
        let accept = thread::Builder::new()
            .name(format!("backend-{}", self.name))
            .spawn(move || server.accept_loop(listener))
            .with_context(|| format!("backend {}: starting its accept thread", self.name))?;
        self.running = Some(Running {
            stop,
            accept,
            conns,
        });
        Ok(())
    }

    /// Stops like a dead server: closes the listener (new connections are refused) and every
    /// open connection, and waits for its threads. Does nothing if it is stopped.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        // The accept loop sees the flag within ACCEPT_POLL and drops the listener.
        let _ = running.accept.join();
        // No new connection can register now; close the open ones and wait for their threads.
        let conns: Vec<(TcpStream, JoinHandle<()>)> = match running.conns.lock() {
            Ok(mut map) => map.drain().map(|(_, c)| c).collect(),
            Err(_) => Vec::new(),
        };
        for (stream, handle) in conns {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = handle.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the accept loop and the connection threads share.
struct Server {
    name: String,
    kind: Kind,
    status: Arc<AtomicU16>,
    /// [`Backend::hang`].
    hung: Arc<AtomicBool>,
    tls: Option<Arc<ServerConfig>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    conns: Connections,
}

impl Server {
    fn accept_loop(self, listener: TcpListener) {
        let this = Arc::new(self);
        let mut next_id = 0u64;
        while !this.stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    next_id += 1;
                    this.serve(next_id, stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // E.g. ECONNABORTED or EMFILE: back off and keep serving.
                Err(_) => thread::sleep(ACCEPT_POLL),
            }
        }
    }

    fn serve(self: &Arc<Self>, id: u64, stream: TcpStream) {
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        // Reap the threads of finished connections before counting.
        let finished: Vec<u64> = conns
            .iter()
            .filter(|(_, (_, h))| h.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for done in finished {
            if let Some((_, handle)) = conns.remove(&done) {
                let _ = handle.join();
            }
        }
        if conns.len() >= MAX_CONNECTIONS {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return; // dropping the stream closes it
        }
        let (Ok(()), Ok(clone)) = (stream.set_nonblocking(false), stream.try_clone()) else {
            return;
        };
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("backend-{}-conn", self.name))
            .spawn(move || {
                let _ = this.handle(stream);
                this.counters.active.fetch_sub(1, Ordering::Relaxed);
                if let Ok(mut conns) = this.conns.lock() {
                    // Drop our clone so the socket closes now; the handle is reaped later.
                    if let Some(entry) = conns.get_mut(&id) {
                        let _ = entry.0.shutdown(Shutdown::Both);
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                conns.insert(id, (clone, handle));
            }
            Err(_) => {
                self.counters.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Returns once the backend is not hung (or stops).
    fn wait_while_hung(&self) {
        while self.hung.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
            thread::sleep(ACCEPT_POLL);
        }
    }

    fn handle(&self, stream: TcpStream) -> io::Result<()> {
        self.wait_while_hung();
        if self.kind == Kind::Silent {
            return self.silent(stream);
        }
        if self.kind == Kind::Push {
            return self.push(stream);
        }
        match &self.tls {
            None => self.echo(stream),
            Some(config) => {
                let conn = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
                let mut tls = StreamOwned::new(conn, stream);
                // Bound the handshake; afterwards the client paces the conversation.
                tls.sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
                while tls.conn.is_handshaking() {
                    if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                        self.counters.tls_errors.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                tls.sock.set_read_timeout(None)?;
                if self.kind == Kind::Https {
                    self.https(tls)
                } else {
                    self.echo(tls)
                }
            }
        }
    }

    /// Reads and discards until EOF (or until `stop` shuts the socket down); never answers.
    fn silent(&self, mut stream: TcpStream) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.counters
                        .bytes_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Kind::Push`]: the greeting, then a pusher thread and this one answering lines; both
    /// write whole lines under one lock.
    fn push(&self, stream: TcpStream) -> io::Result<()> {
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let line = |w: &Mutex<TcpStream>, text: String| -> io::Result<()> {
            let mut w = w.lock().map_err(|_| io::Error::other("poisoned"))?;
            self.counters
                .bytes_out
                .fetch_add(text.len() as u64, Ordering::Relaxed);
            w.write_all(text.as_bytes())?;
            w.flush()
        };
        line(&writer, format!("{}\n", self.name))?;
        let done = Arc::new(AtomicBool::new(false));
        let pusher = {
            let (writer, done, stop) = (writer.clone(), done.clone(), self.stop.clone());
            let hung = self.hung.clone();
            let (name, counters) = (self.name.clone(), self.counters.clone());
            thread::spawn(move || {
                for n in 1..=MAX_PUSHES {
                    // Sleep in small steps, so a closed connection ends the thread soon.
                    for _ in 0..10 {
                        if done.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        thread::sleep(PUSH_EVERY / 10);
                    }
                    if hung.load(Ordering::SeqCst) {
                        continue;
                    }
                    let text = format!("push {name} {n}\n");
                    let Ok(mut w) = writer.lock() else { return };
                    counters
                        .bytes_out
                        .fetch_add(text.len() as u64, Ordering::Relaxed);
                    if w.write_all(text.as_bytes())
                        .and_then(|()| w.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let mut reader = io::BufReader::new(stream);
        let mut got = String::new();
        let result = loop {
            got.clear();
            match io::BufRead::read_line(&mut reader, &mut got) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    self.counters
                        .bytes_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.wait_while_hung();
                    if let Err(e) =
                        line(&writer, format!("echo {} {}\n", self.name, got.trim_end()))
                    {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        done.store(true, Ordering::Relaxed);
        let _ = pusher.join();
        result
    }

    /// One HTTP/1.1 request: `GET /readyz` gets the configured status, anything else 404.
    fn https(&self, mut stream: impl Read + Write) -> io::Result<()> {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf)?;
            if n == 0 || request.len() > 16 * 1024 {
                return Ok(());
            }
            self.counters
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
            request.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&request);
        let path = line.split_whitespace().nth(1).unwrap_or("");
        let status = if path == "/readyz" {
            self.status.load(Ordering::Relaxed)
        } else {
            404
        };
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            500 => "Internal Server Error",
            _ => "Status",
        };
        let body = format!("{status} {reason}\n");
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        self.counters
            .bytes_out
            .fetch_add(response.len() as u64, Ordering::Relaxed);
        stream.write_all(response.as_bytes())?;
        stream.flush()
    }

    /// Greets, then echoes until EOF (or until `stop` shuts the socket down).
    fn echo(&self, mut stream: impl Read + Write) -> io::Result<()> {
        // Counted before writing, so a client that has read the bytes sees them counted.
        let greeting = format!("{}\n", self.name);
        self.counters
            .bytes_out
            .fetch_add(greeting.len() as u64, Ordering::Relaxed);
        stream.write_all(greeting.as_bytes())?;
        stream.flush()?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A TLS peer that closes without close_notify: treat as EOF.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            self.counters
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
            self.wait_while_hung();
            self.counters
                .bytes_out
                .fetch_add(n as u64, Ordering::Relaxed);
            stream.write_all(&buf[..n])?;
            stream.flush()?;
        }
    }
}

/// Backends by name, e.g. one per server of the topology.
#[derive(Default)]
pub struct Backends {
    backends: Vec<Backend>,
}

impl Backends {
    /// A backend of `kind` on [`API_PORT`] in each of server-1..3 that `topology` has.
    pub fn seed(topology: &Topology, kind: Kind) -> Result<Self> {
        Self::on(topology, &SERVERS, API_PORT, kind)
    }

    /// A backend of `kind` on `port` in each of `nodes` (each greets with its node name).
    pub fn on(topology: &Topology, nodes: &[&str], port: u16, kind: Kind) -> Result<Self> {
        let mut set = Backends::default();
        for node in nodes {
            let Some(n) = topology.try_node(node) else {
                continue;
            };
            set.backends
                .push(Backend::start(&n.ns, node, port, kind, &[n.addr])?);
        }
        Ok(set)
    }

    pub fn add(&mut self, backend: Backend) {
        self.backends.push(backend);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter()
    }

    pub fn get(&self, name: &str) -> Result<&Backend> {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| anyhow!("no backend {name:?}"))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut Backend> {
        self.backends
            .iter_mut()
            .find(|b| b.name == name)
            .ok_or_else(|| anyhow!("no backend {name:?}"))
    }

    /// Stops backend `name` (see [`Backend::stop`]).
    pub fn stop(&mut self, name: &str) -> Result<()> {
        self.get_mut(name)?.stop();
        Ok(())
    }

    /// Starts backend `name` again (see [`Backend::restart`]).
    pub fn restart(&mut self, name: &str) -> Result<()> {
        self.get_mut(name)?.restart()
    }

    pub fn stats(&self, name: &str) -> Result<Stats> {
        Ok(self.get(name)?.stats())
    }

    /// Connections accepted per backend, by name.
    pub fn accepted(&self) -> HashMap<String, u64> {
        self.backends
            .iter()
            .map(|b| (b.name.clone(), b.stats().accepted))
            .collect()
    }
}

/// The ring provider (aws-lc-rs would need cmake and nasm to build).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The throwaway CA of this test process, signing every TLS backend certificate.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn test_ca() -> Result<&'static TestCa> {
    static CA: OnceLock<TestCa> = OnceLock::new();
    if let Some(ca) = CA.get() {
        return Ok(ca);
    }
    let key = rcgen::KeyPair::generate().context("generating the test CA key")?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).context("test CA parameters")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "k3s-xdp test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .context("self-signing the test CA")?;
    // Another thread may have won the race; either CA is fine, keep the stored one.
    Ok(CA.get_or_init(|| TestCa { cert, key }))
}

/// The PEM of the CA that signs every TLS backend's certificate (for `ca_file` in configs).
pub fn test_ca_pem() -> Result<String> {
    Ok(test_ca()?.cert.pem())
}

/// A server config with a fresh certificate for `name`, `addrs`, the VIP and 127.0.0.1.
fn server_config(name: &str, addrs: &[Ipv4Addr]) -> Result<Arc<ServerConfig>> {
    let ca = test_ca()?;
    let mut sans = vec![name.to_string(), VIP.to_string(), "127.0.0.1".to_string()];
    sans.extend(addrs.iter().map(|a| a.to_string()));
    let key = rcgen::KeyPair::generate().context("generating a backend key")?;
    let mut params = rcgen::CertificateParams::new(sans)
        .with_context(|| format!("certificate parameters for {name}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .with_context(|| format!("signing the certificate of {name}"))?;
    let chain = vec![cert.der().clone(), ca.cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| format!("TLS server config of {name}"))?;
    Ok(Arc::new(config))
}

/// Opens a TCP connection to `to` from inside `from` (the socket lives in that namespace),
/// within `timeout`; reads and writes then time out after `timeout` too.
pub fn connect(from: &NetNs, to: impl Into<SocketAddr>, timeout: Duration) -> Result<TcpStream> {
    let to = to.into();
    let stream = from
        .enter(|| TcpStream::connect_timeout(&to, timeout))?
        .with_context(|| format!("connecting to {to} from network namespace {}", from.name()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether `err` (e.g. from [`connect`]) is a refused connection (a RST to the SYN).
pub fn is_connection_refused(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    })
}

/// A TLS client stream.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// [`connect`], then a TLS handshake with `server_name` as SNI, accepting any certificate
/// (signatures are still checked, the chain is not).
pub fn tls_connect(
    from: &NetNs,
    to: impl Into<SocketAddr>,
    server_name: &str,
    timeout: Duration,
) -> Result<TlsStream> {
    let to = to.into();
    let tcp = connect(from, to, timeout)?;
    let name = ServerName::try_from(server_name.to_string())
        .with_context(|| format!("{server_name:?} is not a valid TLS server name"))?;
    let conn = ClientConnection::new(insecure_client_config()?, name)
        .context("creating a TLS client connection")?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .with_context(|| format!("TLS handshake with {to} from {}", from.name()))?;
    }
    Ok(tls)
}

fn insecure_client_config() -> Result<Arc<ClientConfig>> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(Arc::clone(config));
    }
    let provider = provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        // Any certificate (the test CA is throwaway); handshake signatures are still verified,
        // so a broken TLS stack still fails.
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(provider)))
        .with_no_client_auth();
    Ok(Arc::clone(CONFIG.get_or_init(|| Arc::new(config))))
}

/// Reads the greeting line, sends `payload`, reads as many bytes back; returns the server name
/// from the greeting and whether the echo matched. Works on TCP and TLS streams; relies on the
/// stream's read timeout (set by [`connect`]) to stay bounded.
pub fn echo_roundtrip(stream: &mut (impl Read + Write), payload: &[u8]) -> Result<(String, bool)> {
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream
            .read(&mut byte)
            .context("reading the backend's greeting")?;
        if n == 0 {
            bail!(
                "the connection closed before the greeting ended (got {:?})",
                String::from_utf8_lossy(&greeting)
            );
        }
        if byte[0] == b'\n' {
            break;
        }
        greeting.push(byte[0]);
        if greeting.len() > MAX_GREETING {
            bail!("the greeting is longer than {MAX_GREETING} bytes");
        }
    }
    let server = String::from_utf8(greeting).context("the greeting is not UTF-8")?;
    stream.write_all(payload).context("sending the payload")?;
    stream.flush().context("sending the payload")?;
    let mut echoed = vec![0u8; payload.len()];
    stream
        .read_exact(&mut echoed)
        .with_context(|| format!("reading the echo of {} bytes from {server}", payload.len()))?;
    Ok((server, echoed == payload))
}

/// A client of a [`Kind::Push`] backend: it knows which server greeted it, counts the pushes,
/// and checks that each line it sends is echoed by that same server.
pub struct Watch {
    reader: io::BufReader<TcpStream>,
    writer: TcpStream,
    /// The server that greeted.
    pub server: String,
    /// The last push number seen.
    pub last_push: u64,
}

impl Watch {
    /// Connects from `from` to `to` and reads the greeting.
    pub fn open(from: &NetNs, to: impl Into<SocketAddr>, timeout: Duration) -> Result<Watch> {
        let stream = connect(from, to, timeout)?;
        let writer = stream.try_clone()?;
        let mut w = Watch {
            reader: io::BufReader::new(stream),
            writer,
            server: String::new(),
            last_push: 0,
        };
        w.server = w.line()?;
        Ok(w)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = io::BufRead::read_line(&mut self.reader, &mut line)
            .context("reading a line of the watch")?;
        if n == 0 {
            bail!("the watch's connection closed");
        }
        Ok(line.trim_end().to_string())
    }

    fn take(&mut self, line: &str) -> Result<Option<String>> {
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        match words.as_slice() {
            ["push", server, n] if *server == self.server => {
                let n: u64 = n.parse().context("a push number")?;
                if n <= self.last_push {
                    bail!("push {n} after push {}", self.last_push);
                }
                self.last_push = n;
                Ok(None)
            }
            ["echo", server, rest] if *server == self.server => Ok(Some(rest.to_string())),
            _ => bail!("{line:?} on a watch of {}", self.server),
        }
    }

    /// Waits for the next push (within the stream's read timeout); returns its number.
    pub fn next_push(&mut self) -> Result<u64> {
        loop {
            let line = self.line()?;
            if self.take(&line)?.is_none() {
                return Ok(self.last_push);
            }
        }
    }

    /// Sends `text` and waits for its echo from the same server (pushes read meanwhile).
    pub fn echo(&mut self, text: &str) -> Result<()> {
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .context("sending a line on the watch")?;
        loop {
            let line = self.line()?;
            if let Some(echoed) = self.take(&line)? {
                if echoed != text {
                    bail!("{} echoed {echoed:?}, not {text:?}", self.server);
                }
                return Ok(());
            }
        }
    }

    /// Sets the read timeout of the stream.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// The client's port (its side of the tuple).
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Connects from `from` to `to`, checks the greeting and the echo of `payload`, and closes:
/// the name of the backend that answered.
pub fn roundtrip(
    from: &NetNs,
    to: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> Result<String> {
    let mut stream = connect(from, to, timeout)?;
    let (server, echoed) = echo_roundtrip(&mut stream, payload)?;
    if !echoed {
        bail!("{server} echoed something else than it was sent");
    }
    let _ = stream.shutdown(Shutdown::Both);
    Ok(server)
}
