//! The mail corpus end to end: `tests/corpus/*.eml` are real-world-shaped
//! mails (Outlook, Gmail, Apple Mail, Thunderbird and older clients; out-of-office
//! replies, NDRs, lists and newsletters; calendar invites; charsets; nested
//! MIME; hostile file names), each with its expected outcome in
//! `tests/corpus/expected.toml`. They go into a real Dovecot mailbox in file
//! order, `mail2ticket run --once` ingests them, and every expectation is
//! checked in the SQLite file. Around the corpus: a reply thread across runs,
//! reopening a closed ticket, forwarded and tagged mail from participants and
//! strangers, one mail through two readers, and first-match against
//! all-match rules.

use mail2ticket_testkit as common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use common::setup::{Env, ReaderSpec, USER, run_binary, run_once_binary};

// -- The expectation table -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    mail: Vec<Expect>,
}

/// One `[[mail]]` of expected.toml; its header explains the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    file: String,
    message_id: Option<String>,
    disposition: Option<String>,
    disposition_prefix: Option<String>,
    ticket: Option<String>,
    duplicate_of: Option<String>,
    subject: Option<String>,
    from: Option<String>,
    from_name: Option<String>,
    #[serde(default)]
    body_contains: Vec<String>,
    #[serde(default)]
    html_contains: Vec<String>,
    queue: Option<String>,
    priority: Option<String>,
    category: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    attachments_unchecked: bool,
    #[serde(default)]
    attachment: Vec<ExpectAttachment>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectAttachment {
    filename: Option<String>,
    filename_safe: Option<String>,
    content_type: String,
    inline: bool,
    content_id: Option<String>,
    size: i64,
    sha256: String,
}

struct CorpusMail {
    expect: Expect,
    raw: Vec<u8>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every .eml in file order with its expectation; panics if the table and
/// the directory disagree or the table says something it cannot mean.
fn load_corpus() -> Vec<CorpusMail> {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("expected.toml")).expect("read expected.toml");
    let table: Table = toml::from_str(&text).unwrap_or_else(|e| panic!("expected.toml: {e}"));

    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read tests/corpus")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".eml"))
        .collect();
    files.sort();
    let listed: Vec<String> = table.mail.iter().map(|m| m.file.clone()).collect();
    assert_eq!(
        files, listed,
        "expected.toml lists every .eml once, in file order"
    );
    assert!(files.len() >= 45, "the corpus has {} mails", files.len());

    let mut openers: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &table.mail {
        let f = &m.file;
        if let Some(original) = &m.duplicate_of {
            assert!(
                listed.contains(original),
                "{f}: duplicate_of {original} is not a file"
            );
            assert!(
                m.disposition.is_none() && m.ticket.is_none(),
                "{f}: a duplicate has no outcome"
            );
            continue;
        }
        assert!(
            m.disposition.is_some() != m.disposition_prefix.is_some(),
            "{f}: exactly one of disposition / disposition_prefix"
        );
        assert!(
            m.subject.is_some() && m.from.is_some(),
            "{f}: subject and from"
        );
        assert!(
            !m.body_contains.is_empty(),
            "{f}: body_contains says what the body holds"
        );
        assert!(
            m.message_id.is_some() || m.subject.is_some(),
            "{f}: the row must be findable"
        );
        let joins = matches!(
            m.disposition.as_deref(),
            Some("ticket" | "reply" | "reopened")
        );
        assert_eq!(
            joins,
            m.ticket.is_some(),
            "{f}: a ticket label exactly when it has a ticket"
        );
        let opens = m.disposition.as_deref() == Some("ticket");
        if opens {
            *openers
                .entry(m.ticket.as_deref().expect("label"))
                .or_default() += 1;
        } else {
            assert!(
                m.queue.is_none()
                    && m.priority.is_none()
                    && m.category.is_none()
                    && m.tags.is_empty(),
                "{f}: routing is set when a ticket is created, so only an opening mail has it"
            );
        }
        if let Some(prefix) = &m.disposition_prefix {
            assert!(
                prefix.starts_with("ignored: "),
                "{f}: only ignored dispositions by prefix"
            );
        }
        for a in &m.attachment {
            assert!(
                !(a.filename.is_some() && a.filename_safe.is_some()),
                "{f}: filename or filename_safe"
            );
            assert_eq!(a.sha256.len(), 64, "{f}: sha256 is hex");
        }
    }
    for label in table.mail.iter().filter_map(|m| m.ticket.as_deref()) {
        assert_eq!(
            openers.get(label),
            Some(&1),
            "ticket {label:?} is opened by exactly one mail"
        );
    }

    table
        .mail
        .into_iter()
        .map(|expect| {
            let raw = std::fs::read(dir.join(&expect.file)).expect("read a corpus mail");
            assert!(
                !raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') && !raw.starts_with(b"\n"),
                "{}: CRLF line endings only",
                expect.file
            );
            CorpusMail { expect, raw }
        })
        .collect()
}

fn corpus_mail<'c>(corpus: &'c [CorpusMail], prefix: &str) -> &'c CorpusMail {
    corpus
        .iter()
        .find(|m| m.expect.file.starts_with(prefix))
        .unwrap_or_else(|| panic!("no corpus mail {prefix}*"))
}

// -- Configuration ------------------------------------------------------------

/// `[guard]` and the routing rules of the corpus run (first match).
const CORPUS_POLICY: &str = r#"
[guard]
own_addresses = ["support@test.example"]

[rules]
mode = "first"

[[rule]]
name = "newsletters"
from = "@vendor-promo.example"
action = "ignore"

[[rule]]
name = "vip"
from = "@bigcorp.example"
queue = "vip"
priority = "high"
tags = ["vip", "key-account"]

[[rule]]
name = "outage"
subject = { regex = '(?i)\b(outage|down)\b' }
header = { "Importance" = "high" }
queue = "ops"
priority = "urgent"
category = "incident"
tags = ["outage"]

[[rule]]
name = "billing"
subject = { regex = "(?i)invoice|facture|rechnung" }
category = "billing"
tags = ["billing"]

[[rule]]
name = "procurement"
body = "Purchase Order"
category = "procurement"
tags = ["procurement"]

[[rule]]
name = "scans"
to = "scans@test.example"
has_attachment = true
queue = "scans"
"#;

/// The config file for `readers` followed by `policy` (top-level tables after
/// the last `[[reader]]`).
fn write_config(env: &Env, readers: &[ReaderSpec], policy: &str) -> PathBuf {
    let path = env.path("config.toml");
    let text = format!("{}\n{policy}", env.config_toml(readers));
    std::fs::write(&path, text).expect("write config");
    path
}

fn run_once(config: &Path) {
    tokio::task::block_in_place(|| run_once_binary(config));
}

/// Delivers `mails` to `user`'s INBOX one by one, letting Dovecot assign
/// each its UID before the next arrives, so UIDs follow the given order
/// (replies after what they answer).
fn deliver_in_order(env: &Env, user: &str, mails: &[&[u8]]) {
    let mut count = env.dovecot.message_count(user, "INBOX");
    for raw in mails {
        env.dovecot.deliver(user, raw);
        count += 1;
        assert_eq!(env.dovecot.message_count(user, "INBOX"), count, "delivered");
    }
}

// -- The database ---------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
struct EmailRow {
    id: i64,
    ticket_id: Option<i64>,
    reader: String,
    message_id: Option<String>,
    subject: Option<String>,
    from_addr: Option<String>,
    from_name: Option<String>,
    body_text: Option<String>,
    body_html: Option<String>,
    disposition: String,
    limit_note: Option<String>,
    size: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct TicketRow {
    id: i64,
    subject: String,
    requester: Option<String>,
    status: String,
    queue: Option<String>,
    priority: Option<String>,
    category: Option<String>,
    tags: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct AttachmentRow {
    email_id: i64,
    filename: Option<String>,
    content_type: String,
    size: i64,
    sha256: Option<String>,
    blob: Option<String>,
    content_id: Option<String>,
    inline: i64,
    dropped: Option<String>,
}

/// Everything the assertions read, in one go.
struct Snapshot {
    emails: Vec<EmailRow>,
    tickets: HashMap<i64, TicketRow>,
    /// By email id, in insertion (MIME) order.
    attachments: HashMap<i64, Vec<AttachmentRow>>,
    /// key -> (size column, hex sha256 of the stored content)
    blobs: HashMap<String, (i64, String)>,
    outbox: i64,
}

impl Snapshot {
    async fn load(env: &Env) -> Snapshot {
        let pool = env.db().await;
        let emails: Vec<EmailRow> = sqlx::query_as(
            "SELECT id, ticket_id, reader, message_id, subject, from_addr, from_name, body_text, \
             body_html, disposition, limit_note, size FROM emails ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("read emails");
        let tickets: Vec<TicketRow> = sqlx::query_as(
            "SELECT id, subject, requester, status, queue, priority, category, tags FROM tickets",
        )
        .fetch_all(&pool)
        .await
        .expect("read tickets");
        let attachment_rows: Vec<AttachmentRow> = sqlx::query_as(
            "SELECT email_id, filename, content_type, size, sha256, blob, content_id, inline, \
             dropped FROM attachments ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("read attachments");
        let blob_rows: Vec<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT key, size, content FROM blobs")
                .fetch_all(&pool)
                .await
                .expect("read blobs");
        let (outbox,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("count outbox");
        pool.close().await;

        let mut attachments: HashMap<i64, Vec<AttachmentRow>> = HashMap::new();
        for a in attachment_rows {
            attachments.entry(a.email_id).or_default().push(a);
        }
        Snapshot {
            emails,
            tickets: tickets.into_iter().map(|t| (t.id, t)).collect(),
            attachments,
            blobs: blob_rows
                .into_iter()
                .map(|(key, size, content)| (key, (size, sha256_hex(&content))))
                .collect(),
            outbox,
        }
    }

    /// The rows of a mail: by Message-ID, or without one by its subject.
    fn rows_of(&self, message_id: Option<&str>, subject: Option<&str>) -> Vec<&EmailRow> {
        self.emails
            .iter()
            .filter(|e| match message_id {
                Some(id) => e.message_id.as_deref() == Some(id),
                None => e.message_id.is_none() && e.subject.as_deref() == subject,
            })
            .collect()
    }

    fn row_by_message_id(&self, id: &str) -> &EmailRow {
        let rows = self.rows_of(Some(id), None);
        assert_eq!(
            rows.len(),
            1,
            "exactly one email with Message-ID {id}: {rows:#?}"
        );
        rows[0]
    }

    fn ticket_emails(&self, ticket: i64) -> Vec<&EmailRow> {
        self.emails
            .iter()
            .filter(|e| e.ticket_id == Some(ticket))
            .collect()
    }

    fn tags(&self, ticket: i64) -> Vec<String> {
        let raw = &self.tickets[&ticket].tags;
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("tickets.tags {raw:?}: {e}"))
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Collects failures, so one run reports every wrong outcome at once.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        file: &str,
        what: &str,
        actual: T,
        expected: T,
    ) {
        if actual != expected {
            self.0.push(format!(
                "{file}: {what}: expected {expected:?}, got {actual:?}"
            ));
        }
    }

    fn assert_none(self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{context}: {} expectation(s) failed:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

// -- Checking the corpus -----------------------------------------------------------

/// Checks every corpus mail against its expectation; returns label -> ticket id.
fn check_corpus(corpus: &[CorpusMail], db: &Snapshot, fail: &mut Failures) -> HashMap<String, i64> {
    let mut label_ticket: HashMap<String, i64> = HashMap::new();
    let mut ticket_label: HashMap<i64, String> = HashMap::new();
    for CorpusMail { expect: m, raw } in corpus {
        let f = m.file.as_str();
        if let Some(original) = &m.duplicate_of {
            let first = &corpus_mail(corpus, original).expect;
            let rows = db.rows_of(first.message_id.as_deref(), first.subject.as_deref());
            fail.eq(f, "rows of this mail and its first copy", rows.len(), 1);
            continue;
        }
        let rows = db.rows_of(m.message_id.as_deref(), m.subject.as_deref());
        if rows.len() != 1 {
            fail.0.push(format!(
                "{f}: expected exactly one email row (message_id {:?}, subject {:?}), found {}: {:?}",
                m.message_id,
                m.subject,
                rows.len(),
                rows.iter()
                    .map(|r| (r.describe(), &r.subject, &r.disposition))
                    .collect::<Vec<_>>()
            ));
            continue;
        }
        let e = rows[0];

        match (&m.disposition, &m.disposition_prefix) {
            (Some(d), _) => fail.eq(f, "disposition", e.disposition.as_str(), d.as_str()),
            (None, Some(p)) => fail.check(e.disposition.starts_with(p.as_str()), || {
                format!(
                    "{f}: disposition: expected to start with {p:?}, got {:?}",
                    e.disposition
                )
            }),
            (None, None) => unreachable!("checked when loading"),
        }

        match (&m.ticket, e.ticket_id) {
            (None, None) => {}
            (None, Some(t)) => fail
                .0
                .push(format!("{f}: expected no ticket, got ticket {t}")),
            (Some(label), None) => fail
                .0
                .push(format!("{f}: expected ticket {label:?}, got none")),
            (Some(label), Some(t)) => {
                if let Some(&known) = label_ticket.get(label) {
                    fail.check(known == t, || {
                        format!("{f}: ticket {label:?} is #{known}, but this mail is on #{t}")
                    });
                } else {
                    label_ticket.insert(label.clone(), t);
                }
                if let Some(other) = ticket_label.get(&t) {
                    fail.check(other == label, || {
                        format!("{f}: ticket #{t} belongs to {other:?}, not to {label:?}")
                    });
                } else {
                    ticket_label.insert(t, label.clone());
                }
            }
        }

        fail.eq(f, "subject", e.subject.as_deref(), m.subject.as_deref());
        let from = m.from.as_deref().expect("checked");
        fail.check(
            e.from_addr
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(from)),
            || format!("{f}: from: expected {from:?}, got {:?}", e.from_addr),
        );
        if let Some(name) = &m.from_name {
            fail.eq(f, "from_name", e.from_name.as_deref(), Some(name.as_str()));
        }
        let text = e.body_text.as_deref().unwrap_or_default();
        for needle in &m.body_contains {
            fail.check(text.contains(needle.as_str()), || {
                format!(
                    "{f}: body_text lacks {needle:?}; it is {:?}",
                    cut(text, 400)
                )
            });
        }
        let html = e.body_html.as_deref().unwrap_or_default();
        for needle in &m.html_contains {
            fail.check(html.contains(needle.as_str()), || {
                format!(
                    "{f}: body_html lacks {needle:?}; it is {:?}",
                    cut(html, 400)
                )
            });
        }
        fail.eq(f, "reader", e.reader.as_str(), "helpdesk");
        fail.eq(f, "limit_note", e.limit_note.as_deref(), None);
        fail.eq(f, "size", e.size, Some(raw.len() as i64));

        if m.disposition.as_deref() == Some("ticket")
            && let Some(t) = e.ticket_id.and_then(|t| db.tickets.get(&t))
        {
            fail.eq(
                f,
                "ticket subject",
                Some(t.subject.as_str()),
                m.subject.as_deref(),
            );
            fail.check(
                t.requester
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(from)),
                || format!("{f}: requester: expected {from:?}, got {:?}", t.requester),
            );
            fail.eq(f, "ticket status", t.status.as_str(), "open");
            fail.eq(f, "queue", t.queue.as_deref(), m.queue.as_deref());
            fail.eq(f, "priority", t.priority.as_deref(), m.priority.as_deref());
            fail.eq(f, "category", t.category.as_deref(), m.category.as_deref());
            fail.eq(f, "tags", db.tags(t.id), m.tags.clone());
        }

        if !m.attachments_unchecked {
            check_attachments(f, &m.attachment, db.attachments.get(&e.id), fail);
        }
    }

    // A label's ticket holds exactly that label's mails: nothing else joined it.
    let mut per_label: BTreeMap<&str, usize> = BTreeMap::new();
    for m in corpus.iter().filter_map(|c| c.expect.ticket.as_deref()) {
        *per_label.entry(m).or_default() += 1;
    }
    for (label, n) in per_label {
        if let Some(&t) = label_ticket.get(label) {
            fail.eq(
                &format!("ticket {label:?}"),
                "number of emails",
                db.ticket_emails(t).len(),
                n,
            );
        }
    }
    label_ticket
}

fn check_attachments(
    f: &str,
    expected: &[ExpectAttachment],
    actual: Option<&Vec<AttachmentRow>>,
    fail: &mut Failures,
) {
    let actual: &[AttachmentRow] = actual.map_or(&[], |v| v.as_slice());
    if actual.len() != expected.len() {
        fail.0.push(format!(
            "{f}: expected {} attachment(s), got {}: {:?}",
            expected.len(),
            actual.len(),
            actual
                .iter()
                .map(|a| (&a.filename, &a.content_type, a.size))
                .collect::<Vec<_>>()
        ));
        return;
    }
    for (i, (x, a)) in expected.iter().zip(actual).enumerate() {
        let at = format!("attachment {}", i + 1);
        match (&x.filename, &x.filename_safe) {
            (Some(name), _) => fail.eq(
                f,
                &format!("{at} filename"),
                a.filename.as_deref(),
                Some(name.as_str()),
            ),
            (None, Some(part)) => {
                let name = a.filename.as_deref().unwrap_or_default();
                fail.check(
                    name.contains(part.as_str())
                        && !name.contains(['/', '\\'])
                        && !name.chars().any(char::is_control)
                        && !name.starts_with('.'),
                    || {
                        format!(
                            "{f}: {at} filename: expected a safe name with {part:?}, got {:?}",
                            a.filename
                        )
                    },
                );
            }
            (None, None) => fail.eq(f, &format!("{at} filename"), a.filename.as_deref(), None),
        }
        fail.eq(
            f,
            &format!("{at} content_type"),
            a.content_type.as_str(),
            x.content_type.as_str(),
        );
        fail.eq(f, &format!("{at} inline"), a.inline != 0, x.inline);
        fail.eq(
            f,
            &format!("{at} content_id"),
            a.content_id.as_deref(),
            x.content_id.as_deref(),
        );
        fail.eq(f, &format!("{at} size"), a.size, x.size);
        fail.eq(
            f,
            &format!("{at} sha256"),
            a.sha256.as_deref(),
            Some(x.sha256.as_str()),
        );
        fail.eq(f, &format!("{at} dropped"), a.dropped.as_deref(), None);
        fail.eq(
            f,
            &format!("{at} blob"),
            a.blob.as_deref(),
            Some(format!("sha256:{}", x.sha256).as_str()),
        );
    }
}

/// Every stored attachment points at a blob with its content; every content
/// is stored once; no blob is left over (keep_raw is off).
fn check_blobs(db: &Snapshot, fail: &mut Failures) {
    let mut referenced = BTreeSet::new();
    let mut stored_rows = 0;
    for a in db.attachments.values().flatten() {
        let Some(key) = &a.blob else { continue };
        stored_rows += 1;
        referenced.insert(key.clone());
        match db.blobs.get(key) {
            None => fail.0.push(format!(
                "attachment {:?} points at a missing blob {key}",
                a.filename
            )),
            Some((size, sha)) => {
                fail.eq("blobs", &format!("{key} size"), *size, a.size);
                fail.eq(
                    "blobs",
                    &format!("{key} content"),
                    format!("sha256:{sha}"),
                    key.clone(),
                );
            }
        }
    }
    fail.eq(
        "blobs",
        "rows (one per distinct content)",
        db.blobs.len(),
        referenced.len(),
    );
    fail.check(stored_rows > referenced.len(), || {
        format!(
            "blobs: identical contents (the Fabrikam logo, the calendar and its invite.ics) \
             should share a blob: {stored_rows} attachments, {} blobs",
            referenced.len()
        )
    });
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl EmailRow {
    fn describe(&self) -> String {
        format!("#{} {:?}", self.id, self.message_id)
    }
}

// -- The 30 MB attachment -------------------------------------------------------------

const BIG_ATTACHMENT: usize = 30 * 1024 * 1024;
const BIG_MESSAGE_ID: &str = "3e9b7c15-0d2a-4f68-b1c4-7a5e2d8f0b93@weiss-architekten.example";
const BIG_FILENAME: &str = "Filiale-Brno_Plaene_v7.zip";

struct BigMail {
    raw: Vec<u8>,
    sha256: String,
}

/// A Thunderbird mail with a 30 MiB zip (deterministic bytes, base64 in
/// 76-character lines): over the default max_attachment_size (25 MiB), under
/// max_email_size (50 MiB).
fn big_mail() -> BigMail {
    let mut content = Vec::with_capacity(BIG_ATTACHMENT);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while content.len() < BIG_ATTACHMENT {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        content.extend_from_slice(&x.to_le_bytes());
    }
    content.truncate(BIG_ATTACHMENT);
    content[..4].copy_from_slice(b"PK\x03\x04");
    let sha256 = sha256_hex(&content);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&content);
    drop(content);

    let boundary = "------------0aT7bWq3LkS9dZ2mXc4vRf8p";
    let mut raw = format!(
        "Return-Path: <office@weiss-architekten.example>\r\n\
         Received: from mail.weiss-architekten.example (mail.weiss-architekten.example [198.51.100.61])\r\n\
         \tby mx.test.example (Postfix) with ESMTPS id 4Z8Wc31TpNz1xMr\r\n\
         \tfor <helpdesk@test.example>; Mon, 17 Mar 2025 13:20:04 +0100 (CET)\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\
         Message-ID: <{BIG_MESSAGE_ID}>\r\n\
         Date: Mon, 17 Mar 2025 13:19:58 +0100\r\n\
         MIME-Version: 1.0\r\n\
         User-Agent: Mozilla Thunderbird\r\n\
         Content-Language: de-AT\r\n\
         To: helpdesk@test.example\r\n\
         From: Weiss Architekten <office@weiss-architekten.example>\r\n\
         Subject: CAD export of the branch office plans\r\n\
         \r\n\
         This is a multi-part message in MIME format.\r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=UTF-8; format=flowed\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         Hello,\r\n\
         \r\n\
         attached is the CAD export of the Brno branch office plans (version 7)\r\n\
         for the network cabling. Our file share link did not work for you.\r\n\
         \r\n\
         Regards, Weiss Architekten\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: application/zip; name=\"{BIG_FILENAME}\"\r\n\
         Content-Disposition: attachment; filename=\"{BIG_FILENAME}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n"
    )
    .into_bytes();
    raw.reserve(b64.len() + b64.len() / 38 + 100);
    for line in b64.as_bytes().chunks(76) {
        raw.extend_from_slice(line);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    BigMail { raw, sha256 }
}

fn check_big_mail(
    big: &BigMail,
    db: &Snapshot,
    labels: &HashMap<String, i64>,
    fail: &mut Failures,
) {
    let f = "30 MiB attachment";
    let rows = db.rows_of(Some(BIG_MESSAGE_ID), None);
    if rows.len() != 1 {
        fail.0
            .push(format!("{f}: expected one email row, got {}", rows.len()));
        return;
    }
    let e = rows[0];
    fail.eq(f, "disposition", e.disposition.as_str(), "ticket");
    fail.check(
        e.ticket_id
            .is_some_and(|t| !labels.values().any(|&l| l == t)),
        || format!("{f}: expected a ticket of its own, got {:?}", e.ticket_id),
    );
    fail.eq(f, "size", e.size, Some(big.raw.len() as i64));
    fail.check(
        e.body_text
            .as_deref()
            .is_some_and(|t| t.contains("CAD export of the Brno branch office plans")),
        || {
            format!(
                "{f}: the text survives: {:?}",
                e.body_text.as_deref().map(|t| cut(t, 200))
            )
        },
    );
    let note = e.limit_note.as_deref().unwrap_or_default();
    fail.check(
        note.contains(BIG_FILENAME) && note.contains("max_attachment_size"),
        || {
            format!(
                "{f}: limit_note names the file and the limit: {:?}",
                e.limit_note
            )
        },
    );
    let atts: &[AttachmentRow] = db.attachments.get(&e.id).map_or(&[], |v| v.as_slice());
    if atts.len() != 1 {
        fail.0.push(format!(
            "{f}: expected 1 attachment row, got {}",
            atts.len()
        ));
        return;
    }
    let a = &atts[0];
    fail.eq(f, "filename", a.filename.as_deref(), Some(BIG_FILENAME));
    fail.eq(
        f,
        "content_type",
        a.content_type.as_str(),
        "application/zip",
    );
    fail.eq(f, "inline", a.inline, 0);
    fail.eq(f, "size", a.size, BIG_ATTACHMENT as i64);
    fail.eq(f, "sha256", a.sha256.as_deref(), Some(big.sha256.as_str()));
    fail.eq(f, "blob", a.blob.as_deref(), None);
    let dropped = a.dropped.as_deref().unwrap_or_default();
    fail.check(
        dropped.starts_with("larger than max_attachment_size (25") && dropped.ends_with("MiB)"),
        || {
            format!(
                "{f}: dropped: expected \"larger than max_attachment_size (25 MiB)\", got {:?}",
                a.dropped
            )
        },
    );
    fail.check(
        !db.blobs.contains_key(&format!("sha256:{}", big.sha256)),
        || format!("{f}: its content must not be stored"),
    );
}

// -- The corpus run -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_mail_gets_its_expected_outcome() {
    let corpus = load_corpus();
    let big = big_mail();
    let env = Env::start();
    let mut mails: Vec<&[u8]> = corpus.iter().map(|m| m.raw.as_slice()).collect();
    mails.push(&big.raw);
    deliver_in_order(&env, USER, &mails);
    let config = write_config(&env, &[env.reader("helpdesk")], CORPUS_POLICY);
    run_once(&config);

    let db = Snapshot::load(&env).await;
    let mut fail = Failures::default();
    let labels = check_corpus(&corpus, &db, &mut fail);
    check_big_mail(&big, &db, &labels, &mut fail);
    check_blobs(&db, &mut fail);

    let distinct = corpus
        .iter()
        .filter(|m| m.expect.duplicate_of.is_none())
        .count();
    fail.eq("totals", "emails", db.emails.len(), distinct + 1);
    let label_count = corpus
        .iter()
        .filter_map(|m| m.expect.ticket.as_deref())
        .collect::<BTreeSet<_>>()
        .len();
    fail.eq("totals", "tickets", db.tickets.len(), label_count + 1);
    fail.eq("totals", "outbox rows (no [reader.reply])", db.outbox, 0);
    fail.eq(
        "totals",
        "mails flagged \\Seen",
        env.dovecot.seen_count(USER, "INBOX"),
        mails.len(),
    );

    // The 5-mail thread (Outlook, iPhone, Gmail, Thunderbird without
    // In-Reply-To, Outlook) is one ticket with 5 emails, and the agent's own
    // reply and the stranger's forward did not join it.
    if let Some(&vpn) = labels.get("vpn") {
        let thread: Vec<_> = db.ticket_emails(vpn);
        fail.eq("vpn thread", "emails on its ticket", thread.len(), 5);
        let dispositions: Vec<&str> = thread.iter().map(|e| e.disposition.as_str()).collect();
        fail.eq(
            "vpn thread",
            "dispositions",
            dispositions,
            vec!["ticket", "reply", "reply", "reply", "reply"],
        );
    } else {
        fail.0.push("vpn thread: no ticket".into());
    }
    fail.assert_none("corpus");
}

// -- Threading across runs ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_mail_thread_across_two_runs_is_one_ticket_with_five_emails() {
    let corpus = load_corpus();
    let env = Env::start();
    let config = write_config(&env, &[env.reader("helpdesk")], CORPUS_POLICY);
    let raw = |p: &str| corpus_mail(&corpus, p).raw.as_slice();

    // Outlook opens it; the iPhone reply and the Gmail reply-all come in the
    // same batch.
    deliver_in_order(&env, USER, &[raw("01-"), raw("04-"), raw("06-")]);
    run_once(&config);
    // Thunderbird (References only) and Outlook answer in a later run; in
    // between, an agent answers from the shared mailbox, which is ours.
    deliver_in_order(&env, USER, &[raw("08-"), raw("36-"), raw("11-")]);
    run_once(&config);

    let db = Snapshot::load(&env).await;
    assert_eq!(db.tickets.len(), 1, "one ticket");
    let ticket = *db.tickets.keys().next().expect("a ticket");
    let thread: Vec<(&str, &str)> = db
        .ticket_emails(ticket)
        .iter()
        .map(|e| {
            (
                e.message_id.as_deref().unwrap_or_default(),
                e.disposition.as_str(),
            )
        })
        .collect();
    let id = |p: &str| {
        corpus_mail(&corpus, p)
            .expect
            .message_id
            .clone()
            .expect("a Message-ID")
    };
    let (t1, t2, t3, t4, t5) = (id("01-"), id("04-"), id("06-"), id("08-"), id("11-"));
    assert_eq!(
        thread,
        vec![
            (t1.as_str(), "ticket"),
            (t2.as_str(), "reply"),
            (t3.as_str(), "reply"),
            (t4.as_str(), "reply"),
            (t5.as_str(), "reply"),
        ],
        "1 ticket with 5 emails, in order"
    );
    let own = db.row_by_message_id(&id("36-"));
    assert_eq!(
        (own.ticket_id, own.disposition.as_str()),
        (None, "ignored: own-address (From: helpdesk@test.example)")
    );
    assert_eq!(
        db.tickets[&ticket].requester.as_deref(),
        Some("jan.novak@fabrikam.example")
    );
}

// -- Reopening, tags and forwards (ticket numbers known only at run time) -----------

fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

/// Sofia's Gmail vacation responder answers an agent's reply on her (closed)
/// laptop ticket; Gmail keeps the References of the mail it answers.
fn vacation_reply_on_laptop(laptop1: &str, laptop2: &str) -> Vec<u8> {
    crlf(&format!(
        "Return-Path: <sofia.marino.design@gmail.com>\n\
         Received: from mail-ej1-f46.google.com (mail-ej1-f46.google.com [209.85.218.46])\n\
         \tby mx.test.example (Postfix) with ESMTPS id 4Z9A0b7KpRz1xNa\n\
         \tfor <helpdesk@test.example>; Tue, 18 Mar 2025 09:12:03 +0100 (CET)\n\
         MIME-Version: 1.0\n\
         From: Sofia Marino <sofia.marino.design@gmail.com>\n\
         Date: Tue, 18 Mar 2025 01:12:02 -0700\n\
         Message-ID: <CAHx7Lq1vAc8Tn3Rr5Ws7Yt9Zu1Av3Bw5Cx7Dy9Ez1Fa3Gb5Hc@mail.gmail.com>\n\
         In-Reply-To: <DB9PR02MB7290C1D3E5F7A9B2C4D6E8F0A2B4C6D8E0F2@DB9PR02MB7290.eurprd02.prod.outlook.com>\n\
         References: <{laptop1}>\n <{laptop2}>\n \
         <DB9PR02MB7290C1D3E5F7A9B2C4D6E8F0A2B4C6D8E0F2@DB9PR02MB7290.eurprd02.prod.outlook.com>\n\
         Subject: On holiday until 24 March\n\
         Auto-Submitted: auto-replied\n\
         To: helpdesk@test.example\n\
         Content-Type: text/plain; charset=\"UTF-8\"\n\
         \n\
         I am on holiday until 24 March and will read your mail afterwards.\n\
         Sofia\n"
    ))
}

/// Sofia answers in the thread of her laptop ticket, which is closed by now.
fn gmail_reply_on_laptop(laptop1: &str, laptop2: &str) -> Vec<u8> {
    crlf(&format!(
        "Return-Path: <sofia.marino.design@gmail.com>\n\
         Received: from mail-ej1-f46.google.com (mail-ej1-f46.google.com [209.85.218.46])\n\
         \tby mx.test.example (Postfix) with ESMTPS id 4Z9C2d1LqTz1xNc\n\
         \tfor <helpdesk@test.example>; Mon, 24 Mar 2025 08:40:11 +0100 (CET)\n\
         MIME-Version: 1.0\n\
         References: <{laptop1}>\n <{laptop2}>\n\
         In-Reply-To: <{laptop2}>\n\
         From: Sofia Marino <sofia.marino.design@gmail.com>\n\
         Date: Mon, 24 Mar 2025 08:40:07 +0100\n\
         Message-ID: <CAHx7Lq3Zx0Yw2Vu4Ts6Rq8Po0Nm2Lk4Ji6Hg8Fe0Dc2Ba4Zy@mail.gmail.com>\n\
         Subject: Re: Laptop fan extremely loud after BIOS update\n\
         To: helpdesk@test.example\n\
         Content-Type: text/plain; charset=\"UTF-8\"\n\
         Content-Transfer-Encoding: quoted-printable\n\
         \n\
         Sorry, it is back: since this morning the fan runs at full speed again,\n\
         even with the old BIOS. Could someone look at it after all?\n\
         \n\
         Sofia\n\
         \n\
         On Thu, 13 Mar 2025 at 08:21, Sofia Marino <sofia.marino.design@gmail.com> wr=\n\
         ote:\n\
         \n\
         > Small update: after rolling back to BIOS 1.14.0 myself the fan is quiet a=\n\
         gain.\n"
    ))
}

/// A Thunderbird inline forward with no References, tagged with `tag`.
fn thunderbird_forward(from: &str, name: &str, message_id: &str, tag: &str) -> Vec<u8> {
    crlf(&format!(
        "Return-Path: <{from}>\n\
         Received: from smtp.othercorp.example (smtp.othercorp.example [198.51.100.77])\n\
         \tby mx.test.example (Postfix) with ESMTPS id 4Z9C5f3MrVz1xNe\n\
         \tfor <helpdesk@test.example>; Mon, 24 Mar 2025 09:05:30 +0100 (CET)\n\
         Message-ID: <{message_id}>\n\
         Date: Mon, 24 Mar 2025 09:05:27 +0100\n\
         MIME-Version: 1.0\n\
         User-Agent: Mozilla Thunderbird\n\
         Content-Language: en-US\n\
         To: helpdesk@test.example\n\
         From: {name} <{from}>\n\
         Subject: Fwd: {tag} Printer on 3rd floor prints blank pages\n\
         Content-Type: text/plain; charset=UTF-8; format=flowed\n\
         Content-Transfer-Encoding: 7bit\n\
         \n\
         Our printer on the 2nd floor does the same since the toner change.\n\
         \n\
         -------- Forwarded Message --------\n\
         Subject: \t{tag} Printer on 3rd floor prints blank pages\n\
         Date: \tWed, 12 Mar 2025 09:52:14 +0000\n\
         From: \thelpdesk@test.example\n\
         To: \ttom.berger@northwind.example\n\
         \n\
         Hello,\n\
         \n\
         Thank you for your message. We have opened ticket {tag} for it.\n"
    ))
}

/// Apple Mail forward by `from` with the ticket tag and no References.
fn apple_mail_forward(from: &str, name: &str, message_id: &str, tag: &str) -> Vec<u8> {
    crlf(&format!(
        "Return-Path: <{from}>\n\
         Received: from smtp.northwind.example (smtp.northwind.example [198.51.100.23])\n\
         \tby mx.test.example (Postfix) with ESMTPS id 4Z9C7h5NsXz1xNg\n\
         \tfor <helpdesk@test.example>; Mon, 24 Mar 2025 09:31:44 +0100 (CET)\n\
         From: {name} <{from}>\n\
         Content-Type: text/plain;\n\
         \tcharset=us-ascii\n\
         Content-Transfer-Encoding: 7bit\n\
         Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3826.400.131.1.6\\))\n\
         Subject: Fwd: {tag} Printer on 3rd floor prints blank pages\n\
         Message-Id: <{message_id}>\n\
         Date: Mon, 24 Mar 2025 09:31:40 +0100\n\
         To: helpdesk@test.example\n\
         X-Mailer: Apple Mail (2.3826.400.131.1.6)\n\
         \n\
         The new toner did not help, the pages are still blank.\n\
         \n\
         Tom\n\
         \n\
         > Begin forwarded message:\n\
         > \n\
         > From: helpdesk@test.example\n\
         > Subject: {tag} Printer on 3rd floor prints blank pages\n\
         > Date: 12 March 2025 at 10:52:14 CET\n\
         > To: tom.berger@northwind.example\n\
         > \n\
         > Thank you for your message. We have opened ticket {tag} for it.\n"
    ))
}

/// A new mail (no References) that only names the ticket by its tag.
fn tag_only_reply(from: &str, name: &str, message_id: &str, tag: &str) -> Vec<u8> {
    crlf(&format!(
        "Return-Path: <{from}>\n\
         Received: from mail.example.net (mail.example.net [192.0.2.25])\n\
         \tby mx.test.example (Postfix) with ESMTPS id 4Z9C9k7PtZz1xNj\n\
         \tfor <helpdesk@test.example>; Mon, 24 Mar 2025 10:02:10 +0100 (CET)\n\
         MIME-Version: 1.0\n\
         From: {name} <{from}>\n\
         Date: Mon, 24 Mar 2025 10:02:06 +0100\n\
         Message-ID: <{message_id}>\n\
         Subject: Re: {tag} Printer on 3rd floor prints blank pages\n\
         To: helpdesk@test.example\n\
         Content-Type: text/plain; charset=\"UTF-8\"\n\
         \n\
         Any news on this one? The printer still prints blank pages.\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_tickets_reopen_and_tags_and_forwards_join_only_for_participants() {
    let corpus = load_corpus();
    let env = Env::start();
    let config = write_config(&env, &[env.reader("helpdesk")], CORPUS_POLICY);
    let mail = |p: &str| corpus_mail(&corpus, p);
    deliver_in_order(
        &env,
        USER,
        &[&mail("02-").raw, &mail("03-").raw, &mail("10-").raw],
    );
    run_once(&config);

    let laptop1 = mail("02-").expect.message_id.clone().expect("id");
    let laptop2 = mail("10-").expect.message_id.clone().expect("id");
    let printer1 = mail("03-").expect.message_id.clone().expect("id");
    let db = Snapshot::load(&env).await;
    let laptop = db
        .row_by_message_id(&laptop1)
        .ticket_id
        .expect("laptop ticket");
    let printer = db
        .row_by_message_id(&printer1)
        .ticket_id
        .expect("printer ticket");
    assert_eq!(db.row_by_message_id(&laptop2).ticket_id, Some(laptop));
    assert_ne!(laptop, printer);

    // An admin closes the laptop ticket; an out-of-office in its thread
    // must not reopen it.
    let pool = env.db().await;
    sqlx::query("UPDATE tickets SET status = 'closed' WHERE id = ?")
        .bind(laptop)
        .execute(&pool)
        .await
        .expect("close the ticket");
    pool.close().await;
    deliver_in_order(&env, USER, &[&vacation_reply_on_laptop(&laptop1, &laptop2)]);
    run_once(&config);
    let db = Snapshot::load(&env).await;
    let vacation =
        db.row_by_message_id("CAHx7Lq1vAc8Tn3Rr5Ws7Yt9Zu1Av3Bw5Cx7Dy9Ez1Fa3Gb5Hc@mail.gmail.com");
    assert_eq!(
        (vacation.ticket_id, vacation.disposition.as_str()),
        (None, "ignored: auto-reply (Auto-Submitted: auto-replied)")
    );
    assert_eq!(
        db.tickets[&laptop].status, "closed",
        "an auto-reply never reopens"
    );

    // Now the real answer, and mail that names the printer ticket by its tag.
    let tag = format!("[#{printer}]");
    let stranger_fwd = "5d1c9e7a-2b4f-4a6d-8c0e-3f1a5b7d9c2e@othercorp.example";
    let requester_fwd = "A7C2E4F6-1B3D-4E5F-9A8B-7C6D5E4F3A21@northwind.example";
    let stranger_tag = "20250324100206.4b8e@mail.example.net";
    let participant_tag = "CAKq8Xs7Bt9Cv1Dw3Ex5Fy7Gz9Ha1Ib3Jc5Kd7Le9Mf1Ng3Oh@mail.gmail.com";
    deliver_in_order(
        &env,
        USER,
        &[
            &gmail_reply_on_laptop(&laptop1, &laptop2),
            &thunderbird_forward(
                "mike.ross@othercorp.example",
                "Mike Ross",
                stranger_fwd,
                &tag,
            ),
            &apple_mail_forward(
                "tom.berger@northwind.example",
                "Tom Berger",
                requester_fwd,
                &tag,
            ),
            &tag_only_reply(
                "eve.k@unrelated.example",
                "Eve Kowalski",
                stranger_tag,
                &tag,
            ),
            &tag_only_reply(
                "lfischer.northwind@gmail.com",
                "Lena Fischer",
                participant_tag,
                &tag,
            ),
        ],
    );
    run_once(&config);

    let db = Snapshot::load(&env).await;
    let reply =
        db.row_by_message_id("CAHx7Lq3Zx0Yw2Vu4Ts6Rq8Po0Nm2Lk4Ji6Hg8Fe0Dc2Ba4Zy@mail.gmail.com");
    assert_eq!(
        (reply.ticket_id, reply.disposition.as_str()),
        (Some(laptop), "reopened"),
        "a reply to a closed ticket joins and reopens it"
    );
    assert_eq!(db.tickets[&laptop].status, "open");

    let mut fail = Failures::default();
    let new_ticket = |id: &str, requester: &str, fail: &mut Failures| {
        let e = db.row_by_message_id(id);
        fail.eq(id, "disposition", e.disposition.as_str(), "ticket");
        match e.ticket_id {
            Some(t) if t != printer && t != laptop => fail.eq(
                id,
                "requester",
                db.tickets[&t].requester.as_deref(),
                Some(requester),
            ),
            other => fail
                .0
                .push(format!("{id}: expected a new ticket, got {other:?}")),
        }
    };
    // A stranger forwarding someone else's ticket tag opens their own ticket.
    new_ticket(stranger_fwd, "mike.ross@othercorp.example", &mut fail);
    // So does a stranger writing with the tag alone.
    new_ticket(stranger_tag, "eve.k@unrelated.example", &mut fail);
    // The requester's forward and a Cc'd participant's tagged mail join.
    for id in [requester_fwd, participant_tag] {
        let e = db.row_by_message_id(id);
        fail.eq(id, "ticket", e.ticket_id, Some(printer));
        fail.eq(id, "disposition", e.disposition.as_str(), "reply");
    }
    fail.eq(
        "printer ticket",
        "emails",
        db.ticket_emails(printer).len(),
        3,
    );
    fail.eq("totals", "tickets", db.tickets.len(), 4);
    fail.assert_none("reopen, tags and forwards");
}

// -- Two readers ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mail_through_two_mailboxes_is_one_email() {
    let corpus = load_corpus();
    let env = Env::start();
    let other = "it-team@test.example";
    env.add_mailbox(other);
    let mail = |p: &str| corpus_mail(&corpus, p);
    // The same Message-ID in both mailboxes; and one mail without a
    // Message-ID, whose two deliveries differ in their trace headers.
    deliver_in_order(&env, USER, &[&mail("02-").raw, &mail("33-").raw]);
    deliver_in_order(&env, other, &[&mail("02-").raw, &mail("34-").raw]);
    let readers = [env.reader("helpdesk"), env.reader_of("it-team", other)];
    let config = write_config(&env, &readers, CORPUS_POLICY);
    run_once(&config);

    let db = Snapshot::load(&env).await;
    let laptop1 = mail("02-").expect.message_id.clone().expect("id");
    let with_id = db.rows_of(Some(&laptop1), None);
    assert_eq!(
        with_id.len(),
        1,
        "one email for one Message-ID: {with_id:#?}"
    );
    let subject = mail("33-").expect.subject.clone().expect("subject");
    let without_id = db.rows_of(None, Some(&subject));
    assert_eq!(
        without_id.len(),
        1,
        "one email for one content: {without_id:#?}"
    );
    for e in [with_id[0], without_id[0]] {
        assert_eq!(e.disposition, "ticket");
        assert!(
            e.reader == "helpdesk" || e.reader == "it-team",
            "{}",
            e.reader
        );
    }
    assert_eq!((db.emails.len(), db.tickets.len()), (2, 2));
    // Both readers did read both of their mails.
    assert_eq!(env.dovecot.seen_count(USER, "INBOX"), 2);
    assert_eq!(env.dovecot.seen_count(other, "INBOX"), 2);
}

// -- Rule modes -------------------------------------------------------------------------------

fn mode_rules(mode: &str) -> String {
    format!(
        r#"
[guard]
own_addresses = ["support@test.example"]

[rules]
mode = "{mode}"

[[rule]]
name = "vip"
from = "@BigCorp.Example"
queue = "vip"
priority = "high"
tags = ["vip", "key-account"]

[[rule]]
name = "billing"
subject = {{ regex = "(?i)invoice|facture" }}
priority = "normal"
category = "billing"
tags = ["billing"]

[[rule]]
name = "helpdesk-inbox"
reader = "helpdesk"
tags = ["inbox", "vip"]

[[rule]]
name = "other-readers"
reader = ["it-team", "sales"]
queue = "wrong"
tags = ["never"]

[[rule]]
name = "newsletters"
from = "vendor-promo.example"
action = "ignore"
"#
    )
}

/// (file prefix, disposition, queue, priority, category, tags)
type Routed = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    &'static [&'static str],
);

async fn run_rules(corpus: &[CorpusMail], mode: &str, expected: &[Routed]) {
    let env = Env::start();
    let mails: Vec<&[u8]> = expected
        .iter()
        .map(|(p, ..)| corpus_mail(corpus, p).raw.as_slice())
        .collect();
    deliver_in_order(&env, USER, &mails);
    let config = write_config(&env, &[env.reader("helpdesk")], &mode_rules(mode));
    run_once(&config);
    let db = Snapshot::load(&env).await;
    let mut fail = Failures::default();
    for (prefix, disposition, queue, priority, category, tags) in expected {
        let m = &corpus_mail(corpus, prefix).expect;
        let f = format!("mode {mode}, {}", m.file);
        let e = db.row_by_message_id(m.message_id.as_deref().expect("id"));
        fail.eq(&f, "disposition", e.disposition.as_str(), disposition);
        let Some(t) = e.ticket_id else {
            fail.check(disposition.starts_with("ignored: "), || {
                format!("{f}: no ticket")
            });
            continue;
        };
        let ticket = &db.tickets[&t];
        fail.eq(&f, "queue", ticket.queue.as_deref(), *queue);
        fail.eq(&f, "priority", ticket.priority.as_deref(), *priority);
        fail.eq(&f, "category", ticket.category.as_deref(), *category);
        let want: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
        fail.eq(&f, "tags", db.tags(t), want);
    }
    fail.assert_none(&format!("rules, mode = {mode:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_match_and_all_match_rules_route_differently() {
    let corpus = load_corpus();
    // First match: each mail takes the first rule that matches, so the
    // reader-wide rule shadows the later ignore rule.
    run_rules(
        &corpus,
        "first",
        &[
            (
                "39-",
                "ticket",
                Some("vip"),
                Some("high"),
                None,
                &["vip", "key-account"],
            ),
            (
                "21-",
                "ticket",
                None,
                Some("normal"),
                Some("billing"),
                &["billing"],
            ),
            ("17-", "ticket", None, None, None, &["inbox", "vip"]),
            ("02-", "ticket", None, None, None, &["inbox", "vip"]),
        ],
    )
    .await;
    // All match: later non-empty values win, tags add up without
    // duplicates, and any ignore wins.
    run_rules(
        &corpus,
        "all",
        &[
            (
                "39-",
                "ticket",
                Some("vip"),
                Some("normal"),
                Some("billing"),
                &["vip", "key-account", "billing", "inbox"],
            ),
            (
                "21-",
                "ticket",
                None,
                Some("normal"),
                Some("billing"),
                &["billing", "inbox", "vip"],
            ),
            ("17-", "ignored: rule (newsletters)", None, None, None, &[]),
            ("02-", "ticket", None, None, None, &["inbox", "vip"]),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rule_regex_is_a_config_error_naming_the_rule() {
    let env = Env::start();
    let policy = r#"
[[rule]]
name = "fine"
from = "@example.com"
queue = "a"

[[rule]]
name = "broken-subject"
subject = { regex = "(?i)invoice(" }
queue = "b"
"#;
    let config = write_config(&env, &[env.reader("helpdesk")], policy);
    let (code, stdout, stderr) = tokio::task::block_in_place(|| {
        run_binary(
            &["-c", config.to_str().expect("utf-8"), "run", "--once"],
            std::time::Duration::from_secs(60),
        )
    });
    assert_ne!(
        code,
        Some(0),
        "an invalid regex must stop the run: {stdout}{stderr}"
    );
    let output = format!("{stdout}{stderr}");
    assert!(
        output.contains("broken-subject"),
        "the error names the rule: {output}"
    );
    assert!(!env.db_file().exists() || env.count("SELECT COUNT(*) FROM emails").await == 0);
}
