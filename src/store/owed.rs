//! The IMAP UIDs a folder's ledger still owes: asked for, not delivered.
//!
//! A server can refuse a FETCH (NO, BAD), leave a UID out of its answer or
//! send it without a body. Such a UID is recorded here before any mail
//! above it is committed, so the positions above it (the watermark) can
//! move on without passing it: every poll asks for the owed UIDs again.
//! A UID refused [`MAX_REFUSALS`] polls running is set aside in the
//! quarantine with the server's words, so it is never skipped silently.

use sqlx::QueryBuilder;

use super::ledger::where_position;
use super::quarantine::set_aside_refused;
use super::readers::insert_event;
use super::{NOW, Store, StoreError};
use crate::store::FolderPosition;

/// Sorted UIDs as a compact IMAP sequence set: `1:3,7,9:10`; what the
/// IMAP reader sends and what this ledger's events name.
pub(crate) fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Polls a UID may go undelivered before it is set aside in the
/// quarantine: enough to ride out a server's bad minute (polls back off),
/// few enough that an admin hears of a mail the server will not give.
pub const MAX_REFUSALS: u32 = 5;

/// One owed UID after a poll in which it was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owed {
    /// Asked for again next poll; `attempts` polls have not delivered it.
    Again { uid: u32, attempts: u32 },
    /// Refused too often: now the quarantined email `email`.
    SetAside { uid: u32, email: i64 },
}

impl Store {
    /// The UIDs owed to this folder position, ascending; a UID recorded in
    /// the ledger since (delivered after all) is not owed any more.
    pub async fn owed_uids(&self, pos: &FolderPosition) -> Result<Vec<u32>, StoreError> {
        let mut q = QueryBuilder::new("SELECT uid FROM imap_owed o WHERE ");
        where_position(&mut q, pos);
        q.push(
            " AND NOT EXISTS (SELECT 1 FROM source_positions p WHERE p.reader = o.reader
               AND p.folder = o.folder AND p.uidvalidity = o.uidvalidity AND p.uid = o.uid)
             ORDER BY uid",
        );
        let rows: Vec<(i64,)> = q.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(u,)| u32::try_from(u).ok())
            .collect())
    }

    /// Forgets owed UIDs the ledger has recorded since: delivered after all.
    pub async fn settle_owed(&self, pos: &FolderPosition) -> Result<(), StoreError> {
        let mut q = QueryBuilder::new("DELETE FROM imap_owed AS o WHERE ");
        where_position(&mut q, pos);
        q.push(
            " AND EXISTS (SELECT 1 FROM source_positions p WHERE p.reader = o.reader
               AND p.folder = o.folder AND p.uidvalidity = o.uidvalidity AND p.uid = o.uid)",
        );
        q.build().execute(&self.pool).await?;
        Ok(())
    }

    /// Records that `uids` were asked for and not delivered, with the
    /// server's (scrubbed) words. Must be called before any mail above them
    /// is committed. A UID refused [`MAX_REFUSALS`] times is set aside in
    /// the quarantine in the same transaction.
    pub async fn owe(
        &self,
        pos: &FolderPosition,
        uids: &[u32],
        words: &str,
    ) -> Result<Vec<Owed>, StoreError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        let mut out = Vec::with_capacity(uids.len());
        for &uid in uids {
            let (attempts,): (i64,) = sqlx::query_as(&format!(
                "INSERT INTO imap_owed (reader, folder, uidvalidity, uid, attempts, last_words, first_at, last_at)
                 VALUES (?, ?, ?, ?, 1, ?, {NOW}, {NOW})
                 ON CONFLICT (reader, folder, uidvalidity, uid) DO UPDATE
                 SET attempts = attempts + 1, last_words = excluded.last_words, last_at = {NOW}
                 RETURNING attempts"
            ))
            .bind(&pos.reader)
            .bind(&pos.folder)
            .bind(i64::from(pos.uidvalidity))
            .bind(i64::from(uid))
            .bind(words)
            .fetch_one(&mut *tx)
            .await?;
            let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
            if attempts < MAX_REFUSALS {
                out.push(Owed::Again { uid, attempts });
                continue;
            }
            let detail = format!(
                "the server did not deliver UID {uid} of folder {:?} in {attempts} polls; it said: {words}",
                pos.folder
            );
            let email = set_aside_refused(&mut tx, pos, uid, &detail).await?;
            forget(&mut tx, pos, uid).await?;
            out.push(Owed::SetAside { uid, email });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Stops asking for `uids`: the server no longer has them (expunged
    /// before they could be fetched), so there is nothing left to owe.
    pub async fn forget_owed(
        &self,
        pos: &FolderPosition,
        uids: &[u32],
        why: &str,
    ) -> Result<(), StoreError> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        for &uid in uids {
            forget(&mut tx, pos, uid).await?;
        }
        insert_event(
            &mut tx,
            &pos.reader,
            "warn",
            &format!(
                "{} mail(s) the server had refused to deliver are gone from folder {:?} \
                 (UID {}): {why}",
                uids.len(),
                pos.folder,
                uid_set(uids)
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// `quarantine retry` of a mail the server refused to deliver: there
    /// are no bytes to parse again, so its position goes back to being
    /// owed (attempts reset) and the next poll asks the server for it.
    /// False when `id` is not such a mail.
    pub async fn requeue_refused(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(super::BEGIN_WRITE).await?;
        let row: Option<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT p.reader, p.folder, p.uidvalidity, p.uid
             FROM emails e JOIN source_positions p ON p.email_id = e.id
             WHERE e.id = ? AND e.disposition LIKE 'quarantined: server (%'",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((reader, folder, uidvalidity, uid)) = row else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM source_positions WHERE email_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM emails WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO imap_owed (reader, folder, uidvalidity, uid, attempts, last_words, first_at, last_at)
             VALUES (?, ?, ?, ?, 0, 'asked for again by an admin', {NOW}, {NOW})
             ON CONFLICT (reader, folder, uidvalidity, uid) DO UPDATE SET attempts = 0"
        ))
        .bind(&reader)
        .bind(&folder)
        .bind(uidvalidity)
        .bind(uid)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            &reader,
            "info",
            &format!(
                "quarantined mail {id} retried: the next poll asks the server for UID {uid} of folder {folder:?} again"
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

async fn forget(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    pos: &FolderPosition,
    uid: u32,
) -> Result<(), StoreError> {
    let mut q = QueryBuilder::new("DELETE FROM imap_owed WHERE ");
    where_position(&mut q, pos);
    q.push(" AND uid = ").push_bind(i64::from(uid));
    q.build().execute(&mut **tx).await?;
    Ok(())
}
