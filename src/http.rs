//! The HTTP endpoint (`[daemon] listen`): `/healthz`, `/readyz`, `/metrics`.
//!
//! Owns the routes and their status codes; what "alive" means is
//! [`crate::liveness`]'s, the exposition is [`crate::metrics`]'s. Plain
//! HTTP, meant for loopback or a container network: it serves no secrets.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::liveness::Liveness;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Endpoints {
    liveness: Liveness,
    metrics: Metrics,
}

/// Binds `addr` now, so that a taken port fails start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    liveness: Liveness,
    metrics: Metrics,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(Endpoints { liveness, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn healthz(State(e): State<Endpoints>) -> impl IntoResponse {
    match e.liveness.alive() {
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
