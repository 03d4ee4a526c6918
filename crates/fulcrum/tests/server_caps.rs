//! Per-server connection caps (`max_connections`, the agent's `maxconn:N`) and the pool's
//! queue, end to end through the real binary. The test servers count their own concurrent
//! connections (health checks off, so every connection they see is a client's) and record
//! the order in which clients reach them.
//!
//! * `cap_one_serves_twenty_queued_clients_in_arrival_order`: 2 servers at cap 1, 20 clients
//!   arriving one after another (each known to be queued before the next connects): never
//!   more than 1 connection per server, all 20 served, in arrival order.
//! * `cap_holds_for_a_burst_of_concurrent_clients`: the same cap with 40 clients at once over
//!   2 workers: the slot is reserved atomically, never 2 at one server.
//! * `queue_full_and_queue_timeout_refuse_when_servers_stall`.
//! * `without_a_queue_a_client_finding_every_server_full_is_refused_at_once`, with a server
//!   added through the API with its own cap.
//! * `agent_maxconn_caps_a_server`: an agent answering `up maxconn:1` overrides the
//!   configured `max_connections = 5`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A server that counts its concurrent connections. Normal: reads one line (the client's
/// number), records it, echoes it, and holds the connection until the client ends it.
/// Stalled: accepts and never reads or answers.
struct Counted {
    addr: SocketAddr,
    now: Arc<AtomicU64>,
    max: Arc<AtomicU64>,
    accepts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Counted {
    fn start(order: Arc<Mutex<Vec<u32>>>, stall: bool) -> Counted {
        let l = listen_any();
        let addr = l.local_addr().unwrap();
        let (now, max, accepts) =
            (Arc::<AtomicU64>::default(), Arc::<AtomicU64>::default(), Arc::<AtomicU64>::default());
        let (n, m, a) = (now.clone(), max.clone(), accepts.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(cur, Ordering::SeqCst);
                if stall {
                    held.push(s);
                    continue;
                }
                let (n, order) = (n.clone(), order.clone());
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    let mut line = String::new();
                    if r.read_line(&mut line).await.is_ok()
                        && let Ok(id) = line.trim().parse::<u32>()
                    {
                        order.lock().unwrap().push(id);
                        let _ = w.write_all(line.as_bytes()).await;
                        // Held until the client ends it (fulcrum passes its EOF on).
                        let mut rest = Vec::new();
                        let _ = r.read_to_end(&mut rest).await;
                    }
                    // Counted down before the socket closes: fulcrum frees the slot only
                    // after this side closed, so a next connection never overlaps in the count.
                    n.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Counted { addr, now, max, accepts, task }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn caps_config(servers: &[(SocketAddr, u32)], pool_extra: &str) -> String {
    let list = servers
        .iter()
        .map(|(a, cap)| format!("{{ address = \"{a}\", max_connections = {cap} }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
workers = 2
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

fn admin_url(d: &Daemon) -> String {
    format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap())
}

fn pool(api: &str) -> Value {
    get(&format!("{api}/api/v1/pools"))["pools"][0].clone()
}

fn queue_length(api: &str) -> u64 {
    pool(api)["queue_length"].as_u64().unwrap()
}

/// A client that connected and sent its number.
async fn client(front: SocketAddr, id: u32) -> TcpStream {
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(format!("{id}\n").as_bytes()).await.unwrap();
    s
}

/// Reads the client's number echoed back, within `limit`.
async fn served(s: &mut TcpStream, id: u32, limit: Duration) {
    let want = format!("{id}\n");
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(limit, s.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("client {id} not served within {limit:?}"))
        .unwrap_or_else(|e| panic!("client {id} closed: {e}"));
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// Reads until the balancer closes the client; returns how long that took. Panics if a byte
/// arrives (a refused client gets nothing).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(limit, s.read(&mut buf)).await.expect("client not closed");
    assert!(matches!(r, Ok(0) | Err(_)), "a refused client got bytes: {r:?}");
    t.elapsed()
}

fn access_outcomes(d: &Daemon, outcome: &str) -> usize {
    d.log
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["target"] == "fulcrum::access" && v["outcome"] == outcome)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_one_serves_twenty_queued_clients_in_arrival_order() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let a = Counted::start(order.clone(), false);
    let b = Counted::start(order.clone(), false);
    let d = Daemon::run_config(&caps_config(
        &[(a.addr, 1), (b.addr, 1)],
        "queue = { size = 100, timeout = \"20s\" }",
    ));
    let (front, api) = (d.addr("web"), admin_url(&d));
    let p = pool(&api);
    assert_eq!(p["queue"], json!({ "size": 100, "timeout_ms": 20_000 }));
    assert_eq!(p["servers"][0]["max_connections"], 1);
    // Two clients fill both servers.
    let mut clients = Vec::new();
    for id in 1..=2 {
        let mut s = client(front, id).await;
        served(&mut s, id, Duration::from_secs(5)).await;
        clients.push(Some(s));
    }
    // Eighteen more arrive one after another, each queued before the next connects, so the
    // arrival order is the numbering.
    for id in 3..=20u32 {
        clients.push(Some(client(front, id).await));
        let want = u64::from(id - 2);
        wait_until_async(Duration::from_secs(10), &format!("{want} clients queued"), || {
            queue_length(&api) == want
        })
        .await;
    }
    assert_eq!(metric(&api, "fulcrum_pool_queue_length{pool=\"app\"}"), 18.0);
    // Each client that leaves frees one slot: the head of the line, and only it, gets it.
    for k in 0..18usize {
        let id = k as u32 + 3;
        drop(clients[k].take());
        served(clients[k + 2].as_mut().unwrap(), id, Duration::from_secs(10)).await;
        let want = 18 - (k as u64 + 1);
        wait_until_async(Duration::from_secs(10), "the line to shorten", || {
            queue_length(&api) == want
        })
        .await;
    }
    drop(clients);
    assert_eq!(*order.lock().unwrap(), (1..=20).collect::<Vec<u32>>(), "served out of order");
    assert_eq!((a.max(), b.max()), (1, 1), "more than 1 client at a server at once");
    assert_eq!(metric(&api, "fulcrum_pool_queued_total{pool=\"app\"}"), 18.0);
    assert_eq!(
        metric(&api, "fulcrum_pool_refused_total{pool=\"app\",reason=\"queue_timeout\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cap_holds_for_a_burst_of_concurrent_clients() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let a = Counted::start(order.clone(), false);
    let b = Counted::start(order.clone(), false);
    let d = Daemon::run_config(&caps_config(
        &[(a.addr, 1), (b.addr, 1)],
        "queue = { size = 100, timeout = \"30s\" }",
    ));
    let front = d.addr("web");
    let mut tasks = Vec::new();
    for id in 1..=40u32 {
        tasks.push(tokio::spawn(async move {
            let mut s = client(front, id).await;
            served(&mut s, id, Duration::from_secs(30)).await;
            // Ends the connection at once: the slot goes to the next in line.
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut got = order.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (1..=40).collect::<Vec<u32>>(), "every client served once");
    assert_eq!(a.max().max(b.max()), 1, "more than 1 client at a server at once");
    assert!(a.accepts.load(Ordering::SeqCst) > 0 && b.accepts.load(Ordering::SeqCst) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_and_queue_timeout_refuse_when_servers_stall() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let a = Counted::start(order.clone(), true);
    let b = Counted::start(order.clone(), true);
    let d = Daemon::run_config(&caps_config(
        &[(a.addr, 1), (b.addr, 1)],
        "queue = { size = 3, timeout = \"1s\" }",
    ));
    let (front, api) = (d.addr("web"), admin_url(&d));
    // The stalled servers take one client each, and never let go.
    let mut holders = Vec::new();
    for id in 1..=2 {
        holders.push(client(front, id).await);
    }
    wait_until_async(Duration::from_secs(10), "both servers to hold a client", || {
        a.accepts.load(Ordering::SeqCst) == 1 && b.accepts.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut waiting = Vec::new();
    for id in 3..=5u32 {
        waiting.push(client(front, id).await);
        let want = u64::from(id - 2);
        wait_until_async(Duration::from_secs(10), "queued", || queue_length(&api) == want).await;
    }
    // The line is full: the next client is refused at once, not after the timeout.
    let mut sixth = client(front, 6).await;
    let took = closed_within(&mut sixth, Duration::from_secs(5)).await;
    assert!(took < Duration::from_millis(800), "queue-full refusal took {took:?}");
    // The waiting ones are refused when their time in line is up.
    for s in &mut waiting {
        closed_within(s, Duration::from_secs(10)).await;
    }
    wait_until_async(Duration::from_secs(10), "the line to empty", || queue_length(&api) == 0)
        .await;
    let refused = |reason: &str| {
        metric(&api, &format!("fulcrum_pool_refused_total{{pool=\"app\",reason=\"{reason}\"}}"))
    };
    assert_eq!(refused("queue_full"), 1.0);
    assert_eq!(refused("queue_timeout"), 3.0);
    assert_eq!(a.accepts.load(Ordering::SeqCst) + b.accepts.load(Ordering::SeqCst), 2);
    let dd = &d;
    wait_until_async(Duration::from_secs(5), "access-log outcomes", || {
        access_outcomes(dd, "queue-timeout") == 3 && access_outcomes(dd, "queue-full") == 1
    })
    .await;
    drop(holders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_a_client_finding_every_server_full_is_refused_at_once() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let a = Counted::start(order.clone(), false);
    let d = Daemon::run_config(&caps_config(&[(a.addr, 1)], ""));
    let (front, api) = (d.addr("web"), admin_url(&d));
    assert_eq!(pool(&api)["queue"], Value::Null);
    let mut first = client(front, 1).await;
    served(&mut first, 1, Duration::from_secs(5)).await;
    let mut second = client(front, 2).await;
    let took = closed_within(&mut second, Duration::from_secs(5)).await;
    assert!(took < Duration::from_millis(800), "refusal took {took:?}");
    assert_eq!(
        metric(&api, "fulcrum_pool_refused_total{pool=\"app\",reason=\"servers_full\"}"),
        1.0
    );
    // A server added through the API with its own cap takes exactly one more client.
    let b = Counted::start(order.clone(), false);
    let r = tokio::task::block_in_place(|| {
        ureq::post(&format!("{api}/api/v1/pools/app/servers"))
            .header("Content-Type", "application/json")
            .send(json!({ "address": b.addr.to_string(), "max_connections": 1 }).to_string())
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    });
    assert!(r.contains("\"max_connections\":1"), "{r}");
    assert_eq!(pool(&api)["servers"][1]["max_connections"], 1);
    let mut third = client(front, 3).await;
    served(&mut third, 3, Duration::from_secs(5)).await;
    let mut fourth = client(front, 4).await;
    closed_within(&mut fourth, Duration::from_secs(5)).await;
    assert_eq!((a.max(), b.max()), (1, 1));
    assert_eq!(*order.lock().unwrap(), vec![1, 3]);
    drop((first, third));
}

/// An agent-check port answering `text` to every connection.
fn agent_check(text: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            let _ = s.write_all(text.as_bytes()).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_maxconn_caps_a_server() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let a = Counted::start(order.clone(), false);
    let (agent, _task) = agent_check("up maxconn:1\n");
    let d = Daemon::run_config(&caps_config(
        &[(a.addr, 5)],
        &format!(
            "agent_pull = {{ port = {}, interval = \"200ms\", timeout = \"1s\" }}",
            agent.port()
        ),
    ));
    let (front, api) = (d.addr("web"), admin_url(&d));
    wait_until_async(Duration::from_secs(10), "the agent's maxconn to take effect", || {
        pool(&api)["servers"][0]["max_connections"] == 1
    })
    .await;
    assert_eq!(pool(&api)["servers"][0]["configured_max_connections"], 5);
    let mut first = client(front, 1).await;
    served(&mut first, 1, Duration::from_secs(5)).await;
    let mut second = client(front, 2).await;
    closed_within(&mut second, Duration::from_secs(5)).await;
    assert_eq!(a.max(), 1);
    assert_eq!(a.accepts.load(Ordering::SeqCst), 1, "the agent's probes are not clients");
    // The first client leaves: its slot serves the next one.
    drop(first);
    wait_until_async(Duration::from_secs(5), "the server to see the client leave", || {
        a.now.load(Ordering::SeqCst) == 0
    })
    .await;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = client(front, 3).await;
        let mut got = [0u8; 2];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got)).await
        {
            assert_eq!(&got, b"3\n");
            break;
        }
        // The slot is given back a moment after the server saw the end.
        assert!(Instant::now() < end, "freed slot not reused");
    }
}
