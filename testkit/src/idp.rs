//! `IdP`: an imitation of Microsoft Entra ID's (Azure AD) v2.0 identity
//! platform for one tenant and one app registration, plus an RFC 7662-style
//! introspection endpoint that Dovecot's oauth2 passdb asks on every login
//! (`introspection_mode = post`).
//!
//! The server runs on its own OS thread with its own tokio runtime, so it keeps
//! answering whatever the test thread does (a current-thread `#[tokio::test]`,
//! a blocking test waiting on a child process, a benchmark). It stops on Drop.
//!
//! It imitates what a mailbox client can observe of Entra ID — endpoints,
//! parameters, error bodies (`error`, `error_description` "AADSTSnnn: …\r\n
//! Trace ID…", `error_codes`, …) — so the library's handling of all four
//! grants (password, refresh, client credentials with a secret or a
//! certificate, authorization code with PKCE, device code) can be tested end
//! to end, failures included. Tokens are opaque random strings (except the
//! `id_token`, a real RS256 JWT); the IdP keeps them in memory.
//!
//! # Routes
//! - `POST /{tenant}/oauth2/v2.0/token` — grants `password`, `refresh_token`,
//!   `client_credentials`, `authorization_code` and
//!   [`DEVICE_CODE_GRANT`]. Client authentication by `client_secret` (form
//!   or HTTP Basic) or by a certificate-signed `client_assertion` (RFC 7523).
//!   An `id_token` is added whenever the scope holds `openid`; a refresh
//!   token when it holds `offline_access` (always on `refresh_token`).
//! - `GET /{tenant}/oauth2/v2.0/authorize` — authorization-code flow with
//!   PKCE. No login UI: the test says who is signed in in "the browser"
//!   ([`IdP::set_browser_user`]); the answer is `302 Found` to the
//!   `redirect_uri` with `code` and `state` (or `error`, `error_description`,
//!   `state`). Errors found before the redirect URI is trusted (unknown
//!   tenant/client, foreign redirect URI) are a 400 HTML page, as with Entra.
//!   Loopback redirect URIs (`http://localhost[:any]/…`,
//!   `http://127.0.0.1[:any]/…`) are accepted (Entra ignores the port);
//!   others only if added with [`IdP::add_redirect_uri`].
//!   [`browser_sign_in`] plays the browser.
//! - `POST /{tenant}/oauth2/v2.0/devicecode` — device authorization (RFC
//!   8628). The test plays the user with [`IdP::approve_device_code`] /
//!   [`IdP::decline_device_code`]; `GET /devicelogin` is a placeholder page.
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration` and
//!   `GET /{tenant}/discovery/v2.0/keys` — discovery and the JWKS holding the
//!   `id_token` signing key.
//! - `POST /introspect` — form `token=...`; `{"active":true,"username":U}` or
//!   `{"active":false}`, for tokens of every grant alike. Never carries
//!   `expires_in`: Dovecot does not check expiry itself, it asks on every
//!   login, and expiry is decided here.
//!
//! # The app registration
//! Public by default ("Allow public client flows" on): secrets are optional
//! except for `client_credentials`, and an `authorization_code` redemption
//! that presents one fails (AADSTS700025). [`IdP::set_confidential`] makes
//! every grant require a credential (AADSTS7000218). Credentials:
//! [`IdP::set_client_secret`] / [`IdP::expire_client_secret`] (AADSTS7000215
//! / 7000222) and [`IdP::register_certificate`] (see
//! [`crate::client_cert::ClientCert`]).
//!
//! A client assertion must be a compact JWS with header `alg` = `RS256` and
//! `x5t#S256` = the thumbprint of a registered certificate, a valid
//! signature, `aud` = [`IdP::token_url`] (one value), `iss` = `sub` =
//! client id, `exp`/`nbf` around now (5 minutes' skew), and a `jti` not seen
//! before. Error codes (401 `invalid_client` unless noted):
//! - not three base64url JSON parts, or `exp`/`nbf`/`jti` missing:
//!   AADSTS50027; a reused `jti`: AADSTS50027 too (Entra has no documented
//!   code for this; the message says "replayed"),
//! - `alg` other than RS256: AADSTS5002738,
//! - unknown thumbprint, bad signature, expired certificate: AADSTS700027,
//! - `aud` not the token URL: AADSTS700023 (several `aud` values:
//!   AADSTS5002741), `iss`/`sub` not the client id: AADSTS700021,
//! - outside `nbf`..`exp`: AADSTS700024,
//! - `client_assertion_type` not the jwt-bearer URN, or both a secret and
//!   an assertion: AADSTS70002 (400 `invalid_request` AADSTS900144 if
//!   `client_assertion`/`client_assertion_type` is missing).
//!
//! # Authorize errors (redirected back with `state`)
//! No browser user: `access_denied` AADSTS65004 (`login_required` AADSTS50058
//! with `prompt=none`); consent denied: `access_denied` AADSTS65004; no
//! `code_challenge`: `invalid_request` AADSTS9002325; a challenge of the
//! wrong size: AADSTS501491; a method other than `S256`/`plain`:
//! AADSTS501492 (our pick; a missing method means `plain`, as with Entra);
//! `response_type` other than `code`: `unsupported_response_type`
//! AADSTS70005; no `scope`/`response_type`: `invalid_request` AADSTS900144.
//! Only `response_mode=query` (the default) is imitated.
//!
//! # Authorization code errors (token endpoint, 400)
//! Unknown code: `invalid_grant` AADSTS70000 (AADSTS9002313 if it does not
//! even look like one of ours); redeemed: AADSTS54005; older than
//! [`IdP::set_auth_code_lifetime`] (10 min): AADSTS70008; `redirect_uri`
//! differs from the authorize request: `invalid_grant` AADSTS50011 (the
//! wording Entra used for this case); missing `code_verifier`:
//! `invalid_request` AADSTS900144; verifier not matching: `invalid_grant`
//! AADSTS501481. A failed redemption does not consume the code.
//!
//! # Device code errors (token endpoint, 400)
//! `authorization_pending` AADSTS70016, `slow_down` AADSTS70016 (see
//! [`IdP::slow_down_device_polls`]), `authorization_declined` AADSTS70000,
//! `expired_token` AADSTS70019, unknown or already redeemed code:
//! `invalid_grant` AADSTS70000.
//!
//! # Knobs (and why they exist)
//! - Users: [`IdP::add_user`], [`IdP::set_password`] (password grant),
//!   [`IdP::set_display_name`], [`IdP::user_oid`] (id_token claims),
//!   [`IdP::revoke_refresh_tokens`] (the user must sign in again).
//! - Tokens: [`IdP::set_token_lifetime`] (refresh before expiry; exact
//!   sub-second expiry at introspection), [`IdP::set_refresh_token_lifetime`]
//!   (AADSTS700082), [`IdP::set_strict_rotation`] (the client must keep the
//!   rotated refresh token), [`IdP::set_access_token_len`] (long SASL lines),
//!   [`IdP::revoke_access_tokens`] (the mail server refuses a cached token).
//! - App: [`IdP::set_confidential`], secrets and certificates (above),
//!   [`IdP::grant_app_access`] (which mailbox an app-only token may open).
//! - Authorization code: [`IdP::set_browser_user`], [`IdP::set_consent_denied`]
//!   (the interactive outcomes), [`IdP::set_pkce_required`] (default on),
//!   [`IdP::set_auth_code_lifetime`] (expiry without waiting 10 minutes),
//!   [`IdP::add_redirect_uri`] (a non-loopback redirect URI).
//! - Device code: [`IdP::set_device_code_timing`] (short expiry and interval
//!   so tests run in seconds), [`IdP::pending_user_codes`],
//!   [`IdP::approve_device_code`], [`IdP::decline_device_code`] (the user's
//!   side), [`IdP::slow_down_device_polls`] (RFC 8628 back-off).
//!
//! # Faults and observation
//! [`IdP::inject`] / [`IdP::inject_aad`] queue canned answers for the token
//! endpoint (MFA 50076, consent 65001, conditional access 53003, …: answers
//! a healthy IdP would not give on its own), [`IdP::set_down`] makes the
//! token, authorize and devicecode endpoints answer 503, [`IdP::set_delay`]
//! makes the token endpoint slow. [`IdP::count`],
//! [`IdP::total_requests`], [`IdP::last_form`], [`IdP::device_poll_times`],
//! [`IdP::device_code_requests`], [`IdP::authorize_requests`],
//! [`IdP::last_authorize_query`], [`IdP::last_assertion`] show what the client
//! sent and when; [`IdP::issued_secrets`] (every token, code and device code
//! handed out) lets tests scan logs and files for leaks, and
//! [`IdP::issued_access_token_scopes`] shows which resources got tokens.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng;
use rand::distr::Alphanumeric;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client_cert::{ClientCert, JWT_BEARER_ASSERTION_TYPE};
use crate::time::{azure_timestamp, unix_now};

/// Default tenant GUID in the token URL path.
pub const DEFAULT_TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
/// Default (and only registered) application (client) id.
pub const DEFAULT_CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000c1";
/// `grant_type` of the device-code poll (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Clock skew tolerated on client assertion `nbf` / `exp`.
const CLOCK_SKEW_SECS: f64 = 300.0;
/// Lifetime of issued id_tokens (Entra: one hour).
const ID_TOKEN_LIFETIME_SECS: i64 = 3600;
const AUTH_CODE_PREFIX: &str = "1.AXkA";
const DEVICE_CODE_PREFIX: &str = "DAQABIQEAAAD";
const CERT_DOCS: &str =
    "https://learn.microsoft.com/entra/identity-platform/certificate-credentials";
const KNOWN_GRANTS: [&str; 5] = [
    "password",
    "refresh_token",
    "client_credentials",
    "authorization_code",
    DEVICE_CODE_GRANT,
];

/// Body of an injected fault response.
#[derive(Clone, Debug)]
pub enum InjectedBody {
    /// Sent as `application/json; charset=utf-8`.
    Json(Value),
    /// Sent as `text/html; charset=utf-8` (proxies and gateways answer HTML).
    Text(String),
}

impl From<Value> for InjectedBody {
    fn from(v: Value) -> Self {
        InjectedBody::Json(v)
    }
}

impl From<String> for InjectedBody {
    fn from(s: String) -> Self {
        InjectedBody::Text(s)
    }
}

impl From<&str> for InjectedBody {
    fn from(s: &str) -> Self {
        InjectedBody::Text(s.to_owned())
    }
}

/// An Entra error to build afresh (new trace id, timestamp) on each use.
struct AadSpec {
    error: String,
    code: u32,
    message: String,
}

struct Injection {
    status: u16,
    body: InjectedBody,
    /// When set, replaces `body` with an Entra error body.
    aad: Option<AadSpec>,
    retry_after: Option<u64>,
    remaining: usize,
}

enum Subject {
    User(String),
    App,
}

struct AccessToken {
    subject: Subject,
    expires_at: Instant,
}

struct RefreshToken {
    /// Canonical (as added) username.
    username: String,
    issued_at: Instant,
}

struct User {
    username: String,
    password: String,
    /// Object id (stable per user, also in id_tokens).
    oid: String,
    /// Display name (`name` claim).
    name: String,
}

struct RegisteredCert {
    thumbprint_s256: String,
    public_key: RsaPublicKey,
    expired: bool,
}

struct AuthCode {
    /// Canonical username.
    username: String,
    redirect_uri: String,
    scope: String,
    /// (code_challenge, method "S256" or "plain").
    challenge: Option<(String, String)>,
    nonce: Option<String>,
    issued_at: Instant,
    redeemed: bool,
}

enum DeviceState {
    Pending,
    /// Approved by this (canonical) user.
    Approved(String),
    Declined,
    Redeemed,
}

struct DeviceCode {
    device_code: String,
    user_code: String,
    scope: String,
    expires_at: Instant,
    state: DeviceState,
}

struct IdpState {
    /// Keyed by lower-cased username (UPNs are case-insensitive).
    users: HashMap<String, User>,
    client_secrets: Vec<String>,
    expired_secrets: Vec<String>,
    confidential: bool,
    certificates: Vec<RegisteredCert>,
    used_jtis: HashSet<String>,
    last_assertion: Option<(Value, Value)>,
    app_grants: Vec<String>,
    access_tokens: HashMap<String, AccessToken>,
    refresh_tokens: HashMap<String, RefreshToken>,
    /// Every refresh token ever issued, in order (rotated/revoked ones too).
    refresh_token_history: Vec<String>,
    strict_rotation: bool,
    token_lifetime: Duration,
    refresh_token_lifetime: Option<Duration>,
    access_token_len: usize,
    injections: VecDeque<Injection>,
    down: bool,
    /// How long the token endpoint waits before it answers.
    delay: Option<Duration>,
    counts: HashMap<String, usize>,
    total: usize,
    introspections: usize,
    last_forms: HashMap<String, HashMap<String, String>>,
    // Authorization code flow.
    redirect_uris: Vec<String>,
    browser_user: Option<String>,
    consent_denied: bool,
    pkce_required: bool,
    auth_code_lifetime: Duration,
    auth_codes: HashMap<String, AuthCode>,
    authorize_requests: usize,
    last_authorize_query: Option<HashMap<String, String>>,
    // Device code flow.
    device_codes: Vec<DeviceCode>,
    device_expires_in: Duration,
    device_interval: u64,
    slow_down_polls: usize,
    device_poll_times: Vec<Instant>,
    device_code_requests: usize,
    last_device_code_form: Option<HashMap<String, String>>,
    // Observation.
    issued_scopes: Vec<String>,
    issued_secrets: Vec<String>,
}

struct Shared {
    url: String,
    tenant: String,
    client_id: String,
    state: Mutex<IdpState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, IdpState> {
        // A panicking handler must not take the whole IdP down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.url, self.tenant)
    }

    fn issuer(&self) -> String {
        format!("{}/{}/v2.0", self.url, self.tenant)
    }
}

/// The imitation identity provider. See the module docs.
pub struct IdP {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl IdP {
    /// Binds 127.0.0.1:0 and starts serving on a dedicated thread. Synchronous.
    pub fn start() -> IdP {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("IdP: cannot bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("IdP: cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("IdP: no local address");
        let shared = Arc::new(Shared {
            url: format!("http://{addr}"),
            tenant: DEFAULT_TENANT.to_owned(),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            state: Mutex::new(IdpState {
                users: HashMap::new(),
                client_secrets: Vec::new(),
                expired_secrets: Vec::new(),
                confidential: false,
                certificates: Vec::new(),
                used_jtis: HashSet::new(),
                last_assertion: None,
                app_grants: Vec::new(),
                access_tokens: HashMap::new(),
                refresh_tokens: HashMap::new(),
                refresh_token_history: Vec::new(),
                strict_rotation: false,
                token_lifetime: Duration::from_secs(3600),
                refresh_token_lifetime: None,
                access_token_len: 96,
                injections: VecDeque::new(),
                down: false,
                delay: None,
                counts: HashMap::new(),
                total: 0,
                introspections: 0,
                last_forms: HashMap::new(),
                redirect_uris: Vec::new(),
                browser_user: None,
                consent_denied: false,
                pkce_required: true,
                auth_code_lifetime: Duration::from_secs(600),
                auth_codes: HashMap::new(),
                authorize_requests: 0,
                last_authorize_query: None,
                device_codes: Vec::new(),
                device_expires_in: Duration::from_secs(900),
                device_interval: 5,
                slow_down_polls: 0,
                device_poll_times: Vec::new(),
                device_code_requests: 0,
                last_device_code_form: None,
                issued_scopes: Vec::new(),
                issued_secrets: Vec::new(),
            }),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_endpoint))
            .route(
                "/{tenant}/oauth2/v2.0/devicecode",
                post(devicecode_endpoint),
            )
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(jwks_endpoint))
            .route("/devicelogin", get(devicelogin_page))
            .route("/introspect", post(introspect_endpoint))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
            .with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("idp-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("IdP: cannot build a tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("IdP: cannot register the listener with tokio");
                    tokio::select! {
                        res = async { axum::serve(listener, app).await } => {
                            if let Err(e) = res {
                                eprintln!("IdP server stopped with an error: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                // Cancel connection tasks still open (e.g. Dovecot's keep-alive).
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("IdP: cannot spawn the server thread");
        IdP {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    fn st(&self) -> MutexGuard<'_, IdpState> {
        self.shared.lock()
    }

    /// Canonical username of an added user; panics (naming `what`) otherwise.
    fn canonical_user(&self, username: &str, what: &str) -> String {
        self.st()
            .users
            .get(&username.to_lowercase())
            .unwrap_or_else(|| panic!("IdP::{what}: unknown user {username}"))
            .username
            .clone()
    }

    // -- Addresses ----------------------------------------------------------

    /// `http://127.0.0.1:PORT` — the "authority".
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tenant(&self) -> &str {
        &self.shared.tenant
    }

    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// `{url}/{tenant}/oauth2/v2.0/token` (also the client assertion `aud`).
    pub fn token_url(&self) -> String {
        self.shared.token_url()
    }

    /// `{url}/{tenant}/oauth2/v2.0/authorize`
    pub fn authorize_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/authorize",
            self.shared.url, self.shared.tenant
        )
    }

    /// `{url}/{tenant}/oauth2/v2.0/devicecode`
    pub fn device_code_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/devicecode",
            self.shared.url, self.shared.tenant
        )
    }

    /// `{url}/devicelogin` — the `verification_uri` of device codes.
    pub fn device_login_url(&self) -> String {
        format!("{}/devicelogin", self.shared.url)
    }

    /// `{url}/{tenant}/v2.0` — the `iss` of id_tokens.
    pub fn issuer(&self) -> String {
        self.shared.issuer()
    }

    /// `{url}/{tenant}/discovery/v2.0/keys` — JWKS of the id_token key.
    pub fn jwks_url(&self) -> String {
        format!(
            "{}/{}/discovery/v2.0/keys",
            self.shared.url, self.shared.tenant
        )
    }

    /// `{url}/introspect` — give this to [`super::Dovecot::start`].
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.shared.url)
    }

    /// Public key (SPKI PEM) the id_tokens are signed with (RS256; the same
    /// key for every IdP in the process). The `kid` is its `x5t#S256`.
    pub fn id_token_public_key_pem(&self) -> String {
        idp_signing_key().public_key_pem().to_owned()
    }

    // -- Users --------------------------------------------------------------

    /// Adds (or replaces) a user. Usernames are case-insensitive, like UPNs.
    /// Re-adding keeps the user's object id.
    pub fn add_user(&self, username: &str, password: &str) {
        let key = username.to_lowercase();
        let mut st = self.st();
        let (oid, name) = match st.users.get(&key) {
            Some(u) => (u.oid.clone(), u.name.clone()),
            None => (guid(), display_name_of(username)),
        };
        st.users.insert(
            key,
            User {
                username: username.to_owned(),
                password: password.to_owned(),
                oid,
                name,
            },
        );
    }

    /// Changes a user's password. Like a plain password change it does not
    /// revoke refresh tokens; call [`IdP::revoke_refresh_tokens`] for that.
    pub fn set_password(&self, username: &str, password: &str) {
        let mut st = self.st();
        let user = st
            .users
            .get_mut(&username.to_lowercase())
            .unwrap_or_else(|| panic!("IdP::set_password: unknown user {username}"));
        user.password = password.to_owned();
    }

    /// Sets the `name` claim of a user's id_tokens (default: derived from the
    /// local part, `alice.smith@…` → "Alice Smith").
    pub fn set_display_name(&self, username: &str, name: &str) {
        let mut st = self.st();
        let user = st
            .users
            .get_mut(&username.to_lowercase())
            .unwrap_or_else(|| panic!("IdP::set_display_name: unknown user {username}"));
        user.name = name.to_owned();
    }

    /// The user's object id (`oid` claim of id_tokens).
    pub fn user_oid(&self, username: &str) -> String {
        self.st()
            .users
            .get(&username.to_lowercase())
            .unwrap_or_else(|| panic!("IdP::user_oid: unknown user {username}"))
            .oid
            .clone()
    }

    /// Invalidates every refresh token of `username` (later use: AADSTS70000).
    /// Access tokens stay valid until they expire, as with Entra ID.
    pub fn revoke_refresh_tokens(&self, username: &str) {
        let key = username.to_lowercase();
        self.st()
            .refresh_tokens
            .retain(|_, rt| rt.username.to_lowercase() != key);
    }

    /// When true, redeeming a refresh token invalidates it (the client must
    /// persist the rotated one). Default false: old ones keep working.
    pub fn set_strict_rotation(&self, strict: bool) {
        self.st().strict_rotation = strict;
    }

    // -- The app registration -------------------------------------------------

    /// false (default): a public client ("Allow public client flows" on);
    /// true: a confidential client, every grant needs a client credential
    /// (else 401 `invalid_client` AADSTS7000218).
    pub fn set_confidential(&self, confidential: bool) {
        self.st().confidential = confidential;
    }

    /// Registers a client secret for [`IdP::client_id`] (client_credentials;
    /// also checked on other grants when the client sends one).
    pub fn set_client_secret(&self, secret: &str) {
        self.st().client_secrets.push(secret.to_owned());
    }

    /// The secret (registered or not) has expired: using it gives 401
    /// `invalid_client` AADSTS7000222.
    pub fn expire_client_secret(&self, secret: &str) {
        let mut st = self.st();
        st.client_secrets.retain(|s| s != secret);
        st.expired_secrets.push(secret.to_owned());
    }

    /// Uploads `cert` to the app registration: client assertions signed with
    /// its key and carrying its `x5t#S256` are accepted.
    pub fn register_certificate(&self, cert: &ClientCert) {
        self.register_certificate_der(cert.cert_der(), cert.public_key_pem());
    }

    /// [`IdP::register_certificate`] from parts: the certificate DER (for the
    /// thumbprint) and its public key as SPKI PEM (`BEGIN PUBLIC KEY`).
    pub fn register_certificate_der(&self, cert_der: &[u8], public_key_pem: &str) {
        let public_key = RsaPublicKey::from_public_key_pem(public_key_pem)
            .expect("IdP::register_certificate: not an RSA SPKI public key PEM");
        let thumbprint_s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(cert_der));
        let mut st = self.st();
        st.certificates
            .retain(|c| c.thumbprint_s256 != thumbprint_s256);
        st.certificates.push(RegisteredCert {
            thumbprint_s256,
            public_key,
            expired: false,
        });
    }

    /// Removes the certificate from the app registration (AADSTS700027 "key
    /// was not found" afterwards).
    pub fn unregister_certificate(&self, cert: &ClientCert) {
        let thumbprint = cert.thumbprint_s256();
        self.st()
            .certificates
            .retain(|c| c.thumbprint_s256 != thumbprint);
    }

    /// The registered certificate has passed its end date: assertions signed
    /// with it fail with AADSTS700027 "The key used is expired".
    pub fn expire_certificate(&self, cert: &ClientCert) {
        let thumbprint = cert.thumbprint_s256();
        let mut st = self.st();
        let c = st
            .certificates
            .iter_mut()
            .find(|c| c.thumbprint_s256 == thumbprint)
            .expect("IdP::expire_certificate: certificate not registered");
        c.expired = true;
    }

    /// Header and claims of the latest client assertion that could be
    /// decoded (accepted or not).
    pub fn last_assertion(&self) -> Option<(Value, Value)> {
        self.st().last_assertion.clone()
    }

    /// Grants the app (client_credentials tokens) access to `mailbox`.
    pub fn grant_app_access(&self, mailbox: &str) {
        self.st().app_grants.push(mailbox.to_owned());
    }

    /// Alias of [`IdP::grant_app_access`].
    pub fn app_mailbox_access(&self, mailbox: &str) {
        self.grant_app_access(mailbox);
    }

    /// Accepts this exact redirect URI too (loopback ones are always fine).
    pub fn add_redirect_uri(&self, uri: &str) {
        self.st().redirect_uris.push(uri.to_owned());
    }

    // -- Authorization code flow ----------------------------------------------

    /// Who is signed in in "the browser" that follows authorize URLs (must be
    /// an added user). None (default): the user closes the window, the
    /// authorize request ends in `access_denied` (AADSTS65004), or
    /// `login_required` (AADSTS50058) with `prompt=none`.
    pub fn set_browser_user(&self, username: Option<&str>) {
        let canonical = username.map(|u| self.canonical_user(u, "set_browser_user"));
        self.st().browser_user = canonical;
    }

    /// The signed-in user declines the consent prompt: authorize answers
    /// `access_denied` AADSTS65004.
    pub fn set_consent_denied(&self, denied: bool) {
        self.st().consent_denied = denied;
    }

    /// Whether authorize requests without `code_challenge` are refused
    /// (`invalid_request` AADSTS9002325). Default true.
    pub fn set_pkce_required(&self, required: bool) {
        self.st().pkce_required = required;
    }

    /// Authorization codes older than this fail with AADSTS70008 (default 10
    /// minutes, like Entra).
    pub fn set_auth_code_lifetime(&self, lifetime: Duration) {
        self.st().auth_code_lifetime = lifetime;
    }

    /// Requests to the authorize endpoint.
    pub fn authorize_requests(&self) -> usize {
        self.st().authorize_requests
    }

    /// Query parameters of the latest authorize request (e.g. to check
    /// `code_challenge_method=S256`, `login_hint`, `prompt`).
    pub fn last_authorize_query(&self) -> Option<HashMap<String, String>> {
        self.st().last_authorize_query.clone()
    }

    // -- Device code flow -------------------------------------------------------

    /// Lifetime of new device codes (exact, sub-second; `expires_in` in the
    /// JSON is whole seconds, at least 1) and the `interval` they advertise.
    /// Defaults: 900 s and 5 s, like Entra.
    pub fn set_device_code_timing(&self, expires_in: Duration, interval_secs: u64) {
        let mut st = self.st();
        st.device_expires_in = expires_in;
        st.device_interval = interval_secs;
    }

    /// User codes still waiting for the user (not approved, declined,
    /// redeemed or expired), oldest first.
    pub fn pending_user_codes(&self) -> Vec<String> {
        let now = Instant::now();
        self.st()
            .device_codes
            .iter()
            .filter(|d| matches!(d.state, DeviceState::Pending) && d.expires_at > now)
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// `username` (an added user) enters `user_code` and signs in; the next
    /// poll gets the tokens. Panics on an unknown user code or user.
    pub fn approve_device_code(&self, user_code: &str, username: &str) {
        let canonical = self.canonical_user(username, "approve_device_code");
        let mut st = self.st();
        let entry = st
            .device_codes
            .iter_mut()
            .find(|d| d.user_code.eq_ignore_ascii_case(user_code))
            .unwrap_or_else(|| panic!("IdP::approve_device_code: unknown user code {user_code}"));
        entry.state = DeviceState::Approved(canonical);
    }

    /// The user enters `user_code` and declines: the next poll gets
    /// `authorization_declined`.
    pub fn decline_device_code(&self, user_code: &str) {
        let mut st = self.st();
        let entry = st
            .device_codes
            .iter_mut()
            .find(|d| d.user_code.eq_ignore_ascii_case(user_code))
            .unwrap_or_else(|| panic!("IdP::decline_device_code: unknown user code {user_code}"));
        entry.state = DeviceState::Declined;
    }

    /// The next `n` device-code polls (of a known device code) answer
    /// `slow_down`, whatever the state of the code.
    pub fn slow_down_device_polls(&self, n: usize) {
        self.st().slow_down_polls += n;
    }

    /// When each device-code poll (token request with [`DEVICE_CODE_GRANT`],
    /// injected answers included) arrived, in order.
    pub fn device_poll_times(&self) -> Vec<Instant> {
        self.st().device_poll_times.clone()
    }

    /// Requests to the devicecode endpoint.
    pub fn device_code_requests(&self) -> usize {
        self.st().device_code_requests
    }

    /// Form of the latest devicecode request.
    pub fn last_device_code_form(&self) -> Option<HashMap<String, String>> {
        self.st().last_device_code_form.clone()
    }

    // -- Tokens and faults ------------------------------------------------------

    /// Lifetime of new access tokens: `expires_in` (whole seconds, at least 1)
    /// and the real expiry seen by the introspection endpoint (exact).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.st().token_lifetime = lifetime;
    }

    /// Refresh tokens older than this fail with AADSTS700082. Default: never.
    pub fn set_refresh_token_lifetime(&self, lifetime: Option<Duration>) {
        self.st().refresh_token_lifetime = lifetime;
    }

    /// Ends every access token issued so far: introspection answers
    /// inactive for them, as Exchange refuses tokens after a password
    /// reset or a revoked session. Tokens issued later work.
    pub fn revoke_access_tokens(&self) {
        let now = Instant::now();
        for token in self.st().access_tokens.values_mut() {
            token.expires_at = now;
        }
    }

    /// Length of new opaque access tokens (default 96; real Entra tokens are
    /// JWTs of 1.5–2.5 KB, set ~2000 to exercise long SASL lines).
    pub fn set_access_token_len(&self, len: usize) {
        self.st().access_token_len = len.max(8);
    }

    /// The next `times` token requests (any grant) get this response, with a
    /// `Retry-After: N` header if given. Calls queue up in order. Injected
    /// responses take precedence over [`IdP::set_down`]. Only the token
    /// endpoint is affected.
    pub fn inject(
        &self,
        status: u16,
        body: impl Into<InjectedBody>,
        retry_after: Option<u64>,
        times: usize,
    ) {
        self.push_injection(status, body.into(), None, retry_after, times);
    }

    /// Like [`IdP::inject`] with an error body of Entra's exact shape
    /// (`error`, `error_description` "AADSTS{code}: {message}\r\nTrace ID…",
    /// `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`,
    /// and `suberror` where Entra sends one), e.g. `(400, "invalid_grant",
    /// 50076, "Due to a configuration change made by your administrator, …")`.
    pub fn inject_aad(&self, status: u16, error: &str, code: u32, message: &str, times: usize) {
        let spec = AadSpec {
            error: error.to_owned(),
            code,
            message: message.to_owned(),
        };
        self.push_injection(
            status,
            InjectedBody::Json(Value::Null),
            Some(spec),
            None,
            times,
        );
    }

    fn push_injection(
        &self,
        status: u16,
        body: InjectedBody,
        aad: Option<AadSpec>,
        retry_after: Option<u64>,
        times: usize,
    ) {
        if times == 0 {
            return;
        }
        StatusCode::from_u16(status).expect("IdP::inject: invalid HTTP status");
        self.st().injections.push_back(Injection {
            status,
            body,
            aad,
            retry_after,
            remaining: times,
        });
    }

    /// While down, the token, authorize and devicecode endpoints answer 503
    /// with an HTML body. (Introspection keeps working: Dovecot's view is not
    /// the client's.)
    pub fn set_down(&self, down: bool) {
        self.st().down = down;
    }

    /// From now on the token endpoint answers each request only after
    /// `delay` (counted on arrival), like an overloaded identity platform;
    /// `None` answers at once again. The answer itself is the usual one
    /// (an injection, down, or the grant's result).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.st().delay = delay;
    }

    /// The token endpoint answers only after `delay`; `Duration::ZERO`
    /// answers at once (the same as [`IdP::set_delay`]).
    pub fn set_token_delay(&self, delay: Duration) {
        self.set_delay((!delay.is_zero()).then_some(delay));
    }

    /// Token requests with this `grant_type` (successful or not, injected or
    /// not). Requests without a grant_type count under "". The device-code
    /// grant counts under [`DEVICE_CODE_GRANT`].
    pub fn count(&self, grant_type: &str) -> usize {
        self.st().counts.get(grant_type).copied().unwrap_or(0)
    }

    /// All token-endpoint requests.
    pub fn total_requests(&self) -> usize {
        self.st().total
    }

    /// Calls to the introspection endpoint (one per Dovecot login attempt).
    pub fn introspections(&self) -> usize {
        self.st().introspections
    }

    /// The form fields of the latest token request with this grant_type
    /// (secrets included: this is a test double). A secret sent with HTTP
    /// Basic authentication is not a form field and is not shown.
    pub fn last_form(&self, grant_type: &str) -> Option<HashMap<String, String>> {
        self.st().last_forms.get(grant_type).cloned()
    }

    /// Issues an access token for `username` directly (no HTTP request, not
    /// counted), with the current lifetime; for tests that talk IMAP
    /// themselves. Panics if the user was not added.
    pub fn issue_access_token(&self, username: &str) -> String {
        let canonical = self.canonical_user(username, "issue_access_token");
        self.st().issue_access_token(
            Subject::User(canonical),
            "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All",
        )
    }

    /// Every refresh token issued so far, oldest first, including rotated-away
    /// and revoked ones (e.g. to check none is stored in clear).
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.st().refresh_token_history.clone()
    }

    /// Every access token issued so far (expired ones too), in no order.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.st().access_tokens.keys().cloned().collect()
    }

    /// The scope of every access token issued, in issue order: the granted
    /// scope (without openid/profile/email/offline_access) for user tokens,
    /// the `…/.default` scope for client_credentials tokens.
    pub fn issued_access_token_scopes(&self) -> Vec<String> {
        self.st().issued_scopes.clone()
    }

    /// Every secret the IdP handed out, in order: access, refresh and id
    /// tokens, authorization codes, device codes (not user codes, which are
    /// meant to be shown). For scanning logs and files for leaks.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.st().issued_secrets.clone()
    }

    /// Number of currently valid (issued, not revoked/rotated away) refresh tokens.
    pub fn live_refresh_tokens(&self) -> usize {
        self.st().refresh_tokens.len()
    }
}

impl Drop for IdP {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Plays the browser for the authorization-code flow: GETs `authorize_url`
/// without following redirects and returns the `Location` of the IdP's
/// redirect (success or error, both go to the redirect URI). Any other
/// answer (e.g. the 400 page for an unknown client) is an `Err` with the
/// status and body.
pub async fn browser_sign_in(authorize_url: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let resp = client
        .get(authorize_url)
        .send()
        .await
        .map_err(|e| format!("GET {authorize_url} failed: {e}"))?;
    let status = resp.status();
    if status.is_redirection() {
        return match resp.headers().get(reqwest::header::LOCATION) {
            Some(loc) => loc
                .to_str()
                .map(str::to_owned)
                .map_err(|e| format!("{status} with a non-ASCII Location: {e}")),
            None => Err(format!("{status} without a Location header")),
        };
    }
    let body = resp.text().await.unwrap_or_default();
    Err(format!("{status}: {body}"))
}

// ---------------------------------------------------------------------------
// Helpers

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Nine characters of A–Z and 2–9, like Entra's device-flow user codes.
fn random_user_code() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..9)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn guid() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// "alice.smith@contoso.example" → "Alice Smith".
fn display_name_of(username: &str) -> String {
    let local = username.split('@').next().unwrap_or(username);
    local
        .split(['.', '_', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The key id_tokens are signed with: one per test process, made on first use.
fn idp_signing_key() -> &'static ClientCert {
    static KEY: OnceLock<ClientCert> = OnceLock::new();
    KEY.get_or_init(|| ClientCert::generate("mail2ticket test IdP token signing"))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `application/x-www-form-urlencoded` (also URL query strings), whatever the
/// Content-Type header says. The first occurrence of a repeated key wins.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    let mut map = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.entry(url_decode(k)).or_insert_with(|| url_decode(v));
    }
    map
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The `suberror` Entra adds to some errors (MSAL keys its UI decisions on it).
fn suberror_for(code: u32) -> Option<&'static str> {
    match code {
        50076 | 50079 => Some("basic_action"),
        65001 => Some("consent_required"),
        50173 | 70043 | 700082 => Some("bad_token"),
        _ => None,
    }
}

/// (description, trace id, correlation id, timestamp) of a new Entra error.
fn aad_description(code: u32, message: &str) -> (String, String, String, String) {
    let timestamp = azure_timestamp(unix_now());
    let trace_id = guid();
    let correlation_id = guid();
    let description = format!(
        "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
    );
    (description, trace_id, correlation_id, timestamp)
}

/// The JSON body of an error in Entra ID's exact shape. Like the real
/// service, the parts of `error_description` are separated by CRLF.
fn aad_error_body(url: &str, error: &str, code: u32, message: &str) -> Value {
    let (description, trace_id, correlation_id, timestamp) = aad_description(code, message);
    let mut body = json!({
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("{url}/error?code={code}"),
    });
    if let Some(sub) = suberror_for(code) {
        body["suberror"] = Value::String(sub.to_owned());
    }
    body
}

fn aad_error(url: &str, status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    json_response(status, &aad_error_body(url, error, code, message))
}

fn missing_param(url: &str, name: &str) -> Response {
    aad_error(
        url,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
    )
}

fn invalid_client(url: &str, code: u32, message: &str) -> Response {
    aad_error(
        url,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        code,
        message,
    )
}

fn invalid_grant(url: &str, code: u32, message: &str) -> Response {
    aad_error(url, StatusCode::BAD_REQUEST, "invalid_grant", code, message)
}

fn unknown_tenant(url: &str, tenant: &str) -> Response {
    aad_error(
        url,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        &unknown_tenant_message(tenant),
    )
}

fn unknown_tenant_message(tenant: &str) -> String {
    format!(
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
    )
}

fn unknown_client_message(client_id: &str, tenant: &str) -> String {
    format!(
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
    )
}

fn injected_response(url: &str, inj: &Injection) -> Response {
    let status = StatusCode::from_u16(inj.status).expect("validated in inject()");
    let mut resp = match (&inj.aad, &inj.body) {
        (Some(a), _) => json_response(status, &aad_error_body(url, &a.error, a.code, &a.message)),
        (None, InjectedBody::Json(v)) => json_response(status, v),
        (None, InjectedBody::Text(t)) => html_response(status, t.clone()),
    };
    if let Some(secs) = inj.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

const DOWN_HTML: &str = "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\
<body><h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p></body></html>\n";

fn down_response() -> Response {
    html_response(StatusCode::SERVICE_UNAVAILABLE, DOWN_HTML.to_owned())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page Entra shows when it cannot (or must not) redirect back.
fn error_page(code: u32, message: &str) -> Response {
    let (description, ..) = aad_description(code, message);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>Sign in to your account</title></head><body>\
<h1>Sorry, but we're having trouble signing you in.</h1>\n<p id=\"error\">{}</p>\n</body></html>\n",
        html_escape(&description).replace("\r\n", "<br>\r\n")
    );
    html_response(StatusCode::BAD_REQUEST, body)
}

fn b64url_json(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn has_scope(scope: &str, wanted: &str) -> bool {
    scope
        .split_whitespace()
        .any(|s| s.eq_ignore_ascii_case(wanted))
}

/// Space-separated scopes minus the OpenID Connect ones and `offline_access`
/// (never echoed by Entra ID).
fn granted_scope(scope: &str) -> String {
    scope
        .split_whitespace()
        .filter(|s| {
            !["offline_access", "openid", "profile", "email"]
                .iter()
                .any(|oidc| s.eq_ignore_ascii_case(oidc))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn wants_refresh_token(scope: &str) -> bool {
    has_scope(scope, "offline_access")
}

fn wants_id_token(scope: &str) -> bool {
    has_scope(scope, "openid")
}

/// Loopback redirect URIs on any port, or one added by the test.
fn redirect_uri_allowed(st: &IdpState, uri: &str) -> bool {
    if st.redirect_uris.iter().any(|r| r == uri) {
        return true;
    }
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    u.scheme() == "http"
        && matches!(u.host_str(), Some("localhost" | "127.0.0.1"))
        && u.username().is_empty()
        && u.password().is_none()
        && u.fragment().is_none()
}

/// `{redirect_uri}?k=v&…` (or `&…` if it already has a query).
fn redirect_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{sep}{}", ser.finish());
    // from_bytes: a redirect URI with raw non-ASCII characters still works.
    let Ok(location) = HeaderValue::from_bytes(location.as_bytes()) else {
        return html_response(
            StatusCode::BAD_REQUEST,
            "<html><body>test IdP: redirect URI not usable in a Location header</body></html>"
                .to_owned(),
        );
    };
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert(header::LOCATION, location);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    r
}

/// An authorize error sent back to the client, as Entra does.
fn redirect_error(
    url: &str,
    redirect_uri: &str,
    state: Option<&String>,
    error: &str,
    code: u32,
    message: &str,
) -> Response {
    let (description, ..) = aad_description(code, message);
    let error_uri = format!("{url}/error?code={code}");
    let mut params = vec![
        ("error", error),
        ("error_description", description.as_str()),
        ("error_uri", error_uri.as_str()),
    ];
    if let Some(s) = state {
        params.push(("state", s));
    }
    redirect_to(redirect_uri, &params)
}

impl IdpState {
    fn issue_access_token(&mut self, subject: Subject, scope: &str) -> String {
        let token = loop {
            let t = random_string(self.access_token_len);
            if !self.access_tokens.contains_key(&t) {
                break t;
            }
        };
        self.access_tokens.insert(
            token.clone(),
            AccessToken {
                subject,
                expires_at: Instant::now() + self.token_lifetime,
            },
        );
        self.issued_scopes.push(scope.to_owned());
        self.issued_secrets.push(token.clone());
        token
    }

    fn issue_refresh_token(&mut self, username: &str) -> String {
        let token = loop {
            let t = format!("1.AR{}", random_string(120));
            if !self.refresh_tokens.contains_key(&t) {
                break t;
            }
        };
        self.refresh_token_history.push(token.clone());
        self.issued_secrets.push(token.clone());
        self.refresh_tokens.insert(
            token.clone(),
            RefreshToken {
                username: username.to_owned(),
                issued_at: Instant::now(),
            },
        );
        token
    }

    /// A real RS256-signed v2.0 id_token for `username`.
    fn issue_id_token(&mut self, sh: &Shared, username: &str, nonce: Option<&str>) -> String {
        let (oid, name) = match self.users.get(&username.to_lowercase()) {
            Some(u) => (u.oid.clone(), u.name.clone()),
            None => (guid(), display_name_of(username)),
        };
        let key = idp_signing_key();
        let now = unix_now();
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": key.thumbprint_s256()});
        let mut claims = json!({
            "aud": sh.client_id,
            "iss": sh.issuer(),
            "iat": now,
            "nbf": now,
            "exp": now + ID_TOKEN_LIFETIME_SECS,
            "name": name,
            "oid": oid,
            "preferred_username": username,
            // Entra's `sub` is pairwise: per user and app.
            "sub": URL_SAFE_NO_PAD.encode(Sha256::digest(format!("{oid}|{}", sh.client_id))),
            "tid": sh.tenant,
            "uti": random_string(22),
            "ver": "2.0",
        });
        if let Some(n) = nonce {
            claims["nonce"] = Value::String(n.to_owned());
        }
        let token = key.sign_jwt(&header, &claims);
        self.issued_secrets.push(token.clone());
        token
    }

    fn expires_in(&self) -> u64 {
        self.token_lifetime.as_secs().max(1)
    }

    /// The success answer of every user grant.
    fn user_tokens(
        &mut self,
        sh: &Shared,
        username: &str,
        scope: &str,
        refresh: bool,
        id_token: bool,
        nonce: Option<&str>,
    ) -> Response {
        let granted = granted_scope(scope);
        let access = self.issue_access_token(Subject::User(username.to_owned()), &granted);
        let mut body = json!({
            "token_type": "Bearer",
            "scope": granted,
            "expires_in": self.expires_in(),
            "ext_expires_in": self.expires_in(),
            "access_token": access,
        });
        if refresh {
            body["refresh_token"] = Value::String(self.issue_refresh_token(username));
        }
        if id_token {
            body["id_token"] = Value::String(self.issue_id_token(sh, username, nonce));
        }
        json_response(StatusCode::OK, &body)
    }
}

// ---------------------------------------------------------------------------
// Client authentication

/// A `client_secret` from `Authorization: Basic base64(id:secret)` (RFC 6749
/// §2.3.1: both parts form-urlencoded), which Entra accepts too.
fn basic_auth_secret(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((url_decode(id), url_decode(secret)))
}

/// Checks the client credential the request presents (or must present).
// Err is the finished error response, built at most once per request.
#[allow(clippy::result_large_err)]
fn authenticate_client(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
    basic_secret: Option<&str>,
    grant: &str,
) -> Result<(), Response> {
    let url = sh.url.as_str();
    let form_secret = form.get("client_secret").map(String::as_str);
    let assertion = form.get("client_assertion");
    let assertion_type = form.get("client_assertion_type");
    let has_assertion = assertion.is_some() || assertion_type.is_some();
    let secrets = usize::from(form_secret.is_some()) + usize::from(basic_secret.is_some());
    let presented = secrets + usize::from(has_assertion);

    if grant == "authorization_code" && !st.confidential && presented > 0 {
        return Err(aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        ));
    }
    if presented > 1 {
        return Err(invalid_client(
            url,
            70002,
            "Error validating credentials. More than one client credential was presented: send either 'client_assertion' or 'client_secret' (in the body or with HTTP Basic authentication), not several.",
        ));
    }
    if let Some(secret) = form_secret.or(basic_secret) {
        if st.expired_secrets.iter().any(|s| s == secret) {
            return Err(invalid_client(
                url,
                7000222,
                &format!(
                    "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                    sh.client_id
                ),
            ));
        }
        if !st.client_secrets.iter().any(|s| s == secret) {
            return Err(invalid_client(
                url,
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    sh.client_id
                ),
            ));
        }
    }
    if has_assertion {
        validate_assertion(sh, st, assertion, assertion_type)?;
    }
    if presented == 0 && (st.confidential || grant == "client_credentials") {
        return Err(invalid_client(
            url,
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok(())
}

/// RFC 7523 client assertion, checked the way Entra ID checks certificate
/// credentials. See the module docs for the error codes.
#[allow(clippy::result_large_err)]
fn validate_assertion(
    sh: &Shared,
    st: &mut IdpState,
    assertion: Option<&String>,
    assertion_type: Option<&String>,
) -> Result<(), Response> {
    let url = sh.url.as_str();
    let Some(kind) = assertion_type else {
        return Err(missing_param(url, "client_assertion_type"));
    };
    let Some(jwt) = assertion else {
        return Err(missing_param(url, "client_assertion"));
    };
    if kind != JWT_BEARER_ASSERTION_TYPE {
        return Err(invalid_client(
            url,
            70002,
            &format!(
                "Error validating credentials. The client_assertion_type '{kind}' is not supported; it must be '{JWT_BEARER_ASSERTION_TYPE}'."
            ),
        ));
    }
    let malformed = |why: &str| {
        invalid_client(
            url,
            50027,
            &format!("JWT token is invalid or malformed. [Reason - {why}]"),
        )
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed("A JWS compact serialization has three parts."));
    }
    let (Some(header), Some(claims)) = (b64url_json(parts[0]), b64url_json(parts[1])) else {
        return Err(malformed(
            "The header or payload is not base64url-encoded JSON.",
        ));
    };
    st.last_assertion = Some((header.clone(), claims.clone()));
    let Ok(signature) = URL_SAFE_NO_PAD.decode(parts[2]) else {
        return Err(malformed("The signature is not base64url-encoded."));
    };

    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" {
        return Err(invalid_client(
            url,
            5002738,
            &format!(
                "Invalid JWT token. '{alg}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256'"
            ),
        ));
    }
    let thumbprint = header.get("x5t#S256").and_then(Value::as_str).unwrap_or("");
    let Some(cert) = st
        .certificates
        .iter()
        .find(|c| !thumbprint.is_empty() && c.thumbprint_s256 == thumbprint)
    else {
        return Err(invalid_client(
            url,
            700027,
            &format!(
                "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'. Review the documentation at {CERT_DOCS} .]",
                sh.client_id
            ),
        ));
    };
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    let digest = Sha256::digest(signing_input.as_bytes());
    if cert
        .public_key
        .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &signature)
        .is_err()
    {
        return Err(invalid_client(
            url,
            700027,
            &format!(
                "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{thumbprint}'.]"
            ),
        ));
    }
    if cert.expired {
        return Err(invalid_client(
            url,
            700027,
            &format!(
                "Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '{thumbprint}'.]"
            ),
        ));
    }

    let token_url = sh.token_url();
    let aud = match claims.get("aud") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() > 1 => {
            return Err(invalid_client(
                url,
                5002741,
                &format!(
                    "Number of audience values in the provided client credential exceed maximum allowed. {} audience values provided, maximum allowed is 1.",
                    a.len()
                ),
            ));
        }
        Some(Value::Array(a)) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    if aud != token_url {
        return Err(invalid_client(
            url,
            700023,
            &format!(
                "Client assertion audience claim does not match Realm issuer. The audience in the assertion was '{aud}' and the expected audience is '{token_url}'. Review the documentation at {CERT_DOCS} ."
            ),
        ));
    }
    for claim in ["iss", "sub"] {
        if claims.get(claim).and_then(Value::as_str) != Some(sh.client_id.as_str()) {
            return Err(invalid_client(
                url,
                700021,
                &format!(
                    "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at {CERT_DOCS} ."
                ),
            ));
        }
    }
    let (Some(exp), Some(nbf)) = (
        claims.get("exp").and_then(Value::as_f64),
        claims.get("nbf").and_then(Value::as_f64),
    ) else {
        return Err(malformed(
            "The 'exp' and 'nbf' claims must be present and numeric.",
        ));
    };
    let now = unix_now() as f64;
    if now > exp + CLOCK_SKEW_SECS || nbf > now + CLOCK_SKEW_SECS {
        return Err(invalid_client(
            url,
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at {CERT_DOCS} .",
                azure_timestamp(now as i64),
                azure_timestamp(nbf as i64),
                azure_timestamp(exp as i64)
            ),
        ));
    }
    let jti = match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() => j.to_owned(),
        _ => return Err(malformed("The 'jti' claim must be present.")),
    };
    if st.used_jtis.contains(&jti) {
        return Err(malformed(&format!(
            "The client assertion was replayed: the 'jti' claim '{jti}' was already used. A client assertion can be used only once."
        )));
    }
    st.used_jtis.insert(jti);
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP handlers

async fn token_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let url = sh.url.as_str();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    // Counted on arrival, so a request its client gave up on still counts.
    let delay = {
        let mut st = sh.lock();
        *st.counts.entry(grant.clone()).or_default() += 1;
        st.total += 1;
        st.last_forms.insert(grant.clone(), form.clone());
        if grant == DEVICE_CODE_GRANT {
            st.device_poll_times.push(Instant::now());
        }
        st.delay
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut guard = sh.lock();
    let st = &mut *guard;

    if let Some(front) = st.injections.front_mut() {
        let resp = injected_response(url, front);
        front.remaining -= 1;
        if front.remaining == 0 {
            st.injections.pop_front();
        }
        return resp;
    }
    if st.down {
        return down_response();
    }

    if tenant != sh.tenant {
        return unknown_tenant(url, &tenant);
    }
    if grant.is_empty() {
        return missing_param(url, "grant_type");
    }
    let basic = basic_auth_secret(&headers);
    let client_id = match (form.get("client_id"), &basic) {
        (Some(id), _) => id.clone(),
        (None, Some((id, _))) => id.clone(),
        (None, None) => return missing_param(url, "client_id"),
    };
    if client_id != sh.client_id {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &unknown_client_message(&client_id, &sh.tenant),
        );
    }
    if !KNOWN_GRANTS.contains(&grant.as_str()) {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    if let Err(resp) = authenticate_client(
        &sh,
        st,
        &form,
        basic.as_ref().map(|(_, s)| s.as_str()),
        &grant,
    ) {
        return resp;
    }

    match grant.as_str() {
        "password" => password_grant(&sh, st, &form),
        "refresh_token" => refresh_token_grant(&sh, st, &form),
        "client_credentials" => client_credentials_grant(&sh, st, &form),
        "authorization_code" => authorization_code_grant(&sh, st, &form),
        _ => device_code_grant(&sh, st, &form),
    }
}

fn password_grant(sh: &Shared, st: &mut IdpState, form: &HashMap<String, String>) -> Response {
    let url = sh.url.as_str();
    let Some(username) = form.get("username") else {
        return missing_param(url, "username");
    };
    let Some(password) = form.get("password") else {
        return missing_param(url, "password");
    };
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    let canonical = match st.users.get(&username.to_lowercase()) {
        Some(u) if u.password == *password => u.username.clone(),
        _ => {
            return invalid_grant(
                url,
                50126,
                "Error validating credentials due to invalid username or password.",
            );
        }
    };
    st.user_tokens(
        sh,
        &canonical,
        scope,
        wants_refresh_token(scope),
        wants_id_token(scope),
        None,
    )
}

fn refresh_token_grant(sh: &Shared, st: &mut IdpState, form: &HashMap<String, String>) -> Response {
    let url = sh.url.as_str();
    let Some(old) = form.get("refresh_token") else {
        return missing_param(url, "refresh_token");
    };
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    let Some(rt) = st.refresh_tokens.get(old) else {
        return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
    };
    let username = rt.username.clone();
    if let Some(max) = st.refresh_token_lifetime
        && rt.issued_at.elapsed() > max
    {
        st.refresh_tokens.remove(old);
        return invalid_grant(
            url,
            700082,
            "The refresh token has expired due to inactivity. The token was issued on a date past the configured maximum inactive time.",
        );
    }
    if st.strict_rotation {
        st.refresh_tokens.remove(old);
    }
    // Entra always returns a new refresh token on this grant.
    st.user_tokens(sh, &username, scope, true, wants_id_token(scope), None)
}

fn client_credentials_grant(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
) -> Response {
    let url = sh.url.as_str();
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    if !scope.ends_with("/.default") || scope.split_whitespace().count() != 1 {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    }
    let access = st.issue_access_token(Subject::App, scope);
    // Entra ID sends no `scope` and no refresh token for this grant.
    let body = json!({
        "token_type": "Bearer",
        "expires_in": st.expires_in(),
        "ext_expires_in": st.expires_in(),
        "access_token": access,
    });
    json_response(StatusCode::OK, &body)
}

fn authorization_code_grant(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
) -> Response {
    let url = sh.url.as_str();
    let Some(code) = form.get("code") else {
        return missing_param(url, "code");
    };
    let Some(redirect_uri) = form.get("redirect_uri") else {
        return missing_param(url, "redirect_uri");
    };
    let auth_code_lifetime = st.auth_code_lifetime;
    let Some(entry) = st.auth_codes.get_mut(code) else {
        if code.starts_with(AUTH_CODE_PREFIX) {
            return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
        }
        return invalid_grant(
            url,
            9002313,
            "Invalid request. Request is malformed or invalid.",
        );
    };
    if entry.redeemed {
        return invalid_grant(
            url,
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
        );
    }
    if entry.issued_at.elapsed() > auth_code_lifetime {
        return invalid_grant(
            url,
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        );
    }
    if entry.redirect_uri != *redirect_uri {
        return invalid_grant(
            url,
            50011,
            &format!(
                "The reply address '{redirect_uri}' does not match the reply address '{}' provided when requesting Authorization code.",
                entry.redirect_uri
            ),
        );
    }
    if let Some((challenge, method)) = &entry.challenge {
        let Some(verifier) = form.get("code_verifier") else {
            return missing_param(url, "code_verifier");
        };
        let computed = if method == "S256" {
            pkce_s256(verifier)
        } else {
            verifier.clone()
        };
        if computed != *challenge {
            return invalid_grant(
                url,
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
    }
    entry.redeemed = true;
    let username = entry.username.clone();
    let consented = entry.scope.clone();
    let nonce = entry.nonce.clone();
    let scope = form
        .get("scope")
        .cloned()
        .unwrap_or_else(|| consented.clone());
    st.user_tokens(
        sh,
        &username,
        &scope,
        wants_refresh_token(&consented) || wants_refresh_token(&scope),
        wants_id_token(&consented) || wants_id_token(&scope),
        nonce.as_deref(),
    )
}

fn device_code_grant(sh: &Shared, st: &mut IdpState, form: &HashMap<String, String>) -> Response {
    let url = sh.url.as_str();
    let Some(device_code) = form.get("device_code") else {
        return missing_param(url, "device_code");
    };
    let Some(idx) = st
        .device_codes
        .iter()
        .position(|d| d.device_code == *device_code)
    else {
        return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
    };
    let device_error = |error: &str, code: u32, message: &str| {
        aad_error(url, StatusCode::BAD_REQUEST, error, code, message)
    };
    if st.slow_down_polls > 0 {
        st.slow_down_polls -= 1;
        return device_error(
            "slow_down",
            70016,
            "OAuth 2.0 device flow error. The client is polling too frequently. Slow down: increase the polling interval by 5 seconds.",
        );
    }
    let entry = &mut st.device_codes[idx];
    if matches!(entry.state, DeviceState::Redeemed) {
        return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
    }
    if Instant::now() >= entry.expires_at {
        return device_error("expired_token", 70019, "Verification code expired.");
    }
    let username = match &entry.state {
        DeviceState::Pending => {
            return device_error(
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            );
        }
        DeviceState::Declined => {
            return device_error(
                "authorization_declined",
                70000,
                "The user declined the authorization request on the device login page.",
            );
        }
        DeviceState::Approved(u) => u.clone(),
        DeviceState::Redeemed => unreachable!("handled above"),
    };
    entry.state = DeviceState::Redeemed;
    let scope = entry.scope.clone();
    st.user_tokens(
        sh,
        &username,
        &scope,
        wants_refresh_token(&scope),
        wants_id_token(&scope),
        None,
    )
}

async fn authorize_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = parse_form(query.unwrap_or_default().as_bytes());
    let url = sh.url.as_str();
    let mut guard = sh.lock();
    let st = &mut *guard;
    st.authorize_requests += 1;
    st.last_authorize_query = Some(q.clone());
    if st.down {
        return down_response();
    }

    // Errors before the redirect URI is known to be ours: an error page.
    if tenant != sh.tenant {
        return error_page(90002, &unknown_tenant_message(&tenant));
    }
    let page_missing = |name: &str| {
        error_page(
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let Some(client_id) = q.get("client_id") else {
        return page_missing("client_id");
    };
    if *client_id != sh.client_id {
        return error_page(700016, &unknown_client_message(client_id, &sh.tenant));
    }
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return page_missing("redirect_uri");
    };
    if !redirect_uri_allowed(st, redirect_uri) {
        return error_page(
            50011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.",
                sh.client_id
            ),
        );
    }
    if let Some(mode) = q.get("response_mode")
        && mode != "query"
    {
        // Entra supports fragment and form_post too; this imitation does not.
        return html_response(
            StatusCode::BAD_REQUEST,
            format!(
                "<html><body>test IdP: response_mode '{}' is not imitated, use 'query'</body></html>",
                html_escape(mode)
            ),
        );
    }

    // From here on errors go back to the client.
    let state = q.get("state");
    let back = |error: &str, code: u32, message: &str| {
        redirect_error(url, redirect_uri, state, error, code, message)
    };
    match q.get("response_type").map(String::as_str) {
        None => {
            return back(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'response_type'.",
            );
        }
        Some("code") => {}
        Some(other) => {
            return back(
                "unsupported_response_type",
                70005,
                &format!("response_type '{other}' is not enabled for the application."),
            );
        }
    }
    let Some(scope) = q.get("scope") else {
        return back(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let challenge = match q.get("code_challenge") {
        None if st.pkce_required => {
            return back(
                "invalid_request",
                9002325,
                "Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
            );
        }
        None => None,
        Some(c) => {
            // Like Entra, a missing method means "plain".
            let method = q
                .get("code_challenge_method")
                .cloned()
                .unwrap_or_else(|| "plain".to_owned());
            if method != "S256" && method != "plain" {
                return back(
                    "invalid_request",
                    501492,
                    &format!(
                        "Invalid code_challenge_method '{method}'. Supported methods are 'plain' and 'S256'."
                    ),
                );
            }
            if !(43..=128).contains(&c.len()) {
                return back(
                    "invalid_request",
                    501491,
                    "Invalid size of Code_Challenge parameter.",
                );
            }
            Some((c.clone(), method))
        }
    };
    let Some(username) = st.browser_user.clone() else {
        if q.get("prompt").map(String::as_str) == Some("none") {
            return back(
                "login_required",
                50058,
                "A silent sign-in request was sent but no user is signed in.",
            );
        }
        return back(
            "access_denied",
            65004,
            "User declined to consent to access the app.",
        );
    };
    if st.consent_denied {
        return back(
            "access_denied",
            65004,
            "User declined to consent to access the app.",
        );
    }
    let code = loop {
        let c = format!("{AUTH_CODE_PREFIX}{}", random_string(300));
        if !st.auth_codes.contains_key(&c) {
            break c;
        }
    };
    st.issued_secrets.push(code.clone());
    st.auth_codes.insert(
        code.clone(),
        AuthCode {
            username,
            redirect_uri: redirect_uri.clone(),
            scope: scope.clone(),
            challenge,
            nonce: q.get("nonce").cloned(),
            issued_at: Instant::now(),
            redeemed: false,
        },
    );
    let session_state = guid();
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = state {
        params.push(("state", s.as_str()));
    }
    params.push(("session_state", session_state.as_str()));
    redirect_to(redirect_uri, &params)
}

async fn devicecode_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let url = sh.url.as_str();
    let mut guard = sh.lock();
    let st = &mut *guard;
    st.device_code_requests += 1;
    st.last_device_code_form = Some(form.clone());
    if st.down {
        return down_response();
    }
    if tenant != sh.tenant {
        return unknown_tenant(url, &tenant);
    }
    // A client that authenticates with HTTP Basic may name itself only there.
    let client_id = match (form.get("client_id"), basic_auth_secret(&headers)) {
        (Some(id), _) => id.clone(),
        (None, Some((id, _))) => id,
        (None, None) => return missing_param(url, "client_id"),
    };
    if client_id != sh.client_id {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &unknown_client_message(&client_id, &sh.tenant),
        );
    }
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    let device_code = format!("{DEVICE_CODE_PREFIX}{}", random_string(200));
    let user_code = loop {
        let c = random_user_code();
        if !st.device_codes.iter().any(|d| d.user_code == c) {
            break c;
        }
    };
    st.issued_secrets.push(device_code.clone());
    st.device_codes.push(DeviceCode {
        device_code: device_code.clone(),
        user_code: user_code.clone(),
        scope: scope.clone(),
        expires_at: Instant::now() + st.device_expires_in,
        state: DeviceState::Pending,
    });
    let verification_uri = format!("{url}/devicelogin");
    let body = json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": verification_uri,
        "expires_in": st.device_expires_in.as_secs().max(1),
        "interval": st.device_interval,
        "message": format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."
        ),
    });
    json_response(StatusCode::OK, &body)
}

async fn devicelogin_page() -> Response {
    html_response(
        StatusCode::OK,
        "<!DOCTYPE html>\n<html><head><title>Enter code</title></head><body><h1>Enter code</h1>\
<p>Enter the code displayed on your app or device. (Test IdP: approve with IdP::approve_device_code.)</p></body></html>\n"
            .to_owned(),
    )
}

async fn openid_configuration(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
) -> Response {
    let url = sh.url.as_str();
    if tenant != sh.tenant {
        return unknown_tenant(url, &tenant);
    }
    let base = format!("{url}/{tenant}");
    let body = json!({
        "issuer": sh.issuer(),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "tenant_region_scope": "EU",
    });
    json_response(StatusCode::OK, &body)
}

async fn jwks_endpoint(State(sh): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    if tenant != sh.tenant {
        return unknown_tenant(&sh.url, &tenant);
    }
    let key = idp_signing_key();
    let public = RsaPublicKey::from_public_key_pem(key.public_key_pem())
        .expect("the IdP's own public key PEM is valid");
    let body = json!({
        "keys": [{
            "kty": "RSA",
            "use": "sig",
            "kid": key.thumbprint_s256(),
            "x5t#S256": key.thumbprint_s256(),
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            "x5c": [key.cert_base64()],
            "issuer": sh.issuer(),
        }]
    });
    json_response(StatusCode::OK, &body)
}

/// Dovecot posts `token=<access token>` and reads `active` and `username`.
///
/// User tokens (from any grant) name their user. App-only
/// (client_credentials) tokens carry no user, and Dovecot posts only the
/// token, so the reply can name a mailbox only when it is unambiguous: such a
/// token is active only if exactly one mailbox was granted with
/// [`IdP::grant_app_access`], and the reply names that mailbox.
/// (Limitation: Exchange checks the XOAUTH2 `user=` against the grants; we
/// cannot see it here.)
async fn introspect_endpoint(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let mut st = sh.lock();
    st.introspections += 1;
    let inactive = json!({ "active": false });
    let Some(token) = form.get("token") else {
        return json_response(StatusCode::OK, &inactive);
    };
    let reply = match st.access_tokens.get(token) {
        Some(at) if at.expires_at > Instant::now() => match &at.subject {
            Subject::User(u) => json!({ "active": true, "username": u }),
            Subject::App if st.app_grants.len() == 1 => {
                json!({ "active": true, "username": st.app_grants[0] })
            }
            Subject::App => inactive,
        },
        _ => inactive,
    };
    json_response(StatusCode::OK, &reply)
}
