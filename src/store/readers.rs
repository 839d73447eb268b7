//! The reader records and the daemon's own row: registration, state,
//! history, heartbeat, and the queries `status` and `health` make.
//!
//! Owns `readers` (state, `last_error`, counters), `reader_events` (each
//! state change, failure and recovery, newest [`EVENTS_KEPT`] per reader)
//! and `daemon` (the heartbeat `health` reads, the last reload's outcome).
//! A failure or recovery and its history row are one transaction, so the
//! history never disagrees with the state. Also here: what each reader's
//! recent mail became ([`MailCounts`]), read from `emails` for `status`.

use sqlx::{Sqlite, Transaction};

use super::{BEGIN_WRITE, NOW, ReaderIdentity, StatusView, Store, StoreError};
use crate::outcome::ReaderState;

/// History rows kept per reader.
pub const EVENTS_KEPT: i64 = 1000;

/// Timestamps with milliseconds, for the heartbeat (seconds are too coarse
/// for a one-second watchdog).
const NOW_MS: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// One row of `readers`, as `status` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ReaderStatus {
    pub name: String,
    pub protocol: String,
    pub state: String,
    #[serde(rename = "grant")]
    pub grant_type: Option<String>,
    pub added_at: Option<String>,
    pub last_poll_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub consecutive_failures: i64,
    /// Whole days since the reader's refresh token was last used, when it
    /// has one.
    pub refresh_idle_days: Option<i64>,
    /// Seconds since the last success (or, before the first, since the
    /// reader was first configured).
    #[serde(skip)]
    pub seconds_without_success: Option<f64>,
}

/// One row of `reader_events`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ReaderEvent {
    pub at: String,
    pub level: String,
    pub message: String,
}

/// The `daemon` row, as `status` and `health` read it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DaemonStatus {
    pub pid: i64,
    pub started_at: String,
    pub heartbeat_at: Option<String>,
    pub heartbeat_seconds: f64,
    pub stopped_at: Option<String>,
    pub config_path: String,
    pub reloaded_at: Option<String>,
    pub reload_error: Option<String>,
    pub reload_error_at: Option<String>,
    /// Seconds since the last heartbeat.
    pub heartbeat_age: Option<f64>,
}

impl ReaderState {
    /// The history level of a failure that leaves a reader in this state.
    fn failure_level(self) -> &'static str {
        if self.is_parked() { "error" } else { "warn" }
    }
}

impl Store {
    /// Makes sure a `readers` row exists for a configured reader and says
    /// which account it uses. A stopped reader whose settings or secrets
    /// changed is released: the change may be the fix. Returns the state.
    pub async fn register_reader(
        &self,
        reader: ReaderIdentity<'_>,
    ) -> Result<ReaderState, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let before: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, config_hash FROM readers WHERE name = ?")
                .bind(reader.name)
                .fetch_optional(&mut *tx)
                .await?;
        let (state,): (String,) = sqlx::query_as(&format!(
            "INSERT INTO readers (name, protocol, oauth, account, grant_type, config_hash, added_at)
             VALUES (?, ?, ?, ?, ?, ?, {NOW})
             ON CONFLICT (name) DO UPDATE SET protocol = excluded.protocol,
                 oauth = excluded.oauth, account = excluded.account,
                 grant_type = excluded.grant_type, config_hash = excluded.config_hash,
                 added_at = COALESCE(readers.added_at, excluded.added_at),
                 state = CASE
                     WHEN readers.config_hash IS NOT excluded.config_hash
                          AND readers.state IN ('needs_authorization', 'misconfigured')
                     THEN 'ok' ELSE readers.state END
             RETURNING state"
        ))
        .bind(reader.name)
        .bind(reader.protocol)
        .bind(reader.oauth)
        .bind(reader.account)
        .bind(reader.grant)
        .bind(reader.config_hash)
        .fetch_one(&mut *tx)
        .await?;
        let event = match &before {
            None => Some(format!(
                "configured: {} as {}",
                reader.protocol, reader.account
            )),
            Some((old_state, _)) if *old_state != state => Some(format!(
                "configuration changed; released from {old_state}, trying again"
            )),
            Some((_, old_hash)) if old_hash.as_deref() != Some(reader.config_hash) => {
                Some("configuration changed".to_string())
            }
            Some(_) => None,
        };
        if let Some(message) = event {
            insert_event(&mut tx, reader.name, "info", &message).await?;
        }
        tx.commit().await?;
        Ok(ReaderState::parse(&state).unwrap_or(ReaderState::Ok))
    }

    /// The reader's state and `last_error`, if it has a row.
    pub async fn reader_state(
        &self,
        reader: &str,
    ) -> Result<Option<(ReaderState, Option<String>)>, StoreError> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, last_error FROM readers WHERE name = ?")
                .bind(reader)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(s, e)| Some((ReaderState::parse(&s)?, e))))
    }

    /// After a successful sign-in: the stopped readers of this account may
    /// try again (the sign-in just proved app and account work). Returns
    /// their names.
    pub async fn release_authorized(
        &self,
        oauth: &str,
        account: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE readers SET state = 'ok', last_error = NULL, consecutive_failures = 0
             WHERE oauth = ? AND account = ? COLLATE NOCASE
                   AND state IN ('needs_authorization', 'misconfigured')
             RETURNING name",
        )
        .bind(oauth)
        .bind(account)
        .fetch_all(&mut *tx)
        .await?;
        for (name,) in &rows {
            insert_event(&mut tx, name, "info", "released: signed in again").await?;
        }
        tx.commit().await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    pub async fn record_poll_start(&self, reader: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE readers SET last_poll_at = {NOW} WHERE name = ?"
        ))
        .bind(reader)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Shows what a poll still in progress is waiting out (a server that
    /// asked to be left alone) in `last_error`, without counting a failure
    /// or changing the state: the poll's own outcome overwrites it.
    pub async fn record_waiting(&self, reader: &str, text: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE readers SET last_error = ? WHERE name = ?")
            .bind(text)
            .bind(reader)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A success clears `last_error`; `last_error_at` keeps the time of the
    /// most recent failure for whoever investigates later. The first
    /// success after failures is a recovery, and goes into the history.
    pub async fn record_success(&self, reader: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let before: Option<(String, i64)> =
            sqlx::query_as("SELECT state, consecutive_failures FROM readers WHERE name = ?")
                .bind(reader)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((state, failures)) = before
            && (failures > 0 || state != ReaderState::Ok.as_str())
        {
            let message = match failures {
                1 => format!("recovered after 1 failed attempt (was {state})"),
                n => format!("recovered after {n} failed attempts (was {state})"),
            };
            insert_event(&mut tx, reader, "info", &message).await?;
        }
        sqlx::query(&format!(
            "UPDATE readers SET last_success_at = {NOW}, last_error = NULL,
             consecutive_failures = 0, state = 'ok' WHERE name = ?"
        ))
        .bind(reader)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a failure, the state it leaves the reader in, and a history
    /// row; returns the number of failures in a row.
    pub async fn record_failure(
        &self,
        reader: &str,
        state: ReaderState,
        error: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row: Option<(i64,)> = sqlx::query_as(&format!(
            "UPDATE readers SET last_error = ?, last_error_at = {NOW}, state = ?,
             consecutive_failures = consecutive_failures + 1 WHERE name = ?
             RETURNING consecutive_failures"
        ))
        .bind(error)
        .bind(state.as_str())
        .bind(reader)
        .fetch_optional(&mut *tx)
        .await?;
        let message = format!("{}: {error}", state.as_str());
        insert_event(&mut tx, reader, state.failure_level(), &message).await?;
        tx.commit().await?;
        Ok(row.map_or(1, |r| r.0))
    }

    /// Adds a history row outside a failure or recovery (e.g. a reload
    /// that stopped or restarted the reader).
    pub async fn record_event(
        &self,
        reader: &str,
        level: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        insert_event(&mut tx, reader, level, message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims the `daemon` row for this process.
    pub async fn daemon_started(
        &self,
        pid: u32,
        heartbeat: std::time::Duration,
        config_path: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO daemon (id, pid, started_at, heartbeat_at, heartbeat_seconds,
                 config_path)
             VALUES (1, ?, {NOW}, {NOW_MS}, ?, ?)"
        ))
        .bind(i64::from(pid))
        .bind(heartbeat.as_secs_f64())
        .bind(config_path)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The scheduler's proof of life; a write, so it also proves the
    /// database takes writes. A beat that timed out is dropped by the
    /// scheduler but may still run in SQLite's worker later, even after
    /// the stop was recorded: it must not make a stopped daemon look alive.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE daemon SET heartbeat_at = {NOW_MS} WHERE id = 1 AND stopped_at IS NULL"
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn daemon_stopped(&self) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE daemon SET heartbeat_at = NULL, stopped_at = {NOW} WHERE id = 1"
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a reload: `Err` holds why the new config was refused.
    pub async fn record_reload(&self, outcome: Result<(), &str>) -> Result<(), StoreError> {
        match outcome {
            Ok(()) => {
                sqlx::query(&format!(
                    "UPDATE daemon SET reloaded_at = {NOW}, reload_error = NULL,
                     reload_error_at = NULL WHERE id = 1"
                ))
                .execute(&self.pool)
                .await?
            }
            Err(error) => {
                sqlx::query(&format!(
                    "UPDATE daemon SET reload_error = ?, reload_error_at = {NOW} WHERE id = 1"
                ))
                .bind(error)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(())
    }
}

impl StatusView {
    /// The reader's newest `limit` history rows, newest first.
    pub async fn reader_events(
        &self,
        reader: &str,
        limit: i64,
    ) -> Result<Vec<ReaderEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT at, level, message FROM reader_events WHERE reader = ?
             ORDER BY id DESC LIMIT ?",
        )
        .bind(reader)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn reader_statuses(&self) -> Result<Vec<ReaderStatus>, StoreError> {
        // A refresh token is only ever used by readers with a delegated grant.
        Ok(sqlx::query_as(
            "SELECT r.name, r.protocol, r.state, r.grant_type, r.added_at, r.last_poll_at,
                    r.last_success_at, r.last_error, r.last_error_at, r.consecutive_failures,
                    CAST(julianday('now') - julianday(t.last_used_at) AS INTEGER)
                        AS refresh_idle_days,
                    (julianday('now') - julianday(COALESCE(r.last_success_at, r.added_at)))
                        * 86400.0 AS seconds_without_success
             FROM readers r
             LEFT JOIN oauth_tokens t
               ON t.oauth = r.oauth AND t.account = r.account COLLATE NOCASE
                  AND r.grant_type <> 'client_credentials'
             ORDER BY r.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Per reader with a refresh token (delegated grants only, as in
    /// [`Self::reader_statuses`]), when the token was last used, in Unix
    /// seconds: what the expiry alert watches.
    pub async fn refresh_token_use(&self) -> Result<Vec<(String, f64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.name, (julianday(t.last_used_at) - 2440587.5) * 86400.0
             FROM readers r
             JOIN oauth_tokens t
               ON t.oauth = r.oauth AND t.account = r.account COLLATE NOCASE
                  AND r.grant_type <> 'client_credentials'
             WHERE t.last_used_at IS NOT NULL
             ORDER BY r.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Mails received and tickets opened in each of the last `hours` hours
    /// that had any, oldest first; the hour as `YYYY-MM-DDTHH:00:00Z`. For
    /// the status page's chart. Empty for a database from before
    /// dispositions existed, as in [`Self::mail_counts`].
    pub async fn mail_per_hour(&self, hours: u32) -> Result<Vec<HourCount>, StoreError> {
        if !self.has_migration(super::TICKET_SEMANTICS).await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT strftime('%Y-%m-%dT%H:00:00Z', received_at) AS hour,
                    COUNT(*) AS mails,
                    SUM(disposition = 'ticket') AS tickets
             FROM emails
             WHERE received_at >= strftime('%Y-%m-%dT%H:00:00Z', 'now', ?)
             GROUP BY 1
             ORDER BY 1",
        )
        .bind(format!("-{} hours", hours.saturating_sub(1)))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn daemon_status(&self) -> Result<Option<DaemonStatus>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT pid, started_at, heartbeat_at, heartbeat_seconds, stopped_at, config_path,
                    reloaded_at, reload_error, reload_error_at,
                    (julianday('now') - julianday(heartbeat_at)) * 86400.0 AS heartbeat_age
             FROM daemon WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// One hour of [`StatusView::mail_per_hour`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct HourCount {
    pub hour: String,
    pub mails: i64,
    pub tickets: i64,
}

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

impl StatusView {
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

pub(super) async fn insert_event(
    tx: &mut Transaction<'_, Sqlite>,
    reader: &str,
    level: &str,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO reader_events (reader, at, level, message) VALUES (?, {NOW}, ?, ?)"
    ))
    .bind(reader)
    .bind(level)
    .bind(message)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM reader_events WHERE reader = ?1 AND id <= (
             SELECT id FROM reader_events WHERE reader = ?1
             ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )
    .bind(reader)
    .bind(EVENTS_KEPT)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> Store {
        let store = crate::store::open_in(dir).await;
        store
            .register_reader(ReaderIdentity {
                name: "r",
                protocol: "imap",
                oauth: None,
                account: "a@example.org",
                grant: "plain",
                config_hash: "h",
            })
            .await
            .expect("register");
        store
    }

    #[tokio::test]
    async fn history_keeps_the_newest_thousand_per_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        store
            .record_event("other", "info", "kept")
            .await
            .expect("event");
        for i in 0..1005 {
            store
                .record_failure("r", ReaderState::Retrying, &format!("failure {i}"))
                .await
                .expect("failure");
        }
        let events = store
            .status_view()
            .reader_events("r", 5000)
            .await
            .expect("events");
        assert_eq!(events.len() as i64, EVENTS_KEPT);
        assert_eq!(events[0].message, "retrying: failure 1004");
        assert_eq!(events[0].level, "warn");
        assert_eq!(
            events.last().map(|e| e.message.as_str()),
            Some("retrying: failure 5")
        );
        let other = store
            .status_view()
            .reader_events("other", 10)
            .await
            .expect("events");
        assert_eq!(other.len(), 1, "pruning is per reader");
    }

    #[tokio::test]
    async fn recovery_is_recorded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        store.record_success("r").await.expect("success");
        store
            .record_failure("r", ReaderState::Misconfigured, "bad folder")
            .await
            .expect("failure");
        store.record_success("r").await.expect("success");
        store.record_success("r").await.expect("success");
        let events = store
            .status_view()
            .reader_events("r", 10)
            .await
            .expect("events");
        let messages: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.level.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            [
                (
                    "info",
                    "recovered after 1 failed attempt (was misconfigured)"
                ),
                ("error", "misconfigured: bad folder"),
                ("info", "configured: imap as a@example.org"),
            ]
        );
    }

    #[tokio::test]
    async fn reload_error_is_kept_until_a_reload_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        store
            .daemon_started(7, std::time::Duration::from_secs(5), "/etc/x.toml")
            .await
            .expect("start");
        store
            .record_reload(Err("/etc/x.toml:3: bad"))
            .await
            .expect("reload");
        let status = store
            .status_view()
            .daemon_status()
            .await
            .expect("status")
            .expect("row");
        assert_eq!(status.reload_error.as_deref(), Some("/etc/x.toml:3: bad"));
        assert!(status.heartbeat_age.is_some_and(|age| age < 60.0));
        store.record_reload(Ok(())).await.expect("reload");
        let status = store
            .status_view()
            .daemon_status()
            .await
            .expect("status")
            .expect("row");
        assert_eq!(status.reload_error, None);
        assert!(status.reloaded_at.is_some());
        store.daemon_stopped().await.expect("stop");
        let status = store
            .status_view()
            .daemon_status()
            .await
            .expect("status")
            .expect("row");
        assert!(status.heartbeat_at.is_none() && status.stopped_at.is_some());
        // A beat abandoned before the stop and run after it.
        store.heartbeat().await.expect("late beat");
        let status = store
            .status_view()
            .daemon_status()
            .await
            .expect("status")
            .expect("row");
        assert!(
            status.heartbeat_at.is_none(),
            "a late beat revived a stopped daemon"
        );
    }

    #[tokio::test]
    async fn reader_health_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::open_in(&dir).await;
        store
            .register_reader(ReaderIdentity {
                name: "r",
                protocol: "imap",
                oauth: Some("app"),
                account: "a@example.com",
                grant: "authorization_code",
                config_hash: "h1",
            })
            .await
            .expect("register");
        let retrying = ReaderState::Retrying;
        assert_eq!(
            store
                .record_failure("r", retrying, "boom")
                .await
                .expect("fail"),
            1
        );
        assert_eq!(
            store
                .record_failure("r", ReaderState::NeedsAuthorization, "boom again")
                .await
                .expect("fail"),
            2
        );
        let s = &store.status_view().reader_statuses().await.expect("status")[0];
        assert_eq!(s.last_error.as_deref(), Some("boom again"));
        assert_eq!(s.consecutive_failures, 2);
        assert_eq!(s.state, "needs_authorization");
        assert_eq!(s.refresh_idle_days, None);

        // A sign-in for another account releases nothing; for this one, it does.
        let none = store.release_authorized("app", "b@example.com").await;
        assert!(none.expect("release").is_empty());
        let released = store.release_authorized("app", "A@example.com").await;
        assert_eq!(released.expect("release"), ["r"]);
        assert_eq!(
            store.reader_state("r").await.expect("state").map(|s| s.0),
            Some(ReaderState::Ok)
        );

        // Registering again with the same settings keeps a stopped reader
        // stopped; changed settings release it.
        let identity = |hash| ReaderIdentity {
            name: "r",
            protocol: "imap",
            oauth: Some("app"),
            account: "a@example.com",
            grant: "authorization_code",
            config_hash: hash,
        };
        store
            .record_failure("r", ReaderState::Misconfigured, "bad secret")
            .await
            .expect("fail");
        let same = store
            .register_reader(identity("h1"))
            .await
            .expect("register");
        assert_eq!(same, ReaderState::Misconfigured);
        let changed = store
            .register_reader(identity("h2"))
            .await
            .expect("register");
        assert_eq!(changed, ReaderState::Ok);

        store
            .save_refresh_token("app", "a@example.com", &"rt".into())
            .await
            .expect("save");
        sqlx::query(
            "UPDATE oauth_tokens SET last_used_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-81 days')",
        )
        .execute(store.pool())
        .await
        .expect("age the token");
        store.record_success("r").await.expect("ok");
        let s = &store.status_view().reader_statuses().await.expect("status")[0];
        assert_eq!(s.last_error, None);
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.state, "ok");
        assert_eq!(s.refresh_idle_days, Some(81));
        assert!(s.last_success_at.is_some());
    }
}
