//! `NotifySocket`: the receiving end of the systemd notify protocol, as
//! systemd would hold it for a `Type=notify` service: a unix datagram
//! socket whose path goes into the service's `NOTIFY_SOCKET`.
//!
//! Every datagram is recorded with the moment it arrived. A datagram holds
//! one or more newline-separated assignments (`READY=1\nSTATUS=...`).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One assignment (`KEY=VALUE`) and when its datagram arrived.
#[derive(Clone, Debug)]
pub struct Notification {
    pub at: Instant,
    pub key: String,
    pub value: String,
}

/// A bound notify socket; stops listening (and removes it) on Drop.
pub struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    /// Binds a socket in a new directory under /tmp (a unix socket path
    /// must stay under ~100 bytes).
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("m2t-n")
            .tempdir_in("/tmp")
            .expect("temp dir for the notify socket");
        let path = dir.path().join("notify");
        assert!(
            path.as_os_str().len() < 100,
            "notify socket path too long: {}",
            path.display()
        );
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("socket timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (received, stop) = (received.clone(), stop.clone());
            move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::SeqCst) {
                    let Ok(n) = socket.recv(&mut buf) else {
                        continue;
                    };
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut received = received.lock().expect("lock");
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        let (key, value) = line.split_once('=').unwrap_or((line, ""));
                        received.push(Notification {
                            at,
                            key: key.to_owned(),
                            value: value.to_owned(),
                        });
                    }
                }
            }
        });
        NotifySocket {
            path,
            received,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every assignment received so far, in order.
    pub fn all(&self) -> Vec<Notification> {
        self.received.lock().expect("lock").clone()
    }

    /// The values sent for `key`, in order, with their arrival times.
    pub fn values(&self, key: &str) -> Vec<(Instant, String)> {
        self.all()
            .into_iter()
            .filter(|n| n.key == key)
            .map(|n| (n.at, n.value))
            .collect()
    }

    /// Arrival times of `KEY=VALUE` exactly (e.g. `WATCHDOG=1`).
    pub fn times_of(&self, key: &str, value: &str) -> Vec<Instant> {
        self.values(key)
            .into_iter()
            .filter(|(_, v)| v == value)
            .map(|(at, _)| at)
            .collect()
    }

    /// When the latest `KEY=VALUE` arrived.
    pub fn last_time_of(&self, key: &str, value: &str) -> Option<Instant> {
        self.times_of(key, value).last().copied()
    }

    /// Waits (up to `limit`) for an assignment to `key` whose value
    /// satisfies `pred` and that arrived at or after `since`; returns it.
    pub async fn wait_for(
        &self,
        key: &str,
        since: Instant,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let found = || {
            self.values(key)
                .into_iter()
                .find(|(at, v)| *at >= since && pred(v))
                .map(|(_, v)| v)
        };
        if crate::setup::wait_until(limit, || async { found().is_some() }).await {
            found()
        } else {
            None
        }
    }

    /// Everything received, one `KEY=VALUE` per line, for messages; the
    /// `WATCHDOG=1` pings only counted.
    pub fn transcript(&self) -> String {
        let all = self.all();
        let pings = all.iter().filter(|n| n.key == "WATCHDOG").count();
        let mut lines: Vec<String> = all
            .iter()
            .filter(|n| n.key != "WATCHDOG")
            .map(|n| format!("{}={}", n.key, n.value))
            .collect();
        lines.push(format!("({pings} WATCHDOG pings)"));
        lines.join("\n")
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
