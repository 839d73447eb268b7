//! What a mail server's refusal means, read from its response code (RFC
//! 5530 for IMAP, RFC 2449 and 3206 for POP3) and, without one, from the
//! few words servers are known to use instead.
//!
//! The one place that decides whether a NO / -ERR is the credential (drop
//! the token, or stop a password reader), the thing asked for not existing
//! (a configuration problem), or a passing server condition (a lock, a
//! connection limit, a server bug: retry with backoff, touch nothing).

/// A server's refusal: its response code, if it gave one, and its words
/// (already scrubbed of credentials by the protocol module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code without brackets or arguments, upper case (`LIMIT`,
    /// `SYS/TEMP`).
    pub code: Option<String>,
    /// The human-readable rest.
    pub text: String,
}

/// What a refusal means for the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The credential was refused (or expired).
    Credential,
    /// What was asked for does not exist.
    Nonexistent,
    /// A server condition that passes: in use, locked, over a limit,
    /// unavailable, broken for now. Retried with backoff; neither the
    /// token nor the configuration is at fault.
    Transient,
    /// A code that says something else (e.g. `CONTACTADMIN`, `SYS/PERM`):
    /// not the credential, not a missing folder; retried.
    Other,
    /// No code and no known words: the caller keeps its default reading.
    Unknown,
}

/// Codes that blame the credential: IMAP (RFC 5530) and POP3 (RFC 3206).
const CREDENTIAL: &[&str] = &[
    "AUTHENTICATIONFAILED",
    "AUTHORIZATIONFAILED",
    "EXPIRED",
    "AUTH",
];
/// Codes of passing server conditions.
const TRANSIENT: &[&str] = &[
    "UNAVAILABLE",
    "SERVERBUG",
    "LIMIT",
    "INUSE",
    "IN-USE",
    "OVERQUOTA",
    "SYS/TEMP",
    "LOGIN-DELAY",
];

impl Refusal {
    /// Splits `[CODE args] text` (the code is optional).
    pub fn parse(text: &str) -> Refusal {
        let trimmed = text.trim();
        if let Some(rest) = trimmed.strip_prefix('[')
            && let Some((inside, after)) = rest.split_once(']')
        {
            let name = inside.split_whitespace().next().unwrap_or("");
            if !name.is_empty() {
                return Refusal {
                    code: Some(name.to_ascii_uppercase()),
                    text: after.trim().to_string(),
                };
            }
        }
        Refusal {
            code: None,
            text: trimmed.to_string(),
        }
    }

    /// A refusal with a code the protocol parser already took apart.
    pub fn with_code(code: Option<String>, text: &str) -> Refusal {
        match code {
            Some(code) => Refusal {
                code: Some(code.to_ascii_uppercase()),
                text: text.trim().to_string(),
            },
            None => Refusal::parse(text),
        }
    }

    pub fn meaning(&self) -> Meaning {
        match self.code.as_deref() {
            Some(c) if CREDENTIAL.contains(&c) => Meaning::Credential,
            Some("NONEXISTENT") => Meaning::Nonexistent,
            Some(c) if TRANSIENT.contains(&c) => Meaning::Transient,
            Some(_) => Meaning::Other,
            None => {
                let words = self.text.to_ascii_lowercase();
                // Dovecot's "Mailbox is locked", and its kin without a code.
                if ["is locked", "in use", "try again later", "temporarily"]
                    .iter()
                    .any(|w| words.contains(w))
                {
                    Meaning::Transient
                } else {
                    Meaning::Unknown
                }
            }
        }
    }

    /// Whether this refusal blames the credential; without a code (or with
    /// only words), as servers without RFC 5530 answer, it does.
    pub fn blames_credential(&self) -> bool {
        matches!(self.meaning(), Meaning::Credential | Meaning::Unknown)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = if self.text.is_empty() {
            "(no text)"
        } else {
            &self.text
        };
        match &self.code {
            Some(code) => write!(f, "\"[{code}] {text}\""),
            None => write!(f, "\"{text}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide() {
        let r = Refusal::parse("[LIMIT] Maximum number of connections");
        assert_eq!(r.code.as_deref(), Some("LIMIT"));
        assert_eq!(r.text, "Maximum number of connections");
        assert_eq!(r.meaning(), Meaning::Transient);
        assert!(!r.blames_credential());
        assert!(Refusal::parse("[AUTHENTICATIONFAILED] Invalid credentials").blames_credential());
        assert!(Refusal::parse("Invalid credentials").blames_credential());
        assert!(!Refusal::parse("[CONTACTADMIN] ask").blames_credential());
        assert_eq!(
            Refusal::parse("[NONEXISTENT] Mailbox doesn't exist: X").meaning(),
            Meaning::Nonexistent
        );
        assert_eq!(
            Refusal::parse("Mailbox is locked").meaning(),
            Meaning::Transient
        );
        assert_eq!(
            Refusal::parse("[SYS/TEMP] busy").meaning(),
            Meaning::Transient
        );
        assert_eq!(
            Refusal::parse("[IN-USE] maildrop locked").meaning(),
            Meaning::Transient
        );
        assert_eq!(Refusal::parse("[AUTH] bad").meaning(), Meaning::Credential);
        assert_eq!(Refusal::parse("[SYS/PERM] gone").meaning(), Meaning::Other);
        assert_eq!(
            Refusal::parse("Folder X not found").meaning(),
            Meaning::Unknown
        );
    }

    #[test]
    fn shown_with_code_and_quotes() {
        assert_eq!(
            Refusal::parse("[INUSE] locked").to_string(),
            "\"[INUSE] locked\""
        );
        assert_eq!(Refusal::parse("").to_string(), "\"(no text)\"");
    }
}
