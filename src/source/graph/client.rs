//! The Microsoft Graph HTTP client of one mailbox: everything the Graph
//! reader and the Graph acknowledgements say to Graph v1.0, and nothing of
//! the reader's own (configuration, the ledger, the token store).
//!
//! It owns: the HTTPS client and its trust (the bundled web PKI roots plus
//! an optional `ca_file`, exactly as [`crate::transport::tls_config`]
//! decides for IMAP; plain HTTP only to a loopback host), the request rules every
//! call follows (`Prefer: IdType="ImmutableId"`, at most
//! [`MAILBOX_CONCURRENCY`] requests in flight per mailbox, retries in
//! `http.rs`), and the operations: resolving a folder path to an id, delta
//! rounds page by page (`delta.rs`), the MIME of a message (capped), the after-steps
//! (mark read, move, delete), and sendMail.
//!
//! The bearer token comes from a [`GraphToken`] the caller plugs in; a 401
//! makes the client report the token refused and ask for a new one, once.
//! While it waits out a 429 or an outage it tells the [`WaitHook`], so the
//! reader can show "throttled by Microsoft Graph, retrying in Ns" in
//! `last_error` as it happens; when the retry budget is spent the error
//! says so ([`GraphError::Throttled`] carries the wait).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use super::errors::{GraphError, is_app_policy};
use super::http::{Body, Call, Read, Reply, RetryPolicy, WaitHook, new_gate};
use super::token::GraphToken;
use super::wire::{FolderJson, Page, odata_string, query_value};

/// Graph of the global cloud.
pub const DEFAULT_BASE_URL: &str = "https://graph.microsoft.com";

/// Requests in flight per mailbox: Exchange Online answers 429
/// "MailboxConcurrency" above four.
pub const MAILBOX_CONCURRENCY: usize = 4;

/// Folders Graph knows by a well-known name in place of an id.
pub const WELL_KNOWN_FOLDERS: [&str; 6] = [
    "inbox",
    "archive",
    "deleteditems",
    "sentitems",
    "drafts",
    "junkemail",
];

/// What a [`GraphClient`] is built from.
#[derive(Debug, Clone)]
pub struct GraphOptions {
    /// `https://graph.microsoft.com` (or a sovereign cloud's host); `http:`
    /// only for a loopback host.
    pub base_url: String,
    /// A CA to trust besides the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Bounds connecting, the wait for an answer, and each pause while an
    /// answer arrives.
    pub timeout: Duration,
    /// The mailbox: `/users/{mailbox}`.
    pub mailbox: String,
    /// The token is app-only (client credentials): changes what an access
    /// denial tells the admin to grant.
    pub app_only: bool,
    /// `Prefer: odata.maxpagesize` of delta rounds.
    pub page_size: u32,
    pub retry: RetryPolicy,
}

impl GraphOptions {
    /// Defaults for `mailbox` on the global cloud.
    pub fn new(mailbox: &str) -> GraphOptions {
        GraphOptions {
            base_url: DEFAULT_BASE_URL.to_owned(),
            ca_file: None,
            timeout: Duration::from_secs(60),
            mailbox: mailbox.to_owned(),
            app_only: false,
            page_size: 50,
            retry: RetryPolicy::default(),
        }
    }
}

/// A folder resolved to its id; `path` is what it was resolved from (or
/// the id), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderId {
    pub id: String,
    pub path: String,
}

impl FolderId {
    /// A folder known by id (e.g. one kept from an earlier resolve).
    pub fn new(id: &str) -> FolderId {
        FolderId {
            id: id.to_owned(),
            path: id.to_owned(),
        }
    }
}

/// What a folder holds, as Graph counts it (for `check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub display_name: String,
    pub total: u64,
    pub unread: u64,
}

/// A message's MIME, whole or up to the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mime {
    pub bytes: Vec<u8>,
    /// The message is longer than the cap; `bytes` is its start.
    pub truncated: bool,
}

/// What an after-step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStep {
    Done,
    /// 404 `ErrorItemNotFound`: the message is no longer there (deleted or
    /// moved by someone, or by an earlier try whose answer was lost).
    AlreadyGone,
}

/// The Graph client of one mailbox; see the module doc. Cheap to clone.
#[derive(Clone)]
pub struct GraphClient {
    pub(super) http: reqwest::Client,
    pub(super) base: Url,
    pub(super) mailbox: String,
    pub(super) timeout: Duration,
    pub(super) page_size: u32,
    pub(super) app_only: bool,
    pub(super) retry: RetryPolicy,
    pub(super) token: Arc<dyn GraphToken>,
    pub(super) on_wait: Option<WaitHook>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token source: nothing of a credential in Debug output.
        f.debug_struct("GraphClient")
            .field("base", &self.base.as_str())
            .field("mailbox", &self.mailbox)
            .field("timeout", &self.timeout)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

/// The in-flight bounds, one per Graph host and mailbox, shared by every
/// client of the process (two readers of one mailbox share Exchange's
/// limit too). Held weakly: a bound lives as long as a client uses it.
pub(super) fn gate_for(base: &Url, mailbox: &str) -> Arc<Semaphore> {
    static GATES: OnceLock<Mutex<HashMap<String, Weak<Semaphore>>>> = OnceLock::new();
    let key = format!(
        "{}|{}",
        base.origin().ascii_serialization(),
        mailbox.to_lowercase()
    );
    let mut gates = GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(gate) = gates.get(&key).and_then(Weak::upgrade) {
        return gate;
    }
    gates.retain(|_, g| g.strong_count() > 0);
    let gate = new_gate();
    gates.insert(key, Arc::downgrade(&gate));
    gate
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

impl GraphClient {
    pub fn new(
        options: GraphOptions,
        token: Arc<dyn GraphToken>,
    ) -> Result<GraphClient, GraphError> {
        let bad = |reason: &str| GraphError::BadUrl {
            url: options.base_url.clone(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(&options.base_url).map_err(|e| bad(&e.to_string()))?;
        let host = base.host().ok_or_else(|| bad("it names no host"))?;
        match base.scheme() {
            "https" => {}
            // Plain text carries the bearer token in the clear: only where
            // it never leaves the machine, as tls = "none" for IMAP.
            "http" if is_loopback(&host) => {}
            "http" => return Err(bad("plain http is allowed only to a loopback host")),
            _ => return Err(bad("not an https URL")),
        }
        if options.mailbox.trim().is_empty() {
            return Err(bad("no mailbox given"));
        }
        let tls = crate::transport::tls_config(options.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(Arc::unwrap_or_clone(tls))
            // A redirect could carry the bearer token elsewhere; Graph's
            // mail API does not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.timeout.min(Duration::from_secs(30)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("mail2ticket/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::transport::ConnectError::Tls(e.to_string()))?;
        Ok(GraphClient {
            http,
            base,
            mailbox: options.mailbox.trim().to_owned(),
            timeout: options.timeout,
            page_size: options.page_size.max(1),
            app_only: options.app_only,
            retry: options.retry,
            token,
            on_wait: None,
        })
    }

    /// Tells `hook` about every wait before a retry.
    pub fn with_wait_hook(mut self, hook: WaitHook) -> GraphClient {
        self.on_wait = Some(hook);
        self
    }

    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }

    /// `{base}/v1.0/users/{user}/{segments…}`, each segment encoded.
    pub(super) fn url(&self, user: &str, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            // `base` was checked to have a host, so it can be a base.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty().push("v1.0").push("users").push(user);
                path.extend(segments);
            }
        }
        url
    }

    pub(super) fn call(&self, step: &'static str, method: Method, url: Url) -> Call {
        Call {
            step,
            method,
            url,
            body: Body::None,
            prefer: None,
            read: Read::Json,
            mailbox: self.mailbox.clone(),
            once: false,
        }
    }

    /// A link Graph gave (nextLink, deltaLink), followed exactly as given,
    /// but only to the Graph host this client talks to: the bearer token
    /// goes with it.
    pub(super) fn own_link(&self, link: &str) -> Result<Url, String> {
        let url = Url::parse(link).map_err(|e| format!("{link:?} is not a URL: {e}"))?;
        if url.origin() != self.base.origin() {
            return Err(format!(
                "{link:?} points away from {}",
                self.base.origin().ascii_serialization()
            ));
        }
        Ok(url)
    }

    /// A refusal that is not the operation's own to sort, in the admin's
    /// terms.
    pub(super) fn refusal(&self, step: &'static str, mailbox: &str, reply: Reply) -> GraphError {
        let code = reply.code.as_str();
        if reply.status == 403 && (code.contains("AccessDenied") || is_app_policy(&reply.message)) {
            return if is_app_policy(&reply.message) {
                GraphError::AppAccessBlocked {
                    mailbox: mailbox.to_owned(),
                    message: reply.message,
                }
            } else {
                GraphError::AccessDenied {
                    mailbox: mailbox.to_owned(),
                    message: reply.message,
                    app_only: self.app_only,
                }
            };
        }
        if [
            "MailboxNotEnabledForRESTAPI",
            "MailboxNotSupportedForRESTAPI",
            "ErrorInvalidUser",
            "ResourceNotFound",
            "ErrorNonExistentMailbox",
        ]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(code))
        {
            return GraphError::MailboxUnusable {
                mailbox: mailbox.to_owned(),
                code: reply.code,
                message: reply.message,
            };
        }
        GraphError::Refused {
            step,
            status: reply.status,
            code: reply.code,
            message: reply.message,
        }
    }

    pub(super) fn parse<T: DeserializeOwned>(
        step: &'static str,
        reply: &Reply,
    ) -> Result<T, GraphError> {
        serde_json::from_slice(&reply.body).map_err(|e| GraphError::BadAnswer {
            step,
            detail: e.to_string(),
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, call: Call) -> Result<T, GraphError> {
        let step = call.step;
        let reply = self.exchange(call).await?;
        if !reply.is_success() {
            return Err(self.refusal(step, &self.mailbox, reply));
        }
        Self::parse(step, &reply)
    }

    // -- Folders ---------------------------------------------------------------

    /// The id of the folder `path`: a well-known name (`inbox`, `archive`,
    /// …, any case) or a path of display names whose first part is a
    /// well-known name or a top-level folder (`Inbox/Support`).
    pub async fn resolve_folder(&self, path: &str) -> Result<FolderId, GraphError> {
        let parts: Vec<&str> = path
            .split('/')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let no_folder = |missing: &str, parent: Option<&str>| GraphError::NoFolder {
            mailbox: self.mailbox.clone(),
            path: path.to_owned(),
            missing: missing.to_owned(),
            parent: parent.map(str::to_owned),
        };
        let Some((first, rest)) = parts.split_first() else {
            return Err(no_folder(path, None));
        };
        let well_known = first.to_ascii_lowercase();
        let mut id = if WELL_KNOWN_FOLDERS.contains(&well_known.as_str()) {
            let call = self.call(
                "resolving the folder",
                Method::GET,
                self.url(&self.mailbox, &["mailFolders", &well_known]),
            );
            let reply = self.exchange(call).await?;
            match reply.status {
                s if (200..300).contains(&s) => {
                    Self::parse::<FolderJson>("resolving the folder", &reply)?.id
                }
                // A well-known folder the mailbox does not have (an archive
                // never enabled).
                404 if !self.is_mailbox_code(&reply.code) => {
                    return Err(no_folder(first, None));
                }
                _ => return Err(self.refusal("resolving the folder", &self.mailbox, reply)),
            }
        } else {
            match self.child_folder(None, first).await? {
                Some(id) => id,
                None => return Err(no_folder(first, None)),
            }
        };
        let mut walked = (*first).to_owned();
        for part in rest {
            id = match self.child_folder(Some(&id), part).await? {
                Some(child) => child,
                None => return Err(no_folder(part, Some(&walked))),
            };
            walked.push('/');
            walked.push_str(part);
        }
        Ok(FolderId {
            id,
            path: parts.join("/"),
        })
    }

    /// The folder's name and message counts (one request).
    pub async fn folder_info(&self, folder: &FolderId) -> Result<FolderInfo, GraphError> {
        let call = self.call(
            "reading the folder",
            Method::GET,
            self.url(&self.mailbox, &["mailFolders", &folder.id]),
        );
        let f: FolderJson = self.get_json(call).await?;
        Ok(FolderInfo {
            display_name: f.display_name,
            total: f.total_item_count,
            unread: f.unread_item_count,
        })
    }

    fn is_mailbox_code(&self, code: &str) -> bool {
        [
            "MailboxNotEnabledForRESTAPI",
            "ErrorInvalidUser",
            "ResourceNotFound",
        ]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(code))
    }

    /// The id of the folder named `name` under `parent` (the top of the
    /// mailbox for `None`), following every page of the filtered list.
    async fn child_folder(
        &self,
        parent: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, GraphError> {
        let mut url = match parent {
            Some(p) => self.url(&self.mailbox, &["mailFolders", p, "childFolders"]),
            None => self.url(&self.mailbox, &["mailFolders"]),
        };
        let filter = format!("displayName eq {}", odata_string(name));
        url.set_query(Some(&format!("$filter={}", query_value(&filter))));
        let step = "resolving the folder";
        loop {
            let page: Page<FolderJson> = self.get_json(self.call(step, Method::GET, url)).await?;
            // Graph compares display names without case; so do we, in case
            // a server ignores the filter.
            if let Some(f) = page
                .value
                .into_iter()
                .find(|f| f.display_name.eq_ignore_ascii_case(name))
            {
                return Ok(Some(f.id));
            }
            match page.next_link {
                Some(link) => {
                    url = self
                        .own_link(&link)
                        .map_err(|detail| GraphError::BadAnswer { step, detail })?;
                }
                None => return Ok(None),
            }
        }
    }

    // -- Messages ------------------------------------------------------------------

    /// The MIME of message `id`, at most `cap` bytes of it.
    pub async fn fetch_mime(&self, id: &str, cap: u64) -> Result<Mime, GraphError> {
        let step = "fetching a message";
        let mut call = self.call(
            step,
            Method::GET,
            self.url(&self.mailbox, &["messages", id, "$value"]),
        );
        call.read = Read::Capped(cap);
        let reply = self.exchange(call).await?;
        if reply.is_success() {
            return Ok(Mime {
                bytes: reply.body,
                truncated: reply.truncated,
            });
        }
        if reply.status == 404 && reply.code.eq_ignore_ascii_case("ErrorItemNotFound") {
            return Err(GraphError::MessageGone {
                mailbox: self.mailbox.clone(),
                id: id.to_owned(),
            });
        }
        Err(self.refusal(step, &self.mailbox, reply))
    }

    /// The MIME of each of `ids` (each at most `cap` bytes), up to
    /// `max_concurrency` at once, never more than the mailbox's bound;
    /// results in the order of `ids`.
    pub async fn fetch_many(
        &self,
        ids: &[String],
        cap: u64,
        max_concurrency: usize,
    ) -> Vec<(String, Result<Mime, GraphError>)> {
        let width = max_concurrency.clamp(1, MAILBOX_CONCURRENCY);
        futures::stream::iter(ids.iter().cloned())
            .map(|id| async move {
                let mime = self.fetch_mime(&id, cap).await;
                (id, mime)
            })
            .buffered(width)
            .collect()
            .await
    }

    /// PATCH `isRead: true`.
    pub async fn mark_read(&self, id: &str) -> Result<AfterStep, GraphError> {
        let mut call = self.call(
            "marking a message read",
            Method::PATCH,
            self.url(&self.mailbox, &["messages", id]),
        );
        call.body = Body::Json(serde_json::json!({ "isRead": true }));
        self.after_step(call).await
    }

    /// POST `move` to `folder`.
    pub async fn move_to(&self, id: &str, folder: &FolderId) -> Result<AfterStep, GraphError> {
        let step = "moving a message";
        let mut call = self.call(
            step,
            Method::POST,
            self.url(&self.mailbox, &["messages", id, "move"]),
        );
        call.body = Body::Json(serde_json::json!({ "destinationId": folder.id }));
        match self.after_step(call).await? {
            AfterStep::Done => Ok(AfterStep::Done),
            // Graph says ErrorItemNotFound for a missing destination too:
            // only a message that is really gone is "already gone".
            AfterStep::AlreadyGone => {
                let mut url = self.url(&self.mailbox, &["messages", id]);
                url.set_query(Some("$select=id"));
                let reply = self.exchange(self.call(step, Method::GET, url)).await?;
                if reply.is_success() {
                    Err(GraphError::NoMoveTarget {
                        mailbox: self.mailbox.clone(),
                        folder: folder.path.clone(),
                    })
                } else if reply.status == 404 {
                    Ok(AfterStep::AlreadyGone)
                } else {
                    Err(self.refusal(step, &self.mailbox, reply))
                }
            }
        }
    }

    /// DELETE (into Deleted Items, as Outlook's delete).
    pub async fn delete(&self, id: &str) -> Result<AfterStep, GraphError> {
        let call = self.call(
            "deleting a message",
            Method::DELETE,
            self.url(&self.mailbox, &["messages", id]),
        );
        self.after_step(call).await
    }

    async fn after_step(&self, call: Call) -> Result<AfterStep, GraphError> {
        let step = call.step;
        let reply = self.exchange(call).await?;
        if reply.is_success() {
            return Ok(AfterStep::Done);
        }
        if reply.status == 404 && reply.code.eq_ignore_ascii_case("ErrorItemNotFound") {
            return Ok(AfterStep::AlreadyGone);
        }
        Err(self.refusal(step, &self.mailbox, reply))
    }

    /// Sends `mime` as `from` (POST `/users/{from}/sendMail`, the MIME in
    /// base64). Throttling and outages are retried; a connection that
    /// breaks after the request went out is [`GraphError::SendUncertain`]
    /// (a retry could send the mail twice; the outbox decides).
    pub async fn send_mail(&self, from: &str, mime: &[u8]) -> Result<(), GraphError> {
        let step = "sendMail";
        let mut call = self.call(step, Method::POST, self.url(from, &["sendMail"]));
        call.body = Body::Text(base64::engine::general_purpose::STANDARD.encode(mime));
        call.mailbox = from.to_owned();
        call.once = true;
        let reply = self.exchange(call).await?;
        if reply.is_success() {
            return Ok(());
        }
        Err(self.refusal(step, from, reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::graph::StaticToken;

    fn client(base: &str) -> Result<GraphClient, GraphError> {
        let mut options = GraphOptions::new("helpdesk@contoso.example");
        options.base_url = base.to_owned();
        GraphClient::new(options, Arc::new(StaticToken::new("t".to_owned().into())))
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(client("http://127.0.0.1:8080").is_ok());
        assert!(client("http://localhost:8080").is_ok());
        assert!(client("https://graph.microsoft.com").is_ok());
        let err = client("http://graph.microsoft.com").expect_err("plain to a remote host");
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(err.is_misconfigured());
        assert!(client("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn urls_encode_segments_and_links_stay_on_the_host() {
        let c = client("https://graph.example").expect("client");
        let url = c.url("a b@x", &["messages", "A/B=", "$value"]);
        assert_eq!(
            url.as_str(),
            "https://graph.example/v1.0/users/a%20b@x/messages/A%2FB=/$value"
        );
        assert!(
            c.own_link("https://graph.example/v1.0/x?$skiptoken=1")
                .is_ok()
        );
        assert!(c.own_link("https://evil.example/v1.0/x").is_err());
        assert!(c.own_link("http://graph.example/v1.0/x").is_err());
    }
}
