//! The Graph stand-in's listener: TCP accept, the TLS handshake per
//! connection (so a client that never finishes one blocks nobody else),
//! HTTP/1.1 by hyper, and the one thing a router cannot do: close a
//! connection without answering (the "dropped connection" fault).

use std::sync::Arc;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Shared;
use super::dispatch::handle;

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose (injected fault)")
    }
}

impl std::error::Error for DropConnection {}

/// rustls server configuration with `pki`'s certificate, HTTP/1.1 by ALPN.
pub(crate) fn tls_config(pki: &crate::certs::TestPki) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("Graph: the PKI's server certificate PEM does not parse");
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())
        .expect("Graph: the PKI's server key PEM does not parse");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("rustls: no usable protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("rustls refused the PKI's server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Accepts until the runtime is shut down; one task per connection.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                eprintln!("Graph stand-in: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                // A client that does not trust the CA hangs up during the
                // handshake; that is its business, not an error of ours.
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        serve(TokioIo::new(stream), shared).await;
                    }
                }
                None => serve(TokioIo::new(tcp), shared).await,
            }
        });
    }
}

async fn serve<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { handle(shared, req.map(Body::new)).await as Result<Response<Body>, DropConnection> }
    });
    // Errors here are the client's hang-ups and our own dropped connections.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}
