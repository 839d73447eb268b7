//! Every request's way through the stand-in: parse the path into a route
//! and a mailbox, log it and count it in flight, let the injected faults
//! have their say (delay, answer, drop), enforce the concurrency limit,
//! authenticate, then hand it to the route's handler.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::Shared;
use super::auth::{bearer, check_mailbox, check_permission, check_token};
use super::delta::{delta, sync_state_not_found};
use super::faults::{FaultKind, decide, status_of};
use super::folders::{get_folder, list_child_folders, list_folders, list_messages};
use super::messages::{delete_message, get_message, message_value, move_message, update_message};
use super::responses::{RequestIds, bad_request, error_body, graph_error, json_response};
use super::send::send_mail;
use super::server::DropConnection;
use super::state::{GraphRequest, GraphRoute, GraphState, prefers_immutable};
use crate::idp::TokenSubject;

/// Largest request body read (sendMail's limit is 4 MB of base64; a bit
/// more so an oversized one reaches the handler).
const MAX_BODY: usize = 64 << 20;

/// A request's path, understood.
pub(crate) struct Parsed {
    pub(crate) route: GraphRoute,
    /// The `{user}` segment, decoded; `None` for `/me` (and for paths with
    /// no user at all).
    pub(crate) user: Option<String>,
    pub(crate) is_me: bool,
    /// `users/{raw user}` or `me`, as sent: links are built on it.
    pub(crate) user_path: String,
    /// The folder or message segment, decoded.
    pub(crate) param: Option<String>,
    /// Why the path was not understood (400 text), for `Other`.
    pub(crate) problem: Option<String>,
}

/// Percent-decodes one path segment (no `+` → space: that is for queries).
fn decode_segment(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn parse(method: &Method, path: &str) -> Parsed {
    let raw: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut parsed = Parsed {
        route: GraphRoute::Other,
        user: None,
        is_me: false,
        user_path: String::new(),
        param: None,
        problem: None,
    };
    match raw.first() {
        Some(v) if *v == "v1.0" => {}
        Some(v) => {
            parsed.problem = Some(format!("Invalid version: {v}"));
            return parsed;
        }
        None => {
            parsed.problem = Some("Invalid version: ".to_owned());
            return parsed;
        }
    }
    let rest: &[&str] = match raw.get(1).map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("users") if raw.len() > 2 => {
            parsed.user = Some(decode_segment(raw[2]));
            parsed.user_path = format!("users/{}", raw[2]);
            &raw[3..]
        }
        Some("me") => {
            parsed.is_me = true;
            parsed.user_path = "me".to_owned();
            &raw[2..]
        }
        _ => {
            let seg = raw.get(1).copied().unwrap_or_default();
            parsed.problem = Some(format!("Resource not found for the segment '{seg}'."));
            return parsed;
        }
    };
    // Decoded first: a client may well send `%24value`.
    let names: Vec<String> = rest
        .iter()
        .map(|s| decode_segment(s).to_ascii_lowercase())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let is_delta = |s: &str| {
        matches!(
            s,
            "delta" | "delta()" | "microsoft.graph.delta" | "microsoft.graph.delta()"
        )
    };
    let route = match (method.as_str(), names.as_slice()) {
        ("GET", ["mailfolders"]) => GraphRoute::ListFolders,
        ("GET", ["mailfolders", _]) => GraphRoute::GetFolder,
        ("GET", ["mailfolders", _, "childfolders"]) => GraphRoute::ListChildFolders,
        ("GET", ["mailfolders", _, "messages"]) => GraphRoute::ListMessages,
        ("GET", ["mailfolders", _, "messages", d]) if is_delta(d) => GraphRoute::Delta,
        ("GET", ["messages", _]) => GraphRoute::GetMessage,
        ("PATCH", ["messages", _]) => GraphRoute::UpdateMessage,
        ("DELETE", ["messages", _]) => GraphRoute::DeleteMessage,
        ("GET", ["messages", _, "$value"]) => GraphRoute::MessageValue,
        ("POST", ["messages", _, "move" | "microsoft.graph.move"]) => GraphRoute::MoveMessage,
        ("POST", ["sendmail" | "microsoft.graph.sendmail"]) => GraphRoute::SendMail,
        _ => GraphRoute::Other,
    };
    parsed.route = route;
    if route == GraphRoute::Other {
        let seg = rest.last().copied().unwrap_or_default();
        parsed.problem = Some(format!("Resource not found for the segment '{seg}'."));
    } else if rest.len() > 1 {
        parsed.param = Some(decode_segment(rest[1]));
    }
    parsed
}

/// Query parameters, decoded, in order.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A query option by name; the `$` is optional in v1.0, case does not matter.
pub(crate) fn query_get<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let bare = name.trim_start_matches('$');
    query
        .iter()
        .find(|(k, _)| k.trim_start_matches('$').eq_ignore_ascii_case(bare))
        .map(|(_, v)| v.as_str())
}

/// All `Prefer` header values of a request.
pub(crate) fn prefer_values(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

/// What a handler gets besides the state.
pub(crate) struct Ctx<'a> {
    pub(crate) sh: &'a Shared,
    pub(crate) ids: &'a RequestIds,
    /// The mailbox's key in the state.
    pub(crate) key: &'a str,
    pub(crate) parsed: &'a Parsed,
    pub(crate) query: &'a [(String, String)],
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
    pub(crate) immutable: bool,
}

impl Ctx<'_> {
    /// `{base}/v1.0/users/{user}` (or `/me`), for links.
    pub(crate) fn user_base(&self) -> String {
        format!("{}/v1.0/{}", self.sh.base_url, self.parsed.user_path)
    }

    pub(crate) fn q(&self, name: &str) -> Option<&str> {
        query_get(self.query, name)
    }
}

/// Decrements the in-flight count when the request ends, however it ends
/// (answered, dropped, or abandoned by the client mid-delay).
struct InFlight {
    sh: Arc<Shared>,
    key: Option<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(k) = &self.key {
            let mut st = self.sh.lock();
            if let Some(n) = st.in_flight.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

fn finish(sh: &Shared, index: usize, status: u16) {
    if let Some(r) = sh.lock().log.get_mut(index) {
        r.status = status;
    }
}

pub(crate) async fn handle(
    sh: Arc<Shared>,
    req: Request<Body>,
) -> Result<Response, DropConnection> {
    let (parts, body) = req.into_parts();
    let ids = RequestIds::new(&parts.headers);
    // A client that hangs up mid-body gets nothing, like from Graph.
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| DropConnection)?;
    let parsed = parse(&parts.method, parts.uri.path());
    let query = query_pairs(parts.uri.query());
    let prefer = prefer_values(&parts.headers);
    let has_state_token =
        query_get(&query, "$skiptoken").is_some() || query_get(&query, "$deltatoken").is_some();
    // The mailbox for counters and fault scopes; `/me` through the token.
    let me = if parsed.is_me {
        bearer(&parts.headers)
            .and_then(|t| sh.idp.access_token_info(&t))
            .and_then(|i| match i.subject {
                TokenSubject::User(u) => Some(u),
                TokenSubject::App => None,
            })
    } else {
        None
    };
    let (index, decision, over_limit, mailbox) = {
        let mut guard = sh.lock();
        let st: &mut GraphState = &mut guard;
        let mailbox = parsed
            .user
            .as_deref()
            .or(me.as_deref())
            .map(|u| st.mailbox_key(u).unwrap_or_else(|| u.to_lowercase()));
        st.log.push(GraphRequest {
            method: parts.method.to_string(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            route: parsed.route,
            mailbox: mailbox.clone(),
            prefer: prefer.clone(),
            status: 0,
            at: std::time::Instant::now(),
        });
        let index = st.log.len() - 1;
        let mut over_limit = None;
        if let Some(k) = &mailbox {
            let n = {
                let n = st.in_flight.entry(k.clone()).or_default();
                *n += 1;
                *n
            };
            let max = st.max_in_flight.entry(k.clone()).or_default();
            *max = (*max).max(n);
            if let Some((limit, retry_after)) = st.concurrency_limit
                && n > limit
            {
                over_limit = Some(retry_after);
            }
        }
        let decision = decide(
            &mut st.faults,
            parsed.route,
            mailbox.as_deref(),
            has_state_token,
        );
        (index, decision, over_limit, mailbox)
    };
    let _in_flight = InFlight {
        sh: sh.clone(),
        key: mailbox,
    };
    if !decision.delay.is_zero() {
        tokio::time::sleep(decision.delay).await;
    }
    let drop_after = matches!(decision.outcome, Some(FaultKind::DropAfter));
    let resp = match decision.outcome {
        Some(FaultKind::DropBefore) => {
            finish(&sh, index, 0);
            return Err(DropConnection);
        }
        Some(FaultKind::Status {
            status,
            code,
            message,
            body,
            retry_after,
        }) => {
            let body = body.unwrap_or_else(|| error_body(&ids, &code, &message));
            let mut resp = json_response(&ids, status_of(status), &body);
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
            resp
        }
        Some(FaultKind::SyncStateNotFound) => {
            let generation = sh.lock().next_generation();
            sync_state_not_found(&ids, generation.saturating_sub(1), generation)
        }
        _ => match over_limit {
            Some(retry_after) => {
                let mut resp = graph_error(
                    &ids,
                    StatusCode::TOO_MANY_REQUESTS,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                );
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from(retry_after));
                resp
            }
            None => process(&sh, &ids, &parts.headers, &parsed, &query, &body, &prefer),
        },
    };
    if drop_after {
        finish(&sh, index, 0);
        return Err(DropConnection);
    }
    finish(&sh, index, resp.status().as_u16());
    Ok(resp)
}

fn process(
    sh: &Shared,
    ids: &RequestIds,
    headers: &HeaderMap,
    parsed: &Parsed,
    query: &[(String, String)],
    body: &[u8],
    prefer: &[String],
) -> Response {
    if let Some(problem) = &parsed.problem {
        return bad_request(ids, problem);
    }
    let mut guard = sh.lock();
    let st: &mut GraphState = &mut guard;
    let info = match check_token(sh, &st.audiences, ids, headers) {
        Ok(info) => info,
        Err(resp) => return *resp,
    };
    let key = match check_mailbox(sh, st, ids, &info, parsed.user.as_deref()) {
        Ok(key) => key,
        Err(resp) => return *resp,
    };
    if let Err(resp) = check_permission(st.enforce_permissions, ids, &info, parsed.route) {
        return *resp;
    }
    let immutable = prefer.iter().any(|p| prefers_immutable(p));
    let ctx = Ctx {
        sh,
        ids,
        key: &key,
        parsed,
        query,
        headers,
        body,
        immutable,
    };
    let param = parsed.param.as_deref().unwrap_or_default();
    let mut resp = match parsed.route {
        GraphRoute::ListFolders => list_folders(&ctx, st),
        GraphRoute::GetFolder => get_folder(&ctx, st, param),
        GraphRoute::ListChildFolders => list_child_folders(&ctx, st, param),
        GraphRoute::ListMessages => list_messages(&ctx, st, param),
        GraphRoute::Delta => delta(&ctx, st, param),
        GraphRoute::GetMessage => get_message(&ctx, st, param),
        GraphRoute::MessageValue => message_value(&ctx, st, param),
        GraphRoute::UpdateMessage => update_message(&ctx, st, param),
        GraphRoute::MoveMessage => move_message(&ctx, st, param),
        GraphRoute::DeleteMessage => delete_message(&ctx, st, param),
        GraphRoute::SendMail => send_mail(&ctx, st),
        GraphRoute::Other => bad_request(ids, "Unsupported request."),
    };
    if immutable && parsed.route != GraphRoute::SendMail {
        add_preference_applied(&mut resp, "IdType=\"ImmutableId\"");
    }
    resp
}

/// Adds one preference to `Preference-Applied` (comma-separated, as Graph).
pub(crate) fn add_preference_applied(resp: &mut Response, pref: &str) {
    let value = match resp
        .headers()
        .get("preference-applied")
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) => format!("{existing}, {pref}"),
        None => pref.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert("preference-applied", v);
    }
}

/// A JSON request body as an object, or Graph's 400 for anything else.
pub(crate) fn json_object(ctx: &Ctx<'_>) -> Result<serde_json::Map<String, Value>, Box<Response>> {
    if ctx.body.is_empty() {
        return Err(Box::new(bad_request(
            ctx.ids,
            "Empty Payload. JSON content expected.",
        )));
    }
    match serde_json::from_slice::<Value>(ctx.body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Box::new(graph_error(
            ctx.ids,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        ))),
    }
}
