//! `Dovecot`: a real Dovecot (2.3) on loopback for one test, with a
//! throw-away CA, XOAUTH2/OAUTHBEARER-only auth through
//! `passdb { driver = oauth2 }` asking the test [`super::IdP`]'s
//! introspection endpoint on every login. Optionally its SMTP submission
//! service too, relaying to a capture sink
//! ([`DovecotOptions::submission_relay_port`]).
//!
//! Each instance has its own temp dir (config, base_dir, state_dir, log,
//! maildirs) and its own free loopback ports, so many can run at once.
//! Mail is delivered by writing maildir files directly, like an MTA.
//!
//! Environment knobs: `M2T_DOVECOT_DEBUG=1` turns on auth/mail/oauth2 debug
//! logging; `M2T_KEEP_DOVECOT=1` keeps the instance dir after the test;
//! `M2T_TEST_TMPDIR=/dir` puts instance dirs there (default /dev/shm).

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::certs::TestPki;

mod system;

use system::*;

/// Options for [`Dovecot::start_with`].
#[derive(Clone, Debug, Default)]
pub struct DovecotOptions {
    /// Also accept `AUTHENTICATE PLAIN` / `LOGIN` (IMAP) and `USER`/`PASS`,
    /// `AUTH PLAIN` (POP3) for ANY user with this one password, through a
    /// `passdb { driver = static }` restricted to the plain mechanisms.
    /// `disable_plaintext_auth = yes` stays, but Dovecot counts a loopback
    /// connection (remote IP = local IP) as "secured", so from 127.0.0.1
    /// these work in clear text on the plain ports too. Whether a login was
    /// under TLS shows in its log line (`..., TLS, ...` vs `..., secured, ...`).
    pub plain_password: Option<String>,
    /// Replaces the capabilities Dovecot advertises (`imap_capability`),
    /// before and after login, e.g. [`NO_IDLE_NO_MOVE_CAPABILITY`]. Dovecot
    /// still *accepts* the commands it no longer advertises (IDLE, UID MOVE),
    /// so a test must watch the client (e.g. through a proxy) to see whether
    /// it honoured the list. STARTTLS, LOGINDISABLED and AUTH= are still
    /// added before login.
    pub imap_capability: Option<String>,
    /// Also runs Dovecot's SMTP submission service (Debian's
    /// dovecot-submissiond) on loopback ([`Dovecot::submission_port`]):
    /// STARTTLS offered, AUTH XOAUTH2 / OAUTHBEARER through the same oauth2
    /// passdb, every accepted mail relayed in plain SMTP to
    /// `127.0.0.1:<this port>` (e.g. a
    /// [`crate::submission::CaptureSink`]). Like the IMAP plain port, a
    /// loopback client counts as secured, so AUTH works before STARTTLS
    /// too; the login line tells (`, TLS,` or `, secured,`).
    pub submission_relay_port: Option<u16>,
}

/// Dovecot 2.3's own post-login capability list minus IDLE and MOVE (and
/// NOTIFY, which builds on IDLE): a server where the client must poll and
/// move by COPY + STORE + EXPUNGE.
pub const NO_IDLE_NO_MOVE_CAPABILITY: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE \
    SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND \
    URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 \
    CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY \
    SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+";

const NOT_INSTALLED: &str = "Dovecot is not installed; run the test suite through scripts/test (it installs dovecot-imapd, dovecot-pop3d and dovecot-submissiond)";

/// The system user and group owning mail (they exist on every Debian).
const MAIL_USER: &str = "nobody";
const MAIL_GROUP: &str = "nogroup";

static INSTANCE: AtomicUsize = AtomicUsize::new(0);
static DELIVERY: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug)]
struct Ports {
    imap: u16,
    imaps: u16,
    pop3: u16,
    pop3s: u16,
    /// Only listened on with [`DovecotOptions::submission_relay_port`].
    submission: u16,
}

/// A running Dovecot; killed (and waited for) on Drop.
pub struct Dovecot {
    child: Option<Child>,
    dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    stderr_log: PathBuf,
    ca_file: PathBuf,
    ports: Ports,
    /// Whether the submission service runs.
    submission: bool,
    uid: u32,
    gid: u32,
    // Dropped last (fields drop after Drop::drop ran): removes everything.
    _tmp: tempfile::TempDir,
}

enum StartError {
    PortClash(String),
    Other(String),
}

impl Dovecot {
    /// Starts Dovecot with XOAUTH2/OAUTHBEARER auth against `introspection_url`.
    pub fn start(introspection_url: &str) -> Dovecot {
        Dovecot::start_with(introspection_url, DovecotOptions::default())
    }

    /// Like [`Dovecot::start`], with [`DovecotOptions`] (e.g. a plain-password
    /// passdb next to the oauth2 one).
    pub fn start_with(introspection_url: &str, opts: DovecotOptions) -> Dovecot {
        ensure_installed();
        if opts.submission_relay_port.is_some() {
            assert!(
                [
                    "/usr/lib/dovecot/submission",
                    "/usr/libexec/dovecot/submission"
                ]
                .iter()
                .any(|p| Path::new(p).is_file()),
                "{NOT_INSTALLED} (the submission service, dovecot-submissiond, is missing)"
            );
        }
        let uid = lookup_id("/etc/passwd", MAIL_USER);
        let gid = lookup_id("/etc/group", MAIL_GROUP);

        let keep = std::env::var_os("M2T_KEEP_DOVECOT").is_some_and(|v| v != "0");
        let tmp = tempfile::Builder::new()
            .prefix("m2t-dovecot-")
            .disable_cleanup(keep)
            .tempdir_in(scratch_root())
            .expect("cannot create a temp dir for Dovecot");
        let dir = tmp.path().to_path_buf();
        if keep {
            eprintln!("M2T_KEEP_DOVECOT: keeping {}", dir.display());
        }
        set_mode(&dir, 0o755);
        check_traversable(&dir);
        for sub in ["run", "state"] {
            fs::create_dir(dir.join(sub)).expect("cannot create Dovecot dirs");
        }
        for sub in ["mail", "home"] {
            let p = dir.join(sub);
            fs::create_dir(&p).expect("cannot create Dovecot mail dirs");
            chown(&p, Some(uid), Some(gid)).expect("cannot chown Dovecot mail dirs");
        }
        let pki = TestPki::generate(&["127.0.0.1", "localhost"]).write_to(&dir.join("tls"));

        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let instance_name = format!("m2t-{}-{instance}", std::process::id());
        let conf = dir.join("dovecot.conf");
        let log = dir.join("dovecot.log");
        let stderr_log = dir.join("dovecot.stderr");
        let debug = std::env::var_os("M2T_DOVECOT_DEBUG").is_some_and(|v| v != "0");

        let oauth2_args = dir.join("dovecot-oauth2.conf.ext");
        fs::write(
            &oauth2_args,
            format!(
                "introspection_mode = post\n\
                 introspection_url = {introspection_url}\n\
                 username_attribute = username\n\
                 active_attribute = active\n\
                 active_value = true\n\
                 timeout_msecs = 10000\n\
                 debug = {}\n",
                if debug { "yes" } else { "no" }
            ),
        )
        .expect("cannot write the oauth2 passdb args file");

        let mut dovecot = Dovecot {
            child: None,
            dir: dir.clone(),
            conf,
            log,
            stderr_log,
            ca_file: pki.ca_file.clone(),
            ports: Ports {
                imap: 0,
                imaps: 0,
                pop3: 0,
                pop3s: 0,
                submission: 0,
            },
            submission: opts.submission_relay_port.is_some(),
            uid,
            gid,
            _tmp: tmp,
        };

        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            dovecot.ports = free_ports();
            let text = config_text(
                &dir,
                &instance_name,
                dovecot.ports,
                &oauth2_args,
                &pki,
                uid,
                gid,
                &opts,
                debug,
            );
            fs::write(&dovecot.conf, text).expect("cannot write dovecot.conf");
            match dovecot.spawn_and_wait() {
                Ok(()) => return dovecot,
                Err(StartError::PortClash(msg)) if attempt < ATTEMPTS => {
                    eprintln!("Dovecot port clash (attempt {attempt}), retrying: {msg}");
                }
                Err(StartError::PortClash(msg)) | Err(StartError::Other(msg)) => {
                    panic!("Dovecot failed to start: {msg}\n{}", dovecot.log_tail());
                }
            }
        }
        unreachable!()
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        // Logs are appended across (re)starts; only the new part counts here.
        let log_start = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let new_log = |path: &Path, from: u64| -> String {
            fs::read(path)
                .map(|b| String::from_utf8_lossy(&b[(from as usize).min(b.len())..]).into_owned())
                .unwrap_or_default()
        };
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("cannot open the Dovecot stderr log");
        let stderr_start = stderr.metadata().map(|m| m.len()).unwrap_or(0);
        let stdout = stderr.try_clone().expect("cannot clone a file handle");
        let child = Command::new(program("dovecot"))
            .arg("-F")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dovecot: {e}"));
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = self
                .child
                .as_mut()
                .expect("child just set")
                .try_wait()
                .expect("cannot poll the dovecot process");
            if let Some(status) = exited {
                self.child = None;
                let output =
                    new_log(&self.log, log_start) + &new_log(&self.stderr_log, stderr_start);
                let msg = format!("dovecot exited early with {status}");
                return Err(if output.contains("Address already in use") {
                    StartError::PortClash(msg)
                } else {
                    StartError::Other(msg)
                });
            }
            // The master logs "starting up" after binding all listeners; check
            // both, so a stranger on a recycled port is not mistaken for us.
            let started = new_log(&self.log, log_start).contains("starting up");
            if started && self.all_ports().iter().all(|p| port_accepts(*p)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(StartError::Other(
                    "it did not start listening within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops Dovecot (SIGTERM, then SIGKILL after 5 s) and waits for it.
    /// The maildirs stay; [`Dovecot::restart`] brings it back on the same ports.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Stops and starts again with the same config and ports (e.g. to test
    /// reconnects). Panics with the log tail if it does not come back.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // The old master's children may still hold the ports briefly.
                Err(StartError::PortClash(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(StartError::PortClash(msg)) | Err(StartError::Other(msg)) => {
                    panic!("Dovecot failed to restart: {msg}\n{}", self.log_tail())
                }
            }
        }
    }

    /// True while the Dovecot master process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn all_ports(&self) -> Vec<u16> {
        let mut ports = vec![
            self.ports.imap,
            self.ports.imaps,
            self.ports.pop3,
            self.ports.pop3s,
        ];
        if self.submission {
            ports.push(self.ports.submission);
        }
        ports
    }

    /// SMTP submission (587-style): STARTTLS offered; only with
    /// [`DovecotOptions::submission_relay_port`].
    pub fn submission_port(&self) -> u16 {
        assert!(
            self.submission,
            "start Dovecot with DovecotOptions::submission_relay_port for submission"
        );
        self.ports.submission
    }

    /// IMAP over implicit TLS (993-style).
    pub fn imaps_port(&self) -> u16 {
        self.ports.imaps
    }

    /// POP3 over implicit TLS (995-style).
    pub fn pop3s_port(&self) -> u16 {
        self.ports.pop3s
    }

    /// Plain IMAP (143-style); offers STARTTLS. From loopback, AUTHENTICATE
    /// XOAUTH2 / OAUTHBEARER work in clear text (what a `tls = "none"`
    /// reader, e.g. through [`crate::proxy::Proxy`], uses). Without
    /// [`DovecotOptions::plain_password`] it says LOGINDISABLED (no plain
    /// mechanism exists); with it, LOGIN works in clear text from loopback
    /// too (see there).
    pub fn imap_port(&self) -> u16 {
        self.ports.imap
    }

    /// Plain POP3 (110-style); offers STLS. As on [`Dovecot::imap_port`],
    /// AUTH XOAUTH2 works before STLS from loopback, and so do USER/PASS
    /// and AUTH PLAIN with [`DovecotOptions::plain_password`].
    pub fn pop3_port(&self) -> u16 {
        self.ports.pop3
    }

    /// Always "127.0.0.1" (the certificate also names "localhost").
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// PEM file of the throw-away CA that signed the server certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    pub fn ca_pem(&self) -> String {
        fs::read_to_string(&self.ca_file).expect("cannot read the CA file")
    }

    /// The instance's temp dir (config, logs, `mail/`, `home/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_file(&self) -> &Path {
        &self.conf
    }

    /// The maildir root (= INBOX) of `user`.
    pub fn maildir(&self, user: &str) -> PathBuf {
        // auth_username_format = %Lu: Dovecot lower-cases user names.
        self.dir.join("mail").join(user.to_lowercase())
    }

    /// The last 80 lines of the Dovecot log and of its stderr.
    pub fn log_tail(&self) -> String {
        fn tail(path: &Path, n: usize) -> String {
            match fs::read(path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(n)..].join("\n")
                }
                Err(e) => format!("(cannot read {}: {e})", path.display()),
            }
        }
        format!(
            "--- Dovecot log tail ({}) ---\n{}\n--- Dovecot stderr ---\n{}\n--- end ---",
            self.log.display(),
            tail(&self.log, 80),
            tail(&self.stderr_log, 20)
        )
    }

    /// Waits (up to 10 s: Dovecot logs asynchronously) for a `service`
    /// ("imap-login" / "pop3-login") login line of `user`, and returns it,
    /// e.g. `imap-login: Info: Login: user=<u>, method=PLAIN, rip=127.0.0.1,
    /// lip=127.0.0.1, mpid=42, TLS, session=<...>`.
    pub fn login_line(&self, service: &str, user: &str) -> String {
        let needle = format!("{service}: Info: Login: user=<{}>,", user.to_lowercase());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log().lines().rfind(|l| l.contains(&needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the Dovecot log\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole Dovecot log.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Runs `doveadm -c <conf> ARGS...`; Err carries stderr on failure.
    pub fn try_doveadm(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(program("doveadm"))
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run doveadm: {e}"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "doveadm {args:?} failed with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Runs `doveadm -c <conf> ARGS...` and returns stdout; panics (with the
    /// log tail) on failure.
    pub fn doveadm(&self, args: &[&str]) -> String {
        self.try_doveadm(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()))
    }

    /// Creates a mailbox (`/` is the hierarchy separator, like Exchange).
    /// The name is UTF-8 (doveadm stores it in modified UTF-7, as IMAP
    /// names it on the wire: "Traité" is `Trait&AOk-`).
    pub fn create_folder(&self, user: &str, name: &str) {
        self.doveadm(&["mailbox", "create", "-u", user, name]);
    }

    /// Messages in `folder` (e.g. "INBOX"), as Dovecot sees them now.
    pub fn message_count(&self, user: &str, folder: &str) -> usize {
        self.status_field(user, folder, "messages")
    }

    /// UIDVALIDITY of `folder`. Dovecot takes a new mailbox's UIDVALIDITY
    /// from a per-user counter (`dovecot-uidvalidity`), so deleting and
    /// re-creating a folder always gives it a different one.
    pub fn uidvalidity(&self, user: &str, folder: &str) -> u32 {
        self.status_field(user, folder, "uidvalidity")
            .try_into()
            .expect("UIDVALIDITY fits in u32")
    }

    /// Deletes `folder` with all its mail and creates it again, empty and
    /// with a new UIDVALIDITY (as a server migration or restore would).
    pub fn recreate_folder(&self, user: &str, folder: &str) -> (u32, u32) {
        let before = self.uidvalidity(user, folder);
        self.doveadm(&["mailbox", "delete", "-u", user, folder]);
        self.create_folder(user, folder);
        let after = self.uidvalidity(user, folder);
        assert_ne!(before, after, "re-creating {folder} kept its UIDVALIDITY");
        (before, after)
    }

    /// Messages in `folder` with the \Seen flag.
    pub fn seen_count(&self, user: &str, folder: &str) -> usize {
        self.search(user, folder, "seen").len()
    }

    /// UIDs of messages in `folder` matching a doveadm search query
    /// (e.g. "all", "seen", "unseen", "header message-id <1.x@test.example>").
    pub fn search(&self, user: &str, folder: &str, query: &str) -> Vec<u32> {
        let mut args = vec!["search", "-u", user, "mailbox", folder];
        args.extend(query.split_whitespace());
        self.doveadm(&args)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|uid| uid.parse().expect("doveadm search printed a bad UID"))
            .collect()
    }

    /// Mailbox names of `user` (`doveadm mailbox list`).
    pub fn folders(&self, user: &str) -> Vec<String> {
        self.doveadm(&["mailbox", "list", "-u", user])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn status_field(&self, user: &str, folder: &str, field: &str) -> usize {
        let out = self.doveadm(&["-f", "flow", "mailbox", "status", "-u", user, field, folder]);
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unexpected doveadm mailbox status output: {out:?}"))
    }

    /// Puts one message into `user`'s INBOX (maildir `tmp/` then rename into
    /// `new/`, owned by the mail user), as an MTA would.
    pub fn deliver(&self, user: &str, raw: &[u8]) {
        self.deliver_many(user, std::iter::once(raw.to_vec()));
    }

    /// Delivers many messages to INBOX; 10,000 take well under a few seconds.
    pub fn deliver_many(&self, user: &str, mails: impl IntoIterator<Item = Vec<u8>>) {
        let root = self.maildir(user);
        self.deliver_into(user, &root, mails);
    }

    /// Delivers mails to INBOX that arrived `ago` before now: the file's
    /// mtime, which Dovecot's maildir takes as the INTERNALDATE. Only for
    /// mail Dovecot has not indexed yet (deliver, then read).
    pub fn deliver_aged(&self, user: &str, mails: impl IntoIterator<Item = (Vec<u8>, Duration)>) {
        let new = self.maildir(user).join("new");
        for (raw, ago) in mails {
            let before: std::collections::HashSet<_> = self.files_in(&new);
            self.deliver_many(user, std::iter::once(raw));
            let when = SystemTime::now() - ago;
            for name in self.files_in(&new).difference(&before) {
                fs::File::options()
                    .write(true)
                    .open(new.join(name))
                    .and_then(|f| f.set_modified(when))
                    .expect("set a mail file's mtime");
            }
        }
    }

    fn files_in(&self, dir: &Path) -> std::collections::HashSet<std::ffi::OsString> {
        match fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect(),
            Err(_) => std::collections::HashSet::new(),
        }
    }

    /// Sets `flag` (e.g. `\Seen`) on the messages of `folder` whose UIDs
    /// are in `uids` (an IMAP set, e.g. "1:3").
    pub fn add_flag(&self, user: &str, folder: &str, flag: &str, uids: &str) {
        self.doveadm(&[
            "flags", "add", "-u", user, flag, "mailbox", folder, "uid", uids,
        ]);
    }

    /// Delivers into an existing or new folder (ASCII names; `/`-separated
    /// hierarchy maps to Maildir++ `.A.B`).
    pub fn deliver_to(&self, user: &str, folder: &str, raw: &[u8]) {
        let dir = if folder.eq_ignore_ascii_case("INBOX") {
            self.maildir(user)
        } else {
            assert!(
                folder.is_ascii() && !folder.contains('.'),
                "deliver_to supports plain ASCII folder names without '.': {folder:?}"
            );
            let d = self
                .maildir(user)
                .join(format!(".{}", folder.replace('/', ".")));
            if !d.exists() {
                self.make_maildir(user, &self.maildir(user));
                self.make_dir(&d);
                let marker = d.join("maildirfolder");
                fs::write(&marker, b"").expect("cannot write maildirfolder");
                chown(&marker, Some(self.uid), Some(self.gid)).expect("chown maildirfolder");
            }
            d
        };
        self.deliver_into(user, &dir, std::iter::once(raw.to_vec()));
    }

    fn make_dir(&self, dir: &Path) {
        if !dir.is_dir() {
            fs::create_dir(dir).unwrap_or_else(|e| {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    panic!("cannot create {}: {e}", dir.display())
                }
            });
            set_mode(dir, 0o700);
            chown(dir, Some(self.uid), Some(self.gid))
                .unwrap_or_else(|e| panic!("cannot chown {}: {e}", dir.display()));
        }
    }

    fn make_maildir(&self, _user: &str, dir: &Path) {
        self.make_dir(dir);
        for sub in ["cur", "new", "tmp"] {
            self.make_dir(&dir.join(sub));
        }
    }

    fn deliver_into(&self, user: &str, dir: &Path, mails: impl IntoIterator<Item = Vec<u8>>) {
        self.make_maildir(user, &self.maildir(user));
        self.make_maildir(user, dir);
        let (tmp, new) = (dir.join("tmp"), dir.join("new"));
        let pid = std::process::id();
        for raw in mails {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock before 1970");
            let n = DELIVERY.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                "{}.M{}P{pid}Q{n}.m2t-test,S={}",
                now.as_secs(),
                now.subsec_micros(),
                raw.len()
            );
            let tmp_path = tmp.join(&name);
            let mut f = fs::File::create(&tmp_path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp_path.display()));
            f.write_all(&raw).expect("cannot write a mail file");
            drop(f);
            chown(&tmp_path, Some(self.uid), Some(self.gid)).expect("cannot chown a mail file");
            fs::rename(&tmp_path, new.join(&name)).expect("cannot move a mail into new/");
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}
