//! Prometheus exposition: read at scrape time straight from the snapshot and the per-server
//! atomics (nothing on the data path is registered or locked for metrics), encoded by
//! prometheus-client.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fulcrum_proxy::Snapshot;

use crate::controller::ReadView;

mod tls;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

#[derive(Debug)]
struct Scrape {
    snapshot: Arc<Snapshot>,
    active: u64,
    max: u64,
    reloads: u64,
    now_ms: u64,
    agent: Arc<crate::agent::AgentStats>,
    resolve: Arc<crate::resolver::ResolveStats>,
    scale: Vec<(String, &'static str, u64)>,
    /// Entries of the runtime block list in force.
    blocks: u64,
}

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram family: one row per label set, each as `Histogram::snapshot` gives it.
fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, (f64, u64, Vec<(f64, u64)>))>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, (sum, count, buckets)) in rows {
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(v.min(i64::MAX as u64) as i64)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        let fe = |f: &fulcrum_proxy::FrontendState| vec![("frontend", f.name.to_string())];
        let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        family(
            &mut enc,
            "fulcrum_frontend_connections",
            "Client connections accepted.",
            MetricType::Counter,
            s.frontends.iter().map(|f| (fe(f), counter(ld(&f.stats.connections_total)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_frontend_connections_active",
            "Client connections open now.",
            MetricType::Gauge,
            s.frontends.iter().map(|f| (fe(f), gauge(ld(&f.stats.connections_active)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_frontend_received_bytes",
            "Bytes received from clients.",
            MetricType::Counter,
            s.frontends.iter().map(|f| (fe(f), counter(ld(&f.stats.bytes_in)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_frontend_sent_bytes",
            "Bytes sent to clients.",
            MetricType::Counter,
            s.frontends.iter().map(|f| (fe(f), counter(ld(&f.stats.bytes_out)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_frontend_no_server",
            "Clients closed because no server could take them.",
            MetricType::Counter,
            s.frontends.iter().map(|f| (fe(f), counter(ld(&f.stats.no_server)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_frontend_accept_errors",
            "Failed accept calls.",
            MetricType::Counter,
            s.frontends.iter().map(|f| (fe(f), counter(ld(&f.stats.accept_errors)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_frontend_handoffs",
            "Connections accepted by a busier worker and moved to a less loaded one.",
            MetricType::Counter,
            s.frontends.iter().map(|f| (fe(f), counter(ld(&f.stats.handoffs)))).collect(),
        )?;
        self.encode_rejections(&mut enc)?;

        let servers = || {
            s.pools.iter().flat_map(|p| {
                p.servers
                    .iter()
                    .map(move |sv| (vec![("pool", p.name.clone()), ("server", sv.key.clone())], sv))
            })
        };
        family(
            &mut enc,
            "fulcrum_server_connections",
            "Connections made to the server.",
            MetricType::Counter,
            servers().map(|(l, sv)| (l, counter(ld(&sv.stats.connections_total)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_server_connections_active",
            "Connections open to the server now.",
            MetricType::Gauge,
            servers().map(|(l, sv)| (l, gauge(ld(&sv.stats.active)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_server_sent_bytes",
            "Bytes sent to the server (from clients).",
            MetricType::Counter,
            servers().map(|(l, sv)| (l, counter(ld(&sv.stats.bytes_in)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_server_received_bytes",
            "Bytes received from the server (to clients).",
            MetricType::Counter,
            servers().map(|(l, sv)| (l, counter(ld(&sv.stats.bytes_out)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_server_connect_errors",
            "Failed connects (and resets) to the server.",
            MetricType::Counter,
            servers().map(|(l, sv)| (l, counter(ld(&sv.stats.connect_failures)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_server_ejections",
            "Passive ejections of the server.",
            MetricType::Counter,
            servers().map(|(l, sv)| (l, counter(ld(&sv.stats.ejections)))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_server_up",
            "1 when health checks pass (or none run), 0 when down.",
            MetricType::Gauge,
            servers().map(|(l, sv)| (l, gauge(u64::from(!sv.stats.is_down())))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_server_ejected",
            "1 while passively ejected.",
            MetricType::Gauge,
            servers()
                .map(|(l, sv)| (l, gauge(u64::from(sv.stats.is_ejected(self.now_ms)))))
                .collect(),
        )?;
        histograms(
            &mut enc,
            "fulcrum_server_connect_seconds",
            "Time to connect to the server.",
            servers().map(|(l, sv)| (l, sv.stats.connect_time.snapshot())),
        )?;
        family(
            &mut enc,
            "fulcrum_server_max_connections",
            "The server's connection cap in force (agent maxconn or configured); capped servers only.",
            MetricType::Gauge,
            s.pools
                .iter()
                .flat_map(|p| {
                    p.servers.iter().filter_map(move |sv| {
                        let cap = sv.cap(p.agent_maxconn_ttl_ms, self.now_ms)?;
                        Some((
                            vec![("pool", p.name.clone()), ("server", sv.key.clone())],
                            gauge(cap),
                        ))
                    })
                })
                .collect(),
        )?;
        let pl = |p: &fulcrum_proxy::PoolState| vec![("pool", p.name.clone())];
        family(
            &mut enc,
            "fulcrum_pool_queue_length",
            "Clients waiting in the pool's queue for a server below its cap.",
            MetricType::Gauge,
            s.pools.iter().map(|p| (pl(p), gauge(p.queue.len() as u64))).collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_pool_queued",
            "Clients that joined the pool's queue.",
            MetricType::Counter,
            s.pools.iter().map(|p| (pl(p), counter(ld(&p.queue.queued)))).collect(),
        )?;
        let mut refused = Vec::new();
        for p in &s.pools {
            for (reason, c) in [
                ("servers_full", &p.queue.refused_servers_full),
                ("queue_full", &p.queue.refused_queue_full),
                ("queue_timeout", &p.queue.refused_queue_timeout),
            ] {
                refused.push((
                    vec![("pool", p.name.clone()), ("reason", reason.to_string())],
                    counter(ld(c)),
                ));
            }
        }
        family(
            &mut enc,
            "fulcrum_pool_refused",
            "Clients refused because every server was at its cap: no queue (servers_full), the queue full, or the queue timeout.",
            MetricType::Counter,
            refused,
        )?;
        let mut handshakes = Vec::new();
        for p in &s.pools {
            let Some(tls) = &p.tls else { continue };
            for (result, c) in [
                ("ok", &tls.stats.ok),
                ("failed", &tls.stats.failed),
                ("timeout", &tls.stats.timeout),
            ] {
                let l = vec![("pool", p.name.clone()), ("result", result.to_string())];
                handshakes.push((l, counter(ld(c))));
            }
        }
        family(
            &mut enc,
            "fulcrum_upstream_tls_handshakes",
            "TLS handshakes with the pool's servers for clients ([pool.X.tls]; health checks not counted), by result: ok, failed (refused, bad certificate), timeout.",
            MetricType::Counter,
            handshakes,
        )?;
        family(
            &mut enc,
            "fulcrum_connections_active",
            "Proxied connections open now, all frontends.",
            MetricType::Gauge,
            vec![(Vec::new(), gauge(self.active))],
        )?;
        family(
            &mut enc,
            "fulcrum_connections_max",
            "Global connection limit.",
            MetricType::Gauge,
            vec![(Vec::new(), gauge(self.max))],
        )?;
        family(
            &mut enc,
            "fulcrum_reloads",
            "Successful configuration reloads.",
            MetricType::Counter,
            vec![(Vec::new(), counter(self.reloads))],
        )?;
        for (name, help, c) in [
            ("fulcrum_resolve_lookups", "Lookups of server host names.", &self.resolve.lookups),
            (
                "fulcrum_resolve_failures",
                "Failed lookups of server host names (the last good addresses were kept).",
                &self.resolve.failures,
            ),
            (
                "fulcrum_resolve_changes",
                "Server host names whose addresses changed and were applied.",
                &self.resolve.changes,
            ),
        ] {
            family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                vec![(Vec::new(), counter(load(c)))],
            )?;
        }
        let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let mut reported = Vec::new();
        for p in &s.pools {
            for sv in &p.servers {
                if let Some((c, _, a)) = sv.stats.fresh_report(p.report_ttl_ms, self.now_ms) {
                    let l = vec![("pool", p.name.clone()), ("server", sv.key.clone())];
                    reported.push((l, gauge(c + a)));
                }
            }
        }
        family(
            &mut enc,
            "fulcrum_server_reported_clients",
            "Clients the server last reported (fresh reports only) plus assignments since.",
            MetricType::Gauge,
            reported,
        )?;
        family(
            &mut enc,
            "fulcrum_frontend_udp_dropped",
            "Directory answers dropped: UDP send queue full.",
            MetricType::Counter,
            s.frontends
                .iter()
                .map(|f| {
                    (vec![("frontend", f.name.to_string())], counter(ld(&f.stats.udp_dropped)))
                })
                .collect(),
        )?;
        // UDP and fan-out frontends: counters by name, and drops by reason.
        type Get = dyn Fn(&fulcrum_proxy::FrontendStats) -> u64;
        let fe_counter = |enc: &mut DescriptorEncoder, name: &str, help: &str, get: &Get| {
            let rows = s
                .frontends
                .iter()
                .map(|f| (vec![("frontend", f.name.to_string())], counter(get(&f.stats))))
                .collect();
            family(enc, name, help, MetricType::Counter, rows)
        };
        fe_counter(
            &mut enc,
            "fulcrum_frontend_udp_datagrams_received",
            "Datagrams from clients (dropped ones included).",
            &|x| load(&x.udp_datagrams_in),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_udp_datagrams_sent",
            "Datagrams sent back to clients.",
            &|x| load(&x.udp_datagrams_out),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_udp_received_bytes",
            "UDP bytes from clients.",
            &|x| load(&x.udp_bytes_in),
        )?;
        fe_counter(&mut enc, "fulcrum_frontend_udp_sent_bytes", "UDP bytes to clients.", &|x| {
            load(&x.udp_bytes_out)
        })?;
        fe_counter(&mut enc, "fulcrum_frontend_udp_sessions", "UDP sessions started.", &|x| {
            load(&x.udp_sessions_total)
        })?;
        let active = s
            .frontends
            .iter()
            .map(|f| {
                (vec![("frontend", f.name.to_string())], gauge(load(&f.stats.udp_sessions_active)))
            })
            .collect();
        family(
            &mut enc,
            "fulcrum_frontend_udp_sessions_active",
            "UDP sessions open now.",
            MetricType::Gauge,
            active,
        )?;
        let mut drops = Vec::new();
        for f in &s.frontends {
            for (reason, c) in [
                ("no_server", &f.stats.udp_drops_no_server),
                ("session_limit", &f.stats.udp_drops_session_limit),
                ("source_limit", &f.stats.udp_drops_source_limit),
                ("descriptors", &f.stats.udp_drops_descriptors),
                ("queue_full", &f.stats.udp_drops_queue_full),
                ("send_error", &f.stats.udp_drops_send_error),
            ] {
                let l = vec![("frontend", f.name.to_string()), ("reason", reason.to_string())];
                drops.push((l, counter(load(c))));
            }
        }
        family(
            &mut enc,
            "fulcrum_frontend_udp_drops",
            "UDP datagrams dropped, by reason.",
            MetricType::Counter,
            drops,
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_requests",
            "Fan-out and hedge requests.",
            &|x| load(&x.fanout_requests),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_answered",
            "Requests answered by a server.",
            &|x| load(&x.fanout_answered),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_timeouts",
            "Requests with no acceptable answer in time.",
            &|x| load(&x.fanout_timeouts),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_rejected_answers",
            "Answers that did not win (reject_prefix).",
            &|x| load(&x.fanout_rejected_answers),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_dropped",
            "Requests dropped: too many in flight.",
            &|x| load(&x.fanout_dropped),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_hedges",
            "Hedged requests sent to a second server.",
            &|x| load(&x.fanout_hedges),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_upstream_errors",
            "Failed exchanges with a server.",
            &|x| load(&x.fanout_upstream_errors),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_fanout_unmatched_answers",
            "TCP answer lines that belonged to no request (discarded).",
            &|x| load(&x.fanout_unmatched_answers),
        )?;
        fe_counter(
            &mut enc,
            "fulcrum_frontend_send_timeouts",
            "Clients closed because they did not read their answers within send_timeout.",
            &|x| load(&x.send_timeouts),
        )?;
        family(
            &mut enc,
            "fulcrum_agent_sessions",
            "Agent sessions accepted.",
            MetricType::Counter,
            vec![(Vec::new(), counter(ld(&self.agent.sessions_total)))],
        )?;
        family(
            &mut enc,
            "fulcrum_agent_sessions_active",
            "Agent sessions open now.",
            MetricType::Gauge,
            vec![(Vec::new(), gauge(ld(&self.agent.sessions_active)))],
        )?;
        family(
            &mut enc,
            "fulcrum_agent_reports",
            "Load reports accepted.",
            MetricType::Counter,
            vec![(Vec::new(), counter(ld(&self.agent.reports)))],
        )?;
        family(
            &mut enc,
            "fulcrum_agent_rejected",
            "Agent sessions closed for a protocol violation, by reason.",
            MetricType::Counter,
            self.agent
                .rejected()
                .into_iter()
                .map(|(r, n)| (vec![("reason", r.to_string())], counter(n)))
                .collect(),
        )?;
        family(
            &mut enc,
            "fulcrum_scale_events",
            "Scale signals fired.",
            MetricType::Counter,
            self.scale
                .iter()
                .map(|(p, d, n)| {
                    (vec![("pool", p.clone()), ("direction", d.to_string())], counter(*n))
                })
                .collect(),
        )?;
        self.encode_http(&mut enc)?;
        self.encode_sni(&mut enc)?;
        self.encode_certificates(&mut enc)?;
        Ok(())
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Scrape {
    /// Clients refused by address, per frontend and reason (every reason listed, zeros too,
    /// so a rate query has a series before the first refusal), and the block list's size.
    fn encode_rejections(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use fulcrum_core::acl::Rejection;
        let mut rows = Vec::new();
        for f in &self.snapshot.frontends {
            for r in Rejection::ALL {
                let n = f.stats.rejections.get(r.index()).map_or(0, load);
                let l = vec![("frontend", f.name.to_string()), ("reason", r.name().to_string())];
                rows.push((l, counter(n)));
            }
        }
        family(
            enc,
            "fulcrum_rejections",
            "Clients refused, by reason: by address (deny, not-allowed, blocked) or by a \
             per-client limit (conn-per-client, conn-rate: TCP connections; request-rate: HTTP \
             requests answered 429; datagram-rate: UDP datagrams dropped) or by the fair share \
             (fair-share: above its share under pressure; full: no slot left nor made).",
            MetricType::Counter,
            rows,
        )?;
        let tracked: Vec<_> = self
            .snapshot
            .frontends
            .iter()
            .map(|f| (vec![("frontend", f.name.to_string())], gauge(f.stats.clients.len() as u64)))
            .collect();
        let rows: Vec<_> = self
            .snapshot
            .frontends
            .iter()
            .map(|f| {
                let n = load(&f.stats.fair_share_evictions);
                (vec![("frontend", f.name.to_string())], counter(n))
            })
            .collect();
        family(
            enc,
            "fulcrum_fair_share_evictions",
            "Connections closed, when no slot was left, to make room for an address holding \
             less than its fair share (one of the address holding the most).",
            MetricType::Counter,
            rows,
        )?;
        let rows: Vec<_> = self
            .snapshot
            .frontends
            .iter()
            .map(|f| {
                let n = load(&f.stats.pressure_idle_closed);
                (vec![("frontend", f.name.to_string())], counter(n))
            })
            .collect();
        family(
            enc,
            "fulcrum_pressure_idle_closed",
            "Idle connections (L4 idle, HTTP keep-alive) closed at pressure_idle_timeout, \
             shorter than their own, while the connection slots were under pressure.",
            MetricType::Counter,
            rows,
        )?;
        let rows: Vec<_> = self
            .snapshot
            .frontends
            .iter()
            .map(|f| {
                let n = load(&f.stats.first_byte_timeouts);
                (vec![("frontend", f.name.to_string())], counter(n))
            })
            .collect();
        family(
            enc,
            "fulcrum_first_byte_timeouts",
            "Clients closed for sending nothing within first_byte_timeout of being accepted \
             (before any server was connected).",
            MetricType::Counter,
            rows,
        )?;
        family(
            enc,
            "fulcrum_clients_tracked",
            "Client addresses the frontend's table holds now (bounded by limits.max_clients).",
            MetricType::Gauge,
            tracked,
        )?;
        family(
            enc,
            "fulcrum_blocks",
            "Entries of the runtime block list in force.",
            MetricType::Gauge,
            vec![(Labels::new(), gauge(self.blocks))],
        )
    }

    /// HTTP frontends: requests by status class per frontend, route and server, requests in
    /// progress, request latency, and each pool's retries.
    fn encode_http(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        let http_fronts = || s.frontends.iter().filter(|f| f.http);
        let mut rows = Vec::new();
        for f in http_fronts() {
            for (class, c) in CLASSES.iter().zip(&f.stats.http_responses) {
                let l = vec![("frontend", f.name.to_string()), ("class", class.to_string())];
                rows.push((l, counter(load(c))));
            }
        }
        family(
            enc,
            "fulcrum_http_responses",
            "HTTP responses sent to clients, by status class.",
            MetricType::Counter,
            rows,
        )?;
        family(
            enc,
            "fulcrum_http_requests_active",
            "HTTP requests in progress (head received, response not yet ended).",
            MetricType::Gauge,
            http_fronts()
                .map(|f| {
                    (vec![("frontend", f.name.to_string())], gauge(load(&f.stats.http_active)))
                })
                .collect(),
        )?;
        histograms(
            enc,
            "fulcrum_http_request_seconds",
            "HTTP request time, from the head to the end of the response.",
            http_fronts()
                .map(|f| (vec![("frontend", f.name.to_string())], f.stats.http_latency.snapshot())),
        )?;
        let mut rows = Vec::new();
        for f in http_fronts() {
            for (result, c) in [
                ("ok", &f.stats.tls_handshakes),
                ("failed", &f.stats.tls_handshake_failures),
                ("timeout", &f.stats.tls_handshake_timeouts),
            ] {
                let l = vec![("frontend", f.name.to_string()), ("result", result.to_string())];
                rows.push((l, counter(load(c))));
            }
        }
        family(
            enc,
            "fulcrum_tls_handshakes",
            "TLS handshakes of https frontends, by result.",
            MetricType::Counter,
            rows,
        )?;
        family(
            enc,
            "fulcrum_tls_handshakes_tls13",
            "Completed TLS handshakes that negotiated TLS 1.3 (the rest are 1.2).",
            MetricType::Counter,
            http_fronts()
                .map(|f| (vec![("frontend", f.name.to_string())], counter(load(&f.stats.tls_v13))))
                .collect(),
        )?;
        family(
            enc,
            "fulcrum_tls_handshakes_alpn_h2",
            "Completed TLS handshakes that negotiated ALPN h2 (the rest HTTP/1.1).",
            MetricType::Counter,
            http_fronts()
                .map(|f| {
                    (vec![("frontend", f.name.to_string())], counter(load(&f.stats.tls_alpn_h2)))
                })
                .collect(),
        )?;
        histograms(
            enc,
            "fulcrum_tls_handshake_seconds",
            "TLS handshake time of https frontends.",
            http_fronts().map(|f| {
                (vec![("frontend", f.name.to_string())], f.stats.tls_handshake_time.snapshot())
            }),
        )?;
        let mut rows = Vec::new();
        for f in s.frontends.iter() {
            let Some(routes) = &f.routes else { continue };
            for r in &routes.routes {
                for (class, c) in CLASSES.iter().zip(&r.responses) {
                    let l = vec![
                        ("frontend", f.name.to_string()),
                        ("route", r.index.to_string()),
                        ("class", class.to_string()),
                    ];
                    rows.push((l, counter(load(c))));
                }
            }
        }
        family(
            enc,
            "fulcrum_http_route_responses",
            "HTTP responses by the route that matched (index in the frontend's list) and status \
             class; counted since the routes were last built (start or reload).",
            MetricType::Counter,
            rows,
        )?;
        let mut rows = Vec::new();
        for p in &s.pools {
            for sv in &p.servers {
                if sv.stats.http_responses.iter().all(|c| load(c) == 0) {
                    continue;
                }
                for (class, c) in CLASSES.iter().zip(&sv.stats.http_responses) {
                    let l = vec![
                        ("pool", p.name.clone()),
                        ("server", sv.key.clone()),
                        ("class", class.to_string()),
                    ];
                    rows.push((l, counter(load(c))));
                }
            }
        }
        family(
            enc,
            "fulcrum_http_server_responses",
            "HTTP responses received from the server, by status class.",
            MetricType::Counter,
            rows,
        )?;
        family(
            enc,
            "fulcrum_http_retries",
            "HTTP requests sent again (connect failures, unsent requests, idempotent requests \
             within the retry budget); counted since the pool was last built.",
            MetricType::Counter,
            s.pools
                .iter()
                .map(|p| (vec![("pool", p.name.clone())], counter(load(&p.http_retries))))
                .collect(),
        )?;
        Ok(())
    }
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The metrics page in the OpenMetrics text format (which Prometheus reads).
pub fn render(v: &ReadView) -> String {
    let mut registry = Registry::default();
    let shared = &v.shared;
    registry.register_collector(Box::new(Scrape {
        snapshot: shared.state.load_full(),
        active: shared.limits.active() as u64,
        max: shared.limits.max() as u64,
        reloads: v.reloads.load(Ordering::Relaxed),
        now_ms: fulcrum_proxy::now_ms(),
        agent: v.agent_stats.clone(),
        resolve: v.resolve_stats.clone(),
        scale: v.scale_log.counts(),
        blocks: shared.guard.blocks() as u64,
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out = "# encoding failed\n".into();
    }
    out
}
