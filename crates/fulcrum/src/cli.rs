//! Command-line interface (clap). Every command and flag here is a contract with users and
//! scripts: rename nothing, add freely.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "fulcrum",
    version,
    about = "A load balancer: TCP, UDP, HTTP and HTTPS, with health checks, hot reload and an admin API."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human", env = "FULCRUM_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Splice {
    /// Plain buffers for small exchanges, splice(2) once a direction turns bulk.
    Auto,
    Never,
    Always,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Forward a port to a set of servers: `fulcrum forward 127.0.0.1:8080 9001 9002`.
    Forward(ForwardArgs),
    /// Run the daemon with a TOML configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Zero-copy policy for TCP forwarding.
        #[arg(long, value_enum, default_value = "auto", env = "FULCRUM_SPLICE")]
        splice: Splice,
        /// Workers block as soon as they run out of work, even when busy (by default a
        /// busy worker yields its core once first).
        #[arg(long)]
        no_park_yield: bool,
    },
    /// Validate a configuration file: exit 0, or print every error and exit 2.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Control a running daemon through its admin API.
    Ctl(CtlArgs),
    /// A live view of a running daemon in the terminal, through its admin API: pools and
    /// servers with rates and sparklines; keys to drain and enable a server.
    Top(TopArgs),
    /// A guided tour: demo backends on loopback, a balancer in front, a burst of traffic,
    /// and how it was spread by several algorithms.
    Demo {
        /// Connections per algorithm.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=5000))]
        connections: u32,
    },
    /// A demo and test server to put behind the balancer: upper-casing line echo (tcp), a
    /// tiny HTTP/1.1 responder (http) or datagram echo (udp), optionally reporting its load to
    /// a balancer's agent port.
    Backend(BackendArgs),
    /// A load client: concurrent clients for a bounded time or count, then a table of how
    /// the requests were spread over the servers, with latency percentiles.
    Load(LoadArgs),
    /// Print a shell completion script: `fulcrum completions bash > /etc/bash_completion.d/fulcrum`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (fulcrum.1 and one per command, e.g. fulcrum-run.1) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendProtocol {
    /// Line echo: each line comes back upper-cased; the line `WHOAMI` answers the name.
    Tcp,
    /// HTTP/1.1 with keep-alive: every request gets 200 and a body naming the backend.
    Http,
    /// Each datagram comes back upper-cased to its sender; `WHOAMI` answers the name.
    Udp,
}

#[derive(clap::Args, Debug)]
pub struct BackendArgs {
    /// Where to listen: [IP:]PORT (port 0 takes a free port; the `listening` log line says which).
    #[arg(long)]
    pub listen: String,
    /// What to serve.
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: BackendProtocol,
    /// Service time: every request is answered after this long, e.g. 20ms.
    #[arg(long, value_parser = delay, default_value = "0s")]
    pub delay: Duration,
    /// Name answered to `WHOAMI` and in HTTP bodies (default: the bound listen address).
    #[arg(long)]
    pub name: Option<String>,
    /// A balancer's agent port to report load to: [HOST:]PORT.
    #[arg(long, requires_all = ["pool", "key_file"])]
    pub agent: Option<String>,
    /// Pool to join through the agent port.
    #[arg(long, requires = "agent")]
    pub pool: Option<String>,
    /// File holding the agent's pre-shared key (surrounding whitespace is ignored).
    #[arg(long, requires = "agent")]
    pub key_file: Option<PathBuf>,
    /// Address the balancer should send clients to: IP[:PORT] (PORT defaults to the bound
    /// port). Without it only the port is sent and the balancer takes the IP this backend
    /// connects from; an IP other than that needs `trust_claimed_address = true` on the pool.
    #[arg(long, requires = "agent", value_name = "IP[:PORT]")]
    pub advertise: Option<String>,
    /// Time between two load reports to the agent port.
    #[arg(long, value_parser = report_interval, default_value = "1s")]
    pub report_interval: Duration,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LoadProtocol {
    Tcp,
    Udp,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Where to send load: [HOST:]PORT of a frontend (of a directory with --directory).
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub clients: u32,
    /// Run for this long, at most 1h (default 10s, or 1h as a bound when --requests is given).
    #[arg(long, value_parser = run_time)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (with --duration too: whichever comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub requests: Option<u64>,
    /// TARGET is a directory frontend: ask it `PICK` per request, then call the server it names
    /// (over TCP) directly.
    #[arg(long)]
    pub directory: bool,
    /// Transport to TARGET: requests (or, with --directory, the PICK questions) over tcp or udp.
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: LoadProtocol,
    /// Further attempts, each on a new connection, before a request counts as an error.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
    /// Time allowed for one attempt, connecting included.
    #[arg(long, value_parser = attempt_timeout, default_value = "2s")]
    pub timeout: Duration,
    /// The request line (sent without its newline over udp); the answer must be it upper-cased.
    #[arg(long, default_value = "hello")]
    pub message: String,
    /// Reuse each client's connection for its next request (default: a new one per request).
    #[arg(long)]
    pub keep_alive: bool,
    /// No live progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Print the result as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// Where to listen: [IP:]PORT (a bare port listens on all interfaces).
    #[arg(value_name = "LISTEN")]
    pub listen: String,
    /// Servers: [HOST:]PORT (a bare port means localhost; IPv6 as [::1]:PORT).
    #[arg(value_name = "DEST", required = true)]
    pub dests: Vec<String>,
    /// Balancing algorithm.
    #[arg(long, default_value = "round-robin")]
    pub algorithm: String,
    /// Worker threads (default: one per available core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// Time allowed to connect to a server, e.g. 500ms, 3s.
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub connect_timeout: Duration,
    /// Close a connection after no byte moved for this long, e.g. 60s.
    #[arg(long, value_parser = duration, default_value = "300s")]
    pub idle_timeout: Duration,
    /// Further servers to try when a connect fails.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=7))]
    pub retries: u32,
    /// Limit of concurrently proxied connections (default: from the open-file limit).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most clients each DEST serves at once (its `max_connections`); the rest wait in line
    /// with --queue, or are refused.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_per_server: Option<u32>,
    /// Clients that may wait in line when every DEST is full (default: none wait).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub queue: Option<u64>,
    /// How long a client may wait in line.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub queue_timeout: Duration,
    /// Time open connections get to finish after SIGTERM.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Do not write one access-log line per connection.
    #[arg(long)]
    pub no_access_log: bool,
    /// Zero-copy policy for TCP forwarding.
    #[arg(long, value_enum, default_value = "auto", env = "FULCRUM_SPLICE")]
    pub splice: Splice,
    /// Workers block as soon as they run out of work, even when busy (by default a busy
    /// worker yields its core once first).
    #[arg(long)]
    pub no_park_yield: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = fulcrum_config::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A duration within `[min, max]`: the backend and load commands bound every wait they make.
fn bounded(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = fulcrum_config::parse_duration(s)?;
    if d < min || d > max {
        let show = |d: Duration| humantime_ish(d);
        return Err(format!("must be between {} and {}", show(min), show(max)));
    }
    Ok(d)
}

fn humantime_ish(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

fn delay(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::ZERO, Duration::from_secs(600))
}

fn report_interval(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::from_millis(10), Duration::from_secs(3600))
}

fn run_time(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::from_millis(1), Duration::from_secs(3600))
}

fn attempt_timeout(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::from_millis(1), Duration::from_secs(600))
}

/// How `ctl` and `top` reach the admin API: one set of options, so both read the same flags
/// and environment.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Base URL of the admin API.
    #[arg(long, env = "FULCRUM_API", default_value = "http://127.0.0.1:9090")]
    pub api: String,
    /// Bearer token.
    #[arg(long, env = "FULCRUM_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Time between two reads of the daemon's live view, e.g. 1s, 500ms (the daemon samples
    /// once a second).
    #[arg(long, value_parser = top_interval, default_value = "1s")]
    pub interval: Duration,
}

fn top_interval(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::from_millis(100), Duration::from_secs(60))
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// List, add, remove, drain, enable or re-weight servers.
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Re-read the daemon's config file (every error is shown; a bad file changes nothing).
    Reload,
    /// Certificates of every https frontend: file, names, expiry and days left, and the last
    /// certificate reload that failed.
    Certs,
    /// The client addresses holding the most connections (and UDP sessions), then the
    /// fastest: what per-client limits and the fair share look at.
    TopClients {
        /// How many to list (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only this frontend's clients.
        #[arg(long)]
        frontend: Option<String>,
    },
    /// The runtime block list: addresses refused on every frontend.
    #[command(subcommand)]
    Blocks(BlocksCommand),
}

#[derive(Subcommand, Debug)]
pub enum BlocksCommand {
    /// Every block in force, with when it ends.
    List,
    /// Refuse an address or range on every frontend from now on.
    Add {
        /// ADDR or CIDR, e.g. 203.0.113.7 or 203.0.113.0/24.
        #[arg(value_name = "ADDR|CIDR")]
        cidr: String,
        /// How long, e.g. 10m (default: until removed).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Also close the open connections (and UDP sessions) from it.
        #[arg(long)]
        cut: bool,
        /// Why, shown by `list`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift the block of exactly this address or range.
    Remove {
        #[arg(value_name = "ADDR|CIDR")]
        cidr: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServersCommand {
    /// Every server with its state, health, weight and counters.
    List {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Add a server to a pool.
    Add {
        pool: String,
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a server; its open connections finish.
    Remove { pool: String, address: String },
    /// No new connections to the server; open ones finish.
    Drain { pool: String, address: String },
    /// Put a drained or maintained server back in rotation.
    Enable { pool: String, address: String },
    /// Out of rotation and not health-checked.
    Maint { pool: String, address: String },
    /// Change a server's weight.
    Weight { pool: String, address: String, weight: u32 },
}
