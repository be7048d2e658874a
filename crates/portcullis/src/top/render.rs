//! Draws a [`Model`] into a ratatui frame: the same code for the terminal
//! and for `--once` (a buffer printed as text) and the tests (ratatui's
//! `TestBackend`).
//!
//! Layout, top to bottom: a header (mode, uptime); packets and drops per
//! second with sparklines and drops by reason; the dropped sources, ports
//! and bans side by side (these take the extra height); the latest scans;
//! DNS and queue/capture health; a footer (keys, prompt or message). It
//! fits 80x24 and gives larger terminals to the lists.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;

use super::model::{Command, Focus, Input, Model};
use crate::client::human_secs;

const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);

/// Draws the whole view.
pub fn draw(f: &mut Frame<'_>, m: &Model) {
    let area = f.area();
    let [header, rates, lists, scans, health, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Fill(2),
        Constraint::Fill(1),
        Constraint::Length(2),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, header, m);
    draw_rates(f, rates, m);
    draw_lists(f, lists, m);
    draw_scans(f, scans, m);
    draw_health(f, health, m);
    draw_footer(f, footer, m);
    if m.input == Input::Help {
        draw_help(f, area);
    }
}

/// A number for a narrow column: `950`, `12.3k`, `4.1M`.
fn short(v: f64) -> String {
    if v < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}")
    } else if v < 10_000.0 {
        format!("{v:.0}")
    } else if v < 10_000_000.0 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{:.1}M", v / 1e6)
    }
}

/// `1s`, `500ms`.
fn interval(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn count(v: u64) -> String {
    short(v as f64)
}

fn draw_header(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let line = match &m.view {
        None => Line::from(vec![
            Span::styled("portcullis top", BOLD),
            Span::raw(" · waiting for the daemon…"),
        ]),
        Some(v) => {
            let s = &v.status;
            let mode = if s.mode.contains("dry run") {
                "dry run: nothing is dropped".to_owned()
            } else if !s.enforcing {
                format!("{}: drops only reported", s.mode)
            } else {
                format!("{}: enforcing", s.mode)
            };
            Line::from(vec![
                Span::styled("portcullis top", BOLD),
                Span::raw(" · "),
                Span::styled(
                    mode,
                    Style::new().fg(if s.enforcing {
                        Color::Green
                    } else {
                        Color::Yellow
                    }),
                ),
                Span::raw(format!(
                    " · up {} · v{} pid {} · every {}",
                    human_secs(s.uptime_seconds),
                    s.version,
                    s.pid,
                    interval(m.interval)
                )),
            ])
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

fn titled(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::new()
        .borders(Borders::TOP)
        .border_style(DIM)
        .title(title.into().style(BOLD))
}

fn draw_rates(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let [graphs, reasons] =
        Layout::vertical([Constraint::Length(3), Constraint::Length(1)]).areas(area);
    let [left, right] = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)])
        .spacing(1)
        .areas(graphs);
    let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), short);
    let r = m.rates.as_ref();
    for (rect, title, hist, color) in [
        (
            left,
            format!(" packets/s {} ", rate(r.map(|r| r.packets))),
            &m.packets_history,
            Color::Cyan,
        ),
        (
            right,
            format!(" drops/s {} ", rate(r.map(|r| r.drops))),
            &m.drops_history,
            Color::Red,
        ),
    ] {
        let block = titled(title);
        let inner = block.inner(rect);
        f.render_widget(block, rect);
        // The newest samples that fit, right-aligned like a strip chart.
        let w = inner.width as usize;
        let data: Vec<u64> = hist
            .iter()
            .skip(hist.len().saturating_sub(w))
            .copied()
            .collect();
        let x = inner.x + (w - data.len().min(w)) as u16;
        let at = Rect {
            x,
            width: data.len() as u16,
            ..inner
        };
        f.render_widget(
            Sparkline::default()
                .data(&data)
                .style(Style::new().fg(color)),
            at,
        );
    }
    let mut spans = vec![Span::styled("drops by reason: ", BOLD)];
    match r {
        None => spans.push(Span::raw("-")),
        Some(r) if r.drop_reasons.is_empty() => spans.push(Span::raw("none")),
        Some(r) => {
            for (i, (name, v)) in r.drop_reasons.iter().enumerate() {
                if i > 0 {
                    spans.push(Span::styled(" · ", DIM));
                }
                spans.push(Span::raw(format!("{name} {}/s", short(*v))));
            }
        }
    }
    f.render_widget(Paragraph::new(Line::from(spans)), reasons);
}

fn selected_style(m: &Model, list: Focus) -> Style {
    if m.focus == list {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new().add_modifier(Modifier::UNDERLINED)
    }
}

fn draw_lists(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let [sources, ports, bans] = Layout::horizontal([
        Constraint::Fill(3),
        Constraint::Length(13),
        Constraint::Fill(5),
    ])
    .spacing(1)
    .areas(area);
    let window = m.view.as_ref().map_or(60, |v| v.window_seconds);
    let focus_mark = |l: Focus| if m.focus == l { "▸" } else { " " };

    // Dropped sources.
    let rows: Vec<Row<'_>> = m
        .sources()
        .iter()
        .map(|s| Row::new([s.addr.to_string(), count(s.drops.saturating_sub(s.error))]))
        .collect();
    let t = Table::new(rows, [Constraint::Fill(1), Constraint::Length(6)])
        .header(Row::new(["SOURCE", " DROPS"]).style(DIM))
        .block(titled(format!(
            "{}dropped ({}-{} min)",
            focus_mark(Focus::Sources),
            window / 60,
            window / 30
        )))
        .row_highlight_style(selected_style(m, Focus::Sources));
    let mut st = TableState::default().with_selected(m.selected(Focus::Sources));
    f.render_stateful_widget(t, sources, &mut st);

    // Dropped ports.
    let rows: Vec<Row<'_>> = m
        .ports()
        .iter()
        .map(|p| Row::new([p.port.to_string(), count(p.drops.saturating_sub(p.error))]))
        .collect();
    let t = Table::new(rows, [Constraint::Length(5), Constraint::Fill(1)])
        .header(Row::new(["PORT", "DROPS"]).style(DIM))
        .block(titled("ports"));
    f.render_widget(t, ports);

    // Bans.
    let total = m.view.as_ref().map_or(0, |v| v.bans_total);
    let rows: Vec<Row<'_>> = m
        .bans()
        .iter()
        .map(|b| {
            let mut reason = b.ban.reason.clone();
            if !b.ban.enforced {
                reason.push_str(" (not enforced)");
            }
            Row::new([
                b.ban.addr.to_string(),
                b.origin.clone(),
                human_secs(b.ban.seconds_left),
                reason,
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Fill(3),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Fill(2),
        ],
    )
    .header(Row::new(["BANNED", "ORIGIN", "LEFT", "REASON"]).style(DIM))
    .block(titled(format!(
        "{}bans ({total} active)",
        focus_mark(Focus::Bans)
    )))
    .row_highlight_style(selected_style(m, Focus::Bans));
    let mut st = TableState::default().with_selected(m.selected(Focus::Bans));
    f.render_stateful_widget(t, bans, &mut st);
}

fn draw_scans(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let rows: Vec<Row<'_>> = m
        .scans()
        .iter()
        .map(|s| {
            let sample: Vec<String> = s.port_sample.iter().map(u16::to_string).collect();
            Row::new([
                s.time.get(11..19).unwrap_or(&s.time).to_owned(),
                s.src_ip.to_string(),
                format!("{} {}", s.kind, s.pattern),
                s.ports.to_string(),
                s.action.clone(),
                sample.join(","),
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Fill(2),
            Constraint::Length(15),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Fill(2),
        ],
    )
    .header(Row::new(["TIME", "SCANNER", "KIND", "PORTS", "ACTION", "SAMPLE"]).style(DIM))
    .block(titled("latest scans"));
    f.render_widget(t, area);
}

fn draw_health(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let Some(v) = &m.view else {
        return;
    };
    let s = &v.status;
    let p = &s.packets;
    let r = m.rates.as_ref();
    let rate = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), short);
    let mut first = vec![
        Span::styled("dns ", BOLD),
        Span::raw(format!(
            "{} q/s, {} blocked/s",
            rate(r.map(|r| r.dns_queries)),
            rate(r.map(|r| r.dns_blocked))
        )),
    ];
    let sep = || Span::styled(" │ ", DIM);
    let loss = |n: u64| {
        if n == 0 {
            Style::new()
        } else {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        }
    };
    if let Some(q) = &s.queue {
        let lost = q.queue_dropped + q.user_dropped + q.overruns;
        first.extend([
            sep(),
            Span::styled(format!("queue {} ", q.number), BOLD),
            Span::raw(format!("{} inspected, ", count(q.received))),
            Span::styled(
                format!("{} uninspected", count(q.uninspected)),
                loss(q.uninspected),
            ),
            Span::raw(", "),
            Span::styled(format!("{} lost", count(lost)), loss(lost)),
        ]);
    }
    let mut second = vec![];
    if let Some(o) = &s.observed {
        second.extend([
            Span::styled(format!("nflog {} ", o.group), BOLD),
            Span::raw(format!("{} observed, ", count(o.received))),
            Span::styled(
                format!("{} lost", count(o.lost + o.overruns)),
                loss(o.lost + o.overruns),
            ),
            sep(),
        ]);
    }
    for c in &s.capture {
        let lost = c.dropped + c.if_dropped;
        second.extend([
            Span::styled(format!("{} ", c.interface), BOLD),
            Span::raw(format!("{} captured, ", count(c.received))),
            Span::styled(format!("{} lost", count(lost)), loss(lost)),
            sep(),
        ]);
    }
    second.extend([
        Span::raw(format!(
            "{} inspected, {} scans, {} bans; events ",
            count(p.packets),
            count(p.scans),
            count(p.bans)
        )),
        Span::styled(
            format!("{} lost", count(s.events_dropped)),
            loss(s.events_dropped),
        ),
    ]);
    let text = vec![Line::from(first), Line::from(second)];
    f.render_widget(Paragraph::new(text), area);
}

fn draw_footer(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let line = match &m.input {
        Input::Filter(text) => Line::from(vec![
            Span::styled("filter: ", BOLD),
            Span::raw(format!("{text}▏")),
            Span::styled("  (Enter applies, Esc cancels)", DIM),
        ]),
        Input::Confirm(cmd) => {
            let what = match cmd {
                Command::Ban(a) => format!("ban {a}?"),
                Command::Unban(a) => format!("unban {a}?"),
                _ => String::new(),
            };
            Line::from(vec![
                Span::styled(what, BOLD.fg(Color::Yellow)),
                Span::raw(" y/n"),
            ])
        }
        _ => {
            let mut spans = Vec::new();
            if let Some(e) = &m.error {
                spans.push(Span::styled(format!("{e} "), Style::new().fg(Color::Red)));
            } else if let Some(msg) = &m.message {
                spans.push(Span::styled(
                    format!("{msg} "),
                    Style::new().fg(Color::Yellow),
                ));
            }
            if !m.filter.is_empty() {
                spans.push(Span::styled(format!("[filter: {}] ", m.filter), BOLD));
            }
            spans.push(Span::styled(
                "q quit · Tab list · ↑↓ select · b ban · u unban · / filter · ? help",
                DIM,
            ));
            Line::from(spans)
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

const HELP: &[(&str, &str)] = &[
    ("q, Esc", "quit (Esc first clears a filter)"),
    ("Tab", "switch between dropped sources and bans"),
    ("↑ ↓, k j", "select"),
    ("b", "ban the selected address (asks y/n)"),
    ("u", "unban the selected address (asks y/n)"),
    (
        "/",
        "filter every list by text (Enter applies; empty clears)",
    ),
    ("?", "this help; any key closes it"),
];

fn draw_help(f: &mut Frame<'_>, area: Rect) {
    let w = area.width.min(60);
    let h = area.height.min(HELP.len() as u16 + 4);
    let rect = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let mut lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>9}  "), BOLD),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::styled(
        "drop counts: at least that many, in the last 1-2 minutes",
        DIM,
    ));
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(Line::styled(" portcullis top: keys ", BOLD))),
        rect,
    );
}

/// A buffer as plain text: one line per row, trailing blanks trimmed.
pub fn to_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            if let Some(c) = buf.cell((x, y)) {
                line.push_str(c.symbol());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::control::BanView;
    use crate::status::{ObservedStatus, QueueStatus};
    use crate::top::frame_text;
    use crate::top::model::Key;
    use crate::top_view::{ScanView, TopBan, TopPort, TopSource, TopView};

    /// A daemon's answer with `k` of everything, after `secs` seconds.
    fn view(secs: u64, k: usize) -> TopView {
        let mut v = TopView::default();
        let s = &mut v.status;
        s.version = "0.1.0".into();
        s.pid = 4242;
        s.mode = "inline".into();
        s.enforcing = true;
        s.bans_enforced = true;
        s.uptime_seconds = 3600 + secs;
        s.packets.packets = 1000 * secs;
        s.packets.dropped = 120 * secs;
        s.packets.dns_queries = 30 * secs;
        for (r, n) in [("banned", 100), ("blocked_ip", 15), ("blocked_domain", 5)] {
            s.packets.by_reason.insert(r.into(), n * secs);
        }
        s.packets.scans = 3;
        s.packets.bans = 3;
        s.queue = Some(QueueStatus {
            number: 0,
            fail_open: true,
            received: 5000,
            uninspected: 7,
            ..QueueStatus::default()
        });
        s.observed = Some(ObservedStatus {
            group: 5,
            received: 900,
            ..ObservedStatus::default()
        });
        v.window_seconds = 60;
        v.drop_sources = (0..k)
            .map(|i| TopSource {
                addr: format!("198.18.1.{}", i + 1).parse().unwrap(),
                drops: 1000 - i as u64,
                error: 0,
            })
            .collect();
        v.drop_ports = (0..k)
            .map(|i| TopPort {
                port: 20 + i as u16,
                drops: 500 - i as u64,
                error: 0,
            })
            .collect();
        v.bans = (0..k)
            .map(|i| TopBan {
                ban: BanView {
                    addr: format!("198.18.2.{}", i + 1).parse().unwrap(),
                    reason: "scan:syn".into(),
                    since: "2026-12-06T07:00:00.000000Z".into(),
                    until: "2026-12-06T07:10:00.000000Z".into(),
                    seconds_left: 598,
                    enforced: true,
                },
                origin: "scan".into(),
            })
            .collect();
        v.bans_total = k;
        v.scans = (0..k)
            .map(|i| ScanView {
                time: "2026-12-06T07:00:01.000000Z".into(),
                src_ip: format!("198.18.2.{}", i + 1).parse().unwrap(),
                phase: "start".into(),
                kind: "syn".into(),
                pattern: "vertical".into(),
                ports: 25,
                hosts: 1,
                probes: 25,
                action: "ban".into(),
                port_sample: vec![22, 80, 443],
            })
            .collect();
        v
    }

    fn model(k: usize) -> Model {
        let mut m = Model::new(Duration::from_secs(1));
        m.update(view(10, k), Duration::ZERO);
        m.update(view(12, k), Duration::from_secs(2));
        m
    }

    #[test]
    fn an_80x24_frame_shows_every_part() {
        let text = frame_text(&model(12), 80, 24);
        eprintln!("{text}");
        assert_eq!(text.lines().count(), 24);
        assert!(text.lines().all(|l| l.chars().count() <= 80));
        for want in [
            "inline: enforcing",
            "up 1h 00m",
            "packets/s 1000",
            "drops/s 120",
            "banned 100/s",
            "blocked_ip 15/s",
            "blocked_domain 5/s",
            "198.18.1.1",
            "1000",
            "198.18.2.1",
            "scan",
            "9m 58s",
            "12 active",
            "syn vertical",
            "22,80,443",
            "dns 30 q/s, 5 blocked/s",
            "queue 0 5000 inspected, 7 uninspected, 0 lost",
            "nflog 5 900 observed, 0 lost",
            "q quit",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        // The sparklines drew the one sample there is.
        assert!(text.contains('█'), "{text}");
    }

    #[test]
    fn a_larger_terminal_shows_more_rows() {
        let small = frame_text(&model(30), 80, 24);
        let large = frame_text(&model(30), 160, 48);
        let rows = |t: &str| t.matches("198.18.1.").count();
        assert!(
            rows(&large) > rows(&small) + 10,
            "{} vs {}",
            rows(&large),
            rows(&small)
        );
        // Wide enough for the whole scan line.
        assert!(large.contains("198.18.2.1"), "{large}");
    }

    #[test]
    fn prompts_help_and_modes_are_drawn() {
        let mut m = model(3);
        m.key(Key::Tab);
        m.key(Key::Char('u'));
        let text = frame_text(&m, 80, 24);
        assert!(text.contains("unban 198.18.2.1? y/n"), "{text}");
        m.key(Key::Char('n'));
        m.key(Key::Char('/'));
        for c in "1.2".chars() {
            m.key(Key::Char(c));
        }
        let text = frame_text(&m, 80, 24);
        assert!(text.contains("filter: 1.2"), "{text}");
        m.key(Key::Enter);
        let text = frame_text(&m, 80, 24);
        assert!(text.contains("[filter: 1.2]"), "{text}");
        assert!(text.contains("198.18.1.2"), "{text}");
        assert!(!text.contains("198.18.1.3"), "{text}");
        m.key(Key::Char('?'));
        let text = frame_text(&m, 80, 24);
        assert!(text.contains("portcullis top: keys"), "{text}");
        assert!(text.contains("unban the selected address"), "{text}");

        // A dry run says so; a lost daemon keeps the frame and says why.
        let mut v = view(12, 1);
        v.status.mode = "monitor (dry run)".into();
        v.status.enforcing = false;
        v.status.queue = None;
        v.status.observed = None;
        v.status.capture = vec![crate::status::CaptureStatus {
            interface: "eth0".into(),
            received: 800,
            dropped: 3,
            if_dropped: 0,
        }];
        let mut m = Model::new(Duration::from_secs(1));
        m.update(v, Duration::ZERO);
        m.fail("no portcullis daemon is running".into());
        let text = frame_text(&m, 80, 24);
        assert!(text.contains("dry run: nothing is dropped"), "{text}");
        assert!(text.contains("eth0 800 captured, 3 lost"), "{text}");
        assert!(!text.contains("queue 0"), "{text}");
        assert!(text.contains("packets/s -"), "{text}");
        assert!(text.contains("no portcullis daemon is running"), "{text}");
        assert!(text.contains("198.18.1.1"), "{text}");
    }
}
