//! The soak's report (pure): a Markdown page from a run and its verdict: the settings and
//! windows, connections by kind and outcome, each fault with its measured detection and
//! recovery, the daemons' CPU and memory, and the verdict with every violation.

use super::verdict::{AttemptKind, Ending, Observation, Run, Verdict, DSR, NAT};
use std::{fmt::Write, time::Duration};

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn opt(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "—".into())
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The report of `run` judged as `verdict`.
pub fn render(run: &Run, verdict: &Verdict) -> String {
    let s = &run.settings;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# k3s-xdp soak\n");
    let _ = writeln!(
        w,
        "Seed {} (repeat with `cargo xtask soak --seed {}`), traffic and faults for {}, {} faults applied.\n",
        run.seed,
        run.seed,
        secs(run.length),
        run.faults.len()
    );
    let _ = writeln!(
        w,
        "Health checks: tls, inter {}, fall {}, rise {}, timeout {}. Windows (each with a {} margin): \
         new connections may fail for {} after a backend failure (fall x inter + timeout) and {} after a \
         master failure (Master_Down_Interval {}); a connection pinned to a failed backend must be reset \
         within {} of detection (inter + the client's {} period).\n",
        secs(s.inter),
        s.fall,
        s.rise,
        secs(s.timeout),
        secs(s.margin),
        secs(s.backend_window()),
        secs(s.master_window()),
        secs(s.master_down_interval),
        secs(s.reset_bound()),
        secs(s.client_period),
    );
    let _ = writeln!(
        w,
        "**Verdict: {}**\n",
        if verdict.passed() {
            "PASS".to_string()
        } else {
            format!("FAIL ({} violations)", verdict.violations.len())
        }
    );
    for v in &verdict.violations {
        let _ = writeln!(w, "- `{}`: {}", v.rule, v.detail);
    }
    if !verdict.violations.is_empty() {
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Connections\n");
    let _ = writeln!(
        w,
        "| kind | attempts | succeeded | failed in a fault's window | failed otherwise | slowest success |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    for kind in AttemptKind::ALL {
        let (ok, explained, unexplained) = verdict
            .accounting
            .attempts
            .get(&kind)
            .copied()
            .unwrap_or_default();
        let slowest = run
            .attempts
            .iter()
            .filter(|a| a.kind == kind && a.result.is_ok())
            .map(|a| a.ended.saturating_sub(a.started))
            .max();
        let _ = writeln!(
            w,
            "| {} | {} | {ok} | {explained} | {unexplained} | {} |",
            kind.name(),
            ok + explained + unexplained,
            opt(slowest)
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "| long-lived connections | total | closed as planned | ended with their failed backend | lost otherwise | pushes received | echoes |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|");
    for service in [NAT, DSR] {
        let (closed, pinned, lost) = verdict
            .accounting
            .long_lived
            .get(service)
            .copied()
            .unwrap_or_default();
        let mine = run.long_lived.iter().filter(|c| c.service == service);
        let pushes: u64 = mine.clone().map(|c| c.pushes).sum();
        let echoes: u64 = mine.map(|c| c.echoes).sum();
        let _ = writeln!(
            w,
            "| {service} | {} | {closed} | {pinned} | {lost} | {pushes} | {echoes} |",
            closed + pinned + lost
        );
    }
    let endings: Vec<String> = [Ending::Reset, Ending::Eof, Ending::Stalled, Ending::Broken]
        .iter()
        .map(|e| {
            format!(
                "{e:?} {}",
                run.long_lived.iter().filter(|c| &c.ending == e).count()
            )
        })
        .collect();
    let _ = writeln!(w, "\nHow the others ended: {}.\n", endings.join(", "));

    let _ = writeln!(w, "## Faults\n");
    let _ = writeln!(
        w,
        "| # | fault | target | at | held | detection | recovery | settled after | failed meanwhile (last one, after the start) | long-lived ended meanwhile | note |"
    );
    let _ = writeln!(w, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (a, m) in run.faults.iter().zip(&verdict.measured) {
        // From the fault's start until it settled (or the run ended).
        let end = a.settled.unwrap_or(run.length);
        let failures: Vec<Duration> = run
            .attempts
            .iter()
            .filter(|t| t.result.is_err() && t.ended >= a.started && t.started <= end)
            .map(|t| t.started.saturating_sub(a.started))
            .collect();
        let failed = match failures.iter().max() {
            Some(last) => format!("{} ({})", failures.len(), secs(*last)),
            None => "0".into(),
        };
        let ended = run
            .long_lived
            .iter()
            .filter(|c| c.ending != Ending::Closed && c.ended >= a.started && c.ended <= end)
            .count();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {failed} | {ended} | {} |",
            a.fault.id,
            a.fault.kind,
            a.fault.target.unwrap_or(""),
            secs(a.started),
            secs(a.undone.saturating_sub(a.started)),
            opt(m.detection),
            opt(m.recovery),
            opt(a.settled.map(|t| t.saturating_sub(a.undone))),
            a.note.replace('|', "/")
        );
    }
    let _ = writeln!(
        w,
        "\nDetection: from the fault to the status showing it (backend down, lb-2 MASTER, admin \
         state, reload answered, table-full counters up). Recovery: from undoing it to the status \
         showing it over (backend up on every node; lb-1 MASTER and lb-2 BACKUP). Settled: every \
         backend up everywhere, the pair back in place, flows synced.\n"
    );

    let trouble: Vec<String> = run
        .events
        .iter()
        .filter_map(|e| match &e.what {
            Observation::FlowSync {
                node,
                counter,
                total,
            } => Some(format!("{} {node} {counter} {total}", secs(e.at))),
            _ => None,
        })
        .collect();
    if !trouble.is_empty() {
        let _ = writeln!(
            w,
            "Flow sync's trouble counters as they rose (time, node, counter, total in that daemon's life): {}.\n",
            trouble.join("; ")
        );
    }

    if !run.sync_log.is_empty() {
        let _ = writeln!(w, "Flow sync's log of trouble:\n\n```");
        for line in &run.sync_log {
            let _ = writeln!(w, "{line}");
        }
        let _ = writeln!(w, "```\n");
    }

    let _ = writeln!(w, "## Daemons\n");
    let _ = writeln!(
        w,
        "| node | pid | from | to | ended by | CPU | CPU % of a core | VmRSS first / at 1 min / last / max (MiB) | fds first steady / last | BPF map fds first steady / last |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---|---:|---:|---|---|---:|");
    for d in &run.daemons {
        let (first, last) = (d.samples.first(), d.samples.last());
        let cpu = match (first, last) {
            (Some(f), Some(l)) if l.at > f.at => {
                let t = (l.cpu_ticks - f.cpu_ticks.min(l.cpu_ticks)) as f64
                    / run.ticks_per_second.max(1) as f64;
                (
                    format!("{t:.1} s"),
                    format!("{:.1}", 100.0 * t / (l.at - f.at).as_secs_f64()),
                )
            }
            _ => ("—".into(), "—".into()),
        };
        let minute = d
            .samples
            .iter()
            .find(|x| x.at >= d.started + Duration::from_secs(60))
            .map(|x| mib(x.rss_kb))
            .unwrap_or_else(|| "—".into());
        let max = d.samples.iter().map(|x| x.rss_kb).max().unwrap_or(0);
        let (fds, maps) = match (d.quiet.first(), last) {
            (Some(f), Some(l)) => (
                format!("{} / {}", f.fds, l.fds),
                format!("{} / {}", f.map_fds, l.map_fds),
            ),
            _ => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {fds} | {maps} |",
            d.node,
            d.pid,
            secs(d.started),
            d.ended.map(secs).unwrap_or_else(|| "end".into()),
            d.how_ended,
            cpu.0,
            cpu.1,
            first.map(|x| mib(x.rss_kb)).unwrap_or_default(),
            minute,
            last.map(|x| mib(x.rss_kb)).unwrap_or_default(),
            mib(max),
        );
    }
    for (node, counts) in &run.packets {
        let text: Vec<String> = counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            w,
            "\n{node}'s XDP packets by reason at the end (its last life): {}.",
            text.join(", ")
        );
    }
    let l = &run.leftovers;
    let _ = writeln!(
        w,
        "\nLeft behind after the run: {} BPF maps, {} namespaces, {} processes; {} panics in the logs.",
        l.maps.len(),
        l.namespaces.len(),
        l.processes.len(),
        l.panics.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::{
        schedule::{Fault, FaultKind},
        verdict::*,
    };
    use super::*;

    #[test]
    fn the_report_has_every_section_and_the_violations() {
        let s = |x: f64| Duration::from_secs_f64(x);
        let run = Run {
            settings: Settings {
                inter: s(1.0),
                fall: 2,
                rise: 2,
                timeout: s(0.8),
                master_down_interval: s(3.6),
                client_period: s(2.0),
                margin: s(2.0),
                fd_slack: 4,
            },
            seed: 9,
            length: s(120.0),
            faults: vec![Applied {
                fault: Fault {
                    id: 1,
                    kind: FaultKind::BackendHang,
                    target: Some("server-3"),
                    hold: s(6.0),
                    gap: s(1.0),
                },
                started: s(10.0),
                undone: s(16.0),
                acked: None,
                settled: None,
                note: String::new(),
                error: None,
            }],
            events: vec![],
            attempts: vec![Attempt {
                kind: AttemptKind::Udp,
                agent: "agent-3".into(),
                started: s(50.0),
                ended: s(51.0),
                result: Err("no answer".into()),
            }],
            long_lived: vec![],
            daemons: vec![Incarnation {
                node: "lb-1".into(),
                pid: 7,
                how_ended: "end of run".into(),
                samples: vec![
                    Sample {
                        at: s(1.0),
                        rss_kb: 10240,
                        cpu_ticks: 10,
                        ..Default::default()
                    },
                    Sample {
                        at: s(11.0),
                        rss_kb: 10240,
                        cpu_ticks: 60,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            leftovers: Leftovers::default(),
            ticks_per_second: 100,
            packets: Default::default(),
            sync_log: Vec::new(),
        };
        let verdict = judge(&run);
        let text = render(&run, &verdict);
        for needle in [
            "Seed 9",
            "FAIL",
            "`new-connection`",
            "`detection`",
            "## Connections",
            "## Faults",
            "backend hangs | server-3",
            "## Daemons",
            "| lb-1 | 7 |",
            "0.5 s | 5.0 |",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }
}
