//! Transport: a TCP connection wrapped in verified TLS, for any mail protocol.
//!
//! Owns the trust decision. Verification is always on; the web PKI roots
//! are trusted, plus one extra CA file when the admin names it. Failures
//! are described in words an admin can act on ("certificate for HOST not
//! trusted", "connection refused: HOST:PORT"). A connection starts either
//! in TLS (implicit) or in plain text that the protocol module upgrades
//! with [`upgrade`] after its STARTTLS/STLS exchange; plain text that stays
//! plain is only reachable through `tls = "none"`, which config accepts for
//! loopback hosts only. Every stream also counts the bytes that pass
//! ([`Progress`]), so protocol timeouts can mean "no progress", not "the
//! whole answer in time".

use crate::outcome::FailureClass;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{ReaderConfig, Tls};

/// The stream every mail protocol module speaks over. It counts the bytes
/// that pass (see [`Progress`]), so a protocol can tell a server that is
/// slowly delivering a large mail from one that stalled.
#[derive(Debug)]
pub struct Stream {
    inner: Inner,
    progress: Progress,
}

#[derive(Debug)]
enum Inner {
    Tls(Box<TlsStream<TcpStream>>),
    /// Before STARTTLS, or `tls = "none"` on loopback.
    Plain(TcpStream),
}

/// A count of the bytes read and written on a [`Stream`], shared with
/// whoever waits on it: a timeout means "no progress for this long", not
/// "the whole answer within this long", since one IMAP response (a FETCH
/// literal) can be a whole large mail.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

/// [`Progress::wait`] gave up: nothing moved for a whole `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled;

impl Progress {
    /// Bytes moved so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Drives `fut` to the end while bytes keep moving: it fails only when
    /// a whole `timeout` passes without a byte read or written (so a stall
    /// is noticed after between one and two `timeout`s).
    pub async fn wait<F: std::future::Future>(
        &self,
        timeout: Duration,
        fut: F,
    ) -> Result<F::Output, Stalled> {
        let mut fut = std::pin::pin!(fut);
        let mut seen = self.bytes();
        loop {
            match tokio::time::timeout(timeout, fut.as_mut()).await {
                Ok(out) => return Ok(out),
                Err(_) => {
                    let now = self.bytes();
                    if now == seen {
                        return Err(Stalled);
                    }
                    seen = now;
                }
            }
        }
    }
}

impl ConnectError {
    /// A CA file that cannot be used is the admin's to fix; everything
    /// else here is the network or the server's certificate.
    pub fn class(&self) -> FailureClass {
        match self {
            ConnectError::CaFile { .. } => FailureClass::Config,
            _ => FailureClass::Connection,
        }
    }
}

impl Stream {
    fn new(inner: Inner, progress: Progress) -> Stream {
        Stream { inner, progress }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// The byte counter of this connection; it carries over a STARTTLS
    /// upgrade.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The server's address, under TLS or not.
    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match &self.inner {
            Inner::Tls(s) => s.get_ref().0.peer_addr(),
            Inner::Plain(s) => s.peer_addr(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = match &mut this.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = poll {
            this.progress.add(buf.filled().len().saturating_sub(before));
        }
        poll
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = match &mut this.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = poll {
            this.progress.add(n);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Where to connect and how to protect it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub host: &'a str,
    pub port: u16,
    pub tls: Tls,
    pub ca_file: Option<&'a Path>,
    pub timeout: Duration,
}

impl<'a> Endpoint<'a> {
    /// Where a reader's mail server is.
    pub fn of(reader: &'a ReaderConfig) -> Endpoint<'a> {
        Endpoint {
            host: &reader.host,
            port: reader.port,
            tls: reader.tls,
            ca_file: reader.ca_file.as_deref(),
            timeout: reader.timeout,
        }
    }
}

/// Connects: a verified TLS stream for `tls = "implicit"`, else plain TCP
/// (which `starttls` must [`upgrade`] before saying anything that matters).
pub async fn connect(to: &Endpoint<'_>) -> Result<Stream, ConnectError> {
    match to.tls {
        Tls::Implicit => connect_tls(to.host, to.port, to.ca_file, to.timeout).await,
        Tls::StartTls | Tls::None => Ok(Stream::new(
            Inner::Plain(connect_tcp(to.host, to.port, to.timeout).await?),
            Progress::default(),
        )),
    }
}

/// Completes a verified TLS handshake on a plain stream, after the
/// protocol's STARTTLS/STLS was accepted.
pub async fn upgrade(stream: Stream, to: &Endpoint<'_>) -> Result<Stream, ConnectError> {
    let Stream { inner, progress } = stream;
    match inner {
        Inner::Tls(_) => Err(ConnectError::Tls("STARTTLS on a TLS connection".into())),
        Inner::Plain(tcp) => {
            let tls = handshake(tcp, to.host, to.port, to.ca_file, to.timeout).await?;
            Ok(Stream::new(tls.inner, progress))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve host {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("connection refused: {host}:{port}")]
    Refused { host: String, port: u16 },
    #[error("timed out after {}s connecting to {host}:{port}", .after.as_secs())]
    Timeout {
        host: String,
        port: u16,
        after: Duration,
    },
    #[error("cannot connect to {host}:{port}: {reason}")]
    Io {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("timed out after {}s in the TLS handshake with {host}:{port} (is this a TLS port?)", .after.as_secs())]
    HandshakeTimeout {
        host: String,
        port: u16,
        after: Duration,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// A TLS client configuration trusting the web PKI plus `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ConnectError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let fail = |reason: String| ConnectError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to `host:port` and completes a verified TLS handshake, each
/// step bounded by `timeout`.
pub async fn connect_tls(
    host: &str,
    port: u16,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Stream, ConnectError> {
    let tcp = connect_tcp(host, port, timeout).await?;
    handshake(tcp, host, port, ca_file, timeout).await
}

async fn handshake(
    tcp: TcpStream,
    host: &str,
    port: u16,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Stream, ConnectError> {
    let config = tls_config(ca_file)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| ConnectError::Tls(format!("{host:?} is not a valid server name")))?;
    let handshake = TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(ConnectError::HandshakeTimeout {
            host: host.into(),
            port,
            after: timeout,
        }),
        Ok(Err(e)) => Err(ConnectError::Tls(describe_tls_error(host, &e))),
        Ok(Ok(stream)) => Ok(Stream::new(
            Inner::Tls(Box::new(stream)),
            Progress::default(),
        )),
    }
}

async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::Resolve {
                host: host.into(),
                reason: e.to_string(),
            })?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => ConnectError::Refused {
                host: host.into(),
                port,
            },
            Some(e) => ConnectError::Io {
                host: host.into(),
                port,
                reason: e.to_string(),
            },
            None => ConnectError::Resolve {
                host: host.into(),
                reason: "no addresses".into(),
            },
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout {
            host: host.into(),
            port,
            after: timeout,
        }))
}

fn describe_tls_error(host: &str, e: &std::io::Error) -> String {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(error @ rustls::Error::InvalidCertificate(_)) => {
            describe_certificate_error(host, error)
        }
        Some(other) => format!("handshake with {host} failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{host} closed the connection during the handshake (is this a TLS port?)")
        }
        None => format!("handshake with {host} failed: {e}"),
    }
}

/// A certificate rustls refused, in words an admin can act on; shared with
/// the HTTPS clients (Microsoft Graph) that complete their handshakes
/// through reqwest with [`tls_config`].
pub(crate) fn describe_certificate_error(host: &str, error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "certificate for {host} not trusted (unknown issuer); if the server uses a private CA, \
                 set ca_file on the reader"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("certificate is not valid for the name {host}; check the reader's host")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("certificate for {host} has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("certificate for {host} is not valid yet (check the clock)")
            }
            CertificateError::Revoked => format!("certificate for {host} is revoked"),
            other => format!("certificate for {host} rejected: {other:?}"),
        },
        other => format!("handshake with {host} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_port_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let err = connect_tls("127.0.0.1", port, None, Duration::from_secs(5))
            .await
            .expect_err("nothing listens");
        assert_eq!(
            err.to_string(),
            format!("connection refused: 127.0.0.1:{port}")
        );
    }

    #[tokio::test]
    async fn progress_waits_while_bytes_move_and_not_when_stalled() {
        let progress = Progress::default();
        let timeout = Duration::from_millis(200);
        // Busy for five timeouts, a byte every half timeout: finishes.
        let busy = {
            let progress = progress.clone();
            async move {
                for _ in 0..10 {
                    tokio::time::sleep(timeout / 2).await;
                    progress.add(1);
                }
                "done"
            }
        };
        assert_eq!(progress.wait(timeout, busy).await, Ok("done"));
        // Silent: given up on after at most two timeouts.
        let started = tokio::time::Instant::now();
        let silent = tokio::time::sleep(timeout * 20);
        assert_eq!(progress.wait(timeout, silent).await, Err(Stalled));
        // At most two timeouts, and some slack for a busy machine.
        assert!(started.elapsed() < timeout * 4, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn the_stream_counts_bytes_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            socket.write_all(b"hello").await.expect("write");
            let mut got = [0u8; 3];
            socket.read_exact(&mut got).await.expect("read");
            got
        });
        let to = Endpoint {
            host: "127.0.0.1",
            port,
            tls: Tls::None,
            ca_file: None,
            timeout: Duration::from_secs(5),
        };
        let mut stream = connect(&to).await.expect("connect");
        let progress = stream.progress();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(progress.bytes(), 5);
        stream.write_all(b"abc").await.expect("write");
        stream.flush().await.expect("flush");
        assert_eq!(server.await.expect("server"), *b"abc");
        assert_eq!(progress.bytes(), 8);
    }

    #[test]
    fn missing_ca_file_is_named() {
        let err = tls_config(Some(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        assert!(
            err.to_string().starts_with("ca_file /nonexistent/ca.pem:"),
            "{err}"
        );
    }
}
