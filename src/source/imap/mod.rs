//! IMAP with SASL XOAUTH2 (or a password), over implicit TLS or STARTTLS.
//!
//! Owns how an IMAP folder becomes tickets exactly once: new mail is found
//! by UID above the ledger's watermark for the folder's UIDVALIDITY, plus
//! the UIDs the ledger still owes (asked for earlier, not delivered: the
//! tagged answer of every command is read, see `Session::run`), sized
//! (`RFC822.SIZE`), fetched in batches bounded by `batch_size` and
//! `batch_bytes` with `BODY.PEEK[]<0.max_email_size>` (so nothing is marked
//! read before its ticket exists, and a huge mail is never held whole),
//! committed, and only then given its after-step (`\Seen`,
//! nothing, delete, or move). An after-step that could not be done stays
//! pending in the ledger and is retried on the next poll; since it only
//! ever runs for committed mail, a retry can never duplicate a ticket.
//!
//! The first poll of a folder (no record of it at this UIDVALIDITY) takes
//! only what the reader's `backfill` says of the mail already there, and
//! records that choice with a floor (the highest UID then) before fetching
//! anything: mail above the floor is new and always taken, mail at or below
//! it only if chosen, so old mail left then is never taken later.
//!
//! A UIDVALIDITY change (the folder was recreated) starts a new UID space,
//! a first contact again: what `backfill` takes of it is matched against
//! the emails already stored by Message-ID, or by content hash for mail
//! without one, so known mail is only recorded under its new UID.
//!
//! With `idle = true` the connection is kept between polls and waits in

mod check;
mod errors;
mod idle;
mod login;
mod poll;
mod session;

use std::time::Duration;

use super::SourceError;

pub use self::check::check;
pub use self::errors::ImapError;
pub use self::idle::idle;
pub use self::poll::poll;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use self::session::mailbox_name;
use self::session::{Selected, Session};

/// UIDs per `UID FETCH (UID RFC822.SIZE)`, so a folder with a huge backlog
/// is sized in commands of bounded length.
const SIZE_CHUNK: usize = 1000;

/// IDLE is re-issued at least this often: servers may drop an IDLE after
/// 30 minutes (RFC 2177), and NAT boxes forget quiet connections sooner.
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);

/// A session kept open between polls (`idle = true`), with its folder
/// selected.
pub struct Connection {
    session: Session,
    selected: Selected,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("uidvalidity", &self.selected.uidvalidity)
            .finish_non_exhaustive()
    }
}

/// How a wait in IDLE ended.
#[derive(Debug)]
pub enum Idled {
    /// The server announced a change (or the IDLE was renewed): poll now.
    Changed,
    /// The server has no IDLE, or no connection is kept: poll on the
    /// interval instead.
    Unsupported,
    /// Shutdown began.
    Cancelled,
    /// The connection broke; the next poll reconnects.
    Lost(ImapError),
}

/// The IMAP response parser (imap-proto) can panic on malformed server
/// bytes (a non-UTF-8 byte right after a response code, found by
/// fuzzing). Contained here, a broken or hostile server is a protocol error
/// in `last_error`, like any other bad answer, instead of a reader task
/// that panics and restarts in a loop.
async fn contained<T>(
    fut: impl std::future::Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(unreadable_answer().into()))
}

pub(super) fn unreadable_answer() -> ImapError {
    ImapError::Protocol {
        step: "reading the server's answer",
        detail: "the IMAP response parser failed on a malformed response".into(),
    }
}

/// The store names UIDs in its events the same way, so the set lives there.
pub(crate) use crate::store::uid_set;

#[cfg(test)]
mod tests;
