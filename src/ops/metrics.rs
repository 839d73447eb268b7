//! Metrics: per-reader counters, gauges and histograms in a Prometheus
//! registry, rendered for `/metrics`.
//!
//! Owns the metric names and labels (a public interface: dashboards and
//! alerts are built on them) and their encoding, which prometheus-client
//! does. One [`Metrics`] per daemon, no global registry; each reader task
//! holds a [`ReaderMetrics`] with its label filled in.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::outcome::{BatchOutcome, FailureClass, ReaderState, Reason};

/// The content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const STATES: [ReaderState; 4] = [
    ReaderState::Ok,
    ReaderState::Retrying,
    ReaderState::NeedsAuthorization,
    ReaderState::Misconfigured,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReaderLabel {
    reader: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    reader: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IgnoredLabels {
    reader: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    reader: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AckLabels {
    reader: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    result: &'static str,
}

type DurationFamily = Family<ReaderLabel, Histogram, fn() -> Histogram>;

/// Durations from 5 ms to about 80 s: one fetch or commit of a batch.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

#[derive(Debug)]
struct Families {
    polls: Family<ReaderLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    tickets_created: Family<ReaderLabel, Counter>,
    emails_ingested: Family<ReaderLabel, Counter>,
    emails_ignored: Family<IgnoredLabels, Counter>,
    emails_quarantined: Family<ReaderLabel, Counter>,
    token_refreshes: Family<ReaderLabel, Counter>,
    last_success: Family<ReaderLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    state: Family<StateLabels, Gauge>,
    fetch_duration: DurationFamily,
    commit_duration: DurationFamily,
    reloads: Family<ReloadLabel, Counter>,
    acks: Family<AckLabels, Counter>,
    /// Failed polls in a row, as `status` shows them (from the database).
    consecutive_failures: Family<ReaderLabel, Gauge>,
    /// 1 when `status` calls the reader stale.
    stale: Family<ReaderLabel, Gauge>,
    refresh_token_used: Family<ReaderLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Mails found on the server that the running poll has yet to fetch.
    backlog: Family<ReaderLabel, Gauge>,
    heartbeat: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Mails fetched and committed, for the progress of `run --once`
    /// (`ops::progress`); not exported.
    taken: Family<ReaderLabel, Counter>,
    /// `taken` when the running poll found its backlog; not exported.
    poll_start: Family<ReaderLabel, Gauge>,
    /// Batches committed, for the scheduler's backoff (a failed poll that
    /// committed some is not stuck); not exported.
    batches: Family<ReaderLabel, Counter>,
}

/// The daemon's registry; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    families: Arc<Families>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let families = Families {
            polls: Family::default(),
            failures: Family::default(),
            tickets_created: Family::default(),
            emails_ingested: Family::default(),
            emails_ignored: Family::default(),
            emails_quarantined: Family::default(),
            token_refreshes: Family::default(),
            last_success: Family::default(),
            state: Family::default(),
            fetch_duration: Family::new_with_constructor(duration_histogram),
            commit_duration: Family::new_with_constructor(duration_histogram),
            reloads: Family::default(),
            acks: Family::default(),
            consecutive_failures: Family::default(),
            stale: Family::default(),
            refresh_token_used: Family::default(),
            backlog: Family::default(),
            heartbeat: Gauge::default(),
            taken: Family::default(),
            poll_start: Family::default(),
            batches: Family::default(),
        };
        let mut registry = Registry::with_prefix("mail2ticket");
        let f = &families;
        registry.register("polls", "Polls started", f.polls.clone());
        registry.register(
            "poll_failures",
            "Failed polls by class: auth, connection, protocol, store, config",
            f.failures.clone(),
        );
        registry.register(
            "tickets_created",
            "Tickets opened",
            f.tickets_created.clone(),
        );
        registry.register(
            "emails_ingested",
            "Mails that opened or joined a ticket",
            f.emails_ingested.clone(),
        );
        registry.register(
            "emails_ignored",
            "Mails that opened no ticket: duplicates, and what the guard or a rule kept out, by reason",
            f.emails_ignored.clone(),
        );
        registry.register(
            "emails_quarantined",
            "Mails set aside whole because they could not be made into a ticket \
             (see `mail2ticket quarantine list`)",
            f.emails_quarantined.clone(),
        );
        registry.register(
            "token_refreshes",
            "Access tokens obtained from the identity platform",
            f.token_refreshes.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful poll",
            f.last_success.clone(),
        );
        registry.register(
            "reader_state",
            "1 for the reader's current state, 0 for the others",
            f.state.clone(),
        );
        registry.register(
            "fetch_duration_seconds",
            "Time to fetch one batch from the mail server",
            f.fetch_duration.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "Time to commit one batch to the database",
            f.commit_duration.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result (ok, error)",
            f.reloads.clone(),
        );
        registry.register(
            "acks",
            "Acknowledgement attempts by result: sent, retry (failed, tried again later), \
             failed (given up)",
            f.acks.clone(),
        );
        registry.register(
            "consecutive_failures",
            "Polls that failed in a row since the reader's last success",
            f.consecutive_failures.clone(),
        );
        registry.register(
            "reader_stale",
            "1 when the reader had no success for three poll intervals (as `status` says)",
            f.stale.clone(),
        );
        registry.register(
            "refresh_token_last_used_timestamp_seconds",
            "Unix time the reader's refresh token was last used (delegated grants only); \
             Entra ID ends one after 90 days without use",
            f.refresh_token_used.clone(),
        );
        registry.register(
            "backlog_mails",
            "Mails the running poll found on the server and has yet to fetch",
            f.backlog.clone(),
        );
        registry.register(
            "heartbeat_timestamp_seconds",
            "Unix time of the scheduler's last heartbeat written to the database",
            f.heartbeat.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            families: Arc::new(families),
        }
    }

    /// The handle one reader records through.
    pub fn reader(&self, name: &str) -> ReaderMetrics {
        ReaderMetrics {
            label: ReaderLabel {
                reader: name.to_string(),
            },
            families: self.families.clone(),
        }
    }

    /// Drops every series of a reader that left the configuration.
    pub fn forget(&self, name: &str) {
        let f = &self.families;
        let label = ReaderLabel {
            reader: name.to_string(),
        };
        for family in [
            &f.polls,
            &f.tickets_created,
            &f.emails_ingested,
            &f.emails_quarantined,
            &f.token_refreshes,
            &f.batches,
            &f.taken,
        ] {
            family.remove(&label);
        }
        for family in [&f.consecutive_failures, &f.stale, &f.backlog, &f.poll_start] {
            family.remove(&label);
        }
        f.refresh_token_used.remove(&label);
        f.last_success.remove(&label);
        f.fetch_duration.remove(&label);
        f.commit_duration.remove(&label);
        for class in FailureClass::ALL {
            f.failures.remove(&FailureLabels {
                reader: name.to_string(),
                class: class.as_str(),
            });
        }
        for reason in ignored_reasons() {
            f.emails_ignored.remove(&IgnoredLabels {
                reader: name.to_string(),
                reason,
            });
        }
        for state in STATES {
            f.state.remove(&StateLabels {
                reader: name.to_string(),
                state: state.as_str(),
            });
        }
        for result in AckResult::ALL {
            f.acks.remove(&AckLabels {
                reader: name.to_string(),
                result: result.as_str(),
            });
        }
    }

    /// One acknowledgement attempt of `reader`'s outbox.
    pub fn ack(&self, reader: &str, result: AckResult) {
        self.families
            .acks
            .get_or_create(&AckLabels {
                reader: reader.to_string(),
                result: result.as_str(),
            })
            .inc();
    }

    /// What `status` judges of a configured reader from its row: failures
    /// in a row and whether it is stale.
    pub fn reader_health(&self, reader: &str, consecutive_failures: i64, stale: bool) {
        let label = ReaderLabel {
            reader: reader.to_string(),
        };
        let f = &self.families;
        f.consecutive_failures
            .get_or_create(&label)
            .set(consecutive_failures);
        f.stale.get_or_create(&label).set(i64::from(stale));
    }

    /// When `reader`'s refresh token was last used (Unix seconds); `None`
    /// drops the series (no refresh token, e.g. after a sign-in failed).
    pub fn refresh_token_used(&self, reader: &str, at: Option<f64>) {
        let label = ReaderLabel {
            reader: reader.to_string(),
        };
        match at {
            Some(at) => {
                self.families
                    .refresh_token_used
                    .get_or_create(&label)
                    .set(at);
            }
            None => {
                self.families.refresh_token_used.remove(&label);
            }
        }
    }

    /// A heartbeat was written.
    pub fn heartbeat(&self) {
        self.families.heartbeat.set(unix_now());
    }

    /// The mails `reader`'s running (or last) poll fetched and committed,
    /// and those it has yet to fetch: what a progress bar shows.
    pub fn progress(&self, reader: &str) -> (u64, u64) {
        let label = ReaderLabel {
            reader: reader.to_string(),
        };
        let f = &self.families;
        let taken = f.taken.get_or_create(&label).get();
        let start = u64::try_from(f.poll_start.get_or_create(&label).get()).unwrap_or(0);
        let backlog = u64::try_from(f.backlog.get_or_create(&label).get()).unwrap_or(0);
        (taken.saturating_sub(start), backlog)
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.families
            .reloads
            .get_or_create(&ReloadLabel { result })
            .inc();
    }

    /// The exposition: OpenMetrics when the scraper asks for it (`Accept`),
    /// else the classic Prometheus text format. Returns the content type
    /// and the body.
    pub fn render(&self, openmetrics: bool) -> (&'static str, String) {
        let mut body = String::new();
        // Writing into a String cannot fail.
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut body, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut body, &self.registry)
        };
        let content_type = if openmetrics {
            OPENMETRICS_TEXT
        } else {
            PROMETHEUS_TEXT
        };
        (content_type, body)
    }
}

/// How an acknowledgement attempt ended, for `mail2ticket_acks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckResult {
    Sent,
    /// Failed; the outbox tries again later.
    Retry,
    /// Failed for good (a final refusal, or out of attempts).
    Failed,
}

impl AckResult {
    const ALL: [AckResult; 3] = [AckResult::Sent, AckResult::Retry, AckResult::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            AckResult::Sent => "sent",
            AckResult::Retry => "retry",
            AckResult::Failed => "failed",
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Why a fetched mail opened or joined no ticket: a duplicate, or one of
/// the guard's reasons.
fn ignored_reasons() -> impl Iterator<Item = &'static str> {
    std::iter::once("duplicate").chain(Reason::ALL.iter().map(|r| r.as_str()))
}

/// One reader's view of the registry; cheap to clone.
#[derive(Clone, Debug)]
pub struct ReaderMetrics {
    label: ReaderLabel,
    families: Arc<Families>,
}

impl ReaderMetrics {
    pub fn poll_started(&self) {
        self.families.polls.get_or_create(&self.label).inc();
    }

    pub fn failed(&self, class: FailureClass) {
        self.families
            .failures
            .get_or_create(&FailureLabels {
                reader: self.label.reader.clone(),
                class: class.as_str(),
            })
            .inc();
    }

    pub fn succeeded(&self) {
        self.families
            .last_success
            .get_or_create(&self.label)
            .set(unix_now());
    }

    /// The poll found `mails` on the server to fetch.
    pub fn backlog(&self, mails: usize) {
        let f = &self.families;
        let taken = f.taken.get_or_create(&self.label).get();
        f.poll_start
            .get_or_create(&self.label)
            .set(i64::try_from(taken).unwrap_or(i64::MAX));
        f.backlog
            .get_or_create(&self.label)
            .set(i64::try_from(mails).unwrap_or(i64::MAX));
    }

    /// `mails` of them were fetched and committed. Never below zero: a
    /// protocol that does not announce its backlog only counts up `taken`.
    pub fn taken(&self, mails: usize) {
        let n = i64::try_from(mails).unwrap_or(i64::MAX);
        let f = &self.families;
        f.taken.get_or_create(&self.label).inc_by(mails as u64);
        let _ = f.backlog.get_or_create(&self.label).inner().fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |v| Some((v - n).max(0)),
        );
    }

    pub fn state(&self, current: ReaderState) {
        for state in STATES {
            self.families
                .state
                .get_or_create(&StateLabels {
                    reader: self.label.reader.clone(),
                    state: state.as_str(),
                })
                .set(i64::from(state == current));
        }
    }

    /// Batches committed so far; a poll that raised it made progress.
    pub fn batches_committed(&self) -> u64 {
        self.families.batches.get_or_create(&self.label).get()
    }

    pub fn token_obtained(&self) {
        self.families
            .token_refreshes
            .get_or_create(&self.label)
            .inc();
    }

    pub fn fetched(&self, took: Duration) {
        self.families
            .fetch_duration
            .get_or_create(&self.label)
            .observe(took.as_secs_f64());
    }

    /// A committed batch of `mails` fetched mails.
    pub fn committed(&self, outcome: &BatchOutcome, took: Duration) {
        let f = &self.families;
        f.batches.get_or_create(&self.label).inc();
        f.commit_duration
            .get_or_create(&self.label)
            .observe(took.as_secs_f64());
        f.tickets_created
            .get_or_create(&self.label)
            .inc_by(outcome.created as u64);
        f.emails_ingested
            .get_or_create(&self.label)
            .inc_by((outcome.created + outcome.joined) as u64);
        f.emails_quarantined
            .get_or_create(&self.label)
            .inc_by(outcome.quarantined as u64);
        f.emails_ignored
            .get_or_create(&IgnoredLabels {
                reader: self.label.reader.clone(),
                reason: "duplicate",
            })
            .inc_by(outcome.duplicates as u64);
        for reason in Reason::ALL {
            let n = outcome.ignored(reason);
            if n > 0 {
                f.emails_ignored
                    .get_or_create(&IgnoredLabels {
                        reader: self.label.reader.clone(),
                        reason: reason.as_str(),
                    })
                    .inc_by(n as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_each_reader_labelled_and_forgets_removed_ones() {
        let metrics = Metrics::new();
        let a = metrics.reader("a");
        a.poll_started();
        let mut ignored = [0; Reason::ALL.len()];
        ignored[0] = 4; // auto-reply
        a.committed(
            &BatchOutcome {
                created: 2,
                joined: 1,
                ignored,
                duplicates: 1,
                already_recorded: 0,
                quarantined: 1,
            },
            Duration::from_millis(20),
        );
        a.state(ReaderState::Retrying);
        a.failed(FailureClass::Connection);
        let b = metrics.reader("b");
        b.poll_started();
        metrics.reload(false);
        metrics.ack("a", AckResult::Retry);
        metrics.ack("a", AckResult::Sent);

        let (content_type, text) = metrics.render(false);
        assert_eq!(content_type, PROMETHEUS_TEXT);
        for line in [
            "mail2ticket_polls_total{reader=\"a\"} 1",
            "mail2ticket_tickets_created_total{reader=\"a\"} 2",
            "mail2ticket_emails_ingested_total{reader=\"a\"} 3",
            "mail2ticket_emails_ignored_total{reader=\"a\",reason=\"duplicate\"} 1",
            "mail2ticket_emails_ignored_total{reader=\"a\",reason=\"auto-reply\"} 4",
            "mail2ticket_emails_quarantined_total{reader=\"a\"} 1",
            "mail2ticket_poll_failures_total{reader=\"a\",class=\"connection\"} 1",
            "mail2ticket_reader_state{reader=\"a\",state=\"retrying\"} 1",
            "mail2ticket_reader_state{reader=\"a\",state=\"ok\"} 0",
            "mail2ticket_commit_duration_seconds_count{reader=\"a\"} 1",
            "mail2ticket_config_reloads_total{result=\"error\"} 1",
            "mail2ticket_polls_total{reader=\"b\"} 1",
            "mail2ticket_acks_total{reader=\"a\",result=\"retry\"} 1",
            "mail2ticket_acks_total{reader=\"a\",result=\"sent\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("# EOF"));

        metrics.forget("a");
        let (_, text) = metrics.render(true);
        assert!(!text.contains("reader=\"a\""), "{text}");
        assert!(text.contains("reader=\"b\""));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
