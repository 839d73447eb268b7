//! The locator: turns a byte offset in the file into the `file:line: key:`
//! that every [`ConfigError::Invalid`] starts with, for toml's own errors
//! and for each section's checks alike. Owns no key; names them all.

use std::ops::Range;
use std::path::Path;

use super::ConfigError;

/// Turns byte offsets into `file:line: key:` messages.
pub(crate) struct Locator<'a> {
    path: &'a Path,
    /// The whole file, for a section that points past a span (a rule's header).
    pub(super) text: &'a str,
}

impl<'a> Locator<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        Locator { path, text }
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The dotted key at `offset`: the enclosing `[table]` header plus the
    /// key on that line, so that a type error (whose message does not name
    /// the key) still says where to look.
    fn key_at(&self, offset: usize) -> String {
        let end = offset.min(self.text.len());
        let line_start = self.text[..end].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[end..]
            .find('\n')
            .map_or(self.text.len(), |i| end + i);
        let line = &self.text[line_start..line_end];
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
            // A header without a name ("[", "[]") names nothing to look for.
            .filter(|t| !t.is_empty());
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        match (table, key) {
            (Some(t), Some(k)) => format!("{t}.{k}"),
            (Some(t), None) => t,
            (None, Some(k)) => k,
            (None, None) => "(top level)".into(),
        }
    }

    pub(crate) fn at(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        let table = self.key_at(span.start);
        let table = table.rsplit_once('.').map_or(table.as_str(), |(t, _)| t);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line_of(span.start),
            key: format!("{table}.{key}"),
            message: message.to_string(),
        }
    }

    /// Like [`Locator::at`], for a span that is a whole table (whose start
    /// is its header line): `key` is given in full.
    pub(crate) fn at_table(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line_of(span.start),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// A serde/toml error, at the key its span points into.
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map_or(0, |s| s.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line_of(offset),
            key: self.key_at(offset),
            message: e.message().trim().to_string(),
        }
    }

    /// `file:line: what`, for labelling something read later (a secret)
    /// with where the admin wrote it.
    pub(super) fn origin(&self, span: Range<usize>, what: &str) -> String {
        format!(
            "{}:{}: {what}",
            self.path.display(),
            self.line_of(span.start)
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{GOOD, error_text};

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("folder = \"INBOX\"", "folder = \"INBOX\"\nfolderr = \"x\"");
        let err = error_text(&text);
        assert!(err.starts_with("/etc/m2t/config.toml:23: "), "{err}");
        assert!(err.contains("folderr"), "{err}");
    }

    #[test]
    fn type_error_names_the_key() {
        let err = error_text(&GOOD.replace("port = 993", "port = 99999"));
        assert!(
            err.starts_with("/etc/m2t/config.toml:17: reader.port: "),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_is_explained() {
        let err = error_text(&GOOD.replace("\"30s\"", "\"soon\""));
        assert!(err.contains(":23: reader.poll_interval: "), "{err}");
        assert!(err.contains("not a duration"), "{err}");
    }
}
