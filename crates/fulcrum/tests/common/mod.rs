//! Shared helpers of the end-to-end tests: the real `fulcrum` binary started on ports from
//! the kernel, scripted backends on 127.0.0.1:0, and waits with deadlines (never sleeps).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// Polls `cond` until it holds or `limit` passes; panics with `what` on timeout.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub async fn wait_until_async(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running `fulcrum` process with its JSON log captured.
pub struct Daemon {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: Arc<Mutex<Vec<serde_json::Value>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// `fulcrum run` with `toml` as its config file.
    pub fn run_config(toml: &str) -> Daemon {
        Daemon::run_config_with(toml, &[])
    }

    /// `fulcrum run` with `toml` as its config file and further flags.
    pub fn run_config_with(toml: &str, flags: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, toml).unwrap();
        let mut args = vec!["run", "--config", path.to_str().unwrap()];
        args.extend_from_slice(flags);
        let mut d = Daemon::spawn(&args);
        d._dir = Some(dir);
        d
    }

    /// `fulcrum ARGS...` (with `--log-format json`), waiting until it has started.
    pub fn spawn(args: &[&str]) -> Daemon {
        Daemon::spawn_with_prefix(&[], args)
    }

    /// Like [`Daemon::run_config`], but `None` when the daemon exits before it has started
    /// (a port taken between choosing it and binding it, for tests that must fix a port).
    pub fn try_run_config(toml: &str) -> Option<Daemon> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, toml).unwrap();
        let mut d = Daemon::try_spawn(&[], &["run", "--config", path.to_str().unwrap()]).ok()?;
        d._dir = Some(dir);
        Some(d)
    }

    /// Like [`Daemon::spawn`], run through a wrapper command such as `prlimit ... --`.
    pub fn spawn_with_prefix(prefix: &[&str], args: &[&str]) -> Daemon {
        Daemon::try_spawn(prefix, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the daemon; `Err` with its output when it exits before it has started.
    pub fn try_spawn(prefix: &[&str], args: &[&str]) -> Result<Daemon, String> {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fulcrum");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let raw: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let log = log.clone();
            let raw = raw.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    match serde_json::from_str(&line) {
                        Ok(v) => log.lock().unwrap().push(v),
                        Err(_) => raw.lock().unwrap().push(line),
                    }
                }
            });
        }
        let mut d = Daemon { child, addrs: HashMap::new(), log, _dir: None };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if d.find("fulcrum started").is_some() {
                break;
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(format!("fulcrum exited early ({st}): {:?}", raw.lock().unwrap()));
            }
            assert!(Instant::now() < end, "fulcrum did not start: {:?}", raw.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
        for v in d.log.lock().unwrap().iter() {
            if v["message"] == "listening" {
                let name = v["frontend"].as_str().unwrap().to_string();
                let addr = v["address"].as_str().unwrap().parse().unwrap();
                d.addrs.insert(name, addr);
            }
        }
        Ok(d)
    }

    pub fn addr(&self, frontend: &str) -> SocketAddr {
        *self.addrs.get(frontend).unwrap_or_else(|| panic!("no frontend {frontend}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first log event whose message is `msg`.
    pub fn find(&self, msg: &str) -> Option<serde_json::Value> {
        self.log.lock().unwrap().iter().find(|v| v["message"] == msg).cloned()
    }

    pub fn count(&self, msg: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|v| v["message"] == msg).count()
    }

    pub fn events(&self, msg: &str) -> Vec<serde_json::Value> {
        self.log.lock().unwrap().iter().filter(|v| v["message"] == msg).cloned().collect()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "fulcrum did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory of the process, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener on 127.0.0.1:0 with a deep accept queue. tokio's `bind` asks for 1,024: a test
/// that opens thousands of connections at once through the balancer can overflow it while the
/// test's own runtime is busy; Linux then drops new SYNs, the balancer's connect retries only
/// after 1 s, which is the tests' `connect_timeout`, and a client is closed for a fault of the
/// test's backend, not the balancer's.
pub fn listen_any() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    s.listen(4096).unwrap();
    TcpListener::from_std(s.into()).unwrap()
}

/// A scripted backend on 127.0.0.1:0.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy)]
pub enum Mode {
    /// Echo every byte back; half-close when the client does.
    Echo,
    /// Write the backend's name and a newline first, then echo.
    Named(&'static str),
    /// Read until EOF, then answer with `n` bytes of a known pattern and close.
    ReadAllThenSend(usize),
}

impl Backend {
    pub async fn start(mode: Mode) -> Backend {
        Backend::on(listen_any(), mode)
    }

    pub fn on(l: TcpListener, mode: Mode) -> Backend {
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicU64::new(0));
        let a = accepts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, mode));
            }
        });
        Backend { addr, accepts, task }
    }

    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, mode: Mode) {
    let _ = s.set_nodelay(true);
    match mode {
        Mode::Named(name) => {
            if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                return;
            }
            echo(s).await
        }
        Mode::Echo => echo(s).await,
        Mode::ReadAllThenSend(n) => {
            let mut sink = Vec::new();
            if s.read_to_end(&mut sink).await.is_err() {
                return;
            }
            let body = pattern(n);
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        }
    }
}

async fn echo(s: TcpStream) {
    let (mut r, mut w) = s.into_split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A TCP port on loopback that nothing listens on right now.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Connects through the balancer and reads the backend's name line.
pub async fn ask_name(front: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(front).await?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A config with one TCP frontend "web" on a kernel port and one pool "app".
pub fn config(workers: usize, algorithm: &str, servers: &str, extra_pool: &str) -> String {
    format!(
        r#"
workers = {workers}
drain_timeout = "10s"

[frontend.web]
bind = "127.0.0.1:0"
pool = "app"

[pool.app]
algorithm = "{algorithm}"
servers = [{servers}]
connect_timeout = "1s"
{extra_pool}
"#
    )
}

pub fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    (d, p)
}

/// GETs `url` and parses the answer as JSON (a string value when it is not JSON). Blocking
/// client, run off the test's async workers.
pub fn get(url: &str) -> serde_json::Value {
    tokio::task::block_in_place(|| {
        let mut r = ureq::get(url).call().unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    })
}

/// The value of the first `/metrics` line of the admin API at `api` that starts with `prefix`
/// (metric name with its labels), or 0 when there is none.
pub fn metric(api: &str, prefix: &str) -> f64 {
    let text = get(&format!("{api}/metrics"));
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A plain-Python program (stdlib sockets, the way the founding systems' users wrote their
/// clients and servers), run with `python3 -u`; what it prints arrives line by line through a
/// channel, so every read has a deadline. Killed on drop.
pub struct Py {
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Py {
    /// Runs `source` with `args`.
    pub fn run(source: &str, args: &[&str]) -> Py {
        let (tx, lines) = std::sync::mpsc::channel();
        let mut py = Py::run_into(source, args, tx);
        py.lines = lines;
        py
    }

    /// Like [`Py::run`], its lines sent to `tx` (several programs may share one channel, so
    /// the order of their lines is the order they printed them).
    pub fn run_into(source: &str, args: &[&str], tx: std::sync::mpsc::Sender<String>) -> Py {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog.py");
        std::fs::write(&path, source).unwrap();
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is missing: apt-get install python3 (.ci/run does)");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Py { child, stdin, lines: std::sync::mpsc::channel().1, _dir: dir }
    }

    /// The next line it prints, waiting at most 20 s.
    pub fn line(&self) -> String {
        self.line_within(Duration::from_secs(20), "a python program")
    }

    /// The next line it prints, waiting at most `limit`; panics naming `what` otherwise.
    pub fn line_within(&self, limit: Duration, what: &str) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no line from {what} within {limit:?}: {e}"))
    }

    /// A line already printed, without waiting.
    pub fn try_line(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Every line it prints until it exits (at most 30 s).
    pub fn rest(&mut self) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return out,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("python program still running after 30 s; printed {out:?}")
                }
            }
        }
    }

    /// Writes one line to its stdin (the scripts here read it as "hang up now").
    pub fn hang_up(&mut self) {
        use std::io::Write;
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"\n").unwrap();
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both a TCP listener and a UDP socket. dnsmasq binds both, and its TCP bind
/// fails on a port that still has TIME_WAIT connections (the tests leave thousands in the
/// ephemeral range): the TCP socket here is bound without `SO_REUSEADDR`, so the kernel offers
/// only a port with no TCP socket on it at all.
pub fn free_tcp_and_udp_port() -> u16 {
    use socket2::{Domain, Socket, Type};
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    for _ in 0..100 {
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        tcp.bind(&any.into()).unwrap();
        let port = tcp.local_addr().unwrap().as_socket().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP in 100 tries");
}

/// Starts the daemon with `config(port)` for a port free for TCP and UDP (frontends of both
/// transports sharing it). Another process may take the port between the probe and the bind:
/// then another port is tried, up to 5.
pub fn run_on_shared_port(config: impl Fn(u16) -> String) -> (Daemon, u16) {
    for _ in 0..5 {
        let port = free_tcp_and_udp_port();
        if let Some(d) = Daemon::try_run_config(&config(port)) {
            return (d, port);
        }
    }
    panic!("fulcrum did not start on a shared TCP+UDP port in 5 tries");
}
