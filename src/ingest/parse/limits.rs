//! The bounds on what one mail may weigh in the database: the size
//! limits from `[tickets]` (what a mail over them keeps) and the caps on
//! the subject, the address lists and the header list.

use super::ParsedMail;
use crate::config::TicketsConfig;

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

/// The longest subject kept.
pub(super) const MAX_SUBJECT: usize = 4 << 10;
/// The longest To and Cc kept, each.
pub(super) const MAX_ADDRESS_LIST: usize = 64 << 10;
/// The most top-level headers kept in `ParsedMail::headers`.
pub(super) const MAX_HEADERS: usize = 1000;
/// The longest header value kept in `ParsedMail::headers`.
pub(super) const MAX_HEADER_VALUE: usize = 64 << 10;

/// `fetched` is how much of the mail's `size` bytes was read.
pub(super) fn apply_limits(mail: &mut ParsedMail, limits: &Limits, fetched: usize) {
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
pub(super) fn truncate(text: &mut String, max: usize) -> bool {
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
