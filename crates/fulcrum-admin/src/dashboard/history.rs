//! The dashboard's history, kept in the daemon: for every series (a frontend, a pool, a
//! server) one ring of the last hour at one second and one of the last day at one minute,
//! each slot a fixed-size [`Sample`]; the minute ring is fed by folding sixty seconds into
//! one. Pure: times are arguments (Unix seconds), nothing here reads a clock.
//!
//! Memory is allocated once per ring, at its exact size, on the first sample: a series costs
//! [`BYTES_PER_SERIES`] plus its name, whatever happens after.

use std::collections::BTreeMap;

/// One-second slots: the last hour.
pub const SECOND_SLOTS: usize = 3600;
/// One-minute slots: the last day.
pub const MINUTE_SLOTS: usize = 1440;
/// The rings of one series when full (docs/dashboard.md states this figure).
pub const BYTES_PER_SERIES: usize = (SECOND_SLOTS + MINUTE_SLOTS) * std::mem::size_of::<Sample>();

/// [`Sample::load`] when no fresh report is known.
pub const NO_LOAD: u32 = u32::MAX;

/// One step of one series. Rates are per second over the step; `NaN` means "nothing to say"
/// (no latency observed, or a step the sampler missed: see [`Sample::GAP`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Sample {
    /// Connections (and UDP sessions) open at the end of the step; a minute keeps its peak.
    pub active: u32,
    /// Load the server reported (a pool: the sum), [`NO_LOAD`] without a fresh report.
    pub load: u32,
    /// New connections (and UDP sessions) per second.
    pub conns: f32,
    /// Requests per second (HTTP requests, fan-out requests).
    pub requests: f32,
    /// Errors per second (failed connects, clients refused, 5xx answers, drops).
    pub errors: f32,
    /// Bytes per second from clients, and to clients.
    pub bytes_in: f32,
    pub bytes_out: f32,
    /// Latency percentiles in milliseconds (servers: connect time; HTTP frontends: request
    /// time).
    pub p50_ms: f32,
    pub p99_ms: f32,
    /// Share of the step in rotation (a pool: of its servers); 1 = all up.
    pub up: f32,
}

impl Sample {
    /// A step with no data (the sampler was late): charts show a hole, not a zero.
    pub const GAP: Sample = Sample {
        active: 0,
        load: NO_LOAD,
        conns: f32::NAN,
        requests: f32::NAN,
        errors: f32::NAN,
        bytes_in: f32::NAN,
        bytes_out: f32::NAN,
        p50_ms: f32::NAN,
        p99_ms: f32::NAN,
        up: f32::NAN,
    };

    pub fn is_gap(&self) -> bool {
        self.conns.is_nan()
    }
}

/// A fixed number of slots, one per step, the newest overwriting the oldest.
#[derive(Debug)]
pub struct Ring {
    cap: usize,
    slots: Vec<Sample>,
    /// Index of the oldest slot once full (the next one to overwrite).
    head: usize,
    /// Step number (time / step) of the newest slot.
    newest: Option<u64>,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring { cap, slots: Vec::new(), head: 0, newest: None }
    }

    fn put(&mut self, s: Sample) {
        if self.slots.capacity() == 0 {
            self.slots.reserve_exact(self.cap);
        }
        if self.slots.len() < self.cap {
            self.slots.push(s);
        } else if let Some(slot) = self.slots.get_mut(self.head) {
            *slot = s;
            self.head = (self.head + 1) % self.cap;
        }
    }

    /// Stores `s` at step `at`. Missed steps in between become gaps; a step at or before the
    /// newest is ignored (the clock went back).
    pub fn push(&mut self, at: u64, s: Sample) {
        if let Some(newest) = self.newest {
            if at <= newest {
                return;
            }
            let missed = (at - newest - 1).min(self.cap as u64);
            for _ in 0..missed {
                self.put(Sample::GAP);
            }
        }
        self.put(s);
        self.newest = Some(at);
    }

    /// The step of the oldest slot and every slot, oldest first.
    pub fn points(&self) -> (Option<u64>, Vec<Sample>) {
        let mut out = Vec::with_capacity(self.slots.len());
        let (tail, front) = self.slots.split_at(self.head.min(self.slots.len()));
        out.extend_from_slice(front);
        out.extend_from_slice(tail);
        let first = self.newest.map(|n| n + 1 - out.len() as u64);
        (first, out)
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Sample>()
    }
}

/// Folds the seconds of one minute into one sample: rates and latency medians averaged over
/// the seconds that have data, connections and p99 at their peak, loads at their peak.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    minute: u64,
    n: u32,
    active: u32,
    load: Option<u32>,
    sums: [f64; 5],
    p50: (f64, u32),
    p99: Option<f32>,
    up: (f64, u32),
}

impl Fold {
    fn add(&mut self, s: &Sample) {
        if s.is_gap() {
            return;
        }
        self.n += 1;
        self.active = self.active.max(s.active);
        if s.load != NO_LOAD {
            self.load = Some(self.load.map_or(s.load, |l| l.max(s.load)));
        }
        for (sum, v) in
            self.sums.iter_mut().zip([s.conns, s.requests, s.errors, s.bytes_in, s.bytes_out])
        {
            *sum += f64::from(v);
        }
        if !s.p50_ms.is_nan() {
            self.p50.0 += f64::from(s.p50_ms);
            self.p50.1 += 1;
        }
        if !s.p99_ms.is_nan() {
            self.p99 = Some(self.p99.map_or(s.p99_ms, |p| p.max(s.p99_ms)));
        }
        if !s.up.is_nan() {
            self.up.0 += f64::from(s.up);
            self.up.1 += 1;
        }
    }

    /// The minute's sample (a gap when none of its seconds had data).
    pub fn sample(&self) -> Sample {
        if self.n == 0 {
            return Sample::GAP;
        }
        let n = f64::from(self.n);
        let mean =
            |(sum, k): (f64, u32)| if k == 0 { f32::NAN } else { (sum / f64::from(k)) as f32 };
        let [conns, requests, errors, bytes_in, bytes_out] = self.sums.map(|s| (s / n) as f32);
        Sample {
            active: self.active,
            load: self.load.unwrap_or(NO_LOAD),
            conns,
            requests,
            errors,
            bytes_in,
            bytes_out,
            p50_ms: mean(self.p50),
            p99_ms: self.p99.unwrap_or(f32::NAN),
            up: mean(self.up),
        }
    }
}

/// The two rings of one series.
#[derive(Debug)]
pub struct Series {
    pub seconds: Ring,
    pub minutes: Ring,
    fold: Fold,
    /// When the series last got a sample (Unix seconds).
    pub last_at: u64,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            seconds: Ring::new(SECOND_SLOTS),
            minutes: Ring::new(MINUTE_SLOTS),
            fold: Fold::default(),
            last_at: 0,
        }
    }
}

impl Series {
    /// Records the second `at` (Unix seconds). A finished minute goes to the minute ring.
    pub fn record(&mut self, at: u64, s: Sample) {
        let minute = at / 60;
        if self.fold.n > 0 && minute != self.fold.minute {
            self.minutes.push(self.fold.minute, self.fold.sample());
            self.fold = Fold::default();
        }
        if self.fold.n == 0 {
            self.fold.minute = minute;
        }
        self.fold.add(&s);
        self.seconds.push(at, s);
        self.last_at = at;
    }

    /// The minute ring's points (step 60 s) with the minute in progress appended, so a day
    /// chart reaches the present.
    pub fn minute_points(&self) -> (Option<u64>, Vec<Sample>) {
        let (first, mut points) = self.minutes.points();
        if self.fold.n == 0 {
            return (first.map(|m| m * 60), points);
        }
        let now = self.fold.minute;
        let first = first.unwrap_or(now);
        // Minutes missed between the ring and the one in progress are gaps.
        let missing = now.saturating_sub(first + points.len() as u64);
        if missing >= MINUTE_SLOTS as u64 {
            return (Some(now * 60), vec![self.fold.sample()]);
        }
        points.extend(std::iter::repeat_n(Sample::GAP, missing as usize));
        points.push(self.fold.sample());
        let extra = points.len().saturating_sub(MINUTE_SLOTS);
        points.drain(..extra);
        (Some((first + extra as u64) * 60), points)
    }

    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Series>() + self.seconds.bytes() + self.minutes.bytes()
    }
}

/// Every series by name (`frontend/NAME`, `pool/NAME`, `server/POOL/ADDRESS`).
#[derive(Debug, Default)]
pub struct History {
    series: BTreeMap<String, Series>,
}

impl History {
    pub fn record(&mut self, name: &str, at: u64, s: Sample) {
        match self.series.get_mut(name) {
            Some(series) => series.record(at, s),
            None => {
                let mut series = Series::default();
                series.record(at, s);
                self.series.insert(name.to_string(), series);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Series> {
        self.series.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    /// Forgets series that got no sample for `keep` seconds before `now` (a removed server):
    /// the history stays bounded however servers come and go.
    pub fn forget_older(&mut self, now: u64, keep: u64) {
        self.series.retain(|_, s| now.saturating_sub(s.last_at) <= keep);
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Heap bytes held by the rings, the series and their names (the map's nodes are
    /// counted as one series each).
    pub fn bytes(&self) -> usize {
        self.series.iter().map(|(k, s)| k.capacity() + s.bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(active: u32, conns: f32) -> Sample {
        Sample {
            active,
            load: NO_LOAD,
            conns,
            requests: 0.0,
            errors: 0.0,
            bytes_in: 0.0,
            bytes_out: 0.0,
            p50_ms: f32::NAN,
            p99_ms: f32::NAN,
            up: 1.0,
        }
    }

    #[test]
    fn a_ring_keeps_the_newest_slots_in_order_and_marks_missed_steps() {
        let mut r = Ring::new(4);
        assert_eq!(r.points(), (None, vec![]));
        for t in 10..13 {
            r.push(t, s(t as u32, 1.0));
        }
        r.push(12, s(99, 1.0)); // not newer: ignored
        r.push(14, s(14, 1.0)); // 13 missed
        r.push(15, s(15, 1.0));
        let (first, pts) = r.points();
        assert_eq!(first, Some(12));
        assert_eq!(pts.len(), 4);
        assert_eq!(pts[0].active, 12);
        assert!(pts[1].is_gap(), "step 13 was missed: {pts:?}");
        assert_eq!((pts[2].active, pts[3].active), (14, 15));
        // A long silence fills the ring with gaps, never more than its size.
        r.push(1_000_000, s(7, 1.0));
        let (first, pts) = r.points();
        assert_eq!(first, Some(999_997));
        assert!(pts[..3].iter().all(Sample::is_gap));
        assert_eq!(pts[3].active, 7);
        assert_eq!(r.bytes(), 4 * std::mem::size_of::<Sample>(), "allocated once, exactly");
    }

    #[test]
    fn a_minute_folds_its_seconds() {
        let mut series = Series::default();
        let base = 60 * 1000;
        for i in 0..60u64 {
            let mut x = s(i as u32, i as f32);
            x.p50_ms = 2.0;
            x.p99_ms = if i == 30 { 50.0 } else { 5.0 };
            x.up = if i < 30 { 1.0 } else { 0.0 };
            x.load = if i == 10 { 7 } else { NO_LOAD };
            series.record(base + i, x);
        }
        // The minute is still in progress: shown, not yet in the ring.
        let (first, pts) = series.minute_points();
        assert_eq!((first, pts.len()), (Some(base), 1));
        series.record(base + 60, s(0, 0.0));
        let (first, minutes) = series.minutes.points();
        assert_eq!(first, Some(1000));
        let m = minutes[0];
        assert_eq!(m.active, 59, "connections keep their peak");
        assert!((m.conns - 29.5).abs() < 1e-4, "rates are averaged: {}", m.conns);
        assert_eq!((m.p50_ms, m.p99_ms), (2.0, 50.0));
        assert!((m.up - 0.5).abs() < 1e-6);
        assert_eq!(m.load, 7);
        let (first, pts) = series.minute_points();
        assert_eq!((first, pts.len()), (Some(base), 2));
        // A gap second does not dilute the averages.
        let mut g = Series::default();
        g.record(0, s(1, 10.0));
        g.record(2, s(1, 20.0));
        assert!((g.minute_points().1[0].conns - 15.0).abs() < 1e-4);
    }

    #[test]
    fn missed_minutes_are_gaps_up_to_the_minute_in_progress() {
        let mut series = Series::default();
        series.record(0, s(1, 1.0));
        series.record(60, s(1, 1.0)); // minute 0 done
        series.record(5 * 60, s(1, 1.0)); // minute 1 done, 2..4 missed, 5 in progress
        let (first, pts) = series.minute_points();
        assert_eq!(first, Some(0));
        let gaps: Vec<bool> = pts.iter().map(Sample::is_gap).collect();
        assert_eq!(gaps, vec![false, false, true, true, true, false]);
    }

    #[test]
    fn forgotten_series_free_their_rings() {
        let mut h = History::default();
        h.record("server/a/1", 100, s(1, 1.0));
        h.record("server/a/2", 200, s(1, 1.0));
        h.forget_older(3701, 3600);
        assert_eq!(h.names().collect::<Vec<_>>(), vec!["server/a/2"]);
    }

    /// Resident set size of this process (nextest runs each test in a process of its own).
    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize =
            statm.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        pages * 4096
    }

    /// The figure docs/dashboard.md states: 24 h of history for 100 servers, fed sample by
    /// sample (not waited for), stays under 100 × 210 KiB, in the accounting and in RSS.
    #[test]
    fn a_day_of_history_for_100_servers_stays_under_the_stated_memory() {
        const SERVERS: usize = 100;
        const STATED_PER_SERVER: usize = 210 * 1024;
        assert_eq!(std::mem::size_of::<Sample>(), 40, "docs/dashboard.md: 40 bytes a sample");
        assert_eq!(BYTES_PER_SERIES, 201_600, "docs/dashboard.md: 5,040 samples a series");
        let names: Vec<String> =
            (0..SERVERS).map(|i| format!("server/app/10.0.{}.{}:8080", i / 250, i % 250)).collect();
        let before = rss_bytes();
        let mut h = History::default();
        let start = 1_800_000_000u64;
        for t in start..start + 24 * 3600 {
            for (i, name) in names.iter().enumerate() {
                h.record(name, t, s(i as u32, (t % 100) as f32));
            }
        }
        let counted = h.bytes();
        let stated = SERVERS * STATED_PER_SERVER;
        assert!(counted <= stated, "history counts {counted} bytes, docs state under {stated}");
        let grown = rss_bytes().saturating_sub(before);
        assert!(
            grown <= stated,
            "RSS grew by {grown} bytes for 24 h × {SERVERS} servers, docs state under {stated}"
        );
        // Full: every ring at its size, the day's minutes all there.
        let one = h.get(&names[0]).unwrap();
        assert_eq!(one.seconds.points().1.len(), SECOND_SLOTS);
        assert_eq!(one.minute_points().1.len(), MINUTE_SLOTS);
        assert!(one.minute_points().1.iter().all(|x| !x.is_gap()));
    }
}
