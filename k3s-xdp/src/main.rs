use aya::{programs::{Xdp, XdpMode}, Ebpf};
fn main() -> anyhow::Result<()> {
    let mut bpf = Ebpf::load(k3s_xdp::dataplane::BPF_OBJECT)?;
    for (name, m) in bpf.maps() { println!("map {name} {:?}", m); }
    let iface = std::env::args().nth(1).unwrap_or("lo".into());
    let p: &mut Xdp = bpf.program_mut("k3s_xdp").unwrap().try_into()?;
    p.load()?;
    let id = p.attach(&iface, XdpMode::Driver)?;
    println!("attached {id:?}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    Ok(())
}
