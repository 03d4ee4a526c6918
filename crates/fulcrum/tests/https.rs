//! `protocol = "https"`: TLS terminated by fulcrum in front of an HTTP backend, with
//! certificates from a test CA made by `openssl` for each test run.
//!
//! * `certificates_follow_sni_and_both_http_versions_work`: curl with `--resolve` and the test
//!   CA over HTTP/1.1 and HTTP/2 (ALPN), `openssl s_client` shows the certificate chosen by
//!   SNI (exact name, wildcard, the first as default without SNI), `X-Forwarded-Proto: https`,
//!   h2load over TLS, the handshake metrics.
//! * `sni_strict_and_min_version_refuse_what_they_should`.
//! * `a_bad_certificate_stops_the_start_naming_the_file`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/tls.rs"]
mod tls_support;
use tls_support::Pki;

/// An HTTP/1 keep-alive backend answering `proto=<X-Forwarded-Proto>`.
fn backend() -> std::net::SocketAddr {
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    let proto = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-forwarded-proto:"))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    let body = format!("proto={proto}\n");
                    let resp =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(server: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
workers = 2
[admin]
bind = "127.0.0.1:0"

[frontend.web]
bind = "127.0.0.1:0"
protocol = "https"
pool = "app"

{tls}
[pool.app]
servers = ["{server}"]
"#
    )
}

/// curl through the frontend as `name` (resolved to the frontend), verifying with the test CA:
/// (exit success, body, `%{http_version}`).
fn curl(pki: &Pki, front: std::net::SocketAddr, name: &str, extra: &[&str]) -> (bool, String) {
    let port = front.port();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(["-w", "|%{http_version}"])
        .args(extra)
        .arg(format!("https://{name}:{port}/x"))
        .output()
        .expect("curl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `openssl s_client` against the frontend: (handshake ok, its output).
fn s_client(pki: &Pki, front: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &front.to_string(), "-CAfile"])
        .arg(pki.path("ca.pem"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("Verify return code: 0 (ok)"), text)
}

fn subject(text: &str) -> String {
    text.lines().find(|l| l.starts_with("subject=")).unwrap_or("").replace(' ', "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_follow_sni_and_both_http_versions_work() {
    let pki = Pki::make();
    let d = Daemon::run_config(&config(backend(), &pki.tls_table("")));
    let front = d.addr("web");
    let run = |f: Box<dyn FnOnce() -> (bool, String) + Send>| tokio::task::spawn_blocking(f);

    let pki = std::sync::Arc::new(pki);
    let (k, f) = (pki.clone(), front);
    let (ok, out) = run(Box::new(move || curl(&k, f, "a.test", &["--http1.1"]))).await.unwrap();
    assert!(ok, "{out}");
    assert_eq!(out, "proto=https\n|1.1");
    let (k, f) = (pki.clone(), front);
    let (ok, out) = run(Box::new(move || curl(&k, f, "www.b.test", &["--http2"]))).await.unwrap();
    assert!(ok, "{out}");
    assert_eq!(out, "proto=https\n|2");

    for (sni, want) in [
        (Some("a.test"), "CN=a.test"),
        (Some("x.b.test"), "CN=*.b.test"),
        (Some("unknown.test"), "CN=a.test"),
        (None, "CN=a.test"),
    ] {
        let mut args = vec!["-brief"];
        match sni {
            Some(n) => args.extend_from_slice(&["-servername", n]),
            None => args.push("-noservername"),
        }
        let (k, f) = (pki.clone(), front);
        let (_, text) = tokio::task::spawn_blocking(move || s_client(&k, f, &args)).await.unwrap();
        let subject = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Peer certificate:"))
            .map(|s| s.replace(' ', ""))
            .unwrap_or_else(|| subject(&text));
        assert!(subject.contains(want), "SNI {sni:?}: wanted {want}, got {subject:?}\n{text}");
    }

    let out = tokio::task::spawn_blocking(move || {
        Command::new("h2load")
            .args(["-n", "400", "-c", "4", "-m", "10"])
            .arg(format!("https://127.0.0.1:{}/", front.port()))
            .output()
            .expect("h2load")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("400 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");

    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let ok = metric(&api, "fulcrum_tls_handshakes_total{frontend=\"web\",result=\"ok\"}");
    assert!(ok >= 10.0, "{ok}");
    assert!(metric(&api, "fulcrum_tls_handshakes_alpn_h2_total{frontend=\"web\"}") >= 5.0);
    assert!(metric(&api, "fulcrum_tls_handshake_seconds_count{frontend=\"web\"}") >= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_strict_and_min_version_refuse_what_they_should() {
    let pki = std::sync::Arc::new(Pki::make());
    let d = Daemon::run_config(&config(
        backend(),
        &pki.tls_table("sni_strict = true\nmin_version = \"1.3\""),
    ));
    let front = d.addr("web");
    let k = pki.clone();
    let results = tokio::task::spawn_blocking(move || {
        (
            curl(&k, front, "a.test", &[]),
            s_client(&k, front, &["-servername", "nobody.test"]),
            s_client(&k, front, &["-servername", "a.test", "-tls1_2"]),
            s_client(&k, front, &["-servername", "a.test", "-tls1_3"]),
        )
    })
    .await
    .unwrap();
    let (known, unknown, tls12, tls13) = results;
    assert!(known.0, "a known name is served: {}", known.1);
    assert!(!unknown.0, "an unknown name got a certificate under sni_strict: {}", unknown.1);
    assert!(!tls12.0, "TLS 1.2 accepted with min_version = 1.3: {}", tls12.1);
    assert!(tls13.0, "TLS 1.3 refused: {}", tls13.1);
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let failed = metric(&api, "fulcrum_tls_handshakes_total{frontend=\"web\",result=\"failed\"}");
    assert!(failed >= 2.0, "{failed}");
}

#[test]
fn a_bad_certificate_stops_the_start_naming_the_file() {
    let pki = Pki::make();
    std::fs::write(pki.path("b.pem"), "not a certificate\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.toml");
    let server: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(&cfg, config(server, &pki.tls_table(""))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let b = pki.path("b.pem");
    assert!(err.contains(&format!("frontend web: certificate {}", b.display())), "{err}");
    // `fulcrum check` reads the certificates too, and refuses the same file (exit 2).
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("frontend web: certificate {}", b.display())), "{err}");
}

/// TLS 1.2 sessions through `openssl s_client -sess_out` / `-sess_in`: resumed by default
/// (a ticket), never with `session_resumption = false` (every handshake a full one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumption_is_on_by_default_and_can_be_turned_off() {
    let pki = std::sync::Arc::new(Pki::make());
    for (extra, resumed) in [("", true), ("session_resumption = false", false)] {
        let d = Daemon::run_config(&config(backend(), &pki.tls_table(extra)));
        let front = d.addr("web");
        let k = pki.clone();
        let sess = k.path(&format!("sess-{resumed}.pem"));
        let (first, second) = tokio::task::spawn_blocking(move || {
            let s = sess.to_string_lossy().into_owned();
            let first = s_client(&k, front, &["-servername", "a.test", "-tls1_2", "-sess_out", &s]);
            // s_client writes no file for a session that cannot be resumed (no ticket, no id).
            let second = std::path::Path::new(&s).exists().then(|| {
                s_client(&k, front, &["-servername", "a.test", "-tls1_2", "-sess_in", &s])
            });
            (first, second)
        })
        .await
        .unwrap();
        assert!(first.0 && first.1.contains("New,"), "first handshake: {}", first.1);
        let text = second.map(|(_, t)| t).unwrap_or_default();
        let reused = text.contains("Reused,");
        assert_eq!(reused, resumed, "{extra:?}: {text}");
        if !resumed {
            // Served by a full handshake all the same.
            let k = pki.clone();
            let again = tokio::task::spawn_blocking(move || {
                s_client(&k, front, &["-servername", "a.test", "-tls1_2"])
            });
            let again = again.await.unwrap();
            assert!(again.0 && again.1.contains("New,"), "{}", again.1);
        }
    }
}
