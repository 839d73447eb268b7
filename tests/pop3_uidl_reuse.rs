//! A POP3 server that reuses UIDLs (some do, once the mail that had one is
//! gone): with `after = "delete"`, a listed mail whose UIDL is in the
//! ledger but whose size differs is a new mail, ingested, never deleted
//! unread. Dovecot does not reuse UIDLs, so a small scripted POP3 server
//! plays that part.

use mail2ticket_testkit as common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::mail;
use common::setup::run_once_binary;

/// The mailbox the scripted server serves: (UIDL, mail) in order.
type Mailbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A POP3 server on loopback (plaintext, USER/PASS) serving `mailbox`;
/// DELE takes effect at QUIT, as RFC 1939 says. Returns its port.
fn scripted_pop3(mailbox: Mailbox) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mailbox = mailbox.clone();
            std::thread::spawn(move || serve(stream, &mailbox));
        }
    });
    port
}

fn serve(stream: std::net::TcpStream, mailbox: &Mailbox) {
    let mut out = stream.try_clone().expect("clone");
    let mut lines = BufReader::new(stream);
    let snapshot: Vec<(String, Vec<u8>)> = mailbox.lock().expect("lock").clone();
    let mut deleted: Vec<String> = Vec::new();
    let _ = out.write_all(b"+OK scripted POP3 ready\r\n");
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let command = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        let arg = words.get(1).and_then(|n| n.parse::<usize>().ok());
        let reply = match command.as_str() {
            "CAPA" => "+OK\r\nUSER\r\nUIDL\r\n.\r\n".to_string(),
            "USER" | "PASS" | "NOOP" => "+OK\r\n".to_string(),
            "STAT" => format!(
                "+OK {} {}\r\n",
                snapshot.len(),
                snapshot.iter().map(|(_, m)| m.len()).sum::<usize>()
            ),
            "UIDL" => {
                let mut r = String::from("+OK\r\n");
                for (i, (uidl, _)) in snapshot.iter().enumerate() {
                    r.push_str(&format!("{} {uidl}\r\n", i + 1));
                }
                r + ".\r\n"
            }
            "LIST" => {
                let mut r = String::from("+OK\r\n");
                for (i, (_, m)) in snapshot.iter().enumerate() {
                    r.push_str(&format!("{} {}\r\n", i + 1, m.len()));
                }
                r + ".\r\n"
            }
            "RETR" => match arg.and_then(|n| snapshot.get(n.wrapping_sub(1))) {
                Some((_, m)) => {
                    let text = String::from_utf8_lossy(m);
                    let mut r = String::from("+OK\r\n");
                    for l in text.split("\r\n") {
                        if l.starts_with('.') {
                            r.push('.');
                        }
                        r.push_str(l);
                        r.push_str("\r\n");
                    }
                    r + ".\r\n"
                }
                None => "-ERR no such message\r\n".to_string(),
            },
            "DELE" => match arg.and_then(|n| snapshot.get(n.wrapping_sub(1))) {
                Some((uidl, _)) => {
                    deleted.push(uidl.clone());
                    "+OK\r\n".to_string()
                }
                None => "-ERR no such message\r\n".to_string(),
            },
            "QUIT" => {
                mailbox
                    .lock()
                    .expect("lock")
                    .retain(|(uidl, _)| !deleted.contains(uidl));
                let _ = out.write_all(b"+OK bye\r\n");
                return;
            }
            _ => "-ERR unknown command\r\n".to_string(),
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn config(dir: &Path, port: u16) -> std::path::PathBuf {
    let password = dir.join("pop.pw");
    std::fs::write(&password, "secret").expect("password");
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\ndatabase = \"sqlite://{db}\"\n\n[[reader]]\nname = \"pop\"\n\
             protocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
             username = \"desk\"\nauth = \"plain\"\npassword = {{ file = \"{pw}\" }}\n\
             after = \"delete\"\ntimeout = \"10s\"\n",
            db = dir.join("m2t.db").display(),
            pw = password.display(),
        ),
    )
    .expect("write config");
    path
}

fn tickets(dir: &Path) -> i64 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("m2t.db").display()))
            .await
            .expect("open");
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tickets")
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    })
}

#[test]
fn a_reused_uidl_with_another_size_is_a_new_mail_not_deleted_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = mail(0);
    let mut second = mail(1);
    // Another size for sure.
    second.extend_from_slice(b"\r\nand a longer body than the first mail had\r\n");
    assert_ne!(first.len(), second.len());
    let mailbox: Mailbox = Arc::new(Mutex::new(vec![("uidl-1".into(), first)]));
    let port = scripted_pop3(mailbox.clone());
    let config = config(dir.path(), port);

    let out = run_once_binary(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tickets(dir.path()), 1);
    assert!(
        mailbox.lock().expect("lock").is_empty(),
        "deleted after the commit"
    );

    // The server hands the same UIDL to a new mail.
    mailbox
        .lock()
        .expect("lock")
        .push(("uidl-1".into(), second));
    let out = run_once_binary(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 new tickets"), "{stdout}");
    assert_eq!(tickets(dir.path()), 2, "the second mail became a ticket");
    assert!(
        mailbox.lock().expect("lock").is_empty(),
        "and was deleted once committed"
    );

    // Nothing left to do: a rerun takes nothing.
    let out = run_once_binary(&config);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 new tickets"));
    assert_eq!(tickets(dir.path()), 2);
}
