//! The admin port: `/livez`, `/readyz` and `/metrics`, served by
//! [`swarmseed_runtime::admin`]; the agent is ready once it recovered the
//! datasets it held before a restart.

use std::sync::Arc;

use axum::Router;
use prometheus_client::registry::Registry;
use swarmseed_runtime::admin::Health;

use crate::agent::Agent;

pub fn router(agent: Arc<Agent>, registry: Arc<Registry>) -> Router {
    swarmseed_runtime::admin::router(registry, agent)
}

impl Health for Agent {
    fn readiness(&self) -> Result<String, String> {
        if self.is_ready() {
            Ok("ready".into())
        } else {
            Err("recovering datasets".into())
        }
    }
}
