//! `[daemon]`: `poll_interval` (every reader's default), `shutdown_timeout`,
//! `listen`, `log_format`, `watch_config` and `max_concurrent_polls`.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::locate::Locator;
use super::value::HumanDuration;
use toml::Spanned;

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
    /// Polls (connect, sign in, fetch, commit) running at once, across
    /// all readers; the others wait their turn. Readers waiting in IDLE
    /// do not count.
    pub max_concurrent_polls: usize,
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
    max_concurrent_polls: Option<Spanned<usize>>,
}

/// Enough for a few hundred readers a minute, few enough that a start with
/// a thousand readers does not overflow a mail server's login queue.
pub const DEFAULT_CONCURRENT_POLLS: usize = 32;

pub(super) fn parse(locate: &Locator, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
    let max_concurrent_polls = match raw.max_concurrent_polls {
        // No poll could ever start.
        Some(n) if *n.get_ref() == 0 => {
            return Err(locate.at(n.span(), "max_concurrent_polls", "must be at least 1"));
        }
        Some(n) => n.into_inner(),
        None => DEFAULT_CONCURRENT_POLLS,
    };
    Ok(DaemonConfig {
        poll_interval: raw.poll_interval.map_or(Duration::from_secs(60), |d| d.0),
        shutdown_timeout: raw
            .shutdown_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        listen: raw.listen,
        log_format: raw.log_format.unwrap_or_default(),
        watch_config: raw.watch_config.unwrap_or(false),
        max_concurrent_polls,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{GOOD, error_text, parse};

    #[test]
    fn max_concurrent_polls_defaults_and_refuses_zero() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(
            config.daemon.max_concurrent_polls,
            super::DEFAULT_CONCURRENT_POLLS
        );
        let with = |n: &str| {
            GOOD.replace(
                "poll_interval = \"60s\"",
                &format!("poll_interval = \"60s\"\nmax_concurrent_polls = {n}"),
            )
        };
        let config = parse(&with("4")).expect("valid");
        assert_eq!(config.daemon.max_concurrent_polls, 4);
        let err = error_text(&with("0"));
        assert!(
            err.starts_with(
                "/etc/m2t/config.toml:7: daemon.max_concurrent_polls: must be at least 1"
            ),
            "{err}"
        );
    }
}
