//! TLS to servers (`[pool.X.tls]`) end to end: the real binary in front of servers that
//! terminate TLS themselves (nginx, HAProxy), with certificates from test CAs made by
//! `openssl` for each run.
//!
//! * `tcp_is_re_encrypted_bytes_intact_with_a_client_certificate`: TCP frontends to HAProxy
//!   (`ssl ... verify required`) in front of an echo server; SHA-256 of 4 MiB each way on three
//!   connections at once, verified by IP and by `server_name`; without a client certificate
//!   HAProxy refuses and the client gets nothing.
//! * `http_pools_speak_tls_to_nginx_over_h1_and_h2`: ALPN, SNI and the client certificate as
//!   nginx (`ssl_verify_client on`) saw them; a pool without the certificate gets nginx's 400;
//!   kept-alive server connections (few handshakes for many requests).
//! * `unverifiable_servers_are_refused_counted_and_retried_elsewhere`: another CA's
//!   certificate answers 502 and counts as a failed handshake;
//!   `verify = false` works and is logged at start; a pool with one bad server still answers
//!   every request (the next server is tried); a TCP client of a bad pool is closed.
//! * `a_server_name_the_certificate_lacks_is_refused`: 502, counted, the reason logged.
//! * `health_checks_go_through_tls_and_mark_a_broken_server_down`: http and tcp checks.
//! * `a_reload_reads_changed_tls_files_and_a_bad_one_keeps_what_serves`.
//! * `a_bad_ca_file_stops_the_start_and_check_naming_pool_and_file`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

include!("support/servers.rs");
include!("support/pki.rs");

/// CA `ca` with a server certificate (`backend.test` and 127.0.0.1) and a client
/// certificate; CA `other` with a server certificate for the same names.
fn pki() -> Pki {
    let pki = Pki::new();
    pki.ca("ca", "fulcrum test CA");
    pki.ca("other", "another CA");
    pki.leaf("ca", "server", "backend.test", "DNS:backend.test,IP:127.0.0.1");
    pki.leaf("other", "stranger", "backend.test", "DNS:backend.test,IP:127.0.0.1");
    pki.leaf("ca", "client", "fulcrum-client", "DNS:client.test");
    pki
}

/// nginx terminating TLS (HTTP/1.1 and h2) with certificate `cert` of `pki`, `extra` in its
/// server block; it answers with what it saw of the TLS connection.
fn tls_nginx(pki: &Pki, cert: &str, extra: &str) -> TestServer {
    let (pem, key) = (pki.toml(&format!("{cert}.pem")), pki.toml(&format!("{cert}.key")));
    nginx_http(|port| {
        format!(
            r#"
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {pem};
        ssl_certificate_key {key};
        {extra}
        location / {{
            return 200 "proto=$server_protocol sni=$ssl_server_name alpn=$ssl_alpn_protocol client=$ssl_client_s_dn\n";
        }}
    }}
"#
        )
    })
}

/// `[pool.NAME.tls]` with the CA `ca` of `pki` and `extra` lines.
fn tls_table(pool: &str, pki: &Pki, ca: &str, extra: &str) -> String {
    format!("[pool.{pool}.tls]\nca = \"{}\"\n{extra}\n", pki.toml(&format!("{ca}.pem")))
}

/// The client certificate's keys of a `[pool.X.tls]` table.
fn client_cert(pki: &Pki) -> String {
    format!("cert = \"{}\"\nkey = \"{}\"", pki.toml("client.pem"), pki.toml("client.key"))
}

/// curl's (status, body) for `url`; status 0 when there was no answer.
fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn api(d: &Daemon) -> String {
    format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap())
}

fn handshakes(api: &str, pool: &str, result: &str) -> f64 {
    metric(
        api,
        &format!("fulcrum_upstream_tls_handshakes_total{{pool=\"{pool}\",result=\"{result}\"}}"),
    )
}

/// Sends `n` random bytes through `front` and reads the echo: (SHA-256 sent, SHA-256 back).
async fn echo_through(front: std::net::SocketAddr, n: usize) -> ([u8; 32], [u8; 32]) {
    let s = TcpStream::connect(front).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let mut rng = fastrand::Rng::new();
    let data: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
    let sent: [u8; 32] = Sha256::digest(&data).into();
    let send = async move {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let recv = async move {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await.unwrap() {
                0 => break,
                k => h.update(&buf[..k]),
            }
        }
        let got: [u8; 32] = h.finalize().into();
        got
    };
    let (_, back) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) })
            .await
            .expect("the echo did not finish within 30 s");
    (sent, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_is_re_encrypted_bytes_intact_with_a_client_certificate() {
    let pki = pki();
    let echo = Backend::start(Mode::Echo).await;
    let h = haproxy(&format!(
        "listen l\n    mode tcp\n    bind 127.0.0.1:{{port}} ssl crt {} ca-file {} verify required\n    \
         server s {}\n",
        pki.toml("server.both"),
        pki.toml("ca.pem"),
        echo.addr
    ));
    let server = h.addr();
    let cert = client_cert(&pki);
    let toml = format!(
        r#"
workers = 2
access_log = true
[admin]
bind = "127.0.0.1:0"
[frontend.ip]
bind = "127.0.0.1:0"
pool = "ip"
[frontend.named]
bind = "127.0.0.1:0"
pool = "named"
[frontend.nocert]
bind = "127.0.0.1:0"
pool = "nocert"
[pool.ip]
servers = ["{server}"]
{}
[pool.named]
servers = ["{server}"]
{}
[pool.nocert]
servers = ["{server}"]
{}
"#,
        tls_table("ip", &pki, "ca", &cert),
        tls_table("named", &pki, "ca", &format!("server_name = \"backend.test\"\n{cert}")),
        tls_table("nocert", &pki, "ca", ""),
    );
    let d = Daemon::run_config(&toml);
    const N: usize = 4 << 20;
    let runs =
        [d.addr("ip"), d.addr("ip"), d.addr("named")].map(|f| tokio::spawn(echo_through(f, N)));
    for run in runs {
        let (sent, back) = run.await.unwrap();
        assert_eq!(sent, back, "the bytes changed on their way through TLS");
    }
    let api = api(&d);
    assert!(handshakes(&api, "ip", "ok") >= 2.0);
    assert!(handshakes(&api, "named", "ok") >= 1.0);
    wait_until_async(Duration::from_secs(5), "three access lines of 4 MiB each way", || {
        let log = d.log.lock().unwrap();
        let full = |e: &&serde_json::Value| {
            e["target"] == "fulcrum::access" && e["bytes_in"] == N && e["bytes_out"] == N
        };
        log.iter().filter(full).filter(|e| e["outcome"] == "done").count() == 3
    })
    .await;

    // Without a client certificate HAProxy ends the connection after the handshake: the client
    // gets no byte of an answer.
    let mut s = TcpStream::connect(d.addr("nocert")).await.unwrap();
    let _ = s.write_all(b"hello?").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the client was not closed");
    assert!(got.is_empty(), "an answer came without a client certificate: {got:?}");
    wait_until_async(Duration::from_secs(5), "the refused connection's access line", || {
        d.log.lock().unwrap().iter().any(|e| {
            e["target"] == "fulcrum::access" && e["frontend"] == "nocert" && e["bytes_out"] == 0
        })
    })
    .await;
}

#[test]
fn http_pools_speak_tls_to_nginx_over_h1_and_h2() {
    let pki = pki();
    let ca = pki.toml("ca.pem");
    let n = tls_nginx(
        &pki,
        "server",
        &format!("ssl_verify_client on;\n        ssl_client_certificate {ca};"),
    );
    let server = n.addr();
    let cert = client_cert(&pki);
    let toml = format!(
        r#"
workers = 2
[admin]
bind = "127.0.0.1:0"
[frontend.h1]
bind = "127.0.0.1:0"
protocol = "http"
pool = "h1"
[frontend.h2]
bind = "127.0.0.1:0"
protocol = "http"
pool = "h2"
[frontend.nocert]
bind = "127.0.0.1:0"
protocol = "http"
pool = "nocert"
[pool.h1]
servers = ["{server}"]
{}
[pool.h2]
servers = ["{server}"]
[pool.h2.http]
version = "h2"
{}
[pool.nocert]
servers = ["{server}"]
{}
"#,
        tls_table("h1", &pki, "ca", &format!("server_name = \"backend.test\"\n{cert}")),
        tls_table("h2", &pki, "ca", &cert),
        tls_table("nocert", &pki, "ca", ""),
    );
    let d = Daemon::run_config(&toml);
    for _ in 0..10 {
        let (status, body) = curl(&format!("http://{}/x", d.addr("h1")));
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            "proto=HTTP/1.1 sni=backend.test alpn=http/1.1 client=CN=fulcrum-client\n"
        );
    }
    // Verified against the address (no server_name, the server given by IP): no SNI.
    let (status, body) = curl(&format!("http://{}/x", d.addr("h2")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "proto=HTTP/2.0 sni= alpn=h2 client=CN=fulcrum-client\n");
    let (status, body) = curl(&format!("http://{}/x", d.addr("nocert")));
    assert_eq!(status, 400, "nginx requires a client certificate: {body}");
    assert!(body.contains("No required SSL certificate was sent"), "{body}");

    let api = api(&d);
    // Server connections are kept alive: at most one handshake per worker for ten requests.
    let ok = handshakes(&api, "h1", "ok");
    assert!((1.0..=2.0).contains(&ok), "{ok} handshakes for 10 requests");
    assert_eq!(handshakes(&api, "h1", "failed"), 0.0);
    assert_eq!(handshakes(&api, "h2", "ok"), 1.0);
}

#[test]
fn unverifiable_servers_are_refused_counted_and_retried_elsewhere() {
    let pki = pki();
    let good = tls_nginx(&pki, "server", "");
    let stranger = tls_nginx(&pki, "stranger", "");
    let (good, stranger) = (good.addr(), stranger.addr());
    let toml = format!(
        r#"
workers = 1
access_log = true
[admin]
bind = "127.0.0.1:0"
[frontend.wrongca]
bind = "127.0.0.1:0"
protocol = "http"
pool = "wrongca"
[frontend.tcpwrongca]
bind = "127.0.0.1:0"
pool = "wrongca"
[frontend.noverify]
bind = "127.0.0.1:0"
protocol = "http"
pool = "noverify"
[frontend.mixed]
bind = "127.0.0.1:0"
protocol = "http"
pool = "mixed"
[pool.wrongca]
servers = ["{stranger}"]
retries = 0
{}
[pool.noverify]
servers = ["{stranger}"]
[pool.noverify.tls]
verify = false
[pool.mixed]
servers = ["{stranger}", "{good}"]
[pool.mixed.eject]
failures = 1000
{}
"#,
        tls_table("wrongca", &pki, "ca", ""),
        tls_table("mixed", &pki, "ca", ""),
    );
    let d = Daemon::run_config(&toml);
    let warned = d.events(
        "TLS to the servers of this pool does not verify their certificates (verify = false)",
    );
    let pools: Vec<&str> = warned.iter().filter_map(|e| e["pool"].as_str()).collect();
    assert_eq!(pools, ["noverify"], "the start warns about verify = false, naming the pool");

    let (status, body) = curl(&format!("http://{}/x", d.addr("wrongca")));
    assert_eq!(status, 502, "{body}");
    let (status, body) = curl(&format!("http://{}/x", d.addr("noverify")));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("proto=HTTP/1.1 "), "{body}");
    // Every request of a pool with one unverifiable server is answered: a request sent to it
    // goes on to the other server (no ejection within 1,000 failures: both are tried each round).
    for i in 0..6 {
        let (status, body) = curl(&format!("http://{}/x", d.addr("mixed")));
        assert_eq!(status, 200, "request {i}: {body}");
    }

    let api = api(&d);
    assert!(handshakes(&api, "wrongca", "failed") >= 1.0);
    assert!(handshakes(&api, "mixed", "failed") >= 2.0);
    assert!(handshakes(&api, "mixed", "ok") >= 1.0);
    assert_eq!(handshakes(&api, "noverify", "failed"), 0.0);
    let errors = |pool: &str, server: &str| {
        metric(
            &api,
            &format!("fulcrum_server_connect_errors_total{{pool=\"{pool}\",server=\"{server}\"}}"),
        )
    };
    assert!(errors("mixed", &stranger) >= 2.0, "the unverifiable server is blamed");
    assert_eq!(errors("mixed", &good), 0.0);
    let failures: Vec<String> = d
        .events("connect to server failed")
        .iter()
        .map(|e| format!("{} {}", e["pool"], e["error"]))
        .collect();
    let said =
        |pool: &str, what: &str| failures.iter().any(|f| f.contains(pool) && f.contains(what));
    assert!(said("wrongca", "UnknownIssuer"), "{failures:?}");

    // A TCP client of the same pool: no server can be reached, the client is closed.
    let mut s = std::net::TcpStream::connect(d.addr("tcpwrongca")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let read = std::io::Read::read_to_end(&mut s, &mut got);
    assert!(read.is_ok() && got.is_empty(), "{read:?} {got:?}");
    wait_until(Duration::from_secs(5), "the TCP client's access line", || {
        d.log.lock().unwrap().iter().any(|e| {
            e["target"] == "fulcrum::access"
                && e["frontend"] == "tcpwrongca"
                && e["outcome"] == "no-server"
        })
    });
}

#[test]
fn a_server_name_the_certificate_lacks_is_refused() {
    let pki = pki();
    let good = tls_nginx(&pki, "server", "");
    let toml = format!(
        r#"
workers = 1
[admin]
bind = "127.0.0.1:0"
[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "badname"
[pool.badname]
servers = ["{}"]
{}
"#,
        good.addr(),
        tls_table("badname", &pki, "ca", "server_name = \"wrong.test\""),
    );
    let d = Daemon::run_config(&toml);
    let (status, body) = curl(&format!("http://{}/x", d.addr("web")));
    assert_eq!(status, 502, "{body}");
    assert!(handshakes(&api(&d), "badname", "failed") >= 1.0);
    let failed = d.find("connect to server failed").unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("certificate not valid for name \"wrong.test\""), "{error}");
}

#[test]
fn health_checks_go_through_tls_and_mark_a_broken_server_down() {
    let pki = pki();
    let logs = tempfile::tempdir().unwrap();
    let health_log = logs.path().join("health.log");
    let good = tls_nginx(
        &pki,
        "server",
        &format!(
            "location = /health {{ access_log {} combined; return 200 \"ok $ssl_protocol\"; }}",
            health_log.display()
        ),
    );
    let stranger = tls_nginx(&pki, "stranger", "");
    let (good, stranger) = (good.addr(), stranger.addr());
    let toml = format!(
        r#"
workers = 1
[admin]
bind = "127.0.0.1:0"
[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "checked"
[frontend.raw]
bind = "127.0.0.1:0"
pool = "tcpchecked"
[pool.checked]
servers = ["{good}", "{stranger}"]
[pool.checked.health]
kind = "http"
path = "/health"
expect_body = "ok TLS"
interval = "100ms"
timeout = "2s"
fall = 2
rise = 2
{}
[pool.tcpchecked]
servers = ["{stranger}"]
[pool.tcpchecked.health]
kind = "tcp"
interval = "100ms"
fall = 2
{}
"#,
        tls_table("checked", &pki, "ca", ""),
        tls_table("tcpchecked", &pki, "ca", ""),
    );
    let d = Daemon::run_config(&toml);
    let down = |pool: &str| {
        d.events("server health changed").into_iter().find(|e| {
            e["pool"] == pool && e["server"] == stranger.as_str() && e["health"] == "down"
        })
    };
    wait_until(Duration::from_secs(10), "the unverifiable server to be marked down", || {
        down("checked").is_some() && down("tcpchecked").is_some()
    });
    for pool in ["checked", "tcpchecked"] {
        let reason = down(pool).unwrap()["reason"].as_str().unwrap().to_string();
        assert!(reason.starts_with("TLS handshake failed: "), "{pool}: {reason}");
    }
    // The good server answered checks over TLS (nginx logged them), and is still up.
    wait_until(Duration::from_secs(10), "three checks at the good server", || {
        std::fs::read_to_string(&health_log).unwrap_or_default().lines().count() >= 3
    });
    let api = api(&d);
    let up = |server: &str| {
        metric(&api, &format!("fulcrum_server_up{{pool=\"checked\",server=\"{server}\"}}"))
    };
    assert_eq!((up(&good), up(&stranger)), (1.0, 0.0));
    assert!(!d.events("server health changed").iter().any(|e| e["server"] == good.as_str()));
    // Requests go to the good server only.
    for _ in 0..4 {
        let (status, body) = curl(&format!("http://{}/x", d.addr("web")));
        assert_eq!(status, 200, "{body}");
    }
}

#[test]
fn a_reload_reads_changed_tls_files_and_a_bad_one_keeps_what_serves() {
    let pki = pki();
    let n = tls_nginx(&pki, "server", "");
    // The pool's CA file starts as the wrong CA.
    let ca = pki.path("pool-ca.pem");
    std::fs::copy(pki.path("other.pem"), &ca).unwrap();
    let toml = format!(
        "workers = 1\n[frontend.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"app\"\n\
         [pool.app]\nservers = [\"{}\"]\n[pool.app.tls]\nca = \"{}\"\n",
        n.addr(),
        ca.display()
    );
    let d = Daemon::run_config(&toml);
    let url = format!("http://{}/x", d.addr("web"));
    assert_eq!(curl(&url).0, 502);
    let reload = |d: &Daemon, what: &str, count: &dyn Fn(&Daemon) -> usize| {
        let before = count(d);
        d.signal(rustix::process::Signal::HUP);
        wait_until(Duration::from_secs(10), what, || count(d) > before);
    };
    let reloaded = |d: &Daemon| d.count("configuration reloaded");
    let failed = |d: &Daemon| {
        d.log
            .lock()
            .unwrap()
            .iter()
            .filter(|v| {
                v["message"].as_str().is_some_and(|m| m.starts_with("reload on SIGHUP failed"))
            })
            .count()
    };
    // The right CA in the same file: a reload reads it again (the settings did not change,
    // the file did).
    std::fs::copy(pki.path("ca.pem"), &ca).unwrap();
    reload(&d, "the reload", &reloaded);
    assert_eq!(curl(&url).0, 200);
    // A file that is no CA bundle: the reload fails naming it, and the last good settings
    // keep serving.
    std::fs::write(&ca, "garbage\n").unwrap();
    reload(&d, "the failed reload", &failed);
    let e = d
        .log
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("reload on SIGHUP failed")))
        .cloned()
        .unwrap();
    let said = e.to_string();
    assert!(said.contains(&format!("pool app: ca {}", ca.display())), "{said}");
    assert_eq!(curl(&url).0, 200);
}

#[test]
fn a_bad_ca_file_stops_the_start_and_check_naming_pool_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let cfg = dir.path().join("f.toml");
    std::fs::write(
        &cfg,
        format!(
            "[frontend.web]\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[pool.app]\n\
             servers = [\"127.0.0.1:9\"]\n[pool.app.tls]\nca = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let want = format!("pool app: ca {}: ", ca.display());
    for cmd in ["run", "check"] {
        let out = Command::new(BIN).args([cmd, "--config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {err}");
        assert!(err.contains(&want), "{cmd}: {err}");
    }
}
