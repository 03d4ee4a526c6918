//! Helpers of the TLS tests: a test PKI made with `openssl` for each run (a server CA with
//! leaves for `a.test` and `*.b.test`, a client CA with a client certificate, and a CA nobody
//! trusts), a backend that answers with the request head it received, and a rustls client that
//! reports the certificate it was served.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

include!("pki.rs");

impl Pki {
    /// The server CA (`ca.pem`) with `a.pem`/`a.key` (`a.test`) and `b.pem`/`b.key`
    /// (`*.b.test`).
    pub fn make() -> Pki {
        Pki::make_for_days(2)
    }

    /// [`Pki::make`] with certificates valid for `days`.
    pub fn make_for_days(days: u32) -> Pki {
        let pki = Pki::new_for_days(days);
        pki.ca("ca", "fulcrum test CA");
        pki.leaf("ca", "a", "a.test", "DNS:a.test");
        pki.leaf("ca", "b", "*.b.test", "DNS:*.b.test");
        pki
    }

    /// [`Pki::make`] plus a client CA (`client-ca.pem`), a client certificate it signed
    /// (`client.pem`/`client.key`, subject `CN=client one,O=Fulcrum Test`) and one signed by a
    /// CA the frontend does not trust (`rogue.pem`/`rogue.key`).
    pub fn with_clients() -> Pki {
        let pki = Pki::make();
        pki.ca("client-ca", "fulcrum client CA");
        pki.cert(
            "client",
            "/O=Fulcrum Test/CN=client one",
            "extendedKeyUsage=clientAuth",
            "client-ca",
        );
        pki.ca("rogue-ca", "someone else's CA");
        pki.cert("rogue", "/CN=rogue", "extendedKeyUsage=clientAuth", "rogue-ca");
        pki
    }

    /// The subject of `{file}.pem` as OpenSSL prints it in RFC 2253 form.
    pub fn subject_rfc2253(&self, file: &str) -> String {
        let pem = format!("{file}.pem");
        let out = self.openssl(&["x509", "-in", &pem, "-noout", "-subject", "-nameopt", "RFC2253"]);
        out.trim().trim_start_matches("subject=").to_string()
    }

    /// `[frontend.web.tls]` serving `a` then `b`, with `extra` lines.
    pub fn tls_table(&self, extra: &str) -> String {
        format!(
            "[frontend.web.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}, \
             {{ cert = \"{}\", key = \"{}\" }}]\n{extra}\n",
            self.path("a.pem").display(),
            self.path("a.key").display(),
            self.path("b.pem").display(),
            self.path("b.key").display()
        )
    }
}

/// An HTTP/1 keep-alive backend whose answer's body is the request head it received, so a test
/// can see every header that reached the server.
pub fn head_echo_backend() -> SocketAddr {
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let addr = std.local_addr().unwrap();
    let l = tokio::net::TcpListener::from_std(std).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let body = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let resp =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The values of header `name` (any case) in a head echoed by [`head_echo_backend`].
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The `fulcrum.toml` of one `https` frontend `web` in front of `server`, with `tls` as its
/// `[frontend.web.tls]` table and an admin API.
pub fn https_config(server: SocketAddr, tls: &str) -> String {
    format!(
        r#"
workers = 2
[admin]
bind = "127.0.0.1:0"

[frontend.web]
bind = "127.0.0.1:0"
protocol = "https"
pool = "app"

{tls}
[pool.app]
servers = ["{server}"]
"#
    )
}

/// A rustls client trusting `ca` (PEM file), without session resumption, so every handshake is
/// a full one that shows the server's certificate.
pub fn client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// One HTTP/1.1 request over a new TLS connection to `front` as `name`: the DER of the leaf
/// certificate served and the response, or what went wrong.
pub async fn fetch_once(
    cfg: &Arc<rustls::ClientConfig>,
    front: SocketAddr,
    name: &str,
) -> Result<(Vec<u8>, String), String> {
    let mut tls = handshake(cfg, front, name).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    let req = format!("GET /x HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    // A server that closes without close_notify is an error to rustls: the response read so
    // far decides.
    let read = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("answer {text:?} (read: {read:?})"));
    }
    Ok((leaf.unwrap_or_default(), text))
}

/// A TLS connection to `front` as `name`, handshake done.
pub async fn handshake(
    cfg: &Arc<rustls::ClientConfig>,
    front: SocketAddr,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(front).await.map_err(|e| format!("connect: {e}"))?;
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// The DER of the first certificate in a PEM file.
pub fn der_of(pem: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(pem).unwrap().next().unwrap().unwrap().to_vec()
}
