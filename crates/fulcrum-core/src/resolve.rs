//! When server host names are looked up again, and what an answer changes. Pure: the resolver
//! task (fulcrum-admin `resolver.rs`) does the lookups and passes the clock in.
//!
//! A name is looked up again when its records expire (their TTL), but never later than its
//! pool's `resolve_interval` and never sooner than [`MIN_REFRESH_MS`]: a TTL of 0 must not
//! turn into a lookup loop. A failed lookup, or one that finds no address, keeps the last good
//! addresses: a name server that is down must not empty a pool whose servers are fine.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// No name is looked up more often than this.
pub const MIN_REFRESH_MS: u64 = 1_000;
/// A run of failures of one name is logged when it starts, then at most this often.
pub const FAILURE_LOG_EVERY_MS: u64 = 60_000;

/// How long after an answer the name is due again: its TTL, bounded by the interval, and at
/// least [`MIN_REFRESH_MS`].
pub fn refresh_after_ms(ttl_ms: Option<u64>, interval_ms: u64) -> u64 {
    let interval = interval_ms.max(MIN_REFRESH_MS);
    ttl_ms.map_or(interval, |t| t.min(interval)).max(MIN_REFRESH_MS)
}

/// What one answer means for the routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The name has other addresses now (sorted, without duplicates): apply them.
    Changed(Vec<IpAddr>),
    /// The same addresses as before.
    Same,
    /// The lookup failed or found nothing: the last good addresses stay. `failures` counts the
    /// run; `log` says whether this one should be logged (rate-limited per name).
    Kept { failures: u32, log: bool },
}

#[derive(Debug, Clone)]
struct Entry {
    interval_ms: u64,
    due_ms: u64,
    addrs: Vec<IpAddr>,
    /// Failed lookups in a row.
    failures: u32,
    logged_ms: Option<u64>,
    /// A lookup was started and has not answered yet.
    asking: bool,
}

/// The names to keep fresh, by host name.
#[derive(Debug, Default)]
pub struct Schedule {
    entries: BTreeMap<String, Entry>,
}

impl Schedule {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the table to the names the routing state uses now: (host, interval, the
    /// addresses it routes to). A name listed twice (two pools, two ports) takes the shorter
    /// interval. A new name is due at once: its TTL is not known until it is asked. A name no
    /// longer used is dropped. The routing state's addresses win over the table's (a reload
    /// looked every name up again).
    pub fn sync<'a>(
        &mut self,
        wanted: impl IntoIterator<Item = (&'a str, u64, Vec<IpAddr>)>,
        now_ms: u64,
    ) {
        let mut seen: BTreeMap<&str, (u64, Vec<IpAddr>)> = BTreeMap::new();
        for (host, interval, addrs) in wanted {
            let e = seen.entry(host).or_insert((interval, addrs));
            e.0 = e.0.min(interval);
        }
        self.entries.retain(|host, _| seen.contains_key(host.as_str()));
        for (host, (interval, mut addrs)) in seen {
            let interval = interval.max(MIN_REFRESH_MS);
            addrs.sort_unstable();
            addrs.dedup();
            match self.entries.get_mut(host) {
                Some(e) => {
                    if interval < e.interval_ms {
                        e.due_ms = e.due_ms.min(now_ms.saturating_add(interval));
                    }
                    e.interval_ms = interval;
                    e.addrs = addrs;
                }
                None => {
                    self.entries.insert(
                        host.to_string(),
                        Entry {
                            interval_ms: interval,
                            due_ms: now_ms,
                            addrs,
                            failures: 0,
                            logged_ms: None,
                            asking: false,
                        },
                    );
                }
            }
        }
    }

    /// The names to ask now; each is marked as being asked, so a slow lookup is never started
    /// twice.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (host, e) in &mut self.entries {
            if !e.asking && e.due_ms <= now_ms {
                e.asking = true;
                out.push(host.clone());
            }
        }
        out
    }

    /// When the next name falls due (none: nothing to look up, or all being asked).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.entries.values().filter(|e| !e.asking).map(|e| e.due_ms).min()
    }

    /// The addresses the table holds for `host` (sorted).
    pub fn addrs(&self, host: &str) -> Option<&[IpAddr]> {
        self.entries.get(host).map(|e| e.addrs.as_slice())
    }

    /// Records the answer for `host`: its addresses and TTL, or `None` when the lookup failed.
    /// An empty answer counts as a failure. A name dropped meanwhile yields [`Verdict::Same`].
    pub fn on_answer(
        &mut self,
        host: &str,
        answer: Option<(Vec<IpAddr>, Option<u64>)>,
        now_ms: u64,
    ) -> Verdict {
        let Some(e) = self.entries.get_mut(host) else { return Verdict::Same };
        e.asking = false;
        match answer {
            Some((mut addrs, ttl_ms)) if !addrs.is_empty() => {
                e.failures = 0;
                e.logged_ms = None;
                e.due_ms = now_ms.saturating_add(refresh_after_ms(ttl_ms, e.interval_ms));
                addrs.sort_unstable();
                addrs.dedup();
                if addrs == e.addrs {
                    Verdict::Same
                } else {
                    e.addrs = addrs.clone();
                    Verdict::Changed(addrs)
                }
            }
            _ => {
                e.failures = e.failures.saturating_add(1);
                e.due_ms = now_ms.saturating_add(e.interval_ms);
                let log =
                    e.logged_ms.is_none_or(|t| now_ms.saturating_sub(t) >= FAILURE_LOG_EVERY_MS);
                if log {
                    e.logged_ms = Some(now_ms);
                }
                Verdict::Kept { failures: e.failures, log }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        assert_eq!(refresh_after_ms(Some(5_000), 30_000), 5_000);
        assert_eq!(refresh_after_ms(Some(300_000), 30_000), 30_000, "the interval caps a long TTL");
        assert_eq!(refresh_after_ms(Some(0), 30_000), MIN_REFRESH_MS, "TTL 0 is no lookup loop");
        assert_eq!(refresh_after_ms(None, 2_000), 2_000, "no TTL: the interval");
        assert_eq!(refresh_after_ms(None, 10), MIN_REFRESH_MS);
    }

    #[test]
    fn new_names_are_due_at_once_then_at_their_ttl() {
        let mut s = Schedule::new();
        s.sync([("app.test", 30_000, vec![ip("10.0.0.1")])], 100);
        assert_eq!(s.take_due(100), ["app.test"]);
        assert_eq!(s.take_due(100), Vec::<String>::new(), "not asked twice at once");
        assert_eq!(s.next_due_ms(), None);
        let v = s.on_answer("app.test", Some((vec![ip("10.0.0.1")], Some(5_000))), 150);
        assert_eq!(v, Verdict::Same);
        assert_eq!(s.next_due_ms(), Some(5_150));
        assert!(s.take_due(5_149).is_empty());
        assert_eq!(s.take_due(5_150), ["app.test"]);
        // The record moved; duplicates and order do not matter.
        let v = s.on_answer(
            "app.test",
            Some((vec![ip("10.0.0.3"), ip("10.0.0.2"), ip("10.0.0.3")], Some(60_000))),
            5_200,
        );
        assert_eq!(v, Verdict::Changed(vec![ip("10.0.0.2"), ip("10.0.0.3")]));
        assert_eq!(s.next_due_ms(), Some(35_200), "the interval caps the TTL");
        assert_eq!(s.addrs("app.test").unwrap(), [ip("10.0.0.2"), ip("10.0.0.3")]);
    }

    #[test]
    fn failures_keep_the_last_addresses_and_log_rate_limited() {
        let mut s = Schedule::new();
        s.sync([("a.test", 2_000, vec![ip("10.0.0.1")])], 0);
        let mut logged = 0;
        let mut t = 0;
        for _ in 0..40 {
            s.take_due(t);
            match s.on_answer("a.test", None, t) {
                Verdict::Kept { log, .. } => logged += u32::from(log),
                v => panic!("{v:?}"),
            }
            assert_eq!(s.next_due_ms(), Some(t + 2_000), "asked again at the interval");
            t += 2_000;
        }
        // 80 s of failures: logged at 0 and at 60 s.
        assert_eq!(logged, 2);
        assert_eq!(s.addrs("a.test").unwrap(), [ip("10.0.0.1")]);
        s.take_due(t);
        assert_eq!(
            s.on_answer("a.test", Some((vec![], Some(1_000))), t),
            Verdict::Kept { failures: 41, log: false }
        );
        s.take_due(t + 2_000);
        let v = s.on_answer("a.test", Some((vec![ip("10.0.0.1")], None)), t + 2_000);
        assert_eq!(v, Verdict::Same, "recovered with the same address");
        s.take_due(t + 4_000);
        assert_eq!(
            s.on_answer("a.test", None, t + 4_000),
            Verdict::Kept { failures: 1, log: true },
            "a new run of failures is logged at once"
        );
    }

    #[test]
    fn sync_merges_drops_and_takes_the_routing_state() {
        let mut s = Schedule::new();
        s.sync([("a.test", 30_000, vec![]), ("b.test", 30_000, vec![])], 0);
        s.take_due(0);
        s.on_answer("a.test", Some((vec![ip("10.0.0.1")], None)), 0);
        s.on_answer("b.test", Some((vec![ip("10.0.0.2")], None)), 0);
        // a.test now also used by a pool with a 5 s interval; b.test gone; a reload moved a.test.
        s.sync([("a.test", 30_000, vec![ip("10.0.0.9")]), ("a.test", 5_000, vec![])], 1_000);
        assert_eq!(s.addrs("b.test"), None);
        assert_eq!(s.addrs("a.test").unwrap(), [ip("10.0.0.9")]);
        assert_eq!(s.next_due_ms(), Some(6_000), "the shorter interval applies now");
        assert_eq!(s.on_answer("b.test", None, 2_000), Verdict::Same, "a dropped name is ignored");
    }
}
