//! TCP fan-out and hedge, the client side: one line is one request, many per connection,
//! pipelined (with `framing = "message"`: one read is one request, and the client is not read
//! again until it is answered; the rule is `fulcrum-core::framing`). Requests of one client connection run concurrently in the connection's task;
//! every request gets exactly one answer line (the winner's, `on_timeout`, or an empty line),
//! written in request order (a [`Reorder`] buffer). At most [`PIPELINE_DEPTH`] requests may
//! be unanswered before the client stops being read, and at most [`OUT_LIMIT`] bytes of
//! answers may wait for the client; a client that takes none of them for `send_timeout` is
//! closed. Server connections are `upstream.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fulcrum_config::AnswerMatch;
use fulcrum_core::balance::hash_ip;
use fulcrum_core::fanout::{Race, Reorder, Step};
use fulcrum_core::framing::{Framing, is_quit, take_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::upstream::{self, Idle, PipeHandle, UpEvent};
use super::{CLIENT_LOG, MAX_LINE, PIPELINE_DEPTH, Settings, choose, is_over, no_server};
use crate::clock::now_ms;
use crate::context::Shared;
use crate::ledger::Ledger;
use crate::state::PoolState;
use crate::stats::FrontendStats;

/// Answer bytes waiting for the client beyond which the client is not read: a client that
/// does not read its answers cannot make the balancer hold more than this (plus the answers of
/// the requests already in flight).
const OUT_LIMIT: usize = 64 * 1024;

/// A request waiting for its answers.
struct Pending {
    race: Race,
    line: Arc<[u8]>,
    start: Instant,
    asked: Vec<usize>,
    /// The wake-up already in the timer heap (since `start`), so waits are not pushed twice.
    armed: Option<Duration>,
    /// One-request connections still working on this request, by server. Aborted (their
    /// connections closed, never reused) when the request ends.
    running: Vec<(usize, AbortHandle)>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        for (_, h) in &self.running {
            h.abort();
        }
    }
}

/// The requests of one client connection.
pub(super) struct Session {
    /// For the descriptor budget every upstream connection draws from.
    shared: Arc<Shared>,
    pool: Arc<PoolState>,
    settings: Settings,
    hash: u64,
    stats: Arc<FrontendStats>,
    name: Arc<str>,
    reqs: HashMap<u64, Pending>,
    order: Reorder<Vec<u8>>,
    /// Wake-ups (hedge times and deadlines) by request; stale ones are harmless.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Default matching: connections that answered their last request cleanly, by server.
    idle: Vec<Vec<Idle>>,
    /// `match = "first-word"`: the pipelined connection task of each server.
    pipes: Vec<Option<PipeHandle>>,
    events: mpsc::Sender<UpEvent>,
    framing: Framing,
}

impl Session {
    /// What ends an answer on its way to the client: a newline for lines, nothing for
    /// messages (an answer is relayed exactly as the server's one read gave it).
    fn frame(&self, mut answer: Vec<u8>) -> Vec<u8> {
        if self.framing == Framing::Line {
            answer.push(b'\n');
        }
        answer
    }

    /// Starts a request for `line` (what servers are sent: a line with its newline, or a
    /// message as it came).
    fn start(&mut self, line: Vec<u8>) {
        self.stats.fanout_requests.fetch_add(1, Ordering::Relaxed);
        let seq = self.order.issue();
        let mut p = Pending {
            race: self.settings.race(),
            line: line.into(),
            start: Instant::now(),
            asked: Vec::new(),
            armed: None,
            running: Vec::new(),
        };
        let step = p.race.next(Duration::ZERO);
        self.advance(seq, p, step, None);
    }

    /// Carries request `seq` on from `step` until it waits (back into `reqs`) or ends (its
    /// answer line into the reorder buffer; whatever still works on it is stopped).
    fn advance(&mut self, seq: u64, mut p: Pending, mut step: Step, mut winner: Option<Vec<u8>>) {
        loop {
            match step {
                Step::Ask => {
                    let from = p.asked.len();
                    let n = choose(&self.pool, self.hash, self.settings.per_ask(), &mut p.asked);
                    if n == 0 && from == 0 {
                        no_server(&self.stats, &self.name, &self.pool);
                    }
                    if n > 0 && from > 0 {
                        self.stats.fanout_hedges.fetch_add(1, Ordering::Relaxed);
                    }
                    let at = p.start.elapsed();
                    p.race.sent(n, at);
                    step = p.race.next(at);
                    for k in from..p.asked.len() {
                        let Some(&i) = p.asked.get(k) else { continue };
                        if !self.dispatch(i, seq, &mut p) && !is_over(step) {
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
                    self.stats.fanout_answered.fetch_add(1, Ordering::Relaxed);
                    let line = self.frame(winner.take().unwrap_or_default());
                    self.order.complete(seq, line);
                    return;
                }
                Step::TimedOut => {
                    self.stats.fanout_timeouts.fetch_add(1, Ordering::Relaxed);
                    // Every request gets one line: without `on_timeout` an empty one, so a
                    // client matching answers by position never shifts. A message client
                    // gets `on_timeout` as written, or nothing.
                    let text = self.settings.on_timeout.as_deref().unwrap_or_default().to_vec();
                    let line = self.frame(text);
                    self.order.complete(seq, line);
                    return;
                }
                Step::Over => {
                    // Not reached (a request leaves `reqs` when it ends), but its slot must
                    // never stay empty: that would stall every later answer.
                    let line = self.frame(Vec::new());
                    self.order.complete(seq, line);
                    return;
                }
            }
        }
    }

    /// Sends request `seq` to server `index`: on a connection of its own (default), or on the
    /// server's pipelined connection (`first-word`). False when it cannot be sent at all.
    fn dispatch(&mut self, index: usize, seq: u64, p: &mut Pending) -> bool {
        let deadline = p.start + self.settings.timeout;
        match self.settings.matching {
            AnswerMatch::OneAtATime => {
                let conn =
                    self.idle.get_mut(index).and_then(|v| upstream::take_idle(v, &self.stats));
                let job = upstream::Exchange {
                    framing: self.framing,
                    shared: self.shared.clone(),
                    pool: self.pool.clone(),
                    index,
                    seq,
                    line: p.line.clone(),
                    conn,
                    deadline,
                    stats: self.stats.clone(),
                    events: self.events.clone(),
                };
                let task = tokio::spawn(upstream::exchange(job));
                p.running.push((index, task.abort_handle()));
                true
            }
            AnswerMatch::FirstWord => {
                let Some(slot) = self.pipes.get_mut(index) else { return false };
                let job = upstream::PipeJob { seq, line: p.line.clone(), deadline };
                // A pipe task ends only when its jobs channel closes, which the session holds
                // open; a full channel means the server is far behind: a failure for it.
                let h = slot.get_or_insert_with(|| {
                    PipeHandle::start(
                        self.shared.clone(),
                        self.pool.clone(),
                        index,
                        self.settings.timeout,
                        self.stats.clone(),
                        self.events.clone(),
                    )
                });
                h.send(job)
            }
        }
    }

    fn on_event(&mut self, ev: UpEvent) {
        if let Some(conn) = ev.conn
            && let Some(idle) = self.idle.get_mut(ev.server)
            && idle.len() < PIPELINE_DEPTH
        {
            // Answered with exactly one line: free for the next request (also when its
            // request has ended meanwhile: the answer was its own).
            idle.push(conn);
        }
        // A request no longer waiting: a loser's answer, discarded.
        let Some(mut p) = self.reqs.remove(&ev.seq) else { return };
        p.running.retain(|(i, _)| *i != ev.server);
        let at = p.start.elapsed();
        let mut winner = None;
        let step = match ev.answer {
            Some(line) => {
                let ok = self.settings.acceptable(&line);
                if !ok {
                    self.stats.fanout_rejected_answers.fetch_add(1, Ordering::Relaxed);
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

/// Serves one client connection of a TCP fan-out or hedge frontend: requests framed by the
/// frontend's `framing` (lines by default, answered one line each, in request order; or one
/// message at a time), until the client closes or sends the frontend's `quit` word.
pub async fn serve_tcp(mut ledger: Ledger, s: TcpStream) {
    let (shared, ctx, peer) = (ledger.shared().clone(), ledger.ctx().clone(), ledger.client());
    let Some(settings) = Settings::of(&ctx.frontend.mode) else { return };
    let (pool, idle, send_timeout) = {
        let snap = shared.state.load();
        let Some(fe) = snap.frontend(&ctx.name) else { return };
        let Some(pool) = snap.pools.get(fe.pool) else { return };
        (pool.clone(), fe.idle_timeout, fe.send_timeout)
    };
    // TCP_NODELAY is inherited from the listener (listener.rs).
    let stats = ctx.stats.clone();
    let (mut rd, mut wr) = s.into_split();
    // Every sender sends at most one event per request in flight (or per late answer of a
    // pipelined connection, which waits for room): the session drains it in every state.
    let (events, mut event_rx) = mpsc::channel(2 * PIPELINE_DEPTH);
    let n = pool.servers.len();
    let mut sess = Session {
        shared: shared.clone(),
        idle: (0..n).map(|_| Vec::new()).collect(),
        pipes: (0..n).map(|_| None).collect(),
        pool,
        settings,
        hash: hash_ip(peer.ip()),
        stats: stats.clone(),
        name: ctx.name.clone(),
        reqs: HashMap::new(),
        order: Reorder::new(),
        timers: BinaryHeap::new(),
        events,
        framing: ctx.frontend.framing,
    };
    let framing = ctx.frontend.framing;
    let quit = ctx.frontend.quit.as_deref().map(str::as_bytes);
    // A message-framed client is read only while none of its requests is unanswered (one
    // read is one request: reading on would merge or split its messages).
    let depth = match framing {
        Framing::Line => PIPELINE_DEPTH,
        Framing::Message => 1,
    };
    let mut inbuf: Vec<u8> = Vec::new();
    // One read is one message: the buffer is the largest message, 64 KiB.
    let mut chunk = vec![0u8; if framing == Framing::Message { MAX_LINE } else { 4096 }];
    // Answers released in order and not yet taken by the client: `out[sent..]`.
    let mut out: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    // Since when the client has taken no byte of `out[sent..]`.
    let mut stalled: Option<Instant> = None;
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut eof = false;
    let outcome = 'conn: loop {
        // Start the complete requests already read, as far as the pipeline allows.
        while sess.order.in_flight() < depth && out.len() - sent < OUT_LIMIT {
            let Some(mut req) = take_request(framing, &mut inbuf, eof) else { break };
            if is_quit(&req, quit) {
                // Not forwarded; the client and every server connection of this session
                // close now, answers still pending included.
                break 'conn "quit";
            }
            if framing == Framing::Line {
                req.push(b'\n');
            }
            sess.start(req);
        }
        // Queue the answers that are next in order.
        while let Some(a) = sess.order.pop() {
            out.extend_from_slice(&a);
        }
        let writing = sent < out.len();
        if !writing {
            out.clear();
            sent = 0;
            stalled = None;
            if eof && sess.order.in_flight() == 0 && inbuf.is_empty() {
                break "done";
            }
        } else if stalled.is_none() {
            stalled = Some(Instant::now());
        }
        let reading = !eof && sess.order.in_flight() < depth && out.len() - sent < OUT_LIMIT;
        let waiting = sess.order.in_flight() > 0;
        let wake = sess.next_wake();
        let send_by = stalled.map(|t| t + send_timeout);
        tokio::select! {
            ev = event_rx.recv() => {
                // Never `None`: the session holds a sender.
                if let Some(ev) = ev {
                    sess.on_event(ev);
                }
            }
            () = sleep_until_opt(wake) => sess.on_timers(Instant::now()),
            r = wr.write(out.get(sent..).unwrap_or_default()), if writing => match r {
                Ok(n) if n > 0 => {
                    sent += n;
                    bytes_out += n as u64;
                    stalled = Some(Instant::now());
                }
                _ => break "client-error",
            },
            () = sleep_until_opt(send_by), if writing => {
                stats.send_timeouts.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = CLIENT_LOG.allow(now_ms()) {
                    tracing::warn!(
                        frontend = %ctx.name, client = %peer, skipped,
                        send_timeout_ms = send_timeout.as_millis() as u64,
                        "fan-out client does not read its answers: closing it"
                    );
                }
                break "send-timeout";
            }
            r = rd.read(&mut chunk), if reading => match r {
                Ok(0) => eof = true,
                Ok(n) => {
                    inbuf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    bytes_in += n as u64;
                    if framing == Framing::Line && inbuf.len() > MAX_LINE && !inbuf.contains(&b'\n') {
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
            () = tokio::time::sleep(idle), if !waiting && !writing => break "idle",
        }
    };
    // Requests the client will never see the answer to.
    stats.fanout_dropped.fetch_add(sess.reqs.len() as u64, Ordering::Relaxed);
    drop(sess);
    if outcome == "send-timeout" {
        // The answers it did not take are dropped with a reset, not kept in a closing socket.
        if let Ok(s) = rd.reunite(wr) {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    } else {
        let _ = tokio::time::timeout(send_timeout, wr.shutdown()).await;
    }
    ledger.bytes_in = bytes_in;
    ledger.bytes_out = bytes_out;
    ledger.outcome = outcome;
}

pub(super) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
