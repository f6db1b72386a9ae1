//! Rows: what the origin holds or does that the product must refuse or
//! survive.
//!
//! - `unsafe_keys`: S3 keys that are not the names they would be listed
//!   under (a leading `/`, a trailing `/` on data, a segment longer than
//!   255 bytes): the Dataset shows `InvalidSource` naming the key and
//!   nothing is written on any node; an empty `e/` key is a directory
//!   marker, not an empty file.
//! - `origin_changed_before_read` / `origin_changed_during_read`: a file
//!   replaced at the HTTP origin after it was listed, before and while it
//!   is read: `SourceChanged` naming the file, no tree published on any
//!   node, and a relist seeds the new content.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use swarmseed_harness::origin::s3::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use swarmseed_harness::origin::tree_digest;
use swarmseed_harness::seeding::{Binaries, SeedCluster, dataset_yaml};
use swarmseed_harness::{ClusterSpec, NetworkMode};

const NS: &str = "faults";
const MIB: usize = 1 << 20;

/// Three nodes with the real agents and operator, or `None` (SKIP) where
/// namespaces cannot be made.
async fn cluster(row: &str) -> Option<SeedCluster> {
    if let Some(reason) = swarmseed_harness::netns::unavailable_reason() {
        eprintln!("SKIP {row}: {reason}");
        return None;
    }
    swarmseed_harness::init_crypto();
    let bins = Binaries::beside_e2e().unwrap();
    let mut spec = ClusterSpec::new(3, &bins.agent);
    spec.network = NetworkMode::Namespaces;
    spec.link_mbit = Some(1000);
    spec.origin_link_mbit = Some(1000);
    spec.agent_args = ["--fallback-after", "5s", "--origin-timeout", "5s"]
        .map(String::from)
        .to_vec();
    let c = SeedCluster::start(spec, bins).await.unwrap();
    c.kubectl(&["create", "namespace", NS]).await.unwrap();
    Some(c)
}

async fn apply(c: &SeedCluster, name: &str, spec: &Value) {
    c.kubectl_stdin(&["apply", "-f", "-"], &dataset_yaml(NS, name, spec))
        .await
        .unwrap();
}

/// The Dataset's condition `type` as (status, reason, message).
async fn condition(c: &SeedCluster, name: &str, type_: &str) -> Option<(String, String, String)> {
    let ds = c.dataset(NS, name).await.ok()??;
    let found = ds["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == type_)?
        .clone();
    let text = |k: &str| found[k].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

/// Waits until Degraded=True with `reason`; returns its message. Fails the
/// row with the operator's log otherwise.
async fn degraded(c: &SeedCluster, name: &str, reason: &str, within: Duration) -> String {
    let found = c
        .wait_for(&format!("{name}: Degraded {reason}"), within, async || {
            Ok(condition(c, name, "Degraded")
                .await
                .filter(|(s, r, _)| s == "True" && r == reason)
                .map(|(_, _, m)| m))
        })
        .await;
    match found {
        Ok(m) => m,
        Err(e) => panic!(
            "{e}\nconditions: {:?}\noperator log:\n{}",
            condition(c, name, "Degraded").await,
            c.operator_log("operator-0")
        ),
    }
}

async fn wait_ready(c: &SeedCluster, name: &str, within: Duration) {
    let target = format!("dataset/{name}");
    let timeout = format!("--timeout={}s", within.as_secs());
    if let Err(e) = c
        .kubectl(&["wait", "-n", NS, "--for=condition=Ready", &target, &timeout])
        .await
    {
        panic!(
            "{e}\nconditions: {:?}\noperator log:\n{}",
            condition(c, name, "Degraded").await,
            c.operator_log("operator-0")
        );
    }
}

/// Nothing of `name` on any node: no published tree, no staging or
/// revision directory, no saved state.
fn nothing_written(c: &SeedCluster, name: &str) {
    for n in c.cluster.nodes() {
        for top in ["datasets", "revisions", "staging", "state"] {
            let p = n.root.join(top).join(NS).join(name);
            assert!(!p.exists(), "{name}: {} exists", p.display());
        }
    }
}

/// No tree of `name` is published on any node (staging may hold verified
/// chunks: they are reused by the next revision).
fn nothing_published(c: &SeedCluster, name: &str) {
    for n in c.cluster.nodes() {
        let p = n.root.join("datasets").join(NS).join(name);
        assert!(!p.exists(), "{name}: published at {}", p.display());
        let revisions = n.root.join("revisions").join(NS).join(name);
        let count = std::fs::read_dir(&revisions).map_or(0, |d| d.count());
        assert_eq!(count, 0, "{name}: a revision on {}", n.name);
    }
}

/// Every node publishes exactly the tree of `src`.
fn every_node_holds(c: &SeedCluster, name: &str, src: &Path) {
    let want = tree_digest(src).unwrap();
    for n in c.cluster.nodes() {
        let dir = n.root.join("datasets").join(NS).join(name);
        let got = tree_digest(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert_eq!(
            got.files.keys().collect::<Vec<_>>(),
            want.files.keys().collect::<Vec<_>>(),
            "{name} on {}",
            n.name
        );
        assert_eq!(got.root(), want.root(), "{name} on {} differs", n.name);
    }
}

/// Bytes that differ by `seed` and position.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 9) as u8))
        .collect()
}

/// Replaces `path` by another file of the same size (written aside and
/// renamed over it, as a deployment would): its modification time, and so
/// the origin's ETag, changes.
fn replace(path: &Path, seed: u8) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let aside = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&aside, bytes(len, seed)).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

async fn create_bucket(endpoint: &str, bucket: &str) {
    let url = format!("{endpoint}/{bucket}");
    let r = http().put(&url).send().await.unwrap();
    assert!(r.status().is_success(), "PUT {url}: {}", r.status());
}

/// Stores `body` under exactly `key` (object_store would normalize the
/// key); moto takes unsigned requests.
async fn put_raw(endpoint: &str, bucket: &str, key: &str, body: Vec<u8>) {
    let url = format!("{endpoint}/{bucket}/{key}");
    let r = http().put(&url).body(body).send().await.unwrap();
    assert!(r.status().is_success(), "PUT {url}: {}", r.status());
}

fn s3_spec(endpoint: &str, uri: &str) -> Value {
    json!({
        "source": {
            "uri": uri,
            "endpoint": endpoint,
            "region": REGION,
            "secretRef": { "name": "s3-creds" },
        },
        "chunkSize": "256Ki",
    })
}

/// Object keys that are not the names object_store would list them under,
/// through the whole product: refused at listing, naming the key as the
/// bucket holds it; nothing reaches a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_keys() {
    let started = Instant::now();
    let Some(c) = cluster("unsafe_keys").await else {
        return;
    };
    let s3 = c.cluster.start_s3_origin("keys").await.unwrap();
    let endpoint = s3.endpoint().to_owned();
    let keys = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ];
    c.create_secret(NS, "s3-creds", &keys).await.unwrap();
    // A bucket of its own for the leading '/', listed whole.
    create_bucket(&endpoint, "rooted").await;
    put_raw(&endpoint, "rooted", "/abs.txt", b"absolute".to_vec()).await;
    put_raw(&endpoint, "rooted", "ok.txt", b"ok".to_vec()).await;
    put_raw(
        &endpoint,
        "keys",
        "trailing/dir/",
        b"data under a '/' key".to_vec(),
    )
    .await;
    put_raw(&endpoint, "keys", "trailing/ok.bin", bytes(1000, 1)).await;
    let long = format!("long/{}.bin", "n".repeat(256));
    put_raw(&endpoint, "keys", &long, b"x".to_vec()).await;
    put_raw(&endpoint, "keys", "long/ok.bin", b"y".to_vec()).await;
    put_raw(&endpoint, "keys", "marker/e/", Vec::new()).await;
    put_raw(&endpoint, "keys", "marker/ok.bin", bytes(3000, 2)).await;

    let refused = [
        ("leading-slash", "s3://rooted", "\"/abs.txt\""),
        ("trailing-slash", "s3://keys/trailing", "\"trailing/dir/\""),
        (
            "long-segment",
            "s3://keys/long",
            &format!("{:?}", &long[5..]),
        ),
    ];
    for (name, uri, _) in &refused {
        apply(&c, name, &s3_spec(&endpoint, uri)).await;
    }
    apply(&c, "marker", &s3_spec(&endpoint, "s3://keys/marker")).await;

    for (name, _, key) in &refused {
        let message = degraded(&c, name, "InvalidSource", Duration::from_secs(30)).await;
        assert!(
            message.contains(key),
            "{name}: {message:?} does not name {key}"
        );
        nothing_written(&c, name);
    }
    // The empty "e/" is a directory marker: the node holds ok.bin only.
    wait_ready(&c, "marker", Duration::from_secs(30)).await;
    let src = c.cluster.work_dir().join("marker-expected");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok.bin"), bytes(3000, 2)).unwrap();
    every_node_holds(&c, "marker", &src);
    // Still refused a while later (the listing is retried), still nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, _, _) in &refused {
        let (status, reason, _) = condition(&c, name, "Degraded").await.unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "InvalidSource")
        );
        nothing_written(&c, name);
    }
    report_time("unsafe_keys", started);
    drop(s3);
    c.cluster.stop().await;
}

/// An HTTP source of `files` (name, size, seed) under the cluster's work
/// directory, served by the origin; returns the directory and the origin.
async fn http_source(
    c: &mut SeedCluster,
    dir: &str,
    files: &[(&str, usize, u8)],
) -> (PathBuf, swarmseed_harness::RemoteHttpOrigin) {
    let src = c.cluster.work_dir().join(dir);
    std::fs::create_dir_all(&src).unwrap();
    for (name, len, seed) in files {
        std::fs::write(src.join(name), bytes(*len, *seed)).unwrap();
    }
    let origin = c.cluster.start_http_origin(&src, 8080).await.unwrap();
    (src, origin)
}

/// One fetcher reading slowly, so that a file is replaced at a known
/// point of the read.
fn slow_spec(url: &str) -> Value {
    json!({
        "source": { "uri": format!("{url}/") },
        "chunkSize": "256Ki",
        "origin": { "maxFetchers": 1, "bandwidth": "2Mi" },
    })
}

/// After `SourceChanged`: no tree anywhere; a relist lists the new content
/// and every node publishes it.
async fn relist_recovers(c: &SeedCluster, name: &str, src: &Path) {
    nothing_published(c, name);
    c.kubectl(&[
        "annotate",
        "dataset",
        name,
        "-n",
        NS,
        "swarmseed.io/relist=1",
        "--overwrite",
    ])
    .await
    .unwrap();
    wait_ready(c, name, Duration::from_secs(40)).await;
    every_node_holds(c, name, src);
}

/// Says how long the row `row` took.
fn report_time(row: &str, started: Instant) {
    eprintln!("{row}: {:.1} s", started.elapsed().as_secs_f64());
}

/// A file replaced after the listing and before any of it is read (it is
/// read last, after 8 MiB at 2 MiB/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_changed_before_read() {
    let started = Instant::now();
    let Some(mut c) = cluster("origin_changed_before_read").await else {
        return;
    };
    let (src, origin) = http_source(
        &mut c,
        "before",
        &[("a-first.bin", 8 * MIB, 1), ("z-last.bin", MIB, 2)],
    )
    .await;
    apply(&c, "before", &slow_spec(origin.url())).await;
    // Listed: the revision is in the status (or the agents hold it).
    c.wait_for("the listing", Duration::from_secs(20), async || {
        let listed = c
            .dataset(NS, "before")
            .await?
            .is_some_and(|d| d["status"]["revision"].is_string());
        let assigned = c
            .agent_progress(NS, "before")
            .await
            .iter()
            .any(|(_, p)| p.is_some());
        Ok((listed || assigned).then_some(()))
    })
    .await
    .unwrap();
    replace(&src.join("z-last.bin"), 3);
    let message = degraded(&c, "before", "SourceChanged", Duration::from_secs(40)).await;
    assert!(message.contains("z-last.bin"), "{message:?}");
    // The origin's ETags are made of size and modification time: the
    // Dataset says which files only they pin, and the remedy.
    let (status, reason, message) = condition(&c, "before", "ContentPinned")
        .await
        .expect("a ContentPinned condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WeakValidators"),
        "{message}"
    );
    assert!(
        message
            .starts_with("2 file(s) (a-first.bin, z-last.bin) are pinned only by a weak validator")
            && message.contains("spec.digest"),
        "{message}"
    );
    relist_recovers(&c, "before", &src).await;
    report_time("origin_changed_before_read", started);
    drop(origin);
    c.cluster.stop().await;
}

/// A file replaced while its chunks are being read (after its first MiB
/// of 8, at 2 MiB/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_changed_during_read() {
    let started = Instant::now();
    let Some(mut c) = cluster("origin_changed_during_read").await else {
        return;
    };
    let (src, origin) = http_source(&mut c, "during", &[("big.bin", 8 * MIB, 4)]).await;
    apply(&c, "during", &slow_spec(origin.url())).await;
    c.wait_for("the first MiB read", Duration::from_secs(30), async || {
        let read: u64 = c
            .agent_progress(NS, "during")
            .await
            .iter()
            .filter_map(|(_, p)| p.as_ref().map(|p| p.bytes_from_origin))
            .sum();
        Ok((read >= MIB as u64).then_some(()))
    })
    .await
    .unwrap();
    replace(&src.join("big.bin"), 5);
    let message = degraded(&c, "during", "SourceChanged", Duration::from_secs(40)).await;
    assert!(message.contains("big.bin"), "{message:?}");
    relist_recovers(&c, "during", &src).await;
    report_time("origin_changed_during_read", started);
    drop(origin);
    c.cluster.stop().await;
}
