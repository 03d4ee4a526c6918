//! The admin HTTP API (axum) on its own listener: JSON in and out, bearer-token auth on every
//! `/api/` route, errors as `{"error": "..."}`. Handlers lock the controller only for the
//! moment of a change; the data plane never waits on this lock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use fulcrum_proxy::RateLimit;
use subtle::ConstantTimeEq;

use crate::controller::{ApiError, Controller, ReadView};

pub struct AdminServer {
    pub controller: Arc<Mutex<Controller>>,
    /// For readers: metrics, readiness and listings never take the controller's lock.
    pub view: ReadView,
    /// `None` only on a loopback listener configured without a token.
    pub token: Option<String>,
    /// The web dashboard's history, events and streams.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
    /// `[admin] tls`: the listener serves HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub(crate) type Shared = Arc<AdminServer>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({ "error": self.message });
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        (status, axum::Json(body)).into_response()
    }
}

/// Most admin connections open at once; further ones are closed at accept. The API is for a
/// few operators and scripts, and each connection costs a task and a descriptor.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// How long a client has to send a whole request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request body the API reads (a server to add, a patch).
const MAX_BODY: usize = 64 * 1024;

static ADMIN_FULL_LOG: RateLimit = RateLimit::new(1_000);

/// Serves the admin API on `listener` until `stop` fires, then lets requests in progress
/// finish for at most `drain`; connections still open then (a client that never finished its
/// request head, say) are closed, so shutdown is bounded.
///
/// A hand-made accept loop rather than `axum::serve`: that one has no header-read timeout,
/// no connection cap, and waits for every connection without limit on shutdown.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    server: AdminServer,
    stop: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let tls = server.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let app = router(Arc::new(server));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
            // Reap finished connections so the set stays as small as the live ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; never end the loop.
                tracing::warn!(error = %e, "admin API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Some(skipped) = ADMIN_FULL_LOG.allow(fulcrum_proxy::now_ms()) {
                tracing::warn!(
                    limit = MAX_ADMIN_CONNECTIONS,
                    skipped,
                    "admin API connection limit reached: connection closed"
                );
            }
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        let tls = tls.clone();
        let stream = crate::stall::StallGuard::new(stream, crate::stall::WRITE_STALL_LIMIT);
        conns.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_conn(stream, service, stop).await,
                Some(acceptor) => {
                    // The handshake counts against the same limit as a request head.
                    let shake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
                    tokio::select! {
                        r = shake => {
                            if let Ok(Ok(s)) = r {
                                serve_conn(s, service, stop).await;
                            }
                        }
                        () = stop.cancelled() => {}
                    }
                }
            }
        });
    }
    drop(listener);
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all_done).await.is_err() {
        tracing::info!(open = conns.len(), "admin API: closing connections still open");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    Ok(())
}

/// Serves one admin connection (plain or TLS) until it ends or `stop` fires.
async fn serve_conn<S>(stream: S, service: S2, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            // Finish the request in progress, take no further one.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

type S2 = hyper_util::service::TowerToHyperService<Router>;

pub fn router(s: Shared) -> Router {
    let api = Router::new()
        .route("/api/v1/pools", get(list_pools))
        .route("/api/v1/pools/{pool}/servers", post(add_server))
        .route("/api/v1/pools/{pool}/servers/{address}", patch(patch_server).delete(remove_server))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/certs", get(list_certs))
        .route("/api/v1/scale-events", get(scale_events))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(crate::blocks_api::routes())
        .merge(crate::clients_api::routes())
        .merge(crate::dashboard::api_routes())
        .route("/api/{*rest}", axum::routing::any(not_found))
        .route_layer(middleware::from_fn_with_state(s.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(crate::dashboard::page_routes(s.clone()))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(s)
}

/// Compares in constant time (`subtle`), so response time does not reveal a matching prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Whether a request changes state (anything but reading).
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// Whether the request's content type is JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

async fn auth(State(s): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    // A web page in a local browser can send a form POST to a loopback API without asking:
    // a state-changing request must carry a header such a page cannot send cross-site
    // without a CORS preflight, and the API answers no preflight.
    if changes_state(req.method())
        && !headers.contains_key(header::AUTHORIZATION)
        && !is_json(&headers)
    {
        return ApiError::new(
            415,
            "a request that changes state needs Content-Type: application/json \
             (or an Authorization header)",
        )
        .into_response();
    }
    if !token_ok(&s, &headers) {
        let mut r =
            ApiError::new(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

/// Whether the request carries the token (or none is needed).
pub(crate) fn token_ok(s: &AdminServer, headers: &HeaderMap) -> bool {
    let Some(token) = &s.token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    same(given.trim().as_bytes(), token.as_bytes())
}

async fn not_found() -> ApiError {
    ApiError::new(404, "no such route (see /api/v1/openapi.json)")
}

async fn readyz(State(s): State<Shared>) -> Response {
    let serving = !s.view.shared.state.load().frontends.is_empty();
    if serving {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no frontend listening\n").into_response()
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    let text = crate::metrics::render(&s.view);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(crate::openapi::document())
}

async fn list_pools(State(s): State<Shared>) -> axum::Json<Value> {
    let snap = s.view.shared.state.load_full();
    let now = fulcrum_proxy::now_ms();
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            let servers: Vec<Value> = p
                .servers
                .iter()
                .map(|sv| {
                    json!({
                        "address": sv.key,
                        "state": sv.state.name(),
                        "health": sv.stats.health_name(),
                        "ejected": sv.stats.is_ejected(now),
                        "weight": sv.weight,
                        "active_connections": sv.stats.active.load(Ordering::Relaxed),
                        "connections_total": sv.stats.connections_total.load(Ordering::Relaxed),
                        "connect_failures": sv.stats.connect_failures.load(Ordering::Relaxed),
                        "agent": sv.stats.agent_state_name(),
                        "max_connections": sv.cap(p.agent_maxconn_ttl_ms, now),
                        "configured_max_connections": sv.max_connections,
                        // Slow start × agent weight, as the balancer applies it now.
                        "share_percent": f64::from(sv.stats.share(p.slow_start_ms, now)) * 100.0
                            / f64::from(fulcrum_core::balance::SHARE_ONE),
                        "reported": sv.stats.fresh_report(p.report_ttl_ms, now).map(|(clients, queue, assigned)| json!({
                            "clients": clients, "queue": queue, "assigned_since": assigned,
                        })),
                    })
                })
                .collect();
            json!({
                "name": p.name,
                "algorithm": p.algorithm.name(),
                "health_check": p.health.as_ref().map(|h| match &h.kind {
                    fulcrum_config::HealthKind::Tcp => "tcp",
                    fulcrum_config::HealthKind::Http { .. } => "http",
                    fulcrum_config::HealthKind::SendExpect { .. } => "send-expect",
                    fulcrum_config::HealthKind::UdpSendExpect { .. } => "udp-send-expect",
                }),
                "queue": (p.queue.size() > 0).then(|| json!({
                    "size": p.queue.size(),
                    "timeout_ms": p.queue.timeout().as_millis() as u64,
                })),
                "queue_length": p.queue.len(),
                "servers": servers,
            })
        })
        .collect();
    axum::Json(json!({ "pools": pools }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddServer {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    max_connections: Option<u32>,
}

fn one() -> u32 {
    1
}

/// Parses a JSON body, turning serde's rejection into our error shape.
pub(crate) fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
}

async fn add_server(
    State(s): State<Shared>,
    Path(pool): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: AddServer = body(&bytes)?;
    // A host name is looked up before the lock is taken, off the control thread.
    let address = req.address.clone();
    let settings = s.controller.lock().await.resolver_settings();
    let names = tokio::task::spawn_blocking(move || {
        crate::controller::resolve_address(&address, settings.as_ref())
    })
    .await
    .unwrap_or_default();
    let (key, write) = s.controller.lock().await.add_server(
        &pool,
        &req.address,
        req.weight,
        req.max_connections,
        names,
    )?;
    write.finish().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "pool": pool, "address": key, "weight": req.weight,
            "max_connections": req.max_connections,
        })),
    )
        .into_response())
}

async fn remove_server(
    State(s): State<Shared>,
    Path((pool, address)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let (key, write) = s.controller.lock().await.remove_server(&pool, &address)?;
    write.finish().await?;
    Ok(axum::Json(json!({ "pool": pool, "address": key, "removed": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchServer {
    state: Option<String>,
    weight: Option<u32>,
}

async fn patch_server(
    State(s): State<Shared>,
    Path((pool, address)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let req: PatchServer = body(&bytes)?;
    if req.state.is_none() && req.weight.is_none() {
        return Err(ApiError::new(400, "nothing to change: give \"state\" and/or \"weight\""));
    }
    let state = match req.state.as_deref() {
        Some(x) => Some(x.parse().map_err(|e: String| ApiError::new(400, e))?),
        None => None,
    };
    let (key, write) =
        s.controller.lock().await.patch_server(&pool, &address, state, req.weight)?;
    write.finish().await?;
    Ok(axum::Json(
        json!({ "pool": pool, "address": key, "state": req.state, "weight": req.weight }),
    ))
}

async fn scale_events(State(s): State<Shared>) -> axum::Json<Value> {
    let log = s.view.scale_log.clone();
    axum::Json(json!({ "events": log.events() }))
}

/// Every `https` frontend's loaded certificates (served ones and client CAs) with their
/// validity, and how its last certificate reloads went.
async fn list_certs(State(s): State<Shared>) -> axum::Json<Value> {
    let snap = s.view.shared.state.load_full();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let frontends: Vec<Value> = snap
        .frontends
        .iter()
        .filter_map(|f| Some((f, f.tls.as_ref()?)))
        .map(|(f, t)| {
            let loaded = t.current();
            let certs: Vec<Value> = loaded
                .certs
                .iter()
                .map(|c| {
                    json!({
                        "role": c.role.name(),
                        "file": c.file.display().to_string(),
                        "names": c.names,
                        "subject": c.subject,
                        "not_before": fulcrum_proxy::rfc3339(c.not_before),
                        "not_after": fulcrum_proxy::rfc3339(c.not_after),
                        "not_after_unix": c.not_after,
                        // Negative once expired.
                        "days_left": (c.not_after as f64 - now as f64) / 86_400.0,
                    })
                })
                .collect();
            json!({
                "frontend": f.name.to_string(),
                "loaded_at": fulcrum_proxy::rfc3339(loaded.loaded_at),
                "reloads": t.reloads.load(Ordering::Relaxed),
                "reload_failures": t.reload_failures.load(Ordering::Relaxed),
                "last_error": t.last_error().map(|e| e.to_string()),
                "certificates": certs,
            })
        })
        .collect();
    axum::Json(json!({ "frontends": frontends }))
}

async fn reload(State(s): State<Shared>) -> Result<axum::Json<Value>, ApiError> {
    crate::controller::reload_off_thread(&s.controller).await?;
    Ok(axum::Json(json!({ "status": "reloaded" })))
}
