//! A frontend's access lists: `allow` and `deny` (inline lists of addresses and CIDR ranges)
//! and `allow_file` / `deny_file` (one entry a line, `#` comments). The files are read here,
//! when the config is loaded (`run`, `check`, every reload): a bad entry is reported with the
//! list file's own name and line, under the key that named the file.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use fulcrum_core::acl::{Access, parse_list, parse_net};
use ipnet::IpNet;
use toml::de::{DeTable, DeValue};

use super::{Value, Walker};
use crate::error::{ConfigError, io_reason};
use crate::model::Frontend;

/// Largest list file read (about a million IPv6 ranges, with comments).
const MAX_LIST_BYTES: u64 = 128 << 20;

impl Walker<'_> {
    /// `allow`, `deny`, `allow_file`, `deny_file` of any frontend. `allow` and `allow_file`
    /// together form one allow list, `deny` and `deny_file` one deny list.
    pub(super) fn access_lists(&mut self, t: &DeTable<'_>, path: &str, f: &mut Frontend) -> bool {
        let mut ok = true;
        let mut lists: [Option<Vec<IpNet>>; 2] = [None, None];
        for (slot, (inline, file)) in
            [("allow", "allow_file"), ("deny", "deny_file")].iter().enumerate()
        {
            if let Some(x) = t.get(*inline) {
                let key = format!("{path}.{inline}");
                match self.net_list(x, &key) {
                    Some(nets) => lists[slot].get_or_insert_with(Vec::new).extend(nets),
                    None => ok = false,
                }
            }
            if let Some(x) = t.get(*file) {
                let key = format!("{path}.{file}");
                match self.list_file(x, &key) {
                    Some(nets) => lists[slot].get_or_insert_with(Vec::new).extend(nets),
                    None => ok = false,
                }
            }
        }
        let [allow, deny] = lists;
        f.access = Arc::new(Access::new(allow.as_deref(), deny.as_deref().unwrap_or_default()));
        ok
    }

    pub(super) fn net_list(&mut self, x: &Value<'_>, key: &str) -> Option<Vec<IpNet>> {
        let DeValue::Array(items) = x.get_ref() else {
            self.error(x, key, "expected a list of addresses or CIDR ranges");
            return None;
        };
        if items.is_empty() {
            // `allow = []` could mean "nobody" or "no restriction": neither is guessed.
            self.error(x, key, "empty list: remove the key, or name at least one address or range");
            return None;
        }
        let mut nets = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ikey = format!("{key}[{i}]");
            match self.string(item, &ikey).map(parse_net) {
                Some(Ok(n)) => nets.push(n),
                Some(Err(e)) => {
                    self.error(item, &ikey, e);
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(nets)
    }

    /// Reads a list file named by `x` (relative to the config file's folder).
    fn list_file(&mut self, x: &Value<'_>, key: &str) -> Option<Vec<IpNet>> {
        let given = self.string(x, key)?.to_string();
        let file = self.relative(&given);
        let text = match read_bounded(&file) {
            Ok(t) => t,
            Err(reason) => {
                self.error(x, key, format!("cannot read {}: {reason}", file.display()));
                return None;
            }
        };
        match parse_list(&text) {
            Ok(nets) => Some(nets),
            Err(errors) => {
                for e in errors {
                    self.errors.push(ConfigError {
                        file: file.display().to_string(),
                        line: e.line,
                        column: 1,
                        key: key.to_string(),
                        message: e.message,
                    });
                }
                None
            }
        }
    }
}

fn read_bounded(file: &Path) -> Result<String, String> {
    let f = std::fs::File::open(file).map_err(|e| io_reason(&e))?;
    let mut bytes = Vec::new();
    f.take(MAX_LIST_BYTES + 1).read_to_end(&mut bytes).map_err(|e| io_reason(&e))?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(format!("larger than {} MiB", MAX_LIST_BYTES >> 20));
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::IpAddr;

    use fulcrum_core::acl::{IpSet, Rejection, check};

    use crate::parse_str;

    /// A folder of its own for one test's config and list files.
    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("fulcrum-acl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config(frontend: &str) -> String {
        format!(
            "[frontend.web]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{frontend}\n[pool.p]\nservers = []\n"
        )
    }

    fn errors(text: &str, file: &str) -> String {
        match parse_str(text, file) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    fn verdict(c: &crate::Config, ip: &str) -> Result<(), Rejection> {
        let ip: IpAddr = ip.parse().unwrap();
        check(&c.frontends[0].access, &IpSet::default(), ip, 0)
    }

    #[test]
    fn inline_lists_and_files_relative_to_the_config_join() {
        let d = dir("join");
        std::fs::write(d.join("deny.txt"), "# abusers\n10.0.0.9   # one\n\n2001:db8::/32\n")
            .unwrap();
        std::fs::create_dir_all(d.join("lists")).unwrap();
        std::fs::write(d.join("lists/allow.txt"), "192.168.0.0/16\n").unwrap();
        let text = config(
            "allow = [\"10.0.0.0/8\"]\nallow_file = \"lists/allow.txt\"\n\
             deny = [\"10.0.0.8\"]\ndeny_file = \"deny.txt\"",
        );
        let c = parse_str(&text, d.join("f.toml").to_str().unwrap()).unwrap();
        assert_eq!(verdict(&c, "10.1.1.1"), Ok(()));
        assert_eq!(verdict(&c, "192.168.3.4"), Ok(()));
        assert_eq!(verdict(&c, "10.0.0.8"), Err(Rejection::Deny));
        assert_eq!(verdict(&c, "10.0.0.9"), Err(Rejection::Deny));
        assert_eq!(verdict(&c, "172.16.0.1"), Err(Rejection::NotAllowed));
        // Without any allow key every address not denied passes; an empty allow file
        // admits nobody.
        std::fs::write(d.join("empty.txt"), "# nobody yet\n").unwrap();
        let open = parse_str(&config("deny = [\"::1\"]"), "f.toml").unwrap();
        assert_eq!(verdict(&open, "172.16.0.1"), Ok(()));
        assert_eq!(verdict(&open, "::1"), Err(Rejection::Deny));
        let closed =
            parse_str(&config("allow_file = \"empty.txt\""), d.join("f.toml").to_str().unwrap());
        assert_eq!(verdict(&closed.unwrap(), "127.0.0.1"), Err(Rejection::NotAllowed));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_entries_name_file_line_key_and_reason() {
        let d = dir("bad");
        std::fs::write(d.join("deny.txt"), "10.0.0.1\n# fine\nnot-an-address\n10.0.0.0/40\n")
            .unwrap();
        let file = d.join("f.toml");
        let text = config(
            "allow = [\"10.0.0.1\", \"bogus\", 7]\ndeny = []\ndeny_file = \"deny.txt\"\n\
             allow_file = \"missing.txt\"",
        );
        let errs = errors(&text, file.to_str().unwrap());
        let deny = d.join("deny.txt").display().to_string();
        let missing = d.join("missing.txt").display().to_string();
        let f = file.display().to_string();
        for want in [
            format!("{f}:4:22: frontend.web.allow[1]: \"bogus\" is not an address or CIDR range"),
            format!("{f}:4:31: frontend.web.allow[2]: expected a string, found integer"),
            format!("{f}:5:8: frontend.web.deny: empty list: remove the key"),
            format!(
                "{f}:7:14: frontend.web.allow_file: cannot read {missing}: no such file or directory"
            ),
            format!("{deny}:3:1: frontend.web.deny_file: \"not-an-address\" is not an address"),
            format!("{deny}:4:1: frontend.web.deny_file: \"10.0.0.0/40\" is not an address"),
        ] {
            assert!(errs.contains(&want), "{want}\nnot in:\n{errs}");
        }
        // The config file's errors come first, then the list file's in line order.
        let lines: Vec<&str> = errs.lines().collect();
        assert_eq!(lines.len(), 6, "{errs}");
        assert!(lines[4].starts_with(&format!("{deny}:3:")), "{errs}");
        assert!(errors(&config("deny = \"10.0.0.1\""), "f.toml").contains("expected a list"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
