//! The address directory, one of the five founding systems, run the way its users ran it:
//! backends that register themselves and push their client counts (the agent protocol, from
//! plain Python: examples/agent_client.py), and plain-Python clients that ask for the
//! least-loaded server's address with `PICK`, over TCP and over UDP, on ONE port (a
//! `directory` and a `directory-udp` frontend sharing their `bind`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const KEY: &str = "address-directory-founding-test-key";
const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent_client.py");

/// `python3 client.py PORT tcp|udp N`: N `PICK` requests over one TCP connection (a line
/// each) or one UDP socket (a datagram each); prints each answer on a line of its own.
const CLIENT: &str = r#"
import socket, sys
port, how, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if how == "tcp":
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    f = s.makefile("rb")
    for _ in range(n):
        s.sendall(b"PICK\n")
        print(f.readline().decode().strip(), flush=True)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    for _ in range(n):
        s.sendto(b"PICK", ("127.0.0.1", port))
        print(s.recvfrom(512)[0].decode().strip(), flush=True)
"#;

struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn address_directory_over_tcp_and_udp_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let (d, port) = run_on_shared_port(|port| {
        format!(
            r#"
[agent]
bind = "127.0.0.1:0"
key_file = "{}"
report_interval = "20s"

[admin]
bind = "127.0.0.1:0"

[frontend.ask]
bind = "127.0.0.1:{port}"
protocol = "directory"
pool = "game"

[frontend.ask_udp]
bind = "127.0.0.1:{port}"
protocol = "directory-udp"
pool = "game"

[pool.game]
algorithm = "least-load"
self_register = true
servers = []
"#,
            key.display()
        )
    });
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let agent = d.find("agent listener ready").unwrap()["address"].as_str().unwrap().to_string();
    // Three game servers register themselves (with only their port: the address comes from
    // the agent connection) and push their client counts every 20 s (so no new report resets
    // the assignments counted while the clients below ask).
    let servers: Vec<_> = (0..3).map(|_| listen_std()).collect();
    let ports: Vec<u16> = servers.iter().map(|l| l.local_addr().unwrap().port()).collect();
    let loads = ["40", "2", "9"];
    let _agents = Agents(
        ports
            .iter()
            .zip(loads)
            .map(|(p, load)| {
                Command::new("python3")
                    .args([AGENT, "--agent", &agent, "--key-file", key.to_str().unwrap()])
                    .args(["--pool", "game", "--address", &format!(":{p}")])
                    .args(["--clients", load, "--queue", "0", "--interval", "20"])
                    .args(["--count", "3"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    wait_until(Duration::from_secs(10), "three registered servers with reports", || {
        let v = get(&format!("{api}/api/v1/pools"));
        let s = v["pools"][0]["servers"].as_array().cloned().unwrap_or_default();
        s.len() == 3 && s.iter().all(|s| s["reported"].is_object())
    });
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let port = port.to_string();
    // The least loaded (2 clients) first, over either transport on the same port; every
    // answer counts as an assignment, so after 7 answers it has caught up with the 9 of the
    // next one, and the server with 40 is never named.
    let tcp = Py::run(CLIENT, &[&port, "tcp", "1"]).rest();
    let udp = Py::run(CLIENT, &[&port, "udp", "1"]).rest();
    assert_eq!(tcp, vec![addr(1)], "TCP PICK");
    assert_eq!(udp, vec![addr(1)], "UDP PICK");
    let more = Py::run(CLIENT, &[&port, "udp", "10"]).rest();
    assert_eq!(more.len(), 10, "{more:?}");
    assert!(!more.contains(&addr(0)), "the busiest server was named: {more:?}");
    assert!(more.contains(&addr(2)), "the least-loaded server's picks never caught up: {more:?}");
}

fn listen_std() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}
