//! `[frontend.NAME]` tables: bind address, protocol, pool reference, per-frontend limits and
//! timeouts, directory mode, and the `fanout` sub-table (fan-out and hedge settings).

use std::time::Duration;

use toml::de::DeTable;

use super::{Value, Walker};
use crate::addr::parse_listen;
use crate::model::*;

const FRONTEND_KEYS: &[&str] = &[
    "bind",
    "protocol",
    "pool",
    "idle_timeout",
    "send_timeout",
    "first_byte_timeout",
    "max_connections",
    "session_timeout",
    "max_sessions",
    "max_sessions_per_source",
    "mode",
    "delay",
    "fanout",
    "framing",
    "quit",
    "sessions",
    "header_timeout",
    "max_header_bytes",
    "max_headers",
    "max_body",
    "min_body_rate",
    "keepalive_timeout",
    "trusted_proxies",
    "forwarded",
    "route",
    "tls",
    "accept_proxy",
    "sni_timeout",
    "allow",
    "deny",
    "allow_file",
    "deny_file",
    "limits",
    "fair_share",
    "fair_share_above",
    "fair_share_exempt",
    "pressure_idle_timeout",
];
const FANOUT_KEYS: &[&str] =
    &["timeout", "on_timeout", "reject_prefix", "servers", "delay", "match"];
/// Longest fan-out `timeout` and `delay`.
const MAX_FANOUT_DURATION: Duration = Duration::from_secs(3600);

impl Walker<'_> {
    pub(super) fn frontend(
        &mut self,
        name: &str,
        v: &Value<'_>,
        path: &str,
        c: &Config,
    ) -> Option<Frontend> {
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
                const SUPPORTED: &str = "tcp, udp, directory, directory-udp, http, https";
                match p {
                    "tcp" => protocol = Protocol::Tcp,
                    "udp" => protocol = Protocol::Udp,
                    "directory" => protocol = Protocol::Directory,
                    "directory-udp" => protocol = Protocol::DirectoryUdp,
                    "http" => protocol = Protocol::Http,
                    "https" => protocol = Protocol::Https,
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
        if let Some(x) = t.get("first_byte_timeout") {
            let key = format!("{path}.first_byte_timeout");
            if matches!(f.protocol, Protocol::Udp | Protocol::DirectoryUdp) {
                self.error(x, &key, "UDP has no connection to wait on");
                ok = false;
            } else {
                f.first_byte_timeout = self.nonzero_duration(x, &key);
            }
        }
        if let Some(mv) = t.get("max_connections") {
            f.max_connections = self
                .integer(mv, &format!("{path}.max_connections"), 1, 10_000_000)
                .map(|n| n as usize);
        }
        ok &= self.line_protocol(t, path, &mut f);
        ok &= self.http_frontend(t, path, &mut f);
        ok &= self.tls_frontend(t, v, path, &mut f);
        ok &= self.frontend_pool_tls(t, path, &f, c);
        if let Some(x) = t.get("sessions") {
            let key = format!("{path}.sessions");
            match self.boolean(x, &key) {
                Some(b) if f.protocol == Protocol::Udp && f.mode == Mode::Proxy => {
                    f.sessions = b;
                    if !b && t.get("session_timeout").is_none() {
                        f.session_timeout = DEFAULT_DATAGRAM_TIMEOUT;
                    }
                }
                Some(_) => {
                    self.error(
                        x,
                        &key,
                        "only a udp frontend in proxy mode keeps sessions \
                         (fan-out already sends every datagram on its own)",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        // After `sessions`: whether a UDP pool may send PROXY headers depends on it.
        ok &= self.proxy_protocol(t, path, &mut f, c);
        ok &= self.access_lists(t, path, &mut f);
        ok &= self.client_limits(t, path, &mut f);
        ok &= self.fair_share(t, path, &mut f);
        let routes_ok = self.frontend_routes(t, path, c, &mut f);
        ok &= routes_ok;
        if let Some(x) = t.get("sni_timeout") {
            let key = format!("{path}.sni_timeout");
            if routes_ok && !f.has_sni_routes() {
                self.error(
                    x,
                    &key,
                    "only read on a frontend with routes by `sni` (a tcp frontend, or an https \
                     one with passthrough routes)",
                );
                ok = false;
            } else {
                match self.fanout_duration(x, &key, true) {
                    Some(d) => f.sni_timeout = d,
                    None => ok = false,
                }
            }
        }
        ok.then_some(f)
    }

    /// `framing` and `quit`, the keys of the line protocols (TCP fan-out, hedge, directory).
    /// False when they are set where no line protocol reads them, or badly.
    fn line_protocol(&mut self, t: &DeTable<'_>, path: &str, f: &mut Frontend) -> bool {
        let lines = match f.protocol {
            Protocol::Directory => true,
            Protocol::Tcp => f.mode != Mode::Proxy,
            Protocol::Udp | Protocol::DirectoryUdp | Protocol::Http | Protocol::Https => false,
        };
        let mut ok = true;
        for key in ["framing", "quit"] {
            if let Some(x) = t.get(key)
                && !lines
            {
                self.error(
                    x,
                    &format!("{path}.{key}"),
                    "only line protocols read it: a tcp frontend in fanout or hedge mode, \
                     or a directory frontend (a datagram is already one request)",
                );
                ok = false;
            }
        }
        if let Some(x) = t.get("framing") {
            let key = format!("{path}.framing");
            let choices = [("line", Framing::Line), ("message", Framing::Message)];
            match self.word(x, &key, "framing", &choices) {
                Some(v) => f.framing = v,
                None => ok = false,
            }
            if let Mode::Fanout(fan) | Mode::Hedge(fan) = &f.mode
                && f.framing == Framing::Message
                && fan.matching == AnswerMatch::FirstWord
            {
                self.error(
                    x,
                    &key,
                    "framing = \"message\" carries one request at a time per connection: \
                     it cannot be combined with fanout.match = \"first-word\"",
                );
                ok = false;
            }
        }
        if let Some(x) = t.get("quit") {
            let key = format!("{path}.quit");
            match self.string(x, &key) {
                Some(q) if q.is_empty() || q.contains(['\n', '\r']) => {
                    self.error(x, &key, "must be a non-empty word without line breaks");
                    ok = false;
                }
                Some(q) => f.quit = Some(q.to_string()),
                None => ok = false,
            }
        }
        ok
    }

    pub(super) fn fanout(&mut self, v: &Value<'_>, path: &str) -> Fanout {
        let mut f = Fanout::default();
        let Some(t) = self.table(v, path) else { return f };
        self.check_keys(t, path, FANOUT_KEYS);
        if let Some(x) = t.get("timeout") {
            f.timeout =
                self.fanout_duration(x, &format!("{path}.timeout"), true).unwrap_or(f.timeout);
        }
        if let Some(x) = t.get("match") {
            let key = format!("{path}.match");
            let choices =
                [("none", AnswerMatch::OneAtATime), ("first-word", AnswerMatch::FirstWord)];
            if let Some(v) = self.word(x, &key, "answer matching", &choices) {
                f.matching = v;
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
    pub(super) fn fanout_duration(
        &mut self,
        v: &Value<'_>,
        key: &str,
        nonzero: bool,
    ) -> Option<Duration> {
        let d = if nonzero { self.nonzero_duration(v, key)? } else { self.duration(v, key)? };
        if d > MAX_FANOUT_DURATION {
            self.error(v, key, "must be at most 1h");
            return None;
        }
        Some(d)
    }
}
