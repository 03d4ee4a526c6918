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
pub fn save(path: &Path, overlay: &Overlay) -> std::io::Result<()> {
    let tmp = sibling(path, ".tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(overlay.to_json().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
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
}
