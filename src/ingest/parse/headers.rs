//! Reading a mail's top-level headers: the first of repeated ones, raw
//! 8-bit values, the sender's one address, the address and Message-ID
//! lists, and the header list the guard and the rules see.

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{
    Addr, Address, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders,
};

use super::limits::{MAX_HEADER_VALUE, MAX_HEADERS, human_size, truncate};

pub(super) fn unfold(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first top-level header called `name`.
pub(super) fn first<'a>(
    message: &'a Message<'_>,
    name: &HeaderName<'_>,
) -> Option<&'a HeaderValue<'a>> {
    message
        .headers()
        .iter()
        .find(|h| h.name == *name)
        .map(|h| &h.value)
}

/// The top-level headers for the guard and the rules, within
/// [`MAX_HEADERS`] and [`MAX_HEADER_VALUE`].
pub(super) fn top_headers(
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
pub(super) fn declared_charset(message: &Message<'_>) -> Option<String> {
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
pub(super) fn eight_bit(value: &[u8], charset: Option<&str>) -> Option<(String, String)> {
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
pub(super) fn reparse_header(name: &str, value: &str) -> Option<Message<'static>> {
    let raw = format!("{name}:{value}\r\n\r\n").into_bytes();
    let message = MessageParser::default().parse_headers(&raw)?;
    Some(message.into_owned())
}

/// The sender: exactly one addr-spec (`local@domain`), or none; and the
/// display name. `written` is the From header as written (unfolded), read
/// when mail-parser's address is not one addr-spec (it joins two
/// addresses into one string, or keeps a name with it).
pub(super) fn sender(
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
pub(super) fn is_addr_spec(text: &str) -> bool {
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
pub(super) fn first_addr_spec(text: &str) -> Option<String> {
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

pub(super) fn ids(value: &HeaderValue<'_>) -> Option<String> {
    let list = value.as_text_list()?;
    if list.is_empty() {
        None
    } else {
        Some(list.join(" "))
    }
}

pub(super) fn addresses(value: Option<&Address<'_>>) -> Option<String> {
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
