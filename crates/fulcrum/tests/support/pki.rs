// A test PKI made with `openssl` for each test run: CAs and leaf certificates (EC P-256, valid
// two days) in a temporary folder. Included by `include!`; the including file imports
// `Command` and `PathBuf`.

struct Pki {
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl Pki {
    fn new() -> Pki {
        Pki { dir: tempfile::tempdir().unwrap() }
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A self-signed CA: `NAME.pem`, `NAME.key`.
    fn ca(&self, name: &str) {
        let (pem, key, subj) =
            (format!("{name}.pem"), format!("{name}.key"), format!("/CN=fulcrum test {name}"));
        self.openssl(&[
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
            &subj,
            "-keyout",
            &key,
            "-out",
            &pem,
        ]);
    }

    /// A leaf certificate signed by CA `ca`: `FILE.pem`, `FILE.key`, and `FILE.both` (both in
    /// one file, as HAProxy reads them). `san` as openssl writes it: `DNS:a.test,IP:127.0.0.1`.
    fn leaf(&self, ca: &str, file: &str, cn: &str, san: &str) {
        let (key, csr, pem, ext) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
            format!("{file}.ext"),
        );
        let subj = format!("/CN={cn}");
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
        std::fs::write(self.path(&ext), format!("subjectAltName={san}\n")).unwrap();
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
        let both =
            [std::fs::read(self.path(&pem)).unwrap(), std::fs::read(self.path(&key)).unwrap()];
        std::fs::write(self.path(&format!("{file}.both")), both.concat()).unwrap();
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// `path` as a TOML string's content.
    fn toml(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }
}
