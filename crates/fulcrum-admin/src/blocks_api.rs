//! The admin API's routes of the runtime block list, under `/api/v1/blocks`: list, add
//! (`{"cidr", "for", "cut", "reason"}`), remove (`/api/v1/blocks/{cidr}` with the slash
//! percent-encoded, or `?cidr=`). Same conventions as every API route (api.rs: bearer auth,
//! JSON errors); the changes themselves are the controller's.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{Shared, body};
use crate::controller::{ApiError, block_json};

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/blocks", get(list).post(add).delete(remove_by_query))
        .route("/api/v1/blocks/{cidr}", delete(remove))
}

async fn list(State(s): State<Shared>) -> axum::Json<Value> {
    let (blocks, now) = s.controller.lock().await.blocks();
    let list: Vec<Value> = blocks.iter().map(|b| block_json(b, now)).collect();
    axum::Json(json!({ "blocks": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBlock {
    cidr: String,
    /// A duration ("10m"); absent: until removed.
    #[serde(default, rename = "for")]
    duration: Option<String>,
    #[serde(default)]
    cut: bool,
    #[serde(default)]
    reason: Option<String>,
}

async fn add(State(s): State<Shared>, bytes: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: NewBlock = body(&bytes)?;
    let duration = match req.duration.as_deref() {
        Some(d) => Some(
            fulcrum_config::parse_duration(d)
                .map_err(|e| ApiError::new(400, format!("for: {e}")))?,
        ),
        None => None,
    };
    let (block, replaced, write) =
        s.controller.lock().await.add_block(&req.cidr, duration, req.cut, req.reason)?;
    write.finish().await?;
    let mut v = block_json(&block, block.created_ms);
    v["cut"] = json!(req.cut);
    v["replaced"] = json!(replaced);
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(v)).into_response())
}

async fn remove(
    State(s): State<Shared>,
    Path(cidr): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    removed(&s, &cidr).await
}

#[derive(Deserialize)]
struct CidrQuery {
    cidr: Option<String>,
}

async fn remove_by_query(
    State(s): State<Shared>,
    Query(q): Query<CidrQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let Some(cidr) = q.cidr else {
        return Err(ApiError::new(400, "name the block: /api/v1/blocks/{cidr} or ?cidr="));
    };
    removed(&s, &cidr).await
}

async fn removed(s: &Shared, cidr: &str) -> Result<axum::Json<Value>, ApiError> {
    let (block, write) = s.controller.lock().await.remove_block(cidr)?;
    write.finish().await?;
    Ok(axum::Json(json!({ "cidr": block.net.to_string(), "removed": true })))
}
