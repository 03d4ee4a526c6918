//! The data `fulcrum top` shows, read from the admin API's JSON without trusting its shape:
//! the live view (`GET /api/v1/overview`) as frontends, pools and servers, and the rates of
//! the last minutes per pool and server (filled from `GET /api/v1/history` at start, then
//! one point per overview) folded into sparkline cells.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// The span the sparklines cover, in seconds.
pub const WINDOW_S: u64 = 300;

/// The figures of one sample (`sample` in the overview); `None` where the daemon had nothing
/// to say (no traffic for a percentile, a rate before the second sample).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub active: u64,
    pub conns: Option<f64>,
    pub requests: Option<f64>,
    pub errors: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of servers in rotation and healthy (pools), or 1/0 (servers).
    pub up: Option<f64>,
}

impl Rates {
    fn from_json(v: &Value) -> Rates {
        Rates {
            active: v["active"].as_u64().unwrap_or(0),
            conns: v["conns"].as_f64(),
            requests: v["requests"].as_f64(),
            errors: v["errors"].as_f64(),
            p99_ms: v["p99_ms"].as_f64(),
            up: v["up"].as_f64(),
        }
    }

    /// The rate a row shows: requests for a pool behind an HTTP frontend, where one
    /// connection carries many requests; new connections otherwise.
    pub fn rate(&self, http: bool) -> Option<f64> {
        if http { self.requests } else { self.conns }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frontend {
    pub name: String,
    pub pool: Option<String>,
    pub http: bool,
    pub rates: Rates,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// As the daemon lists it: `HOST:PORT#IP` for a server given by name.
    pub address: String,
    pub state: String,
    /// `up`, `down` or `ejected`.
    pub health: String,
    pub max_connections: Option<u64>,
    pub rates: Rates,
}

impl Server {
    /// The address the API's routes take: a server given by host name is changed by its
    /// name as configured, which acts on all its addresses.
    pub fn configured(&self) -> &str {
        self.address.split_once('#').map_or(&self.address, |(name, _)| name)
    }

    pub fn series(&self, pool: &str) -> String {
        format!("server/{pool}/{}", self.address)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub algorithm: String,
    pub queue_length: u64,
    /// A frontend serving HTTP sends its requests here: rates are requests per second.
    pub http: bool,
    pub rates: Rates,
    pub servers: Vec<Server>,
}

impl Pool {
    pub fn series(&self) -> String {
        format!("pool/{}", self.name)
    }
}

/// One reading of `GET /api/v1/overview`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    /// The daemon's clock, Unix seconds, of the sample.
    pub t: Option<u64>,
    /// Seconds since the daemon started, and its reloads so far.
    pub uptime_s: Option<u64>,
    pub reloads: Option<u64>,
    pub frontends: Vec<Frontend>,
    pub pools: Vec<Pool>,
}

impl Overview {
    /// Every history series this view has a sparkline for.
    pub fn series(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.pools {
            out.push(p.series());
            out.extend(p.servers.iter().map(|s| s.series(&p.name)));
        }
        out
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// Reads the overview; `Err` when the answer is not one (another service at `--api`, or a
/// daemon that has not sampled yet).
pub fn parse_overview(v: &Value) -> Result<Overview, String> {
    let (Some(pools), Some(frontends)) = (v["pools"].as_array(), v["frontends"].as_array()) else {
        return Err("the answer of /api/v1/overview has no pools or frontends".into());
    };
    let frontends: Vec<Frontend> = frontends
        .iter()
        .map(|f| Frontend {
            name: text(&f["name"]),
            pool: f["pool"].as_str().map(str::to_string),
            http: f["http"] == true,
            rates: Rates::from_json(&f["sample"]),
        })
        .collect();
    let http_pools: HashSet<&str> =
        frontends.iter().filter(|f| f.http).filter_map(|f| f.pool.as_deref()).collect();
    let pools = pools
        .iter()
        .map(|p| {
            let name = text(&p["name"]);
            let servers = p["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Server {
                    address: text(&s["address"]),
                    state: text(&s["state"]),
                    health: if s["ejected"] == true {
                        "ejected".into()
                    } else {
                        text(&s["health"])
                    },
                    max_connections: s["max_connections"].as_u64(),
                    rates: Rates::from_json(&s["sample"]),
                })
                .collect();
            Pool {
                http: http_pools.contains(name.as_str()),
                name,
                algorithm: text(&p["algorithm"]),
                queue_length: p["queue_length"].as_u64().unwrap_or(0),
                rates: Rates::from_json(&p["sample"]),
                servers,
            }
        })
        .collect();
    Ok(Overview {
        t: v["t"].as_u64(),
        uptime_s: v["uptime_s"].as_u64(),
        reloads: v["reloads"].as_u64(),
        frontends,
        pools,
    })
}

/// The two rates a sparkline may show, per second of the daemon's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Point {
    conns: Option<f64>,
    requests: Option<f64>,
}

/// The last [`WINDOW_S`] seconds of rates of every pool and server on screen.
#[derive(Debug, Default)]
pub struct Sparks {
    series: HashMap<String, BTreeMap<u64, Point>>,
    /// The newest second seen: points older than the window before it are dropped.
    newest: u64,
}

impl Sparks {
    /// Adds the overview's samples as the points of its second, and forgets the series of
    /// pools and servers it no longer lists.
    pub fn record(&mut self, ov: &Overview) {
        let Some(t) = ov.t else { return };
        self.newest = self.newest.max(t);
        let mut seen = HashSet::new();
        for p in &ov.pools {
            let mut put = |name: String, r: &Rates| {
                let point = Point { conns: r.conns, requests: r.requests };
                self.series.entry(name.clone()).or_default().insert(t, point);
                seen.insert(name);
            };
            put(p.series(), &p.rates);
            for s in &p.servers {
                put(s.series(&p.name), &s.rates);
            }
        }
        self.series.retain(|name, _| seen.contains(name));
        self.prune();
    }

    /// Adds the points of a `GET /api/v1/history?range=hour` answer to series already on
    /// screen (a point the overview gave is kept); anything malformed is skipped.
    pub fn fill(&mut self, history: &Value) {
        let Some(all) = history["series"].as_object() else { return };
        for (name, cols) in all {
            let Some(points) = self.series.get_mut(name) else { continue };
            let (Some(start), Some(step)) = (cols["start"].as_u64(), cols["step_s"].as_u64())
            else {
                continue;
            };
            let empty = Vec::new();
            let conns = cols["conns"].as_array().unwrap_or(&empty);
            let requests = cols["requests"].as_array().unwrap_or(&empty);
            let from = self.newest.saturating_sub(WINDOW_S);
            for i in 0..conns.len().max(requests.len()) {
                let t = start.saturating_add(step.saturating_mul(i as u64));
                if t < from {
                    continue;
                }
                let at = |col: &[Value]| col.get(i).and_then(Value::as_f64);
                let point = Point { conns: at(conns), requests: at(requests) };
                if point.conns.is_some() || point.requests.is_some() {
                    points.entry(t).or_insert(point);
                }
            }
            self.newest = self.newest.max(points.last_key_value().map_or(0, |(t, _)| *t));
        }
        self.prune();
    }

    fn prune(&mut self) {
        let from = self.newest.saturating_sub(WINDOW_S);
        for points in self.series.values_mut() {
            points.retain(|t, _| *t > from);
        }
    }

    /// The window ending at `now` cut into `width` cells (at most one a second), each the
    /// mean of its seconds' rates, oldest first; `None` for a cell with no point.
    pub fn cells(&self, name: &str, now: u64, width: usize, http: bool) -> Vec<Option<f64>> {
        let width = width.min(WINDOW_S as usize);
        let mut sums = vec![(0.0, 0u32); width];
        let Some(points) = self.series.get(name) else { return vec![None; width] };
        let from = now.saturating_sub(WINDOW_S) + 1;
        for (&t, p) in points.range(from..=now) {
            let Some(v) = (if http { p.requests } else { p.conns }) else { continue };
            let cell = ((t - from) as usize * width) / WINDOW_S as usize;
            if let Some(s) = sums.get_mut(cell) {
                s.0 += v;
                s.1 += 1;
            }
        }
        sums.into_iter().map(|(sum, n)| (n > 0).then(|| sum / f64::from(n))).collect()
    }
}

/// Cells as block glyphs scaled to `max`: a blank where there is no point, the lowest bar for
/// zero, at least the second for any traffic, so idle and slow stay apart.
pub fn glyphs(cells: &[Option<f64>], max: f64) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    cells
        .iter()
        .map(|c| match *c {
            None => ' ',
            Some(v) if v <= 0.0 || !v.is_finite() || max <= 0.0 => BARS[0],
            Some(v) => {
                let i = ((v / max) * 7.0).round().clamp(1.0, 7.0) as usize;
                BARS[i]
            }
        })
        .collect()
}

/// The largest value among the cells (0 when none).
pub fn peak<'a>(rows: impl IntoIterator<Item = &'a [Option<f64>]>) -> f64 {
    rows.into_iter().flatten().flatten().fold(0.0, |m: f64, v| m.max(*v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn overview(t: u64, conns: f64) -> Value {
        json!({
            "t": t,
            "frontends": [
                {"name": "web", "pool": "app", "http": false, "sample": {"active": 2, "conns": conns}},
                {"name": "api", "pool": "api", "http": true, "sample": {"active": 0, "requests": 7.5}},
            ],
            "pools": [
                {"name": "app", "algorithm": "round-robin", "queue_length": 0,
                 "sample": {"active": 2, "conns": conns, "requests": 0.0, "errors": 0.0, "up": 1.0},
                 "servers": [
                    {"address": "127.0.0.1:9001", "state": "up", "health": "up", "ejected": false,
                     "max_connections": null,
                     "sample": {"active": 2, "conns": conns, "errors": 0.5, "p99_ms": 0.25}},
                    {"address": "web.test:80#10.0.0.2", "state": "drain", "health": "down",
                     "ejected": true, "max_connections": 10, "sample": {}},
                 ]},
                {"name": "api", "algorithm": "least-connections", "servers": []},
            ],
        })
    }

    #[test]
    fn the_overview_becomes_rows_with_the_rate_that_fits_the_pool() {
        let ov = parse_overview(&overview(1000, 12.0)).unwrap();
        assert_eq!(ov.t, Some(1000));
        assert_eq!(ov.frontends.len(), 2);
        let app = &ov.pools[0];
        assert!(!app.http, "only a tcp frontend sends to app");
        assert!(ov.pools[1].http, "an http frontend sends to api");
        assert_eq!(app.rates.rate(app.http), Some(12.0));
        let s = &app.servers[0];
        assert_eq!((s.rates.active, s.rates.errors, s.rates.p99_ms), (2, Some(0.5), Some(0.25)));
        let named = &app.servers[1];
        assert_eq!(named.health, "ejected", "ejection shows over the health checks' verdict");
        assert_eq!(named.configured(), "web.test:80", "the API changes it by its name");
        assert_eq!(named.max_connections, Some(10));
        assert_eq!(named.rates, Rates::default(), "an empty sample is no figures, not an error");
        assert_eq!(
            ov.series(),
            [
                "pool/app",
                "server/app/127.0.0.1:9001",
                "server/app/web.test:80#10.0.0.2",
                "pool/api"
            ]
        );
    }

    #[test]
    fn what_is_not_an_overview_is_an_error_never_a_panic() {
        for v in [json!("<html>"), json!({}), json!({"pools": 3, "frontends": []}), json!(null)] {
            assert!(parse_overview(&v).is_err(), "{v}");
        }
        // Wrong types inside are read as nothing.
        let v = json!({"frontends": [7, {"name": 3}], "pools": [{"servers": [null, "x"]}]});
        let ov = parse_overview(&v).unwrap();
        assert_eq!(ov.frontends[1].name, "");
        assert_eq!(ov.pools[0].servers.len(), 2);
    }

    #[test]
    fn sparklines_start_from_history_and_follow_the_overview() {
        let mut sp = Sparks::default();
        sp.record(&parse_overview(&overview(1000, 10.0)).unwrap());
        // The history: 1 conn/s from 990 to 998, a missed second (null) at 996, and a point
        // for a series not on screen.
        let conns: Vec<Value> =
            (990..999).map(|t| if t == 996 { Value::Null } else { json!(1.0) }).collect();
        sp.fill(&json!({"range": "hour", "series": {
            "server/app/127.0.0.1:9001": {"start": 990, "step_s": 1, "conns": conns, "requests": []},
            "server/app/gone:1": {"start": 990, "step_s": 1, "conns": [5.0]},
            "pool/app": {"start": "bad", "conns": [1.0]},
        }}));
        assert!(!sp.series.contains_key("server/app/gone:1"));
        // One cell a second over the last 300 s: the last eleven hold history and the overview.
        let cells = sp.cells("server/app/127.0.0.1:9001", 1000, 300, false);
        assert_eq!(cells.len(), 300);
        assert_eq!(cells[299], Some(10.0), "the overview's point");
        assert_eq!(cells[298], None, "999 was in neither");
        assert_eq!(cells[295], None, "996 was null");
        assert_eq!(cells[289], Some(1.0));
        assert_eq!(cells[288], None);
        // The history does not overwrite a point the overview gave.
        sp.fill(&json!({"series": {"server/app/127.0.0.1:9001":
            {"start": 1000, "step_s": 1, "conns": [99.0]}}}));
        assert_eq!(sp.cells("server/app/127.0.0.1:9001", 1000, 300, false)[299], Some(10.0));
        // Ten cells: each the mean of its 30 seconds.
        let ten = sp.cells("server/app/127.0.0.1:9001", 1000, 10, false);
        assert_eq!(ten.len(), 10);
        assert_eq!(ten[9], Some((8.0 + 10.0) / 9.0), "eight history points and the overview's");
        assert!(ten[..9].iter().all(Option::is_none));
        // Requests are another column: none here.
        assert!(sp.cells("server/app/127.0.0.1:9001", 1000, 10, true).iter().all(Option::is_none));
        // Later overviews push old points out of the window.
        sp.record(&parse_overview(&overview(1000 + WINDOW_S + 5, 3.0)).unwrap());
        let late = sp.cells("server/app/127.0.0.1:9001", 1000 + WINDOW_S + 5, 300, false);
        assert_eq!(late.iter().flatten().count(), 1);
        assert!(sp.series["server/app/127.0.0.1:9001"].len() <= WINDOW_S as usize);
    }

    #[test]
    fn a_removed_server_loses_its_sparkline() {
        let mut sp = Sparks::default();
        sp.record(&parse_overview(&overview(1000, 1.0)).unwrap());
        let mut v = overview(1001, 1.0);
        v["pools"][0]["servers"].as_array_mut().unwrap().truncate(1);
        sp.record(&parse_overview(&v).unwrap());
        assert!(!sp.series.contains_key("server/app/web.test:80#10.0.0.2"));
        assert!(sp.series.contains_key("server/app/127.0.0.1:9001"));
    }

    #[test]
    fn glyphs_keep_idle_traffic_and_gaps_apart() {
        let cells = [None, Some(0.0), Some(0.01), Some(5.0), Some(10.0), Some(f64::NAN)];
        assert_eq!(glyphs(&cells, 10.0), " ▁▂▅█▁");
        assert_eq!(glyphs(&cells, 0.0), " ▁▁▁▁▁", "nothing to scale to");
        assert_eq!(peak([&cells[..3], &cells[3..5]]), 10.0);
        assert_eq!(peak(std::iter::empty::<&[Option<f64>]>()), 0.0);
    }
}
