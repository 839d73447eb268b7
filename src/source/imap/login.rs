//! Signing in to IMAP: the SASL exchange (XOAUTH2 for a token, PLAIN or
//! LOGIN for a password), the forms of the credential to scrub from what
//! the server says, and opening a verified session.

use std::time::Duration;

use async_imap::Authenticator;
use base64::Engine as _;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use super::errors::{
    ImapError, connection_closed, crate_error, crate_refusal, protocol_error, server_text,
    timed_out,
};
use super::session::{Caps, Session};
use crate::auth::sasl;
use crate::config::{ReaderConfig, Tls};
use crate::scrub::Scrubber;
use crate::source::refusal::{Meaning, Refusal};
use crate::source::{SignInSecret, SourceError};
use crate::transport::{self, Endpoint, Stream};

/// One SASL message, built by [`sasl`] (XOAUTH2 or PLAIN), sent as the
/// first response. A second challenge (XOAUTH2's JSON error) is answered
/// with an empty line to get the tagged NO.
pub(super) struct Sasl {
    message: Zeroizing<String>,
    sent: bool,
}

impl Sasl {
    pub(super) fn new(message: Zeroizing<String>) -> Sasl {
        Sasl {
            message,
            sent: false,
        }
    }
}

impl Authenticator for Sasl {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        if std::mem::replace(&mut self.sent, true) {
            return Vec::new();
        }
        self.message.as_bytes().to_vec()
    }
}

/// `text` as an IMAP quoted string.
pub(super) fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Every form this login's credential is sent in, for [`Scrubber`]: the
/// secret itself and its SASL blob as it goes on the wire (base64).
pub(super) fn scrubber(user: &str, credential: &SignInSecret) -> Scrubber {
    let b64 = |payload: &str| base64::engine::general_purpose::STANDARD.encode(payload);
    match credential {
        SignInSecret::Token(token) => Scrubber::new([
            token.expose_secret().to_string(),
            b64(sasl::xoauth2(user, token.expose_secret()).as_str()),
        ]),
        SignInSecret::Password(password) => Scrubber::new([
            password.expose_secret().to_string(),
            b64(sasl::plain(user, password.expose_secret()).as_str()),
            quoted(password.expose_secret()),
        ]),
    }
}

impl Session {
    pub(super) async fn open(
        reader: &ReaderConfig,
        credential: &SignInSecret,
    ) -> Result<Session, SourceError> {
        let t = reader.timeout;
        let endpoint = Endpoint::of(reader);
        let stream = transport::connect(&endpoint).await?;
        let progress = stream.progress();
        let mut client = async_imap::Client::new(stream);
        match tokio::time::timeout(t, client.read_response()).await {
            Err(_) => return Err(timed_out("greeting", t).into()),
            Ok(Err(e)) => return Err(protocol_error("greeting", e).into()),
            Ok(Ok(None)) => return Err(connection_closed("greeting").into()),
            Ok(Ok(Some(_))) => {}
        }
        if reader.tls == Tls::StartTls {
            match tokio::time::timeout(t, client.run_command_and_check_ok("STARTTLS", None)).await {
                Err(_) => return Err(timed_out("STARTTLS", t).into()),
                Ok(Err(e)) => {
                    return Err(SourceError::NoStartTls {
                        server: reader.host.clone(),
                        command: "STARTTLS",
                        port: 993,
                        detail: server_text(e),
                    });
                }
                Ok(Ok(())) => {}
            }
            // Anything the server sent before the handshake is discarded
            // with the old client: it was not protected by TLS.
            let stream = transport::upgrade(client.into_inner(), &endpoint).await?;
            client = async_imap::Client::new(stream);
        }
        let user = reader.username.as_str();
        let scrub = scrubber(user, credential);
        let (login, what) = match credential {
            SignInSecret::Token(token) => (
                authenticate(
                    client,
                    "XOAUTH2",
                    Sasl::new(sasl::xoauth2(user, token.expose_secret())),
                    t,
                )
                .await,
                "access token",
            ),
            SignInSecret::Password(password) => {
                (login_plain(client, user, password, t).await, "password")
            }
        };
        let inner = match login {
            Err(e @ async_imap::error::Error::No(_)) => {
                let answer = crate_refusal(&scrub, &e).unwrap_or_else(|| Refusal::parse(""));
                let words = answer.to_string();
                return Err(SourceError::login_refused(
                    "IMAP",
                    what,
                    user,
                    answer,
                    words,
                    |answer| {
                        let step = "AUTHENTICATE";
                        match answer.meaning() {
                            Meaning::Transient => ImapError::Busy { step, answer },
                            _ => ImapError::Refused { step, answer },
                        }
                        .into()
                    },
                ));
            }
            Err(async_imap::error::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(timed_out("AUTHENTICATE", t).into());
            }
            Err(e) => return Err(crate_error(&scrub, "AUTHENTICATE", e).into()),
            Ok(session) => session,
        };
        let mut session = Session {
            inner,
            timeout: t,
            caps: Caps::default(),
            progress,
            scrub,
            grew: false,
        };
        // Exchange Online can accept AUTHENTICATE and then answer every
        // command with "BAD User is authenticated but not connected"; only
        // a command after login tells.
        match tokio::time::timeout(t, session.inner.run_command_and_check_ok("NOOP")).await {
            Err(_) => return Err(timed_out("NOOP", t).into()),
            Ok(Err(e @ (async_imap::error::Error::Bad(_) | async_imap::error::Error::No(_)))) => {
                let answer = crate_refusal(&session.scrub, &e);
                return Err(ImapError::NotConnected {
                    user: user.to_string(),
                    server: answer.map(|a| a.to_string()).unwrap_or_default(),
                }
                .into());
            }
            Ok(Err(e)) => return Err(crate_error(&session.scrub, "NOOP", e).into()),
            Ok(Ok(())) => {}
        }
        // After login: servers may announce more (or less) than before it.
        let caps = match tokio::time::timeout(t, session.inner.capabilities()).await {
            Err(_) => return Err(timed_out("CAPABILITY", t).into()),
            Ok(Err(e)) => return Err(crate_error(&session.scrub, "CAPABILITY", e).into()),
            Ok(Ok(caps)) => caps,
        };
        session.caps = Caps {
            idle: caps.has_str("IDLE"),
            moves: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
        };
        Ok(session)
    }
}

pub(super) async fn authenticate(
    client: async_imap::Client<Stream>,
    mechanism: &str,
    auth: impl Authenticator,
    t: Duration,
) -> Result<async_imap::Session<Stream>, async_imap::error::Error> {
    match tokio::time::timeout(t, client.authenticate(mechanism, auth)).await {
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        Ok(r) => r.map_err(|(e, _)| e),
    }
}

/// SASL PLAIN, or the LOGIN command for servers without it. LOGIN is only
/// tried when PLAIN was refused as a mechanism (BAD), never after a wrong
/// password (NO), so one bad password is one failed login.
pub(super) async fn login_plain(
    client: async_imap::Client<Stream>,
    user: &str,
    password: &SecretString,
    t: Duration,
) -> Result<async_imap::Session<Stream>, async_imap::error::Error> {
    let plain = Sasl::new(sasl::plain(user, password.expose_secret()));
    let client = match tokio::time::timeout(t, client.authenticate("PLAIN", plain)).await {
        Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        Ok(Ok(session)) => return Ok(session),
        Ok(Err((async_imap::error::Error::Bad(_), client))) => client,
        Ok(Err((e, _))) => return Err(e),
    };
    match tokio::time::timeout(t, client.login(user, password.expose_secret())).await {
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        Ok(r) => r.map_err(|(e, _)| e),
    }
}
