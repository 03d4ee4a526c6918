//! Logging setup: human or JSON lines on stderr through a non-blocking writer, so a slow
//! terminal or pipe never stalls a worker (lines are dropped, not waited for, when the
//! writer falls behind). `RUST_LOG` filters as usual; the default is `info`.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// `default_level` applies when `RUST_LOG` is not set.
pub fn init(format: LogFormat, default_level: &str) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(64 * 1024)
        .finish(std::io::stderr());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Human => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
