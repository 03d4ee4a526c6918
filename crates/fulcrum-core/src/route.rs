//! HTTP request routing, the decision half: which of a frontend's routes a request takes (the
//! first whose every condition holds), which bytes of a request a pool's `hash` key hashes,
//! and which routes can never be taken because an earlier one catches all their requests.
//!
//! The route conditions come in as [`RouteSpec`]s. fulcrum-config builds them from its
//! `Route` model (`Route::spec`): dependencies point one way (core ← config), so this crate
//! defines the condition types and the config crate re-exports them. [`RouteTable::build`]
//! compiles the regexes and lower-cases the host patterns once; [`RouteTable::find`] then
//! allocates nothing per request (the regex engine keeps its scratch space in a per-thread
//! cache).
//!
//! Matching rules (docs/routing.md):
//! * host: exact (`api.example.com`) or wildcard (`*.example.com`: any subdomain at any depth,
//!   not the bare domain), ASCII case-insensitive, the request's `:port` and a trailing dot
//!   ignored; a request without a host matches no route that names hosts;
//! * path: `path_prefix` is a plain string prefix, `path_regex` an unanchored search, both on
//!   the path as sent (no query, no percent-decoding);
//! * method: exact, one of the listed tokens;
//! * header: the first value of the named header, equal to `value` or matched by
//!   `value_regex` (unanchored); an absent header matches nothing.

use std::borrow::Cow;
use std::fmt;

/// A request's headers as the caller keeps them: the first value of `name`, looked up
/// case-insensitively.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&[u8]>;
}

/// What routing reads of a request.
#[derive(Debug)]
pub struct RequestView<'a, H: Headers> {
    /// The `Host` header (or the authority of an absolute-form target), port included or not.
    pub host: Option<&'a str>,
    /// The request target in origin form: the path, with or without `?query`.
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a H,
}

/// A header condition of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub name: String,
    pub value: HeaderValueRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueRule {
    /// The first value equals this, byte for byte.
    Exact(String),
    /// The first value is matched by this regex (unanchored).
    Regex(String),
}

/// The conditions of one route; an empty list or `None` is no condition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteSpec {
    /// Exact names or `*.domain` wildcards; the route matches if any matches.
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    /// Method tokens; the route matches if any is the request's method.
    pub methods: Vec<String>,
    pub header: Option<HeaderRule>,
}

/// What a pool's hashing algorithm hashes (the pool's `hash` key).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client's address (the default, and the fallback of the others).
    #[default]
    Client,
    /// `header:NAME`: the first value of a request header.
    Header(String),
    /// `cookie:NAME`: the value of a cookie.
    Cookie(String),
    /// `path`: the request path without the query.
    Path,
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Client => f.write_str("client"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
            HashKey::Path => f.write_str("path"),
        }
    }
}

/// A frontend's routes, compiled for matching.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    hosts: Vec<HostPattern>,
    path_prefix: Option<String>,
    path_regex: Option<regex::Regex>,
    methods: Vec<String>,
    header: Option<(String, ValueMatch)>,
}

#[derive(Debug)]
enum HostPattern {
    /// Lower case.
    Exact(String),
    /// The domain after `*.`, lower case.
    Wildcard(String),
}

#[derive(Debug)]
enum ValueMatch {
    Exact(Vec<u8>),
    Regex(regex::bytes::Regex),
}

impl RouteTable {
    /// Compiles `routes` (in order). An invalid regex is an error naming the route and key,
    /// e.g. `route[2].path_regex: unclosed group`.
    pub fn build(routes: &[RouteSpec]) -> Result<RouteTable, String> {
        let mut out = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let path_regex = match &r.path_regex {
                Some(p) => Some(
                    regex::Regex::new(p)
                        .map_err(|e| format!("route[{i}].path_regex: {}", regex_reason(&e)))?,
                ),
                None => None,
            };
            let header = match &r.header {
                Some(h) => {
                    let m = match &h.value {
                        HeaderValueRule::Exact(v) => ValueMatch::Exact(v.as_bytes().to_vec()),
                        HeaderValueRule::Regex(p) => {
                            ValueMatch::Regex(regex::bytes::Regex::new(p).map_err(|e| {
                                format!("route[{i}].header.value_regex: {}", regex_reason(&e))
                            })?)
                        }
                    };
                    Some((h.name.clone(), m))
                }
                None => None,
            };
            let hosts = r
                .hosts
                .iter()
                .map(|h| {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix("*.") {
                        Some(domain) => HostPattern::Wildcard(domain.to_string()),
                        None => HostPattern::Exact(h),
                    }
                })
                .collect();
            out.push(Compiled {
                hosts,
                path_prefix: r.path_prefix.clone(),
                path_regex,
                methods: r.methods.clone(),
                header,
            });
        }
        Ok(RouteTable { routes: out })
    }

    /// The index of the first route matching `req`; `None`: the frontend's default pool.
    pub fn find<H: Headers>(&self, req: &RequestView<'_, H>) -> Option<usize> {
        let host = req.host.map(host_name);
        let path = path_only(req.path);
        self.routes.iter().position(|r| r.matches(host, path, req.method, req.headers))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Compiled {
    fn matches<H: Headers>(&self, host: Option<&str>, path: &str, method: &str, h: &H) -> bool {
        if !self.hosts.is_empty() {
            let Some(host) = host else { return false };
            if !self.hosts.iter().any(|p| p.matches(host)) {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix
            && !path.starts_with(p.as_str())
        {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if let Some((name, rule)) = &self.header {
            let Some(v) = h.get(name) else { return false };
            let ok = match rule {
                ValueMatch::Exact(x) => v == x.as_slice(),
                ValueMatch::Regex(re) => re.is_match(v),
            };
            if !ok {
                return false;
            }
        }
        // Last: the costliest test.
        match &self.path_regex {
            Some(re) => re.is_match(path),
            None => true,
        }
    }
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(x) => host.eq_ignore_ascii_case(x),
            HostPattern::Wildcard(domain) => is_subdomain(host, domain),
        }
    }
}

/// `host` is `something.domain` with a non-empty `something` (ASCII case-insensitive).
fn is_subdomain(host: &str, domain: &str) -> bool {
    let (h, d) = (host.as_bytes(), domain.as_bytes());
    h.len() > d.len() + 1
        && h[h.len() - d.len() - 1] == b'.'
        && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
}

/// The host name of a `Host` value: without `:port` and without a trailing dot. An IPv6
/// literal keeps its brackets (`[::1]:8080` → `[::1]`).
pub fn host_name(host: &str) -> &str {
    let host = host.trim();
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// The path of a request target, without `?query`.
pub fn path_only(target: &str) -> &str {
    match target.find('?') {
        Some(i) => &target[..i],
        None => target,
    }
}

/// A route's `strip_prefix` applied to a request target: `prefix` taken off the front of the
/// path when it ends there at a segment boundary (`/api` strips `/api` and `/api/x`, not
/// `/apis`: cutting a segment in two would invent a path), the query kept; a path left
/// without a leading `/` gets one (so an empty one becomes `/`).
pub fn strip_path<'a>(target: &'a str, prefix: &str) -> Cow<'a, str> {
    let path = path_only(target);
    match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(&target[prefix.len()..]),
        Some(rest) if rest.is_empty() || prefix.ends_with('/') => {
            Cow::Owned(format!("/{}", &target[prefix.len()..]))
        }
        _ => Cow::Borrowed(target),
    }
}

/// The `Location` of a `redirect = "https"` answer: the same host (port dropped) and target
/// over HTTPS.
pub fn https_location(host: &str, target: &str) -> String {
    format!("https://{}{}", host_name(host), target)
}

/// The bytes a pool's `hash` key hashes for `req`; `None` (also for an absent or empty
/// header or cookie) means: hash the client's address.
pub fn hash_input<'a, H: Headers>(key: &HashKey, req: &RequestView<'a, H>) -> Option<&'a [u8]> {
    let headers: &'a H = req.headers;
    let found = match key {
        HashKey::Client => None,
        HashKey::Header(name) => headers.get(name),
        HashKey::Cookie(name) => headers.get("cookie").and_then(|c| cookie_value(c, name)),
        HashKey::Path => return Some(path_only(req.path).as_bytes()),
    };
    found.filter(|v| !v.is_empty())
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), double quotes removed;
/// names are case-sensitive.
pub fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii() != name.as_bytes() {
            return None;
        }
        let v = pair[eq + 1..].trim_ascii();
        Some(v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v))
    })
}

/// Routes that can never be taken: `(later, earlier)` for each route whose every request an
/// earlier route already matches (the first such earlier route). Conservative: it only
/// reports what it can prove condition by condition (each condition of the earlier route is
/// absent or covers the later one's: hosts, a path prefix that is a prefix of the later's, the
/// same path regex, a superset of methods, the same header rule).
pub fn shadowed(routes: &[RouteSpec]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (later, l) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..later].iter().position(|e| covers(e, l)) {
            out.push((later, earlier));
        }
    }
    out
}

/// Every request `l` matches, `e` matches.
fn covers(e: &RouteSpec, l: &RouteSpec) -> bool {
    let hosts = e.hosts.is_empty()
        || (!l.hosts.is_empty()
            && l.hosts.iter().all(|lh| e.hosts.iter().any(|eh| host_covers(eh, lh))));
    let prefix = match (&e.path_prefix, &l.path_prefix) {
        (None, _) => true,
        (Some(ep), Some(lp)) => lp.starts_with(ep.as_str()),
        (Some(_), None) => false,
    };
    let regex = e.path_regex.is_none() || e.path_regex == l.path_regex;
    let methods = e.methods.is_empty()
        || (!l.methods.is_empty() && l.methods.iter().all(|m| e.methods.contains(m)));
    let header = match (&e.header, &l.header) {
        (None, _) => true,
        (Some(eh), Some(lh)) => eh.name.eq_ignore_ascii_case(&lh.name) && eh.value == lh.value,
        (Some(_), None) => false,
    };
    hosts && prefix && regex && methods && header
}

/// Every host `later` matches, `earlier` matches.
fn host_covers(earlier: &str, later: &str) -> bool {
    match (earlier.strip_prefix("*."), later.strip_prefix("*.")) {
        (None, None) => earlier.eq_ignore_ascii_case(later),
        (None, Some(_)) => false,
        (Some(ed), None) => is_subdomain(later, ed),
        (Some(ed), Some(ld)) => ed.eq_ignore_ascii_case(ld) || is_subdomain(ld, ed),
    }
}

/// The reason of a regex error, on one line (`unclosed group`).
pub fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or_else(|| s.lines().last().unwrap_or(s))
            .trim()
            .to_string(),
        regex::Error::CompiledTooBig(limit) => {
            format!("the compiled regex is larger than the limit of {limit} bytes")
        }
        other => other.to_string(),
    }
}

/// Whether `pattern` compiles; the one-line reason when not. `bytes`: as a header value
/// regex (which may match bytes that are not UTF-8).
pub fn check_regex(pattern: &str, bytes: bool) -> Result<(), String> {
    let r = if bytes {
        regex::bytes::Regex::new(pattern).map(drop)
    } else {
        regex::Regex::new(pattern).map(drop)
    };
    r.map_err(|e| regex_reason(&e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    struct H(Vec<(&'static str, &'static [u8])>);

    impl Headers for H {
        fn get(&self, name: &str) -> Option<&[u8]> {
            self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
        }
    }

    fn spec() -> RouteSpec {
        RouteSpec::default()
    }

    fn hosts(h: &[&str]) -> RouteSpec {
        RouteSpec { hosts: h.iter().map(|s| s.to_string()).collect(), ..spec() }
    }

    fn prefix(p: &str) -> RouteSpec {
        RouteSpec { path_prefix: Some(p.into()), ..spec() }
    }

    fn regex(p: &str) -> RouteSpec {
        RouteSpec { path_regex: Some(p.into()), ..spec() }
    }

    fn methods(m: &[&str]) -> RouteSpec {
        RouteSpec { methods: m.iter().map(|s| s.to_string()).collect(), ..spec() }
    }

    fn header(name: &str, value: HeaderValueRule) -> RouteSpec {
        RouteSpec { header: Some(HeaderRule { name: name.into(), value }), ..spec() }
    }

    fn exact(v: &str) -> HeaderValueRule {
        HeaderValueRule::Exact(v.into())
    }

    fn re(v: &str) -> HeaderValueRule {
        HeaderValueRule::Regex(v.into())
    }

    struct Req {
        host: Option<&'static str>,
        path: &'static str,
        method: &'static str,
        headers: H,
    }

    fn req(host: Option<&'static str>, path: &'static str) -> Req {
        Req { host, path, method: "GET", headers: H(Vec::new()) }
    }

    fn find(routes: &[RouteSpec], r: &Req) -> Option<usize> {
        let t = RouteTable::build(routes).unwrap();
        t.find(&RequestView { host: r.host, path: r.path, method: r.method, headers: &r.headers })
    }

    #[test]
    fn find_follows_every_condition() {
        let with = |m: &'static str, hs: Vec<(&'static str, &'static [u8])>| Req {
            host: Some("x"),
            path: "/",
            method: m,
            headers: H(hs),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<RouteSpec>, Req, Option<usize>)> = vec![
            ("exact host", vec![hosts(&["api.example.com"])], req(Some("api.example.com"), "/"), Some(0)),
            ("host case", vec![hosts(&["API.example.com"])], req(Some("api.EXAMPLE.com"), "/"), Some(0)),
            ("host port", vec![hosts(&["api.example.com"])], req(Some("api.example.com:8080"), "/"), Some(0)),
            ("host trailing dot", vec![hosts(&["api.example.com"])], req(Some("api.example.com."), "/"), Some(0)),
            ("other host", vec![hosts(&["api.example.com"])], req(Some("www.example.com"), "/"), None),
            ("no host", vec![hosts(&["api.example.com"])], req(None, "/"), None),
            ("host list", vec![hosts(&["a.com", "b.com"])], req(Some("b.com"), "/"), Some(0)),
            ("ipv6 host", vec![hosts(&["[::1]"])], req(Some("[::1]:8080"), "/"), Some(0)),
            ("wildcard", vec![hosts(&["*.example.com"])], req(Some("a.example.com"), "/"), Some(0)),
            ("wildcard deep", vec![hosts(&["*.example.com"])], req(Some("a.b.Example.com:81"), "/"), Some(0)),
            ("wildcard bare", vec![hosts(&["*.example.com"])], req(Some("example.com"), "/"), None),
            ("wildcard empty label", vec![hosts(&["*.example.com"])], req(Some(".example.com"), "/"), None),
            ("wildcard lookalike", vec![hosts(&["*.example.com"])], req(Some("badexample.com"), "/"), None),
            ("no host condition", vec![spec()], req(None, "/x"), Some(0)),
            ("prefix", vec![prefix("/api/")], req(None, "/api/users?x=1"), Some(0)),
            ("prefix is plain", vec![prefix("/api")], req(None, "/apis"), Some(0)),
            ("prefix miss", vec![prefix("/api/")], req(None, "/web/api/"), None),
            ("prefix not in query", vec![prefix("/a/b")], req(None, "/a?/b"), None),
            ("regex", vec![regex(r"^/users/\d+$")], req(None, "/users/42?full=1"), Some(0)),
            ("regex miss", vec![regex(r"^/users/\d+$")], req(None, "/users/me"), None),
            ("regex unanchored", vec![regex(r"\.php")], req(None, "/x/index.php"), Some(0)),
            ("method", vec![methods(&["GET", "HEAD"])], req(None, "/"), Some(0)),
            ("method miss", vec![methods(&["POST"])], req(None, "/"), None),
            ("method case", vec![methods(&["GET"])], with("get", vec![]), None),
            ("header exact", vec![header("X-Env", exact("canary"))], with("GET", vec![("x-env", b"canary")]), Some(0)),
            ("header exact miss", vec![header("X-Env", exact("canary"))], with("GET", vec![("x-env", b"Canary")]), None),
            ("header absent", vec![header("X-Env", exact(""))], with("GET", vec![]), None),
            ("header regex", vec![header("User-Agent", re("(?i)mobile"))], with("GET", vec![("user-agent", b"X Mobile Y")]), Some(0)),
            ("header regex miss", vec![header("User-Agent", re("^curl/"))], with("GET", vec![("user-agent", b"wget")]), None),
            ("header regex bytes", vec![header("X", re("a"))], with("GET", vec![("x", b"\xffa")]), Some(0)),
            ("first match wins", vec![prefix("/a"), prefix("/")], req(None, "/a/b"), Some(0)),
            ("order", vec![prefix("/b"), prefix("/a"), prefix("/")], req(None, "/a/b"), Some(1)),
            ("all conditions", vec![RouteSpec { methods: vec!["POST".into()], ..prefix("/a") }, prefix("/a")], req(None, "/a"), Some(1)),
            ("no routes", vec![], req(None, "/"), None),
        ];
        for (name, routes, r, want) in cases {
            assert_eq!(find(&routes, &r), want, "{name}");
        }
    }

    #[test]
    fn build_reports_bad_regexes_by_route() {
        let e = RouteTable::build(&[spec(), regex("(abc")]).unwrap_err();
        assert_eq!(e, "route[1].path_regex: unclosed group");
        let e = RouteTable::build(&[header("X", re("[z-a]"))]).unwrap_err();
        assert!(e.starts_with("route[0].header.value_regex: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(check_regex("a(", false), Err("unclosed group".into()));
        assert!(check_regex(r"^/v\d+/", false).is_ok());
        assert!(check_regex(r"(?-u)\xff", true).is_ok());
        assert!(check_regex(r"(?-u)\xff", false).is_err(), "a path is text");
    }

    #[test]
    fn host_names_lose_port_and_trailing_dot() {
        for (raw, want) in [
            ("a.com", "a.com"),
            ("a.com:80", "a.com"),
            ("a.com.:80", "a.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("a.com:x", "a.com:x"),
            (" a.com ", "a.com"),
        ] {
            assert_eq!(host_name(raw), want, "{raw}");
        }
    }

    #[test]
    fn strip_path_keeps_the_query_and_a_leading_slash() {
        for (target, prefix, want) in [
            ("/api/users?x=1", "/api", "/users?x=1"),
            ("/api/users", "/api/", "/users"),
            ("/api", "/api", "/"),
            ("/api?x=1", "/api", "/?x=1"),
            ("/apis", "/api", "/apis"),
            ("/apis?x", "/api", "/apis?x"),
            ("/web/x", "/api", "/web/x"),
            ("/x?/api", "/api", "/x?/api"),
        ] {
            assert_eq!(strip_path(target, prefix), want, "{target} - {prefix}");
        }
        assert!(matches!(strip_path("/api/x", "/api"), Cow::Borrowed(_)));
        assert_eq!(https_location("a.com:8080", "/x?y"), "https://a.com/x?y");
    }

    #[test]
    fn hash_input_picks_the_keyed_bytes() {
        let headers = H(vec![
            ("x-user", b"alice"),
            ("x-empty", b""),
            ("cookie", b"theme=dark; sid=\"abc\" ;  lang=en; sid=late"),
        ]);
        let view = RequestView { host: None, path: "/p/q?x=1", method: "GET", headers: &headers };
        #[rustfmt::skip]
        let cases: Vec<(HashKey, Option<&[u8]>)> = vec![
            (HashKey::Client, None),
            (HashKey::Header("X-User".into()), Some(b"alice")),
            (HashKey::Header("X-Missing".into()), None),
            (HashKey::Header("X-Empty".into()), None),
            (HashKey::Cookie("sid".into()), Some(b"abc")),
            (HashKey::Cookie("lang".into()), Some(b"en")),
            (HashKey::Cookie("theme".into()), Some(b"dark")),
            (HashKey::Cookie("SID".into()), None),
            (HashKey::Cookie("nope".into()), None),
            (HashKey::Path, Some(b"/p/q")),
        ];
        for (key, want) in cases {
            assert_eq!(hash_input(&key, &view), want, "{key}");
        }
        let none = H(Vec::new());
        let view = RequestView { host: None, path: "/", method: "GET", headers: &none };
        assert_eq!(hash_input(&HashKey::Cookie("sid".into()), &view), None);
        assert_eq!(cookie_value(b"a=; b=1", "a"), Some(&b""[..]));
        assert_eq!(cookie_value(b"junk; b=1", "b"), Some(&b"1"[..]));
    }

    #[test]
    fn shadowed_finds_routes_an_earlier_one_covers() {
        let both = |a: RouteSpec, b: RouteSpec| RouteSpec {
            hosts: if a.hosts.is_empty() { b.hosts } else { a.hosts },
            path_prefix: a.path_prefix.or(b.path_prefix),
            path_regex: a.path_regex.or(b.path_regex),
            methods: if a.methods.is_empty() { b.methods } else { a.methods },
            header: a.header.or(b.header),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, RouteSpec, RouteSpec, bool)> = vec![
            ("catch-all first", spec(), prefix("/a"), true),
            ("same", prefix("/a"), prefix("/a"), true),
            ("shorter prefix", prefix("/a"), prefix("/a/b"), true),
            ("longer prefix", prefix("/a/b"), prefix("/a"), false),
            ("prefix vs none", prefix("/a"), spec(), false),
            ("prefix vs regex", prefix("/a"), regex("^/a"), false),
            ("same regex", regex("^/a"), both(regex("^/a"), methods(&["GET"])), true),
            ("other regex", regex("^/a"), regex("^/a/"), false),
            ("exact host", hosts(&["a.com"]), hosts(&["A.com"]), true),
            ("other host", hosts(&["a.com"]), hosts(&["b.com"]), false),
            ("host vs any", hosts(&["a.com"]), spec(), false),
            ("host subset", hosts(&["a.com", "b.com"]), hosts(&["b.com"]), true),
            ("host superset", hosts(&["b.com"]), hosts(&["a.com", "b.com"]), false),
            ("wildcard covers exact", hosts(&["*.a.com"]), hosts(&["x.y.a.com"]), true),
            ("wildcard not bare", hosts(&["*.a.com"]), hosts(&["a.com"]), false),
            ("wildcard covers narrower", hosts(&["*.a.com"]), hosts(&["*.b.a.com"]), true),
            ("wildcard same", hosts(&["*.a.com"]), hosts(&["*.A.com"]), true),
            ("narrower not wider", hosts(&["*.b.a.com"]), hosts(&["*.a.com"]), false),
            ("exact not wildcard", hosts(&["x.a.com"]), hosts(&["*.a.com"]), false),
            ("methods superset", methods(&["GET", "POST"]), methods(&["POST"]), true),
            ("methods subset", methods(&["GET"]), methods(&["GET", "POST"]), false),
            ("methods vs any", methods(&["GET"]), spec(), false),
            ("same header", header("X-Env", exact("a")), header("x-env", exact("a")), true),
            ("other value", header("X-Env", exact("a")), header("X-Env", exact("b")), false),
            ("exact vs regex", header("X-Env", exact("a")), header("X-Env", re("a")), false),
            ("header vs none", header("X-Env", exact("a")), spec(), false),
            ("one condition short", both(prefix("/a"), methods(&["GET"])), prefix("/a/b"), false),
            ("all covered", both(prefix("/a"), hosts(&["*.a.com"])), both(prefix("/a/b"), both(hosts(&["w.a.com"]), methods(&["GET"]))), true),
        ];
        for (name, earlier, later, want) in cases {
            let got = shadowed(&[earlier, later]);
            assert_eq!(got, if want { vec![(1, 0)] } else { vec![] }, "{name}");
        }
        // The first earlier route is named, and every shadowed route is reported once.
        let routes = [prefix("/b"), prefix("/a"), spec(), prefix("/a/x"), prefix("/c")];
        assert_eq!(shadowed(&routes), vec![(3, 1), (4, 2)]);
        assert!(shadowed(&[]).is_empty());
    }
}
