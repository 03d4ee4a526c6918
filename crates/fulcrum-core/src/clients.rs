//! What a client is for per-client limits, and the rate rule: no I/O, no clock (times are
//! passed in). A client is its address, IPv6 grouped by a prefix (one host usually holds a
//! whole /64). A rate is checked with GCRA (the generic cell rate algorithm): one timestamp
//! per client and rate, no timer and no refill task, and the exact wait until the next event
//! would pass, which becomes `Retry-After`.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// The key a client is counted under: IPv4 (also IPv4-mapped IPv6) as is, IPv6 cut to
/// `v6_prefix` bits (0..=128).
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Whether `active` of `max` slots is at or past `percent` of them.
pub fn under_pressure(active: usize, max: usize, percent: u8) -> bool {
    active.saturating_mul(100) >= max.saturating_mul(usize::from(percent))
}

/// One address's fair share of `capacity` slots when `holders` addresses hold some: a share
/// for each, and one more address counted so that a newcomer always has one (at least 1).
pub fn fair_share(capacity: usize, holders: usize) -> usize {
    (capacity / holders.saturating_add(1)).max(1)
}

/// A rate with its burst: `events` per `per`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time between two events at the steady rate, in nanoseconds (at least 1).
    interval_ns: u64,
    /// Events allowed at once after a quiet spell (at least 1).
    burst: u32,
}

impl Rate {
    /// `events` per `per`, with `burst` (default: one second's worth, at least 1).
    pub fn new(events: u64, per: Duration, burst: Option<u32>) -> Result<Rate, String> {
        if events == 0 {
            return Err("the rate must be at least 1 per period".into());
        }
        let per_ns = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
        if per_ns == 0 {
            return Err("the period must be longer than zero".into());
        }
        let interval_ns = (per_ns / events).max(1);
        let burst = match burst {
            Some(0) => return Err("burst must be at least 1".into()),
            Some(b) => b,
            // One second's worth: ceil(1 s / interval).
            None => u32::try_from(1_000_000_000u64.div_ceil(interval_ns)).unwrap_or(u32::MAX),
        };
        Ok(Rate { interval_ns, burst: burst.max(1) })
    }

    /// `"20/s"`, `"600/m"`, `"5000/h"`: events per second, minute or hour.
    pub fn parse(s: &str, burst: Option<u32>) -> Result<Rate, String> {
        let bad =
            || format!("\"{s}\" is not a rate (expected e.g. \"20/s\", \"600/m\", \"5000/h\")");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let events: u64 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Rate::new(events, per, burst)
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Events per second at the steady rate.
    pub fn per_second(&self) -> f64 {
        1e9 / self.interval_ns as f64
    }

    /// One event at `now_ns` against the client's theoretical arrival time `tat_ns` (0 for a
    /// new client): `Ok(new tat)` when it passes, `Err(wait)` with how long until one would.
    pub fn admit(&self, tat_ns: u64, now_ns: u64) -> Result<u64, Duration> {
        let tolerance = self.interval_ns.saturating_mul(u64::from(self.burst));
        let next = tat_ns.max(now_ns).saturating_add(self.interval_ns);
        let ahead = next - now_ns;
        if ahead <= tolerance { Ok(next) } else { Err(Duration::from_nanos(ahead - tolerance)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_prefix_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_eq!(client_key(a, 64), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(client_key(a, 128), client_key(b, 128));
        assert_eq!(client_key(a, 0), "::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:127.0.0.3".parse().unwrap();
        assert_eq!(client_key(mapped, 64), "127.0.0.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_fair_share_leaves_room_for_a_newcomer() {
        assert!(!under_pressure(89, 100, 90) && under_pressure(90, 100, 90));
        assert!(under_pressure(100, 100, 100) && !under_pressure(99, 100, 100));
        // One address alone may take half; under pressure it is held there.
        assert_eq!(fair_share(9_872, 1), 4_936);
        assert_eq!(fair_share(9_872, 1_000), 9);
        assert_eq!(fair_share(10, 50), 1);
        assert_eq!(fair_share(0, 0), 1);
    }

    #[test]
    fn rates_parse_with_a_default_burst_of_one_second() {
        let r = Rate::parse("20/s", None).unwrap();
        assert_eq!((r.burst(), r.per_second().round()), (20, 20.0));
        let r = Rate::parse("600/m", None).unwrap();
        assert_eq!((r.burst(), r.per_second().round()), (10, 10.0));
        assert_eq!(Rate::parse("1/h", None).unwrap().burst(), 1);
        assert_eq!(Rate::parse("20/s", Some(40)).unwrap().burst(), 40);
        for bad in ["", "20", "x/s", "20/d", "0/s", "-1/s", "20/"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Rate::parse("5/s", Some(0)).is_err());
    }

    /// Drives the rule like a client sending as fast as it may: `burst` at once, then one
    /// per interval; over a long run the count approaches the rate.
    #[test]
    fn a_greedy_client_gets_the_burst_then_the_rate() {
        let r = Rate::parse("50/s", None).unwrap();
        let mut tat = 0;
        let start = 1_000_000_000u64;
        let mut at_once = 0;
        while let Ok(t) = r.admit(tat, start) {
            tat = t;
            at_once += 1;
            assert!(at_once <= 1000, "no bound");
        }
        assert_eq!(at_once, 50);
        // Then try every millisecond for 10 s: 50 per second more.
        let mut passed = 0;
        for ms in 1..=10_000u64 {
            if let Ok(t) = r.admit(tat, start + ms * 1_000_000) {
                tat = t;
                passed += 1;
            }
        }
        assert_eq!(passed, 500);
    }

    #[test]
    fn the_wait_is_exact_and_quiet_spells_refill_only_the_burst() {
        let r = Rate::new(1, Duration::from_secs(1), Some(2)).unwrap();
        let now = 5_000_000_000;
        let t = r.admit(0, now).unwrap();
        let t = r.admit(t, now).unwrap();
        assert_eq!(r.admit(t, now), Err(Duration::from_secs(1)));
        assert_eq!(r.admit(t, now + 400_000_000), Err(Duration::from_millis(600)));
        assert!(r.admit(t, now + 1_000_000_000).is_ok());
        // A day of silence still allows only the burst.
        let later = now + 86_400_000_000_000;
        let t = r.admit(t, later).unwrap();
        let t = r.admit(t, later).unwrap();
        assert!(r.admit(t, later).is_err());
    }
}
