//! `GET /api/v1/clients/top`: the client addresses holding the most connections (and
//! sessions), then the fastest, from each frontend's client table on the data path
//! (`fulcrum_proxy::ClientTable`), read without the controller's lock. Also what the
//! dashboard's "Top client addresses" panel shows.

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use fulcrum_proxy::{ClientView, Snapshot};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::Shared;
use crate::controller::ApiError;

/// Most rows one answer lists.
pub const MAX_TOP: usize = 1000;

pub(crate) fn routes() -> Router<Shared> {
    Router::new().route("/api/v1/clients/top", get(top))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    frontend: Option<String>,
}

async fn top(
    State(s): State<Shared>,
    Query(q): Query<TopQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_TOP {
        return Err(ApiError::new(400, format!("limit: 1 to {MAX_TOP}")));
    }
    let snap = s.view.shared.state.load_full();
    if let Some(name) = &q.frontend
        && snap.frontend(name).is_none()
    {
        return Err(ApiError::new(404, format!("no frontend named {name}")));
    }
    Ok(axum::Json(json!({ "clients": top_clients(&snap, q.frontend.as_deref(), limit) })))
}

/// The `limit` busiest clients over the frontends (or the one named), busiest first.
pub fn top_clients(snap: &Snapshot, frontend: Option<&str>, limit: usize) -> Vec<Value> {
    let mut rows: Vec<(&str, ClientView)> = Vec::new();
    for f in snap.frontends.iter().filter(|f| frontend.is_none_or(|n| *f.name == *n)) {
        rows.extend(f.stats.clients.top(limit).into_iter().map(|c| (&*f.name, c)));
    }
    rows.sort_by(|(_, a), (_, b)| {
        (b.active, b.per_second, b.refused_total).cmp(&(a.active, a.per_second, a.refused_total))
    });
    rows.truncate(limit);
    rows.into_iter()
        .map(|(f, c)| {
            json!({
                "frontend": f,
                "address": c.address,
                "active": c.active,
                "per_second": c.per_second,
                "connections_total": c.connections_total,
                "requests_total": c.requests_total,
                "refused_total": c.refused_total,
                "idle_ms": c.idle_ms,
            })
        })
        .collect()
}
