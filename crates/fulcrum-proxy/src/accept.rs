//! The TCP accept loops, one per listener per worker: backpressure at the connection and
//! descriptor limits (clients wait in the kernel's backlog), the fair share's decisions on
//! clients accepted while every slot is taken (admit.rs decides, this loop acts), and the
//! hand-off of each connection, its slots taken, to the worker that serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::context::{AcceptCtx, Shared, WorkerCmd};
use crate::engine::serve_here;
use crate::ledger::{TCP_DESCRIPTORS, release_tcp_slots};
use crate::listener::is_resource_error;
use crate::ratelog::RateLimit;
use crate::stats::Limits;

static ACCEPT_ERR_LOG: RateLimit = RateLimit::new(1_000);

pub(crate) async fn accept_loop(
    id: usize,
    shared: Arc<Shared>,
    ctx: Arc<AcceptCtx>,
    listener: AsyncFd<std::net::TcpListener>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    // One stop future for the loop's life: each new `cancelled()` future registers with the
    // token's waiter list under a lock when first polled, and would do so on every accept.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // Accept backpressure: at a limit, leave new clients in the kernel's backlog. With the
        // fair share on, a few are accepted anyway (on the descriptor reserve) to decide
        // whether room is made for them (admit.rs); the rest wait in the backlog.
        let gates = || {
            [(&shared.limits, 1), (&shared.descriptors, TCP_DESCRIPTORS)]
                .into_iter()
                .chain(ctx.limits.as_ref().map(|l| (l, 1)))
        };
        let mut deciding = false;
        if let Some((full, n)) = gates().find(|(l, n)| l.full_for(*n)) {
            if ctx.frontend.fair_share.enabled {
                deciding = shared.deciding.try_acquire();
                if !deciding {
                    // Look again soon: a slot or a decision may free first.
                    let wait = tokio::time::timeout(FULL_RECHECK, wait_below(full, n, &stop));
                    if let Ok(Err(())) = wait.await {
                        return;
                    }
                    continue;
                }
            } else {
                for (limits, n) in gates() {
                    if wait_below(limits, n, &stop).await.is_err() {
                        return;
                    }
                }
            }
        }
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            () = &mut stopped => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // Refused by address before anything is taken for it. A trusted PROXY source
                // speaks for a client whose address comes in its header: checked there.
                let stream = if crate::admit::is_proxy_source(&ctx, peer) {
                    Some(stream)
                } else {
                    crate::guard::admit_stream(&shared, &ctx, stream, peer)
                };
                let Some(stream) = stream else {
                    if deciding {
                        shared.deciding.release();
                    }
                    continue;
                };
                // The slots are taken atomically: others may have filled them since the
                // look above (this loop then waited in accept meanwhile).
                if try_take_tcp_slots(&shared, &ctx) {
                    if deciding {
                        shared.deciding.release();
                    }
                    dispatch(id, &shared, &ctx, stream, peer, &tracker);
                    continue;
                }
                if !deciding && ctx.frontend.fair_share.enabled {
                    deciding = shared.deciding.try_acquire();
                }
                if deciding {
                    let room = crate::admit::make_room(&shared, &ctx, peer);
                    if room != crate::admit::Room::Wait {
                        shared.deciding.release();
                        match room {
                            crate::admit::Room::Made => {
                                dispatch(id, &shared, &ctx, stream, peer, &tracker);
                            }
                            _ => reset(&stream),
                        }
                        continue;
                    }
                    let (shared, ctx, stop, tracker2) =
                        (shared.clone(), ctx.clone(), stop.clone(), tracker.clone());
                    tracker.spawn(async move {
                        let room = wait_for_room(&shared, &ctx, peer, &stop).await;
                        shared.deciding.release();
                        if room {
                            dispatch(id, &shared, &ctx, stream, peer, &tracker2);
                        } else {
                            reset(&stream);
                        }
                    });
                    continue;
                }
                // No slot, and the fair share off (or 64 clients already being decided on):
                // the client waits (accepted, unserved) until one frees. At most one client
                // per accept loop waits like this.
                if take_tcp_slots(&shared, &ctx, &stop).await.is_err() {
                    return;
                }
                dispatch(id, &shared, &ctx, stream, peer, &tracker);
            }
            Err(e) => {
                ctx.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = ACCEPT_ERR_LOG.allow(now_ms()) {
                    tracing::warn!(frontend = %ctx.name, error = %e, skipped, "accept failed");
                }
                if is_resource_error(&e) {
                    // Out of descriptors or memory: wait for connections to close.
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut stopped => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

/// How often an accept loop at a limit looks again when it may not decide (fair share).
const FULL_RECHECK: Duration = Duration::from_millis(50);

/// Takes a TCP connection's slots (global, descriptors, frontend), waiting for each to free;
/// `Err` when the worker is stopping. Cancelled half way (a timeout), it gives back what it
/// took.
pub(crate) async fn take_tcp_slots(
    shared: &Shared,
    ctx: &AcceptCtx,
    stop: &CancellationToken,
) -> Result<(), ()> {
    struct Taken<'a>(Vec<(&'a Limits, usize)>);
    impl Drop for Taken<'_> {
        fn drop(&mut self) {
            for (l, n) in &self.0 {
                l.release_n(*n);
            }
        }
    }
    let mut taken = Taken(Vec::with_capacity(3));
    let gates = [(&shared.limits, 1), (&shared.descriptors, TCP_DESCRIPTORS)];
    for (l, n) in gates.into_iter().chain(ctx.limits.as_ref().map(|l| (l, 1))) {
        acquire(l, n, stop).await?;
        taken.0.push((l, n));
    }
    taken.0.clear();
    Ok(())
}

/// A newcomer for whom no room could be made at once: looks again whenever a slot frees and
/// at least every 20 ms (the connections closed for earlier newcomers end, and room can be
/// made again), for `ROOM_WAIT`; true once it holds its slots, false when refused.
async fn wait_for_room(
    shared: &Shared,
    ctx: &AcceptCtx,
    peer: SocketAddr,
    stop: &CancellationToken,
) -> bool {
    let deadline = tokio::time::Instant::now() + crate::admit::ROOM_WAIT;
    loop {
        if try_take_tcp_slots(shared, ctx) {
            return true;
        }
        match crate::admit::make_room(shared, ctx, peer) {
            crate::admit::Room::Made => return true,
            crate::admit::Room::Refused => return false,
            crate::admit::Room::Wait => {}
        }
        if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
            crate::admit::waited_in_vain(shared, ctx, peer);
            return false;
        }
        let freed = shared.limits.freed().notified();
        let _ = tokio::time::timeout(Duration::from_millis(20), freed).await;
    }
}

/// Takes a TCP connection's slots (global, descriptors, frontend) if all are free now, all
/// or none.
fn try_take_tcp_slots(shared: &Shared, ctx: &AcceptCtx) -> bool {
    if !shared.limits.try_acquire() {
        return false;
    }
    if !shared.descriptors.try_acquire_n(TCP_DESCRIPTORS) {
        shared.limits.release();
        return false;
    }
    if let Some(l) = &ctx.limits
        && !l.try_acquire()
    {
        shared.limits.release();
        shared.descriptors.release_n(TCP_DESCRIPTORS);
        return false;
    }
    true
}

/// Closes a refused client's connection with a reset rather than a FIN: it was never served.
fn reset(stream: &std::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Hands an accepted client whose slots are taken to the worker that should serve it.
fn dispatch(
    id: usize,
    shared: &Arc<Shared>,
    ctx: &Arc<AcceptCtx>,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tracker: &TaskTracker,
) {
    let target = pick_worker(id, shared);
    let Some(peer_state) = shared.peers.get(target) else {
        release_tcp_slots(shared, ctx);
        return;
    };
    // Counted on the serving worker now, before it even sees the connection, so
    // the next accept (here or on another worker) already weighs it.
    peer_state.load.fetch_add(1, Ordering::Relaxed);
    if target == id {
        serve_here(id, shared, ctx.clone(), stream, peer, tracker);
    } else if peer_state.tx.send(WorkerCmd::Adopt(ctx.clone(), stream, peer)).is_ok() {
        ctx.stats.handoffs.fetch_add(1, Ordering::Relaxed);
    } else {
        peer_state.load.fetch_sub(1, Ordering::Relaxed);
        release_tcp_slots(shared, ctx);
    }
}

/// Watches a listening socket with this worker's reactor.
// `with_interest` is deprecated because an arbitrary `T` could close or swap its descriptor
// while registered (the safe replacement, `register_with_interest`, is an `unsafe fn`, and this
// workspace denies unsafe code). A `std::net::TcpListener` owns its descriptor for its whole
// life, which is the case the constructor is sound for.
#[allow(deprecated)]
pub(crate) fn register_listener(
    l: std::net::TcpListener,
) -> std::io::Result<AsyncFd<std::net::TcpListener>> {
    AsyncFd::with_interest(l, Interest::READABLE)
}

/// Accepts one connection as a plain non-blocking socket that no runtime watches yet: the
/// worker that serves it registers it once. (`tokio::net::TcpListener` registers every
/// accepted socket with the accepting worker, so a hand-off paid a registration here and a
/// deregistration to move it: two `epoll_ctl` per moved connection.)
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{SocketFlags, acceptfrom_with};
    loop {
        let mut ready = listener.readable().await?;
        let r = ready.try_io(|l| {
            let (fd, addr) =
                acceptfrom_with(l.get_ref(), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
            let peer = addr.and_then(|a| SocketAddr::try_from(a).ok()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "accepted without a peer address",
                )
            })?;
            Ok((std::net::TcpStream::from(fd), peer))
        });
        if let Ok(r) = r {
            return r;
        }
    }
}

/// The worker that should serve a new connection accepted by worker `me`: `me`, unless it
/// carries at least two connections more than the least loaded worker. `SO_REUSEPORT`
/// spreads connections by hash, not by load; moving a connection once, at accept, evens the
/// workers out (HAProxy balances its threads the same way). It then lives on one worker: no
/// byte crosses threads.
fn pick_worker(me: usize, shared: &Shared) -> usize {
    let Some(mine) = shared.peers.get(me).map(|p| p.load.load(Ordering::Relaxed)) else {
        return me;
    };
    let least = shared
        .peers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(i, p)| (p.load.load(Ordering::Relaxed), i))
        .min();
    match least {
        Some((load, i)) if mine >= load + 2 => i,
        _ => me,
    }
}

/// Takes `n` units of `limits`, waiting for them to free; `Err` when the worker is stopping.
async fn acquire(limits: &Limits, n: usize, stop: &CancellationToken) -> Result<(), ()> {
    loop {
        if limits.try_acquire_n(n) {
            return Ok(());
        }
        wait_below(limits, n, stop).await?;
    }
}

/// Waits until `limits` has room for `n`; `Err` when the worker is stopping.
async fn wait_below(limits: &Limits, n: usize, stop: &CancellationToken) -> Result<(), ()> {
    while limits.full_for(n) {
        let freed = limits.freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if !limits.full_for(n) {
            break;
        }
        tokio::select! {
            () = freed => {}
            () = stop.cancelled() => return Err(()),
            // Another worker may take the freed slot first; look again now and then.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(())
}
