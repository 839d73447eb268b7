//! The configuration file: what the admin edits.
//!
//! Owns parsing and validating the TOML file into typed settings. Every error
//! names the file, the line and the key, because the admin reading it has
//! only the file in front of them. Secrets are kept as *where to find them*
//! ([`SecretRef`]) and read only when needed, so a missing environment
//! variable fails one reader, visibly in its `last_error`, not the daemon.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cloud;
mod mail;
mod rules;

pub use cloud::{Cloud, Service};
pub use mail::{
    ClosedReply, GuardConfig, MailPolicy, ReplyConfig, SharedPolicy, SubjectTag, TagFrom,
    TicketsConfig,
};
pub use rules::{Matcher, Route, Rule, RuleAction, RuleMode, Rules};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;

/// Where the daemon looks for its configuration when neither `-c` nor
/// `$MAIL2TICKET_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/mail2ticket/config.toml";

const DEFAULT_DATABASE: &str = "sqlite://mail2ticket.db";
const DEFAULT_REDIRECT_PORT: u16 = 8400;
/// `batch_bytes` unless set: large enough that ordinary mail is batched by
/// `batch_size`, small enough that two batches of large mail in flight
/// stay well under a small VM's memory.
pub const DEFAULT_BATCH_BYTES: u64 = 32 * 1024 * 1024;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// An sqlx SQLite URL; a relative file in the configuration file was
    /// made absolute, relative to the file's directory.
    pub database: String,
    /// The 32-byte key that seals tokens at rest; see `store::key`.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub poll_interval: Duration,
    /// How long readers get to reach a safe point after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; off when `None`.
    pub listen: Option<std::net::SocketAddr>,
    pub log_format: LogFormat,
    /// Reload when the file changes, not only on SIGHUP.
    pub watch_config: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (journald, a terminal).
    #[default]
    Text,
    /// One JSON object per event (Docker, log shippers).
    Json,
}

/// One Entra ID app registration.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub name: String,
    pub cloud: Cloud,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: Option<SecretRef>,
    pub client_certificate: Option<ClientCertificate>,
    /// Scheme and host of the identity platform, without a trailing slash.
    pub authority: String,
    /// Port of `authorize`'s loopback redirect listener (0: any free port).
    pub redirect_port: u16,
}

/// A certificate uploaded to the app registration and its private key, for
/// signing client assertions instead of sending a secret.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub certificate: PathBuf,
    pub key: SecretRef,
}

impl OAuthApp {
    /// The v2.0 token endpoint of this app's tenant.
    pub fn token_url(&self) -> String {
        self.endpoint("token")
    }

    pub fn authorize_url(&self) -> String {
        self.endpoint("authorize")
    }

    pub fn device_code_url(&self) -> String {
        self.endpoint("devicecode")
    }

    fn endpoint(&self, which: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{which}", self.authority, self.tenant)
    }

    /// Whether the app proves its identity (a confidential client).
    pub fn is_confidential(&self) -> bool {
        self.client_secret.is_some() || self.client_certificate.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// TLS from the first byte (993, 995).
    Implicit,
    /// Plain text upgraded with STARTTLS / STLS before anything else is said
    /// (143, 110). A server that does not offer the upgrade is refused.
    StartTls,
    /// No TLS at all: accepted for loopback hosts only (a local relay or a
    /// test server), so that credentials never cross a network in clear.
    None,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Implicit => "implicit",
            Tls::StartTls => "starttls",
            Tls::None => "none",
        }
    }
}

/// How a reader logs in to its mail server.
#[derive(Debug, Clone)]
pub enum Login {
    /// SASL XOAUTH2 with a token from the reader's `[[oauth]]` app.
    OAuth(OAuthLogin),
    /// SASL PLAIN / LOGIN (IMAP) or AUTH PLAIN / USER+PASS (POP3) with a
    /// password, for servers that still take one.
    Plain { password: SecretRef },
}

#[derive(Debug, Clone)]
pub struct OAuthLogin {
    /// Name of the `[[oauth]]` entry.
    pub app: String,
    pub grant: Grant,
    /// The account's password, for `grant = "password"` only.
    pub password: Option<SecretRef>,
}

impl Login {
    /// What the `readers` row and the logs call this login.
    pub fn as_str(&self) -> &'static str {
        match self {
            Login::OAuth(o) => o.grant.as_str(),
            Login::Plain { .. } => "plain",
        }
    }
}

/// What happens to a mail on the server once its ticket is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Flag it `\Seen` (IMAP's default).
    Seen,
    /// Leave it untouched; the ledger alone keeps it from being ingested
    /// twice (POP3's default).
    Keep,
    /// Delete it (IMAP: `\Deleted` + UID EXPUNGE; POP3: DELE + QUIT).
    Delete,
    /// Move it to this IMAP folder (as the admin wrote it, in UTF-8).
    Move(String),
}

impl After {
    fn parse(text: &str) -> Result<After, String> {
        match text {
            "seen" => Ok(After::Seen),
            "keep" => Ok(After::Keep),
            "delete" => Ok(After::Delete),
            other => match other.strip_prefix("move:") {
                Some(folder) if !folder.trim().is_empty() => Ok(After::Move(folder.to_string())),
                Some(_) => Err("\"move:\" needs a folder name, e.g. \"move:Processed\"".into()),
                None => Err(format!(
                    "{other:?} is not an after-step; use \"seen\", \"keep\", \"delete\" or \"move:FOLDER\""
                )),
            },
        }
    }

    pub fn as_str(&self) -> String {
        match self {
            After::Seen => "seen".into(),
            After::Keep => "keep".into(),
            After::Delete => "delete".into(),
            After::Move(folder) => format!("move:{folder}"),
        }
    }
}

/// Which of the mail already in a folder a reader takes the first time it
/// reads it (`backfill`); from then on the ledger takes everything new.
/// Protocol-neutral: each source decides what the mail it finds matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backfill {
    /// Mail not yet read by anyone (IMAP: not `\Seen`). POP3 has no read
    /// state, so there it is everything.
    Unseen,
    /// Everything already there.
    All,
    /// Nothing already there: only mail that arrives from now on.
    None,
    /// Mail received within this period before first contact.
    Within(Duration),
}

impl Backfill {
    fn parse(text: &str) -> Result<Backfill, String> {
        match text {
            "unseen" => Ok(Backfill::Unseen),
            "all" => Ok(Backfill::All),
            "none" => Ok(Backfill::None),
            other => match humantime::parse_duration(other) {
                Ok(d) if !d.is_zero() => Ok(Backfill::Within(d)),
                _ => Err(format!(
                    "{other:?} is not a backfill; use \"unseen\", \"all\", \"none\" or a duration such as \"7d\""
                )),
            },
        }
    }

    /// As written in the configuration.
    pub fn as_str(self) -> String {
        match self {
            Backfill::Unseen => "unseen".into(),
            Backfill::All => "all".into(),
            Backfill::None => "none".into(),
            Backfill::Within(d) => humantime::format_duration(d).to_string(),
        }
    }
}

/// `ack_max_age` when not set: mail older than a day at ingest is not
/// acknowledged.
pub const DEFAULT_ACK_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How a reader obtains its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Resource-owner password credentials (ROPC).
    Password,
    /// App-only: the app's own credential, no user, no refresh token.
    ClientCredentials,
    /// A user signs in once in a browser (`mail2ticket authorize`); the
    /// refresh token carries on from there.
    AuthorizationCode,
    /// Like `AuthorizationCode`, signed in on another device with a code.
    DeviceCode,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Password => "password",
            Grant::ClientCredentials => "client_credentials",
            Grant::AuthorizationCode => "authorization_code",
            Grant::DeviceCode => "device_code",
        }
    }

    /// App-only tokens act as the app, not as a user.
    pub fn is_app_only(self) -> bool {
        self == Grant::ClientCredentials
    }

    /// Grants whose first refresh token needs `mail2ticket authorize`.
    pub fn is_interactive(self) -> bool {
        matches!(self, Grant::AuthorizationCode | Grant::DeviceCode)
    }
}

/// One mailbox to turn into tickets.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub name: String,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: String,
    pub login: Login,
    /// The IMAP folder read (POP3 has only the one maildrop).
    pub folder: String,
    pub after: After,
    /// What the first poll of a folder takes of the mail already in it.
    pub backfill: Backfill,
    /// Keep an IMAP connection open and IDLE instead of polling.
    pub idle: bool,
    pub ca_file: Option<PathBuf>,
    pub poll_interval: Duration,
    /// Bound on every single network step (connect, login, one fetch, ...).
    pub timeout: Duration,
    /// Mails fetched and committed together.
    pub batch_size: usize,
    /// Raw bytes fetched and committed together: a batch closes before the
    /// mail that would take it past this (it always holds one mail).
    pub batch_bytes: u64,
    /// Acknowledgements of new tickets, when `[reader.reply]` is set.
    pub reply: Option<ReplyConfig>,
    /// How this reader's mail becomes tickets: threading, guard, rules,
    /// limits. Not part of the fingerprint: a reload swaps it in place.
    pub mail: SharedPolicy,
}

impl ReaderConfig {
    /// The OAuth side of the login, when the reader uses XOAUTH2.
    pub fn oauth(&self) -> Option<&OAuthLogin> {
        match &self.login {
            Login::OAuth(o) => Some(o),
            Login::Plain { .. } => None,
        }
    }

    /// Everything that decides whether the reader's next attempt could go
    /// differently from its last: its settings, its app's, and the current
    /// values of their secrets and certificate. Only ever fed to a keyed
    /// digest, never stored or shown.
    pub fn fingerprint_material(&self, app: Option<&OAuthApp>) -> Vec<u8> {
        // The reply settings are read by the sender, and the mail policy is
        // swapped in place: neither is a reason to reconnect the reader.
        let reader = ReaderConfig {
            reply: None,
            ..self.clone()
        };
        let mut material = format!("{reader:?}\0{app:?}").into_bytes();
        let password = match &self.login {
            Login::OAuth(o) => o.password.as_ref(),
            Login::Plain { password } => Some(password),
        };
        let secrets = [
            password,
            app.and_then(|a| a.client_secret.as_ref()),
            app.and_then(|a| a.client_certificate.as_ref().map(|c| &c.key)),
        ];
        for secret in secrets {
            material.push(0);
            match secret.map(SecretRef::resolve) {
                Some(Ok(value)) => material.extend_from_slice(value.expose_secret().as_bytes()),
                Some(Err(e)) => material.extend_from_slice(e.to_string().as_bytes()),
                None => material.push(b'-'),
            }
        }
        if let Some(cert) = app.and_then(|a| a.client_certificate.as_ref()) {
            material.push(0);
            material.extend(std::fs::read(&cert.certificate).unwrap_or_default());
        }
        material
    }
}

/// Where a secret lives, and where in the config it was named, so that
/// failing to read it can point the admin at the line. It never holds a
/// readable copy of the secret in anything printable.
#[derive(Clone)]
pub struct SecretRef {
    source: SecretSource,
    origin: String,
}

#[derive(Clone)]
enum SecretSource {
    Literal(SecretString),
    Env(String),
    File(PathBuf),
    /// A systemd credential (`LoadCredential=`): a file of this name in
    /// `$CREDENTIALS_DIRECTORY`, which systemd makes readable to the
    /// service alone.
    Credential(String),
}

/// Reading a secret failed; says which one and why, never what it is.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct SecretError {
    origin: String,
    reason: String,
}

impl SecretRef {
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        let fail = |reason: String| SecretError {
            origin: self.origin.clone(),
            reason,
        };
        match &self.source {
            SecretSource::Literal(value) => Ok(value.clone()),
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
                Ok(_) => Err(fail(format!("environment variable {var} is empty"))),
                Err(_) => Err(fail(format!("environment variable {var} is not set"))),
            },
            SecretSource::File(path) => read_secret_file(path).map_err(fail),
            SecretSource::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => read_secret_file(&Path::new(&dir).join(name)).map_err(fail),
                None => Err(fail(format!(
                    "credential {name:?}: $CREDENTIALS_DIRECTORY is not set (add \
                     LoadCredential={name}:/path/to/file to the systemd unit)"
                ))),
            },
        }
    }

    #[cfg(test)]
    fn literal(value: &str) -> SecretRef {
        SecretRef {
            source: SecretSource::Literal(value.into()),
            origin: "test".into(),
        }
    }
}

/// A secret file's contents. Files written by editors and `echo` end in a
/// newline that is never part of the secret.
fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    match std::fs::read_to_string(path) {
        Ok(value) => Ok(SecretString::from(value.trim_end_matches(['\r', '\n']))),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.source {
            SecretSource::Literal(_) => "literal [REDACTED]".to_string(),
            SecretSource::Env(var) => format!("env {var}"),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Credential(name) => format!("credential {name}"),
        };
        write!(f, "SecretRef({kind})")
    }
}

// ---------------------------------------------------------------------------
// The file as written. Validation that serde can do (types, enums, durations,
// unknown keys) happens here so that toml reports the exact span.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    oauth: Vec<RawOAuth>,
    #[serde(default)]
    reader: Vec<RawReader>,
    #[serde(default)]
    tickets: mail::RawTickets,
    #[serde(default)]
    guard: mail::RawGuard,
    #[serde(default)]
    rules: rules::RawRules,
    #[serde(default)]
    rule: Vec<Spanned<rules::RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    database: Option<String>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    poll_interval: Option<HumanDuration>,
    shutdown_timeout: Option<HumanDuration>,
    listen: Option<std::net::SocketAddr>,
    log_format: Option<LogFormat>,
    watch_config: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    name: Spanned<String>,
    #[serde(default)]
    cloud: Cloud,
    tenant: String,
    client_id: String,
    client_secret: Option<Spanned<RawSecret>>,
    client_certificate: Option<Spanned<RawFile>>,
    client_key: Option<Spanned<RawSecret>>,
    authority: Option<Spanned<Authority>>,
    redirect_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "{ file = \"path\" }")]
struct RawFile {
    file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReader {
    name: Spanned<String>,
    protocol: Protocol,
    host: Option<Spanned<String>>,
    port: Option<u16>,
    tls: Option<Tls>,
    username: String,
    auth: Option<Spanned<RawAuth>>,
    password: Option<Spanned<RawSecret>>,
    oauth: Option<Spanned<String>>,
    grant: Option<Spanned<Grant>>,
    folder: Option<Spanned<String>>,
    after: Option<Spanned<String>>,
    backfill: Option<Spanned<String>>,
    ack_max_age: Option<Spanned<HumanDuration>>,
    idle: Option<Spanned<bool>>,
    ca_file: Option<PathBuf>,
    poll_interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    batch_size: Option<Spanned<usize>>,
    batch_bytes: Option<Spanned<bytesize::ByteSize>>,
    allow_auto_submitted: Option<bool>,
    reply: Option<Spanned<mail::RawReply>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawAuth {
    Xoauth2,
    Plain,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a string, { env = \"VAR\" }, { file = \"path\" } or { credential = \"name\" }"
)]
enum RawSecret {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
    Credential { credential: String },
}

/// A duration written like `60s`, `5m` or `1h 30m`.
#[derive(Clone, Copy)]
pub(crate) struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"60s\" or \"5m\""
            ))
        })?;
        if value.is_zero() {
            return Err(serde::de::Error::custom(
                "a duration of zero is not allowed",
            ));
        }
        Ok(HumanDuration(value))
    }
}

/// An identity-platform base URL. Plain HTTP is only for a loopback stand-in
/// in tests: tokens and passwords never travel unencrypted.
struct Authority {
    url: String,
    host: String,
}

impl<'de> Deserialize<'de> for Authority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let url = reqwest::Url::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a URL ({e})")))?;
        let loopback = url.host_str().is_some_and(is_loopback);
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(serde::de::Error::custom(
                    "plain http:// is only accepted for loopback hosts; use https://",
                ));
            }
            other => {
                return Err(serde::de::Error::custom(format!(
                    "scheme {other}:// is not supported; use https://"
                )));
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(serde::de::Error::custom(
                "the authority is a base URL without query or fragment",
            ));
        }
        Ok(Authority {
            url: text.trim_end_matches('/').to_string(),
            host: url.host_str().unwrap_or_default().to_string(),
        })
    }
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

// ---------------------------------------------------------------------------

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
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let locate = Locator { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| locate.toml_error(&e))?;
        let base_dir = path.parent().unwrap_or(Path::new("."));

        let daemon = DaemonConfig {
            poll_interval: raw
                .daemon
                .poll_interval
                .map_or(Duration::from_secs(60), |d| d.0),
            shutdown_timeout: raw
                .daemon
                .shutdown_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            listen: raw.daemon.listen,
            log_format: raw.daemon.log_format.unwrap_or_default(),
            watch_config: raw.daemon.watch_config.unwrap_or(false),
        };
        // Absolute, so that the database is the same one whichever
        // directory a command is run from.
        let anchor = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        let database = raw
            .store
            .database
            .unwrap_or_else(|| DEFAULT_DATABASE.into());
        let database_in_working_directory =
            relative_database_file(&database).and_then(|file| std::path::absolute(file).ok());
        let store = StoreConfig {
            database: anchor_database(&database, &anchor),
            key_file: raw.store.key_file.map(|k| anchor.join(k)),
        };

        let mut oauth = Vec::new();
        let mut app_names = HashSet::new();
        for app in raw.oauth {
            let name = app.name.get_ref().clone();
            if !app_names.insert(name.clone()) {
                return Err(locate.at(
                    app.name.span(),
                    "name",
                    "another [[oauth]] entry has this name",
                ));
            }
            let secret_span = app.client_secret.as_ref().map(Spanned::span);
            let client_secret = app
                .client_secret
                .map(|s| locate.secret(s, base_dir, &format!("oauth \"{name}\" client_secret")));
            let client_certificate = match (app.client_certificate, app.client_key) {
                (Some(cert), Some(key)) => Some(ClientCertificate {
                    certificate: base_dir.join(cert.into_inner().file),
                    key: locate.secret(key, base_dir, &format!("oauth \"{name}\" client_key")),
                }),
                (None, None) => None,
                (Some(cert), None) => {
                    return Err(locate.at(
                        cert.span(),
                        "client_key",
                        "client_certificate needs client_key, the certificate's private key (PEM)",
                    ));
                }
                (None, Some(key)) => {
                    return Err(locate.at(
                        key.span(),
                        "client_certificate",
                        "client_key needs client_certificate = { file = \"...pem\" }",
                    ));
                }
            };
            if let (Some(span), Some(_)) = (secret_span, &client_certificate) {
                return Err(locate.at(
                    span,
                    "client_secret",
                    "set either client_secret or client_certificate, not both",
                ));
            }
            let cloud = app.cloud;
            let authority = match app.authority {
                Some(a) => {
                    if let Some(other) = Cloud::of_authority_host(&a.get_ref().host)
                        && !other.shares_authority(cloud)
                    {
                        return Err(locate.at(
                            a.span(),
                            "authority",
                            &format!(
                                "{} signs in to the {} cloud, but this entry has cloud = \"{}\"; \
                                 set cloud = \"{}\" or remove authority",
                                a.get_ref().host,
                                other.as_str(),
                                cloud.as_str(),
                                other.as_str()
                            ),
                        ));
                    }
                    a.into_inner().url
                }
                None => cloud.authority().to_string(),
            };
            oauth.push(OAuthApp {
                name,
                cloud,
                tenant: app.tenant,
                client_id: app.client_id,
                client_secret,
                client_certificate,
                authority,
                redirect_port: app.redirect_port.unwrap_or(DEFAULT_REDIRECT_PORT),
            });
        }

        // Every reader's address is ours, whichever reader a mail arrives
        // through: the guard needs them all before the first reader.
        let ours: Vec<String> = raw
            .reader
            .iter()
            .flat_map(|r| {
                let reply_from = r.reply.as_ref().and_then(|p| p.get_ref().sender());
                std::iter::once(r.username.clone()).chain(reply_from)
            })
            .collect();
        let shared = mail::Shared {
            tickets: mail::tickets(&locate, raw.tickets)?,
            guard: mail::guard(&locate, raw.guard, ours)?,
            rules: rules::build(&locate, raw.rules, raw.rule)?,
        };

        let mut readers = Vec::new();
        let mut reader_names = HashSet::new();
        for r in raw.reader {
            let name = r.name.get_ref().clone();
            if name.is_empty() {
                return Err(locate.at(r.name.span(), "name", "a reader needs a non-empty name"));
            }
            if !reader_names.insert(name.clone()) {
                return Err(locate.at(r.name.span(), "name", "another [[reader]] has this name"));
            }
            let protocol = r.protocol;
            let password = r.password.map(|s| {
                (
                    s.span(),
                    locate.secret(s, base_dir, &format!("reader \"{name}\" password")),
                )
            });
            let auth = r.auth.as_ref().map_or(RawAuth::Xoauth2, |a| *a.get_ref());
            let (login, app) = match auth {
                RawAuth::Plain => {
                    let at = r.auth.as_ref().map_or(r.name.span(), |a| a.span());
                    if let Some(oauth) = &r.oauth {
                        return Err(locate.at(
                            oauth.span(),
                            "oauth",
                            "auth = \"plain\" logs in with a password, not OAuth; remove oauth (and grant)",
                        ));
                    }
                    if let Some(grant) = &r.grant {
                        return Err(locate.at(
                            grant.span(),
                            "grant",
                            "auth = \"plain\" logs in with a password, not OAuth; remove grant",
                        ));
                    }
                    let Some((_, password)) = password else {
                        return Err(locate.at(
                            at,
                            "password",
                            "auth = \"plain\" needs a password (a string, { env = \"VAR\" } or { file = \"path\" })",
                        ));
                    };
                    (Login::Plain { password }, None)
                }
                RawAuth::Xoauth2 => {
                    let Some(oauth_name) = &r.oauth else {
                        return Err(locate.at(
                            r.name.span(),
                            "oauth",
                            "the reader needs oauth = \"APP\" naming an [[oauth]] entry \
                             (or auth = \"plain\" for a server that takes passwords)",
                        ));
                    };
                    let Some(grant_at) = &r.grant else {
                        return Err(locate.at(
                            r.name.span(),
                            "grant",
                            "the reader needs grant = \"password\", \"client_credentials\", \
                             \"authorization_code\" or \"device_code\"",
                        ));
                    };
                    let Some(app) = oauth.iter().find(|a| a.name == *oauth_name.get_ref()) else {
                        let known: Vec<_> = oauth.iter().map(|a| a.name.as_str()).collect();
                        return Err(locate.at(
                            oauth_name.span(),
                            "oauth",
                            &format!(
                                "no [[oauth]] entry is named {:?} (known: {})",
                                oauth_name.get_ref(),
                                if known.is_empty() {
                                    "none".into()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ));
                    };
                    let grant = *grant_at.get_ref();
                    if grant == Grant::Password && password.is_none() {
                        return Err(locate.at(
                            grant_at.span(),
                            "password",
                            "grant = \"password\" needs a password (a string, { env = \"VAR\" } or { file = \"path\" })",
                        ));
                    }
                    if grant != Grant::Password && password.is_some() {
                        return Err(locate.at(
                            grant_at.span(),
                            "password",
                            &format!(
                                "grant = \"{}\" does not use a password; remove it",
                                grant.as_str()
                            ),
                        ));
                    }
                    if grant == Grant::ClientCredentials && !app.is_confidential() {
                        return Err(locate.at(
                            grant_at.span(),
                            "grant",
                            &format!(
                                "grant = \"client_credentials\" needs the app's own credential: \
                                 set client_secret or client_certificate on [[oauth]] \"{}\"",
                                app.name
                            ),
                        ));
                    }
                    let login = Login::OAuth(OAuthLogin {
                        app: app.name.clone(),
                        grant,
                        password: password.map(|(_, p)| p),
                    });
                    (login, Some(app))
                }
            };
            let host = match (r.host, app) {
                (Some(host), Some(app)) => {
                    if let Some(other) = Cloud::of_mail_host(host.get_ref())
                        && other != app.cloud
                    {
                        return Err(locate.at(
                            host.span(),
                            "host",
                            &format!(
                                "{} is in the {} cloud, but [[oauth]] \"{}\" has cloud = \"{}\"; \
                                 tokens of one cloud are not accepted by another: \
                                 set cloud = \"{}\" on the app or use host = \"{}\"",
                                host.get_ref(),
                                other.as_str(),
                                app.name,
                                app.cloud.as_str(),
                                other.as_str(),
                                app.cloud.mail_host()
                            ),
                        ));
                    }
                    host.into_inner()
                }
                (Some(host), None) => host.into_inner(),
                (None, Some(app)) => app.cloud.mail_host().to_string(),
                (None, None) => {
                    return Err(locate.at(
                        r.name.span(),
                        "host",
                        "auth = \"plain\" needs the mail server's host",
                    ));
                }
            };
            let tls = r.tls.unwrap_or(Tls::Implicit);
            if tls == Tls::None && !is_loopback(&host) {
                return Err(locate.at(
                    r.name.span(),
                    "tls",
                    &format!(
                        "tls = \"none\" would send credentials in clear to {host}; it is only \
                         accepted for a loopback host. Use tls = \"starttls\" or \"implicit\""
                    ),
                ));
            }
            let folder = match (protocol, r.folder) {
                (Protocol::Imap, Some(f)) => f.into_inner(),
                (Protocol::Imap, None) => "INBOX".to_string(),
                (Protocol::Pop3, Some(f)) => {
                    return Err(locate.at(
                        f.span(),
                        "folder",
                        "POP3 reads the inbox only; remove folder (or use protocol = \"imap\")",
                    ));
                }
                (Protocol::Pop3, None) => "INBOX".to_string(),
            };
            let after = match r.after {
                None => match protocol {
                    Protocol::Imap => After::Seen,
                    Protocol::Pop3 => After::Keep,
                },
                Some(text) => {
                    let after = After::parse(text.get_ref())
                        .map_err(|e| locate.at(text.span(), "after", &e))?;
                    if protocol == Protocol::Pop3 && matches!(after, After::Seen | After::Move(_)) {
                        return Err(locate.at(
                            text.span(),
                            "after",
                            "POP3 has no flags or folders: use after = \"keep\" or \"delete\"",
                        ));
                    }
                    after
                }
            };
            let backfill = match r.backfill {
                Some(text) => Backfill::parse(text.get_ref())
                    .map_err(|e| locate.at(text.span(), "backfill", &e))?,
                None => Backfill::Unseen,
            };
            let idle = match r.idle {
                Some(i) if *i.get_ref() && protocol == Protocol::Pop3 => {
                    return Err(locate.at(
                        i.span(),
                        "idle",
                        "POP3 has no IDLE; remove idle (the reader polls every poll_interval)",
                    ));
                }
                Some(i) => i.into_inner(),
                None => false,
            };
            let batch_size = match r.batch_size {
                Some(b) if *b.get_ref() == 0 || *b.get_ref() > 10_000 => {
                    return Err(locate.at(b.span(), "batch_size", "must be between 1 and 10000"));
                }
                Some(b) => b.into_inner(),
                None => 100,
            };
            let batch_bytes = match r.batch_bytes {
                Some(b) if b.get_ref().as_u64() == 0 => {
                    return Err(locate.at(b.span(), "batch_bytes", "must be more than 0 bytes"));
                }
                Some(b) => b.get_ref().as_u64(),
                None => DEFAULT_BATCH_BYTES,
            };
            let in_reply = r.reply.as_ref().and_then(|raw| raw.get_ref().ack_max_age());
            let ack_max_age = match (r.ack_max_age, in_reply) {
                (Some(here), Some(_)) => {
                    return Err(locate.at(
                        here.span(),
                        "ack_max_age",
                        "set either here or in [reader.reply], not both",
                    ));
                }
                (Some(d), None) => d.get_ref().0,
                (None, Some(d)) => d,
                (None, None) => DEFAULT_ACK_MAX_AGE,
            };
            let reply = match r.reply {
                Some(raw) => {
                    let span = raw.span();
                    Some(mail::reply(
                        &locate,
                        raw.into_inner(),
                        mail::ReplyDefaults {
                            username: &r.username,
                            smtp_host: app.map(|a| a.cloud.smtp_host()),
                            base_dir,
                            span,
                        },
                    )?)
                }
                None => None,
            };
            let mail = shared.policy(
                r.allow_auto_submitted.unwrap_or(false),
                reply.as_ref().map(|p| p.from.as_str()),
                &r.username,
                ack_max_age,
            );
            readers.push(ReaderConfig {
                name,
                protocol,
                port: r.port.unwrap_or(default_port(protocol, tls)),
                host,
                tls,
                username: r.username,
                login,
                folder,
                after,
                backfill,
                idle,
                ca_file: r.ca_file.map(|p| base_dir.join(p)),
                poll_interval: r.poll_interval.map_or(daemon.poll_interval, |d| d.0),
                timeout: r.timeout.map_or(Duration::from_secs(60), |d| d.0),
                batch_size,
                batch_bytes,
                reply,
                mail,
            });
        }

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

/// The port a protocol listens on for a kind of TLS (IANA assignments).
fn default_port(protocol: Protocol, tls: Tls) -> u16 {
    match (protocol, tls) {
        (Protocol::Imap, Tls::Implicit) => 993,
        (Protocol::Imap, Tls::StartTls | Tls::None) => 143,
        (Protocol::Pop3, Tls::Implicit) => 995,
        (Protocol::Pop3, Tls::StartTls | Tls::None) => 110,
    }
}

/// Whether `host` names this machine, so plain text never leaves it.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Turns byte offsets into `file:line: key:` messages.
pub(crate) struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
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

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map_or(0, |s| s.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line_of(offset),
            key: self.key_at(offset),
            message: e.message().trim().to_string(),
        }
    }

    fn secret(&self, raw: Spanned<RawSecret>, base_dir: &Path, what: &str) -> SecretRef {
        let origin = format!(
            "{}:{}: {what}",
            self.path.display(),
            self.line_of(raw.span().start)
        );
        let source = match raw.into_inner() {
            RawSecret::Literal(v) => SecretSource::Literal(SecretString::from(v)),
            RawSecret::Env { env } => SecretSource::Env(env),
            RawSecret::File { file } => SecretSource::File(base_dir.join(file)),
            RawSecret::Credential { credential } => SecretSource::Credential(credential),
        };
        SecretRef { source, origin }
    }
}

#[cfg(test)]
mod tests {
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

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/m2t/config.toml"), text)
    }

    fn error_text(text: &str) -> String {
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

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../../config.example.toml");
        parse(text).expect("config.example.toml must stay valid");
    }

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

    #[test]
    fn batch_bytes_is_a_byte_size() {
        let config = parse(&GOOD.replace(
            "poll_interval = \"30s\"",
            "poll_interval = \"30s\"\nbatch_bytes = \"8 MiB\"",
        ))
        .expect("valid");
        assert_eq!(config.readers[0].batch_bytes, 8 << 20);
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.readers[0].batch_bytes, DEFAULT_BATCH_BYTES);
        for bad in ["\"lots\"", "\"0 B\"", "-1"] {
            let err = error_text(&GOOD.replace(
                "poll_interval = \"30s\"",
                &format!("poll_interval = \"30s\"\nbatch_bytes = {bad}"),
            ));
            assert!(
                err.starts_with("/etc/m2t/config.toml:24: reader.batch_bytes: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unknown_oauth_reference_is_located() {
        let err = error_text(&GOOD.replace("oauth = \"contoso\"", "oauth = \"fabrikam\""));
        assert!(err.contains(":20: reader.oauth: "), "{err}");
        assert!(err.contains("known: contoso"), "{err}");
    }

    #[test]
    fn plain_http_authority_only_on_loopback() {
        let with = |authority: &str| {
            GOOD.replace(
                "client_id = \"11111111-1111-1111-1111-111111111111\"",
                &format!("client_id = \"x\"\nauthority = \"{authority}\""),
            )
        };
        assert!(parse(&with("http://127.0.0.1:8080")).is_ok());
        assert!(parse(&with("http://localhost:8080/")).is_ok());
        let err = error_text(&with("http://login.example.com"));
        assert!(err.contains("oauth.authority"), "{err}");
        assert!(err.contains("only accepted for loopback"), "{err}");
    }

    #[test]
    fn password_grant_requires_a_password() {
        let err = error_text(&GOOD.replace("password = \"hunter2-literal\"\n", ""));
        assert!(err.contains("reader.password"), "{err}");
    }

    #[test]
    fn duplicate_reader_names_are_rejected() {
        let start = GOOD.find("[[reader]]").expect("reader table");
        let text = format!("{GOOD}\n{}", &GOOD[start..]);
        let err = error_text(&text);
        assert!(err.contains("another [[reader]] has this name"), "{err}");
    }

    #[test]
    fn secrets_from_env_and_file_report_their_origin_not_value() {
        let text = GOOD.replace(
            "password = \"hunter2-literal\"",
            "password = { env = \"M2T_TEST_SURELY_UNSET_VAR\" }",
        );
        let config = parse(&text).expect("valid");
        let err = config.readers[0]
            .oauth()
            .and_then(|o| o.password.as_ref())
            .expect("set")
            .resolve()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("config.toml:19: reader \"helpdesk\" password"),
            "{msg}"
        );
        assert!(
            msg.contains("M2T_TEST_SURELY_UNSET_VAR is not set"),
            "{msg}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), "s3cret\n").expect("write");
        let text = GOOD.replace(
            "password = \"hunter2-literal\"",
            "password = { file = \"pw\" }",
        );
        let config = Config::parse(&dir.path().join("c.toml"), &text).expect("valid");
        let value = config.readers[0]
            .oauth()
            .and_then(|o| o.password.as_ref())
            .expect("set")
            .resolve()
            .expect("file");
        assert_eq!(value.expose_secret(), "s3cret");
    }

    #[test]
    fn cloud_picks_authority_and_default_host() {
        let text = GOOD
            .replace(
                "client_id = \"11111111-1111-1111-1111-111111111111\"",
                "client_id = \"x\"\ncloud = \"usgov-dod\"",
            )
            .replace("host = \"outlook.office365.com\"\n", "");
        let config = parse(&text).expect("valid");
        assert_eq!(config.readers[0].host, "outlook-dod.office365.us");
        assert!(
            config.oauth[0]
                .token_url()
                .starts_with("https://login.microsoftonline.us/"),
            "{}",
            config.oauth[0].token_url()
        );
    }

    #[test]
    fn host_of_another_cloud_is_rejected_with_the_fix() {
        let text = GOOD.replace(
            "client_id = \"11111111-1111-1111-1111-111111111111\"",
            "client_id = \"x\"\ncloud = \"china\"",
        );
        let err = error_text(&text);
        assert!(err.contains(":17: reader.host: "), "{err}");
        assert!(
            err.contains("outlook.office365.com is in the global cloud"),
            "{err}"
        );
        assert!(err.contains("partner.outlook.cn"), "{err}");

        let text = GOOD.replace(
            "client_id = \"11111111-1111-1111-1111-111111111111\"",
            "client_id = \"x\"\nauthority = \"https://login.partner.microsoftonline.cn\"",
        );
        let err = error_text(&text);
        assert!(err.contains("oauth.authority"), "{err}");
        assert!(err.contains("china cloud"), "{err}");
    }

    #[test]
    fn grants_check_what_they_need() {
        let app_only = GOOD
            .replace("password = \"hunter2-literal\"\n", "")
            .replace("grant = \"password\"", "grant = \"client_credentials\"");
        let err = error_text(&app_only);
        assert!(err.contains("reader.grant"), "{err}");
        assert!(err.contains("client_secret or client_certificate"), "{err}");

        let with_secret = app_only.replace(
            "client_id = \"11111111-1111-1111-1111-111111111111\"",
            "client_id = \"x\"\nclient_secret = { env = \"S\" }",
        );
        let config = parse(&with_secret).expect("valid");
        assert!(
            config.readers[0]
                .oauth()
                .expect("oauth")
                .grant
                .is_app_only()
        );

        let cert_without_key = app_only.replace(
            "client_id = \"11111111-1111-1111-1111-111111111111\"",
            "client_id = \"x\"\nclient_certificate = { file = \"app.pem\" }",
        );
        let err = error_text(&cert_without_key);
        assert!(err.contains("oauth.client_key"), "{err}");

        let stray_password = GOOD.replace("grant = \"password\"", "grant = \"device_code\"");
        let err = error_text(&stray_password);
        assert!(err.contains("does not use a password"), "{err}");
    }

    #[test]
    fn debug_output_hides_literal_secrets() {
        let shown = format!("{:?}", SecretRef::literal("hunter2-literal"));
        assert!(!shown.contains("hunter2"), "{shown}");
        let config = parse(GOOD).expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn transport_and_housekeeping_options() {
        let config = parse(GOOD).expect("valid");
        let r = &config.readers[0];
        assert_eq!(
            (r.tls, r.after.clone(), r.idle),
            (Tls::Implicit, After::Seen, false)
        );

        let pop = GOOD
            .replace(
                "protocol = \"imap\"",
                "protocol = \"pop3\"\ntls = \"starttls\"",
            )
            .replace("port = 993\n", "")
            .replace("folder = \"INBOX\"\n", "");
        let config = parse(&pop).expect("valid pop3");
        let r = &config.readers[0];
        assert_eq!((r.port, r.after.clone()), (110, After::Keep));

        let text = GOOD.replace(
            "folder = \"INBOX\"",
            "folder = \"INBOX\"\nafter = \"move:Erledigt/Bearbeitet\"\nidle = true",
        );
        let r = &parse(&text).expect("valid").readers[0];
        assert_eq!(r.after, After::Move("Erledigt/Bearbeitet".into()));
        assert!(r.idle);

        let err = error_text(&GOOD.replace("folder = \"INBOX\"", "after = \"archive\""));
        assert!(
            err.contains("reader.after") && err.contains("\"archive\" is not an after-step"),
            "{err}"
        );
        let err = error_text(&GOOD.replace("folder = \"INBOX\"", "after = \"move:\""));
        assert!(err.contains("needs a folder name"), "{err}");
        let err = error_text(&pop.replace(
            "poll_interval = \"30s\"",
            "poll_interval = \"30s\"\nafter = \"seen\"",
        ));
        assert!(
            err.contains("reader.after") && err.contains("POP3 has no flags"),
            "{err}"
        );
        let err = error_text(&pop.replace(
            "poll_interval = \"30s\"",
            "poll_interval = \"30s\"\nfolder = \"Archive\"",
        ));
        assert!(
            err.contains("reader.folder") && err.contains("POP3 reads the inbox only"),
            "{err}"
        );
        let err = error_text(&pop.replace(
            "poll_interval = \"30s\"",
            "poll_interval = \"30s\"\nidle = true",
        ));
        assert!(err.contains("reader.idle"), "{err}");
    }

    #[test]
    fn backfill_and_ack_max_age() {
        let r = &parse(GOOD).expect("valid").readers[0];
        assert_eq!(r.backfill, Backfill::Unseen, "the default");
        assert_eq!(r.mail.current().ack_max_age, DEFAULT_ACK_MAX_AGE);
        for (text, want) in [
            ("all", Backfill::All),
            ("none", Backfill::None),
            ("unseen", Backfill::Unseen),
            ("7d", Backfill::Within(Duration::from_secs(7 * 86_400))),
            ("12h", Backfill::Within(Duration::from_secs(12 * 3600))),
        ] {
            let config = parse(&GOOD.replace(
                "folder = \"INBOX\"",
                &format!("folder = \"INBOX\"\nbackfill = \"{text}\""),
            ))
            .expect("valid");
            assert_eq!(config.readers[0].backfill, want, "{text}");
        }
        for bad in ["everything", "0s", "-1d"] {
            let err = error_text(&GOOD.replace(
                "folder = \"INBOX\"",
                &format!("folder = \"INBOX\"\nbackfill = \"{bad}\""),
            ));
            assert!(
                err.contains(":23: reader.backfill: ") && err.contains("is not a backfill"),
                "{err}"
            );
        }

        let reply = "\n[reader.reply]\nhost = \"smtp.example.com\"\n";
        let here = GOOD.replace(
            "folder = \"INBOX\"",
            "folder = \"INBOX\"\nack_max_age = \"3d\"",
        );
        let r = &parse(&format!("{here}{reply}")).expect("valid").readers[0];
        assert_eq!(
            r.mail.current().ack_max_age,
            Duration::from_secs(3 * 86_400)
        );
        let there = format!("{GOOD}{reply}ack_max_age = \"2h\"\n");
        let r = &parse(&there).expect("valid").readers[0];
        assert_eq!(r.mail.current().ack_max_age, Duration::from_secs(2 * 3600));
        let err = error_text(&format!("{here}{reply}ack_max_age = \"2h\"\n"));
        assert!(
            err.contains(":23: reader.ack_max_age: ") && err.contains("not both"),
            "{err}"
        );
    }

    #[test]
    fn plain_text_only_to_loopback() {
        let none = GOOD.replace("protocol = \"imap\"", "protocol = \"imap\"\ntls = \"none\"");
        let err = error_text(&none);
        assert!(
            err.contains("reader.tls") && err.contains("outlook.office365.com"),
            "{err}"
        );
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            let text = none.replace("outlook.office365.com", host);
            let r = &parse(&text).expect("loopback is fine").readers[0];
            assert_eq!(r.tls, Tls::None, "{host}");
        }
        assert!(!is_loopback("127.0.0.1.example.com"));
    }

    #[test]
    fn plain_auth_needs_a_password_and_no_oauth() {
        let plain = GOOD
            .replace("oauth = \"contoso\"\n", "")
            .replace("grant = \"password\"", "auth = \"plain\"")
            .replace("outlook.office365.com", "mail.example.org");
        let r = &parse(&plain).expect("valid").readers[0];
        assert!(matches!(r.login, Login::Plain { .. }));
        assert!(r.oauth().is_none());

        let err =
            error_text(&plain.replace("auth = \"plain\"", "auth = \"plain\"\noauth = \"contoso\""));
        assert!(
            err.contains("reader.oauth") && err.contains("remove oauth"),
            "{err}"
        );
        let err = error_text(&plain.replace("password = \"hunter2-literal\"\n", ""));
        assert!(err.contains("reader.password"), "{err}");
        let err = error_text(&plain.replace("host = \"mail.example.org\"\n", ""));
        assert!(err.contains("reader.host"), "{err}");
        let err = error_text(&GOOD.replace("oauth = \"contoso\"\n", ""));
        assert!(
            err.contains("reader.oauth") && err.contains("auth = \"plain\""),
            "{err}"
        );
    }
}
