//! IMAP with SASL XOAUTH2 (or a password), over implicit TLS or STARTTLS.
//!
//! Owns how an IMAP folder becomes tickets exactly once: new mail is found
//! by UID above the ledger's watermark for the folder's UIDVALIDITY, plus
//! the UIDs the ledger still owes (asked for earlier, not delivered: the
//! tagged answer of every command is read, see `Session::run`), sized
//! (`RFC822.SIZE`), fetched in batches bounded by `batch_size` and
//! `batch_bytes` with `BODY.PEEK[]<0.max_email_size>` (so nothing is marked
//! read before its ticket exists, and a huge mail is never held whole),
//! committed, and only then given its after-step (`\Seen`,
//! nothing, delete, or move). An after-step that could not be done stays
//! pending in the ledger and is retried on the next poll; since it only
//! ever runs for committed mail, a retry can never duplicate a ticket.
//!
//! The first poll of a folder (no record of it at this UIDVALIDITY) takes
//! only what the reader's `backfill` says of the mail already there, and
//! records that choice with a floor (the highest UID then) before fetching
//! anything: mail above the floor is new and always taken, mail at or below
//! it only if chosen, so old mail left then is never taken later.
//!
//! A UIDVALIDITY change (the folder was recreated) starts a new UID space,
//! a first contact again: what `backfill` takes of it is matched against
//! the emails already stored by Message-ID, or by content hash for mail
//! without one, so known mail is only recorded under its new UID.
//!
//! With `idle = true` the connection is kept between polls and waits in
//! IDLE, so new mail is noticed as it arrives.

use std::collections::HashMap;
use std::time::Duration;

use async_imap::Authenticator;
use base64::Engine as _;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::refusal::{Meaning, Refusal};
use super::{Batching, CheckReport, FirstContactPreview, PollReport, SignInSecret};
use crate::auth::sasl;
use crate::config::{After, Backfill, ReaderConfig, Tls};
use crate::ingest::{self, Fetched, ParseTaskFailed};
use crate::ops::metrics::ReaderMetrics;
use crate::outcome::FailureClass;
use crate::scrub::Scrubber;
use crate::store::{FolderPosition, MAX_REFUSALS, Owed, Store, StoreError};
use crate::transport::{self, ConnectError, Endpoint, Progress, Stream};

/// UIDs per `UID FETCH (UID RFC822.SIZE)`, so a folder with a huge backlog
/// is sized in commands of bounded length.
const SIZE_CHUNK: usize = 1000;

/// IDLE is re-issued at least this often: servers may drop an IDLE after
/// 30 minutes (RFC 2177), and NAT boxes forget quiet connections sooner.
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{server} does not offer STARTTLS ({detail}); use tls = \"implicit\" on port 993")]
    NoStartTls { server: String, detail: String },
    #[error("authentication failed: the IMAP server refused the {what} for {user} ({server})")]
    AuthRejected {
        what: &'static str,
        user: String,
        server: String,
    },
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
    #[error(transparent)]
    Parser(#[from] ParseTaskFailed),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImapError {
    /// The server refused the credential (not the network, not the folder).
    pub fn is_auth_rejected(&self) -> bool {
        matches!(self, ImapError::AuthRejected { .. })
    }

    pub fn class(&self) -> FailureClass {
        match self {
            ImapError::Connect(e) => e.class(),
            ImapError::AuthRejected { .. } => FailureClass::Auth,
            ImapError::NotConnected { .. }
            | ImapError::Timeout { .. }
            | ImapError::Busy { .. }
            | ImapError::Closed { .. }
            | ImapError::ConnectionLost { .. } => FailureClass::Connection,
            ImapError::NoStartTls { .. }
            | ImapError::NoFolder { .. }
            | ImapError::FolderRefused { .. }
            | ImapError::NoMoveTarget { .. } => FailureClass::Config,
            ImapError::NoUidValidity { .. }
            | ImapError::Protocol { .. }
            | ImapError::Refused { .. }
            | ImapError::Undelivered { .. } => FailureClass::Protocol,
            ImapError::AfterStep { source, .. } => source.class(),
            ImapError::Parser(_) | ImapError::Store(_) => FailureClass::Store,
        }
    }
}

/// The XOAUTH2 initial client response; on failure the server sends a JSON
/// challenge, which is answered with an empty line to get the tagged NO.
struct XOAuth2<'a> {
    user: &'a str,
    token: &'a SecretString,
    sent: bool,
}

impl Authenticator for XOAuth2<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        if std::mem::replace(&mut self.sent, true) {
            return Vec::new();
        }
        sasl::xoauth2(self.user, self.token.expose_secret())
            .as_bytes()
            .to_vec()
    }
}

/// SASL PLAIN (RFC 4616): authorization id empty, so the server uses the
/// user's own mailbox.
struct Plain<'a> {
    user: &'a str,
    password: &'a SecretString,
    sent: bool,
}

impl Authenticator for Plain<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        if std::mem::replace(&mut self.sent, true) {
            return Vec::new();
        }
        sasl::plain(self.user, self.password.expose_secret())
            .as_bytes()
            .to_vec()
    }
}

/// The server capabilities mail2ticket adapts to.
#[derive(Debug, Clone, Copy, Default)]
struct Caps {
    idle: bool,
    moves: bool,
    uidplus: bool,
}

impl Caps {
    fn names(self) -> Vec<&'static str> {
        [
            (self.idle, "IDLE"),
            (self.moves, "MOVE"),
            (self.uidplus, "UIDPLUS"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }
}

/// An authenticated, verified IMAP session.
struct Session {
    inner: async_imap::Session<Stream>,
    timeout: Duration,
    caps: Caps,
    /// Bytes moved on the connection: a FETCH that keeps delivering a large
    /// literal is waited for, one that stalls for `timeout` is not.
    progress: Progress,
    /// The credential this session logged in with, in every form sent.
    scrub: Scrubber,
    /// The folder grew (EXISTS) during a command read by [`Session::run`].
    grew: bool,
}

/// What the server answered to one `UID FETCH` of mail.
#[derive(Debug, Default)]
struct Delivery {
    mails: Vec<(u32, Fetched)>,
    /// Asked for, not delivered with a body.
    missing: Vec<u32>,
    /// The tagged NO / BAD, if the command was refused.
    refused: Option<Refusal>,
}

/// A folder as selected.
#[derive(Debug, Clone, Copy)]
struct Selected {
    uidvalidity: u32,
    exists: u32,
}

/// A session kept open between polls (`idle = true`), with its folder
/// selected.
pub struct Connection {
    session: Session,
    selected: Selected,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("uidvalidity", &self.selected.uidvalidity)
            .finish_non_exhaustive()
    }
}

/// How a wait in IDLE ended.
#[derive(Debug)]
pub enum Idled {
    /// The server announced a change (or the IDLE was renewed): poll now.
    Changed,
    /// The server has no IDLE, or no connection is kept: poll on the
    /// interval instead.
    Unsupported,
    /// Shutdown began.
    Cancelled,
    /// The connection broke; the next poll reconnects.
    Lost(ImapError),
}

/// What a server said, fit for a log line and `last_error`: control
/// characters (an escape sequence, a bell) become `?`.
fn server_text(text: impl std::fmt::Display) -> String {
    text.to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// An I/O error under a command, for a person: a broken connection is
/// named as such (the crate says "bytes remaining in stream" when the
/// server vanished mid-answer); anything else is a protocol failure.
fn io_error(scrub: &Scrubber, step: &'static str, e: &std::io::Error) -> ImapError {
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

fn connection_closed(step: &'static str) -> ImapError {
    ImapError::ConnectionLost {
        step,
        detail: "the server closed it".into(),
    }
}

fn protocol_error(step: &'static str, e: impl std::fmt::Display) -> ImapError {
    ImapError::Protocol {
        step,
        detail: server_text(e),
    }
}

/// The crate's error for a command, for a person: a NO or BAD becomes the
/// server's words (the crate words them as Rust debug output), scrubbed.
fn crate_error(scrub: &Scrubber, step: &'static str, e: async_imap::error::Error) -> ImapError {
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
fn crate_refusal(scrub: &Scrubber, e: &async_imap::error::Error) -> Option<Refusal> {
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
fn code_name(variant: &str) -> String {
    match variant {
        "ReadOnly" => "READ-ONLY".into(),
        "ReadWrite" => "READ-WRITE".into(),
        "Capabilities" => "CAPABILITY".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// Undoes Rust's `{:?}` quoting of a string: `"a \"b\" \u{1b}"`.
fn unescape_debug(quoted: &str) -> String {
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
fn outcome_refusal(scrub: &Scrubber, outcome: &async_imap::imap_proto::Outcome<'_>) -> Refusal {
    let code = outcome
        .code
        .as_ref()
        .map(|c| code_name(format!("{c:?}").split('(').next().unwrap_or("")));
    Refusal::with_code(
        code,
        &scrub.clean(outcome.information.as_deref().unwrap_or("")),
    )
}

fn timed_out(step: &'static str, after: Duration) -> ImapError {
    ImapError::Timeout { step, after }
}

async fn step<T>(
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

/// `text` as an IMAP quoted string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Every form this login's credential is sent in, for [`Scrubber`]: the
/// secret itself and its SASL blob as it goes on the wire (base64).
fn scrubber(user: &str, credential: &SignInSecret) -> Scrubber {
    let b64 = |payload: &str| base64::engine::general_purpose::STANDARD.encode(payload);
    match credential {
        SignInSecret::Token(token) => Scrubber::new([
            token.expose_secret().to_string(),
            b64(sasl::xoauth2(user, token.expose_secret()).as_str()),
        ]),
        SignInSecret::Password(password) => Scrubber::new([
            password.expose_secret().to_string(),
            b64(sasl::plain(user, password.expose_secret()).as_str()),
            quoted(password.expose_secret()),
        ]),
    }
}

impl Session {
    async fn open(reader: &ReaderConfig, credential: &SignInSecret) -> Result<Session, ImapError> {
        let t = reader.timeout;
        let endpoint = Endpoint::of(reader);
        let stream = transport::connect(&endpoint).await?;
        let progress = stream.progress();
        let mut client = async_imap::Client::new(stream);
        match tokio::time::timeout(t, client.read_response()).await {
            Err(_) => return Err(timed_out("greeting", t)),
            Ok(Err(e)) => return Err(protocol_error("greeting", e)),
            Ok(Ok(None)) => return Err(connection_closed("greeting")),
            Ok(Ok(Some(_))) => {}
        }
        if reader.tls == Tls::StartTls {
            match tokio::time::timeout(t, client.run_command_and_check_ok("STARTTLS", None)).await {
                Err(_) => return Err(timed_out("STARTTLS", t)),
                Ok(Err(e)) => {
                    return Err(ImapError::NoStartTls {
                        server: reader.host.clone(),
                        detail: server_text(e),
                    });
                }
                Ok(Ok(())) => {}
            }
            // Anything the server sent before the handshake is discarded
            // with the old client: it was not protected by TLS.
            let stream = transport::upgrade(client.into_inner(), &endpoint).await?;
            client = async_imap::Client::new(stream);
        }
        let user = reader.username.as_str();
        let scrub = scrubber(user, credential);
        let (login, what) = match credential {
            SignInSecret::Token(token) => (
                authenticate(
                    client,
                    "XOAUTH2",
                    XOAuth2 {
                        user,
                        token,
                        sent: false,
                    },
                    t,
                )
                .await,
                "access token",
            ),
            SignInSecret::Password(password) => {
                (login_plain(client, user, password, t).await, "password")
            }
        };
        let inner = match login {
            Err(e @ async_imap::error::Error::No(_)) => {
                let answer = crate_refusal(&scrub, &e).unwrap_or_else(|| Refusal::parse(""));
                // Only a code that blames the credential (or none, as
                // servers without RFC 5530 answer) refuses it: a connection
                // limit or an outage must not cost the token or park a
                // password reader.
                if !answer.blames_credential() {
                    return Err(match answer.meaning() {
                        Meaning::Transient => ImapError::Busy {
                            step: "AUTHENTICATE",
                            answer,
                        },
                        _ => ImapError::Refused {
                            step: "AUTHENTICATE",
                            answer,
                        },
                    });
                }
                return Err(ImapError::AuthRejected {
                    what,
                    user: user.to_string(),
                    server: answer.to_string(),
                });
            }
            Err(async_imap::error::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(timed_out("AUTHENTICATE", t));
            }
            Err(e) => return Err(crate_error(&scrub, "AUTHENTICATE", e)),
            Ok(session) => session,
        };
        let mut session = Session {
            inner,
            timeout: t,
            caps: Caps::default(),
            progress,
            scrub,
            grew: false,
        };
        // Exchange Online can accept AUTHENTICATE and then answer every
        // command with "BAD User is authenticated but not connected"; only
        // a command after login tells.
        match tokio::time::timeout(t, session.inner.run_command_and_check_ok("NOOP")).await {
            Err(_) => return Err(timed_out("NOOP", t)),
            Ok(Err(e @ (async_imap::error::Error::Bad(_) | async_imap::error::Error::No(_)))) => {
                let answer = crate_refusal(&session.scrub, &e);
                return Err(ImapError::NotConnected {
                    user: user.to_string(),
                    server: answer.map(|a| a.to_string()).unwrap_or_default(),
                });
            }
            Ok(Err(e)) => return Err(crate_error(&session.scrub, "NOOP", e)),
            Ok(Ok(())) => {}
        }
        // After login: servers may announce more (or less) than before it.
        let caps = match tokio::time::timeout(t, session.inner.capabilities()).await {
            Err(_) => return Err(timed_out("CAPABILITY", t)),
            Ok(Err(e)) => return Err(crate_error(&session.scrub, "CAPABILITY", e)),
            Ok(Ok(caps)) => caps,
        };
        session.caps = Caps {
            idle: caps.has_str("IDLE"),
            moves: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
        };
        Ok(session)
    }

    async fn select(&mut self, folder: &str) -> Result<Selected, ImapError> {
        let name = mailbox_name(folder);
        let mailbox = match tokio::time::timeout(self.timeout, self.inner.select(&name)).await {
            Err(_) => return Err(timed_out("SELECT", self.timeout)),
            Ok(Err(e @ async_imap::error::Error::No(_))) => {
                let answer = crate_refusal(&self.scrub, &e).unwrap_or_else(|| Refusal::parse(""));
                return Err(match answer.meaning() {
                    Meaning::Nonexistent => ImapError::NoFolder {
                        folder: folder.to_string(),
                        server: answer.to_string(),
                    },
                    Meaning::Transient => ImapError::Busy {
                        step: "SELECT",
                        answer,
                    },
                    Meaning::Unknown => ImapError::FolderRefused {
                        folder: folder.to_string(),
                        answer,
                    },
                    Meaning::Credential | Meaning::Other => ImapError::Refused {
                        step: "SELECT",
                        answer,
                    },
                });
            }
            Ok(Err(e)) => return Err(crate_error(&self.scrub, "SELECT", e)),
            Ok(Ok(mailbox)) => mailbox,
        };
        let uidvalidity = mailbox
            .uid_validity
            .ok_or_else(|| ImapError::NoUidValidity {
                folder: folder.to_string(),
            })?;
        Ok(Selected {
            uidvalidity,
            exists: mailbox.exists,
        })
    }

    /// Whether `folder` exists (LIST matches it exactly).
    async fn folder_exists(&mut self, folder: &str) -> Result<bool, ImapError> {
        let t = self.timeout;
        let name = mailbox_name(folder);
        let stream = step(
            t,
            &self.scrub,
            "LIST",
            self.inner.list(Some(""), Some(&name)),
        )
        .await?;
        let names: Vec<_> = tokio::time::timeout(t, stream.collect::<Vec<_>>())
            .await
            .map_err(|_| timed_out("LIST", t))?;
        let mut found = false;
        for n in names {
            let n = n.map_err(|e| protocol_error("LIST", e))?;
            found |= !n
                .attributes()
                .iter()
                .any(|a| matches!(a, async_imap::types::NameAttribute::NoSelect));
        }
        Ok(found)
    }

    /// Runs one tagged command and reads its answer up to the tagged status
    /// line, handing every other response to `each`. The crate's own FETCH,
    /// STORE and EXPUNGE end their stream at the tagged line without saying
    /// whether it was OK, NO or BAD; this says: `Ok(Err(refusal))` for a NO
    /// or BAD, in the server's (scrubbed) words. A stall of `timeout`
    /// without a byte moving is a timeout; a large literal that keeps
    /// arriving is waited for.
    async fn run<F>(
        &mut self,
        step: &'static str,
        command: &str,
        mut each: F,
    ) -> Result<Result<(), Refusal>, ImapError>
    where
        F: FnMut(&async_imap::imap_proto::Response<'_>),
    {
        use async_imap::imap_proto::{MailboxDatum, Response, Status};
        let t = self.timeout;
        let id = match tokio::time::timeout(t, self.inner.run_command(command)).await {
            Err(_) => return Err(timed_out(step, t)),
            Ok(Err(e)) => return Err(crate_error(&self.scrub, step, e)),
            Ok(Ok(id)) => id,
        };
        loop {
            let response = self
                .progress
                .wait(t, self.inner.read_response())
                .await
                .map_err(|_| timed_out(step, t))?
                .map_err(|e| io_error(&self.scrub, step, &e))?
                .ok_or_else(|| connection_closed(step))?;
            match response.parsed() {
                Response::Done {
                    tag,
                    status,
                    outcome,
                } if *tag == id => {
                    return Ok(match status {
                        Status::Ok => Ok(()),
                        _ => Err(outcome_refusal(&self.scrub, outcome)),
                    });
                }
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => {
                    return Err(ImapError::Closed {
                        step,
                        answer: outcome_refusal(&self.scrub, outcome),
                    });
                }
                Response::MailboxData(MailboxDatum::Exists(_))
                | Response::MailboxData(MailboxDatum::Recent(1..)) => self.grew = true,
                other => each(other),
            }
        }
    }

    /// Runs `UID FETCH uids items`, handing each answer that names a UID
    /// to `each` with its attributes; the tagged status as [`Session::run`].
    async fn fetch_each<F>(
        &mut self,
        uids: &[u32],
        items: &str,
        mut each: F,
    ) -> Result<Result<(), Refusal>, ImapError>
    where
        F: FnMut(u32, &[async_imap::imap_proto::AttributeValue<'_>]),
    {
        use async_imap::imap_proto::{AttributeValue, Response};
        let command = format!("UID FETCH {} {items}", uid_set(uids));
        self.run("UID FETCH", &command, |response| {
            if let Response::Fetch(_, attrs) = response
                && let Some(uid) = attrs.iter().find_map(|a| match a {
                    AttributeValue::Uid(u) => Some(*u),
                    _ => None,
                })
            {
                each(uid, attrs);
            }
        })
        .await
    }

    /// Runs a command whose only answer that matters is its tagged status:
    /// a NO or BAD is an error in the server's words.
    async fn run_checked(&mut self, step: &'static str, command: &str) -> Result<(), ImapError> {
        match self.run(step, command, |_| {}).await? {
            Ok(()) => Ok(()),
            Err(answer) if matches!(answer.meaning(), Meaning::Transient) => {
                Err(ImapError::Busy { step, answer })
            }
            Err(answer) => Err(ImapError::Refused { step, answer }),
        }
    }

    /// Which of `uids` (ascending) the folder still holds.
    async fn existing(&mut self, uids: &[u32]) -> Result<Vec<u32>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = self.search(&format!("UID {}", uid_set(uids))).await?;
        // A server may answer with UIDs outside the set asked for.
        found.retain(|u| uids.binary_search(u).is_ok());
        Ok(found)
    }

    /// Takes the server's unsolicited announcements the crate set aside;
    /// true when one says the folder grew (new mail).
    fn take_announcements(&mut self) -> bool {
        let mut grew = std::mem::take(&mut self.grew);
        while let Ok(response) = self.inner.unsolicited_responses.try_recv() {
            grew |= matches!(
                response,
                async_imap::types::UnsolicitedResponse::Exists(_)
                    | async_imap::types::UnsolicitedResponse::Recent(1..)
            );
        }
        grew
    }

    async fn uids_after(&mut self, watermark: u32) -> Result<Vec<u32>, ImapError> {
        let mut uids = self
            .search(&format!("UID {}:*", watermark.saturating_add(1)))
            .await?;
        // "n:*" always matches the highest UID, even one below n.
        uids.retain(|&u| u > watermark);
        Ok(uids)
    }

    /// The UIDs matching an IMAP search, ascending.
    async fn search(&mut self, query: &str) -> Result<Vec<u32>, ImapError> {
        let found = step(
            self.timeout,
            &self.scrub,
            "UID SEARCH",
            self.inner.uid_search(query),
        )
        .await?;
        let mut uids: Vec<u32> = found.into_iter().collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// What `backfill` takes of the mail in the folder at first contact.
    /// The floor is the highest UID found: whatever arrives after this
    /// search is above it, so it is new mail, taken whatever `backfill`
    /// says.
    async fn first_contact(&mut self, backfill: Backfill) -> Result<Backfilled, ImapError> {
        let all = self.search("ALL").await?;
        let floor = all.last().copied().unwrap_or(0);
        let messages = all.len();
        let taken = match backfill {
            // Everything, so nothing needs a floor.
            Backfill::All => {
                return Ok(Backfilled {
                    messages,
                    floor: 0,
                    taken: all,
                });
            }
            _ if floor == 0 => Vec::new(),
            Backfill::None => Vec::new(),
            Backfill::Unseen => self.search(&format!("UID 1:{floor} UNSEEN")).await?,
            Backfill::Within(period) => {
                let since = std::time::SystemTime::now()
                    .checked_sub(period)
                    .unwrap_or(std::time::UNIX_EPOCH);
                // SINCE compares dates only, in the server's zone: a day
                // earlier catches every zone, INTERNALDATE decides.
                let day_before = since
                    .checked_sub(Duration::from_secs(86_400))
                    .unwrap_or(std::time::UNIX_EPOCH);
                let candidates = self
                    .search(&format!("UID 1:{floor} SINCE {}", search_date(day_before)))
                    .await?;
                self.arrived_since(&candidates, since).await?
            }
        };
        // A server may answer with UIDs outside the range asked for.
        let taken = taken.into_iter().filter(|&u| u <= floor).collect();
        Ok(Backfilled {
            messages,
            floor,
            taken,
        })
    }

    /// Those of `uids` whose INTERNALDATE is at or after `since`; a mail
    /// the server gives no date for is kept.
    async fn arrived_since(
        &mut self,
        uids: &[u32],
        since: std::time::SystemTime,
    ) -> Result<Vec<u32>, ImapError> {
        let since = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut old = std::collections::HashSet::new();
        for chunk in uids.chunks(SIZE_CHUNK) {
            let answer = self
                .fetch_each(chunk, "(UID INTERNALDATE)", |uid, attrs| {
                    if internal_date_of(attrs).is_some_and(|date| date < since) {
                        old.insert(uid);
                    }
                })
                .await?;
            // First contact is decided once: on a refusal it is decided on
            // a later poll rather than on half the dates.
            if let Err(answer) = answer {
                return Err(ImapError::Refused {
                    step: "UID FETCH",
                    answer,
                });
            }
        }
        Ok(uids.iter().copied().filter(|u| !old.contains(u)).collect())
    }

    /// The sizes (RFC822.SIZE) of `uids`, learnt before fetching them so
    /// batches can be planned by bytes and large mail fetched only in part.
    /// A UID the server does not size (expunged meanwhile) is left out.
    async fn sizes(&mut self, uids: &[u32]) -> Result<HashMap<u32, u64>, ImapError> {
        use async_imap::imap_proto::AttributeValue;
        let mut sizes = HashMap::with_capacity(uids.len());
        for chunk in uids.chunks(SIZE_CHUNK) {
            let answer = self
                .fetch_each(chunk, "(UID RFC822.SIZE)", |uid, attrs| {
                    let size = attrs.iter().find_map(|a| match a {
                        AttributeValue::Rfc822Size(s) => Some(*s),
                        _ => None,
                    });
                    if let Some(size) = size {
                        sizes.insert(uid, u64::from(size));
                    }
                })
                .await?;
            // Sizes only plan the batches: a mail left unsized is planned
            // as large as it may be fetched, and the body FETCH that
            // follows says whether the server really refuses it.
            if let Err(refusal) = answer {
                tracing::debug!(server = %refusal, "the server refused to size some mail");
            }
        }
        Ok(sizes)
    }

    /// Fetches the raw messages for `uids` without setting `\Seen`, each
    /// only up to `cap` bytes (a partial fetch, RFC 3501 6.4.5), so a mail
    /// over `max_email_size` is never held whole. `sizes` are the declared
    /// full sizes, which the parse reports for a cut mail. A refused
    /// command, a UID left out or one without a body is reported in the
    /// [`Delivery`], not an error: what was delivered is still good.
    async fn fetch(
        &mut self,
        uids: &[u32],
        sizes: &HashMap<u32, u64>,
        cap: u64,
    ) -> Result<Delivery, ImapError> {
        use async_imap::imap_proto::AttributeValue;
        // A partial fetch counts in a 32-bit number.
        let cap = cap.clamp(1, u64::from(u32::MAX));
        let items = format!("(BODY.PEEK[]<0.{cap}> INTERNALDATE)");
        let mut mails: HashMap<u32, Fetched> = HashMap::with_capacity(uids.len());
        let answer = self
            .fetch_each(uids, &items, |uid, attrs| {
                // Unsolicited FETCH responses (flag changes) carry no body;
                // neither does a NIL body, which leaves the UID missing.
                let body = attrs.iter().find_map(|a| match a {
                    AttributeValue::BodySection { data, .. } => data.as_deref(),
                    AttributeValue::Rfc822(data) => data.as_deref(),
                    _ => None,
                });
                if let Some(body) = body
                    && uids.binary_search(&uid).is_ok()
                {
                    let declared = sizes.get(&uid).copied().unwrap_or(0);
                    let bytes = body.to_vec();
                    let size = declared.max(bytes.len() as u64);
                    mails.insert(
                        uid,
                        Fetched {
                            bytes,
                            size,
                            // When it arrived, for `ack_max_age`.
                            arrived: internal_date_of(attrs),
                        },
                    );
                }
            })
            .await?;
        let missing: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|uid| !mails.contains_key(uid))
            .collect();
        let mut mails: Vec<(u32, Fetched)> = mails.into_iter().collect();
        mails.sort_unstable_by_key(|(uid, _)| *uid);
        Ok(Delivery {
            mails,
            missing,
            refused: answer.err(),
        })
    }

    async fn store_flag(&mut self, uids: &str, flag: &str) -> Result<(), ImapError> {
        self.run_checked(
            "UID STORE",
            &format!("UID STORE {uids} +FLAGS.SILENT ({flag})"),
        )
        .await
    }

    /// Removes messages flagged `\Deleted`: only `uids` with UIDPLUS; every
    /// flagged message of the folder without it (RFC 3501 has nothing finer).
    async fn expunge(&mut self, uids: &str) -> Result<(), ImapError> {
        if self.caps.uidplus {
            self.run_checked("UID EXPUNGE", &format!("UID EXPUNGE {uids}"))
                .await
        } else {
            self.run_checked("EXPUNGE", "EXPUNGE").await
        }
    }

    /// The reader's after-step for committed `uids`.
    async fn after_step(&mut self, after: &After, uids: &[u32]) -> Result<(), ImapError> {
        let set = uid_set(uids);
        match after {
            After::Keep => Ok(()),
            After::Seen => self.store_flag(&set, "\\Seen").await,
            After::Delete => {
                self.store_flag(&set, "\\Deleted").await?;
                self.expunge(&set).await
            }
            After::Move(folder) => {
                let target = quoted(&mailbox_name(folder));
                let (step, command) = if self.caps.moves {
                    ("UID MOVE", format!("UID MOVE {set} {target}"))
                } else {
                    ("UID COPY", format!("UID COPY {set} {target}"))
                };
                let result = self.run_checked(step, &command).await;
                if let Err(ImapError::Refused { answer, .. } | ImapError::Busy { answer, .. }) =
                    &result
                    && (answer.code.as_deref() == Some("TRYCREATE")
                        || answer.code.as_deref() == Some("NONEXISTENT"))
                {
                    return Err(ImapError::NoMoveTarget {
                        folder: folder.clone(),
                    });
                }
                result?;
                if !self.caps.moves {
                    self.store_flag(&set, "\\Deleted").await?;
                    self.expunge(&set).await?;
                }
                Ok(())
            }
        }
    }

    async fn logout(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.inner.logout()).await;
    }
}

async fn authenticate(
    client: async_imap::Client<Stream>,
    mechanism: &str,
    auth: impl Authenticator,
    t: Duration,
) -> Result<async_imap::Session<Stream>, async_imap::error::Error> {
    match tokio::time::timeout(t, client.authenticate(mechanism, auth)).await {
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        Ok(r) => r.map_err(|(e, _)| e),
    }
}

/// SASL PLAIN, or the LOGIN command for servers without it. LOGIN is only
/// tried when PLAIN was refused as a mechanism (BAD), never after a wrong
/// password (NO), so one bad password is one failed login.
async fn login_plain(
    client: async_imap::Client<Stream>,
    user: &str,
    password: &SecretString,
    t: Duration,
) -> Result<async_imap::Session<Stream>, async_imap::error::Error> {
    let plain = Plain {
        user,
        password,
        sent: false,
    };
    let client = match tokio::time::timeout(t, client.authenticate("PLAIN", plain)).await {
        Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        Ok(Ok(session)) => return Ok(session),
        Ok(Err((async_imap::error::Error::Bad(_), client))) => client,
        Ok(Err((e, _))) => return Err(e),
    };
    match tokio::time::timeout(t, client.login(user, password.expose_secret())).await {
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        Ok(r) => r.map_err(|(e, _)| e),
    }
}

/// A folder name as IMAP wants it on the wire: modified UTF-7 (RFC 3501
/// 5.1.3), where `&` is escaped as `&-` and any run of non-ASCII text is
/// `&` + base64 of its UTF-16 (with `,` for `/`) + `-`.
pub(crate) fn mailbox_name(folder: &str) -> String {
    const ALPHABET: base64::alphabet::Alphabet = match base64::alphabet::Alphabet::new(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,",
    ) {
        Ok(a) => a,
        Err(_) => panic!("the modified UTF-7 alphabet is valid"),
    };
    const ENGINE: base64::engine::GeneralPurpose =
        base64::engine::GeneralPurpose::new(&ALPHABET, base64::engine::general_purpose::NO_PAD);
    let mut out = String::with_capacity(folder.len());
    let mut run: Vec<u8> = Vec::new();
    let flush = |run: &mut Vec<u8>, out: &mut String| {
        if !run.is_empty() {
            out.push('&');
            out.push_str(&ENGINE.encode(&run));
            out.push('-');
            run.clear();
        }
    };
    for c in folder.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                run.extend_from_slice(&unit.to_be_bytes());
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The IMAP response parser (imap-proto) can panic on malformed server
/// bytes (a non-UTF-8 byte right after a response code, found by
/// fuzzing). Contained here, a broken or hostile server is a protocol error
/// in `last_error`, like any other bad answer, instead of a reader task
/// that panics and restarts in a loop.
async fn contained<T>(
    fut: impl std::future::Future<Output = Result<T, ImapError>>,
) -> Result<T, ImapError> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(unreadable_answer()))
}

fn unreadable_answer() -> ImapError {
    ImapError::Protocol {
        step: "reading the server's answer",
        detail: "the IMAP response parser failed on a malformed response".into(),
    }
}

/// Connects, authenticates and selects the folder; counts what is waiting,
/// and makes sure the after-step can work (a `move:` target exists).
pub async fn check(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
) -> Result<CheckReport, ImapError> {
    contained(check_inner(reader, credential, store)).await
}

async fn check_inner(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
) -> Result<CheckReport, ImapError> {
    let mut session = Session::open(reader, credential).await?;
    let selected = session.select(&reader.folder).await?;
    if let After::Move(folder) = &reader.after
        && !session.folder_exists(folder).await?
    {
        return Err(ImapError::NoMoveTarget {
            folder: folder.clone(),
        });
    }
    let pos = position(reader, &selected);
    let watermark = store.watermark(&pos).await?;
    let (waiting, first_contact) = match store.imap_floor(&pos).await? {
        None if watermark == 0 => {
            let plan = session.first_contact(reader.backfill).await?;
            let preview = FirstContactPreview {
                backfill: reader.backfill,
                messages: plan.messages,
                taken: plan.taken.len(),
            };
            (plan.taken.len(), Some(preview))
        }
        floor => {
            let floor = floor.map_or(0, |f| f.floor);
            let waiting = uids_since_first_contact(&mut session, store, &pos, watermark, floor)
                .await?
                .len()
                + store.owed_uids(&pos).await?.len();
            (waiting, None)
        }
    };
    let capabilities = session.caps.names();
    session.logout().await;
    Ok(CheckReport {
        messages: selected.exists,
        waiting,
        capabilities,
        first_contact,
    })
}

/// Waits in IDLE on a kept connection until the server reports a change,
/// `at_most` passes (capped at `IDLE_RENEW`), or `cancel` fires. The
/// caller passes its poll interval: an IDLE that died silently (a NAT
/// dropping the idle flow) then delays mail by one interval, not forever,
/// and every interval records a success that `status` can see.
pub async fn idle(
    kept: &mut Option<Connection>,
    cancel: &CancellationToken,
    at_most: Duration,
) -> Idled {
    use futures::FutureExt as _;
    // See `contained`; a connection whose answer broke the parser is gone.
    std::panic::AssertUnwindSafe(idle_inner(kept, cancel, at_most))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Idled::Lost(unreadable_answer()))
}

async fn idle_inner(
    kept: &mut Option<Connection>,
    cancel: &CancellationToken,
    at_most: Duration,
) -> Idled {
    let renew = IDLE_RENEW.min(at_most);
    let Some(mut conn) = kept.take() else {
        return Idled::Unsupported;
    };
    if !conn.session.caps.idle {
        conn.session.logout().await;
        return Idled::Unsupported;
    }
    // Mail that arrived after the poll's search was announced (EXISTS) in
    // answer to a later command, and IDLE would not announce it again:
    // poll at once instead of waiting for the next change.
    if conn.session.take_announcements() {
        *kept = Some(conn);
        return Idled::Changed;
    }
    let Connection { session, selected } = conn;
    let Session {
        inner,
        timeout,
        caps,
        progress,
        scrub,
        grew,
    } = session;
    let mut handle = inner.idle();
    match tokio::time::timeout(timeout, handle.init()).await {
        Err(_) => return Idled::Lost(timed_out("IDLE", timeout)),
        Ok(Err(e)) => return Idled::Lost(crate_error(&scrub, "IDLE", e)),
        Ok(Ok(())) => {}
    }
    let outcome = {
        // The renewal bound is ours, not the crate's: its timer restarts on
        // every keep-alive the server sends, so it alone would never renew.
        let (wait, _stop) = handle.wait_with_timeout(renew);
        tokio::select! {
            () = cancel.cancelled() => return Idled::Cancelled,
            r = tokio::time::timeout(renew, wait) => r,
        }
    };
    let changed = match outcome {
        // The crate reports a closed connection as an interrupt; we never
        // interrupt it ourselves.
        Ok(Ok(async_imap::extensions::idle::IdleResponse::ManualInterrupt)) => {
            return Idled::Lost(connection_closed("IDLE"));
        }
        Ok(Err(e)) => return Idled::Lost(crate_error(&scrub, "IDLE", e)),
        Ok(Ok(_)) | Err(_) => Idled::Changed,
    };
    match tokio::time::timeout(timeout, handle.done()).await {
        Err(_) => Idled::Lost(timed_out("DONE", timeout)),
        Ok(Err(e)) => Idled::Lost(crate_error(&scrub, "DONE", e)),
        Ok(Ok(inner)) => {
            *kept = Some(Connection {
                session: Session {
                    inner,
                    timeout,
                    caps,
                    progress,
                    scrub,
                    grew,
                },
                selected,
            });
            changed
        }
    }
}

/// A session for this poll: the kept one if it still answers, else a new
/// one with the folder selected.
async fn session_for_poll(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    kept: &mut Option<Connection>,
) -> Result<(Session, Selected), ImapError> {
    if let Some(mut conn) = kept.take() {
        // A NOOP both proves the connection and collects what changed.
        let session = &mut conn.session;
        match step(
            session.timeout,
            &session.scrub,
            "NOOP",
            session.inner.noop(),
        )
        .await
        {
            Ok(()) => return Ok((conn.session, conn.selected)),
            Err(e) => {
                tracing::debug!(error = %e, "kept IMAP connection is gone; reconnecting");
            }
        }
    }
    let mut session = Session::open(reader, credential).await?;
    let selected = session.select(&reader.folder).await?;
    Ok((session, selected))
}

/// Ingests everything new in the reader's folder, batch by batch. Stops
/// between batches when `cancel` fires; a batch being committed is always
/// finished first. With `idle = true` the connection is left in `kept` for
/// [`idle`] and the next poll.
pub async fn poll(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
    cancel: &CancellationToken,
    kept: &mut Option<Connection>,
    meter: &ReaderMetrics,
) -> Result<PollReport, ImapError> {
    contained(poll_inner(reader, credential, store, cancel, kept, meter)).await
}

async fn poll_inner(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
    cancel: &CancellationToken,
    kept: &mut Option<Connection>,
    meter: &ReaderMetrics,
) -> Result<PollReport, ImapError> {
    let (mut session, selected) = session_for_poll(reader, credential, kept).await?;
    let pos = position(reader, &selected);
    let mut report = PollReport::default();
    let mut after_failed: Option<ImapError> = None;

    // Mail committed by an earlier poll whose after-step did not happen.
    let pending = store.pending_after(&pos).await?;
    if run_after(&mut session, reader, &pending, &mut after_failed).await {
        store.mark_after_done(&pos, &pending).await?;
    }

    let watermark = store.watermark(&pos).await?;
    if watermark == 0
        && let Some(old) = store.other_uidvalidity(&pos).await?
    {
        tracing::warn!(
            folder = %reader.folder,
            old,
            new = pos.uidvalidity,
            backfill = %reader.backfill.as_str(),
            "UIDVALIDITY changed (the folder was recreated): a first contact again, where backfill decides what is taken; mail already stored is matched by Message-ID and content"
        );
    }
    let mut uids = uids_to_take(&mut session, store, reader, &pos, watermark).await?;
    // Whatever was announced up to here, this search has seen.
    session.take_announcements();
    // The ledger, not the highest UID, decides what is done: UIDs below
    // the watermark that the server did not deliver are asked for again.
    uids = with_owed(&mut session, store, &pos, uids).await?;
    if !uids.is_empty() {
        tracing::debug!(new = uids.len(), "new mail");
    }
    // One policy for the whole poll: the cap a mail is fetched with is the
    // limit its parse judges it by.
    let policy = reader.mail.current();
    let batching = Batching::of(reader, &policy);
    let sizes = if uids.is_empty() {
        HashMap::new()
    } else {
        session.sizes(&uids).await?
    };
    // A mail the server did not size is planned as if it were as large as
    // it may be fetched.
    let declared: Vec<u64> = uids
        .iter()
        .map(|uid| sizes.get(uid).copied().unwrap_or(batching.fetch_cap))
        .collect();
    // Batch k+1 is fetched while batch k is parsed and committed, so at
    // most two batches of raw mail are in flight, each within
    // max(batch_bytes, max_email_size) (plus, briefly, the crate's copy of
    // the one response being read).
    let chunks: Vec<&[u32]> = batching
        .plan(&declared)
        .into_iter()
        .map(|range| &uids[range])
        .collect();
    let fetching = Fetching {
        sizes: &sizes,
        cap: batching.fetch_cap,
        cancel,
        meter,
    };
    let mut next = match chunks.first() {
        Some(first) => fetching.fetch(&mut session, first).await?,
        None => None,
    };
    // Committed, after-step not yet done on the server.
    let mut undone: Vec<u32> = Vec::new();
    // After-step done on the server, not yet recorded in the ledger.
    let mut done: Vec<u32> = Vec::new();
    // Asked for, not delivered, still owed after this poll.
    let mut undelivered: Vec<u32> = Vec::new();
    let mut undelivered_words = String::new();
    let mut index = 0;
    while let Some(delivery) = next.take() {
        let Delivery {
            mails: raw,
            missing,
            refused,
        } = delivery;
        report.fetched += raw.len();
        let following = chunks.get(index + 1).copied();
        let to_do = std::mem::take(&mut undone);
        let to_record = std::mem::take(&mut done);
        // Two lanes: the store parses and commits batch k (recording batch
        // k-2's after-steps in the same transaction, so the lanes never
        // wait on each other's database lock) while the IMAP session does
        // batch k-1's after-step and fetches batch k+1. The commit is
        // deliberately not raced with `cancel`: a batch that started
        // committing is finished, so shutdown never loses work.
        let started = std::time::Instant::now();
        let (committed, (after_ok, prefetched)) = tokio::join!(
            async {
                // Owed before anything above them is committed: the
                // positions may then pass them, the ledger still has them.
                let words = match &refused {
                    Some(answer) => format!("it answered {answer}"),
                    None => "its answer left them out or had no body".to_string(),
                };
                let owed = store.owe(&pos, &missing, &words).await?;
                let parsed = ingest::parse_batch(raw, &reader.name, &policy).await?;
                let uids: Vec<u32> = parsed.iter().map(|(uid, _)| *uid).collect();
                let committing = std::time::Instant::now();
                let outcome = store
                    .commit_batch(crate::store::Batch::Imap {
                        position: &pos,
                        mails: &parsed,
                        after_done: &to_record,
                    })
                    .await?;
                meter.committed(&outcome, committing.elapsed());
                Ok::<_, ImapError>((uids, outcome, owed, words))
            },
            async {
                let ok = run_after(&mut session, reader, &to_do, &mut after_failed).await;
                let prefetched = match following {
                    Some(chunk) => fetching.fetch(&mut session, chunk).await,
                    None => Ok(None),
                };
                (ok, prefetched)
            }
        );
        let (committed, outcome, owed, words) = committed?;
        for owed in owed {
            match owed {
                Owed::Again { uid, attempts } => {
                    tracing::warn!(uid, attempts, server = %words, "the IMAP server did not deliver a mail; asking again next poll");
                    undelivered.push(uid);
                    undelivered_words.clone_from(&words);
                }
                Owed::SetAside { uid, email } => {
                    tracing::warn!(uid, email, server = %words, "the IMAP server kept refusing a mail; set aside in the quarantine");
                    report.quarantined += 1;
                }
            }
        }
        tracing::debug!(
            mails = committed.len(),
            created = outcome.created,
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        report.created += outcome.created;
        report.joined += outcome.joined;
        report.ignored += outcome.ignored_total();
        report.quarantined += outcome.quarantined;
        report.duplicates += outcome.duplicates;
        undone = committed;
        if after_ok {
            done = to_do;
        }
        next = prefetched?;
        index += 1;
    }
    if run_after(&mut session, reader, &undone, &mut after_failed).await {
        done.extend(undone);
    }
    store.mark_after_done(&pos, &done).await?;
    store.settle_owed(&pos).await?;
    report.interrupted = cancel.is_cancelled() && index < chunks.len();
    if let Some(e @ ImapError::NoMoveTarget { .. }) = after_failed {
        // The tickets exist; the admin must fix the target before mail
        // can leave the folder.
        session.logout().await;
        return Err(e);
    }
    // What was delivered is committed; what was not must not pass for a
    // good poll.
    if !undelivered.is_empty() {
        session.logout().await;
        undelivered.sort_unstable();
        return Err(ImapError::Undelivered {
            folder: reader.folder.clone(),
            count: undelivered.len(),
            uids: uid_set(&undelivered),
            words: undelivered_words,
        });
    }
    if let Some(e) = after_failed {
        session.logout().await;
        return Err(ImapError::AfterStep {
            after: reader.after.as_str(),
            source: Box::new(e),
        });
    }
    if reader.idle && !cancel.is_cancelled() {
        *kept = Some(Connection { session, selected });
    } else {
        session.logout().await;
    }
    Ok(report)
}

/// What a first contact takes of the mail already in a folder.
#[derive(Debug)]
struct Backfilled {
    /// Mails in the folder at first contact.
    messages: usize,
    /// The highest UID then; 0 when everything is taken.
    floor: u32,
    /// UIDs at or below the floor to take, ascending.
    taken: Vec<u32>,
}

/// The UIDs this poll takes. At first contact with the folder (at this
/// UIDVALIDITY) that is what `backfill` takes of the mail already there,
/// recorded with its floor before anything is fetched. After it: every UID
/// above both the watermark and the floor, and any UID the first contact
/// took that is not in the ledger yet (a first poll cut short).
async fn uids_to_take(
    session: &mut Session,
    store: &Store,
    reader: &ReaderConfig,
    pos: &FolderPosition,
    watermark: u32,
) -> Result<Vec<u32>, ImapError> {
    let floor = match store.imap_floor(pos).await? {
        Some(floor) => floor.floor,
        // Mail ingested before first contacts were recorded: no floor.
        None if watermark > 0 => 0,
        None => {
            let plan = session.first_contact(reader.backfill).await?;
            let backfill = reader.backfill.as_str();
            store
                .record_imap_first_contact(pos, &backfill, plan.messages, plan.floor, &plan.taken)
                .await?;
            let skipped = plan.messages.saturating_sub(plan.taken.len());
            tracing::info!(
                folder = %reader.folder,
                messages = plan.messages,
                taken = plan.taken.len(),
                skipped,
                backfill = %backfill,
                "first contact with the folder: backfill takes {} of the {} mails already there; \
                 the {skipped} others stay in the folder untouched and are never taken",
                plan.taken.len(),
                plan.messages,
            );
            return Ok(plan.taken);
        }
    };
    uids_since_first_contact(session, store, pos, watermark, floor).await
}

/// After first contact: every UID above both the watermark and the floor,
/// and the UIDs the first contact took that are not in the ledger yet.
async fn uids_since_first_contact(
    session: &mut Session,
    store: &Store,
    pos: &FolderPosition,
    watermark: u32,
    floor: u32,
) -> Result<Vec<u32>, ImapError> {
    let mut uids = session.uids_after(watermark.max(floor)).await?;
    let owed = store.imap_backfill_owed(pos).await?;
    if !owed.is_empty() {
        // Only those still in the folder.
        uids.extend(session.existing(&owed).await?);
        uids.sort_unstable();
        uids.dedup();
    }
    Ok(uids)
}

/// A date as IMAP SEARCH writes it (RFC 3501 `date`): `6-Dec-2026`, UTC.
fn search_date(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%-d-%b-%Y")
        .to_string()
}

/// The INTERNALDATE among a FETCH answer's attributes, if readable.
fn internal_date_of(attrs: &[async_imap::imap_proto::AttributeValue<'_>]) -> Option<i64> {
    attrs.iter().find_map(|a| match a {
        async_imap::imap_proto::AttributeValue::InternalDate(date) => internal_date(date),
        _ => None,
    })
}

/// An INTERNALDATE (RFC 3501 `date-time`, `" 6-Dec-2026 04:03:55 +0100"`)
/// as seconds since the epoch; `None` when the server wrote something else.
fn internal_date(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(text.trim(), "%d-%b-%Y %H:%M:%S %z")
        .ok()
        .map(|d| d.timestamp())
}

/// What every fetch of one poll shares.
struct Fetching<'a> {
    sizes: &'a HashMap<u32, u64>,
    cap: u64,
    cancel: &'a CancellationToken,
    meter: &'a ReaderMetrics,
}

impl Fetching<'_> {
    /// Fetches `uids`, or returns `None` once shutdown has begun.
    async fn fetch(
        &self,
        session: &mut Session,
        uids: &[u32],
    ) -> Result<Option<Delivery>, ImapError> {
        if self.cancel.is_cancelled() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        tokio::select! {
            raw = session.fetch(uids, self.sizes, self.cap) => {
                let raw = raw?;
                self.meter.fetched(started.elapsed());
                Ok(Some(raw))
            }
            () = self.cancel.cancelled() => Ok(None),
        }
    }
}

/// Runs the after-step for committed mail; true when the server confirmed
/// it. A failure is not a failed poll: the tickets exist, and the ledger
/// keeps the UIDs pending until a later poll succeeds. The first failure
/// is kept in `failed` for the caller.
async fn run_after(
    session: &mut Session,
    reader: &ReaderConfig,
    uids: &[u32],
    failed: &mut Option<ImapError>,
) -> bool {
    if uids.is_empty() || failed.is_some() {
        return uids.is_empty();
    }
    match session.after_step(&reader.after, uids).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                after = %reader.after.as_str(),
                count = uids.len(),
                error = %e,
                "after-step failed for ingested mail; will retry next poll"
            );
            *failed = Some(e);
            false
        }
    }
}

/// `uids` (new mail) together with the UIDs the ledger owes that the
/// folder still holds, ascending; an owed UID the folder no longer holds
/// (expunged before it could be delivered) is forgotten, with a history
/// line saying so.
async fn with_owed(
    session: &mut Session,
    store: &Store,
    pos: &FolderPosition,
    mut uids: Vec<u32>,
) -> Result<Vec<u32>, ImapError> {
    let owed = store.owed_uids(pos).await?;
    if owed.is_empty() {
        return Ok(uids);
    }
    let present = session.existing(&owed).await?;
    let gone: Vec<u32> = owed
        .iter()
        .copied()
        .filter(|u| present.binary_search(u).is_err())
        .collect();
    if !gone.is_empty() {
        tracing::warn!(uids = %uid_set(&gone), "mail the server had not delivered is gone from the folder");
        store
            .forget_owed(pos, &gone, "the folder no longer holds them")
            .await?;
    }
    uids.extend(present);
    uids.sort_unstable();
    uids.dedup();
    Ok(uids)
}

fn position(reader: &ReaderConfig, selected: &Selected) -> FolderPosition {
    FolderPosition {
        reader: reader.name.clone(),
        folder: reader.folder.clone(),
        uidvalidity: selected.uidvalidity,
    }
}

/// The store names UIDs in its events the same way, so the set lives there.
pub(crate) use crate::store::uid_set;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_dates_are_rfc3501() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_529_835);
        assert_eq!(search_date(t), "6-Dec-2026");
        assert_eq!(search_date(std::time::UNIX_EPOCH), "1-Jan-1970");
    }

    #[test]
    fn internal_dates_are_read_with_their_zone() {
        assert_eq!(
            internal_date(" 6-Dec-2026 05:03:55 +0100"),
            Some(1_796_529_835)
        );
        assert_eq!(
            internal_date("06-Dec-2026 04:03:55 +0000"),
            Some(1_796_529_835)
        );
        assert_eq!(internal_date("yesterday"), None);
    }

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn folder_names_are_modified_utf7() {
        assert_eq!(mailbox_name("INBOX"), "INBOX");
        assert_eq!(mailbox_name("Tom & Jerry"), "Tom &- Jerry");
        assert_eq!(
            mailbox_name("Erledigt/Bearbeitet-äöü"),
            "Erledigt/Bearbeitet-&AOQA9gD8-"
        );
        assert_eq!(
            mailbox_name("Отправленные"),
            "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"
        );
        assert_eq!(mailbox_name("台北"), "&U,BTFw-");
        // Outside the BMP: a surrogate pair in one run.
        assert_eq!(mailbox_name("a😀b"), "a&2D3eAA-b");
    }

    #[test]
    fn the_crates_refusals_are_read_back_for_people() {
        let scrub = Scrubber::new(["0123456789abcdefghij-token"]);
        let no = async_imap::error::Error::No(
            "code: None, info: Some(\"[LIMIT] Maximum number of \\\"connections\\\"\\u{1b}\")"
                .into(),
        );
        let r = crate_refusal(&scrub, &no).expect("a refusal");
        assert_eq!(r.code.as_deref(), Some("LIMIT"));
        assert_eq!(r.text, "Maximum number of \"connections\"?");
        assert!(matches!(
            crate_error(&scrub, "SELECT", no),
            ImapError::Busy { step: "SELECT", .. }
        ));
        let bad = async_imap::error::Error::Bad(
            "code: Some(TryCreate), info: Some(\"no 0123456789abcdefgh here\")".into(),
        );
        let select = async_imap::error::Error::No(
            "outcome: Outcome { code: None, information: Some(\"Mailbox is locked\") }".into(),
        );
        let r = crate_refusal(&scrub, &select).expect("a refusal");
        assert_eq!((r.code, r.text.as_str()), (None, "Mailbox is locked"));
        let r = crate_refusal(&scrub, &bad).expect("a refusal");
        assert_eq!(r.code.as_deref(), Some("TRYCREATE"));
        assert_eq!(r.text, "no [redacted] here");
        let shown = crate_error(&scrub, "UID COPY", bad).to_string();
        assert_eq!(
            shown,
            "the IMAP server refused UID COPY: \"[TRYCREATE] no [redacted] here\""
        );
    }

    #[test]
    fn xoauth2_first_response_then_empty() {
        let token = SecretString::from("tok");
        let mut auth = XOAuth2 {
            user: "u@x",
            token: &token,
            sent: false,
        };
        assert_eq!(auth.process(b""), b"user=u@x\x01auth=Bearer tok\x01\x01");
        assert_eq!(auth.process(b"{\"status\":\"401\"}"), b"");
    }
}
