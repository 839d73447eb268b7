//! The Graph stand-in's state: mailboxes with their folders and messages,
//! the delta rounds and links handed out, injected faults, the request log
//! and the in-flight counts; plus the public views tests read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::delta::Snapshot;
use super::faults::FaultEntry;
use super::{Counts, GRAPH_AUDIENCES};
use crate::time::{graph_timestamp, unix_now};

/// Which operation a request asked for (for counters and fault scopes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GraphRoute {
    /// `GET mailFolders/{id}`
    GetFolder,
    /// `GET mailFolders`
    ListFolders,
    /// `GET mailFolders/{id}/childFolders`
    ListChildFolders,
    /// `GET mailFolders/{id}/messages`
    ListMessages,
    /// `GET mailFolders/{id}/messages/delta`
    Delta,
    /// `GET messages/{id}`
    GetMessage,
    /// `GET messages/{id}/$value`
    MessageValue,
    /// `PATCH messages/{id}`
    UpdateMessage,
    /// `POST messages/{id}/move`
    MoveMessage,
    /// `DELETE messages/{id}`
    DeleteMessage,
    /// `POST sendMail`
    SendMail,
    /// Anything else (answered 400/405).
    Other,
}

impl GraphRoute {
    /// Whether the route only reads.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            GraphRoute::GetFolder
                | GraphRoute::ListFolders
                | GraphRoute::ListChildFolders
                | GraphRoute::ListMessages
                | GraphRoute::Delta
                | GraphRoute::GetMessage
                | GraphRoute::MessageValue
        )
    }
}

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct GraphRequest {
    pub method: String,
    /// Path and query as sent (still percent-encoded).
    pub path_and_query: String,
    pub route: GraphRoute,
    /// The mailbox addressed, lower-cased (`/me` resolved through the token
    /// when it can be), `None` for requests naming none.
    pub mailbox: Option<String>,
    /// Every `Prefer` header value, as sent.
    pub prefer: Vec<String>,
    /// The answer's status; 0 while in flight or when the connection was
    /// dropped on purpose.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl GraphRequest {
    /// Whether it asked for immutable ids (`Prefer: IdType="ImmutableId"`).
    pub fn prefers_immutable_ids(&self) -> bool {
        self.prefer.iter().any(|p| prefers_immutable(p))
    }
}

/// A message as a test sees it.
#[derive(Clone, Debug)]
pub struct GraphMessage {
    /// The immutable id (what `Prefer: IdType="ImmutableId"` answers).
    pub id: String,
    /// The current REST id (changes on every move).
    pub rest_id: String,
    pub internet_message_id: String,
    /// `2026-01-31T12:34:56Z`
    pub received_date_time: String,
    pub is_read: bool,
    pub subject: String,
    pub folder_id: String,
    /// Display path from the top, e.g. `Inbox/Support`.
    pub folder_path: String,
    /// The MIME bytes as delivered.
    pub raw: Vec<u8>,
}

/// A mail captured from `POST sendMail`.
#[derive(Clone, Debug)]
pub struct SentMail {
    /// The mailbox of the URL (lower-cased), i.e. the sender.
    pub mailbox: String,
    /// The decoded MIME (the `text/plain` base64 form).
    pub mime: Option<Vec<u8>>,
    /// The JSON form's body, if the client used it.
    pub json: Option<Value>,
    pub at: Instant,
}

pub(crate) struct Folder {
    pub(crate) id: String,
    pub(crate) display_name: String,
    /// `None` for the root (`msgfolderroot`).
    pub(crate) parent_id: Option<String>,
    pub(crate) well_known: Option<&'static str>,
}

pub(crate) struct Message {
    pub(crate) immutable_id: String,
    pub(crate) rest_id: String,
    pub(crate) folder_id: String,
    pub(crate) internet_message_id: String,
    pub(crate) received: i64,
    pub(crate) is_read: bool,
    /// Bumped on every change, like Exchange's change key.
    pub(crate) version: u64,
    pub(crate) subject: String,
    pub(crate) raw: Vec<u8>,
}

impl Message {
    pub(crate) fn id(&self, immutable: bool) -> &str {
        if immutable {
            &self.immutable_id
        } else {
            &self.rest_id
        }
    }

    pub(crate) fn has_id(&self, id: &str) -> bool {
        self.immutable_id == id || self.rest_id == id
    }

    pub(crate) fn change_key(&self) -> String {
        format!("CQAAABYAAAD{:010}", self.version)
    }
}

pub(crate) struct Mailbox {
    /// As added (display form).
    pub(crate) address: String,
    /// Other addresses (UPN, aliases) the mailbox answers to, lower-cased.
    pub(crate) aliases: Vec<String>,
    pub(crate) rest_enabled: bool,
    /// Users (lower-cased) whose delegated tokens may open it besides the
    /// owner (full access to a shared mailbox).
    pub(crate) delegates: Vec<String>,
    pub(crate) folders: Vec<Folder>,
    pub(crate) messages: Vec<Message>,
}

/// The well-known folders every mailbox has: (name, display name).
pub(crate) const WELL_KNOWN: [(&str, &str); 6] = [
    ("inbox", "Inbox"),
    ("archive", "Archive"),
    ("deleteditems", "Deleted Items"),
    ("sentitems", "Sent Items"),
    ("drafts", "Drafts"),
    ("junkemail", "Junk Email"),
];

impl Mailbox {
    pub(crate) fn new(address: &str) -> Mailbox {
        let root_id = new_folder_id();
        let mut folders = vec![Folder {
            id: root_id.clone(),
            display_name: "Top of Information Store".to_owned(),
            parent_id: None,
            well_known: Some("msgfolderroot"),
        }];
        for (name, display) in WELL_KNOWN {
            folders.push(Folder {
                id: new_folder_id(),
                display_name: display.to_owned(),
                parent_id: Some(root_id.clone()),
                well_known: Some(name),
            });
        }
        Mailbox {
            address: address.to_owned(),
            aliases: Vec::new(),
            rest_enabled: true,
            delegates: Vec::new(),
            folders,
            messages: Vec::new(),
        }
    }

    pub(crate) fn root_id(&self) -> &str {
        self.well_known("msgfolderroot")
            .map(|f| f.id.as_str())
            .unwrap_or_default()
    }

    pub(crate) fn well_known(&self, name: &str) -> Option<&Folder> {
        self.folders
            .iter()
            .find(|f| f.well_known.is_some_and(|w| w.eq_ignore_ascii_case(name)))
    }

    pub(crate) fn folder(&self, id: &str) -> Option<&Folder> {
        self.folders.iter().find(|f| f.id == id)
    }

    /// A folder by id or well-known name (what a URL segment may hold).
    pub(crate) fn folder_by_ref(&self, r: &str) -> Option<&Folder> {
        self.folder(r).or_else(|| self.well_known(r))
    }

    pub(crate) fn children<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = &'a Folder> {
        self.folders
            .iter()
            .filter(move |f| f.parent_id.as_deref() == Some(parent))
    }

    /// Resolves `Inbox/Support`: the first part a well-known name or a
    /// top-level display name, the rest child display names; all
    /// case-insensitive, as Outlook's folder names are.
    pub(crate) fn resolve_path(&self, path: &str) -> Option<String> {
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let first = parts.next()?;
        let root = self.root_id().to_owned();
        let mut current = match self.well_known(first) {
            Some(f) => f.id.clone(),
            None => self
                .children(&root)
                .find(|f| f.display_name.eq_ignore_ascii_case(first))?
                .id
                .clone(),
        };
        for part in parts {
            let next = self
                .children(&current)
                .find(|f| f.display_name.eq_ignore_ascii_case(part))?
                .id
                .clone();
            current = next;
        }
        Some(current)
    }

    /// `Inbox/Support` for a folder id.
    pub(crate) fn path_of(&self, id: &str) -> String {
        let mut parts = Vec::new();
        let mut cur = self.folder(id);
        while let Some(f) = cur {
            if f.parent_id.is_none() {
                break;
            }
            parts.push(f.display_name.clone());
            cur = f.parent_id.as_deref().and_then(|p| self.folder(p));
        }
        parts.reverse();
        parts.join("/")
    }

    pub(crate) fn message_index(&self, id: &str) -> Option<usize> {
        self.messages.iter().position(|m| m.has_id(id))
    }

    pub(crate) fn answers_to(&self, address: &str) -> bool {
        self.address.eq_ignore_ascii_case(address)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(address))
    }

    pub(crate) fn view(&self, m: &Message) -> GraphMessage {
        GraphMessage {
            id: m.immutable_id.clone(),
            rest_id: m.rest_id.clone(),
            internet_message_id: m.internet_message_id.clone(),
            received_date_time: graph_timestamp(m.received),
            is_read: m.is_read,
            subject: m.subject.clone(),
            folder_id: m.folder_id.clone(),
            folder_path: self.path_of(&m.folder_id),
            raw: m.raw.clone(),
        }
    }
}

/// One item of a delta round, fixed when the round starts.
pub(crate) enum DeltaItem {
    /// A message new or changed since the last round (its immutable id).
    Upsert(String),
    /// Gone from the folder: (the id the client knew, reason).
    Removed(String, &'static str),
}

/// A delta round in progress: its items, fixed at its start, and the
/// folder's state then, which the delta link at its end carries on.
pub(crate) struct DeltaRound {
    pub(crate) mailbox: String,
    pub(crate) folder_id: String,
    pub(crate) items: Vec<DeltaItem>,
    pub(crate) snapshot: Snapshot,
    pub(crate) select: Option<Vec<String>>,
    pub(crate) immutable: bool,
    pub(crate) page_size: Option<usize>,
    pub(crate) generation: u64,
    /// The `$skiptoken` of each later page (by offset), once handed out:
    /// re-fetching a page gives the same links.
    pub(crate) page_tokens: HashMap<usize, String>,
    /// The `$deltatoken` of its last page, once handed out.
    pub(crate) delta_token: Option<String>,
}

/// Where a `$skiptoken` points: a round and the offset of its next page.
pub(crate) struct SkipToken {
    pub(crate) round: u64,
    pub(crate) offset: usize,
    pub(crate) expired: bool,
}

/// What a `$deltatoken` carries: the folder's state when it was issued.
pub(crate) struct DeltaToken {
    pub(crate) mailbox: String,
    pub(crate) folder_id: String,
    pub(crate) snapshot: Snapshot,
    /// The round's query options, carried on as Graph encodes them in links.
    pub(crate) select: Option<Vec<String>>,
    pub(crate) page_size: Option<usize>,
    pub(crate) generation: u64,
    pub(crate) expired: bool,
}

pub(crate) struct GraphState {
    /// Keyed by lower-cased primary address.
    pub(crate) mailboxes: HashMap<String, Mailbox>,
    pub(crate) rounds: HashMap<u64, DeltaRound>,
    pub(crate) skip_tokens: HashMap<String, SkipToken>,
    pub(crate) delta_tokens: HashMap<String, DeltaToken>,
    pub(crate) next_round: u64,
    pub(crate) generation: u64,
    pub(crate) faults: Vec<FaultEntry>,
    pub(crate) log: Vec<GraphRequest>,
    pub(crate) in_flight: Counts,
    pub(crate) max_in_flight: Counts,
    pub(crate) concurrency_limit: Option<(usize, u64)>,
    pub(crate) sent: Vec<SentMail>,
    pub(crate) audiences: Vec<String>,
    pub(crate) enforce_permissions: bool,
    pub(crate) default_page_size: usize,
    /// Seconds added to "now" for receivedDateTime (tests that want mail
    /// from the past or ordered timestamps).
    pub(crate) clock_offset: i64,
    pub(crate) last_received: i64,
}

impl GraphState {
    pub(crate) fn new() -> GraphState {
        GraphState {
            mailboxes: HashMap::new(),
            rounds: HashMap::new(),
            skip_tokens: HashMap::new(),
            delta_tokens: HashMap::new(),
            next_round: 1,
            generation: 0,
            faults: Vec::new(),
            log: Vec::new(),
            in_flight: Counts::new(),
            max_in_flight: Counts::new(),
            concurrency_limit: None,
            sent: Vec::new(),
            audiences: GRAPH_AUDIENCES.iter().map(|s| (*s).to_owned()).collect(),
            enforce_permissions: true,
            default_page_size: 10,
            clock_offset: 0,
            last_received: 0,
        }
    }

    /// The mailbox a URL names (primary address or alias), by its key.
    pub(crate) fn mailbox_key(&self, address: &str) -> Option<String> {
        let lower = address.to_lowercase();
        if self.mailboxes.contains_key(&lower) {
            return Some(lower);
        }
        self.mailboxes
            .iter()
            .find(|(_, m)| m.answers_to(address))
            .map(|(k, _)| k.clone())
    }

    /// A receivedDateTime: now, never before the previous one, so delivery
    /// order and time order agree.
    pub(crate) fn received_now(&mut self) -> i64 {
        let t = (unix_now() + self.clock_offset).max(self.last_received);
        self.last_received = t;
        t
    }

    /// A fresh delta generation number (shown in 410 messages).
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    pub(crate) fn new_token(&self) -> String {
        loop {
            let t = random_string(48);
            if !self.skip_tokens.contains_key(&t) && !self.delta_tokens.contains_key(&t) {
                return t;
            }
        }
    }
}

pub(crate) use crate::idp::helpers::random_string;

/// An id shaped like Exchange's (base64 of an entry id; ours is random).
/// The `-` and `=` in it make a client that pastes ids into URLs without
/// care show itself.
pub(crate) fn new_message_id(immutable: bool) -> String {
    let prefix = if immutable {
        "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A"
    } else {
        "AAMkAGI2TG93AAA-"
    };
    format!("{prefix}{}=", random_string(40))
}

pub(crate) fn new_folder_id() -> String {
    format!("AQMkADAwATM0MDAA{}AAAA==", random_string(24))
}

/// Whether a `Prefer` header value asks for immutable ids.
pub(crate) fn prefers_immutable(value: &str) -> bool {
    value.split(',').any(|p| {
        let p = p.trim();
        p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("IdType")
                && v.trim()
                    .trim_matches('"')
                    .eq_ignore_ascii_case("ImmutableId")
        })
    })
}

/// The `odata.maxpagesize` a `Prefer` header value asks for.
pub(crate) fn preferred_page_size(value: &str) -> Option<usize> {
    value.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("odata.maxpagesize") {
            v.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    })
}

/// Sleeps are capped so a mistaken fault cannot hang a test run for long.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(120);
