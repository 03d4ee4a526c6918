//! One proxied TCP connection: pick a server, connect with a timeout, retry on the next
//! candidate (never the same server twice), then hand both sockets to the copy engine and
//! log the outcome.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fulcrum_core::balance::{MAX_ATTEMPTS, Tried, hash_ip};
use fulcrum_core::blame::{Side, connect_failed, stream_failed};
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::copy::{Copied, Outcome, proxy};
use crate::engine::{AcceptCtx, Shared};
use crate::ratelog::RateLimit;
use crate::state::{PoolState, ServerEntry};

static NO_SERVER_LOG: RateLimit = RateLimit::new(1_000);
static CONNECT_FAIL_LOG: RateLimit = RateLimit::new(1_000);

pub async fn serve(shared: Arc<Shared>, ctx: &AcceptCtx, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    // TCP_NODELAY is inherited from the listener (listener.rs): no setsockopt here.
    let fe_name = &ctx.name;
    let (pool, idle) = {
        let snap = shared.state.load();
        let Some(fe) = snap.frontend(fe_name) else { return };
        let Some(pool) = snap.pools.get(fe.pool) else { return };
        (pool.clone(), fe.idle_timeout)
    };
    let fstats = &ctx.stats;
    fstats.connections_total.fetch_add(1, Ordering::Relaxed);
    fstats.connections_active.fetch_add(1, Ordering::Relaxed);

    let connected = connect(&pool, peer).await;
    let (server, upstream) = match connected {
        Some(c) => c,
        None => {
            fstats.no_server.fetch_add(1, Ordering::Relaxed);
            fstats.connections_active.fetch_sub(1, Ordering::Relaxed);
            if let Some(skipped) = NO_SERVER_LOG.allow(now_ms()) {
                tracing::warn!(
                    frontend = %fe_name, pool = %pool.name, client = %peer, skipped,
                    "no server available: client closed"
                );
            }
            if shared.access_log() {
                tracing::info!(
                    target: "fulcrum::access",
                    client = %peer, frontend = %fe_name, server = "-", bytes_in = 0u64,
                    bytes_out = 0u64, duration_ms = started.elapsed().as_millis() as u64,
                    outcome = "no-server"
                );
            }
            return;
        }
    };
    let Copied { outcome, bytes_in, bytes_out } =
        proxy(&client, &upstream, idle, shared.splice).await;
    let failed = match outcome {
        Outcome::ServerError => Some(Side::Server),
        Outcome::ClientError => Some(Side::Client),
        Outcome::Done | Outcome::IdleTimeout => None,
    };
    if failed.is_some_and(|side| stream_failed(side, bytes_out > 0).counts_against_server()) {
        // A server that resets before answering counts against it like a failed connect.
        let now = now_ms();
        server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
    } else {
        server.stats.on_exchange_ok();
    }
    drop(upstream);
    drop(client);
    server.stats.active.fetch_sub(1, Ordering::Relaxed);
    server.stats.on_released();
    server.stats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    server.stats.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    fstats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    fstats.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    fstats.connections_active.fetch_sub(1, Ordering::Relaxed);
    if shared.access_log() {
        tracing::info!(
            target: "fulcrum::access",
            client = %peer, frontend = %fe_name, server = %server.key, bytes_in, bytes_out,
            duration_ms = started.elapsed().as_millis() as u64, outcome = outcome.as_str()
        );
    }
}

/// A server entry that stays valid after the snapshot it came from is replaced.
pub struct Picked {
    pool: Arc<PoolState>,
    index: usize,
}

impl std::ops::Deref for Picked {
    type Target = ServerEntry;
    fn deref(&self) -> &ServerEntry {
        &self.pool.servers[self.index]
    }
}

/// Connects to a server of `pool`, trying at most `1 + retries` distinct servers. The
/// returned server's `active` count includes this connection.
async fn connect(pool: &Arc<PoolState>, peer: SocketAddr) -> Option<(Picked, TcpStream)> {
    let client_hash = hash_ip(peer.ip());
    let mut tried = Tried::new();
    // Config caps retries so that every attempt fits in `Tried`.
    let attempts = (pool.retries as usize + 1).min(MAX_ATTEMPTS);
    for _ in 0..attempts {
        let index = pool.admit(client_hash, &tried, &[])?;
        tried.insert(index);
        let server = pool.servers.get(index)?;
        // Counted from the start of the connect, so least-connections sees it at once.
        server.stats.active.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(pool.connect_timeout, crate::connect::connect(server.addr));
        let err = match res.await {
            Ok(Ok(stream)) => {
                server.stats.on_connected(started.elapsed());
                server.stats.on_assigned();
                return Some((Picked { pool: pool.clone(), index }, stream));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        server.stats.active.fetch_sub(1, Ordering::Relaxed);
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
    None
}
