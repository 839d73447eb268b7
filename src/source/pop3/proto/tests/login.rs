//! Signing in: XOAUTH2, PLAIN, USER/PASS.

use super::*;

#[tokio::test]
async fn xoauth2_two_step_exact_bytes() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    run(c.auth_xoauth2("helpdesk@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        // Nothing more may come before the server's go-ahead.
        s.quiet(Duration::from_millis(100)).await;
        s.send("+ \r\n").await;
        s.expect(format!(
            "{}\r\n",
            xoauth2_line("helpdesk@example.com", TOKEN)
        ))
        .await;
        s.send("+OK User successfully authenticated.\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn xoauth2_accepts_bare_plus() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("+\r\n").await;
        s.expect(format!("{}\r\n", xoauth2_line("u@example.com", TOKEN)))
            .await;
        s.send("+OK\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn xoauth2_error_challenge_is_answered_and_decoded() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let err = run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("+ \r\n").await;
        s.expect(format!("{}\r\n", xoauth2_line("u@example.com", TOKEN)))
            .await;
        s.send("+ eyJzdGF0dXMiOiI0MDEifQ==\r\n").await;
        // The client must end the exchange with an empty line.
        s.expect("\r\n").await;
        s.send("-ERR Authentication failure: unknown user name or bad password.\r\n")
            .await;
    })
    .await
    .unwrap_err();
    match &err {
        Pop3Error::AuthRejected { text } => {
            assert!(text.starts_with("Authentication failure"), "{text}");
            assert!(text.contains(r#"{"status":"401"}"#), "{text}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains(r#""status":"401""#), "{shown}");
    assert_no_secrets(&err, &[TOKEN, &xoauth2_line("u@example.com", TOKEN), "eyJ"]);
}

#[tokio::test]
async fn xoauth2_undecodable_challenge_keeps_the_err_text() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let err = run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("+\r\n").await;
        s.expect(format!("{}\r\n", xoauth2_line("u@example.com", TOKEN)))
            .await;
        s.send("+ not*base64\r\n").await;
        s.expect("\r\n").await;
        s.send("-ERR denied\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::AuthRejected { text } if text == "denied"),
        "{err:?}"
    );
}

#[tokio::test]
async fn xoauth2_rejected_at_once() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let err = run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("-ERR Unrecognized authentication type\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::AuthRejected { text } if text == "Unrecognized authentication type"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "POP3 authentication rejected: -ERR Unrecognized authentication type"
    );
}

#[tokio::test]
async fn xoauth2_rejected_after_credentials_without_challenge() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let err = run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("+\r\n").await;
        s.expect(format!("{}\r\n", xoauth2_line("u@example.com", TOKEN)))
            .await;
        s.send("-ERR [AUTH] Invalid credentials\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::AuthRejected { text } if text == "[AUTH] Invalid credentials"),
        "{err:?}"
    );
}

#[tokio::test]
async fn xoauth2_server_echoing_secrets_is_redacted() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let line = xoauth2_line("u@example.com", TOKEN);
    let err = run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("+\r\n").await;
        s.expect(format!("{line}\r\n")).await;
        s.send(format!("-ERR bad command {line} token {TOKEN}\r\n"))
            .await;
    })
    .await
    .unwrap_err();
    assert_no_secrets(&err, &[TOKEN, &line]);
    assert!(err.to_string().contains("[redacted]"), "{err}");
}

#[tokio::test]
async fn xoauth2_garbage_echoing_secrets_is_redacted() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let line = xoauth2_line("u@example.com", TOKEN);
    let err = run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("+\r\n").await;
        s.expect(format!("{line}\r\n")).await;
        s.send(format!("{line}\r\n")).await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::Protocol { .. }), "{err:?}");
    assert_no_secrets(&err, &[TOKEN, &line]);
}

#[tokio::test]
async fn xoauth2_ok_before_credentials_is_protocol_error() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let err = run(c.auth_xoauth2("u@example.com", &token), async {
        s.expect("AUTH XOAUTH2\r\n").await;
        s.send("+OK\r\n").await;
        s.quiet(Duration::from_millis(50)).await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn xoauth2_refuses_separator_in_user_without_sending() {
    let (mut c, mut s) = pair();
    let token = secret(TOKEN);
    let err = run(c.auth_xoauth2("u\x01auth=x", &token), async {
        s.quiet(Duration::from_millis(50)).await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn auth_plain_exact_bytes() {
    let (mut c, mut s) = pair();
    let password = secret(PASSWORD);
    run(c.auth_plain("helpdesk", &password), async {
        s.expect("AUTH PLAIN\r\n").await;
        s.quiet(Duration::from_millis(50)).await;
        s.send("+ \r\n").await;
        let want = STANDARD.encode(format!("\0helpdesk\0{PASSWORD}"));
        assert_eq!(want, "AGhlbHBkZXNrAGNvcnJlY3QgaG9yc2UgYmF0dGVyeSBzdGFwbGU=");
        s.expect(format!("{want}\r\n")).await;
        s.send("+OK maildrop locked and ready\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn auth_plain_rejected() {
    let (mut c, mut s) = pair();
    let password = secret(PASSWORD);
    let err = run(c.auth_plain("helpdesk", &password), async {
        s.expect("AUTH PLAIN\r\n").await;
        s.send("+\r\n").await;
        s.expect(format!(
            "{}\r\n",
            STANDARD.encode(format!("\0helpdesk\0{PASSWORD}"))
        ))
        .await;
        s.send("-ERR [AUTH] Authentication failed.\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::AuthRejected { text } if text == "[AUTH] Authentication failed."),
        "{err:?}"
    );
    assert_no_secrets(
        &err,
        &[
            PASSWORD,
            &STANDARD.encode(format!("\0helpdesk\0{PASSWORD}")),
        ],
    );
}

#[tokio::test]
async fn user_pass_ok() {
    let (mut c, mut s) = pair();
    let password = secret(PASSWORD);
    run(c.user_pass("helpdesk", &password), async {
        s.expect("USER helpdesk\r\n").await;
        s.send("+OK\r\n").await;
        s.expect(format!("PASS {PASSWORD}\r\n")).await;
        s.send("+OK logged in\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_later_error_echoing_the_password_is_scrubbed_too() {
    let (mut c, mut s) = pair();
    let password = secret(PASSWORD);
    run(c.user_pass("helpdesk", &password), async {
        s.expect("USER helpdesk\r\n").await;
        s.send("+OK\r\n").await;
        s.expect(format!("PASS {PASSWORD}\r\n")).await;
        s.send("+OK logged in\r\n").await;
    })
    .await
    .unwrap();
    // A truncated echo, long after the login.
    let err = run(c.stat(), async {
        s.expect("STAT\r\n").await;
        s.send(format!(
            "-ERR [SYS/TEMP] session of {} broke\r\n",
            &PASSWORD[..20]
        ))
        .await;
    })
    .await
    .expect_err("refused");
    assert_no_secrets(&err, &[&PASSWORD[..16], &PASSWORD[4..20]]);
    assert!(err.to_string().contains("[redacted]"), "{err}");
}

#[tokio::test]
async fn user_pass_rejected_at_pass() {
    let (mut c, mut s) = pair();
    let password = secret(PASSWORD);
    let err = run(c.user_pass("helpdesk", &password), async {
        s.expect("USER helpdesk\r\n").await;
        s.send("+OK\r\n").await;
        s.expect(format!("PASS {PASSWORD}\r\n")).await;
        // A careless server echoing the command back.
        s.send(format!("-ERR invalid password for PASS {PASSWORD}\r\n"))
            .await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::AuthRejected { .. }), "{err:?}");
    assert!(err.to_string().contains("invalid password"), "{err}");
    assert_no_secrets(&err, &[PASSWORD]);
}

#[tokio::test]
async fn user_pass_rejected_at_user_sends_no_password() {
    let (mut c, mut s) = pair();
    let password = secret(PASSWORD);
    let err = run(c.user_pass("nobody", &password), async {
        s.expect("USER nobody\r\n").await;
        s.send("-ERR no such user\r\n").await;
        s.quiet(Duration::from_millis(50)).await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::AuthRejected { text } if text == "no such user"),
        "{err:?}"
    );
}

#[tokio::test]
async fn user_pass_refuses_line_breaks_without_sending() {
    let (mut c, mut s) = pair();
    let password = secret("pw\r\nDELE 1");
    let err = run(c.user_pass("helpdesk", &password), async {
        s.quiet(Duration::from_millis(50)).await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Protocol { step: "PASS", .. }),
        "{err:?}"
    );
    assert_no_secrets(&err, &["pw", "DELE 1"]);
}
