//! Microsoft Graph's own failures, worded for `last_error`: what Graph
//! answered (its error code and message, scrubbed), what it means for the
//! admin (a policy to grant, a mailbox to license, a folder to create),
//! and which class of failure it is.
//!
//! Graph's error body is `{"error":{"code":"…","message":"…"}}`; the code
//! decides, the message is quoted. Nothing here ever holds the bearer
//! token: server text is cut free of it ([`crate::scrub::Scrubber`]) before
//! it becomes part of an error.

use std::time::Duration;

use crate::outcome::FailureClass;
use crate::transport::ConnectError;

/// The Exchange Online commands that let an app-only token into a mailbox:
/// RBAC for Applications (which Microsoft has replaced Application Access
/// Policies with), and the older policy for tenants that still use one.
pub const GRANT_APP_ACCESS: &str = "grant the app access to this mailbox in Exchange Online \
     PowerShell: New-ServicePrincipal -AppId <app id> -ObjectId <enterprise app object id>, then \
     New-ManagementRoleAssignment -App <app id> -Role \"Application Mail.ReadWrite\" \
     -CustomResourceScope <a New-ManagementScope that contains the mailbox> (RBAC for Applications); where an \
     ApplicationAccessPolicy restricts the app instead, add the mailbox to the group named by \
     its -PolicyScopeGroupId (New-ApplicationAccessPolicy -AppId <app id> -PolicyScopeGroupId \
     <group> -AccessRight RestrictAccess)";

/// A token the reader's token source could not produce. The source sorts
/// its own failure (`class`): the client only passes it on.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct TokenUnavailable {
    /// What went wrong, already free of secrets.
    pub text: String,
    pub class: FailureClass,
    /// Only the configuration can fix it (a missing consent, a bad app).
    pub misconfigured: bool,
    /// The identity provider refused the credential (sign in again).
    pub auth_rejected: bool,
}

/// What only Microsoft Graph fails at; the store, parser and SMTP errors
/// stay [`crate::source::SourceError`]'s.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The TLS setup (a `ca_file` that cannot be read) or the HTTP client.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("Graph URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    /// The token source failed; its words.
    #[error("no access token for Microsoft Graph: {0}")]
    Token(#[from] TokenUnavailable),
    /// Entra refused the token because the app's Microsoft Graph
    /// permissions were never consented (AADSTS65001, 65004): signing in
    /// again cannot help until someone grants them.
    #[error(
        "Microsoft Graph permissions of the app are not consented ({detail}); {}",
        consent_hint(*.app_only, *.send)
    )]
    ConsentMissing {
        detail: String,
        app_only: bool,
        /// Acknowledgements go over Graph too (`Mail.Send`).
        send: bool,
    },
    /// 401 even with a freshly obtained token.
    #[error(
        "authentication failed: Microsoft Graph refused the access token for {mailbox} \
         even after a new one was obtained ({message}){}",
        audience_hint(.message)
    )]
    TokenRefused { mailbox: String, message: String },
    /// 403 "Access to OData is disabled" / an ApplicationAccessPolicy:
    /// the tenant keeps this app-only token out of the mailbox.
    #[error(
        "Microsoft Graph denied the app access to mailbox {mailbox} ({message}); {GRANT_APP_ACCESS}"
    )]
    AppAccessBlocked { mailbox: String, message: String },
    /// 403 `ErrorAccessDenied` otherwise.
    #[error("Microsoft Graph denied access to mailbox {mailbox} ({message}); {}", access_hint(*.app_only))]
    AccessDenied {
        mailbox: String,
        message: String,
        app_only: bool,
    },
    /// `MailboxNotEnabledForRESTAPI`, `ErrorInvalidUser`, `ResourceNotFound`.
    #[error(
        "Microsoft Graph cannot open mailbox {mailbox}: {code} ({message}); check `username`: \
         it must be the UPN or SMTP address of an Exchange Online mailbox with a license \
         (not on-premises, not soft-deleted)"
    )]
    MailboxUnusable {
        mailbox: String,
        code: String,
        message: String,
    },
    /// A folder path with a part that does not exist.
    #[error("folder {path:?} does not exist in mailbox {mailbox}: no folder {missing:?}{}", parent_of(.parent))]
    NoFolder {
        mailbox: String,
        path: String,
        missing: String,
        parent: Option<String>,
    },
    /// A move whose destination is not there (the message is).
    #[error(
        "the folder {folder:?} to move mail to does not exist in mailbox {mailbox}; \
         create it or fix `after`"
    )]
    NoMoveTarget { mailbox: String, folder: String },
    /// The delta link is no longer valid (410 `SyncStateNotFound`, an
    /// invalid sync state): forget it and sync the folder in full.
    #[error(
        "Microsoft Graph no longer knows the delta state of folder {folder} ({code}); \
         the folder is synced in full again"
    )]
    DeltaExpired { folder: String, code: String },
    /// The message is not in the mailbox (404 `ErrorItemNotFound`), e.g.
    /// deleted between listing and fetching it.
    #[error("message {id} is no longer in mailbox {mailbox}")]
    MessageGone { mailbox: String, id: String },
    /// 429 (or 503 with a wait) past the retry budget, or a wait longer
    /// than the client may sleep: the caller waits `retry_after`.
    #[error("throttled by Microsoft Graph, retrying in {}s ({step})", .retry_after.as_secs())]
    Throttled {
        step: &'static str,
        retry_after: Duration,
    },
    /// 5xx after every retry.
    #[error(
        "Microsoft Graph answered HTTP {status} to {step} {attempts} times ({detail}); retried with backoff"
    )]
    Unavailable {
        step: &'static str,
        status: u16,
        attempts: u32,
        detail: String,
    },
    #[error("Microsoft Graph did not answer {step} within {}s ({attempts} attempts)", .after.as_secs())]
    Timeout {
        step: &'static str,
        after: Duration,
        attempts: u32,
    },
    /// The connection broke, or could not be made, under a request.
    #[error(
        "the connection to Microsoft Graph was lost during {step} ({attempts} attempts): {detail}"
    )]
    ConnectionLost {
        step: &'static str,
        attempts: u32,
        detail: String,
    },
    /// sendMail's connection broke after the request went out: Graph may
    /// have sent the mail. Not retried here (a retry could send it twice).
    #[error(
        "the connection to Microsoft Graph broke during sendMail after the request was sent \
         ({detail}); the mail may or may not have been sent"
    )]
    SendUncertain { detail: String },
    /// Any other refusal, in Graph's words.
    #[error("Microsoft Graph refused {step}: HTTP {status} {code} ({message})")]
    Refused {
        step: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that is not what Graph sends.
    #[error("Microsoft Graph's answer to {step} is not understood: {detail}")]
    BadAnswer { step: &'static str, detail: String },
}

fn audience_hint(message: &str) -> &'static str {
    if message.to_ascii_lowercase().contains("audience") {
        "; the token is for another resource: a Graph reader needs a token for \
         https://graph.microsoft.com (delegated Mail.ReadWrite, or .default for app-only)"
    } else {
        "; sign in again (mail2ticket authorize) or check the app registration"
    }
}

fn access_hint(app_only: bool) -> &'static str {
    if app_only {
        "grant the app the application permission Mail.ReadWrite (Mail.Send to send) on \
         Microsoft Graph with admin consent"
    } else {
        "a delegated token opens only the signed-in user's own mailbox (sign in as that user, or \
         read a shared mailbox with grant = \"client_credentials\"), and the app needs the \
         delegated permission Mail.ReadWrite (Mail.Send to send) consented"
    }
}

fn consent_hint(app_only: bool, send: bool) -> String {
    let (kind, permissions) = match (app_only, send) {
        (true, false) => ("application", "Mail.ReadWrite"),
        (true, true) => ("application", "Mail.ReadWrite and Mail.Send"),
        (false, false) => ("delegated", "Mail.ReadWrite and offline_access"),
        (false, true) => ("delegated", "Mail.ReadWrite, Mail.Send and offline_access"),
    };
    format!(
        "in the Entra admin center open App registrations > the app > API permissions, add the \
         Microsoft Graph {kind} permissions {permissions}, and choose \"Grant admin consent\""
    )
}

fn parent_of(parent: &Option<String>) -> String {
    match parent {
        Some(p) => format!(" under {p:?}"),
        None => " at the top of the mailbox".to_owned(),
    }
}

impl GraphError {
    pub fn class(&self) -> FailureClass {
        match self {
            GraphError::Connect(e) => e.class(),
            GraphError::Token(t) => t.class,
            GraphError::TokenRefused { .. } => FailureClass::Auth,
            GraphError::BadUrl { .. }
            | GraphError::ConsentMissing { .. }
            | GraphError::AppAccessBlocked { .. }
            | GraphError::AccessDenied { .. }
            | GraphError::MailboxUnusable { .. }
            | GraphError::NoFolder { .. }
            | GraphError::NoMoveTarget { .. } => FailureClass::Config,
            GraphError::Throttled { .. }
            | GraphError::Unavailable { .. }
            | GraphError::Timeout { .. }
            | GraphError::ConnectionLost { .. }
            | GraphError::SendUncertain { .. } => FailureClass::Connection,
            GraphError::DeltaExpired { .. }
            | GraphError::MessageGone { .. }
            | GraphError::Refused { .. }
            | GraphError::BadAnswer { .. } => FailureClass::Protocol,
        }
    }

    /// Only the configuration (or the tenant's setup) can fix it.
    pub fn is_misconfigured(&self) -> bool {
        match self {
            GraphError::Token(t) => t.misconfigured,
            other => other.class() == FailureClass::Config,
        }
    }

    /// Graph (or the identity provider behind the token source) refused
    /// the credential: the cached token is of no use.
    pub fn is_auth_rejected(&self) -> bool {
        match self {
            GraphError::Token(t) => t.auth_rejected,
            GraphError::TokenRefused { .. } => true,
            _ => false,
        }
    }

    /// The delta link must be forgotten and the folder synced in full.
    pub fn is_resync(&self) -> bool {
        matches!(self, GraphError::DeltaExpired { .. })
    }

    /// How long Graph asked to be left alone, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Graph's error body.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub(super) error: ErrorDetail,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct ErrorDetail {
    #[serde(default)]
    pub(super) code: String,
    #[serde(default)]
    pub(super) message: String,
}

/// The longest piece of server text kept in an error.
const MAX_TEXT: usize = 300;

/// Graph's code and message of an error answer (printable, cut short, free
/// of `secret`); a body that is not Graph's gives its first bytes.
pub(super) fn error_words(body: &[u8], scrub: &crate::scrub::Scrubber) -> (String, String) {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) if !b.error.code.is_empty() || !b.error.message.is_empty() => {
            (b.error.code, b.error.message)
        }
        _ => (String::new(), String::from_utf8_lossy(body).into_owned()),
    };
    (short(&scrub.clean(&code)), short(&scrub.clean(&message)))
}

fn short(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Whether a 403's message is the tenant's app-only access policy.
pub(super) fn is_app_policy(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("access to odata is disabled")
        || m.contains("applicationaccesspolicy")
        || m.contains("accesspolicy")
        || m.contains("[raop]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrub::Scrubber;

    #[test]
    fn graph_error_bodies_are_read_and_scrubbed() {
        let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secretpart";
        let body = format!(
            r#"{{"error":{{"code":"ErrorAccessDenied","message":"denied for {token}\u001b[31m"}}}}"#
        );
        let (code, message) = error_words(body.as_bytes(), &Scrubber::new([token]));
        assert_eq!(code, "ErrorAccessDenied");
        assert_eq!(message, "denied for [redacted]?[31m");
    }

    #[test]
    fn a_body_that_is_not_graphs_is_quoted_short() {
        let body = "x".repeat(1000);
        let (code, message) = error_words(body.as_bytes(), &Scrubber::default());
        assert_eq!(code, "");
        assert_eq!(message.chars().count(), MAX_TEXT + 1);
    }

    #[test]
    fn classes_and_predicates() {
        let blocked = GraphError::AppAccessBlocked {
            mailbox: "a@b".into(),
            message: "Access to OData is disabled".into(),
        };
        assert!(blocked.is_misconfigured());
        assert!(!blocked.is_auth_rejected());
        assert!(blocked.to_string().contains("New-ManagementRoleAssignment"));
        let refused = GraphError::TokenRefused {
            mailbox: "a@b".into(),
            message: "Lifetime validation failed".into(),
        };
        assert_eq!(refused.class(), FailureClass::Auth);
        assert!(refused.is_auth_rejected());
        let throttled = GraphError::Throttled {
            step: "delta",
            retry_after: Duration::from_secs(7),
        };
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
        assert!(
            throttled
                .to_string()
                .starts_with("throttled by Microsoft Graph, retrying in 7s")
        );
        assert!(is_app_policy(
            "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
        ));
        assert!(!is_app_policy(
            "Access is denied. Check credentials and try again."
        ));
    }
}
