//! The HTTP endpoint (`[daemon] listen`): `/healthz`, `/readyz`, `/metrics`,
//! and the status page at `/` (its content is [`crate::ops::page`]'s).
//!
//! Owns the routes and their status codes, and what a client may cost the
//! daemon: at most [`MAX_CONNECTIONS`] connections at a time, each sending
//! its request head within [`HEADER_TIMEOUT`] and done within
//! [`REQUEST_TIMEOUT`], and idle ones given up first when a newcomer needs
//! a place or a file descriptor; so idle or slow clients can neither hold
//! the descriptors the readers need nor keep health checks out. What "alive" means is
//! [`crate::ops::liveness`]'s (and [`crate::ops::fds`]'s for running out of file
//! descriptors), the exposition is [`crate::ops::metrics`]'s. Plain HTTP, meant
//! for loopback or a container network: it serves no secrets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ops::fds::{Exhausted, Pressure};
use crate::ops::liveness::Liveness;
use crate::ops::metrics::Metrics;
use crate::ops::page::{self, StatusPage};

/// Connections served at once. Health checks and a scraper need a handful;
/// when all are taken, the oldest that has not yet sent a whole request
/// gives its place to the newcomer (idle clients cannot lock health checks
/// out), and with none of those the newcomer is closed at once, never
/// queued. So the listener holds at most this many file descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a whole exchange may take, request in to the last byte out (each
/// connection serves one request).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after an accept that failed for want of a file descriptor with
/// nothing to give up (or for want of memory): the waiting connection
/// keeps the listener readable, so retrying at once would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long a connection given up may take to close.
const EVICT_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Endpoints {
    liveness: Liveness,
    metrics: Metrics,
    fds: Pressure,
    page: StatusPage,
}

/// Binds `addr` now, so that a taken port fails start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` fires, then lets the exchanges in progress finish
/// (each within [`REQUEST_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    liveness: Liveness,
    metrics: Metrics,
    fds: Pressure,
    page: StatusPage,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(Endpoints {
            liveness,
            metrics,
            fds: fds.clone(),
            page,
        });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Waiting::default();
    // One descriptor kept back: out of descriptors with no idle client to
    // give up, it is given up to accept the waiting client, so that a
    // health check hears why instead of waiting in the backlog.
    let mut spare = None;
    let mut short = false;
    let mut next_id = 0u64;
    let mut connections = JoinSet::new();
    loop {
        if spare.is_none() && !short {
            spare = std::fs::File::open("/dev/null").ok();
        }
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                short = false;
                stream
            }
            Err(e) => {
                match Exhausted::of_io(&e) {
                    Some(what) => {
                        short = true;
                        fds.met(what);
                        tracing::debug!(error = %what.describe(), "cannot accept an HTTP connection");
                        if let Some(gone) = waiting.evict_oldest() {
                            let _ = tokio::time::timeout(EVICT_WAIT, gone.cancelled()).await;
                        } else if spare.take().is_none() {
                            tokio::time::sleep(ACCEPT_PAUSE).await;
                        }
                    }
                    None => {
                        tracing::debug!(error = %e, "accept failed");
                        // A client that gave up before it was accepted is
                        // its own affair; anything else (no memory, no
                        // buffers) would spin if retried at once.
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::ConnectionReset
                        ) {
                            tokio::time::sleep(ACCEPT_PAUSE).await;
                        }
                    }
                }
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match waiting.evict_oldest() {
                Some(gone) => {
                    let _ = tokio::time::timeout(EVICT_WAIT, gone.cancelled()).await;
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => slot,
                        Err(_) => continue,
                    }
                }
                None => {
                    tracing::debug!(
                        max = MAX_CONNECTIONS,
                        "HTTP connection closed: all connections are busy with a request"
                    );
                    continue;
                }
            },
        };
        next_id += 1;
        let turn = waiting.add(next_id, slot);
        connections.spawn(serve_one(stream, app.clone(), turn, stop.clone()));
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The connections that have not yet sent a whole request, oldest first:
/// those given up when a newcomer needs a slot or a file descriptor.
#[derive(Clone, Default)]
struct Waiting {
    queue: Arc<Mutex<VecDeque<Place>>>,
}

/// A waiting connection as the queue sees it.
struct Place {
    id: u64,
    /// Fired to close it.
    evicted: CancellationToken,
    /// Fired once it is closed (its [`Turn`] dropped with it).
    gone: CancellationToken,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Place>> {
        // A plain queue, consistent after any panic.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, id: u64, slot: OwnedSemaphorePermit) -> Turn {
        let (evicted, gone) = (CancellationToken::new(), CancellationToken::new());
        self.lock().push_back(Place {
            id,
            evicted: evicted.clone(),
            gone: gone.clone(),
        });
        Turn {
            waiting: self.clone(),
            id,
            slot: Some(slot),
            evicted,
            gone,
        }
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|place| place.id != id);
    }

    /// Closes the oldest waiting connection; returns what fires once its
    /// descriptor and slot are free, or `None` when none is waiting.
    fn evict_oldest(&self) -> Option<CancellationToken> {
        let place = self.lock().pop_front()?;
        place.evicted.cancel();
        Some(place.gone)
    }
}

/// One connection's place in [`Waiting`], left when its request arrives,
/// and its slot. It lives inside the connection, so its drop is the
/// connection's close.
struct Turn {
    waiting: Waiting,
    id: u64,
    slot: Option<OwnedSemaphorePermit>,
    evicted: CancellationToken,
    gone: CancellationToken,
}

impl Turn {
    fn requested(&self) {
        self.waiting.remove(self.id);
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.waiting.remove(self.id);
        // The slot first: whoever waits for `gone` takes it next.
        drop(self.slot.take());
        self.gone.cancel();
    }
}

/// The router, telling the connection's [`Turn`] when its request arrived.
struct Marked {
    app: TowerToHyperService<Router>,
    turn: Arc<Turn>,
}

impl hyper::service::Service<Request<Incoming>> for Marked {
    type Response =
        <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Error;
    type Future =
        <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.turn.requested();
        self.app.call(req)
    }
}

/// One connection, one request, bounded by the timeouts; closed early when
/// it is still waiting for its request and a newcomer needs its place.
async fn serve_one(stream: TcpStream, app: Router, turn: Turn, stop: CancellationToken) {
    let evicted = turn.evicted.clone();
    let service = Marked {
        app: TowerToHyperService::new(app),
        turn: Arc::new(turn),
    };
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let exchange = async {
        tokio::select! {
            served = conn.as_mut() => served,
            () = evicted.cancelled() => {
                tracing::debug!("idle HTTP connection closed: a newer one needed its place");
                Ok(())
            }
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended"),
        Err(_) => tracing::debug!(
            after = ?REQUEST_TIMEOUT,
            "HTTP connection closed: the exchange took too long"
        ),
    }
}

async fn healthz(State(e): State<Endpoints>) -> impl IntoResponse {
    let verdict = e
        .liveness
        .alive()
        .and_then(|()| e.fds.exhausted().map_or(Ok(()), Err));
    match verdict {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(e): State<Endpoints>) -> impl IntoResponse {
    if e.liveness.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_page(State(e): State<Endpoints>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (content_type, body) = e.metrics.render(openmetrics);
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn status_page(State(e): State<Endpoints>) -> impl IntoResponse {
    let (status, content_type, body) =
        match tokio::time::timeout(page::READ_TIMEOUT, e.page.render()).await {
            Ok(Ok(html)) => (StatusCode::OK, "text/html; charset=utf-8", html),
            Ok(Err(why)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("cannot read the status: {why}\n"),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "the database did not answer in time\n".to_string(),
            ),
        };
    (
        status,
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                page::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}
