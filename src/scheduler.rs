//! The scheduler: one task per reader, each on its own poll interval.
//!
//! Owns timing: the poll interval after a success (give or take a tenth,
//! so readers started together drift apart), exponential backoff with
//! jitter after transient failures that got nothing done (capped at 15
//! minutes, never shorter than a Retry-After), parking readers whose failure
//! only a person can fix (they make no requests until `authorize` or `check`
//! releases them, or a sign-in made elsewhere shows up in the store),
//! waiting in IMAP IDLE instead of sleeping for `idle = true` readers, and
//! independence: a reader that hangs or fails only ever delays itself.
//! Owns the set of running readers too: [`Scheduler::apply`] brings it in
//! line with a (re)loaded configuration without touching readers that did
//! not change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::ReaderConfig;
use crate::outcome::ReaderState;
use crate::reader::{self, Context, Idled, Link};
use crate::store::TokenVersion;

const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// How often a parked reader looks at its row for a release. A local
/// database read: the identity platform is not asked.
const PARKED_RECHECK: Duration = Duration::from_secs(5);

/// A reader as configured, with what tells a changed one apart.
#[derive(Debug, Clone)]
pub struct Registered {
    pub config: ReaderConfig,
    /// Keyed digest of its settings, its app's and their secrets' values.
    pub fingerprint: String,
    pub state: ReaderState,
}

/// What [`Scheduler::apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

struct Slot {
    fingerprint: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
    config: ReaderConfig,
}

/// The running readers.
pub struct Scheduler {
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    /// After a stop, how long a reader gets to reach a safe point.
    grace: Duration,
    slots: HashMap<String, Slot>,
    /// Removed readers finishing their current transaction.
    retiring: Vec<(String, JoinHandle<()>)>,
}

impl Scheduler {
    pub fn new(ctx: Arc<Context>, shutdown: CancellationToken, grace: Duration) -> Scheduler {
        Scheduler {
            ctx,
            shutdown,
            grace,
            slots: HashMap::new(),
            retiring: Vec::new(),
        }
    }

    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Starts added readers, stops removed ones after their current
    /// transaction, and restarts changed ones (the new task starts once the
    /// old one stopped, so one reader never runs twice). Readers whose
    /// fingerprint is unchanged keep running, connections and all.
    pub fn apply(&mut self, readers: Vec<Registered>) -> Applied {
        let mut applied = Applied::default();
        let wanted: HashMap<&str, &Registered> = readers
            .iter()
            .map(|r| (r.config.name.as_str(), r))
            .collect();
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(slot) = self.slots.remove(&name) {
                slot.stop.cancel();
                // Its failed writes no longer say anything about the store.
                self.ctx
                    .store
                    .note_write(&reader::writer_named(&name), Ok(()));
                self.retiring.push((name.clone(), slot.task));
                applied.removed.push(name);
            }
        }
        for registered in readers {
            let name = registered.config.name.clone();
            let previous = match self.slots.remove(&name) {
                Some(mut slot) if slot.fingerprint == registered.fingerprint => {
                    // The running task shares this handle: its next batch
                    // uses the new rules, limits and addresses.
                    slot.config.mail.replace(registered.config.mail.current());
                    slot.config.reply = registered.config.reply;
                    self.slots.insert(name, slot);
                    continue;
                }
                Some(slot) => {
                    slot.stop.cancel();
                    applied.changed.push(name.clone());
                    Some(slot.task)
                }
                None => {
                    applied.added.push(name.clone());
                    // Removed by an earlier reload and back before its old
                    // task finished: the new one waits for it.
                    self.retiring
                        .iter()
                        .position(|(retired, _)| *retired == name)
                        .map(|i| self.retiring.swap_remove(i).1)
                }
            };
            self.spawn(registered, previous);
        }
        applied
    }

    fn spawn(&mut self, registered: Registered, previous: Option<JoinHandle<()>>) {
        let stop = self.shutdown.child_token();
        let ctx = self.ctx.clone();
        let config = registered.config.clone();
        let grace = self.grace;
        ctx.metrics.reader(&config.name).state(registered.state);
        let span = tracing::info_span!("reader", reader = %config.name);
        let task = tokio::spawn(
            {
                let (stop, config) = (stop.clone(), config.clone());
                async move {
                    if let Some(previous) = previous {
                        finish(previous, grace).await;
                        // Its replacement may use a changed app or secret:
                        // nothing cached for the old one may be reused.
                        if let Some(request) = reader::token_request(&config) {
                            ctx.tokens.reload(&request).await;
                        }
                    }
                    run_reader(ctx, config, stop).await;
                }
            }
            .instrument(span),
        );
        self.slots.insert(
            registered.config.name.clone(),
            Slot {
                fingerprint: registered.fingerprint,
                stop,
                task,
                config,
            },
        );
    }

    /// Collects readers that stopped: removed ones that finished (their
    /// metrics go with them), and running ones that ended on their own,
    /// which only a bug (a panic) does; those are started again.
    pub fn reap(&mut self) {
        let (done, busy): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|(_, task)| task.is_finished());
        self.retiring = busy;
        for (name, _) in done {
            if !self.slots.contains_key(&name) {
                self.ctx.metrics.forget(&name);
            }
        }
        if self.shutdown.is_cancelled() {
            return;
        }
        let ended: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.task.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            if let Some(slot) = self.slots.remove(&name) {
                tracing::error!(reader = %name, "reader task ended unexpectedly; starting it again");
                let registered = Registered {
                    config: slot.config,
                    fingerprint: slot.fingerprint,
                    state: ReaderState::Ok,
                };
                self.spawn(registered, Some(slot.task));
            }
        }
    }

    /// After shutdown began: waits for every reader, each bounded by the
    /// grace period. A reader that is committing finishes within it; one
    /// stuck waiting on a server (login, fetch) is abandoned, which loses
    /// nothing: its mail is still on the server and above the ledger's
    /// watermark.
    pub async fn stop(self) {
        for slot in self.slots.values() {
            slot.stop.cancel();
        }
        let grace = self.grace;
        let all = self
            .slots
            .into_values()
            .map(|slot| slot.task)
            .chain(self.retiring.into_iter().map(|(_, task)| task))
            .map(|task| finish(task, grace));
        futures::future::join_all(all).await;
    }
}

/// Waits up to `grace` for a stopped reader's task, then abandons it.
async fn finish(mut task: JoinHandle<()>, grace: Duration) {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => {
            tracing::error!(error = %e, "a reader task panicked");
        }
        Ok(Err(_)) => {}
        Err(_) => {
            tracing::warn!("reader still busy after the grace period; abandoning it");
            task.abort();
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
            state = state.as_str(),
            "reader stays stopped until an admin acts; see `mail2ticket status`"
        );
        let baseline = sign_in_baseline(&ctx, &reader, state).await;
        if !wait_for_release(&ctx, &reader, &cancel, baseline.as_ref()).await {
            return;
        }
    }
    let mut failures: u32 = 0;
    let mut link = Link::default();
    let meter = ctx.metrics.reader(&reader.name);
    while !cancel.is_cancelled() {
        let committed_before = meter.batches_committed();
        let delay = match reader::poll_and_record(&ctx, &reader, &mut link, &cancel).await {
            Ok(report) => {
                failures = 0;
                if report.created > 0 {
                    // New tickets may have queued acknowledgements.
                    ctx.acks.notify_one();
                }
                if report.fetched > 0 {
                    tracing::info!(
                        fetched = report.fetched,
                        tickets = report.created,
                        replies = report.joined,
                        ignored = report.ignored,
                        duplicates = report.duplicates,
                        "poll done"
                    );
                }
                if !reader.idle {
                    jittered(reader.poll_interval)
                } else {
                    match reader::wait_for_mail(&reader, &mut link, &cancel).await {
                        Idled::Changed => continue,
                        Idled::Cancelled => break,
                        Idled::Unsupported => jittered(reader.poll_interval),
                        Idled::Lost(e) => {
                            // Polling at once reconnects; the backoff keeps
                            // a server that drops every IDLE from being
                            // hammered.
                            tracing::warn!(
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
                            state = e.state().as_str(),
                    error = %e,
                    "reader stopped until an admin acts; see `mail2ticket status`"
                );
                let baseline = sign_in_baseline(&ctx, &reader, e.state()).await;
                if !wait_for_release(&ctx, &reader, &cancel, baseline.as_ref()).await {
                    break;
                }
                tracing::info!("reader released; polling again");
                if let Some(request) = reader::token_request(&reader) {
                    ctx.tokens.reload(&request).await;
                }
                failures = 0;
                continue;
            }
            Err(e) => {
                let progressed = meter.batches_committed() > committed_before;
                failures = failures_after(failures, progressed);
                let delay = backoff(failures, reader.poll_interval)
                    // Honour Retry-After, within reason: a bogus day-long
                    // value must not silence a reader.
                    .max(e.retry_after().unwrap_or_default().min(MAX_RETRY_AFTER));
                tracing::warn!(
                            error = %e,
                    failures,
                    progressed,
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

/// What a reader parked for a sign-in compares the stored refresh token
/// with.
struct SignInBaseline(Option<TokenVersion>);

/// `None` when a new sign-in is not what the reader waits for: parked for
/// another reason, or a login without refresh tokens.
async fn sign_in_baseline(
    ctx: &Context,
    reader: &ReaderConfig,
    state: ReaderState,
) -> Option<SignInBaseline> {
    if state != ReaderState::NeedsAuthorization {
        return None;
    }
    let request = reader::token_request(reader)?;
    match ctx.tokens.sign_in_baseline(&request).await {
        Ok(version) => Some(SignInBaseline(version)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stored sign-in");
            None
        }
    }
}

/// Waits until the reader's row leaves the parked state (a sign-in or a
/// successful `check` from another process), or the store holds a refresh
/// token other than `baseline`: a sign-in whose release came before this
/// reader parked would otherwise be missed. False when cancelled.
async fn wait_for_release(
    ctx: &Context,
    reader: &ReaderConfig,
    cancel: &CancellationToken,
    baseline: Option<&SignInBaseline>,
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
                tracing::warn!(error = %e, "cannot read the reader's state");
            }
        }
        if let (Some(baseline), Some(request)) = (baseline, reader::token_request(reader)) {
            match ctx
                .tokens
                .signed_in_since(&request, baseline.0.as_ref())
                .await
            {
                Ok(true) => {
                    tracing::info!("a newer sign-in is in the database");
                    return true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the stored sign-in"),
            }
        }
    }
}

/// The failures in a row after one more, for [`backoff`]. A poll that
/// committed mail before it failed (a link cut after 50 mails) counts as
/// the first failure of a new run: mail is moving, so the reader tries
/// again soon instead of backing off for up to 15 minutes; only polls that
/// got nothing done grow the backoff.
fn failures_after(failures: u32, progressed: bool) -> u32 {
    if progressed {
        1
    } else {
        failures.saturating_add(1)
    }
}

/// The poll interval give or take a tenth, drawn anew each time: readers
/// started together (a daemon start, a reload) would otherwise poll
/// together every interval for ever, a login rush a minute.
pub fn jittered(poll_interval: Duration) -> Duration {
    poll_interval.mul_f64(0.9 + rand::random::<f64>() * 0.2)
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

    #[test]
    fn intervals_are_spread_by_a_tenth_either_way() {
        let interval = Duration::from_secs(60);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(interval)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_secs(54) && *d <= Duration::from_secs(66)),
            "{draws:?}"
        );
        // Spread, not constant: readers started together drift apart.
        assert!(draws.iter().any(|d| *d < Duration::from_secs(58)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(62)));
    }

    #[test]
    fn a_failed_poll_that_committed_mail_does_not_grow_the_backoff() {
        let mut failures = 0;
        for _ in 0..5 {
            failures = failures_after(failures, false);
        }
        assert_eq!(failures, 5, "polls that got nothing done back off");
        failures = failures_after(failures, true);
        assert_eq!(failures, 1, "mail moved: the next try comes soon");
        assert_eq!(failures_after(failures, false), 2);
    }
}
