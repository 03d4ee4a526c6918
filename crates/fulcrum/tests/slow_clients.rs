//! Slow clients (docs/guards.md): `first_byte_timeout` closes a silent TCP client before any
//! server hears of it, `min_body_rate` answers 408 to an upload that trickles, and with
//! default settings one address holding 10,000 slowloris connections (partial request heads,
//! a line every 2 s) or 4,000 slow-read ones (1 MiB answers, a small receive buffer, nothing
//! read) does not stop a legitimate client from 127.0.0.1, opening a new connection per
//! request at 200 a second, from being served. The attackers are this test process; the
//! balancer and the backends are processes of their own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

include!("support/servers.rs");

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    d: Daemon,
    api: String,
}

/// A balancer with frontend `fe` (`extra` keys) in front of `backend`.
fn start(backend: &str, extra: &str) -> Setup {
    let d = Daemon::run_config(&format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.fe]\nbind = \"127.0.0.1:0\"\n\
         pool = \"p\"\n{extra}\n[pool.p]\nservers = [\"{backend}\"]\n"
    ));
    let api = d.find("admin API listening").expect("admin API listening")["address"]
        .as_str()
        .unwrap()
        .to_string();
    Setup { d, api: format!("http://{api}") }
}

fn fe_metric(s: &Setup, name: &str) -> f64 {
    metric(&s.api, &format!("{name}{{frontend=\"fe\"}}"))
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind((ip, 0).into())?;
    tokio::time::timeout(WAIT, sock.connect(to)).await.map_err(std::io::Error::other)?
}

/// A TCP server counting what it accepts, echoing every byte back.
async fn echo_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_closes_a_silent_client_before_any_server_hears_of_it() {
    let (backend, accepts) = echo_server().await;
    let s = start(&backend.to_string(), "first_byte_timeout = \"300ms\"\n");
    let front = s.d.addr("fe");
    let started = Instant::now();
    let mut silent = connect_from(Ipv4Addr::new(127, 0, 0, 2), front).await.unwrap();
    let mut talker = connect_from(Ipv4Addr::new(127, 0, 0, 3), front).await.unwrap();
    talker.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(WAIT, talker.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"hello", "a client that speaks first is served");
    let mut buf = [0u8; 8];
    let end = tokio::time::timeout(WAIT, silent.read(&mut buf)).await.expect("closed within");
    let waited = started.elapsed();
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(waited >= Duration::from_millis(300), "closed after the timeout: {waited:?}");
    assert_eq!(fe_metric(&s, "fulcrum_first_byte_timeouts_total"), 1.0);
    assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 1, "only the talker reached it");
}

/// A backend that reads a request's whole body (by its Content-Length) before answering
/// 200 with the number of body bytes it got.
async fn body_reader() -> SocketAddr {
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                let (head_end, len) = loop {
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, len);
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                };
                while data.len() < head_end + len {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("{len}\n");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A POST of `len` body bytes: `first` at once, then the rest `step` bytes every `every`
/// (stopping when the connection fails). The status line answered.
async fn post(front: SocketAddr, len: usize, first: usize, step: usize, every: Duration) -> String {
    let mut c = connect_from(Ipv4Addr::LOCALHOST, front).await.unwrap();
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let (mut r, mut w) = c.into_split();
    // The writing half is kept until the answer is in: dropping it would half-close the
    // connection, which an HTTP server may take as the client leaving.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let mut sent = first.min(len);
        if w.write_all(&vec![b'x'; sent]).await.is_ok() {
            while sent < len {
                tokio::time::sleep(every).await;
                let n = step.min(len - sent);
                if w.write_all(&vec![b'x'; n]).await.is_err() {
                    break;
                }
                sent += n;
            }
        }
        let _ = done_rx.await;
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, r.read_to_end(&mut out)).await.expect("an answer");
    drop(done_tx);
    writer.abort();
    String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_body_rate_answers_408_to_an_upload_that_trickles() {
    let backend = body_reader().await;
    let s = start(&backend.to_string(), "protocol = \"http\"\nmin_body_rate = \"1KiB/s\"\n");
    let front = s.d.addr("fe");
    // 64 KiB at once: well above the rate.
    let fast = post(front, 65_536, 65_536, 0, Duration::ZERO).await;
    assert!(fast.starts_with("HTTP/1.1 200"), "{fast}");
    // 100 bytes, then 10 bytes every 100 ms (100 bytes a second): behind 1 KiB/s from about
    // a second and a tenth on.
    let started = Instant::now();
    let slow = post(front, 10_000, 100, 10, Duration::from_millis(100)).await;
    let took = started.elapsed();
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    assert!(took < Duration::from_secs(5), "answered once behind: {took:?}");
    // 300 bytes every 100 ms (3 KiB a second): keeps up.
    let steady = post(front, 12_000, 300, 300, Duration::from_millis(100)).await;
    assert!(steady.starts_with("HTTP/1.1 200"), "{steady}");
}

/// One GET on a new connection from 127.0.0.1: whether it was answered 200.
async fn get_ok(front: SocketAddr) -> bool {
    let go = async {
        // Not bound first (see fair_share.rs): from 127.0.0.1 anyway.
        let mut c = TcpStream::connect(front).await.ok()?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.ok()?;
        Some(out.starts_with(b"HTTP/1.1 200"))
    };
    matches!(tokio::time::timeout(WAIT, go).await, Ok(Some(true)))
}

/// 100 GETs, one every 5 ms, each on its own connection: how many were answered 200.
async fn legitimate(front: SocketAddr) -> usize {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        tick.tick().await;
        tasks.spawn(get_ok(front));
    }
    let mut served = 0;
    while let Some(r) = tasks.join_next().await {
        served += usize::from(r.unwrap_or(false));
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_slowloris_connections_from_one_address_do_not_crowd_out_another() {
    let backend = Daemon::spawn(&["backend", "--listen", "127.0.0.1:0", "--protocol", "http"]);
    let s = start(&backend.addr("backend").to_string(), "protocol = \"http\"\n");
    let front = s.d.addr("fe");
    let quiet = legitimate(front).await;
    assert_eq!(quiet, 100, "served before the attack");
    // 10,000 connections from 127.0.0.13, each with a request line and no end of head.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        tasks.spawn(async move {
            let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 13), front).await.ok()?;
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").await.ok()?;
            Some(c)
        });
    }
    let mut attackers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(c)) = r {
            attackers.push(c);
        }
    }
    let opened = attackers.len();
    // A header line every 2 s on each, while the legitimate client runs (bounded: 10 rounds).
    let trickle = tokio::spawn(async move {
        for i in 0..10 {
            for c in attackers.iter_mut() {
                let _ = c.try_write(format!("X-Slow-{i}: 1\r\n").as_bytes());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        attackers
    });
    wait_until_async(WAIT, "the flood refused past its share or when no slot was left", || {
        metric(&s.api, "fulcrum_rejections_total{frontend=\"fe\",reason=\"fair-share\"}")
            + metric(&s.api, "fulcrum_rejections_total{frontend=\"fe\",reason=\"full\"}")
            > 0.0
    })
    .await;
    let held = fe_metric(&s, "fulcrum_frontend_connections_active");
    let served = legitimate(front).await;
    println!("{opened} slowloris connections opened, {held} held by the balancer");
    trickle.abort();
    assert_eq!(served, 100, "legitimate requests served during the slowloris attack");
}

/// nginx serving `/big` (1 MiB) and `/` (a few bytes), with room for the attack's
/// connections. Its send buffers are held at 64 KiB: a server on another host keeps its
/// buffered answers in its own memory, where here nginx's autotuned buffers (up to 4 MiB
/// each) would put the whole 4 GB on this host's TCP memory, past `tcp_mem`'s limit, and the
/// kernel would then reset connections of every process, the legitimate client's too. Its
/// listen backlog is 4,096 (nginx's default is 511): the balancer opens the 4,000 attackers'
/// server connections at once, and with 511 the kernel logged SYN flooding on nginx's port;
/// a CI run then served 5 of 100 legitimate requests in 3.6 s (the balancer's connect
/// timeout is 3 s). With 4,096 the legitimate run took 0.9-1.0 s in three runs (1.1-3.0 s
/// before). It uses `sendfile`, as Debian's nginx.conf does: without it its one worker spent
/// 3-4 s copying the attackers' first windows (bench/attack), and the legitimate requests,
/// which it serves too, waited behind that.
fn nginx_big() -> TestServer {
    TestServer::run(
        "nginx",
        "nginx-light",
        "nginx.conf",
        |dir, conf| {
            vec!["-e".into(), "stderr".into(), "-p".into(), dir.into(), "-c".into(), conf.into()]
        },
        |port, dir| {
            std::fs::write(dir.join("big"), vec![b'b'; 1 << 20]).unwrap();
            std::fs::write(dir.join("index.html"), "ok\n").unwrap();
            let d = dir.display();
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nworker_rlimit_nofile 12000;\n\
                 events {{ worker_connections 10000; }}\nhttp {{\n    access_log off;\n    sendfile on;\n    \
                 client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
                 fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
                 scgi_temp_path {d}/scgi;\n    keepalive_requests 100000;\n    \
                 server {{\n        listen 127.0.0.1:{port} sndbuf=64k backlog=4096;\n        root {d};\n        \
                 location = /big {{ default_type application/octet-stream; }}\n    }}\n}}\n"
            )
        },
    )
}

/// Slow readers: the 4,000. With the server, the balancer and the clients on one
/// host, all their sockets share the kernel's `tcp_mem` (about 2.2 GB here, pressure from
/// 1.5 GB). Before the balancer bounded what a client that reads nothing parks in the kernel
/// (TCP_NOTSENT_LOWAT on its client sockets, a fixed `receive_buffer` on its server
/// connections), 4,000 answers of 1 MiB passed that limit and the kernel reset connections of
/// every process (the CI run of 0f7253a served 22 of 100).
const SLOW_READERS: usize = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_from_one_address_do_not_crowd_out_another() {
    // What earlier tests' sockets still hold of the kernel's TCP memory is given back first:
    // this attack alone brings it near the pressure mark.
    wait_until_async(WAIT, "the kernel's TCP memory back below 200 MB", || {
        tcp_mem_pages().is_some_and(|p| p < 50_000)
    })
    .await;
    let nginx = tokio::task::block_in_place(nginx_big);
    let s = start(&nginx.addr(), "protocol = \"http\"\n");
    let front = s.d.addr("fe");
    assert_eq!(legitimate(front).await, 100, "served before the attack");
    // SLOW_READERS connections from 127.0.0.14 with a 4 KiB receive buffer, each asking for 1 MiB
    // and reading nothing.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SLOW_READERS {
        tasks.spawn(async move {
            let sock = TcpSocket::new_v4().ok()?;
            sock.set_recv_buffer_size(4096).ok()?;
            sock.bind((Ipv4Addr::new(127, 0, 0, 14), 0).into()).ok()?;
            let mut c = tokio::time::timeout(WAIT, sock.connect(front)).await.ok()?.ok()?;
            c.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").await.ok()?;
            Some(c)
        });
    }
    let mut attackers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(c)) = r {
            attackers.push(c);
        }
    }
    let opened = attackers.len();
    wait_until_async(WAIT, "the slow readers' requests in flight", || {
        metric(&s.api, "fulcrum_http_requests_active{frontend=\"fe\"}") >= opened as f64 * 0.9
    })
    .await;
    let held = fe_metric(&s, "fulcrum_frontend_connections_active");
    let started = Instant::now();
    let served = legitimate(front).await;
    println!(
        "{opened} slow readers, {held} connections held, legitimate run took {:?}",
        started.elapsed()
    );
    for c in attackers {
        // A reset: no TIME_WAIT left holding the address's ports.
        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
    }
    assert_eq!(served, 100, "legitimate requests served during the slow-read attack");
}

/// Pages of memory the kernel's TCP sockets hold now (`/proc/net/sockstat`).
fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}
