//! Ingest: turning raw RFC 5322 bytes into what a ticket needs, and judging
//! what the mail is before the store decides which ticket it belongs to.
//!
//! Owns the rule that every mail becomes *something*: a mail the parser
//! cannot fully understand still yields a [`ParsedMail`] (at worst the raw
//! text as its body, with a `parse_note`), so a bad mail never stalls a
//! mailbox or sends a reader into a retry loop; a mail that makes the parser
//! panic is quarantined (`ParsedMail::quarantine`) with its raw bytes kept.
//! Hostile structure is bounded before the parser sees it (`mime`: at
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
    Attachment, Limits, ParsedMail, RawMail, Report, human_size, parse, parse_fetched, parse_with,
    sanitize_filename,
};
pub use rules::Routing;

/// A mail with what the guard and the rules made of it: everything the
/// store needs to decide its ticket.
#[derive(Clone)]
pub struct Incoming {
    pub mail: ParsedMail,
    pub verdict: Verdict,
    pub routing: Routing,
    pub policy: Arc<MailPolicy>,
    /// The mail as fetched, until it is committed: if storing it fails
    /// because of what it contains, the quarantine keeps these bytes.
    pub raw: Vec<u8>,
    /// When the mail reached the mailbox, in Unix seconds (see
    /// [`received_at`]); `None` when nothing in it tells.
    pub received_at: Option<i64>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the raw bytes: Debug output may reach a log.
        f.debug_struct("Incoming")
            .field("mail", &self.mail)
            .field("verdict", &self.verdict)
            .field("routing", &self.routing)
            .field("raw_size", &self.raw.len())
            .finish_non_exhaustive()
    }
}

/// A mail as fetched: its bytes, which are only its beginning when it was
/// over `max_email_size`, and the full size the server declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// At least `bytes.len()`.
    pub size: u64,
    /// When the server says the mail arrived (IMAP's INTERNALDATE), in
    /// Unix seconds; otherwise the mail's own headers tell.
    pub arrived: Option<i64>,
}

impl Fetched {
    /// A mail fetched whole.
    pub fn whole(bytes: Vec<u8>) -> Fetched {
        let size = bytes.len() as u64;
        Fetched {
            bytes,
            size,
            arrived: None,
        }
    }
}

/// When a mail reached the mailbox by its headers, in Unix seconds: the
/// date of the newest (topmost) `Received:` header, else its `Date:`. Only
/// the header section is read, and a date that cannot be read counts as
/// none.
pub fn received_at(raw: &[u8]) -> Option<i64> {
    let headers = mail_parser::MessageParser::new().parse_headers(raw)?;
    let valid = |d: &mail_parser::DateTime| d.is_valid().then(|| d.to_timestamp());
    headers
        .received_all()
        .next()
        .and_then(|r| r.date())
        .as_ref()
        .and_then(valid)
        .or_else(|| headers.date().and_then(valid))
}

impl Incoming {
    /// Parses and judges one raw mail read by `reader`.
    pub fn new(raw: &[u8], reader: &str, policy: &Arc<MailPolicy>) -> Incoming {
        Incoming::fetched(Fetched::whole(raw.to_vec()), reader, policy)
    }

    /// [`Incoming::new`] for a mail as fetched (maybe only its beginning,
    /// see [`Fetched`]), keeping its bytes without a copy.
    pub fn fetched(fetched: Fetched, reader: &str, policy: &Arc<MailPolicy>) -> Incoming {
        let Fetched {
            bytes: raw,
            size,
            arrived,
        } = fetched;
        let mail = parse_fetched(&raw, size, &Limits::from(&policy.tickets));
        // Only an acknowledgement asks when the mail came.
        let received_at = if policy.acknowledge {
            arrived.or_else(|| received_at(&raw))
        } else {
            arrived
        };
        let verdict = guard::check(&mail, policy);
        let routing = rules::route(&mail, reader, &policy.rules);
        Incoming {
            mail,
            verdict,
            routing,
            policy: Arc::clone(policy),
            raw,
            received_at,
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
/// (see `mime`) is what keeps the parser's recursion shallow, and the
/// stack is the defence in depth should a mail get past it, since a stack
/// overflow aborts the whole process. Where the system will not give a
/// thread that stack, the batch is parsed on the blocking pool instead
/// (the nesting limit still holds). [`parse`] contains its own panics, so
/// this only fails if the runtime is shutting down or the thread dies; the
/// batch is then not committed at all (it is fetched again next time)
/// rather than stored without its content.
pub async fn parse_batch<K: Send + 'static>(
    raw: Vec<(K, Fetched)>,
    reader: &str,
    policy: &Arc<MailPolicy>,
) -> Result<Vec<(K, Incoming)>, ParseTaskFailed> {
    let reader = reader.to_string();
    let policy = Arc::clone(policy);
    // The batch is handed over only once the thread runs, so that it is
    // still here if the thread cannot be started.
    let (job, jobs) = std::sync::mpsc::channel::<Vec<(K, Fetched)>>();
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

fn judge<K>(raw: Vec<(K, Fetched)>, reader: &str, policy: &Arc<MailPolicy>) -> Vec<(K, Incoming)> {
    raw.into_iter()
        .map(|(key, mail)| (key, Incoming::fetched(mail, reader, policy)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_parsed_in_order_off_the_async_threads() {
        let deep = mime::nested_messages(40_000);
        let plain = b"From: b@example.net\r\nSubject: plain\r\n\r\nhello\r\n".to_vec();
        let policy = Arc::new(MailPolicy::default());
        let parsed = parse_batch(
            vec![(1, Fetched::whole(deep)), (2, Fetched::whole(plain))],
            "r",
            &policy,
        )
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

    const MAIL: &[u8] = b"From: a@example.com\r\nSubject: big\r\nMessage-ID: <big@x>\r\n\r\n0123456789abcdefghij\r\n";

    #[test]
    fn a_cut_mail_carries_its_full_size_and_says_what_was_fetched() {
        let limits = Limits {
            max_email_size: 40,
            max_attachment_size: 1 << 20,
            keep_raw: true,
        };
        let head = &MAIL[..40];
        let mail = parse_fetched(head, 60 << 20, &limits);
        assert_eq!(mail.size, 60 << 20);
        let note = mail.limit_note.as_deref().unwrap_or_default();
        assert!(
            note.starts_with(
                "the mail (60.0 MiB) is larger than max_email_size (40 B): \
                 only its first 40 B were fetched; "
            ),
            "{note}"
        );
        assert!(
            note.ends_with("; the raw mail's first 40 B are kept (keep_raw)"),
            "{note}"
        );
        assert_eq!(mail.raw.as_ref().map(|r| r.content.as_slice()), Some(head));

        // Fetched whole: no word about fetching.
        let whole = parse_with(MAIL, &limits);
        assert_eq!(whole.size, MAIL.len());
        let note = whole.limit_note.as_deref().unwrap_or_default();
        assert!(!note.contains("fetched"), "{note}");
        assert!(note.contains("the raw mail is kept whole"), "{note}");
    }
}
