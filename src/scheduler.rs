//! The scheduler: one task per reader, each on its own poll interval.
//!
//! Owns timing: the poll interval after a success, exponential backoff with
//! jitter after transient failures (capped at 15 minutes, never shorter
//! than a Retry-After), parking readers whose failure only a person can fix
//! (they make no requests until `authorize` or `check` releases them),
//! waiting in IMAP IDLE instead of sleeping for `idle = true` readers, and
//! independence: a reader that hangs or fails only ever delays itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ReaderConfig;
use crate::reader::{self, Context, Idled, Link};

const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// How often a parked reader looks at its row for a release. A local
/// database read: the identity platform is not asked.
const PARKED_RECHECK: Duration = Duration::from_secs(5);

/// Runs every reader until `cancel` fires; returns when all have stopped.
///
/// After `cancel`, readers get `grace` to reach a safe point. A reader that
/// is committing finishes within it; one stuck waiting on a server (login,
/// fetch) is abandoned, which loses nothing: its mail is still on the
/// server and above the ledger's watermark.
pub async fn run(
    ctx: Arc<Context>,
    readers: Vec<ReaderConfig>,
    cancel: CancellationToken,
    grace: Duration,
) {
    let mut tasks = JoinSet::new();
    for reader in readers {
        tasks.spawn(run_reader(ctx.clone(), reader, cancel.clone()));
    }
    let grace_over = async {
        cancel.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(grace_over);
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break,
                Some(Err(e)) if !e.is_cancelled() => {
                    tracing::error!(error = %e, "a reader task ended abnormally");
                }
                Some(_) => {}
            },
            () = &mut grace_over => {
                tracing::warn!(
                    readers = tasks.len(),
                    "readers still busy after the shutdown grace period; abandoning them"
                );
                tasks.shutdown().await;
                break;
            }
        }
    }
}

async fn run_reader(ctx: Arc<Context>, reader: ReaderConfig, cancel: CancellationToken) {
    // Stopped before, and nothing changed since (start-up releases a reader
    // whose settings or secrets changed): its next request would fail too.
    if let Ok(Some((state, _))) = ctx.store.reader_state(&reader.name).await
        && state.is_parked()
    {
        tracing::warn!(
            reader = %reader.name,
            state = state.as_str(),
            "reader stays stopped until an admin acts; see `mail2ticket status`"
        );
        if !wait_for_release(&ctx, &reader, &cancel).await {
            return;
        }
    }
    let mut failures: u32 = 0;
    let mut link = Link::default();
    while !cancel.is_cancelled() {
        let delay = match reader::poll_and_record(&ctx, &reader, &mut link, &cancel).await {
            Ok(report) => {
                failures = 0;
                if report.fetched > 0 {
                    tracing::info!(
                        reader = %reader.name,
                        fetched = report.fetched,
                        tickets = report.created,
                        duplicates = report.duplicates,
                        "poll done"
                    );
                }
                if !reader.idle {
                    reader.poll_interval
                } else {
                    match reader::wait_for_mail(&mut link, &cancel).await {
                        Idled::Changed => continue,
                        Idled::Cancelled => break,
                        Idled::Unsupported => reader.poll_interval,
                        Idled::Lost(e) => {
                            // Polling at once reconnects; the backoff keeps
                            // a server that drops every IDLE from being
                            // hammered.
                            tracing::warn!(
                                reader = %reader.name,
                                error = %e,
                                "IDLE connection lost; reconnecting"
                            );
                            backoff(1, reader.poll_interval)
                        }
                    }
                }
            }
            Err(e) if e.state().is_parked() => {
                tracing::error!(
                    reader = %reader.name,
                    state = e.state().as_str(),
                    error = %e,
                    "reader stopped until an admin acts; see `mail2ticket status`"
                );
                if !wait_for_release(&ctx, &reader, &cancel).await {
                    break;
                }
                tracing::info!(reader = %reader.name, "reader released; polling again");
                if let Some(request) = reader::token_request(&reader) {
                    ctx.tokens.reload(&request).await;
                }
                failures = 0;
                continue;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures, reader.poll_interval)
                    // Honour Retry-After, within reason: a bogus day-long
                    // value must not silence a reader.
                    .max(e.retry_after().unwrap_or_default().min(MAX_RETRY_AFTER));
                tracing::warn!(
                    reader = %reader.name,
                    error = %e,
                    failures,
                    retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs())),
                    "poll failed"
                );
                delay
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Waits until the reader's row leaves the parked state (a sign-in or a
/// successful `check` from another process). False when cancelled.
async fn wait_for_release(
    ctx: &Context,
    reader: &ReaderConfig,
    cancel: &CancellationToken,
) -> bool {
    let recheck = PARKED_RECHECK.min(reader.poll_interval);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(recheck) => {}
        }
        match ctx.store.reader_state(&reader.name).await {
            Ok(Some((state, _))) if state.is_parked() => {}
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(reader = %reader.name, error = %e, "cannot read the reader's state");
            }
        }
    }
}

/// Delay before the next try after `failures` failures in a row: doubling
/// from the poll interval (at most 10 s to start), capped, and jittered
/// into its upper half so readers that failed together do not retry in
/// lockstep.
pub fn backoff(failures: u32, poll_interval: Duration) -> Duration {
    let base = poll_interval.min(Duration::from_secs(10));
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(MAX_BACKOFF);
    let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let interval = Duration::from_secs(60);
        for _ in 0..100 {
            let first = backoff(1, interval);
            assert!(
                first >= Duration::from_secs(5) && first <= Duration::from_secs(10),
                "{first:?}"
            );
            let third = backoff(3, interval);
            assert!(
                third >= Duration::from_secs(20) && third <= Duration::from_secs(40),
                "{third:?}"
            );
            let late = backoff(40, interval);
            assert!(late <= MAX_BACKOFF && late >= MAX_BACKOFF / 2, "{late:?}");
        }
        assert!(backoff(1, Duration::from_secs(1)) <= Duration::from_secs(1));
    }
}
