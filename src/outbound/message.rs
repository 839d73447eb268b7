//! The acknowledgement as a mail: the admin's templates filled in, and the
//! headers that thread it under the customer's mail and keep other
//! machines from answering it (RFC 3834).

use lettre::Message;
use lettre::address::{Address, Envelope};
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};

use crate::config::{ReplyConfig, SubjectTag};
use crate::store::DueAck;

/// Why no mail could be made of an outbox row. Retrying cannot help: the
/// addresses are what they are.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("recipient {address:?} is not a usable mail address: {reason}")]
    Recipient { address: String, reason: String },
    #[error("reply.from {address:?} is not a usable mail address: {reason}")]
    From { address: String, reason: String },
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// At most this many Message-IDs go into References: the first (the root
/// of the thread) and the newest, as mail programs trim long threads.
const MAX_REFERENCES: usize = 20;

/// What the placeholders of the templates stand for.
#[derive(Debug, Clone)]
pub struct Placeholders<'a> {
    /// The ticket tag, e.g. `[#42]`.
    pub tag: String,
    pub id: i64,
    /// The ticket's subject.
    pub subject: &'a str,
    pub requester: &'a str,
    /// The requester's display name, or their address when the mail gave
    /// no name (so that "Dear {requester_name}" always reads).
    pub requester_name: &'a str,
}

impl<'a> Placeholders<'a> {
    pub fn of(row: &'a DueAck, tag: &SubjectTag) -> Placeholders<'a> {
        let requester = row.requester.as_deref().unwrap_or(&row.to_addr);
        let requester_name = row
            .requester_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(requester);
        Placeholders {
            tag: tag.format(row.ticket_id),
            id: row.ticket_id,
            subject: &row.subject,
            requester,
            requester_name,
        }
    }

    fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "tag" => self.tag.clone(),
            "id" => self.id.to_string(),
            "subject" => self.subject.to_string(),
            "requester" => self.requester.to_string(),
            "requester_name" => self.requester_name.to_string(),
            _ => return None,
        })
    }
}

/// Fills in `{tag}`, `{id}`, `{subject}`, `{requester}` and
/// `{requester_name}`. One pass: a value that itself contains `{tag}` (a
/// customer's subject may) stays as written. Unknown names and lone braces
/// are kept.
pub fn render(template: &str, values: &Placeholders<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let replaced = after
            .find('}')
            .and_then(|close| Some((values.value(&after[..close])?, close)));
        match replaced {
            Some((value, close)) => {
                out.push_str(&value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A Message-ID as stored (no angle brackets) that can go into a header
/// as `<id>`: anything with spaces, brackets or control characters is
/// left out rather than let it break the header.
fn usable_id(id: &str) -> Option<&str> {
    let id = id.trim();
    let bad = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>');
    (!id.is_empty() && !id.contains(bad)).then_some(id)
}

fn references(row: &DueAck) -> Option<String> {
    let ids: Vec<&str> = row
        .references
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(usable_id)
        .collect();
    let kept: Vec<&str> = if ids.len() > MAX_REFERENCES {
        let newest = &ids[ids.len() - (MAX_REFERENCES - 1)..];
        std::iter::once(ids[0])
            .chain(newest.iter().copied())
            .collect()
    } else {
        ids
    };
    (!kept.is_empty()).then(|| {
        kept.iter()
            .map(|id| format!("<{id}>"))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string())
}

/// A subject is one line; a CR or LF from a template or a customer's
/// subject becomes a space.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The acknowledgement of `row`: its envelope (from `reply.from`, so that
/// bounces come back to the mailbox, where the guard files them with the
/// ticket) and the formatted message.
pub fn build(
    reply: &ReplyConfig,
    tag: &SubjectTag,
    row: &DueAck,
) -> Result<(Envelope, Vec<u8>), MessageError> {
    let values = Placeholders::of(row, tag);
    let from: Address = reply
        .from
        .trim()
        .parse()
        .map_err(|e: lettre::address::AddressError| MessageError::From {
            address: reply.from.clone(),
            reason: e.to_string(),
        })?;
    let to_address: Address =
        row.to_addr
            .trim()
            .parse()
            .map_err(|e: lettre::address::AddressError| MessageError::Recipient {
                address: row.to_addr.clone(),
                reason: e.to_string(),
            })?;
    // The display name only when the ticket's requester is this recipient.
    let to_name = row
        .requester
        .as_deref()
        .filter(|r| r.trim().eq_ignore_ascii_case(row.to_addr.trim()))
        .and(row.requester_name.as_deref())
        .map(one_line)
        .filter(|n| !n.trim().is_empty());

    let mut builder = Message::builder()
        .from(Mailbox::new(None, from.clone()))
        .to(Mailbox::new(to_name, to_address.clone()))
        .subject(one_line(&render(&reply.subject, &values)))
        .message_id(Some(format!("<{}>", row.message_id)))
        // RFC 3834: an automatic reply says so, and answers nothing itself.
        .raw_header(header("Auto-Submitted", "auto-replied"))
        // Our own mail coming back (a forward, a misconfigured rule) is
        // recognised by this and dropped by the guard.
        .raw_header(header("X-Loop", reply.from.trim()))
        // Exchange and Outlook send no out-of-office or other automatic
        // answer to a mail with this.
        .raw_header(header("X-Auto-Response-Suppress", "All"));
    if let Some(parent) = row.in_reply_to.as_deref().and_then(usable_id) {
        builder = builder.in_reply_to(format!("<{parent}>"));
    }
    if let Some(refs) = references(row) {
        builder = builder.references(refs);
    }
    let envelope = Envelope::new(Some(from), vec![to_address])
        .map_err(|e| MessageError::Build(e.to_string()))?;
    let message = builder
        .envelope(envelope.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(render(&reply.body, &values))
        .map_err(|e| MessageError::Build(e.to_string()))?;
    Ok((envelope, message.formatted()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tls;

    fn row() -> DueAck {
        DueAck {
            id: 1,
            ticket_id: 42,
            reader: "helpdesk".into(),
            message_id: "m2t.0123456789abcdef.fedcba9876543210@contoso.com".into(),
            to_addr: "bob@example.net".into(),
            in_reply_to: Some("orig@example.net".into()),
            references: Some("root@example.net orig@example.net".into()),
            attempts: 0,
            subject: "Printer {tag} on fire".into(),
            requester: Some("Bob@Example.net".into()),
            requester_name: Some("Bob Müller".into()),
        }
    }

    fn reply() -> ReplyConfig {
        ReplyConfig {
            via: crate::config::Via::Smtp,
            from: "helpdesk@contoso.com".into(),
            host: "smtp.office365.com".into(),
            port: 587,
            tls: Tls::StartTls,
            ca_file: None,
            subject: "{tag} {subject}".into(),
            body: "Dear {requester_name} <{requester}>,\nticket {id} is {tag}. {unknown} {x\n"
                .into(),
        }
    }

    fn tag() -> SubjectTag {
        SubjectTag::new("[#{id}]").expect("tag")
    }

    #[test]
    fn placeholders_are_filled_once_and_unknown_ones_kept() {
        let row = row();
        let values = Placeholders::of(&row, &tag());
        assert_eq!(
            render("{tag} {subject}", &values),
            "[#42] Printer {tag} on fire"
        );
        assert_eq!(
            render(&reply().body, &values),
            "Dear Bob Müller <Bob@Example.net>,\nticket 42 is [#42]. {unknown} {x\n"
        );
        let nameless = DueAck {
            requester_name: None,
            ..row.clone()
        };
        let values = Placeholders::of(&nameless, &tag());
        assert_eq!(render("{requester_name}", &values), "Bob@Example.net");
    }

    fn headers(raw: &[u8]) -> Vec<(String, String)> {
        let text = String::from_utf8(raw.to_vec()).expect("ASCII");
        let head = text.split("\r\n\r\n").next().expect("head");
        let mut out: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = out.last_mut() {
                    last.1.push_str(line);
                }
            } else if let Some((name, value)) = line.split_once(':') {
                out.push((name.to_string(), value.trim().to_string()));
            }
        }
        out
    }

    fn get<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_acknowledgement_threads_and_suppresses_auto_replies() {
        let (envelope, raw) = build(&reply(), &tag(), &row()).expect("build");
        assert!(raw.is_ascii(), "7-bit on the wire");
        assert_eq!(
            envelope.from().map(ToString::to_string).as_deref(),
            Some("helpdesk@contoso.com")
        );
        assert_eq!(envelope.to().len(), 1);
        let h = headers(&raw);
        assert_eq!(get(&h, "Subject"), Some("[#42] Printer {tag} on fire"));
        assert_eq!(get(&h, "From"), Some("helpdesk@contoso.com"));
        let to = get(&h, "To").expect("To");
        assert!(to.ends_with("<bob@example.net>"), "{to}");
        assert_eq!(
            get(&h, "Message-ID"),
            Some("<m2t.0123456789abcdef.fedcba9876543210@contoso.com>")
        );
        assert_eq!(get(&h, "In-Reply-To"), Some("<orig@example.net>"));
        assert_eq!(
            get(&h, "References"),
            Some("<root@example.net> <orig@example.net>")
        );
        assert_eq!(get(&h, "Auto-Submitted"), Some("auto-replied"));
        assert_eq!(get(&h, "X-Loop"), Some("helpdesk@contoso.com"));
        assert_eq!(get(&h, "X-Auto-Response-Suppress"), Some("All"));
        assert!(get(&h, "Date").is_some());
        assert!(
            get(&h, "Content-Type").is_some_and(|c| c.contains("charset=utf-8")),
            "{h:?}"
        );
    }

    #[test]
    fn odd_ids_and_long_threads_are_trimmed() {
        let many: Vec<String> = (0..30).map(|i| format!("id{i}@example.net")).collect();
        let row = DueAck {
            in_reply_to: Some("has space@example.net".into()),
            references: Some(format!("{} <bad>@x", many.join(" "))),
            subject: "Line\r\nbreak".into(),
            ..row()
        };
        let (_, raw) = build(&reply(), &tag(), &row).expect("build");
        let h = headers(&raw);
        assert_eq!(get(&h, "In-Reply-To"), None);
        let refs = get(&h, "References").expect("References");
        let ids: Vec<&str> = refs.split_whitespace().collect();
        assert_eq!(ids.len(), MAX_REFERENCES);
        assert_eq!(ids[0], "<id0@example.net>");
        assert_eq!(ids[MAX_REFERENCES - 1], "<id29@example.net>");
        assert_eq!(get(&h, "Subject"), Some("[#42] Line break"));
    }

    #[test]
    fn an_unusable_recipient_is_named() {
        let row = DueAck {
            to_addr: "not an address".into(),
            ..row()
        };
        let err = build(&reply(), &tag(), &row).expect_err("bad recipient");
        assert!(
            err.to_string().starts_with("recipient \"not an address\""),
            "{err}"
        );
    }
}
