//! The `fulcrum` binary: command line, logging, signals and wiring of the engine. The only
//! crate allowed to use `anyhow` and to call `std::process::exit`.

mod backend;
mod cli;
mod client;
mod ctl;
mod demo;
mod load;
mod logging;
mod run;
mod top;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // The demo and the load client print their own tables: only warnings in between.
    let quiet = matches!(cli.command, cli::Command::Demo { .. } | cli::Command::Load(..));
    // `top` owns the terminal: a log line on stderr would land in the middle of its screen.
    let _guard = (!matches!(cli.command, cli::Command::Top(..)))
        .then(|| logging::init(cli.log_format, if quiet { "warn" } else { "info" }));
    match run::dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(run::Failure::Config(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(run::Failure::Runtime(msg)) => {
            eprintln!("fulcrum: {msg}");
            ExitCode::from(1)
        }
    }
}
