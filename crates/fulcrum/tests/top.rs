//! `fulcrum top` as an operator runs it: the real binary inside a detached tmux session of a
//! fixed size (a private tmux server, killed at the end even when the test fails), against a
//! real daemon whose pool holds two `fulcrum backend` servers, with `fulcrum load` sending
//! traffic. The screen is read with `tmux capture-pane`; every wait polls it under a deadline.
//! Checked: the pool and its servers show, a server's rate rises from idle under load and its
//! sparkline fills, the selection moves with `j`, `d` asks and `n` does nothing, `d` `y`
//! drains the selected server (the API confirms; its rate falls to 0 while the other's
//! stays up), `e` `y` enables it, a wider window widens the rows, `q` exits 0 with the
//! terminal given back (raw mode off as `stty` reads it, alternate screen left, cursor shown),
//! and a new top started once the load has stopped shows it in its sparklines from the
//! daemon's history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "top-token-1";
const TMUX: &str = "tmux";
/// Bound on any one wait for the screen or the API.
const WAIT: Duration = Duration::from_secs(20);

/// A private tmux server (`-S`, its socket in the test's directory) running one session `top`
/// of one pane; killed on drop. Each capture is kept in the test's directory, and printed if
/// the test fails.
struct Tmux {
    socket: PathBuf,
    dir: Option<tempfile::TempDir>,
    last: String,
}

impl Tmux {
    /// Starts the session running what `command` returns, given the test's directory.
    fn start(width: u16, height: u16, command: impl FnOnce(&Path) -> String) -> Tmux {
        let probe = Command::new(TMUX).arg("-V").output();
        assert!(
            probe.is_ok_and(|o| o.status.success()),
            "tmux is missing: apt-get install tmux (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        // A pane whose command ends early stays, so its last screen can still be captured; no
        // status bar, so the pane is the whole window.
        let conf = dir.path().join("tmux.conf");
        std::fs::write(&conf, "set -g remain-on-exit on\nset -g status off\n").unwrap();
        let command = command(dir.path());
        // The server's socket in the test's directory, not tmux's shared one: private to this
        // test, and gone with the directory (kill-server leaves the socket file behind).
        let socket = dir.path().join("tmux.sock");
        let t = Tmux { socket, dir: Some(dir), last: String::new() };
        let out = t
            .cmd()
            .args(["-f", conf.to_str().unwrap(), "new-session", "-d", "-s", "top"])
            .args(["-x", &width.to_string(), "-y", &height.to_string(), &command])
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(TMUX);
        c.arg("-S").arg(&self.socket).stdin(Stdio::null());
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_ref().unwrap().path().join(name)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn capture(&mut self) -> String {
        self.last = self.tmux(&["capture-pane", "-p", "-t", "top"]);
        std::fs::write(self.path("screen.txt"), &self.last).unwrap();
        self.last.clone()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// A tmux format of the pane, e.g. `#{pane_dead}`.
    fn show(&self, format: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "top", format]).trim().to_string()
    }

    /// Captures until `cond` holds on the screen; panics naming `what` at the deadline.
    fn until(&mut self, what: &str, mut cond: impl FnMut(&str) -> bool) -> String {
        let end = Instant::now() + WAIT;
        for _ in 0..10_000 {
            let s = self.capture();
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < end, "timed out after {WAIT:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: no screen matched in 10,000 captures");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = self.dir.take().map(tempfile::TempDir::keep);
            let stderr = keep
                .as_ref()
                .and_then(|d| std::fs::read_to_string(d.join("top.stderr")).ok())
                .unwrap_or_default();
            eprintln!(
                "last screen (kept in {:?}):\n{}\ntop's stderr:\n{stderr}",
                keep.map(|d| d.join("screen.txt")),
                self.last
            );
        }
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// The words of the line that shows `address`, from the address on: address, state, health,
/// active, rate, errors/s, p99, sparkline.
fn server_row<'a>(screen: &'a str, address: &str) -> Option<Vec<&'a str>> {
    let line = screen.lines().find(|l| l.split_whitespace().any(|w| w == address))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == address)?;
    Some(words[at..].to_vec())
}

fn rate(screen: &str, address: &str) -> Option<f64> {
    server_row(screen, address)?.get(4)?.parse().ok()
}

fn state(screen: &str, address: &str) -> Option<String> {
    server_row(screen, address).and_then(|w| w.get(1).map(|s| s.to_string()))
}

fn selected(screen: &str) -> Option<String> {
    let line = screen.lines().find(|l| l.starts_with("> "))?;
    line.split_whitespace().nth(1).map(str::to_string)
}

fn api_get(api: &str, route: &str) -> Value {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut r = agent
        .get(format!("{api}{route}"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// The server's state as the API reports it.
fn api_state(api: &str, address: &str) -> String {
    let v = api_get(api, "/api/v1/pools");
    let servers = v["pools"][0]["servers"].as_array().unwrap().clone();
    let s = servers.iter().find(|s| s["address"] == address).unwrap();
    s["state"].as_str().unwrap().to_string()
}

fn wait_api_state(api: &str, address: &str, want: &str) {
    let end = Instant::now() + WAIT;
    while api_state(api, address) != want {
        assert!(Instant::now() < end, "the API never reported {address} as {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the load client when the test ends, however it ends.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn top_shows_rates_rising_under_load_and_drains_with_its_keys() {
    let (_b1, a1) = {
        let d = Daemon::spawn(&["backend", "--listen", "127.0.0.1:0"]);
        let a = d.addr("backend").to_string();
        (d, a)
    };
    let (_b2, a2) = {
        let d = Daemon::spawn(&["backend", "--listen", "127.0.0.1:0"]);
        let a = d.addr("backend").to_string();
        (d, a)
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("fulcrum.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 1\n\n[frontend.web]\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
             [pool.app]\nservers = [\"{a1}\", \"{a2}\"]\nconnect_timeout = \"1s\"\n\n\
             [admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n"
        ),
    )
    .unwrap();
    let d = Daemon::spawn(&["run", "--config", config.to_str().unwrap()]);
    let api =
        format!("http://{}", d.find("admin API listening").unwrap()["address"].as_str().unwrap());
    let front = d.addr("web");

    // 80x24: the smallest terminal top promises to fit.
    // After top, the shell records its exit status and the terminal's modes, then stays, so
    // the pane can still be asked about its screen and cursor.
    let mut t = Tmux::start(80, 24, |dir| {
        format!(
            "{} top --api {api} --token-file {} 2>{}; echo $? >{}; stty -a >{}; sleep 120",
            quote(Path::new(BIN)),
            quote(&token_file),
            quote(&dir.join("top.stderr")),
            quote(&dir.join("top.status")),
            quote(&dir.join("stty.txt")),
        )
    });

    let idle = t.until("the pool and both servers on screen", |s| {
        s.lines().any(|l| l.starts_with("pool app · round-robin · 2/2 in rotation"))
            && rate(s, &a1).is_some()
            && rate(s, &a2).is_some()
    });
    assert!(idle.starts_with(&format!("fulcrum top · {api} · ")), "{idle}");
    assert!(idle.lines().any(|l| l.split_whitespace().next() == Some("web")), "frontend line");
    let before = rate(&idle, &a1).unwrap();
    assert_eq!(before, 0.0, "nothing sent yet:\n{idle}");
    assert_eq!(idle.lines().count(), 24, "the screen is the pane's 24 lines:\n{idle}");
    assert!(idle.lines().all(|l| l.chars().count() <= 80));

    let load = Load(
        Command::new(BIN)
            .args(["load", &front.to_string(), "--clients", "2", "--duration", "60s"])
            .args(["--no-progress", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let busy = t.until("the first server's rate rising under load", |s| {
        rate(s, &a1).is_some_and(|r| r > before) && rate(s, &a2).is_some_and(|r| r > 0.0)
    });
    // Its sparkline has a bar above the idle one (the row's last word is the sparkline).
    let spark = server_row(&busy, &a1).unwrap().last().unwrap().to_string();
    assert!(spark.chars().any(|c| "▂▃▄▅▆▇█".contains(c)), "sparkline {spark:?}:\n{busy}");
    // The header tells how long the daemon has run; it was never reloaded.
    assert!(
        busy.lines().next().is_some_and(|l| l.contains(" · up ") && l.contains("0 reloads")),
        "{busy}"
    );

    // Select the second server; `d` asks, `n` leaves it alone.
    assert_eq!(selected(&busy).as_deref(), Some(a1.as_str()));
    t.keys(&["j"]);
    t.until("the second server selected", |s| selected(s).as_deref() == Some(a2.as_str()));
    t.keys(&["d"]);
    let ask = format!("drain {a2} in pool app? y: yes, any other key: no");
    t.until("the drain question", |s| s.lines().last() == Some(ask.as_str()));
    t.keys(&["n"]);
    t.until("the question answered no", |s| s.contains(&format!("not done: drain {a2}")));
    assert_eq!(api_state(&api, &a2), "up", "n must not drain");

    t.keys(&["d"]);
    t.until("the drain question again", |s| s.lines().last() == Some(ask.as_str()));
    t.keys(&["y"]);
    wait_api_state(&api, &a2, "drain");
    assert_eq!(api_state(&api, &a1), "up", "only the selected server is drained");
    let drained = t.until("the drained server at 0 conn/s while the other serves", |s| {
        state(s, &a2).as_deref() == Some("drain")
            && rate(s, &a2) == Some(0.0)
            && rate(s, &a1).is_some_and(|r| r > 0.0)
    });
    assert!(drained.contains(&format!("draining {a2} in app")), "{drained}");

    t.keys(&["e"]);
    t.until("the enable question", |s| s.contains(&format!("enable {a2} in pool app?")));
    t.keys(&["y"]);
    wait_api_state(&api, &a2, "up");
    t.until("the enabled server back in rotation", |s| {
        state(s, &a2).as_deref() == Some("up") && s.contains("2/2 in rotation")
    });

    // A wider window: rows take its width (the sparklines grow).
    t.tmux(&["resize-window", "-t", "top", "-x", "120", "-y", "40"]);
    let wide = t.until("rows 120 columns wide", |s| {
        s.lines().any(|l| l.starts_with("> ") && l.chars().count() == 120)
    });
    assert_eq!(wide.lines().count(), 40, "{wide}");
    let final_screen = t.path("final-screen.txt");
    std::fs::write(&final_screen, &wide).unwrap();
    eprintln!("final screen ({}):\n{wide}", final_screen.display());

    t.keys(&["q"]);
    let end = Instant::now() + WAIT;
    let modes = loop {
        // stty writes last: once it has, the status is there too.
        if let Ok(m) = std::fs::read_to_string(t.path("stty.txt")) {
            if !m.is_empty() {
                break m;
            }
        }
        assert!(Instant::now() < end, "top did not exit on q");
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = std::fs::read_to_string(t.path("top.status")).unwrap();
    assert_eq!(status.trim(), "0", "exit status");
    let words: Vec<&str> = modes.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(words.contains(&mode), "raw mode left on ({mode}): {modes}");
    }
    assert_eq!(t.show("#{pane_dead}"), "0", "the shell after top still runs");
    assert_eq!(t.show("#{alternate_on}"), "0", "the alternate screen was left");
    assert_eq!(t.show("#{cursor_flag}"), "1", "the cursor is shown again");
    let stderr = std::fs::read_to_string(t.path("top.stderr")).unwrap();
    assert!(stderr.is_empty(), "top wrote to stderr: {stderr}");

    // With the load stopped (the API's live rate back at 0), a new top starts with the last
    // minutes in its sparklines: its first screen can only have them from the daemon's history.
    drop(load);
    let end = Instant::now() + WAIT;
    while overview_rate(&api, &a1) != Some(0.0) {
        assert!(Instant::now() < end, "the daemon's rate of {a1} never fell back to 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = format!(
        "{} top --api {api} --token-file {} 2>{}; sleep 120",
        quote(Path::new(BIN)),
        quote(&token_file),
        quote(&t.path("top2.stderr")),
    );
    t.tmux(&["respawn-pane", "-k", "-t", "top", &again]);
    let first = t.until("the new top's first screen", |s| rate(s, &a1).is_some());
    assert_eq!(rate(&first, &a1), Some(0.0), "idle now:\n{first}");
    let spark = server_row(&first, &a1).unwrap().last().unwrap().to_string();
    assert!(
        spark.chars().any(|c| "▂▃▄▅▆▇█".contains(c)),
        "no history in the sparkline {spark:?}:\n{first}"
    );
}

/// The server's connection rate in the daemon's live view.
fn overview_rate(api: &str, address: &str) -> Option<f64> {
    let v = api_get(api, "/api/v1/overview");
    let servers = v["pools"][0]["servers"].as_array()?.clone();
    let s = servers.into_iter().find(|s| s["address"] == address)?;
    s["sample"]["conns"].as_f64()
}
