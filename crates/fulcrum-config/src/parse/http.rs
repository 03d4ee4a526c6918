//! The HTTP keys: a `protocol = "http"` frontend's limits, timeouts and forwarding headers
//! (they sit in `[frontend.NAME]` itself), and a pool's `[pool.NAME.http]` table with
//! `retry_budget` and `sticky`.

use toml::de::{DeTable, DeValue};

use super::{Value, Walker};
use crate::model::*;

/// The keys of `[frontend.NAME]` that only an HTTP frontend reads.
pub(super) const HTTP_FRONTEND_KEYS: &[&str] = &[
    "header_timeout",
    "max_header_bytes",
    "max_headers",
    "max_body",
    "min_body_rate",
    "keepalive_timeout",
    "trusted_proxies",
    "forwarded",
];
const POOL_HTTP_KEYS: &[&str] = &["version", "max_idle", "idle_timeout", "response_timeout"];
const STICKY_KEYS: &[&str] = &["cookie", "ttl"];

/// Most bytes a request head may be allowed (hyper's read buffer holds the whole head).
const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Smallest head limit: hyper's HTTP/1 read buffer cannot be smaller.
const MIN_HEADER_BYTES: u64 = 8192;

impl Walker<'_> {
    /// Reads the HTTP keys of a frontend into `f.http`; false when one is set on a frontend
    /// that is not HTTP, or badly.
    pub(super) fn http_frontend(&mut self, t: &DeTable<'_>, path: &str, f: &mut Frontend) -> bool {
        let mut ok = true;
        if !f.protocol.is_http() {
            for key in HTTP_FRONTEND_KEYS {
                if let Some(x) = t.get(*key) {
                    self.error(
                        x,
                        &format!("{path}.{key}"),
                        "only a protocol = \"http\" frontend reads it",
                    );
                    ok = false;
                }
            }
            return ok;
        }
        let h = &mut f.http;
        if let Some(x) = t.get("header_timeout") {
            match self.nonzero_duration(x, &format!("{path}.header_timeout")) {
                Some(d) => h.header_timeout = d,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("keepalive_timeout") {
            match self.nonzero_duration(x, &format!("{path}.keepalive_timeout")) {
                Some(d) => h.keepalive_timeout = d,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("max_header_bytes") {
            match self.size(
                x,
                &format!("{path}.max_header_bytes"),
                MIN_HEADER_BYTES,
                MAX_HEADER_BYTES,
            ) {
                Some(n) => h.max_header_bytes = n as usize,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("max_headers") {
            match self.integer(x, &format!("{path}.max_headers"), 1, 10_000) {
                Some(n) => h.max_headers = n as usize,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("max_body") {
            match self.size(x, &format!("{path}.max_body"), 0, u64::MAX / 2) {
                Some(n) => h.max_body = Some(n),
                None => ok = false,
            }
        }
        if let Some(x) = t.get("min_body_rate") {
            let key = format!("{path}.min_body_rate");
            let rate = self.string(x, &key).map(|s| {
                s.trim()
                    .strip_suffix("/s")
                    .ok_or(())
                    .and_then(|n| parse_size(n).map_err(|_| ()))
                    .map_err(|()| {
                        format!("\"{s}\" is not a byte rate (e.g. \"1KiB/s\", \"500/s\")")
                    })
            });
            match rate {
                Some(Ok(n)) if n > 0 => h.min_body_rate = Some(n),
                Some(Ok(_)) => {
                    self.error(x, &key, "must be more than 0 bytes a second");
                    ok = false;
                }
                Some(Err(e)) => {
                    self.error(x, &key, e);
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(x) = t.get("forwarded") {
            match self.boolean(x, &format!("{path}.forwarded")) {
                Some(b) => h.forwarded = b,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("trusted_proxies") {
            let key = format!("{path}.trusted_proxies");
            match x.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let ikey = format!("{key}[{i}]");
                        let Some(s) = self.string(item, &ikey) else {
                            ok = false;
                            continue;
                        };
                        match parse_net(s) {
                            Ok(n) => f.http.trusted_proxies.push(n),
                            Err(e) => {
                                self.error(item, &ikey, e);
                                ok = false;
                            }
                        }
                    }
                }
                other => {
                    let m = format!(
                        "expected a list of addresses or CIDR ranges, found {}",
                        other.type_str()
                    );
                    self.error(x, &key, m);
                    ok = false;
                }
            }
        }
        ok
    }

    /// `accept_proxy` of a frontend (TCP proxy, `http`, `https`), and the check that a udp
    /// frontend's pool sends PROXY headers only where a datagram can carry one.
    pub(super) fn proxy_protocol(
        &mut self,
        t: &DeTable<'_>,
        path: &str,
        f: &mut Frontend,
        c: &Config,
    ) -> bool {
        let mut ok = true;
        if let Some(x) = t.get("accept_proxy") {
            let key = format!("{path}.accept_proxy");
            let fits =
                f.protocol.is_http() || (f.protocol == Protocol::Tcp && f.mode == Mode::Proxy);
            if !fits {
                self.error(
                    x,
                    &key,
                    "only tcp (proxy mode), http and https frontends read a PROXY header",
                );
                ok = false;
            }
            match x.get_ref() {
                DeValue::Array(items) if !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        let ikey = format!("{key}[{i}]");
                        match self.string(item, &ikey).map(parse_net) {
                            Some(Ok(n)) => f.accept_proxy.push(n),
                            Some(Err(e)) => {
                                self.error(item, &ikey, e);
                                ok = false;
                            }
                            None => ok = false,
                        }
                    }
                }
                _ => {
                    self.error(x, &key, "expected a non-empty list of addresses or CIDR ranges");
                    ok = false;
                }
            }
        }
        if f.protocol == Protocol::Udp
            && let Some(p) = c.pool(&f.pool)
            && let Some(v) = p.send_proxy
        {
            // Sessions have one client each, whose header every datagram carries; v1 is
            // text for TCP only.
            let why = if f.mode != Mode::Proxy || !f.sessions {
                Some("a udp frontend sends a PROXY header only in proxy mode with sessions")
            } else if v == ProxyVersion::V1 {
                Some("a udp frontend sends PROXY v2 only (v1 has no UDP form)")
            } else {
                None
            };
            if let Some(why) = why {
                if let Some(x) = t.get("pool") {
                    self.error(x, &format!("{path}.pool"), format!("pool \"{}\": {why}", p.name));
                }
                ok = false;
            }
        }
        ok
    }

    /// `[pool.NAME.http]`, `retry_budget` and `sticky`.
    pub(super) fn pool_http(&mut self, t: &DeTable<'_>, path: &str, pool: &mut Pool) {
        if let Some(v) = t.get("http") {
            let hpath = format!("{path}.http");
            if let Some(ht) = self.table(v, &hpath) {
                self.check_keys(ht, &hpath, POOL_HTTP_KEYS);
                let h = &mut pool.http;
                if let Some(x) = ht.get("version") {
                    let choices = [("h1", HttpVersion::H1), ("h2", HttpVersion::H2)];
                    let key = format!("{hpath}.version");
                    if let Some(v) = self.word(x, &key, "version", &choices) {
                        h.version = v;
                    }
                }
                if let Some(x) = ht.get("max_idle") {
                    if let Some(n) = self.integer(x, &format!("{hpath}.max_idle"), 0, 100_000) {
                        h.max_idle = n as usize;
                    }
                }
                if let Some(x) = ht.get("idle_timeout") {
                    if let Some(d) = self.nonzero_duration(x, &format!("{hpath}.idle_timeout")) {
                        h.idle_timeout = d;
                    }
                }
                if let Some(x) = ht.get("response_timeout") {
                    if let Some(d) = self.nonzero_duration(x, &format!("{hpath}.response_timeout"))
                    {
                        h.response_timeout = d;
                    }
                }
            }
        }
        if let Some(x) = t.get("send_proxy") {
            let choices = [("v1", ProxyVersion::V1), ("v2", ProxyVersion::V2)];
            let key = format!("{path}.send_proxy");
            if let Some(v) = self.word(x, &key, "version", &choices) {
                pool.send_proxy = Some(v);
            }
        }
        if let Some(x) = t.get("retry_budget") {
            let key = format!("{path}.retry_budget");
            if let Some(s) = self.string(x, &key) {
                match s.strip_suffix('%').map(str::trim).map(str::parse::<u32>) {
                    Some(Ok(n)) if n <= 1000 => pool.retry_budget_percent = n,
                    _ => self.error(
                        x,
                        &key,
                        format!("\"{s}\" is not a percentage from \"0%\" to \"1000%\""),
                    ),
                }
            }
        }
        if let Some(x) = t.get("sticky") {
            let spath = format!("{path}.sticky");
            if let Some(st) = self.table(x, &spath) {
                self.check_keys(st, &spath, STICKY_KEYS);
                let cookie = match st.get("cookie") {
                    Some(cv) => {
                        let key = format!("{spath}.cookie");
                        match self.string(cv, &key) {
                            Some(c) if is_token(c) => Some(c.to_string()),
                            Some(c) => {
                                self.error(cv, &key, format!("\"{c}\" is not a valid cookie name"));
                                None
                            }
                            None => None,
                        }
                    }
                    None => {
                        self.error(
                            x,
                            &format!("{spath}.cookie"),
                            "missing key (the cookie's name)",
                        );
                        None
                    }
                };
                let ttl = match st.get("ttl") {
                    Some(tv) => self.nonzero_duration(tv, &format!("{spath}.ttl")),
                    None => Some(std::time::Duration::from_secs(3600)),
                };
                if let (Some(cookie), Some(ttl)) = (cookie, ttl) {
                    pool.sticky = Some(Sticky { cookie, ttl });
                }
            }
        }
    }

    /// A byte count: an integer, or a string with a unit (`"64KiB"`, `"10MB"`, `"512"`).
    pub(super) fn size(&mut self, v: &Value<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let n = match v.get_ref() {
            DeValue::Integer(_) => return self.integer(v, key, min, max),
            DeValue::String(s) => match parse_size(s) {
                Ok(n) => n,
                Err(e) => {
                    self.error(v, key, e);
                    return None;
                }
            },
            other => {
                let m = format!("expected a size such as \"64KiB\", found {}", other.type_str());
                self.error(v, key, m);
                return None;
            }
        };
        if n < min || n > max {
            self.error(v, key, format!("{n} bytes is out of range ({min}-{max})"));
            return None;
        }
        Some(n)
    }
}

/// `"64KiB"`, `"1MiB"`, `"10MB"`, `"512"`, `"2k"` → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("\"{s}\" is not a size (e.g. \"64KiB\", \"10MB\", \"512\")");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// An address (`10.0.0.1`, `::1`) or a CIDR range (`10.0.0.0/8`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("\"{s}\" is not an address or CIDR range (e.g. \"10.0.0.0/8\")"))
}

/// An HTTP token (RFC 9110 `tchar`s), as cookie and header names must be.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn min_body_rate_is_a_byte_rate() {
        let text = |v: &str| {
            format!(
                "[frontend.f]\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"p\"\n\
                 min_body_rate = {v}\n[pool.p]\nservers = [\"127.0.0.1:9001\"]\n"
            )
        };
        let c = crate::parse_str(&text("\"1KiB/s\""), "f.toml").unwrap();
        assert_eq!(c.frontends[0].http.min_body_rate, Some(1024));
        for bad in ["\"1KiB\"", "\"0/s\"", "\"fast/s\"", "5"] {
            let e = crate::parse_str(&text(bad), "f.toml").unwrap_err();
            assert!(e.0[0].to_string().contains("min_body_rate"), "{bad}: {}", e.0[0]);
        }
        let c = crate::parse_str(&text("\"1KiB/s\"").replace("http", "tcp"), "f.toml");
        assert!(c.is_err(), "an http key on a tcp frontend");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1 mib"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
