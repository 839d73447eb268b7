//! Around the mail pipeline, for the people who run it: signals and
//! reloads, liveness and systemd, metrics and the HTTP endpoints, the
//! status page, the `status` / `health` / `quarantine` commands, the
//! progress of long syncs on a terminal, and logging.
//!
//! Nothing here decides what becomes of a mail; the pipeline
//! (`source` → `ingest` → `store`) works the same without any of it.

pub mod fds;
pub mod http;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod progress;
pub mod quarantine;
pub mod reload;
pub mod shutdown;
pub mod status;
