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
//! A pass that fails (a netlink error) is tried again, with what arrived
//! meanwhile, after 1, 2, 4 and 8 s; after [`MAX_ATTEMPTS`] failed passes
//! its addresses are given up (the bans hold for new connections all the
//! same).
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

/// Passes over the same addresses before they are given up.
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// The wait before the first retry of a failed pass; doubled for each
/// further one.
const RETRY_FIRST: Duration = Duration::from_secs(1);

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
    /// Addresses and ranges given up after five failed passes.
    pub abandoned: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    addrs: HashSet<IpAddr>,
    ranges: HashSet<(IpAddr, IpAddr)>,
    /// A pass is running.
    busy: bool,
    /// Failed passes over what waits, and when to try again (`addrs` and
    /// `ranges` hold what failed, with what arrived since).
    attempts: u32,
    retry_at: Option<Instant>,
    stop: bool,
    done: FlowEnding,
}

impl State {
    fn waiting(&self) -> bool {
        !self.addrs.is_empty() || !self.ranges.is_empty()
    }

    fn idle(&self) -> bool {
        !self.busy && !self.waiting()
    }

    /// Adds `doomed` to what waits, up to [`MAX_PENDING`] of each kind
    /// (the rest is counted in `overflowed`).
    fn take_in(&mut self, doomed: Doomed) {
        for a in doomed.addrs {
            if self.addrs.len() < MAX_PENDING || self.addrs.contains(&a) {
                self.addrs.insert(a);
            } else {
                self.done.overflowed += 1;
            }
        }
        for r in doomed.ranges {
            if self.ranges.len() < MAX_PENDING || self.ranges.contains(&r) {
                self.ranges.insert(r);
            } else {
                self.done.overflowed += 1;
            }
        }
    }

    /// Takes back what a failed pass had: another pass after the backoff,
    /// or given up after [`MAX_ATTEMPTS`].
    fn failed(&mut self, doomed: Doomed, first_retry: Duration, now: Instant) {
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            self.done.abandoned += (doomed.addrs.len() + doomed.ranges.len()) as u64;
            self.attempts = 0;
            self.retry_at = None;
            return;
        }
        self.take_in(doomed);
        self.retry_at = Some(now + first_retry * (1 << (self.attempts - 1)));
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
        Self::start_with(runner, RETRY_FIRST)
    }

    /// [`FlowEnder::start`] with the first retry after `first_retry`.
    fn start_with(runner: Arc<dyn Runner>, first_retry: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("flow-ender".into())
            .spawn(move || work(&s, runner.as_ref(), first_retry))?;
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
        self.shared.lock().take_in(doomed);
        self.shared.changed.notify_all();
    }

    /// What has been done so far.
    pub(crate) fn done(&self) -> FlowEnding {
        self.shared.lock().done.clone()
    }

    /// Waits until everything handed over has been through a pass that
    /// worked or was given up (or `timeout` passed: `None`).
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

fn work(shared: &Shared, runner: &dyn Runner, first_retry: Duration) {
    let mut nl: Option<Nfnl> = None;
    loop {
        let doomed = {
            let mut st = shared.lock();
            // Work waits, and a failed pass's backoff (if any) is over.
            loop {
                if st.stop {
                    return;
                }
                let now = Instant::now();
                if !st.waiting() {
                    st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                } else if let Some(left) = st.retry_at.and_then(|at| at.checked_duration_since(now))
                {
                    st = shared
                        .changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                } else {
                    break;
                }
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
            Ok(n) => {
                st.done.entries_deleted += n;
                st.attempts = 0;
                st.retry_at = None;
            }
            Err(e) => {
                st.done.failed += 1;
                st.done.last_error = Some(format!(
                    "ending the flows of {} banned addresses and {} ranges: {e}",
                    doomed.addrs.len(),
                    doomed.ranges.len()
                ));
                st.failed(doomed, first_retry, Instant::now());
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

    /// Without a netlink socket every pass fails, and says so: it is
    /// tried again with backoff, then given up and counted; nothing is
    /// lost silently, and `settle` returns once the work is through.
    #[test]
    fn a_pass_that_cannot_open_its_socket_is_retried_then_given_up_and_counted() {
        let first = Duration::from_millis(20);
        let ender = FlowEnder::start_with(Arc::new(NoNetlink), first).expect("thread");
        let t = Instant::now();
        ender.submit(Doomed {
            addrs: vec!["198.18.0.1".parse().unwrap(), "2001:2::1".parse().unwrap()],
            ranges: vec![],
        });
        let done = ender.settle(Duration::from_secs(10)).expect("settled");
        let m = u64::from(MAX_ATTEMPTS);
        assert_eq!(
            (
                done.passes,
                done.failed,
                done.entries_deleted,
                done.abandoned
            ),
            (m, m, 0, 2)
        );
        // The backoff: 20 + 40 + 80 + 160 ms between the five passes.
        assert!(t.elapsed() >= first * 15, "{:?}", t.elapsed());
        let err = done.last_error.expect("the failure's message");
        assert!(err.contains("2 banned addresses"), "{err}");
        // Nothing handed over: nothing to do.
        ender.submit(Doomed::default());
        assert_eq!(ender.settle(Duration::from_secs(1)).unwrap().passes, m);
    }

    /// A failed pass keeps its addresses for the next, and each failure
    /// doubles the wait.
    #[test]
    fn a_failed_pass_keeps_its_addresses_for_the_retry() {
        let mut st = State::default();
        let now = Instant::now();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let fail = |st: &mut State| {
            let doomed = Doomed {
                addrs: vec![a],
                ranges: vec![],
            };
            st.failed(doomed, Duration::from_secs(1), now);
        };
        fail(&mut st);
        assert!(st.addrs.contains(&a) && !st.idle());
        assert_eq!(
            (st.attempts, st.retry_at),
            (1, Some(now + Duration::from_secs(1)))
        );
        st.addrs.clear();
        fail(&mut st);
        assert!(st.addrs.contains(&a));
        assert_eq!(st.retry_at, Some(now + Duration::from_secs(2)));
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
        let mut st = ender.shared.lock();
        assert_eq!(st.addrs.len(), MAX_PENDING);
        assert_eq!(st.done.overflowed, 3);
        // A failed pass taken back into a full queue stays in the bound.
        let failed: Vec<IpAddr> = (0..5u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)))
            .collect();
        st.failed(
            Doomed {
                addrs: failed,
                ranges: vec![],
            },
            Duration::from_secs(1),
            Instant::now(),
        );
        assert_eq!(st.addrs.len(), MAX_PENDING);
        assert_eq!(st.done.overflowed, 8);
    }
}
