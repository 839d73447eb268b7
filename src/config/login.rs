//! How a `[[reader]]` logs in: the keys `auth` ("xoauth2" or "plain"),
//! `password`, `oauth` (naming an `[[oauth]]` entry) and `grant`, checked
//! against each other, against the app they name, and against the
//! protocol (Microsoft Graph takes tokens only).

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::oauth::{Grant, OAuthApp};
use super::reader::{Protocol, RawReader};
use super::secret::{RawSecret, SecretRef};

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

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAuth {
    Xoauth2,
    Plain,
}

/// The reader's login and, for XOAUTH2, the app its tokens come from.
/// `password` is taken out of `r` by the caller, which keeps the rest.
pub(super) fn parse<'a>(
    locate: &Locator<'_>,
    r: &RawReader,
    password: Option<Spanned<RawSecret>>,
    base_dir: &Path,
    oauth: &'a [OAuthApp],
) -> Result<(Login, Option<&'a OAuthApp>), ConfigError> {
    let name = r.name.get_ref();
    let password = password.map(|s| {
        (
            s.span(),
            locate.secret(s, base_dir, &format!("reader \"{name}\" password")),
        )
    });
    let auth = r.auth.as_ref().map_or(RawAuth::Xoauth2, |a| *a.get_ref());
    let (login, app) = match auth {
        RawAuth::Plain => {
            let at = r.auth.as_ref().map_or(r.name.span(), |a| a.span());
            if r.protocol == Protocol::Graph {
                return Err(locate.at(
                    at,
                    "auth",
                    "Microsoft Graph takes OAuth tokens only, never a password login: \
                     remove auth and set oauth and grant (any grant works, \
                     grant = \"password\" included)",
                ));
            }
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
    Ok((login, app))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{GOOD, error_text, parse};

    #[test]
    fn unknown_oauth_reference_is_located() {
        let err = error_text(&GOOD.replace("oauth = \"contoso\"", "oauth = \"fabrikam\""));
        assert!(err.contains(":20: reader.oauth: "), "{err}");
        assert!(err.contains("known: contoso"), "{err}");
    }

    #[test]
    fn password_grant_requires_a_password() {
        let err = error_text(&GOOD.replace("password = \"hunter2-literal\"\n", ""));
        assert!(err.contains("reader.password"), "{err}");
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
