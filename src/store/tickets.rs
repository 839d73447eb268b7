//! Tickets, emails and the source-position ledger, written together.

use sqlx::{Sqlite, Transaction};

use super::{NOW, Store, StoreError};
use crate::ingest::ParsedMail;

/// A folder of one reader at one UIDVALIDITY: the space UIDs live in.
#[derive(Debug, Clone)]
pub struct FolderPosition {
    pub reader: String,
    pub folder: String,
    pub uidvalidity: u32,
}

/// What committing one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// New tickets opened.
    pub created: usize,
    /// Mails whose Message-ID (or content) was already ingested, by any
    /// reader: their position is recorded, nothing else.
    pub duplicates: usize,
    /// Positions that were already in the ledger (a re-fetch after a crash).
    pub already_recorded: usize,
}

impl Store {
    /// The highest UID already recorded for this folder position; 0 if none.
    pub async fn watermark(&self, pos: &FolderPosition) -> Result<u32, StoreError> {
        let (max,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(uid) FROM source_positions WHERE reader = ? AND folder = ? AND uidvalidity = ?",
        )
        .bind(&pos.reader)
        .bind(&pos.folder)
        .bind(i64::from(pos.uidvalidity))
        .fetch_one(&self.pool)
        .await?;
        Ok(max.and_then(|m| u32::try_from(m).ok()).unwrap_or(0))
    }

    /// UIDs committed as tickets whose after-step (e.g. `\Seen`) has not
    /// been confirmed yet, oldest first.
    pub async fn pending_after(&self, pos: &FolderPosition) -> Result<Vec<u32>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT uid FROM source_positions
             WHERE reader = ? AND folder = ? AND uidvalidity = ? AND after_state = 'pending'
             ORDER BY uid",
        )
        .bind(&pos.reader)
        .bind(&pos.folder)
        .bind(i64::from(pos.uidvalidity))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(u,)| u32::try_from(u).ok())
            .collect())
    }

    pub async fn mark_after_done(
        &self,
        pos: &FolderPosition,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        for uid in uids {
            sqlx::query(
                "UPDATE source_positions SET after_state = 'done'
                 WHERE reader = ? AND folder = ? AND uidvalidity = ? AND uid = ?",
            )
            .bind(&pos.reader)
            .bind(&pos.folder)
            .bind(i64::from(pos.uidvalidity))
            .bind(i64::from(*uid))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Commits a batch of fetched mails in one transaction: a ticket for each
    /// new mail, and the source position of every mail. Either all of it is
    /// stored or none, so a crash at any point neither loses nor duplicates.
    pub async fn commit_batch(
        &self,
        pos: &FolderPosition,
        mails: &[(u32, ParsedMail)],
    ) -> Result<BatchOutcome, StoreError> {
        let mut outcome = BatchOutcome::default();
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        for (uid, mail) in mails {
            let recorded: Option<(i64,)> = sqlx::query_as(
                "SELECT email_id FROM source_positions
                 WHERE reader = ? AND folder = ? AND uidvalidity = ? AND uid = ?",
            )
            .bind(&pos.reader)
            .bind(&pos.folder)
            .bind(i64::from(pos.uidvalidity))
            .bind(i64::from(*uid))
            .fetch_optional(&mut *tx)
            .await?;
            if recorded.is_some() {
                outcome.already_recorded += 1;
                continue;
            }
            let existing: Option<(i64,)> =
                sqlx::query_as("SELECT id FROM emails WHERE dedup_key = ?")
                    .bind(&mail.dedup_key)
                    .fetch_optional(&mut *tx)
                    .await?;
            let email_id = match existing {
                Some((id,)) => {
                    outcome.duplicates += 1;
                    id
                }
                None => {
                    outcome.created += 1;
                    insert_ticket(&mut tx, &pos.reader, mail).await?
                }
            };
            sqlx::query(&format!(
                "INSERT INTO source_positions (reader, folder, uidvalidity, uid, email_id, ingested_at)
                 VALUES (?, ?, ?, ?, ?, {NOW})"
            ))
            .bind(&pos.reader)
            .bind(&pos.folder)
            .bind(i64::from(pos.uidvalidity))
            .bind(i64::from(*uid))
            .bind(email_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

/// Opens a ticket with `mail` as its first email; returns the email's id.
async fn insert_ticket(
    tx: &mut Transaction<'_, Sqlite>,
    reader: &str,
    mail: &ParsedMail,
) -> Result<i64, StoreError> {
    let (ticket_id,): (i64,) = sqlx::query_as(&format!(
        "INSERT INTO tickets (reader, subject, requester, requester_name, status, created_at, updated_at)
         VALUES (?, ?, ?, ?, 'open', {NOW}, {NOW}) RETURNING id"
    ))
    .bind(reader)
    .bind(&mail.subject)
    .bind(&mail.from_addr)
    .bind(&mail.from_name)
    .fetch_one(&mut **tx)
    .await?;
    let (email_id,): (i64,) = sqlx::query_as(&format!(
        "INSERT INTO emails (ticket_id, reader, dedup_key, message_id, in_reply_to, references_,
            from_addr, from_name, to_addrs, cc_addrs, subject, sent_at, body_text, body_html,
            parse_note, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {NOW}) RETURNING id"
    ))
    .bind(ticket_id)
    .bind(reader)
    .bind(&mail.dedup_key)
    .bind(&mail.message_id)
    .bind(&mail.in_reply_to)
    .bind(&mail.references)
    .bind(&mail.from_addr)
    .bind(&mail.from_name)
    .bind(&mail.to)
    .bind(&mail.cc)
    .bind(&mail.subject)
    .bind(&mail.sent_at)
    .bind(&mail.body_text)
    .bind(&mail.body_html)
    .bind(&mail.parse_note)
    .fetch_one(&mut **tx)
    .await?;
    for a in &mail.attachments {
        sqlx::query(
            "INSERT INTO attachments (email_id, filename, content_type, size, content)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(email_id)
        .bind(&a.filename)
        .bind(&a.content_type)
        .bind(i64::try_from(a.content.len()).unwrap_or(i64::MAX))
        .bind(&a.content)
        .execute(&mut **tx)
        .await?;
    }
    Ok(email_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::ingest::parse;

    async fn store(dir: &tempfile::TempDir) -> Store {
        let config = StoreConfig {
            database: format!("sqlite://{}", dir.path().join("t.db").display()),
            key_file: None,
        };
        Store::open(&config).await.expect("open store")
    }

    async fn count(store: &Store, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let (n,): (i64,) = sqlx::query_as(&sql)
            .fetch_one(store.pool())
            .await
            .expect("count");
        n
    }

    #[tokio::test]
    async fn batch_is_idempotent_and_dedups_across_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        let a = FolderPosition {
            reader: "a".into(),
            folder: "INBOX".into(),
            uidvalidity: 7,
        };
        let mails: Vec<_> = (1..=3u32)
            .map(|i| {
                (
                    i,
                    parse(format!("Message-ID: <{i}@x>\r\nSubject: s{i}\r\n\r\nbody").as_bytes()),
                )
            })
            .collect();
        let first = store.commit_batch(&a, &mails).await.expect("commit");
        assert_eq!(
            first,
            BatchOutcome {
                created: 3,
                duplicates: 0,
                already_recorded: 0
            }
        );
        let again = store.commit_batch(&a, &mails).await.expect("commit again");
        assert_eq!(again.already_recorded, 3);
        assert_eq!(store.watermark(&a).await.expect("wm"), 3);

        // The same mails seen by another reader, or after a UIDVALIDITY change.
        let b = FolderPosition {
            reader: "b".into(),
            folder: "INBOX".into(),
            uidvalidity: 1,
        };
        let other = store.commit_batch(&b, &mails).await.expect("commit b");
        assert_eq!(other.duplicates, 3);
        let a2 = FolderPosition {
            uidvalidity: 8,
            ..a.clone()
        };
        assert_eq!(
            store
                .commit_batch(&a2, &mails)
                .await
                .expect("a2")
                .duplicates,
            3
        );
        assert_eq!(count(&store, "tickets").await, 3);
        assert_eq!(count(&store, "emails").await, 3);
        assert_eq!(
            store.pending_after(&a).await.expect("pending"),
            vec![1, 2, 3]
        );
        store.mark_after_done(&a, &[1, 2]).await.expect("done");
        assert_eq!(store.pending_after(&a).await.expect("pending"), vec![3]);
    }

    #[tokio::test]
    async fn reader_health_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        store.register_reader("r", "imap").await.expect("register");
        assert_eq!(store.record_failure("r", "boom").await.expect("fail"), 1);
        assert_eq!(
            store.record_failure("r", "boom again").await.expect("fail"),
            2
        );
        let s = &store.reader_statuses().await.expect("status")[0];
        assert_eq!(s.last_error.as_deref(), Some("boom again"));
        assert_eq!(s.consecutive_failures, 2);
        store.record_success("r").await.expect("ok");
        let s = &store.reader_statuses().await.expect("status")[0];
        assert_eq!(s.last_error, None);
        assert_eq!(s.consecutive_failures, 0);
        assert!(s.last_success_at.is_some());
    }

    #[tokio::test]
    async fn reopening_with_another_key_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(store(&dir).await);
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, "11".repeat(32)).expect("write key");
        let config = StoreConfig {
            database: format!("sqlite://{}", dir.path().join("t.db").display()),
            key_file: Some(other_key),
        };
        let err = Store::open(&config).await.unwrap_err();
        assert!(
            err.to_string().contains("does not match this database"),
            "{err}"
        );
    }
}
