//! POP3 over implicit TLS or STLS, with SASL XOAUTH2 (or a password).
//!
//! Owns how a POP3 maildrop becomes tickets exactly once. POP3 has no
//! flags and no folders, only a unique id per message (UIDL); the ledger
//! (`pop3_uidls`) records each UIDL in the same transaction as its ticket.
//! `after = "keep"` leaves mail on the server, and the ledger keeps it from
//! being ingested again. `after = "delete"` sends DELE only for committed
//! mail; the server applies deletions only at a clean QUIT, so until QUIT is
//! confirmed the UIDLs stay pending and are deleted again on the next poll.
//! A server without UIDL is refused: without it there is no way to tell a
//! new message from one already ingested. At first contact `backfill`
//! decides which of the mail already there is taken; the UIDLs it leaves
//! are recorded (`pop3_skipped`) and never taken or deleted.
//!
//! Sizes come from LIST first, so batches close at `batch_size` or
//! `batch_bytes`, and RETR keeps only the first `max_email_size` bytes of a
//! message (the rest is read and dropped).

pub(crate) mod proto;

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;

use self::proto::{Capabilities, Connection, Pop3Error as WireError};
use super::refusal::Refusal;
use super::{
    Batching, CheckReport, FirstContactPreview, PollReport, SignInSecret, SourceError, batch,
};
use crate::config::{After, Backfill, ReaderConfig, Tls};
use crate::ingest::{self, Fetched};
use crate::ops::metrics::ReaderMetrics;
use crate::outcome::FailureClass;
use crate::store::Store;
use crate::transport::{self, Endpoint, Stream};

/// What only POP3 fails at; the failures every protocol shares (connect,
/// TLS, a refused credential, parser, store) are [`SourceError`]'s.
#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error(transparent)]
    Wire(WireError),
    /// A login refused with a code that does not blame the credential
    /// (RFC 2449 / 3206: `[SYS/TEMP]`, `[IN-USE]`, `[LOGIN-DELAY]`,
    /// `[SYS/PERM]`): retried; the token is kept, a password reader is not
    /// stopped.
    #[error("the POP3 server refused the login for now (retried with backoff): {answer}")]
    LoginRefused { answer: Refusal },
    #[error(
        "{server} does not support UIDL (unique message ids), so mail2ticket cannot tell new mail \
         from mail it already ingested; use IMAP for this mailbox"
    )]
    NoUidl { server: String },
}

/// A -ERR to the login, sorted by its response code (RFC 2449 / 3206):
/// only `[AUTH]`, or no code at all, refuses the credential.
fn refused_login(what: &'static str, user: &str, text: String) -> SourceError {
    SourceError::login_refused("POP3", what, user, Refusal::parse(&text), text, |answer| {
        Pop3Error::LoginRefused { answer }.into()
    })
}

impl Pop3Error {
    pub fn class(&self) -> FailureClass {
        match self {
            Pop3Error::Wire(
                WireError::Io { .. } | WireError::Closed { .. } | WireError::Timeout { .. },
            ) => FailureClass::Connection,
            Pop3Error::Wire(WireError::AuthRejected { .. }) => FailureClass::Auth,
            Pop3Error::Wire(WireError::Err { .. } | WireError::Protocol { .. }) => {
                FailureClass::Protocol
            }
            Pop3Error::LoginRefused { .. } => FailureClass::Connection,
            Pop3Error::NoUidl { .. } => FailureClass::Config,
        }
    }
}

impl From<WireError> for Pop3Error {
    fn from(e: WireError) -> Self {
        Pop3Error::Wire(e)
    }
}

impl From<WireError> for SourceError {
    fn from(e: WireError) -> Self {
        SourceError::Pop3(Pop3Error::Wire(e))
    }
}

/// An authenticated session in the TRANSACTION state.
struct Session {
    conn: Connection<Stream>,
    caps: Capabilities,
}

impl Session {
    async fn open(
        reader: &ReaderConfig,
        credential: &SignInSecret,
    ) -> Result<Session, SourceError> {
        let t = reader.timeout;
        let endpoint = Endpoint::of(reader);
        let mut conn = Connection::new(transport::connect(&endpoint).await?, t);
        conn.greeting().await?;
        let mut caps = conn.capa().await?;
        if reader.tls == Tls::StartTls {
            if let Err(e) = conn.stls().await {
                return Err(SourceError::NoStartTls {
                    server: reader.host.clone(),
                    command: "STLS",
                    port: 995,
                    detail: e.to_string(),
                });
            }
            // `into_inner` refuses a stream with bytes pending: they came
            // before the handshake and cannot be trusted.
            let stream = transport::upgrade(conn.into_inner()?, &endpoint).await?;
            conn = Connection::new(stream, t);
            // What the server offers can change once the line is private.
            caps = conn.capa().await?;
        }
        let user = reader.username.as_str();
        let (result, what) = match credential {
            // Always the two-step form: Exchange Online refuses XOAUTH2 as an
            // initial response on the AUTH line.
            SignInSecret::Token(token) => (conn.auth_xoauth2(user, token).await, "access token"),
            SignInSecret::Password(password) if caps.sasl.iter().any(|m| m == "PLAIN") => {
                (conn.auth_plain(user, password).await, "password")
            }
            SignInSecret::Password(password) => (conn.user_pass(user, password).await, "password"),
        };
        match result {
            Err(WireError::AuthRejected { text }) => Err(refused_login(what, user, text)),
            Err(e) => Err(e.into()),
            Ok(()) => {
                // CAPA may only be complete after login (RFC 2449 6.0).
                if let Ok(after_login) = conn.capa().await
                    && after_login != Capabilities::default()
                {
                    caps = after_login;
                }
                Ok(Session { conn, caps })
            }
        }
    }

    /// Every message's number and UIDL; a server without UIDL is refused.
    async fn uidls(&mut self, server: &str) -> Result<Vec<(u32, String)>, Pop3Error> {
        match self.conn.uidl().await {
            Ok(list) => Ok(list),
            Err(WireError::Err { .. }) => Err(Pop3Error::NoUidl {
                server: server.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The most of a message's header section read to learn its date at first
/// contact; the Received and Date headers come long before this.
const HEADER_CAP: usize = 64 << 10;

/// The UIDLs `backfill` leaves of the maildrop at first contact. POP3
/// keeps no read state, so all mail on the server counts as unseen. A
/// period is judged by each mail's newest Received date, else its Date
/// (read with `TOP n 0`); a mail with neither is taken.
async fn first_contact_skips(
    session: &mut Session,
    backfill: Backfill,
    listing: &[(u32, String)],
) -> Result<Vec<String>, Pop3Error> {
    let period = match backfill {
        Backfill::Unseen | Backfill::All => return Ok(Vec::new()),
        Backfill::None => return Ok(listing.iter().map(|(_, u)| u.clone()).collect()),
        Backfill::Within(period) => period,
    };
    let since = std::time::SystemTime::now()
        .checked_sub(period)
        .unwrap_or(std::time::UNIX_EPOCH)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut skipped = Vec::new();
    for (number, uidl) in listing {
        let mut head = Vec::new();
        session
            .conn
            .top_capped(*number, &mut head, HEADER_CAP)
            .await?;
        if ingest::received_at(&head).is_some_and(|t| t < since) {
            skipped.push(uidl.clone());
        }
    }
    Ok(skipped)
}

/// The UIDLs never to take: on first contact, what `backfill` leaves,
/// recorded before anything is fetched; after it, what it left then.
async fn skipped_uidls(
    session: &mut Session,
    store: &Store,
    reader: &ReaderConfig,
    listing: &[(u32, String)],
) -> Result<HashSet<String>, SourceError> {
    if store.pop3_met(&reader.name).await? {
        let mut skipped = store.pop3_skipped(&reader.name).await?;
        let listed: HashSet<&str> = listing.iter().map(|(_, u)| u.as_str()).collect();
        let gone: Vec<String> = skipped
            .iter()
            .filter(|u| !listed.contains(u.as_str()))
            .cloned()
            .collect();
        store.forget_pop3_skipped(&reader.name, &gone).await?;
        skipped.retain(|u| listed.contains(u.as_str()));
        return Ok(skipped);
    }
    let skipped = first_contact_skips(session, reader.backfill, listing).await?;
    let backfill = reader.backfill.as_str();
    store
        .record_pop3_first_contact(&reader.name, &backfill, listing.len(), &skipped)
        .await?;
    let taken = listing.len().saturating_sub(skipped.len());
    tracing::info!(
        messages = listing.len(),
        taken,
        skipped = skipped.len(),
        backfill = %backfill,
        "first contact with the maildrop: backfill takes {taken} of the {} mails already there; \
         the {} others stay on the server untouched and are never taken",
        listing.len(),
        skipped.len(),
    );
    Ok(skipped.into_iter().collect())
}

/// Connects, authenticates and counts what is waiting.
pub async fn check(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
) -> Result<CheckReport, SourceError> {
    let mut session = Session::open(reader, credential).await?;
    let (messages, _) = session.conn.stat().await?;
    let listing = session.uidls(&reader.host).await?;
    let ledger = store.pop3_ledger(&reader.name).await?;
    let (skipped, first_contact) = if store.pop3_met(&reader.name).await? {
        (store.pop3_skipped(&reader.name).await?, None)
    } else {
        let skipped = first_contact_skips(&mut session, reader.backfill, &listing).await?;
        let preview = FirstContactPreview {
            backfill: reader.backfill,
            messages: listing.len(),
            taken: listing.len().saturating_sub(skipped.len()),
        };
        (skipped.into_iter().collect(), Some(preview))
    };
    let waiting = listing
        .iter()
        .filter(|(_, uidl)| !ledger.contains_key(uidl) && !skipped.contains(uidl))
        .count();
    let mut capabilities = Vec::new();
    // The listing worked, so UIDL is there even if CAPA did not say so.
    capabilities.push("UIDL");
    if session.caps.pipelining {
        capabilities.push("PIPELINING");
    }
    session.conn.quit().await?;
    Ok(CheckReport {
        messages,
        waiting,
        capabilities,
        first_contact,
    })
}

/// Ingests every message whose UIDL is not in the ledger, in batches, and
/// deletes committed mail when `after = "delete"`.
pub async fn poll(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
    cancel: &CancellationToken,
    meter: &ReaderMetrics,
) -> Result<PollReport, SourceError> {
    let delete = match reader.after {
        After::Delete => true,
        // Config refuses the IMAP-only steps for POP3.
        After::Keep | After::Seen | After::Move(_) => false,
    };
    let mut session = Session::open(reader, credential).await?;
    let listing = session.uidls(&reader.host).await?;
    let ledger = store.pop3_ledger_sized(&reader.name).await?;
    let skipped = skipped_uidls(&mut session, store, reader, &listing).await?;
    let mut report = PollReport::default();
    // Every mail's size, also of those in the ledger: a server that reuses
    // UIDLs is caught by a size that differs from the one ingested.
    let sizes: HashMap<u32, u64> = if listing.is_empty() {
        HashMap::new()
    } else {
        session.conn.list().await?.into_iter().collect()
    };

    // Deleted this session; the deletions count only once QUIT succeeds.
    let mut deleted: Vec<String> = Vec::new();
    // Pending in the ledger but gone from the server: a QUIT that went
    // through before we could record it.
    let mut gone: Vec<String> = ledger
        .iter()
        .filter(|(_, (pending, _))| *pending)
        .map(|(uidl, _)| uidl.clone())
        .collect();
    let on_server: HashMap<&str, u32> = listing.iter().map(|(n, u)| (u.as_str(), *n)).collect();
    gone.retain(|uidl| !on_server.contains_key(uidl.as_str()));

    let mut new: Vec<(u32, String)> = Vec::new();
    for (number, uidl) in &listing {
        let listed = sizes.get(number).copied();
        match ledger.get(uidl) {
            // Left by the first contact: never a ticket, never deleted.
            None if skipped.contains(uidl) => {}
            None => new.push((*number, uidl.clone())),
            // The server gave a new mail the UIDL of one it no longer has:
            // deleting it as done would lose it unread.
            Some((_, Some(was))) if listed.is_some_and(|now| now != *was) => {
                tracing::warn!(
                    uidl = %uidl,
                    ingested_size = was,
                    listed_size = listed,
                    "the server reuses a UIDL for a mail of another size; ingesting it as a new mail"
                );
                new.push((*number, uidl.clone()));
            }
            // Committed earlier: its DELE did not reach a QUIT, or it was
            // kept before the reader was switched to delete.
            Some(_) if delete => {
                session.conn.dele(*number).await?;
                deleted.push(uidl.clone());
            }
            // Pending from a time the reader deleted; it keeps now.
            Some((true, _)) => gone.push(uidl.clone()),
            Some((false, _)) => {}
        }
    }
    if !new.is_empty() {
        tracing::debug!(new = new.len(), "new mail");
    }
    meter.backlog(new.len());

    // One policy for the whole poll: the cap a mail is read with is the
    // limit its parse judges it by.
    let policy = reader.mail.current();
    let batching = Batching::of(reader, &policy);
    let declared: Vec<u64> = new
        .iter()
        // A message LIST did not size is planned as large as it may be read.
        .map(|(number, _)| sizes.get(number).copied().unwrap_or(batching.fetch_cap))
        .collect();
    let cap = usize::try_from(batching.fetch_cap).unwrap_or(usize::MAX);
    let mut index = 0;
    // A RETR cut off by shutdown leaves the connection out of step: no
    // DELE or QUIT can follow, so the session is abandoned (the server
    // then deletes nothing, and the next poll deletes what is pending).
    let mut cut_off = false;
    // One batch at a time, within max(batch_bytes, max_email_size) of raw
    // mail, since each mail is read only up to max_email_size.
    for batch in batching.plan(&declared) {
        if cancel.is_cancelled() {
            break;
        }
        let mut raw: Vec<(u32, String, Fetched)> = Vec::new();
        let fetching = std::time::Instant::now();
        for i in batch {
            let (number, uidl) = &new[i];
            // Reserve what LIST announced (bounded, in case it lies), so the
            // message is read straight into its final buffer.
            let listed = sizes.get(number).copied().unwrap_or(0);
            let reserve = batching.fetched(listed).min(64 << 20);
            let mut body = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
            let retr = tokio::select! {
                r = session.conn.retr_capped(*number, &mut body, cap) => r,
                () = cancel.cancelled() => {
                    cut_off = true;
                    break;
                }
            };
            let size = retr?;
            raw.push((
                *number,
                uidl.clone(),
                // POP3 has no arrival date: the headers tell.
                Fetched {
                    bytes: body,
                    size,
                    arrived: None,
                },
            ));
            index += 1;
        }
        if raw.is_empty() {
            break;
        }
        meter.fetched(fetching.elapsed());
        let numbers: Vec<(u32, String)> = raw.iter().map(|(n, u, _)| (*n, u.clone())).collect();
        let listed: HashMap<String, u64> = numbers
            .iter()
            .filter_map(|(n, u)| sizes.get(n).map(|s| (u.clone(), *s)))
            .collect();
        let raw = raw
            .into_iter()
            .map(|(_, uidl, body)| (uidl, body))
            .collect();
        let listed = &listed;
        batch::ingest(
            raw,
            &reader.name,
            &policy,
            meter,
            &mut report,
            |parsed| async move {
                store
                    .commit_batch(crate::store::Batch::Pop3 {
                        reader: &reader.name,
                        mails: &parsed,
                        sizes: listed,
                        pending: delete,
                    })
                    .await
            },
        )
        .await?;
        if delete && !cut_off {
            for (number, uidl) in numbers {
                session.conn.dele(number).await?;
                deleted.push(uidl);
            }
        }
    }
    report.interrupted = index < new.len();
    if cut_off {
        return Ok(report);
    }
    session.conn.quit().await?;
    gone.extend(deleted);
    store.mark_pop3_done(&reader.name, &gone).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_auth_codes_refuse_the_credential() {
        for text in ["[AUTH] Invalid credentials", "Authentication failed", ""] {
            let e = refused_login("password", "u", text.into());
            assert!(e.is_auth_rejected(), "{text}: {e}");
            assert_eq!(e.class(), FailureClass::Auth);
        }
        for text in [
            "[IN-USE] Maildrop is locked",
            "[SYS/TEMP] Try again later",
            "[LOGIN-DELAY] Wait 5 minutes",
            "[SYS/PERM] Mailbox unavailable",
        ] {
            let e = refused_login("password", "u", text.into());
            assert!(!e.is_auth_rejected(), "{text}: {e}");
            assert_eq!(e.class(), FailureClass::Connection, "{text}");
            assert!(e.to_string().contains(text), "{e}");
        }
    }
}
