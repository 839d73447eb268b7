//! What other stand-ins (the Microsoft Graph one) may ask the IdP about the
//! access tokens it issued, in process and without HTTP: whose token it is,
//! for which scope and audience, whether it has expired, and which mailboxes
//! an app-only token may open. A resource server of Microsoft's validates a
//! JWT itself; ours are opaque, so the IdP is the only one that can say.

use super::*;

/// Who an access token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSubject {
    /// A delegated token of this user (canonical username, as added).
    User(String),
    /// An app-only (client credentials) token.
    App,
}

/// What the IdP knows about one access token it issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessTokenInfo {
    pub subject: TokenSubject,
    /// The scope granted, as in the token response (`…/.default` for app
    /// tokens; without openid/profile/email/offline_access).
    pub scope: String,
    /// The audience: the resource the scope names, normalised
    /// (`https://graph.microsoft.com`, `https://outlook.office.com` for both
    /// Outlook hosts, …); Graph for bare permission names.
    pub audience: String,
    /// Past its lifetime or ended by [`IdP::revoke_access_tokens`].
    pub expired: bool,
}

impl AccessTokenInfo {
    /// Whether the scope holds `permission` (e.g. `Mail.Send`) for its
    /// audience, bare or resource-qualified, case-insensitively. `.default`
    /// holds every permission (consent is assumed granted).
    pub fn has_permission(&self, permission: &str) -> bool {
        self.scope.split_whitespace().any(|s| {
            let name = s.rsplit_once('/').map_or(s, |(_, p)| p);
            name.eq_ignore_ascii_case(permission) || name.eq_ignore_ascii_case(".default")
        })
    }
}

/// A cheap, cloneable handle on the IdP's token state for other stand-ins
/// running on their own threads. It keeps the state alive after the
/// [`IdP`] is dropped (the tokens then simply stay as they were).
#[derive(Clone)]
pub struct IdpLookup {
    shared: Arc<Shared>,
}

impl IdpLookup {
    pub(crate) fn new(shared: Arc<Shared>) -> IdpLookup {
        IdpLookup { shared }
    }

    /// What the IdP knows about `token`; `None` if it never issued it.
    pub fn access_token_info(&self, token: &str) -> Option<AccessTokenInfo> {
        let st = self.shared.lock();
        let at = st.access_tokens.get(token)?;
        Some(AccessTokenInfo {
            subject: match &at.subject {
                Subject::User(u) => TokenSubject::User(u.clone()),
                Subject::App => TokenSubject::App,
            },
            scope: at.scope.clone(),
            audience: audience_of_scope(&at.scope),
            expired: at.expires_at <= Instant::now(),
        })
    }

    /// Whether app-only tokens may open `mailbox` (granted with
    /// [`IdP::grant_app_access`]; addresses compare case-insensitively).
    pub fn app_may_open(&self, mailbox: &str) -> bool {
        self.shared
            .lock()
            .app_grants
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mailbox))
    }

    /// `{url}/{tenant}/oauth2/v2.0/authorize`, for `WWW-Authenticate`.
    pub fn authorize_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/authorize",
            self.shared.url, self.shared.tenant
        )
    }
}

/// The audience (normalised resource) Entra would give a token for `scope`;
/// see [`AccessTokenInfo::audience`].
pub fn scope_audience(scope: &str) -> String {
    audience_of_scope(scope)
}
