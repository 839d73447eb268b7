//! Running mail2ticket as a service: SIGHUP and file-watch reloads, the
//! HTTP endpoints (`/healthz`, `/readyz`, `/metrics`), the systemd notify
//! protocol and its watchdog, SIGTERM mid-batch, JSON logs, and each
//! reader's history (`reader_events`, `status --reader`, `status --json`,
//! `health`).
//!
//! Every test drives the real binary against a real Dovecot, the IdP
//! stand-in and a real SQLite file, and talks to it the way systemd, a
//! load balancer, Prometheus or an admin would: signals, a notify socket,
//! HTTP, the database and the command line.

use mail2ticket_testkit as common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::metrics::{Metrics, scrape, scrape_openmetrics, wait_for_metrics};
use common::proxy::is_command;
use common::setup::{
    DaemonProcess, Env, PASSWORD, ReaderSpec, USER, assert_no_secret_in, free_port, health_binary,
    http_get, run_binary, run_once_binary, status_binary, status_json, status_reader,
    wait_for_http_status, wait_until,
};
use common::{NotifySocket, Proxy, mail, message_id};
use serde_json::Value;
use tokio::task::block_in_place;

/// Bound for anything that should happen within a poll or two.
const WAIT: Duration = Duration::from_secs(30);

const POLLS: &str = "mail2ticket_polls_total";
const FAILURES: &str = "mail2ticket_poll_failures_total";
const TICKETS: &str = "mail2ticket_tickets_created_total";
const INGESTED: &str = "mail2ticket_emails_ingested_total";
const IGNORED: &str = "mail2ticket_emails_ignored_total";
const TOKEN_REFRESHES: &str = "mail2ticket_token_refreshes_total";
const LAST_SUCCESS: &str = "mail2ticket_last_success_timestamp_seconds";
const STATE: &str = "mail2ticket_reader_state";
const RELOADS: &str = "mail2ticket_config_reloads_total";
const STATES: [&str; 4] = ["ok", "retrying", "needs_authorization", "misconfigured"];

/// `listen = "127.0.0.1:PORT"` on a free port; returns the TOML line and
/// the port.
fn listen_line() -> (String, u16) {
    let port = free_port();
    (format!("listen = \"127.0.0.1:{port}\"\n"), port)
}

/// Starts the daemon with a notify socket (plus `envs`) and waits for
/// READY=1, after which it handles SIGHUP and SIGTERM.
async fn start_ready(
    env: &Env,
    config: &std::path::Path,
    envs: &[(&str, &str)],
) -> (DaemonProcess, NotifySocket) {
    let notify = NotifySocket::bind();
    let socket = notify.path().to_str().expect("utf-8 path").to_owned();
    let mut all = vec![("NOTIFY_SOCKET", socket.as_str())];
    all.extend_from_slice(envs);
    let since = Instant::now();
    let mut daemon = env.spawn_service(config, &all);
    let deadline = since + WAIT;
    loop {
        if notify.times_of("READY", "1").iter().any(|t| *t >= since) {
            return (daemon, notify);
        }
        if !daemon.is_running() || Instant::now() >= deadline {
            panic!(
                "no READY=1 (daemon running: {})\n{}\n{}",
                daemon.is_running(),
                notify.transcript(),
                daemon.stderr_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether [`mail`]`(i)` is stored (found by its Message-ID, with or
/// without angle brackets).
async fn ingested(env: &Env, i: usize) -> bool {
    let id = message_id(i);
    let bare = id.trim_start_matches('<').trim_end_matches('>');
    env.count(&format!(
        "SELECT COUNT(*) FROM emails WHERE message_id IN ('{id}', '{bare}')"
    ))
    .await
        > 0
}

async fn wait_ingested(env: &Env, i: usize, limit: Duration) -> bool {
    wait_until(limit, || ingested(env, i)).await
}

/// AUTHENTICATE commands a proxy has seen (one per IMAP login).
fn logins(proxy: &Proxy) -> usize {
    proxy
        .client_lines()
        .iter()
        .filter(|l| is_command(l, "AUTHENTICATE"))
        .count()
}

/// Waits until the last command through `proxy` is IDLE: the reader
/// behind it is idling, so new mail reaches it as an IDLE notification.
/// (Mail that arrives between a poll and the IDLE command is a different
/// matter, not what the reload tests are about.)
async fn wait_idling(proxy: &Proxy) -> bool {
    wait_until(WAIT, || async {
        proxy
            .client_lines()
            .last()
            .is_some_and(|l| is_command(l, "IDLE"))
    })
    .await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Waits for `metrics` to satisfy `cond`; panics with `what` and the last
/// scrape otherwise. Returns the scrape that satisfied it.
async fn metrics_until(port: u16, what: &str, cond: impl FnMut(&Metrics) -> bool) -> Metrics {
    let (held, last) = wait_for_metrics(port, WAIT, cond).await;
    match (held, last) {
        (true, Some(m)) => m,
        (_, Some(m)) => panic!("{what}: not within {WAIT:?}; last /metrics:\n{}", m.text),
        (_, None) => panic!("{what}: /metrics never answered 200"),
    }
}

/// SIGHUP: a reader added starts, a removed one stops, a changed one
/// restarts with its new setting, and an untouched IDLE reader keeps its
/// one connection (no new connection or login through its proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_added_removed_and_changed_readers_and_keeps_the_rest_connected() {
    const A: &str = "alpha@test.example";
    const B: &str = "bravo@test.example";
    const C: &str = "charlie@test.example";
    const D: &str = "delta@test.example";
    let env = Env::start();
    for user in [A, B, C, D] {
        env.add_mailbox(user);
    }
    env.dovecot.create_folder(A, "Queue");
    let (listen, port) = listen_line();
    env.set_daemon_extra(&listen);
    let proxy = Proxy::start(env.dovecot.imap_port());
    let reader_a = env.reader_of("A", A);
    // An hour between polls: B only hears of new mail through IDLE.
    let reader_b = ReaderSpec {
        idle: true,
        poll_interval: "1h",
        ..env.reader_of("B", B).plaintext(proxy.port())
    };
    env.dovecot.deliver(A, &mail(100));
    env.dovecot.deliver(B, &mail(200));
    env.dovecot.deliver(C, &mail(300));
    let config = env.write_config(&[reader_a.clone(), reader_b.clone(), env.reader_of("C", C)]);
    env.init_store().await;
    let (mut daemon, _notify) = start_ready(&env, &config, &[]).await;
    assert!(
        env.wait_for_tickets(3, WAIT).await,
        "A, B and C ingested their mail\n{}",
        daemon.stderr_tail(40)
    );
    assert!(wait_idling(&proxy).await, "B idles");
    env.dovecot.deliver(B, &mail(201));
    assert!(
        wait_ingested(&env, 201, WAIT).await,
        "B ingests through IDLE"
    );

    // A reads INBOX only, so far.
    env.dovecot.deliver_to(A, "Queue", &mail(101));
    assert!(env.wait_for_polls("A", 2, WAIT).await, "A polls");
    assert!(!ingested(&env, 101).await, "A read Queue before the reload");

    let b_connections = proxy.connections();
    let b_logins = logins(&proxy);
    assert!(
        b_connections >= 1 && b_logins >= 1,
        "B goes through the proxy"
    );

    // A reads Queue now, C is gone, D is new, B is untouched.
    let reader_a = ReaderSpec {
        folder: "Queue".into(),
        ..reader_a
    };
    env.write_config(&[reader_a, reader_b, env.reader_of("D", D)]);
    daemon.hangup();
    assert!(
        wait_until(WAIT, || async { env.state("D").await != "unregistered" }).await,
        "D was registered after SIGHUP\n{}",
        daemon.stderr_tail(40)
    );
    let m = metrics_until(port, "one successful reload, C's series gone", |m| {
        m.sum(RELOADS, &[("result", "ok")]) == 1.0 && !m.any_label("reader", "C")
    })
    .await;
    assert_eq!(m.sum(RELOADS, &[("result", "error")]), 0.0);

    // C stops: it starts no poll while A polls three times.
    assert!(
        env.wait_for_polls("A", 1, WAIT).await,
        "A polls after the reload"
    );
    let c_last_poll = env.last_poll_at("C").await;
    assert!(env.wait_for_polls("A", 3, WAIT).await, "A polls");
    assert_eq!(
        env.last_poll_at("C").await,
        c_last_poll,
        "C still polls after it was removed"
    );

    env.dovecot.deliver(C, &mail(301));
    env.dovecot.deliver(A, &mail(102)); // INBOX, which A no longer reads
    env.dovecot.deliver(D, &mail(400));
    assert!(wait_idling(&proxy).await, "B idles after the reload");
    env.dovecot.deliver(B, &mail(202));
    for (i, what) in [
        (101, "A reads its new folder"),
        (400, "D, added by the reload, ingests"),
        (202, "B still ingests after the reload"),
    ] {
        assert!(
            wait_ingested(&env, i, WAIT).await,
            "{what}\n{}",
            daemon.stderr_tail(40)
        );
    }
    assert!(env.wait_for_polls("A", 2, WAIT).await, "A polls");
    assert!(
        !ingested(&env, 301).await,
        "C's mail became a ticket after C was removed"
    );
    assert!(
        !ingested(&env, 102).await,
        "A still reads INBOX after the reload"
    );
    assert_eq!(env.tickets_of("C").await, 1);
    assert_eq!(
        env.dovecot.seen_count(C, "INBOX"),
        1,
        "C's new mail untouched"
    );
    assert_eq!(
        env.dovecot.seen_count(A, "INBOX"),
        1,
        "only mail 100 in A's INBOX"
    );
    env.assert_exactly_once(7).await;

    assert_eq!(
        proxy.connections(),
        b_connections,
        "B (untouched) opened a new connection across the reload"
    );
    assert_eq!(
        logins(&proxy),
        b_logins,
        "B (untouched) logged in again across the reload"
    );

    let m = scrape(port).await;
    assert!(
        !m.any_label("reader", "C"),
        "C's series are back:\n{}",
        m.text
    );
    assert!(m.sum(POLLS, &[("reader", "D")]) >= 1.0, "{}", m.text);
    assert!(daemon.is_running());
}

/// A config that does not load is refused on SIGHUP: the old one keeps
/// running, `status` (text and JSON), the metrics, the notify STATUS and
/// the log say so, naming file and line; a valid one clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_on_sighup_keeps_the_old_one_until_a_valid_one_arrives() {
    const LATE: &str = "late@test.example";
    let env = Env::start();
    env.add_mailbox(LATE);
    let (listen, port) = listen_line();
    env.set_daemon_extra(&listen);
    let helpdesk = env.reader("helpdesk");
    env.dovecot.deliver(USER, &mail(0));
    let config = env.write_config(std::slice::from_ref(&helpdesk));
    // `status` loads its config file too; while the daemon's is broken,
    // ask through a valid copy naming the same database.
    let status_config = env.path("status.toml");
    std::fs::copy(&config, &status_config).expect("copy config");
    env.init_store().await;
    let (mut daemon, notify) = start_ready(&env, &config, &[]).await;
    assert!(
        env.wait_for_tickets(1, WAIT).await,
        "{}",
        daemon.stderr_tail(40)
    );

    // A new reader, and an unknown key in it.
    let late = ReaderSpec {
        extra: "colour = \"blue\"\n".into(),
        ..env.reader_of("late", LATE)
    };
    let broken = env.config_toml(&[helpdesk.clone(), late]);
    let line = 1 + broken
        .lines()
        .position(|l| l.starts_with("colour"))
        .expect("the bad line");
    std::fs::write(&config, &broken).expect("write config");
    let at = format!("{}:{line}", config.display());
    let hup = Instant::now();
    daemon.hangup();

    let reload_error = || status_json(&status_config, None)["daemon"]["reload_error"].clone();
    assert!(
        wait_until(WAIT, || async {
            block_in_place(|| !reload_error().is_null())
        })
        .await,
        "status --json shows no reload_error\n{}",
        daemon.stderr_tail(40)
    );
    let error = block_in_place(reload_error);
    let error = error.as_str().expect("reload_error is a string");
    assert!(error.contains(&at), "reload_error names {at}: {error}");
    let (code, text, stderr) = block_in_place(|| status_binary(&status_config, &[]));
    assert_eq!(code, Some(0), "{text}{stderr}");
    assert!(
        text.contains("reload failed") && text.contains(&at),
        "status shows the failed reload at {at}:\n{text}"
    );
    let m = metrics_until(port, "one failed reload counted", |m| {
        m.sum(RELOADS, &[("result", "error")]) == 1.0
    })
    .await;
    assert_eq!(m.sum(RELOADS, &[("result", "ok")]), 0.0, "{}", m.text);
    assert!(
        notify
            .wait_for("STATUS", hup, WAIT, |v| v.to_lowercase().contains("reload"))
            .await
            .is_some(),
        "STATUS= does not mention the failed reload:\n{}",
        notify.transcript()
    );
    assert!(
        daemon
            .stderr()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains(&at)),
        "no error logged naming {at}\n{}",
        daemon.stderr_tail(40)
    );
    // A service's stderr is a file or journald, not a terminal: no colour
    // escape sequences in it.
    assert!(
        !daemon.stderr().contains('\u{1b}'),
        "escape sequences in a service's log:\n{}",
        daemon.stderr_tail(10)
    );

    // The old config runs on; nothing of the new one was applied.
    env.dovecot.deliver(USER, &mail(1));
    env.dovecot.deliver(LATE, &mail(50));
    assert!(wait_ingested(&env, 1, WAIT).await, "the old reader goes on");
    assert_eq!(env.state("late").await, "unregistered");
    assert!(!ingested(&env, 50).await);
    assert!(daemon.is_running());

    env.write_config(&[helpdesk, env.reader_of("late", LATE)]);
    daemon.hangup();
    assert!(
        wait_until(WAIT, || async {
            block_in_place(|| reload_error().is_null())
        })
        .await,
        "a valid reload clears reload_error\n{}",
        daemon.stderr_tail(40)
    );
    assert!(
        wait_ingested(&env, 50, WAIT).await,
        "the reader added by the valid config ingests"
    );
    let (_, text, _) = block_in_place(|| status_binary(&config, &[]));
    assert!(!text.contains("reload failed"), "{text}");
    let m = metrics_until(port, "one successful reload counted", |m| {
        m.sum(RELOADS, &[("result", "ok")]) == 1.0
    })
    .await;
    assert_eq!(m.sum(RELOADS, &[("result", "error")]), 1.0, "{}", m.text);
}

/// `watch_config = true`: an edited config file is applied without any
/// signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_applies_an_edited_file_without_a_signal() {
    const ADDED: &str = "added@test.example";
    let env = Env::start();
    env.add_mailbox(ADDED);
    env.set_daemon_extra("watch_config = true");
    let helpdesk = env.reader("helpdesk");
    env.dovecot.deliver(USER, &mail(0));
    let config = env.write_config(std::slice::from_ref(&helpdesk));
    env.init_store().await;
    let mut daemon = env.spawn_service(&config, &[]);
    assert!(
        env.wait_for_tickets(1, WAIT).await,
        "{}",
        daemon.stderr_tail(40)
    );

    env.dovecot.deliver(ADDED, &mail(60));
    env.write_config_atomically(&[helpdesk, env.reader_of("added", ADDED)]);
    assert!(
        wait_ingested(&env, 60, WAIT).await,
        "the reader added to the file was not started\n{}",
        daemon.stderr_tail(40)
    );
    env.dovecot.deliver(USER, &mail(1));
    assert!(
        wait_ingested(&env, 1, WAIT).await,
        "the first reader goes on"
    );
    assert!(daemon.is_running());
}

/// `/healthz`, `/readyz` and `/metrics`: the counters follow the mail, a
/// duplicate is counted as ignored, and a stopped mail server shows as
/// connection failures and `retrying` while the daemon itself stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_metrics_follow_what_the_readers_do() {
    const N: usize = 5;
    const SECOND: &str = "second@test.example";
    let mut env = Env::start();
    env.add_mailbox(SECOND);
    let (listen, port) = listen_line();
    env.set_daemon_extra(&listen);
    env.dovecot.deliver_many(USER, (0..N).map(mail));
    let config = env.write_config(&[env.reader("helpdesk"), env.reader_of("second", SECOND)]);
    env.init_store().await;
    let started = unix_now();
    let daemon = env.spawn_service(&config, &[]);
    assert!(
        wait_for_http_status(port, "/readyz", 200, WAIT).await,
        "/readyz never 200\n{}",
        daemon.stderr_tail(40)
    );
    assert!(wait_for_http_status(port, "/healthz", 200, WAIT).await);
    assert!(env.wait_for_tickets(N as i64, WAIT).await);

    let helpdesk = [("reader", "helpdesk")];
    let n = N as f64;
    // Tickets are counted at commit, the success once the poll finished.
    let m = metrics_until(
        port,
        "tickets, emails and the poll's success counted",
        |m| {
            m.sum(TICKETS, &helpdesk) == n
                && m.sum(INGESTED, &helpdesk) == n
                && m.sum(LAST_SUCCESS, &helpdesk) > 0.0
        },
    )
    .await;
    assert_eq!(m.value(TICKETS, &helpdesk), n);
    assert_eq!(m.value(INGESTED, &helpdesk), n);
    for (name, kind) in [
        (POLLS, "counter"),
        (TICKETS, "counter"),
        (INGESTED, "counter"),
        (TOKEN_REFRESHES, "counter"),
        (LAST_SUCCESS, "gauge"),
        (STATE, "gauge"),
        ("mail2ticket_fetch_duration_seconds_count", "histogram"),
        ("mail2ticket_commit_duration_seconds_count", "histogram"),
    ] {
        assert_eq!(m.type_of(name), Some(kind), "# TYPE of {name}:\n{}", m.text);
    }
    assert!(
        m.value(LAST_SUCCESS, &helpdesk) >= started as f64,
        "last success before the start:\n{}",
        m.text
    );
    for state in STATES {
        let expected = if state == "ok" { 1.0 } else { 0.0 };
        assert_eq!(
            m.value(STATE, &[("reader", "helpdesk"), ("state", state)]),
            expected,
            "{state}"
        );
    }
    for histogram in [
        "mail2ticket_fetch_duration_seconds",
        "mail2ticket_commit_duration_seconds",
    ] {
        let count = m.value(&format!("{histogram}_count"), &helpdesk);
        assert!(count > 0.0, "{histogram}_count:\n{}", m.text);
        assert_eq!(
            m.value(
                &format!("{histogram}_bucket"),
                &[("reader", "helpdesk"), ("le", "+Inf")]
            ),
            count,
            "{histogram}: the +Inf bucket holds every observation"
        );
        assert!(m.get(&format!("{histogram}_sum"), &helpdesk).is_some());
    }
    assert!(m.value(TOKEN_REFRESHES, &helpdesk) >= 1.0, "{}", m.text);
    // What Prometheus itself asks for: OpenMetrics, the same figures.
    let open = scrape_openmetrics(port).await;
    assert_eq!(open.value(TICKETS, &helpdesk), n, "{}", open.text);
    assert_eq!(open.type_of(TICKETS), Some("counter"), "{}", open.text);
    let polls = m.value(POLLS, &helpdesk);
    assert!(polls >= 1.0);
    metrics_until(port, "more polls", |m| m.sum(POLLS, &helpdesk) > polls).await;

    // The same Message-ID once more, in the second reader's mailbox.
    env.dovecot.deliver(SECOND, &mail(0));
    let m = metrics_until(port, "a duplicate counted", |m| {
        m.sum(IGNORED, &[("reader", "second"), ("reason", "duplicate")]) >= 1.0
    })
    .await;
    assert_eq!(m.sum(TICKETS, &[("reader", "second")]), 0.0, "{}", m.text);
    env.assert_exactly_once(N).await;

    let connection_failures = [("reader", "helpdesk"), ("class", "connection")];
    let before = m.sum(FAILURES, &connection_failures);
    block_in_place(|| env.dovecot.stop());
    let m = metrics_until(port, "connection failures while Dovecot is down", |m| {
        m.sum(FAILURES, &connection_failures) > before
            && m.get(STATE, &[("reader", "helpdesk"), ("state", "retrying")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        m.value(STATE, &[("reader", "helpdesk"), ("state", "ok")]),
        0.0
    );
    // A mail server outage is not the daemon's own health.
    assert_eq!(http_get(port, "/healthz").await.map(|r| r.0), Ok(200));
    assert_eq!(http_get(port, "/readyz").await.map(|r| r.0), Ok(200));
}

/// The notify protocol and the watchdog: READY=1, a STATUS= line with the
/// reader counts and WATCHDOG=1 pings; with the database locked the
/// heartbeat cannot be written, so the pings stop, `/healthz` says 503 and
/// `health` exits 1, until the lock is gone. SIGTERM sends STOPPING=1 and
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_while_the_database_is_locked_and_resume_after() {
    use sqlx::Connection as _;

    let env = Env::start();
    let (listen, port) = listen_line();
    env.set_daemon_extra(&format!("{listen}shutdown_timeout = \"10s\"\n"));
    let config = env.write_config(&[env.reader("helpdesk"), env.pop3_reader("pop")]);
    env.init_store().await;
    let start = Instant::now();
    let (mut daemon, notify) = start_ready(&env, &config, &[("WATCHDOG_USEC", "1000000")]).await;
    assert!(
        notify
            .wait_for("STATUS", start, WAIT, |v| v.contains("2 readers"))
            .await
            .is_some(),
        "no STATUS= naming the two readers:\n{}",
        notify.transcript()
    );
    assert!(
        notify
            .wait_for("WATCHDOG", start, WAIT, |v| v == "1")
            .await
            .is_some(),
        "no WATCHDOG=1:\n{}\n{}",
        notify.transcript(),
        daemon.stderr_tail(40)
    );
    // At least every 0.5 s is due; 3 in 3 s leaves room for a busy machine.
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pings = notify
        .times_of("WATCHDOG", "1")
        .into_iter()
        .filter(|t| *t >= window)
        .count();
    assert!(pings >= 3, "{pings} WATCHDOG=1 in 3 s");
    assert!(wait_for_http_status(port, "/healthz", 200, WAIT).await);
    let (code, output) = block_in_place(|| health_binary(&config));
    assert_eq!(code, Some(0), "health while all is well: {output}");

    // Another process holds the write lock.
    let mut lock = env.lock_database().await;
    let silent = wait_until(WAIT, || async {
        notify
            .last_time_of("WATCHDOG", "1")
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3))
    })
    .await;
    assert!(
        silent,
        "WATCHDOG=1 went on although the heartbeat cannot be written"
    );
    assert!(
        wait_for_http_status(port, "/healthz", 503, Duration::from_secs(90)).await,
        "/healthz not 503 with the database locked"
    );
    let mut reason = String::new();
    let unhealthy = wait_until(Duration::from_secs(60), || {
        let (code, output) = block_in_place(|| health_binary(&config));
        reason = output;
        async move { code == Some(1) }
    })
    .await;
    assert!(
        unhealthy,
        "health did not exit 1 with the database locked: {reason}"
    );
    assert!(!reason.trim().is_empty(), "health exits 1 without a reason");
    assert!(
        daemon.is_running(),
        "a locked database is no reason to exit"
    );

    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("unlock the database");
    let unlocked = Instant::now();
    lock.close().await.expect("close");
    assert!(
        notify
            .wait_for("WATCHDOG", unlocked, WAIT, |v| v == "1")
            .await
            .is_some(),
        "WATCHDOG=1 did not resume after the lock was released\n{}",
        daemon.stderr_tail(40)
    );
    assert!(wait_for_http_status(port, "/healthz", 200, WAIT).await);
    assert!(
        wait_until(WAIT, || async {
            block_in_place(|| health_binary(&config)).0 == Some(0)
        })
        .await,
        "health did not recover"
    );

    let term = Instant::now();
    daemon.terminate();
    let exit = block_in_place(|| daemon.wait_for_exit(Duration::from_secs(40)));
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "SIGTERM exits 0\n{}",
        daemon.stderr_tail(40)
    );
    assert!(
        notify
            .wait_for("STOPPING", term, Duration::from_secs(5), |v| v == "1")
            .await
            .is_some(),
        "no STOPPING=1 after SIGTERM:\n{}",
        notify.transcript()
    );
    let (code, output) = block_in_place(|| health_binary(&config));
    assert_eq!(
        code,
        Some(1),
        "health with the daemon stopped: {output}\n{}",
        daemon.stderr_tail(40)
    );
}

/// SIGTERM while a mailbox is ingested in batches of 10: the daemon
/// finishes the transaction in flight and exits 0; a later `run --once`
/// takes exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_exits_zero_and_run_once_takes_exactly_the_rest() {
    const MAILS: usize = 300;
    let env = Env::start();
    env.set_daemon_extra("shutdown_timeout = \"10s\"");
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let reader = ReaderSpec {
        batch_size: Some(10),
        ..env.reader("helpdesk")
    };
    let config = env.write_config(&[reader]);
    env.init_store().await;
    let mut daemon = env.spawn_service(&config, &[("RUST_LOG", "warn")]);
    assert!(
        wait_until(WAIT, || async {
            env.count("SELECT COUNT(*) FROM tickets").await > 0
        })
        .await,
        "the daemon started ingesting\n{}",
        daemon.stderr_tail(40)
    );
    daemon.terminate();
    let exit = block_in_place(|| daemon.wait_for_exit(Duration::from_secs(10 + 30)));
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "SIGTERM exits 0 within shutdown_timeout\n{}",
        daemon.stderr_tail(40)
    );
    let at_stop = env.count("SELECT COUNT(*) FROM tickets").await;
    assert!(
        at_stop > 0 && at_stop < MAILS as i64,
        "the signal arrived mid-mailbox ({at_stop} tickets)"
    );
    assert_eq!(
        at_stop % 10,
        0,
        "only whole batches are committed: {at_stop}"
    );
    env.assert_exactly_once(at_stop as usize).await;
    assert_eq!(
        env.count("SELECT COUNT(*) FROM source_positions").await,
        at_stop
    );

    block_in_place(|| run_once_binary(&config));
    env.assert_exactly_once(MAILS).await;
    assert_eq!(env.pending("source_positions").await, 0);
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), MAILS);
}

/// `log_format = "json"`: every stderr line is one JSON object; start-up
/// logs each reader once; reader events name their reader; no password
/// or token appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_name_the_reader() {
    let env = Env::start();
    env.set_daemon_extra("log_format = \"json\"");
    env.dovecot.deliver_many(USER, (0..2).map(mail));
    let broken = ReaderSpec {
        port: free_port(),
        ..env.reader("broken")
    };
    let readers = [env.reader("helpdesk"), env.pop3_reader("pop"), broken];
    let names = ["helpdesk", "pop", "broken"];
    let config = env.write_config(&readers);
    env.init_store().await;
    let mut daemon = env.spawn_service(&config, &[("RUST_LOG", "info")]);
    assert!(
        env.wait_for_tickets(2, WAIT).await,
        "{}",
        daemon.stderr_tail(40)
    );
    assert!(
        wait_until(WAIT, || async {
            env.count("SELECT consecutive_failures FROM readers WHERE name = 'broken'")
                .await
                >= 2
        })
        .await,
        "the broken reader failed twice"
    );
    daemon.terminate();
    block_in_place(|| daemon.wait_for_exit(Duration::from_secs(40))).expect("the daemon stops");

    let text = daemon.stderr();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
            assert!(event.is_object(), "{line}");
            for key in ["timestamp", "level", "target"] {
                assert!(event[key].is_string(), "no {key}: {line}");
            }
            assert!(event["fields"]["message"].is_string(), "no message: {line}");
            event
        })
        .collect();
    let message = |e: &Value| e["fields"]["message"].as_str().unwrap_or("").to_owned();
    let reader_of = |e: &Value| {
        e["fields"]["reader"]
            .as_str()
            .or(e["span"]["reader"].as_str())
            .map(str::to_owned)
    };

    let configured: Vec<&Value> = events
        .iter()
        .filter(|e| message(e) == "reader configured")
        .collect();
    assert_eq!(configured.len(), readers.len(), "{text}");
    for (name, protocol) in [("helpdesk", "imap"), ("pop", "pop3"), ("broken", "imap")] {
        let fields = &configured
            .iter()
            .find(|e| e["fields"]["reader"] == name)
            .unwrap_or_else(|| panic!("no \"reader configured\" for {name}"))["fields"];
        assert_eq!(fields["protocol"], protocol, "{fields}");
        assert_eq!(fields["host"], "127.0.0.1", "{fields}");
        assert_eq!(fields["grant"], "password", "{fields}");
        assert_eq!(fields["state"], "ok", "{fields}");
    }

    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| message(e) == "poll failed")
        .collect();
    assert!(
        failed
            .iter()
            .any(|e| reader_of(e).as_deref() == Some("broken")),
        "no \"poll failed\" naming the broken reader:\n{text}"
    );
    for e in events
        .iter()
        .filter(|e| ["poll failed", "poll done"].contains(&message(e).as_str()))
    {
        let reader = reader_of(e);
        assert!(
            reader.as_deref().is_some_and(|r| names.contains(&r)),
            "a reader event without its reader: {e}"
        );
    }
    assert!(
        events.iter().any(|e| e["span"]["name"] == "reader"
            && e["span"]["reader"]
                .as_str()
                .is_some_and(|r| names.contains(&r))),
        "no event inside a reader span:\n{text}"
    );

    let mut secrets = vec![PASSWORD.to_string()];
    secrets.extend(env.idp.issued_secrets());
    assert!(secrets.len() > 1, "tokens were issued");
    assert_no_secret_in(&text, &env.database_bytes(), &secrets);
}

/// A reader's history: its failures and its recovery are recorded in
/// `reader_events` and shown newest first by `status --reader` (text and
/// JSON); without a daemon its last success goes stale, and a reader no
/// longer in the config is shown as not configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_failure_and_recovery_and_status_shows_staleness() {
    let mut env = Env::start();
    env.dovecot.deliver(USER, &mail(0));
    let config = env.write_config(&[env.reader("flaky")]);
    env.init_store().await;
    let mut daemon = env.spawn_service(&config, &[]);
    assert!(
        env.wait_for_tickets(1, WAIT).await,
        "{}",
        daemon.stderr_tail(40)
    );

    let status = || block_in_place(|| status_json(&config, None));
    let fresh = wait_until(WAIT, || async {
        status_reader(&status(), "flaky")["stale"] == false
    })
    .await;
    assert!(fresh, "a healthy reader is stale: {}", status());
    let now = status();
    assert_eq!(now["daemon"]["running"], true, "{now}");
    assert_eq!(now["daemon"]["pid"], daemon.pid(), "{now}");
    assert!(now["daemon"]["heartbeat_at"].is_string(), "{now}");
    let flaky = status_reader(&now, "flaky");
    assert_eq!(flaky["configured"], true, "{flaky}");
    assert_eq!(flaky["protocol"], "imap", "{flaky}");
    assert_eq!(flaky["state"], "ok", "{flaky}");
    assert_eq!(flaky["poll_interval_seconds"], 1, "{flaky}");

    let is_failure = |e: &common::setup::ReaderEvent| {
        (e.level == "warn" || e.level == "error") && e.message.contains("connection refused")
    };
    let is_recovery =
        |e: &common::setup::ReaderEvent| e.level == "info" && e.message.contains("recovered");
    block_in_place(|| env.dovecot.stop());
    assert!(
        wait_until(WAIT, || async {
            env.reader_events("flaky").await.iter().any(is_failure)
        })
        .await,
        "no warn/error event with the failure: {:?}",
        env.reader_events("flaky").await
    );
    block_in_place(|| env.dovecot.restart());
    env.dovecot.deliver(USER, &mail(1));
    assert!(
        env.wait_for_tickets(2, Duration::from_secs(60)).await,
        "the reader recovered\n{}",
        daemon.stderr_tail(40)
    );
    assert!(
        wait_until(WAIT, || async {
            env.reader_events("flaky").await.iter().any(is_recovery)
        })
        .await,
        "no info event saying \"recovered\": {:?}",
        env.reader_events("flaky").await
    );
    let events = env.reader_events("flaky").await;
    let last_failure = events.iter().rposition(is_failure).expect("a failure");
    let recovery = events.iter().rposition(is_recovery).expect("a recovery");
    assert!(recovery > last_failure, "{events:?}");
    for e in &events {
        assert!(
            ["info", "warn", "error"].contains(&e.level.as_str()),
            "{e:?}"
        );
        assert!(
            e.at.contains('T') && (e.at.ends_with('Z') || e.at.ends_with("+00:00")),
            "ISO 8601 UTC: {e:?}"
        );
    }

    let (code, text, stderr) = block_in_place(|| status_binary(&config, &["--reader", "flaky"]));
    assert_eq!(code, Some(0), "{text}{stderr}");
    assert!(text.contains("flaky"), "{text}");
    let recovered_at = text.find("recovered").expect("the recovery in the history");
    let failed_at = text
        .rfind("connection refused")
        .expect("the failure in the history");
    assert!(recovered_at < failed_at, "newest first:\n{text}");

    let one = block_in_place(|| status_json(&config, Some("flaky")));
    let flaky = status_reader(&one, "flaky");
    let shown = flaky["events"].as_array().expect("events");
    for e in shown {
        for key in ["at", "level", "message"] {
            assert!(e[key].is_string(), "{key}: {e}");
        }
    }
    let times: Vec<&str> = shown.iter().filter_map(|e| e["at"].as_str()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let text_of = |e: &Value| e["message"].as_str().unwrap_or("").to_owned();
    let first_recovery = shown.iter().position(|e| text_of(e).contains("recovered"));
    let first_failure = shown
        .iter()
        .position(|e| text_of(e).contains("connection refused"));
    assert!(
        matches!((first_recovery, first_failure), (Some(r), Some(f)) if r < f),
        "{flaky}"
    );
    assert_eq!(flaky["consecutive_failures"], 0, "{flaky}");
    assert!(flaky["last_error"].is_null(), "{flaky}");
    assert!(flaky["last_error_at"].is_string(), "{flaky}");

    daemon.terminate();
    block_in_place(|| daemon.wait_for_exit(Duration::from_secs(40))).expect("the daemon stops");
    let stopped = status();
    assert_eq!(stopped["daemon"]["running"], false, "{stopped}");
    assert!(stopped["daemon"]["stopped_at"].is_string(), "{stopped}");
    assert!(stopped["daemon"]["heartbeat_at"].is_null(), "{stopped}");
    // Nothing polls now: after 3 × 1 s the last success is stale.
    assert!(
        wait_until(WAIT, || async {
            status_reader(&status(), "flaky")["stale"] == true
        })
        .await,
        "not stale without a daemon: {}",
        status()
    );

    let other = env.path("other.toml");
    std::fs::write(&other, env.config_toml(&[env.reader("other")])).expect("write config");
    let elsewhere = block_in_place(|| status_json(&other, None));
    assert_eq!(
        status_reader(&elsewhere, "flaky")["configured"],
        false,
        "{elsewhere}"
    );
}

/// The harness's exposition parser: labels with escapes, families by
/// suffix, and the shape checks (no Dovecot needed).
#[test]
fn metrics_parser_reads_labels_escapes_and_families() {
    let text = "# HELP m2t_polls Polls.\n\
        # TYPE m2t_polls counter\n\
        m2t_polls_total{reader=\"a\"} 3\n\
        m2t_polls_total{reader=\"say \\\"hi\\\", \\\\ ok\"} 1\n\
        # TYPE m2t_fetch_seconds histogram\n\
        # UNIT m2t_fetch_seconds seconds\n\
        m2t_fetch_seconds_sum{reader=\"a\"} 0.5\n\
        m2t_fetch_seconds_count{reader=\"a\"} 2\n\
        m2t_fetch_seconds_bucket{reader=\"a\",le=\"+Inf\"} 2\n\
        # TYPE m2t_state gauge\n\
        m2t_state{reader=\"a\",state=\"ok\"} 1\n\
        # EOF\n";
    let m = Metrics::parse(text).expect("valid");
    assert_eq!(m.value("m2t_polls_total", &[("reader", "a")]), 3.0);
    assert_eq!(
        m.get("m2t_polls_total", &[("reader", "say \"hi\", \\ ok")]),
        Some(1.0)
    );
    assert_eq!(m.type_of("m2t_polls_total"), Some("counter"));
    assert_eq!(m.type_of("m2t_fetch_seconds_count"), Some("histogram"));
    assert_eq!(
        m.get(
            "m2t_fetch_seconds_bucket",
            &[("le", "+Inf"), ("reader", "a")]
        ),
        Some(2.0)
    );
    assert_eq!(m.sum("m2t_state", &[("state", "ok")]), 1.0);
    assert_eq!(m.sum("m2t_state", &[("state", "retrying")]), 0.0);
    assert!(m.any_label("reader", "a"));

    assert!(
        Metrics::parse("# TYPE a gauge\na 1\n").is_ok(),
        "the classic text format has no # EOF"
    );
    assert!(Metrics::parse("a 1\n# EOF\n").is_err(), "no # TYPE");
    assert!(
        Metrics::parse("# TYPE a gauge\na{x=\"1} 1\n# EOF\n").is_err(),
        "unterminated label value"
    );
    assert!(
        Metrics::parse("# TYPE a gauge\n# EOF\na 1\n").is_err(),
        "# EOF not last"
    );
}

/// Two `run` processes on one database would beat the same heartbeat row;
/// the second is refused, naming the first, until the first is gone (even
/// by SIGKILL: the kernel drops the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_database_is_refused_while_the_first_lives() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(0));
    let loaded = env.config(&[env.reader("desk")]);
    env.init_db(&loaded).await;
    let config = loaded.path.clone();
    let mut first = env.spawn_service(&config, &[]);
    assert!(wait_ingested(&env, 0, WAIT).await, "{}", first.stderr());
    let path = config.to_str().expect("utf-8 path");
    let (code, _, err) =
        block_in_place(|| run_binary(&["-c", path, "run"], Duration::from_secs(30)));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("another `mail2ticket run` uses database")
            && err.contains(&format!("pid {} on ", first.pid())),
        "{err}"
    );
    assert!(first.is_running(), "the first one is untouched");

    block_in_place(|| {
        first.signal("KILL");
        first.wait_for_exit(Duration::from_secs(10))
    })
    .expect("killed");
    let mut second = env.spawn_service(&config, &[]);
    env.dovecot.deliver(USER, &mail(1));
    assert!(
        wait_ingested(&env, 1, WAIT).await,
        "the lock went with the killed process: {}",
        second.stderr()
    );
    assert!(second.is_running());
    second.terminate();
    block_in_place(|| second.wait_for_exit(Duration::from_secs(40))).expect("stops");
}

/// Our ends of `conns` the daemon has not closed: a read that neither
/// returns data, EOF nor an error within a moment means still open.
async fn still_open(conns: &mut [tokio::net::TcpStream]) -> usize {
    use tokio::io::AsyncReadExt as _;
    let open = futures::future::join_all(conns.iter_mut().map(|c| async move {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(300), c.read(&mut byte))
            .await
            .is_err()
    }))
    .await;
    open.into_iter().filter(|open| *open).count()
}

/// Idle clients cannot starve the daemon through `[daemon] listen`: of 200
/// idle connections the daemon keeps at most its cap (64), idle ones give
/// their place to `/healthz`, every idle one is closed after the header
/// timeout, and a request head dribbled a byte at a time is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_http_clients_hold_nothing_and_keep_no_health_check_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    const IDLE: usize = 200;
    const CAP: usize = 64;

    let env = Env::start();
    let (listen, port) = listen_line();
    env.set_daemon_extra(&listen);
    let config = env.write_config(&[env.reader("helpdesk")]);
    env.init_store().await;
    let daemon = env.spawn_service(&config, &[]);
    assert!(
        wait_for_http_status(port, "/healthz", 200, WAIT).await,
        "{}",
        daemon.stderr_tail(40)
    );

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    // Each health check waits behind the idle clients in the backlog and
    // is answered: the oldest idle one gives its place.
    for _ in 0..5 {
        assert_eq!(
            http_get(port, "/healthz").await.map(|r| r.0),
            Ok(200),
            "{}",
            daemon.stderr_tail(40)
        );
    }
    let open = still_open(&mut idle).await;
    assert!(
        open <= CAP,
        "{open} of {IDLE} idle connections held (cap {CAP})"
    );

    // A slow loris: a request head that never ends, a byte a second.
    let mut loris = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    loris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut cut = false;
    for _ in 0..90 {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(1), loris.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                let _ = loris.write_all(b"X").await;
            }
        }
    }
    assert!(cut, "a dribbled request head was never cut");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains(" 200 "),
        "a half request was served: {answer}"
    );

    // By now the header timeout has passed for every idle connection.
    let deadline = Instant::now() + WAIT;
    let mut open = still_open(&mut idle).await;
    while open > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open = still_open(&mut idle).await;
    }
    assert_eq!(open, 0, "idle connections outlived the header timeout");
    assert_eq!(http_get(port, "/healthz").await.map(|r| r.0), Ok(200));
}

/// Soft and hard RLIMIT_NOFILE of a process, from /proc.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().expect("soft"), numbers.next().expect("hard"))
}

fn set_soft_nofile(pid: u32, soft: u64) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --pid {pid} --nofile={soft}:");
}

/// The daemon raises its soft file-descriptor limit to the hard one at
/// start. When it runs out all the same, the reader that cannot connect
/// says so in an admin's words naming the limit, and `/healthz` fails with
/// the same reason (answered even then); both recover when descriptors are
/// free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_named_and_fails_health_until_it_passes() {
    use tokio::net::TcpStream;
    const HARD: u64 = 512;

    let env = Env::start();
    let (listen, port) = listen_line();
    env.set_daemon_extra(&listen);
    let config = env.write_config(&[env.pop3_reader("pop")]);
    env.init_store().await;
    let daemon = env.spawn_service_with_nofile(&config, &[], 128, HARD);
    let pid = daemon.pid();
    assert!(
        wait_for_http_status(port, "/healthz", 200, WAIT).await,
        "{}",
        daemon.stderr_tail(40)
    );
    assert_eq!(nofile(pid), (HARD, HARD), "soft limit raised at start");
    assert!(
        wait_until(WAIT, || async { env.state("pop").await == "ok" }).await,
        "the POP3 reader never succeeded"
    );

    // Down to what it holds now plus a few; idle clients take the rest.
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count() as u64;
    let limit = held + 4;
    set_soft_nofile(pid, limit);
    let stop_eating = tokio_util::sync::CancellationToken::new();
    let eater = tokio::spawn({
        let stop = stop_eating.clone();
        async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.is_cancelled() {
                if held.len() < 32
                    && let Ok(c) = TcpStream::connect(("127.0.0.1", port)).await
                {
                    held.push(c);
                }
                if held.len() >= 32 {
                    let open = still_open(&mut held).await;
                    // Closed ones (given up or timed out) are replaced.
                    if open < held.len() {
                        held.clear();
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let named =
        format!("too many open files (the process's file-descriptor limit {limit} is reached)");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last_error = env.last_error("pop").await;
    while !last_error.as_deref().is_some_and(|e| e.contains(&named)) {
        assert!(
            Instant::now() < deadline,
            "last_error never named the limit: {last_error:?}\n{}",
            daemon.stderr_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        last_error = env.last_error("pop").await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut health = http_get(port, "/healthz").await;
    while !matches!(&health, Ok((503, body)) if body.contains(&named)) {
        assert!(
            Instant::now() < deadline,
            "/healthz did not fail naming the limit: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        health = http_get(port, "/healthz").await;
    }

    stop_eating.cancel();
    eater.await.expect("eater");
    set_soft_nofile(pid, HARD);
    assert!(
        wait_for_http_status(port, "/healthz", 200, Duration::from_secs(90)).await,
        "/healthz did not recover\n{}",
        daemon.stderr_tail(40)
    );
    assert!(
        wait_until(WAIT, || async { env.state("pop").await == "ok" }).await,
        "the reader did not recover: {:?}",
        env.last_error("pop").await
    );
}
