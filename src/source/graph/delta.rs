//! Delta rounds of a folder: the first page asked for with a small
//! `$select` (or the stored delta link), every `@odata.nextLink` followed
//! as given, `@removed` entries told apart from new and changed mail, the
//! `@odata.deltaLink` handed back on the last page; and an expired sync
//! state (410 `SyncStateNotFound`) as [`GraphError::DeltaExpired`].

use reqwest::Method;
use url::Url;

use super::client::{FolderId, GraphClient};
use super::errors::GraphError;
use super::wire::{DeltaJson, Page};

/// The message properties a delta round asks for.
const DELTA_SELECT: &str = "id,internetMessageId,receivedDateTime,isRead";

/// A message a delta round lists as new or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaItem {
    /// The immutable id: the ledger's key.
    pub id: String,
    pub internet_message_id: Option<String>,
    /// `receivedDateTime` as Graph wrote it (ISO 8601, UTC).
    pub received: Option<String>,
    pub is_read: bool,
}

/// One page of a delta round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaPage {
    pub items: Vec<DeltaItem>,
    /// Ids gone from the folder (`@removed`).
    pub removed: Vec<String>,
    /// Set on the last page: the link the next round starts from.
    pub delta_link: Option<String>,
}

/// A whole delta round, collected by [`GraphClient::delta`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaRound {
    pub items: Vec<DeltaItem>,
    pub removed: Vec<String>,
    pub delta_link: String,
    pub pages: usize,
}

impl GraphClient {
    /// A delta round of `folder`, page by page: from `delta_link` (the
    /// last round's) or, with `None`, a full sync. Pages are asked for one
    /// at a time, so a first sync of a large folder is never all in memory.
    pub fn delta_pages(
        &self,
        folder: &FolderId,
        delta_link: Option<&str>,
    ) -> Result<DeltaPager<'_>, GraphError> {
        let first = match delta_link {
            Some(link) => self.own_link(link).map_err(|reason| GraphError::BadUrl {
                url: link.to_owned(),
                reason,
            })?,
            None => {
                let mut url = self.url(
                    &self.mailbox,
                    &["mailFolders", &folder.id, "messages", "delta"],
                );
                url.set_query(Some(&format!("$select={DELTA_SELECT}")));
                url
            }
        };
        Ok(DeltaPager {
            client: self,
            folder: folder.clone(),
            next: Some(first),
        })
    }

    /// A whole delta round, collected (see [`GraphClient::delta_pages`]
    /// for a folder too large to hold).
    pub async fn delta(
        &self,
        folder: &FolderId,
        delta_link: Option<&str>,
    ) -> Result<DeltaRound, GraphError> {
        let mut pager = self.delta_pages(folder, delta_link)?;
        let mut round = DeltaRound::default();
        while let Some(page) = pager.next_page().await? {
            round.pages += 1;
            round.items.extend(page.items);
            round.removed.extend(page.removed);
            if let Some(link) = page.delta_link {
                round.delta_link = link;
            }
        }
        Ok(round)
    }
}

/// A delta round in progress; see [`GraphClient::delta_pages`].
pub struct DeltaPager<'c> {
    client: &'c GraphClient,
    folder: FolderId,
    next: Option<Url>,
}

impl DeltaPager<'_> {
    /// The next page, `None` once the page with the delta link was given.
    /// [`GraphError::DeltaExpired`] when the link's sync state is gone.
    pub async fn next_page(&mut self) -> Result<Option<DeltaPage>, GraphError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let step = "the delta query";
        let client = self.client;
        let mut call = client.call(step, Method::GET, url);
        call.prefer = Some(format!("odata.maxpagesize={}", client.page_size));
        let reply = client.exchange(call).await?;
        if !reply.is_success() {
            let code = reply.code.as_str();
            let gone = reply.status == 410
                || [
                    "SyncStateNotFound",
                    "ErrorInvalidSyncStateData",
                    "SyncStateInvalid",
                ]
                .iter()
                .any(|c| c.eq_ignore_ascii_case(code));
            if gone {
                return Err(GraphError::DeltaExpired {
                    folder: self.folder.path.clone(),
                    code: if code.is_empty() {
                        format!("HTTP {}", reply.status)
                    } else {
                        reply.code
                    },
                });
            }
            return Err(client.refusal(step, &client.mailbox, reply));
        }
        let page: Page<DeltaJson> = GraphClient::parse(step, &reply)?;
        let mut out = DeltaPage::default();
        for entry in page.value {
            if entry.removed.is_some() {
                out.removed.push(entry.id);
            } else {
                out.items.push(DeltaItem {
                    id: entry.id,
                    internet_message_id: entry.internet_message_id,
                    received: entry.received,
                    is_read: entry.is_read.unwrap_or(false),
                });
            }
        }
        match (page.next_link, page.delta_link) {
            (Some(next), _) => {
                self.next = Some(
                    client
                        .own_link(&next)
                        .map_err(|detail| GraphError::BadAnswer { step, detail })?,
                );
            }
            (None, Some(delta)) => out.delta_link = Some(delta),
            (None, None) => {
                return Err(GraphError::BadAnswer {
                    step,
                    detail: "a delta page with neither @odata.nextLink nor @odata.deltaLink".into(),
                });
            }
        }
        Ok(Some(out))
    }
}
