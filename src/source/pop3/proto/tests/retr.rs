//! RETR: bodies, dot-stuffing, limits.

use super::*;

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
