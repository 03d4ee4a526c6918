#![allow(clippy::unwrap_used)]

use crate::model::*;
use crate::parse::parse_str;

/// A frontend `web` (default pool `app`) with `routes` after its keys, and pools `app` and
/// `api`; `pool_extra` goes into `[pool.api]`. The routes start on line 5.
fn config(routes: &str, pool_extra: &str) -> String {
    format!(
        "[frontend.web]\nbind = \"9000\"\nprotocol = \"http\"\npool = \"app\"\n{routes}\n\
         [pool.app]\nservers = []\n[pool.api]\nservers = []\n{pool_extra}\n"
    )
}

fn routes(text: &str) -> Vec<Route> {
    match parse_str(&config(text, ""), "f.toml") {
        Ok(c) => c.frontends[0].routes.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn errors(routes: &str, pool_extra: &str) -> Vec<String> {
    match parse_str(&config(routes, pool_extra), "f.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_route_key_parses() {
    let r = routes(
        r#"[[frontend.web.route]]
host = ["API.example.com", "*.api.example.com", "[::1]", "10.0.0.1"]
path_prefix = "/v1"
path_regex = '^/v1/users/\d+'
method = ["GET", "HEAD"]
header = { name = "X-Env", value = "canary" }
pool = "api"
strip_prefix = true
set_headers = { "X-A" = "1", "Host" = "internal" }
remove_headers = ["X-B", "Cookie"]

[[frontend.web.route]]
host = "www.example.com"
method = "POST"
header = { name = "User-Agent", value_regex = "(?i)mobile" }
path_prefix = "/m"
strip_prefix = "/m/x"
pool = "app"

[[frontend.web.route]]
redirect = "https"
"#,
    );
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[0],
        Route {
            hosts: vec![
                "api.example.com".into(),
                "*.api.example.com".into(),
                "[::1]".into(),
                "10.0.0.1".into()
            ],
            path_prefix: Some("/v1".into()),
            path_regex: Some(r"^/v1/users/\d+".into()),
            methods: vec!["GET".into(), "HEAD".into()],
            header: Some(HeaderRule {
                name: "X-Env".into(),
                value: HeaderValueRule::Exact("canary".into())
            }),
            pool: Some("api".into()),
            strip_prefix: Some("/v1".into()),
            set_headers: vec![("X-A".into(), "1".into()), ("Host".into(), "internal".into())],
            remove_headers: vec!["X-B".into(), "Cookie".into()],
            redirect_https: false,
            sni: Vec::new(),
            passthrough: false,
            line: 5,
        }
    );
    assert_eq!(r[1].hosts, ["www.example.com"]);
    assert_eq!(r[1].methods, ["POST"]);
    assert_eq!(r[1].header.as_ref().unwrap().value, HeaderValueRule::Regex("(?i)mobile".into()));
    assert_eq!(r[1].strip_prefix.as_deref(), Some("/m/x"));
    assert_eq!(r[1].line, 16);
    assert!(r[2].redirect_https && r[2].pool.is_none());
    assert_eq!(r[2].line, 24);
    assert_eq!((r[2].hosts.len(), r[2].methods.len()), (0, 0));
}

#[test]
fn routes_default_to_none_and_inline_arrays_work() {
    let c = parse_str(&config("", ""), "f.toml").unwrap();
    assert!(c.frontends[0].routes.is_empty());
    let r = routes("route = [{ path_prefix = \"/a\", pool = \"api\", strip_prefix = false }]");
    assert_eq!((r[0].path_prefix.as_deref(), r[0].strip_prefix.as_deref()), (Some("/a"), None));
    assert_eq!(r[0].line, 5);
}

#[test]
fn route_errors_name_file_key_and_reason() {
    let r = "[[frontend.web.route]]\n";
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("colour = 1\npool = \"api\"", "f.toml:6:1: frontend.web.route[0].colour: unknown key (expected one of: host, path_prefix"),
        ("path_prefix = \"/a\"", "f.toml:5:1: frontend.web.route[0].pool: missing key (the pool matching requests go to, or redirect = \"https\")"),
        ("pool = \"nope\"", "f.toml:6:8: frontend.web.route[0].pool: pool \"nope\" is not defined (add a [pool.nope] table)"),
        ("pool = 3", "f.toml:6:8: frontend.web.route[0].pool: expected a string, found integer"),
        ("pool = \"api\"\npath_regex = \"(abc\"", "f.toml:7:14: frontend.web.route[0].path_regex: invalid regex: unclosed group"),
        ("pool = \"api\"\npath_prefix = \"api\"", "frontend.web.route[0].path_prefix: must start with '/'"),
        ("pool = \"api\"\npath_prefix = \"/a?b\"", "frontend.web.route[0].path_prefix: must start with '/' and contain no '?'"),
        ("pool = \"api\"\nhost = []", "f.toml:7:8: frontend.web.route[0].host: must not be empty"),
        ("pool = \"api\"\nhost = 5", "frontend.web.route[0].host: expected a string or a list of strings, found integer"),
        ("pool = \"api\"\nhost = [\"a.com\", 5]", "f.toml:7:18: frontend.web.route[0].host[1]: expected a string, found integer"),
        ("pool = \"api\"\nhost = \"*\"", "frontend.web.route[0].host: \"*\" is not a host: leave `host` out"),
        ("pool = \"api\"\nhost = \"a.*.com\"", "frontend.web.route[0].host: \"a.*.com\": a wildcard is only allowed as the whole first label"),
        ("pool = \"api\"\nhost = \"a.com:80\"", "frontend.web.route[0].host: \"a.com:80\": give the host without a port"),
        ("pool = \"api\"\nhost = [\"a..com\"]", "frontend.web.route[0].host[0]: \"a..com\" is not a host name"),
        ("pool = \"api\"\nhost = \"a b\"", "frontend.web.route[0].host: \"a b\" is not a host name"),
        ("pool = \"api\"\nhost = \"[nope]\"", "frontend.web.route[0].host: \"[nope]\" is not a host name or an IPv6 address"),
        ("pool = \"api\"\nmethod = \"get\"", "frontend.web.route[0].method: methods are case-sensitive: write \"GET\""),
        ("pool = \"api\"\nmethod = [\"GET\", \"PO ST\"]", "frontend.web.route[0].method[1]: \"PO ST\" is not a method (an HTTP token)"),
        ("pool = \"api\"\nheader = \"X-Env\"", "frontend.web.route[0].header: expected a table, found string"),
        ("pool = \"api\"\nheader = { value = \"a\" }", "frontend.web.route[0].header.name: missing key (the header's name"),
        ("pool = \"api\"\nheader = { name = \"X Env\", value = \"a\" }", "frontend.web.route[0].header.name: \"X Env\" is not a header name (an HTTP token)"),
        ("pool = \"api\"\nheader = { name = \"X\" }", "frontend.web.route[0].header.value: missing key (value = exact value, or value_regex = a regex)"),
        ("pool = \"api\"\nheader = { name = \"X\", value = \"a\", value_regex = \"a\" }", "frontend.web.route[0].header.value_regex: give value or value_regex, not both"),
        ("pool = \"api\"\nheader = { name = \"X\", value_regex = \"[z-a]\" }", "frontend.web.route[0].header.value_regex: invalid regex: "),
        ("pool = \"api\"\nheader = { name = \"X\", value = \"a\\nb\" }", "frontend.web.route[0].header.value: is not a valid header value"),
        ("pool = \"api\"\nheader = { name = \"X\", valu = \"a\" }", "frontend.web.route[0].header.valu: unknown key (expected one of: name, value, value_regex)"),
        ("pool = \"api\"\nstrip_prefix = true", "f.toml:7:16: frontend.web.route[0].strip_prefix: true strips the route's path_prefix, and this route has none"),
        ("pool = \"api\"\nstrip_prefix = \"x\"", "frontend.web.route[0].strip_prefix: must start with '/'"),
        ("pool = \"api\"\nstrip_prefix = 1", "frontend.web.route[0].strip_prefix: expected true, false or a path, found integer"),
        ("pool = \"api\"\nset_headers = { \"X A\" = \"1\" }", "frontend.web.route[0].set_headers.X A: \"X A\" is not a header name"),
        ("pool = \"api\"\nset_headers = { \"X-A\" = \"1\\r\\n\" }", "frontend.web.route[0].set_headers.X-A: is not a valid header value"),
        ("pool = \"api\"\nset_headers = { \"X-A\" = 1 }", "frontend.web.route[0].set_headers.X-A: expected a string, found integer"),
        ("pool = \"api\"\nset_headers = { \"X-A\" = \"1\", \"x-a\" = \"2\" }", "frontend.web.route[0].set_headers.x-a: set twice (header names are case-insensitive)"),
        ("pool = \"api\"\nset_headers = { \"Content-Length\" = \"1\" }", "frontend.web.route[0].set_headers.Content-Length: Content-Length frames the message or manages the connection"),
        ("pool = \"api\"\nset_headers = [\"X\"]", "frontend.web.route[0].set_headers: expected a table, found array"),
        ("pool = \"api\"\nremove_headers = \"X-B\"", "frontend.web.route[0].remove_headers: expected a list of header names, found string"),
        ("pool = \"api\"\nremove_headers = [\"X-B\", \"X:B\"]", "frontend.web.route[0].remove_headers[1]: \"X:B\" is not a header name"),
        ("pool = \"api\"\nremove_headers = [\"transfer-encoding\"]", "frontend.web.route[0].remove_headers[0]: transfer-encoding frames the message"),
        ("pool = \"api\"\nset_headers = { \"X-A\" = \"1\" }\nremove_headers = [\"x-a\"]", "frontend.web.route[0].remove_headers[0]: x-a is also in set_headers"),
        ("redirect = \"http\"", "f.toml:6:12: frontend.web.route[0].redirect: unknown redirect \"http\" (expected: \"https\")"),
        ("redirect = \"https\"\npool = \"api\"", "f.toml:7:8: frontend.web.route[0].pool: a redirect route forwards nothing: remove this key or the redirect"),
        ("redirect = \"https\"\nset_headers = { \"X-A\" = \"1\" }", "frontend.web.route[0].set_headers: a redirect route forwards nothing"),
    ];
    for (body, want) in cases {
        let errs = errors(&format!("{r}{body}\n"), "");
        assert!(
            errs.iter()
                .any(|e| e.starts_with(want) || (e.starts_with("f.toml:") && e.contains(want))),
            "{body}\nwant {want}\ngot {errs:#?}"
        );
    }
    let errs = errors("route = { pool = \"api\" }", "");
    assert_eq!(
        errs,
        [
            "f.toml:5:9: frontend.web.route: expected an array of tables ([[frontend.web.route]]), found table"
        ]
    );
    // Every error of every route, not just the first.
    let errs = errors(
        "[[frontend.web.route]]\npool = \"x\"\nmethod = \"get\"\n[[frontend.web.route]]\nhost = \"*\"\n",
        "",
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs[2].starts_with("f.toml:8:1: frontend.web.route[1].pool: missing key"),
        "{errs:#?}"
    );
}

#[test]
fn hash_key_parses_every_form() {
    let hash = |v: &str, algorithm: &str| -> Result<HashKey, Vec<String>> {
        let extra = format!("algorithm = \"{algorithm}\"\nhash = {v}");
        match parse_str(&config("", &extra), "f.toml") {
            Ok(c) => Ok(c.pool("api").unwrap().hash.clone()),
            Err(e) => Err(e.0.iter().map(|e| e.to_string()).collect()),
        }
    };
    assert_eq!(hash("\"header:X-User\"", "maglev"), Ok(HashKey::Header("X-User".into())));
    assert_eq!(hash("\"cookie:sid\"", "ring-hash"), Ok(HashKey::Cookie("sid".into())));
    assert_eq!(hash("\"path\"", "source-hash"), Ok(HashKey::Path));
    assert_eq!(hash("\"client\"", "maglev"), Ok(HashKey::Client));
    let c = parse_str(&config("", ""), "f.toml").unwrap();
    assert_eq!(c.pool("api").unwrap().hash, HashKey::Client, "the default");
    #[rustfmt::skip]
    let bad: &[(&str, &str, &str)] = &[
        ("\"url\"", "maglev", "f.toml:11:8: pool.api.hash: unknown hash key \"url\" (expected: \"client\", \"path\", \"header:NAME\", \"cookie:NAME\")"),
        ("\"query:x\"", "maglev", "pool.api.hash: unknown hash key \"query:x\""),
        ("\"header:\"", "maglev", "pool.api.hash: \"\" is not a header or cookie name (an HTTP token)"),
        ("\"cookie:a b\"", "maglev", "pool.api.hash: \"a b\" is not a header or cookie name"),
        ("1", "maglev", "f.toml:11:8: pool.api.hash: expected a string, found integer"),
        ("\"path\"", "round-robin", "f.toml:11:8: pool.api.hash: only the hashing algorithms read it (source-hash, maglev, ring-hash), and this pool uses round-robin"),
    ];
    for (v, algorithm, want) in bad {
        let errs = hash(v, algorithm).unwrap_err();
        assert!(errs.iter().any(|e| e.contains(want)), "{v}: want {want}, got {errs:#?}");
    }
    // A bad algorithm is one error, not two.
    assert_eq!(hash("\"path\"", "fastest").unwrap_err().len(), 1);
}

#[test]
fn route_spec_feeds_core_matching_and_shadowing() {
    let r = routes(
        "[[frontend.web.route]]\npath_prefix = \"/a\"\npool = \"api\"\n\
         [[frontend.web.route]]\npath_prefix = \"/a/b\"\nmethod = \"GET\"\npool = \"app\"\n",
    );
    let specs: Vec<RouteSpec> = r.iter().map(Route::spec).collect();
    assert_eq!(fulcrum_core::route::shadowed(&specs), vec![(1, 0)]);
    assert!(fulcrum_core::route::RouteTable::build(&specs).is_ok());
}

/// A frontend `f` of `protocol` (default pool `app`, `extra` keys after it) with `routes`,
/// and pools `app`, `a` and `b`. The routes start on line 6.
fn sni_config(protocol: &str, extra: &str, routes: &str) -> String {
    let tls = if protocol == "https" {
        "[frontend.f.tls]\ncertificates = [{ cert = \"c.pem\", key = \"c.key\" }]\n"
    } else {
        ""
    };
    format!(
        "[frontend.f]\nbind = \"9000\"\nprotocol = \"{protocol}\"\npool = \"app\"\n{extra}\n\
         {routes}\n{tls}[pool.app]\nservers = []\n[pool.a]\nservers = []\n[pool.b]\nservers = []\n"
    )
}

fn sni_errors(protocol: &str, extra: &str, routes: &str) -> Vec<String> {
    match parse_str(&sni_config(protocol, extra, routes), "f.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn sni_routes_parse_on_tcp_and_https() {
    let routes = "[[frontend.f.route]]\nsni = \"A.Example.com.\"\npool = \"a\"\n\
                  [[frontend.f.route]]\nsni = [\"*.example.com\", \"b.test\", \"b.test\"]\npool = \"b\"\n";
    let c = parse_str(&sni_config("tcp", "sni_timeout = \"250ms\"", routes), "f.toml").unwrap();
    let f = &c.frontends[0];
    assert!(f.has_sni_routes());
    assert_eq!(f.sni_timeout, std::time::Duration::from_millis(250));
    assert_eq!(
        f.routes[0],
        Route {
            sni: vec!["a.example.com".into()],
            pool: Some("a".into()),
            line: 6,
            ..Route::default()
        }
    );
    assert_eq!(f.routes[1].sni, ["*.example.com", "b.test"]);
    assert!(f.routes.iter().all(|r| r.is_sni() && !r.passthrough));

    // The default wait, and an https frontend mixing terminated and passed-through names.
    let c = parse_str(&sni_config("tcp", "", routes), "f.toml").unwrap();
    assert_eq!(c.frontends[0].sni_timeout, DEFAULT_SNI_TIMEOUT);
    let mixed = "[[frontend.f.route]]\nhost = \"www.test\"\npool = \"b\"\n\
                 [[frontend.f.route]]\nsni = \"pass.test\"\npassthrough = true\npool = \"a\"\n\
                 [[frontend.f.route]]\npath_prefix = \"/x\"\npassthrough = false\npool = \"a\"\n";
    let c = parse_str(&sni_config("https", "sni_timeout = \"1s\"", mixed), "f.toml").unwrap();
    let r = &c.frontends[0].routes;
    assert_eq!(r.len(), 3);
    assert!(!r[0].is_sni() && r[1].is_sni() && !r[2].is_sni());
    assert!(r[1].passthrough && !r[2].passthrough);
    assert_eq!(r[1].sni, ["pass.test"]);
    assert!(c.frontends[0].has_sni_routes());
}

#[test]
fn sni_route_errors_name_the_key() {
    let route = |body: &str| format!("[[frontend.f.route]]\n{body}\n");
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str)] = &[
        // tcp: only sni and pool, and both.
        ("tcp", "", "sni = \"a.test\"\npool = \"a\"\nhost = \"a.test\"", "f.toml:9:8: frontend.f.route[0].host: a route by SNI reads nothing but the ClientHello's server name: it has `sni` and `pool` only"),
        ("tcp", "", "sni = \"a.test\"\npool = \"a\"\npath_prefix = \"/\"", "frontend.f.route[0].path_prefix: a route by SNI reads nothing but"),
        ("tcp", "", "sni = \"a.test\"\npool = \"a\"\nredirect = \"https\"", "frontend.f.route[0].redirect: a route by SNI"),
        ("tcp", "", "pool = \"a\"\npath_prefix = \"/\"", "frontend.f.route[0].sni: missing key: a tcp frontend routes a connection by the server name of its TLS ClientHello"),
        ("tcp", "", "sni = \"a.test\"", "f.toml:6:1: frontend.f.route[0].pool: missing key (the pool the connections with these names go to)"),
        ("tcp", "", "sni = \"a.test\"\npool = \"nope\"", "frontend.f.route[0].pool: pool \"nope\" is not defined"),
        ("tcp", "", "sni = \"a.test\"\npool = \"a\"\npassthrough = true", "frontend.f.route[0].passthrough: a tcp frontend passes every connection through"),
        ("tcp", "", "sni = \"a.test\"\npool = \"a\"\ncolour = 1", "frontend.f.route[0].colour: unknown key (expected one of: host,"),
        ("tcp", "", "sni = []\npool = \"a\"", "frontend.f.route[0].sni: must not be empty"),
        ("tcp", "", "sni = 5\npool = \"a\"", "frontend.f.route[0].sni: expected a string or a list of strings, found integer"),
        ("tcp", "", "sni = \"*\"\npool = \"a\"", "frontend.f.route[0].sni: \"*\" names no host"),
        ("tcp", "", "sni = [\"a.test\", \"a.*.test\"]\npool = \"a\"", "frontend.f.route[0].sni[1]: \"a.*.test\": a wildcard is only allowed as the whole first label"),
        ("tcp", "", "sni = \"10.1.2.3\"\npool = \"a\"", "frontend.f.route[0].sni: \"10.1.2.3\": a client's SNI is never an IP address"),
        ("tcp", "", "sni = \"a.test:443\"\npool = \"a\"", "frontend.f.route[0].sni: \"a.test:443\": give the name without a port"),
        ("tcp", "mode = \"fanout\"", "sni = \"a.test\"\npool = \"a\"", "frontend.f.route: only http and https frontends (by request) and tcp frontends in proxy mode"),
        ("udp", "", "sni = \"a.test\"\npool = \"a\"", "frontend.f.route: only http and https frontends (by request) and tcp frontends in proxy mode"),
        // https: sni and passthrough = true go together, and nothing else with them.
        ("https", "", "sni = \"a.test\"\npool = \"a\"", "f.toml:6:1: frontend.f.route[0].passthrough: missing key: a route by `sni` on an https frontend passes its connections through untouched"),
        ("https", "", "sni = \"a.test\"\npassthrough = false\npool = \"a\"", "frontend.f.route[0].passthrough: a route by `sni` on an https frontend passes its connections through: it must be true"),
        ("https", "", "passthrough = true\npool = \"a\"", "frontend.f.route[0].sni: missing key: a passthrough route is chosen by the ClientHello's server name"),
        ("https", "", "passthrough = true\nhost = \"a.test\"\npool = \"a\"", "frontend.f.route[0].host: a route by SNI reads nothing but the ClientHello's server name: it has `sni`, `passthrough = true` and `pool` only"),
        ("https", "", "sni = \"a.test\"\npassthrough = true\npool = \"a\"\nset_headers = { \"X\" = \"1\" }", "frontend.f.route[0].set_headers: a route by SNI"),
        ("https", "", "sni = \"a.test\"\npassthrough = \"yes\"\npool = \"a\"", "frontend.f.route[0].passthrough: expected true or false, found string"),
        // http: no ClientHello to read.
        ("http", "", "sni = \"a.test\"\npool = \"a\"", "frontend.f.route[0].sni: only tcp and https frontends read the SNI of a TLS ClientHello"),
        ("http", "", "passthrough = true\npool = \"a\"", "frontend.f.route[0].passthrough: only an https frontend terminates TLS"),
        ("http", "", "passthrough = false\npath_prefix = \"/\"", "f.toml:6:1: frontend.f.route[0].pool: missing key (the pool matching requests go to"),
        // sni_timeout: only where a ClientHello is read.
        ("tcp", "sni_timeout = \"1s\"", "", "f.toml:5:15: frontend.f.sni_timeout: only read on a frontend with routes by `sni`"),
        ("https", "sni_timeout = \"1s\"", "host = \"a.test\"\npool = \"a\"", "frontend.f.sni_timeout: only read on a frontend with routes by `sni`"),
        ("tcp", "sni_timeout = \"0s\"", "sni = \"a.test\"\npool = \"a\"", "frontend.f.sni_timeout: must be greater than zero"),
        ("tcp", "sni_timeout = \"2h\"", "sni = \"a.test\"\npool = \"a\"", "frontend.f.sni_timeout: must be at most 1h"),
    ];
    for (protocol, extra, body, want) in cases {
        let routes = if body.is_empty() { String::new() } else { route(body) };
        let errs = sni_errors(protocol, extra, &routes);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(want) || (e.starts_with("f.toml:") && e.contains(want))),
            "{protocol} {extra} {body}\nwant {want}\ngot {errs:#?}"
        );
    }
    // One error for each thing wrong, not one per missing part.
    let errs = sni_errors("https", "", &route("sni = \"a.test\"\npool = \"a\"\nhost = \"x\""));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    // `sni` on an http route: that, and nothing about its HTTP keys.
    let errs = sni_errors("http", "", &route("sni = \"a.test\"\nhost = \"a.test\"\npool = \"a\""));
    assert_eq!(errs.len(), 1, "{errs:#?}");
}
