//! MIME parsing with mail-parser, the fallback for what it cannot read,
//! and the size limits.

use mail_parser::{
    Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use sha2::{Digest, Sha256};

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
    /// Why the mail cannot be made into a ticket at all (the parser gave
    /// up on it); the store then sets it aside whole in the quarantine.
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
    /// message or headers part.
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
    // mail-parser is robust, but a panic here would make the same mail fail
    // on every poll; containing it costs nothing on the happy path.
    let parsed = std::panic::catch_unwind(|| parse_mime(raw));
    let mut mail = match parsed {
        Ok(Some(mail)) => mail,
        Ok(None) => fallback(
            raw,
            "the MIME structure could not be parsed; the body is the raw mail",
        ),
        Err(_) => fallback(
            raw,
            "the MIME parser failed on this mail; the body is the raw mail",
        ),
    };
    mail.dedup_key = match &mail.message_id {
        Some(id) => id.clone(),
        None => content_key(raw),
    };
    mail.size = usize::try_from(full_size)
        .unwrap_or(usize::MAX)
        .max(raw.len());
    apply_limits(&mut mail, limits, raw.len());
    if limits.keep_raw {
        mail.raw = Some(RawMail {
            content: raw.to_vec(),
            sha256: format!("{:x}", Sha256::digest(raw)),
        });
        if let Some(note) = &mut mail.limit_note {
            note.push_str(&if raw.len() < mail.size {
                format!(
                    "; the raw mail's first {} are kept (keep_raw)",
                    human_size(raw.len() as u64)
                )
            } else {
                "; the raw mail is kept whole (keep_raw)".to_string()
            });
        }
    }
    mail
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
    // Without a single header we recognise, the "parsed" mail would be an
    // empty shell; the raw text tells a human more.
    let recognised = message.from().is_some()
        || message.subject().is_some()
        || message.message_id().is_some()
        || message.date().is_some()
        || message.to().is_some();
    if !recognised {
        return None;
    }
    let (from_addr, from_name) = match message.from().and_then(Address::first) {
        Some(addr) => (
            addr.address().map(str::to_string),
            addr.name().map(str::to_string),
        ),
        None => (None, None),
    };

    let body_text = (0..message.text_body_count())
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
    let headers = message
        .headers()
        .iter()
        .map(|h| {
            let value = raw.get(h.offset_start as usize..h.offset_end as usize);
            (
                h.name.as_str().to_string(),
                unfold(value.unwrap_or_default()),
            )
        })
        .collect();
    let mime_type = message
        .content_type()
        .map_or_else(|| "text/plain".to_string(), mime_type_of);
    let report = (mime_type == "multipart/report").then(|| report(&message));

    let mut note = None;
    if from_addr.is_none() {
        note = Some("the mail has no readable From address".to_string());
    }
    // A multipart whose boundary never appears is handed back whole, as one
    // part of the multipart type: the mail's text is in there, unsplit.
    let mut body_text = body_text;
    if body_text.trim().is_empty()
        && html.is_empty()
        && let Some(i) = attachments
            .iter()
            .position(|a| a.content_type.starts_with("multipart/"))
    {
        let unsplit = attachments.remove(i);
        body_text =
            String::from_utf8_lossy(unsplit.content.as_deref().unwrap_or_default()).into_owned();
        note = Some(format!(
            "the {} structure could not be split (its boundary does not appear); the body is its raw text",
            unsplit.content_type
        ));
    }

    Some(ParsedMail {
        message_id: message.message_id().map(str::to_string),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        from_addr,
        from_name,
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        subject: message.subject().unwrap_or("(no subject)").to_string(),
        sent_at: message.date().map(|d| d.to_rfc3339()),
        body_text,
        body_html: if html.is_empty() {
            None
        } else {
            Some(html.join("\n"))
        },
        attachments,
        parse_note: note,
        headers,
        mime_type,
        report,
        ..ParsedMail::default()
    })
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
        content_type: part
            .content_type()
            .map_or_else(|| "application/octet-stream".to_string(), mime_type_of),
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
    for part in &message.parts {
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
            if !original_ids.contains(&id) {
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
}
