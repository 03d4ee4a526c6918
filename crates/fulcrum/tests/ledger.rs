//! One ledger per client: every protocol writes exactly one access-log line per connection or
//! session, with the same fields, and gives back every count it took (the frontends' and
//! servers' active counts are 0 once the clients are gone).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const FIELDS: [&str; 8] =
    ["client", "frontend", "protocol", "server", "bytes_in", "bytes_out", "duration_ms", "outcome"];

fn access_lines(d: &Daemon) -> Vec<Value> {
    d.log.lock().unwrap().iter().filter(|v| v["target"] == "fulcrum::access").cloned().collect()
}

/// A line server answering `<line> ok` to each line, on 127.0.0.1:0.
async fn line_server() -> SocketAddr {
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{line} ok\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends one line on a fresh connection and reads one line back.
async fn one_line(front: SocketAddr, line: &str) -> String {
    let s = TcpStream::connect(front).await.unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut lines = BufReader::new(r).lines();
    let got = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
    got.unwrap().unwrap().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_writes_one_access_line_with_the_same_fields() {
    let echo = Backend::start(Mode::Echo).await;
    let lines = line_server().await;
    let udp_echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp_echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp_echo.recv_from(&mut buf) {
            let _ = udp_echo.send_to(&buf[..n], from);
        }
    });
    let toml = format!(
        r#"
workers = 2
access_log = true
drain_timeout = "2s"

[frontend.proxy]
bind = "127.0.0.1:0"
pool = "echo"

[frontend.dir]
bind = "127.0.0.1:0"
protocol = "directory"
pool = "echo"

[frontend.fan]
bind = "127.0.0.1:0"
pool = "lines"
mode = "fanout"
[frontend.fan.fanout]
timeout = "2s"

[frontend.dgram]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "udp"
session_timeout = "300ms"

[pool.echo]
servers = ["{}"]
[pool.lines]
servers = ["{lines}"]
[pool.udp]
servers = ["{udp_addr}"]
"#,
        echo.addr
    );
    let d = Daemon::run_config(&toml);
    assert_eq!(one_line(d.addr("proxy"), "hello").await, "hello");
    assert_eq!(one_line(d.addr("dir"), "PICK").await, echo.addr.to_string());
    assert_eq!(one_line(d.addr("fan"), "name").await, "name ok");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    u.send_to(b"ping", d.addr("dgram")).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = u.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    // Each client ends (the TCP ones closed by the test, the UDP session by its timeout).
    wait_until_async(Duration::from_secs(10), "one line per frontend", || {
        let lines = access_lines(&d);
        ["proxy", "dir", "fan", "dgram"]
            .iter()
            .all(|f| lines.iter().filter(|v| v["frontend"] == *f).count() == 1)
    })
    .await;
    let lines = access_lines(&d);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for v in &lines {
        for f in FIELDS {
            assert!(!v[f].is_null(), "field {f} missing in {v}");
        }
    }
    let by = |f: &str| lines.iter().find(|v| v["frontend"] == f).unwrap().clone();
    assert_eq!(by("proxy")["protocol"], "tcp");
    assert_eq!(by("proxy")["server"], echo.addr.to_string());
    assert_eq!(by("proxy")["bytes_in"], 6);
    assert_eq!(by("dir")["protocol"], "directory");
    assert_eq!(by("fan")["protocol"], "tcp-fanout");
    assert_eq!(by("dgram")["protocol"], "udp");
    assert_eq!(by("dgram")["server"], udp_addr.to_string());
    assert_eq!(by("dgram")["outcome"], "idle-timeout");
}

/// A proxied client that stops reading while its server keeps sending is closed after
/// `send_timeout` (1 s here; the idle timeout, 300 s, would not close it: bytes were moving
/// until the buffers filled), logged as `send-timeout`, and its counts are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_client_that_stops_reading_is_closed_after_send_timeout() {
    let b = Backend::start(Mode::ReadAllThenSend(64 << 20)).await;
    let toml = format!(
        "access_log = true\n{}",
        config(1, "round-robin", &format!("\"{}\"", b.addr), "")
            .replace("pool = \"app\"\n", "pool = \"app\"\nsend_timeout = \"1s\"\n")
    );
    let d = Daemon::run_config(&toml);
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"send me everything\n").await.unwrap();
    s.shutdown().await.unwrap();
    // Never read: 64 MiB cannot fit in the socket buffers on the way.
    let started = std::time::Instant::now();
    wait_until_async(Duration::from_secs(10), "the send-timeout line", || {
        access_lines(&d).iter().any(|v| v["outcome"] == "send-timeout")
    })
    .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before send_timeout");
    let line = access_lines(&d).into_iter().find(|v| v["outcome"] == "send-timeout").unwrap();
    assert_eq!(line["protocol"], "tcp");
    assert!(line["bytes_out"].as_u64().unwrap() < 64 << 20, "{line}");
    drop(s);
}
