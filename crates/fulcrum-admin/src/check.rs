//! What `fulcrum check` checks beyond parsing, shared with the dashboard's config box: the
//! certificate and CA files are read as `run` reads them (a file it would refuse fails
//! here), and routes that no request can reach are warned about. Also the admin listener's
//! own TLS configuration (`[admin] tls`).

use std::sync::Arc;

use fulcrum_config::{CertFiles, ClientAuth, Config, TlsFrontend, TlsVersion};

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
/// Routes by SNI likewise, for each name an earlier route already has
/// (`fulcrum_core::sni::duplicates`): `f.toml:30: frontend.tls.route[3]: sni "a.test" is
/// unreachable: route[1] has it`.
pub fn route_warnings(c: &Config, file: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in &c.frontends {
        let at = |i: usize| match f.routes[i].line {
            0 => file.to_string(),
            line => format!("{file}:{line}"),
        };
        // HTTP routes and routes by SNI share the list; each kind is matched on its own.
        let (sni, http): (Vec<usize>, Vec<usize>) =
            (0..f.routes.len()).partition(|&i| f.routes[i].is_sni());
        let specs: Vec<_> = http.iter().map(|&i| f.routes[i].spec()).collect();
        for (later, earlier) in fulcrum_core::route::shadowed(&specs) {
            let (later, earlier) = (http[later], http[earlier]);
            out.push(format!(
                "{}: frontend.{}.route[{later}] is unreachable: \
                 route[{earlier}] matches every request it does",
                at(later),
                f.name
            ));
        }
        let names: Vec<&[String]> = sni.iter().map(|&i| f.routes[i].sni.as_slice()).collect();
        for (later, name, earlier) in fulcrum_core::sni::duplicates(&names) {
            let (later, earlier) = (sni[later], sni[earlier]);
            out.push(format!(
                "{}: frontend.{}.route[{later}]: sni \"{name}\" is unreachable: \
                 route[{earlier}] has it",
                at(later),
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
        session_resumption: true,
        client_ca: None,
        client_auth: ClientAuth::Required,
        client_cert_header: fulcrum_config::DEFAULT_CLIENT_CERT_HEADER.to_string(),
    };
    let mut cfg = (*fulcrum_proxy::tls_server_config(&t)?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
