//! The admin listener against clients that misbehave: partial request heads cannot hold up
//! shutdown or hold a connection for ever, connections are capped, and a web page cannot
//! drive an open loopback API (state changes need JSON or an Authorization header).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A daemon with an admin API and no token (loopback), drain_timeout 2 s.
fn daemon() -> (Daemon, SocketAddr, tempfile::TempDir) {
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let servers = format!("\"{}\"", b.local_addr().unwrap());
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        config(1, "round-robin", &servers, "")
            .replace("drain_timeout = \"10s\"", "drain_timeout = \"2s\"")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, toml).unwrap();
    let d = Daemon::spawn(&["run", "--config", path.to_str().unwrap()]);
    let api = d.find("admin API listening").unwrap()["address"].as_str().unwrap().parse().unwrap();
    (d, api, dir)
}

/// Opens `n` connections to the admin API, each with a request head that never ends.
async fn partial_heads(api: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(api).await.unwrap();
        s.write_all(b"GET /api/v1/pools HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        v.push(s);
    }
    v
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or the like before the close is fine: keep reading to the close.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Before: with one admin connection holding a partial request head, the daemon was still
/// running and accepting 15 s after SIGTERM with drain_timeout = "2s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_partial_admin_requests_exits_within_drain_timeout() {
    let (mut d, api, _dir) = daemon();
    let _held = partial_heads(api, 100).await;
    let t = Instant::now();
    d.signal(rustix::process::Signal::TERM);
    let st = d.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    assert!(st.success(), "{st:?}");
    assert!(took <= Duration::from_secs(3), "exited {took:?} after SIGTERM (drain 2 s + 1 s)");
}

/// Connections past the cap are closed at once; a partial head is closed after the
/// header-read timeout (10 s); a complete request is served again after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_partial_heads_time_out() {
    let (_d, api, _dir) = daemon();
    let mut held = partial_heads(api, 64).await;
    let mut extra = partial_heads(api, 6).await;
    for s in &mut extra {
        assert!(closed_within(s, Duration::from_secs(2)).await, "a 65th+ connection stayed open");
    }
    let t = Instant::now();
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(15)).await, "a partial head stayed open");
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(5), "partial heads closed after only {took:?}");
    let (status, _) = http(api, "GET", "/api/v1/pools", &[], "").await;
    assert_eq!(status, 200);
}

/// One request on a fresh connection: the status code and the raw answer.
async fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(api).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// What a web page can send cross-site without a preflight (a form post, text/plain) is
/// refused; the preflight itself gets no CORS permission; JSON or a token header passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_json_or_authorization() {
    let (_d, api, _dir) = daemon();
    for ct in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"]
    {
        let (status, text) =
            http(api, "POST", "/api/v1/reload", &[("Content-Type", ct)], "a=b").await;
        assert_eq!(status, 415, "{ct}: {text}");
    }
    let (status, _) = http(api, "POST", "/api/v1/reload", &[], "").await;
    assert_eq!(status, 415, "no content type");
    let (status, text) = http(
        api,
        "OPTIONS",
        "/api/v1/reload",
        &[("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST")],
        "",
    )
    .await;
    assert!(!(200..300).contains(&status), "preflight allowed: {text}");
    assert!(!text.to_ascii_lowercase().contains("access-control-allow"), "{text}");
    let (status, text) =
        http(api, "POST", "/api/v1/reload", &[("Content-Type", "application/json")], "").await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = http(
        api,
        "POST",
        "/api/v1/reload",
        &[("Content-Type", "application/json; charset=utf-8")],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = http(api, "GET", "/api/v1/pools", &[], "").await;
    assert_eq!(status, 200, "reading needs neither");
}
