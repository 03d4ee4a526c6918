//! The dashboard's sampler: once a second, on the control plane, it reads the counters the
//! API and `/metrics` read (the routing snapshot and the per-frontend and per-server atomics;
//! nothing is added to the data path), turns their changes into one [`Sample`] per series for
//! the history, notices health changes and ejections (as events), and renders the live view
//! that the page's stream and `GET /api/v1/overview` serve.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use fulcrum_proxy::{CONNECT_BUCKETS, FrontendStats, PoolState, ServerStats, Snapshot};
use serde_json::{Value, json};

use super::history::{History, NO_LOAD, Sample};
use crate::events::{EventKind, EventLog};

/// Buckets of the atomics' histograms (the last is +Inf).
const BUCKETS: usize = CONNECT_BUCKETS.len() + 1;

/// The `q` quantile (0..1) in milliseconds of a histogram given as per-bucket counts over
/// [`CONNECT_BUCKETS`] (+Inf last), interpolating linearly inside the bucket it falls in;
/// `NaN` when it counts nothing. A quantile in the +Inf bucket reads as the last bound.
pub fn quantile_ms(counts: &[u64; BUCKETS], q: f64) -> f32 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return f32::NAN;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    let mut lower = 0.0;
    for (i, &n) in counts.iter().enumerate() {
        let Some(&upper) = CONNECT_BUCKETS.get(i) else { break };
        if n > 0 && (seen + n) as f64 >= rank {
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return ((lower + (upper - lower) * within) * 1000.0) as f32;
        }
        seen += n;
        lower = upper;
    }
    (lower * 1000.0) as f32
}

/// Counters read at the previous tick, to turn totals into rates.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    conns: u64,
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    buckets: [u64; BUCKETS],
}

impl Counts {
    /// Per-bucket growth since `prev` (a counter that went back, after a rebuild, counts 0).
    fn bucket_delta(&self, prev: &Counts) -> [u64; BUCKETS] {
        let mut d = [0; BUCKETS];
        for (i, x) in d.iter_mut().enumerate() {
            *x = self.buckets[i].saturating_sub(prev.buckets[i]);
        }
        d
    }

    fn rates(&self, prev: &Counts, secs: f64) -> [f32; 5] {
        let r = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs) as f32;
        [
            r(self.conns, prev.conns),
            r(self.requests, prev.requests),
            r(self.errors, prev.errors),
            r(self.bytes_in, prev.bytes_in),
            r(self.bytes_out, prev.bytes_out),
        ]
    }
}

fn ld(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn buckets(h: &fulcrum_proxy::Histogram) -> [u64; BUCKETS] {
    let mut out = [0; BUCKETS];
    for (o, (_, n)) in out.iter_mut().zip(h.snapshot().2) {
        *o = n;
    }
    out
}

fn server_counts(s: &ServerStats) -> Counts {
    let http: u64 = s.http_responses.iter().map(ld).sum();
    Counts {
        conns: ld(&s.connections_total),
        requests: http,
        errors: ld(&s.connect_failures) + ld(&s.http_responses[4]),
        bytes_in: ld(&s.bytes_in),
        bytes_out: ld(&s.bytes_out),
        buckets: buckets(&s.connect_time),
    }
}

fn frontend_counts(f: &FrontendStats) -> Counts {
    let errors = [
        &f.no_server,
        &f.accept_errors,
        &f.http_responses[4],
        &f.udp_drops_no_server,
        &f.udp_drops_session_limit,
        &f.udp_drops_source_limit,
        &f.udp_drops_descriptors,
        &f.udp_drops_queue_full,
        &f.udp_drops_send_error,
        &f.fanout_timeouts,
        &f.fanout_dropped,
        &f.send_timeouts,
    ];
    Counts {
        conns: ld(&f.connections_total) + ld(&f.udp_sessions_total),
        requests: ld(&f.http_requests) + ld(&f.fanout_requests),
        errors: errors.into_iter().map(ld).sum(),
        bytes_in: ld(&f.bytes_in) + ld(&f.udp_bytes_in),
        bytes_out: ld(&f.bytes_out) + ld(&f.udp_bytes_out),
        buckets: buckets(&f.http_latency),
    }
}

pub fn num(x: f32) -> Value {
    if x.is_finite() { json!((f64::from(x) * 1000.0).round() / 1000.0) } else { Value::Null }
}

/// A sample as the API shows it (`NaN` as `null`).
pub fn sample_json(s: &Sample) -> Value {
    json!({
        "active": s.active,
        "load": (s.load != NO_LOAD).then_some(s.load),
        "conns": num(s.conns), "requests": num(s.requests), "errors": num(s.errors),
        "bytes_in": num(s.bytes_in), "bytes_out": num(s.bytes_out),
        "p50_ms": num(s.p50_ms), "p99_ms": num(s.p99_ms), "up": num(s.up),
    })
}

/// What the sampler remembers between ticks.
#[derive(Debug, Default)]
pub struct Sampler {
    servers: HashMap<(String, String), (Counts, bool, u64)>,
    frontends: HashMap<String, Counts>,
    refused: HashMap<String, u64>,
}

/// A server's sample and its part of the live view.
struct ServerRow {
    sample: Sample,
    delta: [u64; BUCKETS],
    row: Value,
}

impl Sampler {
    /// One tick at Unix second `at`, `secs` after the previous one: records every series in
    /// `history`, pushes health changes and ejections to `events`, and returns the live view.
    pub fn tick(
        &mut self,
        snap: &Snapshot,
        now_ms: u64,
        at: u64,
        secs: f64,
        history: &mut History,
        events: &EventLog,
    ) -> Value {
        let secs = secs.max(0.001);
        let mut pools = Vec::with_capacity(snap.pools.len());
        let mut seen = std::collections::HashSet::new();
        for p in &snap.pools {
            let rows: Vec<ServerRow> =
                p.servers.iter().map(|sv| self.server(p, sv, now_ms, secs, events)).collect();
            for sv in &p.servers {
                seen.insert((p.name.clone(), sv.key.clone()));
            }
            let pool_sample = self.pool_sample(p, &rows, secs);
            history.record(&format!("pool/{}", p.name), at, pool_sample);
            for (sv, r) in p.servers.iter().zip(&rows) {
                history.record(&format!("server/{}/{}", p.name, sv.key), at, r.sample);
            }
            pools.push(json!({
                "name": p.name,
                "algorithm": p.algorithm.name(),
                "queue_length": p.queue.len(),
                "sample": sample_json(&pool_sample),
                "servers": rows.into_iter().map(|r| r.row).collect::<Vec<_>>(),
            }));
        }
        self.servers.retain(|k, _| seen.contains(k));
        self.refused.retain(|k, _| snap.pool(k).is_some());

        let mut frontends = Vec::with_capacity(snap.frontends.len());
        for f in &snap.frontends {
            let now = frontend_counts(&f.stats);
            let prev = self.frontends.insert(f.name.to_string(), now).unwrap_or(now);
            let delta = now.bucket_delta(&prev);
            let [conns, requests, errors, bytes_in, bytes_out] = now.rates(&prev, secs);
            let pool = snap.pools.get(f.pool);
            let up = pool.map_or(f32::NAN, |p| {
                if p.servers.iter().any(|s| s.in_rotation() && !s.stats.is_down()) {
                    1.0
                } else {
                    0.0
                }
            });
            let s = Sample {
                active: (ld(&f.stats.connections_active) + ld(&f.stats.udp_sessions_active))
                    .min(u64::from(u32::MAX)) as u32,
                load: NO_LOAD,
                conns,
                requests,
                errors,
                bytes_in,
                bytes_out,
                p50_ms: quantile_ms(&delta, 0.5),
                p99_ms: quantile_ms(&delta, 0.99),
                up,
            };
            history.record(&format!("frontend/{}", f.name), at, s);
            frontends.push(json!({
                "name": &*f.name,
                "pool": pool.map(|p| p.name.clone()),
                "http": f.http,
                "connections_total": ld(&f.stats.connections_total),
                "p95_ms": num(quantile_ms(&delta, 0.95)),
                "sample": sample_json(&s),
            }));
        }
        self.frontends.retain(|k, _| snap.frontend(k).is_some());
        json!({ "t": at, "frontends": frontends, "pools": pools })
    }

    fn server(
        &mut self,
        p: &PoolState,
        sv: &fulcrum_proxy::ServerEntry,
        now_ms: u64,
        secs: f64,
        events: &EventLog,
    ) -> ServerRow {
        let st = &sv.stats;
        let now = server_counts(st);
        let down = st.is_down();
        let ejections = ld(&st.ejections);
        let ejected = st.is_ejected(now_ms);
        let key = (p.name.clone(), sv.key.clone());
        let (prev, was_down, prev_ejections) =
            self.servers.insert(key, (now, down, ejections)).unwrap_or((now, down, ejections));
        if down != was_down {
            let (what, msg) = if down {
                ("down", "health checks failed")
            } else {
                ("up", "health checks passed")
            };
            events.push(
                EventKind::Health,
                Some(&p.name),
                Some(&sv.key),
                format!("{} is {what}: {msg}", sv.key),
            );
        }
        if ejections > prev_ejections {
            events.push(
                EventKind::Ejection,
                Some(&p.name),
                Some(&sv.key),
                format!("{} ejected after failed connects", sv.key),
            );
        }
        let delta = now.bucket_delta(&prev);
        let [conns, requests, errors, bytes_in, bytes_out] = now.rates(&prev, secs);
        let reported = st.fresh_report(p.report_ttl_ms, now_ms).map(|(c, _, a)| c + a);
        let active = ld(&st.active);
        let sample = Sample {
            active: active.min(u64::from(u32::MAX)) as u32,
            load: reported.map_or(NO_LOAD, |l| l.min(u64::from(NO_LOAD - 1)) as u32),
            conns,
            requests,
            errors,
            bytes_in,
            bytes_out,
            p50_ms: quantile_ms(&delta, 0.5),
            p99_ms: quantile_ms(&delta, 0.99),
            up: if !down && !ejected { 1.0 } else { 0.0 },
        };
        let row = json!({
            "address": sv.key,
            "state": sv.state.name(),
            "health": st.health_name(),
            "ejected": ejected,
            "weight": sv.weight,
            "active_connections": active,
            "connections_total": now.conns,
            "connect_failures": ld(&st.connect_failures),
            "max_connections": sv.cap(p.agent_maxconn_ttl_ms, now_ms),
            "reported": reported,
            "p95_ms": num(quantile_ms(&delta, 0.95)),
            "sample": sample_json(&sample),
        });
        ServerRow { sample, delta, row }
    }

    fn pool_sample(&mut self, p: &PoolState, rows: &[ServerRow], secs: f64) -> Sample {
        let refused = ld(&p.queue.refused_servers_full)
            + ld(&p.queue.refused_queue_full)
            + ld(&p.queue.refused_queue_timeout);
        let prev = self.refused.insert(p.name.clone(), refused).unwrap_or(refused);
        let mut delta = [0u64; BUCKETS];
        let mut s = Sample {
            active: 0,
            load: NO_LOAD,
            conns: 0.0,
            requests: 0.0,
            errors: (refused.saturating_sub(prev) as f64 / secs) as f32,
            bytes_in: 0.0,
            bytes_out: 0.0,
            p50_ms: f32::NAN,
            p99_ms: f32::NAN,
            up: f32::NAN,
        };
        let mut up = 0.0;
        for r in rows {
            let x = &r.sample;
            s.active = s.active.saturating_add(x.active);
            if x.load != NO_LOAD {
                let sum = if s.load == NO_LOAD { 0 } else { s.load };
                s.load = sum.saturating_add(x.load).min(NO_LOAD - 1);
            }
            s.conns += x.conns;
            s.requests += x.requests;
            s.errors += x.errors;
            s.bytes_in += x.bytes_in;
            s.bytes_out += x.bytes_out;
            up += x.up;
            for (d, n) in delta.iter_mut().zip(r.delta) {
                *d += n;
            }
        }
        if !rows.is_empty() {
            s.up = up / rows.len() as f32;
        }
        s.p50_ms = quantile_ms(&delta, 0.5);
        s.p99_ms = quantile_ms(&delta, 0.99);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let mut c = [0u64; BUCKETS];
        assert!(quantile_ms(&c, 0.5).is_nan(), "nothing observed");
        // 100 in (1 ms, 2.5 ms]: the median is half way.
        c[2] = 100;
        assert!((quantile_ms(&c, 0.5) - 1.75).abs() < 1e-3, "{}", quantile_ms(&c, 0.5));
        // 90 fast (≤ 0.5 ms), 10 slow in (100 ms, 250 ms]: p50 is fast, p99 slow.
        let mut c = [0u64; BUCKETS];
        c[0] = 90;
        c[8] = 10;
        assert!(quantile_ms(&c, 0.5) <= 0.5);
        let p99 = quantile_ms(&c, 0.99);
        assert!((100.0..=250.0).contains(&p99), "{p99}");
        // Beyond the last bound: read as the last bound.
        let mut c = [0u64; BUCKETS];
        c[BUCKETS - 1] = 5;
        assert_eq!(quantile_ms(&c, 0.99), 2500.0);
    }
}
