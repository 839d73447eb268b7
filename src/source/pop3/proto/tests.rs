//! Tests of the POP3 wire protocol against a scripted server on a duplex pipe.
use super::*;
use std::future::Future;
use tokio::io::{AsyncReadExt, DuplexStream, duplex};

const TIMEOUT: Duration = Duration::from_secs(5);
const TOKEN: &str = "ya29.TOP-SECRET-access-token";
const PASSWORD: &str = "correct horse battery staple";

/// The scripted server side of a duplex pipe.
struct Server {
    io: DuplexStream,
}

impl Server {
    /// Reads exactly `want.len()` bytes and asserts they are `want`.
    async fn expect(&mut self, want: impl AsRef<[u8]>) {
        let want = want.as_ref();
        let mut got = vec![0; want.len()];
        tokio::time::timeout(TIMEOUT, self.io.read_exact(&mut got))
            .await
            .expect("client did not send in time")
            .expect("read from client");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "client sent the wrong bytes"
        );
    }

    async fn send(&mut self, data: impl AsRef<[u8]>) {
        self.io
            .write_all(data.as_ref())
            .await
            .expect("write to client");
        self.io.flush().await.expect("flush to client");
    }

    /// Asserts that the client sends nothing for `wait`.
    async fn quiet(&mut self, wait: Duration) {
        let mut byte = [0u8; 1];
        if let Ok(read) = tokio::time::timeout(wait, self.io.read(&mut byte)).await {
            panic!("client sent {read:?} ({byte:?}) when it should have waited");
        }
    }

    /// Asserts that the client has closed its side without sending more.
    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(TIMEOUT, self.io.read_to_end(&mut rest))
            .await
            .expect("client did not close")
            .expect("read to end");
        assert!(rest.is_empty(), "unexpected bytes {rest:?}");
    }
}

fn pair_with(buffer: usize, timeout: Duration) -> (Connection<DuplexStream>, Server) {
    let (client, server) = duplex(buffer);
    (Connection::new(client, timeout), Server { io: server })
}

fn pair() -> (Connection<DuplexStream>, Server) {
    pair_with(64 * 1024, TIMEOUT)
}

/// Runs client and server concurrently in one task, so a failed
/// assertion on the server side fails the test directly.
async fn run<C: Future, V: Future<Output = ()>>(client: C, server: V) -> C::Output {
    let (out, ()) = tokio::join!(client, server);
    out
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s)
}

fn xoauth2_line(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn assert_no_secrets(err: &Pop3Error, secrets: &[&str]) {
    let shown = format!("{err} / {err:?}");
    for s in secrets {
        assert!(!shown.contains(s), "error text leaks {s:?}: {shown}");
    }
}

/// What the server sends for `body` in a RETR answer.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = b"+OK message follows\r\n".to_vec();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

// --- greeting -------------------------------------------------------

#[tokio::test]
async fn greeting_ok_returns_banner_text() {
    let (mut c, mut s) = pair();
    let got = run(c.greeting(), async {
        s.send("+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(got, "POP3 server ready <1896.697170952@dbc.mtview.ca.us>");
}

#[tokio::test]
async fn greeting_bare_ok_and_lowercase() {
    let (mut c, mut s) = pair();
    let got = run(c.greeting(), s.send("+ok\n")).await.unwrap();
    assert_eq!(got, "");
}

#[tokio::test]
async fn greeting_err_is_an_error_with_the_text() {
    let (mut c, mut s) = pair();
    let err = run(c.greeting(), s.send("-ERR too many connections\r\n"))
        .await
        .unwrap_err();
    match &err {
        Pop3Error::Err { step, text } => {
            assert_eq!(*step, "greeting");
            assert_eq!(text, "too many connections");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "POP3 greeting refused: -ERR too many connections"
    );
}

#[tokio::test]
async fn greeting_garbage_is_protocol_error() {
    let (mut c, mut s) = pair();
    let err = run(c.greeting(), s.send("* OK IMAP4rev1 ready\r\n"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Pop3Error::Protocol {
                step: "greeting",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("IMAP4rev1"), "{err}");
}

#[tokio::test]
async fn plus_okay_is_not_plus_ok() {
    let (mut c, mut s) = pair();
    let err = run(c.greeting(), s.send("+OKAY\r\n")).await.unwrap_err();
    assert!(matches!(err, Pop3Error::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn greeting_closed_connection() {
    let (mut c, s) = pair();
    drop(s);
    let err = c.greeting().await.unwrap_err();
    assert!(
        matches!(err, Pop3Error::Closed { step: "greeting" }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "POP3 server closed the connection during greeting"
    );
}

#[tokio::test]
async fn status_line_over_cap_is_protocol_error() {
    let (mut c, mut s) = pair();
    let long = format!("+OK {}\r\n", "a".repeat(MAX_LINE + 10));
    let err = run(c.greeting(), s.send(long)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Pop3Error::Protocol {
                step: "greeting",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("longer than"), "{err}");
}

#[tokio::test]
async fn status_line_just_under_cap_is_fine() {
    let (mut c, mut s) = pair();
    let text = "b".repeat(MAX_LINE - "+OK \r\n".len());
    let line = format!("+OK {text}\r\n");
    assert_eq!(line.len(), MAX_LINE);
    let got = run(c.greeting(), s.send(line)).await.unwrap();
    assert_eq!(got, text);
}

#[tokio::test]
async fn control_characters_in_server_text_are_neutralised() {
    let (mut c, mut s) = pair();
    let err = run(c.greeting(), s.send("-ERR bad\x1b[31m red\r\n"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains('\x1b'), "{err}");
}

// --- CAPA / STLS ----------------------------------------------------

#[tokio::test]
async fn capa_parses_capabilities() {
    let (mut c, mut s) = pair();
    let caps = run(c.capa(), async {
        s.expect("CAPA\r\n").await;
        s.send(
            "+OK Capability list follows\r\n\
             TOP\r\n\
             USER\r\n\
             SASL PLAIN xoauth2\r\n\
             RESP-CODES\r\n\
             pipelining\r\n\
             UIDL\r\n\
             STLS\r\n\
             IMPLEMENTATION Example POP3 1.0\r\n\
             .\r\n",
        )
        .await;
    })
    .await
    .unwrap();
    assert!(caps.uidl && caps.user && caps.stls && caps.pipelining);
    assert_eq!(caps.sasl, vec!["PLAIN".to_owned(), "XOAUTH2".to_owned()]);
    assert_eq!(caps.raw.len(), 8);
    assert_eq!(caps.raw[2], "SASL PLAIN xoauth2");
    assert_eq!(caps.raw[7], "IMPLEMENTATION Example POP3 1.0");
}

#[tokio::test]
async fn capa_minimal_server() {
    let (mut c, mut s) = pair();
    let caps = run(c.capa(), async {
        s.expect("CAPA\r\n").await;
        s.send("+OK\r\nTOP\r\n.\r\n").await;
    })
    .await
    .unwrap();
    assert_eq!(
        caps,
        Capabilities {
            raw: vec!["TOP".to_owned()],
            ..Capabilities::default()
        }
    );
}

#[tokio::test]
async fn capa_err_means_no_capabilities() {
    let (mut c, mut s) = pair();
    let caps = run(c.capa(), async {
        s.expect("CAPA\r\n").await;
        s.send("-ERR unknown command\r\n").await;
    })
    .await
    .unwrap();
    assert_eq!(caps, Capabilities::default());
    // The connection is still in step.
    run(c.noop(), async {
        s.expect("NOOP\r\n").await;
        s.send("+OK\r\n").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stls_clean_hands_back_the_stream() {
    let (mut c, mut s) = pair();
    run(c.stls(), async {
        s.expect("STLS\r\n").await;
        s.send("+OK Begin TLS negotiation\r\n").await;
    })
    .await
    .unwrap();
    let mut raw = c.into_inner().unwrap();
    // The stream is usable as is for the handshake.
    s.send("\x16\x03\x01").await;
    let mut hello = [0u8; 3];
    raw.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"\x16\x03\x01");
}

#[tokio::test]
async fn stls_with_injected_bytes_refuses_into_inner() {
    let (mut c, mut s) = pair();
    run(c.stls(), async {
        s.expect("STLS\r\n").await;
        // Plaintext sent in the same segment as the +OK: an attacker
        // injecting a response that would be read as if over TLS.
        s.send("+OK Begin TLS negotiation\r\n+OK logged in\r\n")
            .await;
    })
    .await
    .unwrap();
    let err = c.into_inner().unwrap_err();
    assert!(
        matches!(err, Pop3Error::Protocol { step: "STLS", .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("before the TLS handshake"),
        "{err}"
    );
}

#[tokio::test]
async fn stls_refused() {
    let (mut c, mut s) = pair();
    let err = run(c.stls(), async {
        s.expect("STLS\r\n").await;
        s.send("-ERR TLS not available\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::Err { step: "STLS", text } if text == "TLS not available"),
        "{err:?}"
    );
}

// --- XOAUTH2 --------------------------------------------------------

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

// --- PLAIN, USER/PASS -----------------------------------------------

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

// --- STAT, UIDL, LIST -----------------------------------------------

#[tokio::test]
async fn stat_ok() {
    let (mut c, mut s) = pair();
    let got = run(c.stat(), async {
        s.expect("STAT\r\n").await;
        s.send("+OK 2 320\r\n").await;
    })
    .await
    .unwrap();
    assert_eq!(got, (2, 320));
}

#[tokio::test]
async fn stat_malformed() {
    let (mut c, mut s) = pair();
    let err = run(c.stat(), async {
        s.expect("STAT\r\n").await;
        s.send("+OK lots\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Protocol { step: "STAT", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn uidl_multiline() {
    let (mut c, mut s) = pair();
    let got = run(c.uidl(), async {
        s.expect("UIDL\r\n").await;
        s.send(
            "+OK unique-id listing follows\r\n\
             1 whqtswO00WBw418f9t5JxYwZ\r\n\
             2  QhdPYR:00WBw1Ph7x7\r\n\
             3 ..dotted\n\
             .\r\n",
        )
        .await;
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        vec![
            (1, "whqtswO00WBw418f9t5JxYwZ".to_owned()),
            (2, "QhdPYR:00WBw1Ph7x7".to_owned()),
            (3, "..dotted".to_owned()),
        ]
    );
}

#[tokio::test]
async fn uidl_empty_mailbox() {
    let (mut c, mut s) = pair();
    let got = run(c.uidl(), async {
        s.expect("UIDL\r\n").await;
        s.send("+OK\r\n.\r\n").await;
    })
    .await
    .unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn uidl_err() {
    let (mut c, mut s) = pair();
    let err = run(c.uidl(), async {
        s.expect("UIDL\r\n").await;
        s.send("-ERR unknown command\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::Err { step: "UIDL", text } if text == "unknown command"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "POP3 UIDL refused: -ERR unknown command");
}

#[tokio::test]
async fn uidl_malformed_line_drains_and_keeps_connection_in_step() {
    let (mut c, mut s) = pair();
    let err = run(c.uidl(), async {
        s.expect("UIDL\r\n").await;
        s.send("+OK\r\n1 a\r\nbogus\r\n2 b\r\n3\r\n.\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::Protocol { step: "UIDL", detail } if detail.contains("bogus")),
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
async fn uidl_bytes_outside_the_rfc_are_escaped_not_refused() {
    // Refusing the listing would stop the mailbox on every poll; a
    // lossy conversion could merge two ids. `%XX` does neither.
    let (mut c, mut s) = pair();
    let ids = run(c.uidl(), async {
        s.expect("UIDL\r\n").await;
        s.send(b"+OK\r\n1 ab\xff\r\n2 ab\xfe\r\n3 a\x0bb\r\n.\r\n")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(
        ids,
        vec![
            (1, "ab%FF".to_string()),
            (2, "ab%FE".to_string()),
            (3, "a%0Bb".to_string())
        ]
    );
}

#[tokio::test]
async fn uidl_line_over_cap() {
    let (mut c, mut s) = pair();
    let err = run(c.uidl(), async {
        s.expect("UIDL\r\n").await;
        s.send(format!("+OK\r\n1 {}\r\n.\r\n", "x".repeat(MAX_LINE)))
            .await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Protocol { step: "UIDL", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn list_sizes() {
    let (mut c, mut s) = pair();
    let got = run(c.list(), async {
        s.expect("LIST\r\n").await;
        s.send("+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(got, vec![(1, 120), (2, 200)]);
}

#[tokio::test]
async fn list_malformed() {
    let (mut c, mut s) = pair();
    let err = run(c.list(), async {
        s.expect("LIST\r\n").await;
        s.send("+OK\r\n1 -5\r\n.\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Protocol { step: "LIST", .. }),
        "{err:?}"
    );
}

// --- RETR -----------------------------------------------------------

#[tokio::test]
async fn retr_unstuffs_dots_and_keeps_crlf() {
    let (mut c, mut s) = pair();
    let mut out = Vec::new();
    run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send(
            "+OK 120 octets\r\n\
             Subject: hi\r\n\
             \r\n\
             ..foo\r\n\
             ..\r\n\
             ...\r\n\
             a.b\r\n\
             . \r\n\
             .\r\n",
        )
        .await;
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "Subject: hi\r\n\r\n.foo\r\n.\r\n..\r\na.b\r\n \r\n"
    );
}

#[tokio::test]
async fn retr_appends_and_back_to_back() {
    let (mut c, mut s) = pair();
    let mut first = b"kept".to_vec();
    let mut second = Vec::new();
    run(
        async {
            c.retr(1, &mut first).await.unwrap();
            c.retr(2, &mut second).await.unwrap();
        },
        async {
            s.expect("RETR 1\r\n").await;
            // The second answer arrives early and sits in the buffer.
            s.send("+OK\r\none\r\n.\r\n+OK\r\ntwo\r\n.\r\n").await;
            s.expect("RETR 2\r\n").await;
        },
    )
    .await;
    assert_eq!(first, b"keptone\r\n");
    assert_eq!(second, b"two\r\n");
}

#[tokio::test]
async fn retr_capped_keeps_the_head_discards_the_rest_and_stays_in_step() {
    // Small pipe: the server can only get ahead by a few KiB, so the
    // 200 KB message must be read (and dropped) as it arrives.
    let (mut c, mut s) = pair_with(4 * 1024, TIMEOUT);
    let mut body = Vec::new();
    for i in 0..4000 {
        // Every third line starts with a dot, to be unstuffed.
        let dot = if i % 3 == 0 { "." } else { "" };
        body.extend_from_slice(format!("{dot}line {i:05} of the big mail......\r\n").as_bytes());
    }
    body.extend_from_slice(b".\r\n"); // a last line that is a lone dot
    let cap = 50_000;
    let mut out = Vec::with_capacity(cap);
    let (size, noop) = run(
        async {
            let size = c.retr_capped(7, &mut out, cap).await;
            let noop = c.noop().await;
            (size, noop)
        },
        async {
            s.expect("RETR 7\r\n").await;
            for piece in dot_stuff(&body).chunks(1000) {
                s.send(piece).await;
            }
            s.expect("NOOP\r\n").await;
            s.send("+OK\r\n").await;
        },
    )
    .await;
    assert_eq!(size.expect("capped RETR"), body.len() as u64);
    assert_eq!(out, body[..cap]);
    assert_eq!(out.capacity(), cap, "the rest was never buffered");
    noop.expect("the connection is still in step");
}

#[tokio::test]
async fn retr_capped_at_or_over_the_size_is_whole() {
    let (mut c, mut s) = pair_with(16, TIMEOUT);
    let body = b"Subject: x\r\n\r\n.hidden\r\nend\r\n";
    let mut exact = Vec::new();
    let mut roomy = Vec::new();
    let mut tiny = Vec::new();
    let sizes = run(
        async {
            let exact_size = c.retr_capped(1, &mut exact, body.len()).await;
            let roomy_size = c.retr_capped(2, &mut roomy, usize::MAX).await;
            let tiny_size = c.retr_capped(3, &mut tiny, 0).await;
            (exact_size, roomy_size, tiny_size)
        },
        async {
            for n in 1..=3 {
                s.expect(format!("RETR {n}\r\n")).await;
                // Byte by byte through a tiny pipe: the terminator is
                // split across reads too.
                for b in dot_stuff(body) {
                    s.send([b]).await;
                }
            }
        },
    )
    .await;
    let full = body.len() as u64;
    assert_eq!(sizes.0.expect("exact"), full);
    assert_eq!(sizes.1.expect("roomy"), full);
    assert_eq!(sizes.2.expect("tiny"), full);
    assert_eq!(exact, body);
    assert_eq!(roomy, body);
    assert!(tiny.is_empty());
}

#[tokio::test]
async fn retr_very_long_line() {
    let (mut c, mut s) = pair();
    let long = "x".repeat(100_000);
    let mut out = Vec::new();
    run(c.retr(7, &mut out), async {
        s.expect("RETR 7\r\n").await;
        s.send(format!("+OK\r\nSubject: long\r\n\r\n{long}\r\n.\r\n"))
            .await;
    })
    .await
    .unwrap();
    assert_eq!(out.len(), "Subject: long\r\n\r\n".len() + 100_002);
    assert!(out.ends_with(format!("{long}\r\n").as_bytes()));
}

#[tokio::test]
async fn retr_empty_body() {
    let (mut c, mut s) = pair();
    let mut out = Vec::new();
    run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send("+OK 0 octets\r\n.\r\n").await;
    })
    .await
    .unwrap();
    assert!(out.is_empty());
}

#[tokio::test]
async fn retr_bare_lf() {
    let (mut c, mut s) = pair();
    let mut out = Vec::new();
    run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send("+OK\nSubject: x\n\n..dot\n..\nend\r\n.\n").await;
    })
    .await
    .unwrap();
    assert_eq!(out, b"Subject: x\n\n.dot\n.\nend\r\n");
}

#[tokio::test]
async fn retr_split_across_many_small_writes() {
    let body: &[u8] = b"From: a@example.com\r\n\
        Subject: split\r\n\
        \r\n\
        .leading dot\r\n\
        .\r\n\
        ..\r\n\
        \r\n\
        last line without dot\r\n";
    let wire = dot_stuff(body);
    for chunk in [1, 2, 3, 5, 7, 13] {
        // A 7-byte pipe also forces the server's writes to be split.
        let (mut c, mut s) = pair_with(7, TIMEOUT);
        let mut out = Vec::new();
        run(c.retr(3, &mut out), async {
            s.expect("RETR 3\r\n").await;
            for piece in wire.chunks(chunk) {
                s.send(piece).await;
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(out, body, "chunk size {chunk}");
    }
}

#[tokio::test]
async fn retr_terminator_split_after_dot() {
    let (mut c, mut s) = pair_with(1, TIMEOUT);
    let mut out = Vec::new();
    run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send("+OK\r\nbody\r\n.").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.send("\r").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.send("\n").await;
    })
    .await
    .unwrap();
    assert_eq!(out, b"body\r\n");
}

#[tokio::test]
async fn retr_server_closes_mid_message() {
    let (mut c, mut s) = pair();
    let mut out = b"previous".to_vec();
    let err = run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send("+OK\r\nSubject: cut\r\n\r\nhalf a mess").await;
        s.io.shutdown().await.unwrap();
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::Closed { step: "RETR" }), "{err:?}");
    assert_eq!(out, b"previous", "a cut-off message must not be kept");
}

#[tokio::test]
async fn retr_server_closes_after_last_line_without_terminator() {
    let (mut c, mut s) = pair();
    let mut out = Vec::new();
    let err = run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send("+OK\r\nline\r\n.").await;
        s.io.shutdown().await.unwrap();
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Pop3Error::Closed { step: "RETR" }), "{err:?}");
    assert!(out.is_empty());
}

#[tokio::test]
async fn retr_server_stalls() {
    let timeout = Duration::from_millis(200);
    let (mut c, mut s) = pair_with(64 * 1024, timeout);
    let mut out = Vec::new();
    let started = tokio::time::Instant::now();
    let err = run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send("+OK\r\nSubject: slow\r\n").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Pop3Error::Timeout { step: "RETR", after } if after == timeout),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(out.is_empty());
    assert_eq!(
        err.to_string(),
        "POP3 server did not answer RETR within 200ms"
    );
}

#[tokio::test]
async fn retr_timeout_is_per_read_not_per_message() {
    let timeout = Duration::from_millis(500);
    let (mut c, mut s) = pair_with(64 * 1024, timeout);
    let mut out = Vec::new();
    run(c.retr(1, &mut out), async {
        s.expect("RETR 1\r\n").await;
        s.send("+OK\r\n").await;
        // Ten pieces 100 ms apart: a second in all, twice the timeout,
        // but no single wait comes close to it.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.send("chunk\r\n").await;
        }
        s.send(".\r\n").await;
    })
    .await
    .unwrap();
    assert_eq!(out, b"chunk\r\n".repeat(10));
}

#[tokio::test]
async fn retr_err() {
    let (mut c, mut s) = pair();
    let mut out = Vec::new();
    let err = run(c.retr(9, &mut out), async {
        s.expect("RETR 9\r\n").await;
        s.send("-ERR no such message\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Pop3Error::Err { step: "RETR", text } if text == "no such message"),
        "{err:?}"
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn command_write_to_closed_server_is_an_error() {
    let (mut c, s) = pair();
    drop(s);
    let err = c.noop().await.unwrap_err();
    assert!(
        matches!(
            err,
            Pop3Error::Io { step: "NOOP", .. } | Pop3Error::Closed { step: "NOOP" }
        ),
        "{err:?}"
    );
}

// --- DELE, NOOP, QUIT -----------------------------------------------

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

// --- staying in step -----------------------------------------------

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

// --- hygiene --------------------------------------------------------

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
