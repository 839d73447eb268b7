//! The daemon: start-up wiring and the three ways to run readers.
//!
//! Owns the order of start-up (database and migrations, store key, reader
//! rows, token store) and what `run`, `run --once`, `check` and
//! `authorize` do with it.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authorized, CodeFlowOptions, Interaction, TokenStore};
use crate::config::{Config, Grant, ReaderConfig};
use crate::reader::{self, Context, PollError};
use crate::scheduler;
use crate::source::{CheckReport, PollReport};
use crate::store::{ReaderIdentity, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("reader {0:?} uses grant = \"client_credentials\": app-only readers need no sign-in")]
    AppOnly(String),
    #[error(
        "reader {0:?} uses auth = \"plain\": it logs in with its password, there is nothing to sign in to"
    )]
    PasswordLogin(String),
    #[error("no reader named {name:?} in {path} (configured: {known})")]
    UnknownReader {
        name: String,
        path: String,
        known: String,
    },
}

/// Opens the store and registers every configured reader.
pub async fn start(config: &Config) -> Result<Arc<Context>, StartError> {
    let store = Store::open(&config.store).await?;
    for reader in &config.readers {
        let oauth = reader.oauth();
        let app = oauth.and_then(|o| config.app(&o.app));
        let config_hash = store.digest(&reader.fingerprint_material(app));
        let state = store
            .register_reader(ReaderIdentity {
                name: &reader.name,
                protocol: reader.protocol.as_str(),
                oauth: oauth.map(|o| o.app.as_str()),
                account: &reader.username,
                grant: reader.login.as_str(),
                config_hash: &config_hash,
            })
            .await?;
        tracing::info!(
            reader = %reader.name,
            protocol = reader.protocol.as_str(),
            host = %reader.host,
            tls = reader.tls.as_str(),
            grant = reader.login.as_str(),
            after = %reader.after.as_str(),
            state = state.as_str(),
            "reader configured"
        );
    }
    let tokens = TokenStore::new(store.clone(), &config.oauth)?;
    Ok(Arc::new(Context { store, tokens }))
}

/// Runs the scheduler until `cancel` fires.
pub async fn run(config: &Config, cancel: CancellationToken) -> Result<(), StartError> {
    let ctx = start(config).await?;
    if config.readers.is_empty() {
        tracing::warn!(path = %config.path.display(), "no [[reader]] configured; waiting for shutdown");
    }
    scheduler::run(
        ctx,
        config.readers.clone(),
        cancel,
        config.daemon.shutdown_timeout,
    )
    .await;
    Ok(())
}

/// Polls every reader once, each until nothing is pending, concurrently.
pub async fn run_once(
    config: &Config,
    cancel: CancellationToken,
) -> Result<Vec<(String, Result<PollReport, PollError>)>, StartError> {
    let ctx = start(config).await?;
    let results = for_each_reader(&config.readers, |reader| {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        async move { reader::poll_unless_stopped(&ctx, &reader, &cancel).await }
    })
    .await;
    Ok(results)
}

/// Checks the named readers (all when `names` is empty).
pub async fn check(
    config: &Config,
    names: &[String],
) -> Result<Vec<(String, Result<CheckReport, PollError>)>, StartError> {
    let selected = select_readers(config, names)?;
    let ctx = start(config).await?;
    Ok(for_each_reader(&selected, |reader| {
        let ctx = ctx.clone();
        async move { reader::check_and_record(&ctx, &reader).await }
    })
    .await)
}

/// How `authorize` signs in.
#[derive(Debug, Clone)]
pub enum SignInMethod {
    Code(CodeFlowOptions),
    Device,
}

/// Signs in interactively for one reader's account and stores the refresh
/// token; the readers that were waiting for it are released.
pub async fn authorize(
    config: &Config,
    name: &str,
    method: &SignInMethod,
    ui: &impl Interaction,
) -> Result<Authorized, StartError> {
    let reader = find_reader(config, name)?.clone();
    let Some(request) = reader::token_request(&reader) else {
        return Err(StartError::PasswordLogin(reader.name));
    };
    if request.grant == Grant::ClientCredentials {
        return Err(StartError::AppOnly(reader.name));
    }
    let ctx = start(config).await?;
    let result = match method {
        SignInMethod::Code(options) => ctx.tokens.authorize_code(&request, options, ui).await,
        SignInMethod::Device => ctx.tokens.authorize_device(&request, ui).await,
    };
    Ok(result?)
}

fn select_readers(config: &Config, names: &[String]) -> Result<Vec<ReaderConfig>, StartError> {
    if names.is_empty() {
        return Ok(config.readers.clone());
    }
    names
        .iter()
        .map(|name| find_reader(config, name).cloned())
        .collect()
}

fn find_reader<'c>(config: &'c Config, name: &str) -> Result<&'c ReaderConfig, StartError> {
    config
        .reader(name)
        .ok_or_else(|| StartError::UnknownReader {
            name: name.to_string(),
            path: config.path.display().to_string(),
            known: config
                .readers
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Runs `op` for every reader concurrently; results in config order.
async fn for_each_reader<T, F, Fut>(readers: &[ReaderConfig], op: F) -> Vec<(String, T)>
where
    F: Fn(ReaderConfig) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = JoinSet::new();
    for (i, reader) in readers.iter().enumerate() {
        let fut = op(reader.clone());
        tasks.spawn(async move { (i, fut.await) });
    }
    let mut results: Vec<Option<T>> = readers.iter().map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, value)) => results[i] = Some(value),
            Err(e) => tracing::error!(error = %e, "a reader task ended abnormally"),
        }
    }
    readers
        .iter()
        .zip(results)
        .filter_map(|(r, v)| v.map(|v| (r.name.clone(), v)))
        .collect()
}
