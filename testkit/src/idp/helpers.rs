//! Entra's response shapes (AADSTS error bodies, redirects, HTML pages) and
//! the small parsers (forms, scopes, PKCE) the endpoints share.

use super::*;

pub(crate) fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Nine characters of A–Z and 2–9, like Entra's device-flow user codes.
pub(crate) fn random_user_code() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..9)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

pub(crate) fn guid() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// "alice.smith@contoso.example" → "Alice Smith".
pub(crate) fn display_name_of(username: &str) -> String {
    let local = username.split('@').next().unwrap_or(username);
    local
        .split(['.', '_', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The key id_tokens are signed with: one per test process, made on first use.
pub(crate) fn idp_signing_key() -> &'static ClientCert {
    static KEY: OnceLock<ClientCert> = OnceLock::new();
    KEY.get_or_init(|| ClientCert::generate("mail2ticket test IdP token signing"))
}

pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `application/x-www-form-urlencoded` (also URL query strings), whatever the
/// Content-Type header says. The first occurrence of a repeated key wins.
pub(crate) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    let mut map = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.entry(url_decode(k)).or_insert_with(|| url_decode(v));
    }
    map
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The `suberror` Entra adds to some errors (MSAL keys its UI decisions on it).
pub(crate) fn suberror_for(code: u32) -> Option<&'static str> {
    match code {
        50076 | 50079 => Some("basic_action"),
        65001 => Some("consent_required"),
        50173 | 70043 | 700082 => Some("bad_token"),
        _ => None,
    }
}

/// (description, trace id, correlation id, timestamp) of a new Entra error.
pub(crate) fn aad_description(code: u32, message: &str) -> (String, String, String, String) {
    let timestamp = azure_timestamp(unix_now());
    let trace_id = guid();
    let correlation_id = guid();
    let description = format!(
        "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
    );
    (description, trace_id, correlation_id, timestamp)
}

/// The JSON body of an error in Entra ID's exact shape. Like the real
/// service, the parts of `error_description` are separated by CRLF.
pub(crate) fn aad_error_body(url: &str, error: &str, code: u32, message: &str) -> Value {
    let (description, trace_id, correlation_id, timestamp) = aad_description(code, message);
    let mut body = json!({
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("{url}/error?code={code}"),
    });
    if let Some(sub) = suberror_for(code) {
        body["suberror"] = Value::String(sub.to_owned());
    }
    body
}

pub(crate) fn aad_error(
    url: &str,
    status: StatusCode,
    error: &str,
    code: u32,
    message: &str,
) -> Response {
    json_response(status, &aad_error_body(url, error, code, message))
}

pub(crate) fn missing_param(url: &str, name: &str) -> Response {
    aad_error(
        url,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
    )
}

pub(crate) fn invalid_client(url: &str, code: u32, message: &str) -> Response {
    aad_error(
        url,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        code,
        message,
    )
}

pub(crate) fn invalid_grant(url: &str, code: u32, message: &str) -> Response {
    aad_error(url, StatusCode::BAD_REQUEST, "invalid_grant", code, message)
}

pub(crate) fn unknown_tenant(url: &str, tenant: &str) -> Response {
    aad_error(
        url,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        &unknown_tenant_message(tenant),
    )
}

pub(crate) fn unknown_tenant_message(tenant: &str) -> String {
    format!(
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
    )
}

pub(crate) fn unknown_client_message(client_id: &str, tenant: &str) -> String {
    format!(
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
    )
}

pub(crate) fn injected_response(url: &str, inj: &Injection) -> Response {
    let status = StatusCode::from_u16(inj.status).expect("validated in inject()");
    let mut resp = match (&inj.aad, &inj.body) {
        (Some(a), _) => json_response(status, &aad_error_body(url, &a.error, a.code, &a.message)),
        (None, InjectedBody::Json(v)) => json_response(status, v),
        (None, InjectedBody::Text(t)) => html_response(status, t.clone()),
    };
    if let Some(secs) = inj.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub(crate) const DOWN_HTML: &str = "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\
<body><h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p></body></html>\n";

pub(crate) fn down_response() -> Response {
    html_response(StatusCode::SERVICE_UNAVAILABLE, DOWN_HTML.to_owned())
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page Entra shows when it cannot (or must not) redirect back.
pub(crate) fn error_page(code: u32, message: &str) -> Response {
    let (description, ..) = aad_description(code, message);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>Sign in to your account</title></head><body>\
<h1>Sorry, but we're having trouble signing you in.</h1>\n<p id=\"error\">{}</p>\n</body></html>\n",
        html_escape(&description).replace("\r\n", "<br>\r\n")
    );
    html_response(StatusCode::BAD_REQUEST, body)
}

pub(crate) fn b64url_json(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

pub(crate) fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub(crate) fn has_scope(scope: &str, wanted: &str) -> bool {
    scope
        .split_whitespace()
        .any(|s| s.eq_ignore_ascii_case(wanted))
}

/// Space-separated scopes minus the OpenID Connect ones and `offline_access`
/// (never echoed by Entra ID).
pub(crate) fn granted_scope(scope: &str) -> String {
    scope
        .split_whitespace()
        .filter(|s| {
            !["offline_access", "openid", "profile", "email"]
                .iter()
                .any(|oidc| s.eq_ignore_ascii_case(oidc))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The resource (audience) one scope value names, normalised so that two
/// spellings of one resource compare equal: `https://graph.microsoft.com/Mail.Read`
/// → `https://graph.microsoft.com`, `https://outlook.office365.com/.default`
/// → `https://outlook.office.com` (Exchange Online answers to both hosts),
/// the well-known application ids → their URIs. `None` for the OpenID Connect
/// scopes and `offline_access` (no resource) and for bare permission names
/// (`Mail.Read`): Entra reads those as belonging to whatever resource the
/// request otherwise names, so they never make a request mixed.
pub(crate) fn resource_of_scope_value(value: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty()
        || ["offline_access", "openid", "profile", "email"]
            .iter()
            .any(|oidc| v.eq_ignore_ascii_case(oidc))
    {
        return None;
    }
    let (prefix, _permission) = v.rsplit_once('/')?;
    let prefix = prefix.trim_end_matches('/').to_ascii_lowercase();
    let normalised = match prefix.as_str() {
        "00000003-0000-0000-c000-000000000000" => "https://graph.microsoft.com",
        "00000002-0000-0ff1-ce00-000000000000" | "https://outlook.office365.com" => {
            "https://outlook.office.com"
        }
        other => other,
    };
    Some(normalised.to_owned())
}

/// Every distinct resource a space-separated scope names, in order of first
/// mention (see [`resource_of_scope_value`]).
pub(crate) fn resources_of_scope(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in scope.split_whitespace().filter_map(resource_of_scope_value) {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// The audience of a token issued for `scope`: the first resource it names,
/// Microsoft Graph when it names none (bare permission names are Graph's,
/// as with Entra).
pub(crate) fn audience_of_scope(scope: &str) -> String {
    resources_of_scope(scope)
        .into_iter()
        .next()
        .unwrap_or_else(|| GRAPH_RESOURCE.to_owned())
}

/// Entra's answer to a token request whose scope names two resources: an
/// access token has one audience, so the client must ask once per resource
/// (one refresh token serves them all). AADSTS28000 is what the v2.0 token
/// endpoint answers; the text is Entra's own wording of the error.
pub(crate) fn mixed_resources_error(url: &str, scope: &str) -> Option<Response> {
    if resources_of_scope(scope).len() < 2 {
        return None;
    }
    Some(aad_error(
        url,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
        28000,
        &format!(
            "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid."
        ),
    ))
}

pub(crate) fn wants_refresh_token(scope: &str) -> bool {
    has_scope(scope, "offline_access")
}

pub(crate) fn wants_id_token(scope: &str) -> bool {
    has_scope(scope, "openid")
}

/// Loopback redirect URIs on any port, or one added by the test.
pub(crate) fn redirect_uri_allowed(st: &IdpState, uri: &str) -> bool {
    if st.redirect_uris.iter().any(|r| r == uri) {
        return true;
    }
    let Ok(u) = url::Url::parse(uri) else {
        return false;
    };
    u.scheme() == "http"
        && matches!(u.host_str(), Some("localhost" | "127.0.0.1"))
        && u.username().is_empty()
        && u.password().is_none()
        && u.fragment().is_none()
}

/// `{redirect_uri}?k=v&…` (or `&…` if it already has a query).
pub(crate) fn redirect_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{sep}{}", ser.finish());
    // from_bytes: a redirect URI with raw non-ASCII characters still works.
    let Ok(location) = HeaderValue::from_bytes(location.as_bytes()) else {
        return html_response(
            StatusCode::BAD_REQUEST,
            "<html><body>test IdP: redirect URI not usable in a Location header</body></html>"
                .to_owned(),
        );
    };
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert(header::LOCATION, location);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    r
}

/// An authorize error sent back to the client, as Entra does.
pub(crate) fn redirect_error(
    url: &str,
    redirect_uri: &str,
    state: Option<&String>,
    error: &str,
    code: u32,
    message: &str,
) -> Response {
    let (description, ..) = aad_description(code, message);
    let error_uri = format!("{url}/error?code={code}");
    let mut params = vec![
        ("error", error),
        ("error_description", description.as_str()),
        ("error_uri", error_uri.as_str()),
    ];
    if let Some(s) = state {
        params.push(("state", s));
    }
    redirect_to(redirect_uri, &params)
}
