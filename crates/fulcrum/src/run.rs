//! The commands: turn arguments into a validated config, start the engine, wait for a
//! signal, drain. Errors come back as one line each, sorted into config errors (exit 2) and
//! runtime failures (exit 1).

use std::path::PathBuf;

use fulcrum_admin::{AdminServer, Controller, serve_admin};
use fulcrum_config::{ADMIN_TOKEN_ENV, Config, Frontend, Pool, Server, parse_dest, parse_listen};
use fulcrum_core::balance::Algorithm;
use fulcrum_proxy::{EngineOptions, SpliceMode};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

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
            let (splice, park_yield) = (args.splice, !args.no_park_yield);
            let config = forward_config(&args).map_err(Failure::Config)?;
            serve(config, None, splice, park_yield)
        }
        Command::Run { config, splice, no_park_yield } => {
            let c =
                fulcrum_config::load_file(&config).map_err(|e| Failure::Config(e.to_string()))?;
            serve(c, Some(config), splice, !no_park_yield)
        }
        Command::Check { config } => {
            let c =
                fulcrum_config::load_file(&config).map_err(|e| Failure::Config(e.to_string()))?;
            // Certificates and CA files are read as `run` reads them: a file it would refuse
            // fails here (the dashboard's config box runs the same checks).
            let (bad, warnings) =
                fulcrum_admin::check::check_config(&c, &config.display().to_string());
            for w in warnings {
                eprintln!("warning: {w}");
            }
            if !bad.is_empty() {
                return Err(Failure::Config(bad.join("\n")));
            }
            println!(
                "{}: configuration is valid ({} frontend(s), {} pool(s))",
                config.display(),
                c.frontends.len(),
                c.pools.len()
            );
            Ok(())
        }
        Command::Demo { connections } => crate::demo::run(connections).map_err(Failure::Runtime),
        Command::Ctl(args) => crate::ctl::run(args),
        Command::Top(args) => crate::top::run(args),
        Command::Backend(args) => crate::backend::run(args),
        Command::Load(args) => crate::load::run(args),
        Command::Completions { shell } => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "fulcrum", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => manpages(&dir).map_err(Failure::Runtime),
    }
}

/// `fulcrum.1` and one page per command (`fulcrum-run.1`, `fulcrum-ctl.1`, ...), for packages.
fn manpages(dir: &std::path::Path) -> Result<(), String> {
    let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir).map_err(|e| format!("{}: {e}", dir.display()))
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
        servers.push(Server { max_connections: a.max_per_server, ..Server::new(addr) });
    }
    let mut pool = Pool::new("forward", algorithm, servers);
    pool.connect_timeout = a.connect_timeout;
    pool.retries = a.retries;
    if a.queue_timeout.is_zero() {
        return Err("--queue-timeout: must be more than 0".into());
    }
    pool.queue = a.queue.map(|size| fulcrum_config::QueueSettings {
        size: size as usize,
        timeout: a.queue_timeout,
    });
    let mut fe = Frontend::new("forward", listen, "forward");
    fe.idle_timeout = a.idle_timeout;
    Ok(Config {
        workers: a.workers.map(|w| w as usize),
        max_connections: a.max_connections,
        drain_timeout: a.drain_timeout,
        access_log: !a.no_access_log,
        frontends: vec![fe],
        pools: vec![pool],
        ..Config::default()
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
    (nofile.saturating_sub(fulcrum_proxy::DESCRIPTOR_RESERVE) / 2).clamp(64, 1_000_000) as usize
}

/// The admin token: `FULCRUM_ADMIN_TOKEN` wins over `admin.token_file`. A non-loopback admin
/// listener without a token is refused: it would hand the pool to anyone on the network.
fn admin_token(config: &Config) -> Result<Option<String>, Failure> {
    let Some(admin) = &config.admin else { return Ok(None) };
    let from_env = std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty());
    let token = match (from_env, &admin.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => {
            let t = std::fs::read_to_string(path).map_err(|e| {
                Failure::Config(format!("admin.token_file: cannot read {}: {e}", path.display()))
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(Failure::Config(format!(
                    "admin.token_file: {} is empty",
                    path.display()
                )));
            }
            Some(t)
        }
        (None, None) => None,
    };
    if token.is_none() && !admin.bind.ip().is_loopback() {
        return Err(Failure::Config(format!(
            "admin.bind: refusing to serve the admin API on non-loopback address {} without a token \
             (set admin.token_file or {ADMIN_TOKEN_ENV})",
            admin.bind
        )));
    }
    Ok(token)
}

fn serve(
    config: Config,
    path: Option<PathBuf>,
    splice: Splice,
    park_yield: bool,
) -> Result<(), Failure> {
    let token = admin_token(&config)?;
    // A certificate the admin listener cannot use stops the start before anything listens.
    let admin_tls = match config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        Some(files) => Some(
            fulcrum_admin::check::admin_tls_config(files)
                .map_err(|e| Failure::Config(format!("admin.tls: {e}")))?,
        ),
        None => None,
    };
    if let Some(path) = &config.access_log_file {
        crate::logging::open_access_file(path).map_err(Failure::Config)?;
    }
    if let Some(a) = &config.agent {
        fulcrum_admin::read_key(&a.key_file).map_err(Failure::Config)?;
    }
    let nofile = fulcrum_proxy::raise_nofile_limit();
    let opts = EngineOptions {
        splice: splice_mode(splice),
        default_max_connections: default_max_connections(nofile),
        park_yield,
        descriptor_budget: fulcrum_proxy::descriptor_budget(nofile),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start control runtime: {e}")))?;
    rt.block_on(async move {
        let admin = config.admin.clone();
        let drain = config.drain_timeout;
        let controller =
            Controller::start(config, path, opts, tokio::runtime::Handle::current())
                .map_err(Failure::Runtime)?;
        for (name, addr) in controller.engine().local_addrs() {
            tracing::info!(frontend = %name, address = %addr, "listening");
        }
        let workers = controller.engine().workers();
        let max = controller.engine().shared().limits.max();
        let view = controller.read_view();
        let controller = controller.into_shared();
        let stop_admin = CancellationToken::new();
        let mut admin_task = None;
        if let Some(a) = admin {
            let l = fulcrum_admin::listen_deep(a.bind)
                .map_err(|e| Failure::Runtime(format!("cannot bind admin API {}: {}", a.bind, fulcrum_config::io_reason(&e))))?;
            let local = l.local_addr().map_err(|e| Failure::Runtime(e.to_string()))?;
            if token.is_none() {
                tracing::warn!(address = %local, "admin API has no token: open to every local user");
            }
            tracing::info!(address = %local, tls = a.tls.is_some(), "admin API listening");
            let tls = admin_tls.clone();
            let dashboard =
                fulcrum_admin::Dashboard::start(view.clone(), stop_admin.clone(), tls.is_some());
            let server = AdminServer {
                controller: controller.clone(),
                view: view.clone(),
                token,
                dashboard,
                tls,
            };
            admin_task = Some(tokio::spawn(serve_admin(l, server, stop_admin.clone(), drain)));
        }
        fulcrum_admin::start_resolver(controller.clone(), stop_admin.clone()).await;
        fulcrum_admin::start_cert_watch(controller.clone(), stop_admin.clone()).await;
        if let Some(addr) = fulcrum_admin::start_agent(controller.clone(), stop_admin.clone())
            .await
            .map_err(Failure::Runtime)?
        {
            tracing::info!(address = %addr, "agent listener ready");
        }
                tracing::info!(workers, max_connections = max, version = env!("CARGO_PKG_VERSION"), "fulcrum started");
        // Every listener (frontends, admin, agent) is bound and accepting by now.
        fulcrum_admin::notify::ready();
        fulcrum_admin::notify::spawn_watchdog(stop_admin.clone());
        let signal = wait_for_stop(&controller).await?;
        fulcrum_admin::notify::stopping();
        tracing::info!(
            signal,
            drain_timeout = ?drain,
            open = controller.lock().await.engine().shared().limits.active(),
            "stopping: no new connections, draining open ones"
        );
        stop_admin.cancel();
        // The admin API and the workers drain side by side, each within drain_timeout.
        let admin_done = async {
            if let Some(t) = admin_task {
                let _ = t.await;
            }
        };
        let c = controller.clone();
        let workers_done = tokio::task::spawn_blocking(move || c.blocking_lock().shutdown());
        let ((), workers) = tokio::join!(admin_done, workers_done);
        workers.map_err(|e| Failure::Runtime(e.to_string()))?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the config file meanwhile, SIGUSR1 reopens
/// the access log file.
async fn wait_for_stop(controller: &Mutex<Controller>) -> Result<&'static str, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k: SignalKind, name: &str| {
        signal(k).map_err(|e| Failure::Runtime(format!("cannot handle {name}: {e}")))
    };
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    let mut usr1 = sig(SignalKind::user_defined1(), "SIGUSR1")?;
    loop {
        tokio::select! {
            _ = usr1.recv() => crate::logging::reopen_access_file(),
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => {
                if let Err(e) = fulcrum_admin::reload_off_thread(controller).await {
                    tracing::error!(errors = ?e.errors, "reload on SIGHUP failed: {}", e.message);
                }
            }
        }
    }
}
