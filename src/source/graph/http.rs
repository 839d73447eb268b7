//! One Graph request, start to finish: the bearer token (a refused one
//! replaced once), the mailbox's in-flight bound, the `Prefer` headers,
//! timeouts that mean "no progress", and the retries — `Retry-After` for
//! 429 and 503, capped exponential backoff for other 5xx, timeouts and
//! broken connections — until an answer the operation can read.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use url::Url;

use super::client::GraphClient;
use super::errors::{GraphError, error_words};
use crate::scrub::Scrubber;
use crate::transport::{ConnectError, describe_certificate_error};

/// Asks Graph for ids that survive a move (the ledger's key).
pub(super) const PREFER_IMMUTABLE: &str = "IdType=\"ImmutableId\"";

/// How often, and how long, the client retries what it can wait out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt, per request.
    pub max_retries: u32,
    /// First backoff; it doubles per retry up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A `Retry-After` longer than this is not slept through: the request
    /// fails at once with [`GraphError::Throttled`] and the caller waits.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `failures + 1` when Graph named none.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_cap)
    }
}

/// Why the client is waiting before a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// 429.
    Throttled,
    /// 503, or another 5xx.
    Unavailable {
        status: u16,
    },
    Timeout,
    ConnectionLost,
}

/// A wait before a retry, as told to the [`WaitHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub step: &'static str,
    pub reason: WaitReason,
    pub after: Duration,
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.after.as_secs_f64().ceil() as u64;
        match self.reason {
            WaitReason::Throttled => {
                write!(f, "throttled by Microsoft Graph, retrying in {secs}s")
            }
            WaitReason::Unavailable { status } => write!(
                f,
                "Microsoft Graph answered HTTP {status} to {}, retrying in {secs}s",
                self.step
            ),
            WaitReason::Timeout => write!(
                f,
                "Microsoft Graph did not answer {}, retrying in {secs}s",
                self.step
            ),
            WaitReason::ConnectionLost => write!(
                f,
                "the connection to Microsoft Graph broke during {}, retrying in {secs}s",
                self.step
            ),
        }
    }
}

/// Called before every wait for a retry (e.g. to set `last_error`).
pub type WaitHook = Arc<dyn Fn(&Wait) + Send + Sync>;

/// The most JSON a success answer may have (a delta page of a few hundred
/// items is far below).
const MAX_JSON: usize = 32 << 20;
/// The most of an error answer kept.
const MAX_ERROR_BODY: usize = 64 << 10;

pub(super) enum Body {
    None,
    Json(serde_json::Value),
    /// `Content-Type: text/plain` (sendMail's base64 MIME).
    Text(String),
}

/// How much of a success answer is read.
#[derive(Clone, Copy)]
pub(super) enum Read {
    /// JSON, whole, up to [`MAX_JSON`].
    Json,
    /// Raw bytes, up to this many; the rest is left unread.
    Capped(u64),
}

/// A request as an operation describes it.
pub(super) struct Call {
    pub(super) step: &'static str,
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) body: Body,
    /// A second `Prefer` value (`odata.maxpagesize=N`).
    pub(super) prefer: Option<String>,
    pub(super) read: Read,
    /// The mailbox the URL names: whose in-flight bound it counts against.
    pub(super) mailbox: String,
    /// Not safe to repeat once sent (sendMail): a broken connection after
    /// sending is reported, not retried.
    pub(super) once: bool,
}

/// Graph's answer, once no retry is left to make: a success, or a refusal
/// for the operation to sort (its code and message already scrubbed).
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
    /// A capped read stopped before the end.
    pub(super) truncated: bool,
    pub(super) code: String,
    pub(super) message: String,
    /// The `Retry-After` header, as sent.
    pub(super) retry_after: Option<String>,
}

impl Reply {
    pub(super) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How one attempt failed below HTTP.
enum Broken {
    /// No connection was made: safe to retry anything.
    Connect(String),
    /// No answer, or no progress, within the timeout.
    Timeout,
    /// The connection broke under the request.
    Lost(String),
    /// An answer no retry can fix.
    Fatal(GraphError),
}

impl GraphClient {
    /// Sends `call` until Graph answers something final (see the module
    /// doc); every failure the client can only wait out becomes an error
    /// once the retry budget is spent.
    pub(super) async fn exchange(&self, call: Call) -> Result<Reply, GraphError> {
        let gate = super::client::gate_for(&self.base, &call.mailbox);
        let mut failures: u32 = 0;
        let mut refreshed = false;
        loop {
            let token = self.token.current().await?;
            let scrub = Scrubber::new([token.expose_secret()]);
            let result = {
                // Held for the whole exchange, body included, and given
                // back before any wait: a throttled request must not keep
                // the others of the mailbox waiting too.
                let _permit = gate.acquire().await.map_err(|_| GraphError::BadAnswer {
                    step: call.step,
                    detail: "the request gate was closed".into(),
                })?;
                self.attempt(&call, &token, &scrub).await
            };
            let (reason, wait) = match result {
                Ok(reply) if reply.is_success() => return Ok(reply),
                Ok(reply) if reply.status == 401 => {
                    if refreshed {
                        return Err(GraphError::TokenRefused {
                            mailbox: call.mailbox.clone(),
                            message: reply.message,
                        });
                    }
                    // An expired or revoked token: the cached one is
                    // dropped, once; a second 401 is the credential's fault.
                    self.token.refused(&token).await;
                    refreshed = true;
                    continue;
                }
                Ok(reply) if reply.status == 429 || reply.status == 503 => {
                    let reason = if reply.status == 429 {
                        WaitReason::Throttled
                    } else {
                        WaitReason::Unavailable { status: 503 }
                    };
                    let asked = retry_after(&reply);
                    let wait = asked.unwrap_or_else(|| self.retry.backoff(failures));
                    if wait > self.retry.max_retry_after || failures >= self.retry.max_retries {
                        return Err(give_up(&call, &reply, wait, failures + 1));
                    }
                    (reason, wait)
                }
                Ok(reply) if reply.status >= 500 => {
                    if failures >= self.retry.max_retries {
                        return Err(give_up(&call, &reply, Duration::ZERO, failures + 1));
                    }
                    (
                        WaitReason::Unavailable {
                            status: reply.status,
                        },
                        self.retry.backoff(failures),
                    )
                }
                Ok(reply) => return Ok(reply),
                Err(Broken::Fatal(e)) => return Err(e),
                Err(broken) => {
                    let attempts = failures + 1;
                    let (reason, error) = match broken {
                        Broken::Connect(detail) => (
                            WaitReason::ConnectionLost,
                            GraphError::ConnectionLost {
                                step: call.step,
                                attempts,
                                detail,
                            },
                        ),
                        Broken::Lost(detail) if call.once => {
                            return Err(GraphError::SendUncertain { detail });
                        }
                        Broken::Timeout if call.once => {
                            return Err(GraphError::SendUncertain {
                                detail: format!("no answer within {}s", self.timeout.as_secs()),
                            });
                        }
                        Broken::Lost(detail) => (
                            WaitReason::ConnectionLost,
                            GraphError::ConnectionLost {
                                step: call.step,
                                attempts,
                                detail,
                            },
                        ),
                        Broken::Timeout => (
                            WaitReason::Timeout,
                            GraphError::Timeout {
                                step: call.step,
                                after: self.timeout,
                                attempts,
                            },
                        ),
                        Broken::Fatal(e) => return Err(e),
                    };
                    if failures >= self.retry.max_retries {
                        return Err(error);
                    }
                    (reason, self.retry.backoff(failures))
                }
            };
            failures += 1;
            if let Some(hook) = &self.on_wait {
                hook(&Wait {
                    step: call.step,
                    reason,
                    after: wait,
                });
            }
            tracing::debug!(
                step = call.step,
                wait_ms = wait.as_millis() as u64,
                "Graph: retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: send, then read the answer.
    async fn attempt(
        &self,
        call: &Call,
        token: &SecretString,
        scrub: &Scrubber,
    ) -> Result<Reply, Broken> {
        let mut req = self
            .http
            .request(call.method.clone(), call.url.clone())
            .bearer_auth(token.expose_secret())
            .header("Prefer", PREFER_IMMUTABLE);
        if let Some(p) = &call.prefer {
            req = req.header("Prefer", p.as_str());
        }
        req = match &call.body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Text(t) => req
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(t.clone()),
        };
        let mut resp = match tokio::time::timeout(self.timeout, req.send()).await {
            Err(_) => return Err(Broken::Timeout),
            Ok(Err(e)) if e.is_connect() => {
                // A certificate that is not trusted stays so: no retry.
                if let Some(text) = certificate_refusal(&e, call.url.host_str().unwrap_or("")) {
                    return Err(Broken::Fatal(GraphError::Connect(ConnectError::Tls(text))));
                }
                return Err(Broken::Connect(error_chain(e)));
            }
            Ok(Err(e)) if e.is_timeout() => return Err(Broken::Timeout),
            Ok(Err(e)) => return Err(Broken::Lost(error_chain(e))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let success = status.is_success();
        let limit = match (success, call.read) {
            (true, Read::Json) => MAX_JSON as u64,
            (true, Read::Capped(cap)) => cap,
            (false, _) => MAX_ERROR_BODY as u64,
        };
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            // A timeout per chunk: a large mail arriving slowly is fine, a
            // silent server is not.
            match tokio::time::timeout(self.timeout, resp.chunk()).await {
                Err(_) => return Err(Broken::Timeout),
                Ok(Err(e)) => return Err(Broken::Lost(error_chain(e))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 >= limit {
                        truncated = body.len() as u64 > limit || !is_done(&mut resp).await;
                        body.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                        break;
                    }
                }
            }
        }
        if success && matches!(call.read, Read::Json) && truncated {
            return Err(Broken::Fatal(GraphError::BadAnswer {
                step: call.step,
                detail: format!("an answer of more than {MAX_JSON} bytes"),
            }));
        }
        let (code, message) = if success {
            (String::new(), String::new())
        } else {
            let (code, message) = error_words(&body, scrub);
            let status_line = status.canonical_reason().unwrap_or("").to_owned();
            (
                code,
                if message.is_empty() {
                    status_line
                } else {
                    message
                },
            )
        };
        Ok(Reply {
            status: status.as_u16(),
            body,
            truncated,
            code,
            message,
            retry_after,
        })
    }
}

/// Whether the body has nothing after what was read (a mail exactly at
/// the cap is whole). Reads at most one more chunk.
async fn is_done(resp: &mut reqwest::Response) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), resp.chunk()).await,
        Ok(Ok(None))
    )
}

/// `Retry-After` in seconds (Graph never sends the date form).
fn retry_after_header(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn retry_after(reply: &Reply) -> Option<Duration> {
    reply.retry_after.as_deref().and_then(retry_after_header)
}

/// The error once no retry is left.
fn give_up(call: &Call, reply: &Reply, wait: Duration, attempts: u32) -> GraphError {
    if reply.status == 429 {
        GraphError::Throttled {
            step: call.step,
            retry_after: wait,
        }
    } else {
        GraphError::Unavailable {
            step: call.step,
            status: reply.status,
            attempts,
            detail: if reply.code.is_empty() {
                reply.message.clone()
            } else {
                format!("{}: {}", reply.code, reply.message)
            },
        }
    }
}

/// An error and its causes on one line: reqwest's top line alone ("error
/// sending request") hides why. URLs are left out (they are not secret,
/// but long and of no use to an admin).
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    crate::scrub::printable(&text)
}

/// rustls's refusal of the server's certificate, somewhere in the causes
/// of a failed connection, in the words IMAP uses for it.
fn certificate_refusal(e: &reqwest::Error, host: &str) -> Option<String> {
    match find_rustls_error(e) {
        Some(error @ rustls::Error::InvalidCertificate(_)) => {
            Some(describe_certificate_error(host, error))
        }
        _ => None,
    }
}

/// The rustls error among the causes of `e`. An `io::Error` wrapping
/// another hides it from `source()` (which skips to the wrapped error's own
/// source), so each wrapped error is looked into as well.
fn find_rustls_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(found) = e.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(found) = find_rustls_error(inner)
    {
        return Some(found);
    }
    e.source().and_then(find_rustls_error)
}

/// The bound of one mailbox: at most four requests in flight, Exchange
/// Online's MailboxConcurrency limit, shared by every client of the
/// process that addresses that mailbox on that Graph host.
pub(super) fn new_gate() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(super::client::MAILBOX_CONCURRENCY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_retries: 10,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(700),
            max_retry_after: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (0..6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 700, 700, 700]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(700));
    }

    #[test]
    fn wait_texts() {
        let w = Wait {
            step: "the delta query",
            reason: WaitReason::Throttled,
            after: Duration::from_secs(3),
        };
        assert_eq!(
            w.to_string(),
            "throttled by Microsoft Graph, retrying in 3s"
        );
    }
}
