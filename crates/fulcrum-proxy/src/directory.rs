//! Directory mode: a client asks which server to use and connects to it itself. Over TCP the
//! request is a line `PICK` or `PICK <pool>` (several per connection), over UDP one request
//! per datagram; the answer is `<ip>:<port>` or `ERR <reason>`, framed the same way. Every
//! answer counts as an assignment to that server until its next load report, so a burst of
//! clients spreads instead of piling onto the server that looked idle.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fulcrum_core::balance::hash_ip;
use fulcrum_core::framing::{Framing, is_quit, take_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::context::{AcceptCtx, Shared};
use crate::ledger::Ledger;
use crate::ratelog::RateLimit;
use crate::state::Snapshot;

/// Longest request line; a client sending more without a newline is cut off.
const MAX_LINE: usize = 512;
/// UDP answers waiting for the socket to take them, per worker; beyond it they are dropped
/// and counted.
const UDP_QUEUE: usize = 4096;

static UDP_DROP_LOG: RateLimit = RateLimit::new(1_000);

/// The answer to one request (a line without its line end, or a datagram or message, which
/// may end in one).
pub fn answer(snapshot: &Snapshot, frontend: &str, line: &[u8], peer: SocketAddr) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else { return "ERR request is not UTF-8".into() };
    let mut words = text.split_ascii_whitespace();
    if words.next() != Some("PICK") {
        return "ERR unknown request (expected PICK or PICK <pool>)".into();
    }
    let pool = match (words.next(), words.next()) {
        (None, _) => match snapshot.frontend(frontend).and_then(|f| snapshot.pools.get(f.pool)) {
            Some(p) => p,
            None => return "ERR frontend has no pool".into(),
        },
        (Some(name), None) => match snapshot.pool(name) {
            Some(p) => p,
            None => return format!("ERR no pool {name}"),
        },
        _ => return "ERR unknown request (expected PICK or PICK <pool>)".into(),
    };
    let picked = pool.admit_directory(hash_ip(peer.ip()));
    match picked.and_then(|i| pool.servers.get(i)) {
        Some(s) => {
            s.stats.on_assigned();
            s.stats.connections_total.fetch_add(1, Ordering::Relaxed);
            s.addr.to_string()
        }
        None => "ERR no server available".into(),
    }
}

/// Serves `PICK` requests on one TCP connection (lines, or one message per read with
/// `framing = "message"`) until the client closes, idles out or sends the `quit` word.
pub async fn serve_tcp(mut ledger: Ledger, mut s: TcpStream) {
    let shared = ledger.shared().clone();
    let ctx = ledger.ctx().clone();
    let peer = ledger.client();
    let stats = &ctx.stats;
    let (idle, send_timeout) = shared
        .state
        .load()
        .frontend(&ctx.name)
        .map_or((Duration::from_secs(300), Duration::from_secs(30)), |f| {
            (f.idle_timeout, f.send_timeout)
        });
    let framing = ctx.frontend.framing;
    let quit = ctx.frontend.quit.as_deref().map(str::as_bytes);
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 1024];
    let mut out = String::new();
    ledger.outcome = 'conn: loop {
        let n = match tokio::time::timeout(idle, s.read(&mut chunk)).await {
            Ok(Ok(0)) => break "done",
            Ok(Err(_)) => break "client-error",
            Err(_) => break "idle-timeout",
            Ok(Ok(n)) => n,
        };
        ledger.bytes_in += n as u64;
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        // Answer every complete request in what arrived (lines may be coalesced or split).
        out.clear();
        let snapshot = shared.state.load();
        let mut quitting = false;
        while let Some(req) = take_request(framing, &mut buf, false) {
            if is_quit(&req, quit) {
                quitting = true;
                break;
            }
            out.push_str(&answer(&snapshot, &ctx.name, &req, peer));
            if framing == Framing::Line {
                out.push('\n');
            }
        }
        drop(snapshot);
        if quitting && out.is_empty() {
            break 'conn "quit";
        }
        if buf.len() > MAX_LINE {
            let _ = tokio::time::timeout(send_timeout, s.write_all(b"ERR request line too long\n"))
                .await;
            break "line-too-long";
        }
        if !out.is_empty() {
            // A client that does not read its answers is closed after `send_timeout`.
            match tokio::time::timeout(send_timeout, s.write_all(out.as_bytes())).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break "client-error",
                Err(_) => {
                    stats.send_timeouts.fetch_add(1, Ordering::Relaxed);
                    break "send-timeout";
                }
            }
            ledger.bytes_out += out.len() as u64;
        }
        if quitting {
            // The answers to the requests before it are sent; nothing after it is read.
            break "quit";
        }
    };
}

/// Answers `PICK` datagrams on one worker's UDP socket until `stop`. Answers the socket cannot
/// take at once wait in a bounded queue; beyond it they are dropped and counted.
pub async fn serve_udp(
    shared: Arc<Shared>,
    ctx: Arc<AcceptCtx>,
    sock: UdpSocket,
    stop: CancellationToken,
) {
    let mut pending: VecDeque<(Vec<u8>, SocketAddr)> = VecDeque::new();
    let mut buf = [0u8; 1500];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, peer)) = r else { continue };
                if crate::guard::admit_lone_datagram(&shared, &ctx, peer).is_err() {
                    continue;
                }
                ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                ctx.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                let req = buf.get(..n).unwrap_or_default();
                let req = req.strip_suffix(b"\n").unwrap_or(req);
                let reply = answer(&shared.state.load(), &ctx.name, req, peer).into_bytes();
                if pending.is_empty() {
                    match sock.try_send_to(&reply, peer) {
                        Ok(m) => {
                            ctx.stats.bytes_out.fetch_add(m as u64, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => {
                            ctx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                if pending.len() >= UDP_QUEUE {
                    ctx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(skipped) = UDP_DROP_LOG.allow(now_ms()) {
                        tracing::warn!(frontend = %ctx.name, skipped, "directory answer dropped: send queue full");
                    }
                } else {
                    pending.push_back((reply, peer));
                }
            }
            r = sock.writable(), if !pending.is_empty() => {
                if r.is_err() {
                    continue;
                }
                while let Some((reply, peer)) = pending.front() {
                    match sock.try_send_to(reply, *peer) {
                        Ok(m) => {
                            ctx.stats.bytes_out.fetch_add(m as u64, Ordering::Relaxed);
                            pending.pop_front();
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            ctx.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                            pending.pop_front();
                        }
                    }
                }
            }
            () = stop.cancelled() => return,
        }
    }
}
