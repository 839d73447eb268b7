//! Helpers for tests that talk to the identity-provider stand-in over HTTP
//! the way a client would: token requests, authorize URLs with PKCE, the
//! device code endpoints, JWT inspection, Entra error assertions.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::{DEVICE_CODE_GRANT, IdP, OUTLOOK_SCOPE, browser_sign_in};

pub const USER: &str = "alice@contoso.example";
pub const PASSWORD: &str = "correct horse battery staple";

/// POSTs a form to the token endpoint; returns (status, Retry-After, JSON or
/// a JSON string holding the raw body).
pub async fn post_token(idp: &IdP, form: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let resp = reqwest::Client::new()
        .post(idp.token_url())
        .form(form)
        .send()
        .await
        .expect("token request failed at the HTTP level");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("Retry-After not ASCII").to_owned());
    let text = resp.text().await.expect("cannot read the token response");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry_after, body)
}

pub async fn password_grant(idp: &IdP, user: &str, password: &str, scope: &str) -> (u16, Value) {
    let (status, _, body) = post_token(
        idp,
        &[
            ("grant_type", "password"),
            ("client_id", idp.client_id()),
            ("username", user),
            ("password", password),
            ("scope", scope),
        ],
    )
    .await;
    (status, body)
}

pub async fn access_token(idp: &IdP, user: &str, password: &str) -> String {
    let (status, body) = password_grant(idp, user, password, OUTLOOK_SCOPE).await;
    assert_eq!(status, 200, "password grant failed: {body}");
    body["access_token"]
        .as_str()
        .expect("no access_token in the token response")
        .to_owned()
}

pub async fn refresh(idp: &IdP, refresh_token: &str, scope: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", idp.client_id()),
        ("refresh_token", refresh_token),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let (status, _, body) = post_token(idp, &form).await;
    (status, body)
}

pub fn assert_aad_error(body: &Value, error: &str, code: u64) {
    assert_eq!(body["error"], error, "wrong error in {body}");
    assert_eq!(
        body["error_codes"],
        json!([code]),
        "wrong error_codes in {body}"
    );
    let desc = body["error_description"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_description in {body}"));
    assert!(
        desc.starts_with(&format!("AADSTS{code}: ")),
        "bad description {desc:?}"
    );
    for part in ["Trace ID: ", "Correlation ID: ", "Timestamp: 20"] {
        assert!(desc.contains(part), "description lacks {part:?}: {desc:?}");
    }
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }
    assert!(
        body["timestamp"].as_str().unwrap().ends_with('Z'),
        "timestamp not UTC: {body}"
    );
    assert!(
        body["error_uri"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/error?code={code}"))),
        "bad error_uri in {body}"
    );
}

pub const IMAP_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
pub const LOOPBACK_REDIRECT: &str = "http://127.0.0.1:53117/callback";

pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// (code_verifier, S256 code_challenge) as RFC 7636 appendix B computes them.
pub fn pkce_pair() -> (String, String) {
    use sha2::Digest;
    let verifier = b64url(&rand::random::<[u8; 32]>());
    let challenge = b64url(&sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub fn authorize_url(idp: &IdP, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&idp.authorize_url()).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

/// A complete authorize request for `redirect_uri` with this challenge.
pub fn pkce_authorize_url(idp: &IdP, redirect_uri: &str, scope: &str, challenge: &str) -> String {
    authorize_url(
        idp,
        &[
            ("client_id", idp.client_id()),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("scope", scope),
            ("state", "s-1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    )
}

/// Query parameters of a redirect Location.
pub fn location_query(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap_or_else(|e| panic!("Location {location:?} is not a URL: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// Asserts a redirect carries an Entra error and returns its parameters.
pub fn assert_redirect_error(location: &str, error: &str, code: u32) -> HashMap<String, String> {
    let q = location_query(location);
    assert_eq!(
        q.get("error").map(String::as_str),
        Some(error),
        "{location}"
    );
    let desc = &q["error_description"];
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc:?}");
    assert!(desc.contains("\r\nTrace ID: "), "{desc:?}");
    assert!(
        !q.contains_key("code"),
        "error redirect with a code: {location}"
    );
    q
}

pub async fn signed_in_code(idp: &IdP, scope: &str, challenge: &str) -> String {
    let location = browser_sign_in(&pkce_authorize_url(
        idp,
        LOOPBACK_REDIRECT,
        scope,
        challenge,
    ))
    .await
    .expect("authorize did not redirect");
    location_query(&location)
        .remove("code")
        .unwrap_or_else(|| panic!("no code in {location}"))
}

pub async fn redeem_code(
    idp: &IdP,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", idp.client_id()),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("scope", IMAP_SCOPE),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    form.extend_from_slice(extra);
    let (status, _, body) = post_token(idp, &form).await;
    (status, body)
}

/// Header and claims of a JWT, without checking anything.
pub fn jwt_parts(jwt: &str) -> (Value, Value) {
    use base64::Engine;
    let mut parts = jwt.split('.');
    let mut next = || {
        let part = parts.next().expect("JWT has too few parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("JWT part is not base64url");
        serde_json::from_slice::<Value>(&bytes).expect("JWT part is not JSON")
    };
    (next(), next())
}

pub async fn introspect(idp: &IdP, token: &str) -> Value {
    reqwest::Client::new()
        .post(idp.introspection_url())
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn device_code_request(idp: &IdP, client_id: &str, scope: Option<&str>) -> (u16, Value) {
    let mut form = vec![("client_id", client_id)];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let resp = reqwest::Client::new()
        .post(idp.device_code_url())
        .form(&form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

pub async fn device_poll(idp: &IdP, device_code: &str) -> (u16, Value) {
    let (status, _, body) = post_token(
        idp,
        &[
            ("grant_type", DEVICE_CODE_GRANT),
            ("client_id", idp.client_id()),
            ("device_code", device_code),
        ],
    )
    .await;
    (status, body)
}
