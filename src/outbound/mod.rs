//! Outbound mail: the acknowledgements the store queued in the outbox,
//! sent over SMTP submission with the reader's own login.
//!
//! Owns everything after the ticket commit queued a row: finding the
//! reader's `[reader.reply]` in the configuration running now, the text
//! and headers ([`message`]), the SMTP session ([`smtp`]), and what an
//! attempt's outcome means for the row (sent; tried again later; given up
//! on a final refusal of the recipient or the message). The sender runs
//! beside the readers, one attempt at a time, and nothing here ever makes
//! a reader wait: ingest only writes a row.

mod message;
mod smtp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::auth::AuthError;
use crate::config::{Config, Login, ReaderConfig, SecretError};
use crate::metrics::AckResult;
use crate::reader::{self, Context};
use crate::source::Credential;
use crate::store::{DueAck, StoreError};
pub use message::MessageError;
pub use smtp::SmtpError;

/// How far a claimed row's next attempt moves ahead while it is being
/// tried: longer than any attempt takes, so no other process sends it
/// meanwhile; a crash mid-attempt retries it after this.
const LEASE: Duration = Duration::from_secs(15 * 60);
/// How often a row whose reader has no `[reader.reply]` (any more) is
/// looked at again; a reload that adds it is picked up within this.
const RECHECK_CONFIG: Duration = Duration::from_secs(60);
/// How often the sender looks for due rows without being woken.
const TICK: Duration = Duration::from_secs(15);
/// Attempts per wake-up before the sender looks at shutdown and new work
/// again.
const MAX_PER_ROUND: usize = 100;

/// The readers the sender can send for, by name; replaced whole on reload.
pub type Readers = Arc<HashMap<String, ReaderConfig>>;

/// The readers of a configuration, for the sender.
pub fn readers(config: &Config) -> Readers {
    Arc::new(
        config
            .readers
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect(),
    )
}

/// Why an acknowledgement was not sent this time; the text is the row's
/// `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("reader {0:?} is not in the configuration; kept until it is back")]
    UnknownReader(String),
    #[error("reader {0:?} has no [reader.reply]; kept until it has one")]
    NoReply(String),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("no token to send with: {0}")]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Smtp(#[from] SmtpError),
}

impl AckError {
    /// Trying again cannot help: the row is given up at once.
    pub fn is_permanent(&self) -> bool {
        match self {
            AckError::Message(_) => true,
            AckError::Smtp(e) => e.is_permanent(),
            _ => false,
        }
    }

    /// No attempt was possible: the configuration has no way to send it.
    fn waits_for_config(&self) -> bool {
        matches!(self, AckError::UnknownReader(_) | AckError::NoReply(_))
    }
}

/// What one round of sending did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub sent: usize,
    /// Attempts that failed and will be tried again.
    pub retried: usize,
    /// Rows given up.
    pub failed: usize,
    /// Rows left for a configuration that can send them.
    pub waiting: usize,
}

/// Sends what is due, one row at a time, until nothing is due (or
/// `cancel` fires, or a round's bound is reached). An attempt in progress
/// is finished, so a cancel never leaves a sent mail recorded as unsent.
pub async fn send_due(
    ctx: &Context,
    readers: &Readers,
    cancel: &CancellationToken,
) -> Result<Drained, StoreError> {
    let mut drained = Drained::default();
    for _ in 0..MAX_PER_ROUND {
        if cancel.is_cancelled() {
            break;
        }
        let Some(row) = ctx.store.claim_due_ack(LEASE).await? else {
            break;
        };
        let span = tracing::info_span!("ack", reader = %row.reader, ticket = row.ticket_id);
        async {
            let outcome = attempt(ctx, readers, &row).await;
            record(ctx, &row, outcome, &mut drained).await
        }
        .instrument(span)
        .await?;
    }
    Ok(drained)
}

async fn attempt(ctx: &Context, readers: &Readers, row: &DueAck) -> Result<(), AckError> {
    let reader = readers
        .get(&row.reader)
        .ok_or_else(|| AckError::UnknownReader(row.reader.clone()))?;
    let reply = reader
        .reply
        .as_ref()
        .ok_or_else(|| AckError::NoReply(row.reader.clone()))?;
    let policy = reader.mail.current();
    let (envelope, bytes) = message::build(reply, &policy.tickets.subject_tag, row)?;
    match &reader.login {
        Login::OAuth(oauth) => {
            let request = reader::smtp_token_request(reader, oauth);
            let (token, obtained) = ctx.tokens.access_token_from(&request).await?;
            if obtained {
                ctx.metrics.reader(&reader.name).token_obtained();
            }
            let credential = Credential::Token(token);
            let result =
                smtp::submit(&submission(reader, reply, &credential), &envelope, &bytes).await;
            if let Err(e) = &result
                && e.is_auth_rejected()
            {
                // As the readers do: the next attempt must not present the
                // refused token again.
                ctx.tokens.invalidate(&request).await;
            }
            Ok(result?)
        }
        Login::Plain { password } => {
            let credential = Credential::Password(password.resolve()?);
            Ok(smtp::submit(&submission(reader, reply, &credential), &envelope, &bytes).await?)
        }
    }
}

fn submission<'a>(
    reader: &'a ReaderConfig,
    reply: &'a crate::config::ReplyConfig,
    credential: &'a Credential,
) -> smtp::Submission<'a> {
    smtp::Submission {
        reply,
        user: &reader.username,
        credential,
        timeout: reader.timeout,
    }
}

async fn record(
    ctx: &Context,
    row: &DueAck,
    outcome: Result<(), AckError>,
    drained: &mut Drained,
) -> Result<(), StoreError> {
    match outcome {
        Ok(()) => {
            ctx.store.ack_sent(row.id).await?;
            ctx.metrics.ack(&row.reader, AckResult::Sent);
            drained.sent += 1;
            tracing::info!(message_id = %row.message_id, "acknowledgement sent");
        }
        Err(e) if e.waits_for_config() => {
            drained.waiting += 1;
            let text = e.to_string();
            if ctx.store.ack_waiting(row.id, &text, RECHECK_CONFIG).await? {
                tracing::warn!(error = %text, "acknowledgement not sent");
            }
        }
        Err(e) => {
            let text = e.to_string();
            let recorded = ctx
                .store
                .ack_failed(row.id, &text, e.is_permanent())
                .await?;
            if recorded.gave_up() {
                ctx.metrics.ack(&row.reader, AckResult::Failed);
                drained.failed += 1;
                tracing::error!(
                    error = %text,
                    attempts = recorded.attempts,
                    "acknowledgement given up"
                );
            } else {
                ctx.metrics.ack(&row.reader, AckResult::Retry);
                drained.retried += 1;
                tracing::warn!(
                    error = %text,
                    attempts = recorded.attempts,
                    next_attempt_at = %recorded.next_attempt_at,
                    "acknowledgement failed; will try again"
                );
            }
        }
    }
    Ok(())
}

/// The sender task of `run`: sends due acknowledgements whenever woken
/// (`ctx.acks`, after a poll opened tickets), and every few seconds for
/// retries that came due, with the readers of the configuration running
/// at that moment. Stops when `shutdown` fires, after the attempt in
/// progress.
pub async fn run(
    ctx: Arc<Context>,
    readers: watch::Receiver<Readers>,
    shutdown: CancellationToken,
) {
    loop {
        let current = readers.borrow().clone();
        match send_due(&ctx, &current, &shutdown).await {
            // A full round: more may be due at once.
            Ok(d) if d.sent + d.retried + d.failed + d.waiting >= MAX_PER_ROUND => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot work through the outbox"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = ctx.acks.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}
