//! The identity-provider stand-in's token endpoint: Entra's error shapes,
//! refresh rotation, client credentials and introspection, a slow endpoint,
//! blocking callers, injected errors and the bookkeeping tests read.

use mail2ticket_testkit as common;

use std::io::{Read, Write};
use std::time::Duration;

use common::idp_client::*;
use common::{IdP, OUTLOOK_SCOPE};
use serde_json::{Value, json};

#[tokio::test]
async fn token_endpoint_speaks_entra_errors() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);

    let (status, body) = password_grant(&idp, USER, "wrong", OUTLOOK_SCOPE).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 50126);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("invalid username or password")
    );
    let (status, body) = password_grant(&idp, "nobody@contoso.example", "x", OUTLOOK_SCOPE).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 50126);

    // Success shape; offline_access is not echoed but yields a refresh token.
    let (status, body) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["scope"],
        "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All"
    );
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["ext_expires_in"], 3600);
    assert!(body["refresh_token"].is_string());
    let (_, no_offline) = password_grant(
        &idp,
        USER,
        PASSWORD,
        "https://outlook.office.com/IMAP.AccessAsUser.All",
    )
    .await;
    assert!(no_offline.get("refresh_token").is_none(), "{no_offline}");
    assert_ne!(body["access_token"], no_offline["access_token"]);

    // Unknown tenant.
    let resp = reqwest::Client::new()
        .post(format!("{}/not-my-tenant/oauth2/v2.0/token", idp.url()))
        .form(&[("grant_type", "password"), ("client_id", idp.client_id())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_aad_error(&resp.json().await.unwrap(), "invalid_request", 90002);

    // Unknown client, unsupported grant.
    let (status, _, body) = post_token(
        &idp,
        &[
            ("grant_type", "password"),
            ("client_id", "11111111-2222-3333-4444-555555555555"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "unauthorized_client", 700016);
    let (status, _, body) = post_token(
        &idp,
        &[("grant_type", "implicit"), ("client_id", idp.client_id())],
    )
    .await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "unsupported_grant_type", 70003);

    assert_eq!(idp.count("password"), 6);
    assert_eq!(idp.count("implicit"), 1);
    assert_eq!(idp.total_requests(), 7);
    let form = idp
        .last_form("password")
        .expect("no password form recorded");
    assert_eq!(form["client_id"], "11111111-2222-3333-4444-555555555555");
}

#[tokio::test]
async fn refresh_requires_scope_and_rotates() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let (_, body) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    let rt0 = body["refresh_token"].as_str().unwrap().to_owned();

    let (status, body) = refresh(&idp, &rt0, None).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_request", 900144);
    assert!(body["error_description"].as_str().unwrap().starts_with(
        "AADSTS900144: The request body must contain the following parameter: 'scope'."
    ));

    // Lax rotation (default): a new refresh token each time, the old one lives.
    let (status, body) = refresh(&idp, &rt0, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 200, "{body}");
    let rt1 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt0, rt1, "refresh token not rotated");
    assert!(!body["scope"].as_str().unwrap().contains("offline_access"));
    let (status, _) = refresh(&idp, &rt0, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 200, "old refresh token died under lax rotation");
    assert_eq!(
        idp.last_form("refresh_token").unwrap()["scope"],
        OUTLOOK_SCOPE
    );

    // Strict rotation: redeeming rt1 kills it.
    idp.set_strict_rotation(true);
    let (status, body) = refresh(&idp, &rt1, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 200, "{body}");
    let rt2 = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, body) = refresh(&idp, &rt1, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 400, "rotated-away refresh token still works");
    assert_aad_error(&body, "invalid_grant", 70000);
    let (status, body) = refresh(&idp, &rt2, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 200, "{body}");
    let rt3 = body["refresh_token"].as_str().unwrap().to_owned();

    // Revocation and expiry.
    idp.revoke_refresh_tokens(USER);
    let (status, body) = refresh(&idp, &rt3, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 70000);
    idp.set_refresh_token_lifetime(Some(Duration::ZERO));
    let (_, body) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    let rt4 = body["refresh_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (status, body) = refresh(&idp, &rt4, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_grant", 700082);

    // Password changes apply to the password grant.
    idp.set_password(USER, "new password");
    let (status, _) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    assert_eq!(status, 400);
    let (status, _) = password_grant(&idp, USER, "new password", OUTLOOK_SCOPE).await;
    assert_eq!(status, 200);
    assert_eq!(idp.count("refresh_token"), 8);
}

#[tokio::test]
async fn client_credentials_faults_and_introspection() {
    let idp = IdP::start();
    idp.set_client_secret("s3cret~value");
    let cc = |secret: &'static str, scope: &'static str| {
        let idp = &idp;
        async move {
            post_token(
                idp,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", idp.client_id()),
                    ("client_secret", secret),
                    ("scope", scope),
                ],
            )
            .await
        }
    };
    let (status, _, body) = cc("wrong", "https://outlook.office365.com/.default").await;
    assert_eq!(status, 401);
    assert_aad_error(&body, "invalid_client", 7000215);
    let (status, _, body) = cc("s3cret~value", "https://outlook.office365.com/IMAP").await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_scope", 1002012);
    let (status, _, body) = cc("s3cret~value", "https://outlook.office365.com/.default").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none());
    let app_token = body["access_token"].as_str().unwrap().to_owned();

    // Introspection as Dovecot does it.
    let http = reqwest::Client::new();
    let introspect = |token: String| {
        let http = http.clone();
        let url = idp.introspection_url();
        async move {
            http.post(url)
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        introspect(app_token.clone()).await,
        json!({"active": false})
    );
    idp.grant_app_access("shared@contoso.example");
    assert_eq!(
        introspect(app_token.clone()).await,
        json!({"active": true, "username": "shared@contoso.example"})
    );
    assert_eq!(introspect("nope".into()).await, json!({"active": false}));
    assert_eq!(idp.introspections(), 3);

    // Fault injection: JSON with Retry-After, then HTML, then back to normal.
    idp.inject(429, json!({"error": "temporarily_unavailable"}), Some(7), 2);
    idp.inject(502, "<html>Bad Gateway</html>", None, 1);
    for _ in 0..2 {
        let (status, retry, body) = cc("s3cret~value", "x/.default").await;
        assert_eq!((status, retry.as_deref()), (429, Some("7")));
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    let (status, retry, body) = cc("s3cret~value", "x/.default").await;
    assert_eq!((status, retry), (502, None));
    assert_eq!(body, Value::String("<html>Bad Gateway</html>".into()));
    let (status, _, _) = cc("s3cret~value", "x/.default").await;
    assert_eq!(status, 200);

    idp.set_down(true);
    let (status, _, body) = cc("s3cret~value", "x/.default").await;
    assert_eq!(status, 503);
    assert!(body.as_str().is_some_and(|b| b.contains("<html>")));
    idp.set_down(false);
    let (status, _, _) = cc("s3cret~value", "x/.default").await;
    assert_eq!(status, 200);
    assert_eq!(idp.count("client_credentials"), 9);
}

/// A slow token endpoint: the request counts when it arrives, the answer
/// comes only after the delay (a client with a shorter timeout gives up),
/// and without the delay the endpoint answers as before.
#[tokio::test]
async fn idp_delay_counts_on_arrival_and_answers_late() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    idp.set_delay(Some(Duration::from_secs(3)));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let form = [
        ("grant_type", "password"),
        ("client_id", idp.client_id()),
        ("username", USER),
        ("password", PASSWORD),
        ("scope", OUTLOOK_SCOPE),
    ];
    let err = impatient
        .post(idp.token_url())
        .form(&form)
        .send()
        .await
        .expect_err("answered within 0.5 s despite a 3 s delay");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(idp.count("password"), 1, "counted on arrival");
    idp.set_delay(None);
    let (status, body) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.total_requests(), 2);
}

/// The IdP runs on its own thread: a plain blocking test can talk to it.
#[test]
fn idp_serves_blocking_callers() {
    let idp = IdP::start();
    idp.add_user("Carol@Contoso.example", "pw");
    let body = format!(
        "grant_type=password&client_id={}&username=carol%40contoso.example&password=pw&scope=a+b",
        idp.client_id()
    );
    let mut stream = std::net::TcpStream::connect(idp.addr()).unwrap();
    write!(
        stream,
        "POST /{}/oauth2/v2.0/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        idp.tenant(),
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json: Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["scope"], "a b");
    assert_eq!(
        idp.last_form("password").unwrap()["username"],
        "carol@contoso.example"
    );
}

#[tokio::test]
async fn injected_entra_errors_and_token_bookkeeping() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    idp.set_client_secret("s3cret~value");
    let (_, body) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    let rt = body["refresh_token"].as_str().unwrap().to_owned();

    idp.inject_aad(
        400,
        "invalid_grant",
        50076,
        "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000002-0000-0ff1-ce00-000000000000'.",
        2,
    );
    idp.inject_aad(400, "invalid_grant", 53003, "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.", 1);
    let (status, first) = refresh(&idp, &rt, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 400);
    assert_aad_error(&first, "invalid_grant", 50076);
    assert_eq!(first["suberror"], "basic_action");
    let (_, second) = refresh(&idp, &rt, Some(OUTLOOK_SCOPE)).await;
    assert_aad_error(&second, "invalid_grant", 50076);
    assert_ne!(
        first["trace_id"], second["trace_id"],
        "each answer is fresh"
    );
    let (_, third) = refresh(&idp, &rt, Some(OUTLOOK_SCOPE)).await;
    assert_aad_error(&third, "invalid_grant", 53003);
    assert!(
        third["error_description"]
            .as_str()
            .unwrap()
            .contains("Conditional Access")
    );

    // One refresh token, one access token per resource.
    let graph = "https://graph.microsoft.com/Mail.Read";
    let (status, a) = refresh(&idp, &rt, Some(&format!("{IMAP_SCOPE} offline_access"))).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = refresh(&idp, &rt, Some(&format!("{graph} offline_access"))).await;
    assert_eq!(status, 200, "{b}");
    let (status, _, c) = post_token(
        &idp,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", idp.client_id()),
            ("client_secret", "s3cret~value"),
            ("scope", "https://outlook.office365.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        idp.issued_access_token_scopes(),
        vec![
            "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All".to_owned(),
            IMAP_SCOPE.to_owned(),
            graph.to_owned(),
            "https://outlook.office365.com/.default".to_owned(),
        ]
    );

    let secrets = idp.issued_secrets();
    let mut expected: Vec<String> = [&body, &a, &b, &c]
        .iter()
        .flat_map(|r| ["access_token", "refresh_token"].map(|k| r[k].as_str().map(str::to_owned)))
        .flatten()
        .collect();
    expected.sort();
    let mut got = secrets.clone();
    got.sort();
    assert_eq!(
        got, expected,
        "issued_secrets = exactly the tokens handed out"
    );
    assert_eq!(idp.count("refresh_token"), 5);
}
