//! The least-load TCP balancer, one of the five founding systems, run the way its users ran
//! it: plain Python socket servers that answer `__clients?` with a bare number (how many
//! clients they serve now) and serve everyone else, and plain Python clients. fulcrum asks
//! each server itself (`agent_pull` with `send` and no `port`) and sends new connections to the
//! server reporting fewer clients, even when those clients never came through fulcrum.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// The server: one thread per connection; a connection whose first message is `__clients?`
/// gets the count and is closed (it is a question, not a client), every other one is a client
/// for as long as it stays: each message comes back prefixed with the server's name.
const SERVER: &str = r#"
import socket, sys, threading

name = sys.argv[1]
clients = 0
lock = threading.Lock()

def serve(conn):
    global clients
    data = conn.recv(1024)
    if data.strip() == b"__clients?":
        with lock:
            n = clients
        conn.sendall(b"%d\n" % n)
        conn.close()
        return
    with lock:
        clients += 1
    try:
        while data:
            conn.sendall(name.encode() + b" " + data)
            data = conn.recv(1024)
    finally:
        with lock:
            clients -= 1
        conn.close()

srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(128)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// The client: opens N connections one after the other, each sends one message with one
/// `send()` and prints the name of the server that answered; all stay open until stdin closes.
const CLIENT: &str = r#"
import socket, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.send(b"hello %d\n" % i)
    answer = s.recv(1024).decode()
    print(answer.split(" ")[0], flush=True)
    held.append(s)
sys.stdin.read()
for s in held:
    s.close()
"#;

struct Script {
    child: Child,
    out: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Script {
    fn start(path: &std::path::Path, args: &[&str]) -> Script {
        let mut child = Command::new("python3")
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Script { child, out }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.out.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("a line before the script ended")
    }

    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.line().await);
        }
        v
    }

    /// Closes stdin (the client lets its connections go) and waits for the exit.
    async fn finish(mut self) {
        drop(self.child.stdin.take());
        let st = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the script ends within 10 s")
            .unwrap();
        assert!(st.success(), "{st}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_load_asks_the_servers_how_many_clients_they_have() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = (dir.path().join("server.py"), dir.path().join("client.py"));
    std::fs::write(&server, SERVER).unwrap();
    std::fs::write(&client, CLIENT).unwrap();
    let mut a = Script::start(&server, &["A"]);
    let mut b = Script::start(&server, &["B"]);
    let (pa, pb) = (a.line().await, b.line().await);
    let d = Daemon::run_config(&format!(
        r#"
workers = 1
[admin]
bind = "127.0.0.1:0"
[frontend.web]
bind = "127.0.0.1:0"
pool = "app"
[pool.app]
algorithm = "least-load"
servers = ["127.0.0.1:{pa}", "127.0.0.1:{pb}"]
agent_pull = {{ send = "__clients?\n", interval = "100ms", timeout = "500ms" }}
"#
    ));
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let front: SocketAddr = d.addr("web");
    let (fhost, fport) = (front.ip().to_string(), front.port().to_string());
    let reported = |api: &str| -> Vec<Option<u64>> {
        let v = get(&format!("{api}/api/v1/pools"));
        v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["reported"]["clients"].as_u64())
            .collect()
    };
    wait_until_async(Duration::from_secs(5), "both servers' first answers", || {
        reported(&api) == [Some(0), Some(0)]
    })
    .await;

    // Six clients of A that never passed through fulcrum: only A's answer tells.
    let mut direct = Script::start(&client, &["127.0.0.1", &pa, "6"]);
    assert_eq!(direct.lines(6).await, ["A"; 6]);
    wait_until_async(Duration::from_secs(5), "A to report its six clients", || {
        reported(&api) == [Some(6), Some(0)]
    })
    .await;
    // New connections go to B, which has fewer (least-connections would alternate).
    let mut through = Script::start(&client, &[&fhost, &fport, "4"]);
    assert_eq!(through.lines(4).await, ["B"; 4]);
    wait_until_async(Duration::from_secs(5), "B to report its four clients", || {
        reported(&api) == [Some(6), Some(4)]
    })
    .await;

    // A's clients leave: A now has fewer, and takes the next ones.
    direct.finish().await;
    wait_until_async(Duration::from_secs(5), "A to report none", || {
        reported(&api) == [Some(0), Some(4)]
    })
    .await;
    let mut more = Script::start(&client, &[&fhost, &fport, "3"]);
    assert_eq!(more.lines(3).await, ["A"; 3]);
    more.finish().await;
    through.finish().await;
    // The questions were never taken for clients: both servers are back to none.
    wait_until_async(Duration::from_secs(5), "both servers idle", || {
        reported(&api) == [Some(0), Some(0)]
    })
    .await;
}
