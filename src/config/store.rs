//! `[store]`: `database` (an sqlx SQLite URL; a relative file is anchored
//! at the configuration file's directory) and `key_file`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

const DEFAULT_DATABASE: &str = "sqlite://mail2ticket.db";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// An sqlx SQLite URL; a relative file in the configuration file was
    /// made absolute, relative to the file's directory.
    pub database: String,
    /// The 32-byte key that seals tokens at rest; see `store::key`.
    pub key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    database: Option<String>,
    key_file: Option<PathBuf>,
}

/// `[store]`, and where a relative database would have been before it was
/// anchored (see [`super::Config::database_in_working_directory`]).
pub(super) fn parse(raw: RawStore, base_dir: &Path) -> (StoreConfig, Option<PathBuf>) {
    // Absolute, so that the database is the same one whichever
    // directory a command is run from.
    let anchor = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    let database = raw.database.unwrap_or_else(|| DEFAULT_DATABASE.into());
    let database_in_working_directory =
        relative_database_file(&database).and_then(|file| std::path::absolute(file).ok());
    let store = StoreConfig {
        database: anchor_database(&database, &anchor),
        key_file: raw.key_file.map(|k| anchor.join(k)),
    };
    (store, database_in_working_directory)
}

/// The file of an sqlx SQLite URL when it is relative (as written, still
/// percent-encoded); `None` for an absolute file or an in-memory database.
fn relative_database_file(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let file = rest.split_once('?').map_or(rest, |(file, _)| file);
    (!file.is_empty() && file != ":memory:" && !file.starts_with('/')).then_some(file)
}

/// `url` with a relative database file made relative to `dir` (absolute)
/// instead of the working directory, keeping its parameters.
fn anchor_database(url: &str, dir: &Path) -> String {
    if relative_database_file(url).is_none() {
        return url.to_string();
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    // sqlx percent-decodes the file: a directory name with `%`, `?` or
    // `#` in it must reach it encoded.
    let mut encoded = String::new();
    for c in dir.to_string_lossy().trim_end_matches('/').chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    format!("sqlite://{encoded}/{}", rest.trim_start_matches("./"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::tests::{GOOD, parse};

    #[test]
    fn relative_store_paths_are_relative_to_the_config_file() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.store.database, "sqlite:///etc/m2t/x.db");
        let in_cwd = config.database_in_working_directory.expect("relative");
        assert!(
            in_cwd.is_absolute() && in_cwd.ends_with("x.db"),
            "{in_cwd:?}"
        );
        let dir = Path::new("/srv/a%b?c#d");
        assert_eq!(
            anchor_database("sqlite://./db/m.db?mode=rwc", dir),
            "sqlite:///srv/a%25b%3Fc%23d/db/m.db?mode=rwc"
        );
        assert_eq!(
            anchor_database("sqlite:m.db", dir),
            "sqlite:///srv/a%25b%3Fc%23d/m.db"
        );
        for kept in [
            "sqlite:///var/lib/m.db",
            "sqlite::memory:",
            "sqlite://?mode=memory",
        ] {
            assert_eq!(anchor_database(kept, dir), kept);
            assert!(relative_database_file(kept).is_none(), "{kept}");
        }
        let text = GOOD.replace(
            "database = \"sqlite://x.db\"",
            "database = \"sqlite://x.db\"\nkey_file = \"keys/store.key\"",
        );
        let config = parse(&text).expect("valid");
        assert_eq!(
            config.store.key_file.as_deref(),
            Some(Path::new("/etc/m2t/keys/store.key"))
        );
    }
}
