//! What the configuration says about mail once it is read: threading and
//! limits (`[tickets]`), the loop guard (`[guard]`), and acknowledgements
//! (`[reader.reply]`, and which way they go out: SMTP submission or
//! Microsoft Graph's sendMail). Routing rules are in [`super::rules`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use super::rules::Rules;
use super::value::{HumanDuration, is_loopback};
use super::{ConfigError, Protocol, Tls};

/// Everything the ingest path of one reader decides with; shared, and
/// rebuilt on reload.
#[derive(Debug)]
pub struct MailPolicy {
    pub tickets: TicketsConfig,
    pub guard: GuardConfig,
    pub rules: Rules,
    /// This reader turns machine-sent mail (Auto-Submitted, bulk, lists)
    /// into tickets, still never acknowledged.
    pub allow_auto_submitted: bool,
    /// Acknowledge new tickets of this reader (`[reader.reply]` is set).
    pub acknowledge: bool,
    /// No acknowledgement for mail received longer than this before it
    /// was ingested (`ack_max_age`): a backlog is not answered.
    pub ack_max_age: Duration,
    /// The domain of our outbound Message-IDs: the reply address's.
    pub message_id_domain: String,
}

/// A reader's [`MailPolicy`], replaceable while the reader runs: a reload
/// that changes only `[tickets]`, `[guard]`, the rules or the set of our
/// addresses applies from the next batch on, without reconnecting.
#[derive(Clone)]
pub struct SharedPolicy(Arc<std::sync::RwLock<Arc<MailPolicy>>>);

impl SharedPolicy {
    pub fn new(policy: Arc<MailPolicy>) -> SharedPolicy {
        SharedPolicy(Arc::new(std::sync::RwLock::new(policy)))
    }

    /// The policy now; a batch keeps the one it started with.
    pub fn current(&self) -> Arc<MailPolicy> {
        // A panic while holding the lock cannot leave a half-written Arc.
        let guard = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&guard)
    }

    pub fn replace(&self, policy: Arc<MailPolicy>) {
        let mut guard = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = policy;
    }
}

impl std::fmt::Debug for SharedPolicy {
    /// Deliberately without the contents: a reader's fingerprint is built
    /// from its Debug output, and a policy change must not restart it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedPolicy")
    }
}

/// `[tickets]`: how mail finds its ticket, and size limits.
#[derive(Debug, Clone)]
pub struct TicketsConfig {
    pub subject_tag: SubjectTag,
    pub closed_reply: ClosedReply,
    pub tag_from: TagFrom,
    /// Recognise replies by the token hidden in our outbound Message-IDs.
    pub hidden_token: bool,
    pub max_email_size: u64,
    pub max_attachment_size: u64,
    /// Keep every raw mail (stored once by content).
    pub keep_raw: bool,
}

/// What a reply to a closed ticket does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedReply {
    /// Joins the ticket and sets it open again.
    Reopen,
    /// Joins the ticket, which stays closed.
    Attach,
    /// Opens a new ticket.
    NewTicket,
}

/// Who may join a ticket by its subject tag alone (or by forwarding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagFrom {
    /// The requester, or an address already on the ticket's mail (From, To, Cc).
    Participants,
    /// Anyone.
    Anyone,
}

/// The ticket number as it appears in subjects, e.g. `[#123]`: written with
/// [`SubjectTag::format`], found with [`SubjectTag::find`].
#[derive(Debug, Clone)]
pub struct SubjectTag {
    template: String,
    pattern: Regex,
}

impl SubjectTag {
    /// `template` holds `{id}` once, e.g. `"[#{id}]"` or `"[ACME-{id}]"`.
    pub fn new(template: &str) -> Result<SubjectTag, String> {
        let Some((before, after)) = template.split_once("{id}") else {
            return Err(format!(
                "{template:?} must contain {{id}}, e.g. \"[#{{id}}]\""
            ));
        };
        if after.contains("{id}") {
            return Err("{id} may appear only once".into());
        }
        if before.trim().is_empty() && after.trim().is_empty() {
            return Err(
                "the tag needs text around {id}, e.g. \"[#{id}]\", or any number in a subject would match"
                    .into(),
            );
        }
        let pattern = format!(
            "(?i){}([0-9]{{1,18}}){}",
            regex::escape(before),
            regex::escape(after)
        );
        let pattern = Regex::new(&pattern).map_err(|e| e.to_string())?;
        Ok(SubjectTag {
            template: template.to_string(),
            pattern,
        })
    }

    pub fn format(&self, id: i64) -> String {
        self.template.replace("{id}", &id.to_string())
    }

    /// The ticket numbers tagged in `subject`, first first; at most
    /// `MAX_SUBJECT_TAGS`, since each is looked up inside the write
    /// transaction and a subject can repeat a tag thousands of times.
    pub fn find(&self, subject: &str) -> Vec<i64> {
        self.pattern
            .captures_iter(subject)
            .filter_map(|c| c.get(1)?.as_str().parse().ok())
            .take(MAX_SUBJECT_TAGS)
            .collect()
    }

    pub fn template(&self) -> &str {
        &self.template
    }
}

/// The most subject tags of one mail that are looked up.
pub const MAX_SUBJECT_TAGS: usize = 10;

impl Default for TicketsConfig {
    fn default() -> Self {
        TicketsConfig {
            subject_tag: SubjectTag::default(),
            closed_reply: ClosedReply::Reopen,
            tag_from: TagFrom::Participants,
            hidden_token: true,
            max_email_size: 50 * 1024 * 1024,
            max_attachment_size: 25 * 1024 * 1024,
            keep_raw: false,
        }
    }
}

impl Default for SubjectTag {
    /// `[#123]`.
    fn default() -> Self {
        // A fixed template that `new` accepts (tested below).
        SubjectTag::new("[#{id}]").expect("the default subject tag is valid")
    }
}

/// `[guard]`: the loop and auto-reply guard, on for every reader.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Mails a sender may turn into tickets (or replies) per `rate_window`;
    /// 0 switches the limit off.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// Lower-case addresses that are ours: every reader's username and
    /// reply address, plus `own_addresses`. Mail from them is never a ticket.
    pub own_addresses: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            rate_limit: 20,
            rate_window: Duration::from_secs(3600),
            own_addresses: Vec::new(),
        }
    }
}

impl Default for MailPolicy {
    /// The documented defaults, for a reader that does not acknowledge.
    fn default() -> Self {
        MailPolicy {
            tickets: TicketsConfig::default(),
            guard: GuardConfig::default(),
            rules: Rules::default(),
            allow_auto_submitted: false,
            acknowledge: false,
            ack_max_age: super::DEFAULT_ACK_MAX_AGE,
            message_id_domain: "localhost".into(),
        }
    }
}

impl GuardConfig {
    pub fn is_own(&self, address: &str) -> bool {
        let address = address.trim().to_ascii_lowercase();
        self.own_addresses.contains(&address)
    }
}

/// `[reader.reply]`: acknowledge each new ticket by mail.
#[derive(Debug, Clone)]
pub struct ReplyConfig {
    /// Which way the acknowledgement goes out.
    pub via: Via,
    /// The From address (default: the reader's username).
    pub from: String,
    /// Where it is sent. SMTP: the submission host (default: the cloud's,
    /// e.g. smtp.office365.com). Graph: the reader's own `host`, `port`,
    /// `tls` and `ca_file` (sendMail goes where the mail is read from).
    pub host: String,
    pub port: u16,
    /// SMTP: `starttls` (default, port 587) or `implicit` (port 465);
    /// `none` only on loopback. Graph: the reader's.
    pub tls: Tls,
    pub ca_file: Option<PathBuf>,
    /// Templates; `{tag}`, `{id}`, `{subject}`, `{requester}` and
    /// `{requester_name}` are replaced.
    pub subject: String,
    pub body: String,
}

/// `[reader.reply] via`: how acknowledgements are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// SMTP submission with the reader's login (the default for IMAP and
    /// POP3 readers).
    Smtp,
    /// Microsoft Graph's `sendMail` with the reader's Graph token (the
    /// default for Graph readers, whose tenants often have SMTP AUTH off).
    Graph,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Smtp => "smtp",
            Via::Graph => "graph",
        }
    }
}

pub const DEFAULT_REPLY_SUBJECT: &str = "{tag} {subject}";
pub const DEFAULT_REPLY_BODY: &str = "Hello,\n\n\
Thank you for your message. We have opened ticket {tag} for it and will get back to you.\n\n\
Please keep {tag} in the subject when you reply, so that your answer reaches the same ticket.\n\n\
This message was sent automatically.\n";

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTickets {
    subject_tag: Option<Spanned<String>>,
    closed_reply: Option<ClosedReply>,
    tag_from: Option<TagFrom>,
    hidden_token: Option<bool>,
    max_email_size: Option<Spanned<bytesize::ByteSize>>,
    max_attachment_size: Option<Spanned<bytesize::ByteSize>>,
    keep_raw: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuard {
    rate_limit: Option<u32>,
    rate_window: Option<HumanDuration>,
    #[serde(default)]
    own_addresses: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReply {
    via: Option<Spanned<Via>>,
    from: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    tls: Option<Spanned<Tls>>,
    ca_file: Option<Spanned<PathBuf>>,
    subject: Option<String>,
    body: Option<String>,
    body_file: Option<Spanned<PathBuf>>,
    ack_max_age: Option<HumanDuration>,
}

impl RawReply {
    /// `ack_max_age` written in `[reader.reply]`; the reader's table may
    /// hold it instead.
    pub(super) fn ack_max_age(&self) -> Option<Duration> {
        self.ack_max_age.map(|d| d.0)
    }

    pub(super) fn sender(&self) -> Option<String> {
        self.from.as_ref().map(|f| f.get_ref().clone())
    }
}

pub(super) fn tickets(locate: &Locator<'_>, raw: RawTickets) -> Result<TicketsConfig, ConfigError> {
    let defaults = TicketsConfig::default();
    let subject_tag = match raw.subject_tag {
        Some(t) => {
            SubjectTag::new(t.get_ref()).map_err(|e| locate.at(t.span(), "subject_tag", &e))?
        }
        None => defaults.subject_tag,
    };
    let size = |value: Option<Spanned<bytesize::ByteSize>>, key: &str, default: u64| match value {
        Some(v) if v.get_ref().as_u64() == 0 => {
            Err(locate.at(v.span(), key, "must be more than 0 bytes"))
        }
        Some(v) => Ok(v.get_ref().as_u64()),
        None => Ok(default),
    };
    Ok(TicketsConfig {
        subject_tag,
        closed_reply: raw.closed_reply.unwrap_or(defaults.closed_reply),
        tag_from: raw.tag_from.unwrap_or(defaults.tag_from),
        hidden_token: raw.hidden_token.unwrap_or(defaults.hidden_token),
        max_email_size: size(
            raw.max_email_size,
            "max_email_size",
            defaults.max_email_size,
        )?,
        max_attachment_size: size(
            raw.max_attachment_size,
            "max_attachment_size",
            defaults.max_attachment_size,
        )?,
        keep_raw: raw.keep_raw.unwrap_or(defaults.keep_raw),
    })
}

/// The guard settings; `ours` are the readers' usernames and reply
/// addresses, always counted as our own.
pub(super) fn guard(
    locate: &Locator<'_>,
    raw: RawGuard,
    ours: impl IntoIterator<Item = String>,
) -> Result<GuardConfig, ConfigError> {
    let mut own_addresses: Vec<String> = Vec::new();
    for a in raw.own_addresses {
        if !a.get_ref().contains('@') {
            return Err(locate.at(
                a.span(),
                "own_addresses",
                &format!("{:?} is not a mail address", a.get_ref()),
            ));
        }
        own_addresses.push(a.get_ref().trim().to_ascii_lowercase());
    }
    own_addresses.extend(
        ours.into_iter()
            .filter(|a| a.contains('@'))
            .map(|a| a.trim().to_ascii_lowercase()),
    );
    own_addresses.sort();
    own_addresses.dedup();
    let defaults = GuardConfig::default();
    Ok(GuardConfig {
        rate_limit: raw.rate_limit.unwrap_or(defaults.rate_limit),
        rate_window: raw.rate_window.map_or(defaults.rate_window, |d| d.0),
        own_addresses,
    })
}

/// Where the reply goes out: the fields a reader's `[reader.reply]` needs
/// from the reader itself.
pub(super) struct ReplyDefaults<'a> {
    pub username: &'a str,
    /// The cloud's SMTP host, for an OAuth reader.
    pub smtp_host: Option<&'a str>,
    /// The reader's protocol and server: the default `via`, and where
    /// sendMail goes when it is "graph".
    pub reader: ReaderEndpoint<'a>,
    pub base_dir: &'a std::path::Path,
    /// Where `[reader.reply]` was written, for errors.
    pub span: std::ops::Range<usize>,
}

/// The reader's own server, as its `[[reader]]` keys resolved.
pub(super) struct ReaderEndpoint<'a> {
    pub protocol: Protocol,
    pub host: &'a str,
    pub port: u16,
    pub tls: Tls,
    pub ca_file: Option<&'a std::path::Path>,
}

pub(super) fn reply(
    locate: &Locator<'_>,
    raw: RawReply,
    defaults: ReplyDefaults<'_>,
) -> Result<ReplyConfig, ConfigError> {
    let reader = &defaults.reader;
    let via = match (&raw.via, reader.protocol) {
        // Refused rather than built: Graph for an IMAP/POP3 reader would
        // need a second server (the Graph host beside the mail host) and a
        // second resource's token for one reader; a Graph reader has both.
        (Some(v), Protocol::Imap | Protocol::Pop3) if *v.get_ref() == Via::Graph => {
            return Err(locate.at(
                v.span(),
                "via",
                &format!(
                    "acknowledgements over Microsoft Graph need a reader with protocol = \"graph\"; \
                     an {} reader sends them over SMTP: remove via (or use via = \"smtp\")",
                    match reader.protocol {
                        Protocol::Pop3 => "POP3",
                        _ => "IMAP",
                    }
                ),
            ));
        }
        (Some(v), _) => *v.get_ref(),
        (None, Protocol::Graph) => Via::Graph,
        (None, Protocol::Imap | Protocol::Pop3) => Via::Smtp,
    };
    if via == Via::Graph {
        let smtp_only = [
            raw.host.as_ref().map(|v| ("host", v.span())),
            raw.port.as_ref().map(|v| ("port", v.span())),
            raw.tls.as_ref().map(|v| ("tls", v.span())),
            raw.ca_file.as_ref().map(|v| ("ca_file", v.span())),
        ];
        if let Some((key, span)) = smtp_only.into_iter().flatten().min_by_key(|(_, s)| s.start) {
            return Err(locate.at(
                span,
                key,
                &format!(
                    "{key} is the SMTP server's, and acknowledgements go over Microsoft Graph \
                     (via = \"graph\", the default for a graph reader), to the reader's own \
                     host: remove {key} here (set it on the reader), or set via = \"smtp\""
                ),
            ));
        }
    }
    let (host, port, tls, ca_file) = match via {
        // Already checked against the reader's protocol and cloud.
        Via::Graph => (
            reader.host.to_string(),
            reader.port,
            reader.tls,
            reader.ca_file.map(std::path::Path::to_path_buf),
        ),
        Via::Smtp => smtp_endpoint(locate, &raw, &defaults)?,
    };
    let from = match raw.from {
        Some(f) if !f.get_ref().contains('@') => {
            return Err(locate.at(f.span(), "from", "must be a mail address"));
        }
        Some(f) => f.into_inner(),
        None if defaults.username.contains('@') => defaults.username.to_string(),
        None => {
            return Err(locate.at_table(
                defaults.span,
                "reader.reply.from",
                "the reader's username is not a mail address; set from = \"support@example.com\"",
            ));
        }
    };
    let body = match (raw.body, raw.body_file) {
        (Some(_), Some(f)) => {
            return Err(locate.at(f.span(), "body_file", "set body or body_file, not both"));
        }
        (Some(b), None) => b,
        (None, Some(f)) => {
            let path = defaults.base_dir.join(f.get_ref());
            std::fs::read_to_string(&path).map_err(|e| {
                locate.at(
                    f.span(),
                    "body_file",
                    &format!("cannot read {}: {e}", path.display()),
                )
            })?
        }
        (None, None) => DEFAULT_REPLY_BODY.to_string(),
    };
    Ok(ReplyConfig {
        via,
        from,
        host,
        port,
        tls,
        ca_file,
        subject: raw
            .subject
            .unwrap_or_else(|| DEFAULT_REPLY_SUBJECT.to_string()),
        body,
    })
}

/// The SMTP submission server of `[reader.reply]`: host, port, tls, ca_file.
fn smtp_endpoint(
    locate: &Locator<'_>,
    raw: &RawReply,
    defaults: &ReplyDefaults<'_>,
) -> Result<(String, u16, Tls, Option<PathBuf>), ConfigError> {
    let host = match (&raw.host, defaults.smtp_host) {
        (Some(h), _) => h.get_ref().clone(),
        (None, Some(h)) => h.to_string(),
        (None, None) => {
            return Err(locate.at_table(
                defaults.span.clone(),
                "reader.reply.host",
                "a password reader's reply needs the SMTP submission host",
            ));
        }
    };
    let tls = raw.tls.as_ref().map_or(Tls::StartTls, |t| *t.get_ref());
    if tls == Tls::None && !is_loopback(&host) {
        return Err(locate.at_table(
            defaults.span.clone(),
            "reader.reply.tls",
            &format!(
                "tls = \"none\" would send credentials in clear to {host}; it is only accepted \
                 for a loopback host. Use \"starttls\" (port 587) or \"implicit\" (port 465)"
            ),
        ));
    }
    let port = raw.port.as_ref().map_or(
        match tls {
            Tls::Implicit => 465,
            Tls::StartTls | Tls::None => 587,
        },
        |p| *p.get_ref(),
    );
    let ca_file = raw
        .ca_file
        .as_ref()
        .map(|p| defaults.base_dir.join(p.get_ref()));
    Ok((host, port, tls, ca_file))
}

/// The domain part of an address.
pub(super) fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(_, d)| d)
}

/// The settings every reader's policy shares.
pub(super) struct Shared {
    pub tickets: TicketsConfig,
    pub guard: GuardConfig,
    pub rules: Rules,
}

impl Shared {
    pub fn policy(
        &self,
        allow_auto_submitted: bool,
        reply_from: Option<&str>,
        username: &str,
        ack_max_age: Duration,
    ) -> SharedPolicy {
        SharedPolicy::new(Arc::new(MailPolicy {
            tickets: self.tickets.clone(),
            guard: self.guard.clone(),
            rules: self.rules.clone(),
            allow_auto_submitted,
            acknowledge: reply_from.is_some(),
            ack_max_age,
            message_id_domain: domain_of(reply_from.unwrap_or(username)).to_ascii_lowercase(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tag_round_trips() {
        let tag = SubjectTag::default();
        assert_eq!(tag.format(42), "[#42]");
        assert_eq!(tag.find("Re: Printer [#42] still broken"), vec![42]);
        assert_eq!(tag.find("RE: [#7] and [#9]"), vec![7, 9]);
        let many = "[#1] ".repeat(100_000);
        assert_eq!(tag.find(&many), vec![1; MAX_SUBJECT_TAGS]);
        assert!(tag.find("Order #42 [42]").is_empty());
        let tag = SubjectTag::new("[ACME-{id}]").expect("tag");
        assert_eq!(tag.find("AW: [acme-1001] Frage"), vec![1001]);
        assert!(SubjectTag::new("{id}").is_err());
        assert!(SubjectTag::new("[#]").is_err());
    }

    const READER: &str = r#"
[[oauth]]
name = "contoso"
tenant = "t"
client_id = "c"

[[reader]]
name = "helpdesk"
protocol = "imap"
username = "helpdesk@contoso.com"
oauth = "contoso"
grant = "authorization_code"
"#;

    fn parse(text: &str) -> Result<super::super::Config, ConfigError> {
        super::super::Config::parse(std::path::Path::new("/etc/m2t/config.toml"), text)
    }

    #[test]
    fn defaults_apply_without_the_sections() {
        let config = parse(READER).expect("valid");
        let reader = &config.readers[0];
        assert!(reader.reply.is_none());
        let policy = reader.mail.current();
        assert!(!policy.acknowledge && !policy.allow_auto_submitted);
        assert_eq!(policy.message_id_domain, "contoso.com");
        assert_eq!(policy.tickets.subject_tag.format(5), "[#5]");
        assert_eq!(policy.tickets.closed_reply, ClosedReply::Reopen);
        assert_eq!(policy.tickets.max_attachment_size, 25 << 20);
        assert_eq!(policy.guard.rate_limit, 20);
        assert!(policy.guard.is_own("HelpDesk@Contoso.com"));
    }

    #[test]
    fn sections_and_reply_are_read() {
        let text = format!(
            r#"
[tickets]
subject_tag = "[ACME-{{id}}]"
closed_reply = "new_ticket"
tag_from = "anyone"
max_email_size = "10 MiB"
max_attachment_size = 1000
keep_raw = true

[guard]
rate_limit = 0
rate_window = "30m"
own_addresses = ["Alias@Contoso.com"]
{READER}allow_auto_submitted = true
[reader.reply]
from = "noreply@support.contoso.com"
subject = "Ticket {{tag}}"
"#
        );
        let config = parse(&text).expect("valid");
        let reader = &config.readers[0];
        let policy = reader.mail.current();
        assert_eq!(policy.tickets.subject_tag.format(7), "[ACME-7]");
        assert_eq!(policy.tickets.closed_reply, ClosedReply::NewTicket);
        assert_eq!(policy.tickets.tag_from, TagFrom::Anyone);
        assert_eq!(policy.tickets.max_email_size, 10 << 20);
        assert_eq!(policy.tickets.max_attachment_size, 1000);
        assert!(policy.tickets.keep_raw && policy.allow_auto_submitted && policy.acknowledge);
        assert_eq!(policy.guard.rate_limit, 0);
        assert!(policy.guard.is_own("alias@contoso.com"));
        assert!(policy.guard.is_own("noreply@support.contoso.com"));
        assert_eq!(policy.message_id_domain, "support.contoso.com");
        let reply = reader.reply.as_ref().expect("reply");
        assert_eq!(
            (reply.host.as_str(), reply.port, reply.tls),
            ("smtp.office365.com", 587, Tls::StartTls)
        );
        assert_eq!(reply.subject, "Ticket {tag}");
        assert_eq!(reply.body, DEFAULT_REPLY_BODY);
    }

    #[test]
    fn mistakes_name_file_line_and_key() {
        let cases = [
            (
                "[tickets]\nsubject_tag = \"#\"\n",
                ":3: tickets.subject_tag: ",
            ),
            (
                "[tickets]\nclosed_reply = \"maybe\"\n",
                ":3: tickets.closed_reply: ",
            ),
            (
                "[tickets]\nmax_email_size = \"lots\"\n",
                ":3: tickets.max_email_size: ",
            ),
            (
                "[guard]\nown_addresses = [\"nobody\"]\n",
                ":3: guard.own_addresses: ",
            ),
        ];
        for (section, expected) in cases {
            let err = parse(&format!("\n{section}{READER}"))
                .expect_err(section)
                .to_string();
            assert!(err.starts_with("/etc/m2t/config.toml"), "{err}");
            assert!(err.contains(expected), "{section}: {err}");
        }
        let err = parse(&format!(
            "{READER}[reader.reply]\ntls = \"none\"\nhost = \"smtp.example.com\"\n"
        ))
        .expect_err("plain text to a remote host")
        .to_string();
        assert!(
            err.contains("reader.reply.tls") && err.contains("loopback"),
            "{err}"
        );
        let err = parse(&format!(
            "{READER}[reader.reply]\nbody = \"x\"\nbody_file = \"ack.txt\"\n"
        ))
        .expect_err("both bodies")
        .to_string();
        assert!(err.contains(":15: reader.reply.body_file: "), "{err}");
    }
}
