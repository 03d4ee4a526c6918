//! The config view: `GET /api/v1/config` (the config file as the last good start or reload
//! read it, secrets hidden, and the runtime changes laid over it), `POST /api/v1/config/check`
//! (the errors `fulcrum check` gives for a text) and `POST /api/v1/config/apply` (check, write
//! the file atomically keeping the previous one as `.bak`, reload; the file is put back when
//! the reload fails). A file that cannot be written is refused before anything changes.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::Shared;
use crate::check::check_text;
use crate::controller::ApiError;
use crate::events::EventKind;

/// Longest config text the box takes (the API's other bodies stop at 64 KiB).
const MAX_CONFIG: usize = 1024 * 1024;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/config", get(view))
        .route(
            "/api/v1/config/check",
            post(check).layer(axum::extract::DefaultBodyLimit::max(MAX_CONFIG + 1024)),
        )
        .route(
            "/api/v1/config/apply",
            post(apply).layer(axum::extract::DefaultBodyLimit::max(MAX_CONFIG + 1024)),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Text {
    config: String,
}

fn body(bytes: &[u8]) -> Result<Text, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(400, format!("invalid JSON body (want {{\"config\": \"...\"}}): {e}"))
    })
}

/// The running file's path and text, or 409 when there is no file (`fulcrum forward`).
async fn running(s: &Shared) -> Result<(PathBuf, String), ApiError> {
    let c = s.controller.lock().await;
    let path = c
        .config_path()
        .ok_or_else(|| ApiError::new(409, "no config file (started by `fulcrum forward`)"))?;
    Ok((path, c.config_text().unwrap_or_default()))
}

fn writable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().readonly() {
        return Err("the file is read-only".into());
    }
    std::fs::OpenOptions::new().append(true).open(path).map(drop).map_err(|e| e.to_string())
}

async fn view(State(s): State<Shared>) -> Result<axum::Json<Value>, ApiError> {
    let (path, text) = running(&s).await?;
    let overlay = s.controller.lock().await.overlay_json();
    let writable = writable(&path);
    Ok(axum::Json(json!({
        "path": path.display().to_string(),
        "text": fulcrum_config::redact::redact(&text),
        "writable": writable.is_ok(),
        "not_writable_reason": writable.err(),
        "runtime_changes": overlay,
    })))
}

/// The edited text with hidden secrets put back, checked as `fulcrum check` does.
fn checked(edited: &str, path: &Path, running: &str) -> Result<(String, Vec<String>), ApiError> {
    let text = fulcrum_config::redact::restore(edited, running).map_err(|e| ApiError {
        status: 400,
        message: "the config has errors".into(),
        errors: vec![e],
    })?;
    match check_text(&text, &path.display().to_string()) {
        Ok(c) => Ok((text, c.warnings)),
        Err(errors) => Err(ApiError {
            status: 400,
            message: format!("the config has {} error(s)", errors.len()),
            errors,
        }),
    }
}

async fn check(
    State(s): State<Shared>,
    bytes: axum::body::Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let req = body(&bytes)?;
    let (path, running) = running(&s).await?;
    let (_, warnings) = tokio::task::spawn_blocking(move || checked(&req.config, &path, &running))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))??;
    Ok(axum::Json(json!({ "valid": true, "warnings": warnings })))
}

fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// Writes `text` to `path` so that at every instant the old or the new file is there: a new
/// temporary file (same mode), fsynced, then the old file copied to `.bak` and the new one
/// renamed over it.
fn write_keeping_backup(path: &Path, text: &str) -> std::io::Result<PathBuf> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    let tmp = sibling(path, &format!(".{}.dashboard.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let bak = sibling(path, ".bak");
    if let Err(e) = std::fs::copy(path, &bak).and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(bak)
}

/// Applies one text at a time: two pages applying at once must not interleave their writes.
static APPLYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn apply(
    State(s): State<Shared>,
    bytes: axum::body::Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let req = body(&bytes)?;
    let _one = APPLYING.lock().await;
    let (path, running) = running(&s).await?;
    // A symlinked config stays a symlink: the file it points to is replaced.
    let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let shown = path.display().to_string();
    let (r, p, events) = (real.clone(), path.clone(), s.view.events.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let (text, warnings) = checked(&req.config, &p, &running)?;
        writable(&r).map_err(|e| {
            ApiError::new(409, format!("the config file {} is not writable: {e}", r.display()))
        })?;
        let bak = write_keeping_backup(&r, &text).map_err(|e| {
            ApiError::new(409, format!("the config file {} could not be written: {e}", r.display()))
        })?;
        Ok::<_, ApiError>((bak, warnings))
    })
    .await
    .map_err(|e| ApiError::new(500, e.to_string()))?;
    let (bak, warnings) = match outcome {
        Ok(x) => x,
        Err(e) => {
            events.push(
                EventKind::ConfigError,
                None,
                None,
                format!("config not applied: {}", e.message),
            );
            return Err(e);
        }
    };
    if let Err(mut e) = crate::controller::reload_off_thread(&s.controller).await {
        // The file on disk must match what serves: the previous one goes back.
        let back = std::fs::copy(&bak, &real).map(drop);
        e.message = match back {
            Ok(()) => format!("{}; the previous file was put back", e.message),
            Err(b) => format!(
                "{}; the previous file could not be put back ({b}): it is {}",
                e.message,
                bak.display()
            ),
        };
        return Err(e);
    }
    tracing::info!(file = %shown, backup = %bak.display(), "configuration applied from the dashboard");
    Ok(axum::Json(json!({
        "status": "applied", "backup": bak.display().to_string(), "warnings": warnings,
    })))
}
