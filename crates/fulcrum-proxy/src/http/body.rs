//! The bodies that cross the proxy and the one record each request leaves behind.
//!
//! [`ReqBody`] streams a client's upload to the server, counting it and stopping it at
//! `max_body`; [`RespBody`] streams the server's answer (or carries an answer of our own)
//! back to the client. The response body owns the request's [`Exchange`]: when hyper drops
//! it (the answer written, or the client gone) the exchange ends: the server's slot is given
//! back, a connection that finished cleanly returns to the worker's idle list, the counters
//! move and the access-log line is written. However the request ends, that happens once.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::ConnInfo;
use super::upstream::{self, Sender};
use crate::state::PoolState;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// How much of an upload has passed, shared by the upload (on the server connection's task)
/// and the exchange (which logs it).
#[derive(Debug, Default)]
pub(crate) struct Upload {
    pub(crate) bytes: AtomicU64,
    /// The body passed `max_body` and was cut off.
    pub(crate) too_large: AtomicBool,
    /// The client's body ended cleanly (all of it was sent on).
    pub(crate) complete: AtomicBool,
    /// The client's body was malformed (a bad chunk) or cut off: the client's fault.
    pub(crate) client_error: AtomicBool,
    /// The client's body fell behind `min_body_rate` and was cut off.
    pub(crate) too_slow: AtomicBool,
}

pub(crate) enum ReqBody {
    Empty,
    Stream { inner: Incoming, upload: Arc<Upload>, limit: u64, pace: Option<Pace> },
}

/// `min_body_rate`: a body must have arrived at `rate` bytes a second on average, counted
/// from a second after it began (the grace a slow start needs). One timer, armed at the time
/// the bytes so far would fall behind; it is looked at only while the server side waits for
/// more of the body, so a server slow to take it never counts against the client.
pub(crate) struct Pace {
    rate: u64,
    start: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

const PACE_GRACE: Duration = Duration::from_secs(1);

impl Pace {
    pub(crate) fn new(rate: u64) -> Pace {
        let start = tokio::time::Instant::now();
        Pace { rate, start, timer: Box::pin(tokio::time::sleep_until(start + PACE_GRACE)) }
    }

    /// When `bytes` would be too few: a second after the start, plus the time `bytes` take
    /// at the rate (capped far beyond any wait that matters).
    fn due(&self, bytes: u64) -> tokio::time::Instant {
        let secs = (bytes as f64 / self.rate.max(1) as f64).min(1e9);
        self.start + PACE_GRACE + Duration::from_secs_f64(secs)
    }

    /// Polled while the body has nothing new: `true` once the client fell behind.
    fn behind(&mut self, cx: &mut Context<'_>, bytes: u64) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.due(bytes);
            if tokio::time::Instant::now() >= due {
                return true;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

#[derive(Debug)]
pub(crate) struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body slower than min_body_rate")
    }
}

impl StdError for TooSlow {}

#[derive(Debug)]
pub(crate) struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than max_body")
    }
}

impl StdError for TooLarge {}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream { inner, upload, limit, pace } => {
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            let n = upload.bytes.fetch_add(d.len() as u64, Ordering::Relaxed)
                                + d.len() as u64;
                            if n > *limit {
                                upload.too_large.store(true, Ordering::Relaxed);
                                return Poll::Ready(Some(Err(Box::new(TooLarge))));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        upload.client_error.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    Poll::Ready(None) => {
                        upload.complete.store(true, Ordering::Relaxed);
                        Poll::Ready(None)
                    }
                    Poll::Pending => {
                        let bytes = upload.bytes.load(Ordering::Relaxed);
                        if let Some(p) = pace
                            && p.behind(cx, bytes)
                        {
                            upload.too_slow.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(TooSlow))));
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

pub(crate) struct RespBody {
    kind: Kind,
    exchange: Option<Box<Exchange>>,
}

impl RespBody {
    pub(crate) fn upstream(inner: Incoming, exchange: Box<Exchange>) -> Self {
        RespBody { kind: Kind::Upstream(inner), exchange: Some(exchange) }
    }

    pub(crate) fn full(bytes: Bytes, exchange: Option<Box<Exchange>>) -> Self {
        RespBody { kind: Kind::Full(Some(bytes)), exchange }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| {
                if let Some(ex) = &mut this.exchange {
                    ex.bytes_out += b.len() as u64;
                }
                Ok(Frame::data(b))
            })),
            Kind::Upstream(inner) => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(d), Some(ex)) = (frame.data_ref(), &mut this.exchange) {
                        ex.bytes_out += d.len() as u64;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(ex) = &mut this.exchange {
                        ex.outcome = "server-aborted";
                    }
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Kind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inner) => inner.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let (Kind::Upstream(inner), Some(ex)) = (&self.kind, &mut self.exchange) {
            if inner.is_end_stream() {
                ex.clean_end = true;
            } else if ex.outcome == "ok" {
                // The client went away (or the connection closed) mid-answer.
                ex.outcome = "client-aborted";
            }
        }
    }
}

/// A server slot held by one request: its `active` count includes the request until this
/// is dropped.
pub(crate) struct ServerSlot {
    pub(crate) pool: Arc<PoolState>,
    pub(crate) index: usize,
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        if let Some(s) = self.pool.servers.get(self.index) {
            s.stats.active.fetch_sub(1, Ordering::Relaxed);
            s.stats.on_released();
        }
        self.pool.slot_freed();
    }
}

/// Everything one request leaves behind, settled when it is dropped.
pub(crate) struct Exchange {
    pub(crate) conn: Arc<ConnInfo>,
    pub(crate) started: Instant,
    pub(crate) client: IpAddr,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) status: u16,
    pub(crate) outcome: &'static str,
    pub(crate) slot: Option<ServerSlot>,
    /// The server connection, given back to the worker's list after a clean end.
    pub(crate) sender: Option<(upstream::Key, Sender)>,
    pub(crate) clean_end: bool,
    pub(crate) upload: Option<Arc<Upload>>,
    pub(crate) bytes_out: u64,
    pub(crate) upstream_ms: Option<u64>,
    pub(crate) retries: u32,
    /// The route that matched (its index; `None`: the frontend's own pool).
    pub(crate) route: Option<usize>,
    /// The routes it belongs to, for its counters.
    pub(crate) routes: Option<Arc<crate::routes::HttpRoutes>>,
}

impl Exchange {
    pub(crate) fn new(conn: Arc<ConnInfo>, method: Method, uri: Uri) -> Box<Self> {
        conn.phase.request_started();
        conn.ctx.stats.http_active.fetch_add(1, Ordering::Relaxed);
        Box::new(Exchange {
            client: conn.peer.ip(),
            conn,
            started: Instant::now(),
            method,
            uri,
            host: None,
            request_id: None,
            status: 0,
            outcome: "ok",
            slot: None,
            sender: None,
            clean_end: false,
            upload: None,
            bytes_out: 0,
            upstream_ms: None,
            retries: 0,
            route: None,
            routes: None,
        })
    }

    fn server_key(&self) -> &str {
        self.slot.as_ref().and_then(|s| s.pool.servers.get(s.index)).map_or("-", |s| s.key.as_str())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Reusable only when both messages ended: a server may answer before the upload is
        // over, and its connection is busy until then.
        let upload_done = self.upload.as_ref().is_none_or(|u| u.complete.load(Ordering::Relaxed));
        if let (Some(slot), Some((addr, sender))) = (&self.slot, self.sender.take())
            && self.clean_end
            && upload_done
        {
            let h = &slot.pool.http;
            upstream::give_back(addr, sender, h.max_idle, h.idle_timeout);
        }
        if self.status == 0 && self.outcome == "ok" {
            // Dropped before any answer: the client went away (or the connection closed).
            self.outcome = "client-aborted";
        }
        let class = (self.status / 100) as usize;
        let stats = &self.conn.ctx.stats;
        if let Some(c) = stats.http_responses.get(class.wrapping_sub(1)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        stats.http_requests.fetch_add(1, Ordering::Relaxed);
        stats.http_active.fetch_sub(1, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        stats.http_latency.record(elapsed);
        if let Some(slot) = &self.slot
            && let Some(s) = slot.pool.servers.get(slot.index)
            && let Some(c) = s.stats.http_responses.get(class.wrapping_sub(1))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(routes), Some(i)) = (&self.routes, self.route)
            && let Some(r) = routes.routes.get(i)
            && let Some(c) = r.responses.get(class.wrapping_sub(1))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.conn.phase.request_ended();
        if self.conn.shared.access_log() {
            let host = self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-");
            let id = self.request_id.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-");
            let bytes_in = self.upload.as_ref().map_or(0, |u| u.bytes.load(Ordering::Relaxed));
            let route = match self.route {
                Some(i) => i as i64,
                None => -1,
            };
            tracing::info!(
                target: "fulcrum::access",
                client = %self.client, frontend = %self.conn.ctx.name, protocol = "http",
                method = %self.method, host, path = self.uri.path(), status = self.status,
                server = self.server_key(), route, bytes_in, bytes_out = self.bytes_out,
                upstream_ms = self.upstream_ms.map_or(-1, |m| m as i64),
                duration_ms = elapsed.as_millis() as u64, request_id = id,
                retries = self.retries, outcome = self.outcome
            );
        }
    }
}
