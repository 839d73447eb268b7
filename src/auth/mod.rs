//! Auth: getting and keeping OAuth 2.0 access tokens for mail readers.
//!
//! Owns the token lifecycle: which grant to run, caching access tokens
//! until shortly before they expire, refreshing (and persisting every
//! rotated refresh token before it is used), falling back from a dead
//! refresh token to the password grant once, and making readers that share
//! an account share one request. Tokens are opaque: never decoded.

mod entra;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth2::{
    ClientSecret, RefreshToken, ResourceOwnerPassword, ResourceOwnerUsername, Scope, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::config::{Grant, OAuthApp, SecretError, SecretRef};
use crate::store::{Store, StoreError};
pub use entra::TransportError;
use entra::{EntraClient, EntraErrorResponse, TokenError, TokenHttp};

/// Delegated scope for IMAP on Exchange Online.
pub const IMAP_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
/// Asks for a refresh token alongside the access token.
const OFFLINE_ACCESS: &str = "offline_access";

/// Why no token could be had. The texts are what lands in `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The identity platform answered with an OAuth error.
    #[error("authentication failed: {}", describe_rejection(.0))]
    Rejected(EntraErrorResponse),
    #[error("identity endpoint {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("identity endpoint {url} answered HTTP {status}{}", retry_hint(.retry_after))]
    Unavailable {
        url: String,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("identity endpoint {url} sent an unreadable answer: {detail}")]
    Malformed { url: String, detail: String },
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("no [[oauth]] entry named {0:?}")]
    UnknownApp(String),
    #[error("oauth {app:?}: {detail}")]
    BadApp { app: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The OAuth `error` field, when the identity platform sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            AuthError::Rejected(e) => Some(&e.error),
            _ => None,
        }
    }

    pub fn aadsts(&self) -> Option<u64> {
        match self {
            AuthError::Rejected(e) => e.aadsts(),
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

fn describe_rejection(e: &EntraErrorResponse) -> String {
    let summary = e.summary();
    let summary = if summary.is_empty() {
        e.error.clone()
    } else {
        summary
    };
    match e.aadsts() {
        Some(code) => format!("AADSTS{code} {summary} ({})", e.error),
        None => format!("{summary} ({})", e.error),
    }
}

/// What a reader asks the token store for.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    pub oauth: &'a str,
    pub account: &'a str,
    pub grant: Grant,
    pub password: Option<&'a SecretRef>,
    pub scope: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AccountKey {
    oauth: String,
    account: String,
}

/// What is known about one account of one app. Guarded by an async mutex
/// held across the HTTP request: that is the single flight.
#[derive(Default)]
struct Account {
    /// `None` until read from the database once.
    refresh: Option<Option<SecretString>>,
    access: HashMap<String, CachedToken>,
}

struct CachedToken {
    token: SecretString,
    renew_at: Instant,
}

/// Hands out access tokens; shared by all readers of a daemon.
pub struct TokenStore {
    store: Store,
    http: TokenHttp,
    apps: HashMap<String, OAuthApp>,
    accounts: Mutex<HashMap<AccountKey, Arc<tokio::sync::Mutex<Account>>>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    pub fn new(store: Store, apps: &[OAuthApp]) -> Result<TokenStore, AuthError> {
        let http = TokenHttp::new(Duration::from_secs(30)).map_err(|detail| AuthError::BadApp {
            app: "(all)".into(),
            detail,
        })?;
        Ok(TokenStore {
            store,
            http,
            apps: apps.iter().map(|a| (a.name.clone(), a.clone())).collect(),
            accounts: Mutex::new(HashMap::new()),
        })
    }

    fn account(&self, req: &TokenRequest<'_>) -> Arc<tokio::sync::Mutex<Account>> {
        let key = AccountKey {
            oauth: req.oauth.to_string(),
            account: req.account.to_string(),
        };
        // A poisoned map only means another thread panicked mid-insert; the
        // map itself is still consistent.
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.entry(key).or_default().clone()
    }

    /// A valid access token for `req.scope`, from cache, refresh or grant.
    pub async fn access_token(&self, req: &TokenRequest<'_>) -> Result<SecretString, AuthError> {
        let app = self
            .apps
            .get(req.oauth)
            .ok_or_else(|| AuthError::UnknownApp(req.oauth.to_string()))?;
        let account = self.account(req);
        let mut account = account.lock().await;
        if let Some(cached) = account.access.get(req.scope)
            && Instant::now() < cached.renew_at
        {
            return Ok(cached.token.clone());
        }

        let client = self.client(app)?;
        if account.refresh.is_none() {
            account.refresh = Some(
                self.store
                    .load_refresh_token(req.oauth, req.account)
                    .await?,
            );
        }
        if let Some(Some(refresh)) = &account.refresh {
            let refresh = RefreshToken::new(refresh.expose_secret().to_string());
            let result = client
                .exchange_refresh_token(&refresh)
                // Entra needs the scope again on refresh (AADSTS900144).
                .add_scopes(scopes(req.scope))
                .request_async(&self.http)
                .await;
            match result {
                Ok(response) => return self.accept(req, &mut account, &response).await,
                Err(TokenError::ServerResponse(e)) if e.error == "invalid_grant" => {
                    tracing::warn!(
                        oauth = req.oauth,
                        account = req.account,
                        code = e.aadsts(),
                        "refresh token rejected; signing in again"
                    );
                    account.refresh = Some(None);
                    self.store
                        .forget_refresh_token(req.oauth, req.account)
                        .await?;
                    if req.grant != Grant::Password {
                        return Err(AuthError::Rejected(e));
                    }
                }
                Err(e) => return Err(token_error(app, e)),
            }
        }

        match req.grant {
            Grant::Password => {
                let password = req.password.ok_or_else(|| AuthError::BadApp {
                    app: req.oauth.to_string(),
                    detail: format!("reader account {} has no password configured", req.account),
                })?;
                let password = password.resolve()?;
                let response = client
                    .exchange_password(
                        &ResourceOwnerUsername::new(req.account.to_string()),
                        &ResourceOwnerPassword::new(password.expose_secret().to_string()),
                    )
                    .add_scopes(scopes(req.scope))
                    .request_async(&self.http)
                    .await
                    .map_err(|e| token_error(app, e))?;
                tracing::info!(
                    oauth = req.oauth,
                    account = req.account,
                    "signed in with the password grant"
                );
                self.accept(req, &mut account, &response).await
            }
        }
    }

    /// Forgets the cached access token for this scope: the mail server
    /// refused it, so the next request must not hand it out again.
    pub async fn invalidate(&self, req: &TokenRequest<'_>) {
        let account = self.account(req);
        account.lock().await.access.remove(req.scope);
    }

    fn client(&self, app: &OAuthApp) -> Result<EntraClient, AuthError> {
        let secret = match &app.client_secret {
            Some(s) => Some(ClientSecret::new(s.resolve()?.expose_secret().to_string())),
            None => None,
        };
        entra::client(app, secret).map_err(|detail| AuthError::BadApp {
            app: app.name.clone(),
            detail,
        })
    }

    /// Keeps what a successful token response brought. A rotated refresh
    /// token is in the database before the access token is handed out, so
    /// a crash right after cannot leave us with only the superseded one.
    async fn accept(
        &self,
        req: &TokenRequest<'_>,
        account: &mut Account,
        response: &oauth2::basic::BasicTokenResponse,
    ) -> Result<SecretString, AuthError> {
        if let Some(refresh) = response.refresh_token() {
            let refresh = SecretString::from(refresh.secret().to_string());
            self.store
                .save_refresh_token(req.oauth, req.account, &refresh)
                .await?;
            account.refresh = Some(Some(refresh));
        }
        let lifetime = response.expires_in().unwrap_or(Duration::from_secs(3600));
        let token = SecretString::from(response.access_token().secret().to_string());
        account.access.insert(
            req.scope.to_string(),
            CachedToken {
                token: token.clone(),
                renew_at: Instant::now() + lifetime.saturating_sub(renewal_margin(lifetime)),
            },
        );
        tracing::debug!(
            oauth = req.oauth,
            account = req.account,
            expires_in = lifetime.as_secs(),
            "access token obtained"
        );
        Ok(token)
    }
}

/// How long before expiry a token is renewed: a tenth of its lifetime, at
/// most five minutes, so a token is never used in its last moments (clock
/// skew, slow logins) and short test lifetimes still get cached.
fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

fn scopes(scope: &str) -> Vec<Scope> {
    let mut list: Vec<Scope> = scope
        .split_whitespace()
        .map(|s| Scope::new(s.to_string()))
        .collect();
    if !scope.ends_with("/.default") && !scope.split_whitespace().any(|s| s == OFFLINE_ACCESS) {
        list.push(Scope::new(OFFLINE_ACCESS.to_string()));
    }
    list
}

fn token_error(app: &OAuthApp, e: TokenError) -> AuthError {
    let url = app.token_url();
    match e {
        TokenError::ServerResponse(e) => AuthError::Rejected(e),
        TokenError::Request(TransportError::Status {
            status,
            retry_after,
        }) => AuthError::Unavailable {
            url,
            status,
            retry_after,
        },
        TokenError::Request(other) => AuthError::Unreachable {
            url,
            reason: other.to_string(),
        },
        TokenError::Parse(e, _body) => AuthError::Malformed {
            url,
            detail: e.to_string(),
        },
        TokenError::Other(detail) => AuthError::Malformed { url, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_scales_with_lifetime() {
        assert_eq!(
            renewal_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn offline_access_is_added_for_delegated_scopes() {
        let s: Vec<String> = scopes(IMAP_SCOPE).iter().map(|s| s.to_string()).collect();
        assert_eq!(s, [IMAP_SCOPE, OFFLINE_ACCESS]);
        let s = scopes("https://outlook.office365.com/.default");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn rejection_text_carries_the_aadsts_code() {
        let e = AuthError::Rejected(EntraErrorResponse {
            error: "invalid_grant".into(),
            error_description: Some(
                "AADSTS50126: Error validating credentials due to invalid username or password.\r\nTrace ID: x"
                    .into(),
            ),
            error_codes: vec![50126],
        });
        assert_eq!(
            e.to_string(),
            "authentication failed: AADSTS50126 Error validating credentials due to invalid username or password. (invalid_grant)"
        );
    }
}
