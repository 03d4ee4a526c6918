//! `fulcrum top`: the dashboard's live view in a terminal, over the admin API (so it runs
//! wherever the API is reachable). This module owns the terminal (raw mode and the alternate
//! screen, given back on every exit, a panic included) and the thread that talks to the API;
//! what is shown and what keys do live in `view.rs`, the data in `model.rs`.

mod model;
mod render;
mod view;

use std::io::IsTerminal;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde_json::Value;

use crate::cli::TopArgs;
use crate::client::{Api, enc, server_path};
use crate::run::Failure;
use model::{Overview, parse_overview};
use view::{Action, App, Effect, Key};

/// Longest wait for one API answer: the screen stays live meanwhile (the API has its own
/// thread), and an unreachable daemon shows as an error this soon.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// History series asked for in one request: an hour of one series is up to ~200 KB of JSON.
const HISTORY_BATCH: usize = 16;
/// How often the screen is drawn again without news (the clock of a stalled API, a resize
/// that raced the last draw).
const REDRAW: Duration = Duration::from_millis(250);

pub fn run(args: TopArgs) -> Result<(), Failure> {
    if !std::io::stdout().is_terminal() {
        return Err(Failure::Config(
            "fulcrum top needs a terminal (stdout is not one); in scripts use `fulcrum ctl servers list` or GET /api/v1/overview".into(),
        ));
    }
    let api = Api::new(&args.api, CALL_TIMEOUT)?;
    let mut app = App::new(api.base().to_string(), args.interval);
    let (to_api, actions) = mpsc::channel();
    let (news, from_api) = mpsc::channel();
    let interval = args.interval;
    std::thread::Builder::new()
        .name("top-api".into())
        .spawn(move || poll(&api, interval, &actions, &news))
        .map_err(|e| Failure::Runtime(format!("cannot start a thread: {e}")))?;
    // Given back however this returns (a setup that failed half way included); a panic is
    // covered by the hook `try_init` installs.
    let _restore = Restore;
    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::Runtime(format!("cannot set up the terminal: {e}")))?;
    ui(&mut terminal, &mut app, &to_api, &from_api)
        .map_err(|e| Failure::Runtime(format!("terminal: {e}")))
}

struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What the API thread reports.
enum News {
    Overview(Result<Overview, String>),
    History(Value),
    Done(Result<String, String>),
}

fn ui(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    to_api: &Sender<Action>,
    from_api: &Receiver<News>,
) -> std::io::Result<()> {
    loop {
        loop {
            match from_api.try_recv() {
                Ok(News::Overview(r)) => app.on_overview(r),
                Ok(News::History(v)) => app.on_history(&v),
                Ok(News::Done(r)) => app.on_done(r),
                Err(TryRecvError::Empty) => break,
                // Only a panic ends that thread: a screen that would never change again is
                // worse than an exit that says why.
                Err(TryRecvError::Disconnected) => {
                    return Err(std::io::Error::other("the admin API thread stopped"));
                }
            }
        }
        terminal.draw(|f| render::draw(f, app))?;
        if !event::poll(REDRAW)? {
            continue;
        }
        let Event::Key(k) = event::read()? else { continue };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        match app.key(key(k)) {
            Effect::Quit => return Ok(()),
            Effect::Send(a) => {
                // The API thread outlives the loop; it only stops when this process does.
                let _ = to_api.send(a);
            }
            Effect::Nothing => {}
        }
    }
}

fn key(k: KeyEvent) -> Key {
    match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Esc => Key::Esc,
        _ => Key::Other,
    }
}

/// The API thread: the overview once per `interval`, history for every series it has not had
/// yet, and each action as it comes (followed by a fresh overview, so its effect shows at
/// once). Ends when the screen side has gone.
fn poll(api: &Api, interval: Duration, actions: &Receiver<Action>, news: &Sender<News>) {
    let mut filled = std::collections::HashSet::new();
    let mut next = Instant::now();
    loop {
        match actions.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(a) => {
                let path = server_path(&a.pool, &a.address);
                let r = api.call("PATCH", &path, Some(a.body())).map(|_| a.done());
                if news.send(News::Done(r.map_err(message))).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => next = Instant::now() + interval,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let ov = api.call("GET", "/api/v1/overview", None).map_err(message);
        let ov = ov.and_then(|v| parse_overview(&v));
        let missing: Vec<String> = match &ov {
            Ok(o) => o.series().into_iter().filter(|s| !filled.contains(s)).collect(),
            Err(_) => Vec::new(),
        };
        if news.send(News::Overview(ov)).is_err() {
            return;
        }
        for batch in missing.chunks(HISTORY_BATCH) {
            let list: Vec<String> = batch.iter().map(|s| enc(s)).collect();
            let path = format!("/api/v1/history?range=hour&series={}", list.join(","));
            // A failed history read is tried again next tick: the sparklines start from now.
            let Ok(v) = api.call("GET", &path, None) else { break };
            filled.extend(batch.iter().cloned());
            if news.send(News::History(v)).is_err() {
                return;
            }
        }
    }
}

fn message(f: Failure) -> String {
    match f {
        Failure::Config(m) | Failure::Runtime(m) => m,
    }
}
