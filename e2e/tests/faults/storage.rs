//! Storage rows: a node whose disk is full before the seed or fills during
//! it, and a Dataset name as long as Kubernetes allows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use swarmseed_harness::ClusterSpec;
use swarmseed_harness::cluster::RemoteHttpOrigin;
use swarmseed_harness::origin::dataset::{DatasetSpec, generate_dataset, tree_digest};
use swarmseed_harness::seeding::{Binaries, SeedCluster, condition, dataset_yaml};

const MIB: u64 = 1 << 20;
const NS: &str = "ml";
/// The node that runs out of space.
const FULL: &str = "node-2";

/// 3 nodes, each on a filesystem of its own of `disk` bytes when given;
/// every node is an origin fetcher (maxFetchers defaults to 4), and one
/// that stops answering is replaced by the origin after 5 s.
async fn start(disk: Option<u64>) -> SeedCluster {
    swarmseed_harness::init_crypto();
    let bins = Binaries::beside_e2e().unwrap();
    let mut spec = ClusterSpec::new(3, &bins.agent);
    spec.link_mbit = Some(1000);
    spec.origin_link_mbit = Some(1000);
    spec.agent_args = vec!["--fallback-after".into(), "5s".into()];
    spec.node_disk_bytes = disk;
    let c = SeedCluster::start(spec, bins).await.unwrap();
    c.kubectl(&["create", "namespace", NS]).await.unwrap();
    c
}

/// [`start`], and `dataset` generated and served by an HTTP origin: the
/// cluster, the dataset's directory and the origin.
async fn start_with_source(
    disk: Option<u64>,
    dataset: &DatasetSpec,
) -> (SeedCluster, PathBuf, RemoteHttpOrigin) {
    let mut c = start(disk).await;
    let src = c.cluster.work_dir().join("origin-http");
    generate_dataset(&src, dataset).unwrap();
    let origin = c.cluster.start_http_origin(&src, 8080).await.unwrap();
    (c, src, origin)
}

/// About 26 MiB: two files of 12 MiB and 100 small ones.
fn dataset(seed: u64) -> DatasetSpec {
    DatasetSpec {
        seed,
        big_files: 2,
        big_file_size: 12 * MIB,
        small_files: 100,
        small_file_min: 0,
        small_file_max: 48 * 1024,
        small_dirs: 4,
    }
}

async fn apply(c: &SeedCluster, name: &str, spec: &Value) {
    c.kubectl_stdin(&["apply", "-f", "-"], &dataset_yaml(NS, name, spec))
        .await
        .unwrap();
}

async fn status(c: &SeedCluster, name: &str) -> Value {
    c.dataset_status(NS, name).await.unwrap()
}

/// Free bytes of the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

/// Fills the filesystem of `root` (a node's store) with a file beside it
/// until at most `leave` bytes are free (or it is full).
fn fill(root: &Path, leave: u64) {
    use std::io::Write;
    let ballast = root.parent().unwrap().join("ballast");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ballast)
        .unwrap();
    let block = vec![0u8; MIB as usize];
    while free_bytes(root) > leave + MIB && f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

/// Waits until `probe` of the Dataset's status holds; fails with the
/// status and the operator's log.
async fn wait_status(
    c: &SeedCluster,
    name: &str,
    what: &str,
    timeout: Duration,
    probe: impl Fn(&Value) -> bool,
) -> Value {
    let got = c
        .wait_for(what, timeout, async || {
            let s = status(c, name).await;
            Ok(probe(&s).then_some(s))
        })
        .await;
    match got {
        Ok(s) => s,
        Err(e) => panic!(
            "{e}\nstatus: {:#}\noperator log:\n{}",
            status(c, name).await,
            c.operator_log("operator-0")
        ),
    }
}

/// Every node in `nodes` holds a tree identical to `src` at its published
/// path, waiting up to `timeout` for it.
async fn assert_published(c: &SeedCluster, name: &str, nodes: &[&str], src: &Path) {
    let want = tree_digest(src).unwrap().root();
    for node in nodes {
        let dir = c.published_dir(node, NS, name).unwrap();
        let held = c
            .wait_for(
                &format!("{node} holding {NS}/{name}"),
                Duration::from_secs(60),
                async || Ok(tree_digest(&dir).ok().filter(|t| t.root() == want)),
            )
            .await;
        if let Err(e) = held {
            panic!("{e}\nstatus: {:#}", status(c, name).await);
        }
    }
}

/// Nothing of `name` is published on `node`, and no revision of it is
/// complete there.
fn assert_nothing_published(c: &SeedCluster, node: &str, name: &str) {
    let dir = c.published_dir(node, NS, name).unwrap();
    assert!(
        std::fs::symlink_metadata(&dir).is_err(),
        "{} exists",
        dir.display()
    );
    let root = &c.cluster.node(node).unwrap().root;
    let revisions = root.join("revisions").join(NS).join(name);
    let complete = std::fs::read_dir(&revisions).map_or(0, |d| d.count());
    assert_eq!(complete, 0, "{} holds a revision", revisions.display());
}

/// The node that ran out of space is named in the status with
/// InsufficientStorage, Degraded says so, and its progress entry is
/// Failed. Returns its failure message.
fn assert_insufficient_storage(s: &Value) -> String {
    let failed = s["failedNodes"]
        .as_array()
        .and_then(|f| f.iter().find(|n| n["node"] == FULL))
        .unwrap_or_else(|| panic!("{FULL} is not among the failed nodes: {s:#}"));
    assert_eq!(failed["reason"], "InsufficientStorage", "{s:#}");
    let degraded = condition(s, "Degraded").unwrap();
    assert_eq!(degraded["status"], "True", "{s:#}");
    assert_eq!(degraded["reason"], "InsufficientStorage", "{s:#}");
    let progress = s["nodeProgress"]
        .as_array()
        .and_then(|p| p.iter().find(|n| n["node"] == FULL));
    if let Some(p) = progress {
        assert_eq!(p["state"], "Failed", "{s:#}");
    }
    failed["message"].as_str().unwrap_or_default().to_owned()
}

/// What a user sees when `FULL` runs out of space: it is among the failed
/// nodes with InsufficientStorage (Degraded says so, its progress entry is
/// Failed), the other nodes hold identical bytes and are Ready, and nothing
/// is published on `FULL`. Returns the failure message.
async fn assert_out_of_space_on_one_node(c: &SeedCluster, name: &str, src: &Path) -> String {
    let s = wait_status(
        c,
        name,
        "InsufficientStorage on node-2",
        Duration::from_secs(40),
        |s| {
            s["failedNodes"]
                .as_array()
                .is_some_and(|f| f.iter().any(|n| n["node"] == FULL))
        },
    )
    .await;
    let message = assert_insufficient_storage(&s);
    println!("{FULL}: InsufficientStorage: {message}");
    assert_published(c, name, &["node-0", "node-1"], src).await;
    let s = wait_status(c, name, "2 nodes ready", Duration::from_secs(20), |s| {
        s["nodes"]["ready"] == 2
    })
    .await;
    assert_insufficient_storage(&s);
    assert_nothing_published(c, FULL, name);
    message
}

/// A node whose disk cannot hold the Dataset when it is applied refuses
/// it with InsufficientStorage (shown in the status, Degraded); the other
/// nodes seed it, also the chunks the full node would have fetched from
/// the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_before_seed() {
    let (c, src, origin) = start_with_source(Some(128 * MIB), &dataset(181)).await;
    let full_root = c.cluster.node(FULL).unwrap().root.clone();
    fill(&full_root, 8 * MIB);

    let name = "weights";
    let uri = format!("{}/", origin.url());
    apply(
        &c,
        name,
        &json!({ "source": { "uri": uri }, "chunkSize": "1Mi" }),
    )
    .await;
    let message = assert_out_of_space_on_one_node(&c, name, &src).await;
    assert!(
        message.contains("not enough disk space")
            && message.contains(&full_root.display().to_string()),
        "{message}"
    );
}

/// A node whose disk fills while it seeds fails with InsufficientStorage,
/// naming the path and the bytes it could not write (shown in the status,
/// Degraded); the other nodes complete with identical bytes, and nothing
/// partial is published on the full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_seed() {
    let (c, src, origin) = start_with_source(Some(128 * MIB), &dataset(182)).await;
    let full_root = c.cluster.node(FULL).unwrap().root.clone();

    let name = "weights";
    // Slow enough to be caught half-way: 2 MiB/s per fetcher.
    let uri = format!("{}/", origin.url());
    let spec = json!({
        "source": { "uri": uri },
        "chunkSize": "1Mi",
        "origin": { "bandwidth": "2Mi" },
    });
    apply(&c, name, &spec).await;
    c.wait_for("node-2 seeding", Duration::from_secs(30), async || {
        let progress = c.agent_progress(NS, name).await;
        Ok(progress
            .into_iter()
            .find(|(n, _)| n == FULL)
            .and_then(|(_, p)| p)
            .filter(|p| p.bytes_verified > 0))
    })
    .await
    .unwrap();
    // Something else on the node takes the disk.
    fill(&full_root, 2 * MIB);

    let message = assert_out_of_space_on_one_node(&c, name, &src).await;
    // The file of the chunk it could not write (or its chunk log); or, when
    // the operator re-sent the assignment after the failure (a failed node
    // loses its fetcher role, so the plan changes), the refusal that counts
    // what is still missing. Either names the root and the bytes.
    assert!(
        message.contains(&full_root.display().to_string())
            && (message.contains("No space left on device")
                || message.contains("not enough disk space"))
            && message.contains("bytes"),
        "{message}"
    );
}

/// A Dataset whose name has 253 characters, the most Kubernetes allows:
/// every node publishes it at `datasets/<ns>/<name>` with identical bytes,
/// it is Ready, and its Events are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_of_253_characters() {
    let (c, src, origin) = start_with_source(None, &DatasetSpec::tiny(183)).await;
    // Four labels: 63, 63, 63 and 61 characters.
    let name = [('a', 63), ('b', 63), ('c', 63), ('d', 61)]
        .map(|(c, n)| String::from(c).repeat(n))
        .join(".");
    assert_eq!(name.len(), 253);

    apply(
        &c,
        &name,
        &json!({ "source": { "uri": format!("{}/", origin.url()) } }),
    )
    .await;
    let target = format!("dataset/{name}");
    if let Err(e) = c
        .kubectl(&[
            "wait",
            "-n",
            NS,
            "--for=condition=Ready",
            &target,
            "--timeout=60s",
        ])
        .await
    {
        panic!(
            "{e}\nstatus: {:#}\noperator log:\n{}",
            status(&c, &name).await,
            c.operator_log("operator-0")
        );
    }
    assert_published(&c, &name, &["node-0", "node-1", "node-2"], &src).await;
    let events = c.events(NS, "{.regarding.name} {.reason}").await.unwrap();
    for reason in ["SourceListed", "Ready"] {
        assert!(
            events.contains(&format!("{name} {reason}")),
            "no {reason} Event for the Dataset: {events:#?}\noperator log:\n{}",
            c.operator_log("operator-0")
        );
    }
}
