//! `fulcrum load`: a bounded load client. N concurrent clients send requests to a frontend
//! (or ask a directory frontend which server to call, then call it) for a bounded time or
//! count, retry failed requests on new connections, and at the end print how the requests
//! were spread over the servers, with latency percentiles: a table on stdout, or one JSON
//! object with `--json`. It talks the protocol of `fulcrum backend`: each server says its name
//! to `WHOAMI` and answers every line upper-cased.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use comfy_table::presets::ASCII_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use fulcrum_config::{ServerAddr, parse_dest};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{MAX_LINE, io_reason};
use crate::cli::{LoadArgs, LoadProtocol};
use crate::run::Failure;

/// Run time when neither --duration nor --requests is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Upper bound of a run, so a `--requests` run against a slow target still ends.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Connections to servers a keep-alive client keeps in directory mode; beyond it new ones are
/// closed after use, so a directory that names many servers cannot pile up sockets.
const MAX_KEPT_SERVERS: usize = 64;
/// Distinct error reasons kept for the report; later new reasons count under "other".
const MAX_REASONS: usize = 16;
/// Largest datagram answer read.
const MAX_DATAGRAM: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Requests go through TARGET; the server that answered says its name to WHOAMI.
    Frontend,
    /// TARGET names a server per request (`PICK`); requests go to that server directly.
    Directory,
}

struct Plan {
    target: SocketAddr,
    target_text: String,
    mode: Mode,
    protocol: LoadProtocol,
    clients: u32,
    limit: Option<u64>,
    deadline: Instant,
    retries: u32,
    timeout: Duration,
    /// The request as a TCP line (newline included).
    line: Vec<u8>,
    /// The request as a datagram.
    datagram: Vec<u8>,
    /// The answer expected, without line ending.
    expected: Vec<u8>,
    keep_alive: bool,
}

/// Live totals, shared by the clients and read by the progress bar.
struct Totals {
    claimed: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    latency: Histogram,
    /// Ctrl-C: abandon requests in flight and report what was done.
    interrupted: CancellationToken,
}

/// What one client counted; merged at the end.
#[derive(Default)]
struct Tally {
    per_server: HashMap<String, u64>,
    reasons: HashMap<String, u64>,
}

impl Tally {
    fn reason(&mut self, why: String) {
        if self.reasons.len() < MAX_REASONS || self.reasons.contains_key(&why) {
            *self.reasons.entry(why).or_default() += 1;
        } else {
            *self.reasons.entry("other".into()).or_default() += 1;
        }
    }
}

pub fn run(args: LoadArgs) -> Result<(), Failure> {
    let plan = plan(&args).map_err(Failure::Config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start runtime: {e}")))?;
    rt.block_on(async move {
        let target = resolve(&plan.0).await.map_err(Failure::Runtime)?;
        let plan = Plan { target, ..plan.1 };
        probe(&plan)
            .await
            .map_err(|e| Failure::Runtime(format!("cannot reach {}: {e}", plan.target_text)))?;
        let show_progress = !args.no_progress && std::io::stderr().is_terminal();
        let report = drive(Arc::new(plan), show_progress).await;
        if args.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.tables());
        }
        Ok(())
    })
}

/// Validates the arguments into a plan (its target still to be resolved).
fn plan(a: &LoadArgs) -> Result<(ServerAddr, Plan), String> {
    let target = parse_dest(&a.target).map_err(|e| format!("TARGET {}: {e}", a.target))?;
    let msg = a.message.as_bytes();
    if msg.contains(&b'\n') || msg.contains(&b'\r') {
        return Err("--message: must be one line (no newline)".into());
    }
    if msg.len() >= MAX_LINE {
        return Err(format!("--message: must be shorter than {MAX_LINE} bytes"));
    }
    if a.protocol == LoadProtocol::Udp && msg.trim_ascii() == b"WHOAMI" {
        return Err("--message: WHOAMI is the name question, not a request".into());
    }
    let run_for = match (a.duration, a.requests) {
        (Some(d), _) => d,
        (None, Some(_)) => MAX_DURATION,
        (None, None) => DEFAULT_DURATION,
    };
    let mut line = msg.to_vec();
    line.push(b'\n');
    let plan = Plan {
        target: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        target_text: target.to_string(),
        mode: if a.directory { Mode::Directory } else { Mode::Frontend },
        protocol: a.protocol,
        clients: a.clients,
        limit: a.requests,
        deadline: Instant::now() + run_for,
        retries: a.retries,
        timeout: a.timeout,
        line,
        datagram: msg.to_vec(),
        expected: msg.to_ascii_uppercase(),
        keep_alive: a.keep_alive,
    };
    Ok((target, plan))
}

async fn resolve(t: &ServerAddr) -> Result<SocketAddr, String> {
    if let Some(a) = t.socket() {
        return Ok(a);
    }
    let mut addrs = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("cannot resolve {t}: {}", io_reason(&e)))?;
    addrs.next().ok_or_else(|| format!("cannot resolve {t}: no address"))
}

/// One look at the target before the run, so an unreachable target is a clear failure (exit
/// 1) rather than a table full of errors.
async fn probe(p: &Plan) -> Result<(), String> {
    let attempt = async {
        match p.protocol {
            LoadProtocol::Tcp => {
                TcpStream::connect(p.target).await.map(drop).map_err(|e| io_reason(&e))
            }
            LoadProtocol::Udp => {
                let question: &[u8] = if p.mode == Mode::Directory { b"PICK" } else { b"WHOAMI" };
                let sock = udp_socket(p.target).await?;
                udp_call(&sock, question).await.map(drop)
            }
        }
    };
    match tokio::time::timeout(p.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", p.timeout)),
    }
}

async fn drive(plan: Arc<Plan>, show_progress: bool) -> Report {
    let totals = Arc::new(Totals {
        claimed: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        latency: Histogram::new(),
        interrupted: CancellationToken::new(),
    });
    let started = Instant::now();
    let on_ctrl_c = {
        let t = totals.interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                t.cancel();
            }
        })
    };
    let bar = progress_bar(&plan, show_progress);
    let ticker = {
        let (bar, totals, plan) = (bar.clone(), totals.clone(), plan.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let ok = totals.ok.load(Ordering::Relaxed);
                let errors = totals.errors.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                match plan.limit {
                    Some(_) => bar.set_position(ok + errors),
                    None => bar.set_position(started.elapsed().as_millis() as u64),
                }
                bar.set_message(format!("{ok} ok, {errors} errors, {:.0} req/s", ok as f64 / secs));
            }
        })
    };
    let clients: Vec<_> =
        (0..plan.clients).map(|_| tokio::spawn(client(plan.clone(), totals.clone()))).collect();
    let mut tally = Tally::default();
    for c in clients {
        // A client task only ends by returning; a panic in one is a bug, counted as nothing.
        if let Ok(t) = c.await {
            for (k, v) in t.per_server {
                *tally.per_server.entry(k).or_default() += v;
            }
            for (k, v) in t.reasons {
                *tally.reasons.entry(k).or_default() += v;
            }
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    on_ctrl_c.abort();
    bar.finish_and_clear();
    let lat = &totals.latency;
    Report {
        target: plan.target_text.clone(),
        mode: plan.mode,
        protocol: plan.protocol,
        clients: plan.clients,
        elapsed,
        per_server: tally.per_server.into_iter().collect(),
        ok: totals.ok.load(Ordering::Relaxed),
        errors: totals.errors.load(Ordering::Relaxed),
        retries: totals.retries.load(Ordering::Relaxed),
        reasons: tally.reasons.into_iter().collect(),
        p50: lat.quantile(0.50),
        p90: lat.quantile(0.90),
        p99: lat.quantile(0.99),
        max: lat.max(),
        interrupted: totals.interrupted.is_cancelled(),
    }
}

fn progress_bar(plan: &Plan, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (len, template) = match plan.limit {
        Some(n) => (n, "{elapsed_precise} [{wide_bar}] {pos}/{len} requests  {msg}"),
        None => {
            let ms = plan.deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
            (ms, "{elapsed_precise} [{wide_bar}] {percent}%  {msg}")
        }
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Connections a client keeps between requests.
#[derive(Default)]
struct Conns {
    /// To the frontend, with the name of the server behind it (keep-alive).
    front: Option<(LineConn, String)>,
    front_udp: Option<(UdpSocket, String)>,
    /// To the directory: kept across requests whatever --keep-alive says (many PICKs each).
    directory: Option<LineConn>,
    directory_udp: Option<UdpSocket>,
    /// To servers named by the directory (keep-alive).
    servers: HashMap<SocketAddr, LineConn>,
}

/// One client: claims requests until the count or the time is up, each with its retries.
async fn client(plan: Arc<Plan>, totals: Arc<Totals>) -> Tally {
    let mut tally = Tally::default();
    let mut conns = Conns::default();
    loop {
        if totals.interrupted.is_cancelled() || Instant::now() >= plan.deadline {
            break;
        }
        let claimed = plan.limit.map(|n| (n, totals.claimed.fetch_add(1, Ordering::Relaxed)));
        if claimed.is_some_and(|(n, c)| c >= n) {
            break;
        }
        let mut attempt = 0;
        loop {
            let r = tokio::select! {
                biased;
                _ = totals.interrupted.cancelled() => return tally,
                r = tokio::time::timeout(plan.timeout, request(&plan, &mut conns)) => r,
            };
            let err = match r {
                Ok(Ok((server, latency))) => {
                    totals.latency.record(latency);
                    totals.ok.fetch_add(1, Ordering::Relaxed);
                    *tally.per_server.entry(server).or_default() += 1;
                    break;
                }
                Ok(Err(e)) => e,
                Err(_) => format!("timed out after {:?}", plan.timeout),
            };
            if attempt < plan.retries {
                attempt += 1;
                totals.retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            totals.errors.fetch_add(1, Ordering::Relaxed);
            tally.reason(err);
            break;
        }
    }
    tally
}

/// One attempt: the server that answered and the request's latency (request sent to answer
/// read; connecting and asking names are not part of it). Connections are taken out of
/// `conns` while in use and put back only after success, so a failed or timed-out attempt
/// leaves none half-used behind: the retry starts on a new connection.
async fn request(p: &Plan, conns: &mut Conns) -> Result<(String, Duration), String> {
    match (p.mode, p.protocol) {
        (Mode::Frontend, LoadProtocol::Tcp) => {
            let (mut c, name) = match conns.front.take() {
                Some(c) => c,
                None => {
                    let mut c = LineConn::connect(p.target).await?;
                    let name = c.call(b"WHOAMI\n").await?;
                    let name = String::from_utf8_lossy(&name).into_owned();
                    (c, name)
                }
            };
            let t = Instant::now();
            let answer = c.call(&p.line).await?;
            let latency = t.elapsed();
            check(&answer, &p.expected)?;
            if p.keep_alive {
                conns.front = Some((c, name.clone()));
            }
            Ok((name, latency))
        }
        (Mode::Frontend, LoadProtocol::Udp) => {
            let (sock, name) = match conns.front_udp.take() {
                Some(c) => c,
                None => {
                    let sock = udp_socket(p.target).await?;
                    let name = udp_call(&sock, b"WHOAMI").await?;
                    let name = String::from_utf8_lossy(trim_eol(&name)).into_owned();
                    (sock, name)
                }
            };
            let t = Instant::now();
            let answer = udp_call(&sock, &p.datagram).await?;
            let latency = t.elapsed();
            check(trim_eol(&answer), &p.expected)?;
            if p.keep_alive {
                conns.front_udp = Some((sock, name.clone()));
            }
            Ok((name, latency))
        }
        (Mode::Directory, proto) => {
            let answer = match proto {
                LoadProtocol::Tcp => {
                    let mut d = match conns.directory.take() {
                        Some(d) => d,
                        None => LineConn::connect(p.target).await?,
                    };
                    let a = d.call(b"PICK\n").await?;
                    conns.directory = Some(d);
                    a
                }
                LoadProtocol::Udp => {
                    let sock = match conns.directory_udp.take() {
                        Some(s) => s,
                        None => udp_socket(p.target).await?,
                    };
                    let a = udp_call(&sock, b"PICK").await?;
                    conns.directory_udp = Some(sock);
                    a
                }
            };
            let (server, name) = parse_pick(&answer)?;
            let mut c = match conns.servers.remove(&server) {
                Some(c) => c,
                None => LineConn::connect(server).await?,
            };
            let t = Instant::now();
            let answer = c.call(&p.line).await?;
            let latency = t.elapsed();
            check(&answer, &p.expected)?;
            if p.keep_alive && conns.servers.len() < MAX_KEPT_SERVERS {
                conns.servers.insert(server, c);
            }
            Ok((name, latency))
        }
    }
}

fn check(answer: &[u8], expected: &[u8]) -> Result<(), String> {
    if answer == expected {
        Ok(())
    } else {
        Err("unexpected answer (not the message upper-cased)".into())
    }
}

/// A directory answer: `ip:port` (the server, and its name in the report) or `ERR reason`.
fn parse_pick(answer: &[u8]) -> Result<(SocketAddr, String), String> {
    let text = String::from_utf8_lossy(trim_eol(answer)).trim().to_string();
    if let Some(reason) = text.strip_prefix("ERR") {
        let reason = reason.trim();
        return Err(if reason.is_empty() {
            "directory answered ERR".into()
        } else {
            format!("directory answered ERR {reason}")
        });
    }
    let addr = text
        .parse::<SocketAddr>()
        .map_err(|_| format!("directory answered {text:?}, not ip:port"))?;
    Ok((addr, text))
}

fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// A TCP connection speaking lines: one line out, one line back.
struct LineConn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl LineConn {
    async fn connect(to: SocketAddr) -> Result<LineConn, String> {
        let s =
            TcpStream::connect(to).await.map_err(|e| format!("connect {to}: {}", io_reason(&e)))?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        Ok(LineConn { r: BufReader::new(r), w, buf: Vec::with_capacity(128) })
    }

    /// Sends `line` (newline included) and returns the answer line without its ending.
    async fn call(&mut self, line: &[u8]) -> Result<Vec<u8>, String> {
        self.w.write_all(line).await.map_err(|e| format!("send: {}", io_reason(&e)))?;
        self.buf.clear();
        let n = (&mut self.r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .await
            .map_err(|e| format!("receive: {}", io_reason(&e)))?;
        if n == 0 || !self.buf.ends_with(b"\n") {
            return Err(if self.buf.len() > MAX_LINE {
                "answer line too long".into()
            } else {
                "connection closed before the answer".into()
            });
        }
        Ok(trim_eol(&self.buf).to_vec())
    }
}

async fn udp_socket(to: SocketAddr) -> Result<UdpSocket, String> {
    let any: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = UdpSocket::bind((any, 0)).await.map_err(|e| format!("udp bind: {}", io_reason(&e)))?;
    // Connected, so only the target's answers arrive and ICMP "port unreachable" is reported.
    s.connect(to).await.map_err(|e| format!("udp connect {to}: {}", io_reason(&e)))?;
    Ok(s)
}

/// Sends one datagram and returns the next one received (the caller bounds the wait).
async fn udp_call(s: &UdpSocket, datagram: &[u8]) -> Result<Vec<u8>, String> {
    s.send(datagram).await.map_err(|e| format!("send: {}", io_reason(&e)))?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = s.recv(&mut buf).await.map_err(|e| format!("receive: {}", io_reason(&e)))?;
    buf.truncate(n);
    Ok(buf)
}

/// Latencies in microseconds, log-linear buckets: 128 per power of two, so a percentile is
/// within 1% of the true value, in a fixed 58 KiB whatever the run's length. Atomic, so every
/// client records into the one histogram.
struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) << SUB_BITS;

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() - SUB_BITS;
        (((e + 1) as usize) << SUB_BITS) + ((v >> e) - SUB) as usize
    }

    /// The smallest and largest value of bucket `i`.
    fn bounds(i: usize) -> (u64, u64) {
        if (i as u64) < SUB {
            return (i as u64, i as u64);
        }
        let e = (i >> SUB_BITS) as u32 - 1;
        let low = ((i as u64 & (SUB - 1)) + SUB) << e;
        (low, low + ((1u64 << e) - 1))
    }

    fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(us)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    /// The `q` quantile in milliseconds (the middle of its bucket, never above the maximum).
    fn quantile(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = Self::bounds(i);
                let mid = lo + (hi - lo) / 2;
                return mid.min(self.max.load(Ordering::Relaxed)) as f64 / 1000.0;
            }
        }
        self.max()
    }

    fn max(&self) -> f64 {
        self.max.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

struct Report {
    target: String,
    mode: Mode,
    protocol: LoadProtocol,
    clients: u32,
    elapsed: Duration,
    per_server: BTreeMap<String, u64>,
    ok: u64,
    errors: u64,
    retries: u64,
    reasons: BTreeMap<String, u64>,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    interrupted: bool,
}

impl Report {
    fn share(&self, n: u64) -> f64 {
        if self.ok == 0 { 0.0 } else { n as f64 * 100.0 / self.ok as f64 }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> serde_json::Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let servers: Vec<_> = self
            .per_server
            .iter()
            .map(|(name, &n)| {
                serde_json::json!({"server": name, "requests": n, "share_pct": round(self.share(n))})
            })
            .collect();
        serde_json::json!({
            "target": self.target,
            "mode": match self.mode { Mode::Frontend => "frontend", Mode::Directory => "directory" },
            "protocol": match self.protocol { LoadProtocol::Tcp => "tcp", LoadProtocol::Udp => "udp" },
            "clients": self.clients,
            "duration_s": round(self.elapsed.as_secs_f64()),
            "requests": self.ok,
            "errors": self.errors,
            "retries": self.retries,
            "requests_per_s": round(self.rate()),
            "servers": servers,
            "latency_ms": {
                "p50": round(self.p50), "p90": round(self.p90),
                "p99": round(self.p99), "max": round(self.max),
            },
            "error_reasons": self.reasons,
            "interrupted": self.interrupted,
        })
    }

    fn tables(&self) -> String {
        let mut servers = Table::new();
        servers.load_preset(ASCII_FULL_CONDENSED);
        servers.set_header(vec!["server", "requests", "share"]);
        for (name, &n) in &self.per_server {
            servers.add_row(vec![name.clone(), n.to_string(), format!("{:.1} %", self.share(n))]);
        }
        for i in 1..=2 {
            if let Some(c) = servers.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        let mut summary = Table::new();
        summary.load_preset(ASCII_FULL_CONDENSED);
        let rows = [
            ("requests", self.ok.to_string()),
            ("errors", self.errors.to_string()),
            ("retries", self.retries.to_string()),
            ("requests/s", format!("{:.1}", self.rate())),
            ("latency p50", format!("{:.2} ms", self.p50)),
            ("latency p90", format!("{:.2} ms", self.p90)),
            ("latency p99", format!("{:.2} ms", self.p99)),
            ("latency max", format!("{:.2} ms", self.max)),
        ];
        for (k, v) in rows {
            summary.add_row(vec![k.to_string(), v]);
        }
        if let Some(c) = summary.column_mut(1) {
            c.set_cell_alignment(CellAlignment::Right);
        }
        let mut out = format!(
            "{} clients against {} ({} {}) for {:.2} s{}\n",
            self.clients,
            self.target,
            match self.mode {
                Mode::Frontend => "frontend",
                Mode::Directory => "directory",
            },
            match self.protocol {
                LoadProtocol::Tcp => "tcp",
                LoadProtocol::Udp => "udp",
            },
            self.elapsed.as_secs_f64(),
            if self.interrupted { ", interrupted" } else { "" },
        );
        out.push_str(&format!("{servers}\n{summary}\n"));
        if !self.reasons.is_empty() {
            let mut errors = Table::new();
            errors.load_preset(ASCII_FULL_CONDENSED);
            errors.set_header(vec!["error", "count"]);
            for (why, n) in &self.reasons {
                errors.add_row(vec![why.clone(), n.to_string()]);
            }
            out.push_str(&format!("{errors}\n"));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000).chain([1 << 20, (1 << 20) + 1, u64::MAX / 2, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i < BUCKETS);
            assert!(i >= last, "index must not decrease");
            last = i;
            let (lo, hi) = Histogram::bounds(i);
            assert!(lo <= v && v <= hi, "{v} outside bucket {i} [{lo}, {hi}]");
            assert!((hi - lo) as f64 <= lo as f64 / 100.0 + 1.0, "bucket {i} too wide");
        }
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert!((h.quantile(0.5) - 50.0).abs() < 0.5, "{}", h.quantile(0.5));
        assert!((h.quantile(0.99) - 99.0).abs() < 1.0);
        assert_eq!(h.max(), 100.0);
        assert_eq!(Histogram::new().quantile(0.5), 0.0);
    }

    #[test]
    fn directory_answers() {
        let (a, name) = parse_pick(b"127.0.0.1:9001\n").unwrap();
        assert_eq!(a, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(name, "127.0.0.1:9001");
        assert!(parse_pick(b"[::1]:80\r\n").is_ok());
        assert_eq!(parse_pick(b"ERR no server\n").unwrap_err(), "directory answered ERR no server");
        assert!(parse_pick(b"nonsense\n").is_err());
    }
}
