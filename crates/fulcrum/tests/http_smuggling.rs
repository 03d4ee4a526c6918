//! Request smuggling against `protocol = "http"` frontends. Each test writes exact bytes from
//! a raw client socket through the real binary to a raw backend that records every byte it
//! receives and parses it strictly (one framing header, CRLF only, chunked framing checked
//! byte by byte). A hostile request must be refused (nothing reaches the backend) or
//! normalised (the backend sees exactly one well-framed request), and the request hidden in
//! it, `GET /smuggled`, never reaches the backend as a request of its own.
//!
//! Synchronisation: the client reads until the proxy closes (or until the one answer it
//! waits for is complete); then the daemon is killed, so every connection it had to the
//! backend ends, and the backend is settled with a marker connection (accepted after every
//! connection the daemon made) before its record is read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The request hidden in the hostile ones.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
/// The backend's answer to every complete request.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// How long the client waits for the proxy's answer or close.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// Bodies and heads the backend accepts; the tests send far less.
const MAX_MESSAGE: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// The recording backend.

/// One request the backend parsed completely (and answered).
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Req {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// Everything one connection to the backend carried.
#[derive(Debug, Clone)]
struct Conn {
    peer: SocketAddr,
    raw: Vec<u8>,
    requests: Vec<Req>,
    /// Bytes received that are not (yet) part of a complete request.
    pending: usize,
    /// Why the backend stopped reading: framing it would have had to guess at.
    error: Option<String>,
    /// The backend has read this connection to its end (or given up on it).
    closed: bool,
}

struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    fn start() -> Recorder {
        let l: TcpListener = listen_any();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let c = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, peer)) = l.accept().await else { continue };
                let idx = {
                    let mut c = c.lock().unwrap();
                    c.push(Conn {
                        peer,
                        raw: Vec::new(),
                        requests: Vec::new(),
                        pending: 0,
                        error: None,
                        closed: false,
                    });
                    c.len() - 1
                };
                tokio::spawn(record(s, idx, c.clone()));
            }
        });
        Recorder { addr, conns, task }
    }

    /// Every connection the (killed) daemon made, each read to its end. A marker connection
    /// from the test is accepted after all of them (one listen queue, first in first out);
    /// once it is in and every connection has ended, the record is complete.
    async fn settle(&self) -> Vec<Conn> {
        let marker = TcpStream::connect(self.addr).await.unwrap();
        let local = marker.local_addr().unwrap();
        drop(marker);
        wait_until_async(Duration::from_secs(10), "the backend to read every connection", || {
            let c = self.conns.lock().unwrap();
            c.iter().any(|c| c.peer == local) && c.iter().all(|c| c.closed)
        })
        .await;
        self.conns.lock().unwrap().iter().filter(|c| c.peer != local).cloned().collect()
    }
}

async fn record(mut s: TcpStream, idx: usize, conns: Arc<Mutex<Vec<Conn>>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        conns.lock().unwrap()[idx].raw.extend_from_slice(&chunk[..n]);
        loop {
            match parse_request(&buf) {
                Ok(Some((req, used))) => {
                    buf.drain(..used);
                    {
                        let mut c = conns.lock().unwrap();
                        c[idx].requests.push(req);
                        c[idx].pending = buf.len();
                    }
                    if s.write_all(OK).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) => {
                    conns.lock().unwrap()[idx].pending = buf.len();
                    break;
                }
                Err(e) => {
                    conns.lock().unwrap()[idx].error = Some(e);
                    break 'read;
                }
            }
        }
    }
    let mut c = conns.lock().unwrap();
    c[idx].pending = buf.len();
    c[idx].closed = true;
}

/// One request from the front of `buf`: `Ok(None)` while it is incomplete, `Err` for
/// anything a strict server would have to guess at (two framing headers, a bare LF, a
/// malformed chunk).
fn parse_request(buf: &[u8]) -> Result<Option<(Req, usize)>, String> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut hs);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_MESSAGE => {
            return Err("head too large".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("head does not parse: {e}")),
    };
    if let Some(i) = bare_lf(&buf[..head_len]) {
        return Err(format!("bare LF at byte {i} of the head"));
    }
    let headers: Vec<(String, Vec<u8>)> =
        r.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
    let mut req = Req {
        method: r.method.unwrap_or_default().to_string(),
        path: r.path.unwrap_or_default().to_string(),
        headers,
        body: Vec::new(),
    };
    let te = req.values("transfer-encoding");
    let cl = req.values("content-length");
    let rest = &buf[head_len..];
    let used = match (te.as_slice(), cl.as_slice()) {
        ([], []) => 0,
        ([], [v]) => {
            let len = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|n| *n <= MAX_MESSAGE)
                .ok_or_else(|| format!("content-length {:?}", v.escape_ascii().to_string()))?;
            if rest.len() < len {
                return Ok(None);
            }
            req.body = rest[..len].to_vec();
            len
        }
        ([v], []) if v.eq_ignore_ascii_case(b"chunked") => match dechunk(rest)? {
            Some((body, used)) => {
                req.body = body;
                used
            }
            None => return Ok(None),
        },
        (te, cl) => {
            return Err(format!(
                "framing: transfer-encoding {:?}, content-length {:?}",
                te.iter().map(|v| v.escape_ascii().to_string()).collect::<Vec<_>>(),
                cl.iter().map(|v| v.escape_ascii().to_string()).collect::<Vec<_>>(),
            ));
        }
    };
    Ok(Some((req, head_len + used)))
}

/// Where a LF not preceded by CR is, if anywhere.
fn bare_lf(b: &[u8]) -> Option<usize> {
    (0..b.len()).find(|&i| b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A chunked body from the front of `b`, strictly (hex sizes of at most 16 digits, CRLF
/// everywhere): the data and how many bytes it took, `Ok(None)` while incomplete.
fn dechunk(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = find_crlf(&b[pos..]) else {
            if let Some(i) = bare_lf(&b[pos..]) {
                return Err(format!("bare LF in a chunk line at byte {}", pos + i));
            }
            return Ok(None);
        };
        let line = &b[pos..pos + eol];
        if line.contains(&b'\n') {
            return Err("bare LF in a chunk size line".into());
        }
        let digits = line.split(|c| *c == b';').next().unwrap_or_default();
        if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("chunk size line {:?}", line.escape_ascii().to_string()));
        }
        let size = usize::from_str_radix(std::str::from_utf8(digits).unwrap(), 16)
            .ok()
            .filter(|n| *n <= MAX_MESSAGE)
            .ok_or_else(|| format!("chunk size {:?}", line.escape_ascii().to_string()))?;
        pos += eol + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let Some(eol) = find_crlf(&b[pos..]) else { return Ok(None) };
                let line = &b[pos..pos + eol];
                if line.contains(&b'\n') {
                    return Err("bare LF in the trailer".into());
                }
                pos += eol + 2;
                if line.is_empty() {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&b[pos..pos + size]);
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

// ---------------------------------------------------------------------------------------
// The client and one case end to end.

#[derive(Clone, Copy)]
enum Stop {
    /// Read until the proxy closes the connection (or the deadline).
    AtClose,
    /// Read until one answer is complete (and, when it says `connection: close`, until the
    /// proxy closes), or the proxy closes (or the deadline).
    AfterOneAnswer,
}

struct Answer {
    raw: Vec<u8>,
    statuses: Vec<u16>,
    /// The proxy closed the connection (FIN or reset) before the deadline.
    closed: bool,
}

/// The status codes of the complete answers in `raw`.
fn statuses(raw: &[u8]) -> Vec<u16> {
    answers(raw).into_iter().map(|(code, _)| code).collect()
}

/// The complete answers in `raw`: status code and whether it says `connection: close`.
fn answers(raw: &[u8]) -> Vec<(u16, bool)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        let Ok(httparse::Status::Complete(n)) = r.parse(&raw[pos..]) else { break };
        let code = r.code.unwrap_or_default();
        let value = |name: &str| {
            r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
        };
        let body_len = if value("transfer-encoding").is_some() {
            match dechunk(&raw[pos + n..]) {
                Ok(Some((_, used))) => used,
                _ => break,
            }
        } else if let Some(v) = value("content-length") {
            match std::str::from_utf8(v).ok().and_then(|s| s.parse::<usize>().ok()) {
                Some(len) if raw.len() >= pos + n + len => len,
                _ => break,
            }
        } else {
            0
        };
        let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        out.push((code, close));
        pos += n + body_len;
    }
    out
}

async fn send_raw(front: SocketAddr, request: &[u8], stop: Stop) -> Answer {
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(request).await.unwrap();
    let end = tokio::time::Instant::now() + CLIENT_DEADLINE;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut closed = false;
    loop {
        if let (Stop::AfterOneAnswer, Some((_, false))) = (stop, answers(&raw).first()) {
            break;
        }
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let statuses = statuses(&raw);
    Answer { raw, statuses, closed }
}

/// One hostile request through a fresh daemon, and what each side saw.
struct Case {
    sent: Vec<u8>,
    answer: Answer,
    conns: Vec<Conn>,
}

impl Case {
    async fn run(request: impl AsRef<[u8]>, stop: Stop) -> Case {
        let sent = request.as_ref().to_vec();
        let backend = Recorder::start();
        let d = Daemon::run_config(&format!(
            r#"
workers = 1

[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[pool.app]
servers = ["{}"]
connect_timeout = "1s"
"#,
            backend.addr
        ));
        let answer = send_raw(d.addr("web"), &sent, stop).await;
        // Killing the daemon ends every connection it had to the backend.
        drop(d);
        let conns = backend.settle().await;
        let case = Case { sent, answer, conns };
        eprintln!("{}", case.report());
        case
    }

    fn requests(&self) -> Vec<&Req> {
        self.conns.iter().flat_map(|c| &c.requests).collect()
    }

    fn backend_bytes(&self) -> usize {
        self.conns.iter().map(|c| c.raw.len()).sum()
    }

    /// What was sent and what each side saw, for failure messages.
    fn report(&self) -> String {
        let mut s = format!(
            "sent: {}\nclient got (statuses {:?}, closed {}): {}\n",
            self.sent.escape_ascii(),
            self.answer.statuses,
            self.answer.closed,
            self.answer.raw.escape_ascii()
        );
        if self.conns.is_empty() {
            s.push_str("backend: no connection\n");
        }
        for (i, c) in self.conns.iter().enumerate() {
            s.push_str(&format!(
                "backend connection {i}: {} request(s) {:?}, {} byte(s) pending, error {:?}, \
                 received: {}\n",
                c.requests.len(),
                c.requests.iter().map(|r| format!("{} {}", r.method, r.path)).collect::<Vec<_>>(),
                c.pending,
                c.error,
                c.raw.escape_ascii()
            ));
        }
        s
    }

    /// `GET /smuggled` never reached the backend as a request: the backend's strict parse
    /// never saw it, and no message boundary in the raw bytes starts with it.
    fn assert_nothing_smuggled(&self) {
        let report = self.report();
        for r in self.requests() {
            assert!(
                !r.path.contains("smuggled"),
                "the smuggled request reached the backend\n{report}"
            );
        }
        for c in &self.conns {
            let raw = &c.raw;
            let line = b"GET /smuggled";
            let at_boundary = raw.starts_with(line)
                || raw
                    .windows(4 + line.len())
                    .any(|w| w.starts_with(b"\r\n\r\n") && &w[4..] == line)
                || raw.windows(2 + line.len()).any(|w| w.starts_with(b"\n\n") && &w[2..] == line);
            assert!(!at_boundary, "a request line for /smuggled reached the backend\n{report}");
        }
    }

    /// Refused with one of `codes` and the connection closed; not one byte reached the
    /// backend.
    fn assert_refused(&self, codes: &[u16]) {
        let report = self.report();
        assert!(
            self.answer.statuses.len() == 1 && codes.contains(&self.answer.statuses[0]),
            "expected exactly one answer with a status in {codes:?}\n{report}"
        );
        assert!(self.answer.closed, "the proxy kept the connection open after refusing\n{report}");
        assert_eq!(self.backend_bytes(), 0, "bytes reached the backend\n{report}");
        self.assert_nothing_smuggled();
    }

    /// Forwarded as exactly one request the backend parsed without guessing (one framing
    /// header, CRLF only, nothing left over on any connection), answered 200 to the client.
    fn assert_forwarded_once(&self) -> Req {
        let report = self.report();
        self.assert_nothing_smuggled();
        for c in &self.conns {
            assert!(c.error.is_none(), "the backend could not parse what arrived\n{report}");
            assert_eq!(
                c.pending, 0,
                "bytes beyond a complete request reached the backend\n{report}"
            );
        }
        let reqs = self.requests();
        assert_eq!(reqs.len(), 1, "expected exactly one request at the backend\n{report}");
        assert_eq!(self.answer.statuses, [200], "expected the backend's one answer\n{report}");
        reqs[0].clone()
    }

    /// Refused with a 400 (nothing forwarded), or forwarded as one unambiguous request;
    /// returns the request in the second case.
    fn assert_refused_or_forwarded_once(&self) -> Option<Req> {
        if self.answer.statuses.first() == Some(&400) {
            self.assert_refused(&[400]);
            None
        } else {
            Some(self.assert_forwarded_once())
        }
    }

    /// No complete request reached the backend (at most the head of one whose body broke
    /// off), the client got 400 (a broken body is the client's fault, not the server's), and
    /// the proxy closed the connection.
    fn assert_not_delivered(&self) {
        let report = self.report();
        self.assert_nothing_smuggled();
        assert!(self.requests().is_empty(), "a complete request reached the backend\n{report}");
        assert!(
            !self.answer.statuses.is_empty() && self.answer.statuses.iter().all(|s| *s == 400),
            "a broken body must be answered 400\n{report}"
        );
        assert!(self.answer.closed, "the proxy kept the connection open\n{report}");
    }

    fn assert_closed(&self) {
        assert!(
            self.answer.closed,
            "the proxy kept the connection open after a request with both Transfer-Encoding \
             and Content-Length (RFC 9112 6.1: MUST close)\n{}",
            self.report()
        );
    }
}

/// A body that is one message under `Content-Length` and two under chunked framing:
/// `0\r\n\r\n` ends the chunked body and leaves `GET /smuggled` as the next request.
fn cl_te_body() -> String {
    format!("0\r\n\r\n{SMUGGLED}")
}

/// A POST carrying `te_lines` (whole header lines) and a Content-Length covering the whole
/// of [`cl_te_body`]: a front end that ignores the (obfuscated) Transfer-Encoding forwards
/// it all as one body, a back end that honours it sees `GET /smuggled`.
fn cl_te_request(te_lines: &str) -> String {
    let body = cl_te_body();
    format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n{te_lines}\r\n{body}", body.len())
}

/// Checks a request forwarded from a CL+TE one: Transfer-Encoding won (RFC 9112 6.3), the
/// Content-Length is gone and the body is the empty chunked one.
fn assert_chunked_won(case: &Case, req: &Req) {
    let report = case.report();
    assert!(req.values("content-length").is_empty(), "Content-Length forwarded\n{report}");
    assert_eq!(req.values("transfer-encoding"), [b"chunked"], "framing\n{report}");
    assert!(req.body.is_empty(), "body forwarded under the wrong framing\n{report}");
    case.assert_closed();
}

// ---------------------------------------------------------------------------------------
// 1–2. CL.TE and TE.CL.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_is_framed_by_transfer_encoding_and_closed() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        cl_te_body().len(),
        cl_te_body()
    );
    let case = Case::run(req, Stop::AtClose).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"), "{}", case.report());
        assert_chunked_won(&case, &r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_cl_is_framed_by_transfer_encoding_and_closed() {
    // Under chunked framing the body is the smuggled request's bytes; under the
    // Content-Length (the size line alone) the smuggled request starts right after it.
    let size_line = format!("{:x}\r\n", SMUGGLED.len());
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n\
         {size_line}{SMUGGLED}\r\n0\r\n\r\n",
        size_line.len()
    );
    let case = Case::run(req, Stop::AtClose).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        let report = case.report();
        assert!(r.values("content-length").is_empty(), "Content-Length forwarded\n{report}");
        assert_eq!(r.values("transfer-encoding"), [b"chunked"], "framing\n{report}");
        assert_eq!(r.body, SMUGGLED.as_bytes(), "the chunked body, as data\n{report}");
        case.assert_closed();
    }
}

// ---------------------------------------------------------------------------------------
// 3. TE.TE: obfuscated Transfer-Encoding, each with a Content-Length that disagrees.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_unknown_coding_is_refused() {
    let case = Case::run(cl_te_request("Transfer-Encoding: xchunked\r\n"), Stop::AtClose).await;
    // 501 is what RFC 9112 6.1 suggests for a coding the server does not know.
    case.assert_refused(&[400, 501]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_space_before_colon_is_refused() {
    let case = Case::run(cl_te_request("Transfer-Encoding : chunked\r\n"), Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_chunked_not_last_is_refused() {
    let case =
        Case::run(cl_te_request("Transfer-Encoding: chunked, identity\r\n"), Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_tab_before_value_is_chunked_or_refused() {
    // A tab is valid whitespace before a value: chunked framing, so the CL+TE rules apply.
    let case = Case::run(cl_te_request("Transfer-Encoding:\tchunked\r\n"), Stop::AtClose).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        assert_chunked_won(&case, &r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_duplicate_headers_are_refused() {
    let case = Case::run(
        cl_te_request("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"),
        Stop::AtClose,
    )
    .await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_by_obs_fold_is_refused() {
    let case =
        Case::run(cl_te_request("Transfer-Encoding: x\r\n chunked\r\n"), Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_in_http_1_0_is_refused() {
    // HTTP/1.0 has no chunked coding: a 1.0 server frames this by its Content-Length.
    let body = cl_te_body();
    let req = format!(
        "POST / HTTP/1.0\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {body}",
        body.len()
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_refused(&[400]);
}

// ---------------------------------------------------------------------------------------
// 4. Duplicate and conflicting Content-Length.

/// A POST whose first 5 body bytes are `hello`, followed by the smuggled request: one
/// message under a length covering everything, two under `Content-Length: 5`.
fn hello_then_smuggled(cl_lines: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{cl_lines}\r\nhello{SMUGGLED}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_conflicting_lines_are_refused() {
    let all = 5 + SMUGGLED.len();
    let case = Case::run(
        hello_then_smuggled(&format!("Content-Length: 5\r\nContent-Length: {all}\r\n")),
        Stop::AtClose,
    )
    .await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_conflicting_list_is_refused() {
    let all = 5 + SMUGGLED.len();
    let case =
        Case::run(hello_then_smuggled(&format!("Content-Length: 5, {all}\r\n")), Stop::AtClose)
            .await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_duplicate_same_value_is_forwarded_once_or_refused() {
    for cl_lines in ["Content-Length: 5\r\nContent-Length: 5\r\n", "Content-Length: 5, 5\r\n"] {
        let req = format!("POST / HTTP/1.1\r\nHost: a\r\n{cl_lines}Connection: close\r\n\r\nhello");
        let case = Case::run(req, Stop::AtClose).await;
        if let Some(r) = case.assert_refused_or_forwarded_once() {
            let report = case.report();
            assert_eq!(r.values("content-length"), [b"5"], "one plain Content-Length\n{report}");
            assert_eq!(r.body, b"hello", "{report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_not_a_plain_number_is_refused() {
    // Each is 5 to a lenient parser (atoi, strtol with a base prefix, a float parse).
    for v in ["+5", "05x", "5 5", "0x5", "5.0", "-5"] {
        let case =
            Case::run(hello_then_smuggled(&format!("Content-Length: {v}\r\n")), Stop::AtClose)
                .await;
        case.assert_refused(&[400]);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Bare LF line ends.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_the_head_is_normalised_or_refused() {
    // The backend's strict parse refuses any bare LF in a head it receives.
    for req in ["GET / HTTP/1.1\nHost: a\n\n", "GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n"] {
        let case = Case::run(req, Stop::AfterOneAnswer).await;
        if let Some(r) = case.assert_refused_or_forwarded_once() {
            let report = case.report();
            assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/"), "{report}");
            assert!(r.body.is_empty(), "{report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_chunked_framing_is_not_delivered() {
    // To a parser taking LF for CRLF the body is `hello` and `GET /smuggled` comes next.
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{SMUGGLED}"
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_not_delivered();
}

// ---------------------------------------------------------------------------------------
// 6. obs-fold.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_is_refused_or_unfolded() {
    let req = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n";
    let case = Case::run(req, Stop::AfterOneAnswer).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        // The backend's httparse refuses a folded line, so reaching here means one line.
        let report = case.report();
        assert_eq!(r.values("x-a").len(), 1, "{report}");
        assert!(!r.headers.iter().any(|(n, _)| n.starts_with([' ', '\t'])), "{report}");
    }
}

// ---------------------------------------------------------------------------------------
// 7. Chunk sizes past 64 bits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunk_size_is_not_delivered() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         ffffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_not_delivered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_size_wrapping_to_small_is_not_delivered() {
    // 0x1_0000_0000_0000_0005 is 5 to a parser that wraps at 64 bits: `hello`, the last
    // chunk, and `GET /smuggled` as the next request.
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         10000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_not_delivered();
}

// ---------------------------------------------------------------------------------------
// 8. Bytes that are not token characters in header names.

async fn header_name_refused(line: &[u8]) {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    req.extend_from_slice(line);
    req.extend_from_slice(b"\r\n\r\n");
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_header_name_is_refused() {
    header_name_refused(b"X\0A: 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_in_header_name_is_refused() {
    header_name_refused(b"X A: 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_byte_in_header_name_is_refused() {
    header_name_refused(b"X\x01: 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separator_in_header_name_is_refused() {
    header_name_refused(b"X(a): 1").await;
}

// ---------------------------------------------------------------------------------------
// 9. The request line.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_request_path_is_refused() {
    let case = Case::run(b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_in_request_path_is_refused() {
    let case = Case::run(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Stop::AtClose).await;
    case.assert_refused(&[400]);
}

// ---------------------------------------------------------------------------------------
// The harness itself: a backend parse that guesses would make every test above vacuous.

#[test]
fn the_backend_parser_refuses_what_it_would_have_to_guess_at() {
    let ok =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (r, used) = parse_request(ok).unwrap().unwrap();
    assert_eq!((r.body.as_slice(), used), (&b"hello"[..], ok.len()));
    let two = format!("GET / HTTP/1.1\r\nHost: a\r\n\r\n{SMUGGLED}");
    let (_, used) = parse_request(two.as_bytes()).unwrap().unwrap();
    let (r, _) = parse_request(&two.as_bytes()[used..]).unwrap().unwrap();
    assert_eq!(r.path, "/smuggled");
    for bad in [
        &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: x, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n  continued\r\n\r\n",
    ] {
        assert!(parse_request(bad).is_err(), "accepted {}", bad.escape_ascii());
    }
    assert_eq!(statuses(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"), [400]);
    assert_eq!(statuses(&[OK, OK].concat()), [200, 200]);
    assert!(statuses(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no").is_empty());
}
