//! Mailbox sources: one module per protocol, each owning how its protocol
//! finds new mail, hands it to ingest and the store, and cleans up after.
//!
//! No module here knows two protocols; `crate::reader` picks one by the
//! reader's `protocol`.

pub mod imap;

/// What one poll of a source did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollReport {
    /// Mails fetched from the server.
    pub fetched: usize,
    /// Tickets opened.
    pub created: usize,
    /// Mails already known by Message-ID or content.
    pub duplicates: usize,
    /// True when the poll stopped early for shutdown.
    pub interrupted: bool,
}

/// What `check` learns about a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub messages: u32,
    /// Messages not yet ingested.
    pub waiting: usize,
}
