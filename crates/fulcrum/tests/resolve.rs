//! Servers given by host name, looked up through a real name server: a dnsmasq on a kernel
//! port, named in `[resolver]`, answering from a hosts file the test rewrites (SIGHUP makes
//! dnsmasq read it again). Backends listen on 127.0.0.2 and 127.0.0.3 (all of 127/8 is
//! loopback on Linux) on one port, so only the name's address tells them apart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{TcpListener as StdListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A dnsmasq answering for the names of one hosts file, with a TTL of 1 s.
struct Dns {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dns {
    fn start(hosts: &str) -> Dns {
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq started as root reads the file as `nobody`.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, hosts).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A port free for UDP and TCP now; another program may take it before dnsmasq binds
        // it, so several tries; why the last one failed is in the panic message.
        let mut last = String::new();
        for _ in 0..20 {
            let port = {
                let u = UdpSocket::bind("127.0.0.1:0").unwrap();
                let p = u.local_addr().unwrap().port();
                if StdListener::bind(("127.0.0.1", p)).is_err() {
                    continue;
                }
                p
            };
            let mut child = Command::new(DNSMASQ)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--local-ttl=1",
                    "--pid-file=",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", path.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn dnsmasq");
            // Ready once it accepts DNS over TCP; gone early means the port was taken.
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Dns { child: Some(child), port, hosts: path, _dir: dir };
                }
                if child.try_wait().unwrap().is_some() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    last = format!("port {port}: {}", err.trim());
                    break;
                }
                assert!(Instant::now() < end, "dnsmasq did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("dnsmasq could not bind a free port in 20 tries; last: {last}");
    }

    /// Replaces the hosts file; dnsmasq reads it again on SIGHUP.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = self.child.as_ref().unwrap().id();
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two listeners, on 127.0.0.2 and 127.0.0.3, on one kernel-chosen port.
fn listener_pair() -> (TcpListener, TcpListener) {
    for _ in 0..20 {
        let a = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = std::net::TcpListener::bind(("127.0.0.3", port)) {
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
            return (TcpListener::from_std(a).unwrap(), TcpListener::from_std(b).unwrap());
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn config(dns: u16, port: u16) -> String {
    format!(
        r#"
workers = 2
drain_timeout = "5s"

[resolver]
servers = ["127.0.0.1:{dns}"]

[frontend.web]
bind = "127.0.0.1:0"
pool = "app"

[pool.app]
servers = ["app.test:{port}"]
resolve_interval = "1s"
connect_timeout = "1s"

[admin]
bind = "127.0.0.1:0"
"#
    )
}

fn api(d: &Daemon) -> String {
    let a = d.find("admin API listening").unwrap();
    format!("http://{}", a["address"].as_str().unwrap())
}

fn server_keys(api: &str) -> Vec<String> {
    let pools = get(&format!("{api}/api/v1/pools"));
    let mut keys: Vec<String> = pools["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_name_takes_new_connections_to_its_new_address_with_none_failed() {
    let dns = Dns::start("127.0.0.2 app.test\n");
    let (l2, l3) = listener_pair();
    let port = l2.local_addr().unwrap().port();
    let old = Backend::on(l2, Mode::Named("two"));
    let new = Backend::on(l3, Mode::Named("three"));
    let d = Daemon::run_config(&config(dns.port, port));
    let front = d.addr("web");
    assert_eq!(ask_name(front).await.unwrap(), "two");
    assert_eq!(server_keys(&api(&d)), [format!("app.test:{port}#127.0.0.2")]);

    // A connection open across the change keeps its server.
    let mut kept = TcpStream::connect(front).await.unwrap();
    let mut line = [0u8; 4];
    kept.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"two\n");

    // Clients keep connecting, one after another, across the change.
    let mut moved_at = None;
    let mut after_move = 0;
    let mut changed_at = None;
    let start = Instant::now();
    for i in 0..3_000 {
        if i == 20 {
            dns.set_hosts("127.0.0.3 app.test\n");
            changed_at = Some(Instant::now());
        }
        let name = tokio::time::timeout(Duration::from_secs(5), ask_name(front))
            .await
            .expect("a connection hung")
            .unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        match (name.as_str(), moved_at) {
            ("three", None) => moved_at = Some(Instant::now()),
            ("three", Some(_)) => after_move += 1,
            ("two", Some(_)) => panic!("connection {i} went back to the old address"),
            ("two", None) => assert!(changed_at.is_some() || i < 20),
            (other, _) => panic!("unexpected server {other}"),
        }
        if after_move >= 50 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no move within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let moved = moved_at.expect("never moved").duration_since(changed_at.unwrap());
    // TTL 1 s and resolve_interval 1 s: the next lookup is at most ~1 s away; a little slack
    // for a loaded machine.
    assert!(moved < Duration::from_secs(4), "moved only after {moved:?}");
    assert!(after_move >= 50);
    assert!(old.accepts() >= 21 && new.accepts() >= 51);
    wait_until_async(Duration::from_secs(5), "the change logged", || {
        d.find("server name has new addresses").is_some()
    })
    .await;
    let event = d.find("server name has new addresses").unwrap();
    assert_eq!(event["addresses"], "127.0.0.3");
    assert_eq!(server_keys(&api(&d)), [format!("app.test:{port}#127.0.0.3")]);

    // The connection opened before the change still talks to the old server.
    kept.write_all(b"still here").await.unwrap();
    let mut echo = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), kept.read_exact(&mut echo))
        .await
        .expect("the kept connection hung")
        .unwrap();
    assert_eq!(&echo, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_addresses_are_two_servers_and_a_failed_lookup_keeps_them() {
    let mut dns = Dns::start("127.0.0.2 app.test\n127.0.0.3 app.test\n");
    let (l2, l3) = listener_pair();
    let port = l2.local_addr().unwrap().port();
    let _a = Backend::on(l2, Mode::Named("two"));
    let _b = Backend::on(l3, Mode::Named("three"));
    let d = Daemon::run_config(&config(dns.port, port));
    let front = d.addr("web");
    let api = api(&d);
    assert_eq!(
        server_keys(&api),
        [format!("app.test:{port}#127.0.0.2"), format!("app.test:{port}#127.0.0.3")]
    );
    let spread = |names: &[String]| {
        let two = names.iter().filter(|n| *n == "two").count();
        (two, names.len() - two)
    };
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(ask_name(front).await.unwrap());
    }
    assert_eq!(spread(&names), (5, 5), "round robin over both addresses: {names:?}");

    // The name server goes away: lookups fail, are logged and counted, the servers stay.
    wait_until_async(Duration::from_secs(10), "a first lookup", || {
        metric(&api, "fulcrum_resolve_lookups_total") >= 1.0
    })
    .await;
    dns.stop();
    wait_until_async(Duration::from_secs(15), "a failed lookup logged", || {
        d.find("name lookup failed; its servers keep their last addresses").is_some()
    })
    .await;
    let e = d.find("name lookup failed; its servers keep their last addresses").unwrap();
    assert_eq!(e["name"], "app.test");
    assert!(metric(&api, "fulcrum_resolve_failures_total") >= 1.0);
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(ask_name(front).await.unwrap());
    }
    assert_eq!(spread(&names), (5, 5), "both addresses kept: {names:?}");
    // Rate-limited: the name is asked again (each lookup waits out the name server's
    // timeout), and the run of failures stays one line.
    let failures = metric(&api, "fulcrum_resolve_failures_total");
    wait_until_async(Duration::from_secs(20), "another failed lookup", || {
        metric(&api, "fulcrum_resolve_failures_total") > failures
    })
    .await;
    assert_eq!(d.count("name lookup failed; its servers keep their last addresses"), 1);

    // A reload while the name server is down keeps the addresses too.
    let status = tokio::task::block_in_place(|| {
        let r = ureq::post(&format!("{api}/api/v1/reload"))
            .header("Content-Type", "application/json")
            .send("{}")
            .unwrap();
        r.status()
    });
    assert_eq!(status, 200);
    // The log is read by another thread: wait for the line rather than expect it already.
    wait_until_async(Duration::from_secs(5), "the reload's lookup failure logged", || {
        d.find("name lookup failed on reload; keeping its last addresses").is_some()
    })
    .await;
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(ask_name(front).await.unwrap());
    }
    assert_eq!(spread(&names), (5, 5), "both addresses kept after the reload: {names:?}");
}
