//! systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING.
//!
//! Owns what the service manager is told; the sd-notify crate speaks the
//! protocol. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so
//! the daemon runs the same under Docker or in a terminal.

use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager's side of the daemon.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (for this process only:
    /// `WATCHDOG_PID` must be unset or ours).
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
        }
    }

    /// `WatchdogSec=`, when systemd expects pings.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled)
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// One watchdog ping. Only the scheduler's heartbeat calls this, after
    /// it proved itself alive.
    pub fn ping(&self) {
        if self.watchdog().is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    pub fn reloading(&self) {
        // systemd (since 253) wants the monotonic time with RELOADING=1.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }
}
