//! Ingest: turning raw RFC 5322 bytes into what a ticket needs.
//!
//! Owns the rule that every mail becomes *something*: a mail the parser
//! cannot fully understand still yields a [`ParsedMail`] (at worst the raw
//! text as its body, with a `parse_note`), so a bad mail never stalls a
//! mailbox or sends a reader into a retry loop.

mod parse;

pub use parse::{Attachment, ParsedMail, parse};

/// The parsing task could not run (the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the mail parser task failed: {0}")]
pub struct ParseTaskFailed(String);

/// Parses a batch off the async threads: a large attachment can take a
/// while. [`parse`] contains its own panics, so the task only fails if the
/// runtime is shutting down; the batch is then not committed at all (it is
/// fetched again next time) rather than stored without its content.
pub async fn parse_batch<K: Send + 'static>(
    raw: Vec<(K, Vec<u8>)>,
) -> Result<Vec<(K, ParsedMail)>, ParseTaskFailed> {
    tokio::task::spawn_blocking(move || {
        raw.into_iter()
            .map(|(key, bytes)| (key, parse(&bytes)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ParseTaskFailed(e.to_string()))
}
