//! STAT, UIDL and LIST.

use super::*;

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
