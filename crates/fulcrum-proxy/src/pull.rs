//! The pull side of the agent protocol: for servers that cannot dial out, the balancer polls
//! each server's agent port and reads HAProxy's agent-check text (`up`, `drain`, `down`,
//! `75%`...). One task per pool, on the control plane; it publishes into the per-server
//! atomics like the push side does.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_core::agentcheck::{PulledState, parse};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::context::Shared;
use crate::state::{AGENT_DOWN, AGENT_DRAIN, AGENT_UP};

/// Reads one agent reply from `addr`: at most 512 bytes, up to a newline or EOF.
async fn poll(addr: std::net::SocketAddr, timeout: Duration) -> Result<String, String> {
    let read = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; 512];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if n == 0 || buf.contains(&b'\n') || buf.len() >= 512 {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
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
            let addr = std::net::SocketAddr::new(s.addr.ip(), cfg.port);
            polls.spawn(async move { (i, poll(addr, cfg.timeout).await) });
        }
        while let Some(Ok((i, r))) = polls.join_next().await {
            let Some(s) = p.servers.get(i) else { continue };
            match r {
                Ok(text) => {
                    let reply = parse(&text);
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
