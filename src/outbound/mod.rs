//! Outbound mail: the acknowledgements the store queued in the outbox,
//! sent over SMTP submission with the reader's own login, or over
//! Microsoft Graph's sendMail (`[reader.reply] via = "graph"`).
//!
//! Owns everything after the ticket commit queued a row: finding the
//! reader's `[reader.reply]` in the configuration running now, the text
//! and headers (`message`), the SMTP session (`smtp`), sendMail
//! (`graph`), and what an
//! attempt's outcome means for the row (sent; tried again later; given up
//! on a final refusal of the recipient or the message). The sender runs
//! beside the readers, one attempt at a time, and nothing here ever makes
//! a reader wait: ingest only writes a row.

mod graph;
mod message;
mod smtp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::auth::AuthError;
use crate::config::{Config, Login, ReaderConfig, SecretError, Via};
use crate::ops::metrics::AckResult;
use crate::reader::{self, Context};
use crate::source::SignInSecret;
use crate::store::{DueAck, StoreError};
pub use graph::GraphSendError;
pub use message::MessageError;
pub use smtp::SmtpError;

/// How far a claimed row's next attempt moves ahead while it is being
/// tried, at least: a crash mid-attempt retries it after this. It is
/// lengthened to outlast the longest attempt a reader's `timeout` allows
/// (see [`lease`]), so no other process sends the row meanwhile.
const LEASE: Duration = Duration::from_secs(15 * 60);
/// Steps of one attempt that each wait up to the reader's `timeout`, with
/// room to spare: connect, TLS, greeting, EHLO, STARTTLS and its handshake,
/// EHLO again, AUTH and its answer, MAIL, RCPT, DATA, the message, its
/// reply, QUIT are 15.
const ATTEMPT_STEPS: u32 = 20;
/// Getting a token for the attempt (a token endpoint request and a retry).
const TOKEN_ALLOWANCE: Duration = Duration::from_secs(2 * 60);
/// Between the end of the longest attempt and the end of its lease.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// The longest one attempt with this per-step `timeout` may take; an
/// attempt still running then is abandoned, as a failed one.
fn attempt_limit(timeout: Duration) -> Duration {
    timeout
        .saturating_mul(ATTEMPT_STEPS)
        .saturating_add(TOKEN_ALLOWANCE)
}

/// The lease of a claimed row: past the longest attempt any of `readers`
/// may make, so a slow attempt is never picked up a second time
/// concurrently (by `run --once`, or another process on the database).
fn lease(readers: &Readers) -> Duration {
    readers
        .values()
        .filter(|r| r.reply.is_some())
        .map(|r| attempt_limit(r.timeout).saturating_add(LEASE_MARGIN))
        .fold(LEASE, Duration::max)
}
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
    #[error(transparent)]
    Graph(#[from] GraphSendError),
    #[error(
        "the attempt took longer than {} and was abandoned",
        humantime::format_duration(*.limit)
    )]
    TooSlow { limit: Duration },
}

impl AckError {
    /// Trying again cannot help: the row is given up at once.
    pub fn is_permanent(&self) -> bool {
        match self {
            AckError::Message(_) => true,
            AckError::Smtp(e) => e.is_permanent(),
            AckError::Graph(e) => e.is_permanent(),
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
    let lease = lease(readers);
    for _ in 0..MAX_PER_ROUND {
        if cancel.is_cancelled() {
            break;
        }
        let Some(row) = ctx.store.claim_due_ack(lease).await? else {
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
    // Each step has its own timeout; this bounds their sum, which the
    // lease was sized for.
    let limit = attempt_limit(reader.timeout);
    tokio::time::timeout(limit, attempt_with(ctx, reader, reply, row))
        .await
        .unwrap_or(Err(AckError::TooSlow { limit }))
}

async fn attempt_with(
    ctx: &Context,
    reader: &ReaderConfig,
    reply: &crate::config::ReplyConfig,
    row: &DueAck,
) -> Result<(), AckError> {
    let policy = reader.mail.current();
    let (envelope, bytes) = message::build(reply, &policy.tickets.subject_tag, row)?;
    if reply.via == Via::Graph {
        if let Login::OAuth(oauth) = &reader.login {
            // Asked first as for SMTP: a reader that cannot have a token
            // fails in the token store's words, and the metric counts it.
            let (_, obtained) = ctx
                .tokens
                .access_token_from(&reader::ack_token_request(reader, oauth))
                .await?;
            if obtained {
                ctx.metrics.reader(&reader.name).token_obtained();
            }
        }
        return Ok(graph::send(&ctx.tokens, reader, &reply.from, &bytes).await?);
    }
    match &reader.login {
        Login::OAuth(oauth) => {
            let request = reader::ack_token_request(reader, oauth);
            let (token, obtained) = ctx.tokens.access_token_from(&request).await?;
            if obtained {
                ctx.metrics.reader(&reader.name).token_obtained();
            }
            let credential = SignInSecret::Token(token);
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
            let credential = SignInSecret::Password(password.resolve()?);
            Ok(smtp::submit(&submission(reader, reply, &credential), &envelope, &bytes).await?)
        }
    }
}

fn submission<'a>(
    reader: &'a ReaderConfig,
    reply: &'a crate::config::ReplyConfig,
    credential: &'a SignInSecret,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn readers_with_timeout(timeout: &str) -> Readers {
        let text = format!(
            r#"
[[oauth]]
name = "contoso"
tenant = "t"
client_id = "c"

[[reader]]
name = "helpdesk"
protocol = "imap"
username = "helpdesk@contoso.com"
oauth = "contoso"
grant = "authorization_code"
timeout = "{timeout}"

[reader.reply]
"#
        );
        let config = Config::parse(std::path::Path::new("/etc/m2t/config.toml"), &text)
            .expect("valid config");
        readers(&config)
    }

    /// A row is claimed for one attempt at a time: its lease must not run
    /// out while the attempt may still be sending it, however long the
    /// reader's timeout.
    #[test]
    fn the_lease_outlasts_the_longest_attempt() {
        for timeout in ["5s", "60s", "2m", "10m", "1h"] {
            let readers = readers_with_timeout(timeout);
            let reader = &readers["helpdesk"];
            let longest = attempt_limit(reader.timeout);
            assert!(
                lease(&readers) > longest,
                "timeout {timeout}: lease {:?}, an attempt may take {longest:?}",
                lease(&readers)
            );
            // Every step may take the whole timeout: 15 steps fit.
            assert!(longest >= reader.timeout * 15, "timeout {timeout}");
        }
        assert_eq!(lease(&Arc::new(HashMap::new())), LEASE);
    }
}
