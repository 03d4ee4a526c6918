//! Fan-out and hedged frontends end to end, through the real binary: two name servers that
//! each know half of the names (UDP and TCP line servers answering `ANSWER <name>=<value>` or
//! `ERR unknown`) behind a fan-out frontend with `reject_prefix = "ERR"`: every name gets the
//! answer of the server that knows it, an unknown one gets `on_timeout` at the timeout (not
//! before, and within 10 %), and 50 pipelined lines on one TCP connection come back in
//! order. Hedging with a slow and a fast server: whichever the balancer asks first, the
//! answer comes from the fast one, at once or about the delay later.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_millis(300);
const NOT_FOUND: &str = "Error:HOST NOT FOUND";

/// When each server received each name.
type Arrivals = Arc<Mutex<Vec<(&'static str, String, Instant)>>>;

/// A name server: answers `ANSWER <name>=<value>` for the names it knows and `ERR unknown`
/// for the others, `delay` after the request arrived.
#[derive(Clone)]
struct Names {
    tag: &'static str,
    known: Arc<HashMap<String, String>>,
    delay: Duration,
    arrivals: Arrivals,
}

impl Names {
    fn new(
        tag: &'static str,
        known: &[(&str, &str)],
        delay: Duration,
        arrivals: &Arrivals,
    ) -> Self {
        let known = known.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Names { tag, known: Arc::new(known), delay, arrivals: arrivals.clone() }
    }

    fn answer(&self, req: &[u8]) -> String {
        let name = String::from_utf8_lossy(req).trim().to_string();
        self.arrivals.lock().unwrap().push((self.tag, name.clone(), Instant::now()));
        match self.known.get(&name) {
            Some(v) => format!("ANSWER {name}={v}"),
            None => "ERR unknown".to_string(),
        }
    }

    /// Serves datagrams on 127.0.0.1:0.
    async fn udp(self) -> (SocketAddr, JoinHandle<()>) {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else { continue };
                let reply = self.answer(&buf[..n]);
                let (sock, delay) = (sock.clone(), self.delay);
                tokio::spawn(async move {
                    // The server's own latency, part of what is tested.
                    tokio::time::sleep(delay).await;
                    let _ = sock.send_to(reply.as_bytes(), peer).await;
                });
            }
        });
        (addr, task)
    }

    /// Serves lines over TCP on 127.0.0.1:0: requests are read as they come and answered in
    /// order, each `delay` after it arrived.
    async fn tcp(self) -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let names = self.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, String)>();
                    let delay = names.delay;
                    tokio::spawn(async move {
                        while let Some((at, reply)) = rx.recv().await {
                            tokio::time::sleep_until((at + delay).into()).await;
                            if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = tx.send((Instant::now(), names.answer(line.as_bytes())));
                    }
                });
            }
        });
        (addr, task)
    }
}

const A_KNOWS: &[(&str, &str)] =
    &[("alpha", "10.0.1.1"), ("bravo", "10.0.1.2"), ("charlie", "10.0.1.3"), ("delta", "10.0.1.4")];
const B_KNOWS: &[(&str, &str)] =
    &[("echo", "10.0.2.1"), ("foxtrot", "10.0.2.2"), ("golf", "10.0.2.3"), ("hotel", "10.0.2.4")];

fn expected(name: &str) -> String {
    A_KNOWS
        .iter()
        .chain(B_KNOWS)
        .find(|(n, _)| *n == name)
        .map_or(NOT_FOUND.to_string(), |(n, v)| format!("ANSWER {n}={v}"))
}

fn config(protocol: &str, mode: &str, servers: &[SocketAddr], fanout: &str) -> String {
    let servers = servers.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
workers = 2

[frontend.names]
bind = "127.0.0.1:0"
protocol = "{protocol}"
pool = "ns"
mode = "{mode}"

[frontend.names.fanout]
{fanout}

[pool.ns]
algorithm = "round-robin"
servers = [{servers}]
connect_timeout = "1s"
"#
    )
}

const FANOUT: &str = r#"
timeout = "300ms"
on_timeout = "Error:HOST NOT FOUND"
reject_prefix = "ERR"
"#;

/// One request over UDP from a fresh socket: the answer and how long it took.
async fn udp_ask(front: SocketAddr, name: &str) -> (String, Duration) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(front).await.unwrap();
    let t = Instant::now();
    s.send(name.as_bytes()).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer for {name} within 3s"))
        .unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), t.elapsed())
}

/// The timeout answers must not come early, and typically (the median) within 10 % of the
/// timeout; a single one may be late by scheduling on a busy machine, but not by much.
fn check_timeout_accuracy(what: &str, mut took: Vec<Duration>) {
    took.sort();
    eprintln!("{what}: timeout answers after {took:?} (timeout {TIMEOUT:?})");
    assert!(took.iter().all(|&t| t >= TIMEOUT), "{what}: answered before the timeout: {took:?}");
    let median = took[took.len() / 2];
    assert!(median <= TIMEOUT * 11 / 10, "{what}: median {median:?} beyond timeout + 10%");
    assert!(took.iter().all(|&t| t <= TIMEOUT * 3 / 2), "{what}: far too late: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_fanout_takes_the_answer_of_the_server_that_knows() {
    let arrivals = Arrivals::default();
    let (a, _ta) = Names::new("a", A_KNOWS, Duration::ZERO, &arrivals).udp().await;
    let (b, _tb) = Names::new("b", B_KNOWS, Duration::ZERO, &arrivals).udp().await;
    let d = Daemon::run_config(&config("udp", "fanout", &[a, b], FANOUT));
    let front = d.addr("names");
    for (name, _) in A_KNOWS.iter().chain(B_KNOWS) {
        let (answer, took) = udp_ask(front, name).await;
        assert_eq!(answer, expected(name));
        assert!(took < TIMEOUT, "{name} took {took:?}");
    }
    // Every request went to both servers (the loser may still be reading it).
    wait_until_async(Duration::from_secs(2), "every name asked of both servers", || {
        let asked = arrivals.lock().unwrap();
        A_KNOWS.iter().chain(B_KNOWS).all(|(name, _)| {
            let mut tags: Vec<_> =
                asked.iter().filter(|(_, n, _)| n == name).map(|(t, _, _)| *t).collect();
            tags.sort();
            tags == ["a", "b"]
        })
    })
    .await;
    // Unknown names: both servers say ERR at once, the client hears on_timeout at the timeout.
    let mut took = Vec::new();
    for i in 0..5 {
        let (answer, t) = udp_ask(front, &format!("unknown{i}")).await;
        assert_eq!(answer, NOT_FOUND);
        took.push(t);
    }
    // Concurrently too: timeouts run side by side, not one after another.
    let all: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { udp_ask(front, &format!("many{i}")).await }))
        .collect();
    for h in all {
        let (answer, t) = h.await.unwrap();
        assert_eq!(answer, NOT_FOUND);
        assert!(t >= TIMEOUT && t < TIMEOUT * 2, "concurrent unknown took {t:?}");
    }
    check_timeout_accuracy("udp", took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_fanout_answers_pipelined_lines_in_order() {
    let arrivals = Arrivals::default();
    let (a, _ta) = Names::new("a", A_KNOWS, Duration::ZERO, &arrivals).tcp().await;
    let (b, _tb) = Names::new("b", B_KNOWS, Duration::ZERO, &arrivals).tcp().await;
    let d = Daemon::run_config(&config("tcp", "fanout", &[a, b], FANOUT));
    let front = d.addr("names");

    // One request per connection, one line each: known names at once, unknown at the timeout.
    let mut took = Vec::new();
    for name in ["alpha", "hotel", "nope1", "nope2", "nope3", "nope4", "nope5"] {
        let s = TcpStream::connect(front).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        let t = Instant::now();
        w.write_all(format!("{name}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(3), lines.next_line())
            .await
            .expect("an answer line")
            .unwrap()
            .unwrap();
        let t = t.elapsed();
        assert_eq!(line, expected(name));
        if line == NOT_FOUND {
            took.push(t);
        } else {
            assert!(t < TIMEOUT, "{name} took {t:?}");
        }
    }
    check_timeout_accuracy("tcp", took);

    // 50 lines written at once on one connection, every fifth one unknown.
    let known: Vec<&str> = A_KNOWS.iter().chain(B_KNOWS).map(|(n, _)| *n).collect();
    let names: Vec<String> = (0..50)
        .map(
            |i| if i % 5 == 2 { format!("missing{i}") } else { known[i % known.len()].to_string() },
        )
        .collect();
    let s = TcpStream::connect(front).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let batch: String = names.iter().map(|n| format!("{n}\n")).collect();
    let t = Instant::now();
    w.write_all(batch.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut first_known_at = None;
    let end = Instant::now() + Duration::from_secs(5);
    while got.len() < names.len() {
        let line = tokio::time::timeout_at(end.into(), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} answers: {got:?}", got.len(), names.len()))
            .unwrap()
            .expect("connection open");
        if got.is_empty() {
            first_known_at = Some(t.elapsed());
        }
        got.push(line);
    }
    let total = t.elapsed();
    let want: Vec<String> = names.iter().map(|n| expected(n)).collect();
    assert_eq!(got, want, "answers out of order or wrong");
    // The first two lines are known names: answered before the first unknown one times out.
    assert!(first_known_at.unwrap() < TIMEOUT, "first answer after {first_known_at:?}");
    // The ten unknown names timed out side by side, not one after another.
    assert!(total >= TIMEOUT && total < TIMEOUT * 2, "50 pipelined lines took {total:?}");
    eprintln!("tcp: 50 pipelined lines (10 unknown) answered in order in {total:?}");

    // The client closes its side: it still gets every answer, then the connection closes.
    w.write_all(b"bravo\nunknown-last\ngolf").await.unwrap();
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(3), lines.next_line()).await.unwrap().unwrap()
    {
        rest.push(line);
    }
    assert_eq!(rest, vec![expected("bravo"), NOT_FOUND.to_string(), expected("golf")]);
}

/// Hedge test: `slow` answers after 500 ms, `fast` at once; both know every name. Asserts,
/// per request, from which server was asked first: fast first → answered at once and the
/// slow one never asked; slow first → fast asked about the delay later and its answer
/// relayed. Returns how many requests went each way and the latencies.
async fn hedge_round(
    ask: impl AsyncFn(&str) -> (String, Duration),
    arrivals: &Arrivals,
    delay: Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut fast_first, mut slow_first) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let name = format!("host{i}");
        let (answer, took) = ask(&name).await;
        assert_eq!(answer, format!("ANSWER {name}=fast"), "request {i}");
        let asked: Vec<(&str, Instant)> = arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n, _)| *n == name)
            .map(|(t, _, at)| (*t, *at))
            .collect();
        match asked.as_slice() {
            [("fast", _)] => {
                assert!(took < delay, "fast first, yet answered after {took:?}");
                fast_first.push(took);
            }
            [("slow", t0), ("fast", t1)] => {
                // Measured between the two servers' arrivals, each a little after the
                // balancer sent: a few hundred microseconds either way.
                let gap = *t1 - *t0;
                assert!(
                    gap >= delay * 9 / 10 && gap < delay * 2,
                    "hedged after {gap:?} (delay {delay:?})"
                );
                assert!(
                    took >= delay && took < Duration::from_millis(300),
                    "slow first: answered after {took:?} (delay {delay:?})"
                );
                slow_first.push(took);
            }
            other => panic!("request {i}: servers asked {other:?}"),
        }
    }
    // Round robin, fast server first in the pool: the first request goes to the fast one,
    // and after each hedge (which takes the fast one's turn) the next starts with the slow.
    assert!(!fast_first.is_empty() && !slow_first.is_empty(), "{fast_first:?} {slow_first:?}");
    (fast_first, slow_first)
}

const HEDGE: &str = r#"
timeout = "2s"
on_timeout = "Error:HOST NOT FOUND"
reject_prefix = "ERR"
delay = "100ms"
"#;

fn every_name(tag: &str) -> Vec<(String, String)> {
    (0..8).map(|i| (format!("host{i}"), tag.to_string())).collect()
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_hedge_asks_a_second_server_after_the_delay() {
    let arrivals = Arrivals::default();
    let (fast_names, slow_names) = (every_name("fast"), every_name("slow"));
    let (fast, _tf) =
        Names::new("fast", &as_refs(&fast_names), Duration::ZERO, &arrivals).udp().await;
    let (slow, _ts) =
        Names::new("slow", &as_refs(&slow_names), Duration::from_millis(500), &arrivals)
            .udp()
            .await;
    let d = Daemon::run_config(&config("udp", "hedge", &[fast, slow], HEDGE));
    let front = d.addr("names");
    let (f, s) =
        hedge_round(async |n: &str| udp_ask(front, n).await, &arrivals, Duration::from_millis(100))
            .await;
    eprintln!("udp hedge: fast first answered in {f:?}; slow first in {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_hedge_asks_a_second_server_after_the_delay() {
    let arrivals = Arrivals::default();
    let (fast_names, slow_names) = (every_name("fast"), every_name("slow"));
    let (fast, _tf) =
        Names::new("fast", &as_refs(&fast_names), Duration::ZERO, &arrivals).tcp().await;
    let (slow, _ts) =
        Names::new("slow", &as_refs(&slow_names), Duration::from_millis(500), &arrivals)
            .tcp()
            .await;
    let d = Daemon::run_config(&config("tcp", "hedge", &[fast, slow], HEDGE));
    // All requests on one client connection, one at a time.
    let s = TcpStream::connect(d.addr("names")).await.unwrap();
    let (r, w) = s.into_split();
    let conn = tokio::sync::Mutex::new((BufReader::new(r).lines(), w));
    let ask = async |name: &str| {
        let mut c = conn.lock().await;
        let t = Instant::now();
        c.1.write_all(format!("{name}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(3), c.0.next_line())
            .await
            .expect("an answer line")
            .unwrap()
            .unwrap();
        (line, t.elapsed())
    };
    let (f, s) = hedge_round(ask, &arrivals, Duration::from_millis(100)).await;
    eprintln!("tcp hedge: fast first answered in {f:?}; slow first in {s:?}");
}
