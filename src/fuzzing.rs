//! Entry points for fuzzing: each drives one real code path that takes
//! bytes from outside (a mail, a POP3 server, an IMAP server, the config
//! file) and asserts what must hold for every input, so that a violated
//! promise is a crash the fuzzer can find, not only a panic.
//!
//! Built only for tests and with the `fuzzing` feature: the cargo-fuzz
//! targets in `fuzz/` call these, and the smoke test (`fuzzing/tests.rs`)
//! runs them over the seed corpus and deterministic mutations of it in
//! every `cargo test`.
//! The real fuzzing is `scripts/fuzz`.
//!
//! Setup failures here panic on purpose: this code is never reached by a
//! mailbox, a server or an admin's config, and a broken harness must stop
//! the fuzzer loudly rather than report nothing.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::{Config, ConfigError, MailPolicy, ReaderConfig, StoreConfig};
use crate::ingest::{self, Incoming, thread};
use crate::source::SignInSecret;
use crate::source::SourceError;
use crate::source::imap::{self, ImapError};
use crate::source::pop3::proto::{Connection, Pop3Error};
use crate::store::Store;

/// The credentials the wire targets log in with; a server may echo what
/// it was sent, and no error may repeat it.
const TOKEN: &str = "fuzz-token-6b1f0c";
const PASSWORD: &str = "fuzz-password-93de";

/// A step bound far above anything an in-memory or loopback exchange
/// needs: hitting it means the code waited for bytes that never come.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The mail policy the mail target judges with: rules of every kind, the
/// guard with an alias, a custom subject tag and small limits, so that
/// the rules, the guard and the size limits all run on fuzzed input.
const POLICY_TOML: &str = r#"
[tickets]
subject_tag = "[ACME-{id}]"
max_attachment_size = "1 KiB"
max_email_size = "8 KiB"

[guard]
own_addresses = ["support@contoso.com", "helpdesk@contoso.com"]

[rules]
mode = "all"

[[rule]]
name = "vip"
from = "@bigcustomer.example"
queue = "vip"
priority = "high"
tags = ["vip"]

[[rule]]
name = "newsletters"
header = { "List-Unsubscribe" = "" }
action = "ignore"

[[rule]]
name = "invoices"
subject = { regex = "(?i)invoice|rechnung" }
to = "billing@"
category = "billing"
tags = ["money", "vip"]

[[rule]]
name = "screenshots"
has_attachment = true
body = { regex = "(?i)screenshot" }
tags = ["screenshot"]

[[reader]]
name = "fuzz"
protocol = "imap"
host = "127.0.0.1"
port = 143
tls = "none"
username = "support@contoso.com"
auth = "plain"
password = "unused"
"#;

/// What every target needs, built once per fuzzing process.
pub struct Harness {
    policy: Arc<MailPolicy>,
    runtime: tokio::runtime::Runtime,
    imap: ImapRig,
}

/// A loopback "server" that answers the IMAP client with fuzzed bytes, and
/// the reader and (empty) store `imap::check` runs with.
struct ImapRig {
    listener: tokio::net::TcpListener,
    reader: ReaderConfig,
    store: Store,
    dir: std::path::PathBuf,
}

impl Drop for ImapRig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    /// Parses the policy, starts a single-threaded runtime and a loopback
    /// listener, and opens an empty store in a private temporary directory.
    pub fn new() -> Harness {
        let config = Config::parse(Path::new("/fuzz/config.toml"), POLICY_TOML)
            .expect("the fuzzing policy is a valid configuration");
        let policy = config.readers[0].mail.current();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let imap = runtime.block_on(ImapRig::new());
        Harness {
            policy,
            runtime,
            imap,
        }
    }

    /// Raw mail to what a ticket is made of: parse, guard, rules, and the
    /// threading keys the store looks up.
    pub fn mail(&self, data: &[u8]) {
        let incoming = Incoming::new(data, "fuzz", &self.policy);
        check_mail(&incoming, data, &self.policy);
    }

    /// Arbitrary POP3 server output through a whole session of the wire
    /// protocol. The first byte picks how the bytes are split into reads
    /// and which login is used; the rest is what the server says.
    pub fn pop3_wire(&self, data: &[u8]) {
        self.runtime.block_on(pop3_session(data));
    }

    /// Arbitrary IMAP server output through `imap::check` (greeting, login,
    /// NOOP, CAPABILITY, SELECT, LIST, UID SEARCH (all, then what `backfill`
    /// takes at first contact), LOGOUT), over a loopback
    /// connection. The first byte picks token or password login and which
    /// pure helper (UID sets, folder names) is checked on the rest.
    pub fn imap_responses(&self, data: &[u8]) {
        let Some((&control, server)) = data.split_first() else {
            return;
        };
        imap_helpers(server);
        let (credential, secret) = if control & 1 == 0 {
            (SignInSecret::Token(SecretString::from(TOKEN)), TOKEN)
        } else {
            (
                SignInSecret::Password(SecretString::from(PASSWORD)),
                PASSWORD,
            )
        };
        let outcome = self.runtime.block_on(async {
            tokio::time::timeout(4 * STEP_TIMEOUT, self.imap.exchange(server, &credential)).await
        });
        let Ok(result) = outcome else {
            panic!("the IMAP exchange did not end although the server closed the connection");
        };
        if let Err(e) = result {
            if let SourceError::Imap(ImapError::Timeout { step, .. }) = e {
                panic!("IMAP {step} waited for bytes after the server closed the connection");
            }
            assert!(!matches!(e, SourceError::Store(_)), "store failed: {e}");
            // The scripted server speaks before it is sent anything, so a
            // credential in its bytes is its own; ours must never appear.
            let echoes = [secret, "dXNlcj", "AGZ1enpA"]
                .iter()
                .any(|s| contains(server, s.as_bytes()));
            if !echoes {
                let (display, debug) = (e.to_string(), format!("{e:?}"));
                assert!(
                    !display.contains(secret) && !debug.contains(secret),
                    "an error repeats the credential: {display}"
                );
            }
            // Finding F1 (BENCHMARKS.md): server text is quoted printable.
            check_printable(&e.to_string());
        }
    }

    /// Arbitrary text as the configuration file: a valid config or an
    /// error naming a line of the file, never a panic.
    pub fn config(&self, data: &[u8]) {
        check_config(data);
    }
}

/// The sender's address is what acknowledgements go to, the rate limit
/// counts and the own-address guard compares: one plain address.
fn check_from_addr(from: &str) {
    assert!(
        from.contains('@') && !from.chars().any(|c| c.is_whitespace() || c.is_control()),
        "From address {from:?} is not one plain address"
    );
}

fn check_mail(incoming: &Incoming, data: &[u8], policy: &MailPolicy) {
    let mail = &incoming.mail;
    assert!(!mail.dedup_key.is_empty(), "a mail always has a dedup key");
    if let Some(id) = &mail.message_id {
        assert_eq!(&mail.dedup_key, id, "the dedup key is the Message-ID");
    } else {
        assert!(mail.dedup_key.starts_with("sha256:"), "{}", mail.dedup_key);
    }
    assert_eq!(mail.size, data.len());
    // Finding F2 (BENCHMARKS.md): one plain address, or none.
    if let Some(from) = &mail.from_addr {
        check_from_addr(from);
    }

    let ids = thread::referenced_ids(mail);
    assert!(ids.len() <= thread::MAX_REFERENCED, "{} ids", ids.len());
    let mut seen = std::collections::HashSet::new();
    for id in &ids {
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "{id:?}"
        );
        assert!(!id.starts_with('<') && !id.ends_with('>'), "{id:?}");
        assert!(seen.insert(id), "{id:?} twice");
        let _ = thread::token_of(id);
    }
    if let Some(id) = &mail.message_id
        && let Some(token) = thread::token_of(id)
    {
        assert_eq!(token.len(), 16, "{id:?}");
    }

    let _ = thread::is_forward(&mail.subject);
    for list in [&mail.to, &mail.cc].into_iter().flatten() {
        for addr in thread::addresses_in(list) {
            assert!(addr.contains('@'), "{addr:?} from {list:?}");
            assert_eq!(addr, addr.to_ascii_lowercase());
        }
    }
    let tag = &policy.tickets.subject_tag;
    for id in tag.find(&mail.subject) {
        assert!(id >= 0, "tag id {id} in {:?}", mail.subject);
        assert_eq!(tag.find(&tag.format(id)), [id], "tag of {id} round trip");
    }

    let limits = &policy.tickets;
    let oversize = data.len() as u64 > limits.max_email_size;
    for a in &mail.attachments {
        if let Some(name) = &a.filename {
            assert!(!name.is_empty() && name.len() <= 200, "{name:?}");
            assert!(
                !name.contains(['/', '\\']) && !name.chars().any(char::is_control),
                "unsafe filename {name:?}"
            );
        }
        match &a.content {
            Some(content) => {
                assert!(!oversize, "attachment kept from an oversized mail");
                assert_eq!(content.len(), a.size);
                assert!(a.size as u64 <= limits.max_attachment_size, "{a:?}");
            }
            None => assert!(a.dropped.is_some(), "{a:?} dropped without a reason"),
        }
    }
    if oversize {
        assert!(mail.limit_note.is_some(), "oversized mail without a note");
        assert!(mail.body_text.len() <= 1 << 20);
    }

    let routing = &incoming.routing;
    if let Some(rule) = &routing.ignored_by {
        assert!(routing.matched.contains(rule), "{routing:?}");
    }
    let tags: std::collections::HashSet<_> = routing.tags.iter().collect();
    assert_eq!(tags.len(), routing.tags.len(), "repeated tags {routing:?}");
    if let ingest::Verdict::Ignore(g) | ingest::Verdict::Bounce(g) = &incoming.verdict {
        assert!(!g.disposition().is_empty());
    }
}

/// Error texts end up in logs and on status pages: never a credential
/// (checked where the server could not have known it), never a control
/// character that could garble a terminal or a log line.
fn check_error_text(display: &str, debug: &str, secret: &str) {
    {
        assert!(
            !display.contains(secret) && !debug.contains(secret),
            "an error repeats the credential: {display}"
        );
    }
    check_printable(display);
}

fn check_printable(display: &str) {
    assert!(
        !display.chars().any(char::is_control),
        "control character in an error: {display:?}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn check_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/nonexistent/mail2ticket-fuzz/config.toml");
    match Config::parse(path, &text) {
        Ok(config) => {
            for reader in &config.readers {
                assert!(!reader.name.is_empty());
                assert!(reader.batch_size > 0, "reader {:?}", reader.name);
            }
        }
        Err(ConfigError::Invalid { line, key, .. }) => {
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&line),
                "error on line {line} of {lines}"
            );
            assert!(!key.is_empty(), "error without a key");
        }
        Err(ConfigError::Read { .. }) => panic!("Config::parse never reads the file"),
    }
}

/// Which login a POP3 session tries.
enum Pop3Login {
    XOAuth2,
    Plain,
    UserPass,
}

/// Runs the session; returns how many of its steps succeeded.
async fn pop3_session(data: &[u8]) -> usize {
    let Some((&control, server)) = data.split_first() else {
        return 0;
    };
    // Read sizes from one byte up to everything at once, so that every
    // line and terminator is also seen split across reads.
    const CHUNKS: [usize; 8] = [1, 2, 3, 7, 16, 61, 512, usize::MAX];
    let chunk = CHUNKS[usize::from(control & 7)];
    let login = match (control >> 3) % 3 {
        0 => Pop3Login::XOAuth2,
        1 => Pop3Login::Plain,
        _ => Pop3Login::UserPass,
    };
    let user = "fuzz@example.com";
    let sent = std::cell::Cell::new(None);
    let mut conn = Connection::new(Scripted::new(server, chunk, &sent), STEP_TIMEOUT);
    let mut closed = false;
    let mut succeeded = 0;
    let mut check = |r: &Result<(), Pop3Error>| {
        if let Err(e) = r {
            if let Pop3Error::Timeout { step, .. } = e {
                panic!("POP3 {step} waited although every read is ready");
            }
            check_printable(&e.to_string());
            closed |= matches!(e, Pop3Error::Closed { .. });
        } else {
            assert!(!closed, "a step succeeded after the server closed");
            succeeded += 1;
        }
    };
    check(&conn.greeting().await.map(drop));
    check(&conn.capa().await.map(drop));
    let (login, secret) = match login {
        Pop3Login::XOAuth2 => (
            conn.auth_xoauth2(user, &SecretString::from(TOKEN)).await,
            TOKEN,
        ),
        Pop3Login::Plain => (
            conn.auth_plain(user, &SecretString::from(PASSWORD)).await,
            PASSWORD,
        ),
        Pop3Login::UserPass => (
            conn.user_pass(user, &SecretString::from(PASSWORD)).await,
            PASSWORD,
        ),
    };
    // The server may repeat what it was sent; only what it said before it
    // had the credential may contain it (it cannot know it otherwise).
    if let (Err(e), Some(offset)) = (&login, sent.get())
        && !contains(&server[..offset], secret.as_bytes())
    {
        check_error_text(&e.to_string(), &format!("{e:?}"), secret);
    }
    check(&login);
    check(&conn.stat().await.map(drop));
    let uidl = conn.uidl().await;
    if let Ok(ids) = &uidl {
        for (_, uid) in ids {
            // RFC 1939's range (finding F4, BENCHMARKS.md).
            assert!(
                !uid.is_empty() && uid.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "{uid:?}"
            );
        }
    }
    check(&uidl.map(drop));
    check(&conn.list().await.map(drop));
    let mut out = b"kept".to_vec();
    for msg in [1, 2] {
        let before = out.len();
        let r = conn.retr(msg, &mut out).await;
        if r.is_err() {
            assert_eq!(out.len(), before, "a failed RETR left part of a message");
        }
        check(&r);
    }
    assert!(out.starts_with(b"kept"));
    assert!(out.len() <= server.len() + 4, "RETR made up bytes");
    check(&conn.dele(1).await);
    check(&conn.quit().await);
    succeeded
}

/// A server that has said everything in advance: reads hand out `data` in
/// pieces of at most `chunk` bytes, then end of file; writes are taken and
/// dropped. Every call is ready at once, so a step that still times out
/// is waiting for bytes that will never come.
/// `sent` is set to how many bytes had been read when the credential was
/// first written.
struct Scripted<'a> {
    data: &'a [u8],
    read: usize,
    chunk: usize,
    sent: &'a std::cell::Cell<Option<usize>>,
}

impl<'a> Scripted<'a> {
    fn new(data: &'a [u8], chunk: usize, sent: &'a std::cell::Cell<Option<usize>>) -> Self {
        Scripted {
            data,
            read: 0,
            chunk,
            sent,
        }
    }
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let credential =
            buf.starts_with(b"PASS ") || buf.starts_with(b"dXNlcj") || buf.starts_with(b"AGZ1enpA");
        if credential && self.sent.get().is_none() {
            self.sent.set(Some(self.read));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ImapRig {
    async fn new() -> ImapRig {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener");
        let port = listener.local_addr().expect("its address").port();
        let text = POLICY_TOML
            .replace("port = 143", &format!("port = {port}"))
            .replace(
                "password = \"unused\"",
                "password = \"unused\"\nafter = \"move:Done\"\ntimeout = \"5s\"",
            );
        let config =
            Config::parse(Path::new("/fuzz/config.toml"), &text).expect("the IMAP reader config");
        let reader = config.readers[0].clone();
        let dir =
            std::env::temp_dir().join(format!("mail2ticket-fuzz-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let store = Store::open(&StoreConfig {
            database: format!("sqlite://{}", dir.join("fuzz.db").display()),
            key_file: None,
        })
        .await
        .expect("an empty store");
        ImapRig {
            listener,
            reader,
            store,
            dir,
        }
    }

    /// One `imap::check` against a server that sends `server`, closes its
    /// side and reads until the client hangs up.
    async fn exchange(
        &self,
        server: &[u8],
        credential: &SignInSecret,
    ) -> Result<crate::source::CheckReport, SourceError> {
        let serve = async {
            let Ok((mut socket, _)) = self.listener.accept().await else {
                return;
            };
            let _ = socket.write_all(server).await;
            let _ = socket.shutdown().await;
            let mut sink = [0u8; 4096];
            while let Ok(1..) = socket.read(&mut sink).await {}
        };
        let client = imap::check(&self.reader, credential, &self.store);
        let ((), result) = tokio::join!(serve, client);
        result
    }
}

/// The IMAP helpers that are ours rather than the crate's: UID sets and
/// modified UTF-7 folder names.
fn imap_helpers(data: &[u8]) {
    let mut uids: Vec<u32> = data
        .chunks(2)
        .map(|c| u32::from(c[0]) * 3 + u32::from(*c.get(1).unwrap_or(&0) % 4))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    let set = imap::uid_set(&uids);
    let mut back = Vec::new();
    for part in set.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().expect("uid"), b.parse().expect("uid"));
        assert!(a < b || part == a.to_string(), "{part} in {set}");
        back.extend(a..=b);
    }
    assert_eq!(back, uids, "{set}");

    let folder = String::from_utf8_lossy(data);
    let name = imap::mailbox_name(&folder);
    assert!(
        name.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "{name:?} is not printable ASCII"
    );
    if folder.chars().all(|c| (' '..='~').contains(&c) && c != '&') {
        assert_eq!(name, folder);
    }
}

#[cfg(test)]
mod tests;
