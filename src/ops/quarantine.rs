//! `mail2ticket quarantine`: the admin's side of the quarantine lane (see
//! [`crate::store`]): what is set aside and why, the kept raw mail, and
//! trying it again (after an upgrade) or dropping it.
//!
//! Retrying parses the kept bytes again with the reader's current
//! configuration and stores the result in one transaction, so a mail
//! becomes a ticket exactly once however often it is retried.

use crate::config::Config;
use crate::ingest;
use crate::store::{QuarantineEntry, Retried, StatusView, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "reader {reader:?} of quarantined mail {id} is no longer in {path}; add it back to retry \
         the mail, or drop it with `mail2ticket quarantine drop {id}`"
    )]
    UnknownReader {
        id: i64,
        reader: String,
        path: String,
    },
    #[error("the mail parser could not run: {0}")]
    Parser(#[from] ingest::ParseTaskFailed),
}

/// The quarantined mails as a table, oldest first.
pub fn render_list(entries: &[QuarantineEntry]) -> String {
    if entries.is_empty() {
        return "the quarantine is empty\n".to_string();
    }
    let mut out = format!(
        "{:<8} {:<16} {:<20} {:>10}  {}\n",
        "ID", "READER", "RECEIVED", "SIZE", "REASON / SUBJECT"
    );
    for e in entries {
        out.push_str(&format!(
            "{:<8} {:<16} {:<20} {:>10}  {}\n{:<58}{}\n",
            e.id,
            e.reader,
            e.received_at,
            ingest::human_size(e.size.unwrap_or(0).max(0).unsigned_abs()),
            reason_of(e),
            "",
            e.subject.as_deref().unwrap_or("(no subject)")
        ));
    }
    out.push_str(
        "retry with `mail2ticket quarantine retry ID` (or --all); read one with `quarantine show ID`\n",
    );
    out
}

/// One quarantined mail in full, without its raw bytes.
pub fn render_entry(e: &QuarantineEntry, raw_size: usize) -> String {
    let field = |name: &str, value: Option<&str>| format!("{name:<12} {}\n", value.unwrap_or("-"));
    let mut out = String::new();
    out.push_str(&field("id", Some(&e.id.to_string())));
    out.push_str(&field("reader", Some(&e.reader)));
    out.push_str(&field("received", Some(&e.received_at)));
    out.push_str(&field("reason", Some(reason_of(e))));
    out.push_str(&field("from", e.from_addr.as_deref()));
    out.push_str(&field("subject", e.subject.as_deref()));
    out.push_str(&field("message-id", e.message_id.as_deref()));
    out.push_str(&field("parse note", e.parse_note.as_deref()));
    out.push_str(&field(
        "raw mail",
        Some(&format!(
            "{} kept; print it with `mail2ticket quarantine show {} --raw`",
            ingest::human_size(raw_size as u64),
            e.id
        )),
    ));
    out
}

fn reason_of(e: &QuarantineEntry) -> &str {
    e.disposition
        .strip_prefix(crate::store::QUARANTINED)
        .unwrap_or(&e.disposition)
}

/// Lists the quarantine (read-only; creates nothing).
pub async fn list(
    config: &Config,
    reader: Option<&str>,
) -> Result<Vec<QuarantineEntry>, QuarantineError> {
    let view = StatusView::open(&config.store).await?;
    Ok(view.quarantine(reader).await?)
}

/// One quarantined mail and its raw bytes; `None` if there is none by `id`.
pub async fn show(
    config: &Config,
    id: i64,
) -> Result<Option<(QuarantineEntry, Vec<u8>)>, QuarantineError> {
    let view = StatusView::open(&config.store).await?;
    Ok(view.quarantined_mail(id).await?)
}

/// Which quarantined mails to retry.
#[derive(Debug, Clone)]
pub enum Which {
    One(i64),
    All,
}

/// Parses each chosen mail again and stores it; per mail what happened.
pub async fn retry(
    config: &Config,
    which: Which,
) -> Result<Vec<(i64, Result<Retried, QuarantineError>)>, QuarantineError> {
    let store = Store::open_existing(&config.store).await?;
    let ids = match which {
        Which::One(id) => vec![id],
        Which::All => store
            .status_view()
            .quarantine(None)
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect(),
    };
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let result = retry_one(config, &store, id).await;
        results.push((id, result));
    }
    Ok(results)
}

async fn retry_one(config: &Config, store: &Store, id: i64) -> Result<Retried, QuarantineError> {
    if store.requeue_refused(id).await? {
        return Ok(Retried::AskedAgain);
    }
    let Some((reader_name, raw)) = store.quarantined_raw(id).await? else {
        return Ok(Retried::NotQuarantined);
    };
    let Some(reader) = config.reader(&reader_name) else {
        return Err(QuarantineError::UnknownReader {
            id,
            reader: reader_name,
            path: config.path.display().to_string(),
        });
    };
    let parsed = ingest::parse_batch(
        vec![(id, ingest::Fetched::whole(raw))],
        &reader.name,
        &reader.mail.current(),
    )
    .await?;
    let Some((_, incoming)) = parsed.first() else {
        return Ok(Retried::NotQuarantined);
    };
    Ok(store.retry_quarantined(id, incoming).await?)
}

/// What became of one retried mail, for a person: `Ok` when it is stored
/// now, `Err` with the reason when it is not.
pub fn settled(result: Result<Retried, QuarantineError>) -> Result<String, String> {
    match result {
        Ok(Retried::Stored { email, disposition }) => {
            Ok(format!("stored as email {email} ({disposition})"))
        }
        Ok(Retried::StillQuarantined(why)) => Err(format!("still quarantined: {why}")),
        Ok(Retried::NotQuarantined) => Err("not in the quarantine".to_string()),
        Ok(Retried::AskedAgain) => Ok(
            "the server refused it before; the next poll asks the server for it again".to_string(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// Drops a quarantined mail; false when there is none by `id`.
pub async fn drop(config: &Config, id: i64) -> Result<bool, QuarantineError> {
    let store = Store::open_existing(&config.store).await?;
    Ok(store.drop_quarantined(id).await?)
}
