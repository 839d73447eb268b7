//! Server text made safe to keep: the one place that cuts credentials out
//! of what a mail or submission server said before it reaches a log,
//! `last_error` or the reader's history.
//!
//! A server may quote what it was sent (a careless one echoes the whole
//! AUTHENTICATE line; a log-minded one quotes it cut short), so removing
//! exact copies is not enough: any piece of a credential of
//! [`MIN_PIECE`] characters or more is cut out too, wherever it stands.
//! Control characters (an escape sequence, a bell) become `?`.

use secrecy::{ExposeSecret, SecretString};

/// Server text fit for a log line, `last_error` or the history: control
/// characters (an escape sequence, a bell, a stray CR) become `?`, so a
/// server cannot garble what an admin reads. The one quoting every
/// protocol (IMAP, POP3, SMTP) gives what its server said.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The shortest piece of a credential that is cut out. Shorter common
/// pieces are too likely to be ordinary words; no 16 characters of a token
/// or a blob say anything an attacker can use.
pub const MIN_PIECE: usize = 16;

/// What replaces each run of credential text.
const REDACTED: &str = "[redacted]";

/// The credentials of one login in every form they are sent in (the
/// secret itself, SASL blobs in base64, a quoted LOGIN argument).
#[derive(Clone, Default)]
pub struct Scrubber {
    secrets: Vec<SecretString>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Scrubber {
    /// A scrubber of `secrets` (empty ones are ignored).
    pub fn new<I, S>(secrets: I) -> Scrubber
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Scrubber {
            secrets: secrets
                .into_iter()
                .map(Into::into)
                .filter(|s: &String| !s.is_empty())
                .map(SecretString::from)
                .collect(),
        }
    }

    /// Adds a form the credential is sent in.
    pub fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if !secret.is_empty() {
            self.secrets.push(SecretString::from(secret));
        }
    }

    /// `text` with every credential, and every piece of one of at least
    /// [`MIN_PIECE`] bytes, replaced by `[redacted]`, and control
    /// characters by `?`.
    pub fn clean(&self, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        self.cut(&mut bytes);
        printable(&String::from_utf8_lossy(&bytes))
    }

    /// Cuts credentials out of raw bytes in place, as [`Scrubber::clean`]
    /// does, leaving control characters (the caller still parses them).
    pub fn cut(&self, bytes: &mut Vec<u8>) {
        let mut covered = vec![false; bytes.len()];
        let mut any = false;
        for secret in &self.secrets {
            let secret = secret.expose_secret().as_bytes();
            // A short secret (a short password) is cut out only whole.
            let piece = MIN_PIECE.min(secret.len());
            if bytes.len() < piece {
                continue;
            }
            let pieces: std::collections::HashSet<&[u8]> = secret.windows(piece).collect();
            for (at, window) in bytes.windows(piece).enumerate() {
                if pieces.contains(window) {
                    covered[at..at + piece].iter_mut().for_each(|c| *c = true);
                    any = true;
                }
            }
        }
        if !any {
            return;
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if covered[i] {
                out.extend_from_slice(REDACTED.as_bytes());
                while i < bytes.len() && covered[i] {
                    i += 1;
                }
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        *bytes = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "EwBwA8l6BAAUs5+HQn0N17Rt5Q7LvVyUbc4OyCMnE2cuAAEV2dEmB3ne";

    #[test]
    fn whole_and_cut_short_echoes_are_removed() {
        let s = Scrubber::new([TOKEN]);
        assert_eq!(
            s.clean(&format!("NO bad token {TOKEN} here")),
            "NO bad token [redacted] here"
        );
        // A prefix, a suffix and a middle piece, each 16 characters or more.
        for piece in [&TOKEN[..16], &TOKEN[20..], &TOKEN[5..30]] {
            let text = s.clean(&format!("NO [AUTHENTICATIONFAILED] got {piece}..."));
            assert_eq!(text, "NO [AUTHENTICATIONFAILED] got [redacted]...");
        }
        // 15 characters is not a piece.
        let short = &TOKEN[..15];
        assert_eq!(s.clean(short), short);
    }

    #[test]
    fn short_secrets_go_whole_and_control_characters_become_marks() {
        let s = Scrubber::new(["pw1", ""]);
        assert_eq!(s.clean("-ERR pw1 pw\x1b[31m"), "-ERR [redacted] pw?[31m");
        assert_eq!(Scrubber::default().clean("a\r\nb"), "a??b");
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = Scrubber::new([TOKEN]);
        assert!(!format!("{s:?}").contains(&TOKEN[..16]));
    }
}
