//! Command-line interface (clap). Every command and flag here is a contract with users and
//! scripts: rename nothing, add freely.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "fulcrum", version, about = "A load balancer: TCP today, UDP and HTTP next.")]
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
    },
    /// Validate a configuration file: exit 0, or print every error and exit 2.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Control a running daemon through its admin API.
    Ctl(CtlArgs),
    /// A guided tour: demo backends on loopback, a balancer in front, a burst of traffic,
    /// and how it was spread by several algorithms.
    Demo {
        /// Connections per algorithm.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=5000))]
        connections: u32,
    },
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
    /// Time open connections get to finish after SIGTERM.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Do not write one access-log line per connection.
    #[arg(long)]
    pub no_access_log: bool,
    /// Zero-copy policy for TCP forwarding.
    #[arg(long, value_enum, default_value = "auto", env = "FULCRUM_SPLICE")]
    pub splice: Splice,
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = fulcrum_config::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Base URL of the admin API.
    #[arg(long, env = "FULCRUM_API", default_value = "http://127.0.0.1:9090")]
    pub api: String,
    /// Bearer token.
    #[arg(long, env = "FULCRUM_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// List, add, remove, drain, enable or re-weight servers.
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Re-read the daemon's config file (every error is shown; a bad file changes nothing).
    Reload,
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
