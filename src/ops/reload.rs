//! What triggers a config reload: SIGHUP, and with `watch_config = true` a
//! change to the file.
//!
//! Owns the triggers only; loading and applying the new configuration is
//! the daemon's. The file is polled (every [`WATCH_EVERY`]) rather than
//! watched with inotify: a poll also sees a bind-mounted file replaced
//! from outside a container and a Kubernetes ConfigMap's symlink swap,
//! which inotify on the path misses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// How often a watched config file is read.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Sighup,
    FileChanged,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Sighup => "SIGHUP",
            Trigger::FileChanged => "config file changed",
        }
    }
}

pub struct Triggers {
    hup: Signal,
    /// Kept across calls: [`Triggers::next`] is raced against other work
    /// and dropped often, and must not restart the clock each time.
    every: tokio::time::Interval,
    path: PathBuf,
    watch: bool,
    /// The file as last loaded (or refused): a reload is due when it differs.
    loaded: Option<Vec<u8>>,
    /// A changed version seen once; reloaded only when the next read still
    /// finds it, so that a file caught half-written is not loaded.
    settling: Option<Vec<u8>>,
}

impl Triggers {
    /// Installs the SIGHUP handler; from now on SIGHUP no longer ends the
    /// process.
    pub fn new(path: &Path, watch: bool) -> std::io::Result<Triggers> {
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Triggers {
            hup: signal(SignalKind::hangup())?,
            every,
            path: path.to_path_buf(),
            watch,
            loaded: std::fs::read(path).ok(),
            settling: None,
        })
    }

    pub fn set_watch(&mut self, watch: bool) {
        self.watch = watch;
    }

    /// Waits for the next reason to reload; cancel-safe. Afterwards the
    /// file as it is now counts as loaded.
    pub async fn next(&mut self) -> Trigger {
        let trigger = if self.watch {
            loop {
                tokio::select! {
                    _ = self.hup.recv() => break Trigger::Sighup,
                    _ = self.every.tick() => {
                        if self.changed() {
                            break Trigger::FileChanged;
                        }
                    }
                }
            }
        } else {
            self.hup.recv().await;
            Trigger::Sighup
        };
        self.loaded = std::fs::read(&self.path).ok();
        self.settling = None;
        trigger
    }

    fn changed(&mut self) -> bool {
        // An unreadable file (mid-rename) is not a change yet.
        let Ok(now) = std::fs::read(&self.path) else {
            return false;
        };
        if self.loaded.as_ref() == Some(&now) {
            self.settling = None;
            return false;
        }
        if self.settling.as_ref() == Some(&now) {
            return true;
        }
        self.settling = Some(now);
        false
    }
}
