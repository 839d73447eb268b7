//! `[[reader]]`: one mailbox each. Owns `name`, `protocol`, `host`, `port`,
//! `tls`, `username`, `folder`, `after`, `backfill`, `ack_max_age`, `idle`,
//! `ca_file`, `poll_interval`, `timeout`, `batch_size`, `batch_bytes` and
//! `allow_auto_submitted`, and which of them each protocol (IMAP, POP3,
//! Microsoft Graph) takes: a key that means nothing for the reader's
//! protocol is refused, not ignored, so the admin learns it does nothing.
//! The login keys (`auth`, `password`, `oauth`, `grant`) are checked in
//! `login`, `[reader.reply]` in `mail`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::cloud::Cloud;
use super::locate::Locator;
use super::login::{self, Login, OAuthLogin, RawAuth};
use super::mail::{self, ReplyConfig, SharedPolicy, Via};
use super::oauth::{Grant, OAuthApp};
use super::secret::{RawSecret, SecretRef};
use super::value::{HumanDuration, is_loopback};

/// `batch_bytes` unless set: large enough that ordinary mail is batched by
/// `batch_size`, small enough that two batches of large mail in flight
/// stay well under a small VM's memory.
pub const DEFAULT_BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// `ack_max_age` when not set: mail older than a day at ingest is not
/// acknowledged.
pub const DEFAULT_ACK_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One mailbox to turn into tickets.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub name: String,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    /// The mailbox: the IMAP/POP3 login's user, or Graph's `/users/{username}`.
    pub username: String,
    pub login: Login,
    /// The folder read: IMAP's name in UTF-8, or for Graph a well-known
    /// name (`inbox`, `archive`, ...) or a path of display names such as
    /// `Inbox/Support`. POP3 has only the one maildrop.
    pub folder: String,
    pub after: After,
    /// What the first poll of a folder takes of the mail already in it.
    pub backfill: Backfill,
    /// Keep an IMAP connection open and IDLE instead of polling (never for
    /// POP3 or Graph).
    pub idle: bool,
    pub ca_file: Option<PathBuf>,
    pub poll_interval: Duration,
    /// Bound on every single network step (connect, login, one fetch, ...).
    pub timeout: Duration,
    /// Mails fetched and committed together.
    pub batch_size: usize,
    /// Raw bytes fetched and committed together: a batch closes before the
    /// mail that would take it past this (it always holds one mail).
    pub batch_bytes: u64,
    /// Acknowledgements of new tickets, when `[reader.reply]` is set.
    pub reply: Option<ReplyConfig>,
    /// How this reader's mail becomes tickets: threading, guard, rules,
    /// limits. Not part of the fingerprint: a reload swaps it in place.
    pub mail: SharedPolicy,
}

impl ReaderConfig {
    /// The OAuth side of the login, when the reader uses XOAUTH2.
    pub fn oauth(&self) -> Option<&OAuthLogin> {
        match &self.login {
            Login::OAuth(o) => Some(o),
            Login::Plain { .. } => None,
        }
    }

    /// Whether this reader's acknowledgements go over Microsoft Graph
    /// (`[reader.reply] via = "graph"`), so that its token must carry
    /// `Mail.Send` as well.
    pub fn sends_over_graph(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.via == Via::Graph)
    }

    /// Everything that decides whether the reader's next attempt could go
    /// differently from its last: its settings, its app's, and the current
    /// values of their secrets and certificate. Only ever fed to a keyed
    /// digest, never stored or shown.
    pub fn fingerprint_material(&self, app: Option<&OAuthApp>) -> Vec<u8> {
        // The reply settings are read by the sender, and the mail policy is
        // swapped in place: neither is a reason to reconnect the reader.
        // Except whether replies go over Graph: that changes the scope the
        // reader's own token asks for (Mail.Send), and with it whether the
        // sign-in it waits for could go differently.
        let reader = ReaderConfig {
            reply: None,
            ..self.clone()
        };
        let sends_over_graph = self.sends_over_graph();
        let mut material = format!("{reader:?}\0{app:?}\0{sends_over_graph}").into_bytes();
        let password = match &self.login {
            Login::OAuth(o) => o.password.as_ref(),
            Login::Plain { password } => Some(password),
        };
        let secrets = [
            password,
            app.and_then(|a| a.client_secret.as_ref()),
            app.and_then(|a| a.client_certificate.as_ref().map(|c| &c.key)),
        ];
        for secret in secrets {
            material.push(0);
            match secret.map(SecretRef::resolve) {
                Some(Ok(value)) => material.extend_from_slice(value.expose_secret().as_bytes()),
                Some(Err(e)) => material.extend_from_slice(e.to_string().as_bytes()),
                None => material.push(b'-'),
            }
        }
        if let Some(cert) = app.and_then(|a| a.client_certificate.as_ref()) {
            material.push(0);
            material.extend(std::fs::read(&cert.certificate).unwrap_or_default());
        }
        material
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
    /// Microsoft Graph's mail API over HTTPS, with OAuth tokens only.
    Graph,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Graph => "graph",
        }
    }
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// TLS from the first byte (993, 995).
    Implicit,
    /// Plain text upgraded with STARTTLS / STLS before anything else is said
    /// (143, 110). A server that does not offer the upgrade is refused.
    /// HTTP has no upgrade: refused for Graph.
    StartTls,
    /// No TLS at all: accepted for loopback hosts only (a local relay or a
    /// test server), so that credentials never cross a network in clear.
    None,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Implicit => "implicit",
            Tls::StartTls => "starttls",
            Tls::None => "none",
        }
    }
}

/// What happens to a mail on the server once its ticket is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Flag it `\Seen` (IMAP's default), or set `isRead` (Graph's default).
    Seen,
    /// Leave it untouched; the ledger alone keeps it from being ingested
    /// twice (POP3's default).
    Keep,
    /// Delete it (IMAP: `\Deleted` + UID EXPUNGE; POP3: DELE + QUIT;
    /// Graph: DELETE of the message).
    Delete,
    /// Move it to this folder (as the admin wrote it, in UTF-8; for Graph
    /// a well-known name or a path like `folder`'s).
    Move(String),
}

impl After {
    fn parse(text: &str) -> Result<After, String> {
        match text {
            "seen" => Ok(After::Seen),
            "keep" => Ok(After::Keep),
            "delete" => Ok(After::Delete),
            other => match other.strip_prefix("move:") {
                Some(folder) if !folder.trim().is_empty() => Ok(After::Move(folder.to_string())),
                Some(_) => Err("\"move:\" needs a folder name, e.g. \"move:Processed\"".into()),
                None => Err(format!(
                    "{other:?} is not an after-step; use \"seen\", \"keep\", \"delete\" or \"move:FOLDER\""
                )),
            },
        }
    }

    pub fn as_str(&self) -> String {
        match self {
            After::Seen => "seen".into(),
            After::Keep => "keep".into(),
            After::Delete => "delete".into(),
            After::Move(folder) => format!("move:{folder}"),
        }
    }
}

/// Which of the mail already in a folder a reader takes the first time it
/// reads it (`backfill`); from then on the ledger takes everything new.
/// Protocol-neutral: each source decides what the mail it finds matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backfill {
    /// Mail not yet read by anyone (IMAP: not `\Seen`). POP3 has no read
    /// state, so there it is everything.
    Unseen,
    /// Everything already there.
    All,
    /// Nothing already there: only mail that arrives from now on.
    None,
    /// Mail received within this period before first contact.
    Within(Duration),
}

impl Backfill {
    fn parse(text: &str) -> Result<Backfill, String> {
        match text {
            "unseen" => Ok(Backfill::Unseen),
            "all" => Ok(Backfill::All),
            "none" => Ok(Backfill::None),
            other => match humantime::parse_duration(other) {
                Ok(d) if !d.is_zero() => Ok(Backfill::Within(d)),
                _ => Err(format!(
                    "{other:?} is not a backfill; use \"unseen\", \"all\", \"none\" or a duration such as \"7d\""
                )),
            },
        }
    }

    /// As written in the configuration.
    pub fn as_str(self) -> String {
        match self {
            Backfill::Unseen => "unseen".into(),
            Backfill::All => "all".into(),
            Backfill::None => "none".into(),
            Backfill::Within(d) => humantime::format_duration(d).to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReader {
    pub(super) name: Spanned<String>,
    pub(super) protocol: Protocol,
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<Spanned<Tls>>,
    pub(super) username: String,
    pub(super) auth: Option<Spanned<RawAuth>>,
    pub(super) password: Option<Spanned<RawSecret>>,
    pub(super) oauth: Option<Spanned<String>>,
    pub(super) grant: Option<Spanned<Grant>>,
    pub(super) folder: Option<Spanned<String>>,
    pub(super) after: Option<Spanned<String>>,
    pub(super) backfill: Option<Spanned<String>>,
    pub(super) ack_max_age: Option<Spanned<HumanDuration>>,
    pub(super) idle: Option<Spanned<bool>>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) poll_interval: Option<HumanDuration>,
    pub(super) timeout: Option<HumanDuration>,
    pub(super) batch_size: Option<Spanned<usize>>,
    pub(super) batch_bytes: Option<Spanned<bytesize::ByteSize>>,
    pub(super) allow_auto_submitted: Option<bool>,
    pub(super) reply: Option<Spanned<super::mail::RawReply>>,
}

/// Every reader's address is ours, whichever reader a mail arrives
/// through: the guard needs them all before the first reader is built.
pub(super) fn addresses(raw: &[RawReader]) -> Vec<String> {
    raw.iter()
        .flat_map(|r| {
            let reply_from = r.reply.as_ref().and_then(|p| p.get_ref().sender());
            std::iter::once(r.username.clone()).chain(reply_from)
        })
        .collect()
}

/// What a reader's keys default to or build on from the rest of the file.
pub(super) struct Context<'a> {
    pub(super) base_dir: &'a Path,
    pub(super) oauth: &'a [OAuthApp],
    /// `[tickets]`, `[guard]` and the rules, for every reader's policy.
    pub(super) shared: &'a mail::Shared,
    /// `[daemon] poll_interval`.
    pub(super) poll_interval: Duration,
}

/// The `[[reader]]` tables, in file order; the first invalid one is the error.
pub(super) fn parse(
    locate: &Locator<'_>,
    raw: Vec<RawReader>,
    cx: &Context<'_>,
) -> Result<Vec<ReaderConfig>, ConfigError> {
    let mut readers = Vec::new();
    let mut reader_names = HashSet::new();
    for r in raw {
        let name = r.name.get_ref().clone();
        if name.is_empty() {
            return Err(locate.at(r.name.span(), "name", "a reader needs a non-empty name"));
        }
        if !reader_names.insert(name.clone()) {
            return Err(locate.at(r.name.span(), "name", "another [[reader]] has this name"));
        }
        readers.push(reader(locate, r, name, cx)?);
    }
    Ok(readers)
}

/// One reader whose name has been checked.
fn reader(
    locate: &Locator<'_>,
    mut r: RawReader,
    name: String,
    cx: &Context<'_>,
) -> Result<ReaderConfig, ConfigError> {
    let base_dir = cx.base_dir;
    let protocol = r.protocol;
    let password = r.password.take();
    let (login, app) = login::parse(locate, &r, password, base_dir, cx.oauth)?;
    let host = match (r.host, app) {
        (Some(host), Some(app)) => {
            check_cloud(locate, &host, protocol, app)?;
            host.into_inner()
        }
        (Some(host), None) => host.into_inner(),
        (None, Some(app)) => match protocol {
            Protocol::Graph => app.cloud.graph_host().to_string(),
            Protocol::Imap | Protocol::Pop3 => app.cloud.mail_host().to_string(),
        },
        (None, None) => {
            return Err(locate.at(
                r.name.span(),
                "host",
                "auth = \"plain\" needs the mail server's host",
            ));
        }
    };
    let tls = match r.tls {
        Some(t) if protocol == Protocol::Graph && *t.get_ref() == Tls::StartTls => {
            return Err(locate.at(
                t.span(),
                "tls",
                "Microsoft Graph is HTTPS, which has no STARTTLS: use tls = \"implicit\" \
                 (the default), or \"none\" for a loopback host",
            ));
        }
        Some(t) if *t.get_ref() == Tls::None && !is_loopback(&host) => {
            return Err(locate.at(
                t.span(),
                "tls",
                &format!(
                    "tls = \"none\" would send credentials in clear to {host}; it is only \
                     accepted for a loopback host. Use {}",
                    match protocol {
                        Protocol::Graph => "tls = \"implicit\" (the default)",
                        Protocol::Imap | Protocol::Pop3 => "tls = \"starttls\" or \"implicit\"",
                    }
                ),
            ));
        }
        Some(t) => t.into_inner(),
        None => Tls::Implicit,
    };
    if protocol == Protocol::Graph && r.username.trim().is_empty() {
        return Err(locate.at(
            r.name.span(),
            "username",
            "a graph reader needs the mailbox it reads: its address or user principal name, \
             e.g. username = \"helpdesk@contoso.com\"",
        ));
    }
    let folder = match (protocol, r.folder) {
        (Protocol::Imap, Some(f)) => f.into_inner(),
        (Protocol::Imap, None) => "INBOX".to_string(),
        (Protocol::Pop3, Some(f)) => {
            return Err(locate.at(
                f.span(),
                "folder",
                "POP3 reads the inbox only; remove folder (or use protocol = \"imap\")",
            ));
        }
        (Protocol::Pop3, None) => "INBOX".to_string(),
        (Protocol::Graph, Some(f)) => {
            graph_folder(f.get_ref()).map_err(|e| locate.at(f.span(), "folder", &e))?;
            f.into_inner()
        }
        (Protocol::Graph, None) => "Inbox".to_string(),
    };
    let after = match r.after {
        None => match protocol {
            Protocol::Imap | Protocol::Graph => After::Seen,
            Protocol::Pop3 => After::Keep,
        },
        Some(text) => {
            let after =
                After::parse(text.get_ref()).map_err(|e| locate.at(text.span(), "after", &e))?;
            match (protocol, &after) {
                (Protocol::Pop3, After::Seen | After::Move(_)) => {
                    return Err(locate.at(
                        text.span(),
                        "after",
                        "POP3 has no flags or folders: use after = \"keep\" or \"delete\"",
                    ));
                }
                (Protocol::Graph, After::Move(folder)) => {
                    graph_folder(folder).map_err(|e| locate.at(text.span(), "after", &e))?;
                }
                _ => {}
            }
            after
        }
    };
    let backfill = match r.backfill {
        Some(text) => {
            Backfill::parse(text.get_ref()).map_err(|e| locate.at(text.span(), "backfill", &e))?
        }
        None => Backfill::Unseen,
    };
    let idle = match r.idle {
        // Even idle = false: a Graph reader always polls, and a key that
        // does nothing for the protocol is refused, not ignored.
        Some(i) if protocol == Protocol::Graph => {
            return Err(locate.at(
                i.span(),
                "idle",
                "Microsoft Graph has no IDLE; remove idle (the reader polls every \
                 poll_interval; Graph's change notifications need a public HTTPS \
                 endpoint and are not supported)",
            ));
        }
        Some(i) if *i.get_ref() && protocol == Protocol::Pop3 => {
            return Err(locate.at(
                i.span(),
                "idle",
                "POP3 has no IDLE; remove idle (the reader polls every poll_interval)",
            ));
        }
        Some(i) => i.into_inner(),
        None => false,
    };
    let batch_size = match r.batch_size {
        Some(b) if *b.get_ref() == 0 || *b.get_ref() > 10_000 => {
            return Err(locate.at(b.span(), "batch_size", "must be between 1 and 10000"));
        }
        Some(b) => b.into_inner(),
        None => 100,
    };
    let batch_bytes = match r.batch_bytes {
        Some(b) if b.get_ref().as_u64() == 0 => {
            return Err(locate.at(b.span(), "batch_bytes", "must be more than 0 bytes"));
        }
        Some(b) => b.get_ref().as_u64(),
        None => DEFAULT_BATCH_BYTES,
    };
    let in_reply = r.reply.as_ref().and_then(|raw| raw.get_ref().ack_max_age());
    let ack_max_age = match (r.ack_max_age, in_reply) {
        (Some(here), Some(_)) => {
            return Err(locate.at(
                here.span(),
                "ack_max_age",
                "set either here or in [reader.reply], not both",
            ));
        }
        (Some(d), None) => d.get_ref().0,
        (None, Some(d)) => d,
        (None, None) => DEFAULT_ACK_MAX_AGE,
    };
    let port = r.port.unwrap_or(default_port(protocol, tls));
    let ca_file = r.ca_file.map(|p| base_dir.join(p));
    let reply = match r.reply {
        Some(raw) => {
            let span = raw.span();
            Some(mail::reply(
                locate,
                raw.into_inner(),
                mail::ReplyDefaults {
                    username: &r.username,
                    smtp_host: app.map(|a| a.cloud.smtp_host()),
                    reader: mail::ReaderEndpoint {
                        protocol,
                        host: &host,
                        port,
                        tls,
                        ca_file: ca_file.as_deref(),
                    },
                    base_dir,
                    span,
                },
            )?)
        }
        None => None,
    };
    let mail = cx.shared.policy(
        r.allow_auto_submitted.unwrap_or(false),
        reply.as_ref().map(|p| p.from.as_str()),
        &r.username,
        ack_max_age,
    );
    Ok(ReaderConfig {
        name,
        protocol,
        port,
        host,
        tls,
        username: r.username,
        login,
        folder,
        after,
        backfill,
        idle,
        ca_file,
        poll_interval: r.poll_interval.map_or(cx.poll_interval, |d| d.0),
        timeout: r.timeout.map_or(Duration::from_secs(60), |d| d.0),
        batch_size,
        batch_bytes,
        reply,
        mail,
    })
}

/// The port a protocol listens on for a kind of TLS (IANA assignments).
/// Graph is HTTPS on 443; a plain-HTTP stand-in on loopback (`tls =
/// "none"`) names its port.
fn default_port(protocol: Protocol, tls: Tls) -> u16 {
    match (protocol, tls) {
        (Protocol::Imap, Tls::Implicit) => 993,
        (Protocol::Imap, Tls::StartTls | Tls::None) => 143,
        (Protocol::Pop3, Tls::Implicit) => 995,
        (Protocol::Pop3, Tls::StartTls | Tls::None) => 110,
        (Protocol::Graph, _) => 443,
    }
}

/// Refuses a Microsoft host that cannot serve this reader: one of another
/// cloud than its app's (the token would not be accepted), or one of the
/// wrong service (an IMAP host for a Graph reader, or the reverse). Any
/// host no cloud claims (a private server, a test stand-in) passes.
fn check_cloud(
    locate: &Locator<'_>,
    host: &Spanned<String>,
    protocol: Protocol,
    app: &OAuthApp,
) -> Result<(), ConfigError> {
    let name = host.get_ref();
    let (own, other_kind, expected, kind) = match protocol {
        Protocol::Graph => (
            Cloud::of_graph_host(name),
            Cloud::of_mail_host(name).map(|_| "an Exchange Online IMAP/POP3/SMTP host"),
            app.cloud.graph_host(),
            "protocol = \"graph\" talks to Microsoft Graph",
        ),
        Protocol::Imap | Protocol::Pop3 => (
            Cloud::of_mail_host(name),
            Cloud::of_graph_host(name).map(|_| "the Microsoft Graph host"),
            app.cloud.mail_host(),
            "IMAP and POP3 talk to Exchange Online's mail host",
        ),
    };
    if let Some(what) = other_kind {
        return Err(locate.at(
            host.span(),
            "host",
            &format!(
                "{name} is {what}, but {kind}: use host = \"{expected}\" (or remove host{})",
                match protocol {
                    Protocol::Graph => "",
                    Protocol::Imap | Protocol::Pop3 => ", or set protocol = \"graph\"",
                }
            ),
        ));
    }
    if let Some(other) = own
        && other != app.cloud
    {
        return Err(locate.at(
            host.span(),
            "host",
            &format!(
                "{name} is in the {} cloud, but [[oauth]] \"{}\" has cloud = \"{}\"; \
                 tokens of one cloud are not accepted by another: \
                 set cloud = \"{}\" on the app or use host = \"{expected}\"",
                other.as_str(),
                app.name,
                app.cloud.as_str(),
                other.as_str(),
            ),
        ));
    }
    Ok(())
}

/// A Graph folder as written in `folder` or `after = "move:..."`: a
/// well-known name (`inbox`, `archive`, ...) or a path of display names
/// from the top of the mailbox, `/` between them. Whether it exists is
/// only known once the mailbox is asked; an empty step never can.
fn graph_folder(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(
            "a folder name is empty; use a well-known name such as \"Inbox\" \
                    or a path such as \"Inbox/Support\""
                .into(),
        );
    }
    if text.split('/').any(|step| step.trim().is_empty()) {
        return Err(format!(
            "{text:?} has an empty step: a Graph folder path is display names joined by \
             single '/', without one at either end, e.g. \"Inbox/Support\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
