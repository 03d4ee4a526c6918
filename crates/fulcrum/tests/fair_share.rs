//! The fair share of connection slots, with default settings: one or many client addresses
//! holding thousands of idle connections, more than the balancer's connection limit, never
//! stop another address from being served. The attackers are this test process (12,000
//! sockets, within its 20,000 descriptors); the balancer and the backend (`fulcrum backend`,
//! a line echo) are processes of their own. A legitimate client from 127.0.0.1 then opens a
//! new connection per request, 200 a second, 100 requests: every one must be served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    d: Daemon,
    api: String,
    _backend: Daemon,
}

fn start(extra: &str) -> Setup {
    start_with(&[], extra)
}

/// A balancer whose frontend `fe` has `extra` keys, before a `fulcrum backend` started with
/// `backend_args` more.
fn start_with(backend_args: &[&str], extra: &str) -> Setup {
    let mut args = vec!["backend", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(backend_args);
    let backend = Daemon::spawn(&args);
    let b = backend.addr("backend");
    let d = Daemon::run_config(&format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.fe]\nbind = \"127.0.0.1:0\"\n\
         pool = \"p\"\n{extra}\n[pool.p]\nservers = [\"{b}\"]\n"
    ));
    let api = d.find("admin API listening").expect("admin API listening")["address"]
        .as_str()
        .unwrap()
        .to_string();
    Setup { d, api: format!("http://{api}"), _backend: backend }
}

fn active(s: &Setup) -> f64 {
    metric(&s.api, "fulcrum_frontend_connections_active{frontend=\"fe\"}")
}

fn rejections(s: &Setup, reason: &str) -> f64 {
    metric(&s.api, &format!("fulcrum_rejections_total{{frontend=\"fe\",reason=\"{reason}\"}}"))
}

/// Opens `per_address` idle connections from each of `addresses` (all at once, each connect
/// bounded): what the balancer then keeps or resets is its business.
async fn flood(front: SocketAddr, addresses: &[Ipv4Addr], per_address: usize) -> Vec<TcpStream> {
    let mut tasks = tokio::task::JoinSet::new();
    for &ip in addresses {
        for _ in 0..per_address {
            tasks.spawn(async move {
                let sock = TcpSocket::new_v4().ok()?;
                sock.bind((ip, 0).into()).ok()?;
                tokio::time::timeout(WAIT, sock.connect(front)).await.ok()?.ok()
            });
        }
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(s)) = r {
            held.push(s);
        }
    }
    held
}

/// Closes the attack's sockets with a reset: no TIME_WAIT left holding their addresses'
/// ports for the next flood.
fn reset_all(held: Vec<TcpStream>) {
    for c in held {
        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
    }
}

/// Waits until the balancer has gone through the flood's backlog, within `WAIT`: each of
/// the `sockets` connections the flood opened was either served (a connection counted) or
/// refused when no slot was left or made (`full`), and the connections closed to make room
/// are gone (no more held than the limit). The attack is then in place.
async fn settled(s: &Setup, sockets: usize) {
    let max = metric(&s.api, "fulcrum_connections_max");
    wait_until_async(WAIT, "the balancer through the flood's backlog", || {
        let seen = metric(&s.api, "fulcrum_frontend_connections_total{frontend=\"fe\"}")
            + rejections(s, "full");
        seen >= sockets as f64 && active(s) <= max
    })
    .await;
}

/// One request on a new connection from 127.0.0.1: a line out, its upper-cased echo back.
async fn one_request(front: SocketAddr, n: usize) -> bool {
    let go = async {
        // Not bound first: from 127.0.0.1 anyway, and a port is then chosen for the whole
        // address pair, where bind() would need one free of every socket of the flood runs.
        let s = TcpStream::connect(front).await.ok()?;
        let (r, mut w) = s.into_split();
        w.write_all(format!("hello {n}\n").as_bytes()).await.ok()?;
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.ok()?;
        Some(line == format!("HELLO {n}\n"))
    };
    matches!(tokio::time::timeout(WAIT, go).await, Ok(Some(true)))
}

/// 100 requests, one every 5 ms, each on its own connection: how many were served.
async fn legitimate(front: SocketAddr) -> usize {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..100 {
        tick.tick().await;
        tasks.spawn(one_request(front, n));
    }
    let mut served = 0;
    while let Some(r) = tasks.join_next().await {
        served += usize::from(r.unwrap_or(false));
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_with_12000_idle_connections_does_not_crowd_out_another() {
    let s = start("");
    let front = s.d.addr("fe");
    let max = metric(&s.api, "fulcrum_connections_max");
    assert!(max > 0.0 && max < 12_000.0, "the flood must pass the limit ({max})");
    let started = Instant::now();
    let held = flood(front, &[Ipv4Addr::new(127, 0, 0, 3)], 12_000).await;
    settled(&s, held.len()).await;
    // Refused past its share under pressure, or when every slot was taken (a flood's first
    // second or two is not held yet: docs/guards.md).
    let refused = rejections(&s, "fair-share") + rejections(&s, "full");
    let (a, flooded) = (active(&s), started.elapsed());
    println!(
        "{} attacker sockets, {a} connections held of {max}, {refused} refused, in {flooded:?}",
        held.len()
    );
    // (When fewer connected than there are slots, e.g. the kernel's queue dropped some, no
    // refusal is owed.)
    assert!(refused > 0.0 || (held.len() as f64) < max, "the flood refused");
    assert!(a >= max * 0.85, "{a} held of {max}");
    let served = legitimate(front).await;
    assert_eq!(served, 100, "legitimate requests served during the flood");
    reset_all(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_addresses_with_12_each_do_not_crowd_out_another() {
    let s = start("");
    let front = s.d.addr("fe");
    let max = metric(&s.api, "fulcrum_connections_max");
    let addresses: Vec<Ipv4Addr> =
        (0..1000u32).map(|i| Ipv4Addr::from(0x7f02_0000 + i + 1)).collect();
    let held = flood(front, &addresses, 12).await;
    // More than every slot asked for: those over the share refused, the slots run out, and
    // addresses still under their share close connections of those holding more.
    settled(&s, held.len()).await;
    let before = (rejections(&s, "fair-share"), rejections(&s, "full"), active(&s));
    let served = legitimate(front).await;
    println!(
        "{} attacker sockets, {max} slots; fair-share/full refusals and active before the \
         legitimate client {before:?}, after {:?}; evictions {}",
        held.len(),
        (rejections(&s, "fair-share"), rejections(&s, "full"), active(&s)),
        metric(&s.api, "fulcrum_fair_share_evictions_total{frontend=\"fe\"}")
    );
    // Met by the fair share: refused past its share or when full, or its connections
    // closed to make room (a flood's first second or two holds nothing yet, so at first its
    // members make room for each other).
    let met = rejections(&s, "fair-share")
        + rejections(&s, "full")
        + metric(&s.api, "fulcrum_fair_share_evictions_total{frontend=\"fe\"}");
    assert!(met > 0.0 || (held.len() as f64) < max, "the flood met by the fair share");
    let refusals: Vec<_> =
        ["client refused", "no connection slot left and none to make: client refused"]
            .iter()
            .flat_map(|m| s.d.events(m))
            .filter(|e| e["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")))
            .collect();
    assert_eq!(
        served, 100,
        "legitimate requests served during the flood; refusals logged: {refusals:?}"
    );
    reset_all(held);
}

/// One connection from `ip`, open once the balancer counts `count` active.
async fn held_connection(s: &Setup, ip: Ipv4Addr, count: f64) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind((ip, 0).into()).unwrap();
    let c = sock.connect(s.d.addr("fe")).await.unwrap();
    wait_until_async(WAIT, "the connection counted", || active(s) >= count).await;
    c
}

/// With every slot taken, a newcomer gets in at once: the oldest connection of the address
/// holding the most is closed for it, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_full_a_newcomer_takes_the_slot_of_the_busiest_addresss_oldest_connection() {
    // Idle timeouts kept whole under pressure: every connection here is idle.
    let s = start(
        "max_connections = 50\nfair_share_above = \"100%\"\npressure_idle_timeout = \"300s\"\n",
    );
    let (busy, other) = (Ipv4Addr::new(127, 0, 0, 5), Ipv4Addr::new(127, 0, 0, 6));
    let mut held = Vec::new();
    for i in 0..40 {
        held.push(held_connection(&s, busy, f64::from(i + 1)).await);
    }
    for i in 0..10 {
        held.push(held_connection(&s, other, f64::from(41 + i)).await);
    }
    assert!(one_request(s.d.addr("fe"), 1).await, "the newcomer served with every slot taken");
    let evictions = || metric(&s.api, "fulcrum_fair_share_evictions_total{frontend=\"fe\"}");
    assert_eq!(evictions(), 1.0);
    // The closed one reads its end (EOF or reset); the others stay open.
    let mut closed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while closed.is_empty() && Instant::now() < deadline {
        for (i, c) in held.iter().enumerate() {
            let mut b = [0u8; 1];
            match c.try_read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => closed.push(i),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed, vec![0], "only the busiest address's oldest connection closed");
    assert_eq!(rejections(&s, "full"), 0.0);
}

/// `fair_share = false`: the old behaviour, the backlog holds newcomers until a slot frees.
/// Shown with a small `max_connections`: the newcomer is not served while the slots are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fair_share_a_full_frontend_keeps_newcomers_waiting() {
    let s = start("max_connections = 50\nfair_share = false\n");
    let front = s.d.addr("fe");
    let held = flood(front, &[Ipv4Addr::new(127, 0, 0, 4)], 50).await;
    wait_until_async(WAIT, "the 50 slots taken", || active(&s) >= 50.0).await;
    let waiting = tokio::spawn(one_request(front, 7));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served with every slot held and no fair share");
    reset_all(held);
    assert!(waiting.await.unwrap(), "served once the slots freed");
}

/// Waits until every connection in `held` is counted, then gives them back.
async fn counted(s: &Setup, held: Vec<TcpStream>) -> Vec<TcpStream> {
    let n = held.len() as f64;
    wait_until_async(WAIT, "the connections counted", || active(s) >= n).await;
    held
}

/// Idle connections: how many of `held` the balancer has closed (read EOF or an error).
fn closed(held: &[TcpStream]) -> usize {
    held.iter()
        .filter(|c| {
            let mut b = [0u8; 64];
            !matches!(c.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

const PRESSED: &str = "max_connections = 20\nfair_share_above = \"50%\"\n\
                       pressure_idle_timeout = \"1s\"\n";

/// Under pressure (12 of 20 slots, past 50 %) idle L4 connections get `pressure_idle_timeout`
/// (1 s) instead of `idle_timeout` (300 s): they are closed until the pressure passes (fewer
/// than 10), and the rest then keep their whole timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_get_a_shorter_timeout_while_the_slots_are_under_pressure() {
    let s = start(PRESSED);
    let mut held = Vec::new();
    for i in 0..12u8 {
        // Four addresses, three each: nobody over its share (20 / 5).
        held.push(
            held_connection(&s, Ipv4Addr::new(127, 0, 0, 10 + i / 3), f64::from(i + 1)).await,
        );
    }
    let t = Instant::now();
    wait_until_async(WAIT, "idle connections closed under pressure", || active(&s) < 10.0).await;
    let shrunk = t.elapsed();
    println!("pressure passed after {shrunk:?}");
    assert!(shrunk < Duration::from_secs(10), "closed at the shorter timeout: {shrunk:?}");
    // A negative check needs a window: two of the shortened timeouts without pressure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = active(&s);
    assert!((6.0..10.0).contains(&left), "{left} left open");
    assert_eq!(closed(&held), 12 - left as usize, "what the balancer counts is what closed");
    let counted = metric(&s.api, "fulcrum_pressure_idle_closed_total{frontend=\"fe\"}");
    assert_eq!(counted, 12.0 - left, "each early close counted");
}

/// The same for HTTP keep-alive: connections idle between requests are closed at
/// `pressure_idle_timeout` under pressure (access-log outcome `keepalive-timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keepalive_gets_a_shorter_timeout_while_the_slots_are_under_pressure() {
    let s = start_with(&["--protocol", "http"], &format!("protocol = \"http\"\n{PRESSED}"));
    let mut held = Vec::new();
    for i in 0..12u8 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind((Ipv4Addr::new(127, 0, 0, 10 + i / 3), 0).into()).unwrap();
        let mut c = sock.connect(s.d.addr("fe")).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut c, &mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        held.push(c);
    }
    let held = counted(&s, held).await;
    // Whatever is left of each response body is read before looking for closes.
    for c in &held {
        let mut b = [0u8; 65536];
        while c.try_read(&mut b).is_ok_and(|n| n > 0) {}
    }
    let t = Instant::now();
    wait_until_async(WAIT, "keep-alive connections closed under pressure", || active(&s) < 10.0)
        .await;
    let shrunk = t.elapsed();
    println!("pressure passed after {shrunk:?}");
    assert!(shrunk < Duration::from_secs(10), "closed at the shorter timeout: {shrunk:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = active(&s);
    assert!((6.0..10.0).contains(&left), "{left} left open");
    let counted = metric(&s.api, "fulcrum_pressure_idle_closed_total{frontend=\"fe\"}");
    assert_eq!(counted, 12.0 - left, "each early close counted");
}
