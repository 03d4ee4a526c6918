//! Fan-out and hedged frontends (`mode = "fanout"` / `"hedge"`): each request goes to several
//! servers (all healthy ones, `servers` of them, or one more per hedge delay) and the first
//! acceptable answer is relayed; without one before the timeout the client gets `on_timeout`.
//! The rules (who is asked when, which answer wins, request order) are `fulcrum-core::fanout`;
//! this file sends, receives and sleeps.
//!
//! UDP: one datagram is one request. Each request runs in its own task on the worker, with a
//! fresh connected upstream socket per server asked, so an answer can only ever belong to the
//! request whose socket it arrived on (a pooled socket could still receive a late answer to
//! its previous request). At most [`UDP_IN_FLIGHT`] requests per worker; beyond, requests are
//! dropped and counted.
//!
//! TCP: one line is one request, many per connection, pipelined. Requests of one client
//! connection run concurrently in the connection's task; answers are written one line per
//! request in request order (a [`Reorder`] buffer), and at most [`PIPELINE_DEPTH`] requests
//! may be unanswered before the client stops being read.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use fulcrum_config::Mode;
use fulcrum_core::balance::{LoadView, Metric, PickInput, Tried, hash_ip};
use fulcrum_core::fanout::{Race, Reorder, Step, acceptable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::engine::{AcceptCtx, Shared};
use crate::listener::is_resource_error;
use crate::ratelog::RateLimit;
use crate::state::{PoolState, PoolView, ServerStats};
use crate::stats::FrontendStats;

/// UDP requests in flight per worker; further ones are dropped (and counted) until some end.
/// Each holds one socket per server asked, so this also bounds the descriptors a worker uses.
const UDP_IN_FLIGHT: usize = 4096;
/// TCP requests of one client connection read and not yet answered. At the limit the client
/// is not read until answers drain: a client cannot queue unbounded work.
const PIPELINE_DEPTH: usize = 64;
/// Longest request or answer line; a client sending more without a newline is closed, a
/// server doing so loses its connection.
const MAX_LINE: usize = 64 * 1024;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

static NO_SERVER_LOG: RateLimit = RateLimit::new(1_000);
static UPSTREAM_LOG: RateLimit = RateLimit::new(1_000);
static DROP_LOG: RateLimit = RateLimit::new(1_000);
static CLIENT_LOG: RateLimit = RateLimit::new(1_000);

thread_local! {
    /// Receive buffer for upstream answers, one per worker thread: a request waiting for its
    /// answers holds no buffer (4,096 waiting requests would otherwise hold 256 MiB).
    static DATAGRAM: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// The frontend's `[fanout]` settings in the form the data path uses.
struct Settings {
    timeout: Duration,
    on_timeout: Option<Box<[u8]>>,
    reject: Option<Box<[u8]>>,
    servers: Option<usize>,
    /// `Some(delay)` in hedge mode.
    hedge: Option<Duration>,
}

impl Settings {
    fn of(mode: &Mode) -> Option<Settings> {
        let (f, hedge) = match mode {
            Mode::Fanout(f) => (f, None),
            Mode::Hedge(f) => (f, Some(f.delay)),
            Mode::Proxy => return None,
        };
        Some(Settings {
            timeout: f.timeout,
            on_timeout: f.on_timeout.as_ref().map(|s| s.as_bytes().into()),
            reject: f.reject_prefix.as_ref().filter(|p| !p.is_empty()).map(|s| s.as_bytes().into()),
            servers: f.servers,
            hedge,
        })
    }

    fn race(&self) -> Race {
        match self.hedge {
            // Hedging asks two servers in all unless `servers` says otherwise.
            Some(delay) => Race::hedged(self.timeout, delay, self.servers.unwrap_or(2)),
            None => Race::fanout(self.timeout),
        }
    }

    /// How many servers one `Step::Ask` goes to; `None` = every eligible one.
    fn per_ask(&self) -> Option<usize> {
        if self.hedge.is_some() { Some(1) } else { self.servers }
    }

    fn acceptable(&self, answer: &[u8]) -> bool {
        acceptable(answer, self.reject.as_deref())
    }
}

/// The pool minus the servers this request already asked, so that the balancer picks a
/// different server each time however many are wanted (`Tried` holds only a few).
struct Excluding<'a> {
    view: &'a PoolView<'a>,
    asked: &'a [usize],
}

impl LoadView for Excluding<'_> {
    fn len(&self) -> usize {
        self.view.len()
    }
    fn eligible(&self, i: usize) -> bool {
        !self.asked.contains(&i) && self.view.eligible(i)
    }
    fn active(&self, i: usize) -> u64 {
        self.view.active(i)
    }
    fn metric(&self, i: usize, metric: Metric) -> u64 {
        self.view.metric(i, metric)
    }
}

/// Adds up to `want` servers (`None`: every eligible one) not yet in `asked` to `asked`;
/// returns how many. Passive ejection is ignored only when nothing else is left (panic mode,
/// as for proxied connections). Slow start is not applied: a fan-out asks everyone anyway.
fn choose(pool: &PoolState, hash: u64, want: Option<usize>, asked: &mut Vec<usize>) -> usize {
    let before = asked.len();
    let now = now_ms();
    for panic in [false, true] {
        let view = PoolView {
            servers: &pool.servers,
            now_ms: now,
            panic,
            report_ttl_ms: pool.report_ttl_ms,
        };
        match want {
            None => {
                for (i, s) in pool.servers.iter().enumerate() {
                    if s.weight > 0 && view.eligible(i) && !asked.contains(&i) {
                        asked.push(i);
                    }
                }
            }
            Some(n) => {
                while asked.len() - before < n {
                    let input = PickInput { hash, rand: fastrand::u64(..) };
                    let ex = Excluding { view: &view, asked: asked.as_slice() };
                    let Some(i) = pool.balancer.pick(&input, &ex, &Tried::new()) else { break };
                    asked.push(i);
                }
            }
        }
        if asked.len() > before {
            break;
        }
    }
    asked.len() - before
}

fn no_server(stats: &FrontendStats, frontend: &str, pool: &PoolState) {
    stats.no_server.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = NO_SERVER_LOG.allow(now_ms()) {
        tracing::warn!(
            frontend, pool = %pool.name, skipped,
            "no server available for a fan-out request: it will time out"
        );
    }
}

/// Records a failed exchange with server `index` (maybe ejecting it) and logs it, rate-limited.
fn upstream_failed(pool: &PoolState, index: usize, err: &io::Error, stats: &FrontendStats) {
    stats.fanout_upstream_errors.fetch_add(1, Ordering::Relaxed);
    let Some(server) = pool.servers.get(index) else { return };
    // Running out of local descriptors or ports is not the server's fault.
    let local = is_resource_error(err) || err.raw_os_error() == Some(99);
    let now = now_ms();
    let ejected = !local && server.stats.on_connect_failure(&pool.eject, pool.may_eject(now), now);
    let allowed = UPSTREAM_LOG.allow(now);
    if ejected || allowed.is_some() {
        tracing::warn!(
            pool = %pool.name, server = %server.key, error = %err, ejected,
            skipped = allowed.unwrap_or(0), "fan-out request to server failed"
        );
    }
}

/// One request outstanding on a server: counted in the server's `active` (so that
/// least-connections compares requests in flight) until dropped, however the request ends.
struct Outstanding(Arc<ServerStats>);

impl Outstanding {
    fn new(stats: &Arc<ServerStats>) -> Outstanding {
        stats.active.fetch_add(1, Ordering::Relaxed);
        stats.on_assigned();
        Outstanding(stats.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn is_over(step: Step) -> bool {
    matches!(step, Step::Relay | Step::TimedOut | Step::Over)
}

// ---------------------------------------------------------------------------------------
// UDP

/// Serves one worker's socket of a UDP fan-out or hedge frontend until `stop`, then lets the
/// requests already taken finish (each is bounded by the timeout).
pub async fn serve_udp(
    shared: Arc<Shared>,
    ctx: Arc<AcceptCtx>,
    sock: UdpSocket,
    stop: CancellationToken,
) {
    let Some(settings) = Settings::of(&ctx.frontend.mode) else {
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
}

async fn udp_request(job: UdpJob) {
    let UdpJob { pool, settings, ctx, client, req, peer } = job;
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
                    match udp_send(server.addr, &req).await {
                        Ok(sock) => {
                            server.stats.bytes_in.fetch_add(req.len() as u64, Ordering::Relaxed);
                            let out = Outstanding::new(&server.stats);
                            open.push(UdpAsked { sock, index: i, sent: Instant::now(), _out: out });
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

// ---------------------------------------------------------------------------------------
// TCP
//
// Upstream connections: each client connection keeps one connection per server it has asked
// (opened on first use), writes request lines to it and reads answer lines back in the same
// order, matching answers to requests first-in first-out. Opening a connection per request
// and server would cost a handshake per answer and leave a TIME_WAIT socket behind each one,
// which runs out of local ports at a few hundred requests a second per server. FIFO matching
// relies on the server answering every line, in order; a server that skips one would shift
// every later answer onto the wrong request, so when the oldest request on a connection has
// waited a whole timeout (its request is over anyway), the connection is closed and the
// next request opens a fresh one. A reset or close with requests outstanding fails them.

/// A request line for one server's connection.
struct UpJob {
    seq: u64,
    line: Arc<[u8]>,
}

/// What a server's connection reports for request `seq`: its answer line (without the
/// newline), or `None` when the request failed there.
struct UpEvent {
    seq: u64,
    answer: Option<Vec<u8>>,
}

/// The task holding one server's connection for one client connection; stopped with it.
struct UpHandle {
    jobs: mpsc::UnboundedSender<UpJob>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UpHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request waiting for its answers.
struct Pending {
    race: Race,
    line: Arc<[u8]>,
    start: Instant,
    asked: Vec<usize>,
    /// The wake-up already in the timer heap (since `start`), so waits are not pushed twice.
    armed: Option<Duration>,
}

/// The requests of one client connection.
struct Session {
    pool: Arc<PoolState>,
    settings: Settings,
    hash: u64,
    ctx_stats: Arc<FrontendStats>,
    name: Arc<str>,
    reqs: HashMap<u64, Pending>,
    order: Reorder<Vec<u8>>,
    /// Wake-ups (hedge times and deadlines) by request; stale ones are harmless.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// By server index in the pool.
    ups: Vec<Option<UpHandle>>,
    events: mpsc::UnboundedSender<UpEvent>,
}

impl Session {
    /// Starts a request for `line` (with its newline).
    fn start(&mut self, line: Vec<u8>) {
        self.ctx_stats.fanout_requests.fetch_add(1, Ordering::Relaxed);
        let seq = self.order.issue();
        let mut p = Pending {
            race: self.settings.race(),
            line: line.into(),
            start: Instant::now(),
            asked: Vec::new(),
            armed: None,
        };
        let step = p.race.next(Duration::ZERO);
        self.advance(seq, p, step, None);
    }

    /// Carries request `seq` on from `step` until it waits (back into `reqs`) or ends (its
    /// answer into the reorder buffer).
    fn advance(&mut self, seq: u64, mut p: Pending, mut step: Step, mut winner: Option<Vec<u8>>) {
        loop {
            match step {
                Step::Ask => {
                    let from = p.asked.len();
                    let n = choose(&self.pool, self.hash, self.settings.per_ask(), &mut p.asked);
                    if n == 0 && from == 0 {
                        no_server(&self.ctx_stats, &self.name, &self.pool);
                    }
                    if n > 0 && from > 0 {
                        self.ctx_stats.fanout_hedges.fetch_add(1, Ordering::Relaxed);
                    }
                    let at = p.start.elapsed();
                    p.race.sent(n, at);
                    step = p.race.next(at);
                    for k in from..p.asked.len() {
                        let Some(&i) = p.asked.get(k) else { continue };
                        if !self.dispatch(i, seq, &p.line) && !is_over(step) {
                            step = p.race.on_failure(p.start.elapsed());
                        }
                    }
                }
                Step::Wait(until) => {
                    if p.armed != Some(until) {
                        self.timers.push(Reverse((p.start + until, seq)));
                        p.armed = Some(until);
                    }
                    self.reqs.insert(seq, p);
                    return;
                }
                Step::Relay => {
                    self.ctx_stats.fanout_answered.fetch_add(1, Ordering::Relaxed);
                    let mut line = winner.take().unwrap_or_default();
                    line.push(b'\n');
                    self.order.complete(seq, line);
                    return;
                }
                Step::TimedOut => {
                    self.ctx_stats.fanout_timeouts.fetch_add(1, Ordering::Relaxed);
                    // Without `on_timeout` the client gets nothing for this request.
                    let line = match &self.settings.on_timeout {
                        Some(t) => [&t[..], &b"\n"[..]].concat(),
                        None => Vec::new(),
                    };
                    self.order.complete(seq, line);
                    return;
                }
                Step::Over => {
                    // Not reached (a request leaves `reqs` when it ends), but its slot must
                    // never stay empty: that would stall every later answer.
                    self.order.complete(seq, Vec::new());
                    return;
                }
            }
        }
    }

    /// Hands request `seq` to server `index`'s connection task (started on first use).
    fn dispatch(&mut self, index: usize, seq: u64, line: &Arc<[u8]>) -> bool {
        let Some(slot) = self.ups.get_mut(index) else { return false };
        if slot.is_none() {
            let (jobs, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(upstream(
                self.pool.clone(),
                index,
                self.settings.timeout,
                self.ctx_stats.clone(),
                rx,
                self.events.clone(),
            ));
            *slot = Some(UpHandle { jobs, task });
        }
        if let Some(h) = slot
            && h.jobs.send(UpJob { seq, line: line.clone() }).is_ok()
        {
            return true;
        }
        // The task is gone (it only ends with the session, so this is not expected).
        *slot = None;
        false
    }

    fn on_event(&mut self, ev: UpEvent) {
        // A request no longer waiting: a loser's answer, discarded.
        let Some(mut p) = self.reqs.remove(&ev.seq) else { return };
        let at = p.start.elapsed();
        let mut winner = None;
        let step = match ev.answer {
            Some(line) => {
                let ok = self.settings.acceptable(&line);
                if !ok {
                    self.ctx_stats.fanout_rejected_answers.fetch_add(1, Ordering::Relaxed);
                }
                let s = p.race.on_answer(ok, at);
                if s == Step::Relay {
                    winner = Some(line);
                }
                s
            }
            None => p.race.on_failure(at),
        };
        self.advance(ev.seq, p, step, winner);
    }

    /// Runs the wake-ups due by `now`.
    fn on_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, seq))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(mut p) = self.reqs.remove(&seq) else { continue };
            if p.armed.is_some_and(|a| p.start + a == t) {
                p.armed = None;
            }
            let step = p.race.next(p.start.elapsed());
            self.advance(seq, p, step, None);
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }
}

/// Serves one client connection of a TCP fan-out or hedge frontend: newline-delimited
/// requests, answered one line each, in request order.
pub async fn serve_tcp(shared: Arc<Shared>, ctx: &AcceptCtx, s: TcpStream, peer: SocketAddr) {
    let Some(settings) = Settings::of(&ctx.frontend.mode) else { return };
    let started = Instant::now();
    let (pool, idle) = {
        let snap = shared.state.load();
        let Some(fe) = snap.frontend(&ctx.name) else { return };
        let Some(pool) = snap.pools.get(fe.pool) else { return };
        (pool.clone(), fe.idle_timeout)
    };
    // TCP_NODELAY is inherited from the listener (listener.rs).
    let stats = ctx.stats.clone();
    stats.connections_total.fetch_add(1, Ordering::Relaxed);
    stats.connections_active.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = s.into_split();
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let mut sess = Session {
        ups: (0..pool.servers.len()).map(|_| None).collect(),
        pool,
        settings,
        hash: hash_ip(peer.ip()),
        ctx_stats: stats.clone(),
        name: ctx.name.clone(),
        reqs: HashMap::new(),
        order: Reorder::new(),
        timers: BinaryHeap::new(),
        events,
    };
    let mut inbuf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut out: Vec<u8> = Vec::new();
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut eof = false;
    let outcome = loop {
        // Start the complete lines already read, as far as the pipeline allows.
        while sess.order.in_flight() < PIPELINE_DEPTH {
            if let Some(pos) = inbuf.iter().position(|&b| b == b'\n') {
                sess.start(inbuf.drain(..=pos).collect());
            } else if eof && !inbuf.is_empty() {
                // A last line without its newline is still a request.
                let mut line = std::mem::take(&mut inbuf);
                line.push(b'\n');
                sess.start(line);
            } else {
                break;
            }
        }
        // Write the answers that are next in order.
        out.clear();
        while let Some(a) = sess.order.pop() {
            out.extend_from_slice(&a);
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break "client-error";
            }
            bytes_out += out.len() as u64;
            stats.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        if eof && sess.order.in_flight() == 0 && inbuf.is_empty() {
            break "done";
        }
        let reading = !eof && sess.order.in_flight() < PIPELINE_DEPTH;
        let waiting = sess.order.in_flight() > 0;
        let wake = sess.next_wake();
        tokio::select! {
            ev = event_rx.recv() => {
                // Never `None`: the session holds a sender.
                if let Some(ev) = ev {
                    sess.on_event(ev);
                }
            }
            () = sleep_until_opt(wake) => sess.on_timers(Instant::now()),
            r = rd.read(&mut chunk), if reading => match r {
                Ok(0) => eof = true,
                Ok(n) => {
                    inbuf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    bytes_in += n as u64;
                    stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    if inbuf.len() > MAX_LINE && !inbuf.contains(&b'\n') {
                        // Answer what was asked, then close.
                        stats.fanout_dropped.fetch_add(1, Ordering::Relaxed);
                        if let Some(skipped) = CLIENT_LOG.allow(now_ms()) {
                            tracing::warn!(
                                frontend = %ctx.name, client = %peer, skipped, limit = MAX_LINE,
                                "fan-out request line too long: closing the client"
                            );
                        }
                        inbuf.clear();
                        eof = true;
                    }
                }
                Err(_) => break "client-error",
            },
            () = tokio::time::sleep(idle), if !waiting => break "idle",
        }
    };
    // Requests the client will never see the answer to.
    stats.fanout_dropped.fetch_add(sess.reqs.len() as u64, Ordering::Relaxed);
    drop(sess);
    let _ = wr.shutdown().await;
    stats.connections_active.fetch_sub(1, Ordering::Relaxed);
    if shared.access_log() {
        tracing::info!(
            target: "fulcrum::access",
            client = %peer, frontend = %ctx.name, server = "-", bytes_in, bytes_out,
            duration_ms = started.elapsed().as_millis() as u64, outcome
        );
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

type Conn = (OwnedReadHalf, OwnedWriteHalf);

/// Server `index`'s connection for one client connection: writes request lines, matches
/// answer lines to them in order, reconnects on the next request after a failure. Ends when
/// the session drops its sender (or aborts it).
async fn upstream(
    pool: Arc<PoolState>,
    index: usize,
    timeout: Duration,
    stats: Arc<FrontendStats>,
    mut jobs: mpsc::UnboundedReceiver<UpJob>,
    events: mpsc::UnboundedSender<UpEvent>,
) {
    if pool.servers.get(index).is_none() {
        return;
    }
    let mut up = Upstream {
        pool,
        index,
        stats,
        events,
        conn: None,
        waiting: VecDeque::new(),
        partial: Vec::new(),
    };
    let mut chunk = vec![0u8; 4096];
    loop {
        let overdue = up.waiting.front().map(|w| w.sent + timeout);
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => up.send(job).await,
                None => break,
            },
            r = read_some(&mut up.conn, &mut chunk) => up.received(r, &chunk),
            // The oldest request has waited a whole timeout: the server may have skipped it.
            () = sleep_until_opt(overdue) => up.reset(),
        }
    }
}

/// A request written to a server's connection and not answered yet.
struct Written {
    seq: u64,
    sent: Instant,
    _out: Outstanding,
}

/// The state of one server's connection for one client connection.
struct Upstream {
    pool: Arc<PoolState>,
    index: usize,
    stats: Arc<FrontendStats>,
    events: mpsc::UnboundedSender<UpEvent>,
    conn: Option<Conn>,
    /// Oldest first: the next answer line belongs to the front one.
    waiting: VecDeque<Written>,
    /// The start of an answer line whose newline has not arrived yet.
    partial: Vec<u8>,
}

impl Upstream {
    /// Writes the request, connecting first if needed.
    async fn send(&mut self, job: UpJob) {
        if self.conn.is_none() {
            match connect(&self.pool, self.index).await {
                Ok(s) => self.conn = Some(s.into_split()),
                Err(e) => {
                    upstream_failed(&self.pool, self.index, &e, &self.stats);
                    self.fail(job.seq);
                    return;
                }
            }
        }
        let Some(server) = self.pool.servers.get(self.index) else { return };
        let Some((_, w)) = self.conn.as_mut() else { return };
        let out = Outstanding::new(&server.stats);
        match w.write_all(&job.line).await {
            Ok(()) => {
                server.stats.bytes_in.fetch_add(job.line.len() as u64, Ordering::Relaxed);
                self.waiting.push_back(Written { seq: job.seq, sent: Instant::now(), _out: out });
            }
            Err(e) => {
                upstream_failed(&self.pool, self.index, &e, &self.stats);
                self.fail(job.seq);
                self.reset();
            }
        }
    }

    /// Takes what a read returned: answer lines go to their requests in order.
    fn received(&mut self, r: io::Result<usize>, chunk: &[u8]) {
        let n = match r {
            Ok(n) if n > 0 => n,
            r => {
                // Closed or reset. With nothing outstanding it is only an idle close (the next
                // request reconnects); with requests outstanding it failed them.
                if !self.waiting.is_empty() {
                    let e = r.err().unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
                    });
                    upstream_failed(&self.pool, self.index, &e, &self.stats);
                }
                self.reset();
                return;
            }
        };
        if let Some(server) = self.pool.servers.get(self.index) {
            server.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.partial.extend_from_slice(chunk.get(..n).unwrap_or_default());
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.partial.drain(..=pos).collect();
            line.pop();
            let Some(w) = self.waiting.pop_front() else {
                // An answer to nothing: the stream is out of step.
                self.protocol_error("answer line nobody asked for");
                return;
            };
            let _ = self.events.send(UpEvent { seq: w.seq, answer: Some(line) });
        }
        if self.partial.len() > MAX_LINE {
            self.protocol_error("answer line too long");
        }
    }

    fn protocol_error(&mut self, what: &'static str) {
        let e = io::Error::new(io::ErrorKind::InvalidData, what);
        upstream_failed(&self.pool, self.index, &e, &self.stats);
        self.reset();
    }

    fn fail(&self, seq: u64) {
        let _ = self.events.send(UpEvent { seq, answer: None });
    }

    /// Fails every request outstanding on the connection and closes it.
    fn reset(&mut self) {
        for w in std::mem::take(&mut self.waiting) {
            self.fail(w.seq);
        }
        self.conn = None;
        self.partial.clear();
    }
}

async fn read_some(conn: &mut Option<Conn>, buf: &mut [u8]) -> io::Result<usize> {
    match conn {
        Some((r, _)) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Connects to server `index` within the pool's connect timeout.
async fn connect(pool: &PoolState, index: usize) -> io::Result<TcpStream> {
    let Some(server) = pool.servers.get(index) else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "server left the pool"));
    };
    let started = Instant::now();
    match tokio::time::timeout(pool.connect_timeout, crate::connect::connect(server.addr)).await {
        Ok(Ok(s)) => {
            server.stats.on_connect_success(started.elapsed());
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}
