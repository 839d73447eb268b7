//! Ingest: turning raw RFC 5322 bytes into what a ticket needs, and judging
//! what the mail is before the store decides which ticket it belongs to.
//!
//! Owns the rule that every mail becomes *something*: a mail the parser
//! cannot fully understand still yields a [`ParsedMail`] (at worst the raw
//! text as its body, with a `parse_note`), so a bad mail never stalls a
//! mailbox or sends a reader into a retry loop; a mail that makes the parser
//! panic is quarantined (`ParsedMail::quarantine`) with its raw bytes kept.
//! Hostile structure is bounded before the parser sees it ([`mime`]: at
//! most 100 levels of MIME nesting, and no quadratic boundary hunts), and
//! the headers kept are bounded in number and size. Beside parsing: the loop
//! guard ([`guard`]), routing rules ([`rules`]) and how a mail names its
//! ticket ([`thread`]).

pub mod guard;
mod mime;
mod parse;
pub mod rules;
pub mod thread;

use std::sync::Arc;

use crate::config::MailPolicy;

pub use guard::Verdict;
pub use parse::{
    Attachment, Limits, ParsedMail, RawMail, Report, human_size, parse, parse_with,
    sanitize_filename,
};
pub use rules::Routing;

/// A mail with what the guard and the rules made of it: everything the
/// store needs to decide its ticket.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub mail: ParsedMail,
    pub verdict: Verdict,
    pub routing: Routing,
    pub policy: Arc<MailPolicy>,
}

impl Incoming {
    /// Parses and judges one raw mail read by `reader`.
    pub fn new(raw: &[u8], reader: &str, policy: &Arc<MailPolicy>) -> Incoming {
        let mail = parse_with(raw, &Limits::from(&policy.tickets));
        let verdict = guard::check(&mail, policy);
        let routing = rules::route(&mail, reader, &policy.rules);
        Incoming {
            mail,
            verdict,
            routing,
            policy: Arc::clone(policy),
        }
    }
}

/// The parsing thread could not run.
#[derive(Debug, thiserror::Error)]
#[error("the mail parser thread failed: {0}")]
pub struct ParseTaskFailed(String);

/// The stack of the thread that parses a batch. Pages are only committed
/// when touched, so this costs nothing until a mail needs it.
const PARSE_STACK: usize = 256 << 20;

/// Parses and judges a batch off the async threads: a large attachment can
/// take a while. The work runs on a thread of its own with a large stack
/// rather than tokio's blocking pool (2 MiB stacks): the nesting limit
/// (see [`mime`]) is what keeps the parser's recursion shallow, and the
/// stack is the defence in depth should a mail get past it, since a stack
/// overflow aborts the whole process. [`parse`] contains its own panics, so
/// this only fails if the thread cannot be started or dies; the batch is
/// then not committed at all (it is fetched again next time) rather than
/// stored without its content.
pub async fn parse_batch<K: Send + 'static>(
    raw: Vec<(K, Vec<u8>)>,
    reader: &str,
    policy: &Arc<MailPolicy>,
) -> Result<Vec<(K, Incoming)>, ParseTaskFailed> {
    let reader = reader.to_string();
    let policy = Arc::clone(policy);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mail-parser".into())
        .stack_size(PARSE_STACK)
        .spawn(move || {
            let parsed = raw
                .into_iter()
                .map(|(key, bytes)| (key, Incoming::new(&bytes, &reader, &policy)))
                .collect::<Vec<_>>();
            // The receiver is gone only when the poll was given up.
            let _ = done.send(parsed);
        })
        .map_err(|e| ParseTaskFailed(e.to_string()))?;
    result
        .await
        .map_err(|_| ParseTaskFailed("it ended without a result".into()))
}
