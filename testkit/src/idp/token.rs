//! `/{tenant}/oauth2/v2.0/token` and its grants (password, refresh token,
//! client credentials, authorization code, device code).

use super::*;

pub(crate) async fn token_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let url = sh.url.as_str();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    // Counted on arrival, so a request its client gave up on still counts.
    let delay = {
        let mut st = sh.lock();
        *st.counts.entry(grant.clone()).or_default() += 1;
        st.total += 1;
        st.last_forms.insert(grant.clone(), form.clone());
        if grant == DEVICE_CODE_GRANT {
            st.device_poll_times.push(Instant::now());
        }
        st.delay
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut guard = sh.lock();
    let st = &mut *guard;

    if let Some(front) = st.injections.front_mut() {
        let resp = injected_response(url, front);
        front.remaining -= 1;
        if front.remaining == 0 {
            st.injections.pop_front();
        }
        return resp;
    }
    if st.down {
        return down_response();
    }

    if tenant != sh.tenant {
        return unknown_tenant(url, &tenant);
    }
    if grant.is_empty() {
        return missing_param(url, "grant_type");
    }
    let basic = basic_auth_secret(&headers);
    let client_id = match (form.get("client_id"), &basic) {
        (Some(id), _) => id.clone(),
        (None, Some((id, _))) => id.clone(),
        (None, None) => return missing_param(url, "client_id"),
    };
    if client_id != sh.client_id {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &unknown_client_message(&client_id, &sh.tenant),
        );
    }
    if !KNOWN_GRANTS.contains(&grant.as_str()) {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    if let Err(resp) = authenticate_client(
        &sh,
        st,
        &form,
        basic.as_ref().map(|(_, s)| s.as_str()),
        &grant,
    ) {
        return resp;
    }

    match grant.as_str() {
        "password" => password_grant(&sh, st, &form),
        "refresh_token" => refresh_token_grant(&sh, st, &form),
        "client_credentials" => client_credentials_grant(&sh, st, &form),
        "authorization_code" => authorization_code_grant(&sh, st, &form),
        _ => device_code_grant(&sh, st, &form),
    }
}

pub(crate) fn password_grant(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
) -> Response {
    let url = sh.url.as_str();
    let Some(username) = form.get("username") else {
        return missing_param(url, "username");
    };
    let Some(password) = form.get("password") else {
        return missing_param(url, "password");
    };
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    if let Some(resp) = mixed_resources_error(url, scope) {
        return resp;
    }
    let canonical = match st.users.get(&username.to_lowercase()) {
        Some(u) if u.password == *password => u.username.clone(),
        _ => {
            return invalid_grant(
                url,
                50126,
                "Error validating credentials due to invalid username or password.",
            );
        }
    };
    st.user_tokens(
        sh,
        &canonical,
        scope,
        wants_refresh_token(scope),
        wants_id_token(scope),
        None,
    )
}

pub(crate) fn refresh_token_grant(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
) -> Response {
    let url = sh.url.as_str();
    let Some(old) = form.get("refresh_token") else {
        return missing_param(url, "refresh_token");
    };
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    // Entra's v2 refresh tokens are multi-resource: any one resource per
    // request, never two at once.
    if let Some(resp) = mixed_resources_error(url, scope) {
        return resp;
    }
    let Some(rt) = st.refresh_tokens.get(old) else {
        return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
    };
    let username = rt.username.clone();
    if let Some(max) = st.refresh_token_lifetime
        && rt.issued_at.elapsed() > max
    {
        st.refresh_tokens.remove(old);
        return invalid_grant(
            url,
            700082,
            "The refresh token has expired due to inactivity. The token was issued on a date past the configured maximum inactive time.",
        );
    }
    if st.strict_rotation {
        st.refresh_tokens.remove(old);
    }
    // Entra always returns a new refresh token on this grant.
    st.user_tokens(sh, &username, scope, true, wants_id_token(scope), None)
}

pub(crate) fn client_credentials_grant(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
) -> Response {
    let url = sh.url.as_str();
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    if !scope.ends_with("/.default") || scope.split_whitespace().count() != 1 {
        return aad_error(
            url,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    }
    let access = st.issue_access_token(Subject::App, scope);
    // Entra ID sends no `scope` and no refresh token for this grant.
    let body = json!({
        "token_type": "Bearer",
        "expires_in": st.expires_in(),
        "ext_expires_in": st.expires_in(),
        "access_token": access,
    });
    json_response(StatusCode::OK, &body)
}

pub(crate) fn authorization_code_grant(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
) -> Response {
    let url = sh.url.as_str();
    let Some(code) = form.get("code") else {
        return missing_param(url, "code");
    };
    let Some(redirect_uri) = form.get("redirect_uri") else {
        return missing_param(url, "redirect_uri");
    };
    let auth_code_lifetime = st.auth_code_lifetime;
    let Some(entry) = st.auth_codes.get_mut(code) else {
        if code.starts_with(AUTH_CODE_PREFIX) {
            return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
        }
        return invalid_grant(
            url,
            9002313,
            "Invalid request. Request is malformed or invalid.",
        );
    };
    if entry.redeemed {
        return invalid_grant(
            url,
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
        );
    }
    if entry.issued_at.elapsed() > auth_code_lifetime {
        return invalid_grant(
            url,
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        );
    }
    if entry.redirect_uri != *redirect_uri {
        return invalid_grant(
            url,
            50011,
            &format!(
                "The reply address '{redirect_uri}' does not match the reply address '{}' provided when requesting Authorization code.",
                entry.redirect_uri
            ),
        );
    }
    if let Some((challenge, method)) = &entry.challenge {
        let Some(verifier) = form.get("code_verifier") else {
            return missing_param(url, "code_verifier");
        };
        let computed = if method == "S256" {
            pkce_s256(verifier)
        } else {
            verifier.clone()
        };
        if computed != *challenge {
            return invalid_grant(
                url,
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
    }
    let consented = entry.scope.clone();
    let scope = form
        .get("scope")
        .cloned()
        .unwrap_or_else(|| consented.clone());
    // Consent may cover several resources; a redemption names one. Refused
    // before the code is consumed, like every failed redemption here.
    if let Some(resp) = mixed_resources_error(url, &scope) {
        return resp;
    }
    entry.redeemed = true;
    let username = entry.username.clone();
    let nonce = entry.nonce.clone();
    st.user_tokens(
        sh,
        &username,
        &scope,
        wants_refresh_token(&consented) || wants_refresh_token(&scope),
        wants_id_token(&consented) || wants_id_token(&scope),
        nonce.as_deref(),
    )
}

pub(crate) fn device_code_grant(
    sh: &Shared,
    st: &mut IdpState,
    form: &HashMap<String, String>,
) -> Response {
    let url = sh.url.as_str();
    let Some(device_code) = form.get("device_code") else {
        return missing_param(url, "device_code");
    };
    let Some(idx) = st
        .device_codes
        .iter()
        .position(|d| d.device_code == *device_code)
    else {
        return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
    };
    let device_error = |error: &str, code: u32, message: &str| {
        aad_error(url, StatusCode::BAD_REQUEST, error, code, message)
    };
    if st.slow_down_polls > 0 {
        st.slow_down_polls -= 1;
        return device_error(
            "slow_down",
            70016,
            "OAuth 2.0 device flow error. The client is polling too frequently. Slow down: increase the polling interval by 5 seconds.",
        );
    }
    let entry = &mut st.device_codes[idx];
    if matches!(entry.state, DeviceState::Redeemed) {
        return invalid_grant(url, 70000, "Provided grant is invalid or malformed.");
    }
    if Instant::now() >= entry.expires_at {
        return device_error("expired_token", 70019, "Verification code expired.");
    }
    let username = match &entry.state {
        DeviceState::Pending => {
            return device_error(
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            );
        }
        DeviceState::Declined => {
            return device_error(
                "authorization_declined",
                70000,
                "The user declined the authorization request on the device login page.",
            );
        }
        DeviceState::Approved(u) => u.clone(),
        DeviceState::Redeemed => unreachable!("handled above"),
    };
    entry.state = DeviceState::Redeemed;
    let scope = entry.scope.clone();
    st.user_tokens(
        sh,
        &username,
        &scope,
        wants_refresh_token(&scope),
        wants_id_token(&scope),
        None,
    )
}
