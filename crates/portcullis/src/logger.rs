//! Operator messages: the backend behind the `log` facade (`log::warn!`
//! and friends), for what the daemon tells whoever runs it. Events are
//! not operator messages: they go to the event log ([`crate::output`]).
//!
//! - **Levels**: `error`, `warn`, `info`, `debug` (`--log-level` or
//!   `PORTCULLIS_LOG`; default `info`).
//! - **Rate limit per call site**: at most [`BURST`] messages from one
//!   `log::…!` line per [`WINDOW`]; the rest are counted and reported in
//!   one line, `suppressed N similar messages …`, when the window is over
//!   (at the next message, or at exit).
//! - **journald-friendly**: under systemd (`JOURNAL_STREAM` naming our
//!   stderr, or `INVOCATION_ID` set) each line starts with its sd-daemon
//!   priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug) and
//!   carries no timestamp or name (journald adds both). Elsewhere a plain
//!   line: `portcullis: warning: …`.
//!
//! Each message is written whole, in one `write` to stderr; a failed write
//! is ignored (stderr is the last place to report anything).
//!
//! **Invariant: bounded.** One rate-limit entry per call site, at most
//! [`MAX_SITES`] (a message from a site beyond that is passed unlimited
//! rather than lost: call sites are fixed in the code, so this does not
//! happen).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Messages from one call site per [`WINDOW`] before the rest are
/// suppressed (and counted).
pub const BURST: u32 = 10;
/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Rate-limit entries kept at most (one per call site).
pub const MAX_SITES: usize = 512;

/// The accepted `--log-level` / `PORTCULLIS_LOG` values.
pub const LEVELS: &str = "off, error, warn, info, debug, trace";

/// `--log-level` or `PORTCULLIS_LOG`: one of [`LEVELS`], any case.
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.trim()
        .parse::<LevelFilter>()
        .map_err(|_| format!("unknown log level {s:?}: expected one of {LEVELS}"))
}

/// How a line looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `portcullis: warning: message`.
    Plain,
    /// `<4>message`: journald reads the priority and adds time and name.
    Journal,
}

impl Style {
    /// [`Style::Journal`] when systemd runs us with stderr to the journal
    /// (`JOURNAL_STREAM` is `device:inode` of our stderr) or when systemd
    /// started us at all (`INVOCATION_ID`); else [`Style::Plain`].
    pub fn detect() -> Self {
        let journal = std::env::var("JOURNAL_STREAM").ok().is_some_and(|v| {
            stderr_id().is_some_and(|(dev, ino)| v.trim() == format!("{dev}:{ino}"))
        });
        if journal || std::env::var_os("INVOCATION_ID").is_some() {
            Self::Journal
        } else {
            Self::Plain
        }
    }
}

/// Device and inode of stderr.
fn stderr_id() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr()).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// One line (with its newline) for `msg` at `level`.
pub fn format_line(style: Style, level: Level, msg: &str) -> String {
    match style {
        Style::Journal => {
            let prio = match level {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            // One journal entry per line: a message that spans lines keeps
            // its priority on each.
            let mut out = String::with_capacity(msg.len() + 8);
            for l in msg.lines() {
                out.push_str(&format!("<{prio}>{l}\n"));
            }
            if out.is_empty() {
                out.push_str(&format!("<{prio}>\n"));
            }
            out
        }
        Style::Plain => {
            let tag = match level {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Info => "",
                Level::Debug | Level::Trace => "debug: ",
            };
            format!("portcullis: {tag}{msg}\n")
        }
    }
}

/// What the rate limit says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Write it.
    Emit,
    /// Count it, write nothing.
    Suppress,
}

#[derive(Debug, Clone)]
struct Site {
    start: Instant,
    sent: u32,
    suppressed: u64,
    level: Level,
}

/// The rate limit: per call site, [`BURST`] messages per [`WINDOW`].
#[derive(Debug, Default)]
pub struct Limiter {
    sites: HashMap<String, Site>,
}

/// Messages a site had suppressed when its window ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub site: String,
    pub level: Level,
    pub suppressed: u64,
}

impl Summary {
    /// The message that reports it.
    pub fn message(&self) -> String {
        format!(
            "suppressed {} similar messages in the last {} s ({})",
            self.suppressed,
            WINDOW.as_secs(),
            self.site
        )
    }
}

impl Limiter {
    /// Whether a message from `site` at `now` is written.
    pub fn check(&mut self, site: &str, level: Level, now: Instant) -> Pass {
        if let Some(s) = self.sites.get_mut(site) {
            if now.saturating_duration_since(s.start) >= WINDOW {
                // `due` reports what the old window held back first.
                *s = Site {
                    start: now,
                    sent: 0,
                    suppressed: s.suppressed,
                    level,
                };
            }
            if s.sent < BURST {
                s.sent += 1;
                Pass::Emit
            } else {
                s.suppressed += 1;
                s.level = level;
                Pass::Suppress
            }
        } else {
            if self.sites.len() < MAX_SITES {
                self.sites.insert(
                    site.to_owned(),
                    Site {
                        start: now,
                        sent: 1,
                        suppressed: 0,
                        level,
                    },
                );
            }
            Pass::Emit
        }
    }

    /// The sites whose suppressed messages are due to be reported: their
    /// window is over, or `all` (at exit). Their counts start again.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<Summary> {
        let mut out: Vec<Summary> = self
            .sites
            .iter_mut()
            .filter(|(_, s)| {
                s.suppressed > 0 && (all || now.saturating_duration_since(s.start) >= WINDOW)
            })
            .map(|(k, s)| {
                let n = std::mem::take(&mut s.suppressed);
                Summary {
                    site: k.clone(),
                    level: s.level,
                    suppressed: n,
                }
            })
            .collect();
        out.sort_by(|a, b| a.site.cmp(&b.site));
        out
    }
}

/// Where lines go: stderr, or a buffer in tests.
type Sink = Box<dyn Write + Send>;

/// The `log` backend.
pub struct Logger {
    max: LevelFilter,
    style: Style,
    limiter: Mutex<Limiter>,
    out: Mutex<Sink>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("max", &self.max)
            .field("style", &self.style)
            .finish_non_exhaustive()
    }
}

impl Logger {
    pub fn new(max: LevelFilter, style: Style, out: Sink) -> Self {
        Self {
            max,
            style,
            limiter: Mutex::new(Limiter::default()),
            out: Mutex::new(out),
        }
    }

    fn write(&self, text: &str) {
        if let Ok(mut out) = self.out.lock() {
            // Nowhere left to report a failed write to stderr.
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    fn summaries(&self, list: Vec<Summary>) {
        for s in list {
            self.write(&format_line(self.style, s.level, &s.message()));
        }
    }

    /// The message of `record` at `now`, through the rate limit.
    fn log_at(&self, record: &Record<'_>, now: Instant) {
        let site = format!(
            "{}:{}",
            record.file().unwrap_or(record.target()),
            record.line().unwrap_or(0)
        );
        let (pass, due) = match self.limiter.lock() {
            Ok(mut l) => {
                let due = l.due(now, false);
                (l.check(&site, record.level(), now), due)
            }
            // A panic while holding the lock: write without a limit.
            Err(_) => (Pass::Emit, Vec::new()),
        };
        self.summaries(due);
        if pass == Pass::Emit {
            let msg = record.args().to_string();
            self.write(&format_line(self.style, record.level(), &msg));
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.max
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.log_at(record, Instant::now());
        }
    }

    /// Reports what is still suppressed (at exit).
    fn flush(&self) {
        let due = match self.limiter.lock() {
            Ok(mut l) => l.due(Instant::now(), true),
            Err(_) => Vec::new(),
        };
        self.summaries(due);
    }
}

/// Installs the logger for the process: `flag` (`--log-level`) wins, else
/// `PORTCULLIS_LOG`, else `info`.
pub fn init(flag: Option<LevelFilter>) -> Result<(), String> {
    let max = match (flag, std::env::var("PORTCULLIS_LOG")) {
        (Some(l), _) => l,
        (None, Ok(v)) if !v.trim().is_empty() => {
            parse_level(&v).map_err(|e| format!("PORTCULLIS_LOG: {e}"))?
        }
        _ => LevelFilter::Info,
    };
    let logger = Logger::new(max, Style::detect(), Box::new(std::io::stderr()));
    log::set_boxed_logger(Box::new(logger)).map_err(|e| e.to_string())?;
    log::set_max_level(max);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use super::*;

    #[test]
    fn plain_lines_name_the_program_and_the_level() {
        let f = |l| format_line(Style::Plain, l, "rules put back");
        assert_eq!(f(Level::Error), "portcullis: error: rules put back\n");
        assert_eq!(f(Level::Warn), "portcullis: warning: rules put back\n");
        assert_eq!(f(Level::Info), "portcullis: rules put back\n");
        assert_eq!(f(Level::Debug), "portcullis: debug: rules put back\n");
    }

    #[test]
    fn journal_lines_carry_the_priority_and_nothing_else() {
        let f = |l| format_line(Style::Journal, l, "x y");
        assert_eq!(f(Level::Error), "<3>x y\n");
        assert_eq!(f(Level::Warn), "<4>x y\n");
        assert_eq!(f(Level::Info), "<6>x y\n");
        assert_eq!(f(Level::Debug), "<7>x y\n");
        // Each line of a long message is an entry of the same priority.
        assert_eq!(
            format_line(Style::Journal, Level::Warn, "a\nb"),
            "<4>a\n<4>b\n"
        );
    }

    #[test]
    fn levels_parse_and_a_bad_one_says_what_is_accepted() {
        assert_eq!(parse_level("debug"), Ok(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Ok(LevelFilter::Warn));
        assert_eq!(parse_level("off"), Ok(LevelFilter::Off));
        let e = parse_level("loud").unwrap_err();
        assert!(e.contains("\"loud\"") && e.contains(LEVELS), "{e}");
    }

    #[test]
    fn a_site_gets_a_burst_per_window_then_one_summary() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let passes: Vec<Pass> = (0..25)
            .map(|i| l.check("a.rs:1", Level::Warn, t0 + Duration::from_millis(i)))
            .collect();
        assert!(passes[..BURST as usize].iter().all(|p| *p == Pass::Emit));
        assert!(passes[BURST as usize..]
            .iter()
            .all(|p| *p == Pass::Suppress));
        // Another site is not limited by the first.
        assert_eq!(l.check("b.rs:9", Level::Error, t0), Pass::Emit);
        // Nothing due within the window.
        assert!(l.due(t0 + Duration::from_secs(59), false).is_empty());
        let due = l.due(t0 + WINDOW, false);
        assert_eq!(
            due,
            [Summary {
                site: "a.rs:1".into(),
                level: Level::Warn,
                suppressed: 15
            }]
        );
        assert!(due[0].message().contains("suppressed 15 similar messages"));
        // Reported once; a new window passes a new burst.
        assert!(l.due(t0 + WINDOW, true).is_empty());
        assert_eq!(l.check("a.rs:1", Level::Warn, t0 + WINDOW), Pass::Emit);
    }

    /// A sink the test reads back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn record<'a>(level: Level, line: u32, args: std::fmt::Arguments<'a>) -> Record<'a> {
        Record::builder()
            .level(level)
            .file(Some("src/kernel_thread.rs"))
            .line(Some(line))
            .args(args)
            .build()
    }

    #[test]
    fn a_message_every_20_ms_for_a_minute_gives_a_burst_and_one_summary() {
        let buf = Buf::default();
        let logger = Logger::new(LevelFilter::Info, Style::Plain, Box::new(buf.clone()));
        let t0 = Instant::now();
        // 3,000 failures 20 ms apart from one site, then one more after the
        // window: BURST lines, the summary, the new one.
        for i in 0..3_000u64 {
            logger.log_at(
                &record(Level::Error, 7, format_args!("adding bans failed")),
                t0 + Duration::from_millis(20 * i),
            );
        }
        logger.log_at(
            &record(Level::Error, 7, format_args!("adding bans failed")),
            t0 + WINDOW,
        );
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), BURST as usize + 2, "{text}");
        assert!(lines[..BURST as usize]
            .iter()
            .all(|l| *l == "portcullis: error: adding bans failed"));
        assert_eq!(
            lines[BURST as usize],
            format!(
                "portcullis: error: suppressed {} similar messages in the last 60 s (src/kernel_thread.rs:7)",
                3_000 - BURST
            )
        );
        assert_eq!(lines[BURST as usize + 1], lines[0]);
    }

    #[test]
    fn below_the_level_nothing_is_written_and_flush_reports_the_rest() {
        let buf = Buf::default();
        let logger = Logger::new(LevelFilter::Warn, Style::Journal, Box::new(buf.clone()));
        logger.log(&record(Level::Info, 1, format_args!("chatty")));
        for _ in 0..(BURST + 3) {
            logger.log(&record(Level::Warn, 2, format_args!("again")));
        }
        logger.flush();
        let text = buf.text();
        assert!(!text.contains("chatty"), "{text}");
        assert_eq!(text.matches("<4>again\n").count(), BURST as usize);
        assert!(
            text.ends_with(
                "<4>suppressed 3 similar messages in the last 60 s (src/kernel_thread.rs:2)\n"
            ),
            "{text}"
        );
    }
}
