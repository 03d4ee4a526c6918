//! Idle connections must be cheap: 5,000 proxied connections held open cost the balancer
//! less than 32 MiB resident more than it had before them (no buffer or pipe is held while
//! no byte flows), and an idle HTTP/1 keep-alive client at most 8 KiB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: usize = 5_000;
const LIMIT_KIB: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_under_32_mib() {
    let raised = raise_nofile();
    assert!(raised >= 3 * IDLE as u64, "open-file limit {raised} too low for this test");
    let b = Backend::start(Mode::Echo).await;
    let toml = config(2, "round-robin", &format!("\"{}\"", b.addr), "")
        .replace("drain_timeout", "max_connections = 6000\ndrain_timeout");
    let d = Daemon::run_config(&toml);
    let front = d.addr("web");
    let before = d.rss_kib();
    let mut conns = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut s = TcpStream::connect(front).await.unwrap();
        // One small exchange each, so every connection has been through the data path.
        if i % 10 == 0 {
            s.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
        }
        conns.push(s);
    }
    let accepts = b.accepts.clone();
    wait_until_async(Duration::from_secs(60), "all connections reach the backend", || {
        accepts.load(std::sync::atomic::Ordering::SeqCst) == IDLE as u64
    })
    .await;
    let rss = d.rss_kib().saturating_sub(before);
    println!(
        "RSS grew by {rss} KiB ({:.1} MiB) with {IDLE} idle proxied connections",
        rss as f64 / 1024.0
    );
    assert!(rss < LIMIT_KIB, "RSS {rss} KiB is over {LIMIT_KIB} KiB");
    drop(conns);
}

fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    getrlimit(Resource::Nofile).current.unwrap_or(0)
}

/// What one idle HTTP/1 keep-alive client costs: 5,000 clients each make one request and stay
/// connected; the balancer's resident memory grows by at most 8 KiB per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_keepalive_clients_cost_at_most_8_kib_each() {
    const PER_CLIENT_KIB: u64 = 8;
    let raised = raise_nofile();
    assert!(raised >= 3 * IDLE as u64, "open-file limit {raised} too low for this test");
    let server = listen_any();
    let addr = server.local_addr().unwrap();
    // A keep-alive HTTP/1 server answering every request with "ok".
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = server.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => have += k,
                    }
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let toml = format!(
        r#"
workers = 2
max_connections = 6000
[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"
[pool.app]
servers = ["{addr}"]
"#
    );
    let d = Daemon::run_config(&toml);
    let front = d.addr("web");
    let mut conns = Vec::with_capacity(IDLE + 100);
    let open = async |conns: &mut Vec<TcpStream>, n: usize| {
        for _ in 0..n {
            let mut s = TcpStream::connect(front).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"ok") {
                let mut b = [0u8; 512];
                let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(k > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&b[..k]);
            }
            conns.push(s);
        }
    };
    // Warm up: runtimes, pools and the upstream connections' idle lists settle first.
    open(&mut conns, 100).await;
    let before = d.rss_kib();
    open(&mut conns, IDLE).await;
    let after = d.rss_kib();
    let per = (after.saturating_sub(before)) as f64 / IDLE as f64;
    println!(
        "RSS {before} KiB -> {after} KiB with {IDLE} more idle HTTP/1 clients: {per:.2} KiB each"
    );
    assert!(per <= PER_CLIENT_KIB as f64, "{per:.2} KiB per idle client");
    drop(conns);
}
