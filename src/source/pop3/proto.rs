//! POP3 wire protocol (RFC 1939, CAPA from RFC 2449, STLS from RFC 2595,
//! AUTH from RFC 5034) over any async stream. Owns framing: status lines,
//! multi-line responses with dot-unstuffing, SASL exchanges. Knows nothing
//! about tickets or TLS.
//!
//! Written here rather than taken from a crate because none of the
//! maintained ones combines tokio, a caller-supplied (rustls) stream,
//! Microsoft's two-step XOAUTH2 and a RETR that streams into the caller's
//! buffer.
//!
//! After an [`Pop3Error::Err`] or [`Pop3Error::AuthRejected`] the
//! connection is still in step with the server and may be used further
//! (for example to fall back from `AUTH PLAIN` to `USER`/`PASS`). After a
//! timeout, an I/O error, garbage, or a command future dropped half-way
//! (e.g. a RETR lost in a `select!`), the rest of that answer may still be
//! on its way, and a mail line such as "+OK" would be read as the answer
//! to the next command. The connection therefore remembers that it is out
//! of step and refuses every further command with a protocol error: drop
//! it and reconnect.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::zeroize::Zeroizing;

use self::text::{parse_number, parse_reply, printable, quote, strip_eol, unique_id};
use crate::auth::sasl;
use crate::scrub::Scrubber;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest status, CAPA, UIDL or LIST line accepted, terminator included.
/// RFC 2449 caps responses at 512 octets; the slack is for real servers
/// with chatty banners, while still stopping a hostile or broken server
/// from making us buffer without bound. Message lines inside RETR are
/// exempt: mail in the wild has megabyte-long lines.
const MAX_LINE: usize = 8 * 1024;

/// Read buffer size: one TLS record, so a record is usually handed over
/// in one piece.
const READ_BUFFER: usize = 16 * 1024;

/// How much of a server's unexpected output is quoted in an error: enough
/// to recognise it, not enough to flood a log.
const MAX_QUOTED: usize = 120;

/// Why a POP3 exchange failed. The texts go to admins' logs and status
/// pages, so they say which step failed and quote the server, but never
/// contain a password, a token or a SASL response (every status line from
/// the login on is scrubbed of them, in case a server echoes them).
#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error("POP3 {step} failed: {detail}")]
    Io { step: &'static str, detail: String },
    #[error("POP3 server closed the connection during {step}")]
    Closed { step: &'static str },
    #[error("POP3 server did not answer {step} within {after:?}")]
    Timeout { step: &'static str, after: Duration },
    #[error("POP3 {step} refused: {}", err_line(.text))]
    Err { step: &'static str, text: String },
    #[error("POP3 authentication rejected: {}", err_line(.text))]
    AuthRejected { text: String },
    #[error("POP3 {step} failed: protocol error: {detail}")]
    Protocol { step: &'static str, detail: String },
}

fn err_line(text: &str) -> String {
    if text.is_empty() {
        "-ERR".to_owned()
    } else {
        format!("-ERR {text}")
    }
}

/// What the server announced in its CAPA answer, so the caller can pick
/// STLS, a SASL mechanism or USER/PASS without trial and error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub uidl: bool,
    pub user: bool,
    pub stls: bool,
    /// Upper-cased, because RFC 2449 compares mechanism names without case
    /// and servers spell them both ways.
    pub sasl: Vec<String>,
    pub pipelining: bool,
    /// Every line as sent (trimmed), for diagnostics.
    pub raw: Vec<String>,
}

impl Capabilities {
    fn add_line(&mut self, line: &[u8]) {
        let line = printable(line);
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let mut words = line.split_ascii_whitespace();
        let name = words.next().map(str::to_ascii_uppercase);
        match name.as_deref() {
            Some("UIDL") => self.uidl = true,
            Some("USER") => self.user = true,
            Some("STLS") => self.stls = true,
            Some("PIPELINING") => self.pipelining = true,
            Some("SASL") => self.sasl.extend(words.map(str::to_ascii_uppercase)),
            _ => {}
        }
        self.raw.push(line.to_owned());
    }
}

/// One status line, classified. `Continue` only makes sense inside a SASL
/// exchange; everywhere else it is a protocol error.
#[derive(Debug)]
enum Reply {
    Ok(String),
    Err(String),
    Continue(String),
}

/// A POP3 session over `S`, which may be plain TCP before STLS or a TLS
/// stream; this type does not care.
pub struct Connection<S> {
    io: BufReader<S>,
    timeout: Duration,
    /// False from sending a command until its whole answer has been read.
    in_step: bool,
    /// The credentials of this session's login, cut out of every status
    /// line read after it too: a server may echo them in any later -ERR.
    scrub: Scrubber,
}

/// Buffers can hold mail or, briefly, a server's echo of credentials, so
/// only their size is shown.
impl<S: AsyncRead> fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("timeout", &self.timeout)
            .field("buffered_bytes", &self.io.buffer().len())
            .field("in_step", &self.in_step)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// `timeout` bounds each single read and each command write, not whole
    /// operations, so a large message that keeps flowing is never cut off
    /// while a server that goes silent is noticed.
    pub fn new(stream: S, timeout: Duration) -> Self {
        Self {
            io: BufReader::with_capacity(READ_BUFFER, stream),
            timeout,
            in_step: true,
            scrub: Scrubber::default(),
        }
    }

    /// Returns the banner text after `+OK`; a server that greets with
    /// `-ERR` (e.g. overloaded) is refusing the session.
    pub async fn greeting(&mut self) -> Result<String, Pop3Error> {
        self.in_step = false;
        self.expect_ok("greeting").await
    }

    /// CAPA is an extension: a server answering `-ERR` simply predates it,
    /// so that yields the empty set rather than an error.
    pub async fn capa(&mut self) -> Result<Capabilities, Pop3Error> {
        const STEP: &str = "CAPA";
        self.command(STEP, "CAPA").await?;
        match self.read_reply(STEP, &[]).await? {
            Reply::Ok(_) => {}
            Reply::Err(_) => return Ok(Capabilities::default()),
            Reply::Continue(_) => return Err(unexpected_continue(STEP)),
        }
        let mut caps = Capabilities::default();
        self.read_multiline(STEP, |line| {
            caps.add_line(line);
            Ok(())
        })
        .await?;
        Ok(caps)
    }

    /// Asks to start TLS; on success the caller must take the stream with
    /// [`Connection::into_inner`] and do the handshake.
    pub async fn stls(&mut self) -> Result<(), Pop3Error> {
        const STEP: &str = "STLS";
        self.command(STEP, "STLS").await?;
        self.expect_ok(STEP).await.map(drop)
    }

    /// Hands the raw stream back for the TLS upgrade. Refuses if the server
    /// sent anything after its `+OK` to STLS: such bytes arrived in clear
    /// text and would otherwise be read as if they came over TLS, which is
    /// how STARTTLS command injection (CVE-2011-0411 and kin) works.
    pub fn into_inner(self) -> Result<S, Pop3Error> {
        if !self.in_step {
            return Err(out_of_step("STLS"));
        }
        let pending = self.io.buffer().len();
        if pending > 0 {
            return Err(Pop3Error::Protocol {
                step: "STLS",
                detail: format!(
                    "the server sent {pending} unexpected byte(s) before the TLS handshake; \
                     refusing to continue because they could have been injected by an attacker"
                ),
            });
        }
        Ok(self.io.into_inner())
    }

    /// Microsoft's two-step XOAUTH2: the initial response is sent only
    /// after the server's `+`, because Exchange Online rejects it inline.
    /// On failure the server sends a base64 JSON challenge that must be
    /// answered with an empty line before the `-ERR`; the decoded JSON is
    /// kept in the error because its status (401, 400…) is what tells an
    /// admin whether the token, the scope or the mailbox is wrong.
    pub async fn auth_xoauth2(
        &mut self,
        user: &str,
        token: &SecretString,
    ) -> Result<(), Pop3Error> {
        const STEP: &str = "AUTH XOAUTH2";
        let token = token.expose_secret();
        refuse_chars(STEP, "user name", user, &['\x01', '\r', '\n'])?;
        refuse_chars(STEP, "access token", token, &['\x01', '\r', '\n'])?;
        let payload = sasl::xoauth2(user, token);
        let encoded = Zeroizing::new(STANDARD.encode(payload.as_bytes()));
        let secrets = [token, encoded.as_str()];

        self.sasl_start(STEP, "AUTH XOAUTH2").await?;
        self.send(STEP, &encoded).await?;
        let challenge = match self.read_reply(STEP, &secrets).await? {
            Reply::Ok(_) => return Ok(()),
            Reply::Err(text) => return Err(Pop3Error::AuthRejected { text }),
            Reply::Continue(challenge) => challenge,
        };
        let decoded = sasl::decode_challenge(&challenge, &secrets);
        self.send(STEP, "").await?;
        match self.read_reply(STEP, &secrets).await? {
            // The server's final word decides the session state; a +OK
            // here means it did log us in despite the challenge.
            Reply::Ok(_) => Ok(()),
            Reply::Err(text) => Err(Pop3Error::AuthRejected {
                text: match decoded {
                    Some(json) if text.is_empty() => format!("(XOAUTH2 error: {json})"),
                    Some(json) => format!("{text} (XOAUTH2 error: {json})"),
                    None => text,
                },
            }),
            Reply::Continue(_) => Err(Pop3Error::Protocol {
                step: STEP,
                detail: "server sent a second challenge after the XOAUTH2 error".to_owned(),
            }),
        }
    }

    /// RFC 4616 PLAIN with an empty authorisation identity, sent after the
    /// server's `+` rather than inline because RFC 5034 makes the initial
    /// response optional for servers to accept.
    pub async fn auth_plain(
        &mut self,
        user: &str,
        password: &SecretString,
    ) -> Result<(), Pop3Error> {
        const STEP: &str = "AUTH PLAIN";
        let password = password.expose_secret();
        refuse_chars(STEP, "user name", user, &['\0'])?;
        refuse_chars(STEP, "password", password, &['\0'])?;
        let payload = sasl::plain(user, password);
        let encoded = Zeroizing::new(STANDARD.encode(payload.as_bytes()));
        let secrets = [password, encoded.as_str()];

        self.sasl_start(STEP, "AUTH PLAIN").await?;
        self.send(STEP, &encoded).await?;
        match self.read_reply(STEP, &secrets).await? {
            Reply::Ok(_) => Ok(()),
            Reply::Err(text) => Err(Pop3Error::AuthRejected { text }),
            Reply::Continue(_) => Err(Pop3Error::Protocol {
                step: STEP,
                detail: "server asked for more after the PLAIN credentials".to_owned(),
            }),
        }
    }

    /// Sends the AUTH command and waits for the server's go-ahead, so that
    /// credentials never go to a server that has not asked for them.
    async fn sasl_start(&mut self, step: &'static str, command: &str) -> Result<(), Pop3Error> {
        self.command(step, command).await?;
        match self.read_reply(step, &[]).await? {
            Reply::Continue(_) => Ok(()),
            Reply::Err(text) => Err(Pop3Error::AuthRejected { text }),
            Reply::Ok(_) => Err(Pop3Error::Protocol {
                step,
                detail: "server answered +OK before any credentials were sent".to_owned(),
            }),
        }
    }

    /// Plain-text login. Some servers refuse unknown users at USER, others
    /// only at PASS (to hide which users exist); both count as rejection.
    pub async fn user_pass(
        &mut self,
        user: &str,
        password: &SecretString,
    ) -> Result<(), Pop3Error> {
        let password = password.expose_secret();
        // A line break would end the command early and let the rest be
        // read as another command.
        refuse_chars("USER", "user name", user, &['\r', '\n'])?;
        refuse_chars("PASS", "password", password, &['\r', '\n'])?;

        self.command("USER", &format!("USER {user}")).await?;
        self.login_step("USER", &[]).await?;
        let mut line = Zeroizing::new(String::with_capacity(password.len() + 5));
        line.push_str("PASS ");
        line.push_str(password);
        self.command("PASS", &line).await?;
        self.login_step("PASS", &[password]).await
    }

    async fn login_step(&mut self, step: &'static str, secrets: &[&str]) -> Result<(), Pop3Error> {
        match self.read_reply(step, secrets).await? {
            Reply::Ok(_) => Ok(()),
            Reply::Err(text) => Err(Pop3Error::AuthRejected { text }),
            Reply::Continue(_) => Err(unexpected_continue(step)),
        }
    }

    /// Message count and total size of the maildrop.
    pub async fn stat(&mut self) -> Result<(u32, u64), Pop3Error> {
        const STEP: &str = "STAT";
        self.command(STEP, "STAT").await?;
        let text = self.expect_ok(STEP).await?;
        let mut words = text.split_ascii_whitespace();
        match (
            words.next().and_then(|w| w.parse().ok()),
            words.next().and_then(|w| w.parse().ok()),
        ) {
            (Some(count), Some(size)) => Ok((count, size)),
            _ => Err(Pop3Error::Protocol {
                step: STEP,
                detail: format!("malformed reply {}", quote(text.as_bytes())),
            }),
        }
    }

    /// Message numbers with their unique ids, which is what lets the
    /// caller recognise mail it has already turned into tickets.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>, Pop3Error> {
        const STEP: &str = "UIDL";
        self.command(STEP, "UIDL").await?;
        self.expect_ok(STEP).await?;
        let mut ids = Vec::new();
        self.read_multiline(STEP, |line| {
            let mut words = line
                .split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty());
            let msg = words.next().and_then(parse_number::<u32>);
            let uid = words.next().map(unique_id);
            match (msg, uid) {
                (Some(msg), Some(uid)) => {
                    ids.push((msg, uid));
                    Ok(())
                }
                _ => Err(Pop3Error::Protocol {
                    step: STEP,
                    detail: format!("malformed line {}", quote(line)),
                }),
            }
        })
        .await?;
        Ok(ids)
    }

    /// Message numbers with their sizes in octets, so the caller can skip
    /// oversized mail or reserve the buffer for RETR.
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>, Pop3Error> {
        const STEP: &str = "LIST";
        self.command(STEP, "LIST").await?;
        self.expect_ok(STEP).await?;
        let mut sizes = Vec::new();
        self.read_multiline(STEP, |line| {
            let mut words = line
                .split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty());
            match (
                words.next().and_then(parse_number::<u32>),
                words.next().and_then(parse_number::<u64>),
            ) {
                (Some(msg), Some(size)) => {
                    sizes.push((msg, size));
                    Ok(())
                }
                _ => Err(Pop3Error::Protocol {
                    step: STEP,
                    detail: format!("malformed line {}", quote(line)),
                }),
            }
        })
        .await?;
        Ok(sizes)
    }

    /// Appends message `msg` to `out` whole; see [`Connection::retr_capped`].
    // The poller always caps; whole messages are what the framing tests
    // and the POP3 fuzz target compare against.
    #[cfg(any(test, feature = "fuzzing"))]
    pub async fn retr(&mut self, msg: u32, out: &mut Vec<u8>) -> Result<(), Pop3Error> {
        self.retr_capped(msg, out, usize::MAX).await.map(drop)
    }

    /// Appends message `msg` to `out`, un-dot-stuffed, line endings as the
    /// server sent them, but at most its first `cap` bytes: the rest is
    /// read to the terminator and discarded as it arrives, never buffered,
    /// so the connection stays in step. Returns the message's full size
    /// (what a complete `out` would have grown by). The bytes go straight
    /// from the read buffer into `out`, so a large message is held in
    /// memory once, not twice. On any error `out` is cut back to its
    /// previous length, so a message that was cut off can never pass for a
    /// complete one. If the future is dropped instead, `out` may hold part
    /// of the message; the connection is then out of step and must be
    /// dropped too.
    pub async fn retr_capped(
        &mut self,
        msg: u32,
        out: &mut Vec<u8>,
        cap: usize,
    ) -> Result<u64, Pop3Error> {
        self.read_capped("RETR", &format!("RETR {msg}"), out, cap)
            .await
    }

    /// Appends the header section of message `msg` (`TOP msg 0`, RFC 1939
    /// section 7) to `out`, at most `cap` bytes of it, like
    /// [`Connection::retr_capped`].
    pub async fn top_capped(
        &mut self,
        msg: u32,
        out: &mut Vec<u8>,
        cap: usize,
    ) -> Result<u64, Pop3Error> {
        self.read_capped("TOP", &format!("TOP {msg} 0"), out, cap)
            .await
    }

    /// Sends `command` and appends its multi-line answer to `out`, as
    /// [`Connection::retr_capped`] describes.
    async fn read_capped(
        &mut self,
        step: &'static str,
        command: &str,
        out: &mut Vec<u8>,
        cap: usize,
    ) -> Result<u64, Pop3Error> {
        self.command(step, command).await?;
        self.expect_ok(step).await?;
        let before = out.len();
        let result = self.read_body(out, cap).await;
        if result.is_err() {
            out.truncate(before);
        }
        result
    }

    /// Copies the body up to the terminating "." line, keeping at most
    /// `cap` bytes in `out`, and returns the body's full size. A leading "."
    /// is dropped as it arrives (dot-stuffing, RFC 1939 §3), and whether the
    /// line was the terminator is only decided once its end is seen, so
    /// lines and even the terminator may be split across reads at any byte.
    async fn read_body(&mut self, out: &mut Vec<u8>, cap: usize) -> Result<u64, Pop3Error> {
        const STEP: &str = "RETR";
        self.in_step = false;
        let mut at_line_start = true;
        let mut stuffed = false;
        // The current line after its stuffing dot: its length so far, its
        // first byte, and how much of it went into `out`. The terminator
        // is only known at the line's end, so what it put in `out` is
        // taken back then.
        let mut line_len = 0usize;
        let mut line_first = None;
        let mut line_kept = 0usize;
        let mut kept = 0usize;
        let mut total = 0u64;
        loop {
            let buf = self.fill(STEP).await?;
            let mut used = 0;
            if at_line_start {
                at_line_start = false;
                line_len = 0;
                line_first = None;
                line_kept = 0;
                stuffed = buf.first() == Some(&b'.');
                if stuffed {
                    used = 1;
                }
            }
            let rest = &buf[used..];
            let end = rest.iter().position(|&b| b == b'\n');
            let take = end.map_or(rest.len(), |i| i + 1);
            let piece = &rest[..take];
            if line_first.is_none() {
                line_first = piece.first().copied();
            }
            let keep = take.min(cap.saturating_sub(kept));
            out.extend_from_slice(&piece[..keep]);
            kept += keep;
            line_kept += keep;
            line_len += take;
            total += take as u64;
            used += take;
            self.io.consume(used);
            if end.is_some() {
                let blank = line_len == 1 || (line_len == 2 && line_first == Some(b'\r'));
                if stuffed && blank {
                    out.truncate(out.len() - line_kept);
                    self.in_step = true;
                    return Ok(total - line_len as u64);
                }
                at_line_start = true;
            }
        }
    }

    /// Marks a message for deletion; it is only removed when QUIT succeeds.
    pub async fn dele(&mut self, msg: u32) -> Result<(), Pop3Error> {
        const STEP: &str = "DELE";
        self.command(STEP, &format!("DELE {msg}")).await?;
        self.expect_ok(STEP).await.map(drop)
    }

    /// Keeps an idle session alive and checks that the server still answers.
    // Part of the protocol surface for long pauses between batches; the
    // poller does not pause yet, and this module is private to it.
    #[allow(dead_code)]
    pub async fn noop(&mut self) -> Result<(), Pop3Error> {
        const STEP: &str = "NOOP";
        self.command(STEP, "NOOP").await?;
        self.expect_ok(STEP).await.map(drop)
    }

    /// Ends the session. DELE only takes effect here (the UPDATE state), so
    /// a missing `+OK` means the deletions may not have happened and is
    /// reported, never swallowed.
    pub async fn quit(mut self) -> Result<(), Pop3Error> {
        const STEP: &str = "QUIT";
        self.command(STEP, "QUIT").await?;
        self.expect_ok(STEP).await?;
        // The server has committed; closing our side (TLS close_notify on
        // a TLS stream) is courtesy, and the server may well have hung up
        // first, so its outcome changes nothing.
        let _ = tokio::time::timeout(self.timeout, self.io.shutdown()).await;
        Ok(())
    }

    /// Starts a command, unless an earlier answer was left half-read (see
    /// the module docs): its remains would be taken for this answer.
    async fn command(&mut self, step: &'static str, line: &str) -> Result<(), Pop3Error> {
        if !self.in_step {
            return Err(out_of_step(step));
        }
        self.in_step = false;
        self.send(step, line).await
    }

    /// Writes one line (a command or a SASL response) and flushes it, since the server will not
    /// answer what is still sitting in a write buffer. The line buffer is
    /// wiped afterwards because it may hold a password or SASL response.
    async fn send(&mut self, step: &'static str, line: &str) -> Result<(), Pop3Error> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(line.len() + 2));
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let after = self.timeout;
        let io = &mut self.io;
        let write = async {
            io.write_all(&bytes).await?;
            io.flush().await
        };
        match tokio::time::timeout(after, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error(step, &e)),
            Err(_) => Err(Pop3Error::Timeout { step, after }),
        }
    }

    async fn expect_ok(&mut self, step: &'static str) -> Result<String, Pop3Error> {
        match self.read_reply(step, &[]).await? {
            Reply::Ok(text) => Ok(text),
            Reply::Err(text) => Err(Pop3Error::Err { step, text }),
            Reply::Continue(_) => Err(unexpected_continue(step)),
        }
    }

    /// Reads and classifies one status line. `secrets` (the login's
    /// credentials, kept for the rest of the session) are cut out of the
    /// raw line before anything else looks at it, so that a server echoing
    /// credentials cannot get them into an error, not even partly through
    /// a shortened quote.
    async fn read_reply(
        &mut self,
        step: &'static str,
        secrets: &[&str],
    ) -> Result<Reply, Pop3Error> {
        let mut line = Vec::new();
        self.read_line(step, &mut line).await?;
        if !secrets.is_empty() {
            self.scrub = Scrubber::new(secrets.iter().copied());
        }
        self.scrub.cut(&mut line);
        let reply = parse_reply(&line).ok_or_else(|| Pop3Error::Protocol {
            step,
            detail: format!("expected +OK or -ERR, got {}", quote(&line)),
        })?;
        // +OK or -ERR ends an exchange; the multi-line readers take the
        // step back for the body that follows a +OK.
        if matches!(reply, Reply::Ok(_) | Reply::Err(_)) {
            self.in_step = true;
        }
        Ok(reply)
    }

    /// Feeds each line of a multi-line response to `each`, un-dot-stuffed
    /// and without its line ending. A line `each` rejects does not stop the
    /// reading: the rest is drained to the terminator first, so that the
    /// connection stays in step and the first error is what is reported.
    async fn read_multiline(
        &mut self,
        step: &'static str,
        mut each: impl FnMut(&[u8]) -> Result<(), Pop3Error>,
    ) -> Result<(), Pop3Error> {
        self.in_step = false;
        let mut line = Vec::new();
        let mut first_error = None;
        loop {
            self.read_line(step, &mut line).await?;
            let content = strip_eol(&line);
            let content = match content.strip_prefix(b".") {
                Some([]) => {
                    self.in_step = true;
                    break;
                }
                Some(unstuffed) => unstuffed,
                None => content,
            };
            if first_error.is_none() {
                first_error = each(content).err();
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Reads one line, terminator included, refusing lines over
    /// [`MAX_LINE`].
    async fn read_line(&mut self, step: &'static str, line: &mut Vec<u8>) -> Result<(), Pop3Error> {
        line.clear();
        loop {
            let buf = self.fill(step).await?;
            let end = buf.iter().position(|&b| b == b'\n');
            let take = end.map_or(buf.len(), |i| i + 1);
            if line.len() + take > MAX_LINE {
                return Err(Pop3Error::Protocol {
                    step,
                    detail: format!("the server sent a line longer than {MAX_LINE} bytes"),
                });
            }
            line.extend_from_slice(&buf[..take]);
            self.io.consume(take);
            if end.is_some() {
                return Ok(());
            }
        }
    }

    /// Returns buffered bytes, reading more if there are none: never empty.
    /// Only an actual read is put under the timeout, so that consuming a
    /// full buffer line by line does not set up a timer per line.
    async fn fill(&mut self, step: &'static str) -> Result<&[u8], Pop3Error> {
        if !self.io.buffer().is_empty() {
            return Ok(self.io.buffer());
        }
        let after = self.timeout;
        match tokio::time::timeout(after, self.io.fill_buf()).await {
            Err(_) => Err(Pop3Error::Timeout { step, after }),
            Ok(Err(e)) => Err(io_error(step, &e)),
            Ok(Ok([])) => Err(Pop3Error::Closed { step }),
            Ok(Ok(buf)) => Ok(buf),
        }
    }
}

fn io_error(step: &'static str, e: &std::io::Error) -> Pop3Error {
    Pop3Error::Io {
        step,
        detail: e.to_string(),
    }
}

fn out_of_step(step: &'static str) -> Pop3Error {
    Pop3Error::Protocol {
        step,
        detail: "not sent: an earlier command failed or was cancelled before its answer \
                 was read, so the connection is out of step; reconnect"
            .to_owned(),
    }
}

fn unexpected_continue(step: &'static str) -> Pop3Error {
    Pop3Error::Protocol {
        step,
        detail: "unexpected \"+\" continuation outside an AUTH exchange".to_owned(),
    }
}

/// Credentials are embedded in a line (or a NUL/^A-separated SASL
/// message); a separator inside one would change what the server reads.
/// The error names the field, never its value.
fn refuse_chars(
    step: &'static str,
    what: &str,
    value: &str,
    forbidden: &[char],
) -> Result<(), Pop3Error> {
    if value.contains(forbidden) {
        return Err(Pop3Error::Protocol {
            step,
            detail: format!(
                "the {what} contains a control character that cannot be sent; nothing was sent"
            ),
        });
    }
    Ok(())
}

mod text;

#[cfg(test)]
mod tests;
