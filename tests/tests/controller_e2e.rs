//! The controller end to end, on the seed topology with `k3s-xdp run` on lb-1: health checks
//! take a dead server out of rotation (its pinned flows get a RST) and bring it back ramped;
//! tls and https checks against real TLS servers; hot reload; the control socket (status,
//! `--json`, root only); Prometheus metrics read with a real text-format parser.

use k3s_xdp::controller::status::Status;
use k3s_xdp_tests::{
    backend::{connect, echo_roundtrip, roundtrip, test_ca_pem, Backend, Kind},
    bpf::have_root,
    config::SeedConfig,
    daemon::{self, Daemon},
    serial,
    topology::{addr6, seed_addr, Topology, SERVERS, VIP, VIP6},
};
use std::{
    io::{ErrorKind, Read, Write},
    net::SocketAddrV4,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

const T: Duration = Duration::from_secs(2);

fn backends_toml(port: u16, servers: &[(&str, u32)]) -> String {
    servers
        .iter()
        .map(|(s, w)| {
            format!(
                "  {{ name = \"{s}\", address = \"{}:{port}\", weight = {w} }},",
                seed_addr(s).unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn service(health: &str, servers: &[(&str, u32)]) -> String {
    SeedConfig::new()
        .backends(backends_toml(6443, servers))
        .health_only(health)
        .render()
}

fn backend<'a>(s: &'a Status, name: &str) -> &'a k3s_xdp::controller::status::BackendStatus {
    s.services[0]
        .backends
        .iter()
        .find(|b| b.name == name)
        .expect("backend in status")
}

fn echo_servers(topo: &Topology) -> Vec<Backend> {
    SERVERS
        .iter()
        .map(|s| Backend::start(topo.node(s), s, 6443, Kind::Tcp, &[topo.addr(s)]).unwrap())
        .collect()
}

/// A dead server (its cable pulled: no FIN, no RST from it) leaves the rotation after
/// detection; from then on no new connection fails; a connection pinned to it gets a RST from
/// the load balancer; back online, it returns after `rise` checks, its weight ramped.
#[test]
fn a_dead_server_leaves_and_returns_ramped() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let _servers = echo_servers(&topo);
    let health = "check = \"tcp\"\ninter = \"200ms\"\nfastinter = \"100ms\"\ndowninter = \"200ms\"\nrise = 2\nfall = 2\ntimeout = \"300ms\"\nslowstart = \"3s\"";
    let all = [("server-1", 100), ("server-2", 100), ("server-3", 100)];
    let daemon = Daemon::start(&topo, "lb-1", &service(health, &all)).unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    let vip = SocketAddrV4::new(VIP, 6443);

    // A long-lived connection pinned to server-2 (bounded search).
    let mut pinned = None;
    for _ in 0..60 {
        let mut s = connect(topo.node("agent-1"), vip, T).unwrap();
        let (name, _) = echo_roundtrip(&mut s, b"who").unwrap();
        if name == "server-2" {
            pinned = Some(s);
            break;
        }
    }
    let mut pinned = pinned.expect("a connection lands on server-2 within 60 tries");

    // A bounded stream of new connections from agent-2 while server-2 dies.
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(Instant, Result<String, String>)>> = Mutex::new(Vec::new());
    let mut detected_at = None;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let started = Instant::now();
                let r = roundtrip(
                    topo.node("agent-2"),
                    vip,
                    b"stream",
                    Duration::from_millis(800),
                )
                .map_err(|e| format!("{e:#}"));
                results.lock().unwrap().push((started, r));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        topo.set_link("server-2", false).unwrap();
        let s = daemon
            .wait_for(Duration::from_secs(10), "server-2 down", |s| {
                backend(s, "server-2").health == "down"
            })
            .unwrap();
        detected_at = Some(Instant::now());
        assert!(
            backend(&s, "server-2")
                .last_change
                .as_deref()
                .unwrap_or("")
                .contains("DOWN after 2/2 failures"),
            "{:?}",
            backend(&s, "server-2").last_change
        );
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
    });
    let detected_at = detected_at.unwrap();
    let results = results.into_inner().unwrap();
    let after: Vec<_> = results.iter().filter(|(t, _)| *t > detected_at).collect();
    assert!(
        after.len() >= 20,
        "the stream kept going after detection ({} connections)",
        after.len()
    );
    let failed: Vec<_> = after.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "after detection, no new connection fails: {failed:?}"
    );
    assert!(after.iter().all(|(_, r)| r.as_deref() != Ok("server-2")));

    // The pinned connection's next packet is answered with a RST by lb-1.
    pinned.set_read_timeout(Some(T)).unwrap();
    let _ = pinned.write_all(b"are you there?");
    let mut buf = [0u8; 64];
    let err = pinned.read(&mut buf).expect_err("a RST, not data");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let status = daemon.status().unwrap();
    assert!(status.services[0].resets >= 1);

    // Back online: up after `rise` checks, weight ramped by slowstart.
    topo.set_link("server-2", true).unwrap();
    let s = daemon
        .wait_for(Duration::from_secs(10), "server-2 up", |s| {
            backend(s, "server-2").health == "up"
        })
        .unwrap();
    let b = backend(&s, "server-2");
    assert!(
        b.last_change
            .as_deref()
            .unwrap_or("")
            .contains("UP after 2/2"),
        "{:?}",
        b.last_change
    );
    assert!(
        b.effective_weight < 100,
        "ramping: {}/{}",
        b.effective_weight,
        b.weight
    );
    daemon
        .wait_for(Duration::from_secs(10), "server-2 at full weight", |s| {
            backend(s, "server-2").effective_weight == 100
        })
        .unwrap();
    let mut back = false;
    for i in 0..60 {
        if roundtrip(topo.node("agent-3"), vip, format!("{i}").as_bytes(), T).unwrap() == "server-2"
        {
            back = true;
            break;
        }
    }
    assert!(back, "server-2 takes new connections again");
}

/// With no healthy backend, new connections are refused at once (RST), counted, and the service
/// recovers by itself.
#[test]
fn without_any_healthy_backend_connections_are_refused_then_recover() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let _servers = echo_servers(&topo);
    let health = "check = \"tcp\"\ninter = \"200ms\"\nrise = 1\nfall = 1\ntimeout = \"300ms\"";
    let daemon = Daemon::start(&topo, "lb-1", &service(health, &[("server-1", 100)])).unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    topo.set_link("server-1", false).unwrap();
    daemon
        .wait_for(Duration::from_secs(10), "no healthy backend", |s| {
            s.services[0].healthy_backends == 0
        })
        .unwrap();
    let started = Instant::now();
    let err = connect(topo.node("agent-1"), SocketAddrV4::new(VIP, 6443), T).unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not timed out"
    );
    daemon
        .wait_log("no healthy backend", Duration::from_secs(2))
        .unwrap();
    topo.set_link("server-1", true).unwrap();
    daemon
        .wait_for(Duration::from_secs(10), "recovered", |s| {
            s.services[0].healthy_backends == 1
        })
        .unwrap();
    assert_eq!(
        roundtrip(
            topo.node("agent-1"),
            SocketAddrV4::new(VIP, 6443),
            b"back",
            T
        )
        .unwrap(),
        "server-1"
    );
}

/// tls and https checks against real TLS servers on server-1..3: /readyz answering 200, 401
/// (what k3s answers anonymous clients) and 500; and a server that accepts TCP but never
/// completes the handshake.
#[test]
fn tls_and_https_checks_against_real_tls_servers() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let mut https = Vec::new();
    for (s, status) in [("server-1", 200), ("server-2", 401), ("server-3", 500)] {
        let b = Backend::start(topo.node(s), s, 6443, Kind::Https, &[topo.addr(s)]).unwrap();
        b.set_status(status);
        https.push(b);
    }
    let _silent =
        Backend::start(topo.node("server-3"), "server-3", 6444, Kind::Silent, &[]).unwrap();
    let files = Files::new(&topo);
    let ca = files.write("ca.pem", &test_ca_pem().unwrap());
    let all = [("server-1", 100), ("server-2", 100), ("server-3", 100)];

    // https, expect 200: only server-1 is up; the others say why.
    let health = format!("check = \"https\"\npath = \"/readyz\"\ninter = \"200ms\"\nrise = 1\nfall = 1\ntimeout = \"500ms\"\nca_file = {ca:?}");
    let mut daemon = Daemon::start(&topo, "lb-1", &service(&health, &all)).unwrap();
    let s = daemon
        .wait_for(Duration::from_secs(10), "https checks done", |s| {
            s.services[0].backends.iter().all(|b| b.checks >= 2)
        })
        .unwrap();
    assert_eq!(backend(&s, "server-1").health, "up");
    assert_eq!(backend(&s, "server-2").health, "down");
    assert_eq!(
        backend(&s, "server-2").last_check.as_deref(),
        Some("HTTP 401 (expected 200)")
    );
    assert_eq!(
        backend(&s, "server-3").last_check.as_deref(),
        Some("HTTP 500 (expected 200)")
    );

    // expect = [200, 401]: server-2 joins (anonymous /readyz on k3s).
    daemon
        .write_config(&service(&format!("{health}\nexpect = [200, 401]"), &all))
        .unwrap();
    daemon.reload().unwrap();
    daemon
        .wait_for(
            Duration::from_secs(10),
            "server-2 up with 401 accepted",
            |s| backend(s, "server-2").health == "up",
        )
        .unwrap();

    // tls: the handshake is what counts, so 500 is up too; the silent server times out.
    daemon.stop();
    let tls = "check = \"tls\"\ninter = \"200ms\"\nrise = 1\nfall = 1\ntimeout = \"400ms\"";
    let cfg = format!(
        "interface = \"eth1\"\n\n[[service]]\nname = \"k3s-api\"\nvip = \"{VIP}\"\nport = 6443\nbackends = [\n{}\n  {{ name = \"hung\", address = \"{}:6444\" }},\n]\n[service.health]\n{tls}\n",
        backends_toml(6443, &all),
        seed_addr("server-3").unwrap()
    );
    daemon.write_config(&cfg).unwrap();
    daemon.restart(&topo).unwrap();
    let s = daemon
        .wait_for(Duration::from_secs(10), "tls checks done", |s| {
            s.services[0].backends.iter().all(|b| b.checks >= 2)
        })
        .unwrap();
    for name in ["server-1", "server-2", "server-3"] {
        assert_eq!(
            backend(&s, name).health,
            "up",
            "{name}: {:?}",
            backend(&s, name).last_check
        );
    }
    assert_eq!(backend(&s, "hung").health, "down");
    assert_eq!(
        backend(&s, "hung").last_check.as_deref(),
        Some("timeout after 400.0ms")
    );

    // A CA that did not sign the servers' certificates: verification fails.
    daemon.stop();
    let other_ca = rcgen::generate_simple_self_signed(vec!["other".into()])
        .unwrap()
        .cert
        .pem();
    let wrong = files.write("wrong-ca.pem", &other_ca);
    let cfg = service(
        &format!("check = \"tls\"\ninter = \"200ms\"\nrise = 1\nfall = 1\nca_file = {wrong:?}"),
        &[("server-1", 100)],
    );
    daemon.write_config(&cfg).unwrap();
    daemon.restart(&topo).unwrap();
    let s = daemon
        .wait_for(Duration::from_secs(10), "tls with the wrong CA", |s| {
            backend(s, "server-1").checks >= 1
        })
        .unwrap();
    assert_eq!(backend(&s, "server-1").health, "down");
    assert!(
        backend(&s, "server-1")
            .last_check
            .as_deref()
            .unwrap_or("")
            .contains("TLS handshake failed"),
        "{:?}",
        backend(&s, "server-1").last_check
    );
}

/// A per-topology directory for files the daemon reads (CA certificates), removed on drop,
/// also when the test fails.
struct Files(std::path::PathBuf);

impl Files {
    fn new(topo: &Topology) -> Files {
        let dir = std::env::temp_dir().join(format!("k3s-xdp-test-{}-files", topo.prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    /// Writes `name` and returns its path.
    fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A long-lived connection survives a reload (SIGHUP) that adds a backend and reweights
/// another; a broken config is refused and the old one keeps forwarding.
#[test]
fn reload_applies_differences_and_refuses_broken_configs() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let _servers = echo_servers(&topo);
    let health = "check = \"tcp\"\ninter = \"500ms\"";
    let mut daemon = Daemon::start(
        &topo,
        "lb-1",
        &service(health, &[("server-1", 100), ("server-2", 100)]),
    )
    .unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    let vip = SocketAddrV4::new(VIP, 6443);
    let mut watch = connect(topo.node("agent-1"), vip, T).unwrap();
    assert!(echo_roundtrip(&mut watch, b"start").unwrap().1);

    daemon
        .write_config(&service(
            health,
            &[("server-1", 30), ("server-2", 100), ("server-3", 100)],
        ))
        .unwrap();
    daemon.signal(libc::SIGHUP).unwrap();
    let s = daemon
        .wait_for(Duration::from_secs(10), "the reload applied", |s| {
            s.reloads == 1
        })
        .unwrap();
    assert_eq!(backend(&s, "server-1").weight, 30);
    daemon
        .wait_log("server-1: weight 100 -> 30", Duration::from_secs(2))
        .unwrap();
    for i in 0..10 {
        echo(&mut watch, &format!("still here {i}"));
    }
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();

    // A broken config (a syntax error and an unknown key): refused, with the line.
    std::fs::write(
        &daemon.config,
        format!(
            "control_socket = {:?}\ninterface = \"eth1\"\n[[service]]\nname = \"k3s-api\"\nvip = \"{VIP}\"\nport = 6443\nbakends = []\n",
            daemon.socket.display().to_string()
        ),
    )
    .unwrap();
    let err = daemon.reload().unwrap_err().to_string();
    assert!(err.contains(":7:") && err.contains("bakends"), "{err}");
    let s = daemon.status().unwrap();
    assert_eq!(s.failed_reloads, 1);
    assert_eq!(s.services[0].backends.len(), 3, "the running config stays");
    // The first IPv6 service: valid, but the IPv6 flow tables were not sized at start.
    let running = service(
        health,
        &[("server-1", 30), ("server-2", 100), ("server-3", 100)],
    );
    std::fs::write(
        &daemon.config,
        format!(
            "{running}\n[[service]]\nname = \"api6\"\nvip = \"2001:db8::100\"\nport = 6443\nbackends = [{{ name = \"s1\", address = \"[2001:db8::50]:6443\" }}]\n"
        ),
    )
    .unwrap();
    let err = daemon.reload().unwrap_err().to_string();
    assert!(
        err.contains("restart k3s-xdp to add the first IPv6 service"),
        "{err}"
    );
    let s = daemon.status().unwrap();
    assert_eq!(s.failed_reloads, 2);
    assert_eq!(s.services.len(), 1, "the running config stays");
    // Still forwarding on the old config: the long-lived connection and new ones.
    echo(&mut watch, "after the broken reload");
    assert!(roundtrip(topo.node("agent-2"), vip, b"new", T).is_ok());
    // The SYN flood guard: on by default, its known sources the agents whose handshakes
    // completed; a reload retunes it.
    let s = daemon.status().unwrap();
    assert!(
        s.syn_flood.guard && s.syn_flood.threshold == 1000,
        "{:?}",
        s.syn_flood
    );
    assert!(
        s.syn_flood.known_bits >= 2,
        "agent-1 and agent-2: {:?}",
        s.syn_flood
    );
    assert_eq!(s.syn_flood.dropped, 0);
    std::fs::write(
        &daemon.config,
        format!("{running}\n[syn_flood]\nthreshold = 5000\nadmit = 0\n"),
    )
    .unwrap();
    let answer = daemon.reload().unwrap();
    assert!(
        answer.contains("syn_flood: guard on (threshold 5000/s, admit 0/s"),
        "{answer}"
    );
    let s = daemon.status().unwrap();
    assert_eq!((s.syn_flood.threshold, s.syn_flood.admit), (5000, 0));
    assert!(roundtrip(topo.node("agent-3"), vip, b"guarded", T).is_ok());
    daemon.stop();
}

/// Without `[vrrp]` the node holds its VIPs itself: a reload that adds a service on a new VIP
/// adds that address to the interface (agents reach it at once), and a reload that removes
/// the service removes the address; the first VIP stays throughout.
#[test]
fn a_reload_adds_and_removes_the_vips_it_holds() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let _servers = echo_servers(&topo);
    let health = "check = \"tcp\"\ninter = \"500ms\"";
    let all = [("server-1", 100), ("server-2", 100), ("server-3", 100)];
    let one = service(health, &all);
    let mut daemon = Daemon::start(&topo, "lb-1", &one).unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    let web: std::net::Ipv4Addr = "192.0.2.110".parse().unwrap();
    assert!(!topo.has_address("lb-1", web));
    let two = format!(
        "{one}\n[[service]]\nname = \"web\"\nvip = \"{web}\"\nport = 6443\nbackends = [\n{}\n]\n[service.health]\n{health}\n",
        backends_toml(6443, &all)
    );
    daemon.write_config(&two).unwrap();
    let answer = daemon.reload().unwrap();
    assert!(answer.contains("web"), "{answer}");
    k3s_xdp_tests::wait_until(Duration::from_secs(5), "the new VIP on eth1", || {
        topo.has_address("lb-1", web)
    });
    daemon
        .wait_log(&format!("added {web}/32 to eth1"), Duration::from_secs(5))
        .unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    let answered = roundtrip(
        topo.node("agent-1"),
        SocketAddrV4::new(web, 6443),
        b"web",
        T,
    )
    .unwrap();
    assert!(SERVERS.contains(&answered.as_str()), "{answered}");

    daemon.write_config(&one).unwrap();
    daemon.reload().unwrap();
    k3s_xdp_tests::wait_until(Duration::from_secs(5), "the VIP gone from eth1", || {
        !topo.has_address("lb-1", web)
    });
    assert!(topo.has_address("lb-1", VIP), "the first VIP stays");
    assert!(roundtrip(
        topo.node("agent-2"),
        SocketAddrV4::new(VIP, 6443),
        b"api",
        T
    )
    .is_ok());
    daemon.stop();
    assert!(!topo.has_address("lb-1", VIP), "removed on exit");
}

/// Sends `msg` on an open echo connection and checks it comes back.
fn echo(stream: &mut std::net::TcpStream, msg: &str) {
    stream.write_all(msg.as_bytes()).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream
        .read_exact(&mut back)
        .expect("the connection still echoes");
    assert_eq!(back, msg.as_bytes());
}

/// The control socket: status as a table and as JSON (the real CLI), backend admin, root only.
#[test]
fn the_control_socket_serves_root_only() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let _servers = echo_servers(&topo);
    let all = [("server-1", 100), ("server-2", 100), ("server-3", 100)];
    let daemon = Daemon::start(
        &topo,
        "lb-1",
        &service("check = \"tcp\"\ninter = \"500ms\"", &all),
    )
    .unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    let bin = daemon::binary().unwrap();
    let socket = daemon.socket.display().to_string();

    let out = Command::new(&bin)
        .args(["status", "--json", "--socket", &socket])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Status = serde_json::from_slice(&out.stdout).expect("status --json parses");
    assert_eq!(status.services[0].backends.len(), 3);
    assert_eq!(status.interface, "eth1");
    // The socket named by the config file, as an operator would find it.
    let config = daemon.config.display().to_string();
    let table = Command::new(&bin)
        .args(["status", "--config", &config])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("service k3s-api 192.0.2.100:6443/tcp nat"),
        "{table}"
    );

    // drain, disable, enable through the CLI.
    for (action, admin) in [
        ("drain", "drain"),
        ("disable", "disable"),
        ("enable", "enable"),
    ] {
        let out = Command::new(&bin)
            .args(["backend", action, "k3s-api/server-2", "--socket", &socket])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(backend(&daemon.status().unwrap(), "server-2").admin, admin);
    }
    let out = Command::new(&bin)
        .args(["backend", "drain", "k3s-api/nope", "--socket", &socket])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backends: server-1, server-2, server-3"));

    // Root only: the socket is 0600, and a non-root peer is refused even if it could connect.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .output()
            .unwrap()
    };
    // The socket's directory must be reachable by others for this part of the test.
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let denied = as_nobody(&["status", "--socket", &socket]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = as_nobody(&["status", "--socket", &socket]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the control socket is for root"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// /metrics, read from inside lb-1 (metrics_listen is localhost) and parsed with a Prometheus
/// text-format parser.
#[test]
fn metrics_parse_as_prometheus_text() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let _servers = echo_servers(&topo);
    let all = [("server-1", 100), ("server-2", 100), ("server-3", 100)];
    let daemon = Daemon::start(
        &topo,
        "lb-1",
        &format!(
            "metrics_listen = \"127.0.0.1:9742\"\n{}",
            service("check = \"tcp\"\ninter = \"500ms\"", &all)
        ),
    )
    .unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    for i in 0..30 {
        roundtrip(
            topo.node("agent-1"),
            SocketAddrV4::new(VIP, 6443),
            format!("{i}").as_bytes(),
            T,
        )
        .unwrap();
    }
    let body = k3s_xdp_tests::daemon::get_metrics(&topo, "lb-1", "127.0.0.1:9742").unwrap();
    let (head, text) = body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"));
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value("k3sxdp_service_flows_total", Some(("service", "k3s-api"))),
        30.0
    );
    assert_eq!(value("k3sxdp_backend_up", None), 3.0);
    assert!(value("k3sxdp_xdp_packets_total", Some(("reason", "tx_forward"))) >= 30.0 * 4.0);
    assert!(value("k3sxdp_backend_checks_total", None) >= 3.0);
    for family in [
        "k3sxdp_backend_check_duration_seconds",
        "k3sxdp_backend_transitions_total",
        "k3sxdp_config_reloads_total",
        "k3sxdp_info",
    ] {
        assert!(scrape.docs.contains_key(family), "{family} has HELP");
    }
}

/// An IPv6 service: the daemon makes eth1 an IPv6 forwarding interface while it runs
/// (`bpf_fib_lookup` answers AF_INET6 only for those), keeping router advertisements
/// (accept_ra 1 -> 2), and restores both on SIGTERM, and through its guard after kill -9.
#[test]
fn ipv6_interface_settings_are_set_while_running_and_restored() {
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    for node in ["lb-1", "server-1"] {
        topo.add_ipv6(node).unwrap();
    }
    let server6 = addr6(seed_addr("server-1").unwrap());
    let config = format!(
        "{}\n[[service]]\nname = \"api6\"\nvip = \"{VIP6}\"\nport = 6443\n\
         backends = [{{ name = \"server-1\", address = \"[{server6}]:6443\" }}]\n\
         [service.health]\ncheck = \"tcp\"\n",
        service("check = \"tcp\"", &[("server-1", 100)])
    );
    let sysctl = |key: &str| {
        let out = topo
            .node("lb-1")
            .run("sysctl", ["-n", &format!("net.ipv6.conf.eth1.{key}")])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = (sysctl("forwarding"), sysctl("accept_ra"));
    assert_eq!(before, ("0".into(), "1".into()), "a namespace's defaults");
    for crash in [false, true] {
        let mut daemon = Daemon::start(&topo, "lb-1", &config).unwrap();
        daemon
            .wait_log(
                "net/ipv6/conf/eth1/forwarding to 1",
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(
            (sysctl("forwarding"), sysctl("accept_ra")),
            ("1".into(), "2".into())
        );
        assert!(
            topo.has_address("lb-1", VIP6),
            "the IPv6 VIP is held (/128, nodad)"
        );
        if crash {
            daemon.crash();
        } else {
            daemon.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while (sysctl("forwarding"), sysctl("accept_ra")) != before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            (sysctl("forwarding"), sysctl("accept_ra")),
            before,
            "restored (crash: {crash})"
        );
        assert!(
            !topo.has_address("lb-1", VIP6),
            "the IPv6 VIP removed (crash: {crash})"
        );
    }
}

/// Hostile clients of the metrics port and the control socket (issue 21, access): slow
/// clients that never finish their request (slowloris) hold at most 32 connections, each for
/// at most 5 s, the rest closed at once and counted; other methods than GET, an oversized
/// head, an oversized control request are refused; the load balancer forwards throughout and
/// both endpoints answer again afterwards.
#[test]
fn metrics_and_control_hold_against_slow_and_hostile_clients() {
    use std::io::{Read, Write};
    if !have_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::seed().unwrap();
    let _servers = echo_servers(&topo);
    let all = [("server-1", 100), ("server-2", 100), ("server-3", 100)];
    let daemon = Daemon::start(
        &topo,
        "lb-1",
        &format!(
            "metrics_listen = \"127.0.0.1:9742\"\n{}",
            service("check = \"tcp\"\ninter = \"500ms\"", &all)
        ),
    )
    .unwrap();
    daemon.wait_healthy(Duration::from_secs(10)).unwrap();
    let lb1 = topo.node("lb-1");
    let open = |n: usize| -> Vec<std::net::TcpStream> {
        lb1.enter(|| {
            (0..n)
                .map(|_| {
                    let mut s = std::net::TcpStream::connect("127.0.0.1:9742").unwrap();
                    // The start of a request, never finished.
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                        .unwrap();
                    s
                })
                .collect()
        })
        .unwrap()
    };
    // Whether the server closed `s` (EOF or reset) within `limit`.
    let closed_within = |s: &mut std::net::TcpStream, limit: Duration| -> bool {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => s.read(&mut buf).map(|n| n == 0).unwrap_or(true),
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let started = std::time::Instant::now();
    let mut slow = open(40);
    // The 8 beyond the 32 are closed at once.
    let at_once = slow
        .iter_mut()
        .rev()
        .take(8)
        .map(|s| closed_within(s, Duration::from_millis(500)))
        .filter(|closed| *closed)
        .count();
    assert_eq!(at_once, 8, "the connections beyond 32 are closed at once");
    // Traffic goes on meanwhile.
    roundtrip(
        topo.node("agent-1"),
        SocketAddrV4::new(VIP, 6443),
        b"through",
        T,
    )
    .unwrap();
    // The 32 slow ones are closed by the server within its request time (5 s).
    for s in slow.iter_mut().take(32) {
        assert!(
            closed_within(s, Duration::from_secs(7)),
            "a slow client is closed within the request time"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(9));
    let body = k3s_xdp_tests::daemon::get_metrics(&topo, "lb-1", "127.0.0.1:9742").unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.lines().any(
            |l| l.starts_with("k3sxdp_metrics_connections_refused_total ")
                && l.trim_end()
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    >= Some(8.0)
        ),
        "counted"
    );

    // Other methods than GET, an oversized head.
    let ask = |request: Vec<u8>| -> String {
        lb1.enter(move || {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9742").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&request);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).to_string()
        })
        .unwrap()
    };
    let post = ask(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec());
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge.extend(b"\r\n\r\n");
    let answer = ask(huge);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The control socket: a request larger than 64 KiB without a newline is not read whole,
    // nor answered with anything but an error; status works after.
    let socket = daemon.socket.clone();
    let answer = std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&vec![b'{'; 200 * 1024]);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    })
    .join()
    .unwrap();
    assert!(
        answer.is_empty() || answer.contains("error") || answer.contains("bad request"),
        "{answer}"
    );
    daemon.status().unwrap();
    roundtrip(
        topo.node("agent-2"),
        SocketAddrV4::new(VIP, 6443),
        b"after",
        T,
    )
    .unwrap();
}
