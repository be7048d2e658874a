//! Ending banned peers' flows off the ban's path.
//!
//! Finding a banned peer's conntrack entries costs a walk of the whole
//! conntrack table in the kernel (measured at 128,000 entries: 55-60 ms
//! for each filtered dump, 210 ms for a whole dump that hands them all to
//! us). A ban's set update must not wait for that, nor the next batch of
//! bans behind it: [`crate::Firewall::ban`] puts the addresses into their
//! sets (new connections are refused from then on) and hands them here.
//! One thread of our own ends their flows; what is handed over while it
//! works is gathered and ended in its next pass, so a flood of bans costs
//! one pass per table walk, not one per batch.
//!
//! **Invariant: bounded and never silent.** At most [`MAX_PENDING`]
//! addresses wait (more are counted as not ended); every pass's outcome is
//! counted in [`FlowEnding`], with the last failure's message.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conntrack::{self, Doomed};
use crate::nfnl::Nfnl;
use crate::runner::Runner;

/// Addresses (and, apart, ranges) that may wait for the next pass: sixteen
/// times the default ban table (`scan.max_bans`, 16,384).
pub(crate) const MAX_PENDING: usize = 1 << 18;

/// What the flow-ending thread has done since the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEnding {
    /// Passes run: each ends the flows of every address handed over
    /// before it began.
    pub passes: u64,
    /// Conntrack entries deleted.
    pub entries_deleted: u64,
    /// Passes that failed (their addresses' flows may go on).
    pub failed: u64,
    /// Addresses and ranges not ended because the most that may wait
    /// (262,144 of each) were waiting.
    pub overflowed: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    addrs: HashSet<IpAddr>,
    ranges: HashSet<(IpAddr, IpAddr)>,
    /// A pass is running.
    busy: bool,
    stop: bool,
    done: FlowEnding,
}

impl State {
    fn idle(&self) -> bool {
        !self.busy && self.addrs.is_empty() && self.ranges.is_empty()
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread (work or stop) and those waiting for it to idle.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The flow-ending thread; stopped (without finishing what waits) when
/// dropped.
#[derive(Debug)]
pub(crate) struct FlowEnder {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FlowEnder {
    /// Starts the thread; its netlink socket is opened through `runner` on
    /// first use (in the runner's namespace).
    pub(crate) fn start(runner: Arc<dyn Runner>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("flow-ender".into())
            .spawn(move || work(&s, runner.as_ref()))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands over addresses and ranges whose flows must end.
    pub(crate) fn submit(&self, doomed: Doomed) {
        if doomed.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        for a in doomed.addrs {
            if st.addrs.len() < MAX_PENDING || st.addrs.contains(&a) {
                st.addrs.insert(a);
            } else {
                st.done.overflowed += 1;
            }
        }
        for r in doomed.ranges {
            if st.ranges.len() < MAX_PENDING || st.ranges.contains(&r) {
                st.ranges.insert(r);
            } else {
                st.done.overflowed += 1;
            }
        }
        drop(st);
        self.shared.changed.notify_all();
    }

    /// What has been done so far.
    pub(crate) fn done(&self) -> FlowEnding {
        self.shared.lock().done.clone()
    }

    /// Waits until everything handed over has been through a pass (or
    /// `timeout` passed: `None`).
    pub(crate) fn settle(&self, timeout: Duration) -> Option<FlowEnding> {
        let end = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while !st.idle() {
            let left = end.checked_duration_since(Instant::now())?;
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Some(st.done.clone())
    }
}

impl Drop for FlowEnder {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            // A panic in the thread was already reported by the runtime.
            let _ = t.join();
        }
    }
}

fn work(shared: &Shared, runner: &dyn Runner) {
    let mut nl: Option<Nfnl> = None;
    loop {
        let doomed = {
            let mut st = shared.lock();
            while !st.stop && st.addrs.is_empty() && st.ranges.is_empty() {
                st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop {
                return;
            }
            st.busy = true;
            Doomed {
                addrs: std::mem::take(&mut st.addrs).into_iter().collect(),
                ranges: std::mem::take(&mut st.ranges).into_iter().collect(),
            }
        };
        let result = match nl.take() {
            Some(n) => Ok(n),
            None => runner.netfilter_socket().and_then(Nfnl::new),
        }
        .and_then(|mut n| {
            let r = conntrack::end_flows(&mut n, &doomed);
            nl = Some(n);
            r
        });
        let mut st = shared.lock();
        st.busy = false;
        st.done.passes += 1;
        match result {
            Ok(n) => st.done.entries_deleted += n,
            Err(e) => {
                st.done.failed += 1;
                st.done.last_error = Some(format!(
                    "ending the flows of {} banned addresses and {} ranges: {e}",
                    doomed.addrs.len(),
                    doomed.ranges.len()
                ));
            }
        }
        drop(st);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs nothing and opens no netlink socket (the trait's default).
    #[derive(Debug)]
    struct NoNetlink;

    impl Runner for NoNetlink {
        fn run(
            &self,
            program: &str,
            _: &[&str],
            _: Option<&[u8]>,
        ) -> std::io::Result<std::process::Output> {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                program.to_owned(),
            ))
        }
    }

    /// Without a netlink socket every pass fails, and says so: nothing is
    /// lost silently, and `settle` returns once the work is through.
    #[test]
    fn a_pass_that_cannot_open_its_socket_is_counted_with_its_error() {
        let ender = FlowEnder::start(Arc::new(NoNetlink)).expect("thread");
        ender.submit(Doomed {
            addrs: vec!["198.18.0.1".parse().unwrap(), "2001:2::1".parse().unwrap()],
            ranges: vec![],
        });
        let done = ender.settle(Duration::from_secs(10)).expect("settled");
        assert_eq!((done.passes, done.failed, done.entries_deleted), (1, 1, 0));
        let err = done.last_error.expect("the failure's message");
        assert!(err.contains("2 banned addresses"), "{err}");
        // Nothing handed over: nothing to do.
        ender.submit(Doomed::default());
        assert_eq!(ender.settle(Duration::from_secs(1)).unwrap().passes, 1);
    }

    #[test]
    fn addresses_beyond_the_bound_are_counted_not_kept() {
        let ender = FlowEnder {
            shared: Arc::new(Shared::default()),
            thread: None,
        };
        let many: Vec<IpAddr> = (0..MAX_PENDING as u32 + 3)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        ender.submit(Doomed {
            addrs: many.clone(),
            ranges: vec![],
        });
        // The same addresses again cost nothing more.
        ender.submit(Doomed {
            addrs: many[..10].to_vec(),
            ranges: vec![],
        });
        let st = ender.shared.lock();
        assert_eq!(st.addrs.len(), MAX_PENDING);
        assert_eq!(st.done.overflowed, 3);
    }
}
