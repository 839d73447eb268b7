//! `[daemon]`: `poll_interval` (every reader's default), `shutdown_timeout`,
//! `listen`, `log_format` and `watch_config`.

use std::time::Duration;

use serde::Deserialize;

use super::value::HumanDuration;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub poll_interval: Duration,
    /// How long readers get to reach a safe point after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; off when `None`.
    pub listen: Option<std::net::SocketAddr>,
    pub log_format: LogFormat,
    /// Reload when the file changes, not only on SIGHUP.
    pub watch_config: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (journald, a terminal).
    #[default]
    Text,
    /// One JSON object per event (Docker, log shippers).
    Json,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    poll_interval: Option<HumanDuration>,
    shutdown_timeout: Option<HumanDuration>,
    listen: Option<std::net::SocketAddr>,
    log_format: Option<LogFormat>,
    watch_config: Option<bool>,
}

pub(super) fn parse(raw: RawDaemon) -> DaemonConfig {
    DaemonConfig {
        poll_interval: raw.poll_interval.map_or(Duration::from_secs(60), |d| d.0),
        shutdown_timeout: raw
            .shutdown_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        listen: raw.listen,
        log_format: raw.log_format.unwrap_or_default(),
        watch_config: raw.watch_config.unwrap_or(false),
    }
}
