//! Faults to survive (issue 14), end to end through the binary: `mail2ticket
//! run` as a child process, with mail arriving throughout, against a mail
//! server that goes away, a link that is cut or stalls, an identity endpoint
//! that fails or is slow, and a database another process locks.
//!
//! After each fault every test checks the same four things: every mail is
//! exactly one email row (nothing lost, nothing duplicated), the reader's
//! `last_error` named the fault in an admin's words while it lasted (sampled
//! from the database as `status` would read it), the reader recovered by
//! itself (state ok, `last_error` cleared), and the token endpoint saw no
//! storm (a bound derived from the backoff schedule, stated at each test).
//!
//! Sizes and durations are the scaled down so that the whole file
//! stays within a few minutes in a debug build on a busy two-core machine;
//! each test says what it scaled and why. Time limits are correctness bounds
//! (how long the backoff schedule may make a reader wait), never speed tests.

use mail2ticket_testkit as common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::proxy::{Proxy, Throttle};
use common::setup::{DaemonProcess, Env, ReaderSpec, USER, free_port, http_get, wait_until};
use common::{mail, message_id};
use tokio::task::block_in_place;

const SECOND: &str = "second@test.example";

/// What one reader's row said at one moment.
#[derive(Debug, Clone)]
struct Sample {
    state: String,
    last_error: Option<String>,
}

/// Mail arriving in one mailbox, as an MTA puts it there (also while the
/// server is down).
struct Traffic {
    user: &'static str,
    /// Index of the next mail: mailboxes get disjoint ranges, so every mail
    /// has its own Message-ID.
    next: usize,
    delivered: Vec<usize>,
}

impl Traffic {
    fn new(user: &'static str, first: usize) -> Traffic {
        Traffic {
            user,
            next: first,
            delivered: Vec::new(),
        }
    }

    /// Delivers the next `n` mails.
    fn deliver(&mut self, env: &Env, n: usize) {
        let range = self.next..self.next + n;
        env.dovecot.deliver_many(self.user, range.clone().map(mail));
        self.delivered.extend(range);
        self.next += n;
    }

    /// The Message-IDs delivered, without angle brackets.
    fn message_ids(&self) -> BTreeSet<String> {
        self.delivered
            .iter()
            .map(|&i| bare(&message_id(i)))
            .collect()
    }
}

fn bare(message_id: &str) -> String {
    message_id.trim().trim_matches(['<', '>']).to_owned()
}

/// The reader's row now; ("unregistered", None) before it exists.
async fn sample(env: &Env, reader: &str) -> Sample {
    let pool = env.db().await;
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, last_error FROM readers WHERE name = ?")
            .bind(reader)
            .fetch_optional(&pool)
            .await
            .expect("query readers");
    pool.close().await;
    let (state, last_error) = row.unwrap_or_else(|| ("unregistered".into(), None));
    Sample { state, last_error }
}

/// Every `last_error` seen in `samples`, once each, in order.
fn errors_seen(samples: &[Sample]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for e in samples.iter().filter_map(|s| s.last_error.clone()) {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    seen
}

/// Text written for people, not a Rust value dumped: the issue saw
/// `code: None, info: Some(...)` and `Outcome { ... }` in last_error.
fn assert_admin_words(text: &str) {
    for debug in [
        "Some(", "None", "Ok(", "Err(", " { ", "Os {", "kind: ", "Custom {",
    ] {
        assert!(
            !text.contains(debug),
            "last_error carries Rust debug output ({debug:?}): {text}"
        );
    }
    assert!(
        !text.chars().any(char::is_control),
        "control characters in last_error: {text:?}"
    );
}

/// Waits until the emails table holds exactly the Message-IDs in `want`
/// (no more, no fewer), then checks that each is there once and is one
/// ticket. `limit` bounds how long the backoff schedule may delay recovery.
async fn assert_exactly_these(
    env: &Env,
    want: &BTreeSet<String>,
    limit: Duration,
    daemon: &DaemonProcess,
) {
    let n = want.len() as i64;
    let complete = wait_until(limit, || async {
        env.count("SELECT COUNT(DISTINCT dedup_key) FROM emails")
            .await
            >= n
    })
    .await;
    let keys: Vec<(Option<String>,)> = sqlx::query_as("SELECT message_id FROM emails")
        .fetch_all(&env.db().await)
        .await
        .expect("emails");
    let got: BTreeSet<String> = keys
        .iter()
        .map(|(k,)| bare(k.as_deref().unwrap_or("(none)")))
        .collect();
    let missing: Vec<&String> = want.difference(&got).take(10).collect();
    let extra: Vec<&String> = got.difference(want).take(10).collect();
    assert!(
        complete && missing.is_empty(),
        "{} of {n} mails never became tickets within {limit:?} (first: {missing:?})\n{}",
        want.difference(&got).count(),
        daemon.stderr_tail(30)
    );
    assert!(extra.is_empty(), "mails nobody delivered: {extra:?}");
    env.assert_exactly_once(want.len()).await;
}

/// The reader is back to normal by itself: state ok and no last_error.
async fn assert_recovered(env: &Env, reader: &str, daemon: &DaemonProcess) {
    let ok = wait_until(Duration::from_secs(30), || async {
        let s = sample(env, reader).await;
        s.state == "ok" && s.last_error.is_none()
    })
    .await;
    assert!(
        ok,
        "{reader} did not recover by itself: {:?}\n{}",
        sample(env, reader).await,
        daemon.stderr_tail(30)
    );
}

/// Most token requests a reader may make over `window` of failing polls
/// with a one-second poll interval. The backoff after the k-th failure in a
/// row is at least half of 2^(k-1) s (`scheduler::backoff`: doubling from
/// the poll interval, jittered into its upper half), so k failing polls
/// take at least 0.5 * (2^(k-1) - 1) s: within `window` there are at most
/// 1 + log2(2 * window + 1) of them. Each asks the token endpoint at most
/// once; one more for the request that succeeds at recovery.
fn storm_bound(window: Duration) -> usize {
    let failures = 1.0 + (2.0 * window.as_secs_f64() + 1.0).log2();
    failures.floor() as usize + 1
}

fn spawn(env: &Env, readers: &[ReaderSpec]) -> (std::path::PathBuf, DaemonProcess) {
    let config = env.write_config(readers);
    let daemon = env.spawn_service(&config, &[]);
    (config, daemon)
}

/// a. Dovecot stops mid-ingest of a large folder and comes back.
///
/// The 20,000 mails and one minute scaled to 5,000 and 20 s: 5,000
/// small mails take a debug build on a shared two-core machine well under
/// a minute to ingest, enough for the stop to land mid-ingest with most of
/// the folder still to do, and 20 s of refused connections is five or six
/// failed polls in a row, which is what the outage has to exercise (the
/// backoff then waits up to 32 s, the longest this test waits for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_stopped_mid_ingest_loses_and_duplicates_nothing() {
    const BACKLOG: usize = 5_000;
    let mut env = Env::start();
    env.init_store().await;
    let mut traffic = Traffic::new(USER, 0);
    traffic.deliver(&env, BACKLOG);
    let mut reader = env.reader("helpdesk");
    reader.batch_size = Some(50);
    let (_config, daemon) = spawn(&env, &[reader]);

    // Mid-ingest: some tickets, most of the folder still to do.
    let started = wait_until(Duration::from_secs(120), || async {
        env.count("SELECT COUNT(*) FROM emails").await >= 500
    })
    .await;
    assert!(started, "ingest did not start\n{}", daemon.stderr_tail(30));
    let before_stop = env.count("SELECT COUNT(*) FROM emails").await;
    assert!(
        (before_stop as usize) < BACKLOG,
        "the whole folder was in before the stop: make the backlog larger"
    );

    let port = env.dovecot.imaps_port();
    block_in_place(|| env.dovecot.stop());
    let down = Instant::now();
    let mut samples = Vec::new();
    while down.elapsed() < Duration::from_secs(20) {
        traffic.deliver(&env, 2);
        samples.push(sample(&env, "helpdesk").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused = format!("connection refused: 127.0.0.1:{port}");
    let seen = errors_seen(&samples);
    assert!(
        seen.iter().any(|e| e.contains(&refused)),
        "while Dovecot was down, last_error never said {refused:?}: {seen:?}"
    );
    for e in &seen {
        assert_admin_words(e);
    }
    assert!(
        samples.iter().any(|s| s.state == "retrying"),
        "never retrying: {samples:?}"
    );
    block_in_place(|| env.dovecot.restart());
    traffic.deliver(&env, 10);
    let want = traffic.message_ids();
    assert_exactly_these(&env, &want, Duration::from_secs(180), &daemon).await;
    assert_recovered(&env, "helpdesk", &daemon).await;
    // One sign-in for the whole test: the access token lives an hour, and
    // a refused or cut connection is no reason to drop it (a storm would be
    // one request per failed poll or more).
    assert!(
        env.idp.total_requests() <= 1,
        "{} token requests for one mailbox whose token never expired",
        env.idp.total_requests()
    );
}

/// b. A flaky link: ten connections in a row are cut after a random number
/// of the server's bytes, while mail arrives.
///
/// The reader connects once per poll, so for every connection to be cut
/// the test keeps about 80 small mails (about 90 KiB) waiting, more than
/// any cut lets through; each cut comes after 20..48 KiB, and the login,
/// SEARCH and sizes of up to 120 mails take under 8 KiB, so every
/// connection commits at least one batch of 5 mails (about 6 KiB) before
/// it is cut. Mail is moving, so the backoff must not grow as after ten
/// dead connections in a row (about 8.5 minutes in all); the limit below
/// allows each cut its first retry delay (at most 1 s) and then plenty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_ten_times_running_loses_and_duplicates_nothing() {
    let env = Env::start();
    env.init_store().await;
    let mut traffic = Traffic::new(USER, 0);
    traffic.deliver(&env, 80);
    let proxy = Proxy::start(env.dovecot.imap_port());
    let budgets: Vec<usize> = (0..10)
        .map(|_| (20 << 10) + rand::random::<u32>() as usize % (28 << 10))
        .collect();
    proxy.cut_after(&budgets);
    let mut reader = env.reader("flaky").plaintext(proxy.port());
    reader.batch_size = Some(5);
    let (_config, daemon) = spawn(&env, &[reader]);

    let start = Instant::now();
    let mut samples = Vec::new();
    while proxy.cuts_done() < budgets.len() && start.elapsed() < Duration::from_secs(150) {
        let waiting =
            traffic.delivered.len() as i64 - env.count("SELECT COUNT(*) FROM emails").await;
        traffic.deliver(&env, (80 - waiting).max(0) as usize);
        samples.push(sample(&env, "flaky").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        proxy.cuts_done(),
        budgets.len(),
        "not every cut happened within 150 s ({} connections, {} of {} mails in): \
         the reader stopped trying while mail was moving; last_errors: {:?}\n{}",
        proxy.connections(),
        env.count("SELECT COUNT(*) FROM emails").await,
        traffic.delivered.len(),
        errors_seen(&samples),
        daemon.stderr_tail(30)
    );
    let seen = errors_seen(&samples);
    assert!(
        seen.iter().any(|e| e.to_lowercase().contains("connection")),
        "while the link was being cut, last_error never named the lost connection: {seen:?}"
    );
    for e in &seen {
        assert_admin_words(e);
    }
    traffic.deliver(&env, 10);
    let want = traffic.message_ids();
    assert_exactly_these(&env, &want, Duration::from_secs(60), &daemon).await;
    assert_recovered(&env, "flaky", &daemon).await;
    // A cut connection says nothing about the token: one sign-in in all.
    assert!(
        env.idp.total_requests() <= 1,
        "{} token requests for a link fault",
        env.idp.total_requests()
    );
}

/// c. A connection that stalls mid-FETCH (still open, nothing more comes):
/// that reader gives up after its own `timeout` and says so, while another
/// reader on a direct connection keeps ingesting as if nothing happened.
///
/// The stall lasts 15 s: five timeouts of 3 s, enough for the stalled
/// reader to fail repeatedly while the other ingests ~240 mails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fetch_times_out_and_other_readers_are_unaffected() {
    let env = Env::start();
    env.add_mailbox(SECOND);
    env.init_store().await;
    let mut stalled_mail = Traffic::new(USER, 0);
    let mut direct_mail = Traffic::new(SECOND, 1_000_000);
    stalled_mail.deliver(&env, 200);
    let proxy = Proxy::start(env.dovecot.imap_port());
    // 32 KiB of the server's answers, then nothing: past the login, well
    // into the FETCH of 200 mails (about 220 KiB).
    proxy.throttle(Some(Throttle {
        chunk: 16 << 10,
        pause: Duration::ZERO,
        stall_after: Some(32 << 10),
    }));
    let mut stalled = env.reader("stalled").plaintext(proxy.port());
    stalled.timeout = "3s";
    stalled.batch_size = Some(20);
    let direct = env.reader_of("direct", SECOND);
    let (_config, daemon) = spawn(&env, &[stalled, direct]);

    let start = Instant::now();
    let (mut stalled_samples, mut direct_samples) = (Vec::new(), Vec::new());
    while start.elapsed() < Duration::from_secs(15) {
        stalled_mail.deliver(&env, 1);
        direct_mail.deliver(&env, 4);
        stalled_samples.push(sample(&env, "stalled").await);
        direct_samples.push(sample(&env, "direct").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Still stalled: the other reader has everything delivered so far.
    let direct_want = direct_mail.delivered.len() as i64;
    let kept_up = wait_until(Duration::from_secs(30), || async {
        env.tickets_of("direct").await == direct_want
    })
    .await;
    assert!(
        kept_up,
        "the direct reader has {} of {direct_want} tickets while the other one is stalled\n{}",
        env.tickets_of("direct").await,
        daemon.stderr_tail(30)
    );
    assert!(
        direct_samples
            .iter()
            .all(|s| s.last_error.is_none() && ["ok", "unregistered"].contains(&s.state.as_str())),
        "the direct reader was affected: {:?}",
        errors_seen(&direct_samples)
    );
    assert!(
        env.tickets_of("stalled").await < stalled_mail.delivered.len() as i64,
        "the stalled reader got everything: the stall did not hold"
    );
    let seen = errors_seen(&stalled_samples);
    assert!(
        seen.iter().any(|e| e.contains("within 3s")),
        "while stalled, last_error never said the server did not answer within the reader's 3s timeout: {seen:?}"
    );
    for e in &seen {
        assert_admin_words(e);
    }

    proxy.throttle(None);
    stalled_mail.deliver(&env, 5);
    direct_mail.deliver(&env, 5);
    let mut want = stalled_mail.message_ids();
    want.extend(direct_mail.message_ids());
    // After ~6 timeouts in a row the next try is at most 32 s away.
    assert_exactly_these(&env, &want, Duration::from_secs(90), &daemon).await;
    assert_recovered(&env, "stalled", &daemon).await;
    assert_recovered(&env, "direct", &daemon).await;
    // One sign-in per mailbox: a timeout is no reason to drop a token.
    assert!(
        env.idp.total_requests() <= 2,
        "{} token requests for two mailboxes",
        env.idp.total_requests()
    );
}

/// d. The identity endpoint answers 503, then answers slower than the
/// reader's timeout, then recovers.
///
/// The two minutes of 503 scaled to 15 s: with a one-second poll
/// interval that is already five failed polls in a row (delays 1, 2, 4,
/// 8 s at most); two minutes would only add two more, and each makes the
/// recovery wait longer (the seventh waits up to 64 s). The slow phase
/// lasts until the reader said so, or 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_endpoint_down_then_slow_is_named_and_survived() {
    let env = Env::start();
    env.init_store().await;
    let mut traffic = Traffic::new(USER, 0);
    traffic.deliver(&env, 20);
    env.idp.set_down(true);
    let mut reader = env.reader("helpdesk");
    reader.timeout = "2s";
    let start = Instant::now();
    let (_config, daemon) = spawn(&env, &[reader]);

    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(15) {
        traffic.deliver(&env, 1);
        samples.push(sample(&env, "helpdesk").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let down = errors_seen(&samples);
    let answered_503 = format!(
        "identity endpoint {} answered HTTP 503",
        env.idp.token_url()
    );
    assert!(
        down.iter().any(|e| e.contains(&answered_503)),
        "while the endpoint answered 503, last_error never said {answered_503:?}: {down:?}"
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM emails").await,
        0,
        "mail without a token?"
    );

    // Slow: every answer comes 6 s late, three times the reader's timeout.
    env.idp.set_delay(Some(Duration::from_secs(6)));
    env.idp.set_down(false);
    let slow_start = Instant::now();
    let mut slow_samples = Vec::new();
    let says_slow = |e: &String| {
        let e = e.to_lowercase();
        e.contains("identity endpoint")
            && !e.contains("unreachable")
            && !e.contains("503")
            && (e.contains("2s") || e.contains("2 s"))
    };
    while slow_start.elapsed() < Duration::from_secs(60)
        && !errors_seen(&slow_samples).iter().any(says_slow)
    {
        traffic.deliver(&env, 1);
        slow_samples.push(sample(&env, "helpdesk").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    env.idp.set_delay(None);
    let slow = errors_seen(&slow_samples);
    for e in down.iter().chain(&slow) {
        assert_admin_words(e);
    }
    traffic.deliver(&env, 5);
    let want = traffic.message_ids();
    // The failures in a row so far may make the next try up to 64 s away.
    assert_exactly_these(&env, &want, Duration::from_secs(150), &daemon).await;
    assert_recovered(&env, "helpdesk", &daemon).await;
    let requests = env.idp.total_requests();
    let bound = storm_bound(start.elapsed());
    assert!(
        requests <= bound,
        "{requests} token requests in {:?}: more than the backoff allows ({bound})",
        start.elapsed()
    );
    // Checked last, so that the counts and the recovery above are known
    // whatever the wording.
    assert!(
        slow.iter().any(says_slow),
        "while the endpoint answered after 6 s, last_error never said it did not answer within the reader's 2s timeout (and not \"unreachable\"): {slow:?}"
    );
}

/// e. Another process holds the database's write lock for 40 s (up to
/// 70 s, until the daemon has named it).
///
/// The 30 s is exactly the daemon's SQLite busy timeout, so a
/// writer that started waiting just after the lock was taken would merely
/// wait, and nothing would fail: 40 s makes sure a store operation does
/// fail with the lock held, which is the fault to survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_loses_and_duplicates_nothing() {
    use sqlx::Connection as _;

    let env = Env::start();
    let port = free_port();
    env.set_daemon_extra(&format!("listen = \"127.0.0.1:{port}\"\n"));
    env.init_store().await;
    let mut traffic = Traffic::new(USER, 0);
    traffic.deliver(&env, 20);
    let (_config, daemon) = spawn(&env, &[env.reader("helpdesk")]);
    assert!(
        env.wait_for_tickets(20, Duration::from_secs(60)).await,
        "{}",
        daemon.stderr_tail(30)
    );

    let mut lock = env.lock_database().await;
    let locked = Instant::now();
    let log_before = daemon.stderr().len();
    let mut unhealthy = false;
    // At least 40 s; longer (up to 70 s) while nothing has named the lock
    // yet: a poll that began waiting for the lock only some seconds after
    // it was taken fails its busy timeout of 30 s that much later.
    let named_yet = || {
        let log = daemon.stderr();
        log.get(log_before..)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("database is locked"))
    };
    while locked.elapsed() < Duration::from_secs(40)
        || (locked.elapsed() < Duration::from_secs(70) && !named_yet())
    {
        traffic.deliver(&env, 1);
        if !unhealthy {
            unhealthy = http_get(port, "/healthz")
                .await
                .is_ok_and(|(code, _)| code == 503);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // While locked: the log names it (the reader row cannot be written
    // until the lock is gone, so that is where an admin sees it now).
    let log = daemon.stderr();
    let during = &log[log_before.min(log.len())..];
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("unlock the database");
    lock.close().await.expect("close");
    let named: Vec<&str> = during
        .lines()
        .filter(|l| l.contains("database is locked"))
        .collect();
    assert!(
        !named.is_empty(),
        "nothing in the log named the locked database while it was locked:\n{}",
        &during[during.len().saturating_sub(3000)..]
    );
    assert!(
        unhealthy,
        "/healthz never said 503 while no write could succeed"
    );

    traffic.deliver(&env, 5);
    let want = traffic.message_ids();
    assert_exactly_these(&env, &want, Duration::from_secs(120), &daemon).await;
    assert_recovered(&env, "helpdesk", &daemon).await;
    // The database has nothing to do with the token: one sign-in in all.
    assert!(
        env.idp.total_requests() <= 1,
        "{} token requests for a database fault",
        env.idp.total_requests()
    );
}
