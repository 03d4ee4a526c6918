//! The top-level `[admin]` (API listener and token) and `[agent]` (agent listener, key, report
//! timing) tables: the control plane's own listeners; and `[resolver]`, the name servers it
//! looks server host names up with.

use std::time::Duration;

use toml::de::DeValue;

use super::{Value, Walker};
use crate::addr::parse_listen;
use crate::model::*;

const ADMIN_KEYS: &[&str] = &["bind", "token_file", "tls"];
const ADMIN_TLS_KEYS: &[&str] = &["cert", "key"];
const AGENT_KEYS: &[&str] = &["bind", "key_file", "report_interval", "missed_reports"];
const RESOLVER_KEYS: &[&str] = &["servers"];
/// Name servers are tried in order; a longer list only adds waiting when they all fail.
const MAX_NAME_SERVERS: usize = 16;

impl Walker<'_> {
    pub(super) fn admin(&mut self, v: &Value<'_>) -> Option<Admin> {
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
        let tls = match t.get("tls") {
            Some(tv) => Some(self.admin_tls(tv)?),
            None => None,
        };
        Some(Admin { bind: bind?, token_file, tls })
    }

    /// `[admin] tls = { cert = "PATH", key = "PATH" }`: the admin listener serves HTTPS.
    fn admin_tls(&mut self, v: &Value<'_>) -> Option<CertFiles> {
        let t = self.table(v, "admin.tls")?;
        self.check_keys(t, "admin.tls", ADMIN_TLS_KEYS);
        let mut file = |k: &str| match t.get(k) {
            Some(pv) => self.string(pv, &format!("admin.tls.{k}")).map(|p| self.relative(p)),
            None => {
                self.error(v, &format!("admin.tls.{k}"), "missing key (a PEM file)");
                None
            }
        };
        let (cert, key) = (file("cert"), file("key"));
        Some(CertFiles { cert: cert?, key: key? })
    }

    pub(super) fn agent(&mut self, v: &Value<'_>) -> Option<Agent> {
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

    pub(super) fn resolver(&mut self, v: &Value<'_>) -> Option<Resolver> {
        let t = self.table(v, "resolver")?;
        self.check_keys(t, "resolver", RESOLVER_KEYS);
        let Some(sv) = t.get("servers") else {
            self.error(
                v,
                "resolver.servers",
                "missing key (name servers as \"IP:PORT\", e.g. [\"127.0.0.1:53\"]; leave out [resolver] to use /etc/resolv.conf)",
            );
            return None;
        };
        let DeValue::Array(items) = sv.get_ref() else {
            let found = sv.get_ref().type_str();
            self.error(
                sv,
                "resolver.servers",
                format!("expected an array of \"IP:PORT\" strings, found {found}"),
            );
            return None;
        };
        if items.is_empty() || items.len() > MAX_NAME_SERVERS {
            self.error(
                sv,
                "resolver.servers",
                format!("list 1 to {MAX_NAME_SERVERS} name servers"),
            );
            return None;
        }
        let mut servers = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = format!("resolver.servers[{i}]");
            let Some(s) = self.string(item, &key) else { continue };
            match s.trim().parse::<std::net::SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => servers.push(a),
                Ok(a) => self.error(item, &key, format!("{a} is not a name server address")),
                Err(_) => self.error(
                    item,
                    &key,
                    format!("\"{s}\" is not IP:PORT (e.g. \"127.0.0.1:53\", \"[::1]:53\"); names are not allowed here"),
                ),
            }
        }
        (servers.len() == items.len()).then_some(Resolver { servers })
    }
}
