//! [`SecretRef`]: where a secret is and how it is read. Owns the value form
//! of `password`, `client_secret` and `client_key`: a literal string,
//! `{ env = "VAR" }`, `{ file = "path" }` (relative to the configuration
//! file) or `{ credential = "name" }` (systemd's `LoadCredential=`).

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;

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

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a string, { env = \"VAR\" }, { file = \"path\" } or { credential = \"name\" }"
)]
pub(super) enum RawSecret {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
    Credential { credential: String },
}

impl Locator<'_> {
    /// The secret named at `raw`, labelled `what` with its line, so that
    /// failing to read it later points the admin there.
    pub(super) fn secret(&self, raw: Spanned<RawSecret>, base_dir: &Path, what: &str) -> SecretRef {
        let origin = self.origin(raw.span(), what);
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
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::Config;
    use crate::config::tests::{GOOD, parse};

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
    fn debug_output_hides_literal_secrets() {
        let shown = format!("{:?}", SecretRef::literal("hunter2-literal"));
        assert!(!shown.contains("hunter2"), "{shown}");
        let config = parse(GOOD).expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
