//! The HTTP service (`protocol = "http"`) seen frame by frame: Python `h2` (hyper-h2, `pip
//! install h2`) and raw `hyperframe` clients speak cleartext HTTP/2 (prior knowledge) to the
//! real binary, in front of a small scripted HTTP/1 server run by the test; and a WebSocket
//! echo (Python stdlib on both ends) through an HTTP/1.1 upgrade.
//!
//! * `h2_flow_control_small_window_gets_the_body_only_as_windows_open`
//! * `h2_the_101st_concurrent_stream_is_refused_and_the_first_100_complete`
//! * `h2_a_stream_reset_mid_response_leaves_the_others_and_the_connection_alive`
//! * `h2_sigterm_sends_goaway_finishes_the_stream_in_flight_and_takes_no_new_one`
//! * `websocket_echo_through_an_http1_upgrade`
//! * `websocket_tunnel_bytes_from_the_client_are_logged`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// The access-log lines the daemon has written so far.
fn access(d: &Daemon) -> Vec<Value> {
    d.log.lock().unwrap().iter().filter(|v| v["target"] == "fulcrum::access").cloned().collect()
}

fn http_config(server: SocketAddr) -> String {
    format!(
        r#"
workers = 1
drain_timeout = "30s"
access_log = true

[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[pool.app]
servers = ["{server}"]
connect_timeout = "1s"
"#
    )
}

/// The runtime of the test's scripted server (the test thread itself blocks on Python).
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// What the scripted server shares with the test.
#[derive(Default)]
struct Seen {
    /// Request targets in the order they arrived.
    paths: Mutex<Vec<String>>,
    /// `/hold/` requests waiting for the release.
    held: AtomicUsize,
}

/// An HTTP/1.1 keep-alive server behind the proxy: `/bytes/N` answers N bytes of
/// [`pattern`], `/hold/NAME` waits for [`Upstream::release`] and answers `held NAME`, any
/// other target answers `ok TARGET`.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    fn start(rt: &Runtime) -> Upstream {
        let _guard = rt.enter();
        let l = listen_any();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (release, _) = tokio::sync::watch::channel(false);
        let (s2, r2) = (seen.clone(), release.clone());
        let task = rt.spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(upstream_conn(s, s2.clone(), r2.subscribe()));
            }
        });
        Upstream { addr, seen, release, task }
    }

    fn held(&self) -> usize {
        self.seen.held.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.seen.paths.lock().unwrap().clone()
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_conn(
    mut s: TcpStream,
    seen: Arc<Seen>,
    mut release: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..end + 4 + len);
        seen.paths.lock().unwrap().push(path.clone());
        let body = if let Some(n) = path.strip_prefix("/bytes/") {
            pattern(n.parse().unwrap())
        } else if let Some(name) = path.strip_prefix("/hold/") {
            seen.held.fetch_add(1, Ordering::SeqCst);
            if release.wait_for(|r| *r).await.is_err() {
                return;
            }
            format!("held {name}\n").into_bytes()
        } else {
            format!("ok {path}\n").into_bytes()
        };
        let mut resp =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        resp.extend_from_slice(&body);
        if s.write_all(&resp).await.is_err() {
            return;
        }
    }
}

/// The next line of a Python program, as JSON; an `error` event fails the test with it.
fn event(py: &Py, what: &str) -> Value {
    let line = py.line_within(Duration::from_secs(30), what);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{what}: {line}"));
    assert_ne!(v["event"], "error", "{what}: {v}");
    v
}

/// The next line that is the event `name` (at most `max` lines read).
fn event_named(py: &Py, name: &str, max: usize) -> Value {
    for _ in 0..max {
        let v = event(py, name);
        if v["event"] == name {
            return v;
        }
    }
    panic!("no {name} event in {max} lines");
}

/// Shared by the `h2` clients: connect, a GET on a stream, JSON lines out.
const H2_COMMON: &str = r#"
import json, socket, sys
import h2.config, h2.connection, h2.events, h2.exceptions, h2.settings
from h2.settings import SettingCodes

def out(**kw):
    print(json.dumps(kw), flush=True)

def pattern(n):
    return bytes(i % 251 for i in range(n))

def connect(port, settings=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    if settings:
        c.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    c.initiate_connection()
    return s, c

def get(c, sid, path):
    c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":path", path),
                         (":authority", "fulcrum.test")], end_stream=True)

def run(main):
    try:
        main()
    except Exception as e:
        out(event="error", error=repr(e))
"#;

/// One GET of `size` bytes with SETTINGS_INITIAL_WINDOW_SIZE = 1024: a WINDOW_UPDATE (stream
/// and connection) for every DATA frame, the windows tracked here besides h2's own check.
const H2_FLOW: &str = r#"
def main():
    port, size = int(sys.argv[1]), int(sys.argv[2])
    WINDOW = 1024
    s, c = connect(port, {SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
    get(c, 1, "/bytes/%d" % size)
    s.sendall(c.data_to_send())
    body, status, frames, biggest, updates, overruns = bytearray(), None, 0, 0, 0, 0
    window, conn_window = WINDOW, 65535
    server_window = None
    ended = False
    while not ended:
        data = s.recv(65536)
        if not data:
            out(event="error", error="connection closed after %d bytes" % len(body))
            return
        for e in c.receive_data(data):
            if isinstance(e, h2.events.RemoteSettingsChanged):
                server_window = c.remote_settings.initial_window_size
            elif isinstance(e, h2.events.ResponseReceived):
                status = int(dict(e.headers)[":status"])
            elif isinstance(e, h2.events.DataReceived):
                n = e.flow_controlled_length
                frames += 1
                biggest = max(biggest, len(e.data))
                window -= n
                conn_window -= n
                if window < 0 or conn_window < 0:
                    overruns += 1
                body += e.data
                if n:
                    if e.stream_ended is None:
                        c.increment_flow_control_window(n, stream_id=1)
                        window += n
                    c.increment_flow_control_window(n)
                    conn_window += n
                    updates += 1
            elif isinstance(e, h2.events.StreamEnded):
                ended = True
            elif isinstance(e, h2.events.StreamReset):
                out(event="error", error="stream reset, code %d" % e.error_code)
                return
        s.sendall(c.data_to_send())
    out(event="done", status=status, length=len(body), exact=bytes(body) == pattern(size),
        frames=frames, biggest=biggest, updates=updates, overruns=overruns,
        server_window=server_window)

run(main)
"#;

#[test]
fn h2_flow_control_small_window_gets_the_body_only_as_windows_open() {
    let rt = runtime();
    let up = Upstream::start(&rt);
    let d = Daemon::run_config(&http_config(up.addr));
    let size = 64 * 1024;
    let script = format!("{H2_COMMON}{H2_FLOW}");
    let py = Py::run(&script, &[&d.addr("web").port().to_string(), &size.to_string()]);
    // h2 raises FlowControlError (an `error` event) on any DATA beyond the window it gave.
    let done = event_named(&py, "done", 1);
    eprintln!("observed: {done}");
    assert_eq!(done["status"], 200, "{done}");
    assert_eq!(done["length"], size, "{done}");
    assert_eq!(done["exact"], true, "{done}");
    assert_eq!(done["overruns"], 0, "{done}");
    assert!(done["biggest"].as_u64().unwrap() <= 1024, "a DATA frame over the window: {done}");
    // 64 KiB through a 1 KiB window: at least 64 frames, each let through by an update.
    assert!(done["frames"].as_u64().unwrap() >= 64, "{done}");
    assert!(done["updates"].as_u64().unwrap() >= 63, "{done}");
    assert_eq!(up.paths(), vec![format!("/bytes/{size}")]);
}

/// 101 GETs to `/hold/i` sent with the preface, before the server's SETTINGS are read (h2
/// limits a client only once it has them): every stream's fate, and the advertised limit.
const H2_LIMIT: &str = r#"
def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    s, c = connect(port)
    for i in range(n):
        get(c, 1 + 2 * i, "/hold/%d" % i)
    s.sendall(c.data_to_send())
    out(event="sent", streams=n)
    ended, reset, status, bodies = [], {}, {}, {}
    while len(ended) + len(reset) < n:
        data = s.recv(65536)
        if not data:
            out(event="error", error="connection closed: ended %d reset %r" % (len(ended), reset))
            return
        for e in c.receive_data(data):
            if isinstance(e, h2.events.RemoteSettingsChanged):
                out(event="settings",
                    max_concurrent_streams=c.remote_settings.max_concurrent_streams)
            elif isinstance(e, h2.events.ResponseReceived):
                status[e.stream_id] = int(dict(e.headers)[":status"])
            elif isinstance(e, h2.events.DataReceived):
                bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                ended.append(e.stream_id)
            elif isinstance(e, h2.events.StreamReset):
                reset[e.stream_id] = int(e.error_code)
                out(event="reset", stream=e.stream_id, code=int(e.error_code))
        s.sendall(c.data_to_send())
    good = [sid for sid in ended
            if status.get(sid) == 200 and bodies.get(sid) == b"held %d\n" % ((sid - 1) // 2)]
    out(event="summary", ended=sorted(ended), good=len(good),
        reset={str(k): v for k, v in reset.items()})

run(main)
"#;

#[test]
fn h2_the_101st_concurrent_stream_is_refused_and_the_first_100_complete() {
    let rt = runtime();
    let up = Upstream::start(&rt);
    let d = Daemon::run_config(&http_config(up.addr));
    let script = format!("{H2_COMMON}{H2_LIMIT}");
    let py = Py::run(&script, &[&d.addr("web").port().to_string(), "101"]);
    event_named(&py, "sent", 1);
    // The server holds 100 requests; the refusal of the 101st comes meanwhile.
    let mut settings = None;
    let mut resets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (up.held() < 100 || resets.is_empty() || settings.is_none()) && Instant::now() < deadline
    {
        match py.try_line() {
            Some(l) => {
                let v: Value = serde_json::from_str(&l).unwrap();
                assert_ne!(v["event"], "error", "{v}");
                match v["event"].as_str() {
                    Some("settings") => settings = Some(v),
                    Some("reset") => resets.push(v),
                    _ => panic!("unexpected before the release: {v}"),
                }
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let settings = settings.expect("no SETTINGS from the server");
    assert_eq!(settings["max_concurrent_streams"], 100, "{settings}");
    assert_eq!(up.held(), 100, "requests at the server while 101 streams were open");
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0]["stream"], 201, "{resets:?}");
    // REFUSED_STREAM (7); PROTOCOL_ERROR (1) would be acceptable too.
    let code = resets[0]["code"].as_u64().unwrap();
    assert!(code == 7 || code == 1, "{resets:?}");
    assert!(
        !up.paths().contains(&"/hold/100".to_string()),
        "the refused stream reached the server"
    );
    up.release();
    let summary = event_named(&py, "summary", 1);
    eprintln!("observed: {settings} {resets:?} {summary}");
    let ended: Vec<u64> =
        summary["ended"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ended, (0..100).map(|i| 1 + 2 * i).collect::<Vec<u64>>(), "{summary}");
    assert_eq!(summary["good"], 100, "{summary}");
    assert_eq!(summary["reset"].as_object().unwrap().len(), 1, "{summary}");
}

/// Three GETs at once; stream 1 (1 MiB, never given more window than the initial one) is
/// reset with CANCEL at its first DATA; 3 and 5 must finish, then a new stream 7.
const H2_RESET: &str = r#"
def main():
    port = int(sys.argv[1])
    sizes = {1: 1 << 20, 3: 100000, 5: 5000, 7: 7000}
    s, c = connect(port)
    for sid in (1, 3, 5):
        get(c, sid, "/bytes/%d" % sizes[sid])
    s.sendall(c.data_to_send())
    bodies, status, ended, reset_after = {}, {}, set(), None
    def pump(until):
        nonlocal reset_after
        while not until():
            data = s.recv(65536)
            if not data:
                raise RuntimeError("connection closed; ended %r" % sorted(ended))
            for e in c.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived):
                    status[e.stream_id] = int(dict(e.headers)[":status"])
                elif isinstance(e, h2.events.DataReceived):
                    c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
                    if e.stream_id == 1 and reset_after is None:
                        reset_after = len(bodies[1])
                        c.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
                        out(event="reset-sent", after=reset_after)
                elif isinstance(e, h2.events.StreamEnded):
                    ended.add(e.stream_id)
                elif isinstance(e, h2.events.StreamReset):
                    raise RuntimeError("server reset stream %d: %d" % (e.stream_id, e.error_code))
                elif isinstance(e, h2.events.ConnectionTerminated):
                    raise RuntimeError("GOAWAY %r" % e.error_code)
            s.sendall(c.data_to_send())
    pump(lambda: reset_after is not None and {3, 5} <= ended)
    get(c, 7, "/bytes/%d" % sizes[7])
    s.sendall(c.data_to_send())
    pump(lambda: 7 in ended)
    ok = {str(sid): status.get(sid) == 200 and bodies.get(sid) == pattern(sizes[sid])
          for sid in (3, 5, 7)}
    out(event="done", ok=ok, stream1_ended=1 in ended, stream1_bytes=len(bodies.get(1, b"")))

import h2.errors
run(main)
"#;

#[test]
fn h2_a_stream_reset_mid_response_leaves_the_others_and_the_connection_alive() {
    let rt = runtime();
    let up = Upstream::start(&rt);
    let d = Daemon::run_config(&http_config(up.addr));
    let script = format!("{H2_COMMON}{H2_RESET}");
    let py = Py::run(&script, &[&d.addr("web").port().to_string()]);
    let reset = event_named(&py, "reset-sent", 1);
    let done = event_named(&py, "done", 1);
    eprintln!("observed: {reset} {done}");
    for sid in ["3", "5", "7"] {
        assert_eq!(done["ok"][sid], true, "stream {sid}: {done}");
    }
    assert_eq!(done["stream1_ended"], false, "{done}");
    assert!(done["stream1_bytes"].as_u64().unwrap() < 1 << 20, "{done} {reset}");
    // The reset stream is logged as the client's abort, its server connection not reused.
    wait_until(Duration::from_secs(10), "the access line of the reset stream", || {
        access(&d).iter().any(|e| e["path"] == "/bytes/1048576")
    });
    let line = access(&d).into_iter().find(|e| e["path"] == "/bytes/1048576").unwrap();
    assert_eq!(line["outcome"], "client-aborted", "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() < 1 << 20, "{line}");
    wait_until(Duration::from_secs(10), "the other access lines", || {
        access(&d).iter().filter(|e| e["path"].is_string()).count() >= 4
    });
    // Request lines only: the connection's own line comes when the script closes it.
    let others: Vec<Value> = access(&d)
        .into_iter()
        .filter(|e| e["path"].is_string() && e["path"] != "/bytes/1048576")
        .collect();
    assert_eq!(others.len(), 3, "{others:?}");
    assert!(others.iter().all(|e| e["outcome"] == "ok" && e["status"] == 200), "{others:?}");
}

/// A raw client (hyperframe + hpack: h2 itself closes its connection state at the first
/// GOAWAY): GET `/hold/g` on stream 1; after a GOAWAY whose last stream is below 3, HEADERS
/// on stream 3 and a PING whose ACK shows the server has read them; then every frame until
/// the connection ends.
const H2_GOAWAY: &str = r#"
import json, socket, sys
from hyperframe.frame import (Frame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)
from hpack import Decoder, Encoder

def out(**kw):
    print(json.dumps(kw), flush=True)

def main():
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
    enc, dec = Encoder(), Decoder()
    buf = bytearray()
    def send(f):
        s.sendall(f.serialize())
    def headers(sid, path):
        f = HeadersFrame(sid)
        f.data = enc.encode([(":method", "GET"), (":scheme", "http"), (":path", path),
                             (":authority", "fulcrum.test")])
        f.flags.add("END_HEADERS")
        f.flags.add("END_STREAM")
        send(f)
    def recv_into(n):
        while len(buf) < n:
            d = s.recv(65536)
            if not d:
                return False
            buf.extend(d)
        return True
    def read_frame():
        if not recv_into(9):
            return None
        f, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
        if not recv_into(9 + length):
            return None
        f.parse_body(memoryview(bytes(buf[9:9 + length])))
        del buf[:9 + length]
        return f
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    send(SettingsFrame(0))
    headers(1, "/hold/g")
    out(event="sent")
    sent3, marker = False, b"after-3!"
    while True:
        f = read_frame()
        if f is None:
            out(event="eof", pending=len(buf))
            return
        if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(f, PingFrame) and "ACK" not in f.flags:
            send(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]))
        elif isinstance(f, PingFrame) and f.opaque_data == marker:
            out(event="sent3")
        elif isinstance(f, GoAwayFrame):
            out(event="goaway", last=f.last_stream_id, code=f.error_code)
            if f.last_stream_id < 3 and not sent3:
                sent3 = True
                headers(3, "/after")
                send(PingFrame(0, opaque_data=marker))
        elif isinstance(f, HeadersFrame):
            h = dict(dec.decode(f.data))
            out(event="headers", stream=f.stream_id, status=h.get(":status"))
        elif isinstance(f, DataFrame):
            out(event="data", stream=f.stream_id, data=f.data.decode("latin-1"),
                end="END_STREAM" in f.flags)
            if f.flow_controlled_length:
                send(WindowUpdateFrame(0, window_increment=f.flow_controlled_length))
        elif isinstance(f, RstStreamFrame):
            out(event="rst", stream=f.stream_id, code=f.error_code)

try:
    main()
except Exception as e:
    out(event="error", error=repr(e))
"#;

#[test]
fn h2_sigterm_sends_goaway_finishes_the_stream_in_flight_and_takes_no_new_one() {
    let rt = runtime();
    let up = Upstream::start(&rt);
    let mut d = Daemon::run_config(&http_config(up.addr));
    let py = Py::run(H2_GOAWAY, &[&d.addr("web").port().to_string()]);
    event_named(&py, "sent", 1);
    wait_until(Duration::from_secs(10), "the request at the server", || up.held() == 1);
    d.signal(rustix::process::Signal::TERM);
    // GOAWAY(s), then stream 3 opened past the last stream the server will take.
    let mut goaways = Vec::new();
    for _ in 0..10 {
        let v = event(&py, "GOAWAY after SIGTERM");
        match v["event"].as_str() {
            Some("goaway") => goaways.push(v),
            Some("sent3") => break,
            _ => panic!("unexpected before the release: {v}; goaways {goaways:?}"),
        }
    }
    assert!(!goaways.is_empty());
    assert!(goaways.iter().all(|g| g["code"] == 0), "GOAWAY not NO_ERROR: {goaways:?}");
    assert_eq!(goaways.last().unwrap()["last"], 1, "{goaways:?}");
    up.release();
    let mut after = Vec::new();
    for _ in 0..20 {
        let v = event(&py, "the end of the connection");
        let eof = v["event"] == "eof";
        after.push(v);
        if eof {
            break;
        }
    }
    eprintln!("observed: {goaways:?} then {after:?}");
    let of = |stream: u64| -> Vec<&Value> {
        after.iter().filter(|v| v["stream"].as_u64() == Some(stream)).collect()
    };
    let one = of(1);
    assert!(
        one.first().is_some_and(|h| h["event"] == "headers" && h["status"] == "200"),
        "{after:?}"
    );
    let body: String = one.iter().filter_map(|v| v["data"].as_str()).collect();
    assert_eq!(body, "held g\n", "{after:?}");
    assert!(one.iter().any(|v| v["end"] == true), "stream 1 never ended: {after:?}");
    // Stream 3 is ignored or refused, never answered, never forwarded.
    assert!(
        of(3).iter().all(|v| v["event"] == "rst"),
        "stream 3, opened after GOAWAY, was answered: {after:?}"
    );
    assert_eq!(after.last().unwrap()["event"], "eof", "{after:?}");
    assert_eq!(up.paths(), vec!["/hold/g".to_string()]);
    let st = d.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}");
}

/// A WebSocket echo server (argv: `server`; prints its port and each upgrade's head) or
/// client (argv: `client PORT`; prints the handshake, the echoes and the close), stdlib only.
const WS: &str = r#"
import base64, hashlib, json, os, socket, struct, sys, threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def out(**kw):
    print(json.dumps(kw), flush=True)

class Reader:
    def __init__(self, s):
        self.s, self.buf = s, b""
    def fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d
    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        b, self.buf = self.buf[:n], self.buf[n:]
        return b
    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        h, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = h.decode("latin-1").split("\r\n")
        fields = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            fields[k.strip().lower()] = v.strip()
        return lines[0], fields

def accept_of(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()

def xor(data, mask):
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))

def frame(op, data, mask=None):
    n, m = len(data), 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", 0x80 | op, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | op, m | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | op, m | 127, n)
    return head + mask + xor(data, mask) if mask else head + data

def read_frame(r):
    b0, b1 = r.exact(2)
    n = b1 & 127
    if n == 126:
        n = struct.unpack("!H", r.exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", r.exact(8))[0]
    mask = r.exact(4) if b1 & 0x80 else None
    data = r.exact(n)
    return b0 & 15, mask is not None, xor(data, mask) if mask else data

def serve(c):
    r = Reader(c)
    line, h = r.head()
    out(event="upgrade", line=line, upgrade=h.get("upgrade"), connection=h.get("connection"))
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
               % accept_of(h["sec-websocket-key"])).encode())
    while True:
        op, masked, data = read_frame(r)
        if not masked:
            out(event="error", error="unmasked client frame")
            c.close()
            return
        if op == 8:
            c.sendall(frame(8, data[:2]))
            c.close()
            return
        if op == 1:
            c.sendall(frame(1, data))

def server():
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(16)
    out(event="port", port=l.getsockname()[1])
    while True:
        c, _ = l.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

def client(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws HTTP/1.1\r\nHost: fulcrum.test\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    r = Reader(s)
    line, h = r.head()
    out(event="handshake", status=int(line.split()[1]), upgrade=h.get("upgrade"),
        accept_ok=h.get("sec-websocket-accept") == accept_of(key))
    msgs = ["hello", "caf\u00e9 \u2713", "x" * 300, "y" * 70000]
    echoes = []
    for m in msgs:
        s.sendall(frame(1, m.encode(), os.urandom(4)))
        op, masked, data = read_frame(r)
        echoes.append(op == 1 and not masked and data == m.encode())
    out(event="echoes", ok=echoes, bytes=sum(len(m.encode()) for m in msgs))
    s.sendall(frame(8, struct.pack("!H", 1000), os.urandom(4)))
    op, masked, data = read_frame(r)
    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
    try:
        rest = s.recv(1)
    except OSError as e:
        rest = repr(e).encode()
    out(event="closed", op=op, code=code, eof=rest == b"")
    s.close()

try:
    if sys.argv[1] == "server":
        server()
    else:
        client(int(sys.argv[2]))
except Exception as e:
    out(event="error", error=repr(e))
"#;

/// Runs the WebSocket client through a daemon in front of the echo server, checks the
/// handshake, the echoes and the close; returns the upgrade's access line and the payload
/// bytes sent (each way).
fn websocket_echo() -> (Value, u64) {
    let server = Py::run(WS, &["server"]);
    let port = event_named(&server, "port", 1)["port"].as_u64().unwrap();
    let d = Daemon::run_config(&http_config(SocketAddr::from(([127, 0, 0, 1], port as u16))));
    let mut client = Py::run(WS, &["client", &d.addr("web").port().to_string()]);
    let upgrade = event_named(&server, "upgrade", 1);
    assert_eq!(upgrade["line"], "GET /ws HTTP/1.1", "{upgrade}");
    assert_eq!(upgrade["upgrade"], "websocket", "{upgrade}");
    assert!(upgrade["connection"].as_str().unwrap().eq_ignore_ascii_case("upgrade"), "{upgrade}");
    let hs = event_named(&client, "handshake", 1);
    assert_eq!(hs["status"], 101, "{hs}");
    assert_eq!(hs["upgrade"], "websocket", "{hs}");
    assert_eq!(hs["accept_ok"], true, "{hs}");
    let echoes = event_named(&client, "echoes", 1);
    assert_eq!(echoes["ok"], serde_json::json!([true, true, true, true]), "{echoes}");
    let closed = event_named(&client, "closed", 1);
    assert_eq!(closed["op"], 8, "{closed}");
    assert_eq!(closed["code"], 1000, "{closed}");
    assert_eq!(closed["eof"], true, "{closed}");
    assert!(client.rest().is_empty());
    assert!(server.try_line().is_none(), "the server complained");
    wait_until(Duration::from_secs(10), "the access line of the upgrade", || {
        access(&d).iter().any(|e| e["path"] == "/ws")
    });
    let line = access(&d).into_iter().find(|e| e["path"] == "/ws").unwrap();
    eprintln!("observed: {hs} {echoes} {closed} {line}");
    (line, echoes["bytes"].as_u64().unwrap())
}

#[test]
fn websocket_echo_through_an_http1_upgrade() {
    let (line, payload) = websocket_echo();
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["outcome"], "upgraded", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    // The server's frames (heads included) and its close, counted through the tunnel.
    assert!(line["bytes_out"].as_u64().unwrap() > payload, "{line}");
}

/// The client's side of the tunnel belongs in `bytes_in` as the server's is in `bytes_out`.
#[test]
fn websocket_tunnel_bytes_from_the_client_are_logged() {
    let (line, payload) = websocket_echo();
    assert!(line["bytes_in"].as_u64().unwrap() > payload, "{line}");
}
