//! Network namespaces for live tests: created by the test, removed on drop
//! (also when the test fails or panics).
//!
//! Only addresses from the benchmarking ranges 198.18.0.0/15 and
//! 2001:2::/48 are used. Nothing here touches the root namespace's firewall:
//! every iptables/nft command runs through `ip netns exec` in a namespace
//! created here.

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use libtest_mimic::Failed;

/// Run a command; its stdout, or a failure with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, Failed> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why live tests cannot run here, if they cannot.
/// What the NFQUEUE live tests need.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
];

/// Why these tests cannot run here (see `portcullis_testnet::skip_reason`).
pub fn skip_reason() -> Option<String> {
    portcullis_testnet::skip_reason(TOOLS)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace `ip netns add` made; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self, Failed> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("pcq-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        Ok(Netns { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String, Failed> {
        let mut all = vec!["netns", "exec", &self.name, cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: `a` (198.18.0.1, 2001:2::1) sends,
/// `b` (198.18.0.2, 2001:2::2) queues and receives.
#[derive(Debug)]
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
}

pub const A4: &str = "198.18.0.1";
pub const B4: &str = "198.18.0.2";
pub const A6: &str = "2001:2::1";
pub const B6: &str = "2001:2::2";
/// The receiving interface in `b`.
pub const B_IF: &str = "vb";

impl Pair {
    pub fn new(tag: &str) -> Result<Self, Failed> {
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        run(
            "ip",
            &[
                "-n",
                a.name(),
                "link",
                "add",
                "va",
                "type",
                "veth",
                "peer",
                "name",
                B_IF,
                "netns",
                b.name(),
            ],
        )?;
        for (ns, dev, v4, v6) in [(&a, "va", A4, A6), (&b, B_IF, B4, B6)] {
            let n = ns.name();
            run(
                "ip",
                &["-n", n, "addr", "add", &format!("{v4}/24"), "dev", dev],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            )?;
            run("ip", &["-n", n, "link", "set", dev, "up"])?;
            run("ip", &["-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(Pair { a, b })
    }

    /// Interface index of `vb` inside `b`.
    pub fn b_ifindex(&self) -> Result<u32, Failed> {
        let out = run("ip", &["-n", self.b.name(), "-o", "link", "show", B_IF])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("no ifindex in {out:?}").into())
    }
}

/// Address of `b` in the family of `v6`.
pub fn b_addr(v6: bool) -> IpAddr {
    let s = if v6 { B6 } else { B4 };
    s.parse().unwrap_or(IpAddr::from([198, 18, 0, 2]))
}
