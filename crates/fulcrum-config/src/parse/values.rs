//! The walker's primitives: located errors (file, line, column, key path), unknown-key checks,
//! and readers for each TOML value type (table, string, boolean, bounded integer, duration,
//! path relative to the config file, table name). Every other parse module builds on these.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Value, Walker, join, parse_duration};
use crate::error::ConfigError;

impl Walker<'_> {
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column =
            before.rfind('\n').map_or(before.chars().count(), |i| before[i + 1..].chars().count())
                + 1;
        (line, column)
    }

    pub(super) fn error_at(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn error(&mut self, v: &Value<'_>, key: &str, message: impl Into<String>) {
        self.error_at(v.span(), key, message)
    }

    /// Reports every key of `t` not in `allowed`.
    pub(super) fn check_keys(&mut self, t: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                let key = join(path, k.get_ref());
                self.error_at(
                    k.span(),
                    &key,
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    pub(super) fn table<'v, 'a>(&mut self, v: &'v Value<'a>, key: &str) -> Option<&'v DeTable<'a>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(v, key, format!("expected a table, found {}", other.type_str()));
                None
            }
        }
    }

    /// `v` as one of the words of `choices`, each with what it means; any other word is
    /// reported as an unknown `what`, listing the words.
    pub(super) fn word<T: Copy>(
        &mut self,
        v: &Value<'_>,
        key: &str,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let w = self.string(v, key)?;
        if let Some((_, t)) = choices.iter().find(|(c, _)| *c == w) {
            return Some(*t);
        }
        let words: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
        let message = format!("unknown {what} \"{w}\" (expected: {})", words.join(", "));
        self.error(v, key, message);
        None
    }

    pub(super) fn string<'v>(&mut self, v: &'v Value<'_>, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.error(v, key, format!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(v, key, format!("expected true or false, found {}", other.type_str()));
                None
            }
        }
    }

    pub(super) fn integer(&mut self, v: &Value<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            let found = v.get_ref().type_str();
            self.error(v, key, format!("expected an integer, found {found}"));
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= 0 && (n as u64) >= min && (n as u64) <= max => Some(n as u64),
            _ => {
                self.error(v, key, format!("{} is out of range ({min}-{max})", i.as_str()));
                None
            }
        }
    }

    pub(super) fn duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        let s = self.string(v, key)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v, key, e);
                None
            }
        }
    }

    pub(super) fn nonzero_duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d.is_zero() {
            self.error(v, key, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    /// Paths in the config are relative to the config file's folder.
    pub(super) fn relative(&self, p: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(p);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match std::path::Path::new(self.file).parent() {
            Some(dir) => dir.join(p),
            None => p.to_path_buf(),
        }
    }

    pub(super) fn check_name(&mut self, name: &Spanned<std::borrow::Cow<'_, str>>, path: &str) {
        let n = name.get_ref();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            self.error_at(name.span(), path, "names may only contain letters, digits, '-' and '_'");
        }
    }
}
