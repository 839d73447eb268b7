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
//! # One resource per token
//! A token request whose scope names two resources (say Graph's
//! `Mail.ReadWrite` and Outlook's `IMAP.AccessAsUser.All`) is refused with
//! 400 `invalid_scope` AADSTS28000, on every grant and on the devicecode
//! endpoint; a refresh token stays redeemable for any one resource at a
//! time. Each access token remembers its scope and audience; other
//! stand-ins ask [`IdP::lookup`] / [`IdP::access_token_info`] about it.
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
/// The resource (audience) of Microsoft Graph in the global cloud.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
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

mod authorize;
mod client_auth;
mod control;
mod device;
mod discovery;
pub(crate) mod helpers;
mod lookup;
mod state;
mod token;

// The endpoints, the state and the handle share one namespace, as they did
// in one file; each part brings it in with `use super::*`.
use authorize::*;
use client_auth::*;
use device::*;
use discovery::*;
use helpers::*;
use state::*;
use token::*;

pub use control::{IdP, browser_sign_in};
pub use lookup::{AccessTokenInfo, IdpLookup, TokenSubject, scope_audience};
pub use state::InjectedBody;
