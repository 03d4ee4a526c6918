//! The admin API client that `fulcrum ctl` and `fulcrum top` share: the token from
//! `--token` or `--token-file`, one call as JSON in and out, and the error text an operator
//! sees when the API refuses or cannot be reached.

use std::time::Duration;

use serde_json::Value;

use crate::cli::ApiArgs;
use crate::run::Failure;

pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    /// Reads the token file now, so a bad path is a usage error before anything else runs;
    /// `timeout` bounds each whole call.
    pub fn new(args: &ApiArgs, timeout: Duration) -> Result<Api, Failure> {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| Failure::Config(format!("--token-file {}: {e}", f.display())))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Api { base: args.api.trim_end_matches('/').to_string(), token, agent })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let agent = &self.agent;
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let unreachable = |e: ureq::Error| {
            Failure::Runtime(format!("cannot reach the admin API at {}: {e}", self.base))
        };
        let mut resp = match (method, body) {
            ("GET", _) => with_auth(agent.get(&url), &auth).call(),
            ("DELETE", _) => with_auth(agent.delete(&url), &auth).call(),
            ("POST", None) => with_auth(agent.post(&url), &auth).send_empty(),
            ("POST", Some(b)) => with_auth(agent.post(&url), &auth).send(b.to_string()),
            (_, b) => {
                with_auth(agent.patch(&url), &auth).send(b.unwrap_or(Value::Null).to_string())
            }
        }
        .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let mut msg = format!("{status}: {}", v["error"].as_str().unwrap_or("request failed"));
        for e in v["errors"].as_array().into_iter().flatten() {
            msg.push_str(&format!("\n  {}", e.as_str().unwrap_or("")));
        }
        Err(Failure::Runtime(msg))
    }
}

/// The token, and the JSON content type the API asks of every state-changing request (a web
/// page cannot send it cross-site without a preflight, which the API refuses).
fn with_auth<B>(r: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    let r = r.header("Content-Type", "application/json");
    match auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    }
}

/// Percent-encodes a path segment or query value (addresses hold ':' and, for IPv6,
/// brackets).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The route that changes one server (`fulcrum ctl servers drain|enable|...` and `top`'s keys).
pub fn server_path(pool: &str, address: &str) -> String {
    format!("/api/v1/pools/{}/servers/{}", enc(pool), enc(address))
}
