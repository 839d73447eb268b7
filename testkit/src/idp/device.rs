//! `/{tenant}/oauth2/v2.0/devicecode` and the device login page.

use super::*;

pub(crate) async fn devicecode_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let url = sh.url.as_str();
    let mut guard = sh.lock();
    let st = &mut *guard;
    st.device_code_requests += 1;
    st.last_device_code_form = Some(form.clone());
    if st.down {
        return down_response();
    }
    if tenant != sh.tenant {
        return unknown_tenant(url, &tenant);
    }
    // A client that authenticates with HTTP Basic may name itself only there.
    let client_id = match (form.get("client_id"), basic_auth_secret(&headers)) {
        (Some(id), _) => id.clone(),
        (None, Some((id, _))) => id,
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
    let Some(scope) = form.get("scope") else {
        return missing_param(url, "scope");
    };
    if let Some(resp) = mixed_resources_error(url, scope) {
        return resp;
    }
    let device_code = format!("{DEVICE_CODE_PREFIX}{}", random_string(200));
    let user_code = loop {
        let c = random_user_code();
        if !st.device_codes.iter().any(|d| d.user_code == c) {
            break c;
        }
    };
    st.issued_secrets.push(device_code.clone());
    st.device_codes.push(DeviceCode {
        device_code: device_code.clone(),
        user_code: user_code.clone(),
        scope: scope.clone(),
        expires_at: Instant::now() + st.device_expires_in,
        state: DeviceState::Pending,
    });
    let verification_uri = format!("{url}/devicelogin");
    let body = json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": verification_uri,
        "expires_in": st.device_expires_in.as_secs().max(1),
        "interval": st.device_interval,
        "message": format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."
        ),
    });
    json_response(StatusCode::OK, &body)
}

pub(crate) async fn devicelogin_page() -> Response {
    html_response(
        StatusCode::OK,
        "<!DOCTYPE html>\n<html><head><title>Enter code</title></head><body><h1>Enter code</h1>\
<p>Enter the code displayed on your app or device. (Test IdP: approve with IdP::approve_device_code.)</p></body></html>\n"
            .to_owned(),
    )
}
