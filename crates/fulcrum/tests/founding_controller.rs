//! The controller of the shortest-queue balancer, one of the five founding systems, rebuilt
//! as docs/scaling.md's recipe and run exactly as written there: the recipe's config (its
//! ports and folder swapped for the test's), its `scale.env` (paths and addresses swapped)
//! and its two scripts, byte for byte. Load rises: servers are started on free ports,
//! register themselves with only their port, and take clients. Load falls: the idlest is
//! drained and stopped, one per cooldown, never the last. The API lists every event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

/// The files of docs/scaling.md: fenced blocks whose first line is `# file: NAME`.
fn recipe() -> HashMap<String, String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/scaling.md"))
            .unwrap();
    let mut files = HashMap::new();
    let mut lines = doc.lines();
    while let Some(l) = lines.next() {
        if !l.starts_with("```") {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        if let Some(name) = block.first().and_then(|f| f.strip_prefix("# file: ")) {
            files.insert(name.to_string(), block.join("\n") + "\n");
        }
    }
    files
}

/// Replaces `from` (which must be there) by `to`.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the recipe no longer has {from:?}");
    text.replace(from, to)
}

/// Kills whatever the recipe's pid files still name when the test ends, however it ends.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids(&self.0).into_values() {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The recipe's pid files: name → pid.
fn pids(run: &Path) -> HashMap<String, i32> {
    let Ok(dir) = std::fs::read_dir(run) else { return HashMap::new() };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".pid")?.to_string();
        let pid = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
        Some((stem, pid))
    })
    .collect()
}

/// Whether `pid` runs (a zombie nobody reaped yet has stopped).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// A client holding one connection through the balancer; it knows which server took it.
struct Held {
    _s: BufReader<TcpStream>,
    server: String,
}

async fn hold(front: SocketAddr) -> Held {
    let mut s = BufReader::new(TcpStream::connect(front).await.unwrap());
    s.get_mut().write_all(b"WHOAMI\n").await.unwrap();
    let mut name = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut name))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    // `fulcrum backend` answers its name, which defaults to its bound address.
    Held { _s: s, server: name.trim().to_string() }
}

struct Api(String);

impl Api {
    /// The pool's servers: (address, state).
    fn servers(&self) -> Vec<(String, String)> {
        let v = get(&format!("{}/api/v1/pools", self.0));
        v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (s["address"].as_str().unwrap().to_string(), s["state"].as_str().unwrap().into())
            })
            .collect()
    }

    fn addresses(&self) -> Vec<String> {
        self.servers().into_iter().map(|(a, _)| a).collect()
    }

    fn reported(&self, server: &str) -> Option<u64> {
        let v = get(&format!("{}/api/v1/pools", self.0));
        v["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["address"] == server)
            .and_then(|s| s["reported"]["clients"].as_u64())
    }

    fn events(&self) -> Vec<Value> {
        get(&format!("{}/api/v1/scale-events", self.0))["events"].as_array().unwrap().clone()
    }

    /// The scale-in events that named a server, in order.
    fn scaled_in(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["direction"] == "scale_in")
            .filter_map(|e| e["server"].as_str().map(str::to_string))
            .collect()
    }
}

/// Closes the held connections that went to `server`, `n` of them.
fn release(held: &mut Vec<Held>, server: &str, n: usize) {
    for _ in 0..n {
        let i = held.iter().position(|h| h.server == server).expect("a connection to release");
        held.swap_remove(i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipe_starts_registers_uses_drains_and_stops_backends() {
    let files = recipe();
    for f in ["fulcrum.toml", "scale.env", "scale-out.sh", "scale-in.sh"] {
        assert!(files.contains_key(f), "docs/scaling.md has no {f}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    let run = dir.path().join("run");
    let _reaper = Reaper(run.clone());
    for f in ["scale-out.sh", "scale-in.sh"] {
        std::fs::write(dir.path().join(f), &files[f]).unwrap();
    }
    std::fs::write(dir.path().join("agent.key"), "a-key-for-the-scaling-recipe\n").unwrap();
    let mut config = files["fulcrum.toml"].clone();
    for port in ["9090", "7000", "8080"] {
        config = swap(&config, &format!("\"127.0.0.1:{port}\""), "\"127.0.0.1:0\"");
    }
    config = swap(&config, "/etc/fulcrum", &root);
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, &config).unwrap();
    let d = Daemon::spawn(&["run", "--config", path.to_str().unwrap()]);
    let api = Api(format!(
        "http://{}",
        d.find("admin API listening").unwrap()["address"].as_str().unwrap()
    ));
    let agent = d.find("agent listener ready").unwrap()["address"].as_str().unwrap().to_string();
    let front = d.addr("web");

    // scale.env: the recipe's keys, with this test's values.
    let ours = HashMap::from([
        ("FULCRUM", BIN.to_string()),
        ("AGENT", agent),
        ("KEY_FILE", format!("{root}/agent.key")),
        ("RUN_DIR", run.to_str().unwrap().to_string()),
    ]);
    let mut env = String::new();
    for line in files["scale.env"].lines() {
        match line.split_once('=') {
            Some((k, v)) if !line.starts_with('#') => {
                let v = ours.get(k).cloned().unwrap_or_else(|| {
                    assert_eq!(k, "POOL", "a setting the test does not know: {line}");
                    v.to_string()
                });
                env.push_str(&format!("{k}={v}\n"));
            }
            _ => env.push_str(&format!("{line}\n")),
        }
    }
    std::fs::write(dir.path().join("scale.env"), env).unwrap();
    let script = |name: &str, server: Option<&str>| {
        let mut c = std::process::Command::new("sh");
        c.arg(dir.path().join(name));
        if let Some(s) = server {
            c.env("FULCRUM_SERVER", s);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    };

    // The first backend, started by hand as the recipe says.
    script("scale-out.sh", None);
    wait_until_async(LIMIT, "the first backend to register", || api.addresses().len() == 1).await;
    let first = api.addresses()[0].clone();
    assert!(first.starts_with("127.0.0.1:"), "registered at its connection's IP: {first}");

    // Load rises: six clients on one server, above 2 per server. Two scale-outs (6/1, 6/2),
    // then 6/3 is not above 2.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(hold(front).await);
    }
    assert!(held.iter().all(|h| h.server == first));
    // A server may register before the command that started it has ended and been logged.
    let outs = || -> Vec<Value> {
        api.events().into_iter().filter(|e| e["direction"] == "scale_out").collect()
    };
    wait_until_async(LIMIT, "two more backends", || {
        api.addresses().len() == 3 && outs().len() >= 2
    })
    .await;
    let outs = outs();
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert!(outs.iter().all(|e| e["outcome"] == "ok" && e["server"].is_null()), "{outs:?}");
    let started: Vec<String> = api.addresses().into_iter().filter(|a| *a != first).collect();
    let pid_of: HashMap<String, i32> = pids(&run);
    for a in api.addresses() {
        let port = a.rsplit(':').next().unwrap();
        assert!(running(pid_of[port]), "{a} has a running process");
    }

    // They take clients: one of the first server's leaves, a new one comes, twice, keeping
    // the load between the thresholds (5 and 6 clients on 3 servers). New clients go to the
    // new servers, the least loaded.
    for _ in 0..2 {
        release(&mut held, &first, 1);
        let h = hold(front).await;
        assert!(started.contains(&h.server), "a new client went to {}", h.server);
        held.push(h);
    }
    let mut used: Vec<&str> = held.iter().map(|h| h.server.as_str()).collect();
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 3, "every server has clients: {used:?}");
    release(&mut held, &first, 2);
    // 2 + 1 + 1 clients; then 1 + 1 + 1: an average of 1 is not below 1.
    release(&mut held, &first, 1);
    wait_until_async(LIMIT, "the first server's report of 1", || api.reported(&first) == Some(1))
        .await;
    assert!(api.scaled_in().is_empty(), "{:?}", api.events());

    // Load falls: the idlest (the only one without clients) is drained and stopped.
    let idle = started[0].clone();
    release(&mut held, &idle, 1);
    wait_until_async(LIMIT, "the idle backend to be stopped", || !api.addresses().contains(&idle))
        .await;
    // The server leaves the pool when its agent session ends, which may come before the
    // scale event is listed: wait for the event.
    wait_until_async(LIMIT, "the scale-in event", || !api.scaled_in().is_empty()).await;
    assert_eq!(api.scaled_in(), std::slice::from_ref(&idle));
    let idle_port = idle.rsplit(':').next().unwrap();
    wait_until_async(LIMIT, "its process to end", || !running(pid_of[idle_port])).await;
    assert!(!run.join(format!("{idle_port}.pid")).exists());

    // Everyone leaves: of the two idle servers, the one listed last goes; the last one stays.
    let order = api.addresses();
    assert_eq!(order.len(), 2);
    held.clear();
    wait_until_async(LIMIT, "a second scale-in", || api.scaled_in().len() == 2).await;
    assert_eq!(api.scaled_in()[1], order[1], "the last listed on a tie");
    wait_until_async(LIMIT, "it to leave", || api.addresses() == order[..1]).await;
    let port = order[1].rsplit(':').next().unwrap();
    wait_until_async(LIMIT, "its process to end", || !running(pid_of[port])).await;
    // The last server is never named: later scale-ins run with FULCRUM_SERVER empty.
    wait_until_async(LIMIT, "a scale-in that names no server", || {
        api.events()
            .iter()
            .any(|e| e["direction"] == "scale_in" && e["server"].is_null() && e["servers"] == 1)
    })
    .await;
    assert_eq!(api.scaled_in().len(), 2, "{:?}", api.events());
    assert_eq!(api.servers(), [(order[0].clone(), "up".to_string())]);
    assert!(api.events().iter().all(|e| e["outcome"] == "ok"), "{:?}", api.events());

    // The last one is stopped by hand with the same script; no process of the recipe is left.
    script("scale-in.sh", Some(&order[0]));
    for (name, pid) in &pid_of {
        wait_until_async(LIMIT, &format!("backend {name} to end"), || !running(*pid)).await;
    }
    assert!(pids(&run).is_empty(), "pid files left: {:?}", pids(&run));
}
