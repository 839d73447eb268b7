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

use crate::auth::Cloud;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;

/// Where the daemon looks for its configuration when neither `-c` nor
/// `$MAIL2TICKET_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/mail2ticket/config.toml";

const DEFAULT_DATABASE: &str = "sqlite://mail2ticket.db";
const DEFAULT_REDIRECT_PORT: u16 = 8400;

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
    pub daemon: DaemonConfig,
    pub oauth: Vec<OAuthApp>,
    pub readers: Vec<ReaderConfig>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// An sqlx SQLite URL; a relative file is relative to the working directory.
    pub database: String,
    /// The 32-byte key that seals tokens at rest; see `store::key`.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub poll_interval: Duration,
    /// How long readers get to reach a safe point after SIGTERM.
    pub shutdown_timeout: Duration,
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
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
        }
    }
}

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
    pub username: String,
    pub password: Option<SecretRef>,
    /// Name of the `[[oauth]]` entry this reader uses.
    pub oauth: String,
    pub grant: Grant,
    pub folder: String,
    pub ca_file: Option<PathBuf>,
    pub poll_interval: Duration,
    /// Bound on every single network step (connect, login, one fetch, ...).
    pub timeout: Duration,
    /// Mails fetched and committed together.
    pub batch_size: usize,
}

impl ReaderConfig {
    /// Everything that decides whether the reader's next attempt could go
    /// differently from its last: its settings, its app's, and the current
    /// values of their secrets and certificate. Only ever fed to a keyed
    /// digest, never stored or shown.
    pub fn fingerprint_material(&self, app: &OAuthApp) -> Vec<u8> {
        let mut material = format!("{self:?}\0{app:?}").into_bytes();
        let secrets = [
            self.password.as_ref(),
            app.client_secret.as_ref(),
            app.client_certificate.as_ref().map(|c| &c.key),
        ];
        for secret in secrets {
            material.push(0);
            match secret.map(SecretRef::resolve) {
                Some(Ok(value)) => material.extend_from_slice(value.expose_secret().as_bytes()),
                Some(Err(e)) => material.extend_from_slice(e.to_string().as_bytes()),
                None => material.push(b'-'),
            }
        }
        if let Some(cert) = &app.client_certificate {
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
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                // Files written by editors and `echo` end in a newline that is
                // never part of the secret.
                Ok(value) => Ok(SecretString::from(value.trim_end_matches(['\r', '\n']))),
                Err(e) => Err(fail(format!("cannot read {}: {e}", path.display()))),
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

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.source {
            SecretSource::Literal(_) => "literal [REDACTED]".to_string(),
            SecretSource::Env(var) => format!("env {var}"),
            SecretSource::File(path) => format!("file {}", path.display()),
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
    username: String,
    password: Option<Spanned<RawSecret>>,
    oauth: Spanned<String>,
    grant: Spanned<Grant>,
    #[serde(default = "default_folder")]
    folder: String,
    ca_file: Option<PathBuf>,
    poll_interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    batch_size: Option<Spanned<usize>>,
}

fn default_folder() -> String {
    "INBOX".into()
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a string, { env = \"VAR\" } or { file = \"path\" }"
)]
enum RawSecret {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
}

/// A duration written like `60s`, `5m` or `1h 30m`.
#[derive(Clone, Copy)]
struct HumanDuration(Duration);

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
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
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
        };
        let store = StoreConfig {
            database: raw
                .store
                .database
                .unwrap_or_else(|| DEFAULT_DATABASE.into()),
            key_file: raw.store.key_file,
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
            let Some(app) = oauth.iter().find(|a| a.name == *r.oauth.get_ref()) else {
                let known: Vec<_> = oauth.iter().map(|a| a.name.as_str()).collect();
                return Err(locate.at(
                    r.oauth.span(),
                    "oauth",
                    &format!(
                        "no [[oauth]] entry is named {:?} (known: {})",
                        r.oauth.get_ref(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            let grant = *r.grant.get_ref();
            let password = r
                .password
                .map(|s| locate.secret(s, base_dir, &format!("reader \"{name}\" password")));
            if grant == Grant::Password && password.is_none() {
                return Err(locate.at(
                    r.grant.span(),
                    "password",
                    "grant = \"password\" needs a password (a string, { env = \"VAR\" } or { file = \"path\" })",
                ));
            }
            if grant != Grant::Password && password.is_some() {
                return Err(locate.at(
                    r.grant.span(),
                    "password",
                    &format!(
                        "grant = \"{}\" does not use a password; remove it",
                        grant.as_str()
                    ),
                ));
            }
            if grant == Grant::ClientCredentials && !app.is_confidential() {
                return Err(locate.at(
                    r.grant.span(),
                    "grant",
                    &format!(
                        "grant = \"client_credentials\" needs the app's own credential: \
                         set client_secret or client_certificate on [[oauth]] \"{}\"",
                        app.name
                    ),
                ));
            }
            let host = match r.host {
                Some(host) => {
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
                None => app.cloud.mail_host().to_string(),
            };
            let batch_size = match r.batch_size {
                Some(b) if *b.get_ref() == 0 || *b.get_ref() > 10_000 => {
                    return Err(locate.at(b.span(), "batch_size", "must be between 1 and 10000"));
                }
                Some(b) => b.into_inner(),
                None => 100,
            };
            readers.push(ReaderConfig {
                name,
                protocol: r.protocol,
                port: r.port.unwrap_or(match r.protocol {
                    Protocol::Imap => 993,
                }),
                host,
                username: r.username,
                password,
                oauth: r.oauth.into_inner(),
                grant,
                folder: r.folder,
                ca_file: r.ca_file.map(|p| base_dir.join(p)),
                poll_interval: r.poll_interval.map_or(daemon.poll_interval, |d| d.0),
                timeout: r.timeout.map_or(Duration::from_secs(60), |d| d.0),
                batch_size,
            });
        }

        Ok(Config {
            path: path.to_path_buf(),
            store,
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

/// Turns byte offsets into `file:line: key:` messages.
struct Locator<'a> {
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
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
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

    fn at(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        let table = self.key_at(span.start);
        let table = table.rsplit_once('.').map_or(table.as_str(), |(t, _)| t);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line_of(span.start),
            key: format!("{table}.{key}"),
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
        };
        SecretRef { source, origin }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
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
            .password
            .as_ref()
            .expect("password")
            .resolve()
            .expect("literal");
        assert_eq!(password.expose_secret(), "hunter2-literal");
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../config.example.toml");
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
            .password
            .as_ref()
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
            .password
            .as_ref()
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
        assert!(config.readers[0].grant.is_app_only());

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
}
