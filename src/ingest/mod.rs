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
/// overflow aborts the whole process. Where the system will not give a
/// thread that stack, the batch is parsed on the blocking pool instead
/// (the nesting limit still holds). [`parse`] contains its own panics, so
/// this only fails if the runtime is shutting down or the thread dies; the
/// batch is then not committed at all (it is fetched again next time)
/// rather than stored without its content.
pub async fn parse_batch<K: Send + 'static>(
    raw: Vec<(K, Vec<u8>)>,
    reader: &str,
    policy: &Arc<MailPolicy>,
) -> Result<Vec<(K, Incoming)>, ParseTaskFailed> {
    let reader = reader.to_string();
    let policy = Arc::clone(policy);
    // The batch is handed over only once the thread runs, so that it is
    // still here if the thread cannot be started.
    let (job, jobs) = std::sync::mpsc::channel::<Vec<(K, Vec<u8>)>>();
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = {
        let reader = reader.clone();
        let policy = Arc::clone(&policy);
        std::thread::Builder::new()
            .name("mail-parser".into())
            .stack_size(PARSE_STACK)
            .spawn(move || {
                if let Ok(raw) = jobs.recv() {
                    // The receiver is gone only when the poll was given up.
                    let _ = done.send(judge(raw, &reader, &policy));
                }
            })
    };
    let raw = match spawned {
        Ok(_) => match job.send(raw) {
            Ok(()) => {
                return result
                    .await
                    .map_err(|_| ParseTaskFailed("it ended without a result".into()));
            }
            Err(std::sync::mpsc::SendError(raw)) => raw,
        },
        Err(e) => {
            tracing::warn!(
                error = %e,
                "could not start a mail parser thread with a {} stack; parsing on the blocking pool",
                human_size(PARSE_STACK as u64)
            );
            raw
        }
    };
    tokio::task::spawn_blocking(move || judge(raw, &reader, &policy))
        .await
        .map_err(|e| ParseTaskFailed(e.to_string()))
}

fn judge<K>(raw: Vec<(K, Vec<u8>)>, reader: &str, policy: &Arc<MailPolicy>) -> Vec<(K, Incoming)> {
    raw.into_iter()
        .map(|(key, bytes)| (key, Incoming::new(&bytes, reader, policy)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_parsed_in_order_off_the_async_threads() {
        let mut deep = b"From: a@example.net\r\nSubject: deep\r\n".to_vec();
        for _ in 0..40_000 {
            deep.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        let plain = b"From: b@example.net\r\nSubject: plain\r\n\r\nhello\r\n".to_vec();
        let policy = Arc::new(MailPolicy::default());
        let parsed = parse_batch(vec![(1, deep), (2, plain)], "r", &policy)
            .await
            .expect("parsed");
        let got: Vec<(i32, &str)> = parsed
            .iter()
            .map(|(k, i)| (*k, i.mail.subject.as_str()))
            .collect();
        assert_eq!(got, [(1, "deep"), (2, "plain")]);
        assert!(
            parsed[0]
                .1
                .mail
                .parse_note
                .as_deref()
                .is_some_and(|n| n.contains("MIME nesting exceeded 100 levels"))
        );
    }
}
