//! IMAP over implicit TLS with SASL XOAUTH2.
//!
//! Owns how an IMAP folder becomes tickets exactly once: new mail is found
//! by UID above the ledger's watermark for the folder's UIDVALIDITY, fetched
//! in batches with `BODY.PEEK[]` (so nothing is marked read before its
//! ticket exists), committed, and only then flagged `\Seen`. A flag that
//! could not be set is remembered in the ledger and set on the next poll.

use std::time::Duration;

use async_imap::Authenticator;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::{CheckReport, PollReport};
use crate::config::ReaderConfig;
use crate::ingest::{self, ParsedMail};
use crate::store::{FolderPosition, Store, StoreError};
use crate::transport::{self, ConnectError, Stream};

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "authentication failed: the IMAP server refused the access token for {user} ({server})"
    )]
    AuthRejected { user: String, server: String },
    #[error(
        "authentication failed: the server accepted the token but the session is unusable ({server}); \
         check that {user} has a mailbox with IMAP enabled"
    )]
    NotConnected { user: String, server: String },
    #[error("folder {folder:?} does not exist ({server})")]
    NoFolder { folder: String, server: String },
    #[error("folder {folder:?} has no UIDVALIDITY; cannot track which mail was ingested")]
    NoUidValidity { folder: String },
    #[error("IMAP server did not answer {step} within {}s", .after.as_secs())]
    Timeout { step: &'static str, after: Duration },
    #[error("IMAP {step} failed: {detail}")]
    Protocol { step: &'static str, detail: String },
    #[error("the mail parser task failed: {0}")]
    Parser(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
        format!(
            "user={}\x01auth=Bearer {}\x01\x01",
            self.user,
            self.token.expose_secret()
        )
        .into_bytes()
    }
}

/// An authenticated, verified IMAP session.
struct Session {
    inner: async_imap::Session<Stream>,
    timeout: Duration,
}

/// A folder as selected.
struct Selected {
    uidvalidity: u32,
    exists: u32,
}

async fn step<T>(
    timeout: Duration,
    step: &'static str,
    fut: impl std::future::Future<Output = Result<T, async_imap::error::Error>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ImapError::Timeout {
            step,
            after: timeout,
        }),
        Ok(Err(e)) => Err(ImapError::Protocol {
            step,
            detail: e.to_string(),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

impl Session {
    async fn open(reader: &ReaderConfig, token: &SecretString) -> Result<Session, ImapError> {
        let t = reader.timeout;
        let stream =
            transport::connect_tls(&reader.host, reader.port, reader.ca_file.as_deref(), t).await?;
        let mut client = async_imap::Client::new(stream);
        match tokio::time::timeout(t, client.read_response()).await {
            Err(_) => {
                return Err(ImapError::Timeout {
                    step: "greeting",
                    after: t,
                });
            }
            Ok(Err(e)) => {
                return Err(ImapError::Protocol {
                    step: "greeting",
                    detail: e.to_string(),
                });
            }
            Ok(Ok(None)) => {
                return Err(ImapError::Protocol {
                    step: "greeting",
                    detail: "the server closed the connection".into(),
                });
            }
            Ok(Ok(Some(_))) => {}
        }
        let auth = XOAuth2 {
            user: &reader.username,
            token,
            sent: false,
        };
        let inner = match tokio::time::timeout(t, client.authenticate("XOAUTH2", auth)).await {
            Err(_) => {
                return Err(ImapError::Timeout {
                    step: "AUTHENTICATE",
                    after: t,
                });
            }
            Ok(Err((async_imap::error::Error::No(server), _))) => {
                return Err(ImapError::AuthRejected {
                    user: reader.username.clone(),
                    server,
                });
            }
            Ok(Err((e, _))) => {
                return Err(ImapError::Protocol {
                    step: "AUTHENTICATE",
                    detail: e.to_string(),
                });
            }
            Ok(Ok(session)) => session,
        };
        let mut session = Session { inner, timeout: t };
        // Exchange Online can accept AUTHENTICATE and then answer every
        // command with "BAD User is authenticated but not connected"; only
        // a command after login tells.
        match tokio::time::timeout(t, session.inner.run_command_and_check_ok("NOOP")).await {
            Err(_) => Err(ImapError::Timeout {
                step: "NOOP",
                after: t,
            }),
            Ok(Err(
                async_imap::error::Error::Bad(server) | async_imap::error::Error::No(server),
            )) => Err(ImapError::NotConnected {
                user: reader.username.clone(),
                server,
            }),
            Ok(Err(e)) => Err(ImapError::Protocol {
                step: "NOOP",
                detail: e.to_string(),
            }),
            Ok(Ok(())) => Ok(session),
        }
    }

    async fn select(&mut self, folder: &str) -> Result<Selected, ImapError> {
        let mailbox = match tokio::time::timeout(self.timeout, self.inner.select(folder)).await {
            Err(_) => {
                return Err(ImapError::Timeout {
                    step: "SELECT",
                    after: self.timeout,
                });
            }
            Ok(Err(async_imap::error::Error::No(server))) => {
                return Err(ImapError::NoFolder {
                    folder: folder.to_string(),
                    server,
                });
            }
            Ok(Err(e)) => {
                return Err(ImapError::Protocol {
                    step: "SELECT",
                    detail: e.to_string(),
                });
            }
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

    /// UIDs above `watermark`, ascending.
    async fn uids_after(&mut self, watermark: u32) -> Result<Vec<u32>, ImapError> {
        let query = format!("UID {}:*", watermark.saturating_add(1));
        let found = step(self.timeout, "UID SEARCH", self.inner.uid_search(query)).await?;
        // "n:*" always matches the highest UID, even one below n.
        let mut uids: Vec<u32> = found.into_iter().filter(|&u| u > watermark).collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// Fetches the full raw messages for `uids` without setting `\Seen`.
    async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, ImapError> {
        let t = self.timeout;
        let mut stream = step(
            t,
            "UID FETCH",
            self.inner.uid_fetch(uid_set(uids), "BODY.PEEK[]"),
        )
        .await?;
        let mut mails = Vec::with_capacity(uids.len());
        loop {
            // Bounded per response, so a large batch is not cut off while
            // data is still flowing, but a stalled server is.
            let next = match tokio::time::timeout(t, stream.next()).await {
                Err(_) => {
                    return Err(ImapError::Timeout {
                        step: "UID FETCH",
                        after: t,
                    });
                }
                Ok(next) => next,
            };
            let Some(item) = next else { break };
            let fetch = item.map_err(|e| ImapError::Protocol {
                step: "UID FETCH",
                detail: e.to_string(),
            })?;
            // Unsolicited FETCH responses (flag changes) carry no body.
            if let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) {
                mails.push((uid, body.to_vec()));
            }
        }
        mails.sort_unstable_by_key(|(uid, _)| *uid);
        Ok(mails)
    }

    async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        let t = self.timeout;
        let stream = step(
            t,
            "UID STORE",
            self.inner
                .uid_store(uid_set(uids), "+FLAGS.SILENT (\\Seen)"),
        )
        .await?;
        let results: Vec<_> = tokio::time::timeout(t, stream.collect::<Vec<_>>())
            .await
            .map_err(|_| ImapError::Timeout {
                step: "UID STORE",
                after: t,
            })?;
        for r in results {
            r.map_err(|e| ImapError::Protocol {
                step: "UID STORE",
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }

    async fn logout(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.inner.logout()).await;
    }
}

/// Connects, authenticates and selects the folder; counts what is waiting.
pub async fn check(
    reader: &ReaderConfig,
    token: &SecretString,
    store: &Store,
) -> Result<CheckReport, ImapError> {
    let mut session = Session::open(reader, token).await?;
    let selected = session.select(&reader.folder).await?;
    let pos = position(reader, &selected);
    let watermark = store.watermark(&pos).await?;
    let waiting = session.uids_after(watermark).await?.len();
    session.logout().await;
    Ok(CheckReport {
        messages: selected.exists,
        waiting,
    })
}

/// Ingests everything new in the reader's folder, batch by batch. Stops
/// between batches when `cancel` fires; a batch being committed is always
/// finished first.
pub async fn poll(
    reader: &ReaderConfig,
    token: &SecretString,
    store: &Store,
    cancel: &CancellationToken,
) -> Result<PollReport, ImapError> {
    let mut session = Session::open(reader, token).await?;
    let selected = session.select(&reader.folder).await?;
    let pos = position(reader, &selected);
    let mut report = PollReport::default();

    // Mail committed by an earlier poll that died before flagging it.
    let pending = store.pending_after(&pos).await?;
    if flag_seen(&mut session, &pos, &pending).await {
        store.mark_after_done(&pos, &pending).await?;
    }

    let watermark = store.watermark(&pos).await?;
    let uids = session.uids_after(watermark).await?;
    if !uids.is_empty() {
        tracing::debug!(reader = %reader.name, new = uids.len(), "new mail");
    }
    let chunks: Vec<&[u32]> = uids.chunks(reader.batch_size).collect();
    let mut next = match chunks.first() {
        Some(first) => fetch_unless_cancelled(&mut session, first, cancel).await?,
        None => None,
    };
    // Committed, not yet flagged on the server.
    let mut unflagged: Vec<u32> = Vec::new();
    // Flagged on the server, not yet recorded as done in the ledger.
    let mut flagged: Vec<u32> = Vec::new();
    let mut index = 0;
    while let Some(raw) = next.take() {
        report.fetched += raw.len();
        let following = chunks.get(index + 1).copied();
        let to_flag = std::mem::take(&mut unflagged);
        let to_record = std::mem::take(&mut flagged);
        // Two lanes: the store parses and commits batch k (recording batch
        // k-2's flags in the same transaction, so the lanes never wait on
        // each other's database lock) while the IMAP session flags batch
        // k-1 and fetches batch k+1. The commit is deliberately not raced
        // with `cancel`: a batch that started committing is finished, so
        // shutdown never loses work.
        let started = std::time::Instant::now();
        let (committed, (flag_ok, prefetched)) = tokio::join!(
            async {
                let parsed = parse_batch(raw).await?;
                let uids: Vec<u32> = parsed.iter().map(|(uid, _)| *uid).collect();
                let outcome = store.commit_batch(&pos, &parsed, &to_record).await?;
                Ok::<_, ImapError>((uids, outcome))
            },
            async {
                let ok = flag_seen(&mut session, &pos, &to_flag).await;
                let prefetched = match following {
                    Some(chunk) => fetch_unless_cancelled(&mut session, chunk, cancel).await,
                    None => Ok(None),
                };
                (ok, prefetched)
            }
        );
        let (committed, outcome) = committed?;
        tracing::debug!(
            reader = %reader.name,
            mails = committed.len(),
            created = outcome.created,
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        report.created += outcome.created;
        report.duplicates += outcome.duplicates;
        unflagged = committed;
        if flag_ok {
            flagged = to_flag;
        }
        next = prefetched?;
        index += 1;
    }
    if flag_seen(&mut session, &pos, &unflagged).await {
        flagged.extend(unflagged);
    }
    store.mark_after_done(&pos, &flagged).await?;
    report.interrupted = cancel.is_cancelled() && index < chunks.len();
    session.logout().await;
    Ok(report)
}

/// Fetches `uids`, or returns `None` once shutdown has begun.
async fn fetch_unless_cancelled(
    session: &mut Session,
    uids: &[u32],
    cancel: &CancellationToken,
) -> Result<Option<Vec<(u32, Vec<u8>)>>, ImapError> {
    if cancel.is_cancelled() {
        return Ok(None);
    }
    tokio::select! {
        raw = session.fetch(uids) => raw.map(Some),
        () = cancel.cancelled() => Ok(None),
    }
}

/// Flags committed mail `\Seen`; true when the server confirmed it. A
/// failure is not a failed poll: the tickets exist, and the ledger keeps
/// the UIDs pending until a later poll flags them.
async fn flag_seen(session: &mut Session, pos: &FolderPosition, uids: &[u32]) -> bool {
    if uids.is_empty() {
        return true;
    }
    match session.mark_seen(uids).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                reader = %pos.reader,
                count = uids.len(),
                error = %e,
                "could not flag ingested mail as seen; will retry next poll"
            );
            false
        }
    }
}

/// Parses off the async threads: a large attachment can take a while.
/// `ingest::parse` contains its own panics, so the task only fails if the
/// runtime is shutting down; the batch is then not committed at all (it is
/// fetched again next time) rather than stored without its content.
async fn parse_batch(raw: Vec<(u32, Vec<u8>)>) -> Result<Vec<(u32, ParsedMail)>, ImapError> {
    tokio::task::spawn_blocking(move || {
        raw.into_iter()
            .map(|(uid, bytes)| (uid, ingest::parse(&bytes)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ImapError::Parser(e.to_string()))
}

fn position(reader: &ReaderConfig, selected: &Selected) -> FolderPosition {
    FolderPosition {
        reader: reader.name.clone(),
        folder: reader.folder.clone(),
        uidvalidity: selected.uidvalidity,
    }
}

/// Sorted UIDs as a compact IMAP sequence set: `1:3,7,9:10`.
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
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
