//! The install, ban and teardown flows against a fake [`Runner`] (no root
//! needed): which programs run, how often, with what input, and the errors
//! for missing programs and kernel features.

use super::*;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};

type Reply = (i32, &'static str, &'static str);
type Respond = dyn Fn(&str, &[&str], &str) -> Option<Reply> + Send + Sync;

/// Records calls; `respond` answers them (None: program not installed).
struct Fake {
    calls: Mutex<Vec<(String, String)>>,
    respond: Box<Respond>,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fake")
    }
}

impl Runner for Fake {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> io::Result<Output> {
        let input = String::from_utf8_lossy(stdin.unwrap_or_default()).into_owned();
        self.calls
            .lock()
            .unwrap()
            .push((format!("{program} {}", args.join(" ")), input.clone()));
        let (code, out, err) = (self.respond)(program, args, &input)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found"))?;
        Ok(Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: out.as_bytes().to_vec(),
            stderr: err.as_bytes().to_vec(),
        })
    }
}

impl Fake {
    fn new(
        respond: impl Fn(&str, &[&str], &str) -> Option<Reply> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            respond: Box::new(respond),
        })
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }

    fn commands(&self) -> Vec<String> {
        self.calls().into_iter().map(|(c, _)| c).collect()
    }

    fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }
}

const FRESH: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";

/// The probe element after the second `add` on a kernel that updates
/// timeouts.
const PROBE_UPDATED: &str = r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "t", "table": "portcullis_probe", "type": "ipv4_addr", "flags": ["timeout"], "elem": [{"elem": {"val": "198.18.255.254", "timeout": 7200, "expires": 7199}}]}}]}"#;
const NO_SUCH: &str = "Error: No such file or directory\nlist set inet portcullis ban4\n";

/// This machine: nft without `queue`, iptables present, nothing installed.
fn no_nft_queue(program: &str, args: &[&str], input: &str) -> Option<Reply> {
    Some(match (program, args) {
        ("nft", ["--version"]) => (0, "nftables v1.0.6 (Lester Gooch #5)\n", ""),
        ("nft", ["-c", "-f", "-"]) if input.contains("queue num") => (
            1,
            "",
            "Error: Could not process rule: No such file or directory\n",
        ),
        ("nft", ["-j", "list", "set", "inet", "portcullis_probe", "t"]) => (0, PROBE_UPDATED, ""),
        ("nft", ["list", "set", "inet", "portcullis", "ban4"]) => (1, "", NO_SUCH),
        ("nft", _) => (0, "", ""),
        (_, ["-w", "-t", "security", "-S"]) => (0, FRESH, ""),
        _ => (0, "", ""),
    })
}

/// The probe's calls.
const PROBE: [&str; 11] = [
    "nft --version",
    "nft -c -f -",
    "nft -c -f -",
    "nft -f -",
    "nft -f -",
    "nft -j list set inet portcullis_probe t",
    "nft -f -",
    "iptables --version",
    "ip6tables --version",
    "iptables-restore --version",
    "ip6tables-restore --version",
];

fn example_plan() -> KernelPlan {
    let export = portcullis_engine::rules::RuleExport {
        block_v4: vec!["198.18.0.0/29".parse().unwrap()],
        allow_v6: vec!["2001:2::3/128".parse().unwrap()],
        block_ports: vec![(23, 23)],
        ..Default::default()
    };
    KernelPlan::from_export(&export, &KernelOptions::default())
}

#[test]
fn install_batches_everything_and_falls_back_to_iptables() {
    let fake = Fake::new(no_nft_queue);
    let fw = Firewall::install_with(&example_plan(), fake.clone()).unwrap();
    assert_eq!(fw.queue_path(), QueuePath::IptablesNfqueue);
    assert!(fw.capabilities().set_counters && !fw.capabilities().nft_queue);
    assert!(fw.capabilities().timeout_update);
    let mut want: Vec<&str> = PROBE.to_vec();
    want.extend([
        "nft -f -",
        // Do the iptables-nft tables exist already (see teardown)?
        "nft list table ip security",
        "nft list table ip6 security",
        "iptables -w -t security -S",
        "iptables-restore -w --noflush",
        "ip6tables -w -t security -S",
        "ip6tables-restore -w --noflush",
    ]);
    assert_eq!(fake.commands(), want);
    let calls = fake.calls();
    // The kernel-feature probes create nothing: `-c`, on a table of their
    // own; the timeout probe removes its table.
    assert!(calls[1].1.starts_with("table inet portcullis_probe {"));
    assert_eq!(
        calls[6].1,
        "add table inet portcullis_probe\ndelete table inet portcullis_probe\n"
    );
    // One transaction: a leftover table goes, ours comes.
    let script = &calls[11].1;
    assert!(script.starts_with(
        "add table inet portcullis\ndelete table inet portcullis\n\
         add table inet portcullis_probe\ndelete table inet portcullis_probe\n\
         table inet portcullis {\n"
    ));
    assert!(script.contains("198.18.0.0/29"));
    assert!(script.contains("meta mark set meta mark | 0x20000000 accept"));
    assert!(calls[15].1.contains("--queue-num 0 --queue-bypass"));
    assert_eq!(calls[15].1, calls[17].1);

    // Bans: one call, one `add` per family (this kernel updates timeouts).
    fake.clear();
    fw.ban(&[
        ("198.18.0.9".parse().unwrap(), Duration::from_secs(5)),
        ("2001:2::9".parse().unwrap(), Duration::from_secs(7)),
        ("198.18.0.9".parse().unwrap(), Duration::from_secs(9)),
    ])
    .unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].1,
        "add set inet portcullis ban4 { type ipv4_addr; flags timeout; counter; gc-interval 100ms; elements = { 198.18.0.9 timeout 9s } }\n\
         add set inet portcullis ban6 { type ipv6_addr; flags timeout; counter; gc-interval 100ms; elements = { 2001:2::9 timeout 7s } }\n"
    );
    let e = fw
        .ban(&[("198.18.0.9".parse().unwrap(), Duration::ZERO)])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot ban 198.18.0.9: a ban must last more than zero"
    );
    fake.clear();
    fw.ban(&[]).unwrap();
    fw.unban(&[]).unwrap();
    assert!(fake.calls().is_empty());

    // Update: one nft call that flushes lists and chains, never bans;
    // iptables only when the queue settings change.
    fw.update(&example_plan()).unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].1.contains("flush set inet portcullis block4\n"));
    assert!(!calls[0].1.contains("flush set inet portcullis ban"));
    fake.clear();
    fw.update(&KernelPlan {
        queue_num: 5,
        ..example_plan()
    })
    .unwrap();
    assert_eq!(
        fake.commands(),
        [
            "nft -f -",
            "iptables -w -t security -S",
            "iptables-restore -w --noflush",
            "ip6tables -w -t security -S",
            "ip6tables-restore -w --noflush",
        ]
    );
    assert!(fake.calls()[2].1.contains("--queue-num 5 --queue-bypass"));

    // Teardown: iptables first (nothing of ours listed here, so no
    // restore), then the table.
    fake.clear();
    fw.teardown().unwrap();
    assert_eq!(
        fake.commands(),
        [
            "iptables -w -t security -S",
            "ip6tables -w -t security -S",
            "nft -f -"
        ]
    );
    assert_eq!(fake.calls()[2].1, nft::remove_table());
}

#[test]
fn install_with_nft_queue_needs_no_iptables() {
    let fake = Fake::new(|program, args, input| match (program, args) {
        ("nft", ["--version"]) => Some((0, "nftables v1.0.9\n", "")),
        ("nft", ["-c", "-f", "-"]) => Some((0, "", "")),
        ("nft", _) => no_nft_queue(program, args, input),
        // iptables not installed
        _ => None,
    });
    let mut plan = example_plan();
    plan.fail_open = false;
    plan.queue_num = 4;
    let fw = Firewall::install_with(&plan, fake.clone()).unwrap();
    assert_eq!(fw.queue_path(), QueuePath::NftQueue);
    let calls = fake.calls();
    let install = calls
        .iter()
        .find(|(c, input)| c == "nft -f -" && input.contains("table inet portcullis {"))
        .unwrap();
    assert!(install
        .1
        .contains("meta mark set meta mark | 0x20000000 queue num 4\n"));
    assert!(!fake.commands().iter().any(|c| c.contains("restore")));
}

#[test]
fn leftovers_are_removed_on_install_and_by_remove_leftovers() {
    const LEFT: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N PORTCULLIS\n\
        -A INPUT -m comment --comment portcullis -j PORTCULLIS\n\
        -A INPUT -s 198.18.0.99/32 -j DROP\n\
        -A PORTCULLIS -m mark --mark 0x20000000/0x20000000 -m comment --comment portcullis -j NFQUEUE --queue-num 0 --queue-bypass\n";
    let fake = Fake::new(|program, args, input| match (program, args) {
        (_, ["-w", "-t", "security", "-S"]) => Some((0, LEFT, "")),
        ("nft", ["list", "set", "inet", "portcullis", "ban4"]) => {
            Some((0, "table inet portcullis {}", ""))
        }
        _ => no_nft_queue(program, args, input),
    });
    let _fw = Firewall::install_with(&example_plan(), fake.clone()).unwrap();
    let calls = fake.calls();
    let restore = calls
        .iter()
        .find(|(c, _)| c.starts_with("iptables-restore -w"))
        .unwrap();
    assert_eq!(
        restore.1,
        "*security\n\
         :PORTCULLIS - [0:0]\n\
         -D INPUT -m comment --comment portcullis -j PORTCULLIS\n\
         -A PORTCULLIS -m mark --mark 0x20000000/0x20000000 -m comment --comment portcullis -j NFQUEUE --queue-num 0 --queue-bypass\n\
         -I INPUT 1 -m comment --comment portcullis -j PORTCULLIS\n\
         -I FORWARD 1 -m comment --comment portcullis -j PORTCULLIS\n\
         -I OUTPUT 1 -m comment --comment portcullis -j PORTCULLIS\n\
         COMMIT\n"
    );

    fake.clear();
    assert!(Firewall::remove_leftovers_with(fake.as_ref()).unwrap());
    let calls = fake.calls();
    let restore = calls
        .iter()
        .find(|(c, _)| c.starts_with("ip6tables-restore -w"))
        .unwrap();
    // The foreign DROP rule is not touched.
    assert_eq!(
        restore.1,
        "*security\n-D INPUT -m comment --comment portcullis -j PORTCULLIS\n-F PORTCULLIS\n-X PORTCULLIS\nCOMMIT\n"
    );
    assert_eq!(calls.last().unwrap().1, nft::remove_table());
    assert!(present_with(fake.as_ref()).unwrap());

    let clean = Fake::new(no_nft_queue);
    assert!(!Firewall::remove_leftovers_with(clean.as_ref()).unwrap());
    assert!(!present_with(clean.as_ref()).unwrap());
    // Nothing to remove: nothing written.
    assert!(!clean
        .commands()
        .iter()
        .any(|c| c.contains("-f -") || c.contains("restore -w")));
}

#[test]
fn a_failed_iptables_step_removes_the_table_again() {
    let fake = Fake::new(|program, args, input| {
        match (program, args) {
        ("iptables-restore", ["-w", "--noflush"]) => Some((
            2,
            "",
            "iptables-restore v1.8.9 (nf_tables): Extension NFQUEUE revision 0 not supported, missing kernel module?\n",
        )),
        _ => no_nft_queue(program, args, input),
    }
    });
    let e = Firewall::install_with(&example_plan(), fake.clone()).unwrap_err();
    assert!(matches!(e, KernelError::MissingFeature { .. }), "{e:?}");
    assert!(e.to_string().starts_with(
        "the kernel lacks the iptables NFQUEUE target (xt_NFQUEUE, CONFIG_NETFILTER_XT_TARGET_NFQUEUE)"
    ), "{e}");
    let calls = fake.calls();
    assert_eq!(
        calls.last().unwrap(),
        &("nft -f -".to_string(), nft::remove_table())
    );
}

#[test]
fn missing_programs_name_their_package() {
    // A search path without any program: nothing is installed.
    let empty = std::env::temp_dir().join(format!("pck-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let runner = SystemRunner::with_search_path(vec![empty.clone()]);
    let e = Firewall::probe_with(&runner).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`nft` is not installed: apt-get install nftables"
    );
    assert!(matches!(
        present_with(&runner),
        Err(KernelError::MissingProgram {
            package: "nftables",
            ..
        })
    ));
    let _ = std::fs::remove_dir(&empty);

    // nft without queue support and no iptables for the fallback.
    let fake = Fake::new(|program, args, input| match program {
        "nft" => no_nft_queue(program, args, input),
        _ => None,
    });
    let e = Firewall::install_with(&example_plan(), fake.clone()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no way to hand packets to user space: this kernel has no nft `queue` statement \
         (CONFIG_NFT_QUEUE), refuses the xt NFQUEUE target in an inet table \
         (CONFIG_NETFILTER_XT_TARGET_NFQUEUE, CONFIG_NFT_COMPAT) and iptables is not \
         installed for the fallback: apt-get install iptables"
    );
    // Nothing of ours was written (only the probe table came and went).
    assert!(!fake
        .calls()
        .iter()
        .any(|(_, input)| input.contains("table inet portcullis {")));
    // `ip netns exec` (the test runners) reports a missing program so.
    let e = runner::failure(
        "ip6tables",
        &["-S"],
        "exit status: 255",
        "exec of \"ip6tables\" failed: No such file or directory\n",
    );
    assert_eq!(
        e.to_string(),
        "`ip6tables` is not installed: apt-get install iptables"
    );
}

#[test]
fn kernel_and_permission_errors_are_explained() {
    let denied = Fake::new(|program, args, _| match (program, args) {
        ("nft", ["--version"]) => Some((0, "nftables v1.0.6\n", "")),
        _ => Some((
            1,
            "",
            "Error: Could not process rule: Operation not permitted\n",
        )),
    });
    let e = Firewall::probe_with(denied.as_ref()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("`nft` was refused: run as root or with CAP_NET_ADMIN"),
        "{e}"
    );

    let no_nf_tables = Fake::new(|program, args, _| match (program, args) {
        ("nft", ["--version"]) => Some((0, "nftables v1.0.6\n", "")),
        _ => Some((
            1,
            "",
            "Error: Could not process rule: Protocol not supported\n",
        )),
    });
    let e = Firewall::probe_with(no_nf_tables.as_ref()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the kernel lacks nf_tables (CONFIG_NF_TABLES)"),
        "{e}"
    );

    // A kernel without ct/limit/set support refuses the basic probe.
    let old = Fake::new(|program, args, _| match (program, args) {
        ("nft", ["--version"]) => Some((0, "nftables v1.0.6\n", "")),
        _ => Some((
            1,
            "",
            "Error: Could not process rule: No such file or directory\n",
        )),
    });
    let e = Firewall::probe_with(old.as_ref()).unwrap_err();
    assert!(e.to_string().contains("CONFIG_NFT_CT"), "{e}");

    // Per-element counters missing: ban sets without them.
    let no_counters = Fake::new(|program, args, input| match (program, args) {
        ("nft", ["-c", "-f", "-"]) if input.contains("timeout; counter;") => Some((
            1,
            "",
            "Error: Could not process rule: Operation not supported\n",
        )),
        _ => no_nft_queue(program, args, input),
    });
    let caps = Firewall::probe_with(no_counters.as_ref()).unwrap();
    assert!(!caps.set_counters && caps.iptables && !caps.nft_queue);
    assert_eq!(caps.queue_path().unwrap(), QueuePath::IptablesNfqueue);
    let _fw = Firewall::install_with(&example_plan(), no_counters.clone()).unwrap();
    let calls = no_counters.calls();
    let install = calls
        .iter()
        .find(|(c, input)| c == "nft -f -" && input.contains("table inet portcullis {"))
        .unwrap();
    assert!(install
        .1
        .contains("\tset ban4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\tsize 66560\n\t\tgc-interval 100ms\n\t}\n"));

    // Long stderr (nft quotes the input line) is cut.
    let e = runner::failure("nft", &["-f", "-"], "exit status: 1", &"x".repeat(100_000));
    assert!(e.to_string().len() < 2200, "{}", e.to_string().len());
}

#[test]
fn teardown_removes_the_table_even_if_iptables_fails() {
    let broken = Arc::new(AtomicBool::new(false));
    let b = broken.clone();
    let fake = Fake::new(move |program, args, input| match (program, args) {
        ("iptables", ["-w", "-t", "security", "-S"]) if b.load(Ordering::Relaxed) => {
            Some((1, "", "iptables: something broke\n"))
        }
        _ => no_nft_queue(program, args, input),
    });
    let fw = Firewall::install_with(&example_plan(), fake.clone()).unwrap();
    broken.store(true, Ordering::Relaxed);
    fake.clear();
    let e = fw.teardown().unwrap_err();
    assert!(e.to_string().contains("something broke"), "{e}");
    assert_eq!(fake.calls().last().unwrap().1, nft::remove_table());
}

#[test]
fn old_kernels_refresh_bans_with_delete() {
    const KEPT: &str = r#"{"nftables": [{"set": {"elem": [{"elem": {"val": "198.18.255.254", "timeout": 3600, "expires": 3599}}]}}]}"#;
    let fake = Fake::new(|program, args, input| match (program, args) {
        ("nft", ["-j", "list", "set", "inet", "portcullis_probe", "t"]) => Some((0, KEPT, "")),
        _ => no_nft_queue(program, args, input),
    });
    let fw = Firewall::install_with(&example_plan(), fake.clone()).unwrap();
    assert!(!fw.capabilities().timeout_update);
    fake.clear();
    fw.ban(&[("198.18.0.9".parse().unwrap(), Duration::from_secs(5))])
        .unwrap();
    fw.unban(&["198.18.0.9".parse().unwrap()]).unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[0]
        .1
        .contains("delete element inet portcullis ban4 { 198.18.0.9 }\nadd set"));
    assert!(calls[1]
        .1
        .ends_with("delete element inet portcullis ban4 { 198.18.0.9 }\n"));
}

#[test]
fn bans_are_read_from_both_sets() {
    let fake = Fake::new(|program, args, input| match (program, args) {
        ("nft", ["-j", "list", "set", "inet", "portcullis", "ban4"]) => Some((
            0,
            r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "ban4", "table": "portcullis", "type": "ipv4_addr", "flags": ["timeout"], "elem": [{"elem": {"val": "198.18.0.9", "timeout": 600, "expires": 599, "counter": {"packets": 2, "bytes": 168}}}]}}]}"#,
            "",
        )),
        ("nft", ["-j", "list", "set", "inet", "portcullis", "ban6"]) => Some((
            0,
            r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "ban6", "table": "portcullis", "type": "ipv6_addr", "flags": ["timeout"], "elem": [{"elem": {"val": "2001:2::9", "timeout": 60, "expires": 1}}]}}]}"#,
            "",
        )),
        _ => no_nft_queue(program, args, input),
    });
    let fw = Firewall::install_with(&example_plan(), fake.clone()).unwrap();
    let bans = fw.bans().unwrap();
    assert_eq!(bans.len(), 2);
    assert_eq!(bans[0].addr, "198.18.0.9".parse::<IpAddr>().unwrap());
    assert_eq!(bans[0].expires_in, Some(Duration::from_secs(599)));
    assert_eq!(bans[0].packets, Some(2));
    assert_eq!(bans[1].addr, "2001:2::9".parse::<IpAddr>().unwrap());
    assert_eq!(bans[1].timeout, Some(Duration::from_secs(60)));
    assert_eq!(bans[1].packets, None);
}

#[test]
fn queue_path_is_described() {
    assert_eq!(
        QueuePath::NftQueue.to_string(),
        "nftables `queue` statement"
    );
    assert_eq!(
        QueuePath::IptablesNfqueue.to_string(),
        "iptables NFQUEUE target on marked packets (this kernel has no nft `queue`)"
    );
}

#[test]
fn a_bans_only_plan_queues_nothing_and_installs_no_iptables_rule() {
    let cfg = portcullis_engine::config::Config::from_json_str(
        r#"{"block": {"ip": ["198.18.0.0/24"], "port": [23]}, "allow": {"ip": ["198.18.1.1"]}}"#,
        &portcullis_engine::config::NoLists,
    )
    .unwrap();
    let plan = KernelPlan::bans_only(&cfg, &KernelOptions::default());
    let text = plan.ruleset_text(QueuePath::IptablesNfqueue);
    for chain in ["input", "forward", "output"] {
        let body = text
            .split(&format!("chain {chain} {{"))
            .nth(1)
            .unwrap()
            .split('}')
            .next()
            .unwrap();
        assert!(body.contains("@ban4 counter drop"), "{body}");
        assert!(
            body.contains("@allow4"),
            "the allowlist is never banned: {body}"
        );
        for absent in ["to_user", "blocked", "allowed", "dport"] {
            assert!(!body.contains(absent), "{absent} in {chain}: {body}");
        }
    }
    assert!(!text.contains("to_user"), "{text}");
    // A reload flushes only the chains such a table has.
    let update = nft::update_script(&plan, Shape::of(QueuePath::IptablesNfqueue));
    assert!(
        update.contains("flush chain inet portcullis input\n"),
        "{update}"
    );
    assert!(!update.contains("to_user"), "{update}");
    let fake = Fake::new(no_nft_queue);
    let fw = Firewall::install_with(&plan, fake.clone()).unwrap();
    assert!(
        !fake.commands().iter().any(|c| c.contains("restore -w")),
        "no NFQUEUE rule: {:?}",
        fake.commands()
    );
    assert_eq!(fw.queue_rule_packets().unwrap(), None);
}

#[test]
fn teardown_removes_the_security_tables_it_created_only_if_bare() {
    // ip security did not exist before us and is bare after; ip6 security
    // did not exist either but someone added a rule to it meanwhile.
    let fake = Fake::new(|program, args, input| match (program, args) {
        ("nft", ["list", "table", _, "security"]) => Some((1, "", NO_SUCH)),
        ("ip6tables", ["-w", "-t", "security", "-S"]) => Some((
            0,
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-A INPUT -p tcp -j DROP\n",
            "",
        )),
        _ => no_nft_queue(program, args, input),
    });
    let fw = Firewall::install_with(&example_plan(), fake.clone()).unwrap();
    let before = fake.commands().len();
    fw.teardown().unwrap();
    let after: Vec<String> = fake.commands()[before..].to_vec();
    assert!(
        after.iter().any(|c| c == "nft delete table ip security"),
        "{after:?}"
    );
    assert!(
        !after.iter().any(|c| c == "nft delete table ip6 security"),
        "a table with someone's rule in it was deleted: {after:?}"
    );

    // Tables that existed before the install are never deleted.
    let fake = Fake::new(no_nft_queue);
    let fw = Firewall::install_with(&example_plan(), fake.clone()).unwrap();
    fw.teardown().unwrap();
    assert!(
        !fake
            .commands()
            .iter()
            .any(|c| c.starts_with("nft delete table")),
        "{:?}",
        fake.commands()
    );
}

#[test]
fn bare_listings_hold_only_accept_policies() {
    assert!(iptables::is_bare(
        "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
    ));
    assert!(iptables::is_bare(""));
    assert!(!iptables::is_bare("-P INPUT DROP\n"));
    assert!(!iptables::is_bare("-P INPUT ACCEPT\n-N MINE\n"));
    assert!(!iptables::is_bare("-P INPUT ACCEPT\n-A INPUT -j ACCEPT\n"));
}
