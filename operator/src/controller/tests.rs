use k8s_openapi::api::core::v1::{NodeSpec, Taint};

use kube::api::{Patch, PatchParams};

use super::*;

fn node(labels: &[(&str, &str)], taints: &[&str]) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some("gpu-1".into());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    n.spec = Some(NodeSpec {
        taints: Some(
            taints
                .iter()
                .map(|k| Taint {
                    key: (*k).to_owned(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                })
                .collect(),
        ),
        ..NodeSpec::default()
    });
    n
}

/// The controller is woken only once the cache holds the change: a
/// reconcile must never see the node as it was before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_up_comes_after_the_cache_holds_the_change() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = kube_standin::ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = server.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    nodes
        .create(&Default::default(), &node(&[("step", "0")], &[]))
        .await
        .unwrap();
    let (wake, mut woken) = futures::channel::mpsc::channel(1);
    let (store, feed) = cache(nodes.clone(), watcher::Config::default(), wake, |_| true);
    store.wait_until_ready().await.unwrap();
    let step = |store: &Store<Node>| {
        store
            .state()
            .first()
            .and_then(|n| n.labels().get("step").cloned())
    };
    assert_eq!(step(&store).as_deref(), Some("0"));
    woken.next().await.unwrap(); // the first list
    for i in 1..=20 {
        let patch = serde_json::json!({ "metadata": { "labels": { "step": i.to_string() } } });
        nodes
            .patch("gpu-1", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), woken.next())
            .await
            .expect("a wake-up for the change")
            .unwrap();
        assert_eq!(
            step(&store),
            Some(i.to_string()),
            "woken before the cache held step {i}"
        );
    }
    feed.abort();
}

#[test]
fn only_node_changes_that_can_change_a_selection_requeue_datasets() {
    let base = selection_key(&node(&[("gpu", "a100")], &[]));
    let own = label::key("ml", "llama");
    assert_eq!(
        selection_key(&node(&[("gpu", "a100"), (own.as_str(), "ready")], &[])),
        base,
        "the operator's own Dataset label"
    );
    assert_ne!(selection_key(&node(&[("gpu", "h100")], &[])), base);
    assert_ne!(selection_key(&node(&[], &[])), base);
    assert_ne!(
        selection_key(&node(&[("gpu", "a100")], &["nvidia.com/gpu"])),
        base
    );
}

/// The IO shell against a mocked API server (tower-test): what a reconcile
/// asks of the API server, request by request.
mod mock_api {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// One request as the API server saw it.
    #[derive(Debug)]
    struct Seen {
        method: String,
        path: String,
        query: String,
        body: Value,
    }

    fn context() -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let settings = Settings {
            agent_namespace: "swarmseed-system".into(),
            control_port: 7400,
            call_timeout: Duration::from_secs(1),
            max_peers: 4,
        };
        let token = ControlToken::new("secret").unwrap();
        let ctx = Context::new(client, settings, token, b"secret".to_vec());
        // No Node, no agent Pod.
        let (nodes, _) = reflector::store::<Node>();
        let (pods, _) = reflector::store::<Pod>();
        assert!(ctx.caches.set(Caches { nodes, pods }).is_ok());
        (Arc::new(ctx), handle)
    }

    fn dataset(spec: Value, extra_meta: Value) -> Arc<DynamicObject> {
        let mut metadata = json!({
            "name": "llama",
            "namespace": "ml",
            "uid": "uid-1",
            "generation": 1,
            "resourceVersion": "7",
            "finalizers": [FINALIZER],
        });
        if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_meta.as_object()) {
            m.extend(extra.clone());
        }
        let obj = json!({
            "apiVersion": "swarmseed.io/v1alpha1",
            "kind": "Dataset",
            "metadata": metadata,
            "spec": spec,
        });
        Arc::new(serde_json::from_value(obj).unwrap())
    }

    /// Answers every request with `answer` (status code and body) until
    /// the reconcile ends; the requests in order.
    async fn serve(
        mut handle: Handle,
        answer: impl Fn(&Seen) -> (u16, Value) + Send + 'static,
    ) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let request = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, body) = answer(&request);
            seen.push(request);
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            respond.send_response(response);
        }
        seen
    }

    /// The object as stored, or an Event as created: echoed back.
    fn echo(seen: &Seen, stored: &Value) -> (u16, Value) {
        if seen.path.contains("/events") {
            return (201, seen.body.clone());
        }
        (200, stored.clone())
    }

    fn stored(obj: &DynamicObject) -> Value {
        serde_json::to_value(obj).unwrap()
    }

    const DATASET_PATH: &str = "/apis/swarmseed.io/v1alpha1/namespaces/ml/datasets/llama";

    fn ready_condition(status: &Value) -> &Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .expect("a Ready condition")
    }

    #[tokio::test]
    async fn an_invalid_spec_is_one_server_side_apply_of_the_status() {
        let (ctx, handle) = context();
        let obj = dataset(
            json!({ "source": { "uri": "ftp://example.org/llama" } }),
            json!({}),
        );
        let body = stored(&obj);
        let server = tokio::spawn(serve(handle, move |s| echo(s, &body)));
        let action = reconcile(obj, ctx.clone()).await.unwrap();
        assert_eq!(action, Action::await_change());
        drop(ctx);
        let seen = server.await.unwrap();
        let patch = &seen[0];
        assert_eq!(patch.method, "PATCH");
        assert_eq!(patch.path, format!("{DATASET_PATH}/status"));
        assert!(
            patch.query.contains("fieldManager=swarmseed-operator"),
            "{}",
            patch.query
        );
        assert!(patch.query.contains("force=true"), "{}", patch.query);
        assert_eq!(patch.body["kind"], "Dataset");
        let status = &patch.body["status"];
        assert_eq!(status["observedGeneration"], 1);
        let ready = ready_condition(status);
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], Reason::InvalidSource.as_str());
        assert!(
            ready["message"].as_str().unwrap().contains("ftp://"),
            "{ready}"
        );
        // Nothing else but Events about it.
        for s in &seen[1..] {
            assert!(s.path.contains("/events"), "unexpected request {s:?}");
        }
    }

    #[tokio::test]
    async fn a_missing_credentials_secret_is_read_once_and_named_in_the_status() {
        let (ctx, handle) = context();
        let obj = dataset(
            json!({ "source": { "uri": "s3://bucket/llama", "secretRef": { "name": "creds" } } }),
            json!({}),
        );
        let body = stored(&obj);
        let server = tokio::spawn(serve(handle, move |s| {
            if s.path.ends_with("/secrets/creds") {
                let missing = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": "secrets \"creds\" not found",
                });
                return (404, missing);
            }
            echo(s, &body)
        }));
        let action = reconcile(obj, ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(decide::LIST_RETRY));
        drop(ctx);
        let seen = server.await.unwrap();
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("GET", "/api/v1/namespaces/ml/secrets/creds")
        );
        assert_eq!(
            (seen[1].method.as_str(), seen[1].path.as_str()),
            ("PATCH", format!("{DATASET_PATH}/status").as_str())
        );
        let ready = ready_condition(&seen[1].body["status"]);
        assert_eq!(ready["reason"], Reason::SourceUnavailable.as_str());
        assert!(
            ready["message"].as_str().unwrap().contains("ml/creds"),
            "{ready}"
        );
    }

    #[tokio::test]
    async fn a_deleted_dataset_without_agents_loses_its_finalizer() {
        let (ctx, handle) = context();
        let obj = dataset(
            json!({ "source": { "uri": "s3://bucket/llama" } }),
            json!({ "deletionTimestamp": "2027-01-01T00:00:00Z" }),
        );
        let mut after = stored(&obj);
        after["metadata"]["finalizers"] = json!([]);
        let server = tokio::spawn(serve(handle, move |s| echo(s, &after)));
        let action = reconcile(obj, ctx.clone()).await.unwrap();
        assert_eq!(action, Action::await_change());
        drop(ctx);
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].method, "PATCH");
        assert_eq!(seen[0].path, DATASET_PATH);
        let ops = seen[0].body.as_array().expect("a JSON patch");
        assert!(
            ops.iter()
                .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
            "{ops:?}"
        );
    }
}
