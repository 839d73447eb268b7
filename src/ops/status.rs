//! `status` and `health`: reader and daemon health (and each reader's
//! acknowledgement outbox) from the database, as a table for humans (with
//! warnings for what will break if nobody acts) or as JSON for scripts,
//! and the one-line summary systemd shows.
//!
//! Owns the two commands whole ([`run`], [`health`]: reading the rows from
//! the database and assembling the [`Report`]) and the judgements made on
//! the rows: stale (no success in three poll intervals), a daemon alive (a
//! recent heartbeat), a refresh token about to die of inactivity. Not to be
//! confused with `store::readers` (the rows themselves) or `ops::liveness`
//! (what `/healthz`, `/readyz` and the systemd watchdog report).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::outcome::ReaderState;
use crate::store::{
    DaemonStatus, FirstContactRow, MailCounts, OutboxStatus, ReaderEvent, ReaderStatus, StatusView,
    StoreError,
};

/// A reader is stale after this many poll intervals without a success.
pub const STALE_AFTER_INTERVALS: u32 = 3;
/// The daemon counts as dead after this many heartbeats missed.
const MISSED_HEARTBEATS: f64 = 3.0;

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct Report {
    pub daemon: DaemonView,
    pub readers: Vec<ReaderView>,
}

#[derive(Debug, Serialize)]
pub struct DaemonView {
    pub running: bool,
    #[serde(flatten)]
    pub row: Option<DaemonStatus>,
}

#[derive(Debug, Serialize)]
pub struct ReaderView {
    #[serde(flatten)]
    pub row: ReaderStatus,
    /// In the configuration file now (a removed reader keeps its rows).
    pub configured: bool,
    pub stale: bool,
    pub poll_interval_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<ReaderEvent>>,
    /// Its acknowledgements, when it ever queued one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
    /// What its mail of the last [`MAIL_HOURS`] hours became, when it had any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_24h: Option<MailCounts>,
    /// Mails of this reader in the quarantine now, whenever they came.
    pub quarantined: i64,
    /// What `backfill` took and left at each first contact (with
    /// `--reader`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_contacts: Option<Vec<FirstContactRow>>,
}

/// The window of the mail counts `status` shows.
pub const MAIL_HOURS: u32 = 24;

impl Report {
    /// Judges the rows against the configuration.
    pub fn new(config: &Config, daemon: Option<DaemonStatus>, rows: Vec<ReaderStatus>) -> Report {
        let intervals: HashMap<&str, Duration> = config
            .readers
            .iter()
            .map(|r| (r.name.as_str(), r.poll_interval))
            .collect();
        let readers = rows
            .into_iter()
            .map(|row| {
                let interval = intervals.get(row.name.as_str()).copied();
                ReaderView {
                    configured: interval.is_some(),
                    stale: interval.is_some_and(|i| is_stale(&row, i)),
                    poll_interval_seconds: interval.map(|i| i.as_secs()),
                    row,
                    events: None,
                    outbox: None,
                    mail_24h: None,
                    quarantined: 0,
                    first_contacts: None,
                }
            })
            .collect();
        Report {
            daemon: DaemonView {
                running: daemon.as_ref().is_some_and(|d| daemon_alive(d).is_ok()),
                row: daemon,
            },
            readers,
        }
    }
}

impl Report {
    /// Adds each reader's outbox counts (readers without an outbox get none).
    pub fn set_outbox(&mut self, counts: Vec<OutboxStatus>) {
        let mut by_reader: HashMap<String, OutboxStatus> =
            counts.into_iter().map(|c| (c.reader.clone(), c)).collect();
        for r in &mut self.readers {
            r.outbox = by_reader.remove(&r.row.name);
        }
    }
}

impl Report {
    /// Adds how many mails each reader has in the quarantine.
    pub fn set_quarantine(&mut self, counts: Vec<(String, i64)>) {
        let by_reader: HashMap<String, i64> = counts.into_iter().collect();
        for r in &mut self.readers {
            r.quarantined = by_reader.get(&r.row.name).copied().unwrap_or(0);
        }
    }
}

impl Report {
    /// Adds what each reader's recent mail became.
    pub fn set_mail(&mut self, counts: Vec<MailCounts>) {
        let mut by_reader: HashMap<String, MailCounts> =
            counts.into_iter().map(|c| (c.reader.clone(), c)).collect();
        for r in &mut self.readers {
            r.mail_24h = by_reader.remove(&r.row.name);
        }
    }
}

/// Why `status` or `health` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no reader named {0:?} in the database")]
    NoSuchReader(String),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The `status` command: the report from the database, for every reader or
/// for `reader` alone with its newest `limit` history rows, as a table or
/// (`json`) as JSON; the text to print.
pub async fn run(
    config: &Config,
    reader: Option<&str>,
    limit: i64,
    json: bool,
) -> Result<String, StatusError> {
    let report = report(config, reader, limit).await?;
    Ok(if json {
        format!("{}\n", serde_json::to_string_pretty(&report)?)
    } else {
        render_report(&report)
    })
}

/// Everything `status` shows, read from the database: see [`run`].
pub async fn report(
    config: &Config,
    reader: Option<&str>,
    limit: i64,
) -> Result<Report, StatusError> {
    let store = StatusView::open(&config.store).await?;
    report_from(&store, config, reader, limit).await
}

/// [`report`] from a view the caller holds (the status page's, the
/// daemon's own pool).
pub async fn report_from(
    store: &StatusView,
    config: &Config,
    reader: Option<&str>,
    limit: i64,
) -> Result<Report, StatusError> {
    let mut rows = store.reader_statuses().await?;
    if let Some(name) = reader {
        rows.retain(|r| r.name == name);
        if rows.is_empty() {
            return Err(StatusError::NoSuchReader(name.to_string()));
        }
    }
    let mut report = Report::new(config, store.daemon_status().await?, rows);
    report.set_outbox(store.outbox_statuses().await?);
    report.set_mail(store.mail_counts(MAIL_HOURS).await?);
    report.set_quarantine(store.quarantine_counts().await?);
    if let Some(name) = reader {
        // `rows` was narrowed to this one reader above.
        if let Some(r) = report.readers.first_mut() {
            r.events = Some(store.reader_events(name, limit).await?);
            r.first_contacts = Some(store.first_contacts(name).await?);
        }
    }
    Ok(report)
}

/// The `health` command's verdict: `Ok` when the running daemon's
/// heartbeat is recent, else why not (see [`daemon_alive`]).
pub async fn health(config: &Config) -> Result<Result<(), String>, StatusError> {
    let store = StatusView::open(&config.store).await?;
    Ok(match store.daemon_status().await? {
        Some(daemon) => daemon_alive(&daemon),
        None => Err("the daemon never ran on this database".into()),
    })
}

fn is_stale(row: &ReaderStatus, interval: Duration) -> bool {
    let limit = (interval * STALE_AFTER_INTERVALS).as_secs_f64();
    row.seconds_without_success.is_some_and(|s| s > limit)
}

/// `Ok` when the daemon's heartbeat is recent; else why it is not.
pub fn daemon_alive(d: &DaemonStatus) -> Result<(), String> {
    if let Some(stopped) = &d.stopped_at
        && d.heartbeat_at.is_none()
    {
        return Err(format!("the daemon (pid {}) stopped at {stopped}", d.pid));
    }
    let limit = d.heartbeat_seconds * MISSED_HEARTBEATS;
    match d.heartbeat_age {
        Some(age) if age <= limit => Ok(()),
        Some(age) => Err(format!(
            "no heartbeat from the daemon (pid {}) for {}; expected every {}",
            d.pid,
            seconds(age),
            seconds(d.heartbeat_seconds)
        )),
        None => Err(format!("the daemon (pid {}) never beat", d.pid)),
    }
}

fn seconds(s: f64) -> String {
    let whole = Duration::from_secs(s.max(0.0).round() as u64);
    if whole.is_zero() {
        format!("{s:.1}s")
    } else {
        humantime::format_duration(whole).to_string()
    }
}

/// systemd's STATUS= line: `5 readers: 4 ok, 1 needs_authorization`.
pub fn summary(rows: &[ReaderStatus], config: &Config) -> String {
    let configured: Vec<&ReaderStatus> = rows
        .iter()
        .filter(|r| config.reader(&r.name).is_some())
        .collect();
    let n = configured.len();
    let mut line = format!("{n} reader{}", if n == 1 { "" } else { "s" });
    let counts: Vec<String> = [
        ReaderState::Ok,
        ReaderState::Retrying,
        ReaderState::NeedsAuthorization,
        ReaderState::Misconfigured,
    ]
    .into_iter()
    .filter_map(|state| {
        let k = configured
            .iter()
            .filter(|r| r.state == state.as_str())
            .count();
        (k > 0).then(|| format!("{k} {}", state.as_str()))
    })
    .collect();
    if !counts.is_empty() {
        line.push_str(": ");
        line.push_str(&counts.join(", "));
    }
    line
}

/// The daemon line(s) above the table.
fn daemon_lines(d: &DaemonView) -> String {
    let Some(row) = &d.row else {
        return "daemon: never ran on this database\n".into();
    };
    let mut out = match daemon_alive(row) {
        Ok(()) => format!(
            "daemon: running (pid {}, since {}, config {})\n",
            row.pid, row.started_at, row.config_path
        ),
        Err(why) => format!("daemon: not running: {why}\n"),
    };
    if let Some(error) = &row.reload_error {
        out.push_str(&format!(
            "daemon: config reload failed at {}; the previous configuration is still running: {error}\n",
            row.reload_error_at.as_deref().unwrap_or("?")
        ));
    }
    out
}

/// The whole text report: daemon, table, warnings, and the history of
/// readers that carry it.
pub fn render_report(report: &Report) -> String {
    let mut out = daemon_lines(&report.daemon);
    let rows: Vec<ReaderStatus> = report.readers.iter().map(|r| r.row.clone()).collect();
    out.push_str(&render(&rows));
    for r in &report.readers {
        if !r.configured {
            out.push_str(&format!(
                "note: {}: no longer in the configuration; its rows are kept\n",
                r.row.name
            ));
        } else if r.stale {
            let interval = Duration::from_secs(r.poll_interval_seconds.unwrap_or(0));
            out.push_str(&format!(
                "warning: {}: stale: no success for {} ({STALE_AFTER_INTERVALS}x its poll interval \
                 of {} is the limit); see `mail2ticket status --reader {}`\n",
                r.row.name,
                seconds(r.row.seconds_without_success.unwrap_or(0.0)),
                humantime::format_duration(interval),
                r.row.name
            ));
        }
        if r.quarantined > 0 {
            out.push_str(&format!(
                "warning: {}: {} mail(s) in quarantine (kept whole, no ticket yet); \
                 see `mail2ticket quarantine list`\n",
                r.row.name, r.quarantined
            ));
        }
        if let Some(mail) = &r.mail_24h {
            out.push_str(&mail_line(&r.row.name, mail));
        }
        if let Some(outbox) = &r.outbox {
            out.push_str(&outbox_line(&r.row.name, outbox));
        }
        for f in r.first_contacts.iter().flatten() {
            out.push_str(&format!(
                "first contact of {} with {} at {}: backfill = \"{}\" took {} of {} mails, \
                 left {} on the server\n",
                r.row.name, f.folder, f.at, f.backfill, f.found.taken, f.found.messages, f.skipped
            ));
        }
        if let Some(events) = &r.events {
            out.push_str(&format!("\nhistory of {} (newest first):\n", r.row.name));
            if events.is_empty() {
                out.push_str("(none)\n");
            }
            for e in events {
                out.push_str(&format!("{}  {:<5}  {}\n", e.at, e.level, e.message));
            }
        }
    }
    out
}

/// `mail of NAME, last 24 h: 5 tickets, 2 replies, 3 ignored (2 auto-reply, 1 bulk)`:
/// what opened no ticket is visible without SQL.
fn mail_line(name: &str, m: &MailCounts) -> String {
    let mut parts = vec![
        format!("{} tickets", m.tickets),
        format!("{} replies", m.replies),
    ];
    if m.reopened > 0 {
        parts.push(format!("{} reopened", m.reopened));
    }
    if m.bounces > 0 {
        parts.push(format!("{} bounces", m.bounces));
    }
    if m.quarantined > 0 {
        parts.push(format!("{} quarantined", m.quarantined));
    }
    let mut line = format!("mail of {name}, last {MAIL_HOURS} h: {}", parts.join(", "));
    if m.ignored_total() > 0 {
        let reasons: Vec<String> = m.ignored.iter().map(|(r, n)| format!("{n} {r}")).collect();
        line.push_str(&format!(
            ", {} ignored ({}); see emails.disposition",
            m.ignored_total(),
            reasons.join(", ")
        ));
    }
    line.push('\n');
    line
}

/// `acknowledgements of NAME: 3 sent, 1 pending (oldest queued at ...), 0 failed`,
/// then the last error of one not sent, and a warning for given-up ones.
fn outbox_line(name: &str, o: &OutboxStatus) -> String {
    let mut line = format!(
        "acknowledgements of {name}: {} sent, {} pending",
        o.sent, o.pending
    );
    if let Some(oldest) = &o.oldest_pending_at {
        line.push_str(&format!(" (oldest queued at {oldest})"));
    }
    line.push_str(&format!(", {} failed", o.failed));
    if let Some(error) = &o.last_error {
        line.push_str(&format!(
            "; last error ({}): {error}",
            o.last_error_at.as_deref().unwrap_or("?")
        ));
    }
    line.push('\n');
    if o.failed > 0 {
        line.push_str(&format!(
            "warning: {name}: {} acknowledgement(s) given up; see the outbox table \
             (state = 'failed', last_error)\n",
            o.failed
        ));
    }
    line
}

/// Entra ends a refresh token after 90 days without use; warn ten days
/// ahead, while a restart or a `check` still saves it.
pub const REFRESH_IDLE_WARNING_DAYS: i64 = 80;
const REFRESH_IDLE_LIMIT_DAYS: i64 = 90;

/// Renders one line per reader with aligned columns, then the warnings.
pub fn render(rows: &[ReaderStatus]) -> String {
    let header = [
        "READER",
        "PROTOCOL",
        "STATE",
        "LAST POLL",
        "LAST SUCCESS",
        "FAILURES",
        "LAST ERROR",
    ];
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.protocol.clone(),
                r.state.clone(),
                r.last_poll_at.clone().unwrap_or_else(|| "never".into()),
                r.last_success_at.clone().unwrap_or_else(|| "never".into()),
                r.consecutive_failures.to_string(),
                r.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: &[&str]| {
        let mut row = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                row.push_str(cell);
            } else {
                row.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(row.trim_end());
        out.push('\n');
    };
    push(&header);
    for line in &lines {
        push(&line.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for warning in rows.iter().filter_map(warning) {
        out.push_str(&warning);
        out.push('\n');
    }
    out
}

fn warning(r: &ReaderStatus) -> Option<String> {
    let days = r.refresh_idle_days?;
    if days < REFRESH_IDLE_WARNING_DAYS {
        return None;
    }
    let left = REFRESH_IDLE_LIMIT_DAYS - days;
    let when = if left > 0 {
        format!("in {left} days")
    } else {
        "now".into()
    };
    Some(format!(
        "warning: {}: refresh token unused for {days} days; Entra ID ends it after \
         {REFRESH_IDLE_LIMIT_DAYS} days without use ({when}). Start the daemon or run \
         `mail2ticket check {}` to keep it alive.",
        r.name, r.name
    ))
}

#[cfg(test)]
mod tests;
