//! Routes by SNI, the I/O half: the server name of a connection's TLS ClientHello, read
//! without taking a byte off the socket, and the route it picks (matching is
//! `fulcrum_core::sni`). On a `tcp` frontend the connection then goes to the route's pool (or
//! the frontend's) through the plain TCP path, ClientHello included: nothing is terminated,
//! and splice stays possible from the first byte. On an `https` frontend a name that a
//! passthrough route takes goes the same way; any other connection is terminated as before.
//!
//! **Peek, not read.** The ClientHello is looked at with `MSG_PEEK`: its bytes stay in the
//! socket, so neither the TCP path nor rustls needs them replayed, and the copy engine can
//! splice the connection from its first byte. A ClientHello split over several segments is
//! peeked again from the start when more has arrived (edge-triggered readiness fires on every
//! segment); the peek is bounded by [`MAX_PAYLOAD`] and [`MAX_RECORDS`], and by the caller's
//! `sni_timeout`.
//!
//! **Parsing** is rustls' own ClientHello parser (`rustls::server::Acceptor`, fed a copy of
//! the peeked records), already in the build for `https`: the same code that reads the
//! ClientHello when fulcrum terminates TLS, so the two can never disagree about a name. Only
//! the TLS record framing (five header bytes) is read here, to know how many bytes to wait
//! for. A hand-written SNI parser would save little: the parse costs about 2 µs for a
//! 323-byte ClientHello (`acceptor_cost` below prints it; rustls optimised as in the tests'
//! dev profile, 2 cores of this project's machines), once per connection, and only on a
//! frontend with routes by SNI; the server behind then does a whole handshake on it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustix::net::RecvFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::ledger::Ledger;
use crate::state::PoolState;

/// Most ClientHello bytes read, record headers not counted: a TLS record's largest payload.
/// ClientHellos are a few hundred bytes to about 2 KiB (post-quantum key shares included).
pub(crate) const MAX_PAYLOAD: usize = 16 * 1024;
/// Most TLS records a ClientHello may be split into.
pub(crate) const MAX_RECORDS: usize = 16;
/// The first peek's size: a whole ClientHello of today's clients.
const FIRST_PEEK: usize = 2048;
const RECORD_HEADER: usize = 5;
/// TLS record content type `handshake`.
const HANDSHAKE: u8 = 22;

/// What the first bytes of a connection are, as far as routing by SNI goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A ClientHello naming a server (as sent; matching ignores case and a trailing dot).
    Named(String),
    /// A ClientHello without a server name.
    Unnamed,
    /// Not a TLS ClientHello: another protocol, or a ClientHello that is malformed or larger
    /// than the bounds.
    NotTls,
    /// The client closed its side before a whole ClientHello.
    Closed,
}

impl Hello {
    /// Its index in `FrontendStats::sni_hellos` (`SNI_RESULTS`).
    fn result(&self) -> usize {
        match self {
            Hello::Named(_) => 0,
            Hello::Unnamed => 1,
            Hello::NotTls => 2,
            Hello::Closed => 3,
        }
    }
}
/// `SNI_RESULTS[TIMED_OUT]`: no whole ClientHello within `sni_timeout`.
const TIMED_OUT: usize = 4;

/// One step of reading a ClientHello from the bytes seen so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// At least this many bytes (from the start) are needed.
    Need(usize),
    Done(Hello),
}

/// Reads a ClientHello from the start of a connection's bytes, given each time from the
/// start (as a peek returns them); whole records are handed to rustls once each.
pub(crate) struct HelloReader {
    acceptor: rustls::server::Acceptor,
    /// Bytes of whole records handed to the acceptor.
    fed: usize,
    records: usize,
    payload: usize,
}

impl HelloReader {
    pub(crate) fn new() -> HelloReader {
        HelloReader {
            acceptor: rustls::server::Acceptor::default(),
            fed: 0,
            records: 0,
            payload: 0,
        }
    }

    /// Reads on in `buf`, the connection's bytes from its start (`buf` only grows between
    /// calls).
    pub(crate) fn advance(&mut self, buf: &[u8]) -> Step {
        // The first byte tells another protocol at once: no waiting for a record header.
        if buf.first().is_some_and(|&b| b != HANDSHAKE) || buf.get(1).is_some_and(|&b| b != 3) {
            return Step::Done(Hello::NotTls);
        }
        loop {
            let Some(header) = buf.get(self.fed..self.fed + RECORD_HEADER) else {
                return Step::Need(self.fed + RECORD_HEADER);
            };
            // Every record of a ClientHello is a handshake record of TLS 1.x (3.x on the wire).
            if header[0] != HANDSHAKE || header[1] != 3 {
                return Step::Done(Hello::NotTls);
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len == 0 || self.records == MAX_RECORDS || self.payload + len > MAX_PAYLOAD {
                return Step::Done(Hello::NotTls);
            }
            let end = self.fed + RECORD_HEADER + len;
            let Some(record) = buf.get(self.fed..end) else { return Step::Need(end) };
            let mut rd = record;
            while !rd.is_empty() {
                match self.acceptor.read_tls(&mut rd) {
                    Ok(0) | Err(_) => return Step::Done(Hello::NotTls),
                    Ok(_) => {}
                }
            }
            self.fed = end;
            self.records += 1;
            self.payload += len;
            match self.acceptor.accept() {
                Ok(Some(accepted)) => {
                    return Step::Done(match accepted.client_hello().server_name() {
                        Some(name) => Hello::Named(name.to_string()),
                        None => Hello::Unnamed,
                    });
                }
                Ok(None) => {}
                Err(_) => return Step::Done(Hello::NotTls),
            }
        }
    }
}

/// Peeks at the start of `s` until it is a whole ClientHello or cannot become one. Takes no
/// byte off the socket. No time bound of its own: the caller's `sni_timeout` is.
pub(crate) async fn peek_hello(s: &TcpStream) -> io::Result<Hello> {
    let mut reader = HelloReader::new();
    let mut buf = vec![0u8; FIRST_PEEK];
    loop {
        let ready = s.ready(Interest::READABLE).await?;
        let step = s.try_io(Interest::READABLE, || {
            loop {
                let (n, _) = rustix::net::recv(s, &mut buf[..], RecvFlags::PEEK)?;
                if n == 0 {
                    return Ok(Hello::Closed);
                }
                match reader.advance(&buf[..n]) {
                    Step::Done(h) => return Ok(h),
                    Step::Need(k) => {
                        let full = n == buf.len();
                        if k > buf.len() {
                            buf.resize(k, 0);
                        }
                        // The buffer was full: more may be there already.
                        if full {
                            continue;
                        }
                        // Everything before the client's FIN is in what was just peeked.
                        if ready.is_read_closed() {
                            return Ok(Hello::Closed);
                        }
                        // Wait for the next segment (this clears the readiness seen).
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
            }
        });
        match step {
            Ok(h) => return Ok(h),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where a connection of a frontend with routes by SNI goes.
pub(crate) enum Verdict {
    /// To this route's pool, untouched.
    Route(Arc<PoolState>),
    /// No route took it: the frontend's pool (`tcp`), or fulcrum's own TLS (`https`).
    Default(Arc<PoolState>),
    /// Closed: no ClientHello within the wait, or the socket failed (the ledger's outcome
    /// says which).
    Close,
}

/// Reads the ClientHello within `wait` and picks the route by its server name. Counts the
/// kind of first bytes (`FrontendStats::sni_hellos`) and the route taken (`SniRoutes`).
/// The routes are looked up after the wait, in the snapshot of that moment.
pub(crate) async fn choose(ledger: &mut Ledger, stream: &TcpStream, wait: Duration) -> Verdict {
    let peeked = tokio::time::timeout(wait, peek_hello(stream)).await;
    let stats = &ledger.ctx().stats.sni_hellos;
    let count = |i: usize| {
        if let Some(c) = stats.get(i) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let hello = match peeked {
        Ok(Ok(h)) => h,
        Ok(Err(_)) => {
            count(Hello::Closed.result());
            ledger.outcome = "client-error";
            return Verdict::Close;
        }
        Err(_) => {
            count(TIMED_OUT);
            ledger.outcome = "sni-timeout";
            return Verdict::Close;
        }
    };
    count(hello.result());
    let snap = ledger.shared().state.load();
    let Some(fe) = snap.frontend(&ledger.ctx().name) else {
        ledger.outcome = "stopped";
        return Verdict::Close;
    };
    let Some(default) = snap.pools.get(fe.pool) else {
        ledger.outcome = "stopped";
        return Verdict::Close;
    };
    let Some(routes) = &fe.sni else { return Verdict::Default(default.clone()) };
    let route = match &hello {
        Hello::Named(name) => routes.table.find(name).and_then(|i| routes.routes.get(i)),
        _ => None,
    };
    match route {
        Some(r) => {
            r.routed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Verdict::Route(r.pool.clone())
        }
        None => {
            routes.default.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Verdict::Default(default.clone())
        }
    }
}

/// An `https` frontend's passthrough routes, before any TLS: the ClientHello's name decides
/// whether the connection is fulcrum's to terminate (given back) or a server's, passed
/// through by the TCP path (`None`, as for a connection closed here). The wait is
/// `sni_timeout`, within the handshake's `header_timeout`.
pub(crate) async fn passthrough(
    mut ledger: Ledger,
    stream: TcpStream,
    header_timeout: Duration,
) -> Option<(Ledger, TcpStream)> {
    let routed = {
        let snap = ledger.shared().state.load();
        snap.frontend(&ledger.ctx().name).and_then(|fe| {
            let timeouts = crate::tcp::Timeouts { idle: fe.idle_timeout, send: fe.send_timeout };
            fe.sni.as_ref().map(|_| (fe.sni_timeout.min(header_timeout), timeouts))
        })
    };
    let Some((wait, timeouts)) = routed else { return Some((ledger, stream)) };
    match choose(&mut ledger, &stream, wait).await {
        Verdict::Route(pool) => {
            ledger.protocol = "tls-passthrough";
            crate::tcp::relay(ledger, stream, pool, timeouts).await;
            None
        }
        Verdict::Default(_) => Some((ledger, stream)),
        Verdict::Close => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A real ClientHello, as rustls' client writes it (TLS 1.3 and 1.2 offered, ALPN).
    // ring's provider, as the crate's (see tls.rs).
    #[allow(deprecated)]
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Without SNI rustls still needs a name to verify: an IP address is never sent.
        cfg.enable_sni = sni.is_some();
        let name =
            rustls_pki_types::ServerName::try_from(sni.unwrap_or("127.0.0.1").to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        out
    }

    /// `hello` cut into records of at most `size` payload bytes (as some clients and
    /// middleboxes send it).
    fn split_records(hello: &[u8], size: usize) -> Vec<u8> {
        let (header, body) = hello.split_at(RECORD_HEADER);
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend_from_slice(&header[..3]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Feeds `bytes` the way peeks see them: growing by `step` bytes from the start.
    fn read_growing(bytes: &[u8], step: usize) -> (Step, usize) {
        let mut r = HelloReader::new();
        let mut seen = step.min(bytes.len());
        let mut calls = 0;
        loop {
            calls += 1;
            match r.advance(&bytes[..seen]) {
                Step::Need(k) if seen < bytes.len() => {
                    assert!(k > seen, "asks for more than it has: {k} after {seen}");
                    seen = (seen + step).min(bytes.len());
                }
                other => return (other, calls),
            }
        }
    }

    #[test]
    fn the_name_comes_from_whole_records_in_any_number_of_segments() {
        let hello = client_hello(Some("a.example.com"));
        let named = Step::Done(Hello::Named("a.example.com".into()));
        // All at once: one call.
        assert_eq!(
            read_growing(&hello, hello.len()),
            (Step::Done(Hello::Named("a.example.com".into())), 1)
        );
        // Byte by byte, and split into many records.
        assert_eq!(read_growing(&hello, 1).0, named);
        let split = split_records(&hello, 100);
        assert!(split.len() >= hello.len() + 2 * RECORD_HEADER, "at least three records");
        assert_eq!(read_growing(&split, 7).0, named);
        assert_eq!(read_growing(&split, split.len()).0, named);
        // What it needs next is the next record header, then the whole record.
        let mut r = HelloReader::new();
        assert_eq!(r.advance(&hello[..3]), Step::Need(RECORD_HEADER));
        assert_eq!(r.advance(&hello[..RECORD_HEADER]), Step::Need(hello.len()));
        // No name, and an IP address (never sent as SNI).
        assert_eq!(read_growing(&client_hello(None), 64).0, Step::Done(Hello::Unnamed));
    }

    #[test]
    fn other_protocols_and_bad_hellos_are_not_tls() {
        let not_tls = Step::Done(Hello::NotTls);
        for bytes in
            [&b"GET / HTTP/1.1\r\n"[..], b"SSH-2.0-x", b"\x16", b"\x16\x02", b"\x17\x03\x03"]
        {
            let want = if bytes == b"\x16" {
                Step::Need(RECORD_HEADER)
            } else {
                Step::Done(Hello::NotTls)
            };
            assert_eq!(HelloReader::new().advance(bytes), want, "{bytes:?}");
        }
        // A handshake record that is no ClientHello, an empty record, garbage inside.
        let hello = client_hello(Some("a.test"));
        let mut garbage = hello.clone();
        for b in &mut garbage[RECORD_HEADER..] {
            *b = 0xff;
        }
        assert_eq!(HelloReader::new().advance(&garbage), not_tls);
        assert_eq!(HelloReader::new().advance(b"\x16\x03\x01\x00\x00"), not_tls);
        // A second record of another type before the hello is whole.
        let mut mixed = split_records(&hello, 100);
        mixed[RECORD_HEADER + 100] = 0x17;
        assert_eq!(read_growing(&mixed, mixed.len()).0, not_tls);
    }

    #[test]
    fn the_bounds_hold() {
        let hello = client_hello(Some("a.test"));
        // More records than allowed.
        let tiny = split_records(&hello, 8);
        assert!((hello.len() - RECORD_HEADER) / 8 > MAX_RECORDS);
        assert_eq!(read_growing(&tiny, tiny.len()).0, Step::Done(Hello::NotTls));
        let ok = split_records(&hello, (hello.len() - RECORD_HEADER).div_ceil(MAX_RECORDS));
        assert_eq!(read_growing(&ok, ok.len()).0, Step::Done(Hello::Named("a.test".into())));
        // A record announcing more than the payload bound is refused at its header, before
        // any of it is waited for.
        let header = [HANDSHAKE, 3, 1, 0x40, 0x01];
        assert_eq!(HelloReader::new().advance(&header), Step::Done(Hello::NotTls));
        let header = [HANDSHAKE, 3, 1, 0x40, 0x00];
        assert_eq!(HelloReader::new().advance(&header), Step::Need(RECORD_HEADER + MAX_PAYLOAD));
    }

    #[tokio::test]
    async fn peeking_leaves_every_byte_in_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let hello = split_records(&client_hello(Some("b.test")), 300);
        // Half now, the rest later: the peek waits for it.
        let (first, rest) = hello.split_at(200);
        c.write_all(first).await.unwrap();
        let peek = tokio::spawn(async move {
            let h = peek_hello(&s).await.unwrap();
            (h, s)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!peek.is_finished());
        c.write_all(rest).await.unwrap();
        c.write_all(b"after").await.unwrap();
        let (h, mut s) = peek.await.unwrap();
        assert_eq!(h, Hello::Named("b.test".into()));
        let mut all = vec![0u8; hello.len() + 5];
        s.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..hello.len()], &hello[..]);
        assert_eq!(&all[hello.len()..], b"after");

        // A client that closes halfway: closed, not waited for.
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        c.write_all(&hello[..100]).await.unwrap();
        c.shutdown().await.unwrap();
        let h = tokio::time::timeout(Duration::from_secs(5), peek_hello(&s)).await.unwrap();
        assert_eq!(h.unwrap(), Hello::Closed);
        // Plain text: at once.
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        c.write_all(b"PING\r\n").await.unwrap();
        assert_eq!(peek_hello(&s).await.unwrap(), Hello::NotTls);
    }

    /// The parse's cost per ClientHello (printed; `cargo test --release -p fulcrum-proxy
    /// acceptor_cost -- --nocapture` for the number in the module's notes).
    #[test]
    fn acceptor_cost() {
        let hello = client_hello(Some("a.example.com"));
        let n = 2_000;
        let started = std::time::Instant::now();
        for _ in 0..n {
            let step = HelloReader::new().advance(&hello);
            assert!(matches!(step, Step::Done(Hello::Named(_))));
        }
        let each = started.elapsed() / n;
        println!("ClientHello of {} bytes read in {each:?}", hello.len());
    }
}
