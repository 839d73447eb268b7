//! `GraphServer`: an imitation of the Microsoft Graph v1.0 mail API for the
//! mailboxes of one tenant, validating bearer tokens against the
//! identity-provider stand-in ([`crate::IdP`]) in process.
//!
//! Like the IdP it runs on its own OS thread with its own tokio runtime, so
//! it answers whatever the test thread does, and stops on Drop. It serves
//! HTTPS on 127.0.0.1 with a certificate from a [`TestPki`]
//! ([`GraphServer::start`]) or plain HTTP for `tls = "none"` loopback tests
//! ([`GraphServer::start_plain`]).
//!
//! It imitates what a mail client observes of Graph — paths, query options,
//! `Prefer` headers, `@odata.*` annotations, status codes and error bodies
//! (`{"error":{"code","message","innerError"}}`) — so a Graph reader can be
//! tested end to end, faults included. Mail lives in memory; ids are opaque
//! random strings.
//!
//! # Routes (`/v1.0/users/{address}/…`, or `/v1.0/me/…` with a delegated token)
//! - `GET mailFolders`, `GET mailFolders/{id}/childFolders`: pages of
//!   `mailFolder` (default 10, `$top`, `$skip`, `@odata.nextLink`), with
//!   `$filter=displayName eq '…'` (the one filter a client resolving
//!   "Inbox/Support" needs; others answer 400). `GET mailFolders/{id}`: one
//!   folder. `{id}` is a folder id or a well-known name (`inbox`, `archive`,
//!   `deleteditems`, `sentitems`, `drafts`, `junkemail`, `msgfolderroot`);
//!   a display name is not an id (400 `ErrorInvalidIdMalformed`).
//! - `GET mailFolders/{id}/messages/delta`: delta query (see `delta.rs`):
//!   `$select`, `Prefer: odata.maxpagesize=N` (default 10), pages linked by
//!   `@odata.nextLink` (`$skiptoken`), the last with `@odata.deltaLink`
//!   (`$deltatoken`); a delta link answers only the changes since, with
//!   `{"@removed":{"reason":…},"id":…}` for mail gone from the folder.
//! - `GET mailFolders/{id}/messages` (a page of messages), `GET
//!   messages/{id}` (one, `$select`), `GET messages/{id}/$value` (the MIME
//!   bytes as delivered).
//! - `PATCH messages/{id}` (`isRead`; 200 with the message), `POST
//!   messages/{id}/move` (`destinationId`; 201 with the moved message),
//!   `DELETE messages/{id}` (204; into Deleted Items, gone for good from
//!   there).
//! - `POST sendMail`: `Content-Type: text/plain` with base64 MIME (or the
//!   JSON form) → 202, captured ([`GraphServer::sent_mail`]) and saved in
//!   Sent Items.
//!
//! `Prefer: IdType="ImmutableId"` is honoured (`Preference-Applied`): ids
//! then stay the same across moves; without it a move gives the message a
//! new id, as Graph does. Either id is accepted in URLs. Whether the client
//! asked is in the request log ([`GraphRequest::prefer`]).
//!
//! # Authentication and access (`auth.rs`)
//! Missing, unknown or expired bearer token: 401 `InvalidAuthenticationToken`
//! with `WWW-Authenticate`; a token for another resource (Outlook): 401
//! "Invalid audience"; a delegated token for someone else's mailbox (not
//! granted with [`GraphServer::grant_mailbox_access`]): 403
//! `ErrorAccessDenied`; an app-only token for a mailbox the IdP did not
//! grant ([`crate::IdP::grant_app_access`]): 403 `ErrorAccessDenied` "Access
//! to OData is disabled: \[RAOP\] …" (ApplicationAccessPolicy); a delegated
//! token without the permission a route needs (`Mail.Read`/`Mail.ReadWrite`
//! to read, `Mail.ReadWrite` to change, `Mail.Send` to send): 403; an
//! unknown mailbox: 404 `ErrorInvalidUser`; a mailbox marked not
//! REST-enabled: 404 `MailboxNotEnabledForRESTAPI`.
//!
//! # Faults and observation
//! [`GraphServer::inject`] takes a [`Fault`]: 429 with `Retry-After` and
//! Graph's throttling body, 503, 410 `SyncStateNotFound` on delta links,
//! any status and body, a dropped connection (before or after the request
//! took effect), a delay; each for the next N requests, a deterministic
//! fraction or all, scoped to a route and/or a mailbox.
//! [`GraphServer::set_concurrency_limit`] answers 429 `MailboxConcurrency`
//! above N requests in flight per mailbox, as Exchange Online does (4).
//! [`GraphServer::expire_delta_tokens`] makes every delta link issued so far
//! answer 410. The request log ([`GraphServer::requests`],
//! [`GraphServer::count`], [`GraphServer::count_for`]) and
//! [`GraphServer::max_in_flight`] show what the client did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::certs::TestPki;
use crate::idp::{IdP, IdpLookup};

mod auth;
mod control;
mod delta;
mod dispatch;
mod faults;
mod folders;
mod messages;
mod responses;
mod send;
mod server;
mod state;

pub use auth::{ACCESS_DENIED, APP_ACCESS_DENIED};
pub use faults::Fault;
pub use state::{GraphMessage, GraphRequest, GraphRoute, SentMail};

use state::GraphState;

/// The audiences Graph accepts by default: the global cloud and the
/// sovereign ones a reader may be configured for.
pub const GRAPH_AUDIENCES: [&str; 4] = [
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
];

/// What the handlers share: the base URL links are built on, the IdP
/// handle tokens are checked with, and the mailboxes and bookkeeping.
pub(crate) struct Shared {
    pub(crate) base_url: String,
    pub(crate) idp: IdpLookup,
    pub(crate) state: Mutex<GraphState>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, GraphState> {
        // A panicking handler must not take the whole server down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The imitation Microsoft Graph. See the module docs.
pub struct GraphServer {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GraphServer {
    /// Binds 127.0.0.1:0 and serves HTTPS with `pki`'s server certificate
    /// (generate it for `127.0.0.1` and/or `localhost`; clients trust
    /// `pki.ca_pem`). Synchronous.
    pub fn start(idp: &IdP, pki: &TestPki) -> GraphServer {
        let config = server::tls_config(pki);
        GraphServer::start_with(idp, Some(config))
    }

    /// Binds 127.0.0.1:0 and serves plain HTTP (for `tls = "none"` loopback
    /// tests). Synchronous.
    pub fn start_plain(idp: &IdP) -> GraphServer {
        GraphServer::start_with(idp, None)
    }

    fn start_with(idp: &IdP, tls: Option<Arc<rustls::ServerConfig>>) -> GraphServer {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("Graph: cannot bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("Graph: cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("Graph: no local address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            base_url: format!("{scheme}://{addr}"),
            idp: idp.lookup(),
            state: Mutex::new(GraphState::new()),
        });
        let is_tls = tls.is_some();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serve_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("graph-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("Graph: cannot build a tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("Graph: cannot register the listener with tokio");
                    tokio::select! {
                        () = server::accept_loop(listener, tls, serve_shared) => {}
                        _ = rx => {}
                    }
                });
                // Cancel connection tasks still open (keep-alive clients).
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("Graph: cannot spawn the server thread");
        GraphServer {
            addr,
            tls: is_tls,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub(crate) fn st(&self) -> MutexGuard<'_, GraphState> {
        self.shared.lock()
    }

    /// `https://127.0.0.1:PORT` (or `http://…` for [`GraphServer::start_plain`]).
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `127.0.0.1` — what a reader's `host` names.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl Drop for GraphServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts by key, for the request counters.
pub(crate) type Counts = HashMap<String, usize>;
