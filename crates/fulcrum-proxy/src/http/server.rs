//! One HTTP client connection and the path of each of its requests.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use fulcrum_config::HttpVersion;
use fulcrum_core::balance::{MAX_ATTEMPTS, Tried, hash_bytes, hash_ip};
use fulcrum_core::blame::{Side, connect_failed, stream_failed};
use fulcrum_core::route::{Headers, RequestView, cookie_value, hash_input, https_location};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{Exchange, ReqBody, RespBody, ServerSlot, Upload};
use super::headers::{self as hdr, Forwarding, X_REQUEST_ID};
use super::io::{ClientStream, HttpIo, Phase, QuietTimer};
use super::upstream::{self, Sender};
use super::{ClientCert, ConnInfo};
use crate::clock::now_ms;
use crate::ledger::Ledger;
use crate::queue::{Refusal, take_or_wait};
use crate::ratelog::RateLimit;
use crate::routes::RouteTarget;
use crate::state::{NoSlot, PoolState};

static CONNECT_FAIL_LOG: RateLimit = RateLimit::new(1_000);

/// Most concurrent streams an HTTP/2 client may open (each may hold a server connection).
const MAX_STREAMS: u32 = 100;

/// How long an HTTP/1 connection waits between requests before hyper's state (its read and
/// write buffers, 16 KiB) is let go: the socket alone waits for the next request, so an idle
/// keep-alive client costs a few hundred bytes. Short enough that idle clients park, long
/// enough that a busy keep-alive client never does.
const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) async fn serve(ledger: Ledger, stream: TcpStream) {
    // The TLS path's future (a rustls session inside) is several times the plain one's and
    // lives as long as the connection: boxed, so plain connections do not carry its size.
    // Each connection takes the certificates in force now and keeps them: a reload that
    // swaps them changes nothing for it.
    match ledger.ctx().tls.as_ref().map(|t| t.current()) {
        None => serve_plain(ledger, stream).await,
        Some(tls) => Box::pin(super::https::serve_tls(ledger, stream, tls)).await,
    }
}

/// The address a client connection reached, asked of the kernel only when some pool sends
/// PROXY headers (it is their destination); else the client's own stands in, never sent.
pub(super) fn local_addr(ledger: &Ledger, stream: &TcpStream) -> std::net::SocketAddr {
    let snap = ledger.shared().state.load();
    if snap.pools.iter().any(|p| p.send_proxy.is_some()) {
        stream.local_addr().unwrap_or(ledger.client())
    } else {
        ledger.client()
    }
}

pub(super) fn conn_info(
    ledger: &Ledger,
    phase: &Arc<Phase>,
    proto: &'static str,
    client_cert: Option<ClientCert>,
    local: std::net::SocketAddr,
) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        shared: ledger.shared().clone(),
        ctx: ledger.ctx().clone(),
        peer: ledger.client(),
        phase: phase.clone(),
        tunnel: std::sync::Mutex::new(None),
        proto,
        client_cert,
        client_entry: ledger.client_arc(),
        upstream_id: upstream::client_id(),
        local,
    })
}

/// What a connection's keep-alive wait needs to shrink under pressure (`admit::IdleLimit`),
/// when it may: the fair share on and a shorter limit set.
pub(super) fn pressure(
    conn: &ConnInfo,
) -> Option<(Arc<crate::context::Shared>, Arc<crate::context::AcceptCtx>)> {
    let fs = &conn.ctx.frontend.fair_share;
    (fs.enabled && fs.pressure_idle_timeout < conn.ctx.frontend.http.keepalive_timeout)
        .then(|| (conn.shared.clone(), conn.ctx.clone()))
}

async fn serve_plain(mut ledger: Ledger, stream: TcpStream) {
    let settings = &ledger.ctx().frontend.http;
    let (header_timeout, keepalive) = (settings.header_timeout, settings.keepalive_timeout);
    let phase = Arc::new(Phase::default());
    let local = local_addr(&ledger, &stream);
    let conn = conn_info(&ledger, &phase, "http", None, local);
    let res =
        run(&conn, HttpIo::new(stream, phase.clone(), header_timeout, keepalive, pressure(&conn)))
            .await;
    finish(&mut ledger, &phase, res);
}

/// The connection's bytes and how it ended, for its ledger (and access-log line).
pub(super) fn finish(ledger: &mut Ledger, phase: &Phase, res: Result<(), BoxError>) {
    ledger.bytes_in = phase.bytes_in.load(Ordering::Relaxed);
    ledger.bytes_out = phase.bytes_out.load(Ordering::Relaxed);
    ledger.outcome = if phase.header_timed_out.load(Ordering::Relaxed) {
        "header-timeout"
    } else if phase.keepalive_expired.load(Ordering::Relaxed) {
        "keepalive-timeout"
    } else {
        match res {
            Ok(()) => "done",
            Err(e) => classify(&*e),
        }
    };
}

/// HTTP/2 (by its preface, which ALPN `h2` promises over TLS) or HTTP/1 on a client stream.
pub(super) async fn run<S: ClientStream>(
    conn: &Arc<ConnInfo>,
    mut io: HttpIo<S>,
) -> Result<(), BoxError> {
    match io.sniff_h2().await {
        Ok(true) => serve_h2(conn, io).await,
        Ok(false) => serve_h1(conn, io).await,
        Err(e) => Err(Box::new(e)),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request handler as hyper calls it (boxed: hyper's `poll_without_shutdown` wants an
/// `Unpin` future).
type Handler = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

fn service(
    conn: &Arc<ConnInfo>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<RespBody>,
    Error = Infallible,
    Future = Handler,
> + Clone {
    let conn = conn.clone();
    service_fn(move |req| -> Handler { Box::pin(handle(conn.clone(), req)) })
}

/// HTTP/1: hyper serves the connection while requests come; after `PARK_AFTER` without one
/// it lets go, and the socket waits alone until the client speaks again. An upgrade (101)
/// ends hyper's part too: the socket then carries the tunnel.
async fn serve_h1<S: ClientStream>(
    conn: &Arc<ConnInfo>,
    mut io: HttpIo<S>,
) -> Result<(), BoxError> {
    let settings = &conn.ctx.frontend.http;
    let mut builder = http1::Builder::new();
    builder
        // io.rs keeps header_timeout (with a 408) and keepalive_timeout apart.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .max_headers(settings.max_headers)
        .timer(TokioTimer::new());
    let phase = &conn.phase;
    let mut quiet = QuietTimer::new();
    loop {
        let mut c = builder.serve_connection(TokioIo::new(io), service(conn));
        let (mut parking, mut stopping) = (false, false);
        loop {
            tokio::select! {
                // hyper first: the quiet timer reads what that poll left.
                biased;
                r = std::future::poll_fn(|cx| c.poll_without_shutdown(cx)) => {
                    r?;
                    break;
                }
                () = std::future::poll_fn(|cx| quiet.poll_quiet(phase, PARK_AFTER, cx)),
                    if S::PARKS && !parking && !stopping => {
                    parking = true;
                    Pin::new(&mut c).graceful_shutdown();
                }
                () = conn.ctx.retired.cancelled(), if !stopping => {
                    // Shutdown or a replaced frontend: the response in progress ends with
                    // `Connection: close`; an idle connection closes now.
                    stopping = true;
                    Pin::new(&mut c).graceful_shutdown();
                }
            }
        }
        let parts = c.into_parts();
        io = parts.io.into_inner();
        io.unread(parts.read_buf);
        let tunnel = conn.tunnel.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(t) = tunnel {
            return run_tunnel(io, t).await;
        }
        if stopping || !parking || phase.eof.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !io.has_unread() {
            tokio::select! {
                r = io.wait_readable() => r?,
                () = conn.ctx.retired.cancelled() => return Ok(()),
            }
        }
    }
}

/// HTTP/2 (prior knowledge): hyper serves every stream; GOAWAY on shutdown or a replaced
/// frontend, the open streams finish.
async fn serve_h2<S: ClientStream>(conn: &Arc<ConnInfo>, io: HttpIo<S>) -> Result<(), BoxError> {
    let settings = &conn.ctx.frontend.http;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .timer(TokioTimer::new());
    let c = builder.serve_connection(TokioIo::new(io), service(conn));
    tokio::pin!(c);
    tokio::select! {
        r = c.as_mut() => r?,
        () = conn.ctx.retired.cancelled() => {
            c.as_mut().graceful_shutdown();
            c.await?;
        }
    }
    Ok(())
}

/// The access-log word for a connection that ended with an error.
fn classify(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => "head-too-large",
        Some(h) if h.is_parse() => "bad-request",
        Some(h) if h.is_timeout() => "timeout",
        Some(h) if h.is_incomplete_message() => "client-aborted",
        _ => "client-error",
    }
}

async fn handle(
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let ex = Exchange::new(conn.clone(), parts.method.clone(), parts.uri.clone());
    Ok(proxy(&conn, ex, parts, body).await)
}

/// An answer of the proxy's own: status, a one-line body, the request id if there is one.
pub(crate) fn reply(
    mut ex: Box<Exchange>,
    status: StatusCode,
    outcome: &'static str,
) -> Response<RespBody> {
    ex.status = status.as_u16();
    ex.outcome = outcome;
    let text = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    let id = ex.request_id.clone();
    let mut resp = Response::new(RespBody::full(Bytes::from(text), Some(ex)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some(id) = id {
        h.insert(&X_REQUEST_ID, id);
    }
    resp
}

/// Counts a request of `client` in the frontend's table and holds it to
/// `request_rate_per_client`: `Err(wait)` when it comes too fast. The connection's own client
/// costs no lookup; one a trusted proxy names is looked up (only when a rate is set).
fn count_request(conn: &ConnInfo, client: std::net::IpAddr) -> Result<(), std::time::Duration> {
    let limits = &conn.ctx.frontend.limits;
    let rate = limits.request_rate_per_client.as_ref();
    let res = match (&conn.client_entry, rate) {
        (Some(c), _) if client == conn.peer.ip() => c.request(rate),
        (_, Some(rate)) => conn.ctx.stats.clients.request(client, limits, rate),
        _ => Ok(()),
    };
    if res.is_err() {
        let who = std::net::SocketAddr::new(client, 0);
        crate::guard::refused(
            &conn.shared,
            &conn.ctx,
            who,
            fulcrum_core::acl::Rejection::RequestRate,
        );
    }
    res
}

/// 429 with `Retry-After`: whole seconds until the client's next request would pass.
fn too_many_requests(ex: Box<Exchange>, wait: std::time::Duration) -> Response<RespBody> {
    let mut resp = reply(ex, StatusCode::TOO_MANY_REQUESTS, "request-rate");
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

/// A request as it may be sent again: everything but the body and extensions.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    fn request(&self, body: ReqBody) -> Request<ReqBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

async fn proxy(
    conn: &Arc<ConnInfo>,
    mut ex: Box<Exchange>,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Response<RespBody> {
    let settings = &conn.ctx.frontend.http;
    if parts.headers.len() > settings.max_headers {
        // HTTP/1 heads are counted by hyper; HTTP/2 ones here.
        return reply(ex, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too-many-headers");
    }
    let host = hdr::host_of(&parts);
    ex.host = host.clone();
    if host.is_none() && parts.version == Version::HTTP_11 {
        return reply(ex, StatusCode::BAD_REQUEST, "no-host");
    }
    if let Some(max) = settings.max_body
        && body.size_hint().lower() > max
    {
        return reply(ex, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    }
    let client = hdr::effective_client(conn.peer.ip(), &parts.headers, &settings.trusted_proxies);
    ex.client = client;
    if let Err(wait) = count_request(conn, client) {
        return too_many_requests(ex, wait);
    }
    // Routing and the hash are decided on the client's request as it came.
    let (pool, route, client_hash) = {
        let snap = conn.shared.state.load();
        let Some(fe) = snap.frontend(&conn.ctx.name) else {
            return reply(ex, StatusCode::SERVICE_UNAVAILABLE, "no-frontend");
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let headers = HeaderView(&parts.headers);
        let view = RequestView {
            host: host.as_ref().and_then(|h| h.to_str().ok()),
            path: target,
            method: parts.method.as_str(),
            headers: &headers,
        };
        let mut pool_index = fe.pool;
        let mut route = None;
        if let Some(routes) = &fe.routes
            && let Some(i) = routes.table.find(&view)
            && let Some(r) = routes.routes.get(i)
        {
            ex.route = Some(i);
            ex.routes = Some(routes.clone());
            match r.target {
                RouteTarget::Pool(p) => {
                    pool_index = p;
                    route = Some((routes.clone(), i));
                }
                RouteTarget::RedirectHttps => {
                    let location = view.host.map(|h| https_location(h, target));
                    return redirect(ex, location);
                }
            }
        }
        let Some(pool) = snap.pools.get(pool_index).cloned() else {
            return reply(ex, StatusCode::SERVICE_UNAVAILABLE, "no-pool");
        };
        let hash = match hash_input(&pool.hash, &view) {
            Some(key) => hash_bytes(key),
            None => hash_ip(client),
        };
        (pool, route, hash)
    };
    let upgrade =
        hdr::wants_upgrade(parts.version, &parts.headers) && pool.http.version == HttpVersion::H1;
    let fwd = Forwarding {
        peer: client,
        trusted: &settings.trusted_proxies,
        proto: conn.proto,
        forwarded: settings.forwarded,
        client_cert: conn.client_cert.as_ref().map(|c| (&c.loaded.header, c.subject.as_ref())),
    };
    // The request id is the client's own when valid: keep it for the access log.
    ex.request_id = Some(hdr::prepare_request(&mut parts, host.as_ref(), upgrade, &fwd));
    if let Some((routes, i)) = &route
        && let Some(r) = routes.routes.get(*i)
    {
        hdr::apply_route(r, &mut parts);
    }
    hdr::adapt_target(&mut parts, host.as_ref(), pool.http.version, pool.tls.is_some());
    let template = Template {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: upstream_version(pool.http.version),
        headers: std::mem::take(&mut parts.headers),
    };
    // A request without a body can be sent again as it was; one with a body only while
    // nothing of it has been sent.
    let replayable = body.is_end_stream();
    let mut first_body = if replayable {
        None
    } else {
        let upload = Arc::new(Upload::default());
        ex.upload = Some(upload.clone());
        let limit = settings.max_body.unwrap_or(u64::MAX);
        let pace = settings.min_body_rate.map(super::body::Pace::new);
        Some(ReqBody::Stream { inner: body, upload, limit, pace })
    };
    let idempotent = matches!(
        template.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    pool.retry_budget.on_request();
    // A sticky client's server, named by its cookie; a server that cannot take it (down,
    // drained, full) loses it to a normal pick and a new cookie.
    let sticky = pool.sticky.as_ref().and_then(|st| {
        template
            .headers
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| cookie_value(v.as_bytes(), &st.cookie))
            .and_then(|v| st.server(v))
    });
    let mut tried = Tried::new();
    let attempts = (pool.retries as usize + 1).min(MAX_ATTEMPTS);
    let mut attempt = 0;
    // The request handed back unsent by a connection that could not take it.
    let mut unsent: Option<Request<ReqBody>> = None;
    // Why the previous attempt failed: the answer when no other server is left to try.
    let mut failed: Option<(StatusCode, &'static str)> = None;
    loop {
        if attempt > 0 {
            ex.retries += 1;
            pool.http_retries.fetch_add(1, Ordering::Relaxed);
        }
        attempt += 1;
        let last = attempt >= attempts;
        let taken = if attempt == 1 {
            match sticky {
                Some(i) if pool.take_server(i) => Ok(i),
                // The slot at once when nobody waits (the common case); the line's future,
                // large and rare, is boxed so every request's future stays small.
                _ if pool.queue.is_empty() => match pool.take_slot(client_hash, &mut tried) {
                    Ok(i) => Ok(i),
                    Err(NoSlot::NoServer) => Err(Refusal::NoServer),
                    Err(NoSlot::Full) => {
                        Box::pin(take_or_wait(&pool, client_hash, &mut tried)).await
                    }
                },
                _ => Box::pin(take_or_wait(&pool, client_hash, &mut tried)).await,
            }
        } else {
            pool.take_slot(client_hash, &mut tried).map_err(|e| match e {
                NoSlot::NoServer => Refusal::NoServer,
                NoSlot::Full => Refusal::ServersFull,
            })
        };
        let index = match taken {
            Ok(i) => i,
            Err(r) => {
                if let Some((status, outcome)) = failed {
                    return reply(ex, status, outcome);
                }
                conn.ctx.stats.no_server.fetch_add(1, Ordering::Relaxed);
                return reply(ex, StatusCode::SERVICE_UNAVAILABLE, r.outcome());
            }
        };
        tried.insert(index);
        let slot = ServerSlot { pool: pool.clone(), index };
        let Some(server) = pool.servers.get(index) else {
            return reply(ex, StatusCode::SERVICE_UNAVAILABLE, "no-server");
        };
        server.stats.on_assigned();
        let addr = upstream::Key::of(&pool, server, conn.upstream_id);
        let me = (conn.upstream_id, conn.peer, conn.local);
        let mut reused = true;
        let mut sender = match upstream::take(addr, pool.http.version) {
            Some(s) => s,
            None => {
                reused = false;
                // Boxed: a new connection is the rare case, and its future is large. It
                // keeps the pool's connect_timeout itself (TCP, TLS, HTTP/2 preface).
                match Box::pin(upstream::connect(&conn.shared, &pool, server, me)).await {
                    Ok(s) => s,
                    Err(e) => {
                        connect_failure(&pool, index, &e);
                        drop(slot);
                        if last {
                            return reply(ex, StatusCode::BAD_GATEWAY, "connect-failed");
                        }
                        failed = Some((StatusCode::BAD_GATEWAY, "connect-failed"));
                        continue;
                    }
                }
            }
        };
        let mut req = match unsent.take() {
            Some(r) => r,
            None => match first_body.take() {
                Some(b) => template.request(b),
                None => template.request(ReqBody::Empty),
            },
        };
        let sent_at = Instant::now();
        let sent = loop {
            let r = tokio::time::timeout(pool.http.response_timeout, send(&mut sender, req)).await;
            match r {
                // A kept-alive connection the server had closed handed the request back
                // unsent: once more on a new connection to the same server, which is no
                // fault of the server and costs no attempt.
                Ok(Err(Failed { unsent: Some(back), error })) if reused => {
                    reused = false;
                    match Box::pin(upstream::connect(&conn.shared, &pool, server, me)).await {
                        Ok(s) => {
                            sender = s;
                            req = back;
                        }
                        Err(_) => break Ok(Err(Failed { unsent: Some(back), error })),
                    }
                }
                other => break other,
            }
        };
        // A malformed or cut-off upload is the client's doing, whatever the connection then
        // reported: 400, not sent again, and the server not blamed (else any client could
        // eject servers with bad chunks).
        let client_fault =
            ex.upload.as_ref().is_some_and(|u| u.client_error.load(Ordering::Relaxed));
        if client_fault && matches!(sent, Ok(Err(_))) {
            ex.slot = Some(slot);
            return reply(ex, StatusCode::BAD_REQUEST, "bad-request-body");
        }
        match sent {
            Err(_) => {
                ex.slot = Some(slot);
                return reply(ex, StatusCode::GATEWAY_TIMEOUT, "response-timeout");
            }
            Ok(Ok(resp)) => {
                server.stats.on_exchange_ok();
                ex.upstream_ms = Some(sent_at.elapsed().as_millis() as u64);
                ex.slot = Some(slot);
                let mut resp = resp;
                if let Some(st) = &pool.sticky
                    && sticky != Some(index)
                    && let Some(v) = st.values.get(index)
                {
                    let cookie = format!(
                        "{}={v}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                        st.cookie, st.ttl_secs
                    );
                    if let Ok(c) = HeaderValue::from_str(&cookie) {
                        resp.headers_mut().append(header::SET_COOKIE, c);
                    }
                }
                return answer(conn, ex, resp, sender, addr, upgrade);
            }
            Ok(Err(Failed { unsent: Some(req), .. })) if !last => {
                // Nothing was written (a kept-alive connection the server had closed):
                // any request may go to another server.
                unsent = Some(req);
                failed = Some((StatusCode::BAD_GATEWAY, "server-error"));
                continue;
            }
            Ok(Err(Failed { error, .. })) => {
                let too_large =
                    ex.upload.as_ref().is_some_and(|u| u.too_large.load(Ordering::Relaxed));
                if too_large {
                    ex.slot = Some(slot);
                    return reply(ex, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
                }
                let too_slow =
                    ex.upload.as_ref().is_some_and(|u| u.too_slow.load(Ordering::Relaxed));
                if too_slow {
                    ex.slot = Some(slot);
                    return reply(ex, StatusCode::REQUEST_TIMEOUT, "body-too-slow");
                }

                let now = now_ms();
                // Whose fault is the one rule of fulcrum-core::blame, as for TCP: the server
                // failed before any byte of an answer (the client's own faults left above).
                if stream_failed(Side::Server, false).counts_against_server()
                    && let Some(s) = pool.servers.get(index)
                {
                    s.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
                }
                if CONNECT_FAIL_LOG.allow(now).is_some() {
                    tracing::warn!(
                        pool = %pool.name, server = %server.key, error = %error,
                        "request to server failed"
                    );
                }
                // Sent (maybe in part) and failed before an answer: only a request that can
                // be repeated safely, and only within the pool's budget, goes again.
                if replayable && idempotent && !last && pool.retry_budget.try_retry() {
                    drop(slot);
                    failed = Some((StatusCode::BAD_GATEWAY, "server-error"));
                    continue;
                }
                ex.slot = Some(slot);
                return reply(ex, StatusCode::BAD_GATEWAY, "server-error");
            }
        }
    }
}

fn connect_failure(pool: &PoolState, index: usize, e: &std::io::Error) {
    let Some(server) = pool.servers.get(index) else { return };
    let now = now_ms();
    let ejected = connect_failed(e.raw_os_error()).counts_against_server()
        && server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
    if ejected || CONNECT_FAIL_LOG.allow(now).is_some() {
        tracing::warn!(
            pool = %pool.name, server = %server.key, error = %e, ejected,
            "connect to server failed"
        );
    }
}

fn upstream_version(v: HttpVersion) -> Version {
    match v {
        HttpVersion::H1 => Version::HTTP_11,
        HttpVersion::H2 => Version::HTTP_2,
    }
}

struct Failed {
    error: hyper::Error,
    /// The request, when the connection handed it back without writing a byte of it.
    unsent: Option<Request<ReqBody>>,
}

async fn send(sender: &mut Sender, req: Request<ReqBody>) -> Result<Response<Incoming>, Failed> {
    let r = match sender {
        Sender::H1(s) => {
            if let Err(error) = s.ready().await {
                return Err(Failed { error, unsent: Some(req) });
            }
            s.try_send_request(req).await
        }
        Sender::H2(s) => {
            if let Err(error) = s.ready().await {
                return Err(Failed { error, unsent: Some(req) });
            }
            s.try_send_request(req).await
        }
    };
    r.map_err(|mut e| {
        let unsent = e.take_message();
        Failed { error: e.into_error(), unsent }
    })
}

/// The server's answer on its way to the client.
fn answer(
    conn: &Arc<ConnInfo>,
    mut ex: Box<Exchange>,
    resp: Response<Incoming>,
    sender: Sender,
    addr: upstream::Key,
    upgrade: bool,
) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    ex.status = parts.status.as_u16();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrade {
        let Some(server) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return reply(ex, StatusCode::BAD_GATEWAY, "upgrade-failed");
        };
        hdr::strip_hop_by_hop(&mut parts.headers, true);
        // The connection relays it once hyper has written the 101 and let go of the socket.
        if let Ok(mut t) = conn.tunnel.lock() {
            *t = Some(Tunnel { exchange: ex, server, sender });
        }
        return Response::from_parts(parts, RespBody::full(Bytes::new(), None));
    }
    hdr::strip_hop_by_hop(&mut parts.headers, false);
    if let Some(id) = &ex.request_id
        && !parts.headers.contains_key(&X_REQUEST_ID)
    {
        parts.headers.insert(&X_REQUEST_ID, id.clone());
    }
    ex.sender = Some((addr, sender));
    Response::from_parts(parts, RespBody::upstream(body, ex))
}

/// An upgrade the handler answered 101: what the connection needs to relay it once hyper has
/// written the 101 and let go of the socket.
pub(crate) struct Tunnel {
    exchange: Box<Exchange>,
    server: hyper::upgrade::OnUpgrade,
    /// The server connection; it is the tunnel now and never returns to the idle list.
    sender: Sender,
}

/// Relays an upgraded connection (WebSocket) both ways until either side closes. The
/// request's record (and so its server slot) lives as long as the tunnel does, and the
/// client's ledger with it.
async fn run_tunnel<S: ClientStream>(mut client: HttpIo<S>, t: Tunnel) -> Result<(), BoxError> {
    let Tunnel { mut exchange, server, sender } = t;
    let _sender = sender;
    match server.await {
        Ok(s) => {
            let mut s = TokioIo::new(s);
            match tokio::io::copy_bidirectional(&mut client, &mut s).await {
                Ok((up, down)) => {
                    exchange.bytes_out += down;
                    // What the client sent through the tunnel counts as its upload (a GET
                    // handshake has no body of its own).
                    exchange
                        .upload
                        .get_or_insert_with(Default::default)
                        .bytes
                        .fetch_add(up, Ordering::Relaxed);
                    exchange.outcome = "upgraded";
                }
                Err(_) => exchange.outcome = "upgrade-aborted",
            }
        }
        Err(_) => exchange.outcome = "upgrade-failed",
    }
    Ok(())
}

/// The request's headers as fulcrum-core's matcher reads them.
struct HeaderView<'a>(&'a HeaderMap);

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(HeaderValue::as_bytes)
    }
}

/// `redirect = "https"`: 301 to the same host and target over HTTPS; 400 without a host.
fn redirect(mut ex: Box<Exchange>, location: Option<String>) -> Response<RespBody> {
    let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) else {
        return reply(ex, StatusCode::BAD_REQUEST, "no-host");
    };
    ex.status = 301;
    ex.outcome = "redirect";
    let mut resp = Response::new(RespBody::full(Bytes::from_static(b""), Some(ex)));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}
