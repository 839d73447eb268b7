//! `ClientCert`: an RSA-2048 key and a self-signed X.509 certificate for it,
//! i.e. what an administrator uploads to an Entra ID app registration
//! ("Certificates & secrets") so that the daemon can authenticate with a
//! signed client assertion (RFC 7523) instead of a client secret.
//!
//! The key is made with the `rsa` crate and the certificate with rcgen, which
//! signs with the imported PKCS#8 key. Key generation is slow-ish (even with
//! the optimised `rsa` profile), so tests that do not care which key they get
//! should use [`ClientCert::shared`].
//!
//! [`ClientCert::sign_jwt`] / [`ClientCert::client_assertion`] build RS256
//! JWTs with the `rsa` crate directly (not with jsonwebtoken, which the
//! library uses), so the IdP's checks do not share code with the client.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose};
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::time::unix_now;

/// Form value of `client_assertion_type` for a JWT client assertion.
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An RSA-2048 private key plus a self-signed certificate for it.
#[derive(Clone)]
pub struct ClientCert {
    key: RsaPrivateKey,
    key_pem: String,
    public_key_pem: String,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("thumbprint_s256", &self.thumbprint_s256())
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// A fresh RSA-2048 key and a self-signed certificate with
    /// `CN=common_name` (digital signature usage; rcgen's default validity).
    pub fn generate(common_name: &str) -> ClientCert {
        let key = RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048)
            .expect("rsa: cannot generate a 2048-bit key");
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("rsa: cannot encode the key as PKCS#8")
            .to_string();
        let public_key_pem = RsaPublicKey::from(&key)
            .to_public_key_pem(LineEnding::LF)
            .expect("rsa: cannot encode the public key");
        let key_pair = KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)
            .expect("rcgen: cannot import the RSA key");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("rcgen: parameters rejected");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .self_signed(&key_pair)
            .expect("rcgen: self-signing the client certificate failed");
        ClientCert {
            key,
            key_pem,
            public_key_pem,
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
        }
    }

    /// One certificate for the whole test process (generated on first use).
    pub fn shared() -> &'static ClientCert {
        static SHARED: OnceLock<ClientCert> = OnceLock::new();
        SHARED.get_or_init(|| ClientCert::generate("mail2ticket test client"))
    }

    /// The certificate, `-----BEGIN CERTIFICATE-----`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The public key, SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// base64url (no padding) of SHA-256 over the certificate DER: the
    /// `x5t#S256` JWT header value Entra ID looks the key up by.
    pub fn thumbprint_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(&self.cert_der))
    }

    /// The certificate DER in standard base64 (a JWK `x5c` entry).
    pub fn cert_base64(&self) -> String {
        STANDARD.encode(&self.cert_der)
    }

    /// Writes `client-cert.pem` and `client-key.pem` (0600) into `dir`
    /// (created if missing); returns (cert path, key path).
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("cannot create the certificate directory");
        let cert_path = dir.join("client-cert.pem");
        let key_path = dir.join("client-key.pem");
        std::fs::write(&cert_path, &self.cert_pem).expect("cannot write client-cert.pem");
        std::fs::write(&key_path, &self.key_pem).expect("cannot write client-key.pem");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .expect("cannot chmod client-key.pem");
        (cert_path, key_path)
    }

    /// RS256 signature (base64url, no padding) over `signing_input`.
    pub fn sign_rs256(&self, signing_input: &[u8]) -> String {
        let digest = Sha256::digest(signing_input);
        let sig = self
            .key
            .sign(Pkcs1v15Sign::new::<Sha256>(), &digest)
            .expect("rsa: signing failed");
        URL_SAFE_NO_PAD.encode(sig)
    }

    /// A compact JWS of exactly these header and claims, signed RS256 with
    /// this key whatever `header.alg` says (so tests can forge bad headers).
    pub fn sign_jwt(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.sign_rs256(input.as_bytes());
        format!("{input}.{sig}")
    }

    /// The header Entra ID expects on a certificate client assertion:
    /// `{"alg":"RS256","typ":"JWT","x5t#S256":<thumbprint>}`.
    pub fn assertion_header(&self) -> Value {
        json!({"alg": "RS256", "typ": "JWT", "x5t#S256": self.thumbprint_s256()})
    }

    /// Claims of a valid client assertion: `aud` = the token URL, `iss` =
    /// `sub` = client id, a random `jti`, `nbf` = `iat` = now, `exp` = +10 min.
    pub fn assertion_claims(client_id: &str, token_url: &str) -> Value {
        let now = unix_now();
        let jti: u128 = rand::random();
        json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": format!("{jti:032x}"),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        })
    }

    /// A valid client assertion, as MSAL would build it.
    pub fn client_assertion(&self, client_id: &str, token_url: &str) -> String {
        self.sign_jwt(
            &self.assertion_header(),
            &Self::assertion_claims(client_id, token_url),
        )
    }
}
