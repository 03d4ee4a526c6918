//! The TCP copy engine: moves bytes both ways between client and server until both
//! directions have ended, turning an EOF on one side into `shutdown(Write)` on the other
//! (half-close), and closing both when nothing moved for the idle timeout.
//!
//! Why hand-written instead of `tokio::io::copy_bidirectional`: that allocates two 8 KiB
//! buffers per connection for its whole life, has no idle timeout and cannot splice. Here a
//! direction borrows a buffer from a per-worker pool only while bytes are in flight (idle
//! connections hold none), and switches to `splice(2)` once a read fills a whole buffer
//! (a bulk stream) whose receiver is on another host. Small request/response exchanges stay
//! on the buffer path: one read and one write beat two splices.
//!
//! Why not splice towards a receiver on this host (loopback, a sidecar, local servers):
//! splice saves the balancer's copy, but the receiver then copies pages that the sender
//! wrote megabytes of socket buffer earlier, cold by now, where a copy through a 16 KiB
//! buffer hands it freshly written, cache-warm ones. Behind `iperf3 -P4` on this machine,
//! splicing made the iperf3 server the bottleneck (95 % CPU, over half of it in
//! `_copy_to_iter`) at 18–20 Gbit/s with two workers; copying moved 21–23 Gbit/s with the
//! server at 43 %, and the whole host spent less CPU per byte (BENCHMARKS.md, "Ninth
//! pass"). Towards another host, splice saves both of this machine's copies and costs the
//! receiver nothing.
//! `--splice always|never` overrides the choice.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Shutdown};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::admit::IdleLimit;
use crate::clock::now_ms;
use crate::splice::Pipe;

pub const BUF_SIZE: usize = 16 * 1024;
const BUF_POOL_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceMode {
    /// Buffers for small exchanges, splice once a direction turns bulk.
    Auto,
    Never,
    Always,
}

thread_local! {
    static BUFS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from the worker's pool, returned on drop.
pub(crate) struct Buf(Option<Box<[u8]>>);

impl Buf {
    pub(crate) fn take() -> Buf {
        let b = BUFS.with(|p| p.borrow_mut().pop());
        Buf(Some(b.unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())))
    }
    pub(crate) fn get(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            BUFS.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < BUF_POOL_MAX {
                    p.push(b);
                }
            });
        }
    }
}

/// How a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides closed cleanly.
    Done,
    IdleTimeout,
    /// The client took no byte of what was waiting for it for `send_timeout`.
    SendTimeout,
    ClientError,
    ServerError,
    /// A source not trusted to send a PROXY header (`accept_proxy`) opened with one.
    UntrustedProxyHeader,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::IdleTimeout => "idle-timeout",
            Outcome::SendTimeout => "send-timeout",
            Outcome::ClientError => "client-error",
            Outcome::ServerError => "server-error",
            Outcome::UntrustedProxyHeader => "untrusted-proxy-header",
        }
    }
}

pub struct Copied {
    pub outcome: Outcome,
    /// Client → server.
    pub bytes_in: u64,
    /// Server → client.
    pub bytes_out: u64,
}

struct Dir<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    bytes: &'a AtomicU64,
    activity: &'a AtomicU64,
    /// Set by the first direction to reach EOF.
    one_ended: &'a AtomicBool,
    splice: SpliceMode,
    /// Outcome when reading `src` fails (the other side's failure is the opposite).
    src_fails: Outcome,
    dst_fails: Outcome,
    /// Towards the client only: since when (process ms, 0 = not) a write has been waiting for
    /// the client to take bytes, for the `send_timeout` watchdog. Touched only when a write
    /// would block.
    stalled: Option<&'a AtomicU64>,
    /// Set when a write towards the server failed and this direction ended quietly.
    server_write_failed: &'a AtomicBool,
    /// From the client only: the first read is refused if it opens with a PROXY header.
    refuse_proxy_header: bool,
}

impl Dir<'_> {
    fn moved(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.activity.store(now_ms(), Ordering::Relaxed);
    }

    async fn run(&self) -> Result<(), Outcome> {
        let mut bulk = self.splice == SpliceMode::Always;
        let mut receiver_local = None;
        // The first read goes through a buffer when it must be looked at.
        let mut first = self.refuse_proxy_header;
        loop {
            if bulk && !first {
                match Pipe::take() {
                    Ok(pipe) => return self.run_splice(pipe).await,
                    // Out of descriptors for a pipe: the buffer path still works.
                    Err(_) => bulk = false,
                }
            }
            self.src.readable().await.map_err(|_| self.src_fails)?;
            let mut buf = Buf::take();
            let n = match self.src.try_read(buf.get()) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(self.src_fails),
            };
            if n < BUF_SIZE {
                // A short read drained the socket: drop tokio's readiness now instead of
                // paying a read that returns EAGAIN to learn it. Safe on this
                // current-thread runtime: the reactor cannot run between the read above and
                // this line, so data arriving after the read raises a fresh edge that sets
                // readiness again; and EOF (read-closed) is never cleared by tokio.
                let _ = self.src.try_io(Interest::READABLE, would_block);
            }
            if first {
                first = false;
                if fulcrum_core::proxy_header::looks_like_header(&buf.get()[..n]) {
                    return Err(Outcome::UntrustedProxyHeader);
                }
            }
            if write_all(self.dst, &buf.get()[..n], self.stalled).await.is_err() {
                return self.dst_failed();
            }
            drop(buf);
            self.moved(n);
            if n == BUF_SIZE && self.splice == SpliceMode::Auto {
                // Asked once, when the direction first fills a buffer: two syscalls that
                // only bulk streams pay.
                bulk = !*receiver_local.get_or_insert_with(|| receiver_is_local(self.dst));
            }
        }
        self.finish()
    }

    async fn run_splice(&self, pipe: Pipe) -> Result<(), Outcome> {
        loop {
            let n = pipe.fill(self.src).await.map_err(|_| self.src_fails)?;
            if n == 0 {
                pipe.give_back();
                return self.finish();
            }
            // On error the pipe may hold bytes: it is dropped (closed), not pooled.
            if pipe.drain(self.dst, n, self.stalled).await.is_err() {
                return self.dst_failed();
            }
            self.moved(n);
        }
    }

    /// Writing to `dst` failed. A server that stopped reading the upload (it answered early,
    /// say a 413, and closed) may still have its answer on the way: this direction ends
    /// quietly and the other one relays the answer, then meets the server's reset or EOF; the
    /// blame is decided there (`fulcrum_core::blame::stream_failed`). Towards the client a
    /// failed write ends the pair at once: nobody is left to read.
    fn dst_failed(&self) -> Result<(), Outcome> {
        if self.dst_fails == Outcome::ServerError {
            self.server_write_failed.store(true, Ordering::Relaxed);
            Ok(())
        } else {
            Err(self.dst_fails)
        }
    }

    /// EOF from the source: pass the half-close on.
    fn finish(&self) -> Result<(), Outcome> {
        if self.one_ended.swap(true, Ordering::Relaxed) {
            // The other direction ended first, so both sockets are closed as soon as this
            // returns, and `close` sends the FIN after the bytes still queued (the receive
            // queues are empty: both sides read EOF, so no RST). A shutdown would be a wasted
            // syscall on every connection.
            return Ok(());
        }
        match socket2::SockRef::from(self.dst).shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(_) => Err(self.dst_fails),
        }
    }
}

/// Whether the process reading what is written to `dst` runs on this host: its peer is a
/// loopback address or this socket's own address. Unknown (an error) counts as remote.
fn receiver_is_local(dst: &TcpStream) -> bool {
    match (dst.peer_addr(), dst.local_addr()) {
        (Ok(peer), Ok(local)) => same_host(peer.ip(), local.ip()),
        _ => false,
    }
}

fn same_host(peer: IpAddr, local: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == local.to_canonical()
}

fn would_block() -> io::Result<()> {
    Err(io::ErrorKind::WouldBlock.into())
}

async fn write_all(
    dst: &TcpStream,
    mut data: &[u8],
    stalled: Option<&AtomicU64>,
) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stall_begins(stalled);
                dst.writable().await?;
            }
            Err(e) => return Err(e),
        }
    }
    stall_ends(stalled);
    Ok(())
}

/// Marks that a write to the client is waiting (kept from the first wait of a stall).
pub(crate) fn stall_begins(stalled: Option<&AtomicU64>) {
    if let Some(s) = stalled
        && s.load(Ordering::Relaxed) == 0
    {
        s.store(now_ms().max(1), Ordering::Relaxed);
    }
}

/// Marks that the client took what was waiting.
pub(crate) fn stall_ends(stalled: Option<&AtomicU64>) {
    if let Some(s) = stalled
        && s.load(Ordering::Relaxed) != 0
    {
        s.store(0, Ordering::Relaxed);
    }
}

/// Proxies between `client` and `server` until both directions end, an error, or `idle`
/// passes with no byte moving. With `refuse_proxy_header`, a client whose first bytes are a
/// PROXY header ends the connection before they reach the server.
pub async fn proxy(
    client: &TcpStream,
    server: &TcpStream,
    idle: IdleLimit<'_>,
    send_timeout: Duration,
    splice: SpliceMode,
    refuse_proxy_header: bool,
) -> Copied {
    let bytes_in = AtomicU64::new(0);
    let bytes_out = AtomicU64::new(0);
    let activity = AtomicU64::new(now_ms());
    let one_ended = AtomicBool::new(false);
    let stalled = AtomicU64::new(0);
    let server_write_failed = AtomicBool::new(false);
    let (c, s) = (Outcome::ClientError, Outcome::ServerError);
    let up = Dir {
        src: client,
        dst: server,
        bytes: &bytes_in,
        activity: &activity,
        one_ended: &one_ended,
        splice,
        src_fails: c,
        dst_fails: s,
        stalled: None,
        server_write_failed: &server_write_failed,
        refuse_proxy_header,
    };
    let down = Dir {
        src: server,
        dst: client,
        bytes: &bytes_out,
        activity: &activity,
        one_ended: &one_ended,
        splice,
        src_fails: s,
        dst_fails: c,
        stalled: Some(&stalled),
        server_write_failed: &server_write_failed,
        refuse_proxy_header: false,
    };
    // The first error in either direction ends both: a reset side cannot take more bytes.
    let both = async {
        match tokio::try_join!(up.run(), down.run()) {
            Ok(_) => Outcome::Done,
            Err(o) => o,
        }
    };
    let watchdog = watchdog(idle, send_timeout, &activity, &stalled);
    let mut outcome = tokio::select! {
        o = both => o,
        o = watchdog => o,
    };
    let bytes_out = bytes_out.load(Ordering::Relaxed);
    // A server that resets before answering is seen by whichever direction touches it first:
    // when the upload's write took the reset, the download reads a plain EOF afterwards (the
    // error is reported once). Without a byte back that is the same failure as a reset read.
    if outcome == Outcome::Done && bytes_out == 0 && server_write_failed.load(Ordering::Relaxed) {
        outcome = Outcome::ServerError;
    }
    Copied { outcome, bytes_in: bytes_in.load(Ordering::Relaxed), bytes_out }
}

/// Waits until the pair has been idle for `idle` (no byte either way since `activity`) or a
/// write to the client has waited `send_timeout` (since `stalled`, 0 = none waits). One timer
/// per connection for both limits: it wakes at the nearer deadline, at least every
/// `send_timeout` and, while the idle limit may shrink under pressure, every shortened limit.
pub(crate) async fn watchdog(
    idle: IdleLimit<'_>,
    send_timeout: Duration,
    activity: &AtomicU64,
    stalled: &AtomicU64,
) -> Outcome {
    let send_ms = send_timeout.as_millis() as u64;
    let recheck_ms = idle.recheck().as_millis() as u64;
    let mut wait = idle.now().min(send_timeout).min(idle.recheck());
    loop {
        tokio::time::sleep(wait).await;
        let now = now_ms();
        let limit = idle.now();
        let idle_ms = limit.as_millis() as u64;
        let quiet = now.saturating_sub(activity.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            idle.expired(limit);
            return Outcome::IdleTimeout;
        }
        let since = stalled.load(Ordering::Relaxed);
        let stalled_for = if since == 0 { 0 } else { now.saturating_sub(since) };
        if since != 0 && stalled_for >= send_ms {
            return Outcome::SendTimeout;
        }
        let to_send = if since == 0 { send_ms } else { send_ms - stalled_for };
        wait = Duration::from_millis((idle_ms - quiet).min(to_send).min(recheck_ms).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A client connected through `proxy` to a server, both on loopback.
    async fn pair() -> (TcpStream, TcpStream, tokio::task::JoinHandle<Copied>) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back_addr = back.local_addr().unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
        let (inner, _) = front.accept().await.unwrap();
        let (upstream, (server, _)) =
            tokio::join!(async { TcpStream::connect(back_addr).await.unwrap() }, async {
                back.accept().await.unwrap()
            });
        let task = tokio::spawn(async move {
            proxy(
                &inner,
                &upstream,
                Duration::from_secs(10).into(),
                Duration::from_secs(10),
                SpliceMode::Auto,
                false,
            )
            .await
        });
        (client, server, task)
    }

    #[test]
    fn a_receiver_on_loopback_or_at_our_own_address_is_local() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(same_host(ip("127.8.9.10"), ip("127.0.0.1")));
        assert!(same_host(ip("::1"), ip("::1")));
        assert!(same_host(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(same_host(ip("192.0.2.7"), ip("192.0.2.7")));
        assert!(same_host(ip("::ffff:192.0.2.7"), ip("192.0.2.7")));
        assert!(!same_host(ip("192.0.2.8"), ip("192.0.2.7")));
        assert!(!same_host(ip("2001:db8::2"), ip("2001:db8::1")));
    }

    #[tokio::test]
    async fn a_server_half_close_reaches_the_client_while_it_still_sends() {
        let (mut client, mut server, task) = pair().await;
        server.write_all(b"answer").await.unwrap();
        server.shutdown().await.unwrap();
        // The client sees the whole answer and then EOF, although its own side is open.
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got));
        read.await.expect("EOF from the server never reached the client").unwrap();
        assert_eq!(got, b"answer");
        // And what it sends afterwards still reaches the server.
        client.write_all(b"late request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut late = Vec::new();
        server.read_to_end(&mut late).await.unwrap();
        assert_eq!(late, b"late request");
        let copied = task.await.unwrap();
        assert_eq!(copied.outcome, Outcome::Done);
        assert_eq!((copied.bytes_in, copied.bytes_out), (12, 6));
    }

    #[tokio::test]
    async fn both_sides_closing_together_end_cleanly() {
        let (mut client, mut server, task) = pair().await;
        client.write_all(b"ping").await.unwrap();
        let mut req = [0u8; 4];
        server.read_exact(&mut req).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        client.shutdown().await.unwrap();
        let copied = task.await.unwrap();
        assert_eq!((copied.outcome, copied.bytes_in, copied.bytes_out), (Outcome::Done, 4, 4));
        // Both ends see a clean EOF, not a reset.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
