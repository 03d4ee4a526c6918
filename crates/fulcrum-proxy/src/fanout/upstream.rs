//! TCP fan-out, the server side: how request lines reach a server and its answer lines come
//! back to the right request. Never by position on a shared stream: a server that skips a
//! request (a lookup server that stays silent on names it does not know) would shift every
//! later answer onto the wrong request.
//!
//! * Default (`match` unset or `"none"`): a connection carries **one request at a time** and
//!   the server owes exactly one line for it ([`exchange`]). A connection that answered with
//!   exactly that line goes back to its client session's idle set for the next request to that
//!   server; one whose request ended first (timed out, or answered by another server) is
//!   closed with a reset (its task is aborted), as is one that sent more than one line or
//!   failed. A late line can therefore never be read as another request's answer. A session
//!   holds at most one connection per server per request in flight (≤ `PIPELINE_DEPTH`).
//! * `match = "first-word"`: one pipelined connection per server per session ([`PipeHandle`]);
//!   an answer belongs to the outstanding request with the same first word
//!   (`fulcrum_core::fanout::WordTable`); a line matching none is discarded and counted.
//!
//! Bounds: request lines wait in a bounded channel (`PIPELINE_DEPTH`) and a bounded output
//! buffer; a write that makes no progress for the request timeout closes the connection and
//! fails its outstanding requests (a server that stops reading costs a connection, not
//! memory); answer lines are at most `MAX_LINE` bytes.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fulcrum_core::fanout::{OneAnswer, WordTable, one_answer};
use fulcrum_core::framing::Framing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::context::Shared;
use crate::ledger::Descriptor;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::tcp::sleep_until_opt;
use super::{MAX_LINE, Outstanding, PIPELINE_DEPTH, UNMATCHED_LOG, upstream_failed};
use crate::clock::now_ms;
use crate::state::PoolState;
use crate::stats::FrontendStats;

/// Request bytes written to a pipelined connection and not yet taken by the server, beyond
/// which further requests fail for that server at once.
const PIPE_OUT_LIMIT: usize = 256 * 1024;

/// What a server connection reports to its session for request `seq`: its answer line
/// (without the newline), or `None` when the request failed there; with the default matching,
/// the connection itself when it may carry another request.
pub(super) struct UpEvent {
    pub seq: u64,
    pub server: usize,
    pub answer: Option<Vec<u8>>,
    pub conn: Option<Idle>,
}

/// A server connection with the descriptor it draws from the process's budget: both go
/// together, so the budget counts every upstream socket while it is open.
pub(super) struct Conn {
    s: TcpStream,
    _fd: Descriptor,
}

/// A connection that answered its last request with exactly one line.
pub(super) struct Idle(Conn);

/// Takes a usable idle connection out of `idle`, newest first. One that has something to
/// read (a line nobody asked for) or was closed by the server is dropped.
pub(super) fn take_idle(idle: &mut Vec<Idle>, stats: &FrontendStats) -> Option<Idle> {
    while let Some(c) = idle.pop() {
        let mut b = [0u8; 1];
        match c.0.s.try_read(&mut b) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(c),
            Ok(n) if n > 0 => {
                stats.fanout_unmatched_answers.fetch_add(1, Ordering::Relaxed);
                abandon(&c.0.s);
            }
            _ => {}
        }
    }
    None
}

/// Closes a connection that may still owe or hold bytes with a reset: nothing of it can be
/// read any more, and no `TIME_WAIT` socket is left behind per abandoned request.
fn abandon(s: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// Holds a connection during an exchange; dropped (also when the exchange's task is aborted)
/// it resets the connection unless it was handed back clean.
struct Guard(Option<Conn>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            abandon(&c.s);
        }
    }
}

/// One request for one server on a connection of its own.
pub(super) struct Exchange {
    pub framing: Framing,
    pub shared: Arc<Shared>,
    pub pool: Arc<PoolState>,
    pub index: usize,
    pub seq: u64,
    pub line: Arc<[u8]>,
    /// An idle connection to reuse; `None`: connect.
    pub conn: Option<Idle>,
    /// The request's deadline: nothing of this exchange outlives it.
    pub deadline: Instant,
    pub stats: Arc<FrontendStats>,
    pub events: mpsc::Sender<UpEvent>,
}

/// Runs one exchange and reports it. Aborted by the session when the request ends first.
pub(super) async fn exchange(job: Exchange) {
    let Exchange { framing, shared, pool, index, seq, line, conn, deadline, stats, events } = job;
    let Some(server) = pool.servers.get(index) else { return };
    let _out = Outstanding::new(&server.stats);
    let at = tokio::time::Instant::from_std(deadline);
    let r =
        tokio::time::timeout_at(at, exchange_io(framing, &shared, &pool, index, &line, conn)).await;
    let (answer, conn) = match r {
        Ok(Ok((answer, conn))) => (Some(answer), conn),
        Ok(Err(e)) => {
            upstream_failed(&pool, index, &e, &stats);
            (None, None)
        }
        // The request is over: the session stops this task at the same moment.
        Err(_) => return,
    };
    if conn.is_none() && answer.is_some() {
        stats.fanout_unmatched_answers.fetch_add(1, Ordering::Relaxed);
    }
    let _ = events.send(UpEvent { seq, server: index, answer, conn }).await;
}

/// Writes the line and reads its one answer line. A reused connection the server had closed
/// meanwhile (nothing came back) is replaced by a fresh one, once.
async fn exchange_io(
    framing: Framing,
    shared: &Arc<Shared>,
    pool: &PoolState,
    index: usize,
    line: &[u8],
    conn: Option<Idle>,
) -> io::Result<(Vec<u8>, Option<Idle>)> {
    if let Some(Idle(s)) = conn {
        let mut g = Guard(Some(s));
        match round(framing, pool, index, &mut g, line).await {
            Ok(r) => return Ok(r),
            Err(Round::Stale) => {}
            Err(Round::Failed(e)) => return Err(e),
        }
    }
    let c = connect(shared, pool, index).await?;
    let mut g = Guard(Some(c));
    match round(framing, pool, index, &mut g, line).await {
        Ok(r) => Ok(r),
        Err(Round::Stale) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection without answering",
        )),
        Err(Round::Failed(e)) => Err(e),
    }
}

enum Round {
    /// The connection was closed or reset before a byte of the answer came.
    Stale,
    Failed(io::Error),
}

/// One request and its answer on the connection in `g`. On a clean answer (one line, nothing
/// after it) the connection is taken out of the guard and returned. With message framing the
/// answer is what the first read returns (and whatever else had already arrived with it, up
/// to [`MAX_LINE`]); bytes that come later are caught when the connection is next taken
/// ([`take_idle`] drops a connection with anything to read).
async fn round(
    framing: Framing,
    pool: &PoolState,
    index: usize,
    g: &mut Guard,
    line: &[u8],
) -> Result<(Vec<u8>, Option<Idle>), Round> {
    let Some(s) = g.0.as_mut().map(|c| &mut c.s) else { return Err(Round::Stale) };
    if let Err(e) = s.write_all(line).await {
        return Err(match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Round::Stale,
            _ => Round::Failed(e),
        });
    }
    if let Some(server) = pool.servers.get(index) {
        server.stats.bytes_in.fetch_add(line.len() as u64, Ordering::Relaxed);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(Round::Stale),
            Ok(0) => {
                return Err(Round::Failed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection in the middle of an answer",
                )));
            }
            Ok(n) => n,
            Err(e) if buf.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(Round::Stale);
            }
            Err(e) => return Err(Round::Failed(e)),
        };
        if let Some(server) = pool.servers.get(index) {
            server.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if framing == Framing::Message {
            // What the server wrote at once may span more than one chunk: take what is
            // already here, without waiting for more.
            while buf.len() < MAX_LINE {
                match s.try_read(&mut chunk) {
                    Ok(n) if n > 0 => {
                        if let Some(server) = pool.servers.get(index) {
                            server.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    }
                    _ => break,
                }
            }
            if buf.len() > MAX_LINE {
                return Err(Round::Failed(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "answer message too long",
                )));
            }
            return Ok((buf, g.0.take().map(Idle)));
        }
        match one_answer(&buf, MAX_LINE) {
            OneAnswer::Incomplete => {}
            OneAnswer::TooLong => {
                return Err(Round::Failed(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "answer line too long",
                )));
            }
            OneAnswer::Line { line, more } => {
                let answer = line.to_vec();
                // More than one line: the connection is out of step; it answers this request
                // and is closed.
                let conn = if more { None } else { g.0.take().map(Idle) };
                return Ok((answer, conn));
            }
        }
    }
}

/// Connects to server `index` within the pool's connect timeout, with a descriptor of the
/// budget; a spent budget is a local failure (EMFILE), never the server's.
async fn connect(shared: &Arc<Shared>, pool: &PoolState, index: usize) -> io::Result<Conn> {
    let Some(server) = pool.servers.get(index) else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "server left the pool"));
    };
    let Some(fd) = Descriptor::take(shared) else {
        return Err(io::Error::from_raw_os_error(crate::listener::libc_errno::EMFILE));
    };
    let started = Instant::now();
    match tokio::time::timeout(
        pool.connect_timeout,
        crate::connect::connect(server.addr, pool.receive_buffer),
    )
    .await
    {
        Ok(Ok(s)) => {
            server.stats.on_connect_success(started.elapsed());
            Ok(Conn { s, _fd: fd })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

// ---------------------------------------------------------------------------------------
// match = "first-word"

/// A request line for a server's pipelined connection.
pub(super) struct PipeJob {
    pub seq: u64,
    pub line: Arc<[u8]>,
    pub deadline: Instant,
}

/// The task holding one server's pipelined connection for one client connection; stopped
/// with it.
pub(super) struct PipeHandle {
    jobs: mpsc::Sender<PipeJob>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PipeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PipeHandle {
    pub fn start(
        shared: Arc<Shared>,
        pool: Arc<PoolState>,
        index: usize,
        write_timeout: Duration,
        stats: Arc<FrontendStats>,
        events: mpsc::Sender<UpEvent>,
    ) -> PipeHandle {
        let (jobs, rx) = mpsc::channel(PIPELINE_DEPTH);
        let pipe = Pipe {
            shared,
            fd: None,
            pool,
            index,
            write_timeout,
            stats,
            events,
            origin: Instant::now(),
            table: WordTable::new(),
            rd: None,
            wr: None,
            out: Vec::new(),
            sent: 0,
            progress: Instant::now(),
            partial: Vec::new(),
        };
        PipeHandle { jobs, task: tokio::spawn(pipe.run(rx)) }
    }

    /// Queues a request; false (a failure for this server) when the queue is full.
    pub fn send(&self, job: PipeJob) -> bool {
        self.jobs.try_send(job).is_ok()
    }
}

struct Pipe {
    shared: Arc<Shared>,
    /// The connection's descriptor of the budget, held while `rd`/`wr` are.
    fd: Option<Descriptor>,
    pool: Arc<PoolState>,
    index: usize,
    write_timeout: Duration,
    stats: Arc<FrontendStats>,
    events: mpsc::Sender<UpEvent>,
    /// Deadlines in the table are durations since this instant.
    origin: Instant,
    table: WordTable<Outstanding>,
    rd: Option<OwnedReadHalf>,
    wr: Option<OwnedWriteHalf>,
    /// Request bytes not yet written: `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    /// The last time the server took bytes (or the first wait began).
    progress: Instant,
    /// The start of an answer line whose newline has not arrived yet.
    partial: Vec<u8>,
}

impl Pipe {
    async fn run(mut self, mut jobs: mpsc::Receiver<PipeJob>) {
        let mut chunk = vec![0u8; 4096];
        loop {
            let expiry = self.table.next_deadline().map(|d| self.origin + d);
            let writing = self.wr.is_some() && self.sent < self.out.len();
            let write_by = writing.then(|| self.progress + self.write_timeout);
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => self.queue(job).await,
                    None => break,
                },
                r = write_some(&mut self.wr, self.out.get(self.sent..).unwrap_or_default()), if writing => {
                    match r {
                        Ok(n) if n > 0 => {
                            if let Some(s) = self.pool.servers.get(self.index) {
                                s.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            self.sent += n;
                            self.progress = Instant::now();
                            if self.sent == self.out.len() {
                                self.out.clear();
                                self.sent = 0;
                            }
                        }
                        Ok(_) => self.fail_conn(io::Error::new(io::ErrorKind::WriteZero, "server took no bytes")).await,
                        Err(e) => self.fail_conn(e).await,
                    }
                }
                () = sleep_until_opt(write_by), if writing => {
                    let e = io::Error::new(io::ErrorKind::TimedOut, "server stopped reading its requests");
                    self.fail_conn(e).await;
                }
                r = read_some(&mut self.rd, &mut chunk) => self.received(r, &chunk).await,
                () = sleep_until_opt(expiry) => {
                    // Their requests are over: a later answer to them matches nothing.
                    let now = self.origin.elapsed();
                    drop(self.table.expire(now));
                }
            }
        }
    }

    /// Writes request `job` behind the others, connecting first if needed.
    async fn queue(&mut self, job: PipeJob) {
        if self.wr.is_none() {
            match connect(&self.shared, &self.pool, self.index).await {
                Ok(Conn { s, _fd }) => {
                    self.fd = Some(_fd);
                    let (r, w) = s.into_split();
                    self.rd = Some(r);
                    self.wr = Some(w);
                }
                Err(e) => {
                    upstream_failed(&self.pool, self.index, &e, &self.stats);
                    self.fail(job.seq).await;
                    return;
                }
            }
        }
        let Some(server) = self.pool.servers.get(self.index) else { return };
        if self.out.len() - self.sent + job.line.len() > PIPE_OUT_LIMIT {
            // The server is far behind reading; this request fails for it at once.
            self.fail(job.seq).await;
            return;
        }
        if self.sent == self.out.len() {
            self.progress = Instant::now();
        }
        self.out.extend_from_slice(&job.line);
        let deadline = job.deadline.saturating_duration_since(self.origin);
        self.table.push(job.seq, &job.line, deadline, Outstanding::new(&server.stats));
    }

    /// Takes what a read returned: each answer line goes to the request it names.
    async fn received(&mut self, r: io::Result<usize>, chunk: &[u8]) {
        let n = match r {
            Ok(n) if n > 0 => n,
            r => {
                // Closed or reset. With nothing outstanding it is only an idle close (the next
                // request reconnects); with requests outstanding it failed them.
                let e = r.err().unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
                });
                if self.table.is_empty() {
                    self.close();
                } else {
                    self.fail_conn(e).await;
                }
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
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            match self.table.take(&line) {
                Some((seq, _out)) => {
                    let ev = UpEvent { seq, server: self.index, answer: Some(line), conn: None };
                    let _ = self.events.send(ev).await;
                }
                None => self.unmatched(&line),
            }
        }
        if self.partial.len() > MAX_LINE {
            let e = io::Error::new(io::ErrorKind::InvalidData, "answer line too long");
            self.fail_conn(e).await;
        }
    }

    /// An answer for no outstanding request: answered twice, after the deadline, or garbage.
    fn unmatched(&self, line: &[u8]) {
        self.stats.fanout_unmatched_answers.fetch_add(1, Ordering::Relaxed);
        if let Some(skipped) = UNMATCHED_LOG.allow(now_ms()) {
            let server = self.pool.servers.get(self.index).map(|s| s.key.as_str()).unwrap_or("-");
            let word = fulcrum_core::fanout::first_word(line);
            tracing::info!(
                pool = %self.pool.name, server, skipped,
                first_word = %String::from_utf8_lossy(word.get(..word.len().min(64)).unwrap_or_default()),
                "fan-out answer matches no outstanding request: discarded"
            );
        }
    }

    async fn fail(&self, seq: u64) {
        let _ =
            self.events.send(UpEvent { seq, server: self.index, answer: None, conn: None }).await;
    }

    /// The connection failed: count it, fail every request outstanding on it, close it.
    async fn fail_conn(&mut self, e: io::Error) {
        upstream_failed(&self.pool, self.index, &e, &self.stats);
        for (seq, _out) in self.table.drain() {
            self.fail(seq).await;
        }
        self.close();
    }

    fn close(&mut self) {
        if let (Some(r), Some(w)) = (self.rd.take(), self.wr.take())
            && let Ok(s) = r.reunite(w)
        {
            abandon(&s);
        }
        self.fd = None;
        self.out.clear();
        self.sent = 0;
        self.partial.clear();
    }
}

async fn read_some(rd: &mut Option<OwnedReadHalf>, buf: &mut [u8]) -> io::Result<usize> {
    match rd {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_some(wr: &mut Option<OwnedWriteHalf>, buf: &[u8]) -> io::Result<usize> {
    match wr {
        Some(w) => w.write(buf).await,
        None => std::future::pending().await,
    }
}
