//! One active health probe of one server: a TCP connect, an HTTP/1.1 GET with a status range
//! and an optional body substring, or a send/expect exchange. The whole probe is bounded by
//! the check's timeout and every read by a byte limit; a failure comes back as a short reason
//! for the log ("connect refused", "status 500 not in 200-399"), never as a panic: the bytes
//! read here come from servers that may be broken in any way. HTTP heads and chunk-size lines
//! are parsed by `httparse`; this module only frames the body and searches it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_config::HealthKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Most bytes of an HTTP response a probe reads (head and body together).
const MAX_HTTP_RESPONSE: usize = 64 * 1024;

/// Longest a probe may take, whatever the config says.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Probes `addr`; `Ok` when it is healthy by `kind`, else why not.
pub async fn probe(kind: &HealthKind, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    // One deadline for every step, so a slow connect leaves less time for the answer rather
    // than the steps adding up to more than `timeout`.
    // Capped so that no configured timeout can overflow the clock.
    let deadline = Instant::now() + timeout.min(LONGEST_TIMEOUT);
    if let HealthKind::UdpSendExpect { send, expect } = kind {
        return match tokio::time::timeout_at(deadline, udp_send_expect(addr, send, expect)).await {
            Ok(r) => r,
            Err(_) => Err("timeout waiting for the answer".into()),
        };
    }
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_error(&e)),
        Err(_) => return Err("timeout connecting".into()),
    };
    let _ = stream.set_nodelay(true);
    let exchange = async {
        match kind {
            HealthKind::Tcp => Ok(()),
            HealthKind::Http { path, host, status, body } => {
                http(&mut stream, addr, path, host.as_deref(), *status, body.as_deref()).await
            }
            HealthKind::SendExpect { send, expect } => send_expect(&mut stream, send, expect).await,
            HealthKind::UdpSendExpect { .. } => Ok(()),
        }
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => Err("timeout waiting for the answer".into()),
    }
}

/// One datagram out from a fresh connected socket, one back; the answer must start with
/// `expect`. A refused port shows up as an ICMP error on the connected socket.
async fn udp_send_expect(addr: SocketAddr, send: &[u8], expect: &[u8]) -> Result<(), String> {
    let local: SocketAddr =
        if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let s = tokio::net::UdpSocket::bind(local).await.map_err(|e| io_error("binding", &e))?;
    s.connect(addr).await.map_err(|e| connect_error(&e))?;
    s.send(send).await.map_err(|e| io_error("sending", &e))?;
    let mut buf = vec![0u8; 2048];
    let n = s.recv(&mut buf).await.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => "port unreachable".to_string(),
        _ => io_error("reading", &e),
    })?;
    let got = buf.get(..n).unwrap_or_default();
    if got.starts_with(expect) {
        Ok(())
    } else {
        Err(format!("answer does not start with {:?}", String::from_utf8_lossy(expect)))
    }
}

fn connect_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".into(),
        _ => format!("connect failed: {e}"),
    }
}

fn io_error(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => format!("connection reset while {what}"),
        _ => format!("{what} failed: {e}"),
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    (lo, hi): (u16, u16),
    want_body: Option<&str>,
) -> Result<(), String> {
    let host = match host {
        Some(h) => h.to_string(),
        None => addr.to_string(),
    };
    // The config parser checks the path; the host is checked here so that no value can
    // smuggle a header or a second request into the probe.
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("invalid Host header value {host:?}"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("invalid path {path:?}"));
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         User-Agent: fulcrum-health\r\nAccept: */*\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| io_error("sending the request", &e))?;

    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut eof = false;
    let head = loop {
        match parse_head(&buf)? {
            Some(h) => break h,
            None if eof => {
                return Err(if buf.is_empty() {
                    "connection closed without an answer".into()
                } else {
                    "connection closed in the response head".into()
                });
            }
            None if buf.len() >= MAX_HTTP_RESPONSE => {
                return Err("response head larger than 64 KiB".into());
            }
            None => eof = read_some(stream, &mut buf).await?,
        }
    };
    if !(lo..=hi).contains(&head.status) {
        return Err(if lo == hi {
            format!("status {} is not {lo}", head.status)
        } else {
            format!("status {} not in {lo}-{hi}", head.status)
        });
    }
    let Some(want) = want_body else { return Ok(()) };
    let want = want.as_bytes();
    loop {
        let raw = buf.get(head.len..).unwrap_or_default();
        let (body, complete) = match head.framing {
            Framing::Chunked => decode_chunked(raw)?,
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                (raw.get(..n).unwrap_or(raw).to_vec(), raw.len() >= n)
            }
            Framing::UntilClose => (raw.to_vec(), false),
        };
        if contains(&body, want) {
            return Ok(());
        }
        if complete || eof || buf.len() >= MAX_HTTP_RESPONSE {
            let partial = if complete || eof { "" } else { " (in the first 64 KiB)" };
            return Err(format!(
                "body does not contain {:?}{partial}",
                String::from_utf8_lossy(want)
            ));
        }
        eof = read_some(stream, &mut buf).await?;
    }
}

/// Reads more bytes into `buf` without letting it grow past [`MAX_HTTP_RESPONSE`]; true on EOF.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<bool, String> {
    let room = MAX_HTTP_RESPONSE.saturating_sub(buf.len());
    let mut chunk = [0u8; 4096];
    let want = room.min(chunk.len());
    let Some(dst) = chunk.get_mut(..want) else { return Ok(true) };
    let n = stream.read(dst).await.map_err(|e| io_error("reading the answer", &e))?;
    buf.extend_from_slice(dst.get(..n).unwrap_or_default());
    Ok(n == 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the status line and headers, the blank line included.
    len: usize,
    framing: Framing,
}

/// Most header lines a probe's response may carry (hyper's default limit too); more is a
/// failed probe. A 64 KiB head holds at most this many anyway in any sane response.
const MAX_HEADERS: usize = 100;

/// Parses a response head from the start of `buf` with `httparse`: `Ok(None)` when more bytes
/// are needed, `Err` when the bytes are not an HTTP/1.0 or HTTP/1.1 response. Garbage is
/// rejected as soon as its first bytes show it, not only when a line is complete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(head_error(e)),
    };
    let status = response.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(format!("invalid status code {status:03} in the response"));
    }
    let mut framing = Framing::UntilClose;
    for h in response.headers.iter() {
        let value = trim(h.value);
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked is the last coding when present (RFC 9112 §6.3); it wins over a length.
            let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
            if last.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n = parse_decimal(value).ok_or("invalid Content-Length in the response")?;
            framing = Framing::Length(n);
        }
    }
    Ok(Some(Head { status, len, framing }))
}

/// The log's reason for a head `httparse` refused.
fn head_error(e: httparse::Error) -> String {
    use httparse::Error as E;
    match e {
        E::Version => "not an HTTP/1.x response".into(),
        E::Status => "invalid status line in the response".into(),
        E::HeaderName | E::HeaderValue | E::NewLine | E::Token => {
            format!("malformed response head: {e}")
        }
        E::TooManyHeaders => format!("more than {MAX_HEADERS} headers in the response"),
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

/// Decodes as much of a chunked body as `raw` holds: the data so far and whether the last
/// chunk was seen. Chunk-size lines (with extensions, which are ignored) are parsed by
/// `httparse::parse_chunk_size`. Trailers are not needed for a body check and are not read.
fn decode_chunked(raw: &[u8]) -> Result<(Vec<u8>, bool), String> {
    const BAD: &str = "malformed chunked body";
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = raw.get(pos..).unwrap_or_default();
        // httparse reads an empty size line as 0; a size needs at least one digit.
        if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
            return Err(BAD.into());
        }
        let (line_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(done)) => done,
            Ok(httparse::Status::Partial) => return Ok((out, false)),
            Err(httparse::InvalidChunkSize) => return Err(BAD.into()),
        };
        if size == 0 {
            return Ok((out, true));
        }
        let data = rest.get(line_len..).unwrap_or_default();
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if data.len() < size {
            out.extend_from_slice(data);
            return Ok((out, false));
        }
        out.extend_from_slice(data.get(..size).unwrap_or_default());
        // The chunk's data is followed by CRLF (or a bare LF).
        let after = data.get(size..).unwrap_or_default();
        let skip = if after.starts_with(b"\r\n") {
            2
        } else if after.starts_with(b"\n") {
            1
        } else if after.is_empty() || after == b"\r" {
            return Ok((out, false));
        } else {
            return Err(BAD.into());
        };
        pos += line_len + size + skip;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

async fn send_expect(stream: &mut TcpStream, send: &[u8], expect: &[u8]) -> Result<(), String> {
    if !send.is_empty() {
        stream.write_all(send).await.map_err(|e| io_error("sending", &e))?;
    }
    // Only the first `expect.len()` bytes matter, so that is all that is read: the read is
    // bounded by the config, whatever the server sends.
    let mut got = vec![0u8; expect.len()];
    let mut filled = 0;
    while filled < got.len() {
        let dst = got.get_mut(filled..).unwrap_or_default();
        let n = stream.read(dst).await.map_err(|e| io_error("reading the answer", &e))?;
        if n == 0 {
            if filled == 0 {
                return Err("connection closed without an answer".into());
            }
            break;
        }
        filled += n;
        // A wrong first byte is as final as a wrong last one: stop waiting.
        if got.get(..filled) != expect.get(..filled) {
            break;
        }
    }
    let got = got.get(..filled).unwrap_or_default();
    if got == expect {
        return Ok(());
    }
    Err(format!(
        "answer does not start with {:?} (got {:?})",
        String::from_utf8_lossy(expect),
        String::from_utf8_lossy(got.get(..got.len().min(64)).unwrap_or_default())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_millis(500);

    fn http_check(status: (u16, u16), body: Option<&str>) -> HealthKind {
        HealthKind::Http {
            path: "/health".into(),
            host: None,
            status,
            body: body.map(str::to_string),
        }
    }

    fn send_expect_check(send: &str, expect: &str) -> HealthKind {
        HealthKind::SendExpect { send: send.into(), expect: expect.into() }
    }

    /// A server that answers each connection with `answer` after reading what the client
    /// sent (up to the end of an HTTP head, or 64 bytes), then closes. Returns its address
    /// and a receiver of the requests it saw.
    async fn answering(
        answer: Vec<u8>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let answer = answer.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while !req.ends_with(b"\r\n\r\n") && req.len() < 64 {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                        if !req.starts_with(b"GET ") {
                            break;
                        }
                    }
                    let _ = tx.send(req);
                    let _ = s.write_all(&answer).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, rx)
    }

    /// A port nothing listens on.
    fn refused_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_ok_and_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(probe(&HealthKind::Tcp, l.local_addr().unwrap(), T).await, Ok(()));
        assert_eq!(probe(&HealthKind::Tcp, refused_addr(), T).await, Err("connect refused".into()));
        let e = probe(&http_check((200, 399), None), refused_addr(), T).await;
        assert_eq!(e, Err("connect refused".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_200_passes_and_sends_a_proper_request() {
        let (addr, mut seen) =
            answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
        assert_eq!(probe(&http_check((200, 399), Some("ok")), addr, T).await, Ok(()));
        let req = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
        assert!(req.contains("\r\nUser-Agent: fulcrum-health\r\n"), "{req}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_uses_the_configured_host() {
        let (addr, mut seen) = answering(b"HTTP/1.0 204 No Content\r\n\r\n".to_vec()).await;
        let kind = HealthKind::Http {
            path: "/".into(),
            host: Some("app.example".into()),
            status: (200, 299),
            body: None,
        };
        assert_eq!(probe(&kind, addr, T).await, Ok(()));
        let req = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert!(req.contains("\r\nHost: app.example\r\n"), "{req}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_500_fails_with_the_status() {
        let (addr, _seen) =
            answering(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec())
                .await;
        let e = probe(&http_check((200, 399), None), addr, T).await;
        assert_eq!(e, Err("status 500 not in 200-399".into()));
        let e = probe(&http_check((200, 200), None), addr, T).await;
        assert_eq!(e, Err("status 500 is not 200".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_wrong_body_fails() {
        let (addr, _seen) =
            answering(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nstarting".to_vec()).await;
        let e = probe(&http_check((200, 399), Some("ok")), addr, T).await;
        assert_eq!(e, Err("body does not contain \"ok\"".into()));
        // Without a body expectation the status alone decides.
        assert_eq!(probe(&http_check((200, 399), None), addr, T).await, Ok(()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_body_only_counts_within_content_length() {
        let (addr, _seen) =
            answering(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot ok".to_vec()).await;
        let e = probe(&http_check((200, 399), Some("ok")), addr, T).await;
        assert_eq!(e, Err("body does not contain \"ok\"".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_chunked_body_is_decoded() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       3\r\nall\r\n4;x=y\r\n is \r\n2\r\nok\r\n0\r\n\r\n";
        let (addr, _seen) = answering(answer.to_vec()).await;
        assert_eq!(probe(&http_check((200, 399), Some("all is ok")), addr, T).await, Ok(()));
        // The framing bytes are not part of the body: "ok\r\n0" spans them.
        let e = probe(&http_check((200, 399), Some("ok\r\n0")), addr, T).await;
        assert_eq!(e, Err("body does not contain \"ok\\r\\n0\"".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_body_until_close() {
        let (addr, _seen) = answering(b"HTTP/1.1 200 OK\r\n\r\nstatus: ok\n".to_vec()).await;
        assert_eq!(probe(&http_check((200, 399), Some("ok")), addr, T).await, Ok(()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_garbage_fails_without_panicking() {
        for answer in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"\r\n\r\n",
            b"\xff\xfe\x00garbage",
        ] {
            let (addr, _seen) = answering(answer.to_vec()).await;
            let r = probe(&http_check((200, 399), Some("ok")), addr, T).await;
            assert!(r.is_err(), "{:?} was accepted", String::from_utf8_lossy(answer));
        }
        let (addr, _seen) = answering(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()).await;
        let e = probe(&http_check((200, 399), None), addr, T).await;
        assert_eq!(e, Err("connection closed in the response head".into()));
        let (addr, _seen) = answering(Vec::new()).await;
        let e = probe(&http_check((200, 399), None), addr, T).await;
        assert_eq!(e, Err("connection closed without an answer".into()));
        let bad_chunks =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n";
        let (addr, _seen) = answering(bad_chunks.to_vec()).await;
        let e = probe(&http_check((200, 399), Some("ok")), addr, T).await;
        assert_eq!(e, Err("malformed chunked body".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_reads_at_most_64_kib() {
        // A head that never ends: the probe gives up at the limit, before the timeout.
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 200 * 1024));
        let (addr, _seen) = answering(endless).await;
        let e = probe(&http_check((200, 399), None), addr, Duration::from_secs(5)).await;
        assert_eq!(e, Err("response head larger than 64 KiB".into()));
        // A body without the wanted text, longer than the limit.
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'b', 200 * 1024));
        let (addr, _seen) = answering(big).await;
        let e = probe(&http_check((200, 399), Some("ok")), addr, Duration::from_secs(5)).await;
        assert_eq!(e, Err("body does not contain \"ok\" (in the first 64 KiB)".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_rejects_a_host_that_would_inject_headers() {
        let (addr, _seen) = answering(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()).await;
        let kind = HealthKind::Http {
            path: "/".into(),
            host: Some("a\r\nX-Evil: 1".into()),
            status: (200, 399),
            body: None,
        };
        assert!(probe(&kind, addr, T).await.unwrap_err().starts_with("invalid Host"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn send_expect_right_prefix_passes() {
        let (addr, mut seen) = answering(b"+PONG\r\nand more".to_vec()).await;
        assert_eq!(probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await, Ok(()));
        assert_eq!(seen.recv().await.unwrap(), b"PING\r\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn send_expect_wrong_answer_fails() {
        let (addr, _seen) = answering(b"-ERR unknown command\r\n".to_vec()).await;
        let e = probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await;
        assert_eq!(e, Err("answer does not start with \"+PONG\" (got \"-ERR \")".into()));
        // A short answer followed by EOF is a wrong answer too.
        let (addr, _seen) = answering(b"+PO".to_vec()).await;
        let e = probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await;
        assert_eq!(e, Err("answer does not start with \"+PONG\" (got \"+PO\")".into()));
        let (addr, _seen) = answering(b"\x00\xff\x13garbage".to_vec()).await;
        assert!(probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await.is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Accepts and holds connections, never writes.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let t = Duration::from_millis(100);
        for kind in [http_check((200, 399), None), send_expect_check("PING\r\n", "+PONG")] {
            let started = std::time::Instant::now();
            assert_eq!(probe(&kind, addr, t).await, Err("timeout waiting for the answer".into()));
            let took = started.elapsed();
            assert!(took >= t && took < t + Duration::from_millis(400), "took {took:?}");
        }
        holder.abort();
    }

    /// Runs `http` over an in-memory pipe that carries at most `piece` bytes per read, with
    /// a peer that reads the request head and then writes `answer` and closes.
    async fn http_in_pieces(
        answer: &[u8],
        piece: usize,
        want_body: Option<&str>,
    ) -> Result<(), String> {
        let (mut ours, mut theirs) = tokio::io::duplex(piece);
        let answer = answer.to_vec();
        let peer = tokio::spawn(async move {
            let mut req = Vec::new();
            let mut b = [0u8; 64];
            while !req.ends_with(b"\r\n\r\n") {
                match theirs.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let _ = theirs.write_all(&answer).await;
        });
        let addr: SocketAddr = ([127, 0, 0, 1], 80).into();
        let exchange = http(&mut ours, addr, "/", None, (200, 399), want_body);
        let r = tokio::time::timeout(Duration::from_secs(5), exchange).await;
        // Closing our end ends a peer still writing what the probe did not need.
        drop(ours);
        peer.await.unwrap();
        r.unwrap_or_else(|_| Err("test deadline".into()))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_response_split_across_many_reads() {
        let length = &b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 9\r\n\r\nall is ok"[..];
        let chunked = &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\nall \r\n5;x=y\r\nis ok\r\n0\r\n\r\n"[..];
        let until_close = &b"HTTP/1.0 200 OK\r\n\r\nall is ok"[..];
        for piece in [1, 2, 3, 7, 64] {
            for answer in [length, chunked, until_close] {
                let r = http_in_pieces(answer, piece, Some("all is ok")).await;
                assert_eq!(
                    r,
                    Ok(()),
                    "{piece}-byte reads of {:?}",
                    String::from_utf8_lossy(answer)
                );
                let r = http_in_pieces(answer, piece, Some("not there")).await;
                assert_eq!(r, Err("body does not contain \"not there\"".into()), "{piece}");
            }
            let r = http_in_pieces(b"HTTP/1.1 503 Busy\r\n\r\n", piece, None).await;
            assert_eq!(r, Err("status 503 not in 200-399".into()));
            let r = http_in_pieces(b"HTTP/1.1 200 OK\r\nServer", piece, None).await;
            assert_eq!(r, Err("connection closed in the response head".into()));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_oversized_head_fails_cleanly() {
        // Well-formed headers, but the blank line that ends the head lies past 64 KiB.
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend_from_slice(b"X-Pad: ");
        big.extend(std::iter::repeat_n(b'p', 70 * 1024));
        big.extend_from_slice(b"\r\n\r\nok");
        let (addr, _seen) = answering(big).await;
        let e = probe(&http_check((200, 399), None), addr, Duration::from_secs(5)).await;
        assert_eq!(e, Err("response head larger than 64 KiB".into()));
        // Too many header lines in a small head.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..200 {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let (addr, _seen) = answering(many).await;
        let e = probe(&http_check((200, 399), None), addr, T).await;
        assert_eq!(e, Err("more than 100 headers in the response".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_invalid_status_line_fails_with_a_reason() {
        for (answer, reason) in [
            (&b"HTTP/1.1 2x0 OK\r\n\r\n"[..], "invalid status line in the response"),
            (b"HTTP/1.1 99 OK\r\n\r\n", "invalid status line in the response"),
            (b"HTTP/1.1 000 Zero\r\n\r\n", "invalid status code 000 in the response"),
            (b"ICY 200 OK\r\n\r\n", "not an HTTP/1.x response"),
        ] {
            let (addr, _seen) = answering(answer.to_vec()).await;
            let e = probe(&http_check((200, 399), None), addr, T).await;
            assert_eq!(e, Err(reason.into()), "{:?}", String::from_utf8_lossy(answer));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn partial_head_then_silence_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Sends half a head, then holds the connection open without another byte.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-").await;
                held.push(s);
            }
        });
        let t = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let e = probe(&http_check((200, 399), None), addr, t).await;
        assert_eq!(e, Err("timeout waiting for the answer".into()));
        let took = started.elapsed();
        assert!(took >= t && took < t + Duration::from_millis(400), "took {took:?}");
        holder.abort();
    }

    #[test]
    fn status_lines() {
        let status = |line: &[u8]| parse_head(&[line, b"\r\n\r\n"].concat());
        assert_eq!(status(b"HTTP/1.1 200 OK").map(|h| h.map(|h| h.status)), Ok(Some(200)));
        assert_eq!(status(b"HTTP/1.0 404").map(|h| h.map(|h| h.status)), Ok(Some(404)));
        assert_eq!(status(b"HTTP/1.1 503 ").map(|h| h.map(|h| h.status)), Ok(Some(503)));
        for bad in [
            &b"HTTP/1.1"[..],
            b"HTTP/1.1 ",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000",
            b"HTTP/1.1 099 x",
            b"HTTP/1.x 200",
            b"HTTP/1.2 200",
            b"HTTP/1.1  200",
            b"HTTP/1.1 +20",
            b"http/1.1 200",
        ] {
            assert!(status(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Blank lines before the status line are skipped (RFC 9112 §2.2), so blank lines
        // alone are an unfinished head, which fails when the connection closes.
        assert_eq!(status(b""), Ok(None));
    }

    #[test]
    fn invalid_heads_have_clear_reasons() {
        for (answer, reason) in [
            (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], "not an HTTP/1.x response"),
            (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x response"),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "invalid status line in the response"),
            (b"HTTP/1.1 200OK\r\n\r\n", "invalid status line in the response"),
            (b"HTTP/1.1 099 Low\r\n\r\n", "invalid status code 099 in the response"),
            (
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                "malformed response head: invalid header name",
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
                "malformed response head: invalid header value",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
                "invalid Content-Length in the response",
            ),
        ] {
            assert_eq!(
                parse_head(answer),
                Err(reason.into()),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Err("more than 100 headers in the response".into()));
    }

    #[test]
    fn every_prefix_of_a_head_is_unfinished() {
        let full = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(parse_head(&full[..n]), Ok(None), "prefix {n}");
        }
        let h = parse_head(full).unwrap().unwrap();
        assert_eq!((h.status, h.len, h.framing), (200, full.len(), Framing::Length(2)));
    }

    #[test]
    fn heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Ok(None));
        assert_eq!(parse_head(b"HTTP/1."), Ok(None));
        assert_eq!(parse_head(b"HTT"), Ok(None));
        assert!(parse_head(b"HTX").is_err());
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length:  12 \r\n\r\nbody").unwrap();
        assert_eq!(h, Some(Head { status: 200, len: 41, framing: Framing::Length(12) }));
        let h =
            parse_head(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\nContent-Length: 5\n\n");
        assert_eq!(h.unwrap().map(|h| h.framing), Some(Framing::Chunked));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert!(h.is_err());
    }

    #[test]
    fn chunked_decoding_in_pieces() {
        let full = b"5\r\nhello\r\n1;ext\r\n!\r\n0\r\n\r\n";
        assert_eq!(decode_chunked(full), Ok((b"hello!".to_vec(), true)));
        // Every prefix decodes to a prefix of the body without error.
        for n in 0..full.len() {
            let (data, done) = decode_chunked(&full[..n]).unwrap();
            assert!(b"hello!".starts_with(&data), "prefix {n}: {data:?}");
            assert!(!done || n >= full.len() - 2, "prefix {n} claims completion");
        }
        assert!(decode_chunked(b"5\r\nhelloXX").is_err());
        assert!(decode_chunked(b"fffffffffffffffff\r\n").is_err());
        assert!(decode_chunked(b"\r\n").is_err());
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"abc", b""));
        assert!(contains(b"abc", b"bc"));
        assert!(!contains(b"ab", b"abc"));
    }
}
