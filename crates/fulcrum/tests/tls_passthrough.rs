//! TLS passthrough routed by SNI: backends that terminate TLS themselves, each with its own
//! certificate from a test CA made by `openssl` for each run, behind one fulcrum port.
//!
//! * `each_name_reaches_its_own_backend_with_its_own_certificate`: `openssl s_client
//!   -servername` and a verifying rustls client see each backend's certificate (exact name,
//!   a one-label wildcard); an unknown name, a deeper name and no SNI go to the frontend's
//!   pool; the metrics count it all.
//! * `a_64_mib_passthrough_keeps_every_byte`: SHA-256 equal at both ends, both ways, with
//!   the copy engine's buffers and with splice(2).
//! * `an_https_frontend_terminates_some_names_and_passes_others_through`: one port, curl gets
//!   fulcrum's own certificate and an HTTP answer for one name, another name is the
//!   backend's TLS end to end.
//! * `clients_without_a_client_hello_are_closed_at_sni_timeout`: nothing sent, half a
//!   ClientHello; plain text goes to the frontend's pool at once.
//! * `a_proxy_header_comes_before_the_client_hello`: `accept_proxy` and routes by SNI.
//! * `a_reload_moves_a_name_to_another_pool`.
//! * `fulcrum_check_warns_about_a_name_an_earlier_route_has`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

include!("support/pki.rs");

const LEAVES: &[(&str, &[&str])] = &[
    ("a", &["a.test"]),
    ("b", &["b.test", "*.wild.test"]),
    ("d", &["default.test"]),
    ("c", &["c.test"]),
];

impl Pki {
    /// A test CA and the leaves above signed by it, each `{stem}.pem`/`{stem}.key` with its
    /// subject alternative names.
    fn make() -> Pki {
        let pki = Pki::new();
        pki.ca("ca", "fulcrum test CA");
        for (stem, names) in LEAVES {
            let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
            pki.leaf("ca", stem, names[0], &sans.join(","));
        }
        pki
    }

    fn certs(&self, stem: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = CertificateDer::pem_file_iter(self.path(&format!("{stem}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (chain, PrivateKeyDer::from_pem_file(self.path(&format!("{stem}.key"))).unwrap())
    }
}

// ring's provider, as fulcrum's (docs/tls.md).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS backend with certificate `stem`, serving after its handshake one command line:
/// `who` (answers `backend=TAG`), `sha` (reads to the end, answers the SHA-256 of what came
/// after the line), `get N` (sends N bytes of `stream(N)`).
struct TlsBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicU64>,
}

fn tls_backend(pki: &Pki, stem: &str, tag: &'static str) -> TlsBackend {
    let (chain, key) = pki.certs(stem);
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicU64::new(0));
    let counted = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else { return };
                let mut tls = BufReader::new(tls);
                let mut line = String::new();
                if tls.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match line.trim() {
                    "who" => format!("backend={tag}\n").into_bytes(),
                    "sha" => {
                        let mut h = Sha256::new();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) => break,
                                Ok(n) => h.update(&buf[..n]),
                                Err(_) => return,
                            }
                        }
                        format!("{}\n", hex(&h.finalize())).into_bytes()
                    }
                    cmd => match cmd.strip_prefix("get ").and_then(|n| n.parse::<usize>().ok()) {
                        Some(n) => {
                            let mut left = n;
                            let mut rng = fastrand::Rng::with_seed(n as u64);
                            let mut chunk = vec![0u8; 256 * 1024];
                            while left > 0 {
                                let k = left.min(chunk.len());
                                rng.fill(&mut chunk[..k]);
                                if tls.write_all(&chunk[..k]).await.is_err() {
                                    return;
                                }
                                left -= k;
                            }
                            Vec::new()
                        }
                        None => return,
                    },
                };
                let _ = tls.write_all(&answer).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsBackend { addr, accepts }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A verifying TLS client (the test CA) through `front`, sending `sni` (or none, still
/// checking the certificate against `name`).
async fn tls_client(
    pki: &Pki,
    front: SocketAddr,
    sni: Option<&str>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or(name).to_string()).unwrap();
    let tcp = TcpStream::connect(front).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

/// `who` over a verified TLS connection: the backend's tag.
async fn who(pki: &Pki, front: SocketAddr, sni: Option<&str>, name: &str) -> String {
    let mut tls = tls_client(pki, front, sni, name).await.unwrap();
    tls.write_all(b"who\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    answer.trim().to_string()
}

/// The subject of the certificate `openssl s_client` gets through `front` (verified with the
/// test CA) with `-servername sni`, or with none.
fn s_client_subject(pki: &Pki, front: SocketAddr, sni: Option<&str>) -> (bool, String) {
    let mut args = vec!["s_client", "-brief", "-connect"];
    let front = front.to_string();
    args.push(&front);
    match sni {
        Some(n) => args.extend_from_slice(&["-servername", n]),
        None => args.push("-noservername"),
    }
    let out = Command::new("openssl")
        .args(&args)
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let subject = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Peer certificate:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("subject=")))
        .map(|s| s.replace(' ', ""))
        .unwrap_or_default();
    let verified = text.contains("Verification: OK") || text.contains("Verify return code: 0");
    (verified, if subject.is_empty() { text } else { subject })
}

/// A frontend `tls` (tcp, routes `a.test` → A, `b.test` and `*.wild.test` → B, the rest to D)
/// and `slow` (the same routes with a short `sni_timeout`, default pool a plain echo server).
fn tcp_config(a: SocketAddr, b: SocketAddr, d: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"
workers = 2
[admin]
bind = "127.0.0.1:0"

[frontend.tls]
bind = "127.0.0.1:0"
pool = "fallback"

[[frontend.tls.route]]
sni = "a.test"
pool = "a"

[[frontend.tls.route]]
sni = ["b.test", "*.wild.test"]
pool = "b"

[frontend.slow]
bind = "127.0.0.1:0"
pool = "echo"
sni_timeout = "1s"

[[frontend.slow.route]]
sni = "a.test"
pool = "a"

[pool.a]
servers = ["{a}"]
[pool.b]
servers = ["{b}"]
[pool.fallback]
servers = ["{d}"]
[pool.echo]
servers = ["{echo}"]
"#
    )
}

fn api(d: &Daemon) -> String {
    format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_reaches_its_own_backend_with_its_own_certificate() {
    let pki = Arc::new(Pki::make());
    let (a, b, d) =
        (tls_backend(&pki, "a", "a"), tls_backend(&pki, "b", "b"), tls_backend(&pki, "d", "d"));
    let echo = Backend::start(Mode::Echo).await;
    let daemon = Daemon::run_config(&tcp_config(a.addr, b.addr, d.addr, echo.addr));
    let front = daemon.addr("tls");

    // openssl: each name gets its backend's certificate, verified against the test CA.
    for (sni, want) in [
        (Some("a.test"), "CN=a.test"),
        (Some("A.Test."), "CN=a.test"),
        (Some("b.test"), "CN=b.test"),
        (Some("x.wild.test"), "CN=b.test"),
        (Some("x.y.wild.test"), "CN=default.test"),
        (Some("unknown.test"), "CN=default.test"),
        (None, "CN=default.test"),
    ] {
        let k = pki.clone();
        let (_, subject) =
            tokio::task::spawn_blocking(move || s_client_subject(&k, front, sni)).await.unwrap();
        assert!(subject.contains(want), "SNI {sni:?}: wanted {want}, got {subject}");
    }
    // A verifying client: the backend itself answers, behind its own certificate.
    assert_eq!(who(&pki, front, Some("a.test"), "").await, "backend=a");
    assert_eq!(who(&pki, front, Some("b.test"), "").await, "backend=b");
    assert_eq!(who(&pki, front, Some("x.wild.test"), "").await, "backend=b");
    assert_eq!(who(&pki, front, None, "default.test").await, "backend=d");
    assert_eq!(who(&pki, front, Some("default.test"), "").await, "backend=d");
    // D's certificate is not valid for unknown.test: that name really reached D.
    assert!(tls_client(&pki, front, Some("unknown.test"), "").await.is_err());

    let api = api(&daemon);
    let m = |k: &str| metric(&api, k);
    let routed =
        |r: &str| m(&format!("fulcrum_sni_routed_total{{frontend=\"tls\",route=\"{r}\"}}"));
    // s_client: a ×2, b, wild, deeper, unknown, none; rustls: a, b, wild, none, default, unknown.
    assert_eq!(routed("0"), 3.0);
    assert_eq!(routed("1"), 4.0);
    assert_eq!(routed("default"), 6.0);
    let hellos =
        |r: &str| m(&format!("fulcrum_sni_hellos_total{{frontend=\"tls\",result=\"{r}\"}}"));
    assert_eq!(hellos("sni"), 11.0);
    assert_eq!(hellos("no-sni"), 2.0);
    assert_eq!(hellos("timeout"), 0.0);
    assert_eq!(a.accepts.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_passthrough_keeps_every_byte() {
    let pki = Arc::new(Pki::make());
    let (a, b, d) =
        (tls_backend(&pki, "a", "a"), tls_backend(&pki, "b", "b"), tls_backend(&pki, "d", "d"));
    let echo = Backend::start(Mode::Echo).await;
    // The copy engine's choice on loopback (buffers), and splice(2) from the first byte: the
    // ClientHello was only peeked at, so nothing has to be written before the splice.
    for splice in ["auto", "always"] {
        let toml = tcp_config(a.addr, b.addr, d.addr, echo.addr);
        let daemon = Daemon::run_config_with(&toml, &["--splice", splice]);
        transfer_64_mib(&pki, &daemon, splice).await;
    }
}

async fn transfer_64_mib(pki: &Pki, daemon: &Daemon, splice: &str) {
    const SIZE: usize = 64 << 20;
    let front = daemon.addr("tls");
    let started = Instant::now();

    // Up: 64 MiB of random bytes, hashed here and by backend B.
    let mut tls = tls_client(pki, front, Some("b.test"), "").await.unwrap();
    tls.write_all(b"sha\n").await.unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut h = Sha256::new();
    for _ in 0..SIZE / chunk.len() {
        rng.fill(&mut chunk);
        h.update(&chunk);
        tls.write_all(&chunk).await.unwrap();
    }
    tls.shutdown().await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer.trim(), hex(&h.finalize()), "SHA-256 of 64 MiB sent through passthrough");

    // Down: 64 MiB from backend A, hashed at both ends.
    let mut tls = tls_client(pki, front, Some("a.test"), "").await.unwrap();
    tls.write_all(format!("get {SIZE}\n").as_bytes()).await.unwrap();
    let mut got = Sha256::new();
    let mut n = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match tls.read(&mut buf).await.unwrap() {
            0 => break,
            k => {
                got.update(&buf[..k]);
                n += k;
            }
        }
    }
    let mut want = Sha256::new();
    let mut rng = fastrand::Rng::with_seed(SIZE as u64);
    for _ in 0..SIZE / chunk.len() {
        rng.fill(&mut chunk);
        want.update(&chunk);
    }
    assert_eq!(n, SIZE);
    assert_eq!(hex(&got.finalize()), hex(&want.finalize()), "SHA-256 of 64 MiB received");
    eprintln!("128 MiB through passthrough (--splice {splice}) in {:?}", started.elapsed());

    let api = api(daemon);
    let bytes = metric(&api, "fulcrum_frontend_received_bytes_total{frontend=\"tls\"}");
    assert!(bytes >= SIZE as f64, "{bytes}");
}

/// An HTTP/1 backend answering `proto=<X-Forwarded-Proto>` once per connection.
fn http_backend() -> SocketAddr {
    let l = listen_any();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let proto = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-forwarded-proto:"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let body = format!("proto={proto}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_frontend_terminates_some_names_and_passes_others_through() {
    let pki = Arc::new(Pki::make());
    let a = tls_backend(&pki, "a", "a");
    let web = http_backend();
    let toml = format!(
        r#"
workers = 2
access_log = true
[admin]
bind = "127.0.0.1:0"

[frontend.web]
bind = "127.0.0.1:0"
protocol = "https"
pool = "site"

[[frontend.web.route]]
sni = "a.test"
passthrough = true
pool = "a"

[[frontend.web.route]]
path_prefix = "/"
pool = "site"

[frontend.web.tls]
certificates = [{{ cert = "{c}", key = "{ck}" }}]

[pool.a]
servers = ["{a}"]
[pool.site]
servers = ["{web}"]
"#,
        a = a.addr,
        c = pki.path("c.pem").display(),
        ck = pki.path("c.key").display(),
    );
    let daemon = Daemon::run_config(&toml);
    let front = daemon.addr("web");

    // c.test: fulcrum's own certificate, HTTP/1.1 and HTTP/2 answered through the HTTP path.
    for version in ["--http1.1", "--http2"] {
        let k = pki.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-s", "--max-time", "10", version, "--cacert"])
                .arg(k.path("ca.pem"))
                .arg("--resolve")
                .arg(format!("c.test:{}:127.0.0.1", front.port()))
                .arg(format!("https://c.test:{}/x", front.port()))
                .output()
                .expect("curl")
        })
        .await
        .unwrap();
        assert!(out.status.success(), "curl {version}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "proto=https\n");
    }
    // a.test: the backend's certificate and the backend's own TLS, on the same port.
    let k = pki.clone();
    let (ok, subject) =
        tokio::task::spawn_blocking(move || s_client_subject(&k, front, Some("a.test")))
            .await
            .unwrap();
    assert!(ok && subject.contains("CN=a.test"), "{subject}");
    assert_eq!(who(&pki, front, Some("a.test"), "").await, "backend=a");
    // No SNI, or another name: terminated by fulcrum (its only certificate).
    for sni in [None, Some("other.test")] {
        let k = pki.clone();
        let (_, subject) =
            tokio::task::spawn_blocking(move || s_client_subject(&k, front, sni)).await.unwrap();
        assert!(subject.contains("CN=c.test"), "{sni:?}: {subject}");
    }
    assert_eq!(a.accepts.load(Ordering::SeqCst), 2);

    let api = api(&daemon);
    let routed = |r: &str| {
        metric(&api, &format!("fulcrum_sni_routed_total{{frontend=\"web\",route=\"{r}\"}}"))
    };
    assert_eq!(routed("0"), 2.0);
    assert_eq!(routed("default"), 4.0);
    // Terminated handshakes are counted as before; passed-through ones are not fulcrum's.
    let ok = metric(&api, "fulcrum_tls_handshakes_total{frontend=\"web\",result=\"ok\"}");
    assert!(ok >= 3.0, "{ok}");
    // The HTTP route keeps its place in the list as its metrics name.
    let r1 = metric(
        &api,
        "fulcrum_http_route_responses_total{frontend=\"web\",route=\"1\",class=\"2xx\"}",
    );
    assert_eq!(r1, 2.0);
    wait_until_async(Duration::from_secs(5), "the passthrough access lines", || {
        let log = daemon.log.lock().unwrap();
        log.iter()
            .filter(|v| v["protocol"] == "tls-passthrough" && v["server"] == a.addr.to_string())
            .count()
            == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_client_hello_are_closed_at_sni_timeout() {
    let pki = Arc::new(Pki::make());
    let (a, b, d) =
        (tls_backend(&pki, "a", "a"), tls_backend(&pki, "b", "b"), tls_backend(&pki, "d", "d"));
    let echo = Backend::start(Mode::Echo).await;
    let daemon = Daemon::run_config(&tcp_config(a.addr, b.addr, d.addr, echo.addr));
    let front = daemon.addr("slow");

    // Nothing at all, and the first bytes of a ClientHello: both closed at sni_timeout
    // (1 s), without a server connection.
    for first in [&b""[..], b"\x16\x03\x01\x02\x00\x01\x00"] {
        let mut c = TcpStream::connect(front).await.unwrap();
        c.write_all(first).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
        let took = started.elapsed();
        match r.expect("closed within 10 s") {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{first:?}: {other:?}"),
        }
        assert!(took >= Duration::from_millis(900), "{first:?}: closed after {took:?}");
        assert!(took < Duration::from_secs(5), "{first:?}: closed after {took:?}");
    }
    assert_eq!(echo.accepts() + a.accepts.load(Ordering::SeqCst), 0);

    // Plain text is not TLS: to the frontend's pool at once, every byte kept.
    let started = Instant::now();
    let mut c = TcpStream::connect(front).await.unwrap();
    c.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"PING\r\n");
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    // And a ClientHello on the same frontend still finds its route.
    assert_eq!(who(&pki, front, Some("a.test"), "").await, "backend=a");

    let api = api(&daemon);
    let hellos = |r: &str| {
        metric(&api, &format!("fulcrum_sni_hellos_total{{frontend=\"slow\",result=\"{r}\"}}"))
    };
    assert_eq!(hellos("timeout"), 2.0);
    assert_eq!(hellos("not-tls"), 1.0);
    assert_eq!(hellos("sni"), 1.0);
    let routed = |r: &str| {
        metric(&api, &format!("fulcrum_sni_routed_total{{frontend=\"slow\",route=\"{r}\"}}"))
    };
    assert_eq!((routed("0"), routed("default")), (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_comes_before_the_client_hello() {
    let pki = Arc::new(Pki::make());
    let a = tls_backend(&pki, "a", "a");
    let toml = format!(
        r#"
workers = 1
access_log = true
[frontend.tls]
bind = "127.0.0.1:0"
pool = "a"
accept_proxy = ["127.0.0.1/32"]

[[frontend.tls.route]]
sni = "a.test"
pool = "a"

[pool.a]
servers = ["{}"]
"#,
        a.addr
    );
    let daemon = Daemon::run_config(&toml);
    let mut tcp = TcpStream::connect(daemon.addr("tls")).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 443\r\n").await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("a.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
    tls.write_all(b"who\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "backend=a\n");
    drop(tls);
    wait_until_async(Duration::from_secs(5), "the access line", || {
        let log = daemon.log.lock().unwrap();
        log.iter().any(|v| v["target"] == "fulcrum::access" && v["client"] == "192.0.2.7:4321")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_name_to_another_pool() {
    let pki = Arc::new(Pki::make());
    let (a, b, d) =
        (tls_backend(&pki, "a", "a"), tls_backend(&pki, "b", "b"), tls_backend(&pki, "d", "d"));
    let echo = Backend::start(Mode::Echo).await;
    let toml = tcp_config(a.addr, b.addr, d.addr, echo.addr);
    let (_dir, path) = temp_path("fulcrum.toml");
    std::fs::write(&path, &toml).unwrap();
    let daemon = Daemon::spawn(&["run", "--config", path.to_str().unwrap()]);
    let front = daemon.addr("tls");
    let subject = |sni: &'static str| {
        let k = pki.clone();
        tokio::task::spawn_blocking(move || s_client_subject(&k, front, Some(sni)))
    };
    assert!(subject("a.test").await.unwrap().1.contains("CN=a.test"));
    // a.test to pool b: the port stays, the route follows.
    let moved = toml.replace("sni = \"a.test\"\npool = \"a\"", "sni = \"a.test\"\npool = \"b\"");
    assert_ne!(moved, toml);
    std::fs::write(&path, moved).unwrap();
    daemon.signal(rustix::process::Signal::HUP);
    wait_until_async(Duration::from_secs(5), "the reload", || {
        daemon.count("configuration reloaded") == 1
    })
    .await;
    assert_eq!(daemon.addr("tls"), front);
    let (_, after) = subject("a.test").await.unwrap();
    assert!(after.contains("CN=b.test"), "{after}");
    assert_eq!(a.accepts.load(Ordering::SeqCst), 1);
}

#[test]
fn fulcrum_check_warns_about_a_name_an_earlier_route_has() {
    let pki = Pki::make();
    let (_dir, path) = temp_path("f.toml");
    // Line 7: route[1] of t. Line 20: route[2] of w, behind route[1] (an HTTP catch-all);
    // w's passthrough route[0] has no HTTP condition and must not count as one.
    let text = format!(
        "[frontend.t]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[frontend.t.route]]\nsni = [\"a.test\", \"*.w.test\"]\npool = \"p\"\n\
         [[frontend.t.route]]\nsni = [\"A.test\", \"b.test\"]\npool = \"p\"\n\
         [frontend.w]\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"p\"\n\
         [[frontend.w.route]]\nsni = \"a.test\"\npassthrough = true\npool = \"p\"\n\
         [[frontend.w.route]]\npool = \"p\"\n\
         [[frontend.w.route]]\npath_prefix = \"/a\"\npool = \"p\"\n\
         [frontend.w.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [pool.p]\nservers = [\"127.0.0.1:1\"]\n",
        pki.path("c.pem").display(),
        pki.path("c.key").display()
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":7: frontend.t.route[1]: sni \"a.test\" is unreachable: route[0] has it"),
        "{err}"
    );
    assert!(
        err.contains(
            ":20: frontend.w.route[2] is unreachable: route[1] matches every request it does"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
}
