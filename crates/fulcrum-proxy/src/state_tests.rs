//! Unit tests of `state.rs`: slots and caps, ejection shares, slow start, reports.

use super::*;
use fulcrum_core::balance::{Algorithm, Balancer, ServerSpec};

fn pool(n: usize, max_percent: u32) -> PoolState {
    let servers = (0..n)
        .map(|i| ServerEntry {
            key: format!("127.0.0.1:{}", 1000 + i),
            addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
            weight: 1,
            state: ServerState::Up,
            max_connections: None,
            stats: Arc::default(),
            tls_name: None,
        })
        .collect();
    PoolState {
        name: "p".into(),
        algorithm: Algorithm::RoundRobin,
        balancer: Balancer::new(Algorithm::RoundRobin, &[]),
        servers,
        connect_timeout: Duration::from_secs(1),
        receive_buffer: None,
        retries: 2,
        eject: EjectPolicy { failures: 1, base_ms: 1_000, max_ms: 1_000 },
        max_ejection_percent: max_percent,
        slow_start: Duration::ZERO,
        slow_start_ms: 0,
        health: None,
        report_ttl_ms: 1_000,
        agent_pull: None,
        capped: false,
        agent_maxconn_ttl_ms: 0,
        queue: Arc::default(),
        http: fulcrum_config::PoolHttp::default(),
        hash: Default::default(),
        sticky: None,
        send_proxy: None,
        retry_budget: fulcrum_core::retry::RetryBudget::new(20),
        http_retries: Default::default(),
        tls: None,
    }
}

#[test]
fn ejection_share_is_capped() {
    let p = pool(4, 50);
    let now = 10;
    // Two of four may go (50 %); the third failing server stays in rotation.
    for s in &p.servers[..3] {
        let may = p.may_eject(now);
        s.stats.on_connect_failure(&p.eject, may, now);
    }
    let ejected = p.servers.iter().filter(|s| s.stats.is_ejected(now)).count();
    assert_eq!(ejected, 2);
    assert!(!p.servers[2].stats.is_ejected(now));
    // Once the ejection period ends, the share is free again.
    assert!(p.may_eject(now + 1_000));
    assert!(!pool(1, 50).may_eject(0), "a lone server is never ejected at 50 %");
    assert!(pool(1, 100).may_eject(0));
}

#[test]
fn slow_start_ramps_and_reports_go_stale() {
    let s = ServerStats::default();
    assert_eq!(s.slow_start_share(1_000, 5), SHARE_ONE, "never down: no ramp");
    s.set_health(false, 100);
    s.set_health(true, 200);
    assert_eq!(s.slow_start_share(1_000, 700), SHARE_ONE / 2);
    assert_eq!(s.slow_start_share(1_000, 200), SHARE_ONE / 20, "the floor");
    assert_eq!(s.slow_start_share(1_000, 1_200), SHARE_ONE);
    s.set_agent_weight_pct(10);
    assert_eq!(s.share(1_000, 700), SHARE_ONE / 20, "half of a tenth");
    assert_eq!(s.share(1_000, 1_200), SHARE_ONE / 10);
    s.set_agent_weight_pct(150);
    assert_eq!(s.share(0, 700), SHARE_ONE, "above 100 % is full");
    s.on_report(5, 2, 1_000);
    s.on_assigned();
    assert_eq!(s.fresh_report(500, 1_400), Some((5, 2, 1)));
    assert_eq!(s.fresh_report(500, 1_600), None);
}

#[test]
fn load_counts_clients_that_ended_since_the_report() {
    let p = pool(1, 50);
    let view = PoolView {
        servers: &p.servers,
        now_ms: 1_100,
        report_ttl_ms: p.report_ttl_ms,
        slow_start_ms: 0,
        exclude: &[],
        caps: CapBy::None,
        agent_maxconn_ttl_ms: 0,
    };
    let s = &p.servers[0].stats;
    s.on_report(5, 2, 1_000);
    for _ in 0..3 {
        s.on_assigned();
    }
    assert_eq!(view.metric(0, Metric::Load), 8);
    // Four of them ended: 5 + 3 − 4.
    for _ in 0..4 {
        s.on_released();
    }
    assert_eq!(view.metric(0, Metric::Load), 4);
    assert_eq!(view.metric(0, Metric::Queue), 5, "a queue counts arrivals only");
    // Never below the balancer's own open connections, never below 0.
    s.active.store(6, Ordering::Relaxed);
    assert_eq!(view.metric(0, Metric::Load), 6);
    s.active.store(0, Ordering::Relaxed);
    for _ in 0..10 {
        s.on_released();
    }
    assert_eq!(view.metric(0, Metric::Load), 0);
    // A new report starts both counts again.
    s.on_report(1, 0, 1_050);
    assert_eq!(view.metric(0, Metric::Load), 1);
}

#[test]
fn slots_never_exceed_the_cap_across_threads() {
    let stats = Arc::new(ServerStats::default());
    let inside = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (stats, inside) = (stats.clone(), inside.clone());
            std::thread::spawn(move || {
                let mut taken = 0u32;
                for _ in 0..50_000 {
                    if stats.try_take_slot(Some(2)) {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        let active = stats.active.load(Ordering::Relaxed);
                        assert!(now <= 2 && active <= 2, "{now} holders, active {active}");
                        // Held a moment, so the others race for the slot meanwhile.
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        stats.active.fetch_sub(1, Ordering::Relaxed);
                        taken += 1;
                    }
                }
                taken
            })
        })
        .collect();
    let taken: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(taken > 0);
    assert_eq!(stats.active.load(Ordering::Relaxed), 0);
    assert!(stats.try_take_slot(None) && stats.try_take_slot(None), "no cap: always");
}

#[test]
fn caps_hold_in_admission_and_directory_load_counts() {
    let mut p = pool(2, 50);
    p.balancer = Balancer::new(
        Algorithm::RoundRobin,
        &[ServerSpec { key: "a", weight: 1 }, ServerSpec { key: "b", weight: 1 }],
    );
    p.servers[0].max_connections = Some(1);
    p.capped = true;
    let mut tried = Tried::new();
    // Server 0 takes one client, then only server 1 (uncapped) is picked.
    let mut on = [0u32; 2];
    for _ in 0..10 {
        let i = p.take_slot(0, &mut Tried::new()).unwrap();
        on[i] += 1;
    }
    assert_eq!(on, [1, 9]);
    // Server 1 down: server 0 is full, so the pool is full (a queue would wait), not empty.
    p.servers[1].stats.set_health(false, 1);
    assert_eq!(p.take_slot(0, &mut tried), Err(NoSlot::Full));
    p.servers[0].stats.set_health(false, 1);
    assert_eq!(p.take_slot(0, &mut tried), Err(NoSlot::NoServer));
    p.servers[0].stats.set_health(true, 1);
    p.servers[1].stats.set_health(true, 1);
    // The agent's maxconn overrides the configured cap while fresh.
    let now = crate::clock::now_ms();
    p.agent_maxconn_ttl_ms = 10_000;
    p.servers[0].stats.set_agent_maxconn(Some(3), now);
    assert_eq!(p.servers[0].cap(p.agent_maxconn_ttl_ms, now), Some(3));
    assert_eq!(p.servers[0].cap(p.agent_maxconn_ttl_ms, now + 20_000), Some(1), "stale");
    p.servers[0].stats.set_agent_maxconn(None, now);
    assert_eq!(p.servers[0].cap(p.agent_maxconn_ttl_ms, now), Some(1));
    // A directory compares its own count (a fresh report plus answers since) with the
    // cap: server 0 reports one client, so a directory never names it.
    p.servers[0].stats.active.store(0, Ordering::Relaxed);
    p.report_ttl_ms = 10_000;
    p.servers[0].stats.on_report(1, 0, now);
    for _ in 0..10 {
        assert_eq!(p.admit_directory(7), Some(1));
    }
    assert!(p.take_slot(0, &mut Tried::new()).is_ok(), "no connection open: a proxy may");
}

#[test]
fn host_names_resolved_ahead_are_used_without_a_lookup() {
    let text = "[frontend.f]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nservers = [\"backend.invalid:8080\", { address = \"localhost:9\", weight = 3 }, \"127.0.0.1:9\"]\n";
    let config = fulcrum_config::parse_str(text, "t.toml").unwrap();
    let build = |names: &mut Names| {
        Snapshot::build(
            &config,
            &mut StatsRegistry::new(),
            &mut QueueRegistry::new(),
            &HashMap::new(),
            names,
            &mut TlsRegistry::default(),
        )
    };
    // `.invalid` never resolves (RFC 2606): building must look it up, and fails.
    let e = build(&mut Names::new()).unwrap_err();
    assert!(e.starts_with("server backend.invalid:8080: cannot resolve backend.invalid"), "{e}");
    // A name with two addresses is two servers, each with the name's weight; `localhost`
    // is looked up here, as before.
    let at: Vec<SocketAddr> =
        vec!["127.0.0.7:8080".parse().unwrap(), "127.0.0.8:8080".parse().unwrap()];
    let mut names = Names::from([("backend.invalid:8080".to_string(), at.clone())]);
    let snap = build(&mut names).unwrap();
    let servers: Vec<(&str, SocketAddr, u32)> =
        snap.pools[0].servers.iter().map(|s| (s.key.as_str(), s.addr, s.weight)).collect();
    assert_eq!(
        servers,
        [
            ("backend.invalid:8080#127.0.0.7", at[0], 1),
            ("backend.invalid:8080#127.0.0.8", at[1], 1),
            ("localhost:9#127.0.0.1", "127.0.0.1:9".parse().unwrap(), 3),
            ("127.0.0.1:9", "127.0.0.1:9".parse().unwrap(), 1),
        ]
    );
    assert_eq!(names["localhost:9"], ["127.0.0.1:9".parse().unwrap()]);
    let (found, failed) = resolve_names(&config);
    assert_eq!(found["localhost:9"], ["127.0.0.1:9".parse().unwrap()]);
    assert_eq!(failed.len(), 1, "resolve_names looks the name up");
    assert_eq!(failed[0].0, "backend.invalid:8080");
}
