//! One poll of a Microsoft Graph reader: new mail by delta query, its MIME
//! through the shared batch driver, the after-step once the commit is done.
//!
//! Owns the order that makes Graph exactly-once: the ledger
//! (`graph_messages`, keyed by immutable id) decides what is new, never the
//! delta round, so a repeated or full round (an expired delta link, a
//! crash before the link was saved) duplicates nothing. After-steps run
//! only for committed mail and stay pending in the ledger until Graph
//! confirms them; a poll first retries those left by an earlier one. The
//! delta link is saved only once the whole round is committed. While the
//! client waits out throttling or an outage, `last_error` says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{AfterStep, FolderId, GraphClient, GraphOptions, MAILBOX_CONCURRENCY};
use super::delta::DeltaItem;
use super::errors::GraphError;
use super::http::{Wait, WaitHook};
use super::token::GraphToken;
use crate::config::{After, Backfill, ReaderConfig, Tls};
use crate::ingest::Fetched;
use crate::ops::metrics::ReaderMetrics;
use crate::source::{Batching, PollReport, SourceError, batch};
use crate::store::{Batch, Store};

/// The client of `reader`'s mailbox: its host, port and trust, its
/// timeout, and whether its token is app-only.
pub fn client_for(
    reader: &ReaderConfig,
    token: Arc<dyn GraphToken>,
) -> Result<GraphClient, GraphError> {
    let scheme = match reader.tls {
        // Config allows plain HTTP only to loopback; the client checks again.
        Tls::None => "http",
        Tls::Implicit | Tls::StartTls => "https",
    };
    // An IPv6 literal needs its brackets in a URL.
    let host = if reader.host.contains(':') && !reader.host.starts_with('[') {
        format!("[{}]", reader.host)
    } else {
        reader.host.clone()
    };
    let mut options = GraphOptions::new(&reader.username);
    options.base_url = format!("{scheme}://{host}:{}", reader.port);
    options.ca_file = reader.ca_file.clone();
    options.timeout = reader.timeout;
    options.app_only = reader.oauth().is_some_and(|o| o.grant.is_app_only());
    GraphClient::new(options, token)
}

/// What a Graph reader keeps from one poll to the next.
#[derive(Debug, Default)]
pub struct Kept {
    /// `after = "move:…"`'s folder resolved to its id, once: not a lookup
    /// per poll. Dropped when a move finds the folder gone, so that one
    /// created again under the same name is found.
    move_target: Option<(String, FolderId)>,
}

/// Ingests the mail of `reader`'s folder not yet in the ledger; see the
/// module doc. `token` is where the bearer token comes from.
pub async fn poll(
    reader: &ReaderConfig,
    token: Arc<dyn GraphToken>,
    store: &Store,
    cancel: &CancellationToken,
    meter: &ReaderMetrics,
    kept: &mut Kept,
) -> Result<PollReport, SourceError> {
    // The client's wait hook is synchronous; the waits go through a
    // channel to this task, which writes them while the poll runs, and
    // always before the poll's outcome is recorded (which overwrites them).
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let hook: WaitHook = Arc::new(move |wait: &Wait| {
        // The receiver lives as long as the poll: a failed send only
        // means the poll is over.
        let _ = tx.send(wait.to_string());
    });
    let client = client_for(reader, token)?.with_wait_hook(hook);
    let work = Poll {
        client: &client,
        reader,
        store,
        cancel,
        meter,
        kept,
        after_failed: None,
    }
    .run();
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            result = &mut work => return result,
            Some(text) = rx.recv() => {
                if let Err(e) = store.record_waiting(&reader.name, &text).await {
                    tracing::warn!(error = %e, "could not show the wait in last_error");
                }
                tracing::info!("{text}");
            }
        }
    }
}

struct Poll<'a> {
    client: &'a GraphClient,
    reader: &'a ReaderConfig,
    store: &'a Store,
    cancel: &'a CancellationToken,
    meter: &'a ReaderMetrics,
    kept: &'a mut Kept,
    /// The first after-step that failed in this poll. Ingest goes on (the
    /// mail stays pending and is retried next poll, as with IMAP), so an
    /// after-step that keeps failing never holds new mail back; the poll
    /// reports it at the end.
    after_failed: Option<GraphError>,
}

impl Poll<'_> {
    async fn run(mut self) -> Result<PollReport, SourceError> {
        let mut report = PollReport::default();
        // Mail committed by an earlier poll whose after-step was not
        // confirmed: only the after-step is repeated.
        let pending = self.store.graph_pending(&self.reader.name).await?;
        self.after_steps(&pending).await?;

        let folder_key = self.reader.folder.as_str();
        let link = self
            .store
            .graph_delta_link(&self.reader.name, folder_key)
            .await?;
        let resumed = link.is_some();
        match self.round(link.as_deref(), &mut report).await {
            Err(SourceError::Graph(e)) if resumed && e.is_resync() => {
                // Graph forgot the sync state: a full round, once; the
                // ledger keeps it from taking anything twice.
                tracing::warn!(error = %e, "delta link expired; syncing the folder in full");
                self.store
                    .forget_graph_delta_link(&self.reader.name, folder_key)
                    .await?;
                self.round(None, &mut report).await?;
            }
            other => other?,
        }
        match self.after_failed.take() {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }

    /// One delta round from `link` (`None`: a full sync), every page's new
    /// mail committed, and the round's delta link saved at the end.
    async fn round(
        &mut self,
        link: Option<&str>,
        report: &mut PollReport,
    ) -> Result<(), SourceError> {
        let folder = match link {
            // The link names the folder: a steady-state poll is one request.
            Some(_) => FolderId {
                id: String::new(),
                path: self.reader.folder.clone(),
            },
            None => self.client.resolve_folder(&self.reader.folder).await?,
        };
        let folder_key = self.reader.folder.as_str();
        let met = self.store.graph_met(&self.reader.name, folder_key).await?;
        let mut delta_link = None;
        if met {
            let mut pager = self.client.delta_pages(&folder, link)?;
            while let Some(page) = pager.next_page().await? {
                if self.cancel.is_cancelled() {
                    report.interrupted = true;
                    return Ok(());
                }
                self.take(page.items, report).await?;
                if report.interrupted {
                    return Ok(());
                }
                delta_link = page.delta_link.or(delta_link);
            }
        } else {
            // First contact: what backfill leaves is decided over the whole
            // folder and recorded before anything is fetched. Only the
            // listing (ids, dates, read state) is held, never the mail.
            let round = self.client.delta(&folder, link).await?;
            let skipped = skipped_at_first_contact(self.reader.backfill, &round.items);
            let backfill = self.reader.backfill.as_str();
            self.store
                .record_graph_first_contact(
                    &self.reader.name,
                    folder_key,
                    &backfill,
                    round.items.len(),
                    &skipped,
                )
                .await?;
            let taken = round.items.len().saturating_sub(skipped.len());
            // What a terminal's progress bar counts down.
            self.meter.backlog(taken);
            tracing::info!(
                messages = round.items.len(),
                taken,
                backfill = %backfill,
                "first contact with the folder: backfill takes {taken} of the {} mails already \
                 there; the others stay untouched and are never taken",
                round.items.len(),
            );
            let skipped: std::collections::HashSet<String> = skipped.into_iter().collect();
            let items: Vec<DeltaItem> = round
                .items
                .into_iter()
                .filter(|i| !skipped.contains(&i.id))
                .collect();
            self.take(items, report).await?;
            if report.interrupted {
                return Ok(());
            }
            delta_link = Some(round.delta_link);
        }
        if let Some(link) = delta_link.filter(|l| !l.is_empty()) {
            self.store
                .save_graph_delta_link(&self.reader.name, folder_key, &link)
                .await?;
        }
        Ok(())
    }

    /// Fetches, commits and after-steps those of `ids` the ledger does not
    /// know, in batches of at most `batch_size` mails and about
    /// `batch_bytes` (the sizes are known only once fetched, so a batch
    /// closes once it reaches the bound, at most one fetch round past it).
    async fn take(
        &mut self,
        items: Vec<DeltaItem>,
        report: &mut PollReport,
    ) -> Result<(), SourceError> {
        if items.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
        let known = self.store.graph_known(&self.reader.name, &ids).await?;
        // When Graph says each mail arrived (as IMAP's INTERNALDATE).
        let mut arrived: HashMap<String, Option<i64>> = HashMap::new();
        let mut new: Vec<String> = Vec::new();
        for item in items {
            if known.contains(&item.id) || arrived.contains_key(&item.id) {
                continue;
            }
            arrived.insert(item.id.clone(), unix_seconds(item.received.as_deref()));
            new.push(item.id);
        }
        if new.is_empty() {
            return Ok(());
        }
        tracing::debug!(new = new.len(), "new mail");
        let policy = self.reader.mail.current();
        let batching = Batching::of(self.reader, &policy);
        let mut rest = new.as_slice();
        while !rest.is_empty() {
            let mut raw: Vec<(String, Fetched)> = Vec::new();
            let mut bytes: u64 = 0;
            let fetching = std::time::Instant::now();
            while !rest.is_empty() && raw.len() < batching.max_mails && bytes < batching.max_bytes {
                if self.cancel.is_cancelled() {
                    report.interrupted = true;
                    break;
                }
                let width = MAILBOX_CONCURRENCY
                    .min(batching.max_mails.saturating_sub(raw.len()))
                    .clamp(1, rest.len());
                let (now, later) = rest.split_at(width);
                rest = later;
                for (id, mime) in self
                    .client
                    .fetch_many(now, batching.fetch_cap, MAILBOX_CONCURRENCY)
                    .await
                {
                    match mime {
                        Ok(mime) => {
                            let len = mime.bytes.len() as u64;
                            bytes = bytes.saturating_add(len);
                            // A cut-off mail is longer than what was read:
                            // the parse judges it over the limit.
                            let size = if mime.truncated {
                                len.max(batching.fetch_cap).saturating_add(1)
                            } else {
                                len
                            };
                            let arrived = arrived.get(&id).copied().flatten();
                            raw.push((
                                id,
                                Fetched {
                                    bytes: mime.bytes,
                                    size,
                                    arrived,
                                },
                            ));
                        }
                        // Deleted or moved away between the listing and
                        // the fetch: nothing to take.
                        Err(GraphError::MessageGone { id, .. }) => {
                            tracing::info!(id = %id, "message gone before it was fetched");
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if raw.is_empty() {
                break;
            }
            self.meter.fetched(fetching.elapsed());
            let pending = self.reader.after != After::Keep;
            let reader = &self.reader.name;
            let store = self.store;
            let (committed, _) = batch::ingest(
                raw,
                reader,
                &policy,
                self.meter,
                report,
                |parsed| async move {
                    store
                        .commit_batch(Batch::Graph {
                            reader,
                            mails: &parsed,
                            pending,
                        })
                        .await
                },
            )
            .await?;
            if pending {
                self.after_steps(&committed).await?;
            }
            if report.interrupted {
                break;
            }
        }
        Ok(())
    }

    /// Runs the after-step for `ids` (committed mail), a few at a time
    /// within the mailbox's bound, and records those Graph confirmed (or
    /// that are gone already). Only the store's failures end the poll
    /// here; Graph's are kept in `after_failed`, and once one failed the
    /// rest of the poll's after-steps wait for the next poll rather than
    /// press a server that is refusing or throttling.
    async fn after_steps(&mut self, ids: &[String]) -> Result<(), SourceError> {
        if ids.is_empty() || self.after_failed.is_some() {
            return Ok(());
        }
        let target = match &self.reader.after {
            // The reader no longer changes mail: nothing is owed.
            After::Keep => {
                self.store.mark_graph_done(&self.reader.name, ids).await?;
                return Ok(());
            }
            After::Move(path) => {
                let path = path.clone();
                match self.move_target(&path).await {
                    Ok(folder) => Some(folder),
                    Err(e) => {
                        self.after_failed = Some(e);
                        return Ok(());
                    }
                }
            }
            After::Seen | After::Delete => None,
        };
        let client = self.client;
        let after = &self.reader.after;
        let target = target.as_ref();
        let results: Vec<(String, Result<AfterStep, GraphError>)> =
            futures::stream::iter(ids.iter().cloned())
                .map(|id| async move {
                    let step = match (after, target) {
                        (After::Move(_), Some(folder)) => client.move_to(&id, folder).await,
                        (After::Delete, _) => client.delete(&id).await,
                        _ => client.mark_read(&id).await,
                    };
                    (id, step)
                })
                .buffered(MAILBOX_CONCURRENCY)
                .collect()
                .await;
        let mut done = Vec::with_capacity(results.len());
        for (id, step) in results {
            match step {
                Ok(AfterStep::Done | AfterStep::AlreadyGone) => done.push(id),
                Err(e) => {
                    if matches!(e, GraphError::NoMoveTarget { .. }) {
                        self.kept.move_target = None;
                    }
                    if self.after_failed.is_none() {
                        tracing::warn!(
                            after = %self.reader.after.as_str(),
                            error = %e,
                            "after-step failed for ingested mail; will retry next poll"
                        );
                        self.after_failed = Some(e);
                    }
                }
            }
        }
        self.store.mark_graph_done(&self.reader.name, &done).await?;
        Ok(())
    }

    async fn move_target(&mut self, path: &str) -> Result<FolderId, GraphError> {
        // A reload may have changed the target's name.
        if let Some((_, folder)) = self.kept.move_target.as_ref().filter(|(p, _)| p == path) {
            return Ok(folder.clone());
        }
        let folder = match self.client.resolve_folder(path).await {
            Ok(folder) => folder,
            Err(GraphError::NoFolder { mailbox, .. }) => {
                return Err(GraphError::NoMoveTarget {
                    mailbox,
                    folder: path.to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        self.kept.move_target = Some((path.to_owned(), folder.clone()));
        Ok(folder)
    }
}

/// Graph's `receivedDateTime` (RFC 3339, UTC) in Unix seconds.
fn unix_seconds(received: Option<&str>) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(received?).ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

/// The ids `backfill` leaves of the mail listed at first contact, by the
/// same rules as IMAP: `unseen` leaves what was read already, `none`
/// everything, a period what was received before it; `all` takes all. A
/// mail without a readable date is taken.
pub(super) fn skipped_at_first_contact(backfill: Backfill, items: &[DeltaItem]) -> Vec<String> {
    let leave = |item: &DeltaItem| match backfill {
        Backfill::All => false,
        Backfill::None => true,
        Backfill::Unseen => item.is_read,
        Backfill::Within(period) => {
            let since = SystemTime::now().checked_sub(period).unwrap_or(UNIX_EPOCH);
            item.received
                .as_deref()
                .and_then(|r| humantime::parse_rfc3339_weak(r).ok())
                .is_some_and(|received| received < since)
        }
    };
    items
        .iter()
        .filter(|i| leave(i))
        .map(|i| i.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn item(id: &str, received: Option<&str>, is_read: bool) -> DeltaItem {
        DeltaItem {
            id: id.to_owned(),
            internet_message_id: None,
            received: received.map(str::to_owned),
            is_read,
        }
    }

    #[test]
    fn first_contact_follows_backfill() {
        let recent = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let items = [
            item("old-read", Some("2001-01-01T00:00:00Z"), true),
            item("new-unread", Some(&recent), false),
            item("undated", None, false),
        ];
        assert!(skipped_at_first_contact(Backfill::All, &items).is_empty());
        assert_eq!(skipped_at_first_contact(Backfill::None, &items).len(), 3);
        assert_eq!(
            skipped_at_first_contact(Backfill::Unseen, &items),
            vec!["old-read".to_owned()]
        );
        assert_eq!(
            skipped_at_first_contact(Backfill::Within(Duration::from_secs(86_400)), &items),
            vec!["old-read".to_owned()]
        );
    }
}
