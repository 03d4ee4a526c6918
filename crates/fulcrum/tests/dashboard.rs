//! The web dashboard: Debian's headless Chromium driven by python3-selenium (nothing
//! downloaded at test time) against a real daemon (the login, the configured pools, a killed
//! server turning down within `fall × interval + timeout + 1 s`, a drain button the API
//! confirms, charts holding points from before the page was opened, a phone-sized window, no
//! console error); the token on every data route (401 without it) while `/metrics` and
//! `/readyz` stay open; the stream's cookie; the config box (check, apply keeping `.bak`,
//! refused when the file is not writable); and the admin listener over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

include!("support/pki.rs");

const TOKEN: &str = "dash-token-1";
const BROWSER: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
const PYTHON: &str = "/usr/bin/python3";

/// A status, the `Set-Cookie` header, the body (JSON when it parses).
struct Answer {
    status: u16,
    cookie: Option<String>,
    body: Value,
    headers: Vec<(String, String)>,
}

fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let with = |b: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
        Some(a) => b.header("Authorization", a).header("Content-Type", "application/json"),
        None => b.header("Content-Type", "application/json"),
    };
    let r = match method {
        "GET" => {
            let b = agent.get(url);
            match &auth {
                Some(a) => b.header("Authorization", a).call(),
                None => b.call(),
            }
        }
        "POST" => with(agent.post(url)).send(body.unwrap_or(json!({})).to_string()),
        "PATCH" => with(agent.patch(url)).send(body.unwrap_or(json!({})).to_string()),
        _ => unreachable!(),
    };
    let mut r = r.unwrap();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let cookie = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, cookie, body, headers }
}

struct Setup {
    d: Daemon,
    api: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn path(&self) -> PathBuf {
        self.dir.path().join("fulcrum.toml")
    }

    fn get(&self, route: &str) -> Value {
        let a = call("GET", &format!("{}{route}", self.api), Some(TOKEN), None);
        assert_eq!(a.status, 200, "GET {route}: {}", a.body);
        a.body
    }
}

/// A pool `app` of `servers` with TCP health checks every second (fall 2, timeout 500 ms),
/// behind frontend `web`, and the admin listener with a token.
fn dashboard_config(servers: &[String], admin_extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[frontend.web]\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pool.app]\nservers = [{}]\n\
         [pool.app.health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n{admin_extra}",
        list.join(", ")
    )
}

fn start(toml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, toml).unwrap();
    let d = Daemon::spawn(&["run", "--config", path.to_str().unwrap()]);
    let addr = d.find("admin API listening").unwrap()["address"].as_str().unwrap().to_string();
    Setup { d, api: format!("http://{addr}"), dir }
}

/// The pool's history as the daemon keeps it: how many 1 s points hold data.
fn history_points(s: &Setup, series: &str) -> usize {
    let v = s.get(&format!("/api/v1/history?range=hour&series={series}"));
    v["series"][series]["active"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| !x.is_null()).count())
}

fn server_state(s: &Setup, address: &str) -> String {
    let v = s.get("/api/v1/pools");
    let servers = v["pools"][0]["servers"].as_array().unwrap().clone();
    let sv = servers.iter().find(|x| x["address"] == address).unwrap();
    sv["state"].as_str().unwrap().to_string()
}

/// The browser script, its output line by line, and its standard input.
struct Browser {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Browser {
    fn start(url: &str, shots: &Path) -> Browser {
        for tool in [BROWSER, DRIVER, PYTHON] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install chromium chromium-driver python3-selenium (.ci/run does)"
            );
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/dashboard_browser.py");
        let mut child = Command::new(PYTHON)
            .args([script, url, TOKEN, shots.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the browser script");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Browser { child, lines }
    }

    /// The next line, which must start with `word`.
    fn expect(&self, word: &str, limit: Duration) -> Vec<String> {
        let line = self.lines.recv_timeout(limit).unwrap_or_else(|_| {
            panic!("the browser script said nothing for {limit:?} (waiting for {word})")
        });
        let parts: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        assert_eq!(parts.first().map(String::as_str), Some(word), "browser script: {line}");
        parts
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_pools_a_killed_server_turns_down_drain_works_and_charts_hold_history() {
    let a = Backend::start(Mode::Echo).await;
    let b = Backend::start(Mode::Echo).await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let s = start(&dashboard_config(&[a_addr.clone(), b_addr.clone()], ""));
    // Some traffic, and history from before the page opens.
    let front = s.d.addr("web");
    for _ in 0..20 {
        let mut c = std::net::TcpStream::connect(front).unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
    }
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(15), "3 s of pool history", || {
            history_points(&s, "pool/app") >= 3
        })
    });

    let shots = tempfile::tempdir().unwrap();
    let mut br = Browser::start(&format!("{}/", s.api), shots.path());
    br.expect("LOGIN-SHOWN", Duration::from_secs(30));
    let loaded = br.expect("LOADED", Duration::from_secs(20));
    assert_eq!(loaded.get(1).map(String::as_str), Some("app"), "the configured pool: {loaded:?}");
    br.expect("LIVE", Duration::from_secs(20));
    // The 20 connections above came from 127.0.0.1: the busiest (and only) client.
    let clients = br.expect("CLIENTS", Duration::from_secs(20));
    assert_eq!(clients[1..3], ["127.0.0.1", "web"], "top clients: {clients:?}");
    assert_eq!(clients.get(5).map(String::as_str), Some("20"), "connections: {clients:?}");
    let chart = br.expect("CHART", Duration::from_secs(20));
    let (first, points, opened): (u64, u64, u64) =
        (chart[1].parse().unwrap(), chart[2].parse().unwrap(), chart[3].parse().unwrap());
    assert!(first < opened, "the chart starts at {first}, not before the page opened at {opened}");
    assert!(points >= 3, "the chart holds {points} points");
    br.expect("READY", Duration::from_secs(20));

    // Killed: its listener closes, connects are refused. fall × interval + timeout + 1 s.
    let limit = 2.0 * 1.0 + 0.5 + 1.0;
    drop(a);
    br.send(&format!("KILLED {a_addr} {limit}"));
    let down = br.expect("DOWN", Duration::from_secs(20));
    let took: f64 = down[1].parse().unwrap();
    eprintln!("the page showed {a_addr} down {took} s after it was killed (limit {limit} s)");
    assert!(took <= limit, "the page showed the server down after {took} s, limit {limit} s");

    br.send(&format!("DRAIN {b_addr}"));
    br.expect("DRAINED", Duration::from_secs(20));
    tokio::task::block_in_place(|| {
        assert_eq!(server_state(&s, &b_addr), "drain", "the API confirms the drain");
    });
    let phone = br.expect("PHONE", Duration::from_secs(20));
    let overflow: i64 = phone[1].parse().unwrap();
    assert!(overflow <= 0, "a phone-sized window scrolls sideways by {overflow} px");
    let console = br.expect("CONSOLE", Duration::from_secs(20));
    assert_eq!(console[1..].join(" "), "[]", "errors in the browser console");
    br.expect("DONE", Duration::from_secs(20));

    for shot in ["dashboard.png", "dashboard-down.png", "dashboard-phone.png"] {
        let len = std::fs::metadata(shots.path().join(shot)).map_or(0, |m| m.len());
        assert!(len > 10_000, "screenshot {shot} is {len} bytes");
    }
    // `FULCRUM_DASHBOARD_SHOTS=dir` keeps them (docs/dashboard.png comes from here).
    if let Ok(keep) = std::env::var("FULCRUM_DASHBOARD_SHOTS") {
        for shot in ["dashboard.png", "dashboard-down.png", "dashboard-phone.png"] {
            std::fs::copy(shots.path().join(shot), Path::new(&keep).join(shot)).unwrap();
        }
    }
    // The kill and the drain are recent events.
    tokio::task::block_in_place(|| {
        let ev = s.get("/api/v1/events");
        let kinds: Vec<(String, String)> = ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["kind"].as_str().unwrap().into(), e["message"].as_str().unwrap().into()))
            .collect();
        assert!(
            kinds.iter().any(|(k, m)| k == "health" && m.contains(&a_addr) && m.contains("down")),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().any(|(k, m)| k == "server" && m.contains(&b_addr) && m.contains("drain")),
            "{kinds:?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_every_data_route_answers_401_and_the_page_is_a_login() {
    let a = Backend::start(Mode::Echo).await;
    let s = start(&dashboard_config(&[a.addr.to_string()], ""));
    tokio::task::block_in_place(|| {
        let data: [(&str, &str); 10] = [
            ("GET", "/api/v1/overview"),
            ("GET", "/api/v1/history"),
            ("GET", "/api/v1/history?series=pool/app&range=day"),
            ("GET", "/api/v1/events"),
            ("POST", "/api/v1/session"),
            ("GET", "/api/v1/stream"),
            ("GET", "/api/v1/config"),
            ("POST", "/api/v1/config/check"),
            ("POST", "/api/v1/config/apply"),
            ("GET", "/api/v1/pools"),
        ];
        for (m, route) in data {
            for token in [None, Some("wrong")] {
                let r = call(m, &format!("{}{route}", s.api), token, None);
                assert_eq!(r.status, 401, "{m} {route} with {token:?}: {}", r.body);
            }
            // (The stream with the token never ends: its own test reads it.)
            if route != "/api/v1/stream" {
                let body = Some(json!({"config": "x"}));
                let r = call(m, &format!("{}{route}", s.api), Some(TOKEN), body);
                assert_ne!(r.status, 401, "{m} {route} with the token: {}", r.body);
            }
        }
        // As documented: /metrics, /readyz and /healthz need no token.
        for route in ["/metrics", "/readyz", "/healthz"] {
            assert_eq!(
                call("GET", &format!("{}{route}", s.api), None, None).status,
                200,
                "{route}"
            );
        }
        // The page itself holds no data: it is the login, with a strict policy.
        let page = call("GET", &format!("{}/", s.api), None, None);
        assert_eq!(page.status, 200);
        let text = page.body.as_str().unwrap().to_string();
        assert!(text.contains("id=\"login\"") && text.contains("src=\"/app.js\""), "{text}");
        assert!(!text.contains("<script>"), "no inline script");
        let csp = page.headers.iter().find(|(k, _)| k == "content-security-policy").unwrap();
        assert!(csp.1.contains("frame-ancestors 'none'") && csp.1.contains("default-src 'self'"));
        for asset in ["/app.js", "/app.css", "/favicon.svg"] {
            let r = call("GET", &format!("{}{asset}", s.api), None, None);
            assert_eq!(r.status, 200, "{asset}");
            assert!(r.headers.iter().any(|(k, _)| k == "content-security-policy"), "{asset}");
        }
    });
}

/// Reads a raw HTTP/1.1 answer from `stream` until `want` appears or `limit` passes.
fn read_until(stream: &mut std::net::TcpStream, want: &str, limit: Duration) -> String {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !String::from_utf8_lossy(&got).contains(want) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_takes_an_httponly_samesite_strict_cookie_and_ticks_every_second() {
    let a = Backend::start(Mode::Echo).await;
    let s = start(&dashboard_config(&[a.addr.to_string()], ""));
    tokio::task::block_in_place(|| {
        let r = call("POST", &format!("{}/api/v1/session", s.api), Some(TOKEN), None);
        assert_eq!(r.status, 204, "{}", r.body);
        let set = r.cookie.expect("a Set-Cookie header");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/api/v1/stream"] {
            assert!(set.contains(part), "{part} missing from {set}");
        }
        let cookie = set.split(';').next().unwrap().to_string();
        let host = s.api.trim_start_matches("http://").to_string();
        let mut c = std::net::TcpStream::connect(&host).unwrap();
        write!(c, "GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n")
            .unwrap();
        let text = read_until(&mut c, "event: tick", Duration::from_secs(5));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/event-stream"), "{text}");
        // The first tick comes at once, the next within about a second.
        let more = read_until(&mut c, "event: tick", Duration::from_secs(3));
        assert!(more.contains("event: tick") && more.contains("\"pools\""), "{more}");
        // A made-up cookie is refused.
        let mut bad = std::net::TcpStream::connect(&host).unwrap();
        write!(
            bad,
            "GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\nCookie: fulcrum_stream=00\r\n\r\n"
        )
        .unwrap();
        let text = read_until(&mut bad, "\r\n\r\n", Duration::from_secs(5));
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_box_checks_applies_keeping_bak_and_refuses_a_read_only_file() {
    let a = Backend::start(Mode::Echo).await;
    let b = Backend::start(Mode::Echo).await;
    let s = start(&dashboard_config(&[a.addr.to_string()], ""));
    let original = std::fs::read_to_string(s.path()).unwrap();
    let post = |route: &str, text: &str| {
        call("POST", &format!("{}{route}", s.api), Some(TOKEN), Some(json!({ "config": text })))
    };
    tokio::task::block_in_place(|| {
        let view = s.get("/api/v1/config");
        assert_eq!(view["text"], original.as_str());
        assert_eq!(view["writable"], true);
        // The errors `fulcrum check` gives, with line and key.
        let bad = original.replace("pool = \"app\"", "pool = \"nope\"");
        let r = post("/api/v1/config/check", &bad);
        assert_eq!(r.status, 400, "{}", r.body);
        let errors = r.body["errors"].to_string();
        assert!(errors.contains("nope") && errors.contains("fulcrum.toml:3"), "{errors}");
        // A good one: valid, then applied, the old file kept as .bak, and serving.
        let good = original
            .replace(&format!("\"{}\"]", a.addr), &format!("\"{}\", \"{}\"]", a.addr, b.addr));
        let r = post("/api/v1/config/check", &good);
        assert_eq!((r.status, r.body["valid"].clone()), (200, json!(true)), "{}", r.body);
        let r = post("/api/v1/config/apply", &good);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(std::fs::read_to_string(s.path()).unwrap(), good);
        let bak = s.dir.path().join("fulcrum.toml.bak");
        assert_eq!(std::fs::read_to_string(&bak).unwrap(), original);
        let pools = s.get("/api/v1/pools");
        assert_eq!(pools["pools"][0]["servers"].as_array().unwrap().len(), 2, "{pools}");
        // The live view counts the reload and says how long the daemon has run.
        wait_until(Duration::from_secs(5), "the overview to count the reload", || {
            s.get("/api/v1/overview")["reloads"] == 1
        });
        assert!(s.get("/api/v1/overview")["uptime_s"].is_u64());
        // Read-only: refused, nothing written.
        let mut perm = std::fs::metadata(s.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
        std::fs::set_permissions(s.path(), perm).unwrap();
        assert_eq!(s.get("/api/v1/config")["writable"], false);
        let r = post("/api/v1/config/apply", &original);
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains("not writable"), "{}", r.body);
        assert_eq!(std::fs::read_to_string(s.path()).unwrap(), good, "nothing written");
        let events = s.get("/api/v1/events")["events"].to_string();
        assert!(events.contains("\"reload\"") && events.contains("config_error"), "{events}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_hidden_in_the_config_view_and_put_back_on_apply() {
    let a = Backend::start(Mode::Echo).await;
    let hook = "http://user:hunter2@127.0.0.1:9/hook";
    let extra = format!(
        "\n[pool.app.scale_out]\nthreshold = 100.0\nwindow = \"10s\"\nwebhook = \"{hook}\"\n"
    );
    let toml = dashboard_config(&[a.addr.to_string()], "")
        .replace("\n[admin]", &format!("{extra}\n[admin]"));
    let s = start(&toml);
    tokio::task::block_in_place(|| {
        let view = s.get("/api/v1/config");
        let text = view["text"].as_str().unwrap().to_string();
        assert!(!text.contains("hunter2") && text.contains("webhook = \"<hidden>\""), "{text}");
        let edited = text.replace("threshold = 100.0", "threshold = 200.0");
        let r = call(
            "POST",
            &format!("{}/api/v1/config/apply", s.api),
            Some(TOKEN),
            Some(json!({ "config": edited })),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let on_disk = std::fs::read_to_string(s.path()).unwrap();
        assert!(on_disk.contains("threshold = 200.0") && on_disk.contains(hook), "{on_disk}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_tls() {
    let a = Backend::start(Mode::Echo).await;
    let pki = Pki::new();
    pki.ca("ca", "fulcrum test CA");
    pki.leaf("ca", "admin", "localhost", "DNS:localhost,IP:127.0.0.1");
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        pki.toml("admin.pem"),
        pki.toml("admin.key")
    );
    let s = start(&dashboard_config(&[a.addr.to_string()], &tls));
    let https = s.api.replace("http://", "https://");
    tokio::task::block_in_place(|| {
        let curl = |route: &str, extra: &[&str]| {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "10", "--cacert"])
                .arg(pki.path("ca.pem"))
                .args(extra)
                .arg(format!("{https}{route}"))
                .output()
                .expect("curl (apt-get install curl)");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let auth = format!("Authorization: Bearer {TOKEN}");
        let (ok, body, err) = curl("/api/v1/overview", &["-H", &auth]);
        assert!(ok && body.contains("\"pools\""), "{body} {err}");
        let (ok, body, err) = curl("/", &[]);
        assert!(ok && body.contains("<title>fulcrum</title>"), "{body} {err}");
        let (ok, head, err) =
            curl("/api/v1/session", &["-X", "POST", "-H", &auth, "-D", "-", "-o", "/dev/null"]);
        assert!(ok && head.contains("; Secure"), "the cookie is Secure over TLS: {head} {err}");
        // Plain HTTP to the TLS listener gets no answer.
        let r = ureq::get(&format!("{}/healthz", s.api)).call();
        assert!(r.is_err(), "plain HTTP was answered");
    });
}
