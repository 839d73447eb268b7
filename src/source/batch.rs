//! One batch of fetched mail through to the store, the same for every
//! protocol: parse, commit, meter, count in the poll's report. What differs
//! is only how a protocol fetches and how its ledger commits (IMAP by UID
//! in a folder position, POP3 by UIDL), which the caller passes in.

use std::future::Future;
use std::sync::Arc;

use super::{PollReport, SourceError};
use crate::config::MailPolicy;
use crate::ingest::{self, Fetched, Incoming};
use crate::ops::metrics::ReaderMetrics;
use crate::outcome::BatchOutcome;
use crate::store::StoreError;

/// Parses `raw` (keyed by the protocol's id of each mail) under `policy`,
/// hands the parsed mail to `commit` (the protocol's one call into the
/// store, which records its ledger in the same transaction), meters the
/// commit and adds it to `report`. Returns the keys committed, in order,
/// and the outcome.
pub(crate) async fn ingest<K, C, Fut>(
    raw: Vec<(K, Fetched)>,
    reader: &str,
    policy: &Arc<MailPolicy>,
    meter: &ReaderMetrics,
    report: &mut PollReport,
    commit: C,
) -> Result<(Vec<K>, BatchOutcome), SourceError>
where
    K: Clone + Send + 'static,
    C: FnOnce(Vec<(K, Incoming)>) -> Fut,
    Fut: Future<Output = Result<BatchOutcome, StoreError>>,
{
    report.fetched += raw.len();
    let mails = raw.len();
    let parsed = ingest::parse_batch(raw, reader, policy).await?;
    let keys: Vec<K> = parsed.iter().map(|(key, _)| key.clone()).collect();
    let committing = std::time::Instant::now();
    let outcome = commit(parsed).await?;
    meter.committed(&outcome, committing.elapsed());
    meter.taken(mails);
    report.created += outcome.created;
    report.joined += outcome.joined;
    report.ignored += outcome.ignored_total();
    report.quarantined += outcome.quarantined;
    report.duplicates += outcome.duplicates;
    Ok((keys, outcome))
}
