//! Auth: getting and keeping OAuth 2.0 access tokens for mail readers.
//!
//! Owns the token lifecycle: running the reader's grant (password, client
//! credentials, or the refresh token an interactive sign-in left), caching
//! access tokens per scope until shortly before they expire (a scope names
//! one resource, Exchange Online or Microsoft Graph, since Entra refuses a
//! request for two; so IMAP, SMTP and Graph tokens of one account live side
//! by side, and the account's one refresh token serves them all), refreshing
//! (persisting every rotated refresh token before it is used, and never
//! replacing or deleting one another process stored since), making
//! readers that share an account share one request, honouring Retry-After,
//! and sorting failures into "try later", "sign in again" and "fix the
//! config". Tokens are opaque: never decoded, except the id_token of an
//! interactive sign-in, which only names the account.
//!
//! The failures and their sorting are in `error`; this file is the store.

mod authorize;
mod credential;
mod entra;
mod error;
pub mod sasl;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use oauth2::{RefreshToken, ResourceOwnerPassword, ResourceOwnerUsername, Scope, TokenResponse};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::config::Service;
use crate::config::{Grant, OAuthApp, SecretRef};
use crate::store::{Replaced, Store, StoredToken, TokenVersion};
pub use authorize::{Authorized, CodeFlowOptions, Interaction};
use credential::ClientAuth;
pub use entra::TransportError;
use entra::{EntraClient, EntraErrorResponse, EntraTokenResponse, TokenError, TokenHttp};
pub use error::AuthError;
use error::{is_consent_missing, request_error, token_error};

/// Asks for a refresh token alongside the access token.
const OFFLINE_ACCESS: &str = "offline_access";

/// What a reader asks the token store for.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    pub oauth: &'a str,
    /// The mailbox; for a delegated grant also the account that signs in.
    pub account: &'a str,
    pub grant: Grant,
    pub password: Option<&'a SecretRef>,
    pub service: Service,
    /// How long the identity endpoint may take to answer: the reader's
    /// `timeout`, as for every other network step.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AccountKey {
    oauth: String,
    account: String,
}

impl AccountKey {
    /// App-only tokens belong to the app, whichever mailbox they open, so
    /// all readers of one app share them (and their single flight).
    fn of(req: &TokenRequest<'_>) -> AccountKey {
        AccountKey {
            oauth: req.oauth.to_string(),
            account: if req.grant.is_app_only() {
                String::new()
            } else {
                req.account.to_string()
            },
        }
    }
}

/// What is known about one account of one app. Guarded by an async mutex
/// held across the HTTP request: that is the single flight.
#[derive(Default)]
struct Account {
    /// `None` until read from the database once.
    refresh: Option<Option<StoredToken>>,
    /// The refresh token this process last saw in the store or sent
    /// (`Some(None)`: it found none); `None` until it looked. A parked
    /// reader waits for the store to hold another one.
    seen: Option<Option<TokenVersion>>,
    access: HashMap<String, CachedToken>,
    /// Why the last refresh token died, so that every reader of the
    /// account reports the real cause, not just "no sign-in".
    dead_refresh: Option<EntraErrorResponse>,
    /// The identity platform asked us (Retry-After) not to call before then.
    not_before: Option<(Instant, u16, Option<String>)>,
}

struct CachedToken {
    token: SecretString,
    renew_at: Instant,
}

/// How often one token request may find a newer sign-in in the store and
/// go again with it, after the identity platform refused the token it had.
const NEWER_SIGN_IN_RETRIES: usize = 1;

/// Hands out access tokens; shared by all readers of a daemon. A clone is
/// a handle on the same caches (the Graph client keeps one for the length
/// of a poll, as its token source).
#[derive(Clone)]
pub struct TokenStore {
    store: Store,
    http: TokenHttp,
    /// Replaced whole on a config reload; a poll in flight keeps the app
    /// it started with.
    apps: Arc<RwLock<HashMap<String, Arc<OAuthApp>>>>,
    accounts: Arc<Mutex<HashMap<AccountKey, Arc<tokio::sync::Mutex<Account>>>>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("apps", &self.apps().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn app_map(apps: &[OAuthApp]) -> HashMap<String, Arc<OAuthApp>> {
    apps.iter()
        .map(|a| (a.name.clone(), Arc::new(a.clone())))
        .collect()
}

/// Adds the app's credential (if it uses an assertion) to a token request.
/// The oauth2 request types share no trait for this.
macro_rules! with_credential {
    ($request:expr, $credential:expr) => {{
        let mut request = $request;
        for (name, value) in $credential.params() {
            request = request.add_extra_param(name, value);
        }
        request
    }};
}
use with_credential;

impl TokenStore {
    pub fn new(store: Store, apps: &[OAuthApp]) -> Result<TokenStore, AuthError> {
        let http = TokenHttp::new(Duration::from_secs(30)).map_err(|detail| AuthError::BadApp {
            app: "(all)".into(),
            detail,
        })?;
        Ok(TokenStore {
            store,
            http,
            apps: Arc::new(RwLock::new(app_map(apps))),
            accounts: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn apps(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<OAuthApp>>> {
        // A map replaced whole is consistent even if a writer panicked.
        self.apps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn app(&self, name: &str) -> Result<Arc<OAuthApp>, AuthError> {
        self.apps()
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::UnknownApp(name.to_string()))
    }

    /// Takes the `[[oauth]]` apps of a reloaded configuration. Cached tokens
    /// stay: the readers of a changed app are restarted, and reload theirs.
    pub fn set_apps(&self, apps: &[OAuthApp]) {
        *self.apps.write().unwrap_or_else(|e| e.into_inner()) = app_map(apps);
    }

    fn account(&self, key: AccountKey) -> Arc<tokio::sync::Mutex<Account>> {
        // A poisoned map only means another thread panicked mid-insert; the
        // map itself is still consistent.
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.entry(key).or_default().clone()
    }

    /// The scope a request needs, from the app's cloud and the grant.
    pub fn scope(&self, req: &TokenRequest<'_>) -> Result<String, AuthError> {
        Ok(scope_for(&*self.app(req.oauth)?, req))
    }

    /// A valid access token for the request, from cache, refresh or grant.
    pub async fn access_token(&self, req: &TokenRequest<'_>) -> Result<SecretString, AuthError> {
        Ok(self.access_token_from(req).await?.0)
    }

    /// [`TokenStore::access_token`], saying whether the identity platform
    /// was asked (true) or the cache answered.
    pub async fn access_token_from(
        &self,
        req: &TokenRequest<'_>,
    ) -> Result<(SecretString, bool), AuthError> {
        let app = self.app(req.oauth)?;
        let app = &*app;
        let scope = scope_for(app, req);
        let account = self.account(AccountKey::of(req));
        let mut account = account.lock().await;
        if let Some(cached) = account.access.get(&scope)
            && Instant::now() < cached.renew_at
        {
            return Ok((cached.token.clone(), false));
        }
        if let Some((until, status, detail)) = &account.not_before {
            let now = Instant::now();
            if now < *until {
                return Err(AuthError::Unavailable {
                    url: app.token_url(),
                    status: *status,
                    retry_after: Some(*until - now),
                    detail: detail.clone(),
                });
            }
            account.not_before = None;
        }
        let result = self.obtain(app, req, &scope, &mut account).await;
        if let Err(AuthError::Unavailable {
            status,
            retry_after: Some(wait),
            detail,
            ..
        }) = &result
        {
            account.not_before = Some((Instant::now() + *wait, *status, detail.clone()));
        }
        result.map(|token| (token, true))
    }

    async fn obtain(
        &self,
        app: &OAuthApp,
        req: &TokenRequest<'_>,
        scope: &str,
        account: &mut Account,
    ) -> Result<SecretString, AuthError> {
        let client = self.client(app)?;
        let http = self.http.within(req.timeout);
        if req.grant.is_app_only() {
            let credential = ClientAuth::for_request(app)?;
            let response = with_credential!(client.exchange_client_credentials(), credential)
                .add_scopes(scopes(scope))
                .request_async(&http)
                .await
                .map_err(|e| token_error(app, e))?;
            return self.accept(req, scope, account, &response, None).await;
        }

        let mut newer_sign_ins = 0;
        loop {
            if account.refresh.is_none() {
                let stored = self
                    .store
                    .load_refresh_token(req.oauth, req.account)
                    .await?;
                account.seen = Some(stored.as_ref().map(|s| s.version.clone()));
                account.refresh = Some(stored);
            }
            let Some(Some(stored)) = &account.refresh else {
                break;
            };
            let used = stored.version.clone();
            account.seen = Some(Some(used.clone()));
            let refresh = RefreshToken::new(stored.token.expose_secret().to_string());
            let credential = ClientAuth::for_request(app)?;
            let result = with_credential!(client.exchange_refresh_token(&refresh), credential)
                // Entra needs the scope again on refresh (AADSTS900144).
                .add_scopes(scopes(scope))
                .request_async(&http)
                .await;
            match result {
                Ok(response) => {
                    if response.refresh_token().is_none() {
                        self.store
                            .touch_refresh_token(req.oauth, req.account)
                            .await?;
                    }
                    return self
                        .accept(req, scope, account, &response, Some(&used))
                        .await;
                }
                Err(TokenError::ServerResponse(e))
                    if e.error == "invalid_grant" && is_consent_missing(&e) =>
                {
                    // The sign-in is fine; this one resource (SMTP.Send for
                    // acknowledgements, say) lacks consent. Forgetting the
                    // refresh token would stop every other service of the
                    // account until someone signs in again.
                    tracing::warn!(
                        oauth = req.oauth,
                        account = req.account,
                        code = e.aadsts(),
                        "no consent for this scope; the refresh token is kept"
                    );
                    return Err(AuthError::Rejected(e));
                }
                Err(TokenError::ServerResponse(e)) if e.error == "invalid_grant" => {
                    tracing::warn!(
                        oauth = req.oauth,
                        account = req.account,
                        code = e.aadsts(),
                        "refresh token rejected"
                    );
                    // Only the token that was refused goes: a sign-in made
                    // since (`authorize` in another process) is kept, and
                    // used at once.
                    let newer = if self
                        .store
                        .forget_refresh_token(req.oauth, req.account, &used)
                        .await?
                    {
                        None
                    } else {
                        self.store
                            .load_refresh_token(req.oauth, req.account)
                            .await?
                    };
                    match newer {
                        Some(newer) => {
                            account.refresh = Some(Some(newer));
                            if newer_sign_ins < NEWER_SIGN_IN_RETRIES {
                                newer_sign_ins += 1;
                                tracing::info!(
                                    oauth = req.oauth,
                                    account = req.account,
                                    "a newer sign-in is in the database; using it"
                                );
                                continue;
                            }
                            return Err(AuthError::Rejected(e));
                        }
                        None => {
                            account.refresh = Some(None);
                            if req.grant != Grant::Password {
                                account.dead_refresh = Some(e.clone());
                                return Err(AuthError::Rejected(e));
                            }
                            break;
                        }
                    }
                }
                Err(e) => return Err(token_error(app, e)),
            }
        }

        if req.grant == Grant::Password {
            let password = req.password.ok_or_else(|| AuthError::BadApp {
                app: req.oauth.to_string(),
                detail: format!("reader account {} has no password configured", req.account),
            })?;
            let password = password.resolve()?;
            let credential = ClientAuth::for_request(app)?;
            let username = ResourceOwnerUsername::new(req.account.to_string());
            let password = ResourceOwnerPassword::new(password.expose_secret().to_string());
            let response =
                with_credential!(client.exchange_password(&username, &password), credential)
                    .add_scopes(scopes(scope))
                    .request_async(&http)
                    .await
                    .map_err(|e| token_error(app, e))?;
            tracing::info!(
                oauth = req.oauth,
                account = req.account,
                "signed in with the password grant"
            );
            // No refresh token was used: the row should hold none.
            return self.accept(req, scope, account, &response, None).await;
        }
        // An interactive grant: only `mail2ticket authorize` can help.
        if let Some(e) = &account.dead_refresh {
            return Err(AuthError::Rejected(e.clone()));
        }
        Err(AuthError::NotAuthorized {
            oauth: req.oauth.to_string(),
            account: req.account.to_string(),
        })
    }

    /// Forgets the cached access token for this request: the mail server
    /// refused it, so the next request must not hand it out again.
    pub async fn invalidate(&self, req: &TokenRequest<'_>) {
        let Ok(scope) = self.scope(req) else { return };
        let account = self.account(AccountKey::of(req));
        account.lock().await.access.remove(&scope);
    }

    /// [`TokenStore::invalidate`], but only while `refused` is still the
    /// cached token: requests in flight together may each report the same
    /// refused token, and must not throw away the new one another of them
    /// already obtained.
    pub async fn invalidate_if(&self, req: &TokenRequest<'_>, refused: &SecretString) {
        let Ok(scope) = self.scope(req) else { return };
        let account = self.account(AccountKey::of(req));
        let mut account = account.lock().await;
        if account
            .access
            .get(&scope)
            .is_some_and(|cached| cached.token.expose_secret() == refused.expose_secret())
        {
            account.access.remove(&scope);
        }
    }

    /// Forgets everything cached for the request's account, so the next
    /// request reads the database afresh: a sign-in elsewhere (`authorize`
    /// in another process) may have stored a new refresh token.
    pub async fn reload(&self, req: &TokenRequest<'_>) {
        let account = self.account(AccountKey::of(req));
        *account.lock().await = Account::default();
    }

    /// The refresh token a reader parked for a sign-in waits to see
    /// replaced: the one this process last saw for the account (so that a
    /// sign-in stored between the failure and the parking counts), else
    /// the one stored now. `None` for app-only grants, which have none.
    pub async fn sign_in_baseline(
        &self,
        req: &TokenRequest<'_>,
    ) -> Result<Option<TokenVersion>, AuthError> {
        if req.grant.is_app_only() {
            return Ok(None);
        }
        let account = self.account(AccountKey::of(req));
        if let Some(seen) = account.lock().await.seen.clone() {
            return Ok(seen);
        }
        Ok(self
            .store
            .refresh_token_version(req.oauth, req.account)
            .await?)
    }

    /// Whether the store holds a refresh token other than `baseline`: a
    /// sign-in made by another process, whose release of the parked
    /// reader may have come before the reader parked. A local read.
    pub async fn signed_in_since(
        &self,
        req: &TokenRequest<'_>,
        baseline: Option<&TokenVersion>,
    ) -> Result<bool, AuthError> {
        if req.grant.is_app_only() {
            return Ok(false);
        }
        let stored = self
            .store
            .refresh_token_version(req.oauth, req.account)
            .await?;
        Ok(stored.is_some() && stored.as_ref() != baseline)
    }

    fn client(&self, app: &OAuthApp) -> Result<EntraClient, AuthError> {
        let secret = match &app.client_secret {
            Some(s) => Some(oauth2::ClientSecret::new(
                s.resolve()?.expose_secret().to_string(),
            )),
            None => None,
        };
        entra::client(app, secret).map_err(|detail| AuthError::BadApp {
            app: app.name.clone(),
            detail,
        })
    }

    /// Keeps what a successful token response brought. A rotated refresh
    /// token is in the database before the access token is handed out, so
    /// a crash right after cannot leave us with only the superseded one;
    /// it replaces only the token `used` (see
    /// [`Store::replace_refresh_token`]).
    async fn accept(
        &self,
        req: &TokenRequest<'_>,
        scope: &str,
        account: &mut Account,
        response: &EntraTokenResponse,
        used: Option<&TokenVersion>,
    ) -> Result<SecretString, AuthError> {
        if let Some(refresh) = response.refresh_token()
            && !req.grant.is_app_only()
        {
            let refresh = SecretString::from(refresh.secret().to_string());
            match self
                .store
                .replace_refresh_token(req.oauth, req.account, used, &refresh)
                .await?
            {
                Replaced::Stored(version) => {
                    account.seen = Some(Some(version.clone()));
                    account.refresh = Some(Some(StoredToken {
                        token: refresh,
                        version,
                    }));
                }
                Replaced::Superseded => {
                    // Another process signed in meanwhile: its token wins,
                    // and is read at the next refresh.
                    tracing::info!(
                        oauth = req.oauth,
                        account = req.account,
                        "a newer sign-in is in the database; it is kept, not this rotated token"
                    );
                    account.refresh = None;
                }
            }
            account.dead_refresh = None;
        }
        let lifetime = response.expires_in().unwrap_or(Duration::from_secs(3600));
        let token = SecretString::from(response.access_token().secret().to_string());
        account.access.insert(
            scope.to_string(),
            CachedToken {
                token: token.clone(),
                renew_at: Instant::now() + lifetime.saturating_sub(renewal_margin(lifetime)),
            },
        );
        tracing::debug!(
            oauth = req.oauth,
            account = req.account,
            scope,
            expires_in = lifetime.as_secs(),
            "access token obtained"
        );
        Ok(token)
    }
}

fn scope_for(app: &OAuthApp, req: &TokenRequest<'_>) -> String {
    app.cloud.scope(req.service, req.grant.is_app_only())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cloud;
    use crate::outcome::{FailureClass, ReaderState};

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
        let imap = Cloud::Global.scope(Service::Imap, false);
        let s: Vec<String> = scopes(&imap).iter().map(|s| s.to_string()).collect();
        assert_eq!(s, [imap.as_str(), OFFLINE_ACCESS]);
        let s = scopes("https://outlook.office365.com/.default");
        assert_eq!(s.len(), 1);
    }

    /// Graph's scopes go out as the issue names them: the permissions,
    /// `offline_access` added here (and only here), none for `.default`.
    #[test]
    fn graph_scopes_as_requested() {
        let requested = |service, app_only| -> Vec<String> {
            scopes(&Cloud::Global.scope(service, app_only))
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        assert_eq!(
            requested(Service::Graph, false),
            ["https://graph.microsoft.com/Mail.ReadWrite", OFFLINE_ACCESS]
        );
        assert_eq!(
            requested(Service::GraphWithSend, false),
            [
                "https://graph.microsoft.com/Mail.ReadWrite",
                "https://graph.microsoft.com/Mail.Send",
                OFFLINE_ACCESS
            ]
        );
        assert_eq!(
            requested(Service::GraphWithSend, true),
            ["https://graph.microsoft.com/.default"]
        );
        assert_eq!(
            scopes(&Cloud::China.scope(Service::Graph, true))[0].to_string(),
            "https://microsoftgraph.chinacloudapi.cn/.default"
        );
    }

    fn rejected(error: &str, code: Option<u64>) -> AuthError {
        AuthError::Rejected(EntraErrorResponse {
            error: error.into(),
            error_description: code.map(|c| format!("AADSTS{c}: text")),
            error_codes: code.into_iter().collect(),
        })
    }

    #[test]
    fn failures_are_sorted_into_states() {
        use ReaderState::*;
        let cases = [
            (rejected("invalid_grant", Some(700082)), NeedsAuthorization),
            (rejected("invalid_grant", Some(50076)), NeedsAuthorization),
            (rejected("invalid_grant", Some(65001)), NeedsAuthorization),
            (rejected("invalid_grant", Some(53003)), NeedsAuthorization),
            (rejected("invalid_grant", Some(50126)), Misconfigured),
            (rejected("invalid_client", Some(7000215)), Misconfigured),
            (rejected("unauthorized_client", Some(700016)), Misconfigured),
            (rejected("invalid_request", Some(90002)), Misconfigured),
            (rejected("invalid_grant", None), NeedsAuthorization),
            (
                rejected("interaction_required", Some(123)),
                NeedsAuthorization,
            ),
            (rejected("invalid_client", None), Misconfigured),
            (rejected("temporarily_unavailable", None), Retrying),
            (
                AuthError::Unreachable {
                    url: "u".into(),
                    reason: "operation timed out".into(),
                },
                Retrying,
            ),
            (
                AuthError::Slow {
                    url: "u".into(),
                    after: Duration::from_secs(60),
                },
                Retrying,
            ),
            (
                AuthError::Unavailable {
                    url: "u".into(),
                    status: 429,
                    retry_after: Some(Duration::from_secs(3)),
                    detail: None,
                },
                Retrying,
            ),
            (
                AuthError::NotAuthorized {
                    oauth: "a".into(),
                    account: "b".into(),
                },
                NeedsAuthorization,
            ),
            (AuthError::UnknownApp("x".into()), Misconfigured),
        ];
        for (error, state) in cases {
            assert_eq!(error.state(), state, "{error}");
        }
    }

    fn test_app() -> OAuthApp {
        OAuthApp {
            name: "a".into(),
            cloud: Cloud::Global,
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: None,
            client_certificate: None,
            authority: "https://login.microsoftonline.com".into(),
            redirect_port: 0,
        }
    }

    #[test]
    fn a_slow_answer_is_not_called_unreachable() {
        let e = request_error::<EntraErrorResponse>(
            &test_app(),
            oauth2::RequestTokenError::Request(TransportError::Timeout(Duration::from_secs(60))),
            AuthError::Rejected,
        );
        assert_eq!(e.class(), FailureClass::Connection);
        assert_eq!(
            e.to_string(),
            "identity endpoint https://login.microsoftonline.com/t/oauth2/v2.0/token did not answer within 1m"
        );
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

    /// A reader reading over IMAP (and acknowledging over SMTP) and a
    /// reader reading over Graph, under one account of one app: Entra
    /// answers one resource per request (AADSTS28000 / 700022 for mixed
    /// ones), so each resource gets its own request and its own cached
    /// access token, while the account's one refresh token (rotated on
    /// every use) carries them all.
    mod per_resource {
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use axum::extract::State;
        use axum::http::header;
        use secrecy::{ExposeSecret, SecretString};

        use super::super::{TokenRequest, TokenStore};
        use crate::config::{Config, Grant, Service};
        use crate::store::{Store, open_in};

        const ACCOUNT: &str = "desk@contoso.com";

        /// What the token endpoint was asked, one form per request.
        type Asked = Arc<Mutex<Vec<Vec<(String, String)>>>>;

        /// A token endpoint on loopback: every answer a new access token
        /// naming its scope, and for a refresh a new refresh token.
        async fn token(
            State(asked): State<Asked>,
            body: String,
        ) -> impl axum::response::IntoResponse {
            let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            let field = |name: &str| {
                form.iter()
                    .find(|(k, _)| k == name)
                    .map_or(String::new(), |(_, v)| v.clone())
            };
            let n = {
                let mut asked = asked.lock().unwrap_or_else(|e| e.into_inner());
                asked.push(form.clone());
                asked.len()
            };
            let mut answer = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3600,
                "access_token": format!("at{n} {}", field("scope")),
            });
            if field("grant_type") == "refresh_token" {
                answer["refresh_token"] = format!("rt{n}").into();
            }
            (
                [(header::CONTENT_TYPE, "application/json")],
                answer.to_string(),
            )
        }

        async fn endpoint() -> (String, Asked) {
            let asked = Asked::default();
            let app = axum::Router::new()
                .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
                .with_state(asked.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            tokio::spawn(async move { axum::serve(listener, app).await });
            (format!("http://{address}"), asked)
        }

        async fn token_store(authority: &str, store: &Store) -> TokenStore {
            let text = format!(
                "[[oauth]]\nname = \"contoso\"\ntenant = \"t\"\nclient_id = \"c\"\n\
                 client_secret = \"s\"\nauthority = \"{authority}\"\n"
            );
            let config =
                Config::parse(std::path::Path::new("/etc/m2t/config.toml"), &text).expect("valid");
            TokenStore::new(store.clone(), &config.oauth).expect("token store")
        }

        fn request(grant: Grant, account: &str, service: Service) -> TokenRequest<'_> {
            TokenRequest {
                oauth: "contoso",
                account,
                grant,
                password: None,
                service,
                timeout: Duration::from_secs(10),
            }
        }

        fn asked(asked: &Asked) -> Vec<Vec<(String, String)>> {
            asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }

        fn field<'f>(form: &'f [(String, String)], name: &str) -> &'f str {
            form.iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        }

        /// The resources a request's scope names (`offline_access` names none).
        fn resources(scope: &str) -> Vec<&str> {
            let mut list: Vec<&str> = scope
                .split_whitespace()
                .filter_map(|s| s.rsplit_once('/').map(|(r, _)| r))
                .collect();
            list.dedup();
            list
        }

        async fn get(tokens: &TokenStore, req: &TokenRequest<'_>) -> String {
            let token = tokens.access_token(req).await.expect("token");
            token.expose_secret().to_string()
        }

        #[tokio::test]
        async fn imap_smtp_and_graph_readers_of_one_account_keep_their_own_tokens() {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open_in(&dir).await;
            store
                .save_refresh_token("contoso", ACCOUNT, &SecretString::from("rt0"))
                .await
                .expect("sign-in");
            let (authority, endpoint) = endpoint().await;
            let tokens = token_store(&authority, &store).await;
            let grant = Grant::AuthorizationCode;
            let imap = request(grant, ACCOUNT, Service::Imap);
            let smtp = request(grant, ACCOUNT, Service::Smtp);
            let graph = request(grant, ACCOUNT, Service::GraphWithSend);

            let imap_token = get(&tokens, &imap).await;
            let smtp_token = get(&tokens, &smtp).await;
            let graph_token = get(&tokens, &graph).await;
            assert!(imap_token.contains("IMAP.AccessAsUser.All"), "{imap_token}");
            assert!(smtp_token.contains("SMTP.Send"), "{smtp_token}");
            assert!(
                graph_token.contains("https://graph.microsoft.com/Mail.ReadWrite")
                    && graph_token.contains("https://graph.microsoft.com/Mail.Send"),
                "{graph_token}"
            );

            // One request per resource, each for that resource alone, each
            // with the refresh token the one before it left.
            let forms = asked(&endpoint);
            assert_eq!(forms.len(), 3);
            for (i, form) in forms.iter().enumerate() {
                assert_eq!(field(form, "grant_type"), "refresh_token");
                assert_eq!(field(form, "refresh_token"), format!("rt{i}"));
                let scope = field(form, "scope");
                assert_eq!(resources(scope).len(), 1, "{scope}");
                assert!(scope.split_whitespace().any(|s| s == "offline_access"));
            }
            assert_eq!(
                resources(field(&forms[2], "scope")),
                ["https://graph.microsoft.com"]
            );

            // Graph's refresh replaced neither IMAP's nor SMTP's token.
            assert_eq!(get(&tokens, &imap).await, imap_token);
            assert_eq!(get(&tokens, &smtp).await, smtp_token);
            assert_eq!(get(&tokens, &graph).await, graph_token);
            assert_eq!(asked(&endpoint).len(), 3, "all three from the cache");

            // One refresh token for the account: the latest rotation.
            let stored = store
                .load_refresh_token("contoso", ACCOUNT)
                .await
                .expect("read")
                .expect("a refresh token");
            assert_eq!(stored.token.expose_secret(), "rt3");

            // A Graph 401 drops Graph's token alone.
            tokens.invalidate(&graph).await;
            let renewed = get(&tokens, &graph).await;
            assert_ne!(renewed, graph_token);
            assert_eq!(get(&tokens, &imap).await, imap_token);
            let forms = asked(&endpoint);
            assert_eq!(forms.len(), 4);
            assert_eq!(field(&forms[3], "refresh_token"), "rt3");
        }

        #[tokio::test]
        async fn app_only_readers_get_one_token_per_resource() {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open_in(&dir).await;
            let (authority, endpoint) = endpoint().await;
            let tokens = token_store(&authority, &store).await;
            let grant = Grant::ClientCredentials;
            let imap = request(grant, "sales@contoso.com", Service::Imap);
            let graph = request(grant, "desk@contoso.com", Service::Graph);
            // Another Graph mailbox of the same app: app-only tokens are the
            // app's, whichever mailbox they open.
            let graph_too = request(grant, "billing@contoso.com", Service::GraphWithSend);

            let imap_token = get(&tokens, &imap).await;
            let graph_token = get(&tokens, &graph).await;
            assert_ne!(imap_token, graph_token);
            assert_eq!(get(&tokens, &graph_too).await, graph_token);
            assert_eq!(get(&tokens, &imap).await, imap_token);

            let forms = asked(&endpoint);
            let scopes: Vec<&str> = forms.iter().map(|f| field(f, "scope")).collect();
            assert_eq!(
                scopes,
                [
                    "https://outlook.office365.com/.default",
                    "https://graph.microsoft.com/.default"
                ]
            );
            assert!(
                forms
                    .iter()
                    .all(|f| field(f, "grant_type") == "client_credentials")
            );
            for account in ["", "sales@contoso.com", "desk@contoso.com"] {
                let stored = store
                    .load_refresh_token("contoso", account)
                    .await
                    .expect("read");
                assert!(stored.is_none(), "{account:?}");
            }
        }
    }
}
