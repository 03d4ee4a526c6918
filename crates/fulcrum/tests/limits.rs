//! Limits and resource exhaustion: the global connection limit pauses accepting instead of
//! refusing, running out of descriptors backs off instead of killing a worker, and the drain
//! timeout bounds a shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn echo_once(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await?;
    assert_eq!(got, msg);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_queues_clients_until_a_slot_frees() {
    let b = Backend::start(Mode::Echo).await;
    let toml = config(2, "round-robin", &format!("\"{}\"", b.addr), "")
        .replace("drain_timeout", "max_connections = 5\ndrain_timeout")
        // One address holding every slot: with the fair share it would be refused more
        // (tests/fair_share.rs); without it, it waits.
        .replace("pool = \"app\"\n", "pool = \"app\"\nfair_share = false\n");
    let d = Daemon::run_config(&toml);
    let front = d.addr("web");
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(front).await.unwrap();
        echo_once(&mut s, b"x").await.unwrap();
        held.push(s);
    }
    // The sixth client is accepted by the kernel but not served while the limit is reached.
    let mut sixth = TcpStream::connect(front).await.unwrap();
    sixth.write_all(b"waiting").await.unwrap();
    let mut buf = [0u8; 7];
    let early = tokio::time::timeout(Duration::from_millis(300), sixth.read_exact(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    assert_eq!(b.accepts(), 5);
    // One slot frees: the waiting client is served, nothing was refused.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), sixth.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let b = Backend::start(Mode::Echo).await;
    let (_dir, path) = temp_path("f.toml");
    std::fs::write(&path, config(1, "round-robin", &format!("\"{}\"", b.addr), "")).unwrap();
    // 64 descriptors in all: a few dozen connections exhaust them.
    let mut d = Daemon::spawn_with_prefix(
        &["prlimit", "--nofile=64:64", "--"],
        &["run", "--config", path.to_str().unwrap()],
    );
    let front = d.addr("web");
    let mut held = Vec::new();
    for _ in 0..60 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(front)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    let dd = &d;
    wait_until_async(Duration::from_secs(10), "an accept or connect failure to be logged", || {
        dd.find("accept failed").is_some() || dd.find("connect to server failed").is_some()
    })
    .await;
    assert!(d.alive(), "daemon died when out of descriptors");
    drop(held);
    // Once descriptors are back, new clients are served by the same worker.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = async {
            let mut s = TcpStream::connect(front).await?;
            echo_once(&mut s, b"again").await
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), ok).await {
            break;
        }
        assert!(Instant::now() < end, "not serving again after descriptors were freed");
    }
    assert!(d.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    let b = Backend::start(Mode::Echo).await;
    let toml = config(1, "round-robin", &format!("\"{}\"", b.addr), "")
        .replace("drain_timeout = \"10s\"", "drain_timeout = \"1s\"");
    let mut d = Daemon::run_config(&toml);
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    echo_once(&mut s, b"hold").await.unwrap();
    let t = Instant::now();
    d.signal(rustix::process::Signal::TERM);
    let st = d.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    // The held connection was closed by the exit.
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}
