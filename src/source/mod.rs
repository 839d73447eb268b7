//! Mailbox sources: one module per protocol, each owning how its protocol
//! finds new mail, hands it to ingest and the store, and cleans up after.
//!
//! No module here knows two protocols; `crate::reader` picks one by the
//! reader's `protocol`.

use secrecy::SecretString;

pub mod imap;
pub mod pop3;

/// What a source logs in with; the user name is the reader's `username`.
pub enum Credential {
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
}
