//! How the app proves who it is: nothing (a public client), a client
//! secret, or a JWT signed with a certificate's private key (RFC 7523, the
//! way Entra ID wants it: RS256 with an `x5t#S256` header).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::AuthError;
use crate::config::{ClientCertificate, OAuthApp};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Long enough for a slow request, short enough that a leaked assertion is
/// soon worthless (Entra accepts up to ten minutes).
const ASSERTION_LIFETIME_SECS: u64 = 300;

/// How the app authenticates a token request, as form fields (the
/// mailbox login is `source::Login`).
pub(super) enum ClientAuth {
    Public,
    /// Sent by the oauth2 client itself (it knows the secret).
    Secret,
    Assertion(SecretString),
}

impl ClientAuth {
    /// Builds the credential for one request: a certificate assertion is
    /// signed afresh every time, with its own `jti`.
    pub(super) fn for_request(app: &OAuthApp) -> Result<ClientAuth, AuthError> {
        if app.client_secret.is_some() {
            return Ok(ClientAuth::Secret);
        }
        match &app.client_certificate {
            Some(cert) => Ok(ClientAuth::Assertion(assertion(app, cert)?)),
            None => Ok(ClientAuth::Public),
        }
    }

    /// The extra form fields to add to a token request.
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        match self {
            ClientAuth::Assertion(jwt) => vec![
                ("client_assertion_type", ASSERTION_TYPE.to_string()),
                ("client_assertion", jwt.expose_secret().to_string()),
            ],
            ClientAuth::Public | ClientAuth::Secret => Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

fn assertion(app: &OAuthApp, cert: &ClientCertificate) -> Result<SecretString, AuthError> {
    let bad = |detail: String| AuthError::BadApp {
        app: app.name.clone(),
        detail,
    };
    let der = CertificateDer::from_pem_file(&cert.certificate).map_err(|e| {
        bad(format!(
            "client_certificate {}: not a PEM certificate ({e})",
            cert.certificate.display()
        ))
    })?;
    let key_pem = cert.key.resolve()?;
    let key = EncodingKey::from_rsa_pem(key_pem.expose_secret().as_bytes())
        .map_err(|e| bad(format!("client_key is not an RSA private key in PEM ({e})")))?;
    let mut header = Header::new(Algorithm::RS256);
    header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref())));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token_url = app.token_url();
    let claims = Claims {
        aud: &token_url,
        iss: &app.client_id,
        sub: &app.client_id,
        jti: random_id(),
        nbf: now,
        iat: now,
        exp: now + ASSERTION_LIFETIME_SECS,
    };
    let jwt = jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| bad(format!("cannot sign the client assertion ({e})")))?;
    Ok(SecretString::from(jwt))
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}
