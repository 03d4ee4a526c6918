//! The lookup front server, one of the five founding systems, run the way its users ran it:
//! a plain-Python client that sends a bare hostname with one `send()` and no newline, waits
//! for the reply with one `recv()`, and ends with `done`; two plain-Python table servers that
//! each know half of the names, answer with one `send()` and stay silent on names they do not
//! know. fulcrum sits between them as a TCP fan-out frontend with `framing = "message"` and
//! `quit = "done"`: right answers from whichever server knows the name, the timeout error
//! when nobody does, and `done` closes the client at once without reaching a table server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// A table server: `python3 table.py [--lines] NAME=ADDR ...`; prints its port, then one line
/// per message it receives (`got <text>`), flushed, so the test sees what reached it. With
/// `--lines` its answers end in a newline (for line-framed frontends).
const TABLE: &str = r#"
import socket, sys, threading
args = sys.argv[1:]
end = ""
if args and args[0] == "--lines":
    end = "\n"
    args = args[1:]
table = dict(a.split("=", 1) for a in args)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        while True:
            data = conn.recv(1024)
            if not data:
                return
            name = data.decode().strip()
            print("got", name, flush=True)
            if name in table:
                conn.send((table[name] + end).encode())
            # unknown names: silent, as the original table servers were
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The client: `python3 client.py PORT NAME...`; one line per name (`<name> -> <reply>`),
/// then `done -> <reply>` where an empty reply means the connection was closed.
const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
for name in sys.argv[2:]:
    s.send(name.encode())
    print(name, "->", s.recv(1024).decode(), flush=True)
s.send(b"done")
print("done ->", repr(s.recv(1024)), flush=True)
"#;

#[test]
fn lookup_front_server_with_bare_messages_and_done() {
    let mut left = Py::run(TABLE, &["alpha.example=10.0.0.1", "beta.example=10.0.0.2"]);
    let mut right = Py::run(TABLE, &["gamma.example=10.0.1.1", "delta.example=10.0.1.2"]);
    let (lp, rp) = (left.line(), right.line());
    let d = Daemon::run_config(&format!(
        r#"
[frontend.lookup]
bind = "127.0.0.1:0"
pool = "tables"
mode = "fanout"
framing = "message"
quit = "done"

[frontend.lookup.fanout]
timeout = "500ms"
on_timeout = "Error:HOST NOT FOUND"

[pool.tables]
servers = ["127.0.0.1:{lp}", "127.0.0.1:{rp}"]
"#
    ));
    let port = d.addr("lookup").port().to_string();
    let names =
        ["alpha.example", "gamma.example", "nowhere.example", "delta.example", "beta.example"];
    let mut args = vec![port.as_str()];
    args.extend(names);
    let mut client = Py::run(CLIENT, &args);
    let got: Vec<String> = (0..names.len() + 1).map(|_| client.line()).collect();
    assert_eq!(
        got,
        vec![
            "alpha.example -> 10.0.0.1",
            "gamma.example -> 10.0.1.1",
            "nowhere.example -> Error:HOST NOT FOUND",
            "delta.example -> 10.0.1.2",
            "beta.example -> 10.0.0.2",
            // Closed without an answer: not the timeout error.
            "done -> b''",
        ]
    );
    assert!(client.child.wait().unwrap().success());
    // Both table servers were asked every name, as sent (no newline added), and never `done`.
    drop(d);
    for t in [&mut left, &mut right] {
        let _ = t.child.kill();
        let seen = t.rest();
        let asked: Vec<&str> = seen.iter().filter_map(|l| l.strip_prefix("got ")).collect();
        assert_eq!(asked, names, "what a table server received: {seen:?}");
    }
}

/// The same frontend keys on line-framed clients: `quit` closes a line client too, and a
/// directory frontend honours both keys (after the answers to the requests before `quit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_closes_line_clients_of_fanout_and_directory_without_forwarding() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut table = Py::run(TABLE, &["--lines", "alpha.example=10.0.0.1"]);
    let tp = tokio::task::block_in_place(|| table.line());
    let d = Daemon::run_config(&format!(
        r#"
[frontend.lookup]
bind = "127.0.0.1:0"
pool = "tables"
mode = "fanout"
quit = "done"

[frontend.lookup.fanout]
timeout = "2s"

[frontend.dir]
bind = "127.0.0.1:0"
protocol = "directory"
pool = "tables"
quit = "QUIT"

[frontend.dir_msg]
bind = "127.0.0.1:0"
protocol = "directory"
pool = "tables"
framing = "message"
quit = "done"

[pool.tables]
servers = ["127.0.0.1:{tp}"]
"#
    ));
    let mut s = tokio::net::TcpStream::connect(d.addr("lookup")).await.unwrap();
    s.write_all(b"alpha.example\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"10.0.0.1\n");
    s.write_all(b"done\r\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0, "closed without an answer, got {:?}", &buf[..n]);

    let mut s = tokio::net::TcpStream::connect(d.addr("dir")).await.unwrap();
    s.write_all(b"PICK\nQUIT\nPICK\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), format!("127.0.0.1:{tp}\n"));

    // A message client of the directory: a bare `PICK`, a bare answer, `done` closes.
    let mut s = tokio::net::TcpStream::connect(d.addr("dir_msg")).await.unwrap();
    s.write_all(b"PICK").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("127.0.0.1:{tp}"));
    s.write_all(b"done").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0, "closed without an answer, got {:?}", &buf[..n]);
    drop(d);
    let _ = table.child.kill();
    let seen = tokio::task::block_in_place(|| table.rest());
    assert_eq!(seen, vec!["got alpha.example"], "done must not be forwarded");
}

/// With `framing = "message"` and no `on_timeout`, a request nobody answers gets nothing at
/// all: the client's next reply is the next answer, not an empty message before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_framing_without_on_timeout_sends_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let table = Py::run(TABLE, &["alpha.example=10.0.0.1"]);
    let tp = tokio::task::block_in_place(|| table.line());
    let d = Daemon::run_config(&format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[frontend.lookup]
bind = "127.0.0.1:0"
pool = "tables"
mode = "fanout"
framing = "message"

[frontend.lookup.fanout]
timeout = "200ms"

[pool.tables]
servers = ["127.0.0.1:{tp}"]
"#
    ));
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let mut s = tokio::net::TcpStream::connect(d.addr("lookup")).await.unwrap();
    s.write_all(b"nowhere.example").await.unwrap();
    wait_until_async(Duration::from_secs(10), "the request timed out", || {
        metric(&api, "fulcrum_frontend_fanout_timeouts_total{frontend=\"lookup\"}") >= 1.0
    })
    .await;
    s.write_all(b"alpha.example").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"10.0.0.1");
}
