//! What `fulcrum check` checks beyond parsing, shared with the dashboard's config box: the
//! certificate and CA files are read as `run` reads them (a file it would refuse fails
//! here), and routes that no request can reach are warned about. Also the admin listener's
//! own TLS configuration (`[admin] tls`).

use std::sync::Arc;

use fulcrum_config::{CertFiles, Config, TlsFrontend, TlsVersion};

/// A configuration that passed every check, and the warnings it gave.
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Parses `text` (as the file `file`, which relative paths start from) and runs every check
/// of `fulcrum check`: Err holds every error, one line each.
pub fn check_text(text: &str, file: &str) -> Result<Checked, Vec<String>> {
    let config = fulcrum_config::parse_str(text, file)
        .map_err(|e| e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>())?;
    let (errors, warnings) = check_config(&config, file);
    if errors.is_empty() { Ok(Checked { config, warnings }) } else { Err(errors) }
}

/// The checks of `fulcrum check` on a parsed configuration: (errors, warnings).
pub fn check_config(c: &Config, file: &str) -> (Vec<String>, Vec<String>) {
    let mut bad = Vec::new();
    for f in &c.frontends {
        if let Some(t) = &f.tls
            && let Err(e) = fulcrum_proxy::tls_server_config(t)
        {
            bad.push(format!("{file}: frontend {}: {e}", f.name));
        }
    }
    let mut tls = fulcrum_proxy::TlsRegistry::default();
    for p in &c.pools {
        if let Some(t) = &p.tls
            && let Err(e) = tls.get(&p.name, t)
        {
            bad.push(format!("{file}: pool {}: {e}", p.name));
        }
    }
    if let Some(t) = c.admin.as_ref().and_then(|a| a.tls.as_ref())
        && let Err(e) = admin_tls_config(t)
    {
        bad.push(format!("{file}: admin.tls: {e}"));
    }
    (bad, route_warnings(c, file))
}

/// Routes no request can reach, because an earlier route of the same frontend matches every
/// request they do (`fulcrum_core::route::shadowed`): one line each, e.g.
/// `f.toml:23: frontend.web.route[2] is unreachable: route[0] matches every request it does`.
pub fn route_warnings(c: &Config, file: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in &c.frontends {
        let specs: Vec<_> = f.routes.iter().map(fulcrum_config::Route::spec).collect();
        for (later, earlier) in fulcrum_core::route::shadowed(&specs) {
            let at = match f.routes[later].line {
                0 => file.to_string(),
                line => format!("{file}:{line}"),
            };
            out.push(format!(
                "{at}: frontend.{}.route[{later}] is unreachable: \
                 route[{earlier}] matches every request it does",
                f.name
            ));
        }
    }
    out
}

/// The admin listener's TLS server configuration (one certificate, HTTP/1.1 only), built by
/// the same loader as an `https` frontend's.
pub fn admin_tls_config(files: &CertFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let t = TlsFrontend {
        certificates: vec![files.clone()],
        min_version: TlsVersion::V1_2,
        sni_strict: false,
    };
    let mut cfg = (*fulcrum_proxy::tls_server_config(&t)?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
