//! A linear pre-scan of a raw mail's MIME structure, run before mail-parser
//! sees it: owns the MIME nesting limit and the cost bound.
//!
//! mail-parser keeps every nested `message/rfc822` as a `Message` inside its
//! parent, and dropping that tree recurses once per level: a few MiB of
//! nested parts overflow any thread's stack, and a stack overflow aborts the
//! process (no `catch_unwind` helps), so the same mail would crash the
//! daemon on every poll. The scan follows the way mail-parser walks a mail
//! (which boundary it looks for, that it finds `--boundary` anywhere in a
//! line, that a part without Content-Type in a multipart/digest is a
//! message) and counts every level it would open; where it is unsure, it
//! counts. It reports where the raw mail must be cut so that the parser
//! only ever sees at most [`MAX_NESTING`] levels, and where the mail would
//! make the parser scan the same bytes again and again.

use base64::Engine;

/// The deepest MIME nesting parsed, multiparts and messages together
/// (Postfix's `mime_nesting_limit`).
pub const MAX_NESTING: usize = 100;

/// RFC 2046 allows 70 characters; a longer boundary is only good for
/// making the parser compare it at every `--` of the mail.
const MAX_BOUNDARY: usize = 256;

/// mail-parser parses a base64 or quoted-printable `message/rfc822` part
/// again, at most this many levels deep; deeper ones stay binary.
const MAX_ENCODED: usize = 3;

/// What the scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Where the raw mail must be cut, if anywhere.
    pub cut: Option<Cut>,
    /// The first byte where a boundary appears after other text on its
    /// line: the parser ends the part there.
    pub midline_boundary: Option<usize>,
    /// The most levels open at once (of what was scanned).
    pub max_depth: usize,
}

/// Only `raw[..at]` may be parsed; the rest is kept as one opaque part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub at: usize,
    pub why: CutReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// Another level would exceed [`MAX_NESTING`].
    Nesting,
    /// A multipart boundary that is too long, or a header written in a way
    /// the scan cannot read for sure (so it cannot vouch for what follows).
    Unreadable,
    /// Finding the parts would take the parser many passes over the mail.
    Cost,
}

impl CutReason {
    /// For the parse note: why the rest of the mail was not parsed.
    pub fn describe(self) -> String {
        match self {
            CutReason::Nesting => format!("MIME nesting exceeded {MAX_NESTING} levels"),
            CutReason::Unreadable => {
                "a MIME boundary or header is too long or cannot be read for sure".to_string()
            }
            CutReason::Cost => {
                "finding its MIME parts would take too many passes over the mail".to_string()
            }
        }
    }
}

/// Scans `raw`; linear in its size (bounded by a budget of bytes looked
/// at, see [`CutReason::Cost`]).
pub fn scan(raw: &[u8]) -> Scan {
    let mut scanner = Scanner {
        budget: raw.len().saturating_mul(16).saturating_add(1 << 20),
        midline: None,
        max_depth: 0,
    };
    let cut = scanner.run(raw, 0, 0, true);
    Scan {
        cut: cut.map(|(at, why)| Cut { at, why }),
        midline_boundary: scanner.midline,
        max_depth: scanner.max_depth,
    }
}

/// One level mail-parser has open.
struct Frame {
    /// A multipart (else a nested message).
    multipart: bool,
    digest: bool,
    /// The boundary this level ends at: its own for a multipart, the one
    /// of its enclosing multipart for a message.
    boundary: Option<Vec<u8>>,
}

/// What the scan needs of one entity's header block.
struct EntityHeader {
    /// Lower-case `type/subtype`, if a Content-Type was read.
    content_type: Option<(String, String)>,
    boundary: Boundary,
    /// base64 or quoted-printable (`Some(None)`: it cannot be told).
    encoding: Option<Option<Encoding>>,
}

enum Boundary {
    None,
    Some(Vec<u8>),
    Unreadable,
}

#[derive(Clone, Copy)]
enum Encoding {
    Base64,
    QuotedPrintable,
}

/// The scan's budget of bytes is spent: see [`CutReason::Cost`].
struct Spent;

struct Scanner {
    /// Bytes the boundary searches may still look at.
    budget: usize,
    midline: Option<usize>,
    max_depth: usize,
}

impl Scanner {
    /// Scans `data` (the raw mail, or the decoded body of an encoded
    /// message `encoded` levels down) with `base` levels open around it.
    /// Returns where to cut `data`. Recursion is bounded by
    /// [`MAX_ENCODED`], whatever the mail holds.
    fn run(
        &mut self,
        data: &[u8],
        base: usize,
        encoded: usize,
        top: bool,
    ) -> Option<(usize, CutReason)> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut pos = 0;
        loop {
            let (header, body) = entity_header(data, pos)?;
            let (in_digest, boundary) = match stack.last() {
                Some(f) => (f.multipart && f.digest, f.boundary.clone()),
                None => (false, None),
            };
            let depth = base + stack.len();
            let (ctype, subtype) = match &header.content_type {
                Some((t, s)) => (t.as_str(), s.as_str()),
                None => ("", ""),
            };
            if ctype == "multipart" {
                match header.boundary {
                    Boundary::Unreadable => return Some((body, CutReason::Unreadable)),
                    Boundary::Some(b) => {
                        if b.len() > MAX_BOUNDARY {
                            return Some((body, CutReason::Unreadable));
                        }
                        // mail-parser opens the level only when the
                        // boundary appears.
                        match self.find(data, body, &b, top) {
                            Ok(Some(after)) => {
                                if depth + 1 > MAX_NESTING {
                                    return Some((body, CutReason::Nesting));
                                }
                                self.max_depth = self.max_depth.max(depth + 1);
                                stack.push(Frame {
                                    multipart: true,
                                    digest: subtype == "digest",
                                    boundary: Some(b),
                                });
                                pos = skip_crlf(data, after);
                                continue;
                            }
                            Ok(None) => {}
                            Err(Spent) => return Some((body, CutReason::Cost)),
                        }
                    }
                    Boundary::None => {}
                }
            }
            let message = (ctype == "message" && (subtype == "rfc822" || subtype == "global"))
                || (in_digest && header.content_type.is_none());
            if message {
                // An encoded message is parsed again from its decoded
                // body, and is a leaf here; an unencoded one goes on in
                // place.
                if let Some(enc) = header.encoding {
                    let Some(enc) = enc else {
                        return Some((body, CutReason::Unreadable));
                    };
                    let end = match &boundary {
                        None => data.len(),
                        Some(b) => match self.find(data, body, b, false) {
                            Ok(Some(after)) => after - b.len() - 2,
                            Ok(None) => data.len(),
                            Err(Spent) => return Some((body, CutReason::Cost)),
                        },
                    };
                    if let Some(cut) = self.encoded(data, body, end, enc, depth, encoded) {
                        return Some(cut);
                    }
                } else {
                    if depth + 1 > MAX_NESTING {
                        return Some((body, CutReason::Nesting));
                    }
                    self.max_depth = self.max_depth.max(depth + 1);
                    stack.push(Frame {
                        multipart: false,
                        digest: false,
                        boundary,
                    });
                    pos = body;
                    continue;
                }
            }
            // A leaf: it runs to the innermost boundary.
            let Some(b) = boundary else {
                // Up to the end of `data`.
                return None;
            };
            let mut after = match self.find(data, body, &b, top) {
                Ok(Some(after)) => after,
                // The leaf runs to the end: nothing more opens.
                Ok(None) => return None,
                Err(Spent) => return Some((body, CutReason::Cost)),
            };
            // Close what ends at this boundary, as mail-parser does: one
            // nested message, then the multipart if the boundary closes it,
            // and again at the enclosing boundary. Closing more here would
            // undercount what the parser keeps open.
            loop {
                if stack.last().is_some_and(|f| !f.multipart) {
                    stack.pop();
                }
                if data.get(after..after + 2) != Some(b"--") {
                    pos = skip_crlf(data, after);
                    break;
                }
                stack.pop();
                let parent = stack.last().and_then(|f| f.boundary.clone());
                let pb = parent?;
                match self.find(data, after + 2, &pb, top) {
                    Ok(Some(next)) => after = next,
                    Ok(None) => return None,
                    Err(Spent) => return Some((after + 2, CutReason::Cost)),
                }
            }
        }
    }

    /// Scans the decoded body of an encoded message: it counts as one
    /// level here, and its own levels on top. A cut inside it cuts here,
    /// at its start.
    fn encoded(
        &mut self,
        data: &[u8],
        body: usize,
        end: usize,
        encoding: Encoding,
        depth: usize,
        encoded: usize,
    ) -> Option<(usize, CutReason)> {
        if encoded >= MAX_ENCODED {
            return None;
        }
        if depth + 1 > MAX_NESTING {
            return Some((body, CutReason::Nesting));
        }
        let raw = data.get(body..end).unwrap_or_default();
        let decoded = match encoding {
            Encoding::Base64 => decode_base64(raw),
            Encoding::QuotedPrintable => decode_qp(raw),
        };
        self.budget = self.budget.saturating_sub(raw.len());
        self.max_depth = self.max_depth.max(depth + 1);
        self.run(&decoded, depth + 1, encoded + 1, false)
            .map(|(_, why)| (body, why))
    }

    /// Where `--boundary` first appears at or after `from`, as mail-parser
    /// looks for it (anywhere in a line, as a prefix): the position after
    /// it.
    fn find(
        &mut self,
        data: &[u8],
        from: usize,
        boundary: &[u8],
        top: bool,
    ) -> Result<Option<usize>, Spent> {
        let rest = data.get(from..).unwrap_or_default();
        let mut i = 0;
        while i + 1 < rest.len() {
            if rest[i] == b'-' && rest[i + 1] == b'-' && rest[i + 2..].starts_with(boundary) {
                self.spend(i + 2 + boundary.len())?;
                let at = from + i;
                if top && self.midline.is_none() && at > 0 && data[at - 1] != b'\n' {
                    self.midline = Some(at);
                }
                return Ok(Some(at + 2 + boundary.len()));
            }
            // A run of dashes: the next pair starts one further on.
            i += if rest[i + 1] == b'-' { 1 } else { 2 };
        }
        self.spend(rest.len())?;
        Ok(None)
    }

    fn spend(&mut self, bytes: usize) -> Result<(), Spent> {
        self.budget = self.budget.checked_sub(bytes).ok_or(Spent)?;
        Ok(())
    }
}

/// After a boundary: the rest of its line (spaces, CR) and the newline.
fn skip_crlf(data: &[u8], mut pos: usize) -> usize {
    while let Some(&c) = data.get(pos) {
        match c {
            b'\r' | b' ' | b'\t' => pos += 1,
            b'\n' => return pos + 1,
            _ => return pos,
        }
    }
    pos
}

/// Reads the header block starting at `pos` the way mail-parser does: a
/// field name is what precedes a colon (spaces ignored), a line starting
/// with a space or tab continues the field before it, a line of nothing
/// but white space ends the block. `None` when the data ends first (the
/// parser then stops).
fn entity_header(data: &[u8], mut pos: usize) -> Option<(EntityHeader, usize)> {
    let mut content_type: Option<Vec<u8>> = None;
    let mut encoding: Option<Vec<u8>> = None;
    loop {
        // A field start: skip white space; a newline ends the block.
        loop {
            match data.get(pos) {
                None => return None,
                Some(b'\n') => {
                    pos += 1;
                    let header = EntityHeader::read(content_type.as_deref(), encoding.as_deref());
                    return Some((header, pos));
                }
                Some(c) if c.is_ascii_whitespace() => pos += 1,
                Some(_) => break,
            }
        }
        let next = line_end(data, pos);
        let line = &data[pos..next];
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            // No field name: the parser skips the line.
            pos = next;
            continue;
        };
        let name: Vec<u8> = line[..colon]
            .iter()
            .filter(|c| !c.is_ascii_whitespace())
            .map(u8::to_ascii_lowercase)
            .collect();
        let mut value = line[colon + 1..].to_vec();
        pos = next;
        // Continuation lines.
        while matches!(data.get(pos), Some(b' ' | b'\t')) {
            let end = line_end(data, pos);
            value.push(b' ');
            value.extend_from_slice(&data[pos..end]);
            pos = end;
        }
        // The last of each is the one mail-parser reads.
        match name.as_slice() {
            b"content-type" => content_type = Some(value),
            b"content-transfer-encoding" => encoding = Some(value),
            _ => {}
        }
    }
}

/// The position after the newline ending the line at `pos` (or the end).
fn line_end(data: &[u8], pos: usize) -> usize {
    data[pos..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(data.len(), |i| pos + i + 1)
}

impl EntityHeader {
    fn read(content_type: Option<&[u8]>, encoding: Option<&[u8]>) -> EntityHeader {
        // The parser decodes only these two; but it also decodes encoded
        // words in the header, so one there leaves it open which.
        let encoding = encoding.and_then(|e| {
            let e = String::from_utf8_lossy(e).trim().to_ascii_lowercase();
            match e.as_str() {
                "base64" => Some(Some(Encoding::Base64)),
                "quoted-printable" => Some(Some(Encoding::QuotedPrintable)),
                e if e.contains("=?") => Some(None),
                _ => None,
            }
        });
        let Some(ct) = content_type else {
            return EntityHeader {
                content_type: None,
                boundary: Boundary::None,
                encoding,
            };
        };
        let text = without_comments(&String::from_utf8_lossy(ct));
        let (kind, params) = text.split_once(';').unwrap_or((&text, ""));
        let parsed = kind.split_once('/').map(|(t, s)| {
            (
                t.trim().to_ascii_lowercase(),
                s.trim()
                    .split(|c: char| c.is_whitespace() || c == '(')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            )
        });
        let boundary = match &parsed {
            Some((t, _)) if t == "multipart" => boundary_param(params),
            _ => Boundary::None,
        };
        EntityHeader {
            // A Content-Type the parser cannot read counts as none (so a
            // part of a digest becomes a message).
            content_type: parsed.filter(|(t, s)| !t.is_empty() && !s.is_empty()),
            boundary,
            encoding,
        }
    }
}

/// `value` without its (nested) comments; quoted strings are kept as
/// they are.
fn without_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The `boundary` parameter: a token or a quoted string. Written any other
/// way (RFC 2231, given twice) it is unreadable: the parser may still find
/// one.
fn boundary_param(params: &str) -> Boundary {
    let mut found = None;
    for param in split_params(params) {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if !name.starts_with("boundary") {
            continue;
        }
        if name != "boundary" || found.is_some() {
            return Boundary::Unreadable;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => match quoted.strip_suffix('"') {
                Some(inner) if !inner.contains(['"', '\\']) => inner,
                _ => return Boundary::Unreadable,
            },
            None => value,
        };
        if value.is_empty() || value.contains(char::is_whitespace) && !param.contains('"') {
            return Boundary::Unreadable;
        }
        found = Some(value.as_bytes().to_vec());
    }
    found.map_or(Boundary::None, Boundary::Some)
}

/// `a=b; c="d;e"` split at the semicolons outside quotes.
fn split_params(params: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&params[start..]);
    out
}

/// Lenient base64: whatever is not of the alphabet is skipped.
fn decode_base64(raw: &[u8]) -> Vec<u8> {
    let mut clean: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(&clean).unwrap_or_default()
}

fn decode_qp(raw: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'=' {
            match (raw.get(i + 1), raw.get(i + 2)) {
                (Some(b'\r'), Some(b'\n')) => {
                    i += 3;
                    continue;
                }
                (Some(b'\n'), _) => {
                    i += 2;
                    continue;
                }
                (Some(&a), Some(&b)) => {
                    if let (Some(a), Some(b)) = (hex(a), hex(b)) {
                        out.push(a << 4 | b);
                        i += 3;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// `levels` message/rfc822 parts, each inside the one before: the shape
/// whose parse tree once overflowed the stack when dropped.
#[cfg(test)]
pub(crate) fn nested_messages(levels: usize) -> Vec<u8> {
    let mut raw = b"From: a@example.net\r\nSubject: deep\r\nMessage-ID: <deep@x>\r\n".to_vec();
    for _ in 0..levels {
        raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
    }
    raw.extend_from_slice(b"From: b@example.net\r\nSubject: bottom\r\n\r\nbottom text\r\n");
    raw
}

#[cfg(test)]
mod tests;
