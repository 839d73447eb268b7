//! One SMTP submission session: connect, secure the line, log in as the
//! reader, hand over one message, quit.
//!
//! TLS is [`crate::transport`]'s, as for the mailbox protocols: the same
//! trust (web PKI plus the reply's `ca_file`, verification always on) and
//! the same error texts. For STARTTLS the plain-text part (greeting, EHLO,
//! STARTTLS) is spoken here; lettre's [`AsyncSmtpConnection`] takes over
//! on the secured stream, and the SASL exchange is ours again: always the
//! two-step form (`AUTH XOAUTH2`, wait for `334`, then the initial
//! response on its own line). Microsoft expects that form, and Dovecot's
//! submission service refuses a command line over about a kilobyte
//! (`500 5.5.2 Line too long`), which a one-line `AUTH XOAUTH2 <token>`
//! with a real access token is. lettre hands intermediate `334` replies
//! back as `Ok`, so each step can be checked.

use std::fmt;
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lettre::address::Envelope;
use lettre::transport::smtp::Error as LettreError;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadBuf,
};

use crate::auth::sasl;
use crate::config::{ReplyConfig, Tls};
use crate::scrub::printable;
use crate::source::SignInSecret;
use crate::transport::{self, ConnectError, Endpoint, Stream};

/// Bounds on what the plain-text part reads from a server.
const MAX_LINE: u64 = 4096;
const MAX_LINES: usize = 100;

/// Why a submission failed. The texts end up in `outbox.last_error`;
/// none of them carries what we sent, only what the server answered.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{server}: {step}: no answer within {}s", .after.as_secs())]
    Timeout {
        server: String,
        step: &'static str,
        after: Duration,
    },
    /// The connection broke or the server said something unusable.
    #[error("{server}: {step}: {detail}")]
    Protocol {
        server: String,
        step: &'static str,
        detail: String,
    },
    #[error("{server} offers no STARTTLS ({detail}); not logging in without TLS")]
    NoStartTls { server: String, detail: String },
    #[error("{server} does not offer AUTH {mechanism} after EHLO")]
    NoMechanism {
        server: String,
        mechanism: &'static str,
    },
    /// The server refused the login (535 and kin).
    #[error("{server} refused the {what} of {user}: {reply}{}", auth_hint(.reply))]
    AuthRejected {
        server: String,
        user: String,
        what: &'static str,
        reply: String,
    },
    /// The server refused a step with a 4xx or 5xx reply.
    #[error("{server} refused {step}: {reply}")]
    Refused {
        server: String,
        step: &'static str,
        reply: String,
        /// A 5xx about the recipient or the message: sending the same
        /// again cannot work.
        permanent: bool,
    },
    /// The message needs an extension the server does not have.
    #[error("{server}: {detail}")]
    Unsendable { server: String, detail: String },
}

impl SmtpError {
    /// The same error with every occurrence of `secrets` in the server's
    /// words replaced: a server that echoes the AUTH line must not put the
    /// credential into `last_error`, a log or the database.
    fn redacted(self, secrets: &[&str]) -> SmtpError {
        // Pieces too: a server quoting the AUTH line cut short must not
        // leak its start.
        let scrubber = crate::scrub::Scrubber::new(secrets.iter().copied());
        let clean = |text: String| scrubber.clean(&text);
        match self {
            SmtpError::Refused {
                server,
                step,
                reply,
                permanent,
            } => SmtpError::Refused {
                server,
                step,
                reply: clean(reply),
                permanent,
            },
            SmtpError::AuthRejected {
                server,
                user,
                what,
                reply,
            } => SmtpError::AuthRejected {
                server,
                user,
                what,
                reply: clean(reply),
            },
            SmtpError::Protocol {
                server,
                step,
                detail,
            } => SmtpError::Protocol {
                server,
                step,
                detail: clean(detail),
            },
            other => other,
        }
    }

    /// Sending the same message again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SmtpError::Refused {
                permanent: true,
                ..
            } | SmtpError::Unsendable { .. }
        )
    }

    /// The server refused the credential itself.
    pub fn is_auth_rejected(&self) -> bool {
        matches!(self, SmtpError::AuthRejected { .. })
    }
}

/// What an admin can do about the refusals Exchange Online explains.
fn auth_hint(reply: &str) -> &'static str {
    if reply.contains("5.7.139") || reply.contains("SmtpClientAuthentication") {
        "; enable SMTP AUTH for the mailbox in Exchange Online \
         (Set-CASMailbox -SmtpClientAuthenticationDisabled $false)"
    } else {
        ""
    }
}

/// Where and how to submit, and as whom.
pub struct Submission<'a> {
    pub reply: &'a ReplyConfig,
    /// The reader's username: the SASL identity.
    pub user: &'a str,
    pub credential: &'a SignInSecret,
    /// Bound on every single step (connect, handshake, one command).
    pub timeout: Duration,
}

/// Submits one message; Ok once the server took it (`250` after DATA).
pub async fn submit(
    to: &Submission<'_>,
    envelope: &Envelope,
    message: &[u8],
) -> Result<(), SmtpError> {
    let reply = to.reply;
    let endpoint = Endpoint {
        host: &reply.host,
        port: reply.port,
        tls: reply.tls,
        ca_file: reply.ca_file.as_deref(),
        timeout: to.timeout,
    };
    let server = format!("{}:{}", reply.host, reply.port);
    let hello = hello_name(&reply.from);
    let stream = transport::connect(&endpoint).await?;
    let wire = match reply.tls {
        Tls::StartTls => {
            let plain = PlainPhase {
                server: &server,
                timeout: to.timeout,
            };
            let (greeting, stream) = plain.starttls(stream, &endpoint, &hello).await?;
            Wire::replaying(greeting, stream)
        }
        Tls::Implicit | Tls::None => Wire::replaying(Vec::new(), stream),
    };
    let conn = within(
        &server,
        "EHLO",
        to.timeout,
        AsyncSmtpConnection::connect_with_transport(Box::new(wire), &ClientId::Domain(hello)),
    )
    .await?
    .map_err(|e| refused(&server, "EHLO", &e, false))?;
    let mut session = Session {
        conn,
        server,
        timeout: to.timeout,
    };
    let result = session.deliver(to, envelope, message).await;
    match &result {
        Ok(()) => {
            // The message is taken; a failed QUIT changes nothing.
            let _ = tokio::time::timeout(to.timeout, session.conn.quit()).await;
        }
        Err(_) => {
            let _ = tokio::time::timeout(to.timeout, session.conn.abort()).await;
        }
    }
    result
}

/// The EHLO name: the From address's domain (a submission server only
/// logs it).
fn hello_name(from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("", |(_, d)| d).trim();
    let usable = !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if usable {
        domain.to_ascii_lowercase()
    } else {
        "localhost".into()
    }
}

/// Bounds one step by the timeout.
async fn within<T>(
    server: &str,
    step: &'static str,
    after: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, SmtpError> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| SmtpError::Timeout {
            server: server.to_string(),
            step,
            after,
        })
}

/// The reply as the server wrote it: `550 5.1.1 <x>: user unknown`.
/// Quoted as every mail server's words are ([`printable`]).
fn reply_text(e: &LettreError) -> String {
    printable(&match (e.status(), std::error::Error::source(e)) {
        (Some(code), Some(text)) => format!("{code} {text}"),
        (Some(code), None) => code.to_string(),
        (None, _) => e.to_string(),
    })
}

fn response_text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    printable(&format!("{} {}", r.code(), lines.join(" / ")))
}

/// A refusal of a security or policy kind (enhanced status `5.7.x`:
/// authentication, relaying, sending as another address), which an admin
/// can fix, unlike a recipient that does not exist.
fn is_policy(reply: &str) -> bool {
    let enhanced = reply.split_whitespace().nth(1).unwrap_or("");
    enhanced.starts_with("5.7.") || enhanced.starts_with("4.7.") || reply.contains("SendAsDenied")
}

/// Sorts a failed step. `about_message`: the step concerns the recipient
/// or the message, so a 5xx (other than a policy one) is final.
fn refused(server: &str, step: &'static str, e: &LettreError, about_message: bool) -> SmtpError {
    match e.status() {
        Some(code) => {
            let reply = reply_text(e);
            let permanent = about_message && u16::from(code) >= 500 && !is_policy(&reply);
            SmtpError::Refused {
                server: server.to_string(),
                step,
                reply,
                permanent,
            }
        }
        None => SmtpError::Protocol {
            server: server.to_string(),
            step,
            detail: printable(&e.to_string()),
        },
    }
}

/// The base64 credential line of SASL XOAUTH2 (a token) or PLAIN (a
/// password).
fn sasl_line(user: &str, credential: &SignInSecret) -> SecretString {
    let raw = match credential {
        SignInSecret::Token(token) => sasl::xoauth2(user, token.expose_secret()),
        SignInSecret::Password(password) => sasl::plain(user, password.expose_secret()),
    };
    SecretString::from(BASE64.encode(raw.as_bytes()))
}

/// One command line, as lettre's `command` writes what it is given.
struct Line(String);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// A SASL response line carrying a credential. Deliberately without
/// `Debug`; only lettre's write ever formats it.
struct SecretLine<'a>(&'a SecretString);

impl fmt::Display for SecretLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0.expose_secret())
    }
}

struct Session {
    conn: AsyncSmtpConnection,
    server: String,
    timeout: Duration,
}

impl Session {
    async fn deliver(
        &mut self,
        to: &Submission<'_>,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<(), SmtpError> {
        self.authenticate(to.user, to.credential).await?;
        self.transaction(envelope, message).await
    }

    async fn command(
        &mut self,
        step: &'static str,
        line: impl fmt::Display,
    ) -> Result<Result<Response, LettreError>, SmtpError> {
        within(&self.server, step, self.timeout, self.conn.command(line)).await
    }

    async fn authenticate(
        &mut self,
        user: &str,
        credential: &SignInSecret,
    ) -> Result<(), SmtpError> {
        let secret = match credential {
            SignInSecret::Token(token) | SignInSecret::Password(token) => token,
        };
        let result = self.authenticate_unredacted(user, credential).await;
        let line = sasl_line(user, credential);
        result.map_err(|e| e.redacted(&[line.expose_secret(), secret.expose_secret()]))
    }

    async fn authenticate_unredacted(
        &mut self,
        user: &str,
        credential: &SignInSecret,
    ) -> Result<(), SmtpError> {
        const STEP: &str = "AUTH";
        let (mechanism, name, what) = match credential {
            SignInSecret::Token(_) => (Mechanism::Xoauth2, "XOAUTH2", "access token"),
            SignInSecret::Password(_) => (Mechanism::Plain, "PLAIN", "password"),
        };
        let initial = sasl_line(user, credential);
        if !self.conn.server_info().supports_auth_mechanism(mechanism) {
            return Err(SmtpError::NoMechanism {
                server: self.server.clone(),
                mechanism: name,
            });
        }
        let rejected = |server: &str, reply: String| SmtpError::AuthRejected {
            server: server.to_string(),
            user: user.to_string(),
            what,
            reply,
        };
        let failed = |server: &str, e: &LettreError| match e.status() {
            Some(code) if u16::from(code) == 535 || is_policy(&reply_text(e)) => {
                rejected(server, reply_text(e))
            }
            _ => refused(server, STEP, e, false),
        };

        match self.command(STEP, Line(format!("AUTH {name}"))).await? {
            Ok(r) if r.has_code(334) => {}
            Ok(r) => {
                return Err(SmtpError::Protocol {
                    server: self.server.clone(),
                    step: STEP,
                    detail: format!("expected 334 to AUTH {name}, got {}", response_text(&r)),
                });
            }
            Err(e) => return Err(failed(&self.server, &e)),
        }
        match self.command(STEP, SecretLine(&initial)).await? {
            Ok(r) if r.has_code(235) => Ok(()),
            Ok(r) if r.has_code(334) => {
                // XOAUTH2's failure: a 334 whose text is a base64 JSON
                // error; the client answers with an empty line and gets
                // the final refusal.
                let challenge = r
                    .first_word()
                    .and_then(|word| sasl::decode_challenge(word, &[initial.expose_secret()]));
                let end = self.command(STEP, Line(String::new())).await?;
                let reply = match end {
                    Err(e) => reply_text(&e),
                    Ok(r) => response_text(&r),
                };
                let reply = match challenge {
                    Some(c) => format!("{reply} ({c})"),
                    None => reply,
                };
                Err(rejected(&self.server, reply))
            }
            Ok(r) => Err(SmtpError::Protocol {
                server: self.server.clone(),
                step: STEP,
                detail: format!("unexpected reply {}", response_text(&r)),
            }),
            Err(e) => Err(failed(&self.server, &e)),
        }
    }

    async fn transaction(&mut self, envelope: &Envelope, message: &[u8]) -> Result<(), SmtpError> {
        let info = self.conn.server_info();
        let mut parameters = Vec::new();
        let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
        let non_ascii_address =
            envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a));
        if non_ascii_address {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(
                    self.unsendable("an address is not ASCII and the server lacks SMTPUTF8")
                );
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !message.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(
                    self.unsendable("the message is not 7-bit and the server lacks 8BITMIME")
                );
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        // A 5xx to MAIL FROM is about us (the sender address, its rights):
        // retried, so that a fix takes effect. Later refusals are about
        // the recipient or the message.
        if let Err(e) = self
            .command("MAIL FROM", Mail::new(envelope.from().cloned(), parameters))
            .await?
        {
            return Err(refused(&self.server, "MAIL FROM", &e, false));
        }
        for recipient in envelope.to() {
            if let Err(e) = self
                .command("RCPT TO", Rcpt::new(recipient.clone(), Vec::new()))
                .await?
            {
                return Err(refused(&self.server, "RCPT TO", &e, true));
            }
        }
        if let Err(e) = self.command("DATA", Data).await? {
            return Err(refused(&self.server, "DATA", &e, true));
        }
        match within(
            &self.server,
            "end of data",
            self.timeout,
            self.conn.message(message),
        )
        .await?
        {
            Ok(_) => Ok(()),
            Err(e) => Err(refused(&self.server, "the message", &e, true)),
        }
    }

    fn unsendable(&self, detail: &str) -> SmtpError {
        SmtpError::Unsendable {
            server: self.server.clone(),
            detail: detail.to_string(),
        }
    }
}

/// A reply read in the plain-text part: its code, lines and raw bytes.
struct PlainReply {
    code: u16,
    lines: Vec<String>,
    raw: Vec<u8>,
}

impl PlainReply {
    fn text(&self) -> String {
        printable(&self.lines.join(" / "))
    }
}

/// The part before TLS, spoken without lettre: greeting, EHLO, STARTTLS.
struct PlainPhase<'a> {
    server: &'a str,
    timeout: Duration,
}

impl PlainPhase<'_> {
    /// Returns the greeting (lettre reads one before its EHLO; it is
    /// replayed to it) and the stream after a verified TLS handshake.
    async fn starttls(
        &self,
        stream: Stream,
        endpoint: &Endpoint<'_>,
        hello: &str,
    ) -> Result<(Vec<u8>, Stream), SmtpError> {
        let mut io = BufReader::new(stream);
        let greeting = self.reply(&mut io, "greeting").await?;
        if greeting.code != 220 {
            return Err(self.refusal("greeting", &greeting));
        }
        self.send(&mut io, "EHLO", &format!("EHLO {hello}\r\n"))
            .await?;
        let ehlo = self.reply(&mut io, "EHLO").await?;
        if ehlo.code != 250 {
            return Err(self.refusal("EHLO", &ehlo));
        }
        let offers = ehlo.lines.iter().skip(1).any(|l| {
            l.get(4..)
                .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
        });
        if !offers {
            return Err(SmtpError::NoStartTls {
                server: self.server.to_string(),
                detail: "not in its EHLO reply".into(),
            });
        }
        self.send(&mut io, "STARTTLS", "STARTTLS\r\n").await?;
        let answer = self.reply(&mut io, "STARTTLS").await?;
        if answer.code != 220 {
            return Err(SmtpError::NoStartTls {
                server: self.server.to_string(),
                detail: answer.text(),
            });
        }
        // Bytes after the 220 came in clear text and would otherwise be
        // read as if they came over TLS: how STARTTLS command injection
        // (CVE-2011-0411 and kin) works.
        let pending = io.buffer().len();
        if pending > 0 {
            return Err(SmtpError::Protocol {
                server: self.server.to_string(),
                step: "STARTTLS",
                detail: format!(
                    "the server sent {pending} unexpected byte(s) before the TLS handshake; \
                     refusing to continue because they could have been injected by an attacker"
                ),
            });
        }
        let stream = transport::upgrade(io.into_inner(), endpoint).await?;
        Ok((greeting.raw, stream))
    }

    async fn send(
        &self,
        io: &mut BufReader<Stream>,
        step: &'static str,
        line: &str,
    ) -> Result<(), SmtpError> {
        let write = async {
            io.write_all(line.as_bytes()).await?;
            io.flush().await
        };
        within(self.server, step, self.timeout, write)
            .await?
            .map_err(|e| self.broken(step, &e))
    }

    async fn reply(
        &self,
        io: &mut BufReader<Stream>,
        step: &'static str,
    ) -> Result<PlainReply, SmtpError> {
        within(self.server, step, self.timeout, read_reply(io))
            .await?
            .map_err(|detail| SmtpError::Protocol {
                server: self.server.to_string(),
                step,
                detail,
            })
    }

    fn broken(&self, step: &'static str, e: &std::io::Error) -> SmtpError {
        SmtpError::Protocol {
            server: self.server.to_string(),
            step,
            detail: e.to_string(),
        }
    }

    fn refusal(&self, step: &'static str, reply: &PlainReply) -> SmtpError {
        SmtpError::Refused {
            server: self.server.to_string(),
            step,
            reply: reply.text(),
            permanent: false,
        }
    }
}

/// Reads one (possibly multi-line) reply: `250-first`, ..., `250 last`.
async fn read_reply<R: AsyncBufRead + Unpin>(io: &mut R) -> Result<PlainReply, String> {
    let mut reply = PlainReply {
        code: 0,
        lines: Vec::new(),
        raw: Vec::new(),
    };
    loop {
        let mut line = Vec::new();
        let n = (&mut *io)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        if !line.ends_with(b"\n") {
            return Err(format!("a reply line longer than {MAX_LINE} bytes"));
        }
        reply.raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let code = text
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| format!("not an SMTP reply: {:?}", truncate(&text)))?;
        if reply.code != 0 && code != reply.code {
            return Err(format!(
                "reply code changed within a reply: {:?}",
                truncate(&text)
            ));
        }
        reply.code = code;
        let last = text.as_bytes().get(3) != Some(&b'-');
        reply.lines.push(text);
        if last {
            return Ok(reply);
        }
        if reply.lines.len() >= MAX_LINES {
            return Err(format!("a reply of more than {MAX_LINES} lines"));
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(120).collect()
}

/// The stream lettre speaks over: first the greeting we already read (so
/// that its connect, which starts by reading one, works after our
/// STARTTLS), then the connection itself.
#[derive(Debug)]
struct Wire {
    replay: Cursor<Vec<u8>>,
    stream: Stream,
}

impl Wire {
    fn replaying(greeting: Vec<u8>, stream: Stream) -> Wire {
        Wire {
            replay: Cursor::new(greeting),
            stream,
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let replay = this.replay.get_ref();
        let at = usize::try_from(this.replay.position()).unwrap_or(replay.len());
        if at < replay.len() {
            let n = (replay.len() - at).min(buf.remaining());
            buf.put_slice(&replay[at..at + n]);
            this.replay.set_position((at + n) as u64);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Wire {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

#[cfg(test)]
mod tests;
