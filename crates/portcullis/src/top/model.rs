//! What `portcullis top` knows between frames, without any terminal code:
//! the latest [`TopView`], rates from the last two snapshots and their
//! history, the selection, the filter and what the keys asked for. Pure
//! state, so the key handling is tested without a terminal.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use crate::status::Status;
use crate::top_view::{ScanView, TopBan, TopPort, TopSource, TopView};

/// Samples of rate history kept (the widest sparkline shows this many).
pub const HISTORY: usize = 512;

/// A key, as far as `top` cares (the terminal's events are mapped to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    Tab,
    Enter,
    Esc,
    Backspace,
    /// Ctrl-C: quits whatever is going on.
    Interrupt,
}

/// Which list the selection moves in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Sources,
    Bans,
}

/// A change the user confirmed, for the caller to send to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    None,
    Quit,
    Ban(IpAddr),
    Unban(IpAddr),
}

/// What the keys currently do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Normal,
    /// Typing a filter (the text so far).
    Filter(String),
    /// Waiting for y/n.
    Confirm(Command),
    Help,
}

/// Per-second rates between the last two snapshots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub packets: f64,
    pub drops: f64,
    pub dns_queries: f64,
    pub dns_blocked: f64,
    /// Drop reasons with a non-zero rate, largest first.
    pub drop_reasons: Vec<(String, f64)>,
}

/// The state of the view.
#[derive(Debug, Clone)]
pub struct Model {
    pub view: Option<TopView>,
    pub rates: Option<Rates>,
    /// Packets and drops per second, oldest first.
    pub packets_history: VecDeque<u64>,
    pub drops_history: VecDeque<u64>,
    pub focus: Focus,
    /// Selected row of each list (after filtering).
    selected: [usize; 2],
    /// Applied filter (substring, case-insensitive); empty: none.
    pub filter: String,
    pub input: Input,
    /// The last answer to a key (ban done, refused...).
    pub message: Option<String>,
    /// Why the last refresh failed (daemon gone...).
    pub error: Option<String>,
    pub interval: Duration,
}

impl Model {
    pub fn new(interval: Duration) -> Self {
        Self {
            view: None,
            rates: None,
            packets_history: VecDeque::with_capacity(HISTORY),
            drops_history: VecDeque::with_capacity(HISTORY),
            focus: Focus::Sources,
            selected: [0; 2],
            filter: String::new(),
            input: Input::Normal,
            message: None,
            error: None,
            interval,
        }
    }

    /// A new snapshot, `dt` after the previous one.
    pub fn update(&mut self, view: TopView, dt: Duration) {
        self.error = None;
        let restarted = self
            .view
            .as_ref()
            .is_some_and(|v| v.status.pid != view.status.pid);
        if restarted {
            self.rates = None;
            self.packets_history.clear();
            self.drops_history.clear();
        }
        if let Some(prev) = self.view.as_ref().filter(|_| !restarted) {
            let r = rates(&prev.status, &view.status, dt);
            push(&mut self.packets_history, r.packets);
            push(&mut self.drops_history, r.drops);
            self.rates = Some(r);
        }
        self.view = Some(view);
        self.clamp();
    }

    /// The refresh failed: keep the last frame, say why.
    pub fn fail(&mut self, error: String) {
        self.error = Some(error);
    }

    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// The dropped sources the filter lets through.
    pub fn sources(&self) -> Vec<&TopSource> {
        self.view
            .iter()
            .flat_map(|v| &v.drop_sources)
            .filter(|s| self.matches(&s.addr.to_string()))
            .collect()
    }

    pub fn ports(&self) -> Vec<&TopPort> {
        self.view
            .iter()
            .flat_map(|v| &v.drop_ports)
            .filter(|p| self.matches(&p.port.to_string()))
            .collect()
    }

    pub fn bans(&self) -> Vec<&TopBan> {
        self.view
            .iter()
            .flat_map(|v| &v.bans)
            .filter(|b| self.matches(&format!("{} {} {}", b.ban.addr, b.origin, b.ban.reason)))
            .collect()
    }

    pub fn scans(&self) -> Vec<&ScanView> {
        self.view
            .iter()
            .flat_map(|v| &v.scans)
            .filter(|s| self.matches(&format!("{} {} {}", s.src_ip, s.kind, s.pattern)))
            .collect()
    }

    fn len(&self, f: Focus) -> usize {
        match f {
            Focus::Sources => self.sources().len(),
            Focus::Bans => self.bans().len(),
        }
    }

    /// The selected row of list `f` (None when it is empty).
    pub fn selected(&self, f: Focus) -> Option<usize> {
        let i = self.selected[f as usize];
        (i < self.len(f)).then_some(i)
    }

    /// The address the selection is on, in the focused list.
    pub fn selected_addr(&self) -> Option<IpAddr> {
        let i = self.selected(self.focus)?;
        match self.focus {
            Focus::Sources => self.sources().get(i).map(|s| s.addr),
            Focus::Bans => self.bans().get(i).map(|b| b.ban.addr),
        }
    }

    fn clamp(&mut self) {
        for f in [Focus::Sources, Focus::Bans] {
            let n = self.len(f);
            let s = &mut self.selected[f as usize];
            *s = (*s).min(n.saturating_sub(1));
        }
    }

    /// Handles one key; returns what the caller must do.
    pub fn key(&mut self, key: Key) -> Command {
        if key == Key::Interrupt {
            return Command::Quit;
        }
        match std::mem::replace(&mut self.input, Input::Normal) {
            Input::Help => Command::None,
            Input::Filter(mut text) => {
                match key {
                    Key::Enter => {
                        self.filter = text;
                        self.selected = [0; 2];
                        self.clamp();
                    }
                    Key::Esc => {}
                    Key::Backspace => {
                        text.pop();
                        self.input = Input::Filter(text);
                    }
                    Key::Char(c) if !c.is_control() && text.chars().count() < 64 => {
                        text.push(c);
                        self.input = Input::Filter(text);
                    }
                    _ => self.input = Input::Filter(text),
                }
                Command::None
            }
            Input::Confirm(cmd) => match key {
                Key::Char('y' | 'Y') => cmd,
                _ => {
                    self.message = Some("cancelled".into());
                    Command::None
                }
            },
            Input::Normal => self.normal_key(key),
        }
    }

    fn normal_key(&mut self, key: Key) -> Command {
        let f = self.focus as usize;
        match key {
            Key::Char('q') | Key::Esc if key == Key::Char('q') || self.filter.is_empty() => {
                return Command::Quit
            }
            // Esc with a filter set clears it first.
            Key::Esc => {
                self.filter.clear();
                self.clamp();
            }
            Key::Char('?') | Key::Char('h') => self.input = Input::Help,
            // A fresh filter (`/` then Enter clears it).
            Key::Char('/') => self.input = Input::Filter(String::new()),
            Key::Tab => {
                self.focus = match self.focus {
                    Focus::Sources => Focus::Bans,
                    Focus::Bans => Focus::Sources,
                }
            }
            Key::Up | Key::Char('k') => self.selected[f] = self.selected[f].saturating_sub(1),
            Key::Down | Key::Char('j') => {
                let n = self.len(self.focus);
                self.selected[f] = (self.selected[f] + 1).min(n.saturating_sub(1));
            }
            Key::Char('b') => match self.selected_addr() {
                Some(a) => self.input = Input::Confirm(Command::Ban(a)),
                None => self.message = Some("nothing selected to ban".into()),
            },
            Key::Char('u') => match self.selected_addr() {
                Some(a) => self.input = Input::Confirm(Command::Unban(a)),
                None => self.message = Some("nothing selected to unban".into()),
            },
            _ => {}
        }
        Command::None
    }
}

fn push(h: &mut VecDeque<u64>, v: f64) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    // Rates are shown as whole packets per second.
    h.push_back(v.round() as u64);
}

/// Rates from `a` to `b`, `dt` apart (counters that went backwards count
/// as zero).
fn rates(a: &Status, b: &Status, dt: Duration) -> Rates {
    let secs = dt.as_secs_f64().max(0.001);
    let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    let (pa, pb) = (&a.packets, &b.packets);
    let reason = |s: &Status, r: &str| s.packets.by_reason.get(r).copied().unwrap_or(0);
    let mut drop_reasons: Vec<(String, f64)> = DROP_REASONS
        .iter()
        .map(|r| (r.to_string(), per(reason(a, r), reason(b, r))))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    // `default` and `malformed` verdicts drop or accept as the policy
    // says, which the snapshot does not: what the named reasons leave of
    // the drops is theirs.
    let drops = per(pa.dropped, pb.dropped);
    let named: f64 = drop_reasons.iter().map(|(_, v)| v).sum();
    if drops - named >= 0.05 {
        drop_reasons.push(("default/malformed".to_owned(), drops - named));
    }
    drop_reasons.sort_by(|x, y| y.1.total_cmp(&x.1));
    Rates {
        packets: per(pa.packets, pb.packets),
        drops,
        dns_queries: per(pa.dns_queries, pb.dns_queries),
        dns_blocked: per(reason(a, "blocked_domain"), reason(b, "blocked_domain")),
        drop_reasons,
    }
}

/// The reasons that always drop (`default` and `malformed` follow the
/// policy; the rest always accept).
pub const DROP_REASONS: [&str; 5] = [
    "banned",
    "blocked_ip",
    "blocked_port",
    "blocked_protocol",
    "blocked_domain",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::BanView;

    pub fn view(pid: u32, packets: u64, dropped: u64) -> TopView {
        let mut v = TopView::default();
        v.status.pid = pid;
        v.status.packets.packets = packets;
        v.status.packets.dropped = dropped;
        v.status.packets.by_reason.insert("banned".into(), dropped);
        v.drop_sources = ["198.18.0.9", "198.18.0.10", "2001:2::7"]
            .iter()
            .map(|a| TopSource {
                addr: a.parse().unwrap(),
                drops: 5,
                error: 0,
            })
            .collect();
        v.bans = vec![TopBan {
            ban: BanView {
                addr: "198.18.0.66".parse().unwrap(),
                reason: "scan:syn".into(),
                since: "2026-12-06T07:00:00.000000Z".into(),
                until: "2026-12-06T07:10:00.000000Z".into(),
                seconds_left: 500,
                enforced: true,
            },
            origin: "scan".into(),
        }];
        v
    }

    #[test]
    fn rates_and_history_come_from_consecutive_snapshots() {
        let mut m = Model::new(Duration::from_secs(1));
        m.update(view(1, 100, 10), Duration::ZERO);
        assert!(m.rates.is_none(), "one snapshot has no rate");
        m.update(view(1, 300, 50), Duration::from_secs(2));
        let r = m.rates.clone().unwrap();
        assert_eq!((r.packets, r.drops), (100.0, 20.0));
        assert_eq!(r.drop_reasons, [("banned".to_owned(), 20.0)]);
        // Accepted by the default policy: not a drop reason; dropped by
        // it: the rest of the drops.
        let mut v = view(1, 500, 100);
        v.status.packets.by_reason.insert("default".into(), 1000);
        v.status.packets.by_reason.insert("banned".into(), 70);
        m.update(v, Duration::from_secs(1));
        let r = m.rates.clone().unwrap();
        assert_eq!(
            r.drop_reasons,
            [
                ("default/malformed".to_owned(), 30.0),
                ("banned".to_owned(), 20.0)
            ]
        );
        assert_eq!(m.packets_history, [100, 200]);
        // A restarted daemon (new pid): no rate across it.
        m.update(view(2, 5, 0), Duration::from_secs(1));
        assert!(m.rates.is_none());
        assert!(m.packets_history.is_empty());
        for i in 0..(HISTORY as u64 + 10) {
            m.update(view(2, 5 + i, 0), Duration::from_secs(1));
        }
        assert_eq!(m.packets_history.len(), HISTORY);
    }

    #[test]
    fn ban_and_unban_need_a_yes() {
        let mut m = Model::new(Duration::from_secs(1));
        m.update(view(1, 0, 0), Duration::ZERO);
        assert_eq!(m.key(Key::Down), Command::None);
        assert_eq!(m.selected_addr(), Some("198.18.0.10".parse().unwrap()));
        assert_eq!(m.key(Key::Char('b')), Command::None);
        assert_eq!(
            m.input,
            Input::Confirm(Command::Ban("198.18.0.10".parse().unwrap()))
        );
        assert_eq!(
            m.key(Key::Char('y')),
            Command::Ban("198.18.0.10".parse().unwrap())
        );
        // Anything but y cancels.
        m.key(Key::Tab);
        assert_eq!(m.focus, Focus::Bans);
        m.key(Key::Char('u'));
        assert_eq!(m.key(Key::Char('n')), Command::None);
        assert_eq!(m.message.as_deref(), Some("cancelled"));
        m.key(Key::Char('u'));
        assert_eq!(
            m.key(Key::Char('y')),
            Command::Unban("198.18.0.66".parse().unwrap())
        );
        assert_eq!(m.key(Key::Char('q')), Command::Quit);
    }

    #[test]
    fn the_filter_narrows_every_list_and_the_selection() {
        let mut m = Model::new(Duration::from_secs(1));
        m.update(view(1, 0, 0), Duration::ZERO);
        m.key(Key::Down);
        m.key(Key::Down);
        for k in "/2001".chars() {
            m.key(Key::Char(k));
        }
        // Not applied before Enter.
        assert_eq!(m.sources().len(), 3);
        m.key(Key::Enter);
        assert_eq!(m.filter, "2001");
        assert_eq!(m.sources().len(), 1);
        assert!(m.bans().is_empty());
        assert_eq!(m.selected_addr(), Some("2001:2::7".parse().unwrap()));
        // `/` starts afresh: `/` Enter clears the filter.
        m.key(Key::Char('/'));
        m.key(Key::Enter);
        assert_eq!(m.sources().len(), 3);
        for k in "/0.9".chars() {
            m.key(Key::Char(k));
        }
        m.key(Key::Enter);
        assert_eq!(m.sources().len(), 1);
        // Esc clears the filter; the next Esc quits.
        assert_eq!(m.key(Key::Esc), Command::None);
        assert!(m.filter.is_empty());
        assert_eq!(m.key(Key::Esc), Command::Quit);
        // In the bans list, nothing selected in an empty list.
        let mut m = Model::new(Duration::from_secs(1));
        m.key(Key::Char('b'));
        assert_eq!(m.message.as_deref(), Some("nothing selected to ban"));
    }
}
