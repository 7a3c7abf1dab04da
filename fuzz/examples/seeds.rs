//! Writes the seed inputs of the fuzz targets into `fuzz/corpus/<target>/seed-*`: the example
//! configs and the seeds' haproxy.cfg/keepalived.conf fixtures as they are, VRRP adverts,
//! control requests and flow-sync messages built with k3s-xdp's own encoders (so they follow
//! the wire formats when those change). Run from `fuzz/`: `K3S_XDP_BPF_STUB=1 cargo +nightly run
//! --example seeds`. They stay in the corpus whatever a merge keeps besides them (README,
//! "Fuzzing").

use k3s_xdp::{
    controller::{model::Admin, status::Request},
    flowsync::wire::{encode, Entry, Kind, Message, Op},
    vrrp::packet::{self, Advert, Version},
};
use k3s_xdp_fuzz::key;
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

fn main() -> std::io::Result<()> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz
        .parent()
        .expect("fuzz/ is in the workspace")
        .to_path_buf();
    let corpus = fuzz.join("corpus");
    let mut seeds = Seeds { corpus, count: 0 };

    for file in sorted(&root.join("examples"))? {
        seeds.write("config", &name(&file), &fs::read(&file)?)?;
    }
    seeds.write("config", "flow-sync.toml", FLOW_SYNC.as_bytes())?;
    for file in sorted(&root.join("k3s-xdp/tests/fixtures"))? {
        let target = if file.extension().is_some_and(|e| e == "cfg") {
            "import_haproxy"
        } else {
            "import_keepalived"
        };
        seeds.write(target, &name(&file), &fs::read(&file)?)?;
    }
    vrrp(&mut seeds)?;
    vrrp_receive(&mut seeds)?;
    control(&mut seeds)?;
    flowsync(&mut seeds)?;
    println!("{} seeds written", seeds.count);
    Ok(())
}

const FLOW_SYNC: &str = r#"interface = "eth1"

[[service]]
name = "k3s-api"
vip = "192.0.2.100"
port = 6443
snat_source = ["192.0.2.7", "vip"]
backends = [
  { name = "server-1", address = "192.0.2.50:6443", weight = 50 },
  { name = "server-2", address = "192.0.2.51" },
]

[[service]]
name = "k3s-api-v6"
vip = "2001:db8::100"
port = 6443
mode = "dsr"
backends = [{ name = "server-1", address = "[2001:db8::50]:6443" }]

[vrrp]
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24", "2001:db8::100/64", "192.0.2.7/24"]
unicast_peers = ["192.0.2.11", "2001:db8::11"]

[flow_sync]
peers = ["192.0.2.11"]
key_file = "/etc/k3s-xdp/flow-sync.key"
"#;

struct Seeds {
    corpus: PathBuf,
    count: usize,
}

impl Seeds {
    fn write(&mut self, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{name}")), bytes)?;
        self.count += 1;
        Ok(())
    }
}

fn sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    Ok(files)
}

fn name(file: &Path) -> String {
    file.file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned()
}

/// The `vrrp` target's layout (see fuzz_targets/vrrp.rs): mode, [password], the configured
/// addresses (count, then an index below 0x80 each), the VRID, then the packet.
fn vrrp(seeds: &mut Seeds) -> std::io::Result<()> {
    let v4 = [Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(192, 0, 2, 200)];
    let src4 = Ipv4Addr::new(198, 51, 100, 1);
    for (mode, version, label) in [
        (0u8, Version::V3, "v3"),
        (2, Version::V2 { auth_pass: None }, "v2"),
        (
            4,
            Version::V2 {
                auth_pass: Some(b"k3s-pass".to_vec()),
            },
            "v2-pass",
        ),
    ] {
        let advert = Advert {
            vrid: 51,
            priority: 200,
            interval: Duration::from_secs(1),
            addresses: v4.to_vec(),
        };
        let message = packet::encode(&advert, &version, src4, packet::MULTICAST_GROUP);
        let mut input = vec![mode];
        if let Version::V2 {
            auth_pass: Some(pass),
        } = &version
        {
            input.extend_from_slice(&(pass.len() as u16).to_be_bytes());
            input.extend_from_slice(pass);
        }
        input.extend_from_slice(&[2, 0, 1, 51]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 255, packet::IPPROTO_VRRP, 0, 0];
        ip[2..4].copy_from_slice(&((20 + message.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&src4.octets());
        ip.extend_from_slice(&packet::MULTICAST_GROUP.octets());
        ip.extend_from_slice(&message);
        seeds.write(
            "vrrp",
            &format!("ipv4-{label}"),
            &[&input[..], &ip].concat(),
        )?;
        // The same router's expectations, an advert built from the input (mode & 16).
        input[0] |= 16;
        input.extend_from_slice(&[200, 0, 100, 1]);
        seeds.write("vrrp", &format!("ipv4-{label}-built"), &input)?;
    }
    let v6 = [
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200),
    ];
    let src6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);
    let advert = Advert {
        vrid: 51,
        priority: 100,
        interval: Duration::from_millis(100),
        addresses: v6.to_vec(),
    };
    let message = packet::encode(&advert, &Version::V3, src6, packet::MULTICAST_GROUP_V6);
    // mode 1 (IPv6, v3), addresses 0 and 1, VRID 51, source index 1, destination 0, hop
    // limit 255 (index 0).
    let input = [&[1u8, 2, 0, 1, 51, 1, 0, 0][..], &message].concat();
    seeds.write("vrrp", "ipv6-v3", &input)?;
    seeds.write(
        "vrrp",
        "ipv6-v3-built",
        &[17, 2, 0, 1, 51, 1, 0, 100, 0, 10, 1],
    )?;
    Ok(())
}

/// The `vrrp_receive` target's layout (see fuzz_targets/vrrp_receive.rs): the router (setup
/// bits: IPv6, version, no preempt, `state = "master"`, unicast; priority; indices of
/// advert_int, preempt_delay and the tracking weight; startup flags; VIP count; VRID; the
/// peers when unicast), then events, each an opcode and its bytes.
fn vrrp_receive(seeds: &mut Seeds) -> std::io::Result<()> {
    // Priority 100, advert_int 1 s, no preempt_delay, weight -150, 2 VIPs, VRID 51.
    let router = |setup: u8, priority: u8| vec![setup, priority, 0, 0, 0, 0, 2, 51];
    // An advert from neighbour `who` (0: below our address, 1: above, 2: a stranger, 3: us)
    // with `priority` and 1 s (v3, in centiseconds; v2 in seconds), sent as it should be.
    let v3 = |who: u8, priority: u8| vec![0, who, priority, 0, 100, 0, 0];
    let v2 = |who: u8, priority: u8| vec![0, who, priority, 1, 0, 0];
    // Time passing (milliseconds), timers firing on time.
    let wait = |ms: u16| {
        let [hi, lo] = ms.to_be_bytes();
        vec![7, hi, lo, 0]
    };
    let seed = |parts: &[Vec<u8>]| parts.concat();

    // IPv4 v3: alone, it becomes master; a better master takes over, leaves with priority 0.
    let handover = |advert: &dyn Fn(u8, u8) -> Vec<u8>| {
        seed(&[
            wait(4000),
            advert(1, 200),
            wait(1000),
            advert(1, 200),
            wait(500),
            advert(1, 0),
            wait(1000),
            advert(0, 50),
            wait(3000),
        ])
    };
    seeds.write(
        "vrrp_receive",
        "ipv4-v3-handover",
        &[router(0, 100), handover(&v3)].concat(),
    )?;
    // VRRPv2 with auth_pass, the same story.
    seeds.write(
        "vrrp_receive",
        "ipv4-v2-pass-handover",
        &[router(4, 100), handover(&v2)].concat(),
    )?;
    // IPv6, and a master that steps down for an equal priority from a higher address.
    seeds.write(
        "vrrp_receive",
        "ipv6-tie",
        &[
            router(1, 100),
            wait(4000),
            v3(0, 100),
            v3(1, 100),
            wait(2000),
        ]
        .concat(),
    )?;
    // IPv6 with the control messages reversed, another one first and the buffer cut (how:
    // 128, layout 1 | 16 | 128, other 0 of length 4, cut at 64 bytes: after the hop limit).
    let mut reversed = v3(1, 200);
    reversed[5] = 128;
    reversed.extend_from_slice(&[1 | 16 | 128, 0, 4, 64]);
    seeds.write(
        "vrrp_receive",
        "ipv6-ancillary",
        &[router(1, 100), reversed, wait(4000)].concat(),
    )?;
    // Priority 200 preempting a lower master that keeps advertising; ours and a stranger's
    // adverts in unicast mode with peers 0 and 1.
    let mut preempt = router(32, 200);
    preempt.push(3);
    for _ in 0..5 {
        preempt.extend(v3(0, 100));
        preempt.extend(v3(3, 100));
        preempt.extend(v3(2, 250));
        preempt.extend(wait(1000));
    }
    seeds.write("vrrp_receive", "ipv4-unicast-preempt", &preempt)?;
    // Tracking, the link and flow sync: fail, down, up, recovered, unsynced; shutdown and
    // start again.
    let events = seed(&[
        wait(4000),
        vec![13, 1, 14, 1, 14, 0, 13, 0],
        wait(4000),
        vec![15, 1, 12, 11],
        wait(8000),
        vec![15, 0, 10, 0, 0],
        wait(1000),
    ]);
    seeds.write(
        "vrrp_receive",
        "ipv4-track-link-sync",
        &[router(0, 100), events.clone()].concat(),
    )?;
    // Weight 0 (index 1): failing tracking is a fault.
    let mut weight0 = router(0, 100);
    weight0[4] = 1;
    seeds.write("vrrp_receive", "ipv4-weight-0", &[weight0, events].concat())?;
    // A whole IPv4 packet as raw bytes (how: 2).
    let advert = Advert {
        vrid: 51,
        priority: 150,
        interval: Duration::from_secs(1),
        addresses: vec![Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)],
    };
    let src = Ipv4Addr::new(192, 0, 2, 200);
    let message = packet::encode(&advert, &Version::V3, src, packet::MULTICAST_GROUP);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 255, packet::IPPROTO_VRRP, 0, 0];
    ip[2..4].copy_from_slice(&((20 + message.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&packet::MULTICAST_GROUP.octets());
    ip.extend_from_slice(&message);
    let mut raw = vec![6, 2];
    raw.extend_from_slice(&(ip.len() as u16).to_be_bytes());
    raw.extend_from_slice(&ip);
    seeds.write(
        "vrrp_receive",
        "ipv4-raw",
        &[router(0, 100), raw, wait(5000)].concat(),
    )?;
    Ok(())
}

/// The `control` target's layout: the peer (0: root), then what the client writes.
fn control(seeds: &mut Seeds) -> std::io::Result<()> {
    let requests = [
        Request::Status,
        Request::Reload,
        Request::Backend {
            action: Admin::Drain,
            target: "k3s-api/server-1".into(),
        },
        Request::Backend {
            action: Admin::Enable,
            target: "k3s-api-v6/server-2".into(),
        },
    ];
    let mut all = vec![0u8];
    for r in &requests {
        all.extend_from_slice(serde_json::to_string(r).expect("serializes").as_bytes());
        all.push(b'\n');
    }
    seeds.write("control", "root", &all)?;
    all[0] = 1;
    seeds.write("control", "not-root", &all)?;
    Ok(())
}

fn entry(v6: bool, op: Op) -> Entry {
    let sock = |s: &str| s.parse::<SocketAddr>().expect("an address");
    if v6 {
        Entry {
            op,
            protocol: 6,
            flags: 0,
            client: sock("[2001:db8:1::20]:40000"),
            vip: sock("[2001:db8::100]:6443"),
            backend: sock("[2001:db8::50]:6443"),
            snat: sock("[2001:db8::7]:1024"),
        }
    } else {
        Entry {
            op,
            protocol: 6,
            flags: if op == Op::Closed { 3 } else { 0 },
            client: sock("198.51.100.20:40000"),
            vip: sock("192.0.2.100:6443"),
            backend: sock("192.0.2.50:6443"),
            snat: sock("192.0.2.100:1024"),
        }
    }
}

/// `flowsync_wire`: a first byte (0: from the peer, as sent), then a datagram signed with the
/// targets' key. `flowsync_receiver`: operations (see its source), one per message.
fn flowsync(seeds: &mut Seeds) -> std::io::Result<()> {
    let key = key();
    let messages = [
        (Kind::Hello, vec![]),
        (Kind::BulkRequest, vec![]),
        (
            Kind::Update,
            vec![entry(false, Op::Flow), entry(true, Op::Flow)],
        ),
        (Kind::Bulk, vec![entry(false, Op::Flow)]),
        (Kind::BulkEnd, vec![entry(true, Op::Flow)]),
        (Kind::Update, vec![entry(false, Op::Closed)]),
    ];
    for (i, (kind, entries)) in messages.iter().enumerate() {
        let message = Message {
            kind: *kind,
            epoch: 1_700_000_000,
            seq: i as u64 + 1,
            entries: entries.clone(),
        };
        let datagram = encode(&message, &key);
        seeds.write(
            "flowsync_wire",
            &format!("{i}-{kind:?}"),
            &[&[0u8][..], &datagram].concat(),
        )?;
    }
    // flowsync_receiver: who, epoch op, seq op, kind, entry count, entries (op, protocol,
    // flags, then client, VIP, backend, SNAT as an address index and a port index each),
    // damage, milliseconds (u16). IPS: 0 192.0.2.100, 1 .50, 4 198.51.100.20, 5
    // 2001:db8::100, 6 2001:db8::50, 7 2001:db8::7, 8 2001:db8:1::20; PORTS: 0 6443, 2 40000,
    // 3 1024.
    let flow4 = [0, 6, 0, 4, 2, 0, 0, 1, 0, 0, 3];
    let flow6 = [0, 6, 0, 8, 2, 5, 0, 6, 0, 7, 3];
    let closed4 = [1, 6, 3, 4, 2, 0, 0, 1, 0, 0, 3];
    let mut ops = Vec::new();
    // From peer 0: a hello starting epoch 1, a bulk request, an update with a flow, its
    // closing; from peer 1 a bulk end with an IPv6 flow; a replay of peer 0's last message.
    let mut op = |who: u8, epoch: u8, seq: u8, kind: u8, entries: &[&[u8]], damage: u8| {
        ops.extend_from_slice(&[who, epoch, seq, kind, entries.len() as u8]);
        for e in entries {
            ops.extend_from_slice(e);
        }
        ops.extend_from_slice(&[damage, 0, 200]);
    };
    op(0, 0, 7, 4, &[], 4);
    op(0, 3, 7, 1, &[], 4);
    op(0, 3, 7, 0, &[&flow4], 4);
    op(0, 3, 7, 0, &[&closed4], 4);
    op(1, 0, 7, 3, &[&flow6], 4);
    op(0, 3, 0, 0, &[&closed4], 4);
    seeds.write("flowsync_receiver", "peers", &ops)?;
    Ok(())
}
