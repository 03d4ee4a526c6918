//! What an accepted TCP connection passes on its worker before its service runs: the PROXY
//! header a trusted balancer (`accept_proxy`) must send first, whose client is then checked by
//! address (guard.rs), and the frontend's per-client limits (clients.rs, through the ledger).
//! A client refused here is reset; no server ever hears of it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::context::AcceptCtx;
use crate::ledger::Ledger;

/// Whether `peer` is an `accept_proxy` source of `ctx`'s frontend.
pub(crate) fn is_proxy_source(ctx: &AcceptCtx, peer: SocketAddr) -> bool {
    ctx.frontend.accept_proxy.iter().any(|n| n.contains(&peer.ip().to_canonical()))
}

static PROXY_HEADER_LOG: crate::ratelog::RateLimit = crate::ratelog::RateLimit::new(1_000);

/// What a connection passes before its service runs: the PROXY header of a trusted source
/// (its client becomes the client, checked by address), then the per-client limits of the
/// frontend. A refused client is reset: no server ever hears of it.
pub(crate) async fn admit(ledger: &mut Ledger, stream: &mut TcpStream, proxied: bool) -> bool {
    if proxied && !take_proxy_header(ledger, stream).await {
        return false;
    }
    match ledger.admit_client() {
        Ok(()) => true,
        Err(why) => {
            ledger.outcome = why.name();
            // A reset frees the socket at once, where a FIN would leave it in TIME_WAIT here.
            let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
            false
        }
    }
}

/// Reads the PROXY header a trusted source (`accept_proxy`) must send first; its client becomes
/// the connection's client. Without a valid one the connection is closed (`bad-proxy-header`);
/// so is one whose client its frontend refuses by address (outcome: the reason).
async fn take_proxy_header(ledger: &mut Ledger, stream: &mut TcpStream) -> bool {
    ledger.set_proxied();
    let client = match crate::proxyproto::read_header(stream).await {
        Ok(Some(client)) => {
            ledger.set_client(client);
            client
        }
        // UNKNOWN / LOCAL: the balancer in front speaks for itself (its health check).
        Ok(None) => ledger.client(),
        Err(e) => {
            ledger.outcome = "bad-proxy-header";
            if let Some(skipped) = PROXY_HEADER_LOG.allow(crate::clock::now_ms()) {
                tracing::warn!(
                    frontend = %ledger.ctx().name, source = %ledger.client(), error = %e,
                    skipped, "connection without a valid PROXY header closed"
                );
            }
            return false;
        }
    };
    match crate::guard::check(ledger.shared(), ledger.ctx(), client.ip()) {
        Ok(()) => true,
        Err(why) => {
            crate::guard::refused(ledger.ctx(), client, why);
            ledger.outcome = why.name();
            false
        }
    }
}
