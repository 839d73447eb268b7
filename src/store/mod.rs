//! The store: the SQLite database behind sqlx, and everything written to it.
//!
//! This file owns opening it (the schema's embedded migrations, applied at
//! open; the store key check; the daemon's lock), the connections (one a
//! failed write left broken is never reused), whether the database
//! currently takes writes ([`Store::write_fault`]), and [`StatusView`], the
//! read-only access of `status` and `health`. Nothing else in the crate
//! writes SQL. The rest, file by file:
//!
//! - `ledger`: where each mail came from (IMAP folder positions and their
//!   watermark, the POP3 UIDL ledger, pending after-steps), and
//!   [`Store::commit_batch`], the exactly-once rule: a mail's source
//!   position is written in the same transaction as its ticket.
//! - `tickets`: which ticket a mail opens or joins inside that transaction
//!   (dedup, threading, rate limit), its rows, contents stored once, its
//!   acknowledgement queued.
//! - `readers`: the reader records (registration, state, `last_error`,
//!   history) and the daemon's heartbeat row, with what recent mail became
//!   per reader ([`MailCounts`]), as `status` and `health` read them.
//! - `graph`: the Microsoft Graph ledger (messages by immutable id, the
//!   delta link each folder resumes from, what first contact left).
//! - `owed`: IMAP UIDs a folder's ledger still owes (asked for, not delivered).
//! - `first_contact`: what a reader found on first contact, and what
//!   `backfill` took of it.
//! - `quarantine`: mail set aside whole instead of failing its batch.
//! - `outbox`: the acknowledgements' attempts and retry schedule.
//! - `tokens`: sealed refresh tokens; `key`: the store key sealing them.

mod first_contact;
mod graph;
mod key;
mod ledger;
mod outbox;
mod owed;
mod quarantine;
mod readers;
mod tickets;
mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use first_contact::{FirstContact, FirstContactRow, ImapFloor};
pub use key::{KeyError, StoreKey};
pub use ledger::{Batch, FolderPosition};
pub use outbox::{AttemptRecorded, DueAck, MAX_ATTEMPTS, OutboxStatus, retry_delay};
pub(crate) use owed::uid_set;
pub use owed::{MAX_REFUSALS, Owed};
pub use quarantine::{QUARANTINED, QuarantineEntry, QuarantineReason, Retried};
pub use readers::{DaemonStatus, EVENTS_KEPT, HourCount, MailCounts, ReaderEvent, ReaderStatus};
pub use tokens::{Replaced, StoredToken, TokenVersion};

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
    #[error(
        "database {} does not exist; has the daemon run with this configuration? \
         Only `mail2ticket run` creates it (a relative [store] database is relative to the \
         configuration file's directory)", .file.display()
    )]
    Missing { file: std::path::PathBuf },
    #[error(
        "database {} does not exist, but {} does: a relative [store] database is now relative \
         to the configuration file's directory, no longer to the working directory. Move the \
         database (with its .key file) there, or set [store] database = \"sqlite://{}\"; \
         a new, empty database would take the whole mailbox again",
        .file.display(), .found.display(), .found.display()
    )]
    Moved {
        file: std::path::PathBuf,
        found: std::path::PathBuf,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{}", sql_words(.0))]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "another `mail2ticket run` uses database {}: {holder} (lock file {}); \
         stop it first, or give this one its own [store] database", .database.display(), .lock.display()
    )]
    InUse {
        database: std::path::PathBuf,
        lock: std::path::PathBuf,
        holder: String,
    },
    #[error("cannot lock database {}: {source}", .lock.display())]
    Lock {
        lock: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A batch failed, and so did setting its failing mail aside: the
    /// database itself is at fault, not the mail.
    #[error("database error: {0} (and the mail could not be set aside in the quarantine either)")]
    Isolation(String),
}

/// SQLite's primary result codes of the database itself.
const DATABASE_FAULTS: [i64; 11] = [
    5,  // BUSY
    6,  // LOCKED
    7,  // NOMEM
    8,  // READONLY
    9,  // INTERRUPT
    10, // IOERR
    11, // CORRUPT
    13, // FULL
    14, // CANTOPEN
    15, // PROTOCOL
    26, // NOTADB
];

/// SQLite's primary result code of `e`, if the database answered.
fn primary_code(e: &sqlx::Error) -> Option<i64> {
    match e {
        sqlx::Error::Database(e) => {
            Some(e.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(1) & 0xff)
        }
        _ => None,
    }
}

/// A database error in an admin's words: what is wrong with the database
/// and where to look, then SQLite's own text. It ends up in `last_error`
/// and `/healthz`, read by people who did not write the SQL.
fn sql_words(e: &sqlx::Error) -> String {
    let words = match primary_code(e) {
        Some(5 | 6) => "the database is locked by another process",
        Some(8) => {
            "the database cannot be written: it is read-only \
             (check the permissions and attributes of the file, its -wal and -shm files and their directory)"
        }
        Some(10) => {
            "the database cannot be written: input/output error \
             (a failing disk, or a file made immutable?)"
        }
        Some(13) => "the database cannot be written: the disk is full",
        Some(14) => "the database file cannot be opened",
        Some(11 | 26) => "the database file is damaged or not a database",
        _ => return format!("database error: {e}"),
    };
    format!("{words} ({e})")
}

impl StoreError {
    /// Whether the failure lies in the database itself (locked, full,
    /// read-only, unreachable, damaged) rather than in what was written:
    /// every write would fail the same way until someone or something
    /// fixes it.
    pub fn is_database_fault(&self) -> bool {
        match self {
            StoreError::Sql(_) | StoreError::Isolation(_) => !self.may_be_caused_by_content(),
            _ => false,
        }
    }

    /// Whether SQLite could not open a file (the database, its journal or
    /// a temporary file): one cause is a process out of descriptors.
    pub fn cannot_open(&self) -> bool {
        matches!(self, StoreError::Sql(e) if primary_code(e) == Some(14))
    }

    /// Whether the failure may lie in the content of the mail being stored
    /// (a constraint, a value too big or of the wrong kind) rather than in
    /// the database itself (busy, locked, full, read-only, unreachable,
    /// corrupt), which no mail can cause and every retry would hit again.
    pub fn may_be_caused_by_content(&self) -> bool {
        match self {
            StoreError::Sql(e @ sqlx::Error::Database(_)) => {
                !primary_code(e).is_some_and(|code| DATABASE_FAULTS.contains(&code))
            }
            StoreError::Sql(sqlx::Error::Encode(_)) => true,
            _ => false,
        }
    }
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    key: std::sync::Arc<StoreKey>,
    faults: std::sync::Arc<WriteFaults>,
}

/// Who failed to write because of the database itself, and why; see
/// [`Store::write_fault`]. Small writes (a heartbeat) can still succeed on
/// a full disk while every mail commit fails, so the heartbeat alone does
/// not tell that the store works.
#[derive(Debug, Default)]
struct WriteFaults {
    by_writer: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl WriteFaults {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        // A plain map, consistent after any panic.
        self.by_writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn any(&self) -> bool {
        !self.lock().is_empty()
    }
}

/// The lock of [`Store::claim_for_daemon`]; the database is claimed while
/// it lives.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
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

/// A fresh store in a test's temporary directory.
#[cfg(test)]
pub(crate) async fn open_in(dir: &tempfile::TempDir) -> Store {
    let config = StoreConfig {
        database: format!("sqlite://{}", dir.path().join("t.db").display()),
        key_file: None,
    };
    Store::open(&config).await.expect("open store")
}

/// Read access to health and history, for `status` and `health`: needs
/// no store key and creates nothing, so an admin can run them from any
/// directory and as another user without leaving a stray database or key
/// file behind.
#[derive(Clone, Debug)]
pub struct StatusView {
    pool: SqlitePool,
}

/// The migration that added dispositions and the outbox.
const TICKET_SEMANTICS: i64 = 5;

impl StatusView {
    /// Whether `version` of the migrations is applied: `status` may be run
    /// by a newer binary than the daemon that migrated the database last.
    pub(crate) async fn has_migration(&self, version: i64) -> Result<bool, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE version = ? AND success")
                .bind(version)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }

    /// Opens the existing database; an error if there is none.
    pub async fn open(config: &StoreConfig) -> Result<StatusView, StoreError> {
        // Read-only, and without the daemon's pragmas: run as root while
        // the daemon is stopped, a writing connection would leave a -wal
        // file owned by root that the daemon's user cannot open.
        let options = SqliteConnectOptions::from_str(&config.database)
            .map_err(|source| StoreError::Open {
                url: config.database.clone(),
                source,
            })?
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        let file = options.get_filename().to_path_buf();
        if !file.exists() {
            return Err(StoreError::Missing { file });
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: config.database.clone(),
                source,
            })?;
        Ok(StatusView { pool })
    }
}

impl Store {
    /// The same queries as [`StatusView`], on the daemon's own pool.
    pub fn status_view(&self) -> StatusView {
        StatusView {
            pool: self.pool.clone(),
        }
    }

    fn options(config: &StoreConfig) -> Result<SqliteConnectOptions, StoreError> {
        let options = SqliteConnectOptions::from_str(&config.database)
            .map_err(|source| StoreError::Open {
                url: config.database.clone(),
                source,
            })?
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
        Ok(options)
    }

    /// [`Store::open`] for commands that work on what the daemon stored:
    /// a missing database is an error naming the file, not a new one.
    pub async fn open_existing(config: &StoreConfig) -> Result<Store, StoreError> {
        let file = Store::options(config)?.get_filename().to_path_buf();
        if !file.exists() {
            return Err(StoreError::Missing { file });
        }
        Store::open(config).await
    }

    /// [`Store::open`] for `run`, the one command that creates the
    /// database; unless none exists yet and `working_directory_file` (where
    /// a relative database was found before it became relative to the
    /// configuration file) holds one: a new database would take every mail
    /// in the mailbox again.
    pub async fn open_or_create(
        config: &StoreConfig,
        working_directory_file: Option<&std::path::Path>,
    ) -> Result<Store, StoreError> {
        Store::refuse_moved(config, working_directory_file)?;
        Store::open(config).await
    }

    /// The check of [`Store::open_or_create`] alone, for `run` to make
    /// before it creates anything beside the database (its lock file).
    pub fn refuse_moved(
        config: &StoreConfig,
        working_directory_file: Option<&std::path::Path>,
    ) -> Result<(), StoreError> {
        let file = Store::options(config)?.get_filename().to_path_buf();
        match working_directory_file {
            Some(found) if !file.exists() && found != file && found.exists() => {
                Err(StoreError::Moved {
                    file,
                    found: found.to_path_buf(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Claims the database for one `run` process: an exclusive lock on
    /// `DATABASE.lock`, held for the life of the returned value and
    /// released by the kernel however the process ends. A second `run` on
    /// the same file is refused, naming the pid and host of the first:
    /// both would beat the same heartbeat row, and `health` could not tell
    /// when one died.
    pub fn claim_for_daemon(config: &StoreConfig) -> Result<DaemonLock, StoreError> {
        use std::io::{Read as _, Seek as _, Write as _};
        let database = Store::options(config)?.get_filename().to_path_buf();
        let mut name = database.clone().into_os_string();
        name.push(".lock");
        let lock = std::path::PathBuf::from(name);
        let fail = |source| StoreError::Lock {
            lock: lock.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::InUse {
                    database,
                    lock,
                    holder: if holder.is_empty() {
                        "a process that did not say which".to_string()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "an unknown host".to_string());
        file.set_len(0).map_err(fail)?;
        file.rewind().map_err(fail)?;
        writeln!(file, "pid {} on {host}", std::process::id()).map_err(fail)?;
        Ok(DaemonLock { _file: file })
    }

    /// Opens (creating if missing) the database, applies migrations and
    /// checks that the store key matches it.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            url: config.database.clone(),
            source,
        };
        let options = Store::options(config)?.create_if_missing(true);
        let database_file = options.get_filename().to_path_buf();
        let faults = std::sync::Arc::new(WriteFaults::default());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // SQLite ends a transaction by itself on some errors (full
            // disk, I/O error); sqlx's ROLLBACK then fails and the
            // connection still counts as inside one, failing every later
            // BEGIN on it. Such a connection is closed, not pooled. So is
            // every connection while the store cannot write: one opened
            // while the file refused writes is read-only for good (SQLite
            // falls back to that), and fresh ones work once the disk does.
            .after_release({
                let faults = faults.clone();
                move |conn, _| {
                    let faulty = faults.any();
                    Box::pin(async move {
                        // Queued behind the rollback of a dropped
                        // transaction, so the depth below is the one after.
                        sqlx::Connection::ping(conn).await?;
                        Ok(!faulty && !sqlx::Connection::is_in_transaction(conn))
                    })
                }
            })
            .connect_with(options)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;

        let (sealed,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM store_key_check")
            .fetch_one(&pool)
            .await?;
        let key = StoreKey::locate(config.key_file.as_deref(), &database_file, sealed == 0)?;
        let store = Store {
            pool,
            key: std::sync::Arc::new(key),
            faults,
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

    fn faults(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        self.faults.lock()
    }

    /// Notes how a write by `writer` (a reader, the heartbeat) went: a
    /// failure of the database itself marks the store as unable to write
    /// until that writer succeeds again; other failures change nothing.
    /// Returns the fault a success ended, if any.
    pub fn note_write(&self, writer: &str, result: Result<(), &StoreError>) -> Option<String> {
        match result {
            Ok(()) => self.faults().remove(writer),
            Err(e) if e.is_database_fault() => {
                self.faults().insert(writer.to_string(), e.to_string());
                None
            }
            Err(_) => None,
        }
    }

    /// Why the database cannot be written, while a writer's last write
    /// failed because of it; `None` while every writer's last write worked.
    pub fn write_fault(&self) -> Option<String> {
        self.faults()
            .iter()
            .next()
            .map(|(writer, why)| format!("{why} (last write by {writer})"))
    }

    /// A keyed digest of `data` under the store key (see [`StoreKey::digest`]).
    pub fn digest(&self, data: &[u8]) -> String {
        self.key.digest(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> ReaderIdentity<'_> {
        ReaderIdentity {
            name,
            protocol: "imap",
            oauth: None,
            account: "desk@example.com",
            grant: "password",
            config_hash: "h",
        }
    }

    /// SQLite ends a transaction by itself on some errors (a full disk,
    /// an I/O error, RAISE(ROLLBACK)); sqlx's ROLLBACK then fails and the
    /// connection still counts as inside one, so every later write on it
    /// failed with "begin_with at non-zero transaction depth".
    #[tokio::test]
    async fn a_transaction_sqlite_ended_itself_does_not_poison_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(&dir).await;
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON readers WHEN NEW.name = 'bad'
             BEGIN SELECT RAISE(ROLLBACK, 'the test refuses this row'); END",
        )
        .execute(store.pool())
        .await
        .unwrap();
        for _ in 0..3 {
            let e = store.register_reader(identity("bad")).await.unwrap_err();
            assert!(e.to_string().contains("refuses"), "{e}");
        }
        for i in 0..12 {
            let name = format!("good{i}");
            store
                .register_reader(identity(&name))
                .await
                .unwrap_or_else(|e| panic!("write {i} after the failure: {e}"));
        }
    }

    #[tokio::test]
    async fn reopening_with_another_key_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open_in(&dir).await);
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, "11".repeat(32)).expect("write key");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&other_key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
        }
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

#[cfg(test)]
mod upgrade {
    use sqlx::Connection;
    use sqlx::migrate::Migrate;

    use crate::config::StoreConfig;
    use crate::store::Store;

    /// A database written before ticket semantics keeps every row, and its
    /// attachments' contents, through migration 0005.
    #[tokio::test]
    async fn migration_0005_keeps_existing_mail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&mut conn)
            .await
            .expect("pragma");
        conn.ensure_migrations_table().await.expect("table");
        let migrator = sqlx::migrate!("./migrations");
        for m in migrator.iter().filter(|m| m.version <= 4) {
            conn.apply(m).await.expect("old migration");
        }
        sqlx::raw_sql(
            "INSERT INTO tickets VALUES (1, 'r', 'Old', 'ann@x', 'Ann', 'closed', 't', 't');
             INSERT INTO emails (id, ticket_id, reader, dedup_key, message_id, subject, received_at)
                 VALUES (1, 1, 'r', 'old@x', 'old@x', 'Old', 't');
             INSERT INTO attachments VALUES (1, 1, 'a.txt', 'text/plain', 3, X'616263');
             INSERT INTO source_positions VALUES ('r', 'INBOX', 1, 1, 1, 'done', 't');
             INSERT INTO pop3_uidls VALUES ('p', 'u1', 1, 'done', 't');",
        )
        .execute(&mut conn)
        .await
        .expect("old rows");
        conn.close().await.expect("close");

        let config = StoreConfig {
            database: format!("sqlite://{}", file.display()),
            key_file: None,
        };
        // `status` from a newer binary before the daemon migrated: no
        // counts, no error.
        let view = crate::store::StatusView::open(&config)
            .await
            .expect("status view");
        assert!(view.mail_counts(24).await.expect("counts").is_empty());
        assert!(view.outbox_statuses().await.expect("outbox").is_empty());

        let store = Store::open(&config).await.expect("migrated");
        let (ticket, disposition): (Option<i64>, String) =
            sqlx::query_as("SELECT ticket_id, disposition FROM emails WHERE id = 1")
                .fetch_one(store.pool())
                .await
                .expect("email");
        assert_eq!((ticket, disposition.as_str()), (Some(1), "ticket"));
        let (content,): (Vec<u8>,) = sqlx::query_as(
            "SELECT b.content FROM attachments a JOIN blobs b ON b.key = a.blob WHERE a.id = 1",
        )
        .fetch_one(store.pool())
        .await
        .expect("attachment content");
        assert_eq!(content, b"abc");
        let (tags, positions, uidls): (String, i64, i64) = sqlx::query_as(
            "SELECT (SELECT tags FROM tickets WHERE id = 1),
                    (SELECT COUNT(*) FROM source_positions),
                    (SELECT COUNT(*) FROM pop3_uidls)",
        )
        .fetch_one(store.pool())
        .await
        .expect("counts");
        assert_eq!((tags.as_str(), positions, uidls), ("[]", 1, 1));
        // The children's foreign keys point at the rebuilt emails table.
        let orphan = sqlx::query(
            "INSERT INTO attachments (email_id, content_type, size) VALUES (99, 'x', 1)",
        )
        .execute(store.pool())
        .await;
        assert!(orphan.is_err(), "a foreign key still holds");
    }
}
