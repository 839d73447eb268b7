//! Interactive sign-in (`mail2ticket authorize`): the authorization-code
//! flow with PKCE and a loopback redirect, or the device-code flow. Either
//! ends with a refresh token in the store, after which the reader runs on
//! refreshes alone.
//!
//! The loopback redirect is why no public redirect URI is needed: Entra
//! sends the browser to `http://localhost:PORT/`, which only the machine the
//! browser runs on can answer. The listener takes both addresses
//! `localhost` names and only the redirect carrying this sign-in's `state`. On a headless server the admin signs in on
//! their own machine and pastes the address the browser was sent to
//! (`--no-listen`), or uses the device code.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use oauth2::{
    AuthorizationCode, CsrfToken, DeviceCodeErrorResponse, PkceCodeChallenge, RedirectUrl,
    RequestTokenError, StandardDeviceAuthorizationResponse, TokenResponse,
};
use secrecy::SecretString;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::entra::{EntraErrorResponse, EntraTokenResponse, TransportError};
use super::{AuthError, ClientAuth, TokenRequest, TokenStore, request_error, with_credential};
use crate::config::OAuthApp;

/// Scopes that make Entra add an id_token naming the account.
const OPENID_SCOPES: [&str; 2] = ["openid", "profile"];

/// The admin at the terminal, as the sign-in flows need them.
pub trait Interaction {
    /// Shows a line: the sign-in address, the code, what to do next.
    fn show(&self, text: &str);
    /// Reads one line the admin pastes.
    fn read_line(&self) -> impl Future<Output = std::io::Result<String>> + Send;
}

/// How the authorization-code flow gets the redirect back.
#[derive(Debug, Clone)]
pub struct CodeFlowOptions {
    /// Loopback port for the redirect; `None` takes the app's `redirect_port`.
    pub port: Option<u16>,
    /// Listen for the redirect (true) or ask the admin to paste it.
    pub listen: bool,
    /// How long to wait for the sign-in.
    pub timeout: Duration,
}

/// A completed sign-in.
#[derive(Debug)]
pub struct Authorized {
    /// The account that signed in, from the id_token, when Entra sent one.
    pub account: Option<String>,
    /// Readers that were waiting for this sign-in and may run again.
    pub released: Vec<String>,
}

impl TokenStore {
    /// Runs the authorization-code flow with PKCE for `req`'s account.
    pub async fn authorize_code(
        &self,
        req: &TokenRequest<'_>,
        options: &CodeFlowOptions,
        ui: &impl Interaction,
    ) -> Result<Authorized, AuthError> {
        let app = self.app(req.oauth)?;
        let app = &*app;
        let client = self.client(app)?;
        let scope = super::scope_for(app, req);
        let port = options.port.unwrap_or(app.redirect_port);
        let listeners = if options.listen {
            Some(bind_loopback(port).await?)
        } else {
            None
        };
        let port = match &listeners {
            Some(l) => l.port,
            None => port,
        };
        // `localhost`, not 127.0.0.1: the redirect URI registered in Entra
        // (docs/entra-app.md) says `localhost`, and Entra compares
        // the host literally, so a switch would break every registration.
        // Both addresses `localhost` names are bound instead
        // ([`bind_loopback`]), so no other local user can take one of them
        // and receive the code.
        let redirect = RedirectUrl::new(format!("http://localhost:{port}/"))
            .map_err(|e| AuthError::SignIn(format!("redirect URI: {e}")))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(
                interactive_scopes(&scope)
                    .into_iter()
                    .map(oauth2::Scope::new),
            )
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Borrowed(&redirect))
            .add_extra_param("login_hint", req.account)
            .url();

        ui.show(&format!(
            "Open this address in a browser and sign in as {} (or an account with access to it):",
            req.account
        ));
        ui.show(url.as_str());
        let query = match listeners {
            Some(listeners) => {
                ui.show(&format!(
                    "Waiting for the browser to come back to {} ...",
                    redirect.as_str()
                ));
                wait_for_redirect(listeners, state.secret(), options.timeout).await?
            }
            None => {
                ui.show(&format!(
                    "After signing in, the browser is sent to {}... and shows an error page. \
                     Copy the whole address from its address bar and paste it here:",
                    redirect.as_str()
                ));
                let line = ui.read_line().await.map_err(|e| {
                    AuthError::SignIn(format!("cannot read the pasted address: {e}"))
                })?;
                parse_pasted(&line)?
            }
        };
        let code = code_from_redirect(&query, state.secret())?;

        let credential = ClientAuth::for_request(app)?;
        let response = with_credential!(
            client.exchange_code(AuthorizationCode::new(code)),
            credential
        )
        .set_pkce_verifier(verifier)
        .set_redirect_uri(Cow::Borrowed(&redirect))
        .add_extra_param("scope", interactive_scopes(&scope).join(" "))
        .request_async(&self.http)
        .await
        .map_err(|e| request_error(app, e, AuthError::Rejected))?;
        self.finish_sign_in(req, &response).await
    }

    /// Runs the device-code flow for `req`'s account, polling until the
    /// admin has signed in elsewhere, declined, or the code expired.
    pub async fn authorize_device(
        &self,
        req: &TokenRequest<'_>,
        ui: &impl Interaction,
    ) -> Result<Authorized, AuthError> {
        let app = self.app(req.oauth)?;
        let app = &*app;
        let client = self.client(app)?;
        let scope = super::scope_for(app, req);
        let credential = ClientAuth::for_request(app)?;
        let details: StandardDeviceAuthorizationResponse =
            with_credential!(client.exchange_device_code(), credential)
                .add_scopes(
                    interactive_scopes(&scope)
                        .into_iter()
                        .map(oauth2::Scope::new),
                )
                .request_async(&self.http)
                .await
                .map_err(|e| request_error(app, e, AuthError::Rejected))?;
        ui.show(&format!(
            "On any device, open {} and enter the code {} to sign in as {}.",
            details.verification_uri().as_str(),
            details.user_code().secret(),
            req.account
        ));
        ui.show(&format!(
            "Waiting up to {} for the sign-in ...",
            humantime::format_duration(details.expires_in())
        ));
        let credential = ClientAuth::for_request(app)?;
        // The oauth2 crate polls at the server's interval, adds 5 s on
        // slow_down and keeps going on authorization_pending.
        let response = with_credential!(client.exchange_device_access_token(&details), credential)
            .request_async(&self.http, tokio::time::sleep, None)
            .await
            .map_err(|e| device_error(app, e))?;
        self.finish_sign_in(req, &response).await
    }

    /// Stores the refresh token and releases the readers waiting for it.
    async fn finish_sign_in(
        &self,
        req: &TokenRequest<'_>,
        response: &EntraTokenResponse,
    ) -> Result<Authorized, AuthError> {
        let Some(refresh) = response.refresh_token() else {
            return Err(AuthError::SignIn(
                "the identity platform issued no refresh token (was offline_access refused?)"
                    .into(),
            ));
        };
        let refresh = SecretString::from(refresh.secret().to_string());
        self.store
            .save_refresh_token(req.oauth, req.account, &refresh)
            .await?;
        self.reload(req).await;
        let account = response
            .extra_fields()
            .id_token
            .as_deref()
            .and_then(account_of_id_token);
        let released = self
            .store
            .release_authorized(req.oauth, req.account)
            .await?;
        tracing::info!(
            oauth = req.oauth,
            account = req.account,
            signed_in_as = account.as_deref().unwrap_or("(not named)"),
            "sign-in stored"
        );
        Ok(Authorized { account, released })
    }
}

/// The reader's scope plus `offline_access` (the point of signing in) and
/// the OpenID scopes (to learn who signed in).
fn interactive_scopes(scope: &str) -> Vec<String> {
    super::scopes(scope)
        .into_iter()
        .map(|s| s.to_string())
        .chain(OPENID_SCOPES.iter().map(|s| s.to_string()))
        .collect()
}

/// The loopback listeners of one sign-in: 127.0.0.1 and, where the
/// machine has IPv6, [::1], on one port.
struct Loopback {
    port: u16,
    listeners: Vec<TcpListener>,
}

/// Attempts at a port free on both addresses when any port will do.
const FREE_PORT_ATTEMPTS: usize = 20;

/// Binds `port` (0: any free one) on every address `localhost` can name.
/// A browser may resolve `localhost` to either; an address left unbound
/// could be bound by another local user, who would receive the code.
/// Without IPv6 on the machine [::1] cannot be bound by anyone, so
/// 127.0.0.1 alone is safe.
async fn bind_loopback(port: u16) -> Result<Loopback, AuthError> {
    let cannot = |addr: &str, e: &std::io::Error| {
        AuthError::SignIn(format!(
            "cannot listen on {addr}:{port} for the redirect ({e}); \
             pick another port with --port or use --no-listen"
        ))
    };
    let attempts = if port == 0 { FREE_PORT_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let v4 = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| cannot("127.0.0.1", &e))?;
        let bound = v4.local_addr().map_or(port, |a| a.port());
        match TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, bound)).await {
            Ok(v6) => {
                return Ok(Loopback {
                    port: bound,
                    listeners: vec![v4, v6],
                });
            }
            Err(e) if no_ipv6(&e) => {
                return Ok(Loopback {
                    port: bound,
                    listeners: vec![v4],
                });
            }
            // Taken on [::1] (by someone who would receive the code): with
            // --port 0 another port is tried, a given port is refused.
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse));
    Err(cannot("[::1]", &e))
}

/// The machine has no IPv6 loopback (disabled, or no IPv6 at all).
fn no_ipv6(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable
        || rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::AFNOSUPPORT)
}

/// Serves the loopback redirect until one carrying this sign-in's `state`
/// (with a `code` or an `error`) arrives, or `timeout` passes. Requests
/// without it are answered and ignored: any web page can make the browser
/// request `http://localhost:PORT/?error=x`, and must not end the sign-in.
async fn wait_for_redirect(
    loopback: Loopback,
    state: &str,
    timeout: Duration,
) -> Result<HashMap<String, String>, AuthError> {
    let (tx, mut rx) = mpsc::channel::<HashMap<String, String>>(1);
    let app = axum::Router::new()
        .route("/", axum::routing::get(redirect_page))
        .with_state(Redirect {
            tx,
            state: state.to_owned(),
        });
    let stop = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    for listener in loopback.listeners {
        let app = app.clone();
        let stop = stop.clone();
        servers.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
    }
    let received = tokio::time::timeout(timeout, rx.recv()).await;
    stop.cancel();
    // Let the page that was just answered reach the browser.
    let _ = tokio::time::timeout(Duration::from_secs(2), servers.join_all()).await;
    match received {
        Ok(Some(query)) => Ok(query),
        Ok(None) => Err(AuthError::SignIn("the redirect listener stopped".into())),
        Err(_) => Err(AuthError::SignIn(format!(
            "no sign-in came back within {}; run the command again (or use --no-listen or --device)",
            humantime::format_duration(timeout)
        ))),
    }
}

/// What the redirect listener needs: where the redirect goes, and the
/// state that tells this sign-in's redirect from a forged one.
#[derive(Clone)]
struct Redirect {
    tx: mpsc::Sender<HashMap<String, String>>,
    state: String,
}

async fn redirect_page(
    State(r): State<Redirect>,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if !query.contains_key("code") && !query.contains_key("error") {
        return (StatusCode::NOT_FOUND, Html("Not a sign-in redirect."));
    }
    if query.get("state") != Some(&r.state) {
        return (
            StatusCode::BAD_REQUEST,
            Html("This request does not belong to the sign-in in progress and was ignored."),
        );
    }
    let failed = query.contains_key("error");
    // Only the first redirect counts; a reload of the page changes nothing.
    let _ = r.tx.try_send(query);
    if failed {
        (
            StatusCode::OK,
            Html("Sign-in failed. The terminal running mail2ticket says why."),
        )
    } else {
        (
            StatusCode::OK,
            Html("Signed in. You can close this window and return to the terminal."),
        )
    }
}

/// The query of a pasted redirect address (or of just its `?...` part).
fn parse_pasted(text: &str) -> Result<HashMap<String, String>, AuthError> {
    let text = text.trim();
    let query = match url::Url::parse(text) {
        Ok(url) => url.query().unwrap_or_default().to_string(),
        Err(_) => text.trim_start_matches('?').to_string(),
    };
    let pairs: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if !pairs.contains_key("code") && !pairs.contains_key("error") {
        return Err(AuthError::SignIn(
            "the pasted text is not the address the browser was sent to (it has no ?code=...)"
                .into(),
        ));
    }
    Ok(pairs)
}

/// The authorization code of a redirect, after checking that the redirect
/// belongs to this sign-in and did not report an error.
fn code_from_redirect(
    query: &HashMap<String, String>,
    expected_state: &str,
) -> Result<String, AuthError> {
    if query.get("state").map(String::as_str) != Some(expected_state) {
        return Err(AuthError::SignIn(
            "the redirect does not belong to this sign-in (state mismatch); run the command again"
                .into(),
        ));
    }
    if let Some(error) = query.get("error") {
        // Whoever sent the browser here chose these words; they reach the
        // terminal, so no escape sequence may pass.
        return Err(AuthError::Rejected(EntraErrorResponse {
            error: crate::scrub::printable(error),
            error_description: query
                .get("error_description")
                .map(|d| crate::scrub::printable(d)),
            error_codes: Vec::new(),
        }));
    }
    query
        .get("code")
        .cloned()
        .ok_or_else(|| AuthError::SignIn("the redirect carries no authorization code".into()))
}

#[derive(Deserialize)]
struct IdClaims {
    preferred_username: Option<String>,
    upn: Option<String>,
    email: Option<String>,
}

/// The account an id_token names. It came straight from the token endpoint
/// over TLS, so (as OpenID Connect allows) its signature is not checked; it
/// only labels the sign-in, it grants nothing.
fn account_of_id_token(id_token: &str) -> Option<String> {
    let claims: IdClaims = jsonwebtoken::dangerous::insecure_decode_claims(id_token).ok()?;
    claims.preferred_username.or(claims.upn).or(claims.email)
}

fn device_error(
    app: &OAuthApp,
    e: RequestTokenError<TransportError, DeviceCodeErrorResponse>,
) -> AuthError {
    request_error(app, e, |e| {
        let error = e.error().to_string();
        let description = e.error_description().cloned();
        let rejected = EntraErrorResponse {
            error: error.clone(),
            error_description: description,
            error_codes: Vec::new(),
        };
        let code = rejected
            .aadsts()
            .map(|c| format!(" (AADSTS{c})"))
            .unwrap_or_default();
        match error.as_str() {
            "expired_token" => AuthError::SignIn(format!(
                "the code expired before anyone signed in{code}; run the command again"
            )),
            "authorization_declined" | "access_denied" => AuthError::SignIn(format!(
                "the sign-in was declined{code}; run the command again to retry"
            )),
            "bad_verification_code" => AuthError::SignIn(format!(
                "the identity platform did not recognise the device code{code}"
            )),
            _ => AuthError::Rejected(rejected),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_address_or_query_gives_the_code() {
        let q = parse_pasted("  http://localhost:8400/?code=abc&state=xyz \n").expect("parsed");
        assert_eq!(code_from_redirect(&q, "xyz").expect("code"), "abc");
        let q = parse_pasted("?code=abc&state=xyz").expect("parsed");
        assert_eq!(code_from_redirect(&q, "xyz").expect("code"), "abc");
        assert!(parse_pasted("hello").is_err());
    }

    #[test]
    fn a_foreign_state_or_an_error_is_refused() {
        let q = parse_pasted("http://localhost/?code=abc&state=other").expect("parsed");
        let err = code_from_redirect(&q, "xyz").unwrap_err().to_string();
        assert!(err.contains("state mismatch"), "{err}");

        let q = parse_pasted(
            "http://localhost/?error=access_denied&error_description=AADSTS65004%3A+User+declined+to+consent.&state=xyz",
        )
        .expect("parsed");
        let err = code_from_redirect(&q, "xyz").unwrap_err();
        assert_eq!(err.aadsts(), Some(65004));
        assert!(err.to_string().contains("User declined"), "{err}");
    }

    #[test]
    fn an_error_needs_the_state_and_reaches_the_terminal_without_escapes() {
        let q = parse_pasted("?error=access_denied&error_description=evil&state=other")
            .expect("parsed");
        let err = code_from_redirect(&q, "xyz").unwrap_err().to_string();
        assert!(err.contains("state mismatch"), "{err}");

        let q = parse_pasted(
            "?error=access_denied%1b%5b2J&error_description=AADSTS65004%3A+no%1b%5d0%3Bpwned%07%0Ahere&state=xyz",
        )
        .expect("parsed");
        let AuthError::Rejected(e) = code_from_redirect(&q, "xyz").unwrap_err() else {
            panic!("an IdP error is Rejected");
        };
        assert_eq!(e.error, "access_denied?[2J");
        assert_eq!(
            e.error_description.as_deref(),
            Some("AADSTS65004: no?]0;pwned??here")
        );
    }

    #[test]
    fn id_token_names_the_account() {
        use base64::Engine;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64(r#"{"preferred_username":"helpdesk@contoso.com","name":"Help Desk"}"#)
        );
        assert_eq!(
            account_of_id_token(&token).as_deref(),
            Some("helpdesk@contoso.com")
        );
        assert_eq!(account_of_id_token("not a jwt"), None);
    }
}
