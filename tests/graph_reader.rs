//! The Microsoft Graph reader end to end: the binary (or `run --once` in
//! this process, the same code) against the Graph stand-in and the IdP
//! stand-in, with a real SQLite file. What Graph has ingested is
//! remembered by immutable id in `graph_messages`, in the ticket's
//! transaction; the delta link is saved once a round is committed.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::graph::GraphRequest;
use common::setup::{GraphEnv, USER, check_binary, run_once_binary, wait_until};
use common::{Fault, GraphRoute, mail};
use tokio::task::block_in_place;

fn inbox(g: &GraphEnv) -> Vec<common::graph::GraphMessage> {
    g.graph.messages(USER, "Inbox")
}

/// `last_error` of `reader`; `None` also before its row exists.
async fn last_error_now(g: &GraphEnv, reader: &str) -> Option<String> {
    let pool = g.env.db().await;
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT last_error FROM readers WHERE name = ?")
            .bind(reader)
            .fetch_optional(&pool)
            .await
            .expect("readers");
    pool.close().await;
    row.and_then(|(e,)| e)
}

fn statuses(requests: &[GraphRequest], status: u16) -> usize {
    requests.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mails_become_tickets_once_and_a_quiet_poll_is_one_request() {
    let g = GraphEnv::start();
    for i in 0..30 {
        g.deliver(&mail(i));
    }
    let config = g.env.config(&[g.reader("g")]);

    let (code, stdout, stderr) = block_in_place(|| check_binary(&config.path, Some("g")));
    assert_eq!(code, Some(0), "check failed: {stdout}{stderr}");
    assert!(
        stdout
            .trim()
            .starts_with("g: ok, 30 messages, 30 not yet ingested"),
        "{stdout}"
    );

    let report = g.env.poll_ok(&config, "g").await;
    assert_eq!(
        (report.fetched, report.created, report.duplicates),
        (30, 30, 0)
    );
    g.env.assert_exactly_once(30).await;
    assert_eq!(
        g.env
            .count("SELECT COUNT(*) FROM graph_messages WHERE after_state = 'done'")
            .await,
        30
    );
    // after = "seen" (the default): every mail is read now.
    assert!(inbox(&g).iter().all(|m| m.is_read), "all marked read");
    // Immutable ids were asked for on every request.
    assert!(g.graph.requests().iter().all(|r| r.prefers_immutable_ids()));

    // A fresh process: the ledger, not the process, remembers.
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(30).await;

    // Steady state: nothing new, nothing changed: the stored delta link
    // alone, one request.
    g.graph.reset_requests();
    block_in_place(|| run_once_binary(&config.path));
    let requests = g.graph.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].route, GraphRoute::Delta);
    g.env.assert_exactly_once(30).await;

    let (code, stdout, _) = block_in_place(|| check_binary(&config.path, Some("g")));
    assert_eq!(code, Some(0));
    assert!(
        stdout
            .trim()
            .starts_with("g: ok, 30 messages, 0 not yet ingested"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_delta_link_resyncs_without_duplicates() {
    let g = GraphEnv::start();
    for i in 0..10 {
        g.deliver(&mail(i));
    }
    let config = g.env.config(&[g.reader("g").after("keep")]);
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(10).await;

    g.graph.expire_delta_tokens(None);
    for i in 10..15 {
        g.deliver(&mail(i));
    }
    g.graph.reset_requests();
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(15).await;
    let requests = g.graph.requests();
    assert_eq!(statuses(&requests, 410), 1, "the old link was refused once");
    // Only the five new mails were fetched again.
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.route == GraphRoute::MessageValue)
            .count(),
        5
    );
    // after = "keep": nothing changed on the server.
    assert!(inbox(&g).iter().all(|m| !m.is_read));
    assert_eq!(inbox(&g).len(), 15);

    // The new link works: a further poll is one request.
    g.graph.reset_requests();
    block_in_place(|| run_once_binary(&config.path));
    assert_eq!(g.graph.requests().len(), 1);
    g.env.assert_exactly_once(15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_and_delete_after_steps_show_in_the_mailbox() {
    let g = GraphEnv::start();
    for i in 0..3 {
        g.deliver(&mail(i));
    }
    let config = g.env.config(&[g.reader("g").after("move:Archive")]);
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(3).await;
    assert!(inbox(&g).is_empty(), "moved out of the Inbox");
    assert_eq!(g.graph.messages(USER, "Archive").len(), 3);

    for i in 3..5 {
        g.deliver(&mail(i));
    }
    let config = g.env.config(&[g.reader("g").after("delete")]);
    block_in_place(|| run_once_binary(&config.path));
    assert!(inbox(&g).is_empty(), "deleted from the Inbox");
    assert_eq!(g.graph.messages(USER, "Deleted Items").len(), 2);
    assert_eq!(g.graph.messages(USER, "Archive").len(), 3);
    g.env.assert_exactly_once(5).await;
    assert_eq!(
        g.env
            .count("SELECT COUNT(*) FROM graph_messages WHERE after_state = 'pending'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_resolves_the_move_target_once() {
    let g = GraphEnv::start();
    let mut reader = g.reader("g").after("move:Archive");
    reader.poll_interval = "1s";
    let config = g.env.config(&[reader]);
    let (cancel, daemon) = g.env.spawn_daemon(&config).await;
    for round in 0..3 {
        for i in 0..2 {
            g.deliver(&mail(round * 2 + i));
        }
        let want = (round + 1) * 2;
        assert!(
            wait_until(Duration::from_secs(30), || async {
                g.graph.messages(USER, "Archive").len() == want
            })
            .await,
            "round {round}: mail not moved"
        );
    }
    cancel.cancel();
    daemon.await.expect("daemon task").expect("daemon ran");
    g.env.assert_exactly_once(6).await;
    // Three polls moved mail; the Archive was looked up by the first only.
    let lookups = g
        .graph
        .requests()
        .iter()
        .filter(|r| {
            r.route == GraphRoute::GetFolder && r.path_and_query.to_lowercase().contains("archive")
        })
        .count();
    assert_eq!(lookups, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_move_target_is_a_misconfiguration() {
    let g = GraphEnv::start();
    g.deliver(&mail(0));
    let config = g.env.config(&[g.reader("g").after("move:Nowhere")]);
    let error = g.env.failing_poll(&config, "g").await;
    assert!(
        error.contains("\"Nowhere\" to move mail to does not exist"),
        "{error}"
    );
    assert_eq!(g.env.state("g").await, "misconfigured");
    // The mail is a ticket; only its after-step waits.
    g.env.assert_exactly_once(1).await;
    assert_eq!(
        g.env
            .count("SELECT COUNT(*) FROM graph_messages WHERE after_state = 'pending'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_after_step_that_keeps_failing_does_not_hold_new_mail_back() {
    let g = GraphEnv::start();
    for i in 0..3 {
        g.deliver(&mail(i));
    }
    g.graph.inject(
        Fault::error(400, "ErrorInvalidRequest", "The request is invalid.")
            .on_route(GraphRoute::UpdateMessage)
            .always(),
    );
    let config = g.env.config(&[g.reader("g")]);
    let pending = "SELECT COUNT(*) FROM graph_messages WHERE after_state = 'pending'";
    let error = g.env.failing_poll(&config, "g").await;
    assert!(error.contains("ErrorInvalidRequest"), "{error}");
    g.env.assert_exactly_once(3).await;
    assert_eq!(g.env.count(pending).await, 3);

    // The old after-steps still fail; the new mail is taken all the same.
    for i in 3..5 {
        g.deliver(&mail(i));
    }
    g.env.failing_poll(&config, "g").await;
    g.env.assert_exactly_once(5).await;
    assert_eq!(g.env.count(pending).await, 5);

    // Once Graph takes them, every owed after-step is done and nothing twice.
    g.graph.clear_faults();
    let report = g.env.poll_ok(&config, "g").await;
    assert_eq!((report.created, report.duplicates), (0, 0));
    assert_eq!(g.env.count(pending).await, 0);
    assert!(inbox(&g).iter().all(|m| m.is_read));
    g.env.assert_exactly_once(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_in_ten_throttled_still_gives_every_mail_once() {
    const MAILS: usize = 500;
    let g = GraphEnv::start();
    for i in 0..MAILS {
        g.deliver(&mail(i));
    }
    g.graph.inject(Fault::throttle(1).ratio(1, 10));
    let config = g.env.config(&[g.reader("g")]);
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(MAILS).await;
    let throttled = statuses(&g.graph.requests(), 429);
    assert!(throttled >= 10, "only {throttled} requests were throttled");
    assert!(inbox(&g).iter().all(|m| m.is_read));
    assert!(g.graph.max_in_flight(USER) <= 4);
    assert_eq!(g.env.last_error("g").await, None, "a success clears it");

    // A rerun, still throttled: nothing more.
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(MAILS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_dropped_connections_and_slow_answers_lose_nothing() {
    const MAILS: usize = 60;
    let g = GraphEnv::start();
    for i in 0..MAILS {
        g.deliver(&mail(i));
    }
    g.graph.inject(
        Fault::unavailable(Some(1))
            .on_route(GraphRoute::MessageValue)
            .ratio(1, 8),
    );
    g.graph.inject(
        Fault::unavailable(None)
            .on_route(GraphRoute::Delta)
            .times(1),
    );
    g.graph.inject(Fault::drop_connection().ratio(1, 12));
    // Marked read, but the answer never came: repeating it is harmless.
    g.graph.inject(
        Fault::drop_after_processing()
            .on_route(GraphRoute::UpdateMessage)
            .ratio(1, 10),
    );
    g.graph
        .inject(Fault::delay(Duration::from_millis(300)).ratio(1, 5));
    let config = g.env.config(&[g.reader("g")]);
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(MAILS).await;
    let requests = g.graph.requests();
    assert!(statuses(&requests, 503) >= MAILS / 8, "{requests:#?}");
    assert!(
        requests.iter().filter(|r| r.status == 0).count() >= MAILS / 12,
        "connections were dropped"
    );
    assert!(inbox(&g).iter().all(|m| m.is_read));
    assert_eq!(
        g.env
            .count("SELECT COUNT(*) FROM graph_messages WHERE after_state = 'pending'")
            .await,
        0
    );

    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(MAILS).await;
}

#[test]
fn last_error_says_throttled_while_graph_throttles() {
    let g = GraphEnv::start();
    g.deliver(&mail(0));
    let config = g.env.write_config(&[g.reader("g")]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(
        g.env
            .init_db(&mail2ticket::config::Config::load(&config).expect("config")),
    );
    g.graph.inject(
        Fault::throttle(4)
            .on_route(GraphRoute::MessageValue)
            .times(1),
    );
    let mut daemon = g.env.spawn_daemon_binary(&config);
    let shown = runtime.block_on(wait_until(Duration::from_secs(20), || async {
        last_error_now(&g, "g")
            .await
            .is_some_and(|e| e.starts_with("throttled by Microsoft Graph, retrying in 4s"))
    }));
    assert!(
        shown,
        "last_error: {:?}",
        runtime.block_on(last_error_now(&g, "g"))
    );
    assert!(runtime.block_on(g.env.wait_for_tickets(1, Duration::from_secs(20))));
    let cleared = runtime.block_on(wait_until(Duration::from_secs(10), || async {
        last_error_now(&g, "g").await.is_none()
    }));
    assert!(
        cleared,
        "last_error: {:?}",
        runtime.block_on(last_error_now(&g, "g"))
    );
    daemon.terminate();
    assert!(daemon.wait_for_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn killed_mid_ingest_the_rerun_gives_the_exact_count() {
    const MAILS: usize = 120;
    let g = GraphEnv::start();
    for i in 0..MAILS {
        g.deliver(&mail(i));
    }
    let mut reader = g.reader("g");
    reader.batch_size = Some(10);
    let config = g.env.write_config(&[reader]);
    let counts = g.env.kill_daemon_repeatedly(&config, MAILS, 6);
    assert!(
        counts.iter().any(|&n| n > 0 && n < MAILS as i64),
        "no kill landed mid-ingest: {counts:?}"
    );
    run_once_binary(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(g.env.assert_exactly_once(MAILS));
    assert_eq!(
        runtime.block_on(
            g.env
                .count("SELECT COUNT(*) FROM graph_messages WHERE after_state = 'pending'")
        ),
        0,
        "every after-step was repeated until done"
    );
    assert!(inbox(&g).iter().all(|m| m.is_read));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_only_reader_reads_once_access_is_granted() {
    let g = GraphEnv::start();
    for i in 0..3 {
        g.deliver(&mail(i));
    }
    let config = g.env.config(&[g.app_only_reader("app")]);

    // Not granted: Exchange's ApplicationAccessPolicy answer, with what
    // the admin runs to grant it.
    let error = g.env.failing_poll(&config, "app").await;
    assert!(
        error.contains("Microsoft Graph denied the app access to mailbox")
            && error.contains("New-ManagementRoleAssignment"),
        "{error}"
    );
    assert_eq!(g.env.state("app").await, "misconfigured");
    assert_eq!(g.env.count("SELECT COUNT(*) FROM tickets").await, 0);

    g.env.idp.grant_app_access(USER);
    // A parked reader is tried again once its configuration changes.
    let mut reader = g.app_only_reader("app");
    reader.poll_interval = "2s";
    let config = g.env.config(&[reader]);
    let report = g.env.poll_ok(&config, "app").await;
    assert_eq!(report.created, 3);
    g.env.assert_exactly_once(3).await;
    let form = g
        .env
        .idp
        .last_form("client_credentials")
        .expect("a client credentials request");
    assert_eq!(
        form.get("scope").map(String::as_str),
        Some("https://graph.microsoft.com/.default")
    );
    assert_eq!(g.env.state("app").await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_reader_denied_access_says_what_to_grant() {
    let g = GraphEnv::start();
    g.deliver(&mail(0));
    g.graph.inject(
        Fault::error(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
        .on_route(GraphRoute::GetFolder)
        .always(),
    );
    let config = g.env.config(&[g.reader("g")]);
    let error = g.env.failing_poll(&config, "g").await;
    assert!(
        error.starts_with(&format!(
            "Microsoft Graph denied access to mailbox {USER} (Access is denied."
        )) && error.contains("delegated permission Mail.ReadWrite"),
        "{error}"
    );
    assert_eq!(g.env.state("g").await, "misconfigured");
    assert_eq!(g.env.count("SELECT COUNT(*) FROM tickets").await, 0);

    // Once access is there, the delegated reader reads.
    g.graph.clear_faults();
    let mut reader = g.reader("g");
    reader.poll_interval = "2s";
    let config = g.env.config(&[reader]);
    assert_eq!(g.env.poll_ok(&config, "g").await.created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_go_out_by_send_mail() {
    let g = GraphEnv::start();
    g.deliver(&mail(0));
    let mut reader = g.reader("g");
    reader.extra.push_str(
        "\n[reader.reply]\nsubject = \"{tag} {subject}\"\nbody = \"We opened ticket {tag}.\\n\"\n",
    );
    let config = g.env.config(&[reader]);
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(1).await;
    let sent = g.graph.sent_mail();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].mailbox, USER);
    let mime = String::from_utf8_lossy(sent[0].mime.as_deref().expect("MIME form")).into_owned();
    assert!(mime.contains("Printer broken #0"), "{mime}");
    assert!(mime.contains("customer0@example.net"), "{mime}");
    assert!(
        mime.to_ascii_lowercase()
            .contains("auto-submitted: auto-replied"),
        "{mime}"
    );
    assert_eq!(
        g.env
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")
            .await,
        1
    );
    // Sent once: a rerun sends nothing more.
    block_in_place(|| run_once_binary(&config.path));
    assert_eq!(g.graph.sent_mail().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_replaced_once_and_the_poll_goes_on() {
    let g = GraphEnv::start();
    g.deliver(&mail(0));
    let config = g.env.config(&[g.reader("g")]);
    g.graph.inject(
        Fault::error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )
        .on_route(GraphRoute::Delta)
        .times(1),
    );
    let report = g.env.poll_ok(&config, "g").await;
    assert_eq!(report.created, 1);
    let token_requests = g.env.idp.count("password") + g.env.idp.count("refresh_token");
    assert_eq!(
        token_requests, 2,
        "the refused token was dropped and one new token obtained"
    );
    assert_eq!(statuses(&g.graph.requests(), 401), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_consent_to_graph_says_what_to_grant() {
    let g = GraphEnv::start();
    g.deliver(&mail(0));
    g.env.idp.inject_aad(
        400,
        "invalid_grant",
        65001,
        "The user or administrator has not consented to use the application with ID \
         '00000000-0000-0000-0000-000000000001' named 'mail2ticket'.",
        1,
    );
    let config = g.env.config(&[g.reader("g")]);
    let error = g.env.failing_poll(&config, "g").await;
    assert!(
        error.starts_with("Microsoft Graph permissions of the app are not consented")
            && error.contains("AADSTS65001")
            && error.contains("delegated permissions Mail.ReadWrite and offline_access")
            && error.contains("Grant admin consent"),
        "{error}"
    );
    // Signing in again cannot help: the tenant's setup must change.
    assert_eq!(g.env.state("g").await, "misconfigured");
    assert_eq!(g.env.count("SELECT COUNT(*) FROM tickets").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lost_mid_poll_stops_the_reader_as_before_the_poll() {
    let g = GraphEnv::start();
    g.deliver(&mail(0));
    let config = g.env.config(&[g.reader("g")]);
    assert_eq!(g.env.poll_ok(&config, "g").await.created, 1);

    // The token is refused halfway (the delta request is held for a
    // moment, then answered 401) and Entra, asked for a new one, now
    // wants MFA: the reader needs a person, exactly as when the token
    // fails before the poll.
    g.deliver(&mail(1));
    g.graph.inject(
        Fault::delay(Duration::from_secs(3))
            .on_route(GraphRoute::Delta)
            .times(1),
    );
    g.graph.inject(
        Fault::error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )
        .on_route(GraphRoute::Delta)
        .times(1),
    );
    g.graph.reset_requests();
    let refuse_sign_in = async {
        // Once the delta request is in, the poll holds its token.
        while !g
            .graph
            .requests()
            .iter()
            .any(|r| r.route == GraphRoute::Delta)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        g.env.idp.inject_aad(
            400,
            "invalid_grant",
            50076,
            "Due to a configuration change made by your administrator, or because you moved \
             to a new location, you must use multi-factor authentication to access the resource.",
            // The refresh token and then the password are both refused.
            5,
        );
    };
    let (error, ()) = tokio::join!(g.env.failing_poll(&config, "g"), refuse_sign_in);
    assert_eq!(statuses(&g.graph.requests(), 401), 1);
    assert!(error.contains("AADSTS50076"), "{error}");
    assert_eq!(g.env.state("g").await, "needs_authorization");
    g.env.assert_exactly_once(1).await;
}

/// The rows a mail leaves, without ids and times: what must not depend on
/// the protocol it was read over.
async fn ticket_rows(env: &common::setup::Env) -> Vec<String> {
    let pool = env.db().await;
    let mut rows = Vec::new();
    for sql in [
        "SELECT json_array(reader, subject, requester, requester_name, status, tags)
         FROM tickets ORDER BY id",
        "SELECT json_array(ticket_id, reader, dedup_key, message_id, in_reply_to, references_,
                from_addr, from_name, to_addrs, cc_addrs, subject, sent_at, body_text,
                body_html, parse_note, disposition, limit_note)
         FROM emails ORDER BY id",
    ] {
        let found: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&pool).await.expect("rows");
        rows.extend(found.into_iter().map(|(row,)| row));
    }
    pool.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_read_over_graph_and_over_imap_gives_the_same_rows() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    let mails: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("mail"))
        .collect();
    assert!(mails.len() >= 40, "the corpus is missing");

    let over_imap = GraphEnv::start();
    let over_graph = GraphEnv::start();
    for raw in &mails {
        over_imap.env.dovecot.deliver(USER, raw);
        over_graph.deliver(raw);
    }
    let imap = over_imap.env.config(&[over_imap.env.reader("desk")]);
    let graph = over_graph.env.config(&[over_graph.reader("desk")]);
    let a = over_imap.env.poll_ok(&imap, "desk").await;
    let b = over_graph.env.poll_ok(&graph, "desk").await;
    assert_eq!(a.fetched, mails.len());
    assert_eq!(
        (b.fetched, b.created, b.joined),
        (a.fetched, a.created, a.joined)
    );

    let (rows_imap, rows_graph) = (
        ticket_rows(&over_imap.env).await,
        ticket_rows(&over_graph.env).await,
    );
    assert!(
        rows_imap.len() > mails.len(),
        "tickets and emails both counted"
    );
    for (i, (x, y)) in rows_imap.iter().zip(&rows_graph).enumerate() {
        assert_eq!(x, y, "row {i} differs between IMAP and Graph");
    }
    assert_eq!(rows_imap.len(), rows_graph.len());
}

/// `[daemon] max_concurrent_polls = 1`: three readers of three mailboxes
/// take turns; the stand-in sees one mailbox's requests, then the next's,
/// never two interleaved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_polls_makes_readers_take_turns() {
    let g = GraphEnv::start();
    g.env.set_daemon_extra("max_concurrent_polls = 1");
    let mut readers = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let mailbox = format!("desk-{name}@test.example");
        g.graph.add_mailbox(&mailbox);
        g.env.idp.grant_app_access(&mailbox);
        g.graph.deliver(&mailbox, "Inbox", &mail(i));
        readers.push(common::setup::ReaderSpec {
            username: mailbox,
            ..g.app_only_reader(name)
        });
    }
    // Slow answers: polls that ran together would overlap for sure.
    g.graph
        .inject(Fault::delay(Duration::from_millis(200)).always());
    let config = g.env.config(&readers);
    block_in_place(|| run_once_binary(&config.path));
    g.env.assert_exactly_once(3).await;
    let order: Vec<String> = g
        .graph
        .requests()
        .into_iter()
        .filter_map(|r| r.mailbox)
        .collect();
    let mut turns = order.clone();
    turns.dedup();
    assert_eq!(turns.len(), 3, "polls overlapped: {order:?}");
}
