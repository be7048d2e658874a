//! `portcullis run`'s flags, lowered once into what the daemon does
//! (ripgrep's `lowargs` -> `hiargs`): where packets come from, what is
//! enforced, which kernel rules are kept, what `status` calls the mode.
//! Every combination of `--mode`, `--dry-run` and `--enforce-bans` is
//! decided here and nowhere else; the rest of the daemon asks the plan.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use portcullis_engine::config::Config;
use portcullis_kernel::{KernelOptions, KernelPlan};

use crate::cli::{Mode, RunArgs};

/// Where packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// In the packet path: NFQUEUE (held packets, whose verdicts we give)
    /// and NFLOG (observed packets); drops are enforced.
    Inline,
    /// Passive capture with libpcap (monitor mode, dry run): nothing is
    /// dropped inline, would-be drops are logged.
    Capture {
        /// At least one (`any` when no `--interface` was given).
        interfaces: Vec<String>,
        bpf: Option<String>,
    },
}

/// Which rules the daemon keeps in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelRules {
    /// Inline: lists, bans, NFQUEUE ([`KernelPlan::from_config`]).
    Full,
    /// Passive with `--enforce-bans` ([`KernelPlan::bans_only`]).
    BansOnly,
}

impl KernelRules {
    /// The kernel's share of `cfg` under these rules.
    pub fn plan(self, cfg: &Config) -> KernelPlan {
        let opts = KernelOptions::default();
        match self {
            Self::Full => KernelPlan::from_config(cfg, &opts),
            Self::BansOnly => KernelPlan::bans_only(cfg, &opts),
        }
    }
}

/// `portcullis run`, decided.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub source: Source,
    /// The kernel rules kept while we run; `None`: nothing in the kernel
    /// (passive without `--enforce-bans`, dry run), so bans are only logged.
    pub kernel: Option<KernelRules>,
    /// What `status`, the metrics and systemd call the mode.
    pub label: &'static str,
    /// The rules file; `None`: the embedded default policy.
    pub config: Option<PathBuf>,
    /// `--home-net`: replaces the rules file's `home_net`.
    pub home_net: Vec<ipnet::IpNet>,
    /// JSON Lines events (`-`: stdout).
    pub events: Option<PathBuf>,
    /// Readable event lines on stderr.
    pub console: bool,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// `--protect` addresses.
    pub protect: Vec<IpAddr>,
    /// Protect the SSH client that started us.
    pub protect_ssh: bool,
    /// Never ban this host's gateways, resolvers and own addresses for a
    /// scan (not `--no-protect-peers`).
    pub protect_peers: bool,
}

impl RunPlan {
    /// Checks what the flags say together and lowers them.
    pub fn new(args: &RunArgs) -> Result<Self> {
        let passive = args.mode == Mode::Monitor || args.dry_run;
        if !passive
            && (!args.interfaces.is_empty()
                || args.bpf.is_some()
                || args.enforce_bans
                || !args.home_net.is_empty())
        {
            anyhow::bail!(
                "--interface, --bpf, --enforce-bans and --home-net are for --mode monitor"
            );
        }
        if let Some(f) = &args.bpf {
            portcullis_capture::live::check_filter(f)?;
        }
        let source = if passive {
            Source::Capture {
                interfaces: if args.interfaces.is_empty() {
                    vec![portcullis_capture::live::ANY.to_owned()]
                } else {
                    args.interfaces.clone()
                },
                bpf: args.bpf.clone(),
            }
        } else {
            Source::Inline
        };
        // `--dry-run` conflicts with `--enforce-bans` (clap).
        let kernel = match (passive, args.enforce_bans) {
            (false, _) => Some(KernelRules::Full),
            (true, true) => Some(KernelRules::BansOnly),
            (true, false) => None,
        };
        let label = match (args.mode, args.dry_run) {
            (_, true) => "monitor (dry run)",
            (Mode::Inline, _) => "inline",
            (Mode::Monitor, _) => "monitor",
        };
        Ok(Self {
            source,
            kernel,
            label,
            config: args.engine.config.clone(),
            home_net: args.home_net.clone(),
            events: args.engine.events.clone(),
            console: !args.engine.quiet,
            state_dir: args.state_dir.clone(),
            socket: args.socket.clone(),
            metrics: args.metrics,
            protect: args.protect.clone(),
            protect_ssh: !args.no_protect_ssh,
            protect_peers: !args.no_protect_peers,
        })
    }

    /// Passive: a capture beside the packet path, which cannot tell
    /// direction by itself (this host's addresses stand in for a missing
    /// `home_net`).
    pub fn passive(&self) -> bool {
        matches!(self.source, Source::Capture { .. })
    }

    /// The engine's drops are the packets' fate (inline), not only logged.
    pub fn verdicts_enforced(&self) -> bool {
        self.source == Source::Inline
    }

    /// Bans reach the kernel's ban sets (and only then are they saved).
    pub fn bans_enforced(&self) -> bool {
        self.kernel.is_some()
    }

    /// How `status` names the rules file.
    pub fn config_name(&self) -> String {
        self.config.as_ref().map_or_else(
            || "embedded default policy".to_owned(),
            |p| p.display().to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn plan(flags: &[&str]) -> Result<RunPlan> {
        let argv = [&["portcullis", "run"][..], flags].concat();
        match Cli::try_parse_from(argv)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .command
        {
            Command::Run(a) => RunPlan::new(&a),
            c => panic!("{c:?}"),
        }
    }

    /// (source is inline, verdicts enforced, kernel rules, label)
    fn shape(p: &RunPlan) -> (bool, bool, Option<KernelRules>, &'static str) {
        (
            p.source == Source::Inline,
            p.verdicts_enforced(),
            p.kernel,
            p.label,
        )
    }

    #[test]
    fn mode_dry_run_and_enforce_bans_are_combined_once() {
        use KernelRules::*;
        let cases: [(&[&str], _); 6] = [
            (&[], (true, true, Some(Full), "inline")),
            (&["--mode", "monitor"], (false, false, None, "monitor")),
            (
                &["--mode", "monitor", "--enforce-bans"],
                (false, false, Some(BansOnly), "monitor"),
            ),
            (&["--dry-run"], (false, false, None, "monitor (dry run)")),
            (
                &["--mode", "monitor", "--dry-run"],
                (false, false, None, "monitor (dry run)"),
            ),
            (
                &["--mode", "inline", "--dry-run", "-i", "eth0"],
                (false, false, None, "monitor (dry run)"),
            ),
        ];
        for (flags, want) in cases {
            let p = plan(flags).unwrap();
            assert_eq!(shape(&p), want, "{flags:?}");
            assert_eq!(p.bans_enforced(), want.2.is_some(), "{flags:?}");
            assert_eq!(p.passive(), !want.0, "{flags:?}");
        }
    }

    #[test]
    fn passive_sources_capture_on_any_unless_told() {
        let p = plan(&["--mode", "monitor"]).unwrap();
        assert_eq!(
            p.source,
            Source::Capture {
                interfaces: vec!["any".into()],
                bpf: None
            }
        );
        let p = plan(&["--dry-run", "-i", "eth0", "-i", "eth1"]).unwrap();
        assert_eq!(
            p.source,
            Source::Capture {
                interfaces: vec!["eth0".into(), "eth1".into()],
                bpf: None
            }
        );
    }

    #[test]
    fn monitor_flags_are_refused_inline_and_dry_run_excludes_enforce_bans() {
        for flags in [
            &["-i", "eth0"][..],
            &["--enforce-bans"],
            &["--home-net", "10.0.0.0/8"],
        ] {
            let e = plan(flags).unwrap_err().to_string();
            assert!(e.contains("are for --mode monitor"), "{flags:?}: {e}");
        }
        let e = plan(&["--dry-run", "--enforce-bans"]).unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
    }

    #[test]
    fn the_rest_is_carried_over() {
        let p = plan(&["-c", "/etc/r.json", "-q", "--no-protect-ssh"]).unwrap();
        assert_eq!(p.config_name(), "/etc/r.json");
        assert!(!p.console && !p.protect_ssh);
        assert_eq!(plan(&[]).unwrap().config_name(), "embedded default policy");
    }
}
