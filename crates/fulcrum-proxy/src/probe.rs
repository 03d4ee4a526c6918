//! One active health probe of one server: a TCP connect, an HTTP/1.1 GET with a status range
//! and an optional body substring, or a send/expect exchange; over TLS when the pool has
//! `[pool.X.tls]`. The whole probe is bounded by
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

/// TLS for a probe of a pool with `[pool.X.tls]`: the pool's settings and the server's name.
pub struct ProbeTls {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls_pki_types::ServerName<'static>,
}

/// Probes `addr`; `Ok` when it is healthy by `kind`, else why not. With `tls`, the probe
/// goes through a TLS handshake first, and a failed handshake is a failed probe.
pub async fn probe(
    kind: &HealthKind,
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Result<(), String> {
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
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_error(&e)),
        Err(_) => return Err("timeout connecting".into()),
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else { return exchange(kind, stream, addr, deadline).await };
    let handshake = tls.connector.connect(tls.name.clone(), stream);
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(s)) => exchange(kind, s, addr, deadline).await,
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("timeout in the TLS handshake".into()),
    }
}

/// What the check asks of a connected (and maybe TLS) stream, by `deadline`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    kind: &HealthKind,
    mut stream: S,
    addr: SocketAddr,
    deadline: Instant,
) -> Result<(), String> {
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

async fn send_expect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    send: &[u8],
    expect: &[u8],
) -> Result<(), String> {
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
#[path = "probe_tests.rs"]
mod tests;
