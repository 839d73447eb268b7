//! Mailbox sources: one module per protocol, each owning how its protocol
//! finds new mail, hands it to ingest and the store, and cleans up after.
//!
//! No protocol module knows another; `crate::reader` picks one by the
//! reader's `protocol`. What every protocol shares lives here: the
//! failures ([`SourceError`]), the batch driver (`batch`: parse, commit,
//! meter, report), batch planning ([`Batching`]), what a poll and a check
//! report, and the quoting of server text (`crate::scrub::printable`).

use std::ops::Range;

use secrecy::SecretString;

use crate::config::{Backfill, MailPolicy};

pub(crate) mod batch;
mod error;
pub mod graph;
pub mod imap;
pub mod pop3;
pub mod refusal;

pub use self::error::SourceError;

/// The secret a mailbox session (IMAP, POP3, SMTP submission) signs in
/// with; the user name is the reader's `username`. Not `auth`'s client
/// authentication, which is how the app proves itself to the token
/// endpoint.
pub enum SignInSecret {
    /// An OAuth access token, sent with SASL XOAUTH2.
    Token(SecretString),
    /// A password, sent with SASL PLAIN (or the protocol's plain login).
    Password(SecretString),
}

/// What one poll of a source did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollReport {
    /// Mails fetched from the server.
    pub fetched: usize,
    /// Tickets opened.
    pub created: usize,
    /// Mails that joined an existing ticket.
    pub joined: usize,
    /// Mails the guard or a rule kept out of tickets (recorded as emails).
    pub ignored: usize,
    /// Mails already known by Message-ID or content.
    pub duplicates: usize,
    /// Mails set aside in the quarantine (`mail2ticket quarantine list`).
    pub quarantined: usize,
    /// True when the poll stopped early for shutdown.
    pub interrupted: bool,
}

/// What `check` learns about a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub messages: u32,
    /// Messages not yet ingested.
    pub waiting: usize,
    /// The server capabilities mail2ticket uses, of those it has (e.g.
    /// IDLE, MOVE, UIDPLUS for IMAP; UIDL for POP3).
    pub capabilities: Vec<&'static str>,
    /// Set before the reader's first poll of the mailbox: what `backfill`
    /// would take of the mail there (`waiting` is then that much).
    pub first_contact: Option<FirstContactPreview>,
}

/// What the first poll of a mailbox would take of the mail in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstContactPreview {
    pub backfill: Backfill,
    pub messages: usize,
    pub taken: usize,
}

impl std::fmt::Display for FirstContactPreview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "first contact: backfill = \"{}\" would take {} of {} (skipping {})",
            self.backfill.as_str(),
            self.taken,
            self.messages,
            self.messages.saturating_sub(self.taken)
        )
    }
}

/// How much of each mail is fetched and how many go in one batch; from the
/// reader (`batch_size`, `batch_bytes`) and its mail policy
/// (`max_email_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_mails: usize,
    pub max_bytes: u64,
    /// A mail larger than this is fetched only up to it.
    pub fetch_cap: u64,
}

impl Batching {
    pub fn of(reader: &crate::config::ReaderConfig, policy: &MailPolicy) -> Batching {
        Batching {
            max_mails: reader.batch_size,
            max_bytes: reader.batch_bytes,
            fetch_cap: policy.tickets.max_email_size,
        }
    }

    /// The bytes fetched of a mail of `size` bytes.
    pub fn fetched(&self, size: u64) -> u64 {
        size.min(self.fetch_cap)
    }

    /// Splits mails of the given (declared) sizes, in order, into batches:
    /// a batch closes when the next mail would take it past `max_mails` or
    /// `max_bytes` of fetched bytes, but always holds at least one mail, so
    /// a single mail over `max_bytes` is a batch of its own and nothing is
    /// ever left behind. Returns index ranges into `sizes`.
    pub fn plan(&self, sizes: &[u64]) -> Vec<Range<usize>> {
        let mut batches = Vec::new();
        let mut start = 0;
        let mut bytes: u64 = 0;
        for (i, &size) in sizes.iter().enumerate() {
            let cost = self.fetched(size);
            let count = i - start;
            if count > 0 && (count >= self.max_mails || bytes.saturating_add(cost) > self.max_bytes)
            {
                batches.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes = bytes.saturating_add(cost);
        }
        if start < sizes.len() {
            batches.push(start..sizes.len());
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(max_mails: usize, max_bytes: u64, fetch_cap: u64) -> Batching {
        Batching {
            max_mails,
            max_bytes,
            fetch_cap,
        }
    }

    #[test]
    fn batches_close_at_the_byte_bound() {
        let b = batching(100, 10, 1000);
        assert_eq!(b.plan(&[4, 4, 2, 1, 9, 1]), vec![0..3, 3..5, 5..6]);
        assert_eq!(b.plan(&[]), Vec::<Range<usize>>::new());
    }

    #[test]
    fn batches_close_at_the_mail_count() {
        let b = batching(2, 1000, 1000);
        assert_eq!(b.plan(&[1, 1, 1, 1, 1]), vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn a_mail_over_the_bound_is_a_batch_of_its_own() {
        let b = batching(100, 10, 1000);
        assert_eq!(b.plan(&[3, 50, 3, 3]), vec![0..1, 1..2, 2..4]);
        assert_eq!(b.plan(&[50]), vec![0..1]);
        assert_eq!(b.plan(&[50, 60]), vec![0..1, 1..2]);
    }

    #[test]
    fn oversize_mails_count_only_what_is_fetched() {
        // 100 mails of 25 "MB" with a cap of 5: at most two per batch of 10.
        let b = batching(100, 10, 5);
        let sizes = vec![25; 100];
        let plan = b.plan(&sizes);
        assert_eq!(plan.len(), 50);
        assert!(plan.iter().all(|r| r.len() == 2), "{plan:?}");
        assert_eq!(b.fetched(25), 5);
        assert_eq!(b.fetched(3), 3);
    }

    #[test]
    fn every_mail_is_in_exactly_one_batch() {
        let b = batching(3, 7, 4);
        let sizes: Vec<u64> = (0..50).map(|i| (i * 7919) % 13).collect();
        let plan = b.plan(&sizes);
        let mut next = 0;
        for r in &plan {
            assert_eq!(r.start, next);
            assert!(!r.is_empty() && r.len() <= 3, "{plan:?}");
            let bytes: u64 = sizes[r.clone()].iter().map(|&s| b.fetched(s)).sum();
            assert!(r.len() == 1 || bytes <= 7, "{r:?}: {bytes}");
            next = r.end;
        }
        assert_eq!(next, sizes.len());
    }
}
