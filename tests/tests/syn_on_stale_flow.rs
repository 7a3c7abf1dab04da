//! A new connection (SYN) whose 4-tuple matches the flow entry of an earlier, closed
//! connection pinned to a backend that is now down chooses a healthy backend (it was refused
//! with a RST: `Decision::Refuse` came before the SYN's choose-again). Found by the soak (a
//! dsr connection refused 1.3 s after its backend fault's window).

use k3s_xdp::controller::{
    model::Admin,
    status::{Request, Response},
};
use k3s_xdp_tests::{
    backend::{echo_roundtrip, Backend, Kind},
    bpf::have_root,
    daemon::Daemon,
    topology::{seed_backends_toml, Topology, SERVERS, VIP},
};
use std::{
    net::{SocketAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

fn config(mode: &str) -> String {
    format!(
        "interface = \"eth1\"\n\n[[service]]\nname = \"k3s-api\"\nvip = \"{VIP}\"\nport = 6443\nmode = \"{mode}\"\nbackends = [\n{}\n]\n[service.health]\ncheck = \"tcp\"\ninter = \"300ms\"\nrise = 1\nfall = 2\ntimeout = \"300ms\"\n",
        seed_backends_toml(6443)
    )
}

/// From `port`, a connection through the VIP: the server that answered; closed with a RST
/// (SO_LINGER 0), so the client keeps no TIME_WAIT and can use the port again at once.
fn connect_from(topo: &Topology, port: u16) -> std::io::Result<String> {
    topo.node("agent-1")
        .enter(|| -> std::io::Result<String> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
            s.connect_timeout(
                &SocketAddr::from(SocketAddrV4::new(VIP, 6443)).into(),
                Duration::from_secs(3),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut stream: TcpStream = s.into();
            let (server, _) =
                echo_roundtrip(&mut stream, b"hello").map_err(std::io::Error::other)?;
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            Ok(server)
        })
        .expect("entering agent-1")
}

fn run(mode: &str) {
    let topo = Topology::seed().unwrap();
    let mut servers = Vec::new();
    for s in SERVERS {
        if mode == "dsr" {
            topo.prepare_dsr_backend(s, VIP).unwrap();
        }
        servers.push(Backend::start(topo.node(s), s, 6443, Kind::Tcp, &[topo.addr(s)]).unwrap());
    }
    let lb = Daemon::start(&topo, "lb-1", &config(mode)).unwrap();
    lb.wait_healthy(Duration::from_secs(10)).unwrap();
    let port = 40123;
    let first = connect_from(&topo, port).unwrap();
    // The control: the same port again, nothing disabled, is served (by the same backend).
    assert_eq!(
        connect_from(&topo, port).unwrap(),
        first,
        "{mode}: port reused"
    );
    let answer = lb
        .request(&Request::Backend {
            action: Admin::Disable,
            target: format!("k3s-api/{first}"),
        })
        .unwrap();
    assert!(matches!(answer, Response::Ok { .. }), "{answer:?}");
    std::thread::sleep(Duration::from_millis(300));
    let again = connect_from(&topo, port);
    assert!(
        again.as_ref().is_ok_and(|s| *s != first),
        "{mode}: a new connection from port {port} after {first} was disabled: {again:?}"
    );
}

#[test]
fn a_syn_on_a_stale_flow_of_a_down_backend_chooses_again_nat() {
    if have_root() {
        run("nat");
    }
}

#[test]
fn a_syn_on_a_stale_flow_of_a_down_backend_chooses_again_dsr() {
    if have_root() {
        run("dsr");
    }
}
