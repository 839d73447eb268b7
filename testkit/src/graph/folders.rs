//! Folder routes — one folder, the top-level list, child folders (paged,
//! with `$filter=displayName eq '…'`) — and the list of a folder's
//! messages; plus resolving a folder reference from a URL.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::dispatch::Ctx;
use super::responses::{
    RequestIds, folder_json, graph_error, id_malformed, item_not_found, json_response,
    message_json, parse_select,
};
use super::state::{Folder, GraphState, Mailbox};

/// The folder a URL segment names: an id or a well-known name. Anything
/// else is malformed (a display name is not an id), an id we never made is
/// not found.
pub(crate) fn resolve_folder<'a>(
    ids: &RequestIds,
    mb: &'a Mailbox,
    fref: &str,
) -> Result<&'a Folder, Box<Response>> {
    if let Some(f) = mb.folder_by_ref(fref) {
        return Ok(f);
    }
    if fref.starts_with("AQMk") || fref.starts_with("AAMk") {
        Err(Box::new(item_not_found(ids)))
    } else {
        Err(Box::new(id_malformed(ids)))
    }
}

fn mailbox<'a>(ctx: &Ctx<'_>, st: &'a GraphState) -> Result<&'a Mailbox, Box<Response>> {
    st.mailboxes
        .get(ctx.key)
        .ok_or_else(|| Box::new(item_not_found(ctx.ids)))
}

pub(crate) fn get_folder(ctx: &Ctx<'_>, st: &mut GraphState, fref: &str) -> Response {
    let mb = match mailbox(ctx, st) {
        Ok(mb) => mb,
        Err(r) => return *r,
    };
    match resolve_folder(ctx.ids, mb, fref) {
        Ok(f) => {
            let mut body = folder_json(mb, f);
            body["@odata.context"] = json!(format!(
                "{}/v1.0/$metadata#users('{}')/mailFolders/$entity",
                ctx.sh.base_url, mb.address
            ));
            json_response(ctx.ids, StatusCode::OK, &body)
        }
        Err(r) => *r,
    }
}

pub(crate) fn list_folders(ctx: &Ctx<'_>, st: &mut GraphState) -> Response {
    let mb = match mailbox(ctx, st) {
        Ok(mb) => mb,
        Err(r) => return *r,
    };
    let root = mb.root_id().to_owned();
    let link = format!("{}/mailFolders", ctx.user_base());
    folder_page(ctx, mb, &root, &link)
}

pub(crate) fn list_child_folders(ctx: &Ctx<'_>, st: &mut GraphState, fref: &str) -> Response {
    let mb = match mailbox(ctx, st) {
        Ok(mb) => mb,
        Err(r) => return *r,
    };
    let parent = match resolve_folder(ctx.ids, mb, fref) {
        Ok(f) => f.id.clone(),
        Err(r) => return *r,
    };
    let link = format!(
        "{}/mailFolders/{}/childFolders",
        ctx.user_base(),
        ctx.parsed.param.as_deref().unwrap_or(&parent)
    );
    folder_page(ctx, mb, &parent, &link)
}

/// `displayName eq 'Support'` → `Support` (`''` is a quote inside).
fn display_name_filter(filter: &str) -> Option<String> {
    let f = filter.trim();
    let (prop, rest) = f.split_once(char::is_whitespace)?;
    if !prop.eq_ignore_ascii_case("displayName") {
        return None;
    }
    let rest = rest.trim_start();
    let (op, value) = rest.split_once(char::is_whitespace)?;
    if !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    let value = value.trim();
    let inner = value.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

fn invalid_filter(ids: &RequestIds) -> Response {
    graph_error(
        ids,
        StatusCode::BAD_REQUEST,
        "ErrorInvalidUrlQueryFilter",
        "The query filter contains one or more invalid nodes.",
    )
}

/// `$top` (default `default`) and `$skip`, or Graph's 400.
fn paging(ctx: &Ctx<'_>, default: usize) -> Result<(usize, usize), Box<Response>> {
    let parse = |name: &str, dflt: usize| -> Result<usize, Box<Response>> {
        match ctx.q(name) {
            None => Ok(dflt),
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                Box::new(graph_error(
                    ctx.ids,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("Invalid value '{v}' for query option '{name}'."),
                ))
            }),
        }
    };
    let top = parse("$top", default)?.clamp(1, 1000);
    let skip = parse("$skip", 0)?;
    Ok((top, skip))
}

/// The link to the next page: the same query with `$skip` moved on.
fn next_link(ctx: &Ctx<'_>, link: &str, skip: usize) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in ctx.query {
        if !k.trim_start_matches('$').eq_ignore_ascii_case("skip") {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair("$skip", &skip.to_string());
    format!("{link}?{}", ser.finish())
}

fn folder_page(ctx: &Ctx<'_>, mb: &Mailbox, parent: &str, link: &str) -> Response {
    let name = match ctx.q("$filter") {
        None => None,
        Some(f) => match display_name_filter(f) {
            Some(n) => Some(n),
            None => return invalid_filter(ctx.ids),
        },
    };
    // Graph's default page for mail folders is 10: a client that lists
    // without following nextLink misses the eleventh.
    let (top, skip) = match paging(ctx, 10) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let matching: Vec<&Folder> = mb
        .children(parent)
        .filter(|f| {
            name.as_deref()
                .is_none_or(|n| f.display_name.eq_ignore_ascii_case(n))
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(top)
        .map(|f| folder_json(mb, f))
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}/v1.0/$metadata#users('{}')/mailFolders", ctx.sh.base_url, mb.address),
        "value": page,
    });
    if skip + top < matching.len() {
        body["@odata.nextLink"] = json!(next_link(ctx, link, skip + top));
    }
    json_response(ctx.ids, StatusCode::OK, &body)
}

/// `GET mailFolders/{id}/messages`: newest first, `$top` (default 10, see
/// [`super::GraphServer::set_default_page_size`]),
/// `$skip`, `$select`, `$filter=isRead eq false|true`, `$count=true`.
pub(crate) fn list_messages(ctx: &Ctx<'_>, st: &mut GraphState, fref: &str) -> Response {
    let mb = match mailbox(ctx, st) {
        Ok(mb) => mb,
        Err(r) => return *r,
    };
    let folder = match resolve_folder(ctx.ids, mb, fref) {
        Ok(f) => f.id.clone(),
        Err(r) => return *r,
    };
    let select = match parse_select(ctx.ids, ctx.q("$select")) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let read_filter = match ctx.q("$filter").map(str::trim) {
        None => None,
        Some(f) => {
            let compact: String = f.split_whitespace().collect::<Vec<_>>().join(" ");
            match compact.to_ascii_lowercase().as_str() {
                "isread eq false" => Some(false),
                "isread eq true" => Some(true),
                _ => return invalid_filter(ctx.ids),
            }
        }
    };
    let (top, skip) = match paging(ctx, st.default_page_size) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let mut matching: Vec<_> = mb
        .messages
        .iter()
        .filter(|m| m.folder_id == folder && read_filter.is_none_or(|r| m.is_read == r))
        .collect();
    matching.reverse();
    let page: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(top)
        .map(|m| message_json(m, select.as_deref(), ctx.immutable))
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}/v1.0/$metadata#users('{}')/mailFolders('{}')/messages", ctx.sh.base_url, mb.address, folder),
        "value": page,
    });
    if ctx
        .q("$count")
        .is_some_and(|c| c.eq_ignore_ascii_case("true"))
    {
        body["@odata.count"] = json!(matching.len());
    }
    if skip + top < matching.len() {
        let link = format!(
            "{}/mailFolders/{}/messages",
            ctx.user_base(),
            ctx.parsed.param.as_deref().unwrap_or(&folder)
        );
        body["@odata.nextLink"] = json!(next_link(ctx, &link, skip + top));
    }
    json_response(ctx.ids, StatusCode::OK, &body)
}
