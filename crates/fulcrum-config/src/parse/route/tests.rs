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
