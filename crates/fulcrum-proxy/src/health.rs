//! The active health checker of one pool: a control-plane task that probes every server of the
//! pool each interval (all at once), turns the results into verdicts with one
//! [`HealthMachine`] per server, and publishes a changed verdict in the server's
//! [`ServerStats`](crate::state::ServerStats), where the workers' balancers see it. Workers
//! never run probes and never wait on this task.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use fulcrum_config::{HealthCheck, HealthKind, ServerState};
use fulcrum_core::health::{HealthMachine, next_delay};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::context::Shared;
use crate::probe::{ProbeTls, probe};
use crate::state::{PoolState, Snapshot};
use crate::upstream_tls::Alpn;

/// Longest pause between rounds, whatever the config says: an `Instant` plus an arbitrary
/// duration may overflow (and panic).
const LONGEST_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Runs the checks of pool `pool` until `stop` is cancelled, or until the routing snapshot no
/// longer has that pool or the pool no longer has a health check (a reload that wants checks
/// again starts a new task). Each round reads the current snapshot, so servers added, removed
/// or put in maintenance by a reload are followed without a restart.
pub async fn run_pool_checks(shared: Arc<Shared>, pool: String, stop: CancellationToken) {
    check_pool(&shared.state, &pool, &stop).await;
}

/// The loop of [`run_pool_checks`], needing only the snapshot (and so testable without an
/// engine).
async fn check_pool(snapshot: &ArcSwap<Snapshot>, pool: &str, stop: &CancellationToken) {
    let mut machines: HashMap<String, HealthMachine> = HashMap::new();
    let mut current: Option<HealthCheck> = None;
    tracing::debug!(pool, "health checks started");
    loop {
        let started = Instant::now();
        let Some((state, check)) = find(snapshot, pool) else {
            tracing::debug!(pool, "health checks stopped: no such pool or no check");
            return;
        };
        if current.as_ref() != Some(&check) {
            // New thresholds or a new kind of probe: runs counted under the old check mean
            // nothing now. Verdicts stay as published until the new check disagrees.
            machines.clear();
            current = Some(check.clone());
        }
        let results = tokio::select! {
            r = round(&state, &check) => r,
            () = stop.cancelled() => return,
        };
        // Servers that left the pool or went into maintenance lose their run; if they come
        // back, they start again from their published verdict.
        let probed: HashSet<&str> = results
            .iter()
            .filter_map(|(i, _)| state.servers.get(*i))
            .map(|s| s.key.as_str())
            .collect();
        machines.retain(|key, _| probed.contains(key.as_str()));
        for (i, result) in results {
            let Some(server) = state.servers.get(i) else { continue };
            let machine = machines.entry(server.key.clone()).or_insert_with(|| {
                HealthMachine::new(!server.stats.is_down(), check.rise, check.fall)
            });
            if let Err(reason) = &result {
                tracing::debug!(pool, server = %server.key, reason = %reason, "health check failed");
            }
            match (machine.observe(result.is_ok()), result) {
                (Some(true), _) => {
                    server.stats.set_health(true, now_ms());
                    let reason = format!("{} checks passed in a row", check.rise);
                    tracing::info!(
                        pool, server = %server.key, health = "up", reason = %reason,
                        "server health changed"
                    );
                }
                (Some(false), Err(reason)) => {
                    server.stats.set_health(false, now_ms());
                    tracing::warn!(
                        pool, server = %server.key, health = "down", reason = %reason,
                        fall = check.fall, "server health changed"
                    );
                }
                // A machine only goes down on a failure; nothing else changes anything.
                _ => {}
            }
        }
        // Rounds start on a fixed (jittered) cadence rather than an interval after the last
        // round ended, so slow probes do not stretch the time it takes to notice a failure.
        // Capped so that no configured interval can overflow the clock.
        let delay = next_delay(check.interval, fastrand::u64(..)).min(LONGEST_WAIT);
        let next = started + delay;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn find(snapshot: &ArcSwap<Snapshot>, pool: &str) -> Option<(Arc<PoolState>, HealthCheck)> {
    let snap = snapshot.load();
    let p = snap.pools.iter().find(|p| p.name == pool)?;
    let check = p.health.clone()?;
    Some((p.clone(), check))
}

/// Probes every server not in maintenance at once; each result with the server's index.
/// Bounded by the check's timeout, since every probe is.
async fn round(state: &PoolState, check: &HealthCheck) -> Vec<(usize, Result<(), String>)> {
    let kind: Arc<HealthKind> = Arc::new(check.kind.clone());
    let mut probes = JoinSet::new();
    for (i, server) in state.servers.iter().enumerate() {
        if server.state == ServerState::Maint {
            continue;
        }
        let (kind, addr, timeout) = (kind.clone(), server.addr, check.timeout);
        // HTTP probes speak HTTP/1.1 whatever the pool's version, and offer it by ALPN.
        let alpn = if matches!(*kind, HealthKind::Http { .. }) { Alpn::H1 } else { Alpn::Stream };
        let tls = match (&state.tls, &server.tls_name) {
            (Some(t), Some(name)) => {
                Some(ProbeTls { connector: t.connector(alpn).clone(), name: name.clone() })
            }
            _ => None,
        };
        probes.spawn(async move { (i, probe(&kind, addr, timeout, tls.as_ref()).await) });
    }
    let mut results = Vec::with_capacity(probes.len());
    while let Some(joined) = probes.join_next().await {
        // A probe task cannot panic by design; should one, its server just misses a round.
        if let Ok(r) = joined {
            results.push(r);
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StatsRegistry;

    type Snap = Arc<ArcSwap<Snapshot>>;

    fn build(config: &fulcrum_config::Config) -> Snapshot {
        Snapshot::build(
            config,
            &mut StatsRegistry::new(),
            &mut Default::default(),
            &Default::default(),
            &mut Default::default(),
            &mut Default::default(),
        )
        .unwrap()
    }

    /// The routing snapshot for `toml`, with `edit` applied to the parsed config first (e.g.
    /// to put a server in maintenance, which the TOML cannot say).
    fn snapshot(toml: &str, edit: impl FnOnce(&mut fulcrum_config::Config)) -> Snap {
        let mut config = fulcrum_config::parse_str(toml, "test.toml").unwrap();
        edit(&mut config);
        Arc::new(ArcSwap::from_pointee(build(&config)))
    }

    fn spawn(
        snap: &Snap,
        pool: &'static str,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (snap, stop) = (snap.clone(), stop.clone());
        tokio::spawn(async move { check_pool(&snap, pool, &stop).await })
    }

    fn toml(servers: &[u16], health: &str) -> String {
        let list: Vec<String> = servers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        format!(
            "[frontend.web]\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
             [pool.app]\nservers = [{}]\n{health}\n",
            list.join(", ")
        )
    }

    const FAST_TCP: &str = "[pool.app.health]\nkind = \"tcp\"\ninterval = \"20ms\"\ntimeout = \"50ms\"\nrise = 2\nfall = 2";

    fn down(snap: &Snap, i: usize) -> bool {
        snap.load().pools[0].servers[i].stats.is_down()
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn marks_a_dead_server_down_and_back_up_and_skips_maintenance() {
        let alive = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (dead, in_maint) = (free_port(), free_port());
        let ports = [alive.local_addr().unwrap().port(), dead, in_maint];
        let snap = snapshot(&toml(&ports, FAST_TCP), |c| {
            c.pools[0].servers[2].state = ServerState::Maint;
        });
        let stop = CancellationToken::new();
        let task = spawn(&snap, "app", &stop);

        wait_for("the dead server to be marked down", || down(&snap, 1)).await;
        assert!(!down(&snap, 0), "the live server was marked down");
        // Back: listen on its port again; `rise` successes bring it up.
        let back = tokio::net::TcpListener::bind(("127.0.0.1", dead)).await.unwrap();
        wait_for("the server to come back up", || !down(&snap, 1)).await;
        // Several more rounds: the live server stays up, the one in maintenance was never
        // probed (its port is closed, so a probe would have failed it).
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!down(&snap, 0) && !down(&snap, 1) && !down(&snap, 2));

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap();
        drop((alive, back));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stops_when_the_pool_loses_its_check() {
        let port = free_port();
        let snap = snapshot(&toml(&[port], FAST_TCP), |_| {});
        let stop = CancellationToken::new();
        let task = spawn(&snap, "app", &stop);
        wait_for("the server to be marked down", || down(&snap, 0)).await;
        // A reload without a health check: the task ends by itself.
        let mut config = fulcrum_config::parse_str(&toml(&[port], ""), "test.toml").unwrap();
        config.pools[0].health = None;
        snap.store(Arc::new(build(&config)));
        tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn returns_at_once_for_an_unknown_pool_or_no_check() {
        let snap = snapshot(&toml(&[free_port()], ""), |_| {});
        let stop = CancellationToken::new();
        for pool in ["app", "nope"] {
            let run = check_pool(&snap, pool, &stop);
            tokio::time::timeout(Duration::from_secs(1), run).await.unwrap();
        }
        assert!(!down(&snap, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stop_interrupts_a_round_in_progress() {
        // A server that accepts and never answers: each round lasts the whole timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let check = "[pool.app.health]\nkind = \"send-expect\"\nsend = \"PING\"\nexpect = \"PONG\"\n\
                     interval = \"10s\"\ntimeout = \"10s\"";
        let snap = snapshot(&toml(&[port], check), |_| {});
        let stop = CancellationToken::new();
        let task = spawn(&snap, "app", &stop);
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap();
    }
}
