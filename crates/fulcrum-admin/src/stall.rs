//! The admin listener's write-stall limit: a client that stops reading (a dashboard tab whose
//! machine went to sleep holding a live stream open) makes writes wait forever; past
//! [`WRITE_STALL_LIMIT`] without progress the connection fails and its slot is freed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Longest a write to an admin client may wait without a byte going out.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

pub struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Armed when a write first waits; cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        StallGuard { inner, limit, stalled: None }
    }

    /// A write is waiting: Err once it has waited `limit`.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the admin client read nothing for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(x) => {
                self.stalled = None;
                Poll::Ready(x)
            }
            Poll::Pending => self.waiting(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_reader_that_stops_fails_the_write_after_the_limit() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut g = StallGuard::new(near, Duration::from_millis(200));
        // While the far side reads, writes go on however long it takes in total.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while got < 8192 {
                got += tokio::io::AsyncReadExt::read(&mut far, &mut buf).await.unwrap();
            }
            far // kept open, never read again
        });
        g.write_all(&[7u8; 8192]).await.unwrap();
        let _far = reader.await.unwrap();
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), g.write_all(&[7u8; 8192])).await;
        let e = r.expect("the stall limit ended the write").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
