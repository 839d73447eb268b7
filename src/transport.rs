//! Transport: a TCP connection wrapped in verified TLS, for any mail protocol.
//!
//! Owns the trust decision. Verification is always on; the web PKI roots
//! are trusted, plus one extra CA file when the admin names it. Failures
//! are described in words an admin can act on ("certificate for HOST not
//! trusted", "connection refused: HOST:PORT"). A connection starts either
//! in TLS (implicit) or in plain text that the protocol module upgrades
//! with [`upgrade`] after its STARTTLS/STLS exchange; plain text that stays
//! plain is only reachable through `tls = "none"`, which config accepts for
//! loopback hosts only.

use crate::metrics::FailureClass;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
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

/// The stream every mail protocol module speaks over.
#[derive(Debug)]
pub enum Stream {
    Tls(Box<TlsStream<TcpStream>>),
    /// Before STARTTLS, or `tls = "none"` on loopback.
    Plain(TcpStream),
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
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The server's address, under TLS or not.
    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Stream::Tls(s) => s.get_ref().0.peer_addr(),
            Stream::Plain(s) => s.peer_addr(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
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
        Tls::StartTls | Tls::None => Ok(Stream::Plain(
            connect_tcp(to.host, to.port, to.timeout).await?,
        )),
    }
}

/// Completes a verified TLS handshake on a plain stream, after the
/// protocol's STARTTLS/STLS was accepted.
pub async fn upgrade(stream: Stream, to: &Endpoint<'_>) -> Result<Stream, ConnectError> {
    match stream {
        Stream::Tls(_) => Err(ConnectError::Tls("STARTTLS on a TLS connection".into())),
        Stream::Plain(tcp) => handshake(tcp, to.host, to.port, to.ca_file, to.timeout).await,
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
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
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
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
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
        Some(other) => format!("handshake with {host} failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{host} closed the connection during the handshake (is this a TLS port?)")
        }
        None => format!("handshake with {host} failed: {e}"),
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

    #[test]
    fn missing_ca_file_is_named() {
        let err = tls_config(Some(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        assert!(
            err.to_string().starts_with("ca_file /nonexistent/ca.pem:"),
            "{err}"
        );
    }
}
