//! Backoff and progress: a poll that committed mail before its connection
//! failed is not stuck, so it does not grow the backoff; only polls that
//! got nothing done do.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::proxy::Throttle;
use common::setup::{Env, USER, wait_until};
use common::{Proxy, mail_of_size};

/// The daemon's log without terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `poll failed` lines of the log.
fn failures(log: &str) -> Vec<String> {
    plain(log)
        .lines()
        .filter(|l| l.contains("poll failed"))
        .map(str::to_owned)
        .collect()
}

/// A link that stalls after some mails, round after round (as a flaky
/// link cuts a big ingest): each failed poll committed mail, so each is the
/// first failure of a run and the next try comes after the shortest delay;
/// before, the backoff doubled each time although mail kept moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_committed_mail_before_failing_does_not_grow_the_backoff() {
    const MAILS: usize = 12;
    const SIZE: usize = 16 << 10;
    let env = Env::start();
    env.dovecot
        .deliver_many(USER, (0..MAILS).map(|i| mail_of_size(i, SIZE)));
    let proxy = Proxy::start(env.dovecot.imap_port());
    let mut reader = env.reader("helpdesk").plaintext(proxy.port());
    reader.timeout = "2s";
    reader.batch_size = Some(1);
    let config = env.write_config(&[reader]);
    env.init_store().await;

    // About three mails' worth per round, then the link stalls.
    let budget = Throttle {
        chunk: 64 << 10,
        pause: Duration::ZERO,
        stall_after: Some(3 * SIZE + (4 << 10)),
    };
    proxy.throttle(Some(budget));
    let daemon = env.spawn_service(&config, &[]);
    let mut rounds = 0;
    let mut tickets = 0;
    while tickets < MAILS as i64 && rounds < 10 {
        let seen = failures(&daemon.stderr()).len();
        let failed = wait_until(Duration::from_secs(60), || async {
            failures(&daemon.stderr()).len() > seen
                || env.count("SELECT COUNT(*) FROM tickets").await == MAILS as i64
        })
        .await;
        assert!(
            failed,
            "no progress and no failure\n{}",
            daemon.stderr_tail(30)
        );
        tickets = env.count("SELECT COUNT(*) FROM tickets").await;
        // A fresh budget for the next connection.
        proxy.throttle(Some(budget));
        rounds += 1;
    }
    assert_eq!(
        tickets,
        MAILS as i64,
        "all mail arrives over the flaky link\n{}",
        daemon.stderr_tail(30)
    );
    let lines = failures(&daemon.stderr());
    let moved: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("progressed=true"))
        .collect();
    assert!(
        moved.len() >= 2,
        "the link should have failed mid-ingest at least twice: {lines:#?}"
    );
    for line in &moved {
        assert!(
            line.contains(" failures=1 "),
            "a poll that committed mail grew the backoff: {line}"
        );
    }
    env.assert_exactly_once(MAILS).await;
}
