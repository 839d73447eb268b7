//! How a mail names the ticket it belongs to: the Message-IDs it answers,
//! the token hidden in our own Message-IDs, the subject tag; and who counts
//! as a participant of a ticket. No database here: the store looks the
//! candidates up.

use rand::Rng;

use super::ParsedMail;

/// The most Message-IDs of one mail that are looked up: In-Reply-To and
/// the newest References. A thread's ticket is named by its latest mails;
/// without a bound, a mail with thousands of References would exceed
/// SQLite's bound values and stall its mailbox.
pub const MAX_REFERENCED: usize = 50;

/// The Message-IDs the mail answers, most telling first: In-Reply-To,
/// then References from the newest back; at most [`MAX_REFERENCED`].
pub fn referenced_ids(mail: &ParsedMail) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let in_reply_to = mail.in_reply_to.iter().flat_map(|s| s.split_whitespace());
    let references = mail
        .references
        .iter()
        .flat_map(|s| s.split_whitespace().rev());
    for id in in_reply_to.chain(references) {
        let id = id.trim_matches(|c| c == '<' || c == '>');
        if !id.is_empty() && seen.insert(id) {
            ids.push(id.to_string());
            if ids.len() == MAX_REFERENCED {
                break;
            }
        }
    }
    ids
}

/// Prefix of the Message-IDs we send.
const OURS: &str = "m2t.";

/// A Message-ID for a mail we send (without angle brackets):
/// `m2t.<token>.<random>@<domain>`, or `m2t.<random>@<domain>` when no
/// token is to be hidden in it.
pub fn outbound_message_id(domain: &str, token: Option<&str>) -> String {
    let random: u64 = rand::rng().random();
    match token {
        Some(token) => format!("{OURS}{token}.{random:016x}@{domain}"),
        None => format!("{OURS}{random:016x}@{domain}"),
    }
}

/// The ticket token hidden in one of our Message-IDs, if `id` is one.
pub fn token_of(id: &str) -> Option<&str> {
    let local = id.split_once('@')?.0.strip_prefix(OURS)?;
    let (token, random) = local.split_once('.')?;
    let hex = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(token) && hex(random)).then_some(token)
}

/// A new ticket's token: 64 random bits, hex.
pub fn new_token() -> String {
    let token: u64 = rand::rng().random();
    format!("{token:016x}")
}

/// Whether the subject marks a forward, in the languages Outlook and
/// Gmail write it: a forward can carry someone else's ticket.
///
/// Linear in the subject: each prefix is compared on its own bytes (the
/// rest is never lower-cased again), and at most [`MAX_PREFIXES`] reply
/// prefixes are skipped.
pub fn is_forward(subject: &str) -> bool {
    const FORWARD: [&str; 8] = ["fwd:", "fw:", "wg:", "tr:", "rv:", "doorst:", "vs:", "i:"];
    const REPLY: [&str; 5] = ["re:", "aw:", "sv:", "antw:", "réf:"];
    let mut rest = subject.trim_start();
    // Past any reply prefixes, e.g. "Re: Fwd: ...".
    for _ in 0..MAX_PREFIXES {
        if FORWARD.iter().any(|p| starts_with_lower(rest, p)) {
            return true;
        }
        match REPLY.iter().find(|p| starts_with_lower(rest, p)) {
            Some(p) => rest = rest[p.len()..].trim_start(),
            None => return false,
        }
    }
    false
}

/// The most reply prefixes [`is_forward`] looks past: no client writes
/// more, and a subject made of nothing else is no forward.
pub const MAX_PREFIXES: usize = 1000;

/// Whether `text` starts with `prefix` (lower-case), ignoring case; only
/// the prefix's own bytes are looked at.
fn starts_with_lower(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.to_lowercase() == prefix)
}

/// The mail addresses in an address list as the store keeps it
/// (`Name <a@example.com>, b@example.com`), lower-case.
pub fn addresses_in(list: &str) -> Vec<String> {
    list.split(',')
        .filter_map(|item| {
            let item = item.trim();
            let addr = match (item.rfind('<'), item.rfind('>')) {
                (Some(start), Some(end)) if start < end => &item[start + 1..end],
                _ => item,
            };
            let addr = addr.trim();
            addr.contains('@').then(|| addr.to_ascii_lowercase())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse;

    #[test]
    fn references_newest_first_without_repeats() {
        let mail = parse(
            b"From: a@x\r\nIn-Reply-To: <c@x>\r\nReferences: <a@x> <b@x>\r\n <c@x>\r\nSubject: s\r\n\r\nbody",
        );
        assert_eq!(referenced_ids(&mail), ["c@x", "b@x", "a@x"]);
    }

    #[test]
    fn our_ids_carry_the_token() {
        let id = outbound_message_id("contoso.com", Some("0123456789abcdef"));
        assert!(id.starts_with("m2t.0123456789abcdef."), "{id}");
        assert!(id.ends_with("@contoso.com"));
        assert_eq!(token_of(&id), Some("0123456789abcdef"));
        let plain = outbound_message_id("contoso.com", None);
        assert_eq!(token_of(&plain), None);
        assert_eq!(token_of("m2t.nothex.0123456789abcdef@x"), None);
        assert_eq!(token_of("CAF=abc@mail.gmail.com"), None);
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn forwards_in_several_languages() {
        for s in [
            "Fwd: x",
            "FW: x",
            "WG: x",
            "TR: x",
            "Re: Fwd: x",
            "AW: WG: x",
            "RV: x",
        ] {
            assert!(is_forward(s), "{s}");
        }
        for s in [
            "Re: x",
            "Printer",
            "Forward planning",
            "AW: Frage",
            "Invoice: x",
        ] {
            assert!(!is_forward(s), "{s}");
        }
    }

    #[test]
    fn forward_prefixes_are_read_in_linear_time() {
        // Quadratic before: every prefix lower-cased the whole rest again.
        let replies = "Re: ".repeat((3 << 20) / 4);
        assert!(!is_forward(&format!("{replies}x")));
        assert!(is_forward(&format!("Fwd: {replies}x")));
        let few = "RE: Aw: ".repeat(10);
        assert!(is_forward(&format!("{few}FWD: x")));
        assert!(is_forward("Réf: TR: x"));
        assert!(is_forward("RÉF: fw: x"));
        let many = "Re: ".repeat(MAX_PREFIXES);
        assert!(!is_forward(&format!("{many}Fwd: x")), "past the bound");
    }

    #[test]
    fn address_lists() {
        assert_eq!(
            addresses_in("Ann <Ann@X.org>, bob@y.org, \"Doe, Jane\" <jane@z.org>, undisclosed"),
            ["ann@x.org", "bob@y.org", "jane@z.org"]
        );
    }

    #[test]
    fn a_huge_references_header_is_bounded() {
        let refs: Vec<String> = (0..17_000).map(|i| format!("<r{i}@x>")).collect();
        let raw = format!(
            "From: a@x\r\nIn-Reply-To: <r16999@x>\r\nReferences: {}\r\nSubject: s\r\n\r\nbody",
            refs.join("\r\n ")
        );
        let ids = referenced_ids(&parse(raw.as_bytes()));
        assert_eq!(ids.len(), MAX_REFERENCED);
        assert_eq!(ids[0], "r16999@x");
        assert_eq!(ids[1], "r16998@x", "the newest references, not the oldest");
    }
}
