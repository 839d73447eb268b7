//! Graph's response shapes: JSON with OData's content type, the error body
//! `{"error":{"code","message","innerError":{date, request-id,
//! client-request-id}}}`, the request-id headers every answer carries, and
//! the message and folder resources as `$select` shapes them.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::state::{Folder, Mailbox, Message};
use crate::idp::helpers::guid;
use crate::time::{graph_timestamp, unix_now};

/// Graph's JSON content type (OData minimal metadata).
pub(crate) const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Per-request ids: Graph echoes the client's `client-request-id` (or makes
/// one) and adds its own `request-id`.
#[derive(Clone)]
pub(crate) struct RequestIds {
    pub(crate) request_id: String,
    pub(crate) client_request_id: String,
}

impl RequestIds {
    pub(crate) fn new(headers: &HeaderMap) -> RequestIds {
        let request_id = guid();
        let client_request_id = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| request_id.clone());
        RequestIds {
            request_id,
            client_request_id,
        }
    }

    fn stamp(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert("request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.client_request_id) {
            h.insert("client-request-id", v);
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache"),
        );
    }
}

pub(crate) fn bytes_response(
    ids: &RequestIds,
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    ids.stamp(&mut resp);
    resp
}

pub(crate) fn json_response(ids: &RequestIds, status: StatusCode, body: &Value) -> Response {
    bytes_response(ids, status, ODATA_JSON, body.to_string().into_bytes())
}

pub(crate) fn empty_response(ids: &RequestIds, status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    ids.stamp(&mut resp);
    resp
}

/// The error body of Graph, with a fresh `innerError`.
pub(crate) fn error_body(ids: &RequestIds, code: &str, message: &str) -> Value {
    json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": graph_timestamp(unix_now()).trim_end_matches('Z'),
                "request-id": ids.request_id,
                "client-request-id": ids.client_request_id,
            }
        }
    })
}

pub(crate) fn graph_error(
    ids: &RequestIds,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response {
    json_response(ids, status, &error_body(ids, code, message))
}

/// 404 for an id that names no item of the mailbox (Exchange's wording).
pub(crate) fn item_not_found(ids: &RequestIds) -> Response {
    graph_error(
        ids,
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

/// 400 for a folder reference that is neither an id nor a well-known name
/// (e.g. a display name put where an id belongs).
pub(crate) fn id_malformed(ids: &RequestIds) -> Response {
    graph_error(
        ids,
        StatusCode::BAD_REQUEST,
        "ErrorInvalidIdMalformed",
        "Id is malformed.",
    )
}

pub(crate) fn bad_request(ids: &RequestIds, message: &str) -> Response {
    graph_error(ids, StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// The message properties the stand-in knows, for `$select` validation.
pub(crate) const MESSAGE_PROPERTIES: [&str; 14] = [
    "id",
    "internetMessageId",
    "receivedDateTime",
    "sentDateTime",
    "createdDateTime",
    "lastModifiedDateTime",
    "isRead",
    "isDraft",
    "subject",
    "parentFolderId",
    "changeKey",
    "hasAttachments",
    "conversationId",
    "bodyPreview",
];

/// Parses `$select`: `Ok(None)` when absent, the names otherwise; an unknown
/// name is Graph's 400 (a typo in a client's `$select` shows up here).
pub(crate) fn parse_select(
    ids: &RequestIds,
    select: Option<&str>,
) -> Result<Option<Vec<String>>, Box<Response>> {
    let Some(select) = select else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for name in select.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match MESSAGE_PROPERTIES
            .iter()
            .find(|p| p.eq_ignore_ascii_case(name))
        {
            Some(p) => names.push((*p).to_owned()),
            None => {
                return Err(Box::new(graph_error(
                    ids,
                    StatusCode::BAD_REQUEST,
                    "RequestBroker--ParseUri",
                    &format!(
                        "Could not find a property named '{name}' on type 'microsoft.graph.message'."
                    ),
                )));
            }
        }
    }
    Ok(Some(names))
}

/// A message resource: the `$select`ed properties (all known ones when
/// there is no `$select`), plus `@odata.etag` and `id` always, as Graph.
pub(crate) fn message_json(m: &Message, select: Option<&[String]>, immutable: bool) -> Value {
    let received = graph_timestamp(m.received);
    let mut all = Map::new();
    all.insert("id".into(), json!(m.id(immutable)));
    all.insert("createdDateTime".into(), json!(received));
    all.insert("lastModifiedDateTime".into(), json!(received));
    all.insert("changeKey".into(), json!(m.change_key()));
    all.insert("receivedDateTime".into(), json!(received));
    all.insert("sentDateTime".into(), json!(received));
    all.insert("hasAttachments".into(), json!(false));
    all.insert("internetMessageId".into(), json!(m.internet_message_id));
    all.insert("subject".into(), json!(m.subject));
    all.insert("bodyPreview".into(), json!(""));
    all.insert("parentFolderId".into(), json!(m.folder_id));
    all.insert(
        "conversationId".into(),
        json!(format!("AAQkA{}", &m.immutable_id[..16])),
    );
    all.insert("isRead".into(), json!(m.is_read));
    all.insert("isDraft".into(), json!(false));
    let mut out = Map::new();
    out.insert("@odata.type".into(), json!("#microsoft.graph.message"));
    out.insert(
        "@odata.etag".into(),
        json!(format!("W/\"{}\"", m.change_key())),
    );
    match select {
        None => out.extend(all),
        Some(names) => {
            out.insert("id".into(), json!(m.id(immutable)));
            for n in names {
                if let Some(v) = all.get(n) {
                    out.insert(n.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// A mailFolder resource.
pub(crate) fn folder_json(mb: &Mailbox, f: &Folder) -> Value {
    let total = mb.messages.iter().filter(|m| m.folder_id == f.id).count();
    let unread = mb
        .messages
        .iter()
        .filter(|m| m.folder_id == f.id && !m.is_read)
        .count();
    json!({
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": f.parent_id.clone().unwrap_or_default(),
        "childFolderCount": mb.children(&f.id).count(),
        "unreadItemCount": unread,
        "totalItemCount": total,
        "sizeInBytes": mb.messages.iter().filter(|m| m.folder_id == f.id).map(|m| m.raw.len()).sum::<usize>(),
        "isHidden": false,
    })
}
