//! `[[oauth]]`: one Entra ID app registration per entry (`name`, `cloud`,
//! `tenant`, `client_id`, `client_secret` or `client_certificate` with
//! `client_key`, `authority`, `redirect_port`), and the kinds of `grant` a
//! reader may ask of one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::cloud::Cloud;
use super::locate::Locator;
use super::secret::{RawSecret, SecretRef};
use super::value::is_loopback;

const DEFAULT_REDIRECT_PORT: u16 = 8400;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth {
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

/// The `[[oauth]]` entries, in file order; the first invalid one is the error.
pub(super) fn parse(
    locate: &Locator<'_>,
    raw: Vec<RawOAuth>,
    base_dir: &Path,
) -> Result<Vec<OAuthApp>, ConfigError> {
    let mut oauth = Vec::new();
    let mut app_names = HashSet::new();
    for app in raw {
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
    Ok(oauth)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{GOOD, error_text, parse};

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
}
