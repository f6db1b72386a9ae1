//! The reconciler against the test API server: what a user sees for a
//! Dataset that cannot be seeded, and that deletion goes through.

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use swarmseed_crd::Dataset;
use swarmseed_operator::controller::FINALIZER;

mod support;
use support::{dataset, wait_for};

/// (Ready status, reason, message) once Ready is reported.
async fn ready_condition(api: &Api<Dataset>, name: &str) -> (String, String, String) {
    wait_for("the Ready condition", async || {
        let ds = api.get(name).await.ok()?;
        let c = ds
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        Some((c.status, c.reason, c.message))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_datasets_say_why_and_can_be_deleted() {
    let (server, client) = support::api_server_with_crd().await;
    let operator = support::start_operator(&client, 7400);

    let api: Api<Dataset> = Api::namespaced(client.clone(), "default");
    // The stand-in does not run CEL, so the operator's own check answers.
    let bad = dataset(
        "bad",
        serde_json::json!({ "source": { "uri": "s3://b/p" }, "chunkSize": "3Mi" }),
    );
    api.create(&PostParams::default(), &bad).await.unwrap();
    let (status, reason, message) = ready_condition(&api, "bad").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidSource")
    );
    assert_eq!(
        message,
        "chunkSize 3145728 is not a power of two from 64Ki to 256Mi"
    );
    let ds = api.get("bad").await.unwrap();
    assert_eq!(ds.finalizers(), [FINALIZER]);
    assert_eq!(
        ds.status.unwrap().observed_generation,
        ds.metadata.generation
    );

    // A source nobody serves: listing fails after bounded retries.
    let gone = dataset(
        "gone",
        serde_json::json!({ "source": { "uri": "http://127.0.0.1:1/data.bin" } }),
    );
    api.create(&PostParams::default(), &gone).await.unwrap();
    let (status, reason, message) = ready_condition(&api, "gone").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SourceUnavailable"),
        "{message}"
    );

    // Deletion: no agent holds anything, so our finalizer goes at once.
    for name in ["bad", "gone"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for("the Dataset to go", async || {
            api.get_opt(name).await.ok().filter(Option::is_none)
        })
        .await;
    }
    operator.abort();
    server.shutdown().await;
}

/// A Dataset the API server accepts must never stop the operator from
/// reconciling the others. `origin.bandwidth: 3000000000` is valid for the
/// CRD (int64) but did not fit the operator's 32-bit field: a restarted
/// operator failed its initial list and reconciled no Dataset at all. A
/// Dataset whose spec the operator cannot read at all (here: a value the
/// stand-in lets through, as a schema from another version would) is
/// reported on itself, and one with a status written by another version is
/// reconciled as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_dataset_blocks_no_other() {
    use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
    let (server, client) = support::api_server_with_crd().await;
    let resource = ApiResource::erase::<Dataset>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    // Raw objects: the typed Dataset cannot hold what the unreadable one
    // says.
    let create = async |name: &str, spec: serde_json::Value, finalizers: &[&str]| {
        let mut obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset",
            "metadata": { "name": name, "namespace": "default" },
            "spec": spec,
        }))
        .unwrap();
        if !finalizers.is_empty() {
            obj.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
        }
        raw.create(&PostParams::default(), &obj).await.unwrap();
    };
    // Nobody serves these sources: each readable Dataset ends up
    // SourceUnavailable, which shows it was reconciled.
    let source = |path: &str| serde_json::json!({ "uri": format!("http://127.0.0.1:1/{path}") });
    create(
        "big-bandwidth",
        serde_json::json!({ "source": source("a"), "origin": { "bandwidth": 3_000_000_000u64 } }),
        &[],
    )
    .await;
    create(
        "unreadable",
        serde_json::json!({ "source": source("b"), "origin": { "maxFetchers": 5_000_000_000u64 } }),
        &[FINALIZER],
    )
    .await;
    create("plain", serde_json::json!({ "source": source("c") }), &[]).await;
    create(
        "newer-status",
        serde_json::json!({ "source": source("d") }),
        &[],
    )
    .await;
    let newer = serde_json::json!({ "status": { "nodeProgress": [
        { "node": "n1", "state": "SomeFutureState" }
    ] } });
    raw.patch_status(
        "newer-status",
        &PatchParams::default(),
        &Patch::Merge(&newer),
    )
    .await
    .unwrap();

    // The operator starts with all of them present.
    let operator = support::start_operator(&client, 7400);

    let degraded = async |name: &str| {
        wait_for(&format!("the Degraded condition of {name}"), async || {
            let obj = raw.get(name).await.ok()?;
            let c = obj.data["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Degraded")?
                .clone();
            Some((
                c["status"].as_str()?.to_owned(),
                c["reason"].as_str()?.to_owned(),
                c["message"].as_str()?.to_owned(),
            ))
        })
        .await
    };
    for name in ["big-bandwidth", "plain", "newer-status"] {
        let (status, reason, message) = degraded(name).await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "SourceUnavailable"),
            "{name}: {message}"
        );
    }
    let (status, reason, message) = degraded("unreadable").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.contains("spec.origin.maxFetchers"),
        "the message names the field: {message}"
    );

    // Deletion goes through for all of them, the unreadable one included.
    for name in ["big-bandwidth", "unreadable", "plain", "newer-status"] {
        raw.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for(&format!("{name} to go"), async || {
            raw.get_opt(name).await.ok().filter(Option::is_none)
        })
        .await;
    }
    operator.abort();
    server.shutdown().await;
}
