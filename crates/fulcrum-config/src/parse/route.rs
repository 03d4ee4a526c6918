//! HTTP routing keys: a frontend's `[[frontend.NAME.route]]` entries (conditions: `host`,
//! `path_prefix`, `path_regex`, `method`, `header`; actions: `pool`, `strip_prefix`,
//! `set_headers`, `remove_headers`, `redirect`) and a pool's `hash` key. Regexes are compiled
//! here once to report them (fulcrum-core compiles them again for matching).
//!
//! Routes by SNI share the array: on a `tcp` frontend every route is one (`sni` and `pool`),
//! on an `https` frontend a route with `sni` and `passthrough = true` is one, and nothing
//! else may be in such a route.

use fulcrum_core::balance::Algorithm;
use fulcrum_core::route::check_regex;
use toml::de::{DeTable, DeValue};

use super::{Value, Walker};
use crate::model::*;

const ROUTE_KEYS: &[&str] = &[
    "host",
    "path_prefix",
    "path_regex",
    "method",
    "header",
    "pool",
    "strip_prefix",
    "set_headers",
    "remove_headers",
    "redirect",
    "sni",
    "passthrough",
];
/// The keys of a route by SNI: the connection is not read beyond its ClientHello.
const SNI_ROUTE_KEYS: &[&str] = &["sni", "passthrough", "pool"];
const HEADER_KEYS: &[&str] = &["name", "value", "value_regex"];
/// Headers that frame the message or manage the connection: the proxy owns them.
const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
const HASH_FORMS: &str = "\"client\", \"path\", \"header:NAME\", \"cookie:NAME\"";

impl Walker<'_> {
    /// The frontend's `route` array into `f.routes`; false when any route is invalid.
    pub(super) fn frontend_routes(
        &mut self,
        t: &DeTable<'_>,
        path: &str,
        c: &Config,
        f: &mut Frontend,
    ) -> bool {
        let Some(v) = t.get("route") else { return true };
        let key = format!("{path}.route");
        let routed = match f.protocol {
            Protocol::Http | Protocol::Https => true,
            Protocol::Tcp => f.mode == Mode::Proxy,
            Protocol::Udp | Protocol::Directory | Protocol::DirectoryUdp => false,
        };
        if !routed {
            self.error(
                v,
                &key,
                "only http and https frontends (by request) and tcp frontends in proxy mode \
                 (by the SNI of a TLS ClientHello) have routes",
            );
            return false;
        }
        let DeValue::Array(items) = v.get_ref() else {
            let found = v.get_ref().type_str();
            self.error(v, &key, format!("expected an array of tables ([[{key}]]), found {found}"));
            return false;
        };
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{key}[{i}]");
            let Some(rt) = self.table(item, &path) else {
                ok = false;
                continue;
            };
            // `passthrough = false` is an HTTP route that says so.
            let passthrough = rt.get("passthrough").map(|x| x.get_ref().as_bool() != Some(false));
            let by_sni = match f.protocol {
                Protocol::Tcp => true,
                Protocol::Https => rt.get("sni").is_some() || passthrough == Some(true),
                // An http frontend has no ClientHello: `route` refuses the keys.
                _ => false,
            };
            let r = if by_sni {
                self.sni_route(item, &path, c, f.protocol)
            } else {
                self.route(item, &path, c)
            };
            match r {
                Some(r) => f.routes.push(r),
                None => ok = false,
            }
        }
        ok
    }

    /// A route by SNI: `sni` (one name or a list) and `pool`, with `passthrough = true` on an
    /// `https` frontend. Every other key is an error naming it.
    fn sni_route(
        &mut self,
        v: &Value<'_>,
        path: &str,
        c: &Config,
        protocol: Protocol,
    ) -> Option<Route> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, ROUTE_KEYS);
        let errors = self.errors.len();
        let key = |k: &str| format!("{path}.{k}");
        let mut r = Route { line: self.position(v.span().start).0, ..Route::default() };
        let keys = match protocol {
            Protocol::Https => "`sni`, `passthrough = true` and `pool`",
            _ => "`sni` and `pool`",
        };
        for (k, x) in t.iter() {
            let k = k.get_ref().as_ref();
            if ROUTE_KEYS.contains(&k) && !SNI_ROUTE_KEYS.contains(&k) {
                self.error(
                    x,
                    &key(k),
                    format!(
                        "a route by SNI reads nothing but the ClientHello's server name: \
                         it has {keys} only"
                    ),
                );
            }
        }
        match (protocol, t.get("sni"), t.get("passthrough")) {
            (Protocol::Tcp, _, Some(x)) => self.error(
                x,
                &key("passthrough"),
                "a tcp frontend passes every connection through: leave `passthrough` out",
            ),
            (Protocol::Https, Some(_), None) => self.error(
                v,
                &key("passthrough"),
                "missing key: a route by `sni` on an https frontend passes its connections \
                 through untouched, so say so with passthrough = true (fulcrum's own \
                 certificates are chosen by SNI in [frontend.NAME.tls])",
            ),
            (Protocol::Https, _, Some(x)) => match self.boolean(x, &key("passthrough")) {
                Some(true) => r.passthrough = true,
                Some(false) => self.error(
                    x,
                    &key("passthrough"),
                    "a route by `sni` on an https frontend passes its connections through: \
                     it must be true (or route terminated requests by `host`)",
                ),
                None => {}
            },
            _ => {}
        }
        match t.get("sni") {
            Some(x) => {
                for (item, k, name) in self.one_or_many(x, &key("sni")) {
                    match fulcrum_core::sni::pattern(name) {
                        Ok(p) if !r.sni.contains(&p) => r.sni.push(p),
                        Ok(_) => {}
                        Err(e) => self.error(item, &k, e),
                    }
                }
            }
            None if protocol == Protocol::Https && r.passthrough => self.error(
                v,
                &key("sni"),
                "missing key: a passthrough route is chosen by the ClientHello's server name \
                 (sni = \"a.example.com\" or \"*.example.com\")",
            ),
            None if protocol == Protocol::Tcp => self.error(
                v,
                &key("sni"),
                "missing key: a tcp frontend routes a connection by the server name of its \
                 TLS ClientHello (sni = \"a.example.com\" or \"*.example.com\")",
            ),
            None => {}
        }
        match t.get("pool") {
            Some(x) => r.pool = self.route_pool(x, &key("pool"), c),
            None => self.error(
                v,
                &key("pool"),
                "missing key (the pool the connections with these names go to)",
            ),
        }
        (self.errors.len() == errors).then_some(r)
    }

    /// A route's `pool`: a defined pool's name.
    fn route_pool(&mut self, x: &Value<'_>, key: &str, c: &Config) -> Option<String> {
        let p = self.string(x, key)?;
        if c.pool(p).is_none() {
            self.error(x, key, format!("pool \"{p}\" is not defined (add a [pool.{p}] table)"));
            return None;
        }
        Some(p.to_string())
    }

    fn route(&mut self, v: &Value<'_>, path: &str, c: &Config) -> Option<Route> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, ROUTE_KEYS);
        let errors = self.errors.len();
        let key = |k: &str| format!("{path}.{k}");
        let mut r = Route { line: self.position(v.span().start).0, ..Route::default() };
        // An https frontend's routes by SNI went to `sni_route`: here they are misplaced.
        if let Some(x) = t.get("sni") {
            self.error(
                x,
                &key("sni"),
                "only tcp and https frontends read the SNI of a TLS ClientHello \
                 (an http frontend routes by `host`)",
            );
        }
        if let Some(x) = t.get("passthrough")
            && self.boolean(x, &key("passthrough")) == Some(true)
        {
            self.error(
                x,
                &key("passthrough"),
                "only an https frontend terminates TLS, so only it can pass connections \
                 through (by `sni`)",
            );
        }
        if let Some(x) = t.get("host") {
            for (item, k, h) in self.one_or_many(x, &key("host")) {
                match host_pattern(h) {
                    Ok(h) if !r.hosts.contains(&h) => r.hosts.push(h),
                    Ok(_) => {}
                    Err(e) => self.error(item, &k, e),
                }
            }
        }
        if let Some(x) = t.get("path_prefix") {
            r.path_prefix = self.path_prefix(x, &key("path_prefix"));
        }
        if let Some(x) = t.get("path_regex") {
            let k = key("path_regex");
            if let Some(p) = self.string(x, &k) {
                match check_regex(p, false) {
                    Ok(()) => r.path_regex = Some(p.to_string()),
                    Err(e) => self.error(x, &k, format!("invalid regex: {e}")),
                }
            }
        }
        if let Some(x) = t.get("method") {
            for (item, k, m) in self.one_or_many(x, &key("method")) {
                if !is_token(m) {
                    self.error(item, &k, format!("\"{m}\" is not a method (an HTTP token)"));
                } else if m.bytes().any(|b| b.is_ascii_lowercase()) {
                    let upper = m.to_ascii_uppercase();
                    self.error(item, &k, format!("methods are case-sensitive: write \"{upper}\""));
                } else if !r.methods.iter().any(|x| x == m) {
                    r.methods.push(m.to_string());
                }
            }
        }
        if let Some(x) = t.get("header") {
            r.header = self.header_rule(x, &key("header"));
        }
        if let Some(x) = t.get("redirect") {
            let k = key("redirect");
            match self.string(x, &k) {
                Some("https") => r.redirect_https = true,
                Some(other) => {
                    self.error(x, &k, format!("unknown redirect \"{other}\" (expected: \"https\")"))
                }
                None => {}
            }
        }
        if let Some(x) = t.get("pool") {
            r.pool = self.route_pool(x, &key("pool"), c);
        }
        if let Some(x) = t.get("strip_prefix") {
            let k = key("strip_prefix");
            match x.get_ref() {
                DeValue::Boolean(false) => {}
                DeValue::Boolean(true) => match &r.path_prefix {
                    Some(p) => r.strip_prefix = Some(p.clone()),
                    None if t.get("path_prefix").is_some() => {} // already reported
                    None => self.error(
                        x,
                        &k,
                        "true strips the route's path_prefix, and this route has none \
                         (give the prefix to strip as a string, e.g. \"/api\")",
                    ),
                },
                DeValue::String(_) => r.strip_prefix = self.path_prefix(x, &k),
                other => {
                    let found = other.type_str();
                    self.error(x, &k, format!("expected true, false or a path, found {found}"));
                }
            }
        }
        if let Some(x) = t.get("set_headers") {
            r.set_headers = self.set_headers(x, &key("set_headers"));
        }
        if let Some(x) = t.get("remove_headers") {
            r.remove_headers = self.remove_headers(x, &key("remove_headers"), &r.set_headers);
        }
        if t.get("redirect").is_some() {
            // A redirect answers the client itself: nothing is forwarded.
            for k in ["pool", "strip_prefix", "set_headers", "remove_headers"] {
                if let Some(x) = t.get(k) {
                    self.error(
                        x,
                        &key(k),
                        "a redirect route forwards nothing: remove this key or the redirect",
                    );
                }
            }
        } else if t.get("pool").is_none() {
            self.error(
                v,
                &key("pool"),
                "missing key (the pool matching requests go to, or redirect = \"https\")",
            );
        }
        (self.errors.len() == errors).then_some(r)
    }

    /// A string or a non-empty list of strings: each with its value and key (for errors).
    fn one_or_many<'v, 'a>(
        &mut self,
        v: &'v Value<'a>,
        key: &str,
    ) -> Vec<(&'v Value<'a>, String, &'v str)> {
        match v.get_ref() {
            DeValue::String(s) => vec![(v, key.to_string(), s.as_ref())],
            DeValue::Array(items) if items.is_empty() => {
                self.error(v, key, "must not be empty (leave the key out to match any)");
                Vec::new()
            }
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let k = format!("{key}[{i}]");
                    if let Some(s) = self.string(item, &k) {
                        out.push((item, k, s));
                    }
                }
                out
            }
            other => {
                let found = other.type_str();
                self.error(
                    v,
                    key,
                    format!("expected a string or a list of strings, found {found}"),
                );
                Vec::new()
            }
        }
    }

    fn path_prefix(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let p = self.string(v, key)?;
        if !p.starts_with('/')
            || p.chars().any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#')
        {
            self.error(
                v,
                key,
                "must start with '/' and contain no '?', '#', spaces or control characters",
            );
            return None;
        }
        Some(p.to_string())
    }

    fn header_rule(&mut self, v: &Value<'_>, path: &str) -> Option<HeaderRule> {
        let t = self.table(v, path)?;
        self.check_keys(t, path, HEADER_KEYS);
        let name = match t.get("name") {
            Some(x) => self.header_name(x, &format!("{path}.name"), false),
            None => {
                self.error(
                    v,
                    &format!("{path}.name"),
                    "missing key (the header's name, e.g. \"X-Env\")",
                );
                None
            }
        };
        let value = match (t.get("value"), t.get("value_regex")) {
            (Some(_), Some(x)) => {
                self.error(
                    x,
                    &format!("{path}.value_regex"),
                    "give value or value_regex, not both",
                );
                None
            }
            (Some(x), None) => {
                let k = format!("{path}.value");
                self.header_value(x, &k).map(HeaderValueRule::Exact)
            }
            (None, Some(x)) => {
                let k = format!("{path}.value_regex");
                let p = self.string(x, &k)?;
                match check_regex(p, true) {
                    Ok(()) => Some(HeaderValueRule::Regex(p.to_string())),
                    Err(e) => {
                        self.error(x, &k, format!("invalid regex: {e}"));
                        None
                    }
                }
            }
            (None, None) => {
                self.error(
                    v,
                    &format!("{path}.value"),
                    "missing key (value = exact value, or value_regex = a regex)",
                );
                None
            }
        };
        Some(HeaderRule { name: name?, value: value? })
    }

    /// A header name (an HTTP token); `managed`: refuse the headers the proxy owns.
    fn header_name(&mut self, v: &Value<'_>, key: &str, managed: bool) -> Option<String> {
        let n = self.string(v, key)?;
        self.check_header_name(v, key, n, managed).then(|| n.to_string())
    }

    fn check_header_name(&mut self, v: &Value<'_>, key: &str, n: &str, managed: bool) -> bool {
        if !is_token(n) {
            self.error(v, key, format!("\"{n}\" is not a header name (an HTTP token)"));
            return false;
        }
        if managed && MANAGED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            self.error(
                v,
                key,
                format!(
                    "{n} frames the message or manages the connection: the proxy sets it, \
                     routes may not"
                ),
            );
            return false;
        }
        true
    }

    fn header_value(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if !s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80) {
            self.error(
                v,
                key,
                "is not a valid header value (no line breaks or control characters)",
            );
            return None;
        }
        Some(s.to_string())
    }

    fn set_headers(&mut self, v: &Value<'_>, path: &str) -> Vec<(String, String)> {
        let Some(t) = self.table(v, path) else { return Vec::new() };
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, x) in t.iter() {
            let n = name.get_ref().as_ref();
            let key = format!("{path}.{n}");
            if !self.check_header_name(x, &key, n, true) {
                continue;
            }
            if out.iter().any(|(o, _)| o.eq_ignore_ascii_case(n)) {
                self.error(x, &key, "set twice (header names are case-insensitive)");
                continue;
            }
            if let Some(value) = self.header_value(x, &key) {
                out.push((n.to_string(), value));
            }
        }
        out
    }

    fn remove_headers(
        &mut self,
        v: &Value<'_>,
        path: &str,
        set: &[(String, String)],
    ) -> Vec<String> {
        let DeValue::Array(items) = v.get_ref() else {
            let found = v.get_ref().type_str();
            self.error(v, path, format!("expected a list of header names, found {found}"));
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{path}[{i}]");
            let Some(n) = self.header_name(item, &key, true) else { continue };
            if set.iter().any(|(s, _)| s.eq_ignore_ascii_case(&n)) {
                self.error(item, &key, format!("{n} is also in set_headers: set it or remove it"));
            } else if !out.iter().any(|o| o.eq_ignore_ascii_case(&n)) {
                out.push(n);
            }
        }
        out
    }

    /// The pool's `hash` key into `pool.hash`.
    pub(super) fn pool_hash(&mut self, t: &DeTable<'_>, path: &str, pool: &mut Pool) {
        let Some(v) = t.get("hash") else { return };
        let key = format!("{path}.hash");
        let Some(s) = self.string(v, &key) else { return };
        let parsed = match s.split_once(':') {
            None if s == "client" => Ok(HashKey::Client),
            None if s == "path" => Ok(HashKey::Path),
            Some((kind @ ("header" | "cookie"), name)) if is_token(name) => Ok(match kind {
                "header" => HashKey::Header(name.to_string()),
                _ => HashKey::Cookie(name.to_string()),
            }),
            Some(("header" | "cookie", name)) => {
                Err(format!("\"{name}\" is not a header or cookie name (an HTTP token)"))
            }
            _ => Err(format!("unknown hash key \"{s}\" (expected: {HASH_FORMS})")),
        };
        let hashing = [Algorithm::SourceHash, Algorithm::Maglev, Algorithm::RingHash];
        // An invalid algorithm is reported already: no second error for it.
        let algorithm_known = t
            .get("algorithm")
            .is_none_or(|a| a.get_ref().as_str().is_some_and(|s| s.parse::<Algorithm>().is_ok()));
        match parsed {
            Err(e) => self.error(v, &key, e),
            Ok(_) if algorithm_known && !hashing.contains(&pool.algorithm) => self.error(
                v,
                &key,
                format!(
                    "only the hashing algorithms read it (source-hash, maglev, ring-hash), \
                     and this pool uses {}",
                    pool.algorithm
                ),
            ),
            Ok(h) => pool.hash = h,
        }
    }
}

/// An HTTP token (RFC 9110 `tchar`s), non-empty.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A `host` entry: an exact name, `*.domain`, or an IP address (IPv6 in brackets), lower case.
fn host_pattern(h: &str) -> Result<String, String> {
    let lower = h.to_ascii_lowercase();
    if lower == "*" {
        return Err("\"*\" is not a host: leave `host` out to match every host".into());
    }
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        if name.len() == lower.len() && inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(lower);
        }
        return Err(format!("\"{h}\" is not a host name or an IPv6 address in brackets"));
    }
    if name.contains('*') {
        return Err(format!(
            "\"{h}\": a wildcard is only allowed as the whole first label, as in \"*.example.com\""
        ));
    }
    if name.contains(':') {
        return Err(format!(
            "\"{h}\": give the host without a port (the request's port is ignored)"
        ));
    }
    let chars_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !chars_ok || name.split('.').any(str::is_empty) {
        return Err(format!(
            "\"{h}\" is not a host name (letters, digits, '-' and '_' in dot-separated labels, \
             optionally \"*.\" in front)"
        ));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests;
