//! Raw IMAP/POP3 client helpers built on async-imap + tokio-rustls only (no
//! library code), for checking the server side independently.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::certs::tls_connect;

pub type TlsImapClient = async_imap::Client<TlsStream<TcpStream>>;
pub type TlsImapSession = async_imap::Session<TlsStream<TcpStream>>;

/// SASL XOAUTH2 for async-imap's `Client::authenticate("XOAUTH2", &mut auth)`.
///
/// The first challenge (empty) is answered with
/// `user=U\x01auth=Bearer T\x01\x01` (async-imap base64-encodes it). On
/// failure the server sends a JSON error challenge, which must be answered
/// with an empty response; it is kept in `error_challenge`.
pub struct XOAuth2 {
    pub user: String,
    pub token: String,
    pub error_challenge: Option<String>,
    sent: bool,
}

impl XOAuth2 {
    pub fn new(user: &str, token: &str) -> XOAuth2 {
        XOAuth2 {
            user: user.to_owned(),
            token: token.to_owned(),
            error_challenge: None,
            sent: false,
        }
    }
}

impl async_imap::Authenticator for &mut XOAuth2 {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        if self.sent {
            self.error_challenge = Some(String::from_utf8_lossy(challenge).into_owned());
            Vec::new()
        } else {
            self.sent = true;
            format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token).into_bytes()
        }
    }
}

/// Connects with implicit TLS and reads the greeting (which must be `* OK`).
pub async fn imaps_connect(port: u16, ca_file: &Path) -> TlsImapClient {
    let tls = tls_connect(port, ca_file).await;
    let mut client = async_imap::Client::new(tls);
    let greeting = client
        .read_response()
        .await
        .expect("IMAP: error reading the greeting")
        .expect("IMAP: connection closed before the greeting");
    match greeting.parsed() {
        async_imap::imap_proto::Response::Data {
            status: async_imap::imap_proto::Status::Ok,
            ..
        } => {}
        other => panic!("IMAP: unexpected greeting {other:?}"),
    }
    client
}

/// Connects over IMAPS and authenticates with XOAUTH2. On failure, returns
/// the error text plus the server's JSON error challenge, if any.
pub async fn imaps_xoauth2(
    port: u16,
    ca_file: &Path,
    user: &str,
    token: &str,
) -> Result<TlsImapSession, String> {
    let client = imaps_connect(port, ca_file).await;
    let mut auth = XOAuth2::new(user, token);
    match client.authenticate("XOAUTH2", &mut auth).await {
        Ok(session) => Ok(session),
        Err((e, _client)) => Err(format!(
            "XOAUTH2 failed: {e}; error challenge: {}",
            auth.error_challenge.as_deref().unwrap_or("(none)")
        )),
    }
}

/// Connects to POP3S and returns the greeting line (e.g. `+OK Dovecot ready.`).
pub async fn pop3s_greeting(port: u16, ca_file: &Path) -> String {
    let tls = tls_connect(port, ca_file).await;
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .expect("POP3: error reading the greeting");
    let _ = reader.get_mut().write_all(b"QUIT\r\n").await;
    line.trim_end().to_owned()
}

/// A blocking clear-text line client for the plain IMAP / POP3 ports (or a
/// [`super::Proxy`] in front of them), for harness checks. Reads time out
/// after 10 s; `None` means the server closed the connection.
pub struct LineClient {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    tag: u32,
    /// The server's first line.
    pub greeting: String,
}

impl LineClient {
    pub fn connect(port: u16) -> LineClient {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("set timeout");
        let writer = stream.try_clone().expect("clone");
        let mut client = LineClient {
            reader: std::io::BufReader::new(stream),
            writer,
            tag: 0,
            greeting: String::new(),
        };
        client.greeting = client.line().expect("a greeting");
        client
    }

    /// Sends one line (CRLF added).
    pub fn send(&mut self, line: &str) {
        use std::io::Write as _;
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
    }

    /// The next line without its ending; `None` at end of stream or on a
    /// reset connection.
    pub fn line(&mut self) -> Option<String> {
        use std::io::BufRead as _;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    /// IMAP: sends `TAG command` and returns every response line up to and
    /// including the tagged one; `None` if the connection ended first.
    pub fn imap(&mut self, command: &str) -> Option<Vec<String>> {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.send(&format!("{tag} {command}"));
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return Some(lines);
            }
        }
    }

    /// Like [`LineClient::imap`]; panics unless the answer is a tagged OK.
    pub fn imap_ok(&mut self, command: &str) -> Vec<String> {
        let verb = command.split(' ').next().unwrap_or_default().to_owned();
        let lines = self
            .imap(command)
            .unwrap_or_else(|| panic!("{verb}: the connection ended"));
        let tagged = lines.last().expect("a tagged line");
        assert_eq!(tagged.split(' ').nth(1), Some("OK"), "{verb}: {tagged}");
        lines
    }

    /// IMAP AUTHENTICATE XOAUTH2 with the initial response; the tagged line.
    pub fn imap_xoauth2(&mut self, user: &str, token: &str) -> Option<String> {
        let lines = self.imap(&format!(
            "AUTHENTICATE XOAUTH2 {}",
            xoauth2_b64(user, token)
        ))?;
        lines.last().cloned()
    }

    /// POP3: sends `command`; returns the status line, then (for a `+OK`
    /// answer when `multi_line`) the lines up to the terminating ".".
    pub fn pop3(&mut self, command: &str, multi_line: bool) -> Option<Vec<String>> {
        self.send(command);
        let status = self.line()?;
        let mut lines = vec![status.clone()];
        if multi_line && status.starts_with("+OK") {
            loop {
                let line = self.line()?;
                if line == "." {
                    break;
                }
                lines.push(line);
            }
        }
        Some(lines)
    }
}

/// The base64 SASL XOAUTH2 initial response.
pub fn xoauth2_b64(user: &str, token: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}
