//! End-to-end tests of the demo server (`fulcrum backend`) and the load client (`fulcrum
//! load`), as real processes on ports from the kernel: the backend's line, HTTP and UDP
//! protocols, its service delay, its agent client against a scripted agent port, and the load
//! client through a real `fulcrum forward` and a directory frontend. Every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fulcrum_core::agent::{self, Decoder, Message, Session};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

/// Bound on any single network wait in these tests; generous because a benchmark may share
/// the machine.
const WAIT: Duration = Duration::from_secs(10);

/// `fulcrum backend --listen 127.0.0.1:0 EXTRA...`, with its bound address.
fn backend(extra: &[&str]) -> (Daemon, SocketAddr) {
    let mut args = vec!["backend", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let d = Daemon::spawn(&args);
    let addr = d.addr("backend");
    (d, addr)
}

/// A line connection to a backend: one line out, one line back.
struct Lines {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Lines {
    async fn connect(a: SocketAddr) -> Lines {
        let s = timeout(WAIT, TcpStream::connect(a)).await.unwrap().unwrap();
        let (r, w) = s.into_split();
        Lines { r: BufReader::new(r), w }
    }

    async fn call(&mut self, line: &str) -> String {
        self.w.write_all(line.as_bytes()).await.unwrap();
        let mut out = String::new();
        timeout(WAIT, self.r.read_line(&mut out)).await.expect("answer in time").unwrap();
        out
    }
}

/// Runs `fulcrum ARGS...` to its end (killed and failed after `limit`): status, stdout, stderr.
fn run_cli(args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes in threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fulcrum {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out_t.join().unwrap(), err_t.join().unwrap())
}

/// `fulcrum load ... --json --no-progress`, expected to succeed; its JSON report.
fn load_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["load", "--json", "--no-progress"];
    all.extend_from_slice(args);
    let (st, out, err) = run_cli(&all, Duration::from_secs(120));
    assert!(st.success(), "load failed ({st}): {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Requests per server name in a load report.
fn per_server(report: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    report["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["server"].as_str().unwrap().to_string(), s["requests"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_upper_cases_lines_and_answers_whoami() {
    let (_named, a) = backend(&["--name", "alpha"]);
    let mut c = Lines::connect(a).await;
    assert_eq!(c.call("hello\n").await, "HELLO\n");
    assert_eq!(c.call("WHOAMI\n").await, "alpha\n");
    assert_eq!(c.call("Mixed Case 123\r\n").await, "MIXED CASE 123\r\n");
    assert_eq!(c.call("again\n").await, "AGAIN\n", "many lines on one connection");

    // Without --name, the name is the bound address: what a balancer's pool lists.
    let (_anon, b) = backend(&[]);
    assert_eq!(Lines::connect(b).await.call("WHOAMI\n").await, format!("{b}\n"));

    // A line over the bound closes the connection instead of being buffered.
    let mut s = TcpStream::connect(a).await.unwrap();
    let _ = s.write_all(&vec![b'x'; 64 * 1024]).await;
    let mut buf = [0u8; 16];
    let n = timeout(WAIT, s.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "an overlong line must close the connection: {n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answers_after_its_delay() {
    let delay = Duration::from_millis(300);
    let (_d, a) = backend(&["--delay", "300ms"]);
    let mut c = Lines::connect(a).await;
    for _ in 0..2 {
        let t = Instant::now();
        assert_eq!(c.call("slow\n").await, "SLOW\n");
        assert!(t.elapsed() >= delay, "answered after {:?}, before the delay", t.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_udp_echoes_upper_cased_without_serialising_delays() {
    let (_d, a) = backend(&["--protocol", "udp", "--name", "u1", "--delay", "1s"]);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(a).await.unwrap();
    let mut buf = [0u8; 256];

    // WHOAMI is answered at once (no delay); loopback does not drop, but one resend keeps a
    // lost datagram from failing the test.
    let mut name = None;
    for _ in 0..3 {
        sock.send(b"WHOAMI").await.unwrap();
        if let Ok(Ok(n)) = timeout(Duration::from_secs(3), sock.recv(&mut buf)).await {
            name = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
    }
    assert_eq!(name.as_deref(), Some("u1"));

    // Five datagrams with a 1 s delay each: answered in about 1 s, not 5, because each waits
    // in its own task.
    let t = Instant::now();
    for i in 0..5 {
        sock.send(format!("datagram {i}").as_bytes()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let n = timeout(WAIT, sock.recv(&mut buf)).await.expect("answers in time").unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let took = t.elapsed();
    got.sort();
    assert_eq!(got, (0..5).map(|i| format!("DATAGRAM {i}")).collect::<Vec<_>>());
    assert!(took >= Duration::from_secs(1), "answered after {took:?}, before the delay");
    assert!(took < Duration::from_secs(4), "delays were serialised: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_http_keeps_the_connection_and_names_itself() {
    let (_d, a) = backend(&["--protocol", "http", "--name", "web1"]);
    let s = TcpStream::connect(a).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    for req in [
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_string(),
    ] {
        w.write_all(req.as_bytes()).await.unwrap();
        let mut status = String::new();
        timeout(WAIT, r.read_line(&mut status)).await.unwrap().unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK\r\n");
        let mut len = None;
        loop {
            let mut h = String::new();
            timeout(WAIT, r.read_line(&mut h)).await.unwrap().unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = Some(v.trim().parse::<usize>().unwrap());
            }
        }
        let mut body = vec![0u8; len.expect("Content-Length set")];
        timeout(WAIT, r.read_exact(&mut body)).await.unwrap().unwrap();
        assert_eq!(body, b"web1\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_forward_spreads_300_requests_evenly_over_3_backends() {
    let backends: Vec<_> = (0..3).map(|_| backend(&[])).collect();
    let dests: Vec<String> = backends.iter().map(|(_, a)| a.to_string()).collect();
    let mut args = vec!["forward", "--no-access-log", "--workers", "1", "127.0.0.1:0"];
    args.extend(dests.iter().map(String::as_str));
    let lb = Daemon::spawn(&args);
    let front = lb.addr("forward").to_string();

    let report = tokio::task::spawn_blocking(move || {
        load_json(&[&front, "--requests", "300", "--clients", "10"])
    })
    .await
    .unwrap();
    assert_eq!(report["requests"], 300, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let counts = per_server(&report);
    assert_eq!(counts.values().sum::<u64>(), 300, "{report}");
    let expected: std::collections::BTreeMap<String, u64> =
        dests.iter().map(|d| (d.clone(), 100)).collect();
    assert_eq!(counts, expected, "round-robin gives each backend 100: {report}");
    let lat = &report["latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap(), "{report}");
    assert!(lat["p99"].as_f64().unwrap() <= lat["max"].as_f64().unwrap(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_keep_alive_and_udp_straight_at_a_backend() {
    let (_t, tcp) = backend(&["--name", "t"]);
    let (_u, udp) = backend(&["--protocol", "udp", "--name", "u"]);
    let (tcp, udp) = (tcp.to_string(), udp.to_string());
    let (r_tcp, r_udp) = tokio::task::spawn_blocking(move || {
        (
            load_json(&[&tcp, "--requests", "200", "--clients", "4", "--keep-alive"]),
            load_json(&[&udp, "--requests", "100", "--clients", "4", "--protocol", "udp"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(per_server(&r_tcp), [("t".to_string(), 200)].into(), "{r_tcp}");
    assert_eq!(r_tcp["errors"], 0);
    // Loopback does not drop datagrams, but a lost one would be retried, not an error.
    assert_eq!(per_server(&r_udp), [("u".to_string(), 100)].into(), "{r_udp}");
    assert_eq!(r_udp["errors"], 0);
}

#[test]
fn load_exit_codes_unreachable_target_and_usage() {
    let port = closed_port().to_string();
    let (st, _, err) =
        run_cli(&["load", "--no-progress", "--requests", "5", &port], Duration::from_secs(60));
    assert_eq!(st.code(), Some(1), "unreachable target: {err}");
    assert!(err.contains("cannot reach"), "{err}");
    for bad in [
        vec!["load", "127.0.0.1:1", "--clients", "0"],
        vec!["load", "127.0.0.1:1", "--duration", "2h"],
        vec!["load", "127.0.0.1:1", "--message", "two\nlines"],
        vec!["load", "not an address"],
        vec!["backend", "--listen", "127.0.0.1:0", "--agent", "7000"],
    ] {
        let (st, _, err) = run_cli(&bad, Duration::from_secs(30));
        assert_eq!(st.code(), Some(2), "{bad:?} is a usage error: {err}");
    }
}

/// A directory frontend (`PICK` → `ip:port`) in front of 3 backends: the load client asks it,
/// then calls the named server itself, over TCP and over UDP questions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_directory_mode_spreads_picks_evenly() {
    let backends: Vec<_> = (0..3).map(|_| backend(&[])).collect();
    let servers = backends.iter().map(|(_, a)| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let d = Daemon::run_config(&format!(
        r#"
workers = 1

[frontend.dir]
bind = "127.0.0.1:0"
protocol = "directory"
pool = "app"

[frontend.udir]
bind = "127.0.0.1:0"
protocol = "directory-udp"
pool = "app"

[pool.app]
algorithm = "round-robin"
servers = [{servers}]
"#
    ));
    let (dir, udir) = (d.addr("dir").to_string(), d.addr("udir").to_string());
    let (r_tcp, r_udp) = tokio::task::spawn_blocking(move || {
        (
            load_json(&[&dir, "--directory", "--requests", "300", "--clients", "10"]),
            load_json(&[&udir, "--directory", "--protocol", "udp", "--requests", "300"]),
        )
    })
    .await
    .unwrap();
    let expected: std::collections::BTreeMap<String, u64> =
        backends.iter().map(|(_, a)| (a.to_string(), 100)).collect();
    for r in [&r_tcp, &r_udp] {
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["mode"], "directory");
        assert_eq!(per_server(r), expected, "round-robin picks give each server 100: {r}");
    }
}

/// A scripted agent port: sends the challenge, then authenticates what the backend sends.
struct AgentPeer {
    s: TcpStream,
    decoder: Decoder,
    session: Session,
}

impl AgentPeer {
    async fn accept(l: &TcpListener, key: &[u8], nonce: [u8; agent::NONCE_LEN]) -> AgentPeer {
        let (mut s, _) = timeout(WAIT, l.accept()).await.expect("backend dials in").unwrap();
        s.write_all(&agent::challenge_bytes(&nonce)).await.unwrap();
        AgentPeer { s, decoder: Decoder::new(), session: Session::new(key, nonce) }
    }

    /// The next authenticated message; `None` when the backend closed.
    async fn next(&mut self) -> Option<Message> {
        let mut buf = vec![0u8; agent::MAX_BUFFER];
        loop {
            if let Some(raw) = self.decoder.next_frame().unwrap() {
                return Some(self.session.open(&raw).expect("a valid frame"));
            }
            let room = self.decoder.room();
            let n = timeout(WAIT, self.s.read(&mut buf[..room])).await.expect("frame in time");
            match n.unwrap() {
                0 => return None,
                n => self.decoder.push(&buf[..n]).unwrap(),
            }
        }
    }

    /// Reads reports until one satisfies `want` (bounded by a count and by each read's wait).
    async fn report_where(&mut self, want: impl Fn(u64, u64) -> bool) {
        for _ in 0..500 {
            match self.next().await {
                Some(Message::Report(r)) if want(r.clients, r.queue) => return,
                Some(Message::Report(_)) => {}
                other => panic!("expected a report, got {other:?}"),
            }
        }
        panic!("no matching report in 500");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_agent_hello_reports_reconnect_and_bye() {
    let key = "test-key-0123456789";
    let (_dir, key_path) = temp_path("agent.key");
    // Surrounding whitespace (an editor's newline) is not part of the key.
    std::fs::write(&key_path, format!("  {key}\n")).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = l.local_addr().unwrap().to_string();
    let (mut b, addr) = backend(&[
        "--agent",
        &agent_addr,
        "--pool",
        "app",
        "--key-file",
        key_path.to_str().unwrap(),
        "--report-interval",
        "50ms",
        "--delay",
        "1s",
    ]);

    let mut peer = AgentPeer::accept(&l, key.as_bytes(), [7; agent::NONCE_LEN]).await;
    match peer.next().await {
        Some(Message::Hello(h)) => {
            assert_eq!(h.pool, "app");
            // Only the port: the balancer takes the IP the agent connection comes from.
            assert_eq!(h.address, format!(":{}", addr.port()), "registers with its bound port");
            assert_eq!(h.version, 1);
        }
        other => panic!("expected HELLO first, got {other:?}"),
    }
    peer.report_where(|clients, queue| clients == 0 && queue == 0).await;

    // One open connection is one client; a line waiting in its 1 s delay is one in the queue.
    let mut c = Lines::connect(addr).await;
    peer.report_where(|clients, _| clients == 1).await;
    c.w.write_all(b"queued\n").await.unwrap();
    peer.report_where(|clients, queue| clients == 1 && queue == 1).await;
    let mut answer = String::new();
    timeout(WAIT, c.r.read_line(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer, "QUEUED\n");
    peer.report_where(|_, queue| queue == 0).await;
    drop(c);
    peer.report_where(|clients, _| clients == 0).await;

    // The balancer refuses with an ERROR frame and closes: the backend logs the reason and
    // comes back with a new connection, a new nonce and HELLO again.
    peer.s.write_all(&agent::encode_error("test says no")).await.unwrap();
    peer.s.shutdown().await.unwrap();
    // Drain until the backend closes its side, so our close is orderly (no reset that could
    // discard the ERROR frame before the backend reads it).
    let mut sink = Vec::new();
    let _ = timeout(WAIT, peer.s.read_to_end(&mut sink)).await.expect("backend closes");
    drop(peer);
    let mut peer = AgentPeer::accept(&l, key.as_bytes(), [9; agent::NONCE_LEN]).await;
    assert!(matches!(peer.next().await, Some(Message::Hello(_))), "HELLO after reconnecting");
    wait_until(WAIT, "the ERROR reason in the log", || {
        b.events("agent error from the balancer").iter().any(|e| e["reason"] == "test says no")
    });
    wait_until(WAIT, "both sessions logged", || b.count("agent connected") >= 2);

    // SIGTERM: BYE on the open session, then exit 0.
    b.signal(rustix::process::Signal::TERM);
    let mut saw_bye = false;
    for _ in 0..500 {
        match peer.next().await {
            Some(Message::Bye) => {
                saw_bye = true;
                break;
            }
            Some(Message::Report(_)) => {}
            other => panic!("expected reports then BYE, got {other:?}"),
        }
    }
    assert!(saw_bye, "BYE before the end");
    let st = tokio::task::block_in_place(|| b.wait_exit(WAIT));
    assert!(st.success(), "backend exits 0 on SIGTERM: {st}");
}
