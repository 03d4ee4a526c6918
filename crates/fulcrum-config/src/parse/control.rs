//! The top-level `[admin]` (API listener and token) and `[agent]` (agent listener, key, report
//! timing) tables: the control plane's own listeners.

use std::time::Duration;

use super::{Value, Walker};
use crate::addr::parse_listen;
use crate::model::*;

const ADMIN_KEYS: &[&str] = &["bind", "token_file"];
const AGENT_KEYS: &[&str] = &["bind", "key_file", "report_interval", "missed_reports"];

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
        Some(Admin { bind: bind?, token_file })
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
}
