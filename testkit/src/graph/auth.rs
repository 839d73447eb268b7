//! Who may do what: the bearer token checked against the IdP stand-in
//! (present, issued, unexpired, for Graph and not Outlook), then the mailbox
//! (exists, REST-enabled, the token's own or granted), then the permission
//! the route needs. Each refusal in Graph's own status, code and words.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::Shared;
use super::responses::{RequestIds, graph_error};
use super::state::{GraphRoute, GraphState};
use crate::idp::{AccessTokenInfo, TokenSubject};

/// Exchange Online's answer when an ApplicationAccessPolicy (or RBAC for
/// applications) keeps an app-only token out of a mailbox.
pub const APP_ACCESS_DENIED: &str = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.";
/// Graph's answer to a token that may not open the resource.
pub const ACCESS_DENIED: &str = "Access is denied. Check credentials and try again.";

/// The bearer token of a request, if any (`Authorization: Bearer …`).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// 401 `InvalidAuthenticationToken` with the `WWW-Authenticate` challenge
/// Graph sends (authorization URI of the tenant, Graph's app id).
fn unauthorized(sh: &Shared, ids: &RequestIds, message: &str) -> Response {
    let mut resp = graph_error(
        ids,
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    );
    let challenge = format!(
        "Bearer realm=\"\", authorization_uri=\"{}\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        sh.idp.authorize_url()
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The token itself: 401 unless it is one the IdP issued, unexpired, for an
/// audience Graph accepts.
pub(crate) fn check_token(
    sh: &Shared,
    audiences: &[String],
    ids: &RequestIds,
    headers: &HeaderMap,
) -> Result<AccessTokenInfo, Box<Response>> {
    let Some(token) = bearer(headers) else {
        return Err(Box::new(unauthorized(sh, ids, "Access token is empty.")));
    };
    let Some(info) = sh.idp.access_token_info(&token) else {
        // Graph parses the JWT first; an opaque string fails right there.
        return Err(Box::new(unauthorized(
            sh,
            ids,
            "IDX14100: JWT is not well formed, there are no dots (.).\nThe token needs to be in JWS or JWE Compact Serialization Format. (JWS): 'EncodedHeader.EncodedPayload.EncodedSignature'. (JWE): 'EncodedProtectedHeader.EncodedEncryptedKey.EncodedInitializationVector.EncodedCiphertext.EncodedAuthenticationTag'.",
        )));
    };
    if info.expired {
        return Err(Box::new(unauthorized(
            sh,
            ids,
            "Lifetime validation failed, the token is expired.",
        )));
    }
    if !audiences
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&info.audience))
    {
        return Err(Box::new(unauthorized(
            sh,
            ids,
            "Access token validation failure. Invalid audience.",
        )));
    }
    Ok(info)
}

/// The mailbox a request may use: its key in the state, or the refusal.
/// `user` is the URL's `{user}` segment, `None` for `/me`.
pub(crate) fn check_mailbox(
    sh: &Shared,
    st: &GraphState,
    ids: &RequestIds,
    info: &AccessTokenInfo,
    user: Option<&str>,
) -> Result<String, Box<Response>> {
    let address = match (user, &info.subject) {
        (Some(u), _) => u.to_owned(),
        (None, TokenSubject::User(u)) => u.clone(),
        (None, TokenSubject::App) => {
            return Err(Box::new(graph_error(
                ids,
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            )));
        }
    };
    let invalid_user = || {
        graph_error(
            ids,
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            &format!("The requested user '{address}' is invalid."),
        )
    };
    let Some(key) = st.mailbox_key(&address) else {
        return Err(Box::new(invalid_user()));
    };
    let Some(mb) = st.mailboxes.get(&key) else {
        return Err(Box::new(invalid_user()));
    };
    if !mb.rest_enabled {
        return Err(Box::new(graph_error(
            ids,
            StatusCode::NOT_FOUND,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        )));
    }
    let allowed = match &info.subject {
        TokenSubject::User(u) => {
            mb.answers_to(u) || mb.delegates.iter().any(|d| d.eq_ignore_ascii_case(u))
        }
        // The IdP holds the app's grants; it may know the mailbox by any of
        // its addresses.
        TokenSubject::App => {
            sh.idp.app_may_open(&mb.address) || mb.aliases.iter().any(|a| sh.idp.app_may_open(a))
        }
    };
    if !allowed {
        let message = match info.subject {
            TokenSubject::User(_) => ACCESS_DENIED,
            TokenSubject::App => APP_ACCESS_DENIED,
        };
        return Err(Box::new(access_denied(ids, message)));
    }
    Ok(key)
}

/// The permission a route needs, for delegated tokens (app-only tokens
/// carry `.default`: whatever the admin consented, assumed to be enough).
pub(crate) fn check_permission(
    enforce: bool,
    ids: &RequestIds,
    info: &AccessTokenInfo,
    route: GraphRoute,
) -> Result<(), Box<Response>> {
    if !enforce {
        return Ok(());
    }
    let any = |perms: &[&str]| perms.iter().any(|p| info.has_permission(p));
    let allowed = match route {
        GraphRoute::GetFolder | GraphRoute::ListFolders | GraphRoute::ListChildFolders => {
            any(&["Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite"])
        }
        GraphRoute::ListMessages | GraphRoute::Delta | GraphRoute::GetMessage => {
            any(&["Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite"])
        }
        GraphRoute::MessageValue => any(&["Mail.Read", "Mail.ReadWrite"]),
        GraphRoute::UpdateMessage | GraphRoute::MoveMessage | GraphRoute::DeleteMessage => {
            any(&["Mail.ReadWrite"])
        }
        GraphRoute::SendMail => any(&["Mail.Send"]),
        GraphRoute::Other => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(Box::new(access_denied(ids, ACCESS_DENIED)))
    }
}

fn access_denied(ids: &RequestIds, message: &str) -> Response {
    graph_error(ids, StatusCode::FORBIDDEN, "ErrorAccessDenied", message)
}
