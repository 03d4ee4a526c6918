//! Certificate files watched: when a file an `https` frontend's TLS reads changes, its
//! certificates are loaded again without a reload (`Engine::refresh_certificates`): new
//! handshakes get the new ones, open connections keep theirs, and a file that cannot be
//! loaded is logged and counted while the old certificates keep serving.
//!
//! The watch is on the files' directories, not the files: editors and tools such as certbot
//! or Kubernetes replace a file (write a new one, rename it over, or swap a symlink) rather
//! than write into it, and a watch on the old file would see none of that. Any change in those
//! directories starts a short quiet period (changes usually come in bursts: a certificate,
//! then its key); then every frontend's files are read and compared with what it serves, so a
//! change elsewhere in the directory costs one read and nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fulcrum_proxy::Refresh;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;

/// How long the directories must stay quiet before the files are read.
const QUIET: Duration = Duration::from_millis(300);
/// The longest a burst of changes may put the reading off.
const MAX_WAIT: Duration = Duration::from_secs(3);

/// Starts the watcher task on the current (control) runtime. A watcher that cannot start is
/// logged: certificates then change on reload only.
pub async fn start_cert_watch(controller: Arc<Mutex<Controller>>, stop: CancellationToken) {
    let files = controller.lock().await.engine().watch_tls_files();
    let changed = Arc::new(Notify::new());
    let signal = changed.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Our own reads show up as access events: only writes, creations, renames and
        // removals count, or every look would start another.
        if let Ok(ev) = res
            && !matches!(ev.kind, EventKind::Access(a) if a != notify::event::AccessKind::Close(notify::event::AccessMode::Write))
        {
            signal.notify_one();
        }
    });
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch certificate files: they change on reload only");
            return;
        }
    };
    tokio::spawn(run(controller, watcher, files, changed, stop));
}

async fn run(
    controller: Arc<Mutex<Controller>>,
    mut watcher: notify::RecommendedWatcher,
    mut files: watch::Receiver<Arc<Vec<PathBuf>>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut dirs = BTreeSet::new();
    let current = files.borrow_and_update().clone();
    follow(&mut watcher, &mut dirs, &current);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            r = files.changed() => {
                if r.is_err() {
                    return;
                }
                let current = files.borrow_and_update().clone();
                follow(&mut watcher, &mut dirs, &current);
                continue;
            }
            () = changed.notified() => {}
        }
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(QUIET) => break,
                () = changed.notified() => {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        // Under the controller's lock, so no reload changes the frontends meanwhile, and on
        // this thread, as a reload reads them: a few small local files, and the lock is never
        // held across an await.
        let results = controller.lock().await.engine().refresh_certificates();
        for (frontend, r) in results {
            match r {
                Refresh::Unchanged => {}
                Refresh::Reloaded => {
                    tracing::info!(frontend, "certificates reloaded after a file change");
                }
                Refresh::Failed(e) => tracing::error!(
                    frontend,
                    error = %e,
                    "certificate files changed but cannot be loaded: the old certificates keep serving"
                ),
            }
        }
    }
}

/// Watches the directories of `files` and stops watching those no file is in any more.
fn follow(
    watcher: &mut notify::RecommendedWatcher,
    dirs: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) {
    let wanted: BTreeSet<PathBuf> = files.iter().filter_map(|f| dir_of(f)).collect();
    for gone in dirs.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    dirs.retain(|d| wanted.contains(d));
    for d in wanted {
        if dirs.contains(&d) {
            continue;
        }
        match watcher.watch(&d, RecursiveMode::NonRecursive) {
            Ok(()) => {
                dirs.insert(d);
            }
            Err(e) => tracing::warn!(
                directory = %d.display(),
                error = %e,
                "cannot watch a certificate directory: its files change on reload only"
            ),
        }
    }
}

fn dir_of(file: &Path) -> Option<PathBuf> {
    match file.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}
