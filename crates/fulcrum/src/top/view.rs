//! `fulcrum top`'s state and screen without a terminal: what a key does (selection, the
//! drain/enable confirmation, quitting), what the API's answers change, and the text of every
//! line for a given width, each with the tone it is drawn in. `render.rs` only paints these.

use std::time::Duration;

use serde_json::{Value, json};

use super::model::{Overview, Pool, Rates, Server, Sparks, WINDOW_S, glyphs, peak};

/// A key as `top` tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Esc,
    CtrlC,
    Char(char),
    Other,
}

/// A change to one server, sent through the route `fulcrum ctl servers drain|enable` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub pool: String,
    /// As configured (the route's form), not as listed.
    pub address: String,
    /// The `state` the route is given: `drain` or `up`.
    pub state: &'static str,
}

impl Action {
    pub fn body(&self) -> Value {
        json!({ "state": self.state })
    }

    fn verb(&self) -> &'static str {
        if self.state == "drain" { "drain" } else { "enable" }
    }

    /// What the screen says once the API has accepted it.
    pub fn done(&self) -> String {
        match self.state {
            "drain" => format!("draining {} in {}: no new connections", self.address, self.pool),
            _ => format!("{} in {} is up", self.address, self.pool),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    Quit,
    Send(Action),
}

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Title,
    Heading,
    Columns,
    Plain,
    /// Out of rotation by choice: `drain`, `maint`.
    Aside,
    /// Failing: health down, ejected, an API error.
    Bad,
    Prompt,
    Hint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub text: String,
    pub tone: Tone,
    pub selected: bool,
}

fn row(text: String, tone: Tone) -> Row {
    Row { text, tone, selected: false }
}

/// Rows between the header and the status line scroll by this many on PageUp/PageDown.
const PAGE: isize = 10;

pub struct App {
    pub api: String,
    pub interval: Duration,
    pub overview: Option<Overview>,
    pub sparks: Sparks,
    /// The selected server as (pool, address as listed): it stays selected when others come
    /// and go.
    selected: Option<(String, String)>,
    pending: Option<Action>,
    /// Why the last read of the overview failed; cleared by the next good one.
    api_error: Option<String>,
    message: Option<(String, Tone)>,
    /// First body line on screen.
    pub offset: usize,
}

impl App {
    pub fn new(api: String, interval: Duration) -> App {
        App {
            api,
            interval,
            overview: None,
            sparks: Sparks::default(),
            selected: None,
            pending: None,
            api_error: None,
            message: None,
            offset: 0,
        }
    }

    pub fn on_overview(&mut self, r: Result<Overview, String>) {
        match r {
            Ok(ov) => {
                self.sparks.record(&ov);
                self.overview = Some(ov);
                self.api_error = None;
                if self.index().is_none() {
                    self.selected = self.servers().into_iter().next();
                }
            }
            Err(e) => self.api_error = Some(e),
        }
    }

    pub fn on_history(&mut self, v: &Value) {
        self.sparks.fill(v);
    }

    pub fn on_done(&mut self, r: Result<String, String>) {
        self.message = Some(match r {
            Ok(m) => (m, Tone::Plain),
            Err(e) => (e, Tone::Bad),
        });
    }

    /// Every server in screen order, as (pool, address).
    fn servers(&self) -> Vec<(String, String)> {
        let pools = self.overview.iter().flat_map(|o| &o.pools);
        pools.flat_map(|p| p.servers.iter().map(|s| (p.name.clone(), s.address.clone()))).collect()
    }

    fn index(&self) -> Option<usize> {
        let sel = self.selected.as_ref()?;
        self.servers().iter().position(|s| s == sel)
    }

    fn selected_server(&self) -> Option<(&Pool, &Server)> {
        let (pool, address) = self.selected.as_ref()?;
        let p = self.overview.as_ref()?.pools.iter().find(|p| &p.name == pool)?;
        Some((p, p.servers.iter().find(|s| &s.address == address)?))
    }

    fn move_by(&mut self, delta: isize) {
        let all = self.servers();
        let Some(last) = all.len().checked_sub(1) else { return };
        let at = self.index().unwrap_or(0) as isize;
        let to = (at + delta).clamp(0, last as isize) as usize;
        self.selected = all.into_iter().nth(to);
    }

    pub fn key(&mut self, k: Key) -> Effect {
        if k == Key::CtrlC {
            return Effect::Quit;
        }
        if let Some(a) = self.pending.take() {
            if matches!(k, Key::Char('y' | 'Y')) {
                self.message = Some((format!("{}: sent", a.verb()), Tone::Plain));
                return Effect::Send(a);
            }
            self.message = Some((format!("not done: {} {}", a.verb(), a.address), Tone::Plain));
            return Effect::Nothing;
        }
        match k {
            Key::Char('q') | Key::Esc => return Effect::Quit,
            Key::Up | Key::Char('k') => self.move_by(-1),
            Key::Down | Key::Char('j') => self.move_by(1),
            Key::PageUp => self.move_by(-PAGE),
            Key::PageDown => self.move_by(PAGE),
            Key::Home | Key::Char('g') => self.move_by(isize::MIN / 2),
            Key::End | Key::Char('G') => self.move_by(isize::MAX / 2),
            Key::Char('d') => self.ask("drain"),
            Key::Char('e') => self.ask("up"),
            _ => {}
        }
        Effect::Nothing
    }

    fn ask(&mut self, state: &'static str) {
        let Some((p, s)) = self.selected_server() else {
            self.message = Some(("no server selected".into(), Tone::Plain));
            return;
        };
        let a = Action { pool: p.name.clone(), address: s.configured().to_string(), state };
        self.message = None;
        self.pending = Some(a);
    }

    /// The two lines above the pools.
    pub fn header(&self, width: usize) -> Vec<Row> {
        let clock = match self.overview.as_ref().and_then(|o| o.t) {
            Some(t) => format!("{:02}:{:02}:{:02} UTC", t / 3600 % 24, t / 60 % 60, t % 60),
            None => "--:--:-- UTC".into(),
        };
        let mut up = String::new();
        if let Some(ov) = &self.overview
            && let Some(u) = ov.uptime_s
        {
            up = format!(" · up {}", uptime(u));
            if let Some(r) = ov.reloads {
                up.push_str(&format!(", {}", plural(r as usize, "reload")));
            }
        }
        let mut title = format!("fulcrum top · {} · {clock}{up}", self.api);
        let every = format!(" · every {}", short_duration(self.interval));
        // The interval is the operator's own choice: the first thing left out when narrow.
        if title.chars().count() + every.chars().count() <= width {
            title.push_str(&every);
        }
        let mut counts = String::new();
        if let Some(ov) = &self.overview {
            let servers: Vec<&Server> = ov.pools.iter().flat_map(|p| &p.servers).collect();
            let n = |f: &dyn Fn(&Server) -> bool| servers.iter().filter(|s| f(s)).count();
            counts = format!(
                "{} · {} · {}: {} in rotation, {} drain, {} maint, {} failing",
                plural(ov.frontends.len(), "frontend"),
                plural(ov.pools.len(), "pool"),
                plural(servers.len(), "server"),
                n(&|s| s.state == "up" && s.health == "up"),
                n(&|s| s.state == "drain"),
                n(&|s| s.state == "maint"),
                n(&|s| s.health != "up"),
            );
        }
        vec![row(fit(&title, width), Tone::Title), row(fit(&counts, width), Tone::Hint)]
    }

    /// The frontends and pools, and which of these lines is the selected server's.
    pub fn body(&self, width: usize) -> (Vec<Row>, Option<usize>) {
        let Some(ov) = &self.overview else {
            let wait = match &self.api_error {
                Some(_) => "no answer from the admin API yet (see below); retrying",
                None => "waiting for the first answer of the admin API",
            };
            return (vec![row(fit(wait, width), Tone::Hint)], None);
        };
        let mut out = frontend_rows(ov, width);
        let mut selected_line = None;
        let cols = Columns::new(ov, width);
        let now = ov.t.unwrap_or(0);
        for p in &ov.pools {
            out.push(row(String::new(), Tone::Plain));
            let up = p.servers.iter().filter(|s| s.state == "up" && s.health == "up").count();
            let mut head =
                format!("pool {} · {} · {up}/{} in rotation", p.name, p.algorithm, p.servers.len());
            if p.queue_length > 0 {
                head.push_str(&format!(" · {} waiting", p.queue_length));
            }
            out.push(row(fit(&head, width), Tone::Heading));
            let unit = if p.http { "req/s" } else { "conn/s" };
            out.push(row(cols.heading(unit, width), Tone::Columns));
            let pool_cells = self.sparks.cells(&p.series(), now, cols.spark, p.http);
            let pool_spark = glyphs(&pool_cells, peak([pool_cells.as_slice()]));
            out.push(row(
                cols.line(" ", "(pool)", "", "", &p.rates, None, p.http, &pool_spark),
                Tone::Plain,
            ));
            let cells: Vec<Vec<Option<f64>>> = p
                .servers
                .iter()
                .map(|s| self.sparks.cells(&s.series(&p.name), now, cols.spark, p.http))
                .collect();
            let top = peak(cells.iter().map(Vec::as_slice));
            for (s, c) in p.servers.iter().zip(&cells) {
                let selected = self
                    .selected
                    .as_ref()
                    .is_some_and(|(sp, sa)| *sp == p.name && *sa == s.address);
                let mark = if selected { ">" } else { " " };
                let text = cols.line(
                    mark,
                    &s.address,
                    &s.state,
                    &s.health,
                    &s.rates,
                    s.max_connections,
                    p.http,
                    &glyphs(c, top),
                );
                let tone = if s.health != "up" {
                    Tone::Bad
                } else if s.state != "up" {
                    Tone::Aside
                } else {
                    Tone::Plain
                };
                if selected {
                    selected_line = Some(out.len());
                }
                out.push(Row { text, tone, selected });
            }
            if p.servers.is_empty() {
                out.push(row(fit("  no server", width), Tone::Hint));
            }
        }
        (out, selected_line)
    }

    /// The bottom line: a question waiting for `y`, else the API's error, else the last
    /// action's outcome, else the keys.
    pub fn status(&self, width: usize) -> Row {
        let (text, tone) = if let Some(a) = &self.pending {
            let q =
                format!("{} {} in pool {}? y: yes, any other key: no", a.verb(), a.address, a.pool);
            (q, Tone::Prompt)
        } else if let Some(e) = &self.api_error {
            let every = short_duration(self.interval);
            (format!("admin API: {e} (retrying every {every})"), Tone::Bad)
        } else if let Some((m, tone)) = &self.message {
            (m.clone(), *tone)
        } else {
            ("↑↓/j k select · d drain · e enable · q quit".to_string(), Tone::Hint)
        };
        row(fit(&text.replace('\n', " "), width), tone)
    }
}

fn frontend_rows(ov: &Overview, width: usize) -> Vec<Row> {
    let longest = |f: &dyn Fn(&super::model::Frontend) -> usize| {
        ov.frontends.iter().map(f).max().unwrap_or(0)
    };
    let nw = longest(&|f| f.name.chars().count()).clamp(8, 24);
    let pw = longest(&|f| f.pool.as_deref().map_or(1, |p| p.chars().count())).clamp(4, 24);
    let mut out = vec![row(
        fit(
            &format!(
                "  {:<nw$} {:<pw$} {:>7} {:>7} {:>7} {:>6} {:>6}",
                "FRONTEND", "POOL", "ACTIVE", "CONN/S", "REQ/S", "ERR/S", "P99 MS"
            ),
            width,
        ),
        Tone::Columns,
    )];
    for f in &ov.frontends {
        let r = &f.rates;
        let (req, p99) =
            if f.http { (rate(r.requests), ms(r.p99_ms)) } else { ("-".into(), "-".into()) };
        let line = format!(
            "  {:<nw$} {:<pw$} {:>7} {:>7} {:>7} {:>6} {:>6}",
            clip(&f.name, nw),
            clip(f.pool.as_deref().unwrap_or("-"), pw),
            r.active,
            rate(r.conns),
            req,
            rate(r.errors),
            p99
        );
        out.push(row(fit(&line, width), Tone::Plain));
    }
    out
}

/// Widths of a pool's columns for one screen width: the address column fits the longest
/// address within bounds, the sparkline takes what is left.
struct Columns {
    addr: usize,
    spark: usize,
}

/// Everything on a server line but the address and the sparkline.
const FIXED: usize = 48;

impl Columns {
    fn new(ov: &Overview, width: usize) -> Columns {
        let longest = ov
            .pools
            .iter()
            .flat_map(|p| &p.servers)
            .map(|s| s.address.chars().count())
            .max()
            .unwrap_or(0);
        // Room for a 12-cell sparkline first, then for long addresses, up to 40.
        let cap = width.saturating_sub(FIXED + 12).clamp(12, 40);
        let addr = longest.clamp(12, cap);
        Columns { addr, spark: width.saturating_sub(FIXED + addr) }
    }

    fn heading(&self, unit: &str, width: usize) -> String {
        let aw = self.addr;
        let mut label = format!("{unit}, last {}m", WINDOW_S / 60);
        if label.chars().count() > self.spark {
            // The rate column's heading names the unit already.
            label = format!("last {}m", WINDOW_S / 60);
        }
        let s = format!(
            "  {:<aw$} {:<5} {:<7} {:>7} {:>7} {:>6} {:>6}  {}",
            "SERVER",
            "STATE",
            "HEALTH",
            "ACTIVE",
            unit.to_uppercase(),
            "ERR/S",
            "P99 MS",
            fit(&label, self.spark)
        );
        fit(&s, width)
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &self,
        mark: &str,
        address: &str,
        state: &str,
        health: &str,
        r: &Rates,
        cap: Option<u64>,
        http: bool,
        spark: &str,
    ) -> String {
        let aw = self.addr;
        let active = match cap {
            Some(c) => format!("{}/{c}", r.active),
            None => r.active.to_string(),
        };
        format!(
            "{mark} {:<aw$} {:<5} {:<7} {:>7} {:>7} {:>6} {:>6}  {spark}",
            clip(address, aw),
            state,
            health,
            active,
            rate(r.rate(http)),
            rate(r.errors),
            ms(r.p99_ms),
        )
    }
}

/// A rate in at most 7 characters: one decimal below 100.
fn rate(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if !v.is_finite() => "-".into(),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) if v < 1e6 => format!("{v:.0}"),
        Some(v) => format!("{:.0}k", v / 1e3),
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if !v.is_finite() => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 1000.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn short_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// An uptime in its two largest units: `45s`, `12m 5s`, `3h 12m`, `2d 3h`.
pub(crate) fn uptime(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {}s", s % 60),
        (0, ..) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// At most `width` characters, the end cut.
fn fit(s: &str, width: usize) -> String {
    s.chars().take(width).collect()
}

/// At most `width` characters, the start cut (an address keeps its port).
fn clip(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    std::iter::once('…').chain(s.chars().skip(n - width + 1)).collect()
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
