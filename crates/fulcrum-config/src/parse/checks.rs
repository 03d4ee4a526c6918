//! The tables of a pool's control-plane tasks: `health` (active checks: kind, timing, HTTP
//! status range and body, send/expect), `agent_pull` (polling the backends' agents) and
//! `scale_out`/`scale_in` (scale signals).

use std::time::Duration;

use toml::de::DeValue;

use super::{Value, Walker};
use crate::model::*;

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
const PULL_KEYS: &[&str] = &["port", "send", "interval", "timeout"];
const SCALE_KEYS: &[&str] = &["threshold", "window", "cooldown", "command", "webhook"];

impl Walker<'_> {
    pub(super) fn health(&mut self, v: &Value<'_>, path: &str) -> Option<HealthCheck> {
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

    pub(super) fn agent_pull(&mut self, v: &Value<'_>, path: &str) -> Option<AgentPull> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, PULL_KEYS);
        let port = match t.get("port") {
            Some(x) => Some(self.integer(x, &format!("{path}.port"), 1, 65_535)? as u16),
            None => None,
        };
        let send = match t.get("send") {
            Some(x) => {
                let key = format!("{path}.send");
                let text = self.string(x, &key)?;
                if text.is_empty() || text.len() > MAX_PULL_SEND {
                    self.error(x, &key, format!("must be 1 to {MAX_PULL_SEND} bytes"));
                    return None;
                }
                Some(text.as_bytes().to_vec())
            }
            None => None,
        };
        // Neither: a silent connect to the service port, waiting for it to speak first.
        if port.is_none() && send.is_none() {
            self.error(
                v,
                &format!("{path}.port"),
                "missing key: give `port` (the servers' agent port) or `send` (a question for \
                 the servers themselves, e.g. \"__clients?\\n\")",
            );
            return None;
        }
        let mut p = AgentPull {
            port,
            send,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        };
        if let Some(x) = t.get("interval") {
            p.interval = self.nonzero_duration(x, &format!("{path}.interval"))?;
        }
        if let Some(x) = t.get("timeout") {
            p.timeout = self.nonzero_duration(x, &format!("{path}.timeout"))?;
        }
        Some(p)
    }

    pub(super) fn scale(&mut self, v: &Value<'_>, path: &str) -> Option<ScaleRule> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::parse::parse_str;

    fn pool(extra: &str) -> String {
        format!("[frontend.w]\nbind = \"9000\"\npool = \"p\"\n[pool.p]\nservers = []\n{extra}\n")
    }

    fn errors(extra: &str) -> String {
        match parse_str(&pool(extra), "f.toml") {
            Ok(_) => String::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
        }
    }

    #[test]
    fn agent_pull_may_ask_the_servers_themselves() {
        let c = parse_str(
            &pool(r#"agent_pull = { send = "__clients?\n", interval = "250ms" }"#),
            "f.toml",
        )
        .unwrap();
        let p = c.pool("p").unwrap().agent_pull.clone().unwrap();
        assert_eq!((p.port, p.send.as_deref()), (None, Some(&b"__clients?\n"[..])));
        assert_eq!(p.interval, std::time::Duration::from_millis(250));
        let c = parse_str(&pool("agent_pull = { port = 9999 }"), "f.toml").unwrap();
        let p = c.pool("p").unwrap().agent_pull.clone().unwrap();
        assert_eq!((p.port, p.send), (Some(9999), None));
    }

    #[test]
    fn agent_pull_needs_a_port_or_a_question() {
        let e = errors(r#"agent_pull = { interval = "1s" }"#);
        assert!(e.contains("f.toml:6") && e.contains("pool.p.agent_pull.port: missing key"), "{e}");
        let e = errors(r#"agent_pull = { send = "" }"#);
        assert!(e.contains("pool.p.agent_pull.send: must be 1 to 512 bytes"), "{e}");
        let e = errors(&format!("agent_pull = {{ send = \"{}\" }}", "x".repeat(513)));
        assert!(e.contains("pool.p.agent_pull.send: must be 1 to 512 bytes"), "{e}");
        let e = errors("agent_pull = { send = 5 }");
        assert!(e.contains("pool.p.agent_pull.send: expected a string"), "{e}");
    }

    #[test]
    fn trust_claimed_address_is_a_pool_boolean() {
        let c = parse_str(&pool("trust_claimed_address = true"), "f.toml").unwrap();
        assert!(c.pool("p").unwrap().trust_claimed_address);
        let c = parse_str(&pool(""), "f.toml").unwrap();
        assert!(!c.pool("p").unwrap().trust_claimed_address, "off unless set");
        let e = errors("trust_claimed_address = \"yes\"");
        assert!(e.contains("pool.p.trust_claimed_address: expected true or false"), "{e}");
    }
}
