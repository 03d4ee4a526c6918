//! The validated configuration model, with the defaults of every key. What the data plane
//! builds its routing snapshot from; constructed by the TOML parser or by `fulcrum forward`.

use std::path::PathBuf;
use std::time::Duration;

use fulcrum_core::balance::Algorithm;
use fulcrum_core::eject::EjectPolicy;
pub use fulcrum_core::framing::Framing;
pub use fulcrum_core::route::{HashKey, HeaderRule, HeaderValueRule, RouteSpec};

use crate::addr::{ListenAddr, ServerAddr};

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RETRIES: u32 = 2;
/// Retries are bounded by the fixed-size tried set of the balancer.
pub const MAX_RETRIES: u32 = (fulcrum_core::balance::MAX_ATTEMPTS - 1) as u32;
pub const MAX_WEIGHT: u32 = 10_000;
pub const MAX_WORKERS: usize = 1_024;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Worker threads; `None` means one per available core.
    pub workers: Option<usize>,
    /// Global limit of concurrently proxied connections; `None` derives it from the open-file
    /// limit.
    pub max_connections: Option<usize>,
    /// How long open connections may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// One log line per finished connection.
    pub access_log: bool,
    /// `access_log_file`: the access log goes to this file (reopened on SIGUSR1) instead of
    /// stderr with the other logs.
    pub access_log_file: Option<PathBuf>,
    pub frontends: Vec<Frontend>,
    pub pools: Vec<Pool>,
    /// Where runtime changes made through the admin API are kept across restarts.
    pub state_file: Option<PathBuf>,
    pub admin: Option<Admin>,
    pub agent: Option<Agent>,
    /// Name servers for server host names, instead of the system's (`/etc/resolv.conf`).
    pub resolver: Option<Resolver>,
}

/// `[resolver]`: where server host names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// Name servers (`IP:PORT`), asked over UDP and TCP, in order.
    pub servers: Vec<std::net::SocketAddr>,
}

/// How long a looked-up server address is kept at most before it is looked up again (the
/// record's TTL, when shorter, comes first).
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// No name is looked up more often than this, whatever its TTL.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// The agent listener: backends dial it and push their load (docs/agent-protocol.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub bind: ListenAddr,
    /// Pre-shared key file (content trimmed, used as raw bytes).
    pub key_file: PathBuf,
    /// How often backends are expected to report.
    pub report_interval: Duration,
    /// Reports missed before a backend's report is stale (and a self-registered one leaves).
    pub missed_reports: u32,
}

impl Agent {
    /// How long a report stays fresh.
    pub fn report_ttl(&self) -> Duration {
        self.report_interval.saturating_mul(self.missed_reports.max(1))
    }
}

/// The admin API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub bind: ListenAddr,
    /// File holding the bearer token (whitespace trimmed), relative to the config file's folder.
    pub token_file: Option<PathBuf>,
    /// `tls = { cert, key }`: serve the API and the dashboard over TLS.
    pub tls: Option<CertFiles>,
}

/// Environment variable that supplies the admin token (wins over `token_file`).
pub const ADMIN_TOKEN_ENV: &str = "FULCRUM_ADMIN_TOKEN";

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: None,
            max_connections: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            access_log: true,
            access_log_file: None,
            frontends: Vec::new(),
            pools: Vec::new(),
            state_file: None,
            admin: None,
            agent: None,
            resolver: None,
        }
    }
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    /// Datagrams, with a session per client address.
    Udp,
    /// Clients ask which server to use (`PICK` lines over TCP) and connect themselves.
    Directory,
    /// The same, one `PICK` datagram per request.
    DirectoryUdp,
    /// HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port, proxied per request.
    Http,
    /// The same over TLS (ALPN `h2` and `http/1.1`), terminated here.
    Https,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Directory => "directory",
            Protocol::DirectoryUdp => "directory-udp",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }

    /// The transport its sockets use: frontends of different transports may share an
    /// address and port (DNS over TCP and UDP on port 53), two of the same may not.
    pub fn transport(self) -> Transport {
        match self {
            Protocol::Tcp | Protocol::Directory | Protocol::Http | Protocol::Https => {
                Transport::Tcp
            }
            Protocol::Udp | Protocol::DirectoryUdp => Transport::Udp,
        }
    }
}

/// A socket's transport, as far as sharing a port goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frontend {
    pub name: String,
    pub bind: ListenAddr,
    pub protocol: Protocol,
    pub pool: String,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// A client that takes no byte of the answers waiting for it for this long is closed.
    pub send_timeout: Duration,
    /// `first_byte_timeout`: a TCP client that has sent nothing this long after it was
    /// accepted is closed before any server is connected (protocols where the client
    /// speaks first).
    pub first_byte_timeout: Option<Duration>,
    /// Per-frontend limit of concurrent connections, on top of the global one.
    pub max_connections: Option<usize>,
    /// UDP: a client's session (its server and upstream socket) ends after this long without
    /// a datagram either way.
    pub session_timeout: Duration,
    /// UDP: most sessions at once, per frontend; further clients are refused and counted.
    pub max_sessions: usize,
    /// UDP: most sessions one client address may hold at once.
    pub max_sessions_per_source: usize,
    pub mode: Mode,
    /// UDP proxy: `true` (default) keeps a session (one server) per client address; `false`
    /// picks a server for every datagram, and `session_timeout` is how long a datagram's
    /// answer is waited for.
    pub sessions: bool,
    /// Line protocols (TCP fan-out, hedge, directory): how client bytes become requests.
    pub framing: Framing,
    /// Line protocols: a request equal to this closes the client's connection (and its server
    /// connections) without being forwarded.
    pub quit: Option<String>,
    /// HTTP frontends: limits, timeouts and forwarding headers.
    pub http: HttpFrontend,
    /// HTTP: `[[frontend.NAME.route]]`, tried in order; a request no route matches goes to
    /// `pool`. `tcp` and `https`: also the routes by SNI (`Route::is_sni`), which take a
    /// connection before any HTTP.
    pub routes: Vec<Route>,
    /// Routes by SNI: how long a client has to send its whole ClientHello; closed after it.
    pub sni_timeout: Duration,
    /// `https`: `[frontend.NAME.tls]`, the certificates and TLS settings.
    pub tls: Option<TlsFrontend>,
    /// Sources that must open with a PROXY protocol header (v1 or v2); its address is then
    /// the client's. Empty: no header is read.
    pub accept_proxy: Vec<ipnet::IpNet>,
    /// `allow`, `deny`, `allow_file` and `deny_file`, compiled (the files as read when the
    /// config was loaded): which client addresses may connect. Shared, not copied: a deny
    /// file can hold many thousands of ranges.
    pub access: std::sync::Arc<fulcrum_core::acl::Access>,
    /// `[frontend.NAME.limits]`: what one client may hold and do.
    pub limits: ClientLimits,
    /// `fair_share`, `fair_share_above`, `fair_share_exempt`: who gets the last connection slots.
    pub fair_share: FairShare,
}

/// The fair share of connection slots under pressure (TCP transports): above `above_percent`
/// of the global or the frontend's slots, an address holding more than its share is refused
/// new connections; when no slot is left, one connection of the address holding the most is
/// closed so that an address holding less gets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FairShare {
    pub enabled: bool,
    /// 1..=100.
    pub above_percent: u8,
    /// Addresses never refused nor cut for the fair share (NAT gateways, proxies).
    pub exempt: std::sync::Arc<fulcrum_core::acl::IpSet>,
    /// `pressure_idle_timeout`: the idle and keep-alive timeouts while under pressure.
    pub pressure_idle_timeout: std::time::Duration,
}

/// `pressure_idle_timeout` when not set.
pub const DEFAULT_PRESSURE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for FairShare {
    fn default() -> Self {
        FairShare {
            enabled: true,
            above_percent: 90,
            exempt: Default::default(),
            pressure_idle_timeout: DEFAULT_PRESSURE_IDLE_TIMEOUT,
        }
    }
}

/// `[frontend.NAME.limits]`: per-client limits. A client is its address (IPv6 grouped by
/// `ipv6_prefix`); behind `accept_proxy` or `trusted_proxies`, the address those carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// TCP transports: connections one client may hold at once.
    pub conn_per_client: Option<u32>,
    /// TCP transports: new connections per client.
    pub conn_rate_per_client: Option<fulcrum_core::clients::Rate>,
    /// `http`, `https`: requests per client (answered 429 with `Retry-After` above it).
    pub request_rate_per_client: Option<fulcrum_core::clients::Rate>,
    /// `udp`, `directory-udp`: datagrams per client (dropped above it).
    pub datagram_rate_per_client: Option<fulcrum_core::clients::Rate>,
    /// IPv6 clients are counted by this many leading bits of their address.
    pub ipv6_prefix: u8,
    /// Client addresses tracked at once per frontend (`0`: none), bounding the table's memory.
    pub max_clients: usize,
    /// `ban`: refused `after` times `within` a window puts a client on the block list `for` long.
    pub ban: Option<Ban>,
}

/// `[frontend.NAME.limits] ban = { after, within, for }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub after: u32,
    pub within: std::time::Duration,
    pub duration: std::time::Duration,
}

pub const DEFAULT_MAX_CLIENTS: usize = 32_768;

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            conn_per_client: None,
            conn_rate_per_client: None,
            request_rate_per_client: None,
            datagram_rate_per_client: None,
            ipv6_prefix: 64,
            max_clients: DEFAULT_MAX_CLIENTS,
            ban: None,
        }
    }
}

/// `[frontend.NAME.tls]` of an `https` frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFrontend {
    /// Chosen by the client's SNI (exact name, then wildcard); the first is the default.
    pub certificates: Vec<CertFiles>,
    pub min_version: TlsVersion,
    /// Refuse clients without SNI or with a name no certificate has, instead of the default.
    pub sni_strict: bool,
    /// `session_resumption` (tickets, session cache; default on): `false` = full handshakes.
    pub session_resumption: bool,
    /// `client_ca`: PEM of the CAs whose client certificates pass; `None`: none asked for.
    pub client_ca: Option<PathBuf>,
    /// `client_auth`: with `client_ca`, whether a client may come without a certificate.
    pub client_auth: ClientAuth,
    /// `client_cert_header`: the verified client's subject, to the servers (clients' removed).
    pub client_cert_header: String,
}

/// The default `client_cert_header`.
pub const DEFAULT_CLIENT_CERT_HEADER: &str = "X-Client-Cert-Subject";

/// `client_auth` of `[frontend.NAME.tls]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a certificate is served (and gets no subject header); one with a
    /// certificate must have a valid one.
    Optional,
    /// A client without a valid certificate is refused in the handshake.
    Required,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl Protocol {
    /// `http` or `https`: the HTTP service.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

/// The HTTP keys of a `protocol = "http"` frontend (they sit in `[frontend.NAME]` itself).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFrontend {
    /// A request head (first request: from accept; later ones: from their first byte) must
    /// arrive whole within this, else 408: the slowloris guard.
    pub header_timeout: Duration,
    /// Most bytes of a request head (request line and headers); more is 431 (414 when the
    /// request line alone is too long).
    pub max_header_bytes: usize,
    /// Most header fields of a request; more is 431.
    pub max_headers: usize,
    /// Most bytes of a request body; more is 413. `None`: unlimited (bodies are streamed).
    pub max_body: Option<u64>,
    /// `min_body_rate`: bytes a second a request body must keep up on average (after a
    /// grace of one second), else 408. `None`: no minimum (the default).
    pub min_body_rate: Option<u64>,
    /// An HTTP/1 connection between requests (or an HTTP/2 one with no stream) is closed
    /// after this long.
    pub keepalive_timeout: Duration,
    /// Clients whose `X-Forwarded-For` is believed: their forwarded address is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Add an RFC 7239 `Forwarded` header (opt-in; `X-Forwarded-*` are always set).
    pub forwarded: bool,
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for HttpFrontend {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body: None,
            min_body_rate: None,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            trusted_proxies: Vec::new(),
            forwarded: false,
        }
    }
}

pub const DEFAULT_SNI_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// `sessions = false`: how long a datagram's answer is waited for unless `session_timeout`
/// says otherwise (each waiting datagram holds a socket and a slot of the in-flight table).
pub const DEFAULT_DATAGRAM_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
pub const DEFAULT_MAX_SESSIONS_PER_SOURCE: usize = 1_024;

/// What a frontend does with a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Proxy to one server picked by the pool's algorithm.
    #[default]
    Proxy,
    /// Send each request to several servers at once; the first acceptable answer wins.
    Fanout(Fanout),
    /// Send to one server, and to a second only if the first has not answered within `delay`.
    Hedge(Fanout),
}

/// Settings of fan-out and hedged modes (`[frontend.NAME.fanout]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    /// How long to wait for an acceptable answer.
    pub timeout: Duration,
    /// Sent to the client when no acceptable answer came in time (nothing when unset).
    pub on_timeout: Option<String>,
    /// Answers starting with this do not win.
    pub reject_prefix: Option<String>,
    /// Ask at most this many healthy servers (all when unset).
    pub servers: Option<usize>,
    /// Hedge: wait this long for the first server before asking a second.
    pub delay: Duration,
    /// TCP: how a server's answer lines are matched to requests.
    pub matching: AnswerMatch,
}

/// How a TCP fan-out frontend matches a server's answer lines to requests (`match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerMatch {
    /// `"none"` (default): a server connection carries one request at a time and owes one
    /// line for it; a connection whose request ended unanswered is closed.
    #[default]
    OneAtATime,
    /// `"first-word"`: requests are pipelined on one connection per server; an answer belongs
    /// to the outstanding request with the same first word.
    FirstWord,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            on_timeout: None,
            reject_prefix: None,
            servers: None,
            delay: Duration::from_millis(50),
            matching: AnswerMatch::OneAtATime,
        }
    }
}

impl Frontend {
    /// Whether a connection's ClientHello is read for its server name (`sni` routes).
    pub fn has_sni_routes(&self) -> bool {
        self.routes.iter().any(Route::is_sni)
    }

    pub fn new(name: &str, bind: ListenAddr, pool: &str) -> Self {
        Self {
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_source: DEFAULT_MAX_SESSIONS_PER_SOURCE,
            mode: Mode::Proxy,
            name: name.to_string(),
            bind,
            protocol: Protocol::Tcp,
            pool: pool.to_string(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_connections: None,
            sessions: true,
            framing: Framing::Line,
            quit: None,
            http: HttpFrontend::default(),
            routes: Vec::new(),
            sni_timeout: DEFAULT_SNI_TIMEOUT,
            first_byte_timeout: None,
            tls: None,
            accept_proxy: Vec::new(),
            access: Default::default(),
            limits: ClientLimits::default(),
            fair_share: FairShare::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub servers: Vec<Server>,
    pub connect_timeout: Duration,
    /// Further servers tried after a failed connect (never the same one twice).
    pub retries: u32,
    pub eject: EjectPolicy,
    /// Most servers passive ejection may take out at once, in percent of the pool.
    pub max_ejection_percent: u32,
    /// A server coming back up gets its share ramped up over this long.
    pub slow_start: Duration,
    pub health: Option<HealthCheck>,
    /// Backends may join this pool through the agent port.
    pub self_register: bool,
    /// An agent's HELLO may name an IP other than its connection's (NAT, `--advertise`).
    pub trust_claimed_address: bool,
    /// Poll each server's agent port for HAProxy agent-check text.
    pub agent_pull: Option<AgentPull>,
    pub scale_out: Option<ScaleRule>,
    pub scale_in: Option<ScaleRule>,
    /// Clients finding every server at its `max_connections` wait here; `None`: refused at once.
    pub queue: Option<QueueSettings>,
    /// Servers given by host name are looked up again at their TTL, at the latest after this.
    pub resolve_interval: Duration,
    /// HTTP frontends' upstream side (`[pool.NAME.http]`).
    pub http: PoolHttp,
    /// HTTP: extra requests retries may add, in percent of the pool's requests (`retry_budget`).
    pub retry_budget_percent: u32,
    /// HTTP: `sticky = { cookie, ttl }`, a cookie that keeps a client on its server.
    pub sticky: Option<Sticky>,
    /// `send_proxy = "v1" | "v2"`: a PROXY header naming the client opens each server connection.
    pub send_proxy: Option<ProxyVersion>,
    /// `hash = "header:NAME" | "cookie:NAME" | "path"`; else (or if missing) the client address.
    pub hash: HashKey,
    /// `[pool.NAME.tls]`: TLS to the servers (`None`: plain TCP, or `enabled = false`).
    pub tls: Option<PoolTls>,
    /// `receive_buffer`: SO_RCVBUF of server connections (`None`: the kernel's autotuning).
    pub receive_buffer: Option<u32>,
}

/// The default `receive_buffer`: what a client that reads nothing can park in the kernel
/// on the server side of its connection (docs/guards.md, "Slow clients").
pub const DEFAULT_RECEIVE_BUFFER: u32 = 64 << 10;

/// `[pool.NAME.tls]`: how fulcrum speaks TLS to a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolTls {
    /// PEM bundle of the CAs a server's certificate must chain to; `None`: the system's
    /// roots.
    pub ca: Option<PathBuf>,
    /// Sent as SNI and verified against the certificate; `None`: each server's own host
    /// name, or its IP address (verified, no SNI) when it is given by address.
    pub server_name: Option<String>,
    /// `false`: any certificate is accepted (logged at start as a warning).
    pub verify: bool,
    /// The client certificate presented to servers that ask for one (`cert`, `key`).
    pub client_cert: Option<CertFiles>,
    /// ALPN protocols offered on TCP connections (HTTP frontends offer their pool's version).
    pub alpn: Vec<String>,
}

/// `[pool.NAME.http]`: how HTTP frontends talk to this pool's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolHttp {
    pub version: HttpVersion,
    /// Idle keep-alive connections kept per server per worker.
    pub max_idle: usize,
    /// An idle upstream connection is closed after this long.
    pub idle_timeout: Duration,
    /// From the request sent to the response head; 504 after it.
    pub response_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    H1,
    /// Cleartext HTTP/2 with prior knowledge.
    H2,
}

impl Default for PoolHttp {
    fn default() -> Self {
        Self {
            version: HttpVersion::H1,
            max_idle: 64,
            idle_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
        }
    }
}

pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// `sticky = { cookie = "NAME", ttl = "1h" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    pub ttl: Duration,
}

/// `queue = { size, timeout }`: HAProxy's per-backend queue and `timeout queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most clients waiting at once; further ones are refused.
    pub size: usize,
    /// A client waiting this long is refused.
    pub timeout: Duration,
}

pub const DEFAULT_QUEUE_SIZE: usize = 1_000;
pub const MAX_QUEUE_SIZE: usize = 1_000_000;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest per-server `max_connections`.
pub const MAX_SERVER_CONNECTIONS: u32 = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPull {
    /// The servers' agent port (on each server's IP); `None`: each server's own address.
    pub port: Option<u16>,
    /// Written once connected, before the answer is read (e.g. `__clients?\n`).
    pub send: Option<Vec<u8>>,
    pub interval: Duration,
    pub timeout: Duration,
}

/// When a pool's average load per healthy server stays beyond `threshold` for `window`, run
/// `command` or post to `webhook`; at most once per `cooldown`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleRule {
    pub threshold: f64,
    pub window: Duration,
    pub cooldown: Duration,
    pub command: Option<String>,
    pub webhook: Option<String>,
}

/// Longest `agent_pull.send`: a question, not an upload.
pub const MAX_PULL_SEND: usize = 512;

pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// Active health checking of a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP connect succeeds.
    Tcp,
    /// An HTTP/1.1 GET of `path` answers with a status in `status` (inclusive range) and, if
    /// set, a body containing `body`.
    Http { path: String, host: Option<String>, status: (u16, u16), body: Option<String> },
    /// `send` is written, and the answer starts with `expect`.
    SendExpect { send: Vec<u8>, expect: Vec<u8> },
    /// `send` as one UDP datagram; the answer datagram starts with `expect`.
    UdpSendExpect { send: Vec<u8>, expect: Vec<u8> },
}

impl Pool {
    pub fn new(name: &str, algorithm: Algorithm, servers: Vec<Server>) -> Self {
        Self {
            name: name.to_string(),
            algorithm,
            servers,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            receive_buffer: Some(DEFAULT_RECEIVE_BUFFER),
            retries: DEFAULT_RETRIES,
            eject: EjectPolicy::default(),
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            slow_start: Duration::ZERO,
            health: None,
            self_register: false,
            trust_claimed_address: false,
            agent_pull: None,
            scale_out: None,
            scale_in: None,
            queue: None,
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            http: PoolHttp::default(),
            retry_budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            sticky: None,
            send_proxy: None,
            hash: HashKey::Client,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub address: ServerAddr,
    pub weight: u32,
    pub state: ServerState,
    /// Most proxied client connections (TCP connections, UDP sessions) open to it at once.
    pub max_connections: Option<u32>,
}

impl Server {
    pub fn new(address: ServerAddr) -> Self {
        Self { address, weight: 1, state: ServerState::Up, max_connections: None }
    }
}

/// The operator's say over a server (health is separate: a server `up` here can still be
/// `down` by its health checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ServerState {
    /// In rotation (when healthy).
    #[default]
    Up,
    /// No new connections; open ones finish. Still health-checked.
    Drain,
    /// Out of rotation and not health-checked.
    Maint,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }
}

impl std::str::FromStr for ServerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "up" => Ok(ServerState::Up),
            "drain" => Ok(ServerState::Drain),
            "maint" => Ok(ServerState::Maint),
            _ => Err(format!("unknown server state \"{s}\" (expected: up, drain, maint)")),
        }
    }
}

/// One `[[frontend.NAME.route]]`: conditions (all must hold; an absent one always does) and
/// what to do with a matching request (docs/routing.md). A route with `sni` is a TLS route
/// instead (docs/tls.md, "Passthrough by SNI"): read from the ClientHello, it sends the whole
/// connection to `pool` untouched; it has no other condition or action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// Exact names or `*.domain` wildcards, lower case; any may match.
    pub hosts: Vec<String>,
    /// Starts with `/`.
    pub path_prefix: Option<String>,
    /// A valid regex (checked at parse time), searched in the path without the query.
    pub path_regex: Option<String>,
    /// Upper-case method tokens; any may match.
    pub methods: Vec<String>,
    pub header: Option<HeaderRule>,
    /// The pool a matching request goes to; `None` only with `redirect_https`.
    pub pool: Option<String>,
    /// Taken off the front of the path before forwarding (`strip_prefix = true` is resolved to
    /// the route's `path_prefix`).
    pub strip_prefix: Option<String>,
    /// Request headers set (replacing any of the same name) before forwarding, in order.
    pub set_headers: Vec<(String, String)>,
    /// Request headers removed before forwarding.
    pub remove_headers: Vec<String>,
    /// `redirect = "https"`: answer 301 with the same URL over HTTPS instead of forwarding.
    pub redirect_https: bool,
    /// TLS routes (`tcp` frontends, and `https` ones with `passthrough`): server names as
    /// `fulcrum_core::sni::pattern` gives them (lower case, exact or `*.domain`); any may match.
    pub sni: Vec<String>,
    /// `https`: a connection this route's `sni` matches is passed through to `pool`, not
    /// terminated. Always set with `sni` on an `https` frontend, never without it.
    pub passthrough: bool,
    /// The line of the route's table in the config file (0 when not from a file), for warnings.
    pub line: usize,
}

impl Route {
    /// A TLS route: chosen by the ClientHello's server name, before any HTTP.
    pub fn is_sni(&self) -> bool {
        !self.sni.is_empty()
    }

    /// The route's conditions, as fulcrum-core matches them (`RouteTable::build`, `shadowed`).
    pub fn spec(&self) -> RouteSpec {
        RouteSpec {
            hosts: self.hosts.clone(),
            path_prefix: self.path_prefix.clone(),
            path_regex: self.path_regex.clone(),
            methods: self.methods.clone(),
            header: self.header.clone(),
        }
    }
}
