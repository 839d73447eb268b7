//! A throw-away CA and a server certificate for `127.0.0.1` / `localhost`
//! (rcgen), plus TLS client helpers trusting only that CA (rustls, ring).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// PEM texts of a fresh CA and a server certificate it signed.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Files written by [`TestPki::write_to`].
pub struct PkiFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestPki {
    /// A new CA and a server certificate for `names` (IP literals become IP
    /// SANs, the rest DNS SANs). ECDSA P-256, valid 1975..4096 (rcgen default).
    pub fn generate(names: &[&str]) -> TestPki {
        let ca_key = KeyPair::generate().expect("rcgen: CA key generation failed");
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).expect("rcgen: CA parameters rejected");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mail2ticket throw-away test CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "mail2ticket tests");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .expect("rcgen: CA self-signing failed");
        let issuer = Issuer::new(ca_params, ca_key);

        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params =
            CertificateParams::new(names.clone()).expect("rcgen: server SANs rejected");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("rcgen: server key generation failed");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("rcgen: signing the server certificate failed");
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `server.pem`, `server.key` (0600) into `dir`.
    pub fn write_to(&self, dir: &Path) -> PkiFiles {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("cannot create the TLS directory");
        let files = PkiFiles {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
        };
        std::fs::write(&files.ca_file, &self.ca_pem).expect("cannot write ca.pem");
        std::fs::write(&files.cert_file, &self.cert_pem).expect("cannot write server.pem");
        std::fs::write(&files.key_file, &self.key_pem).expect("cannot write server.key");
        std::fs::set_permissions(&files.key_file, std::fs::Permissions::from_mode(0o600))
            .expect("cannot chmod server.key");
        files
    }
}

/// A rustls client config trusting only the CA(s) in the PEM file `ca_file`.
pub fn client_config(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)
        .unwrap_or_else(|e| panic!("cannot read CA file {}: {e}", ca_file.display()))
    {
        let cert = cert.unwrap_or_else(|e| panic!("bad PEM in {}: {e}", ca_file.display()));
        roots.add(cert).expect("CA certificate rejected by rustls");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("rustls: no usable protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Wraps an established TCP stream in TLS for `server_name` (e.g. "127.0.0.1"
/// or "localhost"), trusting `ca_file`. Used for implicit TLS and STARTTLS.
pub async fn tls_wrap(
    tcp: TcpStream,
    server_name: &str,
    ca_file: &Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(client_config(ca_file))
        .connect(name, tcp)
        .await
}

/// Connects to `127.0.0.1:port` with implicit TLS, trusting `ca_file`.
pub async fn tls_connect(port: u16, ca_file: &Path) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
    tls_wrap(tcp, "127.0.0.1", ca_file)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with 127.0.0.1:{port} failed: {e}"))
}
