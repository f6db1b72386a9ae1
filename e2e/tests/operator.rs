//! The product as its users meet it: kubectl applies Datasets, the operator
//! drives the real agents on a 4-node cluster, nodes get labelled, pods'
//! directories fill, deletion cleans up. Run by the README's test command
//! after `cargo build --release --bins`.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use swarmseed_harness::origin::dataset::{DatasetSpec, generate_dataset, tree_digest};
use swarmseed_harness::seeding::{Binaries, SeedCluster, condition, dataset_yaml};
use swarmseed_harness::{ClusterSpec, NodeSpec};

const MIB: u64 = 1 << 20;
const NS: &str = "ml";

fn spec_4_nodes(gpu: &[usize]) -> ClusterSpec {
    let bins = Binaries::beside_e2e().unwrap();
    let mut spec = ClusterSpec::new(4, &bins.agent);
    spec.link_mbit = Some(1000);
    spec.origin_link_mbit = Some(1000);
    spec.nodes = (0..4)
        .map(|i| {
            let n = NodeSpec::new(format!("node-{i}"));
            if gpu.contains(&i) {
                n.label("gpu", "true")
            } else {
                n
            }
        })
        .collect();
    spec.agent_args = vec!["--fallback-after".into(), "5s".into()];
    spec
}

async fn start(gpu: &[usize]) -> SeedCluster {
    swarmseed_harness::init_crypto();
    let bins = Binaries::beside_e2e().unwrap();
    let c = SeedCluster::start(spec_4_nodes(gpu), bins).await.unwrap();
    c.kubectl(&["create", "namespace", NS]).await.unwrap();
    c
}

fn model_like(seed: u64) -> DatasetSpec {
    DatasetSpec {
        seed,
        big_files: 2,
        big_file_size: 12 * MIB + 4321,
        small_files: 200,
        small_file_min: 0,
        small_file_max: 48 * 1024,
        small_dirs: 8,
    }
}

async fn status(c: &SeedCluster, name: &str) -> Value {
    c.dataset_status(NS, name).await.unwrap()
}

/// Waits for `condition=Ready` with kubectl, as a user would; on failure
/// shows the status and the operator's log.
async fn kubectl_wait_ready(c: &SeedCluster, name: &str, timeout_s: u32) {
    let target = format!("dataset/{name}");
    let timeout = format!("--timeout={timeout_s}s");
    let r = c
        .kubectl(&["wait", "-n", NS, "--for=condition=Ready", &target, &timeout])
        .await;
    if let Err(e) = r {
        panic!(
            "{e}\nstatus: {:#}\noperator log:\n{}",
            status(c, name).await,
            c.operator_log("operator-0")
        );
    }
}

fn assert_same_tree(expected: &Path, actual: &Path) {
    let want = tree_digest(expected).unwrap();
    let got = tree_digest(actual).unwrap_or_else(|e| panic!("reading {}: {e}", actual.display()));
    assert_eq!(want.root(), got.root(), "{} differs", actual.display());
}

async fn set_gpu_label(c: &SeedCluster, node: &str, on: bool) {
    let arg = if on { "gpu=true" } else { "gpu-" };
    c.kubectl(&["label", "node", node, arg, "--overwrite"])
        .await
        .unwrap();
}

/// Acceptance 1–4: HTTP origin, 3 of 4 nodes; a 4th node joins from peers;
/// a node leaves; a new revision swaps atomically and moves only what
/// changed; deletion cleans every node, label and the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_seeds_its_nodes_follows_the_selector_updates_atomically_and_cleans_up() {
    let mut c = start(&[0, 1, 2]).await;
    let src = c.cluster.work_dir().join("origin-http");
    generate_dataset(&src, &model_like(1)).unwrap();
    let origin = c.cluster.start_http_origin(&src, 8080).await.unwrap();
    let manifest = dataset_yaml(
        NS,
        "weights",
        &json!({
            "source": { "uri": format!("{}/", origin.url()) },
            "nodeSelector": { "gpu": "true" },
            "chunkSize": "1Mi",
            "origin": { "maxFetchers": 2 },
        }),
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .await
        .unwrap();
    kubectl_wait_ready(&c, "weights", 180).await;

    // Three nodes hold identical trees; the fourth holds nothing.
    for n in ["node-0", "node-1", "node-2"] {
        assert_same_tree(&src, &c.published_dir(n, NS, "weights").unwrap());
    }
    assert!(!c.published_dir("node-3", NS, "weights").unwrap().exists());
    let key = swarmseed_core::label::key(NS, "weights");
    assert_eq!(
        c.labelled_nodes(&key).await.unwrap(),
        ["node-0", "node-1", "node-2"].map(String::from).into()
    );
    let s = status(&c, "weights").await;
    let total = s["totalBytes"].as_u64().unwrap();
    assert_eq!(total, tree_digest(&src).unwrap().total_bytes());
    let from_origin = s["bytesFromOrigin"].as_u64().unwrap();
    assert!(
        from_origin as f64 <= 1.02 * total as f64,
        "origin {from_origin} for {total}"
    );
    let served = origin.stats().await.unwrap();
    assert!(
        served.bytes_served as f64 <= 1.02 * total as f64,
        "origin served {served:?} for {total}"
    );
    assert_eq!(
        s["nodes"],
        json!({"desired": 3, "ready": 3, "seeding": 0, "failed": 0})
    );
    assert_eq!(s["nodeLabel"], json!(key));
    assert_eq!(s["path"], json!("/var/lib/swarmseed/datasets/ml/weights"));
    let table = c
        .kubectl(&["get", "datasets", "-n", NS])
        .await
        .unwrap()
        .stdout;
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("READY") && table.contains("SIZE"), "{table}");
    assert!(table.contains("3/3"), "{table}");

    // A fourth node starts matching: it is seeded from its peers.
    set_gpu_label(&c, "node-3", true).await;
    c.wait_for(
        "node-3 seeded and labelled",
        Duration::from_secs(120),
        async || {
            Ok(c.labelled_nodes(&key)
                .await
                .unwrap()
                .contains("node-3")
                .then_some(()))
        },
    )
    .await
    .unwrap();
    assert_same_tree(&src, &c.published_dir("node-3", NS, "weights").unwrap());
    let after = origin.stats().await.unwrap();
    assert!(
        (after.bytes_served - served.bytes_served) as f64 <= 0.02 * total as f64,
        "the new node read {} bytes from the origin",
        after.bytes_served - served.bytes_served
    );

    // A node stops matching: its copy and its label go.
    set_gpu_label(&c, "node-1", false).await;
    let gone = c.published_dir("node-1", NS, "weights").unwrap();
    c.wait_for("node-1 released", Duration::from_secs(60), async || {
        let unlabelled = !c.labelled_nodes(&key).await.unwrap().contains("node-1");
        Ok((unlabelled && !gone.exists()).then_some(()))
    })
    .await
    .unwrap();
    let revisions = c
        .cluster
        .node("node-1")
        .unwrap()
        .root
        .join("revisions/ml/weights");
    assert!(!revisions.exists(), "{} is left", revisions.display());

    // A new revision: a few files change. Readers on every node see the
    // old tree or the new one, never a mix; only changed chunks move.
    let old_root = tree_digest(&src).unwrap().root();
    let before = origin.stats().await.unwrap().bytes_served;
    let changed = change_files(&src);
    let new_root = tree_digest(&src).unwrap().root();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = ["node-0", "node-2", "node-3"]
        .iter()
        .map(|n| {
            let dir = c.published_dir(n, NS, "weights").unwrap();
            let (stop, old, new) = (stop.clone(), old_root.clone(), new_root.clone());
            std::thread::spawn(move || read_consistently(&dir, &stop, &old, &new))
        })
        .collect();
    c.kubectl(&[
        "annotate",
        "dataset",
        "weights",
        "-n",
        NS,
        "swarmseed.io/relist=1",
    ])
    .await
    .unwrap();
    c.wait_for(
        "the new revision everywhere",
        Duration::from_secs(120),
        async || {
            let s = status(&c, "weights").await;
            let ok = s["nodes"]["ready"] == 3
                && condition(&s, "Ready").is_some_and(|r| r["status"] == "True")
                && ["node-0", "node-2", "node-3"].iter().all(|n| {
                    tree_digest(&c.published_dir(n, NS, "weights").unwrap())
                        .is_ok_and(|t| t.root() == new_root)
                });
            Ok(ok.then_some(()))
        },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut seen = 0;
    for r in readers {
        seen += r.join().unwrap();
    }
    assert!(seen > 0, "the readers read nothing");
    let moved = origin.stats().await.unwrap().bytes_served - before;
    assert!(
        moved <= changed + 5 * MIB,
        "the origin served {moved} bytes for {changed} changed bytes"
    );

    // Deletion: every directory and label, then the object.
    c.delete_dataset(NS, "weights").await.unwrap();
    assert!(c.dataset(NS, "weights").await.unwrap().is_none());
    assert!(c.labelled_nodes(&key).await.unwrap().is_empty());
    for n in c.cluster.nodes() {
        let d = n.root.join("datasets/ml/weights");
        assert!(!d.exists(), "{} is left", d.display());
    }
    c.cluster.stop().await;
}

/// Rewrites a few small files and one big file's tail; returns the bytes
/// changed (rounded up to whole files).
fn change_files(src: &Path) -> u64 {
    let mut changed = 0;
    let mut small: Vec<PathBuf> = walk(&src.join("small"));
    small.sort();
    for p in small.iter().take(5) {
        let data = vec![0x5a; 7000];
        std::fs::write(p, &data).unwrap();
        changed += data.len() as u64;
    }
    changed
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Reads the published tree over and over, resolving the directory once
/// per pass as a pod's mount does; every pass must be the old or the new
/// revision. Returns the number of passes.
fn read_consistently(dir: &Path, stop: &AtomicBool, old: &str, new: &str) -> usize {
    let mut passes = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(resolved) = std::fs::canonicalize(dir) else {
            continue;
        };
        let root = tree_digest(&resolved).unwrap().root();
        assert!(
            root == old || root == new,
            "{} showed a mixed tree",
            resolved.display()
        );
        passes += 1;
    }
    passes
}

async fn degraded(c: &SeedCluster, name: &str) -> (String, String) {
    c.wait_for(
        &format!("{name} Degraded"),
        Duration::from_secs(90),
        async || {
            let s = status(c, name).await;
            Ok(condition(&s, "Degraded")
                .filter(|d| d["status"] == "True")
                .map(|d| {
                    (
                        d["reason"].as_str().unwrap_or_default().to_owned(),
                        d["message"].as_str().unwrap_or_default().to_owned(),
                    )
                }))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nstatus: {:#}",
            futures::executor::block_on(status(c, name))
        )
    })
}

/// Acceptance 1 (S3 with a Secret), 6 (invalid specs say why and publish
/// nothing) and 7 (the agents refuse commands without the credential).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_with_a_secret_seeds_and_every_unusable_spec_says_why() {
    let mut c = start(&[0, 1, 2]).await;
    let src = c.cluster.work_dir().join("origin-s3");
    generate_dataset(&src, &DatasetSpec::tiny(7)).unwrap();
    let s3 = c.cluster.start_s3_origin("models").await.unwrap();
    s3.upload_dir(&src, "llama/").await.unwrap();
    let http = c.cluster.start_http_origin(&src, 8080).await.unwrap();
    let keys = [
        ("AWS_ACCESS_KEY_ID", "swarmseed"),
        ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
    ];
    c.create_secret(NS, "s3-creds", &keys).await.unwrap();
    let zeros = format!("blake3:{}", "0".repeat(64));
    let unreachable = format!("http://{}:9/data/", c.cluster.origin_address());
    let datasets = [
        (
            "from-s3",
            json!({
                "source": {
                    "uri": "s3://models/llama/",
                    "endpoint": s3.endpoint(),
                    "region": "us-east-1",
                    "secretRef": { "name": "s3-creds" },
                },
                "nodeSelector": { "gpu": "true" },
            }),
        ),
        (
            "bad-scheme",
            json!({ "source": { "uri": "ftp://example/data" } }),
        ),
        (
            "bad-digest",
            json!({ "source": { "uri": format!("{}/", http.url()) }, "digest": "blake3:xyz" }),
        ),
        (
            "no-nodes",
            json!({ "source": { "uri": format!("{}/", http.url()) }, "nodeSelector": { "gpu": "h100" } }),
        ),
        ("unreachable", json!({ "source": { "uri": unreachable } })),
        (
            "mismatch",
            json!({ "source": { "uri": format!("{}/", http.url()) }, "digest": zeros }),
        ),
    ];
    let manifests: Vec<String> = datasets
        .iter()
        .map(|(name, spec)| dataset_yaml(NS, name, spec))
        .collect();
    c.kubectl_stdin(&["apply", "-f", "-"], &manifests.join("\n"))
        .await
        .unwrap();

    kubectl_wait_ready(&c, "from-s3", 180).await;
    for n in ["node-0", "node-1", "node-2"] {
        assert_same_tree(&src, &c.published_dir(n, NS, "from-s3").unwrap());
    }
    assert!(!c.published_dir("node-3", NS, "from-s3").unwrap().exists());
    let s = status(&c, "from-s3").await;
    let total = s["totalBytes"].as_u64().unwrap();
    assert!(
        s["bytesFromOrigin"].as_u64().unwrap() as f64 <= 1.02 * total as f64,
        "{s:#}"
    );

    for (name, want, says) in [
        ("bad-scheme", "InvalidSource", "ftp://example/data"),
        ("bad-digest", "InvalidSource", "blake3:xyz"),
        ("no-nodes", "NoMatchingNodes", "gpu=h100"),
        ("unreachable", "SourceUnavailable", ":9"),
        ("mismatch", "DigestMismatch", &zeros),
    ] {
        let (reason, message) = if name == "no-nodes" {
            // Not a fault of the cluster: Ready=False says it.
            let s = c
                .wait_for(
                    "no-nodes Ready=False",
                    Duration::from_secs(60),
                    async || {
                        let s = status(&c, name).await;
                        Ok(condition(&s, "Ready")
                            .filter(|r| r["reason"] == want)
                            .cloned())
                    },
                )
                .await
                .unwrap();
            (
                s["reason"].as_str().unwrap().to_owned(),
                s["message"].as_str().unwrap().to_owned(),
            )
        } else {
            degraded(&c, name).await
        };
        assert_eq!(reason, want, "{name}: {message}");
        assert!(
            message.contains(says),
            "{name}: {message:?} does not mention {says:?}"
        );
        for n in c.cluster.nodes() {
            let d = n.root.join("datasets").join(NS).join(name);
            assert!(!d.exists(), "{name} published {}", d.display());
        }
    }

    // The agents take commands only with the operator's credential.
    let node = &c.cluster.nodes()[0];
    let url = format!("http://{}", node.control_addr());
    let mut client = swarmseed_proto::pb::agent_control_client::AgentControlClient::connect(url)
        .await
        .unwrap();
    let err = client
        .remove_dataset(swarmseed_proto::pb::RemoveDatasetRequest {
            dataset: Some(swarmseed_proto::pb::DatasetRef {
                namespace: NS.into(),
                name: "from-s3".into(),
                uid: String::new(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(c.published_dir("node-0", NS, "from-s3").unwrap().exists());
    drop((s3, http));
    c.cluster.stop().await;
}

/// Acceptance 5: two operator replicas, only the lease holder acts; the
/// leader is killed with SIGKILL mid-seed and a new process started; the
/// seeding completes and nothing verified is transferred again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_operator_is_replaced_and_nothing_is_transferred_twice() {
    let mut c = start(&[0, 1, 2, 3]).await;
    let first = c.operator_pids()[0];
    let second = c.start_operator("operator-1", &[]).unwrap();
    let lease_holder = async |c: &SeedCluster| -> Option<String> {
        let out = c
            .kubectl(&[
                "get",
                "lease",
                "swarmseed-operator",
                "-n",
                "swarmseed-system",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned()).filter(|s| !s.is_empty())
    };
    let holder = c
        .wait_for("a lease holder", Duration::from_secs(30), async || {
            Ok(lease_holder(&c).await)
        })
        .await
        .unwrap();
    // Either replica may win the first election; the other stands by.
    let leader = match holder.as_str() {
        "operator-0" => first,
        "operator-1" => second,
        other => panic!("unexpected lease holder {other:?}"),
    };

    let src = c.cluster.work_dir().join("origin-big");
    generate_dataset(
        &src,
        &DatasetSpec {
            big_files: 3,
            big_file_size: 24 * MIB,
            ..model_like(3)
        },
    )
    .unwrap();
    let origin = c.cluster.start_http_origin(&src, 8080).await.unwrap();
    let manifest = dataset_yaml(
        NS,
        "big",
        &json!({
            "source": { "uri": format!("{}/", origin.url()) },
            "chunkSize": "1Mi",
            // Slow the origin so the operator dies mid-seed.
            "origin": { "maxFetchers": 4, "bandwidth": "4Mi" },
        }),
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .await
        .unwrap();
    c.wait_for("seeding under way", Duration::from_secs(60), async || {
        let s = status(&c, "big").await;
        Ok((s["bytesFromOrigin"].as_u64().unwrap_or(0) > 0).then_some(()))
    })
    .await
    .unwrap();
    let generation_before = plan_generations(&c).await;
    c.kill_operator(leader);
    c.start_operator("operator-2", &[]).unwrap();
    kubectl_wait_ready(&c, "big", 300).await;

    let new_holder = lease_holder(&c).await.unwrap();
    assert_ne!(new_holder, holder);
    // Every Event came from whoever held the lease at the time: the
    // standby never acted while the first leader led.
    let reporters: BTreeSet<String> = c
        .events(NS, "{.reportingInstance}")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(reporters.contains(&holder), "{reporters:?}");
    assert!(
        reporters.iter().all(|r| *r == holder || *r == new_holder),
        "a replica without the lease acted: {reporters:?}"
    );

    let s = status(&c, "big").await;
    let total = s["totalBytes"].as_u64().unwrap();
    let from_origin = s["bytesFromOrigin"].as_u64().unwrap();
    let from_peers = s["bytesFromPeers"].as_u64().unwrap();
    assert!(from_origin as f64 <= 1.02 * total as f64, "{s:#}");
    assert_eq!(
        from_origin + from_peers,
        4 * total,
        "a chunk moved twice: {s:#}"
    );
    assert!(origin.stats().await.unwrap().bytes_served as f64 <= 1.02 * total as f64);
    for n in c.cluster.nodes() {
        assert_same_tree(&src, &n.root.join("datasets").join(NS).join("big"));
    }
    // The new leader continued the agents' plan: the same fetchers.
    let after = plan_generations(&c).await;
    assert!(after >= generation_before, "{after} < {generation_before}");
    c.cluster.stop().await;
}

/// The highest plan generation any agent follows for ml/big.
async fn plan_generations(c: &SeedCluster) -> u64 {
    c.agent_progress(NS, "big")
        .await
        .into_iter()
        .filter_map(|(_, p)| p.map(|p| p.plan_generation))
        .max()
        .unwrap_or(0)
}
