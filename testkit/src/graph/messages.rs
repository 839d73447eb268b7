//! One message: read it (`GET`, `$value` for the MIME bytes) and the
//! after-steps a reader takes on it (`PATCH isRead`, `move`, `DELETE`).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::dispatch::{Ctx, json_object};
use super::folders::resolve_folder;
use super::responses::{
    bad_request, bytes_response, empty_response, item_not_found, json_response, message_json,
    parse_select,
};
use super::state::{GraphState, new_message_id};

fn context(ctx: &Ctx<'_>, st: &GraphState) -> Value {
    let address = st
        .mailboxes
        .get(ctx.key)
        .map(|m| m.address.clone())
        .unwrap_or_default();
    json!(format!(
        "{}/v1.0/$metadata#users('{address}')/messages/$entity",
        ctx.sh.base_url
    ))
}

pub(crate) fn get_message(ctx: &Ctx<'_>, st: &mut GraphState, id: &str) -> Response {
    let select = match parse_select(ctx.ids, ctx.q("$select")) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(mb) = st.mailboxes.get(ctx.key) else {
        return item_not_found(ctx.ids);
    };
    let Some(i) = mb.message_index(id) else {
        return item_not_found(ctx.ids);
    };
    let mut body = message_json(&mb.messages[i], select.as_deref(), ctx.immutable);
    body["@odata.context"] = context(ctx, st);
    json_response(ctx.ids, StatusCode::OK, &body)
}

/// The MIME bytes exactly as delivered.
pub(crate) fn message_value(ctx: &Ctx<'_>, st: &mut GraphState, id: &str) -> Response {
    let Some(mb) = st.mailboxes.get(ctx.key) else {
        return item_not_found(ctx.ids);
    };
    let Some(i) = mb.message_index(id) else {
        return item_not_found(ctx.ids);
    };
    bytes_response(
        ctx.ids,
        StatusCode::OK,
        "text/plain",
        mb.messages[i].raw.clone(),
    )
}

/// `PATCH` with `isRead` (other writable properties are accepted and
/// ignored); every PATCH bumps the change key, as Exchange does, so the
/// next delta round reports the message as changed.
pub(crate) fn update_message(ctx: &Ctx<'_>, st: &mut GraphState, id: &str) -> Response {
    let body = match json_object(ctx) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let is_read = match body.get("isRead") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return bad_request(
                ctx.ids,
                &format!("Invalid value '{other}' for property 'isRead' of type 'Edm.Boolean'."),
            );
        }
    };
    let Some(mb) = st.mailboxes.get_mut(ctx.key) else {
        return item_not_found(ctx.ids);
    };
    let Some(i) = mb.message_index(id) else {
        return item_not_found(ctx.ids);
    };
    let m = &mut mb.messages[i];
    if let Some(r) = is_read {
        m.is_read = r;
    }
    m.version += 1;
    let mut out = message_json(m, None, ctx.immutable);
    out["@odata.context"] = context(ctx, st);
    json_response(ctx.ids, StatusCode::OK, &out)
}

/// `POST …/move {"destinationId": id or well-known name}` → 201 with the
/// message as it is now (a new REST id; the immutable id stays).
pub(crate) fn move_message(ctx: &Ctx<'_>, st: &mut GraphState, id: &str) -> Response {
    let body = match json_object(ctx) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(dest) = body.get("destinationId").and_then(Value::as_str) else {
        return bad_request(ctx.ids, "The destinationId parameter is missing or empty.");
    };
    let Some(mb) = st.mailboxes.get_mut(ctx.key) else {
        return item_not_found(ctx.ids);
    };
    let dest_id = match resolve_folder(ctx.ids, mb, dest) {
        Ok(f) => f.id.clone(),
        Err(r) => return *r,
    };
    let Some(i) = mb.message_index(id) else {
        return item_not_found(ctx.ids);
    };
    let m = &mut mb.messages[i];
    if m.folder_id != dest_id {
        m.folder_id = dest_id;
        m.rest_id = new_message_id(false);
        m.version += 1;
    }
    let mut out = message_json(m, None, ctx.immutable);
    out["@odata.context"] = context(ctx, st);
    json_response(ctx.ids, StatusCode::CREATED, &out)
}

/// `DELETE` → 204: into Deleted Items; from Deleted Items, gone for good.
pub(crate) fn delete_message(ctx: &Ctx<'_>, st: &mut GraphState, id: &str) -> Response {
    let Some(mb) = st.mailboxes.get_mut(ctx.key) else {
        return item_not_found(ctx.ids);
    };
    let Some(i) = mb.message_index(id) else {
        return item_not_found(ctx.ids);
    };
    let deleted_items = mb
        .well_known("deleteditems")
        .map(|f| f.id.clone())
        .unwrap_or_default();
    if mb.messages[i].folder_id == deleted_items {
        mb.messages.remove(i);
    } else {
        let m = &mut mb.messages[i];
        m.folder_id = deleted_items;
        m.rest_id = new_message_id(false);
        m.version += 1;
    }
    empty_response(ctx.ids, StatusCode::NO_CONTENT)
}
