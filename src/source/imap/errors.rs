//! IMAP's own failures and how the crate's errors become them: a NO or
//! BAD in the server's (scrubbed) words, a broken connection named as
//! such, a stall as a timeout.

use std::time::Duration;

use crate::outcome::FailureClass;
use crate::scrub::Scrubber;
use crate::source::refusal::{Meaning, Refusal};
use crate::store::MAX_REFUSALS;

/// What only IMAP fails at; the failures every protocol shares (connect,
/// TLS, a refused credential, parser, store) are
/// [`crate::source::SourceError`]'s.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error(
        "authentication failed: the server accepted the token but the session is unusable ({server}); \
         check that {user} has a mailbox with IMAP enabled"
    )]
    NotConnected { user: String, server: String },
    #[error("folder {folder:?} does not exist ({server})")]
    NoFolder { folder: String, server: String },
    /// SELECT refused without a code that says why.
    #[error("the server refused to open folder {folder:?}: {answer}")]
    FolderRefused { folder: String, answer: Refusal },
    /// A passing server condition (RFC 5530: in use, a limit, unavailable,
    /// a server bug): retried with backoff; neither the credential nor the
    /// configuration is at fault.
    #[error("the IMAP server cannot serve {step} right now (retried with backoff): {answer}")]
    Busy { step: &'static str, answer: Refusal },
    /// A NO or BAD to a command, in the server's words.
    #[error("the IMAP server refused {step}: {answer}")]
    Refused { step: &'static str, answer: Refusal },
    /// The server said BYE in the middle of a command.
    #[error("the IMAP server closed the connection during {step}: {answer}")]
    Closed { step: &'static str, answer: Refusal },
    /// Mail asked for and not delivered; the ledger owes it.
    #[error(
        "the IMAP server did not deliver {count} mail(s) of folder {folder:?} (UID {uids}): {words}; \
         they are asked for again every poll, and set aside in the quarantine after {MAX_REFUSALS} refusals"
    )]
    Undelivered {
        folder: String,
        count: usize,
        uids: String,
        words: String,
    },
    /// The mail is ingested, but the after-step was refused; it stays
    /// pending and is retried next poll.
    #[error(
        "mail was ingested, but after = {after:?} failed on the server (retried next poll): {source}"
    )]
    AfterStep {
        after: String,
        source: Box<ImapError>,
    },
    #[error(
        "after = \"move:{folder}\": the folder {folder:?} does not exist; create it or fix `after`"
    )]
    NoMoveTarget { folder: String },
    #[error("folder {folder:?} has no UIDVALIDITY; cannot track which mail was ingested")]
    NoUidValidity { folder: String },
    #[error("IMAP server did not answer {step} within {}s", .after.as_secs())]
    Timeout { step: &'static str, after: Duration },
    /// The connection broke under a command: the network or the server
    /// went away. Transient; the ledger asks again for what was missed.
    #[error("the connection to the IMAP server was lost during {step}: {detail}")]
    ConnectionLost { step: &'static str, detail: String },
    #[error("IMAP {step} failed: {detail}")]
    Protocol { step: &'static str, detail: String },
}

impl ImapError {
    pub fn class(&self) -> FailureClass {
        match self {
            ImapError::NotConnected { .. }
            | ImapError::Timeout { .. }
            | ImapError::Busy { .. }
            | ImapError::Closed { .. }
            | ImapError::ConnectionLost { .. } => FailureClass::Connection,
            ImapError::NoFolder { .. }
            | ImapError::FolderRefused { .. }
            | ImapError::NoMoveTarget { .. } => FailureClass::Config,
            ImapError::NoUidValidity { .. }
            | ImapError::Protocol { .. }
            | ImapError::Refused { .. }
            | ImapError::Undelivered { .. } => FailureClass::Protocol,
            ImapError::AfterStep { source, .. } => source.class(),
        }
    }
}

/// What a server said, quoted as every protocol's words are
/// ([`crate::scrub::printable`]).
pub(super) fn server_text(text: impl std::fmt::Display) -> String {
    crate::scrub::printable(&text.to_string())
}

/// An I/O error under a command, for a person: a broken connection is
/// named as such (the crate says "bytes remaining in stream" when the
/// server vanished mid-answer); anything else is a protocol failure.
pub(super) fn io_error(scrub: &Scrubber, step: &'static str, e: &std::io::Error) -> ImapError {
    use std::io::ErrorKind;
    let detail = match e.kind() {
        ErrorKind::UnexpectedEof => "the server or the network closed it mid-answer".to_owned(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            "the server or the network reset it".to_owned()
        }
        ErrorKind::BrokenPipe => "the server or the network closed it".to_owned(),
        _ => return protocol_error(step, scrub.clean(&e.to_string())),
    };
    ImapError::ConnectionLost { step, detail }
}

pub(super) fn connection_closed(step: &'static str) -> ImapError {
    ImapError::ConnectionLost {
        step,
        detail: "the server closed it".into(),
    }
}

pub(super) fn protocol_error(step: &'static str, e: impl std::fmt::Display) -> ImapError {
    ImapError::Protocol {
        step,
        detail: server_text(e),
    }
}

/// The crate's error for a command, for a person: a NO or BAD becomes the
/// server's words (the crate words them as Rust debug output), scrubbed.
pub(super) fn crate_error(
    scrub: &Scrubber,
    step: &'static str,
    e: async_imap::error::Error,
) -> ImapError {
    match crate_refusal(scrub, &e) {
        Some(answer) if matches!(answer.meaning(), Meaning::Transient) => {
            ImapError::Busy { step, answer }
        }
        Some(answer) => ImapError::Refused { step, answer },
        None => match e {
            async_imap::error::Error::ConnectionLost => connection_closed(step),
            async_imap::error::Error::Io(e) => io_error(scrub, step, &e),
            other => protocol_error(step, scrub.clean(&other.to_string())),
        },
    }
}

/// The server's refusal inside a NO or BAD of the crate, which it words as
/// `code: Some(TryCreate), info: Some("text")`: taken apart again and
/// scrubbed of the credential.
pub(super) fn crate_refusal(scrub: &Scrubber, e: &async_imap::error::Error) -> Option<Refusal> {
    let (async_imap::error::Error::No(debug) | async_imap::error::Error::Bad(debug)) = e else {
        return None;
    };
    // Two wordings: `code: C, info: I` (tagged answers) and
    // `outcome: Outcome { code: C, information: I }` (SELECT, STATUS).
    let parts = match debug
        .strip_prefix("outcome: Outcome { ")
        .and_then(|rest| rest.strip_suffix(" }"))
    {
        Some(inner) => inner
            .strip_prefix("code: ")
            .and_then(|rest| rest.split_once(", information: ")),
        None => debug
            .strip_prefix("code: ")
            .and_then(|rest| rest.split_once(", info: ")),
    };
    let (code, info) = match parts {
        Some(parts) => parts,
        // Not the crate's usual wording: keep it whole.
        None => ("None", debug.as_str()),
    };
    let code = code
        .strip_prefix("Some(")
        .map(|c| {
            c.split(|ch: char| !ch.is_ascii_alphanumeric())
                .next()
                .unwrap_or("")
        })
        .filter(|c| !c.is_empty())
        .map(code_name);
    let text = match info.strip_prefix("Some(").and_then(|i| i.strip_suffix(')')) {
        Some(quoted) => unescape_debug(quoted),
        None if info == "None" => String::new(),
        None => info.to_string(),
    };
    Some(Refusal::with_code(code, &scrub.clean(&text)))
}

/// A response code as the server wrote it, from imap-proto's variant name
/// (`TryCreate` → `TRYCREATE`, `ReadOnly` → `READ-ONLY`).
pub(super) fn code_name(variant: &str) -> String {
    match variant {
        "ReadOnly" => "READ-ONLY".into(),
        "ReadWrite" => "READ-WRITE".into(),
        "Capabilities" => "CAPABILITY".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// Undoes Rust's `{:?}` quoting of a string: `"a \"b\" \u{1b}"`.
pub(super) fn unescape_debug(quoted: &str) -> String {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(quoted);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let hex: String = chars
                    .by_ref()
                    .skip_while(|&c| c == '{')
                    .take_while(|&c| c != '}')
                    .collect();
                out.push(
                    u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .unwrap_or('?'),
                );
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The refusal in a tagged or untagged status response.
pub(super) fn outcome_refusal(
    scrub: &Scrubber,
    outcome: &async_imap::imap_proto::Outcome<'_>,
) -> Refusal {
    let code = outcome
        .code
        .as_ref()
        .map(|c| code_name(format!("{c:?}").split('(').next().unwrap_or("")));
    Refusal::with_code(
        code,
        &scrub.clean(outcome.information.as_deref().unwrap_or("")),
    )
}

pub(super) fn timed_out(step: &'static str, after: Duration) -> ImapError {
    ImapError::Timeout { step, after }
}

pub(super) async fn step<T>(
    timeout: Duration,
    scrub: &Scrubber,
    step: &'static str,
    fut: impl std::future::Future<Output = Result<T, async_imap::error::Error>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(timed_out(step, timeout)),
        Ok(Err(e)) => Err(crate_error(scrub, step, e)),
        Ok(Ok(v)) => Ok(v),
    }
}
