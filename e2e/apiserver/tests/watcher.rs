//! kube-runtime's watcher + reflector against the stand-in, through churn
//! and a forced watch expiry (410 Gone), ends with the server's state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_standin::{ApiServer, Options};

fn cm(name: &str, v: usize) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"churn": "yes"}},
        "data": {"v": v.to_string()},
    }))
    .expect("configmap")
}

type Snapshot = BTreeMap<String, String>;

fn by_name<'a>(items: impl Iterator<Item = &'a ConfigMap>) -> Snapshot {
    items
        .map(|c| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                c.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_converges_through_churn_and_expiry() {
    let options = Options {
        watch_history: 50,
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    };
    let server = ApiServer::start_with("127.0.0.1:0".parse().expect("addr"), options)
        .await
        .expect("starts");
    let client = server.client().await.expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client, "default");

    let (reader, writer) = reflector::store();
    let inits = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let (i2, e2) = (inits.clone(), errors.clone());
    let stream = watcher(api.clone(), watcher::Config::default().labels("churn=yes"))
        .default_backoff()
        .reflect(writer)
        .for_each(move |ev| {
            match ev {
                Ok(watcher::Event::Init) => {
                    i2.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => {
                    e2.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
            }
            futures::future::ready(())
        });
    let driver = tokio::spawn(stream);

    let pp = PostParams::default();
    for round in 0..3 {
        for i in 0..40 {
            let name = format!("cm-{i}");
            match round {
                0 => {
                    api.create(&pp, &cm(&name, 0)).await.expect("create");
                }
                1 if i % 3 == 0 => {
                    api.delete(&name, &DeleteParams::default())
                        .await
                        .expect("delete");
                }
                _ => {
                    let patch = serde_json::json!({"data": {"v": format!("{round}-{i}")}});
                    let _ = api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                }
            }
        }
        if round == 1 {
            // Every resourceVersion the watcher holds is now too old.
            server.expire_watch_history();
        }
    }
    // A window of 50 events is overrun by this burst too.
    for i in 40..120 {
        api.create(&pp, &cm(&format!("cm-{i}"), 1))
            .await
            .expect("create");
        if i % 2 == 0 {
            api.delete(&format!("cm-{i}"), &DeleteParams::default())
                .await
                .expect("delete");
        }
    }

    let want = by_name(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter(),
    );
    assert_eq!(want.len(), 40 - 14 + 40);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = by_name(reader.state().iter().map(|c| c.as_ref()));
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector never converged: {} vs {} objects",
            got.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        inits.load(Ordering::SeqCst) >= 2,
        "the 410 made the watcher re-list"
    );
    assert!(
        errors.load(Ordering::SeqCst) >= 1,
        "the watcher saw the 410"
    );
    driver.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_resource_versions_answer_410() {
    let server = ApiServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("starts");
    let api: Api<ConfigMap> = Api::namespaced(server.client().await.expect("client"), "default");
    let created = api
        .create(&PostParams::default(), &cm("a", 0))
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    server.expire_watch_history();
    let exact = ListParams::default()
        .at(&rv)
        .matching(kube::api::VersionMatch::Exact);
    match api.list(&exact).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    let mut events = api
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event")
    {
        Some(Ok(kube::api::WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    server.shutdown().await;
}
