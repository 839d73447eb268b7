//! The POP3 reader end to end: a real Dovecot (POP3S, STLS, or clear text
//! through the recording proxy), the IdP stand-in, a real SQLite file.
//! What POP3 has ingested is remembered by UIDL in `pop3_uidls`, written in
//! the ticket's transaction; `after = "delete"` sends DELE only for
//! committed mails, then QUIT.

use mail2ticket_testkit as common;

use std::sync::{Arc, Mutex};

use common::proxy::is_command;
use common::setup::{Env, USER, check_binary, check_capabilities, run_once_binary};
use common::{Proxy, mail};
use tokio::task::block_in_place;

async fn uidl_rows(env: &Env) -> i64 {
    env.count("SELECT COUNT(*) FROM pop3_uidls").await
}

/// `check` for one reader; asserts success and returns its line.
fn check_line(config: &std::path::Path, reader: &str) -> String {
    let (code, stdout, stderr) = check_binary(config, Some(reader));
    assert_eq!(code, Some(0), "check failed: {stdout}{stderr}");
    stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_leaves_the_mailbox_alone_then_delete_empties_it_exactly_once() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..100).map(mail));
    // No `after`: keep is POP3's default.
    let config = env.config(&[env.pop3_reader("pop")]);
    let line = block_in_place(|| check_line(&config.path, "pop"));
    assert!(
        line.starts_with("pop: ok, 100 messages, 100 not yet ingested"),
        "{line}"
    );
    assert!(
        check_capabilities(&line).iter().any(|c| c == "UIDL"),
        "{line}"
    );

    let report = env.poll_ok(&config, "pop").await;
    assert_eq!(
        (report.fetched, report.created, report.duplicates),
        (100, 100, 0)
    );
    env.assert_exactly_once(100).await;
    assert_eq!(uidl_rows(&env).await, 100);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pop3_uidls WHERE reader = 'pop'")
            .await,
        100
    );
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 100, "kept");

    // A fresh process: the UIDLs, not a session, remember what is done.
    block_in_place(|| run_once_binary(&config.path));
    env.assert_exactly_once(100).await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 100, "still kept");
    let line = block_in_place(|| check_line(&config.path, "pop"));
    assert!(
        line.starts_with("pop: ok, 100 messages, 0 not yet ingested"),
        "{line}"
    );

    // Five more, and the reader switched to delete: the new ones become
    // tickets, and every ingested mail, old and new, leaves the server.
    env.dovecot.deliver_many(USER, (100..105).map(mail));
    let config = env.config(&[env.pop3_reader("pop").after("delete")]);
    let report = env.poll_ok(&config, "pop").await;
    assert_eq!((report.fetched, report.created), (5, 5));
    env.assert_exactly_once(105).await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0, "deleted");
    assert_eq!(uidl_rows(&env).await, 105, "deleted mails keep their row");
    assert_eq!(env.pending("pop3_uidls").await, 0);

    let report = env.poll_ok(&config, "pop").await;
    assert_eq!((report.fetched, report.created), (0, 0));
    env.assert_exactly_once(105).await;
}

/// SIGKILL again and again while a POP3 reader with `after = "delete"`
/// works through a mailbox in small batches: every mail is one ticket, and
/// the mailbox ends up empty.
#[test]
fn killing_the_pop3_daemon_repeatedly_never_duplicates_or_loses() {
    const MAILS: usize = 1000;
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let mut reader = env.pop3_reader("pop").after("delete");
    reader.batch_size = Some(5);
    let config = env.write_config(&[reader]);

    let counts = env.kill_daemon_repeatedly(&config, MAILS, 12);
    assert!(
        counts.iter().any(|&n| n > 0 && n < MAILS as i64),
        "the kills should land mid-mailbox: tickets after each kill {counts:?}"
    );

    run_once_binary(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        env.assert_exactly_once(MAILS).await;
        assert_eq!(uidl_rows(&env).await, MAILS as i64);
        assert_eq!(env.pending("pop3_uidls").await, 0);
    });
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0);
}

/// Killed after the commit, before the first DELE reached the server: the
/// tickets exist, their UIDLs are pending, the mail is still there; the
/// next run deletes it without making a ticket twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_dele_the_next_run_deletes_without_duplicates() {
    const MAILS: usize = 20;
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..MAILS).map(mail));
    let reader = env.pop3_reader("pop").after("delete");
    env.kill_at_after_step_then_rerun(
        reader,
        env.dovecot.pop3_port(),
        &["DELE"],
        "pop3_uidls",
        MAILS,
    )
    .await;
    assert_eq!(uidl_rows(&env).await, MAILS as i64);
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0);
}

/// POP3 XOAUTH2 is the two-step form: `AUTH XOAUTH2` alone, then (after
/// the server's `+`) the base64 response on its own line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_is_sent_in_two_steps() {
    use base64::Engine as _;

    let env = Env::start();
    env.dovecot.deliver(USER, &mail(1));
    let proxy = Proxy::start(env.dovecot.pop3_port());
    let config = env.config(&[env.pop3_reader("pop").plaintext(proxy.port())]);
    let report = env.poll_ok(&config, "pop").await;
    assert_eq!(report.created, 1);

    // The lines hold a token: assertion messages show only their shape.
    let lines = proxy.client_lines();
    let commands: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let at = lines
        .iter()
        .position(|l| is_command(l, "AUTH"))
        .unwrap_or_else(|| panic!("no AUTH command; commands: {commands:?}"));
    assert!(
        lines[at].eq_ignore_ascii_case("AUTH XOAUTH2"),
        "AUTH XOAUTH2 must come alone, without an initial response ({} characters)",
        lines[at].len()
    );
    let response = lines.get(at + 1).expect("a line after AUTH XOAUTH2");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(response)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let valid = env
        .idp
        .issued_access_tokens()
        .iter()
        .any(|t| decoded == format!("user={USER}\x01auth=Bearer {t}\x01\x01"));
    assert!(
        valid,
        "the line after AUTH XOAUTH2 is not the base64 XOAUTH2 response"
    );
    for absent in ["USER", "PASS", "DELE"] {
        assert!(
            !lines.iter().any(|l| is_command(l, absent)),
            "{absent} sent; commands: {commands:?}"
        );
    }
    assert!(
        lines.iter().any(|l| is_command(l, "UIDL")),
        "UIDL used; commands: {commands:?}"
    );
    assert!(
        lines.last().is_some_and(|l| is_command(l, "QUIT")),
        "the session ends with QUIT; commands: {commands:?}"
    );
}

/// A tiny POP3 server without UIDL: greets, offers CAPA without UIDL,
/// accepts AUTH XOAUTH2 (either form), answers UIDL with -ERR, and would
/// serve one mail to a client that went on anyway. Returns its port and
/// the commands it received (SASL responses masked).
fn pop3_server_without_uidl() -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let seen = commands.clone();
    let raw = mail(1);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let _ = conn.write_all(b"+OK POP3 server without UIDL ready\r\n");
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let command = line.trim_end().to_ascii_uppercase();
                seen.lock().expect("lock").push(command.clone());
                let verb = command.split(' ').next().unwrap_or("").to_owned();
                let reply: Vec<u8> = match verb.as_str() {
                    "CAPA" => b"+OK\r\nTOP\r\nUSER\r\nRESP-CODES\r\nSASL XOAUTH2\r\n.\r\n".to_vec(),
                    "AUTH" if command == "AUTH XOAUTH2" => {
                        let _ = conn.write_all(b"+ \r\n");
                        line.clear();
                        let _ = reader.read_line(&mut line);
                        seen.lock().expect("lock").push("<sasl response>".into());
                        b"+OK Logged in.\r\n".to_vec()
                    }
                    "AUTH" => b"+OK Logged in.\r\n".to_vec(),
                    "UIDL" => b"-ERR Unknown command: UIDL\r\n".to_vec(),
                    "STAT" => format!("+OK 1 {}\r\n", raw.len()).into_bytes(),
                    "LIST" => format!("+OK 1 messages\r\n1 {}\r\n.\r\n", raw.len()).into_bytes(),
                    "RETR" | "TOP" => {
                        let mut r = b"+OK\r\n".to_vec();
                        r.extend_from_slice(&raw);
                        r.extend_from_slice(b".\r\n");
                        r
                    }
                    "NOOP" | "DELE" | "RSET" => b"+OK\r\n".to_vec(),
                    "QUIT" => b"+OK Bye\r\n".to_vec(),
                    _ => b"-ERR Unknown command\r\n".to_vec(),
                };
                let _ = conn.write_all(&reply);
                if verb == "QUIT" {
                    break;
                }
                line.clear();
            }
        }
    });
    (port, commands)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_uidl_is_refused() {
    let env = Env::start();
    let (port, commands) = pop3_server_without_uidl();
    let config = env.config(&[env.pop3_reader("nouidl").plaintext(port)]);
    let last_error = env.failing_poll(&config, "nouidl").await;
    assert!(last_error.contains("UIDL"), "{last_error}");
    assert_eq!(env.count("SELECT COUNT(*) FROM tickets").await, 0);
    let commands = commands.lock().expect("lock").clone();
    assert!(
        commands
            .iter()
            .any(|c| c == "<sasl response>" || c.starts_with("AUTH XOAUTH2")),
        "the reader reached the server and signed in: {commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.starts_with("DELE")),
        "{commands:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stls_with_plain_auth() {
    let env = Env::start_with_plain_password();
    let reader = env.pop3_reader("pop");
    env.assert_plain_auth_over_starttls(reader, env.dovecot.pop3_port(), "STLS", "pop3-login")
        .await;
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 2, "kept");
}

/// A mail over max_email_size between ordinary ones: one poll makes a
/// ticket of each; RETR keeps only the first max_email_size bytes of the
/// big one (and reads the rest to the end, so the session goes on), and
/// its row has its full size and says what was left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_over_max_email_size_is_read_only_up_to_it() {
    let env = Env::start();
    env.set_daemon_extra("\n[tickets]\nmax_email_size = \"1 MiB\"\n");
    let big = common::mail_of_size(1, 3 << 20);
    env.dovecot
        .deliver_many(USER, [mail(0), big.clone(), mail(2), mail(3)]);
    let proxy = Proxy::start(env.dovecot.pop3_port());
    let mut reader = env
        .pop3_reader("pop")
        .after("delete")
        .plaintext(proxy.port());
    // The big mail counts as the 1 MiB read of it: batches [1], [2], [3, 4],
    // each deleted after its commit.
    reader.extra = "batch_bytes = \"1 MiB\"\n".into();
    let config = env.config(&[reader]);

    let report = env.poll_ok(&config, "pop").await;
    assert_eq!((report.fetched, report.created), (4, 4));
    assert_eq!(env.dovecot.message_count(USER, "INBOX"), 0, "all deleted");
    let steps: Vec<String> = proxy
        .client_lines()
        .into_iter()
        .filter(|l| is_command(l, "RETR") || is_command(l, "DELE") || is_command(l, "LIST"))
        .collect();
    assert_eq!(
        steps,
        [
            "LIST", "RETR 1", "DELE 1", "RETR 2", "DELE 2", "RETR 3", "RETR 4", "DELE 3", "DELE 4"
        ],
    );

    env.assert_only_one_mail_was_cut(1, big.len()).await;
}
