//! One proxied TCP connection: pick a server, connect with a timeout, retry on the next
//! candidate (never the same server twice), then hand both sockets to the copy engine and
//! log the outcome. A frontend with routes by SNI first peeks at the ClientHello for the
//! pool (`sni.rs`); a connection an `https` frontend passes through comes here too
//! ([`relay`]), so both take the one pick and admission path below.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fulcrum_core::balance::{MAX_ATTEMPTS, Tried, hash_ip};
use fulcrum_core::blame::{Side, connect_failed, stream_failed};
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::copy::{Copied, Outcome, proxy};
use crate::ledger::{Ledger, Picked};
use crate::queue::{Refusal, take_or_wait};
use crate::ratelog::RateLimit;
use crate::sni::Verdict;
use crate::state::{NoSlot, PoolState};

static NO_SERVER_LOG: RateLimit = RateLimit::new(1_000);
static CONNECT_FAIL_LOG: RateLimit = RateLimit::new(1_000);

pub async fn serve(mut ledger: Ledger, client: TcpStream) {
    // TCP_NODELAY is inherited from the listener (listener.rs): no setsockopt here.
    let (pool, timeouts, sni_wait) = {
        let snap = ledger.shared().state.load();
        let Some(fe) = snap.frontend(&ledger.ctx().name) else { return };
        let Some(pool) = snap.pools.get(fe.pool) else { return };
        let timeouts = Timeouts { idle: fe.idle_timeout, send: fe.send_timeout };
        (pool.clone(), timeouts, fe.sni.as_ref().map(|_| fe.sni_timeout))
    };
    let pool = match sni_wait {
        None => pool,
        // Boxed: a connection of a frontend without routes by SNI does not carry the
        // ClientHello reader's size in its task.
        Some(wait) => match Box::pin(crate::sni::choose(&mut ledger, &client, wait)).await {
            Verdict::Route(pool) | Verdict::Default(pool) => pool,
            Verdict::Close => return,
        },
    };
    relay(ledger, client, pool, timeouts).await
}

/// A proxied connection's waits: `idle_timeout` and `send_timeout` of its frontend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) idle: std::time::Duration,
    pub(crate) send: std::time::Duration,
}

/// Proxies `client` to a server of `pool` (picked, admitted and connected by [`connect`]),
/// as plain bytes both ways, until both sides end.
pub(crate) async fn relay(
    mut ledger: Ledger,
    client: TcpStream,
    pool: Arc<PoolState>,
    timeouts: Timeouts,
) {
    let Timeouts { idle, send: send_timeout } = timeouts;
    let peer = ledger.client();
    let (server, upstream) = match connect(&pool, peer).await {
        Ok(c) => c,
        Err(refusal) => {
            ledger.ctx().stats.no_server.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = NO_SERVER_LOG.allow(now_ms()) {
                tracing::warn!(
                    frontend = %ledger.ctx().name, pool = %pool.name, client = %peer, skipped,
                    reason = refusal.outcome(), queued = pool.queue.len(),
                    "no server available: client closed"
                );
            }
            ledger.outcome = refusal.outcome();
            return;
        }
    };
    let index = server.index;
    ledger.hold(server);
    let mut upstream = upstream;
    if let Some(version) = pool.send_proxy {
        let local = client.local_addr().unwrap_or(peer);
        if crate::proxyproto::send(&mut upstream, version, ledger.client(), local).await.is_err() {
            ledger.outcome = "server-error";
            return;
        }
    }
    let Copied { outcome, bytes_in, bytes_out } =
        proxy(&client, &upstream, idle, send_timeout, ledger.shared().splice).await;
    let failed = match outcome {
        Outcome::ServerError => Some(Side::Server),
        Outcome::ClientError => Some(Side::Client),
        Outcome::Done | Outcome::IdleTimeout | Outcome::SendTimeout => None,
    };
    if let Some(server) = pool.servers.get(index) {
        if failed.is_some_and(|side| stream_failed(side, bytes_out > 0).counts_against_server()) {
            // A server that resets before answering counts against it like a failed connect.
            let now = now_ms();
            server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
        } else {
            server.stats.on_exchange_ok();
        }
    }
    if outcome == Outcome::SendTimeout {
        // What the client did not take is dropped with a reset, not kept in a closing socket.
        let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
    }
    // Both sockets close before the ledger gives their descriptors back.
    drop(upstream);
    drop(client);
    ledger.bytes_in = bytes_in;
    ledger.bytes_out = bytes_out;
    ledger.outcome = outcome.as_str();
}

/// Connects to a server of `pool`, trying at most `1 + retries` distinct servers. The
/// returned server's `active` count includes this connection. When every server is at its
/// cap, the first attempt waits in the pool's queue (if it has one); a retry does not (the
/// client already had its turn), it is refused like any client finding no server.
async fn connect(pool: &Arc<PoolState>, peer: SocketAddr) -> Result<(Picked, TcpStream), Refusal> {
    let client_hash = hash_ip(peer.ip());
    let mut tried = Tried::new();
    // Config caps retries so that every attempt fits in `Tried`.
    let attempts = (pool.retries as usize + 1).min(MAX_ATTEMPTS);
    for attempt in 0..attempts {
        // The slot is taken with the pick (counted in `active` from the start of the
        // connect, so least-connections sees it at once, and a cap holds across workers).
        let taken = if attempt == 0 {
            take_or_wait(pool, client_hash, &mut tried).await
        } else {
            pool.take_slot(client_hash, &mut tried).map_err(|e| match e {
                NoSlot::NoServer => Refusal::NoServer,
                NoSlot::Full => Refusal::ServersFull,
            })
        };
        let index = taken?;
        tried.insert(index);
        let Some(server) = pool.servers.get(index) else { return Err(Refusal::NoServer) };
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(pool.connect_timeout, crate::connect::connect(server.addr));
        let err = match res.await {
            Ok(Ok(stream)) => {
                server.stats.on_connected(started.elapsed());
                server.stats.on_assigned();
                return Ok((Picked { pool: pool.clone(), index }, stream));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        server.stats.active.fetch_sub(1, Ordering::Relaxed);
        pool.slot_freed();
        let now = now_ms();
        let ejected = connect_failed(err.raw_os_error()).counts_against_server()
            && server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
        if ejected || CONNECT_FAIL_LOG.allow(now).is_some() {
            tracing::warn!(
                pool = %pool.name, server = %server.key, error = %err, ejected,
                "connect to server failed"
            );
        }
    }
    Err(Refusal::NoServer)
}
