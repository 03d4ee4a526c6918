//! Certificates replaced without a restart, with a test PKI made by `openssl`:
//!
//! * `certificate_swapped_under_200_clients_fails_no_request`: 200 clients each open a new TLS
//!   connection per request (bounded in count and time) while the certificate file is replaced
//!   (picked up by the directory watcher), then broken (reported by the watcher, and by a reload
//!   that fails naming the file; the last good certificate keeps serving), then replaced and
//!   reloaded with `fulcrum ctl reload`, then moved to other files by a config change and
//!   SIGHUP. Every request succeeds, each new handshake shows the certificate in force, and a
//!   keep-alive connection opened before the first swap keeps working.
//! * `expiry_is_exported_and_listed_by_ctl_certs`: the expiry metric of every certificate
//!   (served ones and the client CA) and `fulcrum ctl certs`, against what openssl says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 200;
/// Each client's bound: requests, and time.
const MAX_REQUESTS: u64 = 2_000;
const MAX_TIME: Duration = Duration::from_secs(90);

/// Replaces `path` as tools do: a new file renamed over the old one.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `fulcrum ctl --api API ARGS`: (success, stdout and stderr).
fn ctl(api: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(["ctl", "--api", api]).args(args).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// One keep-alive request on an open TLS connection: the response head and body.
async fn request_on(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<String, String> {
    tls.write_all(b"GET /held HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = header_values(&head, "content-length")
                .first()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no content-length: {head}"))?;
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tls.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("closed".into()),
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer in 10 s".into()),
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Requests served with each certificate generation (index into the list of DERs).
    by_cert: [AtomicU64; 4],
    errors: std::sync::Mutex<Vec<String>>,
}

/// The generation of `der` in `gens`, or `None`.
fn generation(gens: &[Vec<u8>], der: &[u8]) -> Option<usize> {
    gens.iter().position(|g| g == der)
}

/// A new handshake's certificate generation, as a fresh client sees it.
async fn served(
    cfg: &Arc<rustls::ClientConfig>,
    front: SocketAddr,
    gens: &[Vec<u8>],
) -> Option<usize> {
    let (der, _) = fetch_once(cfg, front, "a.test").await.ok()?;
    generation(gens, &der)
}

async fn wait_served(
    cfg: &Arc<rustls::ClientConfig>,
    front: SocketAddr,
    gens: &[Vec<u8>],
    want: usize,
    what: &str,
) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if served(cfg, front, gens).await == Some(want) {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config_with(pki: &Pki, server: SocketAddr, cert: &str) -> String {
    let tls = format!(
        "[frontend.web.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        pki.path(&format!("{cert}.pem")).display(),
        pki.path(&format!("{cert}.key")).display(),
    );
    https_config(server, &tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swapped_under_200_clients_fails_no_request() {
    let pki = Pki::make();
    // Generations 1 to 3 of a.test's certificate, all from the same CA.
    for g in 1..=3 {
        pki.cert(
            &format!("a{g}"),
            &format!("/O=gen {g}/CN=a.test"),
            "subjectAltName=DNS:a.test",
            "ca",
        );
    }
    let gens: Vec<Vec<u8>> =
        ["a", "a1", "a2", "a3"].iter().map(|f| der_of(&pki.path(&format!("{f}.pem")))).collect();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg_path = cfg_dir.path().join("fulcrum.toml");
    let server = head_echo_backend();
    std::fs::write(&cfg_path, config_with(&pki, server, "a")).unwrap();
    let d = Daemon::spawn(&["run", "--config", cfg_path.to_str().unwrap()]);
    let front = d.addr("web");
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let cfg = client_config(&pki.path("ca.pem"));
    assert_eq!(served(&cfg, front, &gens).await, Some(0));

    // A keep-alive connection from before any change.
    let mut held = handshake(&cfg, front, "a.test").await.unwrap();
    request_on(&mut held).await.unwrap();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (cfg, gens, tally, stop) = (cfg.clone(), gens.clone(), tally.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let end = Instant::now() + MAX_TIME;
            for _ in 0..MAX_REQUESTS {
                if stop.load(Ordering::Relaxed) || Instant::now() > end {
                    break;
                }
                match fetch_once(&cfg, front, "a.test").await {
                    Ok((der, _)) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(g) = generation(&gens, &der) {
                            tally.by_cert[g].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tally.errors.lock().unwrap().push(e);
                    }
                }
            }
        }));
    }
    let t = tally.clone();
    wait_until_async(Duration::from_secs(30), "traffic before the swap", || {
        t.ok.load(Ordering::Relaxed) + t.failed.load(Ordering::Relaxed) >= 400
    })
    .await;

    // 1. The files are replaced: the watcher loads them, new handshakes get generation 1.
    let read = |f: &str| std::fs::read(pki.path(f)).unwrap();
    replace(&pki.path("a.key"), &read("a1.key"));
    replace(&pki.path("a.pem"), &read("a1.pem"));
    wait_served(&cfg, front, &gens, 1, "the watcher to serve generation 1").await;
    assert!(d.count("certificates reloaded after a file change") >= 1);
    // The connection opened before the swap is untouched.
    let again = request_on(&mut held).await.unwrap();
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    // 2. A broken certificate file: reported by the watcher, generation 1 keeps serving.
    let failed_metric = "fulcrum_tls_certificate_reloads_total{frontend=\"web\",result=\"failed\"}";
    let before = metric(&api, failed_metric);
    replace(
        &pki.path("a.pem"),
        b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    let a_pem = pki.path("a.pem").display().to_string();
    let log_names_it = || {
        d.events(
            "certificate files changed but cannot be loaded: the old certificates keep serving",
        )
        .iter()
        .any(|e| e["error"].as_str().unwrap_or("").contains(&format!("certificate {a_pem}")))
    };
    wait_until_async(
        Duration::from_secs(15),
        "the watcher to report the broken file",
        log_names_it,
    )
    .await;
    assert!(metric(&api, failed_metric) > before);
    assert_eq!(served(&cfg, front, &gens).await, Some(1));
    let api2 = api.clone();
    let (ok, listing) = tokio::task::spawn_blocking(move || ctl(&api2, &["certs"])).await.unwrap();
    assert!(ok, "{listing}");
    assert!(
        listing.contains("the last certificate reload failed") && listing.contains(&a_pem),
        "{listing}"
    );

    // A reload with the broken file fails, naming it, and changes nothing.
    let api2 = api.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&api2, &["reload"])).await.unwrap();
    assert!(!ok, "a reload with a broken certificate succeeded: {out}");
    assert!(out.contains(&format!("frontend web: certificate {a_pem}")), "{out}");
    assert_eq!(served(&cfg, front, &gens).await, Some(1));

    // 3. Generation 2 in place, then `fulcrum ctl reload` at once: in force when it returns.
    replace(&pki.path("a.key"), &read("a2.key"));
    replace(&pki.path("a.pem"), &read("a2.pem"));
    let api2 = api.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&api2, &["reload"])).await.unwrap();
    assert!(ok, "{out}");
    assert_eq!(served(&cfg, front, &gens).await, Some(2));

    // 4. The config names other files (generation 3) and SIGHUP reloads it.
    let reloads = d.count("configuration reloaded");
    std::fs::write(&cfg_path, config_with(&pki, server, "a3")).unwrap();
    d.signal(rustix::process::Signal::HUP);
    wait_until_async(Duration::from_secs(15), "the SIGHUP reload", || {
        d.count("configuration reloaded") > reloads
    })
    .await;
    assert_eq!(served(&cfg, front, &gens).await, Some(3));
    let again = request_on(&mut held).await.unwrap();
    assert!(again.starts_with("HTTP/1.1 200"), "the held connection after all changes: {again}");

    // Some traffic with generation 3, then the clients stop.
    let t = tally.clone();
    wait_until_async(Duration::from_secs(30), "traffic after the last change", || {
        t.by_cert[3].load(Ordering::Relaxed) >= 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let errors = tally.errors.lock().unwrap();
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "first errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    let by: Vec<u64> = tally.by_cert.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert!(by[0] > 0 && by[3] > 0, "requests by certificate generation: {by:?}");
    assert_eq!(by.iter().sum::<u64>(), tally.ok.load(Ordering::Relaxed), "{by:?}");
    eprintln!("requests by certificate generation: {by:?}, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_exported_and_listed_by_ctl_certs() {
    let pki = Pki::with_clients();
    let extra = format!("client_ca = \"{}\"", pki.path("client-ca.pem").display());
    let d = Daemon::run_config(&https_config(head_echo_backend(), &pki.tls_table(&extra)));
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let v = get(&format!("{api}/api/v1/certs"));
    let web = &v["frontends"][0];
    assert_eq!(web["frontend"], "web");
    let certs = web["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 3, "{v}");
    for (c, file, role) in [
        (&certs[0], "a", "server"),
        (&certs[1], "b", "server"),
        (&certs[2], "client-ca", "client_ca"),
    ] {
        let path = pki.path(&format!("{file}.pem")).display().to_string();
        assert_eq!(c["file"], path.as_str());
        assert_eq!(c["role"], role);
        // openssl's notAfter, as a date: `notAfter=Nov  5 10:00:00 2026 GMT`.
        let pem = format!("{file}.pem");
        let end = pki.openssl(&["x509", "-in", &pem, "-noout", "-enddate", "-dateopt", "iso_8601"]);
        let end = end.trim().trim_start_matches("notAfter=").replace(' ', "T");
        assert_eq!(c["not_after"].as_str().unwrap(), end, "{c}");
        let days = c["days_left"].as_f64().unwrap();
        assert!((1.9..=2.0).contains(&days), "{days}");
        let unix = c["not_after_unix"].as_u64().unwrap();
        let name =
            if role == "server" { c["names"][0].as_str().unwrap() } else { "fulcrum client CA" };
        let series = format!(
            "fulcrum_tls_certificate_expiry_timestamp_seconds{{frontend=\"web\",role=\"{role}\",cert=\"{path}\",name=\"{name}\"}}"
        );
        assert_eq!(metric(&api, &series), unix as f64, "{series}");
    }
    assert_eq!(certs[0]["names"][0], "a.test");
    assert_eq!(certs[1]["names"][0], "*.b.test");
    assert_eq!(certs[2]["subject"], "CN=fulcrum client CA");

    let api2 = api.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || ctl(&api2, &["certs"])).await.unwrap();
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("FRONTEND"), "{out}");
    for (line, name, file) in [
        (1, "a.test", "a.pem"),
        (2, "*.b.test", "b.pem"),
        (3, "CN=fulcrum client CA", "client-ca.pem"),
    ] {
        let l = lines[line];
        assert!(l.starts_with("web"), "{out}");
        assert!(l.contains(name) && l.contains(&pki.path(file).display().to_string()), "{out}");
        assert!(l.contains(" 1.9 ") || l.contains(" 2.0 "), "days left: {out}");
    }
}
