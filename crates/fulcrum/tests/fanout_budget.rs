//! Fan-out upstream sockets draw from the descriptor budget: under a small open-file limit, a
//! flood of requests to a silent server is cut at the budget (dropped and counted) instead of
//! running the process out of descriptors, and requests are served again once it frees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_fanout_sockets_stop_at_the_descriptor_budget() {
    // A server that never answers: every request holds its upstream socket until the timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let answering = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (silent_addr, answering_addr) =
        (silent.local_addr().unwrap(), answering.local_addr().unwrap());
    // Ends with the test process (a blocking receive has nothing to stop it sooner).
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = answering.recv_from(&mut buf) {
            if &buf[..n] == b"late" {
                let _ = answering.send_to(b"ok", from);
            }
        }
    });
    let toml = format!(
        r#"
workers = 1
[admin]
bind = "127.0.0.1:0"

[frontend.fan]
bind = "127.0.0.1:0"
protocol = "udp"
pool = "p"
mode = "fanout"
[frontend.fan.fanout]
timeout = "2s"

[pool.p]
servers = ["{silent_addr}", "{answering_addr}"]
"#
    );
    let (_dir, path) = temp_path("f.toml");
    std::fs::write(&path, toml).unwrap();
    // 400 descriptors: a budget of 144 (400 − 256 kept back).
    let d = Daemon::spawn_with_prefix(
        &["prlimit", "--nofile=400:400", "--"],
        &["run", "--config", path.to_str().unwrap()],
    );
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let front = d.addr("fan");
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    // 300 requests in flight would need 600 upstream sockets; only "late" ones get answers.
    for i in 0..300 {
        c.send_to(format!("q{i}").as_bytes(), front).unwrap();
    }
    let cut = r#"fulcrum_frontend_udp_drops_total{frontend="fan",reason="descriptors"}"#;
    wait_until_async(Duration::from_secs(10), "requests cut at the budget", || {
        metric(&api, cut) > 0.0
    })
    .await;
    let errors = r#"fulcrum_frontend_fanout_upstream_errors_total{frontend="fan"}"#;
    assert_eq!(metric(&api, errors), 0.0, "a socket failed: the budget let the process run out");
    // Once the flood's requests time out, the budget is free and a request is answered.
    let c2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    c2.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut answered = false;
    for _ in 0..20 {
        c2.send_to(b"late", front).unwrap();
        let mut buf = [0u8; 16];
        if let Ok((n, _)) = c2.recv_from(&mut buf)
            && &buf[..n] == b"ok"
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "no answer after the flood's requests timed out");
    drop(d);
}
