//! The TLS side of the metrics page: routes by SNI (what each connection's first bytes were,
//! the route it took) and the certificates of `https` frontends (expiry, reloads).

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::{Scrape, counter, family, gauge, load};

impl Scrape {
    /// Frontends with routes by SNI: what each connection's first bytes were, and the route
    /// each connection took.
    pub(super) fn encode_sni(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        let mut rows = Vec::new();
        for f in s.frontends.iter().filter(|f| f.sni.is_some()) {
            for (result, c) in fulcrum_proxy::SNI_RESULTS.iter().zip(&f.stats.sni_hellos) {
                let l = vec![("frontend", f.name.to_string()), ("result", result.to_string())];
                rows.push((l, counter(load(c))));
            }
        }
        family(
            enc,
            "fulcrum_sni_hellos",
            "Connections of frontends with routes by SNI, by what their first bytes were: sni \
             (a ClientHello with a server name), no-sni, not-tls, closed (before a whole \
             ClientHello), timeout (none within sni_timeout: closed).",
            MetricType::Counter,
            rows,
        )?;
        let mut rows = Vec::new();
        for f in &s.frontends {
            let Some(sni) = &f.sni else { continue };
            for r in &sni.routes {
                let l = vec![("frontend", f.name.to_string()), ("route", r.index.to_string())];
                rows.push((l, counter(load(&r.routed))));
            }
            let l = vec![("frontend", f.name.to_string()), ("route", "default".to_string())];
            rows.push((l, counter(load(&sni.default))));
        }
        family(
            enc,
            "fulcrum_sni_routed",
            "Connections routed by their ClientHello's server name: by route (index in the \
             frontend's list), or default (tcp: the frontend's pool; https: TLS terminated by \
             fulcrum); counted since the routes were last built (start or reload).",
            MetricType::Counter,
            rows,
        )
    }
}

impl Scrape {
    /// `https` frontends: when each loaded certificate expires, and how their reloads went.
    pub(super) fn encode_certificates(
        &self,
        enc: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let tls_fronts =
            || self.snapshot.frontends.iter().filter_map(|f| Some((f, f.tls.as_ref()?)));
        let mut rows = Vec::new();
        for (f, t) in tls_fronts() {
            for c in &t.current().certs {
                let l = vec![
                    ("frontend", f.name.to_string()),
                    ("role", c.role.name().to_string()),
                    ("cert", c.file.display().to_string()),
                    ("name", c.label().to_string()),
                ];
                rows.push((l, gauge(c.not_after)));
            }
        }
        family(
            enc,
            "fulcrum_tls_certificate_expiry_timestamp_seconds",
            "When each loaded certificate expires (its notAfter, seconds since the Unix epoch); \
             role server for the leaf served, chain for the rest of its file, client_ca for the \
             CAs client certificates are checked against.",
            MetricType::Gauge,
            rows,
        )?;
        let mut rows = Vec::new();
        for (f, t) in tls_fronts() {
            for (result, c) in [("ok", &t.reloads), ("failed", &t.reload_failures)] {
                let l = vec![("frontend", f.name.to_string()), ("result", result.to_string())];
                rows.push((l, counter(load(c))));
            }
        }
        family(
            enc,
            "fulcrum_tls_certificate_reloads",
            "Certificates of https frontends loaded again after a reload or a file change: ok \
             (new ones serve) or failed (the old ones kept serving).",
            MetricType::Counter,
            rows,
        )
    }
}
