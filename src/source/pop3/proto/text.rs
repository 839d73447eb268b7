//! Reading POP3 status and list lines: classifying `+OK` / `-ERR` / `+`,
//! line ends, unique ids, numbers, and quoting what a server sent.

use super::{MAX_QUOTED, Reply};

/// Classifies a status line. Indicators are matched without case and must
/// stand alone ("+OKAY" is not "+OK"), as RFC 1939 puts a space before
/// the text.
pub(super) fn parse_reply(line: &[u8]) -> Option<Reply> {
    let line = strip_eol(line);
    if let Some(text) = strip_indicator(line, b"+OK") {
        return Some(Reply::Ok(text));
    }
    if let Some(text) = strip_indicator(line, b"-ERR") {
        return Some(Reply::Err(text));
    }
    line.strip_prefix(b"+")
        .map(|rest| Reply::Continue(printable(rest).trim().to_owned()))
}

fn strip_indicator(line: &[u8], indicator: &[u8]) -> Option<String> {
    let head = line.get(..indicator.len())?;
    if !head.eq_ignore_ascii_case(indicator) {
        return None;
    }
    let rest = &line[indicator.len()..];
    match rest.first() {
        None | Some(b' ' | b'\t') => Some(printable(rest).trim().to_owned()),
        Some(_) => None,
    }
}

/// Accepts CRLF and, from sloppy servers, a bare LF.
pub(super) fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Server text, quoted as every protocol's is ([`crate::scrub::printable`]).
pub(super) fn printable(bytes: &[u8]) -> String {
    crate::scrub::printable(&String::from_utf8_lossy(bytes))
}

/// A unique-id as the ledger keeps it: RFC 1939 allows only 0x21-0x7E,
/// and any other byte a server sends (a control character, 8-bit text) is
/// written `%XX`. The result is printable, and it is lossless: a lossy
/// conversion could make two messages look the same, and refusing the
/// listing would stop the mailbox for good.
pub(super) fn unique_id(word: &[u8]) -> String {
    let mut id = String::with_capacity(word.len());
    for &b in word {
        if (0x21..=0x7e).contains(&b) {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("%{b:02X}"));
        }
    }
    id
}

/// Quotes unexpected server output for an error message, shortened.
pub(super) fn quote(bytes: &[u8]) -> String {
    let text = printable(strip_eol(bytes));
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

pub(super) fn parse_number<T: std::str::FromStr>(word: &[u8]) -> Option<T> {
    std::str::from_utf8(word).ok()?.parse().ok()
}
