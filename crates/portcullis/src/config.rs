//! Loading the rules file: the filesystem side of the engine's pure config
//! compiler.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use portcullis_engine::config::{Config, ListLoader, DEFAULT_POLICY};

/// Reads domain list files, relative paths from the config file's folder.
#[derive(Debug)]
pub struct FsLoader {
    pub base: PathBuf,
}

impl ListLoader for FsLoader {
    fn load(&self, path: &str) -> std::result::Result<String, String> {
        let p = self.base.join(path);
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    }
}

/// The config at `path`, or the default policy embedded in the binary.
pub fn load(path: Option<&Path>) -> Result<Arc<Config>> {
    load_for_daemon(path, &[], Home::Fallback(&[]), false)
}

/// Where `home_net` comes from besides the rules file.
#[derive(Debug, Clone, Copy)]
pub enum Home<'a> {
    /// `--home-net`: replaces the file's list.
    Flag(&'a [ipnet::IpNet]),
    /// Applies only when the file sets no `home_net` (a passive daemon's own
    /// addresses: what is sent to them is inbound, what they send outbound).
    Fallback(&'a [ipnet::IpNet]),
}

impl<'a> Home<'a> {
    /// `--home-net` when given, else `fallback`.
    pub fn from_flag(flag: &'a [ipnet::IpNet], fallback: &'a [ipnet::IpNet]) -> Self {
        if flag.is_empty() {
            Home::Fallback(fallback)
        } else {
            Home::Flag(flag)
        }
    }
}

/// [`load`], with `protect` added to what is never blocked nor banned (the
/// SSH client that started the daemon), `home_net` as `home` says and,
/// with `peers`, this host's critical peers (default gateways, DNS
/// resolvers: [`crate::peers`]) never banned by a scan, read now (at start
/// and on every SIGHUP).
pub fn load_for_daemon(
    path: Option<&Path>,
    protect: &[ipnet::IpNet],
    home: Home<'_>,
    peers: bool,
) -> Result<Arc<Config>> {
    let (text, base, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.parent().map(Path::to_path_buf).unwrap_or_default(),
            p.display().to_string(),
        ),
        None => (
            DEFAULT_POLICY.to_owned(),
            PathBuf::from("."),
            "the default policy".to_owned(),
        ),
    };
    let mut cfg = Config::from_json_str(&text, &FsLoader { base })
        .map_err(|errs| anyhow::anyhow!("{name} is invalid:\n{errs}"))?;
    cfg.rules.protect(protect);
    if peers {
        cfg.critical_peers = crate::peers::critical_peers()
            .into_iter()
            .map(|(a, why)| (a, why.as_str().to_owned()))
            .chain(
                local_addresses()
                    .into_iter()
                    .map(|n| (n.addr(), crate::peers::Why::OwnAddress.as_str().to_owned())),
            )
            .collect();
    }
    match home {
        Home::Flag(nets) => cfg.home_net = nets.to_vec(),
        Home::Fallback(nets) if cfg.home_net.is_empty() => cfg.home_net = nets.to_vec(),
        Home::Fallback(_) => {}
    }
    Ok(Arc::new(cfg))
}

/// Where the daemon's config comes from, at start and at every SIGHUP:
/// the rules file, the protected addresses, `--home-net`, and (passive)
/// this host's addresses as they are at that moment.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The rules file; `None`: the embedded default policy.
    pub path: Option<PathBuf>,
    /// Never blocked nor banned (`--protect`, the SSH client).
    pub protect: Vec<ipnet::IpNet>,
    /// `--home-net`.
    pub home_flag: Vec<ipnet::IpNet>,
    /// This host's addresses stand in for a missing `home_net` (passive
    /// captures, which cannot tell direction).
    pub host_home: bool,
    /// This host's critical peers are never banned by a scan (read at
    /// every load: start and SIGHUP).
    pub peers: bool,
}

impl DaemonConfig {
    /// Reads and compiles the config now.
    pub fn load(&self) -> Result<Arc<Config>> {
        let host = if self.host_home {
            local_addresses()
        } else {
            Vec::new()
        };
        load_for_daemon(
            self.path.as_deref(),
            &self.protect,
            Home::from_flag(&self.home_flag, &host),
            self.peers,
        )
    }
}

/// What `portcullis check` prints about a valid config.
pub fn summary(cfg: &Config) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "configuration is valid");
    let _ = writeln!(s, "{}", cfg.rules.stats().to_string().trim_end());
    let p = &cfg.policy;
    let _ = writeln!(
        s,
        "policy: default {}, malformed packets {}",
        p.default.as_str(),
        p.malformed.as_str()
    );
    let sc = &cfg.scan;
    if sc.enabled {
        let _ = writeln!(
            s,
            "scan detection: more than {} ports or {} hosts from one source within {}s; {}",
            sc.port_threshold,
            sc.host_threshold,
            sc.window.as_secs(),
            if sc.ban {
                format!("ban for {}s", sc.ban_duration.as_secs())
            } else {
                "report only, no bans".to_owned()
            }
        );
        if let Some(slow) = sc.slow {
            let _ = writeln!(
                s,
                "slow scans: more than {} ports within {}s",
                slow.port_threshold,
                slow.window.as_secs()
            );
        }
    } else {
        let _ = writeln!(s, "scan detection: off");
    }
    let _ = writeln!(
        s,
        "events: dns queries {}, drops aggregated over {}s, at most {} events/s",
        if cfg.events.dns_queries {
            "logged"
        } else {
            "not logged"
        },
        cfg.events.drop_window.as_secs(),
        cfg.events.max_events_per_second
    );
    if !cfg.home_net.is_empty() {
        let nets: Vec<String> = cfg.home_net.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "home_net: {}", nets.join(", "));
    }
    s
}

/// This host's own addresses (every interface of the network namespace,
/// loopback left out), as host prefixes.
pub fn local_addresses() -> Vec<ipnet::IpNet> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<ipnet::IpNet> = addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip: std::net::IpAddr = if let Some(v4) = a.as_sockaddr_in() {
                v4.ip().into()
            } else {
                a.as_sockaddr_in6()?.ip().into()
            };
            (!ip.is_loopback()).then(|| ipnet::IpNet::from(ip))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
