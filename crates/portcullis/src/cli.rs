//! The command line as clap parses it, and nothing else: what the flags
//! mean together is decided once, in [`crate::plan`] (ripgrep's lowargs ->
//! hiargs); `main` dispatches.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::client::{self, ClientArgs};
use crate::control;

/// Linux host firewall and port-scan detector.
///
/// portcullis filters traffic by address, port, protocol and DNS name,
/// detects port scans and bans the scanners, and logs every action as JSON
/// events (Suricata EVE field names) plus one readable line per event.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Operator messages shown on stderr (or the journal): off, error,
    /// warn, info, debug, trace. Default: `PORTCULLIS_LOG`, else info.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = crate::logger::parse_level)]
    pub log_level: Option<log::LevelFilter>,
}

/// `portcullis top`'s flags.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Time between refreshes: `1`, `500ms`, `2s` (0.2 s to 60 s).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: std::time::Duration,
    /// Print one frame as text and exit, for scripts (no terminal needed).
    /// It takes two snapshots one interval apart, so rates are real.
    #[arg(long)]
    pub once: bool,
    /// With --once: the frame's width in columns.
    #[arg(long, default_value_t = 80, requires = "once", value_parser = clap::value_parser!(u16).range(40..=1000))]
    pub width: u16,
    /// With --once: the frame's height in lines.
    #[arg(long, default_value_t = 24, requires = "once", value_parser = clap::value_parser!(u16).range(12..=1000))]
    pub height: u16,
}

/// `--interval`: a duration from 200 ms to 60 s (`500ms`, `2s`, `1`).
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let d = match s.strip_suffix("ms") {
        Some(ms) => ms
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s)"))?,
        None => client::parse_duration(s)?,
    };
    if d < Duration::from_millis(200) || d > Duration::from_secs(60) {
        return Err(format!("{s:?}: the interval must be from 200ms to 60s"));
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Protect this host: install portcullis's own kernel rules (nftables
    /// table `inet portcullis`, NFQUEUE), decide new connections and DNS
    /// queries, ban scanners. Needs root. SIGINT/SIGTERM remove exactly
    /// our rules; SIGHUP re-reads the config (a broken file keeps the old
    /// rules).
    Run(RunArgs),
    /// Show the running daemon: mode, uptime, kernel path, packets and
    /// verdicts by reason, queue losses, bans, detector memory.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the running daemon's active bans with reason and time left.
    Bans {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ban an address now (in the kernel ban set before this returns).
    Ban {
        /// IPv4 or IPv6 address.
        #[arg(value_parser = client::parse_addr)]
        addr: std::net::IpAddr,
        /// How long: `600`, `90s`, `10m`, `12h`, `7d`. Default: the
        /// configured scan ban duration.
        #[arg(long = "for", value_parser = client::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Why (shown in `bans` and the `ban` event). Default: `manual`.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift a ban now (removed from the kernel ban set before this returns).
    Unban {
        #[arg(value_parser = client::parse_addr)]
        addr: std::net::IpAddr,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Which rule, list or ban applies to an address in the running daemon,
    /// and why (every entry that names it, and the verdict in the engine's
    /// precedence).
    ///
    /// With --config, answers from that rules file instead, without a
    /// daemon (no bans then): what would a new file do to this address?
    Explain {
        #[arg(value_parser = client::parse_addr)]
        addr: std::net::IpAddr,
        /// Explain against this rules file, not the running daemon.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A live view of the running daemon in the terminal, refreshed about
    /// once a second: packets and drops per second by reason (with a short
    /// history), the top dropped sources and ports, active bans, the latest
    /// scans, DNS and queue/capture health.
    ///
    /// Keys: `q` quits, `Tab` switches between the sources and the bans,
    /// arrows (or j/k) select, `b` bans and `u` unbans the selected address
    /// (each after a y/n confirmation), `/` filters, `?` helps. Needs a
    /// terminal; `--once` prints one frame as text instead.
    Top(TopArgs),
    /// Remove kernel rules a portcullis daemon that is no longer running
    /// left behind (killed, crashed, or its package removed): `table inet
    /// portcullis` and the iptables chain `PORTCULLIS` with its jumps.
    /// Needs root.
    ///
    /// Exits 0 when nothing of ours is left, 1 (touching nothing) while a
    /// daemon manages this network namespace's rules.
    Cleanup,
    /// Validate a rules file and summarize what it loads.
    ///
    /// Exits 0 when the file is valid, 1 when it is not (every error is
    /// listed with its JSON path and line).
    Check {
        /// Rules file (JSON). Without it, the default policy embedded in
        /// the binary is checked.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the rules file.
    Schema,
    /// Print a shell completion script, e.g.
    /// `portcullis completions bash > /etc/bash_completion.d/portcullis`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `portcullis man | man -l -`, or
    /// write it and one page per subcommand into a folder.
    Man {
        /// Write `portcullis.1` and `portcullis-<subcommand>.1` here
        /// instead of printing the main page.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the whole engine (rules, detector, bans) over a pcap or pcapng
    /// capture, writing exactly the events the live daemon would.
    Replay {
        /// Capture file (pcap or pcapng; Ethernet, raw IP, Linux cooked).
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Replay a capture that portcullis makes itself: ordinary traffic, a
    /// SYN scan (detected and banned), pings from the banned scanner, DNS
    /// lookups and an IPv6 UDP scan.
    Demo {
        /// Also keep the generated capture at this path.
        #[arg(long)]
        save_pcap: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
}

/// The rules file and where events go: every command that runs the engine.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Rules file (JSON). Default: the policy embedded in the binary.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Append JSON Lines events to this file (`-` for stdout).
    #[arg(long, short)]
    pub events: Option<PathBuf>,
    /// No readable event lines on the console (stderr).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Options of `replay` and `demo`. The detector always runs inline here
/// (on the packet's own time): the same capture and config give the same
/// events in the same order.
#[derive(Debug, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// This host's network: an address or CIDR prefix (repeat for more;
    /// IPv4 and IPv6). Traffic to it is inbound, from it outbound. Replaces
    /// the rules file's `home_net` when given.
    #[arg(long = "home-net", value_name = "CIDR", value_parser = portcullis_engine::config::parse_net)]
    pub home_net: Vec<ipnet::IpNet>,
    /// No progress bar (one is drawn on stderr only when it is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// How the daemon sees packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// In the packet path (nftables + NFQUEUE): drops are enforced.
    Inline,
    /// Passive capture (libpcap): nothing is dropped inline; would-be drops
    /// are logged, scans detected (and banned with --enforce-bans).
    Monitor,
}

/// Options of `portcullis run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// inline: decide in the packet path; monitor: capture passively.
    #[arg(long, value_enum, default_value_t = Mode::Inline)]
    pub mode: Mode,
    /// Monitor mode: an interface to capture on (repeat for more; `any`
    /// for all). Default: any.
    #[arg(long = "interface", short = 'i', value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Monitor mode: a capture filter in tcpdump syntax.
    #[arg(long, value_name = "FILTER")]
    pub bpf: Option<String>,
    /// Monitor mode: this host's network, an address or CIDR prefix
    /// (repeat for more; IPv4 and IPv6), where the capture cannot tell
    /// direction. Replaces the rules file's `home_net` when given; without
    /// either, this host's own addresses.
    #[arg(long = "home-net", value_name = "CIDR", value_parser = portcullis_engine::config::parse_net)]
    pub home_net: Vec<ipnet::IpNet>,
    /// Monitor mode: ban detected scanners in the kernel (a table with the
    /// ban sets only; nothing else is enforced).
    #[arg(long)]
    pub enforce_bans: bool,
    /// Enforce nothing: no kernel rules at all; every would-be drop and ban
    /// is logged (`would_block`, `"enforced": false`). Runs as a passive
    /// monitor (on `any` unless --interface is given).
    #[arg(long, conflicts_with = "enforce_bans")]
    pub dry_run: bool,
    /// Where bans are kept across restarts.
    #[arg(long, default_value = "/var/lib/portcullis")]
    pub state_dir: PathBuf,
    /// The control socket (`portcullis status`, `bans`, `ban`, `unban`,
    /// `explain`), root only.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (no
    /// authentication: bind to loopback or a management network; in inline
    /// mode a remote scraper needs an allow rule).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Do not protect the SSH client that started the daemon. By default
    /// its address (from SSH_CONNECTION, ours or an ancestor's: sudo drops
    /// it) is never blocked nor banned, so a bad rule cannot lock you out.
    #[arg(long)]
    pub no_protect_ssh: bool,
    /// Let scans get this host's default gateways, DNS resolvers and own
    /// addresses banned. By default they are reported but never banned: a
    /// scan is spoofed easily, and banning the gateway or the resolver cuts
    /// the host off.
    #[arg(long)]
    pub no_protect_peers: bool,
    /// Never block nor ban this address either (repeat for more): your
    /// management hosts. Like an `allow.ip` entry that no rules file can
    /// take away.
    /// Also takes an SSH_CONNECTION value: `--protect "$SSH_CONNECTION"`.
    #[arg(long = "protect", value_name = "ADDR", value_parser = crate::lockout::parse_protect)]
    pub protect: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const UNIT: &str = include_str!("../../../packaging/systemd/portcullis.service");

    /// The arguments of every `Exec*=` line of the unit that runs us.
    fn our_exec_lines() -> Vec<(String, Vec<String>)> {
        UNIT.lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("Exec"))
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    v.split_whitespace().map(str::to_owned).collect::<Vec<_>>(),
                )
            })
            .filter(|(_, argv)| argv[0] == "/usr/local/bin/portcullis")
            .collect()
    }

    #[test]
    fn home_net_is_repeatable_in_replay_and_monitor_mode_and_checked() {
        let nets = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Run(a)) => Ok(a.home_net),
            Ok(Command::Replay { common, .. }) => Ok(common.home_net),
            Ok(c) => panic!("{c:?}"),
            Err(e) => Err(e.to_string()),
        };
        let two = ["--home-net", "10.0.0.0/8", "--home-net", "2001:db8::1"];
        let want: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ];
        let run = [&["portcullis", "run", "--mode", "monitor"][..], &two].concat();
        assert_eq!(nets(&run).unwrap(), want);
        let replay = [&["portcullis", "replay", "x.pcap"][..], &two].concat();
        assert_eq!(nets(&replay).unwrap(), want);
        let bad = nets(&[
            "portcullis",
            "run",
            "--mode",
            "monitor",
            "--home-net",
            "10.0.0.1/8",
        ]);
        let err = bad.unwrap_err();
        assert!(err.contains("--home-net"), "{err}");
        assert!(err.contains("the network is \"10.0.0.0/8\""), "{err}");
    }

    #[test]
    fn the_systemd_units_command_lines_parse() {
        let lines = our_exec_lines();
        let keys: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ExecStartPre", "ExecStart", "ExecReload"]);
        for (key, argv) in &lines {
            let cli = Cli::try_parse_from(argv)
                .unwrap_or_else(|e| panic!("{key}={}: {e}", argv.join(" ")));
            match (key.as_str(), &cli.command) {
                ("ExecStart", Command::Run(args)) => {
                    let e = &args.engine;
                    assert_eq!(
                        e.config.as_deref(),
                        Some(std::path::Path::new("/etc/portcullis/rules.json"))
                    );
                    // Inside the unit's writable folders.
                    assert!(e
                        .events
                        .as_ref()
                        .unwrap()
                        .starts_with("/var/log/portcullis"));
                    assert!(args.state_dir.starts_with("/var/lib/portcullis"));
                    assert!(!e.quiet, "event lines belong in the journal");
                }
                ("ExecStartPre" | "ExecReload", Command::Check { config }) => {
                    assert_eq!(
                        config.as_deref(),
                        Some(std::path::Path::new("/etc/portcullis/rules.json"))
                    );
                }
                (k, c) => panic!("{k} runs {c:?}"),
            }
        }
    }
}
