//! `fulcrum demo`: three echo backends of different speeds on loopback, a balancer in front
//! of them, and a bounded burst of traffic through it for several algorithms, printed side by
//! side. Everything is measured in this run; nothing in the table is computed from the code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_config::{Config, Frontend, Pool, Server, ServerAddr};
use fulcrum_core::balance::Algorithm;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::cli::Splice;

const BACKENDS: [(&str, u64, u32); 3] = [("alpha", 1, 3), ("beta", 4, 2), ("gamma", 15, 1)];
const CONCURRENCY: usize = 12;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(connections: u32) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(tour(connections))
}

async fn tour(connections: u32) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut addrs = Vec::new();
    println!("fulcrum demo: three echo backends on loopback, each answering after a delay:");
    for (name, delay_ms, weight) in BACKENDS {
        let l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
        let a = l.local_addr().map_err(|e| e.to_string())?;
        println!("  {name:<6} {a}  {delay_ms:>2} ms per request  (weight {weight} where used)");
        tokio::spawn(backend(l, name, Duration::from_millis(delay_ms), stop.clone()));
        addrs.push(a);
    }
    println!(
        "\n{connections} client connections per algorithm, {CONCURRENCY} at a time, one request each.\n"
    );
    println!(
        "{:<22} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}",
        "algorithm", "alpha", "beta", "gamma", "p50 ms", "p99 ms", "errors"
    );
    let algos = [Algorithm::RoundRobin, Algorithm::WeightedRoundRobin, Algorithm::LeastConnections];
    for algo in algos {
        let r = drive(algo, &addrs, connections).await?;
        println!(
            "{:<22} {:>7} {:>7} {:>7} {:>8.1} {:>8.1} {:>7}",
            algo.name(),
            r.per_backend[0],
            r.per_backend[1],
            r.per_backend[2],
            r.p50_ms,
            r.p99_ms,
            r.errors
        );
    }
    println!(
        "\nround-robin spreads evenly; weighted-round-robin follows the weights 3/2/1;\n\
         least-connections sends fewer clients to the slow backend, so latency drops.\n\
         Try it yourself: fulcrum forward 127.0.0.1:8080 9001 9002 9003"
    );
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

struct Report {
    per_backend: [u32; 3],
    p50_ms: f64,
    p99_ms: f64,
    errors: u32,
}

async fn drive(algo: Algorithm, addrs: &[SocketAddr], n: u32) -> Result<Report, String> {
    let servers = addrs
        .iter()
        .zip(BACKENDS)
        .map(|(a, (_, _, w))| Server { weight: w, ..Server::new(ServerAddr::from_socket(*a)) })
        .collect();
    let config = Config {
        workers: Some(2),
        access_log: false,
        frontends: vec![Frontend::new("demo", "127.0.0.1:0".parse().map_err(|_| "addr")?, "demo")],
        pools: vec![Pool::new("demo", algo, servers)],
        ..Config::default()
    };
    let mut engine = match crate::run::start_engine(&config, Splice::Auto) {
        Ok(e) => e,
        Err(crate::run::Failure::Config(m) | crate::run::Failure::Runtime(m)) => return Err(m),
    };
    let front = engine.local_addr("demo").ok_or("no listener")?;
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
    let mut report = Report { per_backend: [0; 3], p50_ms: 0.0, p99_ms: 0.0, errors: 0 };
    let mut lat = Vec::with_capacity(n as usize);
    for t in tasks {
        match t.await.ok().flatten() {
            Some((name, d)) => {
                match BACKENDS.iter().position(|b| b.0 == name) {
                    Some(i) => report.per_backend[i] += 1,
                    None => report.errors += 1,
                }
                lat.push(d);
            }
            None => report.errors += 1,
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
    report.p50_ms = pct(0.50);
    report.p99_ms = pct(0.99);
    engine.shutdown();
    tokio::task::spawn_blocking(move || engine.join()).await.map_err(|e| e.to_string())?;
    Ok(report)
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

async fn backend(l: TcpListener, name: &'static str, delay: Duration, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((s, _)) = l.accept().await else { continue };
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tokio::time::sleep(delay).await;
                let reply = format!("{name}: {}\n", line.to_uppercase());
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}
