//! Waiting in IDLE on a connection kept between polls (`idle = true`), so
//! new mail is noticed as it arrives.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::errors::{connection_closed, crate_error, timed_out};
use super::session::Session;
use super::{Connection, IDLE_RENEW, Idled, unreadable_answer};

/// Waits in IDLE on a kept connection until the server reports a change,
/// `at_most` passes (capped at `IDLE_RENEW`), or `cancel` fires. The
/// caller passes its poll interval: an IDLE that died silently (a NAT
/// dropping the idle flow) then delays mail by one interval, not forever,
/// and every interval records a success that `status` can see.
pub async fn idle(
    kept: &mut Option<Connection>,
    cancel: &CancellationToken,
    at_most: Duration,
) -> Idled {
    use futures::FutureExt as _;
    // See `contained`; a connection whose answer broke the parser is gone.
    std::panic::AssertUnwindSafe(idle_inner(kept, cancel, at_most))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Idled::Lost(unreadable_answer()))
}

async fn idle_inner(
    kept: &mut Option<Connection>,
    cancel: &CancellationToken,
    at_most: Duration,
) -> Idled {
    let renew = IDLE_RENEW.min(at_most);
    let Some(mut conn) = kept.take() else {
        return Idled::Unsupported;
    };
    if !conn.session.caps.idle {
        conn.session.logout().await;
        return Idled::Unsupported;
    }
    // Mail that arrived after the poll's search was announced (EXISTS) in
    // answer to a later command, and IDLE would not announce it again:
    // poll at once instead of waiting for the next change.
    if conn.session.take_announcements() {
        *kept = Some(conn);
        return Idled::Changed;
    }
    let Connection { session, selected } = conn;
    let Session {
        inner,
        timeout,
        caps,
        progress,
        scrub,
        grew,
    } = session;
    let mut handle = inner.idle();
    match tokio::time::timeout(timeout, handle.init()).await {
        Err(_) => return Idled::Lost(timed_out("IDLE", timeout)),
        Ok(Err(e)) => return Idled::Lost(crate_error(&scrub, "IDLE", e)),
        Ok(Ok(())) => {}
    }
    let outcome = {
        // The renewal bound is ours, not the crate's: its timer restarts on
        // every keep-alive the server sends, so it alone would never renew.
        let (wait, _stop) = handle.wait_with_timeout(renew);
        tokio::select! {
            () = cancel.cancelled() => return Idled::Cancelled,
            r = tokio::time::timeout(renew, wait) => r,
        }
    };
    let changed = match outcome {
        // The crate reports a closed connection as an interrupt; we never
        // interrupt it ourselves.
        Ok(Ok(async_imap::extensions::idle::IdleResponse::ManualInterrupt)) => {
            return Idled::Lost(connection_closed("IDLE"));
        }
        Ok(Err(e)) => return Idled::Lost(crate_error(&scrub, "IDLE", e)),
        Ok(Ok(_)) | Err(_) => Idled::Changed,
    };
    match tokio::time::timeout(timeout, handle.done()).await {
        Err(_) => Idled::Lost(timed_out("DONE", timeout)),
        Ok(Err(e)) => Idled::Lost(crate_error(&scrub, "DONE", e)),
        Ok(Ok(inner)) => {
            *kept = Some(Connection {
                session: Session {
                    inner,
                    timeout,
                    caps,
                    progress,
                    scrub,
                    grew,
                },
                selected,
            });
            changed
        }
    }
}
