//! Ingest: turning raw RFC 5322 bytes into what a ticket needs.
//!
//! Owns the rule that every mail becomes *something*: a mail the parser
//! cannot fully understand still yields a [`ParsedMail`] (at worst the raw
//! text as its body, with a `parse_note`), so a bad mail never stalls a
//! mailbox or sends a reader into a retry loop.

mod parse;

pub use parse::{Attachment, ParsedMail, parse};
