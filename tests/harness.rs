//! Self-test of the integration-test harness (tests/common): the imitation
//! IdP, the real Dovecot with XOAUTH2, and the mail helpers. Uses only
//! reqwest, tokio-rustls and async-imap directly, no library code.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::imap::{XOAuth2, imaps_connect, imaps_xoauth2, pop3s_greeting};
use common::{Dovecot, DovecotOptions, IdP, OUTLOOK_SCOPE, mail, mail_of_size, malformed_mail};
use serde_json::{Value, json};

const USER: &str = "alice@contoso.example";
const PASSWORD: &str = "correct horse battery staple";

/// POSTs a form to the token endpoint; returns (status, Retry-After, JSON or
/// a JSON string holding the raw body).
async fn post_token(idp: &IdP, form: &[(&str, &str)]) -> (u16, Option<String>, Value) {
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

async fn password_grant(idp: &IdP, user: &str, password: &str, scope: &str) -> (u16, Value) {
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

async fn access_token(idp: &IdP, user: &str, password: &str) -> String {
    let (status, body) = password_grant(idp, user, password, OUTLOOK_SCOPE).await;
    assert_eq!(status, 200, "password grant failed: {body}");
    body["access_token"]
        .as_str()
        .expect("no access_token in the token response")
        .to_owned()
}

async fn refresh(idp: &IdP, refresh_token: &str, scope: Option<&str>) -> (u16, Value) {
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

fn assert_aad_error(body: &Value, error: &str, code: u64) {
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

#[tokio::test]
async fn xoauth2_login_over_imaps_selects_inbox() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let started = Instant::now();
    let dovecot = Dovecot::start(&idp.introspection_url());
    eprintln!("Dovecot started in {:?}", started.elapsed());

    for i in 1..=3 {
        dovecot.deliver(USER, &mail(i));
    }
    let token = access_token(&idp, USER, PASSWORD).await;

    let mut session = imaps_xoauth2(dovecot.imaps_port(), dovecot.ca_file(), USER, &token)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dovecot.log_tail()));
    let inbox = session.select("INBOX").await.expect("SELECT INBOX failed");
    assert_eq!(inbox.exists, 3, "EXISTS after delivering 3 mails");
    let caps = session.capabilities().await.expect("CAPABILITY failed");
    for cap in ["IDLE", "MOVE", "UIDPLUS"] {
        assert!(caps.has_str(cap), "server lacks {cap}");
    }
    session.logout().await.expect("LOGOUT failed");

    assert!(idp.introspections() >= 1, "Dovecot never asked the IdP");
    assert_eq!(dovecot.message_count(USER, "INBOX"), 3);
    assert_eq!(dovecot.seen_count(USER, "INBOX"), 0);
}

#[tokio::test]
async fn expired_and_wrong_tokens_are_rejected() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    idp.add_user("bob@contoso.example", "bobs password");
    let dovecot = Dovecot::start(&idp.introspection_url());
    let (port, ca) = (dovecot.imaps_port(), dovecot.ca_file());

    // Garbage token: the server's JSON error challenge is answered empty.
    let client = imaps_connect(port, ca).await;
    let mut auth = XOAuth2::new(USER, "not-a-token");
    let err = client
        .authenticate("XOAUTH2", &mut auth)
        .await
        .expect_err("garbage token was accepted");
    let challenge = auth
        .error_challenge
        .clone()
        .unwrap_or_else(|| panic!("no JSON error challenge; error {:?}", err.0));
    let challenge: Value = serde_json::from_str(&challenge)
        .unwrap_or_else(|e| panic!("error challenge {challenge:?} is not JSON: {e}"));
    assert!(challenge["status"].is_string(), "odd challenge {challenge}");

    // A live token for another user is refused (username mismatch).
    let bobs = access_token(&idp, "bob@contoso.example", "bobs password").await;
    assert!(
        imaps_xoauth2(port, ca, USER, &bobs).await.is_err(),
        "bob's token opened alice's mailbox"
    );

    // A token works while it lives and fails once expired.
    idp.set_token_lifetime(Duration::from_secs(1));
    let (_, body) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    assert_eq!(body["expires_in"], 1, "expires_in follows the lifetime");
    let short_lived = body["access_token"].as_str().unwrap().to_owned();
    idp.set_token_lifetime(Duration::from_secs(60));
    let token = access_token(&idp, USER, PASSWORD).await;
    imaps_xoauth2(port, ca, USER, &token)
        .await
        .unwrap_or_else(|e| panic!("fresh token refused: {e}\n{}", dovecot.log_tail()))
        .logout()
        .await
        .expect("LOGOUT failed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = imaps_xoauth2(port, ca, USER, &short_lived)
        .await
        .expect_err("expired token was accepted");
    assert!(
        err.contains("error challenge: {"),
        "no JSON challenge: {err}"
    );
    // ...while the long-lived one still works.
    imaps_xoauth2(port, ca, USER, &token)
        .await
        .unwrap_or_else(|e| panic!("live token refused: {e}\n{}", dovecot.log_tail()));

    let log = dovecot.log();
    assert!(
        log.contains("oauth2") || log.contains("auth"),
        "Dovecot logged nothing about auth:\n{}",
        dovecot.log_tail()
    );
}

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
async fn pop3s_and_plain_listeners_answer() {
    let idp = IdP::start();
    let dovecot = Dovecot::start(&idp.introspection_url());
    let greeting = pop3s_greeting(dovecot.pop3s_port(), dovecot.ca_file()).await;
    assert!(greeting.starts_with("+OK"), "POP3S greeting: {greeting:?}");

    // The plain ports greet in clear text and offer STARTTLS / STLS.
    let mut imap = std::net::TcpStream::connect(("127.0.0.1", dovecot.imap_port())).unwrap();
    imap.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = imap.read(&mut buf).unwrap();
    let greeting = String::from_utf8_lossy(&buf[..n]);
    assert!(greeting.starts_with("* OK"), "IMAP greeting {greeting:?}");
    assert!(greeting.contains("STARTTLS"), "no STARTTLS: {greeting:?}");
    assert!(greeting.contains("LOGINDISABLED"), "plaintext auth allowed");
    let mut pop3 = std::net::TcpStream::connect(("127.0.0.1", dovecot.pop3_port())).unwrap();
    pop3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = pop3.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"+OK"));
    pop3.write_all(b"CAPA\r\n").unwrap();
    let mut capa = Vec::new();
    while !capa.ends_with(b"\r\n.\r\n") {
        let n = pop3.read(&mut buf).unwrap();
        assert!(n > 0, "POP3 closed during CAPA");
        capa.extend_from_slice(&buf[..n]);
    }
    let capa = String::from_utf8_lossy(&capa);
    assert!(capa.contains("STLS") && capa.contains("UIDL"), "{capa}");
}

#[tokio::test]
async fn folders_flags_and_bulk_delivery() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start(&idp.introspection_url());

    let t = Instant::now();
    dovecot.deliver_many(USER, (0..10_000).map(mail));
    let took = t.elapsed();
    eprintln!("delivered 10,000 mails in {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "bulk delivery too slow: {took:?}"
    );
    assert_eq!(dovecot.message_count(USER, "INBOX"), 10_000);

    dovecot.create_folder(USER, "Processed");
    dovecot.create_folder(USER, "Processed/2025");
    dovecot.deliver_to(USER, "Archive", &mail(1));
    let folders = dovecot.folders(USER);
    for f in ["INBOX", "Processed", "Processed/2025", "Archive"] {
        assert!(folders.iter().any(|x| x == f), "{f} missing in {folders:?}");
    }
    assert_eq!(dovecot.message_count(USER, "Archive"), 1);
    assert_eq!(dovecot.message_count(USER, "Processed/2025"), 0);

    let token = access_token(&idp, USER, PASSWORD).await;
    let mut session = imaps_xoauth2(dovecot.imaps_port(), dovecot.ca_file(), USER, &token)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dovecot.log_tail()));
    session.select("INBOX").await.unwrap();
    {
        use futures::TryStreamExt;
        let updates: Vec<_> = session
            .store("1:5", "+FLAGS (\\Seen)")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(updates.len(), 5);
    }
    session.logout().await.unwrap();
    assert_eq!(dovecot.seen_count(USER, "INBOX"), 5);
    let hits = dovecot.search(
        USER,
        "INBOX",
        &format!("header message-id {}", common::message_id(42)),
    );
    assert_eq!(hits.len(), 1, "Message-ID search");
}

#[tokio::test]
async fn plain_password_option_and_restart() {
    let idp = IdP::start();
    let mut dovecot = Dovecot::start_with(
        &idp.introspection_url(),
        DovecotOptions {
            plain_password: Some("plainpw".into()),
        },
    );
    let port = dovecot.imaps_port();
    let client = imaps_connect(port, dovecot.ca_file()).await;
    let session = client
        .login("dave@contoso.example", "plainpw")
        .await
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("LOGIN failed: {e}\n{}", dovecot.log_tail()));
    drop(session);
    let client = imaps_connect(port, dovecot.ca_file()).await;
    assert!(client.login("dave@contoso.example", "wrong").await.is_err());

    dovecot.deliver(USER, &mail(7));
    dovecot.restart();
    assert_eq!(dovecot.imaps_port(), port);
    assert_eq!(dovecot.message_count(USER, "INBOX"), 1);
    let client = imaps_connect(port, dovecot.ca_file()).await;
    client
        .login("dave@contoso.example", "plainpw")
        .await
        .map_err(|(e, _)| e)
        .expect("LOGIN after restart failed");
}

#[test]
fn mail_generators() {
    let ids: HashSet<String> = (0..1000).map(common::message_id).collect();
    assert_eq!(ids.len(), 1000, "Message-IDs not unique");
    let m = String::from_utf8(mail(5)).unwrap();
    assert!(m.contains(&format!("Message-ID: {}\r\n", common::message_id(5))));
    assert!(m.contains("From: \"Customer 5\" <customer5@example.net>\r\n"));
    assert!(m.contains("Subject: Printer broken #5\r\n"));
    assert!(
        m.contains("Date: Mon, 24 Nov 2025 09:05:00 +0000\r\n"),
        "{m}"
    );
    assert_eq!(mail(5), mail(5), "mails are deterministic");

    for size in [2_000, 5_000, 100_000, 1_000_000] {
        let m = mail_of_size(3, size);
        let diff = m.len().abs_diff(size);
        assert!(diff < 200, "asked {size}, got {}", m.len());
        let text = String::from_utf8(m).unwrap();
        assert!(text.contains("multipart/alternative"));
        assert!(text.trim_end().ends_with("--"), "closing boundary missing");
    }

    let bad = malformed_mail();
    assert!(!String::from_utf8_lossy(&bad).contains("Message-ID"));
    assert!(
        std::str::from_utf8(&bad).is_err(),
        "malformed mail has no 8-bit"
    );
}
