//! MIME parsing with mail-parser, the fallback for what it cannot read,
//! the quarantine for what makes it panic, and the bounds: the size limits,
//! the MIME nesting limit (see [`super::mime`]) and the header bounds.
//!
//! Every lossy decision (a cut, a dropped part, a guessed charset, a header
//! given more than once) is stated in `parse_note`, several joined by "; ".
//!
//! This file owns the parsed mail's shape and the walk from raw bytes to
//! it; the header reading, the parts and the limits are its submodules.

use std::panic::{AssertUnwindSafe, catch_unwind};

use mail_parser::{DateTime, HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use super::mime;

mod headers;
mod limits;
mod parts;

use headers::{
    addresses, declared_charset, eight_bit, first, ids, reparse_header, sender, top_headers, unfold,
};
pub use limits::{Limits, human_size};
use limits::{MAX_ADDRESS_LIST, MAX_SUBJECT, apply_limits, truncate};
pub use parts::sanitize_filename;
use parts::{attachment, mime_type_of, opaque, report};

/// What one mail contributes to a ticket.
#[derive(Debug, Clone, Default)]
pub struct ParsedMail {
    /// Message-ID when present, else `sha256:<hex>` of the headers that
    /// identify a mail (From, To, Cc, Subject, Date) and the body: one mail
    /// is one email, whichever reader saw it first, even though each
    /// delivery adds its own trace headers.
    pub dedup_key: String,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    /// Space-separated Message-IDs, oldest first.
    pub references: Option<String>,
    pub from_addr: Option<String>,
    pub from_name: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub subject: String,
    /// The Date header, RFC 3339.
    pub sent_at: Option<String>,
    pub body_text: String,
    pub body_html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Set when the mail could not be fully understood.
    pub parse_note: Option<String>,
    /// Every top-level header in order: name as written, value unfolded.
    pub headers: Vec<(String, String)>,
    /// The top-level MIME type, lower-case, without parameters.
    pub mime_type: String,
    /// Set for a multipart/report (a delivery or disposition report).
    pub report: Option<Report>,
    /// The raw mail's size in bytes.
    pub size: usize,
    /// The raw mail, with `keep_raw = true`.
    pub raw: Option<RawMail>,
    /// What a size limit left out, for a human to read.
    pub limit_note: Option<String>,
    /// Set when the mail must not be processed (e.g. "the MIME parser
    /// panicked"): the store quarantines it. The raw mail is then always
    /// kept in `raw`, whatever `keep_raw` says.
    pub quarantine: Option<String>,
}

impl ParsedMail {
    /// Every value of the headers called `name` (case-insensitive), in
    /// order; values are unfolded and trimmed already.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw mail kept as received, with its hash, taken here (off the async
/// threads) rather than in the commit.
#[derive(Clone)]
pub struct RawMail {
    pub content: Vec<u8>,
    /// Hex SHA-256 of `content`.
    pub sha256: String,
}

impl std::fmt::Debug for RawMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMail")
            .field("size", &self.content.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// A multipart/report (RFC 6522).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Its report-type, e.g. `delivery-status`; lower-case.
    pub report_type: String,
    /// Message-IDs of the mail the report is about, from its returned
    /// message or headers part; the first [`MAX_REFERENCED`](super::thread::MAX_REFERENCED), without
    /// repeats.
    pub original_ids: Vec<String>,
}

#[derive(Clone, Default)]
pub struct Attachment {
    /// Sanitised for export: no directories, no control characters.
    pub filename: Option<String>,
    pub content_type: String,
    pub size: usize,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Content-ID without angle brackets (inline images are `cid:` URLs).
    pub content_id: Option<String>,
    pub inline: bool,
    /// `None` when a size limit kept it out; see `dropped`.
    pub content: Option<Vec<u8>>,
    pub dropped: Option<String>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("size", &self.size)
            .field("content_id", &self.content_id)
            .field("inline", &self.inline)
            .field("dropped", &self.dropped)
            .finish()
    }
}

/// Parses `raw` with the default limits; never fails and never panics.
pub fn parse(raw: &[u8]) -> ParsedMail {
    parse_with(raw, &Limits::default())
}

/// Parses `raw` and applies `limits`; never fails and never panics.
pub fn parse_with(raw: &[u8], limits: &Limits) -> ParsedMail {
    parse_fetched(raw, raw.len() as u64, limits)
}

/// Like [`parse_with`] for a mail of `full_size` bytes of which only `raw`,
/// its beginning, was fetched (a mail over `max_email_size` is fetched
/// only up to it): the size and the limit note are the whole mail's.
pub fn parse_fetched(raw: &[u8], full_size: u64, limits: &Limits) -> ParsedMail {
    parse_using(raw, full_size, limits, parse_mime)
}

/// [`parse_with`] with the MIME parser passed in, so that a parser that
/// panics can be tested.
fn parse_using<F>(raw: &[u8], full_size: u64, limits: &Limits, parser: F) -> ParsedMail
where
    F: FnOnce(&[u8]) -> Option<ParsedMail>,
{
    // Only what the scan vouches for reaches the parser: a deeper mail
    // would overflow the stack when the parsed tree is dropped.
    let scan = mime::scan(raw);
    let parsed_len = scan.cut.map_or(raw.len(), |c| c.at);
    let head = raw.get(..parsed_len).unwrap_or(raw);
    // A panic here would make the same mail fail on every poll. The mail
    // is quarantined rather than filed: a parser that panicked may have
    // left anything half-done, and a human should look at it.
    let parsed = catch_unwind(AssertUnwindSafe(|| parser(head)));
    let mut quarantine = None;
    let mut mail = match parsed {
        Ok(Some(mut mail)) => {
            if let Some(cut) = scan.cut {
                let rest = raw.get(cut.at..).unwrap_or_default();
                mail.attachments.push(opaque(rest));
                add_note(
                    &mut mail,
                    format!(
                        "{} at byte {}; the remaining {} bytes are kept as one attachment",
                        cut.why.describe(),
                        cut.at,
                        rest.len()
                    ),
                );
            }
            mail
        }
        Ok(None) => fallback(
            raw,
            "the MIME structure could not be parsed; the body is the raw mail",
        ),
        Err(_) => {
            quarantine = Some("the MIME parser panicked".to_string());
            fallback(
                raw,
                "the MIME parser panicked on this mail; the body is the raw mail",
            )
        }
    };
    // mail-parser ends a part at its boundary wherever it stands in a
    // line, so the rest of that line and part is lost to the body: the raw
    // mail is kept so that nothing is.
    let midline = scan.midline_boundary.filter(|&at| at < parsed_len);
    if let Some(at) = midline {
        add_note(
            &mut mail,
            format!(
                "a MIME boundary appears in the middle of a line at byte {at}: the part before it \
                 ends there; the raw mail is kept (raw_blob) with the rest of its text"
            ),
        );
    }
    mail.dedup_key = match &mail.message_id {
        Some(id) => id.clone(),
        None => content_key(raw),
    };
    mail.size = usize::try_from(full_size)
        .unwrap_or(usize::MAX)
        .max(raw.len());
    apply_limits(&mut mail, limits, raw.len());
    if limits.keep_raw || quarantine.is_some() || midline.is_some() {
        mail.raw = Some(RawMail {
            content: raw.to_vec(),
            sha256: format!("{:x}", Sha256::digest(raw)),
        });
        if let Some(note) = &mut mail.limit_note {
            let why = if limits.keep_raw {
                "keep_raw"
            } else if quarantine.is_some() {
                "quarantined"
            } else {
                "a boundary in mid-line"
            };
            note.push_str(&if raw.len() < mail.size {
                format!(
                    "; the raw mail's first {} are kept ({why})",
                    human_size(raw.len() as u64)
                )
            } else {
                format!("; the raw mail is kept whole ({why})")
            });
        }
    }
    mail.quarantine = quarantine;
    mail
}

/// Adds one note to `parse_note`.
fn add_note(mail: &mut ParsedMail, note: String) {
    match &mut mail.parse_note {
        Some(notes) => {
            notes.push_str("; ");
            notes.push_str(&note);
        }
        None => mail.parse_note = Some(note),
    }
}

/// The key of a mail without a Message-ID: what identifies it wherever it
/// was delivered (trace headers such as Received differ per mailbox).
fn content_key(raw: &[u8]) -> String {
    let split = find_body(raw);
    let (head, body) = raw.split_at(split);
    let mut hash = Sha256::new();
    let mut identified = false;
    if let Some(headers) = MessageParser::default().parse_headers(head) {
        for name in ["From", "To", "Cc", "Subject", "Date"] {
            for h in headers.headers() {
                if h.name.as_str().eq_ignore_ascii_case(name) {
                    identified = true;
                    hash.update(name.as_bytes());
                    hash.update(b":");
                    let value = head.get(h.offset_start as usize..h.offset_end as usize);
                    hash.update(unfold(value.unwrap_or_default()).as_bytes());
                    hash.update(b"\n");
                }
            }
        }
    }
    if !identified {
        // Nothing to tell deliveries apart by: the bytes are all there is.
        hash.update(head);
    }
    hash.update(b"\n");
    hash.update(body);
    format!("sha256:{:x}", hash.finalize())
}

/// Where the body starts: after the first empty line (or at the end).
fn find_body(raw: &[u8]) -> usize {
    for (i, w) in raw.windows(2).enumerate() {
        if w == b"\n\n" {
            return i + 2;
        }
        if w == b"\n\r" && raw.get(i + 2) == Some(&b'\n') {
            return i + 3;
        }
    }
    raw.len()
}

fn parse_mime(raw: &[u8]) -> Option<ParsedMail> {
    let message = MessageParser::default().parse(raw)?;
    // The first of a repeated header is what mail clients show; mail-parser
    // would hand back the last.
    let subject = first(&message, &HeaderName::Subject);
    let from = first(&message, &HeaderName::From);
    let date = first(&message, &HeaderName::Date).and_then(HeaderValue::as_datetime);
    let message_id = first(&message, &HeaderName::MessageId).and_then(HeaderValue::as_text);
    // Without a single header we recognise, the "parsed" mail would be an
    // empty shell; the raw text tells a human more.
    let recognised = from.is_some()
        || subject.is_some()
        || message_id.is_some()
        || date.is_some()
        || message.to().is_some();
    if !recognised {
        return None;
    }
    let mut notes = Vec::new();
    for (name, header) in [("Subject", HeaderName::Subject), ("From", HeaderName::From)] {
        let count = message
            .headers()
            .iter()
            .filter(|h| h.name == header)
            .count();
        if count > 1 {
            notes.push(format!(
                "the mail has {count} {name} headers; the first is used"
            ));
        }
    }

    let charset = declared_charset(&message);
    let raw_value = |header: &HeaderName<'_>| {
        message
            .headers()
            .iter()
            .find(|h| h.name == *header)
            .and_then(|h| raw.get(h.offset_start as usize..h.offset_end as usize))
            .unwrap_or_default()
    };
    let mut subject = match eight_bit(raw_value(&HeaderName::Subject), charset.as_deref()) {
        Some((text, charset)) => {
            notes.push(format!(
                "the Subject was raw 8-bit text; decoded as {charset}"
            ));
            reparse_header("Subject", &text)
                .and_then(|m| m.subject().map(str::to_string))
                .unwrap_or(text)
        }
        None => subject
            .and_then(HeaderValue::as_text)
            .unwrap_or("(no subject)")
            .to_string(),
    };
    let reparsed_from =
        eight_bit(raw_value(&HeaderName::From), charset.as_deref()).and_then(|(text, charset)| {
            notes.push(format!(
                "the From header was raw 8-bit text; decoded as {charset}"
            ));
            reparse_header("From", &text)
        });
    let from = match &reparsed_from {
        Some(m) => m.from(),
        None => from.and_then(HeaderValue::as_address),
    };
    let written_from = match &reparsed_from {
        Some(m) => m
            .header_raw("From")
            .map(|v| unfold(v.as_bytes()))
            .unwrap_or_default(),
        None => unfold(raw_value(&HeaderName::From)),
    };
    let (from_addr, mut from_name) = sender(from, &written_from, &mut notes);

    let mut body_text = (0..message.text_body_count())
        .filter_map(|i| message.body_text(i))
        .collect::<Vec<_>>()
        .join("\n");
    // mail-parser lists text parts among the HTML bodies when a mail has no
    // HTML alternative; keep only real HTML.
    let html: Vec<String> = (0..message.html_body_count())
        .filter(|&i| {
            message
                .html_part(i as u32)
                .is_some_and(|p| matches!(p.body, PartType::Html(_)))
        })
        .filter_map(|i| message.body_html(i).map(|s| s.into_owned()))
        .collect();

    let mut attachments: Vec<Attachment> = message.attachments().map(attachment).collect();
    // Empty parts and blank epilogues are not files anyone sent.
    let before = attachments.len();
    attachments.retain(|a| {
        a.filename.is_some()
            || a.inline
            || a.content_id.is_some()
            || a.content
                .as_deref()
                .is_some_and(|c| !c.iter().all(u8::is_ascii_whitespace))
    });
    match before - attachments.len() {
        0 => {}
        1 => notes.push("an empty part without a name was dropped".to_string()),
        n => notes.push(format!("{n} empty parts without a name were dropped")),
    }

    let headers = top_headers(&message, raw, &mut notes);
    let mime_type = message
        .content_type()
        .map_or_else(|| "text/plain".to_string(), mime_type_of);
    let report = (mime_type == "multipart/report").then(|| report(&message));

    if from_addr.is_none() {
        notes.push("the mail has no readable From address".to_string());
    }
    // A multipart whose boundary never appears is handed back whole, as one
    // part of the multipart type: the mail's text is in there, unsplit.
    if body_text.trim().is_empty()
        && html.is_empty()
        && let Some(i) = attachments
            .iter()
            .position(|a| a.content_type.starts_with("multipart/"))
    {
        let unsplit = attachments.remove(i);
        body_text =
            String::from_utf8_lossy(unsplit.content.as_deref().unwrap_or_default()).into_owned();
        notes.push(format!(
            "the {} structure could not be split (its boundary does not appear); the body is its raw text",
            unsplit.content_type
        ));
    }
    // Text in an unnamed part that is marked as an attachment (or that the
    // parser did not take for the body) is the mail's text all the same.
    if body_text.trim().is_empty() && html.is_empty() {
        let (texts, rest): (Vec<Attachment>, Vec<Attachment>) = attachments
            .into_iter()
            .partition(|a| a.filename.is_none() && a.content_type == "text/plain");
        attachments = rest;
        if !texts.is_empty() {
            body_text = texts
                .iter()
                .map(|a| String::from_utf8_lossy(a.content.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("\n");
            notes.push(format!(
                "the text was in {} unnamed text/plain part(s) kept apart from the body; it is the body now",
                texts.len()
            ));
        }
    }

    let subject_len = subject.len();
    if truncate(&mut subject, MAX_SUBJECT) {
        notes.push(format!(
            "the Subject ({}) was cut to {}",
            human_size(subject_len as u64),
            human_size(MAX_SUBJECT as u64)
        ));
    }
    if let Some(name) = &mut from_name
        && truncate(name, MAX_SUBJECT)
    {
        notes.push(format!(
            "the sender's name was cut to {}",
            human_size(MAX_SUBJECT as u64)
        ));
    }
    let mut to = addresses(message.to());
    let mut cc = addresses(message.cc());
    for (name, list) in [("To", &mut to), ("Cc", &mut cc)] {
        if let Some(list) = list {
            let len = list.len();
            if truncate(list, MAX_ADDRESS_LIST) {
                notes.push(format!(
                    "the {name} list ({}) was cut to {}",
                    human_size(len as u64),
                    human_size(MAX_ADDRESS_LIST as u64)
                ));
            }
        }
    }

    Some(ParsedMail {
        message_id: message_id.map(str::to_string),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        from_addr,
        from_name,
        to,
        cc,
        subject,
        sent_at: date.map(DateTime::to_rfc3339),
        body_text,
        body_html: if html.is_empty() {
            None
        } else {
            Some(html.join("\n"))
        },
        attachments,
        parse_note: (!notes.is_empty()).then(|| notes.join("; ")),
        headers,
        mime_type,
        report,
        ..ParsedMail::default()
    })
}

fn fallback(raw: &[u8], note: &str) -> ParsedMail {
    ParsedMail {
        subject: "(unreadable mail)".into(),
        body_text: String::from_utf8_lossy(raw).into_owned(),
        parse_note: Some(note.into()),
        ..ParsedMail::default()
    }
}

#[cfg(test)]
mod tests;
