//! A pool's waiting line: clients that found every server at its `max_connections` wait here
//! (`queue = { size, timeout }`, HAProxy's `maxconn` + `timeout queue`), holding their
//! accepted socket but no server, and are served in arrival order as slots free.
//!
//! Shared by every worker, so the line itself (`fulcrum_core::queue::WaitQueue`) sits behind
//! a small mutex. That is off the fast path: a client takes it only when the servers are full
//! or others already wait, and a connection end only when `len` says somebody waits. One
//! `PoolQueue` per pool name outlives snapshots, so a reload neither loses waiters nor lets
//! new clients pass them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fulcrum_core::balance::Tried;
use fulcrum_core::queue::{Ticket, WaitQueue};
use tokio::sync::Notify;

use crate::state::{NoSlot, PoolState};

/// How often the head of the line looks again without being woken: a slot can also appear
/// without a connection ending (a server added or back up, an agent raising its `maxconn`).
const RECHECK: Duration = Duration::from_millis(100);

/// Why a client was refused a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No server may take clients at all (down, drained, none configured).
    NoServer,
    /// Every server is at its cap and the pool has no queue.
    ServersFull,
    /// Every server is at its cap and the line is full.
    QueueFull,
    /// Waited `timeout` in line.
    QueueTimeout,
}

impl Refusal {
    /// The access-log outcome.
    pub fn outcome(self) -> &'static str {
        match self {
            Refusal::NoServer => "no-server",
            Refusal::ServersFull => "servers-full",
            Refusal::QueueFull => "queue-full",
            Refusal::QueueTimeout => "queue-timeout",
        }
    }
}

/// The waiting line of one pool and its counters. `size` 0 means the pool has no queue.
#[derive(Debug, Default)]
pub struct PoolQueue {
    size: AtomicUsize,
    timeout_ms: AtomicU64,
    /// Mirrors the line's length, so a connection end checks it without the lock.
    len: AtomicUsize,
    line: Mutex<WaitQueue<Arc<Notify>>>,
    /// Clients that joined the line.
    pub queued: AtomicU64,
    /// Refused because every server was full and there is no queue.
    pub refused_servers_full: AtomicU64,
    pub refused_queue_full: AtomicU64,
    pub refused_queue_timeout: AtomicU64,
}

impl PoolQueue {
    /// Takes the pool's current settings (a reload may change them; clients already waiting
    /// keep the timeout they joined with).
    pub fn configure(&self, settings: Option<fulcrum_config::QueueSettings>) {
        let (size, timeout) = settings.map_or((0, Duration::ZERO), |q| (q.size, q.timeout));
        self.size.store(size, Ordering::Relaxed);
        self.timeout_ms
            .store(timeout.as_millis().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// Clients waiting now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured size; 0 without a queue.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, WaitQueue<Arc<Notify>>> {
        // A panic while holding it leaves a consistent line (every operation is one step).
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot may have freed: the first waiter looks. Lock-free when nobody waits.
    pub fn wake_head(&self) {
        if self.is_empty() {
            return;
        }
        let head = self.lock().head().cloned();
        if let Some(n) = head {
            // Stores a permit when the head is busy trying: its next wait returns at once.
            n.notify_one();
        }
    }

    fn join(&self) -> Option<(Ticket, Arc<Notify>)> {
        let notify = Arc::new(Notify::new());
        let mut line = self.lock();
        let ticket = line.push(notify.clone(), self.size()).ok()?;
        self.len.store(line.len(), Ordering::Relaxed);
        Some((ticket, notify))
    }

    fn is_head(&self, ticket: Ticket) -> bool {
        self.lock().is_head(ticket)
    }

    /// Leaves the line; when the head leaves, the next one looks for a slot too (one freed
    /// slot may have been more than one, or the head was refused for its own reasons).
    fn leave(&self, ticket: Ticket) {
        let next = {
            let mut line = self.lock();
            let was_head = line.is_head(ticket);
            line.remove(ticket);
            self.len.store(line.len(), Ordering::Relaxed);
            if was_head { line.head().cloned() } else { None }
        };
        if let Some(n) = next {
            n.notify_one();
        }
    }
}

/// A place in line, given up however the wait ends (served, refused, or the client's task
/// cancelled at shutdown).
struct Place<'a> {
    queue: &'a PoolQueue,
    ticket: Ticket,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.ticket);
    }
}

/// A server slot for a new client of `pool`: taken at once when no one waits and a server
/// has room; otherwise the client joins the line (if the pool has one) and waits its turn.
/// On success the server's `active` count already includes this client.
pub async fn take_or_wait(
    pool: &PoolState,
    client_hash: u64,
    tried: &mut Tried,
) -> Result<usize, Refusal> {
    let queue = &pool.queue;
    // Clients already waiting go first: a newcomer never takes a slot meant for them.
    if queue.is_empty() {
        match pool.take_slot(client_hash, tried) {
            Ok(i) => return Ok(i),
            Err(NoSlot::NoServer) => return Err(Refusal::NoServer),
            Err(NoSlot::Full) => {}
        }
    }
    if queue.size() == 0 {
        queue.refused_servers_full.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::ServersFull);
    }
    let timeout = queue.timeout();
    let Some((ticket, notify)) = queue.join() else {
        queue.refused_queue_full.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::QueueFull);
    };
    queue.queued.fetch_add(1, Ordering::Relaxed);
    let _place = Place { queue, ticket };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let head = queue.is_head(ticket);
        if head {
            // Each look starts afresh: a server tried while waiting may have room now.
            let mut fresh = Tried::new();
            match pool.take_slot(client_hash, &mut fresh) {
                Ok(i) => {
                    *tried = fresh;
                    return Ok(i);
                }
                Err(NoSlot::NoServer) => return Err(Refusal::NoServer),
                Err(NoSlot::Full) => {}
            }
        }
        tokio::select! {
            () = notify.notified() => {}
            // Only the head looks on its own; the others are woken when they become it.
            () = tokio::time::sleep(RECHECK), if head => {}
            () = tokio::time::sleep_until(deadline) => {
                queue.refused_queue_timeout.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::QueueTimeout);
            }
        }
    }
}
