//! The resolver task: keeps servers given by host name at the addresses their names have now.
//! One task on the control runtime (never on a worker, never blocking): it looks each name up
//! again when its records expire, within its pool's `resolve_interval`
//! (`fulcrum-core::resolve` decides when and what an answer changes), and applies a changed
//! address through the controller like any other server change: new connections go to the
//! new addresses, open ones keep theirs. A failed lookup keeps the last good addresses; it is
//! counted and logged, at most once a minute per name.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fulcrum_core::resolve::{Schedule, Verdict};
use fulcrum_proxy::{Answer, NameSet, Names, Resolver};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;

/// What the resolver task did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ResolveStats {
    pub lookups: AtomicU64,
    pub failures: AtomicU64,
    /// Names whose addresses changed and were applied.
    pub changes: AtomicU64,
}

/// Starts the resolver task; it ends with `stop`.
pub async fn start_resolver(controller: Arc<Mutex<Controller>>, stop: CancellationToken) {
    let (names, stats) = {
        let c = controller.lock().await;
        (c.engine().watch_names(), c.resolve_stats.clone())
    };
    tokio::spawn(run(controller, names, stats, stop));
}

async fn run(
    controller: Arc<Mutex<Controller>>,
    mut names: watch::Receiver<Arc<NameSet>>,
    stats: Arc<ResolveStats>,
    stop: CancellationToken,
) {
    let mut schedule = Schedule::new();
    let mut resolver: Option<(Option<fulcrum_config::Resolver>, Resolver)> = None;
    // At most one lookup per name at a time (the schedule marks names being asked), so this
    // is bounded by the names in the config.
    let mut lookups: JoinSet<Result<Answer, String>> = JoinSet::new();
    let mut asking: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        let set = names.borrow_and_update().clone();
        let resolver = match &mut resolver {
            Some((s, r)) if *s == set.settings => r.clone(),
            slot => {
                let r = Resolver::new(set.settings.as_ref());
                *slot = Some((set.settings.clone(), r.clone()));
                r
            }
        };
        let now = fulcrum_proxy::now_ms();
        schedule.sync(
            set.names.iter().map(|n| {
                let ms = u64::try_from(n.interval.as_millis()).unwrap_or(u64::MAX);
                (n.host.as_str(), ms, n.addrs.iter().map(SocketAddr::ip).collect())
            }),
            now,
        );
        for host in schedule.take_due(now) {
            let r = resolver.clone();
            let h = host.clone();
            let task = lookups.spawn(async move { r.lookup(&h).await });
            asking.insert(task.id(), host);
        }
        // Nothing due: wake for changes and answers only.
        let wait = schedule
            .next_due_ms()
            .map_or(Duration::from_secs(3600), |t| Duration::from_millis(t.saturating_sub(now)));
        tokio::select! {
            _ = stop.cancelled() => return,
            r = names.changed() => if r.is_err() { return },
            Some(done) = lookups.join_next_with_id(), if !lookups.is_empty() => {
                let (id, answer) = match done {
                    Ok((id, a)) => (id, a),
                    // A lookup that panicked is a failed lookup, so the name is asked again.
                    Err(e) => (e.id(), Err(format!("lookup task failed: {e}"))),
                };
                let Some(host) = asking.remove(&id) else { continue };
                on_answer(&controller, &mut schedule, &set, &stats, &host, answer).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn on_answer(
    controller: &Mutex<Controller>,
    schedule: &mut Schedule,
    set: &NameSet,
    stats: &ResolveStats,
    host: &str,
    answer: Result<Answer, String>,
) {
    stats.lookups.fetch_add(1, Ordering::Relaxed);
    let now = fulcrum_proxy::now_ms();
    let (verdict, error) = match answer {
        Ok(a) => {
            let ttl = u64::try_from(a.ttl.as_millis()).unwrap_or(u64::MAX);
            (schedule.on_answer(host, Some((a.addrs, Some(ttl))), now), None)
        }
        Err(e) => (schedule.on_answer(host, None, now), Some(e)),
    };
    match verdict {
        Verdict::Same => {}
        Verdict::Kept { failures, log } => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            if log {
                let kept: Vec<String> = schedule
                    .addrs(host)
                    .unwrap_or_default()
                    .iter()
                    .map(IpAddr::to_string)
                    .collect();
                tracing::warn!(
                    name = host,
                    error = error.as_deref().unwrap_or("no address"),
                    failures,
                    kept = %kept.join(","),
                    "name lookup failed; its servers keep their last addresses"
                );
            }
        }
        Verdict::Changed(ips) => {
            // Every configured `host:port` of this host takes the new addresses.
            let fresh: Names = set
                .names
                .iter()
                .filter(|n| n.host == host)
                .map(|n| {
                    (n.key.clone(), ips.iter().map(|&ip| SocketAddr::new(ip, n.port)).collect())
                })
                .collect();
            let shown: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            match controller.lock().await.refresh_names(fresh) {
                Ok(()) => {
                    stats.changes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(name = host, addresses = %shown.join(","), "server name has new addresses");
                }
                // The next answer tries again: the schedule takes the engine's addresses back.
                Err(e) => {
                    tracing::error!(name = host, error = %e, "cannot apply a name's new addresses")
                }
            }
        }
    }
}
