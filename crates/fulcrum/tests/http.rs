//! The HTTP service (`protocol = "http"`) end to end: the real binary between real clients
//! (curl, wrk, h2load, raw sockets) and real servers (nginx started by the test, or small
//! scripted HTTP/1 servers that count what reaches them).
//!
//! * `curl_h1_and_h2c_reach_nginx_with_forwarding_headers`
//! * `wrk_and_h2load_through_fulcrum_reuse_upstream_connections`
//! * `slow_header_sender_is_answered_408_at_header_timeout`
//! * `a_killed_server_under_load_fails_no_get_and_a_post_is_never_repeated`
//! * `limits_and_timeouts_answer_their_status`
//! * `routes_pick_the_pool_and_rewrite_the_request`
//! * `hash_and_sticky_pools_keep_each_user_on_one_server`
//! * `sigterm_finishes_the_request_in_flight_with_connection_close`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

include!("support/servers.rs");
include!("support/http_servers.rs");

#[test]
fn curl_h1_and_h2c_reach_nginx_with_forwarding_headers() {
    let (a, b) = (Nginx::start("alpha"), Nginx::start("beta"));
    let servers = format!("\"{}\", \"{}\"", a.addr(), b.addr());
    let d = Daemon::run_config(&http_config(1, &servers, "", ""));
    let front = d.addr("web");
    let url = format!("http://{front}/some/path?q=1");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body, _) = curl(&[&url]);
        assert_eq!(status, 200, "{body}");
        seen.push(body);
    }
    assert!(seen.iter().any(|b| b == "alpha GET /some/path?q=1\n"), "{seen:?}");
    assert!(seen.iter().any(|b| b == "beta GET /some/path?q=1\n"), "{seen:?}");
    let (status, body, _) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!(status, 200);
    assert!(body.ends_with(" GET /some/path?q=1\n"), "{body}");

    // Forwarding headers, from a client on 127.0.0.2 that claims to be someone else.
    let headers_url = format!("http://{front}/headers");
    let (status, body, resp) = curl(&[
        "--interface",
        "127.0.0.2",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "Connection: keep-alive, X-Drop",
        "-H",
        "X-Drop: secret",
        &headers_url,
    ]);
    assert_eq!(status, 200);
    let host = front.to_string();
    assert!(body.contains("xff=127.0.0.2|"), "{body}");
    assert!(body.contains("|xfp=http|"), "{body}");
    assert!(body.contains(&format!("|xfh={host}|")), "{body}");
    assert!(body.contains("|via=1.1 fulcrum|"), "{body}");
    assert!(body.contains("|drop=|"), "hop-by-hop header named in Connection forwarded: {body}");
    let rid = body.split("|rid=").nth(1).unwrap().split('|').next().unwrap();
    assert_eq!(rid.len(), 32, "{body}");
    assert_eq!(resp.get("x-request-id").map(String::as_str), Some(rid));
    // A valid request id is kept; over HTTP/2 the host comes from :authority.
    let (_, body, resp) =
        curl(&["--http2-prior-knowledge", "-H", "X-Request-Id: trace-42", &headers_url]);
    assert!(body.contains("|rid=trace-42|"), "{body}");
    assert!(body.contains("|via=2 fulcrum|"), "{body}");
    assert!(body.contains(&format!("|host={}", front.ip())), "{body}");
    assert_eq!(resp.get("x-request-id").map(String::as_str), Some("trace-42"));

    // Every request has its access-log line.
    wait_until(Duration::from_secs(5), "access lines", || {
        access(&d).iter().filter(|e| e["method"].is_string()).count() >= 7
    });
    let line = access(&d)
        .into_iter()
        .find(|e| e["request_id"] == "trace-42")
        .expect("access line of trace-42");
    let f = &line;
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/headers");
    assert_eq!(f["status"], 200);
    assert!(f["server"].as_str().unwrap().starts_with("127.0.0.1:"), "{f}");
    assert!(f["bytes_out"].as_u64().unwrap() > 0, "{f}");
    assert!(f["upstream_ms"].is_u64() && f["duration_ms"].is_u64(), "{f}");
    assert_eq!(f["retries"], 0);
}

#[test]
fn wrk_and_h2load_through_fulcrum_reuse_upstream_connections() {
    let (a, b) = (Nginx::start("alpha"), Nginx::start("beta"));
    let servers = format!("\"{}\", \"{}\"", a.addr(), b.addr());
    let d = Daemon::run_config(&http_config(2, &servers, "", ""));
    let front = d.addr("web");
    let before = (a.accepts(), b.accepts());
    let clients = 8;
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &clients.to_string(), "-d", "2s"])
        .arg(format!("http://{front}/"))
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(requests > 100, "{text}");
    // Less the connection of the second question.
    let opened = (a.accepts() - before.0 - 1, b.accepts() - before.1 - 1);
    // Keep-alive on both sides: at most one server connection per client connection.
    assert!(opened.0 <= clients && opened.1 <= clients, "{opened:?} for {requests} requests");

    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "10"])
        .arg(format!("http://{front}/"))
        .output()
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_sender_is_answered_408_at_header_timeout() {
    let n = Nginx::start("alpha");
    let d = Daemon::run_config(&http_config(
        1,
        &format!("\"{}\"", n.addr()),
        "header_timeout = \"2s\"",
        "",
    ));
    let front = d.addr("web");
    let mut s = TcpStream::connect(front).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 123456789\r\n\r\n";
    let mut answer = Vec::new();
    // One byte a second until the proxy answers (bounded by the head's length).
    for byte in head {
        if s.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => answer.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
        if !answer.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut answer)).await;
            break;
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(4), "{took:?}");
    wait_until(Duration::from_secs(5), "the access line", || {
        access(&d).iter().any(|e| e["outcome"] == "header-timeout")
    });
    // A keep-alive client idle between requests is not cut at header_timeout.
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(Duration::from_millis(2500)).await; // idle past header_timeout
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_under_load_fails_no_get_and_a_post_is_never_repeated() {
    let servers: Vec<Scripted> =
        ["s1", "s2", "s3"].into_iter().map(|n| Scripted::start(n, Script::Answer)).collect();
    let list = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect::<Vec<_>>().join(", ");
    let d = Daemon::run_config(&http_config(2, &list, "", "retries = 2"));
    let front = d.addr("web");
    let done = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move { get_loop(front, 300, &done).await })
        })
        .collect();
    wait_until_async(Duration::from_secs(20), "load running", || {
        done.load(Ordering::SeqCst) >= 200
    })
    .await;
    servers[1].kill();
    let mut failed = 0;
    for l in loops {
        failed += l.await.unwrap();
    }
    assert_eq!(failed, 0, "GETs failed after a server was killed");
    assert_eq!(done.load(Ordering::SeqCst), 1200);
    let retried =
        access(&d).iter().filter(|e| e["retries"].as_u64().is_some_and(|r| r > 0)).count();
    assert!(retried > 0, "the kill never showed: the test proved nothing");

    // A POST whose body reached a server that then died is not sent again.
    let posts: Vec<Scripted> =
        ["p1", "p2"].into_iter().map(|n| Scripted::start(n, Script::CloseAfterBody)).collect();
    let list = posts.iter().map(|s| format!("\"{}\"", s.addr)).collect::<Vec<_>>().join(", ");
    let d = Daemon::run_config(&http_config(1, &list, "", "retries = 2"));
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"POST /pay HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n\r\nhello").await.unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert_eq!(posts[0].count("POST") + posts[1].count("POST"), 1);
    // A GET to the same servers is retried on the other one (and fails there too).
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"GET /read HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert_eq!(posts[0].count("GET"), 1);
    assert_eq!(posts[1].count("GET"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_timeouts_answer_their_status() {
    let ok = Scripted::start("ok", Script::Answer);
    let d = Daemon::run_config(&http_config(
        1,
        &format!("\"{}\"", ok.addr),
        "max_body = \"1KiB\"\nmax_headers = 10",
        "",
    ));
    let front = d.addr("web");
    let ask = |req: Vec<u8>| async move {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(&req).await.unwrap();
        read_response(&mut s).await
    };
    let big = vec![b'x'; 2048];
    let mut req = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 2048\r\n\r\n".to_vec();
    req.extend_from_slice(&big);
    assert!(ask(req).await.starts_with("HTTP/1.1 413 "));
    assert_eq!(ok.count("POST"), 0, "a body declared over max_body reached the server");
    // A chunked body is streamed: cut off when it passes the limit (the server sees its head
    // and a connection that ends before the body does).
    let mut req =
        b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n800\r\n".to_vec();
    req.extend_from_slice(&big);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = ask(req).await;
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..20 {
        req.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let r = ask(req).await;
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nx-big: ".to_vec();
    req.extend_from_slice(&vec![b'y'; 70 * 1024]);
    req.extend_from_slice(b"\r\n\r\n");
    let r = ask(req).await;
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    let r = ask(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    let r = ask(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");

    // A server that never answers: 504 at response_timeout.
    let stall = Scripted::start("stall", Script::Stall);
    let d = Daemon::run_config(&http_config(
        1,
        &format!("\"{}\"", stall.addr),
        "",
        "[pool.app.http]\nresponse_timeout = \"1s\"",
    ));
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 504 "), "{r}");
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());

    // Nobody listening: 502.
    let d =
        Daemon::run_config(&http_config(1, &format!("\"127.0.0.1:{}\"", closed_port()), "", ""));
    let mut s = TcpStream::connect(d.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 502 "), "{r}");
    wait_until_async(Duration::from_secs(5), "the access line", || {
        access(&d).iter().any(|e| e["outcome"] == "connect-failed")
    })
    .await;
    let _ = PathBuf::new();
}

/// Sends one request on a new connection and returns the whole answer (head and body).
async fn ask(front: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// The body of an answer read by `read_response`.
fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_the_pool_and_rewrite_the_request() {
    let names = ["site", "api", "canary", "writes", "static"];
    let servers: Vec<Scripted> = names.iter().map(|n| Scripted::start(n, Script::Answer)).collect();
    let mut pools = String::new();
    for (n, s) in names.iter().zip(&servers) {
        pools.push_str(&format!("[pool.{n}]\nservers = [\"{}\"]\n", s.addr));
    }
    let toml = format!(
        r#"
workers = 1
access_log = true
[admin]
bind = "127.0.0.1:0"

[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "site"

[[frontend.web.route]]
host = "secure.example.com"
redirect = "https"

[[frontend.web.route]]
header = {{ name = "X-Env", value = "canary" }}
pool = "canary"

[[frontend.web.route]]
path_prefix = "/api"
strip_prefix = true
set_headers = {{ "X-Route" = "api" }}
remove_headers = ["X-Secret"]
pool = "api"

[[frontend.web.route]]
method = ["POST", "PUT"]
pool = "writes"

[[frontend.web.route]]
host = ["static.example.com", "*.cdn.example.com"]
path_regex = "\\.(css|js)$"
pool = "static"

{pools}
"#
    );
    let d = Daemon::run_config(&toml);
    let front = d.addr("web");
    // (request, expected start of the body)
    let table: &[(&str, &str)] = &[
        ("GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n", "site GET / route= secret="),
        (
            "GET /api/users?id=7 HTTP/1.1\r\nHost: a\r\nX-Secret: s3\r\n\r\n",
            "api GET /users?id=7 route=api secret=\n",
        ),
        ("GET /api HTTP/1.1\r\nHost: a\r\n\r\n", "api GET / route=api"),
        // A prefix matches inside a segment, but is stripped only at a segment boundary.
        ("GET /apiary HTTP/1.1\r\nHost: a\r\nX-Secret: s\r\n\r\n", "api GET /apiary route=api"),
        ("GET /api/x HTTP/1.1\r\nHost: a\r\nX-Env: canary\r\n\r\n", "canary GET /api/x route="),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Env: prod\r\n\r\n", "site GET /"),
        ("POST /form HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\n\r\nx", "writes POST /form"),
        ("PUT /form HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n", "writes PUT /form"),
        ("GET /app.js HTTP/1.1\r\nHost: static.example.com\r\n\r\n", "static GET /app.js"),
        ("GET /a/b.css HTTP/1.1\r\nHost: x.y.cdn.example.com:8080\r\n\r\n", "static GET /a/b.css"),
        ("GET /a/b.css HTTP/1.1\r\nHost: cdn.example.com\r\n\r\n", "site GET /a/b.css"),
        ("GET /app.jsx HTTP/1.1\r\nHost: static.example.com\r\n\r\n", "site GET /app.jsx"),
        ("GET /x HTTP/1.1\r\nHost: STATIC.Example.COM\r\n\r\n", "site GET /x"),
        ("GET /x.css HTTP/1.1\r\nHost: STATIC.Example.COM\r\n\r\n", "static GET /x.css"),
    ];
    for (req, want) in table {
        let resp = ask(front, req).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{req:?}: {resp}");
        assert!(body_of(&resp).starts_with(want), "{req:?}: wanted {want:?}, got {resp}");
    }
    let resp = ask(front, "GET /p?q=1 HTTP/1.1\r\nHost: secure.example.com:8443\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 301"), "{resp}");
    assert!(resp.contains("\r\nlocation: https://secure.example.com/p?q=1\r\n"), "{resp}");
    // HTTP/2 routes by :authority.
    let (status, body, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: static.example.com",
        &format!("http://{front}/site.css"),
    ]);
    assert_eq!(status, 200);
    assert!(body.starts_with("static GET /site.css"), "{body}");
    // The access line names the route that matched and the path the client asked for.
    wait_until_async(Duration::from_secs(5), "access lines", || {
        access(&d).iter().any(|e| e["path"] == "/api/users")
    })
    .await;
    let line = access(&d).into_iter().find(|e| e["path"] == "/api/users").unwrap();
    assert_eq!(line["route"], 2);
    assert_eq!(servers[1].count("GET"), 3);

    // Metrics: by frontend, route and server, all counted by status class.
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let m = |k: &str| metric(&api, k);
    assert_eq!(m("fulcrum_http_responses_total{frontend=\"web\",class=\"2xx\"}"), 15.0);
    assert_eq!(m("fulcrum_http_responses_total{frontend=\"web\",class=\"3xx\"}"), 1.0);
    assert_eq!(
        m("fulcrum_http_route_responses_total{frontend=\"web\",route=\"2\",class=\"2xx\"}"),
        3.0
    );
    assert_eq!(
        m("fulcrum_http_route_responses_total{frontend=\"web\",route=\"0\",class=\"3xx\"}"),
        1.0
    );
    let api_server = format!(
        "fulcrum_http_server_responses_total{{pool=\"api\",server=\"{}\",class=\"2xx\"}}",
        servers[1].addr
    );
    assert_eq!(m(&api_server), 3.0);
    assert_eq!(m("fulcrum_http_request_seconds_count{frontend=\"web\"}"), 16.0);
    assert_eq!(m("fulcrum_http_requests_active{frontend=\"web\"}"), 0.0);
    assert_eq!(m("fulcrum_http_retries_total{pool=\"site\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_and_sticky_pools_keep_each_user_on_one_server() {
    let servers: Vec<Scripted> =
        ["h1", "h2", "h3"].into_iter().map(|n| Scripted::start(n, Script::Answer)).collect();
    let list = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect::<Vec<_>>().join(", ");
    let d = Daemon::run_config(&http_config(
        2,
        &list,
        "",
        "algorithm = \"maglev\"\nhash = \"header:X-User\"",
    ));
    let front = d.addr("web");
    let mut placed: HashMap<u32, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..16u32 {
            let resp =
                ask(front, &format!("GET / HTTP/1.1\r\nHost: a\r\nX-User: u{user}\r\n\r\n")).await;
            let name = body_of(&resp).split(' ').next().unwrap().to_string();
            match placed.get(&user) {
                Some(before) => assert_eq!(before, &name, "user {user} moved in round {round}"),
                None => {
                    placed.insert(user, name);
                }
            }
        }
    }
    let distinct: std::collections::HashSet<_> = placed.values().collect();
    assert!(distinct.len() >= 2, "16 users all on one server: {placed:?}");

    // Sticky cookie: round-robin pool, the cookie pins the client; a down server's clients move.
    let d = Daemon::run_config(&http_config(
        1,
        &list,
        "",
        "sticky = { cookie = \"srv\", ttl = \"1h\" }",
    ));
    let front = d.addr("web");
    let first = ask(front, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let set = first
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {first}"))
        .to_string();
    assert!(set.contains("Max-Age=3600") && set.contains("HttpOnly"), "{set}");
    let value = set.split(';').next().unwrap().strip_prefix("srv=").unwrap().to_string();
    for s in &servers {
        assert!(!set.contains(&s.addr.to_string()) && !set.contains(&s.addr.port().to_string()));
    }
    let pinned = body_of(&first).split(' ').next().unwrap().to_string();
    for _ in 0..6 {
        let resp =
            ask(front, &format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; srv={value}\r\n\r\n"))
                .await;
        assert!(body_of(&resp).starts_with(&format!("{pinned} ")), "{resp}");
        assert!(!resp.contains("set-cookie"), "a pinned client got a new cookie: {resp}");
    }
    let i = ["h1", "h2", "h3"].iter().position(|n| *n == pinned).unwrap();
    servers[i].kill();
    let resp =
        ask(front, &format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: srv={value}\r\n\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(!body_of(&resp).starts_with(&format!("{pinned} ")), "{resp}");
    assert!(resp.contains("set-cookie: srv="), "a moved client keeps a dead server's cookie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_with_connection_close() {
    let slow = Scripted::start("slow", Script::Slow);
    let mut d = Daemon::run_config(&http_config(1, &format!("\"{}\"", slow.addr), "", ""));
    let front = d.addr("web");
    // An idle keep-alive client (one answered request) and one with a request in flight.
    let mut idle = TcpStream::connect(front).await.unwrap();
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let mut busy = TcpStream::connect(front).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let requests = slow.requests.clone();
    wait_until_async(Duration::from_secs(5), "the slow request at the server", || {
        requests.lock().unwrap().get("GET").copied().unwrap_or(0) >= 2
    })
    .await;
    d.signal(rustix::process::Signal::TERM);
    let answer = read_response(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{answer}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0))), "the connection stayed open after its last answer");
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0))), "an idle connection stayed open at shutdown");
    let status =
        tokio::task::spawn_blocking(move || d.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(status.success(), "{status:?}");
}
