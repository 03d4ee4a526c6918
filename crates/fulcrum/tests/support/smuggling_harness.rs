// The harness of tests/http_smuggling.rs: the strict recording backend, the raw client and
// the checks of one case. Included by `include!` (a file directly in tests/ would be a test
// binary of its own), so it shares http_smuggling.rs's imports and constants.

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
