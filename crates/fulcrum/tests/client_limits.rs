//! Per-client limits (`[frontend.NAME.limits]`) and the busiest clients, end to end: clients
//! bound to 127.0.0.2, .3, ... play distinct addresses; a refused connection never reaches a
//! server; HTTP 429s carry `Retry-After`; UDP datagrams over the rate are dropped; the
//! refusals show in `/metrics`, and `GET /api/v1/clients/top` and `fulcrum ctl top-clients`
//! list who holds what.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// support/guards.rs also holds helpers only the access-list tests use.
#![allow(dead_code)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const LIMIT: Duration = Duration::from_secs(10);

include!("support/guards.rs");

fn tcp_config(b: &Backend, limits: &str) -> String {
    format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.tcp]\nbind = \"127.0.0.1:0\"\n\
         pool = \"p\"\n[frontend.tcp.limits]\n{limits}\n[pool.p]\nservers = [\"{}\"]\n",
        b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_per_client_refuses_the_next_and_leaves_others_alone() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start_in(dir.path(), &tcp_config(&b, "conn_per_client = 3"));
    let front = s.d.addr("tcp");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect_from(from(3), front).await;
        assert!(echoes(&mut c).await);
        held.push(c);
    }
    assert!(!served(from(3), front).await, "a fourth connection from 127.0.0.3");
    assert!(served(from(2), front).await, "another address is apart");
    assert_eq!(rejections(&s, "tcp", "conn-per-client"), 1.0);
    // 3 held + 1 from .2; the refused one never reached the server.
    assert_eq!(b.accepts(), 4);

    let top = get(&format!("{}/api/v1/clients/top?limit=5", s.api));
    let first = &top["clients"][0];
    assert_eq!((first["address"].as_str(), first["active"].as_u64()), (Some("127.0.0.3"), Some(3)));
    assert_eq!(
        (first["refused_total"].as_u64(), first["frontend"].as_str()),
        (Some(1), Some("tcp"))
    );
    let (code, out) = ctl(&s, &["top-clients", "--limit", "3"]);
    assert_eq!(code, 0, "{out}");
    let row = out.lines().nth(1).unwrap_or_default().split_whitespace().collect::<Vec<_>>();
    assert_eq!(row[..3], ["tcp", "127.0.0.3", "3"], "{out}");
    assert_eq!(metric(&s.api, "fulcrum_clients_tracked{frontend=\"tcp\"}"), 2.0);

    // Closing one makes room again.
    drop(held.pop());
    wait_until_async(LIMIT, "the closed connection to be given back", || {
        get(&format!("{}/api/v1/clients/top?limit=1", s.api))["clients"][0]["active"] == 2
    })
    .await;
    assert!(served(from(3), front).await);
    let (code, out) = ctl(&s, &["top-clients", "--frontend", "nope"]);
    assert!(code != 0 && out.contains("404"), "{out}");
}

/// `ban = { after = 3, within = "1m", for = "10m" }`: the third refusal by a per-client limit
/// within the minute puts the address on the runtime block list (listed with its reason and
/// end), its open connection is cut, and its next ones are refused as `blocked`; another
/// address is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_tripping_its_limits_is_banned() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = "conn_per_client = 1\nban = { after = 3, within = \"1m\", for = \"10m\" }";
    let s = start_in(dir.path(), &tcp_config(&b, limits));
    let front = s.d.addr("tcp");
    let mut held = connect_from(from(6), front).await;
    assert!(echoes(&mut held).await);
    for _ in 0..2 {
        assert!(!served(from(6), front).await, "over conn_per_client");
    }
    assert_eq!(rejections(&s, "tcp", "conn-per-client"), 2.0);
    assert_eq!(metric(&s.api, "fulcrum_blocks{} "), 0.0, "two refusals are not a ban yet");
    assert!(!served(from(6), front).await);
    wait_until_async(LIMIT, "the ban on the block list", || {
        metric(&s.api, "fulcrum_blocks{} ") == 1.0
    })
    .await;
    let (code, list) = ctl(&s, &["blocks", "list"]);
    assert_eq!(code, 0, "{list}");
    assert!(list.contains("127.0.0.6") && list.contains("ban: 3 refusals"), "{list}");
    let blocks = get(&format!("{}/api/v1/blocks", s.api));
    let left = blocks["blocks"][0]["expires_in_ms"].as_u64().unwrap();
    assert!((590_000..=600_000).contains(&left), "banned for 10 minutes: {left} ms left");
    // The banned address's open connection is cut.
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(LIMIT, held.read(&mut buf)).await.expect("cut within");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(!served(from(6), front).await);
    assert!(rejections(&s, "tcp", "blocked") >= 1.0);
    assert!(served(from(7), front).await, "another address is apart");
}

/// `conn_rate_per_client = "50/s"` admits 50 ± 10 % a second once the burst (one second's
/// worth) is spent. The client tries every 4 ms (250 a second) for 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_rate_per_client_admits_the_rate() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start_in(dir.path(), &tcp_config(&b, "conn_rate_per_client = \"50/s\""));
    let front = s.d.addr("tcp");
    let start = Instant::now();
    let mut admitted: Vec<Duration> = Vec::new();
    let mut tries = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(4));
    while start.elapsed() < Duration::from_secs(4) && tries < 2_000 {
        tick.tick().await;
        tries += 1;
        if served(from(4), front).await {
            admitted.push(start.elapsed());
        }
    }
    let total = start.elapsed().as_secs_f64();
    // The burst is admitted at once; after it, the steady rate.
    let later = admitted.iter().filter(|t| t.as_secs_f64() >= 1.0).count() as f64;
    let rate = later / (total - 1.0);
    assert!((45.0..=55.0).contains(&rate), "{rate:.1} a second after the burst ({tries} tries)");
    assert!(admitted.len() >= 50 + 150 * 9 / 10, "{} admitted in all", admitted.len());
    let refused = rejections(&s, "tcp", "conn-rate");
    assert_eq!(refused as usize + admitted.len(), tries as usize);
    assert_eq!(b.accepts() as usize, admitted.len(), "refused clients never reach the server");
    assert!(served(from(5), front).await, "another address has its own rate");
}

/// A keep-alive connection sending requests one after another on its socket.
async fn requests(c: &mut TcpStream, n: usize) -> Vec<(u16, Option<String>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let req = "GET / HTTP/1.1\r\nHost: limits.test\r\n\r\n";
        c.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(LIMIT, c.read(&mut byte)).await.unwrap().unwrap();
            assert!(n == 1 && head.len() < 8192, "the head ended early");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        let field = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let len: usize = field("content-length").unwrap().parse().unwrap();
        let mut body = vec![0u8; len];
        tokio::time::timeout(LIMIT, c.read_exact(&mut body)).await.unwrap().unwrap();
        out.push((status, field("retry-after")));
    }
    out
}

/// A keep-alive HTTP/1 backend: 200 "ok" to every request.
async fn keepalive_backend() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let n = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        n.fetch_add(1, Ordering::SeqCst);
                        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                        if s.write_all(ok.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) if buf.len() < 65_536 => buf.extend_from_slice(&chunk[..k]),
                        Ok(_) => return,
                    }
                }
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_per_client_answers_429_with_retry_after() {
    let (addr, seen, task) = keepalive_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.web]\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\npool = \"p\"\n[frontend.web.limits]\n\
         request_rate_per_client = {{ rate = \"1/s\", burst = 5 }}\n\
         [pool.p]\nservers = [\"{addr}\"]\n"
    );
    let s = start_in(dir.path(), &toml);
    let front = s.d.addr("web");
    let mut c = connect_from(from(6), front).await;
    let got = requests(&mut c, 8).await;
    let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429], "{got:?}");
    assert!(got[..5].iter().all(|g| g.1.is_none()));
    for (_, retry) in &got[5..] {
        let secs: u64 = retry.as_deref().expect("Retry-After on a 429").parse().unwrap();
        assert!((1..=2).contains(&secs), "Retry-After: {secs}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 5, "429s never reach the server");
    assert_eq!(rejections(&s, "web", "request-rate"), 3.0);
    // Another client, and a new connection of the same one, are counted by address.
    let mut other = connect_from(from(7), front).await;
    assert_eq!(requests(&mut other, 1).await[0].0, 200);
    let mut again = connect_from(from(6), front).await;
    assert_eq!(requests(&mut again, 1).await[0].0, 429);
    let top = get(&format!("{}/api/v1/clients/top?frontend=web", s.api));
    let row = top["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "127.0.0.6")
        .cloned()
        .unwrap();
    assert_eq!((row["requests_total"].as_u64(), row["refused_total"].as_u64()), (Some(5), Some(4)));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagram_rate_per_client_drops_the_excess() {
    let u = UdpBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.dns]\nbind = \"127.0.0.1:0\"\n\
         protocol = \"udp\"\npool = \"p\"\n[frontend.dns.limits]\n\
         datagram_rate_per_client = {{ rate = \"1/s\", burst = 10 }}\n\
         [pool.p]\nservers = [\"{}\"]\n",
        u.addr
    );
    let s = start_in(dir.path(), &toml);
    let front = s.d.addr("dns");
    let c = udp_from(from(8), front).await;
    for _ in 0..30 {
        c.send(b"hello").await.unwrap();
    }
    wait_until_async(LIMIT, "30 datagrams counted", || {
        u.datagrams() + rejections(&s, "dns", "datagram-rate") as u64 >= 30
    })
    .await;
    // One second's slack: at most one more token came meanwhile.
    assert!((10..=11).contains(&u.datagrams()), "{} reached the server", u.datagrams());
    assert!(rejections(&s, "dns", "datagram-rate") >= 19.0);
    assert!(udp_echoes(&udp_from(from(9), front).await, LIMIT).await, "another address");
    let top = get(&format!("{}/api/v1/clients/top", s.api));
    let addrs: Vec<&str> =
        top["clients"].as_array().unwrap().iter().filter_map(|c| c["address"].as_str()).collect();
    assert!(addrs.contains(&"127.0.0.8") && addrs.contains(&"127.0.0.9"), "{top}");
}

/// 100,000 distinct source addresses, each bound in turn, one datagram each: the client
/// table stays within `max_clients` (32,768 by default) and the balancer's memory within 64 MiB of its idle size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_udp_sources_cost_bounded_memory() {
    let u = UdpBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.dns]\nbind = \"127.0.0.1:0\"\n\
         protocol = \"udp\"\npool = \"p\"\nsession_timeout = \"1s\"\n\
         [pool.p]\nservers = [\"{}\"]\n",
        u.addr
    );
    let s = start_in(dir.path(), &toml);
    let front = s.d.addr("dns");
    assert!(udp_echoes(&udp_from(from(2), front).await, LIMIT).await);
    let idle = s.d.rss_kib();
    let started = Instant::now();
    // 10,000 a second: with session_timeout = 1s every source gets its session (the
    // descriptor budget holds about 19,000) and so its place in the client table.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for batch in 0..100u32 {
        tick.tick().await;
        tokio::task::block_in_place(|| {
            for i in batch * 1000..(batch + 1) * 1000 {
                // 127.1.0.0 upwards: 127.x.y.z, never .0 or .255 in the last byte.
                let n = 0x7f01_0000u32 + (i / 254) * 256 + (i % 254) + 1;
                let sock = std::net::UdpSocket::bind((Ipv4Addr::from(n), 0)).unwrap();
                sock.send_to(b"x", front).unwrap();
            }
        });
        assert!(started.elapsed() < Duration::from_secs(120), "too slow at batch {batch}");
    }
    let received =
        || metric(&s.api, "fulcrum_frontend_udp_datagrams_received_total{frontend=\"dns\"}");
    wait_until_async(Duration::from_secs(30), "the datagrams to be read", || {
        received() >= 99_000.0
    })
    .await;
    let tracked = || metric(&s.api, "fulcrum_clients_tracked{frontend=\"dns\"}");
    let (t, r) = (tracked(), received());
    println!("{r} datagrams read, {t} addresses tracked");
    // Full, the table forgets the quarter seen least recently: between 3/4 and all of it.
    assert!((20_000.0..=32_768.0 + 16.0).contains(&t), "{t} addresses tracked");
    let grown = s.d.rss_kib().saturating_sub(idle);
    println!("RSS grew by {grown} KiB over {:?} for 100,000 sources", started.elapsed());
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}
