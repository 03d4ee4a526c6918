//! Logging setup: human or JSON lines on stderr through a non-blocking writer, so a slow
//! terminal or pipe never stalls a worker (lines are dropped, not waited for, when the
//! writer falls behind). `RUST_LOG` filters as usual; the default is `info`.
//!
//! The access log (target `fulcrum::access`) goes with the rest unless `access_log_file`
//! names a file: then it goes there, through its own non-blocking writer, in the same
//! format, and the file is reopened on SIGUSR1 so logrotate can move it away.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;

const ACCESS_TARGET: &str = "fulcrum::access";

/// Whether access lines go to the file rather than stderr.
static TO_FILE: AtomicBool = AtomicBool::new(false);
/// The open access log file and its path. Written only by the access writer's own thread
/// (tracing-appender's worker) and swapped by `open_access_file`: never on the data path.
static ACCESS_FILE: OnceLock<Mutex<Option<(PathBuf, File)>>> = OnceLock::new();

fn access_file() -> &'static Mutex<Option<(PathBuf, File)>> {
    ACCESS_FILE.get_or_init(|| Mutex::new(None))
}

/// What the access writer's thread writes to: the current file, or nothing (between a
/// failed reopen and the next good one, lines are dropped rather than sent elsewhere).
struct AccessWriter;

impl Write for AccessWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = access_file().lock().unwrap_or_else(|p| p.into_inner());
        match f.as_mut() {
            Some((_, file)) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut f = access_file().lock().unwrap_or_else(|p| p.into_inner());
        match f.as_mut() {
            Some((_, file)) => file.flush(),
            None => Ok(()),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// Sends the access log to `path` from now on (opened for appending, created if needed).
/// An error leaves the access log where it was.
pub fn open_access_file(path: &Path) -> Result<(), String> {
    let file = open_append(path)
        .map_err(|e| format!("access_log_file: cannot open {}: {e}", path.display()))?;
    *access_file().lock().unwrap_or_else(|p| p.into_inner()) = Some((path.to_path_buf(), file));
    TO_FILE.store(true, Ordering::Relaxed);
    Ok(())
}

/// SIGUSR1: opens the access log file's path again (logrotate has renamed the old one).
/// Does nothing without `access_log_file`; a failure is logged and lines are dropped until
/// the next reopen works (never written to the renamed file forever).
pub fn reopen_access_file() {
    let path = {
        let f = access_file().lock().unwrap_or_else(|p| p.into_inner());
        match f.as_ref() {
            Some((p, _)) => p.clone(),
            None => return,
        }
    };
    match open_append(&path) {
        Ok(file) => {
            *access_file().lock().unwrap_or_else(|p| p.into_inner()) = Some((path.clone(), file));
            tracing::info!(path = %path.display(), "access log file reopened");
        }
        Err(e) => {
            if let Some((_, old)) = access_file().lock().unwrap_or_else(|p| p.into_inner()).take() {
                drop(old);
            }
            tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log file: access lines dropped until the next SIGUSR1");
        }
    }
}

/// Picks, per event, where its line goes: access lines to the file once one is open.
struct Route {
    stderr: NonBlocking,
    access: NonBlocking,
}

impl<'a> MakeWriter<'a> for Route {
    type Writer = NonBlocking;

    fn make_writer(&'a self) -> Self::Writer {
        self.stderr.clone()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        if meta.target() == ACCESS_TARGET && TO_FILE.load(Ordering::Relaxed) {
            self.access.clone()
        } else {
            self.stderr.clone()
        }
    }
}

/// `default_level` applies when `RUST_LOG` is not set. The guards flush both writers when
/// dropped at exit.
pub fn init(format: LogFormat, default_level: &str) -> (WorkerGuard, WorkerGuard) {
    let nb = |w: Box<dyn Write + Send>| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(64 * 1024)
            .finish(w)
    };
    let (stderr, stderr_guard) = nb(Box::new(std::io::stderr()));
    let (access, access_guard) = nb(Box::new(AccessWriter));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(Route { stderr, access });
    match format {
        LogFormat::Human => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    (stderr_guard, access_guard)
}
