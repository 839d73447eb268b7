//! `GET mailFolders/{id}/messages/delta`: rounds of change tracking.
//!
//! A round starts with a request without a state token (everything in the
//! folder) or with a `$deltatoken` (what changed since that link was
//! issued: new mail, changed mail — any PATCH bumps the change key, as in
//! Exchange — and `@removed` entries for mail gone from the folder). Its
//! items are fixed when it starts; its pages are linked by `$skiptoken`s,
//! the last page carries a `$deltatoken` holding the folder's state as of
//! the round's start. Tokens are opaque and stay valid (a client may
//! re-fetch a page after a lost answer and gets the same page and links)
//! until [`super::GraphServer::expire_delta_tokens`]; an unknown or expired
//! one answers 410 Gone `SyncStateNotFound`, as Graph does when the sync
//! state behind a link is gone.
//!
//! `@removed` reasons: `changed` when the message still exists elsewhere in
//! the mailbox (moved out, or deleted into Deleted Items: restorable),
//! `deleted` when it is gone for good. Items come in delivery order.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::dispatch::{Ctx, add_preference_applied};
use super::folders::resolve_folder;
use super::responses::{
    RequestIds, graph_error, item_not_found, json_response, message_json, parse_select,
};
use super::state::{DeltaItem, DeltaRound, DeltaToken, GraphState, SkipToken, preferred_page_size};

/// 410 Gone `SyncStateNotFound` in Graph's words for mail.
pub(crate) fn sync_state_not_found(ids: &RequestIds, generation: u64, highest: u64) -> Response {
    graph_error(
        ids,
        StatusCode::GONE,
        "SyncStateNotFound",
        &format!(
            "The sync state generation is not found; generation={generation};[highest={highest}]."
        ),
    )
}

/// Snapshot of a folder: immutable id → (change version, REST id then).
pub(crate) type Snapshot = HashMap<String, (u64, String)>;

pub(crate) fn delta(ctx: &Ctx<'_>, st: &mut GraphState, fref: &str) -> Response {
    let page_size = ctx
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(preferred_page_size);
    if let Some(token) = ctx.q("$skiptoken") {
        return next_page(ctx, st, token, page_size);
    }
    if let Some(token) = ctx.q("$deltatoken") {
        return from_delta_token(ctx, st, token, page_size);
    }
    let Some(mb) = st.mailboxes.get(ctx.key) else {
        return item_not_found(ctx.ids);
    };
    let folder_id = match resolve_folder(ctx.ids, mb, fref) {
        Ok(f) => f.id.clone(),
        Err(r) => return *r,
    };
    let select = match parse_select(ctx.ids, ctx.q("$select")) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let round = start_round(
        st,
        ctx.key,
        &folder_id,
        None,
        select,
        ctx.immutable,
        page_size,
    );
    serve_page(ctx, st, round, 0, page_size)
}

fn gone(ctx: &Ctx<'_>, st: &mut GraphState, generation: u64) -> Response {
    let highest = st.next_generation();
    sync_state_not_found(ctx.ids, generation, highest)
}

fn next_page(
    ctx: &Ctx<'_>,
    st: &mut GraphState,
    token: &str,
    page_size: Option<usize>,
) -> Response {
    let Some(skip) = st.skip_tokens.get(token) else {
        return gone(ctx, st, 0);
    };
    let (round, offset, expired) = (skip.round, skip.offset, skip.expired);
    let generation = st.rounds.get(&round).map_or(0, |r| r.generation);
    if expired || !st.rounds.contains_key(&round) {
        return gone(ctx, st, generation);
    }
    if st.rounds.get(&round).is_some_and(|r| r.mailbox != ctx.key) {
        return wrong_mailbox(ctx);
    }
    serve_page(ctx, st, round, offset, page_size)
}

fn wrong_mailbox(ctx: &Ctx<'_>) -> Response {
    graph_error(
        ctx.ids,
        StatusCode::BAD_REQUEST,
        "ErrorInvalidSyncStateData",
        "The sync state data is corrupt or otherwise invalid.",
    )
}

fn from_delta_token(
    ctx: &Ctx<'_>,
    st: &mut GraphState,
    token: &str,
    page_size: Option<usize>,
) -> Response {
    let Some(dt) = st.delta_tokens.get(token) else {
        return gone(ctx, st, 0);
    };
    if dt.expired {
        let generation = dt.generation;
        return gone(ctx, st, generation);
    }
    if dt.mailbox != ctx.key {
        return wrong_mailbox(ctx);
    }
    let folder_id = dt.folder_id.clone();
    let since = dt.snapshot.clone();
    let select = dt.select.clone();
    let page_size = page_size.or(dt.page_size);
    if st
        .mailboxes
        .get(ctx.key)
        .is_none_or(|mb| mb.folder(&folder_id).is_none())
    {
        // The folder itself is gone: nothing to sync against.
        return gone(ctx, st, 0);
    }
    let round = start_round(
        st,
        ctx.key,
        &folder_id,
        Some(&since),
        select,
        ctx.immutable,
        page_size,
    );
    serve_page(ctx, st, round, 0, page_size)
}

/// Fixes a round's items and the folder's state now; returns its number.
fn start_round(
    st: &mut GraphState,
    key: &str,
    folder_id: &str,
    since: Option<&Snapshot>,
    select: Option<Vec<String>>,
    immutable: bool,
    page_size: Option<usize>,
) -> u64 {
    let mut items = Vec::new();
    let mut snapshot = Snapshot::new();
    if let Some(mb) = st.mailboxes.get(key) {
        for m in mb.messages.iter().filter(|m| m.folder_id == folder_id) {
            snapshot.insert(m.immutable_id.clone(), (m.version, m.rest_id.clone()));
            let changed = since.is_none_or(|s| {
                s.get(&m.immutable_id)
                    .is_none_or(|(version, _)| *version != m.version)
            });
            if changed {
                items.push(DeltaItem::Upsert(m.immutable_id.clone()));
            }
        }
        if let Some(since) = since {
            // Removals in a stable order (the snapshot is a map).
            let mut gone: Vec<(&String, &(u64, String))> = since
                .iter()
                .filter(|(id, _)| !snapshot.contains_key(*id))
                .collect();
            gone.sort_by(|a, b| a.0.cmp(b.0));
            for (id, (_, rest_id)) in gone {
                let reason = if mb.message_index(id).is_some() {
                    "changed"
                } else {
                    "deleted"
                };
                let shown = if immutable {
                    id.clone()
                } else {
                    rest_id.clone()
                };
                items.push(DeltaItem::Removed(shown, reason));
            }
        }
    }
    let generation = st.next_generation();
    let number = st.next_round;
    st.next_round += 1;
    st.rounds.insert(
        number,
        DeltaRound {
            mailbox: key.to_owned(),
            folder_id: folder_id.to_owned(),
            items,
            snapshot,
            select,
            immutable,
            page_size,
            generation,
            page_tokens: HashMap::new(),
            delta_token: None,
        },
    );
    number
}

fn serve_page(
    ctx: &Ctx<'_>,
    st: &mut GraphState,
    round_no: u64,
    offset: usize,
    page_size: Option<usize>,
) -> Response {
    let default_size = st.default_page_size;
    let Some(round) = st.rounds.get(&round_no) else {
        return gone(ctx, st, 0);
    };
    let size = page_size.or(round.page_size).unwrap_or(default_size).max(1);
    let end = (offset + size).min(round.items.len());
    let immutable = round.immutable;
    let mut value = Vec::new();
    if let Some(mb) = st.mailboxes.get(&round.mailbox) {
        for item in round.items.get(offset..end).unwrap_or_default() {
            value.push(match item {
                DeltaItem::Upsert(id) => match mb.message_index(id) {
                    Some(i) => message_json(&mb.messages[i], round.select.as_deref(), immutable),
                    // Gone for good since the round started.
                    None => removed(id, "deleted"),
                },
                DeltaItem::Removed(shown, reason) => removed(shown, reason),
            });
        }
    }
    let more = end < round.items.len();
    let folder_id = round.folder_id.clone();
    let link = if more {
        let token = match st
            .rounds
            .get(&round_no)
            .and_then(|r| r.page_tokens.get(&end))
        {
            Some(t) => t.clone(),
            None => {
                let t = st.new_token();
                st.skip_tokens.insert(
                    t.clone(),
                    SkipToken {
                        round: round_no,
                        offset: end,
                        expired: false,
                    },
                );
                if let Some(r) = st.rounds.get_mut(&round_no) {
                    r.page_tokens.insert(end, t.clone());
                }
                t
            }
        };
        ("@odata.nextLink", format!("$skiptoken={token}"))
    } else {
        let existing = st.rounds.get(&round_no).and_then(|r| r.delta_token.clone());
        let token = match existing {
            Some(t) => t,
            None => {
                let t = st.new_token();
                if let Some(r) = st.rounds.get_mut(&round_no) {
                    let dt = DeltaToken {
                        mailbox: r.mailbox.clone(),
                        folder_id: r.folder_id.clone(),
                        snapshot: r.snapshot.clone(),
                        select: r.select.clone(),
                        page_size: r.page_size,
                        generation: r.generation,
                        expired: false,
                    };
                    r.delta_token = Some(t.clone());
                    st.delta_tokens.insert(t.clone(), dt);
                }
                t
            }
        };
        ("@odata.deltaLink", format!("$deltatoken={token}"))
    };
    let body = json!({
        "@odata.context": format!("{}/v1.0/$metadata#Collection(message)", ctx.sh.base_url),
        "value": value,
        link.0: format!("{}/mailFolders/{}/messages/delta?{}", ctx.user_base(), folder_id, link.1),
    });
    let mut resp = json_response(ctx.ids, StatusCode::OK, &body);
    if let Some(n) = page_size {
        add_preference_applied(&mut resp, &format!("odata.maxpagesize={n}"));
    }
    resp
}

fn removed(id: &str, reason: &str) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.message",
        "id": id,
        "@removed": { "reason": reason },
    })
}
