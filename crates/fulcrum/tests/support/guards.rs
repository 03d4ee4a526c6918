// What the guard tests (access lists, per-client limits) share: a daemon in a folder the
// test keeps, `fulcrum ctl` against it and its rejection counters; clients playing several
// loopback addresses (127.0.0.x); the small backends they count on (an echo check over TCP,
// a counting HTTP/1 server, a UDP echo server). Included (`include!`) by those tests; they
// use `common` and tokio's net types.

/// A daemon whose config (and list and state files) live in a folder the test keeps, so it
/// can rewrite them, reload, and start again on the same state.
struct Setup {
    d: Daemon,
    api: String,
    dir: PathBuf,
}

fn start_in(dir: &Path, toml: &str) -> Setup {
    let path = dir.join("fulcrum.toml");
    std::fs::write(&path, toml).unwrap();
    let d = Daemon::spawn(&["run", "--config", path.to_str().unwrap()]);
    let api = d.find("admin API listening").expect("admin API listening")["address"]
        .as_str()
        .unwrap()
        .to_string();
    Setup { d, api: format!("http://{api}"), dir: dir.to_path_buf() }
}

/// `fulcrum ctl ARGS` against the daemon: (exit code, stdout and stderr).
fn ctl(s: &Setup, args: &[&str]) -> (i32, String) {
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args(["ctl", "--api", &s.api])
            .args(args)
            .env_remove("FULCRUM_ADMIN_TOKEN")
            .env_remove("FULCRUM_API")
            .output()
            .unwrap()
    });
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap(), text)
}

fn rejections(s: &Setup, frontend: &str, reason: &str) -> f64 {
    metric(
        &s.api,
        &format!("fulcrum_rejections_total{{frontend=\"{frontend}\",reason=\"{reason}\"}}"),
    )
}

/// How long one exchange may take before the test fails.
const ADDR_LIMIT: Duration = Duration::from_secs(10);

fn from(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A TCP connection from `ip` to `to`. A refused client may see the reset already here.
async fn try_connect_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind((ip, 0).into()).unwrap();
    tokio::time::timeout(ADDR_LIMIT, sock.connect(to)).await.expect("connect timed out")
}

/// A TCP connection from `ip` to `to` that must be accepted.
async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    try_connect_from(ip, to).await.unwrap()
}

/// Sends a line on `s` and reads it back from the echo backend: true when it came back,
/// false when the balancer closed or reset the connection.
async fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping\n").await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    let read = async {
        while got.len() < 5 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    let ok = tokio::time::timeout(ADDR_LIMIT, read).await.expect("no answer and no close");
    ok && got == b"ping\n"
}

/// Whether a new connection from `ip` is served (echoed) through `front`.
async fn served(ip: Ipv4Addr, front: SocketAddr) -> bool {
    match try_connect_from(ip, front).await {
        Ok(mut s) => echoes(&mut s).await,
        Err(_) => false,
    }
}

/// A minimal HTTP/1 server on 127.0.0.1:0 answering every request with 200 and closing,
/// counting the connections it accepts.
struct HttpBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpBackend {
    fn start() -> HttpBackend {
        let l = listen_any();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicU64::new(0));
        let a = accepts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer =
                        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        HttpBackend { addr, accepts, task }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A GET from `ip` through `front`: the status line, or `None` when the connection was closed
/// without an answer.
async fn http_get(ip: Ipv4Addr, front: SocketAddr) -> Option<String> {
    let mut s = try_connect_from(ip, front).await.ok()?;
    let req = "GET / HTTP/1.1\r\nHost: acl.test\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return None;
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(ADDR_LIMIT, s.read_to_end(&mut out)).await.expect("no answer");
    if read.is_err() || out.is_empty() {
        return None;
    }
    String::from_utf8_lossy(&out).lines().next().map(str::to_string)
}

/// A UDP echo server on 127.0.0.1:0 counting the datagrams it receives.
struct UdpBackend {
    addr: SocketAddr,
    datagrams: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpBackend {
    async fn start() -> UdpBackend {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let datagrams = Arc::new(AtomicU64::new(0));
        let n = datagrams.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((len, peer)) = sock.recv_from(&mut buf).await else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let _ = sock.send_to(&buf[..len], peer).await;
            }
        });
        UdpBackend { addr, datagrams, task }
    }

    fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::SeqCst)
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP client bound to `ip`.
async fn udp_from(ip: Ipv4Addr, front: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).await.unwrap();
    s.connect(front).await.unwrap();
    s
}

/// Sends one datagram and waits up to `limit` for its echo.
async fn udp_echoes(s: &UdpSocket, limit: Duration) -> bool {
    s.send(b"hello").await.unwrap();
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(limit, s.recv(&mut buf)).await, Ok(Ok(5)))
}

