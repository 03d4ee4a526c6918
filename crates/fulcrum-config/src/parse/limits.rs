//! `[frontend.NAME.limits]`: per-client limits (connections held, connection, request and
//! datagram rates), how IPv6 clients are grouped, and how many clients are tracked. Each
//! key is refused, with its reason, on a protocol that would never read it.

use fulcrum_core::clients::Rate;
use toml::de::{DeTable, DeValue};

use super::{Value, Walker};
use crate::model::{Frontend, Protocol};

const LIMITS_KEYS: &[&str] = &[
    "conn_per_client",
    "conn_rate_per_client",
    "request_rate_per_client",
    "datagram_rate_per_client",
    "ipv6_prefix",
    "max_clients",
    "ban",
];
const BAN_KEYS: &[&str] = &["after", "within", "for"];
/// Longest `within` and `for` of a ban (as the runtime block list's longest `--for`).
const MAX_BAN: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
const RATE_KEYS: &[&str] = &["rate", "burst"];

/// Whether any per-client limit is set (what `ban` counts and `max_clients = 0` forbids).
fn limited(l: &crate::model::ClientLimits) -> bool {
    l.conn_per_client.is_some()
        || l.conn_rate_per_client.is_some()
        || l.request_rate_per_client.is_some()
        || l.datagram_rate_per_client.is_some()
}

impl Walker<'_> {
    pub(super) fn client_limits(&mut self, t: &DeTable<'_>, path: &str, f: &mut Frontend) -> bool {
        let Some(v) = t.get("limits") else { return true };
        let path = format!("{path}.limits");
        let Some(t) = self.table(v, &path) else { return false };
        self.check_keys(t, &path, LIMITS_KEYS);
        let before = self.errors.len();
        let stream = !matches!(f.protocol, Protocol::Udp | Protocol::DirectoryUdp);
        let http = matches!(f.protocol, Protocol::Http | Protocol::Https);
        let l = &mut f.limits;
        for (key, fits, why) in [
            ("conn_per_client", stream, "connections are TCP: on udp, see max_sessions_per_source"),
            ("conn_rate_per_client", stream, "connections are TCP: use datagram_rate_per_client"),
            ("request_rate_per_client", http, "only http and https frontends see requests"),
            (
                "datagram_rate_per_client",
                !stream,
                "only udp and directory-udp frontends get datagrams",
            ),
        ] {
            if let Some(x) = t.get(key)
                && !fits
            {
                self.error(x, &format!("{path}.{key}"), why);
            }
        }
        if let Some(x) = t.get("conn_per_client")
            && let Some(n) = self.integer(x, &format!("{path}.conn_per_client"), 1, 1_000_000)
        {
            l.conn_per_client = Some(n as u32);
        }
        l.conn_rate_per_client =
            self.rate(t.get("conn_rate_per_client"), &path, "conn_rate_per_client");
        l.request_rate_per_client =
            self.rate(t.get("request_rate_per_client"), &path, "request_rate_per_client");
        l.datagram_rate_per_client =
            self.rate(t.get("datagram_rate_per_client"), &path, "datagram_rate_per_client");
        let l = &mut f.limits;
        if let Some(x) = t.get("ipv6_prefix")
            && let Some(n) = self.integer(x, &format!("{path}.ipv6_prefix"), 1, 128)
        {
            l.ipv6_prefix = n as u8;
        }
        if let Some(x) = t.get("max_clients")
            && let Some(n) = self.integer(x, &format!("{path}.max_clients"), 0, 10_000_000)
        {
            if (1..16).contains(&n) {
                self.error(
                    x,
                    &format!("{path}.max_clients"),
                    format!("{n} is out of range (0 to track no client, or 16-10000000)"),
                );
            }
            l.max_clients = n as usize;
        }
        if let Some(x) = t.get("max_clients")
            && l.max_clients == 0
            && limited(l)
        {
            let key = format!("{path}.max_clients");
            self.error(x, &key, "0 tracks no client, so no per-client limit could be counted");
        }
        if let Some(x) = t.get("ban") {
            let key = format!("{path}.ban");
            if !limited(l) {
                self.error(
                    x,
                    &key,
                    "a ban counts refusals by this table's per-client limits: set one of \
                     conn_per_client, conn_rate_per_client, request_rate_per_client or \
                     datagram_rate_per_client",
                );
            } else {
                f.limits.ban = self.ban(x, &key);
            }
        }
        self.errors.len() == before
    }

    /// `{ after = N, within = "1m", for = "10m" }`, every key required.
    fn ban(&mut self, v: &Value<'_>, key: &str) -> Option<crate::model::Ban> {
        let t = self.table(v, key)?;
        self.check_keys(t, key, BAN_KEYS);
        let need = |w: &mut Self, k: &str| {
            let x = t.get(k);
            if x.is_none() {
                w.error(
                    v,
                    key,
                    format!("needs `{k}` (ban = {{ after = 5, within = \"1m\", for = \"10m\" }})"),
                );
            }
            x
        };
        let (after, within, duration) =
            (need(self, "after"), need(self, "within"), need(self, "for"));
        let after = self.integer(after?, &format!("{key}.after"), 1, 1_000_000)? as u32;
        let within = self.nonzero_duration(within?, &format!("{key}.within"))?;
        let duration = self.nonzero_duration(duration?, &format!("{key}.for"))?;
        for (d, k) in [(within, "within"), (duration, "for")] {
            if d > MAX_BAN {
                self.error(v, &format!("{key}.{k}"), "at most 10 years");
                return None;
            }
        }
        Some(crate::model::Ban { after, within, duration })
    }

    /// `fair_share`, `fair_share_above` (`"90%"`), `fair_share_exempt` (CIDR list),
    /// `pressure_idle_timeout`: TCP transports only (the slots it shares are connection slots).
    pub(super) fn fair_share(&mut self, t: &DeTable<'_>, path: &str, f: &mut Frontend) -> bool {
        let before = self.errors.len();
        let stream = !matches!(f.protocol, Protocol::Udp | Protocol::DirectoryUdp);
        for key in ["fair_share", "fair_share_above", "fair_share_exempt", "pressure_idle_timeout"]
        {
            if let Some(x) = t.get(key)
                && !stream
            {
                self.error(x, &format!("{path}.{key}"), "UDP has no connection slots to share");
            }
        }
        let fs = &mut f.fair_share;
        if let Some(x) = t.get("fair_share")
            && let Some(b) = self.boolean(x, &format!("{path}.fair_share"))
        {
            fs.enabled = b;
        }
        if let Some(x) = t.get("fair_share_above") {
            let key = format!("{path}.fair_share_above");
            if let Some(s) = self.string(x, &key) {
                match s.trim().strip_suffix('%').and_then(|n| n.trim().parse::<u8>().ok()) {
                    Some(n) if (1..=100).contains(&n) => f.fair_share.above_percent = n,
                    _ => self.error(
                        x,
                        &key,
                        format!("\"{s}\" is not a percentage from \"1%\" to \"100%\""),
                    ),
                }
            }
        }
        if let Some(x) = t.get("pressure_idle_timeout")
            && let Some(d) = self.nonzero_duration(x, &format!("{path}.pressure_idle_timeout"))
        {
            f.fair_share.pressure_idle_timeout = d;
        }
        if let Some(x) = t.get("fair_share_exempt") {
            let key = format!("{path}.fair_share_exempt");
            if let Some(nets) = self.net_list(x, &key) {
                f.fair_share.exempt = std::sync::Arc::new(fulcrum_core::acl::IpSet::new(&nets));
            }
        }
        // After `client_limits`: `max_clients = 0` leaves the fair share nothing to count.
        if stream
            && f.fair_share.enabled
            && f.limits.max_clients == 0
            && let Some(x) = t
                .get("limits")
                .and_then(|v| v.get_ref().as_table())
                .and_then(|l| l.get("max_clients"))
        {
            self.error(
                x,
                &format!("{path}.limits.max_clients"),
                "0 tracks no client, and the fair share counts what each address holds: \
                 set fair_share = false on the frontend too",
            );
        }
        self.errors.len() == before
    }

    /// A rate: `"20/s"` (burst: one second's worth) or `{ rate = "20/s", burst = 40 }`.
    fn rate(&mut self, v: Option<&Value<'_>>, path: &str, key: &str) -> Option<Rate> {
        let v = v?;
        let key = format!("{path}.{key}");
        let (text, burst) = match v.get_ref() {
            DeValue::String(s) => (s.to_string(), None),
            DeValue::Table(t) => {
                self.check_keys(t, &key, RATE_KEYS);
                let Some(r) = t.get("rate") else {
                    self.error(v, &key, "a rate table needs `rate` (e.g. \"20/s\")");
                    return None;
                };
                let text = self.string(r, &format!("{key}.rate"))?.to_string();
                let burst = match t.get("burst") {
                    Some(b) => Some(self.integer(b, &format!("{key}.burst"), 1, 1_000_000)? as u32),
                    None => None,
                };
                (text, burst)
            }
            other => {
                let found = other.type_str();
                self.error(
                    v,
                    &key,
                    format!("expected a rate like \"20/s\" or a table, found {found}"),
                );
                return None;
            }
        };
        match Rate::parse(&text, burst) {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(v, &key, e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::parse_str;

    fn config(protocol: &str, limits: &str) -> Result<crate::Config, Vec<String>> {
        let text = format!(
            "[frontend.f]\nbind = \"127.0.0.1:8080\"\nprotocol = \"{protocol}\"\npool = \"p\"\n\
             [frontend.f.limits]\n{limits}\n[pool.p]\nservers = [\"127.0.0.1:9001\"]\n"
        );
        parse_str(&text, "f.toml").map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn every_key_parses_with_its_defaults() {
        let c = config(
            "http",
            "conn_per_client = 10\nconn_rate_per_client = \"50/s\"\n\
             request_rate_per_client = { rate = \"600/m\", burst = 40 }\nipv6_prefix = 48\n\
             max_clients = 1000",
        )
        .unwrap();
        let l = &c.frontends[0].limits;
        assert_eq!(l.conn_per_client, Some(10));
        assert_eq!(l.conn_rate_per_client.unwrap().burst(), 50);
        let r = l.request_rate_per_client.unwrap();
        assert_eq!((r.burst(), r.per_second().round()), (40, 10.0));
        assert_eq!((l.ipv6_prefix, l.max_clients), (48, 1000));
        let c = config("udp", "datagram_rate_per_client = \"100/s\"").unwrap();
        let l = &c.frontends[0].limits;
        assert_eq!((l.ipv6_prefix, l.max_clients), (64, crate::DEFAULT_MAX_CLIENTS));
        assert!(l.datagram_rate_per_client.is_some() && l.conn_per_client.is_none());
    }

    #[test]
    fn keys_a_protocol_never_reads_and_bad_values_are_named() {
        let e = config("tcp", "request_rate_per_client = \"5/s\"").unwrap_err();
        assert!(e[0].contains("frontend.f.limits.request_rate_per_client"), "{e:?}");
        assert!(e[0].contains("only http and https"), "{e:?}");
        let e = config("udp", "conn_per_client = 3").unwrap_err();
        assert!(e[0].contains("max_sessions_per_source"), "{e:?}");
        let e = config("tcp", "datagram_rate_per_client = \"5/s\"").unwrap_err();
        assert!(e[0].contains("only udp"), "{e:?}");
        let e = config("tcp", "conn_rate_per_client = \"5/d\"").unwrap_err();
        assert!(e[0].contains("f.toml:6") && e[0].contains("is not a rate"), "{e:?}");
        let e = config("tcp", "conn_rate_per_client = { burst = 3 }").unwrap_err();
        assert!(e[0].contains("needs `rate`"), "{e:?}");
        let e = config("tcp", "conn_per_client = 0").unwrap_err();
        assert!(e[0].contains("out of range"), "{e:?}");
        let e = config("tcp", "max_clients = 8").unwrap_err();
        assert!(e[0].contains("0 to track no client"), "{e:?}");
        let e = config("tcp", "max_clients = 0").unwrap_err();
        assert!(e[0].contains("set fair_share = false"), "{e:?}");
        let e = config("http", "max_clients = 0\nrequest_rate_per_client = \"5/s\"").unwrap_err();
        assert!(e[0].contains("no per-client limit"), "{e:?}");
        assert_eq!(config("udp", "max_clients = 0").unwrap().frontends[0].limits.max_clients, 0);
        let e = config("tcp", "per_client = 3").unwrap_err();
        assert!(e[0].contains("unknown key"), "{e:?}");
    }

    fn frontend(protocol: &str, keys: &str) -> Result<crate::Config, Vec<String>> {
        let text = format!(
            "[frontend.f]\nbind = \"127.0.0.1:8080\"\nprotocol = \"{protocol}\"\npool = \"p\"\n\
             {keys}\n[pool.p]\nservers = [\"127.0.0.1:9001\"]\n"
        );
        parse_str(&text, "f.toml").map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn the_fair_share_is_on_by_default_and_its_keys_are_checked() {
        let fs = &frontend("tcp", "").unwrap().frontends[0].fair_share;
        assert!(fs.enabled && fs.above_percent == 90 && fs.exempt.is_empty());
        assert_eq!(fs.pressure_idle_timeout, crate::DEFAULT_PRESSURE_IDLE_TIMEOUT);
        let c = frontend(
            "http",
            "fair_share = false\nfair_share_above = \"75%\"\n\
             fair_share_exempt = [\"10.0.0.0/8\"]\npressure_idle_timeout = \"2s\"",
        )
        .unwrap();
        let fs = &c.frontends[0].fair_share;
        assert!(!fs.enabled && fs.above_percent == 75 && !fs.exempt.is_empty());
        assert_eq!(fs.pressure_idle_timeout, std::time::Duration::from_secs(2));
        let e = frontend("tcp", "fair_share_above = \"0%\"").unwrap_err();
        assert!(e[0].contains("frontend.f.fair_share_above") && e[0].contains("1%"), "{e:?}");
        let e = frontend("udp", "fair_share = true").unwrap_err();
        assert!(e[0].contains("UDP has no connection slots"), "{e:?}");
        let e = frontend("tcp", "pressure_idle_timeout = \"0s\"").unwrap_err();
        assert!(e[0].contains("greater than zero"), "{e:?}");
    }

    #[test]
    fn a_ban_needs_a_limit_to_count_and_all_three_keys() {
        let c = config(
            "http",
            "request_rate_per_client = \"5/s\"\n\
                               ban = { after = 5, within = \"1m\", for = \"10m\" }",
        )
        .unwrap();
        let ban = c.frontends[0].limits.ban.unwrap();
        assert_eq!(ban.after, 5);
        assert_eq!((ban.within.as_secs(), ban.duration.as_secs()), (60, 600));
        let e = config("tcp", "ban = { after = 5, within = \"1m\", for = \"10m\" }").unwrap_err();
        assert!(
            e[0].contains("frontend.f.limits.ban") && e[0].contains("counts refusals"),
            "{e:?}"
        );
        let e =
            config("tcp", "conn_per_client = 2\nban = { after = 5, within = \"1m\" }").unwrap_err();
        assert!(e[0].contains("needs `for`"), "{e:?}");
        let e = config(
            "tcp",
            "conn_per_client = 2\nban = { after = 0, within = \"1m\", for = \"1m\" }",
        )
        .unwrap_err();
        assert!(e[0].contains("ban.after"), "{e:?}");
        let e = config(
            "tcp",
            "conn_per_client = 2\nban = { after = 2, within = \"1m\", for = \"1m\", x = 1 }",
        )
        .unwrap_err();
        assert!(e[0].contains("unknown key"), "{e:?}");
    }
}
