//! The pull side of the agent protocol: for servers that cannot dial out, the balancer polls
//! each server (its agent port, or its own address), optionally writes a question first
//! (`send`), and reads one answer: HAProxy's agent-check text (`up`, `drain`, `down`,
//! `75%`...), or a bare number, the server's current clients, taken as a load report. One task
//! per pool, on the control plane; it publishes into the per-server atomics like the push side
//! does.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::agentcheck::{Pulled, PulledState, parse_pulled};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::context::Shared;
use crate::state::{AGENT_DOWN, AGENT_DRAIN, AGENT_UP};

/// Most bytes of one answer read; the rest is never read.
const MAX_ANSWER: usize = 512;

/// Asks `addr` once: connects, writes `send` if any, and reads one answer, at most
/// [`MAX_ANSWER`] bytes, up to a newline or EOF. The whole exchange is bounded by `timeout`.
async fn poll(
    addr: std::net::SocketAddr,
    send: Option<&[u8]>,
    timeout: Duration,
) -> Result<String, String> {
    let read = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        if let Some(q) = send {
            s.write_all(q).await.map_err(|e| e.to_string())?;
        }
        let mut buf = [0u8; MAX_ANSWER];
        let mut len = 0;
        while let Some(room) = buf.get_mut(len..).filter(|r| !r.is_empty()) {
            let n = s.read(room).await.map_err(|e| e.to_string())?;
            len += n;
            if n == 0 || buf.get(..len).unwrap_or_default().contains(&b'\n') {
                break;
            }
        }
        // One answer: what follows its line, in the same read, is not part of it.
        let got = buf.get(..len).unwrap_or_default();
        let line = got.iter().position(|&b| b == b'\n').map_or(got, |i| &got[..=i]);
        Ok(String::from_utf8_lossy(line).into_owned())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| "timeout".to_string())?
}

/// Polls the agents of `pool`'s servers every `interval` until `stop` or the pool goes away.
pub async fn run_agent_pull(shared: Arc<Shared>, pool: String, stop: CancellationToken) {
    loop {
        let Some(p) = shared.state.load().pool(&pool).cloned() else { return };
        let Some(cfg) = p.agent_pull.clone() else { return };
        let mut polls = tokio::task::JoinSet::new();
        for (i, s) in p.servers.iter().enumerate() {
            let addr = match cfg.port {
                Some(port) => std::net::SocketAddr::new(s.addr.ip(), port),
                None => s.addr,
            };
            let (send, timeout) = (cfg.send.clone(), cfg.timeout);
            polls.spawn(async move { (i, poll(addr, send.as_deref(), timeout).await) });
        }
        while let Some(Ok((i, r))) = polls.join_next().await {
            let Some(s) = p.servers.get(i) else { continue };
            match r {
                Ok(text) => {
                    let reply = match parse_pulled(&text) {
                        // Exactly what a pushed report of that many clients does.
                        Pulled::Clients(n) => {
                            s.stats.on_report(n, 0, crate::clock::now_ms());
                            continue;
                        }
                        Pulled::Agent(reply) => reply,
                    };
                    if let Some(state) = reply.state {
                        let new = match state {
                            PulledState::Up => AGENT_UP,
                            PulledState::Drain => AGENT_DRAIN,
                            PulledState::Down => AGENT_DOWN,
                        };
                        if s.stats.agent_state() != new {
                            tracing::info!(pool = %pool, server = %s.key, agent = text.trim(), "agent state changed");
                        }
                        s.stats.set_agent_state(new);
                    }
                    s.stats.set_agent_maxconn(reply.maxconn, crate::clock::now_ms());
                    if let Some(pct) = reply.weight_pct {
                        s.stats.set_agent_weight_pct(pct.max(1));
                    }
                }
                // An unreachable agent says nothing: health checks judge the server itself.
                Err(e) => {
                    tracing::debug!(pool = %pool, server = %s.key, error = %e, "agent poll failed")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(2);

    /// A server that reads `want` bytes, then writes `answer` and keeps the connection open.
    async fn server(want: usize, answer: Vec<u8>) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut q = vec![0u8; want];
            s.read_exact(&mut q).await.unwrap();
            assert_eq!(q, b"__clients?\n".get(..want).unwrap());
            let _ = s.write_all(&answer).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        addr
    }

    #[tokio::test]
    async fn asks_then_reads_one_line() {
        let addr = server(11, b"7\nmore".to_vec()).await;
        assert_eq!(poll(addr, Some(b"__clients?\n"), T).await.unwrap(), "7\n");
    }

    #[tokio::test]
    async fn an_answer_without_end_is_cut_at_the_limit() {
        let addr = server(0, vec![b'9'; 4 * MAX_ANSWER]).await;
        let a = poll(addr, None, T).await.unwrap();
        assert_eq!(a.len(), MAX_ANSWER);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let addr = server(11, Vec::new()).await;
        let t = Duration::from_millis(200);
        assert_eq!(poll(addr, Some(b"__clients?\n"), t).await, Err("timeout".into()));
    }
}
