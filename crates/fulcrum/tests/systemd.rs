//! `fulcrum run` under systemd's notify protocol, with a test socket at `NOTIFY_SOCKET`
//! standing in for the service manager: `READY=1` only once the frontends accept,
//! `RELOADING=1` (with `MONOTONIC_USEC`) then `READY=1` around a SIGHUP reload, watchdog
//! pings at half of `WATCHDOG_USEC`, `STOPPING=1` at shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One notification as it arrived, and whether the frontend accepted a connection right then.
struct Note {
    at: Instant,
    text: String,
    frontend_accepted: Option<bool>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_reloading_watchdog_and_stopping() {
    let echo = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    for _ in 0..5 {
        let port = free_tcp_and_udp_port();
        let front = format!("127.0.0.1:{port}");
        let config = dir.path().join("fulcrum.toml");
        std::fs::write(
            &config,
            format!(
                "workers = 1\n[frontend.l4]\nbind = \"{front}\"\npool = \"app\"\n\
                 [pool.app]\nservers = [\"{}\"]\n",
                echo.addr
            ),
        )
        .unwrap();
        // The listener: records every datagram; at READY=1 it proves the frontend accepts.
        let notes: Arc<Mutex<Vec<Note>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = {
            let (sock, notes, stop, front) =
                (sock.try_clone().unwrap(), notes.clone(), stop.clone(), front.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(n) = sock.recv(&mut buf) else { continue };
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let first_ready = text.lines().any(|l| l == "READY=1")
                        && !notes.lock().unwrap().iter().any(|n| n.text.contains("READY=1"));
                    let frontend_accepted = first_ready.then(|| echo_once(&front));
                    notes.lock().unwrap().push(Note {
                        at: Instant::now(),
                        text,
                        frontend_accepted,
                    });
                }
            })
        };
        let notify_env = format!("NOTIFY_SOCKET={}", sock_path.display());
        let started = Daemon::try_spawn(
            &["env", &notify_env, "WATCHDOG_USEC=400000"],
            &["run", "--config", config.to_str().unwrap()],
        );
        let Ok(mut d) = started else {
            // The probed port was taken before the daemon bound it: another one.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            listener.join().unwrap();
            continue;
        };
        let has = |notes: &Arc<Mutex<Vec<Note>>>, what: &str| {
            notes.lock().unwrap().iter().filter(|n| n.text.lines().any(|l| l == what)).count()
        };
        wait_until(Duration::from_secs(10), "READY=1", || has(&notes, "READY=1") >= 1);
        {
            let n = notes.lock().unwrap();
            let ready = n.iter().find(|n| n.text.contains("READY=1")).unwrap();
            assert_eq!(ready.frontend_accepted, Some(true), "READY=1 before the frontend accepted");
            assert!(
                n.iter()
                    .take_while(|x| !x.text.contains("READY=1"))
                    .all(|x| !x.text.contains("RELOADING")),
                "nothing but READY first"
            );
        }
        // Watchdog: WATCHDOG_USEC = 400 ms, so a ping about every 200 ms.
        wait_until(Duration::from_secs(10), "six watchdog pings", || {
            has(&notes, "WATCHDOG=1") >= 6
        });
        {
            let n = notes.lock().unwrap();
            let pings: Vec<Instant> = n
                .iter()
                .filter(|x| x.text.lines().any(|l| l == "WATCHDOG=1"))
                .map(|x| x.at)
                .collect();
            let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.sort();
            let median = gaps[gaps.len() / 2];
            assert!(
                median >= Duration::from_millis(120) && median <= Duration::from_millis(320),
                "median gap between pings {median:?}, want about 200 ms (half of 400 ms)"
            );
        }
        // A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
        let readies_before = has(&notes, "READY=1");
        d.signal(rustix::process::Signal::HUP);
        wait_until(Duration::from_secs(10), "READY=1 after the reload", || {
            has(&notes, "READY=1") > readies_before
        });
        {
            let n = notes.lock().unwrap();
            let reloading = n.iter().position(|x| x.text.lines().any(|l| l == "RELOADING=1"));
            let reloading = reloading.expect("RELOADING=1 sent");
            assert!(n[reloading].text.contains("MONOTONIC_USEC="), "{}", n[reloading].text);
            let ready_after =
                n.iter().rposition(|x| x.text.lines().any(|l| l == "READY=1")).unwrap();
            assert!(ready_after > reloading, "READY=1 follows RELOADING=1");
        }
        d.signal(rustix::process::Signal::TERM);
        d.wait_exit(Duration::from_secs(20));
        wait_until(Duration::from_secs(5), "STOPPING=1", || has(&notes, "STOPPING=1") >= 1);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        listener.join().unwrap();
        return;
    }
    panic!("no free port in 5 tries");
}

/// Connects to `front`, sends a byte and reads it back through the echo server.
fn echo_once(front: &str) -> bool {
    let Ok(mut c) = std::net::TcpStream::connect(front) else { return false };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut b = [0u8; 1];
    c.write_all(b"x").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"x"
}
