//! End-to-end TCP proxying through the real binary: integrity, half-close, exact rotation,
//! failover, many concurrent connections and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes each connection sends and receives in the integrity test.
const BULK_BYTES: usize = 64 << 20;
const BULK_CONNECTIONS: usize = 50;

async fn bulk_roundtrip(front: std::net::SocketAddr, seed: u64) -> ([u8; 32], [u8; 32]) {
    let s = TcpStream::connect(front).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut h = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = BULK_BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill(&mut chunk[..n]);
            h.update(&chunk[..n]);
            w.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        <[u8; 32]>::from(h.finalize())
    });
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    assert_eq!(got, BULK_BYTES, "connection {seed} received a different byte count");
    (writer.await.unwrap(), <[u8; 32]>::from(h.finalize()))
}

/// Pipes the process holds (splice pipes stay pooled per worker after a transfer).
fn pipes(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// 64 MiB each way on 50 connections, through a daemon run with `flags`; returns how many
/// pipes the daemon gained.
async fn bulk_integrity(flags: &[&str]) -> usize {
    let backends = [Backend::start(Mode::Echo).await, Backend::start(Mode::Echo).await];
    let servers = format!("\"{}\", \"{}\"", backends[0].addr, backends[1].addr);
    let d = Daemon::run_config_with(&config(2, "round-robin", &servers, ""), flags);
    let front = d.addr("web");
    let pipes_before = pipes(d.pid());
    let deadline = Duration::from_secs(240);
    let tasks: Vec<_> =
        (0..BULK_CONNECTIONS as u64).map(|i| tokio::spawn(bulk_roundtrip(front, i))).collect();
    let results = tokio::time::timeout(deadline, async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
    .await
    .expect("bulk transfer finished in time");
    for (i, (sent, received)) in results.iter().enumerate() {
        assert_eq!(sent, received, "SHA-256 differs on connection {i}");
    }
    assert_eq!(backends[0].accepts() + backends[1].accepts(), BULK_CONNECTIONS as u64);
    pipes(d.pid()).saturating_sub(pipes_before)
}

/// The default (`auto`) copies through buffers on loopback, where the receiver is local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_both_ways_arrive_intact_on_50_connections() {
    assert_eq!(bulk_integrity(&[]).await, 0, "auto spliced towards a local receiver");
}

/// The zero-copy path, which `auto` takes towards receivers on other hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_arrive_intact_through_splice_too() {
    assert!(bulk_integrity(&["--splice", "always"]).await > 0, "no pipe was ever made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_still_gets_the_whole_response() {
    const RESPONSE: usize = 3 << 20;
    let b = Backend::start(Mode::ReadAllThenSend(RESPONSE)).await;
    let d = Daemon::run_config(&config(1, "round-robin", &format!("\"{}\"", b.addr), ""));
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"GET everything\n").await.unwrap();
    s.shutdown().await.unwrap(); // half-close: we send no more, but still read
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("response in time")
        .unwrap();
    assert_eq!(got.len(), RESPONSE);
    assert!(got == pattern(RESPONSE), "response corrupted");
}

async fn spread(front: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        order.push(
            tokio::time::timeout(Duration::from_secs(5), ask_name(front)).await.unwrap().unwrap(),
        );
    }
    order
}

fn counts(order: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in order {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_300_connections_exactly_even_across_workers() {
    let bs = [
        Backend::start(Mode::Named("a")).await,
        Backend::start(Mode::Named("b")).await,
        Backend::start(Mode::Named("c")).await,
    ];
    let servers = bs.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ");
    let d = Daemon::run_config(&config(4, "round-robin", &servers, ""));
    // Concurrent clients so the kernel spreads them over all four workers.
    let front = d.addr("web");
    let tasks: Vec<_> = (0..10).map(|_| tokio::spawn(spread(front, 30))).collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let c = counts(&all);
    assert_eq!((c["a"], c["b"], c["c"]), (100, 100, 100), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_honours_5_1_1_within_one_per_cycle() {
    let bs = [
        Backend::start(Mode::Named("a")).await,
        Backend::start(Mode::Named("b")).await,
        Backend::start(Mode::Named("c")).await,
    ];
    let servers = format!(
        "{{ address = \"{}\", weight = 5 }}, \"{}\", \"{}\"",
        bs[0].addr, bs[1].addr, bs[2].addr
    );
    let d = Daemon::run_config(&config(2, "weighted-round-robin", &servers, ""));
    let order = spread(d.addr("web"), 70).await;
    for (i, cycle) in order.chunks(7).enumerate() {
        let c = counts(cycle);
        let get = |k: &str| c.get(k).copied().unwrap_or(0) as i64;
        assert!((get("a") - 5).abs() <= 1, "cycle {i}: {cycle:?}");
        assert!((get("b") - 1).abs() <= 1, "cycle {i}: {cycle:?}");
        assert!((get("c") - 1).abs() <= 1, "cycle {i}: {cycle:?}");
    }
    let c = counts(&order);
    assert_eq!((c["a"], c["b"], c["c"]), (50, 10, 10), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_down_no_client_sees_a_failure() {
    let a = Backend::start(Mode::Echo).await;
    let b = Backend::start(Mode::Echo).await;
    let dead = closed_port();
    let servers = format!("\"{}\", \"127.0.0.1:{dead}\", \"{}\"", a.addr, b.addr);
    let d = Daemon::run_config(&config(2, "round-robin", &servers, ""));
    let front = d.addr("web");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(20));
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let p = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                let mut s = TcpStream::connect(front).await?;
                let msg = format!("ping {i}");
                s.write_all(msg.as_bytes()).await?;
                s.shutdown().await?;
                let mut got = String::new();
                s.read_to_string(&mut got).await?;
                std::io::Result::Ok(got == msg)
            })
            .await;
            drop(p);
            matches!(r, Ok(Ok(true)))
        }));
    }
    let mut failures = 0;
    for t in tasks {
        if !t.await.unwrap() {
            failures += 1;
        }
    }
    assert_eq!(failures, 0, "client-visible failures with one server down");
    assert_eq!(a.accepts() + b.accepts(), 1000);
    assert!(d.alive_check());
    // The dead server was ejected (skipped for a while) rather than tried every third time.
    let dd = &d;
    wait_until_async(Duration::from_secs(5), "an ejection to be logged", || {
        dd.events("connect to server failed").iter().any(|e| e["ejected"] == true)
    })
    .await;
}

trait AliveCheck {
    fn alive_check(&self) -> bool;
}

impl AliveCheck for Daemon {
    fn alive_check(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid())).exists()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_clients_closed_promptly_and_traffic_resumes() {
    let (p1, p2) = (closed_port(), closed_port());
    let servers = format!("\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"");
    let mut d = Daemon::run_config(&config(2, "round-robin", &servers, ""));
    let front = d.addr("web");
    for _ in 0..20 {
        let t = Instant::now();
        let mut s = TcpStream::connect(front).await.unwrap();
        let mut buf = [0u8; 16];
        // Closed by the balancer: EOF or reset, within the connect timeout (1s).
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "client not closed: {r:?}");
        assert!(t.elapsed() < Duration::from_secs(1), "closed after {:?}", t.elapsed());
    }
    assert!(d.alive());
    assert!(d.find("no server available: client closed").is_some());
    // A server comes back on one of the ports: traffic flows again.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", p2)).await.unwrap();
    let _b = Backend::on(l, Mode::Named("back"));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(name)) = tokio::time::timeout(Duration::from_secs(2), ask_name(front)).await
            && name == "back"
        {
            break;
        }
        assert!(Instant::now() < end, "traffic did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once back, every connection succeeds (the dead one is skipped or retried).
    for _ in 0..20 {
        assert_eq!(ask_name(front).await.unwrap(), "back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_open_at_once_are_all_served() {
    const N: usize = 2000;
    let b = Backend::start(Mode::Echo).await;
    let d = Daemon::run_config(&config(2, "round-robin", &format!("\"{}\"", b.addr), ""));
    let front = d.addr("web");
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(TcpStream::connect(front).await.unwrap());
    }
    // All N are open through the balancer at the same time before any closes.
    let b_accepts = b.accepts.clone();
    wait_until_async(Duration::from_secs(30), "all connections reach the backend", || {
        b_accepts.load(std::sync::atomic::Ordering::SeqCst) == N as u64
    })
    .await;
    let mut tasks = Vec::with_capacity(N);
    for (i, mut s) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let msg = format!("hello {i}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got).await.unwrap();
            got == msg.as_bytes()
        }));
    }
    let ok = tokio::time::timeout(Duration::from_secs(60), async {
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        ok
    })
    .await
    .unwrap();
    assert_eq!(ok, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_connections_finish_then_exits_zero() {
    let b = Backend::start(Mode::Echo).await;
    let mut d = Daemon::run_config(&config(2, "round-robin", &format!("\"{}\"", b.addr), ""));
    let front = d.addr("web");
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(b"before ").await.unwrap();
        let mut got = [0u8; 7];
        s.read_exact(&mut got).await.unwrap();
        open.push(s);
    }
    d.signal(rustix::process::Signal::TERM);
    let dd = &d;
    wait_until_async(Duration::from_secs(10), "the stop to be logged", || {
        dd.find("stopping: no new connections, draining open ones").is_some()
    })
    .await;
    // New clients are refused once the listeners are closed.
    let end = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(front).await.is_ok() {
        assert!(Instant::now() < end, "listener still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open ones keep working until they finish on their own.
    for s in &mut open {
        s.write_all(b"after").await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");
    }
    assert!(d.alive(), "exited while connections were open");
    drop(open);
    let st = d.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st}");
    assert!(d.find("stopped").is_some());
}
