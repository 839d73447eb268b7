//! One reader's poll: its token, its protocol, its health record.
//!
//! Owns the link between the token store and the protocol modules (which
//! scope a protocol needs, forgetting a token the server refused) and the
//! rule that every poll and every `check` leaves its outcome in `readers`.

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, IMAP_SCOPE, TokenRequest, TokenStore};
use crate::config::{Protocol, ReaderConfig};
use crate::source::{CheckReport, PollReport, imap};
use crate::store::{Store, StoreError};

/// What every reader task shares.
#[derive(Debug)]
pub struct Context {
    pub store: Store,
    pub tokens: TokenStore,
}

/// Why a poll failed; the text is the reader's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Imap(#[from] imap::ImapError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn token_request(reader: &ReaderConfig) -> TokenRequest<'_> {
    TokenRequest {
        oauth: &reader.oauth,
        account: &reader.username,
        grant: reader.grant,
        password: reader.password.as_ref(),
        scope: match reader.protocol {
            Protocol::Imap => IMAP_SCOPE,
        },
    }
}

/// Runs `op` with a fresh token; if the mail server refuses the token, the
/// cached one is dropped so the next attempt gets a new one.
async fn with_token<T, F, Fut>(ctx: &Context, reader: &ReaderConfig, op: F) -> Result<T, PollError>
where
    F: FnOnce(SecretString) -> Fut,
    Fut: std::future::Future<Output = Result<T, imap::ImapError>>,
{
    let request = token_request(reader);
    let token = ctx.tokens.access_token(&request).await?;
    match op(token).await {
        Err(e @ imap::ImapError::AuthRejected { .. }) => {
            ctx.tokens.invalidate(&request).await;
            Err(e.into())
        }
        other => Ok(other?),
    }
}

async fn poll(
    ctx: &Context,
    reader: &ReaderConfig,
    cancel: &CancellationToken,
) -> Result<PollReport, PollError> {
    match reader.protocol {
        Protocol::Imap => {
            with_token(ctx, reader, |token| async move {
                imap::poll(reader, &token, &ctx.store, cancel).await
            })
            .await
        }
    }
}

async fn check(ctx: &Context, reader: &ReaderConfig) -> Result<CheckReport, PollError> {
    match reader.protocol {
        Protocol::Imap => {
            with_token(ctx, reader, |token| async move {
                imap::check(reader, &token, &ctx.store).await
            })
            .await
        }
    }
}

/// Polls once and records the outcome in `readers`.
pub async fn poll_and_record(
    ctx: &Context,
    reader: &ReaderConfig,
    cancel: &CancellationToken,
) -> Result<PollReport, PollError> {
    log_store_error(reader, ctx.store.record_poll_start(&reader.name).await);
    let result = poll(ctx, reader, cancel).await;
    record(ctx, reader, &result).await;
    result
}

/// Checks once (connect, authenticate, select) and records the outcome.
pub async fn check_and_record(
    ctx: &Context,
    reader: &ReaderConfig,
) -> Result<CheckReport, PollError> {
    log_store_error(reader, ctx.store.record_poll_start(&reader.name).await);
    let result = check(ctx, reader).await;
    record(ctx, reader, &result).await;
    result
}

async fn record<T>(ctx: &Context, reader: &ReaderConfig, result: &Result<T, PollError>) {
    match result {
        Ok(_) => log_store_error(reader, ctx.store.record_success(&reader.name).await),
        Err(e) => {
            let r = ctx.store.record_failure(&reader.name, &e.to_string()).await;
            log_store_error(reader, r.map(|_| ()));
        }
    }
}

fn log_store_error(reader: &ReaderConfig, result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::error!(reader = %reader.name, error = %e, "could not record reader health");
    }
}
