//! The quarantine lane: mail that cannot be made into a ticket is set
//! aside whole instead of failing its batch.
//!
//! A quarantined mail is an `emails` row without a ticket, whose
//! disposition is `quarantined: REASON (DETAIL)`, whose raw bytes are kept
//! in `blobs`, and whose ledger position is recorded like any other: the
//! mailbox moves on, the rest of the batch commits, and nothing is lost.
//! Reasons: `parser` (the MIME parser gave up on it) and `store` (storing
//! it failed because of what it contains). An admin lists and reads them,
//! retries them after an upgrade (the kept bytes are parsed again and
//! become a ticket exactly once, in one transaction that also moves the
//! ledger onto the new row) or drops them.

use sha2::{Digest, Sha256};
use sqlx::{Sqlite, Transaction};

use super::readers::insert_event;
use super::tickets::{put_blob, store_mails};
use super::{NOW, StatusView, Store, StoreError};
use crate::ingest::Incoming;
use crate::outcome::BatchOutcome;

/// How every quarantined mail's disposition starts.
pub const QUARANTINED: &str = "quarantined: ";

/// The condition for "in the quarantine", word for word the one of the
/// partial index `emails_quarantined` (migration 0006): SQLite uses that
/// index only for a query that states its condition.
const IS_QUARANTINED: &str = "disposition LIKE 'quarantined: %'";

/// What `drop` turns a quarantined mail's disposition into (followed by
/// the reason it had, in parentheses).
const DROPPED: &str = "ignored: dropped";

/// The most of an error's text kept in a disposition.
const DETAIL_MAX: usize = 500;

/// Why a mail was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineReason {
    /// The MIME parser gave up on it.
    Parser,
    /// Storing it failed because of what it contains.
    Store,
    /// The IMAP server kept refusing to deliver it: the row holds the
    /// server's words and no bytes; `retry` asks the server again.
    Server,
}

impl QuarantineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::Parser => "parser",
            QuarantineReason::Store => "store",
            QuarantineReason::Server => "server",
        }
    }
}

/// One quarantined mail, as `quarantine list` and `show` print it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct QuarantineEntry {
    pub id: i64,
    pub reader: String,
    pub received_at: String,
    /// `quarantined: REASON (DETAIL)`.
    pub disposition: String,
    pub subject: Option<String>,
    pub from_addr: Option<String>,
    pub message_id: Option<String>,
    /// The raw mail's size in bytes.
    pub size: Option<i64>,
    pub parse_note: Option<String>,
}

/// What `quarantine retry` did with one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// It is an email now (the new row's id and disposition: a ticket, a
    /// reply, or a duplicate of mail that arrived meanwhile).
    Stored { email: i64, disposition: String },
    /// The parser still gives up on it; it stays in the quarantine.
    StillQuarantined(String),
    /// No quarantined mail has this id (retried or dropped already).
    NotQuarantined,
    /// A mail the server had refused to deliver: its position is owed
    /// again, and the next poll asks the server for it.
    AskedAgain,
}

const ENTRY_COLUMNS: &str =
    "id, reader, received_at, disposition, subject, from_addr, message_id, size, parse_note";

impl StatusView {
    /// The mail in quarantine, oldest first; of one reader when `reader` is
    /// given.
    pub async fn quarantine(
        &self,
        reader: Option<&str>,
    ) -> Result<Vec<QuarantineEntry>, StoreError> {
        if !self.has_migration(super::TICKET_SEMANTICS).await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(&format!(
            "SELECT {ENTRY_COLUMNS} FROM emails
             WHERE {IS_QUARANTINED} AND (?1 IS NULL OR reader = ?1)
             ORDER BY id"
        ))
        .bind(reader)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One quarantined mail and its raw bytes.
    pub async fn quarantined_mail(
        &self,
        id: i64,
    ) -> Result<Option<(QuarantineEntry, Vec<u8>)>, StoreError> {
        let entry: Option<QuarantineEntry> = sqlx::query_as(&format!(
            "SELECT {ENTRY_COLUMNS} FROM emails WHERE id = ? AND {IS_QUARANTINED}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(entry) = entry else { return Ok(None) };
        let raw: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT b.content FROM emails e JOIN blobs b ON b.key = e.raw_blob WHERE e.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(Some((entry, raw.map(|(r,)| r).unwrap_or_default())))
    }

    /// Per reader, how many mails are in quarantine now.
    pub async fn quarantine_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        if !self.has_migration(super::TICKET_SEMANTICS).await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(&format!(
            "SELECT reader, COUNT(*) FROM emails WHERE {IS_QUARANTINED}
             GROUP BY reader ORDER BY reader"
        ))
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Store {
    /// The reader and raw bytes of a quarantined mail, to parse it again.
    pub async fn quarantined_raw(&self, id: i64) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT e.reader, b.content FROM emails e JOIN blobs b ON b.key = e.raw_blob
             WHERE e.id = ? AND {IS_QUARANTINED}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Stores `incoming` (the quarantined mail `id`, parsed again) as any
    /// new mail would be, and moves its ledger positions onto the new row,
    /// in one transaction: the mail becomes a ticket exactly once, even if
    /// two admins retry it at the same time or the process dies midway.
    pub async fn retry_quarantined(
        &self,
        id: i64,
        incoming: &Incoming,
    ) -> Result<Retried, StoreError> {
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        let row: Option<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT reader, raw_blob FROM emails WHERE id = ? AND {IS_QUARANTINED}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((reader, raw_blob)) = row else {
            return Ok(Retried::NotQuarantined);
        };
        if let Some(why) = &incoming.mail.quarantine {
            return Ok(Retried::StillQuarantined(why.clone()));
        }
        let mut outcome = BatchOutcome::default();
        let stored = store_mails(&mut tx, &reader, &[(&(), incoming)], &mut outcome).await?;
        let Some(&(_, email)) = stored.first() else {
            return Err(StoreError::Sql(sqlx::Error::RowNotFound));
        };
        for table in ["source_positions", "pop3_uidls", "graph_messages"] {
            sqlx::query(&format!(
                "UPDATE {table} SET email_id = ? WHERE email_id = ?"
            ))
            .bind(email)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if outcome.duplicates == 0 {
            // The bytes stay with the mail they now are.
            sqlx::query("UPDATE emails SET raw_blob = ? WHERE id = ? AND raw_blob IS NULL")
                .bind(&raw_blob)
                .bind(email)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM emails WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let (disposition,): (String,) =
            sqlx::query_as("SELECT disposition FROM emails WHERE id = ?")
                .bind(email)
                .fetch_one(&mut *tx)
                .await?;
        let what = if outcome.duplicates > 0 {
            format!("a duplicate of email {email}")
        } else {
            format!("email {email} ({disposition})")
        };
        insert_event(
            &mut tx,
            &reader,
            "info",
            &format!("quarantined mail {id} retried: it is now {what}"),
        )
        .await?;
        tx.commit().await?;
        Ok(Retried::Stored { email, disposition })
    }

    /// Takes a mail out of the quarantine without making it a ticket: its
    /// row stays (the ledger points at it) as `ignored: dropped (...)`,
    /// with its raw bytes. False when no quarantined mail has this id.
    pub async fn drop_quarantined(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        let row: Option<(String, String)> = sqlx::query_as(&format!(
            "SELECT reader, disposition FROM emails WHERE id = ? AND {IS_QUARANTINED}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((reader, disposition)) = row else {
            return Ok(false);
        };
        let was = disposition
            .strip_prefix(QUARANTINED)
            .unwrap_or(&disposition);
        sqlx::query("UPDATE emails SET disposition = ? WHERE id = ?")
            .bind(format!("{DROPPED} ({was})"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            &reader,
            "info",
            &format!("quarantined mail {id} dropped by an admin"),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Sets `incoming` aside in the quarantine, inside the batch's transaction;
/// returns its email id and whether the row is new (the same bytes may
/// have been set aside before, e.g. through another reader).
///
/// Must run after the batch's other mails are written: those get ids
/// assigned ahead (see `super::tickets`), this row takes the next free one.
pub(super) async fn set_aside(
    tx: &mut Transaction<'_, Sqlite>,
    reader: &str,
    incoming: &Incoming,
    reason: QuarantineReason,
    detail: &str,
) -> Result<(i64, bool), StoreError> {
    let sha = format!("{:x}", Sha256::digest(&incoming.raw));
    // Its own key space: the mail's Message-ID stays free for the ticket it
    // becomes on retry, or for a copy that arrives meanwhile.
    let dedup_key = format!("quarantine:{sha}");
    let known: Option<(i64,)> = sqlx::query_as("SELECT id FROM emails WHERE dedup_key = ?")
        .bind(&dedup_key)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some((id,)) = known {
        return Ok((id, false));
    }
    let blob = put_blob(tx, &incoming.raw, &sha).await?;
    let disposition = format!(
        "{QUARANTINED}{} ({})",
        reason.as_str(),
        printable(detail, DETAIL_MAX)
    );
    let mail = &incoming.mail;
    // What identifies the mail to a human, bounded: its content may be
    // exactly what could not be stored.
    let (id,): (i64,) = sqlx::query_as(&format!(
        "INSERT INTO emails (reader, dedup_key, message_id, from_addr, subject, parse_note,
            received_at, disposition, size, raw_blob)
         VALUES (?, ?, ?, ?, ?, ?, {NOW}, ?, ?, ?) RETURNING id"
    ))
    .bind(reader)
    .bind(&dedup_key)
    .bind(mail.message_id.as_deref().map(|m| printable(m, 998)))
    .bind(mail.from_addr.as_deref().map(|f| printable(f, 320)))
    .bind(printable(&mail.subject, 998))
    .bind(mail.parse_note.as_deref().map(|n| printable(n, 4000)))
    .bind(&disposition)
    .bind(i64::try_from(mail.size.max(incoming.raw.len())).unwrap_or(i64::MAX))
    .bind(&blob)
    .fetch_one(&mut **tx)
    .await?;
    insert_event(
        tx,
        reader,
        "warn",
        &format!(
            "mail {id} quarantined ({}): {}; see `mail2ticket quarantine show {id}`",
            reason.as_str(),
            printable(detail, DETAIL_MAX)
        ),
    )
    .await?;
    Ok((id, true))
}

/// Records an IMAP UID the server kept refusing to deliver as a
/// quarantined email without bytes (`quarantined: server (DETAIL)`) and
/// puts it in the folder's ledger, after-step done (there is nothing on
/// our side to mark): the position is settled, the mail is visible in
/// `quarantine list` and `status`, and `retry` can ask for it again.
pub(super) async fn set_aside_refused(
    tx: &mut Transaction<'_, Sqlite>,
    pos: &super::FolderPosition,
    uid: u32,
    detail: &str,
) -> Result<i64, StoreError> {
    let dedup_key = refused_key(pos, uid);
    let disposition = format!(
        "{QUARANTINED}{} ({})",
        QuarantineReason::Server.as_str(),
        printable(detail, DETAIL_MAX)
    );
    let (id,): (i64,) = sqlx::query_as(&format!(
        "INSERT INTO emails (reader, dedup_key, received_at, disposition)
         VALUES (?, ?, {NOW}, ?)
         ON CONFLICT (dedup_key) DO UPDATE SET disposition = excluded.disposition
         RETURNING id"
    ))
    .bind(&pos.reader)
    .bind(&dedup_key)
    .bind(&disposition)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO source_positions (reader, folder, uidvalidity, uid, email_id, after_state, ingested_at)
         VALUES (?, ?, ?, ?, ?, 'done', {NOW})
         ON CONFLICT DO NOTHING"
    ))
    .bind(&pos.reader)
    .bind(&pos.folder)
    .bind(i64::from(pos.uidvalidity))
    .bind(i64::from(uid))
    .bind(id)
    .execute(&mut **tx)
    .await?;
    insert_event(
        tx,
        &pos.reader,
        "warn",
        &format!(
            "mail {id} quarantined (server): {}; see `mail2ticket quarantine show {id}`",
            printable(detail, DETAIL_MAX)
        ),
    )
    .await?;
    Ok(id)
}

/// The dedup key of a refused mail: its position, since there are no bytes
/// to hash.
fn refused_key(pos: &super::FolderPosition, uid: u32) -> String {
    format!(
        "refused:{}/{}/{}/{uid}",
        pos.reader, pos.folder, pos.uidvalidity
    )
}

/// `text` without control characters, at most `max` bytes.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_cuts_and_cleans() {
        assert_eq!(printable("a\r\nb\x1b[31m", 100), "a  b [31m");
        assert_eq!(printable("äöü", 4), "äö");
        assert_eq!(printable("", 4), "");
    }
}
