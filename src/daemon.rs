//! The daemon: start-up wiring and the ways to run readers.
//!
//! Owns the order of start-up (HTTP listener, database and migrations,
//! store key, reader rows, token store, READY), the supervisor loop of
//! `run` (heartbeat, watchdog, systemd status, config reloads, the
//! acknowledgement sender beside the readers) and what `run --once`,
//! `check` and `authorize` do with the same parts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::auth::{AuthError, Authorized, CodeFlowOptions, Interaction, TokenStore};
use crate::config::{Config, Grant, ReaderConfig};
use crate::ops::liveness::Liveness;
use crate::ops::metrics::Metrics;
use crate::ops::notify::Notifier;
use crate::ops::page::StatusPage;
use crate::ops::progress::{self, Progress};
use crate::ops::reload::Triggers;
use crate::ops::{http, status};
use crate::outbound;
use crate::reader::{self, Context, PollError};
use crate::scheduler::{Registered, Scheduler};
use crate::source::{CheckReport, PollReport};
use crate::store::{ReaderIdentity, Store, StoreError};

/// The scheduler's heartbeat when no systemd watchdog sets a faster one.
const HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("[daemon] listen = \"{addr}\": cannot listen there: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
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

/// Opens the store (creating the database when missing: `run` and
/// `run --once`) and builds what every reader shares.
pub async fn start(config: &Config) -> Result<Arc<Context>, StartError> {
    let store = Store::open_or_create(
        &config.store,
        config.database_in_working_directory.as_deref(),
    )
    .await?;
    context(config, store)
}

/// [`start`] for commands that work on what `run` stored (`check`,
/// `authorize`): a missing database is an error naming the file. A token
/// stored in a new, empty database would never reach the daemon.
pub async fn start_existing(config: &Config) -> Result<Arc<Context>, StartError> {
    let store = Store::open_existing(&config.store).await?;
    context(config, store)
}

fn context(config: &Config, store: Store) -> Result<Arc<Context>, StartError> {
    let tokens = TokenStore::new(store.clone(), &config.oauth)?;
    Ok(Arc::new(Context {
        store,
        tokens,
        metrics: Metrics::new(),
        acks: tokio::sync::Notify::new(),
        fds: crate::ops::fds::Pressure::default(),
        polls: tokio::sync::Semaphore::new(config.daemon.max_concurrent_polls),
    }))
}

/// Makes sure every configured reader has its row (releasing a parked
/// reader whose settings changed) and returns them with their
/// fingerprints and states.
pub async fn register(ctx: &Context, config: &Config) -> Result<Vec<Registered>, StoreError> {
    let mut registered = Vec::with_capacity(config.readers.len());
    for reader in &config.readers {
        let oauth = reader.oauth();
        let app = oauth.and_then(|o| config.app(&o.app));
        let fingerprint = ctx.store.digest(&reader.fingerprint_material(app));
        let state = ctx
            .store
            .register_reader(ReaderIdentity {
                name: &reader.name,
                protocol: reader.protocol.as_str(),
                oauth: oauth.map(|o| o.app.as_str()),
                account: &reader.username,
                grant: reader.login.as_str(),
                config_hash: &fingerprint,
            })
            .await?;
        registered.push(Registered {
            config: reader.clone(),
            fingerprint,
            state,
        });
    }
    Ok(registered)
}

fn log_reader(what: &'static str, r: &Registered) {
    let reader = &r.config;
    tracing::info!(
        reader = %reader.name,
        protocol = reader.protocol.as_str(),
        host = %reader.host,
        tls = reader.tls.as_str(),
        grant = reader.login.as_str(),
        after = %reader.after.as_str(),
        state = r.state.as_str(),
        "{what}"
    );
}

/// Runs the daemon until `shutdown` fires: the readers, the heartbeat
/// behind `/healthz` and the systemd watchdog, reloads on SIGHUP (or a
/// changed file), and the HTTP endpoint when configured.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    match crate::ops::fds::raise_limit() {
        Ok(limit) => tracing::debug!(
            ?limit,
            "file-descriptor limit (soft, raised to the hard one)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
    }
    let notifier = Notifier::from_env();
    // Well inside the watchdog: a ping every third of WatchdogSec.
    let period = notifier
        .watchdog()
        .map_or(HEARTBEAT, |w| (w / 3).min(HEARTBEAT));
    // Bound early, so a taken port or a bad address fails start-up.
    let listener = match config.daemon.listen {
        Some(addr) => Some(
            http::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })?,
        ),
        None => None,
    };
    let mut triggers =
        Triggers::new(&config.path, config.daemon.watch_config).map_err(StartError::Signal)?;
    Store::refuse_moved(
        &config.store,
        config.database_in_working_directory.as_deref(),
    )?;
    let _claimed = Store::claim_for_daemon(&config.store)?;
    let ctx = start(&config).await?;
    let readers = register(&ctx, &config).await?;
    for r in &readers {
        log_reader("reader configured", r);
    }
    if readers.is_empty() {
        tracing::warn!(path = %config.path.display(), "no [[reader]] configured; add one and reload");
    }
    // Absolute, so that `status` run from elsewhere names the right file.
    let config_path = std::fs::canonicalize(&config.path).unwrap_or_else(|_| config.path.clone());
    ctx.store
        .daemon_started(
            std::process::id(),
            period,
            &config_path.display().to_string(),
        )
        .await?;

    let liveness = Liveness::new(period);
    // The status page judges the rows by the configuration running now.
    let (page_config, page_config_now) = tokio::sync::watch::channel(config.clone());
    let stop_http = CancellationToken::new();
    let http_task = listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the status page (/), /healthz, /readyz and /metrics");
        }
        tokio::spawn(http::serve(
            listener,
            liveness.clone(),
            ctx.metrics.clone(),
            ctx.fds.clone(),
            StatusPage::new(ctx.store.status_view(), page_config_now),
            stop_http.clone(),
        ))
    });

    let mut scheduler = Scheduler::new(
        ctx.clone(),
        shutdown.clone(),
        config.daemon.shutdown_timeout,
    );
    scheduler.apply(readers);
    // Acknowledgements go out beside the readers, never in their way.
    let (replies, replies_now) = tokio::sync::watch::channel(outbound::readers(&config));
    let mut sender = tokio::spawn(
        outbound::run(ctx.clone(), replies_now, shutdown.clone())
            .instrument(tracing::info_span!("outbox")),
    );
    let mut supervisor = Supervisor {
        ctx: ctx.clone(),
        liveness: liveness.clone(),
        notifier,
        config,
        status_line: String::new(),
        replies,
    };
    supervisor.beat().await;
    supervisor.status_line = supervisor.summary().await;
    liveness.set_ready(true);
    supervisor.notifier.ready(&supervisor.status_line);

    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            trigger = triggers.next() => {
                tracing::info!(trigger = trigger.as_str(), "reloading the configuration");
                supervisor.notifier.reloading();
                supervisor.reload(&mut scheduler, &mut triggers).await;
                page_config.send_replace(supervisor.config.clone());
                supervisor.status_line = supervisor.summary().await;
                supervisor.notifier.ready(&supervisor.status_line);
            }
            _ = tick.tick() => {
                supervisor.beat().await;
                scheduler.reap();
                supervisor.update_status().await;
            }
        }
    }

    liveness.set_ready(false);
    supervisor.notifier.stopping();
    let grace = supervisor.config.daemon.shutdown_timeout;
    // The sender finishes the attempt in progress; at most the grace period.
    let (_, finished) = tokio::join!(scheduler.stop(), tokio::time::timeout(grace, &mut sender));
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the acknowledgement sender ended abnormally"),
        Err(_) => {
            tracing::warn!(
                "acknowledgement still being sent after the grace period; abandoning it \
                 (its row is tried again once its lease ends)"
            );
            sender.abort();
        }
    }
    stop_http.cancel();
    if let Some(task) = http_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "HTTP endpoint task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Err(e) = ctx.store.daemon_stopped().await {
        tracing::warn!(error = %e, "could not record the daemon's stop");
    }
    Ok(())
}

/// The supervisor loop's state: what it beats, tells systemd and reloads.
struct Supervisor {
    ctx: Arc<Context>,
    liveness: Liveness,
    notifier: Notifier,
    /// The configuration running now.
    config: Config,
    /// The last STATUS= sent.
    status_line: String,
    /// The readers the acknowledgement sender sends for.
    replies: tokio::sync::watch::Sender<outbound::Readers>,
}

impl Supervisor {
    /// One heartbeat: a database write within one period. Only a success
    /// pings the watchdog.
    async fn beat(&self) {
        let limit = self.liveness.period().max(Duration::from_secs(1));
        let beat = tokio::time::timeout(limit, self.ctx.store.heartbeat()).await;
        if let Ok(result) = &beat {
            self.ctx
                .store
                .note_write("the heartbeat", result.as_ref().map(|_| ()));
        }
        self.liveness.store_fault(self.ctx.store.write_fault());
        let failure = match beat {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "the database took no write within {:.1} s",
                limit.as_secs_f64()
            )),
        };
        match failure {
            None => {
                self.ctx.metrics.heartbeat();
                if self.liveness.beat_ok() {
                    tracing::info!("scheduler heartbeat works again");
                }
                self.notifier.ping();
            }
            Some(why) => {
                // Once per run of failures: a long outage must not flood the log.
                if self.liveness.beat_failed(why.clone()) {
                    tracing::warn!(error = %why, "scheduler heartbeat failed; no watchdog pings until it works");
                } else {
                    tracing::debug!(error = %why, "scheduler heartbeat failed again");
                }
            }
        }
    }

    /// The one-line STATUS=, e.g. `5 readers: 4 ok, 1 needs_authorization`.
    async fn summary(&self) -> String {
        let rows = match self.ctx.store.status_view().reader_statuses().await {
            Ok(rows) => rows,
            Err(e) => return format!("cannot read reader states: {e}"),
        };
        self.export_health(rows.clone()).await;
        let mut line = status::summary(&rows, &self.config);
        if let Ok(Some(daemon)) = self.ctx.store.status_view().daemon_status().await
            && daemon.reload_error.is_some()
        {
            line.push_str("; config reload failed, see `mail2ticket status`");
        }
        line
    }

    /// What `status` judges from the rows (failures in a row, stale, the
    /// refresh token's last use), as gauges for the alert rules in dist/.
    async fn export_health(&self, rows: Vec<crate::store::ReaderStatus>) {
        let metrics = &self.ctx.metrics;
        let report = status::Report::new(&self.config, None, rows);
        for r in report.readers.iter().filter(|r| r.configured) {
            metrics.reader_health(&r.row.name, r.row.consecutive_failures, r.stale);
        }
        let used: HashMap<String, f64> =
            match self.ctx.store.status_view().refresh_token_use().await {
                Ok(rows) => rows.into_iter().collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read when refresh tokens were used");
                    return;
                }
            };
        for r in report.readers.iter().filter(|r| r.configured) {
            metrics.refresh_token_used(&r.row.name, used.get(&r.row.name).copied());
        }
    }

    async fn update_status(&mut self) {
        // Bounded like the heartbeat: the loop that beats must never wait
        // on the database for long, or a locked database would silence
        // the heartbeat's own failure reports.
        let limit = self.liveness.period().max(Duration::from_secs(1));
        let Ok(line) = tokio::time::timeout(limit, self.summary()).await else {
            return;
        };
        if line != self.status_line {
            self.notifier.status(&line);
            self.status_line = line;
        }
    }

    /// Loads the file again and applies it; an invalid file changes
    /// nothing but the recorded reload error.
    async fn reload(&mut self, scheduler: &mut Scheduler, triggers: &mut Triggers) {
        let store = &self.ctx.store;
        let new = match Config::load(&self.config.path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                self.ctx.metrics.reload(false);
                if let Err(e2) = store.record_reload(Err(&e.to_string())).await {
                    tracing::warn!(error = %e2, "could not record the reload error");
                }
                return;
            }
        };
        for (what, changed) in [
            ("[store]", new.store != self.config.store),
            (
                "[daemon] listen",
                new.daemon.listen != self.config.daemon.listen,
            ),
            (
                "[daemon] log_format",
                new.daemon.log_format != self.config.daemon.log_format,
            ),
            (
                "[daemon] max_concurrent_polls",
                new.daemon.max_concurrent_polls != self.config.daemon.max_concurrent_polls,
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "changed in the file; takes effect at the next restart"
                );
            }
        }
        self.ctx.tokens.set_apps(&new.oauth);
        let registered = match register(&self.ctx, &new).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; the running configuration stays");
                self.ctx.metrics.reload(false);
                return;
            }
        };
        let by_name: std::collections::HashMap<&str, &Registered> = registered
            .iter()
            .map(|r| (r.config.name.as_str(), r))
            .collect();
        scheduler.set_grace(new.daemon.shutdown_timeout);
        let applied = scheduler.apply(registered.clone());
        for name in &applied.added {
            if let Some(r) = by_name.get(name.as_str()) {
                log_reader("reader added", r);
            }
        }
        for name in &applied.changed {
            if let Some(r) = by_name.get(name.as_str()) {
                log_reader("reader changed; restarting it", r);
            }
        }
        for name in &applied.removed {
            tracing::info!(reader = %name, "reader removed; stopping it after its current transaction");
            if let Err(e) = store
                .record_event(name, "info", "removed from the configuration; stopped")
                .await
            {
                tracing::warn!(reader = %name, error = %e, "could not record the reader's removal");
            }
        }
        triggers.set_watch(new.daemon.watch_config);
        self.config = Config {
            // Not applied before a restart (warned above).
            store: self.config.store.clone(),
            daemon: crate::config::DaemonConfig {
                listen: self.config.daemon.listen,
                log_format: self.config.daemon.log_format,
                max_concurrent_polls: self.config.daemon.max_concurrent_polls,
                ..new.daemon.clone()
            },
            ..new
        };
        // Rows of a reader whose reply settings changed use the new ones
        // from their next attempt on.
        self.replies.send_replace(outbound::readers(&self.config));
        self.ctx.acks.notify_one();
        self.ctx.metrics.reload(true);
        if let Err(e) = store.record_reload(Ok(())).await {
            tracing::warn!(error = %e, "could not record the reload");
        }
        tracing::info!(
            added = applied.added.len(),
            removed = applied.removed.len(),
            changed = applied.changed.len(),
            unchanged = registered.len() - applied.added.len() - applied.changed.len(),
            "configuration reloaded"
        );
    }
}

/// Polls every reader once, each until nothing is pending, concurrently;
/// then sends the acknowledgements that are due. How sending went is
/// logged and kept in the outbox (`status`), and does not change the
/// readers' results: a mail server's refusal is no failed poll.
pub async fn run_once(
    config: &Config,
    cancel: CancellationToken,
) -> Result<Vec<(String, Result<PollReport, PollError>)>, StartError> {
    let ctx = start(config).await?;
    register(&ctx, config).await?;
    let progress = Progress::sync(
        ctx.metrics.clone(),
        config.readers.iter().map(|r| r.name.clone()).collect(),
        progress::Output::detect(),
    );
    let results = for_each_reader(&config.readers, |reader| {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        async move { reader::poll_unless_stopped(&ctx, &reader, &cancel).await }
    })
    .await;
    progress.finish().await;
    let drained = outbound::send_due(&ctx, &outbound::readers(config), &cancel)
        .instrument(tracing::info_span!("outbox"))
        .await;
    match drained {
        Ok(d) if d.sent + d.retried + d.failed + d.waiting > 0 => tracing::info!(
            sent = d.sent,
            retried = d.retried,
            failed = d.failed,
            waiting = d.waiting,
            "acknowledgements"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot work through the outbox"),
    }
    Ok(results)
}

/// Checks the named readers (all when `names` is empty).
pub async fn check(
    config: &Config,
    names: &[String],
) -> Result<Vec<(String, Result<CheckReport, PollError>)>, StartError> {
    let selected = select_readers(config, names)?;
    let ctx = start_existing(config).await?;
    register(&ctx, config).await?;
    let progress = Progress::spinner(
        format!(
            "checking {} reader{}",
            selected.len(),
            if selected.len() == 1 { "" } else { "s" }
        ),
        progress::Output::detect(),
    );
    let results = for_each_reader(&selected, |reader| {
        let ctx = ctx.clone();
        async move { reader::check_and_record(&ctx, &reader).await }
    })
    .await;
    progress.finish().await;
    Ok(results)
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
    let ctx = start_existing(config).await?;
    register(&ctx, config).await?;
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
        let fut =
            op(reader.clone()).instrument(tracing::info_span!("reader", reader = %reader.name));
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
