//! Talking to Microsoft Entra ID's v2.0 token endpoint through the oauth2
//! crate: the client type, the HTTP transport, and Entra's error shape.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::{
    BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, ClientId, ClientSecret, DeviceAuthorizationUrl,
    EndpointNotSet, EndpointSet, ExtraTokenFields, HttpRequest, HttpResponse, RequestTokenError,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::config::OAuthApp;

/// The oauth2 client specialised to Entra's error body and token response,
/// with the authorize, device-code and token endpoints set.
pub type EntraClient = oauth2::Client<
    EntraErrorResponse,
    EntraTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

pub type EntraTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// The OpenID Connect `id_token` Entra adds when `openid` was asked for;
/// it is how `authorize` learns which account signed in.
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl std::fmt::Debug for IdTokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.id_token.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("IdTokenField")
            .field("id_token", &shown)
            .finish()
    }
}

impl ExtraTokenFields for IdTokenField {}

/// Entra's JSON error: the OAuth `error` plus its AADSTS numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntraErrorResponse {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u64>,
}

impl std::fmt::Display for EntraErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl oauth2::ErrorResponse for EntraErrorResponse {}

impl EntraErrorResponse {
    /// The AADSTS number: from `error_codes`, else parsed from the text.
    pub fn aadsts(&self) -> Option<u64> {
        self.error_codes.first().copied().or_else(|| {
            let desc = self.error_description.as_deref()?;
            let digits: String = desc
                .strip_prefix("AADSTS")?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
    }

    /// One line for humans: "AADSTSnnn summary (error)".
    pub fn describe(&self) -> String {
        let summary = self.summary();
        let summary = if summary.is_empty() {
            self.error.clone()
        } else {
            summary
        };
        match self.aadsts() {
            Some(code) => format!("AADSTS{code} {summary} ({})", self.error),
            None if summary == self.error => summary,
            None => format!("{summary} ({})", self.error),
        }
    }

    /// Microsoft's description without the "AADSTSnnn:" prefix and the trace
    /// and correlation ids, which only matter to Microsoft support.
    pub fn summary(&self) -> String {
        let desc = self.error_description.as_deref().unwrap_or("");
        let desc = match desc.split_once(": ") {
            Some((code, rest)) if code.starts_with("AADSTS") => rest,
            _ => desc,
        };
        let end = ["\r", "\n", " Trace ID:"]
            .iter()
            .filter_map(|m| desc.find(m))
            .min()
            .unwrap_or(desc.len());
        desc[..end].trim().to_string()
    }
}

/// Builds the oauth2 client for one app registration.
pub fn client(app: &OAuthApp, secret: Option<ClientSecret>) -> Result<EntraClient, String> {
    let token_url = TokenUrl::new(app.token_url()).map_err(|e| format!("token URL: {e}"))?;
    let auth_url = AuthUrl::new(app.authorize_url()).map_err(|e| format!("authorize URL: {e}"))?;
    let device_url = DeviceAuthorizationUrl::new(app.device_code_url())
        .map_err(|e| format!("device code URL: {e}"))?;
    let client = oauth2::Client::new(ClientId::new(app.client_id.clone()))
        .set_token_uri(token_url)
        .set_auth_uri(auth_url)
        .set_device_authorization_url(device_url)
        // Entra wants client credentials in the form body, not Basic auth.
        .set_auth_type(AuthType::RequestBody);
    Ok(match secret {
        Some(secret) => client.set_client_secret(secret),
        None => client,
    })
}

/// Transport failures: anything other than an OAuth error body.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Network(String),
    #[error("HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// The OAuth error in the body, if it had one.
        detail: Option<String>,
    },
    #[error("cannot build the request: {0}")]
    Request(String),
    /// Connected, but the answer did not come within this long.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// The HTTP client the token requests go through: no redirects (a token
/// endpoint that redirects is misconfigured, and following it could carry
/// credentials elsewhere), bounded time, and non-OAuth failures (5xx, 429,
/// HTML error pages) turned into [`TransportError::Status`] so callers can
/// tell "try later" from "rejected".
#[derive(Clone, Debug)]
pub struct TokenHttp {
    client: reqwest::Client,
    /// A whole request's bound: connecting, sending, the answer.
    timeout: Duration,
}

impl TokenHttp {
    pub fn new(timeout: Duration) -> Result<TokenHttp, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("mail2ticket/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| error_chain(&e))?;
        Ok(TokenHttp { client, timeout })
    }

    /// The same client (and connection pool) with another bound per request.
    pub fn within(&self, timeout: Duration) -> TokenHttp {
        TokenHttp {
            client: self.client.clone(),
            timeout,
        }
    }
}

/// A failed exchange in words: a request that connected but got no answer
/// in time is slow, not unreachable.
fn network_error(e: reqwest::Error, timeout: Duration) -> TransportError {
    if e.is_timeout() && !e.is_connect() {
        TransportError::Timeout(timeout)
    } else {
        TransportError::Network(error_chain(&e.without_url()))
    }
}

impl<'c> AsyncHttpClient<'c> for TokenHttp {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut request = reqwest::Request::try_from(request)
                .map_err(|e| TransportError::Request(error_chain(&e)))?;
            *request.timeout_mut() = Some(self.timeout);
            let response = self
                .client
                .execute(request)
                .await
                .map_err(|e| network_error(e, self.timeout))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let mut builder = oauth2::http::Response::builder().status(status);
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| network_error(e, self.timeout))?
                .to_vec();
            // Throttling and server errors mean "later" whatever the body
            // says; other failures without an OAuth body are not OAuth's.
            let oauth_error = serde_json::from_slice::<EntraErrorResponse>(&body).ok();
            let transient =
                status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if !status.is_success() && (transient || oauth_error.is_none()) {
                return Err(TransportError::Status {
                    status: status.as_u16(),
                    retry_after,
                    detail: oauth_error.map(|e| e.describe()),
                });
            }
            builder
                .body(body)
                .map_err(|e| TransportError::Request(e.to_string()))
        })
    }
}

/// An error and its causes on one line ("error sending request: connection
/// refused"), since reqwest's top-level message alone hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub type TokenError = RequestTokenError<TransportError, EntraErrorResponse>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_code_and_summary() {
        let e: EntraErrorResponse = serde_json::from_str(
            r#"{"error":"invalid_grant","error_description":"AADSTS50126: Error validating credentials due to invalid username or password.\r\nTrace ID: 1 Correlation ID: 2 Timestamp: 3","error_codes":[50126]}"#,
        )
        .expect("json");
        assert_eq!(e.aadsts(), Some(50126));
        assert_eq!(
            e.summary(),
            "Error validating credentials due to invalid username or password."
        );
        let no_codes = EntraErrorResponse {
            error: "invalid_request".into(),
            error_description: Some("AADSTS900144: The request body must contain 'scope'.".into()),
            error_codes: vec![],
        };
        assert_eq!(no_codes.aadsts(), Some(900144));
    }
}
