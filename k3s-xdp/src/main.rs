//! The `k3s-xdp` command line. Each subcommand is a thin shell over a library module.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use k3s_xdp::controller::{
    control,
    model::Admin,
    status::{self, Request, Response},
};
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

#[derive(Parser)]
#[command(
    name = "k3s-xdp",
    version,
    about = "XDP load balancer with VRRP failover for the API servers of an HA k3s cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the XDP program, run health checks and VRRP until SIGINT/SIGTERM.
    /// SIGHUP reloads the configuration.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The interface to attach to; overrides `interface` in the config.
        #[arg(long)]
        iface: Option<String>,
    },
    /// Validate a configuration file; print every error with its line.
    Check {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Services, backends (health, weight, flows, packets, bytes), VRRP state, data-plane mode.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Set a backend's state, like HAProxy's `set server BACKEND/SERVER state`.
    Backend {
        /// The backend's new runtime state.
        action: AdminArg,
        /// SERVICE/BACKEND, e.g. k3s-api/server-2.
        target: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Reload the configuration of the running daemon (as SIGHUP does), and say what changed.
    Reload {
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Internal: started by `run`; undoes its host changes if it dies (see `guard.rs`).
    #[command(hide = true)]
    Guard {
        #[arg(long)]
        iface: String,
    },
    /// Print the k3s-xdp configuration equivalent to haproxy.cfg (and keepalived.conf);
    /// warnings name every directive without an equivalent.
    Import {
        /// The haproxy.cfg to translate.
        #[arg(long)]
        haproxy: PathBuf,
        /// The keepalived.conf of the same pair (VRRP settings and the VIP).
        #[arg(long)]
        keepalived: Option<PathBuf>,
        /// The VIP of frontends that bind every address (`*`, `::`), instead of keepalived's
        /// first virtual address; once per family (`--vip 192.0.2.100 --vip 2001:db8::100`).
        #[arg(long)]
        vip: Vec<IpAddr>,
    },
}

/// Where the running daemon answers.
#[derive(clap::Args)]
struct SocketArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = k3s_xdp::config::defaults::CONTROL_SOCKET)]
    socket: PathBuf,
    /// Take the control socket from this configuration file (its `control_socket`).
    #[arg(long, short, conflicts_with = "socket")]
    config: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.config {
            Some(file) => Ok(k3s_xdp::config::load(file)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .control_socket),
            None => Ok(self.socket.clone()),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AdminArg {
    /// Back in rotation (when healthy).
    Enable,
    /// No new flows; existing flows continue.
    Drain,
    /// Out of rotation, as if down (its flows are reset or kept per `on_backend_down`).
    Disable,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Guard { .. }) {
        // A command whose output goes to `| head` ends quietly when the reader leaves, as
        // other command-line tools do, instead of panicking on the broken pipe. (The daemon
        // keeps Rust's default: a write to a closed socket is an error it handles.)
        // SAFETY: setting a signal disposition to the default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result =
        match cli.command {
            Command::Check { config } => return check(&config),
            Command::Run { config, iface } => {
                init_logging();
                run_async(k3s_xdp::daemon::run(k3s_xdp::daemon::Options {
                    config,
                    iface,
                }))
            }
            Command::Guard { iface } => {
                init_logging();
                k3s_xdp::guard::serve(&iface)
            }
            Command::Status { json, socket } => run_async(async move {
                match control::request(&socket.path()?, &Request::Status).await? {
                    Response::Status(s) if json => {
                        println!("{}", serde_json::to_string_pretty(&s)?);
                        Ok(())
                    }
                    Response::Status(s) => {
                        print!("{}", status::render_table(&s));
                        Ok(())
                    }
                    other => unexpected(other),
                }
            }),
            Command::Backend {
                action,
                target,
                socket,
            } => run_async(async move {
                let action = match action {
                    AdminArg::Enable => Admin::Enable,
                    AdminArg::Drain => Admin::Drain,
                    AdminArg::Disable => Admin::Disable,
                };
                let request = Request::Backend { action, target };
                answer(control::request(&socket.path()?, &request).await?)
            }),
            Command::Reload { socket } => run_async(async move {
                answer(control::request(&socket.path()?, &Request::Reload).await?)
            }),
            Command::Import {
                haproxy,
                keepalived,
                vip,
            } => import(&haproxy, keepalived.as_deref(), &vip),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn answer(response: Response) -> Result<()> {
    match response {
        Response::Ok { message } => {
            println!("{message}");
            Ok(())
        }
        other => unexpected(other),
    }
}

fn unexpected(response: Response) -> Result<()> {
    match response {
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn check(path: &Path) -> ExitCode {
    match k3s_xdp::config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} service(s), {} backend(s), {})",
                path.display(),
                config.services.len(),
                config
                    .services
                    .iter()
                    .map(|s| s.backends.len())
                    .sum::<usize>(),
                match (&config.vrrp, &config.bgp) {
                    (Some(v), _) => format!(
                        "VRRP virtual_router_id {} priority {}",
                        v.virtual_router_id, v.priority
                    ),
                    (None, Some(_)) => "no VRRP".to_string(),
                    (None, None) => "no VRRP: single load balancer".to_string(),
                }
            );
            if let Some(b) = &config.bgp {
                let vips: Vec<String> = b
                    .announced(&config.services)
                    .iter()
                    .map(|v| v.to_string())
                    .collect();
                println!(
                    "BGP: announces {} through kernel table {} (routes of protocol {}) while this node can serve them; the routing daemon must export that table",
                    vips.join(", "),
                    b.table,
                    k3s_xdp::system::ROUTE_PROTOCOL
                );
            }
            if let Some(capacity) = config.snat_capacity() {
                println!("{capacity}");
            }
            if let Some(f) = &config.flow_sync {
                match k3s_xdp::flowsync::read_key_file(&f.key_file) {
                    Ok((_, warning)) => {
                        if let Some(w) = warning {
                            eprintln!("warning: {w}");
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
                if let Some(e) = k3s_xdp::flowsync::own_peers_error(
                    &k3s_xdp::flowsync::peers_of_this_host(&f.peers),
                ) {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
                let bind = std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, f.port));
                if let Err(e) = bind {
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        eprintln!(
                            "warning: flow_sync.port {} (UDP) is in use on this host (by a \
                             running k3s-xdp, or another program)",
                            f.port
                        );
                    }
                }
                let peers: Vec<String> = f.peers.iter().map(ToString::to_string).collect();
                println!(
                    "flow sync: with {} on UDP port {}",
                    peers.join(", "),
                    f.port
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{}: {} error(s), configuration rejected",
                path.display(),
                errors.0.len()
            );
            ExitCode::FAILURE
        }
    }
}

fn import(haproxy: &Path, keepalived: Option<&Path>, vips: &[IpAddr]) -> Result<()> {
    let h = std::fs::read_to_string(haproxy)
        .with_context(|| format!("reading {}", haproxy.display()))?;
    let k = keepalived
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let h_name = haproxy.display().to_string();
    let k_name = keepalived
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let imported = k3s_xdp::import::import(
        k3s_xdp::import::Input {
            name: &h_name,
            text: &h,
        },
        k.as_deref().map(|text| k3s_xdp::import::Input {
            name: &k_name,
            text,
        }),
        vips,
    )?;
    eprint!("{}", imported.warnings);
    print!("{}", imported.toml);
    Ok(())
}

fn run_async(fut: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(fut)
}

/// Logs to stderr (journald picks it up under systemd); `K3S_XDP_LOG` or `RUST_LOG` filter it.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("K3S_XDP_LOG")
        .ok()
        .map(EnvFilter::new)
        .unwrap_or_else(|| {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
        });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent_and_every_visible_command_says_what_it_does() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(
                sub.get_about().is_some(),
                "`{}` has no help text",
                sub.get_name()
            );
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if id != "help" {
                    assert!(
                        arg.get_help().is_some(),
                        "`{} --{id}` has no help text",
                        sub.get_name()
                    );
                }
            }
        }
    }
}
