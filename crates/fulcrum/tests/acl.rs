//! Access lists and the runtime block list, end to end: clients bound to 127.0.0.2, .3, ...
//! play distinct addresses; a refused client never reaches a server (the backends count what
//! reaches them); lists from files follow reloads; `fulcrum ctl blocks` applies within a
//! second, cuts open connections, expires, and survives reloads and restarts through the
//! state file; the refusals show in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const LIMIT: Duration = Duration::from_secs(10);

include!("support/guards.rs");

/// One tcp, one http and one udp frontend with the same `lists`, each with its own backend.
fn three_frontends(lists: &str, tcp: &Backend, http: &HttpBackend, udp: &UdpBackend) -> String {
    format!(
        r#"
workers = 2
[admin]
bind = "127.0.0.1:0"
[frontend.tcp]
bind = "127.0.0.1:0"
pool = "echo"
{lists}
[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "web"
{lists}
[frontend.dns]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "dns"
{lists}
[pool.echo]
servers = ["{}"]
[pool.web]
servers = ["{}"]
[pool.dns]
servers = ["{}"]
"#,
        tcp.addr, http.addr, udp.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_address_is_refused_before_any_server_hears_of_it() {
    let (tcp, http, udp) =
        (Backend::start(Mode::Echo).await, HttpBackend::start(), UdpBackend::start().await);
    let dir = tempfile::tempdir().unwrap();
    let s = start_in(dir.path(), &three_frontends("deny = [\"127.0.0.3\"]", &tcp, &http, &udp));
    let (t, w, u) = (s.d.addr("tcp"), s.d.addr("web"), s.d.addr("dns"));

    assert!(!served(from(3), t).await, "127.0.0.3 was served over tcp");
    assert_eq!(http_get(from(3), w).await, None, "127.0.0.3 got an HTTP answer");
    let denied = udp_from(from(3), u).await;
    denied.send(b"hello").await.unwrap();
    wait_until_async(LIMIT, "the udp refusal counted", || rejections(&s, "dns", "deny") >= 1.0)
        .await;
    assert_eq!(rejections(&s, "tcp", "deny"), 1.0);
    assert_eq!(rejections(&s, "web", "deny"), 1.0);
    assert_eq!(tcp.accepts(), 0, "the tcp server saw a denied client");
    assert_eq!(http.accepts.load(Ordering::SeqCst), 0, "the http server saw a denied client");
    assert_eq!(udp.datagrams(), 0, "the udp server got a denied client's datagram");

    // Everyone else is served, and the servers count exactly them.
    assert!(served(from(1), t).await);
    assert_eq!(http_get(from(1), w).await.as_deref(), Some("HTTP/1.1 200 OK"));
    assert!(udp_echoes(&udp_from(from(1), u).await, LIMIT).await);
    assert_eq!((tcp.accepts(), http.accepts.load(Ordering::SeqCst), udp.datagrams()), (1, 1, 1));
    assert_eq!(rejections(&s, "tcp", "not-allowed") + rejections(&s, "tcp", "blocked"), 0.0);
    // A refusal at accept is counted, not written to the access log line by line.
    let log = s.d.log.lock().unwrap();
    let lines = log.iter().filter(|v| v["target"] == "fulcrum::access");
    // (HTTP lines name the client without its port.)
    let strays: Vec<_> = lines
        .filter(|v| !v["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1")))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_admit_only_their_addresses_and_deny_wins() {
    let (tcp, http, udp) =
        (Backend::start(Mode::Echo).await, HttpBackend::start(), UdpBackend::start().await);
    let dir = tempfile::tempdir().unwrap();
    // 127.0.0.0/30 is .0 to .3; .3 is denied inside it.
    let lists = "allow = [\"127.0.0.0/30\", \"::1\"]\ndeny = [\"127.0.0.3\"]";
    let s = start_in(dir.path(), &three_frontends(lists, &tcp, &http, &udp));
    let (t, w, u) = (s.d.addr("tcp"), s.d.addr("web"), s.d.addr("dns"));
    assert!(served(from(2), t).await);
    assert!(!served(from(3), t).await, "deny wins over allow");
    assert!(!served(from(5), t).await, "outside the allow list");
    assert_eq!(http_get(from(5), w).await, None);
    assert_eq!(http_get(from(1), w).await.as_deref(), Some("HTTP/1.1 200 OK"));
    assert!(!udp_echoes(&udp_from(from(9), u).await, Duration::from_millis(300)).await);
    assert!(udp_echoes(&udp_from(from(2), u).await, LIMIT).await);
    assert_eq!(rejections(&s, "tcp", "deny"), 1.0);
    assert_eq!(rejections(&s, "tcp", "not-allowed"), 1.0);
    assert_eq!(rejections(&s, "web", "not-allowed"), 1.0);
    wait_until_async(LIMIT, "the udp refusal", || rejections(&s, "dns", "not-allowed") >= 1.0)
        .await;
    assert_eq!((tcp.accepts(), http.accepts.load(Ordering::SeqCst), udp.datagrams()), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_client_is_the_one_checked() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[frontend.tcp]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         accept_proxy = [\"127.0.0.1\"]\ndeny = [\"192.0.2.1\"]\n[pool.p]\nservers = [\"{}\"]\n",
        b.addr
    );
    let s = start_in(dir.path(), &toml);
    let front = s.d.addr("tcp");
    let mut denied = connect_from(from(1), front).await;
    denied.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 80\r\n").await.unwrap();
    assert!(!echoes(&mut denied).await, "the header's client is denied");
    let mut ok = connect_from(from(1), front).await;
    ok.write_all(b"PROXY TCP4 192.0.2.2 127.0.0.1 4000 80\r\n").await.unwrap();
    assert!(echoes(&mut ok).await);
    assert_eq!(b.accepts(), 1, "the server saw the denied client");
    assert_eq!(rejections(&s, "tcp", "deny"), 1.0);
    wait_until_async(LIMIT, "the refused connection's access line", || {
        s.d.log
            .lock()
            .unwrap()
            .iter()
            .any(|v| v["client"] == "192.0.2.1:4000" && v["outcome"] == "deny")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_file_follows_reloads() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("lists")).unwrap();
    let deny = dir.path().join("lists/deny.txt");
    std::fs::write(&deny, "# scanners\n127.0.0.4   # one\n\n").unwrap();
    let toml = format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.tcp]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         deny_file = \"lists/deny.txt\"\n[pool.p]\nservers = [\"{}\"]\n",
        b.addr
    );
    let s = start_in(dir.path(), &toml);
    let front = s.d.addr("tcp");
    assert!(!served(from(4), front).await);
    assert!(served(from(3), front).await);

    std::fs::write(&deny, "# scanners\n127.0.0.4\n127.0.0.0/30 # .0 to .3\n").unwrap();
    assert_eq!(ctl(&s, &["reload"]), (0, "reloaded\n".to_string()));
    assert!(!served(from(3), front).await, "the reloaded file denies 127.0.0.3");

    // A bad line fails the reload with its file and line; the old lists keep applying.
    std::fs::write(&deny, "127.0.0.4\n127.0.0.300\n").unwrap();
    let (code, out) = ctl(&s, &["reload"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:2:1: frontend.tcp.deny_file: \"127.0.0.300\" is not",
            deny.display()
        )),
        "{out}"
    );
    assert!(!served(from(3), front).await);

    // SIGHUP reads it again too.
    std::fs::write(&deny, "127.0.0.4\n").unwrap();
    let reloads = s.d.count("configuration reloaded");
    s.d.signal(rustix::process::Signal::HUP);
    wait_until_async(LIMIT, "the SIGHUP reload", || s.d.count("configuration reloaded") > reloads)
        .await;
    assert!(served(from(3), front).await);
    assert!(!served(from(4), front).await);
    assert_eq!(rejections(&s, "tcp", "deny"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_block_applies_within_a_second_lists_and_lifts() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.tcp]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pool.p]\nservers = [\"{}\"]\n",
        b.addr
    );
    let s = start_in(dir.path(), &toml);
    let front = s.d.addr("tcp");
    assert!(served(from(3), front).await);
    let mut ok = 1; // connections served so far: what the server may have seen

    let t0 = Instant::now();
    let (code, out) = ctl(&s, &["blocks", "add", "127.0.0.3", "--reason", "scanner"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "blocked 127.0.0.3/32 until removed\n");
    let end = t0 + Duration::from_secs(2);
    while served(from(3), front).await {
        ok += 1;
        assert!(Instant::now() < end, "127.0.0.3 still served 2 s after the block");
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "the block took {took:?} to apply");
    assert!(served(from(2), front).await, "only the blocked address is refused");
    ok += 1;

    // A range, listed with when it ends; then both lifted.
    assert_eq!(ctl(&s, &["blocks", "add", "127.0.1.0/24", "--for", "10m"]).0, 0);
    let (code, list) = ctl(&s, &["blocks", "list"]);
    assert_eq!(code, 0, "{list}");
    let row = |cidr: &str| {
        list.lines()
            .find(|l| l.starts_with(cidr))
            .unwrap_or_else(|| panic!("{cidr} in {list}"))
            .to_string()
    };
    assert!(
        row("127.0.0.3/32").contains("never") && row("127.0.0.3/32").ends_with("scanner"),
        "{list}"
    );
    assert!(row("127.0.1.0/24").contains("9m5") || row("127.0.1.0/24").contains("10m0s"), "{list}");
    assert!(!served(Ipv4Addr::new(127, 0, 1, 9), front).await);
    assert_eq!(metric(&s.api, "fulcrum_blocks{} "), 2.0);

    assert_eq!(
        ctl(&s, &["blocks", "remove", "127.0.0.3"]),
        (0, "unblocked 127.0.0.3/32\n".to_string())
    );
    assert_eq!(ctl(&s, &["blocks", "remove", "127.0.1.0/24"]).0, 0);
    assert!(served(from(3), front).await, "served again once unblocked");
    ok += 1;
    let (code, out) = ctl(&s, &["blocks", "remove", "127.0.0.3"]);
    assert_eq!(code, 1);
    assert!(out.contains("404") && out.contains("127.0.0.3/32 is not in the block list"), "{out}");
    let (code, out) = ctl(&s, &["blocks", "add", "127.0.0.300"]);
    assert_eq!(code, 1);
    assert!(out.contains("400") && out.contains("is not an address"), "{out}");
    assert_eq!(rejections(&s, "tcp", "blocked"), 2.0);
    assert_eq!(b.accepts(), ok, "only the served connections reached the server");

    // The dashboard's recent events tell the same story.
    let events = get(&format!("{}/api/v1/events", s.api));
    let blocks: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "block")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(
        blocks,
        [
            "127.0.0.3/32 blocked until removed: scanner",
            "127.0.1.0/24 blocked for 600s",
            "127.0.0.3/32 block removed",
            "127.0.1.0/24 block removed",
        ],
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_closes_the_open_connections_of_the_address_only() {
    let (tcp, http, udp) =
        (Backend::start(Mode::Echo).await, HttpBackend::start(), UdpBackend::start().await);
    let dir = tempfile::tempdir().unwrap();
    let s = start_in(dir.path(), &three_frontends("", &tcp, &http, &udp));
    let (t, u) = (s.d.addr("tcp"), s.d.addr("dns"));
    // Several connections from the address to cut, spread over both workers, and bystanders.
    let mut cut = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from(from(3), t).await;
        assert!(echoes(&mut c).await);
        cut.push(c);
    }
    let mut kept = connect_from(from(2), t).await;
    assert!(echoes(&mut kept).await);
    let mut not_cut = connect_from(from(4), t).await;
    assert!(echoes(&mut not_cut).await);
    let session = udp_from(from(3), u).await;
    assert!(udp_echoes(&session, LIMIT).await);
    let sessions = || metric(&s.api, "fulcrum_frontend_udp_sessions_active{frontend=\"dns\"}");
    assert_eq!(sessions(), 1.0);

    // A block without --cut leaves open connections alone.
    assert_eq!(ctl(&s, &["blocks", "add", "127.0.0.4"]).0, 0);
    assert!(echoes(&mut not_cut).await, "an open connection was cut without --cut");
    assert!(!served(from(4), t).await);

    let (code, out) = ctl(&s, &["blocks", "add", "127.0.0.3", "--cut"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("its open connections are closed"), "{out}");
    for c in &mut cut {
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(LIMIT, c.read(&mut buf))
            .await
            .expect("a cut connection stayed open");
        assert!(matches!(r, Ok(0) | Err(_)), "read {r:?} on a cut connection");
    }
    assert!(echoes(&mut kept).await, "a bystander was cut");
    assert!(echoes(&mut not_cut).await);
    // The UDP session ended at once: the sessions gauge drops, and its next datagram is refused.
    wait_until_async(LIMIT, "the udp session to end", || sessions() == 0.0).await;
    let before = udp.datagrams();
    assert!(!udp_echoes(&session, Duration::from_millis(300)).await);
    wait_until_async(LIMIT, "the refused datagram", || rejections(&s, "dns", "blocked") >= 1.0)
        .await;
    assert_eq!(udp.datagrams(), before);
    wait_until_async(LIMIT, "four access lines with outcome blocked", || {
        s.d.log
            .lock()
            .unwrap()
            .iter()
            .filter(|v| {
                v["outcome"] == "blocked"
                    && v["protocol"] == "tcp"
                    && v["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.3:"))
            })
            .count()
            == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_for_a_while_ends_on_its_own() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let toml = format!(
        "state_file = \"state.json\"\n[admin]\nbind = \"127.0.0.1:0\"\n[frontend.tcp]\nbind = \"127.0.0.1:0\"\n\
         pool = \"p\"\n[pool.p]\nservers = [\"{}\"]\n",
        b.addr
    );
    let s = start_in(dir.path(), &toml);
    let front = s.d.addr("tcp");
    let t0 = Instant::now();
    assert_eq!(ctl(&s, &["blocks", "add", "127.0.0.3", "--for", "1s"]).0, 0);
    assert!(!served(from(3), front).await);
    wait_until_async(LIMIT, "the block to end", || {
        let (code, list) = ctl(&s, &["blocks", "list"]);
        code == 0 && !list.contains("127.0.0.3")
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(900), "ended early: {:?}", t0.elapsed());
    assert!(served(from(3), front).await, "still refused after its time");
    // The sweep took it out of the state file too.
    wait_until_async(LIMIT, "the state file without the block", || {
        std::fs::read_to_string(&state).is_ok_and(|t| !t.contains("127.0.0.3"))
    })
    .await;
    assert_eq!(metric(&s.api, "fulcrum_blocks{} "), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_survive_reloads_and_restarts() {
    let b = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "workers = 2\nstate_file = \"state.json\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [frontend.tcp]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nservers = [\"{}\"]\n",
        b.addr
    );
    let s = start_in(dir.path(), &toml);
    assert_eq!(ctl(&s, &["blocks", "add", "127.0.0.3", "--reason", "abuse"]).0, 0);
    assert_eq!(ctl(&s, &["blocks", "add", "127.0.0.5", "--for", "1h"]).0, 0);
    assert!(!served(from(3), s.d.addr("tcp")).await);
    assert_eq!(ctl(&s, &["reload"]).0, 0);
    assert!(!served(from(3), s.d.addr("tcp")).await, "a reload lifted the block");
    let reloads = s.d.count("configuration reloaded");
    s.d.signal(rustix::process::Signal::HUP);
    wait_until_async(LIMIT, "the SIGHUP reload", || s.d.count("configuration reloaded") > reloads)
        .await;
    assert!(!served(from(3), s.d.addr("tcp")).await, "SIGHUP lifted the block");
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(state.contains("\"cidr\": \"127.0.0.3/32\"") && state.contains("abuse"), "{state}");

    // Killed, not stopped: what the state file holds is all that carries over.
    let dir_path = s.dir.clone();
    drop(s);
    let s = start_in(&dir_path, &toml);
    let front = s.d.addr("tcp");
    assert!(!served(from(3), front).await, "the block did not survive the restart");
    assert!(!served(from(5), front).await, "the timed block did not survive the restart");
    assert!(served(from(2), front).await);
    let (_, list) = ctl(&s, &["blocks", "list"]);
    assert!(list.lines().any(|l| l.starts_with("127.0.0.3/32") && l.ends_with("abuse")), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("127.0.0.5/32") && (l.contains("59m") || l.contains("1h0m0s"))),
        "{list}"
    );
    assert_eq!(rejections(&s, "tcp", "blocked"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_udp_service_checks_each_datagram() {
    // A udp frontend without sessions (a server per datagram) and a directory-udp frontend.
    let udp = UdpBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "workers = 2\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [frontend.dgram]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nsessions = false\npool = \"p\"\n\
         deny = [\"127.0.0.3\"]\n\
         [frontend.dir]\nbind = \"127.0.0.1:0\"\nprotocol = \"directory-udp\"\npool = \"p\"\n\
         allow = [\"127.0.0.1\"]\n[pool.p]\nservers = [\"{}\"]\n",
        udp.addr
    );
    let s = start_in(dir.path(), &toml);
    let (dgram, dir_front) = (s.d.addr("dgram"), s.d.addr("dir"));
    let denied = udp_from(from(3), dgram).await;
    denied.send(b"hello").await.unwrap();
    wait_until_async(LIMIT, "the refused datagram", || rejections(&s, "dgram", "deny") >= 1.0)
        .await;
    assert_eq!(udp.datagrams(), 0, "a refused datagram reached the server");
    assert!(udp_echoes(&udp_from(from(1), dgram).await, LIMIT).await);

    let ask = |c: UdpSocket| async move {
        c.send(b"PICK\n").await.unwrap();
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(300), c.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => None,
        }
    };
    assert_eq!(ask(udp_from(from(2), dir_front).await).await, None, "127.0.0.2 got an answer");
    wait_until_async(LIMIT, "the refused PICK", || rejections(&s, "dir", "not-allowed") >= 1.0)
        .await;
    let answer = ask(udp_from(from(1), dir_front).await).await.expect("no answer to 127.0.0.1");
    assert!(answer.contains(&udp.addr.to_string()), "{answer}");
    // The blocks apply to them too.
    assert_eq!(ctl(&s, &["blocks", "add", "127.0.0.1"]).0, 0);
    assert!(!udp_echoes(&udp_from(from(1), dgram).await, Duration::from_millis(300)).await);
    assert_eq!(ask(udp_from(from(1), dir_front).await).await, None);
    wait_until_async(LIMIT, "both refusals counted as blocked", || {
        rejections(&s, "dgram", "blocked") >= 1.0 && rejections(&s, "dir", "blocked") >= 1.0
    })
    .await;
}
