//! Client authentication at the token endpoint: a secret (Basic or in the
//! form) or a signed client assertion checked against a registered certificate.

use super::*;

/// A `client_secret` from `Authorization: Basic base64(id:secret)` (RFC 6749
/// §2.3.1: both parts form-urlencoded), which Entra accepts too.
pub(crate) fn basic_auth_secret(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((url_decode(id), url_decode(secret)))
}

/// Checks the client credential the request presents (or must present).
// Err is the finished error response, built at most once per request.
#[allow(clippy::result_large_err)]
pub(crate) fn authenticate_client(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
    basic_secret: Option<&str>,
    grant: &str,
) -> Result<(), Response> {
    let url = sh.url.as_str();
    let form_secret = form.get("client_secret").map(String::as_str);
    let assertion = form.get("client_assertion");
    let assertion_type = form.get("client_assertion_type");
    let has_assertion = assertion.is_some() || assertion_type.is_some();
    let secrets = usize::from(form_secret.is_some()) + usize::from(basic_secret.is_some());
    let presented = secrets + usize::from(has_assertion);

    if grant == "authorization_code" && !st.confidential && presented > 0 {
        return Err(aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        ));
    }
    if presented > 1 {
        return Err(invalid_client(
            url,
            70002,
            "Error validating credentials. More than one client credential was presented: send either 'client_assertion' or 'client_secret' (in the body or with HTTP Basic authentication), not several.",
        ));
    }
    if let Some(secret) = form_secret.or(basic_secret) {
        if st.expired_secrets.iter().any(|s| s == secret) {
            return Err(invalid_client(
                url,
                7000222,
                &format!(
                    "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                    sh.client_id
                ),
            ));
        }
        if !st.client_secrets.iter().any(|s| s == secret) {
            return Err(invalid_client(
                url,
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    sh.client_id
                ),
            ));
        }
    }
    if has_assertion {
        validate_assertion(sh, st, assertion, assertion_type)?;
    }
    if presented == 0 && (st.confidential || grant == "client_credentials") {
        return Err(invalid_client(
            url,
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok(())
}

/// RFC 7523 client assertion, checked the way Entra ID checks certificate
/// credentials. See the module docs for the error codes.
#[allow(clippy::result_large_err)]
pub(crate) fn validate_assertion(
    sh: &Shared,
    st: &mut IdpState,
    assertion: Option<&String>,
    assertion_type: Option<&String>,
) -> Result<(), Response> {
    let url = sh.url.as_str();
    let Some(kind) = assertion_type else {
        return Err(missing_param(url, "client_assertion_type"));
    };
    let Some(jwt) = assertion else {
        return Err(missing_param(url, "client_assertion"));
    };
    if kind != JWT_BEARER_ASSERTION_TYPE {
        return Err(invalid_client(
            url,
            70002,
            &format!(
                "Error validating credentials. The client_assertion_type '{kind}' is not supported; it must be '{JWT_BEARER_ASSERTION_TYPE}'."
            ),
        ));
    }
    let malformed = |why: &str| {
        invalid_client(
            url,
            50027,
            &format!("JWT token is invalid or malformed. [Reason - {why}]"),
        )
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed("A JWS compact serialization has three parts."));
    }
    let (Some(header), Some(claims)) = (b64url_json(parts[0]), b64url_json(parts[1])) else {
        return Err(malformed(
            "The header or payload is not base64url-encoded JSON.",
        ));
    };
    st.last_assertion = Some((header.clone(), claims.clone()));
    let Ok(signature) = URL_SAFE_NO_PAD.decode(parts[2]) else {
        return Err(malformed("The signature is not base64url-encoded."));
    };

    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" {
        return Err(invalid_client(
            url,
            5002738,
            &format!(
                "Invalid JWT token. '{alg}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256'"
            ),
        ));
    }
    let thumbprint = header.get("x5t#S256").and_then(Value::as_str).unwrap_or("");
    let Some(cert) = st
        .certificates
        .iter()
        .find(|c| !thumbprint.is_empty() && c.thumbprint_s256 == thumbprint)
    else {
        return Err(invalid_client(
            url,
            700027,
            &format!(
                "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'. Review the documentation at {CERT_DOCS} .]",
                sh.client_id
            ),
        ));
    };
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    let digest = Sha256::digest(signing_input.as_bytes());
    if cert
        .public_key
        .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &signature)
        .is_err()
    {
        return Err(invalid_client(
            url,
            700027,
            &format!(
                "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{thumbprint}'.]"
            ),
        ));
    }
    if cert.expired {
        return Err(invalid_client(
            url,
            700027,
            &format!(
                "Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '{thumbprint}'.]"
            ),
        ));
    }

    let token_url = sh.token_url();
    let aud = match claims.get("aud") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() > 1 => {
            return Err(invalid_client(
                url,
                5002741,
                &format!(
                    "Number of audience values in the provided client credential exceed maximum allowed. {} audience values provided, maximum allowed is 1.",
                    a.len()
                ),
            ));
        }
        Some(Value::Array(a)) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    if aud != token_url {
        return Err(invalid_client(
            url,
            700023,
            &format!(
                "Client assertion audience claim does not match Realm issuer. The audience in the assertion was '{aud}' and the expected audience is '{token_url}'. Review the documentation at {CERT_DOCS} ."
            ),
        ));
    }
    for claim in ["iss", "sub"] {
        if claims.get(claim).and_then(Value::as_str) != Some(sh.client_id.as_str()) {
            return Err(invalid_client(
                url,
                700021,
                &format!(
                    "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at {CERT_DOCS} ."
                ),
            ));
        }
    }
    let (Some(exp), Some(nbf)) = (
        claims.get("exp").and_then(Value::as_f64),
        claims.get("nbf").and_then(Value::as_f64),
    ) else {
        return Err(malformed(
            "The 'exp' and 'nbf' claims must be present and numeric.",
        ));
    };
    let now = unix_now() as f64;
    if now > exp + CLOCK_SKEW_SECS || nbf > now + CLOCK_SKEW_SECS {
        return Err(invalid_client(
            url,
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at {CERT_DOCS} .",
                azure_timestamp(now as i64),
                azure_timestamp(nbf as i64),
                azure_timestamp(exp as i64)
            ),
        ));
    }
    let jti = match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() => j.to_owned(),
        _ => return Err(malformed("The 'jti' claim must be present.")),
    };
    if st.used_jtis.contains(&jti) {
        return Err(malformed(&format!(
            "The client assertion was replayed: the 'jti' claim '{jti}' was already used. A client assertion can be used only once."
        )));
    }
    st.used_jtis.insert(jti);
    Ok(())
}
