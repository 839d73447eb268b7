//! `POST sendMail`: the MIME form (`Content-Type: text/plain`, the whole
//! message base64-encoded) or the JSON form; 202 Accepted, captured for the
//! test, and a copy saved in Sent Items as Exchange does.

use std::time::Instant;

use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::control::{header_value, internet_message_id};
use super::dispatch::{Ctx, json_object};
use super::responses::{bad_request, empty_response, graph_error};
use super::state::{GraphState, Message, SentMail, new_message_id};

pub(crate) fn send_mail(ctx: &Ctx<'_>, st: &mut GraphState) -> Response {
    let content_type = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (mime, json) = if content_type.starts_with("text/plain") {
        // Line breaks inside the base64 are tolerated, as by Exchange.
        let compact: Vec<u8> = ctx
            .body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if compact.is_empty() {
            return graph_error(
                ctx.ids,
                StatusCode::BAD_REQUEST,
                "ErrorMimeContentInvalid",
                "The MIME content is empty.",
            );
        }
        match STANDARD.decode(&compact) {
            Ok(bytes) => (Some(bytes), None),
            Err(_) => {
                return graph_error(
                    ctx.ids,
                    StatusCode::BAD_REQUEST,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                );
            }
        }
    } else if content_type.starts_with("application/json") {
        match json_object(ctx) {
            Ok(map) if map.get("message").is_some_and(serde_json::Value::is_object) => {
                (None, Some(serde_json::Value::Object(map)))
            }
            Ok(_) => return bad_request(ctx.ids, "Missing required property 'message'."),
            Err(r) => return *r,
        }
    } else {
        return graph_error(
            ctx.ids,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "Content-Type must be text/plain (base64 MIME) or application/json.",
        );
    };
    let received = st.received_now();
    let Some(mb) = st.mailboxes.get_mut(ctx.key) else {
        return empty_response(ctx.ids, StatusCode::NOT_FOUND);
    };
    if let Some(raw) = &mime {
        let sent_items = mb
            .well_known("sentitems")
            .map(|f| f.id.clone())
            .unwrap_or_default();
        mb.messages.push(Message {
            immutable_id: new_message_id(true),
            rest_id: new_message_id(false),
            folder_id: sent_items,
            internet_message_id: internet_message_id(raw),
            received,
            is_read: true,
            version: 1,
            subject: header_value(raw, "subject").unwrap_or_default(),
            raw: raw.clone(),
        });
    }
    st.sent.push(SentMail {
        mailbox: ctx.key.to_owned(),
        mime,
        json,
        at: Instant::now(),
    });
    empty_response(ctx.ids, StatusCode::ACCEPTED)
}
