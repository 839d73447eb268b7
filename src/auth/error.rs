//! Why no token could be had: [`AuthError`], the texts that land in
//! `last_error`, and how each failure sorts into a reader state and a
//! failure class; also the mapping of a failed token-endpoint request
//! onto it.

use std::time::Duration;

use super::entra::{self, EntraErrorResponse, TokenError, TransportError};
use crate::config::{OAuthApp, SecretError};
use crate::outcome::{FailureClass, ReaderState};
use crate::store::StoreError;

/// Why no token could be had. The texts are what lands in `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The identity platform answered with an OAuth error.
    #[error("authentication failed: {}", .0.describe())]
    Rejected(EntraErrorResponse),
    #[error("identity endpoint {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// Reached, but no answer within the reader's `timeout`: the endpoint
    /// is slow or stalled, not unreachable.
    #[error(
        "identity endpoint {url} did not answer within {}",
        humantime::format_duration(*.after)
    )]
    Slow { url: String, after: Duration },
    #[error(
        "identity endpoint {url} answered HTTP {status}{}{}",
        retry_hint(.retry_after),
        .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Unavailable {
        url: String,
        status: u16,
        retry_after: Option<Duration>,
        detail: Option<String>,
    },
    #[error("identity endpoint {url} sent an unreadable answer: {detail}")]
    Malformed { url: String, detail: String },
    /// An interactive grant without a stored refresh token: nobody has
    /// signed in yet, or the last sign-in expired or was revoked.
    #[error("no sign-in on record for {account} with app {oauth:?}")]
    NotAuthorized { oauth: String, account: String },
    /// An interactive sign-in did not complete.
    #[error("sign-in failed: {0}")]
    SignIn(String),
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("no [[oauth]] entry named {0:?}")]
    UnknownApp(String),
    #[error("oauth {app:?}: {detail}")]
    BadApp { app: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Entra codes after which only a person can help: a new sign-in (expired,
/// revoked or superseded grants; MFA or conditional access now required;
/// consent missing or withdrawn).
const NEEDS_AUTHORIZATION: &[u64] = &[
    700082, 70008, 50173, 70043, 70000, 50076, 50079, 50078, 65001, 53003, 50132, 50133, 70044,
    54005,
];
/// Entra codes that mean the app registration or the config is wrong:
/// secrets, certificates, client ids, tenants, public/confidential
/// mismatches, wrong credentials in the config.
const MISCONFIGURED: &[u64] = &[
    7000215, 7000222, 700016, 7000218, 700025, 90002, 50194, 700027, 700024, 700023, 700021,
    1002012, 900144, 50011, 50126, 50034, 50055, 50057, 500011, 7000112, 90014,
];

impl AuthError {
    pub fn aadsts(&self) -> Option<u64> {
        match self {
            AuthError::Rejected(e) => e.aadsts(),
            _ => None,
        }
    }

    /// Which state this failure leaves a reader in. The AADSTS code decides
    /// where it is known; otherwise the OAuth `error` field does.
    pub fn state(&self) -> ReaderState {
        match self {
            AuthError::Rejected(e) => {
                if let Some(code) = e.aadsts() {
                    if NEEDS_AUTHORIZATION.contains(&code) {
                        return ReaderState::NeedsAuthorization;
                    }
                    if MISCONFIGURED.contains(&code) {
                        return ReaderState::Misconfigured;
                    }
                }
                match e.error.as_str() {
                    "invalid_grant"
                    | "interaction_required"
                    | "consent_required"
                    | "login_required"
                    | "access_denied"
                    | "authorization_declined"
                    | "expired_token" => ReaderState::NeedsAuthorization,
                    "temporarily_unavailable" | "server_error" => ReaderState::Retrying,
                    _ => ReaderState::Misconfigured,
                }
            }
            AuthError::NotAuthorized { .. } | AuthError::SignIn(_) => {
                ReaderState::NeedsAuthorization
            }
            AuthError::Secret(_) | AuthError::UnknownApp(_) | AuthError::BadApp { .. } => {
                ReaderState::Misconfigured
            }
            AuthError::Unreachable { .. }
            | AuthError::Slow { .. }
            | AuthError::Unavailable { .. }
            | AuthError::Malformed { .. }
            | AuthError::Store(_) => ReaderState::Retrying,
        }
    }

    pub fn class(&self) -> FailureClass {
        match self {
            AuthError::Rejected(_) if self.state() == ReaderState::Misconfigured => {
                FailureClass::Config
            }
            AuthError::Rejected(_) | AuthError::NotAuthorized { .. } | AuthError::SignIn(_) => {
                FailureClass::Auth
            }
            AuthError::Secret(_) | AuthError::UnknownApp(_) | AuthError::BadApp { .. } => {
                FailureClass::Config
            }
            AuthError::Unreachable { .. }
            | AuthError::Slow { .. }
            | AuthError::Unavailable { .. } => FailureClass::Connection,
            AuthError::Malformed { .. } => FailureClass::Protocol,
            AuthError::Store(_) => FailureClass::Store,
        }
    }

    /// Consent to the scope asked for is missing or was declined
    /// (AADSTS65001, 65004); see [`is_consent_missing`].
    pub fn is_consent_missing(&self) -> bool {
        match self {
            AuthError::Rejected(e) => is_consent_missing(e),
            _ => false,
        }
    }

    /// How long the identity platform asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {}s)", d.as_secs()),
        None => String::new(),
    }
}

pub(super) fn token_error(app: &OAuthApp, e: TokenError) -> AuthError {
    request_error(app, e, AuthError::Rejected)
}

/// Sorts a failed token-endpoint request: an OAuth error body goes to
/// `server`, everything else says what happened on the wire.
pub(super) fn request_error<E>(
    app: &OAuthApp,
    e: oauth2::RequestTokenError<TransportError, E>,
    server: impl FnOnce(E) -> AuthError,
) -> AuthError
where
    E: oauth2::ErrorResponse + 'static,
{
    use oauth2::RequestTokenError as R;
    let url = app.token_url();
    match e {
        R::ServerResponse(e) => server(e),
        R::Request(TransportError::Status {
            status,
            retry_after,
            detail,
        }) => AuthError::Unavailable {
            url,
            status,
            retry_after,
            detail,
        },
        R::Request(TransportError::Timeout(after)) => AuthError::Slow { url, after },
        R::Request(other) => AuthError::Unreachable {
            url,
            reason: other.to_string(),
        },
        R::Parse(e, _body) => AuthError::Malformed {
            url,
            detail: e.to_string(),
        },
        R::Other(detail) => AuthError::Malformed { url, detail },
    }
}

/// AADSTS65001 (consent required) and 65004 (consent declined) concern
/// the scope asked for, not the refresh token: it still serves the others.
pub(super) fn is_consent_missing(e: &entra::EntraErrorResponse) -> bool {
    matches!(e.aadsts(), Some(65001 | 65004))
}
