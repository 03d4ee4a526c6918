#![allow(clippy::unwrap_used)]

use super::*;
use fulcrum_core::balance::Algorithm;
use fulcrum_core::eject::EjectPolicy;

const GOOD: &str = r#"
workers = 2

[frontend.web]
bind = "127.0.0.1:8080"
protocol = "tcp"
pool = "app"

[pool.app]
algorithm = "weighted-round-robin"
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"#;

fn errors(text: &str) -> Vec<String> {
    match parse_str(text, "f.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn issue_example_parses() {
    let c = parse_str(GOOD, "f.toml").unwrap();
    assert_eq!(c.workers, Some(2));
    assert_eq!(c.frontends.len(), 1);
    let f = &c.frontends[0];
    assert_eq!((f.name.as_str(), f.pool.as_str()), ("web", "app"));
    assert_eq!(f.bind, "127.0.0.1:8080".parse().unwrap());
    let p = c.pool("app").unwrap();
    assert_eq!(p.algorithm, Algorithm::WeightedRoundRobin);
    assert_eq!(p.servers.len(), 2);
    assert_eq!((p.servers[0].weight, p.servers[1].weight), (1, 3));
    assert_eq!(p.servers[1].address.to_string(), "127.0.0.1:9002");
    assert_eq!(p.retries, DEFAULT_RETRIES);
}

#[test]
fn all_keys_parse() {
    let c = parse_str(
        r#"
workers = 4
max_connections = 100
drain_timeout = "5s"
access_log = false
[frontend.a]
bind = "9000"
pool = "p"
idle_timeout = "1m"
max_connections = 10
[pool.p]
algorithm = "maglev"
servers = ["localhost:80", "[::1]:81"]
connect_timeout = "500ms"
retries = 3
eject = { failures = 5, backoff = "2s", max_backoff = "1m" }
"#,
        "f.toml",
    )
    .unwrap();
    assert_eq!(c.max_connections, Some(100));
    assert_eq!(c.drain_timeout, Duration::from_secs(5));
    assert!(!c.access_log);
    assert_eq!(c.frontends[0].idle_timeout, Duration::from_secs(60));
    assert_eq!(c.frontends[0].bind, "0.0.0.0:9000".parse().unwrap());
    let p = c.pool("p").unwrap();
    assert_eq!(p.connect_timeout, Duration::from_millis(500));
    assert_eq!(p.eject, EjectPolicy { failures: 5, base_ms: 2_000, max_ms: 60_000 });
    assert_eq!(p.servers[0].address.host, "localhost");
}

#[test]
fn every_error_is_reported_with_line_and_key() {
    let errs = errors(
        r#"
workers = 2
colour = "blue"

[frontend.web]
bind = "127.0.0.1:99999"
pool = "nope"

[pool.app]
algorithm = "fastest"
servers = ["127.0.0.1:9001", "not an address"]
"#,
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(errs[0].starts_with("f.toml:3:1: colour: unknown key"), "{}", errs[0]);
    assert!(
        errs[1].starts_with("f.toml:6:8: frontend.web.bind: port 99999 is out of range"),
        "{}",
        errs[1]
    );
    assert!(errs[2].contains("frontend.web.pool: pool \"nope\" is not defined"), "{}", errs[2]);
    assert!(
        errs[3].contains(":10:13: pool.app.algorithm: unknown algorithm \"fastest\""),
        "{}",
        errs[3]
    );
    assert!(errs[4].contains("pool.app.servers[1]"), "{}", errs[4]);
}

#[test]
fn syntax_errors_have_positions() {
    let errs = errors("workers = \n[frontend.x\n");
    assert!(!errs.is_empty());
    assert!(errs[0].starts_with("f.toml:1:"), "{errs:?}");
}

#[test]
fn type_and_range_errors() {
    let errs = errors(
        r#"
workers = 0
[frontend.w]
bind = 8080
pool = "p"
[pool.p]
servers = [{ address = "127.0.0.1:1", weight = -1 }, { weight = 2 }, 5, "127.0.0.1:1"]
retries = 99
connect_timeout = "soon"
"#,
    );
    let joined = errs.join("\n");
    for needle in [
        "workers: 0 is out of range",
        "frontend.w.bind: expected a string, found integer",
        "pool.p.servers[0].weight: -1 is out of range",
        "pool.p.servers[1].address: missing key",
        "pool.p.servers[2]: expected an address string",
        "pool.p.retries: 99 is out of range",
        "pool.p.connect_timeout: \"soon\" is not a duration",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in\n{joined}");
    }
}

#[test]
fn duplicates_and_missing() {
    let errs = errors(
        r#"
[frontend.a]
bind = "127.0.0.1:1000"
pool = "p"
[frontend.b]
bind = "127.0.0.1:1000"
[pool.p]
servers = ["127.0.0.1:1", "127.0.0.1:1"]
"#,
    )
    .join("\n");
    assert!(errs.contains("frontend.b.pool: missing key"), "{errs}");
    assert!(errs.contains("pool.p.servers[1]: 127.0.0.1:1 is listed twice"), "{errs}");
    assert!(errors("workers = 1").join("").contains("no frontend defined"));
}

#[test]
fn https_needs_its_tls_table_and_tls_needs_https() {
    let errs = errors(
        r#"
[frontend.a]
bind = "127.0.0.1:1000"
protocol = "https"
pool = "p"
[frontend.b]
bind = "127.0.0.1:1001"
protocol = "http"
pool = "p"
[frontend.b.tls]
certificates = [{ cert = "c.pem", key = "k.pem" }]
[frontend.c]
bind = "127.0.0.1:1002"
protocol = "https"
pool = "p"
[frontend.c.tls]
certificates = [{ cert = "c.pem" }]
min_version = "1.1"
[pool.p]
servers = []
"#,
    )
    .join("\n");
    for want in [
        "frontend.a.tls: missing table",
        "frontend.b.tls: only a protocol = \"https\" frontend terminates TLS",
        "frontend.c.tls.certificates[0].key: missing key",
        "frontend.c.tls.min_version: unsupported version \"1.1\"",
    ] {
        assert!(errs.contains(want), "{want} not in:\n{errs}");
    }
    let c = parse_str(
        r#"
[frontend.a]
bind = "127.0.0.1:1000"
protocol = "https"
pool = "p"
header_timeout = "3s"
[frontend.a.tls]
certificates = [{ cert = "certs/a.pem", key = "certs/a.key" }, { cert = "/b.pem", key = "/b.key" }]
min_version = "1.3"
sni_strict = true
[pool.p]
servers = []
"#,
        "/etc/fulcrum/f.toml",
    )
    .unwrap();
    let tls = c.frontends[0].tls.clone().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[0].cert, std::path::PathBuf::from("/etc/fulcrum/certs/a.pem"));
    assert_eq!(tls.certificates[1].key, std::path::PathBuf::from("/b.key"));
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert!(tls.sni_strict);
    assert_eq!(c.frontends[0].http.header_timeout, Duration::from_secs(3));
}

#[test]
fn client_certificate_keys_parse_and_are_checked() {
    let base = "[frontend.a]\nbind = \"127.0.0.1:1000\"\nprotocol = \"https\"\npool = \"p\"\n\
                [pool.p]\nservers = []\n[frontend.a.tls]\n\
                certificates = [{ cert = \"a.pem\", key = \"a.key\" }]\n";
    let c = parse_str(base, "/etc/fulcrum/f.toml").unwrap();
    let tls = c.frontends[0].tls.clone().unwrap();
    assert_eq!(tls.client_ca, None);
    assert_eq!(tls.client_cert_header, "X-Client-Cert-Subject");
    let c = parse_str(
        &format!("{base}client_ca = \"ca.pem\"\nclient_cert_header = \"X-SSL-Subject\"\n"),
        "/etc/fulcrum/f.toml",
    )
    .unwrap();
    let tls = c.frontends[0].tls.clone().unwrap();
    assert_eq!(tls.client_ca, Some(std::path::PathBuf::from("/etc/fulcrum/ca.pem")));
    assert_eq!(tls.client_auth, ClientAuth::Required, "client_ca alone requires a certificate");
    assert_eq!(tls.client_cert_header, "X-SSL-Subject");
    let c =
        parse_str(&format!("{base}client_ca = \"ca.pem\"\nclient_auth = \"optional\"\n"), "f.toml")
            .unwrap();
    assert_eq!(c.frontends[0].tls.clone().unwrap().client_auth, ClientAuth::Optional);
    for (extra, want) in [
        ("client_auth = \"required\"", "frontend.a.tls.client_auth: needs client_ca"),
        ("client_ca = \"c.pem\"\nclient_auth = \"maybe\"", "client_auth: unknown value \"maybe\""),
        ("client_ca = 5", "frontend.a.tls.client_ca: expected a string"),
        ("client_cert_header = \"bad name\"", "is not an HTTP header name"),
        ("client_cert_header = \"X-Forwarded-For\"", "is a header fulcrum writes"),
        ("client_cert_header = \"\"", "is not an HTTP header name"),
    ] {
        let errs = errors(&format!("{base}{extra}\n")).join("\n");
        assert!(errs.contains(want), "{extra}: {want} not in:\n{errs}");
    }
}

#[test]
fn garbage_never_panics() {
    for text in [
        "\u{0}",
        "[[[",
        "a = [1, [2, {x = 3}]]",
        "frontend = 5",
        "pool = []",
        "[pool.x]\nservers = \"x\"",
        "\u{feff}workers = 1",
    ] {
        let _ = parse_str(text, "f.toml");
    }
}

#[test]
fn health_keys_parse_and_are_checked() {
    let base = "[frontend.a]\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pool.p]\nservers = []\nslow_start = \"5s\"\n[pool.p.health]\n";
    let c = parse_str(&format!("{base}kind = \"http\"\npath = \"/ok\"\nexpect_status = \"200-204\"\nexpect_body = \"fine\"\ninterval = \"500ms\"\nrise = 1\nfall = 4\n"), "f.toml").unwrap();
    let p = c.pool("p").unwrap();
    assert_eq!(p.slow_start, Duration::from_secs(5));
    let h = p.health.as_ref().unwrap();
    assert_eq!((h.interval, h.rise, h.fall), (Duration::from_millis(500), 1, 4));
    assert_eq!(
        h.kind,
        HealthKind::Http {
            path: "/ok".into(),
            host: None,
            status: (200, 204),
            body: Some("fine".into())
        }
    );
    let errs = errors(&format!("{base}kind = \"ping\"\n")).join("\n");
    assert!(errs.contains("pool.p.health.kind: unknown health check kind \"ping\""), "{errs}");
    let errs = errors(&format!("{base}kind = \"http\"\nhost = \"a b\"\n")).join("\n");
    assert!(errs.contains("pool.p.health.host:"), "{errs}");
    let errs = errors(&format!("{base}kind = \"send-expect\"\nsend = \"PING\"\n")).join("\n");
    assert!(errs.contains("send-expect needs"), "{errs}");
    let errs = errors(&format!("{base}interval = \"2h\"\n")).join("\n");
    assert!(errs.contains("pool.p.health.interval: must be at most 1h"), "{errs}");
}

#[test]
fn udp_and_fanout_frontends_parse() {
    let c = parse_str(
        r#"
[frontend.lookup]
bind = "127.0.0.1:5300"
protocol = "udp"
pool = "tables"
mode = "fanout"
session_timeout = "10s"
max_sessions = 50

[frontend.lookup.fanout]
timeout = "5s"
on_timeout = "Error:HOST NOT FOUND"
reject_prefix = "ERR"

[frontend.hedged]
bind = "127.0.0.1:5301"
pool = "tables"
mode = "hedge"
delay = "50ms"

[pool.tables]
servers = ["127.0.0.1:1"]
[pool.tables.health]
kind = "send-expect"
transport = "udp"
send = "PING"
expect = "PONG"
"#,
        "f.toml",
    )
    .unwrap();
    let f = &c.frontends[0];
    assert_eq!(
        (f.protocol, f.max_sessions, f.session_timeout),
        (Protocol::Udp, 50, Duration::from_secs(10))
    );
    let Mode::Fanout(fan) = &f.mode else { panic!("{:?}", f.mode) };
    assert_eq!(fan.on_timeout.as_deref(), Some("Error:HOST NOT FOUND"));
    assert_eq!(fan.reject_prefix.as_deref(), Some("ERR"));
    assert_eq!(fan.timeout, Duration::from_secs(5));
    let Mode::Hedge(h) = &c.frontends[1].mode else { panic!() };
    assert_eq!(h.delay, Duration::from_millis(50));
    assert!(matches!(c.pools[0].health.as_ref().unwrap().kind, HealthKind::UdpSendExpect { .. }));
    let errs = errors("[frontend.a]\nbind = \"127.0.0.1:1\"\npool = \"p\"\nprotocol = \"directory\"\nmode = \"fanout\"\n[pool.p]\nservers = []\n").join("\n");
    assert!(errs.contains("fanout and hedge work on tcp and udp frontends only"), "{errs}");
    assert_eq!(fan.matching, AnswerMatch::OneAtATime);
    assert_eq!(f.send_timeout, DEFAULT_SEND_TIMEOUT);
    let errs = errors("[frontend.a]\nbind = \"127.0.0.1:1\"\npool = \"p\"\nmode = \"spray\"\n[pool.p]\nservers = []\n").join("\n");
    assert!(errs.contains("unknown mode \"spray\""), "{errs}");
}

const FANOUT_BASE: &str = "[frontend.a]\nbind = \"127.0.0.1:1\"\npool = \"p\"\nmode = \"fanout\"\n";

#[test]
fn fanout_match_and_send_timeout_parse() {
    let text = format!(
        "{FANOUT_BASE}send_timeout = \"2s\"\n[frontend.a.fanout]\nmatch = \"first-word\"\n[pool.p]\nservers = []\n"
    );
    let c = parse_str(&text, "f.toml").unwrap();
    let f = &c.frontends[0];
    assert_eq!(f.send_timeout, Duration::from_secs(2));
    let Mode::Fanout(fan) = &f.mode else { panic!("{:?}", f.mode) };
    assert_eq!(fan.matching, AnswerMatch::FirstWord);
    let text =
        format!("{FANOUT_BASE}[frontend.a.fanout]\nmatch = \"none\"\n[pool.p]\nservers = []\n");
    let c = parse_str(&text, "f.toml").unwrap();
    let Mode::Fanout(fan) = &c.frontends[0].mode else { panic!() };
    assert_eq!(fan.matching, AnswerMatch::OneAtATime);
}

#[test]
fn fanout_bad_match_durations_and_send_timeout_are_located() {
    let bad = |extra_fe: &str, extra_fan: &str| {
        errors(&format!(
            "{FANOUT_BASE}{extra_fe}[frontend.a.fanout]\n{extra_fan}[pool.p]\nservers = []\n"
        ))
        .join("\n")
    };
    let errs = bad("", "match = \"second-word\"\n");
    assert!(errs.contains("frontend.a.fanout.match"), "{errs}");
    assert!(errs.contains("unknown answer matching \"second-word\""), "{errs}");
    let errs = bad("", "match = 1\n");
    assert!(errs.contains("frontend.a.fanout.match"), "{errs}");
    let errs = bad("", "timeout = \"2h\"\n");
    assert!(errs.contains("frontend.a.fanout.timeout: must be at most 1h"), "{errs}");
    let errs = bad("", "delay = \"90m\"\n");
    assert!(errs.contains("frontend.a.fanout.delay: must be at most 1h"), "{errs}");
    let errs = bad("delay = \"2h\"\n", "");
    assert!(errs.contains("frontend.a.delay: must be at most 1h"), "{errs}");
    let errs = bad("send_timeout = \"0s\"\n", "");
    assert!(errs.contains("frontend.a.send_timeout: must be greater than zero"), "{errs}");
    let errs = bad("send_timeout = \"soon\"\n", "");
    assert!(errs.contains("frontend.a.send_timeout"), "{errs}");
}

#[test]
fn a_tcp_and_a_udp_frontend_may_share_a_port_two_of_one_transport_may_not() {
    let pool = "[pool.app]\nservers = [\"127.0.0.1:9001\"]\n";
    let both = format!(
        "[frontend.dns_tcp]\nbind = \"127.0.0.1:5353\"\nprotocol = \"tcp\"\npool = \"app\"\n\
         [frontend.dns_udp]\nbind = \"127.0.0.1:5353\"\nprotocol = \"udp\"\npool = \"app\"\n\
         [frontend.dir]\nbind = \"127.0.0.1:7000\"\nprotocol = \"directory\"\npool = \"app\"\n\
         [frontend.dir_udp]\nbind = \"127.0.0.1:7000\"\nprotocol = \"directory-udp\"\npool = \"app\"\n{pool}"
    );
    assert_eq!(errors(&both), Vec::<String>::new());
    // A TCP proxy and a directory are both TCP: one port cannot tell them apart.
    let clash = format!(
        "[frontend.a]\nbind = \"127.0.0.1:5353\"\nprotocol = \"tcp\"\npool = \"app\"\n\
         [frontend.b]\nbind = \"127.0.0.1:5353\"\nprotocol = \"directory\"\npool = \"app\"\n{pool}"
    );
    let e = errors(&clash);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("frontend.b.bind") && e[0].contains("another TCP frontend"), "{e:?}");
    let clash = format!(
        "[frontend.a]\nbind = \"127.0.0.1:5353\"\nprotocol = \"udp\"\npool = \"app\"\n\
         [frontend.b]\nbind = \"127.0.0.1:5353\"\nprotocol = \"udp\"\npool = \"app\"\n{pool}"
    );
    assert!(errors(&clash).iter().any(|e| e.contains("another UDP frontend")));
}

#[test]
fn framing_and_quit_belong_to_line_protocols() {
    let pool = "[pool.app]\nservers = [\"127.0.0.1:9001\"]\n";
    let fan = format!(
        "[frontend.lookup]\nbind = \"127.0.0.1:0\"\npool = \"app\"\nmode = \"fanout\"\n\
         framing = \"message\"\nquit = \"done\"\n{pool}"
    );
    let c = parse_str(&fan, "f.toml").unwrap();
    assert_eq!(c.frontends[0].framing, Framing::Message);
    assert_eq!(c.frontends[0].quit.as_deref(), Some("done"));
    let dir = format!(
        "[frontend.d]\nbind = \"127.0.0.1:0\"\nprotocol = \"directory\"\npool = \"app\"\nquit = \"QUIT\"\n{pool}"
    );
    let c = parse_str(&dir, "f.toml").unwrap();
    assert_eq!(
        (c.frontends[0].framing, c.frontends[0].quit.as_deref()),
        (Framing::Line, Some("QUIT"))
    );
    // A proxied stream has no requests to frame.
    let proxy =
        format!("[frontend.p]\nbind = \"127.0.0.1:0\"\npool = \"app\"\nquit = \"done\"\n{pool}");
    let e = errors(&proxy);
    assert!(
        e.iter().any(|e| e.contains("frontend.p.quit") && e.contains("only line protocols")),
        "{e:?}"
    );
    let udp = format!(
        "[frontend.u]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nmode = \"fanout\"\npool = \"app\"\nframing = \"message\"\n{pool}"
    );
    assert!(errors(&udp).iter().any(|e| e.contains("frontend.u.framing")));
    let bad = format!(
        "[frontend.l]\nbind = \"127.0.0.1:0\"\npool = \"app\"\nmode = \"fanout\"\nframing = \"datagram\"\n{pool}"
    );
    assert!(errors(&bad).iter().any(|e| e.contains("unknown framing \"datagram\"")));
    let pipelined = format!(
        "[frontend.l]\nbind = \"127.0.0.1:0\"\npool = \"app\"\nmode = \"fanout\"\nframing = \"message\"\n\
         [frontend.l.fanout]\nmatch = \"first-word\"\n{pool}"
    );
    assert!(errors(&pipelined).iter().any(|e| e.contains("first-word")));
    let empty = format!(
        "[frontend.l]\nbind = \"127.0.0.1:0\"\npool = \"app\"\nmode = \"fanout\"\nquit = \"\"\n{pool}"
    );
    assert!(errors(&empty).iter().any(|e| e.contains("frontend.l.quit")));
}

#[test]
fn sessions_false_is_for_udp_proxies_and_shortens_the_wait() {
    let pool = "[pool.app]\nservers = [\"127.0.0.1:9001\"]\n";
    let c = parse_str(
        &format!("[frontend.q]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nsessions = false\npool = \"app\"\n{pool}"),
        "f.toml",
    )
    .unwrap();
    assert!(!c.frontends[0].sessions);
    assert_eq!(c.frontends[0].session_timeout, DEFAULT_DATAGRAM_TIMEOUT);
    let e = errors(&format!(
        "[frontend.t]\nbind = \"127.0.0.1:0\"\nsessions = false\npool = \"app\"\n{pool}"
    ));
    assert!(e.iter().any(|e| e.contains("frontend.t.sessions")), "{e:?}");
}

#[test]
fn server_caps_and_queue_parse_and_are_checked() {
    let text = r#"
[frontend.f]
bind = "127.0.0.1:1"
pool = "p"
[pool.p]
servers = [{ address = "127.0.0.1:10", max_connections = 1 }, "127.0.0.1:11"]
queue = { size = 20, timeout = "750ms" }
[pool.q]
servers = []
queue = {}
"#;
    let c = parse_str(text, "f.toml").unwrap();
    let p = c.pool("p").unwrap();
    assert_eq!(p.servers[0].max_connections, Some(1));
    assert_eq!(p.servers[1].max_connections, None);
    assert_eq!(
        p.queue,
        Some(QueueSettings { size: 20, timeout: std::time::Duration::from_millis(750) })
    );
    assert_eq!(
        c.pool("q").unwrap().queue,
        Some(QueueSettings { size: DEFAULT_QUEUE_SIZE, timeout: DEFAULT_QUEUE_TIMEOUT })
    );
    assert_eq!(parse_str(GOOD, "f.toml").unwrap().pools[0].queue, None, "no queue unless set");
    let errs = errors(
        r#"
[frontend.f]
bind = "127.0.0.1:1"
pool = "p"
[pool.p]
servers = [{ address = "127.0.0.1:10", max_connections = 0 }, { address = "127.0.0.1:11", max_connections = "x" }]
queue = { size = 0, timeout = "0s", depth = 3 }
"#,
    )
    .join("\n");
    for needle in [
        "pool.p.servers[0].max_connections: 0 is out of range (1-10000000)",
        "pool.p.servers[1].max_connections: expected an integer",
        "pool.p.queue.size: 0 is out of range (1-1000000)",
        "pool.p.queue.timeout:",
        "pool.p.queue.depth: unknown key",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in\n{errs}");
    }
    assert!(
        errors("[frontend.f]\nbind = \"1\"\npool = \"p\"\n[pool.p]\nservers = []\nqueue = 5\n")
            .join("\n")
            .contains("pool.p.queue: expected a table")
    );
}

#[test]
fn resolver_and_resolve_interval_parse() {
    let text = r#"
[resolver]
servers = ["127.0.0.1:5353", "[::1]:53"]
[frontend.a]
bind = "127.0.0.1:9000"
pool = "p"
[pool.p]
servers = ["app.test:80"]
resolve_interval = "2s"
[pool.q]
servers = ["127.0.0.1:81"]
"#;
    let c = parse_str(text, "f.toml").unwrap();
    let r = c.resolver.clone().unwrap();
    assert_eq!(r.servers, ["127.0.0.1:5353".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    assert_eq!(c.pool("p").unwrap().resolve_interval, std::time::Duration::from_secs(2));
    assert_eq!(c.pool("q").unwrap().resolve_interval, DEFAULT_RESOLVE_INTERVAL);
    assert_eq!(parse_str(GOOD, "f.toml").unwrap().resolver, None);
}

#[test]
fn resolver_and_resolve_interval_errors_are_located() {
    let base = "[frontend.a]\nbind = \"127.0.0.1:9000\"\npool = \"p\"\n[pool.p]\nservers = [\"a.test:80\"]\n";
    let e = errors(&format!("{base}resolve_interval = \"500ms\"\n"));
    assert_eq!(e, ["f.toml:6:20: pool.p.resolve_interval: must be at least 1s"]);
    let e = errors(&format!("{base}[resolver]\nservers = [\"ns.example:53\", \"127.0.0.1\"]\n"));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("f.toml:7:12: resolver.servers[0]: \"ns.example:53\" is not IP:PORT"),
        "{e:?}"
    );
    assert!(e[1].contains("resolver.servers[1]: \"127.0.0.1\" is not IP:PORT"), "{e:?}");
    let e = errors(&format!("{base}[resolver]\nservers = []\n"));
    assert_eq!(e, ["f.toml:7:11: resolver.servers: list 1 to 16 name servers"]);
    let e = errors(&format!("{base}[resolver]\nserver = [\"127.0.0.1:53\"]\n"));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().any(|x| x.contains("resolver.server: unknown key")), "{e:?}");
    assert!(e.iter().any(|x| x.contains("resolver.servers: missing key")), "{e:?}");
}

#[test]
fn http_frontend_and_pool_keys() {
    let c = parse_str(
        r#"
[frontend.web]
bind = "127.0.0.1:8080"
protocol = "http"
pool = "app"
header_timeout = "3s"
max_header_bytes = "16KiB"
max_headers = 50
max_body = "1MiB"
keepalive_timeout = "20s"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]
forwarded = true
[pool.app]
servers = ["127.0.0.1:9001"]
retry_budget = "50%"
sticky = { cookie = "srv", ttl = "2h" }
[pool.app.http]
version = "h2"
max_idle = 8
idle_timeout = "5s"
response_timeout = "7s"
"#,
        "t.toml",
    )
    .unwrap();
    let f = &c.frontends[0];
    assert_eq!(f.protocol, Protocol::Http);
    let h = &f.http;
    assert_eq!(h.header_timeout, Duration::from_secs(3));
    assert_eq!(h.max_header_bytes, 16 * 1024);
    assert_eq!(h.max_headers, 50);
    assert_eq!(h.max_body, Some(1 << 20));
    assert_eq!(h.keepalive_timeout, Duration::from_secs(20));
    assert_eq!(h.trusted_proxies.len(), 2);
    assert!(h.forwarded);
    let p = &c.pools[0];
    assert_eq!(p.retry_budget_percent, 50);
    assert_eq!(p.sticky, Some(Sticky { cookie: "srv".into(), ttl: Duration::from_secs(7200) }));
    assert_eq!(p.http.version, HttpVersion::H2);
    assert_eq!(p.http.max_idle, 8);
    assert_eq!(p.http.idle_timeout, Duration::from_secs(5));
    assert_eq!(p.http.response_timeout, Duration::from_secs(7));
    // Defaults.
    let c = parse_str(
        r#"
[frontend.web]
bind = "127.0.0.1:8080"
protocol = "http"
pool = "app"
[pool.app]
servers = ["127.0.0.1:9001"]
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.frontends[0].http, HttpFrontend::default());
    assert_eq!(c.frontends[0].http.header_timeout, Duration::from_secs(10));
    assert_eq!(c.frontends[0].http.max_header_bytes, 65536);
    assert_eq!(c.pools[0].http.response_timeout, Duration::from_secs(60));
    assert_eq!(c.pools[0].retry_budget_percent, 20);
}

#[test]
fn http_key_errors_name_the_key_and_reason() {
    let errs = errors(
        r#"
[frontend.web]
bind = "127.0.0.1:8080"
protocol = "http"
pool = "app"
max_header_bytes = "lots"
trusted_proxies = ["10.0.0.0/33"]
[frontend.t]
bind = "127.0.0.1:8081"
pool = "app"
header_timeout = "3s"
[pool.app]
servers = ["127.0.0.1:9001"]
retry_budget = "twenty"
sticky = { ttl = "1h" }
[pool.app.http]
version = "h3"
"#,
    )
    .join("\n");
    for want in [
        "frontend.web.max_header_bytes: \"lots\" is not a size",
        "frontend.web.trusted_proxies[0]: \"10.0.0.0/33\" is not an address or CIDR range",
        "frontend.t.header_timeout: only a protocol = \"http\" frontend reads it",
        "pool.app.retry_budget: \"twenty\" is not a percentage",
        "pool.app.sticky.cookie: missing key",
        "pool.app.http.version: unknown version \"h3\" (expected: h1, h2)",
    ] {
        assert!(errs.contains(want), "{want} not in:\n{errs}");
    }
}

#[test]
fn proxy_protocol_keys() {
    let c = parse_str(
        r#"
[frontend.web]
bind = "127.0.0.1:1000"
pool = "p"
accept_proxy = ["10.0.0.0/8", "127.0.0.1"]
[pool.p]
servers = []
send_proxy = "v2"
"#,
        "f.toml",
    )
    .unwrap();
    assert_eq!(c.frontends[0].accept_proxy.len(), 2);
    assert_eq!(c.pools[0].send_proxy, Some(ProxyVersion::V2));
    let errs = errors(
        r#"
[frontend.u]
bind = "127.0.0.1:1000"
protocol = "udp"
pool = "p"
accept_proxy = ["10.0.0.0/8"]
[frontend.h]
bind = "127.0.0.1:1001"
protocol = "http"
pool = "q"
[pool.p]
servers = []
send_proxy = "v3"
[pool.q]
servers = []
send_proxy = "v1"
"#,
    )
    .join("\n");
    for want in [
        "frontend.u.accept_proxy: only tcp (proxy mode), http and https frontends read a PROXY header",
        "pool.p.send_proxy: unknown version \"v3\" (expected: v1, v2)",
    ] {
        assert!(errs.contains(want), "{want} not in:\n{errs}");
    }
}

#[test]
fn udp_send_proxy_is_v2_on_sessions_only() {
    let c = parse_str(
        r#"
[frontend.u]
bind = "127.0.0.1:1000"
protocol = "udp"
pool = "v2"
[pool.v2]
servers = []
send_proxy = "v2"
"#,
        "f.toml",
    );
    assert!(c.is_ok(), "{:?}", c.err());
    let errs = errors(
        r#"
[frontend.a]
bind = "127.0.0.1:1000"
protocol = "udp"
pool = "v1"
[frontend.b]
bind = "127.0.0.1:1001"
protocol = "udp"
sessions = false
pool = "v2"
[pool.v1]
servers = []
send_proxy = "v1"
[pool.v2]
servers = []
send_proxy = "v2"
"#,
    )
    .join("\n");
    for want in [
        "frontend.a.pool: pool \"v1\": a udp frontend sends PROXY v2 only (v1 has no UDP form)",
        "frontend.b.pool: pool \"v2\": a udp frontend sends a PROXY header only in proxy mode with sessions",
    ] {
        assert!(errs.contains(want), "{want} not in:\n{errs}");
    }
}

#[test]
fn admin_tls_parses_relative_to_the_file_and_is_checked() {
    let text = format!(
        "{GOOD}\n[admin]\nbind = \"127.0.0.1:9090\"\ntls = {{ cert = \"a.pem\", key = \"/k/a.key\" }}\n"
    );
    let c = parse_str(&text, "/etc/f/f.toml").unwrap();
    let tls = c.admin.unwrap().tls.unwrap();
    assert_eq!(tls.cert, std::path::PathBuf::from("/etc/f/a.pem"));
    assert_eq!(tls.key, std::path::PathBuf::from("/k/a.key"));
    let e = errors(&format!(
        "{GOOD}\n[admin]\nbind = \"127.0.0.1:9090\"\ntls = {{ cert = \"a.pem\", chain = 1 }}\n"
    ));
    assert!(e.iter().any(|x| x.contains("admin.tls.key") && x.contains("missing key")), "{e:?}");
    assert!(e.iter().any(|x| x.contains("admin.tls.chain")), "{e:?}");
}

#[test]
fn receive_buffer_defaults_and_auto() {
    let c = parse_str(GOOD, "f.toml").unwrap();
    assert_eq!(c.pools[0].receive_buffer, Some(crate::DEFAULT_RECEIVE_BUFFER));
    for (v, want) in [("\"auto\"", None), ("\"256KiB\"", Some(256 << 10))] {
        let c = parse_str(&format!("{GOOD}receive_buffer = {v}\n"), "f.toml").unwrap();
        assert_eq!(c.pools[0].receive_buffer, want, "{v}");
    }
    let e = errors(&format!("{GOOD}receive_buffer = \"1KiB\"\n"));
    assert!(e[0].contains("pool.app.receive_buffer"), "{e:?}");
}
