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
    /// "imap" (from [`Env::reader`]) or "pop3" (from [`Env::pop3_reader`]).
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

/// The mail2ticket binary built for these tests.
///
/// `CARGO_BIN_EXE_mail2ticket` exists only while cargo compiles an
/// integration test of the main package, not this library; cargo builds the
/// binary next to the `deps/` directory the running test binary sits in.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_mail2ticket") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the running test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test binary lives in <target>/<profile>/deps/");
        let binary = profile_dir.join(format!("mail2ticket{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.is_file(),
            "no mail2ticket binary at {} (run the tests through cargo test)",
            binary.display()
        );
        binary
    })
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns
/// whether it held. A generous limit is a correctness bound, not a timing test.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process that is killed when the test ends, pass or fail, so a
/// failed assertion never leaves a daemon running.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Waits up to `limit` for the process to exit; `None` if it still runs.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for a child") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, as systemd and Docker do to stop a service.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP, as `systemctl reload` does (`ExecReload=kill -HUP`).
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends the signal `name` ("TERM", "HUP", ...) with `kill -s`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

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

/// `mail2ticket -c CONFIG run --once`; panics with its output unless it
/// exits 0.
pub fn run_once_binary(config: &Path) -> std::process::Output {
    let out = std::process::Command::new(binary())
        .args(["-c", config.to_str().expect("utf-8 path"), "run", "--once"])
        .output()
        .expect("run --once");
    assert!(
        out.status.success(),
        "run --once failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the binary with `args` to its end; its exit status, stdout and
/// stderr, and its peak resident set size in bytes.
///
/// The peak is the kernel's high-water mark of the child's own address
/// space (`VmHWM`), read until it exits: it only grows, and every run ends
/// with work after its peak (commit, after-step, logout). Not wait4's
/// `ru_maxrss`: that also counts the test process the child was forked
/// from, before its exec.
pub fn run_measured(args: &[&str]) -> (std::process::ExitStatus, String, String, u64) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    // Drained on threads so a full pipe never blocks the child.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        peak_kib = peak_kib.max(hwm);
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().expect("stdout thread");
    let err = err.join().expect("stderr thread");
    (status, out, err, peak_kib * 1024)
}

/// Creates the database of the configuration at `config` when it is
/// missing, as the first `run` does (only `run` creates one; `check`,
/// `authorize` and the rest refuse a missing one): `run --once` with the
/// file's `[store]` table and no readers, from a file beside it.
pub fn ensure_database(config: &Path) {
    ensure_database_with(config, &[]);
}

/// [`ensure_database`] with environment variables for `run`, e.g. the
/// `CREDENTIALS_DIRECTORY` the store key comes from.
pub fn ensure_database_with(config: &Path, envs: &[(&str, &str)]) {
    let loaded = Config::load(config).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let url = &loaded.store.database;
    let file = url.strip_prefix("sqlite://").unwrap_or(url);
    let file = file.split_once('?').map_or(file, |(f, _)| f);
    if Path::new(file).exists() {
        return;
    }
    let text = std::fs::read_to_string(config).expect("read the config");
    let mut store = String::new();
    let mut in_store = false;
    for line in text.lines() {
        let header = line.trim_start().starts_with('[');
        if header {
            in_store = line.trim() == "[store]";
        }
        if in_store {
            store.push_str(line);
            store.push('\n');
        }
    }
    let init = config.with_file_name(".init-store.toml");
    std::fs::write(&init, store).expect("write the store-only config");
    let out = std::process::Command::new(binary())
        .args(["-c", init.to_str().expect("utf-8 path"), "run", "--once"])
        .envs(envs.iter().copied())
        .output()
        .expect("run --once");
    assert!(
        out.status.success(),
        "creating the database failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&init);
}

/// `mail2ticket -c CONFIG check [READER]`: (exit code, stdout, stderr),
/// after creating the database if missing (see [`ensure_database`]).
pub fn check_binary(config: &Path, reader: Option<&str>) -> (Option<i32>, String, String) {
    ensure_database(config);
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["-c", config.to_str().expect("utf-8 path"), "check"]);
    cmd.args(reader);
    let out = cmd.output().expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `run --once` with a reader going through `proxy`, which SIGKILLs
/// it on the first client line that is one of `commands` (never
/// forwarded). Panics unless the daemon died of exactly that kill.
pub fn run_once_killed_at(config: &Path, proxy: &Proxy, commands: &[&str]) {
    let mut child = ChildGuard(
        std::process::Command::new(binary())
            .args(["-c", config.to_str().expect("utf-8 path"), "run", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start run --once"),
    );
    for command in commands {
        proxy.on_client_line(command, Action::Kill(child.0.id()));
    }
    let status = child
        .wait_for_exit(Duration::from_secs(120))
        .unwrap_or_else(|| {
            panic!("run --once neither finished nor sent any of {commands:?} within 120 s")
        });
    proxy.disarm();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(9),
        "run --once should have been killed at one of {commands:?}, but exited with {status}"
    );
    assert_eq!(proxy.fired().len(), 1, "exactly one command was held back");
}

/// The capability words of a `check` line (`...; capabilities: IDLE MOVE`).
pub fn check_capabilities(line: &str) -> Vec<String> {
    line.split_once("capabilities:")
        .map(|(_, caps)| caps.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
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

/// `mail2ticket run` started by [`Env::spawn_service`]; killed on Drop.
pub struct DaemonProcess {
    pub child: ChildGuard,
    pub stderr_file: PathBuf,
}

impl DaemonProcess {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends signal `name` (e.g. `"KILL"`).
    pub fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    pub fn hangup(&self) {
        self.child.hangup();
    }

    pub fn terminate(&self) {
        self.child.terminate();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_for_exit(limit)
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of stderr, for assertion messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- daemon stderr (last {n} lines) ---\n{}\n--- end ---",
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }
}

/// Runs the binary with `args`, killing it after `limit`:
/// (exit code, stdout, stderr). Panics if it had to be killed.
pub fn run_binary(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = ChildGuard(
        std::process::Command::new(binary())
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start mail2ticket"),
    );
    // Read both pipes while waiting, so a chatty child never blocks.
    fn drain<R: std::io::Read + Send + 'static>(
        pipe: Option<R>,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    }
    let out = drain(child.0.stdout.take());
    let err = drain(child.0.stderr.take());
    let status = child
        .wait_for_exit(limit)
        .unwrap_or_else(|| panic!("mail2ticket {args:?} did not finish within {limit:?}"));
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    (status.code(), stdout, stderr)
}

/// `mail2ticket -c CONFIG status ARGS...`: (exit code, stdout, stderr).
pub fn status_binary(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["-c", config.to_str().expect("utf-8 path"), "status"];
    all.extend_from_slice(args);
    run_binary(&all, Duration::from_secs(60))
}

/// `mail2ticket -c CONFIG status --json [--reader NAME]`, parsed; panics
/// unless it exits 0 with one JSON object on stdout.
pub fn status_json(config: &Path, reader: Option<&str>) -> serde_json::Value {
    let mut args = vec!["--json"];
    if let Some(name) = reader {
        args.extend(["--reader", name]);
    }
    let (code, stdout, stderr) = status_binary(config, &args);
    assert_eq!(code, Some(0), "status {args:?} failed: {stdout}{stderr}");
    let value: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("status {args:?} printed no JSON ({e}): {stdout}"));
    assert!(
        value.is_object(),
        "status {args:?}: not an object: {stdout}"
    );
    value
}

/// The entry named `name` in the `readers` array of `status --json`.
pub fn status_reader<'v>(status: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
    status["readers"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no readers array: {status}"))
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("status --json lists no reader {name:?}: {status}"))
}

/// `mail2ticket -c CONFIG health`: (exit code, stdout and stderr together).
pub fn health_binary(config: &Path) -> (Option<i32>, String) {
    let (code, stdout, stderr) = run_binary(
        &["-c", config.to_str().expect("utf-8 path"), "health"],
        Duration::from_secs(60),
    );
    (code, format!("{stdout}{stderr}"))
}

/// `GET http://127.0.0.1:PORT/PATH`: (status code, body), or why no answer
/// came (e.g. nothing listening yet). Bounded by a 40 s timeout: longer
/// than the daemon's 30 s SQLite busy timeout, so a probe that waits on a
/// locked database still gets its answer.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    http_get_with(port, path, None).await
}

/// [`http_get`] with an `Accept` header.
pub async fn http_get_with(
    port: u16,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut request = client.get(&url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: body: {e}"))?;
    Ok((status, body))
}

/// Waits (up to `limit`) until `GET PATH` answers `status`.
pub async fn wait_for_http_status(port: u16, path: &str, status: u16, limit: Duration) -> bool {
    wait_until(limit, || async {
        http_get(port, path)
            .await
            .is_ok_and(|(code, _)| code == status)
    })
    .await
}
