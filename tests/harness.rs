//! Self-test of the integration-test harness (tests/common): the imitation
//! IdP, the real Dovecot with XOAUTH2, and the mail helpers. Uses only
//! reqwest, tokio-rustls and async-imap directly, no library code.

use mail2ticket_testkit as common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::imap::{LineClient, XOAuth2, imaps_connect, imaps_xoauth2, pop3s_greeting};
use common::{
    Action, ClientCert, DEFAULT_CLIENT_ID, DEVICE_CODE_GRANT, Dovecot, DovecotOptions, IdP,
    JWT_BEARER_ASSERTION_TYPE, NO_IDLE_NO_MOVE_CAPABILITY, OUTLOOK_SCOPE, Proxy, browser_sign_in,
    mail, mail_of_size, malformed_mail,
};
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

/// `cut_after`: each budgeted connection gets exactly its budget of the
/// server's bytes and is then closed; later ones get everything.
#[test]
fn proxy_cuts_connections_after_their_budget() {
    const SENT: usize = 10_000;
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target_port = target.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in target.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.write_all(&[b'x'; SENT]);
        }
    });
    let proxy = Proxy::start(target_port);
    proxy.cut_after(&[1_000, 3_000]);
    let received = |_| {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        got.len()
    };
    let lengths: Vec<usize> = (0..3).map(received).collect();
    assert_eq!(lengths, [1_000, 3_000, SENT]);
    assert_eq!(proxy.cuts_done(), 2);
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
            ..DovecotOptions::default()
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

/// Words of an IMAP CAPABILITY line (untagged or a `[CAPABILITY ...]` code).
fn capability_words(lines: &[String]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix("* CAPABILITY ")
                .or_else(|| l.split_once("[CAPABILITY ").map(|(_, rest)| rest))
        })
        .flat_map(|caps| caps.split([' ', ']']))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A process for the proxy to kill: `sleep 60`, killed on drop.
fn victim() -> common::setup::ChildGuard {
    common::setup::ChildGuard(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("start sleep"),
    )
}

/// Waits (10 s at most) for `child` to exit; true if SIGKILL ended it.
fn died_of_sigkill(child: &mut common::setup::ChildGuard) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    child
        .wait_for_exit(Duration::from_secs(10))
        .is_some_and(|status| status.signal() == Some(9))
}

#[test]
fn proxy_command_matching() {
    use common::proxy::is_command;
    assert!(is_command("DELE 3", "DELE"));
    assert!(is_command("dele 3", "DELE"));
    assert!(is_command("QUIT", "QUIT"));
    assert!(is_command("A7 UID MOVE 1:5 Done", "UID MOVE"));
    assert!(is_command("A7 uid copy 4 Done", "UID COPY"));
    assert!(!is_command("A7 UID MOVED", "UID MOVE"));
    assert!(!is_command("t1 DELETE Done", "DELE"));
    assert!(!is_command("dXNlcj1oZWxwZGVzaxDELE", "DELE"));
    assert!(!is_command("A7 UID FETCH 1:* (UID) DELE", "DELE"));
}

/// Through the proxy to Dovecot's plain IMAP port: XOAUTH2 works in clear
/// text from loopback (LOGIN is disabled: this Dovecot has no plain
/// mechanism), every client line is recorded, a disarmed trigger does
/// nothing, an armed kill trigger kills the process and holds the command
/// back from the server; TLS passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_records_and_kills_before_forwarding() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start(&idp.introspection_url());
    dovecot.create_folder(USER, "Done");
    dovecot.deliver(USER, &mail(1));
    let token = access_token(&idp, USER, PASSWORD).await;
    let proxy = Proxy::start(dovecot.imap_port());

    let mut imap = LineClient::connect(proxy.port());
    assert!(imap.greeting.starts_with("* OK"), "{}", imap.greeting);
    let pre_login = capability_words(std::slice::from_ref(&imap.greeting));
    assert!(pre_login.contains("LOGINDISABLED"), "{pre_login:?}");
    assert!(pre_login.contains("AUTH=XOAUTH2"), "{pre_login:?}");
    let login = imap
        .imap("LOGIN alice@contoso.example wrong")
        .expect("LOGIN answered");
    assert!(
        login.last().is_some_and(|l| l.starts_with("t1 NO")),
        "{login:?}"
    );
    let auth = imap
        .imap_xoauth2(USER, &token)
        .expect("AUTHENTICATE answered");
    assert!(
        auth.starts_with("t2 OK"),
        "XOAUTH2 in clear text from loopback: {auth}"
    );
    let caps = capability_words(&imap.imap_ok("CAPABILITY"));
    for cap in ["IDLE", "MOVE", "UIDPLUS"] {
        assert!(caps.contains(cap), "Dovecot lacks {cap}: {caps:?}");
    }
    let select = imap.imap_ok("SELECT INBOX");
    assert!(select.iter().any(|l| l == "* 1 EXISTS"), "{select:?}");

    proxy.on_client_line("NOOP", Action::Drop);
    proxy.disarm();
    imap.imap_ok("NOOP"); // a disarmed trigger does nothing

    let mut child = victim();
    proxy.on_client_line("UID COPY", Action::Kill(child.0.id()));
    proxy.on_client_line("UID MOVE", Action::Kill(child.0.id()));
    assert_eq!(imap.imap("UID MOVE 1 Done"), None, "connection dropped");
    assert!(
        died_of_sigkill(&mut child),
        "the trigger killed the process"
    );
    assert_eq!(proxy.fired(), ["t6 UID MOVE 1 Done"]);
    assert_eq!(
        dovecot.message_count(USER, "INBOX"),
        1,
        "MOVE never arrived"
    );
    assert_eq!(dovecot.message_count(USER, "Done"), 0);

    let lines = proxy.client_lines();
    assert_eq!(lines.len(), 6, "every client line is recorded");
    assert!(lines[1].starts_with("t2 AUTHENTICATE XOAUTH2 "));
    assert_eq!(
        &lines[2..],
        [
            "t3 CAPABILITY",
            "t4 SELECT INBOX",
            "t5 NOOP",
            "t6 UID MOVE 1 Done"
        ]
    );

    // The other trigger went with the fired one; new connections still work.
    let mut again = LineClient::connect(proxy.port());
    let auth = again.imap_xoauth2(USER, &token).expect("answered");
    assert!(auth.starts_with("t1 OK"), "{auth}");
    again.imap_ok("SELECT INBOX");
    again.imap_ok("UID COPY 1 Done"); // not held back any more
    assert_eq!(proxy.connections(), 2);
    assert_eq!(dovecot.message_count(USER, "Done"), 1);

    // Binary data without line ends (TLS) passes through unchanged.
    let tls_proxy = Proxy::start(dovecot.imaps_port());
    let mut session = imaps_xoauth2(tls_proxy.port(), dovecot.ca_file(), USER, &token)
        .await
        .expect("IMAPS through the proxy");
    let inbox = session.select("INBOX").await.expect("SELECT");
    assert_eq!(inbox.exists, 1);
    session.logout().await.expect("LOGOUT");
}

/// POP3 on the plain port: two-step AUTH XOAUTH2 in clear text from
/// loopback, the UIDL format of the harness (`%08Xu%08Xv`: UID and
/// UIDVALIDITY in hex), and a dropped DELE deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_through_the_proxy_two_step_xoauth2_and_uidl_format() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start(&idp.introspection_url());
    dovecot.deliver_many(USER, (0..3).map(mail));
    let token = access_token(&idp, USER, PASSWORD).await;
    let proxy = Proxy::start(dovecot.pop3_port());
    let login = |pop3: &mut LineClient| {
        let capa = pop3.pop3("CAPA", true).expect("CAPA answered");
        assert!(capa.iter().any(|l| l == "UIDL"), "{capa:?}");
        assert!(
            capa.iter()
                .any(|l| l.starts_with("SASL") && l.contains("XOAUTH2")),
            "{capa:?}"
        );
        let go_on = pop3.pop3("AUTH XOAUTH2", false).expect("AUTH answered");
        assert_eq!(go_on, ["+ "], "empty continuation");
        let ok = pop3
            .pop3(&common::imap::xoauth2_b64(USER, &token), false)
            .expect("answered");
        assert!(ok[0].starts_with("+OK"), "XOAUTH2 in clear text: {ok:?}");
    };

    let mut pop3 = LineClient::connect(proxy.port());
    assert!(pop3.greeting.starts_with("+OK"), "{}", pop3.greeting);
    login(&mut pop3);
    let uidl = pop3.pop3("UIDL", true).expect("UIDL answered");
    let uidvalidity = dovecot.uidvalidity(USER, "INBOX");
    let expected: Vec<String> = (1..=3)
        .map(|n| format!("{n} {n:08x}{uidvalidity:08x}"))
        .collect();
    assert_eq!(&uidl[1..], expected, "UIDL is %08Xu%08Xv");
    proxy.on_client_line("DELE", Action::Drop);
    assert_eq!(pop3.pop3("DELE 1", false), None, "connection dropped");
    assert_eq!(proxy.fired(), ["DELE 1"]);

    let mut pop3 = LineClient::connect(proxy.port());
    login(&mut pop3);
    let stat = pop3.pop3("STAT", false).expect("STAT answered");
    assert!(stat[0].starts_with("+OK 3 "), "{stat:?}");
    assert!(pop3.pop3("QUIT", false).is_some());
    assert_eq!(dovecot.message_count(USER, "INBOX"), 3, "nothing deleted");
    let lines = proxy.client_lines();
    assert_eq!(lines.iter().filter(|l| *l == "AUTH XOAUTH2").count(), 2);
}

/// `imap_capability` hides IDLE and MOVE before and after login (Dovecot
/// still executes them if asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_capability_knob_hides_idle_and_move() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start_with(
        &idp.introspection_url(),
        DovecotOptions {
            imap_capability: Some(NO_IDLE_NO_MOVE_CAPABILITY.into()),
            ..DovecotOptions::default()
        },
    );
    let token = access_token(&idp, USER, PASSWORD).await;
    let mut imap = LineClient::connect(dovecot.imap_port());
    let auth = imap.imap_xoauth2(USER, &token).expect("answered");
    assert!(auth.starts_with("t1 OK"), "login failed");
    let caps = imap.imap_ok("CAPABILITY");
    for words in [
        capability_words(std::slice::from_ref(&imap.greeting)),
        capability_words(std::slice::from_ref(&auth)),
        capability_words(&caps),
    ] {
        assert!(words.contains("UIDPLUS"), "{words:?}");
        assert!(words.contains("IMAP4rev1"), "{words:?}");
        assert!(
            !words.contains("IDLE") && !words.contains("MOVE"),
            "{words:?}"
        );
    }
}

/// Dovecot counts a loopback connection as secured: with a plain password,
/// LOGIN and USER/PASS work in clear text on the plain ports from 127.0.0.1
/// despite `disable_plaintext_auth = yes`; the login line then says
/// "secured" where a login under TLS says "TLS".
#[tokio::test]
async fn plaintext_auth_is_allowed_from_loopback() {
    let idp = IdP::start();
    let dovecot = Dovecot::start_with(
        &idp.introspection_url(),
        DovecotOptions {
            plain_password: Some("plainpw".into()),
            ..DovecotOptions::default()
        },
    );
    let mut imap = LineClient::connect(dovecot.imap_port());
    assert!(imap.greeting.contains("AUTH=PLAIN"), "{}", imap.greeting);
    assert!(
        !imap.greeting.contains("LOGINDISABLED"),
        "{}",
        imap.greeting
    );
    imap.imap_ok("LOGIN dave@contoso.example plainpw");
    let line = dovecot.login_line("imap-login", "dave@contoso.example");
    assert!(
        line.contains("method=PLAIN") && line.contains(", secured,"),
        "{line}"
    );

    let mut pop3 = LineClient::connect(dovecot.pop3_port());
    assert_eq!(
        pop3.pop3("USER erin@contoso.example", false),
        Some(vec!["+OK".to_string()])
    );
    let pass = pop3.pop3("PASS plainpw", false).expect("answered");
    assert!(pass[0].starts_with("+OK"), "{pass:?}");
    let line = dovecot.login_line("pop3-login", "erin@contoso.example");
    assert!(line.contains(", secured,"), "{line}");

    let client = imaps_connect(dovecot.imaps_port(), dovecot.ca_file()).await;
    client
        .login("frank@contoso.example", "plainpw")
        .await
        .map_err(|(e, _)| e)
        .expect("LOGIN over IMAPS");
    let line = dovecot.login_line("imap-login", "frank@contoso.example");
    assert!(line.contains(", TLS,"), "{line}");
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

// ---------------------------------------------------------------------------
// IdP: authorization code + PKCE, client authentication, certificates,
// device code, id_tokens, fault injection and bookkeeping.

const IMAP_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
const LOOPBACK_REDIRECT: &str = "http://127.0.0.1:53117/callback";

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// (code_verifier, S256 code_challenge) as RFC 7636 appendix B computes them.
fn pkce_pair() -> (String, String) {
    use sha2::Digest;
    let verifier = b64url(&rand::random::<[u8; 32]>());
    let challenge = b64url(&sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn authorize_url(idp: &IdP, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&idp.authorize_url()).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

/// A complete authorize request for `redirect_uri` with this challenge.
fn pkce_authorize_url(idp: &IdP, redirect_uri: &str, scope: &str, challenge: &str) -> String {
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
fn location_query(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap_or_else(|e| panic!("Location {location:?} is not a URL: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// Asserts a redirect carries an Entra error and returns its parameters.
fn assert_redirect_error(location: &str, error: &str, code: u32) -> HashMap<String, String> {
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

async fn signed_in_code(idp: &IdP, scope: &str, challenge: &str) -> String {
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

async fn redeem_code(
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
fn jwt_parts(jwt: &str) -> (Value, Value) {
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

async fn introspect(idp: &IdP, token: &str) -> Value {
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

async fn device_code_request(idp: &IdP, client_id: &str, scope: Option<&str>) -> (u16, Value) {
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

async fn device_poll(idp: &IdP, device_code: &str) -> (u16, Value) {
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
