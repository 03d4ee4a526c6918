//! The copy loop for a server stream that is not a plain socket: TLS to servers
//! (`[pool.X.tls]`), where fulcrum re-encrypts what a TCP client sends. The rules are
//! `copy.rs`'s: both directions in one task, EOF passed on as a half-close (on TLS, a
//! `close_notify` and then the socket's shutdown), the first error ends both, the idle and
//! send watchdog is the same. What differs is the means: bytes go through rustls, so there is
//! no splice, and the streams are polled through `AsyncRead`/`AsyncWrite` in one future
//! (neither is split: a split stream shares its halves behind a lock).
//!
//! Buffers are bounded: each direction borrows one 16 KiB buffer from the worker's pool only
//! while bytes are in flight, as `copy.rs` does; rustls holds its own, bounded by its buffer
//! limit (64 KiB of records waiting to be written).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admit::IdleLimit;
use crate::clock::now_ms;
use crate::copy::{Buf, Copied, Outcome, stall_begins, stall_ends, watchdog};

/// Where one direction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Reading,
    /// Bytes `pos..len` of the buffer are still to be written.
    Writing,
    /// Written; the receiver's stream may still hold them (rustls' records).
    Flushing,
    /// The source ended: the half-close goes on to the receiver.
    ShuttingDown,
    Done,
}

struct Half<'a> {
    step: Step,
    buf: Option<Buf>,
    pos: usize,
    len: usize,
    bytes: &'a AtomicU64,
    activity: &'a AtomicU64,
    src_fails: Outcome,
    dst_fails: Outcome,
    /// Towards the client only: since when a write has waited (see `copy.rs`).
    stalled: Option<&'a AtomicU64>,
    server_write_failed: &'a AtomicBool,
    /// From the client only: the first read is refused if it opens with a PROXY header.
    refuse_proxy_header: bool,
}

impl Half<'_> {
    /// Moves bytes from `src` to `dst` until both would block, the direction ends, or fails.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
    ) -> Poll<Result<(), Outcome>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match self.step {
                Step::Reading => {
                    let buf = self.buf.get_or_insert_with(Buf::take);
                    let mut rb = ReadBuf::new(buf.get());
                    match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                        Poll::Pending => {
                            // Nothing in flight: the buffer goes back to the worker's pool.
                            self.buf = None;
                            return Poll::Pending;
                        }
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            if n == 0 {
                                self.buf = None;
                                self.step = Step::ShuttingDown;
                            } else {
                                if std::mem::take(&mut self.refuse_proxy_header)
                                    && fulcrum_core::proxy_header::looks_like_header(rb.filled())
                                {
                                    return Poll::Ready(Err(Outcome::UntrustedProxyHeader));
                                }
                                (self.pos, self.len) = (0, n);
                                self.step = Step::Writing;
                            }
                        }
                        // A TLS server that closes its socket without `close_notify` ends
                        // its stream as a plain TCP server would (most HTTP servers do).
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            self.buf = None;
                            self.step = Step::ShuttingDown;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(Err(self.src_fails)),
                    }
                }
                Step::Writing => {
                    let data = match self.buf.as_mut() {
                        Some(b) => b.get().get(self.pos..self.len).unwrap_or_default(),
                        None => &[][..],
                    };
                    if data.is_empty() {
                        self.step = Step::Flushing;
                        continue;
                    }
                    match Pin::new(&mut *dst).poll_write(cx, data) {
                        Poll::Pending => {
                            stall_begins(self.stalled);
                            return Poll::Pending;
                        }
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return self.dst_failed(),
                        Poll::Ready(Ok(n)) => {
                            self.pos += n;
                            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            self.activity.store(now_ms(), Ordering::Relaxed);
                            if self.pos >= self.len {
                                self.buf = None;
                                self.step = Step::Flushing;
                            }
                        }
                    }
                }
                Step::Flushing => match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Pending => {
                        stall_begins(self.stalled);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => {
                        stall_ends(self.stalled);
                        self.step = Step::Reading;
                    }
                    Poll::Ready(Err(_)) => return self.dst_failed(),
                },
                Step::ShuttingDown => {
                    match ready!(Pin::new(&mut *dst).poll_shutdown(cx)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(_) => return self.dst_failed(),
                    }
                    self.step = Step::Done;
                }
                Step::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Writing to the receiver failed: as in `copy.rs`, a server that stopped reading ends
    /// this direction quietly (its answer may still come), a client ends the pair.
    fn dst_failed(&mut self) -> Poll<Result<(), Outcome>> {
        self.buf = None;
        self.step = Step::Done;
        if self.dst_fails == Outcome::ServerError {
            self.server_write_failed.store(true, Ordering::Relaxed);
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(self.dst_fails))
        }
    }
}

/// Proxies between `client` and `server` until both directions end, an error, or `idle`
/// passes with no byte moving; `copy::proxy` for streams that are not plain sockets (and,
/// like it, with `refuse_proxy_header` a client opening with a PROXY header is refused).
pub async fn proxy<C, S>(
    client: &mut C,
    server: &mut S,
    idle: IdleLimit<'_>,
    send_timeout: Duration,
    refuse_proxy_header: bool,
) -> Copied
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bytes_in = AtomicU64::new(0);
    let bytes_out = AtomicU64::new(0);
    let activity = AtomicU64::new(now_ms());
    let stalled = AtomicU64::new(0);
    let server_write_failed = AtomicBool::new(false);
    let half = |bytes, src_fails, dst_fails, stalled, refuse_proxy_header| Half {
        step: Step::Reading,
        buf: None,
        pos: 0,
        len: 0,
        bytes,
        activity: &activity,
        src_fails,
        dst_fails,
        stalled,
        server_write_failed: &server_write_failed,
        refuse_proxy_header,
    };
    let (c, s) = (Outcome::ClientError, Outcome::ServerError);
    let mut up = half(&bytes_in, c, s, None, refuse_proxy_header);
    let mut down = half(&bytes_out, s, c, Some(&stalled), false);
    let both = std::future::poll_fn(|cx| {
        // Each direction runs until it would block; the first error ends both.
        let a = up.poll(cx, client, server)?;
        let b = down.poll(cx, server, client)?;
        if a.is_ready() && b.is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending }
    });
    let both = async {
        match both.await {
            Ok(()) => Outcome::Done,
            Err(o) => o,
        }
    };
    let mut outcome = tokio::select! {
        o = both => o,
        o = watchdog(idle, send_timeout, &activity, &stalled) => o,
    };
    let bytes_out = bytes_out.load(Ordering::Relaxed);
    // As in `copy.rs`: a server whose reset was met by the upload's write, without a byte
    // back, failed.
    if outcome == Outcome::Done && bytes_out == 0 && server_write_failed.load(Ordering::Relaxed) {
        outcome = Outcome::ServerError;
    }
    Copied { outcome, bytes_in: bytes_in.load(Ordering::Relaxed), bytes_out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    const T: Duration = Duration::from_secs(10);

    /// A client and a server joined through `proxy` by in-memory pipes of `cap` bytes.
    fn pair(
        cap: usize,
        idle: Duration,
    ) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Copied>) {
        let (client, mut inner) = duplex(cap);
        let (mut upstream, server) = duplex(cap);
        let task =
            tokio::spawn(
                async move { proxy(&mut inner, &mut upstream, idle.into(), T, false).await },
            );
        (client, server, task)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bytes_cross_both_ways_intact_through_small_pipes() {
        let (client, server, task) = pair(1000, T);
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = up.iter().rev().copied().collect();
        /// Sends `out` and closes, while reading everything the other side sends.
        async fn talk(end: DuplexStream, out: &[u8]) -> Vec<u8> {
            let (mut r, mut w) = tokio::io::split(end);
            let send = async {
                w.write_all(out).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let (_, n) = tokio::join!(send, r.read_to_end(&mut got));
            n.unwrap();
            got
        }
        let (at_client, at_server) = tokio::join!(talk(client, &up), talk(server, &down));
        assert!(at_server == up, "the upload changed on its way");
        assert!(at_client == down, "the download changed on its way");
        let c = task.await.unwrap();
        assert_eq!((c.outcome, c.bytes_in, c.bytes_out), (Outcome::Done, 300_000, 300_000));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_half_close_is_passed_on_and_the_other_way_keeps_going() {
        let (mut client, mut server, task) = pair(64, T);
        server.write_all(b"answer").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"answer");
        client.write_all(b"late").await.unwrap();
        client.shutdown().await.unwrap();
        let mut late = Vec::new();
        server.read_to_end(&mut late).await.unwrap();
        assert_eq!(late, b"late");
        let c = task.await.unwrap();
        assert_eq!((c.outcome, c.bytes_in, c.bytes_out), (Outcome::Done, 4, 6));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_pair_is_closed() {
        let (_client, _server, task) = pair(64, Duration::from_millis(50));
        let c = tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert_eq!(c.outcome, Outcome::IdleTimeout);
    }

    /// A stream whose reads fail: a server that broke.
    struct Broken;
    impl AsyncRead for Broken {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }
    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_server_that_fails_is_the_servers_error() {
        let (_client, mut inner) = duplex(64);
        let c = proxy(&mut inner, &mut Broken, T.into(), T, false).await;
        assert_eq!((c.outcome, c.bytes_out), (Outcome::ServerError, 0));
    }
}
