//! The identity-provider stand-in's browser flow: authorization code with
//! PKCE, Entra's authorize errors, public and confidential clients.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::idp_client::*;
use common::{
    DEFAULT_CLIENT_ID, DEVICE_CODE_GRANT, IdP, JWT_BEARER_ASSERTION_TYPE, OUTLOOK_SCOPE,
    browser_sign_in,
};
use serde_json::json;

#[tokio::test]
async fn authorization_code_with_pkce() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    idp.set_browser_user(Some("ALICE@contoso.example"));
    let (verifier, challenge) = pkce_pair();
    let state = "xyz/+ &=é~%20";
    let scope = format!("openid profile offline_access {IMAP_SCOPE}");
    let url = authorize_url(
        &idp,
        &[
            ("client_id", idp.client_id()),
            ("response_type", "code"),
            ("redirect_uri", LOOPBACK_REDIRECT),
            ("scope", &scope),
            ("state", state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("login_hint", USER),
            ("prompt", "select_account"),
            ("nonce", "n-0S6_WzA2Mj"),
        ],
    );
    let location = browser_sign_in(&url).await.expect("authorize failed");
    assert!(
        location.starts_with(&format!("{LOOPBACK_REDIRECT}?")),
        "{location}"
    );
    let q = location_query(&location);
    assert_eq!(q["state"], state, "state not returned verbatim");
    let code = q["code"].clone();
    let seen = idp.last_authorize_query().unwrap();
    assert_eq!(seen["code_challenge_method"], "S256");
    assert_eq!(seen["login_hint"], USER);
    assert_eq!(idp.authorize_requests(), 1);

    // Wrong, missing verifier; other redirect URI: the code survives them.
    let (status, body) =
        redeem_code(&idp, &code, LOOPBACK_REDIRECT, Some(&"x".repeat(43)), &[]).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 501481);
    let (status, body) = redeem_code(&idp, &code, LOOPBACK_REDIRECT, None, &[]).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_request", 900144);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("'code_verifier'")
    );
    let (status, body) = redeem_code(
        &idp,
        &code,
        "http://127.0.0.1:53118/callback",
        Some(&verifier),
        &[],
    )
    .await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 50011);

    let (status, body) = redeem_code(&idp, &code, LOOPBACK_REDIRECT, Some(&verifier), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], IMAP_SCOPE, "OIDC scopes must not be echoed");
    assert!(
        body["refresh_token"].is_string(),
        "offline_access was asked"
    );
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        introspect(&idp, access).await,
        json!({"active": true, "username": USER}),
        "the token belongs to the browser user (canonical name)"
    );
    let (_, claims) = jwt_parts(body["id_token"].as_str().expect("no id_token"));
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["preferred_username"], USER);
    assert_eq!(
        idp.last_form("authorization_code").unwrap()["code_verifier"],
        verifier
    );

    // Replay, unknown codes.
    let (status, body) = redeem_code(&idp, &code, LOOPBACK_REDIRECT, Some(&verifier), &[]).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 54005);
    let (_, body) = redeem_code(&idp, "1.AXkAnot-a-real-code", LOOPBACK_REDIRECT, None, &[]).await;
    assert_aad_error(&body, "invalid_grant", 70000);
    let (_, body) = redeem_code(&idp, "garbage", LOOPBACK_REDIRECT, None, &[]).await;
    assert_aad_error(&body, "invalid_grant", 9002313);

    // Without openid/offline_access: neither id_token nor refresh token.
    // localhost on another port is fine too (Entra ignores loopback ports).
    let (verifier2, challenge2) = pkce_pair();
    let other = "http://localhost:40123/";
    let location = browser_sign_in(&pkce_authorize_url(&idp, other, IMAP_SCOPE, &challenge2))
        .await
        .unwrap();
    assert!(location.starts_with(&format!("{other}?")), "{location}");
    let code2 = location_query(&location)["code"].clone();
    let (status, body) = redeem_code(&idp, &code2, other, Some(&verifier2), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("id_token").is_none() && body.get("refresh_token").is_none());

    // Codes expire.
    idp.set_auth_code_lifetime(Duration::from_millis(100));
    let (verifier3, challenge3) = pkce_pair();
    let code3 = signed_in_code(&idp, IMAP_SCOPE, &challenge3).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, body) = redeem_code(&idp, &code3, LOOPBACK_REDIRECT, Some(&verifier3), &[]).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 70008);

    let secrets = idp.issued_secrets();
    for s in [&code, &code2, &code3] {
        assert!(
            secrets.contains(s),
            "authorization code not in issued_secrets"
        );
    }
    assert!(secrets.iter().any(|s| s == access));
    assert_eq!(idp.count("authorization_code"), 9);
}

#[tokio::test]
async fn authorize_errors_follow_entra() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let (_, challenge) = pkce_pair();
    let good = pkce_authorize_url(&idp, LOOPBACK_REDIRECT, IMAP_SCOPE, &challenge);

    // Nobody signs in: access_denied back to the client, with the state.
    let location = browser_sign_in(&good).await.unwrap();
    assert!(location.starts_with(LOOPBACK_REDIRECT), "{location}");
    let q = assert_redirect_error(&location, "access_denied", 65004);
    assert_eq!(q["state"], "s-1");
    assert!(q["error_uri"].ends_with("/error?code=65004"));
    let silent = format!("{good}&prompt=none");
    assert_redirect_error(
        &browser_sign_in(&silent).await.unwrap(),
        "login_required",
        50058,
    );

    idp.set_browser_user(Some(USER));
    idp.set_consent_denied(true);
    assert_redirect_error(
        &browser_sign_in(&good).await.unwrap(),
        "access_denied",
        65004,
    );
    idp.set_consent_denied(false);
    assert!(location_query(&browser_sign_in(&good).await.unwrap()).contains_key("code"));

    // PKCE is required; only response_type=code.
    let no_pkce = authorize_url(
        &idp,
        &[
            ("client_id", idp.client_id()),
            ("response_type", "code"),
            ("redirect_uri", LOOPBACK_REDIRECT),
            ("scope", IMAP_SCOPE),
        ],
    );
    let q = assert_redirect_error(
        &browser_sign_in(&no_pkce).await.unwrap(),
        "invalid_request",
        9002325,
    );
    assert!(!q.contains_key("state"), "no state was sent");
    let token = good.replace("response_type=code", "response_type=token");
    assert_redirect_error(
        &browser_sign_in(&token).await.unwrap(),
        "unsupported_response_type",
        70005,
    );

    // Unknown client, foreign redirect URI: an error page, no redirect.
    let foreign_client = good.replace(idp.client_id(), "11111111-2222-3333-4444-555555555555");
    let err = browser_sign_in(&foreign_client).await.unwrap_err();
    assert!(
        err.starts_with("400") && err.contains("AADSTS700016"),
        "{err}"
    );
    let evil = "https://evil.example/callback";
    let err = browser_sign_in(&pkce_authorize_url(&idp, evil, IMAP_SCOPE, &challenge))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("400") && err.contains("AADSTS50011"),
        "{err}"
    );
    idp.add_redirect_uri(evil);
    let location = browser_sign_in(&pkce_authorize_url(&idp, evil, IMAP_SCOPE, &challenge))
        .await
        .unwrap();
    assert!(location.starts_with(&format!("{evil}?code=")), "{location}");
    assert_eq!(idp.authorize_requests(), 9);
}

#[tokio::test]
async fn public_and_confidential_client_authentication() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    idp.set_client_secret("s3cret~value");
    let password_form = |extra: &[(&'static str, &'static str)]| {
        let mut form = vec![
            ("grant_type", "password"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("username", USER),
            ("password", PASSWORD),
            ("scope", OUTLOOK_SCOPE),
        ];
        form.extend_from_slice(extra);
        form
    };

    // Public (default): secrets stay optional, but a code redemption that
    // presents one is refused before the code is even looked at.
    let (status, _, body) = post_token(&idp, &password_form(&[])).await;
    assert_eq!(status, 200, "{body}");
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, body) = redeem_code(
        &idp,
        "1.AXkAx",
        LOOPBACK_REDIRECT,
        Some("v"),
        &[("client_secret", "s3cret~value")],
    )
    .await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_client", 700025);
    let assertion = [
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
        ("client_assertion", "a.b.c"),
    ];
    let (status, body) =
        redeem_code(&idp, "1.AXkAx", LOOPBACK_REDIRECT, Some("v"), &assertion).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_client", 700025);

    // Confidential: every grant needs a credential.
    idp.set_confidential(true);
    let (status, _, body) = post_token(&idp, &password_form(&[])).await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 7000218);
    let (status, body) = refresh(&idp, &rt, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 7000218);
    let (status, body) = redeem_code(&idp, "1.AXkAx", LOOPBACK_REDIRECT, Some("v"), &[]).await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 7000218);
    let (status, _, body) = post_token(
        &idp,
        &[
            ("grant_type", DEVICE_CODE_GRANT),
            ("client_id", idp.client_id()),
            ("device_code", "DAQAB"),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 7000218);
    // With the secret (in the body, or HTTP Basic) it works.
    let (status, _, body) =
        post_token(&idp, &password_form(&[("client_secret", "s3cret~value")])).await;
    assert_eq!(status, 200, "{body}");
    let resp = reqwest::Client::new()
        .post(idp.token_url())
        .basic_auth(idp.client_id(), Some("s3cret~value"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("scope", OUTLOOK_SCOPE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "HTTP Basic client_secret refused"
    );
    // Both a secret and an assertion: refused.
    let (status, _, body) = post_token(
        &idp,
        &password_form(&[
            ("client_secret", "s3cret~value"),
            assertion[0],
            assertion[1],
        ]),
    )
    .await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 70002);

    // Wrong, then expired secrets.
    let (status, _, body) = post_token(&idp, &password_form(&[("client_secret", "nope")])).await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 7000215);
    idp.expire_client_secret("s3cret~value");
    let (status, _, body) =
        post_token(&idp, &password_form(&[("client_secret", "s3cret~value")])).await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 7000222);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "client secret keys for app '{}' are expired",
                idp.client_id()
            ))
    );
}
