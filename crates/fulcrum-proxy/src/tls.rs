//! TLS termination for `https` frontends: the rustls server configuration built from
//! `[frontend.NAME.tls]` (certificates read from their PEM files when the frontend is bound,
//! never on the data path) and the certificate chosen by the client's SNI.
//!
//! rustls with the ring provider: it builds about 3× faster than aws-lc-rs here (see the
//! dependency notes) and its TLS 1.3 and 1.2 suites are the modern AEAD ones only.

use std::sync::Arc;

use fulcrum_config::{CertFiles, TlsFrontend, TlsVersion};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

/// A PEM certificate chain (leaf first) and the private key that belongs to it: a frontend's
/// certificate, or the client certificate a pool presents to its servers. An error names the
/// file and the reason.
pub(crate) fn certified_key(
    c: &CertFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let cert_path = c.cert.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .map_err(|e| format!("certificate {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {cert_path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("certificate {cert_path}: no CERTIFICATE block in the file"));
    }
    let key_path = c.key.display();
    let key =
        PrivateKeyDer::from_pem_file(&c.key).map_err(|e| format!("private key {key_path}: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key {key_path}: {e}"))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match()
        .map_err(|e| format!("private key {key_path} does not belong to {cert_path}: {e}"))?;
    Ok(key)
}

/// The server configuration of an `https` frontend; an error names the file and the reason.
// ring's provider is deprecated in rustls 0.23.4x only for lacking post-quantum key exchange
// (X25519MLKEM768, which needs aws-lc-rs); it is kept for its build time (docs/tls.md).
#[allow(deprecated)]
pub fn server_config(t: &TlsFrontend) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = Vec::with_capacity(t.certificates.len());
    for c in &t.certificates {
        let key = certified_key(c, &provider)?;
        let names: Vec<String> = match key.cert.first() {
            Some(leaf) => webpki::EndEntityCert::try_from(leaf)
                .map_err(|e| format!("certificate {}: {e}", c.cert.display()))?
                .valid_dns_names()
                .map(str::to_ascii_lowercase)
                .collect(),
            None => Vec::new(),
        };
        certs.push(Entry { names, key: Arc::new(key) });
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs, strict: t.sni_strict }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption: stateless tickets (keys rotated by rustls) and a bounded session cache.
    cfg.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
    Ok(Arc::new(cfg))
}
