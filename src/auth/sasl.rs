//! The SASL messages every mail protocol sends a credential in: XOAUTH2
//! (a token) and PLAIN (a password), and reading the error challenge an
//! XOAUTH2 server answers a refused token with. IMAP, POP3 and SMTP each
//! frame them in their own commands; what goes inside is the same.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use secrecy::zeroize::Zeroizing;

/// The XOAUTH2 initial response, before base64:
/// `user=USER^Aauth=Bearer TOKEN^A^A`.
pub fn xoauth2(user: &str, token: &str) -> Zeroizing<String> {
    let mut payload = Zeroizing::new(String::with_capacity(
        user.len() + token.len() + "user=\x01auth=Bearer \x01\x01".len(),
    ));
    payload.push_str("user=");
    payload.push_str(user);
    payload.push_str("\x01auth=Bearer ");
    payload.push_str(token);
    payload.push_str("\x01\x01");
    payload
}

/// The PLAIN message (RFC 4616), before base64, with an empty
/// authorisation identity so that the server uses the user's own mailbox.
pub fn plain(user: &str, password: &str) -> Zeroizing<String> {
    let mut payload = Zeroizing::new(String::with_capacity(user.len() + password.len() + 2));
    payload.push('\0');
    payload.push_str(user);
    payload.push('\0');
    payload.push_str(password);
    payload
}

/// Servers differ on padding, and a challenge we cannot decode must not
/// hide the refusal that follows it.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes an XOAUTH2 error challenge (base64 JSON such as
/// `{"status":"401","schemes":"Bearer","scope":"…"}`) for an admin to read,
/// or `None` if it is not base64 text. Its status tells whether the token,
/// the scope or the mailbox is wrong. Scrubbed of `secrets` (a server could
/// echo the credential), without control characters, at most 300
/// characters.
pub fn decode_challenge(challenge: &str, secrets: &[&str]) -> Option<String> {
    let mut bytes = LENIENT_BASE64.decode(challenge.trim()).ok()?;
    scrub(&mut bytes, secrets);
    let text = std::str::from_utf8(&bytes).ok()?;
    let text = crate::scrub::printable(text.trim());
    if text.is_empty() {
        return None;
    }
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(300).collect();
    Some(if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    })
}

/// Cuts every secret, and every piece of one of 16 characters or more,
/// out of `bytes` (see [`crate::scrub`], which this is a shorthand for):
/// for server text that may quote what we sent, whole or cut short.
pub fn scrub(bytes: &mut Vec<u8>, secrets: &[&str]) {
    crate::scrub::Scrubber::new(secrets.iter().copied()).cut(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            xoauth2("a@b", "tok").as_str(),
            "user=a@b\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(plain("a@b", "pw").as_str(), "\0a@b\0pw");
    }

    #[test]
    fn scrub_replaces_every_occurrence() {
        let mut line = b"-ERR abc and abc, abcabc".to_vec();
        scrub(&mut line, &["", "abc", "absent"]);
        assert_eq!(
            String::from_utf8_lossy(&line),
            "-ERR [redacted] and [redacted], [redacted]"
        );
    }

    #[test]
    fn challenges_are_decoded_leniently_and_cleaned() {
        assert_eq!(
            decode_challenge("eyJzdGF0dXMiOiI0MDEifQ==", &[]).as_deref(),
            Some(r#"{"status":"401"}"#)
        );
        assert_eq!(
            decode_challenge("eyJzdGF0dXMiOiI0MDEifQ", &[]).as_deref(),
            Some(r#"{"status":"401"}"#)
        );
        // {"t":"SECRET"}
        assert_eq!(
            decode_challenge("eyJ0IjoiU0VDUkVUIn0=", &["SECRET"]).as_deref(),
            Some(r#"{"t":"[redacted]"}"#)
        );
        assert_eq!(decode_challenge("", &[]), None);
        assert_eq!(decode_challenge("%%%", &[]), None);
    }
}
