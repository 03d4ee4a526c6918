//! Backends that report their own load, end to end: the agent protocol (push) with
//! self-registration and every kind of bad frame, least-load spreading a burst between two
//! reports, directory mode over TCP and UDP, the pull agent, and the scale signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fulcrum_core::agent::{self, Hello, Message, Report};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

const KEY: &str = "a-pre-shared-key-for-tests";

/// A backend's agent session, driven by the test.
struct AgentClient {
    s: TcpStream,
    nonce: [u8; 16],
    seq: u64,
    key: Vec<u8>,
}

impl AgentClient {
    async fn connect(agent: SocketAddr, key: &str) -> AgentClient {
        AgentClient::connect_from("127.0.0.1", agent, key).await
    }

    /// Connects from the loopback address `ip` (127.0.0.0/8 is all ours on Linux).
    async fn connect_from(ip: &str, agent: SocketAddr, key: &str) -> AgentClient {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        let mut s = sock.connect(agent).await.unwrap();
        let mut ch = [0u8; agent::CHALLENGE_LEN];
        s.read_exact(&mut ch).await.unwrap();
        let nonce = agent::parse_challenge(&ch).unwrap();
        AgentClient { s, nonce, seq: 0, key: key.as_bytes().to_vec() }
    }

    async fn send(&mut self, msg: &Message) -> std::io::Result<()> {
        self.seq += 1;
        let f = agent::encode_message(&self.key, &self.nonce, self.seq, msg);
        self.s.write_all(&f).await
    }

    async fn hello(&mut self, pool: &str, address: SocketAddr) {
        self.hello_as(pool, &address.to_string()).await;
    }

    /// HELLO with `address` exactly as given (`:port` included).
    async fn hello_as(&mut self, pool: &str, address: &str) {
        let h = Hello { pool: pool.into(), address: address.into(), version: 1 };
        self.send(&Message::Hello(h)).await.unwrap();
    }

    async fn report(&mut self, clients: u64, queue: u64) {
        let r = Report { clients, queue, weight: None, state: None };
        self.send(&Message::Report(r)).await.unwrap();
    }

    /// Reads until the balancer closes; returns its ERROR frame's reason, if any.
    async fn closed_with(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.s.read_to_end(&mut buf))
            .await
            .expect("closed");
        agent::read_error_frame(&buf)
    }
}

struct Setup {
    d: Daemon,
    api: String,
    agent: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start(toml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.key"), format!("{KEY}\n")).unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, toml).unwrap();
    let d = Daemon::spawn(&["run", "--config", path.to_str().unwrap()]);
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let agent =
        d.find("agent listener ready").unwrap()["address"].as_str().unwrap().parse().unwrap();
    Setup { d, api, agent, _dir: dir }
}

fn toml(pool_extra: &str, servers: &str, frontends: &str, agent_extra: &str) -> String {
    format!(
        r#"
workers = 2
[agent]
bind = "127.0.0.1:0"
key_file = "agent.key"
{agent_extra}

[admin]
bind = "127.0.0.1:0"

[frontend.web]
bind = "127.0.0.1:0"
pool = "app"
{frontends}

[pool.app]
servers = [{servers}]
connect_timeout = "1s"
{pool_extra}
"#
    )
}

/// Each backend says hello and reports `loads` clients; returns once every report is visible.
async fn report_all(s: &Setup, bs: &[Backend], loads: [u64; 3]) -> Vec<AgentClient> {
    let mut clients = Vec::new();
    for (b, load) in bs.iter().zip(loads) {
        let mut c = AgentClient::connect(s.agent, KEY).await;
        c.hello("app", b.addr).await;
        c.report(load, 0).await;
        clients.push(c);
    }
    wait_until_async(Duration::from_secs(5), "every report", || {
        let v = get(&format!("{}/api/v1/pools", s.api));
        v["pools"][0]["servers"].as_array().unwrap().iter().all(|x| x["reported"].is_object())
    })
    .await;
    clients
}

fn addrs(s: &Setup) -> Vec<String> {
    let v = get(&format!("{}/api/v1/pools", s.api));
    v["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_registered_backend_joins_and_leaves_with_its_session() {
    let fixed = Backend::start(Mode::Named("fixed")).await;
    let joiner = Backend::start(Mode::Named("joiner")).await;
    let s = start(&toml(
        "algorithm = \"least-load\"\nself_register = true",
        &format!("\"{}\"", fixed.addr),
        "",
        "report_interval = \"200ms\"\nmissed_reports = 3",
    ));
    let mut c = AgentClient::connect(s.agent, KEY).await;
    let t = Instant::now();
    c.hello("app", joiner.addr).await;
    c.report(0, 0).await;
    wait_until_async(Duration::from_secs(2), "the backend to appear", || {
        addrs(&s).contains(&joiner.addr.to_string())
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "appeared after {:?} (interval 200ms)",
        t.elapsed()
    );
    // It takes traffic (it reports 0 clients; the fixed one has no report and no connections,
    // so both are candidates).
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(ask_name(s.d.addr("web")).await.unwrap());
    }
    assert!(names.iter().any(|n| n == "joiner"), "{names:?}");
    // Killed without a word: it stops reporting; it leaves within missed_reports × interval.
    let t = Instant::now();
    std::mem::forget(c); // keep the socket open but silent, like a hung process
    wait_until_async(Duration::from_secs(3), "the backend to leave", || {
        !addrs(&s).contains(&joiner.addr.to_string())
    })
    .await;
    let took = t.elapsed();
    assert!(took < Duration::from_millis(600 + 400), "left after {took:?} (timeout 600ms)");
    let before = joiner.accepts();
    for _ in 0..20 {
        assert_eq!(ask_name(s.d.addr("web")).await.unwrap(), "fixed");
    }
    assert_eq!(joiner.accepts(), before, "traffic went to a backend that left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_load_spreads_thirty_arrivals_between_reports() {
    let bs = [
        Backend::start(Mode::Named("a")).await,
        Backend::start(Mode::Named("b")).await,
        Backend::start(Mode::Named("c")).await,
    ];
    let servers = bs.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ");
    // Reports every 10 s at most: the 30 clients arrive within one interval.
    let s = start(&toml("algorithm = \"least-load\"", &servers, "", "report_interval = \"10s\""));
    let _clients = report_all(&s, &bs, [0, 5, 10]).await;
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut st = TcpStream::connect(s.d.addr("web")).await.unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(&mut st);
        r.read_line(&mut line).await.unwrap();
        held.push(st);
    }
    let finals: Vec<u64> = bs.iter().zip([0u64, 5, 10]).map(|(b, l)| l + b.accepts()).collect();
    let spread = finals.iter().max().unwrap() - finals.iter().min().unwrap();
    assert!(spread <= 2, "final counts {finals:?}");
    assert_eq!(bs.iter().map(|b| b.accepts()).sum::<u64>(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_rejected_counted_and_the_daemon_goes_on() {
    let b = Backend::start(Mode::Named("b")).await;
    let s = start(&toml("", &format!("\"{}\"", b.addr), "", ""));
    // Wrong key.
    let mut c = AgentClient::connect(s.agent, "not-the-key-at-all").await;
    c.hello("app", b.addr).await;
    assert!(c.closed_with().await.unwrap().contains("MAC"), "wrong key accepted");
    // Replayed frame: the same HELLO bytes twice.
    let mut c = AgentClient::connect(s.agent, KEY).await;
    let h = Message::Hello(Hello { pool: "app".into(), address: b.addr.to_string(), version: 1 });
    let f = agent::encode_message(KEY.as_bytes(), &c.nonce, 1, &h);
    c.s.write_all(&f).await.unwrap();
    c.s.write_all(&f).await.unwrap();
    assert!(c.closed_with().await.is_some());
    // Oversized length field.
    let mut c = AgentClient::connect(s.agent, KEY).await;
    c.s.write_all(&[0xff, 0xff, 0x10]).await.unwrap();
    assert!(c.closed_with().await.is_some());
    // Garbage (length below the minimum).
    let mut c = AgentClient::connect(s.agent, KEY).await;
    c.s.write_all(&[0x00, 0x03, 1, 2, 3]).await.unwrap();
    assert!(c.closed_with().await.is_some());
    // Truncated: half a frame, then the connection ends.
    let mut c = AgentClient::connect(s.agent, KEY).await;
    let f = agent::encode_message(KEY.as_bytes(), &c.nonce, 1, &h);
    c.s.write_all(&f[..f.len() / 2]).await.unwrap();
    c.s.shutdown().await.unwrap();
    let _ = c.closed_with().await;
    // A server not in the pool (no self_register) cannot register.
    let mut c = AgentClient::connect(s.agent, KEY).await;
    c.hello("app", "127.0.0.1:1".parse().unwrap()).await;
    assert!(c.closed_with().await.unwrap().contains("does not allow self_register"));
    // Every rejection is counted by reason, and the daemon still serves.
    let want = ["bad_mac", "replayed", "oversized", "garbage", "truncated", "bad_payload"];
    let s_ref = &s;
    wait_until_async(Duration::from_secs(5), "all rejections counted", || {
        let m = tokio::task::block_in_place(|| {
            ureq::get(&format!("{}/metrics", s_ref.api))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap()
        });
        want.iter().all(|r| {
            m.lines().any(|l| {
                l.starts_with(&format!("fulcrum_agent_rejected_total{{reason=\"{r}\"}} 1"))
            })
        })
    })
    .await;
    assert_eq!(ask_name(s.d.addr("web")).await.unwrap(), "b");
    // And a good session still works after all that.
    let mut c = AgentClient::connect(s.agent, KEY).await;
    c.hello("app", b.addr).await;
    c.report(4, 2).await;
    wait_until_async(Duration::from_secs(3), "the report", || {
        get(&format!("{}/api/v1/pools", s.api))["pools"][0]["servers"][0]["reported"]["clients"]
            == 4
    })
    .await;
}

/// A backend registers with only its port and gets the IP its agent connection comes from;
/// one key holder cannot speak for a server on another host (here: drain it) unless the pool
/// trusts claimed addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_port_registers_the_peer_ip_and_a_foreign_claim_is_refused() {
    let victim = {
        let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        Backend::on(l, Mode::Named("victim"))
    };
    let joiner = Backend::start(Mode::Named("joiner")).await;
    let s = start(&toml(
        "self_register = true",
        &format!("\"{}\"", victim.addr),
        "",
        "report_interval = \"200ms\"\nmissed_reports = 25",
    ));
    let mut c = AgentClient::connect(s.agent, KEY).await;
    c.hello_as("app", &format!(":{}", joiner.port())).await;
    c.report(0, 0).await;
    wait_until_async(Duration::from_secs(3), "the joiner at its peer IP", || {
        addrs(&s).contains(&joiner.addr.to_string())
    })
    .await;
    // From 127.0.0.1, claiming the victim on 127.0.0.2 to drain it: refused, nothing changes.
    let mut thief = AgentClient::connect(s.agent, KEY).await;
    thief.hello("app", victim.addr).await;
    let r = Report { clients: 0, queue: 0, weight: None, state: Some(agent::AgentState::Drain) };
    let _ = thief.send(&Message::Report(r.clone())).await;
    let why = thief.closed_with().await.unwrap();
    assert!(why.contains("trust_claimed_address") && why.contains("127.0.0.2"), "{why}");
    assert_eq!(metric(&s.api, "fulcrum_agent_rejected_total{reason=\"claimed_address\"}"), 1.0);
    let agent_states = || {
        let v = get(&format!("{}/api/v1/pools", s.api));
        v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["agent"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(agent_states(), ["up", "up"]);
    // The victim's own host may speak for it, with its full address or only the port.
    let mut own = AgentClient::connect_from("127.0.0.2", s.agent, KEY).await;
    own.hello_as("app", &format!(":{}", victim.port())).await;
    own.send(&Message::Report(r.clone())).await.unwrap();
    wait_until_async(Duration::from_secs(3), "the victim's own drain", || {
        agent_states() == ["drain", "up"]
    })
    .await;
    drop(own);
    wait_until_async(Duration::from_secs(3), "the drain forgotten with its session", || {
        agent_states() == ["up", "up"]
    })
    .await;
    drop(c);

    // A pool that trusts claimed addresses (backends behind NAT, --advertise) takes them.
    let t = start(&toml(
        "self_register = true\ntrust_claimed_address = true",
        &format!("\"{}\"", victim.addr),
        "",
        "report_interval = \"200ms\"\nmissed_reports = 25",
    ));
    let mut c = AgentClient::connect(t.agent, KEY).await;
    c.hello("app", victim.addr).await;
    c.send(&Message::Report(r)).await.unwrap();
    wait_until_async(Duration::from_secs(3), "the trusted claim", || {
        let v = get(&format!("{}/api/v1/pools", t.api));
        v["pools"][0]["servers"][0]["agent"] == "drain"
    })
    .await;
    assert_eq!(metric(&t.api, "fulcrum_agent_rejected_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_mode_answers_the_least_loaded_over_tcp_and_udp() {
    let bs = [
        Backend::start(Mode::Echo).await,
        Backend::start(Mode::Echo).await,
        Backend::start(Mode::Echo).await,
    ];
    let servers = bs.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ");
    let fronts = "[frontend.dir]\nbind = \"127.0.0.1:0\"\nprotocol = \"directory\"\npool = \"app\"\n[frontend.dirudp]\nbind = \"127.0.0.1:0\"\nprotocol = \"directory-udp\"\npool = \"app\"\n";
    let s =
        start(&toml("algorithm = \"least-load\"", &servers, fronts, "report_interval = \"10s\""));
    let _clients = report_all(&s, &bs, [7, 2, 9]).await;
    // TCP: several requests on one connection, written in one go (coalesced) and one split.
    let mut t = TcpStream::connect(s.d.addr("dir")).await.unwrap();
    t.write_all(b"PICK\nPICK app\nPI").await.unwrap();
    t.write_all(b"CK\nHELLO\nPICK nope\n").await.unwrap();
    let mut r = BufReader::new(t);
    let mut lines = Vec::new();
    for _ in 0..5 {
        let mut l = String::new();
        r.read_line(&mut l).await.unwrap();
        lines.push(l.trim_end().to_string());
    }
    // 7/2/9 reported: the first answers go to the least loaded, counting each answer.
    assert_eq!(lines[0], bs[1].addr.to_string());
    assert!(
        lines[1..3].iter().all(|l| l == &bs[1].addr.to_string() || l == &bs[0].addr.to_string()),
        "{lines:?}"
    );
    assert!(lines[3].starts_with("ERR unknown request"), "{lines:?}");
    assert_eq!(lines[4], "ERR no pool nope");
    // UDP: 10,000 queries in a bounded burst (at most 200 in flight), every one answered.
    // The client's own receive buffer must hold the answers in flight (each small datagram
    // costs ~1 KiB of the default ~200 KiB).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    sock.set_recv_buffer_size(4 << 20).unwrap();
    sock.set_nonblocking(true).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let u = UdpSocket::from_std(sock.into()).unwrap();
    u.connect(s.d.addr("dirudp")).await.unwrap();
    let (mut sent, mut got) = (0u32, 0u32);
    let mut buf = [0u8; 128];
    let end = Instant::now() + Duration::from_secs(30);
    let valid: Vec<String> = bs.iter().map(|b| b.addr.to_string()).collect();
    while got < 10_000 {
        assert!(Instant::now() < end, "only {got} of 10000 answers");
        while sent < 10_000 && sent - got < 200 {
            u.send(b"PICK").await.unwrap();
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(2), u.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let a = std::str::from_utf8(&buf[..n]).unwrap();
                assert!(valid.iter().any(|v| v == a), "{a}");
                got += 1;
            }
            _ => panic!("answer lost after {got} of {sent} (loopback, at most 200 in flight)"),
        }
    }
    assert_eq!(got, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_agent_drain_down_and_weight_are_obeyed() {
    // Three servers on three loopback addresses, each with an agent on the same port.
    let mut backends = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        backends.push(Backend::on(l, Mode::Named(ip)));
    }
    let first = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = first.local_addr().unwrap().port();
    let answers = std::sync::Arc::new(std::sync::Mutex::new(["up\n", "up\n", "up\n"]));
    let mut agents = vec![first];
    for ip in ["127.0.0.3", "127.0.0.4"] {
        agents.push(std::net::TcpListener::bind((ip, port)).unwrap());
    }
    for (i, l) in agents.into_iter().enumerate() {
        let answers = answers.clone();
        l.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let a = answers.lock().unwrap()[i];
                let _ = s.write_all(a.as_bytes()).await;
            }
        });
    }
    let servers = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ");
    let pull =
        format!("agent_pull = {{ port = {port}, interval = \"100ms\", timeout = \"500ms\" }}");
    let s = start(&toml(&pull, &servers, "", ""));
    let front = s.d.addr("web");
    let count = |names: &[String], ip: &str| names.iter().filter(|n| *n == ip).count();
    let burst = |n: usize| async move {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(ask_name(front).await.unwrap());
        }
        v
    };
    assert_eq!(count(&burst(30).await, "127.0.0.2"), 10);
    // drain on the first, down on the second: all traffic goes to the third.
    *answers.lock().unwrap() = ["drain\n", "down\n", "up 100%\n"];
    let s_ref = &s;
    wait_until_async(Duration::from_secs(5), "agent states to apply", || {
        let v = get(&format!("{}/api/v1/pools", s_ref.api));
        let st: Vec<&str> = v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["agent"].as_str().unwrap())
            .collect();
        st == ["drain", "down", "up"]
    })
    .await;
    let names = burst(30).await;
    assert_eq!(count(&names, "127.0.0.4"), 30, "{names:?}");
    // Back up, with the first at 20 % weight: it gets clearly less than its even share.
    *answers.lock().unwrap() = ["up 20%\n", "up\n", "up\n"];
    wait_until_async(Duration::from_secs(5), "agent states to apply", || {
        let v = get(&format!("{}/api/v1/pools", s_ref.api));
        v["pools"][0]["servers"].as_array().unwrap().iter().all(|x| x["agent"] == "up")
    })
    .await;
    let names = burst(300).await;
    let first = count(&names, "127.0.0.2");
    assert!(first < 60, "20% weight server took {first} of 300 (even share 100)");
    assert!(first > 0, "20% is not 0%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_fires_once_per_cooldown_and_scale_in_when_load_falls() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scale.log");
    let cmd =
        format!("echo \"$FULCRUM_DIRECTION $FULCRUM_POOL $FULCRUM_SERVERS\" >> {}", log.display());
    let extra = format!(
        "scale_out = {{ threshold = 5, window = \"300ms\", cooldown = \"30s\", command = '{cmd}' }}\nscale_in = {{ threshold = 1, window = \"300ms\", cooldown = \"30s\", command = '{cmd}' }}"
    );
    let s = start(&toml(
        &extra,
        &format!("\"{}\"", b.addr),
        "",
        "report_interval = \"200ms\"\nmissed_reports = 50",
    ));
    let mut c = AgentClient::connect(s.agent, KEY).await;
    c.hello("app", b.addr).await;
    c.report(9, 0).await;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until_async(Duration::from_secs(5), "scale_out to fire", || read().contains("scale_out"))
        .await;
    assert_eq!(read().lines().collect::<Vec<_>>(), ["scale_out app 1"]);
    // Load stays high for several more windows: nothing more within the cooldown.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        c.report(9, 0).await;
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing the reports, not a wait for a result
    }
    assert_eq!(read().lines().count(), 1, "{}", read());
    // Load falls: scale_in fires.
    c.report(0, 0).await;
    wait_until_async(Duration::from_secs(5), "scale_in to fire", || read().contains("scale_in"))
        .await;
    let v = tokio::task::block_in_place(|| {
        let mut r = ureq::get(&format!("{}/api/v1/scale-events", s.api)).call().unwrap();
        serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap()).unwrap()
    });
    let dirs: Vec<&str> =
        v["events"].as_array().unwrap().iter().map(|e| e["direction"].as_str().unwrap()).collect();
    assert_eq!(dirs, ["scale_out", "scale_in"]);
    assert_eq!(v["events"][0]["outcome"], "ok");
    // One server in rotation: a scale-in never drains the last one, so it names none.
    assert!(v["events"][1]["server"].is_null(), "{v}");
    assert!(read().contains("scale_in app 1"), "{}", read());
}

/// A scale-in names the idlest server, drains it through the controller (the API shows it
/// drained before the command runs) and, for a self-registered one, forgets the drain when it
/// leaves: the next backend on that address comes in in rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_drains_the_idlest_and_names_it_to_its_command() {
    let fixed = Backend::start(Mode::Named("fixed")).await;
    let joiner = Backend::start(Mode::Named("joiner")).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("scale.log");
    // The command records what the API said of the named server while it ran.
    let cmd = format!("echo \"$FULCRUM_SERVER $FULCRUM_SERVERS\" >> {}", log.display());
    let extra = format!(
        "self_register = true\nalgorithm = \"least-load\"\nscale_in = {{ threshold = 2, window = \"300ms\", cooldown = \"30s\", command = '{cmd}' }}"
    );
    let s = start(&toml(
        &extra,
        &format!("\"{}\"", fixed.addr),
        "",
        "report_interval = \"200ms\"\nmissed_reports = 50",
    ));
    let state_of = |addr: SocketAddr| {
        let v = get(&format!("{}/api/v1/pools", s.api));
        v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .map(|x| x["state"].as_str().unwrap().to_string())
    };
    // The fixed server reports 1 client, the joiner 0: the joiner is the idlest.
    let mut f = AgentClient::connect(s.agent, KEY).await;
    f.hello("app", fixed.addr).await;
    f.report(1, 0).await;
    let mut c = AgentClient::connect(s.agent, KEY).await;
    c.hello_as("app", &format!(":{}", joiner.port())).await;
    c.report(0, 0).await;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until_async(Duration::from_secs(5), "scale_in to fire", || !read().is_empty()).await;
    assert_eq!(read(), format!("{} 2\n", joiner.addr));
    assert_eq!(state_of(joiner.addr).as_deref(), Some("drain"));
    assert_eq!(state_of(fixed.addr).as_deref(), Some("up"));
    let v = get(&format!("{}/api/v1/scale-events", s.api));
    assert_eq!(v["events"][0]["server"], joiner.addr.to_string(), "{v}");
    // Drained: new clients go to the fixed server only.
    for _ in 0..5 {
        assert_eq!(ask_name(s.d.addr("web")).await.unwrap(), "fixed");
    }
    // It stops (BYE) and leaves; a backend registering later at that address is in rotation.
    c.send(&Message::Bye).await.unwrap();
    wait_until_async(Duration::from_secs(3), "the joiner to leave", || {
        state_of(joiner.addr).is_none()
    })
    .await;
    let mut again = AgentClient::connect(s.agent, KEY).await;
    again.hello_as("app", &format!(":{}", joiner.port())).await;
    again.report(0, 0).await;
    wait_until_async(Duration::from_secs(3), "the new joiner, up", || {
        state_of(joiner.addr).as_deref() == Some("up")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_client_registers_and_reports() {
    let joiner = Backend::start(Mode::Named("py")).await;
    let s = start(&toml(
        "algorithm = \"least-load\"\nself_register = true",
        "",
        "",
        "report_interval = \"200ms\"\nmissed_reports = 5",
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent_client.py");
    let key = s._dir.path().join("agent.key");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--agent", &s.agent.to_string(), "--key-file", key.to_str().unwrap()])
        .args(["--pool", "app", "--address", &joiner.addr.to_string()])
        .args(["--clients", "3", "--queue", "1", "--interval", "0.2", "--count", "15"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    wait_until_async(Duration::from_secs(5), "the Python backend's report", || {
        let v = get(&format!("{}/api/v1/pools", s.api));
        v["pools"][0]["servers"].as_array().unwrap().iter().any(|x| {
            x["address"] == joiner.addr.to_string()
                && x["reported"]["clients"] == 3
                && x["reported"]["queue"] == 1
        })
    })
    .await;
    assert_eq!(ask_name(s.d.addr("web")).await.unwrap(), "py");
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    // Its session ended (BYE): it leaves the pool.
    wait_until_async(Duration::from_secs(3), "the Python backend to leave", || {
        addrs(&s).is_empty()
    })
    .await;
}

/// `fulcrum_agent_reports_total` from /metrics.
fn reports_total(s: &Setup) -> u64 {
    metric(&s.api, "fulcrum_agent_reports_total") as u64
}

/// Before: a peer sending a byte every few seconds held its socket for ~50 min, and sessions
/// were not capped. Now 500 such peers are closed at the handshake deadline (5 s) while two
/// real backends keep reporting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_agent_peers_are_closed_at_the_handshake_deadline() {
    let bs = [Backend::start(Mode::Echo).await, Backend::start(Mode::Echo).await];
    let servers = bs.iter().map(|b| format!("\"{}\"", b.addr)).collect::<Vec<_>>().join(", ");
    let s = start(&toml("algorithm = \"least-load\"", &servers, "", ""));
    let mut real = Vec::new();
    for b in &bs {
        let mut c = AgentClient::connect(s.agent, KEY).await;
        c.hello("app", b.addr).await;
        c.report(1, 0).await;
        real.push(c);
    }
    // The real backends report every 200 ms for the whole test.
    let stop = tokio_util::sync::CancellationToken::new();
    let reporter = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() && n < 200 {
                for c in &mut real {
                    c.report(1, 0).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let agent = s.agent;
    let started = Instant::now();
    let mut tricklers = tokio::task::JoinSet::new();
    for _ in 0..500 {
        tricklers.spawn(async move {
            let opened = Instant::now();
            let limit = Duration::from_secs(10);
            let Ok(Ok(mut c)) = tokio::time::timeout(limit, TcpStream::connect(agent)).await else {
                return Duration::ZERO;
            };
            // A valid hello, signed with the key: only its pace is wrong. A connection the
            // balancer closed at once (listener full) gives no challenge.
            let mut ch = [0u8; agent::CHALLENGE_LEN];
            let got = tokio::time::timeout(limit, c.read_exact(&mut ch)).await;
            if !matches!(got, Ok(Ok(_))) {
                return opened.elapsed();
            }
            let nonce = agent::parse_challenge(&ch).unwrap();
            let h = Hello { pool: "app".into(), address: "127.0.0.1:9".into(), version: 1 };
            let frame = agent::encode_message(KEY.as_bytes(), &nonce, 1, &Message::Hello(h));
            let mut buf = [0u8; 256];
            // One byte a second, reading what comes back, until the balancer closes.
            for byte in frame.iter().cycle().take(60) {
                if c.write_all(&[*byte]).await.is_err() {
                    break;
                }
                let read = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await;
                if let Ok(Ok(0) | Err(_)) = read {
                    break;
                }
            }
            opened.elapsed()
        });
    }
    let before = reports_total(&s);
    let mut longest = Duration::ZERO;
    while let Some(held) = tricklers.join_next().await {
        longest = longest.max(held.unwrap());
    }
    assert!(longest <= Duration::from_secs(8), "a trickling peer held on for {longest:?}");
    assert!(started.elapsed() <= Duration::from_secs(15));
    // The real sessions are still up and still counted.
    let after_flood = reports_total(&s);
    assert!(after_flood > before + 10, "reports during the flood: {before} -> {after_flood}");
    stop.cancel();
    reporter.await.unwrap();
    let v = get(&format!("{}/api/v1/pools", s.api));
    assert!(v["pools"][0]["servers"].as_array().unwrap().iter().all(|x| x["reported"].is_object()));
}
