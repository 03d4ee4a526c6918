//! Secrets in a config text: the values a config view must not show (a scale signal's
//! `command` and `webhook`, which may carry credentials, and any key whose name says token,
//! secret or password) replaced by [`HIDDEN`], and put back from the running file when an
//! edited text still holds the marker. Keys naming files (`token_file`, `key_file`, a TLS
//! `key`) are paths, not secrets, and stay visible.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// What a hidden value reads as.
pub const HIDDEN: &str = "<hidden>";

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("_file") {
        return false;
    }
    matches!(k.as_str(), "command" | "webhook")
        || ["token", "secret", "password"].iter().any(|w| k.contains(w))
}

/// Every secret string value: its key path (`pool.app.scale_out.webhook`) and byte span.
fn secrets(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut out = Vec::new();
    walk_table(doc.get_ref(), "", &mut out);
    out
}

fn walk_table(t: &DeTable<'_>, path: &str, out: &mut Vec<(String, std::ops::Range<usize>)>) {
    for (k, v) in t {
        let p = if path.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{path}.{}", k.get_ref())
        };
        walk_value(v, &p, is_secret(k.get_ref()), out);
    }
}

fn walk_value(
    v: &Spanned<DeValue<'_>>,
    path: &str,
    secret: bool,
    out: &mut Vec<(String, std::ops::Range<usize>)>,
) {
    match v.get_ref() {
        DeValue::String(_) if secret => out.push((path.to_string(), v.span())),
        DeValue::Table(t) => walk_table(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &format!("{path}[{i}]"), secret, out);
            }
        }
        _ => {}
    }
}

/// `text` with every secret value shown as `"<hidden>"`. A text that does not parse is
/// returned with nothing found to hide in it.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    let mut spans = secrets(text);
    spans.sort_by_key(|(_, s)| std::cmp::Reverse(s.start));
    for (_, span) in spans {
        if out.is_char_boundary(span.start)
            && out.is_char_boundary(span.end)
            && span.end <= out.len()
        {
            out.replace_range(span, &format!("\"{HIDDEN}\""));
        }
    }
    out
}

/// `edited` with each value still reading `"<hidden>"` given back the value at the same key
/// path in `running` (the file the view hid it from). Err names a hidden value whose key is
/// not in `running`: the text cannot be applied as it stands.
pub fn restore(edited: &str, running: &str) -> Result<String, String> {
    let old = secrets(running);
    let mut out = edited.to_string();
    let mut spans = secrets(edited);
    spans.sort_by_key(|(_, s)| std::cmp::Reverse(s.start));
    for (path, span) in spans {
        let Some(raw) = edited.get(span.clone()) else { continue };
        if raw.trim_matches(|c| c == '"' || c == '\'') != HIDDEN {
            continue;
        }
        let Some(value) =
            old.iter().find(|(p, _)| *p == path).and_then(|(_, s)| running.get(s.clone()))
        else {
            return Err(format!(
                "{path} is still {HIDDEN}, and the running file has no value for it"
            ));
        };
        out.replace_range(span, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[admin]
bind = "127.0.0.1:9090"
token_file = "admin.token"

[pool.app]
servers = ["127.0.0.1:9001"]
[pool.app.scale_out]
threshold = 10.0
window = "10s"
webhook = "http://user:pass@127.0.0.1:9/hook?key=abc"
[pool.app.scale_in]
threshold = 1.0
window = "10s"
command = 'curl -H "Authorization: Bearer xyz" http://127.0.0.1:9/'
"#;

    #[test]
    fn secrets_are_hidden_and_paths_stay() {
        let r = redact(TEXT);
        assert!(!r.contains("pass@") && !r.contains("xyz"), "{r}");
        assert!(r.contains("webhook = \"<hidden>\""), "{r}");
        assert!(r.contains("command = \"<hidden>\""), "{r}");
        assert!(r.contains("token_file = \"admin.token\""), "a file path is not a secret: {r}");
        assert!(DeTable::parse(&r).is_ok(), "the hidden text is still TOML: {r}");
    }

    #[test]
    fn hidden_values_come_back_from_the_running_file() {
        let edited = redact(TEXT).replace("threshold = 10.0", "threshold = 20.0");
        let back = restore(&edited, TEXT).unwrap();
        assert!(back.contains("threshold = 20.0"));
        assert!(back.contains("user:pass@"), "{back}");
        assert!(back.contains("Bearer xyz"), "{back}");
        let moved = redact(TEXT).replace("[pool.app.scale_in]", "[pool.web.scale_in]");
        assert!(restore(&moved, TEXT).unwrap_err().contains("pool.web.scale_in.command"));
    }
}
