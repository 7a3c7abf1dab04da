//! Integration tests of the test library itself: the seed topology in network namespaces, the
//! echo backends (TCP and TLS) and the cleanup guarantees (nothing left behind after a drop,
//! also after a panic). They need root and skip with a message otherwise; `cargo xtask test`
//! runs them as root. Each test builds its own topology, so they run in parallel.

use k3s_xdp_tests::{
    backend::{self, echo_roundtrip, is_connection_refused, Backends, Kind},
    netns::{self, NetNs},
    topology::{self, Topology, AGENT1, API_PORT, LB1, SERVERS},
};
use std::{
    net::SocketAddrV4,
    os::unix::fs::MetadataExt,
    panic::{catch_unwind, AssertUnwindSafe},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

macro_rules! require_root {
    () => {
        if !netns::is_root() {
            eprintln!("skipped: needs root (network namespaces); run `cargo xtask test`");
            return;
        }
    };
}

/// A namespace name outside the topology's scheme, unique in this process.
fn unique_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "kxt{}x{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The inode of a network namespace, to tell namespaces apart.
fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn ping(from: &NetNs, to: std::net::Ipv4Addr) -> bool {
    from.run("ping", ["-c", "2", "-W", "1", "-i", "0.2", &to.to_string()])
        .is_ok()
}

fn assert_gone(prefix: &str, pids: &[u32]) {
    let left = topology::namespaces_with_prefix(prefix).unwrap();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for pid in pids {
        assert!(!pid_alive(*pid), "process {pid} is still alive");
    }
}

#[test]
fn seed_topology_has_every_node_and_agents_reach_servers_over_tcp() {
    require_root!();
    let prefix;
    {
        let topo = Topology::seed().unwrap();
        prefix = topo.prefix().to_string();
        // 8 nodes and the switch.
        assert_eq!(topo.namespaces().unwrap().len(), 9);
        assert_eq!(topo.addr("server-2"), topology::SERVER2);
        assert_eq!(topo.port("lb-1"), "lb-1");

        // Each node has eth1 with its address and MAC, and lo up.
        let out = topo
            .node("server-1")
            .ip(["-br", "addr", "show", "eth1"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("192.0.2.50/24"), "{text}");
        let out = topo
            .node("server-1")
            .ip(["-br", "link", "show", "eth1"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("02:00:c0:00:02:32"), "{text}");
        let out = topo
            .node("agent-3")
            .ip(["-br", "link", "show", "lo"])
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("UP"));

        // The pass program sits on the switch side of the lbs and servers, not the agents.
        let mut pass = topo.pass_program_nodes();
        pass.sort();
        assert_eq!(pass, ["lb-1", "lb-2", "server-1", "server-2", "server-3"]);
        for (node, expect) in [("lb-1", true), ("server-3", true), ("agent-1", false)] {
            let out = topo
                .switch()
                .ip(["-d", "link", "show", topo.port(node)])
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text.contains("xdp"), expect, "{node}: {text}");
        }

        assert!(ping(topo.node("agent-1"), topology::SERVER1));

        let backends = Backends::seed(&topo, Kind::Tcp).unwrap();
        for server in SERVERS {
            let to = SocketAddrV4::new(topo.addr(server), API_PORT);
            let mut stream = backend::connect(topo.node("agent-1"), to, TIMEOUT).unwrap();
            let payload = format!("hello {server} from agent-1").into_bytes();
            let (name, echoed) = echo_roundtrip(&mut stream, &payload).unwrap();
            assert_eq!(name, server);
            assert!(echoed);
            // The server saw agent-1's address: the socket was created in agent-1.
            assert_eq!(
                stream.local_addr().unwrap().ip(),
                std::net::IpAddr::V4(AGENT1)
            );
            drop(stream);
            let stats = backends.stats(server).unwrap();
            assert_eq!(stats.accepted, 1, "{server}: {stats:?}");
            assert_eq!(stats.bytes_in, payload.len() as u64);
            assert_eq!(stats.bytes_out, (payload.len() + server.len() + 1) as u64);
        }
    }
    assert_gone(&prefix, &[]);
}

#[test]
fn tls_backends_greet_and_echo_inside_tls() {
    require_root!();
    let topo = Topology::builder()
        .only(&["server-1", "server-2", "server-3", "agent-1"])
        .build()
        .unwrap();
    let backends = Backends::seed(&topo, Kind::Tls).unwrap();
    for server in SERVERS {
        let to = SocketAddrV4::new(topo.addr(server), API_PORT);
        let mut tls = backend::tls_connect(topo.node("agent-1"), to, server, TIMEOUT).unwrap();
        let (name, echoed) = echo_roundtrip(&mut tls, b"over tls").unwrap();
        assert_eq!(name, server);
        assert!(echoed);
        assert!(backends.stats(server).unwrap().bytes_in >= 8);

        // A plain TCP client gets no greeting in clear: the backend waits for a ClientHello.
        let mut plain = backend::connect(topo.node("agent-1"), to, TIMEOUT).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(echo_roundtrip(&mut plain, b"x").is_err());
    }
    assert!(backend::test_ca_pem()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[test]
fn a_stopped_backend_refuses_and_a_restarted_one_serves_again() {
    require_root!();
    let topo = Topology::builder()
        .only(&["server-1", "server-2", "server-3", "agent-1"])
        .pass_programs(&[])
        .build()
        .unwrap();
    let mut backends = Backends::seed(&topo, Kind::Tcp).unwrap();
    let agent = topo.node("agent-1");
    let server2 = SocketAddrV4::new(topo.addr("server-2"), API_PORT);

    // An open connection is closed when its backend stops, like a dead server's.
    let mut open = backend::connect(agent, server2, TIMEOUT).unwrap();
    assert_eq!(echo_roundtrip(&mut open, b"a").unwrap().0, "server-2");
    backends.stop("server-2").unwrap();
    assert!(!backends.get("server-2").unwrap().is_running());
    assert!(echo_roundtrip(&mut open, b"b").is_err());
    assert_eq!(backends.stats("server-2").unwrap().active, 0);

    let err = backend::connect(agent, server2, TIMEOUT).unwrap_err();
    assert!(is_connection_refused(&err), "{err:#}");
    // The others still serve.
    for server in ["server-1", "server-3"] {
        let to = SocketAddrV4::new(topo.addr(server), API_PORT);
        let mut s = backend::connect(agent, to, TIMEOUT).unwrap();
        assert_eq!(
            echo_roundtrip(&mut s, b"c").unwrap(),
            (server.to_string(), true)
        );
    }

    backends.restart("server-2").unwrap();
    let mut again = backend::connect(agent, server2, TIMEOUT).unwrap();
    assert_eq!(
        echo_roundtrip(&mut again, b"d").unwrap(),
        ("server-2".to_string(), true)
    );
    assert_eq!(backends.stats("server-2").unwrap().accepted, 2);
    drop(again);
    drop(backends);
    let err = backend::connect(agent, server2, TIMEOUT).unwrap_err();
    assert!(is_connection_refused(&err), "{err:#}");
}

#[test]
fn set_link_pulls_and_plugs_the_cable() {
    require_root!();
    let topo = Topology::builder()
        .only(&["lb-1", "agent-1"])
        .build()
        .unwrap();
    let agent = topo.node("agent-1");
    assert!(ping(agent, LB1));

    topo.set_link("lb-1", false).unwrap();
    let out = topo.node("lb-1").ip(["link", "show", "eth1"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NO-CARRIER"), "{text}");
    assert!(agent
        .run("ping", ["-c", "1", "-W", "1", &LB1.to_string()])
        .is_err());

    topo.set_link("lb-1", true).unwrap();
    // The carrier comes back asynchronously: a few bounded attempts.
    let back = (0..5).any(|_| ping(agent, LB1));
    assert!(back, "lb-1 unreachable after its link came back up");
    assert!(topo.set_link("no-such-node", true).is_err());
}

#[test]
fn a_subset_without_lb2_has_no_lb2() {
    require_root!();
    let topo = Topology::builder().without("lb-2").build().unwrap();
    assert!(topo.try_node("lb-2").is_none());
    assert_eq!(topo.namespaces().unwrap().len(), 8);
    assert!(!topo.pass_program_nodes().contains(&"lb-2"));
    let mut topo = topo;
    topo.detach_pass_program("lb-1").unwrap();
    assert!(!topo.pass_program_nodes().contains(&"lb-1"));
    topo.attach_pass_program("agent-1").unwrap();
    assert!(topo.pass_program_nodes().contains(&"agent-1"));
}

#[test]
fn dropping_the_topology_stops_its_processes_and_removes_everything() {
    require_root!();
    let mut topo = Topology::builder()
        .only(&["server-1", "agent-2"])
        .build()
        .unwrap();
    let prefix = topo.prefix().to_string();
    let owned_pid = topo.spawn("agent-2", "sleep", ["60"]).unwrap().pid();
    let guard = topo.node("server-1").spawn("sleep", ["60"]).unwrap();
    let guard_pid = guard.pid();
    for (pid, node) in [(owned_pid, "agent-2"), (guard_pid, "server-1")] {
        // `ip netns exec` execs in place: the PID is the command's, in the node's namespace.
        // Until `ip` has exec'd, /proc shows `ip`: wait, bounded.
        let exec_done = (0..200).any(|_| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            comm.trim() == "sleep" || {
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        });
        assert!(exec_done, "process {pid} did not become `sleep`");
        let ns = topo.node(node);
        assert_eq!(
            netns_inode(&format!("/proc/{pid}/ns/net")),
            netns_inode(ns.path().to_str().unwrap())
        );
    }
    // Backends and an entered thread leave nothing either.
    let backends = Backends::seed(&topo, Kind::Tcp).unwrap();
    drop(backends);
    drop(guard);
    assert!(!pid_alive(guard_pid));
    drop(topo);
    assert_gone(&prefix, &[owned_pid, guard_pid]);
}

#[test]
fn a_panic_with_a_topology_alive_leaves_nothing_behind() {
    require_root!();
    let mut seen: Option<(String, u32, u32)> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut topo = Topology::builder()
            .only(&["lb-1", "server-1", "agent-1"])
            .build()
            .unwrap();
        let owned = topo.spawn("lb-1", "sleep", ["60"]).unwrap().pid();
        let process = topo.node("agent-1").spawn("sleep", ["60"]).unwrap();
        let _backends = Backends::seed(&topo, Kind::Tls).unwrap();
        seen = Some((topo.prefix().to_string(), owned, process.pid()));
        panic!("a test failing with a topology alive");
    }));
    assert!(result.is_err());
    let (prefix, owned, process) = seen.unwrap();
    assert_gone(&prefix, &[owned, process]);
}

#[test]
fn netns_runs_commands_and_code_inside() {
    require_root!();
    let name = unique_name("enter");
    let ns = NetNs::create(&name).unwrap();
    assert!(netns::list().unwrap().contains(&name));

    // Code in `enter` runs in the namespace; the caller's thread stays where it was.
    let own = netns_inode("/proc/thread-self/ns/net");
    let inside = ns
        .enter(|| netns_inode("/proc/thread-self/ns/net"))
        .unwrap();
    assert_eq!(inside, netns_inode(ns.path().to_str().unwrap()));
    assert_ne!(inside, own);
    assert_eq!(netns_inode("/proc/thread-self/ns/net"), own);

    // A socket bound inside keeps its namespace: only code inside can reach it.
    let listener = ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let inside = ns
        .enter(|| std::net::TcpStream::connect_timeout(&addr, TIMEOUT))
        .unwrap();
    assert!(inside.is_ok());

    // A panic inside `enter` comes back to the caller.
    let caught = catch_unwind(AssertUnwindSafe(|| ns.enter(|| panic!("inside"))));
    assert!(caught.is_err());

    // `run` reports the command and its stderr.
    let out = ns.run("ip", ["-br", "link", "show", "lo"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("lo"));
    let err = ns.run("ip", ["link", "show", "nonexistent0"]).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("nonexistent0") && text.contains(&name),
        "{text}"
    );
    let err = ns
        .run_timeout("sleep", ["5"], Duration::from_millis(200))
        .unwrap_err();
    assert!(format!("{err:#}").contains("did not finish"), "{err:#}");

    // Signals and exit statuses of spawned processes.
    let mut p = ns
        .spawn("sh", ["-c", "echo started; exec sleep 60"])
        .unwrap();
    assert!(p
        .wait_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
    p.signal(libc::SIGTERM).unwrap();
    let status = p.wait_timeout(Duration::from_secs(2)).unwrap().unwrap();
    assert!(!status.success());
    assert!(p.output().contains("started"), "{:?}", p.output());
    assert!(
        p.signal(libc::SIGTERM).is_err(),
        "an exited process is never signalled"
    );

    drop(ns);
    assert!(!netns::list().unwrap().contains(&name));
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    require_root!();
    // A PID that is certainly dead: a child we ran and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    if pid_alive(pid) {
        eprintln!("skipped: PID {pid} was reused at once");
        return;
    }
    let stale = format!("kx{pid}x0-sw");
    netns::run_command("ip", ["netns", "add", &stale], Duration::from_secs(10)).unwrap();
    // Another namespace of ours (a live PID) and one of another scheme stay.
    let ours = Topology::builder().only(&["agent-1"]).build().unwrap();
    let other = NetNs::create(&unique_name("other")).unwrap();
    let _ = Topology::cleanup_stale().unwrap();
    let names = netns::list().unwrap();
    assert!(!names.contains(&stale), "{stale} is still there");

    // A stale name with a process inside is left alone (a lab kept on purpose).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    // Until its process is in, the namespace is stale, and another test building a topology
    // meanwhile may clean it up: then set it up again (a bounded number of times).
    let mut setup = None;
    for _ in 0..5 {
        let kept = NetNs::create(&format!("kx{pid}x1-sw")).unwrap();
        let sleeper = kept.spawn("sleep", ["60"]).unwrap();
        // Wait (bounded) until `ip netns exec` has moved it in.
        let inside = (0..200).find_map(|_| {
            match netns::run_command("ip", ["netns", "pids", kept.name()], TIMEOUT) {
                Err(_) => Some(false),
                Ok(out) if !out.stdout.is_empty() => Some(true),
                Ok(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    None
                }
            }
        });
        if inside == Some(true) {
            setup = Some((kept, sleeper));
            break;
        }
    }
    let (kept, sleeper) = setup.expect("a namespace with a process inside");
    if !pid_alive(pid) {
        let _ = Topology::cleanup_stale().unwrap();
        assert!(netns::list().unwrap().contains(&kept.name().to_string()));
    }
    drop(sleeper);
    drop(kept);
    assert_eq!(ours.namespaces().unwrap().len(), 2);
    assert!(names.contains(&other.name().to_string()));
}
