//! The shortest-queue UDP balancer, one of the five founding systems, run the way its users
//! ran it: plain-Python UDP servers that answer one request per datagram and report their
//! queue length over the agent protocol (examples/agent_client.py, stdlib only), and a
//! plain-Python client that sends one request per datagram from one socket. fulcrum balances
//! per datagram (`sessions = false`), not per client: the server reporting a long queue gets
//! fewer requests, and every answer is the answer to the request it came back for.
//! (The controller half of that system, scale out and in, is founding_controller.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const KEY: &str = "shortest-queue-founding-test-key";
const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent_client.py");

/// `python3 server.py NAME`: prints its port; answers `NAME <request>` to every datagram.
const SERVER: &str = r#"
import socket, sys
name = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(name.encode() + b" " + data, peer)
"#;

/// `python3 client.py PORT N`: N requests, one per datagram, from one socket, each waiting for
/// its answer; prints `<server> <count>` per server and `wrong <count>` (answers that were
/// not for the request just sent), then `lost <count>`.
const CLIENT: &str = r#"
import socket, sys, collections
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
per, wrong, lost = collections.Counter(), 0, 0
for i in range(n):
    req = ("job-%d" % i).encode()
    s.sendto(req, ("127.0.0.1", port))
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        lost += 1
        continue
    name, _, body = data.partition(b" ")
    if body != req:
        wrong += 1
    per[name.decode()] += 1
for name, c in sorted(per.items()):
    print(name, c)
print("wrong", wrong)
print("lost", lost)
"#;

#[test]
fn shortest_queue_udp_balancer_per_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let busy = Py::run(SERVER, &["busy"]);
    let idle = Py::run(SERVER, &["idle"]);
    let (bp, ip) = (busy.line(), idle.line());
    let d = Daemon::run_config(&format!(
        r#"
workers = 2
[agent]
bind = "127.0.0.1:0"
key_file = "{}"

[admin]
bind = "127.0.0.1:0"

[frontend.jobs]
bind = "127.0.0.1:0"
protocol = "udp"
sessions = false
pool = "workers"

[pool.workers]
algorithm = "shortest-queue"
servers = ["127.0.0.1:{bp}", "127.0.0.1:{ip}"]
"#,
        key.display()
    ));
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let agent = d.find("agent listener ready").unwrap()["address"].as_str().unwrap().to_string();
    // Each server's agent reports its queue every 100 ms: the busy one 200 waiting, the idle
    // one none (reports are bounded in count: at most 60 s of them).
    let report = |port: &str, queue: &str| {
        std::process::Command::new("python3")
            .args([AGENT, "--agent", &agent, "--key-file", key.to_str().unwrap()])
            .args(["--pool", "workers", "--address", &format!("127.0.0.1:{port}")])
            .args(["--clients", "0", "--queue", queue, "--interval", "0.1", "--count", "600"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut agents = [report(&bp, "200"), report(&ip, "0")];
    wait_until(Duration::from_secs(10), "both queue reports", || {
        let v = get(&format!("{api}/api/v1/pools"));
        v["pools"][0]["servers"].as_array().unwrap().iter().all(|s| s["reported"].is_object())
    });
    let port = d.addr("jobs").port().to_string();
    let mut client = Py::run(CLIENT, &[&port, "600"]);
    let out = client.rest();
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    let count = |what: &str| -> u64 {
        out.iter()
            .find_map(|l| l.strip_prefix(what).and_then(|r| r.strip_prefix(' ')))
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(count("wrong"), 0, "{out:?}");
    assert_eq!(count("lost"), 0, "{out:?}");
    let (b, i) = (count("busy"), count("idle"));
    assert_eq!(b + i, 600, "{out:?}");
    // Per datagram, not per client: the one with the long queue got clearly fewer. Between
    // two reports it is picked only once the idle one's assignments since its report pass
    // 200, so the margin depends on the client's speed but is at least 100 of 600 (a
    // frontend keeping one server per client would give one of them all 600).
    assert!(i > b + 100, "busy {b}, idle {i}: {out:?}");
}
