//! UDP fan-out and hedge, and the UDP proxy without sessions (`sessions = false`, one server
//! asked per datagram): one datagram is one request. Each request runs in its own task on
//! the worker, with a fresh connected upstream socket per server asked, so an answer can only
//! ever belong to the request whose socket it arrived on (a pooled socket could still receive
//! a late answer to its previous request). At most [`UDP_IN_FLIGHT`] requests per worker;
//! beyond, requests are dropped and counted.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use fulcrum_core::balance::hash_ip;
use fulcrum_core::fanout::Step;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    CLIENT_LOG, DROP_LOG, MAX_DATAGRAM, Outstanding, Settings, UDP_IN_FLIGHT, choose, is_over,
    no_server, upstream_failed,
};
use crate::clock::now_ms;
use crate::context::{AcceptCtx, Shared};
use crate::ledger::Descriptor;
use crate::state::PoolState;

thread_local! {
    /// Receive buffer for upstream answers, one per worker thread: a request waiting for its
    /// answers holds no buffer (4,096 waiting requests would otherwise hold 256 MiB).
    static DATAGRAM: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// Serves one worker's socket of a UDP fan-out or hedge frontend until `stop`, then lets the
/// requests already taken finish (each is bounded by the timeout).
pub async fn serve_udp(
    shared: Arc<Shared>,
    ctx: Arc<AcceptCtx>,
    sock: UdpSocket,
    stop: CancellationToken,
) {
    let Some(settings) = Settings::of_frontend(&ctx.frontend) else {
        stop.cancelled().await;
        return;
    };
    let settings = Arc::new(settings);
    let sock = Arc::new(sock);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                // Receive errors on an unconnected socket are transient (and per datagram).
                let Ok((n, peer)) = r else { continue };
                // A refused sender's datagram is counted as a rejection, not a request.
                if crate::guard::admit_lone_datagram(&shared, &ctx, peer).is_err() {
                    continue;
                }
                let stats = &ctx.stats;
                stats.fanout_requests.fetch_add(1, Ordering::Relaxed);
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                if tasks.len() >= UDP_IN_FLIGHT {
                    stats.fanout_dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(skipped) = DROP_LOG.allow(now_ms()) {
                        tracing::warn!(
                            frontend = %ctx.name, skipped, limit = UDP_IN_FLIGHT,
                            "fan-out request dropped: too many requests in flight on this worker"
                        );
                    }
                    continue;
                }
                let pool = {
                    let snap = shared.state.load();
                    snap.frontend(&ctx.name).and_then(|f| snap.pools.get(f.pool)).cloned()
                };
                let Some(pool) = pool else {
                    stats.fanout_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let job = UdpJob {
                    shared: shared.clone(),
                    pool,
                    settings: settings.clone(),
                    ctx: ctx.clone(),
                    client: sock.clone(),
                    req: buf.get(..n).unwrap_or_default().to_vec(),
                    peer,
                };
                tasks.spawn(udp_request(job));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = stop.cancelled() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
}

struct UdpJob {
    shared: Arc<Shared>,
    pool: Arc<PoolState>,
    settings: Arc<Settings>,
    ctx: Arc<AcceptCtx>,
    client: Arc<UdpSocket>,
    req: Vec<u8>,
    peer: SocketAddr,
}

/// A request sent to one server over its own socket.
struct UdpAsked {
    sock: UdpSocket,
    index: usize,
    sent: Instant,
    _out: Outstanding,
    /// The socket's descriptor, drawn from the process's budget.
    _fd: Descriptor,
}

async fn udp_request(job: UdpJob) {
    let UdpJob { shared, pool, settings, ctx, client, req, peer } = job;
    let stats = &ctx.stats;
    let start = Instant::now();
    let hash = hash_ip(peer.ip());
    let mut race = settings.race();
    let mut asked: Vec<usize> = Vec::new();
    let mut open: Vec<UdpAsked> = Vec::new();
    let mut winner: Option<Vec<u8>> = None;
    let mut step = race.next(Duration::ZERO);
    let reply: Option<Vec<u8>> = loop {
        match step {
            Step::Ask => {
                let from = asked.len();
                let n = choose(&pool, hash, settings.per_ask(), &mut asked);
                if n == 0 && from == 0 {
                    no_server(stats, &ctx.name, &pool);
                }
                if n > 0 && from > 0 {
                    stats.fanout_hedges.fetch_add(1, Ordering::Relaxed);
                }
                let at = start.elapsed();
                race.sent(n, at);
                step = race.next(at);
                for &i in asked.get(from..).unwrap_or_default() {
                    let Some(server) = pool.servers.get(i) else { continue };
                    // A socket per server asked: each draws a descriptor from the budget, and
                    // a request that finds it spent asks no further server (counted).
                    let Some(fd) = Descriptor::take(&shared) else {
                        stats.udp_drops_descriptors.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    match udp_send(server.addr, &req).await {
                        Ok(sock) => {
                            server.stats.bytes_in.fetch_add(req.len() as u64, Ordering::Relaxed);
                            let out = Outstanding::new(&server.stats);
                            let sent = Instant::now();
                            open.push(UdpAsked { sock, index: i, sent, _out: out, _fd: fd });
                        }
                        Err(e) => {
                            upstream_failed(&pool, i, &e, stats);
                            if !is_over(step) {
                                step = race.on_failure(start.elapsed());
                            }
                        }
                    }
                }
            }
            Step::Wait(until) => {
                let deadline = tokio::time::Instant::from_std(start + until);
                let got = tokio::select! {
                    r = next_datagram(&open) => Some(r),
                    () = tokio::time::sleep_until(deadline) => None,
                };
                let at = start.elapsed();
                step = match got {
                    None => race.next(at),
                    Some((k, r)) => {
                        if k >= open.len() {
                            continue;
                        }
                        // This server is done with this request: its socket closes now.
                        let asked = open.swap_remove(k);
                        match r {
                            Ok(answer) => {
                                if let Some(s) = pool.servers.get(asked.index) {
                                    // For UDP the connect-time histogram records the time to
                                    // the answer, and an answer ends a failure run.
                                    s.stats.on_connect_success(asked.sent.elapsed());
                                    s.stats
                                        .bytes_out
                                        .fetch_add(answer.len() as u64, Ordering::Relaxed);
                                }
                                let ok = settings.acceptable(&answer);
                                if !ok {
                                    stats.fanout_rejected_answers.fetch_add(1, Ordering::Relaxed);
                                }
                                let s = race.on_answer(ok, at);
                                if s == Step::Relay {
                                    winner = Some(answer);
                                }
                                s
                            }
                            Err(e) => {
                                upstream_failed(&pool, asked.index, &e, stats);
                                race.on_failure(at)
                            }
                        }
                    }
                };
            }
            Step::Relay => {
                stats.fanout_answered.fetch_add(1, Ordering::Relaxed);
                break winner.take();
            }
            Step::TimedOut => {
                stats.fanout_timeouts.fetch_add(1, Ordering::Relaxed);
                break settings.on_timeout.as_deref().map(<[u8]>::to_vec);
            }
            Step::Over => break None,
        }
    };
    // The losers' sockets close here: their answers, if any come, are refused by the kernel.
    drop(open);
    let Some(reply) = reply else { return };
    match client.send_to(&reply, peer).await {
        Ok(n) => {
            stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(e) => {
            stats.fanout_dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = CLIENT_LOG.allow(now_ms()) {
                tracing::warn!(
                    frontend = %ctx.name, client = %peer, error = %e, skipped,
                    "fan-out answer could not be sent to the client"
                );
            }
        }
    }
}

/// A fresh socket connected to `server`, with the request sent.
async fn udp_send(server: SocketAddr, req: &[u8]) -> io::Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(req).await?;
    Ok(sock)
}

/// The next datagram on any of `open`'s sockets, with the index of the socket; pending
/// forever when `open` is empty. A server that refuses (ICMP port unreachable) is not seen
/// here: readiness does not report socket errors, so it counts as silence.
async fn next_datagram(open: &[UdpAsked]) -> (usize, io::Result<Vec<u8>>) {
    loop {
        let (k, err) = std::future::poll_fn(|cx| {
            for (k, a) in open.iter().enumerate() {
                match a.sock.poll_recv_ready(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready((k, None)),
                    Poll::Ready(Err(e)) => return Poll::Ready((k, Some(e))),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        if let Some(e) = err {
            return (k, Err(e));
        }
        let Some(a) = open.get(k) else { continue };
        match take_datagram(&a.sock) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return (k, r),
        }
    }
}

/// Reads one waiting datagram through the worker's shared buffer.
fn take_datagram(sock: &UdpSocket) -> io::Result<Vec<u8>> {
    DATAGRAM.with(|b| {
        let mut b = b.borrow_mut();
        let n = sock.try_recv(&mut b)?;
        Ok(b.get(..n).unwrap_or_default().to_vec())
    })
}
