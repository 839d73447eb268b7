//! First contact: what a reader found the first time it read a mailbox, and
//! what `backfill` took of the mail already there (`first_contacts`). The
//! row is written before any of that mail is fetched, so a first poll cut
//! short resumes as a later poll, never as a second first contact. Which
//! mail matches the backfill is the source's to decide; this module only
//! remembers the decision: for IMAP a floor UID and the UIDs taken at or
//! below it (`imap_backfill`), for POP3 the UIDLs left (`pop3_skipped`).

use std::collections::HashSet;

use serde::Serialize;
use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::tickets::{ROWS_PER_INSERT, in_list};
use super::{BEGIN_WRITE, NOW, StatusView, Store, StoreError};
use crate::store::FolderPosition;

/// What a first contact found and took: `taken` of `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FirstContact {
    pub messages: usize,
    pub taken: usize,
}

impl FirstContact {
    pub fn skipped(self) -> usize {
        self.messages.saturating_sub(self.taken)
    }
}

/// How an IMAP folder's first contact bounds later polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImapFloor {
    /// The highest UID at first contact: mail above it is new. 0 when the
    /// first contact took everything.
    pub floor: u32,
}

/// A first contact as recorded, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirstContactRow {
    pub folder: String,
    pub backfill: String,
    #[serde(flatten)]
    pub found: FirstContact,
    pub skipped: usize,
    pub at: String,
}

/// The migration that added first contacts.
const FIRST_CONTACT: i64 = 8;

impl Store {
    /// The floor of this folder's first contact; `None` before it.
    pub async fn imap_floor(&self, pos: &FolderPosition) -> Result<Option<ImapFloor>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT floor_uid FROM first_contacts
             WHERE reader = ? AND folder = ? AND uidvalidity = ?",
        )
        .bind(&pos.reader)
        .bind(&pos.folder)
        .bind(i64::from(pos.uidvalidity))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(floor,)| ImapFloor {
            floor: u32::try_from(floor).unwrap_or(0),
        }))
    }

    /// Records an IMAP folder's first contact: the floor, and the UIDs at
    /// or below it that `backfill` takes (with floor 0: everything, so
    /// none are listed).
    pub async fn record_imap_first_contact(
        &self,
        pos: &FolderPosition,
        backfill: &str,
        messages: usize,
        floor: u32,
        taken: &[u32],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        insert_first_contact(
            &mut tx,
            pos,
            backfill,
            FirstContact {
                messages,
                taken: taken.len(),
            },
            floor,
        )
        .await?;
        if floor > 0 {
            for chunk in taken.chunks(ROWS_PER_INSERT) {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT OR IGNORE INTO imap_backfill (reader, folder, uidvalidity, uid) ",
                );
                q.push_values(chunk, |mut row, uid| {
                    row.push_bind(pos.reader.as_str())
                        .push_bind(pos.folder.as_str())
                        .push_bind(i64::from(pos.uidvalidity))
                        .push_bind(i64::from(*uid));
                });
                q.build().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// UIDs the first contact took that are not in the ledger yet: owed
    /// by a first poll that was cut short. Ascending.
    pub async fn imap_backfill_owed(&self, pos: &FolderPosition) -> Result<Vec<u32>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT b.uid FROM imap_backfill b
             WHERE b.reader = ? AND b.folder = ? AND b.uidvalidity = ?
               AND NOT EXISTS (SELECT 1 FROM source_positions p
                   WHERE p.reader = b.reader AND p.folder = b.folder
                     AND p.uidvalidity = b.uidvalidity AND p.uid = b.uid)
             ORDER BY b.uid",
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

    /// Whether `reader`'s POP3 maildrop had its first contact: recorded,
    /// or mail ingested before first contacts were.
    pub async fn pop3_met(&self, reader: &str) -> Result<bool, StoreError> {
        let (met,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM first_contacts WHERE reader = ? AND uidvalidity = 0)
                 OR EXISTS (SELECT 1 FROM pop3_uidls WHERE reader = ?)",
        )
        .bind(reader)
        .bind(reader)
        .fetch_one(&self.pool)
        .await?;
        Ok(met)
    }

    /// Records a POP3 maildrop's first contact: `messages` were there, and
    /// the UIDLs in `skipped` are left for good.
    pub async fn record_pop3_first_contact(
        &self,
        reader: &str,
        backfill: &str,
        messages: usize,
        skipped: &[String],
    ) -> Result<(), StoreError> {
        self.record_first_contact_leaving(
            &pop3_position(reader),
            backfill,
            messages,
            skipped,
            "INSERT OR IGNORE INTO pop3_skipped (reader, uidl, skipped_at) ",
        )
        .await
    }

    /// Records the first contact at `pos` and, in the same transaction,
    /// the keys in `skipped` as left for good (`insert`: the table and
    /// columns reader, key, time to add them to), for sources whose
    /// mail is known by a key rather than a UID range.
    pub(super) async fn record_first_contact_leaving(
        &self,
        pos: &FolderPosition,
        backfill: &str,
        messages: usize,
        skipped: &[String],
        insert: &'static str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        insert_first_contact(
            &mut tx,
            pos,
            backfill,
            FirstContact {
                messages,
                taken: messages.saturating_sub(skipped.len()),
            },
            0,
        )
        .await?;
        for chunk in skipped.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(insert);
            q.push_values(chunk, |mut row, key| {
                row.push_bind(pos.reader.as_str())
                    .push_bind(key.as_str())
                    .push(NOW);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets left UIDLs that are no longer on the server: a server may
    /// give a UIDL to a new message once the old one is gone, and that
    /// mail must not be taken for the one left.
    pub async fn forget_pop3_skipped(
        &self,
        reader: &str,
        gone: &[String],
    ) -> Result<(), StoreError> {
        if gone.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        for chunk in gone.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM pop3_skipped WHERE reader = ");
            q.push_bind(reader).push(" AND uidl IN ");
            in_list(&mut q, chunk.iter().map(String::as_str));
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The UIDLs `reader`'s first contact left.
    pub async fn pop3_skipped(&self, reader: &str) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT uidl FROM pop3_skipped WHERE reader = ?")
            .bind(reader)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }
}

impl StatusView {
    /// Every first contact of `reader`, newest first; none on a database
    /// a daemon without them migrated last.
    pub async fn first_contacts(&self, reader: &str) -> Result<Vec<FirstContactRow>, StoreError> {
        if !self.has_migration(FIRST_CONTACT).await? {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
            "SELECT folder, backfill, messages, taken, at FROM first_contacts
             WHERE reader = ? ORDER BY at DESC",
        )
        .bind(reader)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(folder, backfill, messages, taken, at)| {
                let found = FirstContact {
                    messages: usize::try_from(messages).unwrap_or(0),
                    taken: usize::try_from(taken).unwrap_or(0),
                };
                FirstContactRow {
                    folder,
                    backfill,
                    skipped: found.skipped(),
                    found,
                    at,
                }
            })
            .collect())
    }
}

/// POP3's one maildrop, as `first_contacts` names it.
fn pop3_position(reader: &str) -> FolderPosition {
    FolderPosition {
        reader: reader.to_string(),
        folder: "INBOX".into(),
        uidvalidity: 0,
    }
}

pub(super) async fn insert_first_contact(
    tx: &mut Transaction<'_, Sqlite>,
    pos: &FolderPosition,
    backfill: &str,
    found: FirstContact,
    floor: u32,
) -> Result<(), StoreError> {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query(&format!(
        "INSERT INTO first_contacts
            (reader, folder, uidvalidity, backfill, messages, taken, skipped, floor_uid, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, {NOW})"
    ))
    .bind(&pos.reader)
    .bind(&pos.folder)
    .bind(i64::from(pos.uidvalidity))
    .bind(backfill)
    .bind(count(found.messages))
    .bind(count(found.taken))
    .bind(count(found.skipped()))
    .bind(i64::from(floor))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_in;

    #[tokio::test]
    async fn a_first_contact_is_recorded_once_with_what_it_took() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_in(&dir).await;
        let pos = FolderPosition {
            reader: "r".into(),
            folder: "INBOX".into(),
            uidvalidity: 7,
        };
        assert_eq!(store.imap_floor(&pos).await.expect("floor"), None);
        store
            .record_imap_first_contact(&pos, "unseen", 10, 10, &[4, 9])
            .await
            .expect("record");
        assert_eq!(
            store.imap_floor(&pos).await.expect("floor"),
            Some(ImapFloor { floor: 10 })
        );
        assert_eq!(store.imap_backfill_owed(&pos).await.expect("owed"), [4, 9]);
        // A second first contact for the same folder is a bug, not a redo.
        assert!(
            store
                .record_imap_first_contact(&pos, "all", 10, 0, &[])
                .await
                .is_err()
        );
        let other = FolderPosition {
            uidvalidity: 8,
            ..pos.clone()
        };
        assert_eq!(store.imap_floor(&other).await.expect("floor"), None);

        assert!(!store.pop3_met("p").await.expect("met"));
        store
            .record_pop3_first_contact("p", "none", 3, &["a".into(), "b".into(), "c".into()])
            .await
            .expect("record");
        assert!(store.pop3_met("p").await.expect("met"));
        assert_eq!(store.pop3_skipped("p").await.expect("skipped").len(), 3);
        let rows = store.status_view().first_contacts("p").await.expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].found,
            FirstContact {
                messages: 3,
                taken: 0
            }
        );
        assert_eq!(rows[0].found.skipped(), 3);
    }
}
