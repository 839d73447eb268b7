//! Microsoft Graph as a mailbox source (issue 16): the reader (`poll`:
//! delta rounds against the ledger, MIME through the shared batch driver,
//! after-steps once committed; `check`: sign in, resolve, count) on top of
//! the HTTP client it is built on (`client`: the client, folders, MIME,
//! after-steps, sendMail; `delta`: delta rounds page by page; `http`: one
//! request with its token, bound and retries; `token`: where the bearer
//! token comes from; `errors`: Graph's failures in an admin's words;
//! `wire`: the JSON and URL pieces).
//!
//! Graph has no IDLE here: a Graph reader polls every `poll_interval`
//! (change notifications need a public HTTPS endpoint, out of scope).

mod check;
pub mod client;
mod delta;
mod errors;
mod http;
mod poll;
mod token;
mod wire;

pub use self::check::check;
pub use self::client::{
    AfterStep, DEFAULT_BASE_URL, FolderId, FolderInfo, GraphClient, GraphOptions,
    MAILBOX_CONCURRENCY, Mime, WELL_KNOWN_FOLDERS,
};
pub use self::delta::{DeltaItem, DeltaPage, DeltaPager, DeltaRound};
pub use self::errors::{GRANT_APP_ACCESS, GraphError, TokenUnavailable};
pub use self::http::{RetryPolicy, Wait, WaitHook, WaitReason};
pub use self::poll::{Kept, client_for, poll};
pub use self::token::{GraphToken, StaticToken};
