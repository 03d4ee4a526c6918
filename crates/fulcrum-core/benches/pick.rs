//! Cost of one admission (`Balancer::admit`, what every protocol calls), per algorithm and
//! pool size, over a view shaped like the data plane's (per-server atomics read with relaxed
//! loads, a share read per server as slow start and agent weight are). All shares are full,
//! as in a pool at rest: admission is then one pick. Inputs change every iteration so that hash
//! and random lookups do not hit the same cache line each time; tables are built outside
//! the timed loop, as they are built outside the data path.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fulcrum_core::balance::{
    Algorithm, Balancer, LoadView, PickInput, SHARE_ONE, ServerSpec, Tried, mix,
};

struct AtomicView {
    eligible: Vec<AtomicBool>,
    active: Vec<AtomicU64>,
    share: Vec<AtomicU32>,
}

impl LoadView for AtomicView {
    fn len(&self) -> usize {
        self.eligible.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible.get(i).is_some_and(|e| e.load(Ordering::Relaxed))
    }
    fn active(&self, i: usize) -> u64 {
        self.active.get(i).map_or(0, |a| a.load(Ordering::Relaxed))
    }
    fn share(&self, i: usize) -> u32 {
        self.share.get(i).map_or(SHARE_ONE, |s| s.load(Ordering::Relaxed))
    }
}

fn bench_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100, 10_000] {
        let keys: Vec<String> =
            (0..n).map(|i| format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255)).collect();
        let servers: Vec<ServerSpec<'_>> =
            keys.iter().map(|k| ServerSpec { key: k, weight: 1 }).collect();
        let view = AtomicView {
            eligible: (0..n).map(|_| AtomicBool::new(true)).collect(),
            active: (0..n as u64).map(|i| AtomicU64::new(mix(i) % 100)).collect(),
            share: (0..n).map(|_| AtomicU32::new(SHARE_ONE)).collect(),
        };
        for algorithm in Algorithm::ALL {
            let balancer = Balancer::new(algorithm, &servers);
            group.bench_with_input(BenchmarkId::new(algorithm.name(), n), &balancer, |b, bal| {
                let mut x = 0u64;
                let tried = Tried::new();
                b.iter(|| {
                    x = x.wrapping_add(1);
                    let input = PickInput { hash: mix(x), rand: mix(!x) };
                    black_box(bal.admit(black_box(&input), &view, &tried))
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
