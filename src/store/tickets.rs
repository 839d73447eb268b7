//! One mail into the database, inside the batch's transaction: whether it
//! is new (dedup), which ticket it joins or opens (threading, rate limit,
//! the guard's and the rules' verdicts), its email and attachment rows, its
//! contents stored once, and the acknowledgement queued in the outbox.
//!
//! Deciding inside the transaction is what makes the outcome exact: a
//! reply later in the same batch finds the ticket its parent just opened,
//! and a crash leaves either all of it or none. Also here: what recent
//! mail became, per reader, for `status` ([`MailCounts`]).

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::{NOW, StoreError};
use crate::config::{ClosedReply, TagFrom};
use crate::ingest::guard::Guarded;
use crate::ingest::{Incoming, ParsedMail, Verdict, thread};
use crate::outcome::{BatchOutcome, Reason};

/// What one reader's mail became recently, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MailCounts {
    #[serde(skip)]
    pub reader: String,
    pub tickets: i64,
    pub replies: i64,
    pub reopened: i64,
    pub bounces: i64,
    /// Mails set aside in the quarantine.
    pub quarantined: i64,
    /// Mails kept out, by guard reason (`rule` for ignore rules).
    pub ignored: std::collections::BTreeMap<String, i64>,
}

impl MailCounts {
    pub fn ignored_total(&self) -> i64 {
        self.ignored.values().sum()
    }
}

impl super::StatusView {
    /// Per reader, what the mail received within `hours` became. Empty for
    /// a database from before dispositions existed (`status` may be run by
    /// a newer binary than the daemon that migrated it).
    pub async fn mail_counts(&self, hours: u32) -> Result<Vec<MailCounts>, StoreError> {
        if !self.has_migration(super::TICKET_SEMANTICS).await? {
            return Ok(Vec::new());
        }
        // 'ignored: REASON (DETAIL)' counts by REASON.
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT reader,
                    CASE WHEN disposition LIKE 'ignored: %' AND instr(disposition, ' (') > 10
                         THEN 'ignored:' || substr(disposition, 10, instr(disposition, ' (') - 10)
                         WHEN disposition LIKE 'quarantined: %' THEN 'quarantined'
                         ELSE disposition END AS kind,
                    COUNT(*)
             FROM emails
             WHERE received_at >= strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?)
             GROUP BY 1, 2
             ORDER BY 1, 2",
        )
        .bind(format!("-{hours} hours"))
        .fetch_all(&self.pool)
        .await?;
        let mut counts: Vec<MailCounts> = Vec::new();
        for (reader, kind, n) in rows {
            if counts.last().is_none_or(|c| c.reader != reader) {
                counts.push(MailCounts {
                    reader,
                    ..MailCounts::default()
                });
            }
            let Some(c) = counts.last_mut() else { continue };
            match kind.as_str() {
                "ticket" => c.tickets += n,
                "reply" => c.replies += n,
                "reopened" => c.reopened += n,
                "bounce" => c.bounces += n,
                "quarantined" => c.quarantined += n,
                other => {
                    let reason = other.strip_prefix("ignored:").unwrap_or(other);
                    *c.ignored.entry(reason.to_string()).or_default() += n;
                }
            }
        }
        Ok(counts)
    }
}

/// Stores each mail not yet known, in order. Returns, for every mail, the
/// email it is (new or the earlier copy), for the caller's ledger rows.
pub(super) async fn store_mails<'m, K>(
    tx: &mut Transaction<'_, Sqlite>,
    reader: &str,
    mails: &[(&'m K, &'m Incoming)],
    outcome: &mut BatchOutcome,
) -> Result<Vec<(&'m K, i64)>, StoreError> {
    if mails.is_empty() {
        // A batch fetched again after a crash: every position is known.
        return Ok(Vec::new());
    }
    // Tickets and emails are written in bulk at the end (see `Seen`), after
    // the attachments and outbox rows that point at them: their foreign
    // keys are checked at commit.
    sqlx::query("PRAGMA defer_foreign_keys = ON")
        .execute(&mut **tx)
        .await?;
    let mut seen = Seen::load(tx, reader, mails).await?;
    let mut stored = Vec::with_capacity(mails.len());
    for &(key, incoming) in mails {
        // `seen` learns each mail stored, so this also catches the same
        // mail twice within one batch.
        let email_id = match seen.emails.get(&incoming.mail.dedup_key) {
            Some(&id) => {
                outcome.duplicates += 1;
                id
            }
            None => {
                let id = store_one(tx, incoming, &mut seen, outcome).await?;
                seen.emails.insert(incoming.mail.dedup_key.clone(), id);
                id
            }
        };
        stored.push((key, email_id));
    }
    seen.flush(tx).await?;
    Ok(stored)
}

/// What a batch needs to know about mail already stored, read with one
/// query each for the whole batch rather than per mail (each statement
/// costs a round trip to SQLite's thread), kept up to date as the batch is
/// stored; and the new tickets and emails not written yet. They are
/// written many rows per statement, when a lookup needs them in the
/// database (a reply to a mail earlier in the batch) or at the end.
struct Seen<'m> {
    reader: &'m str,
    /// Dedup key → email id.
    emails: HashMap<String, i64>,
    /// Lower-case sender → mail that opened or joined a ticket within the
    /// rate window.
    recent: HashMap<String, i64>,
    /// Ids are assigned here, under the write lock the transaction holds.
    next_ticket: i64,
    next_email: i64,
    tickets: Vec<NewTicket<'m>>,
    new_emails: Vec<NewEmail<'m>>,
}

struct NewTicket<'m> {
    id: i64,
    token: String,
    incoming: &'m Incoming,
}

struct NewEmail<'m> {
    id: i64,
    ticket_id: Option<i64>,
    disposition: String,
    raw_blob: Option<String>,
    incoming: &'m Incoming,
}

impl<'m> Seen<'m> {
    async fn load<K>(
        tx: &mut Transaction<'_, Sqlite>,
        reader: &'m str,
        mails: &[(&K, &Incoming)],
    ) -> Result<Seen<'m>, StoreError> {
        let (next_ticket,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM tickets")
            .fetch_one(&mut **tx)
            .await?;
        let (next_email,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM emails")
            .fetch_one(&mut **tx)
            .await?;
        let mut seen = Seen {
            reader,
            emails: HashMap::new(),
            recent: HashMap::new(),
            next_ticket,
            next_email,
            tickets: Vec::new(),
            new_emails: Vec::new(),
        };
        // Chunks keep the bound values under SQLite's limit.
        for chunk in mails.chunks(LOOKUP_CHUNK) {
            let mut q = QueryBuilder::new("SELECT dedup_key, id FROM emails WHERE dedup_key IN ");
            in_list(&mut q, chunk.iter().map(|(_, m)| m.mail.dedup_key.as_str()));
            let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&mut **tx).await?;
            seen.emails.extend(rows);
        }
        // One batch is parsed under one policy.
        let Some((_, first)) = mails.first() else {
            return Ok(seen);
        };
        let guard = &first.policy.guard;
        if guard.rate_limit == 0 {
            return Ok(seen);
        }
        let mut senders: Vec<String> = mails
            .iter()
            .filter_map(|(_, m)| m.mail.from_addr.as_deref().map(str::to_ascii_lowercase))
            .collect();
        senders.sort();
        senders.dedup();
        for chunk in senders.chunks(LOOKUP_CHUNK) {
            let mut q = QueryBuilder::new(
                "SELECT lower(from_addr), COUNT(*) FROM emails
                 WHERE disposition IN ('ticket', 'reply', 'reopened')
                   AND received_at >= strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ",
            );
            q.push_bind(format!("-{} seconds", guard.rate_window.as_secs()));
            q.push(") AND lower(from_addr) IN ");
            in_list(&mut q, chunk);
            q.push(" GROUP BY 1");
            let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&mut **tx).await?;
            seen.recent.extend(rows);
        }
        Ok(seen)
    }

    /// Writes the new tickets and emails.
    async fn flush(&mut self, tx: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
        for chunk in self.tickets.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::new(
                "INSERT INTO tickets (id, reader, subject, requester, requester_name, status,
                    created_at, updated_at, queue, priority, category, tags, thread_token) ",
            );
            q.push_values(chunk, |mut row, t| {
                let (mail, routing) = (&t.incoming.mail, &t.incoming.routing);
                let tags = serde_json::to_string(&routing.tags).unwrap_or_else(|_| "[]".into());
                row.push_bind(t.id)
                    .push_bind(self.reader)
                    .push_bind(mail.subject.as_str())
                    .push_bind(mail.from_addr.as_deref())
                    .push_bind(mail.from_name.as_deref())
                    .push("'open'")
                    .push(NOW)
                    .push(NOW)
                    .push_bind(routing.queue.as_deref())
                    .push_bind(routing.priority.as_deref())
                    .push_bind(routing.category.as_deref())
                    .push_bind(tags)
                    .push_bind(t.token.as_str());
            });
            q.build().execute(&mut **tx).await?;
        }
        self.tickets.clear();
        for chunk in self.new_emails.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::new(
                "INSERT INTO emails (id, ticket_id, reader, dedup_key, message_id, in_reply_to,
                    references_, from_addr, from_name, to_addrs, cc_addrs, subject, sent_at,
                    body_text, body_html, parse_note, received_at, disposition, limit_note, size,
                    raw_blob) ",
            );
            q.push_values(chunk, |mut row, e| {
                let m = &e.incoming.mail;
                row.push_bind(e.id)
                    .push_bind(e.ticket_id)
                    .push_bind(self.reader)
                    .push_bind(m.dedup_key.as_str())
                    .push_bind(m.message_id.as_deref())
                    .push_bind(m.in_reply_to.as_deref())
                    .push_bind(m.references.as_deref())
                    .push_bind(m.from_addr.as_deref())
                    .push_bind(m.from_name.as_deref())
                    .push_bind(m.to.as_deref())
                    .push_bind(m.cc.as_deref())
                    .push_bind(m.subject.as_str())
                    .push_bind(m.sent_at.as_deref())
                    .push_bind(m.body_text.as_str())
                    .push_bind(m.body_html.as_deref())
                    .push_bind(m.parse_note.as_deref())
                    .push(NOW)
                    .push_bind(e.disposition.as_str())
                    .push_bind(m.limit_note.as_deref())
                    .push_bind(i64::try_from(m.size).unwrap_or(i64::MAX))
                    .push_bind(e.raw_blob.as_deref());
            });
            q.build().execute(&mut **tx).await?;
        }
        self.new_emails.clear();
        Ok(())
    }
}

/// Rows per multi-row INSERT (here and for the ledgers), keeping the bound
/// values (20 per email row) well under SQLite's limit of 32766.
pub(super) const ROWS_PER_INSERT: usize = 500;

/// Values per lookup query.
const LOOKUP_CHUNK: usize = 500;

/// Where a new mail goes.
enum Placement {
    /// Opens a ticket.
    Open,
    /// Joins this ticket, reopening it if `reopen`.
    Join { ticket: i64, reopen: bool },
    /// A report about our mail to this ticket.
    Bounce { ticket: i64 },
    /// No ticket.
    Ignore(Guarded),
}

async fn store_one<'m>(
    tx: &mut Transaction<'_, Sqlite>,
    incoming: &'m Incoming,
    seen: &mut Seen<'m>,
    outcome: &mut BatchOutcome,
) -> Result<i64, StoreError> {
    let mail = &incoming.mail;
    let placement = place(tx, incoming, seen).await?;
    if matches!(placement, Placement::Open | Placement::Join { .. })
        && let Some(sender) = &mail.from_addr
    {
        *seen.recent.entry(sender.to_ascii_lowercase()).or_default() += 1;
    }
    let mut new_token = None;
    let (ticket_id, disposition) = match &placement {
        Placement::Open => {
            outcome.created += 1;
            let id = seen.next_ticket;
            seen.next_ticket += 1;
            let token = thread::new_token();
            new_token = Some(token.clone());
            seen.tickets.push(NewTicket {
                id,
                token,
                incoming,
            });
            (Some(id), "ticket".to_string())
        }
        Placement::Join { ticket, reopen } => {
            outcome.joined += 1;
            touch_ticket(tx, *ticket, *reopen).await?;
            let disposition = if *reopen { "reopened" } else { "reply" };
            (Some(*ticket), disposition.to_string())
        }
        Placement::Bounce { ticket } => {
            outcome.joined += 1;
            touch_ticket(tx, *ticket, false).await?;
            (Some(*ticket), "bounce".to_string())
        }
        Placement::Ignore(guarded) => {
            outcome.count_ignored(guarded.reason);
            (None, guarded.disposition())
        }
    };

    let raw_blob = match &mail.raw {
        Some(raw) => Some(put_blob(tx, &raw.content, &raw.sha256).await?),
        None => None,
    };
    let email_id = seen.next_email;
    seen.next_email += 1;
    seen.new_emails.push(NewEmail {
        id: email_id,
        ticket_id,
        disposition,
        raw_blob,
        incoming,
    });

    for a in &mail.attachments {
        let blob = match &a.content {
            Some(content) => Some(put_blob(tx, content, &a.sha256).await?),
            None => None,
        };
        sqlx::query(
            "INSERT INTO attachments (email_id, filename, content_type, size, sha256, blob,
                content_id, inline, dropped)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(email_id)
        .bind(&a.filename)
        .bind(&a.content_type)
        .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
        .bind(&a.sha256)
        .bind(blob)
        .bind(&a.content_id)
        .bind(a.inline)
        .bind(&a.dropped)
        .execute(&mut **tx)
        .await?;
    }

    if let (Some(ticket), Some(token)) = (ticket_id, new_token) {
        queue_ack(tx, seen.reader, incoming, ticket, &token).await?;
    }
    Ok(email_id)
}

/// A mail joined `ticket`: it moves up, and opens again if `reopen`.
async fn touch_ticket(
    tx: &mut Transaction<'_, Sqlite>,
    ticket: i64,
    reopen: bool,
) -> Result<(), StoreError> {
    let status = if reopen { ", status = 'open'" } else { "" };
    sqlx::query(&format!(
        "UPDATE tickets SET updated_at = {NOW}{status} WHERE id = ?"
    ))
    .bind(ticket)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Decides where a new mail goes.
async fn place(
    tx: &mut Transaction<'_, Sqlite>,
    incoming: &Incoming,
    seen: &mut Seen<'_>,
) -> Result<Placement, StoreError> {
    let mail = &incoming.mail;
    match &incoming.verdict {
        Verdict::Ignore(g) => return Ok(Placement::Ignore(g.clone())),
        Verdict::Bounce(g) => {
            let mut ids = mail
                .report
                .as_ref()
                .map(|r| r.original_ids.clone())
                .unwrap_or_default();
            ids.extend(thread::referenced_ids(mail));
            let Some(ticket) = outbound_ticket(tx, &ids).await? else {
                return Ok(Placement::Ignore(g.clone()));
            };
            // Its ticket may be among this batch's rows not written yet.
            seen.flush(tx).await?;
            return Ok(Placement::Bounce { ticket });
        }
        Verdict::Accept | Verdict::AcceptQuietly(_) => {}
    }
    if let Some(rule) = &incoming.routing.ignored_by {
        return Ok(Placement::Ignore(Guarded {
            reason: Reason::Rule,
            detail: rule.clone(),
        }));
    }
    if let Some(guarded) = over_rate_limit(incoming, seen) {
        return Ok(Placement::Ignore(guarded));
    }
    let ids = thread::referenced_ids(mail);
    let tags = incoming.policy.tickets.subject_tag.find(&mail.subject);
    if ids.is_empty() && tags.is_empty() {
        return Ok(Placement::Open);
    }
    // The lookups must see this batch's mail too (a reply to a mail
    // fetched with it).
    seen.flush(tx).await?;
    let Some(found) = find_ticket(tx, incoming, &ids, &tags).await? else {
        return Ok(Placement::Open);
    };
    let tickets = &incoming.policy.tickets;
    let (status, requester): (String, Option<String>) =
        sqlx::query_as("SELECT status, requester FROM tickets WHERE id = ?")
            .bind(found.ticket)
            .fetch_one(&mut **tx)
            .await?;
    // A subject tag is easy to carry along, and a forward hands someone
    // else's thread on: either joins only from a participant.
    let needs_participant = (found.by_tag_only || thread::is_forward(&mail.subject))
        && tickets.tag_from == TagFrom::Participants;
    if needs_participant && !is_participant(tx, found.ticket, requester, mail).await? {
        return Ok(Placement::Open);
    }
    if status == "closed" {
        let reopen = tickets.closed_reply == ClosedReply::Reopen;
        // Machine-sent mail a reader accepts (an out-of-office answer, say)
        // joins a closed ticket but never reopens it.
        if reopen && incoming.verdict != Verdict::Accept {
            return Ok(Placement::Join {
                ticket: found.ticket,
                reopen: false,
            });
        }
        return Ok(match tickets.closed_reply {
            ClosedReply::Reopen => Placement::Join {
                ticket: found.ticket,
                reopen: true,
            },
            ClosedReply::Attach => Placement::Join {
                ticket: found.ticket,
                reopen: false,
            },
            ClosedReply::NewTicket => Placement::Open,
        });
    }
    Ok(Placement::Join {
        ticket: found.ticket,
        reopen: false,
    })
}

struct Found {
    ticket: i64,
    /// Found by the subject tag, not by anything the mail's client kept.
    by_tag_only: bool,
}

/// The ticket a mail names: by the Message-IDs it answers (ours or stored
/// mails'), by the token hidden in our Message-IDs, or by its subject tag.
async fn find_ticket(
    tx: &mut Transaction<'_, Sqlite>,
    incoming: &Incoming,
    ids: &[String],
    tags: &[i64],
) -> Result<Option<Found>, StoreError> {
    if !ids.is_empty() {
        let mut q = QueryBuilder::new(
            "SELECT message_id, ticket_id FROM emails WHERE ticket_id IS NOT NULL AND message_id IN ",
        );
        in_list(&mut q, ids);
        q.push(" UNION ALL SELECT message_id, ticket_id FROM outbox WHERE message_id IN ");
        in_list(&mut q, ids);
        let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&mut **tx).await?;
        // The most telling reference that is known wins.
        let hit = ids
            .iter()
            .find_map(|id| rows.iter().find(|(m, _)| m == id).map(|(_, t)| *t));
        if let Some(ticket) = hit {
            return Ok(Some(Found {
                ticket,
                by_tag_only: false,
            }));
        }
        if incoming.policy.tickets.hidden_token {
            for token in ids.iter().filter_map(|id| thread::token_of(id)) {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT id FROM tickets WHERE thread_token = ?")
                        .bind(token)
                        .fetch_optional(&mut **tx)
                        .await?;
                if let Some((ticket,)) = row {
                    return Ok(Some(Found {
                        ticket,
                        by_tag_only: false,
                    }));
                }
            }
        }
    }
    for &id in tags {
        let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM tickets WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some((ticket,)) = row {
            return Ok(Some(Found {
                ticket,
                by_tag_only: true,
            }));
        }
    }
    Ok(None)
}

/// The ticket of the outbound mail one of `ids` names.
async fn outbound_ticket(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &[String],
) -> Result<Option<i64>, StoreError> {
    // Chunked: however many ids a report names, the bound values stay
    // under SQLite's limit.
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::new("SELECT ticket_id FROM outbox WHERE message_id IN ");
        in_list(&mut q, chunk);
        q.push(" LIMIT 1");
        let row: Option<(i64,)> = q.build_query_as().fetch_optional(&mut **tx).await?;
        if let Some((ticket,)) = row {
            return Ok(Some(ticket));
        }
    }
    Ok(None)
}

/// Whether the sender is the requester or on the ticket's mail already.
async fn is_participant(
    tx: &mut Transaction<'_, Sqlite>,
    ticket: i64,
    requester: Option<String>,
    mail: &ParsedMail,
) -> Result<bool, StoreError> {
    let Some(sender) = mail.from_addr.as_deref().map(str::to_ascii_lowercase) else {
        return Ok(false);
    };
    if requester.is_some_and(|r| r.eq_ignore_ascii_case(&sender)) {
        return Ok(true);
    }
    let rows: Vec<(Option<String>, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT from_addr, to_addrs, cc_addrs FROM emails WHERE ticket_id = ?")
            .bind(ticket)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.iter().any(|(from, to, cc)| {
        from.as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case(&sender))
            || [to, cc]
                .into_iter()
                .flatten()
                .any(|list| thread::addresses_in(list).contains(&sender))
    }))
}

/// The sender's accepted mail within the window, this batch included: a
/// loop of machines that mark nothing still ends here.
fn over_rate_limit(incoming: &Incoming, seen: &Seen) -> Option<Guarded> {
    let guard = &incoming.policy.guard;
    let sender = incoming.mail.from_addr.as_deref()?;
    if guard.rate_limit == 0 {
        return None;
    }
    let count = seen
        .recent
        .get(&sender.to_ascii_lowercase())
        .copied()
        .unwrap_or(0);
    if count < i64::from(guard.rate_limit) {
        return None;
    }
    Some(Guarded {
        reason: Reason::RateLimit,
        detail: format!(
            "{} mails from {sender} within {}",
            count + 1,
            humantime::format_duration(guard.rate_window)
        ),
    })
}

/// Queues the acknowledgement of a new ticket, when the reader sends them
/// and the mail deserves one.
async fn queue_ack(
    tx: &mut Transaction<'_, Sqlite>,
    reader: &str,
    incoming: &Incoming,
    ticket: i64,
    token: &str,
) -> Result<(), StoreError> {
    let policy = &incoming.policy;
    let mail = &incoming.mail;
    // Machine-sent mail a reader accepts is still never answered (RFC 3834);
    // mail from our own addresses is never Accept (the guard ignores it).
    if !policy.acknowledge || incoming.verdict != Verdict::Accept {
        return Ok(());
    }
    let Some(to) = mail.from_addr.as_deref() else {
        return Ok(());
    };
    if let Some(age) = backlog_age(incoming) {
        // A backlog (a first contact, a reader that was down) is not
        // answered: the sender has long stopped waiting for a receipt.
        tracing::debug!(
            ticket,
            age = %humantime::format_duration(age),
            ack_max_age = %humantime::format_duration(policy.ack_max_age),
            "no acknowledgement: the mail was received too long before it was ingested"
        );
        return Ok(());
    }
    let hidden = policy.tickets.hidden_token.then_some(token);
    let message_id = thread::outbound_message_id(&policy.message_id_domain, hidden);
    let references = match (&mail.references, &mail.message_id) {
        (Some(refs), Some(id)) => Some(format!("{refs} {id}")),
        (None, Some(id)) => Some(id.clone()),
        (refs, None) => refs.clone(),
    };
    sqlx::query(&format!(
        "INSERT INTO outbox (ticket_id, reader, kind, message_id, to_addr, in_reply_to,
            references_, next_attempt_at, created_at)
         VALUES (?, ?, 'ack', ?, ?, ?, ?, {NOW}, {NOW})
         ON CONFLICT (ticket_id, kind) DO NOTHING"
    ))
    .bind(ticket)
    .bind(reader)
    .bind(message_id)
    .bind(to)
    .bind(&mail.message_id)
    .bind(references)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How long before now `incoming` was received, when that is more than
/// its reader's `ack_max_age`. A mail that says nothing of when it came is
/// not old.
fn backlog_age(incoming: &Incoming) -> Option<std::time::Duration> {
    let received = incoming.received_at?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let age = std::time::Duration::from_secs(
        u64::try_from(i64::try_from(now).ok()?.saturating_sub(received)).ok()?,
    );
    (age > incoming.policy.ack_max_age).then_some(age)
}

/// Stores `content` once under its hash; returns the blob's key.
pub(super) async fn put_blob(
    tx: &mut Transaction<'_, Sqlite>,
    content: &[u8],
    sha256: &str,
) -> Result<String, StoreError> {
    let key = format!("sha256:{sha256}");
    // Checked first so that known content is not sent to SQLite again.
    let known: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM blobs WHERE key = ?")
        .bind(&key)
        .fetch_optional(&mut **tx)
        .await?;
    if known.is_none() {
        sqlx::query("INSERT INTO blobs (key, size, content) VALUES (?, ?, ?)")
            .bind(&key)
            .bind(i64::try_from(content.len()).unwrap_or(i64::MAX))
            .bind(content)
            .execute(&mut **tx)
            .await?;
    }
    Ok(key)
}

/// `(?, ?, ...)` bound to `values`.
pub(super) fn in_list<'q, T>(q: &mut QueryBuilder<'q, Sqlite>, values: impl IntoIterator<Item = T>)
where
    T: 'q + sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite> + Send,
{
    q.push("(");
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v);
    }
    q.push(")");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{GuardConfig, MailPolicy, TicketsConfig};
    use crate::ingest::Report;
    use crate::store::{Store, open_in};

    fn policy() -> Arc<MailPolicy> {
        Arc::new(MailPolicy {
            acknowledge: true,
            message_id_domain: "contoso.com".into(),
            guard: GuardConfig {
                own_addresses: vec!["help@contoso.com".into()],
                ..GuardConfig::default()
            },
            ..MailPolicy::default()
        })
    }

    fn with_tickets(f: impl FnOnce(&mut TicketsConfig)) -> Arc<MailPolicy> {
        let mut p = MailPolicy {
            acknowledge: true,
            message_id_domain: "contoso.com".into(),
            ..MailPolicy::default()
        };
        f(&mut p.tickets);
        Arc::new(p)
    }

    fn mail(headers: &str, policy: &Arc<MailPolicy>) -> Incoming {
        let raw = format!(
            "{}\r\nTo: help@contoso.com\r\n\r\nbody text\r\n",
            headers.replace('\n', "\r\n")
        );
        Incoming::new(raw.as_bytes(), "r", policy)
    }

    /// Commits `mails` as one POP3 batch with fresh UIDLs.
    async fn commit(store: &Store, mails: Vec<Incoming>) -> BatchOutcome {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pop3_uidls")
            .fetch_one(store.pool())
            .await
            .expect("count");
        let batch: Vec<(String, Incoming)> = mails
            .into_iter()
            .enumerate()
            .map(|(i, m)| (format!("u{}", n + i as i64), m))
            .collect();
        store
            .commit_pop3_batch("r", &batch, false)
            .await
            .expect("commit")
    }

    /// Commits one mail with these headers.
    async fn commit_one(store: &Store, headers: &str, policy: &Arc<MailPolicy>) -> BatchOutcome {
        commit(store, vec![mail(headers, policy)]).await
    }

    /// (ticket_id, disposition) of the email with this Message-ID.
    async fn email(store: &Store, message_id: &str) -> (Option<i64>, String) {
        sqlx::query_as("SELECT ticket_id, disposition FROM emails WHERE message_id = ?")
            .bind(message_id)
            .fetch_one(store.pool())
            .await
            .expect("email")
    }

    async fn scalar(store: &Store, sql: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql)
            .fetch_one(store.pool())
            .await
            .expect(sql);
        n
    }

    #[tokio::test]
    async fn a_backlog_opens_tickets_but_is_not_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        let now = std::time::SystemTime::now();
        let date = |ago: u64| {
            let t = now - std::time::Duration::from_secs(ago);
            mail_parser::DateTime::from_timestamp(
                t.duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs() as i64,
            )
            .to_rfc822()
        };
        // Sent two days ago, but delivered just now (the newest Received
        // decides): acknowledged.
        commit_one(
            &store,
            &format!(
                "Received: by mx; {}\nReceived: by relay; {}\nFrom: a@example.net\nSubject: s1\nMessage-ID: <b1@x>\nDate: {}",
                date(60),
                date(2 * 86400),
                date(2 * 86400)
            ),
            &p,
        )
        .await;
        // Delivered two days ago: a ticket, no acknowledgement.
        commit_one(
            &store,
            &format!(
                "Received: by mx; {}\nFrom: b@example.net\nSubject: s2\nMessage-ID: <b2@x>",
                date(2 * 86400)
            ),
            &p,
        )
        .await;
        // Only a Date header, a week old: the same.
        commit_one(
            &store,
            &format!(
                "From: c@example.net\nSubject: s3\nMessage-ID: <b3@x>\nDate: {}",
                date(7 * 86400)
            ),
            &p,
        )
        .await;
        // No date at all: acknowledged.
        commit_one(
            &store,
            "From: d@example.net\nSubject: s4\nMessage-ID: <b4@x>",
            &p,
        )
        .await;
        assert_eq!(scalar(&store, "SELECT COUNT(*) FROM tickets").await, 4);
        let acked: Vec<(String,)> = sqlx::query_as("SELECT to_addr FROM outbox ORDER BY to_addr")
            .fetch_all(store.pool())
            .await
            .expect("outbox");
        assert_eq!(
            acked,
            vec![
                ("a@example.net".to_string(),),
                ("d@example.net".to_string(),)
            ]
        );
        // A reader that allows a week acknowledges the two-day-old mail.
        let week = Arc::new(MailPolicy {
            acknowledge: true,
            ack_max_age: std::time::Duration::from_secs(8 * 86400),
            ..MailPolicy::default()
        });
        commit_one(
            &store,
            &format!(
                "Received: by mx; {}\nFrom: e@example.net\nSubject: s5\nMessage-ID: <b5@x>",
                date(2 * 86400)
            ),
            &week,
        )
        .await;
        assert_eq!(scalar(&store, "SELECT COUNT(*) FROM outbox").await, 3);
    }

    #[tokio::test]
    async fn a_thread_of_five_is_one_ticket_across_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        let first = commit(
            &store,
            vec![
                mail("From: ann@example.net\nSubject: VPN down\nMessage-ID: <1@x>", &p),
                mail(
                    "From: ann@example.net\nSubject: Re: VPN down\nMessage-ID: <2@x>\nIn-Reply-To: <1@x>\nReferences: <1@x>",
                    &p,
                ),
                // Only References, as some clients do.
                mail(
                    "From: bob@example.net\nSubject: RE: VPN down\nMessage-ID: <3@x>\nReferences: <1@x> <2@x>",
                    &p,
                ),
            ],
        )
        .await;
        assert_eq!((first.created, first.joined), (1, 2));
        let second = commit(
            &store,
            vec![
                mail(
                    "From: ann@example.net\nSubject: Re: VPN down\nMessage-ID: <4@x>\nIn-Reply-To: <3@x>",
                    &p,
                ),
                // Names nothing we know: a ticket of its own.
                mail(
                    "From: ann@example.net\nSubject: Re: VPN down\nMessage-ID: <5@x>\nIn-Reply-To: <unknown@y>\nReferences: <nothing@y>",
                    &p,
                ),
            ],
        )
        .await;
        assert_eq!(
            (second.created, second.joined),
            (1, 1),
            "5@x names nothing known"
        );
        let (ticket, disposition) = email(&store, "1@x").await;
        assert_eq!(disposition, "ticket");
        for id in ["2@x", "3@x", "4@x"] {
            assert_eq!(
                email(&store, id).await,
                (ticket, "reply".to_string()),
                "{id}"
            );
        }
        // The reply to our acknowledgement joins through the outbox.
        let (ack_id,): (String,) =
            sqlx::query_as("SELECT message_id FROM outbox WHERE ticket_id = ?")
                .bind(ticket)
                .fetch_one(store.pool())
                .await
                .expect("ack queued");
        commit_one(&store, &format!("From: ann@example.net\nSubject: Re: [#1] VPN down\nMessage-ID: <6@x>\nIn-Reply-To: <{ack_id}>"), &p).await;
        assert_eq!(email(&store, "6@x").await, (ticket, "reply".to_string()));
        assert_eq!(
            scalar(&store, "SELECT COUNT(*) FROM outbox").await,
            2,
            "one acknowledgement per new ticket, none for replies"
        );
    }

    #[tokio::test]
    async fn thousands_of_references_do_not_stall_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        commit_one(
            &store,
            "From: ann@example.net\nSubject: s\nMessage-ID: <t1@x>",
            &p,
        )
        .await;
        let refs: Vec<String> = (0..17_000).map(|i| format!("<r{i}@x>")).collect();
        let headers = format!(
            "From: ann@example.net\nSubject: Re: s\nMessage-ID: <t2@x>\nReferences: <t1@x> {}\nIn-Reply-To: <r16999@x>",
            refs.join(" ")
        );
        let outcome = commit_one(&store, &headers, &p).await;
        assert_eq!(
            outcome.created, 1,
            "the newest references name nothing known"
        );
        assert_eq!(email(&store, "t2@x").await.1, "ticket");
    }

    #[tokio::test]
    async fn subject_tags_and_forwards_need_a_participant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        commit_one(&store, "From: Ann <ann@example.net>\nCc: carl@example.net\nSubject: Printer\nMessage-ID: <p1@x>", &p).await;
        commit(
            &store,
            vec![
                mail("From: ann@example.net\nSubject: Re: [#1] Printer\nMessage-ID: <p2@x>", &p),
                mail("From: carl@example.net\nSubject: [#1] more\nMessage-ID: <p3@x>", &p),
                mail("From: eve@evil.example\nSubject: [#1] hijack\nMessage-ID: <p4@x>", &p),
                // A stranger forwarding the thread, references and all.
                mail(
                    "From: eve@evil.example\nSubject: Fwd: Printer\nMessage-ID: <p5@x>\nReferences: <p1@x>",
                    &p,
                ),
                mail(
                    "From: carl@example.net\nSubject: FW: Printer\nMessage-ID: <p6@x>\nReferences: <p1@x>",
                    &p,
                ),
            ],
        )
        .await;
        assert_eq!(email(&store, "p2@x").await, (Some(1), "reply".into()));
        assert_eq!(email(&store, "p3@x").await, (Some(1), "reply".into()));
        assert_eq!(email(&store, "p4@x").await, (Some(2), "ticket".into()));
        assert_eq!(email(&store, "p5@x").await, (Some(3), "ticket".into()));
        assert_eq!(email(&store, "p6@x").await, (Some(1), "reply".into()));

        let anyone = with_tickets(|t| t.tag_from = TagFrom::Anyone);
        commit_one(
            &store,
            "From: eve@evil.example\nSubject: [#1] again\nMessage-ID: <p7@x>",
            &anyone,
        )
        .await;
        assert_eq!(email(&store, "p7@x").await, (Some(1), "reply".into()));
    }

    #[tokio::test]
    async fn closed_tickets_reopen_or_not_as_configured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        commit_one(
            &store,
            "From: ann@example.net\nSubject: s\nMessage-ID: <c1@x>",
            &p,
        )
        .await;
        let close = || {
            sqlx::query("UPDATE tickets SET status = 'closed' WHERE id = 1").execute(store.pool())
        };
        close().await.expect("close");
        let reply = |n: u32, p: &Arc<MailPolicy>| {
            mail(
                &format!(
                    "From: ann@example.net\nSubject: Re: s\nMessage-ID: <c{n}@x>\nIn-Reply-To: <c1@x>"
                ),
                p,
            )
        };
        commit(&store, vec![reply(2, &p)]).await;
        assert_eq!(email(&store, "c2@x").await, (Some(1), "reopened".into()));
        assert_eq!(
            scalar(&store, "SELECT status = 'open' FROM tickets WHERE id = 1").await,
            1
        );

        close().await.expect("close");
        let attach = with_tickets(|t| t.closed_reply = ClosedReply::Attach);
        commit(&store, vec![reply(3, &attach)]).await;
        assert_eq!(email(&store, "c3@x").await, (Some(1), "reply".into()));
        assert_eq!(
            scalar(&store, "SELECT status = 'closed' FROM tickets WHERE id = 1").await,
            1
        );

        // An out-of-office answer a reader accepts joins, but never reopens.
        let mut ooo = reply(5, &p);
        ooo.verdict = Verdict::AcceptQuietly(Guarded {
            reason: Reason::AutoReply,
            detail: "Auto-Submitted: auto-replied".into(),
        });
        commit(&store, vec![ooo]).await;
        assert_eq!(email(&store, "c5@x").await, (Some(1), "reply".into()));
        assert_eq!(
            scalar(&store, "SELECT status = 'closed' FROM tickets WHERE id = 1").await,
            1
        );

        let new = with_tickets(|t| t.closed_reply = ClosedReply::NewTicket);
        commit(&store, vec![reply(4, &new)]).await;
        assert_eq!(email(&store, "c4@x").await, (Some(2), "ticket".into()));
    }

    #[tokio::test]
    async fn the_hidden_token_finds_the_ticket_without_a_stored_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        commit_one(
            &store,
            "From: ann@example.net\nSubject: s\nMessage-ID: <h1@x>",
            &p,
        )
        .await;
        let (token,): (String,) = sqlx::query_as("SELECT thread_token FROM tickets WHERE id = 1")
            .fetch_one(store.pool())
            .await
            .expect("token");
        // An id of ours that the outbox never held (sent by an agent's tool).
        let ours = format!("m2t.{token}.00000000deadbeef@contoso.com");
        commit_one(
            &store,
            &format!(
                "From: zed@example.org\nSubject: Re: s\nMessage-ID: <h2@x>\nReferences: <{ours}>"
            ),
            &p,
        )
        .await;
        assert_eq!(email(&store, "h2@x").await, (Some(1), "reply".into()));
        let off = with_tickets(|t| t.hidden_token = false);
        commit_one(
            &store,
            &format!(
                "From: zed@example.org\nSubject: Re: s\nMessage-ID: <h3@x>\nReferences: <{ours}>"
            ),
            &off,
        )
        .await;
        assert_eq!(email(&store, "h3@x").await, (Some(2), "ticket".into()));
    }

    #[tokio::test]
    async fn guarded_mail_opens_nothing_and_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        commit_one(
            &store,
            "From: ann@example.net\nSubject: s\nMessage-ID: <g1@x>",
            &p,
        )
        .await;
        let (ack_id,): (String,) = sqlx::query_as("SELECT message_id FROM outbox")
            .fetch_one(store.pool())
            .await
            .expect("ack");
        let guarded = |reason, detail: &str| Guarded {
            reason,
            detail: detail.into(),
        };
        let mut ooo = mail(
            &format!(
                "From: ann@example.net\nSubject: Automatic reply: s\nMessage-ID: <g2@x>\nIn-Reply-To: <{ack_id}>"
            ),
            &p,
        );
        ooo.verdict = Verdict::Ignore(guarded(Reason::AutoReply, "Auto-Submitted: auto-replied"));
        let mut dsn = mail(
            "From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered\nMessage-ID: <g3@x>",
            &p,
        );
        dsn.mail.report = Some(Report {
            report_type: "delivery-status".into(),
            original_ids: vec![ack_id.clone()],
        });
        dsn.verdict = Verdict::Bounce(guarded(
            Reason::Bounce,
            "From: MAILER-DAEMON@mx.example.net",
        ));
        let mut stray = mail(
            "From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered\nMessage-ID: <g4@x>",
            &p,
        );
        stray.verdict = Verdict::Bounce(guarded(
            Reason::Bounce,
            "From: MAILER-DAEMON@mx.example.net",
        ));
        let mut alert = mail(
            "From: nagios@example.net\nSubject: DOWN\nMessage-ID: <g5@x>",
            &p,
        );
        alert.verdict = Verdict::AcceptQuietly(guarded(
            Reason::AutoGenerated,
            "Auto-Submitted: auto-generated",
        ));
        let mut ruled = mail(
            "From: news@example.net\nSubject: News\nMessage-ID: <g6@x>",
            &p,
        );
        ruled.routing.ignored_by = Some("newsletters".into());
        let outcome = commit(&store, vec![ooo, dsn, stray, alert, ruled]).await;
        assert_eq!(outcome.created, 1);
        assert_eq!(outcome.joined, 1);
        assert_eq!(outcome.ignored(Reason::AutoReply), 1);
        assert_eq!(outcome.ignored(Reason::Bounce), 1);
        assert_eq!(outcome.ignored(Reason::Rule), 1);

        assert_eq!(
            email(&store, "g2@x").await,
            (
                None,
                "ignored: auto-reply (Auto-Submitted: auto-replied)".into()
            )
        );
        assert_eq!(email(&store, "g3@x").await, (Some(1), "bounce".into()));
        assert_eq!(
            email(&store, "g4@x").await,
            (
                None,
                "ignored: bounce (From: MAILER-DAEMON@mx.example.net)".into()
            )
        );
        assert_eq!(email(&store, "g5@x").await.1, "ticket");
        assert_eq!(
            email(&store, "g6@x").await,
            (None, "ignored: rule (newsletters)".into())
        );
        assert_eq!(
            scalar(&store, "SELECT COUNT(*) FROM outbox").await,
            1,
            "no acknowledgement for guarded or quietly accepted mail"
        );
        let counts = store.status_view().mail_counts(24).await.expect("counts");
        let ignored = [("auto-reply", 1), ("bounce", 1), ("rule", 1)]
            .map(|(r, n)| (r.to_string(), n))
            .into();
        assert_eq!(
            counts,
            [MailCounts {
                reader: "r".into(),
                tickets: 2,
                bounces: 1,
                ignored,
                ..MailCounts::default()
            }]
        );
    }

    #[tokio::test]
    async fn a_sender_over_the_rate_limit_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = Arc::new(MailPolicy {
            guard: GuardConfig {
                rate_limit: 3,
                ..GuardConfig::default()
            },
            ..MailPolicy::default()
        });
        let mails = (1..=5)
            .map(|i| {
                mail(
                    &format!("From: Loop@Example.net\nSubject: s{i}\nMessage-ID: <r{i}@x>"),
                    &p,
                )
            })
            .collect();
        let outcome = commit(&store, mails).await;
        assert_eq!(
            (outcome.created, outcome.ignored(Reason::RateLimit)),
            (3, 2)
        );
        assert_eq!(
            email(&store, "r4@x").await,
            (
                None,
                "ignored: rate-limit (4 mails from Loop@Example.net within 1h)".into()
            )
        );
        let other = commit_one(
            &store,
            "From: ann@example.net\nSubject: s\nMessage-ID: <r6@x>",
            &p,
        )
        .await;
        assert_eq!(other.created, 1, "the limit is per sender");
    }

    #[tokio::test]
    async fn routing_and_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let p = policy();
        let attached = |id: &str| {
            let raw = format!(
                "From: ann@example.net\r\nSubject: files\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee file\r\n\
--XX\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"../r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
            );
            Incoming::new(raw.as_bytes(), "r", &p)
        };
        let mut routed = attached("a1@x");
        routed.routing.queue = Some("vip".into());
        routed.routing.tags = vec!["a".into(), "b".into()];
        commit(&store, vec![routed, attached("a2@x")]).await;
        let (queue, tags): (Option<String>, String) =
            sqlx::query_as("SELECT queue, tags FROM tickets WHERE id = 1")
                .fetch_one(store.pool())
                .await
                .expect("ticket");
        assert_eq!(queue.as_deref(), Some("vip"));
        assert_eq!(tags, r#"["a","b"]"#);
        assert_eq!(scalar(&store, "SELECT COUNT(*) FROM attachments").await, 2);
        assert_eq!(
            scalar(&store, "SELECT COUNT(*) FROM blobs").await,
            1,
            "same content once"
        );
        let (name, blob): (String, String) =
            sqlx::query_as("SELECT filename, blob FROM attachments LIMIT 1")
                .fetch_one(store.pool())
                .await
                .expect("attachment");
        assert_eq!(name, "r.pdf");
        let (content,): (Vec<u8>,) = sqlx::query_as("SELECT content FROM blobs WHERE key = ?")
            .bind(&blob)
            .fetch_one(store.pool())
            .await
            .expect("blob");
        assert_eq!(content, b"%PDF-1.4\n");
    }
}

#[cfg(test)]
mod upgrade {
    use sqlx::Connection;
    use sqlx::migrate::Migrate;

    use crate::config::StoreConfig;
    use crate::store::Store;

    /// A database written before ticket semantics keeps every row, and its
    /// attachments' contents, through migration 0005.
    #[tokio::test]
    async fn migration_0005_keeps_existing_mail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&mut conn)
            .await
            .expect("pragma");
        conn.ensure_migrations_table().await.expect("table");
        let migrator = sqlx::migrate!("./migrations");
        for m in migrator.iter().filter(|m| m.version <= 4) {
            conn.apply(m).await.expect("old migration");
        }
        sqlx::raw_sql(
            "INSERT INTO tickets VALUES (1, 'r', 'Old', 'ann@x', 'Ann', 'closed', 't', 't');
             INSERT INTO emails (id, ticket_id, reader, dedup_key, message_id, subject, received_at)
                 VALUES (1, 1, 'r', 'old@x', 'old@x', 'Old', 't');
             INSERT INTO attachments VALUES (1, 1, 'a.txt', 'text/plain', 3, X'616263');
             INSERT INTO source_positions VALUES ('r', 'INBOX', 1, 1, 1, 'done', 't');
             INSERT INTO pop3_uidls VALUES ('p', 'u1', 1, 'done', 't');",
        )
        .execute(&mut conn)
        .await
        .expect("old rows");
        conn.close().await.expect("close");

        let config = StoreConfig {
            database: format!("sqlite://{}", file.display()),
            key_file: None,
        };
        // `status` from a newer binary before the daemon migrated: no
        // counts, no error.
        let view = crate::store::StatusView::open(&config)
            .await
            .expect("status view");
        assert!(view.mail_counts(24).await.expect("counts").is_empty());
        assert!(view.outbox_statuses().await.expect("outbox").is_empty());

        let store = Store::open(&config).await.expect("migrated");
        let (ticket, disposition): (Option<i64>, String) =
            sqlx::query_as("SELECT ticket_id, disposition FROM emails WHERE id = 1")
                .fetch_one(store.pool())
                .await
                .expect("email");
        assert_eq!((ticket, disposition.as_str()), (Some(1), "ticket"));
        let (content,): (Vec<u8>,) = sqlx::query_as(
            "SELECT b.content FROM attachments a JOIN blobs b ON b.key = a.blob WHERE a.id = 1",
        )
        .fetch_one(store.pool())
        .await
        .expect("attachment content");
        assert_eq!(content, b"abc");
        let (tags, positions, uidls): (String, i64, i64) = sqlx::query_as(
            "SELECT (SELECT tags FROM tickets WHERE id = 1),
                    (SELECT COUNT(*) FROM source_positions),
                    (SELECT COUNT(*) FROM pop3_uidls)",
        )
        .fetch_one(store.pool())
        .await
        .expect("counts");
        assert_eq!((tags.as_str(), positions, uidls), ("[]", 1, 1));
        // The children's foreign keys point at the rebuilt emails table.
        let orphan = sqlx::query(
            "INSERT INTO attachments (email_id, content_type, size) VALUES (99, 'x', 1)",
        )
        .execute(store.pool())
        .await;
        assert!(orphan.is_err(), "a foreign key still holds");
    }
}
