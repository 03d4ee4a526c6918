//! The agent listener (push side of the agent protocol, docs/agent-protocol.md): backends dial
//! in, prove they hold the pre-shared key, and report their load. Runs on the control plane;
//! the data plane only sees the per-server atomics the reports update. A session that breaks
//! the protocol is told why (one ERROR frame), closed, counted and logged; the daemon goes on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fulcrum_core::agent::{self, AgentState, Decoder, FrameError, Message, NONCE_LEN, Session};
use fulcrum_proxy::{ServerStats, now_ms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;

/// Counters of the agent listener, for /metrics.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub sessions_total: AtomicU64,
    pub sessions_active: AtomicU64,
    pub reports: AtomicU64,
    /// Rejected frames by reason label (FrameError::reason).
    pub rejected: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl AgentStats {
    fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        self.rejected.lock().map(|m| m.iter().map(|(k, v)| (*k, *v)).collect()).unwrap_or_default()
    }
}

/// Why a silent session was closed; counted as "silent", not as a protocol violation.
const SILENT: &str = "no report within the report timeout";

static REJECT_LOG: fulcrum_proxy::RateLimit = fulcrum_proxy::RateLimit::new(1_000);

/// Accepts agent sessions until `stop`.
pub async fn serve_agent(
    listener: TcpListener,
    controller: Arc<Mutex<Controller>>,
    key: Arc<Vec<u8>>,
    ttl: Duration,
    stats: Arc<AgentStats>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (controller, key, stats, stop) =
            (controller.clone(), key.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            stats.sessions_total.fetch_add(1, Ordering::Relaxed);
            stats.sessions_active.fetch_add(1, Ordering::Relaxed);
            let mut reg = Registration::default();
            let r = tokio::select! {
                r = session(stream, &controller, &key, ttl, &stats, &mut reg) => r,
                () = stop.cancelled() => Ok(()),
            };
            if let Err(e) = r {
                let reason = match &e {
                    FrameError::Remote(m) if m == SILENT => "silent",
                    e => e.reason(),
                };
                stats.reject(reason);
                if let Some(skipped) = REJECT_LOG.allow(now_ms()) {
                    tracing::warn!(peer = %peer, error = %e, reason, skipped, "agent session closed");
                }
            }
            reg.leave(&controller).await;
            stats.sessions_active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What a session registered, undone when it ends.
#[derive(Default)]
struct Registration {
    server: Option<(String, String, Arc<ServerStats>)>,
    dynamic: bool,
}

impl Registration {
    async fn leave(&mut self, controller: &Mutex<Controller>) {
        let Some((pool, address, stats)) = self.server.take() else { return };
        // The server's own word no longer holds once it stops talking.
        stats.set_agent_state(fulcrum_proxy::AGENT_UP);
        if self.dynamic {
            controller.lock().await.deregister(&pool, &address);
        }
    }
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // The nonce makes every session's MACs unique, so a recorded session cannot be replayed.
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut n))
        .is_ok();
    if !ok {
        for c in n.chunks_mut(8) {
            let r = fastrand::u64(..).to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }
    n
}

async fn session(
    mut s: TcpStream,
    controller: &Mutex<Controller>,
    key: &[u8],
    ttl: Duration,
    stats: &AgentStats,
    reg: &mut Registration,
) -> Result<(), FrameError> {
    let nonce = nonce();
    let io = |_| FrameError::Truncated;
    s.write_all(&agent::challenge_bytes(&nonce)).await.map_err(io)?;
    let mut session = Session::new(key, nonce);
    let mut decoder = Decoder::new();
    let mut buf = [0u8; agent::MAX_BUFFER];
    let result = async {
        loop {
            // A silent backend is gone: reports stop for the whole ttl.
            // Never read more than the decoder may hold: a backend whose reports queued up
            // in the socket must not look like one sending an oversized frame.
            let room = decoder.room().clamp(1, buf.len());
            let n = match tokio::time::timeout(ttl, s.read(&mut buf[..room])).await {
                Ok(Ok(0)) => return decoder.finish(),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return Err(FrameError::Truncated),
                Err(_) => return Err(FrameError::Remote(SILENT.into())),
            };
            decoder.push(buf.get(..n).unwrap_or_default())?;
            while let Some(raw) = decoder.next_frame()? {
                match session.open(&raw)? {
                    Message::Hello(h) => {
                        let mut c = controller.lock().await;
                        let (stats, dynamic) = c
                            .register(&h.pool, &h.address)
                            .map_err(|e| FrameError::BadPayload(e.message))?;
                        drop(c);
                        tracing::info!(pool = %h.pool, server = %h.address, self_registered = dynamic, "agent connected");
                        reg.server = Some((h.pool, h.address, stats));
                        reg.dynamic = dynamic;
                    }
                    Message::Report(r) => {
                        let Some((_, _, st)) = &reg.server else {
                            return Err(FrameError::UnexpectedKind(agent::kind::REPORT));
                        };
                        st.on_report(r.clients, r.queue, now_ms());
                        if let Some(state) = r.state {
                            st.set_agent_state(match state {
                                AgentState::Up => fulcrum_proxy::AGENT_UP,
                                AgentState::Drain => fulcrum_proxy::AGENT_DRAIN,
                                AgentState::Down => fulcrum_proxy::AGENT_DOWN,
                            });
                        }
                        if let Some(w) = r.weight {
                            st.set_agent_weight_pct(w.max(1));
                        }
                        stats.reports.fetch_add(1, Ordering::Relaxed);
                    }
                    Message::Bye => return Ok(()),
                }
            }
        }
    }
    .await;
    if let Err(e) = &result {
        let _ = s.write_all(&agent::encode_error(&e.to_string())).await;
    }
    result
}

/// Reads the pre-shared key: the file's content, surrounding whitespace trimmed.
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path)
        .map_err(|e| format!("agent.key_file: cannot read {}: {e}", path.display()))?;
    let key = raw.trim_ascii().to_vec();
    if key.len() < 16 {
        return Err(format!(
            "agent.key_file: {} holds {} bytes; use a key of at least 16 bytes",
            path.display(),
            key.len()
        ));
    }
    Ok(key)
}

/// Binds the agent listener configured in `[agent]` and serves it until `stop`; returns the
/// bound address. `None` when no `[agent]` is configured.
pub async fn start_agent(
    controller: Arc<Mutex<Controller>>,
    stop: CancellationToken,
) -> Result<Option<std::net::SocketAddr>, String> {
    let (settings, stats) = {
        let c = controller.lock().await;
        (c.agent_settings(), c.agent_stats.clone())
    };
    let Some(a) = settings else { return Ok(None) };
    let key = Arc::new(read_key(&a.key_file)?);
    let l = TcpListener::bind(a.bind)
        .await
        .map_err(|e| format!("cannot bind agent listener {}: {e}", a.bind))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(serve_agent(l, controller, key, a.report_ttl(), stats, stop));
    Ok(Some(local))
}
