//! The configuration file: what the admin edits.
//!
//! Owns parsing and validating the TOML file into typed settings. Every error
//! names the file, the line and the key, because the admin reading it has
//! only the file in front of them. Secrets are kept as *where to find them*
//! ([`SecretRef`]) and read only when needed, so a missing environment
//! variable fails one reader, visibly in its `last_error`, not the daemon.
//!
//! One file per section, named after its keys, each with the serde struct
//! of the section as written beside the checks that turn it into settings:
//! `store` (`[store]`), `daemon` (`[daemon]`), `oauth` (`[[oauth]]` and the
//! grants), `reader` (`[[reader]]`), `login` (a reader's `auth`, `password`,
//! `oauth`, `grant`), `mail` (`[tickets]`, `[guard]`, `[reader.reply]`),
//! `rules` (`[rules]`, `[[rule]]`) and `cloud` (`cloud`). Across sections:
//! `secret` (how a secret is written and read), `value` (durations,
//! loopback hosts) and `locate` (the file, line and key an error names).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod cloud;
mod daemon;
mod locate;
mod login;
mod mail;
mod oauth;
mod reader;
mod rules;
mod secret;
mod store;
mod value;

pub use cloud::{Cloud, Service};
pub use daemon::{DaemonConfig, LogFormat};
pub use login::{Login, OAuthLogin};
pub use mail::{
    ClosedReply, GuardConfig, MailPolicy, ReplyConfig, SharedPolicy, SubjectTag, TagFrom,
    TicketsConfig, Via,
};
pub use oauth::{ClientCertificate, Grant, OAuthApp};
pub use reader::{
    After, Backfill, DEFAULT_ACK_MAX_AGE, DEFAULT_BATCH_BYTES, Protocol, ReaderConfig, Tls,
};
pub use rules::{Matcher, Route, Rule, RuleAction, RuleMode, Rules};
pub use secret::{SecretError, SecretRef};
pub use store::StoreConfig;

use locate::Locator;

/// Where the daemon looks for its configuration when neither `-c` nor
/// `$MAIL2TICKET_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/mail2ticket/config.toml";

/// A configuration problem, located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub store: StoreConfig,
    /// Where a relative `[store] database` was before it was made relative
    /// to this file's directory: relative to the working directory. Start-up
    /// refuses to create a new database while one exists there.
    pub database_in_working_directory: Option<PathBuf>,
    pub daemon: DaemonConfig,
    pub oauth: Vec<OAuthApp>,
    /// `[tickets]`, `[guard]` and the rules are in every reader's
    /// [`ReaderConfig::mail`].
    pub readers: Vec<ReaderConfig>,
}

// The file as written: the top level here, each section's own struct beside
// its checks. Validation that serde can do (types, enums, durations, unknown
// keys) happens while deserializing, so that toml reports the exact span.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    store: store::RawStore,
    #[serde(default)]
    daemon: daemon::RawDaemon,
    #[serde(default)]
    oauth: Vec<oauth::RawOAuth>,
    #[serde(default)]
    reader: Vec<reader::RawReader>,
    #[serde(default)]
    tickets: mail::RawTickets,
    #[serde(default)]
    guard: mail::RawGuard,
    #[serde(default)]
    rules: rules::RawRules,
    #[serde(default)]
    rule: Vec<Spanned<rules::RawRule>>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (which only labels errors and
    /// anchors relative secret files).
    ///
    /// Sections are checked in this order, which decides the error reported
    /// when there are several: `[[oauth]]`, then `[tickets]`, `[guard]` and
    /// the rules, then the readers.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let locate = Locator::new(path, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| locate.toml_error(&e))?;
        let base_dir = path.parent().unwrap_or(Path::new("."));

        let daemon = daemon::parse(&locate, raw.daemon)?;
        let (store, database_in_working_directory) = store::parse(raw.store, base_dir);
        let oauth = oauth::parse(&locate, raw.oauth, base_dir)?;
        let ours = reader::addresses(&raw.reader);
        let shared = mail::Shared {
            tickets: mail::tickets(&locate, raw.tickets)?,
            guard: mail::guard(&locate, raw.guard, ours)?,
            rules: rules::build(&locate, raw.rules, raw.rule)?,
        };
        let readers = reader::parse(
            &locate,
            raw.reader,
            &reader::Context {
                base_dir,
                oauth: &oauth,
                shared: &shared,
                poll_interval: daemon.poll_interval,
            },
        )?;

        Ok(Config {
            path: path.to_path_buf(),
            store,
            database_in_working_directory,
            daemon,
            oauth,
            readers,
        })
    }

    pub fn app(&self, name: &str) -> Option<&OAuthApp> {
        self.oauth.iter().find(|a| a.name == name)
    }

    pub fn reader(&self, name: &str) -> Option<&ReaderConfig> {
        self.readers.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::*;

    pub(super) const GOOD: &str = r#"
[store]
database = "sqlite://x.db"

[daemon]
poll_interval = "60s"

[[oauth]]
name = "contoso"
tenant = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"

[[reader]]
name = "helpdesk"
protocol = "imap"
host = "outlook.office365.com"
port = 993
username = "helpdesk@contoso.com"
password = "hunter2-literal"
oauth = "contoso"
grant = "password"
folder = "INBOX"
poll_interval = "30s"
"#;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/m2t/config.toml"), text)
    }

    pub(super) fn error_text(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config should have been rejected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_the_documented_shape() {
        let config = parse(GOOD).expect("valid config");
        let reader = &config.readers[0];
        assert_eq!(reader.poll_interval, Duration::from_secs(30));
        assert_eq!(reader.port, 993);
        assert_eq!(
            config.oauth[0].token_url(),
            "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"
        );
        let password = reader
            .oauth()
            .and_then(|o| o.password.as_ref())
            .expect("password")
            .resolve()
            .expect("literal");
        assert_eq!(password.expose_secret(), "hunter2-literal");
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../../config.example.toml");
        parse(text).expect("config.example.toml must stay valid");
    }
}
