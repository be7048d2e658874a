//! The kernel side of portcullis: an nftables table of our own that decides
//! what the kernel can decide, and hands the rest to user space through
//! NFQUEUE.
//!
//! # What the kernel holds
//!
//! One table, `table inet portcullis` ([`TABLE`]):
//!
//! - interval sets `allow4`/`allow6`, `block4`/`block6` (`allow.ip`,
//!   `block.ip`), `allow_tcp`/`allow_udp`/`block_tcp`/`block_udp`
//!   (`allow.port`, `block.port`), `allow_proto`/`block_proto`
//!   (`allow.protocol`, `block.protocol`) and `queue_proto`
//!   (`inline.queue_all`);
//! - timeout sets `ban4`/`ban6`, with a per-element `counter` when the
//!   kernel supports it (the kernel expires bans by itself);
//! - base chains `input`, `output` and `forward` at priority [`PRIORITY`]
//!   (`policy accept`), whose rules follow the engine's precedence
//!   (docs/rules.md): our two mark bits are cleared; loopback and the
//!   address allowlist accept (mark SKIP); bans drop; DNS queries (and
//!   `queue_all` protocols) go to user space whatever their conntrack
//!   state; allowed ports and protocols accept, handing new connections
//!   to user space; blocked addresses, ports and protocols drop, handing a
//!   rate-limited share of new connections to user space for logging;
//!   other new connections go to user space (TCP and UDP only, unless
//!   composite rules or a default policy of drop need every protocol;
//!   outbound only when those need it); the rest (established, related)
//!   is accepted. Rules on empty sets are left out;
//! - chains `allowed`, `blocked` and `to_user` that those rules jump to
//!   (and `nfqueue` on the xt path, below).
//!
//! The peer is the source in `input`, the destination in `output`, either
//! end in `forward` (as in the engine). [`KernelPlan::ruleset_text`] shows
//! the whole script.
//!
//! # How packets reach user space
//!
//! One NFQUEUE number for every hook (the queued packet's hook tells the
//! direction). [`Firewall::probe`] finds out, in this order:
//!
//! 1. whether this kernel has nft's `queue` statement
//!    ([`QueuePath::NftQueue`]): `to_user` queues;
//! 2. if not, whether it takes xtables' `NFQUEUE` target in an `inet`
//!    table (nft_compat, as iptables-nft uses it; Debian's 6.x kernels
//!    do): `to_user` jumps to our chain `nfqueue`, whose one rule (a
//!    counter and the target) is written over netlink, since `nft` cannot
//!    write xt targets ([`QueuePath::XtQueue`], module `xtqueue`);
//! 3. if not, our chains mark the packet and one jump of ours in
//!    iptables-nft's `security` INPUT, FORWARD and OUTPUT chains (IPv4
//!    and IPv6) queues marked packets ([`QueuePath::IptablesNfqueue`],
//!    module [`iptables`]).
//!
//! Fail-open (the default) queues with `bypass`, so a dead daemon never
//! cuts the host off; fail-closed drops (on the xt path also while the
//! `nfqueue` rule is missing).
//!
//! # Guarantees
//!
//! - **Only our objects are touched**: our table, our iptables chain and our
//!   commented jumps to it. Nothing else is flushed or edited.
//! - **Every change is one transaction**: install (which first removes what
//!   a crashed run left), update, ban, unban and teardown are each one
//!   `nft -f -` call (and, where the queue rule needs it, one netlink
//!   transaction for the xt rule or one `iptables-restore` per family for
//!   the fallback). A failed change leaves the previous state.
//! - **Dropping a [`Firewall`] leaves the rules in place** (a daemon that
//!   dies keeps its fail-open or fail-closed behaviour); call
//!   [`Firewall::teardown`]. The next [`Firewall::install`] or
//!   [`Firewall::remove_leftovers`] removes leftovers.
//! - The library runs its commands, and opens its netlink sockets, through a
//!   [`Runner`] ([`SystemRunner`]: the calling thread's network namespace);
//!   tests inject one that does both inside a test namespace.
//!
//! # Cost
//!
//! One `nft` call takes 3-5 ms, so everything is batched. A plan with
//! 100,000 prefixes loads in one transaction in about a second (the live
//! test `load_100k_cidrs` prints the figures). Bans stay at one 5 ms call
//! beside such lists: they are written as `add set ban4 { ...; elements =
//! {...} }`, which nft 1.0.6 runs without first reading every interval
//! set's elements back from the kernel, as it does for `add element`,
//! `delete element` and `list tables`.
//!
//! # Where held packets leave, and the host's own rules
//!
//! A packet the daemon accepts from NFQUEUE continues with the next hook
//! function: it skips the rest of the table that queued it, never the
//! others. On the nft and xt paths it leaves from our table (priority
//! -10), so the host's own filter rules (priority 0) still see it after
//! portcullis' verdict. On the iptables fallback it leaves from `security`
//! (priority 50) rather than `filter` (0), so the host's filter rules have
//! already decided. Either way portcullis never lets through what they
//! drop; the xt path also spares every packet the fallback's second base
//! chain and mark match.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod conntrack;
pub mod crowdsec;
mod error;
mod flow_ender;
mod genid;
pub mod iptables;
mod nfnl;
mod nft;
mod plan;
pub mod ranges;
mod runner;
mod xtqueue;

pub use error::KernelError;
pub use flow_ender::FlowEnding;
pub use nfnl::open_netfilter_socket;
pub use nft::{BanEntry, MAX_BAN};
pub use plan::{
    KernelOptions, KernelPlan, QueuePath, Shape, DEFAULT_QUEUE_MARK, DEFAULT_SKIP_MARK,
    LOG_THRESHOLD, PRIORITY, TABLE,
};
pub use runner::{Runner, SystemRunner};
pub use xtqueue::QUEUE_CHAIN;

use flow_ender::FlowEnder;
use iptables::Family;
use nfnl::Nfnl;
use runner::run;
use xtqueue::XtQueue;

/// What this kernel and this system offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// `nft --version`, e.g. `nftables v1.0.6 (Lester Gooch #5)`.
    pub nft_version: String,
    /// The kernel has nft's `queue` statement (CONFIG_NFT_QUEUE).
    pub nft_queue: bool,
    /// Sets can count packets per element (ban sets get `counter`).
    pub set_counters: bool,
    /// Adding an element that exists sets its new timeout (recent kernels;
    /// 6.18 here does): a ban or unban is then one `add`. Older kernels
    /// keep the old timeout, so bans are refreshed with add + delete + add
    /// (and nft 1.0.6's `delete element` first reads every interval set:
    /// most of a second beside 100,000 listed prefixes).
    pub timeout_update: bool,
    /// The kernel takes xtables' `NFQUEUE` target in an `inet` table
    /// (nft_compat, xt_NFQUEUE), written over the runner's netlink socket;
    /// probed only without [`Capabilities::nft_queue`].
    pub xt_queue: bool,
    /// ctnetlink finds conntrack entries by address (a filtered dump) and
    /// deletes them, over the runner's netlink socket: a ban then ends its
    /// peer's connections that way ([`Shape::bans_end_flows`]).
    pub conntrack_delete: bool,
    /// `iptables`, `ip6tables` and their `-restore` programs are installed
    /// (needed only without the two above).
    pub iptables: bool,
}

impl Capabilities {
    /// The queue path an install will use.
    pub fn queue_path(&self) -> Result<QueuePath, KernelError> {
        if self.nft_queue {
            Ok(QueuePath::NftQueue)
        } else if self.xt_queue {
            Ok(QueuePath::XtQueue)
        } else if self.iptables {
            Ok(QueuePath::IptablesNfqueue)
        } else {
            Err(KernelError::NoQueuePath(
                "iptables is not installed for the fallback: apt-get install iptables".into(),
            ))
        }
    }

    /// How an install draws its table here.
    pub fn shape(&self) -> Result<Shape, KernelError> {
        Ok(Shape {
            path: self.queue_path()?,
            ban_counters: self.set_counters,
            bans_end_flows: self.conntrack_delete,
        })
    }
}

/// What [`Firewall::install`] or the last [`Firewall::update`] put in place
/// that later calls depend on.
/// What of ours [`Firewall::check`] found missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    /// The table, or its chains' rules.
    pub table: bool,
    /// The xt `NFQUEUE` rule in chain `nfqueue` ([`QueuePath::XtQueue`]).
    pub queue_rule: bool,
    /// Our iptables chain, its NFQUEUE rule or a jump to it.
    pub iptables: bool,
    /// Each missing object by name: `table` (no `table inet portcullis`),
    /// `chain:input` (the table without its chain), `rules:input` (the
    /// chain, flushed), `chain:nfqueue` and `queue_rule` (the xt path's
    /// chain, its rule), and on the iptables path per family (`ipv4`,
    /// `ipv6`) `iptables_chain:ipv4`, `iptables_rule:ipv4` (its NFQUEUE
    /// rule) and `iptables_jump:ipv4:INPUT` (a hook's jump to it).
    pub missing: Vec<String>,
}

impl Damage {
    pub fn any(&self) -> bool {
        self.table || self.queue_rule || self.iptables
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    queue_num: u16,
    fail_open: bool,
    queue_mark: u32,
    /// Something is held ([`KernelPlan::holds`]): on the iptables path,
    /// our iptables chain and jumps exist; on the xt path, the queue rule.
    holds: bool,
}

impl Applied {
    fn xt_queue(&self) -> XtQueue {
        XtQueue {
            num: self.queue_num,
            bypass: self.fail_open,
        }
    }

    fn of(plan: &KernelPlan) -> Self {
        Self {
            queue_num: plan.queue_num,
            fail_open: plan.fail_open,
            queue_mark: plan.queue_mark,
            holds: plan.holds(),
        }
    }
}

/// Our rules, installed. See the crate docs.
#[derive(Debug)]
pub struct Firewall {
    runner: Arc<dyn Runner>,
    caps: Capabilities,
    shape: Shape,
    applied: Mutex<Applied>,
    /// iptables-nft `security` tables (by family) that did not exist before
    /// our install: removed again at teardown if nothing else is in them.
    created_tables: Mutex<Vec<Family>>,
    /// The ruleset generation, when watched ([`Firewall::watch_generation`]).
    generation: Mutex<GenWatch>,
    /// The netlink socket for the xt queue rule ([`QueuePath::XtQueue`]),
    /// opened on first use.
    nl: Mutex<Option<Nfnl>>,
    /// Where bans end flows ([`Shape::bans_end_flows`]): the thread that
    /// does, with a netlink socket of its own (a long dump of a full
    /// conntrack table delays neither the next ban nor a read of the
    /// queue rule's counter).
    ender: Option<FlowEnder>,
    /// The queue rule's counter as last read, and what earlier rules
    /// (before it was put back or rewritten) had counted:
    /// [`Firewall::queue_rule_packets`] stays a count since install.
    queue_hits: Mutex<QueueHits>,
}

#[derive(Debug, Default)]
struct QueueHits {
    base: u64,
    last: u64,
}

/// The ruleset generation's socket and the generation at which the last
/// check found our rules whole.
#[derive(Debug, Default)]
struct GenWatch {
    source: Option<genid::Generation>,
    clean: Option<u32>,
}

impl Firewall {
    /// What this system offers, checked in the current network namespace.
    /// Kernel features are checked with `nft -c` (the kernel validates a
    /// throwaway table; nothing is created), except the timeout update,
    /// which needs a real element: a table `inet portcullis_probe` without
    /// chains (it sees no packets) exists for the few milliseconds of that
    /// check. Fails if `nft` is missing, not permitted, or the kernel lacks
    /// nf_tables or a feature every install needs.
    pub fn probe() -> Result<Capabilities, KernelError> {
        Self::probe_with(&SystemRunner::default())
    }

    /// [`Firewall::probe`] through `runner`.
    pub fn probe_with(runner: &dyn Runner) -> Result<Capabilities, KernelError> {
        let version = run(runner, "nft", &["--version"], None)?.trim().to_string();
        let check = |script: &str| run(runner, "nft", &["-c", "-f", "-"], Some(script));
        let set_counters = match check(&nft::probe_basic(true)) {
            Ok(_) => true,
            Err(first) => match check(&nft::probe_basic(false)) {
                Ok(_) => false,
                Err(_) => return Err(explain_basic_failure(first)),
            },
        };
        let nft_queue = check(nft::probe_queue()).is_ok();
        let xt_queue = !nft_queue && probe_xt_queue(runner);
        let timeout_update = probe_timeout_update(runner)?;
        Ok(Capabilities {
            nft_version: version,
            nft_queue,
            xt_queue,
            conntrack_delete: probe_conntrack_delete(runner),
            set_counters,
            timeout_update,
            iptables: iptables_installed(runner),
        })
    }

    /// Probes, removes leftovers of a crashed run, and installs `plan`
    /// (the nft table in one transaction, then, on the iptables path, our
    /// iptables chain and jumps). If the iptables step fails, the table is
    /// removed again.
    pub fn install(plan: &KernelPlan) -> Result<Self, KernelError> {
        Self::install_with(plan, Arc::new(SystemRunner::default()))
    }

    /// From now on [`Firewall::check`] lists our rules only when the
    /// namespace's ruleset generation (one netlink request) moved since a
    /// check found them whole: any change to any table moves it, ours
    /// included. The socket comes from the runner
    /// ([`Runner::netfilter_socket`]).
    pub fn watch_generation(&self) -> std::io::Result<()> {
        let g = genid::Generation::new(self.runner.netfilter_socket()?)?;
        if let Ok(mut w) = self.generation.lock() {
            *w = GenWatch {
                source: Some(g),
                clean: None,
            };
        }
        Ok(())
    }

    /// [`Firewall::install`] through `runner`.
    pub fn install_with(plan: &KernelPlan, runner: Arc<dyn Runner>) -> Result<Self, KernelError> {
        plan.validate()?;
        let caps = Self::probe_with(runner.as_ref())?;
        let shape = caps.shape()?;
        let path = shape.path;
        let script = nft::install_script(plan, shape);
        let ender = shape
            .bans_end_flows
            .then(|| FlowEnder::start(Arc::clone(&runner)))
            .transpose()
            .map_err(|source| KernelError::Netlink {
                what: "start the thread that ends banned peers' flows",
                source,
            })?;
        run(runner.as_ref(), "nft", &["-f", "-"], Some(&script))?;
        let fw = Self {
            runner,
            caps,
            shape,
            applied: Mutex::new(Applied::of(plan)),
            created_tables: Mutex::new(Vec::new()),
            generation: Mutex::new(GenWatch::default()),
            nl: Mutex::new(None),
            ender,
            queue_hits: Mutex::new(QueueHits::default()),
        };
        let r = fw.runner.as_ref();
        let applied = Applied::of(plan);
        let queue = match path {
            QueuePath::IptablesNfqueue if plan.holds() => fw.install_iptables_noting_tables(plan),
            // Leftovers of an earlier fallback run (before a kernel upgrade
            // or this version).
            _ if fw.caps.iptables => remove_iptables(r).map(drop),
            _ => Ok(()),
        }
        .and_then(|()| match path {
            QueuePath::XtQueue if plan.holds() => fw.put_xt_rule(&applied),
            _ => Ok(()),
        });
        if let Err(e) = queue {
            let _ = run(
                fw.runner.as_ref(),
                "nft",
                &["-f", "-"],
                Some(&nft::remove_table()),
            );
            return Err(e);
        }
        Ok(fw)
    }

    /// Makes our queue chain hold exactly the xt `NFQUEUE` rule for `a`
    /// (one netlink transaction).
    fn put_xt_rule(&self, a: &Applied) -> Result<(), KernelError> {
        let q = a.xt_queue();
        self.with_netlink("replace the xt NFQUEUE rule", |nl| {
            nl.transaction(|b| xtqueue::write_replace(b, q))
        })?;
        self.queue_rule_replaced();
        Ok(())
    }

    /// A new queue rule counts from zero: keep what the old one had
    /// counted when last read.
    fn queue_rule_replaced(&self) {
        if let Ok(mut h) = self.queue_hits.lock() {
            h.base = h.base.saturating_add(std::mem::take(&mut h.last));
        }
    }

    /// The rules of our queue chain: `None` if the chain (or the table)
    /// does not exist.
    fn xt_rules(&self) -> Result<Option<Vec<xtqueue::Seen>>, KernelError> {
        let dumped = self.with_netlink("list the queue chain", |nl| {
            let rules = match nl.dump(
                xtqueue::NFT_MSG_GETRULE,
                xtqueue::NFT_MSG_NEWRULE,
                nfnl::NFPROTO_INET,
                xtqueue::write_dump_filter,
            ) {
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(None),
                other => other?,
            };
            if !rules.is_empty() {
                return Ok(Some(rules));
            }
            // A dump filtered by a missing chain is merely empty: ask for
            // the chain itself.
            let (seq, answer) = nl.request(
                nfnl::nft_type(xtqueue::NFT_MSG_GETCHAIN),
                0,
                nfnl::NFPROTO_INET,
                xtqueue::write_chain_name,
            )?;
            match nfnl::error_of(&answer, seq).map_err(std::io::Error::from)? {
                Some(nix::libc::ENOENT) => Ok(None),
                Some(e) => Err(std::io::Error::from_raw_os_error(e)),
                None => Ok(Some(rules)),
            }
        })?;
        let Some(rules) = dumped else {
            return Ok(None);
        };
        rules
            .iter()
            .map(|r| xtqueue::parse_rule(r))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|e| KernelError::Netlink {
                what: "read the queue chain",
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
    }

    /// Runs `f` on the netlink socket, opening it (in the runner's
    /// namespace) on first use.
    fn with_netlink<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Nfnl) -> std::io::Result<T>,
    ) -> Result<T, KernelError> {
        let err = |source| KernelError::Netlink { what, source };
        let mut slot = self.nl.lock().unwrap_or_else(|e| e.into_inner());
        let nl = match slot.take() {
            Some(nl) => slot.insert(nl),
            None => slot.insert(
                self.runner
                    .netfilter_socket()
                    .and_then(Nfnl::new)
                    .map_err(err)?,
            ),
        };
        f(nl).map_err(err)
    }

    /// [`install_iptables`], noting which `security` tables it creates.
    fn install_iptables_noting_tables(&self, plan: &KernelPlan) -> Result<(), KernelError> {
        let r = self.runner.as_ref();
        let missing: Vec<Family> = Family::BOTH
            .into_iter()
            .filter(|f| !nft_table_exists(r, f.nft_family(), iptables::TABLE))
            .collect();
        let result = install_iptables(r, &Applied::of(plan));
        if let Ok(mut created) = self.created_tables.lock() {
            *created = missing;
        }
        result
    }

    /// iptables-nft leaves the `security` table it created for our jumps
    /// behind, with empty built-in chains that every packet still crosses.
    /// Removes each one our install created, if nobody has put anything in
    /// it since.
    fn drop_created_tables(&self) {
        let created = self
            .created_tables
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        let r = self.runner.as_ref();
        for fam in created {
            let listing = security_listing(r, fam);
            if listing.is_ok_and(|l| iptables::is_bare(&l)) {
                // Best effort: a table we cannot remove is only a cost.
                let _ = run(
                    r,
                    "nft",
                    &["delete", "table", fam.nft_family(), iptables::TABLE],
                    None,
                );
            }
        }
    }

    /// Whether everything of ours is still in the kernel: the table with
    /// its chains' rules, and on the iptables path our chain, its NFQUEUE
    /// rule and the three jumps in both families. Something else (`nft
    /// flush ruleset`, a firewall manager's reload, `iptables -t security
    /// -F`) may have removed them; then [`Firewall::repair`] puts them
    /// back. Two or three program runs (a few ms), or, once
    /// [`Firewall::watch_generation`] is on and nothing changed in the
    /// namespace's ruleset since a check found everything, one netlink
    /// request.
    pub fn check(&self) -> Result<Damage, KernelError> {
        // Read before the listing: a change made while it runs moves the
        // generation past this one, and the next check lists again.
        let generation = self.generation.lock().ok().and_then(|mut w| {
            let g = w.source.as_mut()?.read().ok()?;
            Some((g, w.clean == Some(g)))
        });
        if let Some((_, true)) = generation {
            return Ok(Damage::default());
        }
        let damage = self.check_listing()?;
        if let Ok(mut w) = self.generation.lock() {
            w.clean = generation.filter(|_| !damage.any()).map(|(g, _)| g);
        }
        Ok(damage)
    }

    /// [`Firewall::check`] by listing our objects.
    fn check_listing(&self) -> Result<Damage, KernelError> {
        let r = self.runner.as_ref();
        let holds = self.applied.lock().map_or(true, |a| a.holds);
        let mut missing = Vec::new();
        match run(r, "nft", &["list", "chain", "inet", TABLE, "input"], None) {
            // Our chain with its ban rules: not flushed.
            Ok(listing) => {
                if !listing.contains("@ban4") {
                    missing.push("rules:input".to_owned());
                }
            }
            Err(KernelError::Command { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                // The table or only its chain? One more call, on damage only.
                let table = run(r, "nft", &["list", "table", "inet", TABLE], None).is_ok();
                missing.push(if table { "chain:input" } else { "table" }.to_owned());
            }
            Err(e) => return Err(e),
        }
        let mut table = !missing.is_empty();
        let mut queue_rule = false;
        if self.shape.path == QueuePath::XtQueue && holds && !table {
            let want = self.applied.lock().map(|a| a.xt_queue()).ok();
            match self.xt_rules()? {
                None => {
                    missing.push("chain:nfqueue".to_owned());
                    table = true;
                }
                Some(rules) => {
                    if !rules.iter().any(|r| r.queue.is_some() && r.queue == want) {
                        missing.push("queue_rule".to_owned());
                        queue_rule = true;
                    }
                }
            }
        }
        let mut iptables = false;
        if self.shape.path == QueuePath::IptablesNfqueue && holds {
            for fam in Family::BOTH {
                let listing = security_listing(r, fam)?;
                let ours = iptables::parse(&listing);
                let name = match fam {
                    Family::V4 => "ipv4",
                    Family::V6 => "ipv6",
                };
                if !ours.chain {
                    missing.push(format!("iptables_chain:{name}"));
                }
                let queued = listing.lines().any(|l| {
                    l.starts_with(&format!("-A {} ", iptables::CHAIN)) && l.contains("NFQUEUE")
                });
                if ours.chain && !queued {
                    missing.push(format!("iptables_rule:{name}"));
                }
                let jumps: Vec<&str> = ours.jumps.iter().map(|(c, _)| c.as_str()).collect();
                for hook in ["INPUT", "FORWARD", "OUTPUT"] {
                    if !jumps.contains(&hook) {
                        missing.push(format!("iptables_jump:{name}:{hook}"));
                    }
                }
                iptables |= !ours.chain
                    || !queued
                    || ["INPUT", "FORWARD", "OUTPUT"]
                        .iter()
                        .any(|c| !jumps.contains(c));
            }
        }
        Ok(Damage {
            table,
            queue_rule,
            iptables,
            missing,
        })
    }

    /// Puts back what [`Firewall::check`] found missing: the whole table
    /// from `plan` (in one transaction, replacing any remains) with `bans`
    /// (their remaining time), and our iptables objects.
    pub fn repair(
        &self,
        plan: &KernelPlan,
        damage: Damage,
        bans: &[(IpAddr, Duration)],
    ) -> Result<(), KernelError> {
        let r = self.runner.as_ref();
        if damage.table {
            let script = nft::install_script(plan, self.shape);
            run(r, "nft", &["-f", "-"], Some(&script))?;
            let live: Vec<(IpAddr, Duration)> =
                bans.iter().copied().filter(|(_, d)| !d.is_zero()).collect();
            if !live.is_empty() {
                self.ban(&live)?;
            }
        }
        if (damage.table || damage.queue_rule)
            && self.shape.path == QueuePath::XtQueue
            && plan.holds()
        {
            self.put_xt_rule(&Applied::of(plan))?;
        }
        if damage.iptables {
            install_iptables(r, &Applied::of(plan))?;
            self.queue_rule_replaced();
        }
        Ok(())
    }

    /// How queued packets reach user space.
    pub fn queue_path(&self) -> QueuePath {
        self.shape.path
    }

    /// Packets our rules have sent toward NFQUEUE since install, from the
    /// queue rule's counter: the xt rule's (one netlink dump) or the
    /// iptables NFQUEUE rules' (IPv4 and IPv6, two programs); a rule put
    /// back or rewritten adds to what the old one had counted when last
    /// read. With fail-open, packets the kernel
    /// lets past a full queue show up here and in no queue counter: this
    /// minus what the daemon received is what passed uninspected. `None`
    /// on the nft `queue` path (not counted there yet).
    pub fn queue_rule_packets(&self) -> Result<Option<u64>, KernelError> {
        let holds = self.applied.lock().map_or(true, |a| a.holds);
        if !holds {
            return Ok(None);
        }
        if self.shape.path == QueuePath::XtQueue {
            let rules = self.xt_rules()?.unwrap_or_default();
            let now: u64 = rules
                .iter()
                .filter(|r| r.queue.is_some())
                .filter_map(|r| r.packets)
                .sum();
            return Ok(Some(self.queue_hits_now(now)));
        }
        if self.shape.path != QueuePath::IptablesNfqueue {
            return Ok(None);
        }
        let mut total = 0;
        for fam in iptables::Family::BOTH {
            let listing = run(
                self.runner.as_ref(),
                fam.program(),
                &[
                    "-w",
                    "-t",
                    iptables::TABLE,
                    "-n",
                    "-v",
                    "-x",
                    "-L",
                    iptables::CHAIN,
                ],
                None,
            )?;
            total += iptables::queue_rule_packets(&listing);
        }
        Ok(Some(self.queue_hits_now(total)))
    }

    /// The count since install, given what the queue rule counts now.
    fn queue_hits_now(&self, now: u64) -> u64 {
        let mut h = self.queue_hits.lock().unwrap_or_else(|e| e.into_inner());
        h.last = now;
        h.base.saturating_add(now)
    }

    /// What [`Firewall::probe`] found at install time.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Replaces the lists and the chains with `plan`'s in one transaction;
    /// bans stay. On the iptables path, our NFQUEUE rule is rewritten too
    /// if the queue number, fail-open or the queue mark changed.
    pub fn update(&self, plan: &KernelPlan) -> Result<(), KernelError> {
        plan.validate()?;
        let script = nft::update_script(plan, self.shape);
        let new = Applied::of(plan);
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        self.nft_script(&script)?;
        if self.shape.path == QueuePath::XtQueue && new.holds && *applied != new {
            self.put_xt_rule(&new)?;
        }
        if self.shape.path == QueuePath::IptablesNfqueue && *applied != new {
            if new.holds && !applied.holds {
                self.install_iptables_noting_tables(plan)?;
                self.queue_rule_replaced();
            } else if new.holds {
                install_iptables(self.runner.as_ref(), &new)?;
                self.queue_rule_replaced();
            } else if applied.holds {
                remove_iptables(self.runner.as_ref())?;
                self.drop_created_tables();
            }
        }
        *applied = new;
        Ok(())
    }

    /// Bans each address for its duration, in one transaction; an address
    /// already banned gets the new duration (from now). Durations are
    /// capped at [`MAX_BAN`]; a zero duration is an error (it would mean
    /// "forever" to nft). If an address appears twice, the last wins.
    /// Where bans end flows ([`Shape::bans_end_flows`]), the banned
    /// addresses then go to the flow-ending thread, which deletes the
    /// conntrack entries of their connections without holding up this
    /// call or the next: [`Firewall::flow_ending`] says how that went
    /// (failures included), [`Firewall::settle_flows`] waits for it.
    pub fn ban(&self, bans: &[(IpAddr, Duration)]) -> Result<(), KernelError> {
        if let Some((addr, _)) = bans.iter().find(|(_, d)| d.is_zero()) {
            return Err(KernelError::InvalidBan {
                addr: *addr,
                reason: "a ban must last more than zero",
            });
        }
        let mut last: HashMap<IpAddr, usize> = HashMap::with_capacity(bans.len());
        for (i, (a, _)) in bans.iter().enumerate() {
            last.insert(*a, i);
        }
        let unique: Vec<(IpAddr, Duration)> = bans
            .iter()
            .enumerate()
            .filter(|(i, (a, _))| last.get(a) == Some(i))
            .map(|(_, b)| *b)
            .collect();
        if unique.is_empty() {
            return Ok(());
        }
        self.nft_script(&nft::ban_script(&unique, self.ban_sets()))?;
        self.end_flows(unique.iter().map(|(a, _)| *a).collect());
        Ok(())
    }

    /// Where bans end flows ([`Shape::bans_end_flows`]): hands `addrs` to
    /// the flow-ending thread. Called after the addresses are in their
    /// sets, so that no packet slips between.
    fn end_flows(&self, addrs: Vec<IpAddr>) {
        if let Some(e) = &self.ender {
            e.submit(conntrack::Doomed {
                addrs,
                ranges: Vec::new(),
            });
        }
    }

    /// What the flow-ending thread has done since install: `None` where
    /// bans do not end flows ([`Shape::bans_end_flows`]).
    pub fn flow_ending(&self) -> Option<FlowEnding> {
        self.ender.as_ref().map(FlowEnder::done)
    }

    /// Waits up to `timeout` until the flows of every ban so far have
    /// been through the flow-ending thread; its record then, or `None`
    /// (timed out, or bans do not end flows).
    pub fn settle_flows(&self, timeout: Duration) -> Option<FlowEnding> {
        self.ender.as_ref().and_then(|e| e.settle(timeout))
    }

    /// Makes the ban sets hold exactly `bans` (durations capped at
    /// [`MAX_BAN`]), in one transaction: flushes both sets and adds them.
    /// For when a batch failed and the sets may have drifted from the
    /// daemon's bans (elements missing, or stale ones filling the set).
    pub fn resync_bans(&self, bans: &[(IpAddr, Duration)]) -> Result<(), KernelError> {
        if let Some((addr, _)) = bans.iter().find(|(_, d)| d.is_zero()) {
            return Err(KernelError::InvalidBan {
                addr: *addr,
                reason: "a ban must last more than zero",
            });
        }
        let capped: Vec<(IpAddr, Duration)> =
            bans.iter().map(|(a, d)| (*a, (*d).min(MAX_BAN))).collect();
        self.nft_script(&nft::resync_script(&capped, self.ban_sets()))?;
        // A refused batch may have left some of them without their flows
        // ended.
        self.end_flows(capped.iter().map(|(a, _)| *a).collect());
        Ok(())
    }

    /// Lifts bans, in one transaction; addresses not banned are fine.
    pub fn unban(&self, addrs: &[IpAddr]) -> Result<(), KernelError> {
        let mut v = addrs.to_vec();
        v.sort_unstable();
        v.dedup();
        if v.is_empty() {
            return Ok(());
        }
        self.nft_script(&nft::unban_script(&v, self.ban_sets()))
    }

    /// The bans in the kernel, with time left and (with per-element
    /// counters) what they dropped. Two `nft -j list set` calls.
    pub fn bans(&self) -> Result<Vec<BanEntry>, KernelError> {
        let mut out = list_timed_set(self.runner.as_ref(), "ban4")?;
        out.extend(list_timed_set(self.runner.as_ref(), "ban6")?);
        Ok(out)
    }

    /// Removes exactly our objects: the iptables jumps and chain first (so
    /// nothing more is queued), then the table, which is removed even if
    /// the iptables step failed (the first error is returned).
    /// Idempotent.
    pub fn teardown(mut self) -> Result<(), KernelError> {
        // Stop ending flows first: the bans go with the table.
        drop(self.ender.take());
        let iptables = if self.caps.iptables {
            remove_iptables(self.runner.as_ref()).map(drop)
        } else {
            Ok(())
        };
        if iptables.is_ok() {
            self.drop_created_tables();
        }
        let table = self.nft_script(&nft::remove_table());
        iptables.and(table)
    }

    /// Removes whatever of ours exists in the current network namespace
    /// (after a crash). True if something was removed.
    pub fn remove_leftovers() -> Result<bool, KernelError> {
        Self::remove_leftovers_with(&SystemRunner::default())
    }

    /// [`Firewall::remove_leftovers`] through `runner`.
    pub fn remove_leftovers_with(runner: &dyn Runner) -> Result<bool, KernelError> {
        let table = table_present(runner)?;
        let removed_iptables = iptables_installed(runner) && remove_iptables(runner)?;
        if table {
            run(runner, "nft", &["-f", "-"], Some(&nft::remove_table()))?;
        }
        Ok(table || removed_iptables)
    }

    /// A handle on the CrowdSec decision sets (fleet mode) that another
    /// thread may own: it runs its `nft` calls through the same runner.
    /// The sets exist only when the installed plan has
    /// [`KernelPlan::crowdsec`].
    pub fn crowdsec_sets(&self) -> crowdsec::CrowdsecSets {
        crowdsec::CrowdsecSets::new(
            Arc::clone(&self.runner),
            self.caps.timeout_update,
            self.shape.bans_end_flows,
        )
    }

    fn ban_sets(&self) -> nft::BanSets {
        nft::BanSets {
            counters: self.caps.set_counters,
            timeout_update: self.caps.timeout_update,
        }
    }

    fn nft_script(&self, script: &str) -> Result<(), KernelError> {
        run(self.runner.as_ref(), "nft", &["-f", "-"], Some(script)).map(drop)
    }
}

/// `iptables -t security -S` (or `ip6tables`): everything in the table
/// our NFQUEUE rule lives in.
fn security_listing(runner: &dyn Runner, fam: Family) -> Result<String, KernelError> {
    run(
        runner,
        fam.program(),
        &["-w", "-t", iptables::TABLE, "-S"],
        None,
    )
}

/// Our iptables objects for both families, replacing any there are.
fn install_iptables(runner: &dyn Runner, a: &Applied) -> Result<(), KernelError> {
    for fam in Family::BOTH {
        let old = iptables::parse(&security_listing(runner, fam)?);
        let script = iptables::install_script(&old, a.queue_mark, a.queue_num, a.fail_open);
        run(runner, fam.restore(), &["-w", "--noflush"], Some(&script))?;
    }
    Ok(())
}

/// The live elements of our address set `set` (`ban4`, `cs6`, ...) with
/// their timeouts and counters. A lifted element (re-added with a 1 ms
/// timeout) is no longer matched but listed until the kernel's garbage
/// collection; its timeout reads as 0 s (every real one has >= 1 s), so it
/// is left out.
pub(crate) fn list_timed_set(runner: &dyn Runner, set: &str) -> Result<Vec<BanEntry>, KernelError> {
    let args = ["-j", "list", "set", "inet", TABLE, set];
    let json = run(runner, "nft", &args, None)?;
    let entries = nft::parse_ban_set(&json).map_err(|detail| KernelError::Output {
        command: format!("nft {}", args.join(" ")),
        detail,
    })?;
    Ok(entries
        .into_iter()
        .filter(|b| b.timeout != Some(Duration::ZERO))
        .collect())
}

/// Removes our iptables objects in both families; true if any existed.
fn remove_iptables(runner: &dyn Runner) -> Result<bool, KernelError> {
    let mut removed = false;
    for fam in Family::BOTH {
        let old = iptables::parse(&security_listing(runner, fam)?);
        if let Some(script) = iptables::removal_script(&old) {
            run(runner, fam.restore(), &["-w", "--noflush"], Some(&script))?;
            removed = true;
        }
    }
    Ok(removed)
}

/// Whether anything of ours is installed in the current network namespace:
/// our nft table, or (where iptables is installed) our iptables chain or a
/// jump to it.
pub fn present() -> Result<bool, KernelError> {
    present_with(&SystemRunner::default())
}

/// [`present`] through `runner`.
pub fn present_with(runner: &dyn Runner) -> Result<bool, KernelError> {
    if table_present(runner)? {
        return Ok(true);
    }
    if iptables_installed(runner) {
        for fam in Family::BOTH {
            if !iptables::parse(&security_listing(runner, fam)?).is_empty() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether our table exists. Asks for the (small) ban set: `nft list
/// tables` would load every set's elements first (most of a second with
/// 100,000 listed prefixes).
/// Whether nft table `family name` exists (any error counts as no: the
/// caller only uses this to decide what it may clean up).
fn nft_table_exists(runner: &dyn Runner, family: &str, name: &str) -> bool {
    run(runner, "nft", &["list", "table", family, name], None).is_ok()
}

fn table_present(runner: &dyn Runner) -> Result<bool, KernelError> {
    match run(runner, "nft", &["list", "set", "inet", TABLE, "ban4"], None) {
        Ok(_) => Ok(true),
        Err(KernelError::Command { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Whether adding an existing element sets its new timeout (see
/// [`Capabilities::timeout_update`]), tried on a throwaway table.
fn probe_timeout_update(runner: &dyn Runner) -> Result<bool, KernelError> {
    let nft = |script: String| run(runner, "nft", &["-f", "-"], Some(&script));
    nft(nft::probe_timeout_update(1))?;
    let result = nft(nft::probe_timeout_update(2)).and_then(|_| {
        let args = ["-j", "list", "set", "inet", nft::PROBE_TABLE, "t"];
        run(runner, "nft", &args, None)
    });
    let removed = nft(nft::remove_probe_table());
    let json = result?;
    removed?;
    let elems = nft::parse_ban_set(&json).map_err(|detail| KernelError::Output {
        command: "nft -j list set inet portcullis_probe t".into(),
        detail,
    })?;
    Ok(elems.first().and_then(|e| e.timeout) == Some(Duration::from_secs(7200)))
}

/// Whether the kernel takes the xt `NFQUEUE` rule in an `inet` table: a
/// throwaway table with the rule, created and deleted in one netlink
/// transaction through the runner's socket (none: no).
fn probe_xt_queue(runner: &dyn Runner) -> bool {
    runner
        .netfilter_socket()
        .and_then(Nfnl::new)
        .and_then(|mut nl| nl.transaction(xtqueue::write_probe))
        .is_ok()
}

/// Whether ctnetlink answers a filtered dump in the runner's namespace
/// ([`Capabilities::conntrack_delete`]).
fn probe_conntrack_delete(runner: &dyn Runner) -> bool {
    runner
        .netfilter_socket()
        .and_then(Nfnl::new)
        .is_ok_and(|mut nl| conntrack::probe(&mut nl))
}

fn iptables_installed(runner: &dyn Runner) -> bool {
    [
        "iptables",
        "ip6tables",
        "iptables-restore",
        "ip6tables-restore",
    ]
    .into_iter()
    .all(|p| {
        runner
            .run(p, &["--version"], None)
            .is_ok_and(|o| o.status.success())
    })
}

/// The error for a kernel that refused the basic probe table.
fn explain_basic_failure(e: KernelError) -> KernelError {
    match e {
        KernelError::Command { stderr, .. } if stderr.contains("No such file or directory") => {
            KernelError::MissingFeature {
                feature:
                    "an nftables feature portcullis needs (nft_ct, nft_limit, nft_set_hash/rbtree, \
                          nf_conntrack: CONFIG_NFT_CT, CONFIG_NFT_LIMIT, CONFIG_NF_CONNTRACK)",
                detail: stderr,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
