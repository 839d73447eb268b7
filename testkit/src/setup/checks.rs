//! [`Env`]'s checks on the database (exactly-once, tickets, polls, reader
//! events), further mailboxes, and the daemon spawned as a service.

use super::*;

impl Env {
    /// Every mail became exactly one ticket: `n` tickets, `n` emails, `n`
    /// distinct dedup keys (Message-ID or content hash).
    pub async fn assert_exactly_once(&self, n: usize) {
        let n = n as i64;
        let counts = (
            self.count("SELECT COUNT(*) FROM tickets").await,
            self.count("SELECT COUNT(*) FROM emails").await,
            self.count("SELECT COUNT(DISTINCT dedup_key) FROM emails")
                .await,
        );
        assert_eq!(counts, (n, n, n), "(tickets, emails, distinct mails)");
    }

    /// Four mails `mail(i)` were stored in order, except that mail `big`
    /// was one of `big_len` bytes over a 1 MiB `max_email_size`: its row has
    /// its full size and the note that only its first 1 MiB was fetched,
    /// the others their own size and no note.
    pub async fn assert_only_one_mail_was_cut(&self, big: usize, big_len: usize) {
        let rows: Vec<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT subject, size, limit_note FROM emails ORDER BY id")
                .fetch_all(&self.db().await)
                .await
                .expect("emails");
        assert_eq!(rows.len(), 4, "{rows:?}");
        for (i, (subject, size, note)) in rows.iter().enumerate() {
            assert_eq!(subject, &crate::mail::subject(i));
            if i == big {
                assert_eq!(*size, big_len as i64, "the full size, not the fetched");
                let note = note.as_deref().unwrap_or_default();
                assert!(
                    note.starts_with(&format!(
                        "the mail ({}) is larger than max_email_size (1.0 MiB): \
                         only its first 1.0 MiB were fetched",
                        mail2ticket::ingest::human_size(big_len as u64)
                    )),
                    "{note}"
                );
            } else {
                assert_eq!(*size, crate::mail::mail(i).len() as i64);
                assert_eq!(note, &None, "{subject}");
            }
        }
    }

    /// Ledger rows (IMAP `source_positions` or POP3 `pop3_uidls`) whose
    /// after-step has not been done yet.
    pub async fn pending(&self, table: &str) -> i64 {
        self.count(&format!(
            "SELECT COUNT(*) FROM {table} WHERE after_state = 'pending'"
        ))
        .await
    }

    /// Starts the mail2ticket binary (`run`, until killed), logging errors only.
    pub fn spawn_daemon_binary(&self, config: &Path) -> ChildGuard {
        ChildGuard(
            std::process::Command::new(binary())
                .args(["-c", config.to_str().expect("utf-8 path"), "run"])
                .env("RUST_LOG", "error")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start the daemon"),
        )
    }

    /// SIGKILLs the daemon binary again and again while it works through
    /// `mails` mails: half of the rounds kill it at a random moment after it
    /// committed something in that round (so the kills land mid-mailbox,
    /// between and inside batches), the other half at a random moment after
    /// start (connecting, signing in, fetching). Stops early once every mail
    /// is a ticket. Returns the ticket count after each kill.
    pub fn kill_daemon_repeatedly(&self, config: &Path, mails: usize, rounds: u64) -> Vec<i64> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let loaded = Config::load(config).expect("valid config");
        runtime.block_on(self.init_db(&loaded));
        let tickets = || runtime.block_on(self.count("SELECT COUNT(*) FROM tickets"));
        let mut after_each_kill = Vec::new();
        for round in 0..rounds {
            let before = tickets();
            if before >= mails as i64 {
                break;
            }
            let mut child = self.spawn_daemon_binary(config);
            if round % 2 == 0 {
                // Bounded; if nothing was committed the kill lands anyway.
                runtime.block_on(wait_until(Duration::from_secs(20), || async {
                    self.count("SELECT COUNT(*) FROM tickets").await > before
                }));
                std::thread::sleep(Duration::from_millis(rand::random_range(0..60)));
            } else {
                std::thread::sleep(Duration::from_millis(30 + rand::random_range(0..200)));
            }
            child.0.kill().expect("SIGKILL");
            child.0.wait().expect("reap");
            after_each_kill.push(tickets());
        }
        after_each_kill
    }
}

static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One row of `reader_events`.
#[derive(Clone, Debug)]
pub struct ReaderEvent {
    pub id: i64,
    pub at: String,
    pub level: String,
    pub message: String,
}

impl Env {
    /// Another mailbox account besides [`USER`]: known to the IdP with
    /// [`mailbox_password`], which its password file holds. Dovecot takes
    /// any user the IdP vouches for.
    pub fn add_mailbox(&self, user: &str) {
        let password = mailbox_password(user);
        self.idp.add_user(user, &password);
        self.set_password(user, &password);
    }

    /// [`Env::reader`] for the mailbox `user` (from [`Env::add_mailbox`]).
    pub fn reader_of(&self, name: &str, user: &str) -> ReaderSpec {
        ReaderSpec {
            username: user.into(),
            password_file: self.password_file(user),
            ..self.reader(name)
        }
    }

    /// Creates and migrates the database without loading the config file
    /// (whose `[daemon]` keys this crate version may not know yet), so
    /// that a test can query it while a daemon it started is starting up.
    pub async fn init_store(&self) {
        let store = mail2ticket::config::StoreConfig {
            database: format!("sqlite://{}", self.db_file().display()),
            key_file: None,
        };
        mail2ticket::store::Store::open(&store)
            .await
            .expect("open the test database");
    }

    /// Writes the config file the way editors and config management do: a
    /// new file renamed over the old one, so a watcher never reads half of
    /// it. Returns its path.
    pub fn write_config_atomically(&self, readers: &[ReaderSpec]) -> PathBuf {
        let path = self.path("config.toml");
        let tmp = self.path("config.toml.new");
        std::fs::write(&tmp, self.config_toml(readers)).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
        path
    }

    /// Tickets made by one reader.
    pub async fn tickets_of(&self, reader: &str) -> i64 {
        let pool = self.db().await;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tickets WHERE reader = ?")
            .bind(reader)
            .fetch_one(&pool)
            .await
            .expect("count tickets");
        pool.close().await;
        n
    }

    /// `readers.last_poll_at` of one reader (None before its first poll or
    /// before its row exists).
    pub async fn last_poll_at(&self, reader: &str) -> Option<String> {
        let pool = self.db().await;
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT last_poll_at FROM readers WHERE name = ?")
                .bind(reader)
                .fetch_optional(&pool)
                .await
                .expect("query readers");
        pool.close().await;
        row.and_then(|r| r.0)
    }

    /// Waits (up to `limit`) until `reader` has started `n` more polls,
    /// i.e. its `last_poll_at` took `n` new values. The column has whole
    /// seconds and polls are at least a second apart, so each poll shows.
    pub async fn wait_for_polls(&self, reader: &str, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = self.last_poll_at(reader).await;
        let mut seen = 0;
        loop {
            let now = self.last_poll_at(reader).await;
            if now != last {
                seen += 1;
                last = now;
            }
            if seen >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The reader's `reader_events` rows, oldest first (by id).
    pub async fn reader_events(&self, reader: &str) -> Vec<ReaderEvent> {
        let pool = self.db().await;
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, at, level, message FROM reader_events WHERE reader = ? ORDER BY id",
        )
        .bind(reader)
        .fetch_all(&pool)
        .await
        .expect("query reader_events");
        pool.close().await;
        rows.into_iter()
            .map(|(id, at, level, message)| ReaderEvent {
                id,
                at,
                level,
                message,
            })
            .collect()
    }

    /// Starts `mail2ticket -c CONFIG run` as a service would: stderr goes to
    /// a file in the test dir ([`DaemonProcess::stderr`]), `RUST_LOG=info`
    /// unless `envs` says otherwise, and no `NOTIFY_SOCKET` / `WATCHDOG_*`
    /// inherited from the test's own environment (`envs` may set them).
    pub fn spawn_service(&self, config: &Path, envs: &[(&str, &str)]) -> DaemonProcess {
        self.spawn_service_via(std::process::Command::new(binary()), config, envs)
    }

    /// [`Env::spawn_service`] under `prlimit --nofile=SOFT:HARD` (which
    /// sets the limits and execs the binary, so the pid is the daemon's).
    pub fn spawn_service_with_nofile(
        &self,
        config: &Path,
        envs: &[(&str, &str)],
        soft: u64,
        hard: u64,
    ) -> DaemonProcess {
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(binary());
        self.spawn_service_via(cmd, config, envs)
    }

    fn spawn_service_via(
        &self,
        mut cmd: std::process::Command,
        config: &Path,
        envs: &[(&str, &str)],
    ) -> DaemonProcess {
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_file = self.path(&format!("daemon-{n}.stderr"));
        let stderr = std::fs::File::create(&stderr_file).expect("create the stderr file");
        cmd.args(["-c", config.to_str().expect("utf-8 path"), "run"])
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        for (key, value) in envs {
            cmd.env(key, value);
        }
        DaemonProcess {
            child: ChildGuard(cmd.spawn().expect("start the daemon")),
            stderr_file,
        }
    }
}
