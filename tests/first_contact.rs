//! First contact with a full mailbox (`backfill`) and no acknowledgement for
//! a backlog (`ack_max_age`), against a real Dovecot: IMAP by \Seen and
//! INTERNALDATE, POP3 by UIDL and the mail's own dates.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::mail::subject;
use common::setup::{
    Env, ReaderSpec, USER, check_binary, free_port, run_binary, run_once_killed_at,
};
use common::time::{rfc5322_date, unix_now};
use common::{Proxy, mail};
use mail2ticket::config::Config;
use tokio::task::block_in_place;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// The subjects of every stored email, sorted.
async fn subjects(env: &Env) -> Vec<String> {
    let pool = env.db().await;
    let rows: Vec<(String,)> = sqlx::query_as("SELECT subject FROM emails ORDER BY subject")
        .fetch_all(&pool)
        .await
        .expect("emails");
    pool.close().await;
    rows.into_iter().map(|(s,)| s).collect()
}

fn subjects_of(mails: &[usize]) -> Vec<String> {
    let mut s: Vec<String> = mails.iter().map(|&i| subject(i)).collect();
    s.sort();
    s
}

/// (messages, taken, skipped, backfill) of `reader`'s one first contact.
async fn first_contact(env: &Env, reader: &str) -> (i64, i64, i64, String) {
    let pool = env.db().await;
    let row = sqlx::query_as(
        "SELECT messages, taken, skipped, backfill FROM first_contacts WHERE reader = ?",
    )
    .bind(reader)
    .fetch_one(&pool)
    .await
    .expect("one first contact");
    pool.close().await;
    row
}

/// The config of `reader` alone, in a file of its own (so that several
/// can be checked side by side).
fn config_of(env: &Env, reader: ReaderSpec) -> Config {
    let path = env.path(&format!("{}.toml", reader.name));
    std::fs::write(&path, env.config_toml(&[reader])).expect("write config");
    Config::load(&path).expect("valid config")
}

fn with_backfill(reader: ReaderSpec, backfill: &str) -> ReaderSpec {
    ReaderSpec {
        extra: format!("backfill = \"{backfill}\"\n{}", reader.extra),
        ..reader
    }
}

/// `check` for one reader; asserts success and returns its line.
fn check_line(config: &std::path::Path, reader: &str) -> String {
    let (code, stdout, stderr) = block_in_place(|| check_binary(config, Some(reader)));
    assert_eq!(code, Some(0), "check failed: {stdout}{stderr}");
    stdout.trim().to_owned()
}

/// A mail like [`mail`]`(i)` whose Received and Date headers say it came
/// `ago` before now (POP3 knows a mail's age only from its headers).
fn mail_from(i: usize, ago: Duration) -> Vec<u8> {
    let date = rfc5322_date(unix_now() - ago.as_secs() as i64);
    format!(
        "Received: from mail.example.net by mx.test.example; {date}\r\n\
         Message-ID: <aged{i}@test.example>\r\n\
         Date: {date}\r\n\
         From: customer{i}@example.net\r\n\
         To: helpdesk@test.example\r\n\
         Subject: {}\r\n\
         \r\n\
         Hello, mail {i}.\r\n",
        subject(i)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_first_contact_takes_unseen_mail_only_then_everything_new() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..6).map(mail));
    // Someone already read the first four.
    env.dovecot.add_flag(USER, "INBOX", "\\Seen", "1:4");
    let config = env.config(&[env.reader("helpdesk")]);
    assert_eq!(
        check_line(&config.path, "helpdesk"),
        "helpdesk: ok, 6 messages, 2 not yet ingested (first contact: backfill = \"unseen\" \
         would take 2 of 6 (skipping 4)); capabilities: IDLE MOVE UIDPLUS"
    );

    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!((report.fetched, report.created), (2, 2));
    assert_eq!(subjects(&env).await, subjects_of(&[4, 5]));
    assert_eq!(
        first_contact(&env, "helpdesk").await,
        (6, 2, 4, "unseen".into())
    );
    let path = config.path.to_str().expect("utf-8 path");
    let (code, status, stderr) = block_in_place(|| {
        run_binary(
            &["-c", path, "status", "--reader", "helpdesk"],
            Duration::from_secs(60),
        )
    });
    assert_eq!(code, Some(0), "{status}{stderr}");
    assert!(
        status.contains("first contact of helpdesk with INBOX at 20")
            && status.contains(": backfill = \"unseen\" took 2 of 6 mails, left 4 on the server"),
        "{status}"
    );

    // After first contact the ledger takes everything new, read or not; an
    // old mail marked unread again is still old.
    env.dovecot.deliver_many(USER, (6..9).map(mail));
    env.dovecot.add_flag(USER, "INBOX", "\\Seen", "7");
    env.dovecot.doveadm(&[
        "flags", "remove", "-u", USER, "\\Seen", "mailbox", "INBOX", "uid", "1",
    ]);
    assert_eq!(
        check_line(&config.path, "helpdesk"),
        "helpdesk: ok, 9 messages, 3 not yet ingested; capabilities: IDLE MOVE UIDPLUS"
    );
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!((report.fetched, report.created), (3, 3));
    assert_eq!(subjects(&env).await, subjects_of(&[4, 5, 6, 7, 8]));
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!(report.fetched, 0);
    env.assert_exactly_once(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_backfill_none_all_and_a_period() {
    let env = Env::start();
    // INBOX: received 10 days, 30 hours, 20 hours and 1 hour ago; the
    // first two already read.
    env.dovecot.deliver_aged(
        USER,
        [
            (mail(0), 10 * DAY),
            (mail(1), 30 * HOUR),
            (mail(2), 20 * HOUR),
            (mail(3), HOUR),
        ],
    );
    env.dovecot.add_flag(USER, "INBOX", "\\Seen", "1:2");
    // Three readers of the same folder, each with its own ledger, each
    // alone in its config so that what it fetched is its own.
    let keep = |name: &str, backfill: &str| with_backfill(env.reader(name).after("keep"), backfill);
    let none = config_of(&env, keep("none", "none"));
    let all = config_of(&env, keep("all", "all"));
    let day = config_of(&env, keep("day", "1d"));
    assert!(
        check_line(&day.path, "day").contains(
            "2 not yet ingested (first contact: backfill = \"1day\" would take 2 of 4 (skipping 2))"
        ),
        "the period counts hours, not calendar days"
    );

    let report = env.poll_ok(&none, "none").await;
    assert_eq!(report.fetched, 0);
    assert_eq!(first_contact(&env, "none").await, (4, 0, 4, "none".into()));
    let report = env.poll_ok(&day, "day").await;
    assert_eq!((report.fetched, report.created), (2, 2));
    assert_eq!(subjects(&env).await, subjects_of(&[2, 3]));
    let report = env.poll_ok(&all, "all").await;
    assert_eq!(
        (report.fetched, report.created, report.duplicates),
        (4, 2, 2)
    );
    assert_eq!(subjects(&env).await, subjects_of(&[0, 1, 2, 3]));

    // Mail arriving from now on is taken by each of them.
    env.dovecot.deliver(USER, &mail(4));
    for (config, name) in [(&none, "none"), (&day, "day"), (&all, "all")] {
        let report = env.poll_ok(config, name).await;
        assert_eq!(report.fetched, 1, "{name}");
    }
    env.assert_exactly_once(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_a_first_poll_cut_short_still_takes_what_it_chose() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..8).map(mail));
    env.dovecot.add_flag(USER, "INBOX", "\\Seen", "1:3");
    // One mail per batch, so the first \Seen (after the first commit) comes
    // while most of the chosen mail is still to fetch.
    let reader = ReaderSpec {
        batch_size: Some(1),
        ..env.reader("helpdesk")
    };
    let proxy = Proxy::start(env.dovecot.imap_port());
    let cut = env.write_config(&[reader.clone().plaintext(proxy.port())]);
    block_in_place(|| run_once_killed_at(&cut, &proxy, &["UID STORE"]));
    let committed = env.count("SELECT COUNT(*) FROM tickets").await;
    assert!(
        (1..5).contains(&committed),
        "the kill came after the first commit and before the last: {committed}"
    );
    assert_eq!(first_contact(&env, "helpdesk").await.1, 5);

    // New mail meanwhile; the next poll takes it and the rest of the five.
    env.dovecot.deliver(USER, &mail(8));
    let config = env.config(&[reader]);
    env.poll_ok(&config, "helpdesk").await;
    assert_eq!(subjects(&env).await, subjects_of(&[3, 4, 5, 6, 7, 8]));
    env.assert_exactly_once(6).await;
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!(report.fetched, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_backfill_none_all_and_a_period() {
    let env = Env::start();
    env.dovecot.deliver_many(
        USER,
        [
            mail_from(0, 10 * DAY),
            mail_from(1, 30 * HOUR),
            mail_from(2, 20 * HOUR),
            mail_from(3, HOUR),
        ],
    );
    // "none" deletes what it ingests, never what it left.
    let none = config_of(
        &env,
        with_backfill(env.pop3_reader("none"), "none").after("delete"),
    );
    let day = config_of(&env, with_backfill(env.pop3_reader("day"), "1d"));
    let unseen = config_of(&env, env.pop3_reader("unseen"));
    assert!(
        check_line(&none.path, "none").starts_with(
            "none: ok, 4 messages, 0 not yet ingested (first contact: backfill = \"none\" \
             would take 0 of 4 (skipping 4)); capabilities:"
        ),
        "{}",
        check_line(&none.path, "none")
    );
    assert!(
        check_line(&day.path, "day")
            .contains("2 not yet ingested (first contact: backfill = \"1day\" would take 2 of 4"),
    );

    let report = env.poll_ok(&none, "none").await;
    assert_eq!(report.fetched, 0);
    assert_eq!(first_contact(&env, "none").await, (4, 0, 4, "none".into()));
    assert_eq!(
        env.dovecot.message_count(USER, "INBOX"),
        4,
        "nothing deleted"
    );
    let report = env.poll_ok(&day, "day").await;
    assert_eq!((report.fetched, report.created), (2, 2));
    assert_eq!(subjects(&env).await, subjects_of(&[2, 3]));
    // POP3 has no read state: "unseen" is everything on the server.
    let report = env.poll_ok(&unseen, "unseen").await;
    assert_eq!((report.fetched, report.duplicates), (4, 2));
    assert_eq!(
        first_contact(&env, "unseen").await,
        (4, 4, 0, "unseen".into())
    );

    env.dovecot.deliver(USER, &mail_from(4, 2 * DAY));
    assert!(
        check_line(&none.path, "none")
            .starts_with("none: ok, 5 messages, 1 not yet ingested; capabilities:")
    );
    // "none" last: it deletes what it takes.
    for (config, name) in [(&day, "day"), (&unseen, "unseen"), (&none, "none")] {
        let report = env.poll_ok(config, name).await;
        assert_eq!(
            report.fetched, 1,
            "{name}: new mail is taken whatever its date"
        );
    }
    env.assert_exactly_once(5).await;
    assert_eq!(
        env.dovecot.message_count(USER, "INBOX"),
        4,
        "only the mail \"none\" ingested was deleted"
    );
    // A left mail gone from the server is forgotten: its UIDL may come
    // back on new mail.
    let left = "SELECT COUNT(*) FROM pop3_skipped WHERE reader = 'none'";
    assert_eq!(env.count(left).await, 4);
    env.dovecot
        .doveadm(&["expunge", "-u", USER, "mailbox", "INBOX", "uid", "1"]);
    env.poll_ok(&none, "none").await;
    assert_eq!(env.count(left).await, 3);
}

/// The recipients of every queued acknowledgement, sorted.
async fn acked(env: &Env) -> Vec<String> {
    let pool = env.db().await;
    let rows: Vec<(String,)> = sqlx::query_as("SELECT to_addr FROM outbox ORDER BY to_addr")
        .fetch_all(&pool)
        .await
        .expect("outbox");
    pool.close().await;
    rows.into_iter().map(|(a,)| a).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_gets_tickets_but_no_acknowledgements() {
    let env = Env::start();
    // The headers of `mail` are a year old: the INTERNALDATE decides.
    env.dovecot.deliver_aged(
        USER,
        [
            (mail(0), 2 * DAY),
            (mail(1), HOUR),
            (mail(2), Duration::ZERO),
        ],
    );
    // Only what is queued counts here: nothing listens for the sending.
    let reply = format!(
        "\n[reader.reply]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        free_port()
    );
    let reader = |name: &str, extra: &str| ReaderSpec {
        extra: format!("backfill = \"all\"\nafter = \"keep\"\n{extra}{reply}"),
        ..env.reader(name)
    };
    let config = env.config(&[reader("helpdesk", "")]);
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!(report.created, 3);
    assert_eq!(
        acked(&env).await,
        ["customer1@example.net", "customer2@example.net"],
        "three tickets, no acknowledgement for the mail received two days ago"
    );
    // A reader allowing three days answers such mail.
    env.dovecot.deliver_aged(USER, [(mail(3), 2 * DAY)]);
    let config = env.config(&[reader("helpdesk", "ack_max_age = \"3d\"\n")]);
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!(report.created, 1);
    assert_eq!(acked(&env).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_database_takes_only_mail_never_ingested() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..3).map(mail));
    let config = env.config(&[env.reader("helpdesk")]);
    assert_eq!(env.poll_ok(&config, "helpdesk").await.created, 3);
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), 3, "after = \"seen\"");

    // The database is lost; two mails came meanwhile.
    for suffix in ["", "-wal", "-shm"] {
        let mut file = env.db_file().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    env.dovecot.deliver_many(USER, (3..5).map(mail));
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!((report.fetched, report.created), (2, 2));
    assert_eq!(subjects(&env).await, subjects_of(&[3, 4]));
    assert_eq!(
        first_contact(&env, "helpdesk").await,
        (5, 2, 3, "unseen".into())
    );
}
