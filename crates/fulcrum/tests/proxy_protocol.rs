//! The PROXY protocol against HAProxy as a real peer, both ways:
//!
//! * `haproxy_sends_v1_and_v2_and_fulcrum_logs_the_real_client`: HAProxy in front with
//!   `send-proxy` / `send-proxy-v2`, fulcrum with `accept_proxy`; the access line names the
//!   client behind HAProxy, bytes pass intact; a trusted source without a header is closed.
//! * `fulcrum_sends_v1_and_v2_and_haproxy_sees_the_real_client`: fulcrum's pool with
//!   `send_proxy`, HAProxy behind with `accept-proxy` answering with the source it was told.
//! * `an_http_pool_sends_each_client_connection_its_own_proxied_server_connection`: the
//!   same from an `http` frontend, two keep-alive clients taking turns.
//! * `an_untrusted_source_with_a_header_is_refused_over_http` and `..._over_tcp`.
//! * `udp_sessions_send_a_v2_datagram_header_with_every_datagram` (no real peer speaks it:
//!   the test server parses the header with ppp).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

include!("support/servers.rs");

/// Connects to `to` from `from` (a loopback address playing a client).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

fn access(d: &Daemon) -> Vec<serde_json::Value> {
    d.log.lock().unwrap().iter().filter(|v| v["target"] == "fulcrum::access").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_sends_v1_and_v2_and_fulcrum_logs_the_real_client() {
    let echo = Backend::start(Mode::Echo).await;
    let toml = format!(
        r#"
workers = 1
access_log = true
[frontend.web]
bind = "127.0.0.1:0"
pool = "app"
accept_proxy = ["127.0.0.1/32"]
[pool.app]
servers = ["{}"]
"#,
        echo.addr
    );
    let d = Daemon::run_config(&toml);
    let front = d.addr("web");
    for (version, from) in [("send-proxy", "127.0.0.2"), ("send-proxy-v2", "127.0.0.3")] {
        let h = haproxy(&format!(
            "listen l\n    mode tcp\n    bind 127.0.0.1:{{port}}\n    server s {front} {version}\n"
        ));
        let mut c = connect_from(from, SocketAddr::from(([127, 0, 0, 1], h.port))).await;
        let data = pattern(100_000);
        c.write_all(&data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(back == data, "{version}: {} bytes back of {}", back.len(), data.len());
        let client_ip = from.to_string();
        wait_until_async(Duration::from_secs(5), "the access line", || {
            access(&d).iter().any(|e| {
                e["client"].as_str().is_some_and(|c| c.starts_with(&format!("{client_ip}:")))
                    && e["bytes_in"] == 100_000
            })
        })
        .await;
    }
    // A trusted source without a header is closed before anything reaches the server.
    let before = echo.accepts();
    let mut c = TcpStream::connect(front).await.unwrap();
    c.write_all(b"hello there, no header\n").await.unwrap();
    let mut back = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back)).await.unwrap();
    assert!(back.is_empty(), "{r:?}");
    wait_until_async(Duration::from_secs(5), "the refusal's access line", || {
        access(&d).iter().any(|e| e["outcome"] == "bad-proxy-header")
    })
    .await;
    assert_eq!(echo.accepts(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fulcrum_sends_v1_and_v2_and_haproxy_sees_the_real_client() {
    for (version, keyword, from) in
        [("v1", "accept-proxy", "127.0.0.4"), ("v2", "accept-proxy", "127.0.0.5")]
    {
        let h = haproxy(&format!(
            "frontend f\n    mode http\n    bind 127.0.0.1:{{port}} {keyword}\n    \
             http-request return status 200 content-type text/plain lf-string \"src=%[src]\"\n"
        ));
        let toml = format!(
            r#"
workers = 1
[frontend.web]
bind = "127.0.0.1:0"
pool = "app"
[pool.app]
servers = ["127.0.0.1:{}"]
send_proxy = "{version}"
"#,
            h.port
        );
        let d = Daemon::run_config(&toml);
        let mut c = connect_from(from, d.addr("web")).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&back);
        assert!(text.starts_with("HTTP/1.1 200"), "{version}: {text}");
        assert!(text.ends_with(&format!("src={from}")), "{version}: {text}");
    }
}

/// One keep-alive request on `c`: the answer's body.
async fn keepalive_get(c: &mut TcpStream) -> String {
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap();
            if got.len() >= end + 4 + len {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                return text[end + 4..end + 4 + len].to_string();
            }
        }
        let n =
            tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed mid-answer: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// An `http` frontend whose pool has `send_proxy`: HAProxy behind it (`accept-proxy`)
/// answers each request with the client and port its connection's header named. Two
/// keep-alive clients taking turns each always get their own: a server connection carries
/// the requests of one client connection only, and a client's requests reuse its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_pool_sends_each_client_connection_its_own_proxied_server_connection() {
    for version in ["v1", "v2"] {
        let h = haproxy(
            "frontend f\n    mode http\n    bind 127.0.0.1:{port} accept-proxy\n    \
             http-request return status 200 content-type text/plain \
             lf-string \"src=%[src]:%[src_port]\"\n",
        );
        let toml = format!(
            "workers = 1\n[frontend.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
             pool = \"app\"\n[pool.app]\nservers = [\"127.0.0.1:{}\"]\nsend_proxy = \"{version}\"\n",
            h.port
        );
        let d = Daemon::run_config(&toml);
        let mut a = connect_from("127.0.0.6", d.addr("web")).await;
        let mut b = connect_from("127.0.0.7", d.addr("web")).await;
        let (pa, pb) = (a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
        for round in 0..3 {
            let got_a = keepalive_get(&mut a).await;
            let got_b = keepalive_get(&mut b).await;
            assert_eq!(got_a, format!("src=127.0.0.6:{pa}"), "{version} round {round}");
            assert_eq!(got_b, format!("src=127.0.0.7:{pb}"), "{version} round {round}");
        }
        // A new connection from the first address is a new client connection: its own
        // server connection, its own port in the header.
        drop(a);
        let mut a2 = connect_from("127.0.0.6", d.addr("web")).await;
        let pa2 = a2.local_addr().unwrap().port();
        assert_eq!(keepalive_get(&mut a2).await, format!("src=127.0.0.6:{pa2}"), "{version}");
        assert_eq!(keepalive_get(&mut b).await, format!("src=127.0.0.7:{pb}"), "{version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_source_with_a_header_is_refused_over_http() {
    let echo = Backend::start(Mode::Echo).await;
    let toml = format!(
        r#"
workers = 1
[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"
accept_proxy = ["127.0.0.1/32"]
[pool.app]
servers = ["{}"]
"#,
        echo.addr
    );
    let d = Daemon::run_config(&toml);
    let mut c = connect_from("127.0.0.6", d.addr("web")).await;
    c.write_all(b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back)).await;
    let text = String::from_utf8_lossy(&back);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(echo.accepts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_source_with_a_header_is_refused_over_tcp() {
    let echo = Backend::start(Mode::Echo).await;
    let toml = format!(
        r#"
workers = 1
[frontend.l4]
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "app"
accept_proxy = ["127.0.0.1/32"]
[pool.app]
servers = ["{}"]
"#,
        echo.addr
    );
    let d = Daemon::run_config(&toml);
    // An untrusted client's own bytes pass as they are.
    let mut plain = connect_from("127.0.0.6", d.addr("l4")).await;
    plain.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), plain.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&got, b"hello");
    // A header from it, v1 or v2, never reaches the server: nothing comes back but the close.
    let v2 =
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x06\x06\x06\x06\x7f\x00\x00\x01\x04\xd2\x00\x50";
    for header in [&b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\nrest"[..], &v2[..]] {
        let mut c = connect_from("127.0.0.6", d.addr("l4")).await;
        c.write_all(header).await.unwrap();
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back)).await;
        assert!(back.is_empty(), "echoed {back:?}");
    }
    wait_until(Duration::from_secs(10), "two refusals in the access log", || {
        access(&d).iter().filter(|l| l["outcome"] == "untrusted-proxy-header").count() == 2
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_send_a_v2_datagram_header_with_every_datagram() {
    // The server: reads a datagram, checks it opens with a v2 DGRAM header, answers with
    // the source the header named and the payload after it.
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let serve = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let h = ppp::v2::Header::try_from(&buf[..n]).expect("a v2 header first");
            assert_eq!(h.protocol, ppp::v2::Protocol::Datagram);
            let source = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
                other => panic!("addresses {other:?}"),
            };
            let payload = &buf[h.len()..n];
            let answer = format!("{source} {}", String::from_utf8_lossy(payload));
            server.send_to(answer.as_bytes(), from).await.unwrap();
        }
    });
    let toml = format!(
        r#"
workers = 1
[frontend.dns]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "app"
[pool.app]
servers = ["{server_addr}"]
send_proxy = "v2"
"#
    );
    let d = Daemon::run_config(&toml);
    let client = tokio::net::UdpSocket::bind("127.0.0.7:0").await.unwrap();
    let me = client.local_addr().unwrap();
    for i in 0..3 {
        let msg = format!("ping {i}");
        client.send_to(msg.as_bytes(), d.addr("dns")).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        // The answer comes back as the server wrote it: no header towards the client.
        assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("{me} {msg}"));
    }
    serve.await.unwrap();
}
