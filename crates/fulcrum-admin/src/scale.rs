//! The scale-out / scale-in signal of a pool: samples the average load per healthy server
//! every second (the servers' own reports when fresh, else the balancer's connection counts),
//! feeds the pure trigger from fulcrum-core, and when it fires runs the command or posts the
//! webhook, logs the event, counts it and keeps it for the admin API. A failing command is
//! logged, never fatal. A scale-in names the server to stop (`FULCRUM_SERVER`): the idlest in
//! rotation, drained first through the controller as the API drains, and given up to the
//! drain timeout for its open connections to finish before the command runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fulcrum_config::{Pool, ScaleRule};
use fulcrum_core::scale::{Direction, Trigger, idlest};
use fulcrum_proxy::{Shared, now_ms};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::controller::ControllerHandle;

const KEEP: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct ScaleEvent {
    pub pool: String,
    pub direction: &'static str,
    /// The server a scale-in named (and drained) for its command to stop; `None` for a
    /// scale-out, or when fewer than two servers were in rotation.
    pub server: Option<String>,
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

/// Each server of `pool` now, with its load when it is in rotation: its fresh report plus
/// the clients sent since, else the balancer's open connections to it.
fn loads(shared: &Shared, pool: &str) -> Option<Vec<(String, Option<u64>)>> {
    let snap = shared.state.load();
    let p = snap.pool(pool)?;
    let now = now_ms();
    let load = |s: &fulcrum_proxy::ServerEntry| match s.stats.fresh_report(p.report_ttl_ms, now) {
        Some((clients, _, assigned)) => clients.saturating_add(assigned),
        None => s.stats.active.load(Ordering::Relaxed),
    };
    Some(p.servers.iter().map(|s| (s.key.clone(), s.in_rotation().then(|| load(s)))).collect())
}

/// Average load per in-rotation server, and how many servers that is.
fn average(loads: &[(String, Option<u64>)]) -> Option<(f64, usize)> {
    let (sum, n) = loads
        .iter()
        .filter_map(|(_, l)| *l)
        .fold((0u64, 0usize), |(s, n), l| (s.saturating_add(l), n + 1));
    (n > 0).then(|| (sum as f64 / n as f64, n))
}

/// What a fired signal needs besides the pool's rule.
pub struct Context {
    pub shared: Arc<Shared>,
    pub log: Arc<ScaleLog>,
    /// The dashboard's recent events.
    pub events: Arc<crate::events::EventLog>,
    /// Where a scale-in drains its server (the API's path).
    pub controller: ControllerHandle,
    /// Longest wait for a drained server's connections before its command runs.
    pub drain_wait: Duration,
}

pub async fn run(pool: Pool, cx: Context, stop: CancellationToken) {
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
        let Some(loads) = loads(&cx.shared, &pool.name) else { continue };
        let Some((load, servers)) = average(&loads) else { continue };
        for (t, rule) in &mut triggers {
            if t.observe(load, now_ms()) {
                let server = match t.direction {
                    Direction::Out => None,
                    Direction::In => {
                        let l: Vec<Option<u64>> = loads.iter().map(|(_, l)| *l).collect();
                        idlest(&l).and_then(|i| loads.get(i)).map(|(key, _)| key.clone())
                    }
                };
                let fired =
                    Fired { pool: &pool.name, direction: t.direction, load, servers, server };
                fire(fired, rule, &cx).await;
            }
        }
    }
}

/// One firing of a signal.
struct Fired<'a> {
    pool: &'a str,
    direction: Direction,
    load: f64,
    servers: usize,
    server: Option<String>,
}

/// Drains `server` through the controller, then waits (up to `cx.drain_wait`) until the
/// balancer has no connection open to it. Err: it was not drained; its command must not run.
async fn drain(pool: &str, server: &str, cx: &Context) -> Result<(), String> {
    let c = cx
        .controller
        .get()
        .and_then(std::sync::Weak::upgrade)
        .ok_or_else(|| "cannot drain: the controller is not reachable".to_string())?;
    let r = c.lock().await.drain_for_scale_in(pool, server);
    let (_, write) = r.map_err(|e| format!("cannot drain {server}: {}", e.message))?;
    // A state file that cannot be written is logged by finish(); the drain itself holds.
    let _ = write.finish().await;
    let open = || {
        let snap = cx.shared.state.load();
        snap.pool(pool)
            .and_then(|p| p.servers.iter().find(|s| s.key == server).map(|s| s.stats.clone()))
            .map_or(0, |st| st.active.load(Ordering::Relaxed))
    };
    let until = tokio::time::Instant::now() + cx.drain_wait;
    while open() > 0 {
        if tokio::time::Instant::now() >= until {
            tracing::warn!(pool, server, open = open(), "drain timeout passed: stopping it anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn fire(f: Fired<'_>, rule: &ScaleRule, cx: &Context) {
    let Fired { pool, direction: d, load, servers, server } = f;
    let at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let drained = match &server {
        Some(s) => drain(pool, s, cx).await,
        None => Ok(()),
    };
    let (action, outcome) = if let Err(e) = drained {
        (String::new(), e)
    } else if let Some(cmd) = &rule.command {
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("FULCRUM_POOL", pool)
            .env("FULCRUM_LOAD", format!("{load:.2}"))
            .env("FULCRUM_SERVERS", servers.to_string())
            .env("FULCRUM_SERVER", server.as_deref().unwrap_or(""))
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
        let body = serde_json::json!({ "pool": pool, "direction": d.name(), "server": server, "load": load, "servers": servers });
        (format!("webhook: {url}"), post(url, &body.to_string()).await)
    } else {
        (String::new(), "no action".into())
    };
    let shown = server.as_deref().unwrap_or("");
    if outcome == "ok" {
        tracing::warn!(pool, direction = d.name(), server = shown, load, servers, action = %action, "scale signal fired");
    } else {
        tracing::error!(pool, direction = d.name(), server = shown, load, servers, action = %action, outcome = %outcome, "scale signal fired but its action failed");
    }
    let what = match &server {
        Some(s) => format!(
            "{} (drained {s}), load {load:.2} over {servers} server(s): {outcome}",
            d.name()
        ),
        None => format!("{}, load {load:.2} over {servers} server(s): {outcome}", d.name()),
    };
    cx.events.push(crate::events::EventKind::Scale, Some(pool), server.as_deref(), what);
    cx.log.push(ScaleEvent {
        pool: pool.to_string(),
        direction: d.name(),
        server,
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
