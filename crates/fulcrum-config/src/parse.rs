//! TOML → [`Config`]. serde stops at the first error, but `fulcrum check` must report every
//! one with its line and key path, so this walks the spanned document from the `toml` crate
//! by hand, collecting errors as it goes. Unknown keys are errors.
//!
//! This module owns the entry point, the walker and the top-level table; each submodule adds
//! the `Walker` methods for one part of the document:
//!
//! * `values`: located errors, unknown-key checks and the typed value readers;
//! * `frontend`: `[frontend.NAME]` and its `fanout` table;
//! * `pool`: `[pool.NAME]`, its `eject` policy and `servers`;
//! * `http`: an HTTP frontend's limits and headers, a pool's `http` table, `retry_budget`, `sticky`;
//! * `tls`: an `https` frontend's `tls` table and a pool's `tls` table (TLS to its servers);
//! * `checks`: a pool's `health`, `agent_pull` and `scale_out`/`scale_in` tables;
//! * `route`: a frontend's HTTP `route` entries and a pool's `hash` key;
//! * `control`: the top-level `[admin]`, `[agent]` and `[resolver]` tables;
//! * `access`: a frontend's `allow` and `deny` lists and the list files it names (read here,
//!   so `check`, start and reload all see what the files say now).

mod access;
mod checks;
mod control;
mod frontend;
mod http;
mod limits;
mod pool;
mod route;
mod tls;
mod values;

use std::collections::HashSet;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, Errors};
use crate::model::*;

type Value<'a> = Spanned<DeValue<'a>>;

/// Parses and validates a configuration document; `file` names it in errors.
pub fn parse_str(text: &str, file: &str) -> Result<Config, Errors> {
    let mut w = Walker { file, text, errors: Vec::new() };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        w.error_at(span, "", e.message().trim());
    }
    let config = if w.errors.is_empty() { Some(w.config(doc.get_ref())) } else { None };
    let mut errors = w.errors;
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => {
            // The config file's errors first, then each list file's (`allow_file`...).
            errors.sort_by(|a, b| {
                let key = |e: &ConfigError| (e.file != file, e.file.clone(), e.line, e.column);
                key(a).cmp(&key(b))
            });
            errors.dedup();
            Err(Errors(errors))
        }
    }
}

struct Walker<'t> {
    file: &'t str,
    text: &'t str,
    errors: Vec<ConfigError>,
}

const TOP_KEYS: &[&str] = &[
    "workers",
    "max_connections",
    "drain_timeout",
    "access_log",
    "access_log_file",
    "state_file",
    "admin",
    "agent",
    "resolver",
    "frontend",
    "pool",
];

impl Walker<'_> {
    fn config(&mut self, doc: &DeTable<'_>) -> Config {
        let mut c = Config::default();
        self.check_keys(doc, "", TOP_KEYS);
        if let Some(v) = doc.get("workers") {
            c.workers = self.integer(v, "workers", 1, MAX_WORKERS as u64).map(|n| n as usize);
        }
        if let Some(v) = doc.get("max_connections") {
            c.max_connections =
                self.integer(v, "max_connections", 1, 10_000_000).map(|n| n as usize);
        }
        if let Some(v) = doc.get("drain_timeout") {
            c.drain_timeout = self.duration(v, "drain_timeout").unwrap_or(c.drain_timeout);
        }
        if let Some(v) = doc.get("access_log") {
            c.access_log = self.boolean(v, "access_log").unwrap_or(true);
        }
        if let Some(v) = doc.get("access_log_file")
            && let Some(s) = self.string(v, "access_log_file").map(str::to_string)
        {
            c.access_log_file = Some(self.relative(&s));
        }
        if let Some(v) = doc.get("state_file") {
            if let Some(s) = self.string(v, "state_file").map(str::to_string) {
                c.state_file = Some(self.relative(&s));
            }
        }
        if let Some(v) = doc.get("admin") {
            c.admin = self.admin(v);
        }
        if let Some(v) = doc.get("agent") {
            c.agent = self.agent(v);
        }
        if let Some(v) = doc.get("resolver") {
            c.resolver = self.resolver(v);
        }
        if let Some(v) = doc.get("pool")
            && let Some(t) = self.table(v, "pool")
        {
            for (name, pv) in t.iter() {
                let path = format!("pool.{}", name.get_ref());
                self.check_name(name, &path);
                if let Some(p) = self.pool(name.get_ref(), pv, &path) {
                    c.pools.push(p);
                }
            }
        }
        match doc.get("frontend") {
            Some(v) => {
                if let Some(t) = self.table(v, "frontend") {
                    let mut binds: HashSet<(crate::model::Transport, std::net::SocketAddr)> =
                        HashSet::new();
                    for (name, fv) in t.iter() {
                        let path = format!("frontend.{}", name.get_ref());
                        self.check_name(name, &path);
                        if let Some(f) = self.frontend(name.get_ref(), fv, &path, &c) {
                            let transport = f.protocol.transport();
                            if f.bind.port() != 0 && !binds.insert((transport, f.bind)) {
                                let bind = f.bind;
                                self.error(
                                    fv,
                                    &format!("{path}.bind"),
                                    format!(
                                        "{bind} is already bound by another {} frontend \
                                         (a TCP and a UDP frontend may share it)",
                                        transport.name()
                                    ),
                                );
                            }
                            c.frontends.push(f);
                        }
                    }
                }
            }
            None => self.error_at(
                0..0,
                "frontend",
                "no frontend defined: add a [frontend.NAME] table with bind and pool",
            ),
        }
        c
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Parses durations written as "500ms", "2s", "1m", "1h30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("\"{s}\" is not a duration ({e}; write e.g. \"500ms\", \"2s\", \"1m\")")
    })
}

#[cfg(test)]
mod tests;
