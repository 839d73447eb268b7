//! A whole test environment: the IdP stand-in, a Dovecot that trusts it, a
//! temporary directory with the database, and config files that point
//! mail2ticket at them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use mail2ticket::config::Config;
use sqlx::SqlitePool;

use crate::proxy::{Action, Proxy};
use crate::{Dovecot, DovecotOptions, IdP};

mod checks;
mod graph;
mod process;

pub use checks::*;
pub use graph::GraphEnv;
pub use process::*;

/// The mailbox most tests read, and its password at the IdP.
pub const USER: &str = "helpdesk@test.example";
pub const PASSWORD: &str = "correct horse battery staple";
/// The password of every user at a Dovecot started by
/// [`Env::start_with_plain_password`] (PLAIN/LOGIN, after TLS only).
pub const PLAIN_PASSWORD: &str = "plain-secret-4711";

pub struct Env {
    pub idp: IdP,
    pub dovecot: Dovecot,
    pub dir: tempfile::TempDir,
    /// TOML lines added to the `[[oauth]]` entry named "test".
    oauth_extra: Mutex<String>,
    /// Further `[[oauth]]` entries (whole tables).
    more_apps: Mutex<String>,
    /// TOML lines added to the `[daemon]` table.
    daemon_extra: Mutex<String>,
}

/// One `[[reader]]` entry; `Env::reader` fills in working defaults.
#[derive(Clone, Debug)]
pub struct ReaderSpec {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub username: String,
    /// The reader's `grant`; the password line is written only for "password".
    pub grant: &'static str,
    /// The `[[oauth]]` entry the reader uses.
    pub oauth: String,
    pub password_file: PathBuf,
    pub trust_test_ca: bool,
    /// Written only for IMAP readers.
    pub folder: String,
    /// "imap" (from [`Env::reader`]), "pop3" (from [`Env::pop3_reader`]) or
    /// "graph" (from [`GraphEnv::reader`]).
    pub protocol: &'static str,
    /// `tls`: "implicit", "starttls" or "none"; `None` leaves the default.
    /// With "none" no `ca_file` is written.
    pub tls: Option<&'static str>,
    /// `auth`: with `Some("plain")` the entry gets `auth = "plain"` and the
    /// password, and no `oauth` / `grant`; `None` leaves the default.
    pub auth: Option<&'static str>,
    /// `after`, e.g. "seen", "keep", "delete", "move:Done"; `None` leaves
    /// the protocol's default.
    pub after: Option<String>,
    /// Writes `idle = true`.
    pub idle: bool,
    pub poll_interval: &'static str,
    pub timeout: &'static str,
    /// `None` leaves the daemon's default.
    pub batch_size: Option<usize>,
    /// Raw TOML lines appended to the entry.
    pub extra: String,
}

impl ReaderSpec {
    /// The same reader without TLS (`tls = "none"`) on a loopback `port`,
    /// e.g. a [`Proxy`] in front of Dovecot's plain port.
    pub fn plaintext(self, port: u16) -> ReaderSpec {
        ReaderSpec {
            host: "127.0.0.1".into(),
            port,
            tls: Some("none"),
            ..self
        }
    }

    /// The same reader with `after` set.
    pub fn after(self, after: &str) -> ReaderSpec {
        ReaderSpec {
            after: Some(after.into()),
            ..self
        }
    }
}

impl Env {
    pub fn start() -> Env {
        Env::start_with(DovecotOptions::default())
    }

    /// Like [`Env::start`], with a Dovecot started with `opts`.
    pub fn start_with(opts: DovecotOptions) -> Env {
        let idp = IdP::start();
        idp.add_user(USER, PASSWORD);
        let dovecot = Dovecot::start_with(&idp.introspection_url(), opts);
        let dir = tempfile::tempdir().expect("tempdir");
        let env = Env {
            idp,
            dovecot,
            dir,
            oauth_extra: Mutex::new(String::new()),
            more_apps: Mutex::new(String::new()),
            daemon_extra: Mutex::new(String::new()),
        };
        env.set_password(USER, PASSWORD);
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db_file(&self) -> PathBuf {
        self.path("mail2ticket.db")
    }

    /// Takes the database's write lock from another connection, as another
    /// process would (`BEGIN EXCLUSIVE`); held until the connection's
    /// transaction ends or it is dropped.
    pub async fn lock_database(&self) -> sqlx::SqliteConnection {
        use sqlx::Connection as _;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.db_file())
            .busy_timeout(Duration::from_secs(30));
        let mut lock = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("open the database");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut lock)
            .await
            .expect("lock the database");
        lock
    }

    /// The file the default reader reads its password from.
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.path(&format!("password-{user}"))
    }

    /// What mail2ticket will read as `user`'s password (not the IdP's).
    pub fn set_password(&self, user: &str, password: &str) {
        std::fs::write(self.password_file(user), format!("{password}\n")).expect("write password");
    }

    pub fn reader(&self, name: &str) -> ReaderSpec {
        ReaderSpec {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: self.dovecot.imaps_port(),
            username: USER.into(),
            grant: "password",
            oauth: "test".into(),
            password_file: self.password_file(USER),
            trust_test_ca: true,
            folder: "INBOX".into(),
            protocol: "imap",
            tls: None,
            auth: None,
            after: None,
            idle: false,
            poll_interval: "1s",
            timeout: "10s",
            batch_size: None,
            extra: String::new(),
        }
    }

    /// A POP3 reader of the default mailbox over implicit TLS (POP3S).
    pub fn pop3_reader(&self, name: &str) -> ReaderSpec {
        ReaderSpec {
            protocol: "pop3",
            port: self.dovecot.pop3s_port(),
            ..self.reader(name)
        }
    }

    /// An Env whose Dovecot also accepts [`PLAIN_PASSWORD`] for any user by
    /// PLAIN/LOGIN (IMAP) or USER/PASS, AUTH PLAIN (POP3), over TLS only.
    pub fn start_with_plain_password() -> Env {
        Env::start_with(DovecotOptions {
            plain_password: Some(PLAIN_PASSWORD.into()),
            ..DovecotOptions::default()
        })
    }

    /// `reader` switched to `auth = "plain"` with [`PLAIN_PASSWORD`] (for an
    /// Env from [`Env::start_with_plain_password`]).
    pub fn with_plain_auth(&self, reader: ReaderSpec) -> ReaderSpec {
        let password_file = self.path("plain-password");
        std::fs::write(&password_file, format!("{PLAIN_PASSWORD}\n")).expect("write password");
        ReaderSpec {
            auth: Some("plain"),
            password_file,
            ..reader
        }
    }

    /// Adds TOML lines (e.g. `client_secret = ...`) to the "test" app.
    pub fn set_oauth_extra(&self, toml: &str) {
        *self.oauth_extra.lock().expect("lock") = toml.to_string();
    }

    /// Sets TOML lines written into the `[daemon]` table after
    /// `poll_interval` (e.g. `listen = "127.0.0.1:8080"`), replacing what
    /// an earlier call set.
    pub fn set_daemon_extra(&self, toml: &str) {
        let mut lines = toml.to_string();
        if !lines.is_empty() && !lines.ends_with('\n') {
            lines.push('\n');
        }
        *self.daemon_extra.lock().expect("lock") = lines;
    }

    /// Adds a whole `[[oauth]]` entry named `name` for the same IdP app,
    /// with `extra` TOML lines.
    pub fn add_app(&self, name: &str, extra: &str) {
        let entry = self.app_toml(name, extra);
        self.more_apps.lock().expect("lock").push_str(&entry);
    }

    fn app_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "\n[[oauth]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nclient_id = \"{client}\"\n\
             authority = \"{authority}\"\n{extra}\n",
            tenant = self.idp.tenant(),
            client = self.idp.client_id(),
            authority = self.idp.url(),
        )
    }

    pub fn config_toml(&self, readers: &[ReaderSpec]) -> String {
        let mut text = format!(
            "[store]\ndatabase = \"sqlite://{db}\"\n\n[daemon]\npoll_interval = \"1s\"\n{daemon}",
            db = self.db_file().display(),
            daemon = self.daemon_extra.lock().expect("lock"),
        );
        text.push_str(&self.app_toml("test", &self.oauth_extra.lock().expect("lock")));
        text.push_str(&self.more_apps.lock().expect("lock"));
        for r in readers {
            write!(
                text,
                "\n[[reader]]\nname = \"{}\"\nprotocol = \"{}\"\nhost = \"{}\"\nport = {}\n\
                 username = \"{}\"\npoll_interval = \"{}\"\ntimeout = \"{}\"\n",
                r.name, r.protocol, r.host, r.port, r.username, r.poll_interval, r.timeout,
            )
            .expect("format");
            let plain = r.auth == Some("plain");
            if let Some(auth) = r.auth {
                writeln!(text, "auth = \"{auth}\"").expect("format");
            }
            if !plain {
                writeln!(text, "oauth = \"{}\"\ngrant = \"{}\"", r.oauth, r.grant).expect("format");
            }
            if r.protocol == "imap" {
                writeln!(text, "folder = \"{}\"", r.folder).expect("format");
            }
            if let Some(tls) = r.tls {
                writeln!(text, "tls = \"{tls}\"").expect("format");
            }
            if let Some(after) = &r.after {
                writeln!(text, "after = \"{after}\"").expect("format");
            }
            if r.idle {
                writeln!(text, "idle = true").expect("format");
            }
            if plain || r.grant == "password" {
                writeln!(
                    text,
                    "password = {{ file = \"{}\" }}",
                    r.password_file.display()
                )
                .expect("format");
            }
            if let Some(batch_size) = r.batch_size {
                writeln!(text, "batch_size = {batch_size}").expect("format");
            }
            if r.trust_test_ca && r.tls != Some("none") {
                writeln!(text, "ca_file = \"{}\"", self.dovecot.ca_file().display())
                    .expect("format");
            }
            text.push_str(&r.extra);
        }
        text
    }

    /// Writes the config file and returns its path.
    pub fn write_config(&self, readers: &[ReaderSpec]) -> PathBuf {
        let path = self.path("config.toml");
        std::fs::write(&path, self.config_toml(readers)).expect("write config");
        path
    }

    /// Writes and loads the config.
    pub fn config(&self, readers: &[ReaderSpec]) -> Config {
        let path = self.write_config(readers);
        Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}"))
    }

    /// Creates and migrates the database, so that tests can query it while
    /// a daemon they started is still starting up.
    pub async fn init_db(&self, config: &Config) {
        mail2ticket::store::Store::open(&config.store)
            .await
            .expect("open the test database");
    }

    /// `run --once` in this process: every reader polled until drained.
    pub async fn poll_once(
        &self,
        config: &Config,
    ) -> Vec<(
        String,
        Result<mail2ticket::source::PollReport, mail2ticket::reader::PollError>,
    )> {
        mail2ticket::daemon::run_once(config, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("the daemon did not start: {e}"))
    }

    /// Polls once, expecting `reader` to fail; returns its `last_error`.
    pub async fn failing_poll(&self, config: &Config, reader: &str) -> String {
        let results = self.poll_once(config).await;
        let (_, result) = results
            .iter()
            .find(|(name, _)| name == reader)
            .expect("reader polled");
        assert!(result.is_err(), "{reader} should have failed: {result:?}");
        self.last_error(reader)
            .await
            .unwrap_or_else(|| panic!("{reader} failed but recorded no last_error"))
    }

    /// Runs the daemon in this process until the returned token is
    /// cancelled; the database exists when this returns.
    pub async fn spawn_daemon(
        &self,
        config: &Config,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), mail2ticket::daemon::StartError>>,
    ) {
        self.init_db(config).await;
        let cancel = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn({
            let (config, cancel) = (config.clone(), cancel.clone());
            async move { mail2ticket::daemon::run(config, cancel).await }
        });
        (cancel, handle)
    }

    /// Cancels a daemon from [`Env::spawn_daemon`] and waits (30 s at most)
    /// for it to stop cleanly.
    pub async fn stop_daemon(
        &self,
        cancel: tokio_util::sync::CancellationToken,
        daemon: tokio::task::JoinHandle<Result<(), mail2ticket::daemon::StartError>>,
    ) {
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), daemon)
            .await
            .expect("the daemon stops within 30 s of cancellation")
            .expect("daemon task")
            .expect("daemon ran");
    }

    /// Waits (up to `limit`) until the database holds exactly `n` tickets.
    pub async fn wait_for_tickets(&self, n: i64, limit: Duration) -> bool {
        wait_until(limit, || async {
            self.count("SELECT COUNT(*) FROM tickets").await == n
        })
        .await
    }

    pub async fn db(&self) -> SqlitePool {
        SqlitePool::connect(&format!("sqlite://{}", self.db_file().display()))
            .await
            .expect("open test database")
    }

    /// Runs a query returning one integer.
    pub async fn count(&self, sql: &str) -> i64 {
        let pool = self.db().await;
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.expect(sql);
        pool.close().await;
        n
    }

    /// `readers.state` of one reader; "unregistered" before its row exists.
    pub async fn state(&self, reader: &str) -> String {
        let pool = self.db().await;
        let row: Option<(String,)> = sqlx::query_as("SELECT state FROM readers WHERE name = ?")
            .bind(reader)
            .fetch_optional(&pool)
            .await
            .expect("query readers");
        pool.close().await;
        row.map_or_else(|| "unregistered".into(), |r| r.0)
    }

    /// `readers.last_error` of one reader.
    pub async fn last_error(&self, reader: &str) -> Option<String> {
        let pool = self.db().await;
        let row: (Option<String>,) =
            sqlx::query_as("SELECT last_error FROM readers WHERE name = ?")
                .bind(reader)
                .fetch_one(&pool)
                .await
                .expect("reader row");
        pool.close().await;
        row.0
    }
}

impl Env {
    /// The database file and its WAL, as someone who copied them would have.
    pub fn database_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal"] {
            let mut name = self.db_file().into_os_string();
            name.push(suffix);
            bytes.extend(std::fs::read(&name).unwrap_or_default());
        }
        bytes
    }
}

/// Fails if any secret appears in `output` (showing the line with the
/// secret masked) or anywhere in `database`.
pub fn assert_no_secret_in(output: &str, database: &[u8], secrets: &[String]) {
    for secret in secrets {
        if let Some(line) = output.lines().find(|l| l.contains(secret.as_str())) {
            panic!(
                "a secret appears in the output: {}",
                line.replace(secret.as_str(), "<SECRET>")
            );
        }
        assert!(
            !database
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "a secret appears in the database in clear"
        );
    }
}

impl Env {
    /// Polls once (`run --once` in this process), expecting `reader` to
    /// succeed; returns its report.
    pub async fn poll_ok(&self, config: &Config, reader: &str) -> mail2ticket::source::PollReport {
        let results = self.poll_once(config).await;
        let (_, result) = results
            .iter()
            .find(|(name, _)| name == reader)
            .unwrap_or_else(|| panic!("{reader} was not polled"));
        match result {
            Ok(report) => *report,
            Err(e) => panic!("{reader} failed: {e}\n{}", self.dovecot.log_tail()),
        }
    }

    /// The crash window between a ticket's commit and its after-step:
    /// `run --once` for `reader` through a proxy in front of Dovecot's
    /// plain `plain_port` is SIGKILLed at the first of `commands` (the
    /// after-step, never forwarded). Checks that what was committed by then
    /// is tickets whose `ledger` rows are all pending, with the mailbox
    /// untouched (`mails` in INBOX); then runs `run --once` again straight
    /// to Dovecot, which must leave `mails` tickets exactly once and nothing
    /// pending. The caller checks where the mail ended up.
    pub async fn kill_at_after_step_then_rerun(
        &self,
        reader: ReaderSpec,
        plain_port: u16,
        commands: &[&str],
        ledger: &str,
        mails: usize,
    ) {
        let proxy = Proxy::start(plain_port);
        let config = self.write_config(&[reader.clone().plaintext(proxy.port())]);
        tokio::task::block_in_place(|| run_once_killed_at(&config, &proxy, commands));
        let committed = self.count("SELECT COUNT(*) FROM tickets").await;
        assert!(committed > 0, "the kill came after a commit");
        self.assert_exactly_once(committed as usize).await;
        let rows = self.count(&format!("SELECT COUNT(*) FROM {ledger}")).await;
        assert_eq!(rows, committed, "one {ledger} row per committed mail");
        assert_eq!(self.pending(ledger).await, committed, "all still pending");
        assert_eq!(
            self.dovecot.message_count(USER, "INBOX"),
            mails,
            "the after-step never reached the server"
        );

        let config = self.write_config(&[reader.plaintext(plain_port)]);
        tokio::task::block_in_place(|| run_once_binary(&config));
        self.assert_exactly_once(mails).await;
        assert_eq!(self.pending(ledger).await, 0, "every after-step done");
    }

    /// Plain auth after STARTTLS / STLS: `reader` (of an Env from
    /// [`Env::start_with_plain_password`]) with `tls = "starttls"` and
    /// `auth = "plain"`, through a proxy in front of Dovecot's plain
    /// `plain_port`, ingests two mails without asking the identity provider
    /// anything. Dovecot would take PLAIN in clear text from loopback, so
    /// the proof of the upgrade is the proxy (the client sent `starttls`,
    /// the password never crossed in clear) and Dovecot's login line
    /// (`method=PLAIN`, `TLS`) for `service` ("imap-login"/"pop3-login").
    pub async fn assert_plain_auth_over_starttls(
        &self,
        reader: ReaderSpec,
        plain_port: u16,
        starttls: &str,
        service: &str,
    ) {
        self.dovecot.deliver_many(USER, (0..2).map(super::mail));
        let proxy = Proxy::start(plain_port);
        let name = reader.name.clone();
        let reader = self.with_plain_auth(ReaderSpec {
            tls: Some("starttls"),
            port: proxy.port(),
            ..reader
        });
        let config = self.config(&[reader]);
        let report = self.poll_ok(&config, &name).await;
        assert_eq!((report.fetched, report.created), (2, 2));
        self.assert_exactly_once(2).await;
        assert_eq!(self.idp.total_requests(), 0, "no token was asked for");
        assert_eq!(self.last_error(&name).await, None);

        let lines = proxy.client_lines();
        assert!(
            lines.iter().any(|l| crate::proxy::is_command(l, starttls)),
            "the client sent no {starttls}"
        );
        assert!(
            !lines.iter().any(|l| l.contains(PLAIN_PASSWORD)),
            "the password crossed in clear text"
        );
        let login = tokio::task::block_in_place(|| self.dovecot.login_line(service, USER));
        assert!(login.contains("method=PLAIN"), "{login}");
        assert!(login.contains(", TLS,"), "{login}");
    }
}

// -- Running as a service: signals, HTTP, notify, status (issue 5) --------

/// A loopback TCP port that was free a moment ago (bound, then released),
/// e.g. for `[daemon] listen`.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

/// The password of a mailbox added with [`Env::add_mailbox`].
pub fn mailbox_password(user: &str) -> String {
    format!("secret of {user}")
}
