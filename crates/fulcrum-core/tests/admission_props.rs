//! The admission step (`Balancer::admit`), for every algorithm: it answers a server whenever
//! one may take the client (eligible, or in panic mode merely not refused by the operator or
//! the health checks), never one already tried or of weight 0, and shares (slow start, agent
//! weight) change how often a server is chosen, never whether a client is served. A server at
//! its connection cap is never chosen, in any stage (shares relaxed, panic mode included).

use fulcrum_core::balance::{
    Algorithm, Balancer, LoadView, PickInput, SHARE_ONE, ServerSpec, Tried, mix,
};
use proptest::prelude::*;

/// A pool in vectors: `eligible` is the normal verdict, `ejected` servers are usable only in
/// panic mode, `share` is each server's part of its weight, `room` is false for a server at
/// its connection cap.
#[derive(Debug, Clone)]
struct View {
    eligible: Vec<bool>,
    ejected: Vec<bool>,
    share: Vec<u32>,
    active: Vec<u64>,
    room: Vec<bool>,
}

impl LoadView for View {
    fn len(&self) -> usize {
        self.eligible.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible[i] && !self.ejected[i]
    }
    fn eligible_in_panic(&self, i: usize) -> bool {
        self.eligible[i]
    }
    fn active(&self, i: usize) -> u64 {
        self.active[i]
    }
    fn share(&self, i: usize) -> u32 {
        self.share[i]
    }
    fn has_room(&self, i: usize) -> bool {
        self.room[i]
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.1.{}.{}:80", i / 256, i % 256)).collect()
}

fn build(algorithm: Algorithm, keys: &[String], weights: &[u32]) -> Balancer {
    let specs: Vec<ServerSpec<'_>> =
        keys.iter().zip(weights).map(|(k, &weight)| ServerSpec { key: k, weight }).collect();
    Balancer::new(algorithm, &specs)
}

/// Shares from "just came up" (1/20 of a full share, slow start's floor) to full.
fn share() -> impl Strategy<Value = u32> {
    prop_oneof![Just(SHARE_ONE), SHARE_ONE / 20..=SHARE_ONE, Just(SHARE_ONE / 10)]
}

fn pool(max: usize) -> impl Strategy<Value = (Vec<u32>, View)> {
    (1..=max).prop_flat_map(|n| {
        (
            prop::collection::vec(prop_oneof![1 => Just(0u32), 6 => 1u32..=5], n),
            prop::collection::vec(prop::bool::weighted(0.8), n),
            prop::collection::vec(prop::bool::weighted(0.3), n),
            prop::collection::vec(share(), n),
            prop::collection::vec(0u64..50, n),
            prop::collection::vec(prop::bool::weighted(0.8), n),
        )
            .prop_map(|(weights, eligible, ejected, share, active, room)| {
                (weights, View { eligible, ejected, share, active, room })
            })
    })
}

/// Whether some server not in `tried` may be admitted at all.
fn some_admissible(weights: &[u32], view: &View, tried: &Tried) -> bool {
    (0..weights.len())
        .any(|i| weights[i] > 0 && view.eligible[i] && view.room[i] && !tried.contains(i))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Pools of 1 to 1,000 servers with any weights, eligibility, ejections and shares.
    #[test]
    fn admits_whenever_a_server_is_admissible(
        (weights, view) in pool(1_000), seed: u64, hash: u64, tried_seed: u64,
    ) {
        let keys = keys(weights.len());
        let mut tried = Tried::new();
        for k in 0..(tried_seed % 4) {
            tried.insert((mix(tried_seed ^ k) % weights.len() as u64) as usize);
        }
        for algorithm in Algorithm::ALL {
            let b = build(algorithm, &keys, &weights);
            for r in 0..4u64 {
                let input = PickInput { hash, rand: mix(seed ^ r) };
                let got = b.admit(&input, &view, &tried);
                match got {
                    Some(i) => {
                        prop_assert!(weights[i] > 0, "{algorithm}: weight-0 server {i}");
                        prop_assert!(view.eligible[i], "{algorithm}: refused server {i}");
                        prop_assert!(!tried.contains(i), "{algorithm}: tried server {i}");
                        prop_assert!(view.room[i], "{algorithm}: server {i} at its cap");
                        let any_strict = (0..weights.len()).any(|j| {
                            weights[j] > 0 && view.eligible(j) && view.room[j] && !tried.contains(j)
                        });
                        prop_assert!(
                            !any_strict || view.eligible(i),
                            "{algorithm}: ejected server {i} while others were eligible"
                        );
                    }
                    None => prop_assert!(
                        !some_admissible(&weights, &view, &tried),
                        "{algorithm}: no server although one was admissible"
                    ),
                }
            }
        }
    }
}

/// Retrying through a whole pool: every server gets its turn even when every share is low,
/// so a client is refused only when every server has been tried. This is what refused 132 of
/// 300 clients with 12 servers whose agents answered `up 10%`.
#[test]
fn retries_walk_the_whole_pool_at_low_shares() {
    for n in [3usize, 12, 50] {
        let keys = keys(n);
        let weights = vec![1; n];
        let view = View {
            eligible: vec![true; n],
            ejected: vec![false; n],
            share: vec![SHARE_ONE / 10; n],
            active: vec![0; n],
            room: vec![true; n],
        };
        for algorithm in Algorithm::ALL {
            let b = build(algorithm, &keys, &weights);
            for c in 0..300u64 {
                let mut tried = Tried::new();
                for attempt in 0..8u64 {
                    let input = PickInput { hash: mix(c), rand: mix(c * 31 + attempt) };
                    let Some(i) = b.admit(&input, &view, &tried) else {
                        panic!("{algorithm}, {n} servers: client {c} refused at attempt {attempt}")
                    };
                    assert!(!tried.contains(i));
                    tried.insert(i);
                    if tried.len() == n {
                        break;
                    }
                }
            }
        }
    }
}

/// A server at a tenth of a share gets about a tenth of a full server's picks, for the
/// algorithms that spread (the hashing ones keep a client where its hash puts it).
#[test]
fn low_share_scales_a_servers_part() {
    let n = 4;
    let keys = keys(n);
    let weights = vec![1; n];
    let view = View {
        eligible: vec![true; n],
        ejected: vec![false; n],
        share: vec![SHARE_ONE / 10, SHARE_ONE, SHARE_ONE, SHARE_ONE],
        active: vec![0; n],
        room: vec![true; n],
    };
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::PowerOfTwo,
        Algorithm::SourceHash,
        Algorithm::Maglev,
        Algorithm::RingHash,
    ] {
        let b = build(algorithm, &keys, &weights);
        let mut counts = [0u32; 4];
        for c in 0..12_000u64 {
            let input = PickInput { hash: mix(c ^ 0xABCD), rand: mix(c) };
            let i = b.admit(&input, &view, &Tried::new()).expect("a server");
            counts[i] += 1;
        }
        let full = f64::from(counts[1] + counts[2] + counts[3]) / 3.0;
        let ratio = f64::from(counts[0]) / full;
        // Expected 0.1; rotation hands a skipped turn to the next server, the tables probe on.
        assert!((0.05..0.2).contains(&ratio), "{algorithm}: low-share ratio {ratio:.3} {counts:?}");
    }
    // least-connections compares load against the effective weight: with loads held, the
    // low-share server is chosen only while it carries under a tenth of the others' load.
    let b = build(Algorithm::LeastConnections, &keys, &weights);
    let mut view = view;
    view.active = vec![1, 11, 11, 11];
    let got = b.admit(&PickInput { hash: 0, rand: 7 }, &view, &Tried::new());
    assert_eq!(got, Some(0), "1 on a tenth share is 10 per full share, below 11");
    view.active = vec![2, 10, 10, 10];
    let got = b.admit(&PickInput { hash: 0, rand: 0 }, &view, &Tried::new());
    assert_ne!(got, Some(0), "2 of a tenth share is 20 per full share");
}

/// Panic mode: with every server ejected, the ejected ones serve; a server the operator or
/// the health checks refused never does.
#[test]
fn panic_mode_uses_ejected_servers_only_when_nothing_else_is_left() {
    let keys = keys(3);
    let view = View {
        eligible: vec![true, false, true],
        ejected: vec![true, false, true],
        share: vec![SHARE_ONE; 3],
        active: vec![0; 3],
        room: vec![true; 3],
    };
    for algorithm in Algorithm::ALL {
        let b = build(algorithm, &keys, &[1, 1, 1]);
        for r in 0..50 {
            let got = b.admit(&PickInput { hash: r, rand: mix(r) }, &view, &Tried::new());
            assert!(matches!(got, Some(0 | 2)), "{algorithm}: {got:?}");
        }
    }
}

/// The cap in every stage: servers at low shares (stage 2), ejected ones (panic mode), and a
/// least-loaded one that is full. Only servers with room are ever chosen, and with none left
/// the client is refused (the data plane then queues it or closes it).
#[test]
fn a_full_server_is_never_chosen_in_any_stage() {
    let keys = keys(4);
    let weights = [1, 1, 1, 1];
    let stages = [
        // Stage 1: everything fine but the caps.
        (vec![false; 4], vec![SHARE_ONE; 4]),
        // Stage 2: every share low, so only the full-share retry finds a server.
        (vec![false; 4], vec![SHARE_ONE / 20; 4]),
        // Panic mode: every server ejected.
        (vec![true; 4], vec![SHARE_ONE; 4]),
    ];
    for (ejected, share) in stages {
        let mut view = View {
            eligible: vec![true; 4],
            ejected: ejected.clone(),
            share: share.clone(),
            // The full ones are the least loaded: least-connections would want them.
            active: vec![0, 0, 9, 9],
            room: vec![false, false, true, true],
        };
        for algorithm in Algorithm::ALL {
            let b = build(algorithm, &keys, &weights);
            for r in 0..200u64 {
                let input = PickInput { hash: mix(r ^ 0x77), rand: mix(r) };
                let got = b.admit(&input, &view, &Tried::new());
                assert!(matches!(got, Some(2 | 3)), "{algorithm}, ejected {ejected:?}: {got:?}");
            }
        }
        view.room = vec![false; 4];
        for algorithm in Algorithm::ALL {
            let b = build(algorithm, &keys, &weights);
            let got = b.admit(&PickInput { hash: 1, rand: 2 }, &view, &Tried::new());
            assert_eq!(got, None, "{algorithm}: every server full");
        }
    }
}
