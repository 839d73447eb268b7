//! What a test does to and reads from the Graph stand-in: mailboxes,
//! folders, delivered mail, changes made "by someone else", faults, limits,
//! and the record of what the client asked.

use super::GraphServer;
use super::faults::{Fault, FaultEntry, FaultKind};
use super::state::{
    Folder, GraphMessage, GraphRequest, GraphRoute, Mailbox, Message, SentMail, new_folder_id,
    new_message_id, random_string,
};

/// The first value of header `name` in a raw mail (unfolded, trimmed).
pub(crate) fn header_value(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .split("\n\n")
        .next()
        .unwrap_or_default();
    let mut found: Option<String> = None;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = &mut found {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case(name)
        {
            found = Some(v.trim().to_owned());
        }
    }
    found
}

/// The mail's Message-ID, or one made up as Exchange does when it has none.
pub(crate) fn internet_message_id(raw: &[u8]) -> String {
    header_value(raw, "message-id")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            format!(
                "<{}@graph-stand-in.prod.outlook.com>",
                random_string(24).to_lowercase()
            )
        })
}

impl GraphServer {
    // -- Mailboxes ----------------------------------------------------------

    /// Adds a mailbox with the well-known folders (replacing one of that
    /// address). Addresses are case-insensitive.
    pub fn add_mailbox(&self, address: &str) {
        self.st()
            .mailboxes
            .insert(address.to_lowercase(), Mailbox::new(address));
    }

    /// Another address (a UPN differing from the SMTP address, an alias) the
    /// mailbox answers to in URLs and tokens.
    pub fn add_mailbox_alias(&self, mailbox: &str, alias: &str) {
        self.with_mailbox(mailbox, "add_mailbox_alias", |mb| {
            mb.aliases.push(alias.to_lowercase())
        });
    }

    /// false: the mailbox answers 404 `MailboxNotEnabledForRESTAPI`
    /// (inactive, soft-deleted, on-premises, unlicensed).
    pub fn set_rest_enabled(&self, mailbox: &str, enabled: bool) {
        self.with_mailbox(mailbox, "set_rest_enabled", |mb| mb.rest_enabled = enabled);
    }

    /// Delegated tokens of `user` may open `mailbox` (full access to a
    /// shared mailbox); otherwise only the owner's may.
    pub fn grant_mailbox_access(&self, mailbox: &str, user: &str) {
        self.with_mailbox(mailbox, "grant_mailbox_access", |mb| {
            mb.delegates.push(user.to_lowercase())
        });
    }

    fn with_mailbox<R>(&self, mailbox: &str, what: &str, f: impl FnOnce(&mut Mailbox) -> R) -> R {
        let mut st = self.st();
        let key = st
            .mailbox_key(mailbox)
            .unwrap_or_else(|| panic!("GraphServer::{what}: unknown mailbox {mailbox}"));
        let mb = st
            .mailboxes
            .get_mut(&key)
            .unwrap_or_else(|| panic!("GraphServer::{what}: unknown mailbox {mailbox}"));
        f(mb)
    }

    // -- Folders ------------------------------------------------------------

    /// Creates the folders of `path` that do not exist yet (`Inbox/Support`:
    /// the first part a well-known name or a top-level display name) and
    /// returns the id of the last.
    pub fn add_folder(&self, mailbox: &str, path: &str) -> String {
        self.with_mailbox(mailbox, "add_folder", |mb| {
            let mut parent = mb.root_id().to_owned();
            let mut walked = String::new();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                if !walked.is_empty() {
                    walked.push('/');
                }
                walked.push_str(part);
                parent = match mb.resolve_path(&walked) {
                    Some(id) => id,
                    None => {
                        let id = new_folder_id();
                        mb.folders.push(Folder {
                            id: id.clone(),
                            display_name: part.to_owned(),
                            parent_id: Some(parent.clone()),
                            well_known: None,
                        });
                        id
                    }
                };
            }
            parent
        })
    }

    /// The id of the folder at `path` (or a well-known name), if it exists.
    pub fn folder_id(&self, mailbox: &str, path: &str) -> Option<String> {
        self.with_mailbox(mailbox, "folder_id", |mb| mb.resolve_path(path))
    }

    /// Removes the folder at `path` and everything in and under it.
    pub fn remove_folder(&self, mailbox: &str, path: &str) {
        self.with_mailbox(mailbox, "remove_folder", |mb| {
            let Some(id) = mb.resolve_path(path) else {
                panic!("GraphServer::remove_folder: no folder {path}");
            };
            let mut doomed = vec![id];
            let mut i = 0;
            while i < doomed.len() {
                let children: Vec<String> = mb.children(&doomed[i]).map(|f| f.id.clone()).collect();
                doomed.extend(children);
                i += 1;
            }
            mb.folders.retain(|f| !doomed.contains(&f.id));
            mb.messages.retain(|m| !doomed.contains(&m.folder_id));
        });
    }

    // -- Mail ---------------------------------------------------------------

    /// Delivers `raw` (MIME bytes, kept exactly) into the folder at `path`,
    /// unread, received now; returns its immutable id. The
    /// internetMessageId is the mail's Message-ID (made up if it has none).
    pub fn deliver(&self, mailbox: &str, path: &str, raw: &[u8]) -> String {
        let mut st = self.st();
        let received = st.received_now();
        let key = st
            .mailbox_key(mailbox)
            .unwrap_or_else(|| panic!("GraphServer::deliver: unknown mailbox {mailbox}"));
        let mb = st
            .mailboxes
            .get_mut(&key)
            .unwrap_or_else(|| panic!("GraphServer::deliver: unknown mailbox {mailbox}"));
        let folder_id = mb
            .resolve_path(path)
            .unwrap_or_else(|| panic!("GraphServer::deliver: no folder {path} in {mailbox}"));
        let id = new_message_id(true);
        mb.messages.push(Message {
            immutable_id: id.clone(),
            rest_id: new_message_id(false),
            folder_id,
            internet_message_id: internet_message_id(raw),
            received,
            is_read: false,
            version: 1,
            subject: header_value(raw, "subject").unwrap_or_default(),
            raw: raw.to_vec(),
        });
        id
    }

    /// Shifts the receivedDateTime of mail delivered from now on by
    /// `seconds` (negative: in the past), for backfill-window tests.
    pub fn set_clock_offset(&self, seconds: i64) {
        let mut st = self.st();
        st.clock_offset = seconds;
        st.last_received = 0;
    }

    /// The mail in the folder at `path`, in delivery order.
    pub fn messages(&self, mailbox: &str, path: &str) -> Vec<GraphMessage> {
        self.with_mailbox(mailbox, "messages", |mb| {
            let Some(folder) = mb.resolve_path(path) else {
                panic!("GraphServer::messages: no folder {path} in {mailbox}");
            };
            mb.messages
                .iter()
                .filter(|m| m.folder_id == folder)
                .map(|m| mb.view(m))
                .collect()
        })
    }

    /// Every mail in the mailbox, in delivery order.
    pub fn all_messages(&self, mailbox: &str) -> Vec<GraphMessage> {
        self.with_mailbox(mailbox, "all_messages", |mb| {
            mb.messages.iter().map(|m| mb.view(m)).collect()
        })
    }

    /// One mail by either of its ids.
    pub fn message(&self, mailbox: &str, id: &str) -> Option<GraphMessage> {
        self.with_mailbox(mailbox, "message", |mb| {
            mb.message_index(id).map(|i| mb.view(&mb.messages[i]))
        })
    }

    /// Someone (the user in Outlook) marks the mail read or unread.
    pub fn set_read(&self, mailbox: &str, id: &str, read: bool) {
        self.with_mailbox(mailbox, "set_read", |mb| {
            let i = mb
                .message_index(id)
                .unwrap_or_else(|| panic!("GraphServer::set_read: no message {id}"));
            mb.messages[i].is_read = read;
            mb.messages[i].version += 1;
        });
    }

    /// Someone moves the mail to the folder at `path` (new REST id).
    pub fn move_message(&self, mailbox: &str, id: &str, path: &str) {
        self.with_mailbox(mailbox, "move_message", |mb| {
            let dest = mb
                .resolve_path(path)
                .unwrap_or_else(|| panic!("GraphServer::move_message: no folder {path}"));
            let i = mb
                .message_index(id)
                .unwrap_or_else(|| panic!("GraphServer::move_message: no message {id}"));
            let m = &mut mb.messages[i];
            m.folder_id = dest;
            m.rest_id = new_message_id(false);
            m.version += 1;
        });
    }

    /// Someone deletes the mail for good (delta: `@removed` `deleted`).
    pub fn remove_message(&self, mailbox: &str, id: &str) {
        self.with_mailbox(mailbox, "remove_message", |mb| {
            let i = mb
                .message_index(id)
                .unwrap_or_else(|| panic!("GraphServer::remove_message: no message {id}"));
            mb.messages.remove(i);
        });
    }

    /// Everything sent through `POST sendMail`, in order.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        self.st().sent.clone()
    }

    // -- Delta state ----------------------------------------------------------

    /// Every delta and skip token handed out so far for `mailbox` (all
    /// mailboxes with `None`) answers 410 `SyncStateNotFound` from now on,
    /// as when Exchange evicts sync state; tokens issued later work.
    pub fn expire_delta_tokens(&self, mailbox: Option<&str>) {
        let mut st = self.st();
        let key = mailbox.map(|m| st.mailbox_key(m).unwrap_or_else(|| m.to_lowercase()));
        let rounds: Vec<u64> = st
            .rounds
            .iter()
            .filter(|(_, r)| key.as_deref().is_none_or(|k| r.mailbox == k))
            .map(|(n, _)| *n)
            .collect();
        for token in st.skip_tokens.values_mut() {
            if rounds.contains(&token.round) {
                token.expired = true;
            }
        }
        for token in st.delta_tokens.values_mut() {
            if key.as_deref().is_none_or(|k| token.mailbox == k) {
                token.expired = true;
            }
        }
    }

    /// Page size of delta and list answers when the client states no
    /// `odata.maxpagesize` (default 10, like Graph's for messages).
    pub fn set_default_page_size(&self, size: usize) {
        self.st().default_page_size = size.max(1);
    }

    // -- Authentication ---------------------------------------------------------

    /// The token audiences accepted (default [`super::GRAPH_AUDIENCES`]).
    pub fn set_accepted_audiences(&self, audiences: &[&str]) {
        self.st().audiences = audiences.iter().map(|a| (*a).to_owned()).collect();
    }

    /// Whether delegated tokens need the route's permission in their scope
    /// (`Mail.Read`/`Mail.ReadWrite`, `Mail.ReadWrite` to change, `Mail.Send`
    /// to send). Default true.
    pub fn set_enforce_permissions(&self, enforce: bool) {
        self.st().enforce_permissions = enforce;
    }

    // -- Faults and limits --------------------------------------------------------

    /// Adds a fault (see [`Fault`]); faults are consulted in the order added.
    pub fn inject(&self, fault: Fault) {
        if let FaultKind::Status { status, .. } = &fault.kind {
            assert!(
                axum::http::StatusCode::from_u16(*status).is_ok(),
                "GraphServer::inject: invalid HTTP status {status}"
            );
        }
        self.st().faults.push(FaultEntry {
            fault,
            seen: 0,
            exhausted: false,
        });
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.st().faults.clear();
    }

    /// Faults still pending (not used up).
    pub fn pending_faults(&self) -> usize {
        self.st().faults.len()
    }

    /// More than `limit` requests in flight for one mailbox get 429
    /// `ApplicationThrottled` "…MailboxConcurrency limit." with
    /// `Retry-After: retry_after_secs` (Exchange Online allows 4). `None`
    /// (default): no limit, only [`GraphServer::max_in_flight`] records.
    pub fn set_concurrency_limit(&self, limit: Option<usize>, retry_after_secs: u64) {
        self.st().concurrency_limit = limit.map(|l| (l, retry_after_secs));
    }

    // -- Observation --------------------------------------------------------------

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<GraphRequest> {
        self.st().log.clone()
    }

    /// Requests of `route` (all mailboxes, whatever the answer).
    pub fn count(&self, route: GraphRoute) -> usize {
        self.st().log.iter().filter(|r| r.route == route).count()
    }

    /// Requests of `route` addressing `mailbox`.
    pub fn count_for(&self, mailbox: &str, route: GraphRoute) -> usize {
        let st = self.st();
        let key = st
            .mailbox_key(mailbox)
            .unwrap_or_else(|| mailbox.to_lowercase());
        st.log
            .iter()
            .filter(|r| r.route == route && r.mailbox.as_deref() == Some(key.as_str()))
            .count()
    }

    /// All requests.
    pub fn total_requests(&self) -> usize {
        self.st().log.len()
    }

    /// Forgets the request log and the in-flight maxima (e.g. after setup).
    pub fn reset_requests(&self) {
        let mut st = self.st();
        st.log.clear();
        st.max_in_flight.clear();
    }

    /// The most requests ever in flight at once for `mailbox`.
    pub fn max_in_flight(&self, mailbox: &str) -> usize {
        let st = self.st();
        let key = st
            .mailbox_key(mailbox)
            .unwrap_or_else(|| mailbox.to_lowercase());
        st.max_in_flight.get(&key).copied().unwrap_or(0)
    }

    /// Requests in flight right now for `mailbox`.
    pub fn in_flight(&self, mailbox: &str) -> usize {
        let st = self.st();
        let key = st
            .mailbox_key(mailbox)
            .unwrap_or_else(|| mailbox.to_lowercase());
        st.in_flight.get(&key).copied().unwrap_or(0)
    }
}
