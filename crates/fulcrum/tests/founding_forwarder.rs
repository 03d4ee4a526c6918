//! The "forwarder" founding system (`LISTEN [IP:]PORT [[IP:]PORT]*`): each destination served
//! a bounded number of clients at a time and the rest waited in line. Its users' programs are
//! written here as they wrote them, plain Python stdlib sockets: echo servers that handle one
//! client at a time (accept, echo until EOF, close, next), and clients that send their bytes,
//! read them back and hang up when told. Through fulcrum: a `tcp` frontend, two servers with
//! `max_connections = 1` and a queue.
//!
//! `forwarder_clients_wait_in_line_and_get_their_own_bytes`: 2 clients are served at once,
//! 8 more arrive one after another (each queued before the next starts); as clients hang up
//! one at a time, the head of the line is served. Every client gets exactly its own bytes
//! back, the servers never see a second connection while one is open (a one-at-a-time
//! server would leave it in its backlog: it checks), and the order the servers served
//! clients in is the order they arrived in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// One client at a time, as the forwarder's destinations were: while it serves one client, a
/// second connection can only wait in the backlog, so finding one there when the current
/// client hangs up means two were open at once. Prints its port, then `start NAME` when a
/// client's first bytes arrive and `end NAME alone|overlap` when it has gone.
const SERVER: &str = r#"
import select, socket, sys
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.bind(("127.0.0.1", 0))
l.listen(64)
print("port", l.getsockname()[1], flush=True)
while True:
    c, _ = l.accept()
    who = None
    while True:
        data = c.recv(4096)
        if not data:
            break
        if who is None:
            who = data.split(b" ")[0].decode("ascii", "replace")
            print("start", who, flush=True)
        c.sendall(data)
    overlap = bool(select.select([l], [], [], 0)[0])
    c.close()
    print("end", who, "overlap" if overlap else "alone", flush=True)
"#;

/// Sends its message, reads it all back, reports, then hangs up when a line arrives on stdin.
const CLIENT: &str = r#"
import socket, sys
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
msg = (name + " ").encode() + (name.encode() * 2000)
s = socket.create_connection((host, port), timeout=30)
s.sendall(msg)
got = b""
while len(got) < len(msg):
    data = s.recv(65536)
    if not data:
        break
    got += data
print("ok" if got == msg else "mismatch %d of %d" % (len(got), len(msg)), flush=True)
sys.stdin.readline()
s.close()
print("bye", flush=True)
"#;

fn queue_length(api: &str) -> u64 {
    get(&format!("{api}/api/v1/pools"))["pools"][0]["queue_length"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_clients_wait_in_line_and_get_their_own_bytes() {
    // Both servers write into one channel: a server's line about a client is written before
    // that client gets its bytes back, so the lines arrive in the order clients were served.
    let (tx, from_servers) = mpsc::channel();
    let _servers: Vec<Py> = (0..2).map(|_| Py::run_into(SERVER, &[], tx.clone())).collect();
    let next = |limit: Duration| {
        from_servers.recv_timeout(limit).unwrap_or_else(|_| panic!("no server line in {limit:?}"))
    };
    let ports: Vec<String> = (0..2)
        .map(|_| next(Duration::from_secs(10)).strip_prefix("port ").unwrap().to_string())
        .collect();
    let toml = format!(
        r#"
workers = 2
drain_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[frontend.forward]
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "destinations"

[pool.destinations]
servers = [
  {{ address = "127.0.0.1:{}", max_connections = 1 }},
  {{ address = "127.0.0.1:{}", max_connections = 1 }},
]
queue = {{ size = 100, timeout = "30s" }}
"#,
        ports[0], ports[1]
    );
    let d = Daemon::run_config(&toml);
    let front = d.addr("forward");
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let port = front.port().to_string();
    let start = |n: usize| Py::run(CLIENT, &["127.0.0.1", &port, &format!("c{n:02}")]);
    let limit = Duration::from_secs(20);
    // What the servers saw, in order: `start` lines give the serving order, `end` lines
    // whether another connection was open meanwhile.
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let served_next = |ends: &mut Vec<String>| loop {
        let line = next(limit);
        match line.strip_prefix("start ") {
            Some(who) => break who.to_string(),
            None => ends.push(line),
        }
    };
    // Two clients, one per destination, served at once.
    let mut clients = Vec::new();
    for n in 1..=2 {
        let c = start(n);
        assert_eq!(c.line_within(limit, "a client"), "ok");
        starts.push(served_next(&mut ends));
        clients.push(c);
    }
    // Eight more arrive one after another; each is in line before the next one starts.
    for n in 3..=10 {
        clients.push(start(n));
        let want = n as u64 - 2;
        wait_until_async(limit, &format!("{want} clients in line"), || queue_length(&api) == want)
            .await;
    }
    for c in &clients[2..] {
        assert_eq!(c.try_line(), None, "a client in line was served");
    }
    // Clients hang up one at a time: each time, the head of the line is served, and only it.
    for k in 0..8 {
        clients[k].hang_up();
        assert_eq!(clients[k].line_within(limit, "a leaving client"), "bye");
        assert_eq!(
            clients[k + 2].line_within(limit, "the head of the line"),
            "ok",
            "client {}",
            k + 3
        );
        starts.push(served_next(&mut ends));
        for c in &clients[k + 3..] {
            assert_eq!(c.try_line(), None, "served before its turn");
        }
    }
    for c in &mut clients[8..] {
        c.hang_up();
        assert_eq!(c.line_within(limit, "a leaving client"), "bye");
    }
    while ends.len() < 10 {
        ends.push(next(limit));
    }
    let want: Vec<String> = (1..=10).map(|n| format!("c{n:02}")).collect();
    assert_eq!(starts, want, "served out of arrival order");
    assert!(ends.iter().all(|l| l.ends_with(" alone")), "two connections at once: {ends:?}");
    assert_eq!(queue_length(&api), 0);
}

/// The forwarder's own command line, `LISTEN DEST...`, is `fulcrum forward`; with
/// `--max-per-server 1 --queue N` each destination serves one client at a time and the others
/// wait in line instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_command_caps_each_destination_and_queues() {
    use tokio::io::AsyncReadExt;
    let a = Backend::start(Mode::Named("a")).await;
    let port = a.port().to_string();
    let d = Daemon::spawn(&[
        "forward",
        "--workers",
        "2",
        "--max-per-server",
        "1",
        "--queue",
        "10",
        "--queue-timeout",
        "20s",
        "127.0.0.1:0",
        &port,
    ]);
    let front = d.addr("forward");
    let first = tokio::net::TcpStream::connect(front).await.unwrap();
    let mut byte = [0u8; 2];
    let mut first = first;
    first.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"a\n");
    let mut second = tokio::net::TcpStream::connect(front).await.unwrap();
    let early =
        tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut byte)).await;
    assert!(early.is_err(), "a second client reached a destination capped at 1");
    assert_eq!(a.accepts(), 1);
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), second.read_exact(&mut byte))
        .await
        .expect("the waiting client was not served")
        .unwrap();
    assert_eq!(&byte, b"a\n");
    assert_eq!(a.accepts(), 2);
}
