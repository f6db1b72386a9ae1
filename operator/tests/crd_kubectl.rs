//! The generated CRD through the real `kubectl` (against the test API
//! server): what a user types and sees.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube_standin::{ApiServer, Kubectl};
use swarmseed_crd::Dataset;
use swarmseed_operator::status::{self, NodeReport, RevisionInfo, StatusInput};
use swarmseed_proto::pb::{DatasetProgress, DatasetState};

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/datasets.swarmseed.io.yaml"
);

const DATASET: &str = r#"apiVersion: swarmseed.io/v1alpha1
kind: Dataset
metadata: {name: llama, namespace: default}
spec:
  source: {uri: "s3://models/llama", endpoint: "http://127.0.0.1:9000", secretRef: {name: s3}}
  nodeSelector: {gpu: "true"}
  chunkSize: 4Mi
  origin: {maxFetchers: 2}
"#;

/// Runs kubectl and returns stdout; panics with stderr on failure.
async fn kubectl(k: &Kubectl, args: &[&str]) -> String {
    let out = k.run(args).await.expect("kubectl runs");
    assert!(
        out.ok,
        "kubectl {args:?} failed: {}{}",
        out.stderr, out.stdout
    );
    out.stdout.trim_end().to_owned()
}

fn ready(node_origin: u64, node_peers: u64, revision: &str) -> NodeReport {
    let mut p = DatasetProgress {
        revision: revision.into(),
        published_revision: revision.into(),
        bytes_from_origin: node_origin,
        bytes_from_peers: node_peers,
        content_digest: vec![7; 32],
        ..Default::default()
    };
    p.set_state(DatasetState::Ready);
    NodeReport::Progress(Some(Box::new(p)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_crd_and_shows_dataset_progress() {
    if !Kubectl::installed() {
        eprintln!("!!!!! SKIPPED: no `kubectl` on PATH !!!!!");
        return;
    }
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let k = server.kubectl(tmp.path()).unwrap();
    let manifest = write(tmp.path(), "dataset.yaml", DATASET);

    assert_eq!(
        kubectl(&k, &["apply", "-f", CRD]).await,
        "customresourcedefinition.apiextensions.k8s.io/datasets.swarmseed.io created"
    );
    assert_eq!(
        kubectl(&k, &["apply", "-f", &manifest]).await,
        "dataset.swarmseed.io/llama created"
    );

    // The operator's status write: server-side apply on /status.
    let client = server.client().await.unwrap();
    let api: Api<Dataset> = Api::namespaced(client, "default");
    let ds = tokio::time::timeout(Duration::from_secs(10), api.get("llama"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ds.spec.validate().unwrap().chunk_size, Some(4 << 20));
    let revision = "ab".repeat(32);
    let info = RevisionInfo {
        revision: revision.clone(),
        total_bytes: 4 << 30,
        files: 3,
        chunk_size: 4 << 20,
        ..RevisionInfo::default()
    };
    let nodes: BTreeMap<String, NodeReport> = [
        ("gpu-1".to_owned(), ready(2 << 30, 2 << 30, &revision)),
        (
            "gpu-2".to_owned(),
            ready((2 << 30) + (40 << 20), 2 << 30, &revision),
        ),
    ]
    .into();
    let st = status::compute(&StatusInput {
        namespace: "default",
        name: "llama",
        selector: "every node",
        generation: ds.metadata.generation,
        nodes: &nodes,
        revision: Some(&info),
        problem: None,
        previous: ds.status.as_ref(),
        now: Time(Timestamp::now()),
    });
    let patch = serde_json::json!({
        "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset", "status": st,
    });
    let pp = PatchParams::apply("swarmseed-operator").force();
    tokio::time::timeout(
        Duration::from_secs(10),
        api.patch_status("llama", &pp, &Patch::Apply(&patch)),
    )
    .await
    .unwrap()
    .unwrap();

    let table = kubectl(&k, &["get", "dset"]).await;
    let wait = [
        "wait",
        "--for=condition=Ready",
        "dataset/llama",
        "--timeout=10s",
    ];
    let waited = kubectl(&k, &wait).await;
    let label = kubectl(
        &k,
        &[
            "get",
            "datasets.swarmseed.io",
            "llama",
            "-o",
            "jsonpath={.status.nodeLabel} {.status.path}",
        ],
    )
    .await;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "READY", "SIZE", "ORIGIN", "AGE"],
        "{table}"
    );
    assert_eq!(&lines[1][..4], ["llama", "2/2", "4GiB", "1.01x"], "{table}");
    assert_eq!(waited, "dataset.swarmseed.io/llama condition met");
    assert_eq!(
        label,
        format!(
            "{} /var/lib/swarmseed/datasets/default/llama",
            swarmseed_core::label::key("default", "llama")
        )
    );
    server.shutdown().await;
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write manifest");
    p.display().to_string()
}
