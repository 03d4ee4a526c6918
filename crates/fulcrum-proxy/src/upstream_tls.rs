//! TLS to servers (`[pool.NAME.tls]`): a pool's rustls client configurations, the name each
//! server's certificate is checked against, and the handshake with its counters.
//!
//! The configurations are built on the control plane when a change is applied (files read
//! there, never on the data path) and kept by pool name in a [`TlsRegistry`]: a later change
//! builds a pool's again only when its settings changed or one of its files did (modification
//! time and size), so the resolver's and the API's frequent changes read nothing. The system's
//! roots (when no `ca` is given) are read once per process, at their first use.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use fulcrum_config::{PoolTls, ServerAddr};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A pool's handshakes with its servers for clients (health probes are not counted), kept
/// across snapshots and rebuilds by pool name.
#[derive(Debug, Default)]
pub struct UpstreamTlsStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub timeout: AtomicU64,
}

/// Which ALPN list a connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// TCP frontends and tcp/send-expect probes: the pool's `alpn` (none by default).
    Stream,
    /// HTTP/1.1 connections and HTTP probes: `http/1.1`.
    H1,
    /// `[pool.X.http] version = "h2"`: `h2`.
    H2,
}

/// A pool's TLS to its servers, as built from `[pool.NAME.tls]`.
pub struct UpstreamTls {
    stream: TlsConnector,
    h1: TlsConnector,
    h2: TlsConnector,
    /// `server_name`, for every server of the pool.
    server_name: Option<ServerName<'static>>,
    /// Tells HTTP connections made with these settings from others to the same address
    /// (another pool, or these settings before a change): they are never mixed up.
    pub id: u64,
    pub stats: Arc<UpstreamTlsStats>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub fn connector(&self, alpn: Alpn) -> &TlsConnector {
        match alpn {
            Alpn::Stream => &self.stream,
            Alpn::H1 => &self.h1,
            Alpn::H2 => &self.h2,
        }
    }

    /// The name a server's certificate must carry, sent as SNI when it is a DNS name:
    /// `server_name` when set, else the server's host name as configured, else its address
    /// (verified against the certificate's IP addresses; rustls sends no SNI for an IP).
    pub fn name_for(&self, addr: &ServerAddr, socket: SocketAddr) -> ServerName<'static> {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        if addr.ip.is_none()
            && let Ok(n) = ServerName::try_from(addr.host.clone())
        {
            return n;
        }
        ServerName::IpAddress(socket.ip().into())
    }

    /// The handshake of a client's connection, finished by `deadline` (the pool's
    /// `connect_timeout`, shared with the TCP connect) and counted. A failure is an
    /// `io::Error` saying what went wrong ("TLS handshake failed: invalid peer certificate:
    /// UnknownIssuer"); whose fault it is, is `fulcrum_core::blame::connect_failed`'s call,
    /// like any failed connect.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        name: ServerName<'static>,
        alpn: Alpn,
        deadline: Instant,
    ) -> io::Result<TlsStream<TcpStream>> {
        let hs = self.connector(alpn).connect(name, stream);
        match tokio::time::timeout_at(deadline, hs).await {
            Ok(Ok(s)) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                if alpn == Alpn::H2
                    && let Some(p) = s.get_ref().1.alpn_protocol()
                    && p != b"h2"
                {
                    let p = String::from_utf8_lossy(p);
                    let m = format!("the server chose ALPN \"{p}\" where h2 was asked for");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, m));
                }
                Ok(s)
            }
            Ok(Err(e)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                Err(handshake_error(e))
            }
            Err(_) => {
                self.stats.timeout.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))
            }
        }
    }
}

/// Says that the error came from the handshake, keeping an OS error as it is (a local
/// resource running out must still be told from a server's fault).
pub fn handshake_error(e: io::Error) -> io::Error {
    if e.raw_os_error().is_some() {
        return e;
    }
    io::Error::new(e.kind(), format!("TLS handshake failed: {e}"))
}

/// Each pool's built TLS settings by pool name, kept by the engine across changes.
#[derive(Debug, Default)]
pub struct TlsRegistry {
    pools: HashMap<String, Cached>,
}

#[derive(Debug)]
struct Cached {
    settings: PoolTls,
    stamps: Vec<Stamp>,
    tls: Arc<UpstreamTls>,
}

/// A file's modification time and size; `None` when it cannot be read.
type Stamp = Option<(SystemTime, u64)>;

impl TlsRegistry {
    /// Pool `pool`'s TLS for settings `t`: the one built before when nothing changed, else a
    /// new one (its counters carried over). An error names the file or setting and the reason.
    pub fn get(&mut self, pool: &str, t: &PoolTls) -> Result<Arc<UpstreamTls>, String> {
        let stamps = stamps(t);
        let old = self.pools.get(pool);
        if let Some(c) = old
            && c.settings == *t
            && c.stamps == stamps
        {
            return Ok(c.tls.clone());
        }
        let stats = old.map(|c| c.tls.stats.clone()).unwrap_or_default();
        let tls = Arc::new(build(t, stats)?);
        if !t.verify {
            tracing::warn!(
                pool,
                "TLS to the servers of this pool does not verify their certificates (verify = false)"
            );
        }
        self.pools
            .insert(pool.to_string(), Cached { settings: t.clone(), stamps, tls: tls.clone() });
        Ok(tls)
    }

    /// Forgets pools that no longer have TLS.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.pools.retain(|name, _| keep(name));
    }
}

fn stamps(t: &PoolTls) -> Vec<Stamp> {
    let files = [t.ca.as_deref(), t.client_cert.as_ref().map(|c| c.cert.as_path())];
    let key = t.client_cert.as_ref().map(|c| c.key.as_path());
    files.into_iter().chain([key]).flatten().map(stamp).collect()
}

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

// ring's provider is deprecated in rustls 0.23.4x only for lacking post-quantum key exchange;
// kept for its build time, as for the frontends (tls.rs, docs/tls.md).
#[allow(deprecated)]
fn build(t: &PoolTls, stats: Arc<UpstreamTlsStats>) -> Result<UpstreamTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?;
    let builder = if t.verify {
        let roots = match &t.ca {
            Some(path) => Arc::new(ca_file(path)?),
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
    };
    let base = match &t.client_cert {
        Some(files) => {
            let key = crate::tls::certified_key(files, &provider)?;
            builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(key))))
        }
        None => builder.with_no_client_auth(),
    };
    let with_alpn = |alpn: Vec<Vec<u8>>| {
        let mut c = base.clone();
        c.alpn_protocols = alpn;
        TlsConnector::from(Arc::new(c))
    };
    let server_name = match &t.server_name {
        Some(n) => {
            Some(ServerName::try_from(n.clone()).map_err(|e| format!("server_name \"{n}\": {e}"))?)
        }
        None => None,
    };
    Ok(UpstreamTls {
        stream: with_alpn(t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()),
        h1: with_alpn(vec![b"http/1.1".to_vec()]),
        h2: with_alpn(vec![b"h2".to_vec()]),
        server_name,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        stats,
    })
}

/// The CAs of a PEM bundle (`ca`).
fn ca_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("ca {shown}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ca {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("ca {shown}: no usable CA certificate in the file"));
    }
    Ok(roots)
}

/// The system's CA certificates (`/etc/ssl/certs` on Debian, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`), read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(format!(
                    "no CA certificate in the system's store{why}: install ca-certificates or \
                     set ca"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// `verify = false`: any certificate for any name is accepted. The handshake's signatures
/// are still checked, so the server does hold the key of the certificate it showed.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The pool's one client certificate, shown to every server that asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(server_name: Option<&str>) -> UpstreamTls {
        let t = PoolTls {
            ca: None,
            server_name: server_name.map(str::to_string),
            verify: false,
            client_cert: None,
            alpn: vec!["x-test".into()],
        };
        build(&t, Arc::default()).unwrap()
    }

    #[test]
    fn the_name_checked_is_server_name_then_the_host_then_the_address() {
        let by_name = fulcrum_config::parse_dest("db.internal:5432").unwrap();
        let by_ip = fulcrum_config::parse_dest("10.0.0.7:5432").unwrap();
        let sock: SocketAddr = "10.0.0.7:5432".parse().unwrap();
        let t = tls(None);
        assert_eq!(t.name_for(&by_name, sock), ServerName::try_from("db.internal").unwrap());
        let ip = t.name_for(&by_ip, sock);
        assert!(matches!(ip, ServerName::IpAddress(_)), "{ip:?}");
        let t = tls(Some("db.example.com"));
        for a in [&by_name, &by_ip] {
            assert_eq!(t.name_for(a, sock), ServerName::try_from("db.example.com").unwrap());
        }
    }

    #[test]
    fn each_use_offers_its_alpn() {
        let t = tls(None);
        let alpn = |a| t.connector(a).config().alpn_protocols.clone();
        assert_eq!(alpn(Alpn::Stream), [b"x-test".to_vec()]);
        assert_eq!(alpn(Alpn::H1), [b"http/1.1".to_vec()]);
        assert_eq!(alpn(Alpn::H2), [b"h2".to_vec()]);
    }

    #[test]
    fn the_registry_rebuilds_only_on_a_change_and_keeps_the_counters() {
        let dir = std::env::temp_dir().join(format!("fulcrum-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let mut t = PoolTls {
            ca: None,
            server_name: None,
            verify: false,
            client_cert: None,
            alpn: Vec::new(),
        };
        let mut reg = TlsRegistry::default();
        let a = reg.get("app", &t).unwrap();
        a.stats.ok.fetch_add(3, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&a, &reg.get("app", &t).unwrap()), "same settings, same build");
        t.server_name = Some("x.test".into());
        let b = reg.get("app", &t).unwrap();
        assert!(!Arc::ptr_eq(&a, &b) && a.id != b.id);
        assert_eq!(b.stats.ok.load(Ordering::Relaxed), 3, "counters carried over");
        // A CA file that is not one: the error names it.
        t.verify = true;
        t.ca = Some(ca.clone());
        let e = reg.get("app", &t).unwrap_err();
        assert!(e.starts_with(&format!("ca {}: ", ca.display())), "{e}");
        t.ca = Some(dir.join("missing.pem"));
        let e = reg.get("app", &t).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
