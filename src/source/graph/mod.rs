//! Microsoft Graph as a mailbox source (issue 16). This module holds, so
//! far, the HTTP client the Graph reader is built on (`client`: folders,
//! delta rounds, MIME, after-steps, sendMail; `http`: one request with its
//! token, bound and retries; `errors`: Graph's failures in an admin's
//! words; `wire`: the JSON and URL pieces). The reader itself (poll, check,
//! the ledger and the after-step order) comes on top of it.

pub mod client;
mod errors;
mod http;
mod wire;

pub use self::client::{
    AfterStep, DEFAULT_BASE_URL, DeltaItem, DeltaPage, DeltaPager, DeltaRound, FolderId,
    GraphClient, GraphOptions, GraphToken, MAILBOX_CONCURRENCY, Mime, RetryPolicy, StaticToken,
    WELL_KNOWN_FOLDERS, Wait, WaitHook, WaitReason,
};
pub use self::errors::{GRANT_APP_ACCESS, GraphError, TokenUnavailable};
