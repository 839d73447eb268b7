//! `/{tenant}/oauth2/v2.0/authorize`: the browser sign-in with PKCE.

use super::*;

pub(crate) async fn authorize_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = parse_form(query.unwrap_or_default().as_bytes());
    let url = sh.url.as_str();
    let mut guard = sh.lock();
    let st = &mut *guard;
    st.authorize_requests += 1;
    st.last_authorize_query = Some(q.clone());
    if st.down {
        return down_response();
    }

    // Errors before the redirect URI is known to be ours: an error page.
    if tenant != sh.tenant {
        return error_page(90002, &unknown_tenant_message(&tenant));
    }
    let page_missing = |name: &str| {
        error_page(
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let Some(client_id) = q.get("client_id") else {
        return page_missing("client_id");
    };
    if *client_id != sh.client_id {
        return error_page(700016, &unknown_client_message(client_id, &sh.tenant));
    }
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return page_missing("redirect_uri");
    };
    if !redirect_uri_allowed(st, redirect_uri) {
        return error_page(
            50011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.",
                sh.client_id
            ),
        );
    }
    if let Some(mode) = q.get("response_mode")
        && mode != "query"
    {
        // Entra supports fragment and form_post too; this imitation does not.
        return html_response(
            StatusCode::BAD_REQUEST,
            format!(
                "<html><body>test IdP: response_mode '{}' is not imitated, use 'query'</body></html>",
                html_escape(mode)
            ),
        );
    }

    // From here on errors go back to the client.
    let state = q.get("state");
    let back = |error: &str, code: u32, message: &str| {
        redirect_error(url, redirect_uri, state, error, code, message)
    };
    match q.get("response_type").map(String::as_str) {
        None => {
            return back(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'response_type'.",
            );
        }
        Some("code") => {}
        Some(other) => {
            return back(
                "unsupported_response_type",
                70005,
                &format!("response_type '{other}' is not enabled for the application."),
            );
        }
    }
    let Some(scope) = q.get("scope") else {
        return back(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let challenge = match q.get("code_challenge") {
        None if st.pkce_required => {
            return back(
                "invalid_request",
                9002325,
                "Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
            );
        }
        None => None,
        Some(c) => {
            // Like Entra, a missing method means "plain".
            let method = q
                .get("code_challenge_method")
                .cloned()
                .unwrap_or_else(|| "plain".to_owned());
            if method != "S256" && method != "plain" {
                return back(
                    "invalid_request",
                    501492,
                    &format!(
                        "Invalid code_challenge_method '{method}'. Supported methods are 'plain' and 'S256'."
                    ),
                );
            }
            if !(43..=128).contains(&c.len()) {
                return back(
                    "invalid_request",
                    501491,
                    "Invalid size of Code_Challenge parameter.",
                );
            }
            Some((c.clone(), method))
        }
    };
    let Some(username) = st.browser_user.clone() else {
        if q.get("prompt").map(String::as_str) == Some("none") {
            return back(
                "login_required",
                50058,
                "A silent sign-in request was sent but no user is signed in.",
            );
        }
        return back(
            "access_denied",
            65004,
            "User declined to consent to access the app.",
        );
    };
    if st.consent_denied {
        return back(
            "access_denied",
            65004,
            "User declined to consent to access the app.",
        );
    }
    let code = loop {
        let c = format!("{AUTH_CODE_PREFIX}{}", random_string(300));
        if !st.auth_codes.contains_key(&c) {
            break c;
        }
    };
    st.issued_secrets.push(code.clone());
    st.auth_codes.insert(
        code.clone(),
        AuthCode {
            username,
            redirect_uri: redirect_uri.clone(),
            scope: scope.clone(),
            challenge,
            nonce: q.get("nonce").cloned(),
            issued_at: Instant::now(),
            redeemed: false,
        },
    );
    let session_state = guid();
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = state {
        params.push(("state", s.as_str()));
    }
    params.push(("session_state", session_state.as_str()));
    redirect_to(redirect_uri, &params)
}
