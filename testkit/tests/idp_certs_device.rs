//! The identity-provider stand-in's certificate client assertions, device
//! code flow and id_tokens.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::idp_client::*;
use common::{ClientCert, DEVICE_CODE_GRANT, IdP, JWT_BEARER_ASSERTION_TYPE, OUTLOOK_SCOPE};
use serde_json::{Value, json};

#[tokio::test]
async fn certificate_client_assertions() {
    let cert = ClientCert::shared();
    assert!(cert.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(cert.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        cert.public_key_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert_eq!(cert.thumbprint_s256().len(), 43);
    assert!(
        std::ptr::eq(cert, ClientCert::shared()),
        "shared() is one cert"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = cert.write_to(dir.path());
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        cert.cert_pem().as_bytes()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private key readable by others");
    }

    let idp = IdP::start();
    idp.register_certificate(cert);
    let token_url = idp.token_url();
    let client_id = idp.client_id().to_owned();
    let cc = |assertion: String| {
        let idp = &idp;
        async move {
            post_token(
                idp,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", idp.client_id()),
                    ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
                    ("client_assertion", &assertion),
                    ("scope", "https://outlook.office365.com/.default"),
                ],
            )
            .await
        }
    };

    // A valid assertion, then its replay.
    let valid = cert.client_assertion(&client_id, &token_url);
    let (status, _, body) = cc(valid.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string() && body.get("refresh_token").is_none());
    let (header, claims) = idp.last_assertion().expect("assertion not recorded");
    assert_eq!(header["x5t#S256"], cert.thumbprint_s256());
    assert_eq!(claims["aud"], token_url);
    assert!(claims["jti"].is_string());
    assert_eq!(
        idp.issued_access_token_scopes(),
        vec!["https://outlook.office365.com/.default".to_owned()]
    );
    let (status, _, body) = cc(valid.clone()).await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 50027);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replayed")
    );

    // An assertion made the way the library would (jsonwebtoken) works too.
    let mut jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jwt_header.x5t_s256 = Some(cert.thumbprint_s256());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(cert.key_pem().as_bytes()).unwrap();
    let jwt = jsonwebtoken::encode(
        &jwt_header,
        &ClientCert::assertion_claims(&client_id, &token_url),
        &key,
    )
    .unwrap();
    let (status, _, body) = cc(jwt).await;
    assert_eq!(status, 200, "jsonwebtoken-made assertion refused: {body}");

    // Tampered claims, a foreign key under our thumbprint, a foreign cert.
    let (h, _) = jwt_parts(&valid);
    let sig = valid.rsplit('.').next().unwrap();
    let forged_claims = ClientCert::assertion_claims(&client_id, &token_url);
    let tampered = format!(
        "{}.{}.{sig}",
        b64url(h.to_string().as_bytes()),
        b64url(forged_claims.to_string().as_bytes())
    );
    let (status, _, body) = cc(tampered).await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 700027);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("did not match")
    );
    let foreign = ClientCert::generate("someone else");
    let (_, _, body) = cc(foreign.sign_jwt(
        &cert.assertion_header(),
        &ClientCert::assertion_claims(&client_id, &token_url),
    ))
    .await;
    assert_aad_error(&body, "invalid_client", 700027);
    let (_, _, body) = cc(foreign.client_assertion(&client_id, &token_url)).await;
    assert_aad_error(&body, "invalid_client", 700027);
    let desc = body["error_description"].as_str().unwrap();
    assert!(desc.contains("The key was not found") && desc.contains(&foreign.thumbprint_s256()));

    // Claims and header checks.
    let with = |f: &dyn Fn(&mut Value)| {
        let mut claims = ClientCert::assertion_claims(&client_id, &token_url);
        f(&mut claims);
        cert.sign_jwt(&cert.assertion_header(), &claims)
    };
    let now = common::time::unix_now();
    let cases: Vec<(String, u64)> = vec![
        (
            with(&|c| c["aud"] = json!(format!("{}/v2.0", idp.url()))),
            700023,
        ),
        (
            with(&|c| c["aud"] = json!([token_url, "https://login.microsoftonline.com"])),
            5002741,
        ),
        (with(&|c| c["iss"] = json!("someone-else")), 700021),
        (with(&|c| c["sub"] = json!("someone-else")), 700021),
        (
            with(&|c| {
                c["nbf"] = json!(now - 1500);
                c["exp"] = json!(now - 900);
            }),
            700024,
        ),
        (with(&|c| c["nbf"] = json!(now + 900)), 700024),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            50027,
        ),
        (
            cert.sign_jwt(
                &json!({"alg": "PS256", "typ": "JWT", "x5t#S256": cert.thumbprint_s256()}),
                &ClientCert::assertion_claims(&client_id, &token_url),
            ),
            5002738,
        ),
        ("not-a-jwt".to_owned(), 50027),
    ];
    for (assertion, code) in cases {
        let (status, _, body) = cc(assertion).await;
        assert_eq!(status, 401, "{body}");
        assert_aad_error(&body, "invalid_client", code);
    }
    let (status, _, body) = post_token(
        &idp,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", idp.client_id()),
            (
                "client_assertion",
                &cert.client_assertion(&client_id, &token_url),
            ),
            ("scope", "https://outlook.office365.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_request", 900144);

    // A confidential app accepts the assertion on user grants too.
    idp.add_user(USER, PASSWORD);
    idp.set_confidential(true);
    let (status, _, body) = post_token(
        &idp,
        &[
            ("grant_type", "password"),
            ("client_id", idp.client_id()),
            ("username", USER),
            ("password", PASSWORD),
            ("scope", OUTLOOK_SCOPE),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            (
                "client_assertion",
                &cert.client_assertion(&client_id, &token_url),
            ),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Certificate lifecycle.
    idp.expire_certificate(cert);
    let (_, _, body) = cc(cert.client_assertion(&client_id, &token_url)).await;
    assert_aad_error(&body, "invalid_client", 700027);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    idp.unregister_certificate(cert);
    let (_, _, body) = cc(cert.client_assertion(&client_id, &token_url)).await;
    assert_aad_error(&body, "invalid_client", 700027);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    idp.register_certificate_der(cert.cert_der(), cert.public_key_pem());
    let (status, _, _) = cc(cert.client_assertion(&client_id, &token_url)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn device_code_flow() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    idp.set_device_code_timing(Duration::from_secs(3), 1);
    let scope = format!("openid offline_access {IMAP_SCOPE}");
    let (status, dc) = device_code_request(&idp, idp.client_id(), Some(&scope)).await;
    assert_eq!(status, 200, "{dc}");
    let user_code = dc["user_code"].as_str().unwrap().to_owned();
    let device_code = dc["device_code"].as_str().unwrap().to_owned();
    assert_eq!(user_code.len(), 9);
    assert!(
        user_code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    );
    assert_eq!(dc["verification_uri"], idp.device_login_url());
    assert_eq!(
        (dc["expires_in"].as_u64(), dc["interval"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        dc["message"],
        format!(
            "To sign in, use a web browser to open the page {} and enter the code {user_code} to authenticate.",
            idp.device_login_url()
        )
    );
    assert_eq!(idp.pending_user_codes(), vec![user_code.clone()]);
    assert_eq!(idp.last_device_code_form().unwrap()["scope"], scope);

    let (status, body) = device_poll(&idp, &device_code).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "authorization_pending", 70016);
    idp.slow_down_device_polls(1);
    let (status, body) = device_poll(&idp, &device_code).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "slow_down");
    idp.approve_device_code(&user_code.to_lowercase(), "Alice@Contoso.example");
    assert!(idp.pending_user_codes().is_empty());
    let (status, body) = device_poll(&idp, &device_code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], IMAP_SCOPE);
    assert!(body["refresh_token"].is_string() && body["id_token"].is_string());
    assert_eq!(
        introspect(&idp, body["access_token"].as_str().unwrap()).await["username"],
        USER
    );
    let (status, body) = device_poll(&idp, &device_code).await;
    assert_eq!(status, 400, "a device code is redeemed once");
    assert_aad_error(&body, "invalid_grant", 70000);

    let times = idp.device_poll_times();
    assert_eq!(times.len(), 4);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(idp.count(DEVICE_CODE_GRANT), 4);
    assert_eq!(idp.device_code_requests(), 1);
    assert!(idp.issued_secrets().contains(&device_code));
    assert!(
        !idp.issued_secrets().contains(&user_code),
        "user codes are not secret"
    );

    // Declined.
    let (_, dc) = device_code_request(&idp, idp.client_id(), Some(IMAP_SCOPE)).await;
    idp.decline_device_code(dc["user_code"].as_str().unwrap());
    let (status, body) = device_poll(&idp, dc["device_code"].as_str().unwrap()).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "authorization_declined", 70000);

    // Expired: measured exactly, while expires_in stays a whole second.
    idp.set_device_code_timing(Duration::from_millis(300), 1);
    let (_, dc) = device_code_request(&idp, idp.client_id(), Some(IMAP_SCOPE)).await;
    assert_eq!(dc["expires_in"], 1);
    let user_code = dc["user_code"].as_str().unwrap().to_owned();
    assert!(idp.pending_user_codes().contains(&user_code));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        idp.pending_user_codes().is_empty(),
        "expired code still pending"
    );
    idp.approve_device_code(&user_code, USER);
    let (status, body) = device_poll(&idp, dc["device_code"].as_str().unwrap()).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "expired_token", 70019);

    // Endpoint errors.
    let (status, body) = device_poll(&idp, "DAQABIQEAAADunknown").await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 70000);
    let (status, body) = device_code_request(
        &idp,
        "11111111-2222-3333-4444-555555555555",
        Some(IMAP_SCOPE),
    )
    .await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "unauthorized_client", 700016);
    let (status, body) = device_code_request(&idp, idp.client_id(), None).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_request", 900144);
    assert_eq!(idp.device_code_requests(), 5);
}

#[tokio::test]
async fn id_tokens_carry_entra_claims() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    let idp = IdP::start();
    idp.add_user("alice.smith@contoso.example", PASSWORD);
    let scope = format!("openid profile email offline_access {IMAP_SCOPE}");
    let (status, body) =
        password_grant(&idp, "ALICE.SMITH@contoso.example", PASSWORD, &scope).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], IMAP_SCOPE, "OIDC scopes must not be echoed");
    let id_token = body["id_token"].as_str().expect("no id_token").to_owned();

    let key = DecodingKey::from_rsa_pem(idp.id_token_public_key_pem().as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[idp.client_id()]);
    validation.set_issuer(&[idp.issuer()]);
    let claims = decode::<Value>(&id_token, &key, &validation)
        .expect("id_token does not verify")
        .claims;
    assert_eq!(claims["aud"], idp.client_id());
    assert_eq!(
        claims["iss"],
        format!("{}/{}/v2.0", idp.url(), idp.tenant())
    );
    assert_eq!(claims["tid"], idp.tenant());
    assert_eq!(claims["oid"], idp.user_oid("alice.smith@contoso.example"));
    assert_eq!(claims["preferred_username"], "alice.smith@contoso.example");
    assert_eq!(claims["name"], "Alice Smith");
    assert_eq!(claims["ver"], "2.0");
    let now = common::time::unix_now();
    let iat = claims["iat"].as_i64().unwrap();
    assert!((now - 5..=now).contains(&iat), "iat {iat}, now {now}");
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));
    let header = decode_header(&id_token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.expect("no kid");
    let jwks: Value = reqwest::get(idp.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], kid);
    let config: Value = reqwest::get(format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        idp.url(),
        idp.tenant()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(config["token_endpoint"], idp.token_url());
    assert_eq!(
        config["device_authorization_endpoint"],
        idp.device_code_url()
    );

    // Refresh: an id_token only when asked for.
    idp.set_display_name("alice.smith@contoso.example", "Alice S.");
    let rt = body["refresh_token"].as_str().unwrap();
    let (_, with) = refresh(&idp, rt, Some(&scope)).await;
    let (_, claims) = jwt_parts(with["id_token"].as_str().expect("no id_token on refresh"));
    assert_eq!(claims["name"], "Alice S.");
    let (_, without) = refresh(&idp, rt, Some(IMAP_SCOPE)).await;
    assert!(without.get("id_token").is_none(), "{without}");
    let (_, plain) =
        password_grant(&idp, "alice.smith@contoso.example", PASSWORD, IMAP_SCOPE).await;
    assert!(plain.get("id_token").is_none(), "{plain}");
    assert!(idp.issued_secrets().contains(&id_token));
}
