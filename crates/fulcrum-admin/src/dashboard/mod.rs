//! The web dashboard on the admin listener: the page and its assets (embedded in the binary,
//! served at `/` with a strict Content-Security-Policy), the history kept in the daemon (the
//! sampler task and its rings), and its data routes: `GET /api/v1/overview`, `/history`,
//! `/events`, the live stream (`/api/v1/stream`, server-sent events, authenticated by a
//! cookie that `POST /api/v1/session` issues for the token) and the config view
//! (`config_view.rs`). Every data route sits behind the API's bearer token.

mod config_view;
pub mod history;
mod sampler;
mod stream;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::{AdminServer, Shared};
use crate::controller::{ApiError, ReadView};
use crate::events::{EventLog, unix_ms};
use history::{History, Sample};

pub use stream::MAX_STREAMS;

/// A removed server's (or pool's, frontend's) history is kept this long, then freed.
const FORGET_AFTER_S: u64 = 3600;
/// Ticks a live stream may fall behind before it is closed (its page reconnects).
const STREAM_BACKLOG: usize = 8;
/// Most series one history request may ask for.
const MAX_SERIES_PER_REQUEST: usize = 256;

/// The dashboard's state, shared by the sampler task and the routes.
pub struct Dashboard {
    history: Mutex<History>,
    /// The newest live view (JSON), for `GET /api/v1/overview` and a stream's first tick.
    live: Mutex<Arc<str>>,
    ticks: broadcast::Sender<Arc<str>>,
    events: Arc<EventLog>,
    sessions: stream::Sessions,
    streams: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
    /// The admin listener serves TLS: cookies are marked `Secure`.
    secure: bool,
}

impl Dashboard {
    /// Starts the sampler on the current runtime (the control plane's); it stops with `stop`,
    /// and so do the live streams.
    pub fn start(view: ReadView, stop: CancellationToken, secure: bool) -> Arc<Dashboard> {
        let (ticks, _) = broadcast::channel(STREAM_BACKLOG);
        let d = Arc::new(Dashboard {
            history: Mutex::default(),
            live: Mutex::new(Arc::from("{}")),
            ticks,
            events: view.events.clone(),
            sessions: stream::Sessions::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            stop: stop.clone(),
            secure,
        });
        tokio::spawn(run_sampler(d.clone(), view, stop));
        d
    }

    fn live(&self) -> Arc<str> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Samples at once, then once a second, 100 ms past each whole second of the wall clock (so
/// each tick lands in a second of its own), until `stop`.
async fn run_sampler(d: Arc<Dashboard>, view: ReadView, stop: CancellationToken) {
    let mut sampler = sampler::Sampler::default();
    let mut last = Instant::now();
    let mut last_at = 0;
    let mut last_seq = d.events.last_seq();
    // The sampler starts with the daemon: its age is the daemon's uptime.
    let started = Instant::now();
    // The first tick at once, so the overview is there as soon as the listener is.
    let mut wait = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            () = stop.cancelled() => return,
        }
        wait = 1_100 - unix_ms() % 1_000;
        let at = unix_ms() / 1_000;
        if at == last_at {
            continue;
        }
        last_at = at;
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let snap = view.shared.state.load_full();
        let overview = {
            let mut h = d.history.lock().unwrap_or_else(|e| e.into_inner());
            let mut v = sampler.tick(&snap, fulcrum_proxy::now_ms(), at, secs, &mut h, &d.events);
            if at % 60 == 0 {
                h.forget_older(at, FORGET_AFTER_S);
            }
            v["clients"] = json!(crate::clients_api::top_clients(&snap, None, 10));
            v["uptime_s"] = json!(started.elapsed().as_secs());
            v["reloads"] = json!(view.reloads.load(std::sync::atomic::Ordering::Relaxed));
            v["history"] = json!({
                "series": h.len(), "bytes": h.bytes(),
                "bytes_per_series_max": history::BYTES_PER_SERIES,
            });
            v
        };
        let text: Arc<str> = Arc::from(overview.to_string());
        *d.live.lock().unwrap_or_else(|e| e.into_inner()) = text.clone();
        let upto = d.events.last_seq();
        if d.ticks.receiver_count() > 0 {
            let events: Vec<_> =
                d.events.since(last_seq, 100).into_iter().filter(|e| e.seq <= upto).collect();
            let _ = d.ticks.send(stream::tick(&text, &events));
        }
        last_seq = upto;
    }
}

/// Routes behind the API's bearer token (merged into the API router before its auth layer).
pub fn api_routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/history", get(history_route))
        .route("/api/v1/events", get(events))
        .route("/api/v1/session", post(stream::session))
        .merge(config_view::routes())
}

/// The page, its assets and the live stream (which checks its own cookie or token).
pub fn page_routes(s: Shared) -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", FAVICON) }))
        .route("/api/v1/stream", get(stream::stream))
        .with_state(s)
}

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const FAVICON: &str = include_str!("assets/favicon.svg");

/// The policy every page and asset is sent with: scripts, styles and data only from this
/// origin (no inline script), never inside a frame.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure_headers(h);
    r
}

/// Headers that keep the page out of frames and other origins' reach.
pub fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

async fn overview(State(s): State<Shared>) -> Response {
    let text = s.dashboard.live();
    ([(header::CONTENT_TYPE, "application/json")], text.to_string()).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

async fn events(State(s): State<Shared>, Query(q): Query<EventsQuery>) -> axum::Json<Value> {
    let events = s.dashboard.events.since(q.after, crate::events::KEEP_EVENTS);
    axum::Json(json!({ "events": events, "last": s.dashboard.events.last_seq() }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    /// Comma-separated series names; every frontend and pool when absent.
    series: Option<String>,
    /// `hour` (1 s steps) or `day` (1 min steps).
    #[serde(default = "hour")]
    range: String,
}

fn hour() -> String {
    "hour".into()
}

/// Columns of one series: `start` (Unix seconds of the first point), then one array per
/// field, `null` where there is no value.
fn columns(start: Option<u64>, step: u64, points: &[Sample]) -> Value {
    use sampler::num;
    let col = |get: fn(&Sample) -> Value| -> Vec<Value> {
        points.iter().map(|p| if p.is_gap() { Value::Null } else { get(p) }).collect()
    };
    json!({
        "start": start, "step_s": step,
        "active": col(|p| json!(p.active)),
        "load": col(|p| if p.load == history::NO_LOAD { Value::Null } else { json!(p.load) }),
        "conns": col(|p| num(p.conns)), "requests": col(|p| num(p.requests)),
        "errors": col(|p| num(p.errors)),
        "bytes_in": col(|p| num(p.bytes_in)), "bytes_out": col(|p| num(p.bytes_out)),
        "p50_ms": col(|p| num(p.p50_ms)), "p99_ms": col(|p| num(p.p99_ms)),
        "up": col(|p| num(p.up)),
    })
}

async fn history_route(
    State(s): State<Shared>,
    Query(q): Query<HistoryQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let day = match q.range.as_str() {
        "hour" => false,
        "day" => true,
        other => {
            return Err(ApiError::new(400, format!("range: \"{other}\" is not hour or day")));
        }
    };
    let h = s.dashboard.history.lock().unwrap_or_else(|e| e.into_inner());
    let names: Vec<String> = match &q.series {
        Some(list) => list.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect(),
        None => h
            .names()
            .filter(|n| n.starts_with("frontend/") || n.starts_with("pool/"))
            .map(str::to_string)
            .collect(),
    };
    if names.len() > MAX_SERIES_PER_REQUEST {
        return Err(ApiError::new(
            400,
            format!("series: at most {MAX_SERIES_PER_REQUEST} in one request"),
        ));
    }
    let mut out = serde_json::Map::new();
    for name in names {
        let Some(series) = h.get(&name) else { continue };
        let v = if day {
            let (start, pts) = series.minute_points();
            columns(start, 60, &pts)
        } else {
            let (start, pts) = series.seconds.points();
            columns(start, 1, &pts)
        };
        out.insert(name, v);
    }
    Ok(axum::Json(json!({ "range": q.range, "series": out })))
}

/// Whether `s` knows the token in `headers` (or needs none).
pub(crate) fn token_ok(s: &AdminServer, headers: &axum::http::HeaderMap) -> bool {
    crate::api::token_ok(s, headers)
}
