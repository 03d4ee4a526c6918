//! The control plane under a stream of changes: a runtime change restarts only the tasks of
//! pools whose task settings changed, so health-check runs (and scale windows, pull
//! rotations) are not reset by every API call or agent registration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn call(method: &str, url: &str, body: Value) -> u16 {
    tokio::task::block_in_place(|| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let r = match method {
            "POST" => {
                agent.post(url).header("Content-Type", "application/json").send(body.to_string())
            }
            _ => agent.patch(url).header("Content-Type", "application/json").send(body.to_string()),
        };
        r.unwrap().status().as_u16()
    })
}

/// Before: every change restarted every pool's checker, so a server needing 5 failed checks in
/// a row was never marked down while changes came faster than 5 intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_runs_survive_changes_to_other_pools() {
    let up = Backend::start(Mode::Echo).await;
    let dead = closed_port();
    let other = Backend::start(Mode::Echo).await;
    let toml = format!(
        r#"
workers = 1
[admin]
bind = "127.0.0.1:0"

[frontend.web]
bind = "127.0.0.1:0"
pool = "app"

[frontend.other]
bind = "127.0.0.1:0"
pool = "other"

[pool.app]
servers = ["{}", "127.0.0.1:{dead}"]
[pool.app.health]
kind = "tcp"
interval = "200ms"
timeout = "200ms"
rise = 2
fall = 5

[pool.other]
servers = ["{}"]
"#,
        up.addr, other.addr
    );
    let d = Daemon::run_config(&toml);
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    // A change to the other pool every 150 ms: faster than 5 check intervals (1 s).
    let url = format!("{api}/api/v1/pools/other/servers/{}", other.addr);
    let started = Instant::now();
    let mut changes = 0;
    let dead_key = format!("127.0.0.1:{dead}");
    while d.events("server health changed").iter().all(|v| v["server"] != dead_key.as_str()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dead server was never marked down under {changes} changes"
        );
        let weight = 1 + changes % 2;
        assert_eq!(call("PATCH", &url, json!({ "weight": weight })), 200);
        changes += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(changes >= 5, "only {changes} changes happened before the verdict");
    // About 5 intervals after the start (the first round runs at once), not reset by changes.
    assert!(started.elapsed() < Duration::from_secs(4), "down after {:?}", started.elapsed());
}
