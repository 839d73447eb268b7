//! The Microsoft Graph ledger: each message ingested, by its immutable id
//! (a move inside the mailbox keeps it, so the ledger is per reader, not per
//! folder), whether its after-step is still pending, the delta link each
//! reader's folder resumes from, and what a first contact left.
//!
//! Mail is committed through [`Store::commit_batch`] (`Batch::Graph`) like
//! every protocol's; this file only knows Graph's keys.

use std::collections::HashSet;

use sqlx::{QueryBuilder, Sqlite};

use super::ledger::{isolating, store_unrecorded};
use super::tickets::{ROWS_PER_INSERT, in_list};
use super::{BEGIN_WRITE, FolderPosition, NOW, Store, StoreError};
use crate::ingest::Incoming;
use crate::outcome::BatchOutcome;

impl Store {
    /// The delta link `reader`'s `folder` resumes from; `None` means a
    /// full sync (first contact, or Graph forgot the sync state).
    pub async fn graph_delta_link(
        &self,
        reader: &str,
        folder: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT delta_link FROM graph_delta_links WHERE reader = ? AND folder = ?",
        )
        .bind(reader)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(link,)| link))
    }

    /// Keeps `link`, the whole `@odata.deltaLink` of a finished round, for
    /// the next poll. Written only once every mail the round listed is
    /// committed: a crash before it repeats the round, and the ledger
    /// keeps the repeat from duplicating anything.
    pub async fn save_graph_delta_link(
        &self,
        reader: &str,
        folder: &str,
        link: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO graph_delta_links (reader, folder, delta_link, updated_at)
             VALUES (?, ?, ?, {NOW})
             ON CONFLICT (reader, folder) DO UPDATE SET
                 delta_link = excluded.delta_link, updated_at = excluded.updated_at"
        ))
        .bind(reader)
        .bind(folder)
        .bind(link)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops the delta link of `reader`'s `folder`, after Graph answered
    /// that its sync state is gone: the next poll syncs in full.
    pub async fn forget_graph_delta_link(
        &self,
        reader: &str,
        folder: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM graph_delta_links WHERE reader = ? AND folder = ?")
            .bind(reader)
            .bind(folder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Which of `ids` need no fetch: ingested already, or left by the
    /// first contact. Asked per delta page, so a full resync of a large
    /// folder never loads the whole ledger.
    pub async fn graph_known(
        &self,
        reader: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let mut known = HashSet::new();
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT message_id FROM graph_messages WHERE reader = ",
            );
            q.push_bind(reader).push(" AND message_id IN ");
            in_list(&mut q, chunk.iter().map(String::as_str));
            q.push(" UNION SELECT message_id FROM graph_skipped WHERE reader = ");
            q.push_bind(reader).push(" AND message_id IN ");
            in_list(&mut q, chunk.iter().map(String::as_str));
            let rows: Vec<(String,)> = q.build_query_as().fetch_all(&self.pool).await?;
            known.extend(rows.into_iter().map(|(id,)| id));
        }
        Ok(known)
    }

    /// Messages committed as tickets whose after-step has not been
    /// confirmed yet, oldest first.
    pub async fn graph_pending(&self, reader: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT message_id FROM graph_messages
             WHERE reader = ? AND after_state = 'pending' ORDER BY rowid",
        )
        .bind(reader)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Records that Graph confirmed the after-step for `ids`.
    pub async fn mark_graph_done(&self, reader: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE graph_messages SET after_state = 'done' WHERE reader = ",
            );
            q.push_bind(reader).push(" AND message_id IN ");
            in_list(&mut q, chunk.iter().map(String::as_str));
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `reader`'s `folder` had its first contact.
    pub async fn graph_met(&self, reader: &str, folder: &str) -> Result<bool, StoreError> {
        let (met,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM first_contacts
                            WHERE reader = ? AND folder = ? AND uidvalidity = 0)",
        )
        .bind(reader)
        .bind(folder)
        .fetch_one(&self.pool)
        .await?;
        Ok(met)
    }

    /// Records the first contact with `reader`'s `folder`: `messages` were
    /// there, and the ids in `skipped` are left for good.
    pub async fn record_graph_first_contact(
        &self,
        reader: &str,
        folder: &str,
        backfill: &str,
        messages: usize,
        skipped: &[String],
    ) -> Result<(), StoreError> {
        let pos = FolderPosition {
            reader: reader.to_string(),
            folder: folder.to_string(),
            uidvalidity: 0,
        };
        self.record_first_contact_leaving(
            &pos,
            backfill,
            messages,
            skipped,
            "INSERT OR IGNORE INTO graph_skipped (reader, message_id, skipped_at) ",
        )
        .await
    }

    pub(super) async fn commit_graph(
        &self,
        reader: &str,
        mails: &[(String, Incoming)],
        pending: bool,
    ) -> Result<BatchOutcome, StoreError> {
        isolating(mails, |mails, set_aside| {
            self.commit_graph_once(reader, mails, pending, set_aside)
        })
        .await
    }

    async fn commit_graph_once(
        &self,
        reader: &str,
        mails: &[(String, Incoming)],
        pending: bool,
        set_aside: Option<String>,
    ) -> Result<BatchOutcome, StoreError> {
        if mails.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT message_id FROM graph_messages WHERE reader = ");
        q.push_bind(reader).push(" AND message_id IN ");
        in_list(&mut q, mails.iter().map(|(id, _)| id.as_str()));
        let recorded: HashSet<String> = q
            .build_query_as::<(String,)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        let (outcome, rows) = store_unrecorded(
            &mut tx,
            reader,
            mails,
            |id| recorded.contains(id),
            set_aside.as_deref(),
        )
        .await?;
        let state = if pending { "pending" } else { "done" };
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO graph_messages (reader, message_id, email_id, after_state, ingested_at) ",
            );
            q.push_values(chunk, |mut row, (id, email_id)| {
                row.push_bind(reader)
                    .push_bind(id.as_str())
                    .push_bind(*email_id)
                    .push_bind(state)
                    .push(NOW);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use crate::ingest::Incoming;
    use crate::store::{Batch, open_in};

    fn mails(reader: &str, ids: &[&str]) -> Vec<(String, Incoming)> {
        ids.iter()
            .map(|id| {
                let raw = format!("Message-ID: <{id}@x>\r\nSubject: {id}\r\n\r\nbody");
                (
                    id.to_string(),
                    Incoming::new(raw.as_bytes(), reader, &Default::default()),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_message_is_ingested_once_by_its_id_and_its_after_step_is_tracked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let batch = mails("g", &["AAMk1", "AAMk2"]);
        let first = store
            .commit_batch(Batch::Graph {
                reader: "g",
                mails: &batch,
                pending: true,
            })
            .await
            .expect("commit");
        assert_eq!(first.created, 2);
        // A full resync lists both again: nothing new.
        let again = store
            .commit_batch(Batch::Graph {
                reader: "g",
                mails: &batch,
                pending: true,
            })
            .await
            .expect("commit again");
        assert_eq!((again.created, again.already_recorded), (0, 2));
        assert_eq!(
            store.graph_pending("g").await.expect("pending"),
            ["AAMk1", "AAMk2"]
        );
        store
            .mark_graph_done("g", &["AAMk1".to_string()])
            .await
            .expect("done");
        assert_eq!(store.graph_pending("g").await.expect("pending"), ["AAMk2"]);
        // Another reader's ledger is its own.
        let known = store
            .graph_known("other", &["AAMk1".to_string()])
            .await
            .expect("known");
        assert!(known.is_empty());
    }

    #[tokio::test]
    async fn first_contact_leaves_mail_for_good_and_is_recorded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        assert!(!store.graph_met("g", "Inbox").await.expect("met"));
        store
            .record_graph_first_contact("g", "Inbox", "unseen", 3, &["old".to_string()])
            .await
            .expect("record");
        assert!(store.graph_met("g", "Inbox").await.expect("met"));
        assert!(!store.graph_met("g", "Archive").await.expect("met"));
        let batch = mails("g", &["new"]);
        store
            .commit_batch(Batch::Graph {
                reader: "g",
                mails: &batch,
                pending: false,
            })
            .await
            .expect("commit");
        let ids = ["old", "new", "unknown"].map(String::from);
        let mut known: Vec<_> = store
            .graph_known("g", &ids)
            .await
            .expect("known")
            .into_iter()
            .collect();
        known.sort();
        assert_eq!(known, ["new", "old"]);
        // after = "keep": nothing pending.
        assert!(store.graph_pending("g").await.expect("pending").is_empty());
        assert!(
            store
                .record_graph_first_contact("g", "Inbox", "unseen", 3, &[])
                .await
                .is_err(),
            "a second first contact of the same folder must not pass unnoticed"
        );
    }

    #[tokio::test]
    async fn the_delta_link_is_kept_replaced_and_forgotten_per_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        assert_eq!(
            store.graph_delta_link("g", "Inbox").await.expect("get"),
            None
        );
        store
            .save_graph_delta_link("g", "Inbox", "https://graph/delta?$deltatoken=1")
            .await
            .expect("save");
        store
            .save_graph_delta_link("g", "Inbox", "https://graph/delta?$deltatoken=2")
            .await
            .expect("replace");
        store
            .save_graph_delta_link("g", "Archive", "https://graph/delta?$deltatoken=a")
            .await
            .expect("other folder");
        assert_eq!(
            store
                .graph_delta_link("g", "Inbox")
                .await
                .expect("get")
                .as_deref(),
            Some("https://graph/delta?$deltatoken=2")
        );
        store
            .forget_graph_delta_link("g", "Inbox")
            .await
            .expect("forget");
        assert_eq!(
            store.graph_delta_link("g", "Inbox").await.expect("get"),
            None
        );
        assert!(
            store
                .graph_delta_link("g", "Archive")
                .await
                .expect("get")
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_quarantined_mail_retried_keeps_its_graph_ledger_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let raw = b"Message-ID: <q@x>\r\nSubject: broken\r\n\r\nbody".to_vec();
        let mut given_up = Incoming::new(&raw, "g", &Default::default());
        given_up.mail.quarantine = Some("the MIME parser panicked".into());
        let batch = vec![("AAMkq".to_string(), given_up)];
        let outcome = store
            .commit_batch(Batch::Graph {
                reader: "g",
                mails: &batch,
                pending: false,
            })
            .await
            .expect("commit");
        assert_eq!(outcome.quarantined, 1);
        let (quarantined,): (i64,) =
            sqlx::query_as("SELECT email_id FROM graph_messages WHERE message_id = 'AAMkq'")
                .fetch_one(store.pool())
                .await
                .expect("ledger row");
        let fixed = Incoming::new(&raw, "g", &Default::default());
        store
            .retry_quarantined(quarantined, &fixed)
            .await
            .expect("retry");
        let (now,): (i64,) =
            sqlx::query_as("SELECT email_id FROM graph_messages WHERE message_id = 'AAMkq'")
                .fetch_one(store.pool())
                .await
                .expect("ledger row");
        assert_ne!(
            now, quarantined,
            "the ledger row follows the mail out of the quarantine"
        );
        let (exists,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM emails WHERE id = ?)")
                .bind(now)
                .fetch_one(store.pool())
                .await
                .expect("email");
        assert!(exists);
    }
}
