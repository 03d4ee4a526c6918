//! Each `https` frontend's TLS material as loaded, and how it is replaced without touching
//! open connections: a frontend's [`TlsState`] holds its [`Loaded`] material behind an
//! `ArcSwap`; an accepted connection loads it once and keeps that `Arc` (its rustls
//! configuration, its `client_cert_header`) for its whole life. A reload or a file change
//! builds new material on the control plane and stores it in one swap; a build that fails
//! leaves the old material serving and is counted and kept as the frontend's last error.
//!
//! The state lives as long as the frontend's name does, across rebinds, so the listener
//! generations of one frontend always serve the same certificates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use fulcrum_config::{Config, Protocol, TlsFrontend};
use http::HeaderName;
use rustls::ServerConfig;

use super::{Digests, Files, x509};

/// What a loaded certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// Served to clients (`certificates`): the leaf of a chain.
    Server,
    /// The rest of a served chain (intermediate CAs).
    Chain,
    /// Trusted to sign client certificates (`client_ca`).
    ClientCa,
}

impl CertRole {
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Server => "server",
            CertRole::Chain => "chain",
            CertRole::ClientCa => "client_ca",
        }
    }
}

/// One loaded certificate as the admin API and metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub role: CertRole,
    pub file: PathBuf,
    /// DNS names of its subject alternative names (server certificates), lower case.
    pub names: Vec<String>,
    /// RFC 4514 string of its subject.
    pub subject: String,
    /// Validity in seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
}

impl CertInfo {
    pub(crate) fn new(role: CertRole, file: PathBuf, names: Vec<String>, f: x509::Facts) -> Self {
        CertInfo {
            role,
            file,
            names,
            subject: f.subject,
            not_before: f.not_before,
            not_after: f.not_after,
        }
    }

    /// A short name for labels: the first DNS name, else the subject's CN, else the subject.
    pub fn label(&self) -> &str {
        if let Some(n) = self.names.first() {
            return n;
        }
        self.subject.split(',').find_map(|rdn| rdn.strip_prefix("CN=")).unwrap_or(&self.subject)
    }
}

/// One frontend's TLS material, built from its files at one moment.
pub struct Loaded {
    /// The settings it was built from.
    pub settings: TlsFrontend,
    digests: Digests,
    pub config: Arc<ServerConfig>,
    /// `client_cert_header`, removed from every request and set to the verified subject.
    pub header: HeaderName,
    pub certs: Vec<CertInfo>,
    /// When it was built, seconds since the Unix epoch.
    pub loaded_at: u64,
}

impl Loaded {
    fn build(t: &TlsFrontend, files: &Files, previous: Option<&Loaded>) -> Result<Loaded, String> {
        let prev = previous.map(|p| (&p.settings, p.client_ca_digest(), &*p.config));
        let built = super::build(t, files, prev)?;
        let header = HeaderName::from_bytes(t.client_cert_header.as_bytes())
            .map_err(|e| format!("client_cert_header \"{}\": {e}", t.client_cert_header))?;
        Ok(Loaded {
            settings: t.clone(),
            digests: files.digests(),
            config: built.config,
            header,
            certs: built.certs,
            loaded_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        })
    }

    /// The digest of the `client_ca` file (the last one, when there is such a file).
    fn client_ca_digest(&self) -> Option<&[u8; 32]> {
        self.settings.client_ca.as_ref().and_then(|_| self.digests.last())
    }
}

/// A frontend's current TLS material and what became of its reloads.
pub struct TlsState {
    current: ArcSwap<Loaded>,
    /// Material replaced by a reload or a file change.
    pub reloads: AtomicU64,
    /// New material that could not be loaded (the old kept serving).
    pub reload_failures: AtomicU64,
    last_error: ArcSwapOption<String>,
    /// The contents of the files that last failed to load: the same files are not reported
    /// again (a log file in the watched directory would otherwise report them forever).
    failed_files: ArcSwapOption<Digests>,
}

impl TlsState {
    fn new(loaded: Loaded) -> TlsState {
        TlsState {
            current: ArcSwap::from_pointee(loaded),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            failed_files: ArcSwapOption::empty(),
        }
    }

    /// The material new connections get now; a connection loads it once.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Why the last attempt to load new material failed, until one succeeds.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    fn failed(&self, e: &str) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        self.last_error.store(Some(Arc::new(e.to_string())));
    }

    fn replace(&self, loaded: Arc<Loaded>) {
        self.current.store(loaded);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.clear_failure();
    }

    fn clear_failure(&self) {
        self.last_error.store(None);
        self.failed_files.store(None);
    }

    /// Reads the files again with the settings in force (the watcher's look).
    fn refresh(&self, name: &str) -> Refresh {
        let cur = self.current();
        let fail = |e: String, digests: Option<Digests>| {
            let e = format!("frontend {name}: {e}");
            let same = match &digests {
                Some(d) => self.failed_files.load().as_deref() == Some(d),
                None => self.last_error.load().as_deref() == Some(&e),
            };
            if same {
                return Refresh::Unchanged;
            }
            self.failed(&e);
            self.failed_files.store(digests.map(Arc::new));
            Refresh::Failed(e)
        };
        let files = match Files::read(&cur.settings) {
            Ok(f) => f,
            Err(e) => return fail(e, None),
        };
        let digests = files.digests();
        if cur.digests == digests {
            // Back to what serves: nothing failing is left to report.
            self.clear_failure();
            return Refresh::Unchanged;
        }
        if self.failed_files.load().as_deref() == Some(&digests) {
            return Refresh::Unchanged;
        }
        match Loaded::build(&cur.settings, &files, Some(&cur)) {
            Ok(l) => {
                let l = Arc::new(l);
                log_reloaded(name, &l);
                self.replace(l);
                Refresh::Reloaded
            }
            Err(e) => fail(e, Some(digests)),
        }
    }
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("certs", &self.current().certs)
            .field("reloads", &self.reloads)
            .field("reload_failures", &self.reload_failures)
            .finish()
    }
}

/// What a look at one frontend's files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    Reloaded,
    /// The new files could not be loaded; the old material keeps serving.
    Failed(String),
}

/// The TLS material of every `https` frontend, by frontend name (owned by the engine).
#[derive(Default)]
pub struct TlsStore {
    states: HashMap<String, Arc<TlsState>>,
}

/// The material a change will leave each `https` frontend with, built but not yet in force.
pub(crate) struct Prepared {
    next: Vec<(String, Arc<TlsState>, Option<Arc<Loaded>>)>,
}

impl Prepared {
    pub(crate) fn get(&self, frontend: &str) -> Option<Arc<TlsState>> {
        self.next.iter().find(|(n, _, _)| n == frontend).map(|(_, s, _)| s.clone())
    }
}

impl TlsStore {
    /// Builds what `config` needs, changing nothing: material whose settings are unchanged is
    /// kept as it is, unless `reread` (a reload) asks to read the files again, and even then
    /// it is kept when their contents are the same. An error names the frontend, the file and
    /// the reason.
    pub(crate) fn prepare(&self, config: &Config, reread: bool) -> Result<Prepared, String> {
        let mut next = Vec::new();
        for f in &config.frontends {
            let (Protocol::Https, Some(t)) = (f.protocol, &f.tls) else { continue };
            let name = &f.name;
            let Some(state) = self.states.get(name) else {
                let loaded = Files::read(t)
                    .and_then(|files| Loaded::build(t, &files, None))
                    .map_err(|e| format!("frontend {name}: {e}"))?;
                next.push((name.clone(), Arc::new(TlsState::new(loaded)), None));
                continue;
            };
            let cur = state.current();
            if !reread && cur.settings == *t {
                next.push((name.clone(), state.clone(), None));
                continue;
            }
            let loaded = match Self::rebuild(t, &cur) {
                Ok(l) => l,
                Err(e) => {
                    let e = format!("frontend {name}: {e}");
                    state.failed(&e);
                    return Err(e);
                }
            };
            next.push((name.clone(), state.clone(), loaded.map(Arc::new)));
        }
        Ok(Prepared { next })
    }

    /// New material for `t` from its files, or `None` when settings and contents are those of
    /// `cur`.
    fn rebuild(t: &TlsFrontend, cur: &Loaded) -> Result<Option<Loaded>, String> {
        let files = Files::read(t)?;
        if cur.settings == *t && cur.digests == files.digests() {
            return Ok(None);
        }
        Loaded::build(t, &files, Some(cur)).map(Some)
    }

    /// Puts prepared material in force; frontends no longer `https` let theirs go.
    pub(crate) fn commit(&mut self, p: Prepared) {
        self.states.clear();
        for (name, state, loaded) in p.next {
            if let Some(l) = loaded {
                log_reloaded(&name, &l);
                state.replace(l);
            }
            self.states.insert(name, state);
        }
    }

    /// Reads every frontend's files again with the settings in force, and swaps in the
    /// material of those whose contents changed. Each frontend stands alone: one with a bad
    /// file keeps its old material (the failure is counted and returned, once for the same
    /// contents) and the others go on.
    pub fn refresh(&self) -> Vec<(String, Refresh)> {
        let mut out = Vec::new();
        for (name, state) in &self.states {
            out.push((name.clone(), state.refresh(name)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every file the frontends' TLS reads, sorted, without repeats.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .states
            .values()
            .flat_map(|s| super::paths(&s.current().settings).cloned().collect::<Vec<_>>())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn log_reloaded(frontend: &str, l: &Loaded) {
    for c in l.certs.iter().filter(|c| c.role == CertRole::Server) {
        tracing::info!(
            frontend,
            file = %c.file.display(),
            subject = %c.subject,
            not_after = %x509::rfc3339(c.not_after),
            "certificate loaded"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// A scratch directory with a CA and leaves made by `openssl` (the tool users make test
    /// certificates with), removed on drop.
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "fulcrum-tls-store-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&d).unwrap();
            let dir = Dir(d);
            dir.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=store test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ]);
            dir
        }

        fn openssl(&self, args: &[&str]) {
            let out = Command::new("openssl").args(args).current_dir(&self.0).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// `{file}.pem`/`{file}.key` for `a.test` with organisation `org`.
        fn leaf(&self, file: &str, org: &str) {
            let (key, csr, pem) =
                (format!("{file}.key"), format!("{file}.csr"), format!("{file}.pem"));
            let subj = format!("/O={org}/CN=a.test");
            self.openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &subj,
                "-keyout",
                &key,
                "-out",
                &csr,
            ]);
            std::fs::write(self.0.join("ext"), "subjectAltName=DNS:a.test\n").unwrap();
            self.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext",
                "-out",
                &pem,
            ]);
        }

        fn path(&self, f: &str) -> PathBuf {
            self.0.join(f)
        }

        /// Copies `{from}.pem`/`.key` over `{to}.pem`/`.key`.
        fn copy(&self, from: &str, to: &str) {
            for ext in ["pem", "key"] {
                std::fs::copy(
                    self.path(&format!("{from}.{ext}")),
                    self.path(&format!("{to}.{ext}")),
                )
                .unwrap();
            }
        }
    }

    /// One `https` frontend per name, each serving `{name}.pem`; `extra` goes in every TLS table.
    fn config(dir: &Path, names: &[&str], extra: &str) -> Config {
        // A plain frontend too: a config needs one, and it has no TLS.
        let mut toml = String::from(
            "[pool.p]\nservers = []\n[frontend.plain]\nbind = \"127.0.0.1:999\"\npool = \"p\"\n",
        );
        for (i, n) in names.iter().enumerate() {
            toml.push_str(&format!(
                "[frontend.{n}]\nbind = \"127.0.0.1:{}\"\nprotocol = \"https\"\npool = \"p\"\n\
                 [frontend.{n}.tls]\ncertificates = [{{ cert = \"{n}.pem\", key = \"{n}.key\" }}]\n{extra}\n",
                1000 + i
            ));
        }
        fulcrum_config::parse_str(&toml, dir.join("f.toml").to_str().unwrap()).unwrap()
    }

    fn subject(s: &TlsState) -> String {
        s.current().certs[0].subject.clone()
    }

    #[test]
    fn material_is_read_again_only_on_reload_and_replaced_only_when_files_changed() {
        let dir = Dir::new("reread");
        dir.leaf("v1", "one");
        dir.leaf("v2", "two");
        dir.copy("v1", "web");
        let mut store = TlsStore::default();
        let cfg = config(&dir.0, &["web"], "");
        let p = store.prepare(&cfg, false).unwrap();
        let state = p.get("web").unwrap();
        store.commit(p);
        let first = state.current();
        assert_eq!(subject(&state), "CN=a.test,O=one");
        // Same files, read again or not: the very same material.
        for reread in [false, true] {
            let p = store.prepare(&cfg, reread).unwrap();
            assert!(Arc::ptr_eq(&p.get("web").unwrap(), &state), "the state lives on");
            store.commit(p);
            assert!(Arc::ptr_eq(&state.current(), &first), "reread = {reread}");
        }
        // New files: an API change (no reread) keeps the old, a reload takes the new.
        dir.copy("v2", "web");
        let p = store.prepare(&cfg, false).unwrap();
        store.commit(p);
        assert_eq!(subject(&state), "CN=a.test,O=one");
        let p = store.prepare(&cfg, true).unwrap();
        assert_eq!(subject(&state), "CN=a.test,O=one", "prepare changes nothing");
        store.commit(p);
        assert_eq!(subject(&state), "CN=a.test,O=two");
        assert_eq!(state.reloads.load(Ordering::Relaxed), 1);
        // Resumption keys carry over a certificate change (same client rules).
        assert!(Arc::ptr_eq(&first.config.ticketer, &state.current().config.ticketer));
        // A frontend that leaves lets its material go.
        let p = store.prepare(&config(&dir.0, &[], ""), true).unwrap();
        store.commit(p);
        assert!(store.files().is_empty());
    }

    #[test]
    fn a_bad_file_fails_the_change_and_the_old_material_keeps_serving() {
        let dir = Dir::new("bad");
        dir.leaf("web", "one");
        let mut store = TlsStore::default();
        let cfg = config(&dir.0, &["web"], "");
        let p = store.prepare(&cfg, false).unwrap();
        let state = p.get("web").unwrap();
        store.commit(p);
        std::fs::write(dir.path("web.pem"), "not a certificate\n").unwrap();
        let e = store.prepare(&cfg, true).err().unwrap();
        let pem = dir.path("web.pem").display().to_string();
        assert!(e.starts_with(&format!("frontend web: certificate {pem}")), "{e}");
        assert_eq!(subject(&state), "CN=a.test,O=one");
        assert_eq!(state.reload_failures.load(Ordering::Relaxed), 1);
        assert_eq!(state.last_error().as_deref(), Some(&e));
        assert_eq!(store.refresh(), [("web".to_string(), Refresh::Failed(e.clone()))]);
        // The same broken files are reported once, however often the watcher looks.
        let failures = state.reload_failures.load(Ordering::Relaxed);
        assert_eq!(store.refresh(), [("web".to_string(), Refresh::Unchanged)]);
        assert_eq!(state.reload_failures.load(Ordering::Relaxed), failures);
        assert_eq!(state.last_error().as_deref(), Some(&e));
        // A key that belongs to another certificate is refused too.
        dir.leaf("other", "two");
        std::fs::copy(dir.path("other.pem"), dir.path("web.pem")).unwrap();
        let r = store.refresh();
        assert!(matches!(&r[0].1, Refresh::Failed(m) if m.contains("does not belong to")), "{r:?}");
        std::fs::copy(dir.path("other.key"), dir.path("web.key")).unwrap();
        assert_eq!(store.refresh(), [("web".to_string(), Refresh::Reloaded)]);
        assert_eq!(subject(&state), "CN=a.test,O=two");
        assert_eq!(state.last_error(), None);
        assert_eq!(store.refresh(), [("web".to_string(), Refresh::Unchanged)]);
        // A path to something endless is refused, not read to the end.
        std::fs::remove_file(dir.path("web.pem")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path("web.pem")).unwrap();
        let r = store.refresh();
        assert!(matches!(&r[0].1, Refresh::Failed(m) if m.ends_with("larger than 4 MiB")), "{r:?}");
        assert_eq!(subject(&state), "CN=a.test,O=two");
    }

    #[test]
    fn refresh_treats_each_frontend_on_its_own() {
        let dir = Dir::new("apart");
        dir.leaf("one", "one");
        dir.leaf("two", "two");
        dir.leaf("new", "new");
        let mut store = TlsStore::default();
        let p = store.prepare(&config(&dir.0, &["one", "two"], ""), false).unwrap();
        let (one, two) = (p.get("one").unwrap(), p.get("two").unwrap());
        store.commit(p);
        std::fs::write(dir.path("one.key"), "garbage").unwrap();
        dir.copy("new", "two");
        let r = store.refresh();
        assert!(matches!(&r[0], (n, Refresh::Failed(_)) if n == "one"), "{r:?}");
        assert_eq!(r[1], ("two".to_string(), Refresh::Reloaded));
        assert_eq!(subject(&one), "CN=a.test,O=one");
        assert_eq!(subject(&two), "CN=a.test,O=new");
        let files: Vec<String> =
            store.files().iter().map(|f| f.file_name().unwrap().to_string_lossy().into()).collect();
        assert_eq!(files, ["one.key", "one.pem", "two.key", "two.pem"]);
    }

    #[test]
    fn every_certificate_of_a_served_chain_is_listed() {
        let dir = Dir::new("chain");
        dir.leaf("leaf", "one");
        let mut pem = std::fs::read(dir.path("leaf.pem")).unwrap();
        pem.extend(std::fs::read(dir.path("ca.pem")).unwrap());
        std::fs::write(dir.path("web.pem"), pem).unwrap();
        std::fs::copy(dir.path("leaf.key"), dir.path("web.key")).unwrap();
        let mut store = TlsStore::default();
        let p = store.prepare(&config(&dir.0, &["web"], ""), false).unwrap();
        let state = p.get("web").unwrap();
        store.commit(p);
        let certs = &state.current().certs;
        let seen: Vec<_> = certs.iter().map(|c| (c.role.name(), c.label().to_string())).collect();
        assert_eq!(
            seen,
            [("server", "a.test".to_string()), ("chain", "store test CA".to_string())]
        );
        assert!(certs.iter().all(|c| c.file == dir.path("web.pem") && c.not_after > c.not_before));
    }

    #[test]
    fn new_client_rules_start_new_sessions() {
        let dir = Dir::new("clients");
        dir.leaf("web", "one");
        let mut store = TlsStore::default();
        let p = store.prepare(&config(&dir.0, &["web"], ""), false).unwrap();
        let state = p.get("web").unwrap();
        store.commit(p);
        let before = state.current();
        assert_eq!(before.header, "x-client-cert-subject");
        let p = store
            .prepare(
                &config(&dir.0, &["web"], "client_ca = \"ca.pem\"\nclient_cert_header = \"X-Who\""),
                false,
            )
            .unwrap();
        store.commit(p);
        let after = state.current();
        assert!(!Arc::ptr_eq(&before.config.ticketer, &after.config.ticketer));
        assert_eq!(after.header, "x-who");
        let roles: Vec<_> = after.certs.iter().map(|c| (c.role, c.label().to_string())).collect();
        assert_eq!(
            roles,
            [
                (CertRole::Server, "a.test".to_string()),
                (CertRole::ClientCa, "store test CA".to_string())
            ]
        );
    }
}
