//! The admin port: `/livez`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::agent::Agent;

#[derive(Clone)]
struct AdminState {
    agent: Arc<Agent>,
    registry: Arc<Registry>,
}

pub fn router(agent: Arc<Agent>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { agent, registry })
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.agent.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering datasets")
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    swarmseed_proto::metrics::scrape(&s.registry)
}
