//! The TLS side of an `https` client connection: the handshake with the certificates in force
//! when it was accepted (bounded by `header_timeout`), its metrics and failures, and the
//! verified client's subject, read once for all the connection's requests. Then the same HTTP
//! path as a plain connection (server.rs).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::HeaderValue;
use tokio::net::TcpStream;

use super::ClientCert;
use super::io::{HttpIo, Phase};
use super::server::{conn_info, finish, local_addr, pressure, run};
use crate::clock::now_ms;
use crate::ledger::Ledger;
use crate::ratelog::RateLimit;

static TLS_FAIL_LOG: RateLimit = RateLimit::new(1_000);

/// Serves one `https` connection with `loaded`, the frontend's TLS material when it was
/// accepted: a reload that swaps the material changes nothing for it.
pub(super) async fn serve_tls(ledger: Ledger, stream: TcpStream, loaded: Arc<crate::tls::Loaded>) {
    let ctx = ledger.ctx().clone();
    let settings = &ctx.frontend.http;
    let (header_timeout, keepalive) = (settings.header_timeout, settings.keepalive_timeout);
    // The handshake is part of the first request's head: header_timeout bounds it.
    let started = Instant::now();
    // Passthrough routes decide first: a name of theirs is a server's to terminate.
    let terminated = crate::sni::passthrough(ledger, stream, header_timeout).await;
    let Some((mut ledger, stream)) = terminated else { return };
    let local = local_addr(&ledger, &stream);
    let phase = Arc::new(Phase::default());
    let acceptor = tokio_rustls::TlsAcceptor::from(loaded.config.clone());
    let stats = &ctx.stats;
    let left = header_timeout.saturating_sub(started.elapsed());
    let res = match tokio::time::timeout(left, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            stats.tls_handshake_time.record(started.elapsed());
            let (_, session) = tls.get_ref();
            if session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                stats.tls_v13.fetch_add(1, Ordering::Relaxed);
            }
            if session.alpn_protocol() == Some(b"h2") {
                stats.tls_alpn_h2.fetch_add(1, Ordering::Relaxed);
            }
            // The verified client's subject, read once for all the connection's requests.
            let subject = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| crate::tls::certificate_subject(leaf))
                .and_then(|s| HeaderValue::from_str(&s).ok());
            let client_cert = ClientCert { loaded: loaded.clone(), subject };
            let conn = conn_info(&ledger, &phase, "https", Some(client_cert), local);
            run(&conn, HttpIo::new(tls, phase.clone(), header_timeout, keepalive, pressure(&conn)))
                .await
        }
        Ok(Err(e)) => {
            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            ledger.outcome = "tls-handshake-failed";
            if let Some(skipped) = TLS_FAIL_LOG.allow(now_ms()) {
                tracing::info!(
                    frontend = %ctx.name, client = %ledger.client(), error = %e, skipped,
                    "TLS handshake failed"
                );
            }
            return;
        }
        Err(_) => {
            stats.tls_handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            ledger.outcome = "tls-handshake-timeout";
            return;
        }
    };
    finish(&mut ledger, &phase, res);
}
