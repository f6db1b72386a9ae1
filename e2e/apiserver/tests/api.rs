//! The wire behaviour kube-rs clients rely on: Status bodies, subresources,
//! server-side apply, selectors, bookmarks and streaming lists.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::discovery::Discovery;
use kube_standin::{ApiServer, Options};
use serde_json::json;

const CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "gadgets.example.com"},
  "spec": {"group": "example.com", "scope": "Cluster",
    "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
    "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
      "schema": {"openAPIV3Schema": {"type": "object", "properties": {"status": {"type": "object", "properties": {
        "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                       "items": {"type": "object"}}}}}, "x-kubernetes-preserve-unknown-fields": true}}}]}}"#;

async fn start() -> (ApiServer, kube::Client) {
    let opts = Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    };
    let server = ApiServer::start_with("127.0.0.1:0".parse().expect("addr"), opts)
        .await
        .expect("starts");
    let client = server.client().await.expect("client");
    (server, client)
}

fn api_error(r: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn status_bodies_match_the_real_server() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let s = api_error(cms.get("nope").await);
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (404, "NotFound", "configmaps \"nope\" not found")
    );
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "a"}})).expect("cm");
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let s = api_error(cms.create(&PostParams::default(), &cm).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    let s = api_error(cms.replace("a", &PostParams::default(), &stale).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    let bad: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "Bad_Name"}})).expect("cm");
    let s = api_error(cms.create(&PostParams::default(), &bad).await);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let other_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "missing");
    let s = api_error(other_ns.create(&PostParams::default(), &cm).await);
    assert_eq!(
        (s.code, s.message.as_str()),
        (404, "namespaces \"missing\" not found")
    );
    let pods: Api<Pod> = Api::all(client);
    let s = api_error(
        pods.list(&ListParams::default().fields("spec.bogus=1"))
            .await,
    );
    assert_eq!(
        (s.code, s.message.as_str()),
        (400, "field label not supported: spec.bogus")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn crd_resources_are_discovered_and_status_is_applied() {
    let (server, client) = start().await;
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_str(CRD).expect("crd");
    let crd = crds
        .create(&PostParams::default(), &crd)
        .await
        .expect("crd created");
    assert_eq!(
        crd.data["status"]["conditions"][1]["type"],
        json!("Established")
    );

    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.plural == "gadgets")
        .expect("gadgets discovered");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));

    let gadgets: Api<DynamicObject> = Api::all_with(client, &ar);
    let pp = PatchParams::apply("op").force();
    let applied = json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"n": 1}});
    let g = gadgets
        .patch("g", &pp, &Patch::Apply(&applied))
        .await
        .expect("apply creates");
    assert_eq!(g.metadata.generation, Some(1));
    let status = |t: &str, s: &str| {
        json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"},
        "status": {"conditions": [{"type": t, "status": s}]}})
    };
    gadgets
        .patch_status("g", &pp, &Patch::Apply(status("Ready", "False")))
        .await
        .expect("status");
    let other = PatchParams::apply("other").force();
    gadgets
        .patch_status("g", &other, &Patch::Apply(status("Degraded", "False")))
        .await
        .expect("status 2");
    let g = gadgets
        .patch_status("g", &pp, &Patch::Apply(status("Ready", "True")))
        .await
        .expect("status 3");
    let types: Vec<(String, String)> = g.data["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().into(),
                c["status"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("Ready".into(), "True".into()),
            ("Degraded".into(), "False".into())
        ],
        "conditions merge by type"
    );
    assert_eq!(
        g.metadata.generation,
        Some(1),
        "status writes leave generation alone"
    );
    let spec = json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"n": 2}});
    let g = gadgets
        .patch("g", &pp, &Patch::Apply(&spec))
        .await
        .expect("spec change");
    assert_eq!(g.metadata.generation, Some(2));
    assert_eq!(
        g.data["status"]["conditions"].as_array().map(Vec::len),
        Some(2),
        "main apply keeps status"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn watches_send_bookmarks_initial_events_and_selector_transitions() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mk = |name: &str, tier: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": tier}}}))
            .expect("cm")
    };
    cms.create(&PostParams::default(), &mk("a", "web"))
        .await
        .expect("a");
    let list = cms
        .list(&ListParams::default().labels("tier in (web)"))
        .await
        .expect("list");
    let rv = list.metadata.resource_version.clone().expect("rv");
    assert_eq!(list.items.len(), 1);

    let wp = WatchParams::default().labels("tier=web").timeout(10);
    let mut events = cms.watch(&wp, &rv).await.expect("watch").boxed();
    cms.create(&PostParams::default(), &mk("b", "web"))
        .await
        .expect("b");
    let patch = json!({"metadata": {"labels": {"tier": "db"}}});
    cms.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("relabel");
    let mut seen = Vec::new();
    let mut bookmarked = false;
    while seen.len() < 2 || !bookmarked {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("event")
            .expect("ok")
            .expect("open");
        match ev {
            WatchEvent::Added(c) => {
                seen.push(format!("ADDED {}", c.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Deleted(c) => {
                seen.push(format!("DELETED {}", c.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Bookmark(_) => bookmarked = !seen.is_empty(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["ADDED b", "DELETED a"],
        "leaving the selector is a DELETED event"
    );

    let streaming = WatchParams::streaming_lists();
    let events: Vec<_> = cms
        .watch(&streaming, "0")
        .await
        .expect("stream")
        .boxed()
        .take(3)
        .try_collect()
        .await
        .expect("events");
    assert!(
        matches!(&events[2], WatchEvent::Bookmark(b) if b.metadata.annotations.contains_key("k8s.io/initial-events-end"))
    );
    server.shutdown().await;
}
