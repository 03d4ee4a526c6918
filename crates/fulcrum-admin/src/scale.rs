//! The scale-out / scale-in signal of a pool: samples the average load per healthy server
//! every second (the servers' own reports when fresh, else the balancer's connection counts),
//! feeds the pure trigger from fulcrum-core, and when it fires runs the command or posts the
//! webhook, logs the event, counts it and keeps it for the admin API. A failing command is
//! logged, never fatal.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fulcrum_config::{Pool, ScaleRule};
use fulcrum_core::scale::{Direction, Trigger};
use fulcrum_proxy::{Shared, now_ms};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

const KEEP: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct ScaleEvent {
    pub pool: String,
    pub direction: &'static str,
    pub load: f64,
    pub servers: usize,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub action: String,
    pub outcome: String,
}

/// The last events (bounded) and counts per (pool, direction).
#[derive(Debug, Default)]
pub struct ScaleLog {
    events: std::sync::Mutex<VecDeque<ScaleEvent>>,
}

impl ScaleLog {
    fn push(&self, e: ScaleEvent) {
        if let Ok(mut q) = self.events.lock() {
            if q.len() >= KEEP {
                q.pop_front();
            }
            q.push_back(e);
        }
    }

    pub fn events(&self) -> Vec<ScaleEvent> {
        self.events.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    /// Events per (pool, direction), for /metrics.
    pub fn counts(&self) -> Vec<(String, &'static str, u64)> {
        let mut out: Vec<(String, &'static str, u64)> = Vec::new();
        for e in self.events() {
            match out.iter_mut().find(|(p, d, _)| *p == e.pool && *d == e.direction) {
                Some(x) => x.2 += 1,
                None => out.push((e.pool, e.direction, 1)),
            }
        }
        out
    }
}

/// Average load per in-rotation server of `pool` now, and how many servers that is.
fn sample(shared: &Shared, pool: &str) -> Option<(f64, usize)> {
    let snap = shared.state.load();
    let p = snap.pool(pool)?;
    let now = now_ms();
    let (mut sum, mut n) = (0u64, 0usize);
    for s in p.servers.iter().filter(|s| s.in_rotation()) {
        sum += match s.stats.fresh_report(p.report_ttl_ms, now) {
            Some((clients, _, assigned)) => clients + assigned,
            None => s.stats.active.load(Ordering::Relaxed),
        };
        n += 1;
    }
    (n > 0).then(|| (sum as f64 / n as f64, n))
}

pub async fn run(shared: Arc<Shared>, pool: Pool, log: Arc<ScaleLog>, stop: CancellationToken) {
    let mk = |d: Direction, r: &ScaleRule| {
        (
            Trigger::new(
                d,
                r.threshold,
                r.window.as_millis() as u64,
                r.cooldown.as_millis() as u64,
            ),
            r.clone(),
        )
    };
    let mut triggers: Vec<(Trigger, ScaleRule)> = Vec::new();
    if let Some(r) = &pool.scale_out {
        triggers.push(mk(Direction::Out, r));
    }
    if let Some(r) = &pool.scale_in {
        triggers.push(mk(Direction::In, r));
    }
    // Sample often enough for short windows (tests), at most once a second for long ones.
    let period = triggers
        .iter()
        .map(|(t, _)| Duration::from_millis((t.window_ms / 10).clamp(50, 1_000)))
        .min()
        .unwrap_or(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        let Some((load, servers)) = sample(&shared, &pool.name) else { continue };
        for (t, rule) in &mut triggers {
            if t.observe(load, now_ms()) {
                fire(&pool.name, t.direction, load, servers, rule, &log).await;
            }
        }
    }
}

async fn fire(
    pool: &str,
    d: Direction,
    load: f64,
    servers: usize,
    rule: &ScaleRule,
    log: &ScaleLog,
) {
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (action, outcome) = if let Some(cmd) = &rule.command {
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("FULCRUM_POOL", pool)
            .env("FULCRUM_LOAD", format!("{load:.2}"))
            .env("FULCRUM_SERVERS", servers.to_string())
            .env("FULCRUM_DIRECTION", d.name())
            .kill_on_drop(true)
            .output();
        let outcome = match tokio::time::timeout(Duration::from_secs(60), run).await {
            Ok(Ok(o)) if o.status.success() => "ok".to_string(),
            Ok(Ok(o)) => format!("command failed: {}", o.status),
            Ok(Err(e)) => format!("cannot run command: {e}"),
            Err(_) => "command timed out after 60s".to_string(),
        };
        (format!("command: {cmd}"), outcome)
    } else if let Some(url) = &rule.webhook {
        let body = serde_json::json!({ "pool": pool, "direction": d.name(), "load": load, "servers": servers });
        (format!("webhook: {url}"), post(url, &body.to_string()).await)
    } else {
        (String::new(), "no action".into())
    };
    if outcome == "ok" {
        tracing::warn!(pool, direction = d.name(), load, servers, action = %action, "scale signal fired");
    } else {
        tracing::error!(pool, direction = d.name(), load, servers, action = %action, outcome = %outcome, "scale signal fired but its action failed");
    }
    log.push(ScaleEvent {
        pool: pool.to_string(),
        direction: d.name(),
        load,
        servers,
        at_unix_ms,
        action,
        outcome,
    });
}

/// POSTs `body` as JSON to an http:// URL with a bounded time; returns "ok" or the reason.
async fn post(url: &str, body: &str) -> String {
    let (url, body) = (url.to_string(), body.to_string());
    let r = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        match agent.post(&url).header("Content-Type", "application/json").send(body) {
            Ok(r) if r.status().is_success() => "ok".to_string(),
            Ok(r) => format!("webhook answered {}", r.status()),
            Err(e) => format!("webhook failed: {e}"),
        }
    })
    .await;
    r.unwrap_or_else(|e| format!("webhook task failed: {e}"))
}
