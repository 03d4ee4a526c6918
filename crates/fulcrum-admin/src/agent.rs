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
/// Why a session that did not finish its hello in time was closed.
const SLOW_HELLO: &str = "no hello within the handshake deadline";
/// Why a session that started a frame and did not finish it in time was closed.
const SLOW_FRAME: &str = "a frame not finished within the frame deadline";

/// Agent sessions open at once; further connections are closed at accept.
pub const MAX_SESSIONS: usize = 4096;
/// Of those, sessions that have not yet sent a valid hello. A peer that connects and trickles
/// bytes holds one of these for at most [`HANDSHAKE_DEADLINE`], never a reporting backend's.
pub const MAX_HANDSHAKING: usize = 1024;
/// From accept to a valid hello.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// From a frame's first byte to its last.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);

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
    let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    let handshaking = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKING));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (Ok(slot), Ok(hello_slot)) =
            (sessions.clone().try_acquire_owned(), handshaking.clone().try_acquire_owned())
        else {
            stats.reject("full");
            if let Some(skipped) = REJECT_LOG.allow(now_ms()) {
                tracing::warn!(peer = %peer, skipped, "agent listener full: connection closed");
            }
            continue;
        };
        let (controller, key, stats, stop) =
            (controller.clone(), key.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            stats.sessions_total.fetch_add(1, Ordering::Relaxed);
            stats.sessions_active.fetch_add(1, Ordering::Relaxed);
            let mut reg = Registration::default();
            let mut hello_slot = Some(hello_slot);
            let r = tokio::select! {
                r = session(stream, peer, &controller, &key, ttl, &stats, &mut reg, &mut hello_slot) => r,
                () = stop.cancelled() => Ok(()),
            };
            if let Err(e) = r {
                let reason = match &e {
                    FrameError::Remote(m) if m == SILENT => "silent",
                    FrameError::Remote(m) if m == SLOW_HELLO || m == SLOW_FRAME => "slow",
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
            let write = controller.lock().await.deregister(&pool, &address);
            // Logged by finish() when it fails; nothing more a leaving session can do.
            let _ = write.finish().await;
        }
    }
}

/// A fresh nonce from the operating system's generator. The nonce makes every session's MACs
/// unique, so a recorded session cannot be replayed: without a good one there is no session.
fn nonce() -> Result<[u8; NONCE_LEN], FrameError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n)
        .map_err(|e| FrameError::Remote(format!("no random nonce from the system: {e}")))?;
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    mut s: TcpStream,
    peer: std::net::SocketAddr,
    controller: &Mutex<Controller>,
    key: &[u8],
    ttl: Duration,
    stats: &AgentStats,
    reg: &mut Registration,
    hello_slot: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<(), FrameError> {
    let nonce = nonce()?;
    let io = |_| FrameError::Truncated;
    let hello_by = tokio::time::Instant::now() + HANDSHAKE_DEADLINE;
    tokio::time::timeout_at(hello_by, s.write_all(&agent::challenge_bytes(&nonce)))
        .await
        .map_err(|_| FrameError::Remote(SLOW_HELLO.into()))?
        .map_err(io)?;
    let mut session = Session::new(key, nonce);
    let mut decoder = Decoder::new();
    let mut buf = [0u8; agent::MAX_BUFFER];
    // When the frame now in the decoder began (None: the decoder holds no partial frame).
    let mut frame_started: Option<tokio::time::Instant> = None;
    let result = async {
        loop {
            // Three clocks: the hello must come within the handshake deadline; a frame once
            // begun must end within the frame deadline; between frames, a backend silent for
            // the whole ttl is gone. A peer trickling a byte at a time meets the first two.
            let now = tokio::time::Instant::now();
            let (until, why) = if hello_slot.is_some() {
                (hello_by, SLOW_HELLO)
            } else if let Some(started) = frame_started {
                (started + FRAME_DEADLINE, SLOW_FRAME)
            } else {
                (now + ttl, SILENT)
            };
            // Never read more than the decoder may hold: a backend whose reports queued up
            // in the socket must not look like one sending an oversized frame.
            let room = decoder.room().clamp(1, buf.len());
            let n = match tokio::time::timeout_at(until, s.read(&mut buf[..room])).await {
                Ok(Ok(0)) => return decoder.finish(),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return Err(FrameError::Truncated),
                Err(_) => return Err(FrameError::Remote(why.into())),
            };
            decoder.push(buf.get(..n).unwrap_or_default())?;
            let mut completed = false;
            while let Some(raw) = decoder.next_frame()? {
                completed = true;
                match session.open(&raw)? {
                    Message::Hello(h) => {
                        let mut c = controller.lock().await;
                        let trust = c.trusts_claimed_address(&h.pool).ok_or_else(|| {
                            FrameError::BadPayload(format!("no pool \"{}\"", h.pool))
                        })?;
                        let address =
                            agent::registered_address(&h.address, peer.ip(), trust)?.to_string();
                        let (stats, dynamic) = c
                            .register(&h.pool, &address)
                            .map_err(|e| FrameError::BadPayload(e.message))?;
                        drop(c);
                        tracing::info!(pool = %h.pool, server = %address, claimed = %h.address, self_registered = dynamic, "agent connected");
                        reg.server = Some((h.pool, address, stats));
                        reg.dynamic = dynamic;
                        // Past the handshake: the slot goes to the next newcomer.
                        *hello_slot = None;
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
            // A partial frame left after whole ones began in this read.
            frame_started = match (decoder.buffered(), frame_started) {
                (0, _) => None,
                (_, Some(t)) if !completed => Some(t),
                _ => Some(tokio::time::Instant::now()),
            };
        }
    }
    .await;
    if let Err(e) = &result {
        // Bounded: a peer that does not read its error frame does not hold the session.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            s.write_all(&agent::encode_error(&e.to_string())),
        )
        .await;
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
    let l =
        listen_deep(a.bind).map_err(|e| format!("cannot bind agent listener {}: {e}", a.bind))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(serve_agent(l, controller, key, a.report_ttl(), stats, stop));
    Ok(Some(local))
}

/// A listener with a deep accept queue: a burst of backends (or of peers that will be cut at
/// the handshake deadline) must not overflow a short default backlog, where Linux drops the
/// final ACK and a client believes it is connected to a socket nobody will accept.
pub fn listen_deep(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(4096)
}
