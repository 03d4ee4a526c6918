//! `access_log_file`: access lines go to the file (JSON like the rest with `--log-format
//! json`), not to stderr; after logrotate's rename, SIGUSR1 makes fulcrum write to a new file
//! at the path while the renamed one keeps what it had.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON access line"))
        .collect()
}

fn one_connection(front: std::net::SocketAddr) {
    let mut c = std::net::TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_go_to_the_file_and_sigusr1_reopens_it() {
    let echo = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = format!(
        "access_log_file = \"{}\"\nworkers = 1\n[frontend.l4]\nbind = \"127.0.0.1:0\"\n\
         pool = \"app\"\n[pool.app]\nservers = [\"{}\"]\n",
        log.display(),
        echo.addr
    );
    let d = Daemon::run_config(&toml);
    let front = d.addr("l4");
    for _ in 0..3 {
        one_connection(front);
    }
    wait_until(Duration::from_secs(10), "three access lines in the file", || {
        lines(&log).len() == 3
    });
    for l in lines(&log) {
        assert_eq!(l["target"], "fulcrum::access");
        assert_eq!(l["frontend"], "l4");
    }
    assert!(
        !d.log.lock().unwrap().iter().any(|v| v["target"] == "fulcrum::access"),
        "no access line on stderr"
    );
    // logrotate: rename, then SIGUSR1.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    d.signal(rustix::process::Signal::USR1);
    wait_until(Duration::from_secs(10), "the reopen logged", || {
        d.find("access log file reopened").is_some()
    });
    for _ in 0..2 {
        one_connection(front);
    }
    wait_until(Duration::from_secs(10), "two lines in the new file", || lines(&log).len() == 2);
    assert_eq!(lines(&rotated).len(), 3, "the rotated file keeps its lines");
}

#[test]
fn an_unwritable_access_log_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.toml");
    std::fs::write(
        &cfg,
        "access_log_file = \"/nonexistent-dir/access.log\"\n[frontend.l4]\nbind = \"127.0.0.1:0\"\n\
         pool = \"app\"\n[pool.app]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("access_log_file: cannot open /nonexistent-dir/access.log"), "{err}");
}
