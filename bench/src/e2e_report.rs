//! The end-to-end benchmark's figures, its markdown report and its plots: medians and spreads
//! over the repetitions, ratios computed repetition by repetition, the targets, and
//! for a missed target the measurements that say why.

use crate::{
    e2e::{
        Phase, Run, Target, CONN_PHASE, CONN_TASKS, DOWNLOAD_PHASE, DOWNLOAD_TASKS, LATENCY_PHASE,
        PACE, PORT, PROFILED, REPLY, SERVER_THREADS, TARGETS, WARMUP,
    },
    load::quantile,
    plot, profile,
};
use anyhow::{Context, Result};
use k3s_xdp_tests::topology::VIP;
use std::{fmt::Write as _, path::Path, time::Duration};

/// min, median, max.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Spread {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread {
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Spread {
            min: v[0],
            median,
            max: v[v.len() - 1],
        }
    }

    /// "median (min–max)", or just the median with one repetition.
    fn fmt(&self, decimals: usize) -> String {
        if !self.median.is_finite() {
            return "n/a".into();
        }
        if self.min == self.max {
            return format!("{:.d$}", self.median, d = decimals);
        }
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// One figure per target (outer) and repetition (inner).
type Figure = Vec<Vec<f64>>;

/// The profile of one target: each category's share of the busy samples, the samples, and
/// the machine's CPU per unit measured in the same (profiled) phase.
struct Profiled {
    conn: (Vec<f64>, u64),
    per_kconn: f64,
    download: (Vec<f64>, u64),
    per_gb: f64,
}

pub struct Report {
    versions: (String, String),
    /// Receive and transmit queues per veth.
    queues: usize,
    idle: Spread,
    reps: usize,
    /// New connections per second.
    rate: Figure,
    /// New connections per second when the server closes first.
    rate_closes: Figure,
    /// Clients' retransmitted SYNs per 1,000 connections, in each connection workload.
    retrans_conn: Figure,
    retrans_closes: Figure,
    /// Download throughput, Gbit/s.
    gbps: Figure,
    connect_p50: Figure,
    connect_p99: Figure,
    reply_p50: Figure,
    reply_p99: Figure,
    /// CPUs kept busy (the benchmark's share of the machine) in the two main phases.
    busy_conn: Figure,
    busy_download: Figure,
    /// Whole-machine CPU-ms per 1,000 connections and CPU-s per GB.
    machine_per_kconn: Figure,
    machine_per_gb: Figure,
    /// The load balancer's share: the above minus direct's in the same repetition.
    lb_per_kconn: Figure,
    lb_per_gb: Figure,
    /// The load balancer's processes and XDP program.
    own_per_kconn: Figure,
    own_per_gb: Figure,
    xdp_per_kconn: Figure,
    xdp_per_gb: Figure,
    xdp_ns_per_packet: Figure,
    xdp_packets_per_conn: Figure,
    errors: Vec<u64>,
    connections: Vec<u64>,
    /// Other processes' CPU-seconds during the measured phases, and the machine's busy
    /// CPU-seconds then (theirs included).
    other_cpu: f64,
    busy_cpu: f64,
    profiling: bool,
    profiles: Vec<Option<Profiled>>,
}

fn phases(runs: &[Vec<Run>]) -> impl Iterator<Item = &Phase> {
    runs.iter()
        .flatten()
        .flat_map(|r| [&r.conn, &r.closes, &r.download, &r.latency])
}

fn kconn(p: &Phase) -> f64 {
    p.outcome.connections as f64 / 1000.0
}

fn gb(p: &Phase) -> f64 {
    p.outcome.bytes as f64 / 1e9
}

impl Report {
    pub fn new(
        runs: Vec<Vec<Run>>,
        profiles: Vec<Option<Run>>,
        profiling: bool,
        idle: Vec<f64>,
        versions: (String, String),
        queues: usize,
    ) -> Report {
        let per = |f: &dyn Fn(&Run) -> f64| -> Figure {
            runs.iter().map(|rs| rs.iter().map(f).collect()).collect()
        };
        let q = |v: &[u32], p: f64| quantile(&mut v.to_vec(), p) as f64;
        let machine_per_kconn = per(&|r| r.conn.machine_cpu * 1000.0 / kconn(&r.conn));
        let machine_per_gb = per(&|r| r.download.machine_cpu / gb(&r.download));
        let minus_direct = |m: &Figure| -> Figure {
            let direct = &m[Target::Direct.index()];
            m.iter()
                .map(|v| v.iter().zip(direct).map(|(x, d)| x - d).collect())
                .collect()
        };
        let own = |p: &Phase| p.lb_process_cpu + p.xdp_cpu.unwrap_or(0.0);
        let xdp = |p: &Phase| p.xdp_cpu.unwrap_or(f64::NAN);
        let profiles = profiles
            .into_iter()
            .map(|r| {
                let r = r?;
                Some(Profiled {
                    per_kconn: r.conn.machine_cpu * 1000.0 / kconn(&r.conn),
                    per_gb: r.download.machine_cpu / gb(&r.download),
                    conn: r.conn.profile?,
                    download: r.download.profile?,
                })
            })
            .collect();
        Report {
            versions,
            queues,
            idle: Spread::of(&idle),
            reps: runs.first().map(Vec::len).unwrap_or(0),
            rate: per(&|r| r.conn.outcome.connections as f64 / r.conn.seconds),
            rate_closes: per(&|r| r.closes.outcome.connections as f64 / r.closes.seconds),
            retrans_conn: per(&|r| r.conn.syn_retransmits as f64 / kconn(&r.conn)),
            retrans_closes: per(&|r| r.closes.syn_retransmits as f64 / kconn(&r.closes)),
            gbps: per(&|r| r.download.outcome.bytes as f64 * 8.0 / r.download.seconds / 1e9),
            connect_p50: per(&|r| q(&r.latency.outcome.connect_us, 0.5)),
            connect_p99: per(&|r| q(&r.latency.outcome.connect_us, 0.99)),
            reply_p50: per(&|r| q(&r.latency.outcome.reply_us, 0.5)),
            reply_p99: per(&|r| q(&r.latency.outcome.reply_us, 0.99)),
            busy_conn: per(&|r| r.conn.machine_cpu / r.conn.seconds),
            busy_download: per(&|r| r.download.machine_cpu / r.download.seconds),
            lb_per_kconn: minus_direct(&machine_per_kconn),
            lb_per_gb: minus_direct(&machine_per_gb),
            machine_per_kconn,
            machine_per_gb,
            own_per_kconn: per(&|r| own(&r.conn) * 1000.0 / kconn(&r.conn)),
            own_per_gb: per(&|r| own(&r.download) / gb(&r.download)),
            xdp_per_kconn: per(&|r| xdp(&r.conn) * 1000.0 / kconn(&r.conn)),
            xdp_per_gb: per(&|r| xdp(&r.download) / gb(&r.download)),
            xdp_ns_per_packet: per(&|r| {
                xdp(&r.conn) * 1e9 / r.conn.xdp_packets.map_or(f64::NAN, |p| p as f64)
            }),
            xdp_packets_per_conn: per(&|r| {
                r.conn.xdp_packets.map_or(f64::NAN, |p| p as f64)
                    / r.conn.outcome.connections as f64
            }),
            errors: runs
                .iter()
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            r.conn.outcome.errors
                                + r.closes.outcome.errors
                                + r.download.outcome.errors
                        })
                        .sum()
                })
                .collect(),
            connections: runs
                .iter()
                .map(|rs| rs.iter().map(|r| r.conn.outcome.connections).sum())
                .collect(),
            other_cpu: phases(&runs).map(|p| p.other_cpu).sum(),
            busy_cpu: phases(&runs).map(|p| p.machine_cpu + p.other_cpu).sum(),
            profiling,
            profiles,
        }
    }

    fn label(&self, t: Target) -> String {
        match t {
            Target::Haproxy => format!("HAProxy {}", self.versions.0),
            Target::Nginx => format!("nginx {} stream", self.versions.1),
            other => other.label().to_string(),
        }
    }

    /// The spread of `m` for `t`.
    fn s(m: &Figure, t: Target) -> Spread {
        Spread::of(&m[t.index()])
    }

    /// The median of `m` for `t`.
    fn m(m: &Figure, t: Target) -> f64 {
        Self::s(m, t).median
    }

    /// `a[t] / a[base]` repetition by repetition: median (min–max).
    fn ratio(m: &Figure, t: Target, base: Target) -> Spread {
        let v: Vec<f64> = m[t.index()]
            .iter()
            .zip(&m[base.index()])
            .map(|(a, b)| a / b)
            .collect();
        Spread::of(&v)
    }

    /// Writes the PNG plots into `dir`; their file names and titles.
    pub fn plots(&self, dir: &Path) -> Result<Vec<(String, String)>> {
        let labels: Vec<String> = TARGETS.iter().map(|t| self.label(*t)).collect();
        let series = |name: &str, m: &Figure| plot::Series {
            name: name.to_string(),
            values: m.iter().map(|v| Spread::of(v)).collect(),
        };
        let mut out = Vec::new();
        let mut draw = |file: &str, title: &str, unit: &str, s: Vec<plot::Series>| {
            let path = dir.join(file);
            plot::bars(&path, title, unit, &labels, &s)
                .with_context(|| format!("drawing {}", path.display()))?;
            out.push((file.to_string(), title.to_string()));
            Ok::<_, anyhow::Error>(())
        };
        draw(
            "e2e-conn-rate.png",
            &format!("New TCP connections per second (connect, 16 B request, {REPLY} B reply, close); median, min-max"),
            "connections/s",
            vec![series("connections/s", &self.rate)],
        )?;
        draw(
            "e2e-throughput.png",
            &format!(
                "Throughput of long downloads ({} transfers at once); median, min-max",
                DOWNLOAD_TASKS * 3
            ),
            "Gbit/s",
            vec![series("Gbit/s", &self.gbps)],
        )?;
        draw(
            "e2e-latency.png",
            "Latency at light load; median, min-max",
            "µs",
            vec![
                series("connect p50", &self.connect_p50),
                series("connect p99", &self.connect_p99),
                series("reply p50", &self.reply_p50),
                series("reply p99", &self.reply_p99),
            ],
        )?;
        draw(
            "e2e-cpu.png",
            "CPU per 1,000 new connections; median, min-max",
            "CPU-ms per 1,000 connections",
            vec![
                series("whole machine", &self.machine_per_kconn),
                series("load balancer (machine minus direct)", &self.lb_per_kconn),
                series(
                    "load balancer's processes + XDP program",
                    &self.own_per_kconn,
                ),
            ],
        )?;
        Ok(out)
    }

    pub fn markdown(
        &self,
        machine: &str,
        plots: &[(String, String)],
        took: Duration,
        summary: &mut Vec<crate::Ratio>,
    ) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "## End to end: k3s-xdp, HAProxy and nginx on the lab topology\n"
        );
        let _ = writeln!(
            o,
            "Machine: {machine}. Command: `sudo cargo xtask bench e2e` ({} repetitions, targets interleaved, the order rotating each repetition; {:.0} s in all). Every figure: median (min–max) over the repetitions.\n",
            self.reps,
            took.as_secs_f64()
        );
        self.main_table(&mut o);
        self.ratio_table(&mut o);
        self.closes_table(&mut o);
        let missed = self.targets(&mut o, summary);
        if !missed.is_empty() {
            let _ = writeln!(o, "\n### Why a target is missed\n");
            for note in missed {
                let _ = writeln!(o, "{note}\n");
            }
        }
        self.cpu_section(&mut o);
        self.profile_section(&mut o);
        self.setup(&mut o);
        let _ = writeln!(o, "### Plots\n");
        for (file, title) in plots {
            let _ = writeln!(o, "![{title}]({file})\n");
        }
        o
    }

    /// The figures of every target: the table the README shows.
    fn main_table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "| target | new conn/s | throughput Gbit/s | connect p50 µs | connect p99 µs | reply p50 µs | reply p99 µs | LB CPU-ms / 1k conn | LB CPU-s / GB |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for t in TARGETS {
            let lb = |m: &Figure, d: usize| {
                if t == Target::Direct {
                    "0 (baseline)".to_string()
                } else {
                    Self::s(m, t).fmt(d)
                }
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                self.label(t),
                Self::s(&self.rate, t).fmt(0),
                Self::s(&self.gbps, t).fmt(2),
                Self::s(&self.connect_p50, t).fmt(0),
                Self::s(&self.connect_p99, t).fmt(0),
                Self::s(&self.reply_p50, t).fmt(0),
                Self::s(&self.reply_p99, t).fmt(0),
                lb(&self.lb_per_kconn, 1),
                lb(&self.lb_per_gb, 2),
            );
        }
        let _ = writeln!(
            o,
            "\nLB CPU: what the load balancer adds to the whole machine's CPU time, see [CPU](#cpu-on-the-load-balancer-node). Connect: time for `connect()` to return; reply: from starting to connect until the {REPLY}-byte reply is read, one connection at a time per agent."
        );
    }

    fn ratio_table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\nRatios, computed repetition by repetition, then the median (min–max):\n"
        );
        let _ = writeln!(
            o,
            "| target | conn/s vs direct | conn/s vs HAProxy | throughput vs direct | throughput vs HAProxy | LB CPU / 1k conn vs HAProxy | LB CPU / GB vs HAProxy |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
        for t in TARGETS {
            let cpu = |m: &Figure| match t {
                Target::Direct => "-".to_string(),
                _ => Self::ratio(m, t, Target::Haproxy).fmt(2),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                self.label(t),
                Self::ratio(&self.rate, t, Target::Direct).fmt(2),
                Self::ratio(&self.rate, t, Target::Haproxy).fmt(2),
                Self::ratio(&self.gbps, t, Target::Direct).fmt(2),
                Self::ratio(&self.gbps, t, Target::Haproxy).fmt(2),
                cpu(&self.lb_per_kconn),
                cpu(&self.lb_per_gb),
            );
        }
    }

    /// The two connection workloads side by side: the client closes first (the main table's),
    /// and the server closes first, with the clients' retransmitted SYNs.
    fn closes_table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n### Servers that close first\n\nThe same connections (16-byte request, {REPLY}-byte reply), the server closing first as an HTTP server answering `Connection: close` does, so the servers hold each connection in TIME_WAIT; a SNAT port handed to another client while its server still holds it would be refused once (PAWS) and cost that client a retransmitted SYN.\n"
        );
        let _ = writeln!(
            o,
            "| target | client closes: new conn/s | SYN retransmits / 1k conn | server closes: new conn/s | SYN retransmits / 1k conn | server closes: conn/s vs HAProxy |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
        for t in TARGETS {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                self.label(t),
                Self::s(&self.rate, t).fmt(0),
                Self::s(&self.retrans_conn, t).fmt(2),
                Self::s(&self.rate_closes, t).fmt(0),
                Self::s(&self.retrans_closes, t).fmt(2),
                Self::ratio(&self.rate_closes, t, Target::Haproxy).fmt(2),
            );
        }
    }

    /// The targets, met or missed; adds them to `summary`; returns the notes that
    /// explain the missed ones.
    fn targets(&self, o: &mut String, summary: &mut Vec<crate::Ratio>) -> Vec<String> {
        let _ = writeln!(o, "\n### The issue's targets (this run)\n");
        let _ = writeln!(o, "| figure | k3s-xdp nat | k3s-xdp dsr | target |");
        let _ = writeln!(o, "|---|---:|---:|---|");
        type Check<'a> = (&'a str, &'a Figure, Target, &'a str, fn(f64) -> bool);
        let checks: [Check; 3] = [
            (
                "new conn/s vs HAProxy",
                &self.rate,
                Target::Haproxy,
                "≥ 2x",
                |r| r >= 2.0,
            ),
            (
                "throughput vs direct",
                &self.gbps,
                Target::Direct,
                "≥ 0.9x",
                |r| r >= 0.9,
            ),
            (
                "LB CPU per 1k conn vs HAProxy",
                &self.lb_per_kconn,
                Target::Haproxy,
                "≤ 0.25x",
                |r| r <= 0.25,
            ),
        ];
        let mut notes = Vec::new();
        for (i, (what, m, base, target, ok)) in checks.into_iter().enumerate() {
            let mut cells = Vec::new();
            let mut missed = Vec::new();
            for t in [Target::XdpNat, Target::XdpDsr] {
                let r = Self::ratio(m, t, base).median;
                let met = ok(r);
                cells.push(format!("{r:.2}x ({})", if met { "met" } else { "missed" }));
                if !met {
                    missed.push(t);
                }
                summary.push(crate::Ratio {
                    what: format!("e2e: {} {what}", t.label()),
                    value: format!("{:.2}", Self::m(m, t)),
                    baseline: format!("{} {:.2}", self.label(base), Self::m(m, base)),
                    ratio: r,
                    target: format!("{target}: {}", if met { "met" } else { "missed" }),
                });
            }
            let _ = writeln!(o, "| {what} | {} | {} | {target} |", cells[0], cells[1]);
            if !missed.is_empty() {
                notes.push(match i {
                    0 => self.why_rate(&missed),
                    1 => self.why_throughput(&missed),
                    _ => self.why_cpu(&missed),
                });
            }
        }
        // Issue 16: servers that close first.
        let nat = Target::XdpNat;
        let r = Self::ratio(&self.rate_closes, nat, Target::Haproxy).median;
        let retrans = Self::s(&self.retrans_closes, nat).max;
        let rate_met = r >= 1.5;
        let retrans_met = Self::s(&self.retrans_closes, nat).max == 0.0;
        let _ = writeln!(
            o,
            "| server closes first: new conn/s vs HAProxy | {r:.2}x ({}) | {:.2}x | ≥ 1.5x (nat) |",
            if rate_met { "met" } else { "missed" },
            Self::ratio(&self.rate_closes, Target::XdpDsr, Target::Haproxy).median
        );
        let _ = writeln!(
            o,
            "| server closes first: SYN retransmits / 1k conn, every repetition | {} ({}) | {} | 0 (nat) |",
            Self::s(&self.retrans_closes, nat).fmt(2),
            if retrans_met { "met" } else { "missed" },
            Self::s(&self.retrans_closes, Target::XdpDsr).fmt(2)
        );
        summary.push(crate::Ratio {
            what: "e2e: k3s-xdp nat new conn/s vs HAProxy, server closes first".into(),
            value: format!("{:.0}", Self::m(&self.rate_closes, nat)),
            baseline: format!(
                "{} {:.0}",
                self.label(Target::Haproxy),
                Self::m(&self.rate_closes, Target::Haproxy)
            ),
            ratio: r,
            target: format!("≥ 1.5x: {}", if rate_met { "met" } else { "missed" }),
        });
        summary.push(crate::Ratio {
            what: "e2e: k3s-xdp nat SYN retransmits per 1k conn, server closes first".into(),
            value: format!("{retrans:.2}"),
            baseline: format!(
                "{} {:.2}",
                self.label(Target::Haproxy),
                Self::m(&self.retrans_closes, Target::Haproxy)
            ),
            ratio: f64::NAN,
            target: format!("0: {}", if retrans_met { "met" } else { "missed" }),
        });
        // Informational: what each load balancer itself runs.
        let own = |t| Self::ratio(&self.own_per_kconn, t, Target::Haproxy).median;
        let _ = writeln!(
            o,
            "| (for comparison) the LB's own CPU per 1k conn vs HAProxy's own: XDP program + daemon vs HAProxy's process | {:.3}x | {:.3}x | - |",
            own(Target::XdpNat),
            own(Target::XdpDsr)
        );
        notes
    }

    /// How k3s-xdp `t`'s added CPU per 1k connections splits: XDP program, daemon, the rest.
    fn split(&self, t: Target) -> (f64, f64, f64, f64) {
        let lb = Self::m(&self.lb_per_kconn, t);
        let xdp = Self::m(&self.xdp_per_kconn, t);
        let own = Self::m(&self.own_per_kconn, t);
        let daemon = (own - xdp).max(0.0);
        (lb, xdp, daemon, lb - xdp - daemon)
    }

    fn why_rate(&self, missed: &[Target]) -> String {
        let (d, h) = (Target::Direct, Target::Haproxy);
        let total_h = Self::m(&self.machine_per_kconn, h);
        let total_d = Self::m(&self.machine_per_kconn, d);
        let room = total_h / 2.0 - total_d;
        let mut s = format!(
            "**New connections per second.** The connection phase keeps both CPUs busy (direct {:.2}, HAProxy {:.2}, k3s-xdp nat {:.2}, dsr {:.2} of 2 CPUs), so a rate is the CPUs divided by the CPU time a connection costs the whole machine. HAProxy's connections cost {total_h:.0} CPU-ms per 1,000; twice its rate on the same CPUs allows at most {:.0}. The clients and servers alone (direct) cost {total_d:.0}: direct reaches {:.2}x HAProxy's rate, the ceiling for any load balancer on this machine, and {} for the load balancer.",
            Self::m(&self.busy_conn, d),
            Self::m(&self.busy_conn, h),
            Self::m(&self.busy_conn, Target::XdpNat),
            Self::m(&self.busy_conn, Target::XdpDsr),
            total_h / 2.0,
            Self::ratio(&self.rate, d, h).median,
            if room > 0.0 {
                format!("{room:.0} CPU-ms per 1,000 connections remain")
            } else {
                "nothing remains".to_string()
            },
        );
        let parts: Vec<String> = missed
            .iter()
            .map(|t| {
                let (lb, xdp, daemon, rest) = self.split(*t);
                format!(
                    "{} adds {lb:.0} (XDP program {xdp:.1}, i.e. {:.0} ns per packet over {:.1} packets per connection; daemon {daemon:.2}; kernel {rest:.0})",
                    t.label(),
                    Self::m(&self.xdp_ns_per_packet, *t),
                    Self::m(&self.xdp_packets_per_conn, *t),
                )
            })
            .collect();
        let _ = write!(
            s,
            " {}. The kernel's share is the work of carrying every packet of a connection through lb-1 and back onto the bridge: two more veth hops, bridge passes, softirq rounds and skb conversions per packet, which with a physical NIC and switch happen in hardware; the [profile](#where-the-cpu-goes) breaks it down.",
            parts.join("; ")
        );
        s
    }

    fn why_throughput(&self, missed: &[Target]) -> String {
        let d = Target::Direct;
        let mut s = format!(
            "**Throughput.** The direct downloads keep {:.2} of 2 CPUs busy at {:.2} CPU-s per GB.",
            Self::m(&self.busy_download, d),
            Self::m(&self.machine_per_gb, d),
        );
        for t in missed {
            let busy = Self::m(&self.busy_download, *t);
            let _ = write!(
                s,
                " In {} mode every byte crosses lb-1 (server → bridge → lb-1's eth1 and the XDP program → bridge → agent): twice the veth and bridge work per packet, one 1500-byte frame at a time (veth with an XDP program does no TSO/GRO): {:.2} CPU-s per GB, {:.2} more than direct, of which the XDP program {:.3}, with {busy:.2} CPUs busy; {}",
                t.label(),
                Self::m(&self.machine_per_gb, *t),
                Self::m(&self.lb_per_gb, *t),
                Self::m(&self.xdp_per_gb, *t),
                if busy >= 1.8 {
                    format!("the transfer is CPU-bound at {:.2}x direct's rate.", Self::ratio(&self.gbps, *t, d).median)
                } else {
                    format!("{:.2}x direct's rate without using both CPUs: the frames to lb-1 queue on too few veth receive queues (see Setup).", Self::ratio(&self.gbps, *t, d).median)
                },
            );
        }
        if !missed.contains(&Target::XdpDsr) {
            let _ = write!(
                s,
                " In dsr mode the data goes from the servers straight to the clients and only the clients' ACKs cross lb-1: {:.2}x direct.",
                Self::ratio(&self.gbps, Target::XdpDsr, d).median
            );
        }
        s
    }

    fn why_cpu(&self, missed: &[Target]) -> String {
        let h = Target::Haproxy;
        let mut s = format!(
            "**CPU per 1,000 connections.** HAProxy adds {:.0} CPU-ms per 1,000 connections to the machine, {:.0} of it charged to its own process.",
            Self::m(&self.lb_per_kconn, h),
            Self::m(&self.own_per_kconn, h),
        );
        for t in missed {
            let (lb, xdp, daemon, rest) = self.split(*t);
            let _ = write!(
                s,
                " {} adds {lb:.0}: what k3s-xdp itself runs, the XDP program ({xdp:.1}) and the daemon ({daemon:.2}), is {:.3}x what HAProxy's process is charged; the other {rest:.0} is the kernel moving the extra packets through veth and the bridge to and from lb-1, which every load balancer in this lab pays per packet it forwards (the veth, bridge, network-core, memory and scheduler rows of the [profile](#where-the-cpu-goes)).",
                t.label(),
                Self::ratio(&self.own_per_kconn, *t, h).median,
            );
        }
        s
    }

    fn cpu_section(&self, o: &mut String) {
        let _ = writeln!(o, "\n### CPU on the load-balancer node\n");
        let _ = writeln!(
            o,
            "A load balancer's work is not all in a process: XDP runs in the veth driver's softirq, and on veth the kernel carries a packet through the bridge and into the next namespace in the softirq of the CPU that sent it, charged to whatever task runs there. So two views:\n\n\
             - **LB CPU**: the whole machine's busy time (`/proc/stat`: user + nice + system + irq + softirq, all CPUs) during the phase, minus other processes' (every process that is not the benchmark's, with its reaped children, from `/proc/PID/stat`) and minus the kernel's background measured idle each repetition ({} CPUs), per 1,000 connections (connection phase) or per GB (download phase), **minus the same figure for direct** in the same repetition. The clients and servers do the same work in every target, so the difference is what putting the load balancer in the path costs: its processes, its TCP/IP stack, the XDP program, and the extra veth and bridge hops to and from lb-1.\n\
             - **The LB's own**: user + system time of the load balancer's processes (`/proc/PID/stat`: HAProxy; nginx's master and worker; k3s-xdp's daemon and guard) plus, for k3s-xdp, the XDP program's run time from the kernel's BPF statistics (`BPF_ENABLE_STATS`, held for the whole benchmark, so every target's packets pay the same two clock reads). Softirq work done while a proxy runs is charged to it, and work done for its sockets while another task runs is not.\n",
            self.idle.fmt(3)
        );
        let _ = writeln!(
            o,
            "| target | machine CPU-ms / 1k conn | LB CPU-ms / 1k conn | LB's own CPU-ms / 1k conn | of which XDP program | machine CPU-s / GB | LB CPU-s / GB | LB's own CPU-s / GB |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for t in TARGETS {
            let direct = t == Target::Direct;
            let dash = |x: String| if direct { "-".to_string() } else { x };
            let xdp = match t {
                Target::XdpNat | Target::XdpDsr => Self::s(&self.xdp_per_kconn, t).fmt(2),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                self.label(t),
                Self::s(&self.machine_per_kconn, t).fmt(1),
                dash(Self::s(&self.lb_per_kconn, t).fmt(1)),
                dash(Self::s(&self.own_per_kconn, t).fmt(2)),
                xdp,
                Self::s(&self.machine_per_gb, t).fmt(2),
                dash(Self::s(&self.lb_per_gb, t).fmt(2)),
                dash(Self::s(&self.own_per_gb, t).fmt(3)),
            );
        }
        let _ = writeln!(
            o,
            "\nThe XDP program ran {} ns per packet in nat mode and {} in dsr mode in the connection phase ({} and {} packets per connection).",
            Self::s(&self.xdp_ns_per_packet, Target::XdpNat).fmt(0),
            Self::s(&self.xdp_ns_per_packet, Target::XdpDsr).fmt(0),
            Self::s(&self.xdp_packets_per_conn, Target::XdpNat).fmt(1),
            Self::s(&self.xdp_packets_per_conn, Target::XdpDsr).fmt(1),
        );
    }

    fn profile_section(&self, o: &mut String) {
        let _ = writeln!(o, "\n### Where the CPU goes\n");
        if !self.profiling {
            let _ = writeln!(
                o,
                "No profile: `perf` is not installed (Debian's `linux-perf`; `cargo xtask setup --bench` installs it).\n"
            );
            return;
        }
        let profiled: Vec<(Target, &Profiled)> = PROFILED
            .iter()
            .filter_map(|t| self.profiles[t.index()].as_ref().map(|p| (*t, p)))
            .collect();
        if profiled.is_empty() {
            let _ = writeln!(o, "No profile: perf recorded nothing.\n");
            return;
        }
        let _ = writeln!(
            o,
            "After the measured repetitions, {} ran once more each with `perf record -a -F {}` (every CPU, no call graphs) over the connection and the download phase. Each sample's function puts it in a category; a category's share of the busy samples times the machine's CPU per unit measured in that same phase gives the rows. Subtracting direct's column leaves what each load balancer adds.\n",
            profiled
                .iter()
                .map(|(t, _)| self.label(*t))
                .collect::<Vec<_>>()
                .join(", "),
            profile::FREQUENCY
        );
        let direct = profiled
            .iter()
            .find(|(t, _)| *t == Target::Direct)
            .map(|p| p.1);
        fn pick_phase(p: &Profiled, download: bool) -> (&(Vec<f64>, u64), f64) {
            if download {
                (&p.download, p.per_gb)
            } else {
                (&p.conn, p.per_kconn)
            }
        }
        for (title, decimals, download) in [
            ("Connection phase, CPU-ms per 1,000 connections", 1, false),
            ("Download phase, CPU-s per GB", 2, true),
        ] {
            let _ = write!(o, "{title}:\n\n| category |");
            for (t, _) in &profiled {
                let _ = write!(o, " {} |", self.label(*t));
            }
            let others: Vec<&(Target, &Profiled)> = profiled
                .iter()
                .filter(|(t, _)| *t != Target::Direct)
                .collect();
            if direct.is_some() {
                for (t, _) in &others {
                    let _ = write!(o, " {} − direct |", self.label(*t));
                }
            }
            let _ = write!(o, "\n|---|");
            let columns = profiled.len() + if direct.is_some() { others.len() } else { 0 };
            for _ in 0..columns {
                let _ = write!(o, "---:|");
            }
            let _ = writeln!(o);
            let value = |p: &Profiled, c: usize| {
                let ((shares, _), per) = pick_phase(p, download);
                shares[c] * per
            };
            for (c, name) in profile::CATEGORIES
                .iter()
                .enumerate()
                .take(profile::CATEGORIES.len() - 1)
            {
                let _ = write!(o, "| {name} |");
                for (_, p) in &profiled {
                    let _ = write!(o, " {:.d$} |", value(p, c), d = decimals);
                }
                if let Some(dp) = direct {
                    for (_, p) in &others {
                        let _ = write!(o, " {:+.d$} |", value(p, c) - value(dp, c), d = decimals);
                    }
                }
                let _ = writeln!(o);
            }
            let _ = write!(o, "| **total** |");
            for (_, p) in &profiled {
                let _ = write!(o, " **{:.d$}** |", pick_phase(p, download).1, d = decimals);
            }
            if let Some(dp) = direct {
                for (_, p) in &others {
                    let _ = write!(
                        o,
                        " **{:+.d$}** |",
                        pick_phase(p, download).1 - pick_phase(dp, download).1,
                        d = decimals
                    );
                }
            }
            let _ = write!(o, "\n| samples (idle share) |");
            for (_, p) in &profiled {
                let ((shares, n), _) = pick_phase(p, download);
                let idle = shares[profile::CATEGORIES.len() - 1];
                // Shares are of busy samples: idle / (1 + idle) of all samples.
                let _ = write!(o, " {n} ({:.0}%) |", 100.0 * idle / (1.0 + idle));
            }
            for _ in 0..(columns - profiled.len()) {
                let _ = write!(o, " |");
            }
            let _ = writeln!(o, "\n");
        }
    }

    fn setup(&self, o: &mut String) {
        let pool = crate::e2e::SNAT_POOL;
        let _ = writeln!(o, "### Setup\n");
        let _ = writeln!(
            o,
            "- Topology: the seed topology in network namespaces (lb-1, server-1..3, agent-1..3 on one bridge; documentation addresses, VIP {VIP}:{PORT}), built once for the run and the same for every target. The lab attaches its XDP pass program to the switch-side ports of lb-1 and the servers (XDP_TX on veth needs it), so those paths carry one 1500-byte frame at a time (no TSO/GRO). The bridge runs no iptables (`bridge-nf-call-iptables=0`, as a switch). Every veth gets {} receive and transmit queues (`ethtool -L`), and the switch ports spread forwarded frames over them by CPU (XPS), as a NIC's RSS queues spread flows: with the test library's single queue all frames to lb-1 arrive on one queue whose NAPI poll, with the XDP program in it, runs on one CPU at a time, and a k3s-xdp download overflowed its ring (frames dropped, about 1 of 2 CPUs busy, a third of the throughput).\n\
             - Servers: a small tokio server on each of server-1..3 ({SERVER_THREADS} threads sharing the port with SO_REUSEPORT, so that direct's single server can use both CPUs): a 16-byte request asks for N bytes, it sends them and waits for the client to close.\n\
             - Clients: tokio on one thread per agent (agent-1..3), the same load for every target. **Connections**: {CONN_TASKS} connections in flight per agent for {} s, each connect, 16-byte request, {REPLY}-byte reply, close (the client closes first, as kubectl does). **Throughput**: {DOWNLOAD_TASKS} downloads per agent for {} s, bytes received counted. **Latency**: one connection at a time per agent, one started every {} ms for {} s (light load): time for `connect()` to return, and from starting to connect until the reply is read (through a proxy `connect()` returns once the proxy's kernel has accepted, before the proxy reaches a server; the reply time includes that). A {} ms warm-up precedes each target's phases.\n\
             - k3s-xdp: `k3s-xdp run` on lb-1, one service {VIP}:{PORT} over the three servers, `mode = \"nat\"` (with `snat_source = {pool}`: four addresses, each with the whole port range, for the rate of connections that servers close first) or `\"dsr\"`, `check = \"tcp\"` (the default TLS check needs a TLS server); without `[vrrp]` it adds the VIP itself. In dsr mode the servers hold the VIP on `lo` (arp_ignore=1, arp_announce=2) for that run only.\n\
             - HAProxy {}: seed 004's `haproxy.cfg` (`global maxconn 4000`; `mode tcp`, `option tcp-check`, `balance roundrobin`, `default-server inter 10s downinter 5s rise 2 fall 2 slowstart 60s maxconn 250 maxqueue 256 weight 100`), addresses adapted; without `log` (it would write to the host's syslog), `chroot`, `user`, `daemon`, `stats socket` and the 30080 ingress frontend. `haproxy -db` in lb-1's namespace; threads: its default, one per CPU.\n\
             - nginx {}: the seeds' `nginx.conf` (`events {{}}`, `stream {{ upstream k3s_servers {{ the 3 servers }} server {{ listen 6443; proxy_pass k3s_servers; }} }}`), plus `load_module` for Debian's dynamic stream module, run in lb-1's namespace as `nginx -g 'daemon off; pid …;'` with a private prefix and error log. The seeds set no `worker_processes`: one worker.\n\
             - HAProxy and nginx: the bench adds the VIP to lb-1's eth1 for their runs. In the agents' and lb-1's namespaces `net.ipv4.tcp_tw_reuse=1` and `ip_local_port_range=1024 65535`, as on any host making tens of thousands of short connections to one address and port.\n\
             - {} connections in the connection phases in all; client errors (timeouts, resets) over the whole run: {}.\n\
             - Other processes on the machine used {:.1} CPU-s during the measured phases, {:.1}% of the busy time; subtracted (see CPU).\n",
            self.queues,
            CONN_PHASE.as_secs(),
            DOWNLOAD_PHASE.as_secs(),
            PACE.as_millis(),
            LATENCY_PHASE.as_secs(),
            WARMUP.as_millis(),
            self.versions.0,
            self.versions.1,
            self.connections.iter().sum::<u64>(),
            TARGETS
                .iter()
                .map(|t| format!("{} {}", self.label(*t), self.errors[t.index()]))
                .collect::<Vec<_>>()
                .join(", "),
            self.other_cpu,
            100.0 * self.other_cpu / self.busy_cpu.max(1e-9),
        );
    }
}
