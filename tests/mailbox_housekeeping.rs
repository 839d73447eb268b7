//! What the IMAP reader does to the mailbox after a ticket's commit
//! (`after`: seen, keep, delete, move:FOLDER), the crash window between the
//! two, IDLE (and the fallback without it), UIDVALIDITY resets, STARTTLS
//! with plain auth, and what `check` reports about the server.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::proxy::is_command;
use common::setup::{
    Env, ReaderSpec, USER, check_binary, check_capabilities, run_once_binary, wait_until,
};
use common::{
    Action, DovecotOptions, NO_IDLE_NO_MOVE_CAPABILITY, Proxy, mail, mail_without_message_id,
    message_id,
};
use tokio::task::block_in_place;

const MAILS: usize = 10;

/// Delivers [`mail`]`(i)` and waits up to `limit` for it to be ticket
/// number `i + 1`.
async fn becomes_a_ticket(env: &Env, i: usize, limit: Duration) -> bool {
    env.dovecot.deliver(USER, &mail(i));
    env.wait_for_tickets(i as i64 + 1, limit).await
}

/// Delivers [`MAILS`] mails to INBOX and polls them with `after` (`None`:
/// the default): exactly one ticket each, nothing left pending, and a
/// second poll (which must also find nothing new) adds nothing.
async fn ingest_with(env: &Env, after: Option<&str>) {
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let reader = ReaderSpec {
        after: after.map(str::to_owned),
        ..env.reader("helpdesk")
    };
    let config = env.config(&[reader]);
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!(
        (report.fetched, report.created),
        (MAILS, MAILS),
        "{after:?}"
    );
    env.assert_exactly_once(MAILS).await;
    assert_eq!(
        env.count("SELECT COUNT(*) FROM source_positions").await,
        MAILS as i64
    );
    assert_eq!(env.pending("source_positions").await, 0, "{after:?}");

    let again = env.poll_ok(&config, "helpdesk").await;
    assert_eq!((again.fetched, again.created), (0, 0), "{after:?}");
    env.assert_exactly_once(MAILS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_seen_is_the_default_and_flags_every_mail_in_place() {
    for after in [None, Some("seen")] {
        let env = Env::start();
        ingest_with(&env, after).await;
        assert_eq!(env.dovecot.message_count(USER, "INBOX"), MAILS, "{after:?}");
        assert_eq!(env.dovecot.seen_count(USER, "INBOX"), MAILS, "{after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_keep_leaves_every_mail_unseen_in_place() {
    let env = Env::start();
    ingest_with(&env, Some("keep")).await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), MAILS);
    assert_eq!(
        env.dovecot.seen_count(USER, "INBOX"),
        0,
        "fetching must not set \\Seen either (BODY.PEEK)"
    );
    // A fresh process knows them too.
    block_in_place(|| run_once_binary(&env.path("config.toml")));
    env.assert_exactly_once(MAILS).await;
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_delete_expunges_every_ingested_mail() {
    let env = Env::start();
    ingest_with(&env, Some("delete")).await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0);
}

/// `after = "move:FOLDER"` into an existing `folder`: INBOX ends up empty,
/// and the folder holds every mail.
async fn assert_moves_into(folder: &str) {
    let env = Env::start();
    env.dovecot.create_folder(USER, folder);
    ingest_with(&env, Some(&format!("move:{folder}"))).await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0);
    assert_eq!(env.dovecot.message_count(USER, folder), MAILS, "{folder}");
    let query = format!("header message-id {}", message_id(3));
    assert_eq!(
        env.dovecot.search(USER, folder, &query).len(),
        1,
        "{folder}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_move_puts_every_mail_into_the_folder() {
    assert_moves_into("Done").await;
}

/// Non-ASCII, nested: `Erledigt/Bearbeitet-&AOQA9gD8-` on the wire
/// (modified UTF-7), written in UTF-8 in the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_move_into_a_nested_non_ascii_folder() {
    assert_moves_into("Erledigt/Bearbeitet-äöü").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_move_into_a_single_level_non_ascii_folder() {
    assert_moves_into("Traité").await;
}

/// `move:` on a server without MOVE: UID COPY, then `\Deleted` and UID
/// EXPUNGE of exactly those UIDs (UIDPLUS), never UID MOVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_without_the_move_extension_copies_and_expunges() {
    let env = Env::start_with(DovecotOptions {
        imap_capability: Some(NO_IDLE_NO_MOVE_CAPABILITY.into()),
        ..DovecotOptions::default()
    });
    env.dovecot.create_folder(USER, "Done");
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let proxy = Proxy::start(env.dovecot.imap_port());
    let reader = env
        .reader("helpdesk")
        .plaintext(proxy.port())
        .after("move:Done");
    let config = env.config(&[reader]);
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!(report.created, MAILS);
    assert_eq!(env.pending("source_positions").await, 0);

    let lines = proxy.client_lines();
    assert!(
        !lines.iter().any(|l| is_command(l, "UID MOVE")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| is_command(l, "UID COPY")), "{lines:?}");
    assert!(
        lines.iter().any(|l| is_command(l, "UID EXPUNGE")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| is_command(l, "EXPUNGE")), "{lines:?}");
    assert_eq!(env.dovecot.message_count(USER, "Done"), MAILS);
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0);
}

/// A move target that does not exist: `check` fails naming it, a poll
/// records it in last_error and moves nothing. Once the folder exists (and
/// `check` passes) the after-step is retried: no ticket twice, and the mail
/// lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_a_missing_folder_is_named_and_retried_once_it_exists() {
    const FOLDER: &str = "Archiv/Fehlt";
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..3).map(mail));
    let reader = env.reader("helpdesk").after(&format!("move:{FOLDER}"));
    let config = env.config(&[reader]);

    let (code, stdout, stderr) = block_in_place(|| check_binary(&config.path, Some("helpdesk")));
    assert!(
        code.is_some_and(|c| c != 0),
        "check must fail: {stdout}{stderr}"
    );
    assert!(
        format!("{stdout}{stderr}").contains(FOLDER),
        "check names the folder: {stdout}{stderr}"
    );

    let last_error = env.failing_poll(&config, "helpdesk").await;
    assert!(last_error.contains(FOLDER), "{last_error}");
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 3, "nothing moved");
    let tickets = env.count("SELECT COUNT(*) FROM tickets").await;
    assert!(tickets <= 3, "{tickets} tickets for 3 mails");
    env.assert_exactly_once(tickets as usize).await;

    assert_ne!(env.state("helpdesk").await, "ok");

    // The admin creates the folder and runs `check`, as last_error advises
    // (a missing folder stops the reader until then); the reader goes on.
    env.dovecot.create_folder(USER, FOLDER);
    let (code, stdout, stderr) = block_in_place(|| check_binary(&config.path, Some("helpdesk")));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    env.poll_ok(&config, "helpdesk").await;
    env.assert_exactly_once(3).await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0);
    assert_eq!(env.dovecot.message_count(USER, FOLDER), 3);
    assert_eq!(env.pending("source_positions").await, 0);
    assert_eq!(env.last_error("helpdesk").await, None);
}

/// Killed after the commit, before `UID MOVE` (or the `UID COPY` of a
/// move without MOVE) reached the server: the next run moves the mail
/// without making a ticket twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_move_the_next_run_moves_without_duplicates() {
    const MAILS: usize = 20;
    let env = Env::start();
    env.dovecot.create_folder(USER, "Done");
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let reader = env.reader("helpdesk").after("move:Done");
    env.kill_at_after_step_then_rerun(
        reader,
        env.dovecot.imap_port(),
        &["UID MOVE", "UID COPY"],
        "source_positions",
        MAILS,
    )
    .await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0);
    assert_eq!(env.dovecot.message_count(USER, "Done"), MAILS);
}

/// With `idle = true` and an hour between polls, only IDLE can notice new
/// mail in time: it becomes a ticket within 2 s, and still does after the
/// server restarted under the idling connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_makes_new_mail_a_ticket_at_once_and_survives_a_server_restart() {
    let mut env = Env::start();
    let reader = ReaderSpec {
        idle: true,
        poll_interval: "1h",
        ..env.reader("helpdesk")
    };
    let config = env.config(&[reader]);
    env.dovecot.deliver(USER, &mail(0));
    let (cancel, daemon) = env.spawn_daemon(&config).await;
    assert!(
        env.wait_for_tickets(1, Duration::from_secs(30)).await,
        "the first poll ingested the waiting mail"
    );

    assert!(
        becomes_a_ticket(&env, 1, Duration::from_secs(2)).await,
        "IDLE: a new mail is a ticket within 2 s"
    );

    block_in_place(|| env.dovecot.restart());
    assert!(
        becomes_a_ticket(&env, 2, Duration::from_secs(30)).await,
        "the reader reconnected after the restart"
    );
    assert!(
        becomes_a_ticket(&env, 3, Duration::from_secs(2)).await,
        "and IDLEs again: a new mail is a ticket within 2 s"
    );

    env.stop_daemon(cancel, daemon).await;
    env.assert_exactly_once(4).await;
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), 4);
}

/// Mail that arrives between an IDLE reader's search and its IDLE (here:
/// while its after-step is held up) is announced in the answer to the
/// after-step, not in IDLE; the reader must take it at once instead of at
/// its next poll interval (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_takes_mail_announced_before_it_began_idling() {
    let env = Env::start();
    let proxy = Proxy::start(env.dovecot.imap_port());
    let reader = ReaderSpec {
        idle: true,
        poll_interval: "1h",
        ..env.reader("helpdesk").plaintext(proxy.port())
    };
    let config = env.config(&[reader]);
    env.dovecot.deliver(USER, &mail(0));
    proxy.on_client_line("UID STORE", Action::Hold(Duration::from_secs(2)));
    let (cancel, daemon) = env.spawn_daemon(&config).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            !proxy.fired().is_empty()
        })
        .await,
        "the reader's after-step reached the proxy"
    );
    // The first mail is committed and its \Seen is on hold: the reader has
    // searched already and will IDLE next.
    env.dovecot.deliver(USER, &mail(1));
    assert!(
        env.wait_for_tickets(2, Duration::from_secs(15)).await,
        "the mail announced during the after-step became a ticket without waiting for IDLE"
    );
    env.stop_daemon(cancel, daemon).await;
    env.assert_exactly_once(2).await;
}

/// `idle = true` against a server without IDLE (nor MOVE): the reader
/// never sends IDLE and polls every poll_interval instead; `check` shows
/// the server's real capabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_without_server_support_falls_back_to_polling() {
    let env = Env::start_with(DovecotOptions {
        imap_capability: Some(NO_IDLE_NO_MOVE_CAPABILITY.into()),
        ..DovecotOptions::default()
    });
    let proxy = Proxy::start(env.dovecot.imap_port());
    let reader = ReaderSpec {
        idle: true,
        poll_interval: "1s",
        ..env.reader("helpdesk").plaintext(proxy.port())
    };
    let config = env.config(&[reader]);

    let (code, stdout, stderr) = block_in_place(|| check_binary(&config.path, Some("helpdesk")));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let caps = check_capabilities(&stdout);
    assert!(caps.iter().any(|c| c == "UIDPLUS"), "{stdout}");
    assert!(!caps.iter().any(|c| c == "IDLE" || c == "MOVE"), "{stdout}");

    let (cancel, daemon) = env.spawn_daemon(&config).await;
    for i in 0..3 {
        assert!(
            becomes_a_ticket(&env, i, Duration::from_secs(30)).await,
            "mail {i} became a ticket by polling"
        );
    }
    env.stop_daemon(cancel, daemon).await;

    let lines = proxy.client_lines();
    assert!(
        !lines.iter().any(|l| is_command(l, "IDLE")),
        "IDLE sent to a server that does not offer it"
    );
    env.assert_exactly_once(3).await;
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), 3);
    assert_eq!(env.last_error("helpdesk").await, None);
}

/// A folder re-created (new UIDVALIDITY, every UID new) with mails that
/// have no Message-ID, read with `after = "keep"`: the content hash
/// recognises them, only the one new mail becomes a ticket, and the next
/// poll fetches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uidvalidity_reset_recognises_mails_without_message_id_by_content() {
    // Even-numbered mails have no Message-ID.
    let queue = |n: usize| {
        (0..n).map(|i| {
            if i % 2 == 0 {
                mail_without_message_id(i)
            } else {
                mail(i)
            }
        })
    };
    let env = Env::start();
    env.dovecot.create_folder(USER, "Queue");
    for m in queue(6) {
        env.dovecot.deliver_to(USER, "Queue", &m);
    }
    let reader = ReaderSpec {
        folder: "Queue".into(),
        ..env.reader("queue").after("keep")
    };
    let config = env.config(&[reader]);
    let report = env.poll_ok(&config, "queue").await;
    assert_eq!(report.created, 6);
    let by_content = "SELECT COUNT(*) FROM emails WHERE dedup_key LIKE 'sha256:%'";
    assert_eq!(env.count(by_content).await, 3);

    let (_, new_uidvalidity) = env.dovecot.recreate_folder(USER, "Queue");
    for m in queue(7) {
        env.dovecot.deliver_to(USER, "Queue", &m);
    }
    let report = env.poll_ok(&config, "queue").await;
    assert_eq!((report.created, report.duplicates), (1, 6));
    env.assert_exactly_once(7).await;
    assert_eq!(env.count(by_content).await, 4);
    let under_new =
        format!("SELECT COUNT(*) FROM source_positions WHERE uidvalidity = {new_uidvalidity}");
    assert!(
        env.count(&under_new).await > 0,
        "positions under the new UIDVALIDITY"
    );

    let report = env.poll_ok(&config, "queue").await;
    assert_eq!((report.fetched, report.created), (0, 0));
    assert_eq!(env.dovecot.message_count(USER, "Queue"), 7, "kept");
    assert_eq!(env.dovecot.seen_count(USER, "Queue"), 0, "kept unseen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_plain_auth() {
    let env = Env::start_with_plain_password();
    let reader = env.reader("helpdesk");
    env.assert_plain_auth_over_starttls(reader, env.dovecot.imap_port(), "STARTTLS", "imap-login")
        .await;
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), 2);
}

/// `check` shows the waiting count and which of IDLE, MOVE and UIDPLUS the
/// server has (Dovecot: all three).
#[test]
fn check_shows_capabilities_and_the_waiting_count() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..5).map(mail));
    let config = env.write_config(&[env.reader("helpdesk")]);
    // `note`: what the first poll would take, before it.
    let line = |waiting: usize, note: &str| {
        let (code, stdout, stderr) = check_binary(&config, Some("helpdesk"));
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        let line = stdout.trim().to_owned();
        let expected =
            format!("helpdesk: ok, 5 messages, {waiting} not yet ingested{note}; capabilities:");
        assert!(line.starts_with(&expected), "{line}");
        line
    };
    let before = line(
        5,
        " (first contact: backfill = \"unseen\" would take 5 of 5 (skipping 0))",
    );
    let caps = check_capabilities(&before);
    for cap in ["IDLE", "MOVE", "UIDPLUS"] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing: {before}");
    }
    run_once_binary(&config);
    line(0, "");
}
