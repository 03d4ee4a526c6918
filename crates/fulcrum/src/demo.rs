//! `fulcrum demo`: the tour. Three echo backends of different speeds on loopback report their
//! load to the balancer over the agent protocol; the balancer serves one frontend per
//! algorithm over the same three servers; a bounded burst of traffic goes through each, and
//! the spread, latency and slow responses are printed side by side. Then the HTTP part: an
//! HTTP frontend with a route in front of three HTTP backends, keep-alive clients, where each
//! request went and one answer's head as the client saw it. Everything printed is measured
//! in this run; nothing is computed from the code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fulcrum_admin::{Controller, start_agent};
use fulcrum_config::{Agent, Config, Frontend, Pool, Protocol, Route, Server, ServerAddr};
use fulcrum_core::agent::{self, Hello, Message, Report};
use fulcrum_core::balance::Algorithm;
use fulcrum_proxy::EngineOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

/// (name, service time per request in ms).
const BACKENDS: [(&str, u64); 3] = [("fast", 2), ("medium", 8), ("slow", 40)];
const ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RoundRobin, Algorithm::LeastConnections, Algorithm::LeastLoad];
const CONCURRENCY: usize = 12;
/// A response slower than this counts as slow in the table.
const SLOW_MS: f64 = 30.0;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REPORT_EVERY: Duration = Duration::from_millis(20);
const KEY: &[u8] = b"fulcrum-demo-pre-shared-key";
/// The HTTP part's backends (name, service time in ms): the site's two, then the API's.
const HTTP_BACKENDS: [(&str, u64); 3] = [("site-1", 1), ("site-2", 1), ("api", 1)];
/// Keep-alive client connections of the HTTP part, each sending its share of the requests.
const HTTP_CLIENTS: u32 = 4;

pub fn run(connections: u32) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let deadline = Duration::from_secs(120);
    rt.block_on(async {
        tokio::time::timeout(deadline, tour(connections))
            .await
            .map_err(|_| format!("demo did not finish within {deadline:?}"))?
    })
}

/// Live numbers of one demo backend, reported to the balancer.
#[derive(Default)]
struct Load {
    clients: AtomicU64,
    queue: AtomicU64,
}

async fn tour(connections: u32) -> Result<(), String> {
    let stop = CancellationToken::new();
    let dir = std::env::temp_dir().join(format!("fulcrum-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, KEY).map_err(|e| format!("key file: {e}"))?;

    println!("fulcrum demo: three echo backends on loopback, each answering after a delay,");
    println!("reporting their connected clients and queue to the balancer every {REPORT_EVERY:?}:");
    let mut backends = Vec::new();
    for (name, delay_ms) in BACKENDS {
        let l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
        let a = l.local_addr().map_err(|e| e.to_string())?;
        println!("  {name:<7} {a}  {delay_ms:>2} ms per request");
        let load = Arc::new(Load::default());
        tokio::spawn(backend(l, name, Duration::from_millis(delay_ms), load.clone(), stop.clone()));
        backends.push((a, load));
    }

    let servers: Vec<Server> =
        backends.iter().map(|(a, _)| Server::new(ServerAddr::from_socket(*a))).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().map_err(|_| "addr")?;
    // The HTTP part's backends: two for the site, one for the API.
    let mut http_servers = Vec::new();
    for (name, delay_ms) in HTTP_BACKENDS {
        let l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
        let a = l.local_addr().map_err(|e| e.to_string())?;
        crate::backend::spawn_http(l, name, Duration::from_millis(delay_ms));
        http_servers.push(Server::new(ServerAddr::from_socket(a)));
    }
    let mut frontends: Vec<Frontend> =
        ALGORITHMS.iter().map(|a| Frontend::new(a.name(), any, a.name())).collect();
    let mut pools: Vec<Pool> =
        ALGORITHMS.iter().map(|a| Pool::new(a.name(), *a, servers.clone())).collect();
    let mut http = Frontend::new("http", any, "site");
    http.protocol = Protocol::Http;
    http.routes.push(Route {
        hosts: Vec::new(),
        path_prefix: Some("/api".into()),
        path_regex: None,
        methods: Vec::new(),
        header: None,
        pool: Some("api".into()),
        strip_prefix: Some("/api".into()),
        set_headers: Vec::new(),
        remove_headers: Vec::new(),
        redirect_https: false,
        sni: Vec::new(),
        passthrough: false,
        line: 0,
    });
    frontends.push(http);
    pools.push(Pool::new("site", Algorithm::RoundRobin, http_servers[..2].to_vec()));
    pools.push(Pool::new("api", Algorithm::RoundRobin, http_servers[2..].to_vec()));
    let config = Config {
        workers: Some(2),
        access_log: false,
        agent: Some(Agent {
            bind: any,
            key_file: key_file.clone(),
            report_interval: REPORT_EVERY,
            missed_reports: 5,
        }),
        frontends,
        pools,
        ..Config::default()
    };
    let opts = EngineOptions { default_max_connections: 4_096, ..EngineOptions::default() };
    let controller = Controller::start(config, None, opts, tokio::runtime::Handle::current())?;
    let fronts: Vec<(Algorithm, SocketAddr)> = ALGORITHMS
        .iter()
        .filter_map(|a| controller.engine().local_addr(a.name()).map(|f| (*a, f)))
        .collect();
    let http_front = controller.engine().local_addr("http").ok_or("no http frontend")?;
    let controller = controller.into_shared();
    let agent_addr =
        start_agent(controller.clone(), stop.clone()).await?.ok_or("no agent listener")?;
    // Only the least-load pool acts on reports; the others balance on their own counts.
    for (a, load) in &backends {
        tokio::spawn(report(agent_addr, *a, load.clone(), stop.clone()));
    }
    wait_for_reports(&controller, backends.len()).await?;

    println!(
        "\n{connections} client connections per algorithm, {CONCURRENCY} at a time, one request each.\n"
    );
    println!(
        "{:<18} {:>6} {:>7} {:>6} {:>8} {:>8} {:>10} {:>7}",
        "algorithm", "fast", "medium", "slow", "p50 ms", "p99 ms", "slow resp.", "errors"
    );
    let mut rows = Vec::new();
    for (algo, front) in fronts {
        let r = drive(front, connections).await?;
        println!(
            "{:<18} {:>6} {:>7} {:>6} {:>8.1} {:>8.1} {:>10} {:>7}",
            algo.name(),
            r.per_backend[0],
            r.per_backend[1],
            r.per_backend[2],
            r.p50_ms,
            r.p99_ms,
            r.slow,
            r.errors
        );
        rows.push((algo, r));
    }
    // One line in a fixed form ("name count" pairs), for people and for scripts alike.
    let summary: Vec<String> =
        rows.iter().map(|(a, r)| format!("{} {}", a.name(), r.slow)).collect();
    println!("\nslow answers (slower than {SLOW_MS} ms, of {connections}): {}", summary.join(", "));
    println!(
        "round-robin spreads evenly whatever the speed; least-connections counts open\n\
         connections; least-load uses what the backends report, plus the clients sent and\n\
         minus those that ended since, so the slow backend gets fewer clients.\n\
         Try it yourself: fulcrum forward 127.0.0.1:8080 9001 9002 9003"
    );
    http_part(http_front, connections).await?;
    stop.cancel();
    let c = controller.clone();
    tokio::task::spawn_blocking(move || c.blocking_lock().shutdown())
        .await
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn wait_for_reports(controller: &Mutex<Controller>, n: usize) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = controller.lock().await.engine().snapshot();
        let fresh = snap
            .pool(Algorithm::LeastLoad.name())
            .map(|p| p.servers.iter().filter(|s| s.stats.last_report_ms() > 0).count())
            .unwrap_or(0);
        if fresh >= n {
            return Ok(());
        }
        if Instant::now() > end {
            return Err("backends did not report to the agent listener".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Row {
    per_backend: [u32; 3],
    p50_ms: f64,
    p99_ms: f64,
    slow: u32,
    errors: u32,
}

async fn drive(front: SocketAddr, n: u32) -> Result<Row, String> {
    let sem = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(REQUEST_TIMEOUT, request(front, i)).await;
            drop(permit);
            r.ok().and_then(Result::ok)
        }));
    }
    let mut row = Row { per_backend: [0; 3], p50_ms: 0.0, p99_ms: 0.0, slow: 0, errors: 0 };
    let mut lat = Vec::with_capacity(n as usize);
    for t in tasks {
        match t.await.ok().flatten() {
            Some((name, d)) => {
                match BACKENDS.iter().position(|b| b.0 == name) {
                    Some(i) => row.per_backend[i] += 1,
                    None => row.errors += 1,
                }
                if d.as_secs_f64() * 1000.0 > SLOW_MS {
                    row.slow += 1;
                }
                lat.push(d);
            }
            None => row.errors += 1,
        }
    }
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    row.p50_ms = pct(0.50);
    row.p99_ms = pct(0.99);
    Ok(row)
}

async fn request(front: SocketAddr, i: u32) -> std::io::Result<(String, Duration)> {
    let t = Instant::now();
    let s = TcpStream::connect(front).await?;
    let (r, mut w) = s.into_split();
    w.write_all(format!("hello {i}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let name = line.split(':').next().unwrap_or("").to_string();
    Ok((name, t.elapsed()))
}

async fn backend(
    l: TcpListener,
    name: &'static str,
    delay: Duration,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            () = stop.cancelled() => return,
        };
        let Ok((s, _)) = accepted else { continue };
        // Counted at accept, not when the task first runs: the balancer counts the client as
        // soon as its connect returns, and a report sampled in between would miss it.
        load.clients.fetch_add(1, Ordering::Relaxed);
        let load = load.clone();
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                load.queue.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                load.queue.fetch_sub(1, Ordering::Relaxed);
                let reply = format!("{name}: {}\n", line.to_uppercase());
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
            load.clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The backend's agent: HELLO, then a report of its real clients and queue every interval.
async fn report(agent_addr: SocketAddr, me: SocketAddr, load: Arc<Load>, stop: CancellationToken) {
    let session = async {
        let mut s = TcpStream::connect(agent_addr).await.ok()?;
        let mut ch = [0u8; agent::CHALLENGE_LEN];
        s.read_exact(&mut ch).await.ok()?;
        let nonce = agent::parse_challenge(&ch).ok()?;
        let pool = Algorithm::LeastLoad.name().to_string();
        let hello =
            Message::Hello(Hello { pool, address: me.to_string(), version: agent::VERSION });
        s.write_all(&agent::encode_message(KEY, &nonce, 1, &hello)).await.ok()?;
        for seq in 2.. {
            let r = Report {
                clients: load.clients.load(Ordering::Relaxed),
                queue: load.queue.load(Ordering::Relaxed),
                weight: None,
                state: None,
            };
            let f = agent::encode_message(KEY, &nonce, seq, &Message::Report(r));
            s.write_all(&f).await.ok()?;
            tokio::time::sleep(REPORT_EVERY).await;
        }
        Some(())
    };
    tokio::select! {
        _ = session => {}
        () = stop.cancelled() => {}
    }
}

/// The HTTP part: requests to `/` (the site's pool, round-robin over two backends) and to
/// `/api/...` (a route to the API's pool, its prefix stripped), over keep-alive connections;
/// where each went (the backends name themselves in `X-Backend`), how long it took, and one
/// answer's head as a client sees it.
async fn http_part(front: SocketAddr, requests: u32) -> Result<(), String> {
    println!(
        "\nHTTP: a protocol = \"http\" frontend at {front}; /api/* is routed to pool \"api\" \
         (prefix stripped),\neverything else to pool \"site\" (round-robin over site-1 and \
         site-2). {HTTP_CLIENTS} keep-alive clients.\n"
    );
    println!(
        "{:<14} {:>8} {:>7} {:>7} {:>6} {:>8} {:>8} {:>7}",
        "request", "requests", "site-1", "site-2", "api", "p50 ms", "p99 ms", "errors"
    );
    let mut sample = String::new();
    for path in ["/", "/api/users"] {
        let per = (requests / HTTP_CLIENTS).max(1);
        let mut tasks = Vec::new();
        for _ in 0..HTTP_CLIENTS {
            tasks.push(tokio::spawn(http_client(front, path, per)));
        }
        let (mut counts, mut times, mut errors) = ([0u32; 3], Vec::new(), 0u32);
        for t in tasks {
            let (names, ts, errs, head) = t.await.map_err(|e| e.to_string())?;
            for n in names {
                if let Some(i) = HTTP_BACKENDS.iter().position(|(b, _)| *b == n) {
                    counts[i] += 1;
                }
            }
            times.extend(ts);
            errors += errs;
            if sample.is_empty() {
                sample = head;
            }
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times.get(((times.len() as f64 - 1.0) * p) as usize).copied();
        println!(
            "{:<14} {:>8} {:>7} {:>7} {:>6} {:>8.2} {:>8.2} {:>7}",
            format!("GET {path}"),
            per * HTTP_CLIENTS,
            counts[0],
            counts[1],
            counts[2],
            pct(0.5).unwrap_or(0.0),
            pct(0.99).unwrap_or(0.0),
            errors
        );
    }
    println!(
        "\nOne answer as the client saw it (fulcrum adds X-Request-Id; the backend names itself):"
    );
    for line in sample.lines() {
        println!("  {line}");
    }
    println!(
        "\nTry it yourself with a config file (docs/http.md):\n  \
         [frontend.web] bind = \"127.0.0.1:8080\", protocol = \"http\", pool = \"app\"\n  \
         curl -i http://127.0.0.1:8080/ ; curl --http2-prior-knowledge http://127.0.0.1:8080/"
    );
    Ok(())
}

/// One keep-alive client: `n` GETs of `path`; the backend of each answer, the times in ms,
/// the failures, and the first answer's head.
async fn http_client(
    front: SocketAddr,
    path: &'static str,
    n: u32,
) -> (Vec<String>, Vec<f64>, u32, String) {
    let (mut names, mut times, mut errors, mut head) = (Vec::new(), Vec::new(), 0, String::new());
    let Ok(mut s) = TcpStream::connect(front).await else { return (names, times, n, head) };
    let req = format!("GET {path} HTTP/1.1\r\nHost: demo.local\r\n\r\n");
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..n {
        let t = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            s.write_all(req.as_bytes()).await?;
            read_http_answer(&mut s, &mut buf).await
        })
        .await;
        match answer {
            Ok(Ok((h, backend))) => {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                names.push(backend);
                if head.is_empty() {
                    head = h;
                }
            }
            _ => {
                errors += 1;
                match TcpStream::connect(front).await {
                    Ok(fresh) => s = fresh,
                    Err(_) => break,
                }
                buf.clear();
            }
        }
    }
    (names, times, errors, head)
}

/// Reads one answer with a `Content-Length` body: its head and its `X-Backend`.
async fn read_http_answer(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<(String, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let field = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let len: usize = field("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok((head.clone(), field("x-backend").unwrap_or_default()));
            }
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("answer too long"));
        }
        let mut chunk = [0u8; 4096];
        let k = s.read(&mut chunk).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}
