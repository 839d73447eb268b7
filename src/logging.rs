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

use crate::config::LogFormat;
use tracing_subscriber::filter::Directive;

/// Targets whose TRACE output includes credentials, and the level they are
/// capped at.
const CAPPED: &[&str] = &["async_imap=debug"];

/// The filter: `RUST_LOG` (or `info`), with [`CAPPED`] applied on top.
pub fn filter() -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in CAPPED {
        if let Ok(d) = directive.parse::<Directive>() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Installs the subscriber for the process.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
