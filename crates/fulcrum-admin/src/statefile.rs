//! The state file: the runtime overlay written atomically (temp file, fsync, rename; the
//! previous good file kept beside it as `.prev`), and read back at start with a fallback, so a
//! crash mid-write never prevents a start.

use std::io::Write;
use std::path::{Path, PathBuf};

use fulcrum_config::Overlay;

fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// Writes `overlay` so that at every instant either the old or the new content is readable.
/// The temporary file has a name no other writer uses (process id and a counter), is created
/// new (never opened through a symlink someone left in its place: `O_CREAT | O_EXCL` does not
/// follow one) and readable by the owner only: it names the servers of every pool.
pub fn save(path: &Path, overlay: &Overlay) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = sibling(path, &format!(".{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(overlay.to_json().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if path.exists() {
        std::fs::rename(path, sibling(path, ".prev"))?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the overlay: the state file, else its `.prev`, else empty. Problems are logged.
pub fn load(path: &Path) -> Overlay {
    let prev = sibling(path, ".prev");
    match read(path) {
        Ok(Some(o)) => return o,
        Ok(None) => {}
        Err(e) => tracing::error!(
            file = %path.display(), error = %e,
            "state file is unreadable (cut short by a crash?): using the previous good state"
        ),
    }
    match read(&prev) {
        Ok(Some(o)) => {
            tracing::warn!(file = %prev.display(), "runtime state restored from the previous state file");
            o
        }
        Ok(None) => Overlay::default(),
        Err(e) => {
            tracing::error!(file = %prev.display(), error = %e, "previous state file is unreadable too: starting from the config file alone");
            Overlay::default()
        }
    }
}

fn read(path: &Path) -> Result<Option<Overlay>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Overlay::from_json(&text).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_file_falls_back_to_previous() {
        let dir = std::env::temp_dir().join(format!("fulcrum-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let mut a = Overlay::default();
        a.pools.entry("p".into()).or_default().added.insert("127.0.0.1:1".into(), 1);
        save(&path, &a).unwrap();
        let mut b = a.clone();
        b.pools.entry("p".into()).or_default().added.insert("127.0.0.1:2".into(), 1);
        save(&path, &b).unwrap();
        assert_eq!(load(&path), b);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert_eq!(load(&path), a);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn written_for_the_owner_only_through_no_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir("perm");
        let path = dir.join("state.json");
        // A symlink where a fixed temp name would be: the write must not go through it.
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, sibling(&path, ".tmp")).unwrap();
        save(&path, &Overlay::default()).unwrap();
        save(&path, &Overlay::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state file mode {mode:o}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && n != "state.json.tmp")
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fulcrum-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
