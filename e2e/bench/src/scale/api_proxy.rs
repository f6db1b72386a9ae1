//! A reverse proxy between the operator and the API stand-in that times
//! each Dataset status write where it arrives.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{NAMESPACE, lock};
use crate::report::write_file;

/// A reverse proxy between the operator and the API stand-in that records
/// when each Dataset status write arrives. The instant is taken before the
/// request is forwarded, so two writes the operator spaced by ≥ 1 s (it
/// sends the next only a second after the previous one was answered) are
/// recorded ≥ 1 s apart: unlike a watch, load can only widen the gaps.
pub(super) struct ApiProxy {
    pub(super) addr: SocketAddr,
    pub(super) writes: Arc<Mutex<Vec<(String, Instant)>>>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) struct ProxyState {
    pub(super) upstream: String,
    pub(super) client: reqwest::Client,
    pub(super) writes: Arc<Mutex<Vec<(String, Instant)>>>,
}

/// The Dataset a request path writes the status of.
pub fn status_write_target(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/apis/swarmseed.io/v1alpha1/namespaces/")?;
    let rest = rest.strip_prefix(NAMESPACE)?.strip_prefix("/datasets/")?;
    let name = rest.strip_suffix("/status")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

pub(super) fn hop_by_hop(name: &http::HeaderName) -> bool {
    use http::header;
    [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

pub(super) async fn proxy(
    axum::extract::State(st): axum::extract::State<Arc<ProxyState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let now = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::PATCH
        && let Some(name) = status_write_target(parts.uri.path())
    {
        lock(&st.writes).push((name.to_owned(), now));
    }
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return (http::StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let target = format!(
        "{}{}",
        st.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = st.client.request(parts.method, target).body(body);
    for (k, v) in parts.headers.iter().filter(|(k, _)| !hop_by_hop(k)) {
        upstream = upstream.header(k, v);
    }
    match upstream.send().await {
        Ok(resp) => {
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers().iter().filter(|(k, _)| !hop_by_hop(k)) {
                out = out.header(k, v);
            }
            out.body(axum::body::Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response())
        }
        Err(e) => (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

impl ApiProxy {
    pub(super) async fn start(upstream: String) -> anyhow::Result<Self> {
        let (listener, addr) = swarmseed_harness::bind_tcp("127.0.0.1:0".parse()?).await?;
        let writes: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let state = Arc::new(ProxyState {
            upstream,
            client: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            writes: writes.clone(),
        });
        let app = axum::Router::new().fallback(proxy).with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "API proxy stopped");
            }
        });
        Ok(Self { addr, writes, task })
    }

    /// A kubeconfig pointing at the proxy.
    pub(super) fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        // JSON is YAML.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "scale", "cluster": { "server": format!("http://{}", self.addr) } }],
            "users": [{ "name": "scale", "user": {} }],
            "contexts": [{ "name": "scale", "context": { "cluster": "scale", "user": "scale", "namespace": "default" } }],
            "current-context": "scale",
        });
        write_file(path, &config.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_writes_are_told_by_their_path() {
        let p = "/apis/swarmseed.io/v1alpha1/namespaces/scale/datasets/ds-001/status";
        assert_eq!(status_write_target(p), Some("ds-001"));
        for other in [
            "/apis/swarmseed.io/v1alpha1/namespaces/scale/datasets/ds-001",
            "/apis/swarmseed.io/v1alpha1/namespaces/other/datasets/ds-001/status",
            "/apis/swarmseed.io/v1alpha1/namespaces/scale/datasets//status",
            "/api/v1/nodes/n/status",
        ] {
            assert_eq!(status_write_target(other), None, "{other}");
        }
    }
}
