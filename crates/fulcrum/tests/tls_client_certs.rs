//! Client certificates on an `https` frontend (`client_ca`, `client_auth`,
//! `client_cert_header`), with a test PKI made by `openssl`, curl as the client and a backend
//! that echoes the request head it received.
//!
//! * `required_client_certificates_refuse_clients_without_one_and_pass_the_subject`: curl
//!   without a certificate or with one from an untrusted CA is refused (HTTP/1.1 and HTTP/2),
//!   h2load (which cannot present one) gets nothing through; with the client certificate both
//!   versions pass and the backend sees exactly its subject (as OpenSSL prints it in RFC 2253
//!   form) in `X-Client-Cert-Subject`, never the copy the client sent.
//! * `optional_client_certificates_serve_clients_without_one_and_strip_forged_headers`: a
//!   custom header name; a client without a certificate is served and its forged header
//!   dropped; an untrusted certificate is still refused.
//! * `without_client_ca_the_header_is_still_never_forwarded`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use common::*;
use tls_support::*;

/// curl to `https://a.test:PORT/x` through the frontend with the server CA: (success, body).
fn curl(pki: &Pki, front: SocketAddr, extra: &[&str]) -> (bool, String) {
    let port = front.port();
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("a.test:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://a.test:{port}/x"))
        .output()
        .expect("curl");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn cert_args(pki: &Pki, name: &str) -> Vec<String> {
    let p = |f: String| pki.path(&f).display().to_string();
    vec!["--cert".into(), p(format!("{name}.pem")), "--key".into(), p(format!("{name}.key"))]
}

/// Runs `f` with the PKI on a blocking thread (curl and h2load block).
async fn blocking<T: Send + 'static>(
    pki: &Arc<Pki>,
    f: impl FnOnce(&Pki) -> T + Send + 'static,
) -> T {
    let pki = pki.clone();
    tokio::task::spawn_blocking(move || f(&pki)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_clients_without_one_and_pass_the_subject() {
    let pki = Arc::new(Pki::with_clients());
    let extra = format!(
        "client_ca = \"{}\"\nclient_auth = \"required\"",
        pki.path("client-ca.pem").display()
    );
    let d = Daemon::run_config(&https_config(head_echo_backend(), &pki.tls_table(&extra)));
    let front = d.addr("web");
    let want = pki.subject_rfc2253("client");
    assert_eq!(want, "CN=client one,O=Fulcrum Test");

    for version in ["--http1.1", "--http2"] {
        let (ok, out) = blocking(&pki, move |p| curl(p, front, &[version])).await;
        assert!(!ok, "{version} without a certificate got through: {out}");
        let (ok, out) = blocking(&pki, move |p| {
            let mut args = cert_args(p, "rogue");
            args.push(version.into());
            curl(p, front, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await;
        assert!(!ok, "{version} with an untrusted certificate got through: {out}");
        let (ok, head) = blocking(&pki, move |p| {
            let mut args = cert_args(p, "client");
            args.extend(["-H".into(), "X-Client-Cert-Subject: CN=forged".into(), version.into()]);
            curl(p, front, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await;
        assert!(ok, "{version} with the client certificate: {head}");
        assert_eq!(
            header_values(&head, "x-client-cert-subject"),
            std::slice::from_ref(&want),
            "{version}: {head}"
        );
    }

    // h2load cannot present a certificate: every request is refused.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("h2load")
            .args(["-n", "20", "-c", "2", "-m", "2"])
            .arg(format!("https://127.0.0.1:{}/", front.port()))
            .output()
            .expect("h2load")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 succeeded"), "{text}");

    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let failed = metric(&api, "fulcrum_tls_handshakes_total{frontend=\"web\",result=\"failed\"}");
    assert!(failed >= 2.0, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_serve_clients_without_one_and_strip_forged_headers() {
    let pki = Arc::new(Pki::with_clients());
    let extra = format!(
        "client_ca = \"{}\"\nclient_auth = \"optional\"\nclient_cert_header = \"X-SSL-Subject\"",
        pki.path("client-ca.pem").display()
    );
    let d = Daemon::run_config(&https_config(head_echo_backend(), &pki.tls_table(&extra)));
    let front = d.addr("web");
    let want = pki.subject_rfc2253("client");

    let (ok, head) = blocking(&pki, move |p| {
        curl(p, front, &["-H", "X-SSL-Subject: CN=forged", "-H", "x-ssl-subject: CN=twice"])
    })
    .await;
    assert!(ok, "without a certificate: {head}");
    assert!(header_values(&head, "x-ssl-subject").is_empty(), "a forged subject passed: {head}");
    let (ok, head) = blocking(&pki, move |p| {
        let mut args = cert_args(p, "client");
        args.extend(["--http2".into(), "-H".into(), "X-SSL-Subject: CN=forged".into()]);
        curl(p, front, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await;
    assert!(ok, "with the client certificate: {head}");
    assert_eq!(header_values(&head, "x-ssl-subject"), [want]);
    let (ok, out) = blocking(&pki, move |p| {
        let args = cert_args(p, "rogue");
        curl(p, front, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await;
    assert!(!ok, "an untrusted certificate got through: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_ca_the_header_is_still_never_forwarded() {
    let pki = Arc::new(Pki::make());
    let d = Daemon::run_config(&https_config(head_echo_backend(), &pki.tls_table("")));
    let front = d.addr("web");
    let (ok, head) =
        blocking(&pki, move |p| curl(p, front, &["-H", "X-Client-Cert-Subject: CN=admin"])).await;
    assert!(ok, "{head}");
    assert!(header_values(&head, "x-client-cert-subject").is_empty(), "{head}");
}
