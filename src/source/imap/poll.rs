//! One IMAP poll: the UIDs to take (first contact, the watermark, what the
//! ledger owes), sized and fetched in batches, committed, and only then
//! given their after-step.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::errors::{ImapError, step};
use super::session::{Delivery, Selected, Session};
use super::{Connection, contained, uid_set};
use crate::config::ReaderConfig;
use crate::ops::metrics::ReaderMetrics;
use crate::source::{Batching, PollReport, SignInSecret, SourceError, batch};
use crate::store::{FolderPosition, Owed, Store};

/// A session for this poll: the kept one if it still answers, else a new
/// one with the folder selected.
async fn session_for_poll(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    kept: &mut Option<Connection>,
) -> Result<(Session, Selected), SourceError> {
    if let Some(mut conn) = kept.take() {
        // A NOOP both proves the connection and collects what changed.
        let session = &mut conn.session;
        match step(
            session.timeout,
            &session.scrub,
            "NOOP",
            session.inner.noop(),
        )
        .await
        {
            Ok(()) => return Ok((conn.session, conn.selected)),
            Err(e) => {
                tracing::debug!(error = %e, "kept IMAP connection is gone; reconnecting");
            }
        }
    }
    let mut session = Session::open(reader, credential).await?;
    let selected = session.select(&reader.folder).await?;
    Ok((session, selected))
}

/// Ingests everything new in the reader's folder, batch by batch. Stops
/// between batches when `cancel` fires; a batch being committed is always
/// finished first. With `idle = true` the connection is left in `kept` for
/// [`idle`](super::idle) and the next poll.
pub async fn poll(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
    cancel: &CancellationToken,
    kept: &mut Option<Connection>,
    meter: &ReaderMetrics,
) -> Result<PollReport, SourceError> {
    contained(poll_inner(reader, credential, store, cancel, kept, meter)).await
}

async fn poll_inner(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
    cancel: &CancellationToken,
    kept: &mut Option<Connection>,
    meter: &ReaderMetrics,
) -> Result<PollReport, SourceError> {
    let (mut session, selected) = session_for_poll(reader, credential, kept).await?;
    let pos = position(reader, &selected);
    let mut report = PollReport::default();
    let mut after_failed: Option<ImapError> = None;

    // Mail committed by an earlier poll whose after-step did not happen.
    let pending = store.pending_after(&pos).await?;
    if run_after(&mut session, reader, &pending, &mut after_failed).await {
        store.mark_after_done(&pos, &pending).await?;
    }

    let watermark = store.watermark(&pos).await?;
    if watermark == 0
        && let Some(old) = store.other_uidvalidity(&pos).await?
    {
        tracing::warn!(
            folder = %reader.folder,
            old,
            new = pos.uidvalidity,
            backfill = %reader.backfill.as_str(),
            "UIDVALIDITY changed (the folder was recreated): a first contact again, where backfill decides what is taken; mail already stored is matched by Message-ID and content"
        );
    }
    let mut uids = uids_to_take(&mut session, store, reader, &pos, watermark).await?;
    // Whatever was announced up to here, this search has seen.
    session.take_announcements();
    // The ledger, not the highest UID, decides what is done: UIDs below
    // the watermark that the server did not deliver are asked for again.
    uids = with_owed(&mut session, store, &pos, uids).await?;
    if !uids.is_empty() {
        tracing::debug!(new = uids.len(), "new mail");
    }
    meter.backlog(uids.len());
    // One policy for the whole poll: the cap a mail is fetched with is the
    // limit its parse judges it by.
    let policy = reader.mail.current();
    let batching = Batching::of(reader, &policy);
    let sizes = if uids.is_empty() {
        HashMap::new()
    } else {
        session.sizes(&uids).await?
    };
    // A mail the server did not size is planned as if it were as large as
    // it may be fetched.
    let declared: Vec<u64> = uids
        .iter()
        .map(|uid| sizes.get(uid).copied().unwrap_or(batching.fetch_cap))
        .collect();
    // Batch k+1 is fetched while batch k is parsed and committed, so at
    // most two batches of raw mail are in flight, each within
    // max(batch_bytes, max_email_size) (plus, briefly, the crate's copy of
    // the one response being read).
    let chunks: Vec<&[u32]> = batching
        .plan(&declared)
        .into_iter()
        .map(|range| &uids[range])
        .collect();
    let fetching = Fetching {
        sizes: &sizes,
        cap: batching.fetch_cap,
        cancel,
        meter,
    };
    let mut next = match chunks.first() {
        Some(first) => fetching.fetch(&mut session, first).await?,
        None => None,
    };
    // Committed, after-step not yet done on the server.
    let mut undone: Vec<u32> = Vec::new();
    // After-step done on the server, not yet recorded in the ledger.
    let mut done: Vec<u32> = Vec::new();
    // Asked for, not delivered, still owed after this poll.
    let mut undelivered: Vec<u32> = Vec::new();
    let mut undelivered_words = String::new();
    let mut index = 0;
    while let Some(delivery) = next.take() {
        let Delivery {
            mails: raw,
            missing,
            refused,
        } = delivery;
        let following = chunks.get(index + 1).copied();
        let to_do = std::mem::take(&mut undone);
        let to_record = std::mem::take(&mut done);
        // Two lanes: the store parses and commits batch k (recording batch
        // k-2's after-steps in the same transaction, so the lanes never
        // wait on each other's database lock) while the IMAP session does
        // batch k-1's after-step and fetches batch k+1. The commit is
        // deliberately not raced with `cancel`: a batch that started
        // committing is finished, so shutdown never loses work.
        let started = std::time::Instant::now();
        let (committed, (after_ok, prefetched)) = tokio::join!(
            async {
                // Owed before anything above them is committed: the
                // positions may then pass them, the ledger still has them.
                let words = match &refused {
                    Some(answer) => format!("it answered {answer}"),
                    None => "its answer left them out or had no body".to_string(),
                };
                let owed = store.owe(&pos, &missing, &words).await?;
                let (pos, to_record) = (&pos, &to_record);
                let (uids, outcome) = batch::ingest(
                    raw,
                    &reader.name,
                    &policy,
                    meter,
                    &mut report,
                    |parsed| async move {
                        store
                            .commit_batch(crate::store::Batch::Imap {
                                position: pos,
                                mails: &parsed,
                                after_done: to_record,
                            })
                            .await
                    },
                )
                .await?;
                Ok::<_, SourceError>((uids, outcome, owed, words))
            },
            async {
                let ok = run_after(&mut session, reader, &to_do, &mut after_failed).await;
                let prefetched = match following {
                    Some(chunk) => fetching.fetch(&mut session, chunk).await,
                    None => Ok(None),
                };
                (ok, prefetched)
            }
        );
        let (committed, outcome, owed, words) = committed?;
        for owed in owed {
            match owed {
                Owed::Again { uid, attempts } => {
                    tracing::warn!(uid, attempts, server = %words, "the IMAP server did not deliver a mail; asking again next poll");
                    undelivered.push(uid);
                    undelivered_words.clone_from(&words);
                }
                Owed::SetAside { uid, email } => {
                    tracing::warn!(uid, email, server = %words, "the IMAP server kept refusing a mail; set aside in the quarantine");
                    report.quarantined += 1;
                }
            }
        }
        tracing::debug!(
            mails = committed.len(),
            created = outcome.created,
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        undone = committed;
        if after_ok {
            done = to_do;
        }
        next = prefetched?;
        index += 1;
    }
    if run_after(&mut session, reader, &undone, &mut after_failed).await {
        done.extend(undone);
    }
    store.mark_after_done(&pos, &done).await?;
    store.settle_owed(&pos).await?;
    report.interrupted = cancel.is_cancelled() && index < chunks.len();
    if let Some(e @ ImapError::NoMoveTarget { .. }) = after_failed {
        // The tickets exist; the admin must fix the target before mail
        // can leave the folder.
        session.logout().await;
        return Err(e.into());
    }
    // What was delivered is committed; what was not must not pass for a
    // good poll.
    if !undelivered.is_empty() {
        session.logout().await;
        undelivered.sort_unstable();
        return Err(ImapError::Undelivered {
            folder: reader.folder.clone(),
            count: undelivered.len(),
            uids: uid_set(&undelivered),
            words: undelivered_words,
        }
        .into());
    }
    if let Some(e) = after_failed {
        session.logout().await;
        return Err(ImapError::AfterStep {
            after: reader.after.as_str(),
            source: Box::new(e),
        }
        .into());
    }
    if reader.idle && !cancel.is_cancelled() {
        *kept = Some(Connection { session, selected });
    } else {
        session.logout().await;
    }
    Ok(report)
}

/// The UIDs this poll takes. At first contact with the folder (at this
/// UIDVALIDITY) that is what `backfill` takes of the mail already there,
/// recorded with its floor before anything is fetched. After it: every UID
/// above both the watermark and the floor, and any UID the first contact
/// took that is not in the ledger yet (a first poll cut short).
async fn uids_to_take(
    session: &mut Session,
    store: &Store,
    reader: &ReaderConfig,
    pos: &FolderPosition,
    watermark: u32,
) -> Result<Vec<u32>, SourceError> {
    let floor = match store.imap_floor(pos).await? {
        Some(floor) => floor.floor,
        // Mail ingested before first contacts were recorded: no floor.
        None if watermark > 0 => 0,
        None => {
            let plan = session.first_contact(reader.backfill).await?;
            let backfill = reader.backfill.as_str();
            store
                .record_imap_first_contact(pos, &backfill, plan.messages, plan.floor, &plan.taken)
                .await?;
            let skipped = plan.messages.saturating_sub(plan.taken.len());
            tracing::info!(
                folder = %reader.folder,
                messages = plan.messages,
                taken = plan.taken.len(),
                skipped,
                backfill = %backfill,
                "first contact with the folder: backfill takes {} of the {} mails already there; \
                 the {skipped} others stay in the folder untouched and are never taken",
                plan.taken.len(),
                plan.messages,
            );
            return Ok(plan.taken);
        }
    };
    uids_since_first_contact(session, store, pos, watermark, floor).await
}

/// After first contact: every UID above both the watermark and the floor,
/// and the UIDs the first contact took that are not in the ledger yet.
pub(super) async fn uids_since_first_contact(
    session: &mut Session,
    store: &Store,
    pos: &FolderPosition,
    watermark: u32,
    floor: u32,
) -> Result<Vec<u32>, SourceError> {
    let mut uids = session.uids_after(watermark.max(floor)).await?;
    let owed = store.imap_backfill_owed(pos).await?;
    if !owed.is_empty() {
        // Only those still in the folder.
        uids.extend(session.existing(&owed).await?);
        uids.sort_unstable();
        uids.dedup();
    }
    Ok(uids)
}

/// What every fetch of one poll shares.
struct Fetching<'a> {
    sizes: &'a HashMap<u32, u64>,
    cap: u64,
    cancel: &'a CancellationToken,
    meter: &'a ReaderMetrics,
}

impl Fetching<'_> {
    /// Fetches `uids`, or returns `None` once shutdown has begun.
    async fn fetch(
        &self,
        session: &mut Session,
        uids: &[u32],
    ) -> Result<Option<Delivery>, ImapError> {
        if self.cancel.is_cancelled() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        tokio::select! {
            raw = session.fetch(uids, self.sizes, self.cap) => {
                let raw = raw?;
                self.meter.fetched(started.elapsed());
                Ok(Some(raw))
            }
            () = self.cancel.cancelled() => Ok(None),
        }
    }
}

/// Runs the after-step for committed mail; true when the server confirmed
/// it. A failure is not a failed poll: the tickets exist, and the ledger
/// keeps the UIDs pending until a later poll succeeds. The first failure
/// is kept in `failed` for the caller.
async fn run_after(
    session: &mut Session,
    reader: &ReaderConfig,
    uids: &[u32],
    failed: &mut Option<ImapError>,
) -> bool {
    if uids.is_empty() || failed.is_some() {
        return uids.is_empty();
    }
    match session.after_step(&reader.after, uids).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                after = %reader.after.as_str(),
                count = uids.len(),
                error = %e,
                "after-step failed for ingested mail; will retry next poll"
            );
            *failed = Some(e);
            false
        }
    }
}

/// `uids` (new mail) together with the UIDs the ledger owes that the
/// folder still holds, ascending; an owed UID the folder no longer holds
/// (expunged before it could be delivered) is forgotten, with a history
/// line saying so.
async fn with_owed(
    session: &mut Session,
    store: &Store,
    pos: &FolderPosition,
    mut uids: Vec<u32>,
) -> Result<Vec<u32>, SourceError> {
    let owed = store.owed_uids(pos).await?;
    if owed.is_empty() {
        return Ok(uids);
    }
    let present = session.existing(&owed).await?;
    let gone: Vec<u32> = owed
        .iter()
        .copied()
        .filter(|u| present.binary_search(u).is_err())
        .collect();
    if !gone.is_empty() {
        tracing::warn!(uids = %uid_set(&gone), "mail the server had not delivered is gone from the folder");
        store
            .forget_owed(pos, &gone, "the folder no longer holds them")
            .await?;
    }
    uids.extend(present);
    uids.sort_unstable();
    uids.dedup();
    Ok(uids)
}

pub(super) fn position(reader: &ReaderConfig, selected: &Selected) -> FolderPosition {
    FolderPosition {
        reader: reader.name.clone(),
        folder: reader.folder.clone(),
        uidvalidity: selected.uidvalidity,
    }
}
