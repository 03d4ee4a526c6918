//! TOML → [`Config`]. serde stops at the first error, but `fulcrum check` must report every
//! one with its line and key path, so this walks the spanned document from the `toml` crate
//! by hand, collecting errors as it goes. Unknown keys are errors.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use fulcrum_core::balance::Algorithm;
use fulcrum_core::eject::EjectPolicy;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::addr::{parse_dest, parse_listen};
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
            errors.sort_by_key(|e| (e.line, e.column));
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
    "state_file",
    "admin",
    "agent",
    "frontend",
    "pool",
];
const ADMIN_KEYS: &[&str] = &["bind", "token_file"];
const AGENT_KEYS: &[&str] = &["bind", "key_file", "report_interval", "missed_reports"];
const PULL_KEYS: &[&str] = &["port", "interval", "timeout"];
const SCALE_KEYS: &[&str] = &["threshold", "window", "cooldown", "command", "webhook"];
const HEALTH_KEYS: &[&str] = &[
    "kind",
    "transport",
    "interval",
    "timeout",
    "rise",
    "fall",
    "path",
    "host",
    "expect_status",
    "expect_body",
    "send",
    "expect",
];
const FRONTEND_KEYS: &[&str] = &[
    "bind",
    "protocol",
    "pool",
    "idle_timeout",
    "send_timeout",
    "max_connections",
    "session_timeout",
    "max_sessions",
    "max_sessions_per_source",
    "mode",
    "delay",
    "fanout",
];
const FANOUT_KEYS: &[&str] =
    &["timeout", "on_timeout", "reject_prefix", "servers", "delay", "match"];
/// Longest fan-out `timeout` and `delay`.
const MAX_FANOUT_DURATION: Duration = Duration::from_secs(3600);
const POOL_KEYS: &[&str] = &[
    "algorithm",
    "servers",
    "connect_timeout",
    "retries",
    "eject",
    "slow_start",
    "health",
    "self_register",
    "agent_pull",
    "scale_out",
    "scale_in",
];
const EJECT_KEYS: &[&str] = &["failures", "backoff", "max_backoff", "max_percent"];
const SERVER_KEYS: &[&str] = &["address", "weight"];
/// Protocols later versions add; named so the error says "not supported yet", not "unknown".
const FUTURE_PROTOCOLS: &[&str] = &["http", "https"];

impl Walker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column =
            before.rfind('\n').map_or(before.chars().count(), |i| before[i + 1..].chars().count())
                + 1;
        (line, column)
    }

    fn error_at(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn error(&mut self, v: &Value<'_>, key: &str, message: impl Into<String>) {
        self.error_at(v.span(), key, message)
    }

    /// Reports every key of `t` not in `allowed`.
    fn check_keys(&mut self, t: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                let key = join(path, k.get_ref());
                self.error_at(
                    k.span(),
                    &key,
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn table<'v, 'a>(&mut self, v: &'v Value<'a>, key: &str) -> Option<&'v DeTable<'a>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(v, key, format!("expected a table, found {}", other.type_str()));
                None
            }
        }
    }

    fn string<'v>(&mut self, v: &'v Value<'_>, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.error(v, key, format!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(v, key, format!("expected true or false, found {}", other.type_str()));
                None
            }
        }
    }

    fn integer(&mut self, v: &Value<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            let found = v.get_ref().type_str();
            self.error(v, key, format!("expected an integer, found {found}"));
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= 0 && (n as u64) >= min && (n as u64) <= max => Some(n as u64),
            _ => {
                self.error(v, key, format!("{} is out of range ({min}-{max})", i.as_str()));
                None
            }
        }
    }

    fn duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        let s = self.string(v, key)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v, key, e);
                None
            }
        }
    }

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
                    let mut binds: HashSet<std::net::SocketAddr> = HashSet::new();
                    for (name, fv) in t.iter() {
                        let path = format!("frontend.{}", name.get_ref());
                        self.check_name(name, &path);
                        if let Some(f) = self.frontend(name.get_ref(), fv, &path, &c) {
                            if f.bind.port() != 0 && !binds.insert(f.bind) {
                                let bind = f.bind;
                                self.error(
                                    fv,
                                    &format!("{path}.bind"),
                                    format!("{bind} is already bound by another frontend"),
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

    fn check_name(&mut self, name: &Spanned<std::borrow::Cow<'_, str>>, path: &str) {
        let n = name.get_ref();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            self.error_at(name.span(), path, "names may only contain letters, digits, '-' and '_'");
        }
    }

    fn frontend(&mut self, name: &str, v: &Value<'_>, path: &str, c: &Config) -> Option<Frontend> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, FRONTEND_KEYS);
        let mut ok = true;
        let bind = match t.get("bind") {
            Some(bv) => {
                let key = format!("{path}.bind");
                match self.string(bv, &key).map(parse_listen) {
                    Some(Ok(a)) => Some(a),
                    Some(Err(e)) => {
                        self.error(bv, &key, e);
                        None
                    }
                    None => None,
                }
            }
            None => {
                self.error(
                    v,
                    &format!("{path}.bind"),
                    "missing key (the address to listen on, e.g. \"127.0.0.1:8080\")",
                );
                None
            }
        };
        let mut protocol = Protocol::Tcp;
        if let Some(pv) = t.get("protocol") {
            let key = format!("{path}.protocol");
            if let Some(p) = self.string(pv, &key) {
                const SUPPORTED: &str = "tcp, udp, directory, directory-udp";
                match p {
                    "tcp" => protocol = Protocol::Tcp,
                    "udp" => protocol = Protocol::Udp,
                    "directory" => protocol = Protocol::Directory,
                    "directory-udp" => protocol = Protocol::DirectoryUdp,
                    p if FUTURE_PROTOCOLS.contains(&p) => {
                        let m = format!(
                            "protocol \"{p}\" is not supported by this version yet (supported: {SUPPORTED})"
                        );
                        self.error(pv, &key, m);
                        ok = false;
                    }
                    p => {
                        self.error(
                            pv,
                            &key,
                            format!("unknown protocol \"{p}\" (expected: {SUPPORTED})"),
                        );
                        ok = false;
                    }
                }
            }
        }
        let pool = match t.get("pool") {
            Some(pv) => {
                let key = format!("{path}.pool");
                let p = self.string(pv, &key)?;
                if c.pool(p).is_none() {
                    self.error(
                        pv,
                        &key,
                        format!("pool \"{p}\" is not defined (add a [pool.{p}] table)"),
                    );
                    ok = false;
                }
                Some(p.to_string())
            }
            None => {
                self.error(
                    v,
                    &format!("{path}.pool"),
                    "missing key (the name of the pool to send connections to)",
                );
                None
            }
        };
        let mut f = Frontend::new(name, bind?, &pool?);
        f.protocol = protocol;
        if let Some(x) = t.get("session_timeout") {
            f.session_timeout = self
                .nonzero_duration(x, &format!("{path}.session_timeout"))
                .unwrap_or(f.session_timeout);
        }
        if let Some(x) = t.get("max_sessions") {
            f.max_sessions = self
                .integer(x, &format!("{path}.max_sessions"), 1, 1_000_000)
                .map_or(f.max_sessions, |n| n as usize);
        }
        if let Some(x) = t.get("max_sessions_per_source") {
            f.max_sessions_per_source = self
                .integer(x, &format!("{path}.max_sessions_per_source"), 1, 1_000_000)
                .map_or(f.max_sessions_per_source, |n| n as usize);
        }
        let mut fan = Fanout::default();
        if let Some(x) = t.get("fanout") {
            fan = self.fanout(x, &format!("{path}.fanout"));
        }
        if let Some(x) = t.get("delay") {
            fan.delay =
                self.fanout_duration(x, &format!("{path}.delay"), false).unwrap_or(fan.delay);
        }
        if let Some(x) = t.get("mode") {
            let key = format!("{path}.mode");
            match self.string(x, &key) {
                Some("proxy") => f.mode = Mode::Proxy,
                Some("fanout") => f.mode = Mode::Fanout(fan),
                Some("hedge") => f.mode = Mode::Hedge(fan),
                Some(other) => {
                    self.error(
                        x,
                        &key,
                        format!("unknown mode \"{other}\" (expected: proxy, fanout, hedge)"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
            if f.mode != Mode::Proxy && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
                self.error(x, &key, "fanout and hedge work on tcp and udp frontends only");
                ok = false;
            }
        } else if t.get("fanout").is_some() {
            let fv = t.get("fanout")?;
            self.error(
                fv,
                &format!("{path}.fanout"),
                "set mode = \"fanout\" or \"hedge\" to use these settings",
            );
            ok = false;
        }
        if let Some(iv) = t.get("idle_timeout") {
            f.idle_timeout = self
                .nonzero_duration(iv, &format!("{path}.idle_timeout"))
                .unwrap_or(f.idle_timeout);
        }
        if let Some(sv) = t.get("send_timeout") {
            f.send_timeout = self
                .nonzero_duration(sv, &format!("{path}.send_timeout"))
                .unwrap_or(f.send_timeout);
        }
        if let Some(mv) = t.get("max_connections") {
            f.max_connections = self
                .integer(mv, &format!("{path}.max_connections"), 1, 10_000_000)
                .map(|n| n as usize);
        }
        ok.then_some(f)
    }

    fn nonzero_duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d.is_zero() {
            self.error(v, key, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    fn pool(&mut self, name: &str, v: &Value<'_>, path: &str) -> Option<Pool> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, POOL_KEYS);
        let mut pool = Pool::new(name, Algorithm::RoundRobin, Vec::new());
        if let Some(av) = t.get("algorithm") {
            let key = format!("{path}.algorithm");
            if let Some(s) = self.string(av, &key) {
                match s.parse::<Algorithm>() {
                    Ok(a) => pool.algorithm = a,
                    Err(e) => self.error(av, &key, e),
                }
            }
        }
        match t.get("servers") {
            Some(sv) => pool.servers = self.servers(sv, &format!("{path}.servers")),
            None => self.error(
                v,
                &format!("{path}.servers"),
                "missing key (a list of server addresses, e.g. [\"127.0.0.1:9001\"])",
            ),
        }
        if let Some(cv) = t.get("connect_timeout") {
            pool.connect_timeout = self
                .nonzero_duration(cv, &format!("{path}.connect_timeout"))
                .unwrap_or(pool.connect_timeout);
        }
        if let Some(rv) = t.get("retries") {
            pool.retries = self
                .integer(rv, &format!("{path}.retries"), 0, MAX_RETRIES as u64)
                .map_or(pool.retries, |n| n as u32);
        }
        if let Some(ev) = t.get("eject") {
            let epath = format!("{path}.eject");
            pool.eject = self.eject(ev, &epath);
            if let Some(mv) = ev.get_ref().as_table().and_then(|et| et.get("max_percent")) {
                pool.max_ejection_percent = self
                    .integer(mv, &format!("{epath}.max_percent"), 0, 100)
                    .map_or(pool.max_ejection_percent, |n| n as u32);
            }
        }
        if let Some(sv) = t.get("slow_start") {
            pool.slow_start = self.duration(sv, &format!("{path}.slow_start")).unwrap_or_default();
        }
        if let Some(hv) = t.get("health") {
            pool.health = self.health(hv, &format!("{path}.health"));
        }
        if let Some(v) = t.get("self_register") {
            pool.self_register = self.boolean(v, &format!("{path}.self_register")).unwrap_or(false);
        }
        if let Some(v) = t.get("agent_pull") {
            pool.agent_pull = self.agent_pull(v, &format!("{path}.agent_pull"));
        }
        if let Some(v) = t.get("scale_out") {
            pool.scale_out = self.scale(v, &format!("{path}.scale_out"));
        }
        if let Some(v) = t.get("scale_in") {
            pool.scale_in = self.scale(v, &format!("{path}.scale_in"));
        }
        Some(pool)
    }

    fn eject(&mut self, v: &Value<'_>, path: &str) -> EjectPolicy {
        let mut p = EjectPolicy::default();
        let Some(t) = self.table(v, path) else {
            return p;
        };
        self.check_keys(t, path, EJECT_KEYS);
        if let Some(fv) = t.get("failures") {
            p.failures = self
                .integer(fv, &format!("{path}.failures"), 0, 1_000)
                .map_or(p.failures, |n| n as u32);
        }
        if let Some(bv) = t.get("backoff") {
            p.base_ms = self
                .duration(bv, &format!("{path}.backoff"))
                .map_or(p.base_ms, |d| d.as_millis() as u64);
        }
        if let Some(mv) = t.get("max_backoff") {
            p.max_ms = self
                .duration(mv, &format!("{path}.max_backoff"))
                .map_or(p.max_ms, |d| d.as_millis() as u64);
        }
        if p.max_ms < p.base_ms {
            self.error(v, &format!("{path}.max_backoff"), "must not be shorter than backoff");
        }
        p
    }

    fn admin(&mut self, v: &Value<'_>) -> Option<Admin> {
        let t = self.table(v, "admin")?;
        self.check_keys(t, "admin", ADMIN_KEYS);
        let bind = match t.get("bind") {
            Some(bv) => match self.string(bv, "admin.bind").map(parse_listen) {
                Some(Ok(a)) => Some(a),
                Some(Err(e)) => {
                    self.error(bv, "admin.bind", e);
                    None
                }
                None => None,
            },
            None => {
                self.error(v, "admin.bind", "missing key (e.g. \"127.0.0.1:9090\")");
                None
            }
        };
        let token_file = match t.get("token_file") {
            Some(tv) => {
                let s = self.string(tv, "admin.token_file")?.to_string();
                Some(self.relative(&s))
            }
            None => None,
        };
        Some(Admin { bind: bind?, token_file })
    }

    fn fanout(&mut self, v: &Value<'_>, path: &str) -> Fanout {
        let mut f = Fanout::default();
        let Some(t) = self.table(v, path) else { return f };
        self.check_keys(t, path, FANOUT_KEYS);
        if let Some(x) = t.get("timeout") {
            f.timeout =
                self.fanout_duration(x, &format!("{path}.timeout"), true).unwrap_or(f.timeout);
        }
        if let Some(x) = t.get("match") {
            let key = format!("{path}.match");
            match self.string(x, &key) {
                Some("none") => f.matching = AnswerMatch::OneAtATime,
                Some("first-word") => f.matching = AnswerMatch::FirstWord,
                Some(other) => self.error(
                    x,
                    &key,
                    format!("unknown answer matching \"{other}\" (expected: none, first-word)"),
                ),
                None => {}
            }
        }
        if let Some(x) = t.get("on_timeout") {
            f.on_timeout = self.string(x, &format!("{path}.on_timeout")).map(str::to_string);
        }
        if let Some(x) = t.get("reject_prefix") {
            f.reject_prefix = self.string(x, &format!("{path}.reject_prefix")).map(str::to_string);
        }
        if let Some(x) = t.get("servers") {
            f.servers = self.integer(x, &format!("{path}.servers"), 1, 1_000).map(|n| n as usize);
        }
        if let Some(x) = t.get("delay") {
            f.delay = self.fanout_duration(x, &format!("{path}.delay"), false).unwrap_or(f.delay);
        }
        f
    }

    /// A fan-out `timeout` (`nonzero`) or `delay`: at most [`MAX_FANOUT_DURATION`].
    fn fanout_duration(&mut self, v: &Value<'_>, key: &str, nonzero: bool) -> Option<Duration> {
        let d = if nonzero { self.nonzero_duration(v, key)? } else { self.duration(v, key)? };
        if d > MAX_FANOUT_DURATION {
            self.error(v, key, "must be at most 1h");
            return None;
        }
        Some(d)
    }

    fn agent(&mut self, v: &Value<'_>) -> Option<Agent> {
        let t = self.table(v, "agent")?;
        self.check_keys(t, "agent", AGENT_KEYS);
        let bind = match t.get("bind") {
            Some(bv) => match self.string(bv, "agent.bind").map(parse_listen) {
                Some(Ok(a)) => Some(a),
                Some(Err(e)) => {
                    self.error(bv, "agent.bind", e);
                    None
                }
                None => None,
            },
            None => {
                self.error(v, "agent.bind", "missing key (e.g. \"127.0.0.1:7000\")");
                None
            }
        };
        let key_file = match t.get("key_file") {
            Some(kv) => {
                let s = self.string(kv, "agent.key_file")?.to_string();
                Some(self.relative(&s))
            }
            None => {
                self.error(
                    v,
                    "agent.key_file",
                    "missing key: reports must be signed with a pre-shared key",
                );
                None
            }
        };
        let mut a = Agent {
            bind: bind?,
            key_file: key_file?,
            report_interval: Duration::from_secs(1),
            missed_reports: 3,
        };
        if let Some(x) = t.get("report_interval") {
            a.report_interval = self.nonzero_duration(x, "agent.report_interval")?;
        }
        if let Some(x) = t.get("missed_reports") {
            a.missed_reports = self.integer(x, "agent.missed_reports", 1, 1000)? as u32;
        }
        Some(a)
    }

    fn agent_pull(&mut self, v: &Value<'_>, path: &str) -> Option<AgentPull> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, PULL_KEYS);
        let port = match t.get("port") {
            Some(x) => self.integer(x, &format!("{path}.port"), 1, 65_535)? as u16,
            None => {
                self.error(v, &format!("{path}.port"), "missing key (the servers' agent port)");
                return None;
            }
        };
        let mut p =
            AgentPull { port, interval: Duration::from_secs(2), timeout: Duration::from_secs(1) };
        if let Some(x) = t.get("interval") {
            p.interval = self.nonzero_duration(x, &format!("{path}.interval"))?;
        }
        if let Some(x) = t.get("timeout") {
            p.timeout = self.nonzero_duration(x, &format!("{path}.timeout"))?;
        }
        Some(p)
    }

    fn scale(&mut self, v: &Value<'_>, path: &str) -> Option<ScaleRule> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, SCALE_KEYS);
        let threshold = match t.get("threshold").map(|x| (x, x.get_ref())) {
            Some((_, DeValue::Integer(i))) => {
                i64::from_str_radix(i.as_str(), i.radix()).ok().map(|n| n as f64)
            }
            Some((_, DeValue::Float(f))) => f.as_str().parse::<f64>().ok(),
            Some((x, other)) => {
                let found = other.type_str();
                self.error(
                    x,
                    &format!("{path}.threshold"),
                    format!("expected a number, found {found}"),
                );
                return None;
            }
            None => {
                self.error(
                    v,
                    &format!("{path}.threshold"),
                    "missing key (average load per healthy server)",
                );
                return None;
            }
        };
        let Some(threshold) = threshold.filter(|x| x.is_finite() && *x >= 0.0) else {
            if let Some(x) = t.get("threshold") {
                self.error(x, &format!("{path}.threshold"), "must be a number ≥ 0");
            }
            return None;
        };
        let mut r = ScaleRule {
            threshold,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
            command: None,
            webhook: None,
        };
        if let Some(x) = t.get("window") {
            r.window = self.duration(x, &format!("{path}.window"))?;
        }
        if let Some(x) = t.get("cooldown") {
            r.cooldown = self.duration(x, &format!("{path}.cooldown"))?;
        }
        if let Some(x) = t.get("command") {
            r.command = self.string(x, &format!("{path}.command")).map(str::to_string);
        }
        if let Some(x) = t.get("webhook") {
            let w = self.string(x, &format!("{path}.webhook"))?.to_string();
            if !w.starts_with("http://") {
                self.error(x, &format!("{path}.webhook"), "must be an http:// URL");
                return None;
            }
            r.webhook = Some(w);
        }
        if r.command.is_none() && r.webhook.is_none() {
            self.error(v, path, "needs a `command` or a `webhook`");
            return None;
        }
        Some(r)
    }

    /// Paths in the config are relative to the config file's folder.
    fn relative(&self, p: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(p);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match std::path::Path::new(self.file).parent() {
            Some(dir) => dir.join(p),
            None => p.to_path_buf(),
        }
    }

    fn health(&mut self, v: &Value<'_>, path: &str) -> Option<HealthCheck> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, HEALTH_KEYS);
        let key = |k: &str| format!("{path}.{k}");
        let kind_name = match t.get("kind") {
            Some(kv) => self.string(kv, &key("kind"))?.to_string(),
            None => "tcp".to_string(),
        };
        let text = |w: &mut Self, k: &str| -> Option<String> {
            t.get(k).and_then(|x| w.string(x, &key(k)).map(str::to_string))
        };
        let kind = match kind_name.as_str() {
            "tcp" => HealthKind::Tcp,
            "http" => {
                let status = match t.get("expect_status") {
                    Some(sv) => {
                        let s = self.string(sv, &key("expect_status"))?;
                        match parse_status_range(s) {
                            Ok(r) => r,
                            Err(e) => {
                                self.error(sv, &key("expect_status"), e);
                                return None;
                            }
                        }
                    }
                    None => (200, 399),
                };
                let path_v = text(self, "path").unwrap_or_else(|| "/".into());
                if !path_v.starts_with('/') || path_v.contains(['\r', '\n', ' ']) {
                    if let Some(pv) = t.get("path") {
                        self.error(
                            pv,
                            &key("path"),
                            "must start with '/' and contain no spaces or line breaks",
                        );
                    }
                    return None;
                }
                let host = text(self, "host");
                if let Some(h) = &host
                    && (h.is_empty() || h.chars().any(|c| c.is_control() || c == ' '))
                {
                    if let Some(hv) = t.get("host") {
                        self.error(
                            hv,
                            &key("host"),
                            "must be non-empty, without spaces or control characters",
                        );
                    }
                    return None;
                }
                HealthKind::Http { path: path_v, host, status, body: text(self, "expect_body") }
            }
            "send-expect" => {
                let send = text(self, "send");
                let expect = text(self, "expect");
                match (send, expect) {
                    (Some(s), Some(e)) if !e.is_empty() => {
                        match t.get("transport").map(|x| (x, x.get_ref().as_str())) {
                            None | Some((_, Some("tcp"))) => HealthKind::SendExpect {
                                send: s.into_bytes(),
                                expect: e.into_bytes(),
                            },
                            Some((_, Some("udp"))) => HealthKind::UdpSendExpect {
                                send: s.into_bytes(),
                                expect: e.into_bytes(),
                            },
                            Some((x, _)) => {
                                self.error(x, &key("transport"), "expected \"tcp\" or \"udp\"");
                                return None;
                            }
                        }
                    }
                    _ => {
                        self.error(
                            v,
                            &key("expect"),
                            "send-expect needs `send` and a non-empty `expect`",
                        );
                        return None;
                    }
                }
            }
            other => {
                let kv = t.get("kind")?;
                self.error(
                    kv,
                    &key("kind"),
                    format!(
                        "unknown health check kind \"{other}\" (expected: tcp, http, send-expect)"
                    ),
                );
                return None;
            }
        };
        let mut h = HealthCheck {
            kind,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        for (k, slot) in [("interval", &mut h.interval), ("timeout", &mut h.timeout)] {
            if let Some(x) = t.get(k) {
                let d = self.nonzero_duration(x, &key(k))?;
                if d > Duration::from_secs(3600) {
                    self.error(x, &key(k), "must be at most 1h");
                    return None;
                }
                *slot = d;
            }
        }
        if let Some(x) = t.get("rise") {
            h.rise = self.integer(x, &key("rise"), 1, 100)? as u32;
        }
        if let Some(x) = t.get("fall") {
            h.fall = self.integer(x, &key("fall"), 1, 100)? as u32;
        }
        Some(h)
    }

    fn servers(&mut self, v: &Value<'_>, path: &str) -> Vec<Server> {
        let DeValue::Array(items) = v.get_ref() else {
            let found = v.get_ref().type_str();
            self.error(v, path, format!("expected an array of servers, found {found}"));
            return Vec::new();
        };
        let mut out: Vec<Server> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{path}[{i}]");
            let server = match item.get_ref() {
                DeValue::String(s) => self.server_addr(item, &key, s).map(Server::new),
                DeValue::Table(t) => {
                    self.check_keys(t, &key, SERVER_KEYS);
                    let addr = match t.get("address") {
                        Some(av) => {
                            let akey = format!("{key}.address");
                            self.string(av, &akey).and_then(|s| self.server_addr(av, &akey, s))
                        }
                        None => {
                            self.error(item, &format!("{key}.address"), "missing key");
                            None
                        }
                    };
                    let weight = match t.get("weight") {
                        Some(wv) => self
                            .integer(wv, &format!("{key}.weight"), 0, MAX_WEIGHT as u64)
                            .map(|n| n as u32),
                        None => Some(1),
                    };
                    addr.zip(weight).map(|(address, weight)| Server {
                        address,
                        weight,
                        state: ServerState::Up,
                    })
                }
                other => {
                    self.error(item, &key, format!("expected an address string or {{ address = ..., weight = ... }}, found {}", other.type_str()));
                    None
                }
            };
            if let Some(s) = server {
                if out.iter().any(|o| o.address == s.address) {
                    self.error(item, &key, format!("{} is listed twice in this pool", s.address));
                } else {
                    out.push(s);
                }
            }
        }
        out
    }

    fn server_addr(
        &mut self,
        v: &Value<'_>,
        key: &str,
        s: &str,
    ) -> Option<crate::addr::ServerAddr> {
        match parse_dest(s) {
            Ok(a) => Some(a),
            Err(e) => {
                self.error(v, key, e);
                None
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Parses "200", "200-299".
fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("\"{s}\" is not a status or range (e.g. \"200\", \"200-399\")");
    let num = |x: &str| x.trim().parse::<u16>().ok().filter(|n| (100..=599).contains(n));
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?),
        None => {
            let n = num(s).ok_or_else(bad)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Parses durations written as "500ms", "2s", "1m", "1h30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("\"{s}\" is not a duration ({e}; write e.g. \"500ms\", \"2s\", \"1m\")")
    })
}

#[cfg(test)]
mod tests;
