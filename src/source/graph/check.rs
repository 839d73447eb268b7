//! `mail2ticket check` for a Microsoft Graph reader: sign in (the token),
//! resolve the folder (and a `move:` target), and count the mail not yet
//! ingested.
//!
//! The count is a full delta round of the folder held against the ledger
//! (ids ingested or left by the first contact), not the folder's total
//! minus the ledger's size: the ledger also holds mail moved or deleted
//! since, so only the ids listed now tell what a poll would take. The
//! round's link is not saved; `check` changes nothing.

use std::sync::Arc;

use super::client::GraphClient;
use super::errors::GraphError;
use super::poll::{client_for, skipped_at_first_contact};
use super::token::GraphToken;
use crate::config::{After, ReaderConfig};
use crate::source::{CheckReport, FirstContactPreview, SourceError};
use crate::store::Store;

/// Authenticates, resolves the folder, and counts what is waiting.
pub async fn check(
    reader: &ReaderConfig,
    token: Arc<dyn GraphToken>,
    store: &Store,
) -> Result<CheckReport, SourceError> {
    let client = client_for(reader, token)?;
    let folder = client.resolve_folder(&reader.folder).await?;
    if let After::Move(path) = &reader.after {
        move_target_exists(&client, path).await?;
    }
    let info = client.folder_info(&folder).await?;
    let round = client.delta(&folder, None).await?;
    let ids: Vec<String> = round.items.iter().map(|i| i.id.clone()).collect();
    let known = store.graph_known(&reader.name, &ids).await?;
    let (waiting, first_contact) = if store.graph_met(&reader.name, &reader.folder).await? {
        (ids.iter().filter(|id| !known.contains(*id)).count(), None)
    } else {
        let skipped = skipped_at_first_contact(reader.backfill, &round.items);
        let taken = round.items.len().saturating_sub(skipped.len());
        let preview = FirstContactPreview {
            backfill: reader.backfill,
            messages: round.items.len(),
            taken,
        };
        (taken, Some(preview))
    };
    Ok(CheckReport {
        messages: u32::try_from(info.total).unwrap_or(u32::MAX),
        waiting,
        // What of Graph the reader relies on, all of which answered.
        capabilities: vec!["delta", "ImmutableId"],
        first_contact,
    })
}

async fn move_target_exists(client: &GraphClient, path: &str) -> Result<(), GraphError> {
    match client.resolve_folder(path).await {
        Ok(_) => Ok(()),
        Err(GraphError::NoFolder { mailbox, .. }) => Err(GraphError::NoMoveTarget {
            mailbox,
            folder: path.to_owned(),
        }),
        Err(e) => Err(e),
    }
}
