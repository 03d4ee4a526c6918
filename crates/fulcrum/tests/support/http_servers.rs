// The servers and clients of tests/http.rs: nginx with `stub_status` (started by
// `support/servers.rs`), curl, scripted HTTP/1 servers that count what reaches them, and a
// response reader. Included by `include!` (a file directly in tests/ would be a test binary of
// its own), so it shares http.rs's imports.

/// nginx on a free loopback port, serving its name, the forwarding headers it received and
/// its `stub_status` (whose `accepts` counts the connections it was opened).
type Nginx = TestServer;

impl Nginx {
    fn start(name: &str) -> Nginx {
        nginx_http(|port| {
            format!(
                r#"
    server {{
        listen 127.0.0.1:{port};
        location = /nginx_status {{ stub_status; }}
        location /headers {{
            return 200 "xff=$http_x_forwarded_for|xfp=$http_x_forwarded_proto|xfh=$http_x_forwarded_host|via=$http_via|rid=$http_x_request_id|conn=$http_connection|drop=$http_x_drop|host=$host\n";
        }}
        location / {{ return 200 "{name} $request_method $request_uri\n"; }}
    }}
"#
            )
        })
    }

    /// Connections nginx has accepted so far (`stub_status`), asked directly: each asking
    /// counts one itself.
    fn accepts(&self) -> u64 {
        let (_, body, _) = curl(&[&format!("http://{}/nginx_status", self.addr())]);
        // "Active connections: 1 \nserver accepts handled requests\n 5 5 9 \n..."
        let line = body.lines().nth(2).unwrap_or_default();
        line.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// Runs curl: (status, body, response headers lower-cased).
fn curl(args: &[&str]) -> (u16, String, HashMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-D"])
        .arg(&hdr)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let mut headers = HashMap::new();
    for line in std::fs::read_to_string(&hdr).unwrap_or_default().lines() {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    (code.trim().parse().unwrap_or(0), body.to_string(), headers)
}

/// The access-log lines the daemon has written so far.
fn access(d: &Daemon) -> Vec<serde_json::Value> {
    d.log.lock().unwrap().iter().filter(|v| v["target"] == "fulcrum::access").cloned().collect()
}

fn http_config(workers: usize, servers: &str, frontend_extra: &str, pool_extra: &str) -> String {
    format!(
        r#"
workers = {workers}
drain_timeout = "5s"
access_log = true

[frontend.web]
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"
{frontend_extra}

[pool.app]
servers = [{servers}]
connect_timeout = "1s"
{pool_extra}
"#
    )
}

/// Reads one response whose body has a content-length.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0usize);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return text,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
        }
    }
}

/// What a scripted HTTP/1 server does with a request.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Answers 200 with its name, keep-alive.
    Answer,
    /// Reads the request (and its body) and closes without a word.
    CloseAfterBody,
    /// Reads the head and never answers.
    Stall,
    /// Answers like `Answer`, 600 ms after the request.
    Slow,
}

/// A small HTTP/1 server that counts requests by method.
struct Scripted {
    addr: SocketAddr,
    requests: Arc<Mutex<HashMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Scripted {
    fn start(name: &'static str, script: Script) -> Scripted {
        let l = listen_any();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (r, c) = (requests.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let r = r.clone();
                c.lock().unwrap().push(tokio::spawn(scripted_conn(s, name, script, r)));
            }
        });
        Scripted { addr, requests, stop, task, conns }
    }

    fn count(&self, method: &str) -> u64 {
        self.requests.lock().unwrap().get(method).copied().unwrap_or(0)
    }

    /// Gone at once: listener and every connection closed.
    fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn scripted_conn(
    mut s: TcpStream,
    name: &str,
    script: Script,
    requests: Arc<Mutex<HashMap<String, u64>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let method = head.split(' ').next().unwrap_or("").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if script == Script::Stall {
            *requests.lock().unwrap().entry(method).or_default() += 1;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        while buf.len() < end + 4 + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..end + 4 + len);
        *requests.lock().unwrap().entry(method.clone()).or_default() += 1;
        if script == Script::CloseAfterBody {
            return;
        }
        if script == Script::Slow {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        // Its name, the request line's method and target, and two headers routes change.
        let target = head.split(' ').nth(1).unwrap_or("");
        let header = |n: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(n).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let body = format!(
            "{name} {method} {target} route={} secret={}\n",
            header("x-route"),
            header("x-secret")
        );
        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Sends `n` GETs over one keep-alive connection after another (a new one after each
/// failure), returning how many were not answered 200.
async fn get_loop(front: SocketAddr, n: usize, done: &AtomicU64) -> usize {
    let mut failed = 0;
    let mut s = TcpStream::connect(front).await.unwrap();
    for _ in 0..n {
        let ok = s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.is_ok() && {
            let r = read_response(&mut s).await;
            r.starts_with("HTTP/1.1 200")
        };
        done.fetch_add(1, Ordering::SeqCst);
        if !ok {
            failed += 1;
            s = TcpStream::connect(front).await.unwrap();
        }
    }
    failed
}
