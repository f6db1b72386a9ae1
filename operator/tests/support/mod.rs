//! Fixtures shared by the operator's tests against the test API server:
//! the server with the Dataset CRD, the operator running against it,
//! Datasets, and waiting for what the operator writes.

// Not every test file uses every helper.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use kube_standin::ApiServer;
use swarmseed_crd::Dataset;
use swarmseed_operator::agents::ControlToken;
use swarmseed_operator::controller::{self, Context, Settings};
use tokio::task::JoinHandle;

/// Where the operator looks for agent Pods.
pub const AGENT_NS: &str = "swarmseed-system";

/// The test API server on a free 127.0.0.1 port and a client of it, with
/// the crypto provider and test logging installed first.
pub async fn api_server() -> (ApiServer, Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,kube_runtime=warn")
        .with_test_writer()
        .try_init();
    let addr = "127.0.0.1:0".parse().expect("an address");
    let server = ApiServer::start(addr).await.expect("the API server starts");
    let client = server.client().await.expect("a client");
    (server, client)
}

/// [`api_server`] with the Dataset CRD installed.
pub async fn api_server_with_crd() -> (ApiServer, Client) {
    let (server, client) = api_server().await;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &Dataset::crd())
        .await
        .expect("the Dataset CRD");
    (server, client)
}

/// Runs the operator against `client`, calling agents on `control_port`,
/// until the handle is aborted.
pub fn start_operator(client: &Client, control_port: u16) -> JoinHandle<()> {
    let settings = Settings {
        agent_namespace: AGENT_NS.into(),
        control_port,
        call_timeout: Duration::from_secs(2),
        max_peers: 16,
    };
    let ctx = Context::new(
        client.clone(),
        settings,
        ControlToken::new("t").expect("a control token"),
        b"t".to_vec(),
    );
    tokio::spawn(controller::run(Arc::new(ctx)))
}

/// A Dataset `name` in the default namespace with `spec`.
pub fn dataset(name: &str, spec: serde_json::Value) -> Dataset {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset",
        "metadata": { "name": name, "namespace": "default" },
        "spec": spec,
    }))
    .expect("a Dataset")
}

/// Polls `probe` until it returns something, for at most 40 s.
pub async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
