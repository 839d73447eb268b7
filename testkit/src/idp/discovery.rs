//! Discovery (`.well-known/openid-configuration`, JWKS) and the
//! introspection endpoint Dovecot asks.

use super::*;

pub(crate) async fn openid_configuration(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
) -> Response {
    let url = sh.url.as_str();
    if tenant != sh.tenant {
        return unknown_tenant(url, &tenant);
    }
    let base = format!("{url}/{tenant}");
    let body = json!({
        "issuer": sh.issuer(),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "tenant_region_scope": "EU",
    });
    json_response(StatusCode::OK, &body)
}

pub(crate) async fn jwks_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
) -> Response {
    if tenant != sh.tenant {
        return unknown_tenant(&sh.url, &tenant);
    }
    let key = idp_signing_key();
    let public = RsaPublicKey::from_public_key_pem(key.public_key_pem())
        .expect("the IdP's own public key PEM is valid");
    let body = json!({
        "keys": [{
            "kty": "RSA",
            "use": "sig",
            "kid": key.thumbprint_s256(),
            "x5t#S256": key.thumbprint_s256(),
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            "x5c": [key.cert_base64()],
            "issuer": sh.issuer(),
        }]
    });
    json_response(StatusCode::OK, &body)
}

/// Dovecot posts `token=<access token>` and reads `active` and `username`.
///
/// User tokens (from any grant) name their user. App-only
/// (client_credentials) tokens carry no user, and Dovecot posts only the
/// token, so the reply can name a mailbox only when it is unambiguous: such a
/// token is active only if exactly one mailbox was granted with
/// [`IdP::grant_app_access`], and the reply names that mailbox.
/// (Limitation: Exchange checks the XOAUTH2 `user=` against the grants; we
/// cannot see it here.)
pub(crate) async fn introspect_endpoint(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let mut st = sh.lock();
    st.introspections += 1;
    let inactive = json!({ "active": false });
    let Some(token) = form.get("token") else {
        return json_response(StatusCode::OK, &inactive);
    };
    let reply = match st.access_tokens.get(token) {
        Some(at) if at.expires_at > Instant::now() => match &at.subject {
            Subject::User(u) => json!({ "active": true, "username": u }),
            Subject::App if st.app_grants.len() == 1 => {
                json!({ "active": true, "username": st.app_grants[0] })
            }
            Subject::App => inactive,
        },
        _ => inactive,
    };
    json_response(StatusCode::OK, &reply)
}
