//! The commands: turn arguments into a validated config, start the engine, wait for a
//! signal, drain. Errors come back as one line each, sorted into config errors (exit 2) and
//! runtime failures (exit 1).

use fulcrum_config::{Config, Frontend, Pool, Server, parse_dest, parse_listen};
use fulcrum_core::balance::Algorithm;
use fulcrum_proxy::{Engine, EngineOptions, SpliceMode};

use crate::cli::{Command, ForwardArgs, Splice};

pub enum Failure {
    /// Bad arguments or configuration: exit 2.
    Config(String),
    /// Could not start or keep running: exit 1.
    Runtime(String),
}

pub fn dispatch(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Forward(args) => {
            let splice = args.splice;
            let config = forward_config(&args).map_err(Failure::Config)?;
            serve(&config, splice)
        }
        Command::Run { config, splice } => {
            let c =
                fulcrum_config::load_file(&config).map_err(|e| Failure::Config(e.to_string()))?;
            serve(&c, splice)
        }
        Command::Check { config } => {
            let c =
                fulcrum_config::load_file(&config).map_err(|e| Failure::Config(e.to_string()))?;
            println!(
                "{}: configuration is valid ({} frontend(s), {} pool(s))",
                config.display(),
                c.frontends.len(),
                c.pools.len()
            );
            Ok(())
        }
        Command::Demo { connections } => crate::demo::run(connections).map_err(Failure::Runtime),
    }
}

/// The config `fulcrum forward` stands for: one frontend "forward", one pool "forward".
pub fn forward_config(a: &ForwardArgs) -> Result<Config, String> {
    let listen = parse_listen(&a.listen).map_err(|e| format!("LISTEN {}: {e}", a.listen))?;
    let algorithm: Algorithm = a.algorithm.parse().map_err(|e| format!("--algorithm: {e}"))?;
    let mut servers: Vec<Server> = Vec::with_capacity(a.dests.len());
    for d in &a.dests {
        let addr = parse_dest(d).map_err(|e| format!("DEST {d}: {e}"))?;
        if servers.iter().any(|s| s.address == addr) {
            return Err(format!("DEST {d}: {addr} is given twice"));
        }
        servers.push(Server::new(addr));
    }
    let mut pool = Pool::new("forward", algorithm, servers);
    pool.connect_timeout = a.connect_timeout;
    pool.retries = a.retries;
    let mut fe = Frontend::new("forward", listen, "forward");
    fe.idle_timeout = a.idle_timeout;
    Ok(Config {
        workers: a.workers.map(|w| w as usize),
        max_connections: a.max_connections,
        drain_timeout: a.drain_timeout,
        access_log: !a.no_access_log,
        frontends: vec![fe],
        pools: vec![pool],
    })
}

pub fn splice_mode(s: Splice) -> SpliceMode {
    match s {
        Splice::Auto => SpliceMode::Auto,
        Splice::Never => SpliceMode::Never,
        Splice::Always => SpliceMode::Always,
    }
}

/// Default connection limit: each connection holds two descriptors; keep some for pipes,
/// logs and the control plane.
pub fn default_max_connections(nofile: u64) -> usize {
    (nofile.saturating_sub(256) / 2).clamp(64, 1_000_000) as usize
}

pub fn start_engine(config: &Config, splice: Splice) -> Result<Engine, Failure> {
    let nofile = fulcrum_proxy::raise_nofile_limit();
    let opts = EngineOptions {
        splice: splice_mode(splice),
        default_max_connections: default_max_connections(nofile),
    };
    Engine::start(config, opts).map_err(|e| Failure::Runtime(e.to_string()))
}

fn serve(config: &Config, splice: Splice) -> Result<(), Failure> {
    let engine = start_engine(config, splice)?;
    for (name, addr) in engine.local_addrs() {
        tracing::info!(frontend = %name, address = %addr, "listening");
    }
    tracing::info!(
        workers = engine.workers(),
        max_connections = engine.shared().limits.max(),
        version = env!("CARGO_PKG_VERSION"),
        "fulcrum started"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start control runtime: {e}")))?;
    let signal = rt.block_on(wait_for_stop())?;
    tracing::info!(
        signal,
        drain_timeout = ?config.drain_timeout,
        open = active(&engine),
        "stopping: no new connections, draining open ones"
    );
    engine.shutdown();
    engine.join();
    tracing::info!("stopped");
    Ok(())
}

fn active(engine: &Engine) -> usize {
    engine.shared().limits.active()
}

async fn wait_for_stop() -> Result<&'static str, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Runtime(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Runtime(format!("cannot handle SIGINT: {e}")))?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
