//! The seed topology's k3s-xdp config, built instead of copied into every test: `interface =
//! "eth1"`, one `[[service]]` named `k3s-api` at the VIP, port 6443, over server-1..3, checked
//! with `tcp`; a test adds the keys it is about. [`SeedConfig::render`] is the TOML the
//! daemon reads.

use crate::topology::{seed_addr, seed_backends_toml, SERVERS, VIP};
use std::fmt;

#[derive(Clone, Debug)]
pub struct SeedConfig {
    top: Vec<String>,
    service: Vec<String>,
    backends: String,
    health: Vec<String>,
    vrrp: Vec<String>,
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            top: vec!["interface = \"eth1\"".into()],
            service: Vec::new(),
            backends: seed_backends_toml(6443),
            health: vec!["check = \"tcp\"".into()],
            vrrp: Vec::new(),
        }
    }
}

impl SeedConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds top-level lines (`metrics_listen = ...`, `snat_port_range = [...]`).
    pub fn top(mut self, lines: impl Into<String>) -> Self {
        self.top.push(lines.into());
        self
    }

    /// Adds lines to the service (`mode = "dsr"`, `snat_source = ...`).
    pub fn service(mut self, lines: impl Into<String>) -> Self {
        self.service.push(lines.into());
        self
    }

    /// Only these seed servers (indexes into [`SERVERS`]) as backends, on port 6443.
    pub fn servers(mut self, indexes: &[usize]) -> Self {
        self.backends = indexes
            .iter()
            .map(|&i| {
                let name = SERVERS[i];
                let addr = seed_addr(name).expect("a seed server");
                format!("  {{ name = \"{name}\", address = \"{addr}:6443\" }},")
            })
            .collect::<Vec<_>>()
            .join("\n");
        self
    }

    /// Replaces the backend entries (one inline table per line).
    pub fn backends(mut self, entries: impl Into<String>) -> Self {
        self.backends = entries.into();
        self
    }

    /// Adds lines to `[service.health]` (after `check = "tcp"`).
    pub fn health(mut self, lines: impl Into<String>) -> Self {
        self.health.push(lines.into());
        self
    }

    /// Replaces `[service.health]` whole (a check other than `tcp`).
    pub fn health_only(mut self, lines: impl Into<String>) -> Self {
        self.health = vec![lines.into()];
        self
    }

    /// Adds lines to a `[vrrp]` section (the section appears with the first).
    pub fn vrrp(mut self, lines: impl Into<String>) -> Self {
        self.vrrp.push(lines.into());
        self
    }

    /// A `[vrrp]` master of the VIP alone: `virtual_router_id = 51`, priority 200.
    pub fn vrrp_master(self) -> Self {
        self.vrrp(format!(
            "virtual_router_id = 51\npriority = 200\nstate = \"master\"\nvirtual_ipaddress = [\"{VIP}/24\"]"
        ))
    }

    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SeedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.top {
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "\n[[service]]\nname = \"k3s-api\"\nvip = \"{VIP}\"\nport = 6443"
        )?;
        for line in &self.service {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "backends = [\n{}\n]\n[service.health]", self.backends)?;
        for line in &self.health {
            writeln!(f, "{line}")?;
        }
        if !self.vrrp.is_empty() {
            writeln!(f, "\n[vrrp]")?;
            for line in &self.vrrp {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered config is one k3s-xdp reads, with what each test added.
    #[test]
    fn renders_a_config_the_daemon_reads() {
        let text = SeedConfig::new()
            .top("snat_port_range = [20000, 20099]")
            .service("mode = \"dsr\"")
            .servers(&[0, 2])
            .health("inter = \"1s\"")
            .vrrp_master()
            .render();
        let c = k3s_xdp::config::parse(&text, "seed.toml".as_ref())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.interface.as_deref(), Some("eth1"));
        assert_eq!((c.snat_port_min, c.snat_port_max), (20000, 20099));
        let s = &c.services[0];
        assert_eq!(
            (s.name.as_str(), s.vip, s.port),
            ("k3s-api", std::net::IpAddr::from(VIP), 6443)
        );
        assert_eq!(s.mode, k3s_xdp::config::Mode::Dsr);
        let names: Vec<&str> = s.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["server-1", "server-3"]);
        assert_eq!(s.health.check, k3s_xdp::config::CheckKind::Tcp);
        assert_eq!(s.health.inter, std::time::Duration::from_secs(1));
        assert_eq!(c.vrrp.unwrap().priority, 200);
    }
}
