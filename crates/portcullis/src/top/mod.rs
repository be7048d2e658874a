//! `portcullis top`: a live terminal view of the running daemon, over the
//! control socket (the `top` request, [`crate::top_view`]), refreshed once
//! per `--interval`.
//!
//! The terminal code (ratatui, crossterm) lives here and nowhere else: the
//! daemon's modules never import this one, so none of it is on the packet
//! path. [`model`] is the state (no terminal), [`render`] draws it.
//!
//! Without a terminal on stdin and stdout `top` refuses with a message;
//! `--once` draws one frame into a buffer and prints it as text.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Terminal;

use crate::cli::TopArgs;
use crate::control::{self, Request};
use crate::top_view::TopView;

pub mod model;
pub mod render;

use model::{Command, Key, Model};

/// Entries per top list asked of the daemon.
const TOP_N: usize = 20;

/// Runs `portcullis top`.
pub fn run(args: &TopArgs) -> Result<ExitCode> {
    if args.once {
        print!("{}", once(args)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "portcullis top needs a terminal (stdin and stdout are not one): use `portcullis top --once` for one frame as text, or `portcullis status --json` for scripts"
        );
    }
    // Fail before taking over the screen if no daemon answers.
    let first = fetch(&args.socket)?;
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = interactive(&mut terminal, args, first);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Asks the daemon for a `top` snapshot.
fn fetch(socket: &Path) -> Result<TopView> {
    match control::call(socket, &Request::Top { n: Some(TOP_N) })? {
        Ok(v) => serde_json::from_value(v).context("the daemon's top answer"),
        Err(e) => bail!("the daemon refused: {e}"),
    }
}

/// One frame as text: two snapshots one interval apart (so rates are
/// real), drawn at `--width` x `--height`.
fn once(args: &TopArgs) -> Result<String> {
    let mut m = Model::new(args.interval);
    let t = Instant::now();
    m.update(fetch(&args.socket)?, Duration::ZERO);
    std::thread::sleep(args.interval);
    m.update(fetch(&args.socket)?, t.elapsed());
    Ok(frame_text(&m, args.width, args.height))
}

/// `m` drawn into a `width` x `height` buffer, as text.
pub fn frame_text(m: &Model, width: u16, height: u16) -> String {
    // TestBackend cannot fail (its error type is `Infallible`).
    let mut term = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(never) => match never {},
    };
    if let Err(never) = term.draw(|f| render::draw(f, m)) {
        match never {}
    }
    render::to_text(term.backend().buffer())
}

fn interactive(
    terminal: &mut ratatui::DefaultTerminal,
    args: &TopArgs,
    first: TopView,
) -> Result<()> {
    let mut m = Model::new(args.interval);
    m.update(first, Duration::ZERO);
    let mut last = Instant::now();
    loop {
        terminal.draw(|f| render::draw(f, &m))?;
        let due = last + args.interval;
        let wait = due.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            let Some(key) = read_key()? else {
                continue;
            };
            match m.key(key) {
                Command::Quit => return Ok(()),
                Command::None => {}
                Command::Ban(addr) => {
                    m.message = Some(change(
                        &args.socket,
                        Request::Ban {
                            addr,
                            seconds: None,
                            reason: Some("manual (top)".into()),
                        },
                        &format!("banned {addr}"),
                    ));
                    last = refresh_now(args.interval);
                }
                Command::Unban(addr) => {
                    m.message = Some(change(
                        &args.socket,
                        Request::Unban { addr },
                        &format!("unbanned {addr}"),
                    ));
                    last = refresh_now(args.interval);
                }
            }
            continue;
        }
        let dt = last.elapsed();
        last = Instant::now();
        match fetch(&args.socket) {
            Ok(v) => m.update(v, dt),
            Err(e) => m.fail(format!("{e:#}")),
        }
    }
}

/// A `last refresh` that makes the next one due now.
fn refresh_now(interval: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(interval).unwrap_or(now)
}

/// A ban or unban; the answer as one line for the footer.
fn change(socket: &Path, req: Request, done: &str) -> String {
    match control::call(socket, &req) {
        Ok(Ok(_)) => done.to_owned(),
        Ok(Err(e)) => format!("refused: {e}"),
        Err(e) => format!("{e:#}"),
    }
}

/// The next key press (None for other events: resize, release...).
fn read_key() -> Result<Option<Key>> {
    let Event::Key(k) = event::read()? else {
        return Ok(None);
    };
    if k.kind != KeyEventKind::Press {
        return Ok(None);
    }
    Ok(Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Tab | KeyCode::BackTab => Key::Tab,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return Ok(None),
    }))
}
