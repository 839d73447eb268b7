//! An authenticated IMAP session and the commands a poll sends over it:
//! SELECT, SEARCH, sizes, the body FETCH, the after-step, and reading each
//! command's answer up to its tagged status.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;

use super::errors::{
    ImapError, connection_closed, crate_error, crate_refusal, io_error, outcome_refusal,
    protocol_error, step, timed_out,
};
use super::login::quoted;
use super::{SIZE_CHUNK, uid_set};
use crate::config::{After, Backfill};
use crate::ingest::Fetched;
use crate::scrub::Scrubber;
use crate::source::refusal::{Meaning, Refusal};
use crate::transport::{Progress, Stream};

/// The server capabilities mail2ticket adapts to.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Caps {
    pub(super) idle: bool,
    pub(super) moves: bool,
    pub(super) uidplus: bool,
}

impl Caps {
    pub(super) fn names(self) -> Vec<&'static str> {
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
pub(super) struct Session {
    pub(super) inner: async_imap::Session<Stream>,
    pub(super) timeout: Duration,
    pub(super) caps: Caps,
    /// Bytes moved on the connection: a FETCH that keeps delivering a large
    /// literal is waited for, one that stalls for `timeout` is not.
    pub(super) progress: Progress,
    /// The credential this session logged in with, in every form sent.
    pub(super) scrub: Scrubber,
    /// The folder grew (EXISTS) during a command read by [`Session::run`].
    pub(super) grew: bool,
}

/// What the server answered to one `UID FETCH` of mail.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    pub(super) mails: Vec<(u32, Fetched)>,
    /// Asked for, not delivered with a body.
    pub(super) missing: Vec<u32>,
    /// The tagged NO / BAD, if the command was refused.
    pub(super) refused: Option<Refusal>,
}

/// A folder as selected.
#[derive(Debug, Clone, Copy)]
pub(super) struct Selected {
    pub(super) uidvalidity: u32,
    pub(super) exists: u32,
}

/// What a first contact takes of the mail already in a folder.
#[derive(Debug)]
pub(super) struct Backfilled {
    /// Mails in the folder at first contact.
    pub(super) messages: usize,
    /// The highest UID then; 0 when everything is taken.
    pub(super) floor: u32,
    /// UIDs at or below the floor to take, ascending.
    pub(super) taken: Vec<u32>,
}

impl Session {
    pub(super) async fn select(&mut self, folder: &str) -> Result<Selected, ImapError> {
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
    pub(super) async fn folder_exists(&mut self, folder: &str) -> Result<bool, ImapError> {
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
    pub(super) async fn run<F>(
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
    pub(super) async fn fetch_each<F>(
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
    pub(super) async fn run_checked(
        &mut self,
        step: &'static str,
        command: &str,
    ) -> Result<(), ImapError> {
        match self.run(step, command, |_| {}).await? {
            Ok(()) => Ok(()),
            Err(answer) if matches!(answer.meaning(), Meaning::Transient) => {
                Err(ImapError::Busy { step, answer })
            }
            Err(answer) => Err(ImapError::Refused { step, answer }),
        }
    }

    /// Which of `uids` (ascending) the folder still holds.
    pub(super) async fn existing(&mut self, uids: &[u32]) -> Result<Vec<u32>, ImapError> {
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
    pub(super) fn take_announcements(&mut self) -> bool {
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

    pub(super) async fn uids_after(&mut self, watermark: u32) -> Result<Vec<u32>, ImapError> {
        let mut uids = self
            .search(&format!("UID {}:*", watermark.saturating_add(1)))
            .await?;
        // "n:*" always matches the highest UID, even one below n.
        uids.retain(|&u| u > watermark);
        Ok(uids)
    }

    /// The UIDs matching an IMAP search, ascending.
    pub(super) async fn search(&mut self, query: &str) -> Result<Vec<u32>, ImapError> {
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
    pub(super) async fn first_contact(
        &mut self,
        backfill: Backfill,
    ) -> Result<Backfilled, ImapError> {
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
    pub(super) async fn arrived_since(
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
    pub(super) async fn sizes(&mut self, uids: &[u32]) -> Result<HashMap<u32, u64>, ImapError> {
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
    pub(super) async fn fetch(
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

    pub(super) async fn store_flag(&mut self, uids: &str, flag: &str) -> Result<(), ImapError> {
        self.run_checked(
            "UID STORE",
            &format!("UID STORE {uids} +FLAGS.SILENT ({flag})"),
        )
        .await
    }

    /// Removes messages flagged `\Deleted`: only `uids` with UIDPLUS; every
    /// flagged message of the folder without it (RFC 3501 has nothing finer).
    pub(super) async fn expunge(&mut self, uids: &str) -> Result<(), ImapError> {
        if self.caps.uidplus {
            self.run_checked("UID EXPUNGE", &format!("UID EXPUNGE {uids}"))
                .await
        } else {
            self.run_checked("EXPUNGE", "EXPUNGE").await
        }
    }

    /// The reader's after-step for committed `uids`.
    pub(super) async fn after_step(
        &mut self,
        after: &After,
        uids: &[u32],
    ) -> Result<(), ImapError> {
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

    pub(super) async fn logout(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.inner.logout()).await;
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

/// A date as IMAP SEARCH writes it (RFC 3501 `date`): `6-Dec-2026`, UTC.
pub(super) fn search_date(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%-d-%b-%Y")
        .to_string()
}

/// The INTERNALDATE among a FETCH answer's attributes, if readable.
pub(super) fn internal_date_of(
    attrs: &[async_imap::imap_proto::AttributeValue<'_>],
) -> Option<i64> {
    attrs.iter().find_map(|a| match a {
        async_imap::imap_proto::AttributeValue::InternalDate(date) => internal_date(date),
        _ => None,
    })
}

/// An INTERNALDATE (RFC 3501 `date-time`, `" 6-Dec-2026 04:03:55 +0100"`)
/// as seconds since the epoch; `None` when the server wrote something else.
pub(super) fn internal_date(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(text.trim(), "%d-%b-%Y %H:%M:%S %z")
        .ok()
        .map(|d| d.timestamp())
}
