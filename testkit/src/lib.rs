//! Integration-test support for mail2ticket, a dev-only crate of the
//! workspace so it is compiled once rather than into every test binary
//! (the test files import it as `use mail2ticket_testkit as common;`).
//!
//! - [`IdP`]: imitation Microsoft Entra ID v2.0 (token, authorize with PKCE,
//!   device code, discovery) + introspection for Dovecot.
//! - [`ClientCert`]: an RSA key and self-signed certificate for certificate
//!   client credentials (signed client assertions).
//! - [`idp_client`]: talking to the IdP as a client would, for tests.
//! - [`Dovecot`]: a real Dovecot 2.3 on loopback, XOAUTH2 via the IdP.
//! - [`GraphServer`]: imitation Microsoft Graph v1.0 mail API (folders,
//!   delta query, `$value`, after-steps, sendMail) on loopback HTTPS,
//!   bearer tokens checked against the IdP, with injectable faults.
//! - [`mail`](mod@mail): deterministic test mails.
//! - [`browser`]: headless chromium over WebDriver, for the status page.
//! - [`certs`], [`imap`]: TLS / raw IMAP / POP3 client helpers.
//! - [`Proxy`]: a loopback proxy for plaintext IMAP / POP3 that records the
//!   client's lines and can SIGKILL the daemon on one of them.
//! - [`setup`]: a whole mail2ticket test environment (maintained with the library).
//! - [`metrics`]: a parser for the `/metrics` exposition.
//! - [`NotifySocket`]: the systemd end of the notify protocol (`NOTIFY_SOCKET`).
//! - [`submission`]: the capture sink Dovecot's SMTP submission relays to,
//!   and a bare SMTP client for wire-level checks.

pub mod browser;
pub mod certs;
pub mod client_cert;
pub mod dovecot;
pub mod graph;
pub mod idp;
pub mod idp_client;
pub mod imap;
pub mod mail;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod scripted_imap;
pub mod setup;
pub mod submission;
pub mod time;

pub use client_cert::{ClientCert, JWT_BEARER_ASSERTION_TYPE};
pub use dovecot::{Dovecot, DovecotOptions, NO_IDLE_NO_MOVE_CAPABILITY};
pub use graph::{Fault, GraphRoute, GraphServer};
pub use idp::{
    AccessTokenInfo, DEFAULT_CLIENT_ID, DEFAULT_TENANT, DEVICE_CODE_GRANT, GRAPH_RESOURCE, IdP,
    IdpLookup, InjectedBody, TokenSubject, browser_sign_in,
};
pub use mail::{mail, mail_of_size, mail_without_message_id, malformed_mail, message_id};
pub use metrics::Metrics;
pub use notify::NotifySocket;
pub use proxy::{Action, Proxy};

/// Scope a mailbox client asks Entra ID for, for IMAP and POP3 with refresh.
pub const OUTLOOK_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All offline_access";
/// Delegated scope a Graph reader asks for (read, mark, move, delete, send
/// acknowledgements, with refresh).
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send offline_access";
/// App-only scope for Microsoft Graph (client credentials).
pub const GRAPH_APP_SCOPE: &str = "https://graph.microsoft.com/.default";
