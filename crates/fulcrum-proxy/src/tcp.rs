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
use crate::copy::{Copied, proxy};
use crate::engine::Shared;
use crate::ratelog::RateLimit;
use crate::state::{PoolState, PoolView, ServerEntry};

static NO_SERVER_LOG: RateLimit = RateLimit::new(1_000);
static CONNECT_FAIL_LOG: RateLimit = RateLimit::new(1_000);

pub async fn serve(shared: Arc<Shared>, fe_index: usize, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let (pool, fe_name, idle) = {
        let snap = shared.state.load();
        let Some(fe) = snap.frontends.get(fe_index) else { return };
        let Some(pool) = snap.pools.get(fe.pool) else { return };
        (pool.clone(), fe.name.clone(), fe.idle_timeout)
    };
    let fstats = &shared.frontend_stats[fe_index];
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
            if shared.access_log {
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
    drop(upstream);
    drop(client);
    server.stats.active.fetch_sub(1, Ordering::Relaxed);
    server.stats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    server.stats.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    fstats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    fstats.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    fstats.connections_active.fetch_sub(1, Ordering::Relaxed);
    if shared.access_log {
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
    let attempts = pool.retries as usize + 1;
    while tried.len() < attempts {
        let now = now_ms();
        let mut input = PickInput { hash: input_hash, rand: fastrand::u64(..) };
        let mut view = PoolView { servers: &pool.servers, now_ms: now, panic: false };
        let index = match pool.balancer.pick(&input, &view, &tried) {
            Some(i) => i,
            None => {
                view.panic = true;
                input.rand = fastrand::u64(..);
                pool.balancer.pick(&input, &view, &tried)?
            }
        };
        if !tried.insert(index) {
            return None;
        }
        let server = pool.servers.get(index)?;
        // Counted from the start of the connect, so least-connections sees it at once.
        server.stats.active.fetch_add(1, Ordering::Relaxed);
        let res = tokio::time::timeout(pool.connect_timeout, TcpStream::connect(server.addr)).await;
        let err = match res {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                server.stats.on_connect_success();
                return Some((Picked { pool: pool.clone(), index }, stream));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        server.stats.active.fetch_sub(1, Ordering::Relaxed);
        // Running out of local descriptors or ports is not the server's fault.
        let local = crate::listener::is_resource_error(&err) || err.raw_os_error() == Some(99);
        let ejected = !local && server.stats.on_connect_failure(&pool.eject, now_ms());
        if ejected || CONNECT_FAIL_LOG.allow(now_ms()).is_some() {
            tracing::warn!(
                pool = %pool.name, server = %server.key, error = %err, ejected,
                "connect to server failed"
            );
        }
    }
    None
}
