//! UDP proxying with a session per client address (IP and port). Each worker reads its own
//! `SO_REUSEPORT` socket of the frontend (the kernel spreads clients over the workers by
//! their address, so a client's datagrams stay on one worker). The first datagram of a client
//! picks a server with the pool's balancer, exactly as a TCP connection would, and opens a
//! connected upstream socket to it; later datagrams go through that socket, and a task per
//! session sends the server's answers back to the client *from the frontend socket*, so the
//! client sees them come from the address it wrote to. A session ends after
//! `session_timeout` without a datagram either way (the table in `fulcrum_core::udp` decides
//! which), when its server refuses (ICMP port unreachable: the next datagram starts a new
//! session on a server picked again), or when the frontend stops.
//!
//! Nothing on this path waits for a slow party: the receive loop never blocks on a send (a
//! full upstream socket parks the datagram in the session's bounded queue, then drops it),
//! and every drop is counted by reason in [`FrontendStats`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fulcrum_core::acl::Rejection;
use fulcrum_core::balance::{Tried, hash_ip};
use fulcrum_core::udp::{Activity, SessionTable};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::context::{AcceptCtx, Shared};
use crate::ledger::{Ledger, Picked, release_udp_session};
use crate::ratelog::RateLimit;
use crate::state::{NoSlot, PoolState};
use crate::stats::FrontendStats;

/// Largest UDP payload (IPv6 jumbograms aside); a datagram is never cut short.
const MAX_DATAGRAM: usize = 65_536;
/// Client datagrams one session may park while its upstream socket's buffer is full; beyond
/// that they are dropped (and counted): a bounded queue never hides an overload.
const SESSION_QUEUE: usize = 64;
/// Bytes one session may park, and one worker across all its sessions: 64 parked jumbo
/// datagrams per session times thousands of sessions would be gigabytes.
const SESSION_PARKED_BYTES: usize = 256 * 1024;
const WORKER_PARKED_BYTES: usize = 16 * 1024 * 1024;
/// Datagrams read in one go before yielding, so one busy socket cannot starve the sessions
/// (and other frontends) of the worker. recvmmsg(2) would save a syscall per datagram, but no
/// safe wrapper exists in our dependencies (rustix has sendmmsg only) and `unsafe` is denied
/// workspace-wide; the try_recv_from loop already drains a readiness event in one go.
const BATCH: usize = 64;

static NO_SERVER_LOG: RateLimit = RateLimit::new(1_000);
static LIMIT_LOG: RateLimit = RateLimit::new(1_000);
static SOCKET_LOG: RateLimit = RateLimit::new(1_000);
static QUEUE_LOG: RateLimit = RateLimit::new(1_000);

thread_local! {
    /// The buffer session tasks read answers into, one per worker thread: an idle session
    /// holds no buffer. Borrowed only between two awaits (the runtime is single-threaded, so
    /// no other task can hold it meanwhile).
    static ANSWER_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// What the receive loop and a session's task share.
struct Flow {
    client: SocketAddr,
    /// Last answer from the server (process clock ms): traffic the table does not see.
    last_answer_ms: AtomicU64,
    /// Client datagrams parked in the queue: while any are, new ones queue behind them so the
    /// server sees the client's order.
    queued: AtomicUsize,
    /// The server refused (ICMP unreachable): the session is over.
    closed: AtomicBool,
    /// Payload bytes client → server and server → client, for the access log and counters.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Bytes of the parked datagrams, and the worker's total across its sessions: both bounded
    /// ([`SESSION_PARKED_BYTES`], [`WORKER_PARKED_BYTES`]).
    parked_bytes: AtomicUsize,
    worker_parked: Arc<AtomicUsize>,
}

impl Flow {
    /// Parks `n` bytes if both bounds allow it.
    fn park(&self, n: usize) -> bool {
        let fits = |total: &AtomicUsize, max: usize| {
            total
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    (b.saturating_add(n) <= max).then_some(b + n)
                })
                .is_ok()
        };
        if !fits(&self.worker_parked, WORKER_PARKED_BYTES) {
            return false;
        }
        if !fits(&self.parked_bytes, SESSION_PARKED_BYTES) {
            self.worker_parked.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn unpark(&self, n: usize) {
        self.parked_bytes.fetch_sub(n, Ordering::Relaxed);
        self.worker_parked.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Sessions per client address on this worker, bounded by the frontend's
/// `max_sessions_per_source` (split over the workers: the kernel spreads one address's ports
/// over all of them). Holds an entry only while the address has a session, so it never
/// outgrows the session table.
struct Sources {
    count: HashMap<IpAddr, u32>,
    cap: u32,
}

impl Sources {
    fn new(per_source: usize, workers: usize) -> Self {
        let cap = per_source.div_ceil(workers.max(1)).clamp(1, u32::MAX as usize) as u32;
        Self { count: HashMap::new(), cap }
    }

    /// Takes a session slot for `ip`; false when it holds its most already.
    fn take(&mut self, ip: IpAddr) -> bool {
        let n = self.count.entry(ip).or_insert(0);
        if *n >= self.cap {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&mut self, ip: IpAddr) {
        if let Some(n) = self.count.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.count.remove(&ip);
            }
        }
    }
}

/// One session as the receive loop keeps it. Dropping it ends the session: its task stops,
/// its counts and slots are given back, and one access-log line is written.
struct Session {
    flow: Arc<Flow>,
    upstream: Arc<UdpSocket>,
    queue: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
    /// `send_proxy = "v2"`: the PROXY header every datagram to the server starts with, built
    /// once per session (its addresses do not change).
    proxy_header: Option<Box<[u8]>>,
    /// The session's slots, its server and its access-log line (dropped after `drop` below).
    ledger: Ledger,
    /// The guard generation its client was last checked at (`guard::Guard::generation`).
    checked: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
        // Datagrams still parked die with the queue: their bytes go back to the worker.
        let left = self.flow.parked_bytes.swap(0, Ordering::Relaxed);
        self.flow.worker_parked.fetch_sub(left, Ordering::Relaxed);
        self.ledger.bytes_in = self.flow.bytes_in.load(Ordering::Relaxed);
        self.ledger.bytes_out = self.flow.bytes_out.load(Ordering::Relaxed);
    }
}

/// Serves one worker's socket of a UDP frontend until `stop`; every session of this worker
/// ends with it.
pub async fn serve(
    shared: Arc<Shared>,
    ctx: Arc<AcceptCtx>,
    sock: UdpSocket,
    stop: CancellationToken,
) {
    let sock = Arc::new(sock);
    let timeout_ms = u64::try_from(ctx.frontend.session_timeout.as_millis()).unwrap_or(u64::MAX);
    // Sweeps run at most this often: an idle session ends between `session_timeout` and
    // `session_timeout + tick` after its last datagram, and a worker with many sessions
    // wakes up at most 1/tick times a second for them.
    let tick_ms = (timeout_ms / 20).clamp(5, 1_000);
    let mut table: SessionTable<Session> = SessionTable::new(ctx.frontend.max_sessions, timeout_ms);
    let mut sources = Sources::new(ctx.frontend.max_sessions_per_source, shared.workers());
    let parked = Arc::new(AtomicUsize::new(0));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut last_sweep_ms = now_ms();
    // One timer for the sweeps, moved only when the next due time changes (traffic to a
    // session does not change it), not one per batch of datagrams.
    let sweep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sweep);
    let mut armed: Option<u64> = None;
    // Registered once and kept: a block with `cut` ends the sessions of its addresses at once.
    let mut cut = std::pin::pin!(shared.guard.udp_cut().notified());
    cut.as_mut().enable();
    loop {
        let due = table.next_check_ms().map(|d| d.max(last_sweep_ms.saturating_add(tick_ms)));
        if due != armed {
            if let Some(at) = due {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                sweep.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            armed = due;
        }
        tokio::select! {
            r = sock.readable() => {
                if let Err(e) = r {
                    tracing::error!(frontend = %ctx.name, error = %e, "udp socket failed: frontend stops on this worker");
                    break;
                }
                let mut w = Worker { table: &mut table, sources: &mut sources, parked: &parked };
                let full = receive_batch(&shared, &ctx, &sock, &mut w, &mut buf);
                if full {
                    tokio::task::yield_now().await;
                }
            }
            () = &mut sweep, if armed.is_some() => {
                let now = now_ms();
                last_sweep_ms = now;
                armed = None;
                let expired = table.expire_with(now, |s| {
                    if s.flow.closed.load(Ordering::Relaxed) {
                        Activity::Ended
                    } else {
                        Activity::Seen(s.flow.last_answer_ms.load(Ordering::Relaxed))
                    }
                });
                for (_, s) in expired {
                    let refused = s.value.flow.closed.load(Ordering::Relaxed);
                    end(s, if refused { "server-error" } else { "idle-timeout" }, &mut sources);
                }
            }
            () = &mut cut => {
                cut.set(shared.guard.udp_cut().notified());
                cut.as_mut().enable();
                for (_, s) in table.remove_where(|c| shared.guard.cuts(c.ip())) {
                    end(s, Rejection::Blocked.name(), &mut sources);
                }
            }
            () = stop.cancelled() => break,
        }
    }
    for (_, s) in table.drain() {
        end(s, "stopped", &mut sources);
    }
}

/// What one worker's receive loop owns for a frontend.
struct Worker<'a> {
    table: &'a mut SessionTable<Session>,
    sources: &'a mut Sources,
    parked: &'a Arc<AtomicUsize>,
}

/// Ends a session, with `outcome` for its log line: the one place a session ends.
fn end(mut s: Entry, outcome: &'static str, sources: &mut Sources) {
    sources.give_back(s.value.flow.client.ip());
    s.value.ledger.outcome = outcome;
    drop(s);
}

type Entry = fulcrum_core::udp::Session<Session>;

/// Reads up to [`BATCH`] datagrams without waiting; true when the batch was full (more may
/// be waiting).
fn receive_batch(
    shared: &Arc<Shared>,
    ctx: &Arc<AcceptCtx>,
    sock: &Arc<UdpSocket>,
    w: &mut Worker<'_>,
    buf: &mut [u8],
) -> bool {
    let now = now_ms();
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    let mut full = true;
    for _ in 0..BATCH {
        match sock.try_recv_from(buf) {
            Ok((n, client)) => {
                datagrams += 1;
                bytes += n as u64;
                on_datagram(shared, ctx, sock, w, client, buf.get(..n).unwrap_or_default(), now);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                full = false;
                break;
            }
            // An unconnected socket reports no ICMP errors; anything else is transient (and
            // the batch bound keeps a persistent one from spinning).
            Err(_) => {}
        }
    }
    // Counted once per batch: these counters are shared by every worker.
    ctx.stats.udp_datagrams_in.fetch_add(datagrams, Ordering::Relaxed);
    ctx.stats.udp_bytes_in.fetch_add(bytes, Ordering::Relaxed);
    full
}

fn on_datagram(
    shared: &Arc<Shared>,
    ctx: &Arc<AcceptCtx>,
    sock: &Arc<UdpSocket>,
    w: &mut Worker<'_>,
    client: SocketAddr,
    data: &[u8],
    now: u64,
) {
    // Every datagram is admitted by address: a session's client is checked again only when a
    // verdict may have changed since (one atomic load on the common path).
    let generation = shared.guard.generation();
    let (live, checked) = match w.table.touch(&client, now) {
        Some(s) => (!s.value.flow.closed.load(Ordering::Relaxed), s.value.checked == generation),
        None => (false, false),
    };
    if !checked && let Err(why) = crate::guard::admit_datagram(shared, ctx, client) {
        if let Some(old) = w.table.remove(&client) {
            end(old, why.name(), w.sources);
        }
        return;
    }
    if !live {
        // A session whose server refused ends here; this datagram starts the next one.
        if let Some(old) = w.table.remove(&client) {
            end(old, "server-error", w.sources);
        }
        if !w.sources.take(client.ip()) {
            ctx.stats.udp_drops_source_limit.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = LIMIT_LOG.allow(now_ms()) {
                tracing::warn!(
                    frontend = %ctx.name, client = %client, skipped,
                    max_sessions_per_source = ctx.frontend.max_sessions_per_source,
                    "udp sessions per source address reached: datagram dropped"
                );
            }
            return;
        }
        let Some((server, session)) = open(shared, ctx, sock, client, w.parked) else {
            w.sources.give_back(client.ip());
            return;
        };
        if let Err((_, s)) = w.table.insert(client, server, session, now) {
            // The shared count let it in, so the table cannot be full; be safe anyway.
            w.sources.give_back(client.ip());
            drop(s);
            ctx.stats.udp_drops_session_limit.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let Some(s) = w.table.get_mut(&client) else { return };
    s.value.checked = generation;
    if let Some(rate) = &ctx.frontend.limits.datagram_rate_per_client
        && let Some(c) = s.value.ledger.client_entry()
        && !c.datagram(rate)
    {
        crate::guard::refused(shared, ctx, client, fulcrum_core::acl::Rejection::DatagramRate);
        return;
    }
    if forward(&ctx.stats, &s.value, data) == Forwarded::Refused
        && let Some(s) = w.table.remove(&client)
    {
        end(s, "server-error", w.sources);
    }
}

#[derive(PartialEq, Eq)]
enum Forwarded {
    Done,
    Refused,
}

/// Sends one client datagram to the session's server, or parks it when the socket is full.
fn forward(stats: &FrontendStats, s: &Session, data: &[u8]) -> Forwarded {
    if s.flow.queued.load(Ordering::Relaxed) == 0 {
        let sent = match &s.proxy_header {
            None => s.upstream.try_send(data),
            // Header and datagram leave in one sendmsg from two buffers: no copy.
            Some(h) => s.upstream.try_io(tokio::io::Interest::WRITABLE, || {
                let parts = [io::IoSlice::new(h), io::IoSlice::new(data)];
                socket2::SockRef::from(&*s.upstream).send_vectored(&parts)
            }),
        };
        match sent {
            Ok(_) => {
                s.flow.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                return Forwarded::Done;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                stats.udp_drops_send_error.fetch_add(1, Ordering::Relaxed);
                return if gone(&e) { Forwarded::Refused } else { Forwarded::Done };
            }
        }
    }
    // The only copy on this path, and only while the upstream socket is full.
    // A parked datagram carries its header: its length is what is parked and unparked.
    let len = data.len() + s.proxy_header.as_ref().map_or(0, |h| h.len());
    let queued = s.flow.park(len) && {
        let copy = match &s.proxy_header {
            None => data.to_vec(),
            Some(h) => [&h[..], data].concat(),
        };
        let sent = s.queue.try_send(copy).is_ok();
        if !sent {
            s.flow.unpark(len);
        }
        sent
    };
    if queued {
        s.flow.queued.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.udp_drops_queue_full.fetch_add(1, Ordering::Relaxed);
        if let Some(skipped) = QUEUE_LOG.allow(now_ms()) {
            tracing::warn!(
                frontend = %s.ledger.ctx().name, client = %s.flow.client,
                server = %s.ledger.server().map_or("-", |p| p.key.as_str()),
                skipped, "udp datagram dropped: the session's queue to its server is full"
            );
        }
    }
    Forwarded::Done
}

/// Errors of a connected UDP socket that mean the server is not there (an ICMP error of an
/// earlier datagram): the session ends, and the client's next datagram picks again.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Starts a session for `client`: takes a slot, picks a server, opens the upstream socket and
/// spawns the answer task. `None` when the datagram must be dropped (counted and logged here).
fn open(
    shared: &Arc<Shared>,
    ctx: &Arc<AcceptCtx>,
    sock: &Arc<UdpSocket>,
    client: SocketAddr,
    worker_parked: &Arc<AtomicUsize>,
) -> Option<(usize, Session)> {
    let stats = &ctx.stats;
    // `None` only for a moment during a reload that removes this frontend.
    let pool = {
        let snap = shared.state.load();
        snap.frontend(&ctx.name).and_then(|fe| snap.pools.get(fe.pool)).cloned()
    };
    // The slot first: a refused client must not move the balancer's rotation.
    if let Err(which) = acquire(shared, ctx) {
        let counter = if which == "descriptors" {
            &stats.udp_drops_descriptors
        } else {
            &stats.udp_drops_session_limit
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(skipped) = LIMIT_LOG.allow(now_ms()) {
            tracing::warn!(
                frontend = %ctx.name, client = %client, limit = which,
                max_sessions = ctx.frontend.max_sessions, skipped,
                "udp session limit reached: datagram dropped"
            );
        }
        return None;
    }
    // The server's slot is taken with the pick (`active` counts the session from here), so a
    // cap holds across workers; a session never waits in the pool's queue (a datagram cannot).
    let picked = pool.as_ref().and_then(|p| {
        let i = match take_slot(p, client) {
            Ok(i) => i,
            Err(NoSlot::Full) => {
                p.queue.refused_servers_full.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(NoSlot::NoServer) => return None,
        };
        Some((p, i, p.servers.get(i)?))
    });
    let Some((pool, index, server)) = picked else {
        release_udp_session(shared, ctx);
        stats.udp_drops_no_server.fetch_add(1, Ordering::Relaxed);
        stats.no_server.fetch_add(1, Ordering::Relaxed);
        if let Some(skipped) = NO_SERVER_LOG.allow(now_ms()) {
            let pool = pool.as_ref().map_or("-", |p| p.name.as_str());
            tracing::warn!(
                frontend = %ctx.name, pool, client = %client, skipped,
                "no server available: udp datagram dropped"
            );
        }
        return None;
    };
    let upstream = match upstream_socket(server.addr) {
        Ok(u) => Arc::new(u),
        Err(e) => {
            release_udp_session(shared, ctx);
            server.stats.active.fetch_sub(1, Ordering::Relaxed);
            pool.slot_freed();
            stats.udp_drops_send_error.fetch_add(1, Ordering::Relaxed);
            if let Some(skipped) = SOCKET_LOG.allow(now_ms()) {
                tracing::warn!(
                    frontend = %ctx.name, server = %server.key, error = %e, skipped,
                    "cannot open an upstream udp socket: datagram dropped"
                );
            }
            return None;
        }
    };
    // From here the ledger owns the session slot and the server's count.
    let mut ledger = Ledger::udp_session(shared.clone(), ctx.clone(), client);
    // Sessions are never refused here (max_sessions_per_source bounds them): only counted.
    let _ = ledger.admit_client();
    server.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    server.stats.on_assigned();
    stats.udp_sessions_total.fetch_add(1, Ordering::Relaxed);
    let flow = Arc::new(Flow {
        client,
        last_answer_ms: AtomicU64::new(0),
        queued: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        parked_bytes: AtomicUsize::new(0),
        worker_parked: worker_parked.clone(),
    });
    let proxy_header = pool.send_proxy.map(|_| {
        // The frontend socket's own address: with a wildcard bind, the wildcard (the
        // datagram's real destination would need IP_PKTINFO on every receive).
        let local = sock.local_addr().unwrap_or(client);
        crate::proxyproto::datagram_header(client, local).into_boxed_slice()
    });
    let (queue, parked) = mpsc::channel(SESSION_QUEUE);
    let task = tokio::spawn(answers(
        sock.clone(),
        upstream.clone(),
        flow.clone(),
        parked,
        ctx.stats.clone(),
        proxy_header.as_ref().map_or(0, |h| h.len()),
    ));
    Some((
        index,
        Session {
            flow,
            upstream,
            queue,
            task,
            proxy_header,
            ledger: {
                ledger.hold(Picked { pool: pool.clone(), index });
                ledger
            },
            // Set by the caller to the generation it checked the client at.
            checked: 0,
        },
    ))
}

/// Takes a session slot: the frontend's `max_sessions` (counted over all workers) and one
/// descriptor of the process's budget (the session's upstream socket). UDP sessions never
/// take TCP connection slots: a flood of sources must not stop TCP from accepting. `Err`
/// names the limit that was reached.
fn acquire(shared: &Shared, ctx: &AcceptCtx) -> Result<(), &'static str> {
    let max = ctx.frontend.max_sessions as u64;
    let active = &ctx.stats.udp_sessions_active;
    if active
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| (a < max).then_some(a + 1))
        .is_err()
    {
        return Err("max_sessions");
    }
    if !shared.descriptors.try_acquire() {
        active.fetch_sub(1, Ordering::Relaxed);
        return Err("descriptors");
    }
    Ok(())
}

/// The server for a new session, with its slot taken: the pool's admission step, as for a
/// TCP connection, without the connect (UDP has none to fail). The client IP's hash is the
/// input, so hashing algorithms keep a client on its server across sessions.
fn take_slot(pool: &PoolState, client: SocketAddr) -> Result<usize, NoSlot> {
    pool.take_slot(hash_ip(client.ip()), &mut Tried::new())
}

/// A socket connected to `server`: the kernel then delivers only that server's datagrams to
/// it and reports ICMP errors (server gone) on it.
fn upstream_socket(server: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(local)?;
    s.connect(server)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// The session's task: sends the server's answers to the client from the frontend socket, and
/// flushes parked client datagrams as the upstream socket takes them. Ends when the server
/// refuses (marking the flow closed) or when the session is dropped (aborted).
async fn answers(
    front: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    flow: Arc<Flow>,
    mut parked: mpsc::Receiver<Vec<u8>>,
    stats: Arc<FrontendStats>,
    header_len: usize,
) {
    loop {
        let alive = tokio::select! {
            // An ICMP error (server gone) shows as an error condition on the connected socket
            // without making it readable: asked for explicitly, so the session ends at once
            // and the client's next datagram is not sent into the void first.
            r = up.ready(Interest::READABLE | Interest::ERROR) => match r {
                Ok(ready) => {
                    let alive = !ready.is_readable() || relay_answers(&front, &up, &flow, &stats).await;
                    if ready.is_error() {
                        // Clears the error; the session ends whatever it was, so a condition
                        // that does not clear cannot make this loop spin.
                        let _ = up.take_error();
                        false
                    } else {
                        alive
                    }
                }
                Err(_) => false,
            },
            d = parked.recv() => match d {
                Some(d) => {
                    // Awaiting here holds up only this session's answers: the datagram is
                    // parked because the socket is full, and it frees within moments.
                    let r = up.send(&d).await;
                    flow.queued.fetch_sub(1, Ordering::Relaxed);
                    flow.unpark(d.len());
                    match r {
                        Ok(n) => {
                            let n = n.saturating_sub(header_len);
                            flow.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                            true
                        }
                        Err(e) => {
                            stats.udp_drops_send_error.fetch_add(1, Ordering::Relaxed);
                            !gone(&e)
                        }
                    }
                }
                None => false,
            },
        };
        if !alive {
            break;
        }
    }
    flow.closed.store(true, Ordering::Relaxed);
}

enum Step {
    Sent(usize),
    /// The frontend socket is full: this copy waits for it.
    Wait(Vec<u8>),
    SendFailed,
    Drained,
    Gone,
}

/// Sends every answer waiting on the upstream socket (up to a batch); false when the server
/// is gone.
async fn relay_answers(
    front: &UdpSocket,
    up: &UdpSocket,
    flow: &Flow,
    stats: &FrontendStats,
) -> bool {
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    let mut alive = true;
    for _ in 0..BATCH {
        let step = ANSWER_BUF.with_borrow_mut(|buf| match up.try_recv(buf) {
            Ok(n) => {
                let answer = buf.get(..n).unwrap_or_default();
                match front.try_send_to(answer, flow.client) {
                    Ok(m) => Step::Sent(m),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait(answer.to_vec()),
                    Err(_) => Step::SendFailed,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Drained,
            // An ICMP error of an earlier datagram (see `gone`), or anything else: a session
            // that cannot read its answers is of no use to the client, so it ends and the
            // client's next datagram picks again.
            Err(_) => Step::Gone,
        });
        match step {
            Step::Sent(m) => {
                datagrams += 1;
                bytes += m as u64;
            }
            Step::Wait(answer) => match front.send_to(&answer, flow.client).await {
                Ok(m) => {
                    datagrams += 1;
                    bytes += m as u64;
                }
                Err(_) => {
                    stats.udp_drops_send_error.fetch_add(1, Ordering::Relaxed);
                }
            },
            Step::SendFailed => {
                stats.udp_drops_send_error.fetch_add(1, Ordering::Relaxed);
            }
            Step::Drained => break,
            Step::Gone => {
                alive = false;
                break;
            }
        }
    }
    if datagrams > 0 {
        flow.last_answer_ms.store(now_ms(), Ordering::Relaxed);
        flow.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        stats.udp_datagrams_out.fetch_add(datagrams, Ordering::Relaxed);
        stats.udp_bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
    alive
}
