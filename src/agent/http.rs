//! The agent's HTTP server (axum): `GET /` the status page, `GET
//! /api/status` the same as JSON, `GET /metrics` Prometheus metrics.
//!
//! It is read-only and listens on localhost by default
//! (`--http-addr`); put a reverse proxy with authentication in front of it
//! to expose it further.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Agent, AgentStatus, page};
use crate::exposition::Format;

/// The routes, with the agent as state.
pub fn router(agent: Agent) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/status", get(api_status))
        .route("/metrics", get(metrics_handler))
        .with_state(agent)
}

/// Serve until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    agent: Agent,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(agent))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn index(State(agent): State<Agent>) -> Html<String> {
    Html(page::render(&agent.status(), chrono::Utc::now()))
}

async fn api_status(State(agent): State<Agent>) -> Json<AgentStatus> {
    Json(agent.status())
}

/// OpenMetrics, or the Prometheus text format if `Accept` prefers it.
async fn metrics_handler(State(agent): State<Agent>, headers: HeaderMap) -> impl IntoResponse {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    (
        [(header::CONTENT_TYPE, format.content_type())],
        agent.metrics_as(format),
    )
}
