//! The store: the SQLite database behind sqlx, and everything written to it.
//!
//! Owns the schema (embedded migrations, applied at open), the exactly-once
//! rule (a mail's source position is written in the same transaction as its
//! ticket), reader health (`readers.last_error` and friends) and the sealed
//! token rows. Nothing else in the crate writes SQL.

mod key;
mod tickets;
mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use key::{KeyError, StoreKey};
pub use tickets::{BatchOutcome, FolderPosition};

use crate::config::StoreConfig;

/// SQL for "now" as an ISO 8601 UTC timestamp, so that `sqlite3` users can
/// read and compare the times directly.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%SZ','now')";

/// Write transactions take the write lock up front. A deferred transaction
/// that reads first and writes later fails at once with SQLITE_BUSY when
/// another reader committed in between (WAL snapshots cannot be upgraded),
/// bypassing the busy timeout; IMMEDIATE makes it wait its turn instead.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

const KEY_CHECK_PLAINTEXT: &[u8] = b"mail2ticket store key check";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    key: std::sync::Arc<StoreKey>,
}

/// Where a reader stands; kept in `readers.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderState {
    Ok,
    /// A transient failure: backing off and trying again.
    Retrying,
    /// Someone must sign in again (`mail2ticket authorize`) or fix the
    /// account in Entra; no request is made until then.
    NeedsAuthorization,
    /// The config or the app registration is wrong; no request is made
    /// until it changes.
    Misconfigured,
}

impl ReaderState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReaderState::Ok => "ok",
            ReaderState::Retrying => "retrying",
            ReaderState::NeedsAuthorization => "needs_authorization",
            ReaderState::Misconfigured => "misconfigured",
        }
    }

    pub fn parse(text: &str) -> Option<ReaderState> {
        [
            ReaderState::Ok,
            ReaderState::Retrying,
            ReaderState::NeedsAuthorization,
            ReaderState::Misconfigured,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// States that wait for a person rather than for time.
    pub fn is_parked(self) -> bool {
        matches!(
            self,
            ReaderState::NeedsAuthorization | ReaderState::Misconfigured
        )
    }
}

/// Which account a reader signs in as, recorded so that `authorize` and
/// `status` can find the readers behind a token.
#[derive(Debug, Clone, Copy)]
pub struct ReaderIdentity<'a> {
    pub name: &'a str,
    pub protocol: &'a str,
    /// The `[[oauth]]` app; `None` for a password login.
    pub oauth: Option<&'a str>,
    pub account: &'a str,
    pub grant: &'a str,
    /// [`Store::digest`] of the reader's settings and secrets.
    pub config_hash: &'a str,
}

/// One row of `readers`, as `status` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReaderStatus {
    pub name: String,
    pub protocol: String,
    pub state: String,
    pub grant_type: Option<String>,
    pub last_poll_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub consecutive_failures: i64,
    /// Whole days since the reader's refresh token was last used, when it
    /// has one.
    pub refresh_idle_days: Option<i64>,
}

impl Store {
    /// Opens (creating if missing) the database, applies migrations and
    /// checks that the store key matches it.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            url: config.database.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&config.database)
            .map_err(open_err)?
            .create_if_missing(true)
            // WAL lets `status` read while a reader commits. NORMAL survives
            // any process crash; a power cut may roll back the last commits,
            // which is safe here: new mail is found by UID, not by \Seen, so
            // a rolled-back batch is simply fetched and committed again.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // Checkpoint every 32 MiB of WAL rather than 4 MiB: far fewer
            // checkpoint fsyncs while a big mailbox is ingested.
            .pragma("wal_autocheckpoint", "8000");
        let database_file = options.get_filename().to_path_buf();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;

        let key = StoreKey::locate(config.key_file.as_deref(), &database_file)?;
        let store = Store {
            pool,
            key: std::sync::Arc::new(key),
        };
        store.check_key().await?;
        Ok(store)
    }

    /// The first key to open a database is recorded (sealed); every later
    /// open must be able to unseal it, so a wrong key fails at start with a
    /// clear message instead of as undecryptable tokens later.
    async fn check_key(&self) -> Result<(), StoreError> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT sealed FROM store_key_check WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        match row {
            Some((sealed,)) => {
                self.key.open(b"store_key_check", &sealed)?;
            }
            None => {
                let sealed = self.key.seal(b"store_key_check", KEY_CHECK_PLAINTEXT);
                sqlx::query("INSERT OR IGNORE INTO store_key_check (id, sealed) VALUES (1, ?)")
                    .bind(sealed)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Makes sure a `readers` row exists for a configured reader and says
    /// which account it uses. A stopped reader whose settings or secrets
    /// changed is released: the change may be the fix. Returns the state.
    pub async fn register_reader(
        &self,
        reader: ReaderIdentity<'_>,
    ) -> Result<ReaderState, StoreError> {
        let (state,): (String,) = sqlx::query_as(
            "INSERT INTO readers (name, protocol, oauth, account, grant_type, config_hash)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET protocol = excluded.protocol,
                 oauth = excluded.oauth, account = excluded.account,
                 grant_type = excluded.grant_type, config_hash = excluded.config_hash,
                 state = CASE
                     WHEN readers.config_hash IS NOT excluded.config_hash
                          AND readers.state IN ('needs_authorization', 'misconfigured')
                     THEN 'ok' ELSE readers.state END
             RETURNING state",
        )
        .bind(reader.name)
        .bind(reader.protocol)
        .bind(reader.oauth)
        .bind(reader.account)
        .bind(reader.grant)
        .bind(reader.config_hash)
        .fetch_one(&self.pool)
        .await?;
        Ok(ReaderState::parse(&state).unwrap_or(ReaderState::Ok))
    }

    /// A keyed digest of `data` under the store key (see [`StoreKey::digest`]).
    pub fn digest(&self, data: &[u8]) -> String {
        self.key.digest(data)
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
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE readers SET state = 'ok', last_error = NULL, consecutive_failures = 0
             WHERE oauth = ? AND account = ? COLLATE NOCASE
                   AND state IN ('needs_authorization', 'misconfigured')
             RETURNING name",
        )
        .bind(oauth)
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
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

    /// A success clears `last_error`; `last_error_at` keeps the time of the
    /// most recent failure for whoever investigates later.
    pub async fn record_success(&self, reader: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE readers SET last_success_at = {NOW}, last_error = NULL,
             consecutive_failures = 0, state = 'ok' WHERE name = ?"
        ))
        .bind(reader)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failure and the state it leaves the reader in; returns the
    /// number of failures in a row.
    pub async fn record_failure(
        &self,
        reader: &str,
        state: ReaderState,
        error: &str,
    ) -> Result<i64, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(&format!(
            "UPDATE readers SET last_error = ?, last_error_at = {NOW}, state = ?,
             consecutive_failures = consecutive_failures + 1 WHERE name = ?
             RETURNING consecutive_failures"
        ))
        .bind(error)
        .bind(state.as_str())
        .bind(reader)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or(1, |r| r.0))
    }

    pub async fn reader_statuses(&self) -> Result<Vec<ReaderStatus>, StoreError> {
        // A refresh token is only ever used by readers with a delegated grant.
        Ok(sqlx::query_as(
            "SELECT r.name, r.protocol, r.state, r.grant_type, r.last_poll_at, r.last_success_at,
                    r.last_error, r.last_error_at, r.consecutive_failures,
                    CAST(julianday('now') - julianday(t.last_used_at) AS INTEGER)
                        AS refresh_idle_days
             FROM readers r
             LEFT JOIN oauth_tokens t
               ON t.oauth = r.oauth AND t.account = r.account COLLATE NOCASE
                  AND r.grant_type <> 'client_credentials'
             ORDER BY r.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
