//! testssl.sh (Debian's package) scans an `https` frontend serving certificates from a test
//! CA it is told to trust (`--add-ca`): protocols, cipher categories, forward secrecy, server
//! preferences, server defaults and the vulnerability checks (`-p -s -f -P -S -U`; the client
//! simulations and HTTP header checks are left out to keep it within a minute or so). Its JSON
//! findings must show no protocol below TLS 1.2, no weak cipher category offered, and nothing
//! rated HIGH or CRITICAL (nor a FATAL scan problem) but the findings listed in
//! [`ABOUT_THE_TEST_PKI`]. `--nodns none` and `--ip`: the scan sends nothing off loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/tls.rs"]
mod tls_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tls_support::*;

/// HIGH findings about the test PKI itself, not the balancer: a private test CA issues
/// certificates without CRL or OCSP URIs.
const ABOUT_THE_TEST_PKI: &[&str] = &["cert_revocation"];

/// The whole scan's bound.
const SCAN_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testssl_finds_nothing_high_on_an_https_frontend() {
    // A year of validity: a certificate expiring within 60 days is itself a finding.
    let pki = Pki::make_for_days(365);
    let d = Daemon::run_config(&https_config(head_echo_backend(), &pki.tls_table("")));
    let front = d.addr("web");
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("findings.json");
    let mut cmd = Command::new("testssl");
    cmd.args(["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--add-ca"])
        .arg(pki.path("ca.pem"))
        .arg("--jsonfile")
        .arg(&json)
        .args(["-p", "-s", "-f", "-P", "-S", "-U", "--ip", "127.0.0.1"])
        .arg(format!("a.test:{}", front.port()))
        .env("TMPDIR", out_dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let scan = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("testssl (Debian package testssl.sh)");
        let end = Instant::now() + SCAN_LIMIT;
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > end {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "testssl did not finish within {SCAN_LIMIT:?}:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&scan.stdout).into_owned();
    let findings: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(&json).unwrap_or_else(|e| panic!("no JSON findings ({e}):\n{text}")),
    )
    .unwrap();
    let by_id = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("no finding {id}:\n{text}"))["finding"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(by_id(old), "not offered", "{old}:\n{text}");
    }
    assert_eq!(by_id("TLS1_2"), "offered", "{text}");
    assert!(by_id("TLS1_3").starts_with("offered"), "{text}");
    for weak in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        assert_eq!(by_id(weak), "not offered", "{weak}:\n{text}");
    }
    assert_eq!(by_id("cipherlist_STRONG"), "offered", "{text}");
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL" | "FATAL")))
        .filter(|f| !ABOUT_THE_TEST_PKI.contains(&f["id"].as_str().unwrap_or("")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "findings rated high or worse: {bad:#?}\n{text}");
    // The scan really reached the frontend: handshakes completed.
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    assert!(metric(&api, "fulcrum_tls_handshakes_total{frontend=\"web\",result=\"ok\"}") >= 10.0);
}
