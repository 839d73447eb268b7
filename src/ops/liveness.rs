//! Liveness and readiness: what `/healthz`, `/readyz` and the systemd
//! watchdog report.
//!
//! Owns one rule: the daemon is alive only while the scheduler's heartbeat
//! keeps succeeding. The heartbeat is a database write made by the
//! scheduler's own loop, so a hung loop, a wedged runtime or a database
//! that takes no writes all stop it; no separate timer vouches for a
//! scheduler that stopped working.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared between the scheduler (which beats) and the HTTP endpoints (which
/// read); cheap to clone.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    period: Duration,
    last: Mutex<Beat>,
    ready: AtomicBool,
    /// Why the store cannot write, while it cannot (see
    /// [`crate::store::Store::write_fault`]).
    store_fault: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Beat {
    ok_at: Option<Instant>,
    failure: Option<String>,
}

/// Beats missed before the daemon counts as dead.
const MISSED_BEATS: u32 = 3;

impl Liveness {
    /// The scheduler beats every `period`.
    pub fn new(period: Duration) -> Liveness {
        Liveness {
            inner: Arc::new(Inner {
                period,
                last: Mutex::new(Beat {
                    ok_at: None,
                    failure: None,
                }),
                ready: AtomicBool::new(false),
                store_fault: Mutex::new(None),
            }),
        }
    }

    pub fn period(&self) -> Duration {
        self.inner.period
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Beat> {
        // The guarded value is two plain fields, consistent after any panic.
        self.inner.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a successful beat; true when it ends a run of failures.
    pub fn beat_ok(&self) -> bool {
        let mut last = self.last();
        last.ok_at = Some(Instant::now());
        last.failure.take().is_some()
    }

    /// Records a failed beat; true when it is the first of a run.
    pub fn beat_failed(&self, why: String) -> bool {
        self.last().failure.replace(why).is_none()
    }

    /// Records whether the store can write (`None`) or why not. Kept apart
    /// from the beat: the watchdog keeps being pinged while the loop runs,
    /// since restarting the daemon does not empty a full disk.
    pub fn store_fault(&self, why: Option<String>) {
        *self
            .inner
            .store_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// `Ok` while a heartbeat succeeded within the last three periods and
    /// the store can write; else why not. One slow beat (a long commit
    /// holding the write lock) is tolerated; a database that takes no
    /// writes for three is not, and neither is one that refuses the
    /// readers' commits while the small heartbeat still fits.
    pub fn alive(&self) -> Result<(), String> {
        if let Some(why) = self
            .inner
            .store_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(format!("the store cannot write: {why}"));
        }
        let last = self.last();
        let limit = self.inner.period * MISSED_BEATS;
        match (last.ok_at, &last.failure) {
            (Some(at), _) if at.elapsed() <= limit => Ok(()),
            (_, Some(why)) => Err(format!("scheduler heartbeat failing: {why}")),
            (None, None) => Err("the scheduler has not started".into()),
            (Some(at), None) => Err(format!(
                "no scheduler heartbeat for {:.1} s",
                at.elapsed().as_secs_f64()
            )),
        }
    }

    /// Ready: started (store open, readers registered) and not stopping.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_only_while_beats_keep_succeeding() {
        let live = Liveness::new(Duration::from_millis(20));
        assert!(live.alive().is_err(), "not alive before the first beat");
        live.beat_ok();
        assert!(live.alive().is_ok());
        live.beat_failed("database is locked".into());
        assert!(live.alive().is_ok(), "one failed beat is tolerated");
        std::thread::sleep(Duration::from_millis(80));
        let why = live.alive().expect_err("failing beats are not alive");
        assert!(why.contains("database is locked"), "{why}");
        live.beat_ok();
        assert!(live.alive().is_ok());
        std::thread::sleep(Duration::from_millis(80));
        let why = live.alive().expect_err("a stale beat is not alive");
        assert!(why.contains("no scheduler heartbeat"), "{why}");
    }

    #[test]
    fn a_store_that_cannot_write_is_not_alive_while_the_beat_works() {
        let live = Liveness::new(Duration::from_secs(60));
        live.beat_ok();
        live.store_fault(Some("the disk is full".into()));
        let why = live.alive().expect_err("a store that cannot write");
        assert!(why.contains("the disk is full"), "{why}");
        live.store_fault(None);
        assert!(live.alive().is_ok());
    }
}
