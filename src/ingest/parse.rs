//! MIME parsing with mail-parser, the fallback for what it cannot read,
//! the quarantine for what makes it panic, and the bounds: the size limits,
//! the MIME nesting limit (see [`super::mime`]) and the header bounds.
//!
//! Every lossy decision (a cut, a dropped part, a guessed charset, a header
//! given more than once) is stated in `parse_note`, several joined by "; ".

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{
    Addr, Address, DateTime, HeaderName, HeaderValue, Message, MessageParser, MessagePart,
    MimeHeaders, PartType,
};
use sha2::{Digest, Sha256};

use super::mime;
use super::thread::MAX_REFERENCED;
use crate::config::TicketsConfig;

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
    /// message or headers part; the first [`MAX_REFERENCED`], without
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

/// Size limits and what to keep; from `[tickets]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_email_size: u64,
    pub max_attachment_size: u64,
    pub keep_raw: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&TicketsConfig::default())
    }
}

impl From<&TicketsConfig> for Limits {
    fn from(t: &TicketsConfig) -> Self {
        Limits {
            max_email_size: t.max_email_size,
            max_attachment_size: t.max_attachment_size,
            keep_raw: t.keep_raw,
        }
    }
}

/// The most text kept of each body of a mail over `max_email_size`.
const OVERSIZE_BODY_KEPT: usize = 1 << 20;

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

/// The longest subject kept.
const MAX_SUBJECT: usize = 4 << 10;
/// The longest To and Cc kept, each.
const MAX_ADDRESS_LIST: usize = 64 << 10;
/// The most top-level headers kept in `ParsedMail::headers`.
const MAX_HEADERS: usize = 1000;
/// The longest header value kept in `ParsedMail::headers`.
const MAX_HEADER_VALUE: usize = 64 << 10;

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

/// What was left of a mail past the nesting limit: kept, unread.
fn opaque(content: &[u8]) -> Attachment {
    Attachment {
        filename: None,
        content_type: "application/octet-stream".to_string(),
        size: content.len(),
        sha256: format!("{:x}", Sha256::digest(content)),
        content_id: None,
        inline: false,
        content: Some(content.to_vec()),
        dropped: None,
    }
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

fn unfold(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `fetched` is how much of the mail's `size` bytes was read.
fn apply_limits(mail: &mut ParsedMail, limits: &Limits, fetched: usize) {
    let mut notes = Vec::new();
    if mail.size as u64 > limits.max_email_size {
        let why = format!(
            "the mail ({}) is larger than max_email_size ({})",
            human_size(mail.size as u64),
            human_size(limits.max_email_size)
        );
        let mut dropped = 0;
        for a in &mut mail.attachments {
            if a.content.take().is_some() {
                a.dropped = Some(why.clone());
                dropped += 1;
            }
        }
        let mut cut = false;
        cut |= truncate(&mut mail.body_text, OVERSIZE_BODY_KEPT);
        if let Some(html) = &mut mail.body_html {
            cut |= truncate(html, OVERSIZE_BODY_KEPT);
        }
        let mut note = format!("{why}: ");
        if fetched < mail.size {
            note.push_str(&format!(
                "only its first {} were fetched; ",
                human_size(fetched as u64)
            ));
        }
        note.push_str(&match dropped {
            0 => "it was kept".to_string(),
            1 => "its attachment was not stored".to_string(),
            n => format!("its {n} attachments were not stored"),
        });
        if cut {
            note.push_str(&format!(
                "; its text was cut to the first {}",
                human_size(OVERSIZE_BODY_KEPT as u64)
            ));
        }
        notes.push(note);
    } else {
        for a in &mut mail.attachments {
            if a.size as u64 > limits.max_attachment_size {
                a.content = None;
                let why = format!(
                    "larger than max_attachment_size ({})",
                    human_size(limits.max_attachment_size)
                );
                notes.push(format!(
                    "attachment {} ({}, {}) was not stored: {why}",
                    a.filename
                        .as_deref()
                        .map_or("(unnamed)".into(), |f| format!("{f:?}")),
                    a.content_type,
                    human_size(a.size as u64)
                ));
                a.dropped = Some(why);
            }
        }
    }
    if !notes.is_empty() {
        mail.limit_note = Some(notes.join("; "));
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

/// Sizes as an admin reads them: `30.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
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

/// The first top-level header called `name`.
fn first<'a>(message: &'a Message<'_>, name: &HeaderName<'_>) -> Option<&'a HeaderValue<'a>> {
    message
        .headers()
        .iter()
        .find(|h| h.name == *name)
        .map(|h| &h.value)
}

/// The top-level headers for the guard and the rules, within
/// [`MAX_HEADERS`] and [`MAX_HEADER_VALUE`].
fn top_headers(
    message: &Message<'_>,
    raw: &[u8],
    notes: &mut Vec<String>,
) -> Vec<(String, String)> {
    let all = message.headers();
    let mut cut = 0;
    let headers = all
        .iter()
        .take(MAX_HEADERS)
        .map(|h| {
            let value = raw.get(h.offset_start as usize..h.offset_end as usize);
            let mut value = unfold(value.unwrap_or_default());
            if truncate(&mut value, MAX_HEADER_VALUE) {
                cut += 1;
            }
            (h.name.as_str().to_string(), value)
        })
        .collect();
    if all.len() > MAX_HEADERS {
        notes.push(format!(
            "only the first {MAX_HEADERS} of its {} headers are kept",
            all.len()
        ));
    }
    if cut > 0 {
        notes.push(format!(
            "{cut} header value(s) were cut to {}",
            human_size(MAX_HEADER_VALUE as u64)
        ));
    }
    headers
}

/// The charset the mail's text declares: the top level's, else the first
/// text part's.
fn declared_charset(message: &Message<'_>) -> Option<String> {
    let charset = |part: &MessagePart<'_>| {
        part.content_type()
            .and_then(|ct| ct.attribute("charset"))
            .map(str::to_string)
    };
    let is_text = |part: &&MessagePart<'_>| {
        part.content_type()
            .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("text"))
    };
    message
        .parts
        .first()
        .and_then(charset)
        .or_else(|| message.parts.iter().filter(is_text).find_map(charset))
}

/// A header value in raw 8-bit text (not UTF-8, no RFC 2047): decoded
/// with the charset the body declares, else windows-1252 (what such mail
/// nearly always is). `None` when the value is valid UTF-8.
fn eight_bit(value: &[u8], charset: Option<&str>) -> Option<(String, String)> {
    if std::str::from_utf8(value).is_ok() {
        return None;
    }
    let declared = charset
        .map(str::to_ascii_lowercase)
        .filter(|c| !matches!(c.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii"))
        .and_then(|c| charset_decoder(c.as_bytes()).map(|d| (d, c)));
    let (decode, name) = match declared {
        Some(found) => found,
        None => (
            charset_decoder(b"windows-1252")?,
            "windows-1252".to_string(),
        ),
    };
    Some((decode(value), name))
}

/// A header parsed again from its decoded text (for its encoded words,
/// addresses and unfolding).
fn reparse_header(name: &str, value: &str) -> Option<Message<'static>> {
    let raw = format!("{name}:{value}\r\n\r\n").into_bytes();
    let message = MessageParser::default().parse_headers(&raw)?;
    Some(message.into_owned())
}

/// The sender: exactly one addr-spec (`local@domain`), or none; and the
/// display name. `written` is the From header as written (unfolded), read
/// when mail-parser's address is not one addr-spec (it joins two
/// addresses into one string, or keeps a name with it).
fn sender(
    from: Option<&Address<'_>>,
    written: &str,
    notes: &mut Vec<String>,
) -> (Option<String>, Option<String>) {
    let Some(from) = from else {
        return (None, None);
    };
    let count = from.iter().count();
    let Some(first) = from.first() else {
        return (None, None);
    };
    let parsed = first.address().map(str::trim);
    let addr = match parsed {
        Some(a) if is_addr_spec(a) => Some(a.to_string()),
        _ => first_addr_spec(written).or_else(|| parsed.and_then(first_addr_spec)),
    };
    if count > 1 {
        notes.push(format!(
            "the From header names {count} addresses; the first ({}) is taken as the sender",
            addr.as_deref().unwrap_or("unreadable")
        ));
    } else if let Some(addr) = &addr
        && parsed != Some(addr.as_str())
    {
        let mut shown = written.to_string();
        truncate(&mut shown, 200);
        notes.push(format!(
            "the From header {shown:?} does not hold one address; {addr} is taken as the sender"
        ));
    }
    (addr, Addr::name(first).map(str::to_string))
}

/// `local@domain`, nothing around it.
fn is_addr_spec(text: &str) -> bool {
    let mut parts = text.split('@');
    let plain = |s: &str| {
        !s.is_empty()
            && !s.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, ',' | ';' | '<' | '>' | '"' | '(' | ')')
            })
    };
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(local), Some(domain), None) if plain(local) && plain(domain)
    )
}

/// The first addr-spec in `text`: in angle brackets if any, else the first
/// word that is one.
fn first_addr_spec(text: &str) -> Option<String> {
    let bracketed = text
        .split('<')
        .skip(1)
        .filter_map(|s| s.split_once('>').map(|(inner, _)| inner.trim()));
    let words = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '"' | '(' | ')'));
    bracketed
        .chain(words)
        .find(|s| is_addr_spec(s))
        .map(str::to_string)
}

fn mime_type_of(ct: &mail_parser::ContentType<'_>) -> String {
    match ct.subtype() {
        Some(sub) => format!("{}/{}", ct.ctype(), sub),
        None => ct.ctype().to_string(),
    }
    .to_ascii_lowercase()
}

fn attachment(part: &MessagePart<'_>) -> Attachment {
    let content = part.contents();
    let content_id = part
        .content_id()
        .map(|id| {
            id.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .filter(|id| !id.is_empty());
    // Inline when the sender says so, or when it has a Content-ID and no
    // disposition at all (how many clients embed images).
    let inline = match part.content_disposition() {
        Some(d) => d.is_inline(),
        None => content_id.is_some(),
    };
    Attachment {
        filename: part.attachment_name().and_then(sanitize_filename),
        content_type: match part.content_type() {
            Some(ct) => mime_type_of(ct),
            // A part of a multipart/digest without a Content-Type is a
            // message (RFC 2046 5.1.5); mail-parser parsed it as one.
            None if matches!(part.body, PartType::Message(_)) => "message/rfc822".to_string(),
            None => "application/octet-stream".to_string(),
        },
        size: content.len(),
        sha256: format!("{:x}", Sha256::digest(content)),
        content_id,
        inline,
        content: Some(content.to_vec()),
        dropped: None,
    }
}

/// The report type and the Message-IDs a multipart/report is about.
fn report(message: &Message<'_>) -> Report {
    let report_type = message
        .content_type()
        .and_then(|ct| ct.attribute("report-type"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut original_ids = Vec::new();
    let mut seen = HashSet::new();
    for part in &message.parts {
        if original_ids.len() >= MAX_REFERENCED {
            break;
        }
        let ids: Vec<String> = match &part.body {
            PartType::Message(inner) => {
                inner.message_id().map(str::to_string).into_iter().collect()
            }
            _ => {
                let kind = part.content_type().map(mime_type_of).unwrap_or_default();
                if kind == "text/rfc822-headers" || kind == "message/rfc822-headers" {
                    MessageParser::default()
                        .parse_headers(part.contents())
                        .and_then(|h| h.message_id().map(str::to_string))
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                }
            }
        };
        for id in ids {
            if original_ids.len() < MAX_REFERENCED && seen.insert(id.clone()) {
                original_ids.push(id);
            }
        }
    }
    Report {
        report_type,
        original_ids,
    }
}

/// A filename that is safe to write anywhere: the last path component,
/// without control characters or characters Windows forbids, not a
/// reserved device name, at most 200 bytes; `None` when nothing is left.
pub fn sanitize_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base
        .chars()
        .map(|c| match c {
            c if c.is_control() => '_',
            '<' | '>' | ':' | '"' | '|' | '?' | '*' => '_',
            c => c,
        })
        .collect();
    let mut cleaned = cleaned.trim().trim_matches('.').trim().to_string();
    if cleaned.is_empty() {
        return None;
    }
    let stem = cleaned
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    const RESERVED: [&str; 22] = [
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    if RESERVED.contains(&stem.as_str()) {
        cleaned.insert(0, '_');
    }
    if cleaned.len() > 200 {
        // Keep the extension: it is what opens the file.
        let ext = cleaned
            .rsplit_once('.')
            .map(|(_, e)| e.to_string())
            .filter(|e| e.len() <= 16);
        let keep = 200 - ext.as_ref().map_or(0, |e| e.len() + 1);
        truncate(&mut cleaned, keep);
        if let Some(ext) = ext {
            cleaned.push('.');
            cleaned.push_str(&ext);
        }
    }
    Some(cleaned)
}

fn fallback(raw: &[u8], note: &str) -> ParsedMail {
    ParsedMail {
        subject: "(unreadable mail)".into(),
        body_text: String::from_utf8_lossy(raw).into_owned(),
        parse_note: Some(note.into()),
        ..ParsedMail::default()
    }
}

fn ids(value: &HeaderValue<'_>) -> Option<String> {
    let list = value.as_text_list()?;
    if list.is_empty() {
        None
    } else {
        Some(list.join(" "))
    }
}

fn addresses(value: Option<&Address<'_>>) -> Option<String> {
    let list: Vec<String> = value?
        .iter()
        .map(|a| match (a.name(), a.address()) {
            (Some(name), Some(addr)) => format!("{name} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        None
    } else {
        Some(list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_mail_keeps_headers_and_body() {
        let raw = b"From: Ann Example <ann@example.net>\r\nTo: help@contoso.com, Bob <bob@contoso.com>\r\n\
Cc: carl@example.net\r\nSubject: Printer on fire\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <abc@example.net>\r\nIn-Reply-To: <parent@example.net>\r\n\
References: <root@example.net> <parent@example.net>\r\n\r\nIt is burning.\r\n";
        let mail = parse(raw);
        assert_eq!(mail.subject, "Printer on fire");
        assert_eq!(mail.from_addr.as_deref(), Some("ann@example.net"));
        assert_eq!(mail.from_name.as_deref(), Some("Ann Example"));
        assert_eq!(
            mail.to.as_deref(),
            Some("help@contoso.com, Bob <bob@contoso.com>")
        );
        assert_eq!(mail.cc.as_deref(), Some("carl@example.net"));
        assert_eq!(mail.message_id.as_deref(), Some("abc@example.net"));
        assert_eq!(mail.dedup_key, "abc@example.net");
        assert_eq!(mail.in_reply_to.as_deref(), Some("parent@example.net"));
        assert_eq!(
            mail.references.as_deref(),
            Some("root@example.net parent@example.net")
        );
        assert_eq!(mail.sent_at.as_deref(), Some("2026-11-24T10:00:00Z"));
        assert!(mail.body_text.contains("It is burning."));
        assert!(mail.body_html.is_none());
        assert!(mail.parse_note.is_none());
    }

    #[test]
    fn html_only_mail_gets_readable_text() {
        let raw = b"From: a@example.net\r\nSubject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
<html><body><p>Hello <b>world</b></p><script>x()</script></body></html>\r\n";
        let mail = parse(raw);
        assert!(mail.body_text.contains("Hello"), "{:?}", mail.body_text);
        assert!(mail.body_text.contains("world"));
        assert!(!mail.body_text.contains("<b>"));
        assert!(
            mail.body_html
                .as_deref()
                .is_some_and(|h| h.contains("<b>world</b>"))
        );
    }

    #[test]
    fn attachments_are_kept() {
        let raw = b"From: a@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee file\r\n\
--XX\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n";
        let mail = parse(raw);
        assert_eq!(mail.attachments.len(), 1);
        let a = &mail.attachments[0];
        assert_eq!(a.filename.as_deref(), Some("r.pdf"));
        assert_eq!(a.content_type, "application/pdf");
        assert_eq!(a.content.as_deref(), Some(&b"%PDF-1.4\n"[..]));
        assert_eq!(a.size, 9);
        assert!(!a.inline);
        assert!(mail.body_text.contains("see file"));
    }

    #[test]
    fn garbage_still_becomes_a_mail_keyed_by_content() {
        for raw in [
            &b""[..],
            b"\x00\xff\xfe garbage",
            b"no headers at all\r\n\r\n",
        ] {
            let mail = parse(raw);
            assert!(mail.dedup_key.starts_with("sha256:"), "{raw:?}");
            assert!(!mail.subject.is_empty());
        }
        let mail = parse(b"\x00\xff\xfe garbage");
        assert!(mail.parse_note.is_some());
        assert!(mail.body_text.contains("garbage"));
        assert_ne!(parse(b"one").dedup_key, parse(b"two").dedup_key);
    }

    #[test]
    fn broken_mime_keeps_what_is_readable() {
        let raw = b"From: x@example.net\r\nSubject: =?utf-8?B?broken\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain; charset=nonsense\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\xff\r\n";
        let mail = parse(raw);
        assert_eq!(mail.from_addr.as_deref(), Some("x@example.net"));
        assert!(!mail.subject.is_empty());
    }

    const WITH_FILES: &[u8] = b"From: a@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/related; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n\
--XX\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n\
--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"..\\\\..\\\\evil\x07.exe\"\r\n\r\n\
0123456789012345678901234567890123456789\r\n--XX--\r\n";

    #[test]
    fn attachments_carry_metadata_and_safe_names() {
        let mail = parse(WITH_FILES);
        assert_eq!(mail.attachments.len(), 2, "{:?}", mail.attachments);
        let logo = &mail.attachments[0];
        assert_eq!(logo.content_id.as_deref(), Some("logo@x"));
        assert!(logo.inline);
        assert_eq!(logo.content.as_deref(), Some(&b"\x89PNG\r\n\x1a\n"[..]));
        assert_eq!(
            logo.sha256,
            format!("{:x}", Sha256::digest(b"\x89PNG\r\n\x1a\n"))
        );
        let exe = &mail.attachments[1];
        assert_eq!(exe.filename.as_deref(), Some("evil_.exe"));
        assert!(!exe.inline);
        assert!(mail.limit_note.is_none());
        assert!(mail.raw.is_none());
    }

    #[test]
    fn limits_drop_contents_but_keep_the_mail() {
        let limits = Limits {
            max_email_size: 1 << 20,
            max_attachment_size: 20,
            keep_raw: true,
        };
        let mail = parse_with(WITH_FILES, &limits);
        let exe = &mail.attachments[1];
        assert!(exe.content.is_none());
        assert_eq!(exe.size, 40);
        assert_eq!(
            exe.dropped.as_deref(),
            Some("larger than max_attachment_size (20 B)")
        );
        assert!(mail.attachments[0].content.is_some(), "the small one stays");
        let note = mail.limit_note.as_deref().unwrap_or_default();
        assert!(
            note.contains("\"evil_.exe\"") && note.contains("40 B"),
            "{note}"
        );
        let kept = mail.raw.as_ref().expect("kept");
        assert_eq!(kept.content, WITH_FILES);
        assert_eq!(kept.sha256, format!("{:x}", Sha256::digest(WITH_FILES)));

        let tiny = Limits {
            max_email_size: 100,
            ..limits
        };
        let mail = parse_with(WITH_FILES, &tiny);
        assert!(
            mail.attachments
                .iter()
                .all(|a| a.content.is_none() && a.dropped.is_some())
        );
        let note = mail.limit_note.as_deref().unwrap_or_default();
        assert!(
            note.contains("larger than max_email_size (100 B)"),
            "{note}"
        );
        assert!(note.contains("its 2 attachments were not stored"), "{note}");
    }

    #[test]
    fn filenames_are_made_safe() {
        assert_eq!(
            sanitize_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            sanitize_filename("C:\\Users\\x\\a.txt").as_deref(),
            Some("a.txt")
        );
        assert_eq!(
            sanitize_filename("a\r\nb?.pdf").as_deref(),
            Some("a__b_.pdf")
        );
        assert_eq!(sanitize_filename("con.txt").as_deref(), Some("_con.txt"));
        assert_eq!(sanitize_filename(".."), None);
        assert_eq!(sanitize_filename("   "), None);
        let long = format!("{}.docx", "x".repeat(300));
        let short = sanitize_filename(&long).unwrap_or_default();
        assert_eq!(short.len(), 200);
        assert!(short.ends_with(".docx"));
    }

    #[test]
    fn deliveries_of_one_mail_share_a_content_key() {
        let a = parse(b"Received: from a\r\nFrom: x@example.net\r\nSubject: s\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n");
        let b = parse(b"Received: from b\r\nDelivered-To: other@contoso.com\r\nFrom: x@example.net\r\nSubject: s\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n");
        let c = parse(b"From: x@example.net\r\nSubject: s\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nanother body\r\n");
        assert!(a.dedup_key.starts_with("sha256:"));
        assert_eq!(a.dedup_key, b.dedup_key);
        assert_ne!(a.dedup_key, c.dedup_key);
    }

    #[test]
    fn reports_name_the_mail_they_are_about() {
        let raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; x@y\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: help@contoso.com\r\nMessage-ID: <m2t.abc@contoso.com>\r\nSubject: [#1] s\r\n\r\n--B--\r\n";
        let mail = parse(raw);
        assert_eq!(mail.mime_type, "multipart/report");
        let report = mail.report.clone().expect("a report");
        assert_eq!(report.report_type, "delivery-status");
        assert_eq!(report.original_ids, ["m2t.abc@contoso.com"]);
        assert_eq!(
            mail.header_values("from").next(),
            Some("MAILER-DAEMON@mx.example.net")
        );
    }

    #[test]
    fn charsets_decode_to_utf8() {
        // "Grüße" in UTF-7, Shift_JIS "日本語", Windows-1252 "€uro", ISO-8859-2 "Łódź".
        let mail = parse(b"From: a@example.net\r\nSubject: =?UTF-7?Q?Gr+APwA3w-e?=\r\n\r\nx\r\n");
        assert_eq!(mail.subject, "Grüße");
        let mail = parse(b"From: a@example.net\r\nSubject: =?Shift_JIS?B?k/qWe4zq?=\r\nContent-Type: text/plain; charset=Shift_JIS\r\n\r\n\x93\xfa\x96\x7b\x8c\xea\r\n");
        assert_eq!(mail.subject, "日本語");
        assert!(mail.body_text.contains("日本語"), "{}", mail.body_text);
        let mail = parse(b"From: a@example.net\r\nSubject: s\r\nContent-Type: text/plain; charset=windows-1252\r\n\r\n\x80uro\r\n");
        assert!(mail.body_text.contains("€uro"), "{}", mail.body_text);
        let mail =
            parse(b"From: a@example.net\r\nSubject: =?ISO-8859-2?Q?=A3=F3d=BC?=\r\n\r\nx\r\n");
        assert_eq!(mail.subject, "Łódź");
    }

    #[test]
    fn a_boundary_that_never_appears_leaves_the_text_readable() {
        let raw = b"From: a@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"A\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nno space left on device\r\n--B--\r\n";
        let mail = parse(raw);
        assert!(
            mail.body_text.contains("no space left on device"),
            "{mail:?}"
        );
        assert!(mail.attachments.is_empty(), "{:?}", mail.attachments);
        assert!(
            mail.parse_note
                .as_deref()
                .is_some_and(|n| n.contains("boundary"))
        );
    }

    use super::super::mime::nested_messages;

    /// The cut the note states, and the opaque rest.
    fn assert_cut_at_the_limit(mail: &ParsedMail, raw: &[u8]) {
        let note = mail.parse_note.as_deref().unwrap_or_default();
        assert!(
            note.contains("MIME nesting exceeded 100 levels at byte "),
            "{note}"
        );
        let at: usize = note
            .split("at byte ")
            .nth(1)
            .and_then(|n| n.split(';').next())
            .and_then(|n| n.parse().ok())
            .expect("a byte offset");
        assert!(
            note.contains(&format!(
                "the remaining {} bytes are kept as one attachment",
                raw.len() - at
            )),
            "{note}"
        );
        let rest = mail.attachments.last().expect("the rest");
        assert_eq!(rest.content_type, "application/octet-stream");
        assert_eq!(rest.content.as_deref(), Some(&raw[at..]));
        assert_eq!(rest.size, raw.len() - at);
        assert!(mail.quarantine.is_none());
    }

    #[test]
    fn forty_thousand_nested_messages_are_cut_at_the_limit() {
        // Parsed on the test thread's ordinary stack: only a real cut keeps
        // the drop of the parsed tree from overflowing it.
        let raw = nested_messages(40_000);
        let mail = parse(&raw);
        assert_eq!(mail.subject, "deep");
        assert_eq!(mail.message_id.as_deref(), Some("deep@x"));
        assert_cut_at_the_limit(&mail, &raw);
        let shallow = parse(&nested_messages(50));
        assert!(shallow.parse_note.is_none(), "{:?}", shallow.parse_note);
    }

    #[test]
    fn a_hundred_thousand_nested_multiparts_are_cut_at_the_limit() {
        let levels = 100_000;
        let mut raw = b"From: a@example.net\r\nSubject: deep\r\n".to_vec();
        for i in 0..levels {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
        for i in (0..levels).rev() {
            raw.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
        }
        let mail = parse(&raw);
        assert_eq!(mail.subject, "deep");
        assert_cut_at_the_limit(&mail, &raw);
    }

    #[test]
    fn a_report_about_thirty_three_thousand_mails_names_the_first_fifty() {
        let mut raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
            .to_vec();
        for i in 0..33_000 {
            // Every id twice: repeats are dropped, not counted.
            raw.extend_from_slice(
                format!(
                    "--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <m{}@x>\r\n\r\n",
                    i / 2
                )
                .as_bytes(),
            );
        }
        raw.extend_from_slice(b"--B--\r\n");
        let report = parse(&raw).report.expect("a report");
        let want: Vec<String> = (0..MAX_REFERENCED).map(|i| format!("m{i}@x")).collect();
        assert_eq!(report.original_ids, want);
    }

    #[test]
    fn a_three_mib_subject_is_cut_and_noted() {
        let subject = format!("{}Fwd: x", "Re: ".repeat((3 << 20) / 4));
        let raw = format!("From: a@example.net\r\nSubject: {subject}\r\n\r\nbody\r\n");
        let mail = parse(raw.as_bytes());
        assert_eq!(mail.subject.len(), MAX_SUBJECT);
        assert!(mail.subject.starts_with("Re: Re: "));
        let note = mail.parse_note.as_deref().unwrap_or_default();
        assert!(
            note.contains("the Subject (3.0 MiB) was cut to 4.0 KiB"),
            "{note}"
        );
        assert!(!crate::ingest::thread::is_forward(&mail.subject));
        let cut_in_a_char = format!(
            "Subject: {}é\r\nFrom: a@x\r\n\r\nb",
            "x".repeat(MAX_SUBJECT - 1)
        );
        assert_eq!(
            parse(cut_in_a_char.as_bytes()).subject.len(),
            MAX_SUBJECT - 1
        );
    }

    #[test]
    fn headers_and_address_lists_are_bounded() {
        let mut raw = String::from("From: a@example.net\r\nSubject: s\r\n");
        let to: Vec<String> = (0..10_000)
            .map(|i| format!("user{i}@example.net"))
            .collect();
        raw.push_str(&format!(
            "To: {}\r\nCc: {}\r\n",
            to.join(", "),
            to.join(", ")
        ));
        raw.push_str(&format!("X-Big: {}\r\n", "y".repeat(100_000)));
        for i in 0..1_500 {
            raw.push_str(&format!("X-Many: {i}\r\n"));
        }
        raw.push_str("\r\nbody\r\n");
        let mail = parse(raw.as_bytes());
        assert_eq!(mail.headers.len(), MAX_HEADERS);
        assert_eq!(
            mail.headers[0],
            ("From".to_string(), "a@example.net".to_string())
        );
        let big = mail.header_values("X-Big").next().unwrap_or_default();
        assert_eq!(big.len(), MAX_HEADER_VALUE);
        assert!(
            mail.to
                .as_deref()
                .is_some_and(|t| t.len() <= MAX_ADDRESS_LIST && t.starts_with("user0@"))
        );
        assert!(
            mail.cc
                .as_deref()
                .is_some_and(|t| t.len() <= MAX_ADDRESS_LIST)
        );
        let note = mail.parse_note.as_deref().unwrap_or_default();
        for part in [
            "only the first 1000 of its 1505 headers are kept",
            "3 header value(s) were cut to 64.0 KiB",
            "the To list",
            "the Cc list",
        ] {
            assert!(note.contains(part), "{part} in {note}");
        }
    }

    #[test]
    fn raw_eight_bit_headers_are_decoded() {
        // Latin-1 "Grüße aus Köln" with no RFC 2047, the body in ISO-8859-1.
        let raw =
            b"From: J\xfcrgen M\xfcller <jm@example.net>\r\nSubject: Gr\xfc\xdfe aus K\xf6ln\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\r\nK\xf6ln\r\n";
        let mail = parse(raw);
        assert_eq!(mail.subject, "Grüße aus Köln");
        assert_eq!(mail.from_name.as_deref(), Some("Jürgen Müller"));
        assert_eq!(mail.from_addr.as_deref(), Some("jm@example.net"));
        let note = mail.parse_note.as_deref().unwrap_or_default();
        assert!(
            note.contains("the Subject was raw 8-bit text; decoded as iso-8859-1"),
            "{note}"
        );
        // Nothing declared: windows-1252 ("€" is 0x80 there).
        let mail = parse(
            b"From: a@example.net\r\nSubject: 100 \x80 f\xfcr =?utf-8?q?caf=C3=A9?=\r\n\r\nx\r\n",
        );
        assert_eq!(mail.subject, "100 € für café");
        assert!(
            mail.parse_note
                .as_deref()
                .is_some_and(|n| n.contains("decoded as windows-1252"))
        );
        // Valid UTF-8 is left alone, without a note.
        let mail = parse("From: a@example.net\r\nSubject: Grüße\r\n\r\nx\r\n".as_bytes());
        assert_eq!(mail.subject, "Grüße");
        assert!(mail.parse_note.is_none());
    }

    #[test]
    fn a_boundary_in_mid_line_is_noted() {
        let raw = b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"XY\"\r\n\r\n\
--XY\r\nContent-Type: text/plain\r\n\r\nthe log says --XY and then more\r\nsecond line\r\n--XY--\r\n";
        let mail = parse(raw);
        let at = raw.windows(4).rposition(|w| w == b" --X").expect("there") + 1;
        let note = mail.parse_note.as_deref().unwrap_or_default();
        assert!(
            note.contains(&format!(
                "a MIME boundary appears in the middle of a line at byte {at}"
            )),
            "{note}"
        );
        // What the body lost is in the raw mail, kept whatever keep_raw says.
        let kept = mail.raw.as_ref().expect("the raw mail is kept");
        assert_eq!(kept.content, raw);
        assert!(
            !mail.body_text.contains("and then more"),
            "{}",
            mail.body_text
        );
        let plain = parse(
            b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"XY\"\r\n\r\n\
--XY\r\nContent-Type: text/plain\r\n\r\nno boundary in here\r\n--XY--\r\n",
        );
        assert!(plain.raw.is_none() && plain.parse_note.is_none());
    }

    #[test]
    fn digest_parts_are_messages() {
        let raw = b"From: a@example.net\r\nSubject: digest\r\nContent-Type: multipart/digest; boundary=D\r\n\r\n\
--D\r\n\r\nFrom: b@example.net\r\nSubject: one\r\n\r\nfirst\r\n--D\r\n\r\nFrom: c@example.net\r\nSubject: two\r\n\r\nsecond\r\n--D--\r\n";
        let mail = parse(raw);
        let kinds: Vec<&str> = mail
            .attachments
            .iter()
            .map(|a| a.content_type.as_str())
            .collect();
        assert_eq!(
            kinds,
            ["message/rfc822", "message/rfc822"],
            "{:?}",
            mail.attachments
        );
        let first = mail.attachments[0].content.as_deref().unwrap_or_default();
        assert!(String::from_utf8_lossy(first).contains("Subject: one"));
    }

    #[test]
    fn empty_nameless_parts_are_dropped() {
        let raw = b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=E\r\n\r\n\
--E\r\nContent-Type: text/plain\r\n\r\nhello\r\n--E\r\nContent-Type: application/octet-stream\r\n\r\n\r\n\
--E\r\nContent-Type: application/pdf; name=\"empty.pdf\"\r\n\r\n\r\n--E--\r\n";
        let mail = parse(raw);
        let names: Vec<Option<&str>> = mail
            .attachments
            .iter()
            .map(|a| a.filename.as_deref())
            .collect();
        assert_eq!(names, [Some("empty.pdf")], "a named empty file stays");
        assert!(mail.body_text.contains("hello"));
        assert!(
            mail.parse_note
                .as_deref()
                .is_some_and(|n| n.contains("an empty part without a name was dropped"))
        );
    }

    #[test]
    fn the_only_text_becomes_the_body() {
        let raw = b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=T\r\n\r\n\
--T\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nthe printer is on fire\r\n\
--T\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\r\n%PDF\r\n--T--\r\n";
        let mail = parse(raw);
        assert!(
            mail.body_text.contains("the printer is on fire"),
            "{:?}",
            mail.body_text
        );
        let names: Vec<Option<&str>> = mail
            .attachments
            .iter()
            .map(|a| a.filename.as_deref())
            .collect();
        assert_eq!(names, [Some("r.pdf")]);
        assert!(
            mail.parse_note
                .as_deref()
                .is_some_and(|n| n.contains("unnamed text/plain part(s)"))
        );
    }

    #[test]
    fn from_addr_is_one_address() {
        let mail = parse(b"From: ann@example.net, bob@example.net\r\nSubject: s\r\n\r\nx\r\n");
        assert_eq!(mail.from_addr.as_deref(), Some("ann@example.net"));
        assert!(mail.parse_note.as_deref().is_some_and(|n| {
            n.contains("the From header names 2 addresses; the first (ann@example.net)")
        }));
        for from in [
            "Ann ann@example.net",
            "ann@example.net bob@example.net",
            "\"Ann\" <ann@example.net> <bob@example.net>",
            "<ann@example.net>, Bob <bob@example.net>",
        ] {
            let mail = parse(format!("From: {from}\r\nSubject: s\r\n\r\nx\r\n").as_bytes());
            let addr = mail.from_addr.as_deref().unwrap_or("none");
            assert!(
                addr == "ann@example.net" || addr == "bob@example.net",
                "{from} gave {addr}"
            );
        }
        let mail = parse(b"From: Ann Example\r\nSubject: s\r\n\r\nx\r\n");
        assert_eq!(mail.from_addr, None);
    }

    #[test]
    fn the_first_of_repeated_headers_wins() {
        let raw = b"From: first@example.net\r\nFrom: second@example.net\r\nSubject: first\r\nSubject: second\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\nbody\r\n";
        let mail = parse(raw);
        assert_eq!(mail.subject, "first");
        assert_eq!(mail.from_addr.as_deref(), Some("first@example.net"));
        assert_eq!(mail.sent_at.as_deref(), Some("2026-11-24T10:00:00Z"));
        assert_eq!(mail.message_id.as_deref(), Some("first@x"));
        let note = mail.parse_note.as_deref().unwrap_or_default();
        assert!(
            note.contains("the mail has 2 Subject headers; the first is used"),
            "{note}"
        );
        assert!(
            note.contains("the mail has 2 From headers; the first is used"),
            "{note}"
        );
    }

    #[test]
    fn a_parser_panic_quarantines_the_mail_with_its_raw_bytes() {
        let raw = b"From: a@example.net\r\nSubject: s\r\n\r\nbody\r\n";
        let limits = Limits {
            keep_raw: false,
            ..Limits::default()
        };
        let mail = parse_using(raw, raw.len() as u64, &limits, |_| panic!("a parser bug"));
        assert_eq!(mail.quarantine.as_deref(), Some("the MIME parser panicked"));
        assert_eq!(
            mail.raw.as_ref().map(|r| r.content.as_slice()),
            Some(&raw[..])
        );
        assert!(mail.body_text.contains("body"));
        assert!(mail.dedup_key.starts_with("sha256:"));
        // The ordinary path neither quarantines nor keeps the raw mail.
        let mail = parse_with(raw, &limits);
        assert!(mail.quarantine.is_none() && mail.raw.is_none());
        // No recognised header is a note, not a quarantine.
        let mail = parse_with(b"\x00\xff\xfe garbage", &limits);
        assert!(mail.quarantine.is_none() && mail.parse_note.is_some());
    }

    #[test]
    fn boundaries_that_never_appear_are_not_hunted_for_again_and_again() {
        // mail-parser alone looks for each boundary to the end of the mail:
        // 25 s for this 1.8 MiB mail in a release build.
        let mut raw = b"From: a@example.net\r\nSubject: s\r\n\
Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n"
            .to_vec();
        for i in 0..30_000 {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=never{i}\r\n\r\nx\r\n--A\r\n")
                    .as_bytes(),
            );
        }
        raw.extend_from_slice(b"--A--\r\n");
        let mail = parse(&raw);
        let note = mail.parse_note.as_deref().unwrap_or_default();
        assert!(
            note.contains(
                "finding its MIME parts would take too many passes over the mail at byte"
            ),
            "{note}"
        );
        let rest = mail.attachments.last().expect("the rest");
        assert_eq!(rest.content_type, "application/octet-stream");
        assert!(rest.size > raw.len() / 2, "{}", rest.size);
        assert!(raw.ends_with(rest.content.as_deref().unwrap_or_default()));
    }
}
