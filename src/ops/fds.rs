//! File descriptors: the process's limit, raised at start, and running
//! out of them.
//!
//! Owns the rule that running out is a fault of the whole daemon, not of
//! one reader: every mailbox connection, database file and HTTP client
//! takes one, so whoever meets EMFILE or ENFILE first (a reader connecting,
//! the store opening a file, the HTTP listener accepting) reports it here,
//! and `/healthz` fails while it lasts. The words are an admin's, naming
//! the limit, since "os error 24" says nothing about what to change.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// How long one sighting keeps `/healthz` failing. Readers meet the limit
/// only when they connect, seconds or minutes apart, so a condition seen a
/// moment ago is taken to last a while unless nothing meets it again.
const HOLD: Duration = Duration::from_secs(30);

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft
/// limit. A service manager's default soft limit (1024 under systemd) is
/// far below what the kernel allows the process, and every mailbox and
/// HTTP connection counts against it.
pub fn raise_limit() -> Result<Option<u64>, Errno> {
    let limit = getrlimit(Resource::Nofile);
    let Some(max) = limit.maximum else {
        return Ok(limit.current);
    };
    if limit.current == Some(max) {
        return Ok(Some(max));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(max),
            maximum: Some(max),
        },
    )?;
    Ok(Some(max))
}

/// The soft RLIMIT_NOFILE now; `None` for unlimited.
fn limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Which of the two limits was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// EMFILE: this process's RLIMIT_NOFILE.
    Process,
    /// ENFILE: the kernel's limit for all processes.
    System,
}

impl Exhausted {
    /// Whether `e` (or anything it was caused by) is EMFILE or ENFILE.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Option<Exhausted> {
        let mut next = Some(e);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && let Some(found) = Exhausted::of_io(io)
            {
                return Some(found);
            }
            // Errors that kept only the text of an io::Error (a server's
            // or a library's message) still carry std's "(os error N)".
            let text = e.to_string();
            if text.contains(&os_error(Errno::MFILE)) {
                return Some(Exhausted::Process);
            }
            if text.contains(&os_error(Errno::NFILE)) {
                return Some(Exhausted::System);
            }
            next = e.source();
        }
        None
    }

    /// Whether the process cannot open a descriptor right now: for errors
    /// that lost their errno (SQLite says only "unable to open database
    /// file").
    pub fn now() -> Option<Exhausted> {
        std::fs::File::open("/dev/null")
            .err()
            .and_then(|e| Exhausted::of_io(&e))
    }

    pub fn of_io(e: &std::io::Error) -> Option<Exhausted> {
        match Errno::from_io_error(e)? {
            Errno::MFILE => Some(Exhausted::Process),
            Errno::NFILE => Some(Exhausted::System),
            _ => None,
        }
    }

    /// What it means, for `last_error` and `/healthz`.
    pub fn describe(self) -> String {
        match (self, limit()) {
            (Exhausted::Process, Some(n)) => {
                format!("too many open files (the process's file-descriptor limit {n} is reached)")
            }
            (Exhausted::Process, None) => {
                "too many open files (the process's file-descriptor limit is reached)".into()
            }
            (Exhausted::System, _) => {
                "too many open files on the system (the kernel's limit for all processes, \
                 fs.file-max, is reached)"
                    .into()
            }
        }
    }
}

/// How std's io::Error shows an errno.
fn os_error(errno: Errno) -> String {
    format!("(os error {})", errno.raw_os_error())
}

/// The last time anyone ran out; shared by the readers (through
/// [`crate::reader::Context`]) and the HTTP endpoint. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Pressure {
    last: Arc<Mutex<Option<(Instant, Exhausted)>>>,
}

impl Pressure {
    /// Records that `what` was met just now.
    pub fn met(&self, what: Exhausted) {
        *self.lock() = Some((Instant::now(), what));
    }

    /// Why the daemon is short of file descriptors, if it met the limit
    /// within the last `HOLD` or cannot open one now.
    pub fn exhausted(&self) -> Option<String> {
        // A probe, so that `/healthz` fails even while every reader sits
        // in IDLE and nothing else tries to open a file.
        if let Some(what) = Exhausted::now() {
            self.met(what);
        }
        let last = *self.lock();
        match last {
            Some((at, what)) if at.elapsed() <= HOLD => Some(what.describe()),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Exhausted)>> {
        // A plain value, consistent after any panic.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: {0}")]
    struct Wrapped(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("step failed: {0}")]
    struct Text(String);

    #[test]
    fn emfile_is_found_in_the_chain_or_in_the_text() {
        let io = std::io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        let wrapped = Wrapped(io);
        assert_eq!(Exhausted::of(&wrapped), Some(Exhausted::Process));
        let text = Text(format!("connect: {}", wrapped.0));
        assert_eq!(Exhausted::of(&text), Some(Exhausted::Process));
        let nfile = std::io::Error::from_raw_os_error(Errno::NFILE.raw_os_error());
        assert_eq!(Exhausted::of(&nfile), Some(Exhausted::System));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Exhausted::of(&Wrapped(refused)), None);
        assert!(
            Exhausted::Process
                .describe()
                .starts_with("too many open files (the process's file-descriptor limit "),
        );
    }

    #[test]
    fn a_sighting_fails_health_for_a_while() {
        let p = Pressure::default();
        assert_eq!(p.exhausted(), None);
        p.met(Exhausted::Process);
        let why = p.exhausted().expect("just met");
        assert!(why.contains("file-descriptor limit"), "{why}");
    }
}
