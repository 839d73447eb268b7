//! The greeting, CAPA and STLS.

use super::*;

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
