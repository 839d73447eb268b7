//! Why a mailbox source failed, in one vocabulary for every protocol: what
//! all of them meet (the connection, TLS, a refused login, the parser, the
//! store) is said once here; what only one protocol has is its own small
//! enum inside ([`ImapError`], [`Pop3Error`], [`GraphError`]).
//!
//! `crate::reader` reads the reader's state, the failure class and whether
//! the credential was refused from here alone, whichever protocol failed.

use crate::ingest::ParseTaskFailed;
use crate::outcome::FailureClass;
use crate::source::graph::GraphError;
use crate::source::imap::ImapError;
use crate::source::pop3::Pop3Error;
use crate::source::refusal::Refusal;
use crate::store::StoreError;
use crate::transport::ConnectError;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// STARTTLS (IMAP) or STLS (POP3) asked for and not offered.
    #[error("{server} does not offer {command} ({detail}); use tls = \"implicit\" on port {port}")]
    NoStartTls {
        server: String,
        command: &'static str,
        port: u16,
        detail: String,
    },
    /// The server refused the credential: the token is dropped, a password
    /// reader stops.
    #[error(
        "authentication failed: the {protocol} server refused the {what} for {user}{}",
        answer_of(.protocol, .answer)
    )]
    AuthRejected {
        protocol: &'static str,
        what: &'static str,
        user: String,
        answer: String,
    },
    #[error(transparent)]
    Parser(#[from] ParseTaskFailed),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The server's words after a refused login, as each protocol has always
/// put them in `last_error` (admins and tests read these texts).
fn answer_of(protocol: &str, answer: &str) -> String {
    match protocol {
        "IMAP" => format!(" ({answer})"),
        _ => format!(": {answer}"),
    }
}

impl SourceError {
    /// A login the server refused with `answer`, sorted by its response
    /// code (RFC 5530 for IMAP, RFC 2449 / 3206 for POP3): only a code that
    /// blames the credential, or none (servers without those RFCs), refuses
    /// it. Anything else (a connection limit, an outage) is `otherwise`,
    /// the protocol's passing refusal: it must not cost the token or stop
    /// a password reader.
    pub(crate) fn login_refused(
        protocol: &'static str,
        what: &'static str,
        user: &str,
        answer: Refusal,
        words: String,
        otherwise: impl FnOnce(Refusal) -> SourceError,
    ) -> SourceError {
        if answer.blames_credential() {
            SourceError::AuthRejected {
                protocol,
                what,
                user: user.to_string(),
                answer: words,
            }
        } else {
            otherwise(answer)
        }
    }

    /// The server refused the credential (not the network, not the folder).
    pub fn is_auth_rejected(&self) -> bool {
        match self {
            SourceError::AuthRejected { .. } => true,
            SourceError::Graph(e) => e.is_auth_rejected(),
            _ => false,
        }
    }

    /// Only the configuration (or the server's setup) can fix it: retrying
    /// as it is cannot work.
    pub fn is_misconfigured(&self) -> bool {
        match self {
            SourceError::Graph(e) => e.is_misconfigured(),
            other => matches!(
                other,
                SourceError::Imap(ImapError::NoMoveTarget { .. })
                    | SourceError::Pop3(Pop3Error::NoUidl { .. })
            ),
        }
    }

    /// The store's error, if the store is what failed.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            SourceError::Store(e) => Some(e),
            _ => None,
        }
    }

    pub fn class(&self) -> FailureClass {
        match self {
            SourceError::Connect(e) => e.class(),
            SourceError::NoStartTls { .. } => FailureClass::Config,
            SourceError::AuthRejected { .. } => FailureClass::Auth,
            SourceError::Parser(_) | SourceError::Store(_) => FailureClass::Store,
            SourceError::Imap(e) => e.class(),
            SourceError::Pop3(e) => e.class(),
            SourceError::Graph(e) => e.class(),
        }
    }
}
