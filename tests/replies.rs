//! Acknowledgements end to end: Dovecot's SMTP submission service on
//! loopback (STARTTLS, AUTH XOAUTH2 checked against the IdP stand-in, or
//! PLAIN) relaying to a capture sink that keeps every mail, a real SQLite
//! file, and the daemon's sender. The IdP issues 2000-character access
//! tokens, as long as Entra's, so the SASL response is far over the line
//! length Dovecot takes on one AUTH line: only the two-step form works,
//! which one test shows on the wire first. End to end, a customer's mail
//! gets one acknowledgement, and the customer's out-of-office answer to it
//! ends the exchange.

use mail2ticket_testkit as common;

use std::time::Duration;

use base64::Engine as _;
use mail2ticket::config::Config;
use mail2ticket::outbound::{self, Drained};
use mail2ticket::reader::Context;
use tokio::task::block_in_place;
use tokio_util::sync::CancellationToken;

use common::DovecotOptions;
use common::setup::{
    Env, PLAIN_PASSWORD, ReaderSpec, USER, assert_no_secret_in, free_port, run_once_binary,
    status_binary, status_json, status_reader,
};
use common::submission::{CaptureSink, Captured, raw_session};

/// Entra's access tokens are JWTs of 1.5 to 2.5 KB.
const TOKEN_LEN: usize = 2000;
const CUSTOMER: &str = "carol@customer.example";

struct Smtp {
    env: Env,
    sink: CaptureSink,
}

impl Smtp {
    fn start() -> Smtp {
        Smtp::start_with(DovecotOptions::default())
    }

    fn start_with(opts: DovecotOptions) -> Smtp {
        let sink = CaptureSink::start();
        let env = Env::start_with(DovecotOptions {
            submission_relay_port: Some(sink.port()),
            ..opts
        });
        env.idp.set_access_token_len(TOKEN_LEN);
        Smtp { env, sink }
    }

    /// `[reader.reply]` sending through submission on `port` with STARTTLS.
    fn reply_toml(&self, port: u16) -> String {
        format!(
            "\n[reader.reply]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"starttls\"\n\
             ca_file = \"{}\"\nsubject = \"{{tag}} {{subject}}\"\n\
             body = \"Dear {{requester_name}},\\nwe opened ticket {{tag}}.\\n\"\n",
            self.env.dovecot.ca_file().display()
        )
    }

    /// The default reader, acknowledging through Dovecot's submission.
    fn reader(&self, name: &str) -> ReaderSpec {
        self.reader_sending_to(name, self.env.dovecot.submission_port())
    }

    fn reader_sending_to(&self, name: &str, port: u16) -> ReaderSpec {
        ReaderSpec {
            extra: self.reply_toml(port),
            ..self.env.reader(name)
        }
    }
}

/// A ticket with a queued acknowledgement, as the ticket commit leaves it;
/// returns (ticket id, outbox id, the acknowledgement's Message-ID).
async fn queue_ack(env: &Env, reader: &str, n: usize) -> (i64, i64, String) {
    let pool = env.db().await;
    let token = format!("{n:016x}");
    let (ticket,): (i64,) = sqlx::query_as(
        "INSERT INTO tickets (reader, subject, requester, requester_name, status, created_at,
             updated_at, thread_token)
         VALUES (?, 'Printer on fire', ?, 'Carol Kunde', 'open',
             strftime('%Y-%m-%dT%H:%M:%SZ','now'), strftime('%Y-%m-%dT%H:%M:%SZ','now'), ?)
         RETURNING id",
    )
    .bind(reader)
    .bind(CUSTOMER)
    .bind(&token)
    .fetch_one(&pool)
    .await
    .expect("insert a ticket");
    let message_id = format!("m2t.{token}.{:016x}@test.example", n * 7919);
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO outbox (ticket_id, reader, kind, message_id, to_addr, in_reply_to,
             references_, next_attempt_at, created_at)
         VALUES (?, ?, 'ack', ?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ','now'),
             strftime('%Y-%m-%dT%H:%M:%SZ','now'))
         RETURNING id",
    )
    .bind(ticket)
    .bind(reader)
    .bind(&message_id)
    .bind(CUSTOMER)
    .bind(format!("orig-{n}@customer.example"))
    .bind(format!("root@customer.example orig-{n}@customer.example"))
    .fetch_one(&pool)
    .await
    .expect("insert an outbox row");
    pool.close().await;
    (ticket, id, message_id)
}

#[derive(Debug, PartialEq, Eq)]
struct Row {
    state: String,
    attempts: i64,
    last_error: Option<String>,
    sent: bool,
    /// next_attempt_at is in the future.
    later: bool,
}

async fn outbox_row(env: &Env, id: i64) -> Row {
    let pool = env.db().await;
    let (state, attempts, last_error, sent_at, later): (
        String,
        i64,
        Option<String>,
        Option<String>,
        bool,
    ) = sqlx::query_as(
        "SELECT state, attempts, last_error, sent_at,
                    next_attempt_at > strftime('%Y-%m-%dT%H:%M:%SZ','now')
             FROM outbox WHERE id = ?",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("outbox row");
    pool.close().await;
    Row {
        state,
        attempts,
        last_error,
        sent: sent_at.is_some(),
        later,
    }
}

/// Makes a row due now, as if its retry delay had passed.
async fn make_due(env: &Env, id: i64) {
    let pool = env.db().await;
    sqlx::query("UPDATE outbox SET next_attempt_at = '2000-01-01T00:00:00Z' WHERE id = ?")
        .bind(id)
        .execute(&pool)
        .await
        .expect("make due");
    pool.close().await;
}

async fn send_due(ctx: &Context, config: &Config) -> Drained {
    outbound::send_due(ctx, &outbound::readers(config), &CancellationToken::new())
        .await
        .expect("work through the outbox")
}

fn the_one(sink: &CaptureSink) -> Captured {
    let mails = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(mails.len(), 1, "exactly one mail relayed: {mails:?}");
    mails.into_iter().next().expect("one mail")
}

fn xoauth2_response(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_refuses_a_one_line_xoauth2_with_a_real_sized_token_but_takes_two_steps() {
    let t = Smtp::start();
    let token = t.env.idp.issue_access_token(USER);
    assert_eq!(token.len(), TOKEN_LEN);
    let response = xoauth2_response(USER, &token);
    assert!(response.len() > 2048, "{}", response.len());
    let port = t.env.dovecot.submission_port();

    let one_line = block_in_place(|| {
        raw_session(
            port,
            &[
                "EHLO client.test".into(),
                format!("AUTH XOAUTH2 {response}"),
            ],
        )
    });
    assert!(
        one_line
            .get(1)
            .is_some_and(|r| r.contains("AUTH") && r.contains("XOAUTH2")),
        "submission offers XOAUTH2: {one_line:?}"
    );
    let refusal = one_line.get(2).expect("an answer to the one-line AUTH");
    assert!(
        refusal.starts_with("500 5.5.2") && refusal.contains("Line too long"),
        "{refusal}"
    );

    let two_steps = block_in_place(|| {
        raw_session(
            port,
            &["EHLO client.test".into(), "AUTH XOAUTH2".into(), response],
        )
    });
    assert!(
        two_steps.get(2).is_some_and(|r| r.starts_with("334")),
        "{two_steps:?}"
    );
    assert!(
        two_steps.get(3).is_some_and(|r| r.starts_with("235")),
        "the same token in two steps is accepted: {two_steps:?}\n{}",
        t.env.dovecot.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_acknowledgement_goes_out_over_starttls_with_two_step_xoauth2() {
    let t = Smtp::start();
    let config = t.env.config(&[t.reader("helpdesk")]);
    t.env.init_db(&config).await;
    let (ticket, id, message_id) = queue_ack(&t.env, "helpdesk", 1).await;
    let ctx = mail2ticket::daemon::start(&config).await.expect("start");

    let drained = send_due(&ctx, &config).await;
    assert_eq!(
        drained,
        Drained {
            sent: 1,
            ..Drained::default()
        }
    );
    let mail = the_one(&t.sink);
    assert_eq!(mail.mail_from, USER);
    assert_eq!(mail.rcpt_to, [CUSTOMER]);
    let header = |name: &str| {
        mail.header(name)
            .unwrap_or_else(|| panic!("no {name} in\n{}", mail.text()))
    };
    assert_eq!(header("Subject"), format!("[#{ticket}] Printer on fire"));
    assert_eq!(header("From"), USER);
    assert!(
        header("To").contains(&format!("<{CUSTOMER}>")),
        "{}",
        header("To")
    );
    assert_eq!(header("Message-ID"), format!("<{message_id}>"));
    assert!(header("Message-ID").ends_with("@test.example>"));
    assert_eq!(header("In-Reply-To"), "<orig-1@customer.example>");
    assert_eq!(
        header("References"),
        "<root@customer.example> <orig-1@customer.example>"
    );
    assert_eq!(header("Auto-Submitted"), "auto-replied");
    assert_eq!(header("X-Loop"), USER);
    assert_eq!(header("X-Auto-Response-Suppress"), "All");
    assert!(mail.header("Date").is_some());
    let body = mail.body();
    assert!(body.contains("Dear Carol Kunde,"), "{body}");
    assert!(
        body.contains(&format!("we opened ticket [#{ticket}].")),
        "{body}"
    );

    let row = outbox_row(&t.env, id).await;
    assert_eq!(
        (row.state.as_str(), row.attempts, row.last_error, row.sent),
        ("sent", 1, None, true)
    );
    // STARTTLS happened before the login, with the SMTP token.
    let login = block_in_place(|| t.env.dovecot.login_line("submission-login", USER));
    assert!(login.contains("method=XOAUTH2"), "{login}");
    assert!(login.contains(", TLS,"), "{login}");
    assert!(
        t.env
            .idp
            .issued_access_token_scopes()
            .iter()
            .any(|s| s.contains("SMTP.Send")),
        "{:?}",
        t.env.idp.issued_access_token_scopes()
    );
    let (_, metrics) = ctx.metrics.render(false);
    assert!(
        metrics
            .lines()
            .any(|l| l == "mail2ticket_acks_total{reader=\"helpdesk\",result=\"sent\"} 1"),
        "{metrics}"
    );
    assert_no_secret_in("", &t.env.database_bytes(), &t.env.idp.issued_secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_dropped_and_the_next_attempt_gets_a_new_one() {
    let t = Smtp::start();
    let config = t.env.config(&[t.reader("helpdesk")]);
    t.env.init_db(&config).await;
    let ctx = mail2ticket::daemon::start(&config).await.expect("start");
    queue_ack(&t.env, "helpdesk", 1).await;
    assert_eq!(send_due(&ctx, &config).await.sent, 1);
    let asked = t.env.idp.total_requests();

    // The cached token dies at the server (a password reset, a revoked
    // session); the sender still holds it.
    t.env.idp.revoke_access_tokens();
    let (_, id, _) = queue_ack(&t.env, "helpdesk", 2).await;
    assert_eq!(
        send_due(&ctx, &config).await,
        Drained {
            retried: 1,
            ..Drained::default()
        }
    );
    assert_eq!(
        t.env.idp.total_requests(),
        asked,
        "the cached token was tried"
    );
    let row = outbox_row(&t.env, id).await;
    assert_eq!(
        (row.state.as_str(), row.attempts, row.later),
        ("pending", 1, true)
    );
    let error = row.last_error.expect("last_error");
    assert!(
        error.contains("refused the access token of helpdesk@test.example: 535"),
        "{error}"
    );

    make_due(&t.env, id).await;
    assert_eq!(send_due(&ctx, &config).await.sent, 1);
    assert_eq!(
        t.env.idp.total_requests(),
        asked + 1,
        "the refused token was forgotten and a new one obtained"
    );
    assert_eq!(outbox_row(&t.env, id).await.state, "sent");
    assert_eq!(t.sink.wait_for(2, Duration::from_secs(10)).len(), 2);
    let (_, metrics) = ctx.metrics.render(false);
    for line in [
        "mail2ticket_acks_total{reader=\"helpdesk\",result=\"sent\"} 2",
        "mail2ticket_acks_total{reader=\"helpdesk\",result=\"retry\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_refused_for_good_is_given_up_at_once() {
    let t = Smtp::start();
    t.sink.refuse_rcpt(Some(
        "550 5.1.1 <carol@customer.example>: Recipient address rejected: User unknown",
    ));
    let config = t.env.config(&[t.reader("helpdesk")]);
    t.env.init_db(&config).await;
    let ctx = mail2ticket::daemon::start(&config).await.expect("start");
    let (_, id, _) = queue_ack(&t.env, "helpdesk", 1).await;
    assert_eq!(
        send_due(&ctx, &config).await,
        Drained {
            failed: 1,
            ..Drained::default()
        }
    );
    let row = outbox_row(&t.env, id).await;
    assert_eq!((row.state.as_str(), row.attempts), ("failed", 1));
    let error = row.last_error.expect("last_error");
    // Dovecot passes the relay's refusal on, under its own enhanced code.
    assert!(error.contains("refused RCPT TO: 550 "), "{error}");
    assert!(error.contains("5.1.1"), "{error}");
    assert!(t.sink.mails().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reader_sends_with_auth_plain_after_starttls() {
    let t = Smtp::start_with(DovecotOptions {
        plain_password: Some(PLAIN_PASSWORD.into()),
        ..DovecotOptions::default()
    });
    let reader = t.env.with_plain_auth(t.reader("plain"));
    let config = t.env.config(&[reader]);
    t.env.init_db(&config).await;
    let ctx = mail2ticket::daemon::start(&config).await.expect("start");
    let (_, id, _) = queue_ack(&t.env, "plain", 1).await;
    assert_eq!(send_due(&ctx, &config).await.sent, 1);
    assert_eq!(outbox_row(&t.env, id).await.state, "sent");
    the_one(&t.sink);
    assert_eq!(t.env.idp.total_requests(), 0, "no token was asked for");
    let login = block_in_place(|| t.env.dovecot.login_line("submission-login", USER));
    assert!(login.contains("method=PLAIN"), "{login}");
    assert!(login.contains(", TLS,"), "{login}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_down_leaves_the_row_pending_and_ingest_goes_on() {
    let t = Smtp::start();
    let dead = free_port();
    let config = t.env.write_config(&[t.reader_sending_to("helpdesk", dead)]);
    t.env.init_db(&Config::load(&config).expect("config")).await;
    let (_, id, message_id) = queue_ack(&t.env, "helpdesk", 1).await;
    t.env.dovecot.deliver(USER, &common::mail(1));

    // Exit 0: the poll worked, and the acknowledgement's failure is no
    // reader failure.
    let out = block_in_place(|| run_once_binary(&config));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("helpdesk: ok, 1 fetched, 1 new tickets"),
        "{stdout}"
    );
    assert_eq!(t.env.count("SELECT COUNT(*) FROM tickets").await, 2);
    let row = outbox_row(&t.env, id).await;
    assert_eq!(
        (row.state.as_str(), row.attempts, row.later),
        ("pending", 1, true)
    );
    let error = row.last_error.expect("last_error");
    assert_eq!(error, format!("connection refused: 127.0.0.1:{dead}"));
    assert!(t.sink.mails().is_empty());

    let status = block_in_place(|| status_json(&config, None));
    let outbox = &status_reader(&status, "helpdesk")["outbox"];
    assert!(
        outbox["pending"].as_i64().is_some_and(|n| n >= 1),
        "{status}"
    );
    assert_eq!(outbox["sent"], 0, "{status}");
    assert!(
        outbox["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("connection refused")),
        "{status}"
    );
    let (code, text, _) = block_in_place(|| status_binary(&config, &[]));
    assert_eq!(code, Some(0));
    assert!(
        text.contains("acknowledgements of helpdesk: 0 sent"),
        "{text}"
    );

    // The server is back (the reply points at it again) and the retry is
    // due: it goes out.
    let config = t.env.write_config(&[t.reader("helpdesk")]);
    make_due(&t.env, id).await;
    block_in_place(|| run_once_binary(&config));
    assert_eq!(outbox_row(&t.env, id).await.state, "sent");
    let mails = t.sink.wait_for(1, Duration::from_secs(10));
    assert!(
        mails
            .iter()
            .any(|m| m.header("Message-ID") == Some(format!("<{message_id}>"))),
        "{mails:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sends_beside_its_readers_and_keeps_a_row_without_reply_pending() {
    let t = Smtp::start();
    // "quiet" has no [reader.reply]: its row waits, uncounted.
    let config = t.env.config(&[t.reader("helpdesk"), t.env.reader("quiet")]);
    t.env.init_db(&config).await;
    let (_, sent, _) = queue_ack(&t.env, "helpdesk", 1).await;
    let (_, waiting, _) = queue_ack(&t.env, "quiet", 2).await;
    let (cancel, daemon) = t.env.spawn_daemon(&config).await;
    let mails = block_in_place(|| t.sink.wait_for(1, Duration::from_secs(30)));
    assert_eq!(mails.len(), 1, "the sender works while the readers poll");
    assert!(
        common::setup::wait_until(Duration::from_secs(10), || async {
            outbox_row(&t.env, sent).await.state == "sent"
                && outbox_row(&t.env, waiting).await.last_error.is_some()
        })
        .await
    );
    t.env.stop_daemon(cancel, daemon).await;
    let row = outbox_row(&t.env, waiting).await;
    assert_eq!((row.state.as_str(), row.attempts), ("pending", 0));
    assert_eq!(
        row.last_error.as_deref(),
        Some("reader \"quiet\" has no [reader.reply]; kept until it has one")
    );
    assert_eq!(t.sink.mails().len(), 1);
}

/// A customer's first mail, as Outlook sends it.
fn customer_mail() -> Vec<u8> {
    format!(
        "Message-ID: <c1.printer@customer.example>\r\n\
         Date: Tue, 25 Nov 2025 09:00:00 +0100\r\n\
         From: Carol Kunde <{CUSTOMER}>\r\n\
         To: Helpdesk <{USER}>\r\n\
         Subject: Printer on fire\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         The printer on floor 3 is on fire.\r\n"
    )
    .into_bytes()
}

/// Exchange's out-of-office answer to `ack` (a Message-ID with brackets).
fn out_of_office(ack: &str, subject: &str) -> Vec<u8> {
    format!(
        "Message-ID: <ooo.1@customer.example>\r\n\
         Date: Tue, 25 Nov 2025 09:01:00 +0100\r\n\
         From: Carol Kunde <{CUSTOMER}>\r\n\
         To: {USER}\r\n\
         Subject: Automatic reply: {subject}\r\n\
         In-Reply-To: {ack}\r\n\
         References: <c1.printer@customer.example> {ack}\r\n\
         Auto-Submitted: auto-replied\r\n\
         X-Auto-Response-Suppress: All\r\n\
         X-MS-Exchange-Inbox-Rules-Loop: {CUSTOMER}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         I am out of the office until Monday.\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ticket_is_acknowledged_once_and_the_out_of_office_answer_ends_it() {
    let t = Smtp::start();
    let config = t.env.write_config(&[t.reader("helpdesk")]);
    t.env.dovecot.deliver(USER, &customer_mail());

    // run --once polls, commits the ticket with its queued acknowledgement,
    // then sends what is due; at debug level, to show no credential is
    // logged on the way.
    let out = block_in_place(|| {
        std::process::Command::new(common::setup::binary())
            .args(["-c", config.to_str().expect("utf-8 path"), "run", "--once"])
            .env("RUST_LOG", "debug")
            .output()
            .expect("run --once")
    });
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{output}");
    assert!(output.contains("acknowledgement sent"), "{output}");
    let mut secrets = t.env.idp.issued_secrets();
    secrets.push(common::setup::PASSWORD.to_string());
    assert_no_secret_in(&output, &t.env.database_bytes(), &secrets);
    let ack = the_one(&t.sink);
    let (ticket,): (i64,) = {
        let pool = t.env.db().await;
        let row = sqlx::query_as("SELECT id FROM tickets")
            .fetch_one(&pool)
            .await
            .expect("the ticket");
        pool.close().await;
        row
    };
    assert_eq!(ack.rcpt_to, [CUSTOMER]);
    let subject = ack.header("Subject").expect("Subject");
    assert_eq!(subject, format!("[#{ticket}] Printer on fire"));
    assert_eq!(
        ack.header("In-Reply-To").as_deref(),
        Some("<c1.printer@customer.example>")
    );
    assert_eq!(
        ack.header("References").as_deref(),
        Some("<c1.printer@customer.example>")
    );
    assert_eq!(
        ack.header("Auto-Submitted").as_deref(),
        Some("auto-replied")
    );
    assert_eq!(ack.header("X-Loop").as_deref(), Some(USER));
    let ack_id = ack.header("Message-ID").expect("Message-ID");
    assert!(
        ack_id.starts_with("<m2t.") && ack_id.ends_with("@test.example>"),
        "{ack_id}"
    );
    assert_eq!(
        t.env
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await,
        1
    );

    // The customer's Exchange answers the acknowledgement while they are
    // away. It must not become a ticket, a reply, or an acknowledgement.
    t.env
        .dovecot
        .deliver(USER, &out_of_office(&ack_id, &subject));
    block_in_place(|| run_once_binary(&config));
    assert_eq!(t.sink.mails().len(), 1, "no second acknowledgement");
    assert_eq!(t.env.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(t.env.count("SELECT COUNT(*) FROM outbox").await, 1);
    let pool = t.env.db().await;
    let (ticket_of_ooo, disposition): (Option<i64>, String) = sqlx::query_as(
        "SELECT ticket_id, disposition FROM emails WHERE message_id = 'ooo.1@customer.example'",
    )
    .fetch_one(&pool)
    .await
    .expect("the out-of-office mail is recorded");
    pool.close().await;
    assert_eq!(ticket_of_ooo, None);
    assert!(
        disposition.starts_with("ignored: auto-reply"),
        "{disposition}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_acknowledges_a_new_ticket_soon_after_its_poll() {
    let t = Smtp::start();
    let config = t.env.config(&[t.reader("helpdesk")]);
    let (cancel, daemon) = t.env.spawn_daemon(&config).await;
    assert!(
        t.env
            .wait_for_polls("helpdesk", 1, Duration::from_secs(30))
            .await
    );
    t.env.dovecot.deliver(USER, &customer_mail());
    // Woken by the poll that opened the ticket, well before the sender's
    // own 15-second round.
    let mails = block_in_place(|| t.sink.wait_for(1, Duration::from_secs(10)));
    t.env.stop_daemon(cancel, daemon).await;
    assert_eq!(mails.len(), 1, "acknowledged within seconds");
    assert_eq!(mails[0].rcpt_to, [CUSTOMER]);
}
