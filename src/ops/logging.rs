//! Logging: tracing to stderr, filtered by `RUST_LOG` (default `info`), as
//! text (journald, terminals) or one JSON object per line (Docker, log
//! shippers). A reader's events carry its name through the `reader` span
//! its task runs in: `reader{reader=NAME}:` in text, `"span":{"reader":..}`
//! in JSON.
//!
//! Owns one safety rule: some dependencies trace raw protocol lines, and an
//! IMAP `AUTHENTICATE` line carries a bearer token. Those targets are capped
//! below TRACE whatever `RUST_LOG` says, so turning on full tracing to debug
//! a reader never writes a credential into the journal.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterFn, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Targets (and everything below them) whose TRACE output includes
/// credentials: async-imap traces every line it writes, AUTHENTICATE and
/// LOGIN included.
const CAPPED: &[&str] = &["async_imap"];

/// Whether `target` is [`CAPPED`] or a module below one.
fn capped(target: &str) -> bool {
    CAPPED.iter().any(|c| {
        target == *c
            || target
                .strip_prefix(c)
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

/// The filter `RUST_LOG` (or `info`) asks for.
pub fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Drops TRACE events and spans of `CAPPED` targets. Applied after
/// `RUST_LOG`, not as a directive in it: a more specific directive (say
/// `async_imap::imap_stream=trace`) would win over a directive for the
/// crate, whatever order they come in.
pub fn cap() -> FilterFn {
    filter_fn(|meta| !(*meta.level() == tracing::Level::TRACE && capped(meta.target())))
}

/// Installs the subscriber for the process.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal: journald, Docker's log
    // drivers and files would keep them as raw escape sequences.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.finish().with(cap()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(cap())
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_covers_the_crate_and_its_modules_only() {
        assert!(capped("async_imap"));
        assert!(capped("async_imap::imap_stream"));
        assert!(!capped("async_imap_other"));
        assert!(!capped("mail2ticket::source::imap"));
    }
}
