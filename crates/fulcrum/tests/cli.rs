//! The command line as users meet it: version, exit codes, one-line errors that name the key,
//! the quick `forward` form, the demo, and `top`'s options and its refusal without a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn check(toml: &str) -> (i32, String) {
    let (_d, path) = temp_path("bad.toml");
    std::fs::write(&path, toml).unwrap();
    let out =
        Command::new(BIN).args(["check", "--config", path.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "panic: {text}");
    (out.status.code().unwrap(), text)
}

const BASE: &str = r#"
[frontend.web]
bind = "127.0.0.1:8080"
pool = "app"

[pool.app]
servers = ["127.0.0.1:9001"]
"#;

#[test]
fn version_prints_name_and_semver() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.trim(), format!("fulcrum {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_the_documented_example() {
    let (_d, path) = temp_path("ok.toml");
    std::fs::write(
        &path,
        r#"
workers = 2

[frontend.web]
bind = "127.0.0.1:8080"
protocol = "tcp"
pool = "app"

[pool.app]
algorithm = "weighted-round-robin"
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"#,
    )
    .unwrap();
    let out =
        Command::new(BIN).args(["check", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let cases: &[(&str, &str)] = &[
        (&format!("{BASE}\ncolour = 1\n"), "pool.app.colour: unknown key"),
        (&BASE.replace("127.0.0.1:8080", "127.0.0.300:8080"), "frontend.web.bind:"),
        (&BASE.replace("\"127.0.0.1:9001\"", "\"nowhere!:9001\""), "pool.app.servers[0]:"),
        (
            &BASE.replace("[pool.app]", "[pool.app]\nalgorithm = \"fastest\""),
            "pool.app.algorithm: unknown algorithm",
        ),
        (
            &BASE.replace("pool = \"app\"", "pool = \"missing\""),
            "frontend.web.pool: pool \"missing\" is not defined",
        ),
        (
            &BASE.replace("127.0.0.1:8080", "127.0.0.1:65536"),
            "frontend.web.bind: port 65536 is out of range",
        ),
        (
            &BASE.replace("127.0.0.1:9001", "127.0.0.1:99999"),
            "pool.app.servers[0]: port 99999 is out of range",
        ),
    ];
    for (toml, needle) in cases {
        let (code, err) = check(toml);
        assert_eq!(code, 2, "config:\n{toml}\nstderr: {err}");
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        assert!(err.contains("bad.toml:"), "error does not name the file: {err}");
    }
}

#[test]
fn every_error_is_listed_with_its_line() {
    let (code, err) = check(
        "workers = 0\nbogus = true\n[frontend.web]\nbind = \"x\"\npool = \"app\"\n[pool.app]\nservers = [\"1.2.3.4:5\"]\nalgorithm = \"nope\"\n",
    );
    assert_eq!(code, 2);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(lines[0].contains(":1:11: workers:"), "{err}");
    assert!(lines[1].contains(":2:1: bogus: unknown key"), "{err}");
    assert!(lines[2].contains(":4:8: frontend.web.bind:"), "{err}");
    assert!(lines[3].contains(":8:13: pool.app.algorithm:"), "{err}");
}

#[test]
fn check_warns_about_an_unreachable_route_and_passes() {
    let base = BASE.replacen("pool = \"app\"", "protocol = \"http\"\npool = \"app\"", 1);
    let toml = format!(
        "{base}[pool.api]\nservers = [\"127.0.0.1:9002\"]\n\n\
         [[frontend.web.route]]\npath_prefix = \"/api\"\npool = \"api\"\n\n\
         [[frontend.web.route]]\nhost = \"*.example.com\"\npool = \"app\"\n\n\
         [[frontend.web.route]]\npath_prefix = \"/api/v2\"\nmethod = \"GET\"\npool = \"app\"\n"
    );
    let (_d, path) = temp_path("routes.toml");
    std::fs::write(&path, &toml).unwrap();
    let file = path.to_str().unwrap();
    let out = Command::new(BIN).args(["check", "--config", file]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let line = toml.lines().position(|l| l == "path_prefix = \"/api/v2\"").unwrap();
    assert_eq!(
        err.trim_end(),
        format!(
            "warning: {file}:{line}: frontend.web.route[2] is unreachable: \
             route[0] matches every request it does"
        ),
        "the route's [[...]] header is on the line before its first key"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn missing_file_and_usage_errors_exit_2() {
    let out =
        Command::new(BIN).args(["check", "--config", "/nonexistent/f.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/f.toml: cannot read file: no such file")
    );
    for args in [
        &["forward", "8080"][..],
        &["forward", "--algorithm", "nope", "8080", "9001"],
        &["forward", "8080", "99999"],
        &["frobnicate"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!e.contains("panicked"), "{e}");
    }
    let out = Command::new(BIN).args(["forward", "8080", "99999"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "DEST 99999: port 99999 is out of range (0-65535)"
    );
}

#[test]
fn bind_failure_is_one_clear_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    // Without SO_REUSEPORT on the holder, our bind must fail.
    let out = Command::new(BIN).args(["forward", &addr.to_string(), "9001"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    let last = e.lines().last().unwrap_or("");
    assert_eq!(last, format!("fulcrum: cannot bind {addr}: address already in use"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_quick_form_just_works() {
    let a = Backend::start(Mode::Named("a")).await;
    let b = Backend::start(Mode::Named("b")).await;
    let c = Backend::start(Mode::Named("c")).await;
    // Bare ports mean localhost; the third is written in full.
    let (p1, p2) = (a.port().to_string(), b.port().to_string());
    let p3 = format!("127.0.0.1:{}", c.port());
    let d = Daemon::spawn(&[
        "forward",
        "--workers",
        "2",
        "--idle-timeout",
        "60s",
        "--connect-timeout",
        "500ms",
        "--retries",
        "1",
        "127.0.0.1:0",
        &p1,
        &p2,
        &p3,
    ]);
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(ask_name(d.addr("forward")).await.unwrap());
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b", "c", "c"]);
    // One access line per connection, with the documented fields.
    let access = |d: &Daemon| -> Vec<serde_json::Value> {
        d.log.lock().unwrap().iter().filter(|v| v["target"] == "fulcrum::access").cloned().collect()
    };
    let dd = &d;
    wait_until_async(Duration::from_secs(5), "six access lines", || access(dd).len() == 6).await;
    for line in access(&d) {
        assert_eq!(line["frontend"], "forward");
        assert_eq!(line["outcome"], "done", "{line}");
        assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(line["server"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(line["bytes_in"], 0);
        assert_eq!(line["bytes_out"], 2, "{line}"); // the backend's name and a newline
        assert!(line["duration_ms"].is_u64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_can_be_switched_off() {
    let a = Backend::start(Mode::Named("a")).await;
    let p = a.port().to_string();
    let d = Daemon::spawn(&["forward", "--no-access-log", "127.0.0.1:0", &p]);
    for _ in 0..3 {
        assert_eq!(ask_name(d.addr("forward")).await.unwrap(), "a");
    }
    // Log lines are written asynchronously: stop the daemon and wait for its last line, so
    // every line about the connections is in.
    d.signal(rustix::process::Signal::TERM);
    let dd = &d;
    wait_until_async(Duration::from_secs(10), "the last log line", || dd.find("stopped").is_some())
        .await;
    assert!(d.log.lock().unwrap().iter().all(|v| v["target"] != "fulcrum::access"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_park_yield_is_accepted_by_forward_and_run() {
    let a = Backend::start(Mode::Named("a")).await;
    let p = a.port().to_string();
    let d = Daemon::spawn(&["forward", "--no-park-yield", "--workers", "2", "127.0.0.1:0", &p]);
    for _ in 0..3 {
        assert_eq!(ask_name(d.addr("forward")).await.unwrap(), "a");
    }
    let (_dir, path) = temp_path("fulcrum.toml");
    std::fs::write(&path, config(1, "round-robin", &format!("\"127.0.0.1:{p}\""), "")).unwrap();
    let d = Daemon::spawn(&["run", "--no-park-yield", "--config", path.to_str().unwrap()]);
    assert_eq!(ask_name(d.addr("web")).await.unwrap(), "a");
}

#[test]
fn demo_runs_and_shows_each_algorithm() {
    let out = Command::new(BIN).args(["demo", "--connections", "90"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    for algo in ["round-robin", "least-connections", "least-load"] {
        let row = s
            .lines()
            .find(|l| l.starts_with(algo))
            .unwrap_or_else(|| panic!("no row for {algo}: {s}"));
        let nums: Vec<u64> =
            row.split_whitespace().skip(1).take(3).map(|n| n.parse().unwrap()).collect();
        assert_eq!(nums.iter().sum::<u64>(), 90, "{row}");
    }
    let rr = s.lines().find(|l| l.starts_with("round-robin")).unwrap();
    assert!(rr.split_whitespace().skip(1).take(3).all(|n| n == "30"), "{rr}");
    // Column 7 is the count of slow responses, measured in the run: least-load, fed by the
    // backends' own reports, sends fewer clients to the slow backend than round-robin.
    let slow = |algo: &str| -> u64 {
        let row = s.lines().find(|l| l.starts_with(algo)).unwrap();
        row.split_whitespace().nth(6).unwrap().parse().unwrap()
    };
    assert!(slow("least-load") < slow("round-robin"), "{s}");
    // The HTTP part: "/" spread over the site's two backends, "/api/users" routed to the API.
    let http = |req: &str| -> Vec<u64> {
        let row = s.lines().find(|l| l.starts_with(req)).unwrap_or_else(|| panic!("{req}: {s}"));
        row.split_whitespace().skip(2).take(4).map(|n| n.parse().unwrap()).collect()
    };
    assert_eq!(http("GET / "), vec![88, 44, 44, 0], "{s}");
    assert_eq!(http("GET /api/users"), vec![88, 0, 0, 88], "{s}");
    for req in ["GET / ", "GET /api/users"] {
        let row = s.lines().find(|l| l.starts_with(req)).unwrap();
        assert_eq!(row.split_whitespace().last(), Some("0"), "errors: {row}");
    }
    assert!(s.contains("x-request-id: "), "{s}");
}

/// Issue 13, point 12: least-load, fed by the backends' reports, once answered 53 of 300
/// clients slowly where least-connections, which ignores reports, answered 24. It must never
/// know less than least-connections, so over the median of three full demos it may not do
/// worse by more than noise.
#[test]
fn demo_least_load_is_no_slower_than_least_connections() {
    const RUNS: usize = 3;
    const ALGORITHMS: [&str; 3] = ["round-robin", "least-connections", "least-load"];
    // In the demo nobody but the balancer talks to the backends, so both algorithms see the
    // same load and tie in expectation. In twelve runs on a shared 2-core machine both counts
    // stayed within 23–27 but once (37, a run slowed by the neighbours); the median of three
    // drops one such run, and 5 of 300 is still far below the 26–30 answers by which
    // least-load lost before the fix.
    const TOLERANCE: u64 = 5;
    // The default 300 connections: one demo takes about a second.
    let mut slow: [Vec<u64>; 3] = Default::default();
    for run in 0..RUNS {
        let out = Command::new(BIN).arg("demo").output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {:?}\n{s}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for algo in ALGORITHMS {
            assert!(s.lines().any(|l| l.starts_with(algo)), "run {run}: no row for {algo}:\n{s}");
        }
        // "slow answers (slower than 30 ms, of 300): round-robin 100, least-connections 25, …"
        let summary = s
            .lines()
            .find_map(|l| l.strip_prefix("slow answers ("))
            .and_then(|l| l.split_once("): "))
            .map(|(_, counts)| counts)
            .unwrap_or_else(|| panic!("run {run}: no summary line:\n{s}"));
        for (i, algo) in ALGORITHMS.iter().enumerate() {
            let n = summary
                .split(", ")
                .find_map(|p| p.strip_prefix(algo)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("run {run}: no count for {algo}: {summary}"));
            slow[i].push(n.parse().unwrap());
        }
    }
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (lc, ll) = (median(&slow[1]), median(&slow[2]));
    eprintln!("slow answers per run (rr, lc, ll): {slow:?}; medians lc {lc}, ll {ll}");
    assert!(
        ll <= lc + TOLERANCE,
        "least-load median {ll} > least-connections median {lc} + {TOLERANCE}; runs {slow:?}"
    );
}

/// `top` takes `ctl`'s API options (the same flags and environment) and refuses to draw into
/// a pipe, saying what to use instead.
#[test]
fn top_shares_ctl_api_options_and_needs_a_terminal() {
    let help = |cmd: &str| {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (top, ctl) = (help("top"), help("ctl"));
    for opt in [
        "--api <API>",
        "[env: FULCRUM_API=",
        "--token <TOKEN>",
        "[env: FULCRUM_ADMIN_TOKEN",
        "--token-file <TOKEN_FILE>",
    ] {
        assert!(top.contains(opt) && ctl.contains(opt), "{opt}:\n{top}\n{ctl}");
    }
    assert!(top.contains("--interval <INTERVAL>") && top.contains("[default: 1s]"), "{top}");

    let out = Command::new(BIN)
        .args(["top", "--api", "http://127.0.0.1:1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("fulcrum top needs a terminal"), "{err}");
    assert!(err.contains("fulcrum ctl servers list"), "{err}");
    assert!(out.stdout.is_empty(), "nothing drawn into the pipe");

    for bad in ["0s", "2m", "soon"] {
        let out = Command::new(BIN).args(["top", "--interval", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--interval {bad}");
    }
}
