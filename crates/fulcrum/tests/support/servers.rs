// Real server programs a test starts (nginx, HAProxy): each on a free loopback port (another
// is tried when the port was taken meanwhile), its files in a temporary folder, ready once
// its port accepts, killed on drop. Included by `include!` (a file directly in tests/ would be
// a test binary of its own); the including file imports `Child`, `Command`, `Stdio`,
// `Duration` and `Instant`.

/// A server program run by a test.
#[allow(dead_code)]
struct TestServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl TestServer {
    /// Runs `program` with `args(dir, conf_path)`, its configuration `conf(port, dir)` written
    /// to `dir/conf_name`; `package` is what to install when the program is missing.
    fn run(
        program: &str,
        package: &str,
        conf_name: &str,
        args: impl Fn(&std::path::Path, &std::path::Path) -> Vec<std::ffi::OsString>,
        conf: impl Fn(u16, &std::path::Path) -> String,
    ) -> TestServer {
        for _ in 0..5 {
            let port = closed_port();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(conf_name);
            std::fs::write(&path, conf(port, dir.path())).unwrap();
            let mut child = Command::new(program)
                .args(args(dir.path(), &path))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install {package})"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TestServer { child, port, dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: another one
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("{program} did not start");
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(dead_code)]
/// nginx with `http_body(port)` as the inside of its `http {}` block (temporary paths, error
/// log and pid are set here, in its folder; access logs are off).
fn nginx_http(http_body: impl Fn(u16) -> String) -> TestServer {
    TestServer::run(
        "nginx",
        "nginx-light",
        "nginx.conf",
        |dir, conf| {
            vec!["-e".into(), "stderr".into(), "-p".into(), dir.into(), "-c".into(), conf.into()]
        },
        |port, dir| {
            let d = dir.display();
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n    \
                 access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
                 fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
                 scgi_temp_path {d}/scgi;\n    keepalive_requests 100000;\n{}\n}}\n",
                http_body(port)
            )
        },
    )
}

#[allow(dead_code)]
/// HAProxy with `body` after its `global` and `defaults` sections; `{port}` in `body` is the
/// free port it must bind.
fn haproxy(body: &str) -> TestServer {
    TestServer::run(
        "haproxy",
        "haproxy",
        "haproxy.cfg",
        |_, conf| vec!["-db".into(), "-f".into(), conf.into()],
        |port, _| {
            format!(
                "global\n    log stderr format raw local0 err\ndefaults\n    timeout connect 2s\n    \
                 timeout client 10s\n    timeout server 10s\n{}",
                body.replace("{port}", &port.to_string())
            )
        },
    )
}
