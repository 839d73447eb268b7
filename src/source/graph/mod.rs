//! Microsoft Graph as a mailbox source (issue 16). This module holds, so
//! far, the HTTP client the Graph reader is built on (`client`: the client,
//! folders, MIME, after-steps, sendMail; `delta`: delta rounds page by
//! page; `http`: one request with its token, bound and retries; `token`:
//! where the bearer token comes from; `errors`: Graph's failures in an
//! admin's words; `wire`: the JSON and URL pieces). The reader itself (poll, check,
//! the ledger and the after-step order) comes on top of it.

pub mod client;
mod delta;
mod errors;
mod http;
mod token;
mod wire;

pub use self::client::{
    AfterStep, DEFAULT_BASE_URL, FolderId, FolderInfo, GraphClient, GraphOptions,
    MAILBOX_CONCURRENCY, Mime, WELL_KNOWN_FOLDERS,
};
pub use self::delta::{DeltaItem, DeltaPage, DeltaPager, DeltaRound};
pub use self::errors::{GRANT_APP_ACCESS, GraphError, TokenUnavailable};
pub use self::http::{RetryPolicy, Wait, WaitHook, WaitReason};
pub use self::token::{GraphToken, StaticToken};
