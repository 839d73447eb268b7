//! mail2ticket turns support mailboxes into helpdesk tickets.
//!
//! It logs into each configured mailbox (IMAP or POP3) with OAuth 2.0 (SASL
//! XOAUTH2) or, for servers that still take one, a password; turns every
//! new mail into a ticket exactly once in SQLite, and records per
//! reader what went wrong when it cannot.
//!
//! # Layout
//!
//! The path of one mail, from the socket to the ticket row, follows the
//! modules in this order:
//!
//! * [`outcome`]: the words the modules below share (where a reader
//!   stands, what kind of failure a poll had, why a mail was kept out of
//!   tickets, what a commit did); a leaf that imports nothing of the crate.
//! * [`config`]: the TOML file the admin edits, one file per section
//!   named after its keys (`store`, `daemon`, `oauth`, `reader`, `login`,
//!   `mail`, `rules`), and the national clouds it names (`cloud`: which
//!   sign-in, mail, Graph and scope hosts belong together, and the scope
//!   of each service, one resource each); errors name file, line and key.
//! * [`auth`]: the token store (grants, caching, refresh, rotation, sorting
//!   failures into retry / sign in again / fix the config), the
//!   interactive sign-in behind `authorize`, and the SASL
//!   messages (XOAUTH2, PLAIN) every protocol sends a credential in.
//! * [`transport`]: TCP plus verified TLS (implicit, or after the
//!   protocol's STARTTLS); owns every trust decision.
//! * [`source`]: what every mailbox protocol shares (one error vocabulary,
//!   [`source::SourceError`], with a variant per protocol for what is its
//!   own; the batch driver that parses, commits, meters and reports; batch
//!   planning by bytes), and one module per protocol: [`source::imap`]
//!   (`session`, `login`, `poll`, `idle`, `check`, `errors`) and
//!   [`source::pop3`] with its wire protocol beside it, and
//!   [`source::graph`] (Microsoft Graph: delta query, `$value`, over HTTPS
//!   with its own client). A protocol finds
//!   new mail, fetches it (a mail over the size limit only in part), and
//!   runs the after-step (seen, delete, move) once the commit is done.
//!   [`source::refusal`] reads a server's NO / -ERR by its response code
//!   (credential, missing folder, or a passing server condition).
//! * [`ingest`]: raw bytes to a parsed mail (never fails), with the MIME
//!   nesting bounded (`ingest/mime.rs`), size limits, and what the mail
//!   is: the loop guard ([`ingest::guard`]), routing rules
//!   ([`ingest::rules`]), how it names its ticket ([`ingest::thread`]).
//! * [`store`]: SQLite through sqlx: schema, and one file per thing it
//!   keeps: `ledger` (where each mail came from, and the exactly-once
//!   commit of a batch), `tickets` (the ticket each mail opens or joins:
//!   threading, dedup, rate limit, contents stored once, acknowledgements
//!   queued), `readers` (reader records, `last_error`, history, the
//!   heartbeat row), `first_contact`, `owed`, `quarantine`, `outbox`,
//!   `tokens` (sealed).
//! * [`outbound`]: the acknowledgements the store queued, rendered and sent
//!   over SMTP submission with the reader's login (or Graph's sendMail),
//!   retried from the outbox;
//!   never in the way of ingest.
//! * [`reader`]: one poll of one reader, linking token, protocol and health.
//! * [`scheduler`]: one task per reader, intervals (or IDLE), backoff, and
//!   parking readers that wait for an admin.
//! * [`daemon`]: start-up wiring, the supervisor loop of `run` (heartbeat,
//!   reloads, systemd status), and the `run --once` / `check` /
//!   `authorize` modes.
//!
//! Around that path, for the people who run it, [`ops`]:
//!
//!   * [`ops::shutdown`]: the cancellation token and the signals that fire it.
//!   * [`ops::reload`]: what asks for a config reload (SIGHUP, a changed file).
//!   * [`ops::liveness`]: the heartbeat rule behind `/healthz` and the watchdog.
//!   * [`ops::notify`]: what systemd is told (READY, STATUS, WATCHDOG, STOPPING).
//!   * [`ops::metrics`]: the Prometheus registry and every metric's name.
//!   * [`ops::http`]: `/healthz`, `/readyz`, `/metrics` and the status page,
//!     with the timeouts and the connection cap that keep clients from
//!     starving the daemon.
//!   * [`ops::page`]: the status page at `/`: readers, counts and a chart of
//!     the last day, server-rendered, no script, no mail content.
//!   * [`ops::fds`]: the file-descriptor limit, raised at start; running out of
//!     descriptors named in `last_error` and failing `/healthz`.
//!   * [`ops::status`]: `status` and `health`: tables, JSON, stale readers.
//!   * [`ops::progress`]: bars (or log lines) for a long first sync of
//!     `run --once`, and a spinner for `check`.
//!   * [`ops::quarantine`]: `quarantine list | show | retry | drop`, the admin's
//!     side of the mail the store set aside whole.
//!   * [`ops::logging`]: the tracing subscriber (text or JSON), with
//!     credential-bearing targets capped.
//! * [`scrub`]: server text cut free of the credential in use (whole or
//!   any 16-character piece) before it reaches a log, `last_error` or
//!   history; used by IMAP, POP3 and SMTP alike.
//!
//! For tests and the fuzz targets in `fuzz/` only (feature `fuzzing`):
//! `fuzzing`, one entry point per input from outside, with the invariants
//! every input must keep.
//!
//! The top-level modules import each other without a cycle (the token
//! store in `auth` writes through `store`, which knows nothing of `auth`);
//! `tests/module_graph.rs` fails naming the cycle when an import closes
//! one.
//!
//! The binary (`src/main.rs`) only parses the command line and calls these.
//! The tests' support (Dovecot, the identity-provider stand-in, fixtures)
//! is the dev-only workspace crate `testkit/`, compiled once for every
//! test binary.

pub mod auth;
pub mod config;
pub mod daemon;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod ops;
pub mod outbound;
pub mod outcome;
pub mod reader;
pub mod scheduler;
pub mod scrub;
pub mod source;
pub mod store;
pub mod transport;
