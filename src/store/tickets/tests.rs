//! Ticket placement, mail by mail: dedup, threading across batches, subject
//! tags and forwards, closed tickets, the guard and the rate limit.

use std::sync::Arc;

use super::*;
use crate::config::{GuardConfig, MailPolicy, TicketsConfig};
use crate::ingest::Report;
use crate::store::{Batch, MailCounts, Store, open_in};

fn policy() -> Arc<MailPolicy> {
    Arc::new(MailPolicy {
        acknowledge: true,
        message_id_domain: "contoso.com".into(),
        guard: GuardConfig {
            own_addresses: vec!["help@contoso.com".into()],
            ..GuardConfig::default()
        },
        ..MailPolicy::default()
    })
}

fn with_tickets(f: impl FnOnce(&mut TicketsConfig)) -> Arc<MailPolicy> {
    let mut p = MailPolicy {
        acknowledge: true,
        message_id_domain: "contoso.com".into(),
        ..MailPolicy::default()
    };
    f(&mut p.tickets);
    Arc::new(p)
}

fn mail(headers: &str, policy: &Arc<MailPolicy>) -> Incoming {
    let raw = format!(
        "{}\r\nTo: help@contoso.com\r\n\r\nbody text\r\n",
        headers.replace('\n', "\r\n")
    );
    Incoming::new(raw.as_bytes(), "r", policy)
}

/// Commits `mails` as one POP3 batch with fresh UIDLs.
async fn commit(store: &Store, mails: Vec<Incoming>) -> BatchOutcome {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pop3_uidls")
        .fetch_one(store.pool())
        .await
        .expect("count");
    let batch: Vec<(String, Incoming)> = mails
        .into_iter()
        .enumerate()
        .map(|(i, m)| (format!("u{}", n + i as i64), m))
        .collect();
    store
        .commit_batch(Batch::Pop3 {
            reader: "r",
            mails: &batch,
            sizes: &HashMap::new(),
            pending: false,
        })
        .await
        .expect("commit")
}

/// Commits one mail with these headers.
async fn commit_one(store: &Store, headers: &str, policy: &Arc<MailPolicy>) -> BatchOutcome {
    commit(store, vec![mail(headers, policy)]).await
}

/// (ticket_id, disposition) of the email with this Message-ID.
async fn email(store: &Store, message_id: &str) -> (Option<i64>, String) {
    sqlx::query_as("SELECT ticket_id, disposition FROM emails WHERE message_id = ?")
        .bind(message_id)
        .fetch_one(store.pool())
        .await
        .expect("email")
}

async fn scalar(store: &Store, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(store.pool())
        .await
        .expect(sql);
    n
}

#[tokio::test]
async fn a_backlog_opens_tickets_but_is_not_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    let now = std::time::SystemTime::now();
    let date = |ago: u64| {
        let t = now - std::time::Duration::from_secs(ago);
        mail_parser::DateTime::from_timestamp(
            t.duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs() as i64,
        )
        .to_rfc822()
    };
    // Sent two days ago, but delivered just now (the newest Received
    // decides): acknowledged.
    commit_one(
            &store,
            &format!(
                "Received: by mx; {}\nReceived: by relay; {}\nFrom: a@example.net\nSubject: s1\nMessage-ID: <b1@x>\nDate: {}",
                date(60),
                date(2 * 86400),
                date(2 * 86400)
            ),
            &p,
        )
        .await;
    // Delivered two days ago: a ticket, no acknowledgement.
    commit_one(
        &store,
        &format!(
            "Received: by mx; {}\nFrom: b@example.net\nSubject: s2\nMessage-ID: <b2@x>",
            date(2 * 86400)
        ),
        &p,
    )
    .await;
    // Only a Date header, a week old: the same.
    commit_one(
        &store,
        &format!(
            "From: c@example.net\nSubject: s3\nMessage-ID: <b3@x>\nDate: {}",
            date(7 * 86400)
        ),
        &p,
    )
    .await;
    // No date at all: acknowledged.
    commit_one(
        &store,
        "From: d@example.net\nSubject: s4\nMessage-ID: <b4@x>",
        &p,
    )
    .await;
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM tickets").await, 4);
    let acked: Vec<(String,)> = sqlx::query_as("SELECT to_addr FROM outbox ORDER BY to_addr")
        .fetch_all(store.pool())
        .await
        .expect("outbox");
    assert_eq!(
        acked,
        vec![
            ("a@example.net".to_string(),),
            ("d@example.net".to_string(),)
        ]
    );
    // A reader that allows a week acknowledges the two-day-old mail.
    let week = Arc::new(MailPolicy {
        acknowledge: true,
        ack_max_age: std::time::Duration::from_secs(8 * 86400),
        ..MailPolicy::default()
    });
    commit_one(
        &store,
        &format!(
            "Received: by mx; {}\nFrom: e@example.net\nSubject: s5\nMessage-ID: <b5@x>",
            date(2 * 86400)
        ),
        &week,
    )
    .await;
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM outbox").await, 3);
}

#[tokio::test]
async fn a_thread_of_five_is_one_ticket_across_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    let first = commit(
            &store,
            vec![
                mail("From: ann@example.net\nSubject: VPN down\nMessage-ID: <1@x>", &p),
                mail(
                    "From: ann@example.net\nSubject: Re: VPN down\nMessage-ID: <2@x>\nIn-Reply-To: <1@x>\nReferences: <1@x>",
                    &p,
                ),
                // Only References, as some clients do.
                mail(
                    "From: bob@example.net\nSubject: RE: VPN down\nMessage-ID: <3@x>\nReferences: <1@x> <2@x>",
                    &p,
                ),
            ],
        )
        .await;
    assert_eq!((first.created, first.joined), (1, 2));
    let second = commit(
            &store,
            vec![
                mail(
                    "From: ann@example.net\nSubject: Re: VPN down\nMessage-ID: <4@x>\nIn-Reply-To: <3@x>",
                    &p,
                ),
                // Names nothing we know: a ticket of its own.
                mail(
                    "From: ann@example.net\nSubject: Re: VPN down\nMessage-ID: <5@x>\nIn-Reply-To: <unknown@y>\nReferences: <nothing@y>",
                    &p,
                ),
            ],
        )
        .await;
    assert_eq!(
        (second.created, second.joined),
        (1, 1),
        "5@x names nothing known"
    );
    let (ticket, disposition) = email(&store, "1@x").await;
    assert_eq!(disposition, "ticket");
    for id in ["2@x", "3@x", "4@x"] {
        assert_eq!(
            email(&store, id).await,
            (ticket, "reply".to_string()),
            "{id}"
        );
    }
    // The reply to our acknowledgement joins through the outbox.
    let (ack_id,): (String,) = sqlx::query_as("SELECT message_id FROM outbox WHERE ticket_id = ?")
        .bind(ticket)
        .fetch_one(store.pool())
        .await
        .expect("ack queued");
    commit_one(&store, &format!("From: ann@example.net\nSubject: Re: [#1] VPN down\nMessage-ID: <6@x>\nIn-Reply-To: <{ack_id}>"), &p).await;
    assert_eq!(email(&store, "6@x").await, (ticket, "reply".to_string()));
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM outbox").await,
        2,
        "one acknowledgement per new ticket, none for replies"
    );
}

#[tokio::test]
async fn thousands_of_references_do_not_stall_the_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    commit_one(
        &store,
        "From: ann@example.net\nSubject: s\nMessage-ID: <t1@x>",
        &p,
    )
    .await;
    let refs: Vec<String> = (0..17_000).map(|i| format!("<r{i}@x>")).collect();
    let headers = format!(
        "From: ann@example.net\nSubject: Re: s\nMessage-ID: <t2@x>\nReferences: <t1@x> {}\nIn-Reply-To: <r16999@x>",
        refs.join(" ")
    );
    let outcome = commit_one(&store, &headers, &p).await;
    assert_eq!(
        outcome.created, 1,
        "the newest references name nothing known"
    );
    assert_eq!(email(&store, "t2@x").await.1, "ticket");
}

#[tokio::test]
async fn subject_tags_and_forwards_need_a_participant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    commit_one(
        &store,
        "From: Ann <ann@example.net>\nCc: carl@example.net\nSubject: Printer\nMessage-ID: <p1@x>",
        &p,
    )
    .await;
    commit(
            &store,
            vec![
                mail("From: ann@example.net\nSubject: Re: [#1] Printer\nMessage-ID: <p2@x>", &p),
                mail("From: carl@example.net\nSubject: [#1] more\nMessage-ID: <p3@x>", &p),
                mail("From: eve@evil.example\nSubject: [#1] hijack\nMessage-ID: <p4@x>", &p),
                // A stranger forwarding the thread, references and all.
                mail(
                    "From: eve@evil.example\nSubject: Fwd: Printer\nMessage-ID: <p5@x>\nReferences: <p1@x>",
                    &p,
                ),
                mail(
                    "From: carl@example.net\nSubject: FW: Printer\nMessage-ID: <p6@x>\nReferences: <p1@x>",
                    &p,
                ),
            ],
        )
        .await;
    assert_eq!(email(&store, "p2@x").await, (Some(1), "reply".into()));
    assert_eq!(email(&store, "p3@x").await, (Some(1), "reply".into()));
    assert_eq!(email(&store, "p4@x").await, (Some(2), "ticket".into()));
    assert_eq!(email(&store, "p5@x").await, (Some(3), "ticket".into()));
    assert_eq!(email(&store, "p6@x").await, (Some(1), "reply".into()));

    let anyone = with_tickets(|t| t.tag_from = TagFrom::Anyone);
    commit_one(
        &store,
        "From: eve@evil.example\nSubject: [#1] again\nMessage-ID: <p7@x>",
        &anyone,
    )
    .await;
    assert_eq!(email(&store, "p7@x").await, (Some(1), "reply".into()));
}

#[tokio::test]
async fn closed_tickets_reopen_or_not_as_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    commit_one(
        &store,
        "From: ann@example.net\nSubject: s\nMessage-ID: <c1@x>",
        &p,
    )
    .await;
    let close =
        || sqlx::query("UPDATE tickets SET status = 'closed' WHERE id = 1").execute(store.pool());
    close().await.expect("close");
    let reply = |n: u32, p: &Arc<MailPolicy>| {
        mail(
            &format!(
                "From: ann@example.net\nSubject: Re: s\nMessage-ID: <c{n}@x>\nIn-Reply-To: <c1@x>"
            ),
            p,
        )
    };
    commit(&store, vec![reply(2, &p)]).await;
    assert_eq!(email(&store, "c2@x").await, (Some(1), "reopened".into()));
    assert_eq!(
        scalar(&store, "SELECT status = 'open' FROM tickets WHERE id = 1").await,
        1
    );

    close().await.expect("close");
    let attach = with_tickets(|t| t.closed_reply = ClosedReply::Attach);
    commit(&store, vec![reply(3, &attach)]).await;
    assert_eq!(email(&store, "c3@x").await, (Some(1), "reply".into()));
    assert_eq!(
        scalar(&store, "SELECT status = 'closed' FROM tickets WHERE id = 1").await,
        1
    );

    // An out-of-office answer a reader accepts joins, but never reopens.
    let mut ooo = reply(5, &p);
    ooo.verdict = Verdict::AcceptQuietly(Guarded {
        reason: Reason::AutoReply,
        detail: "Auto-Submitted: auto-replied".into(),
    });
    commit(&store, vec![ooo]).await;
    assert_eq!(email(&store, "c5@x").await, (Some(1), "reply".into()));
    assert_eq!(
        scalar(&store, "SELECT status = 'closed' FROM tickets WHERE id = 1").await,
        1
    );

    let new = with_tickets(|t| t.closed_reply = ClosedReply::NewTicket);
    commit(&store, vec![reply(4, &new)]).await;
    assert_eq!(email(&store, "c4@x").await, (Some(2), "ticket".into()));
}

#[tokio::test]
async fn the_hidden_token_finds_the_ticket_without_a_stored_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    commit_one(
        &store,
        "From: ann@example.net\nSubject: s\nMessage-ID: <h1@x>",
        &p,
    )
    .await;
    let (token,): (String,) = sqlx::query_as("SELECT thread_token FROM tickets WHERE id = 1")
        .fetch_one(store.pool())
        .await
        .expect("token");
    // An id of ours that the outbox never held (sent by an agent's tool).
    let ours = format!("m2t.{token}.00000000deadbeef@contoso.com");
    commit_one(
        &store,
        &format!("From: zed@example.org\nSubject: Re: s\nMessage-ID: <h2@x>\nReferences: <{ours}>"),
        &p,
    )
    .await;
    assert_eq!(email(&store, "h2@x").await, (Some(1), "reply".into()));
    let off = with_tickets(|t| t.hidden_token = false);
    commit_one(
        &store,
        &format!("From: zed@example.org\nSubject: Re: s\nMessage-ID: <h3@x>\nReferences: <{ours}>"),
        &off,
    )
    .await;
    assert_eq!(email(&store, "h3@x").await, (Some(2), "ticket".into()));
}

#[tokio::test]
async fn guarded_mail_opens_nothing_and_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    commit_one(
        &store,
        "From: ann@example.net\nSubject: s\nMessage-ID: <g1@x>",
        &p,
    )
    .await;
    let (ack_id,): (String,) = sqlx::query_as("SELECT message_id FROM outbox")
        .fetch_one(store.pool())
        .await
        .expect("ack");
    let guarded = |reason, detail: &str| Guarded {
        reason,
        detail: detail.into(),
    };
    let mut ooo = mail(
        &format!(
            "From: ann@example.net\nSubject: Automatic reply: s\nMessage-ID: <g2@x>\nIn-Reply-To: <{ack_id}>"
        ),
        &p,
    );
    ooo.verdict = Verdict::Ignore(guarded(Reason::AutoReply, "Auto-Submitted: auto-replied"));
    let mut dsn = mail(
        "From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered\nMessage-ID: <g3@x>",
        &p,
    );
    dsn.mail.report = Some(Report {
        report_type: "delivery-status".into(),
        original_ids: vec![ack_id.clone()],
    });
    dsn.verdict = Verdict::Bounce(guarded(
        Reason::Bounce,
        "From: MAILER-DAEMON@mx.example.net",
    ));
    let mut stray = mail(
        "From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered\nMessage-ID: <g4@x>",
        &p,
    );
    stray.verdict = Verdict::Bounce(guarded(
        Reason::Bounce,
        "From: MAILER-DAEMON@mx.example.net",
    ));
    let mut alert = mail(
        "From: nagios@example.net\nSubject: DOWN\nMessage-ID: <g5@x>",
        &p,
    );
    alert.verdict = Verdict::AcceptQuietly(guarded(
        Reason::AutoGenerated,
        "Auto-Submitted: auto-generated",
    ));
    let mut ruled = mail(
        "From: news@example.net\nSubject: News\nMessage-ID: <g6@x>",
        &p,
    );
    ruled.routing.ignored_by = Some("newsletters".into());
    let outcome = commit(&store, vec![ooo, dsn, stray, alert, ruled]).await;
    assert_eq!(outcome.created, 1);
    assert_eq!(outcome.joined, 1);
    assert_eq!(outcome.ignored(Reason::AutoReply), 1);
    assert_eq!(outcome.ignored(Reason::Bounce), 1);
    assert_eq!(outcome.ignored(Reason::Rule), 1);

    assert_eq!(
        email(&store, "g2@x").await,
        (
            None,
            "ignored: auto-reply (Auto-Submitted: auto-replied)".into()
        )
    );
    assert_eq!(email(&store, "g3@x").await, (Some(1), "bounce".into()));
    assert_eq!(
        email(&store, "g4@x").await,
        (
            None,
            "ignored: bounce (From: MAILER-DAEMON@mx.example.net)".into()
        )
    );
    assert_eq!(email(&store, "g5@x").await.1, "ticket");
    assert_eq!(
        email(&store, "g6@x").await,
        (None, "ignored: rule (newsletters)".into())
    );
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM outbox").await,
        1,
        "no acknowledgement for guarded or quietly accepted mail"
    );
    let counts = store.status_view().mail_counts(24).await.expect("counts");
    let ignored = [("auto-reply", 1), ("bounce", 1), ("rule", 1)]
        .map(|(r, n)| (r.to_string(), n))
        .into();
    assert_eq!(
        counts,
        [MailCounts {
            reader: "r".into(),
            tickets: 2,
            bounces: 1,
            ignored,
            ..MailCounts::default()
        }]
    );
}

#[tokio::test]
async fn a_sender_over_the_rate_limit_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = Arc::new(MailPolicy {
        guard: GuardConfig {
            rate_limit: 3,
            ..GuardConfig::default()
        },
        ..MailPolicy::default()
    });
    let mails = (1..=5)
        .map(|i| {
            mail(
                &format!("From: Loop@Example.net\nSubject: s{i}\nMessage-ID: <r{i}@x>"),
                &p,
            )
        })
        .collect();
    let outcome = commit(&store, mails).await;
    assert_eq!(
        (outcome.created, outcome.ignored(Reason::RateLimit)),
        (3, 2)
    );
    assert_eq!(
        email(&store, "r4@x").await,
        (
            None,
            "ignored: rate-limit (4 mails from Loop@Example.net within 1h)".into()
        )
    );
    let other = commit_one(
        &store,
        "From: ann@example.net\nSubject: s\nMessage-ID: <r6@x>",
        &p,
    )
    .await;
    assert_eq!(other.created, 1, "the limit is per sender");
}

#[tokio::test]
async fn routing_and_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(&dir).await;
    let p = policy();
    let attached = |id: &str| {
        let raw = format!(
            "From: ann@example.net\r\nSubject: files\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee file\r\n\
--XX\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"../r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
        );
        Incoming::new(raw.as_bytes(), "r", &p)
    };
    let mut routed = attached("a1@x");
    routed.routing.queue = Some("vip".into());
    routed.routing.tags = vec!["a".into(), "b".into()];
    commit(&store, vec![routed, attached("a2@x")]).await;
    let (queue, tags): (Option<String>, String) =
        sqlx::query_as("SELECT queue, tags FROM tickets WHERE id = 1")
            .fetch_one(store.pool())
            .await
            .expect("ticket");
    assert_eq!(queue.as_deref(), Some("vip"));
    assert_eq!(tags, r#"["a","b"]"#);
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM attachments").await, 2);
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM blobs").await,
        1,
        "same content once"
    );
    let (name, blob): (String, String) =
        sqlx::query_as("SELECT filename, blob FROM attachments LIMIT 1")
            .fetch_one(store.pool())
            .await
            .expect("attachment");
    assert_eq!(name, "r.pdf");
    let (content,): (Vec<u8>,) = sqlx::query_as("SELECT content FROM blobs WHERE key = ?")
        .bind(&blob)
        .fetch_one(store.pool())
        .await
        .expect("blob");
    assert_eq!(content, b"%PDF-1.4\n");
}
