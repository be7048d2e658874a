//! `portcullis status|bans|ban|unban`: ask the running daemon over its
//! control socket and print the answer for people (or `--json`).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::control::{self, BanView, Request};
use crate::status::{KernelStatus, Status};

/// Where the daemon is and how to print its answer.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's answer as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// A duration on the command line: `600`, `90s`, `10m`, `12h`, `7d`.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    portcullis_engine::config::parse_duration(s)
}

/// Sends `request`, prints the answer. Exit code 0 on success, 1 when the
/// daemon refused (the message says why), an error when it is unreachable.
pub fn run(args: &ClientArgs, request: Request) -> Result<ExitCode> {
    let reply = control::call(&args.socket, &request)?;
    let value = match reply {
        Ok(v) => v,
        Err(msg) => {
            if args.json {
                println!("{}", serde_json::json!({ "ok": false, "error": msg }));
            } else {
                eprintln!("portcullis: {msg}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = match &request {
        Request::Status => {
            let s: Status = serde_json::from_value(value).context("the daemon's status")?;
            status_text(&s)
        }
        Request::Bans => {
            let bans: Vec<BanView> = serde_json::from_value(value).context("the daemon's bans")?;
            bans_text(&bans)
        }
        Request::Ban { .. } => {
            let b: BanView = serde_json::from_value(value).context("the daemon's answer")?;
            format!(
                "banned {} for {} ({}), until {}; {}\n",
                b.addr,
                human_secs(b.seconds_left),
                b.reason,
                b.until,
                if b.enforced {
                    "in the kernel ban set now"
                } else {
                    "NOT enforced: the daemon is passive (monitor without --enforce-bans, or dry run)"
                }
            )
        }
        Request::Unban { addr } => {
            if value["enforced"] == serde_json::Value::Bool(false) {
                format!("unbanned {addr} (the daemon is passive: it was never enforced)\n")
            } else {
                format!("unbanned {addr}; removed from the kernel ban set\n")
            }
        }
        Request::Explain { .. } => {
            let x: portcullis_engine::Explanation =
                serde_json::from_value(value).context("the daemon's explanation")?;
            format!("{x}\n")
        }
        // `portcullis top` draws it; anyone else gets the JSON.
        Request::Top { .. } => format!("{}\n", serde_json::to_string_pretty(&value)?),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `3h 02m`, `9m 58s`, `42s`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn status_text(s: &Status) -> String {
    let mut t = String::new();
    let p = &s.packets;
    let _ = writeln!(
        t,
        "portcullis {} (pid {}), up {}",
        s.version,
        s.pid,
        human_secs(s.uptime_seconds)
    );
    let _ = writeln!(
        t,
        "mode:        {}{}",
        s.mode,
        if s.enforcing {
            ""
        } else {
            " (not enforcing: drops are logged as would_block)"
        }
    );
    let _ = writeln!(t, "rules:       {}", s.config);
    let _ = writeln!(t, "kernel:      {}", s.kernel_path);
    let _ = writeln!(
        t,
        "packets:     {} inspected, {} accepted, {} dropped, {} not IP",
        p.packets, p.accepted, p.dropped, p.not_ip
    );
    let reasons: Vec<String> = p
        .by_reason
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(
        t,
        "by reason:   {}",
        if reasons.is_empty() {
            "-".to_owned()
        } else {
            reasons.join(", ")
        }
    );
    if let Some(q) = &s.queue {
        let _ = writeln!(
            t,
            "queue {}:    {} received; lost: {} queue full, {} user, {} uninspected, {} overruns ({}); {} NXDOMAIN answers not sent",
            q.number,
            q.received,
            q.queue_dropped,
            q.user_dropped,
            q.uninspected,
            q.overruns,
            if q.fail_open { "fail-open" } else { "fail-closed" },
            q.dns_answers_failed
        );
    }
    if let Some(o) = &s.observed {
        let _ = writeln!(
            t,
            "nflog {}:    {} observed; lost: {} (overruns {}, malformed {})",
            o.group, o.received, o.lost, o.overruns, o.malformed
        );
    }
    for c in &s.capture {
        let _ = writeln!(
            t,
            "capture {}: {} received, {} dropped, {} dropped by the interface",
            c.interface, c.received, c.dropped, c.if_dropped
        );
    }
    for src in &s.sources {
        let state = match (&src.down_seconds, &src.error) {
            (Some(secs), Some(e)) => format!("waiting for it to come back ({secs}s: {e})"),
            _ => "up".to_owned(),
        };
        let _ = writeln!(
            t,
            "{} {}: {state}; {} failures, {} reopens",
            src.kind, src.name, src.failures, src.reopens
        );
    }
    let _ = writeln!(
        t,
        "scans:       {} detected; {} bans, {} unbans; {} active now{}",
        p.scans,
        p.bans,
        p.unbans,
        s.bans_active,
        if s.bans_enforced {
            ""
        } else {
            " (not enforced)"
        }
    );
    let _ = writeln!(t, "never banned: {}", s.protected.join(", "));
    if let Some(d) = &s.detector {
        let _ = writeln!(
            t,
            "detector:    {} sources, {} flows, {} KiB; evictions {} sources, {} flows; {} probes lost",
            d.sources,
            d.flows,
            d.memory_bytes / 1024,
            d.source_evictions,
            d.flow_evictions,
            p.probes_dropped
        );
    }
    let _ = writeln!(
        t,
        "events:      {} written, {} held back by the rate limit, {} lost (writer behind), {} lost (event log write failed)",
        p.events, p.events_suppressed, s.events_dropped, s.events_write_failed
    );
    let k = &s.kernel;
    if s.bans_enforced || *k != KernelStatus::default() {
        let _ = writeln!(
            t,
            "kernel ops:  rules restored {} ({} tries failed); bans refused {} ({} enforced later), unbans refused {}, {} waiting for a retry, {} not handed over (queue full); {} open connections ended by bans ({} failures)",
            k.rules_restored,
            k.rules_restore_failed,
            k.bans_failed,
            k.bans_enforced_late,
            k.unbans_failed,
            k.retrying,
            k.commands_dropped,
            k.flows_ended,
            k.flow_end_failures
        );
    }
    t
}

fn bans_text(bans: &[BanView]) -> String {
    if bans.is_empty() {
        return "no active bans\n".to_owned();
    }
    let width = bans
        .iter()
        .map(|b| b.addr.to_string().len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut t = format!(
        "{:width$}  {:>9}  {:<19}  REASON\n",
        "ADDRESS", "LEFT", "SINCE"
    );
    for b in bans {
        let _ = writeln!(
            t,
            "{:width$}  {:>9}  {:<19}  {}",
            b.addr,
            human_secs(b.seconds_left),
            b.since.get(..19).unwrap_or(&b.since),
            b.reason
        );
    }
    let _ = writeln!(t, "{} active", bans.len());
    t
}

/// The address argument: an IP address (no prefix length: bans are per
/// address).
pub fn parse_addr(s: &str) -> std::result::Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IP address (bans are per address, no /prefix)"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_and_tables_read_well() {
        assert_eq!(human_secs(42), "42s");
        assert_eq!(human_secs(598), "9m 58s");
        assert_eq!(human_secs(3 * 3600 + 120), "3h 02m");
        assert_eq!(human_secs(2 * 86_400 + 3600), "2d 01h");
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert!(parse_duration("0").is_err());
        assert!(parse_addr("198.18.0.0/24").is_err());
        let t = bans_text(&[BanView {
            addr: "2001:2::5".parse().unwrap(),
            reason: "scan:syn".into(),
            since: "2026-11-22T06:01:02.000000Z".into(),
            until: "2026-11-22T06:11:02.000000Z".into(),
            seconds_left: 500,
            enforced: true,
        }]);
        assert!(t.contains("2001:2::5"), "{t}");
        assert!(t.contains("8m 20s"), "{t}");
        assert!(t.contains("2026-11-22T06:01:02  scan:syn"), "{t}");
        assert!(t.ends_with("1 active\n"), "{t}");
        assert_eq!(bans_text(&[]), "no active bans\n");
    }
}
