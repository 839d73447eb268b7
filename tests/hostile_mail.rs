//! Hostile mail end to end, through the binary and a real Dovecot: mails
//! built to crash, stall or exhaust the daemon arrive between ordinary
//! ones; the daemon never exits, every ordinary mail becomes a ticket in
//! the same poll, each hostile one becomes a ticket with a note or a
//! quarantined row, memory stays within its bound, and a rerun adds
//! nothing. And the quarantine lane: a mail the store cannot take is set
//! aside whole, `quarantine retry` makes it a ticket exactly once, and a
//! SIGKILL at any moment of that loses nothing.

use mail2ticket_testkit as common;

use std::path::Path;
use std::time::Duration;

use common::setup::{
    Env, USER, run_binary, run_measured, run_once_binary, status_json, status_reader,
};
use common::{mail, message_id};

/// A trigger that makes SQLite refuse one attachment by name: a store error
/// caused by one mail's content, as a real constraint or size limit would be.
const POISON_TRIGGER: &str = "CREATE TRIGGER poison BEFORE INSERT ON attachments
    WHEN NEW.filename = 'poison.bin'
    BEGIN SELECT RAISE(ABORT, 'the test refuses poison.bin'); END";

/// Mail `i` with an attachment called `poison.bin`.
fn poisoned(i: usize) -> Vec<u8> {
    format!(
        "From: Poison {i} <poison{i}@example.net>\r\nTo: helpdesk@test.example\r\n\
         Subject: Poisoned #{i}\r\nMessage-ID: <poison{i}@example.net>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=P\r\n\r\n--P\r\nContent-Type: text/plain\r\n\r\n\
         see attachment\r\n--P\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"poison.bin\"\r\n\r\nxyz\r\n--P--\r\n"
    )
    .into_bytes()
}

/// A mail whose body is `depth` nested message/rfc822 parts (the drop of
/// such a parse tree once overflowed the stack).
fn deep_rfc822(depth: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Deep <deep@example.net>\r\nTo: helpdesk@test.example\r\nSubject: deep rfc822\r\n\
         Message-ID: <deep-rfc822@example.net>\r\nMIME-Version: 1.0\r\n",
    );
    for _ in 0..depth {
        m.push_str("Content-Type: message/rfc822\r\n\r\nFrom: x@example.net\r\n");
    }
    m.push_str("Subject: innermost\r\n\r\nthe bottom\r\n");
    m.into_bytes()
}

/// A mail of `depth` nested multiparts.
fn deep_multipart(depth: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Deep <deep@example.net>\r\nTo: helpdesk@test.example\r\nSubject: deep multipart\r\n\
         Message-ID: <deep-multipart@example.net>\r\nMIME-Version: 1.0\r\n",
    );
    for i in 0..depth {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    m.push_str("Content-Type: text/plain\r\n\r\nthe bottom\r\n");
    m.into_bytes()
}

/// A delivery report naming `parts` original messages, each in its own
/// text/rfc822-headers part.
fn huge_report(parts: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: MAILER-DAEMON@example.net\r\nTo: helpdesk@test.example\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <huge-report@example.net>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=R\r\n\r\n\
         --R\r\nContent-Type: text/plain\r\n\r\nundeliverable\r\n",
    );
    for i in 0..parts {
        m.push_str(&format!(
            "--R\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <orig{i}@test.example>\r\n\r\n"
        ));
    }
    m.push_str("--R--\r\n");
    m.into_bytes()
}

/// A mail whose subject is `bytes` of "Re: " (forward detection was once
/// quadratic in it).
fn huge_subject(bytes: usize) -> Vec<u8> {
    format!(
        "From: Long <long@example.net>\r\nTo: helpdesk@test.example\r\nSubject: {}Fwd: help\r\n\
         Message-ID: <huge-subject@example.net>\r\n\r\nbody\r\n",
        "Re: ".repeat(bytes / 4)
    )
    .into_bytes()
}

async fn sql(env: &Env, statement: &str) {
    sqlx::query(statement)
        .execute(&env.db().await)
        .await
        .expect("sql");
}

fn quarantine(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["-c", config.to_str().expect("utf-8 path"), "quarantine"];
    all.extend_from_slice(args);
    run_binary(&all, Duration::from_secs(60))
}

fn quarantine_list(config: &Path) -> Vec<serde_json::Value> {
    let (code, stdout, stderr) = quarantine(config, &["list", "--json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    serde_json::from_str::<Vec<serde_json::Value>>(&stdout).expect("json list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_the_store_refuses_is_set_aside_and_retried_into_one_ticket() {
    let env = Env::start();
    let config = env.config(&[env.reader("desk")]);
    env.init_db(&config).await;
    sql(&env, POISON_TRIGGER).await;
    env.dovecot.deliver(USER, &mail(0));
    env.dovecot.deliver(USER, &mail(1));
    env.dovecot.deliver(USER, &poisoned(2));
    env.dovecot.deliver(USER, &mail(3));

    let out = tokio::task::block_in_place(|| run_once_binary(&config.path));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("3 new tickets") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    // The healthy mails of the same batch are tickets; the reader is fine.
    for i in [0, 1, 3] {
        let id = message_id(i);
        let n = env
            .count(&format!(
                "SELECT COUNT(*) FROM emails WHERE message_id = '{}' AND disposition = 'ticket'",
                id.trim_matches(['<', '>'])
            ))
            .await;
        assert_eq!(n, 1, "mail {i}");
    }
    assert_eq!(env.state("desk").await, "ok");
    assert_eq!(env.count("SELECT COUNT(*) FROM source_positions").await, 4);

    let list = tokio::task::block_in_place(|| quarantine_list(&config.path));
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    let disposition = entry["disposition"].as_str().unwrap_or_default();
    assert!(
        disposition.starts_with("quarantined: store (") && disposition.contains("poison.bin"),
        "{disposition}"
    );
    assert_eq!(entry["subject"], "Poisoned #2");
    let id = entry["id"].as_i64().expect("id");

    // Visible where the admin looks: status, history, the raw mail.
    let status = tokio::task::block_in_place(|| status_json(&config.path, None));
    assert_eq!(status_reader(&status, "desk")["quarantined"], 1);
    let (code, shown, _) =
        tokio::task::block_in_place(|| quarantine(&config.path, &["show", &id.to_string()]));
    assert_eq!(code, Some(0));
    assert!(
        shown.contains("Poisoned #2") && shown.contains("store ("),
        "{shown}"
    );
    let (code, raw, _) = tokio::task::block_in_place(|| {
        quarantine(&config.path, &["show", &id.to_string(), "--raw"])
    });
    assert_eq!(code, Some(0));
    assert_eq!(raw.as_bytes(), poisoned(2).as_slice());
    assert!(
        env.reader_events("desk")
            .await
            .iter()
            .any(|e| e.level == "warn" && e.message.contains("quarantined")),
        "history"
    );

    // Still refused: it stays in quarantine, nothing else changes.
    let (code, out, _) =
        tokio::task::block_in_place(|| quarantine(&config.path, &["retry", "--all"]));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 3);

    // After the "upgrade": one ticket, once.
    sql(&env, "DROP TRIGGER poison").await;
    let (code, out, err) =
        tokio::task::block_in_place(|| quarantine(&config.path, &["retry", &id.to_string()]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(ticket)"), "{out}");
    let (code, out, _) =
        tokio::task::block_in_place(|| quarantine(&config.path, &["retry", &id.to_string()]));
    assert_eq!(code, Some(1));
    assert!(out.contains("not in the quarantine"), "{out}");
    env.assert_exactly_once(4).await;
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM emails e JOIN source_positions p ON p.email_id = e.id
             WHERE e.subject = 'Poisoned #2' AND e.disposition = 'ticket' AND e.raw_blob IS NOT NULL"
        )
        .await,
        1,
        "the ledger points at the ticket's email, which keeps the raw mail"
    );
    assert!(tokio::task::block_in_place(|| quarantine_list(&config.path)).is_empty());

    // A rerun adds nothing.
    tokio::task::block_in_place(|| run_once_binary(&config.path));
    env.assert_exactly_once(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pop3_reader_sets_aside_what_the_store_refuses_and_moves_on() {
    let env = Env::start();
    let config = env.config(&[env.pop3_reader("pop")]);
    env.init_db(&config).await;
    sql(&env, POISON_TRIGGER).await;
    env.dovecot.deliver(USER, &mail(0));
    env.dovecot.deliver(USER, &poisoned(1));
    env.dovecot.deliver(USER, &mail(2));
    let out = tokio::task::block_in_place(|| run_once_binary(&config.path));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 new tickets") && stdout.contains("1 quarantined"),
        "{stdout}"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM pop3_uidls").await, 3);
    let list = tokio::task::block_in_place(|| quarantine_list(&config.path));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["reader"], "pop");
    sql(&env, "DROP TRIGGER poison").await;
    let (code, out, _) =
        tokio::task::block_in_place(|| quarantine(&config.path, &["retry", "--all"]));
    assert_eq!(code, Some(0), "{out}");
    tokio::task::block_in_place(|| run_once_binary(&config.path));
    env.assert_exactly_once(3).await;
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM pop3_uidls u JOIN emails e ON e.id = u.email_id
             WHERE e.disposition = 'ticket'"
        )
        .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_takes_a_mail_out_of_the_quarantine_without_a_ticket() {
    let env = Env::start();
    let config = env.config(&[env.reader("desk")]);
    env.init_db(&config).await;
    sql(&env, POISON_TRIGGER).await;
    env.dovecot.deliver(USER, &poisoned(7));
    tokio::task::block_in_place(|| run_once_binary(&config.path));
    let list = tokio::task::block_in_place(|| quarantine_list(&config.path));
    let id = list[0]["id"].as_i64().expect("id").to_string();
    let (code, out, _) = tokio::task::block_in_place(|| quarantine(&config.path, &["drop", &id]));
    assert_eq!(code, Some(0), "{out}");
    assert!(tokio::task::block_in_place(|| quarantine_list(&config.path)).is_empty());
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM emails WHERE disposition LIKE 'ignored: dropped (store (%'"
        )
        .await,
        1
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 0);
    let (code, _, _) = tokio::task::block_in_place(|| quarantine(&config.path, &["drop", &id]));
    assert_eq!(code, Some(1), "dropped once only");
    // A missing database is named, not created.
    let elsewhere = env.path("elsewhere.toml");
    std::fs::write(
        &elsewhere,
        std::fs::read_to_string(&config.path)
            .expect("config")
            .replace(
                &env.db_file().display().to_string(),
                &env.path("nothing-here.db").display().to_string(),
            ),
    )
    .expect("write");
    let (code, _, err) =
        tokio::task::block_in_place(|| quarantine(&elsewhere, &["retry", "--all"]));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("nothing-here.db") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!env.path("nothing-here.db").exists());
}

#[test]
fn sigkill_while_mail_is_being_set_aside_loses_and_duplicates_nothing() {
    const MAILS: usize = 400;
    let env = Env::start();
    let reader = common::setup::ReaderSpec {
        batch_size: Some(40),
        ..env.reader("desk")
    };
    let config_path = env.write_config(&[reader]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = mail2ticket::config::Config::load(&config_path).expect("config");
    runtime.block_on(env.init_db(&config));
    runtime.block_on(sql(&env, POISON_TRIGGER));
    // Every batch of 40 holds a poisoned mail, so every batch takes the
    // one-mail-at-a-time path that sets it aside: the kills land there.
    let poisoned_at = |i: usize| i % 40 == 17;
    env.dovecot.deliver_many(
        USER,
        (0..MAILS).map(|i| if poisoned_at(i) { poisoned(i) } else { mail(i) }),
    );
    let poison = (0..MAILS).filter(|&i| poisoned_at(i)).count();
    let healthy = (MAILS - poison) as i64;
    let quarantined = || {
        runtime.block_on(
            env.count("SELECT COUNT(*) FROM emails WHERE disposition LIKE 'quarantined: %'"),
        )
    };
    // Each round kills the daemon a random moment after it set a mail
    // aside, so kills land inside and between the one-mail transactions.
    let mut killed_midway = 0;
    for _ in 0..40 {
        let before = quarantined();
        if before == poison as i64 {
            break;
        }
        let mut child = env.spawn_daemon_binary(&config_path);
        runtime.block_on(common::setup::wait_until(
            Duration::from_secs(20),
            || async {
                env.count("SELECT COUNT(*) FROM emails WHERE disposition LIKE 'quarantined: %'")
                    .await
                    > before
            },
        ));
        std::thread::sleep(Duration::from_millis(rand::random_range(0..40)));
        child.0.kill().expect("SIGKILL");
        child.0.wait().expect("reap");
        if quarantined() < poison as i64 {
            killed_midway += 1;
        }
    }
    assert!(
        killed_midway >= 3,
        "only {killed_midway} kills landed mid-mailbox"
    );
    run_once_binary(&config_path);
    let counts = runtime.block_on(async {
        (
            env.count("SELECT COUNT(*) FROM tickets").await,
            env.count("SELECT COUNT(*) FROM emails WHERE disposition = 'ticket'")
                .await,
            env.count("SELECT COUNT(*) FROM emails WHERE disposition LIKE 'quarantined: %'")
                .await,
            env.count("SELECT COUNT(*) FROM emails").await,
            env.count("SELECT COUNT(DISTINCT dedup_key) FROM emails")
                .await,
            env.count("SELECT COUNT(*) FROM source_positions").await,
            env.count("SELECT COUNT(DISTINCT uid) FROM source_positions")
                .await,
        )
    });
    let all = MAILS as i64;
    assert_eq!(
        counts,
        (healthy, healthy, poison as i64, all, all, all, all),
        "(tickets, ticket emails, quarantined, emails, distinct, positions, distinct uids)"
    );
}

/// The memory bound docs/configuration.md documents (`batch_bytes`) for a reader
/// with these limits.
fn documented_peak(batch_bytes: u64, max_email_size: u64) -> u64 {
    8 * batch_bytes.max(max_email_size) + (64 << 20)
}

#[test]
fn hostile_mails_between_ordinary_ones_never_stop_the_mailbox() {
    const MAX_EMAIL: u64 = 8 << 20;
    const BATCH_BYTES: u64 = 4 << 20;
    let env = Env::start();
    let big_id = message_id(1000);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("deep-rfc822@example.net", deep_rfc822(40_000)),
        ("deep-multipart@example.net", deep_multipart(100_000)),
        ("huge-report@example.net", huge_report(33_000)),
        ("huge-subject@example.net", huge_subject(3 << 20)),
        (
            big_id.trim_matches(['<', '>']),
            common::mail_of_size(1000, 60 << 20),
        ),
    ];
    let hostile_ids: Vec<String> = hostile.iter().map(|(id, _)| id.to_string()).collect();
    let mut mails = vec![mail(0)];
    for (i, (_, raw)) in hostile.into_iter().enumerate() {
        mails.push(raw);
        mails.push(mail(i + 1));
    }
    let ordinary = 6;
    env.dovecot.deliver_many(USER, mails);
    let reader = common::setup::ReaderSpec {
        extra: format!("batch_bytes = {BATCH_BYTES}\n"),
        ..env.reader("desk")
    };
    let path = env.path("config.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[tickets]\nmax_email_size = {MAX_EMAIL}\n",
            env.config_toml(&[reader])
        ),
    )
    .expect("write config");
    let config = path.to_str().expect("utf-8 path");

    let (status, stdout, stderr, peak) = run_measured(&["-c", config, "run", "--once"]);
    assert!(status.success(), "run --once: {status}\n{stdout}\n{stderr}");
    let bound = documented_peak(BATCH_BYTES, MAX_EMAIL);
    eprintln!(
        "peak RSS of run --once: {} MiB (bound {} MiB)",
        peak >> 20,
        bound >> 20
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB is over the documented {} MiB",
        peak >> 20,
        bound >> 20
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let counts = |sql: &str| runtime.block_on(env.count(sql));
    // Every ordinary mail is a ticket after this one poll.
    for i in 0..ordinary {
        let id = message_id(i);
        assert_eq!(
            counts(&format!(
                "SELECT COUNT(*) FROM emails WHERE message_id = '{}' AND disposition = 'ticket'",
                id.trim_matches(['<', '>'])
            )),
            1,
            "ordinary mail {i}\n{stdout}"
        );
    }
    // Every hostile one is a ticket that says what was left out, or set
    // aside; the report about mail that is not ours is what the guard
    // makes of any such report.
    for id in &hostile_ids {
        let visible = if id.starts_with("huge-report") {
            "disposition = 'ignored: bounce (multipart/report; report-type=delivery-status)'"
        } else {
            "(disposition = 'ticket' AND (parse_note IS NOT NULL OR limit_note IS NOT NULL))
              OR disposition LIKE 'quarantined: %'"
        };
        let n = counts(&format!(
            "SELECT COUNT(*) FROM emails WHERE message_id = '{id}' AND ({visible})"
        ));
        if n != 1 {
            let rows: Vec<(String, Option<String>, Option<String>)> = runtime.block_on(async {
                sqlx::query_as(&format!(
                    "SELECT disposition, parse_note, limit_note FROM emails WHERE message_id = '{id}'"
                ))
                .fetch_all(&env.db().await)
                .await
                .expect("rows")
            });
            panic!("hostile mail {id}: {rows:?}");
        }
    }
    assert_eq!(counts("SELECT COUNT(*) FROM emails"), 11);
    let state = runtime.block_on(env.state("desk"));
    assert_eq!(state, "ok");

    // A rerun fetches nothing new and adds nothing.
    let (status, stdout, stderr, _) = run_measured(&["-c", config, "run", "--once"]);
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(counts("SELECT COUNT(*) FROM emails"), 11);
    assert_eq!(counts("SELECT COUNT(*) FROM source_positions"), 11);
}
