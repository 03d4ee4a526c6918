//! TCP fan-out against lookup table servers (issue 13), end to end through the real binary.
//! A lookup table server answers `<name> <address>` for the names it knows and stays SILENT
//! on the others; matching answers to requests by position on a shared connection relayed
//! one name's address for another. Here: two table servers, each knowing half of the names,
//! one of them answering some names only after the timeout.
//!
//! * `lookup_servers_never_get_a_wrong_answer`: 1,000 mixed queries from a sequential client
//!   and 1,000 from a 16-deep pipelined client: 0 wrong answers; unknown names get the
//!   `on_timeout` line; a late answer is never relayed (its address never appears).
//! * `first_word_tolerates_servers_answering_twice`: with `match = "first-word"` (pipelined
//!   server connections) and servers that send every answer twice: 0 wrong answers, every
//!   known name answered.
//! * `server_that_never_reads_costs_no_memory` (both matchings): one server accepts and never
//!   reads; 10,000 requests pass, the other server's answers keep arriving, and the balancer's
//!   RSS stays under 64 MiB.
//! * `client_that_never_reads_is_closed_after_send_timeout`.
//! * `empty_line_when_on_timeout_is_unset`: every request gets one line, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const NOT_FOUND: &str = "Error:HOST NOT FOUND";
/// Addresses only ever sent after the timeout: they must never reach a client.
const LATE_NET: &str = "192.0.2.";

/// How a table server behaves.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Answers known names once, at once; silent otherwise.
    Normal,
    /// Answers known names twice.
    Twice,
    /// Accepts connections and never reads them.
    NeverReads,
}

/// A lookup table server: `known` names answered at once, `late` ones after `late_by`.
struct Table {
    known: HashMap<String, String>,
    late: HashMap<String, String>,
    late_by: Duration,
    behaviour: Behaviour,
    /// Appended to every answer line.
    suffix: String,
    counters: Counters,
}

#[derive(Clone, Default)]
struct Counters {
    /// Answer lines sent.
    answers: Arc<AtomicU64>,
    /// Of which late ones.
    late: Arc<AtomicU64>,
}

impl Table {
    fn start(self) -> (SocketAddr, Counters, JoinHandle<()>) {
        let l = listen_any();
        let addr = l.local_addr().unwrap();
        let counters = self.counters.clone();
        let me = Arc::new(self);
        let task = tokio::spawn(async move {
            // NeverReads keeps its newest connections open (unread) and closes older ones.
            let mut held: VecDeque<TcpStream> = VecDeque::new();
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                if me.behaviour == Behaviour::NeverReads {
                    held.push_back(s);
                    if held.len() > 1_000 {
                        held.pop_front();
                    }
                    continue;
                }
                tokio::spawn(me.clone().serve(s));
            }
        });
        (addr, counters, task)
    }

    async fn serve(self: Arc<Self>, s: TcpStream) {
        let (r, mut w) = s.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if w.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(name)) = lines.next_line().await {
            let answers = &self.counters.answers;
            if let Some(a) = self.known.get(&name) {
                let line = format!("{name} {a}{}\n", self.suffix);
                let _ = tx.send(line.clone());
                answers.fetch_add(1, Ordering::Relaxed);
                if self.behaviour == Behaviour::Twice {
                    let _ = tx.send(line);
                    answers.fetch_add(1, Ordering::Relaxed);
                }
            } else if let Some(a) = self.late.get(&name) {
                let (tx, line, by) = (tx.clone(), format!("{name} {a}\n"), self.late_by);
                let c = self.counters.clone();
                tokio::spawn(async move {
                    // The server's own (excessive) latency, part of what is tested.
                    tokio::time::sleep(by).await;
                    c.answers.fetch_add(1, Ordering::Relaxed);
                    c.late.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(line);
                });
            }
        }
        drop(tx);
        let _ = writer.await;
    }
}

/// The names asked: `host{i}` known by server 1 (even i) or 2 (odd i); every 100th from 7 on
/// known by none; every 100th from 53 on known by server 1, but answered only after the
/// timeout.
fn query(i: usize) -> String {
    match i % 100 {
        7 => format!("nowhere{i}.example"),
        53 => format!("late{i}.example"),
        _ => format!("host{i}.example"),
    }
}

fn address(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i % 2, i / 256, i % 256)
}

fn expected(i: usize) -> String {
    match i % 100 {
        7 | 53 => NOT_FOUND.to_string(),
        _ => format!("{} {}", query(i), address(i)),
    }
}

fn tables(n: usize, behaviour: [Behaviour; 2]) -> [Table; 2] {
    let mut t = behaviour.map(|behaviour| Table {
        known: HashMap::new(),
        late: HashMap::new(),
        late_by: Duration::from_millis(400),
        behaviour,
        suffix: String::new(),
        counters: Counters::default(),
    });
    for i in 0..n {
        match i % 100 {
            7 => {}
            53 => {
                t[0].late.insert(query(i), format!("{LATE_NET}{}", i % 256));
            }
            _ => {
                t[i % 2].known.insert(query(i), address(i));
            }
        }
    }
    t
}

fn config(
    servers: &[SocketAddr],
    timeout: &str,
    fanout_extra: &str,
    frontend_extra: &str,
) -> String {
    let servers = servers.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
workers = 2

[frontend.names]
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "tables"
mode = "fanout"
{frontend_extra}

[frontend.names.fanout]
timeout = "{timeout}"
{fanout_extra}

[pool.tables]
algorithm = "round-robin"
servers = [{servers}]
connect_timeout = "1s"
"#
    )
}

/// Sends `names` with at most `depth` unanswered at a time; returns the answer lines.
async fn ask_pipelined(
    front: SocketAddr,
    names: &[String],
    depth: usize,
    limit: Duration,
) -> Vec<String> {
    let s = TcpStream::connect(front).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let end = Instant::now() + limit;
    let mut got = Vec::with_capacity(names.len());
    let mut next = 0;
    while got.len() < names.len() {
        let mut batch = String::new();
        while next < names.len() && next - got.len() < depth {
            batch.push_str(&names[next]);
            batch.push('\n');
            next += 1;
        }
        if !batch.is_empty() {
            w.write_all(batch.as_bytes()).await.unwrap();
        }
        let line = tokio::time::timeout_at(end.into(), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} answers", got.len(), names.len()))
            .unwrap()
            .expect("connection open");
        got.push(line);
    }
    got
}

/// Counts answers that are not the expected line, printing the first few.
fn wrong(what: &str, got: &[String], want: impl Fn(usize) -> String) -> usize {
    let mut bad = 0;
    for (i, g) in got.iter().enumerate() {
        assert!(!g.contains(LATE_NET), "{what}: a late answer was relayed for #{i}: {g:?}");
        if *g != want(i) {
            if bad < 10 {
                eprintln!("{what}: #{i} asked {:?}, got {g:?}, want {:?}", query(i), want(i));
            }
            bad += 1;
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_servers_never_get_a_wrong_answer() {
    const N: usize = 1_000;
    let [t1, t2] = tables(N, [Behaviour::Normal; 2]);
    let (a, c1, _ta) = t1.start();
    let (b, _, _tb) = t2.start();
    let d =
        Daemon::run_config(&config(&[a, b], "200ms", &format!("on_timeout = \"{NOT_FOUND}\""), ""));
    let front = d.addr("names");

    // The issue's cases first: beta (server 2) then alpha (server 1), one at a time; then
    // four lines at once with a name nobody knows in between.
    let names: Vec<String> = [1, 0, 3, 7, 2, 5].into_iter().map(query).collect();
    let got = ask_pipelined(front, &names[..2], 1, Duration::from_secs(5)).await;
    assert_eq!(got, vec![expected(1), expected(0)]);
    let got = ask_pipelined(front, &names[2..], 4, Duration::from_secs(5)).await;
    assert_eq!(got, vec![expected(3), expected(7), expected(2), expected(5)]);

    // A sequential client: one request at a time on one connection.
    let names: Vec<String> = (0..N).map(query).collect();
    let t = Instant::now();
    let got = ask_pipelined(front, &names, 1, Duration::from_secs(30)).await;
    let bad = wrong("sequential", &got, expected);
    eprintln!("sequential: {N} queries in {:?}, {bad} wrong", t.elapsed());
    assert_eq!(bad, 0);

    // A 16-deep pipelined client.
    let t = Instant::now();
    let got = ask_pipelined(front, &names, 16, Duration::from_secs(30)).await;
    let bad = wrong("pipelined", &got, expected);
    eprintln!("pipelined: {N} queries in {:?}, {bad} wrong", t.elapsed());
    assert_eq!(bad, 0);

    // The late server did answer (after the timeout) and none of it was relayed (checked in
    // `wrong`); the connections those answers came back on were not reused, so later names
    // were not affected either.
    wait_until_async(Duration::from_secs(3), "the late answers were sent", || {
        c1.late.load(Ordering::Relaxed) >= 20
    })
    .await;
    let got = ask_pipelined(front, &names[..100], 16, Duration::from_secs(10)).await;
    assert_eq!(wrong("after the late answers", &got, expected), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_word_tolerates_servers_answering_twice() {
    const N: usize = 1_000;
    let [t1, t2] = tables(N, [Behaviour::Twice; 2]);
    let (a, _, _ta) = t1.start();
    let (b, c2, _tb) = t2.start();
    let d = Daemon::run_config(&config(
        &[a, b],
        "200ms",
        &format!("on_timeout = \"{NOT_FOUND}\"\nmatch = \"first-word\""),
        "",
    ));
    let front = d.addr("names");
    let names: Vec<String> = (0..N).map(query).collect();
    for (what, depth) in [("sequential", 1), ("pipelined", 16)] {
        let t = Instant::now();
        let got = ask_pipelined(front, &names, depth, Duration::from_secs(30)).await;
        let bad = wrong(what, &got, expected);
        eprintln!("first-word {what}: {N} queries in {:?}, {bad} wrong", t.elapsed());
        assert_eq!(bad, 0);
    }
    // Every name server 2 knows was answered twice, in both rounds.
    let known_b = (0..N).filter(|i| i % 2 == 1 && expected(*i) != NOT_FOUND).count() as u64;
    assert_eq!(c2.answers.load(Ordering::Relaxed), 2 * 2 * known_b);
    // The pipelined connections were kept: a handful per server, not one per request.
    assert!(d.count("fan-out request to server failed") == 0, "upstream errors logged");
}

async fn never_reading_server(matching: &str) {
    const N: usize = 10_000;
    let [mut t1, mut t2] = tables(0, [Behaviour::NeverReads, Behaviour::Normal]);
    t1.known.clear();
    // Long request lines (2 KB each, 20 MB in all): more than the never-reading server's
    // socket buffers take, so a pipelined connection to it stalls.
    let pad = "p".repeat(2_000);
    let name = |i: usize| format!("n{i}-{pad}");
    for i in 0..N {
        t2.known.insert(name(i), address(i));
    }
    let (a, _, _ta) = t1.start();
    let (b, _, _tb) = t2.start();
    let d = Daemon::run_config(&config(
        &[a, b],
        // Also the write timeout: a pipelined connection that takes no byte for this long is
        // closed.
        "300ms",
        &format!("on_timeout = \"{NOT_FOUND}\"\nmatch = \"{matching}\""),
        "",
    ));
    let front = d.addr("names");
    let names: Vec<String> = (0..N).map(name).collect();
    // One client connection, 16 requests in flight, RSS sampled while they pass.
    let t = Instant::now();
    let client = tokio::spawn({
        let names = names.clone();
        async move { ask_pipelined(front, &names, 16, Duration::from_secs(60)).await }
    });
    let mut max_rss = 0;
    let end = Instant::now() + Duration::from_secs(60);
    while !client.is_finished() && Instant::now() < end {
        max_rss = max_rss.max(d.rss_kib());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = client.await.unwrap();
    max_rss = max_rss.max(d.rss_kib());
    for (i, g) in got.iter().enumerate() {
        assert_eq!(*g, format!("{} {}", name(i), address(i)), "#{i}");
    }
    eprintln!("{matching}: {N} requests in {:?}, max RSS {max_rss} KiB", t.elapsed());
    assert!(max_rss < 64 * 1024, "RSS {max_rss} KiB");
    if matching == "first-word" {
        // Its pipelined connection stalled and was closed (and reopened for later requests).
        wait_until_async(Duration::from_secs(5), "a stalled connection was closed", || {
            d.events("fan-out request to server failed")
                .iter()
                .any(|v| v["error"] == "server stopped reading its requests")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_never_reads_costs_no_memory() {
    never_reading_server("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_never_reads_costs_no_memory_first_word() {
    never_reading_server("first-word").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_closed_after_send_timeout() {
    // One server answering every name with a 60 KB line: the client's and the balancer's
    // socket buffers fill after a few hundred answers.
    let [mut t1, _] = tables(0, [Behaviour::Normal; 2]);
    let big = "x".repeat(60_000);
    t1.suffix = big.clone();
    for i in 0..1_000 {
        t1.known.insert(format!("n{i}"), String::new());
    }
    let (a, _, _ta) = t1.start();
    let d = Daemon::run_config(&config(&[a], "2s", "", "send_timeout = \"1s\""));
    let front = d.addr("names");
    let mut s = TcpStream::connect(front).await.unwrap();
    let t = Instant::now();
    // Write requests and never read: once everything is full the balancer stops reading us
    // too; after send_timeout without progress it closes (with a reset), and a write fails.
    let batch: String = (0..1_000).map(|i| format!("n{i}\n")).collect();
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            s.write_all(batch.as_bytes()).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    })
    .await;
    let took = t.elapsed();
    match r {
        Ok(Err(e)) => eprintln!("client closed after {took:?}: {e}"),
        other => panic!("client not closed: {other:?} after {took:?}"),
    }
    assert!(took >= Duration::from_secs(1), "closed before send_timeout: {took:?}");
    wait_until_async(Duration::from_secs(3), "the send-timeout log line", || {
        d.count("fan-out client does not read its answers: closing it") == 1
    })
    .await;
    // The frontend still serves others.
    let got = ask_pipelined(front, &["n1".to_string()], 1, Duration::from_secs(5)).await;
    assert_eq!(got, vec![format!("n1 {big}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_line_when_on_timeout_is_unset() {
    let [t1, t2] = tables(100, [Behaviour::Normal; 2]);
    let (a, _, _ta) = t1.start();
    let (b, _, _tb) = t2.start();
    let d = Daemon::run_config(&config(&[a, b], "150ms", "", ""));
    let front = d.addr("names");
    let names: Vec<String> = (0..100).map(query).collect();
    let got = ask_pipelined(front, &names, 16, Duration::from_secs(10)).await;
    let want = |i: usize| if expected(i) == NOT_FOUND { String::new() } else { expected(i) };
    assert_eq!(wrong("no on_timeout", &got, want), 0);
}
