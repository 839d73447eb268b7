//! `IdP`: an imitation of Microsoft Entra ID's (Azure AD) v2.0 token endpoint,
//! plus an RFC 7662-style introspection endpoint that Dovecot's oauth2 passdb
//! asks on every login (`introspection_mode = post`).
//!
//! The server runs on its own OS thread with its own tokio runtime, so it keeps
//! answering whatever the test thread does (a current-thread `#[tokio::test]`,
//! a blocking test waiting on a child process, a benchmark). It stops on Drop.
//!
//! Routes:
//! - `POST /{tenant}/oauth2/v2.0/token` — grants `password`, `refresh_token`,
//!   `client_credentials`, with Azure's error bodies (AADSTS codes).
//! - `POST /introspect` — form `token=...`; `{"active":true,"username":U}` or
//!   `{"active":false}`. Never carries `expires_in`: Dovecot does not check
//!   expiry itself, it asks on every login, and expiry is decided here.
//!
//! Room for later (NOT implemented yet):
//! - `POST /{tenant}/oauth2/v2.0/devicecode` (device-code flow; the token
//!   endpoint would then also accept
//!   `grant_type=urn:ietf:params:oauth:grant-type:device_code`),
//! - `GET /{tenant}/oauth2/v2.0/authorize` (authorization-code flow with PKCE;
//!   the token endpoint would then also accept `grant_type=authorization_code`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use super::time::{azure_timestamp, unix_now};

/// Default tenant GUID in the token URL path.
pub const DEFAULT_TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
/// Default (and only registered) application (client) id.
pub const DEFAULT_CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000c1";

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

struct Injection {
    status: u16,
    body: InjectedBody,
    retry_after: Option<u64>,
    remaining: usize,
}

enum Subject {
    User(String),
    App,
}

struct AccessToken {
    subject: Subject,
    #[allow(dead_code)]
    scope: String,
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
}

struct IdpState {
    /// Keyed by lower-cased username (UPNs are case-insensitive).
    users: HashMap<String, User>,
    client_secrets: Vec<String>,
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
    counts: HashMap<String, usize>,
    total: usize,
    introspections: usize,
    last_forms: HashMap<String, HashMap<String, String>>,
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
                counts: HashMap::new(),
                total: 0,
                introspections: 0,
                last_forms: HashMap::new(),
            }),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
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

    /// `{url}/{tenant}/oauth2/v2.0/token`
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.shared.url, self.shared.tenant
        )
    }

    /// `{url}/introspect` — give this to [`super::Dovecot::start`].
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.shared.url)
    }

    /// Adds (or replaces) a user. Usernames are case-insensitive, like UPNs.
    pub fn add_user(&self, username: &str, password: &str) {
        self.st().users.insert(
            username.to_lowercase(),
            User {
                username: username.to_owned(),
                password: password.to_owned(),
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

    /// Registers a client secret for [`IdP::client_id`] (client_credentials;
    /// also checked on other grants when the client sends one).
    pub fn set_client_secret(&self, secret: &str) {
        self.st().client_secrets.push(secret.to_owned());
    }

    /// Grants the app (client_credentials tokens) access to `mailbox`.
    pub fn grant_app_access(&self, mailbox: &str) {
        self.st().app_grants.push(mailbox.to_owned());
    }

    /// Alias of [`IdP::grant_app_access`].
    pub fn app_mailbox_access(&self, mailbox: &str) {
        self.grant_app_access(mailbox);
    }

    /// Lifetime of new access tokens: `expires_in` (whole seconds, at least 1)
    /// and the real expiry seen by the introspection endpoint (exact).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.st().token_lifetime = lifetime;
    }

    /// Refresh tokens older than this fail with AADSTS700082. Default: never.
    pub fn set_refresh_token_lifetime(&self, lifetime: Option<Duration>) {
        self.st().refresh_token_lifetime = lifetime;
    }

    /// Length of new opaque access tokens (default 96; real Entra tokens are
    /// JWTs of 1.5–2.5 KB, set ~2000 to exercise long SASL lines).
    pub fn set_access_token_len(&self, len: usize) {
        self.st().access_token_len = len.max(8);
    }

    /// The next `times` token requests (any grant) get this response, with a
    /// `Retry-After: N` header if given. Calls queue up in order. Injected
    /// responses take precedence over [`IdP::set_down`].
    pub fn inject(
        &self,
        status: u16,
        body: impl Into<InjectedBody>,
        retry_after: Option<u64>,
        times: usize,
    ) {
        if times == 0 {
            return;
        }
        StatusCode::from_u16(status).expect("IdP::inject: invalid HTTP status");
        self.st().injections.push_back(Injection {
            status,
            body: body.into(),
            retry_after,
            remaining: times,
        });
    }

    /// While down, the token endpoint answers 503 with an HTML body.
    /// (Introspection keeps working: Dovecot's view is not the client's.)
    pub fn set_down(&self, down: bool) {
        self.st().down = down;
    }

    /// Token requests with this `grant_type` (successful or not, injected or
    /// not). Requests without a grant_type count under "".
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
    /// (secrets included: this is a test double).
    pub fn last_form(&self, grant_type: &str) -> Option<HashMap<String, String>> {
        self.st().last_forms.get(grant_type).cloned()
    }

    /// Issues an access token for `username` directly (no HTTP request, not
    /// counted), with the current lifetime; for tests that talk IMAP
    /// themselves. Panics if the user was not added.
    pub fn issue_access_token(&self, username: &str) -> String {
        let mut st = self.st();
        let canonical = st
            .users
            .get(&username.to_lowercase())
            .unwrap_or_else(|| panic!("IdP::issue_access_token: unknown user {username}"))
            .username
            .clone();
        st.issue_access_token(
            Subject::User(canonical),
            "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All",
        )
    }

    /// Every refresh token issued so far, oldest first, including rotated-away
    /// and revoked ones (e.g. to check none is stored in clear).
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.st().refresh_token_history.clone()
    }

    /// Every access token issued so far (expired ones too).
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.st().access_tokens.keys().cloned().collect()
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

// ---------------------------------------------------------------------------
// HTTP handlers

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
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

/// `application/x-www-form-urlencoded`, whatever the Content-Type header says.
/// The first occurrence of a repeated key wins.
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

/// An error in Entra ID's exact shape. Like the real service, the parts of
/// `error_description` are separated by CRLF.
fn aad_error(url: &str, status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let timestamp = azure_timestamp(unix_now());
    let trace_id = guid();
    let correlation_id = guid();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("{url}/error?code={code}"),
    });
    json_response(status, &body)
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

fn injected_response(inj: &Injection) -> Response {
    let status = StatusCode::from_u16(inj.status).expect("validated in inject()");
    let mut resp = match &inj.body {
        InjectedBody::Json(v) => json_response(status, v),
        InjectedBody::Text(t) => {
            let mut r = (status, t.clone()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
    };
    if let Some(secs) = inj.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

const DOWN_HTML: &str = "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\
<body><h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p></body></html>\n";

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
                scope: scope.to_owned(),
                expires_at: Instant::now() + self.token_lifetime,
            },
        );
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
        self.refresh_tokens.insert(
            token.clone(),
            RefreshToken {
                username: username.to_owned(),
                issued_at: Instant::now(),
            },
        );
        token
    }

    fn expires_in(&self) -> u64 {
        self.token_lifetime.as_secs().max(1)
    }
}

/// Space-separated scopes minus `offline_access` (never echoed by Entra ID).
fn granted_scope(scope: &str) -> String {
    scope
        .split_whitespace()
        .filter(|s| !s.eq_ignore_ascii_case("offline_access"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn wants_refresh_token(scope: &str) -> bool {
    scope
        .split_whitespace()
        .any(|s| s.eq_ignore_ascii_case("offline_access"))
}

async fn token_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let url = sh.url.as_str();
    let mut st = sh.lock();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    *st.counts.entry(grant.clone()).or_default() += 1;
    st.total += 1;
    st.last_forms.insert(grant.clone(), form.clone());

    if let Some(front) = st.injections.front_mut() {
        let resp = injected_response(front);
        front.remaining -= 1;
        if front.remaining == 0 {
            st.injections.pop_front();
        }
        return resp;
    }
    if st.down {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, DOWN_HTML).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return r;
    }

    if tenant != sh.tenant {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        );
    }
    if grant.is_empty() {
        return missing_param(url, "grant_type");
    }
    let Some(client_id) = form.get("client_id") else {
        return missing_param(url, "client_id");
    };
    if *client_id != sh.client_id {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                sh.tenant
            ),
        );
    }
    let bad_secret = || {
        aad_error(
            url,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                sh.client_id
            ),
        )
    };
    if let Some(secret) = form.get("client_secret")
        && !st.client_secrets.contains(secret)
    {
        return bad_secret();
    }

    match grant.as_str() {
        "password" => {
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
                    return aad_error(
                        url,
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        50126,
                        "Error validating credentials due to invalid username or password.",
                    );
                }
            };
            let granted = granted_scope(scope);
            let access = st.issue_access_token(Subject::User(canonical.clone()), &granted);
            let mut body = json!({
                "token_type": "Bearer",
                "scope": granted,
                "expires_in": st.expires_in(),
                "ext_expires_in": st.expires_in(),
                "access_token": access,
            });
            if wants_refresh_token(scope) {
                body["refresh_token"] = Value::String(st.issue_refresh_token(&canonical));
            }
            json_response(StatusCode::OK, &body)
        }
        "refresh_token" => {
            let Some(old) = form.get("refresh_token") else {
                return missing_param(url, "refresh_token");
            };
            let Some(scope) = form.get("scope") else {
                return missing_param(url, "scope");
            };
            let Some(rt) = st.refresh_tokens.get(old) else {
                return aad_error(
                    url,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed.",
                );
            };
            let username = rt.username.clone();
            if let Some(max) = st.refresh_token_lifetime
                && rt.issued_at.elapsed() > max
            {
                st.refresh_tokens.remove(old);
                return aad_error(
                    url,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    700082,
                    "The refresh token has expired due to inactivity. The token was issued on a date past the configured maximum inactive time.",
                );
            }
            if st.strict_rotation {
                st.refresh_tokens.remove(old);
            }
            let granted = granted_scope(scope);
            let access = st.issue_access_token(Subject::User(username.clone()), &granted);
            let refresh = st.issue_refresh_token(&username);
            let body = json!({
                "token_type": "Bearer",
                "scope": granted,
                "expires_in": st.expires_in(),
                "ext_expires_in": st.expires_in(),
                "access_token": access,
                "refresh_token": refresh,
            });
            json_response(StatusCode::OK, &body)
        }
        "client_credentials" => {
            if !form.contains_key("client_secret") {
                return aad_error(
                    url,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                );
            }
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
        other => aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
    }
}

/// Dovecot posts `token=<access token>` and reads `active` and `username`.
///
/// App-only (client_credentials) tokens carry no user, and Dovecot posts
/// only the token, so the reply can name a mailbox only when it is
/// unambiguous: such a token is active only if exactly one mailbox was
/// granted with [`IdP::grant_app_access`], and the reply names that mailbox.
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
