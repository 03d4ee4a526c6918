//! The admission step end to end: servers whose share is low (agent weight, slow start) take
//! less traffic but never cost a client its connection, and errors the client causes never
//! eject a server while a server that resets every connection still is ejected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn servers_json(api: &str) -> Vec<Value> {
    get(&format!("{api}/api/v1/pools"))["pools"][0]["servers"].as_array().unwrap().clone()
}

fn admin_url(d: &Daemon) -> String {
    format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap())
}

fn pool_config(servers: &[SocketAddr], pool_extra: &str) -> String {
    let list = servers.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
workers = 2
access_log = false
drain_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[frontend.web]
bind = "127.0.0.1:0"
pool = "app"

[pool.app]
algorithm = "round-robin"
servers = [{list}]
connect_timeout = "1s"
{pool_extra}
"#
    )
}

/// 300 connections one after the other; the names of the servers that answered, and how many
/// clients got none.
async fn three_hundred(front: SocketAddr) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match tokio::time::timeout(Duration::from_secs(5), ask_name(front)).await {
            Ok(Ok(n)) => names.push(n),
            _ => refused += 1,
        }
    }
    (names, refused)
}

/// Before: each server passed over for its agent weight took a slot of the 8-entry tried
/// set without a connect, and 132 of 300 clients were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_servers_at_ten_percent_agent_weight_serve_every_client() {
    let ips: Vec<String> = (2..14).map(|i| format!("127.0.0.{i}")).collect();
    let mut backends = Vec::new();
    let mut addrs = Vec::new();
    for ip in &ips {
        let l = tokio::net::TcpListener::bind((ip.as_str(), 0)).await.unwrap();
        let name: &'static str = Box::leak(ip.clone().into_boxed_str());
        let b = Backend::on(l, Mode::Named(name));
        addrs.push(b.addr);
        backends.push(b);
    }
    // Every server's agent, on one port of its own address, answers "up 10%".
    let first = std::net::TcpListener::bind((ips[0].as_str(), 0)).unwrap();
    let port = first.local_addr().unwrap().port();
    let mut agents = vec![first];
    for ip in &ips[1..] {
        agents.push(std::net::TcpListener::bind((ip.as_str(), port)).unwrap());
    }
    for l in agents {
        l.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"up 10%\n").await;
            }
        });
    }
    let pull = format!(
        "retries = 2\nagent_pull = {{ port = {port}, interval = \"100ms\", timeout = \"500ms\" }}"
    );
    let d = Daemon::run_config(&pool_config(&addrs, &pull));
    let api = admin_url(&d);
    wait_until_async(Duration::from_secs(10), "every agent's 10 % applied", || {
        servers_json(&api)
            .iter()
            .all(|s| s["share_percent"].as_f64().is_some_and(|p| (p - 10.0).abs() < 0.01))
    })
    .await;
    let (names, refused) = three_hundred(d.addr("web")).await;
    assert_eq!(refused, 0, "clients refused");
    // Equal shares: every server takes part (300 over 12: 25 each on average).
    for ip in &ips {
        let n = names.iter().filter(|x| *x == ip).count();
        assert!(n >= 5, "{ip} served {n} of 300: {names:?}");
    }
}

/// 50 servers that were all down come back together under a 30 s slow start: every one is in
/// its ramp, and no client is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_servers_recovering_together_under_slow_start_refuse_no_client() {
    // Bound but not listening: connects are refused, the health checks mark them down.
    let mut held = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..50 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        addrs.push(s.local_addr().unwrap().as_socket().unwrap());
        held.push(s);
    }
    let pool = "retries = 2\nslow_start = \"30s\"\n\n[pool.app.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";
    let d = Daemon::run_config(&pool_config(&addrs, pool));
    let api = admin_url(&d);
    wait_until_async(Duration::from_secs(15), "all 50 marked down", || {
        servers_json(&api).iter().all(|s| s["health"] == "down")
    })
    .await;
    let mut backends = Vec::new();
    for s in held {
        s.listen(1024).unwrap();
        s.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(std::net::TcpListener::from(s)).unwrap();
        backends.push(Backend::on(l, Mode::Named("up")));
    }
    wait_until_async(Duration::from_secs(15), "all 50 up again", || {
        servers_json(&api).iter().all(|s| s["health"] == "up")
    })
    .await;
    let ramping = servers_json(&api);
    for s in &ramping {
        let share = s["share_percent"].as_f64().unwrap();
        assert!(share < 100.0, "{} is not in slow start: {share} %", s["address"]);
    }
    let (_, refused) = three_hundred(d.addr("web")).await;
    assert_eq!(refused, 0, "clients refused during slow start");
    let served: u64 = backends.iter().map(|b| b.accepts()).sum();
    assert!(served >= 300, "backends accepted {served}");
    // The shares ramp: from the 5 % floor, every server climbs (1 % of the way each 300 ms).
    let start: Vec<f64> = ramping.iter().map(|s| s["share_percent"].as_f64().unwrap()).collect();
    wait_until_async(Duration::from_secs(10), "every share to rise", || {
        let now = servers_json(&api);
        now.iter().zip(&start).all(|(s, &was)| s["share_percent"].as_f64().unwrap() > was)
    })
    .await;
}

fn failures(api: &str) -> u64 {
    servers_json(api).iter().map(|s| s["connect_failures"].as_u64().unwrap()).sum()
}

/// A client that resets its connection, and a client that keeps uploading after the server
/// answered early and closed, are the client's doing: the server's failure count stays 0.
/// A server that resets every connection before answering is still counted and ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_caused_errors_never_count_against_a_server() {
    // Answers "413" after the first bytes and closes with the upload unread (a reset).
    let early = listen_any();
    let early_addr = early.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = early.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"413 too large\n").await;
            });
        }
    });
    let pool = "[pool.app.eject]\nfailures = 3\nmax_percent = 100\n";
    let d = Daemon::run_config(&pool_config(&[early_addr], pool));
    let api = admin_url(&d);
    let front = d.addr("web");
    let upload = vec![7u8; 1 << 20];
    let mut answered = 0;
    for _ in 0..40 {
        let s = TcpStream::connect(front).await.unwrap();
        let (mut r, mut w) = s.into_split();
        // Uploads while reading the answer; the upload stalls once the server stops reading.
        let read = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        };
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                got = read => got,
                _ = async { let _ = w.write_all(&upload).await; std::future::pending::<()>().await } => unreachable!(),
            }
        })
        .await
        .unwrap_or_default();
        if got.starts_with(b"413") {
            answered += 1;
        }
    }
    assert_eq!(answered, 40, "clients that got the early answer");
    for _ in 0..40 {
        let s = TcpStream::connect(front).await.unwrap();
        let mut s = s;
        s.write_all(b"hello").await.unwrap();
        // Closing with SO_LINGER 0 sends a reset.
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    }
    // The resets reach the balancer asynchronously: wait until every pair is gone.
    wait_until_async(Duration::from_secs(10), "every pair closed", || {
        servers_json(&api).iter().all(|s| s["active_connections"] == 0)
    })
    .await;
    assert_eq!(failures(&api), 0, "client-caused errors counted: {:?}", servers_json(&api));
    assert!(servers_json(&api).iter().all(|s| s["ejected"] == false));
    drop(d);

    // A server that accepts and resets at once: counted, and ejected after 3.
    let resetting = listen_any();
    let reset_addr = resetting.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = resetting.accept().await {
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
        }
    });
    let d = Daemon::run_config(&pool_config(&[reset_addr], pool));
    let api = admin_url(&d);
    let front = d.addr("web");
    for _ in 0..6 {
        let mut s = TcpStream::connect(front).await.unwrap();
        let _ = s.write_all(b"hello").await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    wait_until_async(Duration::from_secs(10), "the resetting server ejected", || {
        servers_json(&api).iter().any(|s| s["ejected"] == true)
    })
    .await;
    assert!(failures(&api) >= 3);
}
