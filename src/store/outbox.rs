//! The outbox after the ticket commit queued a row: which acknowledgements
//! are due, claiming one for an attempt, and what the attempt left behind
//! (sent; retried later with a growing delay; given up), plus the
//! per-reader counts `status` shows.
//!
//! Rows are inserted by the ticket commit, in its transaction; nothing here
//! creates one. The retry schedule lives here, so the database alone says
//! when a row is tried next, whichever process (daemon or `run --once`)
//! picks it up.

use std::time::Duration;

use super::{BEGIN_WRITE, NOW, StatusView, Store, StoreError};

/// Attempts before an acknowledgement is given up (state 'failed'). With
/// the delays of [`retry_delay`] the last one is about six hours after the
/// first: long enough to ride out an outage or fix a permission.
pub const MAX_ATTEMPTS: i64 = 12;
const FIRST_RETRY: Duration = Duration::from_secs(60);
const LONGEST_RETRY: Duration = Duration::from_secs(60 * 60);

/// An acknowledgement to send, with what its text needs from the ticket.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueAck {
    pub id: i64,
    pub ticket_id: i64,
    /// The reader whose `[reader.reply]` sends it.
    pub reader: String,
    /// Without angle brackets.
    pub message_id: String,
    pub to_addr: String,
    /// The mail answered, without angle brackets.
    pub in_reply_to: Option<String>,
    /// Space-separated Message-IDs without angle brackets.
    #[sqlx(rename = "references_")]
    pub references: Option<String>,
    /// Attempts made before this one.
    pub attempts: i64,
    /// The ticket's subject, requester and the requester's display name.
    pub subject: String,
    pub requester: Option<String>,
    pub requester_name: Option<String>,
}

/// Where a failed attempt left its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecorded {
    /// 'pending' (tried again at `next_attempt_at`) or 'failed'.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: String,
}

impl AttemptRecorded {
    pub fn gave_up(&self) -> bool {
        self.state == "failed"
    }
}

/// One reader's outbox, as `status` shows it.
#[derive(Debug, Clone, Default, sqlx::FromRow, serde::Serialize)]
pub struct OutboxStatus {
    #[serde(skip)]
    pub reader: String,
    pub pending: i64,
    pub failed: i64,
    pub sent: i64,
    /// When the oldest acknowledgement still waiting was queued.
    pub oldest_pending_at: Option<String>,
    /// The newest error of a row not sent (pending or failed).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// The wait after the `attempts`-th failed attempt: a minute, doubling,
/// at most an hour.
pub fn retry_delay(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    FIRST_RETRY
        .saturating_mul(1u32 << doublings)
        .min(LONGEST_RETRY)
}

/// `now + seconds` in the schema's text format.
fn now_plus(seconds: u64) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+{seconds} seconds')")
}

impl Store {
    /// Takes the next due acknowledgement for one attempt: its
    /// `next_attempt_at` moves `lease` ahead first, so another process
    /// draining the same database skips it, and a crash mid-send retries
    /// only after the lease instead of at once.
    pub async fn claim_due_ack(&self, lease: Duration) -> Result<Option<DueAck>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row: Option<DueAck> = sqlx::query_as(&format!(
            "SELECT o.id, o.ticket_id, o.reader, o.message_id, o.to_addr, o.in_reply_to,
                    o.references_, o.attempts, t.subject, t.requester, t.requester_name
             FROM outbox o JOIN tickets t ON t.id = o.ticket_id
             WHERE o.state = 'pending' AND o.next_attempt_at <= {NOW}
             ORDER BY o.next_attempt_at, o.id
             LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = &row {
            sqlx::query(&format!(
                "UPDATE outbox SET next_attempt_at = {} WHERE id = ?",
                now_plus(lease.as_secs())
            ))
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// The server accepted the acknowledgement.
    pub async fn ack_sent(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = {NOW},
                 last_attempt_at = {NOW}
             WHERE id = ?"
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An attempt failed: counted, with its error; the row is tried again
    /// after [`retry_delay`], or given up when `permanent` (the server
    /// refused the recipient or the message for good) or after
    /// [`MAX_ATTEMPTS`].
    pub async fn ack_failed(
        &self,
        id: i64,
        error: &str,
        permanent: bool,
    ) -> Result<AttemptRecorded, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let (before,): (i64,) = sqlx::query_as("SELECT attempts FROM outbox WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let attempts = before.saturating_add(1);
        let state = if permanent || attempts >= MAX_ATTEMPTS {
            "failed"
        } else {
            "pending"
        };
        let (next_attempt_at,): (String,) = sqlx::query_as(&format!(
            "UPDATE outbox SET attempts = ?, state = ?, last_error = ?, last_attempt_at = {NOW},
                 next_attempt_at = {}
             WHERE id = ?
             RETURNING next_attempt_at",
            now_plus(retry_delay(attempts).as_secs())
        ))
        .bind(attempts)
        .bind(state)
        .bind(error)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AttemptRecorded {
            state: state.to_string(),
            attempts,
            next_attempt_at,
        })
    }

    /// No attempt could be made (the reader or its `[reader.reply]` is not
    /// in the configuration now): not counted, the row stays pending with
    /// `why` and is looked at again after `recheck`. True when `why` is
    /// news for this row.
    pub async fn ack_waiting(
        &self,
        id: i64,
        why: &str,
        recheck: Duration,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let (before,): (Option<String>,) =
            sqlx::query_as("SELECT last_error FROM outbox WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(&format!(
            "UPDATE outbox SET next_attempt_at = {}, last_error = ? WHERE id = ?",
            now_plus(recheck.as_secs())
        ))
        .bind(why)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(before.as_deref() != Some(why))
    }
}

impl StatusView {
    /// Per reader: acknowledgements pending, failed and sent, the oldest
    /// one waiting, and the newest error of one not sent. Empty for a
    /// database from before the outbox existed.
    pub async fn outbox_statuses(&self) -> Result<Vec<OutboxStatus>, StoreError> {
        if !self.has_migration(super::TICKET_SEMANTICS).await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT o.reader,
                    SUM(o.state = 'pending') AS pending,
                    SUM(o.state = 'failed') AS failed,
                    SUM(o.state = 'sent') AS sent,
                    MIN(CASE WHEN o.state = 'pending' THEN o.created_at END) AS oldest_pending_at,
                    e.last_error, e.last_attempt_at AS last_error_at
             FROM outbox o
             LEFT JOIN (
                 SELECT reader, last_error, last_attempt_at,
                        ROW_NUMBER() OVER (PARTITION BY reader
                            ORDER BY COALESCE(last_attempt_at, created_at) DESC, id DESC) AS n
                 FROM outbox WHERE state <> 'sent' AND last_error IS NOT NULL
             ) e ON e.reader = o.reader AND e.n = 1
             GROUP BY o.reader
             ORDER BY o.reader",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_a_minute_to_an_hour() {
        let minutes: Vec<u64> = (1..=MAX_ATTEMPTS)
            .map(|n| retry_delay(n).as_secs() / 60)
            .collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]);
        assert_eq!(retry_delay(0), FIRST_RETRY);
        assert_eq!(retry_delay(i64::MAX), LONGEST_RETRY);
    }

    async fn with_row(store: &Store) -> i64 {
        let pool = store.pool();
        let (ticket,): (i64,) = sqlx::query_as(&format!(
            "INSERT INTO tickets (reader, subject, requester, requester_name, created_at, updated_at)
             VALUES ('r', 'Printer on fire', 'bob@example.net', 'Bob', {NOW}, {NOW})
             RETURNING id"
        ))
        .fetch_one(pool)
        .await
        .expect("ticket");
        let (id,): (i64,) = sqlx::query_as(&format!(
            "INSERT INTO outbox (ticket_id, reader, kind, message_id, to_addr, in_reply_to,
                 references_, next_attempt_at, created_at)
             VALUES (?1, 'r', 'ack', 'm2t.' || ?1 || '@example.org', 'bob@example.net',
                 'a@example.net', 'a@example.net', {NOW}, {NOW})
             RETURNING id"
        ))
        .bind(ticket)
        .fetch_one(pool)
        .await
        .expect("outbox row");
        id
    }

    fn lease() -> Duration {
        Duration::from_secs(600)
    }

    #[tokio::test]
    async fn a_claimed_row_is_not_due_again_until_its_attempt_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::open_in(&dir).await;
        let id = with_row(&store).await;
        let row = store
            .claim_due_ack(lease())
            .await
            .expect("claim")
            .expect("due");
        assert_eq!(row.id, id);
        assert_eq!(row.subject, "Printer on fire");
        assert_eq!(row.requester_name.as_deref(), Some("Bob"));
        assert_eq!(row.references.as_deref(), Some("a@example.net"));
        assert!(store.claim_due_ack(lease()).await.expect("claim").is_none());

        store.ack_sent(id).await.expect("sent");
        let counts = store.status_view().outbox_statuses().await.expect("status");
        assert_eq!(counts.len(), 1);
        assert_eq!(
            (counts[0].pending, counts[0].sent, counts[0].failed),
            (0, 1, 0)
        );
        assert_eq!(counts[0].oldest_pending_at, None);
    }

    #[tokio::test]
    async fn failures_back_off_and_give_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::open_in(&dir).await;
        let id = with_row(&store).await;
        let first = store
            .ack_failed(id, "connection refused: 127.0.0.1:1", false)
            .await
            .expect("failed");
        assert_eq!((first.state.as_str(), first.attempts), ("pending", 1));
        assert!(!first.gave_up());
        assert!(store.claim_due_ack(lease()).await.expect("claim").is_none());
        let counts = store.status_view().outbox_statuses().await.expect("status");
        assert_eq!(counts[0].pending, 1);
        assert_eq!(
            counts[0].last_error.as_deref(),
            Some("connection refused: 127.0.0.1:1")
        );
        assert!(counts[0].oldest_pending_at.is_some());

        for _ in 2..MAX_ATTEMPTS {
            let r = store.ack_failed(id, "again", false).await.expect("failed");
            assert_eq!(r.state, "pending");
        }
        let last = store.ack_failed(id, "last", false).await.expect("failed");
        assert_eq!(
            (last.state.as_str(), last.attempts),
            ("failed", MAX_ATTEMPTS)
        );

        let other = with_row(&store).await;
        let at_once = store
            .ack_failed(other, "550 5.1.1 no such user", true)
            .await
            .expect("failed");
        assert_eq!((at_once.state.as_str(), at_once.attempts), ("failed", 1));
        let counts = store.status_view().outbox_statuses().await.expect("status");
        assert_eq!((counts[0].pending, counts[0].failed), (0, 2));
        assert_eq!(
            counts[0].last_error.as_deref(),
            Some("550 5.1.1 no such user")
        );
    }

    #[tokio::test]
    async fn waiting_for_the_configuration_is_not_an_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::open_in(&dir).await;
        let id = with_row(&store).await;
        let why = "reader \"r\" has no [reader.reply]";
        assert!(store.ack_waiting(id, why, lease()).await.expect("wait"));
        assert!(!store.ack_waiting(id, why, lease()).await.expect("wait"));
        let (attempts, state): (i64, String) =
            sqlx::query_as("SELECT attempts, state FROM outbox WHERE id = ?")
                .bind(id)
                .fetch_one(store.pool())
                .await
                .expect("row");
        assert_eq!((attempts, state.as_str()), (0, "pending"));
        assert!(store.claim_due_ack(lease()).await.expect("claim").is_none());
    }
}
