//! Progress of long work for a person waiting on it: `run --once` working
//! through a large folder (a first sync) and `check` connecting.
//!
//! Owns how that progress is shown: bars (mails fetched of the total,
//! rate, ETA) on stderr when stderr is a terminal, else a log line now and
//! then, so that cron mail and journals get no escape codes. It only
//! watches: the counts are the ones every poll keeps in
//! [`crate::ops::metrics`] (the backlog a poll found, the mails it took),
//! so no poll knows it is watched. The daemon's `run` shows none.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics::Metrics;

/// A reader's sync counts as long from this many mails on; smaller polls
/// end before progress would tell anyone anything.
pub const LARGE: u64 = 50;
/// How often the bars follow the counts.
const TICK: Duration = Duration::from_millis(100);
/// How often a log line reports a long sync when stderr is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Bars on stderr, redrawn in place.
    Terminal,
    /// A log line at the start, every [`LOG_EVERY`] and at the end.
    Log,
}

impl Output {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn detect() -> Output {
        if std::io::stderr().is_terminal() {
            Output::Terminal
        } else {
            Output::Log
        }
    }
}

/// Progress being shown; [`Progress::finish`] shows the final counts.
pub struct Progress {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Progress {
    /// Follows the mails of `readers` in `metrics` until [`Progress::finish`].
    pub fn sync(metrics: Metrics, readers: Vec<String>, output: Output) -> Progress {
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(metrics, readers, output, stop.clone()));
        Progress { stop, task }
    }

    /// A spinner with the time spent on `what` (terminal only).
    pub fn spinner(what: String, output: Output) -> Progress {
        let stop = CancellationToken::new();
        let done = stop.clone();
        let task = tokio::spawn(async move {
            if output != Output::Terminal {
                return;
            }
            let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            spinner.set_message(what);
            // Drawn now: a check that is over within a tick still showed it.
            spinner.tick();
            spinner.enable_steady_tick(TICK);
            done.cancelled().await;
            // The results are printed next; the spinner makes room.
            spinner.finish_and_clear();
        });
        Progress { stop, task }
    }

    /// Shows the final counts and stops.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::debug!(error = %e, "the progress display ended abnormally");
        }
    }
}

/// One reader's long sync as seen so far.
struct Sync {
    started: Instant,
    bar: Option<ProgressBar>,
    logged: Instant,
}

async fn follow(metrics: Metrics, readers: Vec<String>, output: Output, stop: CancellationToken) {
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30}] {pos}/{len} mails, {rate}, ETA {eta}",
    )
    .map(|s| {
        s.progress_chars("=> ").with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
    })
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut syncs: HashMap<&str, Sync> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        for reader in &readers {
            let (done, backlog) = metrics.progress(reader);
            let total = done + backlog;
            let sync = match syncs.get_mut(reader.as_str()) {
                Some(sync) => sync,
                // Long only once a poll found a large backlog.
                None if total >= LARGE => {
                    let bar = (output == Output::Terminal).then(|| {
                        let bar = bars.add(ProgressBar::new(total));
                        bar.set_style(style.clone());
                        bar.set_prefix(reader.clone());
                        bar
                    });
                    if output == Output::Log {
                        tracing::info!(reader = %reader, mails = total, "first sync: mails to fetch");
                    }
                    syncs.entry(reader.as_str()).or_insert(Sync {
                        started: Instant::now(),
                        bar,
                        logged: Instant::now(),
                    })
                }
                None => continue,
            };
            if let Some(bar) = &sync.bar {
                bar.set_length(total);
                bar.set_position(done);
                if stopping {
                    bar.finish();
                }
            } else if stopping || sync.logged.elapsed() >= LOG_EVERY {
                sync.logged = Instant::now();
                log_progress(reader, done, total, sync.started.elapsed(), stopping);
            }
        }
        if stopping {
            // Whatever is printed next starts below the bars.
            if syncs.values().any(|s| s.bar.is_some()) {
                eprintln!();
            }
            return;
        }
    }
}

fn log_progress(reader: &str, done: u64, total: u64, took: Duration, finished: bool) {
    let secs = took.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let left = total.saturating_sub(done);
    let eta = if rate > 0.0 {
        humantime::format_duration(Duration::from_secs((left as f64 / rate).ceil() as u64))
            .to_string()
    } else {
        "unknown".to_string()
    };
    if finished {
        tracing::info!(
            reader,
            fetched = done,
            total,
            rate = format!("{rate:.1}/s"),
            "first sync: done"
        );
    } else {
        tracing::info!(
            reader,
            fetched = done,
            total,
            rate = format!("{rate:.1}/s"),
            eta,
            "first sync: fetching"
        );
    }
}
