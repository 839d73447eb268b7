//! Shutdown: one cancellation token, fired by SIGTERM or SIGINT.
//!
//! Every long-running task holds a clone and stops at its next safe point:
//! a reader between batches, never inside a commit.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = which,
            "shutting down after the current transactions"
        );
        token.cancel();
    });
    Ok(())
}
