//! Idle connections must be cheap: 5,000 proxied connections held open cost the balancer
//! less than 32 MiB resident (no buffer or pipe is held while no byte flows).
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
    let rss = d.rss_kib();
    println!(
        "RSS with {IDLE} idle proxied connections: {rss} KiB ({:.1} MiB)",
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
