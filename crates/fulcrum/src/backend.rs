//! `fulcrum backend`: a small server to put behind the balancer in demos, tests and
//! benchmarks. It answers lines (tcp), HTTP/1.1 requests (http) or datagrams (udp) after an
//! artificial service time, counts its real load (open connections, requests waiting in their
//! delay) and, given `--agent`, reports that load to the balancer's agent port with the
//! authenticated frames of `fulcrum_core::agent`. Everything it says goes through the log.

pub use fulcrum_config::io_reason;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fulcrum_config::{ServerAddr, parse_dest, parse_listen};
use fulcrum_core::agent::{self, Hello, Message, Report};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::cli::{BackendArgs, BackendProtocol};
use crate::run::Failure;

/// Longest request line (tcp) or HTTP head line accepted; a longer one closes the connection,
/// so a client cannot make the backend buffer without bound.
pub const MAX_LINE: usize = 8 * 1024;
/// Longest HTTP request head (request line and headers together).
const MAX_HEAD: usize = 16 * 1024;
/// Largest HTTP request body read (and thrown away); a larger one gets 413 and a close.
const MAX_BODY: u64 = 1 << 20;
/// Largest datagram received; anything longer is truncated by the kernel.
const MAX_DATAGRAM: usize = 64 * 1024;
/// UDP requests waiting in their delay at most; beyond it datagrams are dropped, as a
/// saturated UDP server would, instead of piling up tasks.
const MAX_UDP_QUEUE: u64 = 65_536;
/// Reconnect backoff of the agent client: starts small so a balancer restart is barely
/// noticed, capped so a long outage costs one attempt every few seconds.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bound on connecting to the agent port, reading its challenge and writing one frame.
const AGENT_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend's live load, reported to the agent port.
#[derive(Default)]
struct Load {
    /// TCP connections open now (tcp and http).
    clients: AtomicU64,
    /// Requests received and not answered yet: the ones waiting in their delay.
    queue: AtomicU64,
}

/// Holds one unit of a counter for as long as it lives, so every exit path gives it back.
struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Held(c)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Shared {
    name: String,
    delay: Duration,
    load: Load,
}

impl Shared {
    /// The artificial service time, counted in the queue while it runs.
    async fn serve_delay(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

struct AgentConfig {
    target: ServerAddr,
    pool: String,
    /// `--advertise` as given (empty without it) until the listener is bound; then the HELLO's
    /// address: the advertised one, or only the bound port.
    address: String,
    key: Vec<u8>,
    interval: Duration,
}

pub fn run(args: BackendArgs) -> Result<(), Failure> {
    let listen = parse_listen(&args.listen)
        .map_err(|e| Failure::Config(format!("--listen {}: {e}", args.listen)))?;
    if let Some(name) = &args.name {
        check_name(name).map_err(|e| Failure::Config(format!("--name: {e}")))?;
    }
    let agent = match &args.agent {
        None => None,
        Some(a) => {
            let target = parse_dest(a).map_err(|e| Failure::Config(format!("--agent {a}: {e}")))?;
            let pool = args.pool.clone().unwrap_or_default();
            if pool.is_empty() || pool.chars().count() > agent::MAX_POOL_LEN {
                return Err(Failure::Config(format!(
                    "--pool: must be 1 to {} characters long",
                    agent::MAX_POOL_LEN
                )));
            }
            let key = match &args.key_file {
                Some(p) => read_key(p).map_err(Failure::Config)?,
                None => return Err(Failure::Config("--agent needs --key-file".into())),
            };
            // The balancer takes only literal addresses (it must not resolve names).
            if let Some(adv) = &args.advertise
                && advertised(adv, 1).is_none()
            {
                return Err(Failure::Config(format!(
                    "--advertise {adv}: must be IP, IP:PORT or [IPv6]:PORT with a nonzero port"
                )));
            }
            Some(AgentConfig {
                target,
                pool,
                address: args.advertise.clone().unwrap_or_default(),
                key,
                interval: args.report_interval,
            })
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start runtime: {e}")))?;
    rt.block_on(serve(args, listen, agent))
}

/// `--advertise` as an address: `IP:PORT`, `[IPv6]:PORT`, or an IP alone with the port the
/// backend listens on. `None` when empty or not one of these.
fn advertised(text: &str, listening: u16) -> Option<SocketAddr> {
    let a = match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => SocketAddr::new(text.parse::<std::net::IpAddr>().ok()?, listening),
    };
    (a.port() != 0).then_some(a)
}

/// The name is sent as one reply line and in an HTTP header: printable text only.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes long".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path)
        .map_err(|e| format!("--key-file: cannot read {}: {}", path.display(), io_reason(&e)))?;
    let key = raw.trim_ascii();
    if key.is_empty() {
        return Err(format!("--key-file: {} is empty", path.display()));
    }
    Ok(key.to_vec())
}

async fn serve(
    args: BackendArgs,
    listen: SocketAddr,
    agent: Option<AgentConfig>,
) -> Result<(), Failure> {
    let bind_err =
        |e: std::io::Error| Failure::Runtime(format!("cannot bind {listen}: {}", io_reason(&e)));
    let stop = CancellationToken::new();
    let (local, server) = match args.protocol {
        BackendProtocol::Tcp | BackendProtocol::Http => {
            let l = TcpListener::bind(listen).await.map_err(bind_err)?;
            let local = l.local_addr().map_err(|e| Failure::Runtime(e.to_string()))?;
            (local, Server::Tcp(l))
        }
        BackendProtocol::Udp => {
            let s = UdpSocket::bind(listen).await.map_err(bind_err)?;
            let local = s.local_addr().map_err(|e| Failure::Runtime(e.to_string()))?;
            (local, Server::Udp(s))
        }
    };
    let name = args.name.clone().unwrap_or_else(|| local.to_string());
    let shared = Arc::new(Shared { name, delay: args.delay, load: Load::default() });
    let protocol = match args.protocol {
        BackendProtocol::Tcp => "tcp",
        BackendProtocol::Http => "http",
        BackendProtocol::Udp => "udp",
    };
    // `frontend` is there because the daemon's `listening` lines carry it and tools (the test
    // helpers among them) key listeners by it.
    tracing::info!(
        frontend = "backend",
        address = %local,
        protocol,
        name = %shared.name,
        delay = ?args.delay,
        "listening"
    );
    let server_task = match server {
        Server::Tcp(l) => tokio::spawn(accept_loop(l, shared.clone(), args.protocol)),
        Server::Udp(s) => tokio::spawn(udp_loop(Arc::new(s), shared.clone())),
    };
    let agent_task = agent.map(|mut a| {
        // Without --advertise only the port is sent: the balancer takes the IP this
        // connection comes from, and refuses a claimed IP of another host unless the pool
        // sets trust_claimed_address.
        a.address = match advertised(&a.address, local.port()) {
            Some(addr) => addr.to_string(),
            None => format!(":{}", local.port()),
        };
        tokio::spawn(agent_loop(a, shared.clone(), stop.clone()))
    });
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "fulcrum started");
    let signal = wait_for_signal().await?;
    tracing::info!(signal, "stopping");
    stop.cancel();
    server_task.abort();
    if let Some(t) = agent_task {
        // The agent task sends BYE and returns; bounded so a stuck balancer cannot hold us.
        let _ = tokio::time::timeout(AGENT_IO_TIMEOUT, t).await;
    }
    tracing::info!("stopped");
    Ok(())
}

enum Server {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

async fn wait_for_signal() -> Result<&'static str, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k: SignalKind, name: &str| {
        signal(k).map_err(|e| Failure::Runtime(format!("cannot handle {name}: {e}")))
    };
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

/// The HTTP backend on `l`, in this process (the demo's HTTP part): named `name`, answering
/// after `delay`, until the runtime stops.
pub(crate) fn spawn_http(l: TcpListener, name: &str, delay: Duration) {
    let shared = Arc::new(Shared { name: name.to_string(), delay, load: Load::default() });
    tokio::spawn(accept_loop(l, shared, BackendProtocol::Http));
}

async fn accept_loop(l: TcpListener, shared: Arc<Shared>, protocol: BackendProtocol) {
    // Accept errors (EMFILE and the like) are passing states: back off instead of spinning.
    let mut backoff = Duration::from_millis(5);
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                backoff = Duration::from_millis(5);
                let _ = s.set_nodelay(true);
                let sh = shared.clone();
                match protocol {
                    BackendProtocol::Http => tokio::spawn(serve_http(s, sh)),
                    _ => tokio::spawn(serve_lines(s, sh)),
                };
            }
            Err(e) => {
                tracing::warn!(error = %io_reason(&e), "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Without its line ending (`\n` or `\r\n`).
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads one line of at most `max` bytes (newline included) into `buf`. `Ok(false)` at a
/// clean end of stream; an error for a line that is too long or a read error.
async fn read_line(
    r: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    let n = r.take(max as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(false);
    }
    if buf.len() > max && !buf.ends_with(b"\n") {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(true)
}

/// The tcp protocol: every line comes back upper-cased after the delay, `WHOAMI` at once with
/// the name (it is a question about the route, not a request, so it neither waits nor queues).
async fn serve_lines(s: TcpStream, sh: Arc<Shared>) {
    let _client = Held::new(&sh.load.clients);
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(128);
    loop {
        match read_line(&mut r, &mut line, MAX_LINE).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        let reply = if trim_eol(&line) == b"WHOAMI" {
            format!("{}\n", sh.name).into_bytes()
        } else {
            let _queued = Held::new(&sh.load.queue);
            sh.serve_delay().await;
            let mut out = line.to_ascii_uppercase();
            if !out.ends_with(b"\n") {
                // The last line before EOF had no newline; the reply still ends the line.
                out.push(b'\n');
            }
            out
        };
        if w.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// What the HTTP responder needs from a request head.
#[derive(Debug, PartialEq)]
struct HttpRequest {
    head_only: bool,
    content_length: u64,
    chunked: bool,
    keep_alive: bool,
}

/// Parses a request head (request line and header lines, blank line excluded).
fn parse_http_head(head: &[u8]) -> Result<HttpRequest, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("unsupported HTTP version"),
    };
    let mut req = HttpRequest {
        head_only: method == "HEAD",
        content_length: 0,
        chunked: false,
        keep_alive: !http10,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').ok_or("malformed header line")?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            req.content_length = v.parse().map_err(|_| "bad Content-Length")?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            req.chunked = true;
        } else if k.eq_ignore_ascii_case("connection") {
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    req.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    req.keep_alive = true;
                }
            }
        }
    }
    Ok(req)
}

fn http_response(status: &str, body: &str, name: &str, head_only: bool, close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         X-Backend: {name}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The http protocol: keep-alive HTTP/1.1, every request answered 200 after the delay with a
/// body naming the backend. Heads are bounded; bodies are read and dropped up to a bound;
/// chunked request bodies are refused (501) rather than parsed, which a demo server can afford.
async fn serve_http(s: TcpStream, sh: Arc<Shared>) {
    let _client = Held::new(&sh.load.clients);
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut head = Vec::with_capacity(512);
    let mut line = Vec::with_capacity(256);
    loop {
        head.clear();
        // Read header lines until the blank line, the whole head bounded.
        loop {
            match read_line(&mut r, &mut line, MAX_LINE).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    let msg = http_response(
                        "431 Request Header Fields Too Large",
                        "",
                        &sh.name,
                        false,
                        true,
                    );
                    let _ = w.write_all(&msg).await;
                    return;
                }
            }
            if trim_eol(&line).is_empty() {
                if head.is_empty() {
                    // Stray blank lines between requests are allowed (RFC 9112 2.2).
                    continue;
                }
                break;
            }
            if head.len() + line.len() > MAX_HEAD {
                let msg =
                    http_response("431 Request Header Fields Too Large", "", &sh.name, false, true);
                let _ = w.write_all(&msg).await;
                return;
            }
            head.extend_from_slice(&line);
        }
        let req = match parse_http_head(&head) {
            Ok(r) => r,
            Err(why) => {
                let body = format!("{why}\n");
                let _ = w
                    .write_all(&http_response("400 Bad Request", &body, &sh.name, false, true))
                    .await;
                return;
            }
        };
        if req.chunked {
            let body = "chunked request bodies are not supported\n";
            let msg = http_response("501 Not Implemented", body, &sh.name, false, true);
            let _ = w.write_all(&msg).await;
            return;
        }
        if req.content_length > MAX_BODY {
            let msg = http_response("413 Content Too Large", "", &sh.name, false, true);
            let _ = w.write_all(&msg).await;
            return;
        }
        if req.content_length > 0 {
            let mut body = (&mut r).take(req.content_length);
            match tokio::io::copy(&mut body, &mut tokio::io::sink()).await {
                Ok(n) if n == req.content_length => {}
                _ => return,
            }
        }
        let reply = {
            let _queued = Held::new(&sh.load.queue);
            sh.serve_delay().await;
            let body = format!("{}\n", sh.name);
            http_response("200 OK", &body, &sh.name, req.head_only, !req.keep_alive)
        };
        if w.write_all(&reply).await.is_err() || !req.keep_alive {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// The udp protocol: each datagram answered upper-cased to its sender after the delay, in its
/// own task so one datagram's delay does not hold up the next.
async fn udp_loop(sock: Arc<UdpSocket>, sh: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they concern one peer, not us.
                tracing::debug!(error = %io_reason(&e), "udp receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let data = &buf[..n];
        if trim_eol(data) == b"WHOAMI" {
            let _ = sock.send_to(sh.name.as_bytes(), peer).await;
            continue;
        }
        if sh.load.queue.load(Ordering::Relaxed) >= MAX_UDP_QUEUE {
            continue;
        }
        let reply = data.to_ascii_uppercase();
        let sock = sock.clone();
        let sh = sh.clone();
        sh.load.queue.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            sh.serve_delay().await;
            let _ = sock.send_to(&reply, peer).await;
            sh.load.queue.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// How an agent session ended.
enum Ended {
    /// Shutdown was asked for (BYE sent when connected).
    Stopped,
    /// The connection failed or was lost; `established` says whether HELLO had gone out.
    Lost { reason: String, established: bool },
}

/// Keeps one agent session up: connect, handshake, report; on loss reconnect with backoff.
async fn agent_loop(cfg: AgentConfig, sh: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = BACKOFF_START;
    loop {
        let started = tokio::time::Instant::now();
        match agent_session(&cfg, &sh, &stop).await {
            Ended::Stopped => return,
            Ended::Lost { reason, established } => {
                if established {
                    // A session that lasted means the balancer is fine again: start small.
                    // One refused right after HELLO (a wrong key) does not reset, so repeated
                    // refusals cost one attempt every few seconds, not ten a second.
                    if started.elapsed() >= BACKOFF_MAX {
                        backoff = BACKOFF_START;
                    }
                    tracing::warn!(agent = %cfg.target, error = %reason, retry_in = ?backoff, "agent disconnected");
                } else {
                    tracing::warn!(agent = %cfg.target, error = %reason, retry_in = ?backoff, "agent connect failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn lost(reason: impl Into<String>, established: bool) -> Ended {
    Ended::Lost { reason: reason.into(), established }
}

async fn agent_session(cfg: &AgentConfig, sh: &Shared, stop: &CancellationToken) -> Ended {
    let connect = TcpStream::connect((cfg.target.host.as_str(), cfg.target.port));
    let s = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        r = tokio::time::timeout(AGENT_IO_TIMEOUT, connect) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return lost(io_reason(&e), false),
            Err(_) => return lost(format!("connect timed out after {AGENT_IO_TIMEOUT:?}"), false),
        },
    };
    let _ = s.set_nodelay(true);
    let (mut r, mut w) = s.into_split();
    let nonce = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        n = tokio::time::timeout(AGENT_IO_TIMEOUT, read_challenge(&mut r)) => match n {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return lost(e, false),
            Err(_) => return lost("no challenge from the balancer in time", false),
        },
    };
    let mut seq = 1u64;
    let hello =
        Message::Hello(Hello { pool: cfg.pool.clone(), address: cfg.address.clone(), version: 1 });
    if let Err(e) = write_frame(&mut w, &agent::encode_message(&cfg.key, &nonce, seq, &hello)).await
    {
        return lost(e, false);
    }
    tracing::info!(agent = %cfg.target, pool = %cfg.pool, address = %cfg.address, "agent connected");
    // The first tick fires at once: the balancer gets the load right after HELLO.
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inbox = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                seq += 1;
                let bye = agent::encode_message(&cfg.key, &nonce, seq, &Message::Bye);
                match write_frame(&mut w, &bye).await {
                    Ok(()) => tracing::info!(agent = %cfg.target, "agent: sent BYE"),
                    Err(e) => tracing::warn!(agent = %cfg.target, error = %e, "agent: BYE not sent"),
                }
                let _ = w.shutdown().await;
                return Ended::Stopped;
            }
            _ = tick.tick() => {
                seq += 1;
                let report = Message::Report(Report {
                    clients: sh.load.clients.load(Ordering::Relaxed),
                    queue: sh.load.queue.load(Ordering::Relaxed),
                    weight: None,
                    state: None,
                });
                if let Err(e) = write_frame(&mut w, &agent::encode_message(&cfg.key, &nonce, seq, &report)).await {
                    return lost(e, true);
                }
            }
            n = r.read(&mut chunk) => match n {
                Ok(0) => return lost("closed by the balancer", true),
                Ok(n) => {
                    inbox.extend_from_slice(&chunk[..n]);
                    if let Some(reason) = agent::read_error_frame(&inbox) {
                        tracing::warn!(agent = %cfg.target, reason = %reason, "agent error from the balancer");
                        // The balancer closes after an ERROR; so do we.
                        return lost(format!("refused by the balancer: {reason}"), true);
                    } else if inbox.len() >= agent::MAX_BUFFER || inbox.get(2).is_some_and(|&t| t != agent::kind::ERROR) {
                        // Not an ERROR frame: nothing else is expected from the balancer.
                        inbox.clear();
                    }
                }
                Err(e) => return lost(io_reason(&e), true),
            },
        }
    }
}

async fn write_frame(w: &mut tokio::net::tcp::OwnedWriteHalf, frame: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(AGENT_IO_TIMEOUT, w.write_all(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io_reason(&e)),
        Err(_) => Err("write timed out".into()),
    }
}

/// Reads the balancer's challenge, or the ERROR frame it sends instead (logged, then an
/// error). Reads no byte past the challenge.
async fn read_challenge(r: &mut OwnedReadHalf) -> Result<[u8; agent::NONCE_LEN], String> {
    let mut buf = vec![0u8; 3];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| format!("reading the challenge: {}", io_reason(&e)))?;
    if buf[2] == agent::kind::ERROR {
        // An ERROR frame: read until it is complete (or the balancer closes).
        let mut chunk = [0u8; 512];
        loop {
            if let Some(reason) = agent::read_error_frame(&buf) {
                tracing::warn!(reason = %reason, "agent error from the balancer");
                return Err(format!("refused by the balancer: {reason}"));
            }
            if buf.len() >= agent::MAX_BUFFER {
                return Err("malformed ERROR frame from the balancer".into());
            }
            match r.read(&mut chunk).await {
                Ok(0) => return Err("closed by the balancer in an ERROR frame".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(io_reason(&e)),
            }
        }
    }
    buf.resize(agent::CHALLENGE_LEN, 0);
    r.read_exact(&mut buf[3..])
        .await
        .map_err(|e| format!("reading the challenge: {}", io_reason(&e)))?;
    agent::parse_challenge(&buf).map_err(|e| format!("bad challenge: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn http_heads() {
        let r = parse_http_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        assert_eq!(
            r,
            HttpRequest { head_only: false, content_length: 0, chunked: false, keep_alive: true }
        );
        let r = parse_http_head(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n")
            .unwrap();
        assert_eq!(r.content_length, 5);
        assert!(!r.keep_alive);
        let r = parse_http_head(b"HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\n").unwrap();
        assert!(r.head_only && r.keep_alive);
        assert!(!parse_http_head(b"GET / HTTP/1.0\r\n").unwrap().keep_alive);
        assert!(parse_http_head(b"GET /\r\n").is_err());
        assert!(parse_http_head(b"GET / HTTP/2\r\n").is_err());
        assert!(parse_http_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n").is_err());
        assert!(
            parse_http_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n").unwrap().chunked
        );
    }

    #[test]
    fn advertised_addresses() {
        let at = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(advertised("10.0.0.5", 9001), at("10.0.0.5:9001"));
        assert_eq!(advertised("10.0.0.5:80", 9001), at("10.0.0.5:80"));
        assert_eq!(advertised("::1", 9001), at("[::1]:9001"));
        assert_eq!(advertised("[::1]:80", 9001), at("[::1]:80"));
        for bad in ["", "host:80", "10.0.0.5:0", "10.0.0.5:x", ":80"] {
            assert_eq!(advertised(bad, 9001), None, "{bad}");
        }
        assert_eq!(advertised("10.0.0.5", 0), None, "port 0 is refused (checked with 1 first)");
    }

    #[test]
    fn eol_and_names() {
        assert_eq!(trim_eol(b"WHOAMI\r\n"), b"WHOAMI");
        assert_eq!(trim_eol(b"WHOAMI\n"), b"WHOAMI");
        assert_eq!(trim_eol(b"WHOAMI"), b"WHOAMI");
        assert!(check_name("alpha").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
    }
}
