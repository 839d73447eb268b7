//! Servers that refuse: a NO or BAD to a FETCH, a UID left out of the
//! answer or sent without a body, a NO to the after-step, response codes
//! that say whether the credential or the server is at fault, and servers
//! that echo the credential back. Each against a scripted IMAP server
//! (tests/common/scripted_imap.rs) through the library's `run --once` or
//! the binary: no mail lost, none duplicated, the reader's `last_error`
//! says what happened in an admin's words, and no credential leaks.

use mail2ticket_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::mail;
use common::scripted_imap::{Script, ScriptedImap, Withhold};
use common::setup::{Env, binary, wait_until};
use mail2ticket::config::Config;

fn mails(uids: std::ops::RangeInclusive<u32>) -> BTreeMap<u32, Vec<u8>> {
    uids.map(|uid| (uid, mail(uid as usize))).collect()
}

/// An Env (IdP for the token; its Dovecot is not used) and a scripted
/// server with `script`, read by reader "r" with `after`.
async fn scripted(script: Script, after: Option<&str>) -> (Env, ScriptedImap, Config) {
    let env = Env::start();
    let server = ScriptedImap::start(script).await;
    let mut reader = env.reader("r").plaintext(server.port());
    reader.after = after.map(Into::into);
    let config = env.config(&[reader]);
    (env, server, config)
}

/// One poll of reader "r": the report, or its `last_error`.
async fn poll(env: &Env, config: &Config) -> Result<mail2ticket::source::PollReport, String> {
    let results = env.poll_once(config).await;
    let (_, result) = results.into_iter().find(|(n, _)| n == "r").expect("polled");
    match result {
        Ok(report) => Ok(report),
        Err(e) => {
            let last_error = env.last_error("r").await.unwrap_or_default();
            assert_readable(&last_error);
            assert!(last_error.starts_with(&e.to_string()), "{last_error} / {e}");
            Err(last_error)
        }
    }
}

/// Written for people: no Rust debug output.
fn assert_readable(text: &str) {
    for debug in ["code: ", "Some(", "None", "Outcome {", "info: "] {
        assert!(!text.contains(debug), "debug output {debug:?} in {text}");
    }
}

async fn tickets(env: &Env) -> i64 {
    env.count("SELECT COUNT(*) FROM tickets").await
}

async fn owed(env: &Env) -> i64 {
    env.count("SELECT COUNT(*) FROM imap_owed").await
}

/// Every mail of the folder became exactly one email with one ticket.
async fn assert_each_once(env: &Env, n: i64) {
    assert_eq!(tickets(env).await, n, "tickets");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM emails WHERE disposition = 'ticket'")
            .await,
        n,
        "emails"
    );
    assert_eq!(
        env.count("SELECT COUNT(DISTINCT uid) FROM source_positions")
            .await,
        n,
        "ledger"
    );
}

/// The issue's case: `UID FETCH 1:3` answered `NO [SERVERBUG]` with only
/// mail 3 served. Mail 3 is a ticket at once, 1 and 2 are owed (the ledger
/// does not let the watermark pass them), the reader says so, and once the
/// server serves them they become tickets, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_fetch_loses_no_mail() {
    let mut script = Script {
        mails: mails(1..=3),
        fetch_answer: Some("NO [SERVERBUG] Internal error occurred. Refer to server log".into()),
        ..Script::default()
    };
    script.withhold.insert(1, Withhold::Omit);
    script.withhold.insert(2, Withhold::Omit);
    let (env, server, config) = scripted(script, Some("keep")).await;

    let err = poll(&env, &config)
        .await
        .expect_err("a refused FETCH fails the poll");
    assert!(err.contains("did not deliver 2 mail(s)"), "{err}");
    assert!(err.contains("UID 1:2"), "{err}");
    assert!(err.contains("[SERVERBUG] Internal error occurred"), "{err}");
    assert_eq!(env.state("r").await, "retrying");
    assert_eq!(tickets(&env).await, 1);
    assert_eq!(owed(&env).await, 2);

    // Still refusing: asked again (below the watermark), nothing twice.
    let err = poll(&env, &config).await.expect_err("still refused");
    assert!(err.contains("UID 1:2"), "{err}");
    assert_eq!(tickets(&env).await, 1);
    let fetches = server
        .commands()
        .iter()
        .filter(|c| c.starts_with("UID FETCH 1:2 (BODY.PEEK"))
        .count();
    assert_eq!(
        fetches,
        1,
        "the second poll asked for the owed UIDs: {:?}",
        server.commands()
    );

    server.script(|s| {
        s.fetch_answer = None;
        s.withhold.clear();
    });
    poll(&env, &config)
        .await
        .expect("the server serves them now");
    assert_each_once(&env, 3).await;
    assert_eq!(owed(&env).await, 0);
    poll(&env, &config).await.expect("nothing new");
    assert_each_once(&env, 3).await;
    assert_eq!(env.state("r").await, "ok");
}

/// A BAD to the FETCH (nothing delivered), then a UID left out of an OK
/// answer and one sent with a NIL body: all asked again, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fetch_missing_uid_and_nil_body_are_asked_again() {
    let mut script = Script {
        mails: mails(1..=3),
        fetch_answer: Some("BAD [CLIENTBUG] Invalid messageset".into()),
        ..Script::default()
    };
    for uid in 1..=3 {
        script.withhold.insert(uid, Withhold::Omit);
    }
    let (env, server, config) = scripted(script, Some("seen")).await;
    let err = poll(&env, &config).await.expect_err("BAD fails the poll");
    assert!(err.contains("did not deliver 3 mail(s)"), "{err}");
    assert!(err.contains("[CLIENTBUG] Invalid messageset"), "{err}");
    assert_eq!(tickets(&env).await, 0);

    server.script(|s| {
        s.fetch_answer = None;
        s.withhold.clear();
    });
    poll(&env, &config).await.expect("served");
    assert_each_once(&env, 3).await;

    // New mail: 5 left out of an OK answer, 6 with a NIL body.
    server.script(|s| {
        s.mails.extend(mails(4..=6));
        s.withhold.insert(5, Withhold::Omit);
        s.withhold.insert(6, Withhold::Nil);
    });
    let err = poll(&env, &config)
        .await
        .expect_err("missing mail fails the poll");
    assert!(err.contains("did not deliver 2 mail(s)"), "{err}");
    assert!(err.contains("UID 5:6"), "{err}");
    assert!(err.contains("left them out or had no body"), "{err}");
    assert_eq!(tickets(&env).await, 4);
    // Only delivered, committed mail is marked read.
    server.script(|s| {
        assert!(s.seen.contains(&4) && !s.seen.contains(&5) && !s.seen.contains(&6));
        s.withhold.clear();
    });
    poll(&env, &config).await.expect("served");
    assert_each_once(&env, 6).await;
    server.script(|s| assert!((1..=6).all(|u| s.seen.contains(&u)), "{:?}", s.seen));
}

/// A mail the server refuses for five polls is set aside in the
/// quarantine with the server's words (never skipped silently, never
/// marked read); `quarantine retry` asks the server for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_refused_for_good_ends_in_the_quarantine() {
    let mut script = Script {
        mails: mails(1..=2),
        fetch_answer: Some("NO [UNAVAILABLE] Message body unavailable".into()),
        ..Script::default()
    };
    script.withhold.insert(1, Withhold::Nil);
    let (env, server, config) = scripted(script, Some("seen")).await;
    for round in 1..mail2ticket::store::MAX_REFUSALS {
        let err = poll(&env, &config).await.expect_err("refused");
        assert!(err.contains("UID 1"), "round {round}: {err}");
    }
    let report = poll(&env, &config)
        .await
        .expect("set aside: the poll is good");
    assert_eq!(report.quarantined, 1);
    assert_eq!(tickets(&env).await, 1);
    assert_eq!(owed(&env).await, 0);
    let list = mail2ticket::ops::quarantine::list(&config, None)
        .await
        .expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    assert!(
        entry.disposition.starts_with("quarantined: server ("),
        "{}",
        entry.disposition
    );
    assert!(entry.disposition.contains("UID 1"), "{}", entry.disposition);
    assert!(
        entry
            .disposition
            .contains("[UNAVAILABLE] Message body unavailable"),
        "{}",
        entry.disposition
    );
    server.script(|s| {
        assert!(
            !s.seen.contains(&1),
            "a mail never delivered is not marked read"
        )
    });
    let events = env.reader_events("r").await;
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("quarantined (server)")),
        "{events:?}"
    );
    // Polls go on without asking for it.
    poll(&env, &config).await.expect("quiet");

    // The server is fixed; the admin retries: the next poll fetches it.
    server.script(|s| {
        s.fetch_answer = None;
        s.withhold.clear();
    });
    let retried = mail2ticket::ops::quarantine::retry(
        &config,
        mail2ticket::ops::quarantine::Which::One(entry.id),
    )
    .await
    .expect("retry");
    assert!(
        matches!(retried[0].1, Ok(mail2ticket::store::Retried::AskedAgain)),
        "{retried:?}"
    );
    poll(&env, &config).await.expect("fetched");
    assert_each_once(&env, 2).await;
    assert!(
        mail2ticket::ops::quarantine::list(&config, None)
            .await
            .expect("list")
            .is_empty()
    );
}

/// A NO to UID STORE (seen), to UID EXPUNGE (delete) and to UID MOVE:
/// the ticket exists once, the after-step stays pending and is done once
/// the server takes it, and the reader says what failed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_after_steps_are_retried_and_reported() {
    let script = Script {
        mails: mails(1..=1),
        store_answer: Some("NO [SERVERBUG] flags not saved".into()),
        ..Script::default()
    };
    let (env, server, config) = scripted(script, Some("seen")).await;
    let err = poll(&env, &config).await.expect_err("refused STORE");
    assert!(err.contains("after = \"seen\""), "{err}");
    assert!(err.contains("UID STORE"), "{err}");
    assert!(err.contains("[SERVERBUG] flags not saved"), "{err}");
    assert_eq!(env.pending("source_positions").await, 1);
    server.script(|s| s.store_answer = None);
    poll(&env, &config).await.expect("STORE taken");
    assert_eq!(env.pending("source_positions").await, 0);
    server.script(|s| assert!(s.seen.contains(&1)));
    assert_each_once(&env, 1).await;

    // delete: the EXPUNGE is refused.
    let reader = env.reader("r").plaintext(server.port()).after("delete");
    let config = env.config(&[reader]);
    server.script(|s| {
        s.mails.extend(mails(2..=2));
        s.expunge_answer = Some("NO [INUSE] Mailbox is locked".into());
    });
    let err = poll(&env, &config).await.expect_err("refused EXPUNGE");
    assert!(err.contains("after = \"delete\""), "{err}");
    assert!(err.contains("[INUSE] Mailbox is locked"), "{err}");
    server.script(|s| {
        assert!(s.mails.contains_key(&2));
        s.expunge_answer = None;
    });
    poll(&env, &config).await.expect("EXPUNGE taken");
    server.script(|s| assert!(!s.mails.contains_key(&2)));
    assert_each_once(&env, 2).await;

    // move: the MOVE is refused.
    let reader = env.reader("r").plaintext(server.port()).after("move:Done");
    let config = env.config(&[reader]);
    server.script(|s| {
        s.mails.extend(mails(3..=3));
        s.move_answer = Some("NO [SERVERBUG] move failed".into());
    });
    let err = poll(&env, &config).await.expect_err("refused MOVE");
    assert!(err.contains("UID MOVE"), "{err}");
    assert!(err.contains("[SERVERBUG] move failed"), "{err}");
    server.script(|s| s.move_answer = None);
    poll(&env, &config).await.expect("MOVE taken");
    server.script(|s| assert_eq!(s.moved.get("DONE"), Some(&vec![3]), "{:?}", s.moved));
    assert_each_once(&env, 3).await;
    assert_eq!(env.pending("source_positions").await, 0);
}

/// RFC 5530 codes decide: `[LIMIT]` to AUTHENTICATE is the server's
/// condition (the cached token is kept, no refresh storm; a password
/// reader is not parked), `[AUTHENTICATIONFAILED]` refuses the token; a
/// locked folder is not a missing one, `[NONEXISTENT]` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_codes_decide_what_a_refusal_means() {
    let script = Script {
        mails: mails(1..=1),
        auth_answer: Some("NO [LIMIT] Maximum number of connections from user+IP exceeded".into()),
        ..Script::default()
    };
    let (env, server, config) = scripted(script, Some("keep")).await;
    let auths = || {
        server
            .commands()
            .iter()
            .filter(|c| c.starts_with("AUTHENTICATE"))
            .count()
    };
    // The daemon keeps its token between polls: a refused one would be
    // dropped and replaced on every attempt.
    let (cancel, daemon) = env.spawn_daemon(&config).await;
    assert!(
        wait_until(Duration::from_secs(60), || async { auths() >= 3 }).await,
        "the reader retried"
    );
    assert_eq!(env.idp.total_requests(), 1, "the cached token was kept");
    let err = env.last_error("r").await.unwrap_or_default();
    assert!(err.contains("cannot serve AUTHENTICATE right now"), "{err}");
    assert!(
        err.contains("[LIMIT] Maximum number of connections"),
        "{err}"
    );
    assert!(!err.contains("refused the access token"), "{err}");
    assert_readable(&err);
    assert_eq!(env.state("r").await, "retrying");

    server.script(|s| s.auth_answer = Some("NO [AUTHENTICATIONFAILED] Invalid credentials".into()));
    assert!(
        wait_until(Duration::from_secs(60), || async {
            env.idp.total_requests() > 1
        })
        .await,
        "a refused token is replaced"
    );
    env.stop_daemon(cancel, daemon).await;
    let err = env.last_error("r").await.unwrap_or_default();
    assert!(err.contains("refused the access token"), "{err}");
    assert!(
        err.contains("[AUTHENTICATIONFAILED] Invalid credentials"),
        "{err}"
    );

    server.script(|s| {
        s.auth_answer = None;
        s.select_answer = Some("NO Mailbox is locked".into());
    });
    let err = poll(&env, &config).await.expect_err("locked");
    assert!(err.contains("cannot serve SELECT right now"), "{err}");
    assert!(!err.contains("does not exist"), "{err}");
    assert_eq!(env.state("r").await, "retrying");

    server
        .script(|s| s.select_answer = Some("NO [NONEXISTENT] Mailbox doesn't exist: INBOX".into()));
    let err = poll(&env, &config).await.expect_err("missing folder");
    assert!(err.starts_with("folder \"INBOX\" does not exist"), "{err}");

    server.script(|s| s.select_answer = Some("NO Folder is not available".into()));
    let err = poll(&env, &config).await.expect_err("refused folder");
    assert!(
        err.starts_with("the server refused to open folder \"INBOX\""),
        "{err}"
    );

    // A password reader: [LIMIT] retries, it does not park.
    server.script(|s| {
        s.select_answer = None;
        s.auth_answer = Some("NO [LIMIT] Too many connections".into());
    });
    let reader = env.with_plain_auth(env.reader("r").plaintext(server.port()));
    let config = env.config(&[reader]);
    let err = poll(&env, &config).await.expect_err("LIMIT");
    assert!(err.contains("[LIMIT] Too many connections"), "{err}");
    assert_eq!(env.state("r").await, "retrying");
    server.script(|s| s.auth_answer = None);
    poll(&env, &config).await.expect("recovered");
    assert_each_once(&env, 1).await;
}

/// A server that echoes the credential, whole and cut short, in its NO to
/// AUTHENTICATE and in a BYE: no 16 characters of it reach the log, the
/// output, last_error, the history or anywhere in the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_echoed_by_the_server_go_nowhere() {
    let script = Script {
        mails: mails(1..=1),
        auth_answer: Some(
            "NO [AUTHENTICATIONFAILED] you sent {blob} with token {token} ({token20}... {blob30}... {tokenmid})"
                .into(),
        ),
        ..Script::default()
    };
    let (env, server, _) = scripted(script, Some("keep")).await;
    let reader = env.reader("r").plaintext(server.port());
    let mut plain = env.with_plain_auth(env.reader("p").plaintext(server.port()));
    plain.name = "p".into();
    let path = env.write_config(&[reader, plain]);
    let mut output = Vec::new();
    for round in 0..2 {
        if round == 1 {
            server.script(|s| {
                s.auth_answer = None;
                s.fetch_bye = Some("closing: {token20} {blob30} {tokenmid} ({token})".into());
            });
        }
        let out = std::process::Command::new(binary())
            .args(["-c", path.to_str().expect("utf-8"), "run", "--once"])
            .env("RUST_LOG", "debug")
            .output()
            .expect("run");
        output.extend_from_slice(&out.stdout);
        output.extend_from_slice(&out.stderr);
    }
    let text = String::from_utf8_lossy(&output).into_owned();
    let last_error = env.last_error("r").await.unwrap_or_default();
    assert!(
        last_error.contains("closed the connection during UID FETCH"),
        "{last_error}"
    );
    assert!(last_error.contains("[redacted]"), "{last_error}");
    assert_readable(&last_error);
    let history: String = env
        .reader_events("r")
        .await
        .into_iter()
        .chain(env.reader_events("p").await)
        .map(|e| e.message + "\n")
        .collect();
    assert!(
        history.contains("[redacted]"),
        "the echoes were there: {history}"
    );
    let credentials = server.credentials();
    assert!(credentials.len() >= 4, "{credentials:?}");
    let database = env.database_bytes();
    for secret in credentials.iter().filter(|c| c.len() >= 16) {
        for start in 0..=secret.len() - 16 {
            let Some(piece) = secret.get(start..start + 16) else {
                continue;
            };
            for (place, haystack) in [
                ("output", text.as_bytes()),
                ("history", history.as_bytes()),
                ("last_error", last_error.as_bytes()),
                ("database", &database[..]),
            ] {
                assert!(
                    !haystack.windows(16).any(|w| w == piece.as_bytes()),
                    "16 characters of a credential reached the {place}"
                );
            }
        }
    }
}
