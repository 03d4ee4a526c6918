//! The admin HTTP API (axum) on its own listener: JSON in and out, bearer-token auth on every
//! `/api/` route, errors as `{"error": "..."}`. Handlers lock the controller only for the
//! moment of a change; the data plane never waits on this lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::controller::{ApiError, Controller};

pub struct AdminServer {
    pub controller: Arc<Mutex<Controller>>,
    /// `None` only on a loopback listener configured without a token.
    pub token: Option<String>,
}

type Shared = Arc<AdminServer>;

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

/// Serves the admin API on `listener` until `stop` fires.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    server: AdminServer,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = router(Arc::new(server));
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

pub fn router(s: Shared) -> Router {
    let api = Router::new()
        .route("/api/v1/pools", get(list_pools))
        .route("/api/v1/pools/{pool}/servers", post(add_server))
        .route("/api/v1/pools/{pool}/servers/{address}", patch(patch_server).delete(remove_server))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/scale-events", get(scale_events))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/{*rest}", axum::routing::any(not_found))
        .route_layer(middleware::from_fn_with_state(s.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(not_found)
        .with_state(s)
}

/// Compares without an early exit, so response time does not reveal a matching prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.trim().as_bytes(), token.as_bytes()) {
            let mut r =
                ApiError::new(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                    .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(404, "no such route (see /api/v1/openapi.json)")
}

async fn readyz(State(s): State<Shared>) -> Response {
    let c = s.controller.lock().await;
    let serving = !c.engine().local_addrs().is_empty();
    if serving {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no frontend listening\n").into_response()
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    let text = {
        let c = s.controller.lock().await;
        crate::metrics::render(&c)
    };
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(crate::openapi::document())
}

async fn list_pools(State(s): State<Shared>) -> axum::Json<Value> {
    let c = s.controller.lock().await;
    let snap = c.engine().snapshot();
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
                "algorithm": c.current().pool(&p.name).map(|x| x.algorithm.name()),
                "health_check": p.health.as_ref().map(|h| match &h.kind {
                    fulcrum_config::HealthKind::Tcp => "tcp",
                    fulcrum_config::HealthKind::Http { .. } => "http",
                    fulcrum_config::HealthKind::SendExpect { .. } => "send-expect",
                    fulcrum_config::HealthKind::UdpSendExpect { .. } => "udp-send-expect",
                }),
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
}

fn one() -> u32 {
    1
}

/// Parses a JSON body, turning serde's rejection into our error shape.
fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
}

async fn add_server(
    State(s): State<Shared>,
    Path(pool): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: AddServer = body(&bytes)?;
    let key = s.controller.lock().await.add_server(&pool, &req.address, req.weight)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "pool": pool, "address": key, "weight": req.weight })),
    )
        .into_response())
}

async fn remove_server(
    State(s): State<Shared>,
    Path((pool, address)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let key = s.controller.lock().await.remove_server(&pool, &address)?;
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
    let key = s.controller.lock().await.patch_server(&pool, &address, state, req.weight)?;
    Ok(axum::Json(
        json!({ "pool": pool, "address": key, "state": req.state, "weight": req.weight }),
    ))
}

async fn scale_events(State(s): State<Shared>) -> axum::Json<Value> {
    let log = s.controller.lock().await.scale_log.clone();
    axum::Json(json!({ "events": log.events() }))
}

async fn reload(State(s): State<Shared>) -> Result<axum::Json<Value>, ApiError> {
    s.controller.lock().await.reload()?;
    Ok(axum::Json(json!({ "status": "reloaded" })))
}
