//! UDP frontends end to end, through the real binary: real DNS servers (dnsmasq) behind the
//! balancer answering `dig` and a 10,000-query burst spread by round robin over sessions with
//! none lost; a killed server marked down by UDP health checks and a drained one, both
//! getting no new sessions while existing sessions keep working until idle; and the session
//! limit and idle expiry. Needs `dnsmasq` (Debian `dnsmasq-base`) and `dig`
//! (`bind9-dnsutils`); `.ci/run` installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
const TOKEN: &str = "udp-test-token";

// ---------------------------------------------------------------------------------------
// DNS on the wire: just enough to build queries and read A and TXT answers.

const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;

/// A standard query (recursion desired) for `name` of type `qtype`, class IN.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // flags: RD
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    q
}

#[derive(Debug)]
struct DnsAnswer {
    id: u16,
    rcode: u8,
    /// (type, rdata) of each answer record.
    records: Vec<(u16, Vec<u8>)>,
}

fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *b.get(pos)?;
        if len == 0 {
            return Some(pos + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(pos + 2); // compression pointer ends the name
        }
        pos += 1 + usize::from(len);
    }
}

fn be16(b: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(pos)?, *b.get(pos + 1)?]))
}

fn parse_dns(b: &[u8]) -> Option<DnsAnswer> {
    let id = be16(b, 0)?;
    let rcode = b.get(3)? & 0x0f;
    let (qd, an) = (be16(b, 4)?, be16(b, 6)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(b, pos)? + 4;
    }
    let mut records = Vec::new();
    for _ in 0..an {
        pos = skip_name(b, pos)?;
        let rtype = be16(b, pos)?;
        let rdlen = usize::from(be16(b, pos + 8)?);
        let rdata = b.get(pos + 10..pos + 10 + rdlen)?.to_vec();
        records.push((rtype, rdata));
        pos += 10 + rdlen;
    }
    Some(DnsAnswer { id, rcode, records })
}

/// The IPv4 address of the first A record.
fn a_record(a: &DnsAnswer) -> Option<String> {
    a.records
        .iter()
        .find(|(t, d)| *t == TYPE_A && d.len() == 4)
        .map(|(_, d)| format!("{}.{}.{}.{}", d[0], d[1], d[2], d[3]))
}

/// The first string of the first TXT record.
fn txt_record(a: &DnsAnswer) -> Option<String> {
    let (_, d) = a.records.iter().find(|(t, _)| *t == TYPE_TXT)?;
    let len = usize::from(*d.first()?);
    Some(String::from_utf8_lossy(d.get(1..1 + len)?).into_owned())
}

// ---------------------------------------------------------------------------------------
// dnsmasq: a real DNS server per instance, on a port from the kernel.

/// One dnsmasq in the foreground answering `www.test.example A 10.0.0.1` and
/// `backend.test.example TXT "<its port>"` locally (no upstream, no cache); killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts one on a free port, retrying on another port when the one the kernel offered
    /// is taken by the time dnsmasq binds it (UDP or TCP: dnsmasq listens on both).
    fn start() -> Dnsmasq {
        assert!(
            std::path::Path::new(DNSMASQ).exists(),
            "{DNSMASQ} is missing: apt-get install dnsmasq-base (.ci/run does)"
        );
        for _ in 0..20 {
            let port = free_tcp_and_udp_port();
            let dir = tempfile::tempdir().unwrap();
            let args = [
                "--keep-in-foreground".to_string(),
                "--conf-file=/dev/null".into(),
                "--no-resolv".into(),
                "--no-hosts".into(),
                "--listen-address=127.0.0.1".into(),
                "--bind-interfaces".into(),
                format!("--port={port}"),
                "--cache-size=0".into(),
                "--host-record=www.test.example,10.0.0.1".into(),
                format!("--txt-record=backend.test.example,{port}"),
                format!("--pid-file={}", dir.path().join("dnsmasq.pid").display()),
                format!("--log-facility={}", dir.path().join("dnsmasq.log").display()),
            ];
            let mut child = Command::new(DNSMASQ)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // most likely the port was taken meanwhile: try another
                }
                if ask_txt_blocking(SocketAddr::from(([127, 0, 0, 1], port)))
                    == Some(port.to_string())
                {
                    return Dnsmasq { child, port, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(10));
                if Instant::now() > end {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("dnsmasq.log"));
                    panic!("dnsmasq on port {port} did not answer within 10 s: {log:?}");
                }
            }
        }
        panic!("dnsmasq did not start on any of 20 ports");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `TXT backend.test.example` asked of `server` once (100 ms to answer).
fn ask_txt_blocking(server: SocketAddr) -> Option<String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    s.send_to(&dns_query(7, "backend.test.example", TYPE_TXT), server).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    let a = parse_dns(buf.get(..n)?)?;
    if a.id != 7 {
        return None;
    }
    txt_record(&a)
}

/// `dig @front www.test.example [TYPE] +short` through the balancer.
fn dig(front: SocketAddr, name: &str, qtype: &str) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", front.ip()))
        .args([
            "-p",
            front.port().to_string().as_str(),
            name,
            qtype,
            "+short",
            "+tries=3",
            "+time=2",
        ])
        .output()
        .expect("dig is missing: apt-get install bind9-dnsutils (.ci/run does)");
    assert!(out.status.success(), "dig failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------
// Clients and echo servers.

/// A client socket on 127.0.0.1 with a 4 MiB receive buffer (the default ~200 KiB drops
/// bursts: each small datagram costs ~1 KiB of it), connected to `to`.
async fn client(to: SocketAddr) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let u = UdpSocket::from_std(s.into()).unwrap();
    u.connect(to).await.unwrap();
    u
}

/// A UDP server answering every datagram with `ok <name> <datagram>`.
struct Echo {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Echo {
    async fn start(name: &'static str) -> Echo {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let (tx, mut rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                tokio::select! {
                    r = s.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { continue };
                        let mut reply = format!("ok {name} ").into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = s.send_to(&reply, from).await;
                    }
                    _ = &mut rx => return, // drops the socket: its port answers ICMP refused
                }
            }
        });
        Echo { addr, stop: Some(tx), task: Some(task) }
    }

    /// Stops the server; returns once its socket is closed.
    async fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Sends `msg` and waits up to `wait` for the answer; the answering server's name.
async fn ask(u: &UdpSocket, msg: &str, wait: Duration) -> Option<String> {
    u.send(msg.as_bytes()).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(wait, u.recv(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let rest = text.strip_prefix("ok ")?;
    let (name, echoed) = rest.split_once(' ')?;
    assert_eq!(echoed, msg, "answer to another datagram: {text}");
    Some(name.to_string())
}

fn access_lines(d: &Daemon, frontend: &str) -> Vec<Value> {
    d.log
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["target"] == "fulcrum::access" && v["frontend"] == frontend)
        .cloned()
        .collect()
}

fn call(method: &str, url: &str, body: Value) -> (u16, Value) {
    tokio::task::block_in_place(|| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let auth = format!("Bearer {TOKEN}");
        let mut r = match method {
            "PATCH" => agent
                .patch(url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            _ => agent.get(url).header("Authorization", &auth).call(),
        }
        .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    })
}

// ---------------------------------------------------------------------------------------

/// (a) Three dnsmasq servers behind a round-robin UDP frontend: `dig` gets the right
/// answers, sessions go round the three in turn, and a burst of 10,000 queries from 30 client
/// sockets (at most 90 in flight, on loopback) is answered in full, every client by the
/// server of its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_through_the_balancer_round_robin_over_three_dnsmasq_and_no_query_lost() {
    let servers: Vec<Dnsmasq> =
        tokio::task::block_in_place(|| (0..3).map(|_| Dnsmasq::start()).collect());
    let list = servers.iter().map(|s| format!("\"{}\"", s.addr())).collect::<Vec<_>>().join(", ");
    let d = Daemon::run_config(&format!(
        r#"
workers = 2
[frontend.dns]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "dns"

[pool.dns]
algorithm = "round-robin"
servers = [{list}]
"#
    ));
    let front = d.addr("dns");
    let ports: Vec<String> = servers.iter().map(|s| s.port.to_string()).collect();

    // The real client tool.
    let (a, txt) = tokio::task::block_in_place(|| {
        (dig(front, "www.test.example", "A"), dig(front, "backend.test.example", "TXT"))
    });
    assert_eq!(a, "10.0.0.1");
    let txt = txt.trim_matches('"').to_string();
    assert!(ports.contains(&txt), "TXT {txt} names none of {ports:?}");

    // 30 client sockets, one session each, started one after the other: round robin hands
    // them out in turn, so the servers repeat with period 3 and each gets exactly 10.
    const CLIENTS: usize = 30;
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut server_of = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let u = client(front).await;
        u.send(&dns_query(i as u16, "backend.test.example", TYPE_TXT)).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), u.recv(&mut buf))
            .await
            .expect("warm-up answer")
            .unwrap();
        let ans = parse_dns(&buf[..n]).unwrap();
        assert_eq!((ans.id, ans.rcode), (i as u16, 0));
        let port = txt_record(&ans).unwrap();
        assert!(ports.contains(&port), "{port}");
        server_of.push(port);
        clients.push(u);
    }
    assert!(server_of.windows(4).all(|w| w[0] == w[3]), "round robin over sessions: {server_of:?}");
    let mut sessions: HashMap<&str, usize> = HashMap::new();
    for p in &server_of {
        *sessions.entry(p.as_str()).or_default() += 1;
    }
    assert_eq!(sessions.len(), 3, "{server_of:?}");
    assert!(sessions.values().all(|&n| n == CLIENTS / 3), "{sessions:?}");

    // The burst: 10,000 queries, A and TXT alternating, client i sending queries i, i+30, ...
    // Each client keeps at most 3 in flight (90 in all); a query unanswered for 5 s is lost.
    const QUERIES: usize = 10_000;
    const WINDOW: usize = 3;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, u) in clients.into_iter().enumerate() {
        let quota = (QUERIES - i).div_ceil(CLIENTS);
        let expected = server_of[i].clone();
        tasks.push(tokio::spawn(async move {
            let mut outstanding: HashMap<u16, u16> = HashMap::new(); // id -> qtype
            let (mut sent, mut answered) = (0usize, 0usize);
            let mut buf = [0u8; 512];
            while answered < quota {
                while outstanding.len() < WINDOW && sent < quota {
                    let id = (sent % 65_536) as u16;
                    let (name, qtype) = if sent % 2 == 0 {
                        ("www.test.example", TYPE_A)
                    } else {
                        ("backend.test.example", TYPE_TXT)
                    };
                    u.send(&dns_query(id, name, qtype)).await.unwrap();
                    outstanding.insert(id, qtype);
                    sent += 1;
                }
                let n = match tokio::time::timeout(Duration::from_secs(5), u.recv(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => {
                        return Err(format!(
                            "client {i}: {answered} of {quota} answered, then a query was lost"
                        ));
                    }
                };
                let ans = parse_dns(&buf[..n]).ok_or("unparsable answer")?;
                let qtype = outstanding.remove(&ans.id).ok_or("answer to no outstanding query")?;
                assert_eq!(ans.rcode, 0);
                if qtype == TYPE_A {
                    assert_eq!(a_record(&ans).as_deref(), Some("10.0.0.1"));
                } else {
                    // Every answer of a session comes from the session's server.
                    assert_eq!(txt_record(&ans).as_deref(), Some(expected.as_str()), "client {i}");
                }
                answered += 1;
            }
            Ok::<(String, usize), String>((expected, answered))
        }));
    }
    let mut per_server: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for t in tasks {
        let (server, n) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("burst finished")
            .unwrap()
            .unwrap();
        *per_server.entry(server).or_default() += n;
        total += n;
    }
    assert_eq!(total, QUERIES, "every query answered");
    // Each server answered exactly the queries of its 10 clients.
    let mut want: HashMap<String, usize> = HashMap::new();
    for (i, p) in server_of.iter().enumerate() {
        *want.entry(p.clone()).or_default() += (QUERIES - i).div_ceil(CLIENTS);
    }
    assert_eq!(per_server, want);
    eprintln!("10,000 DNS queries through the balancer in {:?}", started.elapsed());
    drop(servers);
}

/// (b) A killed server is marked down by the UDP send/expect health check and gets no new
/// sessions (and its existing sessions move on at their next datagram after the refusal); a
/// drained server gets no new sessions while its existing session keeps working until idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_drained_servers_get_no_new_sessions_existing_ones_work_until_idle() {
    let mut s1 = Echo::start("s1").await;
    let s2 = Echo::start("s2").await;
    let s3 = Echo::start("s3").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let d = Daemon::run_config(&format!(
        r#"
workers = 2
[admin]
bind = "127.0.0.1:0"
token_file = "{}"

[frontend.udp]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "app"
session_timeout = "1s"

[pool.app]
servers = ["{}", "{}", "{}"]

[pool.app.health]
kind = "send-expect"
transport = "udp"
send = "ping"
expect = "ok "
interval = "50ms"
timeout = "200ms"
rise = 2
fall = 2
"#,
        token_file.display(),
        s1.addr,
        s2.addr,
        s3.addr
    ));
    let front = d.addr("udp");
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let wait = Duration::from_secs(2);

    // Six sessions, two per server.
    let mut first = Vec::new();
    for _ in 0..6 {
        let u = client(front).await;
        let name = ask(&u, "hello", wait).await.expect("answered");
        first.push((u, name));
    }
    for n in ["s1", "s2", "s3"] {
        assert_eq!(first.iter().filter(|(_, s)| s == n).count(), 2, "{n}");
    }

    // Kill s1: the health check marks it down, and new sessions go elsewhere.
    s1.kill().await;
    let key = s1.addr.to_string();
    wait_until_async(Duration::from_secs(10), "s1 marked down", || {
        d.events("server health changed")
            .iter()
            .any(|v| v["server"] == key.as_str() && v["health"] == "down")
    })
    .await;
    // A session of the killed server: its next datagram meets the refusal (and is lost, as
    // it would be without a balancer); the one after starts a new session elsewhere. (If the
    // session idled out meanwhile, the first one already does.)
    let (old, _) = first.iter().find(|(_, s)| s == "s1").unwrap();
    let mut moved = None;
    for i in 0..5 {
        if let Some(name) = ask(old, &format!("again {i}"), Duration::from_millis(500)).await {
            moved = Some(name);
            break;
        }
    }
    let moved = moved.expect("the client of the killed server is answered again");
    assert_ne!(moved, "s1");
    let mut on_s2 = None;
    for i in 0..12 {
        let u = client(front).await;
        let name = ask(&u, &format!("new {i}"), wait).await.expect("a new session is answered");
        assert_ne!(name, "s1", "a new session went to the down server");
        if name == "s2" && on_s2.is_none() {
            on_s2 = Some(u);
        }
    }
    let c2 = on_s2.expect("a session on s2");

    // Drain s2 through the admin API: no new sessions to it; c2's session keeps working.
    let (st, v) = call(
        "PATCH",
        &format!("{api}/api/v1/pools/app/servers/{}", s2.addr),
        json!({ "state": "drain" }),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(ask(&c2, "still there", wait).await.as_deref(), Some("s2"));
    for i in 0..9 {
        let u = client(front).await;
        let name = ask(&u, &format!("after drain {i}"), wait).await.expect("answered");
        assert_eq!(name, "s3", "s1 is down and s2 drained");
        if i % 3 == 0 {
            assert_eq!(ask(&c2, "keep", wait).await.as_deref(), Some("s2"), "existing session");
        }
    }
    // Idle past session_timeout: c2's session ends, and its next datagram gets a new one,
    // which the drained server does not get.
    let c2_addr = c2.local_addr().unwrap().to_string();
    wait_until_async(Duration::from_secs(10), "c2's session to end idle", || {
        access_lines(&d, "udp").iter().any(|v| {
            v["client"] == c2_addr.as_str()
                && v["outcome"] == "idle-timeout"
                && v["server"] == s2.addr.to_string().as_str()
        })
    })
    .await;
    assert_eq!(ask(&c2, "back", wait).await.as_deref(), Some("s3"));
    drop((s2, s3));
}

/// (c) `max_sessions = 5`: five clients are served, a sixth is refused (dropped, counted and
/// logged) while the five keep working; once they have been idle for `session_timeout`,
/// their slots are free and new clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_and_idle_expiry() {
    let bs = [Echo::start("a").await, Echo::start("b").await, Echo::start("c").await];
    let d = Daemon::run_config(&format!(
        r#"
workers = 2
[frontend.udp]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "app"
session_timeout = "800ms"
max_sessions = 5

[pool.app]
servers = ["{}", "{}", "{}"]
"#,
        bs[0].addr, bs[1].addr, bs[2].addr
    ));
    let front = d.addr("udp");
    let wait = Duration::from_secs(2);
    let mut five = Vec::new();
    for i in 0..5 {
        let u = client(front).await;
        let name = ask(&u, &format!("first {i}"), wait).await.expect("one of five is served");
        five.push((u, name));
    }
    let sixth = client(front).await;
    let mut last_traffic = Instant::now();
    for round in 0..3 {
        sixth.send(b"let me in").await.unwrap();
        // The five keep their sessions (and servers) meanwhile.
        for (u, name) in &five {
            assert_eq!(ask(u, &format!("round {round}"), wait).await.as_ref(), Some(name));
        }
        last_traffic = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut buf = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sixth.recv(&mut buf)).await.is_err(),
        "the sixth client got an answer past max_sessions"
    );
    let refusal =
        d.find("udp session limit reached: datagram dropped").expect("the refusal is logged");
    assert_eq!(refusal["max_sessions"], 5);
    assert_eq!(refusal["limit"], "max_sessions");

    // Idle: the five sessions end after session_timeout (each logged as idle-timeout), not
    // before (a little slack for the answer's way back to this test).
    wait_until_async(Duration::from_secs(10), "five idle sessions to end", || {
        access_lines(&d, "udp").iter().filter(|v| v["outcome"] == "idle-timeout").count() >= 5
    })
    .await;
    let idle = last_traffic.elapsed();
    assert!(idle >= Duration::from_millis(750), "sessions ended after {idle:?} idle");
    // Slots free: the refused client, one of the five (on a new session) and three new ones.
    assert!(ask(&sixth, "now", wait).await.is_some(), "the sixth client is served now");
    assert!(ask(&five[0].0, "again", wait).await.is_some());
    for i in 0..3 {
        let u = client(front).await;
        assert!(ask(&u, &format!("new {i}"), wait).await.is_some(), "new client {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_based_algorithms_keep_a_client_on_its_server_across_sessions() {
    let bs = [Echo::start("a").await, Echo::start("b").await, Echo::start("c").await];
    let servers = format!("\"{}\", \"{}\", \"{}\"", bs[0].addr, bs[1].addr, bs[2].addr);
    let d = Daemon::run_config(&format!(
        "workers = 2\n[frontend.h]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\npool = \"hashed\"\nsession_timeout = \"200ms\"\n\
         [frontend.r]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\npool = \"rotating\"\nsession_timeout = \"200ms\"\n\
         [pool.hashed]\nalgorithm = \"maglev\"\nservers = [{servers}]\n[pool.rotating]\nservers = [{servers}]\n"
    ));
    let wait = Duration::from_secs(2);
    // Six sessions one after another from the same client IP (new source ports, each session
    // idling out before the next): maglev keeps them on one server, round-robin rotates.
    let mut hashed = Vec::new();
    let mut rotating = Vec::new();
    for i in 0..6 {
        for (front, out) in [(d.addr("h"), &mut hashed), (d.addr("r"), &mut rotating)] {
            let u = client(front).await;
            out.push(ask(&u, &format!("session {i}"), wait).await.expect("answered"));
        }
        let want = 2 * (i + 1);
        wait_until_async(Duration::from_secs(5), "the sessions to idle out", || {
            let lines = access_lines(&d, "h").len() + access_lines(&d, "r").len();
            lines >= want
        })
        .await;
    }
    assert!(hashed.iter().all(|n| n == &hashed[0]), "maglev moved a client: {hashed:?}");
    let distinct: std::collections::HashSet<_> = rotating.iter().collect();
    assert_eq!(distinct.len(), 3, "round-robin should rotate sessions: {rotating:?}");
}

/// DNS over both transports on one address: a `tcp` and a `udp` frontend with the same
/// `bind` in front of a real dnsmasq; `dig +tcp` and `dig` through that address both answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_tcp_and_udp_on_one_port() {
    let server = tokio::task::block_in_place(Dnsmasq::start);
    let (d, port) = run_on_shared_port(|port| {
        format!(
            r#"
[frontend.dns_tcp]
bind = "127.0.0.1:{port}"
protocol = "tcp"
pool = "dns"

[frontend.dns_udp]
bind = "127.0.0.1:{port}"
protocol = "udp"
pool = "dns"

[pool.dns]
servers = ["{}"]
"#,
            server.addr()
        )
    });
    assert_eq!(d.addr("dns_tcp").port(), port);
    assert_eq!(d.addr("dns_udp").port(), port);
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let (udp, tcp) = tokio::task::block_in_place(|| {
        let udp = dig(front, "www.test.example", "A");
        let out = Command::new("dig")
            .arg("@127.0.0.1")
            .args(["-p", &port.to_string(), "www.test.example", "A", "+tcp", "+short"])
            .args(["+tries=3", "+time=2"])
            .output()
            .expect("dig");
        (udp, String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(udp, "10.0.0.1", "dig over UDP");
    assert_eq!(tcp, "10.0.0.1", "dig +tcp");
}

/// `sessions = false`: every datagram picks a server. 3,000 datagrams from ONE client socket
/// (a session-keeping frontend would send all of them to one server) spread 1,000 ± 50 per
/// server under round robin, and each answer comes back to the client through the frontend's
/// address with its own request in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sessions_every_datagram_is_balanced() {
    let echoes = [Echo::start("a").await, Echo::start("b").await, Echo::start("c").await];
    let list = echoes.iter().map(|e| format!("\"{}\"", e.addr)).collect::<Vec<_>>().join(", ");
    let d = Daemon::run_config(&format!(
        r#"
workers = 2
[frontend.q]
bind = "127.0.0.1:0"
protocol = "udp"
sessions = false
session_timeout = "2s"
pool = "app"

[pool.app]
algorithm = "round-robin"
servers = [{list}]
"#
    ));
    let front = d.addr("q");
    let u = client(front).await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for i in 0..3_000 {
        // `ask` checks the answer carries this very request.
        let name = ask(&u, &format!("req-{i}"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no answer to datagram {i}"));
        *per.entry(name).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    for (name, n) in &per {
        assert!((950..=1050).contains(n), "server {name} got {n} of 3,000: {per:?}");
    }
}
