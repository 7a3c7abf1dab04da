//! A SYN flood and the legitimate traffic that must get through it (issue 21), shared by
//! `cargo xtask bench flood` and `tests/tests/flood.rs`.
//!
//! [`Flood`]: TCP SYNs to a VIP:port from random source addresses and ports of
//! [`FLOOD_NET`] (198.51.100.0/24, TEST-NET-2: never an address of the seed topology, which
//! lives in 192.0.2.0/24), written as whole Ethernet frames to a node's `eth1` through an
//! AF_PACKET socket (`sendmmsg`, batches of [`BATCH`], the qdisc bypassed), from a thread that
//! joined the node's namespace: as fast as the machine allows, and bounded by a packet count
//! and a time limit, whichever comes first. The socket only sends (protocol 0: it receives
//! nothing) and closes when the flood ends, also on error or when the handle drops.
//!
//! The load balancer and its backends answer SYNs with SYN-ACKs to addresses that do not
//! exist. [`route_flood_replies`] sends them somewhere harmless inside the topology: a route to
//! [`FLOOD_NET`] via the flooding node, where a blackhole route (with forwarding on, so no ICMP
//! comes back) drops them, as the internet would lose a spoofed flood's answers.
//!
//! [`Legit`]: what the other agents do meanwhile, every outcome recorded: new connections at a
//! steady bounded rate (connect, a line, the greeting and the line's echo, close; the connect
//! timed; the client speaks first, as k3s clients do with TLS) and long-lived
//! connections opened before the flood that echo a line every so often and once more at the
//! end, so a lost one is known. Talks to the [`crate::backend::Kind::Tcp`] backends.

use crate::{
    backend::echo_roundtrip,
    netns::NetNs,
    packet::ones_complement_sum,
    topology::{Topology, IFACE},
};
use anyhow::{anyhow, bail, Context, Result};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The flood's source addresses: 198.51.100.0/24 (hosts .1 to .254).
pub const FLOOD_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
pub const FLOOD_PREFIX_LEN: u8 = 24;
/// Frames per `sendmmsg`.
pub const BATCH: usize = 64;
/// Ethernet + IPv4 + TCP with an MSS option: 58 bytes.
pub const FRAME_LEN: usize = 14 + 20 + 24;

/// What to flood, from where.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    pub target: SocketAddrV4,
    /// The flooding node's `eth1` MAC (frames leave with it).
    pub src_mac: [u8; 6],
    /// Where the frames go: the MAC address holding the VIP.
    pub dst_mac: [u8; 6],
    /// The flood stops after this many SYNs...
    pub max_packets: u64,
    /// ...or after this long, whichever comes first.
    pub max_time: Duration,
    /// Seed of the source addresses, ports and sequence numbers (a run can be repeated).
    pub seed: u64,
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// SYNs the kernel accepted from the socket.
    pub sent: u64,
    /// Batches the kernel refused (ENOBUFS and the like), retried.
    pub refused_batches: u64,
    pub seconds: f64,
    /// CPU-seconds (user + system) of the sending thread, kernel send path included.
    pub sender_cpu: f64,
}

impl FloodReport {
    /// SYNs sent per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }
}

/// A flood running on its own thread; stopped and joined when dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<FloodReport>>>,
}

impl Flood {
    /// Starts flooding from `ns` (its `eth1`) per `spec`.
    pub fn start(ns: &NetNs, spec: FloodSpec) -> Result<Flood> {
        if spec.max_time.is_zero() || spec.max_time > Duration::from_secs(600) {
            bail!("a flood lasts between 0 and 600 s, not {:?}", spec.max_time);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, ns) = (stop.clone(), ns.handle());
        let thread = std::thread::Builder::new()
            .name("syn-flood".into())
            .spawn(move || ns.enter(|| send(&spec, &flag))?)
            .context("starting the flood thread")?;
        Ok(Flood {
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until the flood ends by itself (count or time), at most its time limit plus a
    /// margin (it checks the time after every batch).
    pub fn finish(mut self) -> Result<FloodReport> {
        self.join()
    }

    /// Ends the flood now.
    pub fn stop(mut self) -> Result<FloodReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(&mut self) -> Result<FloodReport> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("the flood was already joined"))?;
        match thread.join() {
            Ok(r) => r,
            Err(_) => bail!("the flood thread panicked"),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SplitMix64: small, fast, seeded (no dependency for a packet generator).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A random flood source: an address of [`FLOOD_NET`] (.1 to .254) and a port of 1024-65535.
fn random_source(r: u64) -> SocketAddrV4 {
    let host = 1 + (r % 254) as u8;
    let port = 1024 + ((r >> 16) % (65536 - 1024)) as u16;
    let o = FLOOD_NET.octets();
    SocketAddrV4::new(Ipv4Addr::new(o[0], o[1], o[2], host), port)
}

/// Writes a whole SYN frame (checksums included) into `buf`.
pub fn syn_frame(
    buf: &mut [u8; FRAME_LEN],
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ip_id: u16,
) {
    buf[0..6].copy_from_slice(&dst_mac);
    buf[6..12].copy_from_slice(&src_mac);
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut buf[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&44u16.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = !ones_complement_sum(ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let tcp = &mut buf[34..58];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&[0; 4]);
    tcp[12] = 6 << 4; // 24 bytes
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[16..18].copy_from_slice(&[0, 0]);
    tcp[18..20].copy_from_slice(&[0, 0]);
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let sum = !ones_complement_sum(tcp, u32::from(ones_complement_sum(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// CPU-seconds of the calling thread so far.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The flood itself, on a thread inside the flooding node's namespace.
fn send(spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodReport> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno()).context("opening an AF_PACKET socket (needs CAP_NET_RAW)");
    }
    // SAFETY: a new fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(IFACE)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(errno()).with_context(|| format!("no interface {IFACE} to flood from"));
    }
    let one: libc::c_int = 1;
    // Best effort: straight to the driver, as a packet generator would.
    // SAFETY: an int option of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: zeroed sockaddr_ll, then its fields.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&spec.dst_mac);
    // SAFETY: a sockaddr_ll of its own size.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(errno()).with_context(|| format!("binding the flood socket to {IFACE}"));
    }

    let mut frames = vec![[0u8; FRAME_LEN]; BATCH];
    let mut iovecs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: FRAME_LEN,
        })
        .collect();
    // SAFETY: zeroed mmsghdrs, each pointing at its own iovec (no address: the socket is bound).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for (m, iov) in msgs.iter_mut().zip(iovecs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }

    let mut rng = Rng(spec.seed);
    let mut report = FloodReport::default();
    let cpu0 = thread_cpu();
    let started = Instant::now();
    let macs = (spec.src_mac, spec.dst_mac);
    while report.sent < spec.max_packets
        && started.elapsed() < spec.max_time
        && !stop.load(Ordering::Relaxed)
    {
        let n = (spec.max_packets - report.sent).min(BATCH as u64) as usize;
        for frame in frames.iter_mut().take(n) {
            let r = rng.next();
            syn_frame(
                frame,
                macs,
                random_source(r),
                spec.target,
                (r >> 32) as u32,
                (r >> 48) as u16,
            );
        }
        // SAFETY: `n` initialised mmsghdrs whose iovecs point at live frames.
        let done =
            unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if done < 0 {
            let e = errno();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    report.refused_batches += 1;
                    std::thread::yield_now();
                    continue;
                }
                _ => return Err(e).context("sendmmsg on the flood socket"),
            }
        }
        report.sent += done as u64;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.sender_cpu = thread_cpu() - cpu0;
    Ok(report)
}

/// Sends the SYN-ACKs that the load balancers (`lbs`) and `servers` give the flood's sources
/// somewhere harmless: a route to [`FLOOD_NET`] via `flooder`, whose kernel forwards nothing
/// there (a blackhole route; forwarding on so that it drops them without answering ICMP).
/// A permanent neighbour entry for `flooder` on each, so the XDP program's FIB lookup finds
/// its MAC at once. Everything lives in the topology's namespaces and goes with them.
pub fn route_flood_replies(
    topo: &Topology,
    flooder: &str,
    lbs: &[&str],
    servers: &[&str],
) -> Result<()> {
    let net = format!("{FLOOD_NET}/{FLOOD_PREFIX_LEN}");
    let via = topo.addr(flooder).to_string();
    let mac = crate::topology::mac_string(topo.mac(flooder));
    for node in lbs.iter().chain(servers) {
        let ns = topo.node(node);
        ns.ip(["route", "replace", &net, "via", &via, "dev", IFACE])
            .with_context(|| format!("routing {net} via {flooder} on {node}"))?;
        ns.ip([
            "neigh",
            "replace",
            &via,
            "lladdr",
            &mac,
            "dev",
            IFACE,
            "nud",
            "permanent",
        ])
        .with_context(|| format!("{flooder}'s neighbour entry on {node}"))?;
    }
    let ns = topo.node(flooder);
    ns.ip(["route", "replace", "blackhole", &net])
        .with_context(|| format!("a blackhole for {net} on {flooder}"))?;
    ns.run("sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"])
        .with_context(|| format!("forwarding on {flooder} (so the blackhole answers no ICMP)"))?;
    Ok(())
}

/// Packet counters of one interface (`ip -s link`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl LinkStats {
    /// Counters of `dev` in `ns`.
    pub fn read(ns: &NetNs, dev: &str) -> Result<LinkStats> {
        let out = ns.ip(["-s", "-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing `ip -s -j link show dev {dev}`"))?;
        let s = &v[0]["stats64"];
        let n = |dir: &str, what: &str| s[dir][what].as_u64().unwrap_or(0);
        Ok(LinkStats {
            rx_packets: n("rx", "packets"),
            rx_dropped: n("rx", "dropped"),
            tx_packets: n("tx", "packets"),
            tx_dropped: n("tx", "dropped"),
        })
    }

    /// What changed from `before` to `self`.
    pub fn since(&self, before: &LinkStats) -> LinkStats {
        LinkStats {
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(before.rx_dropped),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(before.tx_dropped),
        }
    }
}

/// The legitimate traffic of [`Legit`].
#[derive(Clone, Debug)]
pub struct LegitSpec {
    pub target: SocketAddrV4,
    pub agents: Vec<String>,
    /// Each agent starts a new connection every `interval` (connect, greeting, echo, close)...
    pub interval: Duration,
    /// ...for at most this long.
    pub limit: Duration,
    /// Connect, greeting and echo each fail after this.
    pub timeout: Duration,
    /// Long-lived connections per agent, opened by [`Legit::start`] before it returns...
    pub long_lived: usize,
    /// ...each echoing a line this often.
    pub echo_every: Duration,
}

/// One new connection.
#[derive(Clone, Debug)]
pub struct NewConnection {
    pub agent: String,
    pub started: Instant,
    /// How long the connect took (a SYN lost and sent again shows as a second or more).
    pub connect: Duration,
    /// Ok, or why it failed.
    pub result: Result<(), String>,
}

/// One long-lived connection, at the end.
#[derive(Clone, Debug)]
pub struct LongLived {
    pub agent: String,
    pub local_port: u16,
    /// The backend that greeted it.
    pub server: String,
    /// Lines echoed back.
    pub echoes: u64,
    /// The first failure (the connection is not used after it), with when it happened.
    pub lost: Option<(Instant, String)>,
}

/// Everything [`Legit`] saw.
#[derive(Clone, Debug, Default)]
pub struct LegitReport {
    pub new: Vec<NewConnection>,
    pub long_lived: Vec<LongLived>,
}

impl LegitReport {
    /// The new connections started within `[from, to)`.
    pub fn new_within(&self, from: Instant, to: Instant) -> Vec<&NewConnection> {
        self.new
            .iter()
            .filter(|c| c.started >= from && c.started < to)
            .collect()
    }

    pub fn lost_long_lived(&self) -> Vec<&LongLived> {
        self.long_lived
            .iter()
            .filter(|l| l.lost.is_some())
            .collect()
    }
}

/// Served and failed, the share served, and the connect time's p50 and p99 of successful ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewSummary {
    pub attempts: usize,
    pub served: usize,
    /// Connects that took a second or more (a SYN sent again).
    pub slow: usize,
    pub p50: Duration,
    pub p99: Duration,
}

impl NewSummary {
    pub fn of(conns: &[&NewConnection]) -> NewSummary {
        let mut times: Vec<Duration> = conns
            .iter()
            .filter(|c| c.result.is_ok())
            .map(|c| c.connect)
            .collect();
        times.sort_unstable();
        let at = |q: f64| -> Duration {
            if times.is_empty() {
                Duration::ZERO
            } else {
                times[((times.len() - 1) as f64 * q).round() as usize]
            }
        };
        NewSummary {
            attempts: conns.len(),
            served: times.len(),
            slow: times
                .iter()
                .filter(|t| **t >= Duration::from_millis(900))
                .count(),
            p50: at(0.5),
            p99: at(0.99),
        }
    }

    /// Share of attempts served, 0 to 1 (1 with no attempt).
    pub fn served_share(&self) -> f64 {
        if self.attempts == 0 {
            1.0
        } else {
            self.served as f64 / self.attempts as f64
        }
    }
}

/// Legitimate traffic from some agents: long-lived connections opened at start, new
/// connections at a steady rate until [`Legit::finish`] or the spec's limit.
pub struct Legit {
    stop: Arc<AtomicBool>,
    new: Vec<JoinHandle<Vec<NewConnection>>>,
    long: Option<JoinHandle<Vec<LongLived>>>,
}

struct Open {
    stream: TcpStream,
    state: LongLived,
}

impl Legit {
    /// Opens the long-lived connections (an error if one cannot be opened: the load balancer
    /// is not serving) and starts the streams of new connections.
    pub fn start(topo: &Topology, spec: &LegitSpec) -> Result<Legit> {
        let mut open = Vec::new();
        for agent in &spec.agents {
            for i in 0..spec.long_lived {
                let ns = topo.node(agent);
                let mut stream = crate::backend::connect(ns, spec.target, spec.timeout)
                    .with_context(|| format!("long-lived connection {i} from {agent}"))?;
                let (server, echoed) = echo_roundtrip(&mut stream, b"hello\n")
                    .with_context(|| format!("long-lived connection {i} from {agent}"))?;
                if !echoed {
                    bail!("long-lived connection {i} from {agent}: {server} echoed something else");
                }
                let local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
                open.push(Open {
                    stream,
                    state: LongLived {
                        agent: agent.clone(),
                        local_port,
                        server,
                        echoes: 1,
                        lost: None,
                    },
                });
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut new = Vec::new();
        for agent in &spec.agents {
            let (ns, agent, spec, stop) = (
                topo.node(agent).handle(),
                agent.clone(),
                spec.clone(),
                stop.clone(),
            );
            new.push(std::thread::spawn(move || {
                ns.enter(|| new_connections(&agent, &spec, &stop))
                    .unwrap_or_default()
            }));
        }
        let (flag, every, limit) = (stop.clone(), spec.echo_every, spec.limit);
        let long = std::thread::spawn(move || long_lived(open, every, limit, &flag));
        Ok(Legit {
            stop,
            new,
            long: Some(long),
        })
    }

    /// Stops the streams, echoes once more on every long-lived connection still up, closes
    /// them, and returns what happened.
    pub fn finish(mut self) -> LegitReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LegitReport::default();
        for t in self.new.drain(..) {
            report.new.extend(t.join().unwrap_or_default());
        }
        if let Some(t) = self.long.take() {
            report.long_lived = t.join().unwrap_or_default();
        }
        report
    }
}

impl Drop for Legit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.new.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.long.take() {
            let _ = t.join();
        }
    }
}

/// New connections in flight per agent at most; an attempt due while this many are open is
/// counted as failed (the load balancer is not keeping up) rather than started late.
const MAX_IN_FLIGHT: usize = 256;

/// One agent's new connections, started on a thread inside its namespace: one every
/// `interval` whatever the others do (each on its own thread, which stays in the namespace),
/// so a connection that hangs until its timeout does not hold the next ones back.
fn new_connections(agent: &str, spec: &LegitSpec, stop: &AtomicBool) -> Vec<NewConnection> {
    let end = Instant::now() + spec.limit;
    let max = 1 + (spec.limit.as_millis() / spec.interval.as_millis().max(1)) as usize;
    let mut out = Vec::new();
    let mut running: Vec<JoinHandle<NewConnection>> = Vec::new();
    let mut next = Instant::now();
    let mut started_count = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end && started_count < max {
        let mut still = Vec::with_capacity(running.len());
        for t in running.drain(..) {
            if t.is_finished() {
                out.extend(t.join().ok());
            } else {
                still.push(t);
            }
        }
        running = still;
        started_count += 1;
        if running.len() >= MAX_IN_FLIGHT {
            out.push(NewConnection {
                agent: agent.to_string(),
                started: Instant::now(),
                connect: Duration::ZERO,
                result: Err(format!("{MAX_IN_FLIGHT} connections already in flight")),
            });
        } else {
            let (name, to, timeout) = (agent.to_string(), spec.target, spec.timeout);
            match std::thread::Builder::new().spawn(move || attempt(name, to, timeout)) {
                Ok(t) => running.push(t),
                Err(e) => out.push(NewConnection {
                    agent: agent.to_string(),
                    started: Instant::now(),
                    connect: Duration::ZERO,
                    result: Err(format!("no thread for the attempt: {e}")),
                }),
            }
        }
        // A steady rate: the next start is a fixed interval after the last one's, unless
        // that one ran late (no bursts to catch up).
        next += spec.interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    // Each attempt ends within its timeouts (connect, greeting, echo).
    for t in running {
        out.extend(t.join().ok());
    }
    out.sort_by_key(|c| c.started);
    out
}

/// Connect, greeting, echo, close (on a thread in the agent's namespace).
fn attempt(agent: String, to: SocketAddrV4, timeout: Duration) -> NewConnection {
    let started = Instant::now();
    let connected = TcpStream::connect_timeout(&SocketAddr::from(to), timeout);
    let connect = started.elapsed();
    let result = connected
        .map_err(anyhow::Error::from)
        .and_then(|mut s| {
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
            // The client speaks first, as a k3s client's TLS ClientHello does: its first
            // segment also carries the handshake's last ACK again, which a backend that
            // answered the SYN with a SYN cookie needs if the ACK alone was lost.
            s.write_all(b"new\n").context("sending the line")?;
            let (server, echoed) = greeting_then_echo(&mut s, b"new\n")?;
            let _ = s.shutdown(Shutdown::Both);
            if !echoed {
                bail!("{server} echoed something else");
            }
            Ok(())
        })
        .map_err(|e| format!("{e:#}"));
    NewConnection {
        agent,
        started,
        connect,
        result,
    }
}

/// Reads the backend's greeting line and the echo of `sent` (already sent); returns the
/// server's name and whether the echo matched.
fn greeting_then_echo(stream: &mut TcpStream, sent: &[u8]) -> Result<(String, bool)> {
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        if stream
            .read(&mut byte)
            .context("reading the backend's greeting")?
            == 0
        {
            bail!("the connection closed before the greeting ended");
        }
        if byte[0] != b'\n' {
            greeting.push(byte[0]);
        }
        if greeting.len() > 256 {
            bail!("a greeting longer than 256 bytes");
        }
    }
    let mut echoed = vec![0u8; sent.len()];
    stream.read_exact(&mut echoed).context("reading the echo")?;
    Ok((
        String::from_utf8_lossy(&greeting).into_owned(),
        echoed == sent,
    ))
}

/// One echo on a long-lived connection.
fn echo_once(stream: &mut TcpStream, line: &[u8]) -> Result<()> {
    stream.write_all(line).context("sending a line")?;
    let mut back = vec![0u8; line.len()];
    // A flood that saturates the link drops the line or its echo now and then: TCP sends it
    // again (the retransmission timeout doubling up to seconds), so a slow echo is waited for,
    // up to `ECHO_PATIENCE`. A connection is lost when it breaks (a reset, its end, something
    // else echoed) or stays silent that long.
    let deadline = Instant::now() + ECHO_PATIENCE;
    let mut got = 0;
    while got < back.len() {
        match stream.read(&mut back[got..]) {
            Ok(0) => bail!("reading its echo: the connection ended"),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && Instant::now() < deadline => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading its echo"),
        }
    }
    if back != line {
        bail!("echoed {:?}", String::from_utf8_lossy(&back));
    }
    Ok(())
}

/// How long a long-lived connection's echo may take before the connection counts as lost:
/// longer than a flood and the retransmissions that follow it.
const ECHO_PATIENCE: Duration = Duration::from_secs(15);

/// The long-lived connections: each echoes a line every `every` until `stop` (or `limit`),
/// then once more; a failure marks it lost.
fn long_lived(
    mut open: Vec<Open>,
    every: Duration,
    limit: Duration,
    stop: &AtomicBool,
) -> Vec<LongLived> {
    let end = Instant::now() + limit;
    let mut round = 0u64;
    loop {
        let last = stop.load(Ordering::Relaxed) || Instant::now() >= end;
        round += 1;
        for c in open.iter_mut().filter(|c| c.state.lost.is_none()) {
            let line = format!("line {round}\n");
            match echo_once(&mut c.stream, line.as_bytes()) {
                Ok(()) => c.state.echoes += 1,
                Err(e) => c.state.lost = Some((Instant::now(), format!("{e:#}"))),
            }
        }
        if last {
            break;
        }
        // Sleep in small steps so a stop is seen quickly.
        let wake = Instant::now() + every;
        while Instant::now() < wake && !stop.load(Ordering::Relaxed) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    open.into_iter()
        .map(|c| {
            let _ = c.stream.shutdown(Shutdown::Both);
            c.state
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frames_have_valid_checksums_and_documentation_sources() {
        let mut rng = Rng(7);
        let mut buf = [0u8; FRAME_LEN];
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 100), 6443);
        for _ in 0..1000 {
            let r = rng.next();
            let src = random_source(r);
            assert_eq!(src.ip().octets()[..3], FLOOD_NET.octets()[..3]);
            assert!(!matches!(src.ip().octets()[3], 0 | 255));
            assert!(src.port() >= 1024);
            syn_frame(&mut buf, ([2; 6], [4; 6]), src, dst, r as u32, 1);
            assert!(crate::packet::checksums_ok(&buf), "{buf:02x?}");
            let frame = crate::packet::Frame::parse(&buf).expect("a frame");
            let tcp = frame.tcp().expect("TCP");
            assert_eq!(tcp.flags, crate::packet::TCP_SYN);
            assert_eq!(tcp.dport, 6443);
        }
    }

    #[test]
    fn summaries_count_served_and_slow_connects() {
        let now = Instant::now();
        let c = |ms: u64, ok: bool| NewConnection {
            agent: "agent-2".into(),
            started: now,
            connect: Duration::from_millis(ms),
            result: if ok { Ok(()) } else { Err("no".into()) },
        };
        let conns = [c(1, true), c(2, true), c(1000, true), c(3, false)];
        let refs: Vec<&NewConnection> = conns.iter().collect();
        let s = NewSummary::of(&refs);
        assert_eq!((s.attempts, s.served, s.slow), (4, 3, 1));
        assert_eq!(s.p50, Duration::from_millis(2));
        assert_eq!(s.p99, Duration::from_millis(1000));
        assert!((s.served_share() - 0.75).abs() < 1e-9);
    }
}
