//! One mail into the database, inside the batch's transaction: whether it
//! is new (dedup), which ticket it joins or opens (threading, rate limit,
//! the guard's and the rules' verdicts), its email and attachment rows, its
//! contents stored once, and the acknowledgement queued in the outbox.
//!
//! Deciding inside the transaction is what makes the outcome exact: a
//! reply later in the same batch finds the ticket its parent just opened,
//! and a crash leaves either all of it or none.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::{NOW, StoreError};
use crate::config::{ClosedReply, TagFrom};
use crate::ingest::guard::Guarded;
use crate::ingest::{Incoming, ParsedMail, Verdict, thread};
use crate::outcome::{BatchOutcome, Reason};

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
mod tests;
