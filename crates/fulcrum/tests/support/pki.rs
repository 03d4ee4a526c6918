// The one test PKI of the TLS tests, made with `openssl` for each test run: CAs and
// certificates (EC P-256, valid two days unless said) in a temporary folder. Included by
// `include!` (support/tls.rs includes it too); the including file imports `Command` and
// `PathBuf`.

#[allow(dead_code)]
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// How long the certificates made are valid, in days.
    pub days: String,
}

#[allow(dead_code)]
impl Pki {
    fn new() -> Pki {
        Pki::new_for_days(2)
    }

    pub fn new_for_days(days: u32) -> Pki {
        Pki { dir: tempfile::tempdir().unwrap(), days: days.to_string() }
    }

    /// Runs openssl in the folder; its standard output.
    pub fn openssl(&self, args: &[&str]) -> String {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A self-signed CA `{file}.pem`/`{file}.key` named `cn`.
    pub fn ca(&self, file: &str, cn: &str) {
        let (key, pem, subj) = (format!("{file}.key"), format!("{file}.pem"), format!("/CN={cn}"));
        let mut args = vec!["req", "-x509"];
        args.extend_from_slice(&EC_KEY);
        args.extend_from_slice(&["-days", &self.days, "-subj", &subj, "-keyout", &key]);
        args.extend_from_slice(&["-out", &pem]);
        self.openssl(&args);
    }

    /// A server certificate signed by CA `ca`: `CN={cn}` and `san` as openssl writes it
    /// (`DNS:a.test,IP:127.0.0.1`), in `{file}.pem`/`{file}.key`/`{file}.both`.
    pub fn leaf(&self, ca: &str, file: &str, cn: &str, san: &str) {
        self.cert(file, &format!("/CN={cn}"), &format!("subjectAltName={san}"), ca);
    }

    /// A certificate `{file}.pem`/`{file}.key` for `subj`, with the extension lines `ext`,
    /// signed by the CA `{ca}.pem`; also `{file}.both` (both in one file, as HAProxy reads
    /// them).
    pub fn cert(&self, file: &str, subj: &str, ext: &str, ca: &str) {
        let (key, csr, pem) = (format!("{file}.key"), format!("{file}.csr"), format!("{file}.pem"));
        let mut req = vec!["req"];
        req.extend_from_slice(&EC_KEY);
        req.extend_from_slice(&["-subj", subj, "-keyout", &key, "-out", &csr]);
        self.openssl(&req);
        let extfile = format!("{file}.ext");
        std::fs::write(self.path(&extfile), format!("{ext}\n")).unwrap();
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
            &self.days,
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ]);
        let both =
            [std::fs::read(self.path(&pem)).unwrap(), std::fs::read(self.path(&key)).unwrap()];
        std::fs::write(self.path(&format!("{file}.both")), both.concat()).unwrap();
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// `path` as a TOML string's content.
    pub fn toml(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }
}

const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
