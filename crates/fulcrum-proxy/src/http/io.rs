//! The client socket as hyper sees it, with the HTTP frontend's two waits enforced where the
//! bytes arrive: `header_timeout` (a request head must arrive whole within it, counted from
//! accept for the first request and from the first byte for later ones) and
//! `keepalive_timeout` (a connection with no request in progress). hyper's own
//! `header_read_timeout` closes the connection without a word and also counts the idle wait
//! between requests as header time; HAProxy and NGINX answer a slow head with 408 and keep
//! the two waits apart, so this wrapper does.
//!
//! It learns whether a request is in progress from [`Phase`], which the request handler
//! updates (a request counts from its head until its response body ends). The timer is
//! always armed and simply re-armed while requests run, so no waker has to pass between the
//! handler and the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::admit::IdleLimit;
use crate::context::{AcceptCtx, Shared};

/// What the handler and the socket share about one client connection.
#[derive(Debug, Default)]
pub(crate) struct Phase {
    /// Requests between their head and the end of their response body.
    pub(crate) active: AtomicU32,
    /// Process-clock ms when `active` last fell to zero.
    pub(crate) idle_since_ms: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Set when the connection was closed for a slow head (answered 408).
    pub(crate) header_timed_out: AtomicBool,
    /// Set when the connection was closed after `keepalive_timeout` without a request.
    pub(crate) keepalive_expired: AtomicBool,
    pub(crate) requests: AtomicU64,
    /// Nothing read since the last request began and every response byte flushed: hyper's
    /// connection holds nothing worth keeping (it may be parked).
    pub(crate) quiet: AtomicBool,
    /// The client closed its side.
    pub(crate) eof: AtomicBool,
}

impl Phase {
    pub(crate) fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_ended(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        }
    }
}

/// Tells when an HTTP/1 connection has been quiet (see [`Phase::quiet`]) for a while, so that
/// hyper can let go of it, without waking while a response is in progress: a slow reader or a
/// long poll keeps one going for minutes, and looking every 100 ms cost 4,000 slow readers
/// 15-20 % of a core. `quiet` only turns true in [`HttpIo`]'s `poll_flush`, that is while the
/// connection's task polls hyper, so polling this right after hyper sees every change.
pub(crate) struct QuietTimer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl QuietTimer {
    pub(crate) fn new() -> QuietTimer {
        QuietTimer { sleep: Box::pin(tokio::time::sleep(Duration::ZERO)), armed: false }
    }

    /// Ready once `phase` has been quiet, with no request counted, for `after`. Poll it after
    /// every poll of hyper's connection.
    pub(crate) fn poll_quiet(
        &mut self,
        phase: &Phase,
        after: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            if !phase.quiet.load(Ordering::Relaxed) {
                self.armed = false;
                return Poll::Pending;
            }
            let want = after.as_millis() as u64;
            // Quiet while a request is still counted: its end (the response body dropped)
            // need not come with a poll of hyper, so look again after `after`.
            let wait = if phase.active.load(Ordering::Relaxed) > 0 {
                want
            } else {
                let since = phase.idle_since_ms.load(Ordering::Relaxed);
                let idle = crate::clock::now_ms().saturating_sub(since);
                if idle >= want {
                    self.armed = false;
                    return Poll::Ready(());
                }
                want - idle
            };
            if !self.armed {
                let at = Instant::now() + Duration::from_millis(wait.max(1));
                self.sleep.as_mut().reset(at);
                self.armed = true;
            }
            ready!(self.sleep.as_mut().poll(cx));
            self.armed = false;
        }
    }
}

/// The answer to a head that did not arrive in time. Sent only when nothing of an earlier
/// response is still being written, so it can never land inside another response.
const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n\
content-length: 24\r\nconnection: close\r\n\r\nrequest header timed out";

const H2_PREFACE_START: &[u8] = b"PRI ";

/// A client connection's byte stream: plain TCP, or TLS over it.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// An idle connection may be parked on the socket's readiness. Not over TLS: rustls may
    /// hold decrypted bytes the socket no longer shows.
    const PARKS: bool;
    /// Readiness of the socket underneath.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Writes `b` now if it can, bypassing hyper (the 408); false when it cannot.
    fn try_write_now(&self, b: &[u8]) -> bool;
}

impl ClientStream for TcpStream {
    const PARKS: bool = true;
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
    fn try_write_now(&self, b: &[u8]) -> bool {
        self.try_write(b).is_ok()
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    const PARKS: bool = false;
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
    /// A 408 would have to be a TLS record: the connection just closes.
    fn try_write_now(&self, _: &[u8]) -> bool {
        false
    }
}

pub(crate) struct HttpIo<S = TcpStream> {
    stream: S,
    phase: Arc<Phase>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    /// Where the keep-alive wait learns of pressure on the frontend's connection slots (it
    /// shrinks then: `admit::IdleLimit`); `None` when it never shrinks.
    pressure: Option<(Arc<Shared>, Arc<AcceptCtx>)>,
    timer: Pin<Box<Sleep>>,
    /// The timer counts a head's arrival (not the idle wait before it).
    head_started: bool,
    /// When the head being read must be whole (while `head_started`): the timer may fire
    /// earlier to look at the keep-alive limit.
    head_deadline: Instant,
    /// Nothing written is still waiting for a flush (a 408 may be written).
    clean: bool,
    /// Seen the HTTP/2 preface: never write an HTTP/1 answer.
    h2: Option<bool>,
    /// `Phase::requests` when last looked at: a change means a head arrived whole.
    seen_requests: u64,
    /// Bytes read before hyper took the socket (the protocol sniff) or left unparsed when
    /// it let go of it (a parked connection), served to the next reader first.
    prefix: bytes::Bytes,
}

impl<S: ClientStream> HttpIo<S> {
    pub(crate) fn new(
        stream: S,
        phase: Arc<Phase>,
        header_timeout: Duration,
        keepalive_timeout: Duration,
        pressure: Option<(Arc<Shared>, Arc<AcceptCtx>)>,
    ) -> Self {
        // The first request's head counts from accept, as in NGINX's client_header_timeout.
        let now = Instant::now();
        let head_deadline = now + header_timeout;
        let timer = Box::pin(tokio::time::sleep_until(head_deadline));
        let mut io = HttpIo {
            stream,
            phase,
            header_timeout,
            keepalive_timeout,
            pressure,
            timer,
            head_started: true,
            head_deadline,
            clean: true,
            h2: None,
            seen_requests: 0,
            prefix: bytes::Bytes::new(),
        };
        let first_look = head_deadline.min(now + io.limit().recheck());
        io.timer.as_mut().reset(first_look);
        io
    }

    /// Reads until the first bytes tell HTTP/2's preface from an HTTP/1 request line; what
    /// was read is replayed to hyper. `Ok(true)` for HTTP/2 (prior knowledge).
    pub(crate) async fn sniff_h2(&mut self) -> io::Result<bool> {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut got = bytes::BytesMut::new();
        loop {
            let n = got.len().min(PREFACE.len());
            if got[..n] != PREFACE[..n] {
                self.prefix = got.freeze();
                return Ok(false);
            }
            if n == PREFACE.len() {
                self.prefix = got.freeze();
                return Ok(true);
            }
            let mut chunk = [0u8; 1024];
            let read = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut chunk);
                match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a request",
                ));
            }
            got.extend_from_slice(&chunk[..read]);
        }
    }

    /// Hands back bytes hyper read but did not parse; they are read again first.
    pub(crate) fn unread(&mut self, bytes: bytes::Bytes) {
        if !bytes.is_empty() {
            let mut all = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            all.extend_from_slice(&bytes);
            all.extend_from_slice(&self.prefix);
            self.prefix = all.freeze();
        }
    }

    pub(crate) fn has_unread(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// Waits, holding nothing but the socket, until the client sends again: `Ok` when bytes
    /// are there to read, an error when `keepalive_timeout` ends the wait or the socket fails.
    pub(crate) async fn wait_readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            loop {
                match self.stream.poll_readable(cx) {
                    Poll::Ready(r) => return Poll::Ready(r),
                    Poll::Pending => {}
                }
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Err(e) = self.on_timer() {
                    return Poll::Ready(Err(e));
                }
            }
        })
        .await
    }

    /// A head counts as started no longer once a request began after it.
    fn sync(&mut self) {
        let reqs = self.phase.requests.load(Ordering::Relaxed);
        if reqs != self.seen_requests {
            self.seen_requests = reqs;
            self.head_started = false;
        }
    }

    /// The keep-alive limit: `keepalive_timeout`, shorter under pressure.
    fn limit(&self) -> IdleLimit<'_> {
        match &self.pressure {
            Some((shared, ctx)) => IdleLimit::new(self.keepalive_timeout, shared, ctx),
            None => self.keepalive_timeout.into(),
        }
    }

    /// The timer fired: either a wait really ran out (an error ends the connection) or it was
    /// only a checkpoint (re-armed; `Ok`).
    fn on_timer(&mut self) -> io::Result<()> {
        let now = Instant::now();
        self.sync();
        let recheck = self.limit().recheck();
        if self.phase.active.load(Ordering::Relaxed) > 0 {
            // A request is running: its own timeouts govern it. Look again later.
            self.timer.as_mut().reset(now + self.keepalive_timeout.min(recheck));
            return Ok(());
        }
        if self.head_started && now < self.head_deadline {
            // Fired early to look at the keep-alive limit (below) or while a request ran.
            self.timer.as_mut().reset(self.head_deadline.min(now + recheck));
            return Ok(());
        }
        if self.head_started {
            self.phase.header_timed_out.store(true, Ordering::Relaxed);
            if self.clean && self.h2 != Some(true) {
                // Best effort: the answer is small and the socket's buffer empty.
                let _ = self.stream.try_write_now(TIMEOUT_408);
            }
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request header timed out"));
        }
        let idle_ms =
            crate::clock::now_ms().saturating_sub(self.phase.idle_since_ms.load(Ordering::Relaxed));
        let limit = self.limit();
        let keepalive = limit.now();
        let keepalive_ms = keepalive.as_millis() as u64;
        if idle_ms >= keepalive_ms {
            limit.expired(keepalive);
            self.phase.keepalive_expired.store(true, Ordering::Relaxed);
            return Err(io::Error::new(io::ErrorKind::TimedOut, "keep-alive timeout"));
        }
        let wait = Duration::from_millis(keepalive_ms - idle_ms).min(limit.recheck());
        self.timer.as_mut().reset(now + wait);
        Ok(())
    }
}

impl<S: ClientStream> AsyncRead for HttpIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if got.is_empty() {
                    this.phase.eof.store(true, Ordering::Relaxed);
                } else {
                    this.phase.quiet.store(false, Ordering::Relaxed);
                    if this.h2.is_none() {
                        this.h2 = Some(got.starts_with(H2_PREFACE_START));
                    }
                    this.phase.bytes_in.fetch_add(got.len() as u64, Ordering::Relaxed);
                    this.sync();
                    if !this.head_started && this.phase.active.load(Ordering::Relaxed) == 0 {
                        // The first byte of a new head: from now on it has header_timeout.
                        this.head_started = true;
                        let now = Instant::now();
                        this.head_deadline = now + this.header_timeout;
                        let recheck = this.limit().recheck();
                        this.timer.as_mut().reset(this.head_deadline.min(now + recheck));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                while this.timer.as_mut().poll(cx).is_ready() {
                    if let Err(e) = this.on_timer() {
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S: ClientStream> AsyncWrite for HttpIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clean = false;
        this.phase.quiet.store(false, Ordering::Relaxed);
        let n = ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        this.phase.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clean = false;
        this.phase.quiet.store(false, Ordering::Relaxed);
        let n = ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))?;
        this.phase.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        // hyper flushes once its buffer is written out: nothing of a response is pending.
        this.clean = true;
        this.sync();
        if this.phase.active.load(Ordering::Relaxed) == 0 && !this.head_started {
            this.phase.quiet.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_timer_sleeps_through_a_response_in_progress() {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let (phase, mut timer) = (Phase::default(), QuietTimer::new());
        let after = Duration::from_millis(100);
        // A response is being written to a client that does not read: no wake-up at all.
        phase.request_started();
        assert!(timer.poll_quiet(&phase, after, &mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        // All flushed while the request is still counted: looked at again after `after`.
        phase.quiet.store(true, Ordering::Relaxed);
        assert!(timer.poll_quiet(&phase, after, &mut cx).is_pending());
        tokio::time::advance(after).await;
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        // Its end came and the connection has been idle long enough.
        phase.request_ended();
        assert!(timer.poll_quiet(&phase, Duration::ZERO, &mut cx).is_ready());
        // A new request's bytes arrived: not quiet, nothing armed.
        phase.quiet.store(false, Ordering::Relaxed);
        assert!(timer.poll_quiet(&phase, after, &mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
    }
}
