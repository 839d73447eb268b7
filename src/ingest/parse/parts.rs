//! What a mail's parts become: attachments with their metadata and safe
//! filenames, the opaque rest past the nesting limit, and what a
//! multipart/report is about.

use std::collections::HashSet;

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use super::limits::truncate;
use super::{Attachment, Report};
use crate::ingest::thread::MAX_REFERENCED;

/// What was left of a mail past the nesting limit: kept, unread.
pub(super) fn opaque(content: &[u8]) -> Attachment {
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

pub(super) fn mime_type_of(ct: &mail_parser::ContentType<'_>) -> String {
    match ct.subtype() {
        Some(sub) => format!("{}/{}", ct.ctype(), sub),
        None => ct.ctype().to_string(),
    }
    .to_ascii_lowercase()
}

pub(super) fn attachment(part: &MessagePart<'_>) -> Attachment {
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
pub(super) fn report(message: &Message<'_>) -> Report {
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
