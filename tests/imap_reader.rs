//! The core reader end to end: a real Dovecot over TLS with XOAUTH2, the
//! IdP stand-in, a real SQLite file.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::proxy::Throttle;
use common::setup::{
    ChildGuard, Env, PASSWORD, PLAIN_PASSWORD, USER, assert_no_secret_in, binary, run_once_binary,
    wait_until,
};
use common::{Proxy, mail, malformed_mail};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_mails_become_two_hundred_tickets_exactly_once() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..200).map(mail));
    let config = env.config(&[env.reader("helpdesk")]);

    let results = env.poll_once(&config).await;
    let report = results[0].1.as_ref().expect("poll succeeds");
    assert_eq!(
        (report.fetched, report.created, report.duplicates),
        (200, 200, 0)
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 200);
    assert_eq!(env.count("SELECT COUNT(*) FROM emails").await, 200);
    assert_eq!(
        env.count("SELECT COUNT(DISTINCT message_id) FROM emails")
            .await,
        200
    );
    assert_eq!(
        env.dovecot.seen_count(USER, "INBOX"),
        200,
        "ingested mail is flagged \\Seen"
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM source_positions WHERE after_state = 'done'")
            .await,
        200
    );

    // The ticket carries what the mail said.
    let pool = env.db().await;
    let (subject, requester, name): (String, String, String) = sqlx::query_as(
        "SELECT subject, requester, requester_name FROM tickets ORDER BY id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("first ticket");
    assert_eq!(subject, common::mail::subject(0));
    assert_eq!(requester, common::mail::sender(0));
    assert_eq!(name, "Customer 0");

    let again = env.poll_once(&config).await;
    let report = again[0].1.as_ref().expect("second poll succeeds");
    assert_eq!((report.fetched, report.created), (0, 0));
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 200);
    let (last_error, failures): (Option<String>, i64) = sqlx::query_as(
        "SELECT last_error, consecutive_failures FROM readers WHERE name = 'helpdesk'",
    )
    .fetch_one(&pool)
    .await
    .expect("reader row");
    assert_eq!((last_error, failures), (None, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_password_grant_then_only_refreshes_across_expiries() {
    let env = Env::start();
    env.idp.set_token_lifetime(Duration::from_secs(2));
    env.idp.set_strict_rotation(true);
    let config = env.config(&[env.reader("helpdesk")]);

    let (cancel, daemon) = env.spawn_daemon(&config).await;
    // Mail arrives while tokens keep expiring underneath the daemon.
    for round in 0..4 {
        env.dovecot.deliver(USER, &mail(round));
        let want = round as i64 + 1;
        assert!(
            env.wait_for_tickets(want, Duration::from_secs(20)).await,
            "ticket {want} did not appear"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    cancel.cancel();
    daemon.await.expect("daemon task").expect("daemon ran");

    assert_eq!(env.idp.count("password"), 1, "exactly one password grant");
    assert!(
        env.idp.count("refresh_token") >= 3,
        "refreshed on every expiry"
    );
    let form = env
        .idp
        .last_form("refresh_token")
        .expect("a refresh was made");
    assert!(
        form.get("scope")
            .is_some_and(|s| s.contains("IMAP.AccessAsUser.All")),
        "scope is sent on refresh: {form:?}"
    );

    // A new process (fresh cache) continues from the persisted, rotated
    // refresh token: strict rotation means a stale one would fail.
    let results = env.poll_once(&config).await;
    results[0]
        .1
        .as_ref()
        .expect("poll with the persisted refresh token");
    assert_eq!(
        env.idp.count("password"),
        1,
        "still exactly one password grant"
    );

    // The refresh token is stored, but not in clear.
    let pool = env.db().await;
    let (sealed,): (Vec<u8>,) = sqlx::query_as("SELECT refresh_token FROM oauth_tokens")
        .fetch_one(&pool)
        .await
        .expect("token row");
    assert!(sealed.len() > 24);
    let dump = std::fs::read(env.db_file()).expect("db file");
    for token in env.idp.issued_refresh_tokens() {
        assert!(
            !dump.windows(token.len()).any(|w| w == token.as_bytes()),
            "a refresh token is readable in the database file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_refresh_token_falls_back_to_the_password_grant_once() {
    let env = Env::start();
    env.idp.set_token_lifetime(Duration::from_secs(1));
    let config = env.config(&[env.reader("helpdesk")]);
    let poll = || async {
        let results = env.poll_once(&config).await;
        results[0].1.as_ref().map(|_| ()).map_err(|e| e.to_string())
    };
    poll().await.expect("first poll signs in");
    assert_eq!(
        (env.idp.count("password"), env.idp.count("refresh_token")),
        (1, 0)
    );

    // The refresh token dies (revoked at the IdP) while the access token expires.
    env.idp.revoke_refresh_tokens(USER);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.dovecot.deliver(USER, &mail(1));
    poll()
        .await
        .expect("falls back to the password and succeeds");
    assert_eq!(
        env.idp.count("refresh_token"),
        1,
        "the stored refresh token was tried first"
    );
    assert_eq!(
        env.idp.count("password"),
        2,
        "then exactly one password grant"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 1);

    // The new refresh token from that sign-in is the one used next.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    poll().await.expect("refresh works again");
    assert_eq!(
        (env.idp.count("password"), env.idp.count("refresh_token")),
        (2, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_endpoint_outage_is_reported_and_recovers() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(3));
    let config = env.config(&[env.reader("helpdesk")]);
    env.idp.set_down(true);
    let last_error = env.failing_poll(&config, "helpdesk").await;
    assert_eq!(
        last_error,
        format!(
            "identity endpoint {} answered HTTP 503",
            env.idp.token_url()
        )
    );
    assert_eq!(env.state("helpdesk").await, "retrying");

    env.idp.set_down(false);
    let results = env.poll_once(&config).await;
    results[0]
        .1
        .as_ref()
        .expect("recovers once the endpoint is back");
    assert_eq!(env.last_error("helpdesk").await, None);
    assert_eq!(env.state("helpdesk").await, "ok");
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_client_sends_its_secret() {
    let env = Env::start();
    env.idp.set_client_secret("the-real-app-secret");
    let secret_file = env.path("client-secret");
    std::fs::write(&secret_file, "not-the-app-secret\n").expect("write");
    let text = env.config_toml(&[env.reader("helpdesk")]).replace(
        "authority = ",
        &format!(
            "client_secret = {{ file = \"{}\" }}\nauthority = ",
            secret_file.display()
        ),
    );
    let path = env.path("config.toml");
    std::fs::write(&path, text).expect("write config");
    let config = mail2ticket::config::Config::load(&path).expect("valid config");

    let last_error = env.failing_poll(&config, "helpdesk").await;
    assert!(
        last_error.starts_with("authentication failed: AADSTS7000215"),
        "{last_error}"
    );
    assert!(!last_error.contains("not-the-app-secret"), "{last_error}");

    std::fs::write(&secret_file, "the-real-app-secret\n").expect("write");
    let results = env.poll_once(&config).await;
    results[0].1.as_ref().expect("the right secret signs in");
    let form = env.idp.last_form("password").expect("password grant made");
    assert_eq!(
        form.get("client_secret").map(String::as_str),
        Some("the-real-app-secret")
    );
    assert_eq!(
        form.get("client_id").map(String::as_str),
        Some(env.idp.client_id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_folder_is_named_in_last_error() {
    let env = Env::start();
    let mut reader = env.reader("helpdesk");
    reader.folder = "Tickets/Nope".into();
    let config = env.config(&[reader]);
    let last_error = env.failing_poll(&config, "helpdesk").await;
    // Dovecot answers without a response code ([NONEXISTENT] would say
    // "does not exist"): the folder is named with the server's words.
    assert!(
        last_error.starts_with("the server refused to open folder \"Tickets/Nope\": ")
            && last_error.contains("Mailbox doesn't exist"),
        "{last_error}"
    );
}

/// Exchange Online can accept AUTHENTICATE and then answer every command
/// with `BAD User is authenticated but not connected`. Dovecot never does
/// that, so a scripted TLS server plays that part of Exchange here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_but_not_connected_is_a_failure_not_a_success() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let env = Env::start();
    let pki = common::certs::TestPki::generate(&["127.0.0.1"]);
    let files = pki.write_to(&env.path("exchange-like"));
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_file(&files.key_file).expect("key pem");
    let server_config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("handshake");
        let mut conn = BufReader::new(tls);
        conn.get_mut()
            .write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] Exchange-like ready\r\n")
            .await
            .expect("greet");
        let mut commands = Vec::new();
        let mut line = String::new();
        // The client may hang up without a TLS close_notify; that ends the script.
        while conn.read_line(&mut line).await.unwrap_or(0) > 0 {
            let (tag, command) = line.trim_end().split_once(' ').unwrap_or(("*", ""));
            let (tag, command) = (tag.to_string(), command.to_ascii_uppercase());
            commands.push(command.clone());
            let reply = if command.starts_with("AUTHENTICATE") {
                conn.get_mut().write_all(b"+ \r\n").await.expect("continue");
                line.clear();
                conn.read_line(&mut line).await.expect("sasl response");
                format!("{tag} OK AUTHENTICATE completed.\r\n")
            } else if command.starts_with("LOGOUT") {
                format!("* BYE\r\n{tag} OK LOGOUT completed.\r\n")
            } else {
                format!("{tag} BAD User is authenticated but not connected.\r\n")
            };
            conn.get_mut()
                .write_all(reply.as_bytes())
                .await
                .expect("reply");
            line.clear();
        }
        commands
    });

    let mut reader = env.reader("exchange");
    reader.port = port;
    reader.trust_test_ca = false;
    reader.extra = format!("ca_file = \"{}\"\n", files.ca_file.display());
    let config = env.config(&[reader]);
    let results = env.poll_once(&config).await;
    assert!(
        results[0].1.is_err(),
        "a session that refuses commands is not a success"
    );
    let last_error = env.last_error("exchange").await.expect("set");
    assert!(
        last_error.starts_with("authentication failed:"),
        "{last_error}"
    );
    assert!(
        last_error.contains("User is authenticated but not connected"),
        "{last_error}"
    );
    let commands = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server finished")
        .expect("server task");
    assert!(
        commands[0].starts_with("AUTHENTICATE XOAUTH2"),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.starts_with("SELECT")),
        "{commands:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_sharing_an_account_make_one_token_request() {
    let env = Env::start();
    env.dovecot.create_folder(USER, "Support");
    env.dovecot.deliver(USER, &mail(1));
    env.dovecot.deliver_to(USER, "Support", &mail(2));
    let mut support = env.reader("support");
    support.folder = "Support".into();
    let config = env.config(&[env.reader("inbox"), support]);

    let results = env.poll_once(&config).await;
    for (name, r) in &results {
        assert!(r.is_ok(), "{name}: {r:?}");
    }
    assert_eq!(env.idp.count("password"), 1);
    assert_eq!(
        env.idp.total_requests(),
        1,
        "one token request for both readers"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_names_aadsts50126_and_recovers_after_the_fix() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(7));
    env.set_password(USER, "wrong");
    let config = env.config(&[env.reader("helpdesk")]);

    let results = env.poll_once(&config).await;
    let err = results[0]
        .1
        .as_ref()
        .expect_err("wrong password fails")
        .to_string();
    assert!(
        err.starts_with("authentication failed: AADSTS50126"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the password never appears: {err}");
    let last_error = env.last_error("helpdesk").await.expect("last_error set");
    assert!(last_error.contains("AADSTS50126"), "{last_error}");
    assert!(
        last_error.contains("invalid username or password"),
        "{last_error}"
    );
    assert_eq!(
        env.count("SELECT consecutive_failures FROM readers").await,
        1
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 0);

    env.set_password(USER, PASSWORD);
    let results = env.poll_once(&config).await;
    results[0].1.as_ref().expect("recovered");
    assert_eq!(env.last_error("helpdesk").await, None);
    assert_eq!(
        env.count("SELECT consecutive_failures FROM readers").await,
        0
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_gives_a_clear_error() {
    let env = Env::start();
    let mut reader = env.reader("helpdesk");
    reader.trust_test_ca = false;
    let config = env.config(&[reader]);

    let last_error = env.failing_poll(&config, "helpdesk").await;
    assert!(
        last_error.starts_with("TLS: certificate for 127.0.0.1 not trusted"),
        "{last_error}"
    );
    assert!(
        last_error.contains("ca_file"),
        "says how to fix it: {last_error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_hanging_servers_do_not_stall_a_healthy_reader() {
    let env = Env::start();
    // One port refuses connections; another accepts and then says nothing.
    let refused_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut dead = env.reader("dead");
    dead.port = refused_port;
    let mut hanging = env.reader("hanging");
    hanging.port = silent.local_addr().expect("addr").port();
    hanging.timeout = "3s";
    // The healthy reader is listed last, so it cannot be served first by luck.
    let config = env.config(&[dead, hanging, env.reader("healthy")]);

    let (cancel, daemon) = env.spawn_daemon(&config).await;
    for i in 0..3 {
        env.dovecot.deliver(USER, &mail(i));
        let want = i as i64 + 1;
        assert!(
            env.wait_for_tickets(want, Duration::from_secs(15)).await,
            "the healthy reader stalled at ticket {want}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || async {
            env.last_error("hanging").await.is_some()
        })
        .await,
        "the hanging reader times out"
    );
    cancel.cancel();
    daemon.await.expect("daemon task").expect("daemon ran");

    assert_eq!(
        env.last_error("dead").await.as_deref(),
        Some(format!("connection refused: 127.0.0.1:{refused_port}").as_str())
    );
    let hanging_error = env.last_error("hanging").await.expect("set");
    assert!(
        hanging_error.starts_with("timed out after 3s in the TLS handshake with 127.0.0.1:"),
        "{hanging_error}"
    );
    assert_eq!(env.last_error("healthy").await, None);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mime_still_becomes_a_ticket() {
    let env = Env::start();
    env.dovecot.deliver(USER, &malformed_mail());
    env.dovecot
        .deliver(USER, b"\x00\x01 this is not a mail at all \xff\xfe\r\n");
    env.dovecot.deliver(USER, &mail(1));
    let config = env.config(&[env.reader("helpdesk")]);

    let results = env.poll_once(&config).await;
    let report = results[0]
        .1
        .as_ref()
        .expect("a bad mail does not fail the poll");
    assert_eq!(report.created, 3);
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM emails WHERE body_text LIKE '%not a mail at all%'")
            .await,
        1,
        "unparseable mail keeps its raw text"
    );
    // Both bad mails say what could not be read as sent: the one that is
    // no mail at all, and the raw 8-bit headers of the malformed one.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM emails WHERE parse_note IS NOT NULL")
            .await,
        2
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM emails WHERE parse_note LIKE '%could not be parsed%'
               AND body_text LIKE '%not a mail at all%'"
        )
        .await,
        1
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM emails WHERE parse_note LIKE '%Subject was raw 8-bit text%'"
        )
        .await,
        1
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM emails WHERE dedup_key LIKE 'sha256:%'")
            .await,
        2,
        "mails without a Message-ID are keyed by their content"
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM emails WHERE from_addr = 'broken@example.net'")
            .await,
        1,
        "the broken mail keeps what could be read"
    );
    // Nothing is retried forever: the next poll is clean and adds nothing.
    let results = env.poll_once(&config).await;
    assert_eq!(results[0].1.as_ref().expect("clean").fetched, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uidvalidity_change_does_not_recreate_tickets() {
    let env = Env::start();
    env.dovecot.create_folder(USER, "Queue");
    for i in 0..5 {
        env.dovecot.deliver_to(USER, "Queue", &mail(i));
    }
    let mut reader = env.reader("queue");
    reader.folder = "Queue".into();
    let config = env.config(&[reader]);
    env.poll_once(&config).await[0]
        .1
        .as_ref()
        .expect("first poll");
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 5);

    // Recreate the folder: new UIDVALIDITY, the same five mails plus one.
    env.dovecot
        .doveadm(&["mailbox", "delete", "-u", USER, "Queue"]);
    env.dovecot.create_folder(USER, "Queue");
    for i in 0..6 {
        env.dovecot.deliver_to(USER, "Queue", &mail(i));
    }
    let results = env.poll_once(&config).await;
    let report = results[0].1.as_ref().expect("second poll");
    assert_eq!((report.created, report.duplicates), (1, 5));
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 6);
    assert_eq!(
        env.count("SELECT COUNT(DISTINCT uidvalidity) FROM source_positions")
            .await,
        2
    );
}

#[test]
fn check_and_status_commands_report_per_reader() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..4).map(mail));
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut dead = env.reader("dead");
    dead.port = dead_port;
    let config = env.write_config(&[env.reader("helpdesk"), dead]);
    common::setup::ensure_database(&config);

    let out = std::process::Command::new(binary())
        .args([
            "-c",
            config.to_str().expect("utf-8 path"),
            "check",
            "helpdesk",
        ])
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "helpdesk: ok, 4 messages, 4 not yet ingested (first contact: backfill = \"unseen\" \
         would take 4 of 4 (skipping 0)); capabilities: IDLE MOVE UIDPLUS"
    );

    let out = std::process::Command::new(binary())
        .env("MAIL2TICKET_CONFIG", &config)
        .arg("check")
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("helpdesk: ok, 4 messages"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "dead: error: connection refused: 127.0.0.1:{dead_port}"
        )),
        "{stdout}"
    );

    let out = std::process::Command::new(binary())
        .args(["-c", config.to_str().expect("utf-8 path"), "status"])
        .output()
        .expect("run status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let dead_line = stdout
        .lines()
        .find(|l| l.starts_with("dead"))
        .expect("dead row");
    assert!(dead_line.contains("connection refused"), "{stdout}");
    let ok_line = stdout
        .lines()
        .find(|l| l.starts_with("helpdesk"))
        .expect("helpdesk row");
    assert!(
        ok_line.trim_end().ends_with('-'),
        "no error shown for a healthy reader: {stdout}"
    );

    let out = std::process::Command::new(binary())
        .args([
            "-c",
            config.to_str().expect("utf-8 path"),
            "check",
            "nosuch",
        ])
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reader named \"nosuch\""));
}

#[test]
fn broken_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[daemon]\npoll_interval = \"60s\"\npoll_intervall = \"5s\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(binary())
        .args(["-c", path.to_str().expect("utf-8"), "run", "--once"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3: daemon.poll_intervall: unknown field",
            path.display()
        )),
        "{stderr}"
    );
}

/// SIGTERM in the middle of a large mailbox: the daemon finishes the batch
/// it is committing, exits 0, and a later run takes up exactly the rest.
#[test]
fn sigterm_mid_batch_exits_cleanly_and_loses_nothing() {
    const MAILS: usize = 1000;
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let mut reader = env.reader("helpdesk");
    reader.batch_size = Some(5);
    let config = env.config(&[reader]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    runtime.block_on(env.init_db(&config));
    let mut child = ChildGuard(
        std::process::Command::new(binary())
            .args(["-c", config.path.to_str().expect("utf-8"), "run"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start daemon"),
    );
    let started = runtime.block_on(wait_until(Duration::from_secs(20), || async {
        env.count("SELECT COUNT(*) FROM tickets").await > 0
    }));
    assert!(started, "the daemon started ingesting");
    child.terminate();
    let exit = child.0.wait().expect("wait");
    assert_eq!(exit.code(), Some(0), "SIGTERM exits 0");
    let at_stop = runtime.block_on(env.count("SELECT COUNT(*) FROM tickets"));
    assert!(
        at_stop < MAILS as i64,
        "the signal arrived mid-mailbox ({at_stop} tickets)"
    );

    run_once_binary(&config.path);
    runtime.block_on(async {
        assert_eq!(
            env.count("SELECT COUNT(*) FROM tickets").await,
            MAILS as i64
        );
        assert_eq!(
            env.count("SELECT COUNT(DISTINCT message_id) FROM emails")
                .await,
            MAILS as i64
        );
    });
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), MAILS);
}

/// A reader stuck on a silent server does not hold up shutdown beyond
/// `shutdown_timeout`; the healthy reader's work is kept.
#[test]
fn shutdown_does_not_wait_forever_for_a_hanging_server() {
    let env = Env::start();
    env.dovecot.deliver(USER, &mail(1));
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut hanging = env.reader("hanging");
    hanging.port = silent.local_addr().expect("addr").port();
    hanging.timeout = "300s";
    let text = env
        .config_toml(&[env.reader("healthy"), hanging])
        .replace("[daemon]\n", "[daemon]\nshutdown_timeout = \"1s\"\n");
    let config = env.path("config.toml");
    std::fs::write(&config, text).expect("write config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let loaded = mail2ticket::config::Config::load(&config).expect("valid config");
    runtime.block_on(env.init_db(&loaded));
    let mut child = ChildGuard(
        std::process::Command::new(binary())
            .args(["-c", config.to_str().expect("utf-8"), "run"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start daemon"),
    );
    assert!(
        runtime.block_on(env.wait_for_tickets(1, Duration::from_secs(20))),
        "the healthy reader ingested its mail"
    );
    child.terminate();
    // Generous bound: the point is "not the 300 s network timeout".
    let exit = child
        .wait_for_exit(Duration::from_secs(60))
        .expect("the daemon did not stop");
    assert_eq!(exit.code(), Some(0));
    drop(silent);
}

/// Kills the daemon with SIGKILL again and again while it works through a
/// big mailbox in small batches, then lets it finish: every mail is exactly
/// one ticket, and every ticket's mail ends up flagged.
#[test]
fn killing_the_daemon_mid_batch_never_duplicates_or_loses() {
    const MAILS: usize = 1500;
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let mut reader = env.reader("helpdesk");
    reader.batch_size = Some(5);
    let config = env.write_config(&[reader]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");

    let mut intermediate = Vec::new();
    for round in 0..12u64 {
        let mut child = ChildGuard(
            std::process::Command::new(binary())
                .args(["-c", config.to_str().expect("utf-8"), "run"])
                .env("RUST_LOG", "error")
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start daemon"),
        );
        std::thread::sleep(Duration::from_millis(
            150 + rand::random_range(0..200) + round * 10,
        ));
        child.0.kill().expect("SIGKILL");
        child.0.wait().expect("reap");
        if env.db_file().exists() {
            intermediate.push(runtime.block_on(env.count("SELECT COUNT(*) FROM tickets")));
        }
    }
    assert!(
        intermediate.iter().any(|&n| n > 0 && n < MAILS as i64),
        "the kills should land mid-mailbox: counts after each kill {intermediate:?}"
    );

    run_once_binary(&config);
    runtime.block_on(async {
        assert_eq!(
            env.count("SELECT COUNT(*) FROM tickets").await,
            MAILS as i64
        );
        assert_eq!(
            env.count("SELECT COUNT(DISTINCT message_id) FROM emails")
                .await,
            MAILS as i64
        );
        assert_eq!(
            env.count("SELECT COUNT(*) FROM source_positions").await,
            MAILS as i64
        );
        assert_eq!(
            env.count("SELECT COUNT(*) FROM source_positions WHERE after_state = 'pending'")
                .await,
            0
        );
    });
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), MAILS);
}

/// With every log target at TRACE, a full sign-in, refresh and poll leaves
/// no password, token or XOAUTH2 string in the output or the database.
#[test]
fn no_secret_reaches_logs_output_or_database() {
    use base64::Engine as _;

    let env = Env::start_with_plain_password();
    env.idp.set_token_lifetime(Duration::from_secs(1));
    env.dovecot.deliver_many(USER, (0..3).map(mail));
    // IMAP and POP3 with XOAUTH2, and both with a password.
    let config = env.write_config(&[
        env.reader("helpdesk"),
        env.pop3_reader("pop"),
        env.with_plain_auth(env.reader("imap-plain")),
        env.with_plain_auth(env.pop3_reader("pop-plain")),
    ]);
    let mut output = Vec::new();
    for round in 0..2 {
        if round > 0 {
            // Let the access token expire so the second run refreshes.
            std::thread::sleep(Duration::from_millis(1200));
            env.dovecot.deliver(USER, &mail(10));
        }
        let out = std::process::Command::new(binary())
            .args(["-c", config.to_str().expect("utf-8"), "run", "--once"])
            // The second run also names async-imap's wire module: a more
            // specific directive must not lift the credential cap.
            .env(
                "RUST_LOG",
                if round == 0 {
                    "trace"
                } else {
                    "trace,async_imap=trace,async_imap::imap_stream=trace"
                },
            )
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        output.extend_from_slice(&out.stdout);
        output.extend_from_slice(&out.stderr);
    }
    assert!(
        env.idp.count("refresh_token") >= 1,
        "the flow included a refresh"
    );
    let text = String::from_utf8_lossy(&output);
    assert!(text.contains("TRACE"), "trace logging was on");

    let mut secrets = vec![PASSWORD.to_string(), PLAIN_PASSWORD.to_string()];
    for plain in [
        format!("\0{USER}\0{PLAIN_PASSWORD}"),
        format!("{USER}\0{PLAIN_PASSWORD}"),
    ] {
        secrets.push(base64::engine::general_purpose::STANDARD.encode(plain));
    }
    secrets.extend(env.idp.issued_refresh_tokens());
    for token in env.idp.issued_access_tokens() {
        let sasl = format!("user={USER}\x01auth=Bearer {token}\x01\x01");
        secrets.push(base64::engine::general_purpose::STANDARD.encode(sasl));
        secrets.push(token);
    }
    assert!(
        secrets.len() >= 5,
        "password, two refresh and two access tokens: {}",
        secrets.len()
    );
    assert_no_secret_in(&text, &env.database_bytes(), &secrets);
}

/// A mail over max_email_size between ordinary ones: one poll makes a
/// ticket of each, in batches bounded by batch_bytes; the big one is
/// fetched only up to the limit (a partial FETCH), and its row has its
/// full size and says what was left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_over_max_email_size_is_fetched_only_up_to_it() {
    let env = Env::start();
    env.set_daemon_extra("\n[tickets]\nmax_email_size = \"1 MiB\"\n");
    let big = common::mail_of_size(1, 3 << 20);
    env.dovecot
        .deliver_many(USER, [mail(0), big.clone(), mail(2), mail(3)]);
    let proxy = Proxy::start(env.dovecot.imap_port());
    let mut reader = env.reader("helpdesk").plaintext(proxy.port());
    // The big mail counts as the 1 MiB fetched of it: batches [0], [1],
    // [2, 3].
    reader.extra = "batch_bytes = \"1 MiB\"\n".into();
    let config = env.config(&[reader]);

    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!((report.fetched, report.created), (4, 4));
    let lines = proxy.client_lines();
    let fetches: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("UID FETCH") && l.contains("BODY.PEEK"))
        .collect();
    assert_eq!(fetches.len(), 3, "{fetches:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("UID FETCH") && l.contains("RFC822.SIZE")),
        "sizes are asked for first: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("UID FETCH") && l.contains("BODY.PEEK[]<0.1048576>")),
        "{lines:?}"
    );

    env.assert_only_one_mail_was_cut(1, big.len()).await;
}

/// `timeout` is "no progress for that long": a large FETCH response that
/// keeps trickling in for several timeouts is waited for, one that stops
/// is given up on with the usual timeout error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fetch_outlasts_the_timeout_and_a_stalled_one_fails() {
    let env = Env::start();
    env.dovecot
        .deliver_many(USER, [common::mail_of_size(0, 640 << 10)]);
    let proxy = Proxy::start(env.dovecot.imap_port());
    let mut reader = env.reader("helpdesk").plaintext(proxy.port());
    reader.timeout = "2s";
    let config = env.config(&[reader]);

    // 640 KiB in 16 KiB pieces 200 ms apart: about 8 s, four timeouts.
    proxy.throttle(Some(Throttle {
        chunk: 16 << 10,
        pause: Duration::from_millis(200),
        stall_after: None,
    }));
    let started = std::time::Instant::now();
    let report = env.poll_ok(&config, "helpdesk").await;
    assert_eq!(report.created, 1);
    assert!(
        started.elapsed() > Duration::from_secs(6),
        "the transfer should have been slow: {:?}",
        started.elapsed()
    );

    // The next mail stops after 100 KiB, with the connection still open.
    env.dovecot
        .deliver_many(USER, [common::mail_of_size(1, 640 << 10)]);
    proxy.throttle(Some(Throttle {
        chunk: 16 << 10,
        pause: Duration::from_millis(10),
        stall_after: Some(100 << 10),
    }));
    let started = std::time::Instant::now();
    let error = env.failing_poll(&config, "helpdesk").await;
    assert!(
        error.contains("IMAP server did not answer UID FETCH within 2s"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 1);
}
