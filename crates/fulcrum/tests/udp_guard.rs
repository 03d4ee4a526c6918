//! UDP against floods of sources: sessions have their own limit and a per-address cap, and
//! never take TCP connection slots, so a flood of sources leaves TCP accepting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// A UDP echo server on 127.0.0.1:0, answering every datagram, until the process ends.
fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

fn daemon(extra_udp: &str, tcp_backend: SocketAddr, udp_backend: SocketAddr) -> (Daemon, String) {
    let toml = format!(
        r#"
workers = 2
access_log = false

[admin]
bind = "127.0.0.1:0"

[frontend.dns]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "udp"
{extra_udp}

[frontend.web]
bind = "127.0.0.1:0"
pool = "tcp"

[pool.udp]
servers = ["{udp_backend}"]

[pool.tcp]
servers = ["{tcp_backend}"]
"#
    );
    let d = Daemon::run_config(&toml);
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    (d, api)
}

/// Echo round trips through the TCP frontend; how many came back whole.
async fn tcp_round_trips(front: SocketAddr, n: usize) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ok = 0;
    for i in 0..n {
        let r = tokio::time::timeout(Duration::from_secs(3), async {
            let mut s = tokio::net::TcpStream::connect(front).await?;
            let msg = format!("hello {i}");
            s.write_all(msg.as_bytes()).await?;
            s.shutdown().await?;
            let mut back = String::new();
            s.read_to_string(&mut back).await?;
            std::io::Result::Ok(back == msg)
        })
        .await;
        if matches!(r, Ok(Ok(true))) {
            ok += 1;
        }
    }
    ok
}

/// Before: each UDP session took a TCP connection slot, and the default `max_connections`
/// ((open-file limit − 256) / 2) is below the default `max_sessions` (10,000) here, so a
/// flood of sources stopped TCP from accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_sources_leave_tcp_accepting() {
    let tcp = Backend::start(Mode::Echo).await;
    let (d, api) = daemon("", tcp.addr, udp_echo());
    let dns = d.addr("dns");
    let started = Instant::now();
    // 100,000 datagrams, each from a source address and port of its own (a fresh socket on
    // 127.a.b.c), as a flood of spoofed sources would arrive.
    let sent = tokio::task::spawn_blocking(move || {
        let mut sent = 0u32;
        for i in 0..100_000u32 {
            let ip = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
            let Ok(s) = UdpSocket::bind((ip, 0)) else { continue };
            if s.send_to(b"flood", dns).is_ok() {
                sent += 1;
            }
        }
        sent
    })
    .await
    .unwrap();
    assert!(sent >= 99_000, "sent {sent}");
    assert!(started.elapsed() < Duration::from_secs(120));
    let drops = r#"fulcrum_frontend_udp_drops_total{frontend="dns",reason="session_limit"}"#;
    wait_until_async(Duration::from_secs(20), "the session limit to be reached", || {
        metric(&api, drops) > 0.0
    })
    .await;
    let active = metric(&api, r#"fulcrum_frontend_udp_sessions_active{frontend="dns"}"#);
    assert!(active <= 10_000.0, "{active} sessions");
    // TCP still accepts and serves while the UDP sessions are all taken.
    assert_eq!(tcp_round_trips(d.addr("web"), 100).await, 100);
}

/// One address with many ports holds at most `max_sessions_per_source`; other addresses
/// still get sessions and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_sessions() {
    let tcp = Backend::start(Mode::Echo).await;
    let (d, api) = daemon("max_sessions_per_source = 100", tcp.addr, udp_echo());
    let dns = d.addr("dns");
    tokio::task::spawn_blocking(move || {
        for _ in 0..1_000 {
            let s = UdpSocket::bind("127.0.0.9:0").unwrap();
            s.send_to(b"many", dns).unwrap();
        }
    })
    .await
    .unwrap();
    let drops = r#"fulcrum_frontend_udp_drops_total{frontend="dns",reason="source_limit"}"#;
    wait_until_async(Duration::from_secs(10), "the per-source limit to drop datagrams", || {
        metric(&api, drops) >= 800.0
    })
    .await;
    let active = metric(&api, r#"fulcrum_frontend_udp_sessions_active{frontend="dns"}"#);
    assert!((90.0..=100.0).contains(&active), "{active} sessions for one address (cap 100)");
    // Another address is served.
    let c = UdpSocket::bind("127.0.0.10:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.send_to(b"other", dns).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"other");
}
