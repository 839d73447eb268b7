//! DELE, NOOP, QUIT; staying in step with the server; what errors may quote.

use super::*;

#[tokio::test]
async fn dele_ok_and_err() {
    let (mut c, mut s) = pair();
    run(
        async {
            c.dele(1).await.unwrap();
            let err = c.dele(2).await.unwrap_err();
            assert!(
                matches!(&err, Pop3Error::Err { step: "DELE", text } if text == "message 2 already deleted"),
                "{err:?}"
            );
        },
        async {
            s.expect("DELE 1\r\n").await;
            s.send("+OK message 1 deleted\r\n").await;
            s.expect("DELE 2\r\n").await;
            s.send("-ERR message 2 already deleted\r\n").await;
        },
    )
    .await;
    run(c.noop(), async {
        s.expect("NOOP\r\n").await;
        s.send("+OK\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn noop_ok() {
    let (mut c, mut s) = pair();
    run(c.noop(), async {
        s.expect("NOOP\r\n").await;
        s.send("+OK\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn quit_ok_closes_our_side() {
    let (c, mut s) = pair();
    run(c.quit(), async {
        s.expect("QUIT\r\n").await;
        s.send("+OK dewey POP3 server signing off (maildrop empty)\r\n")
            .await;
        s.expect_eof().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn quit_err_is_reported() {
    let (c, mut s) = pair();
    let err = run(c.quit(), async {
        s.expect("QUIT\r\n").await;
        s.send("-ERR some deleted messages not removed\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::Err { step: "QUIT", text } if text == "some deleted messages not removed"),
        "{err:?}"
    );
}

#[tokio::test]
async fn quit_without_answer_is_reported() {
    let (c, mut s) = pair();
    let err = run(c.quit(), async {
        s.expect("QUIT\r\n").await;
        s.io.shutdown().await.unwrap();
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::Closed { step: "QUIT" }), "{err:?}");
}

fn assert_out_of_step(err: &Pop3Error, want_step: &str) {
    assert!(
        matches!(err, Pop3Error::Protocol { step, detail } if *step == want_step && detail.contains("out of step")),
        "{err:?}"
    );
}

#[tokio::test]
async fn cancelled_retr_refuses_further_commands() {
    let (mut c, mut s) = pair();
    let mut out = Vec::new();
    run(
        async {
            // As in a select! against shutdown: the RETR future is dropped
            // half-way through the message.
            let cut = tokio::time::timeout(Duration::from_millis(100), c.retr(1, &mut out));
            assert!(cut.await.is_err(), "RETR should still have been running");
        },
        async {
            s.expect("RETR 1\r\n").await;
            // The rest of this message would answer DELE and QUIT.
            s.send("+OK\r\nSubject: x\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            s.send("+OK\r\n+OK\r\n.\r\n").await;
        },
    )
    .await;
    let err = run(c.dele(1), s.quiet(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_out_of_step(&err, "DELE");
    // QUIT consumes the connection, so the server sees it close with
    // nothing sent.
    let err = run(c.quit(), s.expect_eof()).await.unwrap_err();
    assert_out_of_step(&err, "QUIT");
}

#[tokio::test]
async fn late_answer_after_timeout_is_not_taken_for_the_next() {
    let (mut c, mut s) = pair_with(64 * 1024, Duration::from_millis(100));
    let err = run(c.noop(), async {
        s.expect("NOOP\r\n").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Would parse as a STAT answer of 5 messages.
        s.send("+OK 5 500\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Timeout { step: "NOOP", .. }),
        "{err:?}"
    );
    let err = run(c.stat(), s.quiet(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_out_of_step(&err, "STAT");
}

#[tokio::test]
async fn garbage_answer_refuses_further_commands() {
    let (mut c, mut s) = pair();
    let err = run(c.noop(), async {
        s.expect("NOOP\r\n").await;
        s.send("what?\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Protocol { step: "NOOP", .. }),
        "{err:?}"
    );
    let err = run(c.noop(), s.quiet(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_out_of_step(&err, "NOOP");
}

#[tokio::test]
async fn into_inner_refused_after_failed_stls() {
    let (mut c, mut s) = pair_with(64 * 1024, Duration::from_millis(100));
    let err = run(c.stls(), async {
        s.expect("STLS\r\n").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Timeout { step: "STLS", .. }),
        "{err:?}"
    );
    assert_out_of_step(&c.into_inner().unwrap_err(), "STLS");
}

#[tokio::test]
async fn rejected_auth_allows_fallback_login() {
    let (mut c, mut s) = pair();
    let password = secret(PASSWORD);
    let err = run(c.auth_plain("helpdesk", &password), async {
        s.expect("AUTH PLAIN\r\n").await;
        s.send("-ERR mechanism not supported\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::AuthRejected { .. }), "{err:?}");
    run(c.user_pass("helpdesk", &password), async {
        s.expect("USER helpdesk\r\n").await;
        s.send("+OK\r\n").await;
        s.expect(format!("PASS {PASSWORD}\r\n")).await;
        s.send("+OK\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn refused_credentials_leave_connection_usable() {
    let (mut c, mut s) = pair();
    let password = secret("bad\npassword");
    let err = c.user_pass("helpdesk", &password).await.unwrap_err();
    assert!(
        matches!(err, Pop3Error::Protocol { step: "PASS", .. }),
        "{err:?}"
    );
    run(c.noop(), async {
        s.expect("NOOP\r\n").await;
        s.send("+OK\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn debug_does_not_show_buffers() {
    let (mut c, mut s) = pair();
    run(c.stls(), async {
        s.expect("STLS\r\n").await;
        s.send("+OK\r\nSECRET-BUFFERED-BYTES\r\n").await;
    })
    .await
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
    assert!(shown.contains("buffered_bytes: 23"), "{shown}");
}

/// Asserts that no 12-character piece of any secret shows, which also
/// catches a secret cut short by a shortened quote.
fn assert_no_fragments(err: &Pop3Error, secrets: &[&str]) {
    let shown = format!("{err} / {err:?}");
    for secret in secrets {
        let chars: Vec<char> = secret.chars().collect();
        for piece in chars.windows(12.min(chars.len())) {
            let piece: String = piece.iter().collect();
            assert!(
                !shown.contains(&piece),
                "error text leaks {piece:?} of a secret: {shown}"
            );
        }
    }
}

#[tokio::test]
async fn no_error_display_contains_secrets() {
    // A token as long as a real one, so that the base64 line is far
    // longer than any quote of server output.
    let token_text = format!("eyJ0eXAiOiJKV1Qi.{}", "Zq9-x_Kp".repeat(200));
    let token = secret(&token_text);
    let password_text = "pass\twith tab and spaces";
    let password = secret(password_text);
    let user = "helpdesk@example.com";
    let xo_line = xoauth2_line(user, &token_text);
    let plain_line = STANDARD.encode(format!("\0{user}\0{password_text}"));
    let secrets = [
        token_text.as_str(),
        password_text,
        xo_line.as_str(),
        plain_line.as_str(),
    ];
    let mut errors = Vec::new();

    // Hostile XOAUTH2 servers: echo as garbage, in -ERR, inside the
    // JSON challenge.
    let echoes = [
        format!("{xo_line}\r\n"),
        format!("-ERR you sent {xo_line} with {token_text}\r\n"),
        format!(
            "+ {}\r\n",
            STANDARD.encode(format!(r#"{{"status":"401","got":"{token_text}"}}"#))
        ),
    ];
    for echo in echoes {
        let (mut c, mut s) = pair();
        let err = run(c.auth_xoauth2(user, &token), async {
            s.expect("AUTH XOAUTH2\r\n").await;
            s.send("+ \r\n").await;
            s.expect(format!("{xo_line}\r\n")).await;
            s.send(&echo).await;
            if echo.starts_with('+') {
                s.expect("\r\n").await;
                s.send(format!("-ERR denied {token_text}\r\n")).await;
            }
        })
        .await
        .unwrap_err();
        errors.push(err);
    }

    // Hostile PLAIN and USER/PASS servers.
    for echo in [
        format!("{plain_line}\r\n"),
        format!("-ERR {plain_line} / {password_text}\r\n"),
    ] {
        let (mut c, mut s) = pair();
        let err = run(c.auth_plain(user, &password), async {
            s.expect("AUTH PLAIN\r\n").await;
            s.send("+\r\n").await;
            s.expect(format!("{plain_line}\r\n")).await;
            s.send(&echo).await;
        })
        .await
        .unwrap_err();
        errors.push(err);
    }
    for echo in [
        format!("PASS {password_text}\r\n"),
        format!("-ERR bad PASS {password_text}\r\n"),
    ] {
        let (mut c, mut s) = pair();
        let err = run(c.user_pass(user, &password), async {
            s.expect(format!("USER {user}\r\n")).await;
            s.send("+OK\r\n").await;
            s.expect(format!("PASS {password_text}\r\n")).await;
            s.send(&echo).await;
        })
        .await
        .unwrap_err();
        errors.push(err);
    }

    // Failures that are not the server's text at all.
    let bad = secret("line\r\nbreak");
    errors.push(pair().0.user_pass(user, &bad).await.unwrap_err());
    let bad_token = secret("tok\x01en");
    errors.push(pair().0.auth_xoauth2(user, &bad_token).await.unwrap_err());
    let (mut c, s) = pair_with(1024, Duration::from_millis(50));
    errors.push(c.auth_plain(user, &password).await.unwrap_err());
    drop(s);

    assert_eq!(errors.len(), 10);
    for err in &errors {
        assert_no_fragments(err, &secrets);
        assert_no_fragments(err, &["line\r\nbreak", "tok\x01en"]);
    }
    // The echoes were there, and were cut out rather than dropped.
    for err in &errors[..7] {
        assert!(err.to_string().contains("[redacted]"), "{err}");
    }
}

#[test]
fn reply_classification() {
    assert!(matches!(parse_reply(b"+OK\r\n"), Some(Reply::Ok(t)) if t.is_empty()));
    assert!(matches!(parse_reply(b"+OK hi there\r\n"), Some(Reply::Ok(t)) if t == "hi there"));
    assert!(matches!(parse_reply(b"-ERR\n"), Some(Reply::Err(t)) if t.is_empty()));
    assert!(matches!(parse_reply(b"-err nope\r\n"), Some(Reply::Err(t)) if t == "nope"));
    assert!(matches!(parse_reply(b"+\r\n"), Some(Reply::Continue(t)) if t.is_empty()));
    assert!(matches!(parse_reply(b"+ \r\n"), Some(Reply::Continue(t)) if t.is_empty()));
    assert!(matches!(parse_reply(b"+ abc=\r\n"), Some(Reply::Continue(t)) if t == "abc="));
    assert!(parse_reply(b"-ERROR\r\n").is_none());
    assert!(parse_reply(b"OK\r\n").is_none());
    assert!(parse_reply(b"\r\n").is_none());
}

#[test]
fn long_garbage_is_quoted_short() {
    let q = quote("z".repeat(10_000).as_bytes());
    assert!(q.len() < MAX_QUOTED + 10, "{q}");
    assert!(q.ends_with('…'));
}
