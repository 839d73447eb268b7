//! MIME parsing with mail-parser, and the fallback for what it cannot read.

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

/// What one mail contributes to a ticket.
#[derive(Debug, Clone, Default)]
pub struct ParsedMail {
    /// Message-ID when present, else `sha256:<hex of the raw bytes>`: one
    /// mail is one email, whichever reader saw it first.
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
}

#[derive(Clone, Default)]
pub struct Attachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("size", &self.content.len())
            .finish()
    }
}

/// Parses `raw`; never fails and never panics.
pub fn parse(raw: &[u8]) -> ParsedMail {
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
        None => format!("sha256:{:x}", Sha256::digest(raw)),
    };
    mail
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

    let attachments = message
        .attachments()
        .map(|part| Attachment {
            filename: part.attachment_name().map(str::to_string),
            content_type: part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into()),
            content: part.contents().to_vec(),
        })
        .collect();

    let mut note = None;
    if from_addr.is_none() {
        note = Some("the mail has no readable From address".to_string());
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
        dedup_key: String::new(),
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
        assert_eq!(a.content, b"%PDF-1.4\n");
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
}
