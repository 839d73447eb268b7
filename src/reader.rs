//! One reader's poll: its token, its protocol, its health record.
//!
//! Owns the link between the token store and the protocol modules (which
//! service a protocol needs tokens for, forgetting a token the server
//! refused), the rule that every poll and every `check` leaves its outcome
//! and state in `readers`, and the advice `last_error` gives the admin.
//! For Microsoft Graph, whose client asks for its bearer token itself, the
//! token store is plugged in as the client's [`GraphToken`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, TokenRequest, TokenStore};
use crate::config::Service;
use crate::config::{Grant, Login, OAuthLogin, Protocol, ReaderConfig, SecretError, Via};
use crate::ops::metrics::{Metrics, ReaderMetrics};
use crate::outcome::{FailureClass, ReaderState};
use crate::source::graph::{self, GraphError, GraphToken, TokenUnavailable};
use crate::source::{CheckReport, PollReport, SignInSecret, SourceError, imap, pop3};
use crate::store::{Store, StoreError};

/// What every reader task shares.
#[derive(Debug)]
pub struct Context {
    pub store: Store,
    pub tokens: TokenStore,
    pub metrics: Metrics,
    /// Wakes the acknowledgement sender (a poll opened tickets).
    pub acks: tokio::sync::Notify,
    /// Running out of file descriptors, which fails `/healthz`.
    pub fds: crate::ops::fds::Pressure,
    /// A permit per poll or check in progress (`[daemon]
    /// max_concurrent_polls`): a thousand readers started together queue
    /// here instead of at the mail server's login.
    pub polls: tokio::sync::Semaphore,
}

/// Why a poll failed; the text is the reader's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The server refused a configured password: retrying the same password
    /// only risks locking the account.
    #[error("{0}")]
    PasswordRejected(String),
    /// Not polled: the reader is stopped until an admin acts.
    #[error("not polled: {}: {}", .state.as_str(), .last_error.as_deref().unwrap_or("no error recorded"))]
    Stopped {
        state: ReaderState,
        last_error: Option<String>,
    },
}

impl PollError {
    /// The state this failure leaves the reader in.
    pub fn state(&self) -> ReaderState {
        match self {
            PollError::Auth(e) => e.state(),
            PollError::Secret(_) | PollError::PasswordRejected(_) => ReaderState::Misconfigured,
            PollError::Source(e) if e.is_misconfigured() => ReaderState::Misconfigured,
            PollError::Source(_) | PollError::Store(_) => ReaderState::Retrying,
            PollError::Stopped { state, .. } => *state,
        }
    }

    /// The kind of failure, for `mail2ticket_poll_failures_total`.
    pub fn class(&self) -> FailureClass {
        match self {
            PollError::Auth(e) => e.class(),
            PollError::Source(e) => e.class(),
            PollError::Store(_) => FailureClass::Store,
            PollError::PasswordRejected(_) => FailureClass::Auth,
            PollError::Secret(_) | PollError::Stopped { .. } => FailureClass::Config,
        }
    }

    /// The store's error, whichever step of the poll met it.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            PollError::Store(e) => Some(e),
            PollError::Source(e) => e.store_error(),
            _ => None,
        }
    }

    /// A wait the far side asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Auth(e) => e.retry_after(),
            PollError::Source(SourceError::Graph(e)) => e.retry_after(),
            _ => None,
        }
    }
}

/// The token request behind a reader; `None` for a password login.
pub fn token_request(reader: &ReaderConfig) -> Option<TokenRequest<'_>> {
    reader.oauth().map(|oauth| oauth_request(reader, oauth))
}

/// The token request for acknowledging as the reader, by its
/// `[reader.reply] via`: over Graph it is the reader's own request (its
/// scope already carries `Mail.Send`, so reading and sending share one
/// token of the one resource); over SMTP, [`smtp_token_request`].
pub fn ack_token_request<'r>(reader: &'r ReaderConfig, oauth: &'r OAuthLogin) -> TokenRequest<'r> {
    match reader.reply.as_ref().map(|r| r.via) {
        Some(Via::Graph) => oauth_request(reader, oauth),
        Some(Via::Smtp) | None => smtp_token_request(reader, oauth),
    }
}

/// The token request for sending mail as the reader (acknowledgements over
/// SMTP): the reader's OAuth login, with the SMTP scope.
pub fn smtp_token_request<'r>(reader: &'r ReaderConfig, oauth: &'r OAuthLogin) -> TokenRequest<'r> {
    TokenRequest {
        service: Service::Smtp,
        ..oauth_request(reader, oauth)
    }
}

fn oauth_request<'r>(reader: &'r ReaderConfig, oauth: &'r OAuthLogin) -> TokenRequest<'r> {
    TokenRequest {
        oauth: &oauth.app,
        account: &reader.username,
        grant: oauth.grant,
        password: oauth.password.as_ref(),
        service: read_service(reader),
        timeout: reader.timeout,
    }
}

/// What a reader's own token is for: its protocol's resource, and for a
/// Graph reader that acknowledges over Graph, sending as well (one scope,
/// one resource: see [`Service::GraphWithSend`]).
fn read_service(reader: &ReaderConfig) -> Service {
    match reader.protocol {
        Protocol::Imap => Service::Imap,
        Protocol::Pop3 => Service::Pop,
        Protocol::Graph if reader.sends_over_graph() => Service::GraphWithSend,
        Protocol::Graph => Service::Graph,
    }
}

/// What the admin should do about a failure that waits for them; appended
/// to `last_error`, which is where they look.
pub fn advice(reader: &ReaderConfig, state: ReaderState) -> Option<String> {
    let name = &reader.name;
    match state {
        ReaderState::NeedsAuthorization => Some(match reader.oauth().map(|o| o.grant)? {
            Grant::AuthorizationCode => {
                format!("run `mail2ticket authorize {name}` to sign in again")
            }
            Grant::DeviceCode => {
                format!("run `mail2ticket authorize {name} --device` to sign in again")
            }
            Grant::Password => format!(
                "the account needs attention in Entra ID (MFA, conditional access or consent); \
                 once fixed, run `mail2ticket check {name}`, or switch the reader to \
                 grant = \"authorization_code\" and run `mail2ticket authorize {name}`"
            ),
            Grant::ClientCredentials => format!(
                "grant admin consent to the app's {} permissions, then run `mail2ticket check {name}`",
                match reader.protocol {
                    Protocol::Graph => "Microsoft Graph",
                    Protocol::Imap | Protocol::Pop3 => "Exchange",
                }
            ),
        }),
        ReaderState::Misconfigured => Some(format!(
            "fix the configuration or the app registration, then run `mail2ticket check {name}` \
             (a changed configuration is also tried again when the daemon starts)"
        )),
        ReaderState::Ok | ReaderState::Retrying => None,
    }
}

/// Runs `op` with the reader's credential. If the mail server refuses a
/// token, the cached one is dropped so the next attempt gets a new one; a
/// refused password stops the reader (see [`PollError::PasswordRejected`]).
async fn with_credential<T, F, Fut>(
    ctx: &Context,
    reader: &ReaderConfig,
    meter: &ReaderMetrics,
    op: F,
) -> Result<T, PollError>
where
    F: FnOnce(SignInSecret) -> Fut,
    Fut: std::future::Future<Output = Result<T, SourceError>>,
{
    match &reader.login {
        Login::OAuth(oauth) => {
            let request = oauth_request(reader, oauth);
            let (token, obtained) = ctx.tokens.access_token_from(&request).await?;
            if obtained {
                meter.token_obtained();
            }
            match op(SignInSecret::Token(token)).await {
                Err(e) if e.is_auth_rejected() => {
                    ctx.tokens.invalidate(&request).await;
                    Err(e.into())
                }
                other => other.map_err(Into::into),
            }
        }
        Login::Plain { password } => {
            let password = password.resolve()?;
            match op(SignInSecret::Password(password)).await {
                Err(e) if e.is_auth_rejected() => Err(PollError::PasswordRejected(e.to_string())),
                other => other.map_err(Into::into),
            }
        }
    }
}

/// The token store as a Graph client's token source, for one reader's
/// request (a clone of the store: the same caches).
pub struct StoreToken {
    tokens: TokenStore,
    reader: ReaderConfig,
    /// The token store's last failure, whole: a poll that loses its token
    /// halfway ends in the state that failure calls for (needs
    /// authorization, misconfigured), as if it had failed before starting.
    failed: std::sync::Mutex<Option<AuthError>>,
}

impl StoreToken {
    pub fn new(tokens: &TokenStore, reader: &ReaderConfig) -> StoreToken {
        StoreToken {
            tokens: tokens.clone(),
            reader: reader.clone(),
            failed: std::sync::Mutex::new(None),
        }
    }

    fn take_failure(&self) -> Option<AuthError> {
        self.failed.lock().ok()?.take()
    }
}

/// An [`AuthError`] in the words and classes the Graph client passes on.
fn unavailable(e: &AuthError) -> TokenUnavailable {
    let state = e.state();
    TokenUnavailable {
        text: e.to_string(),
        class: e.class(),
        misconfigured: state == ReaderState::Misconfigured,
        auth_rejected: state == ReaderState::NeedsAuthorization,
    }
}

/// A Graph reader with a password: config refuses it, but the type allows it.
fn no_oauth(reader: &ReaderConfig) -> TokenUnavailable {
    TokenUnavailable {
        text: format!(
            "reader {:?} reads over Microsoft Graph, which takes OAuth tokens only: set `oauth`",
            reader.name
        ),
        class: FailureClass::Config,
        misconfigured: true,
        auth_rejected: false,
    }
}

impl GraphToken for StoreToken {
    fn current(&self) -> BoxFuture<'_, Result<SecretString, TokenUnavailable>> {
        Box::pin(async move {
            let oauth = self.reader.oauth().ok_or_else(|| no_oauth(&self.reader))?;
            let request = oauth_request(&self.reader, oauth);
            self.tokens.access_token(&request).await.map_err(|e| {
                let words = unavailable(&e);
                if let Ok(mut failed) = self.failed.lock() {
                    *failed = Some(e);
                }
                words
            })
        })
    }

    fn refused<'a>(&'a self, token: &'a SecretString) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(oauth) = self.reader.oauth() {
                let request = oauth_request(&self.reader, oauth);
                self.tokens.invalidate_if(&request, token).await;
            }
        })
    }
}

/// A token failure of a Graph reader. Missing consent to the Graph
/// permissions (AADSTS65001, 65004) is the tenant's setup, not a sign-in
/// that expired: signing in again cannot help until someone grants them,
/// so it says what to grant and stops the reader as misconfigured.
fn graph_auth_error(reader: &ReaderConfig, e: AuthError) -> PollError {
    if !e.is_consent_missing() {
        return e.into();
    }
    SourceError::Graph(GraphError::ConsentMissing {
        detail: e.to_string(),
        app_only: reader.oauth().is_some_and(|o| o.grant.is_app_only()),
        send: reader.sends_over_graph(),
    })
    .into()
}

/// Runs `op` with the token store as the Graph client's token source. The
/// token is asked for once first, so that a reader that cannot have one
/// fails as IMAP and POP3 readers do (needs authorization, misconfigured);
/// a token lost during `op` ends it the same way.
async fn with_graph_token<T, F, Fut>(
    ctx: &Context,
    reader: &ReaderConfig,
    meter: &ReaderMetrics,
    op: F,
) -> Result<T, PollError>
where
    F: FnOnce(Arc<dyn GraphToken>) -> Fut,
    Fut: std::future::Future<Output = Result<T, SourceError>>,
{
    let Some(oauth) = reader.oauth() else {
        return Err(SourceError::Graph(no_oauth(reader).into()).into());
    };
    let (_, obtained) = ctx
        .tokens
        .access_token_from(&oauth_request(reader, oauth))
        .await
        .map_err(|e| graph_auth_error(reader, e))?;
    if obtained {
        meter.token_obtained();
    }
    let source = Arc::new(StoreToken::new(&ctx.tokens, reader));
    match op(source.clone()).await {
        Err(SourceError::Graph(GraphError::Token(words))) => Err(match source.take_failure() {
            Some(e) => graph_auth_error(reader, e),
            None => SourceError::Graph(GraphError::Token(words)).into(),
        }),
        other => Ok(other?),
    }
}

/// What a reader keeps between polls: its IMAP connection (`idle =
/// true`), or what a Graph reader resolved once.
#[derive(Debug, Default)]
pub struct Link {
    imap: Option<imap::Connection>,
    graph: graph::Kept,
}

/// How waiting for new mail ended; see [`wait_for_mail`].
pub use crate::source::imap::Idled;

/// Waits on the reader's kept connection for new mail (IMAP IDLE), at most
/// one poll interval.
pub async fn wait_for_mail(
    reader: &ReaderConfig,
    link: &mut Link,
    cancel: &CancellationToken,
) -> Idled {
    imap::idle(&mut link.imap, cancel, reader.poll_interval).await
}

async fn poll(
    ctx: &Context,
    reader: &ReaderConfig,
    link: &mut Link,
    cancel: &CancellationToken,
    meter: &ReaderMetrics,
) -> Result<PollReport, PollError> {
    match reader.protocol {
        Protocol::Imap => {
            with_credential(ctx, reader, meter, |credential| async move {
                imap::poll(
                    reader,
                    &credential,
                    &ctx.store,
                    cancel,
                    &mut link.imap,
                    meter,
                )
                .await
            })
            .await
        }
        Protocol::Pop3 => {
            with_credential(ctx, reader, meter, |credential| async move {
                pop3::poll(reader, &credential, &ctx.store, cancel, meter).await
            })
            .await
        }
        Protocol::Graph => {
            with_graph_token(ctx, reader, meter, |token| async move {
                graph::poll(reader, token, &ctx.store, cancel, meter, &mut link.graph).await
            })
            .await
        }
    }
}

async fn check(
    ctx: &Context,
    reader: &ReaderConfig,
    meter: &ReaderMetrics,
) -> Result<CheckReport, PollError> {
    match reader.protocol {
        Protocol::Imap => {
            with_credential(ctx, reader, meter, |credential| async move {
                imap::check(reader, &credential, &ctx.store).await
            })
            .await
        }
        Protocol::Pop3 => {
            with_credential(ctx, reader, meter, |credential| async move {
                pop3::check(reader, &credential, &ctx.store).await
            })
            .await
        }
        Protocol::Graph => {
            with_graph_token(ctx, reader, meter, |token| async move {
                graph::check(reader, token, &ctx.store).await
            })
            .await
        }
    }
}

/// Polls once unless the reader is stopped (then its state is the error:
/// `run --once` from cron must not make a request a minute that is known
/// to fail); records the outcome.
pub async fn poll_unless_stopped(
    ctx: &Context,
    reader: &ReaderConfig,
    cancel: &CancellationToken,
) -> Result<PollReport, PollError> {
    if let Some((state, last_error)) = ctx.store.reader_state(&reader.name).await?
        && state.is_parked()
    {
        return Err(PollError::Stopped { state, last_error });
    }
    // One-shot: nothing is kept for a next poll.
    poll_and_record(ctx, reader, &mut Link::default(), cancel).await
}

/// Polls once and records the outcome in `readers`.
pub async fn poll_and_record(
    ctx: &Context,
    reader: &ReaderConfig,
    link: &mut Link,
    cancel: &CancellationToken,
) -> Result<PollReport, PollError> {
    // Never closed: a failed acquire would only mean no bound.
    let _turn = tokio::select! {
        turn = ctx.polls.acquire() => turn.ok(),
        () = cancel.cancelled() => return Ok(PollReport { interrupted: true, ..PollReport::default() }),
    };
    log_store_error(ctx.store.record_poll_start(&reader.name).await);
    let meter = ctx.metrics.reader(&reader.name);
    meter.poll_started();
    let result = poll(ctx, reader, link, cancel, &meter).await;
    record(ctx, reader, &meter, &result).await;
    result
}

/// Checks once (connect, authenticate, select) and records the outcome.
pub async fn check_and_record(
    ctx: &Context,
    reader: &ReaderConfig,
) -> Result<CheckReport, PollError> {
    let _turn = ctx.polls.acquire().await.ok();
    log_store_error(ctx.store.record_poll_start(&reader.name).await);
    let meter = ctx.metrics.reader(&reader.name);
    let result = check(ctx, reader, &meter).await;
    record(ctx, reader, &meter, &result).await;
    result
}

async fn record<T>(
    ctx: &Context,
    reader: &ReaderConfig,
    meter: &ReaderMetrics,
    result: &Result<T, PollError>,
) {
    match result {
        Ok(_) => {
            meter.succeeded();
            meter.state(ReaderState::Ok);
            // The poll's own writes worked.
            if let Some(fault) = ctx.store.note_write(&writer(reader), Ok(())) {
                // The failures it caused may not have been recorded (the
                // row could not be written either): the history keeps it.
                let message = format!(
                    "the database could not be written for a while: {fault}; it works again"
                );
                log_store_error(ctx.store.record_event(&reader.name, "warn", &message).await);
            }
            let recorded = ctx.store.record_success(&reader.name).await;
            ctx.store
                .note_write(&writer(reader), recorded.as_ref().map(|_| ()));
            log_store_error(recorded);
        }
        Err(e) => {
            if let Some(store_error) = e.store_error() {
                ctx.store.note_write(&writer(reader), Err(store_error));
                if store_error.is_database_fault() {
                    // Recording the failure needs the same database and
                    // may wait out its busy timeout, or fail: say it now.
                    tracing::warn!(error = %e, "the database failed this poll");
                }
            }
            let state = e.state();
            meter.failed(e.class());
            meter.state(state);
            let mut text = match advice(reader, state) {
                Some(advice) => format!("{e}; {advice}"),
                None => e.to_string(),
            };
            // "os error 24" deep in a connect error names neither the cause
            // nor the fix; the limit does.
            let exhausted = crate::ops::fds::Exhausted::of(e).or_else(|| {
                e.store_error()
                    .filter(|s| s.cannot_open())
                    .and_then(|_| crate::ops::fds::Exhausted::now())
            });
            if let Some(what) = exhausted {
                ctx.fds.met(what);
                text = format!("{}: {text}", what.describe());
            }
            let r = ctx.store.record_failure(&reader.name, state, &text).await;
            match &r {
                Err(store_error) => {
                    ctx.store.note_write(&writer(reader), Err(store_error));
                }
                // The poll failed elsewhere (the server, the token) and its
                // record was written: an older store fault of this reader
                // no longer holds, and must not fail health while the
                // reader waits for a server or a person.
                Ok(_) if e.store_error().is_none() => {
                    ctx.store.note_write(&writer(reader), Ok(()));
                }
                Ok(_) => {}
            }
            log_store_error(r.map(|_| ()));
        }
    }
}

/// The reader as a writer to the store, for [`Store::note_write`].
fn writer(reader: &ReaderConfig) -> String {
    writer_named(&reader.name)
}

/// [`writer`] by the reader's name.
pub(crate) fn writer_named(name: &str) -> String {
    format!("reader {name}")
}

/// Runs inside the reader's span, which names it.
fn log_store_error(result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "could not record reader health");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Cloud, Config};

    fn reader(protocol: &str, grant: &str, reply: &str) -> ReaderConfig {
        let text = format!(
            "[[oauth]]\nname = \"contoso\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [[reader]]\nname = \"r\"\nprotocol = \"{protocol}\"\nusername = \"desk@contoso.com\"\n\
             oauth = \"contoso\"\ngrant = \"{grant}\"\n{reply}"
        );
        let config = Config::parse(Path::new("/etc/m2t/config.toml"), &text).expect("valid");
        config.readers[0].clone()
    }

    fn services(r: &ReaderConfig) -> (Service, Service) {
        let read = token_request(r).expect("oauth").service;
        let ack = ack_token_request(r, r.oauth().expect("oauth")).service;
        (read, ack)
    }

    #[test]
    fn each_protocol_asks_for_its_own_service() {
        let grant = "authorization_code";
        assert_eq!(
            services(&reader("imap", grant, "")),
            (Service::Imap, Service::Smtp)
        );
        assert_eq!(
            services(&reader("pop3", grant, "[reader.reply]\n")),
            (Service::Pop, Service::Smtp)
        );
        assert_eq!(
            services(&reader("graph", grant, "")),
            (Service::Graph, Service::Smtp),
            "no reply: no Mail.Send"
        );
        assert_eq!(
            services(&reader("graph", grant, "[reader.reply]\nvia = \"smtp\"\n")),
            (Service::Graph, Service::Smtp)
        );
        // Over Graph, reading and sending are one request: one token.
        assert_eq!(
            services(&reader("graph", grant, "[reader.reply]\n")),
            (Service::GraphWithSend, Service::GraphWithSend)
        );
    }

    #[test]
    fn graph_reader_scopes() {
        let cloud = Cloud::Global;
        let scope = |r: &ReaderConfig| {
            let req = token_request(r).expect("oauth");
            cloud.scope(req.service, req.grant.is_app_only())
        };
        assert_eq!(
            scope(&reader("graph", "device_code", "")),
            "https://graph.microsoft.com/Mail.ReadWrite"
        );
        assert_eq!(
            scope(&reader("graph", "device_code", "[reader.reply]\n")),
            "https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send"
        );
        assert_eq!(
            scope(&reader("graph", "client_credentials", "[reader.reply]\n")),
            "https://graph.microsoft.com/.default"
        );
    }

    #[test]
    fn app_only_advice_names_the_right_permissions() {
        let advice_for = |protocol| {
            advice(
                &reader(protocol, "client_credentials", ""),
                ReaderState::NeedsAuthorization,
            )
            .expect("advice")
        };
        assert!(advice_for("graph").contains("Microsoft Graph permissions"));
        assert!(advice_for("imap").contains("Exchange permissions"));
    }
}
