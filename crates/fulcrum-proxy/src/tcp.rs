//! One proxied TCP connection: pick a server, connect with a timeout, retry on the next
//! candidate (never the same server twice), then hand both sockets to the copy engine and
//! log the outcome.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fulcrum_core::balance::{PickInput, Tried, hash_ip};
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::copy::{Copied, Outcome, proxy};
use crate::engine::{AcceptCtx, Shared};
use crate::ratelog::RateLimit;
use crate::state::{PoolState, PoolView, ServerEntry};

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
    if outcome == Outcome::ServerError {
        // A reset from the server counts against it like a failed connect.
        let now = now_ms();
        server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
    }
    drop(upstream);
    drop(client);
    server.stats.active.fetch_sub(1, Ordering::Relaxed);
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
    let input_hash = hash_ip(peer.ip());
    let mut tried = Tried::new();
    // Servers passed over for slow start: still usable when nothing else is.
    let mut deferred: Option<usize> = None;
    let attempts = pool.retries as usize + 1;
    let slow_ms = pool.slow_start.as_millis() as u64;
    let mut connects = 0;
    while connects < attempts {
        let now = now_ms();
        let mut input = PickInput { hash: input_hash, rand: fastrand::u64(..) };
        let mut view = PoolView {
            servers: &pool.servers,
            now_ms: now,
            panic: false,
            report_ttl_ms: pool.report_ttl_ms,
        };
        let picked = match pool.balancer.pick(&input, &view, &tried) {
            Some(i) => Some(i),
            None => {
                view.panic = true;
                input.rand = fastrand::u64(..);
                pool.balancer.pick(&input, &view, &tried)
            }
        };
        let index = match (picked, deferred.take()) {
            (Some(i), _) => i,
            (None, Some(d)) => d,
            (None, None) => return None,
        };
        if !tried.insert(index) && picked.is_some() {
            return None;
        }
        let server = pool.servers.get(index)?;
        if picked.is_some() {
            let factor = server.stats.slow_start_factor(slow_ms, now) * server.stats.agent_factor();
            if factor < 1.0 && fastrand::f64() > factor {
                deferred = Some(index);
                continue;
            }
        }
        connects += 1;
        // Counted from the start of the connect, so least-connections sees it at once.
        server.stats.active.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(pool.connect_timeout, crate::connect::connect(server.addr));
        let err = match res.await {
            Ok(Ok(stream)) => {
                server.stats.on_connect_success(started.elapsed());
                server.stats.on_assigned();
                return Some((Picked { pool: pool.clone(), index }, stream));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        server.stats.active.fetch_sub(1, Ordering::Relaxed);
        // Running out of local descriptors or ports is not the server's fault.
        let local = crate::listener::is_resource_error(&err)
            || err.raw_os_error() == Some(crate::listener::libc_errno::EADDRNOTAVAIL);
        let now = now_ms();
        let ejected =
            !local && server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
        if ejected || CONNECT_FAIL_LOG.allow(now).is_some() {
            tracing::warn!(
                pool = %pool.name, server = %server.key, error = %err, ejected,
                "connect to server failed"
            );
        }
    }
    None
}
