//! [`IdP`], the handle a test holds: starting the stand-in, registering
//! users and clients, injecting faults, reading what was asked of it.

use super::*;

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

    pub(crate) fn st(&self) -> MutexGuard<'_, IdpState> {
        self.shared.lock()
    }

    /// Canonical username of an added user; panics (naming `what`) otherwise.
    pub(crate) fn canonical_user(&self, username: &str, what: &str) -> String {
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

    /// `{url}/introspect` — give this to [`crate::Dovecot::start`].
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

    pub(crate) fn push_injection(
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

    /// Issues an access token for `username` with this `scope` directly (no
    /// HTTP request, not counted; the scope is recorded as given). Panics if
    /// the user was not added. E.g. a Graph token for a stand-in test.
    pub fn issue_access_token_with_scope(&self, username: &str, scope: &str) -> String {
        let canonical = self.canonical_user(username, "issue_access_token_with_scope");
        self.st()
            .issue_access_token(Subject::User(canonical), &granted_scope(scope))
    }

    /// Issues an app-only access token for `scope` (e.g.
    /// `https://graph.microsoft.com/.default`) directly, not counted.
    pub fn issue_app_access_token(&self, scope: &str) -> String {
        self.st().issue_access_token(Subject::App, scope)
    }

    /// What the IdP knows about `token` (subject, scope, audience, expiry);
    /// `None` if it never issued it.
    pub fn access_token_info(&self, token: &str) -> Option<AccessTokenInfo> {
        self.lookup().access_token_info(token)
    }

    /// A handle other stand-ins keep to validate bearer tokens in process.
    pub fn lookup(&self) -> IdpLookup {
        IdpLookup::new(self.shared.clone())
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
