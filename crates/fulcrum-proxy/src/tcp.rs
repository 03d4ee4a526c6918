//! One proxied TCP connection: pick a server, connect with a timeout, retry on the next
//! candidate (never the same server twice), then hand both sockets to the copy engine and
//! log the outcome. A connect is the TCP handshake, then the PROXY header (`send_proxy`), then
//! the TLS handshake (`[pool.X.tls]`): a failure in any of them is a failed connect, and the
//! next server is tried. A frontend with routes by SNI first peeks at the ClientHello for the
//! pool (`sni.rs`); a connection an `https` frontend passes through comes here too
//! ([`relay`]), so both take the one pick and admission path below.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fulcrum_core::balance::{MAX_ATTEMPTS, Tried, hash_ip};
use fulcrum_core::blame::{Side, connect_failed, stream_failed};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::clock::now_ms;
use crate::copy::{Copied, Outcome, proxy};
use crate::ledger::{Ledger, Picked};
use crate::queue::{Refusal, take_or_wait};
use crate::ratelog::RateLimit;
use crate::sni::Verdict;
use crate::state::{NoSlot, PoolState, ServerEntry};
use crate::upstream_tls::Alpn;

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
    mut client: TcpStream,
    pool: Arc<PoolState>,
    timeouts: Timeouts,
) {
    let Timeouts { idle, send: send_timeout } = timeouts;
    let peer = ledger.client();
    let local = client.local_addr().unwrap_or(peer);
    let (server, upstream) = match connect(&pool, peer, local).await {
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
    // A source that may not send a PROXY header is refused one (accept_proxy names those
    // that may; the trusted ones' headers were read before this).
    let refuse = !ledger.ctx().frontend.accept_proxy.is_empty() && !ledger.proxied();
    let idle = crate::admit::IdleLimit::new(idle, ledger.shared(), ledger.ctx());
    let copied = match upstream {
        Upstream::Plain(s) => {
            let copied =
                proxy(&client, &s, idle, send_timeout, ledger.shared().splice, refuse).await;
            drop(s);
            copied
        }
        Upstream::Tls(mut s) => {
            // Boxed, as the handshake below: the TLS path's futures must not grow the task
            // of every plain TCP connection.
            let copied =
                crate::copy_stream::proxy(&mut client, &mut *s, idle, send_timeout, refuse);
            let copied = Box::pin(copied).await;
            drop(s);
            copied
        }
    };
    finish(&mut ledger, &pool, index, &client, copied);
    // Both sockets close before the ledger gives their descriptors back.
    drop(client);
}

/// A server connection: a plain socket (spliced or copied by `copy.rs`), or TLS
/// (`copy_stream.rs`).
enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The pair has ended (its server socket closed already): the verdict on the server and the
/// ledger's counts.
fn finish(ledger: &mut Ledger, pool: &PoolState, index: usize, client: &TcpStream, c: Copied) {
    let Copied { outcome, bytes_in, bytes_out } = c;
    let failed = match outcome {
        Outcome::ServerError => Some(Side::Server),
        Outcome::ClientError | Outcome::UntrustedProxyHeader => Some(Side::Client),
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
        let _ = socket2::SockRef::from(client).set_linger(Some(std::time::Duration::ZERO));
    }
    ledger.bytes_in = bytes_in;
    ledger.bytes_out = bytes_out;
    ledger.outcome = outcome.as_str();
}

/// Connects to a server of `pool`, trying at most `1 + retries` distinct servers. The
/// returned server's `active` count includes this connection. When every server is at its
/// cap, the first attempt waits in the pool's queue (if it has one); a retry does not (the
/// client already had its turn), it is refused like any client finding no server.
async fn connect(
    pool: &Arc<PoolState>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<(Picked, Upstream), Refusal> {
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
        // One deadline for the TCP connect and what follows it (PROXY header, TLS handshake).
        let deadline = tokio::time::Instant::now() + pool.connect_timeout;
        let res = tokio::time::timeout_at(
            deadline,
            crate::connect::connect(server.addr, pool.receive_buffer),
        );
        let err = match res.await {
            Ok(Ok(stream)) => {
                server.stats.on_connected(started.elapsed());
                match open(pool, server, stream, peer, local, deadline).await {
                    Ok(upstream) => {
                        server.stats.on_assigned();
                        return Ok((Picked { pool: pool.clone(), index }, upstream));
                    }
                    Err(e) => e,
                }
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

/// What a connected server socket needs before the client's bytes: the PROXY header naming
/// the client (in the clear, before TLS, as HAProxy sends it), then the TLS handshake.
async fn open(
    pool: &PoolState,
    server: &ServerEntry,
    mut stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    deadline: tokio::time::Instant,
) -> io::Result<Upstream> {
    if let Some(version) = pool.send_proxy {
        let send = crate::proxyproto::send(&mut stream, version, client, local);
        tokio::time::timeout_at(deadline, send)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "PROXY header timed out"))??;
    }
    match (&pool.tls, &server.tls_name) {
        (Some(tls), Some(name)) => {
            let handshake = tls.handshake(stream, name.clone(), Alpn::Stream, deadline);
            let s = Box::pin(handshake).await?;
            Ok(Upstream::Tls(Box::new(s)))
        }
        _ => Ok(Upstream::Plain(stream)),
    }
}
