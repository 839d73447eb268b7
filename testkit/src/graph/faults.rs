//! Injected faults: what a test can make the Graph stand-in do instead of
//! (or before, or after) answering — throttling, outages, expired delta
//! state, dropped connections, slowness — and which requests they hit.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use super::state::{GraphRoute, MAX_DELAY};

/// A fault for [`super::GraphServer::inject`]. Built from one of the
/// constructors, narrowed with [`Fault::on_route`] / [`Fault::for_mailbox`],
/// scheduled with [`Fault::times`] (default: the next matching request),
/// [`Fault::ratio`] or [`Fault::always`].
#[derive(Clone, Debug)]
pub struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) route: Option<GraphRoute>,
    pub(crate) mailbox: Option<String>,
    pub(crate) schedule: Schedule,
}

#[derive(Clone, Debug)]
pub(crate) enum FaultKind {
    /// Answer with this status and body (an `error` object gets a fresh
    /// `innerError`), with `Retry-After` when set.
    Status {
        status: u16,
        code: String,
        message: String,
        body: Option<Value>,
        retry_after: Option<u64>,
    },
    /// 410 `SyncStateNotFound`, only to delta requests carrying a state
    /// token (`$skiptoken` / `$deltatoken`).
    SyncStateNotFound,
    /// Close the connection before the request takes effect.
    DropBefore,
    /// Let the request take effect, then close the connection unanswered.
    DropAfter,
    /// Answer as usual, this much later (while counted in flight).
    Delay(Duration),
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Schedule {
    Next(usize),
    /// `num` of every `den` matching requests, spread evenly and
    /// deterministically (the k-th fires when ⌊k·num/den⌋ grows).
    Ratio {
        num: u64,
        den: u64,
    },
    Always,
}

impl Fault {
    fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            route: None,
            mailbox: None,
            schedule: Schedule::Next(1),
        }
    }

    /// 429 with `Retry-After: retry_after_secs` and the body Exchange
    /// Online sends when an app is over its per-mailbox budget
    /// (`ApplicationThrottled`, "Application is over its MailboxConcurrency
    /// limit.").
    pub fn throttle(retry_after_secs: u64) -> Fault {
        Fault::new(FaultKind::Status {
            status: 429,
            code: "ApplicationThrottled".to_owned(),
            message: "Application is over its MailboxConcurrency limit.".to_owned(),
            body: None,
            retry_after: Some(retry_after_secs),
        })
    }

    /// 503 `serviceNotAvailable`, with `Retry-After` when given.
    pub fn unavailable(retry_after_secs: Option<u64>) -> Fault {
        Fault::new(FaultKind::Status {
            status: 503,
            code: "serviceNotAvailable".to_owned(),
            message: "The service is temporarily unavailable. Please retry after a delay."
                .to_owned(),
            body: None,
            retry_after: retry_after_secs,
        })
    }

    /// 410 Gone `SyncStateNotFound` to the next delta request that carries
    /// a `$skiptoken` or `$deltatoken` (what Graph answers when the sync
    /// state behind a link is gone). See also
    /// [`super::GraphServer::expire_delta_tokens`].
    pub fn sync_state_not_found() -> Fault {
        Fault::new(FaultKind::SyncStateNotFound).on_route(GraphRoute::Delta)
    }

    /// Any status with a Graph error body `{"error":{"code","message",…}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Fault {
        Fault::new(FaultKind::Status {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            body: None,
            retry_after: None,
        })
    }

    /// Any status with exactly this JSON body.
    pub fn status(status: u16, body: Value) -> Fault {
        Fault::new(FaultKind::Status {
            status,
            code: String::new(),
            message: String::new(),
            body: Some(body),
            retry_after: None,
        })
    }

    /// Close the connection without an answer, before the request takes
    /// effect (a reset link, a crashed front end).
    pub fn drop_connection() -> Fault {
        Fault::new(FaultKind::DropBefore)
    }

    /// Let the request take effect (a PATCH applied, a mail sent), then
    /// close the connection without an answer: the client cannot know.
    pub fn drop_after_processing() -> Fault {
        Fault::new(FaultKind::DropAfter)
    }

    /// Answer as usual after `delay` (capped at two minutes); the request
    /// counts as in flight meanwhile.
    pub fn delay(delay: Duration) -> Fault {
        Fault::new(FaultKind::Delay(delay.min(MAX_DELAY)))
    }

    /// Adds `Retry-After: secs` to a status fault.
    pub fn with_retry_after(mut self, secs: u64) -> Fault {
        if let FaultKind::Status { retry_after, .. } = &mut self.kind {
            *retry_after = Some(secs);
        }
        self
    }

    /// Only requests of this route.
    pub fn on_route(mut self, route: GraphRoute) -> Fault {
        self.route = Some(route);
        self
    }

    /// Only requests addressing this mailbox.
    pub fn for_mailbox(mut self, mailbox: &str) -> Fault {
        self.mailbox = Some(mailbox.to_lowercase());
        self
    }

    /// The next `n` matching requests.
    pub fn times(mut self, n: usize) -> Fault {
        self.schedule = Schedule::Next(n);
        self
    }

    /// `num` out of every `den` matching requests, evenly spread and the
    /// same on every run (1/10: the 10th, 20th, … matching request).
    pub fn ratio(mut self, num: u64, den: u64) -> Fault {
        assert!(
            den > 0 && num <= den,
            "Fault::ratio: need 0 <= num <= den, den > 0"
        );
        self.schedule = Schedule::Ratio { num, den };
        self
    }

    /// Every matching request until [`super::GraphServer::clear_faults`].
    pub fn always(mut self) -> Fault {
        self.schedule = Schedule::Always;
        self
    }
}

/// A fault in the server's list, with how many matching requests it saw.
pub(crate) struct FaultEntry {
    pub(crate) fault: Fault,
    pub(crate) seen: u64,
    pub(crate) exhausted: bool,
}

/// What the faults decided for one request.
#[derive(Default)]
pub(crate) struct Decision {
    pub(crate) delay: Duration,
    pub(crate) outcome: Option<FaultKind>,
}

impl FaultEntry {
    fn matches(&self, route: GraphRoute, mailbox: Option<&str>, has_state_token: bool) -> bool {
        if self.exhausted {
            return false;
        }
        if self.fault.route.is_some_and(|r| r != route) {
            return false;
        }
        if let Some(m) = &self.fault.mailbox
            && mailbox != Some(m.as_str())
        {
            return false;
        }
        !matches!(self.fault.kind, FaultKind::SyncStateNotFound) || has_state_token
    }

    /// Counts the request; whether the fault fires for it.
    fn fires(&mut self) -> bool {
        self.seen += 1;
        match self.fault.schedule {
            Schedule::Always => true,
            Schedule::Next(n) => (self.seen as usize) <= n,
            Schedule::Ratio { num, den } => self.seen * num / den > (self.seen - 1) * num / den,
        }
    }

    fn note_fired(&mut self) {
        if let Schedule::Next(n) = self.fault.schedule
            && (self.seen as usize) >= n
        {
            self.exhausted = true;
        }
    }
}

/// Runs the fault list over one request: delays add up; the first
/// answering fault that fires decides the outcome (later ones still count
/// the request, so ratios stay exact).
pub(crate) fn decide(
    faults: &mut Vec<FaultEntry>,
    route: GraphRoute,
    mailbox: Option<&str>,
    has_state_token: bool,
) -> Decision {
    let mut decision = Decision::default();
    for entry in faults.iter_mut() {
        if !entry.matches(route, mailbox, has_state_token) {
            continue;
        }
        if !entry.fires() {
            continue;
        }
        match &entry.fault.kind {
            FaultKind::Delay(d) => {
                decision.delay = (decision.delay + *d).min(MAX_DELAY);
                entry.note_fired();
            }
            kind => {
                if decision.outcome.is_none() {
                    decision.outcome = Some(kind.clone());
                    entry.note_fired();
                } else if let Schedule::Next(_) = entry.fault.schedule {
                    // Not used this time: give the count back.
                    entry.seen -= 1;
                }
            }
        }
    }
    faults.retain(|e| !e.exhausted);
    decision
}

/// The HTTP status of a status fault (validated when injected).
pub(crate) fn status_of(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
