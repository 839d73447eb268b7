//! Self-test of the integration-test harness (testkit/): the real Dovecot
//! with XOAUTH2 behind the IdP stand-in, the proxy and the mail helpers (the
//! stand-in's own tests are in testkit/tests/). No library code.

use mail2ticket_testkit as common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::idp_client::*;
use common::imap::{LineClient, XOAuth2, imaps_connect, imaps_xoauth2, pop3s_greeting};
use common::{
    Action, Dovecot, DovecotOptions, IdP, NO_IDLE_NO_MOVE_CAPABILITY, OUTLOOK_SCOPE, Proxy, mail,
    mail_of_size, malformed_mail,
};
use serde_json::Value;

#[tokio::test]
async fn xoauth2_login_over_imaps_selects_inbox() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let started = Instant::now();
    let dovecot = Dovecot::start(&idp.introspection_url());
    eprintln!("Dovecot started in {:?}", started.elapsed());

    for i in 1..=3 {
        dovecot.deliver(USER, &mail(i));
    }
    let token = access_token(&idp, USER, PASSWORD).await;

    let mut session = imaps_xoauth2(dovecot.imaps_port(), dovecot.ca_file(), USER, &token)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dovecot.log_tail()));
    let inbox = session.select("INBOX").await.expect("SELECT INBOX failed");
    assert_eq!(inbox.exists, 3, "EXISTS after delivering 3 mails");
    let caps = session.capabilities().await.expect("CAPABILITY failed");
    for cap in ["IDLE", "MOVE", "UIDPLUS"] {
        assert!(caps.has_str(cap), "server lacks {cap}");
    }
    session.logout().await.expect("LOGOUT failed");

    assert!(idp.introspections() >= 1, "Dovecot never asked the IdP");
    assert_eq!(dovecot.message_count(USER, "INBOX"), 3);
    assert_eq!(dovecot.seen_count(USER, "INBOX"), 0);
}

#[tokio::test]
async fn expired_and_wrong_tokens_are_rejected() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    idp.add_user("bob@contoso.example", "bobs password");
    let dovecot = Dovecot::start(&idp.introspection_url());
    let (port, ca) = (dovecot.imaps_port(), dovecot.ca_file());

    // Garbage token: the server's JSON error challenge is answered empty.
    let client = imaps_connect(port, ca).await;
    let mut auth = XOAuth2::new(USER, "not-a-token");
    let err = client
        .authenticate("XOAUTH2", &mut auth)
        .await
        .expect_err("garbage token was accepted");
    let challenge = auth
        .error_challenge
        .clone()
        .unwrap_or_else(|| panic!("no JSON error challenge; error {:?}", err.0));
    let challenge: Value = serde_json::from_str(&challenge)
        .unwrap_or_else(|e| panic!("error challenge {challenge:?} is not JSON: {e}"));
    assert!(challenge["status"].is_string(), "odd challenge {challenge}");

    // A live token for another user is refused (username mismatch).
    let bobs = access_token(&idp, "bob@contoso.example", "bobs password").await;
    assert!(
        imaps_xoauth2(port, ca, USER, &bobs).await.is_err(),
        "bob's token opened alice's mailbox"
    );

    // A token works while it lives and fails once expired.
    idp.set_token_lifetime(Duration::from_secs(1));
    let (_, body) = password_grant(&idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    assert_eq!(body["expires_in"], 1, "expires_in follows the lifetime");
    let short_lived = body["access_token"].as_str().unwrap().to_owned();
    idp.set_token_lifetime(Duration::from_secs(60));
    let token = access_token(&idp, USER, PASSWORD).await;
    imaps_xoauth2(port, ca, USER, &token)
        .await
        .unwrap_or_else(|e| panic!("fresh token refused: {e}\n{}", dovecot.log_tail()))
        .logout()
        .await
        .expect("LOGOUT failed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = imaps_xoauth2(port, ca, USER, &short_lived)
        .await
        .expect_err("expired token was accepted");
    assert!(
        err.contains("error challenge: {"),
        "no JSON challenge: {err}"
    );
    // ...while the long-lived one still works.
    imaps_xoauth2(port, ca, USER, &token)
        .await
        .unwrap_or_else(|e| panic!("live token refused: {e}\n{}", dovecot.log_tail()));

    let log = dovecot.log();
    assert!(
        log.contains("oauth2") || log.contains("auth"),
        "Dovecot logged nothing about auth:\n{}",
        dovecot.log_tail()
    );
}

/// `cut_after`: each budgeted connection gets exactly its budget of the
/// server's bytes and is then closed; later ones get everything.
#[test]
fn proxy_cuts_connections_after_their_budget() {
    const SENT: usize = 10_000;
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target_port = target.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in target.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.write_all(&[b'x'; SENT]);
        }
    });
    let proxy = Proxy::start(target_port);
    proxy.cut_after(&[1_000, 3_000]);
    let received = |_| {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        got.len()
    };
    let lengths: Vec<usize> = (0..3).map(received).collect();
    assert_eq!(lengths, [1_000, 3_000, SENT]);
    assert_eq!(proxy.cuts_done(), 2);
}

#[tokio::test]
async fn pop3s_and_plain_listeners_answer() {
    let idp = IdP::start();
    let dovecot = Dovecot::start(&idp.introspection_url());
    let greeting = pop3s_greeting(dovecot.pop3s_port(), dovecot.ca_file()).await;
    assert!(greeting.starts_with("+OK"), "POP3S greeting: {greeting:?}");

    // The plain ports greet in clear text and offer STARTTLS / STLS.
    let mut imap = std::net::TcpStream::connect(("127.0.0.1", dovecot.imap_port())).unwrap();
    imap.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = imap.read(&mut buf).unwrap();
    let greeting = String::from_utf8_lossy(&buf[..n]);
    assert!(greeting.starts_with("* OK"), "IMAP greeting {greeting:?}");
    assert!(greeting.contains("STARTTLS"), "no STARTTLS: {greeting:?}");
    assert!(greeting.contains("LOGINDISABLED"), "plaintext auth allowed");
    let mut pop3 = std::net::TcpStream::connect(("127.0.0.1", dovecot.pop3_port())).unwrap();
    pop3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = pop3.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"+OK"));
    pop3.write_all(b"CAPA\r\n").unwrap();
    let mut capa = Vec::new();
    while !capa.ends_with(b"\r\n.\r\n") {
        let n = pop3.read(&mut buf).unwrap();
        assert!(n > 0, "POP3 closed during CAPA");
        capa.extend_from_slice(&buf[..n]);
    }
    let capa = String::from_utf8_lossy(&capa);
    assert!(capa.contains("STLS") && capa.contains("UIDL"), "{capa}");
}

#[tokio::test]
async fn folders_flags_and_bulk_delivery() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start(&idp.introspection_url());

    let t = Instant::now();
    dovecot.deliver_many(USER, (0..10_000).map(mail));
    let took = t.elapsed();
    eprintln!("delivered 10,000 mails in {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "bulk delivery too slow: {took:?}"
    );
    assert_eq!(dovecot.message_count(USER, "INBOX"), 10_000);

    dovecot.create_folder(USER, "Processed");
    dovecot.create_folder(USER, "Processed/2025");
    dovecot.deliver_to(USER, "Archive", &mail(1));
    let folders = dovecot.folders(USER);
    for f in ["INBOX", "Processed", "Processed/2025", "Archive"] {
        assert!(folders.iter().any(|x| x == f), "{f} missing in {folders:?}");
    }
    assert_eq!(dovecot.message_count(USER, "Archive"), 1);
    assert_eq!(dovecot.message_count(USER, "Processed/2025"), 0);

    let token = access_token(&idp, USER, PASSWORD).await;
    let mut session = imaps_xoauth2(dovecot.imaps_port(), dovecot.ca_file(), USER, &token)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dovecot.log_tail()));
    session.select("INBOX").await.unwrap();
    {
        use futures::TryStreamExt;
        let updates: Vec<_> = session
            .store("1:5", "+FLAGS (\\Seen)")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(updates.len(), 5);
    }
    session.logout().await.unwrap();
    assert_eq!(dovecot.seen_count(USER, "INBOX"), 5);
    let hits = dovecot.search(
        USER,
        "INBOX",
        &format!("header message-id {}", common::message_id(42)),
    );
    assert_eq!(hits.len(), 1, "Message-ID search");
}

#[tokio::test]
async fn plain_password_option_and_restart() {
    let idp = IdP::start();
    let mut dovecot = Dovecot::start_with(
        &idp.introspection_url(),
        DovecotOptions {
            plain_password: Some("plainpw".into()),
            ..DovecotOptions::default()
        },
    );
    let port = dovecot.imaps_port();
    let client = imaps_connect(port, dovecot.ca_file()).await;
    let session = client
        .login("dave@contoso.example", "plainpw")
        .await
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("LOGIN failed: {e}\n{}", dovecot.log_tail()));
    drop(session);
    let client = imaps_connect(port, dovecot.ca_file()).await;
    assert!(client.login("dave@contoso.example", "wrong").await.is_err());

    dovecot.deliver(USER, &mail(7));
    dovecot.restart();
    assert_eq!(dovecot.imaps_port(), port);
    assert_eq!(dovecot.message_count(USER, "INBOX"), 1);
    let client = imaps_connect(port, dovecot.ca_file()).await;
    client
        .login("dave@contoso.example", "plainpw")
        .await
        .map_err(|(e, _)| e)
        .expect("LOGIN after restart failed");
}

/// Words of an IMAP CAPABILITY line (untagged or a `[CAPABILITY ...]` code).
fn capability_words(lines: &[String]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix("* CAPABILITY ")
                .or_else(|| l.split_once("[CAPABILITY ").map(|(_, rest)| rest))
        })
        .flat_map(|caps| caps.split([' ', ']']))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A process for the proxy to kill: `sleep 60`, killed on drop.
fn victim() -> common::setup::ChildGuard {
    common::setup::ChildGuard(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("start sleep"),
    )
}

/// Waits (10 s at most) for `child` to exit; true if SIGKILL ended it.
fn died_of_sigkill(child: &mut common::setup::ChildGuard) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    child
        .wait_for_exit(Duration::from_secs(10))
        .is_some_and(|status| status.signal() == Some(9))
}

#[test]
fn proxy_command_matching() {
    use common::proxy::is_command;
    assert!(is_command("DELE 3", "DELE"));
    assert!(is_command("dele 3", "DELE"));
    assert!(is_command("QUIT", "QUIT"));
    assert!(is_command("A7 UID MOVE 1:5 Done", "UID MOVE"));
    assert!(is_command("A7 uid copy 4 Done", "UID COPY"));
    assert!(!is_command("A7 UID MOVED", "UID MOVE"));
    assert!(!is_command("t1 DELETE Done", "DELE"));
    assert!(!is_command("dXNlcj1oZWxwZGVzaxDELE", "DELE"));
    assert!(!is_command("A7 UID FETCH 1:* (UID) DELE", "DELE"));
}

/// Through the proxy to Dovecot's plain IMAP port: XOAUTH2 works in clear
/// text from loopback (LOGIN is disabled: this Dovecot has no plain
/// mechanism), every client line is recorded, a disarmed trigger does
/// nothing, an armed kill trigger kills the process and holds the command
/// back from the server; TLS passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_records_and_kills_before_forwarding() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start(&idp.introspection_url());
    dovecot.create_folder(USER, "Done");
    dovecot.deliver(USER, &mail(1));
    let token = access_token(&idp, USER, PASSWORD).await;
    let proxy = Proxy::start(dovecot.imap_port());

    let mut imap = LineClient::connect(proxy.port());
    assert!(imap.greeting.starts_with("* OK"), "{}", imap.greeting);
    let pre_login = capability_words(std::slice::from_ref(&imap.greeting));
    assert!(pre_login.contains("LOGINDISABLED"), "{pre_login:?}");
    assert!(pre_login.contains("AUTH=XOAUTH2"), "{pre_login:?}");
    let login = imap
        .imap("LOGIN alice@contoso.example wrong")
        .expect("LOGIN answered");
    assert!(
        login.last().is_some_and(|l| l.starts_with("t1 NO")),
        "{login:?}"
    );
    let auth = imap
        .imap_xoauth2(USER, &token)
        .expect("AUTHENTICATE answered");
    assert!(
        auth.starts_with("t2 OK"),
        "XOAUTH2 in clear text from loopback: {auth}"
    );
    let caps = capability_words(&imap.imap_ok("CAPABILITY"));
    for cap in ["IDLE", "MOVE", "UIDPLUS"] {
        assert!(caps.contains(cap), "Dovecot lacks {cap}: {caps:?}");
    }
    let select = imap.imap_ok("SELECT INBOX");
    assert!(select.iter().any(|l| l == "* 1 EXISTS"), "{select:?}");

    proxy.on_client_line("NOOP", Action::Drop);
    proxy.disarm();
    imap.imap_ok("NOOP"); // a disarmed trigger does nothing

    let mut child = victim();
    proxy.on_client_line("UID COPY", Action::Kill(child.0.id()));
    proxy.on_client_line("UID MOVE", Action::Kill(child.0.id()));
    assert_eq!(imap.imap("UID MOVE 1 Done"), None, "connection dropped");
    assert!(
        died_of_sigkill(&mut child),
        "the trigger killed the process"
    );
    assert_eq!(proxy.fired(), ["t6 UID MOVE 1 Done"]);
    assert_eq!(
        dovecot.message_count(USER, "INBOX"),
        1,
        "MOVE never arrived"
    );
    assert_eq!(dovecot.message_count(USER, "Done"), 0);

    let lines = proxy.client_lines();
    assert_eq!(lines.len(), 6, "every client line is recorded");
    assert!(lines[1].starts_with("t2 AUTHENTICATE XOAUTH2 "));
    assert_eq!(
        &lines[2..],
        [
            "t3 CAPABILITY",
            "t4 SELECT INBOX",
            "t5 NOOP",
            "t6 UID MOVE 1 Done"
        ]
    );

    // The other trigger went with the fired one; new connections still work.
    let mut again = LineClient::connect(proxy.port());
    let auth = again.imap_xoauth2(USER, &token).expect("answered");
    assert!(auth.starts_with("t1 OK"), "{auth}");
    again.imap_ok("SELECT INBOX");
    again.imap_ok("UID COPY 1 Done"); // not held back any more
    assert_eq!(proxy.connections(), 2);
    assert_eq!(dovecot.message_count(USER, "Done"), 1);

    // Binary data without line ends (TLS) passes through unchanged.
    let tls_proxy = Proxy::start(dovecot.imaps_port());
    let mut session = imaps_xoauth2(tls_proxy.port(), dovecot.ca_file(), USER, &token)
        .await
        .expect("IMAPS through the proxy");
    let inbox = session.select("INBOX").await.expect("SELECT");
    assert_eq!(inbox.exists, 1);
    session.logout().await.expect("LOGOUT");
}

/// POP3 on the plain port: two-step AUTH XOAUTH2 in clear text from
/// loopback, the UIDL format of the harness (`%08Xu%08Xv`: UID and
/// UIDVALIDITY in hex), and a dropped DELE deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_through_the_proxy_two_step_xoauth2_and_uidl_format() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start(&idp.introspection_url());
    dovecot.deliver_many(USER, (0..3).map(mail));
    let token = access_token(&idp, USER, PASSWORD).await;
    let proxy = Proxy::start(dovecot.pop3_port());
    let login = |pop3: &mut LineClient| {
        let capa = pop3.pop3("CAPA", true).expect("CAPA answered");
        assert!(capa.iter().any(|l| l == "UIDL"), "{capa:?}");
        assert!(
            capa.iter()
                .any(|l| l.starts_with("SASL") && l.contains("XOAUTH2")),
            "{capa:?}"
        );
        let go_on = pop3.pop3("AUTH XOAUTH2", false).expect("AUTH answered");
        assert_eq!(go_on, ["+ "], "empty continuation");
        let ok = pop3
            .pop3(&common::imap::xoauth2_b64(USER, &token), false)
            .expect("answered");
        assert!(ok[0].starts_with("+OK"), "XOAUTH2 in clear text: {ok:?}");
    };

    let mut pop3 = LineClient::connect(proxy.port());
    assert!(pop3.greeting.starts_with("+OK"), "{}", pop3.greeting);
    login(&mut pop3);
    let uidl = pop3.pop3("UIDL", true).expect("UIDL answered");
    let uidvalidity = dovecot.uidvalidity(USER, "INBOX");
    let expected: Vec<String> = (1..=3)
        .map(|n| format!("{n} {n:08x}{uidvalidity:08x}"))
        .collect();
    assert_eq!(&uidl[1..], expected, "UIDL is %08Xu%08Xv");
    proxy.on_client_line("DELE", Action::Drop);
    assert_eq!(pop3.pop3("DELE 1", false), None, "connection dropped");
    assert_eq!(proxy.fired(), ["DELE 1"]);

    let mut pop3 = LineClient::connect(proxy.port());
    login(&mut pop3);
    let stat = pop3.pop3("STAT", false).expect("STAT answered");
    assert!(stat[0].starts_with("+OK 3 "), "{stat:?}");
    assert!(pop3.pop3("QUIT", false).is_some());
    assert_eq!(dovecot.message_count(USER, "INBOX"), 3, "nothing deleted");
    let lines = proxy.client_lines();
    assert_eq!(lines.iter().filter(|l| *l == "AUTH XOAUTH2").count(), 2);
}

/// `imap_capability` hides IDLE and MOVE before and after login (Dovecot
/// still executes them if asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_capability_knob_hides_idle_and_move() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let dovecot = Dovecot::start_with(
        &idp.introspection_url(),
        DovecotOptions {
            imap_capability: Some(NO_IDLE_NO_MOVE_CAPABILITY.into()),
            ..DovecotOptions::default()
        },
    );
    let token = access_token(&idp, USER, PASSWORD).await;
    let mut imap = LineClient::connect(dovecot.imap_port());
    let auth = imap.imap_xoauth2(USER, &token).expect("answered");
    assert!(auth.starts_with("t1 OK"), "login failed");
    let caps = imap.imap_ok("CAPABILITY");
    for words in [
        capability_words(std::slice::from_ref(&imap.greeting)),
        capability_words(std::slice::from_ref(&auth)),
        capability_words(&caps),
    ] {
        assert!(words.contains("UIDPLUS"), "{words:?}");
        assert!(words.contains("IMAP4rev1"), "{words:?}");
        assert!(
            !words.contains("IDLE") && !words.contains("MOVE"),
            "{words:?}"
        );
    }
}

/// Dovecot counts a loopback connection as secured: with a plain password,
/// LOGIN and USER/PASS work in clear text on the plain ports from 127.0.0.1
/// despite `disable_plaintext_auth = yes`; the login line then says
/// "secured" where a login under TLS says "TLS".
#[tokio::test]
async fn plaintext_auth_is_allowed_from_loopback() {
    let idp = IdP::start();
    let dovecot = Dovecot::start_with(
        &idp.introspection_url(),
        DovecotOptions {
            plain_password: Some("plainpw".into()),
            ..DovecotOptions::default()
        },
    );
    let mut imap = LineClient::connect(dovecot.imap_port());
    assert!(imap.greeting.contains("AUTH=PLAIN"), "{}", imap.greeting);
    assert!(
        !imap.greeting.contains("LOGINDISABLED"),
        "{}",
        imap.greeting
    );
    imap.imap_ok("LOGIN dave@contoso.example plainpw");
    let line = dovecot.login_line("imap-login", "dave@contoso.example");
    assert!(
        line.contains("method=PLAIN") && line.contains(", secured,"),
        "{line}"
    );

    let mut pop3 = LineClient::connect(dovecot.pop3_port());
    assert_eq!(
        pop3.pop3("USER erin@contoso.example", false),
        Some(vec!["+OK".to_string()])
    );
    let pass = pop3.pop3("PASS plainpw", false).expect("answered");
    assert!(pass[0].starts_with("+OK"), "{pass:?}");
    let line = dovecot.login_line("pop3-login", "erin@contoso.example");
    assert!(line.contains(", secured,"), "{line}");

    let client = imaps_connect(dovecot.imaps_port(), dovecot.ca_file()).await;
    client
        .login("frank@contoso.example", "plainpw")
        .await
        .map_err(|(e, _)| e)
        .expect("LOGIN over IMAPS");
    let line = dovecot.login_line("imap-login", "frank@contoso.example");
    assert!(line.contains(", TLS,"), "{line}");
}

#[test]
fn mail_generators() {
    let ids: HashSet<String> = (0..1000).map(common::message_id).collect();
    assert_eq!(ids.len(), 1000, "Message-IDs not unique");
    let m = String::from_utf8(mail(5)).unwrap();
    assert!(m.contains(&format!("Message-ID: {}\r\n", common::message_id(5))));
    assert!(m.contains("From: \"Customer 5\" <customer5@example.net>\r\n"));
    assert!(m.contains("Subject: Printer broken #5\r\n"));
    assert!(
        m.contains("Date: Mon, 24 Nov 2025 09:05:00 +0000\r\n"),
        "{m}"
    );
    assert_eq!(mail(5), mail(5), "mails are deterministic");

    for size in [2_000, 5_000, 100_000, 1_000_000] {
        let m = mail_of_size(3, size);
        let diff = m.len().abs_diff(size);
        assert!(diff < 200, "asked {size}, got {}", m.len());
        let text = String::from_utf8(m).unwrap();
        assert!(text.contains("multipart/alternative"));
        assert!(text.trim_end().ends_with("--"), "closing boundary missing");
    }

    let bad = malformed_mail();
    assert!(!String::from_utf8_lossy(&bad).contains("Message-ID"));
    assert!(
        std::str::from_utf8(&bad).is_err(),
        "malformed mail has no 8-bit"
    );
}
