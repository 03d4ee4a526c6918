//! End-to-end active health checks through the real binary: a server that dies under load is
//! marked down within the configured bound without a single client connection failing, comes
//! back through `rise` checks and slow start, and `http` and `send-expect` checks catch servers
//! that accept connections but answer wrongly, after which they get no client traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Allowance on top of the configured bound: each interval may be 10% longer (jitter), and
/// the daemon, the log pipe and this test share two loaded cores (the log is polled every
/// 10 ms).
const TOLERANCE: Duration = Duration::from_millis(400);

/// The longest a verdict may take once its `n` checks in a row started failing or passing:
/// `n` intervals (with jitter) plus the probe timeout.
fn verdict_bound(n: u32) -> Duration {
    INTERVAL * n + INTERVAL * n / 10 + TIMEOUT + TOLERANCE
}

fn health_section(kind_lines: &str) -> String {
    format!(
        "[pool.app.health]\n{kind_lines}\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {RISE}\nfall = {FALL}\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    )
}

/// `(server key, health)` of every "server health changed" event so far.
fn changes(d: &Daemon) -> Vec<(String, String, String)> {
    d.events("server health changed")
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("server"), s("health"), s("reason"))
        })
        .collect()
}

fn has_change(d: &Daemon, server: SocketAddr, health: &str) -> bool {
    changes(d).iter().any(|(s, h, _)| *s == server.to_string() && h == health)
}

/// A backend that writes its name and a newline on every connection, then echoes; unlike
/// `common::Backend`, [`Named::kill`] returns only once the listening socket is closed, so
/// connects are refused from then on. Connections already accepted are left to finish: a
/// crash that cuts them could not be hidden by any balancer, only new connects can be retried.
struct Named {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Named {
    async fn start(name: &'static str) -> Named {
        Named::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), name)
    }

    /// Listens on `addr` again (the port of a killed backend).
    async fn rebind(addr: SocketAddr, name: &'static str) -> Named {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Named::on(l, name),
                Err(e) => assert!(Instant::now() < end, "cannot bind {addr} again: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn on(l: TcpListener, name: &'static str) -> Named {
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    if w.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
        });
        Named { addr, task }
    }

    /// Stops listening; the returned socket keeps the port bound (not listening, so
    /// connects are refused) until [`Named::revive`], so that no other test running in
    /// parallel gets the port from the kernel and answers in this server's place.
    async fn kill(self) -> socket2::Socket {
        self.task.abort();
        // An aborted task's future, and with it the listener, is dropped before the join
        // handle resolves.
        let _ = self.task.await;
        // With SO_REUSEADDR a bind conflicts only with a listening socket, so it cannot
        // collide with the closed listener or the connections it accepted.
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&self.addr.into()).unwrap_or_else(|e| panic!("cannot hold {}: {e}", self.addr));
        s
    }

    /// Listens again on the port a [`Named::kill`] kept. The listener (SO_REUSEADDR too)
    /// binds beside the placeholder, which goes only then: the port is never free.
    async fn revive(placeholder: socket2::Socket, name: &'static str) -> Named {
        let addr = placeholder.local_addr().unwrap().as_socket().unwrap();
        let named = Named::rebind(addr, name).await;
        drop(placeholder);
        named
    }
}

/// One short client connection through the balancer: read the server's name, check one echo.
async fn one_connection(front: SocketAddr) -> Result<String, String> {
    let go = async {
        let s = TcpStream::connect(front).await.map_err(|e| format!("connect: {e}"))?;
        let mut s = BufReader::new(s);
        let mut name = String::new();
        s.read_line(&mut name).await.map_err(|e| format!("read name: {e}"))?;
        if !name.ends_with('\n') {
            return Err(format!("closed before the server's name (got {name:?})"));
        }
        s.get_mut().write_all(b"ping").await.map_err(|e| format!("write: {e}"))?;
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.map_err(|e| format!("read echo: {e}"))?;
        if &echo != b"ping" {
            return Err(format!("wrong echo {echo:?}"));
        }
        Ok(name.trim_end().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(3), go).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 3 s".into()),
    }
}

/// What the load loop saw: when each connection started and which server answered, or why
/// it failed.
type Record = (Instant, Result<String, String>);

const LOAD_MAX_CONNECTIONS: usize = 3_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(20);
/// Pause between connections: about 250 connections a second on an idle machine, enough for
/// the slow-start window to hold a hundred while 3,000 last over 10 s.
const LOAD_PACE: Duration = Duration::from_millis(2);

/// Sequential connections until `stop`, [`LOAD_MAX_CONNECTIONS`] or [`LOAD_MAX_TIME`]. Each
/// holds `gate` while in flight, so a backend killed under the gate has no client connection
/// half-accepted in its listen queue (closing a listener resets those, which no balancer can
/// retry).
fn start_load(
    front: SocketAddr,
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<Mutex<Vec<Record>>>, JoinHandle<()>) {
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let out = records.clone();
    let task = tokio::spawn(async move {
        let end = Instant::now() + LOAD_MAX_TIME;
        for _ in 0..LOAD_MAX_CONNECTIONS {
            if stop.is_cancelled() || Instant::now() >= end {
                break;
            }
            let r = {
                let _in_flight = gate.lock().await;
                let at = Instant::now();
                (at, one_connection(front).await)
            };
            out.lock().unwrap().push(r);
            tokio::time::sleep(LOAD_PACE).await;
        }
    });
    (records, task)
}

/// Share of connections started in `[from, to)` that `name` served, and how many there were.
fn share(records: &[Record], name: &str, from: Instant, to: Instant) -> (f64, usize) {
    let window: Vec<_> = records.iter().filter(|(t, _)| *t >= from && *t < to).collect();
    let mine = window.iter().filter(|(_, r)| r.as_deref() == Ok(name)).count();
    (mine as f64 / window.len().max(1) as f64, window.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_marked_down_without_failing_a_client_and_ramps_up_on_return() {
    let names = ["a", "b", "c"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Some(Named::start(n).await));
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.as_ref().unwrap().addr).collect();
    let servers = addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    // Passive ejection is off (max_percent = 0) so only the health checks take the dead
    // server out of rotation; until they do, each refused connect is retried on the next.
    let pool = format!(
        "retries = 2\nslow_start = \"2s\"\n\n[pool.app.eject]\nmax_percent = 0\n\n{}",
        health_section("kind = \"tcp\"")
    );
    let toml = format!("access_log = false\n{}", config(2, "round-robin", &servers, &pool));
    let d = Daemon::run_config(&toml);
    let front = d.addr("web");

    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let stop = tokio_util::sync::CancellationToken::new();
    let (records, load) = start_load(front, gate.clone(), stop.clone());
    let served = |name: &str| {
        records.lock().unwrap().iter().filter(|(_, r)| r.as_deref() == Ok(name)).count()
    };

    // Warm up: every server takes traffic, and a few check rounds pass without a verdict.
    wait_until_async(Duration::from_secs(10), "traffic on every server", || {
        names.iter().all(|n| served(n) >= 20)
    })
    .await;
    assert!(changes(&d).is_empty(), "healthy servers changed health: {:?}", changes(&d));

    // Kill "b" between two client connections.
    let victim = addrs[1];
    let (held, killed_at) = {
        let _no_client_in_flight = gate.lock().await;
        let held = backends[1].take().unwrap().kill().await;
        (held, Instant::now())
    };
    let down_bound = verdict_bound(FALL);
    wait_until_async(down_bound + Duration::from_secs(5), "the killed server marked down", || {
        has_change(&d, victim, "down")
    })
    .await;
    let down_after = killed_at.elapsed();
    assert!(down_after <= down_bound, "marked down after {down_after:?}, bound {down_bound:?}");
    let (_, _, reason) =
        changes(&d).into_iter().find(|(s, h, _)| *s == victim.to_string() && h == "down").unwrap();
    assert_eq!(reason, "connect refused");

    // Some load while it is down, then bring it back on the same port.
    let down_seen = Instant::now();
    wait_until_async(Duration::from_secs(10), "load while the server is down", || {
        records.lock().unwrap().iter().filter(|(t, _)| *t > down_seen).count() >= 30
    })
    .await;
    backends[1] = Some(Named::revive(held, "b").await);
    let back_at = Instant::now();
    let up_bound = verdict_bound(RISE);
    wait_until_async(up_bound + Duration::from_secs(5), "the server marked up again", || {
        has_change(&d, victim, "up")
    })
    .await;
    let up_seen = Instant::now();
    let up_after = back_at.elapsed();
    assert!(up_after <= up_bound, "marked up after {up_after:?}, bound {up_bound:?}");

    // Slow start is 2 s; measure the first 500 ms, then a second once it is over.
    let early_end = up_seen + Duration::from_millis(500);
    let steady = (up_seen + Duration::from_millis(2_200), up_seen + Duration::from_millis(3_200));
    while Instant::now() < steady.1 && !load.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    load.await.unwrap();

    let records = records.lock().unwrap();
    let failed: Vec<_> = records.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} client connections failed, first: {:?}",
        failed.len(),
        records.len(),
        failed.first()
    );
    let even = 1.0 / names.len() as f64;
    let (early_share, early_n) = share(&records, "b", up_seen, early_end);
    assert!(early_n >= 20, "only {early_n} connections in the slow-start window: load too slow");
    assert!(
        early_share < even / 3.0,
        "share of the returning server in its first 500 ms: {early_share:.3} of {early_n}, \
         expected below {:.3}",
        even / 3.0
    );
    let (steady_share, steady_n) = share(&records, "b", steady.0, steady.1);
    eprintln!(
        "down after {down_after:?}, up after {up_after:?}; {} connections; share of b: \
         {early_share:.3} of {early_n} in slow start, {steady_share:.3} of {steady_n} after",
        records.len()
    );
    assert!(steady_n >= 20, "only {steady_n} connections after slow start: load too slow");
    assert!(
        (even * 0.75..=even * 1.25).contains(&steady_share),
        "share after slow start: {steady_share:.3} of {steady_n}, expected about {even:.3}"
    );
    // Nothing else changed: one down and one up, for the killed server only.
    let all = changes(&d);
    assert_eq!(all.len(), 2, "health changes: {all:?}");
    assert!(all.iter().all(|(s, _, _)| *s == victim.to_string()), "health changes: {all:?}");
}

/// What a scripted backend answers to a health probe; client traffic gets its name, then an
/// echo, whatever the script.
#[derive(Clone, Copy)]
struct Script {
    name: &'static str,
    /// Answer to `GET ...`: status and body.
    http: (u16, &'static str),
    /// Answer to `PING`.
    pong: &'static str,
}

async fn scripted(script: Script) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            tokio::spawn(serve_script(s, script));
        }
    });
    (addr, task)
}

async fn serve_script(s: TcpStream, script: Script) {
    let mut s = BufReader::new(s);
    let mut first = Vec::new();
    // A probe that never writes (tcp) or a client that sends nothing must not hold us.
    let mut limited = (&mut s).take(1024);
    let read = limited.read_until(b'\n', &mut first);
    if tokio::time::timeout(Duration::from_secs(2), read).await.is_err() {
        return;
    }
    if first.starts_with(b"GET ") {
        // Read the rest of the head: closing with unread bytes would reset the connection.
        let mut line = Vec::new();
        while line != b"\r\n" && first.len() < 8192 {
            line.clear();
            match (&mut s).take(1024).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => first.extend_from_slice(&line),
            }
        }
        let (status, body) = script.http;
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.get_mut().write_all(answer.as_bytes()).await;
    } else if first.starts_with(b"PING") {
        let _ = s.get_mut().write_all(script.pong.as_bytes()).await;
    } else {
        let (mut r, mut w) = s.into_inner().into_split();
        if w.write_all(format!("{}\n", script.name).as_bytes()).await.is_ok() {
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
        return;
    }
    let _ = s.get_mut().shutdown().await;
}

/// Client traffic for a scripted backend: send a line first (so it knows this is no probe).
async fn ask(front: SocketAddr) -> Result<String, String> {
    let go = async {
        let s = TcpStream::connect(front).await.map_err(|e| format!("connect: {e}"))?;
        let mut s = BufReader::new(s);
        s.get_mut().write_all(b"hello\n").await.map_err(|e| format!("write: {e}"))?;
        let mut name = String::new();
        s.read_line(&mut name).await.map_err(|e| format!("read: {e}"))?;
        if !name.ends_with('\n') {
            return Err(format!("closed before the server's name (got {name:?})"));
        }
        Ok(name.trim_end().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(3), go).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 3 s".into()),
    }
}

/// Starts the scripted backends behind one pool checked by `kind_lines`, waits until every
/// server in `sick` is marked down (with a reason starting with the paired text), then checks
/// that the next connections all go to the healthy servers and no healthy one was marked down.
async fn sick_servers_are_marked_down_and_skipped(
    scripts: &[Script],
    kind_lines: &str,
    sick: &[(&str, &str)],
) {
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for s in scripts {
        let (a, t) = scripted(*s).await;
        addrs.push(a);
        tasks.push(t);
    }
    let servers = addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let toml = format!(
        "access_log = false\n{}",
        config(2, "round-robin", &servers, &health_section(kind_lines))
    );
    let d = Daemon::run_config(&toml);
    let front = d.addr("web");
    let addr_of = |name: &str| addrs[scripts.iter().position(|s| s.name == name).unwrap()];

    let started = Instant::now();
    // A first check right at start, then `fall` failures in a row.
    let bound = verdict_bound(FALL) + INTERVAL;
    for (name, _) in sick {
        let a = addr_of(name);
        wait_until_async(bound + Duration::from_secs(5), &format!("{name} marked down"), || {
            has_change(&d, a, "down")
        })
        .await;
    }
    let took = started.elapsed();
    assert!(took <= bound, "sick servers marked down after {took:?}, bound {bound:?}");
    let all = changes(&d);
    for (name, reason_start) in sick {
        let key = addr_of(name).to_string();
        let (_, _, reason) = all.iter().find(|(s, h, _)| *s == key && h == "down").unwrap();
        assert!(reason.starts_with(reason_start), "{name}: reason {reason:?}");
    }

    let healthy: Vec<&str> =
        scripts.iter().map(|s| s.name).filter(|n| sick.iter().all(|(s, _)| s != n)).collect();
    let mut seen = Vec::new();
    for _ in 0..60 {
        let name = ask(front).await.unwrap();
        assert!(healthy.contains(&name.as_str()), "a client was sent to {name}, marked down");
        seen.push(name);
    }
    for h in &healthy {
        assert!(seen.iter().any(|n| n == h), "{h} got no traffic: {seen:?}");
    }
    // The healthy servers were never marked down, the sick ones never came back.
    let all = changes(&d);
    assert_eq!(all.len(), sick.len(), "health changes: {all:?}");
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_catches_status_500_and_a_wrong_body() {
    let scripts = [
        Script { name: "good", http: (200, "all ok"), pong: "" },
        Script { name: "error", http: (500, "ok"), pong: "" },
        Script { name: "starting", http: (200, "warming up"), pong: "" },
    ];
    let kind =
        "kind = \"http\"\npath = \"/health\"\nexpect_status = \"200-399\"\nexpect_body = \"ok\"";
    sick_servers_are_marked_down_and_skipped(
        &scripts,
        kind,
        &[("error", "status 500 not in 200-399"), ("starting", "body does not contain \"ok\"")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_expect_check_catches_a_wrong_answer() {
    let scripts = [
        Script { name: "good", http: (200, ""), pong: "+PONG\r\n" },
        Script { name: "good2", http: (200, ""), pong: "+PONG and more\r\n" },
        Script { name: "confused", http: (200, ""), pong: "-ERR unknown command\r\n" },
    ];
    let kind = "kind = \"send-expect\"\nsend = \"PING\\r\\n\"\nexpect = \"+PONG\"";
    sick_servers_are_marked_down_and_skipped(
        &scripts,
        kind,
        &[("confused", "answer does not start with \"+PONG\"")],
    )
    .await;
}
