//! The page's live stream: `POST /api/v1/session` (with the token) issues an HttpOnly,
//! SameSite=Strict cookie, and `GET /api/v1/stream` (with that cookie, or the token) sends a
//! `tick` server-sent event every second: the live view and the events since the last tick.
//! One broadcast per tick is shared by every stream; a stream that falls
//! [`STREAM_BACKLOG`](super::STREAM_BACKLOG) ticks behind is closed rather than buffered,
//! and at most [`MAX_STREAMS`] are open at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use crate::api::Shared;
use crate::controller::ApiError;
use crate::events::unix_ms;

/// Live streams open at once (each holds one of the admin listener's connections).
pub const MAX_STREAMS: usize = 16;
/// Cookies alive at once; issuing one more forgets the oldest.
const MAX_SESSIONS: usize = 64;
/// How long a cookie lets a page open streams.
const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;
pub const COOKIE: &str = "fulcrum_stream";

/// Stream cookies: random values and when each stops being good.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, u64>>,
}

impl Sessions {
    fn issue(&self) -> Result<String, ApiError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| ApiError::new(500, format!("no randomness for a session: {e}")))?;
        let value: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let now = unix_ms();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, until| *until > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
        {
            live.remove(&oldest);
        }
        live.insert(value.clone(), now + SESSION_TTL_MS);
        Ok(value)
    }

    fn valid(&self, value: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // Compared in constant time, like the token.
        live.iter().any(|(k, until)| {
            bool::from(subtle::ConstantTimeEq::ct_eq(k.as_bytes(), value.as_bytes()))
                && *until > unix_ms()
        })
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `POST /api/v1/session`: a cookie good for the live stream (behind the token like every
/// API route).
pub async fn session(State(s): State<Shared>) -> Result<Response, ApiError> {
    let value = s.dashboard.sessions.issue()?;
    let secure = if s.dashboard.secure { "; Secure" } else { "" };
    let set = format!(
        "{COOKIE}={value}; Path=/api/v1/stream; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        SESSION_TTL_MS / 1000
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    let v = HeaderValue::from_str(&set).map_err(|e| ApiError::new(500, e.to_string()))?;
    r.headers_mut().insert(header::SET_COOKIE, v);
    Ok(r)
}

/// One tick's text: `{"overview": ..., "events": [...]}`.
pub fn tick(overview: &str, events: &[crate::events::Event]) -> std::sync::Arc<str> {
    let events = serde_json::to_string(events).unwrap_or_else(|_| "[]".into());
    std::sync::Arc::from(format!("{{\"overview\":{overview},\"events\":{events}}}"))
}

/// `GET /api/v1/stream`: server-sent `tick` events until the client goes, falls behind, or
/// the daemon stops.
pub async fn stream(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let d = &s.dashboard;
    let allowed = cookie(&headers, COOKIE).is_some_and(|c| d.sessions.valid(c))
        || super::token_ok(&s, &headers);
    if !allowed {
        return ApiError::new(
            401,
            "the stream needs its cookie (POST /api/v1/session with the token) or the token",
        )
        .into_response();
    }
    let Ok(permit) = d.streams.clone().try_acquire_owned() else {
        return ApiError::new(503, format!("{} live streams are open already", super::MAX_STREAMS))
            .into_response();
    };
    let rx = d.ticks.subscribe();
    let first = tick(&d.live(), &d.events.since(0, 50));
    let stop = d.stop.clone();
    let state = (Some(first), rx, permit, stop);
    let events = futures_util::stream::unfold(state, |(first, mut rx, permit, stop)| async move {
        let text = match first {
            Some(f) => f,
            None => tokio::select! {
                () = stop.cancelled() => return None,
                // Lagged (a slow client) or closed: the stream ends; the page reconnects.
                r = rx.recv() => r.ok()?,
            },
        };
        let ev = Event::default().event("tick").data(&*text);
        Some((Ok::<Event, Infallible>(ev), (None, rx, permit, stop)))
    });
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; fulcrum_stream=abc; b=2"));
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn sessions_are_random_bounded_and_checked() {
        let s = Sessions::default();
        let first = s.issue().unwrap();
        assert_eq!(first.len(), 64);
        assert!(s.valid(&first));
        assert!(!s.valid("nope"));
        for _ in 0..MAX_SESSIONS {
            s.issue().unwrap();
        }
        assert_eq!(s.live.lock().unwrap().len(), MAX_SESSIONS, "bounded");
    }
}
