//! `mail2ticket check` for IMAP: connect, sign in, select, count what is
//! waiting, and make sure the after-step can work.

use super::contained;
use super::errors::ImapError;
use super::poll::{position, uids_since_first_contact};
use super::session::Session;
use crate::config::{After, ReaderConfig};
use crate::source::{CheckReport, FirstContactPreview, SignInSecret, SourceError};
use crate::store::Store;

/// Connects, authenticates and selects the folder; counts what is waiting,
/// and makes sure the after-step can work (a `move:` target exists).
pub async fn check(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
) -> Result<CheckReport, SourceError> {
    contained(check_inner(reader, credential, store)).await
}

async fn check_inner(
    reader: &ReaderConfig,
    credential: &SignInSecret,
    store: &Store,
) -> Result<CheckReport, SourceError> {
    let mut session = Session::open(reader, credential).await?;
    let selected = session.select(&reader.folder).await?;
    if let After::Move(folder) = &reader.after
        && !session.folder_exists(folder).await?
    {
        return Err(ImapError::NoMoveTarget {
            folder: folder.clone(),
        }
        .into());
    }
    let pos = position(reader, &selected);
    let watermark = store.watermark(&pos).await?;
    let (waiting, first_contact) = match store.imap_floor(&pos).await? {
        None if watermark == 0 => {
            let plan = session.first_contact(reader.backfill).await?;
            let preview = FirstContactPreview {
                backfill: reader.backfill,
                messages: plan.messages,
                taken: plan.taken.len(),
            };
            (plan.taken.len(), Some(preview))
        }
        floor => {
            let floor = floor.map_or(0, |f| f.floor);
            let waiting = uids_since_first_contact(&mut session, store, &pos, watermark, floor)
                .await?
                .len()
                + store.owed_uids(&pos).await?.len();
            (waiting, None)
        }
    };
    let capabilities = session.caps.names();
    session.logout().await;
    Ok(CheckReport {
        messages: selected.exists,
        waiting,
        capabilities,
        first_contact,
    })
}
