//! The admin port every binary serves: `/livez` (the process answers),
//! `/readyz` (what the binary's [`Health`] says) and `/metrics` (its
//! registry, see [`crate::metrics`]).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What the admin port asks of the binary.
pub trait Health: Send + Sync + 'static {
    /// `Ok` with what the process is when it is ready, `Err` with why it
    /// is not (the body of `/readyz`, with 200 or 503).
    fn readiness(&self) -> Result<String, String>;

    /// Called before every scrape of `/metrics`, for gauges derived from
    /// the state at that moment.
    fn before_scrape(&self) {}
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    health: Arc<dyn Health>,
}

/// The admin routes over `registry` and `health`.
pub fn router(registry: Arc<Registry>, health: Arc<dyn Health>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { registry, health })
}

/// Serves `app` on `listener` until `stop` resolves (then lets requests in
/// flight finish).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(msg) => (StatusCode::OK, msg),
        Err(msg) => (StatusCode::SERVICE_UNAVAILABLE, msg),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.health.before_scrape();
    crate::metrics::scrape(&s.registry)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::gauge::Gauge;
    use tower::ServiceExt;

    use super::*;

    struct Switch {
        ready: AtomicBool,
        scrapes: Gauge<i64, AtomicI64>,
    }

    impl Health for Switch {
        fn readiness(&self) -> Result<String, String> {
            if self.ready.load(Ordering::Relaxed) {
                Ok("ready".into())
            } else {
                Err("starting".into())
            }
        }

        fn before_scrape(&self) {
            self.scrapes.inc();
        }
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_admin_routes_answer_from_the_health_and_the_registry() {
        let scrapes = Gauge::<i64, AtomicI64>::default();
        let mut registry = Registry::default();
        registry.register("scrapes", "Scrapes so far", scrapes.clone());
        let health = Arc::new(Switch {
            ready: AtomicBool::new(false),
            scrapes,
        });
        let app = router(Arc::new(registry), health.clone());

        assert_eq!(get(&app, "/livez").await, (StatusCode::OK, "ok".into()));
        assert_eq!(
            get(&app, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "starting".into())
        );
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&app, "/readyz").await, (StatusCode::OK, "ready".into()));
        let (status, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        // The gauge was moved before the registry was encoded.
        assert!(body.lines().any(|l| l == "scrapes 1"), "{body}");
    }
}
