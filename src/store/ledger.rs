//! The ledgers of where each mail came from (IMAP folder positions and
//! their watermark, POP3 UIDLs, the after-steps still pending; Graph's is
//! in `super::graph`), and the one commit of a fetched batch
//! ([`Store::commit_batch`], for every ledger):
//! its ledger rows in one transaction with the tickets and emails the
//! batch's mail became (decided in `super::tickets`).

use std::collections::{HashMap, HashSet};

use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::quarantine::{self, QuarantineReason};
use super::tickets::{ROWS_PER_INSERT, in_list, store_mails};
use super::{NOW, Store, StoreError};
use crate::ingest::Incoming;
use crate::outcome::BatchOutcome;

/// A folder of one reader at one UIDVALIDITY: the space UIDs live in.
#[derive(Debug, Clone)]
pub struct FolderPosition {
    pub reader: String,
    pub folder: String,
    pub uidvalidity: u32,
}

/// A batch of fetched mails, each under its key in the ledger it is
/// recorded in: what [`Store::commit_batch`] commits.
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    /// IMAP mails by UID in one folder position.
    Imap {
        position: &'a FolderPosition,
        mails: &'a [(u32, Incoming)],
        /// UIDs of earlier batches whose after-step has since succeeded;
        /// recorded in the same transaction, which saves a write (and a
        /// wait for the write lock) per batch.
        after_done: &'a [u32],
    },
    /// POP3 mails by UIDL of one reader.
    Pop3 {
        reader: &'a str,
        mails: &'a [(String, Incoming)],
        /// Each mail's listed size, by UIDL: a UIDL in the ledger with
        /// another known size is a new mail under a reused UIDL, stored,
        /// and its row replaced. A UIDL without one is recorded without.
        sizes: &'a HashMap<String, u64>,
        /// Whether the after-step (deleting the mail) is still to come: the
        /// UIDL stays pending until `mark_pop3_done`, else is done at once.
        pending: bool,
    },
    /// Microsoft Graph mails by immutable message id of one reader.
    Graph {
        reader: &'a str,
        mails: &'a [(String, Incoming)],
        /// Whether the after-step (isRead, move, delete) is still to come:
        /// the id stays pending until `mark_graph_done`, else is done at once.
        pending: bool,
    },
}

impl Store {
    /// The highest UID already recorded for this folder position; 0 if none.
    pub async fn watermark(&self, pos: &FolderPosition) -> Result<u32, StoreError> {
        let mut q = QueryBuilder::new("SELECT MAX(uid) FROM source_positions WHERE ");
        where_position(&mut q, pos);
        let (max,): (Option<i64>,) = q.build_query_as().fetch_one(&self.pool).await?;
        Ok(max.and_then(|m| u32::try_from(m).ok()).unwrap_or(0))
    }

    /// UIDs committed as tickets whose after-step (e.g. `\Seen`) has not
    /// been confirmed yet, oldest first.
    pub async fn pending_after(&self, pos: &FolderPosition) -> Result<Vec<u32>, StoreError> {
        let mut q = QueryBuilder::new("SELECT uid FROM source_positions WHERE ");
        where_position(&mut q, pos);
        q.push(" AND after_state = 'pending' ORDER BY uid");
        let rows: Vec<(i64,)> = q.build_query_as().fetch_all(&self.pool).await?;
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
        if uids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        mark_after_done(&mut tx, pos, uids).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Another UIDVALIDITY this folder was read under, if any: a folder
    /// that has one but no position under the current one was recreated.
    pub async fn other_uidvalidity(&self, pos: &FolderPosition) -> Result<Option<u32>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT uidvalidity FROM source_positions
             WHERE reader = ? AND folder = ? AND uidvalidity != ? LIMIT 1",
        )
        .bind(&pos.reader)
        .bind(&pos.folder)
        .bind(i64::from(pos.uidvalidity))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(v,)| u32::try_from(v).ok()))
    }

    /// The POP3 ledger of `reader`: every UIDL ingested, with whether its
    /// after-step is still pending.
    pub async fn pop3_ledger(&self, reader: &str) -> Result<HashMap<String, bool>, StoreError> {
        Ok(self
            .pop3_ledger_sized(reader)
            .await?
            .into_iter()
            .map(|(uidl, (pending, _))| (uidl, pending))
            .collect())
    }

    /// [`Store::pop3_ledger`] with the size each UIDL was ingested at, when
    /// known (see [`Batch::Pop3`]).
    pub async fn pop3_ledger_sized(
        &self,
        reader: &str,
    ) -> Result<HashMap<String, (bool, Option<u64>)>, StoreError> {
        let rows: Vec<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT uidl, after_state, size FROM pop3_uidls WHERE reader = ?")
                .bind(reader)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(uidl, state, size)| {
                let size = size.and_then(|s| u64::try_from(s).ok());
                (uidl, (state == "pending", size))
            })
            .collect())
    }

    async fn commit_pop3_once(
        &self,
        reader: &str,
        mails: &[(String, Incoming)],
        sizes: &HashMap<String, u64>,
        pending: bool,
        set_aside: Option<String>,
    ) -> Result<BatchOutcome, StoreError> {
        if mails.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        let mut q = QueryBuilder::new("SELECT uidl, size FROM pop3_uidls WHERE reader = ");
        q.push_bind(reader).push(" AND uidl IN ");
        in_list(&mut q, mails.iter().map(|(uidl, _)| uidl.as_str()));
        let recorded: HashSet<String> = q
            .build_query_as::<(String, Option<i64>)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .filter(|(uidl, size)| {
                let was = size.and_then(|s| u64::try_from(s).ok());
                !matches!((was, sizes.get(uidl)), (Some(was), Some(now)) if was != *now)
            })
            .map(|(uidl, _)| uidl)
            .collect();
        let (outcome, rows) = store_unrecorded(
            &mut tx,
            reader,
            mails,
            |uidl| recorded.contains(uidl),
            set_aside.as_deref(),
        )
        .await?;
        let state = if pending { "pending" } else { "done" };
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::new(
                "INSERT INTO pop3_uidls (reader, uidl, email_id, after_state, ingested_at, size) ",
            );
            q.push_values(chunk, |mut row, (uidl, email_id)| {
                row.push_bind(reader)
                    .push_bind(uidl.as_str())
                    .push_bind(*email_id)
                    .push_bind(state)
                    .push(NOW)
                    .push_bind(sizes.get(*uidl).and_then(|s| i64::try_from(*s).ok()));
            });
            // A reused UIDL: the row now stands for the new mail.
            q.push(
                " ON CONFLICT (reader, uidl) DO UPDATE SET email_id = excluded.email_id,
                 after_state = excluded.after_state, ingested_at = excluded.ingested_at,
                 size = excluded.size",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Records that the server confirmed the after-step for `uidls`.
    pub async fn mark_pop3_done(&self, reader: &str, uidls: &[String]) -> Result<(), StoreError> {
        if uidls.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        for chunk in uidls.chunks(ROWS_PER_INSERT) {
            let mut q =
                QueryBuilder::new("UPDATE pop3_uidls SET after_state = 'done' WHERE reader = ");
            q.push_bind(reader).push(" AND uidl IN ");
            in_list(&mut q, chunk.iter().map(String::as_str));
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Commits a batch of fetched mails in one transaction: a ticket for each
    /// new mail, and the ledger row of every mail (see [`Batch`]). Either all
    /// of it is stored or none, so a crash at any point neither loses nor
    /// duplicates. A mail whose content cannot be stored is set aside in the
    /// quarantine and the rest of the batch still commits (see `isolating`).
    pub async fn commit_batch(&self, batch: Batch<'_>) -> Result<BatchOutcome, StoreError> {
        match batch {
            Batch::Imap {
                position,
                mails,
                after_done,
            } => {
                // Recording `after_done` again with each mail of the
                // isolating path is harmless: it only marks rows done.
                isolating(mails, |mails, set_aside| {
                    self.commit_imap_once(position, mails, after_done, set_aside)
                })
                .await
            }
            Batch::Pop3 {
                reader,
                mails,
                sizes,
                pending,
            } => {
                isolating(mails, |mails, set_aside| {
                    self.commit_pop3_once(reader, mails, sizes, pending, set_aside)
                })
                .await
            }
            Batch::Graph {
                reader,
                mails,
                pending,
            } => self.commit_graph(reader, mails, pending).await,
        }
    }

    async fn commit_imap_once(
        &self,
        pos: &FolderPosition,
        mails: &[(u32, Incoming)],
        after_done: &[u32],
        set_aside: Option<String>,
    ) -> Result<BatchOutcome, StoreError> {
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        mark_after_done(&mut tx, pos, after_done).await?;
        if mails.is_empty() {
            tx.commit().await?;
            return Ok(BatchOutcome::default());
        }

        // Two lookups per batch rather than two per mail: positions already
        // recorded (another process got there first) and mails already known.
        let mut q = QueryBuilder::new("SELECT uid FROM source_positions WHERE ");
        where_position(&mut q, pos);
        q.push(" AND uid IN ");
        in_list(&mut q, mails.iter().map(|(uid, _)| i64::from(*uid)));
        let recorded: HashSet<i64> = q
            .build_query_as::<(i64,)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(uid,)| uid)
            .collect();
        let (outcome, positions) = store_unrecorded(
            &mut tx,
            &pos.reader,
            mails,
            |uid| recorded.contains(&i64::from(*uid)),
            set_aside.as_deref(),
        )
        .await?;
        for chunk in positions.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::new(
                "INSERT INTO source_positions (reader, folder, uidvalidity, uid, email_id, ingested_at) ",
            );
            q.push_values(chunk, |mut row, (uid, email_id)| {
                row.push_bind(pos.reader.as_str())
                    .push_bind(pos.folder.as_str())
                    .push_bind(i64::from(pos.uidvalidity))
                    .push_bind(i64::from(**uid))
                    .push_bind(*email_id)
                    .push(NOW);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

/// Commits `mails` with `commit`; when that fails for a reason that may
/// lie in a mail's content, commits them one at a time instead (see
/// [`isolating_each`]). Failures of the database itself (locked, full,
/// unreachable) fail the batch as before: it is fetched again next poll.
pub(super) async fn isolating<'m, K, F, Fut>(
    mails: &'m [(K, Incoming)],
    commit: F,
) -> Result<BatchOutcome, StoreError>
where
    F: Fn(&'m [(K, Incoming)], Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<BatchOutcome, StoreError>>,
{
    match commit(mails, None).await {
        Err(e) if e.may_be_caused_by_content() => {
            tracing::warn!(
                error = %e,
                mails = mails.len(),
                "a batch could not be stored; storing its mails one at a time to set aside the one that fails"
            );
            isolating_each(mails, &e, commit).await
        }
        other => other,
    }
}

/// Commits each mail in a transaction of its own; one that still fails
/// for a reason that may lie in its content is committed once more, set
/// aside in the quarantine with the error, so the mailbox moves on. If even
/// that fails, the database itself is at fault and the batch fails.
async fn isolating_each<'m, K, F, Fut>(
    mails: &'m [(K, Incoming)],
    batch_error: &StoreError,
    commit: F,
) -> Result<BatchOutcome, StoreError>
where
    F: Fn(&'m [(K, Incoming)], Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<BatchOutcome, StoreError>>,
{
    let mut total = BatchOutcome::default();
    for one in mails.chunks(1) {
        let outcome = match commit(one, None).await {
            Err(e) if e.may_be_caused_by_content() => commit(one, Some(e.to_string()))
                .await
                .map_err(|set_aside| {
                    tracing::error!(error = %set_aside, "could not set a mail aside in the quarantine");
                    // The first error is the one that tells what happened.
                    StoreError::Isolation(batch_error.to_string())
                })?,
            other => other?,
        };
        total.add(&outcome);
    }
    Ok(total)
}

/// Stores each mail of a batch whose ledger key is not `recorded` yet
/// (see `super::tickets`): the one place where mail becomes tickets, for
/// every protocol's ledger. Returns the outcome and, for each mail stored,
/// its key and the email it is, for the caller's ledger rows.
///
/// Mails the parser gave up on are set aside in the quarantine, and so is
/// every mail when `set_aside` names a store error (one mail that could not
/// be stored alone, see [`isolating_each`]).
pub(super) async fn store_unrecorded<'m, K>(
    tx: &mut Transaction<'_, Sqlite>,
    reader: &str,
    mails: &'m [(K, Incoming)],
    recorded: impl Fn(&K) -> bool,
    set_aside: Option<&str>,
) -> Result<(BatchOutcome, Vec<(&'m K, i64)>), StoreError> {
    let fresh: Vec<(&K, &Incoming)> = mails
        .iter()
        .filter(|(key, _)| !recorded(key))
        .map(|(k, i)| (k, i))
        .collect();
    let mut outcome = BatchOutcome {
        already_recorded: mails.len() - fresh.len(),
        ..BatchOutcome::default()
    };
    let (aside, to_store): (Vec<_>, Vec<_>) = fresh
        .into_iter()
        .partition(|(_, i)| set_aside.is_some() || i.mail.quarantine.is_some());
    let mut stored = store_mails(tx, reader, &to_store, &mut outcome).await?;
    for (key, incoming) in aside {
        let (reason, detail) = match (set_aside, &incoming.mail.quarantine) {
            (Some(error), _) => (QuarantineReason::Store, error),
            (None, Some(why)) => (QuarantineReason::Parser, why.as_str()),
            (None, None) => continue,
        };
        let (id, new) = quarantine::set_aside(tx, reader, incoming, reason, detail).await?;
        if new {
            outcome.quarantined += 1;
        } else {
            outcome.duplicates += 1;
        }
        stored.push((key, id));
    }
    Ok((outcome, stored))
}

async fn mark_after_done(
    tx: &mut Transaction<'_, Sqlite>,
    pos: &FolderPosition,
    uids: &[u32],
) -> Result<(), StoreError> {
    // Bounded IN lists: a long-failing after-step can leave many pending.
    for chunk in uids.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::new("UPDATE source_positions SET after_state = 'done' WHERE ");
        where_position(&mut q, pos);
        q.push(" AND uid IN ");
        in_list(&mut q, chunk.iter().map(|u| i64::from(*u)));
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// `reader = ? AND folder = ? AND uidvalidity = ?` for `pos`.
pub(super) fn where_position<'q>(q: &mut QueryBuilder<'q, Sqlite>, pos: &'q FolderPosition) {
    q.push("reader = ")
        .push_bind(pos.reader.as_str())
        .push(" AND folder = ")
        .push_bind(pos.folder.as_str())
        .push(" AND uidvalidity = ")
        .push_bind(i64::from(pos.uidvalidity));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Incoming;
    use crate::store::Retried;

    use crate::store::open_in as store;

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
                    Incoming::new(
                        format!("Message-ID: <{i}@x>\r\nSubject: s{i}\r\n\r\nbody").as_bytes(),
                        "a",
                        &Default::default(),
                    ),
                )
            })
            .collect();
        let first = store
            .commit_batch(Batch::Imap {
                position: &a,
                mails: &mails,
                after_done: &[],
            })
            .await
            .expect("commit");
        assert_eq!(
            first,
            BatchOutcome {
                created: 3,
                ..BatchOutcome::default()
            }
        );
        let again = store
            .commit_batch(Batch::Imap {
                position: &a,
                mails: &mails,
                after_done: &[],
            })
            .await
            .expect("commit again");
        assert_eq!(again.already_recorded, 3);
        assert_eq!(store.watermark(&a).await.expect("wm"), 3);

        // The same mails seen by another reader, or after a UIDVALIDITY change.
        let b = FolderPosition {
            reader: "b".into(),
            folder: "INBOX".into(),
            uidvalidity: 1,
        };
        let other = store
            .commit_batch(Batch::Imap {
                position: &b,
                mails: &mails,
                after_done: &[],
            })
            .await
            .expect("commit b");
        assert_eq!(other.duplicates, 3);
        let a2 = FolderPosition {
            uidvalidity: 8,
            ..a.clone()
        };
        assert_eq!(
            store
                .commit_batch(Batch::Imap {
                    position: &a2,
                    mails: &mails,
                    after_done: &[]
                })
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
    async fn a_mail_the_parser_gave_up_on_is_set_aside_once_and_retried_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        let pos = FolderPosition {
            reader: "a".into(),
            folder: "INBOX".into(),
            uidvalidity: 1,
        };
        let raw =
            b"Message-ID: <q@x>\r\nFrom: q@example.net\r\nSubject: broken\r\n\r\nbody".to_vec();
        let mut given_up = Incoming::new(&raw, "a", &Default::default());
        given_up.mail.quarantine = Some("the MIME parser panicked".into());
        let healthy = Incoming::new(
            b"Message-ID: <h@x>\r\nSubject: fine\r\n\r\nbody",
            "a",
            &Default::default(),
        );
        let batch = vec![(1, given_up.clone()), (2, healthy)];
        let outcome = store
            .commit_batch(Batch::Imap {
                position: &pos,
                mails: &batch,
                after_done: &[],
            })
            .await
            .expect("commit");
        assert_eq!((outcome.created, outcome.quarantined), (1, 1));
        let (id, disposition, kept): (i64, String, Vec<u8>) = sqlx::query_as(
            "SELECT e.id, e.disposition, b.content FROM emails e JOIN blobs b ON b.key = e.raw_blob
             WHERE e.disposition LIKE 'quarantined: %'",
        )
        .fetch_one(store.pool())
        .await
        .expect("quarantined row");
        assert_eq!(
            disposition,
            "quarantined: parser (the MIME parser panicked)"
        );
        assert_eq!(kept, raw);
        assert_eq!(
            store.watermark(&pos).await.expect("wm"),
            2,
            "the ledger moved on"
        );
        // Fetched again after a crash: recorded, not set aside twice.
        let again = store
            .commit_batch(Batch::Imap {
                position: &pos,
                mails: &batch,
                after_done: &[],
            })
            .await
            .expect("again");
        assert_eq!((again.already_recorded, again.quarantined), (2, 0));

        // The parser still gives up: it stays.
        assert_eq!(
            store.retry_quarantined(id, &given_up).await.expect("retry"),
            Retried::StillQuarantined("the MIME parser panicked".into())
        );
        let fixed = Incoming::new(&raw, "a", &Default::default());
        let Retried::Stored { email, disposition } =
            store.retry_quarantined(id, &fixed).await.expect("retry")
        else {
            panic!("not stored");
        };
        assert_eq!(disposition, "ticket");
        assert_eq!(
            store
                .retry_quarantined(id, &fixed)
                .await
                .expect("retry again"),
            Retried::NotQuarantined
        );
        assert_eq!(count(&store, "tickets").await, 2);
        assert_eq!(count(&store, "emails").await, 2);
        let (pointed,): (i64,) =
            sqlx::query_as("SELECT email_id FROM source_positions WHERE uid = 1")
                .fetch_one(store.pool())
                .await
                .expect("position");
        assert_eq!(pointed, email);
    }
}
