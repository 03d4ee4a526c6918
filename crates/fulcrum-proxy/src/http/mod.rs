//! The HTTP service (`protocol = "http"`): HTTP/1.1 with keep-alive and cleartext HTTP/2
//! (prior knowledge) on one port, each request proxied on its own to a server of the pool
//! its route names, over connections kept alive per worker and server.
//!
//! * `server.rs`: one client connection (hyper's HTTP/1 server, parked between requests
//!   when idle, or its HTTP/2 server), the request path: route, the
//!   forwarding headers, the one admission step, send with safe retries, the answer.
//! * `io.rs`: the client socket with `header_timeout` (408) and `keepalive_timeout`, the
//!   HTTP/2 preface sniff, and the wait of a parked (idle) HTTP/1 connection.
//! * `upstream.rs`: the worker's idle server connections.
//! * `body.rs`: request and response bodies and the per-request record (`Exchange`) that
//!   gives everything back and writes the access-log line when the response ends.
//! * `https.rs`: the TLS handshake of an `https` connection and its verified client.
//! * `headers.rs`: hop-by-hop removal, `X-Forwarded-*`, `Via`, `X-Request-Id`, `Forwarded`.
//!
//! Built on hyper 1: its HTTP/1 parser is strict where smuggling lives (conflicting
//! `Content-Length`, `Transfer-Encoding` that is not chunked last, obs-fold, bad bytes in
//! names are all refused with 400), and it re-frames every message it forwards.

mod body;
mod headers;
mod https;
mod io;
mod server;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) use server::serve;

use crate::context::{AcceptCtx, Shared};

/// What every request of one client connection shares.
pub(crate) struct ConnInfo {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ctx: Arc<AcceptCtx>,
    pub(crate) peer: SocketAddr,
    pub(crate) phase: Arc<io::Phase>,
    /// An upgrade answered 101, waiting for hyper to let go of the socket (HTTP/1 only).
    /// A lock only an upgrade request ever takes, once.
    pub(crate) tunnel: std::sync::Mutex<Option<server::Tunnel>>,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub(crate) proto: &'static str,
    /// `https`: the client certificate header and the verified subject to put in it.
    pub(crate) client_cert: Option<ClientCert>,
    /// The connection's client in the frontend's table (its requests are counted there).
    pub(crate) client_entry: Option<Arc<crate::clients::Client>>,
    /// What its server connections are listed under when a pool sends PROXY headers
    /// (`upstream::client_id`), and the address the client reached (the header's
    /// destination: known only when a pool of the snapshot has `send_proxy`).
    pub(crate) upstream_id: u64,
    pub(crate) local: SocketAddr,
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        upstream::forget_client(self.upstream_id);
    }
}

/// An `https` connection's `client_cert_header` (in the TLS material it was accepted with)
/// and its client's verified subject, if it presented a certificate.
pub(crate) struct ClientCert {
    pub(crate) loaded: Arc<crate::tls::Loaded>,
    pub(crate) subject: Option<http::HeaderValue>,
}
