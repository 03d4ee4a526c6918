//! `[pool.NAME]` tables: algorithm, connect timeout and retries, slow start, self-registration,
//! the `eject` policy, the `queue` of clients waiting for a server below its cap, and the
//! `servers` list (addresses, weights, `max_connections`). The per-pool tasks' tables
//! (`health`, `agent_pull`, `scale_out`/`scale_in`) are read by `checks.rs`, the `tls` table
//! by `tls.rs`.

use fulcrum_core::balance::Algorithm;
use fulcrum_core::eject::EjectPolicy;

use toml::de::DeValue;

use super::{Value, Walker};
use crate::addr::parse_dest;
use crate::model::*;

const POOL_KEYS: &[&str] = &[
    "algorithm",
    "servers",
    "connect_timeout",
    "retries",
    "eject",
    "slow_start",
    "health",
    "self_register",
    "trust_claimed_address",
    "agent_pull",
    "scale_out",
    "scale_in",
    "queue",
    "resolve_interval",
    "http",
    "retry_budget",
    "sticky",
    "send_proxy",
    "hash",
    "tls",
    "receive_buffer",
];
const QUEUE_KEYS: &[&str] = &["size", "timeout"];
const EJECT_KEYS: &[&str] = &["failures", "backoff", "max_backoff", "max_percent"];
const SERVER_KEYS: &[&str] = &["address", "weight", "max_connections"];

impl Walker<'_> {
    pub(super) fn pool(&mut self, name: &str, v: &Value<'_>, path: &str) -> Option<Pool> {
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
        if let Some(x) = t.get("receive_buffer") {
            let key = format!("{path}.receive_buffer");
            pool.receive_buffer = match x.get_ref() {
                DeValue::String(s) if s.as_ref() == "auto" => None,
                _ => self.size(x, &key, 4096, 64 << 20).map(|n| n as u32).or(pool.receive_buffer),
            };
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
        if let Some(v) = t.get("trust_claimed_address") {
            let key = format!("{path}.trust_claimed_address");
            pool.trust_claimed_address = self.boolean(v, &key).unwrap_or(false);
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
        if let Some(v) = t.get("queue") {
            pool.queue = self.queue(v, &format!("{path}.queue"));
        }
        if let Some(v) = t.get("resolve_interval") {
            let key = format!("{path}.resolve_interval");
            match self.duration(v, &key) {
                // Faster than this is a lookup storm, not fresher addresses.
                Some(d) if d < MIN_RESOLVE_INTERVAL => self.error(
                    v,
                    &key,
                    format!(
                        "must be at least {}",
                        humantime::format_duration(MIN_RESOLVE_INTERVAL)
                    ),
                ),
                Some(d) => pool.resolve_interval = d,
                None => {}
            }
        }
        self.pool_http(t, path, &mut pool);
        self.pool_hash(t, path, &mut pool);
        self.pool_tls(t, path, &mut pool);
        Some(pool)
    }

    fn queue(&mut self, v: &Value<'_>, path: &str) -> Option<QueueSettings> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, QUEUE_KEYS);
        let size = match t.get("size") {
            Some(sv) => self
                .integer(sv, &format!("{path}.size"), 1, MAX_QUEUE_SIZE as u64)
                .map(|n| n as usize),
            None => Some(DEFAULT_QUEUE_SIZE),
        };
        let timeout = match t.get("timeout") {
            Some(tv) => self.nonzero_duration(tv, &format!("{path}.timeout")),
            None => Some(DEFAULT_QUEUE_TIMEOUT),
        };
        Some(QueueSettings { size: size?, timeout: timeout? })
    }

    pub(super) fn eject(&mut self, v: &Value<'_>, path: &str) -> EjectPolicy {
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

    pub(super) fn servers(&mut self, v: &Value<'_>, path: &str) -> Vec<Server> {
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
                    // Some(None): no cap; None: an invalid one (already reported).
                    let max_connections = match t.get("max_connections") {
                        Some(mv) => self
                            .integer(
                                mv,
                                &format!("{key}.max_connections"),
                                1,
                                u64::from(MAX_SERVER_CONNECTIONS),
                            )
                            .map(|n| Some(n as u32)),
                        None => Some(None),
                    };
                    match (addr, weight, max_connections) {
                        (Some(address), Some(weight), Some(max_connections)) => Some(Server {
                            address,
                            weight,
                            state: ServerState::Up,
                            max_connections,
                        }),
                        _ => None,
                    }
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

    pub(super) fn server_addr(
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
