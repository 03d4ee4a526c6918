//! TLS termination for `https` frontends: the rustls server configuration built from
//! `[frontend.NAME.tls]` (certificates and client CAs read from their PEM files on the control
//! plane, never on the data path), the certificate chosen by the client's SNI, and client
//! certificates checked against `client_ca`.
//!
//! * `store.rs`: each frontend's loaded material behind an `ArcSwap`, swapped whole when a
//!   reload or a file change brings new certificates (connections keep what they started with).
//! * `x509.rs`: a certificate's subject (RFC 4514) and validity.
//!
//! rustls with the ring provider: it builds about 3× faster than aws-lc-rs here (see the
//! dependency notes) and its TLS 1.3 and 1.2 suites are the modern AEAD ones only.

mod store;
mod x509;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fulcrum_config::{CertFiles, ClientAuth, TlsFrontend, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub use store::{CertInfo, CertRole, Loaded, Refresh, TlsState, TlsStore};
pub use x509::rfc3339;
pub(crate) use x509::subject as certificate_subject;

/// One certificate with the DNS names its subject alternative names give, lower case.
#[derive(Debug)]
struct Entry {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks the certificate for a client's SNI: an exact name first, then a wildcard
/// (`*.example.com` covers one label), else the first certificate (unless strict).
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Entry>,
    strict: bool,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let default = || if self.strict { None } else { self.certs.first().map(|e| e.key.clone()) };
        let Some(name) = sni else { return default() };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(e) = self.certs.iter().find(|e| e.names.contains(&name)) {
            return Some(e.key.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            let wildcard = format!("*.{parent}");
            if let Some(e) = self.certs.iter().find(|e| e.names.contains(&wildcard)) {
                return Some(e.key.clone());
            }
        }
        default()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The bytes of every file a frontend's TLS reads, as read at one moment: what is parsed, and
/// (as digests) what a later look compares against to tell whether anything changed.
pub(crate) struct Files {
    /// Each `{ cert, key }` pair's contents.
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    client_ca: Option<Vec<u8>>,
}

/// SHA-256 of each file, in the order [`Files`] holds them.
pub(crate) type Digests = Vec<[u8; 32]>;

/// Largest certificate, key or CA file read: a CA bundle of every public root is about
/// 200 KiB; a path to something endless (a device, a pipe) must not fill the memory.
const MAX_FILE: u64 = 4 << 20;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let fail =
        |e: std::io::Error| format!("{what} {}: {}", path.display(), fulcrum_config::io_reason(&e));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(fail)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("{what} {}: larger than {} MiB", path.display(), MAX_FILE >> 20));
    }
    Ok(bytes)
}

impl Files {
    pub(crate) fn read(t: &TlsFrontend) -> Result<Files, String> {
        let mut pairs = Vec::with_capacity(t.certificates.len());
        for c in &t.certificates {
            pairs.push((read(&c.cert, "certificate")?, read(&c.key, "private key")?));
        }
        let client_ca = match &t.client_ca {
            Some(p) => Some(read(p, "client_ca")?),
            None => None,
        };
        Ok(Files { pairs, client_ca })
    }

    pub(crate) fn digests(&self) -> Digests {
        let mut out = Vec::with_capacity(self.pairs.len() * 2 + 1);
        for (c, k) in &self.pairs {
            out.push(Sha256::digest(c).into());
            out.push(Sha256::digest(k).into());
        }
        if let Some(ca) = &self.client_ca {
            out.push(Sha256::digest(ca).into());
        }
        out
    }
}

/// Every CERTIFICATE block of a PEM file.
fn certificates(
    bytes: &[u8],
    what: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{what} {}: no CERTIFICATE block in the file", path.display()));
    }
    Ok(chain)
}

/// A PEM certificate chain (leaf first) and the private key that belongs to it, read from
/// their files: the client certificate a pool presents to its servers. An error names the file
/// and the reason.
pub(crate) fn certified_key(
    c: &CertFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let cert = read(&c.cert, "certificate")?;
    let key = read(&c.key, "private key")?;
    certified_key_from(c, &cert, &key, provider)
}

/// [`certified_key`] from the files' contents.
fn certified_key_from(
    c: &CertFiles,
    cert_bytes: &[u8],
    key_bytes: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = certificates(cert_bytes, "certificate", &c.cert)?;
    let (cert_path, key_path) = (c.cert.display(), c.key.display());
    // The leaf is read first, so a broken certificate is named as such rather than as a key
    // that does not match it.
    if let Some(leaf) = chain.first() {
        webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("certificate {cert_path}: {e}"))?;
    }
    let key = PrivateKeyDer::from_pem_slice(key_bytes)
        .map_err(|e| format!("private key {key_path}: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key {key_path}: {e}"))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match()
        .map_err(|e| format!("private key {key_path} does not belong to {cert_path}: {e}"))?;
    Ok(key)
}

/// What [`build`] makes: the rustls configuration and the facts of each certificate in it.
pub(crate) struct Built {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) certs: Vec<CertInfo>,
}

/// Builds an `https` frontend's server configuration from its files' contents; an error names
/// the file and the reason. `previous`, the configuration being replaced, lends its session
/// ticket keys and cache when the client certificate rules stayed the same, so clients keep
/// resuming across a certificate change.
// ring's provider is deprecated in rustls 0.23.4x only for lacking post-quantum key exchange
// (X25519MLKEM768, which needs aws-lc-rs); it is kept for its build time (docs/tls.md).
#[allow(deprecated)]
pub(crate) fn build(
    t: &TlsFrontend,
    files: &Files,
    previous: Option<(&TlsFrontend, Option<&[u8; 32]>, &ServerConfig)>,
) -> Result<Built, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = Vec::with_capacity(t.certificates.len());
    let mut infos = Vec::new();
    for (c, (cert_bytes, key_bytes)) in t.certificates.iter().zip(&files.pairs) {
        let cert_path = c.cert.display();
        let key = certified_key_from(c, cert_bytes, key_bytes, &provider)?;
        let names: Vec<String> = match key.cert.first() {
            Some(leaf) => webpki::EndEntityCert::try_from(leaf)
                .map_err(|e| format!("certificate {cert_path}: {e}"))?
                .valid_dns_names()
                .map(str::to_ascii_lowercase)
                .collect(),
            None => Vec::new(),
        };
        let mut facts = Vec::with_capacity(key.cert.len());
        for c in &key.cert {
            facts.push(x509::facts(c).map_err(|e| format!("certificate {cert_path}: {e}"))?);
        }
        for (i, f) in facts.into_iter().enumerate() {
            let (role, names) = if i == 0 {
                (CertRole::Server, names.clone())
            } else {
                (CertRole::Chain, Vec::new())
            };
            infos.push(CertInfo::new(role, c.cert.clone(), names, f));
        }
        certs.push(Entry { names, key: Arc::new(key) });
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?;
    let builder = match (&t.client_ca, &files.client_ca) {
        (Some(path), Some(bytes)) => {
            let shown = path.display();
            let mut roots = RootCertStore::empty();
            for ca in certificates(bytes, "client_ca", path)? {
                let facts = x509::facts(&ca).map_err(|e| format!("client_ca {shown}: {e}"))?;
                roots.add(ca).map_err(|e| format!("client_ca {shown}: {e}"))?;
                infos.push(CertInfo::new(CertRole::ClientCa, path.clone(), Vec::new(), facts));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match t.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier.build().map_err(|e| format!("client_ca {shown}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver { certs, strict: t.sni_strict }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's suite order (rustls': AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305; ECDHE
    // only on 1.2), not the client's: every suite offered is strong, but scanners such as
    // testssl.sh rate a client-chosen order as a high-severity finding.
    cfg.ignore_client_order = true;
    // Resumption: stateless tickets (keys rotated by rustls) and a bounded session cache,
    // both kept from the configuration replaced unless who may connect changed: a session
    // resumed skips the client certificate check, so new client rules start new sessions.
    let ca_digest: Option<[u8; 32]> = files.client_ca.as_ref().map(|b| Sha256::digest(b).into());
    let same_clients = previous.filter(|(pt, pca, _)| {
        pt.client_ca.is_some() == t.client_ca.is_some()
            && pt.client_auth == t.client_auth
            && *pca == ca_digest.as_ref()
    });
    match same_clients {
        // `session_resumption = false`: every handshake is a full one (rustls' default
        // ticketer makes no ticket; the storage keeps no session; no TLS 1.3 ticket is sent).
        _ if !t.session_resumption => {
            cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            cfg.send_tls13_tickets = 0;
        }
        Some((_, _, old)) => {
            cfg.ticketer = old.ticketer.clone();
            cfg.session_storage = old.session_storage.clone();
        }
        None => {
            cfg.ticketer = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("TLS session tickets: {e}"))?;
        }
    }
    Ok(Built { config: Arc::new(cfg), certs: infos })
}

/// The server configuration of an `https` frontend, read from its files (`fulcrum check`).
pub fn server_config(t: &TlsFrontend) -> Result<Arc<ServerConfig>, String> {
    let files = Files::read(t)?;
    Ok(build(t, &files, None)?.config)
}

/// Every file a frontend's TLS reads.
pub(crate) fn paths(t: &TlsFrontend) -> impl Iterator<Item = &PathBuf> {
    t.certificates.iter().flat_map(|c| [&c.cert, &c.key]).chain(t.client_ca.iter())
}
