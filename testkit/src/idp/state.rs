//! The stand-in's state: users, clients, issued tokens and codes, injected
//! faults, and the bookkeeping on them the endpoints share.

use super::*;

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
pub(crate) struct AadSpec {
    pub(crate) error: String,
    pub(crate) code: u32,
    pub(crate) message: String,
}

pub(crate) struct Injection {
    pub(crate) status: u16,
    pub(crate) body: InjectedBody,
    /// When set, replaces `body` with an Entra error body.
    pub(crate) aad: Option<AadSpec>,
    pub(crate) retry_after: Option<u64>,
    pub(crate) remaining: usize,
}

pub(crate) enum Subject {
    User(String),
    App,
}

pub(crate) struct AccessToken {
    pub(crate) subject: Subject,
    /// The granted scope (without the OpenID Connect scopes), as in the
    /// token response; other stand-ins read the audience from it.
    pub(crate) scope: String,
    pub(crate) expires_at: Instant,
}

pub(crate) struct RefreshToken {
    /// Canonical (as added) username.
    pub(crate) username: String,
    pub(crate) issued_at: Instant,
}

pub(crate) struct User {
    pub(crate) username: String,
    pub(crate) password: String,
    /// Object id (stable per user, also in id_tokens).
    pub(crate) oid: String,
    /// Display name (`name` claim).
    pub(crate) name: String,
}

pub(crate) struct RegisteredCert {
    pub(crate) thumbprint_s256: String,
    pub(crate) public_key: RsaPublicKey,
    pub(crate) expired: bool,
}

pub(crate) struct AuthCode {
    /// Canonical username.
    pub(crate) username: String,
    pub(crate) redirect_uri: String,
    pub(crate) scope: String,
    /// (code_challenge, method "S256" or "plain").
    pub(crate) challenge: Option<(String, String)>,
    pub(crate) nonce: Option<String>,
    pub(crate) issued_at: Instant,
    pub(crate) redeemed: bool,
}

pub(crate) enum DeviceState {
    Pending,
    /// Approved by this (canonical) user.
    Approved(String),
    Declined,
    Redeemed,
}

pub(crate) struct DeviceCode {
    pub(crate) device_code: String,
    pub(crate) user_code: String,
    pub(crate) scope: String,
    pub(crate) expires_at: Instant,
    pub(crate) state: DeviceState,
}

pub(crate) struct IdpState {
    /// Keyed by lower-cased username (UPNs are case-insensitive).
    pub(crate) users: HashMap<String, User>,
    pub(crate) client_secrets: Vec<String>,
    pub(crate) expired_secrets: Vec<String>,
    pub(crate) confidential: bool,
    pub(crate) certificates: Vec<RegisteredCert>,
    pub(crate) used_jtis: HashSet<String>,
    pub(crate) last_assertion: Option<(Value, Value)>,
    pub(crate) app_grants: Vec<String>,
    pub(crate) access_tokens: HashMap<String, AccessToken>,
    pub(crate) refresh_tokens: HashMap<String, RefreshToken>,
    /// Every refresh token ever issued, in order (rotated/revoked ones too).
    pub(crate) refresh_token_history: Vec<String>,
    pub(crate) strict_rotation: bool,
    pub(crate) token_lifetime: Duration,
    pub(crate) refresh_token_lifetime: Option<Duration>,
    pub(crate) access_token_len: usize,
    pub(crate) injections: VecDeque<Injection>,
    pub(crate) down: bool,
    /// How long the token endpoint waits before it answers.
    pub(crate) delay: Option<Duration>,
    pub(crate) counts: HashMap<String, usize>,
    pub(crate) total: usize,
    pub(crate) introspections: usize,
    pub(crate) last_forms: HashMap<String, HashMap<String, String>>,
    // Authorization code flow.
    pub(crate) redirect_uris: Vec<String>,
    pub(crate) browser_user: Option<String>,
    pub(crate) consent_denied: bool,
    pub(crate) pkce_required: bool,
    pub(crate) auth_code_lifetime: Duration,
    pub(crate) auth_codes: HashMap<String, AuthCode>,
    pub(crate) authorize_requests: usize,
    pub(crate) last_authorize_query: Option<HashMap<String, String>>,
    // Device code flow.
    pub(crate) device_codes: Vec<DeviceCode>,
    pub(crate) device_expires_in: Duration,
    pub(crate) device_interval: u64,
    pub(crate) slow_down_polls: usize,
    pub(crate) device_poll_times: Vec<Instant>,
    pub(crate) device_code_requests: usize,
    pub(crate) last_device_code_form: Option<HashMap<String, String>>,
    // Observation.
    pub(crate) issued_scopes: Vec<String>,
    pub(crate) issued_secrets: Vec<String>,
}

pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) tenant: String,
    pub(crate) client_id: String,
    pub(crate) state: Mutex<IdpState>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, IdpState> {
        // A panicking handler must not take the whole IdP down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.url, self.tenant)
    }

    pub(crate) fn issuer(&self) -> String {
        format!("{}/{}/v2.0", self.url, self.tenant)
    }
}

impl IdpState {
    pub(crate) fn issue_access_token(&mut self, subject: Subject, scope: &str) -> String {
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
        self.issued_scopes.push(scope.to_owned());
        self.issued_secrets.push(token.clone());
        token
    }

    pub(crate) fn issue_refresh_token(&mut self, username: &str) -> String {
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
    pub(crate) fn issue_id_token(
        &mut self,
        sh: &Shared,
        username: &str,
        nonce: Option<&str>,
    ) -> String {
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

    pub(crate) fn expires_in(&self) -> u64 {
        self.token_lifetime.as_secs().max(1)
    }

    /// The success answer of every user grant.
    pub(crate) fn user_tokens(
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
